//! Zero-copy decoding of StoreAPI `Series` responses on the querier's client side.
//!
//! The generated prost types allocate a `String` per label name and value and a `Vec` per
//! chunk; on a fan-out that reads every series three times (RF=3) that was the largest part
//! of the decoding cost. For the `Store/Series` call only, [`call_series`] sends the
//! prost-encoded request and [`GrpcMessages`] reads the response's gRPC messages straight from
//! the HTTP/2 DATA frames (tonic's `Streaming` copies every frame into its decode buffer);
//! [`decode_response`] / [`decode_response_lazy`] turn each into a [`SeriesFrame`] whose label
//! strings and chunk bytes are [`Bytes`] slices of the received message.
//!
//! Validation is the same as prost's for the fields read: wire types of known fields,
//! lengths, varints, tags and UTF-8 of strings. Unknown fields are skipped as prost skips
//! them; groups (deprecated, never written by StoreAPI peers) are rejected.

use bytes::{Buf, Bytes};
use http_body::Body as HttpBody;
use norn_storeapi::thanos::{self, SeriesRequest};
use tonic::Status;

/// What was wrong with a `SeriesResponse`, and in which message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The message ended inside a field.
    #[error("decode {msg}: truncated {what}")]
    Truncated {
        /// Message being decoded.
        msg: &'static str,
        /// What was cut short.
        what: &'static str,
    },
    /// A varint longer than 64 bits.
    #[error("decode {msg}: invalid varint")]
    Varint {
        /// Message being decoded.
        msg: &'static str,
    },
    /// Field number 0 or above 2^29-1.
    #[error("decode {msg}: invalid field key {key}")]
    Key {
        /// Message being decoded.
        msg: &'static str,
        /// The key read.
        key: u64,
    },
    /// A known field with the wrong wire type, or an unsupported one.
    #[error("decode {msg}: field {field} has invalid wire type {wire_type}")]
    WireType {
        /// Message being decoded.
        msg: &'static str,
        /// Field number.
        field: u32,
        /// Wire type found.
        wire_type: u8,
    },
    /// A string field that is not UTF-8.
    #[error("decode {msg}: field {field} is not valid UTF-8")]
    Utf8 {
        /// Message being decoded.
        msg: &'static str,
        /// Field name.
        field: &'static str,
    },
}

/// Where one label's name and value are in the received buffer (both checked UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct LabelRange {
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

/// The raw part of a StoreAPI chunk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawChunk {
    /// `thanos::chunk::Encoding` as sent.
    pub encoding: i32,
    /// Chunk bytes (a slice of the received message).
    pub data: Bytes,
    /// Hash as sent.
    pub hash: u64,
}

/// A StoreAPI chunk: raw data, or the aggregates of a downsampled chunk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireChunk {
    /// First sample's time.
    pub min_time: i64,
    /// Last sample's time.
    pub max_time: i64,
    /// Raw chunk, if any.
    pub raw: Option<RawChunk>,
    /// Downsampled aggregates (fields 4–8: count, sum, min, max, counter), as sent.
    pub aggrs: [Option<RawChunk>; 5],
}

impl WireChunk {
    /// A chunk from its prost form (copies the data; for tests and local sources).
    pub fn from_proto(c: &thanos::AggrChunk) -> Self {
        WireChunk {
            min_time: c.min_time,
            max_time: c.max_time,
            raw: c.raw.as_ref().map(RawChunk::from_proto),
            aggrs: [&c.count, &c.sum, &c.min, &c.max, &c.counter].map(|a| a.as_ref().map(RawChunk::from_proto)),
        }
    }

    /// The chunk in its prost form (copies the data).
    pub fn to_proto(&self) -> thanos::AggrChunk {
        thanos::AggrChunk {
            min_time: self.min_time,
            max_time: self.max_time,
            raw: self.raw.as_ref().map(RawChunk::to_proto),
            count: self.aggrs[0].as_ref().map(RawChunk::to_proto),
            sum: self.aggrs[1].as_ref().map(RawChunk::to_proto),
            min: self.aggrs[2].as_ref().map(RawChunk::to_proto),
            max: self.aggrs[3].as_ref().map(RawChunk::to_proto),
            counter: self.aggrs[4].as_ref().map(RawChunk::to_proto),
        }
    }
}

/// What the sample limit reads of a chunk: its time range, and the bytes whose header
/// announces its samples (the raw chunk's data, or else the first downsampled aggregate's,
/// in field order; empty when it has neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHead<'a> {
    /// First sample's time.
    pub min_time: i64,
    /// Last sample's time.
    pub max_time: i64,
    /// Data whose header counts the chunk's samples.
    pub counted: &'a [u8],
}

impl WireChunk {
    /// The chunk's [`ChunkHead`].
    pub fn head(&self) -> ChunkHead<'_> {
        let counted = self.raw.as_ref().or_else(|| self.aggrs.iter().flatten().next()).map_or(&[][..], |c| &c.data[..]);
        ChunkHead { min_time: self.min_time, max_time: self.max_time, counted }
    }
}

