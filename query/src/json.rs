//! Prometheus HTTP API JSON, written by hand so that number, timestamp and string
//! formatting match Prometheus's output byte for byte.

use std::fmt::Write as _;

use norn_model::{FloatHistogram, Labels};
use norn_promql::Value;

/// Appends `s` as a JSON string the way Go's encoder writes it (HTML-safe escapes).
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Prometheus writes sample values: `strconv.FormatFloat(f, 'f', -1, 64)`
/// with `+Inf`, `-Inf` and `NaN`, quoted.
pub fn write_float(out: &mut String, f: f64) {
    out.push('"');
    out.push_str(&norn_model::format::go_format_f(f));
    out.push('"');
}

/// A millisecond timestamp as Prometheus writes it: seconds with a three-digit
/// fraction when it is not whole (`1.500`, not `1.5`).
pub fn write_ts(out: &mut String, t: i64) {
    let mut t = t as i128;
    if t < 0 {
        out.push('-');
        t = -t;
    }
    let _ = write!(out, "{}", t / 1000);
    let frac = t % 1000;
    if frac != 0 {
        let _ = write!(out, ".{frac:03}");
    }
}

/// A label set as a JSON object, keys in label order.
pub fn write_labels(out: &mut String, l: &Labels) {
    out.push('{');
    for (i, (n, v)) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, n);
        out.push(':');
        write_str(out, v);
    }
    out.push('}');
}

/// A native histogram as Prometheus's API writes it.
pub fn write_histogram(out: &mut String, h: &FloatHistogram) {
    out.push_str("{\"count\":");
    write_float(out, h.count);
    out.push_str(",\"sum\":");
    write_float(out, h.sum);
    let mut first = true;
    for b in norn_promql::histogram::buckets(h) {
        if b.count == 0.0 {
            continue;
        }
        out.push_str(if first { ",\"buckets\":[" } else { "," });
        first = false;
        let rule = match (b.lower_inclusive, b.upper_inclusive) {
            (true, true) => 3,
            (true, false) => 1,
            (false, true) => 0,
            (false, false) => 2,
        };
        let _ = write!(out, "[{rule},");
        write_float(out, b.lower);
        out.push(',');
        write_float(out, b.upper);
        out.push(',');
        write_float(out, b.count);
        out.push(']');
    }
    if !first {
        out.push(']');
    }
    out.push('}');
}

fn write_point(out: &mut String, t: i64, f: f64) {
    out.push('[');
    write_ts(out, t);
    out.push(',');
    write_float(out, f);
    out.push(']');
}

fn write_hpoint(out: &mut String, t: i64, h: &FloatHistogram) {
    out.push('[');
    write_ts(out, t);
    out.push(',');
    write_histogram(out, h);
    out.push(']');
}

/// The `data` object of a query answer: `{"resultType":…,"result":…}`.
pub fn write_query_data(out: &mut String, v: &Value, ts: i64) {
    out.push_str("{\"resultType\":\"");
    out.push_str(v.type_name());
    out.push_str("\",\"result\":");
    match v {
        Value::Scalar(f) => write_point(out, ts, *f),
        Value::String(s) => {
            out.push('[');
            write_ts(out, ts);
            out.push(',');
            write_str(out, s);
            out.push(']');
        }
        Value::Vector(samples) => {
            out.push('[');
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, &s.metric);
                match &s.h {
                    Some(h) => {
                        out.push_str(",\"histogram\":");
                        write_hpoint(out, s.t, h);
                    }
                    None => {
                        out.push_str(",\"value\":");
                        write_point(out, s.t, s.f);
                    }
                }
                out.push('}');
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push('[');
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                write_labels(out, &s.metric);
                if !s.floats.is_empty() {
                    out.push_str(",\"values\":[");
                    for (j, (t, f)) in s.floats.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                        }
                        write_point(out, *t, *f);
                    }
                    out.push(']');
                }
                if !s.histograms.is_empty() {
                    out.push_str(",\"histograms\":[");
                    for (j, (t, h)) in s.histograms.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                        }
                        write_hpoint(out, *t, h);
                    }
                    out.push(']');
                }
                out.push('}');
            }
            out.push(']');
        }
    }
    out.push('}');
}

/// A success envelope around already-rendered `data`, with warnings and infos when any.
pub fn success(data: &str, warnings: &[String], infos: &[String]) -> String {
    let mut out = String::with_capacity(data.len() + 64);
    out.push_str("{\"status\":\"success\",\"data\":");
    out.push_str(data);
    write_annotations(&mut out, warnings, infos);
    out.push('}');
    out
}

