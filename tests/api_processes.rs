//! The API as users deploy it, in real processes: `runvisor dev` from an empty directory, and
//! `runvisor api` beside `runvisor consume` on tansu and PostgreSQL, killed right after it
//! answered 202 while the broker was down.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ApiProcess, ExecutorProcess, Tansu, TestDb};
use serde_json::{Value, json};

/// Polls `url` (a run) until its status is terminal.
async fn until_terminal(client: &reqwest::Client, url: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(response) = client.get(url).send().await {
            let run: Value = response.json().await.unwrap_or(Value::Null);
            if matches!(run["status"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED")) {
                return run;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} did not end within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// POSTs JSON; the status and the body.
async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (reqwest::StatusCode, Value) {
    let response = client.post(url).json(body).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

/// Creates a workflow through the API at `api` (the prefix included) and returns its id.
async fn create_workflow(client: &reqwest::Client, api: &str, body: &Value) -> String {
    let (status, created) = post(client, &format!("{api}/workflows"), body).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{created}");
    created["id"].as_str().unwrap().to_string()
}

fn workflow_body(name: &str) -> Value {
    json!({"name": name, "start_step": "a", "steps": {
        "a": {"id": "a", "agent_name": "echo", "input_mapping": {"topic": "${workflow.input.topic}"}, "next_step": "b"},
        "b": {"id": "b", "agent_name": "sleep", "input_mapping": {"ms": 100, "topic": "${a.output.topic}"}, "next_step": null}
    }})
}

#[tokio::test]
async fn runvisor_dev_from_an_empty_directory_runs_a_workflow_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = std::env::temp_dir().join(format!("runvisor-dev-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_runvisor"))
        .arg("dev")
        .current_dir(dir.path())
        .env("RUNVISOR__API__LISTEN", "127.0.0.1:0")
        .env_remove("RUNVISOR__DATABASE__URL")
        .env_remove("RUNVISOR__KAFKA__BROKERS")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("runvisor dev starts");
    // The banner names the API's address and a curl that runs the example workflow.
    let stdout = child.stdout.take().unwrap();
    let (banner_tx, banner_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let mut banner = Vec::new();
        for line in lines.by_ref() {
            let done = line.contains("/runs/<run_id>");
            banner.push(line);
            if done {
                break;
            }
        }
        let _ = banner_tx.send(banner.join("\n"));
        // Keep reading until the process ends, as a terminal would.
        lines.for_each(drop);
    });
    let banner =
        tokio::time::timeout(Duration::from_secs(60), banner_rx).await.expect("the banner is printed").unwrap();
    let api = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("API").map(|rest| rest.trim().to_string()))
        .unwrap_or_else(|| panic!("no API line in the banner:\n{banner}"));
    assert!(banner.contains("curl -s -X POST") && banner.contains("/execute"), "{banner}");

    let client = reqwest::Client::new();
    let id = create_workflow(&client, &api, &workflow_body("smoke")).await;
    let (status, accepted) =
        post(&client, &format!("{api}/workflows/{id}/execute"), &json!({"input_data": {"topic": "dev"}})).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    let run = until_terminal(&client, &format!("{api}/runs/{run_id}"), Duration::from_secs(60)).await;
    assert_eq!(run["status"], "COMPLETED", "{run} (log: {})", log_path.display());
    assert_eq!(run["output_data"]["topic"], "dev");

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(60), status).await.expect("dev stops after SIGTERM").unwrap();
    assert!(status.success(), "runvisor dev exits 0 after SIGTERM: {status}");
    assert!(dir.path().join("runvisor.db").exists(), "the embedded database is in the working directory");
}

