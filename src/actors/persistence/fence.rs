//! Fencing: once another executor has claimed a run, nothing its previous owner writes lands.
//!
//! Leases stop two executors from *starting* the same run at once, but not a zombie: an executor
//! cut off from the database for longer than its lease keeps its RunActors going, and when the
//! database comes back its queued writes (attempt rows, a run's end) would land on top of the
//! successor's. So every write of a run names its writer, and each transaction first reads the
//! owners of the runs it writes. A write whose run now belongs to someone else is left out and
//! answered [`super::PersistError::Fenced`]; its RunActor stops its copy there (the old owner stops
//! at its next write).
//!
//! Why the read is enough: on PostgreSQL it locks the rows it reads (`FOR SHARE`), so a claim,
//! which updates the row, waits until this transaction ends, and the next transaction sees the
//! new owner. On SQLite a transaction that read and then writes after another connection wrote
//! fails with BUSY and is retried from the start, reading the owners again.
//!
//! A row with no owner (an API-created run not claimed yet) or no row at all fences nothing: the
//! claim creates or takes those, and the writes of the same run come after it.
//!
//! Why the check is usually skipped: a claim takes a run from its owner only once the owner's lease
//! has expired, and every lease renewal extends all of this executor's leases at once. For as long
//! as the last successful renewal is fresh (within the first two thirds of the lease it granted),
//! no run of this executor can have been claimed elsewhere, and the locking read, which on
//! PostgreSQL also writes a row lock into every run it reads, buys nothing. The check therefore runs
//! only once renewals have failed for a third of a lease: exactly when a zombie may be writing.
//! The remaining third is the margin for clock skew between executors (5 s with the default lease).

use std::collections::HashMap;
use std::sync::Arc;

use entity::workflow_run;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter, QuerySelect,
};

use super::WriteOp;

/// Run ids per query: short enough for one TCP segment (see `batch::BYTES_PER_STATEMENT`).
const RUNS_PER_QUERY: usize = 200;

/// The run a write belongs to and the executor making it, for writes that are fenced. Claims are
/// not (they decide ownership), nor writes that name no owner (the API's cancellation).
pub(super) fn writer(op: &WriteOp) -> Option<(&str, &str)> {
    match op {
        WriteOp::Run(run) => run.owner.as_deref().map(|owner| (run.run_id.as_str(), owner)),
        WriteOp::AttemptStarted(start) => Some((&start.run_id, &start.owner)),
        WriteOp::AttemptEnded(end) => Some((&end.run_id, &end.owner)),
        WriteOp::AbandonAttempts { run_id, owner, .. } => Some((run_id, owner)),
        WriteOp::ClaimNew(_) | WriteOp::Barrier => None,
    }
}

/// The current owner of every run the batch writes that has one (locked until the transaction
/// ends on PostgreSQL).
pub(super) async fn holders(
    txn: &DatabaseTransaction,
    batch: &[Arc<WriteOp>],
) -> Result<HashMap<String, String>, DbErr> {
    let mut runs: Vec<&str> = batch.iter().filter_map(|op| writer(op).map(|(run_id, _)| run_id)).collect();
    runs.sort_unstable();
    runs.dedup();
    let mut holders = HashMap::with_capacity(runs.len());
    // Sorted, so that two transactions lock shared rows in the same order.
    for chunk in runs.chunks(RUNS_PER_QUERY) {
        let mut select = workflow_run::Entity::find()
            .select_only()
            .column(workflow_run::Column::RunId)
            .column(workflow_run::Column::OwnerId)
            .filter(workflow_run::Column::RunId.is_in(chunk.iter().copied()))
            .filter(workflow_run::Column::OwnerId.is_not_null());
        if txn.get_database_backend() == DbBackend::Postgres {
            select = select.lock_shared();
        }
        let rows: Vec<(String, Option<String>)> = select.into_tuple().all(txn).await?;
        holders.extend(rows.into_iter().filter_map(|(run_id, owner)| owner.map(|owner| (run_id, owner))));
    }
    Ok(holders)
}

/// Until when (Unix ms) writes need no owner check, after a renewal asked at `asked` extended this
/// executor's leases to `until`: two thirds of the way there.
pub(super) fn free_until(asked: chrono::NaiveDateTime, until: chrono::NaiveDateTime) -> i64 {
    let (asked, until) = (asked.and_utc().timestamp_millis(), until.and_utc().timestamp_millis());
    asked + (until - asked).max(0) * 2 / 3
}

/// The executor that holds `op`'s run, if it is not the one writing.
pub(super) fn fenced_by<'a>(op: &WriteOp, holders: &'a HashMap<String, String>) -> Option<&'a str> {
    let (run_id, owner) = writer(op)?;
    holders.get(run_id).map(String::as_str).filter(|holder| *holder != owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::persistence::tests::{attempt, run};
    use entity::RunStatus;

    #[test]
    fn checks_resume_a_third_of_a_lease_before_it_could_expire() {
        let asked = chrono::DateTime::from_timestamp_millis(1_000_000).unwrap().naive_utc();
        let until = asked + chrono::Duration::milliseconds(15_000);
        assert_eq!(free_until(asked, until), 1_000_000 + 10_000);
        assert_eq!(free_until(until, asked), until.and_utc().timestamp_millis(), "a lease in the past frees nothing");
    }

    #[test]
    fn only_writes_of_a_run_held_by_another_executor_are_fenced() {
        let holders =
            HashMap::from([("mine".to_string(), "me".to_string()), ("theirs".to_string(), "them".to_string())]);
        let with_owner = |op: WriteOp, owner: &str| match op {
            WriteOp::AttemptStarted(mut start) => {
                start.owner = owner.into();
                WriteOp::AttemptStarted(start)
            }
            WriteOp::Run(mut run) => {
                run.owner = Some(owner.into());
                WriteOp::Run(run)
            }
            other => other,
        };
        assert_eq!(fenced_by(&with_owner(attempt("theirs", "a1"), "me"), &holders), Some("them"));
        assert_eq!(fenced_by(&with_owner(run("theirs", RunStatus::Failed), "me"), &holders), Some("them"));
        assert_eq!(fenced_by(&with_owner(attempt("mine", "a2"), "me"), &holders), None);
        assert_eq!(fenced_by(&with_owner(attempt("unclaimed", "a3"), "me"), &holders), None, "no holder, no fence");
        assert_eq!(
            fenced_by(&run("theirs", RunStatus::Cancelled), &holders),
            None,
            "no owner named (the API's cancel)"
        );
    }
}
