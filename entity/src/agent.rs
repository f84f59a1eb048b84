//! `agents`: the HTTP agents the platform registered. Config entries override rows of the same name.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "agents")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub name: String,
    pub url: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub description: Option<String>,
    /// `none`, `bearer` or `apikey`.
    pub auth_type: Option<String>,
    /// `{"token"}` for bearer, `{"key", "header_name"}` for apikey.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub auth_config: Option<Json>,
    pub timeout_ms: i32,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub retry_config: Option<Json>,
    pub status: String,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
