//! Prometheus's `checkAST` over the tree [`crate::parse`] builds, plus the Go-flavoured
//! pieces error messages are made of: `%q` quoting, `strconv` number errors, duration
//! parsing and the error texts of Go's `regexp` for the regexes of label matchers.

use crate::parse::{MatchKind, Node, ParseError, Pos, Type};

/// A function's signature, as Prometheus's `parser.Functions` declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Func {
    pub name: &'static str,
    /// Argument types, one letter each: `V`ector, `S`calar, `M`atrix, s`T`ring.
    pub args: &'static str,
    /// 0: exactly `args`; n > 0: up to n optional trailing arguments; < 0: unbounded.
    pub variadic: i32,
    pub ret: Type,
}

const fn ty(b: u8) -> Type {
    match b {
        b'S' => Type::Scalar,
        b'M' => Type::Matrix,
        b'T' => Type::String,
        _ => Type::Vector,
    }
}

const fn f(name: &'static str, args: &'static str, variadic: i32, ret: u8) -> Func {
    Func { name, args, variadic, ret: ty(ret) }
}

impl Func {
    fn arg(&self, i: usize) -> Type {
        ty(self.args.as_bytes()[i])
    }

    fn nargs(&self) -> usize {
        self.args.len()
    }
}

/// The functions Norn evaluates (Prometheus 3.x's set, experimental ones included).
static FUNCS: &[Func] = &[
    f("abs", "V", 0, b'V'),
    f("absent", "V", 0, b'V'),
    f("absent_over_time", "M", 0, b'V'),
    f("acos", "V", 0, b'V'),
    f("acosh", "V", 0, b'V'),
    f("asin", "V", 0, b'V'),
    f("asinh", "V", 0, b'V'),
    f("atan", "V", 0, b'V'),
    f("atanh", "V", 0, b'V'),
    f("avg_over_time", "M", 0, b'V'),
    f("ceil", "V", 0, b'V'),
    f("changes", "M", 0, b'V'),
    f("clamp", "VSS", 0, b'V'),
    f("clamp_max", "VS", 0, b'V'),
    f("clamp_min", "VS", 0, b'V'),
    f("cos", "V", 0, b'V'),
    f("cosh", "V", 0, b'V'),
    f("count_over_time", "M", 0, b'V'),
    f("day_of_month", "V", 1, b'V'),
    f("day_of_week", "V", 1, b'V'),
    f("day_of_year", "V", 1, b'V'),
    f("days_in_month", "V", 1, b'V'),
    f("deg", "V", 0, b'V'),
    f("delta", "M", 0, b'V'),
    f("deriv", "M", 0, b'V'),
    f("double_exponential_smoothing", "MSS", 0, b'V'),
    f("end", "", 0, b'S'),
    f("exp", "V", 0, b'V'),
    f("first_over_time", "M", 0, b'V'),
    f("floor", "V", 0, b'V'),
    f("histogram_avg", "V", 0, b'V'),
    f("histogram_count", "V", 0, b'V'),
    f("histogram_fraction", "SSV", 0, b'V'),
    f("histogram_quantile", "SV", 0, b'V'),
    f("histogram_quantiles", "VTSS", 9, b'V'),
    f("histogram_stddev", "V", 0, b'V'),
    f("histogram_stdvar", "V", 0, b'V'),
    f("histogram_sum", "V", 0, b'V'),
    f("hour", "V", 1, b'V'),
    f("idelta", "M", 0, b'V'),
    f("increase", "M", 0, b'V'),
    f("info", "VV", 1, b'V'),
    f("integral", "MS", 1, b'V'),
    f("irate", "M", 0, b'V'),
    f("label_join", "VTTT", -1, b'V'),
    f("label_replace", "VTTTT", 0, b'V'),
    f("last_over_time", "M", 0, b'V'),
    f("ln", "V", 0, b'V'),
    f("log10", "V", 0, b'V'),
    f("log2", "V", 0, b'V'),
    f("mad_over_time", "M", 0, b'V'),
    f("max_of", "SS", 0, b'S'),
    f("max_over_time", "M", 0, b'V'),
    f("min_of", "SS", 0, b'S'),
    f("min_over_time", "M", 0, b'V'),
    f("minute", "V", 1, b'V'),
    f("month", "V", 1, b'V'),
    f("pi", "", 0, b'S'),
    f("predict_linear", "MS", 0, b'V'),
    f("present_over_time", "M", 0, b'V'),
    f("quantile_over_time", "SM", 0, b'V'),
    f("rad", "V", 0, b'V'),
    f("range", "", 0, b'S'),
    f("rate", "M", 0, b'V'),
    f("resets", "M", 0, b'V'),
    f("round", "VS", 1, b'V'),
    f("scalar", "V", 0, b'S'),
    f("sgn", "V", 0, b'V'),
    f("sin", "V", 0, b'V'),
    f("sinh", "V", 0, b'V'),
    f("sort", "V", 0, b'V'),
    f("sort_by_label", "VT", -1, b'V'),
    f("sort_by_label_desc", "VT", -1, b'V'),
    f("sort_desc", "V", 0, b'V'),
    f("sqrt", "V", 0, b'V'),
    f("start", "", 0, b'S'),
    f("start_timestamp", "V", 0, b'V'),
    f("stddev_over_time", "M", 0, b'V'),
    f("stdvar_over_time", "M", 0, b'V'),
    f("step", "", 0, b'S'),
    f("sum_over_time", "M", 0, b'V'),
    f("tan", "V", 0, b'V'),
    f("tanh", "V", 0, b'V'),
    f("time", "", 0, b'S'),
    f("timestamp", "V", 0, b'V'),
    f("ts_of_first_over_time", "M", 0, b'V'),
    f("ts_of_last_over_time", "M", 0, b'V'),
    f("ts_of_max_over_time", "M", 0, b'V'),
    f("ts_of_min_over_time", "M", 0, b'V'),
    f("vector", "S", 0, b'V'),
    f("year", "V", 1, b'V'),
];

