//! Float native-histogram arithmetic used by the engine: addition with schema and
//! zero-bucket reconciliation, scaling, counter-reset detection, compaction, quantiles.

use std::collections::BTreeMap;

use norn_model::histogram::CUSTOM_BUCKETS_SCHEMA;
use norn_model::{CounterResetHint, FloatHistogram, Span};

/// Whether `h` uses custom bucket bounds (NHCB).
pub fn uses_custom(h: &FloatHistogram) -> bool {
    h.schema == CUSTOM_BUCKETS_SCHEMA
}

/// Bucket index → count for one side.
pub fn to_map(spans: &[Span], buckets: &[f64]) -> BTreeMap<i32, f64> {
    let mut m = BTreeMap::new();
    let mut idx: i32 = 0;
    let mut k = 0usize;
    for (i, s) in spans.iter().enumerate() {
        idx = if i == 0 { s.offset } else { idx.saturating_add(s.offset) };
        for _ in 0..s.length {
            if let Some(v) = buckets.get(k) {
                *m.entry(idx).or_insert(0.0) += *v;
            }
            k += 1;
            idx = idx.saturating_add(1);
        }
    }
    m
}

/// Spans and buckets from a map, leaving out zero buckets.
pub fn from_map(m: &BTreeMap<i32, f64>) -> (Vec<Span>, Vec<f64>) {
    let mut spans: Vec<Span> = Vec::new();
    let mut buckets = Vec::new();
    let mut next: Option<i32> = None;
    for (&i, &v) in m {
        if v == 0.0 {
            continue;
        }
        match next {
            Some(n) if n == i => spans.last_mut().expect("span exists").length += 1,
            Some(n) => spans.push(Span { offset: i - n, length: 1 }),
            None => spans.push(Span { offset: i, length: 1 }),
        }
        buckets.push(v);
        next = Some(i + 1);
    }
    (spans, buckets)
}

/// Index in `target` schema of bucket `idx` in `origin` schema (target < origin).
fn target_idx(idx: i32, origin: i32, target: i32) -> i32 {
    ((idx - 1) >> (origin - target)) + 1
}

fn reduce_map(m: &BTreeMap<i32, f64>, origin: i32, target: i32) -> BTreeMap<i32, f64> {
    if origin <= target || origin == CUSTOM_BUCKETS_SCHEMA {
        return m.clone();
    }
    let mut out = BTreeMap::new();
    for (&i, &v) in m {
        *out.entry(target_idx(i, origin, target)).or_insert(0.0) += v;
    }
    out
}

/// A copy of `h` at a lower (coarser) schema.
pub fn to_schema(h: &FloatHistogram, target: i32) -> FloatHistogram {
    if uses_custom(h) || h.schema <= target {
        return h.clone();
    }
    let mut n = h.clone();
    let (ps, pb) = from_map(&reduce_map(&to_map(&h.positive_spans, &h.positive_buckets), h.schema, target));
    let (ns, nb) = from_map(&reduce_map(&to_map(&h.negative_spans, &h.negative_buckets), h.schema, target));
    n.schema = target;
    n.positive_spans = ps;
    n.positive_buckets = pb;
    n.negative_spans = ns;
    n.negative_buckets = nb;
    n
}

/// Upper bound of exponential bucket `idx` at `schema`, bit-exact with Prometheus (see
/// [`crate::bounds`]).
pub fn exp_upper(idx: i32, schema: i32) -> f64 {
    crate::bounds::exponential_upper_bound(idx, schema)
}

/// Removes empty buckets (a canonical form for comparisons).
pub fn compact(h: &mut FloatHistogram) {
    let (ps, pb) = from_map(&to_map(&h.positive_spans, &h.positive_buckets));
    let (ns, nb) = from_map(&to_map(&h.negative_spans, &h.negative_buckets));
    h.positive_spans = ps;
    h.positive_buckets = pb;
    h.negative_spans = ns;
    h.negative_buckets = nb;
}

/// Multiplies every count and the sum by `f`.
pub fn scale(h: &mut FloatHistogram, f: f64) {
    if f < 0.0 {
        h.counter_reset_hint = CounterResetHint::Gauge;
    }
    h.count *= f;
    h.sum *= f;
    h.zero_count *= f;
    for b in h.positive_buckets.iter_mut().chain(h.negative_buckets.iter_mut()) {
        *b *= f;
    }
}

