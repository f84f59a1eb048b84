//! `runvisor_group_members`: which Kafka partitions each live executor holds (runvisor's own table).
//!
//! Every executor rewrites its row per consumer group every few seconds with a short expiry, so
//! the live rows together say which partitions someone consumes. A partition in no live row for
//! longer than a rebalance takes is held by nobody: the group coordinator has lost track of a dead
//! member, and the executors rejoin to make it reassign (see `runvisor::kafka::membership`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "runvisor_group_members")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "String(StringLen::N(255))")]
    pub group_id: String,
    #[sea_orm(primary_key, auto_increment = false, column_type = "String(StringLen::N(64))")]
    pub owner_id: String,
    /// The partition numbers of the group's topic that this executor holds, as a JSON array.
    #[sea_orm(column_type = "JsonBinary")]
    pub partitions: Json,
    /// The row stops counting after this (UTC): an executor that died holds nothing.
    pub expires_at: DateTime,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
