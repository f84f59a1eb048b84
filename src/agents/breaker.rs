//! A circuit breaker per agent (CONTRACT.md §5).
//!
//! Closed: calls pass; the outcomes of the last `window` calls are kept. The breaker opens when that
//! window holds at least `failure_threshold` failures *and* its failure rate reaches
//! `failure_rate_threshold`. Open: calls fail at once, for `timeout_seconds`. Then half-open: up to
//! `half_open_max_calls` trial calls pass; one failure reopens it, that many successes close it.
//!
//! Only retryable failures count: a 4xx caused by one bad input says nothing about the agent's
//! health. Time is tokio's, so tests can move it with `tokio::time::advance`. Written out here rather than taken from a crate because the contract fixes this exact
//! combination of count, rate and half-open quota, which the maintained breaker crates model
//! differently.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::CircuitBreakerConfig;

#[derive(Debug)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    window: usize,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct State {
    mode: BreakerState,
    /// true = success, newest last (closed mode).
    outcomes: VecDeque<bool>,
    opened_at: Option<Instant>,
    /// Half-open: trial calls let through, and how many of them succeeded.
    trials_started: u32,
    trials_succeeded: u32,
}

/// The breaker refused a call: it is open, or half-open with its trial calls taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is open")]
pub struct Rejected;

/// Proof that a call was admitted, and in which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    trial: bool,
}

impl CircuitBreaker {
    pub fn new(config: CircuitBreakerConfig) -> Self {
        let window = (config.failure_threshold as usize * 2).max(10);
        Self {
            config,
            window,
            state: Mutex::new(State {
                mode: BreakerState::Closed,
                outcomes: VecDeque::new(),
                opened_at: None,
                trials_started: 0,
                trials_succeeded: 0,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().mode
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way that
        // matters more than losing the breaker; recover the guard.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a call may go ahead now.
    pub fn admit(&self) -> Result<Admission, Rejected> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Result<Admission, Rejected> {
        let mut state = self.lock();
        if state.mode == BreakerState::Open {
            let timeout = Duration::from_secs(self.config.timeout_seconds);
            if state.opened_at.is_some_and(|at| now.duration_since(at) >= timeout) {
                state.mode = BreakerState::HalfOpen;
                state.trials_started = 0;
                state.trials_succeeded = 0;
            } else {
                return Err(Rejected);
            }
        }
        if state.mode == BreakerState::HalfOpen {
            if state.trials_started >= self.config.half_open_max_calls {
                return Err(Rejected);
            }
            state.trials_started += 1;
            return Ok(Admission { trial: true });
        }
        Ok(Admission { trial: false })
    }

    /// Records the outcome of an admitted call.
    pub fn record(&self, admission: Admission, success: bool) {
        self.record_at(admission, success, Instant::now())
    }

    fn record_at(&self, admission: Admission, success: bool, now: Instant) {
        let mut state = self.lock();
        match (state.mode, admission.trial) {
            (BreakerState::HalfOpen, true) => {
                if success {
                    state.trials_succeeded += 1;
                    if state.trials_succeeded >= self.config.half_open_max_calls {
                        state.mode = BreakerState::Closed;
                        state.outcomes.clear();
                    }
                } else {
                    state.mode = BreakerState::Open;
                    state.opened_at = Some(now);
                }
            }
            (BreakerState::Closed, false) => {
                state.outcomes.push_back(success);
                if state.outcomes.len() > self.window {
                    state.outcomes.pop_front();
                }
                let failures = state.outcomes.iter().filter(|ok| !**ok).count();
                let rate = failures as f64 / state.outcomes.len() as f64;
                if failures >= self.config.failure_threshold as usize && rate >= self.config.failure_rate_threshold {
                    state.mode = BreakerState::Open;
                    state.opened_at = Some(now);
                    state.outcomes.clear();
                }
            }
            // Outcomes of calls admitted before the mode changed do not move the new mode.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 3,
            failure_rate_threshold: 0.5,
            timeout_seconds: 10,
            half_open_max_calls: 2,
        })
    }

    fn call(b: &CircuitBreaker, success: bool, now: Instant) -> Result<(), Rejected> {
        let admission = b.admit_at(now)?;
        b.record_at(admission, success, now);
        Ok(())
    }

    #[test]
    fn opens_on_count_and_rate_then_half_opens_and_closes() {
        let b = breaker();
        let t0 = Instant::now();
        // Successes keep the rate low: 3 failures among 7 calls is below 50%.
        for ok in [true, true, true, true, false, false, false] {
            call(&b, ok, t0).unwrap();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        call(&b, false, t0).unwrap(); // 4 of 8 = 50%
        assert_eq!(b.state(), BreakerState::Open);
        assert!(call(&b, true, t0 + Duration::from_secs(9)).is_err());
        // After the timeout: two trials allowed; both succeed → closed.
        let later = t0 + Duration::from_secs(10);
        let first = b.admit_at(later).unwrap();
        let second = b.admit_at(later).unwrap();
        assert!(b.admit_at(later).is_err(), "only half_open_max_calls trials");
        b.record_at(first, true, later);
        b.record_at(second, true, later);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_trial_reopens() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            call(&b, false, t0).unwrap();
        }
        assert_eq!(b.state(), BreakerState::Open);
        let later = t0 + Duration::from_secs(10);
        call(&b, false, later).unwrap();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit_at(later + Duration::from_secs(5)).is_err());
        assert!(b.admit_at(later + Duration::from_secs(10)).is_ok());
    }
}
