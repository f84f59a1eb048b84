//! Reads and the transactions of their own that the persistence actor answers between write
//! batches: agents, definitions, a stored run, the full claim, lease renewal and release, orphans,
//! and consumer group membership.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use backon::Retryable;
use chrono::NaiveDateTime;
use entity::{RunStatus, agent, group_member, step_execution, workflow_definition, workflow_run};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use serde_json::Value;

use super::rows::run_row;
use super::{Claim, ClaimOutcome, Journal, LeaseState, PersistError, ReadRequest, contention_delays, fence};
use crate::db::is_transient;

pub(super) async fn answer(db: &DatabaseConnection, journal: &Journal, request: ReadRequest) {
    let read_error = |e: DbErr| PersistError::Read(e.to_string());
    match request {
        ReadRequest::Agents(port) => {
            let _ = port.send(agent::Entity::find().all(db).await.map_err(read_error));
        }
        ReadRequest::Definition(id, port) => {
            let _ = port.send(workflow_definition::Entity::find_by_id(id).one(db).await.map_err(read_error));
        }
        ReadRequest::Run(run_id, port) => {
            let result = async {
                let Some(run) = workflow_run::Entity::find_by_id(run_id.as_str()).one(db).await? else {
                    return Ok(None);
                };
                let steps = step_execution::Entity::find()
                    .filter(step_execution::Column::RunId.eq(run_id.as_str()))
                    .order_by_asc(step_execution::Column::StartedAt)
                    .all(db)
                    .await?;
                Ok(Some((run, steps)))
            }
            .await
            .map_err(read_error);
            let _ = port.send(result);
        }
        ReadRequest::Claim(claim, port) => {
            let claimed = (|| claim_run(db, &claim)).retry(contention_delays()).when(is_transient).await;
            let _ = port.send(claimed.map_err(read_error));
        }
        ReadRequest::Renew { owner, until, runs, reply } => {
            let asked = chrono::Utc::now().naive_utc();
            let renewed = (|| renew(db, &owner, until, &runs)).retry(contention_delays()).when(is_transient).await;
            if renewed.is_ok() {
                journal.fence_free_until_ms.store(fence::free_until(asked, until), Ordering::Release);
            }
            let _ = reply.send(renewed.map_err(read_error));
        }
        ReadRequest::Release { owner, reply } => {
            use workflow_run::Column as C;
            let now = chrono::Utc::now().naive_utc();
            let released = workflow_run::Entity::update_many()
                .col_expr(C::LeaseExpiresAt, Expr::value(now))
                .filter(C::OwnerId.eq(owner.as_str()))
                .filter(C::Status.eq(RunStatus::Running))
                .exec(db)
                .await
                .map(|r| r.rows_affected)
                .map_err(read_error);
            let _ = reply.send(released);
        }
        ReadRequest::Orphans { cutoff, limit, reply } => {
            use workflow_run::Column as C;
            let running = C::Status
                .eq(RunStatus::Running)
                .and(C::LeaseExpiresAt.lt(cutoff).or(C::LeaseExpiresAt.is_null().and(C::UpdatedAt.lt(cutoff))));
            let pending = C::Status.eq(RunStatus::Pending).and(C::UpdatedAt.lt(cutoff));
            let found = workflow_run::Entity::find()
                .filter(running.or(pending))
                .order_by_asc(C::UpdatedAt)
                .limit(limit)
                .all(db)
                .await
                .map_err(read_error);
            let _ = reply.send(found);
        }
        ReadRequest::Membership { owner, until, held, reply } => {
            let live = (|| report_membership(db, &owner, until, &held))
                .retry(contention_delays())
                .when(is_transient)
                .await
                .map_err(read_error);
            let _ = reply.send(live);
        }
    }
}

/// How long a member's row is kept after it expired, for an operator looking at recent history.
pub(super) const EXPIRED_MEMBERS_KEPT: chrono::TimeDelta = chrono::TimeDelta::hours(1);

