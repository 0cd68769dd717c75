//! One in-memory series of the head and the lock-striped maps that find it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use norn_model::Labels;
use parking_lot::{Mutex, RwLock};

use super::ChunkCutter;
use crate::chunkenc::{Chunk, Encoding, Sample, XorChunk};
use crate::chunks::ChunkMeta;

/// Samples per chunk when OOO samples are encoded for queries.
const OOO_CHUNK_SAMPLES: usize = 120;

/// A head series. Its data sits behind its own mutex so appends to different series
/// never contend.
#[derive(Debug)]
pub(crate) struct MemSeries {
    pub series_ref: u64,
    pub labels: Labels,
    /// Whether a series record for it is in the WAL; set under the WAL lock so the
    /// record always precedes the first samples record that refers to it.
    pub logged: AtomicBool,
    /// Appenders holding uncommitted samples for it; garbage collection skips it then.
    pub pending: AtomicU32,
    pub data: Mutex<SeriesData>,
}

/// The mutable part of a series.
#[derive(Debug)]
pub(crate) struct SeriesData {
    /// Completed in-order chunks, ascending.
    pub chunks: Vec<ChunkMeta>,
    /// The open chunk.
    pub cutter: ChunkCutter,
    /// Last in-order sample (time, value bits).
    pub last: Option<(i64, u64)>,
    /// Out-of-order samples accepted through the OOO window, by time.
    pub ooo: BTreeMap<i64, f64>,
}

/// Where a sample goes, decided from a series' committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    InOrder,
    /// Same timestamp and bit-identical value as the last sample: accepted, nothing to do.
    Duplicate,
    OutOfOrder,
}

impl SeriesData {
    pub fn new(chunk_range: i64, samples_per_chunk: usize) -> Self {
        SeriesData {
            chunks: Vec::new(),
            cutter: ChunkCutter::with_samples_per_chunk(chunk_range, samples_per_chunk),
            last: None,
            ooo: BTreeMap::new(),
        }
    }

    /// Appends an in-order sample (the caller has checked `t > last`).
    pub fn append(&mut self, t: i64, v: f64) {
        if let Some(done) = self.cutter.append(t, v) {
            self.chunks.push(done);
        }
        self.last = Some((t, v.to_bits()));
    }

    /// Whether nothing is left in memory.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.cutter.open_samples() == 0 && self.ooo.is_empty()
    }

    /// Earliest in-order timestamp held.
    pub fn min_time(&self) -> Option<i64> {
        self.chunks.first().map(|c| c.min_time).or_else(|| self.cutter.open_chunk().map(|c| c.min_time))
    }

    /// All in-order chunks (closed and a copy of the open one) overlapping `[mint, maxt]`.
    pub fn chunks_in(&self, mint: i64, maxt: i64, out: &mut Vec<ChunkMeta>) {
        out.extend(self.chunks.iter().filter(|c| c.max_time >= mint && c.min_time <= maxt).cloned());
        if let Some(open) = self.cutter.open_chunk()
            && open.max_time >= mint
            && open.min_time <= maxt
        {
            out.push(open);
        }
    }

    /// OOO samples in `[mint, maxt]` encoded as XOR chunks.
    pub fn ooo_chunks_in(&self, mint: i64, maxt: i64, out: &mut Vec<ChunkMeta>) {
        if mint > maxt {
            return;
        }
        let mut cur: Option<(XorChunk, i64, i64)> = None;
        for (&t, &v) in self.ooo.range(mint..=maxt) {
            let (c, _, last) = cur.get_or_insert_with(|| (XorChunk::new(), t, t));
            c.append(t, v);
            *last = t;
            if c.num_samples() >= OOO_CHUNK_SAMPLES
                && let Some((c, a, b)) = cur.take()
            {
                out.push(ChunkMeta { min_time: a, max_time: b, chunk: Chunk::new(Encoding::Xor, c.into_bytes()) });
            }
        }
        if let Some((c, a, b)) = cur {
            out.push(ChunkMeta { min_time: a, max_time: b, chunk: Chunk::new(Encoding::Xor, c.into_bytes()) });
        }
    }

    /// Drops in-order chunks entirely before `t` (they have been persisted).
    pub fn truncate_before(&mut self, t: i64) {
        self.chunks.retain(|c| c.max_time >= t);
        if self.cutter.max_time().is_some_and(|m| m < t) {
            self.cutter.finish();
        }
    }
}

/// Decides where `(t, v)` goes given the last in-order sample, following Prometheus's
/// `memSeries.appendable`; `Err` carries the rejection.
pub(crate) fn placement(
    last: Option<(i64, u64)>,
    t: i64,
    v: f64,
    min_valid: i64,
    head_max: i64,
    ooo_window: i64,
) -> Result<Placement, super::AppendError> {
    use super::AppendError;
    if t >= min_valid {
        match last {
            None => return Ok(Placement::InOrder),
            Some((lt, _)) if t > lt => return Ok(Placement::InOrder),
            Some((lt, lv)) if t == lt => {
                return if lv == v.to_bits() {
                    Ok(Placement::Duplicate)
                } else {
                    Err(AppendError::DuplicateSampleForTimestamp)
                };
            }
            Some(_) => {}
        }
    }
    if ooo_window > 0 {
        if t >= head_max.saturating_sub(ooo_window) {
            return Ok(Placement::OutOfOrder);
        }
        return Err(AppendError::TooOldForOutOfOrderWindow);
    }
    if t < min_valid {
        return Err(AppendError::OutOfBounds);
    }
    Err(AppendError::OutOfOrder)
}

