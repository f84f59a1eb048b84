//! `/api/v1/workflows`: thin handlers over [`crate::service::workflows`] (and
//! [`crate::service::runs::execute`] for `/execute`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;

use super::ApiState;
use super::error::{ApiError, DetailBody};
use super::extract::{JsonBody, QueryParams, checked, uuid_param};
use crate::service::check::Checks;
use crate::service::runs::{self, RunResponse};
use crate::service::workflows::{self, WorkflowCreate, WorkflowFilter, WorkflowResponse};
use crate::service::{FieldError, MessageResponse, Page, PageRequest};

/// List definitions (every status unless filtered), newest first by default.
#[utoipa::path(get, path = "/api/v1/workflows", tag = "workflows",
    params(("page" = Option<u64>, Query), ("page_size" = Option<u64>, Query), ("status" = Option<String>, Query),
           ("name" = Option<String>, Query), ("sort_by" = Option<String>, Query), ("sort_order" = Option<String>, Query)),
    responses((status = 200, body = Page<WorkflowResponse>)))]
pub async fn list(State(state): State<ApiState>, query: QueryParams) -> Result<Json<Page<WorkflowResponse>>, ApiError> {
    let mut checks = Checks::default();
    let page = PageRequest::from_query(&query.object(), &mut checks);
    checked(checks)?;
    let filter = WorkflowFilter {
        status: query.text("status"),
        name: query.text("name"),
        sort_by: query.text("sort_by"),
        sort_order: query.text("sort_order"),
    };
    Ok(Json(workflows::list(state.db(), filter, page).await?))
}

/// Create a definition; a name that exists gets its next version.
#[utoipa::path(post, path = "/api/v1/workflows", tag = "workflows", request_body = super::schemas::WorkflowCreateBody,
    responses((status = 201, body = WorkflowResponse), (status = 400, body = DetailBody), (status = 422, body = super::error::EnvelopeBody)))]
pub async fn create(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<WorkflowResponse>), ApiError> {
    let request = WorkflowCreate::parse(&body)?;
    Ok((StatusCode::CREATED, Json(workflows::create(state.db(), state.config(), request).await?)))
}

#[utoipa::path(get, path = "/api/v1/workflows/{workflow_id}", tag = "workflows", params(("workflow_id" = uuid::Uuid, Path)),
    responses((status = 200, body = WorkflowResponse), (status = 404, body = DetailBody)))]
pub async fn get(
    State(state): State<ApiState>,
    Path(workflow_id): Path<String>,
) -> Result<Json<WorkflowResponse>, ApiError> {
    let id = uuid_param("workflow_id", &workflow_id)?;
    Ok(Json(workflows::get(state.db(), id).await?))
}

/// Edit a definition; a new plan bumps its version and keeps the old one under `/versions`.
#[utoipa::path(put, path = "/api/v1/workflows/{workflow_id}", tag = "workflows", params(("workflow_id" = uuid::Uuid, Path)),
    request_body = super::schemas::WorkflowUpdateBody, responses((status = 200, body = WorkflowResponse), (status = 404, body = DetailBody), (status = 409)))]
pub async fn update(
    State(state): State<ApiState>,
    Path(workflow_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<WorkflowResponse>, ApiError> {
    let id = uuid_param("workflow_id", &workflow_id)?;
    Ok(Json(workflows::update(state.db(), state.config(), id, &body).await?))
}

/// Soft delete.
#[utoipa::path(delete, path = "/api/v1/workflows/{workflow_id}", tag = "workflows", params(("workflow_id" = uuid::Uuid, Path)),
    responses((status = 200, body = MessageResponse), (status = 404, body = DetailBody)))]
pub async fn delete(
    State(state): State<ApiState>,
    Path(workflow_id): Path<String>,
) -> Result<Json<MessageResponse>, ApiError> {
    let id = uuid_param("workflow_id", &workflow_id)?;
    Ok(Json(workflows::delete(state.db(), id).await?))
}

/// Every version of the definition's name, newest first.
#[utoipa::path(get, path = "/api/v1/workflows/{workflow_id}/versions", tag = "workflows",
    params(("workflow_id" = uuid::Uuid, Path), ("page" = Option<u64>, Query), ("page_size" = Option<u64>, Query)),
    responses((status = 200, body = Page<WorkflowResponse>), (status = 404, body = DetailBody)))]
pub async fn versions(
    State(state): State<ApiState>,
    Path(workflow_id): Path<String>,
    query: QueryParams,
) -> Result<Json<Page<WorkflowResponse>>, ApiError> {
    let id = uuid_param("workflow_id", &workflow_id)?;
    let mut checks = Checks::default();
    let page = PageRequest::from_query(&query.object(), &mut checks);
    checked(checks)?;
    Ok(Json(workflows::versions(state.db(), id, page).await?))
}

/// Start a run of this definition: 202 with the PENDING run.
#[utoipa::path(post, path = "/api/v1/workflows/{workflow_id}/execute", tag = "workflows",
    params(("workflow_id" = uuid::Uuid, Path)), request_body = super::schemas::ExecuteBody,
    responses((status = 202, body = RunResponse), (status = 400, body = DetailBody), (status = 404, body = DetailBody)))]
pub async fn execute(
    State(state): State<ApiState>,
    Path(workflow_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<RunResponse>), ApiError> {
    let id = uuid_param("workflow_id", &workflow_id)?;
    let input = match body.get("input_data") {
        Some(Value::Object(input)) => input.clone(),
        None => return Err(ApiError::invalid(vec![FieldError::new("body.input_data", "Field required", "missing")])),
        Some(_) => {
            return Err(ApiError::invalid(vec![FieldError::new(
                "body.input_data",
                "Input should be a valid dictionary",
                "dict_type",
            )]));
        }
    };
    let run = runs::execute(state.db(), state.producer(), id, input).await?;
    Ok((StatusCode::ACCEPTED, Json(run)))
}
