//! What the system is doing now, from the database: runs started and finished per second over the
//! last minutes, runs in flight by executor, the executors alive in the consumer group, and the
//! latency of recent attempts. The dashboard's System page reads it; every figure is one indexed
//! query (or a bounded read), so it stays cheap with 100,000 runs in the table.

use chrono::NaiveDateTime;
use entity::{RunStatus, group_member, step_execution, workflow_run};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::ServiceError;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    /// Runs created, and runs that reached a terminal status, in each window of `WINDOWS_S`.
    pub created: Vec<(i64, u64)>,
    pub finished: Vec<(i64, u64)>,
    /// RUNNING runs by `owner_id` (the executor holding each), most first.
    pub running_by_owner: Vec<(String, u64)>,
    pub pending: u64,
    /// Live consumer-group members: executor, group, partitions held.
    pub members: Vec<(String, String, String)>,
    /// Durations (ms) of the attempts that ended in the last five minutes, sorted; at most
    /// `MAX_ATTEMPTS` of the newest.
    pub attempt_ms: Vec<i64>,
}

/// The windows runs/s is given over, in seconds.
pub const WINDOWS_S: [i64; 2] = [60, 300];
const MAX_ATTEMPTS: u64 = 20_000;

pub async fn now(db: &DatabaseConnection, at: NaiveDateTime) -> Result<Activity, ServiceError> {
    use workflow_run::Column as C;
    let mut activity = Activity::default();
    for seconds in WINDOWS_S {
        let since = at - chrono::TimeDelta::seconds(seconds);
        let created = workflow_run::Entity::find().filter(C::CreatedAt.gte(since)).count(db).await?;
        // A run's updated_at is never before its completed_at, so the indexed updated_at narrows
        // the read to the window's rows before completed_at decides (completed_at has no index).
        let finished = workflow_run::Entity::find()
            .filter(C::UpdatedAt.gte(since))
            .filter(C::CompletedAt.gte(since))
            .filter(
                C::Status.is_in([RunStatus::Completed, RunStatus::Failed, RunStatus::Cancelled].map(|s| s.as_str())),
            )
            .count(db)
            .await?;
        activity.created.push((seconds, created));
        activity.finished.push((seconds, finished));
    }
    let running: Vec<(Option<String>, i64)> = workflow_run::Entity::find()
        .select_only()
        .column(C::OwnerId)
        .column_as(C::RunId.count(), "n")
        .filter(C::Status.eq(RunStatus::Running))
        .group_by(C::OwnerId)
        .into_tuple()
        .all(db)
        .await?;
    activity.running_by_owner =
        running.into_iter().map(|(owner, n)| (owner.unwrap_or_else(|| "nobody".into()), n as u64)).collect();
    activity.running_by_owner.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    activity.pending = workflow_run::Entity::find().filter(C::Status.eq(RunStatus::Pending)).count(db).await?;

    let members = group_member::Entity::find()
        .filter(group_member::Column::ExpiresAt.gt(at))
        .order_by_asc(group_member::Column::OwnerId)
        .all(db)
        .await?;
    activity.members = members.into_iter().map(|m| (m.owner_id, m.group_id, m.partitions.to_string())).collect();

    use step_execution::Column as S;
    let ended: Vec<(NaiveDateTime, Option<NaiveDateTime>)> = step_execution::Entity::find()
        .select_only()
        .columns([S::StartedAt, S::CompletedAt])
        .filter(S::CompletedAt.gte(at - chrono::TimeDelta::seconds(300)))
        .order_by_desc(S::CompletedAt)
        .limit(MAX_ATTEMPTS)
        .into_tuple()
        .all(db)
        .await?;
    activity.attempt_ms =
        ended.into_iter().filter_map(|(start, end)| end.map(|end| (end - start).num_milliseconds().max(0))).collect();
    activity.attempt_ms.sort_unstable();
    Ok(activity)
}

/// The `q` quantile (0–1) of sorted values, nearest rank.
pub fn quantile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), Some(50));
        assert_eq!(quantile(&values, 0.99), Some(99));
        assert_eq!(quantile(&values, 1.0), Some(100));
        assert_eq!(quantile(&[7], 0.95), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
