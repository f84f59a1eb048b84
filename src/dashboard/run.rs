//! The Run page: what happened in one run, and why. A header (status, how long, the error), the
//! timeline of every attempt ([`super::timeline`]), and every attempt's input, output and error;
//! Cancel and Retry forms; live while the run is not finished (an event stream per page, see
//! [`super::events`]).
//!
//! The forms post to the dashboard's own routes, which call the same service functions as the JSON
//! API. They check `Origin` (or `Referer`) against `Host`: a page on another site must not be able
//! to make a visitor's browser cancel runs.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::NaiveDateTime;
use entity::{RunStatus, StepStatus, step_execution};
use serde_json::Value;

use super::format;
use super::plan_view::{self, AttemptOutcome, Item};
use super::timeline::{self, Span, Timeline};
use crate::api::ApiState;
use crate::api::error::ApiError;
use crate::service::{ServiceError, iso, now, runs};

/// Most attempts a page shows (a long loop can make thousands); the rest are counted, not drawn.
const MAX_ATTEMPTS: u64 = 2_000;

struct Header {
    run_id: String,
    workflow_name: String,
    workflow_id: String,
    /// The definition's page, for runs of a stored definition.
    workflow_link: Option<String>,
    status: String,
    created_at: String,
    /// "took 1.2 s", or "running for 3 s".
    took: String,
    /// From creation to the first attempt (waiting in the queue, or for an executor).
    queued: Option<String>,
    error: Option<String>,
    triggered_by: String,
    retry_count: i32,
    cancelled_by: Option<String>,
    input: String,
    output: Option<String>,
}

struct Attempt {
    id: String,
    step_id: String,
    /// Where in the plan: "in fan", "in each, iteration 3", "in split, branch b".
    place: String,
    agent_name: String,
    attempt: i32,
    retry_round: i32,
    status: String,
    started_at: String,
    took: String,
    executor_id: String,
    input: String,
    output: Option<String>,
    error: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "run.html")]
struct RunPage {
    assets: &'static str,
    section: &'static str,
    api_prefix: String,
    run: Header,
    live: bool,
    can_cancel: bool,
    can_retry: bool,
    notice: Option<String>,
    timeline: Timeline,
    plan_items: Vec<Item>,
    /// Why there is no plan graph, when there is none.
    plan_missing: Option<String>,
    attempts: Vec<Attempt>,
    /// Attempts beyond [`MAX_ATTEMPTS`], not shown.
    more: u64,
}

/// `GET /ui/runs/{run_id}`.
pub async fn page(State(state): State<ApiState>, Path(run_id): Path<String>) -> Result<Response, ApiError> {
    super::page_or_missing(render(&state, &run_id, None).await, "runs")
}

async fn render(state: &ApiState, run_id: &str, notice: Option<String>) -> Result<RunPage, ServiceError> {
    let db = state.db();
    let run = runs::find(db, run_id, || format!("Run '{run_id}' not found")).await?;
    let rows = runs::attempts(db, run_id, Some(MAX_ATTEMPTS + 1)).await?;
    let more = rows.len().saturating_sub(MAX_ATTEMPTS as usize) as u64;
    let rows = &rows[..rows.len().min(MAX_ATTEMPTS as usize)];
    let end = run.completed_at.unwrap_or_else(now);
    // The axis starts at the first attempt, not at creation: a run that waited in the queue would
    // otherwise squeeze its whole execution into the right edge. The wait is shown as a fact.
    let origin = rows.iter().map(|row| row.started_at).min().unwrap_or(run.created_at);
    let since_origin = |at: &NaiveDateTime| (*at - origin).num_milliseconds();
    let queued = rows.first().map(|_| format::duration((origin - run.created_at).num_milliseconds()));
    let spans: Vec<Span> = rows
        .iter()
        .map(|row| Span {
            id: row.id.clone(),
            step_id: row.step_id.clone(),
            parent_step_id: row.parent_step_id.clone(),
            branch_name: row.branch_name.clone(),
            loop_iteration_index: row.loop_iteration_index,
            attempt: row.attempt,
            retry_round: row.retry_round,
            status: row.status.as_str().into(),
            start_ms: since_origin(&row.started_at),
            end_ms: row.completed_at.as_ref().map(since_origin),
        })
        .collect();
    let finished = run.status.is_terminal();
    let mut outcomes = plan_view::outcomes(
        &rows
            .iter()
            .map(|row| AttemptOutcome {
                step_id: &row.step_id,
                call: (row.parent_step_id.as_deref(), row.branch_name.as_deref(), row.loop_iteration_index),
                attempt: row.attempt,
                retry_round: row.retry_round,
                status: row.status.as_str(),
            })
            .collect::<Vec<_>>(),
    );
    if let (RunStatus::Failed, Some(error)) = (run.status, &run.error_message) {
        plan_view::mark_failed_before_any_attempt(&mut outcomes, error);
    }
    // An inline plan is kept on the run; a stored definition's is read from it.
    let definition = match (&run.workflow_plan, run.workflow_definition_id) {
        (None, Some(id)) => crate::service::workflows::find(db, id).await.ok().map(|d| d.workflow_data),
        _ => None,
    };
    let (plan_items, plan_missing) =
        match plan_view::graph(run.workflow_plan.as_ref().or(definition.as_ref()), &outcomes) {
            Ok(items) => (items, None),
            Err(why) => (Vec::new(), Some(why)),
        };
    let age = format::duration((end - run.created_at).num_milliseconds());
    Ok(RunPage {
        assets: super::ASSETS,
        section: "runs",
        api_prefix: state.config().api.prefix.clone(),
        live: !finished,
        can_cancel: matches!(run.status, RunStatus::Pending | RunStatus::Running),
        can_retry: matches!(run.status, RunStatus::Failed | RunStatus::Cancelled),
        notice,
        timeline: timeline::layout(&spans, since_origin(&end)),
        plan_items,
        plan_missing,
        attempts: rows.iter().map(|row| attempt(row, &origin)).collect(),
        more,
        run: Header {
            took: if finished { format!("took {age}") } else { format!("running for {age}") },
            run_id: run.run_id,
            workflow_name: run.workflow_name,
            workflow_link: run.workflow_definition_id.map(|id| format!("/ui/workflows/{id}")),
            workflow_id: run.workflow_id,
            status: run.status.as_str().into(),
            created_at: format::timestamp(&iso(&run.created_at)),
            queued,
            error: run.error_message,
            triggered_by: run.triggered_by.unwrap_or_default(),
            retry_count: run.retry_count,
            cancelled_by: run.cancelled_by,
            input: pretty(&run.input_data),
            output: run.output_data.as_ref().map(pretty),
        },
    })
}

