//! Native histograms through a real `norn receive`: integer, float and custom-bucket
//! histograms sent with remote write 1.0 and 2.0 come back over the StoreAPI as
//! Thanos `HISTOGRAM` / `FLOAT_HISTOGRAM` chunks with every field intact, also after a
//! restart (WAL replay); a malformed histogram is refused with 400 naming its series and
//! nothing of that request is stored.

mod receive_support;

use norn_storeapi::io::prometheus::write::v2;
use norn_storeapi::prometheus::{self as pb, BucketSpan, Label, TimeSeries, WriteRequest};
use norn_storeapi::thanos;
use norn_testkit::receive::{Receiver, http_post};
use norn_tsdb::chunkenc::{Chunk, Encoding, Sample};
use prost::Message;
use receive_support::{eq, now_ms, post, series_raw};

fn span(offset: i32, length: u32) -> BucketSpan {
    BucketSpan { offset, length }
}

/// Observation `i` of an exponential integer histogram: zero bucket `i`, buckets
/// `i, i+1` at indexes 0..2 and `1` at index 5, one negative observation.
fn int_hist(t: i64, i: i64) -> pb::Histogram {
    let n = i as u64;
    pb::Histogram {
        count: Some(pb::histogram::Count::CountInt(n + n + (n + 1) + 1 + 1)),
        sum: 1.5 * i as f64,
        schema: 1,
        zero_threshold: 1e-3,
        zero_count: Some(pb::histogram::ZeroCount::ZeroCountInt(n)),
        positive_spans: vec![span(0, 2), span(3, 1)],
        positive_deltas: vec![i, 1, -i],
        negative_spans: vec![span(-2, 1)],
        negative_deltas: vec![1],
        timestamp: t,
        ..Default::default()
    }
}

/// A gauge float histogram with custom bucket bounds.
fn custom_float_hist(t: i64, x: f64) -> pb::Histogram {
    pb::Histogram {
        count: Some(pb::histogram::Count::CountFloat(3.0 * x)),
        sum: x,
        schema: -53,
        positive_spans: vec![span(0, 2)],
        positive_counts: vec![x, 2.0 * x],
        custom_values: vec![0.25, 1.0, 4.0],
        reset_hint: pb::histogram::ResetHint::Gauge as i32,
        timestamp: t,
        ..Default::default()
    }
}

fn body_v1(name: &str, hs: Vec<pb::Histogram>) -> Vec<u8> {
    let req = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![
                Label { name: "__name__".into(), value: name.into() },
                Label { name: "job".into(), value: "hist".into() },
            ],
            histograms: hs,
            ..Default::default()
        }],
        metadata: Vec::new(),
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap()
}

