//! Finding and acting on runs from the command line: `runs`, `show`, `cancel`, `retry`. They
//! call the same [`crate::service::runs`] functions as the HTTP API.

use super::exit::{CliError, Exit};
use super::local::{exit_for, print_run};
use super::output::Out;
use crate::config::Config;
use crate::service::PageRequest;
use crate::service::runs::{Producer, RunFilter};

pub const RUNS_HELP: &str = "\
Examples:
  runvisor runs                               # the 20 newest
  runvisor runs --status FAILED --since 1h
  runvisor runs --workflow research --limit 100 -o json | jq '.[].run_id'

--workflow matches a run's workflow_id or workflow_name. --since takes a duration (30s, 15m, 2h,
7d) or a date-time (2026-12-01T10:00:00, UTC).";

pub const CANCEL_HELP: &str = "\
Example:
  runvisor cancel run-0193… --reason 'not needed any more'

The run ends CANCELLED at once in the database; the executor running it stops its calls (at once
when a broker carries the cancellation, else at its next lease renewal, within seconds).";

pub const RETRY_HELP: &str = "\
Examples:
  runvisor retry run-0193…            # on the embedded defaults: runs here, to its end
  runvisor retry run-0193… --wait     # with a broker: executors run it; follow it

Completed calls are not made again (if their agent and input are unchanged); failed calls get a
fresh attempt budget. A run of a stored definition runs the definition's current plan.";

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// PENDING, RUNNING, COMPLETED, FAILED or CANCELLED.
    #[arg(long, value_parser = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"])]
    status: Option<String>,
    /// A workflow_id or workflow_name.
    #[arg(long)]
    workflow: Option<String>,
    /// Only runs created within this long (30s, 15m, 2h, 7d) or since this UTC date-time.
    #[arg(long, value_parser = parse_since)]
    since: Option<chrono::NaiveDateTime>,
    /// How many runs at most.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    limit: u64,
}

fn parse_since(text: &str) -> Result<chrono::NaiveDateTime, String> {
    let now = chrono::Utc::now().naive_utc();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    if let (Ok(n), Some(seconds)) = (
        number.parse::<i64>(),
        match unit {
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86_400),
            _ => None,
        },
    ) {
        return Ok(now - chrono::TimeDelta::seconds(n * seconds));
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
        })
        .map_err(|_| format!("'{text}' is neither a duration (30s, 15m, 2h, 7d) nor a date-time (2026-12-01T10:00:00)"))
}

/// `runvisor runs`.
pub async fn list(config: &Config, out: Out, args: ListArgs) -> Result<Exit, CliError> {
    let db = crate::modes::connect_and_migrate(config).await?;
    let filter =
        RunFilter { status: args.status, workflow: args.workflow, created_after: args.since, ..Default::default() };
    let page = crate::service::runs::list(&db, filter, PageRequest { page: 1, page_size: args.limit }).await?;
    if out.json() {
        out.value(&page.items)?;
        return Ok(Exit::Ok);
    }
    let mut rows = vec![[
        "RUN".to_string(),
        "STATUS".into(),
        "WORKFLOW".into(),
        "CREATED (UTC)".into(),
        "TOOK".into(),
        "ERROR".into(),
    ]];
    for run in &page.items {
        let created = chrono::NaiveDateTime::parse_from_str(&run.created_at, "%Y-%m-%dT%H:%M:%S%.f").ok();
        let ended = run
            .completed_at
            .as_deref()
            .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").ok());
        let took = match (created, ended) {
            (Some(start), Some(end)) => crate::report::duration(end - start),
            _ => String::new(),
        };
        let mut error = run.error_message.clone().unwrap_or_default();
        if error.chars().count() > 80 {
            error = format!("{}…", error.chars().take(79).collect::<String>());
        }
        rows.push([
            run.run_id.clone(),
            run.status.clone(),
            run.workflow_name.clone(),
            created.map(|c| c.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default(),
            took,
            error,
        ]);
    }
    let widths: Vec<usize> = (0..5).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut text = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c < 5 {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            } else {
                line.push_str(cell);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    if page.total > page.items.len() as u64 {
        text.push_str(&format!("({} of {} runs; --limit shows more)\n", page.items.len(), page.total));
    }
    out.text(&text)?;
    Ok(Exit::Ok)
}

/// `runvisor show`.
pub async fn show(config: &Config, out: Out, run_id: &str) -> Result<Exit, CliError> {
    let db = crate::modes::connect_and_migrate(config).await?;
    print_run(out, &db, config, run_id).await?;
    Ok(Exit::Ok)
}

/// The broker executors consume, if the configuration names one runvisor can reach from here.
fn publisher(config: &Config) -> Result<Option<crate::kafka::producer::Publisher>, CliError> {
    if config.kafka.is_embedded() {
        return Ok(None);
    }
    let broker = crate::kafka::Broker::start(&config.kafka).map_err(|e| CliError::Broker(e.to_string()))?;
    let timeout = std::time::Duration::from_millis(config.outbox.publish_timeout_ms);
    crate::kafka::producer::Publisher::new(&broker, &config.kafka, timeout)
        .map(Some)
        .map_err(|e| CliError::Broker(e.to_string()))
}

/// `runvisor cancel`: the same command as the API's cancel.
pub async fn cancel(config: &Config, out: Out, run_id: &str, reason: Option<String>) -> Result<Exit, CliError> {
    let db = crate::modes::connect_and_migrate(config).await?;
    let publisher = publisher(config)?;
    let producer = Producer { config, publisher: publisher.as_ref() };
    let run = crate::service::runs::cancel(&db, producer, run_id, reason).await?;
    out.either(|| format!("run {run_id} {}: {}", run.status, run.error_message.clone().unwrap_or_default()), &run)?;
    Ok(Exit::Ok)
}

/// `runvisor retry`: on the embedded defaults the run is executed here; with a broker it is
/// requested again (and followed with `--wait`).
pub async fn retry(config: &Config, out: Out, run_id: &str, wait: bool) -> Result<Exit, CliError> {
    let db = crate::modes::connect_and_migrate(config).await?;
    let publisher = publisher(config)?;
    let producer = Producer { config, publisher: publisher.as_ref() };
    let (retried, request) = crate::service::runs::retry(&db, producer, run_id).await?;
    if publisher.is_some() {
        if !wait {
            out.either(|| format!("run {run_id} requested again (retry {})", retried.run.retry_count), &retried)?;
            return Ok(Exit::Ok);
        }
        return super::local::follow(out, &db, config, run_id, 0).await;
    }
    let plan = request
        .workflow_plan
        .clone()
        .map(|plan| crate::wire::PlanSource::Inline(plan.into()))
        .unwrap_or_else(|| crate::wire::PlanSource::Unusable("the retried run has no plan".into()));
    let run = crate::actors::run::RunRequest {
        run_id: run_id.to_string(),
        plan,
        definition_id: request.workflow_definition_id.as_deref().and_then(|id| uuid::Uuid::parse_str(id).ok()),
        input: std::sync::Arc::new(serde_json::Value::Object(
            request.input_data.as_object().cloned().unwrap_or_default(),
        )),
        triggered_by: Some("runvisor retry".into()),
    };
    let signalled = super::local::execute_here(config, &db, run).await?;
    let status = print_run(out, &db, config, run_id).await?;
    Ok(signalled.unwrap_or_else(|| exit_for(status)))
}
