//! Prometheus remote read (`/api/v1/read`) over the raw fan-out: the endpoints' chunks go
//! out as they were stored.
//!
//! Series come from the fan-out with their chunks undecoded: for sampled answers from
//! [`crate::fanout::Fanout::select_raw`] (merged by labels), for streamed ones from
//! [`crate::fanout::Fanout::select_streamed`], merged while they arrive and sent group by
//! group ([`crate::dedup::merge_streamed`]). Thanos's querier serves no remote read; the usual adapter in front of it
//! (thanos-remote-read) reads its StoreAPI and so never deduplicates. Ours follows the
//! querier's own `dedup` setting instead, as its PromQL answers do: with dedup on, series
//! equal but for the replica labels are one series without them. A group of replicas is
//! decoded only when its replicas really differ: chunks byte-identical to an earlier
//! replica's are dropped first (as the querier's dedup does), and when at most one replica
//! has chunks left, those chunks go out unchanged. Otherwise the replicas' samples are
//! deduplicated with Thanos's penalty rule and encoded again, in their own types (an
//! integer histogram stays an integer histogram).
//!
//! Streamed answers (`STREAMED_XOR_CHUNKS`) carry one series per frame and split a series
//! over several frames past [`MAX_BYTES_IN_FRAME`], as Prometheus's server does, and go out
//! as they are made: the querier holds about one group of replicas, not the answer. Chunk
//! types use remote read's numbering (XOR=1, HISTOGRAM=2, FLOAT_HISTOGRAM=3), one more than
//! the StoreAPI's. Sampled answers (`SAMPLES`) carry floats in `samples` and histograms in
//! `histograms`, integer histograms with integer fields, in the query's time range.
//!
//! Each query's `ReadHints` are used as Prometheus's read handler uses them ([`ReadPlan`]):
//! their range cuts the query's, the rest goes to the stores as `QueryHints`, and with a
//! `max_source_resolution` the stores answer from downsampled blocks, read per the hinted
//! function as the PromQL path reads them ([`combine_downsampled`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use norn_model::{Labels, MatchType, Matcher};
use norn_promql::StoredValue;
use norn_storeapi::chunks::{
    self, ChunkConvertError, encoding_from_storepb, float_histogram_to_proto, histogram_to_proto, remote_read_encoding,
};
use norn_storeapi::prometheus as pb;
use norn_storeapi::thanos;
use norn_tsdb::chunkenc::{Chunk, Sample};
use prost::Message;

use crate::api::{ApiState, Params};
use crate::dedup::{
    Feed, MergeError, RawSeries, Source, dedup_replicas, is_counter_func, merge_streamed, replicas_of, strip_labels,
};
use crate::fanout::{QueryOptions, StreamedSelection};
use crate::seriesview::{SeriesView, WireChunk};

/// Largest streamed frame Prometheus's server builds by default
/// (`--storage.remote.read-max-bytes-in-frame`): a frame is closed once its chunks reach it.
pub const MAX_BYTES_IN_FRAME: usize = 1 << 20;

/// One series of a remote-read answer with its chunks in remote read's numbering, sorted
/// by time range (they may overlap, as the chunks of a head and a block do).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadSeries {
    /// Labels (without the replica labels when deduplicated).
    pub labels: Labels,
    /// Chunks, data as stored.
    pub chunks: Vec<pb::Chunk>,
}

/// Why a selection could not be turned into a remote-read answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A chunk could not be read or written.
    #[error("series {series}: {source}")]
    Chunk {
        /// The series' labels.
        series: String,
        /// What was wrong with its chunks.
        source: ChunkConvertError,
    },
    /// Downsampled chunks could not be read.
    #[error("series {series}: {message}")]
    Downsampled {
        /// The series' labels.
        series: String,
        /// What was wrong with its chunks.
        message: String,
    },
}

/// A StoreAPI chunk as a remote-read chunk, the data untouched (`None` without raw data).
pub fn remote_chunk(c: &WireChunk) -> Result<Option<pb::Chunk>, ChunkConvertError> {
    let Some(raw) = &c.raw else { return Ok(None) };
    let enc = encoding_from_storepb(raw.encoding)?;
    Ok(Some(pb::Chunk {
        min_time_ms: c.min_time,
        max_time_ms: c.max_time,
        r#type: remote_read_encoding(enc) as i32,
        data: raw.data.to_vec(),
    }))
}

fn remote_chunks<'a>(cs: impl IntoIterator<Item = &'a WireChunk>) -> Result<Vec<pb::Chunk>, ChunkConvertError> {
    Ok(cs.into_iter().map(remote_chunk).collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect())
}

/// What makes two wire chunks equal: time range, encoding and bytes.
fn chunk_id(c: &WireChunk) -> Option<(i64, i64, i32, &[u8])> {
    c.raw.as_ref().map(|r| (c.min_time, c.max_time, r.encoding, &r.data[..]))
}

/// The raw fan-out's series as remote-read series. Without replica labels each series
/// passes through; with them, series equal once the replica labels are removed are one
/// series, deduplicated (see the module doc) over the samples in `[mint, maxt]` (where the
/// querier's dedup starts too: the penalty rule's choices depend on the first sample).
/// With `counter` (the hints name a counter function), float replicas that differ are
/// deduplicated as the querier's PromQL deduplicates a counter function's input.
pub fn combine(
    raw: Vec<RawSeries>,
    replica_labels: &[String],
    counter: bool,
    mint: i64,
    maxt: i64,
) -> Result<Vec<ReadSeries>, ReadError> {
    let err = |l: &Labels| {
        let series = l.to_string();
        move |source| ReadError::Chunk { series, source }
    };
    if replica_labels.is_empty() {
        return raw
            .into_iter()
            .map(|(labels, cs)| {
                let chunks = remote_chunks(&cs).map_err(err(&labels))?;
                Ok(ReadSeries { labels, chunks })
            })
            .collect();
    }
    // Grouped by labels without the replica labels; within a group, replicas in replica
    // label order (as the querier's dedup orders them).
    let mut groups: std::collections::BTreeMap<Labels, Vec<(Labels, Vec<WireChunk>)>> = Default::default();
    for (labels, cs) in raw {
        groups.entry(strip_labels(&labels, replica_labels)).or_default().push((labels, cs));
    }
    let replica_of = |l: &Labels| -> Vec<(String, String)> {
        l.iter().filter(|(n, _)| replica_labels.iter().any(|r| r == n)).map(|(n, v)| (n.into(), v.into())).collect()
    };
    let mut out = Vec::with_capacity(groups.len());
    for (key, mut replicas) in groups {
        replicas.sort_by_cached_key(|(l, _)| replica_of(l));
        let replicas: Vec<Vec<&WireChunk>> = replicas.iter().map(|(_, cs)| cs.iter().collect()).collect();
        let chunks = dedup_group(&replicas, counter, mint, maxt).map_err(err(&key))?;
        out.push(ReadSeries { labels: key, chunks });
    }
    Ok(out)
}

