//! Aggregation operators (`sum`, `avg`, `topk`, `quantile`, `count_values`, `limitk`, …).

use crate::fasthash::HashMap;
use std::sync::Arc;

use norn_model::{FloatHistogram, Labels, METRIC_NAME};
use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use crate::engine::{EvalResult, Evaluator, QueryError, labels_only, labels_without};
use crate::histogram as hist;
use crate::value::{Sample, Value};

/// Kahan-compensated addition, as Prometheus's `kahanSumInc`.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let mut c = c;
    if t.is_infinite() {
        c = 0.0;
    } else if sum.abs() >= inc.abs() {
        c += (sum - t) + inc;
    } else {
        c += (inc - t) + sum;
    }
    (t, c)
}

/// φ-quantile of `values` with linear interpolation between closest ranks.
pub(crate) fn quantile_of(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    // Go's sort puts NaNs first via Less; total_cmp puts positive NaNs last. Match Go.
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

struct Group {
    labels: Labels,
    members: Vec<usize>,
}

pub(crate) fn grouping_labels(metric: &Labels, modifier: &Option<LabelModifier>) -> Labels {
    match modifier {
        None => Labels::empty(),
        Some(LabelModifier::Include(l)) => {
            let names: Vec<&str> = l.labels.iter().map(String::as_str).collect();
            labels_only(metric, &names)
        }
        Some(LabelModifier::Exclude(l)) => {
            let mut names: Vec<&str> = l.labels.iter().map(String::as_str).collect();
            names.push(METRIC_NAME);
            labels_without(metric, &names)
        }
    }
}

pub(crate) fn aggregate(ev: &mut Evaluator<'_>, a: &AggregateExpr, ts: i64) -> EvalResult<Value> {
    if let Some(v) = crate::aggregate_major::lookup(ev, a, ts)? {
        return Ok(Value::Vector(v));
    }
    let op = a.op.to_string().to_lowercase();
    let pos = match &a.param {
        Some(p) => ev.pos_cached(p),
        None => ev.pos_cached(&a.expr),
    };
    // Parameters are evaluated first, as Prometheus does.
    let mut param_f = f64::NAN;
    let mut param_s = String::new();
    if let Some(p) = &a.param {
        match ev.eval(p, ts)? {
            Value::Scalar(v) => param_f = v,
            Value::String(s) => param_s = s,
            v => return Err(QueryError::Eval(format!("unexpected {} as aggregation parameter", v.type_name()))),
        }
    }
    if let Expr::VectorSelector(_) = a.expr.as_ref() {
        ev.pending_grouping = match &a.modifier {
            Some(LabelModifier::Include(l)) => Some((true, l.labels.clone())),
            Some(LabelModifier::Exclude(l)) => Some((false, l.labels.clone())),
            None => Some((true, vec![])),
        };
        // The selection's function hint is the aggregation (Prometheus's
        // `extractFuncFromPath`); a querier reading downsampled data picks aggregates by it.
        ev.pending_func = Some(op.clone());
    }
    let input = ev.eval_vector(&a.expr, ts)?;
    ev.pending_grouping = None;
    ev.pending_func = None;
    match op.as_str() {
        "topk" | "bottomk" | "limitk" => {
            if param_f.is_nan() {
                return Err(QueryError::Eval("Parameter value is NaN".into()));
            }
        }
        "limit_ratio" => {
            if param_f.is_nan() {
                return Err(QueryError::Eval("Ratio value is NaN".into()));
            }
        }
        "quantile" => {
            if !(0.0..=1.0).contains(&param_f) {
                ev.warn(
                    format!(
                        "quantile value should be between 0 and 1, got {}",
                        norn_model::format::go_format_g(param_f)
                    ),
                    pos.clone(),
                );
            }
        }
        "count_values" => {
            if !is_valid_label_name(&param_s) {
                return Err(QueryError::Eval(format!("invalid label name {}", crate::rewrite::quote_raw(&param_s))));
            }
        }
        _ => {}
    }

    // Group samples by their grouping labels, in order of first appearance.
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::default();
    for (i, s) in input.iter().enumerate() {
        // With delayed name removal the name still takes part in grouping; a group whose
        // members drop their name drops it too (Prometheus does the same).
        let node = (a as *const AggregateExpr as usize).wrapping_mul(8);
        let gl = ev.memo_labels(node, &s.metric, |l| grouping_labels(l, &a.modifier));
        let gi = *index.entry(gl.clone()).or_insert_with(|| {
            groups.push(Group { labels: gl, members: Vec::new() });
            groups.len() - 1
        });
        groups[gi].members.push(i);
    }

    let mut out: Vec<Sample> = Vec::new();
    match op.as_str() {
        "topk" | "bottomk" => {
            let k = param_f;
            if k < 1.0 {
                return Ok(Value::Vector(vec![]));
            }
            let k = if k >= usize::MAX as f64 { usize::MAX } else { k as usize };
            let top = op == "topk";
            for g in &groups {
                let mut members: Vec<usize> = Vec::new();
                for &i in &g.members {
                    if input[i].h.is_some() {
                        ev.info(format!("ignored histogram in {op} aggregation"), pos.clone());
                        continue;
                    }
                    members.push(i);
                }
                let cmp = |x: usize, y: usize| {
                    let (a, b) = (input[x].f, input[y].f);
                    match (a.is_nan(), b.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ => {
                            if top {
                                b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal)
                            } else {
                                a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
                            }
                        }
                    }
                };
                // The first k of a stable sort (equal values keep input order). For small k
                // a bounded insertion does that without sorting every member at every step.
                let best = if k < members.len() {
                    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
                    for &i in &members {
                        if best.len() == k && best.last().is_some_and(|&b| cmp(i, b) != std::cmp::Ordering::Less) {
                            continue;
                        }
                        let pos = best.partition_point(|&b| cmp(i, b) != std::cmp::Ordering::Less);
                        best.insert(pos, i);
                        best.truncate(k);
                    }
                    best
                } else {
                    members.sort_by(|&x, &y| cmp(x, y));
                    members
                };
                for &i in &best {
                    out.push(input[i].clone());
                }
            }
            return Ok(Value::Vector(out));
        }
        "limitk" => {
            let k = param_f;
            if k < 1.0 {
                return Ok(Value::Vector(vec![]));
            }
            let k = if k >= usize::MAX as f64 { usize::MAX } else { k as usize };
            for g in &groups {
                for &i in g.members.iter().take(k) {
                    out.push(input[i].clone());
                }
            }
            return Ok(Value::Vector(out));
        }
        "limit_ratio" => {
            let mut r = param_f;
            if !(-1.0..=1.0).contains(&r) {
                let capped = r.clamp(-1.0, 1.0);
                ev.warn(
                    format!(
                        "ratio value should be between -1 and 1, got {}, capping to {}",
                        norn_model::format::go_format_g(r),
                        norn_model::format::go_format_g(capped)
                    ),
                    pos.clone(),
                );
                r = capped;
            }
            for g in &groups {
                for &i in &g.members {
                    let off = (input[i].metric.hash_value() % u64::MAX) as f64 / u64::MAX as f64;
                    if (r >= 0.0 && off < r) || (r < 0.0 && off >= 1.0 + r) {
                        out.push(input[i].clone());
                    }
                }
            }
            return Ok(Value::Vector(out));
        }
        "count_values" => {
            let mut counts: Vec<(Labels, f64)> = Vec::new();
            let mut idx: HashMap<Labels, usize> = HashMap::default();
            for g in &groups {
                for &i in &g.members {
                    let s = &input[i];
                    let v = match &s.h {
                        Some(h) => crate::value::histogram_string(h),
                        None => norn_model::format::go_format_f(s.f),
                    };
                    let mut b = g.labels.to_builder();
                    b.set(&param_s, &v);
                    let l = b.build();
                    let j = *idx.entry(l.clone()).or_insert_with(|| {
                        counts.push((l, 0.0));
                        counts.len() - 1
                    });
                    counts[j].1 += 1.0;
                }
            }
            for (l, c) in counts {
                out.push(Sample { metric: l, t: ts, f: c, h: None, drop_name: false });
            }
            return Ok(Value::Vector(out));
        }
        _ => {}
    }

    for g in &groups {
        let fl: Vec<f64> = g.members.iter().filter(|&&i| input[i].h.is_none()).map(|&i| input[i].f).collect();
        let hs: Vec<&Arc<FloatHistogram>> = g.members.iter().filter_map(|&i| input[i].h.as_ref()).collect();
        // Only a warning needs it: looked up then, not for every group at every step.
        let metric_name = || input[g.members[0]].metric.get(METRIC_NAME).unwrap_or("");
        let group_drop = g.members.iter().any(|&i| input[i].drop_name);
        let mk = |f: f64| Sample { metric: g.labels.clone(), t: ts, f, h: None, drop_name: group_drop };
        match op.as_str() {
            "sum" | "avg" => {
                if !fl.is_empty() && !hs.is_empty() {
                    ev.warn("encountered a mix of histograms and floats for aggregation".to_string(), pos.clone());
                    continue;
                }
                if hs.is_empty() {
                    let (mut sum, mut c) = (0.0, 0.0);
                    for v in &fl {
                        (sum, c) = kahan_inc(*v, sum, c);
                    }
                    let v = if op == "sum" { sum + c } else { crate::functions::mean_of(&fl) };
                    out.push(mk(v));
                } else {
                    let mut acc = hist::KahanSum::new(hs[0]);
                    let mut failed = false;
                    let mut reconciled = false;
                    for h in &hs[1..] {
                        if hist::custom_mismatch(hs[0], h) {
                            reconciled = true;
                        }
                        if let Err(e) = acc.add(h) {
                            if e == hist::MIXED_SCHEMAS {
                                ev.warn(
                                    format!("{e} for metric name {}", norn_model::format::go_quote(metric_name())),
                                    pos.clone(),
                                );
                            } else {
                                ev.warn(e, pos.clone());
                            }
                            failed = true;
                            break;
                        }
                    }
                    if failed {
                        continue;
                    }
                    if reconciled {
                        ev.info("mismatched custom buckets were reconciled during aggregation".into(), pos.clone());
                    }
                    if acc.conflict {
                        ev.warn("conflicting counter resets during histogram aggregation".into(), pos.clone());
                    }
                    let mut h = acc.total();
                    if op == "avg" {
                        h = hist::mean(&hs.iter().map(|h| h.as_ref()).collect::<Vec<_>>(), h);
                    }
                    hist::compact(&mut h);
                    out.push(Sample {
                        metric: g.labels.clone(),
                        t: ts,
                        f: 0.0,
                        h: Some(Arc::new(h)),
                        drop_name: group_drop,
                    });
                }
            }
            "count" => out.push(mk(g.members.len() as f64)),
            "group" => out.push(mk(1.0)),
            "max" | "min" => {
                if !hs.is_empty() {
                    ev.info(format!("ignored histogram in {op} aggregation"), pos.clone());
                }
                if fl.is_empty() {
                    continue;
                }
                let mut v = fl[0];
                for x in &fl[1..] {
                    if (op == "max" && (v < *x || v.is_nan())) || (op == "min" && (v > *x || v.is_nan())) {
                        v = *x;
                    }
                }
                out.push(mk(v));
            }
            "stddev" | "stdvar" => {
                if !hs.is_empty() {
                    ev.info(format!("ignored histogram in {op} aggregation"), pos.clone());
                }
                if fl.is_empty() {
                    continue;
                }
                let (mut count, mut mean, mut m2) = (0.0, 0.0, 0.0);
                for v in &fl {
                    count += 1.0;
                    let delta = v - mean;
                    mean += delta / count;
                    m2 += delta * (v - mean);
                }
                let var = m2 / count;
                out.push(mk(if op == "stddev" { var.sqrt() } else { var }));
            }
            "quantile" => {
                if !hs.is_empty() {
                    ev.info(format!("ignored histogram in {op} aggregation"), pos.clone());
                }
                if fl.is_empty() {
                    continue;
                }
                let mut v = fl.clone();
                out.push(mk(quantile_of(param_f, &mut v)));
            }
            other => return Err(QueryError::Eval(format!("unsupported aggregation {other}"))),
        }
    }
    Ok(Value::Vector(out))
}