impl RawChunk {
    /// From the prost form (copies the data).
    pub fn from_proto(r: &thanos::Chunk) -> Self {
        RawChunk { encoding: r.r#type, data: Bytes::copy_from_slice(&r.data), hash: r.hash }
    }

    /// The prost form (copies the data).
    pub fn to_proto(&self) -> thanos::Chunk {
        thanos::Chunk { r#type: self.encoding, data: self.data.to_vec(), hash: self.hash }
    }
}

/// A series of a response. Labels are ranges of the received buffer rather than `Bytes`
/// slices of their own: one reference count per series instead of two per label (the
/// atomic counting showed in profiles).
///
/// A view decoded lazily ([`decode_response_lazy`]) holds only where its `Series` message is
/// until [`SeriesView::parse`]: a replica whose bytes equal an already parsed series is then
/// never parsed at all (see the merge in `dedup`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeriesView {
    buf: Bytes,
    /// The `Series` message in `buf`, when the series came in one piece (a response that
    /// repeats its series field merges the pieces, and has no single message to compare).
    raw: Option<std::ops::Range<usize>>,
    /// Labels and chunks have been read from `raw`.
    parsed: bool,
    labels: Vec<LabelRange>,
    /// Chunks as sent (empty until parsed).
    pub chunks: Vec<WireChunk>,
    /// Checked and filtered for a selection (`dedup::prepare`); a series parsed only because
    /// its response repeated the series field is not.
    pub prepared: bool,
    /// Samples its chunks in the selection's range announce, counted when prepared: what
    /// the merge counts against the sample limit for it, and for each copy of it dropped unread.
    pub samples: usize,
}

impl SeriesView {
    /// Reads labels and chunks from the series' bytes, once; checks what prost checks.
    pub fn parse(&mut self) -> Result<(), ViewError> {
        if self.parsed {
            return Ok(());
        }
        let range = self.raw.clone().unwrap_or_default();
        // Taken out for the call rather than cloned: no reference counting per series.
        let buf = std::mem::take(&mut self.buf);
        self.labels.reserve(8);
        let res = series(&buf, range, self);
        self.buf = buf;
        res?;
        self.parsed = true;
        Ok(())
    }

    /// Whether labels and chunks have been read.
    pub fn is_parsed(&self) -> bool {
        self.parsed
    }

    /// The series' `Series` message as received, when it came in one piece: two series
    /// with equal bytes have equal labels and chunks, parsed or not.
    pub fn message_bytes(&self) -> Option<&[u8]> {
        self.raw.as_ref().and_then(|r| self.buf.get(r.clone()))
    }

    fn str_at(&self, r: &std::ops::Range<usize>) -> &str {
        // SAFETY: every range stored in `labels` was checked in bounds and UTF-8 when decoded
        // from `buf`, which is immutable.
        unsafe { std::str::from_utf8_unchecked(self.buf.get_unchecked(r.clone())) }
    }

    /// Labels as sent, `(name, value)` (sortedness is checked by the caller).
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> + Clone + '_ {
        debug_assert!(self.parsed, "labels of an unparsed series");
        self.labels.iter().map(|l| (self.str_at(&l.name), self.str_at(&l.value)))
    }

    /// A view of a prost series (encodes and decodes it; for tests).
    #[cfg(test)]
    pub(crate) fn from_proto(s: &thanos::Series) -> SeriesView {
        use prost::Message;
        let m = thanos::SeriesResponse { result: Some(thanos::series_response::Result::Series(s.clone())) };
        match decode_response(Bytes::from(m.encode_to_vec())) {
            Ok(SeriesFrame::Series(v)) => v,
            other => panic!("a series encodes to a series frame, got {other:?}"),
        }
    }

    /// The series in its prost form (copies; for tests).
    pub fn to_proto(&self) -> thanos::Series {
        thanos::Series {
            labels: self.labels().map(|(n, v)| thanos::Label { name: n.into(), value: v.into() }).collect(),
            chunks: self.chunks.iter().map(WireChunk::to_proto).collect(),
        }
    }
}

/// One `SeriesResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SeriesFrame {
    /// A series.
    Series(SeriesView),
    /// A batch of series.
    Batch(Vec<SeriesView>),
    /// A warning.
    Warning(String),
    /// Hints (ignored by the querier).
    Hints,
    /// No result set.
    #[default]
    Empty,
}

const WT_VARINT: u8 = 0;
const WT_I64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_I32: u8 = 5;

/// A cursor over one message: `root[pos..end]`, offsets absolute in `root`.
struct Reader<'a> {
    root: &'a Bytes,
    pos: usize,
    end: usize,
    msg: &'static str,
}

impl<'a> Reader<'a> {
    fn new(root: &'a Bytes, range: std::ops::Range<usize>, msg: &'static str) -> Self {
        Reader { root, pos: range.start, end: range.end, msg }
    }

    fn done(&self) -> bool {
        self.pos >= self.end
    }

    fn utf8(&self, r: &std::ops::Range<usize>, field: &'static str) -> Result<(), ViewError> {
        match self.root.get(r.clone()).map(std::str::from_utf8) {
            Some(Ok(_)) => Ok(()),
            _ => Err(ViewError::Utf8 { msg: self.msg, field }),
        }
    }

