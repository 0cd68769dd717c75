//! `run` against a fake Prometheus on loopback: start-up refusals, StoreAPI answers in
//! both remote-read modes, readiness following Prometheus.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as AxPath, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use norn_model::{MatchType, Matcher};
use norn_storeapi::prometheus;
use norn_storeapi::thanos::info::InfoRequest;
use norn_storeapi::thanos::info::info_client::InfoClient;
use norn_storeapi::thanos::store_client::StoreClient;
use norn_storeapi::thanos::{
    self, LabelMatcher, LabelNamesRequest, LabelValuesRequest, SeriesRequest, series_response,
};
use norn_tsdb::chunkenc::{Chunk, Encoding, Sample};
use norn_tsdb::series::encode_float_chunks;
use parking_lot::Mutex;
use prost::Message;

use super::*;

#[test]
fn compaction_detection() {
    let flags = |min: &str, max: &str| {
        BTreeMap::from([
            ("storage.tsdb.min-block-duration".to_string(), min.to_string()),
            ("storage.tsdb.max-block-duration".to_string(), max.to_string()),
        ])
    };
    assert!(!compaction_enabled(&flags("2h", "2h")));
    assert!(compaction_enabled(&flags("2h", "1d12h")));
    assert!(compaction_enabled(&BTreeMap::from([("storage.tsdb.min-block-duration".into(), "2h".into())])));
}

/// A Prometheus stand-in: a few float series, remote read in either mode, the label
/// and series APIs; records what it was asked.
struct Fake {
    ready: AtomicBool,
    streamed: AtomicBool,
    ext: Mutex<String>,
    series: Vec<(Labels, Vec<(i64, f64)>)>,
    reads: Mutex<Vec<prometheus::ReadRequest>>,
    api_queries: Mutex<Vec<String>>,
}

type F = Arc<Fake>;

fn ok_json(data: serde_json::Value) -> Response {
    axum::Json(serde_json::json!({"status": "success", "data": data})).into_response()
}

