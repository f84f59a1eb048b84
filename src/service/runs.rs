//! Runs: reading them, and the three producer commands — execute, retry, cancel (API.md §3.3).
//!
//! A command writes the run's row, its request (into the outbox), and its audit row in one
//! transaction, then publishes. The executor owns every other transition of a run: these functions
//! only create a PENDING run, move a FAILED or CANCELLED one back to PENDING, or cancel one that
//! is PENDING or RUNNING — each with a conditional update, so two callers cannot both succeed.

use chrono::NaiveDateTime;
use entity::{RunStatus, StepStatus, step_execution, workflow_run};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::audit::{self, EntityType, run_entity_id};
use super::outbox::{self, Message};
use super::page::{self, Page, PageRequest};
use super::workflows::sort_order;
use super::{SYSTEM_USER, ServiceError, iso, now};
use crate::config::Config;
use crate::kafka::producer::Publisher;
use crate::wire::{CancellationRequest, ExecutionRequestMessage, timestamp_now};

/// A run as the API answers it: the platform's RunResponse, plus runvisor's `output_data` and
/// `retry_count`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RunResponse {
    /// The run_id again (the platform's UI reads both).
    pub id: String,
    pub run_id: String,
    /// The definition's UUID for runs started through the API; the plan's `workflow_id` otherwise.
    pub workflow_id: String,
    pub workflow_name: String,
    pub workflow_definition_id: Option<String>,
    /// PENDING, RUNNING, COMPLETED, FAILED or CANCELLED.
    pub status: String,
    #[schema(value_type = Option<Object>)]
    pub input_data: Option<Value>,
    pub triggered_by: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
    pub cancelled_at: Option<String>,
    pub cancelled_by: Option<String>,
    pub error_message: Option<String>,
    /// The output of the main chain's last step, once COMPLETED.
    #[schema(value_type = Option<Object>)]
    pub output_data: Option<Value>,
    pub retry_count: i32,
}

impl From<workflow_run::Model> for RunResponse {
    fn from(row: workflow_run::Model) -> Self {
        RunResponse {
            id: row.run_id.clone(),
            run_id: row.run_id,
            workflow_id: row.workflow_id,
            workflow_name: row.workflow_name,
            workflow_definition_id: row.workflow_definition_id.map(|id| id.to_string()),
            status: row.status.as_str().into(),
            input_data: Some(row.input_data),
            triggered_by: row.triggered_by,
            created_at: iso(&row.created_at),
            updated_at: iso(&row.updated_at),
            completed_at: row.completed_at.as_ref().map(iso),
            cancelled_at: row.cancelled_at.as_ref().map(iso),
            cancelled_by: row.cancelled_by,
            error_message: row.error_message,
            output_data: row.output_data,
            retry_count: row.retry_count,
        }
    }
}

/// What `POST /runs/{id}/retry` answers: the run, plus the fields the platform's UI reads. The run
/// resumes under its own id, so `new_run_id` and `original_run_id` are its run_id.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RetryResponse {
    #[serde(flatten)]
    pub run: RunResponse,
    pub new_run_id: String,
    pub original_run_id: String,
    pub message: String,
    pub timestamp: String,
}

/// One agent call attempt as the API answers it: the platform's StepExecutionResponse, plus
/// where in the plan it ran and which attempt it was.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct StepResponse {
    pub id: String,
    pub run_id: String,
    pub step_id: String,
    pub step_name: String,
    pub agent_name: String,
    /// RUNNING, COMPLETED or FAILED: the platform's vocabulary. A CANCELLED attempt reads FAILED
    /// here (its error says it was cancelled), because the platform's UI knows no other status and
    /// fails to render a step it does not know; `attempt_status` has the stored one.
    pub status: String,
    /// The attempt row's own status: RUNNING, COMPLETED, FAILED or CANCELLED.
    pub attempt_status: String,
    #[schema(value_type = Object)]
    pub input_data: Value,
    #[schema(value_type = Option<Object>)]
    pub output_data: Option<Value>,
    pub started_at: String,
    pub completed_at: Option<String>,
    pub error_message: Option<String>,
    pub attempt: i32,
    pub parent_step_id: Option<String>,
    pub branch_name: Option<String>,
    pub join_policy: Option<String>,
    pub loop_iteration_index: Option<i32>,
}

