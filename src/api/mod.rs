//! The HTTP API: the platform's REST API (`../shared/API.md` §1–3), served by axum.
//!
//! - [`agents`], [`workflows`], [`runs`], [`system`]: one file per resource; handlers read the
//!   request, call [`crate::service`], and shape the answer;
//! - [`extract`]: request bodies, queries and path parameters read into 422s that name the field;
//! - [`error`]: the platform's three error shapes;
//! - [`docs`]: the OpenAPI document and Swagger UI.
//!
//! Layers, outermost first: disallowed CORS preflights answered 400 → CORS → correlation id (on
//! every response) → request metrics → bearer token → error envelopes → panics caught → body limit
//! → routes. Every route commits before it answers.

pub mod agents;
pub mod docs;
pub mod error;
pub mod extract;
pub mod runs;
pub mod schemas;
pub mod system;
pub mod workflows;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use sea_orm::DatabaseConnection;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::config::{Config, CorsConfig, split_list};
use crate::kafka::producer::Publisher;
use crate::observability::metrics as names;
use crate::service::runs::Producer;
use error::ApiError;

/// What every handler can reach. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    db: DatabaseConnection,
    config: Config,
    publisher: Publisher,
    /// For agent health probes.
    http: reqwest::Client,
    metrics: names::Handle,
    started: Instant,
    /// What changed, for the dashboard's live pages.
    live: Arc<crate::dashboard::live::LiveFeed>,
    /// How to reach the broker, for the dashboard's reading of the executors' consumer lag.
    kafka_client: rdkafka::ClientConfig,
    /// Turns true when the server begins to shut down: long-lived responses (event streams) end.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl ApiState {
    pub fn new(
        db: DatabaseConnection,
        config: Config,
        publisher: Publisher,
        metrics: names::Handle,
        live: Arc<crate::dashboard::live::LiveFeed>,
        stopping: tokio::sync::watch::Receiver<bool>,
        kafka_client: rdkafka::ClientConfig,
    ) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("a client");
        let started = Instant::now();
        Self(Arc::new(Inner { db, config, publisher, http, metrics, started, live, stopping, kafka_client }))
    }

    pub fn kafka_client(&self) -> &rdkafka::ClientConfig {
        &self.0.kafka_client
    }

    pub fn live(&self) -> &Arc<crate::dashboard::live::LiveFeed> {
        &self.0.live
    }

    /// Watches for the server's shutdown.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.stopping.clone()
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.0.db
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn publisher(&self) -> &Publisher {
        &self.0.publisher
    }

    pub fn producer(&self) -> Producer<'_> {
        Producer { config: &self.0.config, publisher: Some(&self.0.publisher) }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.0.http
    }

    pub fn metrics(&self) -> &names::Handle {
        &self.0.metrics
    }

    pub fn uptime(&self) -> Duration {
        self.0.started.elapsed()
    }
}

/// The whole API as one router.
pub fn router(state: ApiState) -> Router {
    let config = state.config().clone();
    let prefix = config.api.prefix.clone();
    let resources = Router::new()
        .route("/agents", get(agents::list).post(agents::create))
        .route("/agents/{agent_id}", get(agents::get).put(agents::update).delete(agents::delete))
        .route("/agents/{agent_id}/health", get(agents::health))
        .route("/workflows", get(workflows::list).post(workflows::create))
        .route("/workflows/{workflow_id}", get(workflows::get).put(workflows::update).delete(workflows::delete))
        .route("/workflows/{workflow_id}/versions", get(workflows::versions))
        .route("/workflows/{workflow_id}/execute", post(workflows::execute))
        .route("/runs", get(runs::list))
        .route("/runs/{run_id}", get(runs::get))
        .route("/runs/{run_id}/steps", get(runs::steps))
        .route("/runs/{run_id}/retry", post(runs::retry))
        .route("/runs/{run_id}/cancel", post(runs::cancel))
        .route("/runs/{run_id}/logs", get(runs::logs))
        .route("/ai-workflows", any(runs::ai_workflows))
        .route("/ai-workflows/{*rest}", any(runs::ai_workflows));
    let api = if prefix.is_empty() { resources } else { Router::new().nest(&prefix, resources) };
    let openapi = docs::openapi(&prefix);
    Router::new()
        .route("/", get(crate::dashboard::root))
        .merge(crate::dashboard::router())
        .route("/health", get(system::health))
        .route("/health/ready", get(system::ready))
        .route("/metrics", get(system::metrics))
        .route("/redoc", get(|| async { Redirect::temporary("/docs") }))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.api.max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Envelope(error::Envelope {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error: "Internal Server Error",
                detail: "An unexpected error occurred. Please try again later.".into(),
                errors: None,
            })
            .into_response()
        }))
        .layer(middleware::from_fn(error::complete_envelopes))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn(record_request))
        .layer(middleware::from_fn(correlation_id))
        .layer(cors(&config.api.cors))
        .layer(middleware::from_fn_with_state(Arc::new(config.api.cors.clone()), refuse_disallowed_preflight))
        .with_state(state)
}

