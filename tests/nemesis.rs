//! The nemesis: the delivery guarantees proven together, at scale, under every fault at once.
//!
//! Three `runvisor consume` executors in one group on tansu + PostgreSQL run a stream of mixed
//! plans (sequential, parallel, loop, fork-join, conditional; built-in agents and HTTP agents of
//! which one is slow and one flaky) while a nemesis SIGKILLs executors (restarting each), SIGTERMs
//! others, restarts PostgreSQL, restarts the broker and makes the database read-only for 10 s;
//! inside the executors, 30 % of StepActors are killed by the `buggify` fault injection
//! (`src/faults.rs`), half of them after their call returned. At the end, from the database and the
//! agents' own call logs:
//! - every published run has its row, and every run is terminal, no attempt RUNNING;
//! - no call whose completion was committed was made again (the agents saw nothing after it);
//! - no two executors ran a run at once (per run, the executors of its attempts, in start order,
//!   never come back to one that had handed over);
//! - attempts of each call are numbered 1..n with n within the retry policy;
//! - and the runs per executor are printed.
//!
//! A second scenario scales out and in: a fourth executor joins mid-run and leaves again.
//!
//! Sizes: `RUNVISOR_NEMESIS_RUNS` runs published over `RUNVISOR_NEMESIS_WINDOW_S` seconds, the
//! faults spread over that window. CI runs 400 over 60 s; the full run is
//! `RUNVISOR_NEMESIS_RUNS=10000 RUNVISOR_NEMESIS_WINDOW_S=300 cargo test --release --features buggify --test nemesis -- --nocapture`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use common::{ExecutorProcess, Tansu, TestDb, plan, restart_postgres};
use rdkafka::producer::{FutureProducer, FutureRecord};
use runvisor::config::Config;
use runvisor::kafka::Broker;
use runvisor::wire::ExecutionRequestMessage;
use serde_json::{Value, json};

/// These tests start many processes each; one at a time keeps them within two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The most attempts one call may take: the executors' retry policy (`max_retries`).
const MAX_ATTEMPTS: i64 = 10;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One call an agent received.
#[derive(Debug, Clone)]
struct Call {
    /// `Idempotency-Key`: the same for every attempt of one call.
    key: String,
    /// `X-Correlation-ID`: the attempt's `step_executions.id`.
    attempt_row: String,
    /// Arrival order across all agents.
    seq: u64,
}

#[derive(Clone, Default)]
struct AgentLog {
    calls: Arc<Mutex<Vec<Call>>>,
    seq: Arc<AtomicU64>,
}

/// The HTTP agents, speaking the simple protocol: `fast` answers at once, `slow` after 50–600 ms,
/// `flaky` fails 30 % of its calls with a 503.
async fn start_agents() -> (String, AgentLog) {
    let log = AgentLog::default();
    let app = Router::new()
        .route(
            "/{agent}",
            post(
                |State(log): State<AgentLog>,
                 Path(agent): Path<String>,
                 headers: HeaderMap,
                 Json(body): Json<Value>| async move {
                    let header =
                        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                    let seq = log.seq.fetch_add(1, Ordering::SeqCst);
                    log.calls.lock().unwrap().push(Call {
                        key: header("idempotency-key"),
                        attempt_row: header("x-correlation-id"),
                        seq,
                    });
                    let roll = rand::random::<f64>();
                    match agent.as_str() {
                        "slow" => tokio::time::sleep(Duration::from_millis(50 + (roll * 550.0) as u64)).await,
                        "flaky" if roll < 0.3 => return (StatusCode::SERVICE_UNAVAILABLE, "try again".to_string()),
                        _ => {}
                    }
                    (
                        StatusCode::OK,
                        json!({"status": "success", "output": {"agent": agent, "input": body["input"]}}).to_string(),
                    )
                },
            ),
        )
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, log)
}

