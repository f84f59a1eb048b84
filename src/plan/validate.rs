//! Plan validation (CONTRACT.md §3): every problem at once, each naming the step and the field.
//!
//! A plan that fails is never executed; its run ends FAILED with `Invalid workflow plan: …` listing
//! every [`Problem`]. Validation covers every step, not only those on the main chain, so a broken
//! branch is found before the run starts rather than when it is taken.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::expr::type_name;
use super::mapping::InputMapping;
use super::model::*;

/// Answers whether an agent name can be called. Implemented by the agent registry.
pub trait AgentCatalog {
    fn knows(&self, agent_name: &str) -> bool;
}

impl<F: Fn(&str) -> bool> AgentCatalog for F {
    fn knows(&self, agent_name: &str) -> bool {
        self(agent_name)
    }
}

/// One thing wrong with a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `None` for plan-level fields.
    pub step: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step {
            Some(step) => write!(f, "step '{step}': {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Why a plan was rejected. Its `Display` is the run's error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid workflow plan: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidPlan {
    pub problems: Vec<Problem>,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn plan(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(Problem { step: None, field: field.into(), message: message.into() });
    }

    fn step(&mut self, step: &str, field: &str, message: impl Into<String>) {
        self.0.push(Problem { step: Some(step.into()), field: field.into(), message: message.into() });
    }
}

/// Validates a plan given as JSON and returns its executable form.
pub fn validate(document: &Value, agents: &dyn AgentCatalog) -> Result<Plan, InvalidPlan> {
    let mut problems = Problems::default();
    let plan = check(document, agents, &mut problems);
    match plan {
        Some(plan) if problems.0.is_empty() => Ok(plan),
        _ => Err(InvalidPlan { problems: problems.0 }),
    }
}

/// Deserializes `value` as `T`, describing a failure with the path of the offending field.
fn decode<T: DeserializeOwned>(value: &Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (path, crate::wording::humanize(&e.into_inner().to_string()))
    })
}

fn check(document: &Value, agents: &dyn AgentCatalog, problems: &mut Problems) -> Option<Plan> {
    if !document.is_object() {
        problems.plan("plan", format!("must be a JSON object, found {}", type_name(document)));
        return None;
    }
    let plan: PlanDocument = match decode(document) {
        Ok(plan) => plan,
        Err((path, message)) => {
            problems.plan(&path, message);
            return None;
        }
    };
    let name = plan.name.filter(|n| !n.trim().is_empty());
    if name.is_none() {
        problems.plan("name", "is required");
    }
    if plan.start_step.is_none() {
        problems.plan("start_step", "is required");
    }
    let raw_steps = plan.steps.unwrap_or_default();
    if raw_steps.is_empty() {
        problems.plan("steps", "must contain at least one step");
    }

    if let Some(start) = &plan.start_step
        && !raw_steps.contains_key(start)
    {
        problems.plan("start_step", format!("references unknown step '{start}'"));
    }

    let mut steps = BTreeMap::new();
    for (key, raw) in &raw_steps {
        if let Some(step) = check_step(key, raw, agents, problems) {
            steps.insert(key.clone(), step);
        }
    }

    for step in steps.values() {
        for (field, target) in references(step) {
            if !raw_steps.contains_key(target) {
                problems.step(&step.id, &field, format!("references unknown step '{target}'"));
            }
        }
    }
    let acyclic = check_cycles(&steps, plan.start_step.as_deref(), problems);
    if !raw_steps.is_empty() && !steps.values().any(|s| s.next_step.is_none()) && steps.len() == raw_steps.len() {
        problems.plan("steps", "no terminal step: every step has a next_step");
    }

    if !problems.0.is_empty() || !acyclic {
        return None;
    }
    let start_step = plan.start_step?;
    let main_chain = main_chain(&steps, &start_step);
    let name = name?;
    Some(Plan {
        workflow_id: plan.workflow_id.filter(|w| !w.is_empty()).unwrap_or_else(|| name.clone()),
        name,
        version: plan.version.map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        }),
        start_step,
        steps,
        main_chain,
    })
}

