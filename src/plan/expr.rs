//! The `${…}` expression language of plans (CONTRACT.md §3).
//!
//! A string value in a plan is a [`Template`]: plain text, exactly one `${…}` (which keeps the JSON
//! type of what it refers to), or text with `${…}` inside (which becomes a string). An expression
//! names a root and an optional path:
//!
//! | expression | refers to |
//! |---|---|
//! | `${workflow.input[.path]}` | the run's `input_data` |
//! | `${<step-id>.output[.path]}` | the output of a completed step |
//! | `${loop.item[.path]}`, `${loop.index}`, `${loop.total}`, `${loop.is_first}`, `${loop.is_last}` | the current loop iteration |
//!
//! A path is dot-separated keys, each optionally followed by indices: `items[0]`, `a.b[2][1]`.
//! Templates are parsed once and resolved against a [`Scope`] as often as needed.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

/// One step of a path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

impl fmt::Display for PathSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(key) => write!(f, ".{key}"),
            Self::Index(index) => write!(f, "[{index}]"),
        }
    }
}

/// What an expression starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    WorkflowInput,
    StepOutput(String),
    LoopItem,
    LoopIndex,
    LoopTotal,
    LoopIsFirst,
    LoopIsLast,
}

/// A parsed `${…}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    /// The text between `${` and `}`, for error messages.
    source: String,
    root: Root,
    path: Vec<PathSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    #[error("'${{' at position {0} has no closing '}}'")]
    Unterminated(usize),
    #[error("empty expression '${{}}'")]
    Empty,
    #[error(
        "'{0}' is not a known reference (expected workflow.input, <step-id>.output, loop.item, \
         loop.index, loop.total, loop.is_first or loop.is_last)"
    )]
    UnknownRoot(String),
    #[error("bad path in '{expression}': {reason}")]
    BadPath { expression: String, reason: String },
}

/// Why an expression could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("step '{0}' has not completed")]
    StepNotCompleted(String),
    #[error("key '{key}' not found in {at}")]
    MissingKey { key: String, at: String },
    #[error("index {index} is out of range in {at} (length {len})")]
    IndexOutOfRange { index: usize, len: usize, at: String },
    #[error("{at} is {found}, not {wanted}")]
    WrongType { at: String, found: &'static str, wanted: &'static str },
    #[error("loop variables are only defined inside a loop body")]
    NotInLoop,
}

/// The current iteration of a loop, as loop body steps see it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopFrame {
    pub item: Value,
    pub index: usize,
    pub total: usize,
}

/// What expressions are resolved against. Implemented by the run's state; tests use
/// [`StaticScope`].
pub trait Scope {
    fn workflow_input(&self) -> &Value;
    /// The output of a step that has completed, or `None`.
    fn step_output(&self, step_id: &str) -> Option<&Value>;
    fn loop_frame(&self) -> Option<&LoopFrame>;
}

/// A scope made of plain values.
#[derive(Debug, Clone, Default)]
pub struct StaticScope {
    pub input: Value,
    pub outputs: std::collections::HashMap<String, Value>,
    pub frame: Option<LoopFrame>,
}

impl Scope for StaticScope {
    fn workflow_input(&self) -> &Value {
        &self.input
    }
    fn step_output(&self, step_id: &str) -> Option<&Value> {
        self.outputs.get(step_id)
    }
    fn loop_frame(&self) -> Option<&LoopFrame> {
        self.frame.as_ref()
    }
}

