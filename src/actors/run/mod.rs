//! The RunActor: one per run. It walks the plan and spawns a StepActor per agent call attempt.
//!
//! The walk is an explicit tree of executions (`Exec`) in an arena, driven by a work queue, rather
//! than async recursion, so that the actor's mailbox stays responsive (retry timers, branch
//! deadlines, cancellation, StepActor exits) while any number of calls are in flight:
//! - the root is a `Sequence` over the plan's main chain;
//! - a compound step is an `Exec` whose children are the steps it names; loop iterations and
//!   fork-join branches are `Sequence`s of their steps;
//! - an `Agent` exec owns at most one StepActor at a time and counts its attempts.
//!
//! When an exec ends it reports to its parent, which decides what starts next. Every attempt row
//! is committed (the persistence actor acknowledges it) before the StepActor is spawned and after
//! it exits, and the run's terminal row is written only after all of that, so the database never
//! shows a run finished while one of its attempts is RUNNING.
//!
//! Outputs: a completed step's output is visible to later steps by its id, except inside a loop
//! iteration, whose body steps see each other only within that iteration, and inside a parallel
//! block, whose members see only what existed before the block.
//!
//! Files, by concern: `tree` the execs and the work queue; `start` claiming the run and recalling
//! an earlier owner's attempts; `walk` starting steps and taking in their results; `attempt` one
//! agent call attempt and its StepActor; this file the actor itself, its messages and its state.

mod attempt;
mod start;
#[cfg(test)]
mod tests;
mod tree;
mod walk;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use entity::{RunStatus, StepStatus};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::Instrument;
use uuid::Uuid;

use super::events::Event;
use super::persistence::{AttemptEnd, AttemptStart, Deferred, PersistError, PersistenceHandle, RunWrite, WriteOp};
use super::step::StepState;
use crate::agents::{AgentRegistry, LiveRegistry, StepFailure};
use crate::plan::cache::PlanCache;
use crate::plan::expr::{LoopFrame, Scope};
use crate::plan::{Plan, validate};
use crate::wire::PlanSource;
use tree::{Action, Ctx, Exec, ExecKind, IterScope};

/// What the executor shares with every run.
#[derive(Debug)]
pub struct RunDeps {
    pub persistence: PersistenceHandle,
    /// This executor's name in `workflow_runs.owner_id`.
    pub owner: String,
    /// How long a claim on a run holds without renewal.
    pub lease: Duration,
    /// The agents runs may call; each run takes a snapshot when it starts.
    pub registry: Arc<LiveRegistry>,
    /// `executor.max_parallel_steps`.
    pub step_limit: Arc<Semaphore>,
    /// Test and chaos hook: told about every actor a run spawns.
    pub tap: Option<tokio::sync::mpsc::UnboundedSender<Spawned>>,
    /// Plans already validated, shared by the runs of one workflow.
    pub plans: PlanCache<AgentRegistry>,
}

/// An actor a run spawned, for observers that need to reach it (the chaos tests kill them).
#[derive(Debug, Clone)]
pub enum Spawned {
    Run { run_id: String, actor: ActorRef<RunMsg> },
    Step { run_id: String, step_id: String, attempt: u32, actor: ActorCell },
}

/// A run to execute, after decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    pub run_id: String,
    pub plan: PlanSource,
    pub definition_id: Option<Uuid>,
    /// The workflow's input, always a JSON object. Shared: the supervisor's record of the run, the
    /// RunActor's expression scope and every write of the run's row hold this one value.
    pub input: Arc<Value>,
    pub triggered_by: Option<String>,
}

impl RunRequest {
    /// (workflow_id, workflow_name) for the run's row before the plan is loaded: from an inline
    /// plan if it names them, else "unknown" (a stored definition's are filled in once loaded).
    pub fn identity(&self) -> (String, String) {
        let unknown = || "unknown".to_string();
        match &self.plan {
            PlanSource::Inline(document) => {
                let (workflow_id, name) = validate::identity(document);
                (workflow_id.unwrap_or_else(unknown), name.unwrap_or_else(unknown))
            }
            PlanSource::Definition(id) => (id.to_string(), unknown()),
            PlanSource::Unusable(_) => (unknown(), unknown()),
        }
    }
}

