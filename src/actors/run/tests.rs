use super::super::testing::{Harness, fast_config, plan, run_plan};
use entity::{RunStatus, StepStatus};
use serde_json::json;

/// Asserts the (step, attempt, status) of every attempt row, in start order.
fn assert_attempts(recorded: &super::super::testing::Recorded, expected: &[(&str, i32, StepStatus)]) {
    let found = recorded.summary();
    let found: Vec<(&str, i32, StepStatus)> = found.iter().map(|(s, a, st)| (s.as_str(), *a, *st)).collect();
    assert_eq!(found, expected);
}

#[tokio::test]
async fn a_pipeline_passes_outputs_along_and_ends_with_the_last_output() {
    let recorded = run_plan(
        plan("a", json!({
            "a": {"agent_name": "echo", "input_mapping": {"topic": "${workflow.input.topic}", "n": 2}, "next_step": "b"},
            "b": {"agent_name": "echo", "input_mapping": {"title": "About ${a.output.topic}", "n": "${a.output.n}"}}
        })),
        json!({"topic": "rust"}),
    )
    .await;
    assert_eq!(recorded.outcome.status, RunStatus::Completed, "{:?}", recorded.outcome.error);
    assert_eq!(recorded.outcome.output, Some(json!({"title": "About rust", "n": 2})));
    assert_attempts(&recorded, &[("a", 1, StepStatus::Completed), ("b", 1, StepStatus::Completed)]);
    // RUNNING is the claim, made directly; the terminal status is a journaled write.
    assert_eq!(recorded.run_statuses(), [RunStatus::Completed]);
    // One event per committed transition, in order: run RUNNING, 2 × (attempt RUNNING, COMPLETED), run COMPLETED.
    assert_eq!(recorded.events.len(), 6);
}

#[tokio::test]
async fn an_invalid_plan_fails_the_run_without_calling_anything() {
    let recorded = run_plan(plan("a", json!({"a": {"agent_name": "NoSuchAgent"}})), json!({})).await;
    assert_eq!(recorded.outcome.status, RunStatus::Failed);
    assert_eq!(
        recorded.outcome.error.as_deref(),
        Some("Invalid workflow plan: step 'a': agent_name: unknown agent 'NoSuchAgent'")
    );
    assert!(recorded.attempts().is_empty());
    assert_eq!(recorded.run_statuses(), [RunStatus::Failed]);
}

#[tokio::test]
async fn a_bad_reference_fails_its_step_naming_field_and_expression() {
    let recorded = run_plan(
        plan("a", json!({"a": {"agent_name": "echo", "input_mapping": {"x": "${workflow.input.missing}"}}})),
        json!({}),
    )
    .await;
    assert_eq!(
        recorded.outcome.error.as_deref(),
        Some(
            "Step 'a' (agent: echo) failed: input field 'x' (${workflow.input.missing}): key 'missing' not found in workflow.input"
        )
    );
}

#[tokio::test]
async fn retryable_failures_are_retried_per_policy_permanent_ones_are_not() {
    let recorded = run_plan(
        plan("a", json!({"a": {"agent_name": "fail", "input_mapping": {"message": "flaky", "times": 2}}})),
        json!({}),
    )
    .await;
    assert_eq!(recorded.outcome.status, RunStatus::Completed);
    assert_attempts(
        &recorded,
        &[("a", 1, StepStatus::Failed), ("a", 2, StepStatus::Failed), ("a", 3, StepStatus::Completed)],
    );

    let recorded = run_plan(
        plan("a", json!({"a": {"agent_name": "fail", "input_mapping": {"message": "flaky", "times": 5}}})),
        json!({}),
    )
    .await;
    assert_eq!(recorded.outcome.error.as_deref(), Some("Step 'a' (agent: fail) failed: flaky (attempt 3 of 3)"));
    assert_eq!(recorded.attempts().len(), 3);

    let recorded =
        run_plan(plan("a", json!({"a": {"agent_name": "fail", "input_mapping": {"message": "bad input"}}})), json!({}))
            .await;
    assert_eq!(recorded.outcome.error.as_deref(), Some("Step 'a' (agent: fail) failed: bad input"));
    assert_attempts(&recorded, &[("a", 1, StepStatus::Failed)]);
}

#[tokio::test]
async fn a_panicking_step_actor_is_a_failed_attempt_and_is_retried() {
    let recorded =
        run_plan(plan("a", json!({"a": {"agent_name": "panic", "input_mapping": {"message": "kaboom"}}})), json!({}))
            .await;
    assert_eq!(recorded.outcome.status, RunStatus::Failed);
    let error = recorded.outcome.error.clone().unwrap();
    assert!(error.starts_with("Step 'a' (agent: panic) failed: StepActor crashed: "), "{error}");
    assert!(error.contains("kaboom") && error.ends_with("(attempt 3 of 3)"), "{error}");
    assert_eq!(recorded.attempts().len(), 3);
    assert!(recorded.attempts().iter().all(|a| a.status() == StepStatus::Failed));
}

