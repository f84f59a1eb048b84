//! The executor: the supervision tree started and wired, with a small API to feed it runs.
//!
//! [`Executor::start`] starts the persistence supervisor (and through it the persistence actor),
//! loads the agent registry through it, then starts the run supervisor. `runvisor run`, the Kafka
//! ingress and the tests all drive runs through this one type.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use sea_orm::DatabaseConnection;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::actors::events::EventSink;
use crate::actors::persistence::{Journal, PersistError, PersistenceHandle};
use crate::actors::run::{RunDeps, RunOutcome, RunRequest, Spawned};
use crate::actors::supervisor::{PersistenceSupervisor, PersistenceSupervisorArgs, RunSupervisor, SupervisorMsg};
use crate::actors::sweeper::Sweeper;
use crate::agents::{AgentRegistry, LiveRegistry};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("cannot start an actor: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error("cannot load the agents table: {0}")]
    Agents(PersistError),
    #[error("the executor has stopped")]
    Stopped,
}

/// Optional wiring for observers.
#[derive(Debug, Default)]
pub struct ExecutorOptions {
    /// Receives every event (monitoring updates are made from them).
    pub events: Option<Arc<dyn EventSink>>,
    /// Receives every RunActor and StepActor spawned (chaos tests kill them).
    pub tap: Option<mpsc::UnboundedSender<Spawned>>,
    /// Sweep for orphaned runs every `executor.sweeper.interval_ms` ([`crate::actors::sweeper`]):
    /// long-lived executors do; `runvisor run`, which executes one run and exits, does not.
    pub sweep: bool,
}

#[derive(Debug)]
pub struct Executor {
    persistence: PersistenceHandle,
    persistence_supervisor: ActorRef<()>,
    runs: ActorRef<SupervisorMsg>,
    registry: Arc<LiveRegistry>,
    /// Re-reads the `agents` table every `executor.agents_refresh_ms`; stopped on shutdown.
    agents_refresh: tokio::task::JoinHandle<()>,
    /// Resumes orphaned runs; asked for by [`ExecutorOptions::sweep`], stopped on shutdown.
    sweeper: Sweeper,
    sweeping: Option<tokio::task::JoinHandle<()>>,
    /// This executor's name in `workflow_runs.owner_id`.
    owner: String,
}

