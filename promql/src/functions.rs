//! PromQL functions.

use crate::fasthash::HashMap;
use std::sync::Arc;

use norn_model::{CounterResetHint, FloatHistogram, Labels, METRIC_NAME};
use promql_parser::label::MatchOp;
use promql_parser::parser::{Call, Expr};

use crate::aggregate::{kahan_inc, quantile_of};
use crate::engine::{EvalResult, Evaluator, Ext, QueryError, RangeArg};
use crate::histogram as hist;
use crate::value::{Sample, Series, Value};

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        e => e,
    }
}

/// Go's math.Min / math.Max: NaN wins.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) }
}
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }
}

fn simple_math(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "deg" => |v| v * 180.0 / std::f64::consts::PI,
        "rad" => |v| v * std::f64::consts::PI / 180.0,
        "sgn" => |v: f64| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        },
        _ => return None,
    })
}

pub(crate) fn call(ev: &mut Evaluator<'_>, c: &Call, ts: i64) -> EvalResult<Value> {
    let name = c.func.name;
    let args: Vec<&Expr> = c.args.args.iter().map(|b| b.as_ref()).collect();
    let call_pos = || format!("{name}(");
    if let Some(f) = simple_math(name) {
        let v = ev.eval_vector(args[0], ts)?;
        return Ok(Value::Vector(map_floats(ev, v, f)));
    }
    match name {
        "pi" => Ok(Value::Scalar(std::f64::consts::PI)),
        n if n.starts_with("__norn_trim_") => ev.eval(args[0], ts),
        "step" => Ok(Value::Scalar(ev.interval as f64 / 1000.0)),
        "range" => Ok(Value::Scalar((ev.end - ev.start) as f64 / 1000.0)),
        "start" => Ok(Value::Scalar(ev.start as f64 / 1000.0)),
        "end" => Ok(Value::Scalar(ev.end as f64 / 1000.0)),
        "min_of" | "max_of" => {
            let mut acc: Option<f64> = None;
            for a in &args {
                let v = ev.eval_scalar(a, ts)?;
                acc = Some(match acc {
                    None => v,
                    Some(x) if name == "min_of" => go_min(x, v),
                    Some(x) => go_max(x, v),
                });
            }
            Ok(Value::Scalar(acc.unwrap_or(f64::NAN)))
        }
        "time" => Ok(Value::Scalar(ts as f64 / 1000.0)),
        "vector" => {
            let v = ev.eval_scalar(args[0], ts)?;
            Ok(Value::Vector(vec![Sample { metric: Labels::empty(), t: ts, f: v, h: None, drop_name: false }]))
        }
        "scalar" => {
            let v = ev.eval_vector(args[0], ts)?;
            let floats: Vec<&Sample> = v.iter().filter(|s| s.h.is_none()).collect();
            if floats.len() == 1 { Ok(Value::Scalar(floats[0].f)) } else { Ok(Value::Scalar(f64::NAN)) }
        }
        "round" => {
            let to = if args.len() > 1 { ev.eval_scalar(args[1], ts)? } else { 1.0 };
            let v = ev.eval_vector(args[0], ts)?;
            let inv = 1.0 / to;
            Ok(Value::Vector(map_floats(ev, v, move |f| (f * inv + 0.5).floor() / inv)))
        }
        "clamp" => {
            let v = ev.eval_vector(args[0], ts)?;
            let lo = ev.eval_scalar(args[1], ts)?;
            let hi = ev.eval_scalar(args[2], ts)?;
            if hi < lo {
                return Ok(Value::Vector(vec![]));
            }
            Ok(Value::Vector(map_floats(ev, v, move |f| go_max(lo, go_min(hi, f)))))
        }
        "clamp_min" => {
            let v = ev.eval_vector(args[0], ts)?;
            let lo = ev.eval_scalar(args[1], ts)?;
            Ok(Value::Vector(map_floats(ev, v, move |f| go_max(lo, f))))
        }
        "clamp_max" => {
            let v = ev.eval_vector(args[0], ts)?;
            let hi = ev.eval_scalar(args[1], ts)?;
            Ok(Value::Vector(map_floats(ev, v, move |f| go_min(hi, f))))
        }
        "start_timestamp" => {
            // Start timestamps exist only on stored samples: any other argument yields nothing.
            let Expr::VectorSelector(vs) = unparen(args[0]) else { return Ok(Value::Vector(vec![])) };
            let mut v = ev.vector_select_start_times(vs, ts)?;
            for s in v.iter_mut() {
                ev.mark_drop_name(s);
            }
            Ok(Value::Vector(v))
        }
        "timestamp" => {
            let mut v = match unparen(args[0]) {
                Expr::VectorSelector(vs) => ev.vector_select_times(vs, ts)?,
                e => {
                    let mut v = ev.eval_vector(e, ts)?;
                    for s in v.iter_mut() {
                        s.f = ts as f64 / 1000.0;
                        s.h = None;
                    }
                    v
                }
            };
            for s in v.iter_mut() {
                ev.mark_drop_name(s);
            }
            Ok(Value::Vector(v))
        }
        "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month" | "hour" | "minute" | "month" | "year" => {
            let v = if args.is_empty() {
                vec![Sample { metric: Labels::empty(), t: ts, f: ts as f64 / 1000.0, h: None, drop_name: false }]
            } else {
                ev.eval_vector(args[0], ts)?
            };
            let n = name.to_string();
            Ok(Value::Vector(map_floats(ev, v, move |f| time_part(&n, f))))
        }
        "sort" | "sort_desc" => {
            if ev.interval > 0 {
                let pos = ev.pos_of(&call_pos());
                ev.warn("sort is ineffective for range queries since results are always ordered by labels".into(), pos);
            }
            let mut v = ev.eval_vector(args[0], ts)?;
            v.retain(|s| s.h.is_none());
            let desc = name == "sort_desc";
            v.sort_by(|a, b| match (a.f.is_nan(), b.f.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => {
                    let o = a.f.partial_cmp(&b.f).unwrap_or(std::cmp::Ordering::Equal);
                    if desc { o.reverse() } else { o }
                }
            });
            Ok(Value::Vector(v))
        }
        "sort_by_label" | "sort_by_label_desc" => {
            if ev.interval > 0 {
                let pos = ev.pos_of(&call_pos());
                ev.warn("sort is ineffective for range queries since results are always ordered by labels".into(), pos);
            }
            let mut v = ev.eval_vector(args[0], ts)?;
            let mut names = Vec::new();
            for a in &args[1..] {
                match ev.eval(a, ts)? {
                    Value::String(s) => names.push(s),
                    v => return Err(QueryError::Eval(format!("expected string, got {}", v.type_name()))),
                }
            }
            let desc = name == "sort_by_label_desc";
            v.sort_by(|a, b| {
                for n in &names {
                    let o = natural_cmp(a.metric.get(n).unwrap_or(""), b.metric.get(n).unwrap_or(""));
                    if o != std::cmp::Ordering::Equal {
                        return if desc { o.reverse() } else { o };
                    }
                }
                let o = a.metric.cmp(&b.metric);
                if desc { o.reverse() } else { o }
            });
            Ok(Value::Vector(v))
        }
        "label_replace" => label_replace(ev, c, &args, ts),
        "info" => crate::info::info(ev, &args, ts),
        "label_join" => label_join(ev, c, &args, ts),
        "absent" => {
            let v = ev.eval_vector(args[0], ts)?;
            if !v.is_empty() {
                return Ok(Value::Vector(vec![]));
            }
            Ok(Value::Vector(vec![Sample { metric: absent_labels(args[0]), t: ts, f: 1.0, h: None, drop_name: false }]))
        }
        "absent_over_time" => {
            let r = ev.eval_range_arg(args[0], ts)?;
            if !r.series.is_empty() {
                return Ok(Value::Vector(vec![]));
            }
            Ok(Value::Vector(vec![Sample { metric: absent_labels(args[0]), t: ts, f: 1.0, h: None, drop_name: false }]))
        }
        "histogram_quantile" => histogram_quantile(ev, &args, ts),
        "histogram_quantiles" => {
            // histogram_quantiles(v, "label", q1, q2, …): one output series per quantile.
            let label = string_arg(ev, args[1], ts)?;
            let mut out = Vec::new();
            for qa in &args[2..] {
                let q = ev.eval_scalar(qa, ts)?;
                let Value::Vector(v) = histogram_quantile_vec(ev, args[0], q, ts)? else { continue };
                for mut s in v {
                    let mut b = s.metric.to_builder();
                    let qs = if q.fract() == 0.0 && q.is_finite() {
                        format!("{q:.1}")
                    } else {
                        norn_model::format::go_format_g(q)
                    };
                    b.set(&label, &qs);
                    s.metric = b.build();
                    out.push(s);
                }
            }
            Ok(Value::Vector(out))
        }
        "histogram_fraction" => histogram_fraction(ev, &args, ts),
        "histogram_count" | "histogram_sum" | "histogram_avg" | "histogram_stddev" | "histogram_stdvar" => {
            let stats = matches!(name, "histogram_count" | "histogram_sum" | "histogram_avg");
            let new_stats = stats || ev.stats_hints;
            let saved = std::mem::replace(&mut ev.stats_hints, new_stats);
            let v = ev.eval_vector(args[0], ts);
            ev.stats_hints = saved;
            let v = v?;
            let mut out = Vec::new();
            for mut s in v {
                let Some(h) = s.h.take() else { continue };
                s.f = match name {
                    "histogram_count" => h.count,
                    "histogram_sum" => h.sum,
                    "histogram_avg" => h.sum / h.count,
                    "histogram_stddev" => hist::stdvar(&h).sqrt(),
                    _ => hist::stdvar(&h),
                };
                ev.mark_drop_name(&mut s);
                out.push(s);
            }
            Ok(Value::Vector(out))
        }
        _ => range_function(ev, c, &args, ts),
    }
}

