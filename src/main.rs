//! The `runvisor` command line. It parses arguments, loads configuration and hands over to the
//! library; anything with logic lives in the library where tests can reach it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use runvisor::Config;
use runvisor::plan::{self, AgentCatalog};

#[derive(Debug, Parser)]
#[command(name = "runvisor", version, about = "A supervised, Kafka-fed workflow executor")]
struct Cli {
    /// A TOML file layered over the built-in defaults (environment variables RUNVISOR__… win over both).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the database schema.
    Migrate,
    /// Check a plan file against the contract and report every problem.
    Validate {
        /// A workflow plan in the platform's JSON format.
        plan: PathBuf,
    },
    /// Print the effective configuration (secrets masked).
    Config,
    /// Execute one plan to its end on the configured database (by default the embedded SQLite
    /// file), print the run and its attempts, and exit 0 only if it COMPLETED.
    Run {
        /// A workflow plan in the platform's JSON format.
        plan: PathBuf,
        /// The run's input: a JSON object, or @FILE to read it from a file.
        #[arg(long, default_value = "{}")]
        input: String,
    },
    /// Run an executor: join the consumer group and execute requests until SIGTERM or SIGINT.
    Consume,
    /// Publish an execution request for a plan; print its run_id.
    Submit {
        /// A workflow plan in the platform's JSON format.
        plan: PathBuf,
        /// The run's input: a JSON object, or @FILE to read it from a file.
        #[arg(long, default_value = "{}")]
        input: String,
        /// The run_id to use (default: a new one).
        #[arg(long)]
        run_id: Option<String>,
        /// Follow the run to its terminal status, print it, and exit 0 only if it COMPLETED.
        #[arg(long)]
        wait: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Config => {
            print!("{config}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { plan: path } => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            // Until the registry reads the `agents` table, the configured agents and built-ins are
            // what is known.
            let known =
                |name: &str| runvisor::config::BUILTIN_AGENTS.contains(&name) || config.agents.contains_key(name);
            match plan::validate_text(&text, &known as &dyn AgentCatalog) {
                Ok(plan) => {
                    println!("{}: valid; main chain: {}", path.display(), plan.main_chain.join(" → "));
                    Ok(ExitCode::SUCCESS)
                }
                Err(invalid) => {
                    println!("{}: {invalid}", path.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Run { plan, input } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(run_plan(&config, &plan, &input))
        }
        Command::Consume => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(runvisor::kafka::ingress::consume(&config, termination()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit { plan, input, run_id, wait } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(submit(&config, &plan, &input, run_id, wait))
        }
        Command::Migrate => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let db = runvisor::db::connect(&config.database).await?;
                runvisor::db::migrate(&db).await?;
                eprintln!("schema is current at {}", runvisor::db::redact(&config.database.url));
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
    }
}

/// Reads `--input`: inline JSON, or `@path`.
fn read_input(input: &str) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let text = match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?,
        None => input.to_string(),
    };
    match serde_json::from_str(&text).context("--input is not valid JSON")? {
        serde_json::Value::Object(map) => Ok(map),
        other => anyhow::bail!("--input must be a JSON object, found {other}"),
    }
}

async fn run_plan(config: &Config, path: &std::path::Path, input: &str) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let document: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let input = read_input(input)?;
    let db = runvisor::db::connect(&config.database).await?;
    runvisor::db::migrate(&db).await?;
    let executor = runvisor::executor::Executor::start(config, db, Default::default()).await?;
    let request = runvisor::actors::run::RunRequest {
        run_id: format!("run-{}", uuid::Uuid::now_v7()),
        plan: runvisor::kafka::messages::PlanSource::Inline(document),
        definition_id: None,
        input,
        triggered_by: Some("runvisor run".into()),
    };
    let outcome = executor.run(request).await?;
    let (run, steps) =
        executor.persistence().load_run(&outcome.run_id).await?.context("the run's row is missing after it ended")?;
    print!("{}", runvisor::report::run_report(&run, &steps));
    executor.shutdown(config.shutdown_grace()).await;
    Ok(if outcome.status == entity::RunStatus::Completed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn submit(
    config: &Config,
    path: &std::path::Path,
    input: &str,
    run_id: Option<String>,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    if config.kafka.is_embedded() {
        anyhow::bail!(
            "submit needs a broker that other processes can reach: set kafka.brokers (RUNVISOR__KAFKA__BROKERS)"
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let plan: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let input = serde_json::Value::Object(read_input(input)?);
    let run_id = run_id.unwrap_or_else(|| format!("run-{}", uuid::Uuid::now_v7()));
    let message = runvisor::kafka::messages::ExecutionRequestMessage::inline(&run_id, plan, input);
    runvisor::kafka::producer::submit(&config.kafka, &message).await?;
    println!("{run_id}");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let db = runvisor::db::connect(&config.database).await?;
    let (run, steps) = runvisor::report::wait_for_run(&db, &run_id).await?;
    print!("{}", runvisor::report::run_report(&run, &steps));
    Ok(if run.status == entity::RunStatus::Completed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