/// Divides every count and the sum by `f`.
pub fn div(h: &mut FloatHistogram, f: f64) {
    if f == 0.0 {
        // Division by zero leaves no meaningful buckets, only the totals.
        h.count /= f;
        h.sum /= f;
        h.zero_count /= f;
        h.positive_spans.clear();
        h.positive_buckets.clear();
        h.negative_spans.clear();
        h.negative_buckets.clear();
        return;
    }
    h.count /= f;
    h.sum /= f;
    h.zero_count /= f;
    for b in h.positive_buckets.iter_mut().chain(h.negative_buckets.iter_mut()) {
        *b /= f;
    }
}

/// Error text for incompatible bucket layouts.
pub const MIXED_SCHEMAS: &str = "vector contains a mix of histograms with exponential and custom buckets schemas";

/// `a + b`, or an error when one uses custom buckets and the other does not or the
/// custom bounds differ.
pub fn add(a: &FloatHistogram, b: &FloatHistogram) -> Result<FloatHistogram, String> {
    combine(a, b, 1.0)
}

/// `a - b`.
pub fn sub(a: &FloatHistogram, b: &FloatHistogram) -> Result<FloatHistogram, String> {
    combine(a, b, -1.0)
}

/// The counter-reset hint of `a ± b`, and whether a reset met a non-reset (a conflict).
pub fn combined_hint(a: CounterResetHint, b: CounterResetHint, sign: f64) -> (CounterResetHint, bool) {
    use CounterResetHint as C;
    let (h, conflict) = match (a, b) {
        (x, y) if x == y => (x, false),
        (C::Gauge, _) | (_, C::Gauge) => (C::Gauge, false),
        (C::Unknown, _) | (_, C::Unknown) => (C::Unknown, false),
        _ => (C::Unknown, true),
    };
    // A difference is a gauge whatever its inputs were.
    if sign < 0.0 { (C::Gauge, conflict) } else { (h, conflict) }
}

/// Whether adding `a` and `b` mixes a counter reset with a non-reset.
pub fn hint_conflict(a: &FloatHistogram, b: &FloatHistogram) -> bool {
    combined_hint(a.counter_reset_hint, b.counter_reset_hint, 1.0).1
}

/// A histogram with the layout parameters of `h` and nothing in it.
pub fn empty_like(h: &FloatHistogram) -> FloatHistogram {
    FloatHistogram {
        counter_reset_hint: h.counter_reset_hint,
        schema: h.schema,
        zero_threshold: h.zero_threshold,
        custom_values: h.custom_values.clone(),
        ..Default::default()
    }
}

/// Kahan-compensated running sum of histograms (Prometheus sums histograms this way).
#[derive(Debug, Clone)]
pub struct KahanSum {
    sum: FloatHistogram,
    comp: FloatHistogram,
    /// A reset met a non-reset while adding.
    pub conflict: bool,
    saw_reset: bool,
    saw_not_reset: bool,
}

impl KahanSum {
    /// Starts with `h`.
    pub fn new(h: &FloatHistogram) -> Self {
        let comp = empty_like(h);
        KahanSum {
            sum: h.clone(),
            comp,
            conflict: false,
            saw_reset: h.counter_reset_hint == CounterResetHint::CounterReset,
            saw_not_reset: h.counter_reset_hint == CounterResetHint::NotCounterReset,
        }
    }