impl From<step_execution::Model> for StepResponse {
    fn from(row: step_execution::Model) -> Self {
        StepResponse {
            id: row.id,
            run_id: row.run_id,
            step_id: row.step_id,
            step_name: row.step_name,
            agent_name: row.agent_name,
            status: match row.status {
                StepStatus::Cancelled => StepStatus::Failed.as_str().into(),
                status => status.as_str().into(),
            },
            attempt_status: row.status.as_str().into(),
            input_data: if Value::is_null(&row.input_data) { json!({}) } else { row.input_data },
            output_data: row.output_data,
            started_at: iso(&row.started_at),
            completed_at: row.completed_at.as_ref().map(iso),
            error_message: row.error_message,
            attempt: row.attempt,
            parent_step_id: row.parent_step_id,
            branch_name: row.branch_name,
            join_policy: row.join_policy,
            loop_iteration_index: row.loop_iteration_index,
        }
    }
}

/// Filters and order of the run list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    /// Exact and case-sensitive, as on the platform.
    pub status: Option<String>,
    pub workflow_id: Option<String>,
    /// A workflow_id or a workflow_name (the command line's `--workflow`).
    pub workflow: Option<String>,
    pub workflow_definition_id: Option<Uuid>,
    pub created_after: Option<NaiveDateTime>,
    pub created_before: Option<NaiveDateTime>,
    pub sort_by: Option<String>,
    pub sort_order: Option<String>,
}

fn sort_column(name: Option<&str>) -> workflow_run::Column {
    use workflow_run::Column as C;
    match name.unwrap_or("created_at") {
        "run_id" | "id" => C::RunId,
        "workflow_id" => C::WorkflowId,
        "workflow_name" => C::WorkflowName,
        "status" => C::Status,
        "updated_at" => C::UpdatedAt,
        "completed_at" => C::CompletedAt,
        "cancelled_at" => C::CancelledAt,
        "triggered_by" => C::TriggeredBy,
        _ => C::CreatedAt,
    }
}

pub async fn list(
    db: &DatabaseConnection,
    filter: RunFilter,
    page: PageRequest,
) -> Result<Page<RunResponse>, ServiceError> {
    use workflow_run::Column as C;
    let order = sort_order(filter.sort_order.as_deref());
    let select = workflow_run::Entity::find()
        .order_by(sort_column(filter.sort_by.as_deref()), order.clone())
        .order_by(C::RunId, order);
    let Some(select) = filtered(select, &filter) else { return Ok(Page::new(Vec::new(), 0, page)) };
    Ok(page::fetch(db, select, page).await?.map(RunResponse::from))
}

/// How many runs match `filter` (its status aside), per status, in the contract's order of statuses:
/// the dashboard's counts, true over the whole table rather than one page.
pub async fn status_counts(db: &DatabaseConnection, filter: &RunFilter) -> Result<Vec<(RunStatus, u64)>, ServiceError> {
    use workflow_run::Column as C;
    let filter = RunFilter { status: None, ..filter.clone() };
    let select = workflow_run::Entity::find()
        .select_only()
        .column(C::Status)
        .column_as(C::RunId.count(), "n")
        .group_by(C::Status);
    let Some(select) = filtered(select, &filter) else { return Ok(Vec::new()) };
    let rows: Vec<(RunStatus, i64)> = select.into_tuple().all(db).await?;
    let counts: Vec<(RunStatus, u64)> = <RunStatus as sea_orm::Iterable>::iter()
        .map(|status| (status, rows.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n as u64)))
        .collect();
    Ok(counts)
}

