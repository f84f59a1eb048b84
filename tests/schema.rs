//! The schema on PostgreSQL and SQLite: the contract's tables and columns, its constraints, its
//! queries, and agreement between the `entity` structs and the migration.

mod common;

use chrono::Utc;
use common::TestDb;
use entity::prelude::*;
use entity::{RunStatus, StepStatus, step_execution, workflow_run};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbBackend, EntityTrait, Set};
use serde_json::json;

const CONTRACT_COLUMNS: [(&str, &[&str]); 4] = [
    (
        "workflow_definitions",
        &[
            "id",
            "name",
            "description",
            "version",
            "workflow_data",
            "status",
            "created_by",
            "updated_by",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "agents",
        &[
            "id",
            "name",
            "url",
            "description",
            "auth_type",
            "auth_config",
            "timeout_ms",
            "retry_config",
            "status",
            "created_by",
            "updated_by",
            "created_at",
            "updated_at",
        ],
    ),
    (
        "workflow_runs",
        &[
            "run_id",
            "workflow_id",
            "workflow_name",
            "workflow_definition_id",
            "status",
            "input_data",
            "triggered_by",
            "created_at",
            "updated_at",
            "completed_at",
            "cancelled_at",
            "cancelled_by",
            "error_message",
            "output_data",
        ],
    ),
    (
        "step_executions",
        &[
            "id",
            "run_id",
            "step_id",
            "step_name",
            "agent_name",
            "status",
            "input_data",
            "output_data",
            "started_at",
            "completed_at",
            "error_message",
            "parent_step_id",
            "branch_name",
            "join_policy",
            "loop_iteration_index",
            "attempt",
        ],
    ),
];

/// Column name → declared type, for one table.
async fn columns(db: &TestDb, table: &str) -> Vec<(String, String)> {
    let sql = match db.backend() {
        DbBackend::Postgres => format!(
            "SELECT column_name AS name, data_type AS type FROM information_schema.columns WHERE table_name = '{table}'"
        ),
        _ => format!("SELECT name, type FROM pragma_table_info('{table}')"),
    };
    db.query(&sql)
        .await
        .into_iter()
        .map(|row| (row["name"].as_str().unwrap().to_string(), row["type"].as_str().unwrap().to_lowercase()))
        .collect()
}

#[tokio::test]
async fn the_contract_tables_and_columns_exist_on_both_backends() {
    for db in TestDb::each().await {
        let db = db.migrated().await;
        for (table, expected) in CONTRACT_COLUMNS {
            let found = columns(&db, table).await;
            for column in expected {
                assert!(found.iter().any(|(name, _)| name == column), "{:?}: {table}.{column} missing", db.backend());
            }
        }
        if db.backend() == DbBackend::Postgres {
            let runs = columns(&db, "workflow_runs").await;
            let type_of = |column: &str| runs.iter().find(|(n, _)| n == column).map(|(_, t)| t.as_str()).unwrap();
            assert_eq!(type_of("input_data"), "jsonb");
            assert_eq!(type_of("output_data"), "jsonb");
            assert_eq!(type_of("created_at"), "timestamp without time zone");
            assert_eq!(type_of("completed_at"), "timestamp without time zone");
            assert_eq!(type_of("workflow_definition_id"), "uuid");
            let definitions = columns(&db, "workflow_definitions").await;
            assert!(definitions.contains(&("id".into(), "uuid".into())));
            assert!(definitions.contains(&("workflow_data".into(), "jsonb".into())));
        }
    }
}

#[tokio::test]
async fn migrating_twice_is_a_no_op() {
    for db in TestDb::each().await {
        let db = db.migrated().await;
        db.db.execute_unprepared(PLATFORM_RUN_INSERT).await.unwrap();
        runvisor::db::migrate(&db.db).await.expect("second migration");
        let rows = db.query("SELECT run_id FROM workflow_runs").await;
        assert_eq!(rows, vec![json!({"run_id": "platform-1"})], "{:?}", db.backend());
    }
}

/// The platform's API inserts a PENDING run naming only the contract's columns; defaults fill the rest.
const PLATFORM_RUN_INSERT: &str = "INSERT INTO workflow_runs (run_id, workflow_id, workflow_name, status, input_data, \
     created_at, updated_at) VALUES ('platform-1', 'wf', 'research', 'PENDING', '{\"topic\": \"rust\"}', \
     '2026-11-27 12:00:00', '2026-11-27 12:00:00')";

#[tokio::test]
async fn unique_constraints_and_the_foreign_key_hold() {
    for db in TestDb::each().await {
        let db = db.migrated().await;
        let backend = db.backend();
        let definition = |id: &str| {
            format!(
                "INSERT INTO workflow_definitions (id, name, version, workflow_data) VALUES ('{id}', 'wf', 1, '{{}}')"
            )
        };
        db.db.execute_unprepared(&definition("00000000-0000-0000-0000-000000000001")).await.unwrap();
        let duplicate = db.db.execute_unprepared(&definition("00000000-0000-0000-0000-000000000002")).await;
        assert!(duplicate.is_err(), "{backend:?}: (name, version) must be unique");

        let agent = |id: &str| format!("INSERT INTO agents (id, name, url) VALUES ('{id}', 'Writer', 'http://x')");
        db.db.execute_unprepared(&agent("00000000-0000-0000-0000-000000000001")).await.unwrap();
        let duplicate = db.db.execute_unprepared(&agent("00000000-0000-0000-0000-000000000002")).await;
        assert!(duplicate.is_err(), "{backend:?}: agent names must be unique");
        let row = &db.query("SELECT timeout_ms, status FROM agents").await[0];
        assert_eq!(row["timeout_ms"], json!(30000), "{backend:?}");
        assert_eq!(row["status"], json!("active"), "{backend:?}");

        let orphan = db
            .db
            .execute_unprepared(
                "INSERT INTO step_executions (id, run_id, step_id, step_name, agent_name, status, input_data) \
                 VALUES ('s', 'no-such-run', 'a', 'echo', 'echo', 'RUNNING', '{}')",
            )
            .await;
        assert!(orphan.is_err(), "{backend:?}: step rows need their run");
    }
}

#[tokio::test]
async fn entities_round_trip_and_the_contract_queries_run() {
    for db in TestDb::each().await {
        let db = db.migrated().await;
        let backend = db.backend();
        let now = Utc::now().naive_utc();
        let run = workflow_run::ActiveModel {
            run_id: Set("run-1".into()),
            workflow_id: Set("wf-1".into()),
            workflow_name: Set("research".into()),
            workflow_definition_id: Set(Some(uuid::Uuid::new_v4())),
            status: Set(RunStatus::Completed),
            input_data: Set(json!({"topic": "rust", "n": [1, 2.5, null]})),
            triggered_by: Set(Some("test".into())),
            created_at: Set(now),
            updated_at: Set(now),
            completed_at: Set(Some(now)),
            cancelled_at: Set(None),
            cancelled_by: Set(None),
            error_message: Set(None),
            output_data: Set(Some(json!({"text": "done"}))),
            owner_id: Set(Some("executor-1".into())),
            lease_expires_at: Set(Some(now)),
            retry_count: Set(2),
            retried_at: Set(Some(now)),
            workflow_plan: Set(None),
        };
        let inserted = run.insert(&db.db).await.unwrap();
        let step = step_execution::ActiveModel {
            id: Set("run-1/step-1/1".into()),
            run_id: Set("run-1".into()),
            step_id: Set("step-1".into()),
            step_name: Set("echo".into()),
            agent_name: Set("echo".into()),
            status: Set(StepStatus::Completed),
            input_data: Set(json!({"a": 1})),
            output_data: Set(Some(json!({"a": 1}))),
            started_at: Set(now),
            completed_at: Set(Some(now)),
            error_message: Set(None),
            parent_step_id: Set(Some("loop-1".into())),
            retry_round: Set(0),
            branch_name: Set(None),
            join_policy: Set(None),
            loop_iteration_index: Set(Some(3)),
            attempt: Set(2),
            executor_id: Set(Some("executor-1".into())),
        };
        let inserted_step = step.insert(&db.db).await.unwrap();

        let read = WorkflowRuns::find_by_id("run-1").one(&db.db).await.unwrap().unwrap();
        assert_eq!(read, inserted, "{backend:?}");
        let read_step = StepExecutions::find_by_id("run-1/step-1/1").one(&db.db).await.unwrap().unwrap();
        assert_eq!(read_step, inserted_step, "{backend:?}");

        // Statuses are stored as the contract's strings.
        let raw = db.query("SELECT status FROM workflow_runs").await;
        assert_eq!(raw, vec![json!({"status": "COMPLETED"})], "{backend:?}");

        let runs = db
            .query("SELECT run_id, status, created_at, updated_at, completed_at FROM workflow_runs ORDER BY created_at DESC LIMIT 5")
            .await;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0]["run_id"], json!("run-1"));
        let steps = db
            .query(
                "SELECT run_id, step_id, agent_name, status, started_at, completed_at FROM step_executions \
                 ORDER BY started_at DESC LIMIT 10",
            )
            .await;
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0]["status"], json!("COMPLETED"));
    }
}

