//! The in-memory head block: appendable series backed by the WAL, cut into persisted
//! blocks by [`Head::compact`].
//!
//! Series live in lock-striped maps (by label hash and by ref) and each has its own
//! mutex, so appends to different series do not contend. An [`Appender`] validates
//! samples against the committed state, then on commit writes series and samples
//! records to the WAL (series records always before samples that refer to them) and only
//! then makes the samples visible. What a commit logs is exactly what it stores: the
//! append-time checks are kept when none of the batch's series changed since (per-series
//! versions), else each sample's placement is decided again under the WAL lock before
//! logging; samples dropped then are neither logged nor applied.
//!
//! Differences from Prometheus's head, on purpose or not yet done: all chunks stay in
//! memory (no `chunks_head/` m-mapping, no chunk snapshots), so restart replays the WAL;
//! OOO float samples are logged in the WAL as ordinary sample records rather than in a
//! WBL (a Prometheus replaying our WAL drops them as out of order); native histograms
//! are in-order only; metadata records are neither written nor replayed.
//!
//! Exemplars (when `max_exemplars > 0`) live in the head's circular
//! [`ExemplarStorage`]; [`Appender::append_exemplar`] logs them in Prometheus's
//! exemplar records after the commit's samples, replay puts them back, and checkpoints
//! keep those of live series at or after the checkpoint's cut-off.

mod appender;
mod builder;
mod cutter;
mod order;
mod postings;
mod series;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use norn_model::{Labels, Matcher};
use parking_lot::Mutex;

use crate::block::BlockWriter;
use crate::chunks::ChunkMeta;
use crate::exemplar::{Exemplar, ExemplarStorage};
use crate::meta::{BlockMeta, BlockMetaCompaction};
use crate::series::Series;
use crate::tombstones::{add_interval, is_deleted};
use crate::wal::record::{self, Record};
use crate::wal::{self, Truncation, Wal, WalOptions};
use crate::{Result, TsdbError};

pub use appender::{Appender, CommitStats};
pub use cutter::{ChunkCutter, DEFAULT_SAMPLES_PER_CHUNK, compute_chunk_end_time, range_for_timestamp};

use builder::ChunkBuilder;
use order::Ranking;
use postings::MemPostings;
use series::{Incoming, MemSeries, SeriesData, StripeSeries, merge_samples};

/// Prometheus's default block duration and head chunk range: 2 hours.
pub const DEFAULT_CHUNK_RANGE: i64 = 2 * 60 * 60 * 1000;

/// Head settings.
#[derive(Debug, Clone, Copy)]
pub struct HeadOptions {
    /// Chunk range = level-1 block duration, in ms (2h by default).
    pub chunk_range: i64,
    /// Target samples per float chunk (120).
    pub samples_per_chunk: usize,
    /// Out-of-order window in ms; 0 disables OOO ingestion (the default).
    pub out_of_order_time_window: i64,
    /// Number of lock stripes (rounded up to a power of two).
    pub stripe_size: usize,
    /// Samples before this time belong to persisted blocks and are rejected as
    /// out of bounds (and skipped on replay). The `Db` sets it to the newest block's end.
    pub min_valid_time: i64,
    /// WAL writer settings (compression, sync policy, segment size).
    pub wal: WalOptions,
    /// Capacity of the exemplar buffer shared by all series; 0 (the default) disables
    /// exemplar storage (exemplar records in the WAL are then skipped).
    pub max_exemplars: usize,
}

impl Default for HeadOptions {
    fn default() -> Self {
        HeadOptions {
            chunk_range: DEFAULT_CHUNK_RANGE,
            samples_per_chunk: DEFAULT_SAMPLES_PER_CHUNK,
            out_of_order_time_window: 0,
            stripe_size: 16384,
            min_valid_time: i64::MIN,
            wal: WalOptions::default(),
            max_exemplars: 0,
        }
    }
}

