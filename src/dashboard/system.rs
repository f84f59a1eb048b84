//! The System page: runs per second, runs in flight and by whom, the executors alive in the
//! consumer group, attempt latency percentiles ([`crate::service::activity`], from the database,
//! so it is true whichever process looks), the executors' consumer lag (from the broker, see
//! [`crate::kafka::lag`]), and runs in flight as this process's own executor counts them, when it
//! has one (`runvisor dev`). It refreshes itself every 5 s.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::api::ApiState;
use crate::api::error::ApiError;
use crate::kafka::lag::group_lag;
use crate::observability::metrics::RUNS_IN_FLIGHT;

/// How long each broker request for the lag may take before the page shows it as unavailable.
const LAG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
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
    /// The executors' consumer lag on the requests topic, from the broker: total and partitions.
    lag: Option<i64>,
    lag_partitions: usize,
    /// Why the lag could not be read.
    lag_problem: Option<String>,
    /// From this process's metrics, when it runs an executor.
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
    let ms = |q: f64| quantile(&found.attempt_ms, q).map(super::format::took).unwrap_or_else(|| "–".into());
    let in_flight = own_gauge(&state.metrics().render(), RUNS_IN_FLIGHT);
    let (client, kafka) = (state.kafka_client().clone(), &state.config().kafka);
    let (group, topic) = (kafka.group_id.clone(), kafka.requests_topic.clone());
    let lag = tokio::task::spawn_blocking(move || group_lag(&client, &group, &topic, LAG_TIMEOUT))
        .await
        .map_err(|e| e.to_string())
        .and_then(|result| result.map_err(|e| e.to_string()));
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
        lag: lag.as_ref().ok().map(|parts| parts.iter().map(|p| p.lag).sum()),
        lag_partitions: lag.as_ref().map_or(0, Vec::len),
        lag_problem: lag.err(),
        in_flight,
        uptime: super::format::duration(state.uptime().as_millis() as i64),
    }
    .into_response())
}

/// The sum of a gauge's series in this process's metrics, when it has any.
fn own_gauge(text: &str, name: &str) -> Option<f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).ok()?;
    let values: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| if let prometheus_parse::Value::Gauge(v) = s.value { Some(v) } else { None })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_is_summed_over_its_series_and_an_absent_one_is_none() {
        let text = "# TYPE runvisor_consumer_lag gauge\n\
                    runvisor_consumer_lag{partition=\"0\"} 3\n\
                    runvisor_consumer_lag{partition=\"1\"} 4\n";
        assert_eq!(own_gauge(text, "runvisor_consumer_lag"), Some(7.0));
        assert_eq!(own_gauge(text, RUNS_IN_FLIGHT), None);
    }
}
