//! Hand-encoded StoreAPI `SeriesResponse` frames for the receiver's `Store/Series` call.
//!
//! The prost path built a `String` per label name and value, copied every chunk into a
//! `Vec`, hashed it, built a fresh `Labels` per series only to add the external labels,
//! then walked the message tree again to compute nested lengths, writing through `BufMut`
//! calls. [`Frame::encode`] instead writes a whole `SeriesResponse` in one pass per series
//! into one buffer of its final size, behind the gRPC message prefix: the series' stored
//! [`Labels`] merged with the tenant's [`ExtLabels`] on the fly, the chunks' bytes as
//! stored. The bytes are those prost writes for the same message: fields in number order,
//! proto3 defaults left out.
//!
//! Chunks go out without the optional `hash` field: Thanos's querier hashes chunks whose
//! hash is 0 itself, and Norn's querier compares chunk bytes.
//!
//! [`StoreGrpc`] serves `thanos.Store`: `Series` by hand (the request decoded with prost,
//! each frame handed to HTTP/2 as it is, so nothing is copied again into an encode
//! buffer, as tonic's codecs would), the other methods through the generated prost server.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use norn_model::Labels;
use norn_model::labels::LabelsIter;
use norn_storeapi::chunks::storepb_encoding;
use norn_storeapi::thanos::{SeriesRequest, SeriesResponse, store_server};
use norn_tsdb::chunks::ChunkMeta;
use prost::Message;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::server::NamedService;

/// External labels of one tenant as responses carry them, after removing the request's
/// `without_replica_labels` (which are removed from the series' own labels too, as
/// Thanos's TSDB store does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtLabels {
    /// Sorted by name, unique.
    pairs: Vec<(String, String)>,
    /// Label names dropped from series labels.
    strip: Vec<String>,
    /// Set by [`ExtLabels::for_series`]: none of the series it saw has a label named as
    /// one of `pairs` or `strip` (so `strip` is empty), and merging only inserts `pairs`.
    untouched: bool,
    /// Encoded length of `pairs` as `Label` fields of a `Series`.
    pairs_len: usize,
}

impl ExtLabels {
    /// `ext` without the labels named in `without`.
    pub fn new(ext: &Labels, without: &[String]) -> Self {
        let pairs: Vec<(String, String)> = ext
            .iter()
            .filter(|(n, _)| !without.iter().any(|w| w == n))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let mut strip: Vec<String> = without.iter().filter(|w| !w.is_empty()).cloned().collect();
        strip.sort();
        strip.dedup();
        let pairs_len = pairs.iter().map(|(n, v)| nested_len(label_len(n, v))).sum();
        ExtLabels { pairs, strip, untouched: false, pairs_len }
    }

    /// These labels for sending `series`: without the names to strip that none of them
    /// carries (stripping those changes nothing), and marked untouched when none carries
    /// an external label's name or a name to strip. Then merging only inserts the
    /// external labels, which [`Frame::encode`] does without comparing anything but
    /// names, and keeps the series' order but for one case that
    /// [`keeps_order`](Self::keeps_order) tells in constant time; with no external labels
    /// either, the labels are a [no-op](Self::is_noop). Decided in one pass over the
    /// series themselves, so series created or dropped concurrently cannot make it wrong.
    pub fn for_series<'a>(mut self, series: impl IntoIterator<Item = &'a Labels>) -> Self {
        // Names of `pairs` and `strip` (disjoint), sorted, each with whether it is a
        // name to strip and whether a series has it.
        let mut watch: Vec<(&str, bool, bool)> = self
            .pairs
            .iter()
            .map(|(n, _)| (n.as_str(), false, false))
            .chain(self.strip.iter().map(|n| (n.as_str(), true, false)))
            .collect();
        watch.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut left = watch.len();
        for l in series {
            if left == 0 {
                break;
            }
            // One merge of two sorted name lists.
            let mut w = 0;
            for (n, _) in l.iter() {
                while w < watch.len() && watch[w].0 < n {
                    w += 1;
                }
                let Some(entry) = watch.get_mut(w) else { break };
                if entry.0 == n && !entry.2 {
                    entry.2 = true;
                    left -= 1;
                }
            }
        }
        let untouched = left == watch.len();
        let mut seen = watch.iter().filter(|x| x.1).map(|x| (x.0, x.2)).collect::<Vec<_>>().into_iter();
        // `watch` lists the names to strip in `strip`'s order (both sorted).
        let keep: Vec<bool> = self.strip.iter().map(|_| seen.next().is_some_and(|x| x.1)).collect();
        let mut keep = keep.into_iter();
        self.strip.retain(|_| keep.next().unwrap_or(true));
        self.untouched = untouched;
        self
    }

    /// Whether [`ExtLabels::for_series`] found that no series it saw has a label these
    /// labels override or strip.
    pub fn untouched(&self) -> bool {
        self.untouched
    }

    /// Whether merging changes nothing: no external labels and nothing to strip.
    pub fn is_noop(&self) -> bool {
        self.pairs.is_empty() && self.strip.is_empty()
    }

    /// Whether merging leaves `l` as it is: no external labels, and `l` has none of the
    /// names to strip.
    pub fn keeps(&self, l: &Labels) -> bool {
        self.pairs.is_empty() && (self.untouched || !self.strip.iter().any(|x| has_name(l, x)))
    }

    /// Whether `l` has a label these external labels override or strip.
    pub fn touches(&self, l: &Labels) -> bool {
        l.iter().any(|(n, _)| self.pairs.iter().any(|(e, _)| e == n) || self.strip.iter().any(|x| x == n))
    }

    /// For label sets `a < b` that these labels do not [touch](Self::touches): whether
    /// `merged(a) < merged(b)` holds for sure, without comparing them; `false` means
    /// "compare them".
    ///
    /// Why: untouched sets only get the external labels inserted. Let `i` be the first
    /// position where `a` and `b` differ. External labels named below the names at `i`
    /// land in the common part of both; if `a[i]` and `b[i]` both exist, the first of the
    /// merged lists to show something other than the common part shows `a[i]` or `b[i]`
    /// (names of external labels never equal them), and `a[i] < b[i]` decides as before.
    /// If `a` is a proper prefix of `b`, merged `a` goes on with its next external label
    /// where merged `b` goes on with `b[i]`: the order flips when an external label is
    /// named above `b[i]`'s name, so that case (`a` shorter and the last external name
    /// above `b[a.len()]`'s name, a superset of it) answers `false`.
    pub fn keeps_order(&self, a: &Labels, b: &Labels) -> bool {
        match (self.pairs.last(), b.get_index(a.len())) {
            (Some((last, _)), Some((r0, _))) => last.as_str() < r0,
            _ => true,
        }
    }

    /// `series` with these labels merged in (external labels win) and stripped labels
    /// dropped, in name order.
    pub fn merged<'a>(&'a self, series: &'a Labels) -> Merged<'a> {
        let mut s = series.iter();
        let s_next = s.next();
        Merged { s, s_next, ext: &self.pairs, strip: &self.strip }
    }
}

