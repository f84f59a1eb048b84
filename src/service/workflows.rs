//! Workflow definitions: the `workflow_definitions` table as the platform's API serves it
//! (API.md §3.2), validated by the executor's own plan validator.
//!
//! Versions: POSTing a name that exists makes a new row with the next version, as the platform
//! does. A PUT that changes the plan bumps the version of the same row (so the UI's links stay
//! valid) and, unlike the platform, keeps the definition it replaces as a row of its own with the
//! old version number, readable under `/versions`. Every step field is kept as sent.

use entity::workflow_definition as definition;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel, Order, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::agents::{AgentProblem, check_callable};
use super::audit::{self, EntityType};
use super::check::{Checks, FieldError, Object};
use super::page::{self, Page, PageRequest};
use super::{MessageResponse, SYSTEM_USER, ServiceError, iso, now};
use crate::config::Config;
use crate::plan::{Plan, StepKind};

/// A definition as the API answers it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct WorkflowResponse {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub version: i32,
    /// `{workflow_id, name, version, start_step, steps}`: the plan an execution runs.
    #[schema(value_type = Object)]
    pub workflow_data: Value,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
    /// On create and update: what the plan probably got wrong, though it is valid (unknown fields,
    /// steps nothing runs, expressions that cannot parse). Absent when there is nothing to say.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl From<definition::Model> for WorkflowResponse {
    fn from(row: definition::Model) -> Self {
        WorkflowResponse {
            id: row.id,
            name: row.name,
            description: row.description,
            version: row.version,
            workflow_data: row.workflow_data,
            status: row.status,
            created_at: iso(&row.created_at),
            updated_at: iso(&row.updated_at),
            created_by: row.created_by,
            updated_by: row.updated_by,
            warnings: Vec::new(),
        }
    }
}

/// Filters and order of the workflow list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowFilter {
    pub status: Option<String>,
    pub name: Option<String>,
    /// A column name; anything else sorts by `created_at`, as the platform does.
    pub sort_by: Option<String>,
    /// `asc` (any case) or descending.
    pub sort_order: Option<String>,
}

fn sort_column(name: Option<&str>) -> definition::Column {
    use definition::Column as C;
    match name.unwrap_or("created_at") {
        "id" => C::Id,
        "name" => C::Name,
        "description" => C::Description,
        "version" => C::Version,
        "status" => C::Status,
        "created_by" => C::CreatedBy,
        "updated_by" => C::UpdatedBy,
        "updated_at" => C::UpdatedAt,
        _ => C::CreatedAt,
    }
}

/// `asc` in any case sorts ascending; anything else descending (the platform's rule).
pub fn sort_order(order: Option<&str>) -> Order {
    if order.is_some_and(|o| o.eq_ignore_ascii_case("asc")) { Order::Asc } else { Order::Desc }
}

pub async fn list(
    db: &DatabaseConnection,
    filter: WorkflowFilter,
    page: PageRequest,
) -> Result<Page<WorkflowResponse>, ServiceError> {
    let order = sort_order(filter.sort_order.as_deref());
    let mut select = definition::Entity::find()
        .filter(definition::Column::SupersededBy.is_null())
        .order_by(sort_column(filter.sort_by.as_deref()), order.clone())
        .order_by(definition::Column::Id, order);
    if let Some(status) = filter.status {
        select = select.filter(definition::Column::Status.eq(status));
    }
    if let Some(name) = filter.name {
        select = select.filter(definition::Column::Name.eq(name));
    }
    Ok(page::fetch(db, select, page).await?.map(WorkflowResponse::from))
}

pub async fn find(db: &DatabaseConnection, id: Uuid) -> Result<definition::Model, ServiceError> {
    definition::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("Workflow with id '{id}' not found")))
}

pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<WorkflowResponse, ServiceError> {
    Ok(find(db, id).await?.into())
}

/// Every version of the definition's name, newest first, whatever their status.
pub async fn versions(
    db: &DatabaseConnection,
    id: Uuid,
    page: PageRequest,
) -> Result<Page<WorkflowResponse>, ServiceError> {
    let row = find(db, id).await?;
    let select = definition::Entity::find()
        .filter(definition::Column::Name.eq(row.name))
        .order_by_desc(definition::Column::Version)
        .order_by_desc(definition::Column::CreatedAt);
    Ok(page::fetch(db, select, page).await?.map(WorkflowResponse::from))
}

/// A checked `POST /workflows` body.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowCreate {
    pub name: String,
    pub description: Option<String>,
    pub start_step: String,
    pub steps: Map<String, Value>,
}

fn non_blank(checks: &mut Checks, object: Object<'_>, key: &str, what: &str, required: bool) -> Option<String> {
    let value = checks.string(object, key, required, 1, 255)?;
    if value.trim().is_empty() {
        checks.value_error(format!("{}.{key}", object.at), format!("{what} cannot be empty or whitespace"));
        return None;
    }
    Some(value)
}

