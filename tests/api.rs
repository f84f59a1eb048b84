//! The HTTP API through a real listener, with the executor running: the platform UI's own sequence
//! on both backends, then every route's answers and error shapes (`../shared/API.md`).

mod common;

use std::time::Duration;

use common::TestDb;
use common::api::TestApi;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A plan body as the UI posts it.
fn workflow(name: &str, steps: Value) -> Value {
    let start = steps.as_object().unwrap().keys().next().unwrap().clone();
    let steps: serde_json::Map<String, Value> = steps
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, step)| {
            let mut step = step.clone();
            step["id"] = json!(id);
            (id.clone(), step)
        })
        .collect();
    json!({"name": name, "description": "made by a test", "start_step": start, "steps": steps})
}

fn attempts_of<'a>(steps: &'a [Value], step_id: &str) -> Vec<&'a Value> {
    steps.iter().filter(|s| s["step_id"] == step_id).collect()
}

#[tokio::test]
async fn the_platform_uis_sequence_on_both_backends() {
    for db in TestDb::each().await {
        let api = TestApi::start(db, |_| {}).await;
        let backend = api.db.backend();

        // The dashboard's first calls.
        for path in [
            "/agents?page_size=100",
            "/workflows?page_size=100",
            "/runs?page_size=50&sort_by=created_at&sort_order=desc",
        ] {
            let page = api.get(path).await;
            assert_eq!(page.status, StatusCode::OK, "{backend:?} {path}: {page:?}");
            let keys: Vec<&str> = page.body.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                ["items", "page", "page_size", "total", "total_pages"],
                "{backend:?} {path}: exactly these"
            );
        }

        // Create, execute, and poll the run and its steps as the UI does, to COMPLETED.
        let steps = json!({
            "research": {"agent_name": "echo", "input_mapping": {"topic": "${workflow.input.topic}"}, "next_step": "write"},
            "write": {"agent_name": "echo", "input_mapping": {"title": "About ${research.output.topic}"}, "next_step": null}
        });
        let created = api.post("/workflows", &workflow("ui-sequence", steps)).await;
        assert_eq!(created.status, StatusCode::CREATED, "{backend:?}: {created:?}");
        assert_eq!(created.body["version"], 1);
        assert_eq!(created.body["workflow_data"]["workflow_id"], "wf-ui-sequence-1");
        assert_eq!(created.body["workflow_data"]["version"], "1");
        let id = created.body["id"].as_str().unwrap().to_string();
        let listed = api.get("/workflows?page_size=100").await;
        assert_eq!(listed.body["total"], 1);
        assert_eq!(listed.body["items"][0]["id"], id.as_str());

        let accepted = api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {"topic": "rust"}})).await;
        assert_eq!(accepted.status, StatusCode::ACCEPTED, "{backend:?}: {accepted:?}");
        assert!(matches!(accepted.body["status"].as_str(), Some("PENDING" | "RUNNING" | "COMPLETED")), "{accepted:?}");
        assert_eq!(accepted.body["workflow_id"], id.as_str(), "the UI filters runs by the definition's id");
        assert_eq!(accepted.body["workflow_definition_id"], id.as_str());
        let run_id = accepted.body["run_id"].as_str().unwrap().to_string();
        assert!(run_id.starts_with("run-"));
        assert_eq!(accepted.body["id"], run_id.as_str());
        let (run, steps) = api.until_terminal(&run_id).await;
        assert_eq!(run["status"], "COMPLETED", "{backend:?}: {run}");
        assert_eq!(run["output_data"], json!({"title": "About rust"}));
        assert!(run["completed_at"].is_string());
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0]["step_id"], "research");
        assert_eq!(steps[0]["step_name"], "echo");
        assert!(steps.iter().all(|s| s["status"] == "COMPLETED" && s["completed_at"].is_string()), "{steps:?}");
        let by_workflow = api.get(&format!("/runs?workflow_id={id}&status=COMPLETED")).await;
        assert_eq!(by_workflow.body["total"], 1, "{by_workflow:?}");

        // A run that fails its attempts, then is retried with `{}`: it resumes, its completed
        // call is not made again, and the failing call gets a fresh budget (and passes, since
        // `fail` with `times: 3` fails attempts 1 to 3 only).
        let steps = json!({
            "first": {"agent_name": "echo", "input_mapping": {"n": 1}, "next_step": "flaky"},
            "flaky": {"agent_name": "fail", "input_mapping": {"message": "not yet", "times": 3}, "next_step": null}
        });
        let created = api.post("/workflows", &workflow("retried", steps)).await;
        let id = created.body["id"].as_str().unwrap().to_string();
        let run_id = api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {}})).await.body["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        let (run, steps) = api.until_terminal(&run_id).await;
        assert_eq!(run["status"], "FAILED", "{backend:?}: {run}");
        assert_eq!(run["error_message"], "Step 'flaky' (agent: fail) failed: not yet (attempt 3 of 3)");
        assert_eq!(attempts_of(&steps, "flaky").len(), 3);
        let retried = api.post(&format!("/runs/{run_id}/retry"), &json!({})).await;
        assert_eq!(retried.status, StatusCode::ACCEPTED, "{backend:?}: {retried:?}");
        assert_eq!(retried.body["new_run_id"], run_id.as_str(), "the UI navigates to new_run_id");
        assert_eq!(retried.body["original_run_id"], run_id.as_str());
        // PENDING, or already picked up: the answer is read after the request went out.
        assert!(matches!(retried.body["status"].as_str(), Some("PENDING" | "RUNNING" | "COMPLETED")), "{retried:?}");
        assert_eq!(retried.body["cancelled_at"], Value::Null);
        assert_eq!(retried.body["retry_count"], 1);
        let (run, steps) = api.until_terminal(&run_id).await;
        assert_eq!(run["status"], "COMPLETED", "{backend:?}: {run} {steps:?}");
        assert_eq!(attempts_of(&steps, "first").len(), 1, "a completed call is not made again");
        let flaky: Vec<(i64, &str)> = attempts_of(&steps, "flaky")
            .iter()
            .map(|s| (s["attempt"].as_i64().unwrap(), s["status"].as_str().unwrap()))
            .collect();
        assert_eq!(flaky, [(1, "FAILED"), (2, "FAILED"), (3, "FAILED"), (4, "COMPLETED")]);

        // Cancel with the UI's reason while a call is in flight: the run ends CANCELLED once,
        // and the call in flight ends CANCELLED.
        let steps = json!({"wait": {"agent_name": "sleep", "input_mapping": {"ms": 60000}, "next_step": null}});
        let created = api.post("/workflows", &workflow("cancelled", steps)).await;
        let id = created.body["id"].as_str().unwrap().to_string();
        let run_id = api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {}})).await.body["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        poll_steps(&api, &run_id, |steps| steps.iter().any(|s| s["status"] == "RUNNING")).await;
        let cancelled = api.post(&format!("/runs/{run_id}/cancel"), &json!({"reason": "Cancelled by user"})).await;
        assert_eq!(cancelled.status, StatusCode::OK, "{backend:?}: {cancelled:?}");
        assert_eq!(cancelled.body["run_id"], run_id.as_str());
        assert_eq!(cancelled.body["status"], "CANCELLED");
        assert_eq!(cancelled.body["error_message"], "Cancelled: Cancelled by user");
        assert_eq!(cancelled.body["cancelled_by"], "system");
        assert!(cancelled.body["cancelled_at"].is_string() && cancelled.body["completed_at"].is_string());
        let (_, steps) = poll_steps(&api, &run_id, |steps| {
            !steps.is_empty() && steps.iter().all(|s| s["attempt_status"] == "CANCELLED")
        })
        .await;
        assert_eq!(steps.len(), 1, "{steps:?}");
        // The platform's UI knows no CANCELLED step: it reads FAILED, with the reason.
        assert_eq!(steps[0]["status"], "FAILED");
        assert_eq!(steps[0]["error_message"], "Cancelled: Cancelled by user");
        let again = api.post(&format!("/runs/{run_id}/cancel"), &json!({})).await;
        assert_eq!(again.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            again.body,
            json!({"detail": "Can only cancel pending or running workflows. Current status: CANCELLED"})
        );
        let cancels = api.db.query("SELECT action FROM audit_logs WHERE action = 'cancel'").await;
        assert_eq!(cancels.len(), 1, "one cancel, audited once");
        api.stop().await;
    }
}

