//! The sweeper: no run stays PENDING or RUNNING for good.
//!
//! A run normally comes back through its request: an executor that dies leaves the request's
//! offset uncommitted, and whoever gets the partition next resumes the run. Some runs have no such
//! way back: the one a `runvisor run` process was executing when it was killed, one whose request
//! a buggy producer committed, one the API inserted and whose request was lost. The sweeper looks
//! every `executor.sweeper.interval_ms` for runs nobody has touched for `after_leases` leases and
//! hands each to the run supervisor as if its request had just arrived, rebuilt from the run's row:
//! its stored plan (or its definition), its input.
//!
//! It never races a legitimate resume: the RunActor it starts claims the run first, exactly as for
//! a redelivered request, and the claim decides. A run another executor has just claimed is found
//! held and left alone; one that ended meanwhile is found terminal. A run whose plan cannot be
//! rebuilt goes through the same claim and is ended FAILED with the reason.

use std::time::Duration;

use entity::workflow_run;
use ractor::ActorRef;
use serde_json::Value;

use super::persistence::PersistenceHandle;
use super::run::RunRequest;
use super::supervisor::SupervisorMsg;
use crate::config::SweeperConfig;
use crate::observability::metrics as names;
use crate::wire::PlanSource;

/// What the sweeper needs: where to look, whom to hand runs to, and how long a lease is.
#[derive(Debug, Clone)]
pub struct Sweeper {
    pub persistence: PersistenceHandle,
    pub runs: ActorRef<SupervisorMsg>,
    pub lease: Duration,
    pub config: SweeperConfig,
    /// `executor.max_concurrent_runs`: the sweeper adds runs only while this executor has room.
    pub max_runs: usize,
}

impl Sweeper {
    /// Sweeps every `interval_ms` until the task is aborted (on the executor's shutdown).
    pub async fn run(self) {
        let mut ticks = tokio::time::interval(Duration::from_millis(self.config.interval_ms));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.sweep_once().await;
        }
    }

    /// One look: hands every orphan found (up to the batch, and the room left) to the supervisor.
    /// Answers how many were handed over.
    pub async fn sweep_once(&self) -> usize {
        let Ok(active) = ractor::call!(self.runs, SupervisorMsg::ActiveRuns) else { return 0 };
        let room = self.max_runs.saturating_sub(active) as u64;
        if room == 0 {
            return 0;
        }
        let untouched = self.lease.saturating_mul(self.config.after_leases);
        let cutoff = chrono::Utc::now().naive_utc() - chrono::Duration::from_std(untouched).unwrap_or_default();
        let orphans = match self.persistence.orphans(cutoff, self.config.batch.min(room)).await {
            Ok(orphans) => orphans,
            Err(error) => {
                tracing::warn!(%error, "cannot look for orphaned runs; will look again");
                return 0;
            }
        };
        let mut handed = 0;
        for run in orphans {
            tracing::warn!(run_id = %run.run_id, status = %run.status, owner = ?run.owner_id, lease_expires_at = ?run.lease_expires_at,
                "orphaned run: resuming it from its stored plan");
            let request = resume_request(&run);
            if self.runs.cast(SupervisorMsg::StartRun { request, on_done: None }).is_err() {
                break;
            }
            metrics::counter!(names::RUNS_SWEPT).increment(1);
            handed += 1;
        }
        handed
    }
}

/// The request that would have brought `run` back, rebuilt from its row: the plan it stored (an
/// inline plan, or the definition's at the time the API created it), else its definition's
/// current plan, else nothing to run with, which the claim then ends FAILED with the reason.
pub fn resume_request(run: &workflow_run::Model) -> RunRequest {
    let plan = match (&run.workflow_plan, run.workflow_definition_id) {
        (Some(plan), _) if !plan.is_null() => PlanSource::Inline(std::sync::Arc::new(plan.clone())),
        (_, Some(definition)) => PlanSource::Definition(definition),
        _ => PlanSource::Unusable(
            "the run was orphaned (its executor stopped and its request is gone) and it stored neither a \
             workflow_plan nor a workflow_definition_id to resume it from"
                .into(),
        ),
    };
    let input = match &run.input_data {
        Value::Object(_) => run.input_data.clone(),
        _ => Value::Object(Default::default()),
    };
    RunRequest {
        run_id: run.run_id.clone(),
        plan,
        definition_id: run.workflow_definition_id,
        input: std::sync::Arc::new(input),
        triggered_by: run.triggered_by.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use entity::RunStatus;
    use serde_json::json;

    fn row(plan: Option<Value>, definition: Option<uuid::Uuid>) -> workflow_run::Model {
        let at = chrono::Utc::now().naive_utc();
        workflow_run::Model {
            run_id: "r1".into(),
            workflow_id: "w".into(),
            workflow_name: "w".into(),
            workflow_definition_id: definition,
            status: RunStatus::Running,
            input_data: json!({"topic": "rust"}),
            triggered_by: Some("someone".into()),
            created_at: at,
            updated_at: at,
            completed_at: None,
            cancelled_at: None,
            cancelled_by: None,
            error_message: None,
            output_data: None,
            owner_id: Some("dead".into()),
            lease_expires_at: Some(at),
            retry_count: 0,
            retried_at: None,
            workflow_plan: plan,
        }
    }

    #[test]
    fn an_orphan_resumes_from_its_stored_plan_first_then_its_definition() {
        let definition = uuid::Uuid::new_v4();
        let stored = resume_request(&row(Some(json!({"name": "p"})), Some(definition)));
        assert_eq!(stored.plan, PlanSource::Inline(std::sync::Arc::new(json!({"name": "p"}))));
        assert_eq!(stored.definition_id, Some(definition));
        assert_eq!(stored.input.get("topic"), Some(&json!("rust")));
        assert_eq!(stored.triggered_by.as_deref(), Some("someone"));
        assert_eq!(resume_request(&row(None, Some(definition))).plan, PlanSource::Definition(definition));
    }

    #[test]
    fn an_orphan_without_a_plan_is_ended_with_the_reason() {
        let PlanSource::Unusable(reason) = resume_request(&row(None, None)).plan else { panic!("usable") };
        assert!(reason.contains("neither a workflow_plan nor a workflow_definition_id"), "{reason}");
    }
}
