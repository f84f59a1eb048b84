//! The `runvisor` command line: arguments, output, exit codes; the binary only calls [`main`].
//!
//! - [`local`]: `run` (one plan in this process, Ctrl-C cancels it) and `submit` (one request to
//!   the broker, optionally followed to its end);
//! - [`runs`]: finding and acting on runs: `runs`, `show`, `cancel`, `retry`;
//! - [`validate`]: `validate`, with the registry `run` uses and the plan's warnings;
//! - [`output`]: text or JSON on stdout, and a reader that closes the pipe early;
//! - [`exit`]: the documented exit codes and the failures behind them.
//!
//! Long-running modes (`consume`, `api`, `dev`) are [`crate::modes`]'; this module only starts
//! them. Everything a command does to runs goes through [`crate::service`], as the API's routes do.

pub mod exit;
pub mod local;
pub mod output;
pub mod runs;
pub mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::Config;
use exit::{CliError, EXIT_CODES, Exit};
use output::{Format, Out};

const ENVIRONMENT: &str = "\
Environment:
  RUNVISOR__<SECTION>__<KEY>  overrides a setting, e.g. RUNVISOR__DATABASE__URL=postgres://…,
                              RUNVISOR__KAFKA__BROKERS=host:9092 (see `runvisor config`)
  RUST_LOG                    what is logged on stderr (default: log.filter)
  NO_COLOR                    no colour in logs, even on a terminal

Where the data goes: database.url, by default the SQLite file ./runvisor.db in the working
directory. Commands that need a broker other processes can reach (kafka.brokers, not the default
\"embedded\"): submit, api, and consume beside them.";

#[derive(Debug, Parser)]
#[command(
    name = "runvisor",
    version,
    about = "A supervised, Kafka-fed workflow executor",
    after_long_help = format!("{ENVIRONMENT}\n\n{EXIT_CODES}"),
)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults (environment variables RUNVISOR__… win over both).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How results are printed on stdout: text for people, or JSON for programs.
    #[arg(long, short, global = true, value_enum, default_value = "human")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the database schema.
    #[command(after_long_help = "Example:\n  RUNVISOR__DATABASE__URL=postgres://runvisor@db/runvisor runvisor migrate")]
    Migrate,
    /// Check a plan against the contract: every error, and warnings about probable mistakes.
    #[command(after_long_help = validate::HELP)]
    Validate(validate::Args),
    /// Print the effective configuration (secrets masked).
    #[command(after_long_help = "Example:\n  RUNVISOR__EXECUTOR__LEASE_MS=30000 runvisor --config prod.toml config")]
    Config,
    /// Execute one plan to its end in this process and print the run; Ctrl-C cancels it.
    #[command(after_long_help = local::RUN_HELP)]
    Run(local::RunArgs),
    /// Run an executor: join the consumer group and execute requests until SIGTERM or SIGINT.
    #[command(
        after_long_help = "Example:\n  RUNVISOR__KAFKA__BROKERS=kafka:9092 RUNVISOR__DATABASE__URL=postgres://… runvisor consume\n\n\
                                 Needs a broker (kafka.brokers) and, for several executors, PostgreSQL."
    )]
    Consume,
    /// Serve the HTTP API (the platform's REST API) until SIGTERM or SIGINT; executors run apart.
    #[command(
        after_long_help = "Example:\n  RUNVISOR__KAFKA__BROKERS=kafka:9092 RUNVISOR__API__LISTEN=0.0.0.0:8000 runvisor api"
    )]
    Api,
    /// Executor, in-process broker and API in one process on the embedded defaults; Ctrl-C stops it.
    #[command(after_long_help = "Example:\n  runvisor dev    # then open the printed URL, or run the printed curl")]
    Dev,
    /// Exit 0 if URL answers 2xx within 5 s (container health checks: the image has no curl).
    #[command(after_long_help = "Example:\n  runvisor healthcheck --url http://127.0.0.1:9464/health")]
    Healthcheck {
        /// What to probe; default: the API's /health on api.listen.
        #[arg(long)]
        url: Option<String>,
    },
    /// Measure throughput, latency, CPU per component and memory on this machine (starts tansu and
    /// a fresh PostgreSQL database; see BENCHMARKS.md).
    #[command(after_long_help = crate::bench::HELP)]
    Bench(crate::bench::Args),
    /// Publish an execution request to the broker; print its run_id, or follow it with --wait.
    #[command(after_long_help = local::SUBMIT_HELP)]
    Submit(local::SubmitArgs),
    /// List recent runs, newest first.
    #[command(after_long_help = runs::RUNS_HELP)]
    Runs(runs::ListArgs),
    /// Print a run and its agent calls, as `run` prints them.
    #[command(
        after_long_help = "Example:\n  runvisor show run-0193…\n  runvisor show run-0193… -o json | jq .run.status"
    )]
    Show { run_id: String },
    /// Cancel a PENDING or RUNNING run; its calls in flight end CANCELLED.
    #[command(after_long_help = runs::CANCEL_HELP)]
    Cancel {
        run_id: String,
        /// Recorded as the run's error: `Cancelled: <reason>`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a FAILED or CANCELLED run after its last completed calls.
    #[command(after_long_help = runs::RETRY_HELP)]
    Retry {
        run_id: String,
        /// With a broker: follow the run to its end (on the embedded defaults it runs here anyway).
        #[arg(long)]
        wait: bool,
    },
}

