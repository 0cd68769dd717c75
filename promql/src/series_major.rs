//! Series-at-a-time evaluation of range functions (`rate`, `increase`, `*_over_time`, …)
//! over plain matrix selectors.
//!
//! The evaluator runs a range query step by step. For a range function over a matrix
//! selector that would re-slice every selected series at every step; here each series is
//! walked once across all steps of the evaluation grid instead, with one window buffer
//! reused from step to step, and the results are kept per step for the step-by-step
//! evaluator to pick up (or turned into the result matrix directly when the range function
//! is the whole query). Prometheus evaluates these functions the same way. The per-window
//! arithmetic is [`crate::functions::apply_range_fn`], exactly what the step path runs, so
//! both paths give bit-identical results and the same annotations.

use std::sync::Arc;

use norn_model::{FloatHistogram, Labels};
use promql_parser::parser::{Call, Expr, MatrixSelector, SubqueryExpr};

use crate::engine::{EvalResult, Evaluator, QueryError, RangeArg, StepGrid, dur_ms, ext_mode, seek_le};
use crate::functions::{FH, apply_range_fn, counter_name_info, range_arg_index, range_fn_keeps_name, range_fn_scalars};
use crate::storage::{StoredSeries, StoredValue};
use crate::value::{Sample, Series, is_stale_nan};

/// Work (stored samples of the selected series × steps) from which a second thread takes half
/// the series. Measured on the shared 2-core build machine under load, two threads were no
/// faster than one for the benchmark's `rate` over 800 series × 480 samples × 221 steps
/// (85 M), so the bar is well above that; unit tests lower it to exercise the path.
const PARALLEL_MIN_WORK: usize = if cfg!(test) { 400_000 } else { 1_000_000_000 };

/// One output series of a range function: its labels and a value per grid step it has one for.
pub(crate) struct PreSeries {
    pub metric: Labels,
    pub drop_name: bool,
    /// `(step index, float, histogram)`, ascending by step.
    pub points: Vec<(u32, f64, Option<Arc<FloatHistogram>>)>,
}

/// Per-step results of a range-function call, handed out once each.
pub(crate) struct Precomputed {
    steps: Vec<Option<Vec<Sample>>>,
}

impl Precomputed {
    /// Results for every step of the grid, held (for the sample limit) until handed out.
    pub(crate) fn new(steps: Vec<Vec<Sample>>) -> Self {
        Precomputed { steps: steps.into_iter().map(Some).collect() }
    }

    /// No results: every step is evaluated the ordinary way (remembered so that the
    /// whole-grid attempt is not repeated at every step).
    pub(crate) fn declined() -> Self {
        Precomputed { steps: Vec::new() }
    }
}

/// Hands out step `k` of the node's precomputed results (`None`: evaluate step by step).
pub(crate) fn take(ev: &mut Evaluator<'_>, key: (usize, StepGrid), k: usize) -> Option<Vec<Sample>> {
    // A step asked for twice (not the usual pattern) is evaluated the ordinary way.
    let v = ev.precomputed.get_mut(&key).and_then(|p| p.steps.get_mut(k)).and_then(Option::take);
    if let Some(v) = &v {
        // Handed out: from here on the caller's step accounts for these samples.
        ev.held = ev.held.saturating_sub(v.len());
    }
    v
}

/// Per-step vectors of `series` on `grid`, in series order within each step (the order the
/// step path lists them in).
pub(crate) fn to_steps(series: Vec<PreSeries>, grid: StepGrid) -> Vec<Vec<Sample>> {
    let mut steps: Vec<Vec<Sample>> = (0..grid.len()).map(|_| Vec::new()).collect();
    for s in series {
        for (i, f, h) in s.points {
            steps[i as usize].push(Sample {
                metric: s.metric.clone(),
                t: grid.at(i as usize),
                f,
                h,
                drop_name: s.drop_name,
            });
        }
    }
    steps
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        e => e,
    }
}

