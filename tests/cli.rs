//! The `runvisor` binary as a user runs it, from a fresh directory with no services.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

fn command(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runvisor"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("RUNVISOR__DATABASE__URL")
        .env_remove("RUNVISOR__KAFKA__BROKERS")
        .env("RUNVISOR__EXECUTOR__RETRY__INITIAL_DELAY_MS", "10")
        .env("RUNVISOR__EXECUTOR__LEASE_MS", "3000");
    command
}

fn runvisor(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    command(dir, args).output().expect("the binary runs")
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", stdout(output), String::from_utf8_lossy(&output.stderr)))
}

fn write_plan(dir: &std::path::Path, name: &str, steps: Value) -> String {
    let plan = serde_json::json!({"name": name, "start_step": "a", "steps": steps});
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, plan.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

/// Starts `runvisor run PLAN` and waits until it says the run started; returns the process and
/// the run_id.
fn start_run(dir: &std::path::Path, plan: &str) -> (std::process::Child, String) {
    let mut child = command(dir, &["run", plan]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let started = lines.by_ref().find_map(|line| {
        let rest = line.strip_prefix("run ")?;
        rest.split_once(" started").map(|(run_id, _)| run_id.to_string())
    });
    // Keep reading stderr, as a terminal would, so that later writes to it do not fail.
    std::thread::spawn(move || lines.for_each(drop));
    match started {
        Some(run_id) => (child, run_id),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("runvisor run never said the run started");
        }
    }
}

/// Polls `runvisor show RUN -o json` until `done` holds.
fn wait_for(dir: &std::path::Path, run_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let shown = runvisor(dir, &["show", run_id, "-o", "json"]);
        if shown.status.success() && done(&json(&shown)) {
            return json(&shown);
        }
        assert!(std::time::Instant::now() < deadline, "{run_id} never got there: {}", stdout(&shown));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_example_runs_to_completion_on_the_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["pipeline", "parallel", "conditional", "loop", "fork_join", "ui_made"] {
        let plan = common::project_examples().join(format!("{name}.json"));
        let output =
            runvisor(dir.path(), &["run", plan.to_str().unwrap(), "--input", r#"{"topic": "rust", "city": "Oslo"}"#]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("COMPLETED"), "{name}: {stdout}");
        assert!(stdout.lines().any(|l| l.starts_with("step ") && l.contains("attempt")), "{name}: {stdout}");
    }
    assert!(dir.path().join("runvisor.db").exists(), "the embedded database is a file in the working directory");
}

#[test]
fn a_failing_run_exits_non_zero_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("failing.json");
    std::fs::write(
        &plan,
        r#"{"name": "failing", "start_step": "a", "steps": {"a": {"id": "a", "agent_name": "fail", "input_mapping": {"message": "no way"}}}}"#,
    )
    .unwrap();
    let output = runvisor(dir.path(), &["run", plan.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(String::from_utf8_lossy(&output.stderr).contains("started"), "the run id is printed as it starts");
    assert!(stdout.contains("FAILED") && stdout.contains("error: Step 'a' (agent: fail) failed: no way"), "{stdout}");

    let output =
        runvisor(dir.path(), &["validate", common::shared_examples().join("sample_workflow.json").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(4), "an invalid plan");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("unknown agent 'ResearchAgent'"), "{stdout}");
}

#[test]
fn ctrl_c_cancels_the_run_prints_it_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        "slow",
        serde_json::json!({"a": {"id": "a", "agent_name": "sleep", "input_mapping": {"ms": 60000}}}),
    );
    let (mut child, run_id) = start_run(dir.path(), &plan);
    wait_for(dir.path(), &run_id, |doc| doc["steps"].as_array().is_some_and(|s| !s.is_empty()));
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut printed).unwrap();
    assert!(
        printed.contains(&format!("run {run_id}  CANCELLED")) && printed.contains("Cancelled: interrupted"),
        "{printed}"
    );
    let shown = json(&runvisor(dir.path(), &["show", &run_id, "-o", "json"]));
    assert_eq!(shown["run"]["status"], "CANCELLED");
    assert_eq!(shown["run"]["error_message"], "Cancelled: interrupted");
    assert_eq!(shown["steps"][0]["attempt_status"], "CANCELLED", "nothing is left RUNNING: {shown}");

    // SIGTERM does the same, with 143.
    let (mut child, run_id) = start_run(dir.path(), &plan);
    wait_for(dir.path(), &run_id, |doc| doc["steps"].as_array().is_some_and(|s| !s.is_empty()));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    let shown = json(&runvisor(dir.path(), &["show", &run_id, "-o", "json"]));
    assert_eq!(
        (shown["run"]["status"].as_str(), shown["steps"][0]["attempt_status"].as_str()),
        (Some("CANCELLED"), Some("CANCELLED"))
    );
}

#[test]
fn runs_show_cancel_and_retry_act_on_runs_made_by_run() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = write_plan(
        dir.path(),
        "flaky",
        serde_json::json!({
            "a": {"id": "a", "agent_name": "echo", "input_mapping": {"x": 1}, "next_step": "b"},
            "b": {"id": "b", "agent_name": "fail", "input_mapping": {"message": "not yet", "times": 3}}
        }),
    );
    let failed = runvisor(dir.path(), &["run", &flaky, "-o", "json"]);
    assert_eq!(failed.status.code(), Some(1), "a FAILED run exits 1");
    let run_id = json(&failed)["run"]["run_id"].as_str().unwrap().to_string();

    let listed = json(&runvisor(dir.path(), &["runs", "--status", "FAILED", "--since", "1h", "-o", "json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["run_id"], run_id.as_str());
    let table = stdout(&runvisor(dir.path(), &["runs", "--workflow", "flaky"]));
    assert!(table.starts_with("RUN ") && table.contains(&run_id) && table.contains("FAILED"), "{table}");

    let refused = runvisor(dir.path(), &["cancel", &run_id]);
    assert_eq!(refused.status.code(), Some(8), "a FAILED run cannot be cancelled");
    let retried = runvisor(dir.path(), &["retry", &run_id, "-o", "json"]);
    assert_eq!(retried.status.code(), Some(0), "{}", String::from_utf8_lossy(&retried.stderr));
    let document = json(&retried);
    assert_eq!(document["run"]["status"], "COMPLETED");
    let attempts: Vec<(String, i64)> = document["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step_id"].as_str().unwrap().to_string(), s["attempt"].as_i64().unwrap()))
        .collect();
    assert_eq!(attempts.iter().filter(|(s, _)| s == "a").count(), 1, "the completed call is not made again");
    assert_eq!(attempts.iter().filter(|(s, _)| s == "b").map(|(_, n)| *n).max(), Some(4));
    let shown = stdout(&runvisor(dir.path(), &["show", &run_id]));
    assert!(shown.contains("COMPLETED") && shown.contains("data in ") && shown.contains("runvisor.db"), "{shown}");

    // A run in another process, cancelled from here: it ends CANCELLED there, which exits 3.
    let slow = write_plan(
        dir.path(),
        "slow",
        serde_json::json!({"a": {"id": "a", "agent_name": "sleep", "input_mapping": {"ms": 60000}}}),
    );
    let (mut child, slow_id) = start_run(dir.path(), &slow);
    wait_for(dir.path(), &slow_id, |doc| doc["steps"].as_array().is_some_and(|s| !s.is_empty()));
    let cancelled = runvisor(dir.path(), &["cancel", &slow_id, "--reason", "not needed"]);
    assert_eq!(cancelled.status.code(), Some(0), "{}", String::from_utf8_lossy(&cancelled.stderr));
    assert_eq!(child.wait().unwrap().code(), Some(3), "the run it was executing was cancelled");
    let shown = json(&runvisor(dir.path(), &["show", &slow_id, "-o", "json"]));
    assert_eq!(shown["run"]["error_message"], "Cancelled: not needed");
    assert_eq!(shown["steps"][0]["attempt_status"], "CANCELLED");
}

#[test]
fn each_documented_exit_code_comes_from_its_case() {
    let dir = tempfile::tempdir().unwrap();
    let code = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = command(dir.path(), args);
        command.envs(env.iter().copied());
        command.output().unwrap().status.code()
    };
    assert_eq!(code(&["run", "--no-such-flag"], &[]), Some(2), "usage");
    std::fs::write(dir.path().join("broken.json"), "{not json").unwrap();
    assert_eq!(code(&["run", "broken.json"], &[]), Some(4), "a plan that is not JSON");
    assert_eq!(code(&["run", "broken.json", "--input", "[1]"], &[]), Some(4), "input that is not an object");
    assert_eq!(code(&["config"], &[("RUNVISOR__EXECUTOR__MAX_CONCURRENT_RUNS", "0")]), Some(5), "configuration");
    let unreachable = [
        ("RUNVISOR__DATABASE__URL", "postgres://nobody@127.0.0.1:1/none"),
        ("RUNVISOR__DATABASE__CONNECT_TIMEOUT_MS", "500"),
    ];
    assert_eq!(code(&["runs"], &unreachable), Some(6), "database unreachable");
    let plan = write_plan(dir.path(), "one", serde_json::json!({"a": {"id": "a", "agent_name": "echo"}}));
    let nobody = [("RUNVISOR__KAFKA__BROKERS", "127.0.0.1:1")];
    assert_eq!(code(&["submit", &plan, "--timeout", "2"], &nobody), Some(7), "broker unreachable");
    assert_eq!(code(&["submit", &plan, "--run-id", ""], &nobody), Some(2), "an empty run_id");
    assert_eq!(code(&["show", "run-nope"], &[]), Some(8), "no such run");
}

