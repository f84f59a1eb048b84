//! Fault injection from inside ("buggify", after FoundationDB's simulation testing): faults fired at
//! chosen points of the executor's own code, reaching paths that faults from outside (killed
//! processes, a restarted database) cannot aim at, such as a StepActor dying after its call returned
//! and before its result was recorded.
//!
//! Compiled in only with the `buggify` cargo feature, which the nemesis test builds with; without
//! it, [`fire`] is a constant `false` the compiler removes, and no release build carries the hooks.
//! With it, each point fires with the probability in its environment variable (unset = never):
//!
//! | point | variable | what happens |
//! |---|---|---|
//! | [`Point::StepBeforeCall`] | `RUNVISOR_BUGGIFY_STEP_KILL` | the StepActor is killed before calling its agent |
//! | [`Point::StepAfterCall`] | `RUNVISOR_BUGGIFY_STEP_KILL` | the StepActor is killed after the call, its result lost |
//!
//! One variable drives both step points: each StepActor dies at most once, at one of the two, so
//! `0.3` kills 30 % of StepActors.

/// A place in the code where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    StepBeforeCall,
    StepAfterCall,
}

/// Whether the fault at `point` fires now.
#[cfg(feature = "buggify")]
pub fn fire(point: Point) -> bool {
    use rand::Rng;
    use std::sync::OnceLock;
    static STEP_KILL: OnceLock<f64> = OnceLock::new();
    let rate = *STEP_KILL
        .get_or_init(|| std::env::var("RUNVISOR_BUGGIFY_STEP_KILL").ok().and_then(|v| v.parse().ok()).unwrap_or(0.0));
    // Half of the kills before the call, half after it.
    let share = match point {
        Point::StepBeforeCall | Point::StepAfterCall => rate / 2.0,
    };
    share > 0.0 && rand::rng().random_bool(share.min(1.0))
}

/// Whether the fault at `point` fires now: never, in a build without the `buggify` feature.
#[cfg(not(feature = "buggify"))]
#[inline(always)]
pub fn fire(_: Point) -> bool {
    false
}
