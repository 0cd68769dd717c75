//! The gateway end to end in-process: blocks written and uploaded to a FILESYSTEM bucket,
//! synced, then asked through the StoreAPI service methods.

use std::collections::BTreeMap;
use std::path::Path;

use norn_block::ThanosMeta;
use norn_model::{Histogram, Labels, MatchType, Matcher, Span};
use norn_objstore::Bucket;
use norn_storeapi::thanos::info::info_server::Info;
use norn_storeapi::thanos::store_server::Store;
use norn_storeapi::thanos::{self, LabelNamesRequest, LabelValuesRequest, SeriesRequest, series_response};
use norn_storeapi::{labels_from_proto, matcher_to_proto};
use norn_tsdb::block::BlockWriter;
use norn_tsdb::chunkenc::Sample;
use norn_tsdb::series::encode_samples;
use tokio_stream::StreamExt;
use tonic::Request;

use super::*;

type SeriesData = Vec<(Labels, Vec<Sample>)>;

async fn upload(bucket: &Bucket, tmp: &Path, mint: i64, maxt: i64, ext: &[(&str, &str)], series: &SeriesData) {
    let mut w = BlockWriter::new(tmp, mint, maxt).unwrap();
    let mut sorted = series.clone();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (l, samples) in &sorted {
        w.add_series(l, &encode_samples(samples.iter().cloned(), 120).unwrap()).unwrap();
    }
    let meta = w.finish().unwrap();
    let t = ThanosMeta {
        labels: ext.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<BTreeMap<_, _>>(),
        source: "test".into(),
        resolution: 0,
    };
    norn_block::upload(bucket, &tmp.join(meta.ulid.to_string()), &t).await.unwrap();
}

fn floats(l: &[(&str, &str)], ts: std::ops::Range<i64>, v: f64) -> (Labels, Vec<Sample>) {
    (Labels::from_pairs(l.iter().copied()), ts.map(|t| Sample::Float(t * 1000, v + t as f64)).collect())
}

fn hist(t: i64) -> Sample {
    Sample::Histogram(
        t * 1000,
        Box::new(Histogram {
            count: 3 + t as u64,
            sum: 1.5 * t as f64,
            zero_threshold: 0.001,
            zero_count: 1,
            positive_spans: vec![Span { offset: 0, length: 2 }],
            positive_buckets: vec![1, 1 + t],
            ..Default::default()
        }),
    )
}

struct Fixture {
    _dirs: Vec<tempfile::TempDir>,
    gw: Gateway,
}

async fn fixture() -> Fixture {
    let bdir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bucket = Bucket::filesystem(bdir.path()).unwrap();
    // Two overlapping blocks of replica a (the second repeats 50..100 and goes on),
    // one of replica b, the histogram series in the first.
    let a1: SeriesData = vec![
        floats(&[("__name__", "up"), ("job", "x")], 0..100, 0.0),
        floats(&[("__name__", "up"), ("job", "y")], 0..100, 10.0),
        (Labels::from_pairs([("__name__", "h")]), (0..30).map(hist).collect()),
    ];
    let a2: SeriesData = vec![floats(&[("__name__", "up"), ("job", "x")], 50..300, 0.0)];
    let b: SeriesData = vec![floats(&[("__name__", "up"), ("job", "x")], 0..10, 100.0)];
    upload(&bucket, tmp.path(), 0, 100_000, &[("replica", "a")], &a1).await;
    upload(&bucket, tmp.path(), 50_000, 300_000, &[("replica", "a")], &a2).await;
    upload(&bucket, tmp.path(), 0, 10_000, &[("replica", "b")], &b).await;
    let args = gateway_args(bdir.path(), cache.path());
    let gw = Gateway::new(&args, &mut Registry::default()).unwrap();
    assert!(gw.sync_once().await);
    assert_eq!(gw.store.set.snapshot().len(), 3);
    Fixture { _dirs: vec![bdir, cache, tmp], gw }
}

fn eq(n: &str, v: &str) -> thanos::LabelMatcher {
    matcher_to_proto(&Matcher::equal(n, v))
}

/// Series as (labels, samples), and the chunk min times per series.
async fn series(store: &BucketStore, req: SeriesRequest) -> Vec<(String, Vec<Sample>, Vec<i64>)> {
    let mut s = store.series(Request::new(req.clone())).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.next().await {
        let list = match r.unwrap().result.unwrap() {
            series_response::Result::Series(s) => vec![s],
            series_response::Result::Batch(b) => b.series,
            other => panic!("unexpected frame {other:?}"),
        };
        for s in list {
            let l = labels_from_proto(&s.labels).unwrap();
            let mut samples = Vec::new();
            for c in &s.chunks {
                norn_storeapi::chunks::decode_aggr_chunk(c, req.min_time, req.max_time, &mut samples).unwrap();
            }
            out.push((l.to_string(), samples, s.chunks.iter().map(|c| c.min_time).collect()));
        }
    }
    out
}