/// Why a sample was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// Older than the series' newest sample, and OOO ingestion is off.
    #[error("out of order sample")]
    OutOfOrder,
    /// Older than the appendable window (`max(head max time − chunk_range/2, min valid
    /// time)`), and OOO ingestion is off.
    #[error("out of bounds")]
    OutOfBounds,
    /// Same timestamp as the newest sample but a different value.
    #[error("duplicate sample for timestamp")]
    DuplicateSampleForTimestamp,
    /// OOO ingestion is on but the sample is older than the window allows.
    #[error("too old sample")]
    TooOldForOutOfOrderWindow,
    /// The label set is empty.
    #[error("empty label set")]
    EmptyLabels,
    /// A native histogram whose spans and buckets disagree.
    #[error("invalid histogram: {0}")]
    InvalidHistogram(&'static str),
}

/// One head series found by [`Head::select_lazy`]; its chunks are read when asked for.
#[derive(Debug, Clone)]
pub struct HeadSeries(Arc<MemSeries>);

impl HeadSeries {
    /// The series' labels.
    pub fn labels(&self) -> &Labels {
        &self.0.labels
    }

    /// The chunks overlapping `[mint, maxt]` as they are now (see [`Head::select`]);
    /// `None` when there are none.
    pub fn series(&self, mint: i64, maxt: i64) -> Option<Series> {
        let mut chunks = Vec::new();
        let deleted = {
            let mut d = self.0.data.lock();
            d.chunks_in(mint, maxt, &mut chunks);
            d.ooo_chunks_in(mint, maxt, &mut chunks);
            d.deleted.clone()
        };
        // Chunks wholly deleted are left out, as blocks do.
        chunks.retain(|c| !deleted.iter().any(|&(a, b)| a <= c.min_time && c.max_time <= b));
        if chunks.is_empty() {
            return None;
        }
        chunks.sort_by_key(|c| c.min_time);
        Some(Series { labels: self.0.labels.clone(), chunks, deleted })
    }

    /// Calls `f` with the chunks [`HeadSeries::series`] would copy out (closed ones, then
    /// the open one), borrowed under the series' lock, when there is nothing to merge or
    /// filter: no OOO samples in the range and no deleted interval. `None` (and `f` not
    /// called) otherwise. For readers that copy the bytes anyway: `f` should be short, as
    /// appends to this series wait for it.
    pub fn with_plain_chunks<R>(
        &self,
        mint: i64,
        maxt: i64,
        f: impl FnOnce(&[ChunkMeta], Option<&ChunkMeta>) -> R,
    ) -> Option<R> {
        let mut d = self.0.data.lock();
        let (closed, open) = d.plain_chunks_in(mint, maxt)?;
        Some(f(closed, open))
    }
}

/// What [`Head::open`] found in the WAL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Checkpoint replayed first, if any.
    pub checkpoint: Option<u32>,
    /// WAL segments read (after the checkpoint).
    pub segments: usize,
    /// Records read (checkpoint and segments).
    pub records: u64,
    /// Series created.
    pub series: u64,
    /// Samples applied.
    pub samples: u64,
    /// Samples dropped: unknown series ref, older than the min valid time, out of order.
    pub dropped_samples: u64,
    /// Exemplars put back into the exemplar storage.
    pub exemplars: u64,
    /// Exemplars not put back: unknown series ref, storage disabled, out of order.
    pub dropped_exemplars: u64,
    /// Records of types the head does not replay (metadata, mmap markers …).
    pub skipped_records: u64,
    /// The damaged tail cut off the newest segment, if any.
    pub truncated: Option<Truncation>,
}

/// The in-memory head block. `Send + Sync`; appenders and queries may run concurrently
/// with each other and with compaction.
#[derive(Debug)]
pub struct Head {
    dir: PathBuf,
    opts: HeadOptions,
    series: StripeSeries,
    postings: MemPostings,
    next_ref: AtomicU64,
    /// In-order sample time range; `i64::MAX`/`i64::MIN` while empty.
    min_time: AtomicI64,
    max_time: AtomicI64,
    min_valid_time: AtomicI64,
    /// Earliest OOO sample held (`i64::MAX` if none).
    ooo_min_time: AtomicI64,
    /// `None` only while replaying.
    wal: Mutex<Option<Wal>>,
    compaction: Mutex<()>,
    replay: ReplayStats,
    /// Distinct series of the last committed batch: new appenders pre-size for it.
    batch_hint: AtomicUsize,
    /// Exemplars of all series, newest `max_exemplars` kept.
    exemplars: ExemplarStorage,
    /// The series' label order as ranks, for sorting selects.
    ranking: Arc<Ranking>,
}

