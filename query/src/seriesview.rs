//! Zero-copy decoding of StoreAPI `Series` responses on the querier's client side.
//!
//! The generated prost types allocate a `String` per label name and value and a `Vec` per
//! chunk; on a fan-out that reads every series three times (RF=3) that was the largest part
//! of the decoding cost. [`SeriesViewCodec`] is a tonic codec for the `Store/Series` call
//! only: requests are encoded by prost as usual, responses are decoded into [`SeriesFrame`]s
//! whose label strings and chunk bytes are [`Bytes`] slices of the received message.
//!
//! Validation is the same as prost's for the fields read: wire types of known fields,
//! lengths, varints, tags and UTF-8 of strings. Unknown fields are skipped as prost skips
//! them; groups (deprecated, never written by StoreAPI peers) are rejected.

use bytes::{Buf, Bytes};
use norn_storeapi::thanos::{self, SeriesRequest};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};

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

    /// Calls `f` with each chunk, reading only the chunks of an unparsed series (labels are
    /// skipped by their lengths, not read): what the fan-out counts against the sample limit
    /// while streams arrive, without the cost of a parse.
    pub fn scan_chunks(&self, mut f: impl FnMut(&WireChunk)) -> Result<(), ViewError> {
        if self.parsed {
            self.chunks.iter().for_each(f);
            return Ok(());
        }
        let mut r = Reader::new(&self.buf, self.raw.clone().unwrap_or_default(), "Series");
        while !r.done() {
            match r.key()? {
                (1, wt) => {
                    r.expect(1, wt, WT_LEN)?;
                    r.bytes("labels")?;
                }
                (2, wt) => {
                    r.expect(2, wt, WT_LEN)?;
                    f(&aggr_chunk(&self.buf, r.bytes("chunks")?)?);
                }
                (fld, wt) => r.skip(fld, wt)?,
            }
        }
        Ok(())
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
        // Tags and most lengths fit one byte.
        if self.pos < self.end
            && let Some(&b) = self.root.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
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
                out = SeriesFrame::Warning(String::from_utf8_lossy(&buf[w]).into_owned());
            }
            (3, wt) => {
                r.expect(3, wt, WT_LEN)?;
                any_msg(root, r.bytes("hints")?)?;
                out = SeriesFrame::Hints;
            }
            (4, wt) => {
                r.expect(4, wt, WT_LEN)?;
                let b = r.bytes("batch")?;
                if !matches!(out, SeriesFrame::Batch(_)) {
                    out = SeriesFrame::Batch(Vec::new());
                }
                if let SeriesFrame::Batch(list) = &mut out {
                    let mut br = Reader::new(root, b, "SeriesBatch");
                    while !br.done() {
                        match br.key()? {
                            (1, wt) => {
                                br.expect(1, wt, WT_LEN)?;
                                let mut s = new_series(br.bytes("series")?);
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

/// The tonic codec of the querier's `Store/Series` calls: prost-encoded requests,
/// [`SeriesFrame`] responses, their series parsed at once or left for later (`lazy`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SeriesViewCodec {
    /// Series are left unparsed ([`decode_response_lazy`]).
    pub lazy: bool,
}

/// Decoder half of [`SeriesViewCodec`].
#[derive(Debug, Default, Clone, Copy)]
pub struct SeriesViewDecoder {
    lazy: bool,
}

impl Decoder for SeriesViewDecoder {
    type Item = SeriesFrame;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<SeriesFrame>, Status> {
        // Splits the frame off tonic's buffer without copying it.
        let buf = src.copy_to_bytes(src.remaining());
        decode_frame(buf, self.lazy).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for SeriesViewCodec {
    type Encode = SeriesRequest;
    type Decode = SeriesFrame;
    type Encoder = tonic_prost::ProstEncoder<SeriesRequest>;
    type Decoder = SeriesViewDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SeriesViewDecoder { lazy: self.lazy }
    }
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
