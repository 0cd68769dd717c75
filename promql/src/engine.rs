//! Query evaluation. Expressions are evaluated step by step (a range query is the
//! instant evaluation at each step, exactly as Prometheus's range evaluation defines
//! it); selections are fetched from storage once per selector and then sliced per step.
//! Range functions over selectors and subqueries, and range queries of a plain selector,
//! walk each series once across all steps instead ([`crate::series_major`]), with the
//! same arithmetic, so both orders give identical results.

use std::collections::BTreeSet;

use crate::fasthash::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use norn_model::{Labels, MatchType, Matcher};
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, AtModifier, Expr, MatrixSelector, Offset, SubqueryExpr, VectorSelector};

use norn_model::format::go_quote;

use crate::storage::{Queryable, SelectHints, StoredSeries, StoredValue};
use crate::value::{Sample, Series, Value, is_stale_nan};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back (ms) an instant selector looks for the latest sample (left-open).
    pub lookback_delta: i64,
    /// Step (ms) of subqueries written without one (`[5m:]`).
    pub default_subquery_step: i64,
    /// Most samples a query may hold in memory at once: the points of the result built so
    /// far and of kept intermediate results (subquery matrices, range functions evaluated
    /// for all steps) plus the samples the current step has loaded, as Prometheus counts.
    pub max_samples: usize,
    /// Keep `__name__` until the end of the query (Prometheus's delayed name removal).
    pub delayed_name_removal: bool,
    /// Give up on a query after this long.
    pub timeout: Option<Duration>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta: 5 * 60 * 1000,
            default_subquery_step: 60 * 1000,
            max_samples: 50_000_000,
            delayed_name_removal: true,
            timeout: Some(Duration::from_secs(120)),
        }
    }
}

/// A query failure, worded as Prometheus words it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// The query text does not parse or type-check.
    #[error("{0}")]
    Parse(String),
    /// Evaluation failed.
    #[error("{0}")]
    Eval(String),
    /// The sample limit was exceeded.
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
    /// The query ran longer than the configured timeout.
    #[error("query timed out in query execution")]
    Timeout,
}

/// The outcome of a query: a value or an error, plus annotations.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// The result value or the failure.
    pub value: Result<Value, QueryError>,
    /// Warnings (`PromQL warning: …`).
    pub warnings: Vec<String>,
    /// Infos (`PromQL info: …`).
    pub infos: Vec<String>,
}

/// Annotations collected during evaluation.
#[derive(Debug, Default, Clone)]
pub(crate) struct Annotations {
    pub warnings: BTreeSet<String>,
    pub infos: BTreeSet<String>,
}

/// The PromQL engine.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    /// Settings.
    pub opts: EngineOptions,
}

/// Parses a query. Errors are Prometheus's: text and `line:col` position come from
/// [`crate::parse::check_query`], which parses and type-checks as Prometheus does.
pub fn parse(query: &str) -> Result<Expr, QueryError> {
    crate::rewrite::register_trim_functions();
    // Prometheus's own checks decide the error and its wording (see `parse.rs`).
    let checked = crate::parse::check_query(query).map_err(|e| QueryError::Parse(e.render(query)));
    match (raw_parse(&crate::rewrite::mark_go_regex(query)), checked) {
        (Ok(e), Ok(())) => Ok(e),
        (_, Err(e)) => Err(e),
        // promql-parser rejects what Prometheus accepts: its message, at a guessed position.
        (Err(msg), Ok(())) => {
            let off = error_offset(query);
            let before = &query[..off];
            let line = before.matches('\n').count() + 1;
            let col = before.rfind('\n').map(|i| before[i + 1..].chars().count()).unwrap_or(before.chars().count()) + 1;
            Err(QueryError::Parse(format!("{line}:{col}: parse error: {msg}")))
        }
    }
}

fn raw_parse(query: &str) -> Result<Expr, String> {
    // The parser is robust on all inputs we have tried, but a panic there must not take
    // the caller down.
    match std::panic::catch_unwind(|| parser::parse(query)) {
        Ok(r) => r,
        Err(_) => Err(format!("could not parse query {query:?}")),
    }
}

/// Byte offsets where tokens start (a rough PromQL tokenisation, enough for positions).
fn token_starts(q: &str) -> Vec<usize> {
    let b = q.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        out.push(i);
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                if b[i] == b'\\' && c != b'`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b':' || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':' || b[i] == b'.') {
                i += 1;
            }
        } else if b"+-*/%^=!<>~@".contains(&c) {
            // An operator: its first character plus any comparison/regex continuation.
            i += 1;
            while i < b.len() && b"=!<>~".contains(&b[i]) {
                i += 1;
            }
        } else {
            i += c.len_utf8_hint();
        }
    }
    out
}

trait Utf8Hint {
    fn len_utf8_hint(self) -> usize;
}

impl Utf8Hint for u8 {
    fn len_utf8_hint(self) -> usize {
        match self {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        }
    }
}

/// Whether some continuation makes `prefix` a valid query.
fn viable(prefix: &str) -> bool {
    const PROBES: [&str; 14] =
        ["", " 1", " x", ")", " 1)", " x)", "]", "}", "5m]", "5m])", "\"\")", " (x)", " (x) (x)", ") (x)"];
    PROBES.iter().any(|p| raw_parse(&format!("{prefix}{p}")).is_ok())
}

/// Offset of the first token after which no continuation can make the query valid; the
/// end of the query when every prefix could still be completed.
fn error_offset(q: &str) -> usize {
    if q.len() > 4096 {
        return 0;
    }
    let starts = token_starts(q);
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(q.len());
        if !viable(q[..end].trim_end()) {
            return s;
        }
    }
    q.trim_end().len()
}

/// Most steps a range query may have (as Prometheus's API enforces).
const MAX_RANGE_POINTS: i64 = 11_000;
/// Most steps one subquery evaluation may take; beyond this the query would hold more
/// samples than any sensible limit allows.
const MAX_SUBQUERY_STEPS: i64 = 1_000_000;

pub(crate) type EvalResult<T> = Result<T, QueryError>;

/// Milliseconds of a parser duration.
pub(crate) fn dur_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => dur_ms(d),
        Some(Offset::Neg(d)) => -dur_ms(d),
    }
}

