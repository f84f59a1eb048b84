//! # runvisor
//!
//! A workflow executor: producers publish execution requests to Kafka; runvisor runs each as a
//! supervised walk of a workflow plan whose steps call agents, and records every status change in
//! PostgreSQL (or SQLite when embedded). The formats it shares with the platform it serves are fixed
//! in `../shared/CONTRACT.md`.
//!
//! ## Architecture
//!
//! The supervision tree, as the design fixes it (DEVELOPERS.md):
//!
//! ```text
//! ingress actor (Kafka consumer group member)
//!   └─ run supervisor
//!        └─ RunActor, one per run ─ walks the plan
//!             └─ StepActor, one per agent call attempt (linked; a crash is a failed attempt)
//! persistence actor ─ the only code that writes the database, batching writes into transactions
//! ```
//!
//! The path of a request: bytes on `workflow.execution.requests` → [`kafka::messages`] decodes them
//! (undecodable ones go to the dead-letter topic) → the plan is checked by [`plan::validate`] → a
//! RunActor resolves each step's input ([`plan::mapping`]), evaluates conditions
//! ([`plan::condition`]) and spawns StepActors for agent calls → every transition is written by
//! the persistence actor into the tables of the `entity` crate → the offset is committed once the
//! run is terminal.
//!
//! ## Modules
//!
//! - [`actors`]: the supervisors, RunActor, StepActor, persistence actor, and run events;
//! - [`executor`]: the tree started and wired, with a small API to submit runs;
//! - [`agents`]: built-in and HTTP agents, retry policies, circuit breakers, the registry;
//! - [`plan`]: the plan model, validation, the `${…}` language, input mapping and conditions;
//! - [`kafka`]: the wire formats of the topics;
//! - [`config`]: layered, validated settings (defaults → TOML → `RUNVISOR__…` env vars);
//! - [`db`]: connecting to the database and applying the schema (`migration` crate);
//! - [`report`]: run summaries for the command line.
//!
//! The Kafka ingress and the HTTP API arrive with the issues that build them, in `kafka/` and
//! `api/`.

pub mod actors;
pub mod agents;
pub mod config;
pub mod db;
pub mod executor;
pub mod kafka;
pub mod plan;
pub mod report;

pub use config::Config;
