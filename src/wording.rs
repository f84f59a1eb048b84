//! How runvisor words things for people: type names without Rust in them, and "did you mean".
//!
//! serde and figment describe what they expected in Rust's terms (`expected i64`, `found unsigned
//! int`); an operator reading a config error or a plan author reading a validation message should
//! not need to know what an `i64` is.

/// A Rust or serde type name as a person would say it: `i64` → `an integer`.
pub fn expected(rust: &str) -> String {
    let phrase = match rust.trim() {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number ≥ 0",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "bool" | "a boolean" => "true or false",
        "a string" | "a borrowed string" | "string" | "str" => "a string",
        "a sequence" | "a sequence of strings" => "a list",
        "a map" => "a table (an object)",
        "char" | "a character" => "a single character",
        other => return other.to_string(),
    };
    phrase.to_string()
}

/// A serde error message with Rust's type names replaced: `invalid type: string "x", expected
/// i64` → `expected a whole number, found the string "x"`.
pub fn humanize(message: &str) -> String {
    let Some(rest) = message.strip_prefix("invalid type: ").or_else(|| message.strip_prefix("invalid value: ")) else {
        return message.to_string();
    };
    match rest.rsplit_once(", expected ") {
        Some((found, wanted)) => format!("expected {}, found {}", expected(wanted), found_phrase(found)),
        None => message.to_string(),
    }
}

fn found_phrase(found: &str) -> String {
    let found = found.trim();
    for (prefix, noun) in [
        ("string ", "the string "),
        ("integer ", "the number "),
        ("unsigned int ", "the number "),
        ("signed int ", "the number "),
        ("floating point ", "the number "),
        ("boolean ", ""),
        ("bool ", ""),
    ] {
        if let Some(value) = found.strip_prefix(prefix) {
            return format!("{noun}{}", value.trim_matches('`'));
        }
    }
    match found {
        "map" => "a table (an object)".into(),
        "sequence" => "a list".into(),
        "null" | "unit value" => "null".into(),
        other => other.to_string(),
    }
}

/// The candidate closest to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(word, candidate), candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 4))
        .min()
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_type_names_become_words() {
        assert_eq!(
            humanize("invalid type: string \"x\", expected i64"),
            "expected a whole number, found the string \"x\""
        );
        assert_eq!(
            humanize("invalid type: map, expected u32"),
            "expected a whole number ≥ 0, found a table (an object)"
        );
        assert_eq!(humanize("missing field `id`"), "missing field `id`");
        assert_eq!(did_you_mean("nxt_step", ["next_step", "type"]), Some("next_step"));
        assert_eq!(did_you_mean("zzz", ["next_step"]), None);
    }
}