fn map_floats(ev: &Evaluator<'_>, v: Vec<Sample>, f: impl Fn(f64) -> f64) -> Vec<Sample> {
    let mut out = Vec::with_capacity(v.len());
    for mut s in v {
        if s.h.is_some() {
            continue;
        }
        s.f = f(s.f);
        ev.mark_drop_name(&mut s);
        out.push(s);
    }
    out
}

/// Compares strings with runs of digits compared numerically.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        if ab[i].is_ascii_digit() && bb[j].is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let na = a[si..i].trim_start_matches('0');
            let nb = b[sj..j].trim_start_matches('0');
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            if ab[i] != bb[j] {
                return ab[i].cmp(&bb[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j))
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn time_part(name: &str, f: f64) -> f64 {
    if f.is_nan() || f.is_infinite() {
        return f64::NAN;
    }
    let secs = f.floor() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let dim = [31, if is_leap(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    match name {
        "day_of_month" => d as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_year" => (dim[..(m as usize - 1)].iter().sum::<i64>() + d as i64) as f64,
        "days_in_month" => dim[m as usize - 1] as f64,
        "hour" => (sod / 3600) as f64,
        "minute" => ((sod % 3600) / 60) as f64,
        "month" => m as f64,
        "year" => y as f64,
        _ => f64::NAN,
    }
}

fn absent_labels(e: &Expr) -> Labels {
    let vs = match unparen(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::empty(),
    };
    let mut seen: HashMap<&str, usize> = HashMap::default();
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for m in vs.matchers.matchers.iter().filter(|m| m.name != METRIC_NAME) {
        *seen.entry(m.name.as_str()).or_default() += 1;
        if matches!(m.op, MatchOp::Equal) {
            pairs.push((m.name.as_str(), m.value.as_str()));
        }
    }
    let pairs: Vec<(&str, &str)> = pairs.into_iter().filter(|(n, _)| seen.get(n).copied() == Some(1)).collect();
    Labels::from_pairs(pairs)
}

fn string_arg(ev: &mut Evaluator<'_>, e: &Expr, ts: i64) -> EvalResult<String> {
    match ev.eval(e, ts)? {
        Value::String(s) => Ok(s),
        v => Err(QueryError::Eval(format!("expected string, got {}", v.type_name()))),
    }
}

fn label_replace(ev: &mut Evaluator<'_>, c: &Call, args: &[&Expr], ts: i64) -> EvalResult<Value> {
    let node = (c as *const Call as usize).wrapping_mul(8);
    let dst = string_arg(ev, args[1], ts)?;
    let repl = string_arg(ev, args[2], ts)?;
    let src = string_arg(ev, args[3], ts)?;
    let re_s = string_arg(ev, args[4], ts)?;
    let re = ev
        .regex(&format!("^(?s:{re_s})$"))
        .map_err(|_| QueryError::Eval(format!("invalid regular expression in label_replace(): {re_s}")))?;
    if !crate::aggregate::is_valid_label_name(&dst) {
        return Err(QueryError::Eval(format!("invalid destination label name in label_replace(): {dst}")));
    }
    let v = ev.eval_vector(args[0], ts)?;
    let mut out = Vec::with_capacity(v.len());
    let replace = |l: &Labels| -> Option<Labels> {
        let sv = l.get(&src).unwrap_or("");
        let caps = re.captures(sv)?;
        let mut res = String::new();
        caps.expand(&repl, &mut res);
        let mut b = l.to_builder();
        b.set(&dst, &res);
        Some(b.build())
    };
    for mut s in v {
        if dst == METRIC_NAME {
            if let Some(l) = replace(&s.metric) {
                s.metric = l;
                s.drop_name = false;
            }
        } else {
            s.metric = ev.memo_labels(node, &s.metric, |l| replace(l).unwrap_or_else(|| l.clone()));
        }
        out.push(s);
    }
    Ok(Value::Vector(out))
}

fn label_join(ev: &mut Evaluator<'_>, c: &Call, args: &[&Expr], ts: i64) -> EvalResult<Value> {
    let node = (c as *const Call as usize).wrapping_mul(8);
    let dst = string_arg(ev, args[1], ts)?;
    let sep = string_arg(ev, args[2], ts)?;
    let mut srcs = Vec::new();
    for a in &args[3..] {
        srcs.push(string_arg(ev, a, ts)?);
    }
    if !crate::aggregate::is_valid_label_name(&dst) {
        return Err(QueryError::Eval(format!("invalid destination label name in label_join(): {dst}")));
    }
    let v = ev.eval_vector(args[0], ts)?;
    let mut out = Vec::with_capacity(v.len());
    let join = |l: &Labels| -> Labels {
        let joined: Vec<&str> = srcs.iter().map(|n| l.get(n).unwrap_or("")).collect();
        let mut b = l.to_builder();
        b.set(&dst, &joined.join(&sep));
        b.build()
    };
    for mut s in v {
        s.metric = ev.memo_labels(node, &s.metric, join);
        if dst == METRIC_NAME {
            s.drop_name = false;
        }
        out.push(s);
    }
    Ok(Value::Vector(out))
}

fn bucket_quantile(q: f64, buckets: &mut Vec<(f64, f64)>) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
        return (f64::NAN, false);
    }
    coalesce(buckets);
    let forced = ensure_monotonic(buckets);
    if buckets.len() < 2 {
        return (f64::NAN, forced);
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return (f64::NAN, forced);
    }
    let mut rank = q * observations;
    let n = buckets.len() - 1;
    let b = buckets[..n].partition_point(|x| x.1 < rank);
    if b == n {
        return (buckets[n - 1].0, forced);
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return (buckets[0].0, forced);
    }
    let end = buckets[b].0;
    let mut count = buckets[b].1;
    let mut start = 0.0;
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    (start + (end - start) * (rank / count), forced)
}

fn coalesce(buckets: &mut Vec<(f64, f64)>) {
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for b in buckets.iter() {
        match out.last_mut() {
            Some(l) if l.0 == b.0 => l.1 += b.1,
            _ => out.push(*b),
        }
    }
    *buckets = out;
}

fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < eps * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < eps
}

fn ensure_monotonic(buckets: &mut [(f64, f64)]) -> bool {
    let mut forced = false;
    let mut prev = buckets[0].1;
    for b in buckets.iter_mut().skip(1) {
        let curr = b.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, 1e-12) {
            b.1 = prev;
            continue;
        }
        if curr < prev {
            b.1 = prev;
            forced = true;
            continue;
        }
        prev = curr;
    }
    forced
}

