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
            input: json!({"x": 7}).into(),
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

/// A run row as a dead executor (or the API) left it, `age` ago.
fn stranded_run(
    run_id: &str,
    status: RunStatus,
    plan: Option<Value>,
    definition: Option<uuid::Uuid>,
    lease_expired: chrono::TimeDelta,
) -> entity::workflow_run::ActiveModel {
    let now = chrono::Utc::now().naive_utc();
    let owned = status == RunStatus::Running;
    entity::workflow_run::ActiveModel {
        run_id: Set(run_id.into()),
        workflow_id: Set("wf".into()),
        workflow_name: Set("stranded".into()),
        workflow_definition_id: Set(definition),
        status: Set(status),
        input_data: Set(json!({"x": 7})),
        triggered_by: Set(Some("test".into())),
        created_at: Set(now - chrono::TimeDelta::hours(2)),
        updated_at: Set(now - lease_expired),
        owner_id: Set(owned.then(|| "dead-executor".to_string())),
        lease_expires_at: Set(owned.then(|| now - lease_expired)),
        workflow_plan: Set(plan),
        ..Default::default()
    }
}

/// The first attempt of `step` (an `echo` call on the plan's main chain) as an executor recorded it.
fn first_attempt(
    run_id: &str,
    step: &str,
    status: StepStatus,
    input: Value,
    output: Option<Value>,
    started_at: chrono::NaiveDateTime,
) -> entity::step_execution::ActiveModel {
    entity::step_execution::ActiveModel {
        id: Set(runvisor::actors::run::attempt_row_id(run_id, "", step, 1)),
        run_id: Set(run_id.into()),
        step_id: Set(step.into()),
        step_name: Set("echo".into()),
        agent_name: Set("echo".into()),
        status: Set(status),
        input_data: Set(input),
        output_data: Set(output),
        started_at: Set(started_at),
        completed_at: Set(status.is_terminal().then_some(started_at)),
        attempt: Set(1),
        retry_round: Set(0),
        ..Default::default()
    }
}