pub(crate) fn systime_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// A SystemTime for a millisecond timestamp (negative ones included).
pub fn ms_systime(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

impl Engine {
    /// An engine with the given settings.
    pub fn new(opts: EngineOptions) -> Self {
        Engine { opts }
    }

    /// Evaluates `query` at `ts` (ms).
    pub fn instant_query(&self, q: &dyn Queryable, query: &str, ts: i64) -> QueryResult {
        match parse(&crate::rewrite::preprocess(query, 0, 0)) {
            Ok(e) => self.instant_expr(q, &e, query, ts),
            Err(e) => QueryResult { value: Err(e), warnings: vec![], infos: vec![] },
        }
    }

    /// Evaluates `query` from `start` to `end` every `step` (all ms).
    pub fn range_query(&self, q: &dyn Queryable, query: &str, start: i64, end: i64, step: i64) -> QueryResult {
        match parse(&crate::rewrite::preprocess(query, step, end.saturating_sub(start))) {
            Ok(e) => self.range_expr(q, &e, query, start, end, step),
            Err(e) => QueryResult { value: Err(e), warnings: vec![], infos: vec![] },
        }
    }

    /// Evaluates a parsed expression at one instant; `text` is used for annotation positions.
    pub fn instant_expr(&self, q: &dyn Queryable, e: &Expr, text: &str, ts: i64) -> QueryResult {
        let mut ev = Evaluator::new(q, &self.opts, ts, ts, 0, text);
        // Subqueries inside take their inner steps from this one-step grid.
        ev.grid = StepGrid::new(ts, ts, 1);
        let value = ev.eval(e, ts).and_then(|v| finish_value(v, &self.opts));
        ev.into_result(value)
    }

    /// Evaluates a parsed expression as a range query.
    pub fn range_expr(&self, q: &dyn Queryable, e: &Expr, text: &str, start: i64, end: i64, step: i64) -> QueryResult {
        let mut ev = Evaluator::new(q, &self.opts, start, end, step, text);
        let value = ev.range_eval(e, start, end, step);
        ev.into_result(value)
    }
}

/// Drops metric names marked for delayed removal and rejects duplicate label sets.
fn finish_value(v: Value, _opts: &EngineOptions) -> EvalResult<Value> {
    match v {
        Value::Vector(mut vec) => {
            for s in vec.iter_mut() {
                if s.drop_name {
                    s.metric = drop_metric_name(&s.metric);
                    s.drop_name = false;
                }
            }
            let mut seen = HashSet::with_capacity_and_hasher(vec.len(), Default::default());
            for s in &vec {
                if !seen.insert(s.metric.clone()) {
                    return Err(QueryError::Eval("vector cannot contain metrics with the same labelset".into()));
                }
            }
            Ok(Value::Vector(vec))
        }
        Value::Matrix(m) => {
            // Series that end up with the same labels once names are dropped are merged;
            // only two points at the same time are a conflict.
            let mut out: Vec<Series> = Vec::with_capacity(m.len());
            let mut idx: HashMap<Labels, usize> = HashMap::with_capacity_and_hasher(m.len(), Default::default());
            let mut merged = false;
            for mut s in m {
                if s.drop_name {
                    s.metric = drop_metric_name(&s.metric);
                    s.drop_name = false;
                }
                match idx.get(&s.metric) {
                    None => {
                        idx.insert(s.metric.clone(), out.len());
                        out.push(s);
                    }
                    Some(&i) => {
                        merged = true;
                        let o = &mut out[i];
                        o.floats.extend(s.floats);
                        o.histograms.extend(s.histograms);
                    }
                }
            }
            if merged {
                for s in out.iter_mut() {
                    s.floats.sort_by_key(|p| p.0);
                    s.histograms.sort_by_key(|p| p.0);
                    let dup = s.floats.windows(2).any(|w| w[0].0 == w[1].0)
                        || s.histograms.windows(2).any(|w| w[0].0 == w[1].0)
                        || s.floats.iter().any(|f| s.histograms.iter().any(|h| h.0 == f.0));
                    if dup {
                        return Err(QueryError::Eval("vector cannot contain metrics with the same labelset".into()));
                    }
                }
            }
            Ok(Value::Matrix(out))
        }
        v => Ok(v),
    }
}

/// Drops the metric name and, as Prometheus's type-and-unit labels do, the `__type__` and
/// `__unit__` metadata labels that describe it.
pub(crate) fn drop_metric_name(l: &Labels) -> Labels {
    const META: [&str; 3] = [norn_model::METRIC_NAME, "__type__", "__unit__"];
    if !META.iter().any(|n| l.get(n).is_some()) {
        return l.clone();
    }
    Labels::from_sorted_unchecked_iter(l.iter().filter(|(n, _)| !META.contains(n)))
}

/// Labels without the given names.
pub(crate) fn labels_without(l: &Labels, names: &[&str]) -> Labels {
    Labels::from_sorted_unchecked_iter(l.iter().filter(|(n, _)| !names.contains(n)))
}

/// The parts of a classic bucket series' labels that histogram functions group by.
#[derive(Clone)]
pub(crate) struct ClassicKey {
    /// The labels without `le` (interned, so group lookups compare pointers).
    pub key: Labels,
    /// The parsed `le` bound.
    pub upper: f64,
    /// The metric name, empty if none.
    pub name: Arc<str>,
}

/// Labels with only the given names.
pub(crate) fn labels_only(l: &Labels, names: &[&str]) -> Labels {
    Labels::from_sorted_unchecked_iter(l.iter().filter(|(n, _)| names.contains(n)))
}

/// The samples of a range argument plus the window it covered.
pub(crate) struct RangeArg {
    pub series: Vec<Series>,
    /// Window start (exclusive) and end (inclusive), ms.
    pub range_start: i64,
    pub range_end: i64,
    pub range: i64,
    /// `anchored`/`smoothed` modifier of a matrix selector.
    pub ext: Option<Ext>,
}

/// Extended range-selector modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ext {
    /// Also the last sample at or before the range start (within the lookback).
    Anchored,
    /// Also the samples just outside the range, for interpolation at its bounds.
    Smoothed,
}

/// The modifier marked on a selector by [`crate::rewrite::mark_extended`].
pub(crate) fn ext_mode(vs: &VectorSelector) -> Option<Ext> {
    vs.matchers
        .matchers
        .iter()
        .find(|m| m.name == crate::rewrite::EXT_LABEL)
        .map(|m| if m.value == "smoothed" { Ext::Smoothed } else { Ext::Anchored })
}

pub(crate) struct Evaluator<'a> {
    pub q: &'a dyn Queryable,
    pub opts: &'a EngineOptions,
    pub start: i64,
    pub end: i64,
    pub interval: i64,
    pub text: &'a str,
    cache: HashMap<usize, Arc<Vec<Arc<StoredSeries>>>>,
    pub annos: Annotations,
    /// Emulates Prometheus's stats-only histogram iterator (used under `histogram_count`
    /// and friends), which re-derives counter-reset hints from the previous stored sample.
    pub stats_hints: bool,
    /// Hints for the next selection: the enclosing function and aggregation grouping.
    pub pending_func: Option<String>,
    pub pending_grouping: Option<(bool, Vec<String>)>,
    pending_range: Option<i64>,
    pos_cache: HashMap<usize, String>,
    /// Per-node memo of derived label sets (signatures, result labels): the same series
    /// meet the same node at every step of a range query.
    memo: HashMap<usize, HashMap<Labels, Labels>>,
    memo2: HashMap<(usize, Labels, Labels), Labels>,
    interned: HashSet<Labels>,
    /// What `histogram_quantile`/`histogram_fraction` derive from a classic bucket's labels
    /// (group key without `le`, parsed `le`, metric name): a pure function of the label set,
    /// computed once per series instead of once per series and step.
    pub(crate) classic_keys: HashMap<Labels, ClassicKey>,
    regexes: HashMap<String, Arc<regex::Regex>>,
    /// Inside a subquery, selections may reach before the query start.
    subquery_depth: usize,
    /// Inner results of subqueries by node: consecutive outer steps of a range query share
    /// most of their inner steps, so each inner step is evaluated once and each outer step
    /// slices its window out of the accumulated matrix (as Prometheus evaluates a subquery
    /// once over the whole range).
    subq_cache: HashMap<usize, SubqMatrix>,
    /// Per selector (and bound), the last search position in each selected series: steps
    /// mostly ascend, so the next position is usually a few samples further on.
    cursors: HashMap<(usize, u8), Vec<usize>>,
    deadline: Option<std::time::Instant>,
    /// The steps the expression being evaluated will be asked for: the query's steps, or a
    /// subquery's inner steps. Range functions over selectors evaluate series by series
    /// over all of them at once ([`crate::series_major`]).
    pub(crate) grid: Option<StepGrid>,
    /// Per range-function call and grid, the results still to be handed out.
    pub(crate) precomputed: HashMap<(usize, StepGrid), crate::series_major::Precomputed>,
    /// Samples held across steps (see [`EngineOptions::max_samples`]).
    pub(crate) held: usize,
    /// The most samples held at once so far.
    pub(crate) peak: usize,
}

/// Evaluation steps `first, first + step, …, last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StepGrid {
    first: i64,
    last: i64,
    step: i64,
}