    /// Adds `h`; fails on incompatible bucket layouts.
    pub fn add(&mut self, h: &FloatHistogram) -> Result<(), String> {
        // A reset and a non-reset anywhere among the inputs conflict, even with gauges or
        // unknowns in between.
        self.saw_reset |= h.counter_reset_hint == CounterResetHint::CounterReset;
        self.saw_not_reset |= h.counter_reset_hint == CounterResetHint::NotCounterReset;
        if self.saw_reset && self.saw_not_reset {
            self.conflict = true;
        }
        let hint = combined_hint(self.sum.counter_reset_hint, h.counter_reset_hint, 1.0).0;
        // Bring all three onto one layout, then add field by field with compensation.
        let zero = empty_like(h);
        let s = add(&self.sum, &zero)?;
        let c = add(&self.comp, &zero)?;
        let s = add(&s, &empty_like(&c))?;
        let layout_h = add(h, &empty_like(&s))?;
        let c = add(&c, &empty_like(&s))?;
        let mut ns = s.clone();
        let mut nc = c.clone();
        let kahan = |v: f64, sum: &mut f64, comp: &mut f64| {
            let (t, cc) = crate::aggregate::kahan_inc(v, *sum, *comp);
            *sum = t;
            *comp = cc;
        };
        kahan(layout_h.count, &mut ns.count, &mut nc.count);
        kahan(layout_h.sum, &mut ns.sum, &mut nc.sum);
        kahan(layout_h.zero_count, &mut ns.zero_count, &mut nc.zero_count);
        let mut sp = to_map(&ns.positive_spans, &ns.positive_buckets);
        let mut cp = to_map(&nc.positive_spans, &nc.positive_buckets);
        for (i, v) in to_map(&layout_h.positive_spans, &layout_h.positive_buckets) {
            let (mut a, mut b) = (sp.get(&i).copied().unwrap_or(0.0), cp.get(&i).copied().unwrap_or(0.0));
            kahan(v, &mut a, &mut b);
            sp.insert(i, a);
            cp.insert(i, b);
        }
        let mut sn = to_map(&ns.negative_spans, &ns.negative_buckets);
        let mut cn = to_map(&nc.negative_spans, &nc.negative_buckets);
        for (i, v) in to_map(&layout_h.negative_spans, &layout_h.negative_buckets) {
            let (mut a, mut b) = (sn.get(&i).copied().unwrap_or(0.0), cn.get(&i).copied().unwrap_or(0.0));
            kahan(v, &mut a, &mut b);
            sn.insert(i, a);
            cn.insert(i, b);
        }
        (ns.positive_spans, ns.positive_buckets) = from_map(&sp);
        (ns.negative_spans, ns.negative_buckets) = from_map(&sn);
        (nc.positive_spans, nc.positive_buckets) = from_map(&cp);
        (nc.negative_spans, nc.negative_buckets) = from_map(&cn);
        ns.counter_reset_hint = hint;
        self.sum = ns;
        self.comp = nc;
        Ok(())
    }

    /// The compensated total.
    pub fn total(&self) -> FloatHistogram {
        let hint = self.sum.counter_reset_hint;
        let mut t = add(&self.sum, &self.comp).unwrap_or_else(|_| self.sum.clone());
        t.counter_reset_hint = hint;
        t
    }
}

/// Mean of `hs` given their sum; when the sum overflowed, each input is divided first.
pub fn mean(hs: &[&FloatHistogram], mut total: FloatHistogram) -> FloatHistogram {
    let n = hs.len() as f64;
    let overflow = |h: &FloatHistogram| {
        !h.count.is_finite()
            || !h.sum.is_finite()
            || h.positive_buckets.iter().chain(h.negative_buckets.iter()).any(|v| !v.is_finite())
    };
    if overflow(&total) && !hs.iter().any(|h| overflow(h)) {
        let mut first = hs[0].clone();
        div(&mut first, n);
        let mut k = KahanSum::new(&first);
        for h in &hs[1..] {
            let mut x = (*h).clone();
            div(&mut x, n);
            if k.add(&x).is_err() {
                break;
            }
        }
        let hint = total.counter_reset_hint;
        total = k.total();
        total.counter_reset_hint = hint;
        return total;
    }
    div(&mut total, n);
    total
}

