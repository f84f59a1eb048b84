//! The condition language of `conditional` steps (CONTRACT.md §3).
//!
//! A small tokenizer and a recursive-descent parser; nothing is handed to a general-purpose
//! interpreter. Grammar, loosest binding first:
//!
//! ```text
//! or         := and ("or" and)*
//! and        := not ("and" not)*
//! not        := "not" not | comparison
//! comparison := operand (("==" | "!=" | ">" | "<" | ">=" | "<=" | "in" | "not" "in" | "contains") operand)?
//! operand    := number | string | true | false | null | True | False | None | ${…} | list | "(" or ")"
//! list       := "[" (or ("," or)*)? "]"
//! ```
//!
//! `A contains B` means `B in A`. A reference that cannot be resolved is `null`. Ordering operators
//! compare two numbers or two strings; any other pair is an error naming both types, so a plan that
//! compares a missing score (`null > 0.8`) fails loudly instead of quietly taking the `else` branch.

use std::cmp::Ordering;
use std::fmt;

use serde_json::Value;

use super::expr::{Expr, Scope, type_name};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("cannot parse condition '{expression}': {message} at position {position}")]
    Syntax { expression: String, position: usize, message: String },
    #[error("cannot evaluate condition '{expression}': {message}")]
    Type { expression: String, message: String },
}

/// A parsed condition, ready to be evaluated many times.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    source: String,
    root: Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    In,
    NotIn,
    Contains,
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Eq => "==",
            Self::Ne => "!=",
            Self::Gt => ">",
            Self::Lt => "<",
            Self::Ge => ">=",
            Self::Le => "<=",
            Self::In => "in",
            Self::NotIn => "not in",
            Self::Contains => "contains",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Literal(Value),
    Reference(Expr),
    List(Vec<Node>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Compare(CmpOp, Box<Node>, Box<Node>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Value(Value),
    Reference(Expr),
    Op(CmpOp),
    And,
    Or,
    Not,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Minus,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Value(v) => write!(f, "{v}"),
            Token::Reference(e) => write!(f, "{e}"),
            Token::Op(op) => write!(f, "{op}"),
            Token::And => f.write_str("and"),
            Token::Or => f.write_str("or"),
            Token::Not => f.write_str("not"),
            Token::LParen => f.write_str("("),
            Token::RParen => f.write_str(")"),
            Token::LBracket => f.write_str("["),
            Token::RBracket => f.write_str("]"),
            Token::Comma => f.write_str(","),
            Token::Minus => f.write_str("-"),
        }
    }
}