/// Series by label hash; hash collisions share a bucket.
type HashBucket = HashMap<u64, Vec<Arc<MemSeries>>>;
type RefMap = HashMap<u64, Arc<MemSeries>>;

/// Series found by label hash and by ref, each map split into lock stripes.
#[derive(Debug)]
pub(crate) struct StripeSeries {
    mask: u64,
    hashes: Box<[RwLock<HashBucket>]>,
    refs: Box<[RwLock<RefMap>]>,
}

impl StripeSeries {
    pub fn new(stripes: usize) -> Self {
        let n = stripes.max(1).next_power_of_two();
        StripeSeries {
            mask: n as u64 - 1,
            hashes: (0..n).map(|_| RwLock::new(HashMap::new())).collect(),
            refs: (0..n).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    pub fn get_by_ref(&self, r: u64) -> Option<Arc<MemSeries>> {
        self.refs[(r & self.mask) as usize].read().get(&r).cloned()
    }

    /// Finds the series with `labels`, creating it with `new_ref()` if absent. When
    /// `pin` is set the series' pending counter is raised before the stripe lock is
    /// released, so garbage collection cannot remove it under the caller.
    pub fn get_or_create(
        &self,
        labels: &Labels,
        pin: bool,
        new_ref: impl FnOnce() -> u64,
        make: impl FnOnce(u64) -> MemSeries,
    ) -> (Arc<MemSeries>, bool) {
        let h = labels.hash_value();
        let stripe = &self.hashes[(h & self.mask) as usize];
        {
            let g = stripe.read();
            if let Some(s) = g.get(&h).and_then(|v| v.iter().find(|s| &s.labels == labels)) {
                if pin {
                    s.pending.fetch_add(1, Ordering::AcqRel);
                }
                return (s.clone(), false);
            }
        }
        let mut g = stripe.write();
        let bucket = g.entry(h).or_default();
        if let Some(s) = bucket.iter().find(|s| &s.labels == labels) {
            if pin {
                s.pending.fetch_add(1, Ordering::AcqRel);
            }
            return (s.clone(), false);
        }
        let r = new_ref();
        let s = Arc::new(make(r));
        if pin {
            s.pending.fetch_add(1, Ordering::AcqRel);
        }
        bucket.push(s.clone());
        self.refs[(r & self.mask) as usize].write().insert(r, s.clone());
        (s, true)
    }

    /// Every series (a snapshot of the maps).
    pub fn all(&self) -> Vec<Arc<MemSeries>> {
        let mut out = Vec::new();
        for st in self.refs.iter() {
            out.extend(st.read().values().cloned());
        }
        out
    }

    pub fn len(&self) -> usize {
        self.refs.iter().map(|s| s.read().len()).sum()
    }

    /// Removes series for which `dead` holds (checked under the hash-stripe write lock
    /// so no appender can pin it concurrently). Returns how many were removed.
    pub fn gc(&self, dead: impl Fn(&MemSeries) -> bool) -> usize {
        let mut removed = 0;
        for stripe in self.hashes.iter() {
            let mut g = stripe.write();
            g.retain(|_, bucket| {
                bucket.retain(|s| {
                    if s.pending.load(Ordering::Acquire) == 0 && dead(s) {
                        self.refs[(s.series_ref & self.mask) as usize].write().remove(&s.series_ref);
                        removed += 1;
                        false
                    } else {
                        true
                    }
                });
                !bucket.is_empty()
            });
        }
        removed
    }
}

/// Decodes every sample of `chunks` and `ooo` into one sorted list; on equal
/// timestamps the in-order sample wins. Used to re-encode a series that has OOO data.
pub(crate) fn merge_samples(chunks: &[ChunkMeta], ooo: &[(i64, f64)]) -> Vec<(i64, f64)> {
    let mut inorder = Vec::new();
    for c in chunks {
        if let Ok(it) = c.chunk.iter() {
            for s in it {
                if let Sample::Float(t, v) = s {
                    inorder.push((t, v));
                }
            }
        }
    }
    let mut out = Vec::with_capacity(inorder.len() + ooo.len());
    let (mut i, mut j) = (0, 0);
    while i < inorder.len() || j < ooo.len() {
        let take_in = j >= ooo.len() || (i < inorder.len() && inorder[i].0 <= ooo[j].0);
        if take_in {
            if j < ooo.len() && ooo[j].0 == inorder[i].0 {
                j += 1;
            }
            out.push(inorder[i]);
            i += 1;
        } else {
            out.push(ooo[j]);
            j += 1;
        }
    }
    out
}
