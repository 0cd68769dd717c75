//! A parser for PromQL series selectors (`up`, `{job="x"}`, `up{a=~"b", c!="d"}`), enough
//! for `--match` until the PromQL crate provides one.

use norn_model::{MatchType, Matcher};

/// Parses a series selector into matchers. Like Prometheus's `ParseMetricSelector` (and
/// unlike a full PromQL query), selectors whose matchers all match the empty string are
/// accepted: promtool's own default is `{__name__=~'(?s:.*)'}`.
pub fn parse_selector(input: &str) -> Result<Vec<Matcher>, String> {
    let mut p = Cursor { s: input.as_bytes(), i: 0 };
    let mut matchers = Vec::new();
    p.ws();
    let name_start = p.i;
    while p.i < p.s.len() && is_metric_char(p.s[p.i], p.i == name_start) {
        p.i += 1;
    }
    if p.i > name_start {
        matchers.push(Matcher::equal("__name__", &input[name_start..p.i]));
    }
    p.ws();
    if p.peek() == Some(b'{') {
        p.i += 1;
        loop {
            p.ws();
            if p.peek() == Some(b'}') {
                p.i += 1;
                break;
            }
            let ls = p.i;
            while p.i < p.s.len() && is_label_char(p.s[p.i], p.i == ls) {
                p.i += 1;
            }
            if p.i == ls {
                return Err(format!("expected label name at position {}", p.i));
            }
            let name = &input[ls..p.i];
            p.ws();
            let kind = if p.eat("=~") {
                MatchType::Regex
            } else if p.eat("!~") {
                MatchType::NotRegex
            } else if p.eat("!=") {
                MatchType::NotEqual
            } else if p.eat("=") {
                MatchType::Equal
            } else {
                return Err(format!("expected matcher operator after label {name:?} at position {}", p.i));
            };
            p.ws();
            let value = p.string()?;
            matchers.push(Matcher::new(kind, name, value).map_err(|e| e.to_string())?);
            p.ws();
            if p.eat(",") {
                continue;
            }
            p.ws();
            if p.peek() == Some(b'}') {
                p.i += 1;
                break;
            }
            return Err(format!("expected ',' or '}}' at position {}", p.i));
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected {:?} at position {}", &input[p.i..], p.i));
    }
    if matchers.is_empty() {
        return Err("empty selector".to_string());
    }
    Ok(matchers)
}

fn is_metric_char(c: u8, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':' || (!first && c.is_ascii_digit())
}

fn is_label_char(c: u8, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || (!first && c.is_ascii_digit())
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, tok: &str) -> bool {
        if self.s[self.i..].starts_with(tok.as_bytes()) {
            self.i += tok.len();
            true
        } else {
            false
        }
    }

    /// A PromQL string: "…" or '…' with Go escapes, or `…` raw.
    fn string(&mut self) -> Result<String, String> {
        let start = self.i;
        let Some(q) = self.peek().filter(|c| matches!(c, b'"' | b'\'' | b'`')) else {
            return Err(format!("expected quoted label value at position {start}"));
        };
        self.i += 1;
        let text = std::str::from_utf8(&self.s[self.i..]).map_err(|_| "invalid UTF-8".to_string())?;
        let mut out = String::new();
        let mut chars = text.char_indices();
        while let Some((off, c)) = chars.next() {
            if c == q as char {
                self.i += off + 1;
                return Ok(out);
            }
            if c != '\\' || q == b'`' {
                out.push(c);
                continue;
            }
            let Some((_, e)) = chars.next() else { break };
            match e {
                'a' => out.push('\u{07}'),
                'b' => out.push('\u{08}'),
                'f' => out.push('\u{0c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\u{0b}'),
                '\\' | '"' | '\'' => out.push(e),
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = chars.by_ref().take(n).map(|(_, c)| c).collect();
                    let v = u32::from_str_radix(&hex, 16).map_err(|_| format!("invalid escape \\{e}{hex}"))?;
                    if e == 'x' {
                        // \xNN is a byte; only ASCII bytes make sense inside a UTF-8 string.
                        out.push(char::from_u32(v).filter(|c| c.is_ascii()).ok_or("non-ASCII \\x escape")?);
                    } else {
                        out.push(char::from_u32(v).ok_or_else(|| format!("invalid code point \\{e}{hex}"))?);
                    }
                }
                other => return Err(format!("unknown escape sequence \\{other}")),
            }
        }
        Err(format!("unterminated string starting at position {start}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(ms: &[Matcher]) -> Vec<String> {
        ms.iter().map(|m| format!("{}{}{}", m.name, m.kind.as_str(), m.value)).collect()
    }

    #[test]
    fn parses() {
        for (input, want) in [
            ("up", vec!["__name__=up"]),
            ("{job=\"x\"}", vec!["job=x"]),
            ("up{a=~\"b\"}", vec!["__name__=up", "a=~b"]),
            (" up { a != 'x' , b!~`c\\d`, } ", vec!["__name__=up", "a!=x", "b!~c\\d"]),
            ("{__name__=~'(?s:.*)'}", vec!["__name__=~(?s:.*)"]),
            ("{a=\"q\\\"\\n\\u00e9\"}", vec!["a=q\"\né"]),
            ("m:rate5m{}", vec!["__name__=m:rate5m"]),
        ] {
            assert_eq!(show(&parse_selector(input).unwrap()), want, "{input}");
        }
    }

    #[test]
    fn rejects() {
        for input in ["", "{}", "{a}", "{a=b}", "{a=\"x\"", "up}", "{1a=\"x\"}", "{a=~\"(\"}"] {
            assert!(parse_selector(input).is_err(), "{input}");
        }
    }
}
