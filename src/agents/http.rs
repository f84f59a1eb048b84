//! HTTP agents: `POST <url>` with JSON, in one of two protocols (CONTRACT.md §5).
//!
//! The classification of failures decides retries: connection errors, time-outs, 5xx, 408 and 429
//! may pass, so they are [`StepFailure::Retryable`]; anything the agent said on purpose (other 4xx,
//! a JSON-RPC error, a task that did not complete) or that cannot be read would fail again, so it is
//! [`StepFailure::Permanent`].

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use super::{CallContext, StepFailure};
use crate::config::{AgentProtocol, AuthType};

/// How much of an error body goes into a step's error message.
const BODY_EXCERPT: usize = 300;

#[derive(Debug)]
pub struct HttpAgent {
    pub name: String,
    pub url: String,
    pub protocol: AgentProtocol,
    pub timeout: Duration,
    /// The header carrying credentials, if any: (name, value).
    pub auth_header: Option<(String, String)>,
    pub client: reqwest::Client,
    /// `executor.max_agent_response_bytes`: a larger answer is dropped as it arrives, so one
    /// agent cannot take the executor's memory.
    pub max_response_bytes: usize,
}

/// The header an agent's `auth_type`/`auth_config` asks for.
pub fn auth_header(auth_type: AuthType, auth_config: &Map<String, Value>) -> Option<(String, String)> {
    let get = |key: &str| auth_config.get(key).and_then(Value::as_str).map(str::to_string);
    match auth_type {
        AuthType::None => None,
        AuthType::Bearer => get("token").map(|t| ("Authorization".to_string(), format!("Bearer {t}"))),
        AuthType::Apikey => get("key").map(|k| (get("header_name").unwrap_or_else(|| "X-API-Key".to_string()), k)),
    }
}

impl HttpAgent {
    pub async fn call(&self, input: &Value, ctx: &CallContext) -> Result<Value, StepFailure> {
        let task_id = ctx.correlation_id.clone();
        let body = match self.protocol {
            AgentProtocol::Jsonrpc => jsonrpc_request(&task_id, input),
            AgentProtocol::Simple => json!({"task_id": task_id, "input": input}),
        };
        let mut request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header("X-Correlation-ID", &ctx.correlation_id)
            .header("Idempotency-Key", &ctx.idempotency_key)
            .json(&body);
        if let Some((name, value)) = &self.auth_header {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let text = self.read_body(response).await?;
        if !status.is_success() {
            let message = format!("agent '{}' answered HTTP {}: {}", self.name, status.as_u16(), excerpt(&text));
            let retryable = status.is_server_error()
                || status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS;
            return Err(if retryable { StepFailure::Retryable(message) } else { StepFailure::Permanent(message) });
        }
        let reply: Value = serde_json::from_str(&text).map_err(|e| {
            StepFailure::Permanent(format!("agent '{}' sent a malformed response ({e}): {}", self.name, excerpt(&text)))
        })?;
        match self.protocol {
            AgentProtocol::Jsonrpc => jsonrpc_output(&self.name, &task_id, reply),
            AgentProtocol::Simple => simple_output(&self.name, reply),
        }
    }

    /// The body as text, read chunk by chunk up to `max_response_bytes`: an agent that answers
    /// more is cut off there (without buffering the rest), and one that stops mid-answer or never
    /// finishes fails like a lost connection or a time-out (the request's timeout covers the body).
    async fn read_body(&self, mut response: reqwest::Response) -> Result<String, StepFailure> {
        let limit = self.max_response_bytes;
        let too_large = || {
            StepFailure::Permanent(format!(
                "agent '{}' answered more than {limit} bytes (executor.max_agent_response_bytes); the answer was dropped",
                self.name
            ))
        };
        if response.content_length().is_some_and(|declared| declared > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(response.content_length().unwrap_or(0) as usize);
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport_error(e))? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|e| {
            StepFailure::Permanent(format!("agent '{}' sent a response that is not UTF-8 ({e})", self.name))
        })
    }