impl StepGrid {
    /// Most steps a grid may have: beyond this, precomputing every step could hold far more
    /// than the steps a query actually visits.
    const MAX_STEPS: i64 = 100_000;

    /// A grid, if it is well formed and not too long.
    pub(crate) fn new(first: i64, last: i64, step: i64) -> Option<StepGrid> {
        if step <= 0 || last < first || (last as i128 - first as i128) / step as i128 >= Self::MAX_STEPS as i128 {
            return None;
        }
        // Keep `last` on the grid.
        let last = first + (last - first) / step * step;
        Some(StepGrid { first, last, step })
    }

    /// Number of steps.
    pub(crate) fn len(&self) -> usize {
        ((self.last - self.first) / self.step + 1) as usize
    }

    /// Time between steps.
    pub(crate) fn step(&self) -> i64 {
        self.step
    }

    /// Time of step `k`.
    pub(crate) fn at(&self, k: usize) -> i64 {
        self.first + k as i64 * self.step
    }

    /// Index of the step at `ts`, if `ts` is one.
    pub(crate) fn index(&self, ts: i64) -> Option<usize> {
        if ts < self.first || ts > self.last || (ts - self.first) % self.step != 0 {
            return None;
        }
        Some(((ts - self.first) / self.step) as usize)
    }
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(
        q: &'a dyn Queryable,
        opts: &'a EngineOptions,
        start: i64,
        end: i64,
        interval: i64,
        text: &'a str,
    ) -> Self {
        Evaluator {
            q,
            opts,
            start,
            end,
            interval,
            text,
            cache: HashMap::default(),
            annos: Annotations::default(),
            stats_hints: false,
            pending_func: None,
            pending_grouping: None,
            pending_range: None,
            pos_cache: HashMap::default(),
            memo: HashMap::default(),
            memo2: HashMap::default(),
            interned: HashSet::default(),
            classic_keys: HashMap::default(),
            regexes: HashMap::default(),
            subquery_depth: 0,
            subq_cache: HashMap::default(),
            cursors: HashMap::default(),
            deadline: opts.timeout.map(|t| std::time::Instant::now() + t),
            grid: None,
            precomputed: HashMap::default(),
            held: 0,
            peak: 0,
        }
    }

    /// Checks the sample limit with `in_flight` samples loaded on top of those held.
    pub(crate) fn check_samples(&mut self, in_flight: usize) -> EvalResult<()> {
        let now = self.held.saturating_add(in_flight);
        self.peak = self.peak.max(now);
        if now > self.opts.max_samples {
            return Err(QueryError::TooManySamples);
        }
        Ok(())
    }