/// Polls a run's steps until `done` holds for them.
async fn poll_steps(api: &TestApi, run_id: &str, done: impl Fn(&[Value]) -> bool) -> (Value, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (run, steps) = api.poll_run(run_id, Duration::from_secs(30), |_| true).await;
        if done(&steps) {
            return (run, steps);
        }
        assert!(tokio::time::Instant::now() < deadline, "steps of {run_id} never got there: {steps:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A local agent serving its A2A card, for the health route.
async fn agent_with_card() -> String {
    let app = axum::Router::new().route(
        "/a2a/.well-known/agent-card.json",
        axum::routing::get(|| async { axum::Json(json!({"name": "Carded", "description": "I answer"})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/a2a")
}

fn fields(answer: &common::api::Answer) -> Vec<String> {
    answer.body["errors"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect()
}

fn assert_envelope(answer: &common::api::Answer, status: u16, error: &str, path: &str) {
    assert_eq!(answer.status.as_u16(), status, "{answer:?}");
    assert_eq!(answer.body["error"], error, "{answer:?}");
    assert_eq!(answer.body["status_code"], status, "{answer:?}");
    assert_eq!(answer.body["path"], path, "{answer:?}");
    assert!(answer.body["timestamp"].is_string() && answer.body["request_id"].is_string(), "{answer:?}");
}

#[tokio::test]
async fn agents_routes_answer_as_the_platform_does_with_secrets_masked() {
    let api = TestApi::start(TestDb::postgres().await, |_| {}).await;
    let url = agent_with_card().await;

    let created = api
        .post(
            "/agents",
            &json!({"name": "Carded", "url": url, "auth_type": "BEARER", "auth_config": {"token": "s3cret"},
                    "circuit_breaker_config": {"ignored": true}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.body["auth_type"], "bearer");
    assert_eq!(created.body["auth_config"], json!({"token": "***"}), "secrets are masked");
    assert_eq!(created.body["timeout_ms"], 30000);
    assert_eq!(
        created.body["retry_config"],
        json!({"max_retries": 3, "initial_delay_ms": 1000, "max_delay_ms": 30000, "backoff_multiplier": 2.0})
    );
    assert_eq!(created.body["status"], "active");
    assert!(!created.text.contains("s3cret"));
    let id = created.body["id"].as_str().unwrap().to_string();

    let plain = api.post("/agents", &json!({"name": "Plain", "url": "http://127.0.0.1:9"})).await;
    assert_eq!(plain.body["url"], "http://127.0.0.1:9/", "URLs are normalised as the platform's HttpUrl does");

    let builtin = api.post("/agents", &json!({"name": "echo", "url": "http://x"})).await;
    assert_eq!(builtin.body, json!({"detail": "Agent name 'echo' belongs to a built-in agent"}));
    let duplicate = api.post("/agents", &json!({"name": "Carded", "url": "http://x"})).await;
    assert_eq!(duplicate.status, StatusCode::BAD_REQUEST);
    assert_eq!(duplicate.body, json!({"detail": "Agent with name 'Carded' already exists"}));

    let invalid = api
        .post(
            "/agents",
            &json!({"name": "", "url": "ftp://x", "timeout_ms": 5, "auth_type": "basic",
                    "retry_config": {"max_retries": 11, "initial_delay_ms": 5000, "max_delay_ms": 2000}}),
        )
        .await;
    assert_envelope(&invalid, 422, "Validation Error", "/api/v1/agents");
    assert_eq!(invalid.body["detail"], "Request validation failed");
    assert_eq!(
        fields(&invalid),
        [
            "body.name",
            "body.url",
            "body.auth_type",
            "body.timeout_ms",
            "body.retry_config.max_retries",
            "body.retry_config.max_delay_ms"
        ],
        "{invalid:?}"
    );
    assert_eq!(invalid.body["errors"][0]["type"], "string_too_short");
    assert_eq!(invalid.body["errors"][3]["message"], "Input should be greater than or equal to 1000");

    let bad_id = api.get("/agents/not-a-uuid").await;
    assert_envelope(&bad_id, 422, "Validation Error", "/api/v1/agents/not-a-uuid");
    assert_eq!(fields(&bad_id), ["path.agent_id"]);
    let unknown = uuid::Uuid::new_v4();
    let missing = api.get(&format!("/agents/{unknown}")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body, json!({"detail": format!("Agent with id '{unknown}' not found")}));

    // A partial update: the masked token sent back keeps the stored secret.
    let updated = api
        .put(
            &format!("/agents/{id}"),
            &json!({"timeout_ms": 2000, "auth_config": {"token": "***"}, "retry_config": {"max_retries": 5}}),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
    assert_eq!(updated.body["timeout_ms"], 2000);
    assert_eq!(updated.body["retry_config"]["max_retries"], 5);
    assert_eq!(updated.body["retry_config"]["initial_delay_ms"], 1000, "a partial retry_config keeps the rest");
    let stored = api.db.query(&format!("SELECT auth_config FROM agents WHERE id = '{id}'")).await;
    assert_eq!(stored[0]["auth_config"], json!({"token": "s3cret"}));
    let deleted_status = api.put(&format!("/agents/{id}"), &json!({"status": "deleted"})).await;
    assert_eq!(deleted_status.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&deleted_status), ["body.status"]);

    // The health probe reads the agent's card.
    let health = api.get(&format!("/agents/{id}/health")).await;
    assert_eq!(health.status, StatusCode::OK, "{health:?}");
    assert_eq!(health.body["status"], "healthy");
    assert_eq!(health.body["message"], "I answer");
    assert_eq!(health.body["agent_card"]["name"], "Carded");
    let plain_id = plain.body["id"].as_str().unwrap();
    let down = api.get(&format!("/agents/{plain_id}/health")).await;
    assert_eq!(down.body["status"], "unhealthy");
    assert!(down.body["message"].as_str().unwrap().starts_with("Failed to connect to agent"), "{down:?}");

    // Listing: by exact name, by status, with real totals.
    let by_name = api.get("/agents?name=Carded").await;
    assert_eq!((by_name.body["total"].clone(), by_name.body["page_size"].clone()), (json!(1), json!(1)));
    let deleted = api.delete(&format!("/agents/{id}")).await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.body["message"], format!("Agent '{id}' deleted successfully"));
    assert_eq!(deleted.body["data"], Value::Null);
    assert_eq!(api.get(&format!("/agents/{id}")).await.body["status"], "deleted", "deleted agents stay readable");
    let active = api.get("/agents?status=active").await;
    assert_eq!(active.body["total"], 1);
    let all = api.get("/agents?page_size=1").await;
    assert_eq!((all.body["total"].clone(), all.body["total_pages"].clone()), (json!(2), json!(2)), "real totals");
    let audit = api.db.query("SELECT action FROM audit_logs WHERE entity_type = 'agent' ORDER BY created_at").await;
    let actions: Vec<&str> = audit.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["create", "create", "update", "delete"]);
    api.stop().await;
}

#[tokio::test]
async fn workflow_routes_validate_with_the_executors_validator_and_keep_versions() {
    let api = TestApi::start(TestDb::postgres().await, |_| {}).await;
    let echo = |next: Value| json!({"agent_name": "echo", "input_mapping": {}, "next_step": next});

    // Every plan problem, each with its field; fork_join and loop bodies are accepted.
    let invalid = api
        .post(
            "/workflows",
            &workflow(
                "broken",
                json!({"a": echo(json!("nowhere")), "b": {"type": "parallel", "parallel_steps": ["a"]}}),
            ),
        )
        .await;
    assert_envelope(&invalid, 422, "Validation Error", "/api/v1/workflows");
    let found = fields(&invalid);
    assert!(found.contains(&"body.steps.a.next_step".to_string()), "{invalid:?}");
    assert!(found.contains(&"body.steps.b.parallel_steps".to_string()), "{invalid:?}");
    let shapes = api.post("/workflows", &json!({"name": " ", "steps": {}})).await;
    assert_eq!(fields(&shapes), ["body.name", "body.start_step", "body.steps"], "{shapes:?}");
    let fork_join: Value =
        serde_json::from_str(&std::fs::read_to_string(common::project_examples().join("fork_join.json")).unwrap())
            .unwrap();
    let accepted = api
        .post("/workflows", &json!({"name": "fj", "start_step": fork_join["start_step"], "steps": fork_join["steps"]}))
        .await;
    assert_eq!(accepted.status, StatusCode::CREATED, "a fork_join plan the executor runs is accepted: {accepted:?}");

    // Probable mistakes do not refuse a plan the executor would run: they come back as warnings.
    let typo = api
        .post(
            "/workflows",
            &workflow("typo", json!({"a": {"agent_name": "echo", "input_mapping": {}, "nxt_step": "b"}})),
        )
        .await;
    assert_eq!(typo.status, StatusCode::CREATED, "{typo:?}");
    assert_eq!(typo.body["warnings"], json!(["step 'a': nxt_step: unknown field, ignored; did you mean 'next_step'?"]));
    assert!(accepted.body.get("warnings").is_none(), "no warnings, no field: {accepted:?}");

    // Agents must exist and be active.
    let unknown =
        api.post("/workflows", &workflow("w", json!({"a": {"agent_name": "Ghost", "input_mapping": {}}}))).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.body, json!({"detail": "Agent 'Ghost' not found"}));
    let agent = api.post("/agents", &json!({"name": "Retired", "url": "http://127.0.0.1:9"})).await;
    api.delete(&format!("/agents/{}", agent.body["id"].as_str().unwrap())).await;
    let inactive =
        api.post("/workflows", &workflow("w", json!({"a": {"agent_name": "Retired", "input_mapping": {}}}))).await;
    assert_eq!(inactive.body, json!({"detail": "Agent 'Retired' is not active (status: deleted)"}));

    // Versions: POSTing a name again makes version 2; a PUT of steps bumps the row in place and
    // keeps what it replaced.
    let v1 = api.post("/workflows", &workflow("w", json!({"a": echo(Value::Null)}))).await;
    assert_eq!(v1.body["version"], 1);
    let id = v1.body["id"].as_str().unwrap().to_string();
    let edited = api
        .put(
            &format!("/workflows/{id}"),
            &json!({"description": "edited", "start_step": "a", "steps": {
            "a": {"id": "a", "type": "parallel", "parallel_steps": ["b", "c"]},
            "b": {"id": "b", "agent_name": "echo", "input_mapping": {}},
            "c": {"id": "c", "agent_name": "echo", "input_mapping": {}}}}),
        )
        .await;
    assert_eq!(edited.status, StatusCode::OK, "{edited:?}");
    assert_eq!(edited.body["id"], id.as_str());
    assert_eq!(edited.body["version"], 2);
    assert_eq!(edited.body["workflow_data"]["version"], "2");
    assert_eq!(edited.body["workflow_data"]["steps"]["a"]["type"], "parallel", "every step field is kept");
    let versions = api.get(&format!("/workflows/{id}/versions?page=1&page_size=100")).await;
    let listed: Vec<(i64, bool)> = versions.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["version"].as_i64().unwrap(), w["id"] == id.as_str()))
        .collect();
    assert_eq!(listed, [(2, true), (1, false)], "the replaced definition stays readable: {versions:?}");
    let ghost = api
        .put(
            &format!("/workflows/{id}"),
            &json!({"steps": {"a": {"id": "a", "agent_name": "Ghost", "input_mapping": {}}}, "start_step": "a"}),
        )
        .await;
    assert_eq!(ghost.status, StatusCode::NOT_FOUND, "the platform's PUT answers 404 here: {ghost:?}");

    // Editing the copy the PUT kept (an older version) makes the name's next version, not a clash;
    // lists show each workflow once, /versions every row.
    let kept = versions.body["items"][1]["id"].as_str().unwrap().to_string();
    let older = api
        .put(
            &format!("/workflows/{kept}"),
            &json!({"start_step": "a", "steps": {"a": {"id": "a", "agent_name": "echo", "input_mapping": {}}}}),
        )
        .await;
    assert_eq!(older.status, StatusCode::OK, "{older:?}");
    assert_eq!(older.body["version"], 3);
    let v4 = api.post("/workflows", &workflow("w", json!({"a": echo(Value::Null)}))).await;
    assert_eq!(v4.body["version"], 4);
    let listed = api.get("/workflows?name=w&page_size=100").await;
    let mut shown: Vec<i64> =
        listed.body["items"].as_array().unwrap().iter().map(|w| w["version"].as_i64().unwrap()).collect();
    shown.sort();
    assert_eq!(shown, [2, 3, 4], "the kept copies are not listed: {listed:?}");
    let all = api.get(&format!("/workflows/{id}/versions")).await;
    let numbers: Vec<i64> =
        all.body["items"].as_array().unwrap().iter().map(|w| w["version"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [4, 3, 2, 1], "every version of the name, newest first: {all:?}");

    // A constraint the database holds and the API does not check first: 409 in the envelope.
    sea_orm::ConnectionTrait::execute_unprepared(
        &api.db.db,
        "CREATE UNIQUE INDEX uq_test_same ON workflow_definitions (description) WHERE description = 'same'",
    )
    .await
    .unwrap();
    let body = |name: &str| json!({"name": name, "description": "same", "start_step": "a", "steps": {"a": {"id": "a", "agent_name": "echo", "input_mapping": {}}}});
    assert_eq!(api.post("/workflows", &body("first")).await.status, StatusCode::CREATED);
    let clash = api.post("/workflows", &body("second")).await;
    assert_envelope(&clash, 409, "Conflict", "/api/v1/workflows");
    assert_eq!(clash.body["detail"], "Resource already exists");
    assert!(clash.body.get("errors").is_none());

    // Lists: filter, sort, real totals over pages.
    let named = api.get("/workflows?name=w&sort_by=version&sort_order=ASC&page_size=2").await;
    assert_eq!((named.body["total"].clone(), named.body["total_pages"].clone()), (json!(3), json!(2)), "{named:?}");
    assert_eq!(named.body["items"][0]["version"], 2);
    let second = api.get("/workflows?name=w&sort_by=version&sort_order=asc&page=2&page_size=2").await;
    assert_eq!(second.body["items"].as_array().unwrap().len(), 1);
    let out_of_range = api.get("/workflows?page=0&page_size=101").await;
    assert_eq!(fields(&out_of_range), ["query.page", "query.page_size"]);

    // Delete is soft; executing a deleted definition is refused; unknown ids are 404.
    assert_eq!(
        api.delete(&format!("/workflows/{id}")).await.body["message"],
        format!("Workflow '{id}' deleted successfully")
    );
    let refused = api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {}})).await;
    assert_eq!(refused.body, json!({"detail": "Workflow 'w' is not active (status: deleted)"}));
    let nobody = uuid::Uuid::new_v4();
    let missing = api.post(&format!("/workflows/{nobody}/execute"), &json!({"input_data": {}})).await;
    assert_eq!(missing.body, json!({"detail": format!("Workflow with id '{nobody}' not found")}));
    let no_input = api.post(&format!("/workflows/{}/execute", v4.body["id"].as_str().unwrap()), &json!({})).await;
    assert_eq!(fields(&no_input), ["body.input_data"]);
    api.stop().await;
}

#[tokio::test]
async fn runs_routes_system_routes_and_cross_cutting_behaviour() {
    let api = TestApi::start(TestDb::sqlite().await, |_| {}).await;
    let created =
        api.post("/workflows", &workflow("r", json!({"a": {"agent_name": "echo", "input_mapping": {"x": 1}}}))).await;
    let id = created.body["id"].as_str().unwrap().to_string();
    let run_id = api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {"k": "v"}})).await.body["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    api.until_terminal(&run_id).await;

    // Run routes and their 404 and 400 answers.
    let missing = api.get("/runs/run-nope").await;
    assert_eq!(missing.body, json!({"detail": "Run with id 'run-nope' not found"}));
    assert_eq!(api.get("/runs/run-nope/steps").await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.post("/runs/run-nope/retry", &json!({})).await.body, json!({"detail": "Run 'run-nope' not found"}));
    let completed = api.post(&format!("/runs/{run_id}/retry"), &json!({})).await;
    assert_eq!(completed.body, json!({"detail": "Can only retry failed or cancelled runs. Current status: COMPLETED"}));
    let long = api.post(&format!("/runs/{run_id}/cancel"), &json!({"reason": "x".repeat(501)})).await;
    assert_eq!(fields(&long), ["body.reason"]);
    assert_eq!(long.body["errors"][0]["message"], "String should have at most 500 characters");
    let logs = api.get(&format!("/runs/{run_id}/logs")).await;
    let lines: Vec<&str> = logs.body.as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[1].ends_with("step a (agent echo) attempt 1 RUNNING"), "{lines:?}");
    assert!(lines[3].ends_with(&format!("run {run_id} COMPLETED")), "{lines:?}");
    let filtered =
        api.get(&format!("/runs?status=COMPLETED&workflow_definition_id={id}&created_after=2020-01-01T00:00:00")).await;
    assert_eq!(filtered.body["total"], 1, "{filtered:?}");
    assert_eq!(api.get("/runs?status=completed").await.body["total"], 0, "status is exact and case-sensitive");
    assert_eq!(api.get("/runs?created_before=2020-01-01").await.body["total"], 0);
    let bad_date = api.get("/runs?created_after=yesterday").await;
    assert_eq!(fields(&bad_date), ["query.created_after"]);
    let ai = api.post("/ai-workflows/generate", &json!({})).await;
    assert_eq!(ai.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(ai.body, json!({"detail": "AI workflow generation is not part of runvisor"}));

    // System routes.
    let root = api.send(Method::GET, &api.url("/"), None).await;
    assert_eq!(root.body["endpoints"]["runs"], "/api/v1/runs");
    assert_eq!(root.body["status"], "operational");
    let health = api.send(Method::GET, &api.url("/health"), None).await;
    assert_eq!(health.body["status"], "healthy");
    assert!(health.body["uptime_seconds"].is_f64());
    let ready = api.send(Method::GET, &api.url("/health/ready"), None).await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert_eq!(ready.body["checks"]["database"]["status"], "healthy");
    assert_eq!(ready.body["checks"]["kafka"]["status"], "healthy");
    let spec = api.send(Method::GET, &api.url("/openapi.json"), None).await;
    for path in ["/api/v1/agents/{agent_id}", "/api/v1/workflows/{workflow_id}/execute", "/api/v1/runs/{run_id}/retry"]
    {
        assert!(spec.body["paths"][path].is_object(), "{path} is documented");
    }
    let docs = api.send(Method::GET, &api.url("/docs/"), None).await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.text.contains("swagger-ui"), "Swagger UI is served from the binary");

    // Unknown paths and methods, trailing slashes, correlation ids, oversized and malformed bodies.
    let nowhere = api.send(Method::GET, &api.url("/nowhere"), None).await;
    assert_eq!((nowhere.status, nowhere.body.clone()), (StatusCode::NOT_FOUND, json!({"detail": "Not Found"})));
    let wrong = api.send(Method::PATCH, &api.api("/runs"), None).await;
    assert_eq!(
        (wrong.status, wrong.body.clone()),
        (StatusCode::METHOD_NOT_ALLOWED, json!({"detail": "Method Not Allowed"}))
    );
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let slash = no_redirects.get(api.api("/agents/?page=1")).send().await.unwrap();
    assert_eq!(slash.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(slash.headers()["location"], "/api/v1/agents?page=1");
    assert!(nowhere.headers.contains_key("x-correlation-id"), "every response has a correlation id");
    let echoed = api.client.get(api.api("/runs")).header("X-Correlation-ID", "abc-123").send().await.unwrap();
    assert_eq!(echoed.headers()["x-correlation-id"], "abc-123");
    let huge = json!({"name": "x".repeat(api.config.api.max_body_bytes), "url": "http://x"});
    let too_large = api.post("/agents", &huge).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE, "{too_large:?}");
    let malformed = api
        .client
        .post(api.api("/agents"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let malformed: Value = malformed.json().await.unwrap();
    assert_eq!(malformed["errors"][0]["type"], "json_invalid");

    // CORS as configured: the platform UI's origin is allowed, others are refused at preflight.
    let preflight = |origin: &str| {
        api.client
            .request(Method::OPTIONS, api.api("/workflows"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send()
    };
    let allowed = preflight("http://localhost:3000").await.unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(allowed.headers()["access-control-allow-origin"], "http://localhost:3000");
    assert_eq!(allowed.headers()["access-control-allow-credentials"], "true");
    assert_eq!(allowed.headers()["access-control-max-age"], "600");
    let refused = preflight("http://elsewhere:1").await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.text().await.unwrap(), "Disallowed CORS origin");

    // /metrics parses as Prometheus text, and its counters moved with the run.
    let metrics = api.send(Method::GET, &api.url("/metrics"), None).await;
    assert!(metrics.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let scrape =
        prometheus_parse::Scrape::parse(metrics.text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text");
    let value = |name: &str, label: (&str, &str)| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    let finished_before = value("runvisor_runs_finished_total", ("status", "COMPLETED"));
    assert!(finished_before >= 1.0, "{}", metrics.text);
    assert!(value("runvisor_attempts_total", ("agent", "echo")) >= 1.0);
    assert!(value("runvisor_http_requests_total", ("route", "/api/v1/runs/:run_id")) >= 1.0, "{}", metrics.text);
    let run_id = api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {}})).await.body["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    api.until_terminal(&run_id).await;
    let again = api.send(Method::GET, &api.url("/metrics"), None).await;
    let scrape = prometheus_parse::Scrape::parse(again.text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let finished_after: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "runvisor_runs_finished_total" && s.labels.get("status") == Some("COMPLETED"))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    // Other tests in this process finish runs too: the counter moved by at least this one.
    assert!(finished_after > finished_before, "the counter moved with the run: {finished_before} → {finished_after}");
    api.stop().await;
}

#[tokio::test]
async fn a_bearer_token_guards_every_route_but_health() {
    let api = TestApi::start(TestDb::sqlite().await, |config| config.api.auth_token = "t0ken".into()).await;
    let refused = api.get("/runs").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.body, json!({"detail": "Not authenticated"}));
    assert_eq!(refused.headers["www-authenticate"], "Bearer");
    let wrong = api.client.get(api.api("/runs")).bearer_auth("t0keN").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = api.client.get(api.api("/runs")).bearer_auth("t0ken").send().await.unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    assert_eq!(api.send(Method::GET, &api.url("/health"), None).await.status, StatusCode::OK);
    assert_eq!(api.send(Method::GET, &api.url("/metrics"), None).await.status, StatusCode::UNAUTHORIZED);
    api.stop().await;
}

/// A retry after the plan was edited runs again the calls whose input changed, gives the failed
/// call a fresh budget, and is not undone by a cancellation asked for before it arriving late.
#[tokio::test]
async fn a_retry_reruns_edited_calls_and_outlives_a_stale_cancellation() {
    let api = TestApi::start(TestDb::sqlite().await, |_| {}).await;
    let steps = |v: i64| {
        json!({
            "a": {"agent_name": "echo", "input_mapping": {"v": v}, "next_step": "b"},
            "b": {"agent_name": "fail", "input_mapping": {"message": "not yet", "times": 3}, "next_step": "c"},
            "c": {"agent_name": "sleep", "input_mapping": {"ms": 1500}, "next_step": null}
        })
    };
    let created = api.post("/workflows", &workflow("edited", steps(1))).await;
    let id = created.body["id"].as_str().unwrap().to_string();
    let run_id = api.post(&format!("/workflows/{id}/execute"), &json!({"input_data": {}})).await.body["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(api.until_terminal(&run_id).await.0["status"], "FAILED");
    // The cancellation a user asked for before retrying, delivered only now.
    let stale = runvisor::wire::CancellationMessage {
        run_id: run_id.clone(),
        cancelled_by: Some("system".into()),
        reason: Some("too late".into()),
        timestamp: runvisor::wire::timestamp_now(),
        message_type: "cancellation_request".into(),
    };
    let edited = workflow("edited", steps(2));
    let updated = api
        .put(&format!("/workflows/{id}"), &json!({"start_step": edited["start_step"], "steps": edited["steps"]}))
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
    assert_eq!(api.post(&format!("/runs/{run_id}/retry"), &json!({})).await.status, StatusCode::ACCEPTED);
    poll_steps(&api, &run_id, |steps| steps.iter().any(|s| s["step_id"] == "c" && s["attempt_status"] == "RUNNING"))
        .await;
    let publisher =
        runvisor::kafka::producer::Publisher::new(&api.broker, &api.config.kafka, Duration::from_secs(10)).unwrap();
    publisher.send(&api.config.kafka.cancellations_topic, &run_id, &serde_json::to_vec(&stale).unwrap()).await.unwrap();

    let (run, steps) = api.until_terminal(&run_id).await;
    assert_eq!(run["status"], "COMPLETED", "the stale cancellation is ignored: {run}");
    let calls = |step: &str| -> Vec<(i64, String, i64)> {
        attempts_of(&steps, step)
            .iter()
            .map(|s| {
                (
                    s["attempt"].as_i64().unwrap(),
                    s["attempt_status"].as_str().unwrap().to_string(),
                    s["input_data"]["v"].as_i64().unwrap_or(0),
                )
            })
            .collect()
    };
    assert_eq!(calls("a"), [(1, "COMPLETED".into(), 1), (2, "COMPLETED".into(), 2)], "a's input changed: called again");
    let b: Vec<(i64, String)> = calls("b").into_iter().map(|(n, s, _)| (n, s)).collect();
    assert_eq!(b, [(1, "FAILED".into()), (2, "FAILED".into()), (3, "FAILED".into()), (4, "COMPLETED".into())]);
    api.stop().await;
}
