//! The Prometheus the sidecar sits beside, seen through its HTTP API: external labels
//! from `/api/v1/status/config`, command-line flags, readiness, the label and series
//! APIs, and remote read (`POST /api/v1/read`) with streamed XOR chunks or, where the
//! server only offers them, sampled responses.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use norn_model::{Labels, MatchType, Matcher};
use norn_storeapi::{HistogramSample, histogram_from_proto, prometheus, prometheus_copy};
use norn_tsdb::chunkenc::{Chunk, Encoding, Sample};
use norn_tsdb::chunks::ChunkMeta;
use prost::Message;
use serde::Deserialize;

/// Most samples Thanos puts in one XOR chunk when it re-encodes a sampled response.
pub const SAMPLES_PER_CHUNK: usize = 120;

/// Largest streamed frame accepted (Prometheus's client caps a whole response at 5e7
/// bytes by default; one frame holds at most one series' worth of chunks).
const MAX_FRAME: usize = 50_000_000;

/// Content type of a streamed remote-read response.
pub const STREAMED_CONTENT_TYPE: &str = "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse";

/// What went wrong talking to Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("request to {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url}: {msg}")]
    Decode { url: String, msg: String },
}

impl PromError {
    /// Whether Prometheus could not be reached at all (as opposed to answering badly).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PromError::Http { .. })
    }
}

type Result<T> = std::result::Result<T, PromError>;

/// One series from remote read: labels as Prometheus sent them and chunks in start-time
/// order.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadSeries {
    pub labels: Labels,
    pub chunks: Vec<ChunkMeta>,
}

/// How a remote-read response came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// `STREAMED_XOR_CHUNKS`: Prometheus's own chunks, passed through.
    Streamed,
    /// `SAMPLES`: samples re-encoded into chunks here.
    Sampled,
}

