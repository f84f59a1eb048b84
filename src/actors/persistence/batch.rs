//! A batch in few statements: on PostgreSQL, the claims, attempt starts, attempt ends and the
//! runs' ends of a batch are each written by multi-row statements instead of one per write.
//!
//! Why this is allowed to reorder writes: a batch holds writes of many runs, and writes of different
//! runs touch different rows. Within one run the RunActor's protocol leaves few orders possible in
//! one batch: an attempt's RUNNING row is acknowledged before its call starts, so its end is always
//! in a later batch; ends queued without waiting are followed by the next start or the run's end;
//! a run's claim comes before anything else of it (its first attempt, carried by the claim, is
//! written with the starts, once the claims said which runs they took). Writing all claims, then
//! all starts, then all ends, then the runs' ends and abandonments keeps every one of these
//! orders. What the protocol does not promise is checked: a run write or abandonment followed by a
//! claim or start of the same run, a run claimed twice, or an attempt ended twice in the batch
//! sends it down the one-at-a-time path.

use std::collections::HashSet;
use std::sync::Arc;

use entity::{StepStatus, step_execution, workflow_run};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryTrait, Statement};

use super::rows::{self, apply};
use super::{AttemptEnd, AttemptStart, Claim, WriteOp};

/// How much one statement carries. Why so little: sqlx 0.9.0 leaves Nagle's algorithm on
/// (transact-rs/sqlx#4335, fixed upstream but not released), so a statement that does not fit
/// in one TCP segment may send its tail only once PostgreSQL acknowledges the head, which it
/// delays by up to 40 ms. Measured on loopback with the bound mode: statements of 25–50 attempt
/// rows write 20,000 rows/s, of 100 rows 4,800 (each one waits), one row per statement 12,000.
/// Claims carry the plan, so they are cut by size as well as by count. 32 rows at most also keeps
/// the distinct statement texts (one per size and kind) within sqlx's cache of 100.
const ROWS_PER_STATEMENT: usize = 32;
const BYTES_PER_STATEMENT: usize = 16 * 1024;

/// A cheap guess of a JSON value's encoded size (no allocation): enough to cut statements by size.
fn approx_len(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(text) => text.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|item| approx_len(item) + 1).sum::<usize>(),
        Value::Object(fields) => 2 + fields.iter().map(|(key, item)| key.len() + 4 + approx_len(item)).sum::<usize>(),
    }
}

/// Cuts `items` into statements of at most [`ROWS_PER_STATEMENT`] rows and about
/// [`BYTES_PER_STATEMENT`] bytes (a row bigger than that goes alone).
fn statements<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let item_bytes = size(item);
        if i > start && (i - start == ROWS_PER_STATEMENT || bytes + item_bytes > BYTES_PER_STATEMENT) {
            chunks.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += item_bytes;
    }
    if start < items.len() {
        chunks.push(&items[start..]);
    }
    chunks
}

/// Whether `batch` may be written phase by phase (see the module docs).
pub(super) fn can_group(batch: &[Arc<WriteOp>]) -> bool {
    let mut claimed = HashSet::new();
    let mut ended = HashSet::new();
    let mut closed = HashSet::new();
    for op in batch {
        let fresh = match &**op {
            WriteOp::ClaimNew(claim) => {
                if !claimed.insert(claim.run.run_id.as_str()) {
                    return false;
                }
                Some(claim.run.run_id.as_str())
            }
            WriteOp::AttemptStarted(start) => Some(start.run_id.as_str()),
            WriteOp::AttemptEnded(end) => {
                if !ended.insert(end.id.as_str()) {
                    return false;
                }
                None
            }
            WriteOp::Run(run) => {
                closed.insert(run.run_id.as_str());
                None
            }
            WriteOp::AbandonAttempts { run_id, .. } => {
                closed.insert(run_id.as_str());
                None
            }
            WriteOp::Barrier => None,
        };
        if fresh.is_some_and(|run_id| closed.contains(run_id)) {
            return false;
        }
    }
    true
}

