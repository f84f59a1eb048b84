//! The contract's example plans, and the project's own, parse and validate.

mod common;

use runvisor::plan::{self, StepKind};
use serde_json::Value;

fn read(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn plans_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut plans: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.to_string_lossy().ends_with("_input.json"))
        .collect();
    plans.sort();
    plans
}

#[test]
fn every_shared_example_validates_when_its_agents_are_registered() {
    let plans = plans_in(&common::shared_examples());
    assert!(plans.len() >= 5, "expected the contract's examples, found {plans:?}");
    for path in plans {
        let document = read(&path);
        let plan = plan::validate(&document, &|_: &str| true).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!plan.main_chain.is_empty());
        // With no agents registered, every agent step is reported, and nothing else.
        let err = plan::validate(&document, &|_: &str| false).unwrap_err();
        let agent_steps = plan.steps.values().filter(|s| matches!(s.kind, StepKind::Agent { .. })).count();
        assert_eq!(err.problems.len(), agent_steps, "{}: {err}", path.display());
        assert!(err.problems.iter().all(|p| p.field == "agent_name"), "{}: {err}", path.display());
    }
}

#[test]
fn the_loop_example_has_the_shape_the_contract_describes() {
    let document = read(&common::shared_examples().join("loop_sequential_example.json"));
    let known = ["DataFetcher", "ItemProcessor", "ResultAggregator"];
    let plan = plan::validate(&document, &|name: &str| known.contains(&name)).unwrap();
    assert_eq!(plan.main_chain, ["step-1", "step-2", "step-3"]);
    let StepKind::Loop(spec) = &plan.step("step-2").kind else { panic!("step-2 is a loop") };
    assert_eq!(spec.body, ["step-2-process"]);
    assert_eq!(spec.max_iterations, Some(100));
    assert_eq!(spec.on_error, plan::model::OnError::Continue);
}

#[test]
fn the_project_examples_use_only_built_in_agents() {
    let plans = plans_in(&common::project_examples());
    assert!(plans.len() >= 5, "{plans:?}");
    let builtin = |name: &str| runvisor::config::BUILTIN_AGENTS.contains(&name);
    let mut kinds = std::collections::BTreeSet::new();
    for path in plans {
        let plan = plan::validate(&read(&path), &builtin).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        kinds.extend(plan.steps.values().map(|s| s.kind.type_name()));
    }
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["agent", "conditional", "fork_join", "loop", "parallel"]);
}
