//! The Workflows pages: the current version of every definition, and one definition with its
//! versions, its plan, and Execute — a JSON input editor checked in the browser as it is typed
//! (`app.js`) and again on the server, so invalid input never becomes a run.

use askama::Template;
use askama_web::WebTemplate;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::plan_view::{self, Item};
use crate::api::ApiState;
use crate::api::error::ApiError;
use crate::service::page::PageRequest;
use crate::service::workflows::{self, WorkflowFilter, WorkflowResponse};
use crate::service::{ServiceError, runs};

const PAGE_SIZE: u64 = 50;
/// Versions listed on a definition's page.
const VERSIONS: u64 = 20;

struct Row {
    id: Uuid,
    name: String,
    description: String,
    version: i32,
    status: String,
    steps: usize,
    updated_at: String,
}

impl From<&WorkflowResponse> for Row {
    fn from(w: &WorkflowResponse) -> Self {
        Row {
            id: w.id,
            name: w.name.clone(),
            description: w.description.clone().unwrap_or_default(),
            version: w.version,
            status: w.status.clone(),
            steps: w.workflow_data.get("steps").and_then(Value::as_object).map_or(0, Map::len),
            updated_at: super::format::timestamp(&w.updated_at),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "workflows.html")]
struct WorkflowsPage {
    assets: &'static str,
    section: &'static str,
    rows: Vec<Row>,
    page: u64,
    total_pages: u64,
    total: u64,
    previous: Option<String>,
    next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    page: Option<u64>,
}

/// `GET /ui/workflows`.
pub async fn list(State(state): State<ApiState>, Query(query): Query<ListQuery>) -> Result<Response, ApiError> {
    let filter = WorkflowFilter { sort_by: Some("name".into()), sort_order: Some("asc".into()), ..Default::default() };
    let request = PageRequest { page: query.page.unwrap_or(1).max(1), page_size: PAGE_SIZE };
    let found = workflows::list(state.db(), filter, request).await?;
    let link = |page: u64| if page == 1 { "/ui/workflows".to_string() } else { format!("/ui/workflows?page={page}") };
    Ok(WorkflowsPage {
        assets: super::ASSETS,
        section: "workflows",
        rows: found.items.iter().map(Row::from).collect(),
        page: found.page,
        total_pages: found.total_pages.max(1),
        total: found.total,
        previous: (found.page > 1).then(|| link(found.page - 1)),
        next: (found.page < found.total_pages).then(|| link(found.page + 1)),
    }
    .into_response())
}

#[derive(Template, WebTemplate)]
#[template(path = "workflow.html")]
struct WorkflowPage {
    assets: &'static str,
    section: &'static str,
    api_prefix: String,
    workflow: Row,
    plan: String,
    plan_items: Vec<Item>,
    plan_missing: Option<String>,
    versions: Vec<Row>,
    /// The Execute editor's text (what was sent back when the server refused it).
    input: String,
    /// Why the server refused the input, shown beside the editor.
    input_error: Option<String>,
}

/// `GET /ui/workflows/{id}`.
pub async fn page(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let Ok(id) = Uuid::parse_str(&id) else {
        return super::page_or_missing(
            Err::<(), _>(ServiceError::NotFound(format!("Workflow with id '{id}' not found"))),
            "workflows",
        );
    };
    super::page_or_missing(render(&state, id, String::new(), None).await, "workflows")
}

async fn render(
    state: &ApiState,
    id: Uuid,
    input: String,
    input_error: Option<String>,
) -> Result<WorkflowPage, ServiceError> {
    let workflow = workflows::get(state.db(), id).await?;
    // A first visit's editor starts with the inputs the plan reads, to be filled in.
    let input = if input.is_empty() { input_template(&workflow.workflow_data) } else { input };
    let versions = workflows::versions(state.db(), id, PageRequest { page: 1, page_size: VERSIONS }).await?;
    let (plan_items, plan_missing) = match plan_view::graph(Some(&workflow.workflow_data), &Default::default()) {
        Ok(items) => (items, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    Ok(WorkflowPage {
        assets: super::ASSETS,
        section: "workflows",
        api_prefix: state.config().api.prefix.clone(),
        plan_items,
        plan_missing,
        plan: serde_json::to_string_pretty(&workflow.workflow_data).unwrap_or_default(),
        workflow: Row::from(&workflow),
        versions: versions.items.iter().map(Row::from).collect(),
        input,
        input_error,
    })
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::detail(StatusCode::NOT_FOUND, format!("Workflow with id '{id}' not found")))
}

#[derive(Debug, Deserialize)]
pub struct ExecuteForm {
    input: String,
}

/// `POST /ui/workflows/{id}/execute`: starts a run with the form's JSON object as its input and
/// goes to the run's page. Input that is not a JSON object is refused with 422 on the workflow's
/// page, the text kept in the editor; nothing is sent.
pub async fn execute(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ExecuteForm>,
) -> Result<Response, ApiError> {
    super::run::same_origin(&headers)?;
    let id = parse_id(&id)?;
    let input = match input_object(&form.input) {
        Ok(input) => input,
        Err(why) => {
            let page = render(&state, id, form.input, Some(why)).await?;
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response());
        }
    };
    match runs::execute(state.db(), state.producer(), id, input).await {
        Ok(run) => Ok(Redirect::to(&format!("/ui/runs/{}", run.run_id)).into_response()),
        Err(ServiceError::Rejected(why) | ServiceError::TooLarge(why)) => {
            let page = render(&state, id, form.input, Some(why)).await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
        }
        Err(other) => Err(other.into()),
    }
}

/// `{"city": ""}` for a plan that reads `${workflow.input.city}`: every top-level input field the
/// plan's templates name; `{}` when it reads none.
fn input_template(plan: &Value) -> String {
    const MARK: &str = "${workflow.input.";
    let text = plan.to_string();
    let mut fields = Map::new();
    for (at, _) in text.match_indices(MARK) {
        let name: String =
            text[at + MARK.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-').collect();
        if !name.is_empty() {
            fields.entry(name).or_insert(Value::String(String::new()));
        }
    }
    if fields.is_empty() {
        "{}".into()
    } else {
        serde_json::to_string_pretty(&Value::Object(fields)).unwrap_or_default()
    }
}

/// The editor's text as a run's input: a JSON object, or the reason it is not one.
fn input_object(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(input)) => Ok(input),
        Ok(_) => Err("input_data must be a JSON object, like {\"order_id\": 42}".into()),
        Err(error) => Err(format!("input_data is not valid JSON: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_editor_starts_with_the_inputs_the_plan_reads() {
        let plan = serde_json::json!({"steps": {"a": {"input_mapping": {"c": "${workflow.input.city}", "d": "${workflow.input.days} days", "e": "${workflow.input.city}"}}}});
        let template: Value = serde_json::from_str(&input_template(&plan)).unwrap();
        assert_eq!(template, serde_json::json!({"city": "", "days": ""}));
        assert_eq!(input_template(&serde_json::json!({"steps": {}})), "{}");
    }

    #[test]
    fn only_a_json_object_is_a_runs_input() {
        assert_eq!(input_object(r#"{"a": 1}"#).unwrap()["a"], 1);
        assert_eq!(input_object("[1]").unwrap_err(), "input_data must be a JSON object, like {\"order_id\": 42}");
        assert!(input_object("{\"a\": ").unwrap_err().starts_with("input_data is not valid JSON: EOF while parsing"));
    }
}