#[tokio::test]
async fn runs_the_api_accepted_complete_once_though_the_api_died_and_the_broker_was_down() {
    let mut tansu = Tansu::start().await;
    let db = TestDb::postgres().await.migrated().await;
    let url = db.config.url.clone();
    let group = format!("g{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let fast_relay = [("RUNVISOR__OUTBOX__GRACE_MS", "500"), ("RUNVISOR__OUTBOX__PUBLISH_TIMEOUT_MS", "1500")];
    let api = ApiProcess::start(&tansu.brokers(), &url, &fast_relay).await;
    let executor = ExecutorProcess::start("e1", &tansu.brokers(), &url, &group, &fast_relay);
    let client = reqwest::Client::new();
    let prefix = format!("{}/api/v1", api.base);
    let id = create_workflow(&client, &prefix, &workflow_body("durable")).await;
    let execute = format!("{prefix}/workflows/{id}/execute");

    // One run accepted while the broker is up, one while it is down.
    let (status, first) = post(&client, &execute, &json!({"input_data": {"topic": "up"}})).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    tansu.kill();
    let (status, second) = post(&client, &execute, &json!({"input_data": {"topic": "down"}})).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "accepted although the broker is down");
    // The API dies right after answering.
    api.kill();
    assert_eq!(second["status"], "PENDING");
    let waiting = second["error_message"].as_str().unwrap_or_default();
    assert!(waiting.starts_with("Failed to publish to Kafka: "), "the run says why it waits: {second}");
    let second_id = second["run_id"].as_str().unwrap().to_string();
    let queued = db.query(&format!("SELECT message_key FROM runvisor_outbox WHERE message_key = '{second_id}'")).await;
    assert_eq!(queued.len(), 1, "the request waits in the outbox");

    // The broker comes back; the executor's relay publishes what the API could not.
    tansu.start_again().await;
    let reader = runvisor::db::connect(&db.config).await.unwrap();
    for run in [&first, &second] {
        let run_id = run["run_id"].as_str().unwrap();
        let (row, steps) = runvisor::report::wait_for_run(&reader, run_id).await.unwrap();
        assert_eq!(row.status, entity::RunStatus::Completed, "{run_id}: {:?}", row.error_message);
        assert_eq!(row.error_message, None, "the publish error is gone once the run ran");
        let mut attempts: Vec<(String, i32)> = steps.iter().map(|s| (s.step_id.clone(), s.attempt)).collect();
        attempts.sort();
        assert_eq!(attempts, [("a".to_string(), 1), ("b".to_string(), 1)], "{run_id} ran once");
    }
    let left = db.query("SELECT count(*) AS n FROM runvisor_outbox").await;
    assert_eq!(left[0]["n"], 0, "nothing left to publish");
    assert_eq!(executor.terminate().code(), Some(0));
}

/// Two executors; runs cancelled through the API end CANCELLED once, with their calls in flight
/// CANCELLED, whether the cancellation message reached the executor holding the run or the other
/// one (which records it; the holder sees it at its next lease renewal).
#[tokio::test]
async fn runs_cancelled_through_the_api_end_cancelled_whichever_executor_holds_them() {
    let tansu = Tansu::start().await;
    let db = TestDb::postgres().await.migrated().await;
    let url = db.config.url.clone();
    let group = format!("g{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let api = ApiProcess::start(&tansu.brokers(), &url, &[]).await;
    let left = ExecutorProcess::start("left", &tansu.brokers(), &url, &group, &[]);
    let right = ExecutorProcess::start("right", &tansu.brokers(), &url, &group, &[]);
    let client = reqwest::Client::new();
    let prefix = format!("{}/api/v1", api.base);
    let body = json!({"name": "long", "start_step": "wait", "steps": {
        "wait": {"id": "wait", "agent_name": "sleep", "input_mapping": {"ms": 120000}, "next_step": null}}});
    let id = create_workflow(&client, &prefix, &body).await;

    // Start runs until both executors hold some with a call in flight.
    let held = "SELECT count(DISTINCT r.owner_id) AS n FROM workflow_runs r \
                JOIN step_executions s ON s.run_id = r.run_id AND s.status = 'RUNNING'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut runs = Vec::new();
    while db.query(held).await[0]["n"] != 2 {
        assert!(tokio::time::Instant::now() < deadline, "both executors never held runs");
        let (_, accepted) =
            post(&client, &format!("{prefix}/workflows/{id}/execute"), &json!({"input_data": {}})).await;
        runs.push(accepted["run_id"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let in_flight: Vec<String> = db
        .query("SELECT DISTINCT run_id FROM step_executions WHERE status = 'RUNNING'")
        .await
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    for run_id in &runs {
        let (status, answer) =
            post(&client, &format!("{prefix}/runs/{run_id}/cancel"), &json!({"reason": "not needed"})).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{run_id}: {answer}");
    }

    // Every call that was in flight ends CANCELLED, on either executor (leases renew every 1 s).
    let running = "SELECT count(*) AS n FROM step_executions WHERE status = 'RUNNING'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while db.query(running).await[0]["n"] != 0 {
        assert!(tokio::time::Instant::now() < deadline, "calls still RUNNING after the cancellations");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for run_id in &in_flight {
        let rows = db
            .query(&format!(
                "SELECT r.status, r.error_message, s.status AS attempt, s.error_message AS why \
                 FROM workflow_runs r JOIN step_executions s ON s.run_id = r.run_id WHERE r.run_id = '{run_id}'"
            ))
            .await;
        assert_eq!(rows.len(), 1, "{run_id}: {rows:?}");
        assert_eq!(rows[0]["status"], "CANCELLED", "{run_id}");
        assert_eq!(rows[0]["error_message"], "Cancelled: not needed", "{run_id}: written once, by the API");
        assert_eq!(rows[0]["attempt"], "CANCELLED", "{run_id}: {rows:?}");
    }
    let audits = db.query("SELECT count(*) AS n FROM audit_logs WHERE action = 'cancel'").await;
    assert_eq!(audits[0]["n"], runs.len() as i64);
    assert_eq!(left.terminate().code(), Some(0));
    assert_eq!(right.terminate().code(), Some(0));
}