#[tokio::test]
async fn series_merge_blocks_add_external_labels_and_filter() {
    let f = fixture().await;
    let st = &f.gw.store;
    let req = |ms: Vec<thanos::LabelMatcher>, mint: i64, maxt: i64| SeriesRequest {
        min_time: mint,
        max_time: maxt,
        matchers: ms,
        response_batch_size: 2,
        ..Default::default()
    };
    let got = series(st, req(vec![eq("__name__", "up")], 0, i64::MAX)).await;
    let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(
        names,
        [
            r#"{__name__="up", job="x", replica="a"}"#,
            r#"{__name__="up", job="x", replica="b"}"#,
            r#"{__name__="up", job="y", replica="a"}"#
        ]
    );
    // x/a: both blocks' chunks, in time order; samples 50..99 appear twice (overlap).
    let (_, xs, mins) = &got[0];
    assert!(mins.windows(2).all(|w| w[0] <= w[1]), "{mins:?}");
    assert_eq!(xs.len(), 100 + 250);
    assert_eq!(got[1].1.len(), 10);

    // External-label matchers pick blocks; other matchers go to the index.
    let got = series(st, req(vec![eq("__name__", "up"), eq("replica", "b")], 0, i64::MAX)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1[0], Sample::Float(0, 100.0));
    let only_ext = series(st, req(vec![eq("replica", "b")], 0, i64::MAX)).await;
    assert_eq!(only_ext.len(), 1);
    let re = matcher_to_proto(&Matcher::new(MatchType::Regex, "job", "y|z").unwrap());
    assert_eq!(series(st, req(vec![re], 0, i64::MAX)).await.len(), 1);

    // Time range: only the second block's chunks after 100 s.
    let got = series(st, req(vec![eq("__name__", "up")], 200_000, 250_000)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.len(), 51);

    // Native histograms come through as stored.
    let got = series(st, req(vec![eq("__name__", "h")], 0, i64::MAX)).await;
    // (Counter-reset hints are the chunk's business: compare without them.)
    let plain = |s: &Sample| match s {
        Sample::Histogram(t, h) => {
            Sample::Histogram(*t, Box::new(Histogram { counter_reset_hint: Default::default(), ..(**h).clone() }))
        }
        s => s.clone(),
    };
    assert_eq!(got[0].1.iter().map(plain).collect::<Vec<_>>(), (0..30).map(hist).collect::<Vec<_>>());

    // skip_chunks and limit.
    let mut r = req(vec![eq("__name__", "up")], 0, i64::MAX);
    r.skip_chunks = true;
    r.limit = 2;
    let got = series(st, r).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|g| g.2.is_empty()));
}