/// The signature of function `name`, including the stand-ins [`crate::rewrite`] uses.
pub(crate) fn function(name: &str) -> Option<Func> {
    if let Some(f) = FUNCS.iter().find(|f| f.name == name) {
        return Some(*f);
    }
    crate::rewrite::TRIM_FUNCS.iter().find(|n| **n == name).map(|n| {
        let t = if n.ends_with("_s") { "S" } else { "V" };
        Func { name: n, args: t, variadic: 0, ret: ty(t.as_bytes()[0]) }
    })
}

/// Runs `checkAST` and returns its first error.
pub(crate) fn check_ast(query: &str, node: &Node) -> Result<(), ParseError> {
    let mut c = Checker { input: query.as_bytes(), errors: Vec::new() };
    c.check(node);
    match c.errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct Checker<'a> {
    input: &'a [u8],
    errors: Vec<ParseError>,
}

impl Checker<'_> {
    fn err(&mut self, pos: Pos, msg: String) {
        self.errors.push(ParseError { pos, msg });
    }

    fn expect_type(&mut self, n: &Node, want: Type, context: &str) {
        let t = self.check(n);
        if t != want {
            self.err(n.start(), format!("expected type {} in {context}, got {}", want.documented(), t.documented()));
        }
    }

    /// Start of the operator between `lhs` and `rhs` (spaces skipped).
    fn op_start(&self, lhs: &Node) -> Pos {
        let mut p = lhs.end();
        while p < self.input.len() && matches!(self.input[p], b' ' | b'\t' | b'\n' | b'\r') {
            p += 1;
        }
        p
    }

    fn check(&mut self, node: &Node) -> Type {
        let typ = node.typ();
        match node {
            Node::Aggregate { op, param, expr, .. } => {
                if let Some(e) = expr {
                    self.expect_type(e, Type::Vector, "aggregation expression");
                }
                if let Some(p) = param {
                    match op.as_str() {
                        "count_values" => self.expect_type(p, Type::String, "aggregation parameter"),
                        _ => self.expect_type(p, Type::Scalar, "aggregation parameter"),
                    }
                }
            }
            Node::Binary { start, op, lhs, rhs, bool_, matching, .. } => {
                let lt = self.check(lhs);
                let rt = self.check(rhs);
                if *bool_ && !op.is_comparison() {
                    let p = self.op_start(lhs);
                    self.err(p, "bool modifier can only be used on comparison operators".into());
                }
                if op.is_comparison() && !*bool_ && lt == Type::Scalar && rt == Type::Scalar {
                    let p = self.op_start(lhs);
                    self.err(p, "comparisons between scalars must use BOOL modifier".into());
                }
                if let Some(m) = matching
                    && m.on
                {
                    for l1 in &m.labels {
                        if m.include.contains(l1) {
                            let p = self.op_start(lhs);
                            self.err(
                                p,
                                format!("label {} must not occur in ON and GROUP clause at once", go_quote(l1)),
                            );
                        }
                    }
                }
                if lt != Type::Scalar && lt != Type::Vector {
                    self.err(lhs.start(), "binary expression must contain only scalar and instant vector types".into());
                }
                if rt != Type::Scalar && rt != Type::Vector {
                    self.err(rhs.start(), "binary expression must contain only scalar and instant vector types".into());
                }
                if lt != Type::Vector || rt != Type::Vector {
                    if let Some(m) = matching {
                        if !m.labels.is_empty() {
                            self.err(*start, "vector matching only allowed between instant vectors".into());
                        }
                        if m.fill {
                            self.err(*start, "filling in missing series only allowed between instant vectors".into());
                        }
                    }
                } else if op.is_set()
                    && let Some(m) = matching
                {
                    if m.grouped {
                        self.err(*start, format!("no grouping allowed for {} operation", go_quote(op.text())));
                    }
                    if m.fill {
                        self.err(*start, "filling in missing series not allowed for set operators".into());
                    }
                }
                if (lt == Type::Scalar || rt == Type::Scalar) && op.is_set() {
                    self.err(
                        *start,
                        format!("set operator {} not allowed in binary scalar expression", go_quote(op.text())),
                    );
                }
            }
            Node::Call { start, func, args, .. } => {
                let Some(f) = func else { return typ };
                let nargs = f.nargs();
                if f.variadic == 0 {
                    if nargs != args.len() {
                        self.err(
                            *start,
                            format!("expected {nargs} argument(s) in call to {}, got {}", go_quote(f.name), args.len()),
                        );
                    }
                } else {
                    let na = nargs.saturating_sub(1);
                    if na > args.len() {
                        self.err(
                            *start,
                            format!(
                                "expected at least {na} argument(s) in call to {}, got {}",
                                go_quote(f.name),
                                args.len()
                            ),
                        );
                    } else if f.variadic > 0 && na + (f.variadic as usize) < args.len() {
                        self.err(
                            *start,
                            format!(
                                "expected at most {} argument(s) in call to {}, got {}",
                                na + f.variadic as usize,
                                go_quote(f.name),
                                args.len()
                            ),
                        );
                    }
                }
                let mut bypass_second = false;
                if f.name == "info" && args.len() > 1 {
                    let t = args[1].typ();
                    if t != Type::Vector {
                        self.err(
                            *start,
                            format!(
                                "expected type instant vector in call to function \"info\", got {}",
                                t.documented()
                            ),
                        );
                    }
                    match &args[1] {
                        Node::Selector { name: Some(_), start, .. } => {
                            self.err(*start, "expected label selectors only, got vector selector instead".into())
                        }
                        Node::Selector { .. } => bypass_second = true,
                        a => self.err(a.start(), "expected label selectors only".into()),
                    }
                }
                for (i, arg) in args.iter().enumerate() {
                    let k = if i >= nargs {
                        if f.variadic == 0 || nargs == 0 {
                            break;
                        }
                        nargs - 1
                    } else {
                        i
                    };
                    let t = if i == 1 && bypass_second { arg.typ() } else { self.check(arg) };
                    if t != f.arg(k) {
                        self.err(
                            arg.start(),
                            format!(
                                "expected type {} in call to function {}, got {}",
                                f.arg(k).documented(),
                                go_quote(f.name),
                                t.documented()
                            ),
                        );
                    }
                }
            }
            Node::Paren { expr, .. } => {
                self.check(expr);
            }
            Node::Unary { start, expr, .. } => {
                let t = self.check(expr);
                if t != Type::Scalar && t != Type::Vector {
                    self.err(
                        *start,
                        format!(
                            "unary expression only allowed on expressions of type scalar or instant vector, got {}",
                            go_quote(t.documented())
                        ),
                    );
                }
            }
            Node::Subquery { start, expr, .. } => {
                let t = self.check(expr);
                if t != Type::Vector {
                    self.err(*start, format!("subquery is only allowed on instant vector, got {} instead", t.raw()));
                }
            }
            Node::Matrix { vs, .. } => {
                self.check(vs);
            }
            Node::Selector { start, name, matchers, bypass, .. } => {
                if let Some(n) = name {
                    for m in matchers {
                        if m.name == "__name__" {
                            self.err(
                                *start,
                                format!("metric name must not be set twice: {} or {}", go_quote(n), go_quote(&m.value)),
                            );
                        }
                    }
                } else if !*bypass && matchers.iter().all(|m| matches_empty(m.op, &m.value)) {
                    self.err(*start, "vector selector must contain at least one non-empty matcher".into());
                }
            }
            Node::Number { .. } | Node::Str { .. } => {}
        }
        typ
    }
}

