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
use tracing::Instrument;

use crate::agents::{AgentHandle, CallContext, StepFailure};
use crate::faults::{self, Point};

#[derive(Debug)]
pub struct StepActor;

#[derive(Debug)]
pub struct StepArgs {
    pub agent: AgentHandle,
    pub input: Arc<Value>,
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

    async fn pre_start(&self, _: ActorRef<()>, args: StepArgs) -> Result<StepState, ActorProcessingErr> {
        Ok(StepState { args, result: None })
    }

    /// The call. Why here and not in a message handler: `post_start` runs in the actor's own task
    /// once `spawn_linked` has handed the actor to the RunActor, with the same supervision as a
    /// handler (a panic is `ActorFailed`, a kill ends it as killed), so the message that used to
    /// start the call (its allocation, its trip through the mailbox) bought nothing. The RunActor
    /// records this actor before it handles any exit event of it: exits reach it as messages,
    /// after the handler that spawned the actor has returned.
    async fn post_start(&self, myself: ActorRef<()>, state: &mut StepState) -> Result<(), ActorProcessingErr> {
        let args = &state.args;
        let context = &args.context;
        let span = tracing::info_span!("attempt", run_id = %context.run_id, step_id = %context.step_id, attempt = context.attempt);
        if faults::fire(Point::StepBeforeCall) {
            return killed(&myself, "before its call").await;
        }
        let result = async {
            let _permit = args.global_limit.acquire().await?;
            Ok::<_, ActorProcessingErr>(args.agent.call(&args.input, context).await)
        }
        .instrument(span)
        .await?;
        if faults::fire(Point::StepAfterCall) {
            return killed(&myself, "after its call, losing the result").await;
        }
        state.result = Some(result);
        myself.stop(None);
        Ok(())
    }
}

/// Kills this StepActor from inside (fault injection): the kill ends this handler too, so the
/// RunActor sees exactly what an outside kill produces.
async fn killed(myself: &ActorRef<()>, when: &str) -> Result<(), ActorProcessingErr> {
    tracing::warn!("fault injected: StepActor killed {when}");
    myself.kill();
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::AgentRegistry;
    use crate::config::Config;
    use ractor::SupervisionEvent;
    use serde_json::json;
    use tokio::sync::mpsc;

    /// A parent that forwards the exit events of its children.
    struct Parent(mpsc::UnboundedSender<SupervisionEvent>);

    impl Actor for Parent {
        type Msg = ();
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle_supervisor_evt(
            &self,
            _: ActorRef<()>,
            event: SupervisionEvent,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            let _ = self.0.send(event);
            Ok(())
        }
    }

    async fn exit_of(agent: &str, input: serde_json::Value, kill: bool) -> SupervisionEvent {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (parent, _) = Actor::spawn(None, Parent(tx), ()).await.unwrap();
        let registry = AgentRegistry::new(&Config::defaults(), &[]);
        let args = StepArgs {
            agent: registry.get(agent).unwrap().clone(),
            input: Arc::new(input),
            context: CallContext {
                run_id: "r".into(),
                step_id: "s".into(),
                attempt: 1,
                idempotency_key: "r/s".into(),
                correlation_id: "c".into(),
            },
            global_limit: Arc::new(Semaphore::new(1)),
        };
        let (step, _) = Actor::spawn_linked(None, StepActor, args, parent.get_cell()).await.unwrap();
        if kill {
            step.kill();
        }
        loop {
            let event = rx.recv().await.unwrap();
            if !matches!(event, SupervisionEvent::ActorStarted(_)) {
                parent.stop(None);
                return event;
            }
        }
    }

    #[tokio::test]
    async fn the_result_travels_in_the_exit_event() {
        let SupervisionEvent::ActorTerminated(_, Some(mut state), _) = exit_of("echo", json!({"a": 1}), false).await
        else {
            panic!("a clean exit with state")
        };
        let state = state.take::<StepState>().unwrap();
        assert_eq!(state.result, Some(Ok(json!({"a": 1}))));
    }

    #[tokio::test]
    async fn a_panic_arrives_as_actor_failed_and_a_kill_without_state() {
        let event = exit_of("panic", json!({"message": "boom"}), false).await;
        let SupervisionEvent::ActorFailed(_, error) = event else { panic!("{event:?}") };
        assert!(error.to_string().contains("boom"));
        let event = exit_of("sleep", json!({"ms": 60_000}), true).await;
        assert!(matches!(event, SupervisionEvent::ActorTerminated(_, None, Some(ref r)) if r == "killed"), "{event:?}");
    }
}