#[tokio::test]
async fn labels_and_info() {
    let f = fixture().await;
    let st = &f.gw.store;
    let names = st
        .label_names(Request::new(LabelNamesRequest { start: 0, end: i64::MAX, ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .names;
    assert_eq!(names, ["__name__", "job", "replica"]);
    let names = st
        .label_names(Request::new(LabelNamesRequest {
            start: 0,
            end: i64::MAX,
            matchers: vec![eq("__name__", "h")],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .names;
    assert_eq!(names, ["__name__", "replica"]);
    let values = |label: &str, ms: Vec<thanos::LabelMatcher>, start: i64| {
        let req = LabelValuesRequest { label: label.into(), start, end: i64::MAX, matchers: ms, ..Default::default() };
        async move { st.label_values(Request::new(req)).await.unwrap().into_inner().values }
    };
    assert_eq!(values("job", vec![], 0).await, ["x", "y"]);
    assert_eq!(values("replica", vec![], 0).await, ["a", "b"]);
    assert_eq!(values("replica", vec![eq("job", "y")], 0).await, ["a"]);
    assert_eq!(values("job", vec![eq("replica", "b")], 0).await, ["x"]);
    assert_eq!(values("job", vec![], 200_000).await, ["x"], "only the late block");
    assert!(st.label_values(Request::new(LabelValuesRequest::default())).await.is_err());

    let info = st.info(Request::new(Default::default())).await.unwrap().into_inner();
    assert_eq!(info.component_type, "store");
    let s = info.store.unwrap();
    assert_eq!((s.min_time, s.max_time), (0, 300_000));
    let sets: Vec<Labels> = info.label_sets.iter().map(|z| labels_from_proto(&z.labels).unwrap()).collect();
    assert_eq!(sets, [Labels::from_pairs([("replica", "a")]), Labels::from_pairs([("replica", "b")])]);
    assert_eq!(s.tsdb_infos.len(), 2);
}

#[tokio::test]
async fn corrupt_chunk_bytes_fail_the_query_with_block_and_offset() {
    let f = fixture().await;
    let st = &f.gw.store;
    let b = st.set.snapshot().iter().find(|b| b.ext == Labels::from_pairs([("replica", "b")])).unwrap().clone();
    let key = format!("{}/chunks/000001", b.id);
    let mut data = st.fetcher.bucket.get(&key).await.unwrap().to_vec();
    let n = data.len();
    data[n - 6] ^= 0x55; // inside the last chunk's data
    st.fetcher.bucket.put(&key, bytes::Bytes::from(data)).await.unwrap();
    let req =
        SeriesRequest { min_time: 0, max_time: i64::MAX, matchers: vec![eq("replica", "b")], ..Default::default() };
    let mut s = st.series(Request::new(req)).await.unwrap().into_inner();
    let mut err = None;
    while let Some(r) = s.next().await {
        if let Err(e) = r {
            err = Some(e);
        }
    }
    let e = err.expect("an error frame");
    assert!(e.message().contains(&b.id.to_string()) && e.message().contains("checksum"), "{}", e.message());
}

#[tokio::test]
async fn blocks_served_elsewhere_are_left_out() {
    let mut f = fixture().await;
    let b = f.gw.store.set.snapshot().iter().find(|b| b.ext == Labels::from_pairs([("replica", "b")])).unwrap().id;
    f.gw.set_served_elsewhere(move || std::collections::HashSet::from([b]));
    let st = &f.gw.store;
    let req =
        SeriesRequest { min_time: 0, max_time: i64::MAX, matchers: vec![eq("__name__", "up")], ..Default::default() };
    let got = series(st, req).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|g| g.0.contains("replica=\"a\"")), "{got:?}");
    let info = st.info(Request::new(Default::default())).await.unwrap().into_inner();
    assert_eq!(info.label_sets.len(), 1);
}

/// Uploads a 5m block of replica "d" over `[0, 600 s)`: one series whose aggregate chunk
/// has windows ending at 299.999 s and 599.999 s (count 30 each, sum, min, max, counter).
async fn upload_5m(bucket: &Bucket, tmp: &Path) {
    use norn_tsdb::chunkenc::aggr::{AGGR_ENCODING, AggrChunk};
    use norn_tsdb::chunkenc::{Chunk, Encoding, XorChunk};
    use norn_tsdb::chunks::RawChunkMeta;
    let xor = |s: &[(i64, f64)]| {
        let mut c = XorChunk::new();
        for &(t, v) in s {
            c.append(t, v);
        }
        Some(Chunk::new(Encoding::Xor, c.into_bytes()))
    };
    let (w1, w2) = (299_999, 599_999);
    let a = AggrChunk {
        parts: [
            xor(&[(w1, 30.0), (w2, 30.0)]),
            xor(&[(w1, 435.0), (w2, 1335.0)]),
            xor(&[(w1, 0.0), (w2, 30.0)]),
            xor(&[(w1, 29.0), (w2, 59.0)]),
            xor(&[(0, 0.0), (w1, 29.0), (w2, 59.0), (w2, 59.0)]),
        ],
    };
    let mut w = BlockWriter::new(tmp, 0, 600_000).unwrap();
    let c = RawChunkMeta { min_time: w1, max_time: w2, encoding: AGGR_ENCODING, data: a.encode().into() };
    w.add_series_raw(&Labels::from_pairs([("__name__", "up"), ("job", "x")]), &[c], 2).unwrap();
    let meta = w.finish().unwrap();
    let t = ThanosMeta {
        labels: BTreeMap::from([("replica".into(), "d".into())]),
        source: "test".into(),
        resolution: 300_000,
    };
    norn_block::upload(bucket, &tmp.join(meta.ulid.to_string()), &t).await.unwrap();
}

#[tokio::test]
async fn downsampled_blocks_serve_aggregates_by_max_resolution_window() {
    let bdir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bucket = Bucket::filesystem(bdir.path()).unwrap();
    let raw: SeriesData = vec![floats(&[("__name__", "up"), ("job", "x")], 0..600, 0.0)];
    upload(&bucket, tmp.path(), 0, 600_000, &[("replica", "d")], &raw).await;
    upload_5m(&bucket, tmp.path()).await;
    let args = gateway_args(bdir.path(), cache.path());
    let gw = Gateway::new(&args, &mut Registry::default()).unwrap();
    assert!(gw.sync_once().await);
    assert_eq!(gw.store.set.snapshot().len(), 2, "the 5m block is loaded too");
    let st = &gw.store;
    let chunks = |max_res: i64, aggrs: Vec<thanos::Aggr>| {
        let req = SeriesRequest {
            min_time: 0,
            max_time: 599_999,
            matchers: vec![eq("__name__", "up")],
            max_resolution_window: max_res,
            aggregates: aggrs.into_iter().map(|a| a as i32).collect(),
            ..Default::default()
        };
        async move {
            let mut s = st.series(Request::new(req)).await?.into_inner();
            let mut out = Vec::new();
            while let Some(r) = s.next().await {
                match r?.result.unwrap() {
                    series_response::Result::Series(s) => out.extend(s.chunks),
                    series_response::Result::Batch(b) => out.extend(b.series.into_iter().flat_map(|s| s.chunks)),
                    other => panic!("unexpected frame {other:?}"),
                }
            }
            Ok::<_, tonic::Status>(out)
        }
    };
    // Raw only by default.
    let got = chunks(0, vec![]).await.unwrap();
    assert!(!got.is_empty() && got.iter().all(|c| c.raw.is_some() && c.count.is_none()));
    // A 5m window picks the 5m block: the asked aggregates only.
    let got = chunks(300_000, vec![thanos::Aggr::Count, thanos::Aggr::Counter]).await.unwrap();
    assert_eq!(got.len(), 1);
    let c = &got[0];
    assert_eq!((c.min_time, c.max_time), (299_999, 599_999));
    assert!(c.raw.is_none() && c.sum.is_none() && c.min.is_none() && c.max.is_none());
    let decode = |ch: &thanos::Chunk| -> Vec<(i64, f64)> {
        let c = norn_tsdb::chunkenc::Chunk::new(norn_tsdb::chunkenc::Encoding::Xor, ch.data.clone());
        c.iter()
            .unwrap()
            .map(|s| match s {
                Sample::Float(t, v) => (t, v),
                o => panic!("{o:?}"),
            })
            .collect()
    };
    assert_eq!(decode(c.count.as_ref().unwrap()), vec![(299_999, 30.0), (599_999, 30.0)]);
    assert_eq!(decode(c.counter.as_ref().unwrap()).len(), 4);
    // An hour window still gets the 5m block (no 1h block covers the range).
    assert_eq!(chunks(3_600_000, vec![thanos::Aggr::Sum]).await.unwrap().len(), 1);
}

/// Gateway flags over a FILESYSTEM bucket at `bucket`, caching in `cache`; all time served.
fn gateway_args(bucket: &std::path::Path, cache: &std::path::Path) -> Args {
    Args {
        data_dir: cache.to_path_buf(),
        objstore_config_file: None,
        objstore_config: Some(format!("type: FILESYSTEM\nconfig:\n  directory: {}\n", bucket.display())),
        http_address: String::new(),
        grpc_address: String::new(),
        sync_block_duration: "15m".into(),
        block_sync_concurrency: 2,
        min_time: "0000-01-01T00:00:00Z".into(),
        max_time: "9999-12-31T23:59:59Z".into(),
        index_cache_size: "250MB".into(),
        posting_offsets_sampling: 32,
        verify_index_on_load: true,
        series_max_concurrency: 20,
    }
}

#[tokio::test]
async fn series_calls_wait_for_a_slot_of_the_gate() {
    use futures::FutureExt;
    let f = fixture().await;
    let mut st = f.gw.store.clone();
    assert_eq!(st.series_gate.available_permits(), 20, "--store.grpc.series-max-concurrency default");
    st.series_gate = Arc::new(tokio::sync::Semaphore::new(1));
    let req =
        SeriesRequest { min_time: 0, max_time: i64::MAX, matchers: vec![eq("__name__", "up")], ..Default::default() };
    // The only slot taken: a call cannot start.
    let held = st.series_gate.clone().acquire_owned().await.unwrap();
    let mut call = Box::pin(st.series(Request::new(req.clone())));
    assert!((&mut call).now_or_never().is_none(), "a Series call ran without a slot");
    drop(held);
    let mut stream = call.await.unwrap().into_inner();
    let mut n = 0;
    while let Some(r) = stream.next().await {
        r.unwrap();
        n += 1;
    }
    assert!(n > 0);
    // The slot is given back once the stream has been sent.
    assert_eq!(st.series_gate.available_permits(), 1);
    assert_eq!(series(&st, req).await.len(), 3);
}
