//! One write applied on its own, and the rows writes make: the path of SQLite, of a batch that
//! cannot be grouped (see `batch`), and of the one-at-a-time retries that find a rejected write.

use entity::{RunStatus, StepStatus, step_execution, workflow_run};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set};
use serde_json::Value;

use super::{AttemptStart, Claim, RunWrite, WriteOp};

/// The row a [`RunWrite`] upserts.
pub(super) fn run_write_row(run: &RunWrite) -> workflow_run::ActiveModel {
    let mut row = run_row(run);
    row.completed_at = Set(run.status.is_terminal().then_some(run.at));
    row.cancelled_at = Set((run.status == RunStatus::Cancelled).then_some(run.at));
    row.lease_expires_at = Set(None);
    row
}

/// What a [`RunWrite`] changes on an existing row.
pub(super) const RUN_WRITE_COLUMNS: [workflow_run::Column; 8] = [
    workflow_run::Column::Status,
    workflow_run::Column::UpdatedAt,
    workflow_run::Column::CompletedAt,
    workflow_run::Column::CancelledAt,
    workflow_run::Column::CancelledBy,
    workflow_run::Column::ErrorMessage,
    workflow_run::Column::OutputData,
    workflow_run::Column::LeaseExpiresAt,
];

/// The row an attempt's start inserts.
pub(super) fn attempt_row(attempt: &AttemptStart) -> step_execution::ActiveModel {
    step_execution::ActiveModel {
        id: Set(attempt.id.clone()),
        run_id: Set(attempt.run_id.clone()),
        step_id: Set(attempt.step_id.clone()),
        step_name: Set(attempt.agent_name.clone()),
        agent_name: Set(attempt.agent_name.clone()),
        status: Set(StepStatus::Running),
        input_data: Set(Value::clone(&attempt.input)),
        output_data: Set(None),
        started_at: Set(attempt.started_at),
        completed_at: Set(None),
        error_message: Set(None),
        parent_step_id: Set(attempt.parent_step_id.clone()),
        branch_name: Set(attempt.branch_name.clone()),
        join_policy: Set(attempt.join_policy.clone()),
        loop_iteration_index: Set(attempt.loop_iteration_index),
        attempt: Set(attempt.attempt),
        retry_round: Set(attempt.retry_round),
        executor_id: Set(Some(attempt.owner.clone())),
    }
}

/// The row a claim inserts: RUNNING, owned, leased.
pub(super) fn claim_row(claim: &Claim) -> workflow_run::ActiveModel {
    let mut row = run_row(&claim.run);
    let until = claim.run.at + chrono::Duration::from_std(claim.lease).unwrap_or(chrono::Duration::seconds(15));
    row.status = Set(RunStatus::Running);
    row.owner_id = Set(Some(claim.owner.clone()));
    row.lease_expires_at = Set(Some(until));
    row
}

/// A claim takes an existing row only if it is PENDING and was never claimed nor retried (an
/// API-created run waiting for its first executor), or if the row is as this very claim left it
/// and its lease still holds at `now`.
///
/// Why the second: a persistence actor killed after a commit but before acknowledging it (or a
/// commit whose answer was lost with the connection) commits the same batch again. Its claims then
/// find their runs RUNNING under their own owner, and with them the first attempts they wrote;
/// answered "not won", a RunActor would claim the full way, find its own first attempt in the
/// history as a lost executor's, and start the call as attempt 2. Nothing else of the run can have
/// been written meanwhile (its RunActor waits for the claim's acknowledgement), and nothing else
/// writes that `updated_at` with that owner (lease renewals leave `updated_at` alone; any later
/// write of the run moves it), so such a claim is answered won again and its first attempt, already
/// there, is left as it is. Its lease is left as it is too: renewals may have extended it since,
/// or a release ended it, and the claim's own would wind either back. A replay that comes after
/// the lease ran out is not won: the full claim then takes a fresh lease, and the first attempt is
/// ended as a lost one.
pub(super) fn claim_conflict(now: chrono::NaiveDateTime) -> OnConflict {
    use workflow_run::Column as C;
    let run = |column| Expr::col((workflow_run::Entity, column));
    let never_claimed =
        run(C::Status).eq(RunStatus::Pending.as_str()).and(run(C::OwnerId).is_null()).and(run(C::RetryCount).eq(0));
    let this_claim_again = run(C::Status)
        .eq(RunStatus::Running.as_str())
        .and(run(C::OwnerId).eq(Expr::cust("excluded.owner_id")))
        .and(run(C::UpdatedAt).eq(Expr::cust("excluded.updated_at")))
        .and(run(C::LeaseExpiresAt).gt(now));
    let mut on_conflict = OnConflict::column(C::RunId);
    on_conflict
        .update_columns([C::Status, C::OwnerId, C::UpdatedAt])
        .value(
            C::LeaseExpiresAt,
            Expr::cust(
                "CASE WHEN workflow_runs.owner_id IS NULL THEN excluded.lease_expires_at \
                 ELSE workflow_runs.lease_expires_at END",
            ),
        )
        .action_and_where(never_claimed.or(this_claim_again));
    on_conflict
}