    /// An evaluator for a helper thread: same query and settings, own caches and annotations.
    pub(crate) fn side_evaluator(&self) -> Evaluator<'a> {
        let mut e = Evaluator::new(self.q, self.opts, self.start, self.end, self.interval, self.text);
        e.deadline = self.deadline;
        e.stats_hints = self.stats_hints;
        e.subquery_depth = self.subquery_depth;
        e
    }

    /// Takes over the annotations a [`Self::side_evaluator`] collected.
    pub(crate) fn absorb(&mut self, other: Evaluator<'_>) {
        self.annos.warnings.extend(other.annos.warnings);
        self.annos.infos.extend(other.annos.infos);
    }

    fn into_result(self, value: EvalResult<Value>) -> QueryResult {
        QueryResult {
            value,
            warnings: self.annos.warnings.into_iter().collect(),
            infos: self.annos.infos.into_iter().collect(),
        }
    }

    /// Position `(line:col)` of the first occurrence of `needle` in the query, 1-based.
    pub(crate) fn pos_of(&self, needle: &str) -> String {
        let off = self.text.find(needle).unwrap_or(0);
        let before = &self.text[..off];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map(|i| off - i).unwrap_or(off + 1);
        format!("({line}:{col})")
    }

    /// `f(l)`, memoised per `node` (an AST node address combined with a call-site tag).
    pub(crate) fn memo_labels(&mut self, node: usize, l: &Labels, f: impl FnOnce(&Labels) -> Labels) -> Labels {
        // Looked up by reference: no key is built (and no label set cloned) on a hit.
        if let Some(v) = self.memo.get(&node).and_then(|m| m.get(l)) {
            return v.clone();
        }
        let v = self.intern(f(l));
        self.memo.entry(node).or_default().insert(l.clone(), v.clone());
        v
    }

    /// One shared copy of each derived label set, so that later comparisons (e.g. of group
    /// keys in hash maps) succeed on pointer equality instead of comparing the text.
    pub(crate) fn intern(&mut self, l: Labels) -> Labels {
        if let Some(x) = self.interned.get(&l) {
            return x.clone();
        }
        self.interned.insert(l.clone());
        l
    }

    /// A compiled regex in Go syntax (as Prometheus takes it), cached for the query.
    pub(crate) fn regex(&mut self, pattern: &str) -> Result<Arc<regex::Regex>, norn_model::goregex::GoRegexError> {
        if let Some(r) = self.regexes.get(pattern) {
            return Ok(r.clone());
        }
        let r = Arc::new(norn_model::goregex::compile(pattern)?);
        self.regexes.insert(pattern.to_string(), r.clone());
        Ok(r)
    }

    /// Like [`Self::memo_labels`] for a function of two label sets.
    pub(crate) fn memo_labels2(
        &mut self,
        node: usize,
        a: &Labels,
        b: &Labels,
        f: impl FnOnce(&Labels, &Labels) -> Labels,
    ) -> Labels {
        let key = (node, a.clone(), b.clone());
        if let Some(v) = self.memo2.get(&key) {
            return v.clone();
        }
        let v = self.intern(f(a, b));
        self.memo2.insert(key, v.clone());
        v
    }

    /// [`Self::pos_expr`], computed once per AST node (printing a subtree at every step
    /// of a range query would be wasteful).
    pub(crate) fn pos_cached(&mut self, e: &Expr) -> String {
        let key = e as *const Expr as usize;
        if let Some(p) = self.pos_cache.get(&key) {
            return p.clone();
        }
        let p = self.pos_expr(e);
        self.pos_cache.insert(key, p.clone());
        p
    }

    /// Position of an expression: best effort by locating its printed form or first selector.
    pub(crate) fn pos_expr(&self, e: &Expr) -> String {
        let printed = e.to_string();
        if self.text.contains(&printed) {
            return self.pos_of(&printed);
        }
        if let Some(name) = first_metric_name(e) {
            return self.pos_of(&name);
        }
        "(1:1)".to_string()
    }

    pub(crate) fn warn(&mut self, msg: String, pos: String) {
        self.annos.warnings.insert(format!("PromQL warning: {msg} {pos}"));
    }

    pub(crate) fn info(&mut self, msg: String, pos: String) {
        self.annos.infos.insert(format!("PromQL info: {msg} {pos}"));
    }

    /// Runs `e` at every step and assembles a matrix.
    pub(crate) fn range_eval(&mut self, e: &Expr, start: i64, end: i64, step: i64) -> EvalResult<Value> {
        match e.value_type() {
            parser::value::ValueType::Scalar | parser::value::ValueType::Vector => {}
            t => {
                return Err(QueryError::Parse(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    type_word(t)
                )));
            }
        }
        if step <= 0 {
            return Err(QueryError::Parse("zero or negative query resolution step widths are not accepted".into()));
        }
        if end < start {
            return Err(QueryError::Parse("end timestamp must not be before start time".into()));
        }
        if end.saturating_sub(start) / step > MAX_RANGE_POINTS {
            return Err(QueryError::Parse(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
                    .into(),
            ));
        }
        self.grid = StepGrid::new(start, end, step);
        if let Some(m) = self.range_eval_series_major(e)? {
            return self.finish_matrix(m);
        }
        let mut order: Vec<Series> = Vec::new();
        let mut index: HashMap<(Labels, bool), usize> = HashMap::default();
        // Output series by position in the previous step's vector: consecutive steps mostly
        // list the same series in the same order, so the hash lookup is rarely needed.
        let mut by_pos: Vec<usize> = Vec::new();
        let mut ts = start;
        while ts <= end {
            self.check_deadline()?;
            let v = self.eval(e, ts)?;
            // The step's output joins the result held until the end of the query.
            self.held = self.held.saturating_add(match &v {
                Value::Vector(vec) => vec.len(),
                _ => 1,
            });
            self.check_samples(0)?;
            match v {
                Value::Scalar(v) => {
                    let key = (Labels::empty(), false);
                    let i = *index.entry(key).or_insert_with(|| {
                        order.push(Series::default());
                        order.len() - 1
                    });
                    order[i].floats.push((ts, v));
                }
                Value::Vector(vec) => {
                    by_pos.resize(by_pos.len().max(vec.len()), usize::MAX);
                    for (j, s) in vec.into_iter().enumerate() {
                        let hint = by_pos[j];
                        let i = if hint < order.len()
                            && order[hint].drop_name == s.drop_name
                            && order[hint].metric == s.metric
                        {
                            hint
                        } else {
                            let key = (s.metric.clone(), s.drop_name);
                            *index.entry(key).or_insert_with(|| {
                                order.push(Series {
                                    metric: s.metric.clone(),
                                    drop_name: s.drop_name,
                                    ..Default::default()
                                });
                                order.len() - 1
                            })
                        };
                        by_pos[j] = i;
                        match s.h {
                            Some(h) => order[i].histograms.push((ts, h)),
                            None => order[i].floats.push((ts, s.f)),
                        }
                    }
                }
                v => return Err(QueryError::Eval(format!("unexpected {} in range evaluation", v.type_name()))),
            }
            ts = match ts.checked_add(step) {
                Some(x) => x,
                None => break,
            };
        }
        self.finish_matrix(order)
    }

    /// Names dropped, clashes rejected, series sorted: the range query's result.
    fn finish_matrix(&self, order: Vec<Series>) -> EvalResult<Value> {
        let mut v = match finish_value(Value::Matrix(order), self.opts)? {
            Value::Matrix(m) => m,
            _ => unreachable!("finish_value keeps the variant"),
        };
        v.sort_by(|a, b| a.metric.cmp(&b.metric));
        Ok(Value::Matrix(v))
    }

    /// A range query that is a single range function over a selector, evaluated series by
    /// series straight into the result matrix; `None` for any other query.
    fn range_eval_series_major(&mut self, e: &Expr) -> EvalResult<Option<Vec<Series>>> {
        let mut inner = e;
        while let Expr::Paren(p) = inner {
            inner = &p.expr;
        }
        let Some(grid) = self.grid else { return Ok(None) };
        if let Expr::VectorSelector(vs) = inner {
            // Interpolation (`smoothed`) and its annotations stay with the step path.
            if ext_mode(vs) == Some(Ext::Smoothed) {
                return Ok(None);
            }
            return self.select_series_major(vs, grid).map(Some);
        }
        let Expr::Call(c) = inner else { return Ok(None) };
        if !crate::functions::is_range_function(c.func.name) {
            return Ok(None);
        }
        let Some(src) = crate::series_major::eligible(self, c) else { return Ok(None) };
        self.check_deadline()?;
        let Some(pre) = crate::series_major::compute(self, c, src, grid)? else { return Ok(None) };
        let mut out = Vec::with_capacity(pre.len());
        for p in pre {
            let mut s = Series { metric: p.metric, drop_name: p.drop_name, ..Default::default() };
            for (k, f, h) in p.points {
                match h {
                    Some(h) => s.histograms.push((grid.at(k as usize), h)),
                    None => s.floats.push((grid.at(k as usize), f)),
                }
            }
            out.push(s);
        }
        Ok(Some(out))
    }

    pub(crate) fn check_deadline(&self) -> EvalResult<()> {
        match self.deadline {
            Some(d) if std::time::Instant::now() > d => Err(QueryError::Timeout),
            _ => Ok(()),
        }
    }

    pub(crate) fn eval(&mut self, e: &Expr, ts: i64) -> EvalResult<Value> {
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, ts),
            Expr::Unary(u) => match self.eval(&u.expr, ts)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(mut v) => {
                    for s in v.iter_mut() {
                        match &mut s.h {
                            Some(h) => {
                                let mut nh = (**h).clone();
                                crate::histogram::scale(&mut nh, -1.0);
                                *h = Arc::new(nh);
                            }
                            None => s.f = -s.f,
                        }
                        self.mark_drop_name(s);
                    }
                    Ok(Value::Vector(v))
                }
                v => Err(QueryError::Eval(format!("unary minus not supported on {}", v.type_name()))),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.vector_select(vs, ts)?)),
            Expr::MatrixSelector(_) | Expr::Subquery(_) => {
                let r = self.eval_range_arg(e, ts)?;
                Ok(Value::Matrix(r.series))
            }
            Expr::Call(c) => crate::functions::call(self, c, ts),
            Expr::Aggregate(a) => crate::aggregate::aggregate(self, a, ts),
            Expr::Binary(b) => crate::binary::binary(self, b, ts),
            Expr::Extension(_) => Err(QueryError::Eval("extension expressions are not supported".into())),
        }
    }

    pub(crate) fn mark_drop_name(&self, s: &mut Sample) {
        if self.opts.delayed_name_removal {
            s.drop_name = true;
        } else {
            s.metric = drop_metric_name(&s.metric);
        }
    }

    /// Evaluates an instant-vector expression; scalars are an error.
    pub(crate) fn eval_vector(&mut self, e: &Expr, ts: i64) -> EvalResult<Vec<Sample>> {
        match self.eval(e, ts)? {
            Value::Vector(v) => Ok(v),
            v => Err(QueryError::Eval(format!("expected instant vector, got {}", v.type_name()))),
        }
    }

    pub(crate) fn eval_scalar(&mut self, e: &Expr, ts: i64) -> EvalResult<f64> {
        match self.eval(e, ts)? {
            Value::Scalar(v) => Ok(v),
            v => Err(QueryError::Eval(format!("expected scalar, got {}", v.type_name()))),
        }
    }

    /// The reference time of a selector: the `@` time (or `ts`) minus the offset.
    pub(crate) fn ref_time(&self, at: &Option<AtModifier>, offset: &Option<Offset>, ts: i64) -> i64 {
        let base = match at {
            None => ts,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(t)) => systime_ms(t),
        };
        base.saturating_sub(offset_ms(offset))
    }

    fn selected(&mut self, vs: &VectorSelector) -> EvalResult<Arc<Vec<Arc<StoredSeries>>>> {
        let key = vs as *const VectorSelector as usize;
        if let Some(s) = self.cache.get(&key) {
            self.pending_range = None;
            self.pending_func = None;
            self.pending_grouping = None;
            return Ok(s.clone());
        }
        let mut base = Vec::new();
        if let Some(n) = &vs.name {
            base.push(Matcher::equal(norn_model::METRIC_NAME, n.clone()));
        }
        let conv = |m: &promql_parser::label::Matcher| -> EvalResult<Matcher> {
            let kind = match m.op {
                MatchOp::Equal => MatchType::Equal,
                MatchOp::NotEqual => MatchType::NotEqual,
                MatchOp::Re(_) => MatchType::Regex,
                MatchOp::NotRe(_) => MatchType::NotRegex,
            };
            let value = crate::rewrite::go_regex_source(&m.value);
            Matcher::new(kind, m.name.clone(), value).map_err(|e| QueryError::Parse(e.to_string()))
        };
        // The time range every step of this query may read for this selector.
        let (mut start, mut end) = match &vs.at {
            Some(AtModifier::At(t)) => (systime_ms(t), systime_ms(t)),
            _ => (self.start, self.end),
        };
        start = start.saturating_sub(offset_ms(&vs.offset)).saturating_sub(self.opts.lookback_delta);
        end = end.saturating_sub(offset_ms(&vs.offset));
        if self.subquery_depth > 0 || matches!(vs.at, Some(AtModifier::Start) | Some(AtModifier::End)) {
            (start, end) = (i64::MIN, i64::MAX);
        }
        let mut hints = SelectHints { start, end, step: self.interval, ..Default::default() };
        if let Some(r) = self.pending_range.take() {
            hints.range = r;
            hints.start = hints.start.saturating_sub(r);
        }
        hints.func = self.pending_func.take();
        if let Some((by, grouping)) = self.pending_grouping.take() {
            hints.by = by;
            hints.grouping = grouping;
        }
        let mut result: Vec<Arc<StoredSeries>>;
        if vs.matchers.or_matchers.is_empty() {
            let mut ms = base.clone();
            for m in vs.matchers.matchers.iter().filter(|m| m.name != crate::rewrite::EXT_LABEL) {
                ms.push(conv(m)?);
            }
            result = self.q.select(&ms, &hints).map_err(|e| QueryError::Eval(e.to_string()))?;
        } else {
            result = Vec::new();
            let mut seen = HashSet::default();
            for group in &vs.matchers.or_matchers {
                let mut ms = base.clone();
                for m in group.iter().chain(vs.matchers.matchers.iter()).filter(|m| m.name != crate::rewrite::EXT_LABEL)
                {
                    ms.push(conv(m)?);
                }
                for s in self.q.select(&ms, &hints).map_err(|e| QueryError::Eval(e.to_string()))? {
                    if seen.insert(s.labels.clone()) {
                        result.push(s);
                    }
                }
            }
            result.sort_by(|a, b| a.labels.cmp(&b.labels));
        }
        let arc = Arc::new(result);
        self.cache.insert(key, arc.clone());
        Ok(arc)
    }

    /// A range query that is a plain instant selector: each series walked once across all
    /// steps (what [`Self::vector_select`] picks at every step).
    pub(crate) fn select_series_major(&mut self, vs: &VectorSelector, grid: StepGrid) -> EvalResult<Vec<Series>> {
        let series = self.selected(vs)?;
        let windows: Vec<(i64, i64)> = (0..grid.len())
            .map(|k| {
                let rt = self.ref_time(&vs.at, &vs.offset, grid.at(k));
                (rt.saturating_sub(self.opts.lookback_delta), rt)
            })
            .collect();
        let mut per_step = vec![0usize; grid.len()];
        let mut out = Vec::with_capacity(series.len());
        for (n, s) in series.iter().enumerate() {
            if n % 64 == 0 {
                self.check_deadline()?;
            }
            let mut ser = Series { metric: s.labels.clone(), ..Default::default() };
            let mut idx = 0;
            for (k, &(lo, rt)) in windows.iter().enumerate() {
                idx = seek_le(&s.ts, idx, rt);
                if idx == 0 || s.ts[idx - 1] <= lo {
                    continue;
                }
                match &s.values[idx - 1] {
                    StoredValue::Float(f) if is_stale_nan(*f) => continue,
                    StoredValue::Float(f) => ser.floats.push((grid.at(k), *f)),
                    StoredValue::Histogram(h) => {
                        let h = if self.stats_hints { stats_hint(s, idx - 1) } else { h.clone() };
                        ser.histograms.push((grid.at(k), h));
                    }
                }
                per_step[k] += 1;
            }
            if !ser.floats.is_empty() || !ser.histograms.is_empty() {
                out.push(ser);
            }
        }
        for n in per_step {
            self.check_samples(n)?;
        }
        let total: usize = out.iter().map(|s| s.floats.len() + s.histograms.len()).sum();
        self.held = self.held.saturating_add(total);
        self.check_samples(0)?;
        Ok(out)
    }

    /// The series a matrix selector selects (with its range as the selection hint).
    pub(crate) fn select_range(&mut self, ms: &MatrixSelector) -> EvalResult<Arc<Vec<Arc<StoredSeries>>>> {
        self.pending_range = Some(dur_ms(&ms.range));
        self.selected(&ms.vs)
    }

    pub(crate) fn vector_select(&mut self, vs: &VectorSelector, ts: i64) -> EvalResult<Vec<Sample>> {
        let series = self.selected(vs)?;
        let rt = self.ref_time(&vs.at, &vs.offset, ts);
        let lo = rt.saturating_sub(self.opts.lookback_delta);
        let smoothed = ext_mode(vs) == Some(Ext::Smoothed);
        let mut out = Vec::new();
        let ckey = (vs as *const VectorSelector as usize, 0u8);
        let mut cur = self.cursors.remove(&ckey).unwrap_or_default();
        cur.resize(series.len(), 0);
        for (si, s) in series.iter().enumerate() {
            let idx = seek_le(&s.ts, cur[si], rt);
            cur[si] = idx;
            if idx == 0 {
                continue;
            }
            let t = s.ts[idx - 1];
            if t <= lo {
                continue;
            }
            match &s.values[idx - 1] {
                StoredValue::Float(f) => {
                    if is_stale_nan(*f) {
                        continue;
                    }
                    // `smoothed`: interpolate towards the next sample (within the lookback).
                    if smoothed
                        && t < rt
                        && idx < s.ts.len()
                        && s.ts[idx] <= rt.saturating_add(self.opts.lookback_delta)
                        && let StoredValue::Histogram(_) = &s.values[idx]
                    {
                        let name = s.labels.get(norn_model::METRIC_NAME).unwrap_or("").to_string();
                        let pos = self.pos_of(&name);
                        self.warn(
                            format!("encountered a mix of histograms and floats for metric name {}", go_quote(&name)),
                            pos,
                        );
                        continue;
                    }
                    if smoothed
                        && t < rt
                        && idx < s.ts.len()
                        && s.ts[idx] <= rt.saturating_add(self.opts.lookback_delta)
                        && let StoredValue::Float(nf) = &s.values[idx]
                        && !is_stale_nan(*nf)
                    {
                        let frac = (rt - t) as f64 / (s.ts[idx] - t) as f64;
                        let v = f + (nf - f) * frac;
                        out.push(Sample { metric: s.labels.clone(), t: ts, f: v, h: None, drop_name: false });
                        continue;
                    }
                    out.push(Sample { metric: s.labels.clone(), t: ts, f: *f, h: None, drop_name: false });
                }
                StoredValue::Histogram(h) => {
                    let mut h = if self.stats_hints { stats_hint(s, idx - 1) } else { h.clone() };
                    if smoothed
                        && t < rt
                        && idx < s.ts.len()
                        && s.ts[idx] <= rt.saturating_add(self.opts.lookback_delta)
                    {
                        let name = s.labels.get(norn_model::METRIC_NAME).unwrap_or("").to_string();
                        match &s.values[idx] {
                            StoredValue::Histogram(n) => {
                                use crate::histogram as hist;
                                if hist::uses_custom(n) != hist::uses_custom(&h) {
                                    let pos = self.pos_of(&name);
                                    self.warn(
                                        format!("{} for metric name {}", hist::MIXED_SCHEMAS, go_quote(&name)),
                                        pos,
                                    );
                                    continue;
                                }
                                let frac = (rt - t) as f64 / (s.ts[idx] - t) as f64;
                                let counter = h.counter_reset_hint != norn_model::CounterResetHint::Gauge;
                                let v = if counter && hist::detect_reset(n, &h) {
                                    let mut x = (**n).clone();
                                    hist::scale(&mut x, frac);
                                    x
                                } else {
                                    let Ok(mut d) = hist::sub(n, &h) else { continue };
                                    hist::scale(&mut d, frac);
                                    let Ok(x) = hist::add(&h, &d) else { continue };
                                    x
                                };
                                h = Arc::new(v);
                            }
                            StoredValue::Float(f) if !is_stale_nan(*f) => {
                                let pos = self.pos_of(&name);
                                self.warn(
                                    format!(
                                        "encountered a mix of histograms and floats for metric name {}",
                                        go_quote(&name)
                                    ),
                                    pos,
                                );
                                continue;
                            }
                            _ => {}
                        }
                    }
                    out.push(Sample { metric: s.labels.clone(), t: ts, f: 0.0, h: Some(h), drop_name: false })
                }
            }
        }
        self.cursors.insert(ckey, cur);
        self.check_samples(out.len())?;
        Ok(out)
    }

    /// Timestamps of the samples an instant selector picks (for `timestamp()`).
    pub(crate) fn vector_select_times(&mut self, vs: &VectorSelector, ts: i64) -> EvalResult<Vec<Sample>> {
        let series = self.selected(vs)?;
        let rt = self.ref_time(&vs.at, &vs.offset, ts);
        let lo = rt.saturating_sub(self.opts.lookback_delta);
        let mut out = Vec::new();
        for s in series.iter() {
            let idx = s.ts.partition_point(|t| *t <= rt);
            if idx == 0 {
                continue;
            }
            let t = s.ts[idx - 1];
            if t <= lo {
                continue;
            }
            if let StoredValue::Float(f) = &s.values[idx - 1]
                && is_stale_nan(*f)
            {
                continue;
            }
            out.push(Sample { metric: s.labels.clone(), t: ts, f: t as f64 / 1000.0, h: None, drop_name: false });
        }
        Ok(out)
    }

    /// Start timestamps (seconds; 0 when unknown) of the samples an instant selector picks.
    pub(crate) fn vector_select_start_times(&mut self, vs: &VectorSelector, ts: i64) -> EvalResult<Vec<Sample>> {
        let series = self.selected(vs)?;
        let rt = self.ref_time(&vs.at, &vs.offset, ts);
        let lo = rt.saturating_sub(self.opts.lookback_delta);
        let mut out = Vec::new();
        for s in series.iter() {
            let idx = s.ts.partition_point(|t| *t <= rt);
            if idx == 0 || s.ts[idx - 1] <= lo {
                continue;
            }
            if let StoredValue::Float(f) = &s.values[idx - 1]
                && is_stale_nan(*f)
            {
                continue;
            }
            let st = s.st.get(idx - 1).copied().unwrap_or(0);
            out.push(Sample { metric: s.labels.clone(), t: ts, f: st as f64 / 1000.0, h: None, drop_name: false });
        }
        Ok(out)
    }

    /// Evaluates a matrix selector or subquery (possibly in parentheses) at `ts`.
    pub(crate) fn eval_range_arg(&mut self, e: &Expr, ts: i64) -> EvalResult<RangeArg> {
        match e {
            Expr::Paren(p) => self.eval_range_arg(&p.expr, ts),
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                self.pending_range = Some(dur_ms(&ms.range));
                let series = self.selected(vs)?;
                let rt = self.ref_time(&vs.at, &vs.offset, ts);
                let range = dur_ms(&ms.range);
                let lo = rt.saturating_sub(range);
                let ext = ext_mode(vs);
                let mut out = Vec::new();
                let mut total = 0usize;
                let key = vs as *const VectorSelector as usize;
                let mut cur_a = self.cursors.remove(&(key, 1)).unwrap_or_default();
                let mut cur_b = self.cursors.remove(&(key, 2)).unwrap_or_default();
                cur_a.resize(series.len(), 0);
                cur_b.resize(series.len(), 0);
                for (si, s) in series.iter().enumerate() {
                    let mut a = seek_le(&s.ts, cur_a[si], lo);
                    let mut b = seek_le(&s.ts, cur_b[si], rt);
                    (cur_a[si], cur_b[si]) = (a, b);
                    let inside = b > a;
                    let usable = |i: usize| !matches!(&s.values[i], StoredValue::Float(f) if is_stale_nan(*f));
                    match ext {
                        Some(Ext::Anchored) => {
                            if !inside {
                                continue;
                            }
                            if a > 0 && s.ts[a - 1] > lo.saturating_sub(self.opts.lookback_delta) && usable(a - 1) {
                                a -= 1;
                            }
                        }
                        Some(Ext::Smoothed) => {
                            if a > 0 && s.ts[a - 1] > lo.saturating_sub(self.opts.lookback_delta) && usable(a - 1) {
                                a -= 1;
                            }
                            if b < s.ts.len() && s.ts[b] <= rt.saturating_add(self.opts.lookback_delta) && usable(b) {
                                b += 1;
                            }
                        }
                        None => {}
                    }
                    if a >= b {
                        continue;
                    }
                    let mut ser = Series { metric: s.labels.clone(), ..Default::default() };
                    if matches!(s.values[a], StoredValue::Float(_)) {
                        ser.floats.reserve_exact(b - a);
                    }
                    let with_st = !s.st.is_empty();
                    for i in a..b {
                        match &s.values[i] {
                            StoredValue::Float(f) => {
                                if !is_stale_nan(*f) {
                                    ser.floats.push((s.ts[i], *f));
                                    if with_st {
                                        ser.floats_st.push(s.st[i]);
                                    }
                                }
                            }
                            StoredValue::Histogram(h) => {
                                let h = if self.stats_hints { stats_hint(s, i) } else { h.clone() };
                                ser.histograms.push((s.ts[i], h));
                                if with_st {
                                    ser.histograms_st.push(s.st[i]);
                                }
                            }
                        }
                    }
                    if ser.floats.is_empty() && ser.histograms.is_empty() {
                        continue;
                    }
                    total += ser.floats.len() + ser.histograms.len();
                    out.push(ser);
                }
                self.cursors.insert((key, 1), cur_a);
                self.cursors.insert((key, 2), cur_b);
                self.check_samples(total)?;
                Ok(RangeArg { series: out, range_start: lo, range_end: rt, range, ext })
            }
            Expr::Subquery(sq) => {
                let f = self.subquery_fill(sq, ts)?;
                let mut m = f.matrix;
                let order = m.window(f.first, f.rt);
                // At the end of time `next` cannot be represented; such a matrix is not kept.
                if !f.overflowed {
                    self.subq_cache.insert(sq as *const _ as usize, m);
                }
                Ok(RangeArg { series: order, range_start: f.lo, range_end: f.rt, range: f.range, ext: None })
            }
            _ => Err(QueryError::Eval("expected range vector".into())),
        }
    }

    /// Puts a subquery's matrix (back) into the cache.
    pub(crate) fn subq_cache_put(&mut self, node: usize, m: SubqMatrix) {
        self.subq_cache.insert(node, m);
    }

    /// The inner steps of subquery `sq` (range and step given) over the whole outer grid `g`,
    /// when the outer steps are close enough for their windows to cover it.
    fn subquery_grid(&self, sq: &SubqueryExpr, g: StepGrid, range: i64, step: i64) -> Option<StepGrid> {
        if g.len() > 1 && g.step > range {
            return None;
        }
        let lo0 = self.ref_time(&sq.at, &sq.offset, g.first).saturating_sub(range);
        let mut first0 = step * (lo0 / step);
        if first0 <= lo0 {
            first0 = first0.checked_add(step)?;
        }
        StepGrid::new(first0, self.ref_time(&sq.at, &sq.offset, g.last), step)
    }

    /// The whole matrix of subquery `sq` over the outer grid `g` (series in label order) and
    /// each outer step's window `(lo, rt]`, when its expression is a range function the
    /// series-major path evaluates: computed series by series over the inner grid, with the
    /// very values [`Self::subquery_fill`] would collect step by step. `None`: fill it step by step.
    pub(crate) fn subquery_whole(&mut self, sq: &SubqueryExpr, g: StepGrid) -> EvalResult<Option<SubqWhole>> {
        let node = sq as *const _ as usize;
        let range = dur_ms(&sq.range);
        let step = sq.step.as_ref().map(dur_ms).unwrap_or(self.opts.default_subquery_step);
        if step <= 0 || range / step > MAX_SUBQUERY_STEPS || self.subq_cache.contains_key(&node) {
            return Ok(None);
        }
        let mut inner = sq.expr.as_ref();
        while let Expr::Paren(p) = inner {
            inner = &p.expr;
        }
        let Expr::Call(c) = inner else { return Ok(None) };
        if !crate::functions::is_range_function(c.func.name) {
            return Ok(None);
        }
        let Some(ig) = self.subquery_grid(sq, g, range, step) else { return Ok(None) };
        // The last inner step must have a successor, as in the step-by-step fill.
        if ig.len() < 2 || ig.at(ig.len() - 1).checked_add(step).is_none() {
            return Ok(None);
        }
        let windows: Vec<(i64, i64)> = (0..g.len())
            .map(|k| {
                let rt = self.ref_time(&sq.at, &sq.offset, g.at(k));
                (rt.saturating_sub(range), rt)
            })
            .collect();
        let saved_stats = std::mem::replace(&mut self.stats_hints, false);
        self.subquery_depth += 1;
        self.pending_func = None;
        let outer_grid = self.grid.replace(ig);
        let pre = match crate::series_major::eligible(self, c) {
            Some(src) => crate::series_major::compute(self, c, src, ig),
            None => Ok(None),
        };
        self.grid = outer_grid;
        self.stats_hints = saved_stats;
        self.subquery_depth -= 1;
        let Some(pre) = pre? else { return Ok(None) };
        let mut seen = HashSet::default();
        if !pre.iter().all(|p| seen.insert((p.metric.clone(), p.drop_name))) {
            // Series that merge in the subquery's matrix: left to the step-by-step fill.
            let n: usize = pre.iter().map(|p| p.points.len()).sum();
            self.held = self.held.saturating_sub(n);
            return Ok(None);
        }
        // The points stay held as the subquery's matrix, as in the step-by-step fill.
        let mut series: Vec<Series> = pre
            .into_iter()
            .map(|p| {
                let mut s = Series { metric: p.metric, drop_name: p.drop_name, ..Default::default() };
                for (k, f, h) in p.points {
                    match h {
                        Some(h) => s.histograms.push((ig.at(k as usize), h)),
                        None => s.floats.push((ig.at(k as usize), f)),
                    }
                }
                s
            })
            .collect();
        series.sort_by(|a, b| a.metric.cmp(&b.metric));
        Ok(Some((series, windows, range)))
    }

    /// Evaluates the inner steps of subquery `sq` its window at `ts` needs and are not yet
    /// in the subquery's cached matrix, which is taken out of the cache and returned.
    pub(crate) fn subquery_fill(&mut self, sq: &SubqueryExpr, ts: i64) -> EvalResult<SubqFill> {
        let rt = self.ref_time(&sq.at, &sq.offset, ts);
        let range = dur_ms(&sq.range);
        let step = sq.step.as_ref().map(dur_ms).unwrap_or(self.opts.default_subquery_step);
        if step <= 0 {
            return Err(QueryError::Eval("subquery step must be positive".into()));
        }
        let lo = rt.saturating_sub(range);
        if range / step > MAX_SUBQUERY_STEPS {
            return Err(QueryError::TooManySamples);
        }
        // Go's integer division truncates; the first step is the first multiple of
        // `step` strictly after the window start.
        let mut first = step * (lo / step);
        if first <= lo {
            first += step;
        }
        let saved_stats = std::mem::replace(&mut self.stats_hints, false);
        // An error ends the whole query, so the depth need not be restored on it.
        self.subquery_depth += 1;
        self.pending_func = None;
        let node = sq as *const _ as usize;
        let mut m = match self.subq_cache.remove(&node) {
            Some(c)
                if c.step == step
                    && first >= c.first
                    && first <= c.next
                    && (first as i128 - c.first as i128) % step as i128 == 0 =>
            {
                c
            }
            _ => SubqMatrix {
                step,
                first,
                next: first,
                series: Vec::new(),
                index: HashMap::default(),
                sorted: Vec::new(),
            },
        };
        // The inner steps of this subquery over the whole enclosing grid, when the outer
        // steps are close enough for their windows to cover it.
        let outer_grid = self.grid;
        self.grid = outer_grid.and_then(|g| self.subquery_grid(sq, g, range, step));
        let mut t = m.next;
        let mut overflowed = false;
        while t <= rt {
            self.check_deadline()?;
            let inner = self.eval(&sq.expr, t)?;
            match inner {
                Value::Scalar(v) => {
                    m.push(Labels::empty(), false, t, v, None);
                    self.held = self.held.saturating_add(1);
                }
                Value::Vector(vec) => {
                    // The subquery's matrix is kept for the rest of the query.
                    self.held = self.held.saturating_add(vec.len());
                    for s in vec {
                        m.push(s.metric, s.drop_name, t, s.f, s.h);
                    }
                }
                v => return Err(QueryError::Eval(format!("subquery of {} is not allowed", v.type_name()))),
            }
            t = match t.checked_add(step) {
                Some(x) => x,
                None => {
                    overflowed = true;
                    break;
                }
            };
            m.next = t;
        }
        self.grid = outer_grid;
        self.stats_hints = saved_stats;
        self.subquery_depth -= 1;
        Ok(SubqFill { matrix: m, first, lo, rt, range, overflowed })
    }
}

