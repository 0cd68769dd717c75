//! Parsing of the promqltest script language: series descriptions, value sequences and
//! native-histogram literals (see FORMAT.md in the conformance directory).

use norn_model::{CounterResetHint, FloatHistogram, Labels, LabelsBuilder, Span};

use crate::value::stale_nan;

/// One slot of an expanded value sequence.
#[derive(Debug, Clone)]
pub enum SeqValue {
    /// No sample in this slot.
    Omitted,
    /// A float (possibly the stale marker).
    Float(f64),
    /// A histogram; the flag says whether the literal set `counter_reset_hint`.
    Histogram(Box<FloatHistogram>, bool),
}

/// Parses a duration such as `5m`, `1h30m`, `10s`, `0` into milliseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    let (neg, body) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    if body.is_empty() {
        return Err(format!("invalid duration {s:?}"));
    }
    let b = body.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    while i < b.len() {
        let st = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if st == i {
            return Err(format!("invalid duration {s:?}"));
        }
        let n: i64 = body[st..i].parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let us = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let mult = match &body[us..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(format!("invalid duration {s:?}")),
        };
        total = total.saturating_add(n.saturating_mul(mult));
    }
    Ok(if neg { -total } else { total })
}

/// Parses a PromQL number literal (decimal, hex, Inf, NaN, or a duration in seconds).
pub fn parse_number(s: &str) -> Option<f64> {
    let (sign, body) = match s.as_bytes().first() {
        Some(b'-') => (-1.0, &s[1..]),
        Some(b'+') => (1.0, &s[1..]),
        _ => (1.0, s),
    };
    let lower = body.to_ascii_lowercase();
    let v = if lower == "inf" {
        f64::INFINITY
    } else if lower == "nan" {
        f64::NAN
    } else if let Some(h) = lower.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()? as f64
    } else if let Ok(v) = body.parse::<f64>() {
        if body.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E') {
            return None;
        }
        v
    } else if let Ok(ms) = parse_duration(body) {
        ms as f64 / 1000.0
    } else {
        return None;
    };
    Some(sign * v)
}

/// Splits `s` at the longest prefix that is a number; returns (value, rest).
fn number_prefix(s: &str) -> Option<(f64, &str)> {
    let b = s.as_bytes();
    let mut end = 0;
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let lower = s[i..].to_ascii_lowercase();
    if lower.starts_with("inf") {
        return Some((parse_number(&s[..i + 3])?, &s[i + 3..]));
    }
    if lower.starts_with("nan") {
        return Some((parse_number(&s[..i + 3])?, &s[i + 3..]));
    }
    // `0x10` in a sequence is "0 repeated 10 times"; only digits with a hex letter are hex.
    if lower.starts_with("0x")
        && lower[2..].chars().take_while(|c| c.is_ascii_hexdigit()).any(|c| c.is_ascii_alphabetic())
    {
        let mut j = i + 2;
        while j < b.len() && b[j].is_ascii_hexdigit() {
            j += 1;
        }
        return Some((parse_number(&s[..j])?, &s[j..]));
    }
    // Longest prefix that parses; try from the longest candidate of number characters.
    while i < b.len()
        && (b[i].is_ascii_alphanumeric()
            || b[i] == b'.'
            || ((b[i] == b'+' || b[i] == b'-') && i > 0 && (b[i - 1] == b'e' || b[i - 1] == b'E')))
    {
        if b[i] == b'x' {
            break;
        }
        i += 1;
        if parse_number(&s[..i]).is_some() {
            end = i;
        }
    }
    if end == 0 {
        return None;
    }
    Some((parse_number(&s[..end])?, &s[end..]))
}

/// Parses a label set with optional metric name: `name{a="b"}`, `{}`, `name`, `{"x.y"}`.
/// Returns the labels and the rest of the line.
pub fn parse_series_labels(s: &str) -> Result<(Labels, &str), String> {
    let s = s.trim_start();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
        i += 1;
    }
    let mut lb = LabelsBuilder::new();
    if i > 0 {
        lb.set(norn_model::METRIC_NAME, &s[..i]);
    }
    let mut rest = &s[i..];
    if rest.starts_with('{') && !rest.starts_with("{{") {
        rest = &rest[1..];
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            // Label name: identifier or quoted.
            let (name, r) = if rest.starts_with('"') || rest.starts_with('\'') || rest.starts_with('`') {
                parse_quoted(rest)?
            } else {
                let nb = rest.as_bytes();
                let mut j = 0;
                while j < nb.len() && (nb[j].is_ascii_alphanumeric() || nb[j] == b'_') {
                    j += 1;
                }
                if j == 0 {
                    return Err(format!("invalid label set near {rest:?}"));
                }
                (rest[..j].to_string(), &rest[j..])
            };
            let r = r.trim_start();
            if let Some(r2) = r.strip_prefix('=') {
                let r2 = r2.trim_start();
                let (val, r3) = parse_quoted(r2)?;
                lb.set(&name, &val);
                rest = r3;
            } else {
                // A bare quoted name is the metric name.
                lb.set(norn_model::METRIC_NAME, &name);
                rest = r;
            }
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            }
        }
    } else if i == 0 {
        return Err(format!("invalid series description {s:?}"));
    }
    Ok((lb.build(), rest))
}

