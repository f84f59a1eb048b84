//! The actor runtime alone: run supervisor, RunActors and StepActors in this process, with the
//! persistence actor replaced by [`MemoryStore`], which acknowledges every write at once and keeps
//! nothing. No broker, no database: what is left is the cost of walking plans, spawning actors and
//! journaling writes, the executor's own share of every run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use entity::{RunStatus, StepStatus};
use ractor::{Actor, ActorRef};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, oneshot};

use super::procstat;
use super::workload::Shape;
use crate::actors::events::{Event, EventSink};
use crate::actors::memory::MemoryStore;
use crate::actors::persistence::{Journal, PersistenceHandle};
use crate::actors::run::RunDeps;
use crate::actors::run::{RunOutcome, RunRequest};
use crate::actors::supervisor::{RunSupervisor, SupervisorMsg};
use crate::agents::{AgentRegistry, LiveRegistry};
use crate::config::Config;
use crate::wire::PlanSource;

/// Counts the attempts that started, and says when `target` have: how the memory mode knows
/// every run is in flight.
#[derive(Debug, Default)]
struct StartedAttempts {
    count: AtomicUsize,
    target: AtomicUsize,
    reached: tokio::sync::Notify,
}

impl EventSink for StartedAttempts {
    fn emit(&self, event: Event) {
        if let Event::Attempt { status: StepStatus::Running, .. } = event
            && self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.target.load(Ordering::Relaxed)
        {
            self.reached.notify_one();
        }
    }
}

struct Engine {
    supervisor: ActorRef<SupervisorMsg>,
    store: ActorRef<crate::actors::persistence::PersistMsg>,
    started: Arc<StartedAttempts>,
}

impl Engine {
    async fn start(config: &Config) -> anyhow::Result<Engine> {
        let started = Arc::new(StartedAttempts::default());
        let journal = Arc::new(Journal::new(Arc::clone(&started) as Arc<dyn EventSink>));
        let (store, _) = Actor::spawn(None, MemoryStore, (Arc::clone(&journal), None)).await?;
        let persistence = PersistenceHandle::new(journal);
        persistence.set_actor(Some(store.clone()));
        let deps = Arc::new(RunDeps {
            persistence,
            owner: "bench-engine".into(),
            lease: Duration::from_millis(config.executor.lease_ms),
            registry: Arc::new(LiveRegistry::new(config, AgentRegistry::new(config, &[]))),
            step_limit: Arc::new(Semaphore::new(config.executor.max_parallel_steps)),
            tap: None,
            plans: Default::default(),
        });
        let (supervisor, _) = Actor::spawn(None, RunSupervisor, deps).await?;
        Ok(Engine { supervisor, store, started })
    }

    fn submit(&self, run_id: String, plan: &Arc<Value>, value: usize) -> anyhow::Result<oneshot::Receiver<RunOutcome>> {
        let mut input = Map::new();
        input.insert("value".into(), value.into());
        let request = RunRequest {
            run_id,
            plan: PlanSource::Inline(Arc::clone(plan)),
            definition_id: None,
            input: Arc::new(Value::Object(input)),
            triggered_by: None,
        };
        let (tx, rx) = oneshot::channel();
        self.supervisor
            .cast(SupervisorMsg::StartRun { request, on_done: Some(tx) })
            .map_err(|_| anyhow::anyhow!("the run supervisor stopped"))?;
        Ok(rx)
    }

    fn stop(self) {
        self.supervisor.kill();
        self.store.kill();
    }
}

/// What the engine mode measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineFigures {
    pub runs: usize,
    pub calls: usize,
    pub wall_s: f64,
    pub calls_per_s: f64,
    pub runs_per_s: f64,
    /// Wall time per agent call with `in_flight` runs at once (both cores busy).
    pub us_per_step_wall: f64,
    /// CPU per agent call: the runtime's cost, whatever the parallelism.
    pub cpu_us_per_step: f64,
    pub in_flight: usize,
}

