//! Prometheus metrics through the `metrics` facade.
//!
//! Code records with the `metrics` macros wherever the event happens (a run ends, a batch
//! commits); without an installed recorder (unit tests, `runvisor run`) that costs nothing. The
//! long-running modes install the Prometheus recorder once per process ([`install`]) and serve
//! [`PrometheusHandle::render`] at `/metrics`. Names are constants here, so the list below is the
//! whole catalogue an operator can scrape.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use metrics_exporter_prometheus::PrometheusHandle as Handle;

/// Runs that started executing (claimed, plan valid), counted when they become RUNNING.
pub const RUNS_STARTED: &str = "runvisor_runs_started_total";
/// Runs that ended, by `status` (COMPLETED, FAILED, CANCELLED).
pub const RUNS_FINISHED: &str = "runvisor_runs_finished_total";
/// Orphaned runs the sweeper handed back to the run supervisor (each is then claimed, or found
/// held or ended elsewhere).
pub const RUNS_SWEPT: &str = "runvisor_runs_swept_total";
/// From the run's start on this executor to its terminal commit, by `status`.
pub const RUN_DURATION: &str = "runvisor_run_duration_seconds";
/// Agent call attempts that ended, by `agent` and `status`.
pub const ATTEMPTS: &str = "runvisor_attempts_total";
/// One attempt's call, by `agent`.
pub const ATTEMPT_DURATION: &str = "runvisor_attempt_duration_seconds";
/// Runs this executor holds now.
pub const RUNS_IN_FLIGHT: &str = "runvisor_runs_in_flight";
/// Request partitions paused because `executor.max_concurrent_runs` runs are in flight.
pub const PARTITIONS_PAUSED: &str = "runvisor_partitions_paused";
/// Messages not yet consumed, by `topic` and `partition` (librdkafka's statistics).
pub const CONSUMER_LAG: &str = "runvisor_consumer_lag";
/// Writes per committed transaction of the persistence actor.
pub const BATCH_SIZE: &str = "runvisor_persistence_batch_size";
/// How long a batch's transaction took to commit.
pub const COMMIT_DURATION: &str = "runvisor_persistence_commit_seconds";
/// Writes queued for the persistence actor.
pub const JOURNAL_LENGTH: &str = "runvisor_persistence_queued_writes";
/// A circuit breaker's state, by `agent`: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "runvisor_agent_breaker_state";
/// HTTP requests answered, by `method`, `route` (the matched pattern) and `status`.
pub const HTTP_REQUESTS: &str = "runvisor_http_requests_total";
/// How long requests took, by `method` and `route`.
pub const HTTP_DURATION: &str = "runvisor_http_request_duration_seconds";
/// Requests the outbox relay published after their writer could not.
pub const OUTBOX_RELAYED: &str = "runvisor_outbox_relayed_total";

const SECONDS_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCH_BUCKETS))
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics shows only runvisor's descriptions");
            }
            describe();
            let upkeep = handle.clone();
            // Histograms are kept in buckets that must be drained now and then.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("a thread starts");
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RUNS_STARTED, "Runs that started executing");
    describe_counter!(RUNS_FINISHED, "Runs that ended, by status");
    describe_counter!(RUNS_SWEPT, "Orphaned runs the sweeper handed back for resumption");
    describe_histogram!(RUN_DURATION, metrics::Unit::Seconds, "Run duration on this executor, by status");
    describe_counter!(ATTEMPTS, "Agent call attempts that ended, by agent and status");
    describe_histogram!(ATTEMPT_DURATION, metrics::Unit::Seconds, "Agent call attempt duration, by agent");
    describe_gauge!(RUNS_IN_FLIGHT, "Runs this executor holds");
    describe_gauge!(PARTITIONS_PAUSED, "Request partitions paused for backpressure");
    describe_gauge!(CONSUMER_LAG, "Messages not yet consumed, by topic and partition");
    describe_histogram!(BATCH_SIZE, "Writes per committed persistence transaction");
    describe_histogram!(COMMIT_DURATION, metrics::Unit::Seconds, "Persistence transaction commit latency");
    describe_gauge!(JOURNAL_LENGTH, "Writes queued for the persistence actor");
    describe_gauge!(BREAKER_STATE, "Circuit breaker state by agent: 0 closed, 1 half-open, 2 open");
    describe_counter!(HTTP_REQUESTS, "HTTP requests by method, route and status");
    describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "HTTP request duration by method and route");
    describe_counter!(OUTBOX_RELAYED, "Requests published by the outbox relay");
}