#[test]
fn validate_warns_about_probable_mistakes_and_strict_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let typo = write_plan(
        dir.path(),
        "typo",
        serde_json::json!({
            "a": {"id": "a", "agent_name": "echo", "nxt_step": "b", "input_mapping": {"v": "${ghost.output}"}},
            "b": {"id": "b", "agent_name": "echo"}
        }),
    );
    let checked = runvisor(dir.path(), &["validate", &typo]);
    assert_eq!(checked.status.code(), Some(0));
    let text = stdout(&checked);
    for expected in [
        "warning: step 'a': nxt_step: unknown field, ignored; did you mean 'next_step'?",
        "warning: step 'a': input_mapping.v: reads the output of 'ghost', which is not a step of this plan",
        "warning: step 'b': id: nothing runs this step",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let strict = runvisor(dir.path(), &["validate", &typo, "--strict", "-o", "json"]);
    assert_eq!(strict.status.code(), Some(4));
    let report = json(&strict);
    assert_eq!((report["valid"].clone(), report["warnings"].as_array().unwrap().len()), (Value::Bool(false), 3));
    // Agents the database would know, checked offline: warnings, not errors; the plan on stdin.
    let mut child = command(dir.path(), &["validate", "-", "--offline"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"name": "p", "start_step": "a", "steps": {"a": {"id": "a", "agent_name": "Researcher"}}}"#)
        .unwrap();
    let offline = child.wait_with_output().unwrap();
    assert_eq!(offline.status.code(), Some(0));
    assert!(
        stdout(&offline).contains("agent 'Researcher' is neither built in nor configured; not checked (--offline)")
    );
}

#[test]
fn output_closed_early_and_secrets_in_config() {
    let dir = tempfile::tempdir().unwrap();
    // A reader that goes away before runvisor writes: no panic, exit 0.
    let mut child = command(dir.path(), &["config"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let closed = child.wait_with_output().unwrap();
    assert_eq!(closed.status.code(), Some(0), "{}", String::from_utf8_lossy(&closed.stderr));
    assert!(!String::from_utf8_lossy(&closed.stderr).contains("panicked"));
    let shown = runvisor(dir.path(), &["config"]);
    let with_password =
        command(dir.path(), &["config"]).env("RUNVISOR__DATABASE__URL", "postgres://u:s3cret@db/x").output().unwrap();
    assert!(stdout(&shown).contains("url = \"sqlite://runvisor.db?mode=rwc\""));
    let text = stdout(&with_password);
    assert!(!text.contains("s3cret") && text.contains("postgres://u:***@db/x"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_follows_the_run_through_a_broker_and_says_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = common::Tansu::start().await;
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("shared.db").display());
    let group = format!("g{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let executor = common::ExecutorProcess::start("e1", &tansu.brokers(), &url, &group, &[]);
    let plan = write_plan(
        dir.path(),
        "two",
        serde_json::json!({
            "a": {"id": "a", "agent_name": "echo", "input_mapping": {"n": 1}, "next_step": "b"},
            "b": {"id": "b", "agent_name": "sleep", "input_mapping": {"ms": 50}}
        }),
    );
    let env = [("RUNVISOR__KAFKA__BROKERS", tansu.brokers()), ("RUNVISOR__DATABASE__URL", url.clone())];
    let submit = |args: &[&str]| {
        let mut command = command(dir.path(), args);
        command.envs(env.iter().map(|(k, v)| (k, v.as_str())));
        command.output().unwrap()
    };
    let followed =
        tokio::task::block_in_place(|| submit(&["submit", &plan, "--wait", "--run-id", "run-cli-1", "-o", "json"]));
    assert_eq!(followed.status.code(), Some(0), "{}", String::from_utf8_lossy(&followed.stderr));
    let lines: Vec<Value> = stdout(&followed).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let events: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| l.get("attempt"))
        .map(|a| (a["step_id"].as_str().unwrap().to_string(), a["attempt_status"].as_str().unwrap().to_string()))
        .collect();
    assert!(events.contains(&("b".into(), "COMPLETED".into())), "every attempt, as it ends: {events:?}");
    assert_eq!(lines.last().unwrap()["run"]["status"], "COMPLETED");

    let again = tokio::task::block_in_place(|| submit(&["submit", &plan, "--run-id", "run-cli-1"]));
    assert_eq!(again.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&again.stderr).contains("run run-cli-1 already exists (COMPLETED)"));

    assert_eq!(executor.terminate().code(), Some(0));
    let waited = tokio::task::block_in_place(|| submit(&["submit", &plan, "--wait", "--wait-timeout", "1"]));
    assert_eq!(waited.status.code(), Some(9), "no executor: waiting times out");
}
