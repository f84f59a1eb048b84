//! `/api/v1/runs`: thin handlers over [`crate::service::runs`].

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::Value;

use super::ApiState;
use super::error::{ApiError, DetailBody};
use super::extract::{OptionalJsonBody, QueryParams, checked};
use crate::service::check::Checks;
use crate::service::runs::{self, RetryResponse, RunFilter, RunResponse, StepResponse};
use crate::service::{Page, PageRequest};

/// List runs with filters; newest first by default.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs",
    params(("page" = Option<u64>, Query), ("page_size" = Option<u64>, Query), ("status" = Option<String>, Query),
           ("workflow_id" = Option<String>, Query), ("workflow_definition_id" = Option<uuid::Uuid>, Query),
           ("created_after" = Option<String>, Query), ("created_before" = Option<String>, Query),
           ("sort_by" = Option<String>, Query), ("sort_order" = Option<String>, Query)),
    responses((status = 200, body = Page<RunResponse>)))]
pub async fn list(State(state): State<ApiState>, query: QueryParams) -> Result<Json<Page<RunResponse>>, ApiError> {
    let mut checks = Checks::default();
    let object = query.object();
    let page = PageRequest::from_query(&object, &mut checks);
    let created_after = checks.datetime(object, "created_after");
    let created_before = checks.datetime(object, "created_before");
    let workflow_definition_id = match query.text("workflow_definition_id") {
        Some(text) => match uuid::Uuid::parse_str(&text) {
            Ok(id) => Some(id),
            Err(error) => {
                checks.push(
                    "query.workflow_definition_id",
                    format!("Input should be a valid UUID, {error}"),
                    "uuid_parsing",
                );
                None
            }
        },
        None => None,
    };
    checked(checks)?;
    let filter = RunFilter {
        status: query.text("status"),
        workflow_id: query.text("workflow_id"),
        workflow: None,
        workflow_definition_id,
        created_after,
        created_before,
        sort_by: query.text("sort_by"),
        sort_order: query.text("sort_order"),
    };
    Ok(Json(runs::list(state.db(), filter, page).await?))
}

#[utoipa::path(get, path = "/api/v1/runs/{run_id}", tag = "runs", params(("run_id" = String, Path)),
    responses((status = 200, body = RunResponse), (status = 404, body = DetailBody)))]
pub async fn get(State(state): State<ApiState>, Path(run_id): Path<String>) -> Result<Json<RunResponse>, ApiError> {
    Ok(Json(runs::get(state.db(), &run_id).await?))
}

/// Every agent call attempt of the run, in the order they started (a bare array).
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/steps", tag = "runs", params(("run_id" = String, Path)),
    responses((status = 200, body = Vec<StepResponse>), (status = 404, body = DetailBody)))]
pub async fn steps(
    State(state): State<ApiState>,
    Path(run_id): Path<String>,
) -> Result<Json<Vec<StepResponse>>, ApiError> {
    Ok(Json(runs::steps(state.db(), &run_id).await?))
}

/// Resume a FAILED or CANCELLED run: completed calls are not made again.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/retry", tag = "runs", params(("run_id" = String, Path)),
    request_body(content = super::schemas::RetryBody, description = "optional"),
    responses((status = 202, body = RetryResponse), (status = 400, body = DetailBody), (status = 404, body = DetailBody)))]
pub async fn retry(
    State(state): State<ApiState>,
    Path(run_id): Path<String>,
    OptionalJsonBody(_body): OptionalJsonBody,
) -> Result<(StatusCode, Json<RetryResponse>), ApiError> {
    let (response, _) = runs::retry(state.db(), state.producer(), &run_id).await?;
    Ok((StatusCode::ACCEPTED, Json(response)))
}

/// Cancel a PENDING or RUNNING run; its calls in flight end CANCELLED.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/cancel", tag = "runs", params(("run_id" = String, Path)),
    request_body(content = super::schemas::CancelBody, description = "optional"),
    responses((status = 200, body = RunResponse), (status = 400, body = DetailBody), (status = 404, body = DetailBody)))]
pub async fn cancel(
    State(state): State<ApiState>,
    Path(run_id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Json<RunResponse>, ApiError> {
    let mut checks = Checks::default();
    let reason = match checks.body(&body) {
        Some(object) => checks.string(object, "reason", false, 0, 500),
        None => None,
    };
    checked(checks)?;
    Ok(Json(runs::cancel(state.db(), state.producer(), &run_id, reason).await?))
}

/// The run's events as lines: creation, every attempt's start and end with its error, the end.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/logs", tag = "runs", params(("run_id" = String, Path)),
    responses((status = 200, body = Vec<String>), (status = 404, body = DetailBody)))]
pub async fn logs(State(state): State<ApiState>, Path(run_id): Path<String>) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(runs::logs(state.db(), &run_id).await?))
}

/// The platform's AI workflow routes are not part of runvisor.
pub async fn ai_workflows() -> ApiError {
    ApiError::Detail(
        StatusCode::NOT_IMPLEMENTED,
        Value::String("AI workflow generation is not part of runvisor".into()),
    )
}
