//! The supervisors: what happens when an actor below them stops or crashes.
//!
//! - [`RunSupervisor`] owns one RunActor per run. A RunActor that stops after committing its
//!   terminal row is done; one that panics or is killed before that has its run ended FAILED here,
//!   with its RUNNING attempts, and with a message saying so (CONTRACT.md §7.3).
//! - [`PersistenceSupervisor`] owns the persistence actor and restarts it whenever it stops
//!   unexpectedly. The journal of writes lives outside the actor, so the new one carries on where
//!   the old one stopped.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use entity::{RunStatus, StepStatus};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;

use super::events::Event;
use super::persistence::LeaseState;
use super::persistence::{PersistenceActor, PersistenceArgs, PersistenceHandle, RunWrite, WriteOp};
use super::run::{Disposition, RunActor, RunArgs, RunDeps, RunMsg, RunOutcome, RunRequest, Spawned};
use crate::config::PersistenceConfig;
use crate::observability::metrics as names;

#[derive(Debug)]
pub enum SupervisorMsg {
    /// Execute a run; `on_done` hears its outcome once it is committed. A run_id already executing
    /// here is not started twice: the caller just waits for the running one.
    StartRun { request: RunRequest, on_done: Option<oneshot::Sender<RunOutcome>> },
    /// Cancel a run; `done` hears once the cancellation is recorded (or handed to its RunActor).
    Cancel {
        run_id: String,
        cancelled_by: Option<String>,
        reason: Option<String>,
        /// When the producer asked: a cancellation older than the run's last retry is stale.
        requested_at: Option<chrono::NaiveDateTime>,
        done: Option<oneshot::Sender<()>>,
    },
    /// How many runs are in flight.
    ActiveRuns(RpcReplyPort<usize>),
    /// Time to renew this executor's leases.
    RenewLeases,
    /// What the renewal found about the runs in flight here.
    LeaseReport(Vec<LeaseState>),
}

#[derive(Debug)]
struct ActiveRun {
    actor: ActorRef<RunMsg>,
    request: RunRequest,
    finished: Arc<OnceLock<RunOutcome>>,
    waiting: Vec<oneshot::Sender<RunOutcome>>,
    /// Another executor took the run over (or ended it): this one stopped it without writing.
    abandoned: Option<RunStatus>,
}

#[derive(Debug)]
pub struct RunSupervisor;

#[derive(Debug)]
pub struct RunSupervisorState {
    deps: Arc<RunDeps>,
    runs: HashMap<String, ActiveRun>,
    by_actor: HashMap<ActorId, String>,
    /// A lease renewal is in flight; renewals do not pile up behind a slow database.
    renewing: bool,
}

impl Actor for RunSupervisor {
    type Msg = SupervisorMsg;
    type State = RunSupervisorState;
    type Arguments = Arc<RunDeps>;

    async fn pre_start(
        &self,
        _: ActorRef<SupervisorMsg>,
        deps: Arc<RunDeps>,
    ) -> Result<RunSupervisorState, ActorProcessingErr> {
        Ok(RunSupervisorState { deps, runs: HashMap::new(), by_actor: HashMap::new(), renewing: false })
    }

