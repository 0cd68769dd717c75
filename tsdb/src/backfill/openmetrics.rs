//! A parser for the OpenMetrics text format as `promtool tsdb create-blocks-from
//! openmetrics` (Prometheus 2.42's `textparse.OpenMetricsParser`) accepts it.
//!
//! It borrows from the input and allocates nothing per sample: a sample is returned as
//! the raw bytes of its series (`name{labels}`), its value and timestamp. Callers cache
//! label sets by those raw bytes and ask [`Parser::labels`] only for series they have
//! not seen, which is where unescaping, UTF-8 checks and sorting happen.

use std::fmt;

use norn_model::{Labels, LabelsBuilder, METRIC_NAME};

/// A parse error with the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    /// 1-based line number of the offending line.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

/// A metric family type from a `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl MetricType {
    fn parse(s: &[u8]) -> Option<Self> {
        Some(match s {
            b"counter" => MetricType::Counter,
            b"gauge" => MetricType::Gauge,
            b"histogram" => MetricType::Histogram,
            b"gaugehistogram" => MetricType::GaugeHistogram,
            b"summary" => MetricType::Summary,
            b"info" => MetricType::Info,
            b"stateset" => MetricType::StateSet,
            b"unknown" => MetricType::Unknown,
            _ => return None,
        })
    }
}

/// One sample line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleLine<'a> {
    /// The series as written: metric name plus the optional `{...}` label block. Equal
    /// bytes always mean the same series (the converse does not hold).
    pub series: &'a [u8],
    /// The sample value.
    pub value: f64,
    /// Timestamp in milliseconds (seconds × 1000, truncated as Go converts), if given.
    pub timestamp_ms: Option<i64>,
    /// 1-based line number.
    pub line: usize,
}

/// A streaming OpenMetrics parser over an in-memory input.
pub struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    line: usize,
    done: bool,
    mtype: MetricType,
    /// Label spans of the last sample: (name, raw value between the quotes).
    label_spans: Vec<(&'a [u8], &'a [u8])>,
    name: &'a [u8],
    /// Series bytes of the last sample; a line starting with them (and a space) is the
    /// same series, whose name and label spans are already known.
    prev_series: &'a [u8],
}

impl fmt::Debug for Parser<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parser").field("pos", &self.pos).field("line", &self.line).finish()
    }
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn is_label_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_label_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Parses a float the way Prometheus does: Go's `strconv.ParseFloat` without the
/// post-Go-1.13 forms (hex mantissas, `p` exponents, underscores). Out-of-range literals
/// are errors, as in Go, rather than silently becoming infinities.
pub fn parse_go_float(s: &[u8]) -> Result<f64, String> {
    let invalid = || format!("invalid float {:?}", String::from_utf8_lossy(s));
    let unsigned = match s.first() {
        Some(b'+' | b'-') => &s[1..],
        _ => s,
    };
    match unsigned.first() {
        Some(b'0'..=b'9' | b'.') => {
            // Only plain decimal literals: Go (as Prometheus uses it) rejects hex
            // mantissas, `p` exponents and underscores, and so do we.
            if unsigned.iter().any(|&c| !(c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))) {
                return Err(if s.iter().any(|c| matches!(c, b'p' | b'P' | b'_')) {
                    format!("unsupported character in float {:?}", String::from_utf8_lossy(s))
                } else {
                    invalid()
                });
            }
            // All ASCII, checked above.
            let text = std::str::from_utf8(s).map_err(|_| invalid())?;
            let v: f64 = text.parse().map_err(|_| invalid())?;
            if v.is_infinite() {
                return Err(format!("float {text:?} out of range"));
            }
            Ok(v)
        }
        _ if unsigned.eq_ignore_ascii_case(b"nan") && unsigned.len() == s.len() => Ok(f64::NAN),
        _ if unsigned.eq_ignore_ascii_case(b"inf") || unsigned.eq_ignore_ascii_case(b"infinity") => {
            Ok(if s[0] == b'-' { f64::NEG_INFINITY } else { f64::INFINITY })
        }
        _ => Err(invalid()),
    }
}

