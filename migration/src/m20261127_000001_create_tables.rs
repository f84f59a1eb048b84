//! The four tables of the contract, with the indexes the executor's lookups need.

use sea_orm_migration::sea_orm::DbBackend;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WorkflowDefinitions {
    Table,
    Id,
    Name,
    Description,
    Version,
    WorkflowData,
    Status,
    CreatedBy,
    UpdatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Agents {
    Table,
    Id,
    Name,
    Url,
    Description,
    AuthType,
    AuthConfig,
    TimeoutMs,
    RetryConfig,
    Status,
    CreatedBy,
    UpdatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WorkflowRuns {
    Table,
    RunId,
    WorkflowId,
    WorkflowName,
    WorkflowDefinitionId,
    Status,
    InputData,
    TriggeredBy,
    CreatedAt,
    UpdatedAt,
    CompletedAt,
    CancelledAt,
    CancelledBy,
    ErrorMessage,
    OutputData,
}

#[derive(DeriveIden)]
enum StepExecutions {
    Table,
    Id,
    RunId,
    StepId,
    StepName,
    AgentName,
    Status,
    InputData,
    OutputData,
    StartedAt,
    CompletedAt,
    ErrorMessage,
    ParentStepId,
    BranchName,
    JoinPolicy,
    LoopIterationIndex,
    Attempt,
}

/// "Now" as a UTC `timestamp without time zone`. PostgreSQL's `CURRENT_TIMESTAMP` is in the
/// session's zone, and the platform reads these columns as naive UTC.
fn utc_now(backend: DbBackend) -> Expr {
    match backend {
        DbBackend::Postgres => Expr::cust("(now() AT TIME ZONE 'utc')"),
        _ => Expr::current_timestamp(),
    }
}

fn created_updated(
    table: &mut TableCreateStatement,
    backend: DbBackend,
    created: impl IntoIden,
    updated: impl IntoIden,
) {
    table.col(timestamp(created).default(utc_now(backend))).col(timestamp(updated).default(utc_now(backend)));
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();

        let mut definitions = Table::create();
        definitions
            .table(WorkflowDefinitions::Table)
            .if_not_exists()
            .col(pk_uuid(WorkflowDefinitions::Id))
            .col(string(WorkflowDefinitions::Name))
            .col(text_null(WorkflowDefinitions::Description))
            .col(integer(WorkflowDefinitions::Version).default(1))
            .col(json_binary(WorkflowDefinitions::WorkflowData))
            .col(string_len(WorkflowDefinitions::Status, 32).default("active"))
            .col(string_null(WorkflowDefinitions::CreatedBy))
            .col(string_null(WorkflowDefinitions::UpdatedBy));
        created_updated(&mut definitions, backend, WorkflowDefinitions::CreatedAt, WorkflowDefinitions::UpdatedAt);
        definitions.index(
            Index::create()
                .name("uq_workflow_definitions_name_version")
                .col(WorkflowDefinitions::Name)
                .col(WorkflowDefinitions::Version)
                .unique(),
        );
        manager.create_table(definitions).await?;

        let mut agents = Table::create();
        agents
            .table(Agents::Table)
            .if_not_exists()
            .col(pk_uuid(Agents::Id))
            .col(string_uniq(Agents::Name))
            .col(string_len(Agents::Url, 2048))
            .col(text_null(Agents::Description))
            .col(string_len_null(Agents::AuthType, 32))
            .col(json_binary_null(Agents::AuthConfig))
            .col(integer(Agents::TimeoutMs).default(30000))
            .col(json_binary_null(Agents::RetryConfig))
            .col(string_len(Agents::Status, 32).default("active"))
            .col(string_null(Agents::CreatedBy))
            .col(string_null(Agents::UpdatedBy));
        created_updated(&mut agents, backend, Agents::CreatedAt, Agents::UpdatedAt);
        manager.create_table(agents).await?;

        let mut runs = Table::create();
        runs.table(WorkflowRuns::Table)
            .if_not_exists()
            .col(string_len(WorkflowRuns::RunId, 255).primary_key())
            .col(string(WorkflowRuns::WorkflowId))
            .col(string(WorkflowRuns::WorkflowName))
            .col(uuid_null(WorkflowRuns::WorkflowDefinitionId))
            .col(string_len(WorkflowRuns::Status, 16).default("PENDING"))
            .col(json_binary(WorkflowRuns::InputData))
            .col(string_null(WorkflowRuns::TriggeredBy));
        created_updated(&mut runs, backend, WorkflowRuns::CreatedAt, WorkflowRuns::UpdatedAt);
        runs.col(timestamp_null(WorkflowRuns::CompletedAt))
            .col(timestamp_null(WorkflowRuns::CancelledAt))
            .col(string_null(WorkflowRuns::CancelledBy))
            .col(text_null(WorkflowRuns::ErrorMessage))
            .col(json_binary_null(WorkflowRuns::OutputData));
        manager.create_table(runs).await?;

        manager
            .create_table(
                Table::create()
                    .table(StepExecutions::Table)
                    .if_not_exists()
                    .col(string_len(StepExecutions::Id, 255).primary_key())
                    .col(string_len(StepExecutions::RunId, 255))
                    .col(string(StepExecutions::StepId))
                    .col(string(StepExecutions::StepName))
                    .col(string(StepExecutions::AgentName))
                    .col(string_len(StepExecutions::Status, 16))
                    .col(json_binary(StepExecutions::InputData))
                    .col(json_binary_null(StepExecutions::OutputData))
                    .col(timestamp(StepExecutions::StartedAt).default(utc_now(backend)))
                    .col(timestamp_null(StepExecutions::CompletedAt))
                    .col(text_null(StepExecutions::ErrorMessage))
                    .col(string_null(StepExecutions::ParentStepId))
                    .col(string_null(StepExecutions::BranchName))
                    .col(string_len_null(StepExecutions::JoinPolicy, 32))
                    .col(integer_null(StepExecutions::LoopIterationIndex))
                    .col(integer(StepExecutions::Attempt).default(1))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_step_executions_run_id")
                            .from(StepExecutions::Table, StepExecutions::RunId)
                            .to(WorkflowRuns::Table, WorkflowRuns::RunId)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        // The executor finds unfinished runs by status, lists recent runs by creation time, and loads
        // a run's attempts by run_id (the contract's second query orders attempts by started_at).
        let indexes = [
            ("idx_workflow_runs_status", WorkflowRuns::Table.into_iden(), vec![WorkflowRuns::Status.into_iden()]),
            (
                "idx_workflow_runs_created_at",
                WorkflowRuns::Table.into_iden(),
                vec![WorkflowRuns::CreatedAt.into_iden()],
            ),
            (
                "idx_step_executions_run_id_step_id",
                StepExecutions::Table.into_iden(),
                vec![StepExecutions::RunId.into_iden(), StepExecutions::StepId.into_iden()],
            ),
            (
                "idx_step_executions_started_at",
                StepExecutions::Table.into_iden(),
                vec![StepExecutions::StartedAt.into_iden()],
            ),
        ];
        for (name, table, columns) in indexes {
            let mut index = Index::create();
            index.name(name).table(table).if_not_exists();
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            StepExecutions::Table.into_iden(),
            WorkflowRuns::Table.into_iden(),
            Agents::Table.into_iden(),
            WorkflowDefinitions::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
