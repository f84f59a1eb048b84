//! Walking the plan: the work queue, each kind of step started, a child's result taken in by its
//! parent, and the run concluded when the main chain ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use entity::{RunStatus, StepStatus};
use ractor::{ActorProcessingErr, ActorRef};
use serde_json::{Map, Value, json};

use super::tree::{
    Action, AgentCall, Ctx, Exec, ExecKind, ForkJoinRun, IterScope, LoopRun, StartStep, StepResult, conditional_output,
    fork_join_outcome, loop_outcome, step_failed,
};
use super::{Disposition, ExecId, RunMsg, RunOutcome, RunState, View};
use crate::actors::persistence::WriteOp;
use crate::observability::metrics as names;
use crate::plan::expr::LoopFrame;
use crate::plan::model::{LoopMode, OnError};
use crate::plan::{StepKind, condition, mapping};

impl RunState {
    pub(super) fn add_exec(&mut self, parent: Option<ExecId>, step_id: String, ctx: Ctx, kind: ExecKind) -> ExecId {
        self.execs.push(Exec { parent, step_id, ctx, kind, finished: false });
        self.execs.len() - 1
    }

    /// Starts the next step of a sequence, or finishes it with the last step's output.
    pub(super) fn advance_sequence(&mut self, id: ExecId) {
        let exec = &mut self.execs[id];
        let ExecKind::Sequence { steps, next, last, .. } = &mut exec.kind else { unreachable!("a sequence") };
        match steps.get(*next) {
            Some(step_id) => {
                *next += 1;
                let action = Action::start(id, step_id.clone(), exec.ctx.clone());
                self.queue.push_back(action);
            }
            None => {
                let output = last.take().unwrap_or_else(|| Arc::new(Value::Null));
                self.queue.push_back(Action::Finish(id, Ok(output)));
            }
        }
    }

    /// Works through the queue until every exec is waiting on a StepActor or a timer.
    pub(super) async fn drive(&mut self, myself: &ActorRef<RunMsg>) -> Result<(), ActorProcessingErr> {
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

    pub(super) fn start_step(&mut self, myself: &ActorRef<RunMsg>, parent: ExecId, step_id: String, ctx: Ctx) {
        let plan = self.plan();
        let step = plan.step(&step_id);
        let label = step.label().to_string();
        let view = View { state: self, ctx: &ctx };
        match &step.kind {
            StepKind::Agent { agent_name } => {
                let input = match self.first_call.as_ref().filter(|first| first.is(&ctx.call_path, &step_id)) {
                    Some(first) => Ok(Arc::clone(&first.input)),
                    None => step.input_mapping.resolve(&view).map(|input| Arc::new(Value::Object(input))),
                };
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
                    input,
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
                    None => self
                        .queue
                        .push_back(Action::Finish(id, Ok(Arc::new(conditional_output(result, None, Value::Null))))),
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
                    self.queue.push_back(Action::Finish(id, Ok(Arc::new(json!({"iterations": [], "total_count": 0})))));
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
                        ExecKind::Sequence { steps: branch.steps.clone(), next: 0, last: None, deadline },
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
    pub(super) fn fail_at_start(
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

    pub(super) fn start_parallel_member(&mut self, id: ExecId) {
        let exec = &mut self.execs[id];
        let ExecKind::Parallel { waiting, running, .. } = &mut exec.kind else { unreachable!("a parallel block") };
        if let Some(member) = waiting.pop_front() {
            *running += 1;
            let ctx = exec.ctx.clone();
            self.queue.push_back(Action::start(id, member, ctx));
        }
    }

    pub(super) fn start_iterations(&mut self, id: ExecId) {
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
                ExecKind::Sequence { steps: body, next: 0, last: None, deadline: None },
            );
            if let ExecKind::Loop(run) = &mut self.execs[id].kind {
                run.iterations.insert(seq, index);
            }
            self.advance_sequence(seq);
        }
    }

    pub(super) async fn finish(
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
                Some(scope) => self.scopes[scope].outputs.insert(step_id, Arc::clone(output)),
                None => self.outputs.insert(step_id, Arc::clone(output)),
            };
        }
        match parent {
            None => {
                let (status, output, error) = match result {
                    Ok(output) => (RunStatus::Completed, Some(Arc::unwrap_or_clone(output)), None),
                    Err(error) => (RunStatus::Failed, None, Some(error)),
                };
                self.conclude(myself, status, output, error, None).await
            }
            Some(parent) => self.child_finished(parent, id, result).await,
        }
    }

    pub(super) async fn child_finished(
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
                    *last = Some(output);
                    Then::Advance
                }
                Err(error) => Then::Finish(Err(error)),
            },
            ExecKind::Parallel { running, outputs, failed, remaining, .. } => {
                *running -= 1;
                *remaining -= 1;
                match result {
                    Ok(output) => {
                        outputs.insert(child_step, Arc::unwrap_or_clone(output));
                    }
                    Err(error) => failed.push((child_step, error)),
                }
                if *remaining > 0 {
                    Then::StartMember
                } else if failed.is_empty() {
                    Then::Finish(Ok(Arc::new(Value::Object(std::mem::take(outputs)))))
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
                Ok(output) => {
                    Ok(Arc::new(conditional_output(*condition_result, branch.clone(), Arc::unwrap_or_clone(output))))
                }
                Err(error) => Err(step_failed(&parent_step, "conditional", error)),
            }),
            ExecKind::Loop(run) => {
                let index = run.iterations[&child];
                run.running -= 1;
                match result {
                    Ok(output) => run.results[index] = Arc::unwrap_or_clone(output),
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

    /// Commits the run's terminal row and stops the actor.
    pub(super) async fn conclude(
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
}
