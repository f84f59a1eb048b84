//! The StepActor: one agent call attempt, in an actor of its own.
//!
//! It is spawned linked to its RunActor, makes the call, keeps the result in its state and stops.
//! The result therefore reaches the RunActor *inside* the exit event (ractor hands a cleanly stopped
//! actor's final state to its supervisor), so no message can be overtaken by the exit: a clean exit
//! carries the result, a panic arrives as `ActorFailed`, a kill as a termination without state.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::agents::{AgentHandle, CallContext, StepFailure};

#[derive(Debug)]
pub struct StepActor;

#[derive(Debug)]
pub struct StepArgs {
    pub agent: AgentHandle,
    pub input: Value,
    pub context: CallContext,
    /// `executor.max_parallel_steps`, shared by every StepActor of the executor.
    pub global_limit: Arc<Semaphore>,
}

/// The StepActor's state; its `result` is what the RunActor reads from the exit event.
#[derive(Debug)]
pub struct StepState {
    args: StepArgs,
    pub result: Option<Result<Value, StepFailure>>,
}

impl Actor for StepActor {
    type Msg = ();
    type State = StepState;
    type Arguments = StepArgs;

    async fn pre_start(&self, myself: ActorRef<()>, args: StepArgs) -> Result<StepState, ActorProcessingErr> {
        // The call runs in `handle`, after `spawn_linked` has returned to the RunActor, so the
        // RunActor has recorded this actor before any exit event of it can exist.
        myself.cast(())?;
        Ok(StepState { args, result: None })
    }

    async fn handle(&self, myself: ActorRef<()>, _: (), state: &mut StepState) -> Result<(), ActorProcessingErr> {
        let args = &state.args;
        let result = {
            let _permit = args.global_limit.acquire().await?;
            args.agent.call(&args.input, &args.context).await
        };
        state.result = Some(result);
        myself.stop(None);
        Ok(())
    }
}