/// Classic buckets grouped by labels without `le`.
struct ClassicGroup {
    labels: Labels,
    buckets: Vec<(f64, f64)>,
    has_native: bool,
    name: String,
    drop_name: bool,
}

fn classic_groups(
    ev: &mut Evaluator<'_>,
    v: Vec<Sample>,
    pos: &str,
    native_out: &mut Vec<Sample>,
) -> Vec<ClassicGroup> {
    let mut groups: Vec<ClassicGroup> = Vec::new();
    let mut idx: HashMap<Labels, usize> = HashMap::default();
    let mut natives: Vec<Sample> = Vec::new();
    for s in v {
        if s.h.is_some() {
            natives.push(s);
            continue;
        }
        let ck = match ev.classic_keys.get(&s.metric) {
            Some(ck) => ck.clone(),
            None => {
                let le = s.metric.get("le");
                let Some(upper) = le.and_then(parse_le) else {
                    // Not cached: the warning is emitted at every step, as on the step path.
                    ev.warn(
                        format!(
                            "bucket label \"le\" is missing or has a malformed value of {} for metric name {}",
                            norn_model::format::go_quote(le.unwrap_or("")),
                            norn_model::format::go_quote(s.metric.get(METRIC_NAME).unwrap_or(""))
                        ),
                        pos.to_string(),
                    );
                    continue;
                };
                let key = ev.intern(crate::engine::labels_without(&s.metric, &["le"]));
                let name: Arc<str> = Arc::from(s.metric.get(METRIC_NAME).unwrap_or(""));
                let ck = crate::engine::ClassicKey { key, upper, name };
                ev.classic_keys.insert(s.metric.clone(), ck.clone());
                ck
            }
        };
        let upper = ck.upper;
        let key = ck.key;
        let gi = *idx.entry(key.clone()).or_insert_with(|| {
            groups.push(ClassicGroup {
                labels: key,
                buckets: vec![],
                has_native: false,
                name: ck.name.to_string(),
                drop_name: s.drop_name,
            });
            groups.len() - 1
        });
        groups[gi].buckets.push((upper, s.f));
    }
    for s in natives {
        let key = s.metric.clone();
        if let Some(&gi) = idx.get(&key) {
            groups[gi].has_native = true;
            ev.warn(
                format!(
                    "vector contains a mix of classic and native histograms for metric name {}",
                    norn_model::format::go_quote(s.metric.get(METRIC_NAME).unwrap_or(""))
                ),
                pos.to_string(),
            );
            continue;
        }
        native_out.push(s);
    }
    groups
}

fn parse_le(s: &str) -> Option<f64> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "+inf" | "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => t.parse::<f64>().ok(),
    }
}

fn histogram_quantile(ev: &mut Evaluator<'_>, args: &[&Expr], ts: i64) -> EvalResult<Value> {
    let q = ev.eval_scalar(args[0], ts)?;
    histogram_quantile_vec(ev, args[1], q, ts)
}

fn histogram_quantile_vec(ev: &mut Evaluator<'_>, arg: &Expr, q: f64, ts: i64) -> EvalResult<Value> {
    let v = ev.eval_vector(arg, ts)?;
    let pos = ev.pos_cached(arg);
    if !(0.0..=1.0).contains(&q) {
        ev.warn(
            format!("quantile value should be between 0 and 1, got {}", norn_model::format::go_format_g(q)),
            pos.clone(),
        );
    }
    let mut natives = Vec::new();
    let groups = classic_groups(ev, v, &pos, &mut natives);
    let mut out = Vec::new();
    for mut g in groups {
        if g.has_native {
            continue;
        }
        let (val, forced) = bucket_quantile(q, &mut g.buckets);
        if forced {
            ev.info(
                format!(
                    "input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {}",
                    norn_model::format::go_quote(&g.name)
                ),
                pos.clone(),
            );
        }
        let mut s = Sample { metric: g.labels, t: ts, f: val, h: None, drop_name: g.drop_name };
        ev.mark_drop_name(&mut s);
        out.push(s);
    }
    for mut s in natives {
        let h = s.h.take().expect("native");
        s.f = hist::quantile(q, &h);
        if h.sum.is_nan() {
            let what = if s.f.is_nan() { "result is NaN" } else { "result is skewed higher" };
            ev.info(
                format!(
                    "input to histogram_quantile has NaN observations, {what} for metric name {}",
                    norn_model::format::go_quote(s.metric.get(METRIC_NAME).unwrap_or(""))
                ),
                pos.clone(),
            );
        }
        ev.mark_drop_name(&mut s);
        out.push(s);
    }
    Ok(Value::Vector(out))
}

fn histogram_fraction(ev: &mut Evaluator<'_>, args: &[&Expr], ts: i64) -> EvalResult<Value> {
    let lo = ev.eval_scalar(args[0], ts)?;
    let hi = ev.eval_scalar(args[1], ts)?;
    let v = ev.eval_vector(args[2], ts)?;
    let pos = ev.pos_cached(args[2]);
    let mut natives = Vec::new();
    let groups = classic_groups(ev, v, &pos, &mut natives);
    let mut out = Vec::new();
    for mut g in groups {
        if g.has_native {
            continue;
        }
        g.buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        let val = if g.buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
            f64::NAN
        } else {
            coalesce(&mut g.buckets);
            ensure_monotonic(&mut g.buckets);
            // As a histogram with custom bounds: per-bucket counts from the cumulative ones.
            let mut h = FloatHistogram { schema: norn_model::histogram::CUSTOM_BUCKETS_SCHEMA, ..Default::default() };
            let mut prev = 0.0;
            let n = g.buckets.len();
            for (i, (ub, c)) in g.buckets.iter().enumerate() {
                if i + 1 < n {
                    h.custom_values.push(*ub);
                }
                h.positive_buckets.push(c - prev);
                prev = *c;
            }
            h.positive_spans = vec![norn_model::Span { offset: 0, length: n as u32 }];
            h.count = prev;
            hist::fraction(lo, hi, &h)
        };
        let mut s = Sample { metric: g.labels, t: ts, f: val, h: None, drop_name: g.drop_name };
        ev.mark_drop_name(&mut s);
        out.push(s);
    }
    for mut s in natives {
        let h = s.h.take().expect("native");
        s.f = hist::fraction(lo, hi, &h);
        if h.sum.is_nan() {
            ev.info(
                format!(
                    "input to histogram_fraction has NaN observations, which are excluded from all fractions for metric name {}",
                    norn_model::format::go_quote(s.metric.get(METRIC_NAME).unwrap_or(""))
                ),
                pos.clone(),
            );
        }
        ev.mark_drop_name(&mut s);
        out.push(s);
    }
    Ok(Value::Vector(out))
}

fn range_function(ev: &mut Evaluator<'_>, c: &Call, args: &[&Expr], ts: i64) -> EvalResult<Value> {
    if let Some(v) = crate::series_major::lookup(ev, c, ts)? {
        return Ok(Value::Vector(v));
    }
    let name = c.func.name;
    // Index of the range argument, and scalar arguments evaluated first.
    let mi = range_arg_index(name);
    let scalars = range_fn_scalars(ev, name, args, ts)?;
    if args.len() <= mi {
        return Err(QueryError::Eval(format!("unsupported function {name}")));
    }
    if let Expr::MatrixSelector(ms) = unparen(args[mi])
        && let Some(ext) = crate::engine::ext_mode(&ms.vs)
    {
        let (word, allowed): (&str, &[&str]) = match ext {
            Ext::Anchored => ("anchored", &["changes", "delta", "increase", "rate", "resets"]),
            Ext::Smoothed => ("smoothed", &["delta", "increase", "rate"]),
        };
        if !allowed.contains(&name) {
            return Err(QueryError::Eval(format!(
                "{word} modifier can only be used with: {} - not with {name}",
                allowed.join(", ")
            )));
        }
    }
    let arg_pos = ev.pos_cached(args[mi]);
    ev.pending_func = Some(name.to_string());
    let r = ev.eval_range_arg(args[mi], ts)?;
    ev.pending_func = None;
    let keep_name = range_fn_keeps_name(name);
    let mut out = Vec::with_capacity(r.series.len());
    for s in &r.series {
        let metric_name = s.metric.get(METRIC_NAME).unwrap_or("");
        if let Some((f, h)) = apply_range_fn(ev, name, s, metric_name, &r, &scalars, ts, &arg_pos)? {
            let mut smp = Sample { metric: s.metric.clone(), t: ts, f, h: h.map(Arc::new), drop_name: s.drop_name };
            if !keep_name {
                ev.mark_drop_name(&mut smp);
            }
            out.push(smp);
        }
    }
    if matches!(name, "rate" | "increase") {
        for s in &r.series {
            if !s.floats.is_empty() {
                counter_name_info(ev, &s.metric, &arg_pos);
            }
        }
    }
    Ok(Value::Vector(out))
}

