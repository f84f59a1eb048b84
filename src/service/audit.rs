//! `audit_logs`: the row every mutation through the API leaves, in the same transaction.
//!
//! Rows are the platform's (API.md §4): user `"system"`, entity types `agent`, `workflow`, `run`,
//! and for runs the UUID inside the run_id. Where the platform writes a constant by mistake
//! (`previous_status` always `FAILED` on retry and `RUNNING` on cancel), runvisor writes the status
//! the run really had.

use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, Set};
use serde_json::Value;
use uuid::Uuid;

use super::{SYSTEM_USER, now};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityType {
    Agent,
    Workflow,
    Run,
}

impl EntityType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Workflow => "workflow",
            Self::Run => "run",
        }
    }
}

/// Records `action` on an entity.
pub async fn record(
    db: &impl ConnectionTrait,
    entity_type: EntityType,
    entity_id: Uuid,
    action: &str,
    changes: Option<Value>,
) -> Result<(), DbErr> {
    let at = now();
    entity::audit_log::ActiveModel {
        id: Set(Uuid::new_v4()),
        entity_type: Set(entity_type.as_str().into()),
        entity_id: Set(entity_id),
        action: Set(action.into()),
        user_id: Set(Some(SYSTEM_USER.into())),
        changes: Set(changes),
        created_at: Set(at),
        updated_at: Set(at),
    }
    .insert(db)
    .await
    .map(|_| ())
}

/// The entity id of a run in `audit_logs`: the UUID of `run-<uuid>`, or a name-based UUID for a
/// run_id that holds none (runs submitted by other producers may use any string).
pub fn run_entity_id(run_id: &str) -> Uuid {
    Uuid::parse_str(run_id.strip_prefix("run-").unwrap_or(run_id))
        .unwrap_or_else(|_| Uuid::new_v5(&Uuid::NAMESPACE_OID, run_id.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_ids_map_to_their_uuid() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(super::run_entity_id(&format!("run-{id}")), id);
        assert_eq!(super::run_entity_id("custom"), super::run_entity_id("custom"));
    }
}