/// One group's replicas (chunks sorted by time range, in replica order) as one series'
/// chunks: passed through when at most one replica has chunks no earlier replica has,
/// else their samples in `[mint, maxt]` decoded, deduplicated and encoded again.
fn dedup_group(
    replicas: &[Vec<&WireChunk>],
    counter: bool,
    mint: i64,
    maxt: i64,
) -> Result<Vec<pb::Chunk>, ChunkConvertError> {
    if let [one] = replicas {
        return single_replica(one);
    }
    let mut seen: std::collections::HashSet<(i64, i64, i32, &[u8])> = Default::default();
    let mut kept: Vec<Vec<&WireChunk>> = Vec::with_capacity(replicas.len());
    for cs in replicas {
        let keep: Vec<&WireChunk> =
            cs.iter().copied().filter(|c| chunk_id(c).is_some_and(|id| !seen.contains(&id))).collect();
        seen.extend(cs.iter().filter_map(|c| chunk_id(c)));
        if !keep.is_empty() {
            kept.push(keep);
        }
    }
    if kept.len() <= 1 {
        return single_replica(kept.first().map(Vec::as_slice).unwrap_or_default());
    }
    let mut decoded: Vec<Vec<Sample>> = kept.iter().map(|cs| decode_replica(cs)).collect::<Result<_, _>>()?;
    for d in &mut decoded {
        d.retain(|s| (mint..=maxt).contains(&s.timestamp()));
    }
    decoded.retain(|d| !d.is_empty());
    if counter && decoded.iter().flatten().all(|s| matches!(s, Sample::Float(..))) {
        // A counter function's input: a switch to a replica whose counter is lower raises
        // it by the difference (Thanos's counter-aware dedup), so the client sees no false
        // reset; the values change, so they are taken as they are.
        let floats = |s: &Vec<Sample>| -> Vec<(i64, StoredValue)> {
            s.iter()
                .filter_map(|x| if let Sample::Float(t, v) = x { Some((*t, StoredValue::Float(*v))) } else { None })
                .collect()
        };
        let chosen = dedup_replicas(decoded.iter().map(floats).collect(), true);
        let samples = chosen.into_iter().filter_map(|(t, v)| match v {
            StoredValue::Float(f) => Some(Sample::Float(t, f)),
            StoredValue::Histogram(_) => None,
        });
        return Ok(chunks::encode_samples(samples)?.iter().map(chunks::remote_read_chunk).collect());
    }
    // Otherwise the penalty rule looks at timestamps only (values matter for counters
    // alone): each value stands for its place, replica and index, so the chosen samples
    // are taken back in their own type. Exact: both fit well within an f64's 53-bit
    // mantissa.
    let places: Vec<Vec<(i64, StoredValue)>> = decoded
        .iter()
        .enumerate()
        .map(|(r, s)| {
            s.iter().enumerate().map(|(i, x)| (x.timestamp(), StoredValue::Float(place(r, i) as f64))).collect()
        })
        .collect();
    let chosen = dedup_replicas(places, false);
    let mut samples = Vec::with_capacity(chosen.len());
    for (_, v) in chosen {
        let StoredValue::Float(p) = v else { continue };
        let (r, i) = unplace(p as u64);
        if let Some(s) = decoded.get(r).and_then(|d| d.get(i)) {
            samples.push(s.clone());
        }
    }
    Ok(chunks::encode_samples(samples)?.iter().map(chunks::remote_read_chunk).collect())
}

fn place(replica: usize, index: usize) -> u64 {
    ((replica as u64) << 32) | index as u64
}

/// One replica's chunks as the client gets them: passed through when they follow one
/// another in time, else (an endpoint that merged series which differ only by a stripped
/// replica label sends overlapping chunks) decoded, one sample per timestamp, and encoded
/// again, so the client never reads time going backwards.
fn single_replica(cs: &[&WireChunk]) -> Result<Vec<pb::Chunk>, ChunkConvertError> {
    if cs.windows(2).all(|w| w[0].max_time < w[1].min_time) {
        return remote_chunks(cs.iter().copied());
    }
    let samples = decode_replica(cs)?;
    Ok(chunks::encode_samples(samples)?.iter().map(chunks::remote_read_chunk).collect())
}

fn unplace(p: u64) -> (usize, usize) {
    ((p >> 32) as usize, (p & 0xffff_ffff) as usize)
}

/// Decodes one replica's chunks (sorted by time range, possibly overlapping) into samples
/// ascending by time, one per timestamp.
fn decode_replica(cs: &[&WireChunk]) -> Result<Vec<Sample>, ChunkConvertError> {
    let mut out = Vec::new();
    for c in cs {
        let Some(raw) = &c.raw else { continue };
        decode_into(c.min_time, c.max_time, encoding_from_storepb(raw.encoding)?, raw.data.clone(), &mut out)?;
    }
    normalize(&mut out);
    Ok(out)
}

fn decode_into(
    min_time: i64,
    max_time: i64,
    enc: norn_tsdb::chunkenc::Encoding,
    data: impl Into<bytes::Bytes>,
    out: &mut Vec<Sample>,
) -> Result<(), ChunkConvertError> {
    let corrupt = |source| ChunkConvertError::Corrupt { min_time, max_time, source };
    let chunk = Chunk::new(enc, data);
    let mut it = chunk.iter().map_err(corrupt)?;
    out.extend(it.by_ref());
    match it.err() {
        Some(e) => Err(corrupt(e.clone())),
        None => Ok(()),
    }
}

/// Sorts by time and keeps the first sample of each timestamp.
fn normalize(s: &mut Vec<Sample>) {
    if !s.windows(2).all(|w| w[0].timestamp() < w[1].timestamp()) {
        s.sort_by_key(Sample::timestamp);
        s.dedup_by_key(|x| x.timestamp());
    }
}

/// Appends the streamed frames of one query's series to `out` (see [`write_series`]).
pub fn write_frames(series: &[ReadSeries], query_index: i64, max_frame: usize, out: &mut Vec<u8>) {
    for s in series {
        write_series(&s.labels, &s.chunks, query_index, max_frame, out);
    }
}