fn model_matcher(m: &prometheus::LabelMatcher) -> Matcher {
    let kind = [MatchType::Equal, MatchType::NotEqual, MatchType::Regex, MatchType::NotRegex][m.r#type as usize];
    Matcher::new(kind, m.name.clone(), m.value.clone()).unwrap()
}

fn fake_frame(msg: &prometheus::ChunkedReadResponse) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = Vec::new();
    let mut n = body.len() as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

impl Fake {
    fn new(ext_yaml: &str) -> F {
        let series = vec![
            (Labels::from_pairs([("__name__", "up"), ("job", "a")]), (0..300).map(|i| (i * 1000, i as f64)).collect()),
            (Labels::from_pairs([("__name__", "up"), ("job", "b")]), (0..5).map(|i| (i * 1000, 0.5)).collect()),
            (Labels::from_pairs([("__name__", "other"), ("job", "a")]), vec![(0, 1.0)]),
        ];
        Arc::new(Fake {
            ready: AtomicBool::new(true),
            streamed: AtomicBool::new(true),
            ext: Mutex::new(ext_yaml.to_string()),
            series,
            reads: Mutex::new(Vec::new()),
            api_queries: Mutex::new(Vec::new()),
        })
    }

    fn ext_labels(&self) -> Labels {
        prom::external_labels_from_yaml(&format!("global:\n  external_labels: {}\n", self.ext.lock())).unwrap()
    }

    /// As Prometheus: matchers on external labels are checked against them, the rest
    /// against the series; the answer carries the external labels.
    fn select(&self, q: &prometheus::Query) -> Vec<(Labels, Vec<(i64, f64)>)> {
        let ext = self.ext_labels();
        let ms: Vec<Matcher> = q.matchers.iter().map(model_matcher).collect();
        self.series
            .iter()
            .filter(|(l, _)| ms.iter().all(|m| m.matches(ext.get(&m.name).or(l.get(&m.name)).unwrap_or(""))))
            .map(|(l, s)| {
                let mut b = ext.to_builder();
                for (n, v) in l.iter() {
                    b.set(n, v);
                }
                let samples = s.iter().copied().filter(|(t, _)| *t >= q.start_timestamp_ms && *t <= q.end_timestamp_ms);
                (b.build(), samples.collect())
            })
            .collect()
    }

    fn router(self: &F) -> Router {
        Router::new()
            .route("/-/ready", get(|State(f): State<F>| async move {
                if f.ready.load(Ordering::SeqCst) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
            }))
            .route("/api/v1/status/config", get(|State(f): State<F>| async move {
                let yaml = format!("global:\n  scrape_interval: 15s\n  external_labels: {}\n", f.ext.lock());
                ok_json(serde_json::json!({ "yaml": yaml }))
            }))
            .route("/api/v1/status/flags", get(|| async {
                ok_json(serde_json::json!({"storage.tsdb.min-block-duration": "2h", "storage.tsdb.max-block-duration": "2h"}))
            }))
            .route("/api/v1/status/tsdb", get(|| async {
                ok_json(serde_json::json!({"headStats": {"numSeries": 3, "minTime": 0, "maxTime": 299000}}))
            }))
            .route("/api/v1/labels", get(|State(f): State<F>, RawQuery(q): RawQuery| async move {
                f.api_queries.lock().push(format!("labels?{}", q.unwrap_or_default()));
                ok_json(serde_json::json!(["__name__", "job"]))
            }))
            .route("/api/v1/label/{name}/values", get(
                |State(f): State<F>, AxPath(name): AxPath<String>, RawQuery(q): RawQuery| async move {
                    f.api_queries.lock().push(format!("values/{name}?{}", q.unwrap_or_default()));
                    ok_json(serde_json::json!(["b", "a"]))
                },
            ))
            .route("/api/v1/series", get(|State(f): State<F>, RawQuery(q): RawQuery| async move {
                f.api_queries.lock().push(format!("series?{}", q.unwrap_or_default()));
                let ext = f.ext_labels();
                let all: Vec<BTreeMap<String, String>> = f.series[..2]
                    .iter()
                    .map(|(l, _)| l.iter().chain(ext.iter()).map(|(n, v)| (n.to_string(), v.to_string())).collect())
                    .collect();
                ok_json(serde_json::json!(all))
            }))
            .route("/api/v1/read", post(|State(f): State<F>, body: Bytes| async move { f.read(&body) }))
            .with_state(self.clone())
    }

    fn read(&self, body: &[u8]) -> Response {
        let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
        let req = prometheus::ReadRequest::decode(raw.as_slice()).unwrap();
        self.reads.lock().push(req.clone());
        let q = &req.queries[0];
        let found = self.select(q);
        if self.streamed.load(Ordering::SeqCst) {
            let mut out = Vec::new();
            for (l, samples) in found {
                let chunks = encode_float_chunks(samples, 120)
                    .into_iter()
                    .map(|c| prometheus::Chunk {
                        min_time_ms: c.min_time,
                        max_time_ms: c.max_time,
                        r#type: 1,
                        data: c.chunk.data.to_vec(),
                    })
                    .collect();
                let labels = l.iter().map(|(n, v)| prometheus::Label { name: n.into(), value: v.into() }).collect();
                out.extend(fake_frame(&prometheus::ChunkedReadResponse {
                    chunked_series: vec![prometheus::ChunkedSeries { labels, chunks }],
                    query_index: 0,
                }));
            }
            ([(header::CONTENT_TYPE, prom::STREAMED_CONTENT_TYPE)], out).into_response()
        } else {
            let ts: Vec<prometheus::TimeSeries> = found
                .into_iter()
                .map(|(l, s)| prometheus::TimeSeries {
                    labels: l.iter().map(|(n, v)| prometheus::Label { name: n.into(), value: v.into() }).collect(),
                    samples: s.into_iter().map(|(t, v)| prometheus::Sample { value: v, timestamp: t }).collect(),
                    ..Default::default()
                })
                .collect();
            let msg = prometheus::ReadResponse { results: vec![prometheus::QueryResult { timeseries: ts }] };
            let body = snap::raw::Encoder::new().compress_vec(&msg.encode_to_vec()).unwrap();
            ([(header::CONTENT_TYPE, "application/x-protobuf"), (header::CONTENT_ENCODING, "snappy")], body)
                .into_response()
        }
    }
}

async fn serve_fake(f: &F) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let r = f.router();
    tokio::spawn(async move { axum::serve(l, r).await });
    format!("http://{addr}")
}

