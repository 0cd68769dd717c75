//! Batched, transactional appends to the head.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use norn_model::{FloatHistogram, Histogram, Labels};

use super::series::{Incoming, LastValue, MemSeries, Placement, U64Map, placement};
use super::{AppendError, Head};
use crate::Result;
use crate::chunkenc::is_stale_nan;
use crate::wal::record::{self, RefFloatHistogramSample, RefHistogramSample, RefSample};

/// Collects samples and commits them atomically with respect to the WAL: nothing is
/// visible to queries before [`Appender::commit`] has written it to the WAL. Dropping an
/// appender without committing rolls it back.
///
/// Like Prometheus, a commit writes (and applies) all float samples, then all integer
/// histograms, then all float histograms, so replay sees the same order.
#[derive(Debug)]
pub struct Appender<'a> {
    head: &'a Head,
    floats: Vec<Pending<f64>>,
    histograms: Vec<Pending<Box<Histogram>>>,
    float_histograms: Vec<Pending<Box<FloatHistogram>>>,
    /// Series pinned by this appender (pending counter raised), by ref, with the newest
    /// in-order sample appended to it in this batch (to catch order and duplicate errors
    /// within the batch).
    pinned: U64Map<Pin>,
    /// Newest in-order timestamp in this batch (`i64::MIN` if none).
    batch_max: i64,
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

/// A pinned series and its newest in-order sample in this batch.
type Pin = (Arc<MemSeries>, Option<(i64, LastValue)>);

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
            pinned: U64Map::with_capacity_and_hasher(head.batch_hint.load(Ordering::Relaxed), Default::default()),
            batch_max: i64::MIN,
        }
    }

    /// Number of samples waiting for commit.
    pub fn len(&self) -> usize {
        self.floats.len() + self.histograms.len() + self.float_histograms.len()
    }

    /// Whether nothing is waiting for commit.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
            std::collections::hash_map::Entry::Vacant(e) => e.insert((series.clone(), None)),
        };
        let place = {
            let d = series.data.lock();
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
                Ok(Some(series))
            }
            Placement::OutOfOrder => Ok(Some(series)),
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
        let mut recs = Vec::new();
        if !self.floats.is_empty() {
            let mut rec = Vec::with_capacity(17 + self.floats.len() * 12);
            let refs: Vec<RefSample> =
                self.floats.iter().map(|p| RefSample { series_ref: p.series.series_ref, t: p.t, v: p.v }).collect();
            record::encode_samples(&refs, &mut rec);
            recs.push(rec);
        }
        if !self.histograms.is_empty() {
            let refs: Vec<RefHistogramSample> = self
                .histograms
                .iter()
                .map(|p| RefHistogramSample { series_ref: p.series.series_ref, t: p.t, h: (*p.v).clone() })
                .collect();
            record::encode_histograms(&refs, &mut recs);
        }
        if !self.float_histograms.is_empty() {
            let refs: Vec<RefFloatHistogramSample> = self
                .float_histograms
                .iter()
                .map(|p| RefFloatHistogramSample { series_ref: p.series.series_ref, t: p.t, fh: (*p.v).clone() })
                .collect();
            record::encode_float_histograms(&refs, &mut recs);
        }
        // Pinned series are exactly the distinct series of the batch (plus any whose
        // samples were all rejected, which get logged harmlessly).
        let series: Vec<Arc<MemSeries>> = self.pinned.values().map(|(s, _)| s.clone()).collect();
        head.log_wal(&series, &recs, || {
            let mut range = (i64::MAX, i64::MIN);
            let mut st = CommitStats::default();
            for p in &self.floats {
                self.apply(&p.series, p.t, Incoming::Float(p.v), &mut range, &mut st);
            }
            for p in &self.histograms {
                self.apply(&p.series, p.t, Incoming::Histogram(&p.v), &mut range, &mut st);
            }
            for p in &self.float_histograms {
                self.apply(&p.series, p.t, Incoming::FloatHistogram(&p.v), &mut range, &mut st);
            }
            if range.0 <= range.1 {
                head.note_in_order(range.0, range.1);
            }
            st
        })
    }

    /// Applies one sample, re-deciding its placement against the state left by the
    /// commits that landed since it was appended.
    fn apply(&self, series: &MemSeries, t: i64, v: Incoming<'_>, range: &mut (i64, i64), st: &mut CommitStats) {
        let head = self.head;
        let min_valid = head.appendable_min_valid_time();
        let mut d = series.data.lock();
        let last = d.last.as_ref().map(|(t, v)| (*t, v));
        match placement(last, t, v, min_valid, head.max_time().max(range.1), head.opts.out_of_order_time_window) {
            Ok(Placement::InOrder) => {
                d.append(t, v);
                range.0 = range.0.min(t);
                range.1 = range.1.max(t);
                st.record(Ok(()));
            }
            Ok(Placement::OutOfOrder) => {
                let Incoming::Float(f) = v else {
                    // `placement` only places floats out of order.
                    st.record(Err(AppendError::OutOfOrder));
                    return;
                };
                // One value per timestamp, as `check` ensures at append: a concurrent
                // commit may have stored this timestamp since.
                let existing = match d.ooo.get(&t) {
                    Some(x) => Some(Some(x.to_bits())),
                    None => d.inorder_at(t),
                };
                match existing {
                    Some(Some(bits)) if bits == f.to_bits() => st.duplicates += 1,
                    Some(_) => st.record(Err(AppendError::DuplicateSampleForTimestamp)),
                    None => {
                        d.ooo.insert(t, f);
                        head.note_ooo(t);
                        st.record(Ok(()));
                    }
                }
            }
            Ok(Placement::Duplicate) => st.duplicates += 1,
            Err(e) => st.record(Err(e)),
        }
    }

    fn release(&mut self) {
        self.floats.clear();
        self.histograms.clear();
        self.float_histograms.clear();
        if !self.pinned.is_empty() {
            self.head.batch_hint.store(self.pinned.len(), Ordering::Relaxed);
        }
        for (_, (s, _)) in self.pinned.drain() {
            s.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Appender<'_> {
    fn drop(&mut self) {
        self.release();
    }
}