/// Appends the streamed frames of one series to `out`, as Prometheus's
/// `StreamChunkedReadResponses` cuts them: one series per frame, a new frame once the
/// chunks of the current one reach `max_frame` bytes less the labels' (so a frame may pass
/// it by one chunk). Each frame is `uvarint(len)`, the big-endian CRC32-Castagnoli of the
/// message, then the message.
pub fn write_series(labels: &Labels, chunks: &[pb::Chunk], query_index: i64, max_frame: usize, out: &mut Vec<u8>) {
    let labels: Vec<pb::Label> = labels.iter().map(|(n, v)| pb::Label { name: n.into(), value: v.into() }).collect();
    let max_data = max_frame.saturating_sub(labels.iter().map(Message::encoded_len).sum());
    let mut msg =
        pb::ChunkedReadResponse { chunked_series: vec![pb::ChunkedSeries { labels, chunks: Vec::new() }], query_index };
    let mut rest = chunks;
    while !rest.is_empty() {
        let mut size = 0;
        let mut n = 0;
        while n < rest.len() && (n == 0 || size < max_data) {
            size += rest[n].encoded_len();
            n += 1;
        }
        msg.chunked_series[0].chunks = rest[..n].to_vec();
        let len = msg.encoded_len();
        prost::encoding::encode_varint(len as u64, out);
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        // Encoding into a Vec cannot fail: it grows as needed.
        let _ = msg.encode(out);
        let crc = norn_tsdb::encoding::crc32c(&out[at + 4..]);
        out[at..at + 4].copy_from_slice(&crc.to_be_bytes());
        rest = &rest[n..];
    }
}

/// A series as a sampled remote-read series: its samples in `[mint, maxt]`, floats in
/// `samples`, histograms in `histograms` (integer ones with integer counts), by time.
pub fn sampled(s: &ReadSeries, mint: i64, maxt: i64) -> Result<pb::TimeSeries, ReadError> {
    let err = |source| ReadError::Chunk { series: s.labels.to_string(), source };
    let mut all = Vec::new();
    for c in &s.chunks {
        if c.max_time_ms < mint || c.min_time_ms > maxt {
            continue;
        }
        let enc = chunks::encoding_from_remote_read(c.r#type).map_err(err)?;
        decode_into(c.min_time_ms, c.max_time_ms, enc, c.data.clone(), &mut all).map_err(err)?;
    }
    normalize(&mut all);
    let mut ts = pb::TimeSeries {
        labels: s.labels.iter().map(|(n, v)| pb::Label { name: n.into(), value: v.into() }).collect(),
        ..Default::default()
    };
    for x in all.into_iter().filter(|x| (mint..=maxt).contains(&x.timestamp())) {
        match x {
            Sample::Float(t, v) => ts.samples.push(pb::Sample { value: v, timestamp: t }),
            Sample::Histogram(t, h) => ts.histograms.push(histogram_to_proto(t, &h)),
            Sample::FloatHistogram(t, h) => ts.histograms.push(float_histogram_to_proto(t, &h)),
        }
    }
    Ok(ts)
}

/// How one remote-read query is read, from its time range and its hints (`ReadHints`,
/// what the client's PromQL engine knew of the selection).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPlan {
    /// Start of the range read (ms): the query's, clamped to the hints' when given.
    pub mint: i64,
    /// End of the range read (ms), likewise.
    pub maxt: i64,
    /// Labels only (`func` is `series`, as Prometheus's series API asks).
    pub skip_chunks: bool,
    /// The function the selection feeds, if any.
    pub func: Option<String>,
    /// Query step (ms); 0 for instant queries and without hints.
    pub step_ms: i64,
    /// The hints as the StoreAPI carries them (Thanos's `storeHintsFromPromHints`).
    pub query_hints: Option<thanos::QueryHints>,
}

impl ReadPlan {
    /// The plan of `q`. As Prometheus's TSDB querier, the hints' `start_ms`/`end_ms`
    /// narrow the range the data is cut to; both 0 (hints that only name a function) are
    /// taken as no range, as no PromQL selection has that range.
    pub fn new(q: &pb::Query) -> ReadPlan {
        let (mut mint, mut maxt) = (q.start_timestamp_ms, q.end_timestamp_ms);
        let Some(h) = &q.hints else {
            return ReadPlan { mint, maxt, skip_chunks: false, func: None, step_ms: 0, query_hints: None };
        };
        if h.start_ms != 0 || h.end_ms != 0 {
            mint = mint.max(h.start_ms);
            maxt = maxt.min(h.end_ms);
        }
        let func = (!h.func.is_empty()).then(|| h.func.clone());
        let query_hints = thanos::QueryHints {
            step_millis: h.step_ms.max(0),
            func: func.as_ref().map(|name| thanos::Func { name: name.clone() }),
            grouping: (h.by || !h.grouping.is_empty())
                .then(|| thanos::Grouping { by: h.by, labels: h.grouping.clone() }),
            range: (h.range_ms != 0).then_some(thanos::Range { millis: h.range_ms }),
            ..Default::default()
        };
        ReadPlan {
            mint,
            maxt,
            skip_chunks: h.func == "series",
            func,
            step_ms: h.step_ms.max(0),
            query_hints: Some(query_hints),
        }
    }
}

/// The raw fan-out's series of a downsampled read (asked with `aggrs`, see
/// [`crate::downsampled`]) as remote-read series: each series' chunks read as the
/// querier's PromQL reads them (the aggregates the function needs, or raw chunks where
/// there is no downsampled block), replicas deduplicated with the penalty rule (counter-
/// aware for `counter`), in `[mint, maxt]`, encoded again (floats as XOR; histograms, only
/// ever raw, as float histograms).
pub fn combine_downsampled(
    raw: Vec<RawSeries>,
    replica_labels: &[String],
    aggrs: &[thanos::Aggr],
    counter: bool,
    mint: i64,
    maxt: i64,
) -> Result<Vec<ReadSeries>, ReadError> {
    let mut groups: std::collections::BTreeMap<Labels, Vec<(Labels, Vec<WireChunk>)>> = Default::default();
    for (labels, cs) in raw {
        groups.entry(strip_labels(&labels, replica_labels)).or_default().push((labels, cs));
    }
    let mut out = Vec::with_capacity(groups.len());
    for (key, mut replicas) in groups {
        replicas.sort_by_cached_key(|(l, _)| {
            l.iter()
                .filter(|(n, _)| replica_labels.iter().any(|r| r == n))
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        });
        let replicas: Vec<Vec<&WireChunk>> = replicas.iter().map(|(_, cs)| cs.iter().collect()).collect();
        let chunks = downsampled_group(&key, &replicas, aggrs, counter, mint, maxt)?;
        out.push(ReadSeries { labels: key, chunks });
    }
    Ok(out)
}

