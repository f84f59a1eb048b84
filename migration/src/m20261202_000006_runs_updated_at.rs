//! An index on `workflow_runs.updated_at`: the dashboard's change feed asks, once a second while a
//! page is open, which runs changed since its last look. Without the index that is a scan of the
//! whole table; with 100,000 runs, a scan per second per API process.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WorkflowRuns {
    Table,
    UpdatedAt,
}

const NAME: &str = "idx_workflow_runs_updated_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(NAME)
                    .table(WorkflowRuns::Table)
                    .col(WorkflowRuns::UpdatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name(NAME).table(WorkflowRuns::Table).to_owned()).await
    }
}