/// The JSON type of a value, in the words error messages use.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Expr {
    /// Parses the inside of `${…}`.
    pub fn parse(inner: &str) -> Result<Expr, ExprError> {
        let source = inner.trim();
        if source.is_empty() {
            return Err(ExprError::Empty);
        }
        let (root, rest) = split_root(source)?;
        let path = parse_path(rest).map_err(|reason| ExprError::BadPath { expression: source.to_string(), reason })?;
        let scalar = matches!(root, Root::LoopIndex | Root::LoopTotal | Root::LoopIsFirst | Root::LoopIsLast);
        if scalar && !path.is_empty() {
            return Err(ExprError::BadPath {
                expression: source.to_string(),
                reason: "this loop variable has no fields".into(),
            });
        }
        Ok(Expr { source: source.to_string(), root, path })
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    pub fn path(&self) -> &[PathSegment] {
        &self.path
    }

    /// The step this expression reads, if it reads one.
    pub fn referenced_step(&self) -> Option<&str> {
        match &self.root {
            Root::StepOutput(step) => Some(step),
            _ => None,
        }
    }

    /// The value this expression refers to in `scope`.
    pub fn resolve<'s>(&self, scope: &'s dyn Scope) -> Result<Cow<'s, Value>, ResolveError> {
        let (base, name): (&'s Value, Cow<'_, str>) = match &self.root {
            Root::WorkflowInput => (scope.workflow_input(), "workflow.input".into()),
            Root::StepOutput(step) => {
                let output = scope.step_output(step).ok_or_else(|| ResolveError::StepNotCompleted(step.clone()))?;
                (output, format!("{step}.output").into())
            }
            Root::LoopItem => (&frame(scope)?.item, "loop.item".into()),
            Root::LoopIndex => return Ok(Cow::Owned(Value::from(frame(scope)?.index))),
            Root::LoopTotal => return Ok(Cow::Owned(Value::from(frame(scope)?.total))),
            Root::LoopIsFirst => return Ok(Cow::Owned(Value::Bool(frame(scope)?.index == 0))),
            Root::LoopIsLast => {
                let frame = frame(scope)?;
                return Ok(Cow::Owned(Value::Bool(frame.index + 1 == frame.total)));
            }
        };
        walk(base, &self.path, &name).map(Cow::Borrowed)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${{{}}}", self.source)
    }
}

fn frame(scope: &dyn Scope) -> Result<&LoopFrame, ResolveError> {
    scope.loop_frame().ok_or(ResolveError::NotInLoop)
}

/// Follows `path` from `value`; `name` is the root's name, for messages.
fn walk<'v>(mut value: &'v Value, path: &[PathSegment], name: &str) -> Result<&'v Value, ResolveError> {
    let mut at = name.to_string();
    for segment in path {
        value = match (segment, value) {
            (PathSegment::Key(key), Value::Object(map)) => {
                map.get(key).ok_or_else(|| ResolveError::MissingKey { key: key.clone(), at: at.clone() })?
            }
            (PathSegment::Index(index), Value::Array(items)) => items
                .get(*index)
                .ok_or_else(|| ResolveError::IndexOutOfRange { index: *index, len: items.len(), at: at.clone() })?,
            (PathSegment::Key(_), other) => {
                return Err(ResolveError::WrongType { at, found: type_name(other), wanted: "an object" });
            }
            (PathSegment::Index(_), other) => {
                return Err(ResolveError::WrongType { at, found: type_name(other), wanted: "an array" });
            }
        };
        at.push_str(&segment.to_string());
    }
    Ok(value)
}

/// Splits `source` into its root and the unparsed path after it (starting with `.` or `[`, or
/// empty).
fn split_root(source: &str) -> Result<(Root, &str), ExprError> {
    let fixed = [
        ("workflow.input", Root::WorkflowInput),
        ("loop.item", Root::LoopItem),
        ("loop.index", Root::LoopIndex),
        ("loop.total", Root::LoopTotal),
        ("loop.is_first", Root::LoopIsFirst),
        ("loop.is_last", Root::LoopIsLast),
    ];
    for (prefix, root) in fixed {
        if let Some(rest) = source.strip_prefix(prefix)
            && at_boundary(rest)
        {
            return Ok((root, rest));
        }
    }
    // `<step-id>.output…`: step ids may contain '-' and '_' (and, in principle, dots), so take the
    // first `.output` that ends at a path boundary.
    let mut from = 0;
    while let Some(found) = source[from..].find(".output") {
        let start = from + found;
        let rest = &source[start + ".output".len()..];
        if start > 0 && at_boundary(rest) {
            return Ok((Root::StepOutput(source[..start].to_string()), rest));
        }
        from = start + 1;
    }
    Err(ExprError::UnknownRoot(source.to_string()))
}

fn at_boundary(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with('.') || rest.starts_with('[')
}