fn read_steps(checks: &mut Checks, object: Object<'_>, required: bool) -> Option<Map<String, Value>> {
    let field = format!("{}.steps", object.at);
    match object.fields.get("steps") {
        None if required => {
            checks.push(field, "Field required", "missing");
            None
        }
        None => None,
        Some(Value::Object(steps)) if steps.is_empty() => {
            checks.push(field, "Dictionary should have at least 1 item after validation, not 0", "too_short");
            None
        }
        Some(Value::Object(steps)) => Some(steps.clone()),
        Some(_) => {
            checks.push(field, "Input should be a valid dictionary", "dict_type");
            None
        }
    }
}

impl WorkflowCreate {
    pub fn parse(body: &Value) -> Result<WorkflowCreate, ServiceError> {
        let mut checks = Checks::default();
        let Some(object) = checks.body(body) else { return Err(ServiceError::Invalid(checks.errors)) };
        let name = non_blank(&mut checks, object, "name", "Workflow name", true);
        let description = checks.string(object, "description", false, 0, usize::MAX);
        let start_step = non_blank(&mut checks, object, "start_step", "Start step", true);
        let steps = read_steps(&mut checks, object, true);
        checks.done()?;
        let (Some(name), Some(start_step), Some(steps)) = (name, start_step, steps) else {
            unreachable!("a field that cannot be read is a recorded problem")
        };
        Ok(WorkflowCreate { name, description, start_step, steps })
    }
}

/// The highest version any row of `name` has.
async fn latest_version(db: &DatabaseConnection, name: &str) -> Result<Option<i32>, sea_orm::DbErr> {
    Ok(definition::Entity::find()
        .select_only()
        .column_as(definition::Column::Version.max(), "latest")
        .filter(definition::Column::Name.eq(name))
        .into_tuple::<Option<i32>>()
        .one(db)
        .await?
        .flatten())
}

/// The plan a definition stores: what an execution request carries as `workflow_plan`.
fn workflow_data(name: &str, version: i32, start_step: &str, steps: &Map<String, Value>) -> Value {
    json!({
        "workflow_id": format!("wf-{name}-{version}"),
        "name": name,
        "version": version.to_string(),
        "start_step": start_step,
        "steps": steps,
    })
}

/// Validates a plan with the executor's validator; agents are checked apart (their problems are
/// 400/404 answers, not field errors). Every problem becomes a field error under `body`; a valid
/// plan comes with its warnings.
fn validate_plan(document: &Value) -> Result<(Plan, Vec<String>), ServiceError> {
    let any_agent = |_: &str| true;
    let plan = crate::plan::validate(document, &any_agent).map_err(|invalid| {
        ServiceError::Invalid(
            invalid
                .problems
                .iter()
                .map(|problem| {
                    let field = match &problem.step {
                        Some(step) => format!("body.steps.{step}.{}", problem.field),
                        None if problem.field == "plan" => "body".to_string(),
                        None => format!("body.{}", problem.field),
                    };
                    FieldError::new(field, format!("Value error, {problem}"), "value_error")
                })
                .collect(),
        )
    })?;
    let warnings = crate::plan::lint::lint(document, Some(&plan)).iter().map(ToString::to_string).collect();
    Ok((plan, warnings))
}

