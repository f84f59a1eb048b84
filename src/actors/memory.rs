//! A persistence actor that keeps nothing: writes are "committed" by acknowledging them, and kept
//! in a log only if asked. The actors' unit tests read that log; the engine benchmark runs the
//! actor runtime against it without one, to measure the runtime alone.

use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::persistence::{ClaimOutcome, Journal, PersistMsg, ReadRequest, WriteOp};

/// Every run is new to it, and no lease is ever lost.
#[derive(Debug)]
pub struct MemoryStore;

/// The journal to drain, and where to record its writes (`None`: drop them).
pub type MemoryStoreArgs = (Arc<Journal>, Option<Arc<Mutex<Vec<WriteOp>>>>);

impl Actor for MemoryStore {
    type Msg = PersistMsg;
    type State = MemoryStoreArgs;
    type Arguments = MemoryStoreArgs;

    async fn pre_start(
        &self,
        _: ActorRef<PersistMsg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<PersistMsg>,
        message: PersistMsg,
        (journal, log): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PersistMsg::Wake | PersistMsg::RetryAfterError => match log {
                Some(log) => {
                    journal.commit_all_with(|op| log.lock().unwrap_or_else(|p| p.into_inner()).push(op.clone()))
                }
                None => journal.commit_all_with(|_| {}),
            },
            PersistMsg::Read(ReadRequest::Agents(port)) => {
                let _ = port.send(Ok(Vec::new()));
            }
            PersistMsg::Read(ReadRequest::Definition(_, port)) => {
                let _ = port.send(Ok(None));
            }
            PersistMsg::Read(ReadRequest::Run(_, port)) => {
                let _ = port.send(Ok(None));
            }
            PersistMsg::Read(ReadRequest::Claim(_, port)) => {
                let _ = port.send(Ok(ClaimOutcome::Claimed {
                    history: Vec::new(),
                    taken_over: false,
                    retry_round: 0,
                    retried_at: None,
                    wrote_first_attempt: false,
                }));
            }
            PersistMsg::Read(ReadRequest::Renew { reply, .. }) => {
                let _ = reply.send(Ok(Vec::new()));
            }
            PersistMsg::Read(ReadRequest::Release { reply, .. }) => {
                let _ = reply.send(Ok(0));
            }
            // Nothing outlives the process here, so nothing is ever orphaned.
            PersistMsg::Read(ReadRequest::Orphans { reply, .. }) => {
                let _ = reply.send(Ok(Vec::new()));
            }
            // A member alone in its groups holds what it says.
            PersistMsg::Read(ReadRequest::Membership { held, reply, .. }) => {
                let _ =
                    reply.send(Ok(held.into_iter().map(|(_, partitions)| partitions.into_iter().collect()).collect()));
            }
        }
        Ok(())
    }
}