/// Parses `.a.b[2][1]`-style paths.
fn parse_path(mut rest: &str) -> Result<Vec<PathSegment>, String> {
    let mut path = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let key = &after[..end];
            if key.is_empty() {
                return Err("empty key".into());
            }
            path.push(PathSegment::Key(key.to_string()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']').ok_or("'[' without ']'")?;
            let digits = after[..end].trim();
            let index = digits.parse::<usize>().map_err(|_| format!("'[{digits}]' is not an index"))?;
            path.push(PathSegment::Index(index));
            rest = &after[end + 1..];
        } else {
            return Err(format!("unexpected '{rest}'"));
        }
    }
    Ok(path)
}

/// An expression of a template that could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{expression}: {error}")]
pub struct RenderError {
    /// The failing `${…}`, as written.
    pub expression: String,
    pub error: ResolveError,
}

/// A piece of an interpolated string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Expr(Expr),
}

/// A string value of a plan, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// No `${` at all: passed through as is.
    Literal(String),
    /// Exactly one `${…}` and nothing else: keeps the JSON type of its value.
    Whole(Expr),
    /// `${…}` inside longer text: each is replaced by its string, or compact JSON for non-strings.
    Interpolated(Vec<Segment>),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, ExprError> {
        if !text.contains("${") {
            return Ok(Template::Literal(text.to_string()));
        }
        let mut segments = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                segments.push(Segment::Text(rest[..start].to_string()));
            }
            let inner_start = start + 2;
            let len = rest[inner_start..].find('}').ok_or(ExprError::Unterminated(offset + start))?;
            segments.push(Segment::Expr(Expr::parse(&rest[inner_start..inner_start + len])?));
            let consumed = inner_start + len + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_string()));
        }
        if let [Segment::Expr(_)] = segments.as_slice() {
            let Some(Segment::Expr(expr)) = segments.pop() else { unreachable!("matched one expression") };
            return Ok(Template::Whole(expr));
        }
        Ok(Template::Interpolated(segments))
    }

    /// The expressions in this template, in order.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        let (whole, parts): (Option<&Expr>, &[Segment]) = match self {
            Template::Literal(_) => (None, &[]),
            Template::Whole(expr) => (Some(expr), &[]),
            Template::Interpolated(segments) => (None, segments),
        };
        whole.into_iter().chain(parts.iter().filter_map(|s| match s {
            Segment::Expr(e) => Some(e),
            Segment::Text(_) => None,
        }))
    }

    /// The value of this template in `scope`.
    pub fn render(&self, scope: &dyn Scope) -> Result<Value, RenderError> {
        let resolve =
            |expr: &Expr| expr.resolve(scope).map_err(|error| RenderError { expression: expr.to_string(), error });
        match self {
            Template::Literal(text) => Ok(Value::String(text.clone())),
            Template::Whole(expr) => Ok(resolve(expr)?.into_owned()),
            Template::Interpolated(segments) => {
                let mut out = String::new();
                for segment in segments {
                    match segment {
                        Segment::Text(text) => out.push_str(text),
                        Segment::Expr(expr) => match resolve(expr)?.as_ref() {
                            Value::String(s) => out.push_str(s),
                            other => out.push_str(&other.to_string()),
                        },
                    }
                }
                Ok(Value::String(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn scope() -> StaticScope {
        StaticScope {
            input: json!({"topic": "rust", "n": 3, "items": [{"a": [10, [20, 21]]}], "nested": {"k": null}}),
            outputs: [("step-1".to_string(), json!({"findings": ["x", "y"], "score": 0.9}))].into(),
            frame: None,
        }
    }

    fn render(text: &str, scope: &StaticScope) -> Result<Value, String> {
        Template::parse(text).map_err(|e| e.to_string())?.render(scope).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_expressions_keep_their_json_type() {
        let s = scope();
        assert_eq!(render("${workflow.input.n}", &s), Ok(json!(3)));
        assert_eq!(render("${workflow.input}", &s), Ok(s.input.clone()));
        assert_eq!(render("${step-1.output.findings}", &s), Ok(json!(["x", "y"])));
        assert_eq!(render("${workflow.input.items[0].a[1][0]}", &s), Ok(json!(20)));
        assert_eq!(render("${workflow.input.nested.k}", &s), Ok(Value::Null));
        assert_eq!(render("${ step-1.output.score }", &s), Ok(json!(0.9)));
    }

    #[test]
    fn interpolation_uses_strings_and_compact_json() {
        let s = scope();
        assert_eq!(render("About ${workflow.input.topic}", &s), Ok(json!("About rust")));
        assert_eq!(render("${workflow.input.n}${workflow.input.n}", &s), Ok(json!("33")));
        assert_eq!(render("f=${step-1.output.findings}!", &s), Ok(json!("f=[\"x\",\"y\"]!")));
        assert_eq!(render("null: ${workflow.input.nested.k}", &s), Ok(json!("null: null")));
        assert_eq!(render("no expressions $ {here}", &s), Ok(json!("no expressions $ {here}")));
    }

    #[test]
    fn loop_variables() {
        let mut s = scope();
        assert_eq!(
            render("${loop.index}", &s),
            Err("${loop.index}: loop variables are only defined inside a loop body".into())
        );
        s.frame = Some(LoopFrame { item: json!({"id": 7}), index: 2, total: 3 });
        assert_eq!(render("${loop.item.id}", &s), Ok(json!(7)));
        assert_eq!(render("${loop.index}/${loop.total}", &s), Ok(json!("2/3")));
        assert_eq!(render("${loop.is_first}", &s), Ok(json!(false)));
        assert_eq!(render("${loop.is_last}", &s), Ok(json!(true)));
    }

    #[test]
    fn resolution_errors_name_the_expression_and_the_reason() {
        let s = scope();
        assert_eq!(render("${step-2.output}", &s), Err("${step-2.output}: step 'step-2' has not completed".into()));
        assert_eq!(
            render("${workflow.input.missing}", &s),
            Err("${workflow.input.missing}: key 'missing' not found in workflow.input".into())
        );
        assert_eq!(
            render("${workflow.input.items[3]}", &s),
            Err("${workflow.input.items[3]}: index 3 is out of range in workflow.input.items (length 1)".into())
        );
        assert_eq!(
            render("${workflow.input.topic.x}", &s),
            Err("${workflow.input.topic.x}: workflow.input.topic is a string, not an object".into())
        );
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(Template::parse("a ${workflow.input"), Err(ExprError::Unterminated(2)));
        assert_eq!(Template::parse("${}"), Err(ExprError::Empty));
        assert!(matches!(Template::parse("${foo.bar}"), Err(ExprError::UnknownRoot(_))));
        assert!(matches!(Template::parse("${output}"), Err(ExprError::UnknownRoot(_))));
        assert!(matches!(Template::parse("${workflow.input..a}"), Err(ExprError::BadPath { .. })));
        assert!(matches!(Template::parse("${workflow.input.a[x]}"), Err(ExprError::BadPath { .. })));
        assert!(matches!(Template::parse("${loop.index.x}"), Err(ExprError::BadPath { .. })));
        assert!(matches!(Template::parse("${workflow.inputs}"), Err(ExprError::UnknownRoot(_))));
    }

    #[test]
    fn step_ids_end_at_the_first_output_segment() {
        let expr = Expr::parse("fetch.outputs.output.x").unwrap();
        assert_eq!(expr.root(), &Root::StepOutput("fetch.outputs".into()));
        assert_eq!(expr.path(), &[PathSegment::Key("x".into())]);
        assert_eq!(Expr::parse("a.output[1]").unwrap().path(), &[PathSegment::Index(1)]);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::hash_map("[a-z]{0,4}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn whole_reference_round_trips_every_value(value in arb_json()) {
            let s = StaticScope { input: json!({"x": value.clone()}), ..Default::default() };
            prop_assert_eq!(render("${workflow.input.x}", &s), Ok(value.clone()));
            let s = StaticScope { outputs: [("s".to_string(), value.clone())].into(), ..Default::default() };
            prop_assert_eq!(render("${s.output}", &s), Ok(value));
        }

        #[test]
        fn any_text_parses_or_fails_without_panicking(text in ".{0,64}", input in arb_json()) {
            let s = StaticScope { input, ..Default::default() };
            if let Ok(template) = Template::parse(&text) {
                let _ = template.render(&s);
            }
        }

        #[test]
        fn expression_like_text_never_panics(text in "\\$\\{[a-z._\\[\\]0-9 -]{0,24}\\}?") {
            let _ = Template::parse(&text);
        }
    }
}