impl Head {
    /// Opens the head of the database in `dir`: replays `dir/wal` (checkpoint first, then
    /// later segments; a torn tail of the newest segment is cut off and reported), then
    /// opens the WAL for appending in a fresh segment.
    pub fn open(dir: &Path, opts: HeadOptions) -> Result<Head> {
        let wal_dir = dir.join("wal");
        std::fs::create_dir_all(&wal_dir).map_err(TsdbError::io("create dir", &wal_dir))?;
        let opts = HeadOptions { chunk_range: opts.chunk_range.max(1), ..opts };
        let mut head = Head {
            dir: dir.to_path_buf(),
            opts,
            series: StripeSeries::new(opts.stripe_size),
            postings: MemPostings::default(),
            next_ref: AtomicU64::new(1),
            min_time: AtomicI64::new(i64::MAX),
            max_time: AtomicI64::new(i64::MIN),
            min_valid_time: AtomicI64::new(opts.min_valid_time),
            ooo_min_time: AtomicI64::new(i64::MAX),
            // Opened after replay, which may first have to repair the newest segment.
            wal: Mutex::new(None),
            compaction: Mutex::new(()),
            replay: ReplayStats::default(),
            batch_hint: AtomicUsize::new(0),
            exemplars: ExemplarStorage::new(opts.max_exemplars),
            ranking: Arc::default(),
        };
        let stats = head.replay_wal(&wal_dir)?;
        *head.wal.get_mut() = Some(Wal::open(&wal_dir, opts.wal)?);
        tracing::info!(
            checkpoint = ?stats.checkpoint,
            segments = stats.segments,
            series = stats.series,
            samples = stats.samples,
            dropped_samples = stats.dropped_samples,
            exemplars = stats.exemplars,
            truncated = ?stats.truncated,
            "WAL replay completed"
        );
        head.replay = stats;
        Ok(head)
    }

    /// Pads and syncs the WAL. Dropping the head also pads, but cannot report errors.
    pub fn close(self) -> Result<()> {
        match self.wal.into_inner() {
            Some(w) => w.close(),
            None => Ok(()),
        }
    }

    /// What replay found.
    pub fn replay_stats(&self) -> &ReplayStats {
        &self.replay
    }

    /// The exemplar buffer (capacity 0 when exemplar storage is off). Add exemplars
    /// through [`Appender::append_exemplar`] so they are logged.
    pub fn exemplars(&self) -> &ExemplarStorage {
        &self.exemplars
    }

    /// The settings.
    pub fn options(&self) -> &HeadOptions {
        &self.opts
    }

