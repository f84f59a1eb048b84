//! Delivery guarantees with real processes: `runvisor consume` executors against a tansu broker
//! and PostgreSQL, killed with SIGKILL, stopped with SIGTERM, and run side by side.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{ExecutorProcess, Tansu, TestDb, plan, restart_postgres};
use rdkafka::producer::{FutureProducer, FutureRecord};
use runvisor::config::Config;
use runvisor::kafka::Broker;
use runvisor::wire::ExecutionRequestMessage;
use serde_json::{Value, json};

/// These tests start several processes each; one at a time keeps them within two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three slow steps, so that executors die in the middle of runs.
fn slow_plan(ms: u64) -> Value {
    plan(
        "a",
        json!({
            "a": {"agent_name": "sleep", "input_mapping": {"ms": ms, "n": "${workflow.input.n}"}, "next_step": "b"},
            "b": {"agent_name": "sleep", "input_mapping": {"ms": ms, "n": "${a.output.n}"}, "next_step": "c"},
            "c": {"agent_name": "sleep", "input_mapping": {"ms": ms, "n": "${b.output.n}"}}
        }),
    )
}

struct Setup {
    tansu: Tansu,
    db: TestDb,
    group: String,
    producer: FutureProducer,
    topic: String,
    _broker: Broker,
}