/// An attempt's row; `origin` is the first attempt's start, where the timeline begins.
fn attempt(row: &step_execution::Model, origin: &NaiveDateTime) -> Attempt {
    let place = match (&row.parent_step_id, &row.branch_name, row.loop_iteration_index) {
        (Some(parent), Some(branch), _) => format!("in {parent}, branch {branch}"),
        (Some(parent), None, Some(index)) => format!("in {parent}, iteration {index}"),
        (Some(parent), None, None) => format!("in {parent}"),
        (None, Some(branch), _) => format!("branch {branch}"),
        (None, None, _) => String::new(),
    };
    let took = match row.completed_at {
        Some(end) => format::took((end - row.started_at).num_milliseconds()),
        None if row.status == StepStatus::Running => "running".into(),
        None => String::new(),
    };
    Attempt {
        id: row.id.clone(),
        step_id: row.step_id.clone(),
        place,
        agent_name: row.agent_name.clone(),
        attempt: row.attempt,
        retry_round: row.retry_round,
        status: row.status.as_str().into(),
        started_at: format!("+{}", format::duration((row.started_at - *origin).num_milliseconds())),
        took,
        executor_id: row.executor_id.clone().unwrap_or_default(),
        input: pretty(&row.input_data),
        output: row.output_data.as_ref().map(pretty),
        error: row.error_message.clone(),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// `POST /ui/runs/{run_id}/cancel`.
pub async fn cancel(
    State(state): State<ApiState>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    let reason = Some("cancelled from the dashboard".to_string());
    let done = runs::cancel(state.db(), state.producer(), &run_id, reason).await.map(|_| ());
    after(&state, &run_id, done).await
}

/// `POST /ui/runs/{run_id}/retry`.
pub async fn retry(
    State(state): State<ApiState>,
    Path(run_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    let done = runs::retry(state.db(), state.producer(), &run_id).await.map(|_| ());
    after(&state, &run_id, done).await
}

/// Back to the run's page (303, so a reload does not post again); a refusal (the run already
/// finished, say) is shown on the page with 409.
async fn after(state: &ApiState, run_id: &str, done: Result<(), ServiceError>) -> Result<Response, ApiError> {
    match done {
        Ok(()) => Ok(Redirect::to(&format!("/ui/runs/{run_id}")).into_response()),
        Err(ServiceError::Rejected(why)) => {
            Ok((StatusCode::CONFLICT, render(state, run_id, Some(why)).await?).into_response())
        }
        Err(other) => Err(other.into()),
    }
}

/// Refuses a form posted from another site: its `Origin` (or, failing that, `Referer`) must name
/// this server's `Host`.
pub(super) fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST);
    let from = text(header::ORIGIN).or_else(|| text(header::REFERER));
    let authority = from.and_then(|url| url.split_once("://")).map(|(_, rest)| rest.split('/').next().unwrap_or(rest));
    match (host, authority) {
        (Some(host), Some(authority)) if host.eq_ignore_ascii_case(authority) => Ok(()),
        _ => Err(ApiError::detail(StatusCode::FORBIDDEN, "This form must be sent from the dashboard's own pages")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap())).collect()
    }

    #[test]
    fn forms_are_taken_only_from_the_dashboards_own_origin() {
        let host = (header::HOST, "127.0.0.1:8000");
        assert!(same_origin(&headers(&[host.clone(), (header::ORIGIN, "http://127.0.0.1:8000")])).is_ok());
        assert!(same_origin(&headers(&[host.clone(), (header::REFERER, "http://127.0.0.1:8000/ui/runs/r")])).is_ok());
        assert!(same_origin(&headers(&[host.clone(), (header::ORIGIN, "https://evil.example")])).is_err());
        assert!(
            same_origin(&headers(&[host.clone(), (header::ORIGIN, "http://127.0.0.1:8000.evil.example")])).is_err()
        );
        assert!(same_origin(&headers(&[host])).is_err(), "neither Origin nor Referer");
    }
}
