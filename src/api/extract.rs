//! Reading requests the way the platform's validation reports them: a body that is not JSON, a
//! query value out of range or a malformed UUID in the path is a 422 naming the field
//! (`body`, `query.page_size`, `path.agent_id`), never axum's own plain-text rejection.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::error::ApiError;
use crate::service::FieldError;
use crate::service::check::{Checks, Object};

/// A JSON request body that must be present.
#[derive(Debug)]
pub struct JsonBody(pub Value);

/// A JSON request body that may be absent (then `{}`).
#[derive(Debug)]
pub struct OptionalJsonBody(pub Value);

async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Option<Value>, ApiError> {
    let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::detail(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
        } else {
            ApiError::detail(rejection.status(), rejection.body_text())
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|error| {
        ApiError::invalid(vec![FieldError::new("body", format!("JSON decode error: {error}"), "json_invalid")])
    })
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match read_body(request, state).await? {
            Some(value) => Ok(JsonBody(value)),
            None => Err(ApiError::invalid(vec![FieldError::new("body", "Field required", "missing")])),
        }
    }
}

impl<S: Send + Sync> FromRequest<S> for OptionalJsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Ok(OptionalJsonBody(read_body(request, state).await?.unwrap_or_else(|| Value::Object(Map::new()))))
    }
}

/// The query string as `name → value` (the last of repeated names wins), read with [`Checks`]
/// under `query.`.
#[derive(Debug, Default)]
pub struct QueryParams(pub Map<String, Value>);

impl QueryParams {
    pub fn object(&self) -> Object<'_> {
        Object { at: "query", fields: &self.0 }
    }

    pub fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).and_then(Value::as_str).map(str::to_string)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(pairs) =
            Query::<Vec<(String, String)>>::from_request_parts(parts, state).await.map_err(|rejection| {
                ApiError::invalid(vec![FieldError::new("query", rejection.body_text(), "value_error")])
            })?;
        Ok(QueryParams(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect()))
    }
}

/// A UUID path parameter, or a 422 naming it.
pub fn uuid_param(name: &str, value: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value).map_err(|error| {
        ApiError::invalid(vec![FieldError::new(
            format!("path.{name}"),
            format!("Input should be a valid UUID, {error}"),
            "uuid_parsing",
        )])
    })
}

/// Finishes reading a query: every problem found, or nothing.
pub fn checked(checks: Checks) -> Result<(), ApiError> {
    if checks.errors.is_empty() { Ok(()) } else { Err(ApiError::invalid(checks.errors)) }
}
