//! What a benchmark runs against: a tansu broker it starts, a fresh PostgreSQL database it creates
//! (and drops), and `runvisor consume` processes, each a real executor as deployed.
//!
//! The broker and the database may instead be given (`--brokers`, `--database-url`): then nothing
//! is started or dropped, and the figures are those of the given services.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

/// A port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_for_port(port: u16, what: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before it listened ({status})");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The tansu binary: `RUNVISOR_TEST_TANSU`, else `~/.cargo/bin/tansu`, else `tansu` on PATH.
pub fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("RUNVISOR_TEST_TANSU") {
        return PathBuf::from(path);
    }
    std::env::var("HOME")
        .map(|home| PathBuf::from(home).join(".cargo/bin/tansu"))
        .ok()
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("tansu"))
}

/// A tansu broker on a free port, storing into SQLite in a directory of its own.
#[derive(Debug)]
pub struct Tansu {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl Tansu {
    pub async fn start() -> anyhow::Result<Tansu> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("runvisor-bench-tansu-{port}"));
        std::fs::create_dir_all(&dir)?;
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("tansu.log"))?;
        let mut child = Command::new(tansu_binary())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&dir)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "cannot start tansu; install it with `cargo install tansu --version 0.6.0 --locked \
                 --no-default-features --features libsql`, or give --brokers",
            )?;
        wait_for_port(port, "tansu", &mut child).await?;
        Ok(Tansu { port, dir, child })
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A run's claim and end, in seconds since the epoch, from its `workflow_runs` row.
#[derive(Debug, Clone, Copy)]
pub struct RunTimes {
    /// `created_at`: the executor's clock when it claimed the run (it creates the row then).
    pub claimed: f64,
    /// `completed_at`: the executor's clock at the terminal write.
    pub ended: f64,
}

/// A database of the benchmark's own on a PostgreSQL server, created empty and dropped at the end.
#[derive(Debug)]
pub struct BenchDatabase {
    pub url: String,
    admin: DatabaseConnection,
    /// Set when this benchmark created the database (and so drops it).
    created: Option<String>,
    /// The server's postmaster, whose process tree is PostgreSQL's CPU.
    pub postmaster: Option<u32>,
}

impl BenchDatabase {
    /// Creates `runvisor_bench_<pid>` on the server `admin_url` reaches.
    pub async fn create(admin_url: &str) -> anyhow::Result<BenchDatabase> {
        let admin = Database::connect(admin_url)
            .await
            .with_context(|| format!("cannot reach PostgreSQL at {admin_url} (give --postgres-admin-url)"))?;
        let name = format!("runvisor_bench_{}", std::process::id());
        admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}")).await?;
        admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await?;
        let Some(url) = with_database(admin_url, &name) else {
            bail!("--postgres-admin-url must end in /<database>: {admin_url}")
        };
        let postmaster = postmaster_pid(&admin).await;
        Ok(BenchDatabase { url, admin, created: Some(name), postmaster })
    }

    /// A database someone else runs: used as it is, never dropped.
    pub async fn given(url: &str) -> anyhow::Result<BenchDatabase> {
        let admin = Database::connect(url).await.with_context(|| format!("cannot reach {url}"))?;
        let postmaster = postmaster_pid(&admin).await;
        Ok(BenchDatabase { url: url.to_string(), admin, created: None, postmaster })
    }

    /// PostgreSQL's processes that work for this benchmark: the postmaster's tree without the
    /// backends serving other databases.
    pub async fn pids(&self) -> Vec<u32> {
        let Some(postmaster) = self.postmaster else { return Vec::new() };
        let name = self.created.clone().unwrap_or_else(|| database_name(&self.url).into());
        let others = sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' \
                 AND datname IS DISTINCT FROM '{name}' AND pid <> pg_backend_pid()"
            ),
        );
        let excluded: Vec<u32> = match self.admin.query_all_raw(others).await {
            Ok(rows) => rows.iter().filter_map(|r| r.try_get::<i32>("", "pid").ok()).map(|p| p as u32).collect(),
            Err(_) => Vec::new(),
        };
        super::procstat::tree(postmaster, &excluded)
    }

    /// Migrates the database and adds the trigger that tells the client when runs end.
    pub async fn prepare(&self) -> anyhow::Result<()> {
        let config =
            crate::config::DatabaseConfig { url: self.url.clone(), ..crate::config::Config::defaults().database };
        let db = crate::db::connect(&config).await?;
        crate::db::migrate(&db).await?;
        super::workload::install_end_trigger(&db).await?;
        db.close().await?;
        Ok(())
    }

    /// When each run whose id is `LIKE pattern` was claimed and when it ended, as the executor's
    /// own timestamps say (seconds since the epoch; the columns hold UTC).
    pub async fn run_times(&self, pattern: &str) -> anyhow::Result<HashMap<String, RunTimes>> {
        let db = Database::connect(&self.url).await?;
        let statement = sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT run_id, EXTRACT(EPOCH FROM created_at)::float8 AS claimed, \
             EXTRACT(EPOCH FROM completed_at)::float8 AS ended FROM workflow_runs WHERE run_id LIKE $1",
            [pattern.into()],
        );
        let rows = db.query_all_raw(statement).await?;
        db.close().await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let times = RunTimes { claimed: r.try_get("", "claimed").ok()?, ended: r.try_get("", "ended").ok()? };
                Some((r.try_get::<String>("", "run_id").ok()?, times))
            })
            .collect())
    }

    pub async fn drop_database(self) {
        match &self.created {
            Some(name) => {
                let _ = self.admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
            }
            None => super::workload::remove_end_trigger(&self.admin).await,
        }
    }
}

