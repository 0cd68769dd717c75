//! `--query.max-samples` over three in-process replicas: replicas whose series are copies of
//! the first endpoint's (dropped unread in the merge) count as much as the first's, so the
//! limit refuses exactly what counting every endpoint's series refuses, with or without
//! replica labels stripped by the endpoints; and endpoints sending chunks that announce
//! no samples are stopped by the received-bytes bound instead of being held whole.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{FakeStore, enc, serve_store, start_querier};
use norn_model::Labels;
use norn_storeapi::thanos::info::info_server::Info;
use norn_storeapi::thanos::info::{InfoRequest, InfoResponse};
use norn_storeapi::thanos::store_server::Store;
use norn_storeapi::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse, SeriesRequest,
    SeriesResponse, series_response,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const T0: i64 = 1_700_000_000_000;
/// Series of the metric `m`, and samples of each (two XOR chunks of 120).
const SERIES: usize = 4;
const SAMPLES: i64 = 240;

fn data() -> common::Data {
    (0..SERIES)
        .map(|i| {
            let l = Labels::from_pairs([("__name__", "m"), ("instance", &format!("h{i}"))]);
            (l, (0..SAMPLES).map(|k| (T0 + k * 15_000, (k * (i as i64 + 1)) as f64)).collect())
        })
        .collect()
}

fn args(endpoints: Vec<String>, max_samples: usize) -> norn_query::Args {
    norn_query::Args {
        endpoints,
        replica_labels: vec!["replica".into()],
        endpoint_refresh_interval: Duration::from_millis(200),
        // An Info probe that times out marks its store down until the next round
        // (queries then miss its data): generous, for a loaded machine.
        endpoint_info_timeout: Duration::from_secs(10),
        max_samples,
        ..Default::default()
    }
}

const END: i64 = T0 + (SAMPLES - 1) * 15_000;

fn range_query() -> String {
    format!("/api/v1/query?query={}&time={}", enc("m[1h]"), END / 1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_count_as_the_series_they_copy() {
    let d = Arc::new(data());
    // Every chunk of every series overlaps the hour: each replica announces this many.
    let per_replica = SERIES * SAMPLES as usize;
    for strip in [true, false] {
        let mut stops = Vec::new();
        let mut addrs = Vec::new();
        for r in 0..3 {
            let stop = CancellationToken::new();
            let mut store = FakeStore::new(Labels::from_pairs([("replica", format!("r{r}"))]), d.clone());
            store.strip = strip;
            addrs.push(serve_store(store, stop.clone()).await.to_string());
            stops.push(stop);
        }
        // The querier allows three times `--query.max-samples` (one copy per replica): all
        // three replicas' samples exactly fit, one less does not.
        for (max, ok) in [(per_replica, true), (per_replica - 1, false)] {
            let q = start_querier(args(addrs.clone(), max)).await;
            let (code, body) = q.get(&range_query()).await;
            if ok {
                assert_eq!(code, 200, "strip {strip}, limit {max}: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["data"]["result"].as_array().map(Vec::len), Some(SERIES), "{body}");
            } else {
                assert_eq!(code, 422, "strip {strip}, limit {max}: {body}");
                assert!(body.contains("too many samples"), "{body}");
            }
            q.stop.cancel();
        }
        stops.iter().for_each(CancellationToken::cancel);
    }
}

/// A store answering as `inner` does, plus `junk` series of `m` after the real ones whose
/// 1 MiB chunks announce no samples.
#[derive(Clone)]
struct Padded {
    inner: FakeStore,
    junk: usize,
}

use common::SeriesStream;

#[tonic::async_trait]
impl Store for Padded {
    type SeriesStream = SeriesStream;
    async fn series(&self, req: Request<SeriesRequest>) -> Result<Response<SeriesStream>, Status> {
        use futures::StreamExt;
        let r = req.get_ref().clone();
        let wants_m = r.matchers.iter().all(|m| m.name != "__name__" || m.value == "m");
        let real = self.inner.series(req).await?.into_inner();
        let junk = if wants_m { self.junk } else { 0 };
        let replica = self.inner.ext.get("replica").unwrap_or("").to_string();
        let pad = futures::stream::iter(0..junk).map(move |i| {
            let labels = norn_storeapi::labels_to_proto(&Labels::from_pairs([
                ("__name__", "m".to_string()),
                ("instance", format!("zz{i:04}")),
                ("replica", replica.clone()),
            ]));
            // A count header of 0, then bytes no sample uses.
            let chunk = thanos::AggrChunk {
                min_time: T0,
                max_time: END,
                raw: Some(thanos::Chunk { r#type: 0, data: vec![0; 1 << 20], hash: 0 }),
                ..Default::default()
            };
            let s = thanos::Series { labels, chunks: vec![chunk] };
            Ok(SeriesResponse { result: Some(series_response::Result::Series(s)) })
        });
        Ok(Response::new(Box::pin(real.chain(pad))))
    }
    async fn label_names(&self, req: Request<LabelNamesRequest>) -> Result<Response<LabelNamesResponse>, Status> {
        self.inner.label_names(req).await
    }
    async fn label_values(&self, req: Request<LabelValuesRequest>) -> Result<Response<LabelValuesResponse>, Status> {
        self.inner.label_values(req).await
    }
}

#[tonic::async_trait]
impl Info for Padded {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.inner.info(req).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_announcing_no_samples_are_bounded() {
    let d = Arc::new(data());
    let mut stops = Vec::new();
    let mut addrs = Vec::new();
    for r in 0..3 {
        let stop = CancellationToken::new();
        let inner = FakeStore::new(Labels::from_pairs([("replica", format!("r{r}"))]), d.clone());
        // 100 MiB each, against a bound of 64 MiB for this limit.
        addrs.push(serve_store(Padded { inner, junk: 100 }, stop.clone()).await.to_string());
        stops.push(stop);
    }
    let q = start_querier(args(addrs, 100_000)).await;
    let (code, body) = q.get(&range_query()).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("too many samples"), "{body}");
    // Without the padded series the same endpoints answer within the limit.
    let (code, body) = q.get(&format!("/api/v1/query?query={}&time={}", enc("up or vector(1)"), END / 1000)).await;
    assert_eq!(code, 200, "{body}");
    q.stop.cancel();
    stops.iter().for_each(CancellationToken::cancel);
}
