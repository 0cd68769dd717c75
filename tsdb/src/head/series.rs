//! One in-memory series of the head and the lock-striped maps that find it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use norn_model::Labels;
use parking_lot::{Mutex, RwLock};

use norn_model::{FloatHistogram, Histogram};

use super::builder::ChunkBuilder;
use crate::chunkenc::{Chunk, Encoding, Sample, XorChunk};
use crate::chunks::ChunkMeta;
use crate::wal::record;

/// Samples per chunk when OOO samples are encoded for queries.
const OOO_CHUNK_SAMPLES: usize = 120;

/// A head series. Its data sits behind its own mutex so appends to different series
/// never contend.
///
/// `repr(C)`, in this order: every append touches the labels (lookup), the counters and
/// the data lock, which then share the cache line of the `Arc`'s count instead of
/// costing a miss each on a line after the series data.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct MemSeries {
    pub labels: Labels,
    pub series_ref: u64,
    /// Bumped, under the data lock (or after its exemplar is stored), by every commit
    /// that changes the series: an appender that saw the same value when checking its
    /// samples knows the checks still hold at commit.
    pub version: AtomicU64,
    /// Appenders holding uncommitted samples for it; garbage collection skips it then.
    pub pending: AtomicU32,
    /// Whether a series record for it is in the WAL; set under the WAL lock so the
    /// record always precedes the first samples record that refers to it.
    pub logged: AtomicBool,
    pub data: Mutex<SeriesData>,
    /// Epoch (high half) and position (low half) of the series in a ranking of the head's
    /// series by labels (see `order`); [`NO_RANK`](super::order::NO_RANK) before any.
    pub rank: AtomicU64,
}

/// The newest in-order sample's value, for duplicate detection.
#[derive(Debug, Clone)]
pub(crate) enum LastValue {
    Float(u64),
    Histogram(Box<Histogram>),
    FloatHistogram(Box<FloatHistogram>),
}

/// A sample value being appended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Incoming<'a> {
    Float(f64),
    Histogram(&'a Histogram),
    FloatHistogram(&'a FloatHistogram),
}

impl Incoming<'_> {
    pub fn to_last(self) -> LastValue {
        match self {
            Incoming::Float(v) => LastValue::Float(v.to_bits()),
            Incoming::Histogram(h) => LastValue::Histogram(Box::new(h.clone())),
            Incoming::FloatHistogram(h) => LastValue::FloatHistogram(Box::new(h.clone())),
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Incoming::Float(_))
    }
}

impl LastValue {
    /// Bit-for-bit equality, as Prometheus's duplicate check (`Float64bits`, `Equals`).
    fn same(&self, v: Incoming<'_>) -> bool {
        match (self, v) {
            (LastValue::Float(a), Incoming::Float(b)) => *a == b.to_bits(),
            (LastValue::Histogram(a), Incoming::Histogram(b)) => {
                histogram_bytes(|o| record::encode_histogram(a, o))
                    == histogram_bytes(|o| record::encode_histogram(b, o))
            }
            (LastValue::FloatHistogram(a), Incoming::FloatHistogram(b)) => {
                histogram_bytes(|o| record::encode_float_histogram(a, o))
                    == histogram_bytes(|o| record::encode_float_histogram(b, o))
            }
            _ => false,
        }
    }
}

fn histogram_bytes(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::new();
    f(&mut v);
    v
}

