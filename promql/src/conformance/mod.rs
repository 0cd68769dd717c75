//! Runner for Prometheus's promqltest scripts (`*.test`), comparing results as the
//! upstream runner does (see FORMAT.md next to the scripts).

pub mod script;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use norn_model::{FloatHistogram, Labels, METRIC_NAME};
use promql_parser::parser::{AtModifier, Expr};

use crate::engine::{Engine, EngineOptions, QueryResult, ms_systime, parse};
use crate::histogram as hist;
use crate::storage::{MemStorage, StoredValue};
use crate::value::{Value, is_stale_nan};
use script::{SeqValue, parse_duration, parse_number, parse_series_labels, parse_values};

/// Runner settings.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Engine settings (the corpus assumes the defaults).
    pub engine: EngineOptions,
}

/// One failing case.
#[derive(Debug, Clone)]
pub struct CaseFailure {
    /// Script file name.
    pub file: String,
    /// 1-based line of the `eval` command.
    pub line: usize,
    /// The eval command line.
    pub command: String,
    /// What was expected.
    pub expected: String,
    /// What was returned.
    pub got: String,
}

impl fmt::Display for CaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:{}: {}", self.file, self.line, self.command)?;
        writeln!(f, "  expected: {}", self.expected)?;
        write!(f, "  got:      {}", self.got)
    }
}

/// One skipped case and why. The runner currently skips nothing: every upstream feature
/// is implemented; the type stays so that a future gated feature can be reported.
#[derive(Debug, Clone)]
pub struct CaseSkip {
    /// 1-based line of the `eval` command.
    pub line: usize,
    /// Why it is skipped.
    pub reason: &'static str,
}

/// The outcome of running one script.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    /// Script file name.
    pub file: String,
    /// Cases that passed.
    pub passed: usize,
    /// Failing cases with details.
    pub failures: Vec<CaseFailure>,
    /// Skipped cases with reasons.
    pub skipped: Vec<CaseSkip>,
    /// A script-level error (unreadable file, bad command), if any.
    pub error: Option<String>,
}

impl FileReport {
    /// Number of failing cases.
    pub fn failed(&self) -> usize {
        self.failures.len()
    }
}

impl fmt::Display for FileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.failures {
            writeln!(f, "{c}")?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "{}: script error: {e}", self.file)?;
        }
        write!(f, "{} passed, {} failed, {} skipped", self.passed, self.failed(), self.skipped.len())
    }
}

/// Where the upstream scripts live: `$NORN_PROMQL_TESTDATA`, else `<repo>/../shared/conformance/promql`
/// (the project's documented layout). A clone checked out somewhere else finds the shared folder in
/// an ancestor directory or at the workplace's fixed `/work/shared`; when none exists the documented
/// path is returned, so tests fail loudly naming it rather than pass without data.
pub fn testdata_dir() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("NORN_PROMQL_TESTDATA") {
        return p.into();
    }
    const REL: &str = "shared/conformance/promql";
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let documented = repo.join("..").join(REL);
    let candidates = std::iter::once(documented.clone())
        .chain(repo.ancestors().skip(1).map(|a| a.join(REL)))
        .chain(std::iter::once(Path::new("/work").join(REL)));
    for c in candidates {
        if c.is_dir() {
            return c;
        }
    }
    documented
}

#[derive(Debug, Default)]
struct Expect {
    fail: bool,
    fail_msg: Option<String>,
    fail_regex: Option<String>,
    warn: Vec<Option<Matcher>>,
    info: Vec<Option<Matcher>>,
    no_warn: bool,
    no_info: bool,
    ordered: bool,
    range_vector: Option<(i64, i64, i64)>,
    string: Option<String>,
    scalar: Option<f64>,
    series: Vec<(Labels, Vec<SeqValue>)>,
}

#[derive(Debug, Clone)]
enum Matcher {
    Msg(String),
    Regex(String),
}