/// The references a step makes to other steps, each with the field it is in.
fn references(step: &Step) -> Vec<(String, &str)> {
    let mut refs: Vec<(String, &str)> = Vec::new();
    if let Some(next) = &step.next_step {
        refs.push(("next_step".into(), next));
    }
    match &step.kind {
        StepKind::Agent { .. } => {}
        StepKind::Parallel { steps, .. } => {
            refs.extend(steps.iter().enumerate().map(|(i, s)| (format!("parallel_steps[{i}]"), s.as_str())));
        }
        StepKind::Conditional { if_true, if_false, .. } => {
            refs.extend(if_true.iter().map(|s| ("if_true_step".to_string(), s.as_str())));
            refs.extend(if_false.iter().map(|s| ("if_false_step".to_string(), s.as_str())));
        }
        StepKind::Loop(spec) => {
            refs.extend(spec.body.iter().enumerate().map(|(i, s)| (format!("loop_config.loop_body[{i}]"), s.as_str())));
        }
        StepKind::ForkJoin(spec) => {
            for branch in &spec.branches {
                refs.extend(
                    branch
                        .steps
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (format!("fork_join_config.branches.{}.steps[{i}]", branch.name), s.as_str())),
                );
            }
        }
    }
    refs
}

/// Checks one step; returns it when its own fields are sound (references are checked later).
fn check_step(key: &str, raw: &Value, agents: &dyn AgentCatalog, problems: &mut Problems) -> Option<Step> {
    if !raw.is_object() {
        problems.step(key, "step", format!("must be a JSON object, found {}", type_name(raw)));
        return None;
    }
    let doc: StepDocument = match decode(raw) {
        Ok(doc) => doc,
        Err((path, message)) => {
            problems.step(key, &path, message);
            return None;
        }
    };
    match &doc.id {
        None => problems.step(key, "id", format!("is required and must equal its key '{key}'")),
        Some(id) if id != key => problems.step(key, "id", format!("'{id}' does not equal its key '{key}'")),
        Some(_) => {}
    }
    let errors_before = problems.0.len();
    let kind = match doc.step_type.as_deref().unwrap_or("agent") {
        "agent" => check_agent(key, &doc, agents, problems),
        "parallel" => check_parallel(key, &doc, problems),
        "conditional" => check_conditional(key, &doc, problems),
        "loop" => check_loop(key, &doc, problems),
        "fork_join" => check_fork_join(key, &doc, problems),
        other => {
            problems.step(
                key,
                "type",
                format!("unknown step type '{other}' (expected agent, parallel, conditional, loop or fork_join)"),
            );
            None
        }
    };
    if problems.0.len() > errors_before {
        return None;
    }
    Some(Step {
        id: key.to_string(),
        next_step: doc.next_step,
        input_mapping: InputMapping::parse(doc.input_mapping.unwrap_or_default()),
        kind: kind?,
    })
}

fn check_agent(key: &str, doc: &StepDocument, agents: &dyn AgentCatalog, problems: &mut Problems) -> Option<StepKind> {
    match doc.agent_name.as_deref().map(str::trim) {
        None | Some("") => {
            problems.step(key, "agent_name", "is required for an agent step");
            None
        }
        Some(name) if !agents.knows(name) => {
            problems.step(key, "agent_name", format!("unknown agent '{name}'"));
            None
        }
        Some(name) => Some(StepKind::Agent { agent_name: name.to_string() }),
    }
}

fn check_parallel(key: &str, doc: &StepDocument, problems: &mut Problems) -> Option<StepKind> {
    let steps = doc.parallel_steps.clone().unwrap_or_default();
    if steps.len() < 2 {
        problems.step(key, "parallel_steps", format!("needs at least 2 step ids, found {}", steps.len()));
    }
    let max_parallelism = positive(doc.max_parallelism, key, "max_parallelism", problems);
    Some(StepKind::Parallel { steps, max_parallelism })
}

