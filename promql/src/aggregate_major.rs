//! Aggregations (`sum`, `avg`, `count`, `group`, `min`, `max`, `topk`, `bottomk`) over a
//! whole step grid at once.
//!
//! The step path groups its input anew at every step: a label lookup and a hash per sample
//! and step. When the aggregated expression is one the series-major paths can produce for
//! the whole grid (a selector, or a range function over a selector or subquery), the input
//! series are known up front, so each series' group is found once and every step aggregates
//! plain `(series, value)` columns into per-group accumulators. The arithmetic, the order in
//! which values are combined and the order of groups and results within each step are those
//! of the step path ([`crate::aggregate`]), so both give bit-identical results. Anything with
//! annotations (histograms, parameters out of range) is left to the step path.

use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use crate::engine::{EvalResult, Evaluator, StepGrid, ext_mode};
use crate::series_major::{PreSeries, Precomputed, RangeSource, take, to_steps};
use crate::value::Sample;

/// The aggregation operators this module evaluates.
#[derive(Clone, Copy, PartialEq)]
enum Op {
    Sum,
    Avg,
    Count,
    Group,
    Min,
    Max,
    /// `stddev` (`true`) or `stdvar` (`false`).
    Dev(bool),
    /// `quantile` with φ in [0, 1] (others bring a warning).
    Quantile(f64),
    /// `topk` (`true`) or `bottomk` (`false`) with k ≥ 1.
    K(bool, usize),
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        e => e,
    }
}

/// The operator of `a` if this module evaluates it: parameters only as number literals
/// that need no annotation.
fn op_of(a: &AggregateExpr) -> Option<Op> {
    let op = a.op.to_string().to_lowercase();
    let param = match a.param.as_deref().map(unparen) {
        None => None,
        Some(Expr::NumberLiteral(n)) => Some(n.val),
        Some(_) => return None,
    };
    Some(match (op.as_str(), param) {
        ("sum", None) => Op::Sum,
        ("avg", None) => Op::Avg,
        ("count", None) => Op::Count,
        ("group", None) => Op::Group,
        ("min", None) => Op::Min,
        ("max", None) => Op::Max,
        ("stddev", None) => Op::Dev(true),
        ("stdvar", None) => Op::Dev(false),
        ("quantile", Some(q)) if (0.0..=1.0).contains(&q) => Op::Quantile(q),
        ("topk" | "bottomk", Some(k)) if k >= 1.0 => {
            let k = if k >= usize::MAX as f64 { usize::MAX } else { k as usize };
            Op::K(op == "topk", k)
        }
        _ => return None,
    })
}

/// The result of aggregation `a` at `ts` when `ts` lies on the current evaluation grid and
/// `a` can be evaluated over the whole grid; computed for all steps on first use. `None`
/// means: evaluate step by step.
pub(crate) fn lookup(ev: &mut Evaluator<'_>, a: &AggregateExpr, ts: i64) -> EvalResult<Option<Vec<Sample>>> {
    let Some(grid) = ev.grid else { return Ok(None) };
    if grid.len() < 2 {
        return Ok(None);
    }
    let Some(k) = grid.index(ts) else { return Ok(None) };
    let key = (a as *const AggregateExpr as usize, grid);
    if !ev.precomputed.contains_key(&key) {
        let p = match precompute(ev, a, grid)? {
            Some(steps) => Precomputed::new(steps),
            None => Precomputed::declined(),
        };
        ev.precomputed.insert(key, p);
    }
    Ok(take(ev, key, k))
}

/// The input of `a` for every step of `grid`, series by series, or `None` when the input
/// is not a selector or an eligible range function.
fn input(ev: &mut Evaluator<'_>, a: &AggregateExpr, grid: StepGrid) -> EvalResult<Option<Vec<PreSeries>>> {
    match unparen(&a.expr) {
        Expr::VectorSelector(vs) if ext_mode(vs).is_none() && !ev.stats_hints => {
            // The same selection hints as the step path gives.
            ev.pending_grouping = match &a.modifier {
                Some(LabelModifier::Include(l)) => Some((true, l.labels.clone())),
                Some(LabelModifier::Exclude(l)) => Some((false, l.labels.clone())),
                None => Some((true, vec![])),
            };
            ev.pending_func = Some(a.op.to_string().to_lowercase());
            let series = ev.select_series_major(vs, grid);
            ev.pending_grouping = None;
            ev.pending_func = None;
            let series = series?;
            if series.iter().any(|s| !s.histograms.is_empty()) {
                // Histograms bring annotations: the step path handles them. The samples held
                // by the selection are released again.
                let n: usize = series.iter().map(|s| s.floats.len() + s.histograms.len()).sum();
                ev.held = ev.held.saturating_sub(n);
                return Ok(None);
            }
            let mut out = Vec::with_capacity(series.len());
            for s in series {
                let mut points = Vec::with_capacity(s.floats.len());
                for (t, f) in s.floats {
                    let Some(k) = grid.index(t) else { return Ok(None) };
                    points.push((k as u32, f, None));
                }
                out.push(PreSeries { metric: s.metric, drop_name: s.drop_name, points });
            }
            Ok(Some(out))
        }
        Expr::Call(c) if crate::functions::is_range_function(c.func.name) => {
            let Some(src): Option<RangeSource<'_>> = crate::series_major::eligible(ev, c) else { return Ok(None) };
            let Some(pre) = crate::series_major::compute(ev, c, src, grid)? else { return Ok(None) };
            if pre.iter().any(|p| p.points.iter().any(|x| x.2.is_some())) {
                // Left to the step path, which then takes the call's results from here.
                let key = (c as *const _ as usize, grid);
                ev.precomputed.insert(key, Precomputed::new(to_steps(pre, grid)));
                return Ok(None);
            }
            Ok(Some(pre))
        }
        _ => Ok(None),
    }
}

