//! How the command line ends: documented exit codes, and the failures that lead to each.

use std::process::ExitCode;

use crate::config::ConfigError;
use crate::service::{DatabaseFailure, ServiceError};

/// Every exit code `runvisor` uses, each for one kind of outcome, so scripts can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what was asked; a run it waited for COMPLETED.
    Ok = 0,
    /// A run the command waited for ended FAILED.
    RunFailed = 1,
    /// The arguments are wrong (clap's own code for usage errors).
    Usage = 2,
    /// A run the command waited for ended CANCELLED (by someone else).
    RunCancelled = 3,
    /// The plan or the input is invalid or cannot be read (`validate` found errors; with
    /// `--strict`, warnings too).
    Invalid = 4,
    /// The configuration is invalid.
    Config = 5,
    /// The database cannot be reached.
    Database = 6,
    /// The broker cannot be reached, or did not take a request in time.
    Broker = 7,
    /// No such run, or it cannot do that in its state (cancel a finished run, retry a completed
    /// one, submit a run_id that already has a run).
    Refused = 8,
    /// Waiting for a run took longer than `--wait-timeout`.
    TimedOut = 9,
    /// Ctrl-C (SIGINT) stopped the command; a run it was executing was cancelled.
    Interrupted = 130,
    /// SIGTERM stopped the command; a run it was executing was cancelled.
    Terminated = 143,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// The table `--help` prints.
pub const EXIT_CODES: &str = "\
Exit codes:
  0    done; a run waited for COMPLETED
  1    a run waited for ended FAILED
  2    usage: wrong arguments
  3    a run waited for ended CANCELLED
  4    invalid plan or input (validate --strict: warnings too)
  5    invalid configuration
  6    database unreachable
  7    broker unreachable, or it did not take the request in time
  8    refused: no such run, or not possible in its state
  9    timed out waiting for a run (--wait-timeout)
  130  interrupted by Ctrl-C (a run being executed was cancelled)
  143  stopped by SIGTERM (a run being executed was cancelled)";

/// Why a command failed, sorted by the exit code it ends with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Database(String),
    #[error("{0}")]
    Broker(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    TimedOut(String),
    /// stdout was closed by its reader (`| head -1`): end quietly.
    #[error("stdout closed")]
    Closed,
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) => Exit::Usage,
            Self::Invalid(_) => Exit::Invalid,
            Self::Config(_) => Exit::Config,
            Self::Database(_) => Exit::Database,
            Self::Broker(_) => Exit::Broker,
            Self::Refused(_) => Exit::Refused,
            Self::TimedOut(_) => Exit::TimedOut,
            Self::Closed => Exit::Ok,
            Self::Other(_) => Exit::RunFailed,
        }
    }
}

impl From<ServiceError> for CliError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::NotFound(m) | ServiceError::Rejected(m) => Self::Refused(m),
            ServiceError::Invalid(errors) => {
                Self::Invalid(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
            }
            ServiceError::TooLarge(m) => Self::Invalid(m),
            ServiceError::Database(error) => match ServiceError::database_kind(&error) {
                DatabaseFailure::Unavailable => Self::Database(format!("the database is unavailable: {error}")),
                _ => Self::Other(error.into()),
            },
        }
    }
}

impl From<crate::db::DbError> for CliError {
    fn from(error: crate::db::DbError) -> Self {
        match error {
            crate::db::DbError::Connect { .. } => Self::Database(error.to_string()),
            other => Self::Other(other.into()),
        }
    }
}

impl From<sea_orm::DbErr> for CliError {
    fn from(error: sea_orm::DbErr) -> Self {
        ServiceError::Database(error).into()
    }
}

impl From<crate::executor::ExecutorError> for CliError {
    fn from(error: crate::executor::ExecutorError) -> Self {
        Self::Other(error.into())
    }
}

impl From<crate::actors::persistence::PersistError> for CliError {
    fn from(error: crate::actors::persistence::PersistError) -> Self {
        Self::Database(error.to_string())
    }
}
