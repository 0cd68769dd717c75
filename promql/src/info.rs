//! The experimental `info()` function: enriches series with the data labels of info
//! metrics (`target_info` by default) that share their identifying labels.

use std::collections::BTreeMap;

use norn_model::{Labels, METRIC_NAME, MatchType, Matcher};
use promql_parser::label::MatchOp;
use promql_parser::parser::Expr;

use crate::engine::{EvalResult, Evaluator, QueryError};
use crate::storage::{SelectHints, StoredValue};
use crate::value::{Value, is_stale_nan};

/// Labels that tie a series to its info series.
const IDENTIFYING: [&str; 2] = ["instance", "job"];

fn conv(m: &promql_parser::label::Matcher) -> EvalResult<Matcher> {
    let kind = match m.op {
        MatchOp::Equal => MatchType::Equal,
        MatchOp::NotEqual => MatchType::NotEqual,
        MatchOp::Re(_) => MatchType::Regex,
        MatchOp::NotRe(_) => MatchType::NotRegex,
    };
    Matcher::new(kind, m.name.clone(), crate::rewrite::go_regex_source(&m.value))
        .map_err(|e| QueryError::Parse(e.to_string()))
}

/// The time at which the first argument read its samples (after `@` and offsets), so the
/// info series are matched as of the same instant.
fn reference_time(ev: &Evaluator<'_>, e: &Expr, ts: i64) -> i64 {
    match e {
        Expr::VectorSelector(vs) => ev.ref_time(&vs.at, &vs.offset, ts),
        Expr::MatrixSelector(ms) => ev.ref_time(&ms.vs.at, &ms.vs.offset, ts),
        Expr::Subquery(sq) => reference_time(ev, &sq.expr, ev.ref_time(&sq.at, &sq.offset, ts)),
        Expr::Paren(p) => reference_time(ev, &p.expr, ts),
        Expr::Unary(u) => reference_time(ev, &u.expr, ts),
        Expr::Aggregate(a) => reference_time(ev, &a.expr, ts),
        Expr::Binary(b) => reference_time(ev, &b.lhs, ts),
        Expr::Call(c) => c
            .args
            .args
            .iter()
            .find(|a| !matches!(a.as_ref(), Expr::NumberLiteral(_) | Expr::StringLiteral(_)))
            .map(|a| reference_time(ev, a, ts))
            .unwrap_or(ts),
        _ => ts,
    }
}

pub(crate) fn info(ev: &mut Evaluator<'_>, args: &[&Expr], ts: i64) -> EvalResult<Value> {
    let base = ev.eval_vector(args[0], ts)?;
    let info_ts = reference_time(ev, args[0], ts);
    let mut name_matchers = Vec::new();
    let mut data_matchers = Vec::new();
    if let Some(Expr::VectorSelector(vs)) = args.get(1).copied() {
        if let Some(n) = &vs.name {
            name_matchers.push(Matcher::equal(METRIC_NAME, n.clone()));
        }
        for m in vs.matchers.matchers.iter().filter(|m| m.name != crate::rewrite::EXT_LABEL) {
            if m.name == METRIC_NAME {
                name_matchers.push(conv(m)?);
            } else {
                data_matchers.push(conv(m)?);
            }
        }
    }
    if name_matchers.is_empty() {
        name_matchers.push(Matcher::equal(METRIC_NAME, "target_info"));
    }
    // Without a positive name matcher (only negations), any `*_info` series may enrich.
    let positive = name_matchers.iter().any(|m| matches!(m.kind, MatchType::Equal | MatchType::Regex));
    // Info series as of the reference time: (labels, sample time).
    let series = ev.q.select(&name_matchers, &SelectHints::default()).map_err(|e| QueryError::Eval(e.to_string()))?;
    let lo = info_ts.saturating_sub(ev.opts.lookback_delta);
    let mut infos: Vec<(Labels, i64)> = Vec::new();
    for s in series.iter() {
        let name = s.labels.get(METRIC_NAME).unwrap_or("");
        if !positive && !name.ends_with("_info") {
            continue;
        }
        let idx = s.ts.partition_point(|t| *t <= info_ts);
        if idx == 0 || s.ts[idx - 1] <= lo {
            continue;
        }
        match &s.values[idx - 1] {
            StoredValue::Float(f) if is_stale_nan(*f) => continue,
            StoredValue::Float(_) => infos.push((s.labels.clone(), s.ts[idx - 1])),
            StoredValue::Histogram(_) => {
                return Err(QueryError::Eval(format!(
                    "this should be an info metric, with float samples: {}",
                    s.labels
                )));
            }
        }
    }
    let empty_ok = data_matchers.iter().all(|m| m.matches_empty());
    let mut out = Vec::with_capacity(base.len());
    for mut s in base {
        let name = s.metric.get(METRIC_NAME).unwrap_or("");
        // Info series themselves pass through (only when info metrics are chosen by name).
        if positive && name_matchers.iter().all(|m| m.matches(name)) {
            out.push(s);
            continue;
        }
        let ids: Vec<&str> = IDENTIFYING.iter().map(|n| s.metric.get(n).unwrap_or("")).collect();
        // Latest matching info series per info metric name.
        let mut chosen: BTreeMap<String, (i64, &Labels)> = BTreeMap::new();
        for (l, t) in &infos {
            if IDENTIFYING.iter().zip(&ids).any(|(n, v)| l.get(n).unwrap_or("") != *v) {
                continue;
            }
            if !data_matchers.iter().all(|m| m.matches(l.get(&m.name).unwrap_or(""))) {
                continue;
            }
            let n = l.get(METRIC_NAME).unwrap_or("").to_string();
            match chosen.get(&n) {
                Some((ct, _)) if *ct >= *t => {}
                _ => {
                    chosen.insert(n, (*t, l));
                }
            }
        }
        if chosen.is_empty() {
            if empty_ok {
                out.push(s);
            }
            continue;
        }
        let mut b = s.metric.to_builder();
        for (_, l) in chosen.values() {
            for (n, v) in l.iter() {
                if n == METRIC_NAME || IDENTIFYING.contains(&n) || s.metric.get(n).is_some() {
                    continue;
                }
                if !data_matchers.is_empty() && !data_matchers.iter().any(|m| m.name == n) {
                    continue;
                }
                match b.get(n) {
                    Some(prev) if prev != v => {
                        return Err(QueryError::Eval(format!(
                            "conflicting label {n:?} from different info metrics: {prev:?} and {v:?}"
                        )));
                    }
                    _ => {
                        b.set(n, v);
                    }
                }
            }
        }
        s.metric = b.build();
        out.push(s);
    }
    Ok(Value::Vector(out))
}