    fn transport_error(&self, error: reqwest::Error) -> StepFailure {
        if error.is_timeout() {
            StepFailure::Retryable(format!("agent '{}' timed out after {} ms", self.name, self.timeout.as_millis()))
        } else if error.is_body() || error.is_decode() {
            // The answer started and broke off (connection closed or reset mid-body): may pass.
            StepFailure::Retryable(format!("agent '{}' broke off its answer: {}", self.name, error_chain(&error)))
        } else {
            // Connection refused, reset, DNS: all may pass.
            StepFailure::Retryable(format!(
                "agent '{}' unreachable at {}: {}",
                self.name,
                self.url,
                error_chain(&error)
            ))
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The A2A `message/send` request. The text part is the input's `text` or `query` when it is a
/// string, else the whole input as JSON.
fn jsonrpc_request(task_id: &str, input: &Value) -> Value {
    let text = ["text", "query"]
        .iter()
        .find_map(|key| input.get(*key).and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| input.to_string());
    json!({
        "jsonrpc": "2.0",
        "id": task_id,
        "method": "message/send",
        "params": {"message": {
            "role": "user",
            "messageId": format!("msg-{task_id}"),
            "parts": [{"kind": "text", "text": text}],
        }},
    })
}

fn text_parts(parts: Option<&Value>) -> Vec<String> {
    parts
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter(|p| p.get("kind").and_then(Value::as_str).unwrap_or("text") == "text")
                .filter_map(|p| p.get("text").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The output of a completed A2A task: `result` plus `text`, `response`, `task_id`, `context_id`.
/// An answer to another request (an `id` that is not ours) is refused: it is not this call's result.
fn jsonrpc_output(agent: &str, request_id: &str, reply: Value) -> Result<Value, StepFailure> {
    if let Some(error) = reply.get("error").filter(|e| !e.is_null()) {
        let code = error.get("code").map(ToString::to_string).unwrap_or_else(|| "?".into());
        let message = error.get("message").and_then(Value::as_str).unwrap_or("no message");
        return Err(StepFailure::Permanent(format!("agent '{agent}' returned JSON-RPC error {code}: {message}")));
    }
    // A missing id is tolerated (agents written against the platform's executor, which never
    // looked); another one is not.
    let answered = reply.get("id").unwrap_or(&Value::Null);
    if !answered.is_null() && answered.as_str() != Some(request_id) {
        return Err(StepFailure::Permanent(format!(
            "agent '{agent}' answered JSON-RPC request id {answered}, not this call's \"{request_id}\"; the answer was dropped"
        )));
    }
    let Some(Value::Object(result)) = reply.get("result") else {
        return Err(StepFailure::Permanent(format!(
            "agent '{agent}' sent a JSON-RPC response without a result object"
        )));
    };
    let state = result.get("status").and_then(|s| s.get("state")).and_then(Value::as_str);
    if state != Some("completed") {
        let detail = result
            .get("status")
            .and_then(|s| s.get("message"))
            .map(|m| text_parts(m.get("parts")).join("\n"))
            .filter(|t| !t.is_empty())
            .map(|t| format!(": {t}"))
            .unwrap_or_default();
        return Err(StepFailure::Permanent(format!(
            "agent '{agent}' task ended in state '{}'{detail}",
            state.unwrap_or("unknown")
        )));
    }
    let text: Vec<String> = result
        .get("artifacts")
        .and_then(Value::as_array)
        .map(|artifacts| artifacts.iter().flat_map(|a| text_parts(a.get("parts"))).collect())
        .unwrap_or_default();
    let response = result
        .get("history")
        .and_then(Value::as_array)
        .and_then(|history| history.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("agent")))
        .map(|m| text_parts(m.get("parts")).join("\n"))
        .unwrap_or_default();
    let mut output = result.clone();
    output.insert("text".into(), Value::String(text.join("\n")));
    output.insert("response".into(), Value::String(response));
    output.insert("task_id".into(), result.get("id").cloned().unwrap_or(Value::Null));
    output.insert("context_id".into(), result.get("contextId").cloned().unwrap_or(Value::Null));
    Ok(Value::Object(output))
}

fn simple_output(agent: &str, reply: Value) -> Result<Value, StepFailure> {
    match reply.get("status").and_then(Value::as_str) {
        Some("success") => Ok(reply.get("output").cloned().unwrap_or(Value::Null)),
        Some("error") => {
            let error = reply.get("error").and_then(Value::as_str).unwrap_or("no error message");
            Err(StepFailure::Permanent(format!("agent '{agent}' reported an error: {error}")))
        }
        _ => Err(StepFailure::Permanent(format!(
            "agent '{agent}' sent a malformed response: 'status' must be \"success\" or \"error\": {}",
            excerpt(&reply.to_string())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonrpc_request_uses_text_or_query_else_the_whole_input() {
        let request = jsonrpc_request("t1", &json!({"query": "q", "x": 1}));
        assert_eq!(request["params"]["message"]["parts"][0]["text"], "q");
        assert_eq!(request["params"]["message"]["messageId"], "msg-t1");
        assert_eq!(request["id"], "t1");
        let request = jsonrpc_request("t1", &json!({"x": 1}));
        assert_eq!(request["params"]["message"]["parts"][0]["text"], "{\"x\":1}");
    }

    #[test]
    fn jsonrpc_output_adds_text_response_and_ids() {
        let reply = json!({"jsonrpc": "2.0", "id": "t1", "result": {
            "id": "task-9", "contextId": "ctx-1", "status": {"state": "completed"},
            "artifacts": [{"parts": [{"kind": "text", "text": "a"}, {"kind": "data", "data": {}}]}, {"parts": [{"kind": "text", "text": "b"}]}],
            "history": [
                {"role": "agent", "parts": [{"kind": "text", "text": "old"}]},
                {"role": "user", "parts": [{"kind": "text", "text": "hi"}]},
                {"role": "agent", "parts": [{"kind": "text", "text": "new"}]}
            ]
        }});
        let output = jsonrpc_output("A", "t1", reply).unwrap();
        assert_eq!(output["text"], "a\nb");
        assert_eq!(output["response"], "new");
        assert_eq!(output["task_id"], "task-9");
        assert_eq!(output["context_id"], "ctx-1");
        assert_eq!(output["status"]["state"], "completed");
    }

    #[test]
    fn jsonrpc_failures_are_permanent() {
        let error =
            jsonrpc_output("A", "t1", json!({"error": {"code": -32601, "message": "no such method"}})).unwrap_err();
        assert_eq!(error, StepFailure::Permanent("agent 'A' returned JSON-RPC error -32601: no such method".into()));
        let failed = jsonrpc_output(
            "A",
            "t1",
            json!({"result": {"status": {"state": "failed", "message": {"parts": [{"kind": "text", "text": "quota"}]}}}}),
        );
        assert_eq!(failed.unwrap_err(), StepFailure::Permanent("agent 'A' task ended in state 'failed': quota".into()));
        assert!(jsonrpc_output("A", "t1", json!({"result": 5})).is_err());
        let error = jsonrpc_output("A", "t1", reply_with_id(json!("t2"))).unwrap_err();
        assert_eq!(
            error,
            StepFailure::Permanent(
                "agent 'A' answered JSON-RPC request id \"t2\", not this call's \"t1\"; the answer was dropped".into()
            )
        );
        assert!(jsonrpc_output("A", "t1", reply_with_id(json!(1))).is_err(), "a number is another id too");
        assert!(jsonrpc_output("A", "t1", reply_with_id(Value::Null)).is_ok(), "a missing id is tolerated");
    }

    fn reply_with_id(id: Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "result": {"id": "task", "status": {"state": "completed"}}})
    }

    #[test]
    fn simple_protocol_outputs() {
        assert_eq!(simple_output("A", json!({"status": "success", "output": {"x": 1}})), Ok(json!({"x": 1})));
        assert_eq!(
            simple_output("A", json!({"status": "error", "error": "bad input"})),
            Err(StepFailure::Permanent("agent 'A' reported an error: bad input".into()))
        );
        assert!(simple_output("A", json!({"ok": true})).is_err());
    }

    #[test]
    fn auth_headers() {
        let config = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            auth_header(AuthType::Bearer, &config(json!({"token": "t"}))),
            Some(("Authorization".into(), "Bearer t".into()))
        );
        assert_eq!(auth_header(AuthType::Apikey, &config(json!({"key": "k"}))), Some(("X-API-Key".into(), "k".into())));
        assert_eq!(
            auth_header(AuthType::Apikey, &config(json!({"key": "k", "header_name": "X-Key"}))),
            Some(("X-Key".into(), "k".into()))
        );
        assert_eq!(auth_header(AuthType::None, &config(json!({"token": "t"}))), None);
    }
}
