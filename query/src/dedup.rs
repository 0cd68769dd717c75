//! Merging of series from several endpoints and replica deduplication.
//!
//! Each endpoint's answer arrives as [`SeriesView`]s (labels and chunks still slices of the
//! received messages). They are k-way merged on their label strings with the replica labels
//! skipped, so a replica never builds a label set of its own: one [`Labels`] is built per
//! group of replicas.
//!
//! Replicas (series equal once the replica labels are removed) are deduplicated with
//! Thanos's penalty-based choice: both replicas are read in time order, the sample with
//! the smaller timestamp wins, and the replica not chosen must then skip ahead by twice
//! the gap between the last two chosen samples (5 s before any gap is known). This keeps
//! the sampling rate of the result that of one replica even when replicas' scrapes are
//! offset, and switches replicas across gaps. More than two replicas are chained:
//! `dedup(dedup(r0, r1), r2)`, replicas ordered by their labels.
//!
//! When the selection feeds a counter function (`rate`, `increase`, `irate`, `resets`),
//! a switch between replicas must not look like a counter reset: as Thanos does, at every
//! switch each replica whose current float value is below the last value returned is
//! raised by the difference, for the rest of the series.
//!
//! A replica series whose whole message is byte-identical to the series its group is
//! built from (stripped replica labels, same chunks: healthy replicas) carries nothing the
//! group lacks and is dropped without being parsed; endpoints other than the first send
//! their series unparsed for that ([`crate::seriesview::decode_response_lazy`]), and the
//! merge parses a series only when its bytes differ.
//!
//! Before any decoding, a replica's chunks that are byte-identical to a chunk of an earlier
//! replica (same time range and data) are dropped, as Thanos drops chunks with equal
//! hashes: replicas fed the same samples usually cut identical chunks, so RF=3 decodes
//! about as much as RF=1.

use std::cmp::Ordering;

use crate::seriesview::{ChunkHead, SeriesView, WireChunk};
use norn_model::{LabelError, Labels};
use norn_promql::StoredValue;

/// Penalty (ms) applied before any sample gap is known, as Thanos does.
const INITIAL_PENALTY: i64 = 5000;

/// Samples of one series, ascending by time.
pub type Samples = Vec<(i64, StoredValue)>;

/// Whether a selection feeding `func` reads its series as counters, as Thanos decides it
/// (`isCounter` in its dedup package): only then are replica switches adjusted.
pub fn is_counter_func(func: Option<&str>) -> bool {
    matches!(func, Some("rate" | "increase" | "irate" | "resets"))
}

fn is_replica(replica_labels: &[String], name: &str) -> bool {
    replica_labels.iter().any(|r| r == name)
}

/// A series' labels without the replica labels: what its replicas share.
fn key_of<'v>(s: &'v SeriesView, rl: &'v [String]) -> impl Iterator<Item = (&'v str, &'v str)> + 'v {
    s.labels().filter(move |(n, _)| !is_replica(rl, n))
}

/// Only a series' replica labels.
fn replica_of<'v>(s: &'v SeriesView, rl: &'v [String]) -> impl Iterator<Item = (&'v str, &'v str)> + 'v {
    s.labels().filter(move |(n, _)| is_replica(rl, n))
}

/// A series' replica labels: as received, or for a source that stripped them, the ones its
/// Info label sets carry (no allocation: compared per group entry on the hot path).
fn replica_pairs<'v>(
    src: &'v Source,
    s: &'v SeriesView,
    rl: &'v [String],
) -> impl Iterator<Item = (&'v str, &'v str)> + 'v {
    let stripped = src.stripped;
    src.identity
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .filter(move |_| stripped)
        .chain(replica_of(s, rl).filter(move |_| !stripped))
}

/// The merge order of series: by labels without the replica labels (Prometheus's label
/// order), then by replica labels.
pub fn cmp_series(a: &SeriesView, b: &SeriesView, rl: &[String]) -> Ordering {
    if rl.is_empty() {
        return a.labels().cmp(b.labels());
    }
    key_of(a, rl).cmp(key_of(b, rl)).then_with(|| replica_of(a, rl).cmp(replica_of(b, rl)))
}

/// Checks what building the key and replica label sets used to check: no empty value, and
/// names non-empty, sorted and unique among the key labels and among the replica labels.
pub fn check_labels(s: &SeriesView, rl: &[String]) -> Result<(), String> {
    let (mut prev_key, mut prev_rep): (Option<&str>, Option<&str>) = (None, None);
    for (n, v) in s.labels() {
        if v.is_empty() {
            return Err(format!("empty value for label {n:?}"));
        }
        if n.is_empty() {
            return Err(LabelError::EmptyName.to_string());
        }
        let prev = if is_replica(rl, n) { &mut prev_rep } else { &mut prev_key };
        if let Some(p) = *prev {
            match p.cmp(n) {
                Ordering::Less => {}
                Ordering::Equal => return Err(LabelError::Duplicate(n.to_string()).to_string()),
                Ordering::Greater => {
                    return Err(LabelError::Unsorted { prev: p.to_string(), next: n.to_string() }.to_string());
                }
            }
        }
        *prev = Some(n);
    }
    Ok(())
}

/// A selection's bounds: its time range (chunks outside it are dropped from every series
/// read) and its sample limit, counted over all endpoints, replicas included: by the
/// fan-out for the series of sources read as they arrive ([`Source::counted`]), by the
/// merge for the others (a copy dropped unread counts the samples of the series it copies).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Start of the selection (ms).
    pub mint: i64,
    /// End of the selection (ms, inclusive).
    pub maxt: i64,
    /// Most samples the selection may decode; 0 means no limit.
    pub max_samples: usize,
    /// Samples already counted against `max_samples` before the merge (by the fan-out).
    pub counted: usize,
}

impl Limits {
    /// No range, no limit.
    pub const NONE: Limits = Limits { mint: i64::MIN, maxt: i64::MAX, max_samples: 0, counted: 0 };
}

/// Why a merge failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// A series of the source at index `source` did not decode or check out (the message
    /// names the endpoint): that endpoint's answer is unusable, as if its stream had failed.
    #[error("{message}")]
    Source {
        /// Index of the source in the merge's list.
        index: usize,
        /// What was wrong.
        message: String,
    },
    /// The selection holds more samples than [`Limits::max_samples`].
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
    /// Anything else (decoding a group's chunks).
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for MergeError {
    fn from(s: String) -> Self {
        MergeError::Invalid(s)
    }
}

/// Samples a chunk's header announces (all encodings start with a BE16 count).
pub fn header_count(data: &[u8]) -> usize {
    if data.len() >= 2 { usize::from(u16::from_be_bytes([data[0], data[1]])) } else { 0 }
}

/// Samples a chunk counts against the limit (its header's count, of the raw chunk or else
/// the first aggregate), or `None` when it lies outside the selection's range.
pub fn chunk_samples(ch: ChunkHead<'_>, limits: &Limits) -> Option<usize> {
    if ch.max_time < limits.mint || ch.min_time > limits.maxt {
        return None;
    }
    Some(header_count(ch.counted))
}

/// Makes a received series ready for the merge: parsed, labels checked (see
/// [`check_labels`]), chunks outside `[mint, maxt]` dropped, and the samples the rest
/// announce counted (returned, and kept in [`SeriesView::samples`]). `from` names the
/// endpoint in errors.
pub fn prepare(s: &mut SeriesView, rl: &[String], limits: &Limits, from: &str) -> Result<usize, String> {
    s.parse().map_err(|e| format!("{from}: {e}"))?;
    check_labels(s, rl).map_err(|e| format!("{from}: {e}"))?;
    let mut n = 0usize;
    s.chunks.retain(|ch| match chunk_samples(ch.head(), limits) {
        Some(k) => {
            n += k;
            true
        }
        None => false,
    });
    s.prepared = true;
    s.samples = n;
    Ok(n)
}

/// One endpoint's series, in the frames they arrived in (not copied into one list).
#[derive(Debug, Default)]
pub struct Source {
    /// The endpoint, for errors.
    pub name: String,
    /// Series as received, batch by batch, normally in [`cmp_series`] order (the merge
    /// sorts them when they are not).
    pub batches: Vec<Vec<SeriesView>>,
    /// The endpoint removed the replica labels (Thanos's `without_replica_labels`): its
    /// series are replicas of equal series from other endpoints.
    pub stripped: bool,
    /// For a stripped source: the replica labels its Info label sets all carry, which stand
    /// for the labels it removed (a receiver and a store gateway over the blocks that
    /// receiver uploaded are then one replica, merged, not deduplicated against each other).
    /// Empty: the source is a replica of its own.
    pub identity: Vec<(String, String)>,
    /// Its series were counted against the sample limit as they arrived (and are in
    /// [`Limits::counted`]); otherwise the merge counts them.
    pub counted: bool,
}

/// A position in a [`Source`]: batch and index (past the end when the batch is).
type Cursor = (usize, usize);

impl Source {
    /// A source of one list of series.
    pub fn new(series: Vec<SeriesView>, stripped: bool) -> Self {
        Source { batches: vec![series], stripped, ..Default::default() }
    }

    /// The first position at or after `(b, i)` holding a series.
    fn settle(&self, (mut b, mut i): Cursor) -> Cursor {
        while b < self.batches.len() && i >= self.batches[b].len() {
            (b, i) = (b + 1, 0);
        }
        (b, i)
    }

    fn at(&self, (b, i): Cursor) -> Option<&SeriesView> {
        self.batches.get(b).and_then(|l| l.get(i))
    }

    /// The series at `at`, parsed and prepared (see [`prepare`]) if it was not.
    fn prepare_at(&mut self, (b, i): Cursor, rl: &[String], limits: &Limits) -> Result<(), String> {
        match self.batches.get_mut(b).and_then(|l| l.get_mut(i)) {
            Some(s) if !s.prepared => prepare(s, rl, limits, &self.name).map(drop),
            _ => Ok(()),
        }
    }

    /// Ends the source at `at`: the series from there on are dropped (a source left out of a
    /// streamed merge; the series before stay where the merge may still refer to them).
    fn cut(&mut self, (b, i): Cursor) {
        self.batches.truncate(b + 1);
        if let Some(l) = self.batches.get_mut(b) {
            l.truncate(i);
        }
    }

    /// Sorts the series into [`cmp_series`] order (one batch), preparing them first.
    fn sort(&mut self, rl: &[String], limits: &Limits) -> Result<(), String> {
        let mut all: Vec<SeriesView> = std::mem::take(&mut self.batches).into_iter().flatten().collect();
        for s in all.iter_mut().filter(|s| !s.prepared) {
            prepare(s, rl, limits, &self.name)?;
        }
        all.sort_by(|a, b| cmp_series(a, b, rl));
        self.batches = vec![all];
        Ok(())
    }
}

