//! Run ownership: which executor runs a run, and until when its claim holds.
//!
//! An executor claims a run by setting `owner_id` and `lease_expires_at`, renews the lease while it
//! works, and another executor may take the run over only once the lease has expired. Both columns
//! are nullable, so the platform's inserts are unaffected.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WorkflowRuns {
    Table,
    OwnerId,
    LeaseExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Checked one by one so that a database where a column already exists (added by hand, or by
        // a partial earlier run on SQLite, which has no transactional DDL here) still upgrades.
        if !manager.has_column("workflow_runs", "owner_id").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(WorkflowRuns::Table)
                        .add_column(string_len_null(WorkflowRuns::OwnerId, 64))
                        .to_owned(),
                )
                .await?;
        }
        if !manager.has_column("workflow_runs", "lease_expires_at").await? {
            manager
                .alter_table(
                    Table::alter()
                        .table(WorkflowRuns::Table)
                        .add_column(timestamp_null(WorkflowRuns::LeaseExpiresAt))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_workflow_runs_owner_id")
                    .table(WorkflowRuns::Table)
                    .col(WorkflowRuns::OwnerId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name("idx_workflow_runs_owner_id").table(WorkflowRuns::Table).to_owned())
            .await?;
        for column in [WorkflowRuns::OwnerId, WorkflowRuns::LeaseExpiresAt] {
            manager.alter_table(Table::alter().table(WorkflowRuns::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}
