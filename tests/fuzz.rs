//! Hostile input, generated: property-based fuzzing of everything that parses what users send.
//!
//! Five targets: request decoding (`wire::decode_request`), plan validation (`plan::validate`),
//! `${…}` templates parsed and resolved (`plan::mapping`), the condition language
//! (`plan::condition`), and config loading (defaults + a generated TOML layer). Each gets inputs
//! shaped like the real thing (from the format's own vocabulary, so they reach deep code paths)
//! and inputs that are just noise. The property is the same everywhere: no panic, an error that
//! says something, and every input handled within a bounded time and memory (checked as the
//! slowest input and the process's peak RSS, printed at the end of each target).
//!
//! `RUNVISOR_FUZZ_CASES` sets the inputs per target: CI runs the default (20,000); the documented
//! full run is `RUNVISOR_FUZZ_CASES=1000000 cargo test --release --test fuzz -- --nocapture`.
//! A failing input is shrunk and printed by proptest; such seeds stay below as regression tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use figment::Figment;
use figment::providers::{Format, Toml};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use runvisor::config::{Config, DEFAULT_TOML};
use runvisor::plan::expr::{LoopFrame, StaticScope};
use runvisor::plan::{AgentCatalog, condition, mapping, validate};
use runvisor::wire::{PlanTexts, decode_request};
use serde_json::{Map, Value, json};

/// The slowest a single input may take before it counts as a hang (debug build, loaded machine:
/// generous on purpose; it guards against unbounded work, it does not measure speed).
const SLOWEST_INPUT: Duration = Duration::from_secs(2);
/// The most the process may ever hold while fuzzing.
const PEAK_RSS_BYTES: u64 = 1024 * 1024 * 1024;

fn cases() -> u32 {
    std::env::var("RUNVISOR_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000)
}

/// Peak resident memory of this process so far (`VmHWM`).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Runs `check` on `cases()` inputs from `strategy`, timing each; fails on a panic, a failed
/// property, an input slower than [`SLOWEST_INPUT`] or a peak RSS above [`PEAK_RSS_BYTES`].
fn fuzz<S: Strategy>(target: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let config = RunnerConfig { cases: cases(), failure_persistence: None, ..RunnerConfig::default() };
    let mut runner = TestRunner::new(config);
    let slowest = std::cell::Cell::new(Duration::ZERO);
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        let began = Instant::now();
        let outcome = check(input);
        let took = began.elapsed();
        slowest.set(slowest.get().max(took));
        prop_assert!(took < SLOWEST_INPUT, "one input took {took:?}");
        outcome
    });
    let peak = peak_rss();
    println!(
        "fuzz {target}: {} inputs in {:.1} s, slowest {:?}, peak RSS {} MiB",
        cases(),
        started.elapsed().as_secs_f64(),
        slowest.get(),
        peak / (1024 * 1024)
    );
    if let Err(failure) = result {
        panic!("fuzz {target}: {failure}");
    }
    assert!(peak < PEAK_RSS_BYTES, "fuzz {target}: peak RSS {peak} bytes");
}

/// JSON built from `words` (as keys and strings) and small numbers, up to a few levels deep.
fn json_from(words: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let word = prop::sample::select(words).prop_map(str::to_string);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..1000).prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        word.clone().prop_map(Value::String),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(word.clone(), inner, 0..7)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

const REQUEST_WORDS: &[&str] = &[
    "run_id",
    "workflow_plan",
    "workflow_definition_id",
    "input_data",
    "message_type",
    "timestamp",
    "EXECUTION_REQUEST",
    "CANCEL_REQUEST",
    "cancelled_by",
    "reason",
    "name",
    "start_step",
    "steps",
    "r-1",
    "",
    "00000000-0000-0000-0000-000000000000",
    "not-a-uuid",
];

const PLAN_WORDS: &[&str] = &[
    "name",
    "start_step",
    "steps",
    "id",
    "type",
    "agent",
    "agent_name",
    "next_step",
    "input_mapping",
    "parallel",
    "parallel_steps",
    "conditional",
    "condition",
    "expression",
    "if_true_step",
    "if_false_step",
    "loop",
    "loop_config",
    "collection",
    "loop_body",
    "mode",
    "sequential",
    "max_iterations",
    "on_error",
    "continue",
    "stop",
    "fork_join",
    "fork_join_config",
    "branches",
    "join_policy",
    "all",
    "any",
    "majority",
    "n_of_m",
    "n_required",
    "timeout_seconds",
    "branch_timeout_seconds",
    "a",
    "b",
    "c",
    "echo",
    "${workflow.input.x}",
    "${a.output}",
    "${loop.item}",
    "${workflow.input.items}",
];

struct Known;
impl AgentCatalog for Known {
    fn knows(&self, agent_name: &str) -> bool {
        matches!(agent_name, "echo" | "a" | "agent")
    }
}

/// Text from the `${…}` and condition vocabularies, glued in any order.
fn text_from(pieces: &'static [&'static str], up_to: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![prop::sample::select(pieces).prop_map(str::to_string), ".{0,3}"], 0..up_to)
        .prop_map(|parts| parts.concat())
}

