//! The `runvisor` binary as a user runs it, from a fresh directory with no services.

mod common;

use std::process::Command;

fn runvisor(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_runvisor"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUNVISOR__DATABASE__URL")
        .output()
        .expect("the binary runs")
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
    assert!(stdout.contains("FAILED") && stdout.contains("error: Step 'a' (agent: fail) failed: no way"), "{stdout}");

    let output =
        runvisor(dir.path(), &["validate", common::shared_examples().join("sample_workflow.json").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("unknown agent 'ResearchAgent'"), "{stdout}");
}
