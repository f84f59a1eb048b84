//! `runvisor run` and `runvisor submit`: one plan, executed here or handed to the broker.

use std::time::Duration;

use entity::{RunStatus, StepStatus};
use serde_json::{Value, json};

use super::exit::{CliError, Exit};
use super::output::Out;
use super::{read_input, read_plan};
use crate::actors::run::RunRequest;
use crate::config::Config;
use crate::executor::Executor;
use crate::service::runs::{RunResponse, StepResponse};
use crate::wire::{CancellationRequest, ExecutionRequestMessage, MAX_RUN_ID_LEN, PlanSource};

pub const RUN_HELP: &str = "\
Examples:
  runvisor run examples/pipeline.json --input '{\"topic\": \"rust\"}'
  runvisor run plan.json --input @input.json -o json | jq .run.output_data
  cat plan.json | runvisor run - --input '{}'

The run's id is printed on stderr as it starts. Ctrl-C (or SIGTERM) cancels the run — its calls in
flight end CANCELLED, the run ends `CANCELLED: Cancelled: interrupted` — prints it, and exits 130
(143). Needs no broker: the run is fed to an executor in this process. Rows go to database.url,
by default ./runvisor.db.";

pub const SUBMIT_HELP: &str = "\
Examples:
  RUNVISOR__KAFKA__BROKERS=localhost:9092 runvisor submit plan.json --input '{\"topic\": \"rust\"}'
  runvisor submit plan.json --wait --wait-timeout 600 -o json

Needs a broker that executors consume (kafka.brokers, not \"embedded\"). --wait follows the run in
the database (database.url, shared with the executors), printing each agent call as it starts and
ends (JSON lines with -o json), and exits by the run's status.";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A workflow plan in the platform's JSON format (docs/plans.md); `-` reads it from stdin.
    plan: String,
    /// The run's input: a JSON object, `@FILE` to read it from a file, or `-` for stdin.
    #[arg(long, default_value = "{}")]
    input: String,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// A workflow plan in the platform's JSON format (docs/plans.md); `-` reads it from stdin.
    plan: String,
    /// The run's input: a JSON object, `@FILE` to read it from a file, or `-` for stdin.
    #[arg(long, default_value = "{}")]
    input: String,
    /// The run_id to use (default: a new one). An id that already has a run is refused.
    #[arg(long)]
    run_id: Option<String>,
    /// Follow the run to its end, print it, and exit by its status.
    #[arg(long)]
    wait: bool,
    /// Seconds the broker has to take the request.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Seconds --wait waits before giving up (exit 9); 0 waits as long as it takes.
    #[arg(long, default_value_t = 0)]
    wait_timeout: u64,
}

/// A run as `-o json` prints it: the API's shapes.
#[derive(Debug, serde::Serialize)]
pub struct RunDocument {
    pub run: RunResponse,
    pub steps: Vec<StepResponse>,
}

/// What a run prints: `{"run", "steps"}` in JSON, the report as text.
pub async fn print_run(
    out: Out,
    db: &sea_orm::DatabaseConnection,
    config: &Config,
    run_id: &str,
) -> Result<RunStatus, CliError> {
    let run = crate::service::runs::get(db, run_id).await?;
    let steps = crate::service::runs::steps(db, run_id).await?;
    let status = status_of(&run);
    if out.json() {
        out.value(&RunDocument { run, steps })?;
    } else {
        let (row, rows) = crate::report::load(db, run_id).await?;
        out.text(&crate::report::run_report(&row, &rows, &crate::db::location(&config.database)))?;
    }
    Ok(status)
}

fn status_of(run: &RunResponse) -> RunStatus {
    <RunStatus as sea_orm::Iterable>::iter().find(|s| s.as_str() == run.status).unwrap_or(RunStatus::Failed)
}

/// The exit code of a run that ended with `status`.
pub fn exit_for(status: RunStatus) -> Exit {
    match status {
        RunStatus::Completed => Exit::Ok,
        RunStatus::Cancelled => Exit::RunCancelled,
        _ => Exit::RunFailed,
    }
}

/// `runvisor run`: the plan executed in this process; Ctrl-C or SIGTERM cancels it.
pub async fn run(config: &Config, out: Out, args: RunArgs) -> Result<Exit, CliError> {
    let document = read_plan(&args.plan)?;
    let input = read_input(&args.input)?;
    let db = crate::modes::connect_and_migrate(config).await?;
    let run_id = format!("run-{}", uuid::Uuid::now_v7());
    let request = RunRequest {
        run_id: run_id.clone(),
        plan: PlanSource::Inline(document.into()),
        definition_id: None,
        input: std::sync::Arc::new(Value::Object(input)),
        triggered_by: Some("runvisor run".into()),
    };
    let exit = execute_here(config, &db, request).await?;
    let status = print_run(out, &db, config, &run_id).await?;
    Ok(exit.unwrap_or_else(|| exit_for(status)))
}

