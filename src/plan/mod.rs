//! Workflow plans (CONTRACT.md §3): what a run executes.
//!
//! - [`model`]: the plan as received ([`PlanDocument`]) and as validated ([`Plan`]);
//! - [`mod@validate`]: every rule of the contract, all problems reported at once;
//! - [`lint`]: warnings about what a valid plan probably got wrong;
//! - [`expr`]: the `${…}` reference language;
//! - [`mapping`]: building an agent's input from a step's `input_mapping`;
//! - [`condition`]: the expression language of `conditional` steps.
//!
//! Nothing here performs I/O or knows about actors: the run actor asks these modules what a step
//! needs and what a value is, and they answer from plain data.

pub mod cache;
pub mod condition;
pub mod expr;
pub mod lint;
pub mod mapping;
pub mod model;
pub mod validate;

pub use model::{Plan, PlanDocument, Step, StepKind};
pub use validate::{AgentCatalog, InvalidPlan, Problem, validate, validate_text};
