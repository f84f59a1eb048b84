//! Warnings: what a valid plan probably got wrong.
//!
//! The platform ignores fields it does not know and checks expressions only when their step runs,
//! so runvisor accepts the same plans; but a misspelt `nxt_step` silently ends a chain, and a typo
//! in `${…}` fails a run hours later. These checks report such things before anything runs,
//! without refusing the plan (`runvisor validate --strict` makes them errors):
//! - fields no step type reads, with the closest known name;
//! - steps nothing runs: neither on the main chain nor a member of a compound step that runs;
//! - `${…}` expressions that do not parse, or read a step the plan does not have;
//! - conditions that do not parse.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value};

use super::condition::Condition;
use super::expr::Template;
use super::validate::Problem;
use super::{Plan, StepKind};

const PLAN_FIELDS: &[&str] = &["workflow_id", "name", "version", "start_step", "steps", "description"];
const STEP_FIELDS: &[&str] = &[
    "id",
    "type",
    "agent_name",
    "input_mapping",
    "next_step",
    "parallel_steps",
    "max_parallelism",
    "condition",
    "if_true_step",
    "if_false_step",
    "loop_config",
    "fork_join_config",
];
const CONDITION_FIELDS: &[&str] = &["expression", "operator"];
const LOOP_FIELDS: &[&str] =
    &["collection", "loop_body", "execution_mode", "max_parallelism", "max_iterations", "on_error"];
const FORK_JOIN_FIELDS: &[&str] = &["branches", "join_policy", "n_required", "branch_timeout_seconds"];
const BRANCH_FIELDS: &[&str] = &["steps", "timeout_seconds"];

/// The warnings of `document`; `plan` is its validated form when it validated (reachability and
/// references need it).
pub fn lint(document: &Value, plan: Option<&Plan>) -> Vec<Problem> {
    let mut warnings = Vec::new();
    let Some(fields) = document.as_object() else { return warnings };
    unknown_fields(fields, PLAN_FIELDS, None, "", &mut warnings);
    let steps = fields.get("steps").and_then(Value::as_object);
    let ids: HashSet<&str> = steps.map(|s| s.keys().map(String::as_str).collect()).unwrap_or_default();
    for (id, step) in steps.into_iter().flatten() {
        let Some(step) = step.as_object() else { continue };
        unknown_fields(step, STEP_FIELDS, Some(id), "", &mut warnings);
        let nested = |key: &str| step.get(key).and_then(Value::as_object);
        if let Some(condition) = nested("condition") {
            unknown_fields(condition, CONDITION_FIELDS, Some(id), "condition.", &mut warnings);
            if let Some(expression) = condition.get("expression").and_then(Value::as_str) {
                check_condition(id, expression, &ids, &mut warnings);
            }
        }
        if let Some(config) = nested("loop_config") {
            unknown_fields(config, LOOP_FIELDS, Some(id), "loop_config.", &mut warnings);
            if let Some(collection) = config.get("collection").and_then(Value::as_str) {
                check_template(id, "loop_config.collection", collection, &ids, &mut warnings);
            }
        }
        if let Some(config) = nested("fork_join_config") {
            unknown_fields(config, FORK_JOIN_FIELDS, Some(id), "fork_join_config.", &mut warnings);
            for (name, branch) in config.get("branches").and_then(Value::as_object).into_iter().flatten() {
                if let Some(branch) = branch.as_object() {
                    let at = format!("fork_join_config.branches.{name}.");
                    unknown_fields(branch, BRANCH_FIELDS, Some(id), &at, &mut warnings);
                }
            }
        }
        for (field, value) in nested("input_mapping").into_iter().flatten() {
            if let Value::String(text) = value {
                check_template(id, &format!("input_mapping.{field}"), text, &ids, &mut warnings);
            }
        }
    }
    if let Some(plan) = plan {
        for id in unreached(plan) {
            warnings.push(Problem {
                step: Some(id.to_string()),
                field: "id".into(),
                message: "nothing runs this step: it is neither on the main chain nor a member of a compound step \
                          that runs"
                    .into(),
            });
        }
    }
    warnings
}

fn unknown_fields(
    fields: &Map<String, Value>,
    known: &[&str],
    step: Option<&str>,
    prefix: &str,
    warnings: &mut Vec<Problem>,
) {
    for key in fields.keys().filter(|k| !known.contains(&k.as_str())) {
        let message = match crate::wording::did_you_mean(key, known.iter().copied()) {
            Some(name) => format!("unknown field, ignored; did you mean '{name}'?"),
            None => "unknown field, ignored".to_string(),
        };
        warnings.push(Problem { step: step.map(str::to_string), field: format!("{prefix}{key}"), message });
    }
}

