//! The request outbox: no run the API accepted stays PENDING because a publish was lost.
//!
//! The platform inserted a PENDING run, then published its request; when the publish failed, or the
//! API died between the two, the run stayed PENDING forever. runvisor writes the request into
//! `runvisor_outbox` **in the same transaction** as the run row, then publishes it and deletes the
//! outbox row once the broker has acknowledged it. Whatever is left behind — the broker was down,
//! the process was killed right after answering 202 — is published by a [`Relay`], which every
//! `runvisor api`, `consume` and `dev` process runs:
//! - rows younger than `outbox.grace_ms` are left to the process that wrote them;
//! - a relay claims a row by moving its `next_attempt_at` forward with a conditional update, so two
//!   relays rarely publish the same row, and if they do the executor's claim on the run_id makes
//!   the second request a no-op (runs are idempotent by run_id);
//! - a failed publish backs off (1 s doubling to 60 s); the run's `error_message` says what failed
//!   and is cleared once the request is out;
//! - a request still unpublished after `outbox.give_up_after_ms` (0 = never) ends its run FAILED
//!   with the reason, if nothing picked the run up meanwhile; one whose run is no longer PENDING
//!   (cancelled, or already running) is dropped.
//!
//! Why an outbox rather than a sweeper that re-executes old PENDING rows: the request carries the
//! plan as it was at execute time, and the outbox publishes exactly that message, so the run does
//! not depend on a definition that may have been edited since; and it keeps Kafka the only way
//! runs reach executors.

use std::time::Duration;

use entity::{RunStatus, outbox, workflow_run};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use tokio::sync::watch;
use uuid::Uuid;

use super::now;
use crate::config::OutboxConfig;
use crate::kafka::producer::Publisher;

/// How long a relay's claim on a row holds while it publishes.
const CLAIM: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// The most rows one relay pass publishes.
const PASS: u64 = 200;

/// A record to publish: the run's request, keyed by its run_id.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub key: String,
    pub payload: String,
}

/// Writes `message` into the outbox (inside the caller's transaction) and returns its row id.
pub async fn enqueue(db: &impl ConnectionTrait, message: &Message) -> Result<Uuid, DbErr> {
    let id = Uuid::now_v7();
    let at = now();
    outbox::ActiveModel {
        id: Set(id),
        topic: Set(message.topic.clone()),
        message_key: Set(message.key.clone()),
        payload: Set(message.payload.clone()),
        created_at: Set(at),
        attempts: Set(0),
        next_attempt_at: Set(at),
        last_error: Set(None),
    }
    .insert(db)
    .await?;
    Ok(id)
}

/// Drops every request for `run_id` still in the outbox (inside the caller's transaction).
pub async fn discard(db: &impl ConnectionTrait, run_id: &str) -> Result<(), DbErr> {
    outbox::Entity::delete_many().filter(outbox::Column::MessageKey.eq(run_id)).exec(db).await?;
    Ok(())
}

/// Publishes a row just committed by this process; on success the row is deleted. An error says
/// why the broker does not have it yet: the relay will try again.
pub async fn publish_now(
    db: &DatabaseConnection,
    publisher: &Publisher,
    id: Uuid,
    message: &Message,
) -> Result<(), String> {
    match publisher.send(&message.topic, &message.key, message.payload.as_bytes()).await {
        Ok(()) => {
            if let Err(error) = outbox::Entity::delete_by_id(id).exec(db).await {
                // The relay will publish it again; the executor's claim makes that a no-op.
                tracing::warn!(%error, run_id = %message.key, "published, but the outbox row stays");
            }
            Ok(())
        }
        Err(error) if Publisher::is_permanent(&error) => {
            let reason = format!("Failed to publish to Kafka: {error}");
            if let Err(error) = give_up(db, id, &message.key, &reason).await {
                tracing::warn!(%error, "cannot record the refused request");
            }
            Err(reason)
        }
        Err(error) => {
            let reason = error.to_string();
            if let Err(error) = record_failure(db, id, 0, &reason).await {
                tracing::warn!(%error, "cannot record the failed publish");
            }
            Err(reason)
        }
    }
}

/// The error message a PENDING run carries while its request waits in the outbox.
pub fn pending_error(reason: &str) -> String {
    format!("{PUBLISH_FAILED_PREFIX}{reason}; runvisor publishes it once the broker takes it")
}

const PUBLISH_FAILED_PREFIX: &str = "Failed to publish to Kafka: ";