    fn varint(&mut self) -> Result<u64, ViewError> {
        // Tags and most lengths fit one byte, series' and chunks' lengths two.
        if self.pos < self.end
            && let Some(&b) = self.root.get(self.pos)
        {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
            if self.pos + 1 < self.end
                && let Some(&c) = self.root.get(self.pos + 1)
                && c < 0x80
            {
                self.pos += 2;
                return Ok(u64::from(b & 0x7f) | u64::from(c) << 7);
            }
        }
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.root.get(self.pos).filter(|_| self.pos < self.end) else {
                return Err(ViewError::Truncated { msg: self.msg, what: "varint" });
            };
            self.pos += 1;
            // The tenth byte may only carry the 64th bit (as prost checks).
            if i == 9 && b > 1 {
                return Err(ViewError::Varint { msg: self.msg });
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(ViewError::Varint { msg: self.msg })
    }

    /// Field number and wire type.
    fn key(&mut self) -> Result<(u32, u8), ViewError> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(ViewError::Key { msg: self.msg, key });
        }
        let wt = (key & 7) as u8;
        let field = (key >> 3) as u32;
        if field == 0 {
            return Err(ViewError::Key { msg: self.msg, key });
        }
        if wt > WT_I32 {
            return Err(ViewError::WireType { msg: self.msg, field, wire_type: wt });
        }
        Ok((field, wt))
    }

    /// A length-delimited field's range.
    fn bytes(&mut self, what: &'static str) -> Result<std::ops::Range<usize>, ViewError> {
        let len = self.varint()?;
        let rest = (self.end - self.pos) as u64;
        if len > rest {
            return Err(ViewError::Truncated { msg: self.msg, what });
        }
        let r = self.pos..self.pos + len as usize;
        self.pos = r.end;
        Ok(r)
    }

    fn fixed(&mut self, n: usize) -> Result<(), ViewError> {
        if self.end - self.pos < n {
            return Err(ViewError::Truncated { msg: self.msg, what: "fixed-width field" });
        }
        self.pos += n;
        Ok(())
    }

    fn skip(&mut self, field: u32, wt: u8) -> Result<(), ViewError> {
        match wt {
            WT_VARINT => self.varint().map(drop),
            WT_I64 => self.fixed(8),
            WT_LEN => self.bytes("field").map(drop),
            WT_I32 => self.fixed(4),
            _ => Err(ViewError::WireType { msg: self.msg, field, wire_type: wt }),
        }
    }

    fn expect(&self, field: u32, wt: u8, want: u8) -> Result<(), ViewError> {
        if wt == want { Ok(()) } else { Err(ViewError::WireType { msg: self.msg, field, wire_type: wt }) }
    }
}

fn label(root: &Bytes, range: std::ops::Range<usize>) -> Result<LabelRange, ViewError> {
    let mut r = Reader::new(root, range, "Label");
    let mut l = LabelRange::default();
    while !r.done() {
        match r.key()? {
            (1, wt) => {
                r.expect(1, wt, WT_LEN)?;
                l.name = r.bytes("name")?;
                r.utf8(&l.name, "name")?;
            }
            (2, wt) => {
                r.expect(2, wt, WT_LEN)?;
                l.value = r.bytes("value")?;
                r.utf8(&l.value, "value")?;
            }
            (f, wt) => r.skip(f, wt)?,
        }
    }
    Ok(l)
}

/// Merges a `Chunk` message into `c` (a repeated singular message merges, as in prost).
fn chunk(root: &Bytes, range: std::ops::Range<usize>, c: &mut RawChunk) -> Result<(), ViewError> {
    let mut r = Reader::new(root, range, "Chunk");
    while !r.done() {
        match r.key()? {
            (1, wt) => {
                r.expect(1, wt, WT_VARINT)?;
                c.encoding = r.varint()? as i32;
            }
            (2, wt) => {
                r.expect(2, wt, WT_LEN)?;
                c.data = root.slice(r.bytes("data")?);
            }
            (3, wt) => {
                r.expect(3, wt, WT_VARINT)?;
                c.hash = r.varint()?;
            }
            (f, wt) => r.skip(f, wt)?,
        }
    }
    Ok(())
}

fn aggr_chunk(root: &Bytes, range: std::ops::Range<usize>) -> Result<WireChunk, ViewError> {
    let mut r = Reader::new(root, range, "AggrChunk");
    let mut c = WireChunk::default();
    while !r.done() {
        match r.key()? {
            (1, wt) => {
                r.expect(1, wt, WT_VARINT)?;
                c.min_time = r.varint()? as i64;
            }
            (2, wt) => {
                r.expect(2, wt, WT_VARINT)?;
                c.max_time = r.varint()? as i64;
            }
            (3, wt) => {
                r.expect(3, wt, WT_LEN)?;
                let b = r.bytes("raw")?;
                chunk(root, b, c.raw.get_or_insert_with(RawChunk::default))?;
            }
            (f @ 4..=8, wt) => {
                r.expect(f, wt, WT_LEN)?;
                let b = r.bytes("aggregate")?;
                // Repeated occurrences merge into one, as prost merges sub-messages.
                chunk(root, b, c.aggrs[f as usize - 4].get_or_insert_with(RawChunk::default))?;
            }
            (f, wt) => r.skip(f, wt)?,
        }
    }
    Ok(c)
}

/// Merges a `Series` message into `s`.
fn series(root: &Bytes, range: std::ops::Range<usize>, s: &mut SeriesView) -> Result<(), ViewError> {
    let mut r = Reader::new(root, range, "Series");
    while !r.done() {
        match r.key()? {
            (1, wt) => {
                r.expect(1, wt, WT_LEN)?;
                s.labels.push(label(root, r.bytes("labels")?)?);
            }
            (2, wt) => {
                r.expect(2, wt, WT_LEN)?;
                s.chunks.push(aggr_chunk(root, r.bytes("chunks")?)?);
            }
            (f, wt) => r.skip(f, wt)?,
        }
    }
    Ok(())
}

/// Validates a `google.protobuf.Any` (hints), keeping nothing.
fn any_msg(root: &Bytes, range: std::ops::Range<usize>) -> Result<(), ViewError> {
    let mut r = Reader::new(root, range, "Any");
    while !r.done() {
        match r.key()? {
            (1, wt) => {
                r.expect(1, wt, WT_LEN)?;
                let u = r.bytes("type_url")?;
                r.utf8(&u, "type_url")?;
            }
            (2, wt) => {
                r.expect(2, wt, WT_LEN)?;
                r.bytes("value")?;
            }
            (f, wt) => r.skip(f, wt)?,
        }
    }
    Ok(())
}

