//! Agents: what a step calls (CONTRACT.md §5).
//!
//! - [`builtin`]: `echo`, `sleep`, `fail`, `panic`, always available;
//! - [`http`]: HTTP agents speaking JSON-RPC 2.0 `message/send` or the simple JSON protocol;
//! - [`breaker`]: the per-agent circuit breaker;
//! - [`registry`]: the names a plan may use — built-ins, `[agents.*]` config and the `agents` table;
//! - [`live`]: the registry an executor calls through, rebuilt when the `agents` table changes.
//!
//! A call's failure is classified as [`StepFailure::Retryable`] or [`StepFailure::Permanent`]; the
//! run actor retries only the former, per the agent's [`RetryPolicy`].

pub mod breaker;
pub mod builtin;
pub mod http;
pub mod live;
pub mod registry;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde_json::Value;
use tokio::sync::Semaphore;

pub use crate::config::RetryPolicy;
pub use live::LiveRegistry;
pub use registry::AgentRegistry;

/// Why an agent call attempt failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepFailure {
    /// Connection errors, time-outs, HTTP 5xx/408/429, crashed StepActors.
    #[error("{0}")]
    Retryable(String),
    /// Other 4xx, malformed responses, JSON-RPC errors, non-completed task states, an open breaker.
    #[error("{0}")]
    Permanent(String),
}

impl StepFailure {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Retryable(m) | Self::Permanent(m) => m,
        }
    }
}

/// What an agent is told about the call it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    pub run_id: String,
    pub step_id: String,
    /// 1-based attempt number of this call.
    pub attempt: u32,
    /// `<run_id>/<step_id>[/<iteration>]`: the same for every attempt of one call, so an agent can
    /// deduplicate the repeats that retries and crash recovery cause.
    pub idempotency_key: String,
    /// The `step_executions.id` of this attempt, sent as `X-Correlation-ID`.
    pub correlation_id: String,
}

impl RetryPolicy {
    /// The delays before attempts 2, 3, … of a call (CONTRACT.md §5:
    /// `min(initial × multiplier^(k-1), max)` before attempt k+1), without jitter so that the
    /// schedule is the one documented.
    pub fn backoff(&self) -> ExponentialBackoff {
        let initial = Duration::from_millis(self.initial_delay_ms);
        ExponentialBuilder::default()
            .with_min_delay(initial)
            .with_max_delay(Duration::from_millis(self.max_delay_ms).max(initial))
            .with_factor(self.backoff_multiplier.max(1.0) as f32)
            .with_max_times(self.max_attempts() as usize - 1)
            .build()
    }
}

/// How an agent is reached.
#[derive(Debug)]
pub enum AgentKind {
    Builtin(builtin::Builtin),
    Http(http::HttpAgent),
}

/// A callable agent with its policies. Cheap to clone; shared by every run.
#[derive(Debug, Clone)]
pub struct AgentHandle(Arc<AgentEntry>);

#[derive(Debug)]
pub struct AgentEntry {
    pub name: String,
    pub kind: AgentKind,
    pub retry: RetryPolicy,
    /// HTTP agents only: built-ins never fail for reasons a breaker could help with.
    pub breaker: Option<breaker::CircuitBreaker>,
    /// `max_concurrency`: calls to this agent in flight across all runs.
    pub limit: Option<Arc<Semaphore>>,
}

impl AgentHandle {
    pub fn new(entry: AgentEntry) -> Self {
        Self(Arc::new(entry))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.0.retry
    }

    pub fn breaker(&self) -> Option<&breaker::CircuitBreaker> {
        self.0.breaker.as_ref()
    }

    /// One attempt: breaker check, concurrency limit, the call, and the breaker's bookkeeping.
    pub async fn call(&self, input: &Value, ctx: &CallContext) -> Result<Value, StepFailure> {
        let entry = &self.0;
        let trial =
            match &entry.breaker {
                Some(breaker) => Some(breaker.admit().map_err(|_| {
                    StepFailure::Permanent(format!("Circuit breaker is OPEN for agent '{}'", entry.name))
                })?),
                None => None,
            };
        let _permit = match &entry.limit {
            Some(limit) => Some(limit.acquire().await.expect("agent limit semaphores are never closed")),
            None => None,
        };
        let result = match &entry.kind {
            AgentKind::Builtin(builtin) => builtin.call(input, ctx).await,
            // Boxed: an HTTP call's future (reqwest's) is kilobytes, and unboxed it would size every
            // StepActor's task, built-in calls included, for as long as the call lasts.
            AgentKind::Http(http) => Box::pin(http.call(input, ctx)).await,
        };
        if let (Some(breaker), Some(trial)) = (&entry.breaker, trial) {
            breaker.record(trial, !matches!(result, Err(StepFailure::Retryable(_))));
            let state = match breaker.state() {
                breaker::BreakerState::Closed => 0.0,
                breaker::BreakerState::HalfOpen => 1.0,
                breaker::BreakerState::Open => 2.0,
            };
            metrics::gauge!(crate::observability::metrics::BREAKER_STATE, "agent" => entry.name.clone()).set(state);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_schedule_is_the_contracts() {
        let policy = RetryPolicy { max_retries: 5, initial_delay_ms: 100, max_delay_ms: 500, backoff_multiplier: 2.0 };
        let delays: Vec<u64> = policy.backoff().map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 500]);
        let once = RetryPolicy { max_retries: 0, ..policy };
        assert_eq!(once.max_attempts(), 1);
        assert_eq!(once.backoff().count(), 0);
    }
}
