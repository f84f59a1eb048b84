//! Chaos: many runs while actors are killed at random moments. Whatever dies, every run ends in a
//! terminal status, attempts follow the retry policy, nothing is left RUNNING, and the database
//! holds exactly what the actors reported.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{TestDb, TestExecutor, plan, request, test_config};
use entity::{RunStatus, StepStatus, step_execution};
use rand::{Rng, SeedableRng};
use runvisor::actors::events::Event;
use runvisor::actors::run::{RunOutcome, Spawned};
use runvisor::config::RetryPolicy;
use sea_orm::{EntityTrait, QueryOrder};
use serde_json::{Value, json};

const RUNS: usize = 1000;
const MAX_ATTEMPTS: u32 = 5;

/// Six agent calls per run, through a parallel block and a loop.
fn chaos_plan() -> Value {
    plan(
        "a",
        json!({
            "a": {"agent_name": "echo", "input_mapping": {"n": "${workflow.input.n}"}, "next_step": "p"},
            "p": {"type": "parallel", "parallel_steps": ["b", "c"], "next_step": "l"},
            "b": {"agent_name": "sleep", "input_mapping": {"ms": 2, "n": "${a.output.n}"}},
            "c": {"agent_name": "echo", "input_mapping": {"n": "${a.output.n}"}},
            "l": {"type": "loop", "loop_config": {"collection": [1, 2], "loop_body": ["d"], "execution_mode": "parallel"}, "next_step": "e"},
            "d": {"agent_name": "sleep", "input_mapping": {"ms": 1, "item": "${loop.item}"}},
            "e": {"agent_name": "echo", "input_mapping": {"b": "${b.output.n}", "loop": "${l.output.total_count}"}}
        }),
    )
}

/// One agent call: run, step, enclosing compound step, loop iteration.
type CallKey = (String, String, Option<String>, Option<i32>);

#[derive(Debug, Default)]
struct Chaos {
    steps_seen: usize,
    steps_killed: usize,
    runs_killed: Vec<String>,
}

/// Kills about a quarter of StepActors and a few RunActors, each after a random short delay.
async fn unleash(mut spawned: tokio::sync::mpsc::UnboundedReceiver<Spawned>) -> Chaos {
    let mut chaos = Chaos::default();
    // A seeded, Send generator: the chaos task crosses threads between messages.
    let mut rng = rand::rngs::StdRng::from_os_rng();
    while let Some(actor) = spawned.recv().await {
        match actor {
            Spawned::Step { actor, .. } => {
                chaos.steps_seen += 1;
                if rng.random_bool(0.25) {
                    chaos.steps_killed += 1;
                    let delay = Duration::from_micros(rng.random_range(0..3_000));
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        actor.kill();
                    });
                }
            }
            Spawned::Run { run_id, actor } => {
                if rng.random_bool(0.03) {
                    chaos.runs_killed.push(run_id);
                    let delay = Duration::from_micros(rng.random_range(0..20_000));
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        actor.kill();
                    });
                }
            }
        }
    }
    chaos
}

/// Submits `RUNS` runs and waits for every outcome.
async fn run_all(test: &TestExecutor) -> Vec<RunOutcome> {
    let receivers: Vec<_> = (0..RUNS)
        .map(|n| test.executor.submit(request(&format!("chaos-{n}"), chaos_plan(), json!({"n": n}))).unwrap())
        .collect();
    let mut outcomes = Vec::with_capacity(RUNS);
    for receiver in receivers {
        outcomes.push(tokio::time::timeout(Duration::from_secs(120), receiver).await.expect("a run hung").unwrap());
    }
    outcomes
}

