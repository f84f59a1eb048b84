//! Human-readable summaries of runs, for the command line.

use std::fmt::Write;

use std::time::Duration;

use entity::{step_execution, workflow_run};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};

/// The run's status, when it started and how long it took, where its rows are, its output or
/// error, and a table of its attempts in the order they started.
pub fn run_report(run: &workflow_run::Model, steps: &[step_execution::Model], data: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run {}  {}  ({})", run.run_id, run.status, run.workflow_name);
    let took = match run.completed_at {
        Some(end) => format!("took {}", duration(end - run.created_at)),
        None => format!("running for {}", duration(chrono::Utc::now().naive_utc() - run.created_at)),
    };
    let _ = writeln!(out, "started {} UTC, {took}; data in {data}", run.created_at.format("%Y-%m-%d %H:%M:%S"));
    if let Some(output) = &run.output_data {
        let _ = writeln!(out, "output: {}", serde_json::to_string_pretty(output).unwrap_or_default());
    }
    if let Some(error) = &run.error_message {
        // An invalid plan's problems, one per line.
        match error.strip_prefix("Invalid workflow plan: ") {
            Some(problems) => {
                let _ = writeln!(out, "error: Invalid workflow plan:");
                for problem in problems.split("; ") {
                    let _ = writeln!(out, "  {problem}");
                }
            }
            None => {
                let _ = writeln!(out, "error: {error}");
            }
        }
    }
    let mut rows: Vec<[String; 7]> = vec![[
        "step".into(),
        "agent".into(),
        "attempt".into(),
        "status".into(),
        "ms".into(),
        "where".into(),
        "error".into(),
    ]];
    let mut ordered: Vec<&step_execution::Model> = steps.iter().collect();
    ordered.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.attempt.cmp(&b.attempt)));
    for step in ordered {
        let ms =
            step.completed_at.map(|end| (end - step.started_at).num_milliseconds().to_string()).unwrap_or_default();
        let mut place = Vec::new();
        if let Some(parent) = &step.parent_step_id {
            place.push(parent.clone());
        }
        if let Some(branch) = &step.branch_name {
            place.push(format!("branch {branch}"));
        }
        if let Some(index) = step.loop_iteration_index {
            place.push(format!("iteration {index}"));
        }
        rows.push([
            step.step_id.clone(),
            step.agent_name.clone(),
            step.attempt.to_string(),
            step.status.to_string(),
            ms,
            place.join(", "),
            step.error_message.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c < 6 {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            } else {
                line.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// A duration as people read it: `850 ms`, `12.4 s`, `3 min 5 s`, `2 h 10 min`.
pub fn duration(delta: chrono::TimeDelta) -> String {
    let ms = delta.num_milliseconds().max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// A run and its attempts as stored, or an error if there is no such run.
pub async fn load(
    db: &DatabaseConnection,
    run_id: &str,
) -> Result<(workflow_run::Model, Vec<step_execution::Model>), DbErr> {
    let run = workflow_run::Entity::find_by_id(run_id)
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("run {run_id}")))?;
    let steps = step_execution::Entity::find().filter(step_execution::Column::RunId.eq(run_id)).all(db).await?;
    Ok((run, steps))
}

/// Polls the database until `run_id` is terminal (`runvisor submit --wait`, a separate process
/// from any executor), then returns it with its attempts.
pub async fn wait_for_run(
    db: &DatabaseConnection,
    run_id: &str,
) -> Result<(workflow_run::Model, Vec<step_execution::Model>), DbErr> {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    loop {
        every.tick().await;
        if let Some(run) = workflow_run::Entity::find_by_id(run_id).one(db).await?
            && run.status.is_terminal()
        {
            let steps = step_execution::Entity::find().filter(step_execution::Column::RunId.eq(run_id)).all(db).await?;
            return Ok((run, steps));
        }
    }
}
