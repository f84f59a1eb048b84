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
