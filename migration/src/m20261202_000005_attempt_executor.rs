//! `step_executions.executor_id`: which executor made an attempt.
//!
//! Runs move between executors (a dead one's runs are taken over, a SIGTERMed one's resumed
//! elsewhere); an operator reading a run's history, and the nemesis test checking that no two
//! executors ever ran a run at once, need to know whose each attempt was. Nullable, so the
//! platform's inserts are unaffected.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum StepExecutions {
    Table,
    ExecutorId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.has_column("step_executions", "executor_id").await? {
            return Ok(());
        }
        manager
            .alter_table(
                Table::alter()
                    .table(StepExecutions::Table)
                    .add_column(string_len_null(StepExecutions::ExecutorId, 64))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(StepExecutions::Table).drop_column(StepExecutions::ExecutorId).to_owned())
            .await
    }
}
