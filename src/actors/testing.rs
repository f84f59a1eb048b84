//! The actors' unit-test harness: one plan through a real RunActor against
//! [`MemoryStore`], which records every write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use entity::{RunStatus, StepStatus};
use ractor::{Actor, ActorRef};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::events::{ChannelSink, Event};
use super::memory::MemoryStore;
use super::persistence::{AttemptEnd, AttemptStart, Journal, PersistenceHandle, WriteOp};
use super::run::{RunDeps, RunOutcome, RunRequest, Spawned};
use super::supervisor::{RunSupervisor, SupervisorMsg};
use crate::agents::AgentRegistry;
use crate::config::{Config, RetryPolicy};
use crate::wire::PlanSource;

/// One attempt row, as the writes left it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub start: AttemptStart,
    pub end: Option<AttemptEnd>,
}

impl AttemptRow {
    pub fn status(&self) -> StepStatus {
        self.end.as_ref().map_or(StepStatus::Running, |e| e.status)
    }
}

/// A run executed against [`MemoryStore`], with everything it wrote and emitted.
#[derive(Debug)]
pub struct Recorded {
    pub outcome: RunOutcome,
    pub writes: Vec<WriteOp>,
    pub events: Vec<Event>,
}

impl Recorded {
    /// Attempt rows in the order they started.
    pub fn attempts(&self) -> Vec<AttemptRow> {
        let mut rows: Vec<AttemptRow> = Vec::new();
        let mut index = HashMap::new();
        for write in &self.writes {
            let start = match write {
                WriteOp::AttemptStarted(start) => Some(&**start),
                WriteOp::ClaimNew(claim) => claim.first_attempt.as_ref(),
                _ => None,
            };
            if let Some(start) = start {
                index.insert(start.id.clone(), rows.len());
                rows.push(AttemptRow { start: start.clone(), end: None });
            }
            if let WriteOp::AttemptEnded(end) = write {
                let row = &mut rows[index[&end.id]];
                assert!(row.end.is_none(), "attempt {} ended twice", end.id);
                row.end = Some((**end).clone());
            }
        }
        rows
    }

    /// (step_id, attempt, status) of every attempt, in start order.
    pub fn summary(&self) -> Vec<(String, i32, StepStatus)> {
        self.attempts().into_iter().map(|r| (r.start.step_id.clone(), r.start.attempt, r.status())).collect()
    }

    pub fn run_statuses(&self) -> Vec<RunStatus> {
        self.writes
            .iter()
            .filter_map(|w| match w {
                WriteOp::Run(run) => Some(run.status),
                _ => None,
            })
            .collect()
    }
}

/// A config whose retries are fast enough for unit tests.
pub fn fast_config() -> Config {
    let mut config = Config::defaults();
    config.executor.retry =
        RetryPolicy { max_retries: 3, initial_delay_ms: 1, max_delay_ms: 5, backoff_multiplier: 2.0 };
    config
}

/// A run supervisor over [`MemoryStore`], for running plans in unit tests.
pub struct Harness {
    pub supervisor: ActorRef<SupervisorMsg>,
    pub log: Arc<Mutex<Vec<WriteOp>>>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub spawned: mpsc::UnboundedReceiver<Spawned>,
}

impl Harness {
    pub async fn start(config: &Config) -> Harness {
        let (events_tx, events) = mpsc::unbounded_channel();
        let journal = Arc::new(Journal::new(Arc::new(ChannelSink(events_tx))));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (store, _) = Actor::spawn(None, MemoryStore, (Arc::clone(&journal), Some(Arc::clone(&log)))).await.unwrap();
        let persistence = PersistenceHandle::new(journal);
        persistence.set_actor(Some(store));
        let (tap, spawned) = mpsc::unbounded_channel();
        let deps = Arc::new(RunDeps {
            persistence,
            owner: "test-executor".into(),
            lease: std::time::Duration::from_secs(15),
            registry: Arc::new(crate::agents::LiveRegistry::new(config, AgentRegistry::new(config, &[]))),
            step_limit: Arc::new(Semaphore::new(config.executor.max_parallel_steps)),
            tap: Some(tap),
            plans: Default::default(),
        });
        let (supervisor, _) = Actor::spawn(None, RunSupervisor, deps).await.unwrap();
        Harness { supervisor, log, events, spawned }
    }

    pub fn submit(&self, run_id: &str, plan: Value, input: Value) -> oneshot::Receiver<RunOutcome> {
        assert!(input.is_object(), "input must be an object");
        let request = RunRequest {
            run_id: run_id.into(),
            plan: PlanSource::Inline(plan.into()),
            definition_id: None,
            input: input.into(),
            triggered_by: None,
        };
        let (tx, rx) = oneshot::channel();
        self.supervisor.cast(SupervisorMsg::StartRun { request, on_done: Some(tx) }).unwrap();
        rx
    }

    /// Runs one plan to its end and returns what it wrote and emitted.
    pub async fn run(&mut self, plan: Value, input: Value) -> Recorded {
        let outcome = self.submit("run-1", plan, input).await.expect("the run supervisor answers");
        let writes = std::mem::take(&mut *self.log.lock().unwrap());
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            events.push(event);
        }
        Recorded { outcome, writes, events }
    }
}

/// Runs `plan` with `input` on a fresh harness with [`fast_config`].
pub async fn run_plan(plan: Value, input: Value) -> Recorded {
    Harness::start(&fast_config()).await.run(plan, input).await
}

/// A plan document from its steps, starting at `start`.
pub fn plan(start: &str, steps: Value) -> Value {
    let Value::Object(steps) = steps else { panic!("steps must be an object") };
    let steps: Map<String, Value> = steps
        .into_iter()
        .map(|(id, mut step)| {
            step["id"] = Value::String(id.clone());
            (id, step)
        })
        .collect();
    serde_json::json!({"name": "test-plan", "start_step": start, "steps": steps})
}
