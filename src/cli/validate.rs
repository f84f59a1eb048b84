//! `runvisor validate`: a plan checked as `run` would check it, with warnings about probable
//! mistakes.
//!
//! The agents a plan may call are the registry's, as for a run: built-ins, `[agents.*]` config,
//! and the `agents` table of the configured database. `--offline` does not read the table; agents
//! it cannot check are then warnings, not errors.

use std::collections::BTreeSet;

use super::exit::{CliError, Exit};
use super::output::Out;
use super::read_plan;
use crate::agents::AgentRegistry;
use crate::config::Config;
use crate::plan::{AgentCatalog, Problem, StepKind};

pub const HELP: &str = "\
Examples:
  runvisor validate plan.json
  runvisor validate plan.json --strict -o json     # a CI gate: warnings fail too
  cat plan.json | runvisor validate - --offline

Errors make a plan unrunnable; warnings are probable mistakes the platform would accept (unknown
fields, steps nothing runs, ${…} that cannot parse or read an unknown step, conditions that cannot
parse). Exit 0 if valid (and, with --strict, without warnings), 4 otherwise.";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A workflow plan in the platform's JSON format (docs/plans.md); `-` reads it from stdin.
    plan: String,
    /// Warnings are errors too.
    #[arg(long)]
    strict: bool,
    /// Do not read the agents table; agents not built in or configured are warnings.
    #[arg(long)]
    offline: bool,
}

/// What `validate -o json` prints.
#[derive(Debug, serde::Serialize)]
struct Report {
    plan: String,
    valid: bool,
    /// The steps a run walks, when the plan is valid.
    main_chain: Option<Vec<String>>,
    errors: Vec<Finding>,
    warnings: Vec<Finding>,
}

#[derive(Debug, serde::Serialize)]
struct Finding {
    step: Option<String>,
    field: String,
    message: String,
}

impl From<&Problem> for Finding {
    fn from(problem: &Problem) -> Self {
        Finding { step: problem.step.clone(), field: problem.field.clone(), message: problem.message.clone() }
    }
}

pub async fn validate(config: &Config, out: Out, args: Args) -> Result<Exit, CliError> {
    let document = read_plan(&args.plan)?;
    let rows = if args.offline { Vec::new() } else { agent_rows(config).await? };
    let registry = AgentRegistry::new(config, &rows);
    let (result, mut warnings) = if args.offline {
        // Agents that cannot be checked here do not make the plan invalid.
        let any = |_: &str| true;
        let result = crate::plan::validate(&document, &any);
        let mut unchecked = Vec::new();
        if let Ok(plan) = &result {
            let names: BTreeSet<(&str, &str)> = plan
                .steps
                .values()
                .filter_map(|s| match &s.kind {
                    StepKind::Agent { agent_name } => Some((s.id.as_str(), agent_name.as_str())),
                    _ => None,
                })
                .filter(|(_, name)| !registry.knows(name))
                .collect();
            unchecked = names
                .into_iter()
                .map(|(step, name)| Problem {
                    step: Some(step.into()),
                    field: "agent_name".into(),
                    message: format!("agent '{name}' is neither built in nor configured; not checked (--offline)"),
                })
                .collect();
        }
        (result, unchecked)
    } else {
        (crate::plan::validate(&document, &registry), Vec::new())
    };
    warnings.extend(crate::plan::lint::lint(&document, result.as_ref().ok()));
    let errors = result.as_ref().err().map(|invalid| invalid.problems.clone()).unwrap_or_default();
    let valid = errors.is_empty() && (!args.strict || warnings.is_empty());
    let shown = if args.plan == "-" { "stdin".to_string() } else { args.plan.clone() };
    let report = Report {
        plan: shown.clone(),
        valid,
        main_chain: result.as_ref().ok().map(|p| p.main_chain.clone()),
        errors: errors.iter().map(Finding::from).collect(),
        warnings: warnings.iter().map(Finding::from).collect(),
    };
    out.either(
        || {
            let mut text = match &result {
                Ok(plan) if valid => format!("{shown}: valid; main chain: {}\n", plan.main_chain.join(" → ")),
                Ok(_) => format!("{shown}: warnings found and --strict is set\n"),
                Err(invalid) => format!("{shown}: invalid workflow plan, {} problem(s):\n", invalid.problems.len()),
            };
            for error in &errors {
                text.push_str(&format!("  error: {error}\n"));
            }
            for warning in &warnings {
                text.push_str(&format!("  warning: {warning}\n"));
            }
            text
        },
        &report,
    )?;
    Ok(if valid { Exit::Ok } else { Exit::Invalid })
}

/// The `agents` table's rows, as `run` would read them. An SQLite file that does not exist yet
/// has none (and is not created by validating).
async fn agent_rows(config: &Config) -> Result<Vec<entity::agent::Model>, CliError> {
    use sea_orm::EntityTrait;
    let location = crate::db::location(&config.database);
    if config.database.url.starts_with("sqlite:") && !std::path::Path::new(&location).exists() {
        return Ok(Vec::new());
    }
    let db = crate::db::connect(&config.database).await.map_err(|e| {
        CliError::Database(format!("{e}; `runvisor validate --offline` checks a plan without the database"))
    })?;
    match entity::agent::Entity::find().all(&db).await {
        Ok(rows) => Ok(rows),
        // A database without the schema yet has no agents table: nothing registered there.
        Err(error) if error.to_string().contains("agents") => Ok(Vec::new()),
        Err(error) => Err(CliError::Database(error.to_string())),
    }
}