async fn record_failure(db: &impl ConnectionTrait, id: Uuid, attempts: i32, reason: &str) -> Result<(), DbErr> {
    let backoff = chrono::TimeDelta::seconds(1i64 << attempts.clamp(0, 6)).min(chrono::TimeDelta::seconds(60));
    outbox::Entity::update_many()
        .col_expr(outbox::Column::Attempts, Expr::value(attempts + 1))
        .col_expr(outbox::Column::NextAttemptAt, Expr::value(now() + backoff))
        .col_expr(outbox::Column::LastError, Expr::value(reason))
        .filter(outbox::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Publishes what the outbox still holds, until stopped.
#[derive(Debug)]
pub struct Relay {
    pub db: DatabaseConnection,
    pub publisher: Publisher,
    pub config: OutboxConfig,
}

impl Relay {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(Duration::from_millis(self.config.relay_interval_ms));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = every.tick() => {}
            }
            // A pass may wait on a slow broker; stopping does not wait for it.
            let passed = tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                passed = self.pass() => passed,
            };
            match passed {
                Ok(0) => {}
                Ok(published) => tracing::info!(published, "outbox: published requests left behind"),
                Err(error) => tracing::warn!(%error, "outbox relay pass failed; will try again"),
            }
        }
    }

    /// One pass over the rows due; returns how many were published. A pass ends at the first
    /// request the broker does not take: the others would wait for the same broker.
    pub async fn pass(&self) -> Result<usize, DbErr> {
        let at = now();
        let grace = chrono::TimeDelta::milliseconds(self.config.grace_ms as i64);
        let due = outbox::Entity::find()
            .filter(outbox::Column::NextAttemptAt.lte(at))
            .filter(outbox::Column::CreatedAt.lte(at - grace))
            .order_by_asc(outbox::Column::CreatedAt)
            .limit(PASS)
            .all(&self.db)
            .await?;
        let mut published = 0;
        for row in due {
            // Claim: only the relay whose update still sees the value it read goes on.
            let claimed = outbox::Entity::update_many()
                .col_expr(outbox::Column::NextAttemptAt, Expr::value(now() + CLAIM))
                .filter(outbox::Column::Id.eq(row.id))
                .filter(outbox::Column::NextAttemptAt.eq(row.next_attempt_at))
                .exec(&self.db)
                .await?;
            if claimed.rows_affected == 0 {
                continue;
            }
            match self.relay(&row).await? {
                Relayed::Published => published += 1,
                Relayed::Dropped => {}
                Relayed::BrokerRefused => break,
            }
        }
        metrics::counter!(crate::observability::metrics::OUTBOX_RELAYED).increment(published as u64);
        Ok(published)
    }

    async fn relay(&self, row: &outbox::Model) -> Result<Relayed, DbErr> {
        let run = workflow_run::Entity::find_by_id(row.message_key.as_str()).one(&self.db).await?;
        if run.as_ref().is_some_and(|run| run.status != RunStatus::Pending) {
            // Cancelled meanwhile, or already picked up from an earlier publish: nothing to do.
            outbox::Entity::delete_by_id(row.id).exec(&self.db).await?;
            return Ok(Relayed::Dropped);
        }
        match self.publisher.send(&row.topic, &row.message_key, row.payload.as_bytes()).await {
            Ok(()) => {
                outbox::Entity::delete_by_id(row.id).exec(&self.db).await?;
                clear_publish_error(&self.db, &row.message_key).await?;
                Ok(Relayed::Published)
            }
            Err(error) if Publisher::is_permanent(&error) => {
                give_up(&self.db, row.id, &row.message_key, &format!("Failed to publish to Kafka: {error}")).await?;
                Ok(Relayed::Dropped)
            }
            Err(error) => {
                let reason = error.to_string();
                let age = now() - row.created_at;
                let give_up_after = chrono::TimeDelta::milliseconds(self.config.give_up_after_ms as i64);
                if self.config.give_up_after_ms > 0 && age >= give_up_after {
                    let message =
                        format!("Failed to publish to Kafka for {} s, giving up: {reason}", age.num_seconds());
                    give_up(&self.db, row.id, &row.message_key, &message).await?;
                } else {
                    record_failure(&self.db, row.id, row.attempts, &reason).await?;
                    mark_publish_error(&self.db, &row.message_key, &reason).await?;
                }
                Ok(Relayed::BrokerRefused)
            }
        }
    }
}

/// What became of one outbox row.
enum Relayed {
    Published,
    /// Not published, and not to be: the run no longer waits for it, or it can never be sent.
    Dropped,
    /// The broker did not take it now; it is tried again later.
    BrokerRefused,
}

/// A request that will never be published: its run ends FAILED with `reason` (if still PENDING)
/// and the request leaves the outbox.
async fn give_up(db: &DatabaseConnection, id: Uuid, run_id: &str, reason: &str) -> Result<(), DbErr> {
    tracing::error!(%run_id, %reason, "outbox: request not published; run FAILED");
    fail_pending(db, run_id, reason).await?;
    outbox::Entity::delete_by_id(id).exec(db).await?;
    Ok(())
}

/// Says on a PENDING run that its request is waiting for the broker.
pub async fn mark_publish_error(db: &impl ConnectionTrait, run_id: &str, reason: &str) -> Result<(), DbErr> {
    use workflow_run::Column as C;
    workflow_run::Entity::update_many()
        .col_expr(C::ErrorMessage, Expr::value(pending_error(reason)))
        .filter(C::RunId.eq(run_id))
        .filter(C::Status.eq(RunStatus::Pending))
        .exec(db)
        .await?;
    Ok(())
}

async fn clear_publish_error(db: &impl ConnectionTrait, run_id: &str) -> Result<(), DbErr> {
    use workflow_run::Column as C;
    workflow_run::Entity::update_many()
        .col_expr(C::ErrorMessage, Expr::value(Option::<String>::None))
        .filter(C::RunId.eq(run_id))
        .filter(C::Status.eq(RunStatus::Pending))
        .filter(C::ErrorMessage.starts_with(PUBLISH_FAILED_PREFIX))
        .exec(db)
        .await?;
    Ok(())
}

/// PENDING → FAILED, and only from PENDING: once an executor has the run, the run is its.
async fn fail_pending(db: &impl ConnectionTrait, run_id: &str, message: &str) -> Result<(), DbErr> {
    use workflow_run::Column as C;
    let at = now();
    workflow_run::Entity::update_many()
        .col_expr(C::Status, Expr::value(RunStatus::Failed.as_str()))
        .col_expr(C::ErrorMessage, Expr::value(message))
        .col_expr(C::CompletedAt, Expr::value(at))
        .col_expr(C::UpdatedAt, Expr::value(at))
        .filter(C::RunId.eq(run_id))
        .filter(C::Status.eq(RunStatus::Pending))
        .exec(db)
        .await?;
    Ok(())
}
