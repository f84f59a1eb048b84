//! Whole runs through the executor on PostgreSQL and on SQLite: every example plan, definitions
//! from the table, invalid plans, and the rows each leaves behind.

mod common;

use common::{TestDb, plan, project_examples, request, test_config};
use entity::{RunStatus, StepStatus};
use runvisor::actors::run::RunRequest;
use runvisor::wire::PlanSource;
use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};
use serde_json::{Value, json};

fn example(name: &str) -> Value {
    let path = project_examples().join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[tokio::test]
async fn every_example_completes_on_both_backends_with_consistent_rows() {
    for db in TestDb::each().await {
        let db = db.migrated().await;
        let backend = db.backend();
        let test = db.executor(&test_config()).await;
        for name in ["pipeline", "parallel", "conditional", "loop", "fork_join", "ui_made"] {
            let run_id = format!("{name}-1");
            let outcome = test
                .executor
                .run(request(&run_id, example(name), json!({"topic": "rust", "city": "Oslo"})))
                .await
                .unwrap();
            assert_eq!(outcome.status, RunStatus::Completed, "{backend:?} {name}: {:?}", outcome.error);
            let (run, steps) = test.executor.persistence().load_run(&run_id).await.unwrap().unwrap();
            assert_eq!(run.status, RunStatus::Completed);
            assert_eq!(run.output_data, outcome.output, "{backend:?} {name}");
            assert!(run.completed_at.is_some());
            assert!(!steps.is_empty());
            for step in &steps {
                assert_ne!(step.status, StepStatus::Running, "{backend:?} {name}: {step:?}");
                assert!(step.completed_at.is_some_and(|end| end >= step.started_at));
                assert!(run.completed_at.unwrap() >= step.completed_at.unwrap(), "the run ends after its attempts");
            }
        }
        // The plan the platform's UI makes: members pointing back at their block run once each.
        let (run, steps) = test.executor.persistence().load_run("ui_made-1").await.unwrap().unwrap();
        assert_eq!(
            run.output_data,
            Some(json!({"city": "Oslo", "headline": "Rain in Oslo", "advice": "a jacket will do"})),
            "{backend:?}"
        );
        let mut called: Vec<&str> = steps.iter().map(|s| s.step_id.as_str()).collect();
        called.sort();
        assert_eq!(called, ["mild", "news", "report", "weather"], "{backend:?}: each once, the untaken branch never");
        // The fork-join example's slow branch timed out: its call ended CANCELLED.
        let (_, steps) = test.executor.persistence().load_run("fork_join-1").await.unwrap().unwrap();
        let slow = steps.iter().find(|s| s.step_id == "slow-1").unwrap();
        assert_eq!(slow.status, StepStatus::Cancelled);
        assert_eq!(slow.branch_name.as_deref(), Some("slow"));
        assert_eq!(slow.join_policy.as_deref(), Some("majority"));
        // The loop example ran its body per item with the iteration index recorded.
        let (_, steps) = test.executor.persistence().load_run("loop-1").await.unwrap().unwrap();
        let mut indices: Vec<i32> =
            steps.iter().filter(|s| s.step_id == "process").filter_map(|s| s.loop_iteration_index).collect();
        indices.sort();
        assert_eq!(indices, [0, 1, 2], "{backend:?}");
    }
}

#[tokio::test]
async fn plans_from_workflow_definitions_and_invalid_ones() {
    for db in TestDb::each().await {
        let db = db.migrated().await;
        let backend = db.backend();
        let id = uuid::Uuid::new_v4();
        let definition = plan("a", json!({"a": {"agent_name": "echo", "input_mapping": {"x": "${workflow.input.x}"}}}));
        // Through the entity, as SQLite stores UUIDs the way sqlx encodes them (16-byte blobs).
        let now = chrono::Utc::now().naive_utc();
        entity::workflow_definition::ActiveModel {
            id: Set(id),
            name: Set("stored".into()),
            description: Set(None),
            version: Set(1),
            workflow_data: Set(definition),
            status: Set("active".into()),
            created_by: Set(None),
            updated_by: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            superseded_by: Set(None),
        }
        .insert(&db.db)
        .await
        .unwrap();
        let test = db.executor(&test_config()).await;
        let stored = RunRequest {
            run_id: "from-definition".into(),
            plan: PlanSource::Definition(id),
            definition_id: Some(id),
            input: json!({"x": 7}).as_object().unwrap().clone(),
            triggered_by: Some("test".into()),
        };
        let outcome = test.executor.run(stored).await.unwrap();
        assert_eq!(outcome.output, Some(json!({"x": 7})), "{backend:?}: {:?}", outcome.error);
        let (run, _) = test.executor.persistence().load_run("from-definition").await.unwrap().unwrap();
        assert_eq!(run.workflow_definition_id, Some(id));
        assert_eq!(run.workflow_name, "test-plan");
        assert_eq!(run.triggered_by.as_deref(), Some("test"));

        let missing = uuid::Uuid::new_v4();
        let outcome = test
            .executor
            .run(RunRequest {
                run_id: "no-definition".into(),
                plan: PlanSource::Definition(missing),
                definition_id: Some(missing),
                ..request("x", json!({}), json!({}))
            })
            .await
            .unwrap();
        assert_eq!(outcome.error, Some(format!("workflow_definition_id '{missing}' does not exist")));

        let outcome = test
            .executor
            .run(request(
                "invalid",
                json!({"name": "broken", "start_step": "a", "steps": {"a": {"id": "a", "type": "loop"}}}),
                json!({}),
            ))
            .await
            .unwrap();
        assert_eq!(outcome.status, RunStatus::Failed);
        assert_eq!(
            outcome.error.as_deref(),
            Some("Invalid workflow plan: step 'a': loop_config: is required for a loop step")
        );
        let (run, steps) = test.executor.persistence().load_run("invalid").await.unwrap().unwrap();
        assert_eq!((run.status, run.workflow_name.as_str()), (RunStatus::Failed, "broken"));
        assert!(steps.is_empty());
    }
}

#[tokio::test]
async fn agents_from_the_table_are_callable_and_a_platform_pending_row_is_taken_over() {
    for db in TestDb::each().await {
        let db = db.migrated().await;
        // An agent row whose URL refuses connections: known to validation, failing retryably.
        let now = chrono::Utc::now().naive_utc();
        entity::agent::ActiveModel {
            id: Set(uuid::Uuid::new_v4()),
            name: Set("Offline".into()),
            url: Set("http://127.0.0.1:9/x".into()),
            description: Set(None),
            auth_type: Set(None),
            auth_config: Set(None),
            timeout_ms: Set(30_000),
            retry_config: Set(Some(json!({"max_retries": 2, "initial_delay_ms": 1}))),
            status: Set("active".into()),
            created_by: Set(None),
            updated_by: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&db.db)
        .await
        .unwrap();
        db.db
            .execute_unprepared(
                "INSERT INTO workflow_runs (run_id, workflow_id, workflow_name, status, input_data) VALUES ('pending-1', 'wf', 'p', 'PENDING', '{}')",
            )
            .await
            .unwrap();
        let test = db.executor(&test_config()).await;
        let outcome = test
            .executor
            .run(request("pending-1", plan("a", json!({"a": {"agent_name": "Offline"}})), json!({})))
            .await
            .unwrap();
        assert_eq!(outcome.status, RunStatus::Failed);
        let error = outcome.error.unwrap();
        assert!(error.starts_with("Step 'a' (agent: Offline) failed: agent 'Offline' unreachable"), "{error}");
        assert!(error.ends_with("(attempt 2 of 2)"), "{error}");
        let (run, steps) = test.executor.persistence().load_run("pending-1").await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(steps.len(), 2);
    }
}