fn combine(a: &FloatHistogram, b: &FloatHistogram, sign: f64) -> Result<FloatHistogram, String> {
    if uses_custom(a) != uses_custom(b) {
        return Err(MIXED_SCHEMAS.into());
    }
    if uses_custom(a) {
        if a.custom_values != b.custom_values {
            let (ra, rb) = reconcile_custom(a, b);
            return combine(&ra, &rb, sign);
        }
        let mut pa = to_map(&a.positive_spans, &a.positive_buckets);
        for (i, v) in to_map(&b.positive_spans, &b.positive_buckets) {
            *pa.entry(i).or_insert(0.0) += sign * v;
        }
        let mut n = a.clone();
        n.count += sign * b.count;
        n.sum += sign * b.sum;
        let (ps, pb) = from_map(&pa);
        n.positive_spans = ps;
        n.positive_buckets = pb;
        n.counter_reset_hint = combined_hint(a.counter_reset_hint, b.counter_reset_hint, sign).0;
        return Ok(n);
    }
    let schema = a.schema.min(b.schema);
    let zt = a.zero_threshold.max(b.zero_threshold);
    let mut pos = reduce_map(&to_map(&a.positive_spans, &a.positive_buckets), a.schema, schema);
    let mut neg = reduce_map(&to_map(&a.negative_spans, &a.negative_buckets), a.schema, schema);
    for (i, v) in reduce_map(&to_map(&b.positive_spans, &b.positive_buckets), b.schema, schema) {
        *pos.entry(i).or_insert(0.0) += sign * v;
    }
    for (i, v) in reduce_map(&to_map(&b.negative_spans, &b.negative_buckets), b.schema, schema) {
        *neg.entry(i).or_insert(0.0) += sign * v;
    }
    let mut zero = a.zero_count + sign * b.zero_count;
    // Buckets entirely inside the widened zero bucket are merged into it.
    if zt > 0.0 {
        let inside: Vec<i32> = pos.keys().copied().filter(|i| exp_upper(*i, schema) <= zt).collect();
        for i in inside {
            zero += pos.remove(&i).unwrap_or(0.0);
        }
        let inside: Vec<i32> = neg.keys().copied().filter(|i| exp_upper(*i, schema) <= zt).collect();
        for i in inside {
            zero += neg.remove(&i).unwrap_or(0.0);
        }
    }
    let (ps, pb) = from_map(&pos);
    let (ns, nb) = from_map(&neg);
    Ok(FloatHistogram {
        counter_reset_hint: combined_hint(a.counter_reset_hint, b.counter_reset_hint, sign).0,
        schema,
        zero_threshold: zt,
        zero_count: zero,
        count: a.count + sign * b.count,
        sum: a.sum + sign * b.sum,
        positive_spans: ps,
        negative_spans: ns,
        positive_buckets: pb,
        negative_buckets: nb,
        custom_values: vec![],
    })
}

/// Both histograms re-bucketed onto the bounds they have in common (custom buckets only).
pub fn reconcile_custom(a: &FloatHistogram, b: &FloatHistogram) -> (FloatHistogram, FloatHistogram) {
    let common: Vec<f64> = a.custom_values.iter().copied().filter(|v| b.custom_values.contains(v)).collect();
    let remap = |h: &FloatHistogram| {
        let mut m = BTreeMap::new();
        for (i, v) in to_map(&h.positive_spans, &h.positive_buckets) {
            let upper = h.custom_values.get(i as usize).copied().unwrap_or(f64::INFINITY);
            let ni = common.partition_point(|c| *c < upper) as i32;
            *m.entry(ni).or_insert(0.0) += v;
        }
        let mut n = h.clone();
        let (s, bk) = from_map(&m);
        n.positive_spans = s;
        n.positive_buckets = bk;
        n.custom_values = common.clone();
        n
    };
    (remap(a), remap(b))
}

/// Whether two custom-bucket histograms have different bounds (results get an info).
pub fn custom_mismatch(a: &FloatHistogram, b: &FloatHistogram) -> bool {
    uses_custom(a) && uses_custom(b) && a.custom_values != b.custom_values
}

/// Exact equality after compaction (Prometheus's `FloatHistogram.Equals`).
pub fn equals(a: &FloatHistogram, b: &FloatHistogram) -> bool {
    let eqf = |x: f64, y: f64| x == y || (x.is_nan() && y.is_nan());
    a.schema == b.schema
        && eqf(a.zero_threshold, b.zero_threshold)
        && eqf(a.zero_count, b.zero_count)
        && eqf(a.count, b.count)
        && eqf(a.sum, b.sum)
        && a.custom_values == b.custom_values
        && to_map(&a.positive_spans, &a.positive_buckets).into_iter().filter(|(_, v)| *v != 0.0).collect::<Vec<_>>()
            == to_map(&b.positive_spans, &b.positive_buckets).into_iter().filter(|(_, v)| *v != 0.0).collect::<Vec<_>>()
        && to_map(&a.negative_spans, &a.negative_buckets).into_iter().filter(|(_, v)| *v != 0.0).collect::<Vec<_>>()
            == to_map(&b.negative_spans, &b.negative_buckets).into_iter().filter(|(_, v)| *v != 0.0).collect::<Vec<_>>()
}