#[tokio::test]
async fn parallel_blocks_collect_outputs_and_report_every_failure() {
    let steps = json!({
        "p": {"type": "parallel", "parallel_steps": ["x", "y", "z"], "max_parallelism": 2, "next_step": "after"},
        "x": {"agent_name": "sleep", "input_mapping": {"ms": 5, "v": "x"}},
        "y": {"agent_name": "echo", "input_mapping": {"v": "y"}},
        "z": {"agent_name": "echo", "input_mapping": {"v": "z"}},
        "after": {"agent_name": "echo", "input_mapping": {"all": "${p.output}", "x": "${x.output.v}"}}
    });
    let recorded = run_plan(plan("p", steps), json!({})).await;
    assert_eq!(recorded.outcome.status, RunStatus::Completed, "{:?}", recorded.outcome.error);
    let output = recorded.outcome.output.clone().unwrap();
    assert_eq!(output["all"]["y"], json!({"v": "y"}));
    assert_eq!(output["x"], "x");
    let rows = recorded.attempts();
    assert!(rows.iter().filter(|r| r.start.step_id != "after").all(|r| r.start.parent_step_id.as_deref() == Some("p")));
    // max_parallelism 2: z starts only after x or y ended.
    let started: Vec<&str> = rows.iter().map(|r| r.start.step_id.as_str()).collect();
    assert_eq!(started[2], "z");

    let failing = json!({
        "p": {"type": "parallel", "parallel_steps": ["x", "y", "z"]},
        "x": {"agent_name": "fail", "input_mapping": {"message": "no"}},
        "y": {"agent_name": "echo"},
        "z": {"agent_name": "fail", "input_mapping": {"message": "no"}}
    });
    let recorded = run_plan(plan("p", failing), json!({})).await;
    assert_eq!(
        recorded.outcome.error.as_deref(),
        Some(
            "Step 'p' (agent: parallel) failed: Parallel execution failed: 2 step(s) failed: x, z. \
             Failed: Step 'x' (agent: fail) failed: no; Step 'z' (agent: fail) failed: no"
        )
    );
}

#[tokio::test]
async fn parallel_members_see_only_what_existed_before_the_block() {
    let steps = json!({
        "p": {"type": "parallel", "parallel_steps": ["x", "y"], "max_parallelism": 1},
        "x": {"agent_name": "echo"},
        "y": {"agent_name": "echo", "input_mapping": {"sibling": "${x.output}"}}
    });
    let recorded = run_plan(plan("p", steps), json!({})).await;
    let error = recorded.outcome.error.clone().unwrap();
    assert!(error.contains("Parallel execution failed: 1 step(s) failed: y"), "{error}");
}

#[tokio::test]
async fn conditionals_take_a_branch_or_none() {
    let steps = |expression: &str| {
        json!({
            "c": {"type": "conditional", "condition": {"expression": expression}, "if_true_step": "t", "next_step": "after"},
            "t": {"agent_name": "echo", "input_mapping": {"took": "then"}},
            "after": {"agent_name": "echo", "input_mapping": {"c": "${c.output}"}}
        })
    };
    let recorded = run_plan(plan("c", steps("${workflow.input.score} > 0.8")), json!({"score": 0.9})).await;
    assert_eq!(
        recorded.outcome.output.clone().unwrap()["c"],
        json!({"condition_result": true, "branch_taken": "then", "branch_step_id": "t", "branch_output": {"took": "then"}})
    );
    let recorded = run_plan(plan("c", steps("${workflow.input.score} > 0.8")), json!({"score": 0.1})).await;
    assert_eq!(
        recorded.outcome.output.clone().unwrap()["c"],
        json!({"condition_result": false, "branch_taken": "else", "branch_step_id": null, "branch_output": null})
    );
    assert_eq!(recorded.summary().len(), 1, "only 'after' ran");
    let recorded = run_plan(plan("c", steps("${workflow.input.score} > 0.8")), json!({})).await;
    let error = recorded.outcome.error.clone().unwrap();
    assert!(error.starts_with("Step 'c' (agent: conditional) failed: cannot evaluate condition"), "{error}");
}