/// Decodes one `SeriesResponse`; labels and chunk data borrow from `buf`. A oneof field
/// seen twice merges into the earlier value when it is the same variant and replaces it
/// otherwise, as prost does.
pub fn decode_response(buf: Bytes) -> Result<SeriesFrame, ViewError> {
    decode_frame(buf, false)
}

/// [`decode_response`] that leaves series unparsed: only the response's own structure is
/// read and checked, each series' labels and chunks wait for [`SeriesView::parse`] (which
/// reports what would have failed here).
pub fn decode_response_lazy(buf: Bytes) -> Result<SeriesFrame, ViewError> {
    decode_frame(buf, true)
}

fn decode_frame(buf: Bytes, lazy: bool) -> Result<SeriesFrame, ViewError> {
    let root = &buf;
    let new_series = |range: std::ops::Range<usize>| SeriesView {
        buf: buf.clone(),
        raw: Some(range),
        // Room for a typical label set up front: one allocation instead of growing 4, 8, 16.
        labels: if lazy { Vec::new() } else { Vec::with_capacity(8) },
        ..Default::default()
    };
    // A series read now, or left for later.
    let read = |s: &mut SeriesView| -> Result<(), ViewError> { if lazy { Ok(()) } else { s.parse() } };
    // Series left unread that a later field of the oneof replaces are read before they go:
    // prost has read them by then and fails on bad bytes, so a frame that replaces a broken
    // series is refused as it would be eagerly. Only malformed senders repeat the oneof.
    let settle = |out: &mut SeriesFrame| -> Result<(), ViewError> {
        match out {
            SeriesFrame::Series(s) if lazy => s.parse(),
            SeriesFrame::Batch(l) if lazy => l.iter_mut().try_for_each(SeriesView::parse),
            _ => Ok(()),
        }
    };
    let mut r = Reader::new(root, 0..buf.len(), "SeriesResponse");
    let mut out = SeriesFrame::Empty;
    while !r.done() {
        match r.key()? {
            (1, wt) => {
                r.expect(1, wt, WT_LEN)?;
                let b = r.bytes("series")?;
                match &mut out {
                    SeriesFrame::Series(s) => {
                        // The field again: prost merges it into the first, so both are read
                        // now and the series has no single message any more.
                        s.parse()?;
                        series(root, b, s)?;
                        s.raw = None;
                    }
                    _ => {
                        settle(&mut out)?;
                        let mut s = new_series(b);
                        read(&mut s)?;
                        out = SeriesFrame::Series(s);
                    }
                }
            }
            (2, wt) => {
                r.expect(2, wt, WT_LEN)?;
                let w = r.bytes("warning")?;
                r.utf8(&w, "warning")?;
                settle(&mut out)?;
                out = SeriesFrame::Warning(String::from_utf8_lossy(&buf[w]).into_owned());
            }
            (3, wt) => {
                r.expect(3, wt, WT_LEN)?;
                any_msg(root, r.bytes("hints")?)?;
                settle(&mut out)?;
                out = SeriesFrame::Hints;
            }
            (4, wt) => {
                r.expect(4, wt, WT_LEN)?;
                let b = r.bytes("batch")?;
                if !matches!(out, SeriesFrame::Batch(_)) {
                    settle(&mut out)?;
                    out = SeriesFrame::Batch(Vec::new());
                }
                if let SeriesFrame::Batch(list) = &mut out {
                    let mut br = Reader::new(root, b, "SeriesBatch");
                    while !br.done() {
                        match br.key()? {
                            (1, wt) => {
                                br.expect(1, wt, WT_LEN)?;
                                let range = br.bytes("series")?;
                                if list.is_empty() {
                                    // Room for as many series as the batch holds if they are
                                    // the size of the first (a key and a length each): no
                                    // growing and copying of the list, series by series
                                    // (the sizes are the sender's word: a first series
                                    // counted as at least 64 bytes, and at most the 1,024
                                    // series the querier asks per batch up front).
                                    list.reserve(((br.end - br.pos) / (range.len().max(64) + 3) + 1).min(1024));
                                }
                                let mut s = new_series(range);
                                read(&mut s)?;
                                list.push(s);
                            }
                            (f, wt) => br.skip(f, wt)?,
                        }
                    }
                }
            }
            (f, wt) => r.skip(f, wt)?,
        }
    }
    Ok(out)
}

/// Largest gRPC message accepted from an endpoint by default.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Where a gRPC response body stands between two messages' bytes.
#[derive(Debug)]
enum Framing {
    /// Reading the 5-byte prefix (compression flag, BE32 length); the bytes of a prefix split
    /// over DATA frames gather here.
    Prefix(Vec<u8>),
    /// A message spanning DATA frames, gathered in a buffer of its final size.
    Spanning(bytes::BytesMut, usize),
}

/// gRPC length-prefixed messages of a response body (`B`: `tonic::body::Body`, or any body of
/// `Bytes` frames in tests), as slices of the DATA frames they arrived in. Tonic's `Streaming`
/// copies every frame into one decode buffer; here a message lying within one frame (the
/// usual case: endpoints send a message per frame, frames up to 1 MiB) is not copied at all,
/// and one spanning frames is copied once into a buffer of its size. Limits and errors are
/// tonic's: messages above the maximum size, compressed messages (none are asked for), a body
/// ending inside a message, and the final status from the trailers (or the HTTP status).
#[derive(Debug)]
pub struct GrpcMessages<B> {
    body: B,
    http_status: http::StatusCode,
    /// The unread rest of the current DATA frame.
    cur: Bytes,
    framing: Framing,
    max_message: usize,
    trailers: Option<http::HeaderMap>,
    done: bool,
}