fn check_conditional(key: &str, doc: &StepDocument, problems: &mut Problems) -> Option<StepKind> {
    let expression = doc.condition.as_ref().and_then(|c| c.expression.clone()).filter(|e| !e.trim().is_empty());
    if expression.is_none() {
        problems.step(key, "condition.expression", "is required for a conditional step");
    }
    if doc.if_true_step.is_none() && doc.if_false_step.is_none() {
        problems.step(key, "if_true_step", "a conditional step needs if_true_step, if_false_step or both");
    }
    Some(StepKind::Conditional {
        expression: expression?,
        if_true: doc.if_true_step.clone(),
        if_false: doc.if_false_step.clone(),
    })
}

fn check_loop(key: &str, doc: &StepDocument, problems: &mut Problems) -> Option<StepKind> {
    let Some(config) = &doc.loop_config else {
        problems.step(key, "loop_config", "is required for a loop step");
        return None;
    };
    let collection = config.collection.clone().filter(|c| !c.is_null());
    if collection.is_none() {
        problems.step(key, "loop_config.collection", "is required");
    }
    let body = config.loop_body.clone().unwrap_or_default();
    if body.is_empty() {
        problems.step(key, "loop_config.loop_body", "must list at least one step");
    }
    let mode = match config.execution_mode.as_deref().unwrap_or("sequential") {
        "sequential" => Some(LoopMode::Sequential),
        "parallel" => Some(LoopMode::Parallel),
        other => {
            problems.step(key, "loop_config.execution_mode", format!("'{other}' is not sequential or parallel"));
            None
        }
    };
    let on_error = match config.on_error.as_deref().unwrap_or("stop") {
        "stop" => Some(OnError::Stop),
        "continue" => Some(OnError::Continue),
        "collect" => Some(OnError::Collect),
        other => {
            problems.step(key, "loop_config.on_error", format!("'{other}' is not stop, continue or collect"));
            None
        }
    };
    let max_parallelism = positive(config.max_parallelism, key, "loop_config.max_parallelism", problems);
    let max_iterations = positive(config.max_iterations, key, "loop_config.max_iterations", problems);
    Some(StepKind::Loop(LoopSpec {
        collection: collection?,
        body,
        mode: mode?,
        max_parallelism,
        max_iterations,
        on_error: on_error?,
    }))
}

fn check_fork_join(key: &str, doc: &StepDocument, problems: &mut Problems) -> Option<StepKind> {
    let Some(config) = &doc.fork_join_config else {
        problems.step(key, "fork_join_config", "is required for a fork_join step");
        return None;
    };
    let raw_branches = config.branches.clone().unwrap_or_default();
    if raw_branches.len() < 2 {
        problems.step(
            key,
            "fork_join_config.branches",
            format!("needs at least 2 branches, found {}", raw_branches.len()),
        );
    }
    let mut branches = Vec::new();
    for (name, branch) in raw_branches {
        let field = format!("fork_join_config.branches.{name}");
        let steps = branch.steps.unwrap_or_default();
        if steps.is_empty() {
            problems.step(key, &format!("{field}.steps"), "must list at least one step");
        }
        let timeout = seconds(branch.timeout_seconds, key, &format!("{field}.timeout_seconds"), problems);
        branches.push(Branch { name, steps, timeout });
    }
    let n_required = positive(config.n_required, key, "fork_join_config.n_required", problems);
    let policy = match config.join_policy.as_deref().unwrap_or("all") {
        "all" => Some(JoinPolicy::All),
        "any" => Some(JoinPolicy::Any),
        "majority" => Some(JoinPolicy::Majority),
        "n_of_m" => match n_required {
            Some(n) if n > branches.len() => {
                problems.step(
                    key,
                    "fork_join_config.n_required",
                    format!("{n} is more than the {} branches", branches.len()),
                );
                None
            }
            Some(n) => Some(JoinPolicy::NOfM(n)),
            None => {
                if config.n_required.is_none() {
                    problems.step(key, "fork_join_config.n_required", "is required when join_policy is n_of_m");
                }
                None
            }
        },
        other => {
            problems.step(
                key,
                "fork_join_config.join_policy",
                format!("'{other}' is not all, any, majority or n_of_m"),
            );
            None
        }
    };
    let branch_timeout =
        seconds(config.branch_timeout_seconds, key, "fork_join_config.branch_timeout_seconds", problems);
    Some(StepKind::ForkJoin(ForkJoinSpec { branches, policy: policy?, branch_timeout }))
}

