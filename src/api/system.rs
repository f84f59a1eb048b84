//! The system routes at the root: `/`, `/health`, `/health/ready`, `/metrics` (API.md §3.6).
//!
//! Unlike the platform's, readiness checks the database *and* the broker, and `/metrics` is real.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use sea_orm::ConnectionTrait;
use serde::Serialize;
use serde_json::{Value, json};

use super::ApiState;
use crate::service::{iso, now};

/// The service, its documentation and its routes.
#[utoipa::path(get, path = "/", tag = "system", responses((status = 200, body = Object)))]
pub async fn root(State(state): State<ApiState>) -> Json<Value> {
    let prefix = &state.config().api.prefix;
    Json(json!({
        "name": "runvisor",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Workflow Management API, served by runvisor",
        "documentation": {"swagger_ui": "/docs", "redoc": "/redoc", "openapi_spec": "/openapi.json"},
        "endpoints": {
            "agents": format!("{prefix}/agents"),
            "workflows": format!("{prefix}/workflows"),
            "runs": format!("{prefix}/runs"),
            "ai_workflows": format!("{prefix}/ai-workflows"),
            "health": "/health",
            "health_ready": "/health/ready",
            "metrics": "/metrics",
        },
        "status": "operational",
    }))
}

/// The process answers; nothing else is checked.
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, body = Object)))]
pub async fn health(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "timestamp": iso(&now()),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.uptime().as_secs_f64(),
        "services": null,
    }))
}

#[derive(Debug, Serialize)]
struct Check {
    status: &'static str,
    message: String,
    response_time_ms: Option<f64>,
}

impl Check {
    fn from_result(result: Result<(), String>, started: Instant, healthy: &str, failed: &str) -> Check {
        let elapsed = (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0;
        match result {
            Ok(()) => Check { status: "healthy", message: healthy.into(), response_time_ms: Some(elapsed) },
            Err(error) => {
                Check { status: "unhealthy", message: format!("{failed}: {error}"), response_time_ms: Some(elapsed) }
            }
        }
    }
}

/// 200 when the database and the broker answer, 503 otherwise.
#[utoipa::path(get, path = "/health/ready", tag = "system",
    responses((status = 200, body = Object), (status = 503, body = Object)))]
pub async fn ready(State(state): State<ApiState>) -> impl IntoResponse {
    let started = Instant::now();
    let database = state.db().execute_unprepared("SELECT 1").await.map(|_| ()).map_err(|e| e.to_string());
    let database = Check::from_result(database, started, "Database connection active", "Database connection failed");
    let started = Instant::now();
    let kafka = state.publisher().check(Duration::from_secs(2)).await.map_err(|e| e.to_string());
    let kafka = Check::from_result(kafka, started, "Kafka brokers reachable", "Kafka brokers unreachable");
    let ready = database.status == "healthy" && kafka.status == "healthy";
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "ready": ready,
        "timestamp": iso(&now()),
        "checks": {"database": database, "kafka": kafka},
    });
    (status, Json(body))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics().render())
}
