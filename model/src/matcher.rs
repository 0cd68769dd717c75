//! Label matchers with Prometheus's semantics: regexes use Go's syntax (see [`crate::goregex`]),
//! are fully anchored and `.` matches newlines (`^(?s:…)$`), and a missing label matches as
//! the empty string.

use std::fmt;

use regex::Regex;

/// The four matcher operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchType {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

impl MatchType {
    /// The operator as PromQL writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchType::Equal => "=",
            MatchType::NotEqual => "!=",
            MatchType::Regex => "=~",
            MatchType::NotRegex => "!~",
        }
    }
}

/// Why a matcher could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    #[error("invalid regular expression {pattern:?} for label {name:?}: {reason}")]
    BadRegex { name: String, pattern: String, reason: String },
}

/// A label matcher: `name op value`.
#[derive(Clone)]
pub struct Matcher {
    /// The label name.
    pub name: String,
    /// The operand as written (the unanchored regex source for regex matchers).
    pub value: String,
    /// The operator.
    pub kind: MatchType,
    fast: Fast,
}

/// A cheaper test than the regex engine where the pattern allows one.
#[derive(Clone)]
enum Fast {
    None,
    /// The pattern is a literal (no metacharacters).
    Literal(String),
    /// `a|b|c` of literals.
    Set(Vec<String>),
    /// `.*`: matches everything.
    Any,
    /// `.+`: matches every non-empty value.
    NonEmpty,
    /// Anything else.
    Regex(Regex),
}

impl Matcher {
    /// Builds a matcher; regex operands are compiled anchored, as Prometheus does.
    pub fn new(kind: MatchType, name: impl Into<String>, value: impl Into<String>) -> Result<Self, MatcherError> {
        let name = name.into();
        let value = value.into();
        let fast = match kind {
            MatchType::Equal | MatchType::NotEqual => Fast::None,
            MatchType::Regex | MatchType::NotRegex => compile(&name, &value)?,
        };
        Ok(Matcher { name, value, kind, fast })
    }

    /// Shorthand for an `=` matcher, which cannot fail.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher { name: name.into(), value: value.into(), kind: MatchType::Equal, fast: Fast::None }
    }

    /// Whether `v` (the label's value, empty when absent) satisfies the matcher.
    pub fn matches(&self, v: &str) -> bool {
        match self.kind {
            MatchType::Equal => v == self.value,
            MatchType::NotEqual => v != self.value,
            MatchType::Regex => self.regex_matches(v),
            MatchType::NotRegex => !self.regex_matches(v),
        }
    }

    /// Whether the empty string satisfies the matcher, i.e. whether series without the
    /// label are selected.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// For `=~` matchers whose pattern is a literal or an alternation of literals, the
    /// values it can match; lets the index look those postings up directly.
    pub fn set_matches(&self) -> Option<Vec<&str>> {
        if self.kind != MatchType::Regex && self.kind != MatchType::Equal {
            return None;
        }
        match (&self.kind, &self.fast) {
            (MatchType::Equal, _) => Some(vec![self.value.as_str()]),
            (_, Fast::Literal(s)) => Some(vec![s.as_str()]),
            (_, Fast::Set(v)) => Some(v.iter().map(String::as_str).collect()),
            _ => None,
        }
    }

    fn regex_matches(&self, v: &str) -> bool {
        match &self.fast {
            Fast::None => false,
            Fast::Literal(s) => v == s,
            Fast::Set(set) => set.iter().any(|s| s == v),
            Fast::Any => true,
            Fast::NonEmpty => !v.is_empty(),
            Fast::Regex(r) => r.is_match(v),
        }
    }
}

fn is_plain_literal(s: &str) -> bool {
    !s.chars().any(|c| "\\.+*?()|[]{}^$".contains(c))
}

fn compile(name: &str, pattern: &str) -> Result<Fast, MatcherError> {
    // Compile even when a fast path applies, so invalid patterns are always rejected. The
    // pattern is Go (RE2) syntax, as in Prometheus, translated to an equivalent Rust regex.
    let re = crate::goregex::compile(&format!("^(?s:{pattern})$")).map_err(|e| MatcherError::BadRegex {
        name: name.to_string(),
        pattern: pattern.to_string(),
        reason: e.to_string(),
    })?;
    Ok(match pattern {
        ".*" => Fast::Any,
        ".+" => Fast::NonEmpty,
        p if is_plain_literal(p) => Fast::Literal(p.to_string()),
        p if p.split('|').all(is_plain_literal) => Fast::Set(p.split('|').map(str::to_string).collect()),
        _ => Fast::Regex(re),
    })
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.name, self.kind.as_str())?;
        crate::format::write_go_quoted(f, &self.value)
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.value == other.value && self.kind == other.kind
    }
}

impl Eq for Matcher {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use MatchType::*;
        let cases: &[(MatchType, &str, &str, bool)] = &[
            (Equal, "a", "a", true),
            (Equal, "a", "", false),
            (NotEqual, "a", "b", true),
            (Regex, "a.*", "abc", true),
            (Regex, "b", "abc", false), // anchored: no substring match
            (Regex, "a|b", "b", true),
            (Regex, "a|b", "ab", false),
            (Regex, ".*", "", true),
            (Regex, ".+", "", false),
            (Regex, "a.c", "a\nc", true), // (?s): dot matches newline
            (NotRegex, "a.*", "abc", false),
            (NotRegex, "", "", false),
            (Regex, "", "", true),
            (Regex, "foo|bar|", "", true),
            (Regex, "(?i)FOO", "foo", true),
            // Go syntax and Go's ASCII classes (details in goregex's tests).
            (Regex, "x{", "x{", true),
            (Regex, r"\Qa.b\E", "a.b", true),
            (Regex, r"\Qa.b\E", "axb", false),
            (Regex, r"\d+", "\u{663}", false),
            (Regex, r"\s", "\u{a0}", false),
            (Regex, r"\p{^L}", "1", true),
            (NotRegex, r"\012", "\n", false),
        ];
        for (k, pat, v, want) in cases {
            let m = Matcher::new(*k, "l", *pat).unwrap();
            assert_eq!(m.matches(v), *want, "{m} on {v:?}");
        }
    }

    #[test]
    fn bad_regex_is_an_error() {
        let e = Matcher::new(MatchType::Regex, "job", "(").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid regular expression "(" for label "job": error parsing regexp: missing closing ): `^(?s:()$`"#
        );
    }

    #[test]
    fn set_matches() {
        let m = Matcher::new(MatchType::Regex, "a", "x|y").unwrap();
        assert_eq!(m.set_matches(), Some(vec!["x", "y"]));
        let m = Matcher::new(MatchType::Regex, "a", "x.*").unwrap();
        assert_eq!(m.set_matches(), None);
    }
}
