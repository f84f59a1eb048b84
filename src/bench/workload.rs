//! The benchmark's workload and the client that drives it.
//!
//! The workload is the peers' (`../shared/peers`): no-op steps that pass a counter along, so the
//! figures measure the engine, not the agents. The client publishes execution requests to the
//! broker as any producer would, and hears a run end the moment its terminal status commits: a
//! trigger the benchmark adds to its own database sends a PostgreSQL notification in the
//! committing transaction, and notifications are delivered at commit. A run's latency is publish →
//! COMPLETED commit, without the monitoring topic's extra hop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The plan shapes measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `n` steps one after another, each passing `counter + 1` on.
    Sequence(usize),
    /// One parallel block of `n` steps, then a step that joins them.
    Parallel(usize),
    /// One `sleep` step of this many milliseconds (runs that stay in flight).
    Sleep(u64),
}

impl Shape {
    /// Agent calls one run makes.
    pub fn calls(self) -> usize {
        match self {
            Shape::Sequence(n) => n,
            Shape::Parallel(n) => n + 1,
            Shape::Sleep(_) => 1,
        }
    }

    pub fn label(self) -> String {
        match self {
            Shape::Sequence(n) => format!("sequence of {n}"),
            Shape::Parallel(n) => format!("parallel block of {n} + join"),
            Shape::Sleep(ms) => format!("one sleep of {ms} ms"),
        }
    }

    pub fn plan(self) -> Value {
        let mut steps = serde_json::Map::new();
        let step = |id: String, agent: &str, input: Value, next: Option<String>| json!({"id": id, "agent_name": agent, "input_mapping": input, "next_step": next});
        match self {
            Shape::Sequence(n) => {
                for i in 1..=n {
                    let counter =
                        if i == 1 { json!(1) } else { Value::String(format!("${{s{}.output.counter}}", i - 1)) };
                    let input = json!({"value": "${workflow.input.value}", "counter": counter});
                    let next = (i < n).then(|| format!("s{}", i + 1));
                    steps.insert(format!("s{i}"), step(format!("s{i}"), "echo", input, next));
                }
                json!({"workflow_id": format!("bench-seq-{n}"), "name": format!("bench-seq-{n}"),
                       "start_step": "s1", "steps": steps})
            }
            Shape::Parallel(n) => {
                let branches: Vec<String> = (1..=n).map(|i| format!("b{i}")).collect();
                steps.insert(
                    "fan".into(),
                    json!({"id": "fan", "type": "parallel", "parallel_steps": branches, "next_step": "join"}),
                );
                for branch in &branches {
                    let input = json!({"value": "${workflow.input.value}", "branch": branch});
                    steps.insert(branch.clone(), json!({"id": branch, "agent_name": "echo", "input_mapping": input}));
                }
                let joined = json!({"value": "${workflow.input.value}", "first": "${b1.output.branch}"});
                steps.insert("join".into(), step("join".into(), "echo", joined, None));
                json!({"workflow_id": format!("bench-par-{n}"), "name": format!("bench-par-{n}"),
                       "start_step": "fan", "steps": steps})
            }
            Shape::Sleep(ms) => {
                steps.insert("nap".into(), step("nap".into(), "sleep", json!({"ms": ms}), None));
                json!({"workflow_id": "bench-sleep", "name": "bench-sleep", "start_step": "nap", "steps": steps})
            }
        }
    }
}

/// A run's end as the client saw it.
#[derive(Debug, Clone)]
pub struct Ended {
    pub status: String,
    pub at: Instant,
}

const CHANNEL: &str = "runvisor_bench_end";

/// Installs the trigger that announces terminal statuses on [`CHANNEL`] (the schema must exist).
pub async fn install_end_trigger(db: &DatabaseConnection) -> anyhow::Result<()> {
    db.execute_unprepared(&format!(
        "CREATE OR REPLACE FUNCTION runvisor_bench_end() RETURNS trigger AS $$ \
         BEGIN PERFORM pg_notify('{CHANNEL}', NEW.status || ' ' || NEW.run_id); RETURN NEW; END $$ LANGUAGE plpgsql"
    ))
    .await?;
    db.execute_unprepared("DROP TRIGGER IF EXISTS runvisor_bench_end ON workflow_runs").await?;
    db.execute_unprepared(
        "CREATE TRIGGER runvisor_bench_end AFTER INSERT OR UPDATE OF status ON workflow_runs FOR EACH ROW \
         WHEN (NEW.status IN ('COMPLETED', 'FAILED', 'CANCELLED')) EXECUTE FUNCTION runvisor_bench_end()",
    )
    .await?;
    Ok(())
}

