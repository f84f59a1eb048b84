//! The workflow plan (CONTRACT.md §3) in two forms.
//!
//! [`PlanDocument`] and [`StepDocument`] mirror the JSON as it arrives, with every field optional,
//! so that a plan missing half its fields still parses and validation can report *all* its
//! problems instead of the first one serde trips over. [`Plan`] is the validated form the executor
//! walks: only [`super::validate()`] builds one, so code that holds a `Plan` never re-checks
//! references, cycles or required fields.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A plan as received. Unknown fields are ignored, as the contract requires.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlanDocument {
    pub workflow_id: Option<String>,
    pub name: Option<String>,
    /// A string or a number in the platform's plans.
    pub version: Option<Value>,
    pub start_step: Option<String>,
    /// Kept as raw JSON so that one malformed step does not hide the problems of the others.
    pub steps: Option<Map<String, Value>>,
}

/// A step as received. The `type` decides which of the optional fields are required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepDocument {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub step_type: Option<String>,
    pub agent_name: Option<String>,
    pub next_step: Option<String>,
    pub input_mapping: Option<Map<String, Value>>,
    pub parallel_steps: Option<Vec<String>>,
    pub max_parallelism: Option<i64>,
    pub condition: Option<ConditionDocument>,
    pub if_true_step: Option<String>,
    pub if_false_step: Option<String>,
    pub loop_config: Option<LoopConfigDocument>,
    pub fork_join_config: Option<ForkJoinConfigDocument>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConditionDocument {
    pub expression: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoopConfigDocument {
    /// An expression that resolves to an array, or a literal array.
    pub collection: Option<Value>,
    pub loop_body: Option<Vec<String>>,
    pub execution_mode: Option<String>,
    pub max_parallelism: Option<i64>,
    pub max_iterations: Option<i64>,
    pub on_error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ForkJoinConfigDocument {
    pub branches: Option<BTreeMap<String, BranchDocument>>,
    pub join_policy: Option<String>,
    pub n_required: Option<i64>,
    pub branch_timeout_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BranchDocument {
    pub steps: Option<Vec<String>>,
    pub timeout_seconds: Option<f64>,
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub workflow_id: String,
    pub name: String,
    pub version: Option<String>,
    pub start_step: String,
    pub steps: BTreeMap<String, Step>,
    /// The step ids from `start_step` along `next_step`: what the run walks.
    pub main_chain: Vec<String>,
}

impl Plan {
    /// The step with `id`. Validation guarantees every referenced id exists.
    pub fn step(&self, id: &str) -> &Step {
        &self.steps[id]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub id: String,
    pub next_step: Option<String>,
    /// Field → value; string values are templates (see [`super::expr`]), parsed.
    pub input_mapping: super::mapping::InputMapping,
    pub kind: StepKind,
}

impl Step {
    /// What the contract calls the step in error messages: the agent's name, or the step type.
    pub fn label(&self) -> &str {
        match &self.kind {
            StepKind::Agent { agent_name } => agent_name,
            other => other.type_name(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Agent { agent_name: String },
    Parallel { steps: Vec<String>, max_parallelism: Option<usize> },
    Conditional { expression: String, if_true: Option<String>, if_false: Option<String> },
    Loop(LoopSpec),
    ForkJoin(ForkJoinSpec),
}

impl StepKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Agent { .. } => "agent",
            Self::Parallel { .. } => "parallel",
            Self::Conditional { .. } => "conditional",
            Self::Loop(_) => "loop",
            Self::ForkJoin(_) => "fork_join",
        }
    }

    /// The steps this step runs as part of itself.
    pub fn children(&self) -> Vec<&str> {
        match self {
            Self::Agent { .. } => Vec::new(),
            Self::Parallel { steps, .. } => steps.iter().map(String::as_str).collect(),
            Self::Conditional { if_true, if_false, .. } => {
                if_true.iter().chain(if_false.iter()).map(String::as_str).collect()
            }
            Self::Loop(spec) => spec.body.iter().map(String::as_str).collect(),
            Self::ForkJoin(spec) => spec.branches.iter().flat_map(|b| b.steps.iter().map(String::as_str)).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopMode {
    Sequential,
    Parallel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The first failed iteration fails the loop.
    Stop,
    /// Failed iterations become `null`; the loop completes.
    Continue,
    /// All iterations run; then the loop fails listing every error.
    Collect,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoopSpec {
    pub collection: Value,
    pub body: Vec<String>,
    pub mode: LoopMode,
    pub max_parallelism: Option<usize>,
    pub max_iterations: Option<usize>,
    pub on_error: OnError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinPolicy {
    All,
    Any,
    /// More than half of the branches.
    Majority,
    NOfM(usize),
}

impl JoinPolicy {
    /// The policy's name as written in plans and stored in `step_executions.join_policy`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Any => "any",
            Self::Majority => "majority",
            Self::NOfM(_) => "n_of_m",
        }
    }

    /// Whether `succeeded` of `total` branches satisfy the policy.
    pub fn is_met(&self, succeeded: usize, total: usize) -> bool {
        match self {
            Self::All => succeeded == total,
            Self::Any => succeeded >= 1,
            Self::Majority => succeeded * 2 > total,
            Self::NOfM(n) => succeeded >= *n,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForkJoinSpec {
    pub branches: Vec<Branch>,
    pub policy: JoinPolicy,
    pub branch_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    pub name: String,
    pub steps: Vec<String>,
    pub timeout: Option<Duration>,
}

impl Branch {
    /// The branch's own timeout, else the fork-join default.
    pub fn effective_timeout(&self, spec: &ForkJoinSpec) -> Option<Duration> {
        self.timeout.or(spec.branch_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_policies() {
        assert!(JoinPolicy::All.is_met(3, 3));
        assert!(!JoinPolicy::All.is_met(2, 3));
        assert!(JoinPolicy::Any.is_met(1, 3));
        assert!(!JoinPolicy::Any.is_met(0, 3));
        assert!(JoinPolicy::Majority.is_met(2, 3));
        assert!(!JoinPolicy::Majority.is_met(2, 4));
        assert!(JoinPolicy::NOfM(2).is_met(2, 4));
        assert!(!JoinPolicy::NOfM(3).is_met(2, 4));
    }
}