pub(super) async fn report_membership(
    db: &DatabaseConnection,
    owner: &str,
    until: NaiveDateTime,
    held: &[(String, Vec<i32>)],
) -> Result<Vec<BTreeSet<i32>>, DbErr> {
    use group_member::Column as C;
    let now = chrono::Utc::now().naive_utc();
    let txn = db.begin().await?;
    for (group, partitions) in held {
        let row = group_member::ActiveModel {
            group_id: Set(group.clone()),
            owner_id: Set(owner.to_string()),
            partitions: Set(Value::from(partitions.clone())),
            expires_at: Set(until),
        };
        group_member::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([C::GroupId, C::OwnerId]).update_columns([C::Partitions, C::ExpiresAt]).to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
    }
    group_member::Entity::delete_many().filter(C::ExpiresAt.lt(now - EXPIRED_MEMBERS_KEPT)).exec(&txn).await?;
    txn.commit().await?;
    let mut live = Vec::with_capacity(held.len());
    for (group, _) in held {
        let rows = group_member::Entity::find().filter(C::GroupId.eq(group.as_str())).all(db).await?;
        live.push(
            rows.iter()
                .filter(|row| row.expires_at > now)
                .filter_map(|row| row.partitions.as_array())
                .flatten()
                .filter_map(|p| p.as_i64().and_then(|p| i32::try_from(p).ok()))
                .collect(),
        );
    }
    Ok(live)
}

/// Claims a run in one transaction (CONTRACT.md §7.2: two executors never run a run at once).
pub(super) async fn claim_run(db: &DatabaseConnection, claim: &Claim) -> Result<ClaimOutcome, DbErr> {
    use workflow_run::Column as C;
    let run_id = claim.run.run_id.as_str();
    // Two executors may race to insert the same new run; the loser re-reads and finds it held.
    for _ in 0..3 {
        let now = chrono::Utc::now().naive_utc();
        let until = now + chrono::Duration::from_std(claim.lease).unwrap_or(chrono::Duration::seconds(15));
        let txn = db.begin().await?;
        let mut select = workflow_run::Entity::find_by_id(run_id);
        if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            select = select.lock_exclusive();
        }
        let (taken_over, retry_round, retried_at) = match select.one(&txn).await? {
            None => {
                let mut row = run_row(&claim.run);
                row.status = Set(RunStatus::Running);
                row.owner_id = Set(Some(claim.owner.clone()));
                row.lease_expires_at = Set(Some(until));
                let inserted = workflow_run::Entity::insert(row)
                    .on_conflict(OnConflict::column(C::RunId).do_nothing().to_owned())
                    .exec_without_returning(&txn)
                    .await?;
                if inserted == 0 {
                    txn.rollback().await?;
                    continue;
                }
                (false, 0, None)
            }
            Some(row) if row.status.is_terminal() => {
                txn.rollback().await?;
                return Ok(ClaimOutcome::Terminal(Box::new(row)));
            }
            Some(row) => {
                let held_by_other = row.owner_id.as_deref().is_some_and(|o| o != claim.owner);
                if let (true, Some(lease)) = (held_by_other, row.lease_expires_at)
                    && lease > now
                {
                    txn.rollback().await?;
                    return Ok(ClaimOutcome::Held { owner: row.owner_id.unwrap_or_default(), until: lease });
                }
                workflow_run::Entity::update_many()
                    .col_expr(C::Status, Expr::value(RunStatus::Running.as_str()))
                    .col_expr(C::OwnerId, Expr::value(claim.owner.as_str()))
                    .col_expr(C::LeaseExpiresAt, Expr::value(until))
                    .col_expr(C::UpdatedAt, Expr::value(now))
                    .filter(C::RunId.eq(run_id))
                    .exec(&txn)
                    .await?;
                (row.status == RunStatus::Running && held_by_other, row.retry_count, row.retried_at)
            }
        };
        txn.commit().await?;
        let history = step_execution::Entity::find().filter(step_execution::Column::RunId.eq(run_id)).all(db).await?;
        return Ok(ClaimOutcome::Claimed { history, taken_over, retry_round, retried_at, wrote_first_attempt: false });
    }
    Err(DbErr::Custom(format!("could not claim run '{run_id}': it kept changing under the claim")))
}

pub(super) async fn renew(
    db: &DatabaseConnection,
    owner: &str,
    until: NaiveDateTime,
    runs: &[String],
) -> Result<Vec<LeaseState>, DbErr> {
    use workflow_run::Column as C;
    workflow_run::Entity::update_many()
        .col_expr(C::LeaseExpiresAt, Expr::value(until))
        .filter(C::OwnerId.eq(owner))
        .filter(C::Status.eq(RunStatus::Running))
        .exec(db)
        .await?;
    let mut states = Vec::with_capacity(runs.len());
    for chunk in runs.chunks(500) {
        let rows =
            workflow_run::Entity::find().filter(C::RunId.is_in(chunk.iter().map(String::as_str))).all(db).await?;
        states.extend(rows.into_iter().map(|r| LeaseState { run_id: r.run_id, status: r.status, owner: r.owner_id }));
    }
    Ok(states)
}