/// Whether a matcher accepts the empty string (as `labels.Matcher.Matches("")`).
fn matches_empty(op: MatchKind, value: &str) -> bool {
    let re = || norn_model::goregex::compile(&format!("^(?s:{value})$")).is_ok_and(|r| r.is_match(""));
    match op {
        MatchKind::Eq => value.is_empty(),
        MatchKind::Neq => !value.is_empty(),
        MatchKind::Re => re(),
        MatchKind::Nre => !re(),
    }
}

// ---------------------------------------------------------------------------------------
// Go formatting
// ---------------------------------------------------------------------------------------

/// Roughly Go's `unicode.IsPrint`.
fn is_print(c: char) -> bool {
    c == ' ' || !(c.is_control() || c.is_whitespace() || ('\u{E000}'..='\u{F8FF}').contains(&c) || c == '\u{FEFF}')
}

fn escape_into(out: &mut String, c: char, quote: char) {
    match c {
        '\x07' => out.push_str("\\a"),
        '\x08' => out.push_str("\\b"),
        '\x0c' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x0b' => out.push_str("\\v"),
        '\\' => out.push_str("\\\\"),
        c if c == quote => {
            out.push('\\');
            out.push(c);
        }
        c if is_print(c) => out.push(c),
        c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
        c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push_str(&format!("\\U{:08x}", c as u32)),
    }
}