fn agent_names(plan: &Plan) -> Vec<&str> {
    let mut names: Vec<&str> = plan
        .steps
        .values()
        .filter_map(|step| match &step.kind {
            StepKind::Agent { agent_name } => Some(agent_name.as_str()),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

pub async fn create(
    db: &DatabaseConnection,
    config: &Config,
    request: WorkflowCreate,
) -> Result<WorkflowResponse, ServiceError> {
    let (plan, warnings) = validate_plan(&workflow_data(&request.name, 1, &request.start_step, &request.steps))?;
    if let Err(problem) = check_callable(db, config, agent_names(&plan)).await? {
        return Err(ServiceError::Rejected(problem.to_string()));
    }
    // Read before the transaction: every transaction here starts with its write, because SQLite
    // answers a transaction that reads and then writes with BUSY at once, without waiting, when
    // another connection (the executor's) wrote in between. Two creators racing for the same
    // version make the second a 409, as on the platform.
    let version = latest_version(db, &request.name).await?.unwrap_or(0) + 1;
    let txn = db.begin().await?;
    let at = now();
    let row = definition::ActiveModel {
        id: Set(Uuid::new_v4()),
        name: Set(request.name.clone()),
        description: Set(request.description.clone()),
        version: Set(version),
        workflow_data: Set(workflow_data(&request.name, version, &request.start_step, &request.steps)),
        status: Set("active".into()),
        created_by: Set(Some(SYSTEM_USER.into())),
        updated_by: Set(Some(SYSTEM_USER.into())),
        created_at: Set(at),
        updated_at: Set(at),
        superseded_by: Set(None),
    }
    .insert(&txn)
    .await?;
    let changes = json!({
        "name": request.name, "description": request.description,
        "start_step": request.start_step, "steps": request.steps,
    });
    audit::record(&txn, EntityType::Workflow, row.id, "create", Some(changes)).await?;
    txn.commit().await?;
    Ok(WorkflowResponse { warnings, ..row.into() })
}

/// Applies a `PUT /workflows/{id}` body (`description`, `start_step`, `steps`, `status`).
pub async fn update(
    db: &DatabaseConnection,
    config: &Config,
    id: Uuid,
    body: &Value,
) -> Result<WorkflowResponse, ServiceError> {
    let stored = find(db, id).await?;
    let mut checks = Checks::default();
    let Some(object) = checks.body(body) else { return Err(ServiceError::Invalid(checks.errors)) };
    let description =
        object.fields.contains_key("description").then(|| checks.string(object, "description", false, 0, usize::MAX));
    let start_step = non_blank(&mut checks, object, "start_step", "Start step", false);
    let steps = read_steps(&mut checks, object, false);
    let status = checks.one_of(object, "status", &["active", "inactive"], false);
    checks.done()?;

    let mut row = stored.clone().into_active_model();
    let mut warnings = Vec::new();
    let replans = start_step.is_some() || steps.is_some();
    if replans {
        let stored_steps = stored.workflow_data.get("steps").and_then(Value::as_object).cloned().unwrap_or_default();
        let stored_start =
            stored.workflow_data.get("start_step").and_then(Value::as_str).unwrap_or_default().to_string();
        let steps = steps.clone().unwrap_or(stored_steps);
        let start_step = start_step.unwrap_or(stored_start);
        // The next version of the name, whichever of its rows is edited: editing an older version
        // (or one POSTed under the same name) must not collide with a newer one.
        let version = latest_version(db, &stored.name).await?.unwrap_or(stored.version) + 1;
        let document = workflow_data(&stored.name, version, &start_step, &steps);
        let (plan, found) = validate_plan(&document)?;
        warnings = found;
        if object.fields.contains_key("steps") {
            match check_callable(db, config, agent_names(&plan)).await? {
                Ok(()) => {}
                // A route whose error says "not found" answers 404 on the platform.
                Err(problem @ AgentProblem::NotFound(_)) => return Err(ServiceError::NotFound(problem.to_string())),
                Err(problem) => return Err(ServiceError::Rejected(problem.to_string())),
            }
        }
        row.version = Set(version);
        row.workflow_data = Set(document);
        // An edited row is a current definition again, even if it was a kept copy.
        row.superseded_by = Set(None);
    }
    if let Some(description) = description {
        row.description = Set(description);
    }
    if let Some(status) = status {
        row.status = Set(status.into());
    }
    row.updated_by = Set(Some(SYSTEM_USER.into()));
    row.updated_at = Set(now());

    let txn = db.begin().await?;
    // The row keeps its id (the UI's links, runs' workflow_definition_id); the definition it
    // replaces is kept as a row of its own. The update goes first: the unique (name, version)
    // then frees the old number for the copy.
    let updated = row.update(&txn).await?;
    if replans {
        let kept = definition::ActiveModel {
            id: Set(Uuid::new_v4()),
            superseded_by: Set(Some(id)),
            ..stored.into_active_model()
        };
        kept.insert(&txn).await?;
    }
    audit::record(&txn, EntityType::Workflow, id, "update", Some(body.clone())).await?;
    txn.commit().await?;
    Ok(WorkflowResponse { warnings, ..updated.into() })
}

/// Soft delete: status `deleted`; runs are untouched, and a PUT with `status: active` revives it.
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> Result<MessageResponse, ServiceError> {
    find(db, id).await?;
    let txn = db.begin().await?;
    definition::Entity::update_many()
        .col_expr(definition::Column::Status, Expr::value("deleted"))
        .col_expr(definition::Column::UpdatedBy, Expr::value(SYSTEM_USER))
        .col_expr(definition::Column::UpdatedAt, Expr::value(now()))
        .filter(definition::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    audit::record(&txn, EntityType::Workflow, id, "delete", None).await?;
    txn.commit().await?;
    Ok(MessageResponse::new(format!("Workflow '{id}' deleted successfully")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_problems_become_field_errors() {
        let document = json!({"name": "w", "start_step": "a", "steps": {
            "a": {"id": "a", "agent_name": "echo", "next_step": "zz"},
            "b": {"id": "b", "type": "parallel", "parallel_steps": ["a"]}
        }});
        let Err(ServiceError::Invalid(errors)) = validate_plan(&document) else { panic!("invalid") };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"body.steps.a.next_step"), "{errors:#?}");
        assert!(fields.contains(&"body.steps.b.parallel_steps"), "{errors:#?}");
        assert!(errors.iter().all(|e| e.message.starts_with("Value error, step '")), "{errors:#?}");
    }

    #[test]
    fn a_create_body_reports_blank_and_missing_fields() {
        let Err(ServiceError::Invalid(errors)) = WorkflowCreate::parse(&json!({"name": " ", "steps": {}})) else {
            panic!()
        };
        let found: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_str(), e.kind.as_str())).collect();
        assert_eq!(found, [("body.name", "value_error"), ("body.start_step", "missing"), ("body.steps", "too_short")]);
    }
}
