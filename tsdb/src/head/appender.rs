//! Batched, transactional appends to the head.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use norn_model::{FloatHistogram, Histogram, Labels};

use super::series::{Incoming, LastValue, MemSeries, Placement, U64Map, placement};
use super::{AppendError, Head};
use crate::Result;
use crate::chunkenc::is_stale_nan;
use crate::exemplar::{Exemplar, ExemplarError};
use crate::wal::record::{self, RefExemplar, RefFloatHistogramSample, RefHistogramSample, RefSample};

/// Collects samples and commits them atomically with respect to the WAL: nothing is
/// visible to queries before [`Appender::commit`] has written it to the WAL. Dropping an
/// appender without committing rolls it back.
///
/// Like Prometheus, a commit writes (and applies) all float samples, then all integer
/// histograms, then all float histograms, then the exemplars, so replay sees the same
/// order. Only what the commit applies is logged: replay reproduces exactly the
/// committed state, whatever the out-of-order window is then.
#[derive(Debug)]
pub struct Appender<'a> {
    head: &'a Head,
    floats: Vec<Pending<f64>>,
    histograms: Vec<Pending<Box<Histogram>>>,
    float_histograms: Vec<Pending<Box<FloatHistogram>>>,
    exemplars: Vec<Pending<Exemplar>>,
    /// Newest exemplar per series in this batch, by ref (to refuse out-of-order ones
    /// within the batch, which the storage would refuse at commit).
    exemplar_last: U64Map<i64>,
    /// Series pinned by this appender (pending counter raised), by ref, with the newest
    /// in-order sample appended to it in this batch (to catch order and duplicate errors
    /// within the batch).
    pinned: U64Map<Pin>,
    /// Newest in-order timestamp in this batch (`i64::MIN` if none).
    batch_max: i64,
    /// Oldest in-order timestamp in this batch (`i64::MAX` if none).
    batch_min: i64,
    /// Whether a sample of the batch was placed out of order at append (its check did
    /// not see the batch's own samples at that timestamp).
    has_ooo: bool,
}

/// What [`Appender::commit`] did with the batch. Samples are checked when appended, but
/// a concurrent commit to the same series may land first and make them invalid; those
/// are dropped at commit (as Prometheus does) and counted here by reason, so callers can
/// report them instead of counting them as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Samples made visible (in order, or into the out-of-order window).
    pub applied: u64,
    /// Bit-identical to a sample already stored at that timestamp: nothing to do, not an
    /// error (the write was idempotent).
    pub duplicates: u64,
    /// Dropped: older than the series' newest sample, out-of-order ingestion off.
    pub out_of_order: u64,
    /// Dropped: another value is stored at that timestamp.
    pub duplicate_timestamp: u64,
    /// Dropped: older than the head's appendable window, out-of-order ingestion off.
    pub out_of_bounds: u64,
    /// Dropped: older than the out-of-order window allows.
    pub too_old: u64,
    /// Exemplars stored.
    pub exemplars: u64,
    /// Exemplars dropped at commit: a concurrent commit stored a newer one for the series.
    pub exemplars_out_of_order: u64,
}

impl CommitStats {
    /// Samples dropped at commit, all reasons together.
    pub fn dropped(&self) -> u64 {
        self.out_of_order + self.duplicate_timestamp + self.out_of_bounds + self.too_old
    }

    fn record(&mut self, r: std::result::Result<(), AppendError>) {
        match r {
            Ok(()) => self.applied += 1,
            Err(AppendError::OutOfOrder) => self.out_of_order += 1,
            Err(AppendError::DuplicateSampleForTimestamp) => self.duplicate_timestamp += 1,
            Err(AppendError::OutOfBounds) => self.out_of_bounds += 1,
            // The OOO window, or (never at commit: checked at append) a bad label set
            // or histogram: all mean the sample is not stored.
            Err(_) => self.too_old += 1,
        }
    }
}