/// A free loopback port for a sidecar to bind later. Tests run in parallel threads and the
/// kernel may hand a just-released port out again: never the same port twice here.
fn port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&p) {
            given.push(p);
            return p;
        }
    }
}

fn args(url: &str, dir: &std::path::Path) -> (Args, u16, u16) {
    let (g, h) = (port(), port());
    let a = Args {
        prometheus_url: url.into(),
        // Long: a loaded machine must not make a test's sidecar give up on the fake.
        prometheus_ready_timeout: "60s".into(),
        get_config_interval: "100ms".into(),
        get_config_timeout: "1s".into(),
        request_timeout: "10s".into(),
        tsdb_path: dir.to_path_buf(),
        grpc_address: format!("127.0.0.1:{g}"),
        http_address: format!("127.0.0.1:{h}"),
        objstore_config_file: None,
        objstore_config: None,
        upload_compacted: false,
        sync_interval: "100ms".into(),
        min_time: "0000-01-01T00:00:00Z".into(),
    };
    (a, g, h)
}

async fn http_status(port: u16, path: &str) -> u16 {
    match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Polls until `path` answers `want`, for up to 60 s (a loaded machine is slow).
async fn eventually(port: u16, path: &str, want: u16) {
    for _ in 0..1200 {
        if http_status(port, path).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never answered {want}");
}

#[tokio::test]
async fn refuses_to_start_without_external_labels() {
    let f = Fake::new("{}");
    let url = serve_fake(&f).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, ..) = args(&url, dir.path());
    let e = run(a, Shutdown::new()).await.unwrap_err();
    assert!(matches!(e, RunError::NoExternalLabels { .. }), "{e}");
    assert!(e.to_string().contains("external_labels"), "{e}");
}

#[tokio::test]
async fn gives_up_when_prometheus_never_ready() {
    let f = Fake::new("{replica: a}");
    f.ready.store(false, Ordering::SeqCst);
    let url = serve_fake(&f).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _, h) = args(&url, dir.path());
    a.prometheus_ready_timeout = "3s".into();
    let task = tokio::spawn(run(a, Shutdown::new()));
    // Healthy (the process runs) but not ready while it waits; on a machine slow enough
    // that the wait already ended, the server is gone and only the error is checked.
    eventually(h, "/-/healthy", 200).await;
    let ready = http_status(h, "/-/ready").await;
    assert!(ready == 503 || (ready == 0 && task.is_finished()), "/-/ready answered {ready} while waiting");
    let e = task.await.unwrap().unwrap_err();
    assert!(matches!(e, RunError::NotReady { .. }), "{e}");
    assert!(e.to_string().contains("503"), "{e}");
}

#[tokio::test]
async fn waits_for_a_late_prometheus() {
    let f = Fake::new("{replica: a}");
    f.ready.store(false, Ordering::SeqCst);
    let url = serve_fake(&f).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, _, h) = args(&url, dir.path());
    let stop = Shutdown::new();
    let task = tokio::spawn(run(a, stop.clone()));
    eventually(h, "/-/healthy", 200).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(http_status(h, "/-/ready").await, 503);
    f.ready.store(true, Ordering::SeqCst);
    eventually(h, "/-/ready", 200).await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