/// Parses a timestamp in (possibly fractional) seconds into milliseconds as promtool
/// does: `int64(seconds * 1000)` on the float value.
fn parse_timestamp_ms(s: &[u8]) -> Result<i64, String> {
    // Whole seconds of up to 15 digits are exact in a float, so integer math gives the
    // same result as the float path, much faster.
    if !s.is_empty() && s.len() <= 15 && s.iter().all(u8::is_ascii_digit) {
        let v = s.iter().fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0'));
        return Ok(v * 1000);
    }
    let ts = parse_go_float(s)?;
    if !ts.is_finite() {
        return Err("invalid timestamp".to_string());
    }
    // Go's float-to-int conversion truncates towards zero.
    Ok((ts * 1000.0) as i64)
}

impl<'a> Parser<'a> {
    /// A parser over the whole input.
    pub fn new(buf: &'a [u8]) -> Self {
        Parser {
            buf,
            pos: 0,
            line: 0,
            done: false,
            mtype: MetricType::Unknown,
            label_spans: Vec::with_capacity(8),
            name: b"",
            prev_series: b"",
        }
    }

    /// Bytes consumed so far (for progress reporting).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Total input size.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the input is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn err(&self, msg: impl Into<String>) -> ParseError {
        ParseError { line: self.line, msg: msg.into() }
    }

    /// The next sample, skipping metadata lines; `None` after `# EOF`.
    pub fn next_sample(&mut self) -> Result<Option<SampleLine<'a>>, ParseError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.pos >= self.buf.len() {
                self.line += 1;
                return Err(self.err("data does not end with # EOF"));
            }
            self.line += 1;
            let start = self.pos;
            let end = match memchr::memchr(b'\n', &self.buf[start..]) {
                Some(i) => start + i,
                None => self.buf.len(),
            };
            self.pos = (end + 1).min(self.buf.len());
            let line = &self.buf[start..end];
            let has_newline = end < self.buf.len();
            if line.first() == Some(&b'#') {
                self.comment(line, has_newline)?;
                continue;
            }
            if !has_newline {
                return Err(self.err("data does not end with # EOF"));
            }
            return self.sample(line).map(Some);
        }
    }

    fn comment(&mut self, line: &'a [u8], has_newline: bool) -> Result<(), ParseError> {
        if line == b"# EOF" {
            if self.pos < self.buf.len() {
                return Err(self.err("unexpected data after # EOF"));
            }
            self.done = true;
            return Ok(());
        }
        if !has_newline {
            return Err(self.err("data does not end with # EOF"));
        }
        let rest = line.strip_prefix(b"# ").ok_or_else(|| self.err("invalid comment: expected \"# \""))?;
        let (kw, rest) = split_space(rest);
        let kw: &[u8] = kw;
        if !matches!(kw, b"HELP" | b"TYPE" | b"UNIT") {
            return Err(self.err(format!(
                "invalid comment: expected HELP, TYPE, UNIT or EOF, got {:?}",
                String::from_utf8_lossy(kw)
            )));
        }
        let kw_str = std::str::from_utf8(kw).unwrap_or("?");
        let Some(rest) = rest else {
            return Err(self.err(format!("expected metric name in {kw_str}")));
        };
        let (name, text) = split_space(rest);
        if name.is_empty() || !is_name_start(name[0]) || !name.iter().all(|&c| is_name_char(c)) {
            return Err(self.err(format!("invalid metric name in {kw_str}: {:?}", String::from_utf8_lossy(name))));
        }
        let Some(text) = text else {
            return Err(self.err(format!("expected text in {kw_str}")));
        };
        match kw {
            b"TYPE" => {
                self.mtype = MetricType::parse(text)
                    .ok_or_else(|| self.err(format!("invalid metric type {:?}", String::from_utf8_lossy(text))))?;
            }
            b"UNIT" => {
                if !text.is_empty() {
                    let ok =
                        name.len() > text.len() && name.ends_with(text) && name[name.len() - text.len() - 1] == b'_';
                    if !ok {
                        return Err(
                            self.err(format!("unit not a suffix of metric {:?}", String::from_utf8_lossy(name)))
                        );
                    }
                }
            }
            _ => {
                if std::str::from_utf8(text).is_err() {
                    return Err(self.err("invalid UTF-8 in HELP text"));
                }
            }
        }
        Ok(())
    }

    fn sample(&mut self, line: &'a [u8]) -> Result<SampleLine<'a>, ParseError> {
        let n = line.len();
        if n == 0 || !is_name_start(line[0]) {
            let shown = line.first().map(|&c| (c as char).to_string()).unwrap_or_else(|| "\\n".into());
            return Err(self.err(format!("{shown:?} is not a valid start of a line")));
        }
        let p = self.prev_series.len();
        let mut i;
        if p > 0 && n > p && line[p] == b' ' && line.starts_with(self.prev_series) {
            i = p;
        } else {
            i = 1;
            while i < n && is_name_char(line[i]) {
                i += 1;
            }
            self.name = &line[..i];
            self.label_spans.clear();
            self.prev_series = b"";
            if i < n && line[i] == b'{' {
                i = self.label_block(line, i + 1, true)?;
            }
            self.prev_series = &line[..i];
        }
        let series = &line[..i];
        if i >= n || line[i] != b' ' {
            return Err(self.err("expected a space and a value after the series"));
        }
        i += 1;
        let vstart = i;
        while i < n && line[i] != b' ' {
            i += 1;
        }
        if i == vstart {
            return Err(self.err("expected value after metric"));
        }
        let value = parse_go_float(&line[vstart..i]).map_err(|e| self.err(e))?;
        let mut timestamp_ms = None;
        if i < n {
            i += 1;
            if i < n && line[i] == b'#' {
                self.exemplar(line, i)?;
                return Ok(SampleLine { series, value, timestamp_ms, line: self.line });
            }
            let tstart = i;
            while i < n && line[i] != b' ' {
                i += 1;
            }
            if i == tstart {
                return Err(self.err("expected timestamp after value"));
            }
            timestamp_ms = Some(parse_timestamp_ms(&line[tstart..i]).map_err(|e| self.err(e))?);
            if i < n {
                i += 1;
                if i < n && line[i] == b'#' {
                    self.exemplar(line, i)?;
                } else {
                    return Err(self.err("expected end of line or exemplar after timestamp"));
                }
            }
        }
        Ok(SampleLine { series, value, timestamp_ms, line: self.line })
    }

    /// Parses `name="value",...}` starting after `{`; returns the index after `}`.
    fn label_block(&mut self, line: &'a [u8], mut i: usize, record: bool) -> Result<usize, ParseError> {
        let n = line.len();
        let mut first = true;
        loop {
            if i >= n {
                return Err(self.err("unterminated label set"));
            }
            match line[i] {
                b'}' => return Ok(i + 1),
                b',' if !first => i += 1,
                _ if !first => return Err(self.err("expected comma or closing brace in label set")),
                _ => {}
            }
            first = false;
            let nstart = i;
            if i >= n || !is_label_start(line[i]) {
                return Err(self.err("expected label name"));
            }
            while i < n && is_label_char(line[i]) {
                i += 1;
            }
            let name = &line[nstart..i];
            if i >= n || line[i] != b'=' {
                return Err(self.err("expected equal sign after label name"));
            }
            i += 1;
            if i >= n || line[i] != b'"' {
                return Err(self.err("expected quoted label value"));
            }
            i += 1;
            let vstart = i;
            loop {
                if i >= n {
                    return Err(self.err("unterminated label value"));
                }
                match line[i] {
                    b'"' => break,
                    b'\\' => i += 2,
                    _ => i += 1,
                }
            }
            if i > n {
                return Err(self.err("unterminated label value"));
            }
            if record {
                self.label_spans.push((name, &line[vstart..i]));
            }
            i += 1;
        }
    }

    fn exemplar(&mut self, line: &'a [u8], i: usize) -> Result<(), ParseError> {
        let name = self.name;
        let supported = match self.mtype {
            MetricType::Counter => name.ends_with(b"_total"),
            MetricType::Histogram | MetricType::GaugeHistogram => name.ends_with(b"_bucket"),
            _ => false,
        };
        if !supported {
            return Err(self.err(format!("metric name {} does not support exemplars", String::from_utf8_lossy(name))));
        }
        let n = line.len();
        if line.get(i..i + 3) != Some(b"# {") {
            return Err(self.err("expected \"# {\" starting an exemplar"));
        }
        let mut j = self.label_block(line, i + 3, false)?;
        if j >= n || line[j] != b' ' {
            return Err(self.err("expected value after exemplar labels"));
        }
        j += 1;
        let rest = &line[j..];
        let mut parts = rest.split(|&c| c == b' ');
        let v = parts.next().unwrap_or_default();
        parse_go_float(v).map_err(|e| self.err(format!("exemplar value: {e}")))?;
        if let Some(ts) = parts.next() {
            let ts = parse_go_float(ts).map_err(|e| self.err(format!("exemplar timestamp: {e}")))?;
            if !ts.is_finite() {
                return Err(self.err("invalid exemplar timestamp"));
            }
        }
        if parts.next().is_some() {
            return Err(self.err("unexpected data after exemplar"));
        }
        Ok(())
    }

    /// The label set of the last sample returned: `__name__` plus its labels, unescaped
    /// and sorted. Empty values are dropped and a repeated name is an error, as the
    /// Prometheus head does on append.
    pub fn labels(&self) -> Result<Labels, ParseError> {
        let mut b = LabelsBuilder::new();
        // Names are ASCII by construction; values need unescaping and a UTF-8 check.
        let name = std::str::from_utf8(self.name).map_err(|_| self.err("invalid metric name"))?;
        let mut seen: Vec<&[u8]> = Vec::with_capacity(self.label_spans.len() + 1);
        seen.push(METRIC_NAME.as_bytes());
        b.set(METRIC_NAME, name);
        let mut value = String::new();
        for &(n, raw) in &self.label_spans {
            if seen.contains(&n) {
                return Err(self.err(format!("label name {:?} is not unique", String::from_utf8_lossy(n))));
            }
            seen.push(n);
            value.clear();
            unescape_into(raw, &mut value).map_err(|_| self.err("invalid UTF-8 label value"))?;
            let n = std::str::from_utf8(n).map_err(|_| self.err("invalid label name"))?;
            b.set(n, &value);
        }
        Ok(b.build())
    }
}