#[tokio::test]
async fn loops_chain_body_steps_within_an_iteration() {
    let steps = json!({
        "l": {"type": "loop", "loop_config": {"collection": "${workflow.input.items}", "loop_body": ["a", "b"],
              "execution_mode": "parallel", "max_parallelism": 2, "max_iterations": 3}, "next_step": "after"},
        "a": {"agent_name": "echo", "input_mapping": {"item": "${loop.item}", "i": "${loop.index}"}},
        "b": {"agent_name": "echo", "input_mapping": {"from_a": "${a.output.item}", "label": "${loop.index}/${loop.total}", "last": "${loop.is_last}"}},
        "after": {"agent_name": "echo", "input_mapping": {"l": "${l.output}"}}
    });
    let recorded = run_plan(plan("l", steps), json!({"items": ["p", "q", "r", "s"]})).await;
    assert_eq!(recorded.outcome.status, RunStatus::Completed, "{:?}", recorded.outcome.error);
    assert_eq!(
        recorded.outcome.output.clone().unwrap()["l"],
        json!({"iterations": [
            {"from_a": "p", "label": "0/3", "last": false},
            {"from_a": "q", "label": "1/3", "last": false},
            {"from_a": "r", "label": "2/3", "last": true}
        ], "total_count": 3})
    );
    let rows = recorded.attempts();
    let body: Vec<_> = rows.iter().filter(|r| r.start.parent_step_id.as_deref() == Some("l")).collect();
    assert_eq!(body.len(), 6);
    let mut indices: Vec<i32> = body.iter().filter_map(|r| r.start.loop_iteration_index).collect();
    indices.sort();
    assert_eq!(indices, [0, 0, 1, 1, 2, 2]);
    // Each call of a body step has its own row id.
    let ids: std::collections::HashSet<_> = rows.iter().map(|r| r.start.id.clone()).collect();
    assert_eq!(ids.len(), rows.len());
}

#[tokio::test]
async fn loop_body_outputs_stay_inside_their_iteration() {
    let steps = json!({
        "l": {"type": "loop", "loop_config": {"collection": [1], "loop_body": ["a"]}, "next_step": "after"},
        "a": {"agent_name": "echo"},
        "after": {"agent_name": "echo", "input_mapping": {"a": "${a.output}"}}
    });
    let recorded = run_plan(plan("l", steps), json!({})).await;
    assert!(recorded.outcome.error.clone().unwrap().contains("step 'a' has not completed"));
}

fn loop_with(on_error: &str) -> serde_json::Value {
    plan(
        "l",
        json!({
            "l": {"type": "loop", "loop_config": {"collection": "${workflow.input.items}", "loop_body": ["b"], "on_error": on_error}},
            "b": {"agent_name": "fail", "input_mapping": {"message": "bad ${loop.item}", "times": "${loop.item}"}}
        }),
    )
}

#[tokio::test]
async fn loop_error_policies() {
    // times = 0 succeeds at once; times = 9 always fails (3 attempts).
    let items = json!({"items": [0, 9, 0, 9]});
    let recorded = run_plan(loop_with("continue"), items.clone()).await;
    assert_eq!(recorded.outcome.status, RunStatus::Completed);
    let output = recorded.outcome.output.clone().unwrap();
    assert_eq!(output["total_count"], 4);
    assert_eq!(output["failed_count"], 2);
    assert_eq!(output["iterations"][1], serde_json::Value::Null);
    assert_eq!(output["iterations"][2]["times"], 0);

    let recorded = run_plan(loop_with("collect"), items.clone()).await;
    assert_eq!(
        recorded.outcome.error.as_deref(),
        Some(
            "Step 'l' (agent: loop) failed: Loop completed with 2 errors: \
             Iteration 1: Step 'b' (agent: fail) failed: bad 9 (attempt 3 of 3); \
             Iteration 3: Step 'b' (agent: fail) failed: bad 9 (attempt 3 of 3)"
        )
    );
    assert_eq!(recorded.attempts().len(), 2 + 2 * 3);

    let recorded = run_plan(loop_with("stop"), items).await;
    assert_eq!(
        recorded.outcome.error.as_deref(),
        Some("Step 'l' (agent: loop) failed: Iteration 1: Step 'b' (agent: fail) failed: bad 9 (attempt 3 of 3)")
    );
    // Sequential: iterations 2 and 3 never start.
    assert_eq!(recorded.attempts().len(), 1 + 3);
}

fn fork_join(policy: serde_json::Value, slow_ms: u64) -> serde_json::Value {
    let mut config = json!({"branches": {
        "fast": {"steps": ["f1", "f2"]},
        "slow": {"steps": ["s1"], "timeout_seconds": 0.05},
        "bad": {"steps": ["b1"]}
    }});
    for (k, v) in policy.as_object().unwrap() {
        config[k] = v.clone();
    }
    plan(
        "fj",
        json!({
            "fj": {"type": "fork_join", "fork_join_config": config},
            "f1": {"agent_name": "echo", "input_mapping": {"v": 1}},
            "f2": {"agent_name": "echo", "input_mapping": {"v": "${f1.output.v}"}},
            "s1": {"agent_name": "sleep", "input_mapping": {"ms": slow_ms}},
            "b1": {"agent_name": "fail", "input_mapping": {"message": "down"}}
        }),
    )
}

