//! Decoding and validation of Prometheus remote-write requests, shared by receivers and
//! the fuzz target: snappy block decompression with the claimed length checked against
//! the limit before allocating, protobuf decode of remote write 1.0 (straight into
//! Thanos's series type) or 2.0 (translated to 1.0), limits, and label validation.

use std::collections::HashMap;

use norn_model::Labels;
use norn_model::labels::is_valid_legacy_label_name;
use parking_lot::Mutex;
use prost::Message;
use xxhash_rust::xxh64::Xxh64;

use crate::io::prometheus::write::v2;
use crate::prometheus_copy::TimeSeries;
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

/// Label sets that passed validation, by the hash of their wire form, so a series seen
/// before skips validation and label building. Senders repeat the same series in every
/// request, so after the first request nearly every lookup hits. Bounded: a shard that
/// fills up is cleared (the next requests rebuild what is still in use).
#[derive(Debug)]
pub struct LabelCache {
    shards: Box<[Mutex<HashMap<u64, Labels>>]>,
    per_shard: usize,
}

const CACHE_SHARDS: usize = 64;

impl LabelCache {
    /// A cache holding at most about `capacity` label sets.
    pub fn new(capacity: usize) -> LabelCache {
        LabelCache {
            shards: (0..CACHE_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(CACHE_SHARDS).max(1),
        }
    }

    fn shard(&self, h: u64) -> &Mutex<HashMap<u64, Labels>> {
        &self.shards[(h >> 58) as usize % CACHE_SHARDS]
    }

    /// The cached label set equal to `ls`, if any.
    fn get(&self, h: u64, ls: &[thanos::Label]) -> Option<Labels> {
        let g = self.shard(h).lock();
        let l = g.get(&h)?;
        let same = l.len() == ls.len() && l.iter().zip(ls).all(|((n, v), w)| n == w.name && v == w.value);
        same.then(|| l.clone())
    }

    fn insert(&self, h: u64, l: &Labels) {
        let mut g = self.shard(h).lock();
        if g.len() >= self.per_shard {
            g.clear();
        }
        g.insert(h, l.clone());
    }
}

/// The hash [`Labels::hash_value`] would give the wire labels (xxh64 over each name and
/// value followed by 0xff), computed without building them.
fn wire_hash(ls: &[thanos::Label]) -> u64 {
    let mut h = Xxh64::new(0);
    for l in ls {
        h.update(l.name.as_bytes());
        h.update(&[0xff]);
        h.update(l.value.as_bytes());
        h.update(&[0xff]);
    }
    h.digest()
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
        let bad = |what: String| format!("series {}: {what}", describe(&ts.labels));
        for h in &ts.histograms {
            histogram_from_proto_checked(h).map_err(|e| Rejected::bad(bad(e.to_string())))?;
        }
        let hash = cache.map(|_| wire_hash(&ts.labels));
        if let (Some(c), Some(h)) = (cache, hash)
            && let Some(l) = c.get(h, &ts.labels)
        {
            out.push(l);
            continue;
        }
        if limits.labels_per_series > 0 && ts.labels.len() > limits.labels_per_series {
            return Err(Rejected::bad(bad(format!(
                "{} labels, limit is {}",
                ts.labels.len(),
                limits.labels_per_series
            ))));
        }
        for l in &ts.labels {
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
        let labels = labels_from_proto(&ts.labels).map_err(|e| match e {
            ConvertError::Labels(_) | ConvertError::EmptyLabelValue(_) => Rejected::conflict(bad(e.to_string())),
            e => Rejected::bad(bad(e.to_string())),
        })?;
        if labels.metric_name().is_none_or(str::is_empty) {
            return Err(Rejected::bad(bad("no metric name (__name__ label)".into())));
        }
        if let (Some(c), Some(h)) = (cache, hash) {
            c.insert(h, &labels);
        }
        out.push(labels);
    }
    Ok(out)
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
    let n = snap::raw::decompress_len(body).map_err(|e| Rejected::bad(format!("snappy decode: {e}")))?;
    if limit > 0 && n > limit {
        return Err(Rejected::too_large(format!("decompressed body of {n} bytes exceeds the limit of {limit} bytes")));
    }
    let mut out = vec![0u8; n];
    let got = snap::raw::Decoder::new()
        .decompress(body, &mut out)
        .map_err(|e| Rejected::bad(format!("snappy decode: {e}")))?;
    out.truncate(got);
    Ok(out)
}

/// A decoded, validated remote-write body.
#[derive(Debug)]
pub struct Decoded {
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
    let raw = decompress(body, limits.size_bytes)?;
    let (series, counts, metadata) = match proto {
        Protocol::V1 => {
            let req = RemoteWriteV1::decode(raw.as_slice())
                .map_err(|e| Rejected::bad(format!("protobuf decode of prometheus.WriteRequest: {e}")))?;
            (req.timeseries, None, req.metadata)
        }
        Protocol::V2 => {
            let req = v2::Request::decode(raw.as_slice())
                .map_err(|e| Rejected::bad(format!("protobuf decode of io.prometheus.write.v2.Request: {e}")))?;
            let md = crate::metadata::v2_metadata(&req);
            let (s, c) = v2_to_v1(req).map_err(|e| Rejected::bad(e.to_string()))?;
            (s, Some(c), md)
        }
    };
    drop(raw);
    let labels = validate_cached(&series, limits, cache)?;
    Ok(Decoded { series, labels, counts, metadata })
}

#[cfg(test)]
mod tests {
    use crate::prometheus_copy::Sample;

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
        assert_eq!(first[0].hash_value(), wire_hash(&a[0].labels), "wire hash must equal the label hash");
        // Same hash slot, different labels: a forged entry must not be returned.
        cache.insert(wire_hash(&a[0].labels), &Labels::from_pairs([("__name__", "other")]));
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
}
