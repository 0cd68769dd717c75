//! Streamed remote read (`STREAMED_XOR_CHUNKS`) over in-process replicas really streams: the
//! querier sends the first frames while an endpoint still holds back its last series (an
//! answer built whole first could not be sent before that series came), the frames carry
//! exactly the series of the sampled (`SAMPLES`) answer to the same request, query by query,
//! and `--query.max-samples` is counted while streaming: refused with 500 before the first
//! frame, a cut body after it; an endpoint failing after the first frame is left out with
//! partial response, and cuts the body without.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{FakeStore, SeriesStream, serve_store, start_querier};
use norn_model::Labels;
use norn_storeapi::prometheus as pb;
use norn_storeapi::thanos::info::info_server::Info;
use norn_storeapi::thanos::info::{InfoRequest, InfoResponse};
use norn_storeapi::thanos::store_server::Store;
use norn_storeapi::thanos::{
    LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse, SeriesRequest,
};
use norn_tsdb::chunkenc::{Chunk, Encoding, Sample};
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const T0: i64 = 1_700_000_000_000;
const SERIES: usize = 300;
const SAMPLES: i64 = 240;
const END: i64 = T0 + SAMPLES * 15_000;

/// Series `m{instance="hNNN"}`; replica `r` scrapes `r` ms later, and replica 1 misses a
/// stretch of every third series (so those groups are deduplicated sample by sample).
fn data(replica: i64) -> common::Data {
    (0..SERIES)
        .map(|i| {
            let l = Labels::from_pairs([("__name__", "m"), ("instance", &format!("h{i:03}"))]);
            let samples = (0..SAMPLES)
                .filter(|k| !(replica == 1 && i % 3 == 0 && (100..130).contains(k)))
                .map(|k| (T0 + k * 15_000 + replica, (k * (i as i64 + 1)) as f64))
                .collect();
            (l, samples)
        })
        .collect()
}

/// A store whose first `Series` answer holds back its last series until `release` is
/// notified (then sends it, or with `fail` fails instead); later answers are sent whole.
#[derive(Clone)]
struct HoldingStore {
    inner: FakeStore,
    release: Arc<Notify>,
    held: Arc<AtomicBool>,
    fail: bool,
}