/// Whether the series at `a` and `b` came as byte-identical messages (so have equal labels
/// and chunks, parsed or not).
fn same_message(sources: &[Source], (sa, ca): (usize, Cursor), (sb, cb): (usize, Cursor)) -> bool {
    match (
        sources[sa].at(ca).and_then(SeriesView::message_bytes),
        sources[sb].at(cb).and_then(SeriesView::message_bytes),
    ) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The merge found this source out of order.
struct Unsorted(usize);

/// Decodes a replica's chunks into samples ascending by time.
pub type Decoder<'a> = dyn Fn(&[&WireChunk]) -> Result<Samples, String> + 'a;

/// What makes two wire chunks equal: time range, encoding and bytes.
type ChunkId<'a> = (i64, i64, i32, &'a [u8]);

fn chunk_id(c: &WireChunk) -> Option<ChunkId<'_>> {
    c.raw.as_ref().map(|r| (c.min_time, c.max_time, r.encoding, &r.data[..]))
}

/// Encoding and bytes of a raw chunk or an aggregate.
type Part<'a> = Option<(i32, &'a [u8])>;

/// What makes two chunks passed through equal: time range, and encoding and bytes of the raw
/// chunk and of each downsampled aggregate (hashes aside).
fn pass_key(c: &WireChunk) -> (i64, i64, Part<'_>, [Part<'_>; 5]) {
    fn part(r: &Option<crate::seriesview::RawChunk>) -> Part<'_> {
        r.as_ref().map(|r| (r.encoding, &r.data[..]))
    }
    (c.min_time, c.max_time, part(&c.raw), [0, 1, 2, 3, 4].map(|i| part(&c.aggrs[i])))
}