/// Whether `cur` follows a counter reset relative to `prev`.
pub fn detect_reset(cur: &FloatHistogram, prev: &FloatHistogram) -> bool {
    // The same stored sample seen twice (e.g. by consecutive subquery steps) is no reset.
    if std::ptr::eq(cur, prev) {
        return false;
    }
    // A stored "not reset" hint only speaks about the sample stored right before this
    // one, which need not be `prev` (subqueries, merged series), so detect explicitly.
    if cur.counter_reset_hint == CounterResetHint::CounterReset {
        return true;
    }
    if cur.count < prev.count {
        return true;
    }
    if uses_custom(cur) != uses_custom(prev) {
        return true;
    }
    if custom_mismatch(cur, prev) {
        let (c, p) = reconcile_custom(cur, prev);
        return detect_reset(&c, &p);
    }
    if cur.schema > prev.schema {
        return true;
    }
    if cur.zero_threshold < prev.zero_threshold {
        return true;
    }
    if cur.zero_threshold == prev.zero_threshold && cur.zero_count < prev.zero_count {
        return true;
    }
    let schema = cur.schema.min(prev.schema);
    for (cs, cb, ps, pb) in [
        (&cur.positive_spans, &cur.positive_buckets, &prev.positive_spans, &prev.positive_buckets),
        (&cur.negative_spans, &cur.negative_buckets, &prev.negative_spans, &prev.negative_buckets),
    ] {
        let c = reduce_map(&to_map(cs, cb), cur.schema, schema);
        let p = reduce_map(&to_map(ps, pb), prev.schema, schema);
        for (i, v) in &p {
            if *v > 0.0 && c.get(i).copied().unwrap_or(0.0) < *v {
                return true;
            }
        }
    }
    false
}

/// One bucket with bounds, for iteration in ascending value order.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub lower: f64,
    pub upper: f64,
    pub count: f64,
    /// Whether the lower bound is included (only the zero bucket and negative buckets).
    pub lower_inclusive: bool,
    pub upper_inclusive: bool,
}

/// All buckets (negative, zero, positive) in ascending order.
pub fn buckets(h: &FloatHistogram) -> Vec<Bucket> {
    let mut out = Vec::new();
    if uses_custom(h) {
        for (i, v) in to_map(&h.positive_spans, &h.positive_buckets) {
            let iu = i as usize;
            let lower =
                if i == 0 { f64::NEG_INFINITY } else { h.custom_values.get(iu - 1).copied().unwrap_or(f64::INFINITY) };
            let upper = h.custom_values.get(iu).copied().unwrap_or(f64::INFINITY);
            out.push(Bucket { lower, upper, count: v, lower_inclusive: false, upper_inclusive: true });
        }
        return out;
    }
    let neg = to_map(&h.negative_spans, &h.negative_buckets);
    for (&i, &v) in neg.iter().rev() {
        out.push(Bucket {
            lower: -exp_upper(i, h.schema),
            upper: -exp_upper(i - 1, h.schema),
            count: v,
            lower_inclusive: true,
            upper_inclusive: false,
        });
    }
    if h.zero_threshold != 0.0 || h.zero_count != 0.0 {
        out.push(Bucket {
            lower: -h.zero_threshold,
            upper: h.zero_threshold,
            count: h.zero_count,
            lower_inclusive: true,
            upper_inclusive: true,
        });
    }
    for (&i, &v) in &to_map(&h.positive_spans, &h.positive_buckets) {
        out.push(Bucket {
            lower: exp_upper(i - 1, h.schema),
            upper: exp_upper(i, h.schema),
            count: v,
            lower_inclusive: false,
            upper_inclusive: true,
        });
    }
    out
}

