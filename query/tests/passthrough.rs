//! The querier's own StoreAPI passes its endpoints' chunks through (as Thanos's proxy store):
//! two in-process endpoints serving fixed chunks under a querier; Series through the
//! querier's gRPC carries exactly their chunk bytes, encodings and hashes (an integer
//! histogram chunk stays `HISTOGRAM`), series with equal labels from both endpoints (or split
//! over frames) become one with chunks sorted by time range and identical ones dropped;
//! the time range, `skip_chunks`, the tenant header, query hints and partial response
//! (warn or abort) behave as for any store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::start_querier;
use norn_model::{Histogram, Labels, Span};
use norn_storeapi::thanos::info::info_server::Info;
use norn_storeapi::thanos::info::{InfoRequest, InfoResponse, StoreInfo};
use norn_storeapi::thanos::store_client::StoreClient;
use norn_storeapi::thanos::store_server::Store;
use norn_storeapi::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse, PartialResponseStrategy,
    SeriesRequest, SeriesResponse, ZLabelSet, series_response,
};
use norn_tsdb::chunkenc::Sample;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// What an endpoint was asked: tenant header and query hints' function.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

/// A StoreAPI endpoint sending fixed series frames as given (chunks filtered by time range
/// and `skip_chunks` as a store does), or failing every Series call.
#[derive(Clone)]
struct RawStore {
    ext: Labels,
    frames: Arc<Vec<thanos::Series>>,
    fail: bool,
    seen: Seen,
}

use common::SeriesStream;

#[tonic::async_trait]
impl Store for RawStore {
    type SeriesStream = SeriesStream;
    async fn series(&self, req: Request<SeriesRequest>) -> Result<Response<SeriesStream>, Status> {
        let tenant = req.metadata().get("thanos-tenant").and_then(|v| v.to_str().ok()).map(str::to_string);
        let r = req.into_inner();
        let func = r.query_hints.as_ref().and_then(|h| h.func.as_ref()).map(|f| f.name.clone());
        self.seen.lock().push((tenant, func));
        if self.fail {
            return Err(Status::unavailable("disk on fire"));
        }
        let ms =
            norn_storeapi::matchers_from_proto(&r.matchers).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut out = Vec::new();
        for s in self.frames.iter() {
            let get = |n: &str| s.labels.iter().find(|l| l.name == n).map_or("", |l| l.value.as_str());
            if !ms.iter().all(|m| m.matches(get(&m.name))) {
                continue;
            }
            let mut s = s.clone();
            s.chunks.retain(|c| c.max_time >= r.min_time && c.min_time <= r.max_time);
            if s.chunks.is_empty() {
                continue;
            }
            if r.skip_chunks {
                s.chunks.clear();
            }
            out.push(Ok(SeriesResponse { result: Some(series_response::Result::Series(s)) }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }
    async fn label_names(&self, _req: Request<LabelNamesRequest>) -> Result<Response<LabelNamesResponse>, Status> {
        Ok(Response::new(LabelNamesResponse::default()))
    }
    async fn label_values(&self, _req: Request<LabelValuesRequest>) -> Result<Response<LabelValuesResponse>, Status> {
        Ok(Response::new(LabelValuesResponse::default()))
    }
}

#[tonic::async_trait]
impl Info for RawStore {
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            label_sets: vec![ZLabelSet { labels: norn_storeapi::labels_to_proto(&self.ext) }],
            component_type: "receive".into(),
            store: Some(StoreInfo { min_time: 0, max_time: i64::MAX, ..Default::default() }),
            ..Default::default()
        }))
    }
}

async fn serve(store: RawStore, stop: CancellationToken) -> String {
    common::serve_store(store, stop).await.to_string()
}

/// Chunks of `samples` as a store cuts them (120 samples each), with distinct hashes so
/// that passing them on unchanged shows.
fn chunks(samples: Vec<Sample>, hash: u64) -> Vec<thanos::AggrChunk> {
    let metas = norn_storeapi::chunks::encode_samples(samples).unwrap();
    metas.iter().enumerate().map(|(i, m)| norn_storeapi::chunks::aggr_chunk(m, hash + i as u64)).collect()
}

fn floats(from: i64, to: i64) -> Vec<Sample> {
    (from..to).map(|t| Sample::Float(t * 1000, t as f64)).collect()
}