/// One group's downsampled replicas (in replica order) as the chunks of the series `key`
/// (see [`combine_downsampled`]).
fn downsampled_group(
    key: &Labels,
    replicas: &[Vec<&WireChunk>],
    aggrs: &[thanos::Aggr],
    counter: bool,
    mint: i64,
    maxt: i64,
) -> Result<Vec<pb::Chunk>, ReadError> {
    let downsampled = |message| ReadError::Downsampled { series: key.to_string(), message };
    let mut decoded = Vec::with_capacity(replicas.len());
    for cs in replicas {
        let mut s = crate::downsampled::decode_series(cs, aggrs, mint, maxt).map_err(downsampled)?;
        if !s.windows(2).all(|w| w[0].0 < w[1].0) {
            s.sort_by_key(|p| p.0);
            s.dedup_by_key(|p| p.0);
        }
        if !s.is_empty() {
            decoded.push(s);
        }
    }
    let samples = match decoded.len() {
        0 => Vec::new(),
        1 => decoded.pop().unwrap_or_default(),
        _ => dedup_replicas(decoded, counter),
    };
    let samples = samples.into_iter().map(|(t, v)| match v {
        StoredValue::Float(f) => Sample::Float(t, f),
        StoredValue::Histogram(h) => Sample::FloatHistogram(t, Box::new((*h).clone())),
    });
    Ok(chunks::encode_samples(samples)
        .map_err(|source| ReadError::Chunk { series: key.to_string(), source })?
        .iter()
        .map(chunks::remote_read_chunk)
        .collect())
}

/// The answer to one query of a read request.
struct QueryAnswer {
    series: Vec<ReadSeries>,
    mint: i64,
    maxt: i64,
    /// Series are listed without samples (`func` = `series`).
    labels_only: bool,
}

fn text_error(code: StatusCode, message: String) -> Response {
    (code, message).into_response()
}

/// `/api/v1/read`: Prometheus remote read, as samples or streamed chunks. The response
/// type is the first of the request's accepted types (none: samples), as Prometheus
/// negotiates it. Deduplication, partial response and downsampling follow the `dedup`,
/// `partial_response` and `max_source_resolution` URL parameters (a remote-read URL may
/// carry them), else the flags; `auto` (and `--query.auto-downsampling`) read up to a fifth
/// of the hints' step, as a PromQL range query does. Each query's hints go to the stores
/// and cut its range (see [`ReadPlan`]).
///
/// Remote read has no warnings field: with partial response, endpoints that failed are
/// left out and each warning is logged (as Prometheus's read handler logs its storage's
/// warnings); without it, the request fails with 500 naming them.
pub async fn handler(
    State(st): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw = match snap::raw::decompress_len(&body) {
        Ok(n) if n <= 32 << 20 => match snap::raw::Decoder::new().decompress_vec(&body) {
            Ok(r) => r,
            Err(e) => return text_error(StatusCode::BAD_REQUEST, format!("snappy: {e}")),
        },
        Ok(n) => return text_error(StatusCode::BAD_REQUEST, format!("request too large: {n} bytes")),
        Err(e) => return text_error(StatusCode::BAD_REQUEST, format!("snappy: {e}")),
    };
    let req = match pb::ReadRequest::decode(raw.as_slice()) {
        Ok(r) => r,
        Err(e) => return text_error(StatusCode::BAD_REQUEST, format!("decoding read request: {e}")),
    };
    let params = Params::from(query, &HeaderMap::new(), &Method::GET, &[]);
    let opts = match st.query_options(&params, &headers) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let streamed = req
        .accepted_response_types
        .first()
        .is_some_and(|t| *t == pb::read_request::ResponseType::StreamedXorChunks as i32);
    let rl = if opts.dedup { opts.replica_labels.clone() } else { Vec::new() };
    // A bad value is refused whether or not the request has queries.
    if let Err(r) = st.max_source_resolution(&params, 0) {
        return r;
    }
    let mut queries = Vec::with_capacity(req.queries.len());
    for q in &req.queries {
        let mut matchers = Vec::with_capacity(q.matchers.len());
        for m in &q.matchers {
            let kind = match pb::label_matcher::Type::try_from(m.r#type) {
                Ok(pb::label_matcher::Type::Eq) => MatchType::Equal,
                Ok(pb::label_matcher::Type::Neq) => MatchType::NotEqual,
                Ok(pb::label_matcher::Type::Re) => MatchType::Regex,
                Ok(pb::label_matcher::Type::Nre) => MatchType::NotRegex,
                Err(_) => return text_error(StatusCode::BAD_REQUEST, format!("unknown matcher type {}", m.r#type)),
            };
            match Matcher::new(kind, m.name.clone(), m.value.clone()) {
                Ok(m) => matchers.push(m),
                Err(e) => return text_error(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
        let plan = ReadPlan::new(q);
        let resolution = match st.max_source_resolution(&params, plan.step_ms / 5) {
            Ok(r) => r,
            Err(r) => return r,
        };
        let downsampled = resolution > 0 && !plan.skip_chunks;
        let aggrs = if downsampled { crate::downsampled::aggrs_from_func(plan.func.as_deref()) } else { vec![] };
        let opts = QueryOptions {
            max_source_resolution: if downsampled { resolution } else { 0 },
            aggregates: aggrs.iter().map(|&a| a as i32).collect(),
            ..opts.clone()
        };
        queries.push(ReadQuery { matchers, plan, opts, downsampled, aggrs });
    }
    if streamed {
        return streamed_response(st, queries).await;
    }
    // Remote reads count against --query.max-concurrent as PromQL queries do.
    let Ok(_permit) = st.limiter.acquire().await else {
        return text_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string());
    };
    let mut selections = Vec::with_capacity(queries.len());
    let mut missing = Vec::new();
    for q in queries {
        let sel = if q.plan.mint > q.plan.maxt {
            Default::default()
        } else {
            let (p, hints) = (&q.plan, q.plan.query_hints.clone());
            match st.fanout.select_raw(&q.opts, &q.matchers, p.mint, p.maxt, p.skip_chunks, hints).await {
                Ok(sel) => sel,
                Err(e) => return text_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        };
        missing.extend(sel.warnings.iter().cloned());
        selections.push((q.plan, sel.series, q.downsampled, q.aggrs));
    }
    log_missing(&missing);
    // Deduplicating, decoding and encoding every sample is CPU work: off the async workers,
    // as PromQL evaluation.
    let built = tokio::task::spawn_blocking(move || read_response(selections, &rl)).await;
    built.unwrap_or_else(|e| text_error(StatusCode::INTERNAL_SERVER_ERROR, format!("remote read: {e}")))
}

/// Remote read has no warnings field: endpoints left out with partial response are logged,
/// one line per request, not per warning (a client polling with a dead endpoint would
/// otherwise log a line per selector per read).
fn log_missing(missing: &[String]) {
    if let Some(first) = missing.first() {
        tracing::warn!(warnings = missing.len(), first = %first,
            "remote read: partial response, endpoints' data is missing");
    }
}

/// One query of a read request, checked: its matchers, plan and the options it is read
/// with (downsampling per its hints).
struct ReadQuery {
    matchers: Vec<Matcher>,
    plan: ReadPlan,
    opts: QueryOptions,
    downsampled: bool,
    aggrs: Vec<thanos::Aggr>,
}

/// What the streamed answer's producer hands to the response body: frames, or the failure
/// that ends the answer (its status when nothing was sent yet).
type Piece = Result<Bytes, (StatusCode, String)>;

/// Frames are handed to the body in pieces of about this size (or less when the merge must
/// wait for an endpoint): fewer, larger writes than one per series.
const PIECE_BYTES: usize = 64 << 10;

/// A `STREAMED_XOR_CHUNKS` answer sent as it is made: the queries are read one after the
/// other, each over a merge of its endpoints' answers as they arrive ([`stream_query`]),
/// and each series' frames go out once its group of replicas is complete, so the querier
/// holds about one group and the endpoints' buffers, not the answer. A failure before the
/// first frame is answered with its status and text, as before; after it, the body is cut
/// (Prometheus's server does the same) and the failure logged.
async fn streamed_response(st: Arc<ApiState>, queries: Vec<ReadQuery>) -> Response {
    // Remote reads count against --query.max-concurrent as PromQL queries do. The slot is
    // awaited here, not on the blocking thread: waiters must not hold blocking threads that
    // queries already holding slots need to finish.
    let Ok(permit) = st.limiter.clone().acquire_owned().await else {
        return text_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string());
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(4);
    let deadline = queries.first().map(|q| q.opts.deadline);
    let handle = tokio::runtime::Handle::current();
    // The merge waits for the endpoints' series and for the client: a blocking thread.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let Some(deadline) = deadline else { return };
        let sink = FrameSink {
            tx,
            buf: Vec::new(),
            sent: false,
            deadline: tokio::time::Instant::from_std(deadline),
            handle: handle.clone(),
        };
        let sink = std::cell::RefCell::new(sink);
        // A panic must end the answer as a failure (a cut body once frames went out), not
        // as a clean end of stream that reads as a complete answer.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut missing = Vec::new();
            let mut result = Ok(());
            for (qi, q) in queries.iter().enumerate() {
                result = stream_query(&st, q, qi as i64, &sink, &mut missing);
                if result.is_err() {
                    break;
                }
            }
            log_missing(&missing);
            result
        }));
        let result = run.unwrap_or_else(|_| {
            Err((StatusCode::INTERNAL_SERVER_ERROR, "remote read: internal error while merging".to_string()))
        });
        let mut sink = sink.into_inner();
        match result.and_then(|()| sink.send()) {
            Ok(()) => {}
            Err((code, message)) => sink.fail(code, message),
        }
    });
    let content_type =
        HeaderValue::from_static("application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse");
    let body = match rx.recv().await {
        None => axum::body::Body::empty(),
        Some(Err((code, message))) => return text_error(code, message),
        Some(Ok(first)) => {
            let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
            let pieces = futures::StreamExt::map(rest, |p| p.map_err(|(_, message)| std::io::Error::other(message)));
            axum::body::Body::from_stream(futures::StreamExt::chain(futures::stream::iter([Ok(first)]), pieces))
        }
    };
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, content_type);
    r
}

