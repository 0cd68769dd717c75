//! Query evaluation. Every expression is evaluated step by step (a range query is the
//! instant evaluation at each step, exactly as Prometheus's range evaluation defines
//! it); selections are fetched from storage once per selector and then sliced per step.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use norn_model::{Labels, MatchType, Matcher};
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, AtModifier, Expr, Offset, VectorSelector};

use crate::storage::{Queryable, SelectHints, StoredSeries, StoredValue};
use crate::value::{Sample, Series, Value, is_stale_nan};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back (ms) an instant selector looks for the latest sample (left-open).
    pub lookback_delta: i64,
    /// Step (ms) of subqueries written without one (`[5m:]`).
    pub default_subquery_step: i64,
    /// Most samples a query may hold at once in a single step's evaluation.
    pub max_samples: usize,
    /// Keep `__name__` until the end of the query (Prometheus's delayed name removal).
    pub delayed_name_removal: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta: 5 * 60 * 1000,
            default_subquery_step: 60 * 1000,
            max_samples: 50_000_000,
            delayed_name_removal: true,
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

/// Parses a query.
pub fn parse(query: &str) -> Result<Expr, QueryError> {
    // The parser is robust on all inputs we have tried, but a panic there must not take
    // the caller down.
    match std::panic::catch_unwind(|| parser::parse(query)) {
        Ok(Ok(e)) => Ok(e),
        Ok(Err(e)) => Err(QueryError::Parse(e)),
        Err(_) => Err(QueryError::Parse(format!("could not parse query {query:?}"))),
    }
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
        match parse(query) {
            Ok(e) => self.instant_expr(q, &e, query, ts),
            Err(e) => QueryResult { value: Err(e), warnings: vec![], infos: vec![] },
        }
    }

    /// Evaluates `query` from `start` to `end` every `step` (all ms).
    pub fn range_query(&self, q: &dyn Queryable, query: &str, start: i64, end: i64, step: i64) -> QueryResult {
        match parse(query) {
            Ok(e) => self.range_expr(q, &e, query, start, end, step),
            Err(e) => QueryResult { value: Err(e), warnings: vec![], infos: vec![] },
        }
    }

    /// Evaluates a parsed expression at one instant; `text` is used for annotation positions.
    pub fn instant_expr(&self, q: &dyn Queryable, e: &Expr, text: &str, ts: i64) -> QueryResult {
        let mut ev = Evaluator::new(q, &self.opts, ts, ts, 0, text);
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
            let mut seen = std::collections::HashSet::with_capacity(vec.len());
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
            let mut idx: HashMap<Labels, usize> = HashMap::with_capacity(m.len());
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
            cache: HashMap::new(),
            annos: Annotations::default(),
            stats_hints: false,
        }
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
        let mut order: Vec<Series> = Vec::new();
        let mut index: HashMap<(Labels, bool), usize> = HashMap::new();
        let mut ts = start;
        while ts <= end {
            match self.eval(e, ts)? {
                Value::Scalar(v) => {
                    let key = (Labels::empty(), false);
                    let i = *index.entry(key).or_insert_with(|| {
                        order.push(Series::default());
                        order.len() - 1
                    });
                    order[i].floats.push((ts, v));
                }
                Value::Vector(vec) => {
                    for s in vec {
                        let key = (s.metric.clone(), s.drop_name);
                        let i = *index.entry(key).or_insert_with(|| {
                            order.push(Series {
                                metric: s.metric.clone(),
                                drop_name: s.drop_name,
                                ..Default::default()
                            });
                            order.len() - 1
                        });
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
        let mut v = match finish_value(Value::Matrix(order), self.opts)? {
            Value::Matrix(m) => m,
            _ => unreachable!("finish_value keeps the variant"),
        };
        v.sort_by(|a, b| a.metric.cmp(&b.metric));
        Ok(Value::Matrix(v))
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
    fn ref_time(&self, at: &Option<AtModifier>, offset: &Option<Offset>, ts: i64) -> i64 {
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
            Matcher::new(kind, m.name.clone(), m.value.clone()).map_err(|e| QueryError::Parse(e.to_string()))
        };
        let hints = SelectHints { start: i64::MIN, end: i64::MAX, step: self.interval, ..Default::default() };
        let mut result: Vec<Arc<StoredSeries>>;
        if vs.matchers.or_matchers.is_empty() {
            let mut ms = base.clone();
            for m in &vs.matchers.matchers {
                ms.push(conv(m)?);
            }
            result = self.q.select(&ms, &hints).map_err(|e| QueryError::Eval(e.to_string()))?;
        } else {
            result = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for group in &vs.matchers.or_matchers {
                let mut ms = base.clone();
                for m in group.iter().chain(vs.matchers.matchers.iter()) {
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

    pub(crate) fn vector_select(&mut self, vs: &VectorSelector, ts: i64) -> EvalResult<Vec<Sample>> {
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
            match &s.values[idx - 1] {
                StoredValue::Float(f) => {
                    if is_stale_nan(*f) {
                        continue;
                    }
                    out.push(Sample { metric: s.labels.clone(), t: ts, f: *f, h: None, drop_name: false });
                }
                StoredValue::Histogram(h) => {
                    let h = if self.stats_hints { stats_hint(s, idx - 1) } else { h.clone() };
                    out.push(Sample { metric: s.labels.clone(), t: ts, f: 0.0, h: Some(h), drop_name: false })
                }
            }
        }
        if out.len() > self.opts.max_samples {
            return Err(QueryError::TooManySamples);
        }
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

    /// Evaluates a matrix selector or subquery (possibly in parentheses) at `ts`.
    pub(crate) fn eval_range_arg(&mut self, e: &Expr, ts: i64) -> EvalResult<RangeArg> {
        match e {
            Expr::Paren(p) => self.eval_range_arg(&p.expr, ts),
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                let series = self.selected(vs)?;
                let rt = self.ref_time(&vs.at, &vs.offset, ts);
                let range = dur_ms(&ms.range);
                let lo = rt.saturating_sub(range);
                let mut out = Vec::new();
                let mut total = 0usize;
                for s in series.iter() {
                    let a = s.ts.partition_point(|t| *t <= lo);
                    let b = s.ts.partition_point(|t| *t <= rt);
                    if a >= b {
                        continue;
                    }
                    let mut ser = Series { metric: s.labels.clone(), ..Default::default() };
                    for i in a..b {
                        match &s.values[i] {
                            StoredValue::Float(f) => {
                                if !is_stale_nan(*f) {
                                    ser.floats.push((s.ts[i], *f));
                                }
                            }
                            StoredValue::Histogram(h) => {
                                let h = if self.stats_hints { stats_hint(s, i) } else { h.clone() };
                                ser.histograms.push((s.ts[i], h))
                            }
                        }
                    }
                    if ser.floats.is_empty() && ser.histograms.is_empty() {
                        continue;
                    }
                    total += ser.floats.len() + ser.histograms.len();
                    out.push(ser);
                }
                if total > self.opts.max_samples {
                    return Err(QueryError::TooManySamples);
                }
                Ok(RangeArg { series: out, range_start: lo, range_end: rt, range })
            }
            Expr::Subquery(sq) => {
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
                let mut order: Vec<Series> = Vec::new();
                let mut index: HashMap<(Labels, bool), usize> = HashMap::new();
                let saved_stats = std::mem::replace(&mut self.stats_hints, false);
                let mut t = first;
                while t <= rt {
                    match self.eval(&sq.expr, t)? {
                        Value::Scalar(v) => {
                            let i = *index.entry((Labels::empty(), false)).or_insert_with(|| {
                                order.push(Series::default());
                                order.len() - 1
                            });
                            order[i].floats.push((t, v));
                        }
                        Value::Vector(vec) => {
                            for s in vec {
                                let key = (s.metric.clone(), s.drop_name);
                                let i = *index.entry(key).or_insert_with(|| {
                                    order.push(Series {
                                        metric: s.metric.clone(),
                                        drop_name: s.drop_name,
                                        ..Default::default()
                                    });
                                    order.len() - 1
                                });
                                match s.h {
                                    Some(h) => order[i].histograms.push((t, h)),
                                    None => order[i].floats.push((t, s.f)),
                                }
                            }
                        }
                        v => return Err(QueryError::Eval(format!("subquery of {} is not allowed", v.type_name()))),
                    }
                    t = match t.checked_add(step) {
                        Some(x) => x,
                        None => break,
                    };
                }
                self.stats_hints = saved_stats;
                order.sort_by(|a, b| a.metric.cmp(&b.metric));
                Ok(RangeArg { series: order, range_start: lo, range_end: rt, range })
            }
            _ => Err(QueryError::Eval("expected range vector".into())),
        }
    }
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
