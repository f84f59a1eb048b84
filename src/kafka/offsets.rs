//! Which offset of a partition may be committed while runs finish out of order.
//!
//! Kafka's committed offset means "everything before this was handled". Runs of one partition
//! finish in any order, so the commit point is the lowest offset still in flight, or one past the
//! highest offset seen when nothing is. Offsets may have gaps (compaction, transaction markers),
//! so nothing here assumes that offset + 1 exists.

use std::collections::BTreeSet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionOffsets {
    in_flight: BTreeSet<i64>,
    highest_seen: Option<i64>,
    /// The last commit point handed out, so callers store only advances.
    committed: Option<i64>,
}

impl PartitionOffsets {
    /// A record at `offset` is being handled.
    pub fn begin(&mut self, offset: i64) {
        // Before anything is handled, the position is the first offset seen.
        self.committed.get_or_insert(offset);
        self.in_flight.insert(offset);
        self.highest_seen = Some(self.highest_seen.map_or(offset, |h| h.max(offset)));
    }

    /// The record at `offset` is handled. Returns the new commit point if it advanced.
    pub fn finish(&mut self, offset: i64) -> Option<i64> {
        if !self.in_flight.remove(&offset) {
            return None;
        }
        let point = self.commit_point()?;
        if self.committed.is_some_and(|c| c >= point) {
            return None;
        }
        self.committed = Some(point);
        Some(point)
    }

    /// The next offset to consume after a restart: nothing before it is unhandled.
    pub fn commit_point(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(lowest) => Some(*lowest),
            None => self.highest_seen.map(|h| h + 1),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_commit_point_waits_for_the_lowest_offset_in_flight() {
        let mut p = PartitionOffsets::default();
        for offset in [10, 11, 14, 20] {
            p.begin(offset);
        }
        assert_eq!(p.finish(14), None, "10 is still running");
        assert_eq!(p.finish(11), None);
        assert_eq!(p.finish(10), Some(20), "everything below 20 is done");
        assert_eq!(p.finish(20), Some(21), "gaps do not matter");
        assert_eq!(p.finish(20), None, "finishing twice changes nothing");
        assert_eq!(p.in_flight(), 0);
    }

    proptest! {
        /// Whatever order records finish in, the commit point never passes an unfinished one and
        /// reaches one past the highest offset once all are done.
        #[test]
        fn never_passes_an_unfinished_offset(gaps in prop::collection::vec(1i64..4, 1..40), order in any::<prop::sample::Index>()) {
            let offsets: Vec<i64> = gaps.iter().scan(0, |at, gap| { *at += gap; Some(*at) }).collect();
            let mut p = PartitionOffsets::default();
            offsets.iter().for_each(|o| p.begin(*o));
            let mut remaining = offsets.clone();
            let mut last = None;
            while !remaining.is_empty() {
                let done = remaining.remove(order.index(remaining.len()));
                if let Some(point) = p.finish(done) {
                    prop_assert!(remaining.iter().all(|o| *o >= point), "{point} passes an unfinished offset");
                    prop_assert!(last.is_none_or(|l| l < point));
                    last = Some(point);
                }
            }
            prop_assert_eq!(last, Some(offsets.last().unwrap() + 1));
        }
    }
}