/// Whether `l` has a label named `name`: a scan of the sorted names that stops at the
/// first name not below `name`.
fn has_name(l: &Labels, name: &str) -> bool {
    for (n, _) in l.iter() {
        match n.cmp(name) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => return true,
            std::cmp::Ordering::Greater => return false,
        }
    }
    false
}

/// Iterator of [`ExtLabels::merged`]: a merge of two sorted label lists.
#[derive(Debug, Clone)]
pub struct Merged<'a> {
    s: LabelsIter<'a>,
    s_next: Option<(&'a str, &'a str)>,
    ext: &'a [(String, String)],
    strip: &'a [String],
}

impl<'a> Iterator for Merged<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        if !self.strip.is_empty() {
            while let Some((n, _)) = self.s_next {
                if !self.strip.iter().any(|x| x == n) {
                    break;
                }
                self.s_next = self.s.next();
            }
        }
        match (self.s_next, self.ext.split_first()) {
            (None, None) => None,
            (Some(a), None) => {
                self.s_next = self.s.next();
                Some(a)
            }
            (a, Some(((en, ev), rest))) => {
                let take_ext = match a {
                    None => true,
                    Some((n, _)) => match n.cmp(en.as_str()) {
                        std::cmp::Ordering::Less => false,
                        std::cmp::Ordering::Equal => {
                            self.s_next = self.s.next(); // overridden by the external label
                            true
                        }
                        std::cmp::Ordering::Greater => true,
                    },
                };
                if take_ext {
                    self.ext = rest;
                    Some((en.as_str(), ev.as_str()))
                } else {
                    self.s_next = self.s.next();
                    a
                }
            }
        }
    }
}

/// One series to send: stored labels, the tenant's external labels and the chunks (empty
/// when the request skips chunks).
#[derive(Debug, Clone)]
pub struct OutSeries {
    /// Labels as stored.
    pub labels: Labels,
    /// The tenant's external labels and the names to strip.
    pub ext: Arc<ExtLabels>,
    /// Chunks to send.
    pub chunks: Vec<ChunkMeta>,
}

/// Bytes of the gRPC message prefix: a compression flag and a big-endian `u32` length.
const PREFIX: usize = 5;

/// Room kept before a frame's series for the message prefix and, in batches, the
/// `batch` key and its length (a varint of at most ten bytes): the header is written
/// last, right before the series, once their length is known.
const HEAD: usize = PREFIX + 1 + 10;

/// One encoded `SeriesResponse` of the Series stream, behind its gRPC message prefix, so
/// that it goes to HTTP/2 as it is.
#[derive(Debug, Clone)]
pub struct Frame {
    buf: Vec<u8>,
    /// Where the message prefix starts in `buf`.
    start: usize,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.message() == other.message()
    }
}

impl Eq for Frame {}

/// Writes the series of one [`Frame`] as they come, each straight into the frame's
/// buffer: labels merged with the external labels on the fly, chunk bytes copied from
/// where they are (a series' chunks can be borrowed under its lock, see
/// [`FrameWriter::push`]), so nothing is cloned or collected per series.
#[derive(Debug)]
pub struct FrameWriter {
    buf: Vec<u8>,
    batch: bool,
    series: usize,
}

impl FrameWriter {
    /// A frame of `result.batch` when `batch`, else of `result.series` (then push exactly
    /// one series); `capacity` is the expected length of the series, to allocate once.
    pub fn new(batch: bool, capacity: usize) -> FrameWriter {
        let mut buf = pool::take(HEAD.saturating_add(capacity));
        buf.resize(HEAD, 0);
        FrameWriter { buf, batch, series: 0 }
    }

    /// Makes room for at least `additional` more bytes.
    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    /// Series written so far.
    pub fn series(&self) -> usize {
        self.series
    }

    /// Bytes of the series written so far.
    pub fn series_bytes(&self) -> usize {
        self.buf.len() - HEAD
    }

