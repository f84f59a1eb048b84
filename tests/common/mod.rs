//! The shared harness of the black-box tests: real databases, fresh for each test.
//!
//! PostgreSQL is found at `RUNVISOR_TEST_POSTGRES_URL` (default: the local server with trust auth
//! that `.ci/run` makes sure is running). Each test gets its own database, dropped afterwards, so
//! tests run in parallel without seeing each other's rows. A test that needs PostgreSQL fails when
//! it is unreachable; it never skips.

#![allow(dead_code)]

use std::path::PathBuf;

use runvisor::config::DatabaseConfig;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn postgres_admin_url() -> String {
    std::env::var("RUNVISOR_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string())
}

/// The directory of the contract's example plans.
pub fn shared_examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/examples")
}

/// The project's own example plans.
pub fn project_examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// A database that exists for one test.
pub struct TestDb {
    pub db: DatabaseConnection,
    pub config: DatabaseConfig,
    /// What to remove afterwards.
    cleanup: Cleanup,
}

enum Cleanup {
    Postgres { admin_url: String, name: String },
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
}

fn database_config(url: String) -> DatabaseConfig {
    DatabaseConfig { url, max_connections: 4, connect_timeout_ms: 10_000 }
}

impl TestDb {
    /// A new, empty PostgreSQL database.
    pub async fn postgres() -> TestDb {
        let admin_url = postgres_admin_url();
        let admin = Database::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is required at {admin_url} (set RUNVISOR_TEST_POSTGRES_URL): {e}"));
        let name = format!("runvisor_test_{}", uuid::Uuid::new_v4().simple());
        admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
        admin.close().await.ok();
        let (base, _) = admin_url.rsplit_once('/').expect("the PostgreSQL URL names a database");
        let config = database_config(format!("{base}/{name}"));
        let db = runvisor::db::connect(&config).await.expect("connect to the test database");
        TestDb { db, config, cleanup: Cleanup::Postgres { admin_url, name } }
    }

    /// A new SQLite database in a temporary directory.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = database_config(format!("sqlite://{}?mode=rwc", dir.path().join("runvisor.db").display()));
        let db = runvisor::db::connect(&config).await.expect("open SQLite");
        TestDb { db, config, cleanup: Cleanup::Sqlite(dir) }
    }

    /// Both backends, for tests that must hold on each.
    pub async fn each() -> [TestDb; 2] {
        [TestDb::postgres().await, TestDb::sqlite().await]
    }

    pub async fn migrated(self) -> TestDb {
        runvisor::db::migrate(&self.db).await.expect("migrate");
        self
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Runs a raw query and returns its rows as JSON objects.
    pub async fn query(&self, sql: &str) -> Vec<serde_json::Value> {
        use sea_orm::JsonValue;
        JsonValue::find_by_statement(Statement::from_string(self.backend(), sql))
            .all(&self.db)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

use sea_orm::FromQueryResult;

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Cleanup::Postgres { admin_url, name } = &self.cleanup {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs outside any runtime's async context; a short-lived thread with its own
            // runtime removes the database.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                runtime.block_on(async {
                    let admin = Database::connect(&admin_url).await.ok()?;
                    admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
                })
            });
            let _ = dropped.join();
        }
    }
}

use std::sync::Arc;

use runvisor::Config;
use runvisor::actors::events::{ChannelSink, Event};
use runvisor::actors::run::{RunRequest, Spawned};
use runvisor::config::RetryPolicy;
use runvisor::executor::{Executor, ExecutorOptions};
use runvisor::kafka::messages::PlanSource;
use tokio::sync::mpsc;

/// Defaults with retries fast enough for tests.
pub fn test_config() -> Config {
    let mut config = Config::defaults();
    config.executor.retry =
        RetryPolicy { max_retries: 3, initial_delay_ms: 1, max_delay_ms: 10, backoff_multiplier: 2.0 };
    config
}

/// An executor on a test database, with its events and spawned actors observable.
pub struct TestExecutor {
    pub executor: Executor,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub spawned: mpsc::UnboundedReceiver<Spawned>,
}

impl TestDb {
    pub async fn executor(&self, config: &Config) -> TestExecutor {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (tap, spawned) = mpsc::unbounded_channel();
        let options = ExecutorOptions { events: Some(Arc::new(ChannelSink(events_tx))), tap: Some(tap) };
        let executor = Executor::start(config, self.db.clone(), options).await.expect("executor starts");
        TestExecutor { executor, events, spawned }
    }
}

/// A request for an inline plan.
pub fn request(run_id: &str, plan: serde_json::Value, input: serde_json::Value) -> RunRequest {
    let serde_json::Value::Object(input) = input else { panic!("input must be an object") };
    RunRequest { run_id: run_id.into(), plan: PlanSource::Inline(plan), definition_id: None, input, triggered_by: None }
}

/// A plan document from its steps (each step's `id` is filled in from its key).
pub fn plan(start: &str, steps: serde_json::Value) -> serde_json::Value {
    let serde_json::Value::Object(steps) = steps else { panic!("steps must be an object") };
    let steps: serde_json::Map<String, serde_json::Value> = steps
        .into_iter()
        .map(|(id, mut step)| {
            step["id"] = serde_json::Value::String(id.clone());
            (id, step)
        })
        .collect();
    serde_json::json!({"name": "test-plan", "start_step": start, "steps": steps})
}