/// What [`Evaluator::subquery_whole`] returns: the subquery's series in label order, each
/// outer step's window `(lo, rt]`, and the subquery's range.
pub(crate) type SubqWhole = (Vec<Series>, Vec<(i64, i64)>, i64);

/// What [`Evaluator::subquery_fill`] returns: the subquery's matrix and the window at the
/// asked time, `(lo, rt]`, whose first inner step is `first`.
pub(crate) struct SubqFill {
    pub matrix: SubqMatrix,
    pub first: i64,
    pub lo: i64,
    pub rt: i64,
    pub range: i64,
    /// The last inner step reached the end of time; the matrix must not be cached.
    pub overflowed: bool,
}

/// A subquery's inner results for the contiguous inner steps `first, first+step, …` before
/// `next`, as series in order of first appearance.
pub(crate) struct SubqMatrix {
    step: i64,
    first: i64,
    next: i64,
    series: Vec<Series>,
    index: HashMap<(Labels, bool), usize>,
    /// Indexes of `series` ordered by labels (ties in order of appearance), kept up to date
    /// by [`Self::window`], so windows come out sorted without sorting them at every step.
    sorted: Vec<usize>,
}

impl SubqMatrix {
    fn push(&mut self, metric: Labels, drop_name: bool, t: i64, f: f64, h: Option<Arc<norn_model::FloatHistogram>>) {
        let key = (metric, drop_name);
        let i = match self.index.get(&key) {
            Some(i) => *i,
            None => {
                self.series.push(Series { metric: key.0.clone(), drop_name, ..Default::default() });
                self.index.insert(key, self.series.len() - 1);
                self.series.len() - 1
            }
        };
        match h {
            Some(h) => self.series[i].histograms.push((t, h)),
            None => self.series[i].floats.push((t, f)),
        }
    }