    /// Appends one `Series`: `labels` merged with `ext`, then `chunks` (iterated twice:
    /// lengths first, then bytes).
    pub fn push<'c, I>(&mut self, labels: &Labels, ext: &ExtLabels, chunks: I)
    where
        I: Iterator<Item = &'c ChunkMeta> + Clone,
    {
        let chunks_len: usize = chunks.clone().map(|c| nested_len(aggr_chunk_len(c))).sum();
        let untouched = ext.untouched || ext.keeps(labels);
        // Labels changed by the external labels are merged once into a scratch list that
        // gives both their length and their bytes; others are read straight from the series.
        let merged: Vec<(&str, &str)> = if untouched { Vec::new() } else { ext.merged(labels).collect() };
        let labels_len = if untouched {
            labels.iter().map(|(n, v)| nested_len(label_len(n, v))).sum::<usize>() + ext.pairs_len
        } else {
            merged.iter().map(|(n, v)| nested_len(label_len(n, v))).sum()
        };
        let len = labels_len + chunks_len;
        self.buf.reserve(nested_len(len));
        // `result.series` and `batch.series` are both field 1.
        self.buf.push(tag(1, WT_LEN));
        put_varint(&mut self.buf, len as u64);
        if untouched {
            put_inserted(&mut self.buf, labels, &ext.pairs);
        } else {
            merged.iter().for_each(|(n, v)| put_label(&mut self.buf, n, v));
        }
        for c in chunks {
            let raw = raw_chunk_len(c);
            let mut head = Head::default();
            head.push(tag(2, WT_LEN));
            head.varint((int64_field_len(c.min_time) + int64_field_len(c.max_time) + nested_len(raw)) as u64);
            head.int64_field(1, c.min_time);
            head.int64_field(2, c.max_time);
            head.push(tag(3, WT_LEN));
            head.varint(raw as u64);
            head.int64_field(1, chunk_type(c));
            let data = &c.chunk.data;
            if !data.is_empty() {
                head.push(tag(2, WT_LEN));
                head.varint(data.len() as u64);
            }
            self.buf.extend_from_slice(head.bytes());
            self.buf.extend_from_slice(data);
        }
        self.series += 1;
    }

    /// The frame: its header written right before the series.
    pub fn finish(mut self) -> Frame {
        let body = self.buf.len() - HEAD;
        let mut head = Head::default();
        if self.batch {
            head.push(tag(4, WT_LEN));
            head.varint(body as u64);
        }
        let h = head.bytes();
        let start = HEAD - h.len() - PREFIX;
        self.buf[start + PREFIX..HEAD].copy_from_slice(h);
        Frame { buf: std::mem::take(&mut self.buf), start }
    }
}

impl Drop for FrameWriter {
    /// A writer left unfinished (the stream ended after a full frame, or was cancelled)
    /// hands its buffer back instead of freeing it.
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.buf));
    }
}

/// A few keys and varints built on the stack and appended in one copy (appending them
/// byte by byte checks the buffer's capacity at each byte).
#[derive(Clone, Copy)]
struct Head {
    // The most one chunk's keys take: 66 bytes.
    b: [u8; 72],
    n: usize,
}

impl Default for Head {
    fn default() -> Head {
        Head { b: [0; 72], n: 0 }
    }
}

impl Head {
    fn push(&mut self, x: u8) {
        if let Some(slot) = self.b.get_mut(self.n) {
            *slot = x;
            self.n += 1;
        }
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.push(v as u8);
    }

    fn int64_field(&mut self, field: u8, v: i64) {
        if v != 0 {
            self.push(tag(field, WT_VARINT));
            self.varint(v as u64);
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

impl Frame {
    /// Encodes `series` as one `SeriesResponse`: `result.batch` when `batch`, else
    /// `result.series` (of the first series; `series` must then hold exactly one).
    pub fn encode(series: Vec<OutSeries>, batch: bool) -> Frame {
        let len: usize = series
            .iter()
            .map(|s| s.chunks.iter().map(|c| c.chunk.data.len() + 32).sum::<usize>() + s.labels.byte_size() * 2)
            .sum();
        let mut w = FrameWriter::new(batch, len);
        for s in &series {
            w.push(&s.labels, &s.ext, s.chunks.iter());
        }
        w.finish()
    }

    /// The encoded `SeriesResponse`.
    fn message(&self) -> &[u8] {
        &self.buf[self.start + PREFIX..]
    }

    /// Length of the encoded `SeriesResponse`.
    pub fn len(&self) -> usize {
        self.message().len()
    }

    /// Whether the frame is empty (never: a frame holds at least its `result` key).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoded `SeriesResponse` (a copy).
    pub fn bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.message())
    }

    /// Appends the encoded `SeriesResponse` to `dst`.
    pub fn write_to<B: BufMut>(&self, dst: &mut B) {
        dst.put_slice(self.message());
    }

    /// The frame as a gRPC message (uncompressed, prefixed with its length), without
    /// copying it; an error if it is longer than the prefix can say.
    pub fn into_message(mut self) -> Result<Bytes, Status> {
        let len = u32::try_from(self.len())
            .map_err(|_| Status::resource_exhausted(format!("series frame of {} bytes exceeds 4 GiB", self.len())))?;
        let s = self.start;
        self.buf[s] = 0;
        self.buf[s + 1..s + PREFIX].copy_from_slice(&len.to_be_bytes());
        Ok(Bytes::from_owner(pool::Lent { buf: std::mem::take(&mut self.buf), start: s }))
    }

    /// The frame as prost's type.
    pub fn to_proto(&self) -> Result<SeriesResponse, Status> {
        SeriesResponse::decode(self.message()).map_err(|e| Status::internal(format!("encoded series frame: {e}")))
    }
}

/// Frame buffers kept for reuse once HTTP/2 has sent them: a fresh buffer of a large
/// frame is fresh memory, and the page faults of writing it cost about as much as
/// copying the chunks into it (the allocator hands freed pages back after half a second).
mod pool {
    use parking_lot::Mutex;

    /// Buffers kept at most.
    const KEEP: usize = 4;
    /// Largest buffer kept: larger ones are rare, and keeping them would pin their memory.
    const MAX_KEPT: usize = 4 << 20;