#[tokio::test]
async fn orphaned_runs_resume_from_what_they_stored_or_fail_saying_why_and_live_ones_are_left_alone() {
    let two_steps = plan(
        "a",
        json!({
            "a": {"agent_name": "echo", "input_mapping": {"x": "${workflow.input.x}"}, "next_step": "b"},
            "b": {"agent_name": "echo", "input_mapping": {"y": "${a.output.x}"}}
        }),
    );
    let hour = chrono::TimeDelta::hours(1);
    for db in TestDb::each().await {
        let db = db.migrated().await;
        let backend = db.backend();
        let now = chrono::Utc::now().naive_utc();
        let definition = uuid::Uuid::new_v4();
        entity::workflow_definition::ActiveModel {
            id: Set(definition),
            name: Set("stored".into()),
            version: Set(1),
            workflow_data: Set(two_steps.clone()),
            status: Set("active".into()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(&db.db)
        .await
        .unwrap();
        // Killed after step a completed and while b was being called.
        stranded_run("killed", RunStatus::Running, Some(two_steps.clone()), None, hour).insert(&db.db).await.unwrap();
        for (step, status, input, output) in [
            ("a", StepStatus::Completed, json!({"x": 7}), Some(json!({"x": 7}))),
            ("b", StepStatus::Running, json!({"y": 7}), None),
        ] {
            first_attempt("killed", step, status, input, output, now - hour).insert(&db.db).await.unwrap();
        }
        // Inserted by an API whose request never reached a broker.
        stranded_run("unpublished", RunStatus::Pending, None, Some(definition), hour).insert(&db.db).await.unwrap();
        stranded_run("planless", RunStatus::Running, None, None, hour).insert(&db.db).await.unwrap();
        // A lease held now, and one that expired a moment ago: not orphans.
        stranded_run("held", RunStatus::Running, Some(two_steps.clone()), None, -hour).insert(&db.db).await.unwrap();
        let moment = chrono::TimeDelta::seconds(1);
        stranded_run("recent", RunStatus::Running, Some(two_steps.clone()), None, moment).insert(&db.db).await.unwrap();

        let mut test = db.executor(&test_config()).await;
        assert_eq!(test.executor.sweep_now().await, 3, "{backend:?}");
        let mut ended = std::collections::HashMap::new();
        while ended.len() < 3 {
            if let Some(runvisor::actors::events::Event::Run { run_id, status, error, .. }) = test.events.recv().await
                && status.is_terminal()
            {
                ended.insert(run_id, (status, error));
            }
        }
        assert_eq!(ended["killed"].0, RunStatus::Completed, "{backend:?}: {:?}", ended["killed"]);
        assert_eq!(ended["unpublished"].0, RunStatus::Completed, "{backend:?}: {:?}", ended["unpublished"]);
        let (status, error) = &ended["planless"];
        assert_eq!(*status, RunStatus::Failed);
        assert!(error.as_deref().unwrap_or("").contains("neither a workflow_plan nor a workflow_definition_id"));

        let (run, steps) = test.executor.persistence().load_run("killed").await.unwrap().unwrap();
        assert_eq!(run.output_data, Some(json!({"y": 7})), "{backend:?}");
        let calls = |step: &str| steps.iter().filter(|s| s.step_id == step).map(|s| s.status).collect::<Vec<_>>();
        assert_eq!(calls("a"), [StepStatus::Completed], "{backend:?}: a completed call is never made again");
        let b = calls("b");
        assert_eq!(b.len(), 2, "{backend:?}: the call cut off is ended and made again: {b:?}");
        assert!(b.contains(&StepStatus::Completed) && b.contains(&StepStatus::Failed), "{backend:?}: {b:?}");

        for left_alone in ["held", "recent"] {
            let (run, steps) = test.executor.persistence().load_run(left_alone).await.unwrap().unwrap();
            assert_eq!((run.status, run.owner_id.as_deref()), (RunStatus::Running, Some("dead-executor")));
            assert!(steps.is_empty(), "{backend:?}: {left_alone}");
        }
        assert_eq!(test.executor.sweep_now().await, 0, "{backend:?}: nothing orphaned is left");
    }
}

/// A claim writes the run's first attempt in its transaction. If that transaction commits, its
/// acknowledgement is lost and the run is cancelled before the claim is committed again, the
/// replayed claim finds the run ended — and the first attempt RUNNING, as the first commit left
/// it. The executor must not leave that attempt RUNNING under an ended run.
#[tokio::test]
async fn a_run_that_ended_between_two_commits_of_its_claim_keeps_no_attempt_running() {
    let one_step = plan("a", json!({"a": {"agent_name": "echo", "input_mapping": {"x": "${workflow.input.x}"}}}));
    for db in TestDb::each().await {
        let db = db.migrated().await;
        let backend = db.backend();
        let test = db.executor(&test_config()).await;
        // What the first commit of this executor's claim wrote, then the API's cancellation.
        let now = chrono::Utc::now().naive_utc();
        let mut run =
            stranded_run("cut-off", RunStatus::Cancelled, Some(one_step.clone()), None, chrono::TimeDelta::zero());
        run.owner_id = Set(Some(test.executor.owner().to_string()));
        run.error_message = Set(Some("Cancelled: by a user".into()));
        run.insert(&db.db).await.unwrap();
        let row = first_attempt("cut-off", "a", StepStatus::Running, json!({"x": 7}), None, now);
        let first_attempt = row.id.clone().unwrap();
        row.insert(&db.db).await.unwrap();

        let outcome = test.executor.run(request("cut-off", one_step.clone(), json!({"x": 7}))).await.unwrap();
        assert_eq!(outcome.disposition, runvisor::actors::run::Disposition::AlreadyTerminal, "{backend:?}");
        assert_eq!(outcome.status, RunStatus::Cancelled, "{backend:?}");
        // The attempt's end is queued without waiting; everything queued before this is committed.
        test.executor.persistence().flush().await.unwrap();
        let (run, steps) = test.executor.persistence().load_run("cut-off").await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Cancelled, "{backend:?}: the run stays as the cancellation left it");
        assert_eq!(steps.len(), 1, "{backend:?}: nothing was called: {steps:?}");
        assert_eq!(steps[0].id, first_attempt);
        assert_eq!(steps[0].status, StepStatus::Cancelled, "{backend:?}");
        assert_eq!(steps[0].error_message.as_deref(), Some("the run had ended before this call started"));
        assert!(steps[0].completed_at.is_some(), "{backend:?}");
    }
}

/// A zombie: an executor whose run was claimed by another (its lease ran out while it could not
/// reach the database) gets none of its later writes in, and stops its copy at the first.
#[tokio::test]
async fn once_another_executor_claims_a_run_nothing_its_old_owner_writes_lands() {
    let two_steps = plan(
        "slow",
        json!({
            "slow": {"agent_name": "sleep", "input_mapping": {"ms": 300}, "next_step": "after"},
            "after": {"agent_name": "echo", "input_mapping": {"x": 1}}
        }),
    );
    for db in TestDb::each().await {
        let db = db.migrated().await;
        let backend = db.backend();
        let mut test = db.executor(&test_config()).await;
        let outcome = test.executor.submit(request("zombie", two_steps.clone(), json!({}))).unwrap();
        // The slow call is under way (its RUNNING row committed): now another executor claims
        // the run, as its claim would after the lease expired. No lease renewal of this executor
        // has succeeded yet (the first comes a third of the 15 s lease after its start), so its
        // writes are checked, as they are once renewals have failed for a while (a zombie).
        loop {
            if let Some(runvisor::actors::events::Event::Attempt { step_id, status: StepStatus::Running, .. }) =
                test.events.recv().await
                && step_id == "slow"
            {
                break;
            }
        }
        db.db
            .execute_unprepared("UPDATE workflow_runs SET owner_id = 'successor' WHERE run_id = 'zombie'")
            .await
            .unwrap();
        let outcome = outcome.await.unwrap();
        assert_eq!(outcome.disposition, runvisor::actors::run::Disposition::Abandoned, "{backend:?}: {outcome:?}");
        let (run, steps) = test.executor.persistence().load_run("zombie").await.unwrap().unwrap();
        assert_eq!((run.status, run.owner_id.as_deref()), (RunStatus::Running, Some("successor")), "{backend:?}");
        let summary: Vec<(&str, StepStatus)> = steps.iter().map(|s| (s.step_id.as_str(), s.status)).collect();
        assert_eq!(
            summary,
            [("slow", StepStatus::Running)],
            "{backend:?}: the old owner's end of the call and its next step are fenced off"
        );
    }
}