const TEMPLATE_PIECES: &[&str] = &[
    "${",
    "}",
    "$",
    "{",
    "workflow",
    ".input",
    ".output",
    "a",
    "b",
    ".",
    "[",
    "]",
    "0",
    "1",
    "-1",
    "99999999999999999999",
    "loop",
    ".item",
    ".index",
    "'",
    "\"",
    " ",
    "x",
    "é",
    "\\",
];

const CONDITION_PIECES: &[&str] = &[
    "not ",
    " and ",
    " or ",
    "(",
    ")",
    "[",
    "]",
    ",",
    "-",
    "1",
    "2.5",
    "1e309",
    "'x'",
    "\"y\"",
    "True",
    "False",
    "None",
    "null",
    "${workflow.input.score}",
    "${workflow.input.tags}",
    "${a.output}",
    "${a.output.list}",
    " == ",
    " != ",
    " >= ",
    " <= ",
    " < ",
    " > ",
    " in ",
    " not in ",
    " contains ",
    " ",
];

fn scope() -> StaticScope {
    StaticScope {
        input: json!({"x": 1, "score": 0.9, "tags": ["a", "b"], "items": [1, 2, 3], "nested": {"deep": [{"k": "v"}]}}),
        outputs: HashMap::from([
            ("a".to_string(), json!({"list": [1, "two", null], "n": 5})),
            ("b".into(), json!("text")),
        ]),
        frame: Some(LoopFrame { item: json!({"k": 1}), index: 2, total: 3 }),
    }
}

#[test]
fn request_decoding() {
    let shaped = json_from(REQUEST_WORDS).prop_map(|value| serde_json::to_vec(&value).unwrap());
    let noise = prop::collection::vec(any::<u8>(), 0..256);
    fuzz("request decoding", prop_oneof![3 => shaped, 1 => noise], |bytes| {
        // Decoded twice with one cache of plan texts: the second time the plan's text is known
        // (if the first decode kept it), and the outcome must not change.
        let mut plans = PlanTexts::default();
        let first = decode_request(&bytes, 64 * 1024, &mut plans);
        if let Err(error) = &first {
            prop_assert!(!error.to_string().is_empty());
        }
        prop_assert_eq!(decode_request(&bytes, 64 * 1024, &mut plans), first);
        Ok(())
    });
}

#[test]
fn plan_validation() {
    fuzz("plan validation", json_from(PLAN_WORDS), |document| {
        match validate(&document, &Known) {
            Ok(plan) => prop_assert!(!plan.main_chain.is_empty(), "a valid plan has a first step"),
            Err(invalid) => prop_assert!(!invalid.to_string().is_empty()),
        }
        Ok(())
    });
}

#[test]
fn templates_parsed_and_resolved() {
    let scope = scope();
    let mapping = prop::collection::btree_map(
        "[a-z]{1,4}",
        prop_oneof![
            text_from(TEMPLATE_PIECES, 12).prop_map(Value::String),
            json_from(&["${a.output}", "${loop.item}", "k"])
        ],
        0..4,
    );
    fuzz("templates", mapping, |fields| {
        let fields: Map<String, Value> = fields.into_iter().collect();
        if let Err(error) = mapping::InputMapping::parse(fields).resolve(&scope) {
            prop_assert!(!error.to_string().is_empty());
        }
        Ok(())
    });
}

#[test]
fn conditions_parsed_and_evaluated() {
    let scope = scope();
    let source = prop_oneof![3 => text_from(CONDITION_PIECES, 24), 1 => ".{0,64}"];
    fuzz("conditions", source, |source| {
        if let Err(error) = condition::evaluate(&source, &scope) {
            prop_assert!(!error.to_string().is_empty());
        }
        Ok(())
    });
}

/// A TOML layer over the defaults: real keys (and some that do not exist) with values of any type.
fn config_layer() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(
        &[
            "database.url",
            "database.max_connections",
            "kafka.brokers",
            "kafka.group_id",
            "kafka.max_message_bytes",
            "kafka.topic_partitions",
            "executor.max_concurrent_runs",
            "executor.lease_ms",
            "executor.owner_id",
            "executor.retry.max_retries",
            "executor.retry.backoff_multiplier",
            "executor.circuit_breaker.failure_rate_threshold",
            "executor.sweeper.after_leases",
            "executor.max_agent_response_bytes",
            "persistence.batch_max",
            "api.listen",
            "api.prefix",
            "api.cors.origins",
            "log.format",
            "agents.A.url",
            "agents.A.protocol",
            "agents.A.timeout_ms",
            "agents.A.retry_config.max_retries",
            "agents.B.auth_type",
            "nope.nothing",
            "executor.unknown",
        ][..],
    );
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-z0-9:/._ -]{0,16}".prop_map(|s| format!("{s:?}")),
        Just("[1, \"x\"]".to_string()),
        Just("{ a = 1 }".to_string()),
    ];
    let pairs = prop::collection::vec((keys, value), 0..6)
        .prop_map(|pairs| pairs.into_iter().map(|(key, value)| format!("{key} = {value}\n")).collect::<String>());
    prop_oneof![4 => pairs, 1 => ".{0,64}"]
}

#[test]
fn config_loading() {
    fuzz("config loading", config_layer(), |layer| {
        let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(&layer));
        if let Err(error) = Config::from_figment(figment) {
            prop_assert!(!error.to_string().is_empty());
        }
        Ok(())
    });
}