fn histograms(from: i64, to: i64) -> Vec<Sample> {
    (from..to)
        .map(|t| {
            let h = Histogram {
                schema: 1,
                zero_threshold: 0.001,
                zero_count: 1,
                count: 3 + t as u64,
                sum: t as f64,
                positive_spans: vec![Span { offset: 0, length: 2 }],
                positive_buckets: vec![1, 1 + t],
                ..Default::default()
            };
            Sample::Histogram(t * 1000, Box::new(h))
        })
        .collect()
}

fn series(name: &str, chunks: Vec<thanos::AggrChunk>) -> thanos::Series {
    thanos::Series { labels: norn_storeapi::labels_to_proto(&Labels::from_pairs([("__name__", name)])), chunks }
}

/// Series of the querier's Store/Series (warnings apart), or the error status.
async fn upper(
    grpc: &str,
    mint: i64,
    maxt: i64,
    skip_chunks: bool,
    strategy: PartialResponseStrategy,
) -> Result<(Vec<thanos::Series>, Vec<String>), Status> {
    upper_frames(grpc, mint, maxt, skip_chunks, strategy, 0).await.map(|(s, w, _)| (s, w))
}

/// [`upper`] asking for `batch` series per frame; also the number of series frames.
async fn upper_frames(
    grpc: &str,
    mint: i64,
    maxt: i64,
    skip_chunks: bool,
    strategy: PartialResponseStrategy,
    batch: i64,
) -> Result<(Vec<thanos::Series>, Vec<String>, usize), Status> {
    let mut c = StoreClient::connect(format!("http://{grpc}")).await.unwrap();
    let mut req = Request::new(SeriesRequest {
        min_time: mint,
        max_time: maxt,
        matchers: vec![thanos::LabelMatcher { r#type: 2, name: "__name__".into(), value: ".+".into() }],
        skip_chunks,
        partial_response_strategy: strategy as i32,
        response_batch_size: batch,
        query_hints: Some(thanos::QueryHints {
            func: Some(thanos::Func { name: "rate".into() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.metadata_mut().insert("thanos-tenant", "team-a".parse().unwrap());
    let mut stream = c.series(req).await?.into_inner();
    let (mut series, mut warnings, mut frames) = (Vec::new(), Vec::new(), 0);
    while let Some(m) = stream.message().await? {
        match m.result {
            Some(series_response::Result::Series(s)) => {
                assert!(batch <= 1, "a lone series frame when {batch} per frame were asked for");
                series.push(s);
                frames += 1;
            }
            Some(series_response::Result::Batch(b)) => {
                assert!(batch > 1 && !b.series.is_empty() && b.series.len() <= batch as usize, "{b:?}");
                series.extend(b.series);
                frames += 1;
            }
            Some(series_response::Result::Warning(w)) => warnings.push(w),
            _ => {}
        }
    }
    Ok((series, warnings, frames))
}

fn name_of(s: &thanos::Series) -> &str {
    s.labels.iter().find(|l| l.name == "__name__").map_or("", |l| l.value.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stacked_store_api_passes_chunks_through() {
    // "m": A has [0, 120) and [120, 240), B has [120, 240) (the same bytes) and [240, 300).
    let m_a = chunks(floats(0, 240), 100);
    let m_b = chunks(floats(120, 300), 200);
    assert_eq!(m_a[1].raw.as_ref().unwrap().data, m_b[0].raw.as_ref().unwrap().data, "test data: shared chunk");
    // "h": integer histograms, one chunk from each endpoint, B's earlier in time than A's.
    let h_a = chunks(histograms(200, 250), 300);
    let h_b = chunks(histograms(0, 50), 400);
    assert_eq!(h_a[0].raw.as_ref().unwrap().r#type, thanos::chunk::Encoding::Histogram as i32);
    // "n": only on B, split over two frames, the later chunk first.
    let n = chunks(floats(0, 200), 500);
    let frames_a = vec![series("h", h_a.clone()), series("m", m_a.clone())];
    let frames_b = vec![
        series("h", h_b.clone()),
        series("m", m_b.clone()),
        series("n", vec![n[1].clone()]),
        series("n", vec![n[0].clone()]),
    ];
    let seen: Seen = Default::default();
    let store = |site: &str, frames: Vec<thanos::Series>, fail: bool| RawStore {
        ext: Labels::from_pairs([("site", site)]),
        frames: Arc::new(frames),
        fail,
        seen: seen.clone(),
    };
    let stop = CancellationToken::new();
    let a = serve(store("a", frames_a, false), stop.clone()).await;
    let b = serve(store("b", frames_b, false), stop.clone()).await;
    let bad = serve(store("c", vec![], true), stop.clone()).await;
    let args = |endpoints: Vec<String>| norn_query::Args {
        endpoints,
        replica_labels: vec!["site".into()],
        endpoint_refresh_interval: Duration::from_millis(200),
        // An Info probe that times out marks its store down until the next round
        // (queries then miss its data): generous, for a loaded machine.
        endpoint_info_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    // Of identical chunks, the first endpoint's stays: the querier orders endpoints by address.
    let shared = if a < b { m_a[1].clone() } else { m_b[0].clone() };
    let q = start_querier(args(vec![a.clone(), b.clone()])).await;
    let grpc = q.grpc.to_string();

    let (got, warnings) = upper(&grpc, 0, i64::MAX, false, PartialResponseStrategy::Abort).await.unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let names: Vec<&str> = got.iter().map(name_of).collect();
    assert_eq!(names, ["h", "m", "n"]);
    // Exactly the endpoints' chunks (bytes, encodings, hashes), sorted by time, the copy dropped.
    assert_eq!(got[0].chunks, [h_b[0].clone(), h_a[0].clone()]);
    assert!(got[0].chunks.iter().all(|c| c.raw.as_ref().unwrap().r#type == thanos::chunk::Encoding::Histogram as i32));
    assert_eq!(got[1].chunks, [m_a[0].clone(), shared.clone(), m_b[1].clone()]);
    assert_eq!(got[2].chunks, n);
    // No replica dedup: the labels are the endpoints' (none of them has "site" on its series).
    assert_eq!(got[1].labels, series("m", vec![]).labels);
    // The tenant and the function reached both endpoints.
    {
        let seen = seen.lock();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.iter().all(|s| *s == (Some("team-a".into()), Some("rate".into()))), "{seen:?}");
    }

    // The same in frames of two series (as a querier above asks for batches), and of many.
    for (batch, frames) in [(2, 2), (1024, 1)] {
        let (b, _, n) = upper_frames(&grpc, 0, i64::MAX, false, PartialResponseStrategy::Abort, batch).await.unwrap();
        assert_eq!(b, got, "{batch} per frame");
        assert_eq!(n, frames, "{batch} per frame");
    }

    // Chunks outside the range are dropped, series left without chunks too.
    let (got, _) = upper(&grpc, 150_000, 260_000, false, PartialResponseStrategy::Abort).await.unwrap();
    let names: Vec<&str> = got.iter().map(name_of).collect();
    assert_eq!(names, ["h", "m", "n"]);
    assert_eq!(got[0].chunks, h_a);
    assert_eq!(got[1].chunks, [shared.clone(), m_b[1].clone()]);
    assert_eq!(got[2].chunks, [n[1].clone()]);
    let (got, _) = upper(&grpc, 260_000, 290_000, false, PartialResponseStrategy::Abort).await.unwrap();
    assert_eq!(got.iter().map(name_of).collect::<Vec<_>>(), ["m"]);
    assert_eq!(got[0].chunks, [m_b[1].clone()]);

    // skip_chunks: labels only, each series once.
    let (got, _) = upper(&grpc, 0, i64::MAX, true, PartialResponseStrategy::Abort).await.unwrap();
    assert_eq!(got.iter().map(name_of).collect::<Vec<_>>(), ["h", "m", "n"]);
    assert!(got.iter().all(|s| s.chunks.is_empty()), "{got:?}");
    q.stop.cancel();

    // A failing endpoint: a warning with partial response, an error without.
    let q = start_querier(args(vec![a, b, bad.clone()])).await;
    let grpc = q.grpc.to_string();
    let (got, warnings) = upper(&grpc, 0, i64::MAX, false, PartialResponseStrategy::Warn).await.unwrap();
    assert_eq!(got.iter().map(name_of).collect::<Vec<_>>(), ["h", "m", "n"]);
    assert_eq!(got[1].chunks, [m_a[0].clone(), shared.clone(), m_b[1].clone()]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains(&bad) && warnings[0].contains("disk on fire"), "{warnings:?}");
    let err = upper(&grpc, 0, i64::MAX, false, PartialResponseStrategy::Abort).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&bad) && err.message().contains("disk on fire"), "{err:?}");
    q.stop.cancel();
    stop.cancel();
}