/// Splits `source` into tokens with their character positions.
fn tokenize(source: &str) -> Result<Vec<(usize, Token)>, (usize, String)> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let token = match c {
            _ if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => Token::LParen,
            ')' => Token::RParen,
            '[' => Token::LBracket,
            ']' => Token::RBracket,
            ',' => Token::Comma,
            '-' => Token::Minus,
            '$' if two == "${" => {
                let close =
                    chars[i..].iter().position(|&c| c == '}').ok_or((i, "'${' without a closing '}'".to_string()))?;
                let inner: String = chars[i + 2..i + close].iter().collect();
                let expr = Expr::parse(&inner).map_err(|e| (i, e.to_string()))?;
                i += close + 1;
                tokens.push((start, Token::Reference(expr)));
                continue;
            }
            '=' | '!' | '<' | '>' => {
                let (op, len) = match two.as_str() {
                    "==" => (CmpOp::Eq, 2),
                    "!=" => (CmpOp::Ne, 2),
                    ">=" => (CmpOp::Ge, 2),
                    "<=" => (CmpOp::Le, 2),
                    _ if c == '>' => (CmpOp::Gt, 1),
                    _ if c == '<' => (CmpOp::Lt, 1),
                    _ => return Err((i, format!("unknown operator '{c}' (use ==, !=, >, <, >=, <=)"))),
                };
                i += len;
                tokens.push((start, Token::Op(op)));
                continue;
            }
            '\'' | '"' => {
                let (text, end) = read_string(&chars, i)?;
                i = end;
                tokens.push((start, Token::Value(Value::String(text))));
                continue;
            }
            _ if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) => {
                let end = (i..chars.len())
                    .find(|&j| {
                        let d = chars[j];
                        let exponent_sign = (d == '+' || d == '-') && matches!(chars[j - 1], 'e' | 'E');
                        !(d.is_ascii_digit() || d == '.' || d == 'e' || d == 'E' || exponent_sign)
                    })
                    .unwrap_or(chars.len());
                let text: String = chars[i..end].iter().collect();
                i = end;
                tokens.push((
                    start,
                    Token::Value(parse_number(&text).ok_or((start, format!("'{text}' is not a number")))?),
                ));
                continue;
            }
            _ if c.is_alphabetic() || c == '_' => {
                let end =
                    (i..chars.len()).find(|&j| !(chars[j].is_alphanumeric() || chars[j] == '_')).unwrap_or(chars.len());
                let word: String = chars[i..end].iter().collect();
                i = end;
                let token = match word.as_str() {
                    "and" => Token::And,
                    "or" => Token::Or,
                    "not" => Token::Not,
                    "in" => Token::Op(CmpOp::In),
                    "contains" => Token::Op(CmpOp::Contains),
                    "true" | "True" => Token::Value(Value::Bool(true)),
                    "false" | "False" => Token::Value(Value::Bool(false)),
                    "null" | "None" => Token::Value(Value::Null),
                    _ => {
                        return Err((
                            start,
                            format!("unknown word '{word}' (references are written ${{…}}, strings in quotes)"),
                        ));
                    }
                };
                tokens.push((start, token));
                continue;
            }
            _ => return Err((i, format!("unexpected character '{c}'"))),
        };
        i += 1;
        tokens.push((start, token));
    }
    Ok(tokens)
}

/// Reads a quoted string starting at `chars[start]`; returns its text and the index after it.
fn read_string(chars: &[char], start: usize) -> Result<(String, usize), (usize, String)> {
    let quote = chars[start];
    let mut text = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                text.push(match chars[i + 1] {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
                i += 2;
            }
            c if c == quote => return Ok((text, i + 1)),
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    Err((start, "string without a closing quote".into()))
}

fn parse_number(text: &str) -> Option<Value> {
    if let Ok(int) = text.parse::<i64>() {
        return Some(Value::from(int));
    }
    text.parse::<f64>().ok().filter(|f| f.is_finite()).map(Value::from)
}

struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    next: usize,
    source: &'a str,
}

type ParseResult<T> = Result<T, (usize, String)>;

/// Deeper nesting than this is refused rather than risking the stack on hostile input.
const MAX_DEPTH: usize = 64;

