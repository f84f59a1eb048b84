//! The built-in agents: for demos, tests and benchmarks, no services needed.

use std::time::Duration;

use serde_json::Value;

use super::{CallContext, StepFailure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Returns its input.
    Echo,
    /// `{"ms": N}`: waits N milliseconds (without blocking a thread), then returns its input.
    Sleep,
    /// `{"message", "times": N}`: fails attempts 1..N (retryably), then returns its input; without
    /// `times` it always fails, permanently.
    Fail,
    /// Panics inside its StepActor: the supervision path of a crashed step, on demand.
    Panic,
}

impl Builtin {
    pub const ALL: [(&'static str, Builtin); 4] =
        [("echo", Builtin::Echo), ("sleep", Builtin::Sleep), ("fail", Builtin::Fail), ("panic", Builtin::Panic)];

    pub fn named(name: &str) -> Option<Builtin> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }

    pub async fn call(self, input: &Value, ctx: &CallContext) -> Result<Value, StepFailure> {
        match self {
            Builtin::Echo => Ok(input.clone()),
            Builtin::Sleep => {
                let ms = match input.get("ms") {
                    None => 0,
                    Some(ms) => ms.as_u64().ok_or_else(|| {
                        StepFailure::Permanent(format!("sleep: 'ms' must be a non-negative integer, found {ms}"))
                    })?,
                };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(input.clone())
            }
            Builtin::Fail => {
                let message = input.get("message").and_then(Value::as_str).unwrap_or("failed on purpose").to_string();
                match input.get("times").and_then(Value::as_u64) {
                    Some(times) if u64::from(ctx.attempt) > times => Ok(input.clone()),
                    Some(_) => Err(StepFailure::Retryable(message)),
                    None => Err(StepFailure::Permanent(message)),
                }
            }
            Builtin::Panic => {
                let message = input.get("message").and_then(Value::as_str).unwrap_or("panic agent called");
                panic!("{message}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(attempt: u32) -> CallContext {
        CallContext {
            run_id: "r".into(),
            step_id: "s".into(),
            attempt,
            idempotency_key: "r/s".into(),
            correlation_id: "c".into(),
        }
    }

    #[tokio::test]
    async fn echo_sleep_and_fail() {
        let input = json!({"ms": 1, "x": [1]});
        assert_eq!(Builtin::Echo.call(&input, &ctx(1)).await, Ok(input.clone()));
        assert_eq!(Builtin::Sleep.call(&input, &ctx(1)).await, Ok(input.clone()));
        assert!(Builtin::Sleep.call(&json!({"ms": "x"}), &ctx(1)).await.is_err());
        let flaky = json!({"message": "boom", "times": 2});
        assert_eq!(Builtin::Fail.call(&flaky, &ctx(1)).await, Err(StepFailure::Retryable("boom".into())));
        assert_eq!(Builtin::Fail.call(&flaky, &ctx(2)).await, Err(StepFailure::Retryable("boom".into())));
        assert_eq!(Builtin::Fail.call(&flaky, &ctx(3)).await, Ok(flaky.clone()));
        assert_eq!(
            Builtin::Fail.call(&json!({}), &ctx(9)).await,
            Err(StepFailure::Permanent("failed on purpose".into()))
        );
    }
}
