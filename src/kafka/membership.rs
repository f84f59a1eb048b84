//! Group health: a partition that no live executor consumes gets an owner again.
//!
//! A Kafka coordinator gives a dead member's partitions to the others once its session times out.
//! Not every Kafka-protocol broker always does: tansu 0.6.0 drops a member whose heartbeats stopped
//! but, when that member led the group, keeps serving the old assignment, so the dead member's
//! partitions (and the runs recorded in them) have nobody (see the README's known issues). The
//! Kafka protocol does not let a member see the others' assignments, so every executor records its
//! own in `runvisor_group_members` with a short expiry and reads everyone's back. A partition that
//! stays in no live row for longer than a rebalance takes makes this executor leave and rejoin the
//! group, which makes the coordinator compute a new assignment from the members it has.
//!
//! On a broker without the defect this never fires: rows outlive a session timeout, so a dead
//! member's partitions stay counted until the coordinator has moved them, and a rebalance completes
//! well within [`Timing::grace`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer as _;
use tokio::sync::watch;

use super::ingress::IngressConsumer;
use crate::actors::persistence::PersistenceHandle;

/// How often a topic's partition count is read again (partitions may be added to a topic).
const METADATA_REFRESH: Duration = Duration::from_secs(30);

/// One consumer group this executor is a member of.
pub struct Membership {
    pub group_id: String,
    pub topic: String,
    pub consumer: Arc<IngressConsumer>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("group_id", &self.group_id).field("topic", &self.topic).finish()
    }
}

/// The clock of the check, derived from the group's session timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often an executor records what it holds and reads the others'.
    pub interval: Duration,
    /// How long a record counts: longer than a session timeout, so a member the coordinator still
    /// counts is counted here too.
    pub expiry: Duration,
    /// How long a partition may have no live holder before members rejoin: a rebalance's length.
    pub grace: Duration,
    /// The least time between two rejoins of one member, so a rejoin's own rebalance can settle.
    pub backoff: Duration,
}

impl Timing {
    pub fn for_session_timeout(session: Duration) -> Timing {
        let interval = Duration::from_secs(1);
        Timing {
            interval,
            expiry: session + 2 * interval,
            grace: Duration::from_secs(4),
            backoff: session + 2 * interval,
        }
    }
}

/// Decides, from successive observations of one group, when a member should rejoin it.
#[derive(Debug)]
pub struct OrphanWatch {
    timing: Timing,
    /// Since when each partition has had no live holder.
    orphaned_since: HashMap<i32, Instant>,
    /// When this member last (re)joined.
    last_rejoin: Option<Instant>,
}

impl OrphanWatch {
    /// A watch of a member that joined its group at `joined`: joining is treated like a rejoin,
    /// whose rebalance gets [`Timing::backoff`] to settle.
    pub fn new(timing: Timing, joined: Instant) -> Self {
        OrphanWatch { timing, orphaned_since: HashMap::new(), last_rejoin: Some(joined) }
    }

    /// Takes in that partitions `0..partition_count` exist and live members hold `held`, at `now`;
    /// answers the partitions that have had no holder for longer than the grace, if this member
    /// should rejoin for them now.
    pub fn observe(&mut self, partition_count: i32, held: &BTreeSet<i32>, now: Instant) -> Option<Vec<i32>> {
        self.orphaned_since.retain(|p, _| *p < partition_count && !held.contains(p));
        for partition in (0..partition_count).filter(|p| !held.contains(p)) {
            self.orphaned_since.entry(partition).or_insert(now);
        }
        let mut overdue: Vec<i32> = self
            .orphaned_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.timing.grace)
            .map(|(p, _)| *p)
            .collect();
        let resting = self.last_rejoin.is_some_and(|at| now.duration_since(at) < self.timing.backoff);
        if overdue.is_empty() || resting {
            return None;
        }
        overdue.sort_unstable();
        self.last_rejoin = Some(now);
        self.orphaned_since.clear();
        Some(overdue)
    }
}

