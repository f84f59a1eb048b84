//! sea-orm entities for the four tables of the platform's contract (CONTRACT.md §4), the platform
//! API's `audit_logs`, and the tables runvisor keeps for itself (`runvisor_group_members`,
//! `runvisor_outbox`).
//!
//! Column names and status strings are fixed by the contract because the platform's Python API reads
//! and writes the same rows; everything runvisor adds is nullable or has a default, so the platform's
//! own inserts (which name only the contract's columns) keep working. The schema itself lives in the
//! `migration` crate; these structs must agree with it, which `tests/schema.rs` checks on both
//! PostgreSQL and SQLite.
//!
//! Timestamps are `chrono::NaiveDateTime` holding UTC: the platform reads them as `timestamp without
//! time zone`, so an offset-aware type would make the two sides disagree.

pub mod agent;
pub mod audit_log;
pub mod group_member;
pub mod outbox;
pub mod status;
pub mod step_execution;
pub mod workflow_definition;
pub mod workflow_run;

pub use status::{RunStatus, StepStatus};

pub mod prelude {
    //! The entities under the names the rest of the code uses for them.
    pub use super::agent::Entity as Agents;
    pub use super::audit_log::Entity as AuditLogs;
    pub use super::group_member::Entity as GroupMembers;
    pub use super::outbox::Entity as Outbox;
    pub use super::step_execution::Entity as StepExecutions;
    pub use super::workflow_definition::Entity as WorkflowDefinitions;
    pub use super::workflow_run::Entity as WorkflowRuns;
}