/// Whether `name` is a function over a range vector that [`apply_range_fn`] evaluates.
pub(crate) fn is_range_function(name: &str) -> bool {
    matches!(
        name,
        "rate"
            | "increase"
            | "delta"
            | "irate"
            | "idelta"
            | "deriv"
            | "predict_linear"
            | "double_exponential_smoothing"
            | "holt_winters"
            | "changes"
            | "resets"
            | "count_over_time"
            | "present_over_time"
            | "last_over_time"
            | "first_over_time"
            | "sum_over_time"
            | "avg_over_time"
            | "min_over_time"
            | "max_over_time"
            | "stddev_over_time"
            | "stdvar_over_time"
            | "quantile_over_time"
            | "mad_over_time"
            | "ts_of_min_over_time"
            | "ts_of_max_over_time"
            | "ts_of_last_over_time"
            | "ts_of_first_over_time"
    )
}

/// Position of the range argument among a range function's arguments.
pub(crate) fn range_arg_index(name: &str) -> usize {
    if name == "quantile_over_time" { 1 } else { 0 }
}

/// Whether a range function keeps the metric name of its input.
pub(crate) fn range_fn_keeps_name(name: &str) -> bool {
    matches!(name, "last_over_time" | "first_over_time")
}

/// The scalar arguments of a range function, evaluated at `ts`.
pub(crate) fn range_fn_scalars(ev: &mut Evaluator<'_>, name: &str, args: &[&Expr], ts: i64) -> EvalResult<Vec<f64>> {
    Ok(match name {
        "quantile_over_time" => vec![ev.eval_scalar(args[0], ts)?],
        "predict_linear" => vec![ev.eval_scalar(args[1], ts)?],
        "double_exponential_smoothing" | "holt_winters" => {
            vec![ev.eval_scalar(args[1], ts)?, ev.eval_scalar(args[2], ts)?]
        }
        _ => vec![],
    })
}

/// The info `rate` and `increase` give for float series whose name does not say counter.
pub(crate) fn counter_name_info(ev: &mut Evaluator<'_>, metric: &Labels, pos: &str) {
    let n = metric.get(METRIC_NAME).unwrap_or("");
    let counter_like = n.ends_with("_total") || n.ends_with("_sum") || n.ends_with("_count") || n.ends_with("_bucket");
    if !counter_like {
        ev.info(
            format!(
                "metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {}",
                norn_model::format::go_quote(n)
            ),
            pos.to_string(),
        );
    }
}

/// One range function applied to one series' samples in the window `r` describes
/// (`metric_name` is the series' name, for annotations).
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_range_fn(
    ev: &mut Evaluator<'_>,
    name: &str,
    s: &Series,
    metric_name: &str,
    r: &RangeArg,
    scalars: &[f64],
    ts: i64,
    arg_pos: &str,
) -> EvalResult<Option<FH>> {
    Ok(match name {
        "rate" | "increase" | "delta" if r.ext.is_some() => {
            extended_rate(ev, s, r, name != "delta", name == "rate", metric_name, arg_pos)
        }
        "rate" | "increase" if !s.floats_st.is_empty() || !s.histograms_st.is_empty() => {
            st_rate(ev, s, r, name == "rate", metric_name, arg_pos)
        }
        "rate" | "increase" | "delta" => {
            extrapolated_rate(ev, s, r, name != "delta", name == "rate", metric_name, arg_pos)
        }
        "irate" if !s.floats_st.is_empty() || !s.histograms_st.is_empty() => st_irate(s),
        "irate" | "idelta" => instant_value(ev, s, name == "irate", metric_name, arg_pos),
        _ => over_time(ev, name, s, scalars, ts, metric_name, arg_pos)?,
    })
}

pub(crate) type FH = (f64, Option<FloatHistogram>);