/// Whether `seen` (sorted by time range) holds a chunk equal to `id`.
fn contains(seen: &[ChunkId<'_>], id: ChunkId<'_>) -> bool {
    let from = seen.partition_point(|s| (s.0, s.1) < (id.0, id.1));
    seen[from..].iter().take_while(|s| (s.0, s.1) == (id.0, id.1)).any(|s| s.2 == id.2 && s.3 == id.3)
}

/// Whether the group's series at `i` continues the replica of the one before it: equal
/// replica labels (a stripped source's stand-ins for them), and not two different sources of
/// which one stripped its replica labels without saying what they were.
fn same_replica(group: &[(usize, &SeriesView)], i: usize, sources: &[Source], rl: &[String]) -> bool {
    if i == 0 {
        return false;
    }
    let ((prev_src, prev), (src, s)) = (group[i - 1], group[i]);
    let anonymous = |x: usize| sources[x].stripped && sources[x].identity.is_empty();
    let apart = prev_src != src && (anonymous(prev_src) || anonymous(src));
    !apart && (rl.is_empty() || replica_pairs(&sources[prev_src], prev, rl).eq(replica_pairs(&sources[src], s, rl)))
}

/// One group of a merge (series with equal labels without `rl`) as its labels without `rl`
/// and its replicas' chunks, replicas ordered by their replica labels (for a source that
/// stripped them, the ones its Info label sets stand for; equal ones in endpoint order).
/// Each replica's chunks, from all its pieces and sources, are sorted by time range with
/// copies dropped (see [`dedup_chunks`]).
pub fn replicas_of<'a>(
    group: &[(usize, &'a SeriesView)],
    sources: &[Source],
    rl: &[String],
) -> (Labels, Vec<Vec<&'a WireChunk>>) {
    let Some(&(_, first)) = group.first() else { return (Labels::default(), Vec::new()) };
    // Checked sorted and unique by `check_labels` when received.
    let key = Labels::from_sorted_unchecked_iter(key_of(first, rl));
    let mut group = group.to_vec();
    if group.len() > 1 && !rl.is_empty() {
        // Stable: among equal replica labels, the merge's order (sources in endpoint order).
        // Stable, and compared in place: no owned copy of each replica's labels.
        group.sort_by(|&(a, x), &(b, y)| replica_pairs(&sources[a], x, rl).cmp(replica_pairs(&sources[b], y, rl)));
    }
    let mut replicas: Vec<Vec<&'a WireChunk>> = Vec::with_capacity(group.len());
    for i in 0..group.len() {
        let chunks = group[i].1.chunks.iter();
        match replicas.last_mut() {
            Some(last) if same_replica(&group, i, sources, rl) => last.extend(chunks),
            _ => replicas.push(chunks.collect()),
        }
    }
    for r in &mut replicas {
        dedup_chunks(r);
    }
    (key, replicas)
}

/// A series' chunks as they are passed through: those with neither raw data nor aggregates
/// dropped, sorted by time range, then encodings and bytes of the raw chunk and the
/// aggregates (a stable order whatever the endpoints' order), equal ones kept once.
pub fn dedup_chunks(chunks: &mut Vec<&WireChunk>) {
    chunks.retain(|c| c.raw.is_some() || c.aggrs.iter().any(Option::is_some));
    if !chunks.is_sorted_by(|a, b| pass_key(a) <= pass_key(b)) {
        chunks.sort_by(|a, b| pass_key(a).cmp(&pass_key(b)));
    }
    chunks.dedup_by(|a, b| pass_key(a) == pass_key(b));
}

/// Combines one group (series with equal keys, in replica label order): pieces with equal
/// replica labels are one replica (their chunks concatenated; the decoder sorts and drops
/// repeated timestamps), chunks of later replicas identical to earlier ones are dropped,
/// the rest decoded once and the replicas deduplicated.
fn flush_group(
    group: &[(usize, &SeriesView)],
    sources: &[Source],
    rl: &[String],
    counter: bool,
    decode: &Decoder<'_>,
) -> Result<(Labels, Samples), String> {
    // Checked sorted and unique by `check_labels` when received.
    let key = Labels::from_sorted_unchecked_iter(key_of(group[0].1, rl));
    let decode_some = |chunks: &[&WireChunk]| if chunks.is_empty() { Ok(Vec::new()) } else { decode(chunks) };
    // Split into replicas: runs of equal replica labels, and of one source where a source
    // stripped them.
    let mut replicas: Vec<Vec<&WireChunk>> = Vec::with_capacity(group.len());
    for (i, &(_, s)) in group.iter().enumerate() {
        match replicas.last_mut() {
            Some(last) if same_replica(group, i, sources, rl) => last.extend(s.chunks.iter()),
            _ => replicas.push(s.chunks.iter().collect()),
        }
    }
    // One replica (RF=1, or no dedup): nothing to compare against.
    if replicas.len() == 1 {
        return Ok((key, decode_some(&replicas[0])?));
    }
    // Chunks of earlier replicas, sorted by time range: a binary search and a memcmp per
    // chunk, instead of hashing every chunk's bytes.
    let mut seen: Vec<ChunkId<'_>> = Vec::new();
    let mut decoded: Vec<Samples> = Vec::with_capacity(replicas.len());
    for chunks in &replicas {
        let keep: Vec<&WireChunk> =
            chunks.iter().copied().filter(|c| chunk_id(c).is_none_or(|id| !contains(&seen, id))).collect();
        seen.extend(chunks.iter().filter_map(|c| chunk_id(c)));
        seen.sort_unstable_by_key(|id| (id.0, id.1));
        let samples = decode_some(&keep)?;
        if !samples.is_empty() {
            decoded.push(samples);
        }
    }
    Ok((key, dedup_replicas(decoded, counter)))
}

/// K-way merges per-endpoint series lists into one list sorted by labels without `rl`;
/// series with equal such labels are combined (see `flush_group`), replicas deduplicated,
/// as counters when `counter`. Series left without samples are kept (label-only selections
/// need them). Sources out of [`cmp_series`] order are sorted first.
pub fn merge_and_dedup(
    sources: Vec<Source>,
    rl: &[String],
    counter: bool,
    decode: &Decoder<'_>,
) -> Result<Vec<(Labels, Samples)>, String> {
    let mut sources = sources;
    merge_and_dedup_within(&mut sources, rl, counter, decode, &Limits::NONE).map_err(|e| e.to_string())
}

/// [`merge_and_dedup`] of a selection: unparsed series are prepared with `limits` (its time
/// range), and the series of sources not [`Source::counted`] are counted against its sample
/// limit on top of [`Limits::counted`] ([`MergeError::TooManySamples`] past it). On
/// [`MergeError::Source`] the sources are left as they were read, for a merge without it.
pub fn merge_and_dedup_within(
    sources: &mut [Source],
    rl: &[String],
    counter: bool,
    decode: &Decoder<'_>,
    limits: &Limits,
) -> Result<Vec<(Labels, Samples)>, MergeError> {
    merge_groups(sources, rl, limits, &mut |group, sources| flush_group(group, sources, rl, counter, decode))
}

/// A merged series with its endpoints' chunks as received: sorted by time range, without
/// chunks byte-identical to another of the series (same time range, encoding and bytes).
pub type RawSeries = (Labels, Vec<WireChunk>);

/// K-way merges per-endpoint series lists by their full labels, without deduplication (as
/// Thanos's proxy store): series with equal labels, from several endpoints or split over
/// several frames, become one whose chunks are sorted by `(min_time, max_time)` with
/// identical chunks dropped. Chunks are passed on unchanged (no decoding), raw or
/// downsampled aggregates; chunks with neither are dropped. Series without chunks are kept.
pub fn merge_raw(sources: Vec<Source>) -> Result<Vec<RawSeries>, String> {
    let mut sources = sources;
    merge_raw_within(&mut sources, &Limits::NONE).map_err(|e| e.to_string())
}

/// [`merge_raw`] of a selection (see [`merge_and_dedup_within`] for `limits`).
pub fn merge_raw_within(sources: &mut [Source], limits: &Limits) -> Result<Vec<RawSeries>, MergeError> {
    merge_groups(sources, &[], limits, &mut |group, _| {
        // Checked sorted and unique by `check_labels` when received.
        let labels = Labels::from_sorted_unchecked_iter(group[0].1.labels());
        let mut chunks: Vec<&WireChunk> = group.iter().flat_map(|(_, s)| s.chunks.iter()).collect();
        // Equal chunks go out once, however many endpoints sent them (copies skipped unread
        // included).
        dedup_chunks(&mut chunks);
        Ok((labels, chunks.into_iter().cloned().collect()))
    })
}

/// Turns one group of series with equal keys, `(source index, series)`, into an output.
type Flush<'f, T> = dyn FnMut(&[(usize, &SeriesView)], &[Source]) -> Result<T, String> + 'f;

/// The k-way merge shared by [`merge_and_dedup`] and [`merge_raw`]: `flush` turns each group
/// of series with equal labels without `rl` (from all sources, in replica label order) into
/// one output. Sources out of [`cmp_series`] order are sorted first.
fn merge_groups<T>(
    sources: &mut [Source],
    rl: &[String],
    limits: &Limits,
    flush: &mut Flush<'_, T>,
) -> Result<Vec<T>, MergeError> {
    // Stores send series sorted, which is the merge order unless a replica label sorts
    // before another label and differs within a source: checked on the way, not up front.
    loop {
        let mut out = Vec::new();
        match merge_sorted(sources, rl, limits, &mut Received, flush, &mut |t| out.push(t))? {
            Ok(()) => return Ok(out),
            Err(Unsorted(src)) => {
                sources[src].sort(rl, limits).map_err(|message| MergeError::Source { index: src, message })?
            }
        }
    }
}

/// Where a merge's sources get their series: all received before the merge ([`Received`]),
/// or still arriving while it runs (a streamed merge, [`merge_streamed`]).
pub trait Feed {
    /// Appends the next batch of series of source `src` to its [`Source::batches`]; false
    /// once the source has no more. May wait for it.
    fn more(&mut self, sources: &mut [Source], src: usize) -> Result<bool, MergeError>;
    /// A series of source `src` did not check out (`message` names the source): `Ok` leaves
    /// the source out from there on, an error ends the merge.
    fn failed(&mut self, src: usize, message: String) -> Result<(), MergeError>;
    /// Groups already handed on cannot be taken back: a source out of order or failing is
    /// left out from where it failed, and series the merge has passed are dropped.
    fn streamed(&self) -> bool;
}

/// Sources received whole before the merge: a source that fails is reported
/// ([`MergeError::Source`]) so that the merge can run again without it.
struct Received;

impl Feed for Received {
    fn more(&mut self, _: &mut [Source], _: usize) -> Result<bool, MergeError> {
        Ok(false)
    }
    fn failed(&mut self, index: usize, message: String) -> Result<(), MergeError> {
        Err(MergeError::Source { index, message })
    }
    fn streamed(&self) -> bool {
        false
    }
}

/// The merge of [`merge_groups`] over sources whose series are still arriving: each group is
/// handed to `flush` as soon as the next key shows it complete, and the batches the merge has
/// passed are dropped, so what is held is about one group plus what `feed` buffers. Sources
/// that may come out of merge order (with `rl`, those that did not strip the replica labels:
/// a replica label may sort before labels that differ) are received whole and sorted first,
/// as Thanos's proxy does for stores it must strip itself. A source that fails or turns out
/// of order later is left out from there on, per `feed` ([`Feed::failed`]).
pub fn merge_streamed(
    sources: &mut [Source],
    rl: &[String],
    limits: &Limits,
    feed: &mut dyn Feed,
    flush: &mut Flush<'_, ()>,
) -> Result<(), MergeError> {
    if !rl.is_empty() {
        for src in 0..sources.len() {
            if sources[src].stripped {
                continue;
            }
            while feed.more(sources, src)? {}
            if let Err(message) = sources[src].sort(rl, limits) {
                feed.failed(src, message)?;
                sources[src].batches.clear();
            }
        }
    }
    match merge_sorted(sources, rl, limits, feed, flush, &mut |()| {})? {
        Ok(()) => Ok(()),
        // Not reached: a streamed merge leaves such a source out where it finds it.
        Err(Unsorted(src)) => Err(MergeError::Invalid(format!("{}: series out of order", sources[src].name))),
    }
}

/// [`merge_groups`] of sources in order; `Err(Unsorted)` names a source that is not.
///
/// A series is parsed only when its labels must be read: the first series of each key, and
/// series whose message differs from the one before them in the merge. A series whose
/// message equals its group's first is a copy (a healthy replica with stripped replica
/// labels) and is dropped unread: its chunks would all be dropped as identical anyway, and
/// it counts against the sample limit what the series it copies counts. So that a source's
/// next series need not be read to know whether it continues the group, a group is flushed
/// only when a larger key comes.
fn merge_sorted<T>(
    sources: &mut [Source],
    rl: &[String],
    limits: &Limits,
    feed: &mut dyn Feed,
    flush: &mut Flush<'_, T>,
    emit: &mut dyn FnMut(T),
) -> Result<Result<(), Unsorted>, MergeError> {
    let mut pos: Vec<Cursor> = sources.iter().map(|s| s.settle((0, 0))).collect();
    let streamed = feed.streamed();
    // Per source, the batches before this one are dropped (streamed merges only).
    let mut released: Vec<usize> = vec![0; sources.len()];
    // Sources the feed has no more series for.
    let mut ended: Vec<bool> = vec![false; sources.len()];
    // Sources whose next series has the smallest key, and whether its message is byte-equal
    // to the smallest one's (so that copies are compared once, not again with the group's
    // first).
    let mut members: Vec<(usize, bool)> = Vec::with_capacity(sources.len());
    // The open group: its first series, and its series (source, position, whether it is a
    // copy of the first).
    let mut head: Option<(usize, Cursor)> = None;
    let mut entries: Vec<(usize, Cursor, bool)> = Vec::new();
    // Its allocation outlives each group's borrows of `sources` (see `recycle`).
    let mut spare: Vec<(usize, &SeriesView)> = Vec::new();
    // Samples counted against the limit: the fan-out's, then those of series of sources it
    // did not count, as the merge reaches them (before their group is decoded).
    let mut total = limits.counted;
    // Prepares the next series of a source; one that does not check out is handed to the
    // feed, and a source it leaves out ends there: the step starts again without it.
    macro_rules! prep {
        ($src:expr, $step:lifetime) => {{
            let src = $src;
            if let Err(message) = sources[src].prepare_at(pos[src], rl, limits) {
                feed.failed(src, message)?;
                sources[src].cut(pos[src]);
                continue $step;
            }
        }};
    }
    'step: loop {
        // Every source's next series at hand (a streamed source's may still be arriving).
        for src in 0..sources.len() {
            while !ended[src] && sources[src].at(pos[src]).is_none() {
                if feed.more(sources, src)? {
                    pos[src] = sources[src].settle(pos[src]);
                } else {
                    ended[src] = true;
                }
            }
        }
        // The smallest key among the sources' next series, and the sources that have it.
        members.clear();
        let mut min: Option<usize> = None;
        for src in 0..sources.len() {
            if sources[src].at(pos[src]).is_none() {
                continue;
            }
            let mut byte_equal = false;
            let ord = match min {
                None => Ordering::Less,
                Some(m) if same_message(sources, (src, pos[src]), (m, pos[m])) => {
                    byte_equal = true;
                    Ordering::Equal
                }
                Some(m) => {
                    prep!(src, 'step);
                    prep!(m, 'step);
                    let (Some(v), Some(mv)) = (sources[src].at(pos[src]), sources[m].at(pos[m])) else {
                        continue;
                    };
                    key_of(v, rl).cmp(key_of(mv, rl))
                }
            };
            match ord {
                Ordering::Less => {
                    min = Some(src);
                    members.clear();
                    members.push((src, true));
                }
                Ordering::Equal => members.push((src, byte_equal)),
                Ordering::Greater => {}
            }
        }
        // Does the smallest key continue the open group, or start the next one?
        let mut next = match min {
            None => None,
            Some(first) => {
                prep!(first, 'step);
                Some((first, pos[first]))
            }
        };
        // Whether the smallest series is a copy of the open group's first.
        let mut next_copies_head = false;
        let continues = match (next, head) {
            (Some(n), Some(h)) if same_message(sources, n, h) => {
                next_copies_head = true;
                true
            }
            (Some(n), Some(h)) => {
                let (Some(nv), Some(hv)) = (sources[n.0].at(n.1), sources[h.0].at(h.1)) else {
                    return Err(MergeError::Invalid("merge lost its place".into()));
                };
                match key_of(nv, rl).cmp(key_of(hv, rl)) {
                    Ordering::Equal => true,
                    // Keys only grow while every source is in order: this one is not.
                    Ordering::Less if streamed => {
                        let message = format!("{}: series out of order", sources[n.0].name);
                        feed.failed(n.0, message)?;
                        sources[n.0].cut(pos[n.0]);
                        continue 'step;
                    }
                    Ordering::Less => return Ok(Err(Unsorted(n.0))),
                    Ordering::Greater => false,
                }
            }
            _ => false,
        };
        if !continues && head.is_some() {
            // Source by source (pieces of a series stay together), endpoints in order.
            entries.sort_by_key(|e| e.0);
            let mut group = recycle(std::mem::take(&mut spare));
            for &(src, at, copy) in &entries {
                if let Some(s) = sources[src].at(at)
                    && !copy
                {
                    group.push((src, s));
                }
            }
            // Replica label order; among equal ones, sources in endpoint order (a stable sort).
            if group.len() > 1
                && !rl.is_empty()
                && !group.is_sorted_by(|a, b| replica_of(a.1, rl).le(replica_of(b.1, rl)))
            {
                group.sort_by(|a, b| replica_of(a.1, rl).cmp(replica_of(b.1, rl)));
            }
            emit(flush(&group, sources)?);
            spare = recycle(group);
            entries.clear();
            if streamed {
                // Nothing before the sources' next series is referred to any more (the next
                // group's first is one of them).
                for (src, r) in released.iter_mut().enumerate() {
                    for b in *r..pos[src].0 {
                        sources[src].batches[b] = Vec::new();
                    }
                    *r = (*r).max(pos[src].0);
                    // The emptied batches themselves go now and then (a source sending one
                    // series per message would otherwise leave one per series).
                    if *r >= 64 {
                        sources[src].batches.drain(..*r);
                        pos[src].0 -= *r;
                        if let Some((s, at)) = next.as_mut()
                            && *s == src
                        {
                            at.0 -= *r;
                        }
                        *r = 0;
                    }
                }
            }
        }
        let Some(n) = next else {
            return Ok(Ok(()));
        };
        if !continues {
            head = Some(n);
            next_copies_head = true;
        }
        let h = head.unwrap_or(n);
        // What each copy of the group's first counts against the limit.
        let h_samples = sources[h.0].at(h.1).map_or(0, |s| s.samples);
        for &(src, equals_next) in &members {
            let at = pos[src];
            // A series byte-equal to the smallest one is a copy of the group's first exactly
            // when the smallest one is (or is the first); one that is not, is not a copy when
            // the smallest one is; otherwise it is compared.
            let copy = (src, at) != h
                && match (equals_next, next_copies_head) {
                    (true, nc) => nc,
                    (false, true) => false,
                    (false, false) => same_message(sources, (src, at), h),
                };
            if !copy {
                // Equal to this step's smallest series perhaps, but not to the group's first:
                // read like any series the group keeps.
                prep!(src, 'step);
            }
            if limits.max_samples > 0 && !sources[src].counted {
                // A copy holds exactly the samples of the series it copies (prepared with
                // the same range): the count a parse would give, without the parse.
                let n = if copy { h_samples } else { sources[src].at(at).map_or(0, |s| s.samples) };
                total = total.saturating_add(n);
                if total > limits.max_samples {
                    return Err(MergeError::TooManySamples);
                }
            }
            entries.push((src, at, copy));
            pos[src] = sources[src].settle((at.0, at.1 + 1));
        }
    }
}

/// An emptied vector of series references with another lifetime, keeping its allocation
/// (collecting an empty `into_iter` of a same-layout type reuses the buffer).
fn recycle<'b>(mut v: Vec<(usize, &SeriesView)>) -> Vec<(usize, &'b SeriesView)> {
    v.clear();
    // `filter_map`, not `filter`: the item type changes (its lifetime), so the vector is
    // rebuilt in place rather than returned.
    #[allow(clippy::unnecessary_filter_map)]
    v.into_iter().filter_map(|_| None).collect()
}

/// Deduplicates replicas (each ascending by time, in replica order) as Thanos's chained
/// penalty iterators do: `dedup(dedup(r0, r1), r2)`, adjusted for counters when `counter`.
pub fn dedup_replicas(replicas: Vec<Samples>, counter: bool) -> Samples {
    // When every later replica's timestamps are among the first's (replicas that lost
    // writes the first one got), the penalty rule picks the first replica at every step
    // and never switches: the first tie goes to it, and whatever a later replica offers
    // after each pick is at or after the first's next sample. So no iterators are needed.
    if replicas.len() <= 1 || replicas[1..].iter().all(|r| times_within(r, &replicas[0])) {
        return replicas.into_iter().next().unwrap_or_default();
    }
    let mut it = Iter::Leaf(Leaf { s: &replicas[0], i: 0, started: false, adjust: 0.0, counter });
    for r in &replicas[1..] {
        it = Iter::Pair(Box::new(Pair::new(it, Iter::Leaf(Leaf { s: r, i: 0, started: false, adjust: 0.0, counter }))));
    }
    let mut out = Vec::with_capacity(replicas.iter().map(Vec::len).max().unwrap_or(0));
    while it.next() {
        out.push((it.at_t(), it.value()));
    }
    out
}

/// Whether every timestamp of `sub` is one of `of`'s (both ascending).
fn times_within(sub: &[(i64, StoredValue)], of: &[(i64, StoredValue)]) -> bool {
    let mut j = 0;
    for (t, _) in sub {
        while j < of.len() && of[j].0 < *t {
            j += 1;
        }
        if j == of.len() || of[j].0 != *t {
            return false;
        }
    }
    true
}

/// One replica's samples as a Thanos series iterator: `next` moves to the next sample, `seek`
/// to the first at or after a time (never backwards), and a counter replica carries the
/// amount it was raised by at switches.
struct Leaf<'a> {
    s: &'a [(i64, StoredValue)],
    i: usize,
    started: bool,
    adjust: f64,
    counter: bool,
}

impl Leaf<'_> {
    /// A counter replica's value with its adjustment; others as stored (so -0 stays -0).
    fn adjusted(&self, v: f64) -> f64 {
        if self.counter { v + self.adjust } else { v }
    }
}

/// Two iterators deduplicated with the penalty rule: Thanos's `dedupSeriesIterator`.
struct Pair<'a> {
    a: Iter<'a>,
    b: Iter<'a>,
    /// Whether `a` / `b` are at a sample.
    a_ok: bool,
    b_ok: bool,
    last_t: i64,
    pen_a: i64,
    pen_b: i64,
    /// The current sample is `a`'s (else `b`'s).
    use_a: bool,
}

enum Iter<'a> {
    Leaf(Leaf<'a>),
    Pair(Box<Pair<'a>>),
}

impl<'a> Pair<'a> {
    fn new(mut a: Iter<'a>, mut b: Iter<'a>) -> Self {
        let a_ok = a.next();
        let b_ok = b.next();
        Pair { a, b, a_ok, b_ok, last_t: i64::MIN, pen_a: 0, pen_b: 0, use_a: true }
    }

    fn ok(&self) -> bool {
        if self.use_a { self.a_ok } else { self.b_ok }
    }

    fn cur(&self) -> &Iter<'a> {
        if self.use_a { &self.a } else { &self.b }
    }

    fn next(&mut self) -> bool {
        // The value returned last (before any sample, `a`'s first one, as in Thanos).
        let last_float = if self.ok() { self.cur().float_at() } else { None };
        let was_a = self.use_a;
        let ok = self.step();
        if self.use_a != was_a
            && let Some(v) = last_float
        {
            // Switched replicas: neither may continue below the value returned last.
            self.adjust(v);
        }
        ok
    }

    fn step(&mut self) -> bool {
        let floor = self.last_t.saturating_add(1);
        if self.a_ok {
            self.a_ok = self.a.seek(floor.saturating_add(self.pen_a));
        }
        if self.b_ok {
            self.b_ok = self.b.seek(floor.saturating_add(self.pen_b));
        }
        if !self.a_ok {
            self.use_a = false;
            if self.b_ok {
                self.last_t = self.b.at_t();
                self.pen_b = 0;
            }
            return self.b_ok;
        }
        if !self.b_ok {
            self.use_a = true;
            self.last_t = self.a.at_t();
            self.pen_a = 0;
            return true;
        }
        let (ta, tb) = (self.a.at_t(), self.b.at_t());
        self.use_a = ta <= tb;
        let t = if self.use_a { ta } else { tb };
        let pen =
            if self.last_t != i64::MIN { t.saturating_sub(self.last_t).saturating_mul(2) } else { INITIAL_PENALTY };
        if self.use_a {
            (self.pen_a, self.pen_b) = (0, pen);
        } else {
            (self.pen_a, self.pen_b) = (pen, 0);
        }
        self.last_t = t;
        true
    }

    fn adjust(&mut self, last: f64) {
        if self.a_ok {
            self.a.adjust(last);
        }
        if self.b_ok {
            self.b.adjust(last);
        }
    }
}

impl Iter<'_> {
    fn next(&mut self) -> bool {
        match self {
            Iter::Leaf(l) => {
                if !l.started {
                    l.started = true;
                } else if l.i < l.s.len() {
                    l.i += 1;
                }
                l.i < l.s.len()
            }
            Iter::Pair(p) => p.next(),
        }
    }

    /// Moves to the first sample at or after `t`; whether there is one. Only called while
    /// at a sample.
    fn seek(&mut self, t: i64) -> bool {
        match self {
            Iter::Leaf(l) => {
                // Samples are few per seek: a linear walk, as a chunk iterator would do.
                while l.i < l.s.len() && l.s[l.i].0 < t {
                    l.i += 1;
                }
                l.i < l.s.len()
            }
            // As Thanos: through `next`, so that the pair's own choices (and counter
            // adjustments) are made on the way.
            Iter::Pair(p) => loop {
                if p.cur().at_t() >= t {
                    return true;
                }
                if !p.next() {
                    return false;
                }
            },
        }
    }

    fn at_t(&self) -> i64 {
        match self {
            Iter::Leaf(l) => l.s[l.i].0,
            Iter::Pair(p) => p.cur().at_t(),
        }
    }

    /// The current value if it is a float, adjusted.
    fn float_at(&self) -> Option<f64> {
        match self {
            Iter::Leaf(l) => match l.s[l.i].1 {
                StoredValue::Float(v) => Some(l.adjusted(v)),
                StoredValue::Histogram(_) => None,
            },
            Iter::Pair(p) => p.cur().float_at(),
        }
    }

    fn value(&self) -> StoredValue {
        match self {
            Iter::Leaf(l) => match &l.s[l.i].1 {
                StoredValue::Float(v) => StoredValue::Float(l.adjusted(*v)),
                h @ StoredValue::Histogram(_) => h.clone(),
            },
            Iter::Pair(p) => p.cur().value(),
        }
    }

    /// Raises a counter replica whose current float is below `last` (a counter cannot go
    /// down across a switch); histograms and non-counters are left alone, as in Thanos.
    fn adjust(&mut self, last: f64) {
        match self {
            Iter::Leaf(l) => {
                if l.counter
                    && let StoredValue::Float(v) = l.s[l.i].1
                    && last > l.adjusted(v)
                {
                    l.adjust += last - l.adjusted(v);
                }
            }
            Iter::Pair(p) => p.adjust(last),
        }
    }
}

