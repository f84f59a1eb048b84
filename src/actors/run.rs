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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backon::ExponentialBackoff;
use chrono::Utc;
use entity::{RunStatus, StepStatus};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tracing::Instrument;
use uuid::Uuid;

use super::events::Event;
use super::persistence::{
    AttemptEnd, AttemptStart, Claim, ClaimOutcome, Deferred, PersistError, PersistenceHandle, RunWrite, WriteOp,
    settled,
};
use super::step::{StepActor, StepArgs, StepState};
use crate::agents::{AgentHandle, AgentRegistry, CallContext, LiveRegistry, StepFailure};
use crate::observability::metrics as names;
use crate::plan::cache::PlanCache;
use crate::plan::expr::{LoopFrame, Scope};
use crate::plan::model::{JoinPolicy, LoopMode, OnError};
use crate::plan::{AgentCatalog, Plan, StepKind, condition, mapping, validate};
use crate::wire::PlanSource;

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
type ScopeId = usize;

/// The failure of a step, already worded as the contract's run error:
/// `Step '<id>' (agent: <agent_name or type>) failed: <reason>`.
type StepResult = Result<Value, String>;

fn step_failed(step_id: &str, label: &str, reason: impl std::fmt::Display) -> String {
    format!("Step '{step_id}' (agent: {label}) failed: {reason}")
}

/// Where an exec runs: its scope and what its attempt rows record.
#[derive(Debug, Clone, Default)]
struct Ctx {
    /// The loop iteration whose outputs and loop variables are visible.
    scope: Option<ScopeId>,
    parent_step_id: Option<String>,
    branch_name: Option<String>,
    join_policy: Option<&'static str>,
    loop_index: Option<usize>,
    /// The loop iterations and branches on the way down, to tell calls of one step apart.
    call_path: String,
    /// Members of enclosing parallel blocks: invisible to each other.
    hidden: Option<Arc<HashSet<String>>>,
}

#[derive(Debug)]
struct Exec {
    parent: Option<ExecId>,
    /// The plan step; for a `Sequence`, the step that owns it (or empty for the main chain).
    step_id: String,
    ctx: Ctx,
    kind: ExecKind,
    finished: bool,
}

#[derive(Debug)]
enum ExecKind {
    Sequence {
        steps: Vec<String>,
        next: usize,
        last: Value,
        deadline: Option<Duration>,
    },
    Agent(AgentCall),
    Parallel {
        waiting: VecDeque<String>,
        running: usize,
        outputs: Map<String, Value>,
        /// Failed members with their errors, in the order they failed.
        failed: Vec<(String, String)>,
        remaining: usize,
    },
    Conditional {
        result: bool,
        branch: Option<String>,
    },
    Loop(LoopRun),
    ForkJoin(ForkJoinRun),
    /// A step that failed before it could run (a bad reference, a condition that cannot be
    /// evaluated).
    FailedEarly,
}

#[derive(Debug)]
struct AgentCall {
    agent: AgentHandle,
    /// Shared with the StepActor of the attempt in flight, which holds it for the whole call.
    input: Arc<Value>,
    /// Attempts made so far, counting those of earlier owners and earlier retries of the run:
    /// attempt rows are numbered by it.
    attempt: u32,
    /// Attempts made before the run was last retried: they do not count against the policy, so a
    /// retried run gives a call that had failed its attempts anew.
    before_retry: u32,
    delays: ExponentialBackoff,
    /// The row of the attempt in flight.
    row_id: String,
    /// When the attempt in flight started, for its duration metric.
    started: Option<std::time::Instant>,
    actor: Option<ActorCell>,
}

#[derive(Debug)]
struct LoopRun {
    items: Vec<Value>,
    body: Vec<String>,
    next: usize,
    running: usize,
    limit: usize,
    on_error: OnError,
    results: Vec<Value>,
    errors: Vec<(usize, String)>,
    halted: bool,
    /// Iteration sequence → its index.
    iterations: HashMap<ExecId, usize>,
}

#[derive(Debug)]
struct ForkJoinRun {
    policy: JoinPolicy,
    branches: usize,
    outcomes: BTreeMap<String, StepResult>,
}

#[derive(Debug)]
struct IterScope {
    parent: Option<ScopeId>,
    frame: LoopFrame,
    outputs: HashMap<String, Value>,
}

/// Why `Start` is boxed: every run keeps a queue of actions for as long as it lives, sized for
/// the largest; a boxed start keeps each slot at a finished step's size.
#[derive(Debug)]
enum Action {
    Start(Box<StartStep>),
    Attempt(ExecId),
    Finish(ExecId, StepResult),
}

#[derive(Debug)]
struct StartStep {
    parent: ExecId,
    step_id: String,
    ctx: Ctx,
}

impl Action {
    fn start(parent: ExecId, step_id: String, ctx: Ctx) -> Action {
        Action::Start(Box::new(StartStep { parent, step_id, ctx }))
    }
}

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
    /// The agents this run calls: the registry as it was when the run started.
    registry: Arc<AgentRegistry>,
    /// How often the run was retried through the API: attempts of earlier rounds are not counted
    /// against a call's retry policy.
    retry_round: i32,
    /// When it was last retried: cancellations asked for before then are stale.
    retried_at: Option<chrono::NaiveDateTime>,
    outputs: HashMap<String, Value>,
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
                    // A kill while the call was under way (or just after it returned) leaves the
                    // state without a result: say so, as the kill's reason.
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
pub fn attempt_row_id(run_id: &str, call_path: &str, step_id: &str, attempt: u32) -> String {
    let key = format!("{run_id}\n{call_path}/{step_id}\n{attempt}");
    Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes()).to_string()
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
                return Some(output);
            }
            scope = iteration.parent;
        }
        if self.ctx.hidden.as_ref().is_some_and(|hidden| hidden.contains(step_id)) {
            return None;
        }
        self.state.outputs.get(step_id)
    }

    fn loop_frame(&self) -> Option<&LoopFrame> {
        self.ctx.scope.map(|id| &self.state.scopes[id].frame)
    }
}

impl RunState {
    fn plan(&self) -> Arc<Plan> {
        Arc::clone(self.plan.as_ref().expect("the plan is resolved before any step starts"))
    }

    fn now() -> chrono::NaiveDateTime {
        Utc::now().naive_utc()
    }