    /// The series ordered by labels (ties in order of appearance).
    pub(crate) fn sorted_series(&mut self) -> impl Iterator<Item = &Series> {
        if self.sorted.len() != self.series.len() {
            self.sorted = (0..self.series.len()).collect();
            let series = &self.series;
            self.sorted.sort_by(|a, b| series[*a].metric.cmp(&series[*b].metric));
        }
        self.sorted.iter().map(|i| &self.series[*i])
    }

    /// Whether the matrix holds every inner step from `from` to `to`.
    pub(crate) fn covers(&self, from: i64, to: i64) -> bool {
        self.first <= from && self.next > to
    }

    /// Copies of the points in `[from, to]`, ordered by labels; series without any are left out.
    fn window(&mut self, from: i64, to: i64) -> Vec<Series> {
        let mut out = Vec::new();
        for s in self.sorted_series() {
            let fa = s.floats.partition_point(|p| p.0 < from);
            let fb = s.floats.partition_point(|p| p.0 <= to);
            let ha = s.histograms.partition_point(|p| p.0 < from);
            let hb = s.histograms.partition_point(|p| p.0 <= to);
            if fa >= fb && ha >= hb {
                continue;
            }
            out.push(Series {
                metric: s.metric.clone(),
                drop_name: s.drop_name,
                floats: s.floats[fa..fb.max(fa)].to_vec(),
                histograms: s.histograms[ha..hb.max(ha)].to_vec(),
                ..Default::default()
            });
        }
        out
    }
}

