//! The Runs page: true counts by status, filters as a plain GET form (works without scripts), and
//! server-side paging, newest first. Live: the counts and the table are fetched again when the
//! change feed says runs changed (`/ui/events/runs`).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::NaiveDateTime;
use entity::RunStatus;
use serde::{Deserialize, Serialize};

use crate::api::ApiState;
use crate::api::error::ApiError;
use crate::service::page::PageRequest;
use crate::service::runs::{self, RunFilter};

/// Rows per page unless asked otherwise, and the most a page may hold.
const PAGE_SIZE: u64 = 50;
const MAX_PAGE_SIZE: u64 = 200;

/// The page's query, as the filter form sends it (empty fields mean "any").
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct RunsQuery {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    workflow: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    created_after: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    created_before: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    page: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    page_size: String,
}

impl RunsQuery {
    /// This page's address with some fields changed.
    fn link(&self, change: impl FnOnce(&mut RunsQuery)) -> String {
        let mut query = self.clone();
        change(&mut query);
        match serde_urlencoded::to_string(&query) {
            Ok(encoded) if !encoded.is_empty() => format!("/ui/runs?{encoded}"),
            _ => "/ui/runs".into(),
        }
    }
}

struct Count {
    status: &'static str,
    n: u64,
    link: String,
}

struct Row {
    run_id: String,
    workflow_name: String,
    /// This page filtered to the run's workflow.
    workflow_link: String,
    status: String,
    created_at: String,
    took: String,
    error: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "runs.html")]
struct RunsPage {
    assets: &'static str,
    section: &'static str,
    /// This page's address, which the live region fetches again when runs change.
    self_link: String,
    status: String,
    workflow: String,
    created_after: String,
    created_before: String,
    status_options: Vec<&'static str>,
    counts: Vec<Count>,
    total_all: u64,
    all_statuses_link: String,
    problem: Option<String>,
    rows: Vec<Row>,
    page: u64,
    total_pages: u64,
    total: u64,
    previous: Option<String>,
    next: Option<String>,
}

/// `GET /ui/runs`.
pub async fn page(State(state): State<ApiState>, Query(query): Query<RunsQuery>) -> Result<Response, ApiError> {
    let mut problems = Vec::new();
    let mut number = |field: &str, text: &str, default: u64, max: u64| -> u64 {
        if text.is_empty() {
            return default;
        }
        match text.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                problems.push(format!("{field} = {text:?}: must be a whole number from 1 to {max}"));
                default
            }
        }
    };
    let request = PageRequest {
        page: number("page", &query.page, 1, u64::MAX),
        page_size: number("page_size", &query.page_size, PAGE_SIZE, MAX_PAGE_SIZE),
    };
    let mut time = |field: &str, text: &str| -> Option<NaiveDateTime> {
        if text.is_empty() {
            return None;
        }
        let parsed = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok());
        if parsed.is_none() {
            problems.push(format!("{field} = {text:?}: must be a date and time like 2026-12-02T14:30"));
        }
        parsed
    };
    let status_options: Vec<&'static str> = <RunStatus as sea_orm::Iterable>::iter().map(|s| s.as_str()).collect();
    let filter = RunFilter {
        status: (!query.status.is_empty()).then(|| query.status.clone()),
        workflow: (!query.workflow.trim().is_empty()).then(|| query.workflow.trim().to_string()),
        created_after: time("created_after", &query.created_after),
        created_before: time("created_before", &query.created_before),
        sort_by: Some("created_at".into()),
        sort_order: Some("desc".into()),
        ..RunFilter::default()
    };
    if !query.status.is_empty() && !status_options.contains(&query.status.as_str()) {
        problems.push(format!("status = {:?}: must be one of {}", query.status, status_options.join(", ")));
    }
    let db = state.db();
    let counts = runs::status_counts(db, &filter).await?;
    let found = runs::list(db, filter, request).await?;
    let page_link = |page: u64| query.link(|q| q.page = if page == 1 { String::new() } else { page.to_string() });
    let view = RunsPage {
        assets: super::ASSETS,
        section: "runs",
        self_link: query.link(|_| {}),
        status: query.status.clone(),
        workflow: query.workflow.clone(),
        created_after: query.created_after.clone(),
        created_before: query.created_before.clone(),
        total_all: counts.iter().map(|(_, n)| n).sum(),
        counts: counts
            .iter()
            .map(|(status, n)| Count {
                status: status.as_str(),
                n: *n,
                link: query.link(|q| {
                    q.status = status.as_str().to_string();
                    q.page.clear();
                }),
            })
            .collect(),
        all_statuses_link: query.link(|q| {
            q.status.clear();
            q.page.clear();
        }),
        status_options,
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
        rows: found.items.into_iter().map(row).collect(),
        page: found.page,
        total_pages: found.total_pages.max(1),
        total: found.total,
        previous: (found.page > 1).then(|| page_link(found.page - 1)),
        next: (found.page < found.total_pages).then(|| page_link(found.page + 1)),
    };
    let status = if view.problem.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    Ok((status, view).into_response())
}

fn row(run: runs::RunResponse) -> Row {
    // The API's timestamps: naive UTC, with microseconds when there are any.
    let parse = |text: &str| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok();
    let took = match (parse(&run.created_at), run.completed_at.as_deref().and_then(parse)) {
        (Some(start), Some(end)) => super::format::duration((end - start).num_milliseconds()),
        _ => String::new(),
    };
    Row {
        created_at: super::format::timestamp(&run.created_at),
        run_id: run.run_id,
        workflow_link: format!(
            "/ui/runs?{}",
            serde_urlencoded::to_string([("workflow", &run.workflow_name)]).unwrap_or_default()
        ),
        workflow_name: run.workflow_name,
        status: run.status,
        took,
        error: run.error_message.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_run_shows_how_long_it_took() {
        let run = runs::RunResponse {
            id: "r".into(),
            run_id: "r".into(),
            workflow_id: "w".into(),
            workflow_name: "w".into(),
            workflow_definition_id: None,
            status: "COMPLETED".into(),
            input_data: None,
            triggered_by: None,
            created_at: "2026-12-02T14:27:31.730354".into(),
            updated_at: "2026-12-02T14:27:33".into(),
            completed_at: Some("2026-12-02T14:27:33".into()),
            cancelled_at: None,
            cancelled_by: None,
            error_message: None,
            output_data: None,
            retry_count: 0,
        };
        let row = row(run);
        assert_eq!((row.took.as_str(), row.created_at.as_str()), ("1.3 s", "2026-12-02 14:27:31"));
    }

    #[test]
    fn links_keep_the_filters_and_drop_empty_fields() {
        let query = RunsQuery { status: "FAILED".into(), workflow: "a b".into(), ..Default::default() };
        assert_eq!(query.link(|q| q.page = "2".into()), "/ui/runs?status=FAILED&workflow=a+b&page=2");
        assert_eq!(RunsQuery::default().link(|_| {}), "/ui/runs");
    }
}