    async fn post_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        state: &mut RunSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        myself.send_interval(state.deps.lease / 3, || SupervisorMsg::RenewLeases);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut RunSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::StartRun { request, on_done } => {
                if let Some(active) = state.runs.get_mut(&request.run_id) {
                    tracing::debug!(run_id = %request.run_id, "run already executing here; not started twice");
                    active.waiting.extend(on_done);
                    return Ok(());
                }
                let finished = Arc::new(OnceLock::new());
                let args = RunArgs {
                    request: request.clone(),
                    deps: Arc::clone(&state.deps),
                    finished: Arc::clone(&finished),
                };
                let (actor, _) = Actor::spawn_linked(None, RunActor, args, myself.get_cell()).await?;
                if let Some(tap) = &state.deps.tap {
                    let _ = tap.send(Spawned::Run { run_id: request.run_id.clone(), actor: actor.clone() });
                }
                state.by_actor.insert(actor.get_id(), request.run_id.clone());
                let run_id = request.run_id.clone();
                let active =
                    ActiveRun { actor, request, finished, waiting: on_done.into_iter().collect(), abandoned: None };
                state.runs.insert(run_id, active);
                metrics::gauge!(names::RUNS_IN_FLIGHT).set(state.runs.len() as f64);
            }
            SupervisorMsg::Cancel { run_id, cancelled_by, reason, requested_at, done } => match state.runs.get(&run_id)
            {
                Some(active) => {
                    let _ = active.actor.cast(RunMsg::Cancel { cancelled_by, reason, requested_at });
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                // Not running here: record the cancellation. Whoever runs it sees it at its next
                // lease renewal; a request that arrives later finds the run terminal.
                None => {
                    let persistence = state.deps.persistence.clone();
                    tokio::spawn(async move {
                        if cancel_elsewhere(&persistence, run_id, cancelled_by, reason, requested_at).await.is_ok()
                            && let Some(done) = done
                        {
                            let _ = done.send(());
                        }
                    });
                }
            },
            SupervisorMsg::ActiveRuns(port) => {
                let _ = port.send(state.runs.len());
            }
            SupervisorMsg::RenewLeases => {
                if state.renewing {
                    return Ok(());
                }
                state.renewing = true;
                let persistence = state.deps.persistence.clone();
                let owner = state.deps.owner.clone();
                let lease = chrono::Duration::from_std(state.deps.lease).unwrap_or(chrono::Duration::seconds(15));
                let runs: Vec<String> = state.runs.keys().cloned().collect();
                tokio::spawn(async move {
                    let until = chrono::Utc::now().naive_utc() + lease;
                    let report = match persistence.renew_leases(&owner, until, runs).await {
                        Ok(states) => states,
                        Err(error) => {
                            tracing::warn!(%error, "could not renew run leases; will try again");
                            Vec::new()
                        }
                    };
                    let _ = myself.cast(SupervisorMsg::LeaseReport(report));
                });
            }
            SupervisorMsg::LeaseReport(states) => {
                state.renewing = false;
                for lease in states {
                    let Some(active) = state.runs.get_mut(&lease.run_id) else { continue };
                    if active.abandoned.is_some() || active.finished.get().is_some() {
                        continue;
                    }
                    let ours = lease.owner.as_deref().is_none_or(|o| o == state.deps.owner);
                    if lease.status == RunStatus::Cancelled {
                        let reason = Some("cancelled elsewhere".to_string());
                        let _ = active.actor.cast(RunMsg::Cancel { cancelled_by: None, reason, requested_at: None });
                    } else if !ours || lease.status.is_terminal() {
                        tracing::warn!(run_id = %lease.run_id, owner = ?lease.owner, status = %lease.status,
                            "run taken over by another executor; stopping it here");
                        active.abandoned = Some(lease.status);
                        active.actor.kill();
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut RunSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, crash) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.map(|r| format!("RunActor was {r}"))),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(format!("RunActor crashed: {error}"))),
            _ => return Ok(()),
        };
        let Some(run_id) = state.by_actor.remove(&cell.get_id()) else { return Ok(()) };
        let Some(run) = state.runs.remove(&run_id) else { return Ok(()) };
        metrics::gauge!(names::RUNS_IN_FLIGHT).set(state.runs.len() as f64);
        if let Some(outcome) = run.finished.get() {
            for waiter in run.waiting {
                let _ = waiter.send(outcome.clone());
            }
            return Ok(());
        }
        if let Some(status) = run.abandoned {
            let outcome = RunOutcome { run_id, status, output: None, error: None, disposition: Disposition::Abandoned };
            for waiter in run.waiting {
                let _ = waiter.send(outcome.clone());
            }
            return Ok(());
        }
        // The RunActor ended before committing a terminal status: the run fails here, after its
        // RUNNING attempts, so the database never shows a run ended with attempts still running.
        let message = crash.unwrap_or_else(|| "RunActor stopped before the run ended".into());
        tracing::error!(%run_id, %message, "run failed because its actor did not finish it");
        metrics::counter!(names::RUNS_FINISHED, "status" => RunStatus::Failed.as_str()).increment(1);
        let persistence = state.deps.persistence.clone();
        let now = chrono::Utc::now().naive_utc();
        let (workflow_id, workflow_name) = run.request.identity();
        let abandon = WriteOp::AbandonAttempts {
            run_id: run_id.clone(),
            owner: state.deps.owner.clone(),
            status: StepStatus::Failed,
            message: message.clone(),
            at: now,
        };
        let fail = WriteOp::Run(Box::new(RunWrite {
            run_id: run_id.clone(),
            workflow_id,
            workflow_name: workflow_name.clone(),
            definition_id: run.request.definition_id,
            input: Arc::clone(&run.request.input),
            triggered_by: run.request.triggered_by.clone(),
            status: RunStatus::Failed,
            output: None,
            error: Some(message.clone()),
            cancelled_by: None,
            owner: Some(state.deps.owner.clone()),
            cancel_requested_at: None,
            plan: None,
            at: now,
        }));
        // Not awaited here: the supervisor keeps serving other runs while the writes commit.
        persistence.write_later(abandon, None);
        let event = Event::Run {
            run_id: run_id.clone(),
            workflow_name,
            status: RunStatus::Failed,
            error: Some(message.clone()),
        };
        tokio::spawn(async move {
            match persistence.write_and_report(fail, event).await {
                Ok(()) => {}
                // Its new owner carries it on: nothing to record here.
                Err(error @ super::persistence::PersistError::Fenced { .. }) => tracing::warn!(%run_id, %error),
                Err(error) => tracing::error!(%run_id, %error, "could not record the failure of a crashed run"),
            }
            let outcome = RunOutcome {
                run_id,
                status: RunStatus::Failed,
                output: None,
                error: Some(message),
                disposition: Disposition::Executed,
            };
            for waiter in run.waiting {
                let _ = waiter.send(outcome.clone());
            }
        });
        Ok(())
    }
}