/// Go's `%q` of a string.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        escape_into(&mut out, c, '"');
    }
    out.push('"');
    out
}

/// Go's `%q` of a rune; `None` is Go's end-of-input rune, printed as U+FFFD.
pub(crate) fn go_quote_rune(c: Option<char>) -> String {
    let mut out = String::from("'");
    escape_into(&mut out, c.unwrap_or('\u{FFFD}'), '\'');
    out.push('\'');
    out
}

/// Go's `%#U`.
pub(crate) fn go_unicode(c: char) -> String {
    if is_print(c) { format!("U+{:04X} '{c}'", c as u32) } else { format!("U+{:04X}", c as u32) }
}

/// Go's `%f` of a float.
pub(crate) fn go_f(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v:.6}")
    }
}

/// Whether `s` is a valid (legacy) label name.
pub(crate) fn is_label(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && cs.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// The value of a string literal token (quotes included), as Go's `strconv.Unquote`.
pub(crate) fn unquote(tok: &str) -> Option<String> {
    let q = tok.chars().next()?;
    let inner = tok.get(1..tok.len().checked_sub(1)?)?;
    if q == '`' {
        return Some(inner.to_string());
    }
    let mut out = String::new();
    let mut it = inner.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = it.next()?;
        let hex = |it: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize| -> Option<u32> {
            let mut v = 0u32;
            for _ in 0..n {
                v = v * 16 + it.next()?.to_digit(16)?;
            }
            Some(v)
        };
        match e {
            'a' => out.push('\x07'),
            'b' => out.push('\x08'),
            'f' => out.push('\x0c'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\x0b'),
            'x' => out.push(char::from_u32(hex(&mut it, 2)?).unwrap_or('\u{FFFD}')),
            'u' => out.push(char::from_u32(hex(&mut it, 4)?)?),
            'U' => out.push(char::from_u32(hex(&mut it, 8)?)?),
            '0'..='7' => {
                let mut v = e.to_digit(8)?;
                for _ in 0..2 {
                    v = v * 8 + it.next()?.to_digit(8)?;
                }
                out.push(char::from_u32(v).unwrap_or('\u{FFFD}'));
            }
            c => out.push(c),
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// Numbers and durations
// ---------------------------------------------------------------------------------------

/// A number token's value as Prometheus computes it (`strconv.ParseInt(s, 0, 64)`, then
/// `strconv.ParseFloat`); the error reads like Go's.
pub(crate) fn parse_number(s: &str) -> Result<f64, String> {
    let l = s.to_ascii_lowercase();
    let int = if let Some(h) = l.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok().filter(|_| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
    } else if l.len() > 1 && l.starts_with('0') && l.chars().all(|c| ('0'..='7').contains(&c)) {
        i64::from_str_radix(&l[1..], 8).ok()
    } else if !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()) {
        l.parse::<i64>().ok()
    } else {
        None
    };
    if let Some(v) = int {
        return Ok(v as f64);
    }
    let bad = |why: &str| Err(format!("strconv.ParseFloat: parsing {}: {why}", go_quote(s)));
    match l.as_str() {
        "inf" | "+inf" | "infinity" => return Ok(f64::INFINITY),
        "nan" => return Ok(f64::NAN),
        _ => {}
    }
    if l.starts_with("0x") || !decimal_syntax(&l) {
        return bad("invalid syntax");
    }
    match l.parse::<f64>() {
        Ok(v) if v.is_infinite() => bad("value out of range"),
        Ok(v) => Ok(v),
        Err(_) => bad("invalid syntax"),
    }
}

fn decimal_syntax(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut digits = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
        digits += 1;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return false;
    }
    if i < b.len() && b[i] == b'e' {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}

/// Checks a duration token as `model.ParseDuration` does.
pub(crate) fn parse_duration(s: &str) -> Result<(), String> {
    const UNITS: [(&str, i128); 7] = [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let invalid = || Err(format!("not a valid duration string: {}", go_quote(s)));
    if s == "0" {
        return Ok(());
    }
    if s.is_empty() {
        return Err("empty duration string".into());
    }
    let b = s.as_bytes();
    let (mut i, mut next_unit, mut total_ns, mut overflow) = (0, 0, 0i128, false);
    while i < b.len() {
        let d0 = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == d0 {
            return invalid();
        }
        let unit = if s[i..].starts_with("ms") {
            "ms"
        } else if i < b.len() {
            &s[i..i + 1]
        } else {
            return invalid();
        };
        let Some(k) = UNITS.iter().position(|(u, _)| *u == unit) else { return invalid() };
        if k < next_unit {
            return invalid();
        }
        next_unit = k + 1;
        i += unit.len();
        let n: i128 = s[d0..i - unit.len()].parse::<i64>().map(i128::from).unwrap_or(i64::MAX as i128);
        let mult = UNITS[k].1;
        if n > (i64::MAX as i128) / mult / 1_000_000 {
            overflow = true;
        }
        total_ns = total_ns.saturating_add(n.saturating_mul(mult).saturating_mul(1_000_000));
        if total_ns > i64::MAX as i128 {
            overflow = true;
        }
    }
    if overflow { Err("duration out of range".into()) } else { Ok(()) }
}

/// Whether a duration or number token is zero (an offset of zero counts as unset).
pub(crate) fn duration_is_zero(s: &str) -> bool {
    s.chars().all(|c| !c.is_ascii_digit() || c == '0')
}

// ---------------------------------------------------------------------------------------
// Regexes
// ---------------------------------------------------------------------------------------

/// Checks a label-matcher regex as Prometheus compiles it (`^(?:v)$` with Go's `regexp`)
/// and words the first error as Go does: `error parsing regexp: <code>: `<fragment>``.
pub(crate) fn go_regex_check(v: &str) -> Result<(), String> {
    let t = format!("^(?:{v})$");
    match go_regex_error(&t) {
        Some((code, frag)) => Err(format!("error parsing regexp: {code}: `{frag}`")),
        // The full Go parse that the matchers compile with has the last word.
        None => norn_model::goregex::translate(&t).map(drop).map_err(|e| e.to_string()),
    }
}

const PERL_CLASSES: &str = "dDsSwW";

/// A scan of Go's regexp syntax for the errors users make; `None` when it parses.
fn go_regex_error(t: &str) -> Option<(&'static str, String)> {
    let cs: Vec<(usize, char)> = t.char_indices().collect();
    let at = |i: usize| cs.get(i).map(|x| x.1);
    let off = |i: usize| cs.get(i).map_or(t.len(), |x| x.0);
    let mut depth = 0usize;
    // Whether the last item can take a repetition, and where the last repetition began.
    let mut operand = false;
    let mut last_repeat: Option<usize> = None;
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i].1;
        let mut repeat_start = None;
        match c {
            '(' => {
                if at(i + 1) == Some('?') {
                    match at(i + 2) {
                        Some(':') => i += 3,
                        Some('P') if at(i + 3) == Some('<') => {
                            let mut j = i + 4;
                            while at(j).is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                                j += 1;
                            }
                            if at(j) != Some('>') || j == i + 4 {
                                // Go names the text up to the `>`, or all the rest without one.
                                let end = match cs[i..].iter().position(|x| x.1 == '>') {
                                    Some(k) => off(i + k + 1),
                                    None => t.len(),
                                };
                                return Some(("invalid named capture", t[off(i)..end].to_string()));
                            }
                            i = j + 1;
                        }
                        // `(?<name>` is Go 1.22+ (Prometheus 3.x); Go 1.19 rejects any `(?<`.
                        Some('<')
                            if {
                                let mut j = i + 3;
                                while at(j).is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                                    j += 1;
                                }
                                j > i + 3 && at(j) == Some('>')
                            } =>
                        {
                            let mut j = i + 3;
                            while at(j).is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                                j += 1;
                            }
                            if at(j) != Some('>') || j == i + 3 {
                                let end = if at(j).is_some() { off(j + 1) } else { t.len() };
                                return Some(("invalid named capture", t[off(i)..end].to_string()));
                            }
                            i = j + 1;
                        }
                        _ => {
                            // Flags: (?i) or (?i:...); after `-` at least one flag.
                            let mut j = i + 2;
                            let (mut negated, mut seen) = (false, false);
                            loop {
                                match at(j) {
                                    Some('i' | 'm' | 's' | 'U') => {
                                        seen = true;
                                        j += 1;
                                    }
                                    Some('-') if !negated => {
                                        negated = true;
                                        seen = false;
                                        j += 1;
                                    }
                                    Some(')') if seen || !negated => {
                                        i = j + 1;
                                        operand = false;
                                        break;
                                    }
                                    Some(':') if seen || !negated => {
                                        i = j + 1;
                                        break;
                                    }
                                    _ => {
                                        let end = if at(j).is_some() { off(j + 1) } else { t.len() };
                                        return Some((
                                            "invalid or unsupported Perl syntax",
                                            t[off(i)..end].to_string(),
                                        ));
                                    }
                                }
                            }
                            if at(i - 1) == Some(')') {
                                continue;
                            }
                        }
                    }
                } else {
                    i += 1;
                }
                depth += 1;
                operand = false;
                last_repeat = None;
                continue;
            }
            ')' => {
                if depth == 0 {
                    return Some(("unexpected )", t.to_string()));
                }
                depth -= 1;
                operand = true;
                i += 1;
            }
            '|' => {
                operand = false;
                i += 1;
            }
            '*' | '+' | '?' | '{' => {
                let mut j = i + 1;
                if c == '{' {
                    // {n}, {n,}, {n,m}; anything else is a literal brace.
                    let mut k = i + 1;
                    let d0 = k;
                    while at(k).is_some_and(|c| c.is_ascii_digit()) {
                        k += 1;
                    }
                    let n_end = k;
                    let mut m_range = None;
                    if k > d0 && at(k) == Some(',') {
                        k += 1;
                        let m0 = k;
                        while at(k).is_some_and(|c| c.is_ascii_digit()) {
                            k += 1;
                        }
                        m_range = Some((m0, k));
                    }
                    if k == d0 || at(k) != Some('}') {
                        operand = true;
                        last_repeat = None;
                        i += 1;
                        continue;
                    }
                    j = k + 1;
                    let n: u64 = t[off(d0)..off(n_end)].parse().unwrap_or(u64::MAX);
                    let m: Option<u64> = match m_range {
                        None => Some(n),
                        Some((a, b)) if a == b => None,
                        Some((a, b)) => Some(t[off(a)..off(b)].parse().unwrap_or(u64::MAX)),
                    };
                    let bad = n > 1000 || m.is_some_and(|m| m > 1000 || m < n);
                    let mut jj = j;
                    if at(jj) == Some('?') {
                        jj += 1;
                    }
                    if bad {
                        return Some(("invalid repeat count", t[off(i)..off(jj)].to_string()));
                    }
                }
                if at(j) == Some('?') {
                    j += 1;
                }
                if let Some(r) = last_repeat {
                    return Some(("invalid nested repetition operator", t[off(r)..off(j)].to_string()));
                }
                if !operand {
                    return Some(("missing argument to repetition operator", t[off(i)..off(j)].to_string()));
                }
                repeat_start = Some(i);
                i = j;
            }
            '\\' => {
                if at(i + 1).is_none() {
                    return Some(("trailing backslash at end of expression", String::new()));
                }
                if at(i + 1) == Some('Q') {
                    // \Q...\E (or to the end) is literal text.
                    let mut k = i + 2;
                    while k < cs.len() && !(cs[k].1 == '\\' && at(k + 1) == Some('E')) {
                        k += 1;
                    }
                    i = (k + 2).min(cs.len());
                    operand = true;
                    last_repeat = None;
                    continue;
                }
                match escape_len(&cs, i) {
                    Ok(n) => i += n,
                    Err(code) => {
                        let frag = if code == "invalid character class range" {
                            class_escape_frag(t, &cs, i)
                        } else {
                            escape_frag(t, &cs, i)
                        };
                        return Some((code, frag));
                    }
                }
                operand = true;
            }
            '[' => {
                match class_end(t, &cs, i) {
                    Ok(j) => i = j,
                    Err(e) => return Some(e),
                }
                operand = true;
            }
            '^' | '$' => {
                operand = true;
                i += 1;
            }
            _ => {
                operand = true;
                i += 1;
            }
        }
        last_repeat = repeat_start;
    }
    if depth > 0 {
        return Some(("missing closing )", t.to_string()));
    }
    None
}

