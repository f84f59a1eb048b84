//! `workflow_runs`: one row per run_id, the idempotency key of a request.

use sea_orm::entity::prelude::*;

use crate::RunStatus;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "workflow_runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "String(StringLen::N(255))")]
    pub run_id: String,
    pub workflow_id: String,
    pub workflow_name: String,
    pub workflow_definition_id: Option<Uuid>,
    pub status: RunStatus,
    #[sea_orm(column_type = "JsonBinary")]
    pub input_data: Json,
    pub triggered_by: Option<String>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    pub completed_at: Option<DateTime>,
    pub cancelled_at: Option<DateTime>,
    pub cancelled_by: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error_message: Option<String>,
    /// The output of the last step of the main chain (CONTRACT.md §3).
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub output_data: Option<Json>,
    /// The executor that holds the run (runvisor's column; null for runs no executor claimed).
    pub owner_id: Option<String>,
    /// Until when `owner_id`'s claim holds; another executor may take the run over after it.
    pub lease_expires_at: Option<DateTime>,
    /// How often the run was retried through the API (runvisor's column).
    pub retry_count: i32,
    /// When it was last retried: attempts before this do not count against the retry budget of
    /// the calls it runs again.
    pub retried_at: Option<DateTime>,
    /// The plan of a run whose request carried it inline (runvisor's column): what a retry or a
    /// resume without the request runs. Runs of a stored definition leave it null.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub workflow_plan: Option<Json>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::step_execution::Entity")]
    StepExecutions,
}

impl Related<super::step_execution::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::StepExecutions.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