/// Parses a quoted string with Go escapes; returns it and the rest.
pub fn parse_quoted(s: &str) -> Result<(String, &str), String> {
    let q = s.chars().next().ok_or("expected string")?;
    if q != '"' && q != '\'' && q != '`' {
        return Err(format!("expected quoted string at {s:?}"));
    }
    let mut out = String::new();
    let mut it = s[1..].char_indices();
    while let Some((i, c)) = it.next() {
        if c == q {
            return Ok((out, &s[1 + i + 1..]));
        }
        if c == '\\' && q != '`' {
            let (_, e) = it.next().ok_or("unterminated escape")?;
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                '\'' => out.push('\''),
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'v' => out.push('\x0b'),
                'x' => {
                    let h: String = (0..2).filter_map(|_| it.next().map(|x| x.1)).collect();
                    let v = u8::from_str_radix(&h, 16).map_err(|_| "bad \\x escape")?;
                    out.push(v as char);
                }
                'u' | 'U' => {
                    let n = if e == 'u' { 4 } else { 8 };
                    let h: String = (0..n).filter_map(|_| it.next().map(|x| x.1)).collect();
                    let v = u32::from_str_radix(&h, 16).map_err(|_| "bad unicode escape")?;
                    out.push(char::from_u32(v).ok_or("bad unicode escape")?);
                }
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        } else {
            out.push(c);
        }
    }
    Err("unterminated string".into())
}

/// Splits a value sequence into items, keeping histogram literals whole.
fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let st = i;
        let mut depth = 0i32;
        while i < b.len() {
            if s[i..].starts_with("{{") {
                depth += 1;
                i += 2;
                continue;
            }
            if s[i..].starts_with("}}") {
                depth -= 1;
                i += 2;
                continue;
            }
            if depth == 0 && b[i].is_ascii_whitespace() {
                break;
            }
            i += 1;
        }
        out.push(s[st..i].to_string());
    }
    out
}

/// Expands a value sequence (`1+2x3 _ stale {{…}}x2`).
pub fn parse_values(s: &str) -> Result<Vec<SeqValue>, String> {
    let mut out = Vec::new();
    for tok in tokenize(s) {
        if tok == "_" {
            out.push(SeqValue::Omitted);
            continue;
        }
        if let Some(k) = tok.strip_prefix("_x") {
            let k: usize = k.parse().map_err(|_| format!("bad repetition {tok:?}"))?;
            out.extend(std::iter::repeat_n(SeqValue::Omitted, k));
            continue;
        }
        if tok == "stale" {
            out.push(SeqValue::Float(stale_nan()));
            continue;
        }
        if tok.starts_with("{{") {
            let end = tok.find("}}").ok_or("unterminated histogram")?;
            let (h, set) = parse_histogram(&tok[2..end])?;
            let rest = &tok[end + 2..];
            if rest.is_empty() {
                out.push(SeqValue::Histogram(Box::new(h), set));
            } else if let Some(k) = rest.strip_prefix('x') {
                let k: usize = k.parse().map_err(|_| format!("bad repetition {tok:?}"))?;
                for _ in 0..=k {
                    out.push(SeqValue::Histogram(Box::new(h.clone()), set));
                }
            } else {
                let sign = if rest.starts_with('+') { 1.0 } else { -1.0 };
                let r = &rest[1..];
                let r = r.strip_prefix("{{").ok_or("expected histogram increment")?;
                let e2 = r.find("}}").ok_or("unterminated histogram")?;
                let (d, _) = parse_histogram(&r[..e2])?;
                let k: usize = r[e2 + 2..]
                    .strip_prefix('x')
                    .ok_or("expected x after histogram increment")?
                    .parse()
                    .map_err(|_| format!("bad repetition {tok:?}"))?;
                let mut cur = h.clone();
                for i in 0..=k {
                    if i > 0 {
                        let mut n = if sign > 0.0 {
                            crate::histogram::add(&cur, &d)?
                        } else {
                            crate::histogram::sub(&cur, &d)?
                        };
                        n.counter_reset_hint = h.counter_reset_hint;
                        cur = n;
                    }
                    out.push(SeqValue::Histogram(Box::new(cur.clone()), set));
                }
            }
            continue;
        }
        let (v, rest) = number_prefix(&tok).ok_or_else(|| format!("invalid value {tok:?}"))?;
        if rest.is_empty() {
            out.push(SeqValue::Float(v));
            continue;
        }
        let (step, rest2) = if rest.starts_with('+') || rest.starts_with('-') {
            number_prefix(rest).ok_or_else(|| format!("invalid increment in {tok:?}"))?
        } else {
            (0.0, rest)
        };
        let k: usize = rest2
            .strip_prefix('x')
            .ok_or_else(|| format!("invalid value {tok:?}"))?
            .parse()
            .map_err(|_| format!("bad repetition {tok:?}"))?;
        let mut cur = v;
        for i in 0..=k {
            if i > 0 {
                cur += step;
            }
            out.push(SeqValue::Float(cur));
        }
    }
    Ok(out)
}

