//! Status values, stored as the upper-case strings of the contract.
//!
//! They are `varchar` columns rather than database enums: the platform creates and reads these rows
//! too, and a PostgreSQL enum type would tie both sides to one migration history.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// The status of a `workflow_runs` row. A run moves forward only:
/// PENDING → RUNNING → one of the terminal statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "UPPERCASE")]
pub enum RunStatus {
    #[sea_orm(string_value = "PENDING")]
    Pending,
    #[sea_orm(string_value = "RUNNING")]
    Running,
    #[sea_orm(string_value = "COMPLETED")]
    Completed,
    #[sea_orm(string_value = "FAILED")]
    Failed,
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
}

impl RunStatus {
    /// Terminal statuses are final: a run_id reaches one of them once (CONTRACT.md §2).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The contract's spelling, as stored and as sent in monitoring updates.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Whether a row in status `self` may be overwritten with `next`. Rows only move forward, so a
    /// late or replayed write can never turn a terminal run back into a running one.
    pub fn may_become(self, next: RunStatus) -> bool {
        let rank = |s: RunStatus| match s {
            Self::Pending => 0,
            Self::Running => 1,
            Self::Completed | Self::Failed | Self::Cancelled => 2,
        };
        !self.is_terminal() && rank(next) >= rank(self)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of a `step_executions` row, one row per agent call attempt. An attempt starts
/// RUNNING and ends in exactly one of the other three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "UPPERCASE")]
pub enum StepStatus {
    #[sea_orm(string_value = "RUNNING")]
    Running,
    #[sea_orm(string_value = "COMPLETED")]
    Completed,
    #[sea_orm(string_value = "FAILED")]
    Failed,
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
}

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// An attempt row moves from RUNNING to a terminal status once; nothing overwrites a terminal one.
    pub fn may_become(self, next: StepStatus) -> bool {
        self == Self::Running && next != Self::Running
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_forward() {
        use RunStatus::*;
        assert!(Pending.may_become(Running));
        assert!(Running.may_become(Completed));
        assert!(Pending.may_become(Failed));
        assert!(!Running.may_become(Pending));
        assert!(!Completed.may_become(Running));
        assert!(!Failed.may_become(Completed));
        assert!(StepStatus::Running.may_become(StepStatus::Cancelled));
        assert!(!StepStatus::Completed.may_become(StepStatus::Failed));
    }

    #[test]
    fn stored_strings_are_the_contracts() {
        for s in <RunStatus as sea_orm::Iterable>::iter() {
            assert_eq!(s.to_value(), s.as_str());
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in <StepStatus as sea_orm::Iterable>::iter() {
            assert_eq!(s.to_value(), s.as_str());
        }
    }
}
