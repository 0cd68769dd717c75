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
use promql_parser::parser::{Call, Expr, MatrixSelector};

use crate::engine::{EvalResult, Evaluator, QueryError, RangeArg, StepGrid, dur_ms, ext_mode, seek_le};
use crate::functions::{FH, apply_range_fn, counter_name_info, range_arg_index, range_fn_keeps_name, range_fn_scalars};
use crate::storage::{StoredSeries, StoredValue};
use crate::value::{Sample, Series, is_stale_nan};

/// Below this many window samples (all series, all steps) a second thread costs more than it saves.
const PARALLEL_MIN_SAMPLES: usize = 400_000;

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

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        e => e,
    }
}

/// The matrix selector of a range-function call this module can evaluate: a plain one
/// (no `anchored`/`smoothed`), outside the histogram-statistics mode whose per-sample
/// hints depend on the caller.
pub(crate) fn eligible<'e>(ev: &Evaluator<'_>, c: &'e Call) -> Option<&'e MatrixSelector> {
    if ev.stats_hints {
        return None;
    }
    let args = &c.args.args;
    let mi = range_arg_index(c.func.name);
    let Expr::MatrixSelector(ms) = unparen(args.get(mi)?) else { return None };
    if ext_mode(&ms.vs).is_some() {
        return None;
    }
    Some(ms)
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
        let Some(ms) = eligible(ev, c) else { return Ok(None) };
        let series = compute(ev, c, ms, grid)?;
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
        ev.precomputed.insert(key, Precomputed { steps: steps.into_iter().map(Some).collect() });
    }
    // A step asked for twice (not the usual pattern) is evaluated the ordinary way.
    Ok(ev.precomputed.get_mut(&key).and_then(|p| p.steps.get_mut(k)).and_then(Option::take))
}

/// Evaluates range function `c` over matrix selector `ms` at every step of `grid`, series
/// by series.
pub(crate) fn compute(
    ev: &mut Evaluator<'_>,
    c: &Call,
    ms: &MatrixSelector,
    grid: StepGrid,
) -> EvalResult<Vec<PreSeries>> {
    let name = c.func.name;
    let args: Vec<&Expr> = c.args.args.iter().map(|b| b.as_ref()).collect();
    let mi = range_arg_index(name);
    // Scalar arguments may vary by step (`quantile_over_time(scalar(x), …)`).
    let mut scalars: Vec<Vec<f64>> = Vec::with_capacity(grid.len());
    for k in 0..grid.len() {
        scalars.push(range_fn_scalars(ev, name, &args, grid.at(k))?);
    }
    let arg_pos = ev.pos_cached(args[mi]);
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
    let total: usize = selected.iter().map(|s| s.ts.len()).sum::<usize>().saturating_mul(grid.len());
    let threads = if total >= PARALLEL_MIN_SAMPLES && selected.len() >= 2 {
        std::thread::available_parallelism().map(|n| n.get().min(2)).unwrap_or(1)
    } else {
        1
    };
    let (out, per_step) = if threads > 1 {
        let mid = selected.len() / 2;
        let (a, b) = selected.split_at(mid);
        let mut side = ev.side_evaluator();
        let (ra, rb) = std::thread::scope(|scope| {
            let h = scope.spawn(|| job.run(&mut side, b));
            let ra = job.run(ev, a);
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
        (oa, pa)
    } else {
        job.run(ev, &selected)?
    };
    // As in the step path: no step may hold more samples than the limit.
    if per_step.iter().any(|n| *n > ev.opts.max_samples) {
        return Err(QueryError::TooManySamples);
    }
    Ok(out)
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
    /// The results for `series`, and the window samples per step (for the sample limit).
    fn run(&self, ev: &mut Evaluator<'_>, series: &[Arc<StoredSeries>]) -> EvalResult<(Vec<PreSeries>, Vec<usize>)> {
        let keep_name = range_fn_keeps_name(self.name);
        let counter_fn = matches!(self.name, "rate" | "increase");
        let mut per_step = vec![0usize; self.grid.len()];
        let mut out = Vec::with_capacity(series.len());
        let mut win = Series::default();
        for (n, s) in series.iter().enumerate() {
            if n % 64 == 0 {
                ev.check_deadline()?;
            }
            let (metric, drop_name) = if keep_name {
                (s.labels.clone(), false)
            } else {
                let mut smp = Sample { metric: s.labels.clone(), t: 0, f: 0.0, h: None, drop_name: false };
                ev.mark_drop_name(&mut smp);
                (smp.metric, smp.drop_name)
            };
            win.metric = s.labels.clone();
            let with_st = !s.st.is_empty();
            let (mut a, mut b) = (0usize, 0usize);
            let mut points = Vec::new();
            let mut had_floats = false;
            for (k, &(lo, rt)) in self.windows.iter().enumerate() {
                a = seek_le(&s.ts, a, lo);
                b = seek_le(&s.ts, b, rt);
                if a >= b {
                    continue;
                }
                win.floats.clear();
                win.histograms.clear();
                win.floats_st.clear();
                win.histograms_st.clear();
                for i in a..b {
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
                if win.floats.is_empty() && win.histograms.is_empty() {
                    continue;
                }
                per_step[k] += win.floats.len() + win.histograms.len();
                had_floats |= !win.floats.is_empty();
                let r = RangeArg { series: Vec::new(), range_start: lo, range_end: rt, range: self.range, ext: None };
                let res: Option<FH> =
                    apply_range_fn(ev, self.name, &win, &r, &self.scalars[k], self.grid.at(k), self.arg_pos)?;
                if let Some((f, h)) = res {
                    points.push((k as u32, f, h.map(Arc::new)));
                }
            }
            if counter_fn && had_floats {
                counter_name_info(ev, &s.labels, self.arg_pos);
            }
            if !points.is_empty() {
                out.push(PreSeries { metric: metric.clone(), drop_name, points });
            }
        }
        Ok((out, per_step))
    }
}