/// Parses the arguments, runs the command, and says how it ended.
pub fn main() -> ExitCode {
    let parsed = command().try_get_matches().and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(error.exit_code().clamp(0, 255) as u8);
        }
    };
    let out = Out { format: cli.output };
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => return fail(CliError::from(error)),
    };
    let one_shot = !matches!(cli.command, Command::Consume | Command::Api | Command::Dev);
    crate::observability::logging::init(&config.log, one_shot);
    match run(cli.command, &config, out) {
        Ok(exit) => exit.into(),
        Err(error) => fail(error),
    }
}

/// The command line, with the environment and the exit codes at the end of every command's
/// `--help` (so `runvisor run --help` alone teaches what a script needs).
fn command() -> clap::Command {
    let mut command = Cli::command();
    let names: Vec<String> = command.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        command = command.mut_subcommand(name, |sub| {
            let own = sub.get_after_long_help().map(ToString::to_string).unwrap_or_default();
            sub.after_long_help(format!("{own}\n\n{ENVIRONMENT}\n\n{EXIT_CODES}"))
        });
    }
    command
}

fn fail(error: CliError) -> ExitCode {
    if !matches!(error, CliError::Closed) {
        eprintln!("error: {error}");
    }
    error.exit().into()
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Runtime::new().map_err(|e| CliError::Other(e.into()))
}

fn run(command: Command, config: &Config, out: Out) -> Result<Exit, CliError> {
    match command {
        Command::Config => {
            out.text(&config.to_string())?;
            Ok(Exit::Ok)
        }
        Command::Migrate => runtime()?.block_on(async {
            crate::modes::connect_and_migrate(config).await?;
            eprintln!("schema is current in {}", crate::db::location(&config.database));
            Ok(Exit::Ok)
        }),
        Command::Validate(args) => runtime()?.block_on(validate::validate(config, out, args)),
        Command::Run(args) => runtime()?.block_on(local::run(config, out, args)),
        Command::Submit(args) => runtime()?.block_on(local::submit(config, out, args)),
        Command::Runs(args) => runtime()?.block_on(runs::list(config, out, args)),
        Command::Show { run_id } => runtime()?.block_on(runs::show(config, out, &run_id)),
        Command::Cancel { run_id, reason } => runtime()?.block_on(runs::cancel(config, out, &run_id, reason)),
        Command::Retry { run_id, wait } => runtime()?.block_on(runs::retry(config, out, &run_id, wait)),
        Command::Consume => long_running(crate::modes::consume(config, crate::modes::termination())),
        Command::Api => long_running(crate::modes::serve_api(config, crate::modes::termination())),
        Command::Dev => long_running(crate::modes::dev(config, crate::modes::termination())),
        Command::Bench(args) => {
            runtime()?.block_on(crate::bench::bench(out, args)).map(|()| Exit::Ok).map_err(CliError::Other)
        }
        Command::Healthcheck { url } => {
            let url =
                url.unwrap_or_else(|| format!("http://{}/health", config.api.listen.replace("0.0.0.0", "127.0.0.1")));
            runtime()?.block_on(crate::modes::healthcheck(&url)).map_err(CliError::Other)?;
            Ok(Exit::Ok)
        }
    }
}

fn long_running(mode: impl std::future::Future<Output = anyhow::Result<()>>) -> Result<Exit, CliError> {
    runtime()?.block_on(mode).map_err(classify)?;
    Ok(Exit::Ok)
}

/// Sorts a failure of a long-running mode by its cause.
fn classify(error: anyhow::Error) -> CliError {
    if let Some(db) = error.downcast_ref::<crate::db::DbError>()
        && matches!(db, crate::db::DbError::Connect { .. })
    {
        return CliError::Database(format!("{error:#}"));
    }
    if error.downcast_ref::<rdkafka::error::KafkaError>().is_some() {
        return CliError::Broker(format!("{error:#}"));
    }
    CliError::Other(error)
}

/// Reads a plan or an input: `-` is stdin, `@FILE` (inputs) or `FILE` (plans) a file.
pub fn read_source(what: &str, source: &str) -> Result<String, CliError> {
    use std::io::Read;
    if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Invalid(format!("cannot read {what} from stdin: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(source).map_err(|e| CliError::Invalid(format!("cannot read {what} {source}: {e}")))
}

/// A plan document: JSON from a file or stdin.
pub fn read_plan(source: &str) -> Result<serde_json::Value, CliError> {
    let text = read_source("the plan", source)?;
    serde_json::from_str(&text).map_err(|e| {
        let shown = if source == "-" { "the plan on stdin" } else { source };
        CliError::Invalid(format!("{shown} is not valid JSON: {e}"))
    })
}

/// `--input`: inline JSON, `@FILE`, or `-` for stdin; a JSON object.
pub fn read_input(input: &str) -> Result<serde_json::Map<String, serde_json::Value>, CliError> {
    let text = match input.strip_prefix('@') {
        Some(path) => read_source("the input", path)?,
        None if input == "-" => read_source("the input", "-")?,
        None => input.to_string(),
    };
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(CliError::Invalid(format!(
            "--input must be a JSON object, found {}",
            crate::plan::expr::type_name(&other)
        ))),
        Err(e) => Err(CliError::Invalid(format!("--input is not valid JSON: {e}"))),
    }
}