/// The number of timestamps `<= target` in ascending `ts` (`partition_point`), searched
/// forward from `hint` when the answer lies at or after it (the usual case as steps
/// advance) and by bisection otherwise. Correct for any hint.
pub(crate) fn seek_le(ts: &[i64], hint: usize, target: i64) -> usize {
    let n = ts.len();
    let hint = hint.min(n);
    if hint > 0 && ts[hint - 1] > target {
        return ts[..hint].partition_point(|t| *t <= target);
    }
    let lim = (hint + 8).min(n);
    let mut i = hint;
    while i < lim && ts[i] <= target {
        i += 1;
    }
    if i < lim || i == n {
        return i;
    }
    i + ts[i..].partition_point(|t| *t <= target)
}

/// The histogram at `i` with its hint re-derived against the stored sample before it.
fn stats_hint(s: &StoredSeries, i: usize) -> Arc<norn_model::FloatHistogram> {
    use norn_model::CounterResetHint as C;
    let StoredValue::Histogram(h) = &s.values[i] else { unreachable!("caller checked") };
    if h.counter_reset_hint == C::Gauge {
        return h.clone();
    }
    let hint = match i.checked_sub(1).map(|p| &s.values[p]) {
        Some(StoredValue::Histogram(p)) => {
            if crate::histogram::detect_reset(h, p) {
                C::CounterReset
            } else {
                C::NotCounterReset
            }
        }
        _ => C::Unknown,
    };
    let mut n = (**h).clone();
    n.counter_reset_hint = hint;
    Arc::new(n)
}