/// Records this executor's partitions every [`Timing::interval`] and rejoins a group whose
/// partitions have gone unheld, until `stop` turns true; then withdraws the records.
pub async fn watch_groups(
    memberships: Vec<Membership>,
    persistence: PersistenceHandle,
    owner: String,
    timing: Timing,
    mut stop: watch::Receiver<bool>,
) {
    // Each topic's partition count, and when it was read.
    let mut counts: Vec<Option<(i32, Instant)>> = memberships.iter().map(|_| None).collect();
    let joined = Instant::now();
    let mut watches: Vec<OrphanWatch> = memberships.iter().map(|_| OrphanWatch::new(timing, joined)).collect();
    let mut ticks = tokio::time::interval(timing.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            _ = ticks.tick() => {}
        }
        let held: Vec<(String, Vec<i32>)> =
            memberships.iter().map(|m| (m.group_id.clone(), assigned(&m.consumer, &m.topic))).collect();
        let until = chrono::Utc::now().naive_utc() + timing.expiry;
        let live = match persistence.report_membership(&owner, until, held).await {
            Ok(live) => live,
            Err(error) => {
                tracing::warn!(%error, "cannot record group membership");
                continue;
            }
        };
        for (((membership, watch), count), live) in memberships.iter().zip(&mut watches).zip(&mut counts).zip(live) {
            if count.is_none_or(|(_, at)| at.elapsed() >= METADATA_REFRESH) {
                *count = partition_count(&membership.consumer, &membership.topic).await.map(|n| (n, Instant::now()));
            }
            let Some((count, _)) = *count else { continue };
            if let Some(orphaned) = watch.observe(count, &live, Instant::now()) {
                tracing::warn!(group = %membership.group_id, topic = %membership.topic, ?orphaned,
                    "partitions have had no live consumer for too long; rejoining the group so it reassigns them");
                membership.consumer.unsubscribe();
                if let Err(error) = membership.consumer.subscribe(&[&membership.topic]) {
                    tracing::warn!(%error, "cannot rejoin the group");
                }
            }
        }
    }
    // A stopping member holds nothing from now on.
    let gone = memberships.iter().map(|m| (m.group_id.clone(), Vec::new())).collect();
    let _ = persistence.report_membership(&owner, chrono::Utc::now().naive_utc(), gone).await;
}

fn assigned(consumer: &IngressConsumer, topic: &str) -> Vec<i32> {
    consumer
        .assignment()
        .map(|list| list.elements().iter().filter(|e| e.topic() == topic).map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// The topic's partition count from the cluster's metadata (a blocking call, off the runtime).
async fn partition_count(consumer: &Arc<IngressConsumer>, topic: &str) -> Option<i32> {
    let consumer = Arc::clone(consumer);
    let topic = topic.to_string();
    let metadata = tokio::task::spawn_blocking(move || {
        consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)).ok().and_then(|metadata| {
            metadata.topics().first().filter(|t| t.error().is_none()).map(|t| t.partitions().len() as i32)
        })
    });
    metadata.await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        interval: Duration::from_secs(1),
        expiry: Duration::from_secs(12),
        grace: Duration::from_secs(4),
        backoff: Duration::from_secs(12),
    };

    fn held(partitions: &[i32]) -> BTreeSet<i32> {
        partitions.iter().copied().collect()
    }

    #[test]
    fn a_group_gets_time_to_form_after_the_member_joins() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut watch = OrphanWatch::new(TIMING, start);
        assert_eq!(watch.observe(4, &held(&[]), at(1)), None);
        assert_eq!(watch.observe(4, &held(&[0, 1]), at(6)), None, "past the grace, but the group is still forming");
        assert_eq!(watch.observe(4, &held(&[0, 1]), at(12)), Some(vec![2, 3]));
    }

    #[test]
    fn a_partition_without_a_holder_for_the_grace_makes_the_member_rejoin_once() {
        let joined = Instant::now();
        let mut watch = OrphanWatch::new(TIMING, joined);
        let start = joined + TIMING.backoff;
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(watch.observe(4, &held(&[0, 1, 2, 3]), at(0)), None);
        assert_eq!(watch.observe(4, &held(&[0, 1]), at(1)), None, "a rebalance may be under way");
        assert_eq!(watch.observe(4, &held(&[0, 1]), at(4)), None);
        assert_eq!(watch.observe(4, &held(&[0, 1]), at(5)), Some(vec![2, 3]));
        // The rejoin's own rebalance gets time to settle.
        assert_eq!(watch.observe(4, &held(&[0, 1]), at(10)), None);
        assert_eq!(watch.observe(4, &held(&[0, 1]), at(16)), None);
        assert_eq!(watch.observe(4, &held(&[0, 1]), at(17)), Some(vec![2, 3]), "still unheld after the backoff");
    }

    #[test]
    fn a_partition_held_again_within_the_grace_is_forgotten() {
        let joined = Instant::now();
        let mut watch = OrphanWatch::new(TIMING, joined);
        let start = joined + TIMING.backoff;
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(watch.observe(2, &held(&[0]), at(0)), None);
        assert_eq!(watch.observe(2, &held(&[0, 1]), at(3)), None);
        assert_eq!(watch.observe(2, &held(&[0]), at(5)), None, "orphaned again only since 5 s");
        assert_eq!(watch.observe(2, &held(&[0]), at(9)), Some(vec![1]));
    }

    #[test]
    fn timing_outlasts_a_session_timeout() {
        let timing = Timing::for_session_timeout(Duration::from_secs(10));
        assert!(timing.expiry > Duration::from_secs(10));
        assert!(timing.backoff >= timing.expiry);
    }
}
