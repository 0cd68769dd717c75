//! Rewrites of query text before parsing, for syntax promql-parser 0.11 does not know.
//!
//! Duration expressions (Prometheus's experimental `promql-duration-expr`): arithmetic in
//! range brackets and after `offset`, with `step()`, `range()`, `min_of()` and `max_of()`.
//! The parser we use only knows duration literals, so such expressions are folded into
//! literals (in milliseconds) before parsing, once the query's step and range are known.

use std::borrow::Cow;

use crate::conformance::script::parse_duration;

/// Rewrites duration expressions in `query` into literals; `step_ms` and `range_ms` are
/// what `step()` and `range()` stand for. Text the folding does not understand is left
/// for the parser to report.
pub fn fold(query: &str, step_ms: i64, range_ms: i64) -> Cow<'_, str> {
    if !query.contains('[') && !query.to_ascii_lowercase().contains("offset") {
        return Cow::Borrowed(query);
    }
    let b = query.as_bytes();
    let mut out = String::with_capacity(query.len());
    let mut i = 0;
    let mut changed = false;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            let end = skip_string(b, i);
            out.push_str(&query[i..end]);
            i = end;
            continue;
        }
        if c == b'{' {
            // Label matchers: copied as they are (they may contain "offset" or brackets in strings).
            let mut j = i + 1;
            while j < b.len() && b[j] != b'}' {
                if b[j] == b'"' || b[j] == b'\'' || b[j] == b'`' {
                    j = skip_string(b, j);
                } else {
                    j += 1;
                }
            }
            let end = (j + 1).min(b.len());
            out.push_str(&query[i..end]);
            i = end;
            continue;
        }
        if c == b'[' {
            let Some(close) = matching(b, i, b'[', b']') else {
                out.push_str(&query[i..]);
                break;
            };
            let inner = &query[i + 1..close];
            let parts = split_top(inner, b':');
            let mut new_parts = Vec::new();
            for p in &parts {
                let t = p.trim();
                if t.is_empty() || is_literal(t) {
                    new_parts.push(p.to_string());
                    continue;
                }
                match eval(t, step_ms, range_ms) {
                    Some(v) if v > 0.0 => {
                        changed = true;
                        new_parts.push(format!("{}ms", (v * 1000.0).round() as i64));
                    }
                    _ => new_parts.push(p.to_string()),
                }
            }
            out.push('[');
            out.push_str(&new_parts.join(":"));
            out.push(']');
            i = close + 1;
            continue;
        }
        if (c == b'o' || c == b'O')
            && b.len() >= i + 6
            // Bytes, not `str` slicing: `i + 6` may fall inside a multi-byte character.
            && b[i..i + 6].eq_ignore_ascii_case(b"offset")
            && (i == 0 || !is_ident(b[i - 1]))
            && (i + 6 == b.len() || !is_ident(b[i + 6]))
        {
            let before_offset = out.len();
            out.push_str(&query[i..i + 6]);
            i += 6;
            let ws_start = i;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            out.push_str(&query[ws_start..i]);
            // Operand: [sign] ( literal | '(' … ')' | name '(' … ')' ).
            let st = i;
            let mut j = i;
            while j < b.len() && (b[j] == b'-' || b[j] == b'+' || b[j].is_ascii_whitespace()) {
                j += 1;
            }
            if j < b.len() && b[j] == b'(' {
                j = matching(b, j, b'(', b')').map(|x| x + 1).unwrap_or(b.len());
            } else {
                let ns = j;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'.') {
                    j += 1;
                }
                if j < b.len() && b[j] == b'(' && j > ns {
                    j = matching(b, j, b'(', b')').map(|x| x + 1).unwrap_or(b.len());
                }
            }
            let operand = &query[st..j];
            let compact: String = operand.chars().filter(|c| !c.is_whitespace()).collect();
            let plain = compact.trim_start_matches(['-', '+']);
            if is_literal(plain) && !plain.chars().all(|c| c.is_ascii_digit() || c == '.') {
                out.push_str(operand);
            } else {
                match eval(operand.trim(), step_ms, range_ms) {
                    Some(v) => {
                        changed = true;
                        let ms = (v * 1000.0).round() as i64;
                        if ms == 0 {
                            // The parser rejects a zero offset; no offset means the same.
                            out.truncate(before_offset);
                        } else if ms < 0 {
                            out.push_str(&format!("-{}ms", -ms));
                        } else {
                            out.push_str(&format!("{ms}ms"));
                        }
                    }
                    None => out.push_str(operand),
                }
            }
            i = j;
            continue;
        }
        let ch = query[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    if changed { Cow::Owned(out) } else { Cow::Borrowed(query) }
}

