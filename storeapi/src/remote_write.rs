//! Decoding and validation of Prometheus remote-write requests, shared by receivers and
//! the fuzz target: snappy block decompression with the claimed length checked against
//! the limit before allocating, protobuf decode of remote write 1.0 (straight into
//! Thanos's series type) or 2.0 (translated to 1.0), limits, and label validation.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use norn_model::Labels;
use norn_model::labels::is_valid_legacy_label_name;
use parking_lot::Mutex;
use prost::Message;
use xxhash_rust::xxh64::Xxh64;

use crate::io::prometheus::write::v2;
use crate::prometheus_copy::{Sample, TimeSeries};
use crate::{ConvertError, RemoteWriteV1, V2Counts, histogram_from_proto_checked, labels_from_proto, thanos, v2_to_v1};

/// How a refused request should be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// Malformed (HTTP 400).
    BadRequest,
    /// Bad label set, as Thanos classes it (HTTP 409).
    Conflict,
    /// Over a limit (HTTP 413).
    TooLarge,
}

/// A refused request, with a message naming the first bad series where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct Rejected {
    pub kind: RejectKind,
    pub msg: String,
}

impl Rejected {
    pub fn bad(msg: String) -> Rejected {
        Rejected { kind: RejectKind::BadRequest, msg }
    }

    pub fn conflict(msg: String) -> Rejected {
        Rejected { kind: RejectKind::Conflict, msg }
    }

    pub fn too_large(msg: String) -> Rejected {
        Rejected { kind: RejectKind::TooLarge, msg }
    }

    /// The HTTP status for this rejection.
    pub fn http_status(&self) -> u16 {
        match self.kind {
            RejectKind::BadRequest => 400,
            RejectKind::Conflict => 409,
            RejectKind::TooLarge => 413,
        }
    }
}

/// Per-request limits; 0 disables a limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Decompressed request size in bytes (and the compressed body's size).
    pub size_bytes: usize,
    pub series: usize,
    pub samples: usize,
    pub labels_per_series: usize,
    pub label_name_length: usize,
    pub label_value_length: usize,
}

/// A wire label list as Prometheus prints a series, for error messages.
pub fn describe(ls: &[thanos::Label]) -> String {
    let mut s = String::from("{");
    for (i, l) in ls.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let v: String = l.value.chars().take(128).collect();
        s.push_str(&format!("{}={:?}", l.name, v));
    }
    s.push('}');
    s
}

/// [`describe`] of a label set: the same text for a validated series' labels as for its
/// wire labels.
pub fn describe_labels(ls: &Labels) -> String {
    let mut s = String::from("{");
    for (i, (n, v)) in ls.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let v: String = v.chars().take(128).collect();
        s.push_str(&format!("{n}={v:?}"));
    }
    s.push('}');
    s
}

/// Label sets that passed validation, by the hash of their wire form, so a series seen
/// before skips validation and label building. Senders repeat the same series in every
/// request, so after the first request nearly every lookup hits. Bounded: a shard that
/// fills up is cleared (the next requests rebuild what is still in use).
#[derive(Debug)]
pub struct LabelCache {
    shards: Box<[Mutex<CacheMap>]>,
    per_shard: usize,
}

type CacheMap = HashMap<u64, CacheEntry, BuildHasherDefault<KeyHasher>>;

/// A validated label set, and for the fast path the wire bytes it was validated from:
/// the same bytes are the same labels, found with one comparison (about 2 bytes more per
/// label than the label text).
#[derive(Debug)]
struct CacheEntry {
    labels: Labels,
    span: Option<Box<[u8]>>,
}

const CACHE_SHARDS: usize = 64;

/// The cache's keys are xxh64 hashes already: mixed with a per-process secret rather than
/// hashed again, so a writer cannot pick label sets that crowd one bucket (xxh64 is unkeyed;
/// the multiply and byte swap move every key bit into the bits the table indexes by).
#[derive(Default)]
struct KeyHasher(u64);

/// Per-process secret of [`KeyHasher`] (two odd-ish random words from the standard
/// library's randomly keyed hasher).
fn key_secret() -> (u64, u64) {
    static SECRET: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    *SECRET.get_or_init(|| {
        use std::hash::BuildHasher;
        let s = std::collections::hash_map::RandomState::new();
        (s.hash_one(1u64), s.hash_one(2u64) | 1)
    })
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        let (a, b) = key_secret();
        self.0 = (n ^ a).wrapping_mul(b).swap_bytes();
    }
}

