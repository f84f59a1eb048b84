//! The run dashboard in the browser, served by the API's own axum server under `/ui`.
//!
//! Pages are rendered on the server from askama templates (`templates/`, checked at compile time),
//! with htmx (vendored in `assets/vendor`, see its VERSIONS) for the parts that update in place.
//! Everything is embedded in the binary ([`assets`]): no CDN, no node at build time. Pages read
//! through [`crate::service`], the same queries the JSON API answers from, and page on the server,
//! so a table of 100,000 runs costs one page of rows and one count query.
//!
//! - [`assets`]: the embedded stylesheet and scripts, with ETags;
//! - [`runs`]: the Runs page — counts by status, filters, server-side paging.
//!
//! `GET /` stays the platform's JSON root for API clients and sends browsers (which ask for
//! `text/html`) to the dashboard.

pub mod assets;
pub mod runs;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::api::ApiState;

/// Where the embedded assets are served.
pub const ASSETS: &str = "/ui/assets";

/// The dashboard's routes (merged into the API's router, under its middleware).
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/runs", get(runs::page))
        .route("/ui/assets/{*file}", get(assets::serve))
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
