//! What the executor reports as runs progress: the source of monitoring updates (CONTRACT.md §6).
//!
//! The run actor emits an [`Event`] right after the row it describes is committed, so a consumer
//! never hears of a state the database does not hold yet. Sinks must not block: the Kafka sink
//! hands events to the producer's queue, the test sink to a channel.

use entity::{RunStatus, StepStatus};
use serde_json::json;

use crate::wire::{MonitoringUpdate, RUN_STEP_ID, timestamp_now};

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Run {
        run_id: String,
        workflow_name: String,
        status: RunStatus,
        error: Option<String>,
    },
    Attempt {
        run_id: String,
        step_id: String,
        agent_name: String,
        step_execution_id: String,
        attempt: u32,
        status: StepStatus,
        error: Option<String>,
    },
}

impl Event {
    pub fn run_id(&self) -> &str {
        match self {
            Event::Run { run_id, .. } | Event::Attempt { run_id, .. } => run_id,
        }
    }

    /// The monitoring update this event is published as.
    pub fn to_update(&self) -> MonitoringUpdate {
        match self {
            Event::Run { run_id, workflow_name, status, error } => MonitoringUpdate {
                run_id: run_id.clone(),
                step_id: RUN_STEP_ID.into(),
                step_name: workflow_name.clone(),
                status: status.as_str().into(),
                timestamp: timestamp_now(),
                metadata: match error {
                    Some(error) => json!({"error": error}),
                    None => json!({}),
                },
            },
            Event::Attempt { run_id, step_id, agent_name, step_execution_id, attempt, status, error } => {
                let mut metadata = json!({"step_execution_id": step_execution_id, "attempt": attempt});
                if let Some(error) = error {
                    metadata["error"] = json!(error);
                }
                MonitoringUpdate {
                    run_id: run_id.clone(),
                    step_id: step_id.clone(),
                    step_name: agent_name.clone(),
                    status: status.as_str().into(),
                    timestamp: timestamp_now(),
                    metadata,
                }
            }
        }
    }
}

/// Where events go. Implementations must return quickly.
pub trait EventSink: Send + Sync + std::fmt::Debug + 'static {
    fn emit(&self, event: Event);
}

/// Drops every event.
#[derive(Debug, Default)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _: Event) {}
}

/// Sends events to a channel (tests, the CLI).
#[derive(Debug)]
pub struct ChannelSink(pub tokio::sync::mpsc::UnboundedSender<Event>);

impl EventSink for ChannelSink {
    fn emit(&self, event: Event) {
        let _ = self.0.send(event);
    }
}

/// Sends every event to each of several sinks (monitoring topic and a local observer, say).
#[derive(Debug)]
pub struct Fanout(pub Vec<std::sync::Arc<dyn EventSink>>);

impl EventSink for Fanout {
    fn emit(&self, event: Event) {
        for sink in &self.0 {
            sink.emit(event.clone());
        }
    }
}
