//! `runvisor_outbox`: Kafka messages committed together with the rows they concern, kept until a
//! broker has taken them (runvisor's own table). A run the API accepted is thereby published even
//! if the API dies between its commit and its publish, or the broker is down at that moment.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "runvisor_outbox")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub topic: String,
    /// The record's key: the run_id.
    pub message_key: String,
    /// The record's value, exactly as it will be published.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    pub created_at: DateTime,
    /// Publishing attempts that failed so far.
    pub attempts: i32,
    /// Not tried again before this (UTC): failed attempts back off.
    pub next_attempt_at: DateTime,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