/// A pinned series, its newest in-order sample in this batch, and its version when
/// this appender first checked something against it.
type Pin = (Arc<MemSeries>, Option<(i64, LastValue)>, Option<u64>);

#[derive(Debug)]
struct Pending<V> {
    series: Arc<MemSeries>,
    t: i64,
    v: V,
}

impl<'a> Appender<'a> {
    pub(super) fn new(head: &'a Head) -> Self {
        Appender {
            head,
            floats: Vec::new(),
            histograms: Vec::new(),
            float_histograms: Vec::new(),
            exemplars: Vec::new(),
            exemplar_last: U64Map::default(),
            pinned: U64Map::with_capacity_and_hasher(head.batch_hint.load(Ordering::Relaxed), Default::default()),
            batch_max: i64::MIN,
            batch_min: i64::MAX,
            has_ooo: false,
        }
    }

    /// Number of samples waiting for commit.
    pub fn len(&self) -> usize {
        self.floats.len() + self.histograms.len() + self.float_histograms.len()
    }

    /// Whether nothing (no sample, no exemplar) is waiting for commit.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.exemplars.is_empty()
    }

    /// Adds an exemplar for the series `labels`, which must exist in the head (append
    /// its sample first, in this batch or an earlier one), checked with Prometheus's
    /// rules against the stored exemplars and this batch. A duplicate of the series'
    /// newest exemplar is ignored (`Ok`), as Prometheus ignores it. On commit it is
    /// logged in an exemplar record after the samples, then stored.
    pub fn append_exemplar(&mut self, labels: &Labels, e: Exemplar) -> Result<(), ExemplarError> {
        let series = self.head.series.get_pinned(labels).ok_or(ExemplarError::UnknownSeries)?;
        let entry = match self.pinned.entry(series.series_ref) {
            std::collections::hash_map::Entry::Occupied(o) => {
                series.pending.fetch_sub(1, Ordering::AcqRel);
                o.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert((series, None, None)),
        };
        // Read before validating: a commit storing an exemplar bumps it afterwards.
        entry.2.get_or_insert_with(|| entry.0.version.load(Ordering::Acquire));
        let series = entry.0.clone();
        match self.head.exemplars.validate(labels, &e) {
            Ok(()) => {}
            Err(ExemplarError::Duplicate) => return Ok(()),
            Err(err) => return Err(err),
        }
        if let Some(&last) = self.exemplar_last.get(&series.series_ref) {
            if let Some(p) = self.exemplars.iter().rev().find(|p| p.series.series_ref == series.series_ref)
                && p.v == e
            {
                return Ok(());
            }
            if e.ts <= last {
                return Err(ExemplarError::OutOfOrder);
            }
        }
        self.exemplar_last.insert(series.series_ref, e.ts);
        self.exemplars.push(Pending { series, t: e.ts, v: e });
        Ok(())
    }

    /// Adds a float sample, checking it against the committed data (and this batch) with
    /// Prometheus's rules; a rejected sample leaves the batch unchanged.
    pub fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<(), AppendError> {
        if let Some(series) = self.check(labels, t, Incoming::Float(v))? {
            self.floats.push(Pending { series, t, v });
        }
        Ok(())
    }

    /// Adds an integer native histogram sample. Histograms must be in order (the OOO
    /// window applies to floats only).
    pub fn append_histogram(&mut self, labels: &Labels, t: i64, h: &Histogram) -> Result<(), AppendError> {
        if !is_stale_nan(h.sum) && !h.is_consistent() {
            return Err(AppendError::InvalidHistogram("spans and buckets disagree"));
        }
        if let Some(series) = self.check(labels, t, Incoming::Histogram(h))? {
            self.histograms.push(Pending { series, t, v: Box::new(h.clone()) });
        }
        Ok(())
    }

    /// Adds a float native histogram sample (in order only).
    pub fn append_float_histogram(&mut self, labels: &Labels, t: i64, h: &FloatHistogram) -> Result<(), AppendError> {
        if !is_stale_nan(h.sum) && !h.is_consistent() {
            return Err(AppendError::InvalidHistogram("spans and buckets disagree"));
        }
        if let Some(series) = self.check(labels, t, Incoming::FloatHistogram(h))? {
            self.float_histograms.push(Pending { series, t, v: Box::new(h.clone()) });
        }
        Ok(())
    }

    /// Validates a sample; `Some(series)` if it must be added to the batch, `None` if it
    /// is an accepted duplicate.
    fn check(&mut self, labels: &Labels, t: i64, v: Incoming<'_>) -> Result<Option<Arc<MemSeries>>, AppendError> {
        if labels.is_empty() {
            return Err(AppendError::EmptyLabels);
        }
        let head = self.head;
        let window = head.opts.out_of_order_time_window;
        let min_valid = head.appendable_min_valid_time();
        if window <= 0 && t < min_valid {
            return Err(AppendError::OutOfBounds);
        }
        let (series, _) = head.get_or_create(labels, true);
        let entry = match self.pinned.entry(series.series_ref) {
            std::collections::hash_map::Entry::Occupied(e) => {
                // Already pinned by this appender: keep one pin per series.
                series.pending.fetch_sub(1, Ordering::AcqRel);
                e.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(e) => e.insert((series.clone(), None, None)),
        };
        let place = {
            let d = series.data.lock();
            entry.2.get_or_insert_with(|| series.version.load(Ordering::Relaxed));
            let committed = d.last.as_ref().map(|(t, v)| (*t, v));
            let batch = entry.1.as_ref().map(|(t, v)| (*t, v));
            let last = match (committed, batch) {
                (Some(c), Some(b)) => Some(if b.0 >= c.0 { b } else { c }),
                (c, b) => c.or(b),
            };
            // The head's max time as it will be when this batch commits.
            let head_max = head.max_time().max(self.batch_max);
            let place = placement(last, t, v, min_valid, head_max, window)?;
            if place == Placement::OutOfOrder
                && let Incoming::Float(f) = v
            {
                // One value per timestamp: committed OOO data, then in-order data.
                let existing = match d.ooo.get(&t) {
                    Some(x) => Some(Some(x.to_bits())),
                    None => d.inorder_at(t),
                };
                match existing {
                    Some(Some(bits)) if bits == f.to_bits() => return Ok(None),
                    Some(_) => return Err(AppendError::DuplicateSampleForTimestamp),
                    None => {}
                }
            }
            place
        };
        match place {
            Placement::Duplicate => Ok(None),
            Placement::InOrder => {
                entry.1 = Some((t, v.to_last()));
                self.batch_max = self.batch_max.max(t);
                self.batch_min = self.batch_min.min(t);
                Ok(Some(series))
            }
            Placement::OutOfOrder => {
                self.has_ooo = true;
                Ok(Some(series))
            }
        }
    }

    /// Writes the batch to the WAL (series records for series not yet logged, then the
    /// sample records), syncs per the WAL's policy, then makes the samples visible.
    /// Samples that became invalid since `append` because of concurrent commits are
    /// dropped, as Prometheus does, and counted in the returned [`CommitStats`]. On
    /// error nothing was stored.
    pub fn commit(mut self) -> Result<CommitStats> {
        let res = self.commit_inner();
        self.release();
        res
    }

    /// Discards the batch.
    pub fn rollback(mut self) {
        self.release();
    }

    fn commit_inner(&mut self) -> Result<CommitStats> {
        if self.is_empty() {
            return Ok(CommitStats::default());
        }
        let head = self.head;
        // Pinned series are exactly the distinct series of the batch (plus any whose
        // samples were all rejected, which get logged harmlessly).
        let series: Vec<Arc<MemSeries>> = self.pinned.values().map(|(s, _, _)| s.clone()).collect();
        let this = &*self;
        head.log_wal(
            &series,
            // Under the WAL lock, so no other commit changes the series between this
            // decision and `apply`: what is logged is exactly what is applied.
            || {
                let decided = if this.checks_stand() { this.all_stand() } else { this.decide() };
                let recs = this.encode(&decided);
                (recs, decided)
            },
            |decided| this.apply(&decided),
        )
    }

    /// Whether every check made at append still holds (called under the WAL lock, so
    /// no commit runs meanwhile): no series of the batch changed since (the checks
    /// saw the batch's own in-order samples), no in-order sample fell below the
    /// appendable window, and none was placed out of order (whose check did not see
    /// the batch's samples at its timestamp).
    fn checks_stand(&self) -> bool {
        !self.has_ooo
            && (self.batch_min == i64::MAX || self.batch_min >= self.head.appendable_min_valid_time())
            && self.pinned.values().all(|(s, _, v)| *v == Some(s.version.load(Ordering::Acquire)))
    }

    /// The decisions when every check made at append still holds: all in order.
    fn all_stand(&self) -> Decided {
        let n = self.len() as u64;
        Decided {
            floats: vec![Decision::InOrder; self.floats.len()],
            histograms: vec![Decision::InOrder; self.histograms.len()],
            float_histograms: vec![Decision::InOrder; self.float_histograms.len()],
            exemplars: vec![true; self.exemplars.len()],
            stats: CommitStats { applied: n, ..Default::default() },
        }
    }

    /// Where each sample of the batch goes given the committed state (which may have
    /// changed since `append` through concurrent commits), as if applied one by one.
    fn decide(&self) -> Decided {
        let head = self.head;
        let min_valid = head.appendable_min_valid_time();
        let window = head.opts.out_of_order_time_window;
        let mut sim = Sim {
            last: U64Map::with_capacity_and_hasher(self.pinned.len(), Default::default()),
            head_max: head.max_time(),
            float_kept: Vec::with_capacity(self.floats.len()),
            ..Sim::default()
        };
        let mut st = CommitStats::default();
        let mut floats = Vec::with_capacity(self.floats.len());
        for (i, p) in self.floats.iter().enumerate() {
            let v = Incoming::Float(p.v);
            floats.push(sim.decide(&p.series, p.t, v, min_valid, window, &mut st, |sim| {
                // Earlier samples of this batch at this timestamp are not in the series
                // yet; look for them too (indexed on first need: OOO samples are rare).
                sim.batch_value(&self.floats[..i], p.series.series_ref, p.t)
            }));
        }
        let mut histograms = Vec::with_capacity(self.histograms.len());
        for p in &self.histograms {
            let v = Incoming::Histogram(&p.v);
            histograms.push(sim.decide(&p.series, p.t, v, min_valid, window, &mut st, |_| None));
        }
        let mut float_histograms = Vec::with_capacity(self.float_histograms.len());
        for p in &self.float_histograms {
            let v = Incoming::FloatHistogram(&p.v);
            float_histograms.push(sim.decide(&p.series, p.t, v, min_valid, window, &mut st, |_| None));
        }
        // Exemplars were checked against the storage at append; a concurrent commit
        // may since have stored a newer one for the series.
        let exemplars = self
            .exemplars
            .iter()
            .map(|p| match head.exemplars.validate(&p.series.labels, &p.v) {
                Ok(()) => true,
                Err(_) => {
                    st.exemplars_out_of_order += 1;
                    false
                }
            })
            .collect();
        Decided { floats, histograms, float_histograms, exemplars, stats: st }
    }

    /// The WAL records of the samples and exemplars `decided` keeps.
    fn encode(&self, decided: &Decided) -> Vec<Vec<u8>> {
        let mut recs = Vec::new();
        let kept = |d: &[Decision]| d.iter().filter(|d| d.stored()).count();
        let n = kept(&decided.floats);
        if n > 0 {
            let mut rec = Vec::with_capacity(17 + n * 12);
            let refs: Vec<RefSample> = self
                .floats
                .iter()
                .zip(&decided.floats)
                .filter(|(_, d)| d.stored())
                .map(|(p, _)| RefSample { series_ref: p.series.series_ref, t: p.t, v: p.v })
                .collect();
            record::encode_samples(&refs, &mut rec);
            recs.push(rec);
        }
        if kept(&decided.histograms) > 0 {
            let refs: Vec<RefHistogramSample> = self
                .histograms
                .iter()
                .zip(&decided.histograms)
                .filter(|(_, d)| d.stored())
                .map(|(p, _)| RefHistogramSample { series_ref: p.series.series_ref, t: p.t, h: (*p.v).clone() })
                .collect();
            record::encode_histograms(&refs, &mut recs);
        }
        if kept(&decided.float_histograms) > 0 {
            let refs: Vec<RefFloatHistogramSample> = self
                .float_histograms
                .iter()
                .zip(&decided.float_histograms)
                .filter(|(_, d)| d.stored())
                .map(|(p, _)| RefFloatHistogramSample { series_ref: p.series.series_ref, t: p.t, fh: (*p.v).clone() })
                .collect();
            record::encode_float_histograms(&refs, &mut recs);
        }
        let ex: Vec<RefExemplar> = self
            .exemplars
            .iter()
            .zip(&decided.exemplars)
            .filter(|(_, k)| **k)
            .map(|(p, _)| RefExemplar {
                series_ref: p.series.series_ref,
                t: p.v.ts,
                v: p.v.value,
                labels: p.v.labels.clone(),
            })
            .collect();
        if !ex.is_empty() {
            let mut rec = Vec::new();
            record::encode_exemplars(&ex, &mut rec);
            recs.push(rec);
        }
        recs
    }

    /// Makes the samples and exemplars `decided` keeps visible, in log order.
    fn apply(&self, decided: &Decided) -> CommitStats {
        let head = self.head;
        let mut range = (i64::MAX, i64::MIN);
        let mut put = |series: &MemSeries, t: i64, v: Incoming<'_>, d: Decision| match d {
            Decision::InOrder => {
                let mut d = series.data.lock();
                d.append(t, v);
                series.version.fetch_add(1, Ordering::Relaxed);
                range.0 = range.0.min(t);
                range.1 = range.1.max(t);
            }
            Decision::OutOfOrder => {
                if let Incoming::Float(f) = v {
                    let mut d = series.data.lock();
                    d.ooo.insert(t, f);
                    series.version.fetch_add(1, Ordering::Relaxed);
                    head.note_ooo(t);
                }
            }
            Decision::Skip => {}
        };
        for (p, d) in self.floats.iter().zip(&decided.floats) {
            put(&p.series, p.t, Incoming::Float(p.v), *d);
        }
        for (p, d) in self.histograms.iter().zip(&decided.histograms) {
            put(&p.series, p.t, Incoming::Histogram(&p.v), *d);
        }
        for (p, d) in self.float_histograms.iter().zip(&decided.float_histograms) {
            put(&p.series, p.t, Incoming::FloatHistogram(&p.v), *d);
        }
        if range.0 <= range.1 {
            head.note_in_order(range.0, range.1);
        }
        let mut st = decided.stats;
        for (p, _) in self.exemplars.iter().zip(&decided.exemplars).filter(|(_, k)| **k) {
            match head.exemplars.add(&p.series.labels, p.v.clone()) {
                Ok(true) => st.exemplars += 1,
                // Validated under the same WAL lock just before: cannot happen.
                Ok(false) | Err(_) => st.exemplars_out_of_order += 1,
            }
            p.series.version.fetch_add(1, Ordering::Release);
        }
        st
    }

    fn release(&mut self) {
        self.floats.clear();
        self.histograms.clear();
        self.float_histograms.clear();
        self.exemplars.clear();
        self.exemplar_last.clear();
        self.batch_min = i64::MAX;
        self.has_ooo = false;
        if !self.pinned.is_empty() {
            self.head.batch_hint.store(self.pinned.len(), Ordering::Relaxed);
        }
        for (_, (s, _, _)) in self.pinned.drain() {
            s.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Appender<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// What a commit does with one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    InOrder,
    OutOfOrder,
    /// Dropped or a duplicate: neither logged nor applied.
    Skip,
}

impl Decision {
    fn stored(self) -> bool {
        self != Decision::Skip
    }
}

/// A commit's decisions, parallel to the appender's pending vectors.
#[derive(Debug)]
struct Decided {
    floats: Vec<Decision>,
    histograms: Vec<Decision>,
    float_histograms: Vec<Decision>,
    exemplars: Vec<bool>,
    stats: CommitStats,
}

/// The series state as the commit's earlier samples will have left it.
#[derive(Debug, Default)]
struct Sim {
    /// Newest in-order sample stored by this commit so far, per series ref.
    last: U64Map<(i64, LastValue)>,
    head_max: i64,
    /// (series ref, timestamp) → value bits of the float samples this commit stores,
    /// built on the first out-of-order sample (`None` before).
    stored: Option<std::collections::HashMap<(u64, i64), u64>>,
    /// How many floats `stored` covers.
    indexed: usize,
    /// Float decisions so far, to index only stored samples.
    float_kept: Vec<bool>,
}

impl Sim {
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        series: &MemSeries,
        t: i64,
        v: Incoming<'_>,
        min_valid: i64,
        window: i64,
        st: &mut CommitStats,
        batch_value: impl FnOnce(&mut Sim) -> Option<u64>,
    ) -> Decision {
        let d = series.data.lock();
        let last = match self.last.get(&series.series_ref) {
            Some((t, v)) => Some((*t, v)),
            None => d.last.as_ref().map(|(t, v)| (*t, v)),
        };
        let dec = match placement(last, t, v, min_valid, self.head_max, window) {
            Ok(Placement::InOrder) => {
                self.last.insert(series.series_ref, (t, v.to_last()));
                self.head_max = self.head_max.max(t);
                st.record(Ok(()));
                Decision::InOrder
            }
            Ok(Placement::OutOfOrder) => {
                let Incoming::Float(f) = v else {
                    // `placement` only places floats out of order.
                    st.record(Err(AppendError::OutOfOrder));
                    return self.note(v, Decision::Skip);
                };
                // One value per timestamp: committed OOO data, committed in-order data,
                // then what this commit stores before this sample.
                let existing = match d.ooo.get(&t) {
                    Some(x) => Some(x.to_bits()),
                    None => match d.inorder_at(t) {
                        Some(b) => Some(b.unwrap_or(!f.to_bits())),
                        None => {
                            drop(d);
                            batch_value(self)
                        }
                    },
                };
                match existing {
                    Some(bits) if bits == f.to_bits() => {
                        st.duplicates += 1;
                        Decision::Skip
                    }
                    Some(_) => {
                        st.record(Err(AppendError::DuplicateSampleForTimestamp));
                        Decision::Skip
                    }
                    None => {
                        st.record(Ok(()));
                        Decision::OutOfOrder
                    }
                }
            }
            Ok(Placement::Duplicate) => {
                st.duplicates += 1;
                Decision::Skip
            }
            Err(e) => {
                st.record(Err(e));
                Decision::Skip
            }
        };
        self.note(v, dec)
    }

    fn note(&mut self, v: Incoming<'_>, d: Decision) -> Decision {
        if matches!(v, Incoming::Float(_)) {
            self.float_kept.push(d.stored());
        }
        d
    }

    /// The value stored by this commit's earlier floats (`earlier`, whose decisions are
    /// in `float_kept`) for series `r` at `t`.
    fn batch_value(&mut self, earlier: &[Pending<f64>], r: u64, t: i64) -> Option<u64> {
        let map = self.stored.get_or_insert_with(Default::default);
        for (p, kept) in earlier[self.indexed..].iter().zip(&self.float_kept[self.indexed..]) {
            if *kept {
                map.entry((p.series.series_ref, p.t)).or_insert(p.v.to_bits());
            }
        }
        self.indexed = earlier.len();
        map.get(&(r, t)).copied()
    }
}