impl Matcher {
    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Msg(m) => m == s,
            Matcher::Regex(r) => regex::Regex::new(r).map(|re| re.is_match(s)).unwrap_or(false),
        }
    }
}

fn parse_expect_matcher(rest: &str) -> Option<Matcher> {
    let rest = rest.trim();
    if let Some(m) = rest.strip_prefix("msg:") {
        return Some(Matcher::Msg(m.trim().to_string()));
    }
    if let Some(r) = rest.strip_prefix("regex:") {
        return Some(Matcher::Regex(r.trim().to_string()));
    }
    None
}

enum Eval {
    Instant { t: i64 },
    Range { start: i64, end: i64, step: i64 },
}

/// Runs one script file.
pub fn run_file(path: &Path, opts: &Options) -> FileReport {
    let file = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    let mut rep = FileReport { file: file.clone(), ..Default::default() };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            rep.error = Some(format!("cannot read {}: {e}", path.display()));
            return rep;
        }
    };
    run_script(&file, &text, opts, &mut rep);
    rep
}

/// Runs a script given as text.
pub fn run_script(file: &str, text: &str, opts: &Options, rep: &mut FileReport) {
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim();
            if t.starts_with('#') { String::new() } else { t.to_string() }
        })
        .collect();
    let engine = Engine::new(opts.engine.clone());
    let mut storage = MemStorage::new();
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        if line.is_empty() {
            i += 1;
            continue;
        }
        let lineno = i + 1;
        let word = line.split_whitespace().next().unwrap_or("").to_lowercase();
        // Body: following non-empty lines.
        let mut j = i + 1;
        // A command's body runs to the next blank line or the next command.
        while j < lines.len() && !lines[j].is_empty() && word != "clear" && !is_command(&lines[j]) {
            j += 1;
        }
        let body: Vec<&str> = lines[i + 1..j].iter().map(String::as_str).collect();
        match word.as_str() {
            "clear" => storage = MemStorage::new(),
            "load" | "load_with_nhcb" => {
                if let Err(e) = load(&mut storage, line, &body, word == "load_with_nhcb") {
                    rep.error = Some(format!("line {lineno}: {e}"));
                    return;
                }
            }
            w if w.starts_with("eval") => {
                run_eval(file, lineno, line, &body, &engine, &storage, rep);
            }
            _ => {
                rep.error = Some(format!("line {lineno}: unknown command {line:?}"));
                return;
            }
        }
        i = j;
    }
}

fn is_command(line: &str) -> bool {
    let w = line.split_whitespace().next().unwrap_or("").to_lowercase();
    matches!(
        w.as_str(),
        "load" | "load_with_nhcb" | "clear" | "eval" | "eval_fail" | "eval_warn" | "eval_info" | "eval_ordered"
    )
}