/// Length in chars of the escape at `i` (a backslash), or Go's error code.
fn escape_len(cs: &[(usize, char)], i: usize) -> Result<usize, &'static str> {
    let at = |k: usize| cs.get(k).map(|x| x.1);
    let Some(e) = at(i + 1) else { return Err("trailing backslash at end of expression") };
    match e {
        'a' | 'f' | 't' | 'n' | 'r' | 'v' | 'A' | 'z' | 'b' | 'B' => Ok(2),
        c if PERL_CLASSES.contains(c) => Ok(2),
        '0'..='7' => {
            let mut k = i + 2;
            while k < i + 4 && at(k).is_some_and(|c| ('0'..='7').contains(&c)) {
                k += 1;
            }
            // A lone \1-\7 is a backreference, which Go rejects; \0 and longer runs are octal.
            if e != '0' && k <= i + 2 {
                return Err("invalid escape sequence");
            }
            Ok(k - i)
        }
        'x' => {
            if at(i + 2) == Some('{') {
                let mut k = i + 3;
                let mut v: u32 = 0;
                while let Some(d) = at(k).and_then(|c| c.to_digit(16)) {
                    v = v.saturating_mul(16).saturating_add(d);
                    k += 1;
                }
                if at(k) == Some('}') && k > i + 3 && v <= 0x10FFFF {
                    Ok(k + 1 - i)
                } else {
                    Err("invalid escape sequence")
                }
            } else if at(i + 2).is_some_and(|c| c.is_ascii_hexdigit())
                && at(i + 3).is_some_and(|c| c.is_ascii_hexdigit())
            {
                Ok(4)
            } else {
                Err("invalid escape sequence")
            }
        }
        'p' | 'P' => {
            let (name, n) = if at(i + 2) == Some('{') {
                let mut k = i + 3;
                let mut s = String::new();
                while let Some(c) = at(k) {
                    if c == '}' {
                        break;
                    }
                    s.push(c);
                    k += 1;
                }
                if at(k) != Some('}') {
                    return Err("invalid character class range");
                }
                (s, k + 1 - i)
            } else {
                match at(i + 2) {
                    Some(c) => (c.to_string(), 3),
                    None => return Err("invalid character class range"),
                }
            };
            let name = name.strip_prefix('^').unwrap_or(&name);
            if regex::Regex::new(&format!("\\p{{{name}}}")).is_ok() && unicode_name_ok(name) {
                Ok(n)
            } else {
                Err("invalid character class range")
            }
        }
        // Escaped ASCII non-word characters stand for themselves.
        c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(2),
        _ => Err("invalid escape sequence"),
    }
}

