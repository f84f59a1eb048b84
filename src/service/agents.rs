//! Agents: the `agents` table as the platform's API serves it (API.md §3.1), with secrets masked.

use std::time::{Duration, Instant};

use entity::agent;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::audit::{self, EntityType};
use super::check::{Checks, Object};
use super::page::{self, Page, PageRequest};
use super::{MessageResponse, ServiceError, iso, now};
use crate::config::RetryPolicy;

/// What a secret reads as in every answer. A PUT that sends it back keeps the stored secret.
pub const MASK: &str = "***";
/// The `auth_config` keys that hold secrets.
const SECRET_KEYS: [&str; 2] = ["token", "key"];
const AUTH_TYPES: [&str; 3] = ["none", "bearer", "apikey"];
const SETTABLE_STATUSES: [&str; 2] = ["active", "inactive"];

/// An agent as the API answers it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AgentResponse {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub description: Option<String>,
    pub auth_type: String,
    /// Secrets (`token`, `key`) read as `"***"`.
    #[schema(value_type = Option<Object>)]
    pub auth_config: Option<Value>,
    pub timeout_ms: i32,
    #[schema(value_type = Object)]
    pub retry_config: Value,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: Option<String>,
    pub updated_by: Option<String>,
}

impl From<agent::Model> for AgentResponse {
    fn from(row: agent::Model) -> Self {
        let retry = retry_policy(row.retry_config.as_ref());
        AgentResponse {
            id: row.id,
            name: row.name,
            url: row.url,
            description: row.description,
            auth_type: row.auth_type.unwrap_or_else(|| "none".into()),
            auth_config: row.auth_config.map(mask),
            timeout_ms: row.timeout_ms,
            retry_config: retry_json(&retry),
            status: row.status,
            created_at: iso(&row.created_at),
            updated_at: iso(&row.updated_at),
            created_by: row.created_by,
            updated_by: row.updated_by,
        }
    }
}

fn mask(mut config: Value) -> Value {
    if let Value::Object(fields) = &mut config {
        for key in SECRET_KEYS {
            if let Some(value) = fields.get_mut(key)
                && !value.is_null()
            {
                *value = Value::String(MASK.into());
            }
        }
    }
    config
}

/// A stored `retry_config`, with the contract's defaults for what it lacks (the platform stores
/// partial objects after a partial update).
fn retry_policy(stored: Option<&Value>) -> RetryPolicy {
    // The executor's own reading of the column (absent fields take the contract's defaults); a
    // row it could not read shows the defaults.
    stored.and_then(|value| serde_json::from_value(value.clone()).ok()).unwrap_or_default()
}

fn retry_json(policy: &RetryPolicy) -> Value {
    serde_json::to_value(policy).expect("a retry policy serialises")
}

/// Filters of the agent list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentFilter {
    pub status: Option<String>,
    /// With a name, the list is that one agent or nothing (the platform's behaviour).
    pub name: Option<String>,
}

pub async fn list(
    db: &DatabaseConnection,
    filter: AgentFilter,
    page: PageRequest,
) -> Result<Page<AgentResponse>, ServiceError> {
    if let Some(name) = filter.name {
        let found = agent::Entity::find().filter(agent::Column::Name.eq(name)).one(db).await?;
        return Ok(match found {
            Some(row) => Page::new(vec![row.into()], 1, PageRequest { page: 1, page_size: 1 }),
            None => Page::new(vec![], 0, PageRequest { page: 1, page_size: page.page_size }),
        });
    }
    let mut select = agent::Entity::find().order_by_asc(agent::Column::Name);
    if let Some(status) = filter.status {
        select = select.filter(agent::Column::Status.eq(status));
    }
    Ok(page::fetch(db, select, page).await?.map(AgentResponse::from))
}

async fn find(db: &DatabaseConnection, id: Uuid) -> Result<agent::Model, ServiceError> {
    agent::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("Agent with id '{id}' not found")))
}

pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<AgentResponse, ServiceError> {
    Ok(find(db, id).await?.into())
}

/// A checked `POST /agents` body.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCreate {
    pub name: String,
    pub url: String,
    pub description: Option<String>,
    pub auth_type: &'static str,
    pub auth_config: Option<Value>,
    pub timeout_ms: i64,
    pub retry: RetryPolicy,
}

