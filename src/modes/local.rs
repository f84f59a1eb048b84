//! The one-shot modes: `runvisor run` (one plan on this machine, no broker) and `runvisor submit`
//! (one request onto the broker, optionally followed to its end).

use std::path::Path;

use anyhow::Context;
use entity::RunStatus;
use serde_json::{Map, Value};

use crate::actors::run::RunRequest;
use crate::config::Config;
use crate::executor::Executor;
use crate::wire::{ExecutionRequestMessage, PlanSource};

use super::connect_and_migrate;

/// Reads `--input`: inline JSON, or `@path`.
pub fn read_input(input: &str) -> anyhow::Result<Map<String, Value>> {
    let text = match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
        None => input.to_string(),
    };
    match serde_json::from_str(&text).context("--input is not valid JSON")? {
        Value::Object(map) => Ok(map),
        other => anyhow::bail!("--input must be a JSON object, found {other}"),
    }
}

fn read_plan(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// `runvisor run`: executes one plan to its end, prints the run and its attempts, and answers
/// whether it COMPLETED.
pub async fn run_plan(config: &Config, path: &Path, input: &str) -> anyhow::Result<bool> {
    let document = read_plan(path)?;
    let input = read_input(input)?;
    let db = connect_and_migrate(config).await?;
    let executor = Executor::start(config, db, Default::default()).await?;
    let request = RunRequest {
        run_id: format!("run-{}", uuid::Uuid::now_v7()),
        plan: PlanSource::Inline(document),
        definition_id: None,
        input,
        triggered_by: Some("runvisor run".into()),
    };
    let outcome = executor.run(request).await?;
    let (run, steps) =
        executor.persistence().load_run(&outcome.run_id).await?.context("the run's row is missing after it ended")?;
    print!("{}", crate::report::run_report(&run, &steps));
    executor.shutdown(config.shutdown_grace()).await;
    Ok(outcome.status == RunStatus::Completed)
}

/// `runvisor submit`: publishes an execution request and prints its run_id; with `wait`, follows
/// the run in the database, prints it, and answers whether it COMPLETED.
pub async fn submit(
    config: &Config,
    path: &Path,
    input: &str,
    run_id: Option<String>,
    wait: bool,
) -> anyhow::Result<bool> {
    if config.kafka.is_embedded() {
        anyhow::bail!(
            "submit needs a broker that other processes can reach: set kafka.brokers (RUNVISOR__KAFKA__BROKERS)"
        );
    }
    let plan = read_plan(path)?;
    let input = Value::Object(read_input(input)?);
    let run_id = run_id.unwrap_or_else(|| format!("run-{}", uuid::Uuid::now_v7()));
    let message = ExecutionRequestMessage::inline(&run_id, plan, input);
    crate::kafka::producer::submit(&config.kafka, &message).await?;
    println!("{run_id}");
    if !wait {
        return Ok(true);
    }
    let db = crate::db::connect(&config.database).await?;
    let (run, steps) = crate::report::wait_for_run(&db, &run_id).await?;
    print!("{}", crate::report::run_report(&run, &steps));
    Ok(run.status == RunStatus::Completed)
}