/// The text Go names for a bad escape at `i`: what it consumed before giving up.
fn escape_frag(t: &str, cs: &[(usize, char)], i: usize) -> String {
    let at = |k: usize| cs.get(k).map(|x| x.1);
    let off = |k: usize| cs.get(k).map_or(t.len(), |x| x.0);
    let mut k = i + 2;
    if at(i + 1) == Some('x') {
        if at(k) == Some('{') {
            k += 1;
            let mut v: u32 = 0;
            while let Some(c) = at(k) {
                k += 1;
                let Some(d) = c.to_digit(16) else { break };
                v = v.saturating_mul(16).saturating_add(d);
                if v > 0x10FFFF {
                    break;
                }
            }
        } else {
            k += 2;
        }
    }
    t[off(i)..off(k.min(cs.len()))].to_string()
}

/// Go knows general categories and scripts by their exact (case-sensitive) names.
fn unicode_name_ok(name: &str) -> bool {
    name == "Any" || name.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && !name.contains([' ', '-', '='])
}

fn class_escape_frag(t: &str, cs: &[(usize, char)], i: usize) -> String {
    let off = |k: usize| cs.get(k).map_or(t.len(), |x| x.0);
    let mut k = i + 2;
    if cs.get(k).map(|x| x.1) == Some('{') {
        while k < cs.len() && cs[k].1 != '}' {
            k += 1;
        }
        k += 1;
    } else {
        k += 1;
    }
    t[off(i)..off(k.min(cs.len()))].to_string()
}