/// A URL cut around the database it names: what comes before `/<database>`, the name, and the
/// query with its `?`. The query is kept apart because its values may hold slashes of their own
/// (`…/db?host=/var/run/postgresql`, the Unix-socket connection README recommends).
fn database_parts(url: &str) -> Option<(&str, &str, &str)> {
    let (path, query) = url.split_at(url.find(['?', '#']).unwrap_or(url.len()));
    let (server, name) = path.rsplit_once('/')?;
    Some((server, name, query))
}

/// The database a URL names, without the query.
fn database_name(url: &str) -> &str {
    database_parts(url).map_or("", |(_, name, _)| name)
}

/// The same URL naming database `name` instead, query kept.
fn with_database(url: &str, name: &str) -> Option<String> {
    database_parts(url).map(|(server, _, query)| format!("{server}/{name}{query}"))
}

/// The postmaster is the parent of every backend; a local server's only (else no CPU figure).
async fn postmaster_pid(db: &DatabaseConnection) -> Option<u32> {
    let statement =
        sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, "SELECT pg_backend_pid() AS pid".to_string());
    let row = db.query_one_raw(statement).await.ok()??;
    let backend = row.try_get::<i32>("", "pid").ok()? as u32;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
}

/// A `runvisor consume` process: an executor exactly as deployed, configured by environment.
#[derive(Debug)]
pub struct ExecutorProcess {
    child: Child,
}

impl ExecutorProcess {
    pub fn start(
        binary: &Path,
        config: Option<&Path>,
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<ExecutorProcess> {
        let log = std::fs::File::create(log)?;
        let mut command = Command::new(binary);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let child = command
            .arg("consume")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} consume", binary.display()))?;
        Ok(ExecutorProcess { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the executor has exited (a crashed executor would otherwise look like a slow one).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the executor exited ({status}); see its log");
        }
        Ok(())
    }

    /// SIGTERM, and wait for the exit (offsets committed, leases released).
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for ExecutorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    /// A given database's CPU is told apart by its name, so a URL's query must not stick to it.
    #[test]
    fn the_database_name_leaves_the_query_out() {
        assert_eq!(super::database_name("postgres://u@h:5432/runs"), "runs");
        assert_eq!(super::database_name("postgres://u@localhost/runs?host=/var/run/postgresql"), "runs");
    }

    /// The bench's own database is reached the way the admin URL reaches the server, socket included.
    #[test]
    fn the_bench_database_keeps_the_admin_urls_query() {
        assert_eq!(
            super::with_database("postgres://u@localhost/postgres?host=/var/run/postgresql", "b").as_deref(),
            Some("postgres://u@localhost/b?host=/var/run/postgresql")
        );
        assert_eq!(super::with_database("postgres://u@h:5432/postgres", "b").as_deref(), Some("postgres://u@h:5432/b"));
    }
}