/// The streamed answer's frames on their way to the response body.
struct FrameSink {
    tx: tokio::sync::mpsc::Sender<Piece>,
    /// Frames not handed on yet.
    buf: Vec<u8>,
    /// Some frames were handed on: a failure can no longer change the status.
    sent: bool,
    deadline: tokio::time::Instant,
    handle: tokio::runtime::Handle,
}

impl FrameSink {
    /// Hands the frames made so far to the body, waiting while the client is behind.
    fn send(&mut self) -> Result<(), (StatusCode, String)> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::take(&mut self.buf));
        self.sent = true;
        match self.handle.block_on(tokio::time::timeout_at(self.deadline, self.tx.send(Ok(piece)))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err((StatusCode::INTERNAL_SERVER_ERROR, "client closed the connection".into())),
            Err(_) => Err((StatusCode::INTERNAL_SERVER_ERROR, crate::fanout::FanoutError::Timeout.to_string())),
        }
    }

    /// Ends the answer with a failure: its status and text when nothing was sent yet, else
    /// a cut body and a log line.
    fn fail(self, code: StatusCode, message: String) {
        if self.sent {
            tracing::warn!(error = %message, "remote read: streamed answer cut after its first frames");
        }
        // The client may be gone already: nothing more to tell it then.
        let _ = self.handle.block_on(tokio::time::timeout_at(self.deadline, self.tx.send(Err((code, message)))));
    }
}

/// The merge's feed for a streamed answer: while it waits for an endpoint, the frames made
/// so far go out.
struct SinkFeed<'a> {
    feed: &'a mut crate::fanout::StreamFeed,
    sink: &'a std::cell::RefCell<FrameSink>,
}

impl Feed for SinkFeed<'_> {
    fn more(&mut self, sources: &mut [Source], src: usize) -> Result<bool, MergeError> {
        let SinkFeed { feed, sink } = self;
        feed.more(sources, src, &mut || sink.borrow_mut().send().map_err(|(_, m)| MergeError::Invalid(m)))
    }
    fn failed(&mut self, src: usize, message: String) -> Result<(), MergeError> {
        self.feed.failed(src, message)
    }
    fn streamed(&self) -> bool {
        true
    }
}

/// Streams the frames of query `qi` into `sink`: its endpoints' series merged as they
/// arrive, each group of replicas combined (see [`combine`], [`combine_downsampled`]) and
/// written as soon as it is complete. Endpoints left out with partial response are added to
/// `missing`.
fn stream_query(
    st: &ApiState,
    q: &ReadQuery,
    qi: i64,
    sink: &std::cell::RefCell<FrameSink>,
    missing: &mut Vec<String>,
) -> Result<(), (StatusCode, String)> {
    let failed = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
    let plan = &q.plan;
    if plan.mint > plan.maxt {
        return Ok(());
    }
    let hints = plan.query_hints.clone();
    let sel = st
        .fanout
        .select_streamed(&q.opts, &q.matchers, plan.mint, plan.maxt, plan.skip_chunks, hints)
        .map_err(|e| failed(e.to_string()))?;
    let StreamedSelection { mut sources, mut feed, replica_labels, limits } = sel;
    let counter = is_counter_func(plan.func.as_deref());
    let mut flush = |group: &[(usize, &SeriesView)], sources: &[Source]| -> Result<(), String> {
        let (key, replicas) = replicas_of(group, sources, &replica_labels);
        let chunks = if q.downsampled {
            downsampled_group(&key, &replicas, &q.aggrs, counter, plan.mint, plan.maxt).map_err(|e| e.to_string())?
        } else {
            dedup_group(&replicas, counter, plan.mint, plan.maxt)
                .map_err(|source| ReadError::Chunk { series: key.to_string(), source }.to_string())?
        };
        // As Prometheus: a series without chunks sends no frame.
        if chunks.is_empty() {
            return Ok(());
        }
        let mut sink = sink.borrow_mut();
        write_series(&key, &chunks, qi, MAX_BYTES_IN_FRAME, &mut sink.buf);
        if sink.buf.len() >= PIECE_BYTES {
            sink.send().map_err(|(_, m)| m)?;
        }
        Ok(())
    };
    let merged = {
        let mut sink_feed = SinkFeed { feed: &mut feed, sink };
        merge_streamed(&mut sources, &replica_labels, &limits, &mut sink_feed, &mut flush)
    };
    missing.append(&mut feed.warnings);
    merged.map_err(|e| failed(e.to_string()))
}