/// The final status of each attempt and run, as the events reported them.
fn reported(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> (HashMap<String, StepStatus>, HashMap<String, RunStatus>) {
    let (mut attempts, mut runs) = (HashMap::new(), HashMap::new());
    while let Ok(event) = events.try_recv() {
        match event {
            Event::Attempt { step_execution_id, status, .. } => {
                attempts.insert(step_execution_id, status);
            }
            Event::Run { run_id, status, .. } => {
                runs.insert(run_id, status);
            }
        }
    }
    (attempts, runs)
}

async fn step_rows(db: &TestDb) -> Vec<step_execution::Model> {
    step_execution::Entity::find().order_by_asc(step_execution::Column::StartedAt).all(&db.db).await.unwrap()
}

fn chaos_config() -> runvisor::Config {
    let mut config = test_config();
    config.executor.retry =
        RetryPolicy { max_retries: MAX_ATTEMPTS, initial_delay_ms: 1, max_delay_ms: 4, backoff_multiplier: 2.0 };
    config
}

async fn killing_step_and_run_actors(db: TestDb) {
    let db = db.migrated().await;
    let backend = db.backend();
    let mut test = db.executor(&chaos_config()).await;
    let spawned = std::mem::replace(&mut test.spawned, tokio::sync::mpsc::unbounded_channel().1);
    let chaos = tokio::spawn(unleash(spawned));
    let outcomes = run_all(&test).await;
    test.executor.persistence().flush().await.unwrap();
    let (reported_attempts, reported_runs) = reported(&mut test.events);
    test.executor.shutdown(Duration::from_secs(5)).await;
    let chaos = chaos.await.unwrap();

    assert!(
        chaos.steps_killed * 5 >= chaos.steps_seen,
        "{backend:?}: at least 20% of StepActors killed ({} of {})",
        chaos.steps_killed,
        chaos.steps_seen
    );
    assert!(!chaos.runs_killed.is_empty());

    // Every run is terminal, in the database as in its outcome.
    let runs: HashMap<String, entity::workflow_run::Model> = entity::workflow_run::Entity::find()
        .all(&db.db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.run_id.clone(), r))
        .collect();
    assert_eq!(runs.len(), RUNS);
    let mut completed = 0;
    let mut exhausted_runs = Vec::new();
    for outcome in &outcomes {
        let row = &runs[&outcome.run_id];
        assert!(row.status.is_terminal(), "{backend:?}: {} is {}", row.run_id, row.status);
        assert_eq!(row.status, outcome.status, "{backend:?}: {}", row.run_id);
        assert_eq!(row.error_message, outcome.error);
        assert_eq!(
            Some(row.status),
            reported_runs.get(&row.run_id).copied(),
            "{backend:?}: run event for {}",
            row.run_id
        );
        match outcome.status {
            RunStatus::Completed => {
                completed += 1;
                assert_eq!(row.output_data.as_ref().unwrap()["loop"], 2);
            }
            RunStatus::Failed => {
                let error = outcome.error.as_deref().unwrap();
                if chaos.runs_killed.contains(&outcome.run_id) && error == "RunActor was killed" {
                    continue;
                }
                // Otherwise some call ran out of attempts (checked against the rows below).
                assert!(error.starts_with("Step '"), "{backend:?}: {}: {error}", outcome.run_id);
                exhausted_runs.push(outcome.run_id.clone());
            }
            other => panic!("{backend:?}: unexpected {other}"),
        }
    }
    assert!(completed >= RUNS * 9 / 10, "{backend:?}: only {completed} of {RUNS} completed");

    // No attempt is left RUNNING, and each one's final status is the one its actor reported
    // (attempts of a killed run are ended by its supervisor, which reports the run instead).
    let rows = step_rows(&db).await;
    let mut calls: BTreeMap<CallKey, Vec<&step_execution::Model>> = BTreeMap::new();
    for row in &rows {
        assert_ne!(row.status, StepStatus::Running, "{backend:?}: {row:?}");
        let killed_run = runs[&row.run_id].error_message.as_deref() == Some("RunActor was killed");
        if !killed_run || row.error_message.as_deref() != Some("RunActor was killed") {
            assert_eq!(reported_attempts.get(&row.id), Some(&row.status), "{backend:?}: {row:?}");
        }
        let key = (row.run_id.clone(), row.step_id.clone(), row.parent_step_id.clone(), row.loop_iteration_index);
        calls.entry(key).or_default().push(row);
    }
    // Attempts of one call are numbered 1..n without gaps, n ≤ the policy's maximum, and every
    // attempt but the last failed.
    let mut runs_with_an_exhausted_call = std::collections::HashSet::new();
    for (key, mut attempts) in calls {
        attempts.sort_by_key(|a| a.attempt);
        let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt).collect();
        assert_eq!(numbers, (1..=attempts.len() as i32).collect::<Vec<_>>(), "{backend:?}: {key:?}");
        assert!(attempts.len() <= MAX_ATTEMPTS as usize, "{backend:?}: {key:?}");
        for earlier in &attempts[..attempts.len() - 1] {
            assert_eq!(earlier.status, StepStatus::Failed, "{backend:?}: {key:?}");
        }
        let last = attempts[attempts.len() - 1];
        if attempts.len() == MAX_ATTEMPTS as usize && last.status == StepStatus::Failed {
            runs_with_an_exhausted_call.insert(key.0.clone());
        }
    }
    for run_id in exhausted_runs {
        assert!(
            runs_with_an_exhausted_call.contains(&run_id),
            "{backend:?}: {run_id} failed without exhausting a call"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_step_and_run_actors_on_postgres() {
    killing_step_and_run_actors(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_step_and_run_actors_on_sqlite() {
    killing_step_and_run_actors(TestDb::sqlite().await).await;
}

async fn killing_the_persistence_actor(db: TestDb) {
    let db = db.migrated().await;
    let backend = db.backend();
    let test = db.executor(&test_config()).await;
    let persistence = test.executor.persistence().clone();
    let mut generations = persistence.generations();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = std::sync::Arc::clone(&done);
    let killer = tokio::spawn(async move {
        let mut kills = 0;
        while kills < 20 && !finished.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if persistence.journal().is_empty() {
                continue;
            }
            let Some(actor) = persistence.actor() else { continue };
            actor.kill();
            generations.changed().await.unwrap();
            kills += 1;
        }
        kills
    });
    let receivers: Vec<_> = (0..300)
        .map(|n| test.executor.submit(request(&format!("p-{n}"), chaos_plan(), json!({"n": n}))).unwrap())
        .collect();
    let mut outcomes = Vec::new();
    for receiver in receivers {
        outcomes.push(tokio::time::timeout(Duration::from_secs(120), receiver).await.expect("a run hung").unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let kills = killer.await.unwrap();
    assert!(kills >= 5, "{backend:?}: the writer was killed {kills} times");
    test.executor.persistence().flush().await.unwrap();
    for outcome in &outcomes {
        assert_eq!(outcome.status, RunStatus::Completed, "{backend:?}: {:?}", outcome.error);
        let (run, steps) = test.executor.persistence().load_run(&outcome.run_id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(run.output_data, outcome.output);
        assert_eq!(steps.len(), 6, "{backend:?}: every attempt of {} is stored", outcome.run_id);
        assert!(steps.iter().all(|s| s.status == StepStatus::Completed));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_persistence_actor_on_postgres() {
    killing_the_persistence_actor(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_persistence_actor_on_sqlite() {
    killing_the_persistence_actor(TestDb::sqlite().await).await;
}

/// PostgreSQL fails over mid-batch: for a while every connection lands on a database that refuses
/// writes (as a demoted primary or a standby does), then writes are accepted again. The
/// persistence actor keeps its journal and retries; no write and no run is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_writes_for_a_while_loses_nothing() {
    let db = TestDb::postgres().await.migrated().await;
    let test = db.executor(&test_config()).await;
    let journal = std::sync::Arc::clone(test.executor.persistence().journal());
    // Three slow calls, so that every run is claimed and in the middle of its calls at the failover
    // (claims and attempt rows written; the calls' ends still to come).
    let slow = plan(
        "a",
        json!({
            "a": {"agent_name": "sleep", "input_mapping": {"ms": 300}, "next_step": "b"},
            "b": {"agent_name": "sleep", "input_mapping": {"ms": 300}, "next_step": "c"},
            "c": {"agent_name": "sleep", "input_mapping": {"ms": 300}}
        }),
    );
    let receivers: Vec<_> = (0..300)
        .map(|n| test.executor.submit(request(&format!("f-{n}"), slow.clone(), json!({"n": n}))).unwrap())
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while db.query("SELECT count(*) AS n FROM workflow_runs").await[0]["n"] != json!(300) {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for every run to be claimed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    db.as_admin("ALTER DATABASE {db} SET default_transaction_read_only = on").await;
    let terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'";
    db.as_admin(terminate).await;
    wait_until("writes refused and retried", || journal.stats().transient_failures >= 3).await;
    let refused_at = journal.stats().writes;
    db.as_admin("ALTER DATABASE {db} RESET default_transaction_read_only").await;
    db.as_admin(terminate).await;

    for receiver in receivers {
        let outcome = tokio::time::timeout(Duration::from_secs(120), receiver).await.expect("a run hung").unwrap();
        assert_eq!(outcome.status, RunStatus::Completed, "{}: {:?}", outcome.run_id, outcome.error);
    }
    test.executor.persistence().flush().await.unwrap();
    assert!(journal.stats().writes > refused_at, "writes committed again after the failover");
    let runs = db.query("SELECT status, count(*) AS n FROM workflow_runs GROUP BY status").await;
    assert_eq!(runs, vec![json!({"status": "COMPLETED", "n": 300})]);
    let steps = db.query("SELECT status, count(*) AS n FROM step_executions GROUP BY status").await;
    assert_eq!(steps, vec![json!({"status": "COMPLETED", "n": 300 * 3})], "every call ran once and is stored once");
}

/// Polls `condition` until it holds (within a minute).
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