    static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    /// An empty buffer of at least `capacity` bytes: a kept one if one is that large.
    pub fn take(capacity: usize) -> Vec<u8> {
        let kept = {
            let mut free = FREE.lock();
            // The smallest that fits: small frames leave the large buffers to large ones.
            let best =
                free.iter().enumerate().filter(|(_, b)| b.capacity() >= capacity).min_by_key(|(_, b)| b.capacity());
            best.map(|(i, _)| i).map(|i| free.swap_remove(i))
        };
        kept.unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Keeps `buf` for reuse if there is room.
    pub(super) fn give(mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > MAX_KEPT {
            return;
        }
        buf.clear();
        let mut free = FREE.lock();
        if free.len() < KEEP {
            free.push(buf);
        } else if let Some(small) =
            free.iter_mut().min_by_key(|b| b.capacity()).filter(|b| b.capacity() < buf.capacity())
        {
            // Frames of the same queries come back: keep the sizes they need.
            *small = buf;
        }
    }

    /// A frame's buffer while HTTP/2 holds it (as `Bytes`): the message from `start`; the
    /// buffer goes back to the pool when dropped.
    pub struct Lent {
        pub buf: Vec<u8>,
        pub start: usize,
    }

    impl AsRef<[u8]> for Lent {
        fn as_ref(&self) -> &[u8] {
            self.buf.get(self.start..).unwrap_or_default()
        }
    }

    impl Drop for Lent {
        fn drop(&mut self) {
            give(std::mem::take(&mut self.buf));
        }
    }
}

const WT_VARINT: u8 = 0;
const WT_LEN: u8 = 2;

/// Key byte of a field below 16.
const fn tag(field: u8, wire_type: u8) -> u8 {
    (field << 3) | wire_type
}

fn varint_len(v: u64) -> usize {
    // Bits needed (at least 1), seven per byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Length of a length-delimited field (below 16) holding `len` bytes.
fn nested_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Length of a proto3 `string`/`bytes` field: absent when empty.
fn bytes_field_len(len: usize) -> usize {
    if len == 0 { 0 } else { nested_len(len) }
}

/// Length of a proto3 `int64`/enum field: absent when 0, negatives take ten bytes.
fn int64_field_len(v: i64) -> usize {
    if v == 0 { 0 } else { 1 + varint_len(v as u64) }
}

/// Writes `labels` with `ext` (sorted, no name in common with `labels`) inserted in name
/// order.
fn put_inserted(buf: &mut Vec<u8>, labels: &Labels, ext: &[(String, String)]) {
    let mut ext = ext.iter().peekable();
    for (n, v) in labels.iter() {
        while let Some((en, ev)) = ext.next_if(|(en, _)| en.as_str() < n) {
            put_label(buf, en, ev);
        }
        put_label(buf, n, v);
    }
    for (en, ev) in ext {
        put_label(buf, en, ev);
    }
}

/// Writes one `Label` message of a series (field 1).
fn put_label(buf: &mut Vec<u8>, n: &str, v: &str) {
    let mut h = Head::default();
    h.push(tag(1, WT_LEN));
    h.varint(label_len(n, v) as u64);
    if !n.is_empty() {
        h.push(tag(1, WT_LEN));
        h.varint(n.len() as u64);
    }
    buf.extend_from_slice(h.bytes());
    buf.extend_from_slice(n.as_bytes());
    if !v.is_empty() {
        let mut h = Head::default();
        h.push(tag(2, WT_LEN));
        h.varint(v.len() as u64);
        buf.extend_from_slice(h.bytes());
        buf.extend_from_slice(v.as_bytes());
    }
}

fn label_len(name: &str, value: &str) -> usize {
    bytes_field_len(name.len()) + bytes_field_len(value.len())
}

fn chunk_type(c: &ChunkMeta) -> i64 {
    i64::from(storepb_encoding(c.chunk.encoding) as i32)
}

/// Length of the `Chunk` message (`raw`): type and data, no hash.
fn raw_chunk_len(c: &ChunkMeta) -> usize {
    int64_field_len(chunk_type(c)) + bytes_field_len(c.chunk.data.len())
}

fn aggr_chunk_len(c: &ChunkMeta) -> usize {
    int64_field_len(c.min_time) + int64_field_len(c.max_time) + nested_len(raw_chunk_len(c))
}

/// The frames of one `Store/Series` answer: all made already, or arriving from a
/// blocking thread.
///
/// Small answers are made on the calling task: handing them to a blocking thread and
/// back through a channel costs two thread wakeups per request, more than the work
/// itself, and on a busy machine each wakeup waits for a core.
#[derive(Debug)]
pub enum SeriesFrames {
    /// Made on the calling task; an error, if any, is the last item.
    Ready(std::vec::IntoIter<Result<Frame, Status>>),
    /// Sent by a blocking thread as it makes them.
    Channel(ReceiverStream<Result<Frame, Status>>),
}

impl SeriesFrames {
    /// A stream of just `items`.
    pub fn ready(items: Vec<Result<Frame, Status>>) -> Self {
        SeriesFrames::Ready(items.into_iter())
    }
}

impl Stream for SeriesFrames {
    type Item = Result<Frame, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            SeriesFrames::Ready(items) => Poll::Ready(items.next()),
            SeriesFrames::Channel(rx) => Pin::new(rx).poll_next(cx),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            SeriesFrames::Ready(items) => items.size_hint(),
            SeriesFrames::Channel(rx) => rx.size_hint(),
        }
    }
}

impl SeriesFrames {
    /// Stops a blocking thread still making frames (its next send fails).
    fn close(&mut self) {
        if let SeriesFrames::Channel(rx) = self {
            rx.close();
        }
    }
}

/// What answers `Store/Series` with [`Frame`]s.
pub trait FrameSource: Send + Sync + 'static {
    /// Starts answering `req`; frames (or an error ending the stream) arrive on the stream.
    fn series_frames(&self, req: tonic::Request<SeriesRequest>) -> Result<SeriesFrames, Status>;
}