/// Index after the character class starting at `i`, or Go's error.
fn class_end(t: &str, cs: &[(usize, char)], i: usize) -> Result<usize, (&'static str, String)> {
    let at = |k: usize| cs.get(k).map(|x| x.1);
    let off = |k: usize| cs.get(k).map_or(t.len(), |x| x.0);
    let missing = || ("missing closing ]", t[off(i)..].to_string());
    let mut k = i + 1;
    if at(k) == Some('^') {
        k += 1;
    }
    let mut first = true;
    loop {
        let Some(c) = at(k) else { return Err(missing()) };
        if c == ']' && !first {
            return Ok(k + 1);
        }
        first = false;
        let lo_start = k;
        // [:alpha:]
        if c == '[' && at(k + 1) == Some(':') {
            let mut j = k + 2;
            while at(j).is_some_and(|c| c.is_ascii_alphabetic() || c == '^') {
                j += 1;
            }
            if at(j) == Some(':') && at(j + 1) == Some(']') {
                let name = &t[off(k + 2)..off(j)];
                let name = name.strip_prefix('^').unwrap_or(name);
                const POSIX: &[&str] = &[
                    "alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct", "space",
                    "upper", "word", "xdigit",
                ];
                if !POSIX.contains(&name) {
                    return Err(("invalid character class range", t[off(k)..off(j + 2)].to_string()));
                }
                k = j + 2;
                continue;
            }
        }
        let lo = match class_char(t, cs, k) {
            Ok((ch, n)) => {
                k += n;
                ch
            }
            Err(e) => return Err(e),
        };
        if at(k) == Some('-') && at(k + 1).is_some_and(|c| c != ']') {
            k += 1;
            // The end of a range must be one character: `\d` or `\p` there is a bad escape.
            if at(k) == Some('\\') && at(k + 1).is_some_and(|c| PERL_CLASSES.contains(c) || c == 'p' || c == 'P') {
                return Err(("invalid escape sequence", t[off(k)..off(k + 2)].to_string()));
            }
            let hi = match class_char(t, cs, k) {
                Ok((ch, n)) => {
                    k += n;
                    ch
                }
                Err(e) => return Err(e),
            };
            if let (Some(lo), Some(hi)) = (lo, hi)
                && hi < lo
            {
                return Err(("invalid character class range", t[off(lo_start)..off(k)].to_string()));
            }
        }
    }
}

