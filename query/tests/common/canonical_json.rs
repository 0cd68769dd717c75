//! JSON put in a canonical form for byte comparisons with Prometheus: object members sorted
//! by key, whitespace dropped, and every number and string token kept exactly as written
//! (so `1.500` stays distinct from `1.5`, and `\u003c` from `<`). Comparing the parsed values
//! would hide exactly the differences a client parsing strictly, or a cache keyed on bytes,
//! would see. Shared by `query/tests` and `tests/tests` (included by path).

#![allow(dead_code)]

/// The canonical form of `text`, or where and why it is not JSON.
pub fn canonical_json(text: &str) -> Result<String, String> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut out = String::with_capacity(text.len());
    value(b, &mut i, &mut out)?;
    skip_ws(b, &mut i);
    if i != b.len() {
        return Err(format!("trailing bytes at {i}"));
    }
    Ok(out)
}

/// [`canonical_json`], panicking with the text when it is not JSON.
pub fn canonical(text: &str) -> String {
    canonical_json(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// [`canonical`] of a JSON object without its top-level members named in `leave_out`
/// (e.g. `warnings`, which differ by design between two servers).
pub fn canonical_without(text: &str, leave_out: &[&str]) -> String {
    let c = canonical(text);
    let b = c.as_bytes();
    if b.first() != Some(&b'{') {
        return c;
    }
    // The canonical form has no whitespace: walk its members.
    let mut i = 1;
    let mut kept = Vec::new();
    while i < b.len() && b[i] != b'}' {
        let start = i;
        let mut key = String::new();
        string(b, &mut i, &mut key).unwrap_or_else(|e| panic!("{e}: {c}"));
        i += 1; // ':'
        let mut v = String::new();
        value(b, &mut i, &mut v).unwrap_or_else(|e| panic!("{e}: {c}"));
        if !leave_out.iter().any(|l| key == format!("\"{l}\"")) {
            kept.push(c[start..i].to_string());
        }
        if b.get(i) == Some(&b',') {
            i += 1;
        }
    }
    format!("{{{}}}", kept.join(","))
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\n' | b'\r') {
        *i += 1;
    }
}

fn value(b: &[u8], i: &mut usize, out: &mut String) -> Result<(), String> {
    skip_ws(b, i);
    match b.get(*i) {
        None => Err("unexpected end".into()),
        Some(b'{') => {
            *i += 1;
            let mut members: Vec<(String, String)> = Vec::new();
            skip_ws(b, i);
            if b.get(*i) == Some(&b'}') {
                *i += 1;
            } else {
                loop {
                    skip_ws(b, i);
                    let mut k = String::new();
                    string(b, i, &mut k)?;
                    skip_ws(b, i);
                    if b.get(*i) != Some(&b':') {
                        return Err(format!("expected ':' at {i}"));
                    }
                    *i += 1;
                    let mut v = String::new();
                    value(b, i, &mut v)?;
                    members.push((k, v));
                    skip_ws(b, i);
                    match b.get(*i) {
                        Some(b',') => *i += 1,
                        Some(b'}') => {
                            *i += 1;
                            break;
                        }
                        _ => return Err(format!("expected ',' or '}}' at {i}")),
                    }
                }
            }
            members.sort();
            out.push('{');
            for (n, (k, v)) in members.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push(':');
                out.push_str(v);
            }
            out.push('}');
            Ok(())
        }
        Some(b'[') => {
            *i += 1;
            out.push('[');
            skip_ws(b, i);
            if b.get(*i) == Some(&b']') {
                *i += 1;
            } else {
                let mut first = true;
                loop {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    value(b, i, out)?;
                    skip_ws(b, i);
                    match b.get(*i) {
                        Some(b',') => *i += 1,
                        Some(b']') => {
                            *i += 1;
                            break;
                        }
                        _ => return Err(format!("expected ',' or ']' at {i}")),
                    }
                }
            }
            out.push(']');
            Ok(())
        }
        Some(b'"') => string(b, i, out),
        Some(_) => {
            // Numbers and literals: the token as written.
            let start = *i;
            while *i < b.len() && !matches!(b[*i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                *i += 1;
            }
            let tok = std::str::from_utf8(&b[start..*i]).map_err(|e| e.to_string())?;
            let is_number = tok.parse::<f64>().is_ok() && tok.bytes().all(|c| b"0123456789+-.eE".contains(&c));
            if !(is_number || matches!(tok, "true" | "false" | "null")) {
                return Err(format!("bad token {tok:?} at {start}"));
            }
            out.push_str(tok);
            Ok(())
        }
    }
}

/// A string token, escapes as written.
fn string(b: &[u8], i: &mut usize, out: &mut String) -> Result<(), String> {
    if b.get(*i) != Some(&b'"') {
        return Err(format!("expected a string at {i}"));
    }
    let start = *i;
    *i += 1;
    loop {
        match b.get(*i) {
            None => return Err("unterminated string".into()),
            Some(b'\\') => *i += 2,
            Some(b'"') => {
                *i += 1;
                break;
            }
            Some(_) => *i += 1,
        }
    }
    out.push_str(std::str::from_utf8(&b[start..*i]).map_err(|e| e.to_string())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_tokens_and_sorts_keys() {
        assert_eq!(canonical(r#" { "b" : [1.500, "x\u003c"], "a":null } "#), r#"{"a":null,"b":[1.500,"x\u003c"]}"#);
        assert_ne!(canonical(r#"{"v":1.5}"#), canonical(r#"{"v":1.500}"#));
        assert_ne!(canonical(r#"["<"]"#), canonical(r#"["\u003c"]"#));
        assert_eq!(canonical(r#"{"a":{"d":1,"c":2}}"#), r#"{"a":{"c":2,"d":1}}"#);
        assert_eq!(
            canonical_without(r#"{"warnings":["x"],"status":"success","data":[1.0]}"#, &["warnings"]),
            r#"{"data":[1.0],"status":"success"}"#
        );
        assert_eq!(canonical_without(r#"{"warnings":[]}"#, &["warnings"]), "{}");
        for bad in ["", "{", r#"{"a" 1}"#, "[1,]", "tru", r#""abc"#, "1 2"] {
            assert!(canonical_json(bad).is_err(), "{bad}");
        }
    }
}