/// A remote write 2.0 body with one exponential float histogram series.
fn body_v2(name: &str, t: i64) -> Vec<u8> {
    let h = v2::Histogram {
        count: Some(v2::histogram::Count::CountFloat(4.5)),
        sum: 9.0,
        schema: 3,
        zero_threshold: 0.5,
        zero_count: Some(v2::histogram::ZeroCount::ZeroCountFloat(0.5)),
        positive_spans: vec![v2::BucketSpan { offset: 2, length: 2 }],
        positive_counts: vec![1.5, 2.5],
        timestamp: t,
        ..Default::default()
    };
    let req = v2::Request {
        symbols: vec!["".into(), "__name__".into(), name.into(), "job".into(), "hist".into()],
        timeseries: vec![v2::TimeSeries { labels_refs: vec![1, 2, 3, 4], histograms: vec![h], ..Default::default() }],
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap()
}

/// Every sample of a StoreAPI series, decoded from its raw chunks, with the chunk types.
fn decode(s: &thanos::Series) -> (Vec<i32>, Vec<Sample>) {
    let mut types = Vec::new();
    let mut out = Vec::new();
    for c in &s.chunks {
        let raw = c.raw.as_ref().expect("raw chunk");
        types.push(raw.r#type);
        let encoding = match raw.r#type {
            0 => Encoding::Xor,
            1 => Encoding::Histogram,
            2 => Encoding::FloatHistogram,
            t => panic!("unknown chunk type {t}"),
        };
        let chunk = Chunk { encoding, data: bytes::Bytes::from(raw.data.clone()) };
        out.extend(chunk.iter().expect("chunk header"));
    }
    (types, out)
}

fn name_of(s: &thanos::Series) -> &str {
    s.labels.iter().find(|l| l.name == "__name__").map(|l| l.value.as_str()).unwrap_or("")
}

async fn check(addr: &str, t0: i64, n: i64) {
    let got = series_raw(addr, vec![eq("job", "hist")], t0 - 1, t0 + 1_000_000).await.unwrap();
    let names: Vec<&str> = got.iter().map(name_of).collect();
    assert_eq!(names, ["h_custom", "h_int", "h_v2"], "{got:?}");
    for s in &got {
        assert_eq!(s.labels.iter().find(|l| l.name == "tenant_id").map(|l| l.value.as_str()), Some("team-h"));
    }

    let (types, samples) = decode(&got[1]);
    assert!(types.iter().all(|&t| t == thanos::chunk::Encoding::Histogram as i32), "{types:?}");
    assert_eq!(samples.len(), n as usize);
    for (i, s) in samples.iter().enumerate() {
        let Sample::Histogram(t, h) = s else { panic!("h_int sample {i}: {s:?}") };
        let want = int_hist(t0 + i as i64 * 1000, i as i64);
        assert_eq!(*t, want.timestamp);
        assert_eq!((h.schema, h.zero_threshold, h.zero_count, h.sum), (1, 1e-3, i as u64, want.sum), "sample {i}");
        assert_eq!(h.count, 3 * i as u64 + 3, "sample {i}");
        assert_eq!(h.positive_buckets, want.positive_deltas, "sample {i}");
        assert_eq!(h.negative_buckets, vec![1]);
        let spans: Vec<(i32, u32)> = h.positive_spans.iter().map(|s| (s.offset, s.length)).collect();
        assert_eq!(spans, [(0, 2), (3, 1)]);
        assert_eq!((h.negative_spans[0].offset, h.negative_spans[0].length), (-2, 1));
    }

    let (types, samples) = decode(&got[0]);
    assert!(types.iter().all(|&t| t == thanos::chunk::Encoding::FloatHistogram as i32), "{types:?}");
    assert_eq!(samples.len(), n as usize);
    let Sample::FloatHistogram(_, f) = &samples[2] else { panic!("{:?}", samples[2]) };
    assert_eq!((f.schema, f.count, f.sum), (-53, 6.0, 2.0));
    assert_eq!(f.positive_buckets, vec![2.0, 4.0]);
    assert_eq!(f.custom_values, vec![0.25, 1.0, 4.0]);
    assert_eq!(f.counter_reset_hint, norn_model::CounterResetHint::Gauge);

    let (types, samples) = decode(&got[2]);
    assert_eq!(types, vec![thanos::chunk::Encoding::FloatHistogram as i32]);
    let Sample::FloatHistogram(t, f) = &samples[0] else { panic!("{:?}", samples[0]) };
    assert_eq!((*t, f.schema, f.zero_threshold, f.zero_count, f.count), (t0, 3, 0.5, 0.5, 4.5));
    assert_eq!((f.positive_spans[0].offset, f.positive_buckets.clone()), (2, vec![1.5, 2.5]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_histograms_round_trip_through_storeapi() {
    let work = norn_testkit::tempdir().unwrap();
    let mut r = Receiver::new("r0", work.path(), &[]);
    r.start();
    let t0 = now_ms() - 60_000;
    let n = 30;
    let ints: Vec<_> = (0..n).map(|i| int_hist(t0 + i * 1000, i)).collect();
    let floats: Vec<_> = (0..n).map(|i| custom_float_hist(t0 + i * 1000, i as f64)).collect();
    for body in [body_v1("h_int", ints), body_v1("h_custom", floats)] {
        let (code, text) = post(r.rw_port, Some("team-h"), &body);
        assert_eq!(code, 204, "{text}");
    }
    let (code, text) = http_post(
        r.rw_port,
        "/api/v1/receive",
        &[
            ("Content-Type", "application/x-protobuf;proto=io.prometheus.write.v2.Request"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "2.0.0"),
            ("THANOS-TENANT", "team-h"),
        ],
        &body_v2("h_v2", t0),
    )
    .unwrap();
    assert_eq!(code, 204, "v2 write: {text}");

    // Refused: counts that do not add up; schema out of range. 400 naming the series.
    let mut bad = int_hist(t0 + n * 1000, 3);
    bad.count = Some(pb::histogram::Count::CountInt(1));
    let mut bad_schema = int_hist(t0 + n * 1000, 3);
    bad_schema.schema = 12;
    for (what, h, msg) in [("count", bad, "count field is 1"), ("schema", bad_schema, "schema 12 out of range")] {
        let (code, text) = post(r.rw_port, Some("team-h"), &body_v1("h_bad", vec![h]));
        assert_eq!(code, 400, "{what}: {text}");
        assert!(text.contains("h_bad") && text.contains(msg), "{what}: {text}");
    }

    check(&r.grpc_addr(), t0, n).await;
    let bad = series_raw(&r.grpc_addr(), vec![eq("__name__", "h_bad")], 0, i64::MAX).await.unwrap();
    assert!(bad.is_empty(), "{bad:?}");

    // After a restart the WAL brings them back unchanged.
    assert!(r.stop().is_some_and(|s| s.success()), "{}", r.log_text());
    r.start();
    check(&r.grpc_addr(), t0, n).await;
    assert!(r.stop().is_some_and(|s| s.success()), "{}", r.log_text());
}
