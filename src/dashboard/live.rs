//! The change feed behind the dashboard's live pages: one poller per API process reads what changed
//! in the database and broadcasts hints ("these runs changed", "this run's attempts changed");
//! each open page's server-sent-event stream ([`super::events`]) passes on the hints it cares about,
//! and the page fetches the part that changed.
//!
//! Why poll the database rather than listen to the executors' events: the database is the one place
//! every writer goes through. An API process sees the executors' transitions (its own node's in
//! `dev`, other processes' in `api`, the Python executor's too), the PENDING rows of `execute` and
//! `retry` from any API replica, the CANCELLED rows of cancellations, the outbox relay's FAILED rows
//! and the sweeper's. Tailing the monitoring topic would miss all but the first. The cost is one
//! indexed query per interval, and none while no page is open.
//!
//! Runs are found by `updated_at`, which every writer of a run's status sets (lease renewals do not
//! touch it). Writers' clocks and commit order differ a little, so each poll reads back a window of
//! `OVERLAP` (2 s) before the newest change it has seen, and remembers which `(run, updated_at)` it has
//! reported so the overlap is not reported twice. Attempts do not touch their run's row, so runs
//! whose page is open (and only those) are watched by their attempt counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::NaiveDateTime;
use entity::{step_execution, workflow_run};

use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio::sync::{broadcast, watch};

/// How far back each poll reads before the newest change seen (clock skew, commit order).
const OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// Most run rows one poll reads; more than this many changes is reported as "everything changed".
const MAX_ROWS: u64 = 500;

/// What a page is told. Hints only: the page reads the current state itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// These runs were created or changed status.
    Runs(Arc<[String]>),
    /// More runs changed than one poll reads: every page should refresh.
    Everything,
    /// This run's attempts started or ended.
    Attempts(Arc<str>),
}

impl Change {
    /// Whether a page showing `run_id` should refresh.
    pub fn concerns(&self, run_id: &str) -> bool {
        match self {
            Change::Runs(ids) => ids.iter().any(|id| id == run_id),
            Change::Everything => true,
            Change::Attempts(id) => &**id == run_id,
        }
    }
}

/// The feed: a broadcast of [`Change`]s and the set of runs whose attempts are watched.
#[derive(Debug)]
pub struct LiveFeed {
    sender: broadcast::Sender<Change>,
    /// Run id → open pages showing it.
    watched: Mutex<HashMap<String, usize>>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        // A slow page that falls 256 hints behind is told to refresh everything, not failed.
        LiveFeed { sender: broadcast::Sender::new(256), watched: Mutex::default() }
    }
}

/// A run's attempts are watched while this lives.
#[derive(Debug)]
pub struct Watch {
    feed: Arc<LiveFeed>,
    run_id: String,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.feed.watched.lock().expect("not poisoned");
        if let Some(pages) = watched.get_mut(&self.run_id) {
            *pages -= 1;
            if *pages == 0 {
                watched.remove(&self.run_id);
            }
        }
    }
}