/// The five shapes of plan the nemesis runs, by index.
fn mixed_plan(shape: usize) -> Value {
    match shape % 5 {
        0 => plan(
            "s1",
            json!({
                "s1": {"agent_name": "fast", "input_mapping": {"n": "${workflow.input.n}"}, "next_step": "s2"},
                "s2": {"agent_name": "echo", "input_mapping": {"n": "${s1.output.input.n}"}, "next_step": "s3"},
                "s3": {"agent_name": "slow", "input_mapping": {"n": "${s2.output.n}"}}
            }),
        ),
        1 => plan(
            "fan",
            json!({
                "fan": {"type": "parallel", "parallel_steps": ["pa", "pb", "pc"], "next_step": "join"},
                "pa": {"agent_name": "fast", "input_mapping": {"n": "${workflow.input.n}"}},
                "pb": {"agent_name": "flaky", "input_mapping": {"n": "${workflow.input.n}"}},
                "pc": {"agent_name": "sleep", "input_mapping": {"ms": 100}},
                "join": {"agent_name": "echo", "input_mapping": {"a": "${pa.output.agent}", "b": "${pb.output.agent}"}}
            }),
        ),
        2 => plan(
            "list",
            json!({
                "list": {"agent_name": "echo", "input_mapping": {"items": [1, 2, 3]}, "next_step": "each"},
                "each": {
                    "type": "loop",
                    "loop_config": {"collection": "${list.output.items}", "loop_body": ["body"], "execution_mode": "sequential", "max_iterations": 10},
                    "next_step": "sum"
                },
                "body": {"agent_name": "flaky", "input_mapping": {"item": "${loop.item}"}},
                "sum": {"agent_name": "echo", "input_mapping": {"count": "${each.output.total_count}"}}
            }),
        ),
        3 => plan(
            "fork",
            json!({
                "fork": {
                    "type": "fork_join",
                    "fork_join_config": {"branches": {"x": {"steps": ["bx"]}, "y": {"steps": ["by1", "by2"]}}, "join_policy": "all"},
                    "next_step": "merge"
                },
                "bx": {"agent_name": "slow", "input_mapping": {"branch": "x"}},
                "by1": {"agent_name": "flaky", "input_mapping": {"branch": "y"}},
                "by2": {"agent_name": "fast", "input_mapping": {"from": "${by1.output.agent}"}},
                "merge": {"agent_name": "echo", "input_mapping": {"x": "${fork.output.x}", "y": "${fork.output.y}"}}
            }),
        ),
        _ => plan(
            "score",
            json!({
                "score": {"agent_name": "echo", "input_mapping": {"n": "${workflow.input.n}"}, "next_step": "route"},
                "route": {
                    "type": "conditional",
                    "condition": {"expression": "${score.output.n} > 4"},
                    "if_true_step": "high",
                    "if_false_step": "low",
                    "next_step": "report"
                },
                "high": {"agent_name": "slow", "input_mapping": {"path": "high"}},
                "low": {"agent_name": "flaky", "input_mapping": {"path": "low"}},
                "report": {"agent_name": "fast", "input_mapping": {"branch": "${route.output.branch_taken}"}}
            }),
        ),
    }
}

/// The executors, by slot; a slot's process is replaced by a new incarnation (a new owner id)
/// each time the nemesis kills or stops it.
struct Cluster {
    brokers: String,
    database_url: String,
    group: String,
    env: Vec<(String, String)>,
    slots: Vec<Option<ExecutorProcess>>,
    incarnations: Vec<u32>,
}

impl Cluster {
    fn start_slot(&mut self, slot: usize) {
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
            self.incarnations.resize(slot + 1, 0);
        }
        self.incarnations[slot] += 1;
        let name = format!("e{slot}.{}", self.incarnations[slot]);
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.slots[slot] = Some(ExecutorProcess::start(&name, &self.brokers, &self.database_url, &self.group, &env));
    }

    fn kill_all(&mut self) {
        for slot in 0..self.slots.len() {
            self.kill(slot);
        }
    }

    fn kill(&mut self, slot: usize) {
        if let Some(process) = self.slots[slot].take() {
            println!("nemesis: SIGKILL {}", process.name);
            process.kill();
        }
    }

    async fn terminate(&mut self, slot: usize) {
        if let Some(process) = self.slots[slot].take() {
            println!("nemesis: SIGTERM {}", process.name);
            let name = process.name.clone();
            let status = tokio::task::spawn_blocking(move || process.terminate()).await.unwrap();
            assert_eq!(status.code(), Some(0), "{name} stops gracefully");
        }
    }
}

/// What the nemesis does, at which share of the window.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(usize),
    Terminate(usize),
    RestartPostgres,
    RestartBroker,
    ReadOnlyDatabase,
}

const SCHEDULE: [(f64, Fault); 10] = [
    (0.08, Fault::Kill(0)),
    (0.16, Fault::Kill(1)),
    (0.24, Fault::RestartPostgres),
    (0.32, Fault::Terminate(2)),
    (0.40, Fault::Kill(0)),
    (0.48, Fault::RestartBroker),
    (0.56, Fault::ReadOnlyDatabase),
    (0.72, Fault::Kill(1)),
    (0.80, Fault::Terminate(0)),
    (0.88, Fault::Kill(2)),
];