/// Go's `topk`/`bottomk` order: larger (smaller) first, NaNs last.
fn k_cmp(top: bool, a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        _ if top => b.partial_cmp(&a).unwrap_or(Equal),
        _ => a.partial_cmp(&b).unwrap_or(Equal),
    }
}

/// Per-step results of `a` over the whole grid, or `None` to leave it to the step path.
fn precompute(ev: &mut Evaluator<'_>, a: &AggregateExpr, grid: StepGrid) -> EvalResult<Option<Vec<Vec<Sample>>>> {
    let Some(op) = op_of(a) else { return Ok(None) };
    ev.check_deadline()?;
    let Some(series) = input(ev, a, grid)? else { return Ok(None) };
    let held_in: usize = series.iter().map(|s| s.points.len()).sum();

    // Each series' group, found once (the step path finds it at every step).
    let node = (a as *const AggregateExpr as usize).wrapping_mul(8);
    let mut group_labels = Vec::new();
    let mut index: crate::fasthash::HashMap<norn_model::Labels, u32> = Default::default();
    let mut gid = Vec::with_capacity(series.len());
    for s in &series {
        let gl = ev.memo_labels(node, &s.metric, |l| crate::aggregate::grouping_labels(l, &a.modifier));
        let g = *index.entry(gl.clone()).or_insert_with(|| {
            group_labels.push(gl);
            (group_labels.len() - 1) as u32
        });
        gid.push(g as usize);
    }

    // Columns: per step, the (series, value) pairs in series order.
    let mut cols: Vec<Vec<(u32, f64)>> = vec![Vec::new(); grid.len()];
    for (i, s) in series.iter().enumerate() {
        for &(k, f, _) in &s.points {
            cols[k as usize].push((i as u32, f));
        }
    }

    let ng = group_labels.len();
    let mut stamp = vec![usize::MAX; ng];
    let mut order: Vec<usize> = Vec::new();
    let (mut acc, mut comp, mut cnt) = (vec![0.0f64; ng], vec![0.0f64; ng], vec![0usize; ng]);
    let mut drop = vec![false; ng];
    let mut members: Vec<Vec<u32>> =
        if matches!(op, Op::K(..) | Op::Quantile(_)) { vec![Vec::new(); ng] } else { Vec::new() };
    let mut steps: Vec<Vec<Sample>> = Vec::with_capacity(grid.len());
    let mut held_out = 0usize;
    for (k, col) in cols.iter().enumerate() {
        if k % 64 == 0 {
            ev.check_deadline()?;
        }
        let t = grid.at(k);
        order.clear();
        for (j, &(i, f)) in col.iter().enumerate() {
            let g = gid[i as usize];
            let first = stamp[g] != k;
            if first {
                stamp[g] = k;
                order.push(g);
                acc[g] = 0.0;
                comp[g] = 0.0;
                cnt[g] = 0;
                drop[g] = false;
                if let Some(m) = members.get_mut(g) {
                    m.clear();
                }
            }
            drop[g] |= series[i as usize].drop_name;
            cnt[g] += 1;
            match op {
                Op::Sum | Op::Avg => (acc[g], comp[g]) = crate::aggregate::kahan_inc(f, acc[g], comp[g]),
                Op::Min | Op::Max => {
                    let v = acc[g];
                    if first || (op == Op::Max && (v < f || v.is_nan())) || (op == Op::Min && (v > f || v.is_nan())) {
                        acc[g] = f;
                    }
                }
                Op::Dev(_) => {
                    // Welford's update, as the step path runs it (`acc` mean, `comp` M2).
                    let delta = f - acc[g];
                    acc[g] += delta / cnt[g] as f64;
                    comp[g] += delta * (f - acc[g]);
                }
                Op::K(..) | Op::Quantile(_) => members[g].push(j as u32),
                Op::Count | Op::Group => {}
            }
        }
        let mut out = Vec::with_capacity(order.len());
        for &g in &order {
            let mk = |f: f64| Sample { metric: group_labels[g].clone(), t, f, h: None, drop_name: drop[g] };
            match op {
                Op::Sum => out.push(mk(acc[g] + comp[g])),
                Op::Avg => {
                    let s = acc[g] + comp[g];
                    let v = if s.is_finite() {
                        s / cnt[g] as f64
                    } else {
                        // Overflow: the step path's incremental mean over the same values.
                        let vals: Vec<f64> = col.iter().filter(|(i, _)| gid[*i as usize] == g).map(|x| x.1).collect();
                        crate::functions::mean_of(&vals)
                    };
                    out.push(mk(v));
                }
                Op::Count => out.push(mk(cnt[g] as f64)),
                Op::Group => out.push(mk(1.0)),
                Op::Min | Op::Max => out.push(mk(acc[g])),
                Op::Dev(sd) => {
                    let var = comp[g] / cnt[g] as f64;
                    out.push(mk(if sd { var.sqrt() } else { var }));
                }
                Op::Quantile(q) => {
                    let mut vals: Vec<f64> = members[g].iter().map(|&x| col[x as usize].1).collect();
                    out.push(mk(crate::aggregate::quantile_of(q, &mut vals)));
                }
                Op::K(top, kk) => {
                    let m = &mut members[g];
                    let cmp = |x: u32, y: u32| k_cmp(top, col[x as usize].1, col[y as usize].1);
                    // The first k of a stable sort, as the step path picks them.
                    let best: Vec<u32> = if kk < m.len() {
                        let mut best: Vec<u32> = Vec::with_capacity(kk + 1);
                        for &x in m.iter() {
                            if best.len() == kk && best.last().is_some_and(|&b| cmp(x, b) != std::cmp::Ordering::Less) {
                                continue;
                            }
                            let p = best.partition_point(|&b| cmp(x, b) != std::cmp::Ordering::Less);
                            best.insert(p, x);
                            best.truncate(kk);
                        }
                        best
                    } else {
                        m.sort_by(|&x, &y| cmp(x, y));
                        m.clone()
                    };
                    for x in best {
                        let (i, f) = col[x as usize];
                        let s = &series[i as usize];
                        out.push(Sample { metric: s.metric.clone(), t, f, h: None, drop_name: s.drop_name });
                    }
                }
            }
        }
        held_out += out.len();
        steps.push(out);
    }
    // The input is no longer held; the results are, until handed out.
    ev.held = ev.held.saturating_sub(held_in).saturating_add(held_out);
    ev.check_samples(0)?;
    Ok(Some(steps))
}