/// `select` narrowed by `filter`; `None` when nothing can match (a status that is no RunStatus: the
/// platform compares strings, so it matches nothing rather than failing).
fn filtered(
    mut select: sea_orm::Select<workflow_run::Entity>,
    filter: &RunFilter,
) -> Option<sea_orm::Select<workflow_run::Entity>> {
    use workflow_run::Column as C;
    if let Some(status) = &filter.status {
        select = select.filter(C::Status.eq(status_named(status)?));
    }
    if let Some(workflow_id) = &filter.workflow_id {
        select = select.filter(C::WorkflowId.eq(workflow_id.as_str()));
    }
    if let Some(workflow) = &filter.workflow {
        select = select.filter(C::WorkflowId.eq(workflow.as_str()).or(C::WorkflowName.eq(workflow.as_str())));
    }
    if let Some(id) = filter.workflow_definition_id {
        select = select.filter(C::WorkflowDefinitionId.eq(id));
    }
    if let Some(after) = filter.created_after {
        select = select.filter(C::CreatedAt.gte(after));
    }
    if let Some(before) = filter.created_before {
        select = select.filter(C::CreatedAt.lte(before));
    }
    Some(select)
}

fn status_named(name: &str) -> Option<RunStatus> {
    <RunStatus as sea_orm::Iterable>::iter().find(|s| s.as_str() == name)
}

/// The run's row, or `NotFound` with `message`.
pub async fn find(
    db: &DatabaseConnection,
    run_id: &str,
    message: impl FnOnce() -> String,
) -> Result<workflow_run::Model, ServiceError> {
    workflow_run::Entity::find_by_id(run_id).one(db).await?.ok_or_else(|| ServiceError::NotFound(message()))
}

pub async fn get(db: &DatabaseConnection, run_id: &str) -> Result<RunResponse, ServiceError> {
    Ok(find(db, run_id, || format!("Run with id '{run_id}' not found")).await?.into())
}

/// Every attempt of the run, in the order they started.
pub async fn steps(db: &DatabaseConnection, run_id: &str) -> Result<Vec<StepResponse>, ServiceError> {
    find(db, run_id, || format!("Run with id '{run_id}' not found")).await?;
    Ok(attempts(db, run_id, None).await?.into_iter().map(StepResponse::from).collect())
}

/// The run's attempt rows as stored (with runvisor's columns: `retry_round`, `executor_id`), in
/// the order they started; the first `limit` when one is given.
pub async fn attempts(
    db: &DatabaseConnection,
    run_id: &str,
    limit: Option<u64>,
) -> Result<Vec<step_execution::Model>, ServiceError> {
    Ok(step_execution::Entity::find()
        .filter(step_execution::Column::RunId.eq(run_id))
        .order_by_asc(step_execution::Column::StartedAt)
        .order_by_asc(step_execution::Column::Attempt)
        .limit(limit)
        .all(db)
        .await?)
}

/// The run's events as lines: its creation, each attempt's start and end (with its error), and its
/// end. The platform answers 501 here.
pub async fn logs(db: &DatabaseConnection, run_id: &str) -> Result<Vec<String>, ServiceError> {
    let run = find(db, run_id, || format!("Run with id '{run_id}' not found")).await?;
    let attempts = steps(db, run_id).await?;
    let mut lines: Vec<(String, u8, String)> = Vec::new();
    lines.push((
        iso(&run.created_at),
        0,
        format!(
            "run {run_id} created ({}, triggered by {})",
            run.workflow_name,
            run.triggered_by.as_deref().unwrap_or("unknown")
        ),
    ));
    for step in &attempts {
        let place = match (&step.parent_step_id, &step.branch_name, step.loop_iteration_index) {
            (_, Some(branch), _) => format!(" in branch {branch}"),
            (Some(parent), _, Some(index)) => format!(" in {parent} iteration {index}"),
            (Some(parent), _, None) => format!(" in {parent}"),
            _ => String::new(),
        };
        let what = format!("step {} (agent {}) attempt {}{place}", step.step_id, step.agent_name, step.attempt);
        lines.push((step.started_at.clone(), 1, format!("{what} RUNNING")));
        if let Some(end) = &step.completed_at {
            let error = step.error_message.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
            lines.push((end.clone(), 1, format!("{what} {}{error}", step.attempt_status)));
        }
    }
    if let Some(end) = &run.completed_at {
        let error = run.error_message.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        lines.push((iso(end), 2, format!("run {run_id} {}{error}", run.status)));
    }
    lines.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    Ok(lines.into_iter().map(|(at, _, line)| format!("{at} {line}")).collect())
}