fn extrapolated_rate(
    ev: &mut Evaluator<'_>,
    s: &Series,
    r: &RangeArg,
    is_counter: bool,
    is_rate: bool,
    metric_name: &str,
    pos: &str,
) -> Option<FH> {
    if !s.histograms.is_empty() && !s.floats.is_empty() {
        ev.warn(
            format!(
                "encountered a mix of histograms and floats for metric name {}",
                norn_model::format::go_quote(metric_name)
            ),
            pos.to_string(),
        );
        return None;
    }
    let (first_t, last_t, n1, mut result_f, mut result_h, first_f, first_hc);
    if s.histograms.len() > 1 {
        n1 = s.histograms.len() - 1;
        first_t = s.histograms[0].0;
        last_t = s.histograms[n1].0;
        result_h = Some(histogram_rate(ev, &s.histograms, is_counter, metric_name, pos)?);
        result_f = 0.0;
        first_f = None;
        first_hc = Some(s.histograms[0].1.count);
    } else if s.floats.len() > 1 {
        n1 = s.floats.len() - 1;
        first_t = s.floats[0].0;
        last_t = s.floats[n1].0;
        result_f = s.floats[n1].1 - s.floats[0].1;
        if is_counter {
            let mut prev = s.floats[0].1;
            for (_, v) in &s.floats[1..] {
                if *v < prev {
                    result_f += prev;
                }
                prev = *v;
            }
        }
        result_h = None;
        first_f = Some(s.floats[0].1);
        first_hc = None;
    } else {
        return None;
    }
    let mut dur_start = (first_t - r.range_start) as f64 / 1000.0;
    let mut dur_end = (r.range_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg = sampled / n1 as f64;
    let threshold = avg * 1.1;
    if dur_start >= threshold {
        dur_start = avg / 2.0;
    }
    if is_counter {
        let mut dur_zero = dur_start;
        if let Some(f0) = first_f {
            if result_f > 0.0 && f0 >= 0.0 {
                dur_zero = sampled * (f0 / result_f);
            }
        } else if let (Some(h), Some(c0)) = (&result_h, first_hc)
            && h.count > 0.0
            && c0 >= 0.0
        {
            dur_zero = sampled * (c0 / h.count);
        }
        if dur_zero < dur_start {
            dur_start = dur_zero;
        }
    }
    if dur_end >= threshold {
        dur_end = avg / 2.0;
    }
    let mut factor = (sampled + dur_start + dur_end) / sampled;
    if is_rate {
        factor /= r.range as f64 / 1000.0;
    }
    match &mut result_h {
        None => {
            result_f *= factor;
            Some((result_f, None))
        }
        Some(h) => {
            hist::scale(h, factor);
            Some((0.0, result_h))
        }
    }
}

/// Whether sample `i` starts a new counter according to its start timestamp: a start after
/// the previous sample, or exactly at it when the previous sample had an earlier start of
/// its own (a delta sample). `None` when the start timestamps say nothing.
fn st_says_reset(ts: &[i64], sts: &[i64], i: usize) -> Option<bool> {
    let (sc, sp, tp) = (sts[i], sts[i - 1], ts[i - 1]);
    if sc == 0 {
        return None;
    }
    if sc > tp || (sc == tp && sp != 0 && sp < tp) {
        return Some(true);
    }
    None
}

/// Warns about start timestamps overlapping the previous sample.
fn st_overlap_warning(ev: &mut Evaluator<'_>, ts: &[i64], sts: &[i64], metric_name: &str, pos: &str) {
    for i in 1..ts.len() {
        if sts[i] != 0 && sts[i] < ts[i - 1] && sts[i] != sts[i - 1] {
            ev.warn(
                format!(
                    "sample has start time that overlaps with previous sample timestamp for metric {}",
                    norn_model::format::go_quote(metric_name)
                ),
                pos.to_string(),
            );
            return;
        }
    }
}

/// rate/increase of a series whose samples carry start timestamps: resets are detected
/// from them, and a first sample that started inside the range counts from zero at its
/// start instead of being extrapolated to the left.
fn st_rate(
    ev: &mut Evaluator<'_>,
    s: &Series,
    r: &RangeArg,
    is_rate: bool,
    metric_name: &str,
    pos: &str,
) -> Option<FH> {
    let hist_mode = !s.histograms.is_empty();
    if hist_mode && !s.floats.is_empty() {
        ev.warn(
            format!(
                "encountered a mix of histograms and floats for metric name {}",
                norn_model::format::go_quote(metric_name)
            ),
            pos.to_string(),
        );
        return None;
    }
    let ts: Vec<i64> =
        if hist_mode { s.histograms.iter().map(|p| p.0).collect() } else { s.floats.iter().map(|p| p.0).collect() };
    let sts: &[i64] = if hist_mode { &s.histograms_st } else { &s.floats_st };
    let n = ts.len();
    if n == 0 || sts.len() != n {
        return None;
    }
    st_overlap_warning(ev, &ts, sts, metric_name, pos);
    let synth = sts[0] != 0 && sts[0] > r.range_start && sts[0] < ts[0];
    if !synth && n < 2 {
        return None;
    }
    let is_reset = |i: usize| -> bool {
        st_says_reset(&ts, sts, i).unwrap_or_else(|| {
            if hist_mode {
                hist::detect_reset(&s.histograms[i].1, &s.histograms[i - 1].1)
            } else {
                s.floats[i].1 < s.floats[i - 1].1
            }
        })
    };
    // total = last - first + Σ (value before each reset - value the new counter starts at),
    // where a counter whose start equals its timestamp starts at its own value.
    let (mut total_f, mut total_h, first_value): (f64, Option<FloatHistogram>, f64);
    if hist_mode {
        let last = &s.histograms[n - 1].1;
        let mut h = (**last).clone();
        if !synth {
            h = hist::sub(&h, &s.histograms[0].1).ok()?;
        }
        for i in 1..n {
            if is_reset(i) {
                h = hist::add(&h, &s.histograms[i - 1].1).ok()?;
                if sts[i] == ts[i] {
                    h = hist::sub(&h, &s.histograms[i].1).ok()?;
                }
            }
        }
        h.counter_reset_hint = CounterResetHint::Gauge;
        total_f = 0.0;
        first_value = if synth { 0.0 } else { s.histograms[0].1.count };
        total_h = Some(h);
    } else {
        total_f = s.floats[n - 1].1 - if synth { 0.0 } else { s.floats[0].1 };
        for i in 1..n {
            if is_reset(i) {
                total_f += s.floats[i - 1].1;
                if sts[i] == ts[i] {
                    total_f -= s.floats[i].1;
                }
            }
        }
        first_value = if synth { 0.0 } else { s.floats[0].1 };
        total_h = None;
    }
    let last_t = ts[n - 1];
    let first_t = if synth { sts[0] } else { ts[0] };
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg = if n >= 2 { Some((last_t - ts[0]) as f64 / 1000.0 / (n - 1) as f64) } else { None };
    let mut dur_end = (r.range_end - last_t) as f64 / 1000.0;
    let dur_start;
    match avg {
        None => {
            dur_end = 0.0;
            dur_start = 0.0;
        }
        Some(avg) => {
            if dur_end >= avg * 1.1 {
                dur_end = avg / 2.0;
            }
            if synth {
                dur_start = 0.0;
            } else {
                let mut d = (first_t - r.range_start) as f64 / 1000.0;
                if d >= avg * 1.1 {
                    d = avg / 2.0;
                }
                let result_count = total_h.as_ref().map(|h| h.count).unwrap_or(total_f);
                if result_count > 0.0 && first_value >= 0.0 {
                    d = d.min(sampled * (first_value / result_count));
                }
                dur_start = d;
            }
        }
    }
    let mut factor = if sampled > 0.0 { (sampled + dur_start + dur_end) / sampled } else { 1.0 };
    if is_rate {
        factor /= r.range as f64 / 1000.0;
    }
    match &mut total_h {
        Some(h) => {
            hist::scale(h, factor);
            hist::compact(h);
            Some((0.0, total_h))
        }
        None => {
            total_f *= factor;
            Some((total_f, None))
        }
    }
}

/// irate over samples with start timestamps.
fn st_irate(s: &Series) -> Option<FH> {
    let hist_mode = !s.histograms.is_empty();
    let n = if hist_mode { s.histograms.len() } else { s.floats.len() };
    if n < 2 {
        return None;
    }
    let ts: Vec<i64> =
        if hist_mode { s.histograms.iter().map(|p| p.0).collect() } else { s.floats.iter().map(|p| p.0).collect() };
    let sts: &[i64] = if hist_mode { &s.histograms_st } else { &s.floats_st };
    if sts.len() != n {
        return None;
    }
    let i = n - 1;
    let reset = st_says_reset(&ts, sts, i).unwrap_or_else(|| {
        if hist_mode {
            hist::detect_reset(&s.histograms[i].1, &s.histograms[i - 1].1)
        } else {
            s.floats[i].1 < s.floats[i - 1].1
        }
    });
    let secs = (ts[i] - ts[i - 1]) as f64 / 1000.0;
    if secs == 0.0 {
        return None;
    }
    let empty = sts[i] == ts[i];
    if hist_mode {
        let mut h = if reset {
            if empty { hist::empty_like(&s.histograms[i].1) } else { (*s.histograms[i].1).clone() }
        } else {
            hist::sub(&s.histograms[i].1, &s.histograms[i - 1].1).ok()?
        };
        hist::div(&mut h, secs);
        h.counter_reset_hint = CounterResetHint::Gauge;
        hist::compact(&mut h);
        return Some((0.0, Some(h)));
    }
    let v = if reset { if empty { 0.0 } else { s.floats[i].1 } } else { s.floats[i].1 - s.floats[i - 1].1 };
    Some((v / secs, None))
}

/// rate/increase/delta over an `anchored` or `smoothed` range: no extrapolation; the
/// anchor sample, or values interpolated at the range bounds, stand in for it.
fn extended_rate(
    ev: &mut Evaluator<'_>,
    s: &Series,
    r: &RangeArg,
    is_counter: bool,
    is_rate: bool,
    metric_name: &str,
    pos: &str,
) -> Option<FH> {
    let (lo, hi) = (r.range_start, r.range_end);
    if !s.histograms.is_empty() {
        if !s.floats.is_empty() {
            ev.warn(
                format!(
                    "encountered a mix of histograms and floats for metric name {}",
                    norn_model::format::go_quote(metric_name)
                ),
                pos.to_string(),
            );
            return None;
        }
        let hs = &s.histograms;
        if hs.iter().all(|p| p.0 <= lo) || hs.iter().all(|p| p.0 > hi) {
            return None;
        }
        let mut h = if hs.len() == 1 {
            let mut z = hist::empty_like(&hs[0].1);
            z.counter_reset_hint = CounterResetHint::Gauge;
            z
        } else {
            histogram_rate(ev, hs, is_counter, metric_name, pos)?
        };
        if r.ext == Some(Ext::Smoothed) && hs.len() > 1 {
            // Trim the parts of the first and last intervals that lie outside the range,
            // assuming linear growth within them.
            let first_in = hs.iter().position(|p| p.0 > lo).unwrap_or(0);
            if first_in > 0 {
                let (p, n) = (&hs[first_in - 1], &hs[first_in]);
                let frac = (lo - p.0) as f64 / (n.0 - p.0) as f64;
                let mut d = if hist::detect_reset(&n.1, &p.1) { (*n.1).clone() } else { hist::sub(&n.1, &p.1).ok()? };
                hist::scale(&mut d, frac);
                h = hist::sub(&h, &d).ok()?;
            }
            let last_in = hs.iter().rposition(|p| p.0 <= hi).unwrap_or(hs.len() - 1);
            if last_in + 1 < hs.len() {
                let (p, n) = (&hs[last_in], &hs[last_in + 1]);
                let frac = (n.0 - hi) as f64 / (n.0 - p.0) as f64;
                let mut d = if hist::detect_reset(&n.1, &p.1) { (*n.1).clone() } else { hist::sub(&n.1, &p.1).ok()? };
                hist::scale(&mut d, frac);
                h = hist::sub(&h, &d).ok()?;
            }
            h.counter_reset_hint = CounterResetHint::Gauge;
            hist::compact(&mut h);
        }
        if is_rate {
            hist::div(&mut h, r.range as f64 / 1000.0);
        }
        return Some((0.0, Some(h)));
    }
    let pts = &s.floats;
    if pts.is_empty() || pts.iter().all(|p| p.0 <= lo) || pts.iter().all(|p| p.0 > hi) {
        return None;
    }
    // Counter values with resets folded in, so that differences and interpolation work.
    let mut adj = Vec::with_capacity(pts.len());
    let mut offset = 0.0;
    for (i, (t, v)) in pts.iter().enumerate() {
        if is_counter && i > 0 && *v < pts[i - 1].1 {
            offset += pts[i - 1].1;
        }
        adj.push((*t, v + offset));
    }
    let value = match r.ext {
        Some(Ext::Smoothed) => {
            let at = |x: i64| -> f64 {
                let after = adj.partition_point(|p| p.0 <= x);
                match (after.checked_sub(1).map(|i| adj[i]), adj.get(after)) {
                    (Some(p), Some(n)) if p.0 < x => p.1 + (n.1 - p.1) * (x - p.0) as f64 / (n.0 - p.0) as f64,
                    (Some(p), _) => p.1,
                    (None, Some(n)) => n.1,
                    (None, None) => f64::NAN,
                }
            };
            at(hi) - at(lo)
        }
        _ => adj[adj.len() - 1].1 - adj[0].1,
    };
    let value = if is_rate { value / (r.range as f64 / 1000.0) } else { value };
    Some((value, None))
}

fn histogram_rate(
    ev: &mut Evaluator<'_>,
    points: &[(i64, Arc<FloatHistogram>)],
    is_counter: bool,
    metric_name: &str,
    pos: &str,
) -> Option<FloatHistogram> {
    let prev0 = &points[0].1;
    let last = &points[points.len() - 1].1;
    if is_counter && points.iter().any(|p| p.1.counter_reset_hint == CounterResetHint::Gauge) {
        ev.warn(
            format!("this native histogram metric is not a counter: {}", norn_model::format::go_quote(metric_name)),
            pos.to_string(),
        );
    }
    let mixed = |ev: &mut Evaluator<'_>| {
        ev.warn(
            format!("{} for metric name {}", hist::MIXED_SCHEMAS, norn_model::format::go_quote(metric_name)),
            pos.to_string(),
        );
    };
    let mut h;
    if is_counter {
        // increase = sum of each segment's end (segments split at resets) minus the first
        // sample; a first segment of one sample cancels out, so its layout does not matter.
        let mut ends: Vec<&FloatHistogram> = Vec::new();
        let mut seg_len = 1;
        let mut first_single = false;
        let mut seen_reset = false;
        for i in 1..points.len() {
            if hist::detect_reset(&points[i].1, &points[i - 1].1) {
                let first = !seen_reset;
                seen_reset = true;
                if first && seg_len == 1 {
                    first_single = true;
                } else {
                    ends.push(&points[i - 1].1);
                }
                seg_len = 1;
            } else {
                seg_len += 1;
            }
        }
        ends.push(last);
        h = (*ends[ends.len() - 1]).clone();
        for e in &ends[..ends.len() - 1] {
            if hist::custom_mismatch(&h, e) {
                ev.info("mismatched custom buckets were reconciled during subtraction".into(), pos.to_string());
            }
            match hist::add(&h, e) {
                Ok(x) => h = x,
                Err(_) => {
                    mixed(ev);
                    return None;
                }
            }
        }
        if !first_single {
            if hist::custom_mismatch(&h, prev0) {
                ev.info("mismatched custom buckets were reconciled during subtraction".into(), pos.to_string());
            }
            match hist::sub(&h, prev0) {
                Ok(x) => h = x,
                Err(_) => {
                    mixed(ev);
                    return None;
                }
            }
        }
    } else {
        if hist::custom_mismatch(last, prev0) {
            ev.info("mismatched custom buckets were reconciled during subtraction".into(), pos.to_string());
        }
        h = match hist::sub(last, prev0) {
            Ok(x) => x,
            Err(_) => {
                mixed(ev);
                return None;
            }
        };
        if prev0.counter_reset_hint != CounterResetHint::Gauge || last.counter_reset_hint != CounterResetHint::Gauge {
            ev.warn(
                format!("this native histogram metric is not a gauge: {}", norn_model::format::go_quote(metric_name)),
                pos.to_string(),
            );
        }
    }
    h.counter_reset_hint = CounterResetHint::Gauge;
    hist::compact(&mut h);
    Some(h)
}