impl AgentCreate {
    /// Reads and checks a request body, reporting every problem.
    pub fn parse(body: &Value) -> Result<AgentCreate, ServiceError> {
        let mut checks = Checks::default();
        let Some(object) = checks.body(body) else { return Err(ServiceError::Invalid(checks.errors)) };
        let name = checks.string(object, "name", true, 1, 255);
        let url = read_url(&mut checks, object, true);
        let description = checks.string(object, "description", false, 0, usize::MAX);
        let auth_type = match object.fields.get("auth_type") {
            None => Some("none"),
            Some(_) => checks.one_of(object, "auth_type", &AUTH_TYPES, true),
        };
        let auth_config = read_auth_config(&mut checks, object);
        if let (Some(auth_type), Some(config)) = (auth_type, &auth_config) {
            check_auth(&mut checks, auth_type, config);
        }
        let timeout_ms = checks.integer(object, "timeout_ms", false, 1000, 300_000).unwrap_or(30_000);
        let retry = read_retry(&mut checks, object, RetryPolicy::default());
        checks.done()?;
        let (Some(name), Some(url), Some(auth_type)) = (name, url, auth_type) else {
            unreachable!("a field that cannot be read is a recorded problem")
        };
        Ok(AgentCreate { name, url, description, auth_type, auth_config, timeout_ms, retry })
    }

    /// The request as the audit log records it: every field, defaults filled in.
    fn audit_changes(&self) -> Value {
        json!({
            "name": self.name, "url": self.url, "description": self.description, "auth_type": self.auth_type,
            "auth_config": self.auth_config.clone().map(mask), "timeout_ms": self.timeout_ms,
            "retry_config": retry_json(&self.retry),
        })
    }
}

fn read_url(checks: &mut Checks, object: Object<'_>, required: bool) -> Option<String> {
    let text = checks.string(object, "url", required, 1, 2083)?;
    let field = format!("{}.url", object.at);
    match reqwest::Url::parse(&text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url.to_string()),
        Ok(_) => {
            checks.push(field, "URL scheme should be 'http' or 'https'", "url_scheme");
            None
        }
        Err(error) => {
            checks.push(field, format!("Input should be a valid URL, {error}"), "url_parsing");
            None
        }
    }
}

fn read_auth_config(checks: &mut Checks, object: Object<'_>) -> Option<Value> {
    match object.fields.get("auth_config") {
        None | Some(Value::Null) => None,
        Some(value @ Value::Object(_)) => Some(value.clone()),
        Some(_) => {
            checks.push(format!("{}.auth_config", object.at), "Input should be a valid dictionary", "dict_type");
            None
        }
    }
}

/// The platform's cross-checks of `auth_config` against `auth_type`, when a config is sent.
fn check_auth(checks: &mut Checks, auth_type: &str, config: &Value) {
    let has = |key: &str| config.get(key).is_some_and(|v| !v.is_null());
    let field = "body.auth_config";
    match auth_type {
        "none" => checks.value_error(field, "auth_config must be null when auth_type is 'none'"),
        "bearer" if !has("token") => {
            checks.value_error(field, "auth_config must contain 'token' field for bearer authentication")
        }
        "apikey" if !(has("key") && has("header_name")) => checks
            .value_error(field, "auth_config must contain 'key' and 'header_name' fields for apikey authentication"),
        _ => {}
    }
}

fn read_retry(checks: &mut Checks, object: Object<'_>, base: RetryPolicy) -> RetryPolicy {
    let mut at = String::new();
    let Some(retry) = checks.object(object, "retry_config", &mut at) else { return base };
    let mut policy = base;
    if let Some(v) = checks.integer(retry, "max_retries", false, 0, 10) {
        policy.max_retries = v as u32;
    }
    if let Some(v) = checks.integer(retry, "initial_delay_ms", false, 100, i64::MAX) {
        policy.initial_delay_ms = v as u64;
    }
    if let Some(v) = checks.integer(retry, "max_delay_ms", false, 1000, i64::MAX) {
        policy.max_delay_ms = v as u64;
    }
    if let Some(v) = checks.number(retry, "backoff_multiplier", 1.0, f64::MAX) {
        policy.backoff_multiplier = v;
    }
    if policy.max_delay_ms < policy.initial_delay_ms {
        checks.value_error(
            format!("{}.max_delay_ms", retry.at),
            "max_delay_ms must be greater than or equal to initial_delay_ms",
        );
    }
    policy
}