/// Splits at the first space; the second part is `None` when there is no space.
fn split_space(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&c| c == b' ') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

/// OpenMetrics label value unescaping as Prometheus does it: `\\`, `\"` and `\n` are
/// replaced; any other backslash sequence is kept verbatim.
fn unescape_into(raw: &[u8], out: &mut String) -> Result<(), std::str::Utf8Error> {
    let s = std::str::from_utf8(raw)?;
    if !s.contains('\\') {
        out.push_str(s);
        return Ok(());
    }
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                Some('"') => {
                    out.push('"');
                    chars.next();
                }
                Some('n') => {
                    out.push('\n');
                    chars.next();
                }
                _ => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &str) -> Result<Vec<(String, f64, Option<i64>)>, ParseError> {
        let mut p = Parser::new(input.as_bytes());
        let mut out = Vec::new();
        while let Some(s) = p.next_sample()? {
            out.push((p.labels()?.to_string(), s.value, s.timestamp_ms));
        }
        Ok(out)
    }

    #[test]
    fn accepts_what_promtool_accepts() {
        let input = "# HELP a_total Some \\\\ help\n# TYPE a counter\n# UNIT a_seconds seconds\n\
                     a_total{b=\"x\\\\y\\\"z\\nw\",c=\"é\"} 1.5 1700000000.123 # {trace=\"t\"} 1 1\n\
                     a_total{} NaN 1\nb +Inf 2\nb -Inf 3\nb 1e308 4\nb 5e-324 5\nb 1e-400 6\nb .5 -1.0009\n\
                     c{z=\"\",y=\"\\t\"} 2 7\n# EOF\n";
        let got = all(input).unwrap();
        assert_eq!(got[0].0, r#"{__name__="a_total", b="x\\y\"z\nw", c="é"}"#);
        assert_eq!(got[0].1, 1.5);
        assert_eq!(got[0].2, Some(1700000000123));
        assert!(got[1].1.is_nan());
        assert_eq!(got[2].1, f64::INFINITY);
        assert_eq!(got[3].1, f64::NEG_INFINITY);
        assert_eq!(got[4].1, 1e308);
        assert_eq!(got[5].1, 5e-324);
        assert_eq!(got[6].1, 0.0);
        assert_eq!(got[7].2, Some(-1000));
        // Empty values dropped; unknown escapes kept verbatim.
        assert_eq!(got[8].0, r#"{__name__="c", y="\\t"}"#);
    }

    #[test]
    fn repeated_series_prefixes() {
        let got = all("a{b=\"1\"} 1 1\na{b=\"1\"} 2 2\na{b=\"1\",c=\"2\"} 3 3\na 4 4\nab 5 5\na 6 6\n# EOF\n").unwrap();
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "{__name__=\"a\", b=\"1\"}",
                "{__name__=\"a\", b=\"1\"}",
                "{__name__=\"a\", b=\"1\", c=\"2\"}",
                "{__name__=\"a\"}",
                "{__name__=\"ab\"}",
                "{__name__=\"a\"}"
            ]
        );
    }

    #[test]
    fn eof_without_trailing_newline() {
        assert_eq!(all("a 1 1\n# EOF").unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("a 1 1\n\n# EOF\n", 2, "not a valid start"),
            ("# foo bar\n# EOF\n", 1, "invalid comment"),
            ("a{b=\"1\",} 1 1\n# EOF\n", 1, "expected label name"),
            ("a 1 1\n", 2, "does not end with # EOF"),
            ("a 1 1", 1, "does not end with # EOF"),
            ("a 1 1\nb 1e400 1\n# EOF\n", 2, "out of range"),
            ("a  1 1\n# EOF\n", 1, "expected value"),
            ("a 1 1 # {x=\"y\"} 1\n# EOF\n", 1, "does not support exemplars"),
            ("# TYPE a foo\n# EOF\n", 1, "invalid metric type"),
            ("# UNIT a seconds\n# EOF\n", 1, "unit not a suffix"),
            ("a 1 1\n# EOF\nb 1 1\n", 2, "after # EOF"),
            ("a -nan 1\n# EOF\n", 1, "invalid float"),
            ("a 0x1p3 1\n# EOF\n", 1, "unsupported character"),
            ("a 0x10 1\n# EOF\n", 1, "invalid float"),
            ("a 1 NaN\n# EOF\n", 1, "invalid timestamp"),
            ("a 1 1 \n# EOF\n", 1, "after timestamp"),
            ("a 1 1\r\n# EOF\n", 1, "invalid float"),
            ("1a 1 1\n# EOF\n", 1, "not a valid start"),
            ("a{b=\"1\" 1 1\n# EOF\n", 1, "comma or closing brace"),
            ("a{b=\"1} 1 1\n# EOF\n", 1, "unterminated"),
            ("# HELP a\n# EOF\n", 1, "expected text in HELP"),
            ("#\n# EOF\n", 1, "invalid comment"),
        ];
        for (input, line, what) in cases {
            let e = all(input).expect_err(input);
            assert_eq!(e.line, *line, "{input:?}: {e}");
            assert!(e.msg.contains(what), "{input:?}: {e}");
        }
    }

    #[test]
    fn label_errors() {
        let e = all("a 1 1\na{b=\"1\",b=\"2\"} 1 1\n# EOF\n").unwrap_err();
        assert_eq!((e.line, e.msg.contains("not unique")), (2, true));
        let e = all("a{__name__=\"b\"} 1 1\n# EOF\n").unwrap_err();
        assert!(e.msg.contains("not unique"));
        let mut input = b"a{b=\"".to_vec();
        input.extend_from_slice(b"\xff\"} 1 1\n# EOF\n");
        let mut p = Parser::new(&input);
        p.next_sample().unwrap();
        assert!(p.labels().unwrap_err().msg.contains("UTF-8"));
    }

    #[test]
    fn exemplars_on_counters_and_buckets() {
        let ok = "# TYPE a counter\na_total 1 1 # {x=\"y\"} 1\na_total 2 2 # {x=\"y\"} 1 1\n\
                  # TYPE h histogram\nh_bucket{le=\"1\"} 1 1 # {} 1\n# EOF\n";
        assert_eq!(all(ok).unwrap().len(), 3);
        let bad = "# TYPE h histogram\nh_count 1 1 # {} 1\n# EOF\n";
        assert!(all(bad).unwrap_err().msg.contains("does not support exemplars"));
    }

    #[test]
    fn go_floats() {
        for (s, want) in
            [("1", 1.0), ("-0", -0.0), ("00012", 12.0), ("5.", 5.0), ("1E2", 100.0), ("infinity", f64::INFINITY)]
        {
            assert_eq!(parse_go_float(s.as_bytes()).unwrap(), want, "{s}");
        }
        for s in ["", "1_0", "0x10", "+nan", "1e400", "-1e400", "abc", "1.0.0", "+", "in", "nana", "--1"] {
            assert!(parse_go_float(s.as_bytes()).is_err(), "{s}");
        }
        assert!(parse_go_float(b"NaN").unwrap().is_nan());
        assert_eq!(parse_go_float(b"-Inf").unwrap(), f64::NEG_INFINITY);
        assert_eq!(parse_go_float(b"+inf").unwrap(), f64::INFINITY);
        for (s, want) in [
            ("1700000000", 1700000000000),
            ("1700000000.123", 1700000000123),
            ("-1.0009", -1000),
            ("1e3", 1000000),
            ("0", 0),
        ] {
            assert_eq!(parse_timestamp_ms(s.as_bytes()).unwrap(), want, "{s}");
        }
    }

    fn escape(v: &str) -> String {
        v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
    }

    proptest::proptest! {
        /// Any label values and float values survive formatting and parsing.
        #[test]
        fn round_trip(
            values in proptest::collection::vec("\\PC{0,12}|[\\\\\"\n a]{0,6}", 1..5),
            v in proptest::num::f64::ANY,
            t in -1_000_000_000i64..4_000_000_000i64,
        ) {
            let mut line = String::from("m{");
            for (i, val) in values.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push_str(&format!("l{i}=\"{}\"", escape(val)));
            }
            let vs = if v.is_nan() { "NaN".to_string() } else if v.is_infinite() { format!("{}Inf", if v > 0.0 { "+" } else { "-" }) } else { format!("{v:e}") };
            line.push_str(&format!("}} {vs} {t}\n# EOF\n"));
            let mut p = Parser::new(line.as_bytes());
            let s = p.next_sample().unwrap().unwrap();
            let want = Labels::from_pairs(
                std::iter::once(("__name__".to_string(), "m".to_string()))
                    .chain(values.iter().enumerate().map(|(i, val)| (format!("l{i}"), val.clone()))),
            );
            proptest::prop_assert_eq!(p.labels().unwrap(), want);
            // NaN payloads are not kept: text has one NaN.
            let same = if v.is_nan() { s.value.is_nan() } else { s.value.to_bits() == v.to_bits() };
            proptest::prop_assert!(same, "{} parsed as {}", v, s.value);
            proptest::prop_assert_eq!(s.timestamp_ms, Some(t * 1000));
            proptest::prop_assert!(p.next_sample().unwrap().is_none());
        }
    }
}