/// Writes a batch that [`can_group`] accepted; answers the rows each write changed (1 for each
/// start and end: a multi-row statement does not say which of its rows it changed, and no writer
/// asks).
pub(super) async fn apply_grouped(txn: &DatabaseTransaction, batch: &[Arc<WriteOp>]) -> Result<Vec<u64>, DbErr> {
    let mut changed = vec![0; batch.len()];
    let claims: Vec<(usize, &Claim)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match &**op {
            WriteOp::ClaimNew(claim) => Some((i, &**claim)),
            _ => None,
        })
        .collect();
    let claim_size = |(_, claim): &(usize, &Claim)| {
        256 + approx_len(&claim.run.input) + claim.run.plan.as_deref().map_or(0, approx_len)
    };
    for chunk in statements(&claims, claim_size) {
        let won = claim_many(txn, chunk.iter().map(|(_, claim)| *claim)).await?;
        for (i, claim) in chunk {
            changed[*i] = u64::from(won.contains(&claim.run.run_id));
        }
    }
    // The starts: attempts' RUNNING rows, with the first attempts of the runs this batch claimed
    // (those of claims that lost are not written, see `Claim::first_attempt`).
    let starts: Vec<(Option<usize>, &AttemptStart)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match &**op {
            WriteOp::AttemptStarted(start) => Some((Some(i), &**start)),
            WriteOp::ClaimNew(claim) if changed[i] == 1 => claim.first_attempt.as_ref().map(|first| (None, first)),
            _ => None,
        })
        .collect();
    let start_size = |(_, start): &(Option<usize>, &AttemptStart)| 256 + approx_len(&start.input);
    for chunk in statements(&starts, start_size) {
        let rows = chunk.iter().map(|(_, start)| rows::attempt_row(start));
        step_execution::Entity::insert_many(rows)
            .on_conflict(OnConflict::column(step_execution::Column::Id).do_nothing().to_owned())
            .exec_without_returning(txn)
            .await?;
        chunk.iter().filter_map(|(i, _)| *i).for_each(|i| changed[i] = 1);
    }
    let ends: Vec<usize> = (0..batch.len()).filter(|&i| matches!(*batch[i], WriteOp::AttemptEnded(_))).collect();
    let end_size = |i: &usize| match &*batch[*i] {
        WriteOp::AttemptEnded(end) => {
            128 + end.output.as_deref().map_or(0, approx_len) + end.error.as_ref().map_or(0, String::len)
        }
        _ => 0,
    };
    for chunk in statements(&ends, end_size) {
        let rows: Vec<&AttemptEnd> = chunk
            .iter()
            .map(|&i| match &*batch[i] {
                WriteOp::AttemptEnded(end) => &**end,
                _ => unreachable!("chosen for being an end"),
            })
            .collect();
        end_many(txn, &rows).await?;
        chunk.iter().for_each(|&i| changed[i] = 1);
    }
    // The runs' ends: in one statement when each is an executor's plain update of a run of its own
    // (the guard then reads the owner from the row offered), else one by one in queue order.
    let runs: Vec<usize> = (0..batch.len()).filter(|&i| matches!(*batch[i], WriteOp::Run(_))).collect();
    let mut run_ids = HashSet::new();
    let plain = runs.iter().all(|&i| match &*batch[i] {
        WriteOp::Run(run) => run.owner.is_some() && run.cancel_requested_at.is_none() && run_ids.insert(&run.run_id),
        _ => false,
    });
    if plain {
        let run_size = |i: &usize| match &*batch[*i] {
            WriteOp::Run(run) => 256 + approx_len(&run.input) + run.output.as_ref().map_or(0, approx_len),
            _ => 0,
        };
        for chunk in statements(&runs, run_size) {
            let rows = chunk.iter().map(|&i| match &*batch[i] {
                WriteOp::Run(run) => rows::run_write_row(run),
                _ => unreachable!("chosen for being a run write"),
            });
            workflow_run::Entity::insert_many(rows).on_conflict(owned_run_update()).exec_without_returning(txn).await?;
            chunk.iter().for_each(|&i| changed[i] = 1);
        }
    }
    for (i, op) in batch.iter().enumerate() {
        let grouped = plain && matches!(**op, WriteOp::Run(_));
        if !grouped && matches!(**op, WriteOp::Run(_) | WriteOp::AbandonAttempts { .. }) {
            changed[i] = apply(txn, op).await?;
        }
    }
    Ok(changed)
}

/// A run write's upsert for many rows at once: the guard of [`super::apply`]'s, with the owner taken
/// from each row offered (`excluded`) instead of a constant.
fn owned_run_update() -> OnConflict {
    use workflow_run::Column as C;
    let run = |column| Expr::col((workflow_run::Entity, column));
    let owner = run(C::OwnerId);
    let guard = run(C::Status)
        .is_not_in(rows::TERMINAL_RUN)
        .and(owner.clone().is_null().or(owner.eq(Expr::cust("excluded.owner_id"))));
    let mut on_conflict = OnConflict::column(C::RunId);
    on_conflict.update_columns(rows::RUN_WRITE_COLUMNS).action_and_where(guard);
    on_conflict
}

