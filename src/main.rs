//! The `runvisor` command line. It parses arguments, loads configuration and hands over to the
//! library; anything with logic lives in the library where tests can reach it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use runvisor::plan::{self, AgentCatalog};
use runvisor::{Config, modes};

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
    /// Serve the HTTP API (the platform's REST API) until SIGTERM or SIGINT; executors run apart.
    Api,
    /// Everything in one process on the embedded defaults: schema, executor, in-process broker and
    /// the API; prints the URL and a curl that runs a workflow. Ctrl-C stops it.
    Dev,
    /// Exit 0 if URL answers 2xx within a few seconds (container health checks: the runtime image
    /// has no curl). Default: the API's /health on api.listen.
    Healthcheck {
        /// What to probe, e.g. http://127.0.0.1:9464/health for `consume` with metrics.listen set.
        #[arg(long)]
        url: Option<String>,
    },
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
    runvisor::observability::logging::init(&config.log);
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
            Ok(exit_code(runtime.block_on(modes::run_plan(&config, &plan, &input))?))
        }
        Command::Consume => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(modes::consume(&config, modes::termination()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Api => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(modes::serve_api(&config, modes::termination()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(modes::dev(&config, modes::termination()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { url } => {
            let url =
                url.unwrap_or_else(|| format!("http://{}/health", config.api.listen.replace("0.0.0.0", "127.0.0.1")));
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(modes::healthcheck(&url))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit { plan, input, run_id, wait } => {
            let runtime = tokio::runtime::Runtime::new()?;
            Ok(exit_code(runtime.block_on(modes::submit(&config, &plan, &input, run_id, wait))?))
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

/// Exit 0 for a run that COMPLETED, 1 otherwise.
fn exit_code(completed: bool) -> ExitCode {
    if completed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
