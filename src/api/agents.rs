//! `/api/v1/agents`: thin handlers over [`crate::service::agents`].

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::ApiState;
use super::error::{ApiError, DetailBody};
use super::extract::{JsonBody, QueryParams, checked, uuid_param};
use crate::service::agents::{self, AgentCreate, AgentFilter, AgentHealth, AgentResponse};
use crate::service::check::Checks;
use crate::service::{MessageResponse, Page, PageRequest};

/// List agents; with `name`, that one agent or none.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    params(("page" = Option<u64>, Query), ("page_size" = Option<u64>, Query), ("status" = Option<String>, Query),
           ("name" = Option<String>, Query, description = "exact name; status and page are then ignored")),
    responses((status = 200, body = Page<AgentResponse>)))]
pub async fn list(State(state): State<ApiState>, query: QueryParams) -> Result<Json<Page<AgentResponse>>, ApiError> {
    let mut checks = Checks::default();
    let page = PageRequest::from_query(&query.object(), &mut checks);
    checked(checks)?;
    let filter = AgentFilter { status: query.text("status"), name: query.text("name") };
    Ok(Json(agents::list(state.db(), filter, page).await?))
}

/// Register an agent.
#[utoipa::path(post, path = "/api/v1/agents", tag = "agents", request_body = super::schemas::AgentCreateBody,
    responses((status = 201, body = AgentResponse), (status = 400, body = DetailBody), (status = 422, body = super::error::EnvelopeBody)))]
pub async fn create(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<AgentResponse>), ApiError> {
    let request = AgentCreate::parse(&body)?;
    Ok((StatusCode::CREATED, Json(agents::create(state.db(), state.config(), request).await?)))
}

/// One agent, deleted ones too.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}", tag = "agents", params(("agent_id" = uuid::Uuid, Path)),
    responses((status = 200, body = AgentResponse), (status = 404, body = DetailBody)))]
pub async fn get(State(state): State<ApiState>, Path(agent_id): Path<String>) -> Result<Json<AgentResponse>, ApiError> {
    let id = uuid_param("agent_id", &agent_id)?;
    Ok(Json(agents::get(state.db(), id).await?))
}

/// Change the fields sent; secrets sent back as `***` keep their stored value.
#[utoipa::path(put, path = "/api/v1/agents/{agent_id}", tag = "agents", params(("agent_id" = uuid::Uuid, Path)),
    request_body = super::schemas::AgentUpdateBody, responses((status = 200, body = AgentResponse), (status = 404, body = DetailBody)))]
pub async fn update(
    State(state): State<ApiState>,
    Path(agent_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<AgentResponse>, ApiError> {
    let id = uuid_param("agent_id", &agent_id)?;
    Ok(Json(agents::update(state.db(), id, &body).await?))
}

/// Soft delete: the agent's status becomes `deleted`.
#[utoipa::path(delete, path = "/api/v1/agents/{agent_id}", tag = "agents", params(("agent_id" = uuid::Uuid, Path)),
    responses((status = 200, body = MessageResponse), (status = 404, body = DetailBody)))]
pub async fn delete(
    State(state): State<ApiState>,
    Path(agent_id): Path<String>,
) -> Result<Json<MessageResponse>, ApiError> {
    let id = uuid_param("agent_id", &agent_id)?;
    Ok(Json(agents::delete(state.db(), id).await?))
}

/// Fetch the agent's card at `<url>/.well-known/agent-card.json`.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/health", tag = "agents", params(("agent_id" = uuid::Uuid, Path)),
    responses((status = 200, body = AgentHealth), (status = 404, body = DetailBody)))]
pub async fn health(
    State(state): State<ApiState>,
    Path(agent_id): Path<String>,
) -> Result<Json<AgentHealth>, ApiError> {
    let id = uuid_param("agent_id", &agent_id)?;
    Ok(Json(agents::health(state.db(), state.http(), id).await?))
}