#[tonic::async_trait]
impl Store for HoldingStore {
    type SeriesStream = SeriesStream;
    async fn series(&self, req: Request<SeriesRequest>) -> Result<Response<SeriesStream>, Status> {
        let mut all: Vec<_> = {
            let s = self.inner.series(req).await?.into_inner();
            futures::StreamExt::collect(s).await
        };
        if self.held.swap(true, Ordering::SeqCst) || all.is_empty() {
            return Ok(Response::new(Box::pin(tokio_stream::iter(all))));
        }
        let last = all.pop();
        let (tx, rx) = tokio::sync::mpsc::channel(all.len() + 1);
        let (release, fail) = (self.release.clone(), self.fail);
        tokio::spawn(async move {
            for m in all {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
            release.notified().await;
            let last = if fail { Some(Err(Status::unavailable("store broke mid-answer"))) } else { last };
            if let Some(m) = last {
                let _ = tx.send(m).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
    async fn label_names(&self, req: Request<LabelNamesRequest>) -> Result<Response<LabelNamesResponse>, Status> {
        self.inner.label_names(req).await
    }
    async fn label_values(&self, req: Request<LabelValuesRequest>) -> Result<Response<LabelValuesResponse>, Status> {
        self.inner.label_values(req).await
    }
}

#[tonic::async_trait]
impl Info for HoldingStore {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.inner.info(req).await
    }
}

/// Two replicas, both stripping the replica label; the first holds back its last series.
struct Setup {
    querier: common::Querier,
    release: Arc<Notify>,
    stops: Vec<CancellationToken>,
}

async fn setup(max_samples: usize) -> Setup {
    setup_with(max_samples, true).await
}

/// [`setup`], the replicas stripping the replica label or not.
async fn setup_with(max_samples: usize, strip: bool) -> Setup {
    setup_opts(max_samples, strip, false).await
}

/// [`setup_with`]; with `fail` the first replica fails where it held back its last series,
/// and both replicas hold the same samples.
async fn setup_opts(max_samples: usize, strip: bool, fail: bool) -> Setup {
    let release = Arc::new(Notify::new());
    let mut stops = Vec::new();
    let mut addrs = Vec::new();
    for r in 0..2 {
        let stop = CancellationToken::new();
        let samples = Arc::new(data(if fail { 0 } else { r }));
        let mut inner = FakeStore::new(Labels::from_pairs([("replica", format!("r{r}"))]), samples);
        inner.strip = strip;
        let addr = if r == 0 {
            let held = Arc::new(AtomicBool::new(false));
            let held = HoldingStore { inner, release: release.clone(), held, fail };
            serve_store(held, stop.clone()).await
        } else {
            serve_store(inner, stop.clone()).await
        };
        addrs.push(addr.to_string());
        stops.push(stop);
    }
    let args = norn_query::Args {
        endpoints: addrs,
        replica_labels: vec!["replica".into()],
        endpoint_refresh_interval: Duration::from_millis(200),
        endpoint_info_timeout: Duration::from_millis(500),
        max_samples,
        ..Default::default()
    };
    Setup { querier: start_querier(args).await, release, stops }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.querier.stop.cancel();
        for s in &self.stops {
            s.cancel();
        }
    }
}

fn query(matchers: &[(&str, &str)]) -> pb::Query {
    pb::Query {
        start_timestamp_ms: T0,
        end_timestamp_ms: END,
        matchers: matchers
            .iter()
            .map(|(n, v)| pb::LabelMatcher { r#type: 0, name: (*n).into(), value: (*v).into() })
            .collect(),
        hints: None,
    }
}

/// Two queries: all of `m`, then one series of it.
fn request(streamed: bool) -> Vec<u8> {
    let t = if streamed {
        pb::read_request::ResponseType::StreamedXorChunks
    } else {
        pb::read_request::ResponseType::Samples
    };
    let req = pb::ReadRequest {
        queries: vec![query(&[("__name__", "m")]), query(&[("__name__", "m"), ("instance", "h007")])],
        accepted_response_types: vec![t as i32],
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap()
}

async fn post(s: &Setup, body: Vec<u8>) -> reqwest::Response {
    post_to(s, "/api/v1/read", body).await
}

async fn post_to(s: &Setup, path: &str, body: Vec<u8>) -> reqwest::Response {
    let send = reqwest::Client::new()
        .post(format!("http://{}{path}", s.querier.http))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .body(body)
        .send();
    // Bounded: an answer built whole would wait here for the held series for ever.
    tokio::time::timeout(Duration::from_secs(60), send).await.expect("no answer while a series is held back").unwrap()
}

/// The next whole frame at the front of `buf`, removed from it (`None`: not all there yet).
fn take_frame(buf: &mut Vec<u8>) -> Option<pb::ChunkedReadResponse> {
    let mut b = &buf[..];
    let len = prost::encoding::decode_varint(&mut b).ok()? as usize;
    let head = buf.len() - b.len();
    if b.len() < 4 + len {
        return None;
    }
    let crc = u32::from_be_bytes(b[..4].try_into().unwrap());
    let msg = &b[4..4 + len];
    assert_eq!(crc, norn_tsdb::encoding::crc32c(msg), "frame checksum");
    let frame = pb::ChunkedReadResponse::decode(msg).unwrap();
    buf.drain(..head + 4 + len);
    Some(frame)
}

/// Samples by query and series.
type Answer = BTreeMap<(i64, String), Vec<(i64, f64)>>;

fn labels_of(ls: &[pb::Label]) -> String {
    Labels::from_pairs(ls.iter().map(|l| (l.name.as_str(), l.value.as_str()))).to_string()
}

fn add_frame(f: &pb::ChunkedReadResponse, out: &mut Answer) {
    assert_eq!(f.chunked_series.len(), 1, "one series per frame");
    let s = &f.chunked_series[0];
    let samples = out.entry((f.query_index, labels_of(&s.labels))).or_default();
    for c in &s.chunks {
        assert_eq!(c.r#type, pb::chunk::Encoding::Xor as i32);
        let chunk = Chunk::new(Encoding::Xor, c.data.clone());
        for x in chunk.iter().unwrap() {
            let Sample::Float(t, v) = x else { panic!("{x:?}") };
            if (T0..=END).contains(&t) {
                samples.push((t, v));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_go_out_before_the_answer_is_complete() {
    let s = setup(0).await;
    let mut resp = post(&s, request(true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse");
    // The first frame comes while the first replica still holds back its last series.
    let mut buf = Vec::new();
    let first = loop {
        if let Some(f) = take_frame(&mut buf) {
            break f;
        }
        let more = tokio::time::timeout(Duration::from_secs(60), resp.chunk()).await.expect("first frame");
        buf.extend_from_slice(&more.unwrap().expect("body ended before a frame"));
    };
    assert_eq!(first.query_index, 0);
    let held_back = labels_of(&first.chunked_series[0].labels);
    s.release.notify_one();
    let mut streamed = Answer::new();
    add_frame(&first, &mut streamed);
    let mut order = vec![(first.query_index, held_back)];
    while let Some(more) = resp.chunk().await.unwrap() {
        buf.extend_from_slice(&more);
        while let Some(f) = take_frame(&mut buf) {
            order.push((f.query_index, labels_of(&f.chunked_series[0].labels)));
            add_frame(&f, &mut streamed);
        }
    }
    assert!(buf.is_empty(), "{} bytes after the last frame", buf.len());
    // Queries one after the other, each in label order (Prometheus's), replica labels gone.
    let mut sorted = order.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(order, sorted);
    assert_eq!(streamed.len(), SERIES + 1);
    assert!(streamed.keys().all(|(_, l)| !l.contains("replica")));

    // Exactly the series and samples of the sampled answer to the same request.
    let want = sampled(&s, "/api/v1/read").await;
    assert_same(&streamed, &want);
    // Deduplicated: one sample per scrape (replica 0 lacks nothing: all of its samples).
    assert!(want.values().all(|v| v.len() == SAMPLES as usize));
}

/// The sampled answer to [`request`] at `path`.
async fn sampled(s: &Setup, path: &str) -> Answer {
    let resp = post_to(s, path, request(false)).await;
    assert_eq!(resp.status(), 200);
    let raw = snap::raw::Decoder::new().decompress_vec(&resp.bytes().await.unwrap()).unwrap();
    let sampled = pb::ReadResponse::decode(raw.as_slice()).unwrap();
    let mut want = Answer::new();
    for (qi, r) in sampled.results.iter().enumerate() {
        for ts in &r.timeseries {
            let samples = ts.samples.iter().map(|x| (x.timestamp, x.value)).collect();
            want.insert((qi as i64, labels_of(&ts.labels)), samples);
        }
    }
    want
}

fn assert_same(streamed: &Answer, want: &Answer) {
    assert_eq!(streamed.len(), want.len());
    for (k, v) in want {
        assert_eq!(streamed.get(k), Some(v), "{k:?}");
    }
}

/// Without stripping (the replicas are received whole and sorted first) and without dedup
/// (every replica its own series), the frames still carry the sampled answer's series.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_matches_sampled_without_stripping_or_dedup() {
    for (strip, dedup) in [(false, true), (true, false), (false, false)] {
        let s = setup_with(0, strip).await;
        // Nothing held back here.
        s.release.notify_one();
        let path = format!("/api/v1/read?dedup={dedup}");
        let mut resp = post_to(&s, &path, request(true)).await;
        assert_eq!(resp.status(), 200);
        let (mut buf, mut streamed) = (Vec::new(), Answer::new());
        while let Some(more) = resp.chunk().await.unwrap() {
            buf.extend_from_slice(&more);
            while let Some(f) = take_frame(&mut buf) {
                add_frame(&f, &mut streamed);
            }
        }
        assert!(buf.is_empty());
        let want = sampled(&s, &path).await;
        let replicas = if dedup { 1 } else { 2 };
        assert_eq!(want.len(), replicas * (SERIES + 1), "strip {strip}, dedup {dedup}");
        assert_same(&streamed, &want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sample_limit_counted_while_streaming() {
    // Every series' samples, both replicas (each series is two chunks of 120).
    let total = SAMPLES as usize * SERIES + data(1).iter().map(|(_, s)| s.len()).sum::<usize>();
    // Far too few: refused before the first frame, with the status and text as before.
    let s = setup(10).await;
    s.release.notify_one();
    let resp = post(&s, request(true)).await;
    assert_eq!(resp.status(), 500);
    let text = resp.text().await.unwrap();
    assert!(text.contains("too many samples"), "{text}");
    drop(s);
    // The querier allows three times the flag (one copy per replica). Short of the first
    // query's last series (240 samples per replica): the held-back series passes the limit
    // after frames went out, and the body is cut.
    let flag = (total - 1) / 3;
    assert!(3 * flag >= total - 240);
    let s = setup(flag).await;
    let mut resp = post(&s, request(true)).await;
    assert_eq!(resp.status(), 200);
    let mut buf = Vec::new();
    first_frame(&mut resp, &mut buf).await;
    s.release.notify_one();
    let mut frames = 0;
    let end = loop {
        match resp.chunk().await {
            Ok(Some(more)) => buf.extend_from_slice(&more),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
        while take_frame(&mut buf).is_some() {
            frames += 1;
        }
    };
    assert!(end.is_err(), "the body ended normally after {frames} more frames");
    assert!(frames < SERIES, "{frames}");
}

/// The body up to its first whole frame (kept in `buf`).
async fn first_frame(resp: &mut reqwest::Response, buf: &mut Vec<u8>) {
    while take_frame(&mut buf.clone()).is_none() {
        let more = tokio::time::timeout(Duration::from_secs(60), resp.chunk()).await.expect("first frame");
        buf.extend_from_slice(&more.unwrap().expect("body ended before a frame"));
    }
}

/// An endpoint failing after frames went out: with partial response it is left out from
/// there (its replica, holding the same samples, stands in: the answer is whole and equals
/// the sampled one); without, the body is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoint_failing_mid_stream() {
    for partial in [true, false] {
        let s = setup_opts(0, true, true).await;
        let path = format!("/api/v1/read?partial_response={partial}");
        let mut resp = post_to(&s, &path, request(true)).await;
        assert_eq!(resp.status(), 200);
        let mut buf = Vec::new();
        first_frame(&mut resp, &mut buf).await;
        s.release.notify_one();
        let mut streamed = Answer::new();
        let end = loop {
            while let Some(f) = take_frame(&mut buf) {
                add_frame(&f, &mut streamed);
            }
            match resp.chunk().await {
                Ok(Some(more)) => buf.extend_from_slice(&more),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if partial {
            assert!(end.is_ok(), "{end:?}");
            assert!(buf.is_empty());
            assert_eq!(streamed.len(), SERIES + 1);
            assert_same(&streamed, &sampled(&s, &path).await);
        } else {
            assert!(end.is_err(), "the body ended normally with {} series", streamed.len());
        }
    }
}
