//! The run dashboard in the browser, served by the API's own axum server under `/ui`.
//!
//! Pages are rendered on the server from askama templates (`templates/`, checked at compile time),
//! with htmx (vendored in `assets/vendor`, see its VERSIONS) for the parts that update in place.
//! Everything is embedded in the binary ([`assets`]): no CDN, no node at build time. Pages read
//! through [`crate::service`], the same queries the JSON API answers from, and page on the server,
//! so a table of 100,000 runs costs one page of rows and one count query.
//!
//! - [`assets`]: the embedded stylesheet and scripts, with ETags;
//! - [`auth`]: the sign-in cookie, when `api.auth_token` is set;
//! - [`runs`]: the Runs page — counts by status, filters, server-side paging;
//! - [`run`]: the Run page — header, [`timeline`], [`plan_view`] (the plan coloured by outcome),
//!   attempts, Cancel and Retry;
//! - [`workflows`]: definitions, versions, plan, and Execute with a checked JSON editor;
//! - [`agents`]: every callable agent, its last hour's error rate and latency, its breaker;
//! - [`system`]: runs/s, runs in flight and by whom, group members, attempt latency, lag;
//! - [`live`] and [`events`]: what changed in the database, pushed to open pages as server-sent
//!   events; a page then fetches the part that changed.
//!
//! `GET /` stays the platform's JSON root for API clients and sends browsers (which ask for
//! `text/html`) to the dashboard.

pub mod agents;
pub mod assets;
pub mod auth;
pub mod events;
pub mod format;
pub mod live;
pub mod plan_view;
pub mod run;
pub mod runs;
pub mod system;
pub mod timeline;
pub mod workflows;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::api::ApiState;

/// Where the embedded assets are served.
pub const ASSETS: &str = "/ui/assets";

/// The dashboard's routes (merged into the API's router, under its middleware).
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/login", get(auth::page).post(auth::login))
        .route("/ui/runs", get(runs::page))
        .route("/ui/runs/{run_id}", get(run::page))
        .route("/ui/runs/{run_id}/cancel", post(run::cancel))
        .route("/ui/runs/{run_id}/retry", post(run::retry))
        .route("/ui/workflows", get(workflows::list))
        .route("/ui/workflows/{id}", get(workflows::page))
        .route("/ui/workflows/{id}/execute", post(workflows::execute))
        .route("/ui/agents", get(agents::page))
        .route("/ui/system", get(system::page))
        .route("/ui/events/runs", get(events::runs))
        .route("/ui/events/runs/{run_id}", get(events::run))
        .route("/ui/assets/{*file}", get(assets::serve))
        .layer(axum::middleware::map_response(security_headers))
}

/// The dashboard loads nothing from elsewhere and runs no inline script or style, so the browser
/// can be told to refuse both: markup injected through a run's data could not run. Its pages may
/// not be framed (clickjacking of Cancel), and the Referer goes to this server only (the forms'
/// origin check reads it when a browser sends no Origin).
async fn security_headers(mut response: Response) -> Response {
    const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                          connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// `GET /`: browsers to the dashboard, everyone else to the platform's JSON root.
pub async fn root(state: State<ApiState>, headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|kind| kind.trim().starts_with("text/html")));
    if wants_html {
        Redirect::to("/ui/runs").into_response()
    } else {
        crate::api::system::root(state).await.into_response()
    }
}

/// The page for something that is not there (404), in the dashboard's layout, with a way back.
#[derive(askama::Template, askama_web::WebTemplate)]
#[template(path = "missing.html")]
struct Missing {
    assets: &'static str,
    section: &'static str,
    message: String,
    back: &'static str,
    back_label: &'static str,
}

/// A page's answer: a missing run or workflow is a 404 page, other errors keep the API's envelope.
fn page_or_missing<T: IntoResponse>(
    result: Result<T, crate::service::ServiceError>,
    section: &'static str,
) -> Result<Response, crate::api::error::ApiError> {
    match result {
        Ok(page) => Ok(page.into_response()),
        Err(crate::service::ServiceError::NotFound(message)) => {
            let (back, back_label) =
                if section == "workflows" { ("/ui/workflows", "All workflows") } else { ("/ui/runs", "All runs") };
            let page = Missing { assets: ASSETS, section, message, back, back_label };
            Ok((axum::http::StatusCode::NOT_FOUND, page).into_response())
        }
        Err(other) => Err(other.into()),
    }
}