/// `thanos.Store`: `Series` answered with [`Frame`]s by hand, the other methods through the
/// generated prost server `inner`.
#[derive(Debug)]
pub struct StoreGrpc<T> {
    inner: store_server::StoreServer<T>,
    source: Arc<T>,
}

impl<T> Clone for StoreGrpc<T> {
    fn clone(&self) -> Self {
        StoreGrpc { inner: self.inner.clone(), source: self.source.clone() }
    }
}

impl<T: store_server::Store + FrameSource> StoreGrpc<T> {
    /// Serves `store`; responses have no size limit (a Series frame holds whole series).
    pub fn new(store: T) -> Self {
        let source = Arc::new(store);
        StoreGrpc {
            inner: store_server::StoreServer::from_arc(source.clone()).max_encoding_message_size(usize::MAX),
            source,
        }
    }
}

impl<T> NamedService for StoreGrpc<T> {
    const NAME: &'static str = store_server::SERVICE_NAME;
}

impl<T: store_server::Store + FrameSource> tower::Service<http::Request<tonic::body::Body>> for StoreGrpc<T> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != "/thanos.Store/Series" {
            return tower::Service::call(&mut self.inner, req);
        }
        let source = self.source.clone();
        Box::pin(async move { Ok(serve_series(&*source, req).await) })
    }
}

/// Largest `Series` request accepted (tonic's default decoding limit).
const MAX_REQUEST: usize = 4 << 20;

/// Answers one `Series` call: a gRPC response whose messages are the source's frames,
/// ended by the status trailers; errors before the first frame as a trailers-only
/// response, as tonic sends them.
async fn serve_series<T: FrameSource>(
    source: &T,
    req: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let started = match read_request(req).await {
        Ok(r) => source.series_frames(tonic::Request::new(r)),
        Err(e) => Err(e),
    };
    match started {
        Ok(frames) => {
            let body = FrameBody { frames, done: false };
            let mut resp = http::Response::new(tonic::body::Body::new(body));
            resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            resp
        }
        Err(status) => status.into_http(),
    }
}

/// Header naming the request encodings a gRPC server accepts.
const ACCEPT_ENCODING: &str = "grpc-accept-encoding";

/// Request encodings `Series` accepts: `snappy` through [`crate::grpc_snappy`], in the
/// form tonic sends (`identity` last).
const ACCEPTED_ENCODINGS: &str = "snappy,identity";

/// Reads the one message of a `Series` request.
async fn read_request(req: http::Request<tonic::body::Body>) -> Result<SeriesRequest, Status> {
    // Snappy-compressed requests were decompressed (and this header removed) by
    // `grpc_snappy`; tonic's server accepts no other compression either.
    if let Some(enc) = req.headers().get("grpc-encoding").filter(|e| e.as_bytes() != b"identity") {
        let mut status = Status::unimplemented(format!("Series request compressed with unsupported encoding {enc:?}"));
        // The gRPC spec: the answer lists the encodings the server accepts.
        status.metadata_mut().insert(ACCEPT_ENCODING, tonic::metadata::MetadataValue::from_static(ACCEPTED_ENCODINGS));
        return Err(status);
    }
    let body = http_body_util::Limited::new(req.into_body(), PREFIX + MAX_REQUEST).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            Status::out_of_range(format!("Series request longer than {MAX_REQUEST} bytes"))
        } else {
            Status::from_error(e)
        }
    })?;
    parse_request(&body.to_bytes())
}

