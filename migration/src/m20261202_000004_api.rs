//! What the HTTP API needs: the platform's `audit_logs`, runvisor's request outbox, and the retry
//! bookkeeping of a run.
//!
//! - `audit_logs` is the platform's table (its API writes one row per mutation); created only where
//!   missing, with the platform's columns and indexes, so a database the platform made is adopted.
//! - `runvisor_outbox` holds execution requests committed with the run they start, until a broker
//!   has taken them (see `runvisor::service::outbox`).
//! - `workflow_runs.retry_count` / `retried_at`: how often a run was retried, and when last;
//!   `step_executions.retry_round`: the run's retry_count when the attempt started, so the executor
//!   counts only the current round's attempts against a call's retry policy.
//! - `workflow_runs.workflow_plan`: the plan of a run whose request carried it inline, for retries
//!   and resumes without the request.
//! - `workflow_definitions.superseded_by`: set on the copy a PUT keeps of the definition it
//!   replaced (the row that replaced it), so lists show each workflow once and `/versions` all.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditLogs {
    Table,
    Id,
    EntityType,
    EntityId,
    Action,
    UserId,
    Changes,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RunvisorOutbox {
    Table,
    Id,
    Topic,
    MessageKey,
    Payload,
    CreatedAt,
    Attempts,
    NextAttemptAt,
    LastError,
}

#[derive(DeriveIden)]
enum WorkflowDefinitions {
    Table,
    SupersededBy,
}

#[derive(DeriveIden)]
enum StepExecutions {
    Table,
    RetryRound,
}

#[derive(DeriveIden)]
enum WorkflowRuns {
    Table,
    RetryCount,
    RetriedAt,
    WorkflowPlan,
}

fn utc_now(backend: DbBackend) -> Expr {
    match backend {
        DbBackend::Postgres => Expr::cust("(now() AT TIME ZONE 'utc')"),
        _ => Expr::current_timestamp(),
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        manager
            .create_table(
                Table::create()
                    .table(AuditLogs::Table)
                    .if_not_exists()
                    .col(pk_uuid(AuditLogs::Id))
                    .col(string_len(AuditLogs::EntityType, 50))
                    .col(uuid(AuditLogs::EntityId))
                    .col(string_len(AuditLogs::Action, 50))
                    .col(string_len_null(AuditLogs::UserId, 255))
                    .col(json_binary_null(AuditLogs::Changes))
                    .col(timestamp(AuditLogs::CreatedAt).default(utc_now(backend)))
                    .col(timestamp(AuditLogs::UpdatedAt).default(utc_now(backend)))
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            ("idx_audit_logs_entity_type_id", vec![AuditLogs::EntityType, AuditLogs::EntityId]),
            ("idx_audit_logs_created_at", vec![AuditLogs::CreatedAt]),
            ("idx_audit_logs_action", vec![AuditLogs::Action]),
        ] {
            let mut index = Index::create();
            index.name(name).table(AuditLogs::Table).if_not_exists();
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(RunvisorOutbox::Table)
                    .if_not_exists()
                    .col(pk_uuid(RunvisorOutbox::Id))
                    .col(string_len(RunvisorOutbox::Topic, 255))
                    .col(string_len(RunvisorOutbox::MessageKey, 255))
                    .col(text(RunvisorOutbox::Payload))
                    .col(timestamp(RunvisorOutbox::CreatedAt).default(utc_now(backend)))
                    .col(integer(RunvisorOutbox::Attempts).default(0))
                    .col(timestamp(RunvisorOutbox::NextAttemptAt).default(utc_now(backend)))
                    .col(text_null(RunvisorOutbox::LastError))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_runvisor_outbox_next_attempt_at")
                    .table(RunvisorOutbox::Table)
                    .col(RunvisorOutbox::NextAttemptAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        // Checked one by one: a database where some already exist (a partial earlier run on SQLite,
        // which has no transactional DDL here) still upgrades.
        let columns = [
            (WorkflowRuns::Table.into_iden(), integer(WorkflowRuns::RetryCount).default(0).to_owned()),
            (WorkflowRuns::Table.into_iden(), timestamp_null(WorkflowRuns::RetriedAt)),
            (WorkflowRuns::Table.into_iden(), json_binary_null(WorkflowRuns::WorkflowPlan)),
            (WorkflowDefinitions::Table.into_iden(), uuid_null(WorkflowDefinitions::SupersededBy)),
            (StepExecutions::Table.into_iden(), integer(StepExecutions::RetryRound).default(0).to_owned()),
        ];
        for (table, mut column) in columns {
            let name = column.get_column_name();
            if !manager.has_column(&table.to_string(), &name).await? {
                manager.alter_table(Table::alter().table(table).add_column(&mut column).to_owned()).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(StepExecutions::Table).drop_column(StepExecutions::RetryRound).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(WorkflowDefinitions::Table)
                    .drop_column(WorkflowDefinitions::SupersededBy)
                    .to_owned(),
            )
            .await?;
        for column in [WorkflowRuns::RetryCount, WorkflowRuns::RetriedAt, WorkflowRuns::WorkflowPlan] {
            manager.alter_table(Table::alter().table(WorkflowRuns::Table).drop_column(column).to_owned()).await?;
        }
        manager.drop_table(Table::drop().table(RunvisorOutbox::Table).if_exists().to_owned()).await?;
        // audit_logs may be the platform's: it is left in place.
        Ok(())
    }
}