async fn count(db: &TestDb, sql: &str) -> i64 {
    use sea_orm::{FromQueryResult, JsonValue, Statement};
    // The test's own pool meets the same restarts as the executors: ask again until it answers.
    let statement = Statement::from_string(db.backend(), format!("SELECT ({sql})::bigint AS n"));
    for _ in 0..100 {
        if let Ok(Some(row)) = JsonValue::find_by_statement(statement.clone()).one(&db.db).await
            && let Some(n) = row["n"].as_i64()
        {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the database did not answer: {sql}");
}

/// Everything a scenario runs against: a broker, a database, the agents, the executors, and a
/// producer.
struct Scene {
    tansu: Tansu,
    db: TestDb,
    agent_log: AgentLog,
    cluster: Cluster,
    producer: FutureProducer,
    topic: String,
    _broker: Broker,
}

async fn scene(executors: usize) -> Scene {
    let tansu = Tansu::start().await;
    let db = TestDb::postgres().await.migrated().await;
    let (agents, agent_log) = start_agents().await;
    let mut config = Config::defaults();
    config.kafka.brokers = tansu.brokers();
    config.kafka.topic_partitions = 6;
    let broker = Broker::start(&config.kafka).unwrap();
    broker.ensure_topics(&config.kafka).await.expect("topics on tansu");
    let producer: FutureProducer = runvisor::kafka::producer::producer(&broker, &config.kafka).unwrap();
    let mut env: Vec<(String, String)> = [
        ("RUNVISOR_BUGGIFY_STEP_KILL", "0.3"),
        ("RUNVISOR__KAFKA__TOPIC_PARTITIONS", "6"),
        ("RUNVISOR__EXECUTOR__SHUTDOWN_GRACE_MS", "2000"),
        ("RUNVISOR__EXECUTOR__RETRY__MAX_RETRIES", "10"),
        ("RUNVISOR__EXECUTOR__RETRY__INITIAL_DELAY_MS", "20"),
        ("RUNVISOR__EXECUTOR__RETRY__MAX_DELAY_MS", "200"),
        // Faults are the test's, not the agents': breakers stay shut.
        ("RUNVISOR__EXECUTOR__CIRCUIT_BREAKER__FAILURE_THRESHOLD", "1000000"),
        ("RUST_LOG", "warn,runvisor::kafka=info"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for agent in ["fast", "slow", "flaky"] {
        let key = agent.to_uppercase();
        env.push((format!("RUNVISOR__AGENTS__{key}__URL"), format!("{agents}/{agent}")));
        env.push((format!("RUNVISOR__AGENTS__{key}__PROTOCOL"), "simple".into()));
        env.push((format!("RUNVISOR__AGENTS__{key}__TIMEOUT_MS"), "5000".into()));
    }
    let mut cluster = Cluster {
        brokers: tansu.brokers(),
        database_url: db.config.url.clone(),
        group: format!("nemesis{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        env,
        slots: Vec::new(),
        incarnations: Vec::new(),
    };
    for slot in 0..executors {
        cluster.start_slot(slot);
    }
    let topic = config.kafka.requests_topic;
    Scene { tansu, db, agent_log, cluster, producer, topic, _broker: broker }
}

impl Scene {
    /// Publishes `runs` requests at a steady pace across `window` from `started`, so that runs are
    /// in flight at every fault; answers their run_ids once all are taken by the broker.
    fn publish_steadily(
        &self,
        runs: usize,
        window: Duration,
        started: Instant,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        let (producer, topic) = (self.producer.clone(), self.topic.clone());
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(runs);
            for n in 0..runs {
                let due = window.mul_f64(n as f64 / runs as f64);
                tokio::time::sleep_until(tokio::time::Instant::from_std(started + due)).await;
                let run_id = format!("nemesis-{n}");
                let message = ExecutionRequestMessage::inline(&run_id, mixed_plan(n), json!({"n": n % 10}));
                let payload = serde_json::to_vec(&message).unwrap();
                // The broker restarts meanwhile: the producer retries until it takes the request.
                loop {
                    let record = FutureRecord::to(&topic).key(&run_id).payload(&payload);
                    match producer.send(record, Duration::from_secs(30)).await {
                        Ok(_) => break,
                        Err((error, _)) => {
                            println!("publish of {run_id} failed ({error}); again");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                ids.push(run_id);
            }
            ids
        })
    }

    /// Waits until every published run is stored and terminal (the lease, a rebalance and retries
    /// bound how long that takes).
    async fn wait_until_all_end(&self, published: usize) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let unfinished = count(
                &self.db,
                "SELECT count(*) FROM workflow_runs WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')",
            )
            .await;
            let stored = count(&self.db, "SELECT count(*) FROM workflow_runs").await;
            if unfinished == 0 && stored as usize >= published {
                return;
            }
            assert!(Instant::now() < deadline, "{unfinished} runs unfinished, {stored} of {published} stored");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_executors_under_every_fault_lose_nothing_and_run_nothing_twice() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let runs = env_or("RUNVISOR_NEMESIS_RUNS", 400) as usize;
    let window = Duration::from_secs(env_or("RUNVISOR_NEMESIS_WINDOW_S", 60));
    let mut scene = scene(3).await;
    let started = Instant::now();
    let publisher = scene.publish_steadily(runs, window, started);
    for (at, fault) in SCHEDULE {
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + window.mul_f64(at))).await;
        println!("nemesis at {:.1} s: {fault:?}", started.elapsed().as_secs_f64());
        match fault {
            Fault::Kill(slot) => {
                scene.cluster.kill(slot);
                scene.cluster.start_slot(slot);
            }
            Fault::Terminate(slot) => {
                scene.cluster.terminate(slot).await;
                scene.cluster.start_slot(slot);
            }
            Fault::RestartPostgres => tokio::task::spawn_blocking(restart_postgres).await.unwrap(),
            Fault::RestartBroker => scene.tansu.restart().await,
            Fault::ReadOnlyDatabase => {
                let terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'";
                scene.db.as_admin("ALTER DATABASE {db} SET default_transaction_read_only = on").await;
                scene.db.as_admin(terminate).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
                scene.db.as_admin("ALTER DATABASE {db} RESET default_transaction_read_only").await;
                scene.db.as_admin(terminate).await;
            }
        }
    }
    let published = publisher.await.unwrap();
    scene.wait_until_all_end(published.len()).await;
    let took = started.elapsed();
    scene.cluster.kill_all();
    check(&scene.db, &published, &scene.agent_log, took).await;
}

/// Scale-out: a fourth executor joins mid-run and leaves again (SIGTERM); the rebalances lose
/// nothing and run nothing twice, and the three that stay take at least 20 % of the runs each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_joining_and_leaving_mid_run_loses_nothing_and_the_runs_spread() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let runs = env_or("RUNVISOR_SCALE_RUNS", 300) as usize;
    let window = Duration::from_secs(env_or("RUNVISOR_SCALE_WINDOW_S", 30));
    let mut scene = scene(3).await;
    let started = Instant::now();
    let publisher = scene.publish_steadily(runs, window, started);
    tokio::time::sleep_until(tokio::time::Instant::from_std(started + window.mul_f64(0.3))).await;
    println!("scale-out at {:.1} s: a fourth executor joins", started.elapsed().as_secs_f64());
    scene.cluster.start_slot(3);
    tokio::time::sleep_until(tokio::time::Instant::from_std(started + window.mul_f64(0.7))).await;
    println!("scale-in at {:.1} s: the fourth leaves", started.elapsed().as_secs_f64());
    scene.cluster.terminate(3).await;
    let published = publisher.await.unwrap();
    scene.wait_until_all_end(published.len()).await;
    let took = started.elapsed();
    scene.cluster.kill_all();
    check(&scene.db, &published, &scene.agent_log, took).await;
    // Runs per slot, by who finished them.
    let owners = scene.db.query("SELECT owner_id, count(*) AS n FROM workflow_runs GROUP BY owner_id").await;
    let mut by_slot = [0i64; 4];
    for row in &owners {
        let owner = row["owner_id"].as_str().unwrap_or_default();
        let slot = owner.rsplit_once("-e").and_then(|(_, name)| name.split('.').next()?.parse::<usize>().ok());
        if let Some(slot) = slot {
            by_slot[slot] += row["n"].as_i64().unwrap();
        }
    }
    println!("scale-out: runs finished by slot {by_slot:?}");
    for (slot, finished) in by_slot.iter().take(3).enumerate() {
        assert!(
            *finished * 5 >= published.len() as i64,
            "executor e{slot} finished {finished} of {} runs: less than 20 %",
            published.len()
        );
    }
    assert!(by_slot[3] > 0, "the executor that joined took no runs");
}

/// The guarantees, checked from the database and the agents' call logs.
async fn check(db: &TestDb, published: &[String], agent_log: &AgentLog, took: Duration) {
    let rows = db.query("SELECT run_id, status, owner_id, error_message FROM workflow_runs").await;
    let by_id: HashMap<&str, &Value> = rows.iter().map(|r| (r["run_id"].as_str().unwrap(), r)).collect();
    for run_id in published {
        let run = by_id.get(run_id.as_str()).unwrap_or_else(|| panic!("published run {run_id} has no row"));
        assert!(["COMPLETED", "FAILED", "CANCELLED"].contains(&run["status"].as_str().unwrap()), "{run:?}");
    }
    let running = db.query("SELECT id, run_id, step_id FROM step_executions WHERE status = 'RUNNING'").await;
    assert!(running.is_empty(), "attempts left RUNNING: {running:?}");

    // Attempts of each call: numbered 1..n, n within the policy, nothing after a completion.
    let attempts = db
        .query(
            "SELECT id, run_id, step_id, coalesce(loop_iteration_index, -1) AS iteration, attempt, status, executor_id, \
             started_at FROM step_executions ORDER BY started_at, attempt",
        )
        .await;
    let mut calls: BTreeMap<(String, String, i64), Vec<&Value>> = BTreeMap::new();
    for row in &attempts {
        let key = (
            row["run_id"].as_str().unwrap().to_string(),
            row["step_id"].as_str().unwrap().to_string(),
            row["iteration"].as_i64().unwrap(),
        );
        calls.entry(key).or_default().push(row);
    }
    let mut completed_rows = HashMap::new();
    for (key, rows) in &calls {
        let mut numbers: Vec<i64> = rows.iter().map(|r| r["attempt"].as_i64().unwrap()).collect();
        numbers.sort_unstable();
        let expected: Vec<i64> = (1..=numbers.len() as i64).collect();
        assert_eq!(numbers, expected, "{key:?}: attempts are numbered 1..n");
        assert!(
            numbers.len() as i64 <= MAX_ATTEMPTS,
            "{key:?}: {} attempts, policy allows {MAX_ATTEMPTS}",
            numbers.len()
        );
        let completed: Vec<&&Value> = rows.iter().filter(|r| r["status"] == "COMPLETED").collect();
        assert!(completed.len() <= 1, "{key:?}: completed {} times", completed.len());
        if let Some(done) = completed.first() {
            let last = numbers.len() as i64;
            assert_eq!(done["attempt"].as_i64(), Some(last), "{key:?}: an attempt was made after the completed one");
            completed_rows.insert(done["id"].as_str().unwrap().to_string(), key.clone());
        }
    }

    // The agents' side: for each call, the completed attempt is the last request they received.
    let log = agent_log.calls.lock().unwrap().clone();
    let mut last_by_key: HashMap<&str, &Call> = HashMap::new();
    for call in &log {
        let entry = last_by_key.entry(call.key.as_str()).or_insert(call);
        if call.seq > entry.seq {
            *entry = call;
        }
    }
    let mut remade = Vec::new();
    for call in &log {
        if completed_rows.contains_key(&call.attempt_row)
            && last_by_key.get(call.key.as_str()).is_some_and(|last| last.attempt_row != call.attempt_row)
        {
            remade.push(call.key.clone());
        }
    }
    assert!(remade.is_empty(), "calls made again after their completion was committed: {remade:?}");

    // One executor at a time: per run, its attempts' executors in start order never return to one
    // that had handed the run over.
    let mut per_run: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for row in &attempts {
        per_run.entry(row["run_id"].as_str().unwrap()).or_default().push(row["executor_id"].as_str().unwrap_or("?"));
    }
    for (run_id, executors) in &per_run {
        let mut handed_over: Vec<&str> = Vec::new();
        let mut current = executors[0];
        for executor in executors.iter().skip(1) {
            if *executor != current {
                assert!(
                    !handed_over.contains(executor),
                    "{run_id}: {executor} ran again after handing over: {executors:?}"
                );
                handed_over.push(current);
                current = executor;
            }
        }
    }

    let statuses = db.query("SELECT status, count(*) AS n FROM workflow_runs GROUP BY status ORDER BY status").await;
    let owners =
        db.query("SELECT owner_id, count(*) AS n FROM workflow_runs GROUP BY owner_id ORDER BY owner_id").await;
    let moved = per_run.values().filter(|executors| executors.windows(2).any(|w| w[0] != w[1])).count();
    println!(
        "nemesis: {} runs in {:.0} s; {} attempts, {} agent requests; runs by status {statuses:?}; runs finished \
         by executor {owners:?}; runs that moved between executors: {moved}",
        published.len(),
        took.as_secs_f64(),
        attempts.len(),
        log.len()
    );
    let failed =
        db.query("SELECT error_message, count(*) AS n FROM workflow_runs WHERE status = 'FAILED' GROUP BY 1").await;
    if !failed.is_empty() {
        println!("nemesis: why runs failed: {failed:?}");
    }
}
