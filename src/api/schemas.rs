//! Request bodies as the OpenAPI document describes them.
//!
//! Handlers read bodies field by field ([`crate::service::check`]) so that a 422 can list every
//! problem; these types only tell clients what to send. Their constraints are the ones the checks
//! enforce.

#![allow(dead_code)]

use serde_json::Value;
use utoipa::ToSchema;

/// `POST /agents`.
#[derive(Debug, ToSchema)]
pub struct AgentCreateBody {
    #[schema(min_length = 1, max_length = 255)]
    name: String,
    /// An http(s) URL; normalised (`http://x` → `http://x/`).
    url: String,
    description: Option<String>,
    /// `none`, `bearer` or `apikey` (any case; stored lower-case).
    #[schema(default = "none")]
    auth_type: Option<String>,
    /// `{"token"}` for bearer, `{"key", "header_name"}` for apikey; null for none.
    #[schema(value_type = Option<Object>)]
    auth_config: Option<Value>,
    #[schema(minimum = 1000, maximum = 300000, default = 30000)]
    timeout_ms: Option<i64>,
    retry_config: Option<RetryConfigBody>,
}

/// `PUT /agents/{id}`: only the keys sent are changed; `"***"` for a secret keeps the stored one.
#[derive(Debug, ToSchema)]
pub struct AgentUpdateBody {
    url: Option<String>,
    description: Option<String>,
    auth_type: Option<String>,
    #[schema(value_type = Option<Object>)]
    auth_config: Option<Value>,
    #[schema(minimum = 1000, maximum = 300000)]
    timeout_ms: Option<i64>,
    /// Merged into the stored policy.
    retry_config: Option<RetryConfigBody>,
    /// `active` or `inactive`.
    status: Option<String>,
}

/// An agent's retry policy (CONTRACT.md §5).
#[derive(Debug, ToSchema)]
pub struct RetryConfigBody {
    /// Total attempts.
    #[schema(minimum = 0, maximum = 10, default = 3)]
    max_retries: Option<i64>,
    #[schema(minimum = 100, default = 1000)]
    initial_delay_ms: Option<i64>,
    /// At least `initial_delay_ms`.
    #[schema(minimum = 1000, default = 30000)]
    max_delay_ms: Option<i64>,
    #[schema(minimum = 1.0, default = 2.0)]
    backoff_multiplier: Option<f64>,
}

/// `POST /workflows`: a plan in the format of CONTRACT.md §3.
#[derive(Debug, ToSchema)]
pub struct WorkflowCreateBody {
    #[schema(min_length = 1, max_length = 255)]
    name: String,
    description: Option<String>,
    start_step: String,
    /// Step id → step (`id`, `type`, `agent_name`, `input_mapping`, `next_step`, `parallel_steps`,
    /// `condition`, `if_true_step`, `if_false_step`, `loop_config`, `fork_join_config`, …).
    #[schema(value_type = Object)]
    steps: Value,
}

/// `PUT /workflows/{id}`: a new `start_step` or `steps` bumps the version and keeps the old one.
#[derive(Debug, ToSchema)]
pub struct WorkflowUpdateBody {
    description: Option<String>,
    start_step: Option<String>,
    #[schema(value_type = Option<Object>)]
    steps: Option<Value>,
    /// `active` or `inactive`.
    status: Option<String>,
}

/// `POST /workflows/{id}/execute`.
#[derive(Debug, ToSchema)]
pub struct ExecuteBody {
    /// The run's input, as `${workflow.input…}` reads it.
    #[schema(value_type = Object)]
    input_data: Value,
}

/// `POST /runs/{id}/cancel` (the body is optional).
#[derive(Debug, ToSchema)]
pub struct CancelBody {
    #[schema(max_length = 500)]
    reason: Option<String>,
}

/// `POST /runs/{id}/retry` (the body is optional).
#[derive(Debug, ToSchema)]
pub struct RetryBody {
    /// Accepted and ignored, as on the platform: a retried run resumes from its recorded steps.
    resume_from_step: Option<String>,
}