/// Quantile `q` of a native histogram, as Prometheus estimates it.
pub fn quantile(q: f64, h: &FloatHistogram) -> f64 {
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    if h.count == 0.0 || q.is_nan() {
        return f64::NAN;
    }
    let mut bs = buckets(h);
    let forward = h.sum.is_nan() || q < 0.5;
    let mut rank = if forward { q * h.count } else { (1.0 - q) * h.count };
    if !forward {
        bs.reverse();
    }
    let mut count = 0.0;
    let mut bucket: Option<Bucket> = None;
    for b in &bs {
        bucket = Some(*b);
        if b.count == 0.0 {
            continue;
        }
        count += b.count;
        if count >= rank {
            break;
        }
    }
    let Some(mut bucket) = bucket else { return f64::NAN };
    let custom = uses_custom(h);
    if !custom && bucket.lower < 0.0 && bucket.upper > 0.0 {
        if h.negative_buckets.is_empty() && !h.positive_buckets.is_empty() {
            bucket.lower = 0.0;
        } else if h.positive_buckets.is_empty() && !h.negative_buckets.is_empty() {
            bucket.upper = 0.0;
        }
    } else if custom {
        if bucket.lower == f64::NEG_INFINITY {
            if bucket.upper <= 0.0 {
                return bucket.upper;
            }
            bucket.lower = 0.0;
        } else if bucket.upper == f64::INFINITY {
            return bucket.lower;
        }
    }
    if count > h.count {
        count = h.count;
    }
    if count < rank {
        // Only NaN observations (counted but in no bucket) leave the rank unreached.
        return if h.sum.is_nan() { f64::NAN } else { bucket.upper };
    }
    if forward {
        rank -= count - bucket.count;
    } else {
        rank = count - rank;
    }
    let fraction = rank / bucket.count;
    if custom || (bucket.lower <= 0.0 && bucket.upper >= 0.0) {
        return bucket.lower + (bucket.upper - bucket.lower) * fraction;
    }
    let log_lower = bucket.lower.abs().log2();
    let log_upper = bucket.upper.abs().log2();
    if bucket.lower > 0.0 {
        return (log_lower + (log_upper - log_lower) * fraction).exp2();
    }
    -(log_upper + (log_lower - log_upper) * (1.0 - fraction)).exp2()
}

/// Estimated fraction of observations between `lower` and `upper`.
pub fn fraction(lower: f64, upper: f64, h: &FloatHistogram) -> f64 {
    if h.count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let custom = uses_custom(h);
    let mut rank = 0.0;
    let mut lower_rank = 0.0;
    let mut upper_rank = 0.0;
    let mut lower_set = false;
    let mut upper_set = false;
    let interpolate = |b: &Bucket, v: f64| -> f64 {
        let (mut lo, mut hi) = (b.lower, b.upper);
        if custom {
            if lo == f64::NEG_INFINITY {
                // An infinitely wide bucket contributes nothing to a bounded fraction: its
                // observations count as lying below any value inside it.
                if hi <= 0.0 {
                    return b.count;
                }
                lo = 0.0;
            }
            if hi == f64::INFINITY {
                return 0.0;
            }
        } else if lo < 0.0 && hi > 0.0 {
            if h.negative_buckets.is_empty() && !h.positive_buckets.is_empty() {
                lo = 0.0;
            } else if h.positive_buckets.is_empty() && !h.negative_buckets.is_empty() {
                hi = 0.0;
            }
        }
        if v <= lo {
            return 0.0;
        }
        if v >= hi {
            return b.count;
        }
        if custom || (lo <= 0.0 && hi >= 0.0) {
            return b.count * (v - lo) / (hi - lo);
        }
        let (ll, lu, lv) = (lo.abs().log2(), hi.abs().log2(), v.abs().log2());
        if lo > 0.0 { b.count * (lv - ll) / (lu - ll) } else { b.count * (1.0 - (lv - lu) / (ll - lu)) }
    };
    for b in buckets(h) {
        if !lower_set && b.lower >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && b.lower >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && b.lower < lower && b.upper > lower {
            lower_rank = rank + interpolate(&b, lower);
            lower_set = true;
        }
        if !upper_set && b.lower < upper && b.upper > upper {
            upper_rank = rank + interpolate(&b, upper);
            upper_set = true;
        }
        rank += b.count;
    }
    if !lower_set {
        lower_rank = rank;
    }
    if lower_rank > h.count {
        lower_rank = h.count;
    }
    if !upper_set {
        // NaN observations are in no bucket and are excluded from every fraction.
        upper_rank = rank;
    }
    if upper_rank > h.count {
        upper_rank = h.count;
    }
    (upper_rank - lower_rank) / h.count
}

