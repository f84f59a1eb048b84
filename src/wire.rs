//! The messages on runvisor's topics (CONTRACT.md §1, §2, §6).
//!
//! [`decode_request`] sorts raw bytes into three outcomes, because each is handled differently:
//! - a [`Request`] to execute or cancel a run;
//! - a [`Request::Rejected`]: it names a run but cannot be executed (no plan, input that is not an
//!   object, …), so that run ends FAILED with the reason;
//! - a [`DecodeError`]: no usable run_id at all, so the message goes to the dead-letter topic.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::plan::expr::type_name;

/// The longest run_id the `workflow_runs.run_id` column holds.
pub const MAX_RUN_ID_LEN: usize = 255;

pub const EXECUTION_REQUEST: &str = "execution_request";
pub const CANCELLATION_REQUEST: &str = "cancellation_request";

/// Why a message cannot be tied to a run; such messages go to the DLQ with this as `error` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds kafka.max_message_bytes ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("message is not valid UTF-8 JSON: {0}")]
    NotJson(String),
    #[error("message must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("message has no run_id")]
    MissingRunId,
    #[error("run_id {0}")]
    BadRunId(String),
}

/// Where an execution request's plan comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanSource {
    /// `workflow_plan`, as given (validated later, so that a bad plan fails its run with reasons).
    /// Shared, not copied, by everything that holds the request while the run lasts.
    Inline(std::sync::Arc<Value>),
    /// `workflow_definition_id`: a row of `workflow_definitions`.
    Definition(Uuid),
    /// The request names a run but cannot be executed; the run ends FAILED with this reason.
    Unusable(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRequest {
    pub run_id: String,
    pub plan: PlanSource,
    /// Set alongside an inline plan when the producer sent both.
    pub workflow_definition_id: Option<Uuid>,
    pub input_data: Map<String, Value>,
    pub triggered_by: Option<String>,
    pub timestamp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationRequest {
    pub run_id: String,
    #[serde(default)]
    pub cancelled_by: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

impl CancellationRequest {
    /// The run's error message once cancelled.
    pub fn error_message(&self) -> String {
        format!("Cancelled: {}", self.reason.as_deref().unwrap_or("no reason given"))
    }

    /// `timestamp`, read as naive UTC (the platform's format); `None` when absent or unreadable.
    pub fn requested_at(&self) -> Option<chrono::NaiveDateTime> {
        let text = self.timestamp.as_deref()?;
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
            .ok()
            .or_else(|| chrono::DateTime::parse_from_rfc3339(text).ok().map(|at| at.naive_utc()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Execute(Box<ExecutionRequest>),
    Cancel(CancellationRequest),
    /// Names a run, but cannot be executed; the run ends FAILED with `reason`.
    Rejected {
        run_id: String,
        reason: String,
    },
}

impl Request {
    pub fn run_id(&self) -> &str {
        match self {
            Request::Execute(r) => &r.run_id,
            Request::Cancel(c) => &c.run_id,
            Request::Rejected { run_id, .. } => run_id,
        }
    }
}

/// Plan documents already decoded, by their JSON text.
///
/// Why: the requests of one workflow carry the same `workflow_plan` text, and decoding it into a
/// `Value` (an allocation per node) was the largest part of taking a request in. A request whose
/// plan text was seen before shares that document (`Arc`) instead: nothing is parsed or copied,
/// the runs in flight hold one plan between them, and the validated-plan cache
/// (`plan::cache`) finds it by address without hashing it again. Texts are compared in full on a
/// hit, so a hash collision cannot swap plans. Documents are kept whether or not their plans turn
/// out valid (that is decided later, per run); the bounds below hold either way.
#[derive(Default)]
pub struct PlanTexts {
    entries: std::collections::HashMap<u64, (Box<str>, std::sync::Arc<Value>)>,
    text_bytes: usize,
    hasher: foldhash::fast::RandomState,
}

impl std::fmt::Debug for PlanTexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanTexts").field("plans", &self.entries.len()).finish_non_exhaustive()
    }
}

impl PlanTexts {
    /// Plans kept at most, and the most text kept; when either would be exceeded the map starts
    /// over (the workflows in use come back at once), so a stream of one-off plans costs bounded
    /// memory. The bound is on text: a decoded document can be several times its text (32 bytes
    /// per JSON value), so it is kept at 4 MiB.
    const MAX_PLANS: usize = 256;
    const MAX_TEXT_BYTES: usize = 4 << 20;

    fn key(&self, text: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(text)
    }

    /// The document decoded before from exactly `text`.
    fn get(&self, text: &serde_json::value::RawValue) -> Option<std::sync::Arc<Value>> {
        let text = text.get();
        let (kept, document) = self.entries.get(&self.key(text))?;
        (**kept == *text).then(|| std::sync::Arc::clone(document))
    }

    /// Keeps `document`, decoded from `text`, for the requests that carry the same text.
    fn keep(&mut self, text: &serde_json::value::RawValue, document: Value) -> std::sync::Arc<Value> {
        let (text, document) = (text.get(), std::sync::Arc::new(document));
        if text.len() > Self::MAX_TEXT_BYTES {
            return document;
        }
        if self.entries.len() >= Self::MAX_PLANS || self.text_bytes + text.len() > Self::MAX_TEXT_BYTES {
            self.entries.clear();
            self.text_bytes = 0;
        }
        self.text_bytes += text.len();
        let key = self.key(text);
        if let Some((replaced, _)) = self.entries.insert(key, (text.into(), std::sync::Arc::clone(&document))) {
            self.text_bytes -= replaced.len();
        }
        document
    }
}

/// A request's top level as the fast path reads it: every field but `workflow_plan` decoded by the
/// same deserializer, with the same limits and error positions, as a whole-message decode; the
/// plan left as text. A repeated plan (which only a whole decode treats exactly as before) or
/// serde_json's raw-value marker as a key fails it, sending the message down the whole decode.
struct TopLevel<'a> {
    fields: Map<String, Value>,
    plan: Option<&'a serde_json::value::RawValue>,
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = TopLevel<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TopLevel<'de>, A::Error> {
                use serde::de::Error;
                let mut top = TopLevel { fields: Map::new(), plan: None };
                while let Some(key) = map.next_key::<String>()? {
                    if key == "workflow_plan" {
                        if top.plan.replace(map.next_value()?).is_some() {
                            return Err(A::Error::custom("workflow_plan is repeated"));
                        }
                    } else if key == "$serde_json::private::RawValue" {
                        return Err(A::Error::custom("a raw-value marker"));
                    } else {
                        let value = map.next_value()?;
                        top.fields.insert(key, value);
                    }
                }
                Ok(top)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// Decodes a message from the requests or cancellation topic; an inline plan seen before in
/// `plans` is shared, not decoded again.
///
/// Why the outcome is always the whole decode's: a plan text is kept only after a whole message
/// carrying it decoded, and a plan always sits directly under the top level, so the same text
/// decodes again at the same depth; the other fields are decoded as a whole decode would. Every
/// other case (a new plan text, any error) takes the whole decode, as before.
pub fn decode_request(bytes: &[u8], max_bytes: usize, plans: &mut PlanTexts) -> Result<Request, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), max: max_bytes });
    }
    let fast = serde_json::from_slice::<TopLevel>(bytes);
    let (mut fields, plan) = match fast {
        Ok(TopLevel { fields, plan: None }) => (fields, None),
        Ok(TopLevel { fields, plan: Some(text) }) if let Some(document) = plans.get(text) => (fields, Some(document)),
        fast => {
            let value: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;
            let Value::Object(mut fields) = value else { return Err(DecodeError::NotAnObject(type_name(&value))) };
            let plan = match (fields.remove("workflow_plan"), fast) {
                (Some(plan), Ok(TopLevel { plan: Some(text), .. })) if !plan.is_null() => Some(plans.keep(text, plan)),
                (plan, _) => plan.map(std::sync::Arc::new),
            };
            (fields, plan)
        }
    };
    let plan = plan.filter(|plan| !plan.is_null());
    let run_id = match fields.get("run_id") {
        None | Some(Value::Null) => return Err(DecodeError::MissingRunId),
        Some(Value::String(id)) if id.trim().is_empty() => return Err(DecodeError::BadRunId("is empty".into())),
        Some(Value::String(id)) if id.chars().count() > MAX_RUN_ID_LEN => {
            return Err(DecodeError::BadRunId(format!("is longer than {MAX_RUN_ID_LEN} characters")));
        }
        Some(Value::String(id)) => id.clone(),
        Some(other) => return Err(DecodeError::BadRunId(format!("must be a string, found {}", type_name(other)))),
    };
    let text = |fields: &Map<String, Value>, key: &str| fields.get(key).and_then(Value::as_str).map(str::to_string);
    let has_plan = plan.is_some() || fields.get("workflow_definition_id").is_some_and(|p| !p.is_null());
    let message_type = text(&fields, "message_type");
    let is_cancel = message_type.as_deref() == Some(CANCELLATION_REQUEST)
        || (!has_plan && (fields.contains_key("cancelled_by") || fields.contains_key("reason")));
    if is_cancel {
        return Ok(Request::Cancel(CancellationRequest {
            run_id,
            cancelled_by: text(&fields, "cancelled_by"),
            reason: text(&fields, "reason"),
            timestamp: text(&fields, "timestamp"),
        }));
    }

    let rejected = |reason: String| Ok(Request::Rejected { run_id: run_id.clone(), reason });
    let definition_id = match fields.get("workflow_definition_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => match Uuid::parse_str(id) {
            Ok(uuid) => Some(uuid),
            Err(_) => return rejected(format!("workflow_definition_id '{id}' is not a UUID")),
        },
        Some(other) => return rejected(format!("workflow_definition_id must be a string, found {}", type_name(other))),
    };
    let plan = match (plan, definition_id) {
        (Some(document), _) => PlanSource::Inline(document),
        (_, Some(id)) => PlanSource::Definition(id),
        _ => return rejected("the request has neither workflow_plan nor workflow_definition_id".into()),
    };
    let input_data = match fields.remove("input_data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(input)) => input,
        Some(other) => return rejected(format!("input_data must be a JSON object, found {}", type_name(&other))),
    };
    Ok(Request::Execute(Box::new(ExecutionRequest {
        run_id,
        plan,
        workflow_definition_id: definition_id,
        input_data,
        triggered_by: text(&fields, "triggered_by"),
        timestamp: text(&fields, "timestamp"),
    })))
}

