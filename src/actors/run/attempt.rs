//! One agent call attempt: its RUNNING row committed, its StepActor spawned and linked, its end
//! recorded and retried per the agent's policy, or killed with the run's cancellation.

use std::sync::Arc;

use entity::StepStatus;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;

use super::tree::{Action, AgentCall, ExecKind, step_failed};
use super::{ExecId, RunMsg, RunState, Spawned};
use crate::actors::persistence::{PersistError, WriteOp, settled};
use crate::actors::step::{StepActor, StepArgs};
use crate::agents::{CallContext, StepFailure};
use crate::observability::metrics as names;

impl RunState {
    pub(super) async fn start_attempt(
        &mut self,
        myself: &ActorRef<RunMsg>,
        id: ExecId,
    ) -> Result<(), ActorProcessingErr> {
        let first_here = matches!(&self.execs[id].kind, ExecKind::Agent(call) if call.row_id.is_empty());
        if first_here
            && !self.history.is_empty()
            && let Some(result) = self.recall(id).await?
        {
            self.queue.push_back(Action::Finish(id, result));
            return Ok(());
        }
        // The plan's first call, on its first attempt: its row was made for the claim (and
        // written with it, unless the claim found the run claimed before).
        let (row_id, written) = {
            let exec = &self.execs[id];
            let ExecKind::Agent(call) = &exec.kind else { unreachable!("an agent call") };
            let first = self.first_call.as_ref().is_some_and(|first| first.is(&exec.ctx.call_path, &exec.step_id));
            match self.first_call.take_if(|_| first && call.attempt == 0) {
                Some(first) => (first.row_id, first.written),
                None => (self.attempt_row_id(&exec.ctx.call_path, &exec.step_id, call.attempt + 1), false),
            }
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

        let event = self.attempt_event(id, StepStatus::Running, None);
        if written {
            self.deps.persistence.report(event);
        } else {
            let row = self.attempt_start(row_id.clone(), &step_id, agent.name(), &input, &ctx, attempt);
            if let Err(e) = self.deps.persistence.write_and_report(WriteOp::AttemptStarted(Box::new(row)), event).await
            {
                if matches!(e, PersistError::Fenced { .. }) {
                    return Err(e.into());
                }
                let message = step_failed(&step_id, agent.name(), format!("cannot record the attempt: {e}"));
                self.queue.push_back(Action::Finish(id, Err(message)));
                return Ok(());
            }
            self.check_unconfirmed()?;
        }

        // `{run_id}/{step_id}`, and `/{index}` inside a loop: built by hand for the reason
        // `attempt_row_id` gives.
        let mut idempotency_key = String::with_capacity(self.run_id.len() + step_id.len() + 12);
        idempotency_key.push_str(&self.run_id);
        idempotency_key.push('/');
        idempotency_key.push_str(&step_id);
        if let Some(index) = ctx.loop_index {
            idempotency_key.push('/');
            idempotency_key.push_str(itoa::Buffer::new().format(index));
        }
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
    pub(super) async fn attempt_ended(
        &mut self,
        myself: &ActorRef<RunMsg>,
        id: ExecId,
        result: Result<Value, StepFailure>,
    ) -> Result<(), ActorProcessingErr> {
        let exec = &mut self.execs[id];
        let step_id = exec.step_id.clone();
        let ExecKind::Agent(call) = &mut exec.kind else { unreachable!("an agent call") };
        call.actor = None;
        let result = result.map(Arc::new);
        let (status, output, error) = match &result {
            Ok(output) => (StepStatus::Completed, Some(Arc::clone(output)), None),
            Err(failure) => (StepStatus::Failed, None, Some(failure.message().to_string())),
        };
        let row_id = call.row_id.clone();
        record_attempt(call, status);
        // Counted against the policy: the attempts since the run was last retried.
        let attempt = call.attempt - call.before_retry;
        let max_attempts = call.agent.retry_policy().max_attempts();
        let agent_name = call.agent.name().to_string();
        let retry_in = match &result {
            Err(failure) if failure.is_retryable() && attempt < max_attempts => call.delays.next(),
            _ => None,
        };
        let end = self.attempt_end(row_id, status, output, error.clone());
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

    /// Ends every unfinished exec below `root`: in-flight calls are killed and their rows end
    /// CANCELLED (committed before this returns), pending retries are dropped.
    pub(super) async fn cancel_descendants(&mut self, root: ExecId, reason: &str) -> Result<(), ActorProcessingErr> {
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
            let row_id = call.row_id.clone();
            let end = self.attempt_end(row_id, StepStatus::Cancelled, None, Some(reason.to_string()));
            let event = self.attempt_event(id, StepStatus::Cancelled, Some(reason.to_string()));
            self.deps.persistence.write_and_report(WriteOp::AttemptEnded(Box::new(end)), event).await?;
        }
        Ok(())
    }

    /// Fails if an attempt's end queued without waiting was rejected. Called after a later write
    /// was acknowledged, when every earlier one is settled.
    pub(super) fn check_unconfirmed(&mut self) -> Result<(), PersistError> {
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
}

/// Counts an attempt that ended, and how long its call took.
fn record_attempt(call: &AgentCall, status: StepStatus) {
    let agent = call.agent.name().to_string();
    if let Some(started) = call.started {
        metrics::histogram!(names::ATTEMPT_DURATION, "agent" => agent.clone()).record(started.elapsed().as_secs_f64());
    }
    metrics::counter!(names::ATTEMPTS, "agent" => agent, "status" => status.as_str()).increment(1);
}
