//! The plan graph: a workflow's steps as nested blocks, each coloured by what happened to it in a
//! run. Used by the Run page (with outcomes) and the Workflow page (without).
//!
//! A plan is not a general graph but a tree of nested blocks: a chain along `next_step` whose steps
//! may be `parallel`, `conditional`, `loop` or `fork_join`, whose members run as part of them (their
//! own `next_step` is not followed; docs/plans.md). So the browser's layout engine can draw it:
//! chains stack vertically, members and branches sit side by side. No layout code, no script, and
//! it stays readable on a phone.
//!
//! The tree is flattened into a list of [`Item`]s (open a block, a step, close a block) that the
//! template walks in one loop, because askama templates cannot recurse.

use std::collections::HashMap;

use crate::plan::{Plan, StepKind};

/// What happened to a step in a run, from its attempt rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Calls (step at one place: a loop iteration, say) by the status of their latest attempt.
    pub completed: usize,
    pub failed: usize,
    pub running: usize,
    pub cancelled: usize,
    /// Attempts made, retries included.
    pub attempts: usize,
}

impl Outcome {
    fn add(&mut self, other: &Outcome) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.running += other.running;
        self.cancelled += other.cancelled;
        self.attempts += other.attempts;
    }

    /// The class a block is coloured by: its worst call wins.
    fn class(&self) -> &'static str {
        if self.running > 0 {
            "RUNNING"
        } else if self.failed > 0 {
            "FAILED"
        } else if self.cancelled > 0 {
            "CANCELLED"
        } else if self.completed > 0 {
            "COMPLETED"
        } else {
            "NOT-RUN"
        }
    }

    fn summary(&self) -> String {
        let calls = self.completed + self.failed + self.running + self.cancelled;
        if calls == 0 {
            return "not run".into();
        }
        let mut parts = Vec::new();
        for (n, word) in [
            (self.completed, "completed"),
            (self.failed, "failed"),
            (self.running, "running"),
            (self.cancelled, "cancelled"),
        ] {
            if n > 0 {
                parts.push(if calls == 1 { word.to_string() } else { format!("{n} {word}") });
            }
        }
        let retries = self.attempts.saturating_sub(calls);
        if retries > 0 {
            parts.push(format!("{retries} retr{}", if retries == 1 { "y" } else { "ies" }));
        }
        parts.join(", ")
    }
}

/// Where a call ran: parent step, branch, loop iteration. Attempts of one call share it.
pub type Place<'a> = (Option<&'a str>, Option<&'a str>, Option<i32>);

/// One attempt row, as the graph needs it.
#[derive(Debug, Clone)]
pub struct AttemptOutcome<'a> {
    pub step_id: &'a str,
    pub call: Place<'a>,
    pub attempt: i32,
    pub retry_round: i32,
    pub status: &'a str,
}

/// Outcomes by step id.
pub fn outcomes(attempts: &[AttemptOutcome<'_>]) -> HashMap<String, Outcome> {
    // The latest attempt of each call decides the call's status.
    // (step, place) → (retry round, attempt, status) of its latest attempt.
    let mut latest: HashMap<(&str, Place<'_>), (i32, i32, &str)> = HashMap::new();
    let mut tried: HashMap<&str, usize> = HashMap::new();
    for a in attempts {
        *tried.entry(a.step_id).or_default() += 1;
        let entry = latest.entry((a.step_id, a.call)).or_insert((a.retry_round, a.attempt, a.status));
        if (a.retry_round, a.attempt) >= (entry.0, entry.1) {
            *entry = (a.retry_round, a.attempt, a.status);
        }
    }
    let mut by_step: HashMap<String, Outcome> = HashMap::new();
    for ((step_id, _), (_, _, status)) in latest {
        let outcome = by_step.entry(step_id.to_string()).or_default();
        match status {
            "COMPLETED" => outcome.completed += 1,
            "FAILED" => outcome.failed += 1,
            "RUNNING" => outcome.running += 1,
            _ => outcome.cancelled += 1,
        }
    }
    for (step_id, n) in tried {
        by_step.entry(step_id.to_string()).or_default().attempts = n;
    }
    by_step
}

/// Steps a failed run's error names (`Step 'x' (…) failed: …`, nested for compound steps) that made
/// no attempt: a step can fail before calling anything (its input could not be resolved, say), and
/// without this the graph would show it as not run. Marked failed in `outcomes`.
pub fn mark_failed_before_any_attempt(outcomes: &mut HashMap<String, Outcome>, run_error: &str) {
    let mut rest = run_error;
    while let Some(at) = rest.find("Step '") {
        rest = &rest[at + "Step '".len()..];
        let Some(end) = rest.find('\'') else { break };
        let outcome = outcomes.entry(rest[..end].to_string()).or_default();
        if outcome.completed + outcome.failed + outcome.running + outcome.cancelled == 0 {
            outcome.failed = 1;
        }
        rest = &rest[end..];
    }
}

/// The graph of a stored plan document, or why there is none to draw (no plan stored, or one that
/// does not validate: a definition saved before a rule was added, say).
pub fn graph(document: Option<&serde_json::Value>, outcomes: &HashMap<String, Outcome>) -> Result<Vec<Item>, String> {
    let document =
        document.ok_or("This run's plan is not stored here (its request carried it, and it was not kept).")?;
    // Agents are not checked: the graph draws what was planned, whether or not the agents exist now.
    let plan = crate::plan::validate(document, &|_: &str| true)
        .map_err(|invalid| format!("The plan cannot be drawn: {invalid}"))?;
    Ok(items(&plan, outcomes))
}

/// One token of the flattened tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A compound step's block opens: its header, then its lanes.
    Open {
        step_id: String,
        kind: &'static str,
        detail: String,
        class: &'static str,
        summary: String,
    },
    /// A lane inside a block (a member, a branch, the loop body, a conditional's side).
    Lane {
        label: String,
        taken: bool,
    },
    LaneEnd,
    /// An agent call.
    Step {
        step_id: String,
        agent: String,
        class: &'static str,
        summary: String,
    },
    Close,
}

/// The plan as [`Item`]s, coloured by `outcomes` (empty for a plan shown outside a run).
pub fn items(plan: &Plan, outcomes: &HashMap<String, Outcome>) -> Vec<Item> {
    let mut out = Vec::new();
    for step_id in &plan.main_chain {
        draw(plan, step_id, outcomes, &mut out, 0);
    }
    out
}

/// Outside a run (no outcomes at all) a step is only planned: no colour, no "not run".
fn shown_class(outcome: &Outcome, outcomes: &HashMap<String, Outcome>) -> &'static str {
    if outcomes.is_empty() { "PLANNED" } else { outcome.class() }
}