/// An HTTP client for one Prometheus server.
#[derive(Debug, Clone)]
pub struct PromClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ApiResponse<T> {
    status: String,
    #[serde(default = "Option::default")]
    data: Option<T>,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct ConfigData {
    yaml: String,
}

#[derive(Deserialize, Default)]
struct PromConfig {
    #[serde(default)]
    global: Option<GlobalConfig>,
}

#[derive(Deserialize, Default)]
struct GlobalConfig {
    #[serde(default)]
    external_labels: Option<BTreeMap<String, String>>,
}

/// External labels from the YAML Prometheus reports at `/api/v1/status/config`.
pub fn external_labels_from_yaml(yaml: &str) -> std::result::Result<Labels, String> {
    let c: PromConfig = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
    let m = c.global.and_then(|g| g.external_labels).unwrap_or_default();
    Ok(Labels::from_pairs(m.iter().filter(|(_, v)| !v.is_empty())))
}

/// A PromQL selector for the HTTP API's `match[]`: `{a="x",b=~"y"}`.
pub fn selector(ms: &[Matcher]) -> String {
    let parts: Vec<String> =
        ms.iter().map(|m| format!("{}{}{}", m.name, m.kind.as_str(), norn_model::format::go_quote(&m.value))).collect();
    format!("{{{}}}", parts.join(","))
}

/// A millisecond timestamp as the API's `start`/`end` parameter (seconds with a
/// fraction); `None` for the open ends Thanos uses (±i64 extremes), which the API
/// expresses by leaving the parameter out.
pub fn api_time(ms: i64) -> Option<String> {
    const OPEN: i64 = 1 << 61;
    if !(-OPEN..=OPEN).contains(&ms) {
        return None;
    }
    let (s, frac) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    Some(if frac == 0 { format!("{s}") } else { format!("{s}.{frac:03}") })
}

fn to_read_matcher(m: &Matcher) -> prometheus::LabelMatcher {
    use prometheus::label_matcher::Type;
    let t = match m.kind {
        MatchType::Equal => Type::Eq,
        MatchType::NotEqual => Type::Neq,
        MatchType::Regex => Type::Re,
        MatchType::NotRegex => Type::Nre,
    };
    prometheus::LabelMatcher { r#type: t as i32, name: m.name.clone(), value: m.value.clone() }
}

fn labels_from_wire(url: &str, ls: impl IntoIterator<Item = (String, String)>) -> Result<Labels> {
    let pairs: Vec<(String, String)> = ls.into_iter().collect();
    Labels::from_sorted(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .map_err(|e| PromError::Decode { url: url.into(), msg: format!("series labels: {e}") })
}

/// The streamed remote-read chunk type as the TSDB chunk encoding (the numbering is the
/// same: XOR=1, HISTOGRAM=2, FLOAT_HISTOGRAM=3).
fn stream_encoding(t: i32) -> Option<Encoding> {
    use prometheus::chunk::Encoding as E;
    match E::try_from(t).ok()? {
        E::Xor => Some(Encoding::Xor),
        E::Histogram => Some(Encoding::Histogram),
        E::FloatHistogram => Some(Encoding::FloatHistogram),
        E::Unknown => None,
    }
}

/// Splits the streamed body into frames: `uvarint(len)`, CRC32-Castagnoli of the message
/// (4 bytes, big-endian), message. Returns the complete frames' messages and leaves a
/// partial frame in `buf`.
pub fn take_frames(buf: &mut BytesMut, url: &str) -> Result<Vec<prometheus::ChunkedReadResponse>> {
    let mut out = Vec::new();
    loop {
        let mut len: u64 = 0;
        let mut shift = 0;
        let mut header = None;
        for (i, &b) in buf.iter().enumerate().take(10) {
            len |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                header = Some(i + 1);
                break;
            }
            shift += 7;
        }
        let Some(hlen) = header else {
            if buf.len() >= 10 {
                return Err(PromError::Decode { url: url.into(), msg: "malformed frame length".into() });
            }
            return Ok(out);
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_FRAME {
            return Err(PromError::Decode {
                url: url.into(),
                msg: format!("frame of {len} bytes exceeds {MAX_FRAME}"),
            });
        }
        if buf.len() < hlen + 4 + len {
            return Ok(out);
        }
        buf.advance(hlen);
        let want = buf.get_u32();
        let msg = buf.split_to(len);
        let got = crc32c::crc32c(&msg);
        if got != want {
            return Err(PromError::Decode {
                url: url.into(),
                msg: format!("frame checksum mismatch: header says {want:#010x}, message has {got:#010x}"),
            });
        }
        let r = prometheus::ChunkedReadResponse::decode(msg.freeze())
            .map_err(|e| PromError::Decode { url: url.into(), msg: format!("ChunkedReadResponse: {e}") })?;
        out.push(r);
    }
}

/// `prometheus.ReadResponse` decoded with Thanos's series type (same wire form), so that
/// histograms convert with the shared helpers.
#[derive(Clone, PartialEq, prost::Message)]
struct SampledResponse {
    #[prost(message, repeated, tag = "1")]
    results: Vec<SampledResult>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SampledResult {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<prometheus_copy::TimeSeries>,
}

/// Turns a sampled series into chunks as Thanos does: time-ordered samples (floats and
/// histograms merged by time) in chunks of at most [`SAMPLES_PER_CHUNK`].
pub fn encode_sampled(url: &str, ts: prometheus_copy::TimeSeries) -> Result<ReadSeries> {
    let labels = labels_from_wire(url, ts.labels.into_iter().map(|l| (l.name, l.value)))?;
    let mut samples: Vec<Sample> = ts.samples.iter().map(|s| Sample::Float(s.timestamp, s.value)).collect();
    for h in &ts.histograms {
        let s = histogram_from_proto(h).map_err(|e| PromError::Decode { url: url.into(), msg: e.to_string() })?;
        samples.push(match s {
            HistogramSample::Int(t, h) => Sample::Histogram(t, Box::new(h)),
            HistogramSample::Float(t, h) => Sample::FloatHistogram(t, Box::new(h)),
        });
    }
    samples.sort_by_key(Sample::timestamp);
    let chunks = norn_tsdb::series::encode_samples(samples, SAMPLES_PER_CHUNK)
        .map_err(|e| PromError::Decode { url: url.into(), msg: format!("{labels}: {e}") })?;
    Ok(ReadSeries { labels, chunks })
}

/// Converts one streamed series. Chunks of types this build does not know are left out
/// and counted in the returned number.
pub fn convert_streamed(url: &str, s: prometheus::ChunkedSeries) -> Result<(ReadSeries, usize)> {
    let labels = labels_from_wire(url, s.labels.into_iter().map(|l| (l.name, l.value)))?;
    let mut skipped = 0;
    let mut chunks = Vec::with_capacity(s.chunks.len());
    for c in s.chunks {
        match stream_encoding(c.r#type) {
            Some(enc) => chunks.push(ChunkMeta {
                min_time: c.min_time_ms,
                max_time: c.max_time_ms,
                chunk: Chunk::new(enc, c.data),
            }),
            None => skipped += 1,
        }
    }
    Ok((ReadSeries { labels, chunks }, skipped))
}

impl PromClient {
    /// A client for the Prometheus at `url` (`http://host:port`, optionally with a path
    /// prefix). `timeout` bounds each request.
    pub fn new(url: &str, timeout: Duration) -> std::result::Result<PromClient, String> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("{url:?} is not an http:// URL"));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(PromClient { base, http })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn api<T: serde::de::DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T> {
        let url = self.url_of(path);
        let resp = self
            .http
            .get(&url)
            .query(query)
            .send()
            .await
            .map_err(|source| PromError::Http { url: url.clone(), source })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|source| PromError::Http { url: url.clone(), source })?;
        let parsed: std::result::Result<ApiResponse<T>, _> = serde_json::from_slice(&body);
        match parsed {
            Ok(r) if r.status == "success" => {
                r.data.ok_or_else(|| PromError::Decode { url: url.clone(), msg: "response without data".into() })
            }
            Ok(r) => Err(PromError::Status { url, status, body: r.error }),
            Err(e) if status == 200 => Err(PromError::Decode { url, msg: e.to_string() }),
            Err(_) => Err(PromError::Status { url, status, body: String::from_utf8_lossy(&body).into_owned() }),
        }
    }

    /// Whether `/-/ready` answers 200.
    pub async fn ready(&self) -> Result<()> {
        let url = self.url_of("/-/ready");
        let resp = self.http.get(&url).send().await.map_err(|source| PromError::Http { url: url.clone(), source })?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        Err(PromError::Status { url, status, body: body.trim().to_string() })
    }

    /// The external labels of the running configuration.
    pub async fn external_labels(&self) -> Result<Labels> {
        let c: ConfigData = self.api("/api/v1/status/config", &[]).await?;
        external_labels_from_yaml(&c.yaml)
            .map_err(|msg| PromError::Decode { url: self.url_of("/api/v1/status/config"), msg })
    }

    /// The server's command-line flags (`/api/v1/status/flags`), names without dashes.
    pub async fn flags(&self) -> Result<BTreeMap<String, String>> {
        self.api("/api/v1/status/flags", &[]).await
    }

    /// The head's lowest timestamp from `/api/v1/status/tsdb`, when it has samples.
    pub async fn head_min_time(&self) -> Result<Option<i64>> {
        #[derive(Deserialize)]
        struct Tsdb {
            #[serde(rename = "headStats")]
            head: Option<Head>,
        }
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "numSeries", default)]
            num_series: u64,
            #[serde(rename = "minTime", default)]
            min_time: i64,
        }
        let t: Tsdb = self.api("/api/v1/status/tsdb", &[]).await?;
        Ok(t.head.filter(|h| h.num_series > 0 && h.min_time != i64::MAX).map(|h| h.min_time))
    }

    fn range_query(ms: &[Matcher], start: i64, end: i64) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(s) = api_time(start) {
            q.push(("start", s));
        }
        if let Some(e) = api_time(end) {
            q.push(("end", e));
        }
        if !ms.is_empty() {
            q.push(("match[]", selector(ms)));
        }
        q
    }

    /// Label names of series matching `ms` (all series when empty) in `[start, end]`.
    pub async fn label_names(&self, ms: &[Matcher], start: i64, end: i64) -> Result<Vec<String>> {
        self.api("/api/v1/labels", &Self::range_query(ms, start, end)).await
    }

    /// Values of label `name` on series matching `ms` in `[start, end]`.
    pub async fn label_values(&self, name: &str, ms: &[Matcher], start: i64, end: i64) -> Result<Vec<String>> {
        let path = format!("/api/v1/label/{}/values", encode_path_segment(name));
        self.api(&path, &Self::range_query(ms, start, end)).await
    }

    /// Label sets of the series matching `ms` in `[start, end]` (`/api/v1/series`).
    pub async fn series(&self, ms: &[Matcher], start: i64, end: i64) -> Result<Vec<Labels>> {
        let raw: Vec<BTreeMap<String, String>> = self.api("/api/v1/series", &Self::range_query(ms, start, end)).await?;
        Ok(raw.into_iter().map(|m| Labels::from_pairs(m.iter())).collect())
    }

    /// Remote read of one query, asking for streamed chunks first and samples second.
    /// Series come back in Prometheus's order (sorted by its labels, external labels
    /// included by Prometheus); `skipped` counts chunks of unknown types left out.
    pub async fn remote_read(
        &self,
        ms: &[Matcher],
        start: i64,
        end: i64,
        hints: Option<prometheus::ReadHints>,
    ) -> Result<(Vec<ReadSeries>, ReadMode, usize)> {
        use prometheus::read_request::ResponseType;
        let url = self.url_of("/api/v1/read");
        let req = prometheus::ReadRequest {
            queries: vec![prometheus::Query {
                start_timestamp_ms: start,
                end_timestamp_ms: end,
                matchers: ms.iter().map(to_read_matcher).collect(),
                hints,
            }],
            accepted_response_types: vec![ResponseType::StreamedXorChunks as i32, ResponseType::Samples as i32],
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .map_err(|e| PromError::Decode { url: url.clone(), msg: format!("snappy: {e}") })?;
        let http_err = |source| PromError::Http { url: url.clone(), source };
        let mut resp = self
            .http
            .post(&url)
            .header("Content-Encoding", "snappy")
            .header("Accept-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Read-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .map_err(http_err)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.text().await.unwrap_or_default();
            return Err(PromError::Status { url, status, body: body.trim().to_string() });
        }
        let ctype =
            resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if ctype.starts_with(STREAMED_CONTENT_TYPE) {
            let mut buf = BytesMut::new();
            let mut out: Vec<ReadSeries> = Vec::new();
            let mut skipped = 0;
            loop {
                let next = resp.chunk().await.map_err(|source| PromError::Http { url: url.clone(), source })?;
                let done = next.is_none();
                if let Some(b) = next {
                    buf.extend_from_slice(&b);
                }
                for frame in take_frames(&mut buf, &url)? {
                    for s in frame.chunked_series {
                        let (s, n) = convert_streamed(&url, s)?;
                        skipped += n;
                        // A series longer than one frame continues in the next frame.
                        match out.last_mut() {
                            Some(last) if last.labels == s.labels => last.chunks.extend(s.chunks),
                            _ => out.push(s),
                        }
                    }
                }
                if done {
                    break;
                }
            }
            if !buf.is_empty() {
                return Err(PromError::Decode {
                    url,
                    msg: format!("stream ends inside a frame ({} bytes)", buf.len()),
                });
            }
            Ok((out, ReadMode::Streamed, skipped))
        } else if ctype.starts_with("application/x-protobuf") {
            let raw = resp.bytes().await.map_err(|source| PromError::Http { url: url.clone(), source })?;
            let plain = snap::raw::Decoder::new()
                .decompress_vec(&raw)
                .map_err(|e| PromError::Decode { url: url.clone(), msg: format!("snappy: {e}") })?;
            let r = SampledResponse::decode(plain.as_slice())
                .map_err(|e| PromError::Decode { url: url.clone(), msg: format!("ReadResponse: {e}") })?;
            let mut out = Vec::new();
            for q in r.results {
                for ts in q.timeseries {
                    out.push(encode_sampled(&url, ts)?);
                }
            }
            Ok((out, ReadMode::Sampled, 0))
        } else {
            Err(PromError::Decode { url, msg: format!("unexpected remote-read content type {ctype:?}") })
        }
    }
}