/// An execution request as producers write it (`runvisor submit`, the API, tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionRequestMessage {
    pub run_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_plan: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow_definition_id: Option<String>,
    pub input_data: Value,
    pub timestamp: String,
    pub message_type: String,
}

impl ExecutionRequestMessage {
    pub fn inline(run_id: impl Into<String>, plan: Value, input: Value) -> Self {
        Self {
            run_id: run_id.into(),
            workflow_plan: Some(plan),
            workflow_definition_id: None,
            input_data: input,
            timestamp: timestamp_now(),
            message_type: EXECUTION_REQUEST.into(),
        }
    }
}

/// A cancellation request as producers write it (the API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancellationMessage {
    pub run_id: String,
    pub cancelled_by: Option<String>,
    pub reason: Option<String>,
    pub timestamp: String,
    pub message_type: String,
}

impl From<CancellationRequest> for CancellationMessage {
    fn from(request: CancellationRequest) -> Self {
        Self {
            run_id: request.run_id,
            cancelled_by: request.cancelled_by,
            reason: request.reason,
            timestamp: request.timestamp.unwrap_or_else(timestamp_now),
            message_type: CANCELLATION_REQUEST.into(),
        }
    }
}

/// A monitoring update (CONTRACT.md §6), published for every attempt and run transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitoringUpdate {
    pub run_id: String,
    /// `"workflow"` for updates about the run itself.
    pub step_id: String,
    /// The agent's name, or the plan's name for run updates.
    pub step_name: String,
    pub status: String,
    pub timestamp: String,
    /// `{step_execution_id, attempt, error?}` for attempts.
    pub metadata: Value,
}

