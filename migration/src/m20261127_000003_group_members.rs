//! `runvisor_group_members`: the partitions each live executor holds, per consumer group.
//!
//! runvisor's own table (the platform never reads it): executors compare the live rows with the
//! topic's partitions to notice partitions that no live member consumes (see the entity's docs).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RunvisorGroupMembers {
    Table,
    GroupId,
    OwnerId,
    Partitions,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RunvisorGroupMembers::Table)
                    .if_not_exists()
                    .col(string_len(RunvisorGroupMembers::GroupId, 255))
                    .col(string_len(RunvisorGroupMembers::OwnerId, 64))
                    .col(json_binary(RunvisorGroupMembers::Partitions))
                    .col(timestamp(RunvisorGroupMembers::ExpiresAt))
                    .primary_key(Index::create().col(RunvisorGroupMembers::GroupId).col(RunvisorGroupMembers::OwnerId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(RunvisorGroupMembers::Table).to_owned()).await
    }
}