impl<B> GrpcMessages<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Messages of `response`, each at most `max_message` bytes. A trailers-only response
    /// (`grpc-status` in the headers) is an empty stream, or its error.
    pub fn new(response: http::Response<B>, max_message: usize) -> Result<Self, Status> {
        let (parts, body) = response.into_parts();
        let trailers_only = status_of(&parts.headers);
        if let Some(Err(s)) = trailers_only {
            return Err(s);
        }
        Ok(GrpcMessages {
            body,
            http_status: parts.status,
            cur: Bytes::new(),
            framing: Framing::Prefix(Vec::new()),
            max_message,
            trailers: None,
            done: trailers_only.is_some(),
        })
    }

    /// The next message, `None` at the end of a successful stream, or the error that ended it.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some(m) = self.take()? {
                return Ok(Some(m));
            }
            // `take` consumed the whole frame: the next one replaces it.
            match std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.body).poll_frame(cx)).await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.cur = data,
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers.get_or_insert_with(Default::default).extend(t);
                        }
                    }
                },
                Some(Err(e)) => {
                    self.done = true;
                    return Err(Status::from_error(e.into()));
                }
                None => {
                    self.done = true;
                    let inside = match &self.framing {
                        Framing::Prefix(p) => !p.is_empty(),
                        Framing::Spanning(..) => true,
                    };
                    if inside {
                        return Err(Status::internal("Unexpected EOF decoding stream."));
                    }
                    return self.final_status().map(|()| None);
                }
            }
        }
    }

    /// A whole message from what has been received, if there is one; otherwise consumes the
    /// current frame into the framing state.
    fn take(&mut self) -> Result<Option<Bytes>, Status> {
        match &mut self.framing {
            Framing::Prefix(p) => {
                let prefix: [u8; 5] = if p.is_empty() && self.cur.len() >= 5 {
                    let b = [self.cur[0], self.cur[1], self.cur[2], self.cur[3], self.cur[4]];
                    self.cur.advance(5);
                    b
                } else {
                    let n = (5 - p.len()).min(self.cur.len());
                    p.extend_from_slice(&self.cur[..n]);
                    self.cur.advance(n);
                    match <[u8; 5]>::try_from(&p[..]) {
                        Ok(b) => {
                            p.clear();
                            b
                        }
                        Err(_) => return Ok(None),
                    }
                };
                match prefix[0] {
                    0 => {}
                    1 => {
                        return Err(Status::internal(
                            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                        ));
                    }
                    f => {
                        return Err(Status::internal(format!(
                            "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1) while receiving response with status: {}",
                            self.http_status
                        )));
                    }
                }
                let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                if len > self.max_message {
                    return Err(Status::out_of_range(format!(
                        "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                        self.max_message
                    )));
                }
                if self.cur.len() >= len {
                    return Ok(Some(self.cur.split_to(len)));
                }
                // The prefix is the sender's word: reserve what has arrived plus at most
                // 4 MiB, and grow as the rest comes, so a lying prefix costs no memory.
                let mut buf = bytes::BytesMut::with_capacity(len.min(self.cur.len() + (4 << 20)));
                buf.extend_from_slice(&self.cur);
                self.cur.clear();
                self.framing = Framing::Spanning(buf, len);
                Ok(None)
            }
            Framing::Spanning(buf, len) => {
                let n = (*len - buf.len()).min(self.cur.len());
                buf.extend_from_slice(&self.cur[..n]);
                self.cur.advance(n);
                if buf.len() < *len {
                    return Ok(None);
                }
                let m = std::mem::take(buf).freeze();
                self.framing = Framing::Prefix(Vec::new());
                Ok(Some(m))
            }
        }
    }

    /// The stream's status from its trailers, or from the HTTP status without them (as tonic
    /// infers it).
    fn final_status(&self) -> Result<(), Status> {
        if let Some(res) = self.trailers.as_ref().and_then(status_of) {
            return res;
        }
        use tonic::Code;
        let code = match self.http_status {
            http::StatusCode::OK => {
                return Err(Status::unknown(
                    "protocol error: missing grpc-status trailer, stream was terminated without a final status",
                ));
            }
            http::StatusCode::BAD_REQUEST => Code::Internal,
            http::StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            http::StatusCode::FORBIDDEN => Code::PermissionDenied,
            http::StatusCode::NOT_FOUND => Code::Unimplemented,
            http::StatusCode::TOO_MANY_REQUESTS
            | http::StatusCode::BAD_GATEWAY
            | http::StatusCode::SERVICE_UNAVAILABLE
            | http::StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
            _ => Code::Unknown,
        };
        Err(Status::new(
            code,
            format!("grpc-status header missing, mapped from HTTP status code {}", self.http_status.as_u16()),
        ))
    }
}

/// The `grpc-status` (and percent-encoded `grpc-message`) of `headers`, if present. Unlike
/// `Status::from_header_map`, which panics on bad `grpc-status-details-bin`, details are not read.
fn status_of(headers: &http::HeaderMap) -> Option<Result<(), Status>> {
    let code = tonic::Code::from_bytes(headers.get("grpc-status")?.as_bytes());
    if code == tonic::Code::Ok {
        return Some(Ok(()));
    }
    let message = headers.get("grpc-message").map(|m| percent_decode(m.as_bytes())).unwrap_or_default();
    Some(Err(Status::new(code, message)))
}

