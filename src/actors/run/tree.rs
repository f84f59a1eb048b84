//! The tree a run walks: one exec per step being run, in an arena (see the parent module), the
//! work queue that drives it, and how a compound step's outcome is put together from its children's.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use backon::ExponentialBackoff;
use ractor::ActorCell;
use serde_json::{Map, Value, json};

use super::ExecId;
use crate::agents::AgentHandle;
use crate::plan::expr::LoopFrame;
use crate::plan::model::{JoinPolicy, OnError};

pub(super) type ScopeId = usize;

/// The failure of a step, already worded as the contract's run error:
/// `Step '<id>' (agent: <agent_name or type>) failed: <reason>`. An output is shared (`Arc`) by
/// the step's attempt row, the run's record of outputs and whichever step takes it next.
pub(super) type StepResult = Result<Arc<Value>, String>;

pub(super) fn step_failed(step_id: &str, label: &str, reason: impl std::fmt::Display) -> String {
    format!("Step '{step_id}' (agent: {label}) failed: {reason}")
}

/// Where an exec runs: its scope and what its attempt rows record.
#[derive(Debug, Clone, Default)]
pub(super) struct Ctx {
    /// The loop iteration whose outputs and loop variables are visible.
    pub(super) scope: Option<ScopeId>,
    pub(super) parent_step_id: Option<String>,
    pub(super) branch_name: Option<String>,
    pub(super) join_policy: Option<&'static str>,
    pub(super) loop_index: Option<usize>,
    /// The loop iterations and branches on the way down, to tell calls of one step apart.
    pub(super) call_path: String,
    /// Members of enclosing parallel blocks: invisible to each other.
    pub(super) hidden: Option<Arc<HashSet<String>>>,
}

#[derive(Debug)]
pub(super) struct Exec {
    pub(super) parent: Option<ExecId>,
    /// The plan step; for a `Sequence`, the step that owns it (or empty for the main chain).
    pub(super) step_id: String,
    pub(super) ctx: Ctx,
    pub(super) kind: ExecKind,
    pub(super) finished: bool,
}

#[derive(Debug)]
pub(super) enum ExecKind {
    Sequence {
        steps: Vec<String>,
        next: usize,
        /// The last finished step's output (none yet: null).
        last: Option<Arc<Value>>,
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
pub(super) struct AgentCall {
    pub(super) agent: AgentHandle,
    /// Shared with the StepActor of the attempt in flight, which holds it for the whole call.
    pub(super) input: Arc<Value>,
    /// Attempts made so far, counting those of earlier owners and earlier retries of the run:
    /// attempt rows are numbered by it.
    pub(super) attempt: u32,
    /// Attempts made before the run was last retried: they do not count against the policy, so a
    /// retried run gives a call that had failed its attempts anew.
    pub(super) before_retry: u32,
    pub(super) delays: ExponentialBackoff,
    /// The row of the attempt in flight.
    pub(super) row_id: String,
    /// When the attempt in flight started, for its duration metric.
    pub(super) started: Option<std::time::Instant>,
    pub(super) actor: Option<ActorCell>,
}

#[derive(Debug)]
pub(super) struct LoopRun {
    pub(super) items: Vec<Value>,
    pub(super) body: Vec<String>,
    pub(super) next: usize,
    pub(super) running: usize,
    pub(super) limit: usize,
    pub(super) on_error: OnError,
    pub(super) results: Vec<Value>,
    pub(super) errors: Vec<(usize, String)>,
    pub(super) halted: bool,
    /// Iteration sequence → its index.
    pub(super) iterations: HashMap<ExecId, usize>,
}

#[derive(Debug)]
pub(super) struct ForkJoinRun {
    pub(super) policy: JoinPolicy,
    pub(super) branches: usize,
    pub(super) outcomes: BTreeMap<String, StepResult>,
}

#[derive(Debug)]
pub(super) struct IterScope {
    pub(super) parent: Option<ScopeId>,
    pub(super) frame: LoopFrame,
    pub(super) outputs: HashMap<String, Arc<Value>>,
}

/// Why `Start` is boxed: every run keeps a queue of actions for as long as it lives, sized for
/// the largest; a boxed start keeps each slot at a finished step's size.
#[derive(Debug)]
pub(super) enum Action {
    Start(Box<StartStep>),
    Attempt(ExecId),
    Finish(ExecId, StepResult),
}

#[derive(Debug)]
pub(super) struct StartStep {
    pub(super) parent: ExecId,
    pub(super) step_id: String,
    pub(super) ctx: Ctx,
}

impl Action {
    pub(super) fn start(parent: ExecId, step_id: String, ctx: Ctx) -> Action {
        Action::Start(Box::new(StartStep { parent, step_id, ctx }))
    }
}

pub(super) fn conditional_output(result: bool, branch: Option<String>, output: Value) -> Value {
    let taken = branch.is_some();
    json!({
        "condition_result": result,
        "branch_taken": if result { "then" } else { "else" },
        "branch_step_id": branch,
        "branch_output": if taken { output } else { Value::Null },
    })
}

pub(super) fn loop_outcome(step_id: &str, run: &mut LoopRun) -> StepResult {
    run.errors.sort_by_key(|(index, _)| *index);
    let total = run.items.len();
    match run.on_error {
        OnError::Collect if !run.errors.is_empty() => {
            let listed: Vec<String> = run.errors.iter().map(|(i, e)| format!("Iteration {i}: {e}")).collect();
            let reason = format!("Loop completed with {} errors: {}", run.errors.len(), listed.join("; "));
            Err(step_failed(step_id, "loop", reason))
        }
        OnError::Continue => Ok(Arc::new(json!({
            "iterations": std::mem::take(&mut run.results),
            "total_count": total,
            "failed_count": run.errors.len(),
        }))),
        _ => Ok(Arc::new(json!({"iterations": std::mem::take(&mut run.results), "total_count": total}))),
    }
}

pub(super) fn fork_join_outcome(step_id: &str, run: &mut ForkJoinRun) -> StepResult {
    let succeeded = run.outcomes.values().filter(|o| o.is_ok()).count();
    if run.policy.is_met(succeeded, run.branches) {
        let outputs: Map<String, Value> = std::mem::take(&mut run.outcomes)
            .into_iter()
            .map(|(name, o)| (name, o.map(Arc::unwrap_or_clone).unwrap_or(Value::Null)))
            .collect();
        return Ok(Arc::new(Value::Object(outputs)));
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