fn type_word(t: parser::value::ValueType) -> &'static str {
    match t {
        parser::value::ValueType::Scalar => "scalar",
        parser::value::ValueType::Vector => "instant vector",
        parser::value::ValueType::Matrix => "range vector",
        parser::value::ValueType::String => "string",
    }
}

/// The first metric name selected anywhere in `e`.
pub(crate) fn first_metric_name(e: &Expr) -> Option<String> {
    match e {
        Expr::VectorSelector(vs) => vs.name.clone(),
        Expr::MatrixSelector(ms) => ms.vs.name.clone(),
        Expr::Paren(p) => first_metric_name(&p.expr),
        Expr::Unary(u) => first_metric_name(&u.expr),
        Expr::Subquery(s) => first_metric_name(&s.expr),
        Expr::Aggregate(a) => first_metric_name(&a.expr),
        Expr::Binary(b) => first_metric_name(&b.lhs).or_else(|| first_metric_name(&b.rhs)),
        Expr::Call(c) => c.args.args.iter().find_map(|a| first_metric_name(a)),
        _ => None,
    }
}

#[cfg(test)]
mod seek_tests {
    use super::seek_le;

    #[test]
    fn seek_le_agrees_with_partition_point_for_any_hint() {
        let ts: Vec<i64> = (0..40).map(|i| i * 10 + (i % 3)).collect();
        for hint in 0..45 {
            for target in -5..420 {
                assert_eq!(
                    seek_le(&ts, hint, target),
                    ts.partition_point(|t| *t <= target),
                    "hint {hint} target {target}"
                );
            }
        }
        assert_eq!(seek_le(&[], 3, 7), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use crate::value::stale_nan;

    fn storage() -> MemStorage {
        let mut s = MemStorage::new();
        let a = Labels::from_pairs([("__name__", "a"), ("job", "x")]);
        // Samples every minute from 0 to 10m, a staleness marker at 11m.
        s.append(&a, (0..=10).map(|i| (i * 60_000, StoredValue::Float(i as f64))));
        s.append(&a, [(11 * 60_000, StoredValue::Float(stale_nan()))]);
        let b = Labels::from_pairs([("__name__", "b"), ("job", "x")]);
        s.append(&b, [(0, StoredValue::Float(100.0))]);
        s
    }

    fn instant(q: &str, ts: i64) -> String {
        match Engine::default().instant_query(&storage(), q, ts).value {
            Ok(Value::Scalar(v)) => format!("{v}"),
            Ok(Value::Vector(v)) => {
                let mut parts: Vec<String> = v.iter().map(|s| format!("{}={}", s.metric, s.f)).collect();
                parts.sort();
                parts.join(" ")
            }
            Ok(v) => v.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn instant_semantics() {
        let cases = [
            // Lookback is left-open: a sample exactly 5m old is gone.
            ("b", 299_999, r#"{__name__="b", job="x"}=100"#),
            ("b", 300_000, ""),
            // A staleness marker ends the series at once.
            ("a", 11 * 60_000 + 1, ""),
            ("a", 10 * 60_000 + 59_999, r#"{__name__="a", job="x"}=10"#),
            // Offsets and @ shift the reference time, negative evaluation times included.
            ("a offset 2m", 5 * 60_000, r#"{__name__="a", job="x"}=3"#),
            ("a @ 120", -1_000_000, r#"{__name__="a", job="x"}=2"#),
            // Range selectors are left-open too.
            ("count_over_time(a[2m])", 4 * 60_000, r#"{job="x"}=2"#),
            // Subquery steps are aligned to multiples of the step.
            ("count_over_time(a[150s:60s])", 4 * 60_000 + 30_000, r#"{job="x"}=2"#),
            // Delayed name removal: names go at the end, and a clash is an error.
            ("-{job=\"x\"}", 0, "error: vector cannot contain metrics with the same labelset"),
            ("-a or -b", 0, r#"{job="x"}=-0"#),
            ("label_replace(-a, \"__name__\", \"c\", \"job\", \".*\")", 60_000, r#"{__name__="c", job="x"}=-1"#),
            ("1 + 2 * 3", 0, "7"),
        ];
        for (q, ts, want) in cases {
            assert_eq!(instant(q, ts), want, "{q} @ {ts}");
        }
    }

    #[test]
    fn range_queries_drop_names_and_reject_clashes() {
        let r = Engine::default().range_query(&storage(), "-{job=\"x\"}", 0, 120_000, 60_000);
        // At 0 both -a and -b exist with the same labels once names are dropped.
        assert!(r.value.is_err());
        // Once b (last sample at 0) has left the lookback, only -a remains, without its name.
        let r = Engine::default().range_query(&storage(), "-{job=\"x\"}", 6 * 60_000, 7 * 60_000, 60_000);
        match r.value {
            Ok(Value::Matrix(m)) => {
                assert_eq!(m.len(), 1);
                assert_eq!(m[0].floats, vec![(360_000, -6.0), (420_000, -7.0)]);
            }
            other => panic!("{other:?}"),
        }
    }
}