/// Executes a run on an executor in this process until it ends; a signal cancels it. Returns the
/// signal's exit code if one came.
pub async fn execute_here(
    config: &Config,
    db: &sea_orm::DatabaseConnection,
    request: RunRequest,
) -> Result<Option<Exit>, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let executor = Executor::start(config, db.clone(), Default::default()).await?;
    let run_id = request.run_id.clone();
    eprintln!("run {run_id} started; Ctrl-C cancels it");
    let mut done = executor.submit(request)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| CliError::Other(e.into()))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| CliError::Other(e.into()))?;
    let signalled = tokio::select! {
        outcome = &mut done => {
            outcome.map_err(|_| CliError::Other(anyhow::anyhow!("the executor stopped before the run ended")))?;
            None
        }
        _ = interrupt.recv() => Some(Exit::Interrupted),
        _ = terminate.recv() => Some(Exit::Terminated),
    };
    if signalled.is_some() {
        let cancel = CancellationRequest {
            run_id: run_id.clone(),
            cancelled_by: Some("runvisor run".into()),
            reason: Some("interrupted".into()),
            timestamp: None,
        };
        executor.cancel_and_wait(cancel).await?;
        // The run ends CANCELLED once its calls in flight are recorded CANCELLED.
        let _ = done.await;
    }
    executor.shutdown(config.shutdown_grace()).await;
    Ok(signalled)
}

/// `runvisor submit`: one request to the broker; with `--wait`, the run followed to its end.
pub async fn submit(config: &Config, out: Out, args: SubmitArgs) -> Result<Exit, CliError> {
    if config.kafka.is_embedded() {
        return Err(CliError::Usage(
            "submit needs a broker that executors consume: set kafka.brokers (RUNVISOR__KAFKA__BROKERS); \
             `runvisor run` executes a plan without one"
                .into(),
        ));
    }
    if let Some(id) = &args.run_id {
        if id.trim().is_empty() {
            return Err(CliError::Usage("--run-id must not be empty".into()));
        }
        if id.chars().count() > MAX_RUN_ID_LEN {
            return Err(CliError::Usage(format!("--run-id must be at most {MAX_RUN_ID_LEN} characters")));
        }
    }
    let plan = read_plan(&args.plan)?;
    let input = Value::Object(read_input(&args.input)?);
    // The database is where --wait follows the run, and where an explicit run_id is checked.
    let db = if args.wait || args.run_id.is_some() { Some(crate::db::connect(&config.database).await?) } else { None };
    if let (Some(db), Some(id)) = (&db, &args.run_id)
        && let Ok(existing) = crate::service::runs::get(db, id).await
    {
        return Err(CliError::Refused(format!(
            "run {id} already exists ({}); choose another --run-id",
            existing.status
        )));
    }
    let run_id = args.run_id.clone().unwrap_or_else(|| format!("run-{}", uuid::Uuid::now_v7()));
    let message = ExecutionRequestMessage::inline(&run_id, plan, input);
    let broker = crate::kafka::Broker::start(&config.kafka).map_err(|e| CliError::Broker(e.to_string()))?;
    let unreachable = |error: rdkafka::error::KafkaError| {
        CliError::Broker(format!(
            "the broker at {} did not take the request within {} s: {error}",
            config.kafka.brokers, args.timeout
        ))
    };
    // The topic may not exist yet when no executor has started (a broker need not create topics
    // on first use); creating it is what an executor would do.
    tokio::time::timeout(Duration::from_secs(args.timeout), broker.ensure_topics(&config.kafka))
        .await
        .map_err(|_| unreachable(rdkafka::error::KafkaError::Canceled))?
        .map_err(unreachable)?;
    let publisher = crate::kafka::producer::Publisher::new(&broker, &config.kafka, Duration::from_secs(args.timeout))
        .map_err(|e| CliError::Broker(e.to_string()))?;
    let payload = serde_json::to_vec(&message).map_err(|e| CliError::Other(e.into()))?;
    publisher.send(&config.kafka.requests_topic, &run_id, &payload).await.map_err(unreachable)?;
    let Some(db) = db.filter(|_| args.wait) else {
        out.either(|| run_id.clone(), &json!({"run_id": run_id}))?;
        return Ok(Exit::Ok);
    };
    eprintln!("run {run_id} submitted; waiting for it");
    follow(out, &db, config, &run_id, args.wait_timeout).await
}

/// Prints each attempt of `run_id` as it starts and ends, then the run; exits by its status.
pub async fn follow(
    out: Out,
    db: &sea_orm::DatabaseConnection,
    config: &Config,
    run_id: &str,
    wait_timeout: u64,
) -> Result<Exit, CliError> {
    let deadline = (wait_timeout > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(wait_timeout));
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut every = tokio::time::interval(Duration::from_millis(200));
    loop {
        every.tick().await;
        let run = crate::service::runs::get(db, run_id).await.ok();
        if let Ok(steps) = crate::service::runs::steps(db, run_id).await {
            for step in steps {
                if seen.get(&step.id) == Some(&step.attempt_status) {
                    continue;
                }
                seen.insert(step.id.clone(), step.attempt_status.clone());
                print_attempt(out, &step)?;
            }
        }
        if run.as_ref().is_some_and(|r| matches!(r.status.as_str(), "COMPLETED" | "FAILED" | "CANCELLED")) {
            break;
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Err(CliError::TimedOut(format!("run {run_id} did not end within {wait_timeout} s")));
        }
    }
    let status = print_run(out, db, config, run_id).await?;
    Ok(exit_for(status))
}

fn print_attempt(out: Out, step: &StepResponse) -> Result<(), CliError> {
    if out.json() {
        return out.value(&json!({"attempt": step}));
    }
    let error = step.error_message.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    let status = step.attempt_status.as_str();
    let moment = if status == StepStatus::Running.as_str() {
        &step.started_at
    } else {
        step.completed_at.as_ref().unwrap_or(&step.started_at)
    };
    out.text(&format!(
        "{moment}  {} (agent {}) attempt {} {status}{error}",
        step.step_id, step.agent_name, step.attempt
    ))
}
