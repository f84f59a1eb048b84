//! The schema of runvisor's tables (CONTRACT.md §4), as sea-orm migrations.
//!
//! One code path serves PostgreSQL (production) and SQLite (the embedded default): sea-query renders
//! `json_binary` as `jsonb` and `timestamp` as `timestamp without time zone` on PostgreSQL, and as
//! text affinities on SQLite. The only backend-specific piece is the expression for "now in UTC",
//! because PostgreSQL's `CURRENT_TIMESTAMP` follows the session's time zone.
//!
//! Every statement is `IF NOT EXISTS`, so `runvisor migrate` also adopts a database whose tables the
//! platform already created, and applying the migrations twice is a no-op.

pub use sea_orm_migration::prelude::*;

mod m20261127_000001_create_tables;
mod m20261127_000002_run_leases;
mod m20261127_000003_group_members;
mod m20261202_000004_api;
mod m20261202_000005_attempt_executor;
mod m20261202_000006_runs_updated_at;

#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_tables::Migration),
            Box::new(m20261127_000002_run_leases::Migration),
            Box::new(m20261127_000003_group_members::Migration),
            Box::new(m20261202_000004_api::Migration),
            Box::new(m20261202_000005_attempt_executor::Migration),
            Box::new(m20261202_000006_runs_updated_at::Migration),
        ]
    }
}
