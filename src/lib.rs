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
//! ingress actor (Kafka consumer group member; a poll loop task feeds it, and a group-health
//!                 task rejoins the group when a partition has no live consumer)
//!   └─ dispatches to ─ run supervisor (renews the leases of its runs)
//!        └─ RunActor, one per run ─ walks the plan
//!             └─ StepActor, one per agent call attempt (linked; a crash is a failed attempt)
//! sweeper (consume and dev) ─ hands the run supervisor runs that nothing else brings back
//! persistence actor ─ the only code that writes the database, batching writes into transactions
//! ```
//!
//! Beside the tree, in `runvisor api` and `dev` processes: the HTTP API ([`api`], axum), whose
//! handlers call the queries and commands of [`service`], with the dashboard ([`dashboard`]) on the
//! same server and its change feed (one database poller, pushing server-sent events to open pages);
//! and in every long-running process an outbox relay ([`service::outbox`]) that publishes requests
//! an API could not.
//!
//! The path of a request from the HTTP API: `POST /workflows/{id}/execute` → [`service::runs`]
//! inserts the PENDING run, its execution request (into `runvisor_outbox`) and an audit row in one
//! transaction → publishes the request and deletes the outbox row (if the broker does not take it,
//! a relay publishes it later) → 202.
//!
//! The path of a request through an executor: a poll loop hands bytes on
//! `workflow.execution.requests` to the ingress actor ([`kafka::ingress`]) → [`wire`] decodes them
//! (undecodable ones go to the dead-letter topic; a plan text seen before is shared, not decoded again) → the run supervisor starts a RunActor, which
//! checks the plan ([`plan::validate()`]) and claims the run in the database (a new run by one
//! insert batched with other writes, with its first call's attempt row in the same transaction; a
//! terminal run is left alone, a live one elsewhere is waited for, a dead executor's is resumed; a
//! claimed run whose plan is invalid ends FAILED) → the RunActor resolves each step's input
//! ([`plan::mapping`]), evaluates conditions ([`plan::condition`]) and spawns StepActors for agent
//! calls → every transition is written by the persistence actor into
//! the tables of the `entity` crate, and published as a monitoring update once committed → the
//! request's offset becomes committable once the run is terminal ([`kafka::offsets`]).
//!
//! Who writes a run: the producer side ([`service::runs`]) creates it PENDING, moves a FAILED or
//! CANCELLED run back to PENDING (retry), and cancels a PENDING or RUNNING one, each with a
//! conditional update; everything else (RUNNING, COMPLETED, FAILED, attempts) is the executor's,
//! through its persistence actor.
//!
//! ## Modules
//!
//! - [`actors`]: the supervisors, RunActor, StepActor, persistence actor, and run events;
//! - [`executor`]: the tree started and wired, with a small API to submit runs;
//! - [`agents`]: built-in and HTTP agents, retry policies, circuit breakers, the live registry;
//! - [`plan`]: the plan model, validation (and a cache of validated plans), the `${…}` language,
//!   input mapping and conditions;
//! - [`kafka`]: the transport: ingress actor and poll loop, offsets, group health, producers, the
//!   consumer lag as the broker sees it, the embedded broker;
//! - [`wire`]: the messages on the topics, shared by the API, Kafka and the actors, and
//!   depending on none of them;
//! - [`api`]: the HTTP routes, one file per resource, thin over [`service`];
//! - [`dashboard`]: the run dashboard in the browser, server-rendered pages under `/ui`, live
//!   through server-sent events from a database change feed;
//! - [`service`]: queries and commands on workflows, agents and runs (shared by the API and the CLI),
//!   the outbox, audit rows, validation of request fields;
//! - [`modes`]: the composition root: `consume`, `api`, `dev` assembled from the parts above;
//! - [`cli`]: the command line: arguments, output (text or JSON), exit codes, one-shot commands;
//! - [`bench`]: `runvisor bench`, which starts a broker, a database and an executor process and
//!   measures them (BENCHMARKS.md);
//! - [`observability`]: logging setup and the catalogue of Prometheus metrics;
//! - [`config`]: layered, validated settings (defaults → TOML → `RUNVISOR__…` env vars);
//! - [`db`]: connecting to the database and applying the schema (`migration` crate);
//! - [`report`]: run summaries for the command line;
//! - [`faults`]: fault injection at chosen points, compiled in only with the `buggify` feature;
//! - [`wording`]: type names and "did you mean" in words people read.

pub mod actors;
pub mod agents;
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod executor;
pub mod faults;
pub mod kafka;
pub mod modes;
pub mod observability;
pub mod plan;
pub mod report;
pub mod service;
pub mod wire;
pub mod wording;

pub use config::Config;