/// UTF-8 label names are valid in Prometheus 3.x unless empty or not valid UTF-8 (which
/// reaches us as private-use stand-ins, see `rewrite::mark_invalid_utf8`).
pub(crate) fn is_valid_label_name(s: &str) -> bool {
    !s.is_empty() && !crate::rewrite::has_raw_bytes(s)
}

#[cfg(test)]
mod topk_tests {
    use crate::engine::Engine;
    use crate::storage::{MemStorage, StoredValue};
    use crate::value::Value;
    use norn_model::Labels;

    #[test]
    fn topk_and_bottomk_are_the_first_k_of_a_stable_sort() {
        // Ties, NaNs and signed zeros; series are selected in label order a0, a1, ….
        let values = [3.0, f64::NAN, 1.0, 3.0, -0.0, 7.0, 0.0, 1.0, f64::NAN, 7.0, -2.0];
        let mut m = MemStorage::new();
        for (i, v) in values.iter().enumerate() {
            let l = Labels::from_pairs([("__name__", "x"), ("s", &format!("a{i:02}"))]);
            m.append(&l, [(0, StoredValue::Float(*v))]);
        }
        for top in [true, false] {
            let mut order: Vec<usize> = (0..values.len()).collect();
            order.sort_by(|&x, &y| {
                let (a, b) = (values[x], values[y]);
                match (a.is_nan(), b.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if top => b.partial_cmp(&a).unwrap(),
                    _ => a.partial_cmp(&b).unwrap(),
                }
            });
            for k in 1..=values.len() + 1 {
                let q = format!("{}({k}, x)", if top { "topk" } else { "bottomk" });
                let Ok(Value::Vector(v)) = Engine::default().instant_query(&m, &q, 1000).value else {
                    panic!("{q}: not a vector");
                };
                let got: Vec<String> = v.iter().map(|s| s.metric.get("s").unwrap_or("").to_string()).collect();
                let want: Vec<String> = order.iter().take(k).map(|i| format!("a{i:02}")).collect();
                assert_eq!(got, want, "{q}");
            }
        }
    }
}