/// Records the cancellation of a run this executor is not running: inserted CANCELLED if it has no
/// row yet (the cancel arrived first), advanced to CANCELLED if it is not terminal, whoever owns it.
async fn cancel_elsewhere(
    persistence: &PersistenceHandle,
    run_id: String,
    cancelled_by: Option<String>,
    reason: Option<String>,
    requested_at: Option<chrono::NaiveDateTime>,
) -> Result<(), super::persistence::PersistError> {
    let error = format!("Cancelled: {}", reason.unwrap_or_else(|| "no reason given".into()));
    let write = WriteOp::Run(Box::new(RunWrite {
        run_id: run_id.clone(),
        workflow_id: "unknown".into(),
        workflow_name: "unknown".into(),
        definition_id: None,
        input: Arc::new(serde_json::json!({})),
        triggered_by: None,
        status: RunStatus::Cancelled,
        output: None,
        error: Some(error.clone()),
        cancelled_by,
        owner: None,
        cancel_requested_at: requested_at,
        plan: None,
        at: chrono::Utc::now().naive_utc(),
    }));
    let event = Event::Run { run_id, workflow_name: String::new(), status: RunStatus::Cancelled, error: Some(error) };
    persistence.write_and_report(write, event).await
}

#[derive(Debug)]
pub struct PersistenceSupervisor;

#[derive(Debug)]
pub struct PersistenceSupervisorArgs {
    pub db: DatabaseConnection,
    pub handle: PersistenceHandle,
    pub config: PersistenceConfig,
}

#[derive(Debug)]
pub struct PersistenceSupervisorState {
    args: PersistenceSupervisorArgs,
    restarts: u64,
}

impl PersistenceSupervisor {
    async fn spawn_writer(myself: &ActorRef<()>, state: &PersistenceSupervisorState) -> Result<(), ActorProcessingErr> {
        let args = PersistenceArgs {
            db: state.args.db.clone(),
            journal: Arc::clone(state.args.handle.journal()),
            config: state.args.config.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, PersistenceActor, args, myself.get_cell()).await?;
        state.args.handle.set_actor(Some(actor));
        Ok(())
    }
}

impl Actor for PersistenceSupervisor {
    type Msg = ();
    type State = PersistenceSupervisorState;
    type Arguments = PersistenceSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: PersistenceSupervisorArgs,
    ) -> Result<PersistenceSupervisorState, ActorProcessingErr> {
        let state = PersistenceSupervisorState { args, restarts: 0 };
        Self::spawn_writer(&myself, &state).await?;
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut PersistenceSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let why = match event {
            SupervisionEvent::ActorTerminated(_, _, reason) => reason.unwrap_or_else(|| "stopped".into()),
            SupervisionEvent::ActorFailed(_, error) => format!("crashed: {error}"),
            _ => return Ok(()),
        };
        state.restarts += 1;
        state.args.handle.set_actor(None);
        tracing::warn!(reason = %why, restarts = state.restarts, pending = state.args.handle.journal().len(), "persistence actor stopped; restarting it");
        Self::spawn_writer(&myself, state).await
    }

    async fn post_stop(
        &self,
        _: ActorRef<()>,
        state: &mut PersistenceSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.handle.set_actor(None);
        Ok(())
    }
}