/// The owner a retried run is handed to until an executor claims it. It names no executor, so the
/// executor that ran the previous round — which may not have noticed a cancellation yet — sees at
/// its next lease renewal that the run is no longer its and stops it, its late writes do not land,
/// and the next claim need not wait for that executor's lease.
pub const RETRY_OWNER: &str = "api";

/// What the producer commands need besides the database.
#[derive(Debug, Clone)]
pub struct Producer<'a> {
    pub config: &'a Config,
    /// `None` when no broker is shared with executors (the command line on the embedded
    /// defaults): requests are then not queued for publishing, and the caller runs a retried run
    /// itself; a cancellation is recorded in the database only, where the executor running the run
    /// sees it at its next lease renewal.
    pub publisher: Option<&'a Publisher>,
}

/// `POST /workflows/{id}/execute`: a PENDING run and its request, committed together, then
/// published (and, if the broker does not take it now, published by the outbox relay later).
pub async fn execute(
    db: &DatabaseConnection,
    producer: Producer<'_>,
    definition_id: Uuid,
    input: Map<String, Value>,
) -> Result<RunResponse, ServiceError> {
    let definition = super::workflows::find(db, definition_id).await?;
    if definition.status != "active" {
        return Err(ServiceError::Rejected(format!(
            "Workflow '{}' is not active (status: {})",
            definition.name, definition.status
        )));
    }
    let run_id = format!("run-{}", Uuid::new_v4());
    let input = Value::Object(input);
    let request = ExecutionRequestMessage {
        run_id: run_id.clone(),
        workflow_plan: Some(definition.workflow_data.clone()),
        workflow_definition_id: Some(definition_id.to_string()),
        input_data: input.clone(),
        timestamp: timestamp_now(),
        message_type: crate::wire::EXECUTION_REQUEST.into(),
    };
    let message = request_message(producer.config, &request)?;
    let at = now();
    let txn = db.begin().await?;
    workflow_run::ActiveModel {
        run_id: Set(run_id.clone()),
        workflow_id: Set(definition_id.to_string()),
        workflow_name: Set(definition.name.clone()),
        workflow_definition_id: Set(Some(definition_id)),
        status: Set(RunStatus::Pending),
        input_data: Set(input.clone()),
        triggered_by: Set(Some(SYSTEM_USER.into())),
        created_at: Set(at),
        updated_at: Set(at),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    let outbox_id = outbox::enqueue(&txn, &message).await?;
    let changes =
        json!({"workflow_id": definition_id.to_string(), "workflow_name": definition.name, "input_data": input});
    audit::record(&txn, EntityType::Run, run_entity_id(&run_id), "execute", Some(changes)).await?;
    txn.commit().await?;
    if let Some(publisher) = producer.publisher {
        publish(db, publisher, outbox_id, &message).await;
    }
    // Read back: a failed publish has said so on the row meanwhile.
    Ok(find(db, &run_id, || format!("Run with id '{run_id}' not found")).await?.into())
}

/// The request as published; refused when executors would send it to the dead-letter topic
/// (the plan and the input together exceed `kafka.max_message_bytes`).
fn request_message(config: &Config, request: &ExecutionRequestMessage) -> Result<Message, ServiceError> {
    let payload = serde_json::to_string(request).expect("a request serialises");
    let limit = config.kafka.max_message_bytes;
    if payload.len() > limit {
        return Err(ServiceError::TooLarge(format!(
            "The execution request (plan and input_data) is {} bytes, above kafka.max_message_bytes ({limit})",
            payload.len()
        )));
    }
    Ok(Message { topic: config.kafka.requests_topic.clone(), key: request.run_id.clone(), payload })
}

/// Publishes a request just committed; a failure leaves it to the relay and says so on the run.
async fn publish(db: &DatabaseConnection, publisher: &Publisher, outbox_id: Uuid, message: &Message) {
    if let Err(reason) = outbox::publish_now(db, publisher, outbox_id, message).await {
        tracing::warn!(run_id = %message.key, %reason, "request not published yet; the outbox relay will retry");
        if let Err(error) = outbox::mark_publish_error(db, &message.key, &reason).await {
            tracing::warn!(%error, "cannot record the failed publish on the run");
        }
    }
}

/// `POST /runs/{id}/retry`: a FAILED or CANCELLED run goes back to PENDING and is requested again
/// with its definition's current plan and its original input. The executor resumes it: completed
/// calls are not made again, and failed ones get a fresh attempt budget.
/// The request is returned too: a caller without a broker (`producer.publisher` is `None`) runs it.
pub async fn retry(
    db: &DatabaseConnection,
    producer: Producer<'_>,
    run_id: &str,
) -> Result<(RetryResponse, ExecutionRequestMessage), ServiceError> {
    let run = find(db, run_id, || format!("Run '{run_id}' not found")).await?;
    if !matches!(run.status, RunStatus::Failed | RunStatus::Cancelled) {
        return Err(ServiceError::Rejected(format!(
            "Can only retry failed or cancelled runs. Current status: {}",
            run.status
        )));
    }
    // The definition's current plan, as the platform does; a run without one (its request
    // carried the plan inline) runs the plan it stored.
    let plan = match (run.workflow_definition_id, &run.workflow_plan) {
        (Some(definition_id), _) => {
            let found = super::workflows::find(db, definition_id).await.map_err(|error| match error {
                ServiceError::NotFound(_) => {
                    ServiceError::NotFound(format!("Workflow definition '{definition_id}' not found"))
                }
                other => other,
            })?;
            found.workflow_data
        }
        (None, Some(plan)) => plan.clone(),
        (None, None) => {
            return Err(ServiceError::Rejected(format!("Run '{run_id}' has no workflow_definition_id")));
        }
    };
    let request = ExecutionRequestMessage {
        run_id: run_id.to_string(),
        workflow_plan: Some(plan),
        workflow_definition_id: run.workflow_definition_id.map(|id| id.to_string()),
        input_data: run.input_data.clone(),
        timestamp: timestamp_now(),
        message_type: crate::wire::EXECUTION_REQUEST.into(),
    };
    let message = request_message(producer.config, &request)?;
    use workflow_run::Column as C;
    let at = now();
    let txn = db.begin().await?;
    let moved = workflow_run::Entity::update_many()
        .col_expr(C::Status, Expr::value(RunStatus::Pending.as_str()))
        .col_expr(C::ErrorMessage, Expr::value(Option::<String>::None))
        .col_expr(C::CancelledAt, Expr::value(Option::<NaiveDateTime>::None))
        .col_expr(C::CancelledBy, Expr::value(Option::<String>::None))
        .col_expr(C::CompletedAt, Expr::value(Option::<NaiveDateTime>::None))
        .col_expr(C::OutputData, Expr::value(Option::<Value>::None))
        .col_expr(C::RetryCount, Expr::col(C::RetryCount).add(1))
        .col_expr(C::RetriedAt, Expr::value(at))
        .col_expr(C::OwnerId, Expr::value(RETRY_OWNER))
        .col_expr(C::LeaseExpiresAt, Expr::value(Option::<NaiveDateTime>::None))
        .col_expr(C::UpdatedAt, Expr::value(at))
        .filter(C::RunId.eq(run_id))
        .filter(C::Status.is_in([RunStatus::Failed.as_str(), RunStatus::Cancelled.as_str()]))
        .exec(&txn)
        .await?;
    if moved.rows_affected == 0 {
        txn.rollback().await?;
        let now_status = find(db, run_id, || format!("Run '{run_id}' not found")).await?.status;
        return Err(ServiceError::Rejected(format!(
            "Can only retry failed or cancelled runs. Current status: {now_status}"
        )));
    }
    // A request of the previous round still waiting to be published would run the old plan.
    outbox::discard(&txn, run_id).await?;
    let queued = match producer.publisher {
        Some(_) => Some(outbox::enqueue(&txn, &message).await?),
        None => None,
    };
    let changes = json!({"previous_status": run.status.as_str()});
    audit::record(&txn, EntityType::Run, run_entity_id(run_id), "retry", Some(changes)).await?;
    txn.commit().await?;
    if let (Some(publisher), Some(outbox_id)) = (producer.publisher, queued) {
        publish(db, publisher, outbox_id, &message).await;
    }
    let run: RunResponse = find(db, run_id, || format!("Run '{run_id}' not found")).await?.into();
    let response = RetryResponse {
        new_run_id: run.run_id.clone(),
        original_run_id: run.run_id.clone(),
        message: format!("Run '{run_id}' resumes from its recorded steps"),
        timestamp: iso(&now()),
        run,
    };
    Ok((response, request))
}

/// `POST /runs/{id}/cancel`: a PENDING or RUNNING run ends CANCELLED, once. The cancellation is
/// published so the executor holding the run stops its calls at once (their rows end CANCELLED);
/// if that publish is lost, the executor sees the CANCELLED row at its next lease renewal.
pub async fn cancel(
    db: &DatabaseConnection,
    producer: Producer<'_>,
    run_id: &str,
    reason: Option<String>,
) -> Result<RunResponse, ServiceError> {
    let run = find(db, run_id, || format!("Run '{run_id}' not found")).await?;
    let rejected = |status: RunStatus| {
        ServiceError::Rejected(format!("Can only cancel pending or running workflows. Current status: {status}"))
    };
    if run.status.is_terminal() {
        return Err(rejected(run.status));
    }
    let cancellation = CancellationRequest {
        run_id: run_id.to_string(),
        cancelled_by: Some(SYSTEM_USER.into()),
        reason: reason.clone(),
        timestamp: Some(timestamp_now()),
    };
    use workflow_run::Column as C;
    let at = now();
    let txn = db.begin().await?;
    let moved = workflow_run::Entity::update_many()
        .col_expr(C::Status, Expr::value(RunStatus::Cancelled.as_str()))
        .col_expr(C::CancelledAt, Expr::value(at))
        .col_expr(C::CancelledBy, Expr::value(SYSTEM_USER))
        .col_expr(C::CompletedAt, Expr::value(at))
        .col_expr(C::ErrorMessage, Expr::value(cancellation.error_message()))
        .col_expr(C::UpdatedAt, Expr::value(at))
        .filter(C::RunId.eq(run_id))
        .filter(C::Status.is_in([RunStatus::Pending.as_str(), RunStatus::Running.as_str()]))
        .exec(&txn)
        .await?;
    if moved.rows_affected == 0 {
        txn.rollback().await?;
        return Err(rejected(find(db, run_id, || format!("Run '{run_id}' not found")).await?.status));
    }
    let changes = json!({"reason": reason, "previous_status": run.status.as_str()});
    audit::record(&txn, EntityType::Run, run_entity_id(run_id), "cancel", Some(changes)).await?;
    txn.commit().await?;
    if let Some(publisher) = producer.publisher {
        let payload = serde_json::to_vec(&crate::wire::CancellationMessage::from(cancellation)).expect("serialises");
        if let Err(error) = publisher.send(&producer.config.kafka.cancellations_topic, run_id, &payload).await {
            tracing::warn!(%run_id, %error, "cancellation not published; the executor sees it at its next lease renewal");
        }
    }
    Ok(find(db, run_id, || format!("Run '{run_id}' not found")).await?.into())
}