/// `%XX` escapes decoded (invalid ones kept as they are), then UTF-8 read lossily.
fn percent_decode(b: &[u8]) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c)))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts a `Store/Series` call over `channel`: `req` (prost-encoded) with the tenant in
/// `thanos-tenant` metadata. Its messages are read with [`GrpcMessages`] and decoded with
/// [`decode_response`] / [`decode_response_lazy`] by the caller.
pub async fn call_series(
    channel: &mut tonic::transport::Channel,
    req: &SeriesRequest,
    tenant: Option<&str>,
    max_message: usize,
) -> Result<GrpcMessages<tonic::body::Body>, Status> {
    use prost::Message;
    use tonic::codegen::Service;
    let len = req.encoded_len();
    let mut body = bytes::BytesMut::with_capacity(5 + len);
    body.extend_from_slice(&[0]);
    body.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    req.encode(&mut body).map_err(|e| Status::internal(format!("encode series request: {e}")))?;
    let body = tonic::body::Body::new(http_body_util::Full::new(body.freeze()));
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        .uri("/thanos.Store/Series")
        .header(http::header::TE, "trailers")
        .header(http::header::CONTENT_TYPE, "application/grpc");
    if let Some(t) = tenant
        && let Ok(v) = http::HeaderValue::from_str(t)
    {
        request = request.header("thanos-tenant", v);
    }
    let request = request.body(body).map_err(|e| Status::internal(format!("series request: {e}")))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(|e| Status::from_error(e.into()))?;
    let response = channel.call(request).await.map_err(|e| Status::from_error(e.into()))?;
    GrpcMessages::new(response, max_message)
}

#[cfg(test)]
mod tests {
    use norn_storeapi::thanos::{SeriesBatch, SeriesResponse, series_response};
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    /// The view in prost's form, for comparison.
    fn to_proto(f: &SeriesFrame) -> SeriesResponse {
        use series_response::Result as R;
        let result = match f {
            SeriesFrame::Series(s) => Some(R::Series(s.to_proto())),
            SeriesFrame::Batch(b) => {
                Some(R::Batch(SeriesBatch { series: b.iter().map(SeriesView::to_proto).collect() }))
            }
            SeriesFrame::Warning(w) => Some(R::Warning(w.clone())),
            SeriesFrame::Hints => Some(R::Hints(Default::default())),
            SeriesFrame::Empty => None,
        };
        SeriesResponse { result }
    }

    /// Prost's decoding with what the view drops (hint contents) cleared.
    fn prost_decode(b: &[u8]) -> Result<SeriesResponse, prost::DecodeError> {
        let mut m = SeriesResponse::decode(b)?;
        if let Some(series_response::Result::Hints(h)) = &mut m.result {
            *h = Default::default();
        }
        Ok(m)
    }