/// For each byte of `q`, whether it lies inside a string literal.
fn string_mask(q: &str) -> Vec<bool> {
    let b = q.as_bytes();
    let mut mask = vec![false; b.len()];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' || b[i] == b'\'' || b[i] == b'`' {
            let end = skip_string(b, i);
            mask[i..end].iter_mut().for_each(|x| *x = true);
            i = end;
        } else {
            i += 1;
        }
    }
    mask
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn skip_string(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == b'\\' && q != b'`' {
            j += 2;
            continue;
        }
        if b[j] == q {
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

fn matching(b: &[u8], open_at: usize, open: u8, close: u8) -> Option<usize> {
    let mut depth = 0;
    let mut j = open_at;
    while j < b.len() {
        if b[j] == open {
            depth += 1;
        } else if b[j] == close {
            depth -= 1;
            if depth == 0 {
                return Some(j);
            }
        }
        j += 1;
    }
    None
}

fn split_top(s: &str, sep: u8) -> Vec<&str> {
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => {
                i = skip_string(b, i);
                continue;
            }
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

/// A plain duration literal the parser accepts as is (`5m`, `1h30m`).
fn is_literal(s: &str) -> bool {
    !s.is_empty() && s.as_bytes()[0].is_ascii_digit() && parse_duration(s).is_ok()
}

/// Evaluates a duration expression in seconds.
fn eval(s: &str, step_ms: i64, range_ms: i64) -> Option<f64> {
    let toks = tokenize(s)?;
    let mut p = Parser { toks, pos: 0, step: step_ms as f64 / 1000.0, range: range_ms as f64 / 1000.0 };
    let v = p.expr()?;
    if p.pos != p.toks.len() {
        return None;
    }
    Some(v)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(char),
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == b'.' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            let t = &s[st..i];
            let v = if let Ok(v) = t.parse::<f64>() { v } else { parse_duration(t).ok()? as f64 / 1000.0 };
            out.push(Tok::Num(v));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(s[st..i].to_ascii_lowercase()));
        } else if b"+-*/%^(),".contains(&c) {
            out.push(Tok::Op(c as char));
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    step: f64,
    range: f64,
}

impl Parser {
    fn peek_op(&self) -> Option<char> {
        match self.toks.get(self.pos) {
            Some(Tok::Op(c)) => Some(*c),
            _ => None,
        }
    }

    fn expr(&mut self) -> Option<f64> {
        let mut v = self.term()?;
        while let Some(c @ ('+' | '-')) = self.peek_op() {
            self.pos += 1;
            let r = self.term()?;
            v = if c == '+' { v + r } else { v - r };
        }
        Some(v)
    }

    fn term(&mut self) -> Option<f64> {
        let mut v = self.unary()?;
        while let Some(c @ ('*' | '/' | '%')) = self.peek_op() {
            self.pos += 1;
            let r = self.unary()?;
            v = match c {
                '*' => v * r,
                '/' => v / r,
                _ => v % r,
            };
        }
        Some(v)
    }

    fn unary(&mut self) -> Option<f64> {
        match self.peek_op() {
            Some('-') => {
                self.pos += 1;
                Some(-self.unary()?)
            }
            Some('+') => {
                self.pos += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Option<f64> {
        let base = self.atom()?;
        if self.peek_op() == Some('^') {
            self.pos += 1;
            let e = self.unary()?;
            return Some(base.powf(e));
        }
        Some(base)
    }

    fn atom(&mut self) -> Option<f64> {
        match self.toks.get(self.pos).cloned()? {
            Tok::Num(v) => {
                self.pos += 1;
                Some(v)
            }
            Tok::Op('(') => {
                self.pos += 1;
                let v = self.expr()?;
                if self.peek_op() != Some(')') {
                    return None;
                }
                self.pos += 1;
                Some(v)
            }
            Tok::Ident(name) => {
                self.pos += 1;
                if self.peek_op() != Some('(') {
                    return None;
                }
                self.pos += 1;
                let mut args = Vec::new();
                if self.peek_op() != Some(')') {
                    loop {
                        args.push(self.expr()?);
                        match self.peek_op() {
                            Some(',') => self.pos += 1,
                            Some(')') => break,
                            _ => return None,
                        }
                    }
                }
                self.pos += 1;
                match (name.as_str(), args.as_slice()) {
                    ("step", []) => Some(self.step),
                    ("range", []) => Some(self.range),
                    ("min_of", [a, rest @ ..]) => Some(rest.iter().fold(*a, |x, y| if y < &x { *y } else { x })),
                    ("max_of", [a, rest @ ..]) => Some(rest.iter().fold(*a, |x, y| if y > &x { *y } else { x })),
                    _ => None,
                }
            }
            Tok::Op(_) => None,
        }
    }
}

/// The label name used to carry `anchored`/`smoothed` through the parser, which does not
/// know these modifiers: `m[5m] anchored` becomes `m{__norn_ext__="anchored"}[5m]`.
pub const EXT_LABEL: &str = "__norn_ext__";

/// Rewrites `anchored`/`smoothed` modifiers into a marker matcher (see [`EXT_LABEL`]).
pub fn mark_extended(query: &str) -> Cow<'_, str> {
    let lower = query.to_ascii_lowercase();
    if !lower.contains("anchored") && !lower.contains("smoothed") {
        return Cow::Borrowed(query);
    }
    let clause = regex::Regex::new(r"(?i)(offset\s+[-+]?[\w.]+|@\s*[-+]?[\w.]+(\(\))?)\s*$").expect("static regex");
    let mut s = query.to_string();
    let mut changed = false;
    loop {
        let b = s.as_bytes();
        // Find the next modifier keyword outside strings and braces.
        let mut i = 0;
        let mut found = None;
        while i < b.len() {
            let c = b[i];
            if c == b'"' || c == b'\'' || c == b'`' {
                i = skip_string(b, i);
                continue;
            }
            if c == b'{' {
                while i < b.len() && b[i] != b'}' {
                    if b[i] == b'"' || b[i] == b'\'' || b[i] == b'`' {
                        i = skip_string(b, i);
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            for kw in ["anchored", "smoothed"] {
                if b.len() >= i + kw.len()
                    // Bytes: `i + kw.len()` may fall inside a multi-byte character.
                    && b[i..i + kw.len()].eq_ignore_ascii_case(kw.as_bytes())
                    && (i == 0 || !is_ident(b[i - 1]))
                    && (i + kw.len() == b.len() || !is_ident(b[i + kw.len()]))
                {
                    found = Some((i, kw));
                }
            }
            if found.is_some() {
                break;
            }
            i += 1;
        }
        let Some((at, kw)) = found else { break };
        // What precedes the keyword: a range `[…]` or an instant selector, possibly
        // followed by `@ …` and `offset …` clauses.
        let mut j = at;
        while j > 0 && b[j - 1].is_ascii_whitespace() {
            j -= 1;
        }
        while let Some(m) = clause.find(&s[..j]) {
            if m.start() > 0 && is_ident(b[m.start() - 1]) {
                break;
            }
            j = m.start();
            while j > 0 && b[j - 1].is_ascii_whitespace() {
                j -= 1;
            }
        }
        if j == 0 {
            break;
        }
        let mut sel_end = j;
        if b[j - 1] == b']' {
            // Walk back to the matching '['.
            let mut depth = 0;
            let mut k = j;
            while k > 0 {
                k -= 1;
                if b[k] == b']' {
                    depth += 1;
                } else if b[k] == b'[' {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
            }
            sel_end = k;
        }
        let marker = format!("{EXT_LABEL}=\"{kw}\"");
        let mut n = String::with_capacity(s.len() + marker.len() + 2);
        if sel_end > 0 && b[sel_end - 1] == b'}' {
            let inner_empty = s[..sel_end - 1].trim_end().ends_with('{');
            n.push_str(&s[..sel_end - 1]);
            if !inner_empty {
                n.push_str(", ");
            }
            n.push_str(&marker);
            n.push('}');
        } else {
            n.push_str(&s[..sel_end]);
            n.push('{');
            n.push_str(&marker);
            n.push('}');
        }
        n.push_str(&s[sel_end..at]);
        n.push_str(&s[at + kw.len()..]);
        s = n;
        changed = true;
    }
    if changed { Cow::Owned(s) } else { Cow::Borrowed(query) }
}

/// Adds a marker matcher to the selector given as `info()`'s second argument, which the
/// parser would otherwise reject when all its matchers match the empty string
/// (`info(m, {data=~".*"})`); `info()` ignores the marker.
pub fn mark_info_selector(query: &str) -> Cow<'_, str> {
    if !query.contains("info(") {
        return Cow::Borrowed(query);
    }
    let b = query.as_bytes();
    let in_string = string_mask(query);
    let mut out = String::with_capacity(query.len() + 24);
    let mut last = 0;
    let mut i = 0;
    let mut changed = false;
    while let Some(rel) = query[i..].find("info(") {
        let at = i + rel;
        i = at + 5;
        if (at > 0 && is_ident(b[at - 1])) || in_string[at] {
            continue;
        }
        let Some(close) = matching(b, at + 4, b'(', b')') else { break };
        let args = &query[at + 5..close];
        let parts = split_top(args, b',');
        if parts.len() != 2 {
            continue;
        }
        let second = parts[1];
        let Some(open_rel) = second.find('{') else { continue };
        let Some(close_rel) = second.rfind('}') else { continue };
        let abs_close = at + 5 + parts[0].len() + 1 + close_rel;
        let inner_empty = second[open_rel + 1..close_rel].trim().is_empty();
        out.push_str(&query[last..abs_close]);
        if !inner_empty {
            out.push_str(", ");
        }
        out.push_str(&format!("{EXT_LABEL}=\"info\""));
        last = abs_close;
        changed = true;
    }
    if !changed {
        return Cow::Borrowed(query);
    }
    out.push_str(&query[last..]);
    Cow::Owned(out)
}

/// All pre-parse rewrites: duration expressions, `anchored`/`smoothed`, `info()` selectors.
pub fn preprocess(query: &str, step_ms: i64, range_ms: i64) -> String {
    let folded = fold(query, step_ms, range_ms);
    let marked = mark_extended(&folded);
    let marked = mark_info_selector(&marked);
    let marked = mark_trim(&marked);
    mark_invalid_utf8(&marked).into_owned()
}

/// Private-use code points standing for raw bytes 0x80..=0xff of non-UTF-8 Go strings.
pub const RAW_BYTE_BASE: u32 = 0xF700;

/// Whether `s` holds a raw-byte stand-in, i.e. was not valid UTF-8 in Go.
pub fn has_raw_bytes(s: &str) -> bool {
    s.chars().any(|c| (RAW_BYTE_BASE + 0x80..=RAW_BYTE_BASE + 0xff).contains(&(c as u32)))
}

/// Go's `%q` of a string that may hold raw-byte stand-ins (printed as `\xNN`).
pub fn quote_raw(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        let u = c as u32;
        if (RAW_BYTE_BASE + 0x80..=RAW_BYTE_BASE + 0xff).contains(&u) {
            out.push_str(&format!("\\x{:02x}", u - RAW_BYTE_BASE));
        } else {
            let q = norn_model::format::go_quote(&c.to_string());
            out.push_str(&q[1..q.len() - 1]);
        }
    }
    out.push('"');
    out
}

/// Go string literals may hold bytes that are not UTF-8 (`"\xff"`); Rust strings cannot.
/// Such literals get private-use stand-ins for their high `\x` escapes, so that label-name checks
/// can reject them as Prometheus does.
pub fn mark_invalid_utf8(query: &str) -> Cow<'_, str> {
    if !query.contains("\\x") {
        return Cow::Borrowed(query);
    }
    let re = regex::Regex::new(r"\\x([89a-fA-F][0-9a-fA-F])").expect("static regex");
    let b = query.as_bytes();
    let mut out = String::with_capacity(query.len());
    let mut i = 0;
    let mut last = 0;
    let mut changed = false;
    while i < b.len() {
        if b[i] == b'"' || b[i] == b'\'' {
            let end = skip_string(b, i);
            let lit = &query[i..end];
            if let Some(bytes) = go_unquote_bytes(lit)
                && std::str::from_utf8(&bytes).is_err()
            {
                out.push_str(&query[last..i]);
                let replaced = re.replace_all(lit, |c: &regex::Captures<'_>| {
                    let byte = u32::from_str_radix(&c[1], 16).unwrap_or(0xff);
                    char::from_u32(RAW_BYTE_BASE + byte).map(String::from).unwrap_or_default()
                });
                out.push_str(&replaced);
                last = end;
                changed = true;
            }
            i = end;
            continue;
        }
        i += 1;
    }
    if !changed {
        return Cow::Borrowed(query);
    }
    out.push_str(&query[last..]);
    Cow::Owned(out)
}

/// The bytes of a Go double- or single-quoted literal (escapes decoded), if well formed.
fn go_unquote_bytes(lit: &str) -> Option<Vec<u8>> {
    let inner = lit.get(1..lit.len().checked_sub(1)?)?;
    let b = inner.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'x' => {
                    let v = u8::from_str_radix(inner.get(i + 2..i + 4)?, 16).ok()?;
                    out.push(v);
                    i += 4;
                }
                c => {
                    out.push(b'\\');
                    out.push(c);
                    i += 2;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Prefix of a regex matcher operand that promql-parser could not compile (it uses Rust's
/// regex syntax, Prometheus Go's): the Go pattern follows, escaped so that Rust accepts it.
/// [`go_regex_source`] recovers the pattern, which the matchers then compile as Go does.
pub const GO_RE_MARK: &str = "__norn_go_re__:";

/// Replaces the operands of `=~`/`!~` that are valid Go but not Rust regexes (`x{`,
/// `\Q…\E`, `\012`) by a marked, escaped form (see [`GO_RE_MARK`]). Invalid Go patterns
/// are left alone for the checks to report.
pub fn mark_go_regex(query: &str) -> Cow<'_, str> {
    if !query.contains("=~") && !query.contains("!~") {
        return Cow::Borrowed(query);
    }
    let b = query.as_bytes();
    let (mut out, mut last, mut i) = (String::new(), 0, 0);
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            b'=' | b'!' if b.get(i + 1) == Some(&b'~') => {
                let mut j = i + 2;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                if j < b.len() && matches!(b[j], b'"' | b'\'' | b'`') {
                    let end = skip_string(b, j);
                    if let Some(v) = crate::check::unquote(&query[j..end])
                        && regex::Regex::new(&format!("^(?:{v})$")).is_err()
                        && norn_model::goregex::translate(&format!("^(?:{v})$")).is_ok()
                    {
                        out.push_str(&query[last..j]);
                        out.push_str(&norn_model::format::go_quote(&format!("{GO_RE_MARK}{}", regex::escape(&v))));
                        last = end;
                    }
                    i = end;
                } else {
                    i = j;
                }
            }
            _ => i += 1,
        }
    }
    if last == 0 {
        return Cow::Borrowed(query);
    }
    out.push_str(&query[last..]);
    Cow::Owned(out)
}

/// The Go pattern of a matcher operand, undoing [`mark_go_regex`].
pub fn go_regex_source(value: &str) -> String {
    let Some(escaped) = value.strip_prefix(GO_RE_MARK) else {
        return value.to_string();
    };
    // `regex::escape` only puts a backslash before metacharacters.
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Function names standing in for the trim operators (`</` keeps what is below, `>/`
/// what is above); the parser does not know the operators, so `a </ b` is rewritten to
/// `a > __norn_trim_upper_v(b)` (or `_s` for a scalar `b`) and evaluated as the trim.
pub const TRIM_FUNCS: [&str; 4] =
    ["__norn_trim_upper_s", "__norn_trim_upper_v", "__norn_trim_lower_s", "__norn_trim_lower_v"];

/// Registers the trim stand-in functions with the parser (once per process).
pub fn register_trim_functions() {
    use promql_parser::parser::value::ValueType;
    use promql_parser::parser::{Function, register_extra_functions};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut fs = Vec::new();
        for name in TRIM_FUNCS {
            let t = if name.ends_with("_s") { ValueType::Scalar } else { ValueType::Vector };
            fs.push(Function::new(name, vec![t], 0, t, false));
        }
        // Registration only fails on a clash with a built-in name, which these cannot have.
        let _ = register_extra_functions(fs);
    });
}

/// Rewrites `a </ b` and `a >/ b` (see [`TRIM_FUNCS`]).
pub fn mark_trim(query: &str) -> Cow<'_, str> {
    if !query.contains(">/") && !query.contains("</") {
        return Cow::Borrowed(query);
    }
    register_trim_functions();
    let re = regex::Regex::new(
        r"(>/|</)(\s*(?:on|ignoring)\s*\([^)]*\))?\s*([-+]?(?:[0-9][\w.]*|Inf|NaN|inf|nan)|[A-Za-z_:][\w:]*(?:\{[^}]*\})?)",
    )
    .expect("static regex");
    // Only outside string literals: `{path="a</b"}` is no operator.
    let in_string = string_mask(query);
    let out = re.replace_all(query, |c: &regex::Captures<'_>| {
        let start = c.get(0).map(|m| m.start()).unwrap_or(0);
        if in_string[start] {
            return c[0].to_string();
        }
        let kind = if &c[1] == "</" { "upper" } else { "lower" };
        let operand = &c[3];
        let scalar = operand.trim_start_matches(['-', '+']).starts_with(|ch: char| ch.is_ascii_digit())
            || matches!(operand.trim_start_matches(['-', '+']).to_ascii_lowercase().as_str(), "inf" | "nan");
        let m = c.get(2).map(|m| m.as_str()).unwrap_or("");
        format!("> bool{m} __norn_trim_{kind}_{}({operand})", if scalar { "s" } else { "v" })
    });
    Cow::Owned(out.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds() {
        let cases = [
            ("rate(x[26m+4m])", 0, 0, "rate(x[1800000ms])"),
            ("rate(x[5m])", 0, 0, "rate(x[5m])"),
            ("x[2m*(10+5)]", 0, 0, "x[1800000ms]"),
            ("x[29s+1s:5s+5s]", 0, 0, "x[30000ms:10000ms]"),
            ("x offset (100 + 2)", 0, 0, "x offset 102000ms"),
            ("x offset 100 + 2", 0, 0, "x offset 100000ms + 2"),
            ("x offset -2 ^ 2", 0, 0, "x offset -2000ms ^ 2"),
            ("x offset (-2 ^ 2)", 0, 0, "x offset -4000ms"),
            ("x[step()]", 10_000, 0, "x[10000ms]"),
            ("x offset min_of(step(), 1s)+8000", 5_000, 0, "x offset 1000ms+8000"),
            ("x offset 5m", 0, 0, "x offset 5m"),
            ("x{a=\"[1+1]\"}[1m]", 0, 0, "x{a=\"[1+1]\"}[1m]"),
        ];
        for (q, step, range, want) in cases {
            assert_eq!(fold(q, step, range), want, "{q}");
        }
    }
}

#[cfg(test)]
mod ext_tests {
    use super::*;

    #[test]
    fn marks_go_only_regexes() {
        let cases = [
            (r#"m{a=~"x{"}"#, true),
            (r#"m{a!~ "\\Q.*\\E", b="x{"}"#, true),
            (r#"m{a=~`\012|{`}"#, true),
            (r#"m{a=~'a{,3}'}"#, true),
            (r#"m{a=~"a.*"}"#, false),
            (r#"m{a=~"("}"#, false),
            (r#"m{a="x{"}"#, false),
        ];
        for (q, marked) in cases {
            let out = mark_go_regex(q);
            assert_eq!(out.contains(GO_RE_MARK), marked, "{q} -> {out}");
        }
        let out = mark_go_regex(r#"m{a=~"x{\\Q.*\\E\"", b="c"}"#);
        let expr = crate::engine::parse(&out).unwrap();
        let promql_parser::parser::Expr::VectorSelector(vs) = expr else { panic!("{out}") };
        let m = &vs.matchers.matchers[0];
        assert_eq!(go_regex_source(&m.value), r#"x{\Q.*\E""#);
        assert_eq!(vs.matchers.matchers[1].value, "c");
        for v in [r"x{\Q\\E", "a\"b'c`", "\u{263a}{,3}\\", "", "\\\\\"", "#&-~ \n"] {
            assert_eq!(go_regex_source(&format!("{GO_RE_MARK}{}", regex::escape(v))), v);
        }
        assert_eq!(go_regex_source("plain.*"), "plain.*");
    }

    #[test]
    fn marks() {
        assert_eq!(mark_extended("rate(m[5m] anchored)"), "rate(m{__norn_ext__=\"anchored\"}[5m] )");
        assert_eq!(mark_extended("rate(m{a=\"b\"}[5m] smoothed)"), "rate(m{a=\"b\", __norn_ext__=\"smoothed\"}[5m] )");
        assert_eq!(mark_extended("m smoothed"), "m{__norn_ext__=\"smoothed\"} ");
        assert_eq!(mark_extended("rate(m[5m])"), "rate(m[5m])");
    }

    /// Found by the `promql_eval` fuzz target: a keyword prefix followed by a multi-byte
    /// character used to slice a `str` inside that character.
    #[test]
    fn keyword_prefix_before_multibyte_char() {
        for q in ["m smoothed anchoreſ", "anchoreſ x", "m offseſ", "m[1m] offseſ 1m", "smoothed offseſ"] {
            let _ = mark_extended(q);
            let _ = fold(q, 60_000, 0);
        }
        assert_eq!(fold("m offseſ", 60_000, 0), "m offseſ");
    }
}

#[cfg(test)]
mod trim_tests {
    use super::*;

    #[test]
    fn trim_rewrites_skip_strings() {
        assert_eq!(mark_trim("h </ 2"), "h > bool __norn_trim_upper_s(2)");
        assert_eq!(mark_trim("h >/ on (l) f"), "h > bool on (l) __norn_trim_lower_v(f)");
        assert_eq!(mark_trim(r#"h{p="a</b"}"#), r#"h{p="a</b"}"#);
    }
}