pub async fn create(
    db: &DatabaseConnection,
    config: &crate::config::Config,
    request: AgentCreate,
) -> Result<AgentResponse, ServiceError> {
    // A row under these names would never be called: built-ins cannot be shadowed, and configured
    // agents win over the table (CONTRACT.md §5).
    if crate::config::BUILTIN_AGENTS.contains(&request.name.as_str()) {
        return Err(ServiceError::Rejected(format!("Agent name '{}' belongs to a built-in agent", request.name)));
    }
    if config.agents.contains_key(&request.name) {
        return Err(ServiceError::Rejected(format!(
            "Agent '{}' is defined in runvisor's configuration, which wins over the agents table",
            request.name
        )));
    }
    let taken = agent::Entity::find().filter(agent::Column::Name.eq(request.name.as_str())).one(db).await?;
    if taken.is_some() {
        return Err(ServiceError::Rejected(format!("Agent with name '{}' already exists", request.name)));
    }
    let at = now();
    let row = agent::ActiveModel {
        id: Set(Uuid::new_v4()),
        name: Set(request.name.clone()),
        url: Set(request.url.clone()),
        description: Set(request.description.clone()),
        auth_type: Set(Some(request.auth_type.to_string())),
        auth_config: Set(request.auth_config.clone()),
        timeout_ms: Set(request.timeout_ms as i32),
        retry_config: Set(Some(retry_json(&request.retry))),
        status: Set("active".into()),
        created_by: Set(None),
        updated_by: Set(None),
        created_at: Set(at),
        updated_at: Set(at),
    };
    let txn = db.begin().await?;
    let row = row.insert(&txn).await?;
    audit::record(&txn, EntityType::Agent, row.id, "create", Some(request.audit_changes())).await?;
    txn.commit().await?;
    Ok(row.into())
}

/// Applies a `PUT /agents/{id}` body: only the keys present are changed; an explicit null clears
/// a nullable column. Secrets sent back as `"***"` keep their stored value.
pub async fn update(db: &DatabaseConnection, id: Uuid, body: &Value) -> Result<AgentResponse, ServiceError> {
    let stored = find(db, id).await?;
    let mut checks = Checks::default();
    let Some(object) = checks.body(body) else { return Err(ServiceError::Invalid(checks.errors)) };
    let mut row = stored.clone().into_active_model();
    let present = |key: &str| object.fields.contains_key(key);
    if present("url")
        && let Some(url) = read_url(&mut checks, object, true)
    {
        row.url = Set(url);
    }
    if present("description") {
        row.description = Set(checks.string(object, "description", false, 0, usize::MAX));
    }
    if present("auth_type")
        && let Some(auth_type) = checks.one_of(object, "auth_type", &AUTH_TYPES, true)
    {
        row.auth_type = Set(Some(auth_type.into()));
    }
    if present("auth_config") {
        let config =
            read_auth_config(&mut checks, object).map(|sent| keep_masked_secrets(sent, stored.auth_config.as_ref()));
        row.auth_config = Set(config);
    }
    if present("timeout_ms")
        && let Some(timeout) = checks.integer(object, "timeout_ms", true, 1000, 300_000)
    {
        row.timeout_ms = Set(timeout as i32);
    }
    if present("retry_config") {
        if object.fields["retry_config"].is_null() {
            checks.push("body.retry_config", "Input should be a valid dictionary", "dict_type");
        } else {
            let merged = read_retry(&mut checks, object, retry_policy(stored.retry_config.as_ref()));
            row.retry_config = Set(Some(retry_json(&merged)));
        }
    }
    if present("status")
        && let Some(status) = checks.one_of(object, "status", &SETTABLE_STATUSES, false)
    {
        row.status = Set(status.into());
    }
    checks.done()?;
    row.updated_at = Set(now());
    let txn = db.begin().await?;
    let row = row.update(&txn).await?;
    let mut changes = body.clone();
    if let Some(config) = changes.get_mut("auth_config") {
        *config = mask(config.take());
    }
    audit::record(&txn, EntityType::Agent, id, "update", Some(changes)).await?;
    txn.commit().await?;
    Ok(row.into())
}