#[tokio::test]
async fn platform_inserts_get_defaults_and_read_back_through_the_entities() {
    for db in TestDb::each().await {
        let db = db.migrated().await;
        db.db.execute_unprepared(PLATFORM_RUN_INSERT).await.unwrap();
        let run = WorkflowRuns::find_by_id("platform-1").one(&db.db).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Pending);
        assert_eq!(run.input_data, json!({"topic": "rust"}));
        assert_eq!(run.completed_at, None);
        // created_at defaults to now in UTC when a producer leaves it out.
        db.db
            .execute_unprepared(
                "INSERT INTO workflow_runs (run_id, workflow_id, workflow_name, status, input_data) \
                 VALUES ('platform-2', 'wf', 'research', 'PENDING', '{}')",
            )
            .await
            .unwrap();
        let run = WorkflowRuns::find_by_id("platform-2").one(&db.db).await.unwrap().unwrap();
        let skew = (Utc::now().naive_utc() - run.created_at).num_seconds().abs();
        assert!(skew < 300, "{:?}: created_at {} is not UTC now", db.backend(), run.created_at);
    }
}

/// The writes of many runs in one batch: on PostgreSQL one statement per kind of write, on SQLite
/// one per write. Both must leave the same rows and tell claimants the same thing; a claim's first
/// attempt lands only with a claim that took its run.
#[tokio::test]
async fn a_batch_of_claims_starts_and_ends_leaves_the_same_rows_on_both_backends() {
    use runvisor::actors::persistence::{
        AttemptEnd, AttemptStart, Claim, Journal, PersistenceHandle, RunWrite, WriteOp,
    };
    use runvisor::actors::supervisor::{PersistenceSupervisor, PersistenceSupervisorArgs};
    use std::sync::Arc;
    use std::time::Duration;

    for test_db in TestDb::each().await {
        let test_db = test_db.migrated().await;
        let now = chrono::Utc::now().naive_utc();
        let run = |run_id: &str, status| RunWrite {
            run_id: run_id.into(),
            workflow_id: "w".into(),
            workflow_name: "w".into(),
            definition_id: None,
            input: json!({}).into(),
            triggered_by: None,
            status,
            output: None,
            error: None,
            cancelled_by: None,
            owner: Some("me".into()),
            cancel_requested_at: None,
            plan: None,
            at: now,
        };
        let attempt = |run_id: &str, id: &str| AttemptStart {
            id: id.into(),
            run_id: run_id.into(),
            step_id: id.into(),
            agent_name: "echo".into(),
            input: std::sync::Arc::new(json!({"n": 1})),
            started_at: now,
            parent_step_id: None,
            branch_name: None,
            join_policy: None,
            loop_iteration_index: None,
            attempt: 1,
            retry_round: 0,
            owner: "me".into(),
        };
        let start = |run_id: &str, id: &str| WriteOp::AttemptStarted(Box::new(attempt(run_id, id)));
        // Each claim carries its run's first attempt, written only if the claim takes the run.
        let claim = |run_id: &str, first: &str| {
            WriteOp::ClaimNew(Box::new(Claim {
                run: run(run_id, RunStatus::Running),
                owner: "me".into(),
                lease: Duration::from_secs(30),
                first_attempt: Some(attempt(run_id, first)),
            }))
        };
        let end = |id: &str, status| {
            WriteOp::AttemptEnded(Box::new(AttemptEnd {
                id: id.into(),
                run_id: String::new(),
                owner: "me".into(),
                status,
                output: Some(std::sync::Arc::new(json!({"n": 2}))),
                error: None,
                at: now,
            }))
        };
        // Before the batch: a run the API created (PENDING, never claimed), one another executor
        // holds, and an attempt of that one.
        for (run_id, status, owner) in [("api-made", "PENDING", "NULL"), ("held", "RUNNING", "'other'")] {
            test_db
                .query(&format!(
                    "INSERT INTO workflow_runs (run_id, workflow_id, workflow_name, status, input_data, created_at, \
                 updated_at, owner_id, retry_count) VALUES ('{run_id}', 'w', 'w', '{status}', '{{}}', \
                 CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, {owner}, 0) RETURNING run_id"
                ))
                .await;
        }
        let handle = PersistenceHandle::new(Arc::new(Journal::default()));
        let config = runvisor::config::PersistenceConfig { batch_max: 512, flush_interval_ms: 0 };
        let args = PersistenceSupervisorArgs { db: test_db.db.clone(), handle: handle.clone(), config };
        let (supervisor, _) = ractor::Actor::spawn(None, PersistenceSupervisor, args).await.unwrap();
        handle.flush().await.unwrap();
        let before = handle.journal().stats();
        // Queued without yielding: the persistence actor, on this test's one thread, takes them
        // as one batch.
        let claims = [claim("new", "a1"), claim("api-made", "b1"), claim("held", "h0")]
            .map(|op| handle.write_deferred(op, None));
        let writes = [
            start("new", "a2"),
            end("a1", StepStatus::Completed),
            end("b1", StepStatus::Failed),
            WriteOp::Run(Box::new(RunWrite { output: Some(json!({"n": 2})), ..run("new", RunStatus::Completed) })),
        ]
        .map(|op| handle.write_deferred(op, None));
        // Not ours: fenced off, answered so, and the rest of the batch still lands.
        let fenced = [WriteOp::Run(Box::new(run("held", RunStatus::Failed))), start("held", "h1")]
            .map(|op| handle.write_deferred(op, None));
        let mut claimed = Vec::new();
        for claim in claims {
            claimed.push(claim.await.unwrap().unwrap());
        }
        for write in writes {
            write.await.unwrap().unwrap();
        }
        for write in fenced {
            let refused = write.await.unwrap();
            assert_eq!(
                refused,
                Err(runvisor::actors::persistence::PersistError::Fenced {
                    run_id: "held".into(),
                    holder: "other".into()
                }),
                "{:?}",
                test_db.backend()
            );
        }
        assert_eq!(claimed, vec![1, 1, 0], "{:?}: new and API-made runs are won, a held one is not", test_db.backend());
        assert_eq!(handle.journal().stats().transactions - before.transactions, 1, "one batch");
        let runs = test_db.query("SELECT run_id, status, owner_id FROM workflow_runs ORDER BY run_id").await;
        assert_eq!(
            runs,
            vec![
                json!({"run_id": "api-made", "status": "RUNNING", "owner_id": "me"}),
                json!({"run_id": "held", "status": "RUNNING", "owner_id": "other"}),
                json!({"run_id": "new", "status": "COMPLETED", "owner_id": "me"}),
            ]
        );
        // A claim that took an API-made run leased it.
        let leased = test_db.query("SELECT run_id FROM workflow_runs WHERE lease_expires_at IS NOT NULL").await;
        assert_eq!(leased, vec![json!({"run_id": "api-made"})], "{:?}", test_db.backend());
        // The same claim committed again (its batch replayed after the acknowledgement was lost) is
        // won again and leaves its first attempt as it is; a later claim of that run is not won.
        let replayed = handle.write_deferred(claim("api-made", "b1"), None).await.unwrap().unwrap();
        assert_eq!(replayed, 1, "{:?}: a claim committed again is won again", test_db.backend());
        // ...without winding back a lease a renewal extended since; and once the lease has run
        // out, a replay is not won (the full claim then takes a fresh one).
        let set_lease = |until: &'static str| {
            format!("UPDATE workflow_runs SET lease_expires_at = '{until}' WHERE run_id = 'api-made' RETURNING run_id")
        };
        test_db.query(&set_lease("2999-01-01 00:00:00")).await;
        let replayed = handle.write_deferred(claim("api-made", "b1"), None).await.unwrap().unwrap();
        assert_eq!(replayed, 1, "{:?}", test_db.backend());
        let lease = test_db.query("SELECT lease_expires_at FROM workflow_runs WHERE run_id = 'api-made'").await;
        assert!(lease[0]["lease_expires_at"].to_string().contains("2999-01-01"), "{:?}: {lease:?}", test_db.backend());
        test_db.query(&set_lease("2000-01-01 00:00:00")).await;
        let expired = handle.write_deferred(claim("api-made", "b1"), None).await.unwrap().unwrap();
        assert_eq!(expired, 0, "{:?}: a replay after the lease ran out is not won", test_db.backend());
        let later = WriteOp::ClaimNew(Box::new(Claim {
            run: RunWrite { at: now + chrono::Duration::seconds(1), ..run("api-made", RunStatus::Running) },
            owner: "me".into(),
            lease: Duration::from_secs(30),
            first_attempt: Some(attempt("api-made", "b9")),
        }));
        let later = handle.write_deferred(later, None).await.unwrap().unwrap();
        assert_eq!(later, 0, "{:?}: a run claimed before is not won by a new claim", test_db.backend());
        let steps = test_db.query("SELECT id, status, output_data FROM step_executions ORDER BY id").await;
        let output = |row: &serde_json::Value| match &row["output_data"] {
            serde_json::Value::String(text) => serde_json::from_str(text).unwrap(),
            other => other.clone(),
        };
        let summary: Vec<(String, String, serde_json::Value)> = steps
            .iter()
            .map(|row| (row["id"].as_str().unwrap().into(), row["status"].as_str().unwrap().into(), output(row)))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a1".into(), "COMPLETED".into(), json!({"n": 2})),
                ("a2".into(), "RUNNING".into(), serde_json::Value::Null),
                ("b1".into(), "FAILED".into(), json!({"n": 2})),
            ],
            "{:?}",
            test_db.backend()
        );
        supervisor.stop(None);
    }
}
