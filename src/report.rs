//! Human-readable summaries of runs, for the command line.

use std::fmt::Write;

use entity::{step_execution, workflow_run};

/// The run's status, output or error, and a table of its attempts in the order they started.
pub fn run_report(run: &workflow_run::Model, steps: &[step_execution::Model]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run {}  {}  ({})", run.run_id, run.status, run.workflow_name);
    if let Some(output) = &run.output_data {
        let _ = writeln!(out, "output: {}", serde_json::to_string_pretty(output).unwrap_or_default());
    }
    if let Some(error) = &run.error_message {
        let _ = writeln!(out, "error: {error}");
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
