//! The bound: how fast PostgreSQL absorbs runvisor's own writes when nothing else limits them.
//!
//! The writes of `runs` runs (the claim, each call's RUNNING row and its COMPLETED update, the
//! run's terminal update) are all queued at once into a real persistence actor, so every
//! transaction is as full as `persistence.batch_max` allows. The rows per second it reaches are the
//! most the executor could write on this database; the throughput modes report their own row
//! rate as a share of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use entity::{RunStatus, StepStatus};
use ractor::Actor;
use serde_json::json;

use crate::actors::persistence::{AttemptEnd, AttemptStart, Claim, Journal, PersistenceHandle, RunWrite, WriteOp};
use crate::actors::supervisor::{PersistenceSupervisor, PersistenceSupervisorArgs};
use crate::config::{Config, DatabaseConfig};

/// Rows written per run of `calls` agent calls: the claim, a start and an end per call, the end.
pub fn rows_per_run(calls: usize) -> usize {
    2 + 2 * calls
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BoundFigures {
    pub runs: usize,
    pub rows: usize,
    pub transactions: u64,
    pub wall_s: f64,
    pub rows_per_s: f64,
}

pub async fn bound(database_url: &str, runs: usize, calls: usize) -> anyhow::Result<BoundFigures> {
    let config = Config::defaults();
    let database = DatabaseConfig { url: database_url.to_string(), ..config.database.clone() };
    let db = crate::db::connect(&database).await?;
    crate::db::migrate(&db).await?;
    let handle = PersistenceHandle::new(Arc::new(Journal::default()));
    let args = PersistenceSupervisorArgs { db, handle: handle.clone(), config: config.persistence.clone() };
    let (supervisor, _) = Actor::spawn(None, PersistenceSupervisor, args).await?;
    let prefix = uuid::Uuid::now_v7();
    let now = || chrono::Utc::now().naive_utc();
    let run = |run_id: &str, status: RunStatus| {
        WriteOp::Run(Box::new(RunWrite {
            run_id: run_id.to_string(),
            workflow_id: "bench-bound".into(),
            workflow_name: "bench-bound".into(),
            definition_id: None,
            input: std::sync::Arc::new(json!({"value": 1})),
            triggered_by: None,
            status,
            output: status.is_terminal().then(|| json!({"value": 1, "counter": calls})),
            error: None,
            cancelled_by: None,
            owner: Some("bench-bound".into()),
            cancel_requested_at: None,
            plan: None,
            at: now(),
        }))
    };
    let before = handle.journal().stats();
    let started = Instant::now();
    for r in 0..runs {
        let run_id = format!("bound-{prefix}-{r}");
        let mut claim = match run(&run_id, RunStatus::Running) {
            WriteOp::Run(run) => {
                Claim { run: *run, owner: "bench-bound".into(), lease: Duration::from_secs(60), first_attempt: None }
            }
            _ => unreachable!("a run write"),
        };
        if calls == 0 {
            handle.write_later(WriteOp::ClaimNew(Box::new(claim.clone())), None);
        }
        for c in 1..=calls {
            let id = format!("{run_id}/s{c}/1");
            let input = json!({"value": 1, "counter": c});
            let start = AttemptStart {
                id: id.clone(),
                run_id: run_id.clone(),
                step_id: format!("s{c}"),
                agent_name: "echo".into(),
                input: std::sync::Arc::new(input.clone()),
                started_at: now(),
                parent_step_id: None,
                branch_name: None,
                join_policy: None,
                loop_iteration_index: None,
                attempt: 1,
                retry_round: 0,
                owner: "bench-bound".into(),
            };
            // As a RunActor writes them: the first attempt with the claim.
            if c == 1 {
                claim.first_attempt = Some(start);
                handle.write_later(WriteOp::ClaimNew(Box::new(claim.clone())), None);
            } else {
                handle.write_later(WriteOp::AttemptStarted(Box::new(start)), None);
            }
            let end = AttemptEnd {
                id,
                run_id: run_id.clone(),
                owner: "bench-bound".into(),
                status: StepStatus::Completed,
                output: Some(std::sync::Arc::new(input)),
                error: None,
                at: now(),
            };
            handle.write_later(WriteOp::AttemptEnded(Box::new(end)), None);
        }
        handle.write_later(run(&run_id, RunStatus::Completed), None);
    }
    handle.flush().await?;
    let wall = started.elapsed().as_secs_f64();
    let after = handle.journal().stats();
    supervisor.stop(None);
    let rows = runs * rows_per_run(calls);
    Ok(BoundFigures {
        runs,
        rows,
        transactions: after.transactions - before.transactions,
        wall_s: super::workload::round3(wall),
        rows_per_s: (rows as f64 / wall).round(),
    })
}
