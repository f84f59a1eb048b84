//! What can be done to workflows, agents and runs, written once for every front end.
//!
//! Each resource has a module of *queries* (reads with filters and paging) and *commands*
//! (writes, each one transaction, with its audit row). They speak in request and response types of
//! their own and fail with [`ServiceError`]; the API turns those into the platform's HTTP shapes
//! (`crate::api`), the command line (`crate::cli`: `runs`, `show`, `cancel`, `retry`) into text or
//! JSON. Nothing here knows about HTTP.
//!
//! Who writes what: these functions write definitions, agents, audit rows, the outbox, and the few
//! run transitions that belong to a *producer* — a new PENDING run, FAILED/CANCELLED → PENDING on
//! retry, PENDING/RUNNING → CANCELLED on cancel. Every other run transition (RUNNING, COMPLETED,
//! FAILED, attempts) is the executor's alone, through its persistence actor.
//!
//! - [`agents`], [`workflows`], [`runs`]: the three resources;
//! - [`outbox`]: requests written with the run they start, published by whoever gets there first;
//! - [`audit`]: the `audit_logs` rows every mutation leaves;
//! - [`check`]: field-by-field validation that reports every problem at once;
//! - [`page`]: pagination with real totals.

pub mod activity;
pub mod agents;
pub mod audit;
pub mod check;
pub mod outbox;
pub mod page;
pub mod runs;
pub mod workflows;

use sea_orm::{DbErr, RuntimeErr};
use serde::Serialize;

pub use check::FieldError;
pub use page::{Page, PageRequest};

/// Why a query or command did not do what was asked. Each variant is one of the platform's error
/// answers (`../shared/API.md` §1).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such resource (404 `{"detail"}`).
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but cannot be done in the resource's state (400 `{"detail"}`).
    #[error("{0}")]
    Rejected(String),
    /// The request is larger than what may be sent on (413 `{"detail"}`).
    #[error("{0}")]
    TooLarge(String),
    /// Fields that fail validation, every one of them (422 envelope).
    #[error("invalid request: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The database refused or failed the statement.
    #[error(transparent)]
    Database(#[from] DbErr),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>, kind: &'static str) -> Self {
        Self::Invalid(vec![FieldError::new(field, message, kind)])
    }

    /// What kind of database failure this is, as the platform's error handler sorts them. A
    /// failure that may pass on its own (connection lost, server restarting, SQLite busy) is
    /// `Unavailable`, by the same rule the persistence actor retries by.
    pub fn database_kind(error: &DbErr) -> DatabaseFailure {
        let database = match error {
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => match e.as_ref() {
                sea_orm::sqlx::Error::Database(db) => Some(db),
                _ => None,
            },
            _ => None,
        };
        match database {
            Some(db) if db.is_unique_violation() => DatabaseFailure::UniqueViolation,
            Some(db) if db.is_foreign_key_violation() => DatabaseFailure::ForeignKey,
            Some(db) if db.code().is_some_and(|c| c.starts_with("23")) => DatabaseFailure::Integrity,
            Some(db) if db.code().is_some_and(|c| c.starts_with("22")) => DatabaseFailure::Data,
            _ if crate::db::is_transient(error) => DatabaseFailure::Unavailable,
            _ => DatabaseFailure::Other,
        }
    }
}

/// The platform's classes of database failure (SQLAlchemy's IntegrityError, OperationalError, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseFailure {
    UniqueViolation,
    ForeignKey,
    Integrity,
    Data,
    Unavailable,
    Other,
}

/// The user every write is recorded under: the platform has no authentication and records
/// `"system"`, and so does runvisor (a bearer token guards access, it names nobody).
pub const SYSTEM_USER: &str = "system";

/// A timestamp as the platform serialises them: naive UTC, ISO 8601, microseconds when non-zero
/// (Python's `datetime.isoformat()`), no offset.
pub fn iso(at: &chrono::NaiveDateTime) -> String {
    use chrono::Timelike;
    if at.nanosecond() / 1000 == 0 {
        at.format("%Y-%m-%dT%H:%M:%S").to_string()
    } else {
        at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
    }
}

/// Serialises an optional timestamp with [`iso`]; for `#[serde(serialize_with)]`.
pub fn iso_opt<S: serde::Serializer>(at: &Option<chrono::NaiveDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&iso(at)),
        None => s.serialize_none(),
    }
}

/// Serialises a timestamp with [`iso`]; for `#[serde(serialize_with)]`.
pub fn iso_req<S: serde::Serializer>(at: &chrono::NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&iso(at))
}

/// Now, to the microsecond (what both databases store), as naive UTC.
pub fn now() -> chrono::NaiveDateTime {
    use chrono::{SubsecRound, Utc};
    Utc::now().naive_utc().trunc_subsecs(6)
}

/// `{"message", "timestamp", "data": null}`: what the DELETE routes answer.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct MessageResponse {
    pub message: String,
    pub timestamp: String,
    pub data: Option<serde_json::Value>,
}

impl MessageResponse {
    pub fn new(message: String) -> Self {
        Self { message, timestamp: iso(&now()), data: None }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_pythons_isoformat() {
        let at = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap().and_hms_micro_opt(10, 0, 0, 123_000).unwrap();
        assert_eq!(super::iso(&at), "2024-01-01T10:00:00.123000");
        let whole = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap().and_hms_opt(10, 0, 0).unwrap();
        assert_eq!(super::iso(&whole), "2024-01-01T10:00:00");
    }
}