#[tokio::test]
async fn fork_join_policies_and_branch_timeouts() {
    let recorded = run_plan(fork_join(json!({"join_policy": "any"}), 10_000), json!({})).await;
    assert_eq!(recorded.outcome.status, RunStatus::Completed, "{:?}", recorded.outcome.error);
    assert_eq!(recorded.outcome.output, Some(json!({"fast": {"v": 1}, "slow": null, "bad": null})));
    let rows = recorded.attempts();
    let slow = rows.iter().find(|r| r.start.step_id == "s1").unwrap();
    assert_eq!(slow.status(), StepStatus::Cancelled, "the timed-out call ends CANCELLED");
    assert_eq!(slow.start.branch_name.as_deref(), Some("slow"));
    assert_eq!(slow.start.join_policy.as_deref(), Some("any"));
    assert_eq!(slow.start.parent_step_id.as_deref(), Some("fj"));

    let recorded = run_plan(fork_join(json!({"join_policy": "majority"}), 10_000), json!({})).await;
    assert_eq!(
        recorded.outcome.error.as_deref(),
        Some(
            "Step 'fj' (agent: fork_join) failed: Fork-join failed: 1 of 3 branches succeeded (policy: MAJORITY). \
             Failed: bad: Step 'b1' (agent: fail) failed: down; slow: timed out after 0.05s"
        )
    );
    let recorded = run_plan(fork_join(json!({"join_policy": "n_of_m", "n_required": 2}), 1), json!({})).await;
    assert_eq!(recorded.outcome.status, RunStatus::Completed, "{:?}", recorded.outcome.error);
    let recorded = run_plan(fork_join(json!({"join_policy": "all"}), 1), json!({})).await;
    assert!(recorded.outcome.error.clone().unwrap().contains("2 of 3 branches succeeded (policy: ALL)"));
}

#[tokio::test]
async fn cancelling_a_run_cancels_its_calls_in_flight() {
    let mut harness = Harness::start(&fast_config()).await;
    let done = harness.submit(
        "run-c",
        plan("a", json!({"a": {"agent_name": "sleep", "input_mapping": {"ms": 60_000}, "next_step": "b"}, "b": {"agent_name": "echo"}})),
        json!({}),
    );
    // Wait until the call is in flight (its StepActor exists), then cancel.
    loop {
        if let Some(super::Spawned::Step { .. }) = harness.spawned.recv().await {
            break;
        }
    }
    harness
        .supervisor
        .cast(super::super::supervisor::SupervisorMsg::Cancel {
            run_id: "run-c".into(),
            cancelled_by: Some("ops".into()),
            reason: Some("not needed".into()),
            requested_at: None,
            done: None,
        })
        .unwrap();
    let outcome = done.await.unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled);
    assert_eq!(outcome.error.as_deref(), Some("Cancelled: not needed"));
    let writes = std::mem::take(&mut *harness.log.lock().unwrap());
    let recorded = super::super::testing::Recorded { outcome, writes, events: Vec::new() };
    assert_attempts(&recorded, &[("a", 1, StepStatus::Cancelled)]);
}

#[tokio::test]
async fn a_killed_run_actor_fails_its_run_and_its_running_attempts() {
    let mut harness = Harness::start(&fast_config()).await;
    let done = harness.submit(
        "run-k",
        plan("a", json!({"a": {"agent_name": "sleep", "input_mapping": {"ms": 60_000}}})),
        json!({}),
    );
    let mut run_actor = None;
    while let Some(spawned) = harness.spawned.recv().await {
        match spawned {
            super::Spawned::Run { actor, .. } => run_actor = Some(actor),
            super::Spawned::Step { .. } => break,
        }
    }
    run_actor.expect("the run actor was spawned first").kill();
    let outcome = done.await.unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.error.as_deref(), Some("RunActor was killed"));
    let writes = harness.log.lock().unwrap().clone();
    assert!(writes.iter().any(|w| matches!(w, super::WriteOp::AbandonAttempts { .. })));
    let last = writes.last().unwrap();
    assert!(matches!(last, super::WriteOp::Run(run) if run.status == RunStatus::Failed), "{last:?}");
}

/// Row ids must not change between versions: a newer executor resuming an older one's run must find
/// its attempts. The expected ids are computed apart from Rust (Python's `uuid.uuid5(uuid.NAMESPACE_OID,
/// "<run_id>\n<call_path>/<step_id>\n<attempt>")`).
#[test]
fn attempt_row_ids_stay_what_earlier_versions_wrote() {
    assert_eq!(super::attempt_row_id("r", "", "a", 1), "95a7567b-c38e-5c6b-b255-1a4775e44995");
    assert_eq!(super::attempt_row_id("run-42", "/loop[3]", "body", 7), "7e9c0c83-5c44-53e1-a95c-4d9090441e76");
}