impl LiveFeed {
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.sender.subscribe()
    }

    /// Watches `run_id`'s attempts until the returned guard is dropped.
    pub fn watch(self: &Arc<Self>, run_id: &str) -> Watch {
        *self.watched.lock().expect("not poisoned").entry(run_id.to_string()).or_default() += 1;
        Watch { feed: self.clone(), run_id: run_id.to_string() }
    }

    fn watched(&self) -> Vec<String> {
        self.watched.lock().expect("not poisoned").keys().cloned().collect()
    }

    /// Polls every `interval` until `stop` turns true. Idle (no query) while nobody listens.
    pub async fn run(self: Arc<Self>, db: DatabaseConnection, interval: Duration, mut stop: watch::Receiver<bool>) {
        let mut tracker = Tracker::default();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = ticks.tick() => {}
            }
            if self.sender.receiver_count() == 0 {
                // Nobody to tell; the next listener starts from what is there when it connects.
                tracker = Tracker::default();
                continue;
            }
            match self.poll(&db, &mut tracker).await {
                Ok(changes) => {
                    for change in changes {
                        let _ = self.sender.send(change);
                    }
                }
                Err(error) => tracing::warn!(%error, "the dashboard's change feed could not read the database"),
            }
        }
    }

    async fn poll(&self, db: &DatabaseConnection, tracker: &mut Tracker) -> Result<Vec<Change>, DbErr> {
        use workflow_run::Column as C;
        let mut query = workflow_run::Entity::find().select_only().column(C::RunId).column(C::UpdatedAt);
        if let Some(newest) = tracker.newest {
            query = query.filter(C::UpdatedAt.gte(newest - OVERLAP));
        } else {
            // First poll: start from the newest change, report nothing before it.
            query = query.order_by_desc(C::UpdatedAt).limit(1);
        }
        let rows: Vec<(String, NaiveDateTime)> =
            query.order_by_asc(C::UpdatedAt).limit(MAX_ROWS).into_tuple().all(db).await?;
        let mut changes = tracker.runs(rows, MAX_ROWS as usize);
        if changes == [Change::Everything] {
            // A read that came back full stopped short of the newest change; the next one starts
            // there, or it would read the same rows again for as long as the window stays full.
            let newest: Option<NaiveDateTime> = workflow_run::Entity::find()
                .select_only()
                .column(C::UpdatedAt)
                .order_by_desc(C::UpdatedAt)
                .limit(1)
                .into_tuple()
                .one(db)
                .await?;
            tracker.newest = newest.or(tracker.newest);
        }

        let watched = self.watched();
        if !watched.is_empty() {
            use step_execution::Column as S;
            let counts: Vec<(String, i64, i64)> = step_execution::Entity::find()
                .select_only()
                .column(S::RunId)
                .column_as(S::Id.count(), "attempts")
                .column_as(S::CompletedAt.count(), "ended")
                .filter(S::RunId.is_in(watched.iter().map(String::as_str)))
                .group_by(S::RunId)
                .into_tuple()
                .all(db)
                .await?;
            changes.extend(tracker.attempts(&watched, counts));
        }
        Ok(changes)
    }
}

/// What the poller has seen, and the pure part of deciding what changed.
#[derive(Debug, Default)]
struct Tracker {
    /// The newest `updated_at` seen; `None` before the first poll.
    newest: Option<NaiveDateTime>,
    /// Changes already reported that are still inside the overlap window.
    reported: HashMap<String, NaiveDateTime>,
    /// Watched run → (attempts, attempts ended) at the last poll.
    attempts: HashMap<String, (i64, i64)>,
}

impl Tracker {
    /// The runs among `rows` not reported before. `rows` are in `updated_at` order; a full read
    /// (`limit` rows) may have left changes behind, so it says "everything".
    fn runs(&mut self, rows: Vec<(String, NaiveDateTime)>, limit: usize) -> Vec<Change> {
        let first_poll = self.newest.is_none();
        let full = rows.len() >= limit;
        let mut changed = Vec::new();
        for (run_id, updated_at) in rows {
            self.newest = Some(self.newest.map_or(updated_at, |newest| newest.max(updated_at)));
            // The first poll only finds where to start; what it read is read again by the next one
            // (inside the overlap) and reported then, so a change between a page's first
            // rendering and this poll is not lost: at worst a page refreshes once for nothing.
            if !first_poll && self.reported.get(&run_id) != Some(&updated_at) {
                self.reported.insert(run_id.clone(), updated_at);
                changed.push(run_id);
            }
        }
        if let Some(newest) = self.newest {
            self.reported.retain(|_, at| *at >= newest - OVERLAP);
        } else {
            // An empty table: start from the epoch (a date every database can bind).
            self.newest = Some(chrono::DateTime::UNIX_EPOCH.naive_utc());
        }
        if first_poll {
            return Vec::new();
        }
        if full {
            // Skip past the flood: the pages refresh whole anyway.
            self.reported.clear();
            return vec![Change::Everything];
        }
        if changed.is_empty() { Vec::new() } else { vec![Change::Runs(changed.into())] }
    }