/// The mutable part of a series.
#[derive(Debug)]
pub(crate) struct SeriesData {
    /// In-order chunks: completed ones and the open one.
    pub chunks: ChunkBuilder,
    /// Last in-order sample.
    pub last: Option<(i64, LastValue)>,
    /// Out-of-order float samples accepted through the OOO window, by time.
    pub ooo: BTreeMap<i64, f64>,
    /// Deleted intervals (closed, sorted, coalesced), from `Head::delete` or WAL
    /// tombstone records.
    pub deleted: Vec<(i64, i64)>,
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
            chunks: ChunkBuilder::new(chunk_range, samples_per_chunk),
            last: None,
            ooo: BTreeMap::new(),
            deleted: Vec::new(),
        }
    }

    /// Appends an in-order sample (the caller has checked `t > last`). A malformed
    /// histogram is dropped (appenders reject those up front).
    pub fn append(&mut self, t: i64, v: Incoming<'_>) {
        let ok = match v {
            Incoming::Float(f) => {
                self.chunks.append_float(t, f);
                true
            }
            Incoming::Histogram(h) => self.chunks.append_histogram(t, h).is_ok(),
            Incoming::FloatHistogram(h) => self.chunks.append_float_histogram(t, h).is_ok(),
        };
        if ok {
            self.last = Some((t, v.to_last()));
        }
    }

    /// The in-order sample at exactly `t`, if any: `Some(Some(bits))` for a float,
    /// `Some(None)` for a histogram. Decodes at most one chunk; used for OOO appends so a
    /// timestamp never holds two values.
    pub fn inorder_at(&self, t: i64) -> Option<Option<u64>> {
        let open = self.chunks.open_chunk();
        let c = self
            .chunks
            .closed
            .iter()
            .find(|c| c.min_time <= t && t <= c.max_time)
            .or_else(|| open.as_ref().filter(|c| c.min_time <= t && t <= c.max_time))?;
        c.chunk.iter().ok()?.find(|s| s.timestamp() == t).map(|s| match s {
            Sample::Float(_, v) => Some(v.to_bits()),
            _ => None,
        })
    }

    /// Whether nothing is left in memory.
    pub fn is_empty(&self) -> bool {
        self.chunks.closed.is_empty() && self.chunks.open_max_time().is_none() && self.ooo.is_empty()
    }

    /// Earliest in-order timestamp held.
    pub fn min_time(&self) -> Option<i64> {
        self.chunks.closed.first().map(|c| c.min_time).or_else(|| self.chunks.open_chunk().map(|c| c.min_time))
    }

    /// All in-order chunks (closed and a copy of the open one) overlapping `[mint, maxt]`.
    /// `&mut`: the copy of the open chunk is kept for the next reader (see
    /// [`ChunkBuilder::open_snapshot`]).
    pub fn chunks_in(&mut self, mint: i64, maxt: i64, out: &mut Vec<ChunkMeta>) {
        self.closed_in(mint, maxt, out);
        if self.chunks.open_max_time().is_some_and(|m| m >= mint)
            && let Some(open) = self.chunks.open_snapshot()
            && open.min_time <= maxt
        {
            out.push(open);
        }
    }

    /// [`SeriesData::chunks_in`] for one-off readers (compaction): the open chunk's copy
    /// is not kept, so idle series do not hold a second copy until truncation.
    pub fn chunks_in_once(&self, mint: i64, maxt: i64, out: &mut Vec<ChunkMeta>) {
        self.closed_in(mint, maxt, out);
        if self.chunks.open_max_time().is_some_and(|m| m >= mint)
            && let Some(open) = self.chunks.open_chunk()
            && open.min_time <= maxt
        {
            out.push(open);
        }
    }

    /// The in-order chunks overlapping `[mint, maxt]`, borrowed: the closed ones and the
    /// kept copy of the open one (see [`SeriesData::chunks_in`]), in time order, when
    /// they are all that [`SeriesData::chunks_in`] and [`SeriesData::ooo_chunks_in`]
    /// give and no interval is deleted; `None` otherwise (the caller then takes copies).
    pub fn plain_chunks_in(&mut self, mint: i64, maxt: i64) -> Option<(&[ChunkMeta], Option<&ChunkMeta>)> {
        if !self.deleted.is_empty() || (mint <= maxt && self.ooo.range(mint..=maxt).next().is_some()) {
            return None;
        }
        let with_open = self.chunks.open_max_time().is_some_and(|m| m >= mint);
        let (closed, open) = self.chunks.closed_and_snapshot(with_open);
        let open = open.filter(|o| o.min_time <= maxt);
        // In-order chunks hold strictly increasing times, so both bounds are monotonic
        // and the overlapping chunks are one run.
        let from = closed.partition_point(|c| c.max_time < mint);
        let to = from + closed[from..].partition_point(|c| c.min_time <= maxt);
        Some((&closed[from..to], open))
    }

    fn closed_in(&self, mint: i64, maxt: i64, out: &mut Vec<ChunkMeta>) {
        out.extend(self.chunks.closed.iter().filter(|c| c.max_time >= mint && c.min_time <= maxt).cloned());
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
        self.chunks.closed.retain(|c| c.max_time >= t);
        self.deleted.retain(|iv| iv.1 >= t);
        if self.chunks.open_max_time().is_some_and(|m| m < t) {
            self.chunks.drop_open();
        }
    }
}

/// Decides where a sample goes given the last in-order sample, following Prometheus's
/// `memSeries.appendable`; `Err` carries the rejection. Histograms are in-order only.
pub(crate) fn placement(
    last: Option<(i64, &LastValue)>,
    t: i64,
    v: Incoming<'_>,
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
                return if lv.same(v) {
                    Ok(Placement::Duplicate)
                } else {
                    Err(AppendError::DuplicateSampleForTimestamp)
                };
            }
            Some(_) => {}
        }
    }
    if ooo_window > 0 && v.is_float() {
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

/// Hasher for maps keyed by u64 label hashes or series refs: one folded multiply
/// instead of SipHash (keys are not attacker-chosen in a way that matters here, and the
/// label hash is already xxhash).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct U64Hasher(u64);

impl std::hash::Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let p = u128::from(x) * 0x9E37_79B9_7F4A_7C15u128;
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
}