fn lm(t: i32, n: &str, v: &str) -> LabelMatcher {
    LabelMatcher { r#type: t, name: n.into(), value: v.into() }
}

/// All series of a Series call: labels as text and decoded samples.
async fn series(c: &mut StoreClient<tonic::transport::Channel>, req: SeriesRequest) -> Vec<(String, Vec<(i64, f64)>)> {
    let mut s = c.series(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    let mut push = |x: thanos::Series| {
        let l = norn_storeapi::labels_from_proto(&x.labels).unwrap();
        let mut samples = Vec::new();
        for ch in x.chunks {
            let raw = ch.raw.unwrap();
            assert_eq!(raw.r#type, 0);
            assert_eq!(raw.hash, xxhash_rust::xxh64::xxh64(&raw.data, 0));
            for smp in Chunk::new(Encoding::Xor, raw.data).iter().unwrap() {
                let Sample::Float(t, v) = smp else { panic!("{smp:?}") };
                samples.push((t, v));
            }
        }
        out.push((l.to_string(), samples));
    };
    while let Some(r) = s.message().await.unwrap() {
        match r.result.unwrap() {
            series_response::Result::Series(x) => push(x),
            series_response::Result::Batch(b) => b.series.into_iter().for_each(&mut push),
            other => panic!("{other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn store_api_over_remote_read_streamed_and_sampled() {
    let f = Fake::new("{replica: r0, cluster: eu}");
    let url = serve_fake(&f).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, g, h) = args(&url, dir.path());
    let stop = Shutdown::new();
    let task = tokio::spawn(run(a, stop.clone()));
    eventually(h, "/-/ready", 200).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{g}")).unwrap().connect().await.unwrap();
    let mut c = StoreClient::new(ch.clone());

    let info = InfoClient::new(ch.clone()).info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.component_type, "sidecar");
    let ls = norn_storeapi::labels_from_proto(&info.label_sets[0].labels).unwrap();
    assert_eq!(ls.to_string(), r#"{cluster="eu", replica="r0"}"#);
    let st = info.store.unwrap();
    assert_eq!((st.min_time, st.max_time), (0, i64::MAX));

    let up = |mint, maxt, extra: Vec<LabelMatcher>| {
        let mut ms = vec![lm(0, "__name__", "up")];
        ms.extend(extra);
        SeriesRequest { min_time: mint, max_time: maxt, matchers: ms, response_batch_size: 64, ..Default::default() }
    };
    for streamed in [true, false] {
        f.streamed.store(streamed, Ordering::SeqCst);
        f.reads.lock().clear();
        let got = series(&mut c, up(10_000, 200_000, vec![lm(0, "replica", "r0")])).await;
        let names: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            names,
            [
                r#"{__name__="up", cluster="eu", job="a", replica="r0"}"#,
                r#"{__name__="up", cluster="eu", job="b", replica="r0"}"#
            ]
        );
        // Whole chunks come back (the client trims); every sample in range is there.
        let in_range: Vec<(i64, f64)> =
            got[0].1.iter().copied().filter(|(t, _)| (10_000..=200_000).contains(t)).collect();
        assert_eq!(in_range, (10..=200).map(|i| (i * 1000, i as f64)).collect::<Vec<_>>(), "streamed={streamed}");
        // The external-label matcher was answered here, not sent on.
        let reads = f.reads.lock().clone();
        assert_eq!(reads.len(), 1);
        assert_eq!(
            reads[0].queries[0].matchers,
            vec![prometheus::LabelMatcher { r#type: 0, name: "__name__".into(), value: "up".into() }]
        );
        assert_eq!((reads[0].queries[0].start_timestamp_ms, reads[0].queries[0].end_timestamp_ms), (10_000, 200_000));
        assert_eq!(reads[0].accepted_response_types, vec![1, 0]);
    }
    // Re-encoded samples: chunks of at most 120 samples.
    f.streamed.store(false, Ordering::SeqCst);
    let mut s = c.series(up(0, 300_000, vec![lm(0, "job", "a")])).await.unwrap().into_inner();
    let mut sizes = Vec::new();
    while let Some(r) = s.message().await.unwrap() {
        if let Some(series_response::Result::Batch(b)) = r.result {
            for x in b.series {
                sizes.extend(
                    x.chunks.iter().map(|c| Chunk::new(Encoding::Xor, c.raw.clone().unwrap().data).num_samples()),
                );
            }
        }
    }
    assert_eq!(sizes, [120, 120, 60]);

    // Another replica's data, or a time range before --min-time: nothing, and Prometheus is not asked.
    f.reads.lock().clear();
    assert!(series(&mut c, up(0, 300_000, vec![lm(0, "replica", "r1")])).await.is_empty());
    assert!(series(&mut c, up(0, 300_000, vec![lm(2, "cluster", "us.*")])).await.is_empty());
    assert!(f.reads.lock().is_empty());
    // Only external-label matchers: refused, as Thanos does.
    let e = c.series(SeriesRequest { matchers: vec![lm(0, "replica", "r0")], max_time: 1, ..Default::default() }).await;
    assert_eq!(e.unwrap_err().code(), tonic::Code::InvalidArgument);

    // Label-only requests go to /api/v1/series.
    let req = SeriesRequest { skip_chunks: true, ..up(0, 300_000, vec![]) };
    let got = series(&mut c, req).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(l, s)| l.contains(r#"cluster="eu""#) && s.is_empty()));

    let names = c
        .label_names(LabelNamesRequest {
            start: 0,
            end: 300_000,
            matchers: vec![lm(0, "job", "a")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .names;
    assert_eq!(names, ["__name__", "cluster", "job", "replica"]);
    let vals = |label: &str, ms: Vec<LabelMatcher>| LabelValuesRequest {
        label: label.into(),
        start: 0,
        end: 300_000,
        matchers: ms,
        ..Default::default()
    };
    assert_eq!(c.label_values(vals("replica", vec![])).await.unwrap().into_inner().values, ["r0"]);
    assert!(c.label_values(vals("job", vec![lm(0, "replica", "x")])).await.unwrap().into_inner().values.is_empty());
    let v = c.label_values(vals("job", vec![lm(0, "__name__", "up")])).await.unwrap().into_inner().values;
    assert_eq!(v, ["a", "b"]);
    let qs = f.api_queries.lock().clone();
    assert!(
        qs.iter().any(|q| q.starts_with("series?") && q.contains("match%5B%5D=%7B__name__%3D%22up%22%7D")),
        "{qs:?}"
    );
    assert!(qs.iter().any(|q| q.starts_with("labels?start=0&end=300") && q.contains("job")), "{qs:?}");
    assert!(qs.iter().any(|q| q.starts_with("values/job?")), "{qs:?}");

    // Metrics.
    let body = reqwest::get(format!("http://127.0.0.1:{h}/metrics")).await.unwrap().text().await.unwrap();
    assert!(body.contains("norn_sidecar_prometheus_up 1"), "{body}");
    assert!(body.contains(r#"norn_sidecar_remote_reads_total{mode="sampled"}"#), "{body}");

    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn readiness_follows_prometheus_and_labels_refresh() {
    let f = Fake::new("{replica: r0}");
    let url = serve_fake(&f).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, g, h) = args(&url, dir.path());
    a.min_time = "1970-01-01T00:00:00.100Z".into();
    let stop = Shutdown::new();
    let task = tokio::spawn(run(a, stop.clone()));
    eventually(h, "/-/ready", 200).await;
    f.ready.store(false, Ordering::SeqCst);
    eventually(h, "/-/ready", 503).await;
    let body = reqwest::get(format!("http://127.0.0.1:{h}/metrics")).await.unwrap().text().await.unwrap();
    assert!(body.contains("norn_sidecar_prometheus_up 0"), "{body}");
    *f.ext.lock() = "{replica: r1}".into();
    f.ready.store(true, Ordering::SeqCst);
    eventually(h, "/-/ready", 200).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{g}")).unwrap().connect().await.unwrap();
    let info = InfoClient::new(ch).info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.label_sets[0].labels[0].value, "r1");
    // --min-time is later than the head's oldest sample.
    assert_eq!(info.store.unwrap().min_time, 100);
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn ships_blocks_from_the_data_dir() {
    let f = Fake::new("{replica: r0}");
    let url = serve_fake(&f).await;
    let dir = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let (mut a, _, h) = args(&url, dir.path());
    a.objstore_config = Some(format!("type: FILESYSTEM\nconfig:\n  directory: {}\n", bucket.path().display()));
    let mut w = norn_tsdb::block::BlockWriter::new(dir.path(), 0, 10_000).unwrap();
    w.add_series(&Labels::from_pairs([("__name__", "up")]), &encode_float_chunks([(0, 1.0)], 120)).unwrap();
    let m = w.finish().unwrap();
    let stop = Shutdown::new();
    let task = tokio::spawn(run(a, stop.clone()));
    eventually(h, "/-/ready", 200).await;
    let meta = bucket.path().join(m.ulid.to_string()).join("meta.json");
    for _ in 0..1200 {
        if meta.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(v["thanos"]["source"], "sidecar");
    assert_eq!(v["thanos"]["labels"], serde_json::json!({"replica": "r0"}));
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(norn_block::ShipperState::read(dir.path()).uploaded, vec![m.ulid]);
}