    fn arb_chunk() -> impl Strategy<Value = thanos::Chunk> {
        (0i32..4, proptest::collection::vec(any::<u8>(), 0..40), any::<u64>())
            .prop_map(|(t, data, hash)| thanos::Chunk { r#type: t, data, hash })
    }

    fn arb_series() -> impl Strategy<Value = thanos::Series> {
        let label = ("\\PC{0,8}", "\\PC{0,8}").prop_map(|(name, value)| thanos::Label { name, value });
        let aggr = (any::<i64>(), any::<i64>(), proptest::option::of(arb_chunk()), proptest::option::of(arb_chunk()))
            .prop_map(|(min_time, max_time, raw, count)| thanos::AggrChunk {
                min_time,
                max_time,
                raw,
                count,
                ..Default::default()
            });
        (proptest::collection::vec(label, 0..6), proptest::collection::vec(aggr, 0..4))
            .prop_map(|(labels, chunks)| thanos::Series { labels, chunks })
    }

    fn arb_response() -> impl Strategy<Value = SeriesResponse> {
        use series_response::Result as R;
        prop_oneof![
            Just(None),
            arb_series().prop_map(|s| Some(R::Series(s))),
            proptest::collection::vec(arb_series(), 0..4).prop_map(|series| Some(R::Batch(SeriesBatch { series }))),
            "\\PC{0,20}".prop_map(|w| Some(R::Warning(w))),
            "\\PC{0,20}".prop_map(|u| Some(R::Hints(prost_types::Any { type_url: u, value: vec![1, 2] }))),
        ]
        .prop_map(|result| SeriesResponse { result })
    }

    proptest! {
        #[test]
        fn agrees_with_prost(m in arb_response()) {
            let b = m.encode_to_vec();
            let view = decode_response(Bytes::from(b.clone())).unwrap();
            prop_assert_eq!(to_proto(&view), prost_decode(&b).unwrap());
        }

        /// Lazily decoded series, parsed afterwards, are what an eager decode gives, and
        /// keep their message bytes (unless merged from repeated fields).
        #[test]
        fn lazy_then_parsed_agrees_with_prost(a in arb_response(), b in arb_response(), twice in any::<bool>()) {
            let mut buf = a.encode_to_vec();
            if twice {
                buf.extend(b.encode_to_vec());
            }
            let mut view = decode_response_lazy(Bytes::from(buf.clone())).unwrap();
            let series: Vec<&mut SeriesView> = match &mut view {
                SeriesFrame::Series(s) => vec![s],
                SeriesFrame::Batch(b) => b.iter_mut().collect(),
                _ => vec![],
            };
            for s in series {
                if let Some(bytes) = s.message_bytes() {
                    let alone = thanos::Series::decode(bytes).unwrap();
                    s.parse().unwrap();
                    prop_assert_eq!(&prost_decode(&SeriesResponse { result: Some(series_response::Result::Series(alone)) }.encode_to_vec()).unwrap(), &to_proto(&SeriesFrame::Series(s.clone())));
                } else {
                    prop_assert!(s.is_parsed());
                }
            }
            prop_assert_eq!(to_proto(&view), prost_decode(&buf).unwrap());
        }

        /// Corrupted messages decoded lazily: no panic, and an error at parse time where the
        /// eager decode fails inside a series.
        #[test]
        fn lazy_errors_surface_at_parse(m in arb_response(), at in any::<usize>(), byte in any::<u8>()) {
            let mut b = m.encode_to_vec();
            if !b.is_empty() {
                let i = at % b.len();
                b[i] = byte;
            }
            let eager = decode_response(Bytes::from(b.clone()));
            let lazy = decode_response_lazy(Bytes::from(b.clone())).and_then(|mut f| {
                match &mut f {
                    SeriesFrame::Series(s) => s.parse()?,
                    SeriesFrame::Batch(l) => l.iter_mut().try_for_each(SeriesView::parse)?,
                    _ => {}
                }
                Ok(f)
            });
            prop_assert_eq!(eager.is_ok(), lazy.is_ok());
            if let (Ok(e), Ok(l)) = (eager, lazy) {
                prop_assert_eq!(to_proto(&e), to_proto(&l));
            }
        }

        /// Two encoded messages back to back merge (same variant) or replace, as in prost.
        #[test]
        fn concatenations_agree_with_prost(a in arb_response(), b in arb_response()) {
            let mut buf = a.encode_to_vec();
            buf.extend(b.encode_to_vec());
            let view = decode_response(Bytes::from(buf.clone())).unwrap();
            prop_assert_eq!(to_proto(&view), prost_decode(&buf).unwrap());
        }

        /// Random bytes: no panic, and whatever the view accepts prost accepts identically
        /// (the view rejects groups, which prost skips).
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(view) = decode_response(Bytes::from(b.clone())) {
                prop_assert_eq!(Ok(to_proto(&view)), prost_decode(&b));
            }
        }

        /// Corrupted valid messages: no panic, agreement when the view accepts.
        #[test]
        fn corrupted_messages_never_panic(m in arb_response(), at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
            let mut b = m.encode_to_vec();
            if !b.is_empty() {
                let i = at % b.len();
                b[i] = byte;
                b.truncate(cut % (b.len() + 1));
            }
            if let Ok(view) = decode_response(Bytes::from(b.clone())) {
                prop_assert_eq!(Ok(to_proto(&view)), prost_decode(&b));
            }
        }
    }

    type Frames = http_body_util::StreamBody<
        futures::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::convert::Infallible>>>,
    >;

    fn body(data: Vec<Bytes>, trailers: Option<&[(&'static str, &'static str)]>) -> Frames {
        let mut frames: Vec<_> = data.into_iter().map(|d| Ok(http_body::Frame::data(d))).collect();
        if let Some(t) = trailers {
            let mut h = http::HeaderMap::new();
            for (k, v) in t {
                h.insert(*k, http::HeaderValue::from_static(v));
            }
            frames.push(Ok(http_body::Frame::trailers(h)));
        }
        http_body_util::StreamBody::new(futures::stream::iter(frames))
    }

    fn response(b: Frames, status: u16, headers: &[(&'static str, &'static str)]) -> http::Response<Frames> {
        let mut r = http::Response::new(b);
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().insert(*k, http::HeaderValue::from_static(v));
        }
        r
    }