/// Estimated variance of the observations (bucket midpoints weighted by count).
pub fn stdvar(h: &FloatHistogram) -> f64 {
    let mean = h.sum / h.count;
    let mut variance = 0.0;
    let mut c = 0.0;
    for b in buckets(h) {
        if b.count == 0.0 {
            continue;
        }
        let val = if uses_custom(h) {
            let (lo, hi) = (b.lower, b.upper);
            if lo == f64::NEG_INFINITY {
                hi
            } else if hi == f64::INFINITY {
                lo
            } else {
                (lo + hi) / 2.0
            }
        } else if b.lower <= 0.0 && b.upper >= 0.0 {
            0.0
        } else {
            let v = (b.upper * b.lower).abs().sqrt();
            if b.upper < 0.0 { -v } else { v }
        };
        let delta = val - mean;
        variance = kahan_add(delta * delta * b.count, variance, &mut c);
    }
    variance += c;
    variance / h.count
}

fn kahan_add(inc: f64, sum: f64, c: &mut f64) -> f64 {
    let t = sum + inc;
    if t.is_infinite() {
        *c = 0.0;
    } else if sum.abs() >= inc.abs() {
        *c += (sum - t) + inc;
    } else {
        *c += (inc - t) + sum;
    }
    t
}

/// The histogram trim operators: `h </ x` keeps the observations below `x`
/// (`keep_below`), `h >/ x` those above. Buckets cut by `x` keep the interpolated part
/// (exponentially within exponential buckets, linearly otherwise); the sum is then
/// re-estimated from the kept buckets. Nothing cut means the histogram is unchanged.
pub fn trim(h: &FloatHistogram, x: f64, keep_below: bool) -> FloatHistogram {
    if x.is_nan() {
        return h.clone();
    }
    let custom = uses_custom(h);
    let mut trimmed = false;
    let mut sum = 0.0;
    let mut count = 0.0;
    // (kept fraction, kept lower, kept upper) of a finite bucket.
    let cut = |lo: f64, hi: f64| -> (f64, f64, f64) {
        if keep_below {
            if hi <= x {
                (1.0, lo, hi)
            } else if lo >= x {
                (0.0, lo, lo)
            } else {
                (interp(lo, hi, x, custom), lo, x)
            }
        } else if lo >= x {
            (1.0, lo, hi)
        } else if hi <= x {
            (0.0, hi, hi)
        } else {
            (1.0 - interp(lo, hi, x, custom), x, hi)
        }
    };
    let rep = |lo: f64, hi: f64, exponential: bool| -> f64 {
        if exponential && lo.signum() == hi.signum() && lo != 0.0 && hi != 0.0 {
            let g = (lo * hi).abs().sqrt();
            if hi < 0.0 { -g } else { g }
        } else {
            (lo + hi) / 2.0
        }
    };
    let mut pos = to_map(&h.positive_spans, &h.positive_buckets);
    for (idx, c) in pos.iter_mut() {
        if *c == 0.0 {
            continue;
        }
        let (f, r) = if custom {
            let i = *idx as usize;
            let lo =
                if i == 0 { f64::NEG_INFINITY } else { h.custom_values.get(i - 1).copied().unwrap_or(f64::INFINITY) };
            let hi = h.custom_values.get(i).copied().unwrap_or(f64::INFINITY);
            // Infinitely wide buckets are never interpolated: they are kept or dropped
            // whole, and a cut inside one puts its observations at the cut.
            let both = |keep: bool, r: f64| (if keep { 1.0 } else { 0.0 }, r);
            if lo == f64::NEG_INFINITY && hi == f64::INFINITY {
                both(if keep_below { x == f64::INFINITY } else { x == f64::NEG_INFINITY }, 0.0)
            } else if hi == f64::INFINITY {
                if keep_below {
                    both(x == f64::INFINITY, lo)
                } else if x <= lo {
                    both(true, lo)
                } else {
                    both(x != f64::INFINITY, x)
                }
            } else if lo == f64::NEG_INFINITY && hi > 0.0 {
                // Like the quantile estimation, assume the first bucket starts at zero.
                if x >= 0.0 {
                    let (f, a, b) = cut(0.0, hi);
                    (f, rep(a, b, false))
                } else {
                    both(!keep_below && x == f64::NEG_INFINITY, hi / 2.0)
                }
            } else if lo == f64::NEG_INFINITY {
                if keep_below {
                    if x >= hi { both(true, hi) } else { both(x != f64::NEG_INFINITY, x) }
                } else {
                    both(x == f64::NEG_INFINITY, hi)
                }
            } else {
                let (f, a, b) = cut(lo, hi);
                (f, rep(a, b, false))
            }
        } else {
            let (lo, hi) = (exp_upper(idx - 1, h.schema), exp_upper(*idx, h.schema));
            let (f, a, b) = cut(lo, hi);
            (f, rep(a, b, true))
        };
        if f < 1.0 {
            trimmed = true;
        }
        *c *= f;
        count += *c;
        if *c != 0.0 {
            sum += *c * r;
        }
    }
    let mut neg = to_map(&h.negative_spans, &h.negative_buckets);
    for (idx, c) in neg.iter_mut() {
        if *c == 0.0 {
            continue;
        }
        let (lo, hi) = (-exp_upper(*idx, h.schema), -exp_upper(idx - 1, h.schema));
        let (f, a, b) = cut(lo, hi);
        if f < 1.0 {
            trimmed = true;
        }
        *c *= f;
        count += *c;
        sum += *c * rep(a, b, true);
    }
    let mut zero = h.zero_count;
    if zero != 0.0 && !custom {
        let zt = h.zero_threshold;
        let (lo, hi) = if !h.positive_buckets.is_empty() && h.negative_buckets.is_empty() {
            (0.0, zt)
        } else if h.positive_buckets.is_empty() && !h.negative_buckets.is_empty() {
            (-zt, 0.0)
        } else {
            (-zt, zt)
        };
        let (f, a, b) = if hi > lo {
            cut(lo, hi)
        } else if (keep_below && x >= hi) || (!keep_below && x <= lo) {
            (1.0, lo, hi)
        } else {
            (0.0, lo, lo)
        };
        if f < 1.0 {
            trimmed = true;
        }
        zero *= f;
        count += zero;
        sum += zero * (a + b) / 2.0;
    }
    if !trimmed {
        return h.clone();
    }
    let mut out = h.clone();
    (out.positive_spans, out.positive_buckets) = from_map(&pos);
    (out.negative_spans, out.negative_buckets) = from_map(&neg);
    out.zero_count = zero;
    out.count = count;
    out.sum = sum;
    out
}

