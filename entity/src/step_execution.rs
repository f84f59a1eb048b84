//! `step_executions`: one row per agent call attempt, including calls made inside parallel blocks,
//! conditional branches, loop iterations and fork-join branches.

use sea_orm::entity::prelude::*;

use crate::StepStatus;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "step_executions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "String(StringLen::N(255))")]
    pub id: String,
    #[sea_orm(column_type = "String(StringLen::N(255))")]
    pub run_id: String,
    pub step_id: String,
    /// The platform's UI shows this column; the contract sets it to the agent's name.
    pub step_name: String,
    pub agent_name: String,
    pub status: StepStatus,
    #[sea_orm(column_type = "JsonBinary")]
    pub input_data: Json,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub output_data: Option<Json>,
    pub started_at: DateTime,
    pub completed_at: Option<DateTime>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error_message: Option<String>,
    /// The compound step (parallel, conditional, loop, fork_join) this call ran inside.
    pub parent_step_id: Option<String>,
    pub branch_name: Option<String>,
    pub join_policy: Option<String>,
    pub loop_iteration_index: Option<i32>,
    /// 1 for the first attempt of a call; retries count up from there.
    pub attempt: i32,
    /// The run's `retry_count` when this attempt started (runvisor's column): a retried run counts
    /// only the current round's attempts against a call's retry policy.
    pub retry_round: i32,
    /// The executor that made this attempt (runvisor's column; `workflow_runs.owner_id` at the
    /// time): runs move between executors, and their history says whose each attempt was.
    pub executor_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::workflow_run::Entity",
        from = "Column::RunId",
        to = "super::workflow_run::Column::RunId",
        on_delete = "Cascade"
    )]
    WorkflowRun,
}

impl Related<super::workflow_run::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::WorkflowRun.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