fn instant_value(ev: &mut Evaluator<'_>, s: &Series, is_rate: bool, metric_name: &str, pos: &str) -> Option<FH> {
    // The last two samples of either kind, in time order.
    let mut ss: Vec<(i64, f64, Option<&Arc<FloatHistogram>>)> = Vec::new();
    for (t, f) in &s.floats[s.floats.len().saturating_sub(2)..] {
        ss.push((*t, *f, None));
    }
    for (t, h) in &s.histograms[s.histograms.len().saturating_sub(2)..] {
        ss.push((*t, 0.0, Some(h)));
    }
    ss.sort_by_key(|x| x.0);
    if ss.len() < 2 {
        return None;
    }
    let last = ss[ss.len() - 1];
    let prev = ss[ss.len() - 2];
    let interval = last.0 - prev.0;
    let (mut f, mut h) = (0.0, None);
    match (prev.2, last.2) {
        (None, None) => {
            f = if is_rate && last.1 < prev.1 { last.1 } else { last.1 - prev.1 };
        }
        (Some(ph), Some(lh)) => {
            if is_rate
                && (ph.counter_reset_hint == CounterResetHint::Gauge
                    || lh.counter_reset_hint == CounterResetHint::Gauge)
            {
                ev.warn(
                    format!(
                        "this native histogram metric is not a counter: {}",
                        norn_model::format::go_quote(metric_name)
                    ),
                    pos.to_string(),
                );
            }
            if !is_rate
                && (ph.counter_reset_hint != CounterResetHint::Gauge
                    || lh.counter_reset_hint != CounterResetHint::Gauge)
            {
                ev.warn(
                    format!(
                        "this native histogram metric is not a gauge: {}",
                        norn_model::format::go_quote(metric_name)
                    ),
                    pos.to_string(),
                );
            }
            let mut r = (**lh).clone();
            if !is_rate || !hist::detect_reset(lh, ph) {
                if hist::uses_custom(lh) != hist::uses_custom(ph) {
                    ev.warn(
                        format!(
                            "{} for metric name {}",
                            hist::MIXED_SCHEMAS,
                            norn_model::format::go_quote(metric_name)
                        ),
                        pos.to_string(),
                    );
                    return None;
                }
                if hist::custom_mismatch(lh, ph) {
                    ev.info("mismatched custom buckets were reconciled during subtraction".into(), pos.to_string());
                }
                r = hist::sub(lh, ph).ok()?;
            }
            r.counter_reset_hint = CounterResetHint::Gauge;
            hist::compact(&mut r);
            h = Some(r);
        }
        _ => {
            ev.warn(
                format!(
                    "encountered a mix of histograms and floats for metric name {}",
                    norn_model::format::go_quote(metric_name)
                ),
                pos.to_string(),
            );
            return None;
        }
    }
    if interval == 0 {
        return None;
    }
    if is_rate {
        let secs = interval as f64 / 1000.0;
        match &mut h {
            None => f /= secs,
            Some(h) => hist::div(h, secs),
        }
    }
    Some((f, h))
}