fn load(storage: &mut MemStorage, header: &str, body: &[&str], nhcb: bool) -> Result<(), String> {
    let parts: Vec<&str> = header.split_whitespace().collect();
    let interval = parse_duration(parts.get(1).ok_or("load needs an interval")?)?;
    let mut block: Vec<(Labels, Vec<(i64, StoredValue)>)> = Vec::new();
    let mut idx: HashMap<Labels, usize> = HashMap::new();
    let mut pending_st: HashMap<Labels, Vec<Option<i64>>> = HashMap::new();
    let mut sts: HashMap<Labels, HashMap<i64, i64>> = HashMap::new();
    for l in body {
        let (labels, rest) = parse_series_labels(l)?;
        if let Some(st) = rest.strip_prefix("@st") {
            pending_st.insert(labels, script::parse_st_values(st)?);
            continue;
        }
        if let Some(offsets) = pending_st.remove(&labels) {
            let m = sts.entry(labels.clone()).or_default();
            for (k, o) in offsets.into_iter().enumerate() {
                if let Some(o) = o {
                    let t = k as i64 * interval;
                    m.insert(t, t + o);
                }
            }
        }
        let vals = parse_values(rest)?;
        let mut samples = Vec::new();
        // The TSDB head records counter-reset hints when it appends histograms to a chunk:
        // after a histogram, the next one is marked as reset or not-reset. Emulate that.
        let mut prev: Option<Arc<FloatHistogram>> = None;
        for (k, v) in vals.into_iter().enumerate() {
            let t = k as i64 * interval;
            match v {
                SeqValue::Omitted => {}
                SeqValue::Float(f) => {
                    prev = None;
                    samples.push((t, StoredValue::Float(f)))
                }
                SeqValue::Histogram(mut h, set) => {
                    if !set
                        && h.counter_reset_hint != norn_model::CounterResetHint::Gauge
                        && let Some(p) = &prev
                    {
                        // A detected reset cuts a new chunk whose hint reads back as unknown
                        // (prometheus/prometheus#15346).
                        h.counter_reset_hint = if hist::detect_reset(&h, p) {
                            norn_model::CounterResetHint::Unknown
                        } else {
                            norn_model::CounterResetHint::NotCounterReset
                        };
                    }
                    let h = Arc::new(*h);
                    prev = Some(h.clone());
                    samples.push((t, StoredValue::Histogram(h)))
                }
            }
        }
        match idx.get(&labels) {
            Some(&i) => block[i].1 = samples,
            None => {
                idx.insert(labels.clone(), block.len());
                block.push((labels, samples));
            }
        }
    }
    if nhcb {
        for (l, s) in nhcb_convert(&block) {
            storage.append(&l, s);
        }
    }
    for (l, s) in block {
        match sts.get(&l) {
            Some(m) => storage.append_with_st(&l, s.into_iter().map(|(t, v)| (t, v, m.get(&t).copied().unwrap_or(0)))),
            None => storage.append(&l, s),
        }
    }
    Ok(())
}