impl LabelCache {
    /// A cache holding at most about `capacity` label sets.
    pub fn new(capacity: usize) -> LabelCache {
        LabelCache {
            shards: (0..CACHE_SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
            per_shard: capacity.div_ceil(CACHE_SHARDS).max(1),
        }
    }

    fn shard(&self, h: u64) -> &Mutex<CacheMap> {
        // Middle bits: the map itself uses the low and the top bits.
        &self.shards[(h >> 32) as usize % CACHE_SHARDS]
    }

    /// The cached label set equal to the pairs `ls`, if any.
    fn get<'a>(&self, h: u64, ls: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> Option<Labels> {
        let g = self.shard(h).lock();
        let l = &g.get(&h)?.labels;
        let same = l.len() == ls.len() && l.iter().zip(ls).all(|((n, v), (wn, wv))| n == wn && v == wv);
        same.then(|| l.clone())
    }

    /// The cached label set validated from exactly the label bytes `span`, if any.
    fn get_span(&self, h: u64, span: &[u8]) -> Option<Labels> {
        let g = self.shard(h).lock();
        let e = g.get(&h)?;
        (e.span.as_deref() == Some(span)).then(|| e.labels.clone())
    }

    fn insert(&self, h: u64, l: &Labels) {
        self.insert_entry(h, CacheEntry { labels: l.clone(), span: None });
    }

    fn insert_span(&self, h: u64, l: &Labels, span: &[u8]) {
        self.insert_entry(h, CacheEntry { labels: l.clone(), span: Some(span.into()) });
    }

    fn insert_entry(&self, h: u64, e: CacheEntry) {
        let mut g = self.shard(h).lock();
        if g.len() >= self.per_shard {
            g.clear();
        }
        g.insert(h, e);
    }
}

/// The hash [`Labels::hash_value`] would give the wire labels (xxh64 over each name and
/// value followed by 0xff), computed without building them.
fn wire_hash<'a>(ls: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut h = Xxh64::new(0);
    for (n, v) in ls {
        h.update(n.as_bytes());
        h.update(&[0xff]);
        h.update(v.as_bytes());
        h.update(&[0xff]);
    }
    h.digest()
}

/// The wire labels as name/value pairs.
fn pairs(ls: &[thanos::Label]) -> impl ExactSizeIterator<Item = (&str, &str)> {
    ls.iter().map(|l| (l.name.as_str(), l.value.as_str()))
}

/// Checks request-level limits and every series' labels; returns the label sets, in
/// request order. The first bad series is named in the error.
pub fn validate(series: &[TimeSeries], limits: &Limits) -> Result<Vec<Labels>, Rejected> {
    validate_cached(series, limits, None)
}

/// [`validate`], taking label sets seen before from `cache` (which must only ever be
/// used with the same `limits`) and adding new ones to it.
pub fn validate_cached(
    series: &[TimeSeries],
    limits: &Limits,
    cache: Option<&LabelCache>,
) -> Result<Vec<Labels>, Rejected> {
    if limits.series > 0 && series.len() > limits.series {
        return Err(Rejected::too_large(format!("request has {} series, limit is {}", series.len(), limits.series)));
    }
    if limits.samples > 0 {
        let n: usize = series.iter().map(|s| s.samples.len() + s.histograms.len()).sum();
        if n > limits.samples {
            return Err(Rejected::too_large(format!("request has {n} samples, limit is {}", limits.samples)));
        }
    }
    let mut out = Vec::with_capacity(series.len());
    for ts in series {
        for h in &ts.histograms {
            histogram_from_proto_checked(h)
                .map_err(|e| Rejected::bad(format!("series {}: {e}", describe(&ts.labels))))?;
        }
        let hash = cache.map(|_| wire_hash(pairs(&ts.labels)));
        if let (Some(c), Some(h)) = (cache, hash)
            && let Some(l) = c.get(h, pairs(&ts.labels))
        {
            out.push(l);
            continue;
        }
        let labels = check_labels(&ts.labels, limits)?;
        if let (Some(c), Some(h)) = (cache, hash) {
            c.insert(h, &labels);
        }
        out.push(labels);
    }
    Ok(out)
}

/// Checks one series' wire labels against the limits and the label rules and builds
/// its label set; the error names the series.
fn check_labels(ls: &[thanos::Label], limits: &Limits) -> Result<Labels, Rejected> {
    let bad = |what: String| format!("series {}: {what}", describe(ls));
    if limits.labels_per_series > 0 && ls.len() > limits.labels_per_series {
        return Err(Rejected::bad(bad(format!("{} labels, limit is {}", ls.len(), limits.labels_per_series))));
    }
    for l in ls {
        if limits.label_name_length > 0 && l.name.len() > limits.label_name_length {
            return Err(Rejected::bad(bad(format!(
                "label name {:?} longer than {} bytes",
                l.name, limits.label_name_length
            ))));
        }
        if limits.label_value_length > 0 && l.value.len() > limits.label_value_length {
            return Err(Rejected::bad(bad(format!(
                "value of label {:?} longer than {} bytes",
                l.name, limits.label_value_length
            ))));
        }
        if !l.name.is_empty() && !is_valid_legacy_label_name(&l.name) {
            return Err(Rejected::bad(bad(format!("invalid label name {:?}", l.name))));
        }
    }
    let labels = labels_from_proto(ls).map_err(|e| match e {
        ConvertError::Labels(_) | ConvertError::EmptyLabelValue(_) => Rejected::conflict(bad(e.to_string())),
        e => Rejected::bad(bad(e.to_string())),
    })?;
    if labels.metric_name().is_none_or(str::is_empty) {
        return Err(Rejected::bad(bad("no metric name (__name__ label)".into())));
    }
    Ok(labels)
}