fn positive(value: Option<i64>, step: &str, field: &str, problems: &mut Problems) -> Option<usize> {
    match value {
        Some(v) if v < 1 => {
            problems.step(step, field, format!("must be a positive integer, found {v}"));
            None
        }
        Some(v) => usize::try_from(v).ok(),
        None => None,
    }
}

fn seconds(value: Option<f64>, step: &str, field: &str, problems: &mut Problems) -> Option<Duration> {
    match value {
        Some(v) => match Duration::try_from_secs_f64(v) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                problems.step(step, field, format!("must be a positive number of seconds, found {v}"));
                None
            }
        },
        None => None,
    }
}

/// Finds the cycles a run could really loop through (CONTRACT.md §3): along the main chain
/// (`start_step` → `next_step` …), and through containment (a compound step that contains itself
/// through its members, directly or through other compound steps). A member's own `next_step` is
/// not followed while it runs as a member, so it may point back at its block: the platform's UI
/// makes such plans. Returns whether no such cycle exists.
fn check_cycles(steps: &BTreeMap<String, Step>, start: Option<&str>, problems: &mut Problems) -> bool {
    let mut acyclic = true;
    if let Some(start) = start.filter(|s| steps.contains_key(*s)) {
        let mut chain: Vec<&str> = vec![start];
        let mut seen: HashMap<&str, usize> = HashMap::from([(start, 0)]);
        while let Some(next) = steps[*chain.last().unwrap_or(&start)].next_step.as_deref() {
            if !steps.contains_key(next) {
                break;
            }
            if let Some(&at) = seen.get(next) {
                let mut cycle = chain[at..].to_vec();
                cycle.push(next);
                let last = chain.last().copied().unwrap_or(start);
                problems.step(last, "next_step", format!("forms a cycle along the main chain: {}", cycle.join(" → ")));
                acyclic = false;
                break;
            }
            seen.insert(next, chain.len());
            chain.push(next);
        }
    }
    acyclic && check_containment(steps, problems)
}

/// Depth-first over compound steps' members only. Iterative, so a deeply nested plan cannot
/// overflow the stack.
fn check_containment(steps: &BTreeMap<String, Step>, problems: &mut Problems) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let edges: HashMap<&str, Vec<(String, &str)>> = steps
        .values()
        .map(|s| {
            let members =
                references(s).into_iter().filter(|(field, target)| field != "next_step" && steps.contains_key(*target));
            (s.id.as_str(), members.collect())
        })
        .collect();
    let mut marks: HashMap<&str, Mark> = steps.keys().map(|k| (k.as_str(), Mark::Unvisited)).collect();
    let mut acyclic = true;
    for root in steps.keys() {
        if marks[root.as_str()] != Mark::Unvisited {
            continue;
        }
        // (node, index of the next edge to follow)
        let mut path: Vec<(&str, usize)> = vec![(root.as_str(), 0)];
        marks.insert(root, Mark::OnPath);
        while let Some((node, next)) = path.last_mut() {
            let node: &str = node;
            let Some((field, target)) = edges[node].get(*next) else {
                marks.insert(node, Mark::Done);
                path.pop();
                continue;
            };
            *next += 1;
            match marks[target] {
                Mark::Unvisited => {
                    marks.insert(target, Mark::OnPath);
                    path.push((target, 0));
                }
                Mark::OnPath => {
                    acyclic = false;
                    let start = path.iter().position(|(n, _)| *n == *target).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[start..].iter().map(|(n, _)| *n).collect();
                    cycle.push(target);
                    problems.step(node, field, format!("contains itself: {}", cycle.join(" → ")));
                }
                Mark::Done => {}
            }
        }
    }
    acyclic
}