/// The range argument of a range-function call this module can evaluate.
#[derive(Clone, Copy)]
pub(crate) enum RangeSource<'e> {
    /// A plain matrix selector (no `anchored`/`smoothed`).
    Selector(&'e MatrixSelector),
    /// A subquery.
    Subquery(&'e SubqueryExpr),
}

/// The range argument of `c` if this module can evaluate the call: a plain matrix selector
/// or a subquery, outside the histogram-statistics mode whose per-sample hints depend on
/// the caller.
pub(crate) fn eligible<'e>(ev: &Evaluator<'_>, c: &'e Call) -> Option<RangeSource<'e>> {
    if ev.stats_hints {
        return None;
    }
    let args = &c.args.args;
    let mi = range_arg_index(c.func.name);
    match unparen(args.get(mi)?) {
        Expr::MatrixSelector(ms) if ext_mode(&ms.vs).is_none() => Some(RangeSource::Selector(ms)),
        Expr::Subquery(sq) => Some(RangeSource::Subquery(sq)),
        _ => None,
    }
}

/// The result of `c` at `ts` when `ts` lies on the current evaluation grid and `c` is
/// eligible; computed for the whole grid on first use. `None` means: evaluate step by step.
pub(crate) fn lookup(ev: &mut Evaluator<'_>, c: &Call, ts: i64) -> EvalResult<Option<Vec<Sample>>> {
    let Some(grid) = ev.grid else { return Ok(None) };
    if grid.len() < 2 {
        // One step gains nothing over the step path.
        return Ok(None);
    }
    let Some(k) = grid.index(ts) else { return Ok(None) };
    let key = (c as *const Call as usize, grid);
    if !ev.precomputed.contains_key(&key) {
        let Some(src) = eligible(ev, c) else { return Ok(None) };
        let Some(series) = compute(ev, c, src, grid)? else { return Ok(None) };
        ev.precomputed.insert(key, Precomputed::new(to_steps(series, grid)));
    }
    Ok(take(ev, key, k))
}

/// Evaluates range function `c` over `src` at every step of `grid`, series by series.
/// `None` when the subquery's inner results cannot be kept for the whole grid (its outer
/// windows do not overlap, or it reaches the end of time): evaluate step by step then.
pub(crate) fn compute(
    ev: &mut Evaluator<'_>,
    c: &Call,
    src: RangeSource<'_>,
    grid: StepGrid,
) -> EvalResult<Option<Vec<PreSeries>>> {
    let name = c.func.name;
    let args: Vec<&Expr> = c.args.args.iter().map(|b| b.as_ref()).collect();
    let mi = range_arg_index(name);
    if let RangeSource::Subquery(sq) = src
        && grid.len() > 1
        && grid.step() > dur_ms(&sq.range)
    {
        return Ok(None);
    }
    // Scalar arguments may vary by step (`quantile_over_time(scalar(x), …)`).
    let mut scalars: Vec<Vec<f64>> = Vec::with_capacity(grid.len());
    for k in 0..grid.len() {
        scalars.push(range_fn_scalars(ev, name, &args, grid.at(k))?);
    }
    let arg_pos = ev.pos_cached(args[mi]);
    match src {
        RangeSource::Selector(ms) => {
            let range = dur_ms(&ms.range);
            ev.pending_func = Some(name.to_string());
            let selected = ev.select_range(ms)?;
            ev.pending_func = None;
            let vs = &ms.vs;
            // The window of every step: (lo, rt].
            let windows: Vec<(i64, i64)> = (0..grid.len())
                .map(|k| {
                    let rt = ev.ref_time(&vs.at, &vs.offset, grid.at(k));
                    (rt.saturating_sub(range), rt)
                })
                .collect();
            let job = Job { name, windows: &windows, scalars: &scalars, grid, range, arg_pos: &arg_pos };
            let sources: Vec<Source<'_>> = selected.iter().map(Source::Stored).collect();
            let (out, per_step) = job.run_maybe_parallel(ev, &sources)?;
            // What the step path would have loaded at each step, on top of what is held.
            for n in &per_step {
                ev.check_samples(*n)?;
            }
            hold(ev, &out)?;
            Ok(Some(out))
        }
        RangeSource::Subquery(sq) => {
            ev.pending_func = None;
            if let Some((series, windows, range)) = ev.subquery_whole(sq, grid)? {
                let job = Job { name, windows: &windows, scalars: &scalars, grid, range, arg_pos: &arg_pos };
                let sources: Vec<Source<'_>> = series.iter().map(Source::Computed).collect();
                let out = job.run_maybe_parallel(ev, &sources)?.0;
                hold(ev, &out)?;
                return Ok(Some(out));
            }
            // Fill the subquery's matrix step by step (each inner step is evaluated once, as
            // in the step path), then slide every outer window over it.
            ev.pending_func = None;
            let node = sq as *const SubqueryExpr as usize;
            let mut windows = Vec::with_capacity(grid.len());
            let (mut range, mut first) = (0, 0);
            let mut m = None;
            for k in 0..grid.len() {
                let f = ev.subquery_fill(sq, grid.at(k))?;
                windows.push((f.lo, f.rt));
                range = f.range;
                if k == 0 {
                    first = f.first;
                }
                if f.overflowed {
                    return Ok(None);
                }
                if k + 1 == grid.len() {
                    m = Some(f.matrix);
                } else {
                    ev.subq_cache_put(node, f.matrix);
                }
            }
            let Some(mut m) = m else { return Ok(None) };
            let covered = windows.last().is_some_and(|w| m.covers(first, w.1));
            let res = if covered {
                let job = Job { name, windows: &windows, scalars: &scalars, grid, range, arg_pos: &arg_pos };
                let sources: Vec<Source<'_>> = m.sorted_series().map(Source::Computed).collect();
                let out = job.run_maybe_parallel(ev, &sources)?.0;
                hold(ev, &out)?;
                Some(out)
            } else {
                None
            };
            ev.subq_cache_put(node, m);
            Ok(res)
        }
    }
}

/// Counts results computed for all steps as held until they are handed out.
fn hold(ev: &mut Evaluator<'_>, out: &[PreSeries]) -> EvalResult<()> {
    let n: usize = out.iter().map(|s| s.points.len()).sum();
    ev.held = ev.held.saturating_add(n);
    ev.check_samples(0)
}

fn clear(win: &mut Series) {
    win.floats.clear();
    win.histograms.clear();
    win.floats_st.clear();
    win.histograms_st.clear();
}

/// Appends the usable samples `from..to` of `s` (stale markers are not samples).
fn load(win: &mut Series, s: &StoredSeries, from: usize, to: usize) {
    let with_st = !s.st.is_empty();
    for i in from..to {
        match &s.values[i] {
            StoredValue::Float(f) => {
                if !is_stale_nan(*f) {
                    win.floats.push((s.ts[i], *f));
                    if with_st {
                        win.floats_st.push(s.st[i]);
                    }
                }
            }
            StoredValue::Histogram(h) => {
                win.histograms.push((s.ts[i], h.clone()));
                if with_st {
                    win.histograms_st.push(s.st[i]);
                }
            }
        }
    }
}

/// One input series of a range function.
#[derive(Clone, Copy)]
enum Source<'s> {
    /// From storage: stale markers are not samples.
    Stored(&'s Arc<StoredSeries>),
    /// A subquery's inner result.
    Computed(&'s Series),
}

/// The number of points in `pts` at or before `target`, searched forward from `hint`
/// (windows only move forward).
fn advance<T>(pts: &[(i64, T)], mut hint: usize, target: i64) -> usize {
    while hint < pts.len() && pts[hint].0 <= target {
        hint += 1;
    }
    hint
}

/// What every series of one [`compute`] shares.
struct Job<'j> {
    name: &'j str,
    windows: &'j [(i64, i64)],
    scalars: &'j [Vec<f64>],
    grid: StepGrid,
    range: i64,
    arg_pos: &'j str,
}

impl Job<'_> {
    /// [`Self::run`], on two threads when there is enough work.
    fn run_maybe_parallel(
        &self,
        ev: &mut Evaluator<'_>,
        sources: &[Source<'_>],
    ) -> EvalResult<(Vec<PreSeries>, Vec<usize>)> {
        let points = |s: &Source<'_>| match s {
            Source::Stored(s) => s.ts.len(),
            Source::Computed(s) => s.floats.len() + s.histograms.len(),
        };
        let total = sources.iter().map(points).sum::<usize>().saturating_mul(self.windows.len());
        let threads = if total >= PARALLEL_MIN_WORK && sources.len() >= 2 {
            std::thread::available_parallelism().map(|n| n.get().min(2)).unwrap_or(1)
        } else {
            1
        };
        if threads < 2 {
            return self.run(ev, sources);
        }
        let (a, b) = sources.split_at(sources.len() / 2);
        let mut side = ev.side_evaluator();
        let (ra, rb) = std::thread::scope(|scope| {
            let h = scope.spawn(|| self.run(&mut side, b));
            let ra = self.run(ev, a);
            (ra, h.join())
        });
        let rb = rb.map_err(|_| QueryError::Eval("range function evaluation thread failed".into()))?;
        ev.absorb(side);
        let (mut oa, mut pa) = ra?;
        let (ob, pb) = rb?;
        oa.extend(ob);
        for (x, y) in pa.iter_mut().zip(pb) {
            *x += y;
        }
        Ok((oa, pa))
    }

    /// The results for `sources`, and the window samples per step (for the sample limit).
    fn run(&self, ev: &mut Evaluator<'_>, sources: &[Source<'_>]) -> EvalResult<(Vec<PreSeries>, Vec<usize>)> {
        let keep_name = range_fn_keeps_name(self.name);
        let counter_fn = matches!(self.name, "rate" | "increase");
        let mut per_step = vec![0usize; self.grid.len()];
        let mut out = Vec::with_capacity(sources.len());
        let mut win = Series::default();
        for (n, src) in sources.iter().enumerate() {
            if n % 64 == 0 {
                ev.check_deadline()?;
            }
            let (labels, in_drop) = match src {
                Source::Stored(s) => (&s.labels, false),
                Source::Computed(s) => (&s.metric, s.drop_name),
            };
            let (metric, drop_name) = if keep_name {
                (labels.clone(), in_drop)
            } else {
                let mut smp = Sample { metric: labels.clone(), t: 0, f: 0.0, h: None, drop_name: in_drop };
                ev.mark_drop_name(&mut smp);
                (smp.metric, smp.drop_name)
            };
            win.metric = labels.clone();
            let metric_name = labels.get(norn_model::METRIC_NAME).unwrap_or("");
            win.drop_name = in_drop;
            // Window bounds: sample indexes for stored series, float and histogram indexes
            // for computed ones.
            let (mut a, mut b, mut ha, mut hb) = (0usize, 0usize, 0usize, 0usize);
            let mut points = Vec::new();
            let mut had_floats = false;
            clear(&mut win);
            for (k, &(lo, rt)) in self.windows.iter().enumerate() {
                match src {
                    Source::Stored(s) => {
                        // `win` holds the usable samples of `a..b`; consecutive windows
                        // overlap, so only the samples leaving and entering are touched.
                        let (na, nb) = (seek_le(&s.ts, a, lo), seek_le(&s.ts, b, rt));
                        if na >= b || na < a || nb < b {
                            clear(&mut win);
                            load(&mut win, s, na, nb);
                        } else {
                            let (mut df, mut dh) = (0, 0);
                            for v in &s.values[a..na] {
                                match v {
                                    StoredValue::Float(f) if is_stale_nan(*f) => {}
                                    StoredValue::Float(_) => df += 1,
                                    StoredValue::Histogram(_) => dh += 1,
                                }
                            }
                            win.floats.drain(..df);
                            win.histograms.drain(..dh);
                            if !s.st.is_empty() {
                                win.floats_st.drain(..df);
                                win.histograms_st.drain(..dh);
                            }
                            load(&mut win, s, b, nb);
                        }
                        (a, b) = (na, nb);
                    }
                    Source::Computed(s) => {
                        clear(&mut win);
                        a = advance(&s.floats, a, lo);
                        b = advance(&s.floats, b.max(a), rt);
                        ha = advance(&s.histograms, ha, lo);
                        hb = advance(&s.histograms, hb.max(ha), rt);
                        win.floats.extend_from_slice(&s.floats[a..b]);
                        win.histograms.extend_from_slice(&s.histograms[ha..hb]);
                    }
                }
                if win.floats.is_empty() && win.histograms.is_empty() {
                    continue;
                }
                if matches!(src, Source::Stored(_)) {
                    per_step[k] += win.floats.len() + win.histograms.len();
                }
                had_floats |= !win.floats.is_empty();
                let r = RangeArg { series: Vec::new(), range_start: lo, range_end: rt, range: self.range, ext: None };
                let res: Option<FH> = apply_range_fn(
                    ev,
                    self.name,
                    &win,
                    metric_name,
                    &r,
                    &self.scalars[k],
                    self.grid.at(k),
                    self.arg_pos,
                )?;
                if let Some((f, h)) = res {
                    points.push((k as u32, f, h.map(Arc::new)));
                }
            }
            if counter_fn && had_floats {
                counter_name_info(ev, labels, self.arg_pos);
            }
            if !points.is_empty() {
                out.push(PreSeries { metric: metric.clone(), drop_name, points });
            }
        }
        Ok((out, per_step))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::conformance::script::parse_histogram;
    use crate::engine::{Engine, StepGrid};
    use crate::storage::{MemStorage, StoredValue};
    use crate::value::{Value, stale_nan};
    use norn_model::Labels;
    use std::sync::Arc;

    /// Counters with resets and a staleness marker, a gauge with gaps and NaN, a series with
    /// start timestamps, and native histograms (one series mixing in floats).
    pub(crate) fn storage(series: usize, samples: i64) -> MemStorage {
        let mut m = MemStorage::new();
        for i in 0..series {
            let l = Labels::from_pairs([("__name__", "c_total"), ("i", &i.to_string())]);
            m.append(
                &l,
                (0..samples).map(|k| {
                    let v = if k == samples / 2 { stale_nan() } else { ((k * 7 + i as i64) % 50) as f64 };
                    (k * 15_000 + i as i64 * 1000, StoredValue::Float(v))
                }),
            );
            let g = Labels::from_pairs([("__name__", "g"), ("i", &i.to_string())]);
            m.append(
                &g,
                (0..samples).filter(|k| k % 9 != 4).map(|k| {
                    let v = if k % 31 == 7 { f64::NAN } else { ((k * 13 + i as i64) % 17) as f64 - 8.0 };
                    (k * 15_000 + 500, StoredValue::Float(v))
                }),
            );
        }
        let st = Labels::from_pairs([("__name__", "st_total")]);
        m.append_with_st(
            &st,
            (0..samples).map(|k| (k * 15_000, StoredValue::Float((k % 10) as f64), k / 10 * 150_000)),
        );
        let (h1, _) = parse_histogram("schema:0 count:4 sum:10 buckets:[1 2 1]").unwrap();
        let (h2, _) = parse_histogram("schema:0 count:9 sum:20 buckets:[2 4 3]").unwrap();
        let h = Labels::from_pairs([("__name__", "h")]);
        m.append(
            &h,
            (0..samples).map(|k| {
                (k * 15_000, StoredValue::Histogram(Arc::new(if k % 3 == 0 { h1.clone() } else { h2.clone() })))
            }),
        );
        let mixed = Labels::from_pairs([("__name__", "mixed")]);
        m.append(
            &mixed,
            (0..samples).map(|k| {
                let v = if k % 5 == 0 {
                    StoredValue::Float(k as f64)
                } else {
                    StoredValue::Histogram(Arc::new(h1.clone()))
                };
                (k * 15_000, v)
            }),
        );
        m
    }

    /// The range query's result and annotations, and the same assembled from instant
    /// queries at each step (which evaluate step by step).
    pub(crate) fn both(m: &MemStorage, q: &str, start: i64, end: i64, step: i64) -> (String, String) {
        let e = Engine::default();
        let r = e.range_query(m, q, start, end, step);
        let got = match r.value {
            Ok(Value::Matrix(mx)) => {
                let mut pts: Vec<String> = Vec::new();
                for s in mx {
                    for (t, f) in s.floats {
                        pts.push(format!("{} {t} {:?}", s.metric, f.to_bits()));
                    }
                    for (t, h) in s.histograms {
                        pts.push(format!("{} {t} {}", s.metric, crate::value::format_histogram(&h)));
                    }
                }
                pts.sort();
                format!("{pts:?} {:?} {:?}", r.warnings, r.infos)
            }
            other => format!("{other:?}"),
        };
        let (mut pts, mut warns, mut infos) = (Vec::new(), Vec::new(), Vec::new());
        let mut t = start;
        while t <= end {
            let r = e.instant_query(m, q, t);
            match r.value {
                Ok(Value::Vector(v)) => {
                    for s in v {
                        match s.h {
                            Some(h) => pts.push(format!("{} {t} {}", s.metric, crate::value::format_histogram(&h))),
                            None => pts.push(format!("{} {t} {:?}", s.metric, s.f.to_bits())),
                        }
                    }
                }
                Ok(Value::Scalar(f)) => pts.push(format!("{{}} {t} {:?}", f.to_bits())),
                other => return (got, format!("{other:?}")),
            }
            warns.extend(r.warnings);
            infos.extend(r.infos);
            t += step;
        }
        pts.sort();
        for v in [&mut warns, &mut infos] {
            v.sort();
            v.dedup();
        }
        (got, format!("{pts:?} {warns:?} {infos:?}"))
    }

    #[test]
    fn series_major_agrees_with_step_by_step() {
        let m = storage(3, 200);
        let queries = [
            "c_total",
            "g offset 1m",
            "c_total @ 600",
            "h",
            "mixed",
            "(st_total)",
            "rate(c_total[2m])",
            "increase(c_total[5m])",
            "delta(g[3m])",
            "irate(c_total[1m])",
            "idelta(g[1m])",
            "deriv(g[4m])",
            "predict_linear(g[4m], 60)",
            "changes(g[5m])",
            "resets(c_total[5m])",
            "count_over_time(g[1m])",
            "sum_over_time(g[2m])",
            "avg_over_time(g[2m])",
            "min_over_time(g[2m])",
            "max_over_time(g[2m])",
            "stddev_over_time(g[3m])",
            "stdvar_over_time(g[3m])",
            "quantile_over_time(0.3, g[3m])",
            "quantile_over_time(1.5, g[3m])",
            "mad_over_time(g[3m])",
            "last_over_time(g[1m])",
            "first_over_time(g[1m])",
            "present_over_time(g[1m])",
            "ts_of_max_over_time(g[2m])",
            "ts_of_last_over_time(g[2m])",
            "double_exponential_smoothing(g[5m], 0.5, 0.5)",
            "rate(g[2m])",
            "rate(st_total[3m])",
            "irate(st_total[3m])",
            "resets(st_total[3m])",
            "rate(h[2m])",
            "sum_over_time(h[2m])",
            "rate(mixed[2m])",
            "max_over_time(mixed[2m])",
            "rate(c_total[2m] offset 1m)",
            "rate(c_total[2m] @ 600)",
            "sum(rate(c_total[2m]))",
            "rate(c_total[2m]) / on (i) avg_over_time(g[2m])",
            "max_over_time(rate(c_total[1m])[5m:30s])",
            "max_over_time(rate(c_total[1m])[5m:45s] offset 20s)",
            "sum_over_time(deriv(g[2m])[3m:])",
            "max_over_time(g[1m:15s])",
            "max_over_time(max_over_time(g[2m:30s])[4m:1m])",
            "last_over_time((-g)[2m:30s])",
            "count_over_time((-g)[2m:30s])",
            "rate(h[2m:15s])",
            "quantile_over_time(0.5, rate(c_total[1m])[4m:20s] @ 900)",
        ];
        for q in queries {
            for (start, end, step) in [(0, 3_000_000, 30_000), (7_000, 2_000_000, 61_000), (600_000, 600_000, 1000)] {
                let (range, steps) = both(&m, q, start, end, step);
                assert_eq!(range, steps, "{q} from {start} to {end} every {step}");
            }
        }
    }

    #[test]
    fn parallel_evaluation_agrees_with_step_by_step() {
        // Enough samples × steps to take the two-thread path.
        let m = storage(8, 1500);
        for q in ["rate(c_total[5m])", "sum by (i) (avg_over_time(g[10m]))", "rate(h[5m])"] {
            let (range, steps) = both(&m, q, 0, 20_000_000, 60_000);
            assert_eq!(range, steps, "{q}");
        }
    }

    #[test]
    fn sample_limit_counts_the_peak_held() {
        let m = storage(3, 200);
        let (start, end, step) = (600_000, 1_200_000, 30_000);
        // 21 steps × 3 series; each step's 2m window holds 8 samples of each counter.
        let cases = [
            // The result of 63 points is held at the end.
            ("rate(c_total[2m])", 62, false),
            ("rate(c_total[2m])", 63, true),
            // Step by step (a selector, a binary operation) the result accumulates just the same.
            ("c_total", 62, false),
            ("c_total", 63, true),
            ("-rate(c_total[2m])", 62, false),
            ("-rate(c_total[2m])", 63, true),
            // A subquery's matrix (3 series × 28 inner steps) is held as well as the result.
            ("max_over_time(c_total[4m:30s])", 63 + 83, false),
            ("max_over_time(c_total[4m:30s])", 63 + 84, true),
        ];
        for (q, limit, ok) in cases {
            let mut e = Engine::default();
            e.opts.max_samples = limit;
            let r = e.range_query(&m, q, start, end, step);
            assert_eq!(r.value.is_ok(), ok, "{q} with limit {limit}: {:?}", r.value.err());
        }
        // An instant query loads 24 samples for the windows at its one step.
        let mut e = Engine::default();
        e.opts.max_samples = 23;
        assert!(e.instant_query(&m, "rate(c_total[2m])", end).value.is_err());
        e.opts.max_samples = 24;
        assert!(e.instant_query(&m, "rate(c_total[2m])", end).value.is_ok());
    }

    #[test]
    fn step_grid() {
        let g = StepGrid::new(10, 100, 30).unwrap();
        assert_eq!((g.len(), g.at(0), g.at(3)), (4, 10, 100));
        let g = StepGrid::new(10, 99, 30).unwrap();
        assert_eq!(g.len(), 3);
        let cases = [(10, Some(0)), (40, Some(1)), (70, Some(2)), (100, None), (39, None), (9, None), (-20, None)];
        for (ts, want) in cases {
            assert_eq!(g.index(ts), want, "{ts}");
        }
        assert!(StepGrid::new(10, 9, 1).is_none());
        assert!(StepGrid::new(0, 10, 0).is_none());
        assert!(StepGrid::new(i64::MIN, i64::MAX, 1).is_none());
    }
}
