//! `workflow_definitions`: stored plans, referenced by `workflow_definition_id` in a request.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "workflow_definitions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub description: Option<String>,
    pub version: i32,
    /// The plan, in the format of CONTRACT.md §3.
    #[sea_orm(column_type = "JsonBinary")]
    pub workflow_data: Json,
    pub status: String,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    /// On the copy a PUT keeps of a definition it replaced: the row that replaced it (runvisor's
    /// column). Lists leave such rows out; `/versions` and reads by id show them.
    pub superseded_by: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