fn keep_masked_secrets(mut sent: Value, stored: Option<&Value>) -> Value {
    if let Value::Object(fields) = &mut sent {
        for key in SECRET_KEYS {
            if fields.get(key).and_then(Value::as_str) == Some(MASK)
                && let Some(secret) = stored.and_then(|s| s.get(key))
            {
                fields.insert(key.into(), secret.clone());
            }
        }
    }
    sent
}

/// Soft delete: the row stays (its name stays taken), with status `deleted`.
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> Result<MessageResponse, ServiceError> {
    find(db, id).await?;
    let txn = db.begin().await?;
    agent::Entity::update_many()
        .col_expr(agent::Column::Status, Expr::value("deleted"))
        .col_expr(agent::Column::UpdatedBy, Expr::value(super::SYSTEM_USER))
        .col_expr(agent::Column::UpdatedAt, Expr::value(now()))
        .filter(agent::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    audit::record(&txn, EntityType::Agent, id, "delete", None).await?;
    txn.commit().await?;
    Ok(MessageResponse::new(format!("Agent '{id}' deleted successfully")))
}

/// `GET /agents/{id}/health`: the agent's A2A card, fetched as the platform fetches it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AgentHealth {
    /// `healthy` or `unhealthy`.
    pub status: String,
    pub message: Option<String>,
    pub response_time_ms: Option<u64>,
    pub timestamp: String,
    #[schema(value_type = Option<Object>)]
    pub agent_card: Option<Value>,
}

pub async fn health(db: &DatabaseConnection, client: &reqwest::Client, id: Uuid) -> Result<AgentHealth, ServiceError> {
    let row = find(db, id).await?;
    let url = format!("{}/.well-known/agent-card.json", row.url.trim_end_matches('/'));
    let timeout = Duration::from_millis(row.timeout_ms.max(1) as u64);
    let mut request = client.get(&url).timeout(timeout).header("Content-Type", "application/json");
    // The credentials the executor would send, read from the row the way its registry reads it.
    if let Ok(agent) = crate::agents::registry::agent_from_row(&row) {
        let config: Map<String, Value> =
            agent.auth_config.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        if let Some((name, value)) = crate::agents::http::auth_header(agent.auth_type, &config) {
            request = request.header(name, value);
        }
    }
    let started = Instant::now();
    let result = request.send().await;
    let elapsed = started.elapsed().as_millis() as u64;
    let unhealthy = |message: String, time: Option<u64>| AgentHealth {
        status: "unhealthy".into(),
        message: Some(message),
        response_time_ms: time,
        timestamp: iso(&now()),
        agent_card: None,
    };
    let response = match result {
        Ok(response) => response,
        Err(error) if error.is_timeout() => {
            return Ok(unhealthy(format!("Request timeout after {}ms", row.timeout_ms), None));
        }
        Err(error) => return Ok(unhealthy(format!("Failed to connect to agent: {error}"), None)),
    };
    if response.status() != reqwest::StatusCode::OK {
        return Ok(unhealthy(format!("Agent returned status {}", response.status().as_u16()), Some(elapsed)));
    }
    match response.json::<Value>().await {
        Ok(card @ Value::Object(_)) => Ok(AgentHealth {
            status: "healthy".into(),
            message: Some(card.get("description").and_then(Value::as_str).unwrap_or("Agent is responding").to_string()),
            response_time_ms: Some(elapsed),
            timestamp: iso(&now()),
            agent_card: Some(card),
        }),
        Ok(other) => Ok(unhealthy(
            format!(
                "Invalid agent card response: expected a JSON object, found {}",
                crate::plan::expr::type_name(&other)
            ),
            Some(elapsed),
        )),
        Err(error) => Ok(unhealthy(format!("Invalid agent card response: {error}"), Some(elapsed))),
    }
}

/// Whether each agent name can be called: `Ok(())`, or the platform's reason it cannot.
pub async fn check_callable(
    db: &DatabaseConnection,
    config: &crate::config::Config,
    names: impl IntoIterator<Item = &str>,
) -> Result<Result<(), AgentProblem>, ServiceError> {
    for name in names {
        if crate::config::BUILTIN_AGENTS.contains(&name) || config.agents.contains_key(name) {
            continue;
        }
        match agent::Entity::find().filter(agent::Column::Name.eq(name)).one(db).await? {
            None => return Ok(Err(AgentProblem::NotFound(name.to_string()))),
            Some(row) if row.status != "active" => {
                return Ok(Err(AgentProblem::NotActive { name: name.to_string(), status: row.status }));
            }
            Some(_) => {}
        }
    }
    Ok(Ok(()))
}

