//! Signing in to the dashboard when `api.auth_token` is set.
//!
//! The API takes the token as `Authorization: Bearer …`, which a browser does not send when it
//! follows a link or opens an event stream. So the dashboard asks for the token once, on
//! `/ui/login`, and answers with a cookie holding not the token but an HMAC-SHA256 of a fixed label
//! keyed by it: the cookie proves the token was known, cannot be turned back into it, and stops
//! working when the token is changed. The cookie is `HttpOnly` (scripts cannot read it) and
//! `SameSite=Strict` (another site's page cannot make the browser send it), and it opens only the
//! dashboard's own pages (`/ui…` and `/`), whose forms also check their origin; the JSON API still
//! wants the bearer token.

use askama::Template;
use askama_web::WebTemplate;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::api::ApiState;
use crate::api::error::ApiError;

/// The cookie's name.
pub const COOKIE: &str = "runvisor_dashboard";
/// What the HMAC signs: fixed, so the cookie depends on the token alone.
const LABEL: &[u8] = b"runvisor dashboard session v1";
/// How long a sign-in lasts.
const MAX_AGE_S: u64 = 12 * 60 * 60;

/// The cookie's value for `token`.
fn session_value(token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(LABEL);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the request carries the session cookie for `token`.
pub fn has_session(headers: &HeaderMap, token: &str) -> bool {
    let expected = session_value(token);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && crate::api::same_secret(value.as_bytes(), expected.as_bytes()))
}

/// Whether `path` is one the session cookie opens: the dashboard's pages (not the JSON API).
pub fn cookie_opens(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// Paths open without signing in: the sign-in page itself and the stylesheet and scripts it uses.
pub fn open_without_session(path: &str) -> bool {
    path == "/ui/login" || path.starts_with("/ui/assets/")
}

/// Where a browser that is not signed in is sent: the sign-in page, coming back here after.
pub fn to_login(path_and_query: &str) -> Response {
    let next = serde_urlencoded::to_string([("next", path_and_query)]).unwrap_or_default();
    Redirect::to(&format!("/ui/login?{next}")).into_response()
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct LoginPage {
    assets: &'static str,
    section: &'static str,
    next: String,
    problem: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// Only a dashboard path may be where the sign-in leads: never another site.
fn safe_next(next: &str) -> String {
    if cookie_opens(next.split('?').next().unwrap_or_default()) && !next.starts_with("//") {
        next.to_string()
    } else {
        "/ui/runs".into()
    }
}

/// `GET /ui/login`.
pub async fn page(Query(query): Query<LoginQuery>) -> Response {
    LoginPage { assets: super::ASSETS, section: "", next: safe_next(&query.next), problem: None }.into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

/// `POST /ui/login`: the right token sets the cookie and goes on to `next`; a wrong one is 401
/// with the form again.
pub async fn login(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    super::run::same_origin(&headers)?;
    let expected = &state.config().api.auth_token;
    let next = safe_next(&form.next);
    if expected.is_empty() {
        return Ok(Redirect::to(&next).into_response());
    }
    if !crate::api::same_secret(form.token.trim().as_bytes(), expected.as_bytes()) {
        let problem = Some("That is not the API's token (api.auth_token).".to_string());
        let page = LoginPage { assets: super::ASSETS, section: "", next, problem };
        return Ok((StatusCode::UNAUTHORIZED, page).into_response());
    }
    let cookie =
        format!("{COOKIE}={}; Path=/; Max-Age={MAX_AGE_S}; HttpOnly; SameSite=Strict", session_value(expected));
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_proves_the_token_without_holding_it() {
        let value = session_value("s3cret");
        assert_eq!(value.len(), 64);
        assert!(!value.contains("s3cret"));
        assert_ne!(value, session_value("other"), "a new token ends old sign-ins");
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&format!("a=b; {COOKIE}={value}")).unwrap());
        assert!(has_session(&headers, "s3cret"));
        assert!(!has_session(&headers, "other"));
    }

    #[test]
    fn sign_in_leads_only_to_the_dashboard() {
        assert_eq!(safe_next("/ui/runs?status=FAILED"), "/ui/runs?status=FAILED");
        assert_eq!(safe_next("https://elsewhere.example/"), "/ui/runs");
        assert_eq!(safe_next("//elsewhere.example/ui"), "/ui/runs");
        assert_eq!(safe_next("/api/v1/runs"), "/ui/runs");
    }
}