    /// The watched runs whose attempt counts moved since the last poll. A run seen for the first
    /// time is reported too: its page may have been rendered before the watch began.
    fn attempts(&mut self, watched: &[String], counts: Vec<(String, i64, i64)>) -> Vec<Change> {
        let mut now: HashMap<String, (i64, i64)> = watched.iter().map(|id| (id.clone(), (0, 0))).collect();
        for (run_id, attempts, ended) in counts {
            now.insert(run_id, (attempts, ended));
        }
        let changes = now
            .iter()
            .filter(|(run_id, counts)| self.attempts.get(*run_id) != Some(*counts))
            .map(|(run_id, _)| Change::Attempts(run_id.as_str().into()))
            .collect();
        self.attempts = now;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: u32) -> NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2026, 12, 2).unwrap().and_hms_opt(12, 0, second).unwrap()
    }

    fn rows(list: &[(&str, u32)]) -> Vec<(String, NaiveDateTime)> {
        list.iter().map(|(id, second)| (id.to_string(), at(*second))).collect()
    }

    #[test]
    fn each_change_is_reported_once_though_the_window_overlaps() {
        let mut tracker = Tracker::default();
        assert_eq!(tracker.runs(rows(&[("old", 1)]), 10), vec![], "the first poll only finds where to start");
        assert_eq!(tracker.newest, Some(at(1)));
        // What the first poll read is reported by the second (it may have changed just before).
        assert_eq!(
            tracker.runs(rows(&[("old", 1), ("a", 2)]), 10),
            vec![Change::Runs(vec!["old".into(), "a".into()].into())]
        );
        // Read again in the overlap: nothing new. `a` changes status: reported again.
        assert_eq!(tracker.runs(rows(&[("old", 1), ("a", 2)]), 10), vec![]);
        assert_eq!(tracker.runs(rows(&[("a", 3)]), 10), vec![Change::Runs(vec!["a".into()].into())]);
        // A change committed late with an older timestamp, inside the overlap, is still seen.
        assert_eq!(tracker.runs(rows(&[("late", 2), ("a", 3)]), 10), vec![Change::Runs(vec!["late".into()].into())]);
        // Entries that fall out of the window are forgotten.
        tracker.runs(rows(&[("b", 30)]), 10);
        assert!(!tracker.reported.contains_key("a"));
    }

    #[test]
    fn a_flood_larger_than_one_read_says_everything_and_moves_on() {
        let mut tracker = Tracker::default();
        tracker.runs(vec![], 3);
        assert_eq!(tracker.runs(rows(&[("a", 1), ("b", 1), ("c", 2)]), 3), vec![Change::Everything]);
        assert_eq!(tracker.newest, Some(at(2)));
    }

    #[test]
    fn watched_runs_report_attempts_that_start_or_end() {
        let mut tracker = Tracker::default();
        let watched = vec!["r".to_string()];
        assert_eq!(tracker.attempts(&watched, vec![]), vec![Change::Attempts("r".into())], "first sight");
        assert_eq!(tracker.attempts(&watched, vec![]), vec![]);
        assert_eq!(tracker.attempts(&watched, vec![("r".into(), 1, 0)]), vec![Change::Attempts("r".into())]);
        assert_eq!(tracker.attempts(&watched, vec![("r".into(), 1, 0)]), vec![]);
        assert_eq!(tracker.attempts(&watched, vec![("r".into(), 1, 1)]), vec![Change::Attempts("r".into())]);
    }

    #[test]
    fn a_watch_ends_with_its_last_page() {
        let feed = Arc::new(LiveFeed::default());
        let first = feed.watch("r");
        let second = feed.watch("r");
        drop(first);
        assert_eq!(feed.watched(), vec!["r".to_string()]);
        drop(second);
        assert!(feed.watched().is_empty());
    }
}
