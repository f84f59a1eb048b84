//! Input mapping: turning a step's `input_mapping` into the JSON object its agent receives.
//!
//! A string value is a [`Template`]; any other JSON value is passed as is, without looking inside
//! it (CONTRACT.md §3). Errors name the field and the expression, because "key not found" alone
//! does not tell a plan author which of twenty mappings to fix.

use serde_json::{Map, Value};

use super::expr::{Scope, Template, type_name};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("input field '{field}' ({expression}): {reason}")]
pub struct MappingError {
    pub field: String,
    /// The offending expression, or the whole value when it did not parse.
    pub expression: String,
    pub reason: String,
}

/// A step's `input_mapping`, parsed once, when its plan is validated.
///
/// Why parse ahead: a validated plan is cached and shared by every run of it (`plan::cache`), while
/// the mapping is rendered at every call; parsing its templates again each time was 3 % of the
/// runtime's instructions per call. A string that does not parse is kept with its error, which the
/// step reports when it runs, as before: a plan is not refused for it (the linter warns instead).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputMapping(Vec<(String, Mapped)>);

#[derive(Debug, Clone, PartialEq)]
enum Mapped {
    Template(Template),
    /// Any value but a string: passed as is.
    Value(Value),
    Unparsable {
        text: String,
        reason: String,
    },
}

impl InputMapping {
    pub fn parse(mapping: Map<String, Value>) -> InputMapping {
        let fields = mapping.into_iter().map(|(field, value)| {
            let mapped = match value {
                Value::String(text) => match Template::parse(&text) {
                    Ok(template) => Mapped::Template(template),
                    Err(e) => Mapped::Unparsable { reason: e.to_string(), text },
                },
                other => Mapped::Value(other),
            };
            (field, mapped)
        });
        InputMapping(fields.collect())
    }

    /// Resolves every field in `scope`.
    pub fn resolve(&self, scope: &dyn Scope) -> Result<Map<String, Value>, MappingError> {
        let resolve = |field: &str, mapped: &Mapped| match mapped {
            Mapped::Value(value) => Ok(value.clone()),
            Mapped::Template(template) => template.render(scope).map_err(|e| MappingError {
                field: field.to_string(),
                expression: e.expression,
                reason: e.error.to_string(),
            }),
            Mapped::Unparsable { text, reason } => {
                Err(MappingError { field: field.to_string(), expression: text.clone(), reason: reason.clone() })
            }
        };
        self.0.iter().map(|(field, mapped)| Ok((field.clone(), resolve(field, mapped)?))).collect()
    }
}

/// Resolves one value: templates are rendered, anything else is returned unchanged.
pub fn resolve_value(field: &str, value: &Value, scope: &dyn Scope) -> Result<Value, MappingError> {
    let Value::String(text) = value else { return Ok(value.clone()) };
    let template = Template::parse(text).map_err(|e| MappingError {
        field: field.to_string(),
        expression: text.clone(),
        reason: e.to_string(),
    })?;
    template.render(scope).map_err(|e| MappingError {
        field: field.to_string(),
        expression: e.expression,
        reason: e.error.to_string(),
    })
}

/// A loop's `collection`: an expression or a literal, which must come out as an array.
pub fn resolve_collection(collection: &Value, scope: &dyn Scope) -> Result<Vec<Value>, MappingError> {
    match resolve_value("collection", collection, scope)? {
        Value::Array(items) => Ok(items),
        other => Err(MappingError {
            field: "collection".into(),
            expression: collection.as_str().map_or_else(|| collection.to_string(), str::to_string),
            reason: format!("must resolve to an array, found {}", type_name(&other)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::expr::{Scope, StaticScope};
    use serde_json::json;

    fn resolve_input(mapping: Value, scope: &dyn Scope) -> Result<Map<String, Value>, MappingError> {
        let Value::Object(mapping) = mapping else { panic!("a mapping is an object") };
        InputMapping::parse(mapping).resolve(scope)
    }

    fn scope() -> StaticScope {
        StaticScope {
            input: json!({"topic": "rust", "items": [1, 2]}),
            outputs: [("step-1".to_string(), json!({"findings": "f"}))].into(),
            frame: None,
        }
    }

    #[test]
    fn strings_are_templates_other_values_pass_through() {
        let mapping = json!({
            "notes": "${step-1.output.findings}",
            "title": "About ${workflow.input.topic}",
            "literal": "plain",
            "nested": {"not": "${workflow.input.topic}"},
            "n": 5,
            "list": ["${x}"]
        });
        let resolved = resolve_input(mapping, &scope()).unwrap();
        assert_eq!(
            Value::Object(resolved),
            json!({
                "notes": "f",
                "title": "About rust",
                "literal": "plain",
                "nested": {"not": "${workflow.input.topic}"},
                "n": 5,
                "list": ["${x}"]
            })
        );
    }

    #[test]
    fn errors_name_the_field_and_the_expression() {
        let mapping = json!({"notes": "See ${step-2.output.findings}"});
        let err = resolve_input(mapping, &scope()).unwrap_err();
        assert_eq!(err.to_string(), "input field 'notes' (${step-2.output.findings}): step 'step-2' has not completed");
        let mapping = json!({"x": "${workflow.input"});
        let err = resolve_input(mapping, &scope()).unwrap_err();
        assert_eq!(err.to_string(), "input field 'x' (${workflow.input): '${' at position 0 has no closing '}'");
    }

    #[test]
    fn collections_must_be_arrays() {
        assert_eq!(resolve_collection(&json!("${workflow.input.items}"), &scope()), Ok(vec![json!(1), json!(2)]));
        assert_eq!(resolve_collection(&json!(["a"]), &scope()), Ok(vec![json!("a")]));
        let err = resolve_collection(&json!("${workflow.input.topic}"), &scope()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input field 'collection' (${workflow.input.topic}): must resolve to an array, found a string"
        );
    }
}