/// Longer conditions are refused: `a and b and …` builds a tree as deep as it is long, and
/// evaluating or dropping it recurses that deep.
const MAX_TOKENS: usize = 1000;

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.source.chars().count(), |(p, _)| *p)
    }

    fn bump(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.next).map(|(_, t)| t.clone());
        self.next += 1;
        token
    }

    fn expect(&mut self, wanted: Token, what: &str) -> ParseResult<()> {
        if self.peek() == Some(&wanted) {
            self.next += 1;
            Ok(())
        } else {
            Err((self.position(), format!("expected {what}{}", self.found())))
        }
    }

    fn found(&self) -> String {
        match self.peek() {
            Some(token) => format!(", found '{token}'"),
            None => ", found the end".into(),
        }
    }

    fn or(&mut self, depth: usize) -> ParseResult<Node> {
        if depth > MAX_DEPTH {
            return Err((self.position(), "expression nested too deeply".into()));
        }
        let mut left = self.and(depth)?;
        while self.peek() == Some(&Token::Or) {
            self.next += 1;
            left = Node::Or(Box::new(left), Box::new(self.and(depth)?));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> ParseResult<Node> {
        let mut left = self.not(depth)?;
        while self.peek() == Some(&Token::And) {
            self.next += 1;
            left = Node::And(Box::new(left), Box::new(self.not(depth)?));
        }
        Ok(left)
    }

    fn not(&mut self, depth: usize) -> ParseResult<Node> {
        if self.peek() == Some(&Token::Not) {
            if depth > MAX_DEPTH {
                return Err((self.position(), "expression nested too deeply".into()));
            }
            self.next += 1;
            return Ok(Node::Not(Box::new(self.not(depth + 1)?)));
        }
        self.comparison(depth)
    }

    fn comparison(&mut self, depth: usize) -> ParseResult<Node> {
        let left = self.operand(depth)?;
        let Some(op) = self.comparison_operator() else { return Ok(left) };
        let right = self.operand(depth)?;
        if self.comparison_operator().is_some() {
            return Err((self.position(), "chained comparisons are not supported; join them with 'and'".into()));
        }
        Ok(Node::Compare(op, Box::new(left), Box::new(right)))
    }

    /// Consumes a comparison operator if one comes next (`not in` is two tokens).
    fn comparison_operator(&mut self) -> Option<CmpOp> {
        match self.peek()? {
            Token::Op(op) => {
                let op = *op;
                self.next += 1;
                Some(op)
            }
            Token::Not if matches!(self.tokens.get(self.next + 1), Some((_, Token::Op(CmpOp::In)))) => {
                self.next += 2;
                Some(CmpOp::NotIn)
            }
            _ => None,
        }
    }

    fn operand(&mut self, depth: usize) -> ParseResult<Node> {
        let position = self.position();
        match self.bump() {
            Some(Token::Value(value)) => Ok(Node::Literal(value)),
            Some(Token::Reference(expr)) => Ok(Node::Reference(expr)),
            Some(Token::Minus) => match self.bump() {
                Some(Token::Value(Value::Number(n))) => {
                    let negated = n.as_i64().and_then(i64::checked_neg).map(Value::from);
                    Ok(Node::Literal(negated.unwrap_or_else(|| Value::from(-n.as_f64().unwrap_or(0.0)))))
                }
                _ => Err((position, "'-' must be followed by a number".into())),
            },
            Some(Token::LParen) => {
                let inner = self.or(depth + 1)?;
                self.expect(Token::RParen, "')'")?;
                Ok(inner)
            }
            Some(Token::LBracket) => {
                let mut items = Vec::new();
                if self.peek() != Some(&Token::RBracket) {
                    loop {
                        items.push(self.or(depth + 1)?);
                        if self.peek() == Some(&Token::Comma) {
                            self.next += 1;
                        } else {
                            break;
                        }
                    }
                }
                self.expect(Token::RBracket, "',' or ']'")?;
                Ok(Node::List(items))
            }
            Some(token) => Err((position, format!("expected a value, found '{token}'"))),
            None => Err((position, "expected a value, found the end".into())),
        }
    }
}

impl Condition {
    pub fn parse(source: &str) -> Result<Condition, ConditionError> {
        let syntax = |(position, message): (usize, String)| ConditionError::Syntax {
            expression: source.to_string(),
            position,
            message,
        };
        let tokens = tokenize(source).map_err(syntax)?;
        if tokens.len() > MAX_TOKENS {
            return Err(syntax((tokens[MAX_TOKENS].0, format!("condition is too long (over {MAX_TOKENS} tokens)"))));
        }
        let mut parser = Parser { tokens, next: 0, source };
        let root = parser.or(0).map_err(syntax)?;
        if parser.peek().is_some() {
            let message = format!("unexpected '{}'", parser.peek().map(ToString::to_string).unwrap_or_default());
            return Err(syntax((parser.position(), message)));
        }
        Ok(Condition { source: source.to_string(), root })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition to a boolean (by truthiness: null, false, 0, "", [] and {} are
    /// false).
    pub fn evaluate(&self, scope: &dyn Scope) -> Result<bool, ConditionError> {
        eval(&self.root, scope)
            .map(|v| truthy(&v))
            .map_err(|message| ConditionError::Type { expression: self.source.clone(), message })
    }
}

/// Parses and evaluates in one go.
pub fn evaluate(source: &str, scope: &dyn Scope) -> Result<bool, ConditionError> {
    Condition::parse(source)?.evaluate(scope)
}

pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

fn eval(node: &Node, scope: &dyn Scope) -> Result<Value, String> {
    Ok(match node {
        Node::Literal(value) => value.clone(),
        Node::Reference(expr) => expr.resolve(scope).map(|v| v.into_owned()).unwrap_or(Value::Null),
        Node::List(items) => Value::Array(items.iter().map(|n| eval(n, scope)).collect::<Result<_, _>>()?),
        Node::Not(inner) => Value::Bool(!truthy(&eval(inner, scope)?)),
        Node::And(a, b) => Value::Bool(truthy(&eval(a, scope)?) && truthy(&eval(b, scope)?)),
        Node::Or(a, b) => Value::Bool(truthy(&eval(a, scope)?) || truthy(&eval(b, scope)?)),
        Node::Compare(op, a, b) => Value::Bool(compare(*op, &eval(a, scope)?, &eval(b, scope)?)?),
    })
}

fn compare(op: CmpOp, a: &Value, b: &Value) -> Result<bool, String> {
    let describe = || format!("{a} {op} {b} compares {} with {}", type_name(a), type_name(b));
    match op {
        CmpOp::Eq => Ok(equal(a, b)),
        CmpOp::Ne => Ok(!equal(a, b)),
        CmpOp::In => contains(b, a).ok_or_else(describe),
        CmpOp::NotIn => contains(b, a).map(|found| !found).ok_or_else(describe),
        CmpOp::Contains => contains(a, b).ok_or_else(describe),
        CmpOp::Gt | CmpOp::Lt | CmpOp::Ge | CmpOp::Le => {
            let ordering = match (a, b) {
                (Value::Number(x), Value::Number(y)) => {
                    x.as_f64().zip(y.as_f64()).and_then(|(x, y)| x.partial_cmp(&y)).ok_or_else(describe)?
                }
                (Value::String(x), Value::String(y)) => x.cmp(y),
                _ => return Err(describe()),
            };
            Ok(match op {
                CmpOp::Gt => ordering == Ordering::Greater,
                CmpOp::Lt => ordering == Ordering::Less,
                CmpOp::Ge => ordering != Ordering::Less,
                _ => ordering != Ordering::Greater,
            })
        }
    }
}

/// Equality where `1 == 1.0`, recursively inside arrays and objects.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| equal(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// Whether `container` holds `item`: an element of an array, a substring of a string, a key of an
/// object. `None` when the pair makes no sense.
fn contains(container: &Value, item: &Value) -> Option<bool> {
    match (container, item) {
        (Value::Array(items), _) => Some(items.iter().any(|x| equal(x, item))),
        (Value::String(text), Value::String(part)) => Some(text.contains(part.as_str())),
        (Value::Object(map), Value::String(key)) => Some(map.contains_key(key)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::expr::StaticScope;
    use proptest::prelude::*;
    use serde_json::json;

    fn scope() -> StaticScope {
        StaticScope {
            input: json!({"score": 0.9, "name": "rust", "tags": ["a", "b"], "none": null, "count": 3}),
            outputs: [("s1".to_string(), json!({"ok": true, "items": [1, 2]}))].into(),
            frame: None,
        }
    }

    fn eval_ok(source: &str) -> bool {
        evaluate(source, &scope()).unwrap_or_else(|e| panic!("{source}: {e}"))
    }

    #[test]
    fn literals_and_comparisons() {
        assert!(eval_ok("10 > 0.8"));
        assert!(eval_ok("1 == 1.0"));
        assert!(eval_ok("-2 < -1.5"));
        assert!(eval_ok("'abc' < \"abd\""));
        assert!(eval_ok("True != False"));
        assert!(eval_ok("None == null"));
        assert!(eval_ok("[1, 'x'] == [1.0, \"x\"]"));
        assert!(eval_ok("1e3 >= 1000"));
        assert!(!eval_ok("'1' == 1"));
    }

    #[test]
    fn references() {
        assert!(eval_ok("${workflow.input.score} > 0.8"));
        assert!(eval_ok("${workflow.input.name} == 'rust'"));
        assert!(eval_ok("${s1.output.ok}"));
        assert!(eval_ok("${missing.output} == null"));
        assert!(eval_ok("not ${workflow.input.none}"));
        assert!(eval_ok("2 in ${s1.output.items}"));
    }

    #[test]
    fn membership() {
        assert!(eval_ok("'a' in ${workflow.input.tags}"));
        assert!(eval_ok("'z' not in ${workflow.input.tags}"));
        assert!(eval_ok("${workflow.input.tags} contains 'b'"));
        assert!(eval_ok("'us' in 'rust'"));
        assert!(eval_ok("${workflow.input} contains 'score'"));
    }

    #[test]
    fn precedence_comparison_then_not_then_and_then_or() {
        // not binds looser than ==: not (1 == 2)
        assert!(eval_ok("not 1 == 2"));
        // and binds tighter than or: true or (false and false)
        assert!(eval_ok("true or false and false"));
        assert!(!eval_ok("(true or false) and false"));
        assert!(eval_ok("not false and not false"));
        assert!(eval_ok("${workflow.input.count} >= 3 and 'a' in ${workflow.input.tags} or false"));
    }

    #[test]
    fn incompatible_comparisons_fail_and_say_why() {
        let err = evaluate("${workflow.input.none} > 0.8", &scope()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot evaluate condition '${workflow.input.none} > 0.8': null > 0.8 compares null with a number"
        );
        assert!(evaluate("'a' < 1", &scope()).is_err());
        assert!(evaluate("1 in 2", &scope()).is_err());
    }

    #[test]
    fn syntax_errors_name_the_position() {
        let cases = [
            ("10 >", "expected a value, found the end at position 4"),
            ("(1 == 1", "expected ')', found the end at position 7"),
            ("score > 1", "unknown word 'score'"),
            ("1 = 1", "unknown operator '='"),
            ("1 < 2 < 3", "chained comparisons are not supported"),
            ("'open", "string without a closing quote at position 0"),
            ("1 == 1 1", "unexpected '1' at position 7"),
            ("${nope} == 1", "is not a known reference"),
            ("[1, 2", "expected ',' or ']', found the end"),
            ("", "expected a value, found the end at position 0"),
        ];
        for (source, expected) in cases {
            let err = Condition::parse(source).unwrap_err().to_string();
            assert!(err.contains(expected), "{source:?}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let source = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        assert!(Condition::parse(&source).unwrap_err().to_string().contains("nested too deeply"));
        let source = format!("{}true", "not ".repeat(200));
        assert!(Condition::parse(&source).is_err());
        let source = vec!["true"; 5_000].join(" and ");
        assert!(Condition::parse(&source).unwrap_err().to_string().contains("too long"));
    }

    proptest! {
        #[test]
        fn any_text_never_panics(source in ".{0,80}") {
            if let Ok(condition) = Condition::parse(&source) {
                let _ = condition.evaluate(&scope());
            }
        }

        #[test]
        fn condition_shaped_text_never_panics(
            source in "(not |and |or |\\(|\\)|\\[|\\]|,|-|1|2\\.5|'x'|True|None|\\$\\{workflow\\.input\\.score\\}|==|>=|<| in | contains ){0,20}"
        ) {
            if let Ok(condition) = Condition::parse(&source) {
                let _ = condition.evaluate(&scope());
            }
        }
    }
}