/// One member of a class: the char (None for a class escape like `\d`) and its length.
#[allow(clippy::type_complexity)]
fn class_char(t: &str, cs: &[(usize, char)], k: usize) -> Result<(Option<char>, usize), (&'static str, String)> {
    let at = |k: usize| cs.get(k).map(|x| x.1);
    match at(k) {
        Some('\\') => match escape_len(cs, k) {
            Ok(n) => {
                let e = at(k + 1);
                let ch = match e {
                    Some(c) if PERL_CLASSES.contains(c) || c == 'p' || c == 'P' => None,
                    Some('n') => Some('\n'),
                    Some('t') => Some('\t'),
                    Some(c) if c.is_ascii_punctuation() => Some(c),
                    _ => None,
                };
                Ok((ch, n))
            }
            Err(code) => {
                let frag = if code == "invalid character class range" {
                    class_escape_frag(t, cs, k)
                } else {
                    escape_frag(t, cs, k)
                };
                Err((code, frag))
            }
        },
        Some(c) => Ok((Some(c), 1)),
        None => Err(("missing closing ]", String::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_regex_errors_are_worded_as_go() {
        let cases: &[(&str, &str)] = &[
            ("(", "error parsing regexp: missing closing ): `^(?:()$`"),
            ("*", "error parsing regexp: missing argument to repetition operator: `*`"),
            ("[z-a]", "error parsing regexp: invalid character class range: `z-a`"),
            ("\\p{Foo}", "error parsing regexp: invalid character class range: `\\p{Foo}`"),
            ("a**", "error parsing regexp: invalid nested repetition operator: `**`"),
            ("a)", "error parsing regexp: unexpected ): `^(?:a))$`"),
            ("[a", "error parsing regexp: missing closing ]: `[a)$`"),
            ("\\q", "error parsing regexp: invalid escape sequence: `\\q`"),
            ("a{1001}", "error parsing regexp: invalid repeat count: `{1001}`"),
            ("(?=a)", "error parsing regexp: invalid or unsupported Perl syntax: `(?=`"),
        ];
        for (re, want) in cases {
            assert_eq!(go_regex_check(re).unwrap_err(), *want, "{re}");
        }
        let go_only = ["x{", "a{,3}", "{foo", r"\Qa.b\E", r"\0", r"\012", r"\123", r"\p{^L}", r"\<", "[a&&b]", "a(?)b"];
        for ok in ["a.*b", "(?i)foo", "[[:alpha:]]+", "\\d{2,3}", "a{", "x|y|", "\\p{L}", "(?P<n>x)", "[]a]", "\\.", ""]
            .into_iter()
            .chain(go_only)
        {
            assert!(go_regex_check(ok).is_ok(), "{ok}: {:?}", go_regex_check(ok));
        }
    }

    #[test]
    fn numbers_and_durations_fail_as_in_go() {
        assert_eq!(parse_number("1e").unwrap_err(), "strconv.ParseFloat: parsing \"1e\": invalid syntax");
        assert_eq!(parse_number("1e400").unwrap_err(), "strconv.ParseFloat: parsing \"1e400\": value out of range");
        assert_eq!(parse_number("0x10"), Ok(16.0));
        assert_eq!(parse_number("010"), Ok(8.0));
        assert_eq!(parse_number(".5"), Ok(0.5));
        assert!(parse_number("Inf").is_ok_and(|v| v.is_infinite()));
        assert_eq!(parse_duration("1m1h").unwrap_err(), "not a valid duration string: \"1m1h\"");
        assert_eq!(parse_duration("9999999999y").unwrap_err(), "duration out of range");
        assert!(parse_duration("1y2w3d4h5m6s7ms").is_ok());
        assert!(parse_duration("292y").is_ok());
    }
}