fn linear_regression(samples: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init_y = samples[0].1;
    let mut const_y = true;
    for (i, (t, v)) in samples.iter().enumerate() {
        if const_y && i > 0 && *v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_time) as f64 / 1000.0;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(*v, sy, cy);
        (sxy, cxy) = kahan_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

pub(crate) fn mean_of(values: &[f64]) -> f64 {
    let (mut sum, mut c) = (0.0, 0.0);
    for v in values {
        (sum, c) = kahan_inc(*v, sum, c);
    }
    let n = values.len() as f64;
    if (sum + c).is_finite() {
        return (sum + c) / n;
    }
    // Overflowed: an incremental mean stays finite where the plain sum does not.
    let (mut mean, mut mc): (f64, f64) = (0.0, 0.0);
    for (i, v) in values.iter().enumerate() {
        let k = (i + 1) as f64;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) != (*v > 0.0) {
                return f64::NAN;
            }
            continue;
        }
        let q = (k - 1.0) / k;
        let (m, c2) = kahan_inc(v / k, q * mean, q * mc);
        mean = m;
        mc = c2;
    }
    mean + mc
}

fn over_time(
    ev: &mut Evaluator<'_>,
    name: &str,
    s: &Series,
    scalars: &[f64],
    ts: i64,
    metric_name: &str,
    pos: &str,
) -> EvalResult<Option<FH>> {
    let fl = &s.floats;
    let hs = &s.histograms;
    let mixed = !fl.is_empty() && !hs.is_empty();
    let mixed_warn = |ev: &mut Evaluator<'_>| {
        ev.warn(
            format!(
                "encountered a mix of histograms and floats for metric name {}",
                norn_model::format::go_quote(metric_name)
            ),
            pos.to_string(),
        );
    };
    // Only some functions need the values alone: not copied for every window of the others.
    let vals = std::cell::LazyCell::new(|| fl.iter().map(|p| p.1).collect::<Vec<f64>>());
    Ok(match name {
        "count_over_time" => Some(((fl.len() + hs.len()) as f64, None)),
        "present_over_time" => Some((1.0, None)),
        "last_over_time" => {
            let lf = fl.last();
            let lh = hs.last();
            match (lf, lh) {
                (Some(f), Some(h)) if h.0 > f.0 => Some((0.0, Some((*h.1).clone()))),
                (Some(f), _) => Some((f.1, None)),
                (None, Some(h)) => Some((0.0, Some((*h.1).clone()))),
                (None, None) => None,
            }
        }
        "first_over_time" => {
            let ff = fl.first();
            let fh = hs.first();
            match (ff, fh) {
                (Some(f), Some(h)) if h.0 < f.0 => Some((0.0, Some((*h.1).clone()))),
                (Some(f), _) => Some((f.1, None)),
                (None, Some(h)) => Some((0.0, Some((*h.1).clone()))),
                (None, None) => None,
            }
        }
        "sum_over_time" | "avg_over_time" => {
            if mixed {
                mixed_warn(ev);
                return Ok(None);
            }
            if !hs.is_empty() {
                let mut k = hist::KahanSum::new(&hs[0].1);
                let mut reconciled = false;
                for (_, h) in &hs[1..] {
                    if hist::custom_mismatch(&hs[0].1, h) {
                        reconciled = true;
                    }
                    if k.add(h).is_err() {
                        ev.warn(
                            format!(
                                "{} for metric name {}",
                                hist::MIXED_SCHEMAS,
                                norn_model::format::go_quote(metric_name)
                            ),
                            pos.to_string(),
                        );
                        return Ok(None);
                    }
                }
                if reconciled {
                    ev.info("mismatched custom buckets were reconciled during aggregation".into(), pos.to_string());
                }
                if k.conflict {
                    ev.warn("conflicting counter resets during histogram aggregation".into(), pos.to_string());
                }
                let mut acc = k.total();
                if name == "avg_over_time" {
                    acc = hist::mean(&hs.iter().map(|p| p.1.as_ref()).collect::<Vec<_>>(), acc);
                }
                hist::compact(&mut acc);
                return Ok(Some((0.0, Some(acc))));
            }
            if name == "sum_over_time" {
                let (mut sum, mut c) = (0.0, 0.0);
                for v in vals.iter() {
                    (sum, c) = kahan_inc(*v, sum, c);
                }
                Some((sum + c, None))
            } else {
                Some((mean_of(&vals), None))
            }
        }
        "min_over_time"
        | "max_over_time"
        | "stddev_over_time"
        | "stdvar_over_time"
        | "quantile_over_time"
        | "mad_over_time"
        | "ts_of_min_over_time"
        | "ts_of_max_over_time" => {
            if fl.is_empty() {
                return Ok(None);
            }
            if !hs.is_empty() {
                ev.info(
                    format!(
                        "ignored histograms in a range containing both floats and histograms for metric name {}",
                        norn_model::format::go_quote(metric_name)
                    ),
                    pos.to_string(),
                );
            }
            match name {
                "min_over_time" | "max_over_time" | "ts_of_min_over_time" | "ts_of_max_over_time" => {
                    let max = name.contains("max");
                    let (mut bt, mut bv) = fl[0];
                    for (t, v) in &fl[1..] {
                        let better = if max { *v > bv } else { *v < bv };
                        if better || bv.is_nan() || (name.starts_with("ts_of") && *v == bv) {
                            bt = *t;
                            bv = *v;
                        }
                    }
                    if name.starts_with("ts_of") { Some((bt as f64 / 1000.0, None)) } else { Some((bv, None)) }
                }
                "stddev_over_time" | "stdvar_over_time" => {
                    let (mut count, mut mean, mut cm, mut aux, mut ca) = (0.0, 0.0, 0.0, 0.0, 0.0);
                    for v in vals.iter() {
                        count += 1.0;
                        let delta = v - (mean + cm);
                        (mean, cm) = kahan_inc(delta / count, mean, cm);
                        (aux, ca) = kahan_inc(delta * (v - (mean + cm)), aux, ca);
                    }
                    let var = (aux + ca) / count;
                    Some((if name == "stddev_over_time" { var.sqrt() } else { var }, None))
                }
                "quantile_over_time" => {
                    let q = scalars[0];
                    if !(0.0..=1.0).contains(&q) {
                        ev.warn(
                            format!(
                                "quantile value should be between 0 and 1, got {}",
                                norn_model::format::go_format_g(q)
                            ),
                            pos.to_string(),
                        );
                    }
                    let mut v = vals.clone();
                    Some((quantile_of(q, &mut v), None))
                }
                _ => {
                    if vals.iter().any(|v| v.is_nan()) {
                        return Ok(Some((f64::NAN, None)));
                    }
                    let mut v = vals.clone();
                    let median = quantile_of(0.5, &mut v);
                    let mut dev: Vec<f64> = vals.iter().map(|x| (x - median).abs()).collect();
                    Some((quantile_of(0.5, &mut dev), None))
                }
            }
        }
        "ts_of_last_over_time" => {
            let lf = fl.last().map(|p| p.0);
            let lh = hs.last().map(|p| p.0);
            match (lf, lh) {
                (Some(a), Some(b)) => Some((a.max(b) as f64 / 1000.0, None)),
                (Some(a), None) | (None, Some(a)) => Some((a as f64 / 1000.0, None)),
                _ => None,
            }
        }
        "ts_of_first_over_time" => {
            let lf = fl.first().map(|p| p.0);
            let lh = hs.first().map(|p| p.0);
            match (lf, lh) {
                (Some(a), Some(b)) => Some((a.min(b) as f64 / 1000.0, None)),
                (Some(a), None) | (None, Some(a)) => Some((a as f64 / 1000.0, None)),
                _ => None,
            }
        }
        "resets" if !s.floats_st.is_empty() || !s.histograms_st.is_empty() => {
            let hist_mode = !hs.is_empty();
            let ts: Vec<i64> =
                if hist_mode { hs.iter().map(|p| p.0).collect() } else { fl.iter().map(|p| p.0).collect() };
            let sts: &[i64] = if hist_mode { &s.histograms_st } else { &s.floats_st };
            if ts.is_empty() || sts.len() != ts.len() {
                return Ok(None);
            }
            let mut n = 0.0;
            for i in 1..ts.len() {
                let reset = st_says_reset(&ts, sts, i).unwrap_or_else(|| {
                    if hist_mode { hist::detect_reset(&hs[i].1, &hs[i - 1].1) } else { fl[i].1 < fl[i - 1].1 }
                });
                if reset {
                    n += 1.0;
                }
            }
            Some((n, None))
        }
        "changes" | "resets" => {
            // Merge floats and histograms by time.
            let mut pts: Vec<(i64, f64, Option<&Arc<FloatHistogram>>)> =
                fl.iter().map(|(t, f)| (*t, *f, None)).chain(hs.iter().map(|(t, h)| (*t, 0.0, Some(h)))).collect();
            pts.sort_by_key(|p| p.0);
            if pts.is_empty() {
                return Ok(None);
            }
            let mut n = 0.0;
            for w in pts.windows(2) {
                let (p, c) = (&w[0], &w[1]);
                let hit = match (p.2, c.2) {
                    (None, None) => {
                        if name == "changes" {
                            !(c.1 == p.1 || (c.1.is_nan() && p.1.is_nan()))
                        } else {
                            c.1 < p.1
                        }
                    }
                    (Some(ph), Some(ch)) => {
                        if name == "changes" {
                            !hist::equals(ph, ch)
                        } else {
                            hist::detect_reset(ch, ph)
                        }
                    }
                    _ => true,
                };
                if hit {
                    n += 1.0;
                }
            }
            Some((n, None))
        }
        "deriv" => {
            if mixed {
                ev.info(
                    format!(
                        "ignored histograms in a range containing both floats and histograms for metric name {}",
                        norn_model::format::go_quote(metric_name)
                    ),
                    pos.to_string(),
                );
            }
            if fl.len() < 2 {
                return Ok(None);
            }
            let (slope, _) = linear_regression(fl, fl[0].0);
            Some((slope, None))
        }
        "predict_linear" => {
            if mixed {
                ev.info(
                    format!(
                        "ignored histograms in a range containing both floats and histograms for metric name {}",
                        norn_model::format::go_quote(metric_name)
                    ),
                    pos.to_string(),
                );
            }
            if fl.len() < 2 {
                return Ok(None);
            }
            let (slope, intercept) = linear_regression(fl, ts);
            Some((slope * scalars[0] + intercept, None))
        }
        "double_exponential_smoothing" | "holt_winters" => {
            if mixed {
                ev.info(
                    format!(
                        "ignored histograms in a range containing both floats and histograms for metric name {}",
                        norn_model::format::go_quote(metric_name)
                    ),
                    pos.to_string(),
                );
            }
            let (sf, tf) = (scalars[0], scalars[1]);
            if sf <= 0.0 || sf >= 1.0 {
                return Err(QueryError::Eval(format!(
                    "invalid smoothing factor. Expected: 0 < sf < 1, got: {}",
                    go_fmt_f6(sf)
                )));
            }
            if tf <= 0.0 || tf >= 1.0 {
                return Err(QueryError::Eval(format!(
                    "invalid trend factor. Expected: 0 < tf < 1, got: {}",
                    go_fmt_f6(tf)
                )));
            }
            if fl.len() < 2 {
                return Ok(None);
            }
            let mut s1;
            let mut s0 = 0.0;
            let mut b = vals[1] - vals[0];
            s1 = vals[0];
            for (i, x) in vals.iter().enumerate().skip(1) {
                let trend = if i == 1 { b } else { tf * (s1 - s0) + (1.0 - tf) * b };
                b = trend;
                s0 = s1;
                s1 = sf * x + (1.0 - sf) * (s0 + b);
            }
            Some((s1, None))
        }
        _ => return Err(QueryError::Eval(format!("function {name} is not supported"))),
    })
}

