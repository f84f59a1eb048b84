//! Field-by-field validation of request bodies and queries that reports every problem at once.
//!
//! Requests arrive as JSON values and are read field by field through a [`Checks`], which records
//! each problem with its location (`body.retry_config.max_retries`, `query.page_size`), a message
//! and a type in the words of the platform's validator (pydantic), because the platform's UI shows
//! those messages and clients may match on the types. Reading a whole body before giving up is what
//! lets a 422 list every field that is wrong, not just the first.

use serde_json::{Map, Value};

use crate::plan::expr::type_name;

/// One invalid field: the `errors[]` entries of a 422 answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Where: `body`, `body.<key>.<key>…`, `query.<name>` or `path.<name>`.
    pub field: String,
    pub message: String,
    /// pydantic's error type (`missing`, `string_too_short`, `value_error`, …).
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>, kind: &str) -> Self {
        Self { field: field.into(), message: message.into(), kind: kind.into() }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Collects the problems of one request.
#[derive(Debug, Default)]
pub struct Checks {
    pub errors: Vec<FieldError>,
}

/// A JSON object being read, with its location for messages.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    pub at: &'a str,
    pub fields: &'a Map<String, Value>,
}

impl Checks {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>, kind: &str) {
        self.errors.push(FieldError::new(field, message, kind));
    }

    /// A `Value error, …` at `field`, as a pydantic validator raising ValueError reports it.
    pub fn value_error(&mut self, field: impl Into<String>, message: impl std::fmt::Display) {
        self.push(field, format!("Value error, {message}"), "value_error");
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok` when nothing was found wrong, else every problem.
    pub fn done(self) -> Result<(), super::ServiceError> {
        if self.errors.is_empty() { Ok(()) } else { Err(super::ServiceError::Invalid(self.errors)) }
    }

    /// The request body as an object (a body that is not one is a single problem at `body`).
    pub fn body<'a>(&mut self, body: &'a Value) -> Option<Object<'a>> {
        match body {
            Value::Object(fields) => Some(Object { at: "body", fields }),
            _ => {
                self.push(
                    "body",
                    "Input should be a valid dictionary or object to extract fields from",
                    "model_attributes_type",
                );
                None
            }
        }
    }

    /// A nested object at `object.key`; absent or null gives `None` without a problem.
    pub fn object<'a>(&mut self, object: Object<'a>, key: &str, at: &'a mut String) -> Option<Object<'a>> {
        *at = format!("{}.{key}", object.at);
        match object.fields.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Object(fields)) => Some(Object { at: at.as_str(), fields }),
            Some(_) => {
                self.push(at.clone(), "Input should be a valid dictionary", "dict_type");
                None
            }
        }
    }

    /// A string field. `required` reports a missing one; `min`/`max` bound its length in characters.
    pub fn string(&mut self, object: Object<'_>, key: &str, required: bool, min: usize, max: usize) -> Option<String> {
        let field = format!("{}.{key}", object.at);
        match object.fields.get(key) {
            None if required => {
                self.push(field, "Field required", "missing");
                None
            }
            None => None,
            Some(Value::Null) if !required => None,
            Some(Value::String(text)) => {
                let length = text.chars().count();
                if length < min {
                    let unit = if min == 1 { "character" } else { "characters" };
                    self.push(field, format!("String should have at least {min} {unit}"), "string_too_short");
                    None
                } else if length > max {
                    let unit = if max == 1 { "character" } else { "characters" };
                    self.push(field, format!("String should have at most {max} {unit}"), "string_too_long");
                    None
                } else {
                    Some(text.clone())
                }
            }
            Some(_) => {
                self.push(field, "Input should be a valid string", "string_type");
                None
            }
        }
    }

    /// An integer field within `[min, max]`; `None` (absent) takes no problem unless `required`.
    pub fn integer(&mut self, object: Object<'_>, key: &str, required: bool, min: i64, max: i64) -> Option<i64> {
        let field = format!("{}.{key}", object.at);
        let value = match object.fields.get(key) {
            None if required => {
                self.push(field, "Field required", "missing");
                return None;
            }
            None => return None,
            Some(value) => value,
        };
        let number = match value {
            Value::Number(n) if n.is_i64() => n.as_i64(),
            Value::Number(n) => n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64),
            Value::String(s) => match s.trim().parse::<i64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.push(
                        field,
                        "Input should be a valid integer, unable to parse string as an integer",
                        "int_parsing",
                    );
                    return None;
                }
            },
            _ => None,
        };
        let Some(number) = number else {
            let (message, kind) = match value {
                Value::Number(_) => {
                    ("Input should be a valid integer, got a number with a fractional part", "int_from_float")
                }
                _ => ("Input should be a valid integer", "int_type"),
            };
            self.push(field, message, kind);
            return None;
        };
        self.bounds(&field, number as f64, min as f64, max as f64).then_some(number)
    }

    /// A number field within `[min, max]`.
    pub fn number(&mut self, object: Object<'_>, key: &str, min: f64, max: f64) -> Option<f64> {
        let field = format!("{}.{key}", object.at);
        let number = match object.fields.get(key)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        let Some(number) = number else {
            self.push(field, "Input should be a valid number", "float_type");
            return None;
        };
        if !number.is_finite() {
            self.push(field, "Input should be a finite number", "finite_number");
            return None;
        }
        self.bounds(&field, number, min, max).then_some(number)
    }

    fn bounds(&mut self, field: &str, value: f64, min: f64, max: f64) -> bool {
        if value < min {
            self.push(
                field,
                format!("Input should be greater than or equal to {}", trim_float(min)),
                "greater_than_equal",
            );
            false
        } else if value > max {
            self.push(field, format!("Input should be less than or equal to {}", trim_float(max)), "less_than_equal");
            false
        } else {
            true
        }
    }

    /// One of `allowed` (compared case-insensitively when `fold`), reported as a validator's
    /// ValueError the way the platform words it.
    pub fn one_of(
        &mut self,
        object: Object<'_>,
        key: &str,
        allowed: &[&'static str],
        fold: bool,
    ) -> Option<&'static str> {
        let field = format!("{}.{key}", object.at);
        match object.fields.get(key)? {
            Value::String(text) => {
                let wanted = if fold { text.to_lowercase() } else { text.clone() };
                let found = allowed.iter().copied().find(|a| *a == wanted);
                if found.is_none() {
                    self.value_error(field, format!("{key} must be one of: {}", allowed.join(", ")));
                }
                found
            }
            Value::Null => {
                self.push(field, "Input should be a valid string", "string_type");
                None
            }
            other => {
                self.push(field, format!("Input should be a valid string, found {}", type_name(other)), "string_type");
                None
            }
        }
    }
}

impl Checks {
    /// An ISO 8601 date-time: naive (taken as UTC, as the platform stores them), with an offset
    /// (converted to UTC), or a date alone (midnight).
    pub fn datetime(&mut self, object: Object<'_>, key: &str) -> Option<chrono::NaiveDateTime> {
        let text = match object.fields.get(key)? {
            Value::String(text) => text.trim().to_string(),
            _ => {
                self.push(format!("{}.{key}", object.at), "Input should be a valid datetime", "datetime_type");
                return None;
            }
        };
        let parsed = chrono::DateTime::parse_from_rfc3339(&text)
            .map(|at| at.naive_utc())
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f"))
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f"))
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M"))
            .or_else(|_| {
                chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d").map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
            });
        match parsed {
            Ok(at) => Some(at),
            Err(error) => {
                self.push(
                    format!("{}.{key}", object.at),
                    format!("Input should be a valid datetime, {error}"),
                    "datetime_parsing",
                );
                None
            }
        }
    }
}

/// `1.0` as pydantic prints a float bound: `1`.
fn trim_float(value: f64) -> String {
    if value.fract() == 0.0 { format!("{}", value as i64) } else { value.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let body =
            json!({"name": "", "timeout_ms": "x", "retry_config": {"max_retries": 11, "backoff_multiplier": 0.5}});
        let mut checks = Checks::default();
        let object = checks.body(&body).unwrap();
        assert_eq!(checks.string(object, "name", true, 1, 255), None);
        assert_eq!(checks.string(object, "url", true, 1, 2048), None);
        assert_eq!(checks.integer(object, "timeout_ms", false, 1000, 300_000), None);
        let mut at = String::new();
        let retry = checks.object(object, "retry_config", &mut at).unwrap();
        assert_eq!(checks.integer(retry, "max_retries", false, 0, 10), None);
        assert_eq!(checks.number(retry, "backoff_multiplier", 1.0, f64::MAX), None);
        let found: Vec<(&str, &str)> = checks.errors.iter().map(|e| (e.field.as_str(), e.message.as_str())).collect();
        assert_eq!(
            found,
            [
                ("body.name", "String should have at least 1 character"),
                ("body.url", "Field required"),
                ("body.timeout_ms", "Input should be a valid integer, unable to parse string as an integer"),
                ("body.retry_config.max_retries", "Input should be less than or equal to 10"),
                ("body.retry_config.backoff_multiplier", "Input should be greater than or equal to 1"),
            ]
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_one_problem() {
        let mut checks = Checks::default();
        assert!(checks.body(&json!([1])).is_none());
        assert_eq!(checks.errors[0].field, "body");
        assert_eq!(checks.errors[0].kind, "model_attributes_type");
    }
}