fn check_template(step: &str, field: &str, text: &str, ids: &HashSet<&str>, warnings: &mut Vec<Problem>) {
    match Template::parse(text) {
        Err(error) => warnings.push(Problem {
            step: Some(step.into()),
            field: field.into(),
            message: format!("cannot be evaluated: {error}"),
        }),
        Ok(template) => {
            for referenced in template.exprs().filter_map(|e| e.referenced_step()) {
                if !ids.contains(referenced) {
                    warnings.push(Problem {
                        step: Some(step.into()),
                        field: field.into(),
                        message: format!("reads the output of '{referenced}', which is not a step of this plan"),
                    });
                }
            }
        }
    }
}

fn check_condition(step: &str, expression: &str, ids: &HashSet<&str>, warnings: &mut Vec<Problem>) {
    if let Err(error) = Condition::parse(expression) {
        warnings.push(Problem {
            step: Some(step.into()),
            field: "condition.expression".into(),
            message: format!("cannot be parsed: {error}"),
        });
        return;
    }
    // Its `${…}` references, read the way templates read them.
    if expression.contains("${") {
        check_template(step, "condition.expression", expression, ids, warnings);
    }
}

/// The steps of a valid plan that no run reaches: not on the main chain, and not a member (at
/// any depth) of a compound step that is.
fn unreached(plan: &Plan) -> BTreeSet<&str> {
    let mut reached: HashSet<&str> = HashSet::new();
    let mut pending: Vec<&str> = plan.main_chain.iter().map(String::as_str).collect();
    while let Some(id) = pending.pop() {
        if !reached.insert(id) {
            continue;
        }
        if let Some(step) = plan.steps.get(id)
            && !matches!(step.kind, StepKind::Agent { .. })
        {
            pending.extend(step.kind.children());
        }
    }
    plan.steps.keys().map(String::as_str).filter(|id| !reached.contains(id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn warnings(plan: Value) -> Vec<String> {
        let any = |_: &str| true;
        let validated = super::super::validate(&plan, &any).ok();
        lint(&plan, validated.as_ref()).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn probable_mistakes_are_reported_without_refusing_the_plan() {
        let found = warnings(json!({"name": "p", "start_step": "a", "descripton": "typo", "steps": {
            "a": {"id": "a", "agent_name": "x", "nxt_step": "b", "input_mapping": {
                "ok": "${workflow.input.x}", "ghost": "${nowhere.output}", "broken": "${a.output"}},
            "b": {"id": "b", "type": "conditional", "condition": {"expression": "1 >"}, "if_true_step": "a"},
            "c": {"id": "c", "type": "loop", "loop_config": {"collection": "${b.outpt}", "loop_body": ["a"], "on_eror": "stop"}}
        }}));
        let expected = [
            "descripton: unknown field, ignored; did you mean 'description'?",
            "step 'a': nxt_step: unknown field, ignored; did you mean 'next_step'?",
            "step 'a': input_mapping.ghost: reads the output of 'nowhere', which is not a step of this plan",
            "step 'b': condition.expression: cannot be parsed",
            "step 'c': loop_config.on_eror: unknown field, ignored; did you mean 'on_error'?",
            "step 'b': id: nothing runs this step",
            "step 'c': id: nothing runs this step",
        ];
        for prefix in expected {
            assert!(found.iter().any(|w| w.starts_with(prefix)), "missing {prefix:?} in {found:#?}");
        }
        assert!(
            found.iter().any(|w| w.starts_with("step 'a': input_mapping.broken: cannot be evaluated")),
            "{found:#?}"
        );
    }

    #[test]
    fn a_clean_plan_has_no_warnings() {
        let found = warnings(json!({"name": "p", "start_step": "a", "steps": {
            "a": {"id": "a", "type": "parallel", "parallel_steps": ["m", "n"], "next_step": "z"},
            "m": {"id": "m", "agent_name": "x", "next_step": "a"},
            "n": {"id": "n", "agent_name": "x", "input_mapping": {"v": "${workflow.input.v}"}},
            "z": {"id": "z", "agent_name": "x", "input_mapping": {"m": "${m.output.v}", "all": "${a.output}"}}
        }}));
        assert_eq!(found, Vec::<String>::new());
    }
}
