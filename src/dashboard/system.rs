//! The System page: runs per second, runs in flight and by whom, the executors alive in the
//! consumer group, attempt latency percentiles ([`crate::service::activity`], from the database,
//! so it is true whichever process looks), and what this process's own metrics add: consumer lag
//! and runs in flight as its executor counts them (in `runvisor dev`; under `runvisor api` the
//! executors export those on their own `/metrics`). It refreshes itself every 5 s.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::api::ApiState;
use crate::api::error::ApiError;
use crate::observability::metrics::{CONSUMER_LAG, RUNS_IN_FLIGHT};
use crate::service::activity::{self, quantile};
use crate::service::now;

struct Rate {
    window: String,
    created: String,
    finished: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "system.html")]
struct SystemPage {
    assets: &'static str,
    section: &'static str,
    rates: Vec<Rate>,
    running: u64,
    pending: u64,
    running_by_owner: Vec<(String, u64)>,
    members: Vec<(String, String, String)>,
    attempts: usize,
    /// p50, p90, p99, max.
    latency: Vec<(&'static str, String)>,
    /// From this process's metrics, when it runs an executor.
    lag: Option<f64>,
    in_flight: Option<f64>,
    uptime: String,
}

/// `GET /ui/system`.
pub async fn page(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let found = activity::now(state.db(), now()).await?;
    let per_second = |n: u64, seconds: i64| format!("{:.2}", n as f64 / seconds as f64);
    let rates = found
        .created
        .iter()
        .zip(&found.finished)
        .map(|((seconds, created), (_, finished))| Rate {
            window: format!("last {} min", seconds / 60),
            created: per_second(*created, *seconds),
            finished: per_second(*finished, *seconds),
        })
        .collect();
    let ms = |q: f64| quantile(&found.attempt_ms, q).map(super::timeline::short_duration).unwrap_or_else(|| "–".into());
    let metrics = own_gauges(&state.metrics().render());
    Ok(SystemPage {
        assets: super::ASSETS,
        section: "system",
        rates,
        running: found.running_by_owner.iter().map(|(_, n)| n).sum(),
        pending: found.pending,
        running_by_owner: found.running_by_owner,
        members: found.members,
        attempts: found.attempt_ms.len(),
        latency: vec![("p50", ms(0.5)), ("p90", ms(0.9)), ("p99", ms(0.99)), ("max", ms(1.0))],
        lag: metrics.0,
        in_flight: metrics.1,
        uptime: super::timeline::short_duration(state.uptime().as_millis() as i64),
    }
    .into_response())
}

/// Total consumer lag and runs in flight from this process's metrics, when they are there.
fn own_gauges(text: &str) -> (Option<f64>, Option<f64>) {
    let Ok(scrape) = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))) else {
        return (None, None);
    };
    let sum = |name: &str| {
        let values: Vec<f64> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| if let prometheus_parse::Value::Gauge(v) = s.value { Some(v) } else { None })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    };
    (sum(CONSUMER_LAG), sum(RUNS_IN_FLIGHT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_summed_over_partitions_and_absent_gauges_are_none() {
        let text = "# TYPE runvisor_consumer_lag gauge\n\
                    runvisor_consumer_lag{partition=\"0\"} 3\n\
                    runvisor_consumer_lag{partition=\"1\"} 4\n";
        assert_eq!(own_gauges(text), (Some(7.0), None));
    }
}