fn go_fmt_f6(v: f64) -> String {
    format!("{v:.6}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Range queries derive each bucket series' group key once (cached across steps); the
    /// results, warnings and infos must match evaluating every step on its own.
    #[test]
    fn classic_histogram_functions_agree_with_step_by_step() {
        use crate::conformance::script::parse_histogram;
        use crate::series_major::tests::{both, storage};
        use crate::storage::StoredValue;
        let mut m = storage(1, 200);
        // (job, le, phase): appended out of `le` order; group "c" lacks +Inf, "d" has a bucket
        // without `le` and one with a malformed `le`, "e" is mixed with a native histogram.
        let buckets: [(&str, Option<&str>, i64); 17] = [
            ("a", Some("+Inf"), 0),
            ("a", Some("0.5"), 1),
            ("a", Some("0.1"), 2),
            ("a", Some("1"), 3),
            ("b", Some("1e0"), 4),
            ("b", Some("+Inf"), 5),
            ("b", Some("0.25"), 6),
            ("b", Some("1.0"), 7),
            ("c", Some("0.5"), 8),
            ("c", Some("1"), 9),
            ("d", Some("+Inf"), 10),
            ("d", None, 11),
            ("d", Some("x"), 12),
            ("d", Some("2"), 13),
            ("e", Some("1"), 14),
            ("e", Some("+Inf"), 15),
            ("f", Some("-1"), 16),
        ];
        for (job, le, ph) in buckets {
            let mut pairs = vec![("__name__", "lat_bucket"), ("job", job)];
            if let Some(le) = le {
                pairs.push(("le", le));
            }
            let l = Labels::from_pairs(pairs);
            m.append(
                &l,
                (0..200i64).filter(|k| (k + ph) % 11 != 5).map(|k| {
                    // Counters that mostly grow with the bound, with NaNs and non-monotonic dips.
                    let v = if (k + ph) % 17 == 3 {
                        f64::NAN
                    } else if (k + ph) % 13 == 0 {
                        (k * 2) as f64
                    } else {
                        (k * (ph % 4 + 1)) as f64
                    };
                    (k * 15_000 + ph * 300, StoredValue::Float(v))
                }),
            );
        }
        let (h, _) = parse_histogram("schema:0 count:9 sum:20 buckets:[2 4 3]").expect("histogram");
        let native = Labels::from_pairs([("__name__", "lat_bucket"), ("job", "e")]);
        m.append(
            &native,
            (0..200i64).filter(|k| k % 3 != 0).map(|k| (k * 15_000, StoredValue::Histogram(Arc::new(h.clone())))),
        );
        let queries = [
            "histogram_quantile(0.9, lat_bucket)",
            "histogram_quantile(0.5, rate(lat_bucket[5m]))",
            "histogram_quantile(0.9, sum by (le, job) (rate(lat_bucket[5m])))",
            "histogram_quantile(0.9, sum by (le) (rate(lat_bucket[5m])))",
            "histogram_quantile(0, lat_bucket)",
            "histogram_quantile(1.5, lat_bucket)",
            "histogram_quantile(NaN, lat_bucket)",
            "histogram_quantile(scalar(g), lat_bucket)",
            "histogram_fraction(0, 0.5, rate(lat_bucket[5m]))",
            "histogram_fraction(-Inf, 1, lat_bucket)",
            "histogram_quantile(0.9, lat_bucket) + histogram_quantile(0.5, lat_bucket)",
        ];
        for q in queries {
            for (start, end, step) in [(0, 3_000_000, 30_000), (7_000, 2_000_000, 61_000), (600_000, 600_000, 1000)] {
                let (range, steps) = both(&m, q, start, end, step);
                assert_eq!(range, steps, "{q} from {start} to {end} every {step}");
            }
        }
    }

    #[test]
    fn time_parts() {
        // 2020-02-29T13:45:00Z
        let t = 1_582_983_900.0;
        assert_eq!(time_part("year", t), 2020.0);
        assert_eq!(time_part("month", t), 2.0);
        assert_eq!(time_part("day_of_month", t), 29.0);
        assert_eq!(time_part("days_in_month", t), 29.0);
        assert_eq!(time_part("hour", t), 13.0);
        assert_eq!(time_part("minute", t), 45.0);
        assert_eq!(time_part("day_of_week", t), 6.0);
        assert_eq!(time_part("day_of_year", t), 60.0);
    }

    #[test]
    fn natural_order() {
        assert_eq!(natural_cmp("a2", "a10"), std::cmp::Ordering::Less);
        assert_eq!(natural_cmp("b", "a10"), std::cmp::Ordering::Greater);
    }
}