/// How a run request ended here.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub run_id: String,
    /// The run's status in the database.
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub disposition: Disposition,
}

/// What this executor did with a run request.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Ran it to the terminal status it committed.
    Executed,
    /// It had ended before: nothing ran (a duplicate request).
    AlreadyTerminal,
    /// Another executor holds a live claim on it until `until`; ask again then.
    HeldElsewhere { owner: String, until: chrono::NaiveDateTime },
    /// Stopped working on it without ending it (its claim was lost, or the executor is stopping);
    /// whoever claims it next resumes it.
    Abandoned,
}

impl RunOutcome {
    /// Whether the request is settled: the run is terminal, whoever ended it.
    pub fn is_settled(&self) -> bool {
        matches!(self.disposition, Disposition::Executed | Disposition::AlreadyTerminal)
    }
}

#[derive(Debug)]
pub enum RunMsg {
    /// Resolve and validate the plan, record the run RUNNING, start the main chain.
    Start,
    /// A retry delay has passed for an agent call.
    Retry(ExecId),
    /// A fork-join branch has run out of time.
    BranchTimeout(ExecId),
    Cancel {
        cancelled_by: Option<String>,
        reason: Option<String>,
        /// When it was asked for; older than the run's last retry, it is stale and ignored.
        requested_at: Option<chrono::NaiveDateTime>,
    },
}

#[derive(Debug)]
pub struct RunArgs {
    pub request: RunRequest,
    pub deps: Arc<RunDeps>,
    /// Set once the terminal row is committed; the run supervisor reads it when this actor exits.
    pub finished: Arc<OnceLock<RunOutcome>>,
}

pub type ExecId = usize;

/// The identity of the run's row, known even when the plan is not valid.
#[derive(Debug, Clone)]
struct RunMeta {
    workflow_id: String,
    workflow_name: String,
}

#[derive(Debug)]
pub struct RunState {
    run_id: String,
    /// Every event this run logs is inside it: `run{run_id}`.
    span: tracing::Span,
    /// When this actor took the run: what its duration metric measures.
    started: std::time::Instant,
    request: RunRequest,
    deps: Arc<RunDeps>,
    finished: Arc<OnceLock<RunOutcome>>,
    meta: RunMeta,
    input: Arc<Value>,
    plan: Option<Arc<Plan>>,
    /// Attempt rows an earlier owner of this run recorded, by id: completed calls are not made
    /// again, calls it left RUNNING are ended and retried.
    history: HashMap<String, entity::step_execution::Model>,
    /// Ends of attempts queued without waiting. Why not wait: the next thing this run does that
    /// anyone outside can see (the next attempt's RUNNING row, before its call; the run's terminal
    /// row) is a write queued after them, and the journal commits in order, so each step costs one
    /// commit instead of two while a call whose completion was committed is still never repeated.
    /// Each is checked once a later write is acknowledged: a rejected end fails the run as an
    /// awaited one would.
    unconfirmed: Vec<Deferred>,
    /// This run was taken over from an executor that lost it.
    taken_over: bool,
    /// The plan's first call as the claim prepared it, until that call starts: its input and
    /// its first attempt's row are not made twice, and that row is not written twice.
    first_call: Option<start::FirstCall>,
    /// The agents this run calls: the registry as it was when the run started.
    registry: Arc<AgentRegistry>,
    /// How often the run was retried through the API: attempts of earlier rounds are not counted
    /// against a call's retry policy.
    retry_round: i32,
    /// When it was last retried: cancellations asked for before then are stale.
    retried_at: Option<chrono::NaiveDateTime>,
    outputs: HashMap<String, Arc<Value>>,
    scopes: Vec<IterScope>,
    execs: Vec<Exec>,
    by_actor: HashMap<ActorId, ExecId>,
    queue: VecDeque<Action>,
    done: bool,
}

#[derive(Debug)]
pub struct RunActor;

