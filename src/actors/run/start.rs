//! Taking a run: its plan loaded and checked, the run claimed, and what an earlier owner recorded
//! recalled, so that a resumed run repeats no call whose completion was committed.

use std::sync::Arc;

use entity::{RunStatus, StepStatus};
use ractor::{ActorProcessingErr, ActorRef};
use serde_json::Value;

use super::tree::{Ctx, ExecKind, StepResult, step_failed};
use super::{Disposition, ExecId, RunMeta, RunMsg, RunState, View};
use crate::actors::persistence::{AttemptStart, Claim, ClaimOutcome, RunWrite, WriteOp};
use crate::observability::metrics as names;
use crate::plan::{AgentCatalog, Plan, StepKind, validate};
use crate::wire::PlanSource;

/// The plan's first call, prepared before the claim so the claim can write its first attempt.
#[derive(Debug)]
pub(super) struct FirstCall {
    pub(super) step_id: String,
    /// Its input, resolved once: `start_step` takes it instead of resolving the mapping again.
    pub(super) input: Arc<Value>,
    /// The row id of its first attempt.
    pub(super) row_id: String,
    /// The claim committed that row: the attempt only reports it.
    pub(super) written: bool,
}

impl FirstCall {
    /// Whether the call about to start at `call_path`/`step_id` is this one.
    pub(super) fn is(&self, call_path: &str, step_id: &str) -> bool {
        call_path.is_empty() && self.step_id == step_id
    }
}

impl RunState {
    /// The plan document: inline, or the stored definition's (whose identity then names the run).
    pub(super) async fn load_document(&mut self) -> Result<Arc<Value>, String> {
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

    /// Checks the plan, claims the run (with its first call's RUNNING row when it can), and starts
    /// the main chain.
    ///
    /// Why the plan is checked before the claim: the claim can then carry the first attempt, which
    /// the persistence actor writes in the claim's transaction when the run is new, so the first
    /// call starts one commit sooner. A run whose claim finds it ended or held elsewhere has had
    /// its plan checked for nothing; validated plans are cached, so that costs a lookup.
    pub(super) async fn start(&mut self, myself: &ActorRef<RunMsg>) -> Result<(), ActorProcessingErr> {
        let document = self.load_document().await;
        if let Ok(document) = &document {
            self.refresh_registry_for(document).await;
        }
        let plan = document.and_then(|document| {
            self.deps.plans.validate(&document, &self.registry).map_err(|invalid| invalid.to_string())
        });
        if let Ok(plan) = &plan {
            self.meta = RunMeta { workflow_id: plan.workflow_id.clone(), workflow_name: plan.name.clone() };
        }
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
            first_attempt: plan.as_ref().ok().and_then(|plan| self.first_attempt(plan)),
        };
        match self.deps.persistence.claim(claim).await? {
            ClaimOutcome::Terminal(row) => {
                // A claim committed whose acknowledgement was lost, with the run ended (cancelled)
                // before the claim was committed again, leaves its first attempt RUNNING: end it.
                // Elsewhere the write changes nothing (no such row, or not RUNNING).
                if let Some(first) = self.first_call.take() {
                    let reason = "the run had ended before this call started".to_string();
                    let end = self.attempt_end(first.row_id, StepStatus::Cancelled, None, Some(reason));
                    self.deps.persistence.write_later(WriteOp::AttemptEnded(Box::new(end)), None);
                }
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
            ClaimOutcome::Claimed { history, taken_over, retry_round, retried_at, wrote_first_attempt } => {
                self.history = history.into_iter().map(|row| (row.id.clone(), row)).collect();
                self.taken_over = taken_over;
                self.retry_round = retry_round;
                self.retried_at = retried_at;
                if let Some(first) = &mut self.first_call {
                    first.written = wrote_first_attempt;
                }
            }
        }
        let plan = match plan {
            Ok(plan) => plan,
            Err(error) => return self.conclude(myself, RunStatus::Failed, None, Some(error), None).await,
        };
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
            ExecKind::Sequence { steps: main_chain, next: 0, last: None, deadline: None },
        );
        self.advance_sequence(root);
        Ok(())
    }

    /// The RUNNING row of the plan's first call, for the claim to write: when the main chain
    /// starts with an agent step whose agent is known and whose input resolves (else that step
    /// fails without a call, as `start_step` finds). Made by `attempt_start`, as `start_attempt`
    /// makes every row, before the claim: the retry round is 0 then, as it is for any run a claim
    /// can take with its first attempt. `first_call` keeps what the call itself reuses.
    fn first_attempt(&mut self, plan: &Plan) -> Option<AttemptStart> {
        let step_id = plan.main_chain.first()?;
        let step = plan.step(step_id);
        let StepKind::Agent { agent_name } = &step.kind else { return None };
        let agent = self.registry.get(agent_name)?;
        let ctx = Ctx::default();
        let input = Arc::new(Value::Object(step.input_mapping.resolve(&View { state: self, ctx: &ctx }).ok()?));
        let row_id = self.attempt_row_id(&ctx.call_path, step_id, 1);
        let row = self.attempt_start(row_id.clone(), step_id, agent.name(), &input, &ctx, 1);
        self.first_call = Some(FirstCall { step_id: step_id.clone(), input, row_id, written: false });
        Some(row)
    }

    /// When the plan names an agent this executor does not know, reads the `agents` table again
    /// (an agent created through the API a moment ago), then takes the newest registry.
    pub(super) async fn refresh_registry_for(&mut self, document: &Value) {
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

    /// Before the first attempt of a call in a resumed run: reuses a completed attempt's output,
    /// ends attempts a lost executor left RUNNING, and continues the attempt count. Returns the
    /// output when the call need not be made again.
    pub(super) async fn recall(&mut self, id: ExecId) -> Result<Option<StepResult>, ActorProcessingErr> {
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
                    return Ok(Some(Ok(Arc::new(row.output_data.unwrap_or(Value::Null)))));
                }
                StepStatus::Completed => last_error = None,
                StepStatus::Running => {
                    let message = "the executor running this call was lost".to_string();
                    let end = self.attempt_end(row_id, StepStatus::Failed, None, Some(message.clone()));
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
    pub(super) fn same_call(&self, id: ExecId, row: &entity::step_execution::Model) -> bool {
        let ExecKind::Agent(call) = &self.execs[id].kind else { return false };
        row.agent_name == call.agent.name() && row.input_data == *call.input
    }
}