    fn run_write(
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

    /// The plan document: inline, or the stored definition's (whose identity then names the run).
    async fn load_document(&mut self) -> Result<Arc<Value>, String> {
        match &self.request.plan {
            PlanSource::Inline(document) => Ok(Arc::clone(document)),
            PlanSource::Definition(id) => match self.deps.persistence.load_definition(*id).await {
                Ok(Some(definition)) => {
                    let (workflow_id, name) = validate::identity(&definition.workflow_data);
                    self.meta = RunMeta {
                        workflow_id: workflow_id.unwrap_or_else(|| id.to_string()),
                        workflow_name: name.unwrap_or_else(|| definition.name.clone()),
                    };
                    Ok(Arc::new(definition.workflow_data))
                }
                Ok(None) => Err(format!("workflow_definition_id '{id}' does not exist")),
                Err(e) => Err(format!("cannot load workflow definition '{id}': {e}")),
            },
            PlanSource::Unusable(reason) => Err(reason.clone()),
        }
    }

    async fn start(&mut self, myself: &ActorRef<RunMsg>) -> Result<(), ActorProcessingErr> {
        let document = self.load_document().await;
        let claim = Claim {
            run: RunWrite {
                status: RunStatus::Running,
                plan: match &self.request.plan {
                    PlanSource::Inline(document) => Some(Arc::clone(document)),
                    _ => None,
                },
                ..match self.run_write(RunStatus::Running, None, None, None) {
                    WriteOp::Run(run) => *run,
                    _ => unreachable!("run_write writes a run"),
                }
            },
            owner: self.deps.owner.clone(),
            lease: self.deps.lease,
        };
        match self.deps.persistence.claim(claim).await? {
            ClaimOutcome::Terminal(row) => {
                return self.stop_without_writing(
                    myself,
                    row.status,
                    row.output_data,
                    row.error_message,
                    Disposition::AlreadyTerminal,
                );
            }
            ClaimOutcome::Held { owner, until } => {
                return self.stop_without_writing(
                    myself,
                    RunStatus::Running,
                    None,
                    None,
                    Disposition::HeldElsewhere { owner, until },
                );
            }
            ClaimOutcome::Claimed { history, taken_over, retry_round, retried_at } => {
                self.history = history.into_iter().map(|row| (row.id.clone(), row)).collect();
                self.taken_over = taken_over;
                self.retry_round = retry_round;
                self.retried_at = retried_at;
            }
        }
        if let Ok(document) = &document {
            self.refresh_registry_for(document).await;
        }
        let plan = document.and_then(|document| {
            self.deps.plans.validate(&document, &self.registry).map_err(|invalid| invalid.to_string())
        });
        let plan = match plan {
            Ok(plan) => plan,
            Err(error) => return self.conclude(myself, RunStatus::Failed, None, Some(error), None).await,
        };
        self.meta = RunMeta { workflow_id: plan.workflow_id.clone(), workflow_name: plan.name.clone() };
        self.deps.persistence.report(self.run_event(RunStatus::Running, None));
        metrics::counter!(names::RUNS_STARTED).increment(1);
        let main_chain = plan.main_chain.clone();
        // One exec per step of the main chain and one for the chain itself: exactly what a
        // sequential plan needs, where growing by doubling would leave up to half of it unused
        // for the whole run.
        self.execs.reserve_exact(1 + main_chain.len());
        self.plan = Some(plan);
        let root = self.add_exec(
            None,
            String::new(),
            Ctx::default(),
            ExecKind::Sequence { steps: main_chain, next: 0, last: Value::Null, deadline: None },
        );
        self.advance_sequence(root);
        Ok(())
    }

    /// When the plan names an agent this executor does not know, reads the `agents` table again
    /// (an agent created through the API a moment ago), then takes the newest registry.
    async fn refresh_registry_for(&mut self, document: &Value) {
        let named = document.get("steps").and_then(Value::as_object).into_iter().flat_map(|steps| steps.values());
        let unknown: Vec<&str> = named
            .filter_map(|step| step.get("agent_name").and_then(Value::as_str))
            .filter(|name| !self.registry.knows(name))
            .collect();
        if !unknown.is_empty() && self.deps.registry.may_refresh_for(unknown) {
            match self.deps.persistence.load_agents().await {
                Ok(rows) => self.deps.registry.refresh(&rows),
                Err(error) => tracing::warn!(%error, "cannot read the agents table"),
            }
        }
        self.registry = self.deps.registry.current();
    }

    /// Ends this actor for a request it does not execute (the run ended before, or is held).
    fn stop_without_writing(
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
    fn attempt_row_id(&self, call_path: &str, step_id: &str, attempt: u32) -> String {
        attempt_row_id(&self.run_id, call_path, step_id, attempt)
    }

    /// Before the first attempt of a call in a resumed run: reuses a completed attempt's output,
    /// ends attempts a lost executor left RUNNING, and continues the attempt count. Returns the
    /// output when the call need not be made again.
    async fn recall(&mut self, id: ExecId) -> Result<Option<StepResult>, ActorProcessingErr> {
        let (call_path, step_id) = (self.execs[id].ctx.call_path.clone(), self.execs[id].step_id.clone());
        let mut attempts = 0;
        let mut before_retry = 0;
        let mut last_error = None;
        loop {
            let row_id = self.attempt_row_id(&call_path, &step_id, attempts + 1);
            let Some(row) = self.history.remove(&row_id) else { break };
            attempts += 1;
            if row.retry_round < self.retry_round {
                before_retry += 1;
            }
            match row.status {
                // Reused only for the same call: a retried run may carry an edited plan, and an
                // output recorded for another agent or another input is not this call's.
                StepStatus::Completed if self.same_call(id, &row) => {
                    return Ok(Some(Ok(row.output_data.unwrap_or(Value::Null))));
                }
                StepStatus::Completed => last_error = None,
                StepStatus::Running => {
                    let message = "the executor running this call was lost".to_string();
                    let end = AttemptEnd {
                        id: row_id,
                        run_id: self.run_id.clone(),
                        owner: self.deps.owner.clone(),
                        status: StepStatus::Failed,
                        output: None,
                        error: Some(message.clone()),
                        at: Self::now(),
                    };
                    self.deps.persistence.write(WriteOp::AttemptEnded(Box::new(end))).await?;
                    last_error = Some(message);
                }
                _ => last_error = row.error_message,
            }
        }
        let ExecKind::Agent(call) = &mut self.execs[id].kind else { unreachable!("an agent call") };
        call.attempt = attempts;
        call.before_retry = before_retry;
        let spent = attempts - before_retry;
        let max_attempts = call.agent.retry_policy().max_attempts();
        if spent >= max_attempts {
            let reason = format!("{} (attempt {spent} of {max_attempts})", last_error.unwrap_or_default());
            return Ok(Some(Err(step_failed(&step_id, call.agent.name(), reason))));
        }
        for _ in 0..spent {
            call.delays.next();
        }
        Ok(None)
    }

    /// Whether a recorded attempt made the call `id` is about to make: same agent, same input.
    fn same_call(&self, id: ExecId, row: &entity::step_execution::Model) -> bool {
        let ExecKind::Agent(call) = &self.execs[id].kind else { return false };
        row.agent_name == call.agent.name() && row.input_data == *call.input
    }

    fn add_exec(&mut self, parent: Option<ExecId>, step_id: String, ctx: Ctx, kind: ExecKind) -> ExecId {
        self.execs.push(Exec { parent, step_id, ctx, kind, finished: false });
        self.execs.len() - 1
    }

    /// Starts the next step of a sequence, or finishes it with the last step's output.
    fn advance_sequence(&mut self, id: ExecId) {
        let exec = &mut self.execs[id];
        let ExecKind::Sequence { steps, next, last, .. } = &mut exec.kind else { unreachable!("a sequence") };
        match steps.get(*next) {
            Some(step_id) => {
                *next += 1;
                let action = Action::start(id, step_id.clone(), exec.ctx.clone());
                self.queue.push_back(action);
            }
            None => {
                let output = std::mem::take(last);
                self.queue.push_back(Action::Finish(id, Ok(output)));
            }
        }
    }

    /// Works through the queue until every exec is waiting on a StepActor or a timer.
    async fn drive(&mut self, myself: &ActorRef<RunMsg>) -> Result<(), ActorProcessingErr> {
        while let Some(action) = self.queue.pop_front() {
            if self.done {
                break;
            }
            // Work queued for an exec that was cancelled meanwhile (a halted loop, a timed-out
            // branch) is dropped.
            match action {
                Action::Start(start) if self.execs[start.parent].finished => {}
                Action::Start(start) => {
                    let StartStep { parent, step_id, ctx } = *start;
                    self.start_step(myself, parent, step_id, ctx)
                }
                Action::Attempt(id) if self.execs[id].finished => {}
                Action::Attempt(id) => self.start_attempt(myself, id).await?,
                Action::Finish(id, result) => self.finish(myself, id, result).await?,
            }
        }
        Ok(())
    }

    fn start_step(&mut self, myself: &ActorRef<RunMsg>, parent: ExecId, step_id: String, ctx: Ctx) {
        let plan = self.plan();
        let step = plan.step(&step_id);
        let label = step.label().to_string();
        let view = View { state: self, ctx: &ctx };
        match &step.kind {
            StepKind::Agent { agent_name } => {
                let input = step.input_mapping.resolve(&view);
                let agent = self.registry.get(agent_name).cloned();
                let (input, agent) = match (input, agent) {
                    (Ok(input), Some(agent)) => (input, agent),
                    (Err(e), _) => return self.fail_at_start(parent, step_id, ctx, &label, e),
                    (_, None) => {
                        return self.fail_at_start(parent, step_id, ctx, &label, "agent is no longer registered");
                    }
                };
                let delays = agent.retry_policy().backoff();
                let call = AgentCall {
                    agent,
                    input: Arc::new(Value::Object(input)),
                    attempt: 0,
                    before_retry: 0,
                    delays,
                    row_id: String::new(),
                    started: None,
                    actor: None,
                };
                let id = self.add_exec(Some(parent), step_id, ctx, ExecKind::Agent(call));
                self.queue.push_back(Action::Attempt(id));
            }
            StepKind::Parallel { steps, max_parallelism } => {
                let limit = max_parallelism.unwrap_or(steps.len()).max(1);
                let hidden: HashSet<String> =
                    ctx.hidden.iter().flat_map(|h| h.iter().cloned()).chain(steps.iter().cloned()).collect();
                let child_ctx =
                    Ctx { parent_step_id: Some(step_id.clone()), hidden: Some(Arc::new(hidden)), ..ctx.clone() };
                let kind = ExecKind::Parallel {
                    waiting: steps.iter().cloned().collect(),
                    running: 0,
                    outputs: Map::new(),
                    failed: Vec::new(),
                    remaining: steps.len(),
                };
                let id = self.add_exec(Some(parent), step_id, child_ctx, kind);
                for _ in 0..limit {
                    self.start_parallel_member(id);
                }
            }
            StepKind::Conditional { expression, if_true, if_false } => {
                let result = match condition::evaluate(expression, &view) {
                    Ok(result) => result,
                    Err(e) => return self.fail_at_start(parent, step_id, ctx, &label, e),
                };
                let branch = if result { if_true.clone() } else { if_false.clone() };
                let child_ctx = Ctx { parent_step_id: Some(step_id.clone()), ..ctx.clone() };
                let id = self.add_exec(
                    Some(parent),
                    step_id,
                    child_ctx.clone(),
                    ExecKind::Conditional { result, branch: branch.clone() },
                );
                match branch {
                    Some(branch) => self.queue.push_back(Action::start(id, branch, child_ctx)),
                    None => self.queue.push_back(Action::Finish(id, Ok(conditional_output(result, None, Value::Null)))),
                }
            }
            StepKind::Loop(spec) => {
                let mut items = match mapping::resolve_collection(&spec.collection, &view) {
                    Ok(items) => items,
                    Err(e) => return self.fail_at_start(parent, step_id, ctx, &label, e),
                };
                if let Some(max) = spec.max_iterations {
                    items.truncate(max);
                }
                let limit = match spec.mode {
                    LoopMode::Sequential => 1,
                    LoopMode::Parallel => spec.max_parallelism.unwrap_or(items.len()).max(1),
                };
                let count = items.len();
                let run = LoopRun {
                    results: vec![Value::Null; count],
                    items,
                    body: spec.body.clone(),
                    next: 0,
                    running: 0,
                    limit,
                    on_error: spec.on_error,
                    errors: Vec::new(),
                    halted: false,
                    iterations: HashMap::new(),
                };
                let id = self.add_exec(Some(parent), step_id, ctx, ExecKind::Loop(run));
                if count == 0 {
                    self.queue.push_back(Action::Finish(id, Ok(json!({"iterations": [], "total_count": 0}))));
                } else {
                    self.start_iterations(id);
                }
            }
            StepKind::ForkJoin(spec) => {
                let kind = ExecKind::ForkJoin(ForkJoinRun {
                    policy: spec.policy,
                    branches: spec.branches.len(),
                    outcomes: BTreeMap::new(),
                });
                let id = self.add_exec(Some(parent), step_id.clone(), ctx.clone(), kind);
                for branch in &spec.branches {
                    let branch_ctx = Ctx {
                        parent_step_id: Some(step_id.clone()),
                        branch_name: Some(branch.name.clone()),
                        join_policy: Some(spec.policy.as_str()),
                        call_path: format!("{}/{step_id}:{}", ctx.call_path, branch.name),
                        ..ctx.clone()
                    };
                    let deadline = branch.effective_timeout(spec);
                    let seq = self.add_exec(
                        Some(id),
                        branch.name.clone(),
                        branch_ctx,
                        ExecKind::Sequence { steps: branch.steps.clone(), next: 0, last: Value::Null, deadline },
                    );
                    if let Some(deadline) = deadline {
                        myself.send_after(deadline, move || RunMsg::BranchTimeout(seq));
                    }
                    self.advance_sequence(seq);
                }
            }
        }
    }

    /// A step that fails before any agent call (a bad reference, a condition that cannot be
    /// evaluated): it gets an exec so its parent hears of it the usual way.
    fn fail_at_start(
        &mut self,
        parent: ExecId,
        step_id: String,
        ctx: Ctx,
        label: &str,
        reason: impl std::fmt::Display,
    ) {
        let message = step_failed(&step_id, label, reason);
        let id = self.add_exec(Some(parent), step_id, ctx, ExecKind::FailedEarly);
        self.queue.push_back(Action::Finish(id, Err(message)));
    }

    fn start_parallel_member(&mut self, id: ExecId) {
        let exec = &mut self.execs[id];
        let ExecKind::Parallel { waiting, running, .. } = &mut exec.kind else { unreachable!("a parallel block") };
        if let Some(member) = waiting.pop_front() {
            *running += 1;
            let ctx = exec.ctx.clone();
            self.queue.push_back(Action::start(id, member, ctx));
        }
    }

    fn start_iterations(&mut self, id: ExecId) {
        loop {
            let exec = &mut self.execs[id];
            let loop_step = exec.step_id.clone();
            let parent_ctx = exec.ctx.clone();
            let ExecKind::Loop(run) = &mut exec.kind else { unreachable!("a loop") };
            if run.halted || run.running >= run.limit || run.next >= run.items.len() {
                return;
            }
            let index = run.next;
            run.next += 1;
            run.running += 1;
            let frame = LoopFrame { item: run.items[index].clone(), index, total: run.items.len() };
            let body = run.body.clone();
            self.scopes.push(IterScope { parent: parent_ctx.scope, frame, outputs: HashMap::new() });
            let ctx = Ctx {
                scope: Some(self.scopes.len() - 1),
                parent_step_id: Some(loop_step.clone()),
                loop_index: Some(index),
                call_path: format!("{}/{loop_step}[{index}]", parent_ctx.call_path),
                ..parent_ctx
            };
            let seq = self.add_exec(
                Some(id),
                loop_step,
                ctx,
                ExecKind::Sequence { steps: body, next: 0, last: Value::Null, deadline: None },
            );
            if let ExecKind::Loop(run) = &mut self.execs[id].kind {
                run.iterations.insert(seq, index);
            }
            self.advance_sequence(seq);
        }
    }

    async fn start_attempt(&mut self, myself: &ActorRef<RunMsg>, id: ExecId) -> Result<(), ActorProcessingErr> {
        let first_here = matches!(&self.execs[id].kind, ExecKind::Agent(call) if call.row_id.is_empty());
        if first_here
            && !self.history.is_empty()
            && let Some(result) = self.recall(id).await?
        {
            self.queue.push_back(Action::Finish(id, result));
            return Ok(());
        }
        let row_id = {
            let exec = &self.execs[id];
            let ExecKind::Agent(call) = &exec.kind else { unreachable!("an agent call") };
            self.attempt_row_id(&exec.ctx.call_path, &exec.step_id, call.attempt + 1)
        };
        let exec = &mut self.execs[id];
        let ExecKind::Agent(call) = &mut exec.kind else { unreachable!("an agent call") };
        call.attempt += 1;
        call.started = Some(std::time::Instant::now());
        let attempt = call.attempt;
        let step_id = exec.step_id.clone();
        let ctx = exec.ctx.clone();
        call.row_id = row_id.clone();
        let agent = call.agent.clone();
        let input = Arc::clone(&call.input);

        let row = AttemptStart {
            id: row_id.clone(),
            run_id: self.run_id.clone(),
            step_id: step_id.clone(),
            agent_name: agent.name().to_string(),
            input: Value::clone(&input),
            started_at: Self::now(),
            parent_step_id: ctx.parent_step_id.clone(),
            branch_name: ctx.branch_name.clone(),
            join_policy: ctx.join_policy.map(str::to_string),
            loop_iteration_index: ctx.loop_index.map(|i| i as i32),
            attempt: attempt as i32,
            retry_round: self.retry_round,
            owner: self.deps.owner.clone(),
        };
        let event = self.attempt_event(id, StepStatus::Running, None);
        if let Err(e) = self.deps.persistence.write_and_report(WriteOp::AttemptStarted(Box::new(row)), event).await {
            if matches!(e, PersistError::Fenced { .. }) {
                return Err(e.into());
            }
            let message = step_failed(&step_id, agent.name(), format!("cannot record the attempt: {e}"));
            self.queue.push_back(Action::Finish(id, Err(message)));
            return Ok(());
        }
        self.check_unconfirmed()?;

        let idempotency_key = match ctx.loop_index {
            Some(index) => format!("{}/{step_id}/{index}", self.run_id),
            None => format!("{}/{step_id}", self.run_id),
        };
        let context = CallContext {
            run_id: self.run_id.clone(),
            step_id: step_id.clone(),
            attempt,
            idempotency_key,
            correlation_id: row_id,
        };
        let args = StepArgs { agent, input, context, global_limit: Arc::clone(&self.deps.step_limit) };
        match Actor::spawn_linked(None, StepActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                let cell = actor.get_cell();
                self.by_actor.insert(cell.get_id(), id);
                if let Some(tap) = &self.deps.tap {
                    let _ =
                        tap.send(Spawned::Step { run_id: self.run_id.clone(), step_id, attempt, actor: cell.clone() });
                }
                if let ExecKind::Agent(call) = &mut self.execs[id].kind {
                    call.actor = Some(cell);
                }
            }
            Err(e) => {
                self.attempt_ended(myself, id, Err(StepFailure::Retryable(format!("cannot start a StepActor: {e}"))))
                    .await?
            }
        }
        Ok(())
    }

    /// Records the end of an attempt; retries it, or finishes the call.
    async fn attempt_ended(
        &mut self,
        myself: &ActorRef<RunMsg>,
        id: ExecId,
        result: Result<Value, StepFailure>,
    ) -> Result<(), ActorProcessingErr> {
        let exec = &mut self.execs[id];
        let step_id = exec.step_id.clone();
        let ExecKind::Agent(call) = &mut exec.kind else { unreachable!("an agent call") };
        call.actor = None;
        let (status, output, error) = match &result {
            Ok(output) => (StepStatus::Completed, Some(output.clone()), None),
            Err(failure) => (StepStatus::Failed, None, Some(failure.message().to_string())),
        };
        let end = AttemptEnd {
            id: call.row_id.clone(),
            run_id: self.run_id.clone(),
            owner: self.deps.owner.clone(),
            status,
            output,
            error: error.clone(),
            at: Self::now(),
        };
        record_attempt(call, status);
        // Counted against the policy: the attempts since the run was last retried.
        let attempt = call.attempt - call.before_retry;
        let max_attempts = call.agent.retry_policy().max_attempts();
        let agent_name = call.agent.name().to_string();
        let retry_in = match &result {
            Err(failure) if failure.is_retryable() && attempt < max_attempts => call.delays.next(),
            _ => None,
        };
        let event = self.attempt_event(id, status, error);
        let deferred = self.deps.persistence.write_deferred(WriteOp::AttemptEnded(Box::new(end)), Some(event));
        self.unconfirmed.push(deferred);
        match (result, retry_in) {
            (Ok(output), _) => self.queue.push_back(Action::Finish(id, Ok(output))),
            (Err(_), Some(delay)) => {
                myself.send_after(delay, move || RunMsg::Retry(id));
            }
            (Err(failure), None) => {
                let reason = if attempt > 1 {
                    format!("{} (attempt {attempt} of {max_attempts})", failure.message())
                } else {
                    failure.message().to_string()
                };
                self.queue.push_back(Action::Finish(id, Err(step_failed(&step_id, &agent_name, reason))));
            }
        }
        Ok(())
    }

    async fn finish(
        &mut self,
        myself: &ActorRef<RunMsg>,
        id: ExecId,
        result: StepResult,
    ) -> Result<(), ActorProcessingErr> {
        let exec = &mut self.execs[id];
        if exec.finished {
            return Ok(());
        }
        exec.finished = true;
        let records_output = !matches!(exec.kind, ExecKind::Sequence { .. });
        let (step_id, scope, parent) = (exec.step_id.clone(), exec.ctx.scope, exec.parent);
        if let (true, Ok(output)) = (records_output, &result) {
            match scope {
                Some(scope) => self.scopes[scope].outputs.insert(step_id, output.clone()),
                None => self.outputs.insert(step_id, output.clone()),
            };
        }
        match parent {
            None => {
                let (status, output, error) = match result {
                    Ok(output) => (RunStatus::Completed, Some(output), None),
                    Err(error) => (RunStatus::Failed, None, Some(error)),
                };
                self.conclude(myself, status, output, error, None).await
            }
            Some(parent) => self.child_finished(parent, id, result).await,
        }
    }

    async fn child_finished(
        &mut self,
        parent: ExecId,
        child: ExecId,
        result: StepResult,
    ) -> Result<(), ActorProcessingErr> {
        /// What the parent does once it has taken the child's result in.
        enum Then {
            Advance,
            Finish(StepResult),
            StartMember,
            StartIterations,
            HaltLoop(StepResult),
            Wait,
        }
        if self.execs[parent].finished {
            return Ok(());
        }
        let child_step = self.execs[child].step_id.clone();
        let parent_step = self.execs[parent].step_id.clone();
        let then = match &mut self.execs[parent].kind {
            ExecKind::Sequence { last, .. } => match result {
                Ok(output) => {
                    *last = output;
                    Then::Advance
                }
                Err(error) => Then::Finish(Err(error)),
            },
            ExecKind::Parallel { running, outputs, failed, remaining, .. } => {
                *running -= 1;
                *remaining -= 1;
                match result {
                    Ok(output) => {
                        outputs.insert(child_step, output);
                    }
                    Err(error) => failed.push((child_step, error)),
                }
                if *remaining > 0 {
                    Then::StartMember
                } else if failed.is_empty() {
                    Then::Finish(Ok(Value::Object(std::mem::take(outputs))))
                } else {
                    let ids: Vec<&str> = failed.iter().map(|(id, _)| id.as_str()).collect();
                    let errors: Vec<&str> = failed.iter().map(|(_, error)| error.as_str()).collect();
                    let reason = format!(
                        "Parallel execution failed: {} step(s) failed: {}. Failed: {}",
                        failed.len(),
                        ids.join(", "),
                        errors.join("; ")
                    );
                    Then::Finish(Err(step_failed(&parent_step, "parallel", reason)))
                }
            }
            ExecKind::Conditional { result: condition_result, branch } => Then::Finish(match result {
                Ok(output) => Ok(conditional_output(*condition_result, branch.clone(), output)),
                Err(error) => Err(step_failed(&parent_step, "conditional", error)),
            }),
            ExecKind::Loop(run) => {
                let index = run.iterations[&child];
                run.running -= 1;
                match result {
                    Ok(output) => run.results[index] = output,
                    Err(error) => {
                        run.errors.push((index, error));
                        run.halted |= run.on_error == OnError::Stop;
                    }
                }
                if run.halted {
                    let (index, error) = &run.errors[0];
                    Then::HaltLoop(Err(step_failed(&parent_step, "loop", format!("Iteration {index}: {error}"))))
                } else if run.next >= run.items.len() && run.running == 0 {
                    Then::Finish(loop_outcome(&parent_step, run))
                } else {
                    Then::StartIterations
                }
            }
            ExecKind::ForkJoin(run) => {
                run.outcomes.insert(child_step, result);
                if run.outcomes.len() == run.branches {
                    Then::Finish(fork_join_outcome(&parent_step, run))
                } else {
                    Then::Wait
                }
            }
            ExecKind::Agent(_) | ExecKind::FailedEarly => unreachable!("these execs have no children"),
        };
        match then {
            Then::Advance => self.advance_sequence(parent),
            Then::Finish(outcome) => self.queue.push_back(Action::Finish(parent, outcome)),
            Then::StartMember => self.start_parallel_member(parent),
            Then::StartIterations => self.start_iterations(parent),
            Then::HaltLoop(outcome) => {
                self.cancel_descendants(parent, "another loop iteration failed").await?;
                self.queue.push_back(Action::Finish(parent, outcome));
            }
            Then::Wait => {}
        }
        Ok(())
    }

    /// Ends every unfinished exec below `root`: in-flight calls are killed and their rows end
    /// CANCELLED (committed before this returns), pending retries are dropped.
    async fn cancel_descendants(&mut self, root: ExecId, reason: &str) -> Result<(), ActorProcessingErr> {
        let mut below = vec![false; self.execs.len()];
        for id in root + 1..self.execs.len() {
            // Execs are created after their parents, so one pass in order finds every descendant.
            below[id] = self.execs[id].parent.is_some_and(|p| p == root || below[p]);
        }
        for id in (root + 1..self.execs.len()).filter(|&id| below[id]) {
            let exec = &mut self.execs[id];
            if exec.finished {
                continue;
            }
            exec.finished = true;
            let ExecKind::Agent(call) = &mut exec.kind else { continue };
            let Some(actor) = call.actor.take() else { continue };
            self.by_actor.remove(&actor.get_id());
            actor.kill();
            record_attempt(call, StepStatus::Cancelled);
            let end = AttemptEnd {
                id: call.row_id.clone(),
                run_id: self.run_id.clone(),
                owner: self.deps.owner.clone(),
                status: StepStatus::Cancelled,
                output: None,
                error: Some(reason.to_string()),
                at: Self::now(),
            };
            let event = self.attempt_event(id, StepStatus::Cancelled, Some(reason.to_string()));
            self.deps.persistence.write_and_report(WriteOp::AttemptEnded(Box::new(end)), event).await?;
        }
        Ok(())
    }

    /// Fails if an attempt's end queued without waiting was rejected. Called after a later write
    /// was acknowledged, when every earlier one is settled.
    fn check_unconfirmed(&mut self) -> Result<(), PersistError> {
        let mut outcome = Ok(());
        self.unconfirmed.retain_mut(|deferred| match settled(deferred) {
            None => true,
            Some(result) => {
                outcome = outcome.clone().and(result);
                false
            }
        });
        outcome
    }

    /// Commits the run's terminal row and stops the actor.
    async fn conclude(
        &mut self,
        myself: &ActorRef<RunMsg>,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        cancelled_by: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        self.done = true;
        if self.taken_over || self.retry_round > 0 {
            // Attempts a lost executor (or the previous round's) left RUNNING in parts of the plan
            // this run did not revisit. None of this actor's own attempts is RUNNING any more.
            let lost = "the executor running this call was lost".to_string();
            let abandon = WriteOp::AbandonAttempts {
                run_id: self.run_id.clone(),
                owner: self.deps.owner.clone(),
                status: StepStatus::Failed,
                message: lost,
                at: Self::now(),
            };
            self.deps.persistence.write_later(abandon, None);
        }
        let terminal = self.run_write(status, output.clone(), error.clone(), cancelled_by);
        metrics::counter!(names::RUNS_FINISHED, "status" => status.as_str()).increment(1);
        tracing::info!(
            status = status.as_str(),
            took_ms = self.started.elapsed().as_millis() as u64,
            error = error.as_deref(),
            "run finished"
        );
        metrics::histogram!(names::RUN_DURATION, "status" => status.as_str())
            .record(self.started.elapsed().as_secs_f64());
        self.deps.persistence.write_and_report(terminal, self.run_event(status, error.clone())).await?;
        self.check_unconfirmed()?;
        let _ = self.finished.set(RunOutcome {
            run_id: self.run_id.clone(),
            status,
            output,
            error,
            disposition: Disposition::Executed,
        });
        myself.stop(None);
        Ok(())
    }

    fn run_event(&self, status: RunStatus, error: Option<String>) -> Event {
        Event::Run { run_id: self.run_id.clone(), workflow_name: self.meta.workflow_name.clone(), status, error }
    }

    fn attempt_event(&self, id: ExecId, status: StepStatus, error: Option<String>) -> Event {
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

/// Counts an attempt that ended, and how long its call took.
fn record_attempt(call: &AgentCall, status: StepStatus) {
    let agent = call.agent.name().to_string();
    if let Some(started) = call.started {
        metrics::histogram!(names::ATTEMPT_DURATION, "agent" => agent.clone()).record(started.elapsed().as_secs_f64());
    }
    metrics::counter!(names::ATTEMPTS, "agent" => agent, "status" => status.as_str()).increment(1);
}

fn conditional_output(result: bool, branch: Option<String>, output: Value) -> Value {
    let taken = branch.is_some();
    json!({
        "condition_result": result,
        "branch_taken": if result { "then" } else { "else" },
        "branch_step_id": branch,
        "branch_output": if taken { output } else { Value::Null },
    })
}

fn loop_outcome(step_id: &str, run: &mut LoopRun) -> StepResult {
    run.errors.sort_by_key(|(index, _)| *index);
    let total = run.items.len();
    match run.on_error {
        OnError::Collect if !run.errors.is_empty() => {
            let listed: Vec<String> = run.errors.iter().map(|(i, e)| format!("Iteration {i}: {e}")).collect();
            let reason = format!("Loop completed with {} errors: {}", run.errors.len(), listed.join("; "));
            Err(step_failed(step_id, "loop", reason))
        }
        OnError::Continue => Ok(json!({
            "iterations": std::mem::take(&mut run.results),
            "total_count": total,
            "failed_count": run.errors.len(),
        })),
        _ => Ok(json!({"iterations": std::mem::take(&mut run.results), "total_count": total})),
    }
}

fn fork_join_outcome(step_id: &str, run: &mut ForkJoinRun) -> StepResult {
    let succeeded = run.outcomes.values().filter(|o| o.is_ok()).count();
    if run.policy.is_met(succeeded, run.branches) {
        let outputs: Map<String, Value> = run
            .outcomes
            .iter_mut()
            .map(|(name, o)| (name.clone(), o.as_mut().map(std::mem::take).unwrap_or(Value::Null)))
            .collect();
        return Ok(Value::Object(outputs));
    }
    let failures: Vec<String> =
        run.outcomes.iter().filter_map(|(name, o)| o.as_ref().err().map(|e| format!("{name}: {e}"))).collect();
    let reason = format!(
        "Fork-join failed: {succeeded} of {} branches succeeded (policy: {}). Failed: {}",
        run.branches,
        run.policy.as_str().to_uppercase(),
        failures.join("; ")
    );
    Err(step_failed(step_id, "fork_join", reason))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Harness, fast_config, plan, run_plan};
    use entity::{RunStatus, StepStatus};
    use serde_json::json;

    /// Asserts the (step, attempt, status) of every attempt row, in start order.
    fn assert_attempts(recorded: &super::super::testing::Recorded, expected: &[(&str, i32, StepStatus)]) {
        let found = recorded.summary();
        let found: Vec<(&str, i32, StepStatus)> = found.iter().map(|(s, a, st)| (s.as_str(), *a, *st)).collect();
        assert_eq!(found, expected);
    }

    #[tokio::test]
    async fn a_pipeline_passes_outputs_along_and_ends_with_the_last_output() {
        let recorded = run_plan(
            plan("a", json!({
                "a": {"agent_name": "echo", "input_mapping": {"topic": "${workflow.input.topic}", "n": 2}, "next_step": "b"},
                "b": {"agent_name": "echo", "input_mapping": {"title": "About ${a.output.topic}", "n": "${a.output.n}"}}
            })),
            json!({"topic": "rust"}),
        )
        .await;
        assert_eq!(recorded.outcome.status, RunStatus::Completed, "{:?}", recorded.outcome.error);
        assert_eq!(recorded.outcome.output, Some(json!({"title": "About rust", "n": 2})));
        assert_attempts(&recorded, &[("a", 1, StepStatus::Completed), ("b", 1, StepStatus::Completed)]);
        // RUNNING is the claim, made directly; the terminal status is a journaled write.
        assert_eq!(recorded.run_statuses(), [RunStatus::Completed]);
        // One event per committed transition, in order: run RUNNING, 2 × (attempt RUNNING, COMPLETED), run COMPLETED.
        assert_eq!(recorded.events.len(), 6);
    }

    #[tokio::test]
    async fn an_invalid_plan_fails_the_run_without_calling_anything() {
        let recorded = run_plan(plan("a", json!({"a": {"agent_name": "NoSuchAgent"}})), json!({})).await;
        assert_eq!(recorded.outcome.status, RunStatus::Failed);
        assert_eq!(
            recorded.outcome.error.as_deref(),
            Some("Invalid workflow plan: step 'a': agent_name: unknown agent 'NoSuchAgent'")
        );
        assert!(recorded.attempts().is_empty());
        assert_eq!(recorded.run_statuses(), [RunStatus::Failed]);
    }

    #[tokio::test]
    async fn a_bad_reference_fails_its_step_naming_field_and_expression() {
        let recorded = run_plan(
            plan("a", json!({"a": {"agent_name": "echo", "input_mapping": {"x": "${workflow.input.missing}"}}})),
            json!({}),
        )
        .await;
        assert_eq!(
            recorded.outcome.error.as_deref(),
            Some(
                "Step 'a' (agent: echo) failed: input field 'x' (${workflow.input.missing}): key 'missing' not found in workflow.input"
            )
        );
    }

    #[tokio::test]
    async fn retryable_failures_are_retried_per_policy_permanent_ones_are_not() {
        let recorded = run_plan(
            plan("a", json!({"a": {"agent_name": "fail", "input_mapping": {"message": "flaky", "times": 2}}})),
            json!({}),
        )
        .await;
        assert_eq!(recorded.outcome.status, RunStatus::Completed);
        assert_attempts(
            &recorded,
            &[("a", 1, StepStatus::Failed), ("a", 2, StepStatus::Failed), ("a", 3, StepStatus::Completed)],
        );

        let recorded = run_plan(
            plan("a", json!({"a": {"agent_name": "fail", "input_mapping": {"message": "flaky", "times": 5}}})),
            json!({}),
        )
        .await;
        assert_eq!(recorded.outcome.error.as_deref(), Some("Step 'a' (agent: fail) failed: flaky (attempt 3 of 3)"));
        assert_eq!(recorded.attempts().len(), 3);

        let recorded = run_plan(
            plan("a", json!({"a": {"agent_name": "fail", "input_mapping": {"message": "bad input"}}})),
            json!({}),
        )
        .await;
        assert_eq!(recorded.outcome.error.as_deref(), Some("Step 'a' (agent: fail) failed: bad input"));
        assert_attempts(&recorded, &[("a", 1, StepStatus::Failed)]);
    }

    #[tokio::test]
    async fn a_panicking_step_actor_is_a_failed_attempt_and_is_retried() {
        let recorded = run_plan(
            plan("a", json!({"a": {"agent_name": "panic", "input_mapping": {"message": "kaboom"}}})),
            json!({}),
        )
        .await;
        assert_eq!(recorded.outcome.status, RunStatus::Failed);
        let error = recorded.outcome.error.clone().unwrap();
        assert!(error.starts_with("Step 'a' (agent: panic) failed: StepActor crashed: "), "{error}");
        assert!(error.contains("kaboom") && error.ends_with("(attempt 3 of 3)"), "{error}");
        assert_eq!(recorded.attempts().len(), 3);
        assert!(recorded.attempts().iter().all(|a| a.status() == StepStatus::Failed));
    }

    #[tokio::test]
    async fn parallel_blocks_collect_outputs_and_report_every_failure() {
        let steps = json!({
            "p": {"type": "parallel", "parallel_steps": ["x", "y", "z"], "max_parallelism": 2, "next_step": "after"},
            "x": {"agent_name": "sleep", "input_mapping": {"ms": 5, "v": "x"}},
            "y": {"agent_name": "echo", "input_mapping": {"v": "y"}},
            "z": {"agent_name": "echo", "input_mapping": {"v": "z"}},
            "after": {"agent_name": "echo", "input_mapping": {"all": "${p.output}", "x": "${x.output.v}"}}
        });
        let recorded = run_plan(plan("p", steps), json!({})).await;
        assert_eq!(recorded.outcome.status, RunStatus::Completed, "{:?}", recorded.outcome.error);
        let output = recorded.outcome.output.clone().unwrap();
        assert_eq!(output["all"]["y"], json!({"v": "y"}));
        assert_eq!(output["x"], "x");
        let rows = recorded.attempts();
        assert!(
            rows.iter().filter(|r| r.start.step_id != "after").all(|r| r.start.parent_step_id.as_deref() == Some("p"))
        );
        // max_parallelism 2: z starts only after x or y ended.
        let started: Vec<&str> = rows.iter().map(|r| r.start.step_id.as_str()).collect();
        assert_eq!(started[2], "z");

        let failing = json!({
            "p": {"type": "parallel", "parallel_steps": ["x", "y", "z"]},
            "x": {"agent_name": "fail", "input_mapping": {"message": "no"}},
            "y": {"agent_name": "echo"},
            "z": {"agent_name": "fail", "input_mapping": {"message": "no"}}
        });
        let recorded = run_plan(plan("p", failing), json!({})).await;
        assert_eq!(
            recorded.outcome.error.as_deref(),
            Some(
                "Step 'p' (agent: parallel) failed: Parallel execution failed: 2 step(s) failed: x, z. \
                 Failed: Step 'x' (agent: fail) failed: no; Step 'z' (agent: fail) failed: no"
            )
        );
    }

    #[tokio::test]
    async fn parallel_members_see_only_what_existed_before_the_block() {
        let steps = json!({
            "p": {"type": "parallel", "parallel_steps": ["x", "y"], "max_parallelism": 1},
            "x": {"agent_name": "echo"},
            "y": {"agent_name": "echo", "input_mapping": {"sibling": "${x.output}"}}
        });
        let recorded = run_plan(plan("p", steps), json!({})).await;
        let error = recorded.outcome.error.clone().unwrap();
        assert!(error.contains("Parallel execution failed: 1 step(s) failed: y"), "{error}");
    }

    #[tokio::test]
    async fn conditionals_take_a_branch_or_none() {
        let steps = |expression: &str| {
            json!({
                "c": {"type": "conditional", "condition": {"expression": expression}, "if_true_step": "t", "next_step": "after"},
                "t": {"agent_name": "echo", "input_mapping": {"took": "then"}},
                "after": {"agent_name": "echo", "input_mapping": {"c": "${c.output}"}}
            })
        };
        let recorded = run_plan(plan("c", steps("${workflow.input.score} > 0.8")), json!({"score": 0.9})).await;
        assert_eq!(
            recorded.outcome.output.clone().unwrap()["c"],
            json!({"condition_result": true, "branch_taken": "then", "branch_step_id": "t", "branch_output": {"took": "then"}})
        );
        let recorded = run_plan(plan("c", steps("${workflow.input.score} > 0.8")), json!({"score": 0.1})).await;
        assert_eq!(
            recorded.outcome.output.clone().unwrap()["c"],
            json!({"condition_result": false, "branch_taken": "else", "branch_step_id": null, "branch_output": null})
        );
        assert_eq!(recorded.summary().len(), 1, "only 'after' ran");
        let recorded = run_plan(plan("c", steps("${workflow.input.score} > 0.8")), json!({})).await;
        let error = recorded.outcome.error.clone().unwrap();
        assert!(error.starts_with("Step 'c' (agent: conditional) failed: cannot evaluate condition"), "{error}");
    }

    #[tokio::test]
    async fn loops_chain_body_steps_within_an_iteration() {
        let steps = json!({
            "l": {"type": "loop", "loop_config": {"collection": "${workflow.input.items}", "loop_body": ["a", "b"],
                  "execution_mode": "parallel", "max_parallelism": 2, "max_iterations": 3}, "next_step": "after"},
            "a": {"agent_name": "echo", "input_mapping": {"item": "${loop.item}", "i": "${loop.index}"}},
            "b": {"agent_name": "echo", "input_mapping": {"from_a": "${a.output.item}", "label": "${loop.index}/${loop.total}", "last": "${loop.is_last}"}},
            "after": {"agent_name": "echo", "input_mapping": {"l": "${l.output}"}}
        });
        let recorded = run_plan(plan("l", steps), json!({"items": ["p", "q", "r", "s"]})).await;
        assert_eq!(recorded.outcome.status, RunStatus::Completed, "{:?}", recorded.outcome.error);
        assert_eq!(
            recorded.outcome.output.clone().unwrap()["l"],
            json!({"iterations": [
                {"from_a": "p", "label": "0/3", "last": false},
                {"from_a": "q", "label": "1/3", "last": false},
                {"from_a": "r", "label": "2/3", "last": true}
            ], "total_count": 3})
        );
        let rows = recorded.attempts();
        let body: Vec<_> = rows.iter().filter(|r| r.start.parent_step_id.as_deref() == Some("l")).collect();
        assert_eq!(body.len(), 6);
        let mut indices: Vec<i32> = body.iter().filter_map(|r| r.start.loop_iteration_index).collect();
        indices.sort();
        assert_eq!(indices, [0, 0, 1, 1, 2, 2]);
        // Each call of a body step has its own row id.
        let ids: std::collections::HashSet<_> = rows.iter().map(|r| r.start.id.clone()).collect();
        assert_eq!(ids.len(), rows.len());
    }

    #[tokio::test]
    async fn loop_body_outputs_stay_inside_their_iteration() {
        let steps = json!({
            "l": {"type": "loop", "loop_config": {"collection": [1], "loop_body": ["a"]}, "next_step": "after"},
            "a": {"agent_name": "echo"},
            "after": {"agent_name": "echo", "input_mapping": {"a": "${a.output}"}}
        });
        let recorded = run_plan(plan("l", steps), json!({})).await;
        assert!(recorded.outcome.error.clone().unwrap().contains("step 'a' has not completed"));
    }

    fn loop_with(on_error: &str) -> serde_json::Value {
        plan(
            "l",
            json!({
                "l": {"type": "loop", "loop_config": {"collection": "${workflow.input.items}", "loop_body": ["b"], "on_error": on_error}},
                "b": {"agent_name": "fail", "input_mapping": {"message": "bad ${loop.item}", "times": "${loop.item}"}}
            }),
        )
    }

    #[tokio::test]
    async fn loop_error_policies() {
        // times = 0 succeeds at once; times = 9 always fails (3 attempts).
        let items = json!({"items": [0, 9, 0, 9]});
        let recorded = run_plan(loop_with("continue"), items.clone()).await;
        assert_eq!(recorded.outcome.status, RunStatus::Completed);
        let output = recorded.outcome.output.clone().unwrap();
        assert_eq!(output["total_count"], 4);
        assert_eq!(output["failed_count"], 2);
        assert_eq!(output["iterations"][1], serde_json::Value::Null);
        assert_eq!(output["iterations"][2]["times"], 0);

        let recorded = run_plan(loop_with("collect"), items.clone()).await;
        assert_eq!(
            recorded.outcome.error.as_deref(),
            Some(
                "Step 'l' (agent: loop) failed: Loop completed with 2 errors: \
                 Iteration 1: Step 'b' (agent: fail) failed: bad 9 (attempt 3 of 3); \
                 Iteration 3: Step 'b' (agent: fail) failed: bad 9 (attempt 3 of 3)"
            )
        );
        assert_eq!(recorded.attempts().len(), 2 + 2 * 3);

        let recorded = run_plan(loop_with("stop"), items).await;
        assert_eq!(
            recorded.outcome.error.as_deref(),
            Some("Step 'l' (agent: loop) failed: Iteration 1: Step 'b' (agent: fail) failed: bad 9 (attempt 3 of 3)")
        );
        // Sequential: iterations 2 and 3 never start.
        assert_eq!(recorded.attempts().len(), 1 + 3);
    }

    fn fork_join(policy: serde_json::Value, slow_ms: u64) -> serde_json::Value {
        let mut config = json!({"branches": {
            "fast": {"steps": ["f1", "f2"]},
            "slow": {"steps": ["s1"], "timeout_seconds": 0.05},
            "bad": {"steps": ["b1"]}
        }});
        for (k, v) in policy.as_object().unwrap() {
            config[k] = v.clone();
        }
        plan(
            "fj",
            json!({
                "fj": {"type": "fork_join", "fork_join_config": config},
                "f1": {"agent_name": "echo", "input_mapping": {"v": 1}},
                "f2": {"agent_name": "echo", "input_mapping": {"v": "${f1.output.v}"}},
                "s1": {"agent_name": "sleep", "input_mapping": {"ms": slow_ms}},
                "b1": {"agent_name": "fail", "input_mapping": {"message": "down"}}
            }),
        )
    }

    #[tokio::test]
    async fn fork_join_policies_and_branch_timeouts() {
        let recorded = run_plan(fork_join(json!({"join_policy": "any"}), 10_000), json!({})).await;
        assert_eq!(recorded.outcome.status, RunStatus::Completed, "{:?}", recorded.outcome.error);
        assert_eq!(recorded.outcome.output, Some(json!({"fast": {"v": 1}, "slow": null, "bad": null})));
        let rows = recorded.attempts();
        let slow = rows.iter().find(|r| r.start.step_id == "s1").unwrap();
        assert_eq!(slow.status(), StepStatus::Cancelled, "the timed-out call ends CANCELLED");
        assert_eq!(slow.start.branch_name.as_deref(), Some("slow"));
        assert_eq!(slow.start.join_policy.as_deref(), Some("any"));
        assert_eq!(slow.start.parent_step_id.as_deref(), Some("fj"));

        let recorded = run_plan(fork_join(json!({"join_policy": "majority"}), 10_000), json!({})).await;
        assert_eq!(
            recorded.outcome.error.as_deref(),
            Some(
                "Step 'fj' (agent: fork_join) failed: Fork-join failed: 1 of 3 branches succeeded (policy: MAJORITY). \
                 Failed: bad: Step 'b1' (agent: fail) failed: down; slow: timed out after 0.05s"
            )
        );
        let recorded = run_plan(fork_join(json!({"join_policy": "n_of_m", "n_required": 2}), 1), json!({})).await;
        assert_eq!(recorded.outcome.status, RunStatus::Completed, "{:?}", recorded.outcome.error);
        let recorded = run_plan(fork_join(json!({"join_policy": "all"}), 1), json!({})).await;
        assert!(recorded.outcome.error.clone().unwrap().contains("2 of 3 branches succeeded (policy: ALL)"));
    }

    #[tokio::test]
    async fn cancelling_a_run_cancels_its_calls_in_flight() {
        let mut harness = Harness::start(&fast_config()).await;
        let done = harness.submit(
            "run-c",
            plan("a", json!({"a": {"agent_name": "sleep", "input_mapping": {"ms": 60_000}, "next_step": "b"}, "b": {"agent_name": "echo"}})),
            json!({}),
        );
        // Wait until the call is in flight (its StepActor exists), then cancel.
        loop {
            if let Some(super::Spawned::Step { .. }) = harness.spawned.recv().await {
                break;
            }
        }
        harness
            .supervisor
            .cast(super::super::supervisor::SupervisorMsg::Cancel {
                run_id: "run-c".into(),
                cancelled_by: Some("ops".into()),
                reason: Some("not needed".into()),
                requested_at: None,
                done: None,
            })
            .unwrap();
        let outcome = done.await.unwrap();
        assert_eq!(outcome.status, RunStatus::Cancelled);
        assert_eq!(outcome.error.as_deref(), Some("Cancelled: not needed"));
        let writes = std::mem::take(&mut *harness.log.lock().unwrap());
        let recorded = super::super::testing::Recorded { outcome, writes, events: Vec::new() };
        assert_attempts(&recorded, &[("a", 1, StepStatus::Cancelled)]);
    }

    #[tokio::test]
    async fn a_killed_run_actor_fails_its_run_and_its_running_attempts() {
        let mut harness = Harness::start(&fast_config()).await;
        let done = harness.submit(
            "run-k",
            plan("a", json!({"a": {"agent_name": "sleep", "input_mapping": {"ms": 60_000}}})),
            json!({}),
        );
        let mut run_actor = None;
        while let Some(spawned) = harness.spawned.recv().await {
            match spawned {
                super::Spawned::Run { actor, .. } => run_actor = Some(actor),
                super::Spawned::Step { .. } => break,
            }
        }
        run_actor.expect("the run actor was spawned first").kill();
        let outcome = done.await.unwrap();
        assert_eq!(outcome.status, RunStatus::Failed);
        assert_eq!(outcome.error.as_deref(), Some("RunActor was killed"));
        let writes = harness.log.lock().unwrap().clone();
        assert!(writes.iter().any(|w| matches!(w, super::WriteOp::AbandonAttempts { .. })));
        let last = writes.last().unwrap();
        assert!(matches!(last, super::WriteOp::Run(run) if run.status == RunStatus::Failed), "{last:?}");
    }
}
