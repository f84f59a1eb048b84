//! Opening the database and applying the schema.
//!
//! At run time only the persistence actor holds a connection (DEVELOPERS.md); this module is what
//! it, `runvisor migrate` and the tests use to get one. SQLite runs in WAL mode with a busy timeout,
//! so the embedded database tolerates a reader (the CLI, the API) beside the writer.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr, RuntimeErr};

use crate::config::DatabaseConfig;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database at {url}: {source}")]
    Connect { url: String, source: DbErr },
    #[error("cannot apply the schema: {0}")]
    Migrate(DbErr),
}

/// Opens a connection pool for `config`.
pub async fn connect(config: &DatabaseConfig) -> Result<DatabaseConnection, DbError> {
    let mut options = ConnectOptions::new(config.url.clone());
    options
        .max_connections(config.max_connections)
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
        .acquire_timeout(Duration::from_millis(config.connect_timeout_ms))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
        });
    // Two processes opening a fresh SQLite file at once (`runvisor consume` and `runvisor submit`
    // started together): switching it to WAL needs a lock that SQLite reports as BUSY at once,
    // without waiting the busy timeout. It passes as soon as the other process is done.
    let busy_delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(500))
        .with_max_times(20)
        .with_jitter();
    (|| Database::connect(options.clone()))
        .retry(busy_delays)
        .when(sqlite_busy)
        .await
        .map_err(|source| DbError::Connect { url: redact(&config.url), source })
}

/// SQLite's BUSY (5) or LOCKED (6).
fn sqlite_busy(error: &DbErr) -> bool {
    let (DbErr::Conn(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e))) = error else {
        return false;
    };
    matches!(e.as_ref(), sea_orm::sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("5" | "6")))
}

/// Creates or upgrades the schema; a no-op when it is current. Says what it applies, and nothing
/// when there is nothing to apply (every mode migrates at start; a log line per start for an
/// unchanged schema would be noise).
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbError> {
    let pending = Migrator::get_pending_migrations(db).await.map_err(DbError::Migrate)?;
    if pending.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = pending.iter().map(|m| m.name().to_string()).collect();
    tracing::info!(migrations = ?names, "applying schema migrations");
    Migrator::up(db, None).await.map_err(DbError::Migrate)
}

/// Whether a database error may pass if the same statements are tried again later.
pub fn is_transient(error: &DbErr) -> bool {
    let sqlx_error = match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    match sqlx_error.as_ref() {
        sea_orm::sqlx::Error::Database(db) => {
            // SQLSTATE classes that describe the data (22) or a violated constraint (23) will not
            // change on retry; anything else (connection 08, shutdown 57, resources 53,
            // serialization 40, SQLite's BUSY/LOCKED) may.
            let code = db.code().unwrap_or_default();
            !(code.starts_with("22")
                || code.starts_with("23")
                || db.is_unique_violation()
                || db.is_foreign_key_violation())
        }
        sea_orm::sqlx::Error::ColumnDecode { .. } | sea_orm::sqlx::Error::TypeNotFound { .. } => false,
        _ => true,
    }
}

/// Where the rows are, for people: the absolute path of an SQLite file, else the URL with its
/// password masked.
pub fn location(config: &DatabaseConfig) -> String {
    let url = &config.url;
    if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        let path = rest.split('?').next().unwrap_or(rest);
        if path.is_empty() || path == ":memory:" {
            return "an in-memory SQLite database".into();
        }
        let path = std::path::Path::new(path);
        return std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string();
    }
    redact(url)
}

/// The URL with any password masked, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((credentials, host)) = rest.split_once('@') else { return url.to_string() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
    }
}