/// The step_id of monitoring updates about a whole run.
pub const RUN_STEP_ID: &str = "workflow";

/// Now, in the format the platform writes: naive ISO 8601 in UTC with microseconds.
pub fn timestamp_now() -> String {
    chrono::Utc::now().naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(value: Value) -> Result<Request, DecodeError> {
        decode_request(value.to_string().as_bytes(), 1 << 20, &mut PlanTexts::default())
    }

    #[test]
    fn execution_requests() {
        let request = decode(json!({
            "run_id": "r1", "workflow_plan": {"name": "p"}, "input_data": {"topic": "rust"},
            "timestamp": "2026-11-27T12:00:00.123456", "message_type": "execution_request", "extra": 1
        }))
        .unwrap();
        let Request::Execute(request) = request else { panic!("{request:?}") };
        assert_eq!(request.run_id, "r1");
        assert_eq!(request.plan, PlanSource::Inline(json!({"name": "p"}).into()));
        assert_eq!(Value::Object(request.input_data), json!({"topic": "rust"}));

        let id = Uuid::new_v4();
        let Request::Execute(request) =
            decode(json!({"run_id": "r2", "workflow_definition_id": id.to_string()})).unwrap()
        else {
            panic!()
        };
        assert_eq!(request.plan, PlanSource::Definition(id));
        assert!(request.input_data.is_empty());
    }

    #[test]
    fn cancellations_even_on_the_requests_topic() {
        let cancel = decode(json!({"run_id": "r1", "message_type": "cancellation_request", "reason": "user"})).unwrap();
        assert_eq!(
            cancel,
            Request::Cancel(CancellationRequest {
                run_id: "r1".into(),
                cancelled_by: None,
                reason: Some("user".into()),
                timestamp: None
            })
        );
        let Request::Cancel(cancel) = decode(json!({"run_id": "r1", "cancelled_by": "ops"})).unwrap() else { panic!() };
        assert_eq!(cancel.cancelled_by.as_deref(), Some("ops"));
        assert_eq!(cancel.error_message(), "Cancelled: no reason given");
    }

    #[test]
    fn undecodable_messages_are_for_the_dlq() {
        assert_eq!(
            decode_request(b"\xff\xfe", 100, &mut PlanTexts::default()),
            Err(DecodeError::NotJson("expected value at line 1 column 1".into()))
        );
        assert_eq!(decode(json!([1])), Err(DecodeError::NotAnObject("an array")));
        assert_eq!(decode(json!({"workflow_plan": {}})), Err(DecodeError::MissingRunId));
        assert_eq!(decode(json!({"run_id": ""})), Err(DecodeError::BadRunId("is empty".into())));
        assert_eq!(decode(json!({"run_id": 7})), Err(DecodeError::BadRunId("must be a string, found a number".into())));
        assert!(matches!(decode(json!({"run_id": "x".repeat(256)})), Err(DecodeError::BadRunId(_))));
        assert_eq!(
            decode_request(&[b' '; 101], 100, &mut PlanTexts::default()),
            Err(DecodeError::TooLarge { size: 101, max: 100 })
        );
    }

    #[test]
    fn requests_that_name_a_run_but_cannot_run_fail_it() {
        let reason = |v: Value| match decode(v).unwrap() {
            Request::Rejected { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(json!({"run_id": "r"})), "the request has neither workflow_plan nor workflow_definition_id");
        assert_eq!(
            reason(json!({"run_id": "r", "workflow_plan": {}, "input_data": [1]})),
            "input_data must be a JSON object, found an array"
        );
        assert_eq!(
            reason(json!({"run_id": "r", "workflow_definition_id": "nope"})),
            "workflow_definition_id 'nope' is not a UUID"
        );
    }

    #[test]
    fn requests_with_the_same_plan_text_share_one_document() {
        let mut plans = PlanTexts::default();
        let mut plan_of = |text: &str| {
            let bytes = format!(r#"{{"run_id": "r", "workflow_plan": {text}, "input_data": {{"a": 1}}}}"#);
            match decode_request(bytes.as_bytes(), 1 << 20, &mut plans).unwrap() {
                Request::Execute(request) => match request.plan {
                    PlanSource::Inline(document) => document,
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        };
        let first = plan_of(r#"{"name": "p", "steps": {"a": {"id": "a"}}}"#);
        let again = plan_of(r#"{"name": "p", "steps": {"a": {"id": "a"}}}"#);
        assert!(std::sync::Arc::ptr_eq(&first, &again));
        assert_eq!(*first, json!({"name": "p", "steps": {"a": {"id": "a"}}}));
        // Other text is decoded on its own, even when it means the same document.
        let spaced = plan_of(r#"{ "name": "p", "steps": {"a": {"id": "a"}} }"#);
        assert!(!std::sync::Arc::ptr_eq(&first, &spaced));
        assert_eq!(spaced, first);
        let other = plan_of(r#"{"name": "q"}"#);
        assert_eq!(*other, json!({"name": "q"}));
        // A stream of distinct plans keeps a bounded number of them.
        for i in 0..PlanTexts::MAX_PLANS + 10 {
            assert_eq!(*plan_of(&format!(r#"{{"name": "p{i}"}}"#)), json!({"name": format!("p{i}")}));
        }
        assert!(plans.entries.len() <= PlanTexts::MAX_PLANS);
        // A null plan is no plan.
        let bytes = br#"{"run_id": "r", "workflow_plan": null}"#;
        assert!(matches!(decode_request(bytes, 1 << 20, &mut plans).unwrap(), Request::Rejected { .. }));
    }

    #[test]
    fn a_known_plan_text_changes_no_outcome() {
        let mut plans = PlanTexts::default();
        let whole_error =
            |bytes: &[u8]| DecodeError::NotJson(serde_json::from_slice::<Value>(bytes).unwrap_err().to_string());
        let plan = r#"{"name": "p"}"#;
        let known = format!(r#"{{"run_id": "r", "workflow_plan": {plan}}}"#);
        assert!(matches!(decode_request(known.as_bytes(), 1 << 20, &mut plans), Ok(Request::Execute(_))));
        let text = serde_json::value::RawValue::from_string(plan.into()).unwrap();
        assert!(plans.get(&text).is_some(), "the plan's text is known now");
        let deep = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        for bytes in [
            // Errors anywhere in a message whose plan text is known are the whole decode's.
            format!(r#"{{"run_id": "r", "workflow_plan": {plan}, "input_data": {{"x": 1e400}}}}"#),
            format!(r#"{{"run_id": "r", "workflow_plan": {plan}, "triggered_by": "\udc00"}}"#),
            format!(r#"{{"run_id": "r", "workflow_plan": {plan}, "input_data": {}}}"#, deep(127)),
            format!(r#"{{"run_id": "r", "workflow_plan": 1e400, "workflow_plan": {plan}}}"#),
            r#"{"run_id": "r", "message_type": "cancellation_request", "workflow_plan": 1e400}"#.to_string(),
            format!(r#"{{"run_id": "r", "workflow_plan": {}}}"#, deep(127)),
            r#"{"run_id": "r", "workflow_definition_id": "nope", "workflow_plan": "\udc00"}"#.to_string(),
            format!(r#"{{"run_id": "r", "workflow_plan": {plan}}} x"#),
        ] {
            let expected = whole_error(bytes.as_bytes());
            assert_eq!(decode_request(bytes.as_bytes(), 1 << 20, &mut plans), Err(expected), "{bytes}");
        }
        // What decodes, decodes alike whether its plan's text is known or not.
        for bytes in [
            format!(r#"{{"run_id": "r", "workflow_plan": {plan}, "workflow_plan": {plan}}}"#),
            format!(r#"{{"run_id": "r", "workflow\u005fplan": {plan}, "input_data": {{"a": {}}}}}"#, deep(125)),
            format!(r#"{{"run_id": "x", "run_id": "r", "workflow_plan": {plan}, "reason": "why"}}"#),
            format!(r#"{{"run_id": "r", "workflow_plan": null, "workflow_definition_id": "{}"}}"#, Uuid::nil()),
        ] {
            let cold = decode_request(bytes.as_bytes(), 1 << 20, &mut PlanTexts::default());
            assert!(cold.is_ok(), "{bytes}: {cold:?}");
            assert_eq!(decode_request(bytes.as_bytes(), 1 << 20, &mut plans), cold, "{bytes}");
        }
    }

    #[test]
    fn produced_requests_decode() {
        let message = ExecutionRequestMessage::inline("r9", json!({"name": "p"}), json!({"a": 1}));
        let bytes = serde_json::to_vec(&message).unwrap();
        let Request::Execute(request) = decode_request(&bytes, 1 << 20, &mut PlanTexts::default()).unwrap() else {
            panic!()
        };
        assert_eq!(request.run_id, "r9");
        assert_eq!(request.timestamp.as_deref(), Some(message.timestamp.as_str()));
    }
}