/// Why a plan's agent cannot be called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentProblem {
    NotFound(String),
    NotActive { name: String, status: String },
}

impl std::fmt::Display for AgentProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(name) => write!(f, "Agent '{name}' not found"),
            Self::NotActive { name, status } => write!(f, "Agent '{name}' is not active (status: {status})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_body_is_checked_field_by_field() {
        let problems = match AgentCreate::parse(&json!({
            "name": "A", "url": "ftp://x", "auth_type": "Bearer", "auth_config": {"key": "k"},
            "timeout_ms": 10, "retry_config": {"initial_delay_ms": 5000, "max_delay_ms": 2000}
        })) {
            Err(ServiceError::Invalid(problems)) => problems,
            other => panic!("{other:?}"),
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["body.url", "body.auth_config", "body.timeout_ms", "body.retry_config.max_delay_ms"],
            "{problems:#?}"
        );
        let agent = AgentCreate::parse(&json!({"name": "A", "url": "http://x", "auth_type": "BEARER"})).unwrap();
        assert_eq!((agent.url.as_str(), agent.auth_type, agent.timeout_ms), ("http://x/", "bearer", 30_000));
    }

    #[test]
    fn secrets_are_masked_and_a_sent_mask_keeps_the_secret() {
        let stored = json!({"token": "s3cret"});
        assert_eq!(mask(stored.clone()), json!({"token": "***"}));
        assert_eq!(keep_masked_secrets(json!({"token": "***"}), Some(&stored)), stored);
        assert_eq!(keep_masked_secrets(json!({"token": "new"}), Some(&stored)), json!({"token": "new"}));
        let apikey = json!({"key": "k", "header_name": "X-Key"});
        assert_eq!(mask(apikey), json!({"key": "***", "header_name": "X-Key"}));
    }
}

/// How one agent's calls went over a recent window (the dashboard's Agents page).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentStats {
    pub agent_name: String,
    /// Attempts that ended in the window.
    pub attempts: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Attempts still running that started in the window.
    pub running: u64,
    /// Of the ended attempts, in milliseconds.
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
}

/// Per agent, the attempts that started since `since`: the newest `limit` rows at most, so a busy
/// window costs a bounded read (percentiles are computed here, the same on both databases).
/// Answers, too, whether the limit cut the window short.
pub async fn recent_stats(
    db: &DatabaseConnection,
    since: chrono::NaiveDateTime,
    limit: u64,
) -> Result<(Vec<AgentStats>, bool), ServiceError> {
    use entity::step_execution::{Column as C, Entity};
    use sea_orm::QuerySelect;
    let rows: Vec<(String, entity::StepStatus, chrono::NaiveDateTime, Option<chrono::NaiveDateTime>)> = Entity::find()
        .select_only()
        .columns([C::AgentName, C::Status, C::StartedAt, C::CompletedAt])
        .filter(C::StartedAt.gte(since))
        .order_by_desc(C::StartedAt)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    let cut = rows.len() as u64 >= limit;
    let mut by_agent: std::collections::BTreeMap<String, (AgentStats, Vec<i64>)> = Default::default();
    for (agent_name, status, started_at, completed_at) in rows {
        let (stats, durations) = by_agent
            .entry(agent_name.clone())
            .or_insert_with(|| (AgentStats { agent_name, ..Default::default() }, Vec::new()));
        match (status, completed_at) {
            (entity::StepStatus::Running, _) | (_, None) => stats.running += 1,
            (status, Some(end)) => {
                stats.attempts += 1;
                stats.failed += u64::from(status == entity::StepStatus::Failed);
                stats.cancelled += u64::from(status == entity::StepStatus::Cancelled);
                durations.push((end - started_at).num_milliseconds().max(0));
            }
        }
    }
    let stats = by_agent
        .into_values()
        .map(|(mut stats, mut durations)| {
            durations.sort_unstable();
            let at = |q: f64| durations.get(((durations.len() as f64 - 1.0) * q).round() as usize).copied();
            stats.p50_ms = at(0.5);
            stats.p95_ms = at(0.95);
            stats
        })
        .collect();
    Ok((stats, cut))
}