fn write_annotations(out: &mut String, warnings: &[String], infos: &[String]) {
    for (key, list) in [("warnings", warnings), ("infos", infos)] {
        if list.is_empty() {
            continue;
        }
        let _ = write!(out, ",\"{key}\":[");
        for (i, w) in list.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_str(out, w);
        }
        out.push(']');
    }
}

/// An error envelope.
pub fn error(kind: &str, msg: &str, warnings: &[String], infos: &[String]) -> String {
    let mut out = String::from("{\"status\":\"error\",\"errorType\":");
    write_str(&mut out, kind);
    out.push_str(",\"error\":");
    write_str(&mut out, msg);
    write_annotations(&mut out, warnings, infos);
    out.push('}');
    out
}

/// A JSON array of strings.
pub fn str_array(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(&mut out, s);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::Span;
    use norn_promql::{Sample, Series};

    #[test]
    fn timestamps_and_floats() {
        let cases: &[(i64, &str)] =
            &[(0, "0"), (1500, "1.500"), (1_435_781_451_781, "1435781451.781"), (-1, "-0.001"), (5, "0.005")];
        for (t, want) in cases {
            let mut s = String::new();
            write_ts(&mut s, *t);
            assert_eq!(s, *want);
        }
        let floats: &[(f64, &str)] = &[
            (1.0, "\"1\""),
            (0.1, "\"0.1\""),
            (f64::INFINITY, "\"+Inf\""),
            (f64::NEG_INFINITY, "\"-Inf\""),
            (f64::NAN, "\"NaN\""),
            (1e21, "\"1000000000000000000000\""),
        ];
        for (f, want) in floats {
            let mut s = String::new();
            write_float(&mut s, *f);
            assert_eq!(s, *want);
        }
    }

    #[test]
    fn strings_escape_like_go() {
        let mut s = String::new();
        write_str(&mut s, "a<b>&\"\\\n\u{1}é");
        assert_eq!(s, r#""a\u003cb\u003e\u0026\"\\\n\u0001é""#);
    }

    #[test]
    fn value_shapes() {
        let l = Labels::from_pairs([("__name__", "up"), ("job", "a")]);
        let h = FloatHistogram {
            schema: 0,
            count: 3.0,
            sum: 5.0,
            zero_threshold: 0.001,
            zero_count: 1.0,
            positive_spans: vec![Span { offset: 0, length: 2 }],
            positive_buckets: vec![1.0, 1.0],
            ..Default::default()
        };
        let cases: Vec<(Value, &str)> = vec![
            (Value::Scalar(2.5), r#"{"resultType":"scalar","result":[1.500,"2.5"]}"#),
            (Value::String("x".into()), r#"{"resultType":"string","result":[1.500,"x"]}"#),
            (Value::Vector(vec![]), r#"{"resultType":"vector","result":[]}"#),
            (
                Value::Vector(vec![Sample { metric: l.clone(), t: 1500, f: 1.0, h: None, drop_name: false }]),
                r#"{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"a"},"value":[1.500,"1"]}]}"#,
            ),
            (
                Value::Matrix(vec![Series {
                    metric: l.clone(),
                    floats: vec![(0, 1.0), (1000, 2.0)],
                    histograms: vec![],
                    drop_name: false,
                }]),
                r#"{"resultType":"matrix","result":[{"metric":{"__name__":"up","job":"a"},"values":[[0,"1"],[1,"2"]]}]}"#,
            ),
            (
                Value::Vector(vec![Sample {
                    metric: Labels::empty(),
                    t: 0,
                    f: 0.0,
                    h: Some(std::sync::Arc::new(h)),
                    drop_name: false,
                }]),
                r#"{"resultType":"vector","result":[{"metric":{},"histogram":[0,{"count":"3","sum":"5","buckets":[[3,"-0.001","0.001","1"],[0,"0.5","1","1"],[0,"1","2","1"]]}]}]}"#,
            ),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            write_query_data(&mut s, &v, 1500);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn envelopes() {
        assert_eq!(success("[]", &[], &[]), r#"{"status":"success","data":[]}"#);
        assert_eq!(
            success("[]", &["w".into()], &["i".into()]),
            r#"{"status":"success","data":[],"warnings":["w"],"infos":["i"]}"#
        );
        assert_eq!(error("bad_data", "x", &[], &[]), r#"{"status":"error","errorType":"bad_data","error":"x"}"#);
    }
}