/// Which remote-write protocol a request uses, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V1,
    V2,
}

/// Picks the protocol from `Content-Type`; an unknown `proto=` is refused (415).
pub fn protocol(content_type: Option<&str>) -> Result<Protocol, String> {
    let Some(ct) = content_type else { return Ok(Protocol::V1) };
    let mut parts = ct.split(';').map(str::trim);
    let media = parts.next().unwrap_or("");
    if !media.is_empty() && !media.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(format!("unsupported content type {ct:?}"));
    }
    for p in parts {
        if let Some(v) = p.strip_prefix("proto=") {
            return match v.trim_matches('"') {
                "prometheus.WriteRequest" => Ok(Protocol::V1),
                "io.prometheus.write.v2.Request" => Ok(Protocol::V2),
                other => Err(format!("unsupported remote write message {other:?}")),
            };
        }
    }
    Ok(Protocol::V1)
}

/// Decompresses a snappy block body, checking the length its header claims against
/// `limit` before allocating anything.
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, Rejected> {
    let mut out = Vec::new();
    decompress_into(body, limit, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out` (its previous content replaced), reusing its capacity.
fn decompress_into(body: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), Rejected> {
    let n = snap::raw::decompress_len(body).map_err(|e| Rejected::bad(format!("snappy decode: {e}")))?;
    if limit > 0 && n > limit {
        return Err(Rejected::too_large(format!("decompressed body of {n} bytes exceeds the limit of {limit} bytes")));
    }
    // Not zeroed beyond what is new: the decoder writes every byte it reports.
    out.resize(n, 0);
    let got =
        snap::raw::Decoder::new().decompress(body, out).map_err(|e| Rejected::bad(format!("snappy decode: {e}")))?;
    out.truncate(got);
    Ok(())
}

/// Largest decompression buffer a thread keeps between requests.
const KEEP_RAW: usize = 8 << 20;

thread_local! {
    /// The decompressed body of the request being decoded on this thread, kept for the
    /// next one: a fresh buffer per request costs page faults and zeroing.
    static RAW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A protobuf reader over a borrowed buffer for the remote-write 1.0 fast path. Every
/// method answers `None` on anything unexpected (truncation, an over-long varint), which
/// sends the whole body to prost instead.
struct Wire<'a> {
    b: &'a [u8],
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&x, rest) = self.b.split_first()?;
            self.b = rest;
            if i == 9 && x > 1 {
                return None;
            }
            v |= u64::from(x & 0x7f) << (7 * i);
            if x < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// A field key as (field number, wire type); field 0 and keys beyond 32 bits are left
    /// to prost (which refuses them).
    fn key(&mut self) -> Option<(u64, u8)> {
        let k = self.varint()?;
        if k > u64::from(u32::MAX) || k >> 3 == 0 {
            return None;
        }
        Some((k >> 3, (k & 7) as u8))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        if n > self.b.len() {
            return None;
        }
        let (x, rest) = self.b.split_at(n);
        self.b = rest;
        Some(x)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    fn fixed64(&mut self) -> Option<u64> {
        let (x, rest) = self.b.split_first_chunk::<8>()?;
        self.b = rest;
        Some(u64::from_le_bytes(*x))
    }
}

/// One `prometheus.Label`; later occurrences of a field win, as in prost.
fn fast_label(b: &[u8]) -> Option<(&str, &str)> {
    let mut w = Wire { b };
    let (mut name, mut value) = ("", "");
    while !w.b.is_empty() {
        match w.key()? {
            (1, 2) => name = w.str()?,
            (2, 2) => value = w.str()?,
            _ => return None,
        }
    }
    Some((name, value))
}

/// One `prometheus.Sample`.
fn fast_sample(b: &[u8]) -> Option<Sample> {
    let mut w = Wire { b };
    let mut s = Sample { value: 0.0, timestamp: 0 };
    while !w.b.is_empty() {
        match w.key()? {
            (1, 1) => s.value = f64::from_bits(w.fixed64()?),
            (2, 0) => s.timestamp = w.varint()? as i64,
            _ => return None,
        }
    }
    Some(s)
}

/// The series of a remote-write 1.0 body as [`parse_v1_fast`] finds them.
#[derive(Debug, Default, PartialEq)]
pub struct FastV1<'a> {
    /// Per series: its label fields exactly as on the wire (one contiguous run of
    /// `TimeSeries` field 1 entries, not yet parsed inside), and its samples.
    pub series: Vec<(&'a [u8], Vec<Sample>)>,
}

/// The label pairs of a run of `TimeSeries` label fields, borrowed from it; `None` if
/// a label holds anything but its name and value fields, or is malformed.
pub fn label_pairs(span: &[u8]) -> Option<Vec<(&str, &str)>> {
    let mut w = Wire { b: span };
    let mut out = Vec::with_capacity(16);
    while !w.b.is_empty() {
        let (1, 2) = w.key()? else { return None };
        out.push(fast_label(w.bytes()?)?);
    }
    Some(out)
}

/// Parses the structure of a remote-write 1.0 body without allocating per label:
/// `None` unless it holds only series of float samples whose labels come first (no
/// exemplars, histograms, metadata or unknown fields, nothing malformed), which is what
/// Prometheus and other senders write. Labels are left as wire bytes (see
/// [`label_pairs`]). Where this and [`label_pairs`] succeed the result equals prost's
/// decode; everything else is left to prost.
pub fn parse_v1_fast(raw: &[u8]) -> Option<FastV1<'_>> {
    // Series are at least ~20 bytes on the wire: a cheap upper bound for the reserve.
    let mut out = FastV1 { series: Vec::with_capacity(raw.len() / 64) };
    let mut w = Wire { b: raw };
    while !w.b.is_empty() {
        let (1, 2) = w.key()? else { return None };
        let body = w.bytes()?;
        let mut ts = Wire { b: body };
        let mut labels_end = 0;
        let mut samples = Vec::new();
        while !ts.b.is_empty() {
            match ts.key()? {
                (1, 2) if samples.is_empty() => {
                    ts.bytes()?;
                    labels_end = body.len() - ts.b.len();
                }
                (2, 2) => samples.push(fast_sample(ts.bytes()?)?),
                _ => return None,
            }
        }
        out.series.push((&body[..labels_end], samples));
    }
    Some(out)
}

/// Seeds the hash of a label span, keeping it apart from [`wire_hash`]'s keys in the
/// shared [`LabelCache`] (where a clash is harmless: entries are compared anyway).
const SPAN_SEED: u64 = 0x6e6f_726e_7370_616e;

/// Decodes and validates a remote-write 1.0 body through [`parse_v1_fast`]: a series
/// whose label bytes match a cached label set skips parsing and validating its labels.
/// `None` whenever anything is not plain (see [`parse_v1_fast`]) or refused: the prost
/// path then decides, so answers and error messages never depend on this path. The
/// series returned have no wire labels (the label sets carry them).
fn decode_v1_fast(raw: &[u8], limits: &Limits, cache: Option<&LabelCache>) -> Option<(Vec<TimeSeries>, Vec<Labels>)> {
    let fast = parse_v1_fast(raw)?;
    let n = fast.series.len();
    if limits.series > 0 && n > limits.series {
        return None;
    }
    if limits.samples > 0 && fast.series.iter().map(|s| s.1.len()).sum::<usize>() > limits.samples {
        return None;
    }
    let mut labels = Vec::with_capacity(n);
    let mut series = Vec::with_capacity(n);
    for (span, samples) in fast.series {
        let hash = cache.map(|_| xxhash_rust::xxh64::xxh64(span, SPAN_SEED));
        let hit = match (cache, hash) {
            (Some(c), Some(h)) => c.get_span(h, span),
            _ => None,
        };
        let l = match hit {
            Some(l) => l,
            None => {
                let owned: Vec<thanos::Label> = label_pairs(span)?
                    .into_iter()
                    .map(|(n, v)| thanos::Label { name: n.to_string(), value: v.to_string() })
                    .collect();
                let l = check_labels(&owned, limits).ok()?;
                if let (Some(c), Some(h)) = (cache, hash) {
                    c.insert_span(h, &l, span);
                }
                l
            }
        };
        labels.push(l);
        series.push(TimeSeries { samples, ..Default::default() });
    }
    Some((series, labels))
}

/// A decoded, validated remote-write body.
#[derive(Debug)]
pub struct Decoded {
    /// The series; their `labels` field may be empty (remote write 1.0 bodies of float
    /// samples skip building it): [`Decoded::labels`] is authoritative.
    pub series: Vec<TimeSeries>,
    /// One label set per series, in order.
    pub labels: Vec<Labels>,
    /// Remote write 2.0 only: what the request carried.
    pub counts: Option<V2Counts>,
    /// Metric metadata (1.0: the request's field; 2.0: per series, by metric name).
    pub metadata: Vec<crate::prometheus::MetricMetadata>,
}

/// Decodes a remote-write body (snappy, then protobuf of the given protocol) and
/// validates its series; the entry point the fuzz target exercises.
pub fn decode_body(body: &[u8], proto: Protocol, limits: &Limits) -> Result<Decoded, Rejected> {
    decode_body_cached(body, proto, limits, None)
}

/// [`decode_body`] with a [`LabelCache`] for the label sets.
pub fn decode_body_cached(
    body: &[u8],
    proto: Protocol,
    limits: &Limits,
    cache: Option<&LabelCache>,
) -> Result<Decoded, Rejected> {
    RAW.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            let r = decompress_into(body, limits.size_bytes, &mut buf)
                .and_then(|()| decode_raw(&buf, proto, limits, cache));
            if buf.capacity() > KEEP_RAW {
                *buf = Vec::new();
            }
            r
        }
        // Not reached (nothing here decodes re-entrantly), but never a panic.
        Err(_) => decode_raw(&decompress(body, limits.size_bytes)?, proto, limits, cache),
    })
}

/// [`decode_body_cached`] after decompression.
fn decode_raw(raw: &[u8], proto: Protocol, limits: &Limits, cache: Option<&LabelCache>) -> Result<Decoded, Rejected> {
    if proto == Protocol::V1
        && let Some((series, labels)) = decode_v1_fast(raw, limits, cache)
    {
        return Ok(Decoded { series, labels, counts: None, metadata: Vec::new() });
    }
    let (series, counts, metadata) = match proto {
        Protocol::V1 => {
            let req = RemoteWriteV1::decode(raw)
                .map_err(|e| Rejected::bad(format!("protobuf decode of prometheus.WriteRequest: {e}")))?;
            (req.timeseries, None, req.metadata)
        }
        Protocol::V2 => {
            let req = v2::Request::decode(raw)
                .map_err(|e| Rejected::bad(format!("protobuf decode of io.prometheus.write.v2.Request: {e}")))?;
            let md = crate::metadata::v2_metadata(&req);
            let (s, c) = v2_to_v1(req).map_err(|e| Rejected::bad(e.to_string()))?;
            (s, Some(c), md)
        }
    };
    let labels = validate_cached(&series, limits, cache)?;
    Ok(Decoded { series, labels, counts, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(pairs: &[(&str, &str)]) -> TimeSeries {
        TimeSeries {
            labels: pairs.iter().map(|(n, v)| thanos::Label { name: n.to_string(), value: v.to_string() }).collect(),
            samples: vec![Sample { value: 1.0, timestamp: 1 }],
            ..Default::default()
        }
    }

    #[test]
    fn validation_table() {
        let lim = Limits { labels_per_series: 3, label_name_length: 10, label_value_length: 5, ..Default::default() };
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<u16>);
        let cases: &[Case<'_>] = &[
            (&[("__name__", "up"), ("job", "a")], None),
            (&[("job", "a")], Some(400)),
            (&[("__name__", "up"), ("9bad", "a")], Some(400)),
            (&[("__name__", "up"), ("b", "1"), ("a", "2")], Some(409)),
            (&[("__name__", "up"), ("a", "1"), ("a", "2")], Some(409)),
            (&[("__name__", "up"), ("a", "")], Some(409)),
            (&[("__name__", "up"), ("a", "1"), ("b", "1"), ("c", "1")], Some(400)),
            (&[("__name__", "up"), ("abcdefghijk", "1")], Some(400)),
            (&[("__name__", "up"), ("a", "123456")], Some(400)),
        ];
        for (pairs, want) in cases {
            let got = validate(&[ts(pairs)], &lim).err().map(|e| e.http_status());
            assert_eq!(got, *want, "{pairs:?}");
        }
        let err = validate(&[ts(&[("__name__", "ok")]), ts(&[("job", "x")])], &lim).unwrap_err();
        assert!(err.to_string().contains(r#"{job="x"}"#), "{err}");
    }

    #[test]
    fn request_limits() {
        let many = vec![ts(&[("__name__", "a")]); 3];
        let lim = Limits { series: 2, ..Default::default() };
        assert_eq!(validate(&many, &lim).unwrap_err().http_status(), 413);
        let lim = Limits { samples: 2, ..Default::default() };
        assert_eq!(validate(&many, &lim).unwrap_err().http_status(), 413);
        assert!(validate(&many, &Limits::default()).is_ok());
    }

    #[test]
    fn protocol_by_content_type() {
        let cases = [
            (None, Ok(Protocol::V1)),
            (Some("application/x-protobuf"), Ok(Protocol::V1)),
            (Some("application/x-protobuf;proto=prometheus.WriteRequest"), Ok(Protocol::V1)),
            (Some("application/x-protobuf;proto=io.prometheus.write.v2.Request"), Ok(Protocol::V2)),
        ];
        for (ct, want) in cases {
            assert_eq!(protocol(ct), want, "{ct:?}");
        }
        assert!(protocol(Some("application/x-protobuf;proto=foo.Bar")).is_err());
        assert!(protocol(Some("application/json")).is_err());
    }

    #[test]
    fn snappy_claims_checked_before_allocating() {
        // A 5-byte body whose varint header claims ~4 GiB.
        let huge = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(decompress(&huge, 1 << 20).unwrap_err().http_status(), 413);
        assert_eq!(decompress(b"\x05garbage", 1 << 20).unwrap_err().http_status(), 400);
        assert_eq!(decompress(&[0x80], 1 << 20).unwrap_err().http_status(), 400);
        let ok = snap::raw::Encoder::new().compress_vec(b"hello").unwrap();
        assert_eq!(decompress(&ok, 1 << 20).unwrap(), b"hello");
    }

    #[test]
    fn label_cache_hits_only_equal_label_sets() {
        let cache = LabelCache::new(4);
        let lim = Limits { label_value_length: 5, ..Default::default() };
        let a = [ts(&[("__name__", "up"), ("job", "a")])];
        let first = validate_cached(&a, &lim, Some(&cache)).unwrap();
        let again = validate_cached(&a, &lim, Some(&cache)).unwrap();
        assert_eq!(first, again);
        assert_eq!(first[0].hash_value(), wire_hash(pairs(&a[0].labels)), "wire hash must equal the label hash");
        // Same hash slot, different labels: a forged entry must not be returned.
        cache.insert(wire_hash(pairs(&a[0].labels)), &Labels::from_pairs([("__name__", "other")]));
        assert_eq!(validate_cached(&a, &lim, Some(&cache)).unwrap(), first);
        // Invalid series are never cached and still refused.
        let bad = [ts(&[("__name__", "up"), ("job", "toolong")])];
        for _ in 0..2 {
            assert_eq!(validate_cached(&bad, &lim, Some(&cache)).unwrap_err().http_status(), 400);
        }
        // Bounded: many distinct series do not grow it past its capacity.
        for i in 0..1000 {
            let v = format!("{}", i % 100_000);
            validate_cached(&[ts(&[("__name__", "m"), ("i", &v[..v.len().min(5)])])], &lim, Some(&cache)).unwrap();
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().len()).sum();
        assert!(held <= CACHE_SHARDS, "{held}");
    }
    /// The fast path's view of a prost-decoded request, for comparisons.
    fn prost_view(req: &RemoteWriteV1) -> (Vec<(String, String)>, Vec<(usize, Vec<Sample>)>) {
        let mut pairs = Vec::new();
        let mut series = Vec::new();
        for ts in &req.timeseries {
            pairs.extend(ts.labels.iter().map(|l| (l.name.clone(), l.value.clone())));
            series.push((pairs.len(), ts.samples.clone()));
        }
        (pairs, series)
    }

    /// `None` if a series' labels are left to prost.
    fn fast_view(f: &FastV1<'_>) -> Option<(Vec<(String, String)>, Vec<(usize, Vec<Sample>)>)> {
        let mut pairs = Vec::new();
        let mut series = Vec::new();
        for (span, samples) in &f.series {
            pairs.extend(label_pairs(span)?.into_iter().map(|(n, v)| (n.to_string(), v.to_string())));
            series.push((pairs.len(), samples.clone()));
        }
        Some((pairs, series))
    }

    /// What `decode_body` answers without the fast path: prost, then validation.
    fn slow_decode(raw: &[u8], limits: &Limits) -> Result<(Vec<TimeSeries>, Vec<Labels>), Rejected> {
        let req = RemoteWriteV1::decode(raw)
            .map_err(|e| Rejected::bad(format!("protobuf decode of prometheus.WriteRequest: {e}")))?;
        let labels = validate(&req.timeseries, limits)?;
        Ok((req.timeseries, labels))
    }

    fn body(raw: &[u8]) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(raw).unwrap()
    }

    #[test]
    fn fast_path_agrees_with_prost_table() {
        let lim = Limits { labels_per_series: 3, label_value_length: 8, series: 3, samples: 4, ..Default::default() };
        let ok = |pairs: &[(&str, &str)], n: usize| TimeSeries {
            samples: (0..n).map(|i| Sample { value: i as f64, timestamp: i as i64 - 1 }).collect(),
            ..ts(pairs)
        };
        let reqs: Vec<Vec<TimeSeries>> = vec![
            vec![],
            vec![ok(&[("__name__", "up"), ("job", "a")], 1)],
            vec![ok(&[("__name__", "up")], 0), ok(&[("__name__", "b"), ("x", "é")], 3)],
            vec![ok(&[("job", "a")], 1)],
            vec![ok(&[("__name__", "up"), ("b", "1"), ("a", "2")], 1)],
            vec![ok(&[("__name__", "up"), ("a", "")], 1)],
            vec![ok(&[("__name__", "up"), ("a", "toolongvalue")], 1)],
            vec![ok(&[("__name__", "up"), ("9a", "1")], 1)],
            vec![ok(&[("__name__", "up"), ("a", "1"), ("b", "1"), ("c", "1")], 1)],
            vec![ok(&[("__name__", "a")], 1); 4],
            vec![ok(&[("__name__", "a")], 5)],
            vec![TimeSeries::default()],
        ];
        let cache = LabelCache::new(100);
        for series in reqs {
            let raw = RemoteWriteV1 { timeseries: series.clone(), metadata: vec![] }.encode_to_vec();
            assert!(parse_v1_fast(&raw).is_some(), "{series:?}");
            let want = slow_decode(&raw, &lim);
            assert_eq!(decode_v1_fast(&raw, &lim, None).is_some(), want.is_ok(), "{series:?}");
            for c in [None, Some(&cache), Some(&cache)] {
                let got = decode_body_cached(&body(&raw), Protocol::V1, &lim, c).map(|d| {
                    assert!(d.series.iter().all(|s| s.labels.is_empty()));
                    (d.series.into_iter().map(|s| s.samples).collect::<Vec<_>>(), d.labels)
                });
                let want = want.clone().map(|(s, l)| (s.into_iter().map(|s| s.samples).collect(), l));
                assert_eq!(got, want, "{series:?}");
            }
        }
    }

    #[test]
    fn fast_path_leaves_other_bodies_to_prost() {
        let with = |f: &dyn Fn(&mut TimeSeries)| {
            let mut t = ts(&[("__name__", "up")]);
            f(&mut t);
            RemoteWriteV1 { timeseries: vec![t], metadata: vec![] }.encode_to_vec()
        };
        let ex = with(&|t| t.exemplars.push(Default::default()));
        let hist = with(&|t| t.histograms.push(Default::default()));
        let md = RemoteWriteV1 { timeseries: vec![], metadata: vec![Default::default()] }.encode_to_vec();
        let plain = with(&|_| {});
        let mut unknown = plain.clone();
        unknown.extend([0x10, 0x01]); // field 2, varint
        let mut truncated = plain.clone();
        truncated.pop();
        let bad_utf8 = with(&|t| t.labels[0].value = "\u{fffd}".into())
            .iter()
            .map(|&b| if b == 0xef { 0xff } else { b })
            .collect::<Vec<_>>();
        let mut label_field = plain.clone();
        // Field 3 (varint) inside the first label: prost skips it.
        label_field[3] += 2;
        label_field.splice(4..4, [0x18, 0x01]);
        label_field[1] += 2;
        assert!(
            parse_v1_fast(&label_field).is_some() && decode_v1_fast(&label_field, &Limits::default(), None).is_none()
        );
        for (name, raw) in [
            ("exemplar", ex),
            ("histogram", hist),
            ("metadata", md),
            ("unknown", unknown),
            ("label field", label_field),
        ] {
            assert!(decode_v1_fast(&raw, &Limits::default(), None).is_none(), "{name}");
            // Still decoded, by prost.
            let got = decode_body(&body(&raw), Protocol::V1, &Limits::default()).map(|d| d.labels);
            assert_eq!(got, slow_decode(&raw, &Limits::default()).map(|d| d.1), "{name}");
        }
        for (name, raw) in [("truncated", truncated), ("bad utf-8", bad_utf8)] {
            assert!(decode_v1_fast(&raw, &Limits::default(), None).is_none(), "{name}");
            let e = decode_body(&body(&raw), Protocol::V1, &Limits::default()).unwrap_err();
            assert_eq!(e.http_status(), 400, "{name}");
            assert!(e.msg.contains("protobuf decode of prometheus.WriteRequest"), "{name}: {e}");
        }
    }

    #[test]
    fn cached_spans_match_only_their_label_set() {
        let cache = LabelCache::new(100);
        let raw = RemoteWriteV1 { timeseries: vec![ts(&[("__name__", "up"), ("job", "a")])], metadata: vec![] }
            .encode_to_vec();
        let (_, labels) = decode_v1_fast(&raw, &Limits::default(), Some(&cache)).unwrap();
        let fast = parse_v1_fast(&raw).unwrap();
        let span = fast.series[0].0;
        let h = xxhash_rust::xxh64::xxh64(span, SPAN_SEED);
        assert_eq!(cache.get_span(h, span), Some(labels[0].clone()));
        // Other bytes under the same key (a hash clash) are not taken for it.
        assert_eq!(cache.get_span(h, &span[..span.len() - 1]), None);
        // A forged entry under the span's key is not returned, with or without bytes.
        cache.insert(h, &Labels::from_pairs([("__name__", "other")]));
        assert_eq!(cache.get_span(h, span), None);
        let other = RemoteWriteV1 { timeseries: vec![ts(&[("__name__", "up"), ("job", "b")])], metadata: vec![] }
            .encode_to_vec();
        let other_span = parse_v1_fast(&other).unwrap().series[0].0.to_vec();
        cache.insert_span(h, &Labels::from_pairs([("__name__", "up"), ("job", "b")]), &other_span);
        assert_eq!(cache.get_span(h, span), None);
        assert_eq!(decode_v1_fast(&raw, &Limits::default(), Some(&cache)).unwrap().1, labels);
    }

    #[test]
    fn fast_path_errors_name_the_series() {
        let raw =
            RemoteWriteV1 { timeseries: vec![ts(&[("__name__", "up"), ("a", "")])], metadata: vec![] }.encode_to_vec();
        let e = decode_body(&body(&raw), Protocol::V1, &Limits::default()).unwrap_err();
        assert_eq!(e.http_status(), 409);
        assert!(e.msg.contains(r#"series {__name__="up", a=""}"#), "{e}");
    }

    #[test]
    fn describe_labels_matches_describe() {
        let w = ts(&[("__name__", "up"), ("a", "x\"y")]);
        let l = labels_from_proto(&w.labels).unwrap();
        assert_eq!(describe_labels(&l), describe(&w.labels));
    }

    mod prop {
        use proptest::prelude::{Strategy, any, prop, prop_assert, prop_assert_eq, proptest};

        use super::*;

        fn label() -> impl Strategy<Value = thanos::Label> {
            ("[a-z_]{0,6}", "\\PC{0,6}").prop_map(|(name, value)| thanos::Label { name, value })
        }

        fn sample() -> impl Strategy<Value = Sample> {
            (any::<f64>(), any::<i64>()).prop_map(|(value, timestamp)| Sample { value, timestamp })
        }

        fn series() -> impl Strategy<Value = TimeSeries> {
            (prop::collection::vec(label(), 0..5), prop::collection::vec(sample(), 0..4))
                .prop_map(|(labels, samples)| TimeSeries { labels, samples, ..Default::default() })
        }

        proptest! {
            /// Whatever prost encodes (floats only), the fast path parses to what prost
            /// decodes.
            #[test]
            fn round_trip_against_prost(ts in prop::collection::vec(series(), 0..6)) {
                let req = RemoteWriteV1 { timeseries: ts, metadata: vec![] };
                let raw = req.encode_to_vec();
                let fast = parse_v1_fast(&raw).expect("a float-only body takes the fast path");
                let back = RemoteWriteV1::decode(raw.as_slice()).unwrap();
                let (fp, fs) = fast_view(&fast).expect("prost's labels take the fast path");
                let (pp, ps) = prost_view(&back);
                prop_assert_eq!(fp, pp);
                // Compared bitwise: NaN != NaN.
                let bits = |s: &[(usize, Vec<Sample>)]| {
                    s.iter().map(|(e, v)| (*e, v.iter().map(|x| (x.value.to_bits(), x.timestamp)).collect::<Vec<_>>()))
                        .collect::<Vec<_>>()
                };
                prop_assert_eq!(bits(&fs), bits(&ps));
            }

            /// On arbitrary bytes (and on mangled encodings) the fast path never panics and
            /// only accepts what prost accepts, with the same content.
            #[test]
            fn never_disagrees_with_prost(
                ts in prop::collection::vec(series(), 0..4),
                cut in any::<prop::sample::Index>(),
                flip in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                noise in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut raw = RemoteWriteV1 { timeseries: ts, metadata: vec![] }.encode_to_vec();
                if !raw.is_empty() {
                    let i = flip.index(raw.len());
                    raw[i] = byte;
                    raw.truncate(cut.index(raw.len()) + 1);
                }
                for b in [raw, noise] {
                    // Accepted = the structure and every series' labels parse.
                    if let Some(view) = parse_v1_fast(&b).as_ref().and_then(fast_view) {
                        let back = RemoteWriteV1::decode(b.as_slice());
                        prop_assert!(back.is_ok(), "fast path accepted what prost refuses: {:?}", back);
                        let (fp, fs) = view;
                        let (pp, ps) = prost_view(&back.unwrap());
                        prop_assert_eq!(fp, pp);
                        prop_assert_eq!(fs.len(), ps.len());
                    }
                    // Through the cache (twice: the second time series hit it).
                    let lim = Limits::default();
                    let cache = LabelCache::new(64);
                    for _ in 0..2 {
                        if let Some((_, labels)) = decode_v1_fast(&b, &lim, Some(&cache)) {
                            prop_assert_eq!(Ok(labels), slow_decode(&b, &lim).map(|d| d.1));
                        }
                    }
                }
            }
        }
    }
}