/// `runs` runs of `shape` with at most `in_flight` at once.
pub async fn throughput(shape: Shape, runs: usize, in_flight: usize) -> anyhow::Result<EngineFigures> {
    let mut config = Config::defaults();
    config.executor.max_parallel_steps = in_flight.max(1) * shape.calls();
    let engine = Engine::start(&config).await?;
    let plan = Arc::new(shape.plan());
    let prefix = uuid::Uuid::now_v7();
    let (cpu_before, started) = (procstat::cpu_seconds(&[std::process::id()]), Instant::now());
    let mut pending = std::collections::VecDeque::with_capacity(in_flight);
    for i in 0..runs {
        if pending.len() >= in_flight {
            check(pending.pop_front().expect("non-empty").await)?;
        }
        pending.push_back(engine.submit(format!("{prefix}-{i}"), &plan, i)?);
    }
    for outcome in pending {
        check(outcome.await)?;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = procstat::cpu_seconds(&[std::process::id()]) - cpu_before;
    engine.stop();
    let calls = runs * shape.calls();
    Ok(EngineFigures {
        runs,
        calls,
        wall_s: super::workload::round3(wall),
        calls_per_s: (calls as f64 / wall).round(),
        runs_per_s: (runs as f64 / wall).round(),
        us_per_step_wall: super::workload::round3(wall * 1e6 / calls as f64),
        cpu_us_per_step: super::workload::round3(cpu * 1e6 / calls as f64),
        in_flight,
    })
}

fn check(outcome: Result<RunOutcome, oneshot::error::RecvError>) -> anyhow::Result<()> {
    let outcome = outcome.context("the run supervisor dropped a run")?;
    if outcome.status != RunStatus::Completed {
        bail!("run {} ended {:?}: {:?}", outcome.run_id, outcome.status, outcome.error);
    }
    Ok(())
}

/// What the memory mode measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemoryFigures {
    pub runs_in_flight: usize,
    pub rss_before_mb: f64,
    pub rss_in_flight_mb: f64,
    pub rss_peak_mb: f64,
    pub bytes_per_run: u64,
    /// How long it took to have them all in flight.
    pub ramp_s: f64,
}

/// Starts `runs` runs of one long `sleep` step, waits until every one's call is in flight, and
/// reads this process's resident memory.
pub async fn memory(runs: usize) -> anyhow::Result<MemoryFigures> {
    let mut config = Config::defaults();
    config.executor.max_parallel_steps = runs;
    let me = std::process::id();
    let rss = |field| procstat::memory_bytes(me, field).unwrap_or(0);
    let engine = Engine::start(&config).await?;
    engine.started.target.store(runs, Ordering::Relaxed);
    // Long enough to outlast the ramp on a slow machine; the runs are killed, not awaited.
    let plan = Arc::new(Shape::Sleep(3_600_000).plan());
    let prefix = uuid::Uuid::now_v7();
    let before = rss("VmRSS");
    let started = Instant::now();
    let mut outcomes = Vec::with_capacity(runs);
    for i in 0..runs {
        outcomes.push(engine.submit(format!("{prefix}-{i}"), &plan, i)?);
    }
    if tokio::time::timeout(Duration::from_secs(600), engine.started.reached.notified()).await.is_err() {
        let started = engine.started.count.load(Ordering::Relaxed);
        bail!("only {started} of {runs} runs were in flight after 600 s");
    }
    let ramp = started.elapsed().as_secs_f64();
    let in_flight = rss("VmRSS");
    let peak = rss("VmHWM");
    engine.stop();
    drop(outcomes);
    let mb = |bytes: u64| super::workload::round3(bytes as f64 / (1024.0 * 1024.0));
    Ok(MemoryFigures {
        runs_in_flight: runs,
        rss_before_mb: mb(before),
        rss_in_flight_mb: mb(in_flight),
        rss_peak_mb: mb(peak),
        bytes_per_run: in_flight.saturating_sub(before) / runs.max(1) as u64,
        ramp_s: super::workload::round3(ramp),
    })
}
