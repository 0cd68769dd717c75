//! `norn compact` downsampling over a FILESYSTEM bucket: a 48h raw block (a gauge, and a
//! counter that resets) gets a 5m block with the same labels, source, time range and
//! sources; its aggregate chunks (Thanos's 0xFF encoding) decode to the per-window count,
//! sum, min and max of the raw samples, and the counter aggregate keeps the counter's
//! increase across resets. A second pass makes nothing new. `norn store` over the bucket
//! then serves the raw block for `max_resolution_window` 0 and the 5m block's requested
//! aggregates for a 5m window; `norn query` with `max_source_resolution=5m` (or `auto` on a
//! coarse enough step) answers from those aggregates as Thanos's querier does.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use norn_model::Labels;
use norn_storeapi::thanos::{self, LabelMatcher, SeriesRequest, series_response, store_client::StoreClient};
use norn_testkit::{ProcessGuard, free_port, http_get, norn_bin, run_ok, tempdir, wait_ready};
use norn_tsdb::block::{Block, BlockWriter};
use norn_tsdb::chunkenc::Sample;
use norn_tsdb::chunkenc::aggr::{AGGR_ENCODING, AggrChunk, AggrType};
use norn_tsdb::series::encode_float_chunks;

/// Start of the data (ms), a multiple of 5m.
const T0: i64 = 1_699_977_600_000;
const H: i64 = 3_600_000;
const RES: i64 = 300_000;

fn bucket_yaml(bucket: &Path) -> String {
    format!("--objstore.config=type: FILESYSTEM\nconfig:\n  directory: {}\n", bucket.display())
}