/// Decodes the first length-prefixed message of a request body.
fn parse_request(body: &[u8]) -> Result<SeriesRequest, Status> {
    let Some((&[flag, a, b, c, d], rest)) = body.split_first_chunk::<PREFIX>() else {
        return Err(Status::internal("Series request without a request message"));
    };
    if flag != 0 {
        return Err(Status::unimplemented("Series request message compressed without a grpc-encoding"));
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let msg = rest.get(..len).ok_or_else(|| {
        Status::internal(format!("Series request message of {len} bytes cut short at {} bytes", rest.len()))
    })?;
    SeriesRequest::decode(msg).map_err(|e| Status::internal(format!("decoding Series request: {e}")))
}

/// The response body of a `Series` call: each frame as one gRPC message, then the status
/// as trailers (`grpc-status: 0` when the frames ran out, the error's otherwise).
struct FrameBody {
    frames: SeriesFrames,
    done: bool,
}

impl http_body::Body for FrameBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let status = match ready!(Pin::new(&mut self.frames).poll_next(cx)) {
            Some(Ok(frame)) => match frame.into_message() {
                Ok(msg) => return Poll::Ready(Some(Ok(http_body::Frame::data(msg)))),
                Err(e) => e,
            },
            Some(Err(e)) => e,
            None => Status::ok(""),
        };
        self.done = true;
        // Stops the reader if it is still sending (after an error it sent).
        self.frames.close();
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.clear();
            // A message that is not a valid header value: send the code alone.
            let _ = Status::new(status.code(), "").add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use norn_storeapi::thanos::{self, series_response};
    use norn_tsdb::chunkenc::{Chunk, Encoding};
    use proptest::prelude::*;

    use super::*;

    /// Label pairs of a test table.
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn chunk(enc: Encoding, min: i64, max: i64, data: &[u8]) -> ChunkMeta {
        ChunkMeta { min_time: min, max_time: max, chunk: Chunk::new(enc, data.to_vec()) }
    }

    /// What the prost path sent for the same series: labels built with `LabelsBuilder`
    /// (external labels win), stripped labels removed, chunks through `aggr_chunk`.
    fn prost_series(labels: &Labels, ext: &Labels, without: &[String], chunks: &[ChunkMeta]) -> thanos::Series {
        let mut b = labels.to_builder();
        for (n, v) in ext.iter() {
            b.set(n, v);
        }
        for w in without {
            b.del(w);
        }
        let l = b.build();
        thanos::Series {
            labels: norn_storeapi::labels_to_proto(&l),
            chunks: chunks.iter().map(|c| norn_storeapi::chunks::aggr_chunk(c, 0)).collect(),
        }
    }

    fn out(series: &[(Labels, Vec<ChunkMeta>)], ext: &Arc<ExtLabels>) -> Vec<OutSeries> {
        series.iter().map(|(l, c)| OutSeries { labels: l.clone(), ext: ext.clone(), chunks: c.clone() }).collect()
    }

    #[test]
    fn merged_labels() {
        let s = |pairs: &[(&str, &str)]| Labels::from_pairs(pairs.iter().copied());
        let series = s(&[("__name__", "up"), ("job", "a"), ("replica", "x"), ("zone", "z")]);
        let cases: &[(Pairs<'_>, &[&str], &str)] = &[
            (&[], &[], r#"__name__=up,job=a,replica=x,zone=z"#),
            (&[("replica", "r0")], &[], r#"__name__=up,job=a,replica=r0,zone=z"#),
            (&[("A", "1"), ("tenant", "t")], &[], r#"A=1,__name__=up,job=a,replica=x,tenant=t,zone=z"#),
            (&[("zz", "1")], &[], r#"__name__=up,job=a,replica=x,zone=z,zz=1"#),
            (&[("replica", "r0"), ("tenant", "t")], &["replica"], r#"__name__=up,job=a,tenant=t,zone=z"#),
            (&[("tenant", "t")], &["job", "zone", "nope"], r#"__name__=up,replica=x,tenant=t"#),
        ];
        for (ext, without, want) in cases {
            let without: Vec<String> = without.iter().map(|w| w.to_string()).collect();
            let e = ExtLabels::new(&s(ext), &without);
            let got: Vec<String> = e.merged(&series).map(|(n, v)| format!("{n}={v}")).collect();
            assert_eq!(got.join(","), *want, "ext {ext:?} without {without:?}");
        }
        assert!(ExtLabels::new(&Labels::empty(), &[]).is_noop());
        assert!(!ExtLabels::new(&Labels::empty(), &["a".into()]).is_noop());
    }

    /// Table of series shapes: each frame, batched or not, decodes with prost to what the
    /// prost path sent, and its bytes are prost's encoding of that message.
    #[test]
    fn frames_match_prost() {
        let l = |pairs: &[(&str, &str)]| Labels::from_pairs(pairs.iter().copied());
        let long = "v".repeat(300);
        let series: Vec<(Labels, Vec<ChunkMeta>)> = vec![
            (l(&[("__name__", "up")]), vec![]),
            (
                l(&[("__name__", "up"), ("job", "a")]),
                vec![chunk(Encoding::Xor, 0, 0, &[]), chunk(Encoding::Xor, -5, -1, &[1, 2, 3])],
            ),
            (
                l(&[("__name__", "h"), ("le", &long)]),
                vec![
                    chunk(Encoding::Histogram, 1000, 2000, &[9; 200]),
                    chunk(Encoding::FloatHistogram, i64::MIN, i64::MAX, &[7; 3]),
                ],
            ),
            (l(&[("a", "1"), ("replica", "x"), ("zz", "2")]), vec![chunk(Encoding::Xor, 1, 2, &[0; 20000])]),
            (l(&[]), vec![chunk(Encoding::Xor, 3, 4, &[5])]),
        ];
        let exts: &[(Pairs<'_>, &[&str])] = &[
            (&[], &[]),
            (&[("A", "first")], &[]),
            (&[("b", "inside"), ("replica", "r0")], &[]),
            (&[("tenant_id", "t1"), ("zzz", "last")], &[]),
            (&[("replica", "r0"), ("tenant_id", "t1")], &["replica"]),
            (&[("tenant_id", "t1")], &["a", "le", "job"]),
        ];
        for (ext, without) in exts {
            let ext = l(ext);
            let without: Vec<String> = without.iter().map(|w| w.to_string()).collect();
            let e = Arc::new(ExtLabels::new(&ext, &without));
            let want: Vec<thanos::Series> =
                series.iter().map(|(ls, cs)| prost_series(ls, &ext, &without, cs)).collect();
            let all = out(&series, &e);
            for (one, w) in all.chunks(1).zip(&want) {
                let frame = Frame::encode(one.to_vec(), false);
                let msg = SeriesResponse { result: Some(series_response::Result::Series(w.clone())) };
                let bytes = frame.bytes();
                assert_eq!(frame.len(), bytes.len());
                assert_eq!(SeriesResponse::decode(bytes.clone()).unwrap(), msg, "ext {ext} without {without:?}");
                assert_eq!(bytes[..], msg.encode_to_vec());
                assert_eq!(frame.to_proto().unwrap(), msg);
            }
            for size in [1, 2, 64] {
                for (os, ws) in all.chunks(size).zip(want.chunks(size)) {
                    let frame = Frame::encode(os.to_vec(), true);
                    let msg = SeriesResponse {
                        result: Some(series_response::Result::Batch(thanos::SeriesBatch { series: ws.to_vec() })),
                    };
                    assert_eq!(SeriesResponse::decode(frame.bytes().clone()).unwrap(), msg, "batch {size}");
                    assert_eq!(frame.bytes()[..], msg.encode_to_vec());
                }
            }
        }
        // An empty batch is still a batch on the wire.
        assert_eq!(Frame::encode(Vec::new(), true).bytes()[..], [0x22, 0x00]);
        // A batch whose length takes a multi-byte varint.
        let big = vec![(Labels::from_pairs([("a", "b")]), vec![chunk(Encoding::Xor, 1, 2, &[3; 70_000])]); 3];
        let e = Arc::new(ExtLabels::default());
        let msg = SeriesResponse {
            result: Some(series_response::Result::Batch(thanos::SeriesBatch {
                series: big.iter().map(|(l, c)| prost_series(l, &Labels::empty(), &[], c)).collect(),
            })),
        };
        assert_eq!(Frame::encode(out(&big, &e), true).bytes()[..], msg.encode_to_vec());
    }

    /// The proper-prefix case reorders; other untouched pairs keep their order.
    #[test]
    fn keeps_order_cases() {
        let l = |pairs: &[(&str, &str)]| Labels::from_pairs(pairs.iter().copied());
        let ext = ExtLabels::new(&l(&[("replica", "r0"), ("tenant_id", "t")]), &["replica".to_string()]);
        let cases: &[(Pairs<'_>, Pairs<'_>, bool)] = &[
            // `{a}` < `{a, b}`, but merged `{a, tenant_id}` > `{a, b, tenant_id}`.
            (&[("a", "1")], &[("a", "1"), ("b", "2")], false),
            // Prefix, but nothing external sorts after `zz`.
            (&[("a", "1")], &[("a", "1"), ("zz", "2")], true),
            (&[("a", "1"), ("b", "1")], &[("a", "1"), ("b", "2")], true),
            (&[("a", "1"), ("c", "1")], &[("a", "2")], true),
            (&[("__name__", "m"), ("job", "x")], &[("__name__", "n")], true),
        ];
        for (a, b, want) in cases {
            let (a, b) = (l(a), l(b));
            assert!(a < b && !ext.touches(&a) && !ext.touches(&b), "{a} {b}");
            assert_eq!(ext.keeps_order(&a, &b), *want, "{a} {b}");
            assert_eq!(ext.merged(&a).cmp(ext.merged(&b)).is_lt(), *want, "{a} {b}");
        }
        assert!(ext.touches(&l(&[("replica", "x")])));
        assert!(ext.touches(&l(&[("tenant_id", "x")])));
        assert!(!ext.touches(&l(&[("a", "x")])));
        assert!(ExtLabels::default().keeps_order(&l(&[("a", "1")]), &l(&[("a", "1"), ("b", "2")])));
    }

    /// `for_series` keeps exactly the names to strip that some series has; `keeps` holds
    /// for series the merge leaves as they are.
    #[test]
    fn strip_only_what_is_there() {
        let l = |pairs: &[(&str, &str)]| Labels::from_pairs(pairs.iter().copied());
        let series = [l(&[("__name__", "up"), ("job", "a")]), l(&[("b", "1"), ("replica", "x")])];
        let w = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        // External labels, names to strip, names kept to strip, no-op, untouched.
        type Case<'a> = (Pairs<'a>, &'a [&'a str], &'a [&'a str], bool, bool);
        let cases: &[Case<'_>] = &[
            (&[], &[], &[], true, true),
            (&[], &["replica"], &["replica"], false, false),
            (&[], &["zone"], &[], true, true),
            (&[], &["a", "job", "zone"], &["job"], false, false),
            (&[("replica", "r0")], &["replica"], &["replica"], false, false),
            (&[("replica", "r0"), ("tenant", "t")], &["replica", "nope"], &["replica"], false, false),
            (&[("replica", "r0"), ("tenant", "t")], &["nope"], &[], false, false),
            (&[("replica", "r0"), ("tenant", "t")], &["replica", "a", "zz"], &["replica"], false, false),
            (&[("tenant", "t")], &["zz"], &[], false, true),
            (&[("A", "1"), ("tenant", "t")], &["a"], &[], false, true),
            (&[("job", "x")], &[], &[], false, false),
        ];
        for (ext, without, kept, noop, untouched) in cases {
            let e = ExtLabels::new(&l(ext), &w(without)).for_series(&series);
            assert_eq!(e.strip, w(kept), "{ext:?} {without:?}");
            assert_eq!(e.is_noop(), *noop, "{ext:?} {without:?}");
            assert_eq!(e.untouched(), *untouched, "{ext:?} {without:?}");
            for s in &series {
                let same = e.merged(s).eq(s.iter());
                assert_eq!(e.keeps(s), e.pairs.is_empty() && same, "{ext:?} {without:?} {s}");
            }
        }
        // No series: nothing to strip.
        assert!(ExtLabels::new(&Labels::empty(), &w(&["replica"])).for_series(&[]).is_noop());
        assert!(has_name(&series[1], "b") && has_name(&series[1], "replica") && !has_name(&series[1], "c"));
        assert!(!has_name(&Labels::empty(), "a"));
    }

    /// Request bodies: the message decoded, anything else refused with a status naming
    /// what was wrong.
    #[test]
    fn request_parsing() {
        let req = SeriesRequest { min_time: 5, max_time: 9, limit: 3, ..Default::default() };
        let msg = req.encode_to_vec();
        let framed = |flag: u8, len: usize, body: &[u8]| {
            let mut v = vec![flag];
            v.extend_from_slice(&(len as u32).to_be_bytes());
            v.extend_from_slice(body);
            v
        };
        assert_eq!(parse_request(&framed(0, msg.len(), &msg)).unwrap(), req);
        // An empty message is the default request.
        assert_eq!(parse_request(&framed(0, 0, &[])).unwrap(), SeriesRequest::default());
        let cases: &[(Vec<u8>, tonic::Code, &str)] = &[
            (vec![], tonic::Code::Internal, "without a request message"),
            (vec![0, 0, 0], tonic::Code::Internal, "without a request message"),
            (framed(1, msg.len(), &msg), tonic::Code::Unimplemented, "compressed"),
            (framed(0, msg.len() + 1, &msg), tonic::Code::Internal, "cut short"),
            (framed(0, 2, &[0xff, 0xff]), tonic::Code::Internal, "decoding Series request"),
        ];
        for (body, code, what) in cases {
            let e = parse_request(body).unwrap_err();
            assert_eq!(e.code(), *code, "{body:?}: {e}");
            assert!(e.message().contains(what), "{body:?}: {e}");
        }
    }

    /// The response body: each frame as one prefixed message, then the status trailers,
    /// `grpc-status: 0` at the end of the frames, the error's code and message after one.
    #[tokio::test]
    async fn frame_body_messages_and_trailers() {
        let l = Labels::from_pairs([("a", "1")]);
        let e = Arc::new(ExtLabels::default());
        let frame = |n: usize| {
            let s = vec![(l.clone(), vec![chunk(Encoding::Xor, 1, 2, &vec![7; n])])];
            Frame::encode(out(&s, &e), true)
        };
        for fail in [false, true] {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let frames = [frame(3), frame(300)];
            for f in &frames {
                tx.send(Ok(f.clone())).await.unwrap();
            }
            if fail {
                tx.send(Err(Status::not_found("gone: 100%"))).await.unwrap();
            }
            drop(tx);
            let mut body = FrameBody { frames: SeriesFrames::Channel(ReceiverStream::new(rx)), done: false };
            let mut data = Vec::new();
            let mut trailers = None;
            while let Some(f) = body.frame().await {
                let f = f.unwrap();
                match f.into_data() {
                    Ok(d) => data.push(d),
                    Err(f) => trailers = f.into_trailers().ok(),
                }
            }
            assert!(http_body::Body::is_end_stream(&body));
            assert_eq!(data.len(), 2);
            for (d, f) in data.iter().zip(&frames) {
                assert_eq!(d[0], 0);
                assert_eq!(u32::from_be_bytes(d[1..5].try_into().unwrap()) as usize, f.len());
                assert_eq!(d[5..], f.bytes()[..]);
            }
            let t = trailers.expect("trailers");
            let want = if fail { "5" } else { "0" };
            assert_eq!(t.get("grpc-status").unwrap(), want, "fail {fail}");
            if fail {
                assert_eq!(t.get("grpc-message").unwrap(), "gone:%20100%25");
            }
        }
    }

    #[test]
    fn varints() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX >> 1, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            assert_eq!(b.len(), prost::encoding::encoded_len_varint(v), "{v}");
            assert_eq!(prost::encoding::decode_varint(&mut &b[..]).unwrap(), v);
        }
    }

    fn arb_labels() -> impl Strategy<Value = Labels> {
        proptest::collection::vec(("[a-e_]{1,3}", "\\PC{0,6}"), 0..6).prop_map(Labels::from_pairs)
    }

    fn arb_chunk() -> impl Strategy<Value = ChunkMeta> {
        (
            prop_oneof![Just(Encoding::Xor), Just(Encoding::Histogram), Just(Encoding::FloatHistogram)],
            any::<i64>(),
            any::<i64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(e, a, b, d)| chunk(e, a, b, &d))
    }

    proptest! {
        /// Any labels, external labels, stripped names and chunks: the hand encoding is
        /// prost's encoding of the message the prost path built.
        #[test]
        fn encoder_agrees_with_prost(
            series in proptest::collection::vec((arb_labels(), proptest::collection::vec(arb_chunk(), 0..4)), 0..5),
            ext in arb_labels(),
            without in proptest::collection::vec("[a-e_]{1,3}", 0..3),
            batch in any::<bool>(),
            filter in any::<bool>(),
        ) {
            let e = ExtLabels::new(&ext, &without);
            // Names no series has dropped from `strip` change nothing on the wire.
            let e = Arc::new(if filter { e.for_series(series.iter().map(|(l, _)| l)) } else { e });
            let want: Vec<thanos::Series> =
                series.iter().map(|(ls, cs)| prost_series(ls, &ext, &without, cs)).collect();
            let os = out(&series, &e);
            let (frame, msg) = if batch || os.len() != 1 {
                (Frame::encode(os.clone(), true), series_response::Result::Batch(thanos::SeriesBatch { series: want }))
            } else {
                (Frame::encode(os, false), series_response::Result::Series(want[0].clone()))
            };
            let msg = SeriesResponse { result: Some(msg) };
            let bytes = frame.bytes().to_vec();
            prop_assert_eq!(frame.len(), bytes.len());
            // Written into another buffer.
            let mut via_encoder = bytes::BytesMut::from(&b"prior"[..]);
            frame.write_to(&mut via_encoder);
            prop_assert_eq!(&via_encoder[..5], b"prior");
            prop_assert_eq!(&via_encoder[5..], &bytes[..]);
            prop_assert_eq!(&bytes, &msg.encode_to_vec());
            prop_assert_eq!(SeriesResponse::decode(&bytes[..]).unwrap(), msg);
        }

        /// `keeps_order` never claims an order the merged labels do not have.
        #[test]
        fn keeps_order_is_sound(
            a in arb_labels(),
            b in arb_labels(),
            ext in arb_labels(),
            without in proptest::collection::vec("[a-e_]{1,3}", 0..3),
        ) {
            let e = ExtLabels::new(&ext, &without);
            let (a, b) = if a < b { (a, b) } else { (b, a) };
            if a < b && !e.touches(&a) && !e.touches(&b) && e.keeps_order(&a, &b) {
                prop_assert!(e.merged(&a).cmp(e.merged(&b)).is_lt(), "{} {} ext {} without {:?}", a, b, ext, without);
            }
        }
    }
}