pub(super) const TERMINAL_RUN: [&str; 3] = ["COMPLETED", "FAILED", "CANCELLED"];

/// The row a [`RunWrite`] inserts when the run has none.
pub(super) fn run_row(run: &RunWrite) -> workflow_run::ActiveModel {
    workflow_run::ActiveModel {
        run_id: Set(run.run_id.clone()),
        workflow_id: Set(run.workflow_id.clone()),
        workflow_name: Set(run.workflow_name.clone()),
        workflow_definition_id: Set(run.definition_id),
        status: Set(run.status),
        input_data: Set(Value::clone(&run.input)),
        triggered_by: Set(run.triggered_by.clone()),
        created_at: Set(run.at),
        updated_at: Set(run.at),
        completed_at: Set(None),
        cancelled_at: Set(None),
        cancelled_by: Set(run.cancelled_by.clone()),
        error_message: Set(run.error.clone()),
        output_data: Set(run.output.clone()),
        owner_id: Set(run.owner.clone()),
        lease_expires_at: Set(None),
        retry_count: sea_orm::ActiveValue::NotSet,
        retried_at: sea_orm::ActiveValue::NotSet,
        workflow_plan: Set(run.plan.as_deref().cloned()),
    }
}

pub(super) async fn apply(db: &impl ConnectionTrait, op: &WriteOp) -> Result<u64, DbErr> {
    Ok(match op {
        WriteOp::Run(run) => {
            let row = run_write_row(run);
            use workflow_run::Column as C;
            let mut on_conflict = OnConflict::column(C::RunId);
            let mut guard = Expr::col((workflow_run::Entity, C::Status)).is_not_in(TERMINAL_RUN);
            if let Some(owner) = &run.owner {
                let owner_col = Expr::col((workflow_run::Entity, C::OwnerId));
                guard = guard.and(owner_col.clone().is_null().or(owner_col.eq(owner.as_str())));
            }
            if let Some(requested) = run.cancel_requested_at {
                let retried = Expr::col((workflow_run::Entity, C::RetriedAt));
                guard = guard.and(retried.clone().is_null().or(retried.lte(requested)));
            }
            on_conflict.update_columns(RUN_WRITE_COLUMNS).action_and_where(guard);
            workflow_run::Entity::insert(row).on_conflict(on_conflict).exec_without_returning(db).await?
        }
        WriteOp::ClaimNew(claim) => {
            let claimed = workflow_run::Entity::insert(claim_row(claim))
                .on_conflict(claim_conflict(chrono::Utc::now().naive_utc()))
                .exec_without_returning(db)
                .await?;
            if let (1, Some(first)) = (claimed, &claim.first_attempt) {
                insert_attempt(db, first).await?;
            }
            claimed
        }
        WriteOp::AttemptStarted(attempt) => insert_attempt(db, attempt).await?,
        WriteOp::AttemptEnded(end) => {
            use step_execution::Column as C;
            step_execution::Entity::update_many()
                .col_expr(C::Status, Expr::value(end.status.as_str()))
                .col_expr(C::OutputData, Expr::value(end.output.as_deref().cloned()))
                .col_expr(C::ErrorMessage, Expr::value(end.error.clone()))
                .col_expr(C::CompletedAt, Expr::value(end.at))
                .filter(C::Id.eq(end.id.as_str()))
                .filter(C::Status.eq(StepStatus::Running))
                .exec(db)
                .await?
                .rows_affected
        }
        WriteOp::AbandonAttempts { run_id, status, message, at, .. } => {
            use step_execution::Column as C;
            step_execution::Entity::update_many()
                .col_expr(C::Status, Expr::value(status.as_str()))
                .col_expr(C::ErrorMessage, Expr::value(message.as_str()))
                .col_expr(C::CompletedAt, Expr::value(*at))
                .filter(C::RunId.eq(run_id.as_str()))
                .filter(C::Status.eq(StepStatus::Running))
                .exec(db)
                .await?
                .rows_affected
        }
        WriteOp::Barrier => 0,
    })
}

/// Inserts an attempt's RUNNING row unless it is there (a batch committed again after a crash).
async fn insert_attempt(db: &impl ConnectionTrait, attempt: &AttemptStart) -> Result<u64, DbErr> {
    step_execution::Entity::insert(attempt_row(attempt))
        .on_conflict(OnConflict::column(step_execution::Column::Id).do_nothing().to_owned())
        .exec_without_returning(db)
        .await
}