impl Actor for RunActor {
    type Msg = RunMsg;
    type State = RunState;
    type Arguments = RunArgs;

    async fn pre_start(&self, myself: ActorRef<RunMsg>, args: RunArgs) -> Result<RunState, ActorProcessingErr> {
        myself.cast(RunMsg::Start)?;
        let (workflow_id, workflow_name) = args.request.identity();
        let registry = args.deps.registry.current();
        let meta = RunMeta { workflow_id, workflow_name };
        let request = args.request;
        let input = Arc::clone(&request.input);
        Ok(RunState {
            span: tracing::info_span!("run", run_id = %request.run_id),
            run_id: request.run_id.clone(),
            started: std::time::Instant::now(),
            input,
            request,
            deps: args.deps,
            finished: args.finished,
            meta,
            plan: None,
            history: HashMap::new(),
            unconfirmed: Vec::new(),
            taken_over: false,
            first_call: None,
            registry,
            retry_round: 0,
            retried_at: None,
            outputs: HashMap::new(),
            scopes: Vec::new(),
            execs: Vec::new(),
            by_actor: HashMap::new(),
            queue: VecDeque::new(),
            done: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RunMsg>,
        message: RunMsg,
        state: &mut RunState,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed, like the handler below, for memory: ractor keeps an actor's message loop in one
        // allocation sized for its largest handler future, and this one (the claim, the plan, the
        // first writes inlined) is kilobytes. A RunActor spends nearly all its life idle between
        // messages, so the box is allocated per message instead of held per run.
        let span = state.span.clone();
        let handled = Box::pin(state.on_message(&myself, message).instrument(span)).await;
        state.unless_fenced(&myself, handled)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RunMsg>,
        event: SupervisionEvent,
        state: &mut RunState,
    ) -> Result<(), ActorProcessingErr> {
        // Every StepActor announces its start; only exits matter here, and the start of each
        // call should not pay for the boxed handler and the span below.
        if matches!(event, SupervisionEvent::ActorStarted(_)) {
            return Ok(());
        }
        let span = state.span.clone();
        let handled = Box::pin(state.on_step_exit(&myself, event).instrument(span)).await;
        state.unless_fenced(&myself, handled)
    }
}

impl RunState {
    /// A write refused because another executor has claimed the run since (see
    /// `persistence::fence`): this copy stops here, writing nothing more, and its StepActors die
    /// with it. Any other error is this actor's failure, which its supervisor records.
    fn unless_fenced(
        &mut self,
        myself: &ActorRef<RunMsg>,
        handled: Result<(), ActorProcessingErr>,
    ) -> Result<(), ActorProcessingErr> {
        let Err(error) = handled else { return Ok(()) };
        let Some(PersistError::Fenced { holder, .. }) = error.downcast_ref::<PersistError>() else { return Err(error) };
        self.span.in_scope(
            || tracing::warn!(%holder, "run taken over by another executor; stopping this copy without writing"),
        );
        self.stop_without_writing(myself, RunStatus::Running, None, None, Disposition::Abandoned)
    }

    async fn on_message(&mut self, myself: &ActorRef<RunMsg>, message: RunMsg) -> Result<(), ActorProcessingErr> {
        if self.done {
            return Ok(());
        }
        match message {
            RunMsg::Start => self.start(myself).await?,
            RunMsg::Retry(id) => {
                if !self.execs[id].finished {
                    self.queue.push_back(Action::Attempt(id));
                }
            }
            RunMsg::BranchTimeout(id) => {
                if !self.execs[id].finished {
                    let ExecKind::Sequence { deadline, .. } = &self.execs[id].kind else { return Ok(()) };
                    let seconds = deadline.map(|d| d.as_secs_f64()).unwrap_or_default();
                    self.cancel_descendants(id, "branch timed out").await?;
                    self.queue.push_back(Action::Finish(id, Err(format!("timed out after {seconds}s"))));
                }
            }
            RunMsg::Cancel { requested_at: Some(asked), .. }
                if self.retried_at.is_some_and(|retried| asked < retried) =>
            {
                tracing::info!(%asked, "a cancellation from before the run's last retry is ignored");
                return Ok(());
            }
            RunMsg::Cancel { cancelled_by, reason, .. } => {
                let reason = reason.unwrap_or_else(|| "no reason given".into());
                if !self.execs.is_empty() {
                    self.cancel_descendants(0, &format!("Cancelled: {reason}")).await?;
                }
                self.queue.clear();
                self.conclude(myself, RunStatus::Cancelled, None, Some(format!("Cancelled: {reason}")), cancelled_by)
                    .await?;
                return Ok(());
            }
        }
        self.drive(myself).await
    }

    /// A StepActor ended: its exit carries the attempt's result (see `step`).
    async fn on_step_exit(
        &mut self,
        myself: &ActorRef<RunMsg>,
        event: SupervisionEvent,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, result) = match event {
            SupervisionEvent::ActorTerminated(cell, Some(mut exit_state), reason) => {
                let result = match exit_state.take::<StepState>() {
                    Ok(StepState { result: Some(result), .. }) => result,
                    // Not expected: a StepActor stops itself only once its result is recorded, and
                    // a kill during the call ends it without state (the arm below). Kept so that
                    // such an exit is still a failed attempt that names its reason.
                    _ => Err(StepFailure::Retryable(match reason {
                        Some(reason) => format!("StepActor was {reason} before it recorded a result"),
                        None => "StepActor stopped without a result".into(),
                    })),
                };
                (cell, result)
            }
            SupervisionEvent::ActorTerminated(cell, None, reason) => {
                let reason = reason.unwrap_or_else(|| "stopped".into());
                (cell, Err(StepFailure::Retryable(format!("StepActor was {reason} during the call"))))
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                (cell, Err(StepFailure::Retryable(format!("StepActor crashed: {error}"))))
            }
            _ => return Ok(()),
        };
        // Exits of StepActors this run already gave up on (cancelled, timed out) are ignored.
        let Some(id) = self.by_actor.remove(&cell.get_id()) else { return Ok(()) };
        if self.done || self.execs[id].finished {
            return Ok(());
        }
        self.attempt_ended(myself, id, result).await?;
        self.drive(myself).await
    }
}

/// The `step_executions.id` of attempt `attempt` of the call of `step_id` at `call_path` (empty
/// for a step of the plan's main chain) in run `run_id`: deterministic, so that whoever resumes
/// a run finds the attempts recorded before.
///
/// Built without `format!`: this runs for every attempt, and the formatting machinery cost more
/// instructions than the rest of the id apart from its SHA-1 (callgrind, engine mode). The key's
/// bytes must stay exactly `{run_id}\n{call_path}/{step_id}\n{attempt}`; a unit test holds ids to
/// values computed outside Rust.
pub fn attempt_row_id(run_id: &str, call_path: &str, step_id: &str, attempt: u32) -> String {
    let mut digits = itoa::Buffer::new();
    let attempt = digits.format(attempt);
    let mut key = Vec::with_capacity(run_id.len() + call_path.len() + step_id.len() + attempt.len() + 3);
    for part in [run_id, "\n", call_path, "/", step_id, "\n", attempt] {
        key.extend_from_slice(part.as_bytes());
    }
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, &key);
    id.hyphenated().encode_lower(&mut Uuid::encode_buffer()).to_owned()
}