/// 404 `{"detail": "Not Found"}`; a path with a trailing slash is redirected to the one without
/// (as the platform's framework does).
async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let mut target = path.trim_end_matches('/').to_string();
        if let Some(query) = request.uri().query() {
            target = format!("{target}?{query}");
        }
        return Redirect::temporary(&target).into_response();
    }
    ApiError::detail(StatusCode::NOT_FOUND, "Not Found").into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Echoes `X-Correlation-ID`, or makes one, on every response; requests are traced under it.
async fn correlation_id(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span =
        tracing::info_span!("request", correlation_id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(CORRELATION_ID, value);
    }
    response
}

/// Counts requests by method, matched route and status, and times them.
async fn record_request(request: Request, next: Next) -> Response {
    // `/runs/{run_id}` is labelled `/runs/:run_id`: braces are valid in a label value, but naive
    // parsers of the text format split on them.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().replace('{', ":").replace('}', ""))
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(names::HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(names::HTTP_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// With `api.auth_token` set, every route but `/health*` needs `Authorization: Bearer <token>`.
/// The dashboard's pages take its sign-in cookie instead (a browser sends no bearer token when it
/// follows a link), and a browser that has neither is sent to sign in (`dashboard::auth`).
async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    use crate::dashboard::auth;
    let expected = &state.config().api.auth_token;
    let path = request.uri().path();
    let open = expected.is_empty() || path.starts_with("/health") || auth::open_without_session(path);
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if open || presented.is_some_and(|token| same_secret(token.as_bytes(), expected.as_bytes())) {
        return next.run(request).await;
    }
    if auth::cookie_opens(path) {
        if auth::has_session(request.headers(), expected) {
            return next.run(request).await;
        }
        let wants_page = request.method() == Method::GET
            && request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|accept| accept.contains("text/html"));
        if wants_page {
            let target = request.uri().path_and_query().map_or(path, |p| p.as_str());
            return auth::to_login(target);
        }
    }
    let mut response = ApiError::detail(StatusCode::UNAUTHORIZED, "Not authenticated").into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The methods a `*` stands for, as the platform's CORS answers preflights.
const ALL_METHODS: [Method; 7] =
    [Method::DELETE, Method::GET, Method::HEAD, Method::OPTIONS, Method::PATCH, Method::POST, Method::PUT];

fn cors(config: &CorsConfig) -> CorsLayer {
    let origins = config.origin_list();
    let any_origin = origins.iter().any(|o| o == "*");
    let origin = match (any_origin, config.allow_credentials) {
        // `*` cannot go with credentials; echoing the caller's origin is what `*` means then.
        (true, true) => AllowOrigin::mirror_request(),
        (true, false) => AllowOrigin::any(),
        (false, _) => AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    let methods = if config.allow_methods.trim() == "*" {
        AllowMethods::list(ALL_METHODS)
    } else {
        AllowMethods::list(split_list(&config.allow_methods).iter().filter_map(|m| m.parse::<Method>().ok()))
    };
    let headers = match (config.allow_headers.trim() == "*", config.allow_credentials) {
        (true, true) => AllowHeaders::mirror_request(),
        (true, false) => AllowHeaders::any(),
        (false, _) => AllowHeaders::list(split_list(&config.allow_headers).iter().filter_map(|h| h.parse().ok())),
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(methods)
        .allow_headers(headers)
        .allow_credentials(config.allow_credentials)
        .expose_headers([CORRELATION_ID])
        .max_age(Duration::from_secs(600))
}

/// A preflight from an origin that is not allowed gets 400 `Disallowed CORS origin`, as on the
/// platform, instead of reaching the routes.
async fn refuse_disallowed_preflight(State(config): State<Arc<CorsConfig>>, request: Request, next: Next) -> Response {
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if let (true, Some(origin)) = (preflight, request.headers().get(header::ORIGIN)) {
        let origins = config.origin_list();
        let allowed = origins.iter().any(|o| o == "*" || o.as_bytes() == origin.as_bytes());
        if !allowed {
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Disallowed CORS origin",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Serves the API on `listener` until `shutdown` resolves; requests in flight are finished.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