/// One `INSERT … ON CONFLICT DO UPDATE … WHERE never claimed … RETURNING run_id`: the runs won.
async fn claim_many<'a>(
    txn: &DatabaseTransaction,
    claims: impl Iterator<Item = &'a Claim>,
) -> Result<HashSet<String>, DbErr> {
    use workflow_run::Column as C;
    let mut insert = workflow_run::Entity::insert_many(claims.map(rows::claim_row))
        .on_conflict(rows::claim_conflict(chrono::Utc::now().naive_utc()))
        .into_query();
    insert.returning_col(C::RunId);
    let statement = txn.get_database_backend().build(&insert);
    let won = txn.query_all_raw(statement).await?;
    won.iter().map(|row| row.try_get::<String>("", "run_id")).collect()
}

/// One `UPDATE … FROM (VALUES …)` ending every attempt in `ends` that is still RUNNING.
async fn end_many(txn: &DatabaseTransaction, ends: &[&AttemptEnd]) -> Result<(), DbErr> {
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(ends.len() * 5);
    let mut tuples = Vec::with_capacity(ends.len());
    for (n, end) in ends.iter().enumerate() {
        let p = n * 5;
        tuples.push(format!(
            "(${}::text, ${}::text, ${}::jsonb, ${}::text, ${}::timestamp)",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5
        ));
        values.push(end.id.clone().into());
        values.push(end.status.as_str().into());
        values.push(end.output.as_deref().cloned().into());
        values.push(end.error.clone().into());
        values.push(end.at.into());
    }
    let sql = format!(
        "UPDATE step_executions AS s SET status = v.status, output_data = v.output, error_message = v.error, \
         completed_at = v.at FROM (VALUES {}) AS v(id, status, output, error, at) \
         WHERE s.id = v.id AND s.status = '{}'",
        tuples.join(", "),
        StepStatus::Running.as_str()
    );
    txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::persistence::tests::{attempt, end as ended, run as run_write};
    use entity::RunStatus;
    use serde_json::json;

    fn claim(run_id: &str) -> Arc<WriteOp> {
        let WriteOp::Run(run) = run_write(run_id, RunStatus::Running) else { unreachable!("a run write") };
        let lease = std::time::Duration::from_secs(1);
        Arc::new(WriteOp::ClaimNew(Box::new(Claim { run: *run, owner: "o".into(), lease, first_attempt: None })))
    }

    fn start(run_id: &str, id: &str) -> Arc<WriteOp> {
        Arc::new(attempt(run_id, id))
    }

    fn end(id: &str) -> Arc<WriteOp> {
        Arc::new(ended(id, StepStatus::Completed))
    }

    fn run(run_id: &str) -> Arc<WriteOp> {
        Arc::new(run_write(run_id, RunStatus::Completed))
    }

    #[test]
    fn statements_are_cut_by_rows_and_by_size() {
        let rows: Vec<usize> = (0..100).collect();
        let by_count: Vec<usize> = statements(&rows, |_| 1).iter().map(|c| c.len()).collect();
        assert_eq!(by_count, vec![32, 32, 32, 4]);
        let by_size: Vec<usize> = statements(&rows, |_| 5000).iter().map(|c| c.len()).collect();
        assert_eq!(by_size.iter().sum::<usize>(), 100);
        assert!(by_size.iter().all(|&n| n == 3 || n == 1), "{by_size:?}");
        let huge: Vec<usize> = statements(&[1, 2], |_| 1 << 20).iter().map(|c| c.len()).collect();
        assert_eq!(huge, vec![1, 1], "a row bigger than a statement goes alone");
        assert!(approx_len(&json!({"key": "value", "list": [1, 2]})) >= 20);
    }

    #[test]
    fn batches_the_run_actor_makes_are_grouped_and_others_are_not() {
        // Many runs at different points: a claim, a step's end with the next start, a last end
        // with the run's end.
        let usual = [claim("a"), end("b1"), start("b", "b2"), end("c3"), run("c"), start("a", "a1")];
        assert!(can_group(&usual));
        assert!(!can_group(&[claim("a"), claim("a")]), "a run claimed twice");
        assert!(!can_group(&[end("x"), end("x")]), "an attempt ended twice");
        assert!(!can_group(&[run("a"), start("a", "a1")]), "a start after its run's write");
        assert!(!can_group(&[run("a"), claim("a")]), "a claim after its run's write");
    }
}