    /// The WAL directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.dir.join("wal")
    }

    /// What the WAL has written since the head was opened (zero once closed).
    pub fn wal_stats(&self) -> wal::WalStats {
        self.wal.lock().as_ref().map(Wal::stats).unwrap_or_default()
    }

    /// A new appender; samples become visible on [`Appender::commit`].
    pub fn appender(&self) -> Appender<'_> {
        Appender::new(self)
    }

    /// Earliest in-order sample time, `i64::MAX` when empty.
    pub fn min_time(&self) -> i64 {
        self.min_time.load(Ordering::Acquire)
    }

    /// Latest in-order sample time, `i64::MIN` when empty.
    pub fn max_time(&self) -> i64 {
        self.max_time.load(Ordering::Acquire)
    }

    /// Samples before this time are out of bounds (persisted already).
    pub fn min_valid_time(&self) -> i64 {
        self.min_valid_time.load(Ordering::Acquire)
    }

    /// Number of series in memory.
    pub fn num_series(&self) -> usize {
        self.series.len()
    }

    /// Prometheus's `appendableMinValidTime`: samples may lag the newest one by at most
    /// half a chunk range, and never reach into persisted blocks.
    pub(crate) fn appendable_min_valid_time(&self) -> i64 {
        let max = self.max_time();
        let mv = self.min_valid_time();
        if max == i64::MIN { mv } else { mv.max(max.saturating_sub(self.opts.chunk_range / 2)) }
    }

    fn new_series(&self, r: u64, labels: &Labels) -> MemSeries {
        MemSeries {
            series_ref: r,
            labels: labels.clone(),
            logged: AtomicBool::new(false),
            pending: AtomicU32::new(0),
            version: AtomicU64::new(0),
            data: Mutex::new(SeriesData::new(self.opts.chunk_range, self.opts.samples_per_chunk)),
            rank: AtomicU64::new(order::NO_RANK),
        }
    }

    pub(crate) fn get_or_create(&self, labels: &Labels, pin: bool) -> (Arc<MemSeries>, bool) {
        let (s, created) = self.series.get_or_create(
            labels,
            pin,
            || self.next_ref.fetch_add(1, Ordering::AcqRel),
            |r| self.new_series(r, labels),
        );
        if created {
            self.postings.add(s.series_ref, &s.labels);
            self.ranking.note_created();
        }
        (s, created)
    }

    /// Label names of the head's series, sorted.
    pub fn label_names(&self) -> Vec<String> {
        self.postings.label_names()
    }

    /// Values of label `name` across the head's series, sorted.
    pub fn label_values(&self, name: &str) -> Vec<String> {
        self.postings.label_values(name)
    }

    /// Series matching `matchers`, narrowed through the postings where possible.
    fn matching(&self, matchers: &[Matcher]) -> Vec<Arc<MemSeries>> {
        let cands = match self.postings.candidates(matchers) {
            Some(refs) => refs.into_iter().filter_map(|r| self.series.get_by_ref(r)).collect(),
            None => self.series.all(),
        };
        cands.into_iter().filter(|s| matchers.iter().all(|m| m.matches(s.labels.get(&m.name).unwrap_or("")))).collect()
    }

    pub(crate) fn note_in_order(&self, mint: i64, maxt: i64) {
        self.min_time.fetch_min(mint, Ordering::AcqRel);
        self.max_time.fetch_max(maxt, Ordering::AcqRel);
    }

    pub(crate) fn note_ooo(&self, t: i64) {
        self.ooo_min_time.fetch_min(t, Ordering::AcqRel);
    }

    /// Logs the records `prepare` returns (after series records for `series` not yet
    /// logged), then runs `apply` with what `prepare` decided, all under the WAL lock:
    /// changes are decided and applied in exactly the order their records are in the
    /// WAL, so replay reproduces the same state.
    pub(crate) fn log_wal<P, R>(
        &self,
        series: &[Arc<MemSeries>],
        prepare: impl FnOnce() -> (Vec<Vec<u8>>, P),
        apply: impl FnOnce(P) -> R,
    ) -> Result<R> {
        let mut guard = self.wal.lock();
        let wal = guard.as_mut().ok_or_else(|| TsdbError::InvalidArgument("WAL not open".into()))?;
        // Checked and set under the WAL lock: whichever commit first carries a sample of
        // a new series writes its series record, before that sample.
        let new: Vec<record::RefSeries> = series
            .iter()
            // Load first: nearly every series is logged already, and a swap would
            // write its cache line on every commit.
            .filter(|s| !s.logged.load(Ordering::Acquire) && !s.logged.swap(true, Ordering::AcqRel))
            .map(|s| record::RefSeries { series_ref: s.series_ref, labels: s.labels.clone() })
            .collect();
        let (recs, decided) = prepare();
        let mut srec = Vec::new();
        if !new.is_empty() {
            record::encode_series(&new, &mut srec);
        }
        let mut all: Vec<&[u8]> = Vec::with_capacity(recs.len() + 1);
        if !srec.is_empty() {
            all.push(&srec);
        }
        all.extend(recs.iter().map(|r| r.as_slice()));
        if let Err(e) = wal.log(&all) {
            for s in series.iter().filter(|s| new.iter().any(|n| n.series_ref == s.series_ref)) {
                s.logged.store(false, Ordering::Release);
            }
            return Err(e);
        }
        Ok(apply(decided))
    }

    fn replay_wal(&mut self, wal_dir: &Path) -> Result<ReplayStats> {
        let mut stats = ReplayStats::default();
        // Every series record's ref (including refs whose labels were already known
        // under another ref) → series: one lock-free local lookup per sample.
        let mut by_ref: series::U64Map<Arc<MemSeries>> = series::U64Map::default();
        let mut from = 0;
        let this = &*self;
        let mut handle = |rec: &[u8], stats: &mut ReplayStats| -> Result<()> {
            let r = record::decode(rec)
                .map_err(|e| TsdbError::corrupt_at(wal_dir, e.offset as u64, format!("WAL record: {}", e.what)))?;
            match r {
                Record::Series(list) => {
                    for s in list {
                        if s.labels.is_empty() {
                            continue;
                        }
                        this.next_ref.fetch_max(s.series_ref.saturating_add(1), Ordering::AcqRel);
                        let (ms, created) = this.series.get_or_create(
                            &s.labels,
                            false,
                            || s.series_ref,
                            |r| this.new_series(r, &s.labels),
                        );
                        ms.logged.store(true, Ordering::Release);
                        if created {
                            this.postings.add(ms.series_ref, &ms.labels);
                            this.ranking.note_created();
                            stats.series += 1;
                        }
                        by_ref.insert(s.series_ref, ms);
                    }
                }
                Record::Samples(list) => {
                    for s in list {
                        this.replay_one(&by_ref, s.series_ref, s.t, Incoming::Float(s.v), stats);
                    }
                }
                Record::Tombstones(list) => {
                    for s in list {
                        if let Some(ms) = by_ref.get(&s.series_ref) {
                            add_interval(&mut ms.data.lock().deleted, (s.mint, s.maxt));
                        }
                    }
                }
                Record::Exemplars(list) => {
                    for e in list {
                        let added = by_ref.get(&e.series_ref).is_some_and(|ms| {
                            // Out of order or duplicate ones were refused when first
                            // appended too; only a disabled or smaller buffer differs.
                            this.exemplars
                                .add(&ms.labels, Exemplar { labels: e.labels, value: e.v, ts: e.t })
                                .unwrap_or(false)
                        });
                        if added {
                            stats.exemplars += 1;
                        } else {
                            stats.dropped_exemplars += 1;
                        }
                    }
                }
                Record::Histograms(list) => {
                    for s in list {
                        this.replay_one(&by_ref, s.series_ref, s.t, Incoming::Histogram(&s.h), stats);
                    }
                }
                Record::FloatHistograms(list) => {
                    for s in list {
                        this.replay_one(&by_ref, s.series_ref, s.t, Incoming::FloatHistogram(&s.fh), stats);
                    }
                }
                _ => stats.skipped_records += 1,
            }
            Ok(())
        };
        if let Some((n, cp)) = wal::last_checkpoint(wal_dir)? {
            stats.checkpoint = Some(n);
            from = n + 1;
            let st = wal::read_segments(&cp, 0, false, |rec| handle(rec, &mut stats))?;
            stats.records += st.records;
        }
        let st = wal::read_segments(wal_dir, from, true, |rec| handle(rec, &mut stats))?;
        stats.records += st.records;
        stats.segments = st.segments;
        stats.truncated = st.truncated;
        Ok(stats)
    }

    fn replay_one(
        &self,
        by_ref: &series::U64Map<Arc<MemSeries>>,
        r: u64,
        t: i64,
        v: Incoming<'_>,
        stats: &mut ReplayStats,
    ) {
        let Some(ms) = by_ref.get(&r) else {
            stats.dropped_samples += 1;
            return;
        };
        if self.replay_sample(ms, t, v) {
            stats.samples += 1;
        } else {
            stats.dropped_samples += 1;
        }
    }

    /// Applies one replayed sample: like a commit, but OOO samples are accepted whatever
    /// the window bound (they were accepted when first appended).
    fn replay_sample(&self, ms: &MemSeries, t: i64, v: Incoming<'_>) -> bool {
        let mut d = ms.data.lock();
        let ooo_ok = self.opts.out_of_order_time_window > 0 && matches!(v, Incoming::Float(_));
        let last_t = d.last.as_ref().map(|(lt, _)| *lt);
        if last_t.is_some_and(|lt| t == lt) {
            return true; // a duplicate; the first value stays, as when it was appended
        }
        if last_t.is_some_and(|lt| t < lt) || t < self.min_valid_time() {
            if let (true, Incoming::Float(f)) = (ooo_ok, v) {
                d.ooo.entry(t).or_insert(f);
                self.note_ooo(t);
                return true;
            }
            return false;
        }
        d.append(t, v);
        self.note_in_order(t, t);
        true
    }

    /// Series matching all `matchers` with their chunks overlapping `[mint, maxt]`
    /// (closed in-order chunks, a copy of the open chunk, and OOO samples as separate,
    /// possibly overlapping chunks), sorted by labels. Series without data in the range
    /// are left out.
    pub fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<Series> {
        self.select_lazy(matchers).iter().filter_map(|s| s.series(mint, maxt)).collect()
    }

    /// Series matching all `matchers`, sorted by labels, without reading any chunk:
    /// for streaming readers that fetch chunks series by series.
    pub fn select_lazy(&self, matchers: &[Matcher]) -> Vec<HeadSeries> {
        // The head holds one series per label set, so the order is total.
        let sorted = self.ranking.sort(self.matching(matchers), || self.series.all());
        sorted.into_iter().map(HeadSeries).collect()
    }

    /// Ranks the series by labels now, on this thread, once a running ranking is done
    /// (selects start rankings on their own when enough series are unranked).
    #[cfg(test)]
    pub(crate) fn rank_series_now(&self) {
        self.ranking.rank_now(|| self.series.all());
    }

    /// Deletes the samples in `[mint, maxt]` of every series matching `matchers` (all
    /// series if empty): logs a tombstones record to the WAL, then hides the samples
    /// from queries; compaction leaves them out of blocks. Returns how many series
    /// were affected.
    pub fn delete(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<usize> {
        if mint > maxt {
            return Ok(0);
        }
        let hits = self.matching(matchers);
        if hits.is_empty() {
            return Ok(0);
        }
        let stones: Vec<record::RefTombstone> =
            hits.iter().map(|s| record::RefTombstone { series_ref: s.series_ref, mint, maxt }).collect();
        let mut rec = Vec::new();
        record::encode_tombstones(&stones, &mut rec);
        self.log_wal(
            &hits,
            || (vec![rec], ()),
            |()| {
                for s in &hits {
                    add_interval(&mut s.data.lock().deleted, (mint, maxt));
                }
            },
        )?;
        Ok(hits.len())
    }

    /// Prometheus's rule (spec §10.2): the head spans more than 1.5 chunk ranges.
    pub fn compactable(&self) -> bool {
        let (min, max) = (self.min_time(), self.max_time());
        min != i64::MAX && max != i64::MIN && max.saturating_sub(min) > self.opts.chunk_range / 2 * 3
    }

    /// Persists what can be persisted into level-1 blocks under `blocks_dir`, drops it
    /// from memory and truncates the WAL (checkpoint). See [`Head::compact_with`].
    pub fn compact(&self, blocks_dir: &Path) -> Result<Vec<BlockMeta>> {
        self.compact_with(blocks_dir, |_| Ok(()))
    }

    /// Like [`Head::compact`], calling `on_block` after each block is written and
    /// before its data leaves memory, so a caller can make the block queryable first.
    ///
    /// While [`Head::compactable`], cuts the block `[head min time, next chunk-range
    /// boundary)`; OOO samples in that range are merged into it. Then OOO samples in
    /// already persisted ranges are written as separate blocks (one per chunk-range
    /// slot, hint `from-out-of-order`), which overlap older blocks and are merged at
    /// query time. Appends keep working throughout.
    pub fn compact_with(
        &self,
        blocks_dir: &Path,
        mut on_block: impl FnMut(&BlockMeta) -> Result<()>,
    ) -> Result<Vec<BlockMeta>> {
        let _guard = self.compaction.lock();
        if !self.compactable() && self.ooo_min_time.load(Ordering::Acquire) >= self.min_valid_time() {
            return Ok(Vec::new()); // nothing to persist: leave the WAL alone
        }
        // Everything appended from here on lands in segments the checkpoint won't fold.
        let fold_to = {
            let mut g = self.wal.lock();
            let w = g.as_mut().ok_or_else(|| TsdbError::InvalidArgument("WAL not open".into()))?;
            let cur = w.current_segment();
            w.next_segment()?;
            cur
        };
        let mut metas = Vec::new();
        let range = self.opts.chunk_range;
        while self.compactable() {
            let mint = self.min_time();
            let maxt = range_for_timestamp(mint, range);
            // No new in-order sample can land before maxt from now on.
            self.min_valid_time.fetch_max(maxt, Ordering::AcqRel);
            let snap = self.snapshot(maxt, true);
            if let Some(meta) = self.write_block(blocks_dir, &snap, mint.min(snap_min(&snap)), maxt, false)? {
                on_block(&meta)?;
                metas.push(meta);
            }
            self.truncate(&snap, maxt);
            if self.min_time() <= mint {
                break; // no progress (cannot happen unless the bookkeeping is off)
            }
        }
        // OOO samples below the min valid time can no longer join an in-order block.
        let mv = self.min_valid_time();
        while self.ooo_min_time.load(Ordering::Acquire) < mv {
            let lo = self.ooo_min_time.load(Ordering::Acquire);
            let end = range_for_timestamp(lo, range).min(mv);
            let start = end - range;
            let snap = self.snapshot(end, false);
            if let Some(meta) = self.write_block(blocks_dir, &snap, start.min(snap_min(&snap)), end, true)? {
                on_block(&meta)?;
                metas.push(meta);
            }
            self.truncate(&snap, end);
            if snap.is_empty() || self.ooo_min_time.load(Ordering::Acquire) <= lo {
                break;
            }
        }
        self.gc_and_checkpoint(fold_to)?;
        Ok(metas)
    }

    /// Per series: in-order chunks entirely before `maxt` (when `inorder`) and OOO
    /// samples before `maxt`.
    fn snapshot(&self, maxt: i64, inorder: bool) -> Vec<Snap> {
        let mut out = Vec::new();
        for s in self.series.all() {
            let d = s.data.lock();
            let mut chunks = Vec::new();
            if inorder {
                d.chunks_in_once(i64::MIN, maxt - 1, &mut chunks);
                // Chunks never cross a chunk-range boundary, hence never `maxt`.
                chunks.retain(|c| c.max_time < maxt);
            }
            let ooo: Vec<(i64, f64)> = d.ooo.range(..maxt).map(|(&t, &v)| (t, v)).collect();
            let deleted = d.deleted.clone();
            drop(d);
            if !chunks.is_empty() || !ooo.is_empty() {
                out.push(Snap { series: s, chunks, ooo, deleted });
            }
        }
        out.sort_by(|a, b| a.series.labels.cmp(&b.series.labels));
        out
    }

    fn write_block(
        &self,
        dir: &Path,
        snap: &[Snap],
        mint: i64,
        maxt: i64,
        from_ooo: bool,
    ) -> Result<Option<BlockMeta>> {
        if snap.is_empty() {
            return Ok(None);
        }
        let mut w = BlockWriter::new(dir, mint, maxt)?;
        if from_ooo {
            w.set_compaction(BlockMetaCompaction {
                level: 1,
                sources: vec![w.ulid()],
                hints: vec!["from-out-of-order".to_string()],
                ..Default::default()
            });
        }
        for s in snap {
            let hit = |c: &ChunkMeta| s.deleted.iter().any(|&(a, b)| a <= c.max_time && c.min_time <= b);
            if s.ooo.is_empty() && !s.chunks.iter().any(hit) {
                w.add_series(&s.series.labels, &s.chunks)?;
                continue;
            }
            // OOO samples may overlap in-order chunks and the block needs disjoint
            // chunks; deleted samples must go. Re-cut the merged, filtered samples like
            // the head would have.
            let mut b = ChunkBuilder::new(self.opts.chunk_range, self.opts.samples_per_chunk);
            for smp in merge_samples(&s.chunks, &s.ooo) {
                if !is_deleted(&s.deleted, smp.timestamp()) {
                    b.append_sample(&smp);
                }
            }
            let chunks = b.finish();
            if !chunks.is_empty() {
                w.add_series(&s.series.labels, &chunks)?;
            }
        }
        w.finish().map(Some)
    }

    /// Drops snapshotted data from memory: in-order chunks before `maxt`, and exactly
    /// the OOO samples that were written (ones that arrived meanwhile stay).
    fn truncate(&self, snap: &[Snap], maxt: i64) {
        for s in snap {
            let mut d = s.series.data.lock();
            if !s.chunks.is_empty() {
                d.truncate_before(maxt);
            }
            for (t, v) in &s.ooo {
                if d.ooo.get(t).is_some_and(|x| x.to_bits() == v.to_bits()) {
                    d.ooo.remove(t);
                }
            }
        }
        // Recompute the time ranges from what is left.
        let (mut min, mut ooo_min) = (i64::MAX, i64::MAX);
        for s in self.series.all() {
            let d = s.data.lock();
            if let Some(m) = d.min_time() {
                min = min.min(m);
            }
            if let Some((&t, _)) = d.ooo.first_key_value() {
                ooo_min = ooo_min.min(t);
            }
        }
        // A commit racing with the scan above may have lowered the values just before
        // these stores; the second pass puts such samples back in via fetch_min, and
        // later commits do their own fetch_min.
        self.min_time.store(min, Ordering::Release);
        self.ooo_min_time.store(ooo_min, Ordering::Release);
        for s in self.series.all() {
            let d = s.data.lock();
            if let Some(m) = d.min_time() {
                self.min_time.fetch_min(m, Ordering::AcqRel);
            }
            if let Some((&t, _)) = d.ooo.first_key_value() {
                self.ooo_min_time.fetch_min(t, Ordering::AcqRel);
            }
        }
    }

    fn gc_and_checkpoint(&self, fold_to: u32) -> Result<()> {
        // `gc` removes exactly the series `dead` accepts (it asks only for unpinned ones).
        let ranked_removed = std::sync::atomic::AtomicUsize::new(0);
        let removed = self.series.gc(|s| {
            let dead = s.data.lock().is_empty();
            if dead && self.ranking.is_ranked(s) {
                ranked_removed.fetch_add(1, Ordering::Relaxed);
            }
            dead
        });
        self.ranking.note_removed(ranked_removed.into_inner());
        self.postings.remove(&removed);
        let mint = self.min_valid_time().min(self.ooo_min_time.load(Ordering::Acquire));
        let stats = wal::create_checkpoint(
            &self.wal_dir(),
            fold_to,
            |r| self.series.get_by_ref(r).is_some(),
            mint,
            self.opts.wal.compression,
        )?;
        tracing::debug!(?stats, "WAL checkpoint created");
        Ok(())
    }
}

/// A series' data taken for a block.
#[derive(Debug)]
struct Snap {
    series: Arc<MemSeries>,
    chunks: Vec<ChunkMeta>,
    ooo: Vec<(i64, f64)>,
    deleted: Vec<(i64, i64)>,
}

fn snap_min(snap: &[Snap]) -> i64 {
    snap.iter()
        .flat_map(|s| s.chunks.first().map(|c| c.min_time).into_iter().chain(s.ooo.first().map(|o| o.0)))
        .min()
        .unwrap_or(i64::MAX)
}
