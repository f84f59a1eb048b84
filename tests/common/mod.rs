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