#[cfg(test)]
mod tests {
    use crate::series_major::tests::{both, storage};
    use crate::storage::StoredValue;
    use crate::value::stale_nan;
    use norn_model::Labels;

    #[test]
    fn whole_grid_aggregation_agrees_with_step_by_step() {
        let mut m = storage(4, 200);
        // Two jobs of gauges with ties, NaNs, infinities, overflowing sums and gaps.
        let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e308, -0.0, 0.0, 3.0, 3.0];
        for i in 0..6 {
            let job = if i % 2 == 0 { "a" } else { "b" };
            let l = Labels::from_pairs([("__name__", "x"), ("job", job), ("i", &i.to_string())]);
            m.append(
                &l,
                (0..200i64).filter(|k| (k + i) % 7 != 3).map(|k| {
                    let v = if k == 100 {
                        stale_nan()
                    } else if (k + i) % 5 == 0 {
                        specials[((k / 5 + i) % specials.len() as i64) as usize]
                    } else {
                        ((k * 3 + i * 11) % 13) as f64 - 6.0
                    };
                    (k * 15_000 + i * 700, StoredValue::Float(v))
                }),
            );
        }
        let queries = [
            "sum(x)",
            "sum by (job) (x)",
            "sum without (i) (x)",
            "avg by (job) (x)",
            "avg(x)",
            "count by (job) (x)",
            "group by (job) (x)",
            "min by (job) (x)",
            "max by (job) (x)",
            "max(x offset 1m)",
            "topk(2, x)",
            "topk by (job) (2, x)",
            "bottomk by (job) (1, x)",
            "bottomk(100, x)",
            "topk((3), x)",
            "topk(0, x)",
            "topk(NaN, x)",
            "topk(scalar(g), x)",
            "quantile(0.5, x)",
            "quantile by (job) (0, x)",
            "quantile(0.9, rate(c_total[2m]))",
            "quantile(1.5, x)",
            "stddev by (job) (x)",
            "stdvar(x)",
            "stddev(g)",
            "sum(rate(c_total[2m]))",
            "sum by (i) (rate(c_total[2m]))",
            "avg by (i) (avg_over_time(g[2m]))",
            "max(max_over_time(rate(c_total[1m])[5m:30s]))",
            "topk(1, rate(c_total[2m]))",
            "sum(sum by (job) (x))",
            "sum by (job) (x) / on (job) count by (job) (x)",
            "max_over_time(sum by (job) (x)[5m:30s])",
            "sum(h)",
            "sum(rate(h[2m]))",
            "max(mixed)",
            "sum(mixed)",
            "topk(1, mixed)",
            "sum(x @ 600)",
        ];
        for q in queries {
            for (start, end, step) in [(0, 3_000_000, 30_000), (7_000, 2_000_000, 61_000), (600_000, 600_000, 1000)] {
                let (range, steps) = both(&m, q, start, end, step);
                assert_eq!(range, steps, "{q} from {start} to {end} every {step}");
            }
        }
    }
}