/// A `HashMap` keyed by u64 using [`U64Hasher`].
pub(crate) type U64Map<V> = HashMap<u64, V, std::hash::BuildHasherDefault<U64Hasher>>;

/// The series of one hash stripe with their label hashes: a short vector (with 16384
/// stripes most hold a few entries) scanned by hash, which costs fewer dependent memory
/// loads per lookup than a map.
type HashBucket = Vec<(u64, Arc<MemSeries>)>;
type RefMap = U64Map<Arc<MemSeries>>;

/// Series found by label hash and by ref, each map split into lock stripes.
#[derive(Debug)]
pub(crate) struct StripeSeries {
    mask: u64,
    hashes: Box<[RwLock<HashBucket>]>,
    refs: Box<[RwLock<RefMap>]>,
    /// Series in the maps, kept as they change: counting the stripes costs a lock each,
    /// more than answering a small Series request that asks for the head's size.
    count: std::sync::atomic::AtomicUsize,
}

impl StripeSeries {
    pub fn new(stripes: usize) -> Self {
        let n = stripes.max(1).next_power_of_two();
        StripeSeries {
            mask: n as u64 - 1,
            hashes: (0..n).map(|_| RwLock::new(HashBucket::new())).collect(),
            refs: (0..n).map(|_| RwLock::new(RefMap::default())).collect(),
            count: Default::default(),
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
        let find = |b: &HashBucket| b.iter().find(|(eh, s)| *eh == h && &s.labels == labels).map(|(_, s)| s.clone());
        if let Some(s) = find(&stripe.read()) {
            if pin {
                s.pending.fetch_add(1, Ordering::AcqRel);
            }
            return (s, false);
        }
        let mut g = stripe.write();
        if let Some(s) = find(&g) {
            if pin {
                s.pending.fetch_add(1, Ordering::AcqRel);
            }
            return (s, false);
        }
        let r = new_ref();
        let s = Arc::new(make(r));
        if pin {
            s.pending.fetch_add(1, Ordering::AcqRel);
        }
        g.push((h, s.clone()));
        self.refs[(r & self.mask) as usize].write().insert(r, s.clone());
        self.count.fetch_add(1, Ordering::Relaxed);
        (s, true)
    }

    /// The series with `labels`, if any, its pending counter raised (see
    /// [`StripeSeries::get_or_create`]).
    pub fn get_pinned(&self, labels: &Labels) -> Option<Arc<MemSeries>> {
        let h = labels.hash_value();
        let g = self.hashes[(h & self.mask) as usize].read();
        let s = g.iter().find(|(eh, s)| *eh == h && &s.labels == labels).map(|(_, s)| s.clone())?;
        s.pending.fetch_add(1, Ordering::AcqRel);
        Some(s)
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
        self.count.load(Ordering::Relaxed)
    }

    /// Removes series for which `dead` holds (checked under the hash-stripe write lock
    /// so no appender can pin it concurrently). Returns the removed refs and labels.
    pub fn gc(&self, dead: impl Fn(&MemSeries) -> bool) -> Vec<(u64, Labels)> {
        let mut removed = Vec::new();
        for stripe in self.hashes.iter() {
            let mut g = stripe.write();
            g.retain(|(_, s)| {
                if s.pending.load(Ordering::Acquire) == 0 && dead(s) {
                    self.refs[(s.series_ref & self.mask) as usize].write().remove(&s.series_ref);
                    self.count.fetch_sub(1, Ordering::Relaxed);
                    removed.push((s.series_ref, s.labels.clone()));
                    false
                } else {
                    true
                }
            });
        }
        removed
    }
}

/// Decodes every sample of `chunks` and `ooo` into one time-ordered list; on equal
/// timestamps the in-order sample wins. Used to re-cut a series that has OOO data.
pub(crate) fn merge_samples(chunks: &[ChunkMeta], ooo: &[(i64, f64)]) -> Vec<Sample> {
    let mut inorder = Vec::new();
    for c in chunks {
        if let Ok(it) = c.chunk.iter() {
            inorder.extend(it);
        }
    }
    let mut out = Vec::with_capacity(inorder.len() + ooo.len());
    let mut oi = ooo.iter().peekable();
    for s in inorder {
        let t = s.timestamp();
        while let Some(&&(ot, ov)) = oi.peek() {
            if ot > t {
                break;
            }
            if ot < t {
                out.push(Sample::Float(ot, ov));
            }
            oi.next();
        }
        out.push(s);
    }
    out.extend(oi.map(|&(t, v)| Sample::Float(t, v)));
    out
}