/// Raw samples of the two series: a gauge every 30s and a counter every 45s that resets
/// every 7 hours.
fn raw_series() -> Vec<(Labels, Vec<(i64, f64)>)> {
    let gauge: Vec<(i64, f64)> =
        (T0..T0 + 48 * H).step_by(30_000).map(|t| (t, ((t - T0) as f64 / 1e6).sin() * 50.0)).collect();
    let counter: Vec<(i64, f64)> =
        (T0..T0 + 48 * H).step_by(45_000).map(|t| (t, (((t - T0) % (7 * H)) / 45_000 * 3) as f64)).collect();
    let mut v = vec![
        (Labels::from_pairs([("__name__", "gauge")]), gauge),
        (Labels::from_pairs([("__name__", "requests_total")]), counter),
    ];
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn write_raw_block(bucket: &Path) -> String {
    let mut w = BlockWriter::new(bucket, T0, T0 + 48 * H).unwrap();
    for (l, s) in raw_series() {
        w.add_series(&l, &encode_float_chunks(s, 120)).unwrap();
    }
    let meta = w.finish().unwrap();
    let id = meta.ulid.to_string();
    let p = bucket.join(&id).join("meta.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    m["thanos"] = serde_json::json!({"version": 1, "labels": {"cluster": "c1"}, "downsample": {"resolution": 0}, "source": "sidecar"});
    std::fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    id
}

fn compact_once(work: &Path, bucket: &Path) -> String {
    let out = run_ok(
        Command::new(norn_bin())
            .arg("compact")
            .arg(format!("--data-dir={}", work.join("compact-data").display()))
            .arg(bucket_yaml(bucket))
            .arg(format!("--http-address=127.0.0.1:{}", free_port())),
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn block_dirs(bucket: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(bucket)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| ulid::Ulid::from_string(n).is_ok())
        .collect();
    v.sort();
    v
}

/// The five aggregates of one chunk as samples.
type Aggregates = [Vec<(i64, f64)>; 5];

/// Per series, the aggregate chunks' samples in chunk order.
fn decoded(dir: &Path) -> BTreeMap<String, Vec<Aggregates>> {
    let b = Block::open(dir).unwrap();
    let mut out = BTreeMap::new();
    for id in b.index().all_postings().unwrap() {
        let (l, refs) = b.index().series(id).unwrap();
        let mut chunks = Vec::new();
        for r in refs {
            let (enc, data) = b.chunks().raw_chunk(r.chunk_ref).unwrap();
            assert_eq!(enc, AGGR_ENCODING);
            let a = AggrChunk::decode(&data).unwrap();
            let parts: [Vec<(i64, f64)>; 5] = AggrType::ALL.map(|t| {
                a.get(t)
                    .unwrap_or_else(|| panic!("{} missing", t.name()))
                    .iter()
                    .unwrap()
                    .map(|s| match s {
                        Sample::Float(t, v) => (t, v),
                        o => panic!("{o:?}"),
                    })
                    .collect()
            });
            assert_eq!(parts[0].first().map(|s| s.0), Some(r.min_time));
            assert_eq!(parts[0].last().map(|s| s.0), Some(r.max_time));
            chunks.push(parts);
        }
        out.insert(l.get("__name__").unwrap().to_string(), chunks);
    }
    out
}

#[test]
fn compact_downsamples_a_48h_block_to_5m() {
    let tmp = tempdir().unwrap();
    let work = tmp.path();
    let bucket = work.join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let raw = write_raw_block(&bucket);

    let log = compact_once(work, &bucket);
    std::fs::write(work.join("compact.log"), &log).unwrap();
    assert!(log.contains("downsampled block uploaded"), "{log}");
    let dirs = block_dirs(&bucket);
    assert_eq!(dirs.len(), 2, "{dirs:?}\n{log}");
    let ds = dirs.iter().find(|d| **d != raw).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bucket.join(ds).join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["thanos"]["downsample"]["resolution"], RES);
    assert_eq!(meta["thanos"]["labels"], serde_json::json!({"cluster": "c1"}));
    assert_eq!(meta["thanos"]["source"], "sidecar");
    assert_eq!((meta["minTime"].as_i64(), meta["maxTime"].as_i64()), (Some(T0), Some(T0 + 48 * H)));
    assert_eq!(meta["compaction"]["sources"], serde_json::json!([raw]));
    assert_eq!(meta["stats"]["numSeries"], 2);
    assert!(!bucket.join(&raw).join("deletion-mark.json").exists(), "no retention set: raw stays");

    let got = decoded(&bucket.join(ds));
    for (l, samples) in raw_series() {
        let name = l.get("__name__").unwrap().to_string();
        let chunks = &got[&name];
        // Count, sum, min, max per 5m window, from the raw samples.
        let mut want: BTreeMap<i64, (f64, f64, f64, f64)> = BTreeMap::new();
        for &(t, v) in &samples {
            let e = want.entry(t / RES).or_insert((0.0, 0.0, f64::MAX, -f64::MAX));
            *e = (e.0 + 1.0, e.1 + v, e.2.min(v), e.3.max(v));
        }
        let mut windows: Vec<(i64, f64, f64, f64, f64)> = Vec::new();
        for c in chunks {
            for (i, &(t, n)) in c[0].iter().enumerate() {
                assert!([1, 2, 3].iter().all(|&k| c[k][i].0 == t), "{name}: aggregates at different times");
                windows.push((t, n, c[1][i].1, c[2][i].1, c[3][i].1));
            }
        }
        assert_eq!(windows.len(), want.len(), "{name}: one sample per window");
        for ((t, n, s, lo, hi), (w, e)) in windows.iter().zip(&want) {
            assert_eq!(t / RES, *w, "{name}: window of {t}");
            assert_eq!((*n, *lo, *hi), (e.0, e.2, e.3), "{name} window {w}");
            assert!((s - e.1).abs() <= 1e-9 * e.1.abs().max(1.0), "{name} window {w}: sum {s} vs {}", e.1);
        }
        if name == "requests_total" {
            // The counter chunks, reset-adjusted across chunks as Thanos's querier reads
            // them, give the raw counter's increase (resets included).
            let mut true_inc = 0.0;
            for w in samples.windows(2) {
                true_inc += if w[1].1 >= w[0].1 { w[1].1 - w[0].1 } else { w[1].1 };
            }
            assert!(true_inc > samples.last().unwrap().1, "the data has resets");
            let (mut total, mut last_t, mut last_v, mut first) = (0.0, i64::MIN, 0.0, None);
            for c in chunks {
                // First sample: the chunk's first raw value; last: its last raw value,
                // under the last window's timestamp.
                let cs = &c[4];
                let raw_first = samples.iter().find(|s| s.0 == cs[0].0).unwrap();
                assert_eq!(cs[0].1, raw_first.1);
                assert_eq!(cs[cs.len() - 1].0, cs[cs.len() - 2].0);
                for &(t, v) in cs {
                    if first.is_none() {
                        first = Some(v);
                        total = v;
                    } else if t > last_t {
                        total += if v >= last_v { v - last_v } else { v };
                    } else if t == last_t {
                        last_v = v;
                        continue;
                    } else {
                        continue;
                    }
                    (last_t, last_v) = (t, v);
                }
            }
            assert_eq!(last_v, samples.last().unwrap().1);
            assert_eq!(total - first.unwrap(), true_inc);
        }
    }

    // Its source is covered now: a second pass adds nothing.
    let log = compact_once(work, &bucket);
    assert!(!log.contains("downsampled block uploaded"), "{log}");
    assert_eq!(block_dirs(&bucket).len(), 2);
}

/// Per series name, the chunks of a Series answer.
async fn series(addr: &str, max_res: i64, aggrs: &[thanos::Aggr]) -> BTreeMap<String, Vec<thanos::AggrChunk>> {
    let mut c = StoreClient::connect(format!("http://{addr}")).await.unwrap();
    let req = SeriesRequest {
        min_time: T0,
        max_time: T0 + 48 * H,
        matchers: vec![LabelMatcher { r#type: 2, name: "__name__".into(), value: ".+".into() }],
        max_resolution_window: max_res,
        aggregates: aggrs.iter().map(|&a| a as i32).collect(),
        ..Default::default()
    };
    let mut stream = c.series(req).await.unwrap().into_inner();
    let mut out: BTreeMap<String, Vec<thanos::AggrChunk>> = BTreeMap::new();
    while let Some(frame) = stream.message().await.unwrap() {
        let list = match frame.result {
            Some(series_response::Result::Series(s)) => vec![s],
            Some(series_response::Result::Batch(b)) => b.series,
            _ => continue,
        };
        for s in list {
            assert!(s.labels.iter().any(|l| l.name == "cluster" && l.value == "c1"), "external labels");
            let name = s.labels.iter().find(|l| l.name == "__name__").map(|l| l.value.clone()).unwrap_or_default();
            out.entry(name).or_default().extend(s.chunks);
        }
    }
    out
}

fn xor_samples(c: &thanos::Chunk) -> Vec<(i64, f64)> {
    assert_eq!(c.r#type, thanos::chunk::Encoding::Xor as i32);
    let c = norn_tsdb::chunkenc::Chunk::new(norn_tsdb::chunkenc::Encoding::Xor, c.data.clone());
    c.iter()
        .unwrap()
        .map(|s| match s {
            Sample::Float(t, v) => (t, v),
            o => panic!("{o:?}"),
        })
        .collect()
}

/// A bucket in `work` holding the raw block and what one `norn compact` pass made of it,
/// served by a ready `norn store` (its gRPC port returned with its guard).
fn downsampled_bucket_behind_a_store(work: &Path) -> (ProcessGuard, u16) {
    let bucket = work.join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    write_raw_block(&bucket);
    let log = compact_once(work, &bucket);
    assert!(log.contains("downsampled block uploaded"), "{log}");
    let (http, grpc) = (free_port(), free_port());
    let slog = work.join("store.log");
    let store = ProcessGuard::spawn(
        "norn store",
        Command::new(norn_bin())
            .arg("store")
            .arg(format!("--data-dir={}", work.join("store-cache").display()))
            .arg(bucket_yaml(&bucket))
            .arg(format!("--http-address=127.0.0.1:{http}"))
            .arg(format!("--grpc-address=127.0.0.1:{grpc}")),
        &slog,
    );
    let ready = wait_ready(http, "/-/ready", Duration::from_secs(60));
    let read_log = || std::fs::read_to_string(&slog).unwrap_or_default();
    assert!(ready, "store not ready:\n{}", read_log());
    assert!(!read_log().contains("skipping broken block"), "{}", read_log());
    (store, grpc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_serves_the_5m_block_by_max_resolution_window() {
    let tmp = tempdir().unwrap();
    let (_store, grpc) = downsampled_bucket_behind_a_store(tmp.path());
    let addr = format!("127.0.0.1:{grpc}");
    let raw: BTreeMap<String, usize> =
        raw_series().into_iter().map(|(l, s)| (l.get("__name__").unwrap().to_string(), s.len())).collect();

    // Raw resolution: the raw block's chunks, every sample.
    let got = series(&addr, 0, &[]).await;
    assert_eq!(got.keys().collect::<Vec<_>>(), raw.keys().collect::<Vec<_>>());
    for (name, chunks) in &got {
        assert!(chunks.iter().all(|c| c.raw.is_some() && c.count.is_none()), "{name}");
        let n: usize = chunks.iter().map(|c| xor_samples(c.raw.as_ref().unwrap()).len()).sum();
        assert_eq!(n, raw[name], "{name}");
    }

    // A 5m window: the 5m block's aggregates as asked, the counts adding up to the raw
    // samples; the chunk times are the first and last window.
    let all = [thanos::Aggr::Count, thanos::Aggr::Sum, thanos::Aggr::Min, thanos::Aggr::Max, thanos::Aggr::Counter];
    for max_res in [RES, 12 * RES] {
        let got = series(&addr, max_res, &all).await;
        assert_eq!(got.len(), 2);
        for (name, chunks) in &got {
            let mut n = 0.0;
            for c in chunks {
                assert!(c.raw.is_none(), "{name}: no raw chunk from a 5m block");
                let count = xor_samples(c.count.as_ref().unwrap());
                assert_eq!((count[0].0, count[count.len() - 1].0), (c.min_time, c.max_time));
                for a in [&c.sum, &c.min, &c.max] {
                    assert_eq!(xor_samples(a.as_ref().unwrap()).len(), count.len(), "{name}");
                }
                assert_eq!(xor_samples(c.counter.as_ref().unwrap()).len(), count.len() + 2, "{name}");
                n += count.iter().map(|s| s.1).sum::<f64>();
            }
            assert_eq!(n as usize, raw[name], "{name}");
        }
    }
    // Only what is asked is sent.
    let got = series(&addr, RES, &[thanos::Aggr::Counter]).await;
    assert!(got.values().flatten().all(|c| c.counter.is_some() && c.count.is_none() && c.sum.is_none()));
}

fn enc(q: &str) -> String {
    q.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// The single value of an instant query's answer.
fn instant(port: u16, q: &str, t_ms: i64, extra: &str) -> f64 {
    let path = format!("/api/v1/query?query={}&time={}{extra}", enc(q), t_ms as f64 / 1000.0);
    let (code, body) = http_get(port, &path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let r = v["data"]["result"].as_array().unwrap_or_else(|| panic!("{path}: {body}"));
    assert_eq!(r.len(), 1, "{path}: {body}");
    r[0]["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_reads_downsampled_data_per_function() {
    let tmp = tempdir().unwrap();
    let work = tmp.path();
    let (_store, sgrpc) = downsampled_bucket_behind_a_store(work);
    let (qhttp, qgrpc) = (free_port(), free_port());
    let qlog = work.join("query.log");
    let _query = ProcessGuard::spawn(
        "norn query",
        Command::new(norn_bin())
            .arg("query")
            .arg(format!("--http-address=127.0.0.1:{qhttp}"))
            .arg(format!("--grpc-address=127.0.0.1:{qgrpc}"))
            .arg(format!("--endpoint=127.0.0.1:{sgrpc}")),
        &qlog,
    );
    assert!(wait_ready(qhttp, "/-/ready", Duration::from_secs(60)), "{}", std::fs::read_to_string(&qlog).unwrap());
    wait_for_gauge(qhttp);

    let series = raw_series();
    let gauge = &series.iter().find(|(l, _)| l.get("__name__") == Some("gauge")).unwrap().1;
    // Raw samples of the 5m windows [T0 + 5m·a, T0 + 5m·b).
    let raw_in = |a: i64, b: i64| gauge.iter().filter(move |s| s.0 >= T0 + a * RES && s.0 < T0 + b * RES);
    let five = "&max_source_resolution=5m";
    // t halfway through window m + 1: the last window ending at or before t is window m.
    let m = 40;
    let t = T0 + m * RES + RES / 2;

    // A plain selection reads count and sum: the average of the last window.
    let (n, sum) = raw_in(m - 1, m).fold((0.0, 0.0), |a, s| (a.0 + 1.0, a.1 + s.1));
    let got = instant(qhttp, "gauge", t, five);
    assert!((got - sum / n).abs() < 1e-9, "avg {got} vs {}", sum / n);
    // Raw data unless asked: the last raw sample.
    let last_raw = gauge.iter().rev().find(|s| s.0 <= t).unwrap().1;
    assert_eq!(instant(qhttp, "gauge", t, ""), last_raw);
    assert_ne!(last_raw, sum / n, "the test tells raw and downsampled apart");

    // max_over_time and min_over_time read the max and min aggregates: the windows ending
    // in (t − 1h, t] are windows m−11..m.
    let max = raw_in(m - 12, m).map(|s| s.1).fold(f64::MIN, f64::max);
    let min = raw_in(m - 12, m).map(|s| s.1).fold(f64::MAX, f64::min);
    assert_eq!(instant(qhttp, "max_over_time(gauge[1h])", t, five), max);
    assert_eq!(instant(qhttp, "min_over_time(gauge[1h])", t, five), min);
    // count_over_time counts windows; sum_over_time of the sums adds up the raw values.
    assert_eq!(instant(qhttp, "count_over_time(gauge[1h])", t, five), 12.0);
    let raw_sum: f64 = raw_in(m - 12, m).map(|s| s.1).sum();
    assert!((instant(qhttp, "sum_over_time(gauge[1h])", t, five) - raw_sum).abs() < 1e-6);
    // max() reads the max aggregate too: the largest value of window m.
    let wmax = raw_in(m - 1, m).map(|s| s.1).fold(f64::MIN, f64::max);
    assert_eq!(instant(qhttp, "max(gauge)", t, five), wmax);

    // Counters read the counter aggregate with resets applied: no resets are left, and
    // the rate away from a reset matches the raw one (3 per 45 s).
    assert!(instant(qhttp, "resets(requests_total[2d])", T0 + 47 * H, "") > 0.0);
    assert_eq!(instant(qhttp, "resets(requests_total[2d])", T0 + 47 * H, five), 0.0);
    let tr = T0 + 3 * H + RES / 2;
    let raw_rate = instant(qhttp, "rate(requests_total[1h])", tr, "");
    let ds_rate = instant(qhttp, "rate(requests_total[1h])", tr, five);
    assert!((ds_rate / raw_rate - 1.0).abs() < 0.02, "rate {ds_rate} vs raw {raw_rate}");

    // `auto` on a range query reads up to step / 5: a 25m step gets the 5m data, the
    // same as asking for 5m; a bad value is refused.
    let range = |extra: &str| {
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step=1500{extra}",
            enc("max_over_time(gauge[1h])"),
            (T0 + 2 * H) / 1000,
            (T0 + 20 * H) / 1000
        );
        let (code, body) = http_get(qhttp, &path).unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["data"].clone()
    };
    let auto = range("&max_source_resolution=auto");
    assert_eq!(auto, range(five));
    assert_ne!(auto, range(""));
    let (code, body) =
        http_get(qhttp, &format!("/api/v1/query?query=gauge&max_source_resolution=-5m&time={}", T0 / 1000)).unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("max_source_resolution"), "{body}");
}

/// POSTs `body` and returns the status and body (the answers here carry a length).
fn http_post(port: u16, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/x-protobuf\r\n\
         Content-Encoding: snappy\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status");
    (code, buf[split + 4..].to_vec())
}

/// Float samples per series name.
type SamplesByName = BTreeMap<String, Vec<(i64, f64)>>;

/// A sampled remote read of `__name__="name"` over `[mint, maxt]` with `hints`: per
/// series name, its samples; or the status and body of a failure.
fn read_samples(
    port: u16,
    params: &str,
    name: &str,
    (mint, maxt): (i64, i64),
    hints: Option<norn_storeapi::prometheus::ReadHints>,
) -> Result<SamplesByName, (u16, String)> {
    use norn_storeapi::prometheus as pb;
    use prost::Message;
    let req = pb::ReadRequest {
        queries: vec![pb::Query {
            start_timestamp_ms: mint,
            end_timestamp_ms: maxt,
            matchers: vec![pb::LabelMatcher { r#type: 0, name: "__name__".into(), value: name.into() }],
            hints,
        }],
        accepted_response_types: vec![],
    };
    let body = snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap();
    let (code, raw) = http_post(port, &format!("/api/v1/read{params}"), &body);
    if code != 200 {
        return Err((code, String::from_utf8_lossy(&raw).to_string()));
    }
    let resp = pb::ReadResponse::decode(snap::raw::Decoder::new().decompress_vec(&raw).unwrap().as_slice()).unwrap();
    let mut out = BTreeMap::new();
    for ts in &resp.results[0].timeseries {
        let n = ts.labels.iter().find(|l| l.name == "__name__").map(|l| l.value.clone()).unwrap_or_default();
        out.insert(n, ts.samples.iter().map(|s| (s.timestamp, s.value)).collect());
    }
    Ok(out)
}

/// `/api/v1/read` with Prometheus's read hints: `max_source_resolution` on the read URL (or
/// `auto` over the hints' step) reads the 5m block's aggregates the hinted function needs,
/// as the querier's PromQL does; the hints' range cuts the answer; a Prometheus 2.42
/// reading the querier answers PromQL over the downsampled data as the querier does; an
/// endpoint that is down leaves a logged warning under partial response and fails the
/// read without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_read_uses_read_hints_for_downsampled_data() {
    use norn_storeapi::prometheus::ReadHints;
    let tmp = tempdir().unwrap();
    let work = tmp.path();
    let (_store, sgrpc) = downsampled_bucket_behind_a_store(work);
    let (qhttp, qgrpc, dead) = (free_port(), free_port(), free_port());
    let qlog = work.join("query.log");
    let _query = ProcessGuard::spawn(
        "norn query",
        Command::new(norn_bin())
            .arg("query")
            .arg(format!("--http-address=127.0.0.1:{qhttp}"))
            .arg(format!("--grpc-address=127.0.0.1:{qgrpc}"))
            .arg(format!("--endpoint=127.0.0.1:{sgrpc}"))
            // Nothing listens there: an endpoint that is down.
            .arg(format!("--endpoint=127.0.0.1:{dead}")),
        &qlog,
    );
    let log = || std::fs::read_to_string(&qlog).unwrap_or_default();
    assert!(wait_ready(qhttp, "/-/ready", Duration::from_secs(60)), "{}", log());
    wait_for_gauge(qhttp);
    let (mint, maxt) = (T0 + 2 * H, T0 + 4 * H);
    let hints_in = |func: &str, step_ms: i64, (start_ms, end_ms): (i64, i64)| {
        Some(ReadHints { step_ms, func: func.into(), start_ms, end_ms, range_ms: H, ..Default::default() })
    };
    let hints = |func: &str, step_ms: i64| hints_in(func, step_ms, (mint, maxt));
    let addr = format!("127.0.0.1:{sgrpc}");
    let agg =
        |chunks: &[thanos::AggrChunk], pick: fn(&thanos::AggrChunk) -> Option<&thanos::Chunk>, range: (i64, i64)| {
            chunks
                .iter()
                .flat_map(|c| xor_samples(pick(c).unwrap()))
                .filter(|s| (range.0..=range.1).contains(&s.0))
                .collect::<Vec<_>>()
        };
    let stored = series(&addr, RES, &[thanos::Aggr::Max, thanos::Aggr::Counter]).await;

    // max_over_time at 5m reads the max aggregate of each window in the hinted range.
    let five = "?max_source_resolution=5m";
    let got = read_samples(qhttp, five, "gauge", (T0, T0 + 48 * H), hints("max_over_time", 0)).unwrap();
    let want_max = agg(&stored["gauge"], |c| c.max.as_ref(), (mint, maxt));
    assert!(want_max.len() > 20, "{}", want_max.len());
    assert_eq!(got["gauge"], want_max);
    // `auto` takes a fifth of the hints' step (25m → 5m); no step means raw data.
    let auto =
        read_samples(qhttp, "?max_source_resolution=auto", "gauge", (mint, maxt), hints("max_over_time", 1_500_000));
    assert_eq!(auto.unwrap()["gauge"], want_max);
    let raw: Vec<(i64, f64)> = raw_series()
        .into_iter()
        .find(|(l, _)| l.get("__name__") == Some("gauge"))
        .unwrap()
        .1
        .into_iter()
        .filter(|s| (mint..=maxt).contains(&s.0))
        .collect();
    let auto_instant =
        read_samples(qhttp, "?max_source_resolution=auto", "gauge", (mint, maxt), hints("max_over_time", 0));
    assert_eq!(auto_instant.unwrap()["gauge"], raw);
    // Raw data unless asked, in the hinted range only (the query's range is wider).
    let got = read_samples(qhttp, "", "gauge", (T0, T0 + 48 * H), hints("max_over_time", 0)).unwrap();
    assert_eq!(got["gauge"], raw);
    // rate reads the counter aggregate with resets applied: no resets left (the counter
    // resets at 7h).
    let counter_range = (T0 + 5 * H, T0 + 9 * H);
    let got = read_samples(qhttp, five, "requests_total", counter_range, hints_in("rate", 0, counter_range)).unwrap();
    let c = &got["requests_total"];
    let window_ends = agg(&stored["requests_total"], |c| c.counter.as_ref(), counter_range);
    assert!(c.len() >= window_ends.len() / 2 && !c.is_empty(), "{} vs {}", c.len(), window_ends.len());
    assert!(c.windows(2).all(|w| w[1].1 >= w[0].1), "resets left: {c:?}");
    let raw_rr = read_samples(qhttp, "", "requests_total", counter_range, hints_in("rate", 0, counter_range)).unwrap();
    assert!(raw_rr["requests_total"].windows(2).any(|w| w[1].1 < w[0].1), "the raw counter resets in the range");
    // Labels only for `series`.
    let got = read_samples(qhttp, five, "gauge", (mint, maxt), hints("series", 0)).unwrap();
    assert_eq!(got.get("gauge").map(Vec::len), Some(0), "{got:?}");

    // The endpoint that is down: logged under partial response; without it, an error
    // naming it.
    assert!(log().contains("remote read: partial response"), "{}", log());
    assert!(log().contains(&format!("127.0.0.1:{dead}")), "{}", log());
    let (code, body) = read_samples(qhttp, "?partial_response=false", "gauge", (mint, maxt), None).unwrap_err();
    assert_eq!(code, 500, "{body}");
    assert!(body.contains(&format!("127.0.0.1:{dead}")), "{body}");

    // A Prometheus 2.42 reading the querier (5m on its read URL) answers as the querier.
    let Some(prom) = norn_testkit::require_tool("prometheus") else { return };
    let pdir = work.join("prom");
    let read_url = format!("http://127.0.0.1:{qhttp}/api/v1/read{five}");
    let (_prom, pport) = norn_testkit::start_remote_read_prometheus(&prom, &pdir, &read_url, &[]);
    let plog = pdir.join("prometheus.log");
    let t = T0 + 40 * RES + RES / 2;
    for q in ["max_over_time(gauge[1h])", "min_over_time(gauge[1h])", "rate(requests_total[1h])"] {
        let via_prom = instant(pport, q, t, "");
        let direct = instant(qhttp, q, t, "&max_source_resolution=5m");
        assert!(
            (via_prom - direct).abs() <= 1e-9 * direct.abs(),
            "{q}: {via_prom} through Prometheus, {direct} from the querier\n{}",
            std::fs::read_to_string(&plog).unwrap_or_default()
        );
        if !q.starts_with("min") {
            assert_ne!(via_prom, instant(qhttp, q, t, ""), "{q}: the test tells raw and downsampled apart");
        }
    }
}

/// Waits (bounded, 60 s) until the querier on `qhttp` answers `gauge` with data: it learns
/// the store's time range asynchronously.
fn wait_for_gauge(qhttp: u16) {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = http_get(qhttp, &format!("/api/v1/query?query=gauge&time={}", (T0 + H) / 1000)).unwrap();
        if body.contains("\"gauge\"") {
            break;
        }
        assert!(std::time::Instant::now() < end, "no data through the querier: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