/// Percent-encodes a label name for a URL path (names are `[a-zA-Z_][a-zA-Z0-9_]*` in
/// the classic scheme; anything else is escaped rather than trusted).
fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_labels_from_config_yaml() {
        let yaml = "global:\n  scrape_interval: 15s\n  external_labels:\n    replica: a\n    cluster: \"eu-1\"\nscrape_configs:\n- job_name: x\n";
        assert_eq!(external_labels_from_yaml(yaml).unwrap().to_string(), r#"{cluster="eu-1", replica="a"}"#);
        assert!(external_labels_from_yaml("global:\n  scrape_interval: 15s\n").unwrap().is_empty());
        assert!(external_labels_from_yaml("scrape_configs: []\n").unwrap().is_empty());
        assert!(external_labels_from_yaml("global: [").is_err());
    }

    #[test]
    fn selectors_and_times() {
        let ms = vec![
            Matcher::equal("__name__", "up"),
            Matcher::new(MatchType::Regex, "job", "a|b\"c").unwrap(),
            Matcher::new(MatchType::NotEqual, "x", "").unwrap(),
        ];
        assert_eq!(selector(&ms), r#"{__name__="up",job=~"a|b\"c",x!=""}"#);
        for (ms, want) in [
            (1_700_000_000_000, Some("1700000000")),
            (1_700_000_000_123, Some("1700000000.123")),
            (-1, Some("-1.999")),
            (0, Some("0")),
            (i64::MIN, None),
            (i64::MAX, None),
        ] {
            assert_eq!(api_time(ms).as_deref(), want, "{ms}");
        }
        assert_eq!(encode_path_segment("job"), "job");
        assert_eq!(encode_path_segment("a b/é"), "a%20b%2F%C3%A9");
    }

    fn frame(msg: &prometheus::ChunkedReadResponse) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut out = Vec::new();
        let mut n = body.len() as u64;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn chunked(name: &str, n: usize) -> prometheus::ChunkedReadResponse {
        prometheus::ChunkedReadResponse {
            chunked_series: vec![prometheus::ChunkedSeries {
                labels: vec![prometheus::Label { name: "__name__".into(), value: name.into() }],
                chunks: (0..n)
                    .map(|i| prometheus::Chunk {
                        min_time_ms: i as i64,
                        max_time_ms: i as i64,
                        r#type: 1,
                        data: vec![0, 0],
                    })
                    .collect(),
            }],
            query_index: 0,
        }
    }

    #[test]
    fn frames_split_anywhere() {
        let a = chunked("a", 3);
        let b = chunked("b", 200);
        let mut all = frame(&a);
        all.extend(frame(&b));
        for cut in 0..all.len() {
            let mut buf = BytesMut::from(&all[..cut]);
            let mut got = take_frames(&mut buf, "u").unwrap();
            buf.extend_from_slice(&all[cut..]);
            got.extend(take_frames(&mut buf, "u").unwrap());
            assert!(buf.is_empty());
            assert_eq!(got, vec![a.clone(), b.clone()], "cut at {cut}");
        }
    }

    #[test]
    fn frame_errors() {
        let mut bad = frame(&chunked("a", 1));
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = take_frames(&mut BytesMut::from(&bad[..]), "u").unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x7f][..]);
        assert!(take_frames(&mut huge, "u").unwrap_err().to_string().contains("exceeds"));
        let mut endless = BytesMut::from(&[0x80u8; 12][..]);
        assert!(take_frames(&mut endless, "u").is_err());
    }

    #[test]
    fn streamed_chunk_types() {
        let mut s = chunked("a", 3).chunked_series.remove(0);
        s.chunks[1].r#type = 3;
        s.chunks[2].r#type = 9;
        let (got, skipped) = convert_streamed("u", s).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(
            got.chunks.iter().map(|c| c.chunk.encoding).collect::<Vec<_>>(),
            [Encoding::Xor, Encoding::FloatHistogram]
        );
        let unsorted = prometheus::ChunkedSeries {
            labels: vec![
                prometheus::Label { name: "b".into(), value: "1".into() },
                prometheus::Label { name: "a".into(), value: "1".into() },
            ],
            chunks: vec![],
        };
        assert!(convert_streamed("u", unsorted).is_err());
    }

    #[test]
    fn sampled_histograms_become_histogram_chunks() {
        use prometheus_copy::histogram::{Count, ZeroCount};
        let h = |t: i64, n: u64| prometheus_copy::Histogram {
            count: Some(Count::CountInt(2 * n)),
            sum: n as f64,
            schema: 0,
            zero_threshold: 0.001,
            zero_count: Some(ZeroCount::ZeroCountInt(0)),
            positive_spans: vec![prometheus_copy::BucketSpan { offset: 0, length: 2 }],
            positive_deltas: vec![n as i64, 0],
            timestamp: t,
            ..Default::default()
        };
        let ts = prometheus_copy::TimeSeries {
            labels: vec![norn_storeapi::thanos::Label { name: "__name__".into(), value: "h".into() }],
            histograms: vec![h(1000, 1), h(2000, 2), h(3000, 3)],
            ..Default::default()
        };
        let s = encode_sampled("u", ts).unwrap();
        assert_eq!(s.chunks.len(), 1);
        assert_eq!(s.chunks[0].chunk.encoding, Encoding::Histogram);
        let got: Vec<(i64, u64, Vec<i64>)> = s.chunks[0]
            .chunk
            .iter()
            .unwrap()
            .map(|x| match x {
                Sample::Histogram(t, h) => (t, h.count, h.positive_buckets.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [(1000, 2, vec![1, 0]), (2000, 4, vec![2, 0]), (3000, 6, vec![3, 0])]);
    }

    #[test]
    fn sampled_series_reencoded_in_120_sample_chunks() {
        let ts = prometheus_copy::TimeSeries {
            labels: vec![norn_storeapi::thanos::Label { name: "__name__".into(), value: "up".into() }],
            samples: (0..250).map(|i| prometheus_copy::Sample { value: i as f64, timestamp: i * 15_000 }).collect(),
            ..Default::default()
        };
        let s = encode_sampled("u", ts).unwrap();
        let sizes: Vec<usize> = s.chunks.iter().map(|c| c.chunk.num_samples()).collect();
        assert_eq!(sizes, [120, 120, 10]);
        assert_eq!((s.chunks[1].min_time, s.chunks[1].max_time), (120 * 15_000, 239 * 15_000));
        let back: Vec<(i64, f64)> = s
            .chunks
            .iter()
            .flat_map(|c| {
                c.chunk.iter().unwrap().map(|x| match x {
                    Sample::Float(t, v) => (t, v),
                    other => panic!("{other:?}"),
                })
            })
            .collect();
        assert_eq!(back, (0..250).map(|i| (i * 15_000, i as f64)).collect::<Vec<_>>());
    }
}