/// Expression scope at one exec.
struct View<'a> {
    state: &'a RunState,
    ctx: &'a Ctx,
}

impl Scope for View<'_> {
    fn workflow_input(&self) -> &Value {
        &self.state.input
    }

    fn step_output(&self, step_id: &str) -> Option<&Value> {
        let mut scope = self.ctx.scope;
        while let Some(id) = scope {
            let iteration = &self.state.scopes[id];
            if let Some(output) = iteration.outputs.get(step_id) {
                return Some(output.as_ref());
            }
            scope = iteration.parent;
        }
        if self.ctx.hidden.as_ref().is_some_and(|hidden| hidden.contains(step_id)) {
            return None;
        }
        self.state.outputs.get(step_id).map(Arc::as_ref)
    }

    fn loop_frame(&self) -> Option<&LoopFrame> {
        self.ctx.scope.map(|id| &self.state.scopes[id].frame)
    }
}

impl RunState {
    pub(super) fn plan(&self) -> Arc<Plan> {
        Arc::clone(self.plan.as_ref().expect("the plan is resolved before any step starts"))
    }

    pub(super) fn now() -> chrono::NaiveDateTime {
        Utc::now().naive_utc()
    }

    pub(super) fn run_write(
        &self,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        cancelled_by: Option<String>,
    ) -> WriteOp {
        WriteOp::Run(Box::new(RunWrite {
            run_id: self.run_id.clone(),
            workflow_id: self.meta.workflow_id.clone(),
            workflow_name: self.meta.workflow_name.clone(),
            definition_id: self.request.definition_id,
            input: Arc::clone(&self.input),
            triggered_by: self.request.triggered_by.clone(),
            status,
            output,
            error,
            cancelled_by,
            owner: Some(self.deps.owner.clone()),
            cancel_requested_at: None,
            plan: None,
            at: Self::now(),
        }))
    }