async fn setup() -> Setup {
    let tansu = Tansu::start().await;
    let db = TestDb::postgres().await.migrated().await;
    let mut config = Config::defaults();
    config.kafka.brokers = tansu.brokers();
    config.kafka.topic_partitions = 4;
    let broker = Broker::start(&config.kafka).unwrap();
    broker.ensure_topics(&config.kafka).await.expect("topics on tansu");
    let producer = runvisor::kafka::producer::producer(&broker, &config.kafka).unwrap();
    let group = format!("g{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    Setup { tansu, db, group, producer, topic: config.kafka.requests_topic, _broker: broker }
}

impl Setup {
    async fn publish(&self, prefix: &str, count: usize, ms: u64) -> Vec<String> {
        self.publish_range(prefix, 0..count, ms).await
    }

    async fn publish_range(&self, prefix: &str, range: std::ops::Range<usize>, ms: u64) -> Vec<String> {
        let mut ids = Vec::new();
        for n in range {
            let run_id = format!("{prefix}-{n}");
            let message = ExecutionRequestMessage::inline(&run_id, slow_plan(ms), json!({"n": n}));
            let payload = serde_json::to_vec(&message).unwrap();
            self.producer
                .send(FutureRecord::to(&self.topic).key(&run_id).payload(&payload), Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .expect("published");
            ids.push(run_id);
        }
        ids
    }

    fn executor(&self, name: &str) -> ExecutorProcess {
        self.executor_with(name, &[])
    }

    fn executor_with(&self, name: &str, env: &[(&str, &str)]) -> ExecutorProcess {
        ExecutorProcess::start(name, &self.tansu.brokers(), &self.db.config.url, &self.group, env)
    }

    async fn number(&self, sql: &str) -> i64 {
        let rows = self.db.query(&format!("SELECT ({sql})::bigint AS n")).await;
        rows[0]["n"].as_i64().unwrap()
    }

    /// Waits until `sql` (a count) reaches `at_least`; the processes under test are observed
    /// through the database they write.
    async fn wait_for(&self, what: &str, sql: &str, at_least: i64, within: Duration) {
        self.wait_until(what, sql, |n| n >= at_least, within).await;
    }

    /// Waits until `sql` (a count) is zero.
    async fn wait_for_none(&self, what: &str, sql: &str, within: Duration) {
        self.wait_until(what, sql, |n| n == 0, within).await;
    }

    async fn wait_until(&self, what: &str, sql: &str, done: impl Fn(i64) -> bool, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.number(sql).await;
            if done(n) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what} (now {n})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until at least `n` attempts have COMPLETED.
    async fn wait_for_completed_attempts(&self, what: &str, n: i64) {
        self.wait_for(
            what,
            "SELECT count(*) FROM step_executions WHERE status = 'COMPLETED'",
            n,
            Duration::from_secs(60),
        )
        .await;
    }

    /// Waits until at least `n` runs have COMPLETED.
    async fn wait_for_completed_runs(&self, n: i64) {
        let sql = "SELECT count(*) FROM workflow_runs WHERE status = 'COMPLETED'";
        self.wait_for("every run to complete", sql, n, Duration::from_secs(120)).await;
    }

    /// Every run COMPLETED with the right output, no attempt RUNNING, and no call made again
    /// after it completed.
    async fn assert_all_completed_once(&self, run_ids: &[String]) {
        let runs = self.db.query("SELECT run_id, status, output_data FROM workflow_runs").await;
        let runs: HashMap<String, &Value> =
            runs.iter().map(|r| (r["run_id"].as_str().unwrap().to_string(), r)).collect();
        for (n, run_id) in run_ids.iter().enumerate() {
            let run = runs.get(run_id).unwrap_or_else(|| panic!("{run_id} has no row"));
            assert_eq!(run["status"], "COMPLETED", "{run_id}");
            assert_eq!(run["output_data"]["n"], json!(n), "{run_id}");
        }
        let running = self.number("SELECT count(*) FROM step_executions WHERE status = 'RUNNING'").await;
        assert_eq!(running, 0, "attempts left RUNNING");
        let twice = self
            .db
            .query(
                "SELECT run_id, step_id, count(*) AS n FROM step_executions WHERE status = 'COMPLETED' \
                 GROUP BY run_id, step_id HAVING count(*) > 1",
            )
            .await;
        assert!(twice.is_empty(), "calls completed more than once: {twice:?}");
        let after = self
            .db
            .query(
                "SELECT s.run_id, s.step_id, s.attempt FROM step_executions s JOIN step_executions c \
                 ON c.run_id = s.run_id AND c.step_id = s.step_id AND c.status = 'COMPLETED' AND s.attempt > c.attempt",
            )
            .await;
        assert!(after.is_empty(), "calls made again after they completed: {after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_killed_mid_run_twice_lose_and_repeat_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let setup = setup().await;
    // Published while no executor runs: they wait in Kafka.
    let runs = setup.publish("crash", 50, 300).await;

    let first = setup.executor("first");
    setup.wait_for_completed_attempts("first completed attempts", 10).await;
    first.kill();
    let completed_before = setup.number("SELECT count(*) FROM step_executions WHERE status = 'COMPLETED'").await;

    let second = setup.executor("second");
    setup.wait_for_completed_attempts("progress after the first restart", completed_before + 10).await;
    second.kill();

    let _third = setup.executor("third");
    setup.wait_for_completed_runs(50).await;
    setup.assert_all_completed_once(&runs).await;
    let lost = setup
        .number("SELECT count(*) FROM step_executions WHERE error_message = 'the executor running this call was lost'")
        .await;
    assert!(lost > 0, "calls in flight at a kill end FAILED, saying the executor was lost");
}

/// Two executors share one group with the default lease and session timeout; one is SIGKILLed in
/// the middle of its runs. Its runs resume on the survivor within the 30 s the README promises,
/// and every run completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_executors_share_the_work_and_a_killed_ones_runs_resume_on_the_survivor_within_30_s() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let setup = setup().await;
    let default_lease = Config::defaults().executor.lease_ms.to_string();
    let defaults = [("RUNVISOR__EXECUTOR__LEASE_MS", default_lease.as_str())];
    let left = setup.executor_with("left", &defaults);
    let right = setup.executor_with("right", &defaults);
    // A steady stream of work, so both members have runs once the group has settled.
    let mut runs = Vec::new();
    for batch in 0..8 {
        runs.extend(setup.publish_range("pair", batch * 10..batch * 10 + 10, 300).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let right_owner = format!("{}-right", setup.group);
    let left_owner = format!("{}-left", setup.group);
    let held_by_right =
        format!("SELECT count(*) FROM workflow_runs WHERE owner_id = '{right_owner}' AND status = 'RUNNING'");
    setup.wait_for("runs on the right executor", &held_by_right, 1, Duration::from_secs(60)).await;
    let held: Vec<String> = setup
        .db
        .query(&held_by_right.replace("count(*)", "run_id"))
        .await
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    right.kill();
    let killed_at = tokio::time::Instant::now();
    setup.wait_for_none("the killed executor's runs to resume", &held_by_right, Duration::from_secs(90)).await;
    let resumed_after = killed_at.elapsed();
    eprintln!("the killed executor's {} runs resumed on the survivor {resumed_after:?} after the kill", held.len());
    assert!(resumed_after <= Duration::from_secs(30), "resumed only after {resumed_after:?}");

    setup.wait_for_completed_runs(80).await;
    setup.assert_all_completed_once(&runs).await;
    for run_id in &held {
        let owner = setup.db.query(&format!("SELECT owner_id FROM workflow_runs WHERE run_id = '{run_id}'")).await;
        assert_eq!(owner[0]["owner_id"], json!(left_owner), "{run_id} was finished by the survivor");
    }
    drop(left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_runs_in_flight_and_exits_zero() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let setup = setup().await;
    let runs = setup.publish("drain", 10, 300).await;
    let executor = setup.executor("draining");
    setup
        .wait_for(
            "runs in flight",
            "SELECT count(*) FROM workflow_runs WHERE status = 'RUNNING'",
            5,
            Duration::from_secs(60),
        )
        .await;
    let in_flight: Vec<String> = setup
        .db
        .query("SELECT run_id FROM workflow_runs WHERE status = 'RUNNING'")
        .await
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    let status = tokio::task::spawn_blocking(move || executor.terminate()).await.unwrap();
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    for run_id in &in_flight {
        let rows = setup.db.query(&format!("SELECT status FROM workflow_runs WHERE run_id = '{run_id}'")).await;
        assert_eq!(rows[0]["status"], "COMPLETED", "{run_id} was in flight at SIGTERM and must have finished");
    }
    // Whatever had not started is still in Kafka for the next executor.
    let _next = setup.executor("next");
    setup.wait_for_completed_runs(10).await;
    setup.assert_all_completed_once(&runs).await;
}

/// A run still going when the grace period ends must not keep its lease: the next executor takes
/// it over as soon as it is handed the request, not when a long lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_releases_leases_and_the_next_executor_resumes_at_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let setup = setup().await;
    // A lease far longer than the test may take: only a released lease lets the runs resume.
    let long_lease = [("RUNVISOR__EXECUTOR__LEASE_MS", "120000"), ("RUNVISOR__EXECUTOR__SHUTDOWN_GRACE_MS", "200")];
    let runs = setup.publish("released", 4, 1500).await;
    let leaving = setup.executor_with("leaving", &long_lease);
    let running = "SELECT count(*) FROM workflow_runs WHERE status = 'RUNNING'";
    setup.wait_for("runs in flight", running, 4, Duration::from_secs(60)).await;
    let status = tokio::task::spawn_blocking(move || leaving.terminate()).await.unwrap();
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");

    let unfinished = setup.db.query("SELECT run_id FROM workflow_runs WHERE status = 'RUNNING'").await;
    assert!(!unfinished.is_empty(), "with a 200 ms grace and 4.5 s runs, some runs must still be going");
    let leased = setup
        .number(
            "SELECT count(*) FROM workflow_runs WHERE status = 'RUNNING' \
             AND lease_expires_at > now() AT TIME ZONE 'UTC'",
        )
        .await;
    assert_eq!(leased, 0, "every unfinished run's lease is released at SIGTERM");

    let _next = setup.executor_with("next", &long_lease);
    setup.wait_for_completed_runs(4).await;
    setup.assert_all_completed_once(&runs).await;
    // Resumed "at once": well inside the lease the leaving executor would otherwise have held.
    let late =
        setup.number("SELECT count(*) FROM workflow_runs WHERE completed_at - created_at > interval '60 s'").await;
    assert_eq!(late, 0, "a run waited for the leaving executor's lease to expire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_batch_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut setup = setup().await;
    let mut runs = setup.publish("broker", 20, 300).await;
    let _executor = setup.executor("steady");
    setup.wait_for_completed_attempts("runs in flight", 5).await;
    setup.tansu.restart().await;
    // Published after the restart: the producer and the executor reconnect on their own.
    runs.extend(setup.publish_range("broker", 20..30, 300).await);
    setup.wait_for_completed_runs(30).await;
    setup.assert_all_completed_once(&runs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_batch_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let setup = setup().await;
    let runs = setup.publish("database", 30, 300).await;
    let _executor = setup.executor("patient");
    setup.wait_for_completed_attempts("runs in flight", 5).await;
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    setup.wait_for_completed_runs(30).await;
    setup.assert_all_completed_once(&runs).await;
}