fn main_chain(steps: &BTreeMap<String, Step>, start: &str) -> Vec<String> {
    let mut chain = vec![start.to_string()];
    while let Some(next) =
        steps.get(chain.last().map(String::as_str).unwrap_or_default()).and_then(|s| s.next_step.clone())
    {
        chain.push(next);
    }
    chain
}

/// Parses a plan from JSON text (for files and the CLI), then validates it.
pub fn validate_text(text: &str, agents: &dyn AgentCatalog) -> Result<Plan, InvalidPlan> {
    match serde_json::from_str::<Value>(text) {
        Ok(document) => validate(&document, agents),
        Err(e) => Err(InvalidPlan {
            problems: vec![Problem { step: None, field: "plan".into(), message: format!("is not valid JSON: {e}") }],
        }),
    }
}

/// The plan-level fields of a document that may not validate, for recording a failed run.
pub fn identity(document: &Value) -> (Option<String>, Option<String>) {
    let get = |key: &str| document.get(key).and_then(Value::as_str).map(str::to_string);
    let name = get("name");
    (get("workflow_id").or_else(|| name.clone()), name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn known(name: &str) -> bool {
        name != "Unknown"
    }

    fn problems(plan: Value) -> Vec<String> {
        match validate(&plan, &known) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    fn with_steps(steps: Value) -> Value {
        json!({"name": "p", "start_step": "a", "steps": steps})
    }

    fn assert_problem(plan: Value, expected: &str) {
        let found = problems(plan);
        assert!(found.iter().any(|p| p == expected), "expected {expected:?} in {found:#?}");
    }

    #[test]
    fn a_minimal_plan_validates_with_defaults() {
        let plan = validate(&with_steps(json!({"a": {"id": "a", "agent_name": "echo"}})), &known).unwrap();
        assert_eq!(plan.workflow_id, "p");
        assert_eq!(plan.main_chain, vec!["a"]);
        assert_eq!(plan.step("a").kind, StepKind::Agent { agent_name: "echo".into() });
        assert_eq!(plan.step("a").label(), "echo");
    }

    #[test]
    fn the_main_chain_follows_next_step() {
        let plan = validate(
            &with_steps(json!({
                "a": {"id": "a", "agent_name": "x", "next_step": "b"},
                "b": {"id": "b", "type": "parallel", "parallel_steps": ["c", "d"], "next_step": "e"},
                "c": {"id": "c", "agent_name": "x"},
                "d": {"id": "d", "agent_name": "x"},
                "e": {"id": "e", "agent_name": "x"}
            })),
            &known,
        )
        .unwrap();
        assert_eq!(plan.main_chain, vec!["a", "b", "e"]);
        assert_eq!(plan.step("b").kind.children(), vec!["c", "d"]);
    }

    #[test]
    fn plan_level_fields() {
        assert_eq!(problems(json!([1])), vec!["plan: must be a JSON object, found an array"]);
        let found = problems(json!({}));
        assert_eq!(
            found,
            vec!["name: is required", "start_step: is required", "steps: must contain at least one step"]
        );
        assert_problem(
            with_steps(json!({"b": {"id": "b", "agent_name": "x"}})),
            "start_step: references unknown step 'a'",
        );
        assert_eq!(problems(json!({"name": 5})), vec!["name: expected a string, found the number 5"]);
    }

    #[test]
    fn step_shape_and_ids() {
        assert_problem(with_steps(json!({"a": 3})), "step 'a': step: must be a JSON object, found a number");
        assert_problem(
            with_steps(json!({"a": {"agent_name": "x"}})),
            "step 'a': id: is required and must equal its key 'a'",
        );
        assert_problem(
            with_steps(json!({"a": {"id": "b", "agent_name": "x"}})),
            "step 'a': id: 'b' does not equal its key 'a'",
        );
        assert_problem(
            with_steps(json!({"a": {"id": "a", "type": "lambda"}})),
            "step 'a': type: unknown step type 'lambda' (expected agent, parallel, conditional, loop or fork_join)",
        );
        assert_problem(
            with_steps(json!({"a": {"id": "a", "agent_name": "x", "max_parallelism": "many"}})),
            "step 'a': max_parallelism: expected a whole number, found the string \"many\"",
        );
    }

    #[test]
    fn agent_steps() {
        assert_problem(with_steps(json!({"a": {"id": "a"}})), "step 'a': agent_name: is required for an agent step");
        assert_problem(
            with_steps(json!({"a": {"id": "a", "agent_name": "Unknown"}})),
            "step 'a': agent_name: unknown agent 'Unknown'",
        );
    }

    #[test]
    fn references_to_unknown_steps() {
        let plan = with_steps(json!({
            "a": {"id": "a", "type": "parallel", "parallel_steps": ["b", "zz"], "next_step": "nope"},
            "b": {"id": "b", "agent_name": "x"},
            "c": {"id": "c", "type": "conditional", "condition": {"expression": "true"}, "if_true_step": "t"},
            "l": {"id": "l", "type": "loop", "loop_config": {"collection": [1], "loop_body": ["q"]}},
            "f": {"id": "f", "type": "fork_join", "fork_join_config": {"branches": {"x": {"steps": ["b"]}, "y": {"steps": ["w"]}}}}
        }));
        for expected in [
            "step 'a': next_step: references unknown step 'nope'",
            "step 'a': parallel_steps[1]: references unknown step 'zz'",
            "step 'c': if_true_step: references unknown step 't'",
            "step 'l': loop_config.loop_body[0]: references unknown step 'q'",
            "step 'f': fork_join_config.branches.y.steps[0]: references unknown step 'w'",
        ] {
            assert_problem(plan.clone(), expected);
        }
        assert_eq!(problems(plan).len(), 5);
    }

    #[test]
    fn cycles_where_a_run_could_loop_are_refused_with_their_path() {
        assert_problem(
            with_steps(json!({
                "a": {"id": "a", "agent_name": "x", "next_step": "b"},
                "b": {"id": "b", "agent_name": "x", "next_step": "a"},
                "c": {"id": "c", "agent_name": "x"}
            })),
            "step 'b': next_step: forms a cycle along the main chain: a → b → a",
        );
        assert_problem(
            with_steps(json!({
                "a": {"id": "a", "type": "loop", "loop_config": {"collection": [1], "loop_body": ["b"]}},
                "b": {"id": "b", "type": "parallel", "parallel_steps": ["a", "c"]},
                "c": {"id": "c", "agent_name": "x"}
            })),
            "step 'b': parallel_steps[0]: contains itself: a → b → a",
        );
        assert_problem(
            with_steps(
                json!({"a": {"id": "a", "type": "conditional", "condition": {"expression": "1"}, "if_true_step": "a"}}),
            ),
            "step 'a': if_true_step: contains itself: a → a",
        );
    }

    #[test]
    fn members_may_point_back_at_their_block_as_the_platforms_ui_makes_them() {
        // A member's next_step is never followed while it runs as a member (CONTRACT.md §3).
        let plan = with_steps(json!({
            "a": {"id": "a", "type": "parallel", "parallel_steps": ["m1", "m2"], "next_step": "route"},
            "m1": {"id": "m1", "agent_name": "x", "next_step": "a"},
            "m2": {"id": "m2", "agent_name": "x", "next_step": "a"},
            "route": {"id": "route", "type": "conditional", "condition": {"expression": "true"},
                      "if_true_step": "yes", "next_step": null},
            "yes": {"id": "yes", "agent_name": "x", "next_step": "route"}
        }));
        assert_eq!(problems(plan.clone()), Vec::<String>::new());
        assert_eq!(validate(&plan, &known).unwrap().main_chain, ["a", "route"]);
        // Steps off the main chain may chain into each other: nothing follows them.
        let off_chain = with_steps(json!({
            "a": {"id": "a", "agent_name": "x"},
            "b": {"id": "b", "agent_name": "x", "next_step": "c"},
            "c": {"id": "c", "agent_name": "x", "next_step": "b"}
        }));
        assert_eq!(problems(off_chain), Vec::<String>::new());
        // But a member's next_step must still name a step.
        assert_problem(
            with_steps(json!({
                "a": {"id": "a", "type": "parallel", "parallel_steps": ["m1", "m2"]},
                "m1": {"id": "m1", "agent_name": "x", "next_step": "gone"},
                "m2": {"id": "m2", "agent_name": "x"}
            })),
            "step 'm1': next_step: references unknown step 'gone'",
        );
    }

    #[test]
    fn a_plan_needs_a_terminal_step() {
        let found = problems(with_steps(json!({
            "a": {"id": "a", "agent_name": "x", "next_step": "a"}
        })));
        assert!(found.contains(&"steps: no terminal step: every step has a next_step".to_string()), "{found:#?}");
    }

    #[test]
    fn parallel_and_conditional_requirements() {
        assert_problem(
            with_steps(
                json!({"a": {"id": "a", "type": "parallel", "parallel_steps": ["b"]}, "b": {"id": "b", "agent_name": "x"}}),
            ),
            "step 'a': parallel_steps: needs at least 2 step ids, found 1",
        );
        assert_problem(
            with_steps(
                json!({"a": {"id": "a", "type": "parallel", "parallel_steps": ["b", "b"], "max_parallelism": 0}, "b": {"id": "b", "agent_name": "x"}}),
            ),
            "step 'a': max_parallelism: must be a positive integer, found 0",
        );
        let found = problems(with_steps(json!({"a": {"id": "a", "type": "conditional"}})));
        assert_eq!(
            found,
            vec![
                "step 'a': condition.expression: is required for a conditional step",
                "step 'a': if_true_step: a conditional step needs if_true_step, if_false_step or both"
            ]
        );
    }

    #[test]
    fn loop_requirements() {
        assert_problem(
            with_steps(json!({"a": {"id": "a", "type": "loop"}})),
            "step 'a': loop_config: is required for a loop step",
        );
        let found = problems(with_steps(json!({"a": {"id": "a", "type": "loop", "loop_config": {
            "loop_body": [], "execution_mode": "random", "on_error": "ignore", "max_iterations": -1, "max_parallelism": 0
        }}})));
        assert_eq!(
            found,
            vec![
                "step 'a': loop_config.collection: is required",
                "step 'a': loop_config.loop_body: must list at least one step",
                "step 'a': loop_config.execution_mode: 'random' is not sequential or parallel",
                "step 'a': loop_config.on_error: 'ignore' is not stop, continue or collect",
                "step 'a': loop_config.max_parallelism: must be a positive integer, found 0",
                "step 'a': loop_config.max_iterations: must be a positive integer, found -1",
            ]
        );
    }

    #[test]
    fn fork_join_requirements() {
        let fj = |config: Value| {
            with_steps(
                json!({"a": {"id": "a", "type": "fork_join", "fork_join_config": config}, "b": {"id": "b", "agent_name": "x"}}),
            )
        };
        assert_problem(
            with_steps(json!({"a": {"id": "a", "type": "fork_join"}})),
            "step 'a': fork_join_config: is required for a fork_join step",
        );
        assert_problem(
            fj(json!({"branches": {"x": {"steps": ["b"]}}})),
            "step 'a': fork_join_config.branches: needs at least 2 branches, found 1",
        );
        assert_problem(
            fj(json!({"branches": {"x": {"steps": ["b"]}, "y": {"steps": []}}})),
            "step 'a': fork_join_config.branches.y.steps: must list at least one step",
        );
        assert_problem(
            fj(json!({"branches": {"x": {"steps": ["b"]}, "y": {"steps": ["b"]}}, "join_policy": "n_of_m"})),
            "step 'a': fork_join_config.n_required: is required when join_policy is n_of_m",
        );
        assert_problem(
            fj(
                json!({"branches": {"x": {"steps": ["b"]}, "y": {"steps": ["b"]}}, "join_policy": "n_of_m", "n_required": 3}),
            ),
            "step 'a': fork_join_config.n_required: 3 is more than the 2 branches",
        );
        assert_problem(
            fj(json!({"branches": {"x": {"steps": ["b"]}, "y": {"steps": ["b"]}}, "join_policy": "most"})),
            "step 'a': fork_join_config.join_policy: 'most' is not all, any, majority or n_of_m",
        );
        assert_problem(
            fj(
                json!({"branches": {"x": {"steps": ["b"], "timeout_seconds": 0}, "y": {"steps": ["b"]}}, "branch_timeout_seconds": -1}),
            ),
            "step 'a': fork_join_config.branches.x.timeout_seconds: must be a positive number of seconds, found 0",
        );
        assert_problem(
            fj(json!({"branches": {"x": {"steps": ["b"]}, "y": {"steps": ["b"]}}, "branch_timeout_seconds": -1})),
            "step 'a': fork_join_config.branch_timeout_seconds: must be a positive number of seconds, found -1",
        );
        let plan = validate(
            &fj(json!({"branches": {"x": {"steps": ["b"], "timeout_seconds": 2}, "y": {"steps": ["b"]}}, "join_policy": "n_of_m", "n_required": 2, "branch_timeout_seconds": 5})),
            &known,
        )
        .unwrap();
        let StepKind::ForkJoin(spec) = &plan.step("a").kind else { panic!() };
        assert_eq!(spec.policy, JoinPolicy::NOfM(2));
        assert_eq!(spec.branches[0].effective_timeout(spec), Some(Duration::from_secs(2)));
        assert_eq!(spec.branches[1].effective_timeout(spec), Some(Duration::from_secs(5)));
    }

    #[test]
    fn every_problem_is_in_the_run_error() {
        let err = validate(&json!({"name": "p", "start_step": "x", "steps": {"a": {"id": "a"}}}), &known).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid workflow plan: start_step: references unknown step 'x'; step 'a': agent_name: is required for an agent step"
        );
    }

    #[test]
    fn long_chains_do_not_overflow() {
        let mut steps = Map::new();
        for i in 0..20_000 {
            let next = if i + 1 < 20_000 { json!(format!("s{}", i + 1)) } else { Value::Null };
            steps.insert(format!("s{i}"), json!({"id": format!("s{i}"), "agent_name": "x", "next_step": next}));
        }
        let plan = validate(&json!({"name": "p", "start_step": "s0", "steps": steps}), &known).unwrap();
        assert_eq!(plan.main_chain.len(), 20_000);
    }

    mod never_panics {
        use super::*;
        use proptest::prelude::*;

        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                (-3i64..5).prop_map(Value::from),
                prop_oneof![
                    Just("a"),
                    Just("b"),
                    Just("agent"),
                    Just("loop"),
                    Just("fork_join"),
                    Just("parallel"),
                    Just("conditional"),
                    Just("n_of_m"),
                    Just("x")
                ]
                .prop_map(|s| Value::String(s.into())),
            ];
            leaf.prop_recursive(5, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("id"),
                            Just("type"),
                            Just("steps"),
                            Just("a"),
                            Just("b"),
                            Just("next_step"),
                            Just("agent_name"),
                            Just("parallel_steps"),
                            Just("loop_config"),
                            Just("loop_body"),
                            Just("collection"),
                            Just("fork_join_config"),
                            Just("branches"),
                            Just("name"),
                            Just("start_step"),
                            Just("join_policy"),
                            Just("n_required")
                        ]
                        .prop_map(String::from),
                        inner,
                        0..6,
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn validation_never_panics(document in arb_json()) {
                let _ = validate(&document, &known);
            }
        }
    }
}
