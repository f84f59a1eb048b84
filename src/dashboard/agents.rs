//! The Agents page: every agent a plan can call — the registry table, the configuration file's
//! agents and the built-ins — with how its calls went in the last hour (attempts, error rate,
//! p50/p95 latency, from `step_executions`) and its circuit breaker.
//!
//! Breaker state lives in the memory of each executor; what this process knows of it is the
//! `runvisor_agent_breaker_state` gauge of its own metrics. In `runvisor dev` (executor and API in
//! one process) that is the executor's; under `runvisor api` the executors are elsewhere, and the
//! page says so rather than guess.

use std::collections::BTreeMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::agents::builtin::Builtin;
use crate::api::ApiState;
use crate::api::error::ApiError;
use crate::observability::metrics::BREAKER_STATE;
use crate::service::agents::{self, AgentFilter, AgentStats};
use crate::service::now;
use crate::service::page::PageRequest;

/// The window the statistics cover, and the most attempt rows read for them.
const WINDOW_MINUTES: i64 = 60;
const MAX_ROWS: u64 = 20_000;
/// Registry rows listed (the registry is small; a page of them is enough).
const MAX_AGENTS: u64 = 200;

struct Row {
    name: String,
    /// "registry", "config file" or "built-in".
    source: &'static str,
    target: String,
    status: String,
    timeout: String,
    attempts: u64,
    error_rate: String,
    /// An error rate above a tenth is shown as a problem.
    troubled: bool,
    p50: String,
    p95: String,
    running: u64,
    breaker: &'static str,
}

#[derive(Template, WebTemplate)]
#[template(path = "agents.html")]
struct AgentsPage {
    assets: &'static str,
    section: &'static str,
    rows: Vec<Row>,
    window_minutes: i64,
    /// The window held more attempts than were read.
    cut: bool,
    max_rows: u64,
    /// Whether any breaker reported to this process.
    breakers_known: bool,
}

/// `GET /ui/agents`.
pub async fn page(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let db = state.db();
    let registry = agents::list(db, AgentFilter::default(), PageRequest { page: 1, page_size: MAX_AGENTS }).await?;
    let since = now() - chrono::TimeDelta::minutes(WINDOW_MINUTES);
    let (stats, cut) = agents::recent_stats(db, since, MAX_ROWS).await?;
    let mut stats: BTreeMap<String, AgentStats> = stats.into_iter().map(|s| (s.agent_name.clone(), s)).collect();
    let breakers = breaker_states(&state.metrics().render());

    // (name, source, target, status, timeout), in the order listed.
    let mut listed: Vec<(String, &'static str, String, String, String)> = Vec::new();
    // The configuration file's agents win over registry rows of the same name (as when called).
    let configured = &state.config().agents;
    for (name, agent) in configured {
        listed.push((
            name.clone(),
            "config file",
            agent.url.clone(),
            "active".into(),
            format!("{} ms", agent.timeout_ms),
        ));
    }
    for agent in registry.items.into_iter().filter(|a| !configured.contains_key(&a.name)) {
        listed.push((agent.name, "registry", agent.url, agent.status, format!("{} ms", agent.timeout_ms)));
    }
    for (name, _) in Builtin::ALL {
        listed.push((name.into(), "built-in", "in process".into(), "active".into(), "–".into()));
    }
    // Names that made calls but are not registered now.
    let gone: Vec<String> = stats.keys().filter(|name| !listed.iter().any(|l| &l.0 == *name)).cloned().collect();
    listed.extend(gone.into_iter().map(|name| (name, "gone", "not registered now".into(), "–".into(), "–".into())));

    let rows = listed
        .into_iter()
        .map(|(name, source, target, status, timeout)| {
            let s = stats.remove(&name).unwrap_or_default();
            // Cancelled attempts (a cancelled run, a fork-join branch past its join) are not the
            // agent's errors.
            let rate = s.failed as f64 / s.attempts.max(1) as f64;
            let ms = |ms: Option<i64>| ms.map(super::format::took).unwrap_or_else(|| "–".into());
            Row {
                breaker: match (source, breakers.get(&name)) {
                    // Built-ins run in process and have no breaker.
                    ("built-in", _) => "none",
                    (_, Some(state)) => state,
                    (_, None) => "unknown",
                },
                name,
                source,
                target,
                status,
                timeout,
                attempts: s.attempts,
                error_rate: if s.attempts == 0 { "–".into() } else { format!("{:.1} %", rate * 100.0) },
                troubled: s.attempts > 0 && rate > 0.1,
                p50: ms(s.p50_ms),
                p95: ms(s.p95_ms),
                running: s.running,
            }
        })
        .collect();
    Ok(AgentsPage {
        assets: super::ASSETS,
        section: "agents",
        rows,
        window_minutes: WINDOW_MINUTES,
        cut,
        max_rows: MAX_ROWS,
        breakers_known: !breakers.is_empty(),
    }
    .into_response())
}

/// Breaker state by agent, from this process's metrics (empty when no breaker reported here).
fn breaker_states(metrics_text: &str) -> BTreeMap<String, &'static str> {
    let Ok(scrape) = prometheus_parse::Scrape::parse(metrics_text.lines().map(|l| Ok(l.to_string()))) else {
        return BTreeMap::new();
    };
    scrape
        .samples
        .into_iter()
        .filter(|sample| sample.metric == BREAKER_STATE)
        .filter_map(|sample| {
            let agent = sample.labels.get("agent")?.to_string();
            let state = match sample.value {
                prometheus_parse::Value::Gauge(v) if v >= 1.5 => "open",
                prometheus_parse::Value::Gauge(v) if v >= 0.5 => "half-open",
                prometheus_parse::Value::Gauge(_) => "closed",
                _ => return None,
            };
            Some((agent, state))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_states_are_read_from_the_gauge() {
        let text = "# TYPE runvisor_agent_breaker_state gauge\n\
                    runvisor_agent_breaker_state{agent=\"pay\"} 2\n\
                    runvisor_agent_breaker_state{agent=\"mail\"} 0\n\
                    runvisor_runs_started_total 4\n";
        let states = breaker_states(text);
        assert_eq!(states.get("pay"), Some(&"open"));
        assert_eq!(states.get("mail"), Some(&"closed"));
        assert_eq!(states.len(), 2);
    }
}