fn shown_summary(outcome: &Outcome, outcomes: &HashMap<String, Outcome>) -> String {
    if outcomes.is_empty() { String::new() } else { outcome.summary() }
}

/// Deeper nesting than this is drawn as a plain step: no real plan nests so deep, and the page
/// must not grow without bound on a hostile one.
const MAX_DEPTH: usize = 12;

fn draw(plan: &Plan, id: &str, outcomes: &HashMap<String, Outcome>, out: &mut Vec<Item>, depth: usize) -> Outcome {
    let Some(step) = plan.steps.get(id) else { return Outcome::default() };
    let mut total = outcomes.get(id).cloned().unwrap_or_default();
    if let StepKind::Agent { agent_name } = &step.kind {
        out.push(Item::Step {
            step_id: id.into(),
            agent: agent_name.clone(),
            class: shown_class(&total, outcomes),
            summary: shown_summary(&total, outcomes),
        });
        return total;
    }
    let at = out.len();
    out.push(Item::Close); // replaced by the Open once the children's outcome is known
    let (detail, lanes): (String, Vec<(String, Vec<&str>)>) = match &step.kind {
        StepKind::Parallel { steps, max_parallelism } => (
            max_parallelism.map(|n| format!("at most {n} at once")).unwrap_or_default(),
            steps.iter().map(|s| (String::new(), vec![s.as_str()])).collect(),
        ),
        StepKind::Conditional { expression, if_true, if_false } => (
            expression.clone(),
            [("if true", if_true), ("if false", if_false)]
                .into_iter()
                .map(|(label, target)| (label.to_string(), target.iter().map(String::as_str).collect()))
                .collect(),
        ),
        StepKind::Loop(spec) => (
            format!("{:?}, on error {:?}", spec.mode, spec.on_error).to_lowercase(),
            vec![("each item".to_string(), spec.body.iter().map(String::as_str).collect())],
        ),
        StepKind::ForkJoin(spec) => (
            format!("join: {}", spec.policy.as_str()),
            spec.branches.iter().map(|b| (b.name.clone(), b.steps.iter().map(String::as_str).collect())).collect(),
        ),
        StepKind::Agent { .. } => unreachable!("handled above"),
    };
    let conditional = matches!(step.kind, StepKind::Conditional { .. });
    let mut children = Outcome::default();
    for (label, members) in lanes {
        let lane_at = out.len();
        out.push(Item::Lane { label: label.clone(), taken: true });
        let mut lane = Outcome::default();
        for member in members {
            if depth >= MAX_DEPTH {
                out.push(Item::Step {
                    step_id: member.into(),
                    agent: "…".into(),
                    class: "NOT-RUN",
                    summary: String::new(),
                });
            } else {
                lane.add(&draw(plan, member, outcomes, out, depth + 1));
            }
        }
        // A conditional's untaken side is dimmed, once the run has taken one (a branch that made
        // calls); without outcomes (a plan outside a run) both sides show plainly.
        if conditional && lane.attempts == 0 && !outcomes.is_empty() {
            out[lane_at] = Item::Lane { label, taken: false };
        }
        out.push(Item::LaneEnd);
        children.add(&lane);
    }
    out.push(Item::Close);
    total.add(&children);
    out[at] = Item::Open {
        step_id: id.into(),
        kind: step.kind.type_name(),
        detail,
        class: shown_class(&total, outcomes),
        summary: shown_summary(&total, outcomes),
    };
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(document: serde_json::Value) -> Plan {
        crate::plan::validate(&document, &|_: &str| true).expect("a valid plan")
    }

    fn attempt<'a>(step_id: &'a str, attempt: i32, status: &'a str) -> AttemptOutcome<'a> {
        AttemptOutcome { step_id, call: (None, None, None), attempt, retry_round: 0, status }
    }

    #[test]
    fn a_retried_call_counts_once_by_its_last_attempt() {
        let outcomes = outcomes(&[attempt("a", 1, "FAILED"), attempt("a", 2, "COMPLETED")]);
        assert_eq!(outcomes["a"], Outcome { completed: 1, attempts: 2, ..Default::default() });
        assert_eq!(outcomes["a"].summary(), "completed, 1 retry");
    }

    #[test]
    fn the_branch_a_conditional_took_is_marked_and_blocks_take_their_worst_outcome() {
        let plan = plan(json!({
            "name": "p", "start_step": "check",
            "steps": {
                "check": {"id": "check", "type": "conditional", "condition": {"expression": "${workflow.input.x} > 1"},
                          "if_true_step": "big", "if_false_step": "small", "next_step": "fan"},
                "big": {"id": "big", "agent_name": "echo"},
                "small": {"id": "small", "agent_name": "echo"},
                "fan": {"id": "fan", "type": "parallel", "parallel_steps": ["x", "y"]},
                "x": {"id": "x", "agent_name": "echo"},
                "y": {"id": "y", "agent_name": "fail"}
            }
        }));
        let outcomes = outcomes(&[
            attempt("big", 1, "COMPLETED"),
            attempt("x", 1, "COMPLETED"),
            attempt("y", 1, "FAILED"),
            attempt("y", 2, "FAILED"),
        ]);
        let items = items(&plan, &outcomes);
        let lanes: Vec<_> = items
            .iter()
            .filter_map(|i| if let Item::Lane { label, taken } = i { Some((label.as_str(), *taken)) } else { None })
            .collect();
        assert_eq!(lanes, [("if true", true), ("if false", false), ("", true), ("", true)]);
        let opens: Vec<_> = items
            .iter()
            .filter_map(
                |i| if let Item::Open { step_id, class, .. } = i { Some((step_id.as_str(), *class)) } else { None },
            )
            .collect();
        assert_eq!(opens, [("check", "COMPLETED"), ("fan", "FAILED")]);
        let small = items.iter().find(|i| matches!(i, Item::Step { step_id, .. } if step_id == "small")).unwrap();
        assert!(matches!(small, Item::Step { class: "NOT-RUN", .. }));
        // Balanced: every block and lane that opens, closes.
        let depth = items.iter().fold(0i32, |d, i| match i {
            Item::Open { .. } | Item::Lane { .. } => d + 1,
            Item::Close | Item::LaneEnd => d - 1,
            Item::Step { .. } => d,
        });
        assert_eq!(depth, 0);
    }

    #[test]
    fn steps_the_error_names_that_never_started_are_failed_not_unrun() {
        let mut outcomes = outcomes(&[attempt("stocks", 1, "COMPLETED")]);
        let error = "Step 'fan-out' (parallel) failed: Parallel execution failed: 1 step(s) failed: weather. \
                     Failed: Step 'weather' (agent: sleep) failed: cannot resolve ${workflow.input.city}";
        mark_failed_before_any_attempt(&mut outcomes, error);
        assert_eq!(outcomes["weather"].class(), "FAILED");
        assert_eq!(outcomes["fan-out"].class(), "FAILED");
        assert_eq!(outcomes["stocks"].class(), "COMPLETED", "a step that ran keeps its own outcome");
    }

    #[test]
    fn every_example_plan_draws() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let document: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                let plan = plan(document);
                let items = items(&plan, &HashMap::new());
                let drawn = items.iter().filter(|i| matches!(i, Item::Step { .. } | Item::Open { .. })).count();
                let planned = items.iter().all(|i| match i {
                    Item::Step { class, summary, .. } | Item::Open { class, summary, .. } => {
                        *class == "PLANNED" && summary.is_empty()
                    }
                    _ => true,
                });
                assert!(planned, "{path:?}: outside a run, nothing is coloured or called unrun");
                assert!(drawn >= plan.main_chain.len(), "{path:?}");
            }
        }
    }
}