/// Labels without the replica labels.
pub fn strip_labels(l: &Labels, replica_labels: &[String]) -> Labels {
    if replica_labels.is_empty() || !l.iter().any(|(n, _)| replica_labels.iter().any(|r| r == n)) {
        return l.clone();
    }
    Labels::from_sorted_unchecked_iter(l.iter().filter(|(n, _)| !replica_labels.iter().any(|r| r == n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_storeapi::thanos;

    fn fl(ts: &[i64]) -> Samples {
        ts.iter().map(|&t| (t, StoredValue::Float(t as f64))).collect()
    }
    fn pts(p: &[(i64, f64)]) -> Samples {
        p.iter().map(|&(t, v)| (t, StoredValue::Float(v))).collect()
    }
    fn times(s: &[(i64, StoredValue)]) -> Vec<i64> {
        s.iter().map(|p| p.0).collect()
    }
    fn floats(s: &[(i64, StoredValue)]) -> Vec<(i64, f64)> {
        s.iter()
            .map(|(t, v)| match v {
                StoredValue::Float(f) => (*t, *f),
                StoredValue::Histogram(_) => panic!("histogram at {t}"),
            })
            .collect()
    }

    #[test]
    fn penalty_dedup_of_two_replicas() {
        // (replica a, replica b, expected timestamps)
        let cases: Vec<(Vec<i64>, Vec<i64>, Vec<i64>)> = vec![
            // Identical replicas: one copy.
            (vec![0, 10_000, 20_000], vec![0, 10_000, 20_000], vec![0, 10_000, 20_000]),
            // Offset scrapes: keep a's cadence, never interleave.
            (vec![0, 10_000, 20_000, 30_000], vec![1000, 11_000, 21_000, 31_000], vec![0, 10_000, 20_000, 30_000]),
            // a has a gap: b fills it after the penalty (2x the last gap) lapses, and a is not
            // picked again while b's cadence continues.
            (
                vec![0, 10_000, 60_000, 70_000],
                vec![1000, 11_000, 21_000, 31_000, 41_000, 51_000, 61_000, 71_000],
                vec![0, 10_000, 31_000, 41_000, 51_000, 61_000, 71_000],
            ),
            // One replica empty.
            (vec![], vec![5, 6], vec![5, 6]),
            (vec![5, 6], vec![], vec![5, 6]),
            // b starts earlier.
            (vec![10_000, 20_000], vec![2000, 12_000, 22_000], vec![2000, 10_000, 20_000]),
        ];
        for (a, b, want) in cases {
            for counter in [false, true] {
                let got = dedup_replicas(vec![fl(&a), fl(&b)], counter);
                assert_eq!(times(&got), want, "a={a:?} b={b:?} counter={counter}");
            }
        }
    }

    #[test]
    fn counter_dedup_never_steps_down_at_a_switch() {
        // (name, replicas, expected as counters, expected otherwise)
        type Case = (&'static str, Vec<Vec<(i64, f64)>>, Vec<(i64, f64)>, Vec<(i64, f64)>);
        let a_gap =
            vec![(0, 100.0), (10_000, 110.0), (20_000, 120.0), (30_000, 130.0), (70_000, 170.0), (80_000, 180.0)];
        // Offset by 1 s and restarted earlier: its counter is 95 below a's.
        let b_low: Vec<(i64, f64)> = (0..9).map(|i| (1000 + i * 10_000, 5.0 + 10.0 * i as f64)).collect();
        let cases: Vec<Case> = vec![
            (
                "gap in a: b takes over 75 higher and keeps the offset",
                vec![a_gap.clone(), b_low.clone()],
                vec![(0, 100.0), (10_000, 110.0), (20_000, 120.0), (30_000, 130.0), (51_000, 130.0), (61_000, 140.0)]
                    .into_iter()
                    .chain([(71_000, 150.0), (81_000, 160.0)])
                    .collect(),
                vec![(0, 100.0), (10_000, 110.0), (20_000, 120.0), (30_000, 130.0), (51_000, 55.0), (61_000, 65.0)]
                    .into_iter()
                    .chain([(71_000, 75.0), (81_000, 85.0)])
                    .collect(),
            ),
            (
                "replicas agreeing in value: switching changes nothing",
                vec![a_gap.clone(), (0..9).map(|i| (1000 + i * 10_000, 100.0 + 10.0 * i as f64)).collect()],
                vec![(0, 100.0), (10_000, 110.0), (20_000, 120.0), (30_000, 130.0), (51_000, 150.0), (61_000, 160.0)]
                    .into_iter()
                    .chain([(71_000, 170.0), (81_000, 180.0)])
                    .collect(),
                vec![(0, 100.0), (10_000, 110.0), (20_000, 120.0), (30_000, 130.0), (51_000, 150.0), (61_000, 160.0)]
                    .into_iter()
                    .chain([(71_000, 170.0), (81_000, 180.0)])
                    .collect(),
            ),
            (
                "b ends: back to a, which is ahead and needs no adjustment",
                vec![
                    vec![(0, 10.0), (10_000, 20.0), (50_000, 60.0), (60_000, 70.0), (100_000, 110.0), (110_000, 120.0)],
                    vec![(1000, 1.0), (11_000, 2.0), (21_000, 3.0), (31_000, 4.0), (41_000, 5.0)],
                ],
                // a's 50 s and 60 s samples fall in its penalty after the switch.
                vec![(0, 10.0), (10_000, 20.0), (31_000, 20.0), (41_000, 21.0), (100_000, 110.0), (110_000, 120.0)],
                vec![(0, 10.0), (10_000, 20.0), (31_000, 4.0), (41_000, 5.0), (100_000, 110.0), (110_000, 120.0)],
            ),
            (
                "three replicas: the adjustment carries through the chain",
                vec![
                    vec![(0, 100.0), (10_000, 110.0)],
                    vec![(1000, 50.0), (11_000, 60.0), (41_000, 90.0), (51_000, 100.0)],
                    vec![(2000, 0.0), (12_000, 10.0), (42_000, 40.0), (52_000, 50.0), (120_000, 60.0), (130_000, 70.0)],
                ],
                vec![(0, 100.0), (10_000, 110.0), (41_000, 110.0), (51_000, 120.0), (120_000, 120.0), (130_000, 130.0)],
                vec![(0, 100.0), (10_000, 110.0), (41_000, 90.0), (51_000, 100.0), (120_000, 60.0), (130_000, 70.0)],
            ),
        ];
        for (name, replicas, want_counter, want_plain) in cases {
            let reps: Vec<Samples> = replicas.iter().map(|r| pts(r)).collect();
            assert_eq!(floats(&dedup_replicas(reps.clone(), true)), want_counter, "{name} (counter)");
            assert_eq!(floats(&dedup_replicas(reps, false)), want_plain, "{name} (not a counter)");
        }
    }

    #[test]
    fn counter_dedup_leaves_histograms_and_negative_zero_alone() {
        use norn_model::histogram::FloatHistogram;
        let h = |sum: f64| StoredValue::Histogram(std::sync::Arc::new(FloatHistogram { sum, ..Default::default() }));
        let a = vec![(0, h(10.0)), (10_000, h(20.0))];
        let b = vec![(1000, h(1.0)), (11_000, h(2.0)), (41_000, h(5.0))];
        let got = dedup_replicas(vec![a, b], true);
        let sums: Vec<(i64, f64)> = got
            .iter()
            .map(|(t, v)| match v {
                StoredValue::Histogram(h) => (*t, h.sum),
                StoredValue::Float(_) => panic!("float at {t}"),
            })
            .collect();
        assert_eq!(sums, vec![(0, 10.0), (10_000, 20.0), (41_000, 5.0)]);
        let got = dedup_replicas(vec![pts(&[(0, -0.0)]), pts(&[(5, 1.0)])], false);
        assert!(matches!(got[0].1, StoredValue::Float(v) if v == 0.0 && v.is_sign_negative()));
    }

    #[test]
    fn replicas_missing_samples_of_the_first_change_nothing() {
        // (replicas' timestamps): later replicas only have timestamps the first has, so the
        // shortcut applies; the iterators, run on the same input, agree.
        let cases: Vec<Vec<Vec<i64>>> = vec![
            vec![vec![0, 15, 30, 45, 60], vec![0, 30, 60], vec![15, 45]],
            vec![vec![0, 15, 30, 45, 60], vec![]],
            vec![vec![0, 15_000, 30_000, 45_000, 60_000, 75_000], vec![45_000, 60_000, 75_000]],
            vec![vec![0, 15_000, 30_000, 45_000, 60_000], vec![0, 15_000, 30_000, 45_000, 60_000]],
        ];
        for reps in cases {
            for counter in [false, true] {
                // Later replicas' values differ: the first replica's must come out.
                let samples: Vec<Samples> = reps
                    .iter()
                    .enumerate()
                    .map(|(i, ts)| ts.iter().map(|&t| (t, StoredValue::Float((t + i as i64) as f64))).collect())
                    .collect();
                assert!(samples[1..].iter().all(|r| times_within(r, &samples[0])));
                let want = floats(&samples[0]);
                assert_eq!(floats(&dedup_replicas(samples.clone(), counter)), want, "{reps:?}");
                // The iterators alone (the shortcut defeated by an extra replica whose only
                // sample comes after everything and is picked last).
                let mut with_tail = samples.clone();
                with_tail.push(vec![(10_000_000, StoredValue::Float(0.0))]);
                let got = floats(&dedup_replicas(with_tail, counter));
                assert_eq!(got[..got.len() - 1], want[..], "{reps:?} counter={counter}");
            }
        }
        let a = fl(&[0, 15, 30]);
        assert!(!times_within(&fl(&[0, 16]), &a));
        assert!(!times_within(&fl(&[45]), &a));
        assert!(times_within(&fl(&[]), &a));
    }

    #[test]
    fn counter_functions_are_thanos_ones() {
        let cases = [
            (Some("rate"), true),
            (Some("increase"), true),
            (Some("irate"), true),
            (Some("resets"), true),
            (Some("delta"), false),
            (Some("sum_over_time"), false),
            (None, false),
        ];
        for (f, want) in cases {
            assert_eq!(is_counter_func(f), want, "{f:?}");
        }
    }

    #[test]
    fn contains_matches_time_range_encoding_and_bytes() {
        let mut seen: Vec<ChunkId<'_>> = vec![(0, 10, 1, b"a"), (0, 10, 1, b"b"), (20, 30, 1, b"c")];
        seen.sort_unstable_by_key(|id| (id.0, id.1));
        // (candidate, expected)
        let cases: Vec<(ChunkId<'_>, bool)> = vec![
            ((0, 10, 1, b"a"), true),
            ((0, 10, 1, b"b"), true),
            ((20, 30, 1, b"c"), true),
            ((0, 10, 2, b"a"), false),
            ((0, 11, 1, b"a"), false),
            ((20, 30, 1, b"a"), false),
            ((40, 50, 1, b"c"), false),
            ((-5, 0, 1, b"a"), false),
        ];
        for (id, want) in cases {
            assert_eq!(contains(&seen, id), want, "{id:?}");
        }
        assert!(!contains(&[], (0, 0, 1, b"")));
    }

    /// A chunk whose data lists its sample timestamps (read back by `fake_decode`).
    fn fake_chunk(ts: &[i64]) -> thanos::AggrChunk {
        thanos::AggrChunk {
            min_time: ts.first().copied().unwrap_or(0),
            max_time: ts.last().copied().unwrap_or(0),
            raw: Some(thanos::Chunk { r#type: 0, data: ts.iter().flat_map(|t| t.to_be_bytes()).collect(), hash: 0 }),
            ..Default::default()
        }
    }

    fn fake_decode(cs: &[&WireChunk]) -> Result<Samples, String> {
        let mut ts: Vec<i64> = Vec::new();
        for c in cs {
            let data = &c.raw.as_ref().ok_or("no raw chunk")?.data;
            ts.extend(data.chunks_exact(8).map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes"))));
        }
        ts.sort_unstable();
        ts.dedup();
        Ok(fl(&ts))
    }

    fn view(l: &[(&str, &str)], chunks: Vec<thanos::AggrChunk>) -> SeriesView {
        let labels = l.iter().map(|(n, v)| thanos::Label { name: n.to_string(), value: v.to_string() }).collect();
        SeriesView::from_proto(&thanos::Series { labels, chunks })
    }

    fn src(series: Vec<SeriesView>) -> Source {
        Source::new(series, false)
    }

    fn names(got: &[(Labels, Samples)]) -> Vec<String> {
        got.iter().map(|(l, _)| l.to_string()).collect()
    }

    /// A streamed fan-out's feed over fixed lists: each source's series handed out a batch at
    /// a time; a source that fails is left out from there (as with partial response).
    struct Trickle {
        pending: Vec<std::collections::VecDeque<Vec<SeriesView>>>,
        left_out: Vec<usize>,
        /// Most series the sources held at once.
        most_held: usize,
    }

    impl Trickle {
        fn new(lists: &[Vec<SeriesView>], batch: usize) -> Self {
            let pending = lists.iter().map(|l| l.chunks(batch).map(<[SeriesView]>::to_vec).collect()).collect();
            Trickle { pending, left_out: vec![], most_held: 0 }
        }
    }

    impl Feed for Trickle {
        fn more(&mut self, sources: &mut [Source], src: usize) -> Result<bool, MergeError> {
            let Some(b) = self.pending[src].pop_front() else { return Ok(false) };
            sources[src].batches.push(b);
            let held = sources.iter().flat_map(|s| &s.batches).map(Vec::len).sum();
            self.most_held = self.most_held.max(held);
            Ok(true)
        }
        fn failed(&mut self, src: usize, _: String) -> Result<(), MergeError> {
            self.left_out.push(src);
            self.pending[src].clear();
            Ok(())
        }
        fn streamed(&self) -> bool {
            true
        }
    }

    /// A group as its labels and its replicas' chunk time ranges.
    type Summary = (String, Vec<Vec<(i64, i64)>>);

    fn summary(group: &[(usize, &SeriesView)], sources: &[Source], rl: &[String]) -> Summary {
        let (key, replicas) = replicas_of(group, sources, rl);
        (key.to_string(), replicas.iter().map(|r| r.iter().map(|c| (c.min_time, c.max_time)).collect()).collect())
    }

    /// `n` series of metric `m` per replica, replica label `replica` (sorting before `zone`,
    /// which differs between series: a source holding several replicas is then out of merge
    /// order), each replica's chunks at its own times.
    fn replica_series(replicas: &[&str], n: usize) -> Vec<SeriesView> {
        let mut out: Vec<(Vec<(String, String)>, i64)> = Vec::new();
        for (r, name) in replicas.iter().enumerate() {
            for i in 0..n {
                let l = vec![
                    ("__name__".to_string(), "m".to_string()),
                    ("replica".to_string(), name.to_string()),
                    ("zone".to_string(), format!("z{i:02}")),
                ];
                out.push((l, r as i64));
            }
        }
        out.sort();
        out.iter()
            .map(|(l, r)| {
                let l: Vec<(&str, &str)> = l.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                view(&l, vec![fake_chunk(&[*r, 100 + r])])
            })
            .collect()
    }

    /// The streamed merge hands on the groups the whole merge makes, in the same order:
    /// without replica labels, with sources that stripped them (streamed), and with sources
    /// holding several replicas out of merge order (received whole and sorted first); while
    /// streaming, sources hold a few batches, not their answers.
    #[test]
    fn streamed_merge_hands_on_what_the_whole_merge_makes() {
        let rl = vec!["replica".to_string()];
        let stripped = |name: &str, n: usize| {
            // Replicas' chunks differ (a copy of another replica's series would be dropped).
            let off = i64::from(name.as_bytes()[0] - b'a');
            let l: Vec<SeriesView> = (0..n)
                .map(|i| view(&[("__name__", "m"), ("zone", &format!("z{i:02}"))], vec![fake_chunk(&[i as i64 + off])]))
                .collect();
            let mut s = Source::new(vec![], true);
            s.identity = vec![("replica".into(), name.into())];
            (s, l)
        };
        let plain = |l: Vec<SeriesView>| (Source::new(vec![], false), l);
        // (replica labels, sources with their series, whether they stream)
        type Case = (Vec<String>, Vec<(Source, Vec<SeriesView>)>, bool);
        let cases: Vec<Case> = vec![
            (vec![], vec![plain(replica_series(&["a"], 30)), plain(replica_series(&["b"], 30))], true),
            (rl.clone(), vec![stripped("a", 30), stripped("b", 30), stripped("a", 20)], true),
            (rl.clone(), vec![plain(replica_series(&["a", "b"], 30)), stripped("c", 30)], false),
            (vec![], vec![plain(replica_series(&["a"], 200)), plain(replica_series(&["b"], 150))], true),
        ];
        let cases = cases.into_iter().flat_map(|(rl, sources, streams)| {
            let again: Vec<(Source, Vec<SeriesView>)> = sources
                .iter()
                .map(|(s, l)| (Source { identity: s.identity.clone(), ..Source::new(vec![], s.stripped) }, l.clone()))
                .collect();
            [(rl.clone(), sources, streams, 3), (rl, again, streams, 1)]
        });
        for (i, (rl, sources, streams, batch)) in cases.enumerate() {
            let lists: Vec<Vec<SeriesView>> = sources.iter().map(|(_, l)| l.clone()).collect();
            let total: usize = lists.iter().map(Vec::len).sum();
            let mut whole: Vec<Source> = sources
                .iter()
                .map(|(s, l)| Source {
                    batches: vec![l.clone()],
                    identity: s.identity.clone(),
                    ..Source::new(vec![], s.stripped)
                })
                .collect();
            let want = merge_groups(&mut whole, &rl, &Limits::NONE, &mut |g, s| Ok(summary(g, s, &rl))).unwrap();
            let mut streamed: Vec<Source> = sources.into_iter().map(|(s, _)| s).collect();
            let mut feed = Trickle::new(&lists, batch);
            let mut got = Vec::new();
            merge_streamed(&mut streamed, &rl, &Limits::NONE, &mut feed, &mut |g, s| {
                got.push(summary(g, s, &rl));
                Ok(())
            })
            .unwrap();
            assert_eq!(got, want, "case {i}");
            assert!(feed.left_out.is_empty(), "case {i}");
            if streams {
                // Passed batches are dropped: a few batches per source at a time.
                assert!(feed.most_held <= 3 * 3 * lists.len(), "case {i}: {} of {total}", feed.most_held);
            }
        }
        // The groups carry every replica once, ordered by replica label.
        let mut s = vec![stripped("b", 2).0, stripped("a", 2).0];
        let lists = vec![stripped("b", 2).1, stripped("a", 2).1];
        let mut got = Vec::new();
        merge_streamed(&mut s, &rl, &Limits::NONE, &mut Trickle::new(&lists, 1), &mut |g, s| {
            got.push(summary(g, s, &rl));
            Ok(())
        })
        .unwrap();
        assert_eq!(got[0].1, vec![vec![(0, 0)], vec![(1, 1)]]);
        assert_eq!(got.len(), 2);
    }

    /// A streamed source whose series does not check out, or comes out of order, is left
    /// out from there on: the groups before keep its series, the later ones have the other
    /// sources' only; the sample limit is counted as the merge goes.
    #[test]
    fn streamed_merge_leaves_a_failing_source_out_where_it_fails() {
        let ok = replica_series(&["a"], 10);
        let mut bad = replica_series(&["b"], 10);
        bad[4] = view(&[("__name__", "m"), ("replica", "b"), ("zone", "")], vec![]);
        let mut unsorted = replica_series(&["c"], 10);
        unsorted.swap(6, 7);
        let lists = vec![ok, bad, unsorted];
        let mut sources: Vec<Source> = (0..3).map(|_| Source::new(vec![], false)).collect();
        let mut feed = Trickle::new(&lists, 2);
        let mut got = Vec::new();
        merge_streamed(&mut sources, &[], &Limits::NONE, &mut feed, &mut |g, s| {
            got.push((g.iter().map(|(src, _)| *src).collect::<Vec<_>>(), summary(g, s, &[]).0));
            Ok(())
        })
        .unwrap();
        assert_eq!(feed.left_out, vec![1, 2]);
        let from = |src: usize| got.iter().filter(|(srcs, _)| srcs.contains(&src)).count();
        // Source 1's first four series; source 2's first seven (z00-z05 and z07, then z06 is
        // out of order).
        assert_eq!((from(0), from(1), from(2)), (10, 4, 7));
        // Limits: counted series by series, refused once past.
        let mut sources: Vec<Source> = (0..1).map(|_| Source::new(vec![], false)).collect();
        let limits = Limits { max_samples: 5, ..Limits::NONE };
        // One sample per series (the chunk header's count: the first two bytes).
        let lists = vec![
            (0..10)
                .map(|i| view(&[("__name__", "m"), ("zone", &format!("z{i:02}"))], vec![fake_chunk(&[1 << 48])]))
                .collect(),
        ];
        let mut n = 0;
        let e = merge_streamed(&mut sources, &[], &limits, &mut Trickle::new(&lists, 1), &mut |_, _| {
            n += 1;
            Ok(())
        });
        assert_eq!(e, Err(MergeError::TooManySamples));
        assert!(n < 10, "{n}");
    }

    /// The pass-through merge: full labels (replica labels are ordinary labels), groups of
    /// equal labels across sources and frames become one series, chunks sorted by time range
    /// with identical ones dropped (a chunk differing only in bytes or encoding stays), out
    /// of order sources sorted, series without chunks kept, nothing decoded.
    #[test]
    fn merge_raw_passes_chunks_through() {
        let with_type = |ts: &[i64], ty: i32| {
            let mut c = fake_chunk(ts);
            c.raw.as_mut().unwrap().r#type = ty;
            c
        };
        let times_of = |cs: &[WireChunk]| -> Vec<(i64, i64, i32)> {
            cs.iter().map(|c| (c.min_time, c.max_time, c.raw.as_ref().unwrap().encoding)).collect()
        };
        let s0 = vec![
            view(&[("__name__", "a"), ("replica", "0")], vec![fake_chunk(&[10, 20]), fake_chunk(&[0, 5])]),
            view(&[("__name__", "b")], vec![]),
            // Another frame of the same series.
            view(&[("__name__", "b")], vec![fake_chunk(&[30])]),
        ];
        let s1 = vec![
            view(&[("__name__", "a"), ("replica", "0")], vec![fake_chunk(&[0, 5]), with_type(&[0, 5], 1)]),
            view(&[("__name__", "a"), ("replica", "1")], vec![fake_chunk(&[0, 5])]),
            view(&[("__name__", "b")], vec![fake_chunk(&[30]), fake_chunk(&[0, 30])]),
        ];
        // Out of label order: sorted first.
        let s2 = vec![view(&[("__name__", "c")], vec![fake_chunk(&[1])]), view(&[("__name__", "b")], vec![])];
        let got = merge_raw(vec![src(s0), src(s1), src(s2)]).unwrap();
        let names: Vec<String> = got.iter().map(|(l, _)| l.to_string()).collect();
        assert_eq!(
            names,
            [
                r#"{__name__="a", replica="0"}"#,
                r#"{__name__="a", replica="1"}"#,
                r#"{__name__="b"}"#,
                r#"{__name__="c"}"#
            ]
        );
        assert_eq!(times_of(&got[0].1), [(0, 5, 0), (0, 5, 1), (10, 20, 0)]);
        assert_eq!(times_of(&got[1].1), [(0, 5, 0)]);
        assert_eq!(times_of(&got[2].1), [(0, 30, 0), (30, 30, 0)]);
        assert_eq!(times_of(&got[3].1), [(1, 1, 0)]);
        // Bytes as received.
        assert_eq!(got[0].1[2].to_proto(), fake_chunk(&[10, 20]));
        // A lone series keeps its chunks, sorted; one without any stays (labels-only calls).
        let got = merge_raw(vec![src(vec![
            view(&[("__name__", "x")], vec![fake_chunk(&[9]), fake_chunk(&[1])]),
            view(&[("__name__", "y")], vec![]),
        ])])
        .unwrap();
        assert_eq!(times_of(&got[0].1), [(1, 1, 0), (9, 9, 0)]);
        assert!(got[1].1.is_empty());
        assert!(merge_raw(vec![]).unwrap().is_empty());
    }

    #[test]
    fn merge_three_replicas_in_label_order() {
        let rl = vec!["replica".to_string()];
        let s0 = vec![
            view(&[("__name__", "a"), ("replica", "0")], vec![fake_chunk(&[0, 10_000])]),
            view(&[("__name__", "b"), ("replica", "0")], vec![fake_chunk(&[0])]),
        ];
        let s1 = vec![view(&[("__name__", "a"), ("replica", "1")], vec![fake_chunk(&[1000, 11_000, 21_000])])];
        let s2 = vec![
            view(&[("__name__", "a"), ("replica", "2")], vec![fake_chunk(&[500])]),
            view(&[("__name__", "c"), ("replica", "2")], vec![fake_chunk(&[7])]),
        ];
        let got = merge_and_dedup(vec![src(s0), src(s1), src(s2)], &rl, false, &fake_decode).unwrap();
        assert_eq!(names(&got), vec![r#"{__name__="a"}"#, r#"{__name__="b"}"#, r#"{__name__="c"}"#]);
        // Replica 0 wins at 0 and 10s; replica 1's 21s sample lies within its penalty
        // (2 x 10s after 10s), so it is skipped as Thanos skips it.
        assert_eq!(times(&got[0].1), vec![0, 10_000]);
    }

    #[test]
    fn merge_without_dedup_keeps_replicas_apart_and_unions_equal_series() {
        let rl: Vec<String> = vec![];
        let s0 = vec![view(&[("__name__", "a"), ("replica", "0")], vec![fake_chunk(&[0, 2])])];
        let s1 = vec![
            view(&[("__name__", "a"), ("replica", "0")], vec![fake_chunk(&[1, 2])]),
            view(&[("__name__", "a"), ("replica", "1")], vec![fake_chunk(&[5])]),
        ];
        let got = merge_and_dedup(vec![src(s0), src(s1)], &rl, false, &fake_decode).unwrap();
        assert_eq!(names(&got), vec![r#"{__name__="a", replica="0"}"#, r#"{__name__="a", replica="1"}"#]);
        assert_eq!(times(&got[0].1), vec![0, 1, 2]);
        assert_eq!(times(&got[1].1), vec![5]);
    }

    #[test]
    fn merge_joins_pieces_and_orders_by_labels_without_replica_labels() {
        // "replica" sorts before "zone": by full labels a source's order differs from the
        // merge order, and series without a replica label group with those that have one.
        let rl = vec!["replica".to_string()];
        let s0 = vec![
            view(&[("__name__", "m"), ("replica", "0"), ("zone", "a")], vec![fake_chunk(&[0])]),
            view(&[("__name__", "m"), ("replica", "0"), ("zone", "a")], vec![fake_chunk(&[10_000])]),
            view(&[("__name__", "m"), ("zone", "b")], vec![fake_chunk(&[3])]),
        ];
        let s1 = vec![
            view(&[("__name__", "m"), ("replica", "1"), ("zone", "b")], vec![fake_chunk(&[4])]),
            view(&[("__name__", "m"), ("replica", "1"), ("zone", "c")], vec![]),
        ];
        let got = merge_and_dedup(vec![src(s0), src(s1)], &rl, false, &fake_decode).unwrap();
        let want = [r#"{__name__="m", zone="a"}"#, r#"{__name__="m", zone="b"}"#, r#"{__name__="m", zone="c"}"#];
        assert_eq!(names(&got), want);
        assert_eq!(times(&got[0].1), vec![0, 10_000]);
        // The replica without the label sorts first and wins.
        assert_eq!(times(&got[1].1), vec![3]);
        // Label-only series are kept.
        assert!(got[2].1.is_empty());
    }

    #[test]
    fn series_of_sources_that_stripped_replica_labels_are_replicas() {
        let rl = vec!["replica".to_string()];
        let stripped = |series| Source::new(series, true);
        // Offset scrapes: a union would interleave them, dedup keeps the first source's.
        let s0 = vec![view(&[("__name__", "a")], vec![fake_chunk(&[0, 10_000, 20_000])])];
        let s1 = vec![view(&[("__name__", "a")], vec![fake_chunk(&[1000, 11_000, 21_000])])];
        // A source that kept its replica label dedups with them too.
        let s2 = vec![view(&[("__name__", "a"), ("replica", "2")], vec![fake_chunk(&[2000, 12_000, 22_000, 50_000])])];
        let got = merge_and_dedup(vec![stripped(s0), stripped(s1), src(s2)], &rl, false, &fake_decode).unwrap();
        assert_eq!(names(&got), vec![r#"{__name__="a"}"#]);
        assert_eq!(times(&got[0].1), vec![0, 10_000, 20_000, 50_000]);
        // Pieces of one series from one stripped source are still joined.
        let s0 = vec![
            view(&[("__name__", "a")], vec![fake_chunk(&[0, 10_000])]),
            view(&[("__name__", "a")], vec![fake_chunk(&[20_000])]),
        ];
        let got = merge_and_dedup(vec![stripped(s0)], &rl, false, &fake_decode).unwrap();
        assert_eq!(times(&got[0].1), vec![0, 10_000, 20_000]);
    }

    #[test]
    fn merge_sorts_sources_out_of_key_order_and_reads_across_batches() {
        let rl = vec!["replica".to_string()];
        // In full-label order, but not in key order: replica 0's zone=b before replica 1's
        // zone=a, within one source (e.g. a querier below without dedup).
        let s0 = Source {
            batches: vec![
                vec![view(&[("__name__", "m"), ("replica", "0"), ("zone", "b")], vec![fake_chunk(&[0])])],
                vec![],
                vec![
                    view(&[("__name__", "m"), ("replica", "1"), ("zone", "a")], vec![fake_chunk(&[1])]),
                    view(&[("__name__", "m"), ("replica", "1"), ("zone", "b")], vec![fake_chunk(&[20_000])]),
                ],
            ],
            stripped: false,
            identity: Vec::new(),
            ..Default::default()
        };
        let s1 = Source {
            batches: vec![
                vec![view(&[("__name__", "m"), ("replica", "2"), ("zone", "a")], vec![fake_chunk(&[2])])],
                vec![view(&[("__name__", "m"), ("replica", "2"), ("zone", "c")], vec![fake_chunk(&[3])])],
            ],
            stripped: false,
            identity: Vec::new(),
            ..Default::default()
        };
        let got = merge_and_dedup(vec![s0, s1], &rl, false, &fake_decode).unwrap();
        let want = [r#"{__name__="m", zone="a"}"#, r#"{__name__="m", zone="b"}"#, r#"{__name__="m", zone="c"}"#];
        assert_eq!(names(&got), want);
        let ts: Vec<Vec<i64>> = got.iter().map(|(_, s)| times(s)).collect();
        assert_eq!(ts, vec![vec![1], vec![0, 20_000], vec![3]]);
    }

    #[test]
    fn identical_chunks_of_later_replicas_are_not_decoded() {
        let rl = vec!["replica".to_string()];
        let decoded = std::cell::RefCell::new(Vec::new());
        let decode = |cs: &[&WireChunk]| -> Result<Samples, String> {
            decoded.borrow_mut().extend(cs.iter().map(|c| c.min_time));
            fake_decode(cs)
        };
        let other = thanos::AggrChunk { max_time: 30, ..fake_chunk(&[20, 25]) };
        let s0 = vec![view(&[("__name__", "a"), ("replica", "0")], vec![fake_chunk(&[0, 10]), fake_chunk(&[20, 30])])];
        let s1 = vec![view(
            &[("__name__", "a"), ("replica", "1")],
            vec![fake_chunk(&[0, 10]), other, fake_chunk(&[40, 50])],
        )];
        let got = merge_and_dedup(vec![src(s0), src(s1)], &rl, false, &decode).unwrap();
        // Replica 1's first chunk equals replica 0's and is skipped; the others are decoded.
        assert_eq!(*decoded.borrow(), vec![0, 20, 20, 40]);
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn label_checks_name_the_problem() {
        let rl = vec!["replica".to_string()];
        // (labels, expected error)
        type Case = (Vec<(&'static str, &'static str)>, Option<&'static str>);
        let cases: Vec<Case> = vec![
            (vec![("a", "1"), ("b", "2")], None),
            (vec![("a", "1"), ("replica", "0"), ("b", "2")], None),
            (vec![("a", "")], Some(r#"empty value for label "a""#)),
            (vec![("", "1")], Some("empty label name")),
            (vec![("b", "1"), ("a", "2")], Some(r#"labels not sorted: "b" before "a""#)),
            (vec![("a", "1"), ("a", "2")], Some(r#"duplicate label name "a""#)),
            (vec![("replica", "1"), ("replica", "2")], Some(r#"duplicate label name "replica""#)),
        ];
        for (labels, want) in cases {
            let got = check_labels(&view(&labels, vec![]), &rl).err();
            assert_eq!(got.as_deref(), want, "{labels:?}");
        }
    }

    /// A series as an endpoint sends it, left unparsed (as the fan-out reads every endpoint
    /// but the first).
    fn lazy(l: &[(&str, &str)], chunks: Vec<thanos::AggrChunk>) -> SeriesView {
        use prost::Message;
        let labels = l.iter().map(|(n, v)| thanos::Label { name: n.to_string(), value: v.to_string() }).collect();
        let m = thanos::SeriesResponse {
            result: Some(thanos::series_response::Result::Series(thanos::Series { labels, chunks })),
        };
        match crate::seriesview::decode_response_lazy(bytes::Bytes::from(m.encode_to_vec())) {
            Ok(crate::seriesview::SeriesFrame::Series(v)) => v,
            other => panic!("a series encodes to a series frame, got {other:?}"),
        }
    }

    fn stripped(series: Vec<SeriesView>, name: &str) -> Source {
        Source { name: name.into(), ..Source::new(series, true) }
    }

    proptest::proptest! {
        /// Copies skipped unread change nothing: three stripped replicas, each series present
        /// or not and with its own or the shared chunks, merge to what fully parsed sources
        /// merge to, with or without dedup, and through the pass-through merge.
        #[test]
        fn unread_copies_change_nothing(
            layout in proptest::collection::vec((0u8..8, 0u8..8, 0u8..3), 1..12),
            counter in proptest::bool::ANY,
        ) {
            let rl = vec!["replica".to_string()];
            // Per series: which replicas hold it (bits), which hold their own chunks (bits),
            // and how many chunks.
            let build = |r: usize, parsed: bool| -> Vec<SeriesView> {
                layout
                    .iter()
                    .enumerate()
                    .filter(|(_, (present, _, _))| present & (1 << r) != 0)
                    .map(|(i, (_, own, n))| {
                        let name = format!("s{i:02}");
                        let shift = if own & (1 << r) != 0 { r as i64 * 7 + 1 } else { 0 };
                        let chunks =
                            (0..=*n as i64).map(|c| fake_chunk(&[c * 100 + shift, c * 100 + 50 + shift])).collect();
                        let labels = [("__name__", name.as_str())];
                        if parsed { view(&labels, chunks) } else { lazy(&labels, chunks) }
                    })
                    .collect()
            };
            let sources = |parsed: bool| -> Vec<Source> {
                (0..3).map(|r| stripped(build(r, parsed || r == 0), &format!("r{r}"))).collect()
            };
            let eager = merge_and_dedup(sources(true), &rl, counter, &fake_decode).unwrap();
            let got = merge_and_dedup(sources(false), &rl, counter, &fake_decode).unwrap();
            proptest::prop_assert_eq!(names(&got), names(&eager));
            proptest::prop_assert_eq!(
                got.iter().map(|(_, s)| times(s)).collect::<Vec<_>>(),
                eager.iter().map(|(_, s)| times(s)).collect::<Vec<_>>()
            );
            let raw_eager = merge_raw(sources(true)).unwrap();
            let raw_got = merge_raw(sources(false)).unwrap();
            proptest::prop_assert_eq!(raw_got, raw_eager);
        }
    }

    /// A fake chunk whose data starts with a sample count header (`n`, whatever `ts` holds).
    fn counted_chunk(ts: &[i64], n: u16) -> thanos::AggrChunk {
        let mut c = fake_chunk(ts);
        let raw = c.raw.as_mut().expect("raw chunk");
        raw.data.splice(0..0, n.to_be_bytes());
        c
    }

    #[test]
    fn lazy_series_are_counted_checked_and_filtered_like_parsed_ones() {
        let rl = vec!["replica".to_string()];
        let counted = |ts: &[i64]| counted_chunk(ts, ts.len() as u16);
        let limits = Limits { mint: 0, maxt: 100, max_samples: 0, counted: 0 };
        // Preparing counts in-range chunks only, and keeps the count.
        let chunks = vec![counted(&[1, 2]), counted(&[50, 60, 70]), counted(&[200, 300])];
        let mut parsed = lazy(&[("__name__", "a")], chunks);
        assert_eq!(prepare(&mut parsed, &rl, &limits, "r0").unwrap(), 5);
        assert_eq!(parsed.samples, 5);
        assert_eq!(parsed.chunks.len(), 2);

        let decode = |_: &[&WireChunk]| -> Result<Samples, String> { Ok(fl(&[1, 2])) };
        let three = || {
            (0..3)
                .map(|r| {
                    let mut s = lazy(&[("__name__", "a")], vec![counted(&[1, 2])]);
                    if r == 0 {
                        prepare(&mut s, &rl, &Limits::NONE, "r0").unwrap();
                    }
                    stripped(vec![s], &format!("r{r}"))
                })
                .collect::<Vec<_>>()
        };
        // A series that is no copy is read and checked, and its endpoint named.
        let mut sources = three();
        sources[2].batches[0][0] = lazy(&[("__name__", "a"), ("job", "")], vec![counted(&[1, 2])]);
        let err = merge_and_dedup_within(&mut sources, &rl, false, &decode, &Limits::NONE).unwrap_err();
        assert_eq!(err, MergeError::Source { index: 2, message: r#"r2: empty value for label "job""#.into() });
        // Chunks outside the selection are dropped from series read in the merge too.
        let limits = Limits { mint: 1000, maxt: 2000, max_samples: 0, counted: 0 };
        let mut sources = three();
        sources[1].batches[0][0] = lazy(&[("__name__", "a"), ("job", "x")], vec![counted(&[1, 2])]);
        let got = merge_raw_within(&mut sources, &limits).unwrap();
        let chunks: Vec<usize> = got.iter().map(|(_, c)| c.len()).collect();
        // r0 was prepared without the range (all kept), r1's chunk is outside it, r2 is r0's copy.
        assert_eq!(chunks, vec![1, 0]);
    }

    /// The merge counts the series of sources the fan-out did not count, copies dropped unread
    /// as the series they copy: the limit takes exactly what counting every series of every
    /// endpoint takes, in both merges, whatever is copied, differs, is out of order or is left
    /// out after a bad series.
    #[test]
    fn the_merge_counts_copies_as_the_series_they_copy() {
        let rl = vec!["replica".to_string()];
        let range = Limits { mint: 0, maxt: 1000, max_samples: 0, counted: 0 };
        // Per series of each replica: labels and chunks (sample counts in their headers; the
        // chunk at 2000 is outside the range and counts nothing).
        type Layout = Vec<Vec<(&'static str, Vec<thanos::AggrChunk>)>>;
        let shared = || vec![counted_chunk(&[0, 10], 7), counted_chunk(&[2000], 50)];
        let healthy: Layout = (0..3).map(|_| vec![("a", shared()), ("b", vec![counted_chunk(&[5], 3)])]).collect();
        let mut lying = healthy.clone();
        // A replica that differs and announces far more samples: parsed and counted as it says.
        lying[2][1].1 = vec![counted_chunk(&[5], 60_000)];
        let mut partial = healthy.clone();
        // Series only some replicas hold (a ring with disjoint series), and one of its own.
        partial[1].remove(0);
        partial[2].push(("c", vec![counted_chunk(&[1], 11)]));
        let mut unsorted = healthy.clone();
        unsorted[1].reverse();
        for (name, layout) in [("healthy", healthy), ("lying", lying), ("partial", partial), ("unsorted", unsorted)] {
            // What counting every series as received gives.
            let want: usize = layout
                .iter()
                .flatten()
                .map(|(l, c)| prepare(&mut lazy(&[("__name__", l)], c.clone()), &rl, &range, "x").unwrap())
                .sum();
            // r0 read and counted as it arrived, the others lazy.
            let sources = || -> (Vec<Source>, usize) {
                let mut base = 0;
                let sources = layout
                    .iter()
                    .enumerate()
                    .map(|(r, series)| {
                        let views = series
                            .iter()
                            .map(|(l, c)| {
                                let mut v = lazy(&[("__name__", l)], c.clone());
                                if r == 0 {
                                    base += prepare(&mut v, &rl, &range, "r0").unwrap();
                                }
                                v
                            })
                            .collect();
                        Source { counted: r == 0, ..stripped(views, &format!("r{r}")) }
                    })
                    .collect();
                (sources, base)
            };
            for max in [want, want - 1] {
                let (mut s, counted) = sources();
                let limits = Limits { max_samples: max, counted, ..range };
                let got = merge_and_dedup_within(&mut s, &rl, false, &fake_decode, &limits);
                assert_eq!(got.is_ok(), max == want, "{name}, limit {max}: {got:?}");
                if max < want {
                    assert_eq!(got.unwrap_err(), MergeError::TooManySamples, "{name}");
                }
                let (mut s, counted) = sources();
                let limits = Limits { max_samples: max, counted, ..range };
                let got = merge_raw_within(&mut s, &limits);
                assert_eq!(got.is_ok(), max == want, "{name} raw, limit {max}: {got:?}");
            }
        }

        // A merge run again without a bad source counts afresh: the others' samples once.
        let mk = |r: usize, bad: bool| {
            let l: &[(&str, &str)] = if bad { &[("__name__", "a"), ("job", "")] } else { &[("__name__", "a")] };
            Source { counted: false, ..stripped(vec![lazy(l, vec![counted_chunk(&[1], 4)])], &format!("r{r}")) }
        };
        let mut sources = vec![mk(0, false), mk(1, true), mk(2, false)];
        let limits = Limits { max_samples: 8, ..range };
        let err = merge_and_dedup_within(&mut sources, &rl, false, &fake_decode, &limits).unwrap_err();
        assert!(matches!(err, MergeError::Source { index: 1, .. }), "{err:?}");
        sources.remove(1);
        assert!(merge_and_dedup_within(&mut sources, &rl, false, &fake_decode, &limits).is_ok());
    }

    /// Two endpoints that keep their replica labels (no stripping) sending the same replicas
    /// byte for byte: within a group, a series equal to the step's smallest but not to the
    /// group's first is read like any other (it once reached the flush unread).
    #[test]
    fn copies_of_later_replicas_in_a_group_are_read() {
        let rl = vec!["replica".to_string()];
        let series = |parsed: bool| {
            let mk = |r: &str, ts: &[i64]| {
                let l = [("__name__", "m"), ("replica", r)];
                if parsed { view(&l, vec![fake_chunk(ts)]) } else { lazy(&l, vec![fake_chunk(ts)]) }
            };
            vec![mk("A", &[0, 10]), mk("B", &[0, 10, 20])]
        };
        let sources = |second_parsed: bool| vec![src(series(true)), src(series(second_parsed))];
        let want = merge_and_dedup(sources(true), &rl, false, &fake_decode).unwrap();
        let got = merge_and_dedup(sources(false), &rl, false, &fake_decode).unwrap();
        assert_eq!(names(&got), vec![r#"{__name__="m"}"#.to_string()]);
        assert_eq!(names(&got), names(&want));
        assert_eq!(times(&got[0].1), times(&want[0].1));
    }

    /// A series whose response repeated the series field is parsed when decoded but still
    /// checked in the merge.
    #[test]
    fn series_parsed_at_decode_are_still_checked() {
        use prost::Message;
        let rl: Vec<String> = vec![];
        let one = |l: &[(&str, &str)]| thanos::SeriesResponse {
            result: Some(thanos::series_response::Result::Series(thanos::Series {
                labels: l.iter().map(|(n, v)| thanos::Label { name: n.to_string(), value: v.to_string() }).collect(),
                chunks: vec![],
            })),
        };
        // Two pieces that merge into unsorted labels.
        let mut buf = one(&[("b", "1")]).encode_to_vec();
        buf.extend(one(&[("a", "1")]).encode_to_vec());
        let Ok(crate::seriesview::SeriesFrame::Series(v)) =
            crate::seriesview::decode_response_lazy(bytes::Bytes::from(buf))
        else {
            panic!("a series frame")
        };
        assert!(v.is_parsed() && !v.prepared);
        let mut sources = vec![src(vec![view(&[("a", "0")], vec![])]), Source { name: "r1".into(), ..src(vec![v]) }];
        let err = merge_raw_within(&mut sources, &Limits::NONE).unwrap_err();
        assert!(matches!(&err, MergeError::Source { index: 1, message } if message.contains("not sorted")), "{err:?}");
        let _ = rl;
    }

    /// Downsampled chunks (aggregates, no raw chunk) pass through the pass-through merge:
    /// kept, equal ones from two endpoints dropped, ones differing in an aggregate kept.
    #[test]
    fn merge_raw_passes_aggregates_through() {
        let aggr = |sum: &[u8]| thanos::AggrChunk {
            min_time: 0,
            max_time: 300_000,
            count: Some(thanos::Chunk { r#type: 0, data: vec![0, 1, 9], hash: 0 }),
            sum: Some(thanos::Chunk { r#type: 0, data: sum.to_vec(), hash: 0 }),
            ..Default::default()
        };
        let l = [("__name__", "a")];
        let s0 = vec![view(&l, vec![aggr(&[0, 1, 7])])];
        let s1 = vec![view(&l, vec![aggr(&[0, 1, 7]), aggr(&[0, 1, 8])])];
        let got = merge_raw(vec![src(s0), src(s1)]).unwrap();
        assert_eq!(got.len(), 1);
        let sums: Vec<Vec<u8>> =
            got[0].1.iter().map(|c| c.aggrs[1].as_ref().expect("sum aggregate").data.to_vec()).collect();
        assert_eq!(sums, vec![vec![0, 1, 7], vec![0, 1, 8]]);
        assert!(got[0].1.iter().all(|c| c.raw.is_none() && c.aggrs[0].is_some()));
    }
}