    fn prefixed(flag: u8, m: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(m.len() as u32).to_be_bytes());
        v.extend_from_slice(m);
        v
    }

    /// All messages of a stream, or the error ending it.
    fn read_all(r: http::Response<Frames>, max: usize) -> Result<Vec<Bytes>, Status> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut m = GrpcMessages::new(r, max)?;
            let mut out = Vec::new();
            while let Some(b) = m.next().await? {
                out.push(b);
            }
            Ok(out)
        })
    }

    const OK: &[(&str, &str)] = &[("grpc-status", "0")];

    #[test]
    fn grpc_messages_are_whole_however_frames_cut_them() {
        let msgs: Vec<Vec<u8>> = vec![vec![], (0..7).collect(), (0..=255).cycle().take(300).collect(), vec![9]];
        let wire: Vec<u8> = msgs.iter().flat_map(|m| prefixed(0, m)).collect();
        // Frames of every size, and every two-frame cut.
        let mut cuts: Vec<Vec<Bytes>> =
            (1..=wire.len()).map(|k| wire.chunks(k).map(Bytes::copy_from_slice).collect()).collect();
        cuts.extend(
            (0..=wire.len()).map(|i| vec![Bytes::copy_from_slice(&wire[..i]), Bytes::copy_from_slice(&wire[i..])]),
        );
        for frames in cuts {
            let sizes: Vec<usize> = frames.iter().map(Bytes::len).collect();
            let got = read_all(response(body(frames, Some(OK)), 200, &[]), 1000).unwrap();
            let got: Vec<Vec<u8>> = got.iter().map(|b| b.to_vec()).collect();
            assert_eq!(got, msgs, "frames of {sizes:?}");
        }
    }

    #[test]
    fn grpc_messages_within_a_frame_are_not_copied() {
        let wire = Bytes::from([prefixed(0, b"abc"), prefixed(0, b"defg")].concat());
        let range = wire.as_ptr_range();
        let got = read_all(response(body(vec![wire.clone()], Some(OK)), 200, &[]), 100).unwrap();
        assert_eq!(got, vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defg")]);
        assert!(got.iter().all(|m| range.contains(&m.as_ptr())));
    }

    #[test]
    fn grpc_stream_errors_are_tonics() {
        use tonic::Code;
        let one = |flag: u8, m: &[u8]| vec![Bytes::from(prefixed(flag, m))];
        let cut = |n: usize| vec![Bytes::from(prefixed(0, b"hello")).slice(..n)];
        let cases: Vec<(http::Response<Frames>, usize, Code, &str)> = vec![
            (
                response(body(one(0, &[1; 11]), Some(OK)), 200, &[]),
                10,
                Code::OutOfRange,
                "found 11 bytes, the limit is: 10",
            ),
            (response(body(one(1, b"x"), Some(OK)), 200, &[]), 10, Code::Internal, "compressed-flag"),
            (response(body(one(2, b"x"), Some(OK)), 200, &[]), 10, Code::Internal, "invalid compression flag: 2"),
            (response(body(cut(7), None), 200, &[]), 10, Code::Internal, "Unexpected EOF"),
            (response(body(cut(3), None), 200, &[]), 10, Code::Internal, "Unexpected EOF"),
            (response(body(one(0, b"x"), None), 200, &[]), 10, Code::Unknown, "missing grpc-status"),
            (
                response(body(one(0, b"x"), Some(&[("grpc-status", "14"), ("grpc-message", "no%20way%")])), 200, &[]),
                10,
                Code::Unavailable,
                "no way%",
            ),
            (
                response(body(vec![], None), 200, &[("grpc-status", "5"), ("grpc-message", "gone")]),
                10,
                Code::NotFound,
                "gone",
            ),
            (response(body(vec![], None), 503, &[]), 10, Code::Unavailable, "HTTP status code 503"),
            (response(body(vec![], None), 404, &[]), 10, Code::Unimplemented, "HTTP status code 404"),
        ];
        for (i, (r, max, code, msg)) in cases.into_iter().enumerate() {
            let e = read_all(r, max).unwrap_err();
            assert_eq!(e.code(), code, "case {i}: {e:?}");
            assert!(e.message().contains(msg), "case {i}: {:?} lacks {msg:?}", e.message());
        }
        // A trailers-only success is an empty stream, whatever the body holds.
        let r = response(body(vec![Bytes::from_static(b"junk")], None), 200, &[("grpc-status", "0")]);
        assert_eq!(read_all(r, 10).unwrap(), Vec::<Bytes>::new());
    }

    /// Varints of every length read as prost reads them, within the reader's end only.
    #[test]
    fn varints_read_as_prost_reads_them() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, 2_097_151, 2_097_152, u64::from(u32::MAX), u64::MAX] {
            let mut enc = Vec::new();
            prost::encoding::encode_varint(v, &mut enc);
            let n = enc.len();
            enc.extend([0x81, 0x01]);
            let buf = Bytes::from(enc);
            let mut r = Reader::new(&buf, 0..n, "t");
            assert_eq!(r.varint(), Ok(v), "{v}");
            assert!(r.done(), "{v}");
            // Cut short by the reader's end (the bytes after it do not complete it).
            if n > 1 {
                let mut r = Reader::new(&buf, 0..n - 1, "t");
                assert_eq!(r.varint(), Err(ViewError::Truncated { msg: "t", what: "varint" }), "{v}");
            }
        }
    }

    #[test]
    fn errors_name_the_message_and_field() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x0a, 0x05, 0x0a], "decode SeriesResponse: truncated series"),
            (&[0x0a, 0x02, 0x0a, 0x05], "decode Series: truncated labels"),
            (&[0x0a, 0x04, 0x0a, 0x02, 0x0a, 0x01], "decode Label: truncated"),
            (&[0x0a, 0x06, 0x12, 0x04, 0x1a, 0x02, 0x0a, 0x00], "decode Chunk: field 1 has invalid wire type 2"),
            (&[0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0xff], "decode Label: field name is not valid UTF-8"),
            (&[0x08, 0x01], "decode SeriesResponse: field 1 has invalid wire type 0"),
            (&[0x00], "decode SeriesResponse: invalid field key 0"),
            (&[0x0f], "decode SeriesResponse: field 1 has invalid wire type 7"),
            (
                &[0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                "decode SeriesResponse: invalid varint",
            ),
            (&[0x0a, 0x04, 0x12, 0x02, 0x08, 0x80], "decode AggrChunk: truncated varint"),
        ];
        for (bytes, want) in cases {
            let err = decode_response(Bytes::copy_from_slice(bytes)).unwrap_err().to_string();
            assert!(err.starts_with(want), "{bytes:?}: got {err:?}, want {want:?}");
            assert!(SeriesResponse::decode(*bytes).is_err(), "prost accepts {bytes:?}");
        }
    }

    #[test]
    fn labels_and_chunk_data_borrow_from_the_buffer() {
        let m = SeriesResponse {
            result: Some(series_response::Result::Series(thanos::Series {
                labels: vec![thanos::Label { name: "job".into(), value: "node".into() }],
                chunks: vec![thanos::AggrChunk {
                    raw: Some(thanos::Chunk { r#type: 0, data: vec![0, 1, 2, 3], hash: 0 }),
                    ..Default::default()
                }],
            })),
        };
        let buf = Bytes::from(m.encode_to_vec());
        let range = buf.as_ptr_range();
        let SeriesFrame::Series(s) = decode_response(buf.clone()).unwrap() else { panic!("not a series") };
        let (name, value) = s.labels().next().unwrap();
        assert_eq!((name, value), ("job", "node"));
        assert!(range.contains(&value.as_ptr()));
        let data = &s.chunks[0].raw.as_ref().unwrap().data;
        assert!(range.contains(&data.as_ptr()));
    }
}
