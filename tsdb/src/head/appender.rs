//! Batched, transactional appends to the head.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use norn_model::Labels;

use super::series::{MemSeries, Placement, placement};
use super::{AppendError, Head};
use crate::Result;
use crate::wal::record::{self, RefSample};

/// Collects samples and commits them atomically with respect to the WAL: nothing is
/// visible to queries before [`Appender::commit`] has written it to the WAL. Dropping an
/// appender without committing rolls it back.
#[derive(Debug)]
pub struct Appender<'a> {
    head: &'a Head,
    samples: Vec<Pending>,
    /// Series pinned by this appender (pending counter raised), by ref.
    pinned: HashMap<u64, Arc<MemSeries>>,
    /// Newest sample appended per series in this batch, to catch order and duplicate
    /// errors within the batch.
    newest: HashMap<u64, (i64, u64)>,
}

#[derive(Debug)]
struct Pending {
    series: Arc<MemSeries>,
    t: i64,
    v: f64,
}

impl<'a> Appender<'a> {
    pub(super) fn new(head: &'a Head) -> Self {
        Appender { head, samples: Vec::new(), pinned: HashMap::new(), newest: HashMap::new() }
    }

    /// Number of samples waiting for commit.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether nothing is waiting for commit.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Adds a float sample, checking it against the committed data (and this batch) with
    /// Prometheus's rules; a rejected sample leaves the batch unchanged.
    pub fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<(), AppendError> {
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
        if self.pinned.insert(series.series_ref, series.clone()).is_some() {
            // Already pinned by this appender: keep one pin per series.
            series.pending.fetch_sub(1, Ordering::AcqRel);
        }
        let last = {
            let d = series.data.lock();
            match (d.last, self.newest.get(&series.series_ref)) {
                (Some(c), Some(&p)) => Some(if p.0 >= c.0 { p } else { c }),
                (c, p) => c.or(p.copied()),
            }
        };
        let place = placement(last, t, v, min_valid, head.max_time(), window)?;
        if place == Placement::OutOfOrder {
            let d = series.data.lock();
            if let Some(x) = d.ooo.get(&t) {
                if x.to_bits() != v.to_bits() {
                    return Err(AppendError::DuplicateSampleForTimestamp);
                }
                return Ok(());
            }
        }
        if place == Placement::Duplicate {
            return Ok(());
        }
        if place == Placement::InOrder {
            self.newest.insert(series.series_ref, (t, v.to_bits()));
        }
        self.samples.push(Pending { series, t, v });
        Ok(())
    }

    /// Writes the batch to the WAL (series records for series not yet logged, then one
    /// samples record), syncs per the WAL's policy, then makes the samples visible.
    /// Samples that became invalid since `append` because of concurrent commits are
    /// dropped, as Prometheus does.
    pub fn commit(mut self) -> Result<()> {
        let res = self.commit_inner();
        self.release();
        res
    }

    /// Discards the batch.
    pub fn rollback(mut self) {
        self.release();
    }

    fn commit_inner(&mut self) -> Result<()> {
        if self.samples.is_empty() {
            return Ok(());
        }
        let head = self.head;
        let mut rec = Vec::with_capacity(17 + self.samples.len() * 12);
        let refs: Vec<RefSample> =
            self.samples.iter().map(|p| RefSample { series_ref: p.series.series_ref, t: p.t, v: p.v }).collect();
        record::encode_samples(&refs, &mut rec);
        let mut seen = std::collections::HashSet::new();
        let series: Vec<Arc<MemSeries>> =
            self.samples.iter().filter(|p| seen.insert(p.series.series_ref)).map(|p| p.series.clone()).collect();
        head.log_wal(&series, &rec)?;

        let window = head.opts.out_of_order_time_window;
        let (mut mint, mut maxt) = (i64::MAX, i64::MIN);
        for p in &self.samples {
            let min_valid = head.appendable_min_valid_time();
            let mut d = p.series.data.lock();
            match placement(d.last, p.t, p.v, min_valid, head.max_time().max(maxt), window) {
                Ok(Placement::InOrder) => {
                    d.append(p.t, p.v);
                    mint = mint.min(p.t);
                    maxt = maxt.max(p.t);
                }
                Ok(Placement::OutOfOrder) => {
                    d.ooo.entry(p.t).or_insert(p.v);
                    head.note_ooo(p.t);
                }
                Ok(Placement::Duplicate) | Err(_) => {}
            }
        }
        if mint <= maxt {
            head.note_in_order(mint, maxt);
        }
        Ok(())
    }

    fn release(&mut self) {
        self.samples.clear();
        self.newest.clear();
        for (_, s) in self.pinned.drain() {
            s.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Appender<'_> {
    fn drop(&mut self) {
        self.release();
    }
}
