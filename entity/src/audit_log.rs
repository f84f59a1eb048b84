//! `audit_logs`: one row per mutation made through the API, as the platform's API writes them.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_logs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// `agent`, `workflow` or `run`.
    pub entity_type: String,
    /// For runs: the UUID inside the run_id (`run-<uuid>`), as the platform records it.
    pub entity_id: Uuid,
    /// `create`, `update`, `delete`, `execute`, `retry` or `cancel`.
    pub action: String,
    pub user_id: Option<String>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub changes: Option<Json>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