fn parse_list(s: &str) -> Result<Vec<f64>, String> {
    s.split_whitespace().map(|x| parse_number(x).ok_or_else(|| format!("bad number {x:?}"))).collect()
}

/// Parses the inside of `{{ … }}`.
pub fn parse_histogram(s: &str) -> Result<(FloatHistogram, bool), String> {
    let mut h = FloatHistogram::default();
    let mut hint_set = false;
    let mut rest = s.trim();
    let mut buckets: Vec<f64> = vec![];
    let mut n_buckets: Vec<f64> = vec![];
    let (mut offset, mut n_offset) = (0i32, 0i32);
    while !rest.is_empty() {
        let colon = rest.find(':').ok_or_else(|| format!("bad histogram item near {rest:?}"))?;
        let key = rest[..colon].trim();
        let after = rest[colon + 1..].trim_start();
        let (val, r) = if after.starts_with('[') {
            let close = after.find(']').ok_or("unterminated list")?;
            (&after[1..close], &after[close + 1..])
        } else {
            let e = after.find(char::is_whitespace).unwrap_or(after.len());
            (&after[..e], &after[e..])
        };
        rest = r.trim_start();
        let num = || parse_number(val.trim()).ok_or_else(|| format!("bad histogram value {val:?}"));
        match key {
            "schema" => h.schema = num()? as i32,
            "sum" => h.sum = num()?,
            "count" => h.count = num()?,
            "z_bucket" => h.zero_count = num()?,
            "z_bucket_w" => h.zero_threshold = num()?,
            "buckets" => buckets = parse_list(val)?,
            "n_buckets" => n_buckets = parse_list(val)?,
            "offset" => offset = num()? as i32,
            "n_offset" => n_offset = num()? as i32,
            "custom_values" => h.custom_values = parse_list(val)?,
            "counter_reset_hint" => {
                hint_set = true;
                h.counter_reset_hint = match val.trim() {
                    "unknown" => CounterResetHint::Unknown,
                    "reset" => CounterResetHint::CounterReset,
                    "not_reset" => CounterResetHint::NotCounterReset,
                    "gauge" => CounterResetHint::Gauge,
                    other => return Err(format!("bad counter_reset_hint {other:?}")),
                }
            }
            other => return Err(format!("unknown histogram key {other:?}")),
        }
    }
    if !buckets.is_empty() {
        h.positive_spans = vec![Span { offset, length: buckets.len() as u32 }];
        h.positive_buckets = buckets;
    }
    if !n_buckets.is_empty() {
        h.negative_spans = vec![Span { offset: n_offset, length: n_buckets.len() as u32 }];
        h.negative_buckets = n_buckets;
    }
    Ok((h, hint_set))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(s: &str) -> Vec<Option<f64>> {
        parse_values(s)
            .unwrap()
            .into_iter()
            .map(|v| match v {
                SeqValue::Float(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn sequences() {
        let cases: &[(&str, Vec<Option<f64>>)] = &[
            ("0+10x2", vec![Some(0.0), Some(10.0), Some(20.0)]),
            ("1-2x2", vec![Some(1.0), Some(-1.0), Some(-3.0)]),
            ("-2+4x1", vec![Some(-2.0), Some(2.0)]),
            ("_x2 5", vec![None, None, Some(5.0)]),
            ("3x1", vec![Some(3.0), Some(3.0)]),
            ("0x3d", vec![Some(61.0)]),
            ("1e3 -Inf", vec![Some(1000.0), Some(f64::NEG_INFINITY)]),
            ("5m", vec![Some(300.0)]),
        ];
        for (s, want) in cases {
            assert_eq!(&floats(s), want, "{s}");
        }
    }

    #[test]
    fn histogram_literal() {
        let v = parse_values("{{schema:0 sum:5 count:4 buckets:[1 2 1]}}x1 {{}}").unwrap();
        assert_eq!(v.len(), 3);
        match &v[0] {
            SeqValue::Histogram(h, set) => {
                assert_eq!(h.positive_buckets, vec![1.0, 2.0, 1.0]);
                assert!(!set);
            }
            _ => panic!("not a histogram"),
        }
    }

    #[test]
    fn labels() {
        let (l, rest) = parse_series_labels(r#"foo{a="1", b='x\n'} 1 2"#).unwrap();
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("b"), Some("x\n"));
        assert_eq!(rest.trim(), "1 2");
        let (l, _) = parse_series_labels(r#"{"foo.bar", x="y"} 1"#).unwrap();
        assert_eq!(l.get("__name__"), Some("foo.bar"));
    }
}

/// Parses a signed duration at the start of `s` (`-1m`, `+30s`, `1m30s`, `0`), returning
/// milliseconds and the rest.
fn duration_prefix(s: &str) -> Option<(i64, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    let neg = match b.first() {
        Some(b'-') => {
            i = 1;
            true
        }
        Some(b'+') => {
            i = 1;
            false
        }
        _ => false,
    };
    let mut total: i64 = 0;
    let mut any = false;
    loop {
        let st = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if st == i {
            break;
        }
        let n: i64 = s[st..i].parse().ok()?;
        let unit = if s[i..].starts_with("ms") {
            i += 2;
            1
        } else {
            match b.get(i) {
                Some(b's') => 1000,
                Some(b'm') => 60_000,
                Some(b'h') => 3_600_000,
                Some(b'd') => 86_400_000,
                Some(b'w') => 604_800_000,
                Some(b'y') => 31_536_000_000,
                _ => {
                    // A bare number is only allowed as a lone `0`.
                    if n != 0 {
                        return None;
                    }
                    any = true;
                    break;
                }
            }
        };
        if unit != 1 {
            i += 1;
        }
        total = total.checked_add(n.checked_mul(unit)?)?;
        any = true;
    }
    if !any {
        return None;
    }
    Some((if neg { -total } else { total }, &s[i..]))
}

/// Expands a start-timestamp sequence (`_ -30s-1mx2 -1m`): per slot, the offset from the
/// sample's own timestamp, or `None`.
pub fn parse_st_values(s: &str) -> Result<Vec<Option<i64>>, String> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        if tok == "_" {
            out.push(None);
            continue;
        }
        if let Some(k) = tok.strip_prefix("_x") {
            let k: usize = k.parse().map_err(|_| format!("bad repetition {tok:?}"))?;
            out.extend(std::iter::repeat_n(None, k));
            continue;
        }
        let (v, rest) = duration_prefix(tok).ok_or_else(|| format!("bad start timestamp {tok:?}"))?;
        if rest.is_empty() {
            out.push(Some(v));
            continue;
        }
        let (step, rest) = if rest.starts_with('+') || rest.starts_with('-') {
            duration_prefix(rest).ok_or_else(|| format!("bad start timestamp step {tok:?}"))?
        } else {
            (0, rest)
        };
        let k: usize = rest
            .strip_prefix('x')
            .ok_or_else(|| format!("bad start timestamp {tok:?}"))?
            .parse()
            .map_err(|_| format!("bad repetition {tok:?}"))?;
        for i in 0..=k as i64 {
            out.push(Some(v + i * step));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod st_tests {
    use super::*;

    #[test]
    fn st_sequences() {
        assert_eq!(parse_st_values("_ -30s-1mx2").unwrap(), vec![None, Some(-30_000), Some(-90_000), Some(-150_000)]);
        assert_eq!(
            parse_st_values("-59999msx1 0-1mx1 +1m 1ms").unwrap(),
            vec![Some(-59_999), Some(-59_999), Some(0), Some(-60_000), Some(60_000), Some(1)]
        );
        assert_eq!(parse_st_values("-0msx1").unwrap(), vec![Some(0), Some(0)]);
    }
}