impl Executor {
    /// Starts the supervision tree on an already migrated database.
    pub async fn start(
        config: &Config,
        db: DatabaseConnection,
        options: ExecutorOptions,
    ) -> Result<Executor, ExecutorError> {
        let events = options.events.unwrap_or_else(|| Arc::new(crate::actors::events::NoEvents));
        let persistence = PersistenceHandle::new(Arc::new(Journal::new(events)));
        let (persistence_supervisor, _) = Actor::spawn(
            None,
            PersistenceSupervisor,
            PersistenceSupervisorArgs { db, handle: persistence.clone(), config: config.persistence.clone() },
        )
        .await?;
        let rows = persistence.load_agents().await.map_err(ExecutorError::Agents)?;
        let registry = Arc::new(LiveRegistry::new(config, AgentRegistry::new(config, &rows)));
        let agents_refresh = tokio::spawn(refresh_agents(
            persistence.clone(),
            Arc::clone(&registry),
            Duration::from_millis(config.executor.agents_refresh_ms),
        ));
        let owner = config.owner_id();
        let deps = Arc::new(RunDeps {
            persistence: persistence.clone(),
            owner: owner.clone(),
            lease: Duration::from_millis(config.executor.lease_ms),
            registry: Arc::clone(&registry),
            step_limit: Arc::new(Semaphore::new(config.executor.max_parallel_steps)),
            tap: options.tap,
            plans: Default::default(),
        });
        let (runs, _) = Actor::spawn(None, RunSupervisor, deps).await?;
        let sweeper = Sweeper {
            persistence: persistence.clone(),
            runs: runs.clone(),
            lease: Duration::from_millis(config.executor.lease_ms),
            config: config.executor.sweeper,
            max_runs: config.executor.max_concurrent_runs,
        };
        let sweeping =
            (options.sweep && config.executor.sweeper.interval_ms > 0).then(|| tokio::spawn(sweeper.clone().run()));
        Ok(Executor { persistence, persistence_supervisor, runs, registry, agents_refresh, sweeper, sweeping, owner })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn registry(&self) -> &Arc<LiveRegistry> {
        &self.registry
    }

    pub fn persistence(&self) -> &PersistenceHandle {
        &self.persistence
    }

    pub fn persistence_supervisor(&self) -> &ActorRef<()> {
        &self.persistence_supervisor
    }

    /// Starts a run; the receiver yields its outcome once committed.
    pub fn submit(&self, request: RunRequest) -> Result<oneshot::Receiver<RunOutcome>, ExecutorError> {
        let (tx, rx) = oneshot::channel();
        self.runs.cast(SupervisorMsg::StartRun { request, on_done: Some(tx) }).map_err(|_| ExecutorError::Stopped)?;
        Ok(rx)
    }

    /// Runs one request to its end.
    pub async fn run(&self, request: RunRequest) -> Result<RunOutcome, ExecutorError> {
        self.submit(request)?.await.map_err(|_| ExecutorError::Stopped)
    }

    /// Cancels a run, here or wherever it runs, and waits until the cancellation is recorded.
    pub async fn cancel_and_wait(&self, cancel: crate::wire::CancellationRequest) -> Result<(), ExecutorError> {
        let (done, recorded) = oneshot::channel();
        let requested_at = cancel.requested_at();
        let message = SupervisorMsg::Cancel {
            run_id: cancel.run_id,
            cancelled_by: cancel.cancelled_by,
            reason: cancel.reason,
            requested_at,
            done: Some(done),
        };
        self.runs.cast(message).map_err(|_| ExecutorError::Stopped)?;
        recorded.await.map_err(|_| ExecutorError::Stopped)
    }

    /// Looks for orphaned runs once, now, and hands them to the run supervisor (what the sweeper
    /// does every interval); answers how many it handed over.
    pub async fn sweep_now(&self) -> usize {
        self.sweeper.sweep_once().await
    }

    pub async fn active_runs(&self) -> Result<usize, ExecutorError> {
        ractor::call!(self.runs, SupervisorMsg::ActiveRuns).map_err(|_| ExecutorError::Stopped)
    }

    /// Stops the tree after every queued write has committed (or `grace` has passed), then
    /// releases this executor's leases on whatever did not finish, so that the next owner of those
    /// runs takes them at once instead of waiting `executor.lease_ms` (CONTRACT.md §7.5).
    ///
    /// Takes `&self` because the executor is shared (the ingress, the API in `dev` mode): stopping
    /// must not depend on being the last holder. Calling it again does nothing harmful.
    pub async fn shutdown(&self, grace: Duration) {
        self.agents_refresh.abort();
        if let Some(sweeping) = &self.sweeping {
            sweeping.abort();
        }
        let _ = self.runs.stop_and_wait(None, Some(grace)).await;
        if tokio::time::timeout(grace, self.persistence.flush()).await.is_err() {
            tracing::warn!(
                pending = self.persistence.journal().len(),
                "shutdown: writes still queued after the grace period"
            );
        }
        // Every RunActor is gone, so nothing of ours renews or writes these runs any more: the
        // claim of the next executor may take them now.
        match tokio::time::timeout(grace, self.persistence.release_leases(&self.owner)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(released)) => tracing::info!(released, "released the leases of unfinished runs"),
            Ok(Err(error)) => tracing::warn!(%error, "could not release leases; they expire on their own"),
            Err(_) => tracing::warn!("releasing leases took longer than the grace period; they expire on their own"),
        }
        let _ = self.persistence_supervisor.stop_and_wait(None, Some(grace)).await;
    }
}

/// Keeps the registry in step with the `agents` table.
async fn refresh_agents(persistence: PersistenceHandle, registry: Arc<LiveRegistry>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match persistence.load_agents().await {
            Ok(rows) => registry.refresh(&rows),
            Err(error) => tracing::warn!(%error, "cannot re-read the agents table; keeping the registry"),
        }
    }
}