/// Fraction of a bucket `(lo, hi]` below `x` (exponential interpolation within
/// exponential buckets that do not straddle zero).
fn interp(lo: f64, hi: f64, x: f64, linear: bool) -> f64 {
    if linear || lo <= 0.0 && hi >= 0.0 {
        return (x - lo) / (hi - lo);
    }
    if lo > 0.0 {
        (x.log2() - lo.log2()) / (hi.log2() - lo.log2())
    } else {
        (lo.abs().log2() - x.abs().log2()) / (lo.abs().log2() - hi.abs().log2())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(schema: i32, buckets: &[f64], offset: i32) -> FloatHistogram {
        FloatHistogram {
            schema,
            count: buckets.iter().sum(),
            positive_spans: vec![Span { offset, length: buckets.len() as u32 }],
            positive_buckets: buckets.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn add_reduces_schema() {
        let a = h(1, &[1.0, 1.0], 1);
        let b = h(0, &[2.0], 1);
        let s = add(&a, &b).unwrap();
        assert_eq!(s.schema, 0);
        assert_eq!(to_map(&s.positive_spans, &s.positive_buckets).into_iter().collect::<Vec<_>>(), vec![(1, 4.0)]);
    }

    #[test]
    fn quantile_custom_buckets() {
        let mut x = h(CUSTOM_BUCKETS_SCHEMA, &[2.0, 2.0], 0);
        x.custom_values = vec![1.0, 2.0];
        x.sum = 3.0;
        assert_eq!(quantile(0.5, &x), 1.0);
        assert_eq!(quantile(0.25, &x), 0.5);
    }
}
