//! The shared harness of the black-box tests: real databases, fresh for each test.
//!
//! PostgreSQL is found at `RUNVISOR_TEST_POSTGRES_URL` (default: the local server with trust auth
//! that `.ci/run` makes sure is running). Each test gets its own database, dropped afterwards, so
//! tests run in parallel without seeing each other's rows. A test that needs PostgreSQL fails when
//! it is unreachable; it never skips.

#![allow(dead_code)]

pub mod api;

use runvisor::Config;
use runvisor::actors::events::{ChannelSink, Event};
use runvisor::actors::run::{RunRequest, Spawned};
use runvisor::config::DatabaseConfig;
use runvisor::config::RetryPolicy;
use runvisor::executor::{Executor, ExecutorOptions};
use runvisor::wire::PlanSource;
use sea_orm::FromQueryResult;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn postgres_admin_url() -> String {
    std::env::var("RUNVISOR_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string())
}

/// The directory of the contract's example plans.
pub fn shared_examples() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/examples");
    // A checkout without the shared contract beside it would otherwise fail later, as a plan that
    // "does not validate" with nothing on stdout.
    assert!(
        dir.is_dir(),
        "{} is missing: the tests need ../shared (the contract and its examples) beside the checkout",
        dir.display()
    );
    dir
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

    /// Runs `sql` on PostgreSQL as the administrator, outside the test database's pool; `{db}`
    /// in it stands for the test database's name. For faults a test injects from outside.
    pub async fn as_admin(&self, sql: &str) {
        let Cleanup::Postgres { admin_url, name } = &self.cleanup else {
            panic!("only PostgreSQL has an administrator")
        };
        let admin = Database::connect(admin_url).await.expect("connect as the administrator");
        let sql = sql.replace("{db}", name);
        admin.execute_unprepared(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        admin.close().await.ok();
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

/// Defaults with retries fast enough for tests.
pub fn test_config() -> Config {
    let mut config = Config::defaults();
    config.executor.retry =
        RetryPolicy { max_retries: 3, initial_delay_ms: 1, max_delay_ms: 10, backoff_multiplier: 2.0 };
    // The dashboard's live pages see changes within a tenth of a second.
    config.api.live_poll_ms = 100;
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
        let options = ExecutorOptions { events: Some(Arc::new(ChannelSink(events_tx))), tap: Some(tap), sweep: false };
        let executor = Executor::start(config, self.db.clone(), options).await.expect("executor starts");
        TestExecutor { executor, events, spawned }
    }
}

/// A request for an inline plan.
pub fn request(run_id: &str, plan: serde_json::Value, input: serde_json::Value) -> RunRequest {
    assert!(input.is_object(), "input must be an object");
    RunRequest {
        run_id: run_id.into(),
        plan: PlanSource::Inline(plan.into()),
        definition_id: None,
        input: input.into(),
        triggered_by: None,
    }
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

/// Restarts the local PostgreSQL cluster (the one `.ci/run` starts) with `pg_ctlcluster`.
pub fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .max()
        .unwrap();
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "PostgreSQL restarted");
}

/// A tansu broker process of one test, on a free port, storing in SQLite in its own directory.
/// Found at `RUNVISOR_TEST_TANSU`, else on PATH or in ~/.cargo/bin; `.ci/run` installs it.
pub struct Tansu {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<std::process::Child>,
}

/// The same binary `runvisor bench` starts.
pub use runvisor::bench::services::{free_port, tansu_binary};

impl Tansu {
    pub async fn start() -> Tansu {
        let mut tansu = Tansu { port: free_port().unwrap(), dir: tempfile::tempdir().unwrap(), process: None };
        tansu.launch().await;
        tansu
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // Beside the executors' logs, where a failed test's story can be read afterwards.
        let path = std::env::temp_dir().join(format!("tansu-{}.log", self.port));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        let child = std::process::Command::new(tansu_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            // tansu logs every span at info; its group coordinator's decisions are what matter here.
            .env(
                "RUST_LOG",
                std::env::var("RUNVISOR_TEST_TANSU_LOG")
                    .unwrap_or_else(|_| "warn,tansu_broker::coordinator::group::administrator=info".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("tansu is required (cargo install tansu --version 0.6.0 --locked --no-default-features --features libsql): {e}")
            });
        self.process = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "tansu did not start listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port and storage.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Starts a killed broker again on the same port and storage.
    pub async fn start_again(&mut self) {
        assert!(self.process.is_none(), "the broker is running");
        self.launch().await;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `runvisor consume` process: one executor of a consumer group.
pub struct ExecutorProcess {
    child: std::process::Child,
    pub name: String,
}

impl ExecutorProcess {
    /// Starts `runvisor consume` against `brokers` and `database_url` in consumer group `group`.
    pub fn start(
        name: &str,
        brokers: &str,
        database_url: &str,
        group: &str,
        extra_env: &[(&str, &str)],
    ) -> ExecutorProcess {
        let log = std::fs::File::create(std::env::temp_dir().join(format!("runvisor-{group}-{name}.log"))).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_runvisor"));
        command
            .arg("consume")
            .env("RUNVISOR__KAFKA__BROKERS", brokers)
            .env("RUNVISOR__DATABASE__URL", database_url)
            .env("RUNVISOR__KAFKA__GROUP_ID", group)
            .env("RUNVISOR__KAFKA__TOPIC_PARTITIONS", "4")
            .env("RUNVISOR__EXECUTOR__LEASE_MS", "3000")
            .env("RUNVISOR__EXECUTOR__OWNER_ID", format!("{group}-{name}"))
            .env("RUST_LOG", "info,sqlx=warn,librdkafka=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        ExecutorProcess { child: command.spawn().expect("runvisor consume starts"), name: name.into() }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().unwrap()
    }
}

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `runvisor api` process on a free port.
pub struct ApiProcess {
    child: std::process::Child,
    pub base: String,
}

impl ApiProcess {
    /// Starts `runvisor api` and waits until it answers `/health`.
    pub async fn start(brokers: &str, database_url: &str, extra_env: &[(&str, &str)]) -> ApiProcess {
        let port = free_port().unwrap();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("runvisor-api-{port}.log"))).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_runvisor"));
        command
            .arg("api")
            .env("RUNVISOR__KAFKA__BROKERS", brokers)
            .env("RUNVISOR__DATABASE__URL", database_url)
            .env("RUNVISOR__KAFKA__TOPIC_PARTITIONS", "4")
            .env("RUNVISOR__API__LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,sqlx=warn,librdkafka=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let child = command.spawn().expect("runvisor api starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while client.get(format!("{base}/health")).send().await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "runvisor api did not answer /health on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ApiProcess { child, base }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