/// Converts classic histogram series of a load block into NHCB series.
fn nhcb_convert(block: &[(Labels, Vec<(i64, StoredValue)>)]) -> Vec<(Labels, Vec<(i64, StoredValue)>)> {
    #[derive(Default)]
    struct G {
        // t -> (bounds -> cumulative count), count, sum
        buckets: BTreeMap<i64, Vec<(f64, f64)>>,
        count: BTreeMap<i64, f64>,
        sum: BTreeMap<i64, f64>,
    }
    let mut groups: Vec<(Labels, G)> = Vec::new();
    let mut idx: HashMap<Labels, usize> = HashMap::new();
    for (l, samples) in block {
        let name = l.get(METRIC_NAME).unwrap_or("");
        let (base, kind) = if let Some(b) = name.strip_suffix("_bucket") {
            (b, 0)
        } else if let Some(b) = name.strip_suffix("_count") {
            (b, 1)
        } else if let Some(b) = name.strip_suffix("_sum") {
            (b, 2)
        } else {
            continue;
        };
        let le = if kind == 0 {
            match l.get("le").and_then(parse_number) {
                Some(v) if !v.is_nan() => Some(v),
                _ => continue,
            }
        } else {
            None
        };
        let mut b = l.to_builder();
        b.set(METRIC_NAME, base);
        b.del("le");
        let key = b.build();
        let gi = *idx.entry(key.clone()).or_insert_with(|| {
            groups.push((key, G::default()));
            groups.len() - 1
        });
        let g = &mut groups[gi].1;
        for (t, v) in samples {
            let StoredValue::Float(f) = v else { continue };
            match kind {
                0 => g.buckets.entry(*t).or_default().push((le.unwrap_or(f64::INFINITY), *f)),
                1 => {
                    g.count.insert(*t, *f);
                }
                _ => {
                    g.sum.insert(*t, *f);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (l, g) in groups {
        let mut samples = Vec::new();
        for (t, mut bs) in g.buckets {
            bs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
            if bs.iter().any(|b| is_stale_nan(b.1)) {
                samples.push((t, StoredValue::Float(crate::value::stale_nan())));
                continue;
            }
            let mut h = FloatHistogram { schema: norn_model::histogram::CUSTOM_BUCKETS_SCHEMA, ..Default::default() };
            let mut prev = 0.0;
            let mut counts = Vec::new();
            for (ub, c) in &bs {
                if ub.is_finite() {
                    h.custom_values.push(*ub);
                }
                counts.push(c - prev);
                prev = *c;
            }
            // Without an explicit +Inf bucket the overflow bucket is empty.
            if bs.last().map(|b| b.0.is_finite()).unwrap_or(true) {
                counts.push(0.0);
            }
            h.positive_spans = vec![norn_model::Span { offset: 0, length: counts.len() as u32 }];
            h.positive_buckets = counts;
            h.count = g.count.get(&t).copied().unwrap_or(prev);
            h.sum = g.sum.get(&t).copied().unwrap_or(0.0);
            hist::compact(&mut h);
            samples.push((t, StoredValue::Histogram(Arc::new(h))));
        }
        if !samples.is_empty() {
            out.push((l, samples));
        }
    }
    out
}

fn run_eval(
    file: &str,
    lineno: usize,
    line: &str,
    body: &[&str],
    engine: &Engine,
    storage: &MemStorage,
    rep: &mut FileReport,
) {
    let fail = |rep: &mut FileReport, expected: String, got: String| {
        rep.failures.push(CaseFailure {
            file: file.to_string(),
            line: lineno,
            command: line.to_string(),
            expected,
            got,
        });
    };
    let parsed = match parse_eval(line, body) {
        Ok(p) => p,
        Err(e) => {
            fail(rep, "a valid eval command".into(), format!("script error: {e}"));
            return;
        }
    };
    let (mode, query, expect) = parsed;
    let (step, range) = match mode {
        Eval::Instant { .. } => (0, 0),
        Eval::Range { start, end, step } => (step, end - start),
    };
    let ast = parse(&crate::rewrite::preprocess(&query, step, range));
    let ast = match ast {
        Ok(a) => a,
        Err(e) => {
            if expect.fail {
                match check_fail_msg(&expect, &e.to_string()) {
                    Ok(()) => rep.passed += 1,
                    Err(m) => fail(rep, m, e.to_string()),
                }
            } else {
                fail(rep, "query to parse".into(), format!("parse error: {e}"));
            }
            return;
        }
    };
    let result = match mode {
        Eval::Instant { t } => check_instant(engine, storage, &ast, &query, t, &expect),
        Eval::Range { start, end, step } => {
            let r = engine.range_expr(storage, &ast, &query, start, end, step);
            check_result(&r, &expect, Some((start, end, step)), true)
        }
    };
    match result {
        Ok(()) => rep.passed += 1,
        Err((e, g)) => fail(rep, e, g),
    }
}

type CheckResult = Result<(), (String, String)>;

fn check_instant(
    engine: &Engine,
    storage: &MemStorage,
    ast: &Expr,
    query: &str,
    t: i64,
    expect: &Expect,
) -> CheckResult {
    let r = engine.instant_expr(storage, ast, query, t);
    check_result(&r, expect, None, true)?;
    let time_dependent = [
        "days_in_month",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "hour",
        "minute",
        "month",
        "year",
        "end",
        "range",
        "start",
        "step",
        "time",
        "predict_linear",
        "timestamp",
    ];
    let mut variants: Vec<(Expr, i64, &str)> = vec![(ast.clone(), t, "original")];
    if !calls_any(ast, &time_dependent) {
        let mut at = ast.clone();
        add_at(&mut at, t);
        let times = if t == 0 { vec![-1000, 0, 1000] } else { vec![-10 * t, 0, t / 5, t, 10 * t] };
        for et in times {
            let r = engine.instant_expr(storage, &at, query, et);
            check_result(&r, expect, None, false)
                .map_err(|(e, g)| (e, format!("{g} (with @ {t} evaluated at {et})")))?;
            variants.push((at.clone(), et, "@-rewritten"));
        }
    }
    let range_ok = !expect.ordered
        && expect.range_vector.is_none()
        && expect.string.is_none()
        && !["start()", "end()", "range()", "step()"].iter().any(|s| query.contains(s));
    if range_ok && !expect.fail {
        for (e, et, what) in variants {
            let r = engine.range_expr(storage, &e, query, et - 60_000, et + 60_000, 60_000);
            let v = match r.value {
                Ok(Value::Matrix(m)) => m,
                Ok(v) => return Err(("matrix in range mode".into(), v.to_string())),
                Err(err) => return Err(("success in range mode".into(), format!("error {err} ({what} at {et})"))),
            };
            // Points at the evaluation time, as an instant vector.
            let mut vec = Vec::new();
            for s in &v {
                if let Some(p) = s.floats.iter().find(|p| p.0 == et) {
                    vec.push(crate::value::Sample {
                        metric: s.metric.clone(),
                        t: et,
                        f: p.1,
                        h: None,
                        drop_name: false,
                    });
                }
                if let Some(p) = s.histograms.iter().find(|p| p.0 == et) {
                    vec.push(crate::value::Sample {
                        metric: s.metric.clone(),
                        t: et,
                        f: 0.0,
                        h: Some(p.1.clone()),
                        drop_name: false,
                    });
                }
            }
            let value = if expect.scalar.is_some() {
                match v.first() {
                    Some(s) => Value::Scalar(s.floats.iter().find(|p| p.0 == et).map(|p| p.1).unwrap_or(f64::NAN)),
                    None => Value::Vector(vec),
                }
            } else {
                Value::Vector(vec)
            };
            let rr = QueryResult { value: Ok(value), warnings: vec![], infos: vec![] };
            check_result(&rr, expect, None, false)
                .map_err(|(e, g)| (e, format!("{g} (range mode, {what} at {et})")))?;
        }
    }
    Ok(())
}

fn calls_any(e: &Expr, names: &[&str]) -> bool {
    match e {
        Expr::Call(c) => names.contains(&c.func.name) || c.args.args.iter().any(|a| calls_any(a, names)),
        Expr::Aggregate(a) => calls_any(&a.expr, names) || a.param.as_ref().is_some_and(|p| calls_any(p, names)),
        Expr::Unary(u) => calls_any(&u.expr, names),
        Expr::Binary(b) => calls_any(&b.lhs, names) || calls_any(&b.rhs, names),
        Expr::Paren(p) => calls_any(&p.expr, names),
        Expr::Subquery(s) => calls_any(&s.expr, names),
        Expr::VectorSelector(vs) => matches!(vs.at, Some(AtModifier::Start) | Some(AtModifier::End)),
        Expr::MatrixSelector(ms) => matches!(ms.vs.at, Some(AtModifier::Start) | Some(AtModifier::End)),
        _ => false,
    }
}

fn add_at(e: &mut Expr, t: i64) {
    match e {
        Expr::VectorSelector(vs) => {
            if vs.at.is_none() {
                vs.at = Some(AtModifier::At(ms_systime(t)));
            }
        }
        Expr::MatrixSelector(ms) => {
            if ms.vs.at.is_none() {
                ms.vs.at = Some(AtModifier::At(ms_systime(t)));
            }
        }
        Expr::Subquery(s) => {
            if s.at.is_none() {
                s.at = Some(AtModifier::At(ms_systime(t)));
            }
        }
        Expr::Call(c) => c.args.args.iter_mut().for_each(|a| add_at(a, t)),
        Expr::Aggregate(a) => {
            add_at(&mut a.expr, t);
            if let Some(p) = a.param.as_mut() {
                add_at(p, t);
            }
        }
        Expr::Unary(u) => add_at(&mut u.expr, t),
        Expr::Binary(b) => {
            add_at(&mut b.lhs, t);
            add_at(&mut b.rhs, t);
        }
        Expr::Paren(p) => add_at(&mut p.expr, t),
        _ => {}
    }
}

fn parse_eval(line: &str, body: &[&str]) -> Result<(Eval, String, Expect), String> {
    let mut words = line.splitn(2, char::is_whitespace);
    let cmd = words.next().unwrap_or("").to_lowercase();
    let rest = words.next().unwrap_or("").trim();
    let mut expect = Expect::default();
    match cmd.as_str() {
        "eval" => {}
        "eval_fail" => expect.fail = true,
        "eval_warn" => expect.warn.push(None),
        "eval_info" => expect.info.push(None),
        "eval_ordered" => expect.ordered = true,
        other => return Err(format!("unknown command {other}")),
    }
    let (mode, query) = if let Some(r) = rest.strip_prefix("instant") {
        let r = r.trim_start().strip_prefix("at").ok_or("expected 'at'")?.trim_start();
        let (t, q) = r.split_once(char::is_whitespace).ok_or("missing query")?;
        (Eval::Instant { t: parse_duration(t)? }, q.trim().to_string())
    } else if let Some(r) = rest.strip_prefix("range") {
        let r = r.trim_start().strip_prefix("from").ok_or("expected 'from'")?.trim_start();
        let (s, r) = r.split_once(char::is_whitespace).ok_or("bad range")?;
        let r = r.trim_start().strip_prefix("to").ok_or("expected 'to'")?.trim_start();
        let (e, r) = r.split_once(char::is_whitespace).ok_or("bad range")?;
        let r = r.trim_start().strip_prefix("step").ok_or("expected 'step'")?.trim_start();
        let (st, q) = r.split_once(char::is_whitespace).ok_or("bad range")?;
        (
            Eval::Range { start: parse_duration(s)?, end: parse_duration(e)?, step: parse_duration(st)? },
            q.trim().to_string(),
        )
    } else {
        return Err(format!("bad eval command {line:?}"));
    };
    for l in body {
        let l = l.trim();
        if let Some(r) = l.strip_prefix("expect ") {
            let r = r.trim();
            if let Some(x) = r.strip_prefix("fail") {
                expect.fail = true;
                match parse_expect_matcher(x) {
                    Some(Matcher::Msg(m)) => expect.fail_msg = Some(m),
                    Some(Matcher::Regex(m)) => expect.fail_regex = Some(m),
                    None => {}
                }
            } else if r == "no_warn" {
                expect.no_warn = true;
            } else if r == "no_info" {
                expect.no_info = true;
            } else if let Some(x) = r.strip_prefix("warn") {
                expect.warn.push(parse_expect_matcher(x));
            } else if let Some(x) = r.strip_prefix("info") {
                expect.info.push(parse_expect_matcher(x));
            } else if r == "ordered" {
                expect.ordered = true;
            } else if let Some(x) = r.strip_prefix("range vector from") {
                let w: Vec<&str> = x.split_whitespace().collect();
                if w.len() != 5 || w[1] != "to" || w[3] != "step" {
                    return Err(format!("bad range vector expectation {l:?}"));
                }
                expect.range_vector = Some((parse_duration(w[0])?, parse_duration(w[2])?, parse_duration(w[4])?));
            } else if let Some(x) = r.strip_prefix("string") {
                let (s, _) = script::parse_quoted(x.trim())?;
                expect.string = Some(s);
            } else {
                return Err(format!("unknown expectation {l:?}"));
            }
            continue;
        }
        if let Some(m) = l.strip_prefix("expected_fail_message") {
            expect.fail = true;
            expect.fail_msg = Some(m.trim().to_string());
            continue;
        }
        if let Some(m) = l.strip_prefix("expected_fail_regexp") {
            expect.fail = true;
            expect.fail_regex = Some(m.trim().to_string());
            continue;
        }
        if let Some(v) = parse_number(l) {
            expect.scalar = Some(v);
            break;
        }
        let (labels, rest) = parse_series_labels(l)?;
        let vals = parse_values(rest)?;
        expect.series.push((labels, vals));
    }
    Ok((mode, query, expect))
}

fn check_fail_msg(expect: &Expect, msg: &str) -> Result<(), String> {
    if let Some(m) = &expect.fail_msg
        && m != msg
    {
        return Err(format!("error message {m:?}"));
    }
    if let Some(r) = &expect.fail_regex {
        let re = regex::Regex::new(r).map_err(|e| format!("valid regex: {e}"))?;
        if !re.is_match(msg) {
            return Err(format!("error matching {r:?}"));
        }
    }
    Ok(())
}

fn check_annotations(kind: &str, got: &[String], exp: &[Option<Matcher>], none: bool) -> CheckResult {
    if none && !got.is_empty() {
        return Err((format!("no {kind}"), format!("{got:?}")));
    }
    if exp.is_empty() {
        return Ok(());
    }
    if got.is_empty() {
        return Err((format!("a {kind}"), "none".into()));
    }
    for m in exp.iter().flatten() {
        if !got.iter().any(|g| m.matches(g)) {
            return Err((format!("{kind} {m:?}"), format!("{got:?}")));
        }
    }
    if !exp.iter().any(|m| m.is_none()) {
        for g in got {
            if !exp.iter().flatten().any(|m| m.matches(g)) {
                return Err((format!("{kind}s {exp:?}"), format!("unexpected {kind} {g:?}")));
            }
        }
    }
    Ok(())
}

/// Float comparison as `util/almost.Equal` with epsilon 1e-6.
pub fn almost_equal(a: f64, b: f64) -> bool {
    if is_stale_nan(a) || is_stale_nan(b) {
        return is_stale_nan(a) && is_stale_nan(b);
    }
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let eps = 1e-6;
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < eps * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < eps
}

fn hist_equal(exp: &FloatHistogram, hint_set: bool, got: &FloatHistogram) -> bool {
    if exp.schema != got.schema
        || !almost_equal(exp.count, got.count)
        || !almost_equal(exp.sum, got.sum)
        || !almost_equal(exp.zero_count, got.zero_count)
        || exp.zero_threshold != got.zero_threshold
    {
        return false;
    }
    if hist::uses_custom(exp) && exp.custom_values != got.custom_values {
        return false;
    }
    if hint_set && exp.counter_reset_hint != got.counter_reset_hint {
        return false;
    }
    let cmp = |a: BTreeMap<i32, f64>, b: BTreeMap<i32, f64>| {
        let a: Vec<_> = a.into_iter().filter(|x| x.1 != 0.0).collect();
        let b: Vec<_> = b.into_iter().filter(|x| x.1 != 0.0).collect();
        a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.0 == y.0 && almost_equal(x.1, y.1))
    };
    cmp(
        hist::to_map(&exp.positive_spans, &exp.positive_buckets),
        hist::to_map(&got.positive_spans, &got.positive_buckets),
    ) && cmp(
        hist::to_map(&exp.negative_spans, &exp.negative_buckets),
        hist::to_map(&got.negative_spans, &got.negative_buckets),
    )
}

fn value_matches(exp: &SeqValue, f: f64, h: Option<&Arc<FloatHistogram>>) -> bool {
    match (exp, h) {
        (SeqValue::Float(e), None) => almost_equal(*e, f),
        (SeqValue::Histogram(e, set), Some(g)) => hist_equal(e, *set, g),
        _ => false,
    }
}

fn fmt_seq(v: &SeqValue) -> String {
    match v {
        SeqValue::Omitted => "_".into(),
        SeqValue::Float(f) => norn_model::format::go_format_g(*f),
        SeqValue::Histogram(h, _) => crate::value::format_histogram(h),
    }
}

fn fmt_expected(expect: &Expect) -> String {
    if let Some(s) = &expect.scalar {
        return format!("scalar {}", norn_model::format::go_format_g(*s));
    }
    if let Some(s) = &expect.string {
        return format!("string {s:?}");
    }
    let parts: Vec<String> = expect
        .series
        .iter()
        .map(|(l, v)| format!("{l} {}", v.iter().map(fmt_seq).collect::<Vec<_>>().join(" ")))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn check_result(r: &QueryResult, expect: &Expect, range: Option<(i64, i64, i64)>, annotations: bool) -> CheckResult {
    let v = match &r.value {
        Err(e) => {
            if expect.fail {
                return check_fail_msg(expect, &e.to_string()).map_err(|m| (m, e.to_string()));
            }
            return Err((fmt_expected(expect), format!("error: {e}")));
        }
        Ok(v) => v,
    };
    if expect.fail {
        return Err(("query to fail".into(), v.to_string()));
    }
    if annotations {
        check_annotations("warning", &r.warnings, &expect.warn, expect.no_warn)?;
        check_annotations("info", &r.infos, &expect.info, expect.no_info)?;
    }
    let mismatch = || Err((fmt_expected(expect), v.to_string()));
    match v {
        Value::String(s) => {
            if expect.string.as_deref() == Some(s.as_str()) {
                Ok(())
            } else {
                mismatch()
            }
        }
        Value::Scalar(f) => match expect.scalar {
            Some(e) if almost_equal(e, *f) => Ok(()),
            _ => mismatch(),
        },
        Value::Vector(vec) => {
            if expect.scalar.is_some() || expect.string.is_some() || expect.range_vector.is_some() {
                return mismatch();
            }
            if vec.len() != expect.series.len() {
                return mismatch();
            }
            let mut pos: HashMap<&Labels, usize> = HashMap::new();
            for (i, (l, _)) in expect.series.iter().enumerate() {
                pos.insert(l, i);
            }
            for (ri, s) in vec.iter().enumerate() {
                let Some(&ei) = pos.get(&s.metric) else { return mismatch() };
                if expect.ordered && ei != ri {
                    return mismatch();
                }
                let vals = &expect.series[ei].1;
                if vals.len() != 1 || !value_matches(&vals[0], s.f, s.h.as_ref()) {
                    return mismatch();
                }
            }
            Ok(())
        }
        Value::Matrix(m) => {
            let grid = match (range, expect.range_vector) {
                (Some(g), _) => g,
                (None, Some(g)) => g,
                (None, None) => return mismatch(),
            };
            if expect.scalar.is_some() {
                // A scalar range query: one series with empty labels.
                let Some(e) = expect.scalar else { return mismatch() };
                return if m.len() == 1 && m[0].floats.iter().all(|p| almost_equal(e, p.1)) {
                    Ok(())
                } else {
                    mismatch()
                };
            }
            for w in m.windows(2) {
                if w[0].metric >= w[1].metric {
                    return Err(("matrix sorted by labels".into(), v.to_string()));
                }
            }
            if m.len() != expect.series.len() {
                return mismatch();
            }
            let mut pos: HashMap<&Labels, usize> = HashMap::new();
            for (i, (l, _)) in expect.series.iter().enumerate() {
                pos.insert(l, i);
            }
            for s in m {
                let Some(&ei) = pos.get(&s.metric) else { return mismatch() };
                let (start, _end, step) = grid;
                let mut ef: Vec<(i64, f64)> = Vec::new();
                let mut eh: Vec<(i64, &FloatHistogram, bool)> = Vec::new();
                for (k, ev) in expect.series[ei].1.iter().enumerate() {
                    let t = start + k as i64 * step;
                    match ev {
                        SeqValue::Omitted => {}
                        SeqValue::Float(f) => ef.push((t, *f)),
                        SeqValue::Histogram(h, set) => eh.push((t, h, *set)),
                    }
                }
                if ef.len() != s.floats.len() || eh.len() != s.histograms.len() {
                    return mismatch();
                }
                for (a, b) in ef.iter().zip(s.floats.iter()) {
                    if a.0 != b.0 || !almost_equal(a.1, b.1) {
                        return mismatch();
                    }
                }
                for (a, b) in eh.iter().zip(s.histograms.iter()) {
                    if a.0 != b.0 || !hist_equal(a.1, a.2, &b.1) {
                        return mismatch();
                    }
                }
            }
            Ok(())
        }
    }
}