    /// The RUNNING row of attempt `attempt` of a call at `ctx`: what `start_attempt` writes, and
    /// what the claim writes for the plan's first call.
    fn attempt_start(
        &self,
        row_id: String,
        step_id: &str,
        agent_name: &str,
        input: &Arc<Value>,
        ctx: &Ctx,
        attempt: u32,
    ) -> AttemptStart {
        AttemptStart {
            id: row_id,
            run_id: self.run_id.clone(),
            step_id: step_id.to_string(),
            agent_name: agent_name.to_string(),
            input: Arc::clone(input),
            started_at: Self::now(),
            parent_step_id: ctx.parent_step_id.clone(),
            branch_name: ctx.branch_name.clone(),
            join_policy: ctx.join_policy.map(str::to_string),
            loop_iteration_index: ctx.loop_index.map(|i| i as i32),
            attempt: attempt as i32,
            retry_round: self.retry_round,
            owner: self.deps.owner.clone(),
        }
    }

    /// The end of this run's attempt `row_id`, as this executor writes it.
    fn attempt_end(
        &self,
        row_id: String,
        status: StepStatus,
        output: Option<Arc<Value>>,
        error: Option<String>,
    ) -> AttemptEnd {
        AttemptEnd {
            id: row_id,
            run_id: self.run_id.clone(),
            owner: self.deps.owner.clone(),
            status,
            output,
            error,
            at: Self::now(),
        }
    }

    /// Ends this actor for a request it does not execute (the run ended before, or is held).
    pub(super) fn stop_without_writing(
        &mut self,
        myself: &ActorRef<RunMsg>,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        disposition: Disposition,
    ) -> Result<(), ActorProcessingErr> {
        self.done = true;
        let _ = self.finished.set(RunOutcome { run_id: self.run_id.clone(), status, output, error, disposition });
        myself.stop(None);
        Ok(())
    }

    /// The id of attempt `attempt` of the call of `step_id` at `call_path`: deterministic, so a
    /// successor finds the attempts an earlier owner recorded.
    pub(super) fn attempt_row_id(&self, call_path: &str, step_id: &str, attempt: u32) -> String {
        attempt_row_id(&self.run_id, call_path, step_id, attempt)
    }

    pub(super) fn run_event(&self, status: RunStatus, error: Option<String>) -> Event {
        Event::Run { run_id: self.run_id.clone(), workflow_name: self.meta.workflow_name.clone(), status, error }
    }

    pub(super) fn attempt_event(&self, id: ExecId, status: StepStatus, error: Option<String>) -> Event {
        let exec = &self.execs[id];
        let ExecKind::Agent(call) = &exec.kind else { unreachable!("attempt events are about agent calls") };
        Event::Attempt {
            run_id: self.run_id.clone(),
            step_id: exec.step_id.clone(),
            agent_name: call.agent.name().to_string(),
            step_execution_id: call.row_id.clone(),
            attempt: call.attempt,
            status,
            error,
        }
    }
}
