//! The platform's three error shapes (API.md §1), produced from [`ServiceError`]s.
//!
//! 1. `{"detail": "..."}` for what a route decides (404, 400, 413, 401, 501);
//! 2. the validation envelope for 422, with `errors[]` naming every field;
//! 3. the same envelope without `errors` for database failures (409, 503, 400, 500).
//!
//! The envelope carries the request's path, which a handler's error does not know: it leaves an
//! [`Envelope`] in the response's extensions and [`complete_envelopes`] writes the body, so every
//! error, whichever handler or extractor made it, gets the same shape.

use axum::Json;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::service::{DatabaseFailure, FieldError, ServiceError, iso, now};

#[derive(Debug)]
pub enum ApiError {
    /// `{"detail": <value>}`.
    Detail(StatusCode, serde_json::Value),
    /// The envelope; `errors` only for 422.
    Envelope(Envelope),
}

/// An error envelope waiting for its request's path.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
    pub errors: Option<Vec<FieldError>>,
}

/// The body of an error envelope, in the platform's key order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnvelopeBody {
    pub error: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    pub status_code: u16,
    pub timestamp: String,
    pub path: String,
    pub request_id: String,
}

/// `{"detail": "..."}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DetailBody {
    pub detail: String,
}

impl ApiError {
    pub fn detail(status: StatusCode, detail: impl Into<String>) -> Self {
        Self::Detail(status, json!(detail.into()))
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::detail(StatusCode::NOT_FOUND, detail)
    }

    pub fn invalid(errors: Vec<FieldError>) -> Self {
        Self::Envelope(Envelope {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error: "Validation Error",
            detail: "Request validation failed".into(),
            errors: Some(errors),
        })
    }

    fn envelope(status: StatusCode, error: &'static str, detail: &str) -> Self {
        Self::Envelope(Envelope { status, error, detail: detail.into(), errors: None })
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::NotFound(detail) => Self::not_found(detail),
            ServiceError::Rejected(detail) => Self::detail(StatusCode::BAD_REQUEST, detail),
            ServiceError::TooLarge(detail) => Self::detail(StatusCode::PAYLOAD_TOO_LARGE, detail),
            ServiceError::Invalid(errors) => Self::invalid(errors),
            ServiceError::Database(error) => {
                let kind = ServiceError::database_kind(&error);
                if !matches!(kind, DatabaseFailure::UniqueViolation | DatabaseFailure::ForeignKey) {
                    tracing::error!(%error, "database error answering a request");
                }
                match kind {
                    DatabaseFailure::UniqueViolation => {
                        Self::envelope(StatusCode::CONFLICT, "Conflict", "Resource already exists")
                    }
                    DatabaseFailure::ForeignKey => {
                        Self::envelope(StatusCode::CONFLICT, "Conflict", "Referenced resource does not exist")
                    }
                    DatabaseFailure::Integrity => {
                        Self::envelope(StatusCode::CONFLICT, "Conflict", "Database integrity constraint violated")
                    }
                    DatabaseFailure::Data => Self::envelope(
                        StatusCode::BAD_REQUEST,
                        "Bad Request",
                        "Invalid data provided for database operation",
                    ),
                    DatabaseFailure::Unavailable => Self::envelope(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Service Unavailable",
                        "Database service is temporarily unavailable",
                    ),
                    DatabaseFailure::Other => Self::envelope(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Internal Server Error",
                        "A database error occurred",
                    ),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Detail(status, detail) => (status, Json(json!({ "detail": detail }))).into_response(),
            Self::Envelope(envelope) => {
                let mut response = envelope.status.into_response();
                response.extensions_mut().insert(envelope);
                response
            }
        }
    }
}

/// Writes the body of any [`Envelope`] a handler left, now that the path is known; turns a panic's
/// bare 500 into the platform's "unexpected error" envelope too.
pub async fn complete_envelopes(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let mut response = next.run(request).await;
    let envelope = match response.extensions_mut().remove::<Envelope>() {
        Some(envelope) => envelope,
        None if response.status() == StatusCode::INTERNAL_SERVER_ERROR
            && response.headers().get(header::CONTENT_TYPE).is_none() =>
        {
            Envelope {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error: "Internal Server Error",
                detail: "An unexpected error occurred. Please try again later.".into(),
                errors: None,
            }
        }
        None => return response,
    };
    let body = EnvelopeBody {
        error: envelope.error.into(),
        detail: envelope.detail,
        errors: envelope.errors,
        status_code: envelope.status.as_u16(),
        timestamp: iso(&now()),
        path,
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let mut completed = (envelope.status, Json(body)).into_response();
    // Headers set further in (correlation id, CORS) stay.
    for (name, value) in response.headers() {
        if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
            completed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    completed
}