/// Removes what [`install_end_trigger`] added (from a database the benchmark does not drop).
pub async fn remove_end_trigger(db: &DatabaseConnection) {
    let _ = db.execute_unprepared("DROP TRIGGER IF EXISTS runvisor_bench_end ON workflow_runs").await;
    let _ = db.execute_unprepared("DROP FUNCTION IF EXISTS runvisor_bench_end()").await;
}

/// Publishes requests and hears runs end.
pub struct Client {
    producer: FutureProducer,
    requests_topic: String,
    ended: mpsc::UnboundedReceiver<(String, Ended)>,
    /// Ends heard but not yet asked for.
    heard: HashMap<String, Ended>,
    listener: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("requests_topic", &self.requests_topic).finish()
    }
}

impl Client {
    /// `linger_ms`: how long the producer waits to fill a batch (0 for one run at a time).
    pub async fn connect(
        brokers: &str,
        requests_topic: &str,
        database_url: &str,
        linger_ms: u32,
    ) -> anyhow::Result<Client> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", linger_ms.to_string())
            .set("acks", "all")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .context("cannot create the benchmark's producer")?;
        let mut listener = PgListener::connect(database_url).await.context("cannot listen to PostgreSQL")?;
        listener.listen(CHANNEL).await?;
        let (tx, ended) = mpsc::unbounded_channel();
        let listener = tokio::spawn(async move {
            while let Ok(notification) = listener.recv().await {
                let at = Instant::now();
                let Some((status, run_id)) = notification.payload().split_once(' ') else { continue };
                if tx.send((run_id.to_string(), Ended { status: status.to_string(), at })).is_err() {
                    return;
                }
            }
        });
        Ok(Client { producer, requests_topic: requests_topic.into(), ended, heard: HashMap::new(), listener })
    }

    /// Queues one execution request; resolves once the broker has it.
    pub fn publish(
        &self,
        run_id: &str,
        plan: &Value,
        value: usize,
    ) -> impl Future<Output = anyhow::Result<()>> + use<> {
        let payload = serde_json::to_vec(&json!({
            "run_id": run_id, "workflow_plan": plan, "input_data": {"value": value},
            "message_type": "execution_request",
        }))
        .expect("a request serialises");
        let delivery = self
            .producer
            .send_result(FutureRecord::to(&self.requests_topic).key(run_id).payload(&payload))
            .map_err(|(error, _)| error);
        async move {
            match delivery?.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(error.into()),
                Err(_) => bail!("the producer was dropped"),
            }
        }
    }

    /// Waits for `run_id`'s end (at most `timeout`).
    pub async fn ended(&mut self, run_id: &str, timeout: Duration) -> anyhow::Result<Ended> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ended) = self.heard.remove(run_id) {
                return Ok(ended);
            }
            match tokio::time::timeout_at(deadline, self.ended.recv()).await {
                Ok(Some((id, ended))) => {
                    self.heard.insert(id, ended);
                }
                Ok(None) => bail!("the PostgreSQL listener stopped"),
                Err(_) => bail!("run {run_id} did not end within {timeout:?}"),
            }
        }
    }

    /// Waits for the next end heard (at most `timeout`).
    pub async fn next_end(&mut self, timeout: Duration) -> anyhow::Result<(String, Ended)> {
        if let Some(id) = self.heard.keys().next().cloned() {
            let ended = self.heard.remove(&id).expect("present");
            return Ok((id, ended));
        }
        match tokio::time::timeout(timeout, self.ended.recv()).await {
            Ok(Some(end)) => Ok(end),
            Ok(None) => bail!("the PostgreSQL listener stopped"),
            Err(_) => bail!("no run ended within {timeout:?}"),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Percentiles of latencies, in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(latencies: &mut [Duration]) -> Percentiles {
        if latencies.is_empty() {
            return Percentiles::default();
        }
        latencies.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            round3(latencies[rank - 1].as_secs_f64() * 1000.0)
        };
        Percentiles { p50_ms: at(0.50), p90_ms: at(0.90), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_is_a_valid_plan_of_builtin_agents() {
        let config = crate::config::Config::defaults();
        let registry = crate::agents::AgentRegistry::new(&config, &[]);
        for shape in [Shape::Sequence(3), Shape::Sequence(10), Shape::Parallel(8), Shape::Sleep(5)] {
            let plan = crate::plan::validate::validate(&shape.plan(), &registry)
                .unwrap_or_else(|e| panic!("{}: {e}", shape.label()));
            assert!(!plan.main_chain.is_empty());
        }
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut latencies: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut latencies);
        assert_eq!((p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms), (50.0, 90.0, 99.0, 100.0));
    }
}