/// One query's selection as [`handler`] hands it to [`read_response`]: its plan, the
/// fan-out's series, whether they are downsampled and which aggregates were asked.
type Selection = (ReadPlan, Vec<RawSeries>, bool, Vec<thanos::Aggr>);

/// Combines each query's selection (replicas deduplicated, range cut, downsampled data
/// decoded as PromQL reads it) and encodes the sampled (`SAMPLES`) answer.
fn read_response(selections: Vec<Selection>, rl: &[String]) -> Response {
    let mut answers = Vec::with_capacity(selections.len());
    for (plan, series, downsampled, aggrs) in selections {
        let (mint, maxt) = (plan.mint, plan.maxt);
        let counter = is_counter_func(plan.func.as_deref());
        let combined = if downsampled {
            combine_downsampled(series, rl, &aggrs, counter, mint, maxt)
        } else {
            combine(series, rl, counter, mint, maxt)
        };
        match combined {
            Ok(series) => answers.push(QueryAnswer { series, mint, maxt, labels_only: plan.skip_chunks }),
            Err(e) => return text_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    let mut resp = pb::ReadResponse { results: Vec::with_capacity(answers.len()) };
    for a in &answers {
        let mut timeseries = Vec::with_capacity(a.series.len());
        // As Prometheus: every series with a chunk overlapping the range, even when none
        // of its samples is in it; for `series` hints every series, without samples.
        for s in a.series.iter().filter(|s| a.labels_only || !s.chunks.is_empty()) {
            match sampled(s, a.mint, a.maxt) {
                Ok(ts) => timeseries.push(ts),
                Err(e) => return text_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        resp.results.push(pb::QueryResult { timeseries });
    }
    let encoded = match snap::raw::Encoder::new().compress_vec(&resp.encode_to_vec()) {
        Ok(b) => b,
        Err(e) => return text_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut r = (StatusCode::OK, encoded).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
    r.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("snappy"));
    r
}

#[cfg(test)]
mod tests {
    use norn_model::{Histogram, Span};
    use norn_storeapi::thanos;

    use super::*;

    fn hist(i: u64) -> Histogram {
        Histogram {
            schema: 1,
            zero_threshold: 1e-128,
            zero_count: i,
            count: 3 * i,
            sum: i as f64 * 2.5,
            positive_spans: vec![Span { offset: -1, length: 2 }],
            positive_buckets: vec![i as i64, 0],
            ..Default::default()
        }
    }

    /// Samples as StoreAPI wire chunks, as an endpoint sends them.
    fn wire(samples: Vec<Sample>) -> Vec<WireChunk> {
        chunks::encode_samples(samples)
            .unwrap()
            .iter()
            .map(|m| WireChunk::from_proto(&chunks::aggr_chunk(m, 0)))
            .collect()
    }

    fn floats(ts: impl IntoIterator<Item = i64>) -> Vec<Sample> {
        ts.into_iter().map(|t| Sample::Float(t, t as f64 / 7.0)).collect()
    }

    fn hists(ts: impl IntoIterator<Item = i64>) -> Vec<Sample> {
        ts.into_iter().map(|t| Sample::Histogram(t, Box::new(hist(t as u64 / 1000 + 1)))).collect()
    }

    fn labels(name: &str, replica: &str) -> Labels {
        Labels::from_pairs([("__name__", name), ("replica", replica)])
    }

    fn decode(cs: &[pb::Chunk]) -> Vec<Sample> {
        let mut out = Vec::new();
        for c in cs {
            let enc = chunks::encoding_from_remote_read(c.r#type).unwrap();
            decode_into(c.min_time_ms, c.max_time_ms, enc, c.data.clone(), &mut out).unwrap();
        }
        out
    }

    /// One replica whose chunks overlap in time (an endpoint that merged two series differing
    /// only by a stripped replica label) goes out as one sample per timestamp, ascending;
    /// chunks that follow one another pass through untouched.
    #[test]
    fn single_replica_with_overlapping_chunks_is_made_monotonic() {
        let a = wire(floats((0..10).map(|i| i * 1000)));
        let b = wire(floats((0..10).map(|i| i * 1000 + 500)));
        let merged: Vec<&WireChunk> = a.iter().chain(&b).collect();
        let got = dedup_group(&[merged], false, i64::MIN, i64::MAX).unwrap();
        let ts: Vec<i64> = decode(&got).iter().map(Sample::timestamp).collect();
        let want: Vec<i64> = (0..20).map(|i| i * 500).collect();
        assert_eq!(ts, want);

        let first = wire(floats((0..5).map(|i| i * 1000)));
        let second = wire(floats((5..10).map(|i| i * 1000)));
        let apart: Vec<&WireChunk> = first.iter().chain(&second).collect();
        let got = dedup_group(std::slice::from_ref(&apart), false, i64::MIN, i64::MAX).unwrap();
        assert_eq!(got.len(), apart.len());
        for (c, w) in got.iter().zip(&apart) {
            assert_eq!(&c.data[..], &w.raw.as_ref().unwrap().data[..], "chunk re-encoded though nothing overlapped");
        }
    }

    /// Without dedup every chunk goes out as stored: same bytes and time range, the type in
    /// remote read's numbering (one more than the StoreAPI's).
    #[test]
    fn chunks_pass_through_byte_identical() {
        let f = wire(floats((0..300).map(|i| i * 1000)));
        let h = wire(hists((0..300).map(|i| i * 1000)));
        let raw = vec![(labels("f", "a"), f.clone()), (labels("h", "a"), h.clone())];
        let got = combine(raw, &[], false, i64::MIN, i64::MAX).unwrap();
        assert_eq!(got.len(), 2);
        for (s, (want, typ)) in got.iter().zip([(&f, pb::chunk::Encoding::Xor), (&h, pb::chunk::Encoding::Histogram)]) {
            assert_eq!(s.chunks.len(), want.len());
            for (c, w) in s.chunks.iter().zip(want) {
                let raw = w.raw.as_ref().unwrap();
                assert_eq!((c.min_time_ms, c.max_time_ms, &c.data[..]), (w.min_time, w.max_time, &raw.data[..]));
                assert_eq!(c.r#type, typ as i32, "{}", s.labels);
            }
        }
        assert_eq!(pb::chunk::Encoding::Histogram as i32, thanos::chunk::Encoding::Histogram as i32 + 1);
        // A chunk of an unknown StoreAPI encoding is an error naming the series.
        let mut bad = f[0].clone();
        bad.raw.as_mut().unwrap().encoding = 9;
        let e = combine(vec![(labels("f", "a"), vec![bad])], &[], false, 0, 1).unwrap_err();
        assert!(e.to_string().contains(r#"__name__="f""#), "{e}");
    }

    /// With dedup: replicas with identical chunks pass the first replica's chunks through;
    /// replicas that differ are deduplicated with the penalty rule and encoded again in their
    /// own type (integer histograms stay integer histograms).
    #[test]
    fn replicas_decoded_only_when_they_differ() {
        let rl = vec!["replica".to_string()];
        let full = wire(hists((0..200).map(|i| i * 1000)));
        let raw = vec![(labels("h", "a"), full.clone()), (labels("h", "b"), full.clone())];
        let got = combine(raw, &rl, false, i64::MIN, i64::MAX).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labels, Labels::from_pairs([("__name__", "h")]));
        assert_eq!(got[0].chunks, remote_chunks(&full).unwrap());
        // Replica a has a gap that b, scraped 1 ms later, fills: their chunks differ.
        let a: Vec<i64> = (0..200).filter(|i| !(50..80).contains(i)).map(|i| i * 1000).collect();
        let b: Vec<i64> = (0..200).map(|i| i * 1000 + 1).collect();
        let raw = vec![(labels("h", "b"), wire(hists(b.clone()))), (labels("h", "a"), wire(hists(a.clone())))];
        let got = combine(raw, &rl, false, i64::MIN, i64::MAX).unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].chunks.iter().all(|c| c.r#type == pb::chunk::Encoding::Histogram as i32));
        let samples = decode(&got[0].chunks);
        let times: Vec<i64> = samples.iter().map(Sample::timestamp).collect();
        // a (first in replica order) up to its gap, then b: b's first sample after a's last
        // (49 000) is skipped by the penalty (twice the 1 s gap), so b from 51 001 on.
        let want: Vec<i64> =
            a.iter().copied().filter(|t| *t < 50_000).chain(b.iter().copied().filter(|t| *t >= 51_001)).collect();
        assert_eq!(times, want);
        for s in &samples {
            let Sample::Histogram(t, h) = s else { panic!("{s:?}") };
            assert_eq!(h.count, hist(*t as u64 / 1000 + 1).count, "at {t}");
        }
        // Dedup starts at the range's start, as the querier's does: b reaching further back
        // does not make it the replica followed (which would lose a's samples across b's
        // gap to the penalty).
        let a2: Vec<i64> = (100..200).map(|i| i * 1000).collect();
        let b2: Vec<i64> = (0..200).filter(|i| !(150..160).contains(i)).map(|i| i * 1000).collect();
        let raw = vec![(labels("h", "a"), wire(hists(a2.clone()))), (labels("h", "b"), wire(hists(b2)))];
        let got = combine(raw, &rl, false, 100_000, 250_000).unwrap();
        assert_eq!(decode(&got[0].chunks).iter().map(Sample::timestamp).collect::<Vec<_>>(), a2);
        // Floats as XOR.
        let raw = vec![(labels("f", "a"), wire(floats(a.clone()))), (labels("f", "b"), wire(floats(b)))];
        let got = combine(raw, &rl, false, i64::MIN, i64::MAX).unwrap();
        assert!(got[0].chunks.iter().all(|c| c.r#type == pb::chunk::Encoding::Xor as i32));
        assert_eq!(decode(&got[0].chunks).len(), want.len());
    }

    /// Frames hold one series each and split a series once its chunks reach the limit;
    /// every frame is length-prefixed and checksummed.
    #[test]
    fn frames_split_at_the_size_limit() {
        let s1 = ReadSeries { labels: labels("f", "a"), chunks: remote_chunks(&wire(floats(0..12_000))).unwrap() };
        let s2 = ReadSeries { labels: labels("g", "a"), chunks: remote_chunks(&wire(floats(0..10))).unwrap() };
        let total: usize = s1.chunks.iter().map(Message::encoded_len).sum();
        let max = total / 3;
        let mut out = Vec::new();
        write_frames(&[s1.clone(), s2.clone()], 7, max, &mut out);
        let mut buf = &out[..];
        let mut frames = Vec::new();
        while !buf.is_empty() {
            let len = prost::encoding::decode_varint(&mut buf).unwrap() as usize;
            let crc = u32::from_be_bytes(buf[..4].try_into().unwrap());
            let msg = &buf[4..4 + len];
            assert_eq!(crc, norn_tsdb::encoding::crc32c(msg));
            frames.push(pb::ChunkedReadResponse::decode(msg).unwrap());
            buf = &buf[4 + len..];
        }
        assert!(frames.len() >= 4, "{}", frames.len());
        let mut chunks = Vec::new();
        for f in &frames {
            assert_eq!((f.query_index, f.chunked_series.len()), (7, 1));
            let cs = &f.chunked_series[0].chunks;
            let size: usize = cs.iter().map(Message::encoded_len).sum();
            assert!(size < max + cs.last().unwrap().encoded_len(), "{size} > {max}");
            if f.chunked_series[0].labels[0].value == "f" {
                chunks.extend(cs.iter().cloned());
            }
        }
        assert_eq!(chunks, s1.chunks);
        assert_eq!(frames.last().unwrap().chunked_series[0].chunks, s2.chunks);
    }

    /// Sampled answers: floats in `samples`, integer histograms with integer fields, only
    /// the query's range.
    #[test]
    fn sampled_keeps_integer_histograms() {
        let s = ReadSeries {
            labels: labels("h", "a"),
            chunks: remote_chunks(&wire(hists((0..300).map(|i| i * 1000)))).unwrap(),
        };
        let ts = sampled(&s, 10_000, 20_000).unwrap();
        assert!(ts.samples.is_empty());
        assert_eq!(ts.histograms.len(), 11);
        let h = &ts.histograms[0];
        assert_eq!(h.timestamp, 10_000);
        assert_eq!(h.count, Some(pb::histogram::Count::CountInt(33)));
        assert_eq!(h.zero_count, Some(pb::histogram::ZeroCount::ZeroCountInt(11)));
        assert_eq!(h.positive_deltas, vec![11, 0]);
        let f = ReadSeries { labels: labels("f", "a"), chunks: remote_chunks(&wire(floats(0..100))).unwrap() };
        let ts = sampled(&f, 5, 9).unwrap();
        assert_eq!(ts.samples.iter().map(|s| s.timestamp).collect::<Vec<_>>(), vec![5, 6, 7, 8, 9]);
    }

    /// Hints cut the range and become the StoreAPI's query hints; `series` reads labels
    /// only; without hints the query's range is read as it is.
    #[test]
    fn read_plans_from_hints() {
        let q = |hints: Option<pb::ReadHints>| pb::Query {
            start_timestamp_ms: 1_000,
            end_timestamp_ms: 9_000,
            matchers: vec![],
            hints,
        };
        let h = |func: &str, start_ms, end_ms| pb::ReadHints {
            step_ms: 60_000,
            func: func.into(),
            start_ms,
            end_ms,
            grouping: vec!["job".into()],
            by: true,
            range_ms: 300_000,
        };
        // Hints, then the range read, labels only, and the function.
        type Case<'a> = (Option<pb::ReadHints>, (i64, i64), bool, Option<&'a str>);
        let cases: Vec<Case<'_>> = vec![
            (None, (1_000, 9_000), false, None),
            (Some(h("rate", 2_000, 3_000)), (2_000, 3_000), false, Some("rate")),
            (Some(h("", 0, 20_000)), (1_000, 9_000), false, None),
            (Some(h("max_over_time", 0, 0)), (1_000, 9_000), false, Some("max_over_time")),
            (Some(h("series", 500, 5_000)), (1_000, 5_000), true, Some("series")),
            (Some(h("rate", 10_000, 20_000)), (10_000, 9_000), false, Some("rate")),
        ];
        for (hints, range, skip, func) in cases {
            let with = hints.is_some();
            let p = ReadPlan::new(&q(hints.clone()));
            assert_eq!(((p.mint, p.maxt), p.skip_chunks, p.func.as_deref()), (range, skip, func), "{hints:?}");
            assert_eq!(p.step_ms, if with { 60_000 } else { 0 });
            let Some(qh) = p.query_hints else {
                assert!(!with);
                continue;
            };
            assert_eq!(qh.step_millis, 60_000);
            assert_eq!(qh.func.map(|f| f.name).as_deref(), func);
            assert_eq!(qh.grouping, Some(thanos::Grouping { by: true, labels: vec!["job".into()] }));
            assert_eq!(qh.range, Some(thanos::Range { millis: 300_000 }));
        }
    }

    /// Downsampled reads: each replica's aggregates read as the function needs them
    /// (here the max of each window, raw data where there is no window), replicas
    /// deduplicated, encoded as XOR again.
    #[test]
    fn downsampled_series_read_per_function() {
        use norn_tsdb::chunkenc::XorChunk;
        let xor = |s: &[(i64, f64)]| {
            let mut c = XorChunk::new();
            for &(t, v) in s {
                c.append(t, v);
            }
            Some(crate::seriesview::RawChunk { encoding: 0, data: bytes::Bytes::from(c.into_bytes()), hash: 0 })
        };
        // 5m windows at 300 000 and 600 000: count, sum, min, max, counter; then raw.
        let window = |t: i64, max: f64| WireChunk {
            min_time: t,
            max_time: t,
            raw: None,
            aggrs: [xor(&[(t, 2.0)]), xor(&[(t, max + 1.0)]), xor(&[(t, 1.0)]), xor(&[(t, max)]), None],
        };
        let raw = WireChunk {
            min_time: 900_000,
            max_time: 930_000,
            raw: xor(&[(900_000, 4.0), (930_000, 5.0)]),
            aggrs: Default::default(),
        };
        let a = vec![window(300_000, 7.0), window(600_000, 8.0), raw.clone()];
        let b = vec![window(300_000, 7.0), window(600_000, 8.0)];
        let rl = vec!["replica".to_string()];
        let series = vec![(labels("g", "a"), a), (labels("g", "b"), b)];
        let got = combine_downsampled(series.clone(), &rl, &[thanos::Aggr::Max], false, 0, i64::MAX).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labels, Labels::from_pairs([("__name__", "g")]));
        assert!(got[0].chunks.iter().all(|c| c.r#type == pb::chunk::Encoding::Xor as i32));
        let vals: Vec<(i64, f64)> = decode(&got[0].chunks)
            .into_iter()
            .map(|s| match s {
                Sample::Float(t, v) => (t, v),
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(vals, vec![(300_000, 7.0), (600_000, 8.0), (900_000, 4.0), (930_000, 5.0)]);
        // Averages for a plain selection, in the range only; no dedup keeps both replicas.
        let got =
            combine_downsampled(series, &[], &[thanos::Aggr::Count, thanos::Aggr::Sum], false, 0, 700_000).unwrap();
        assert_eq!(got.len(), 2);
        for s in &got {
            let ts: Vec<i64> = decode(&s.chunks).iter().map(Sample::timestamp).collect();
            assert_eq!(ts, vec![300_000, 600_000], "{}", s.labels);
        }
        // A replica without the aggregate asked is an error naming the series.
        let bare = vec![(
            labels("g", "a"),
            vec![WireChunk { min_time: 0, max_time: 0, raw: None, aggrs: Default::default() }],
        )];
        let e = combine_downsampled(bare, &rl, &[thanos::Aggr::Min], false, 0, 1).unwrap_err();
        assert!(e.to_string().contains(r#"__name__="g""#), "{e}");
    }

    /// Raw replicas that differ, feeding a counter function: a switch to the replica with
    /// the lower counter raises it, as the querier's counter-aware dedup does, so there is
    /// no false reset; without the hint the stored values go out as they are.
    #[test]
    fn counter_replicas_deduplicated_as_counters() {
        let rl = vec!["replica".to_string()];
        let a: Vec<Sample> =
            (0..200).filter(|i| !(50..80).contains(i)).map(|i| Sample::Float(i * 1000, i as f64 + 100.0)).collect();
        let b: Vec<Sample> = (0..200).map(|i| Sample::Float(i * 1000 + 1, i as f64)).collect();
        let raw = vec![(labels("c", "a"), wire(a)), (labels("c", "b"), wire(b))];
        let values = |counter: bool| -> Vec<f64> {
            let got = combine(raw.clone(), &rl, counter, i64::MIN, i64::MAX).unwrap();
            decode(&got[0].chunks).into_iter().map(|s| if let Sample::Float(_, v) = s { v } else { f64::NAN }).collect()
        };
        let plain = values(false);
        assert!(plain.windows(2).any(|w| w[1] < w[0]), "the stored values reset at the switch");
        let counter = values(true);
        assert_eq!(counter.len(), plain.len());
        assert!(counter.windows(2).all(|w| w[1] >= w[0]), "{counter:?}");
    }
}
