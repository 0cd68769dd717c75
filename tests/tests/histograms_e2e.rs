//! Native histograms end to end. The same remote-write requests (integer histograms of
//! schemas 0, 3 and -2 with zero buckets, negative buckets, a bucket appearing and a
//! counter reset; a float counter beside them) go into a real Prometheus 2.42
//! (`--enable-feature=native-histograms`, its remote-write receiver) and into
//! `norn receive`; float histograms go to receive only (2.42's receiver cannot take them).
//! Four queriers answer over them: over `norn sidecar` in front of that Prometheus
//! (streamed remote read, histogram chunks), over the receiver, over both as replicas
//! (deduplicated), and over the deduplicating querier's own StoreAPI.
//! - JSON of raw selects, `rate`, `increase`, `histogram_count`/`_sum`, `sum by`, instant
//!   and range, and `/api/v1/series` equal Prometheus's; `histogram_quantile` and
//!   `histogram_fraction` (whose interpolation changed after 2.42) agree across the paths;
//! - a float-histogram twin of an integer series answers as Prometheus over the original;
//! - `/api/v1/read` (streamed and sampled) returns Prometheus's histograms, and the float
//!   histograms as written; `/federate` leaves histograms out as 2.42 does;
//! - the querier's StoreAPI carries float-histogram chunks.

mod receive_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use norn_model::{FloatHistogram, Histogram, Span};
use norn_service::Shutdown;
use norn_storeapi::chunks::{float_histogram_to_proto, histogram_to_proto};
use norn_storeapi::prometheus as pb;
use norn_testkit::receive::{Receiver, http_post};
use norn_testkit::{ProcessGuard, free_port, http_get, require_tool, tempdir, wait_ready};
use prost::Message;
use receive_support::now_ms;

const TENANT: (&str, &str) = ("tenant_id", "default-tenant");
const STEP_MS: i64 = 15_000;
const SAMPLES: i64 = 240;
/// The sample index where the counter of `int_s0` resets.
const RESET_AT: i64 = 150;

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Spans and absolute counts from (bucket index, count) pairs ascending by index.
fn layout(buckets: &[(i32, f64)]) -> (Vec<Span>, Vec<f64>) {
    let mut spans: Vec<Span> = Vec::new();
    let mut next = 0i32;
    for (i, &(idx, _)) in buckets.iter().enumerate() {
        if i > 0 && idx == next {
            spans.last_mut().expect("a span").length += 1;
        } else {
            spans.push(Span { offset: if i == 0 { idx } else { idx - next }, length: 1 });
        }
        next = idx + 1;
    }
    (spans, buckets.iter().map(|b| b.1).collect())
}

fn deltas(abs: &[f64]) -> Vec<i64> {
    let mut prev = 0i64;
    abs.iter()
        .map(|&c| {
            let d = c as i64 - prev;
            prev = c as i64;
            d
        })
        .collect()
}

/// A histogram from its parts, float counts; `to_int` gives the integer form.
fn float_hist(schema: i32, zero: f64, pos: &[(i32, f64)], neg: &[(i32, f64)], sum: f64) -> FloatHistogram {
    let (ps, pc) = layout(pos);
    let (ns, nc) = layout(neg);
    FloatHistogram {
        schema,
        zero_threshold: 0.001,
        zero_count: zero,
        count: zero + pc.iter().sum::<f64>() + nc.iter().sum::<f64>(),
        sum,
        positive_spans: ps,
        negative_spans: ns,
        positive_buckets: pc,
        negative_buckets: nc,
        ..Default::default()
    }
}

fn to_int(h: &FloatHistogram) -> Histogram {
    Histogram {
        counter_reset_hint: h.counter_reset_hint,
        schema: h.schema,
        zero_threshold: h.zero_threshold,
        zero_count: h.zero_count as u64,
        count: h.count as u64,
        sum: h.sum,
        positive_spans: h.positive_spans.clone(),
        negative_spans: h.negative_spans.clone(),
        positive_buckets: deltas(&h.positive_buckets),
        negative_buckets: deltas(&h.negative_buckets),
        custom_values: vec![],
    }
}

/// The series written: labels and one value per step (`None` = no sample).
struct Written {
    labels: Vec<(&'static str, String)>,
    ints: Vec<(i64, Histogram)>,
    floats: Vec<(i64, FloatHistogram)>,
    samples: Vec<(i64, f64)>,
}

fn dataset(start: i64) -> Vec<Written> {
    let t = |k: i64| start + k * STEP_MS + 7;
    let series = |name: &str, kind: &str| {
        let mut l = vec![("__name__", name.to_string()), ("kind", kind.to_string()), (TENANT.0, TENANT.1.to_string())];
        l.sort();
        l
    };
    let mut out = Vec::new();
    // Schema 0: zero bucket, positive buckets with a gap, negative buckets, a reset.
    out.push(Written {
        labels: series("e2e_hist", "int_s0"),
        ints: (0..SAMPLES)
            .map(|k| {
                let n = if k >= RESET_AT { (k - RESET_AT) as f64 } else { k as f64 };
                let h = float_hist(
                    0,
                    n,
                    &[(-1, n), (0, 2.0 * n), (1, 3.0 * n + 1.0), (4, n)],
                    &[(0, n), (2, 2.0 * n)],
                    n * 7.25 - n * 3.0,
                );
                (t(k), to_int(&h))
            })
            .collect(),
        floats: vec![],
        samples: vec![],
    });
    // Schema 3: positive buckets only; a new bucket appears at k = 100.
    out.push(Written {
        labels: series("e2e_hist", "int_s3"),
        ints: (0..SAMPLES)
            .map(|k| {
                let n = k as f64;
                let mut pos = vec![(2, 5.0 * n), (3, 2.0 * n), (4, n)];
                if k >= 100 {
                    pos.push((9, (k - 99) as f64));
                }
                (t(k), to_int(&float_hist(3, 0.0, &pos, &[], n * 11.5)))
            })
            .collect(),
        floats: vec![],
        samples: vec![],
    });
    // Schema -2: wide buckets, mostly negative.
    out.push(Written {
        labels: series("e2e_hist", "int_sm2"),
        ints: (0..SAMPLES)
            .map(|k| {
                let n = k as f64;
                (t(k), to_int(&float_hist(-2, 2.0 * n, &[(1, n)], &[(0, 3.0 * n), (1, n), (3, 4.0 * n)], -40.0 * n)))
            })
            .collect(),
        floats: vec![],
        samples: vec![],
    });
    // Float histograms with fractional counts.
    out.push(Written {
        labels: series("e2e_fhist", "float_s1"),
        ints: vec![],
        floats: (0..SAMPLES)
            .map(|k| {
                let n = k as f64 * 0.5;
                (t(k), float_hist(1, n * 0.25, &[(0, n), (1, 1.5 * n), (3, 0.75 * n)], &[(-1, n * 0.5)], n * 3.3))
            })
            .collect(),
        samples: vec![],
    });
    // The float twin of `int_s0` (same values, reset included, as float histograms):
    // PromQL over it through receive must answer what Prometheus answers over `int_s0`.
    let twin = out[0].ints.iter().map(|(t, h)| (*t, h.to_float())).collect();
    out.push(Written { labels: series("e2e_fhist_twin", "int_s0"), ints: vec![], floats: twin, samples: vec![] });
    out.push(Written {
        labels: series("e2e_counter", "plain"),
        ints: vec![],
        floats: vec![],
        samples: (0..SAMPLES).map(|k| (t(k), (k * 3) as f64)).collect(),
    });
    out
}

fn write_body(data: &[&Written]) -> Vec<u8> {
    let req = pb::WriteRequest {
        timeseries: data
            .iter()
            .map(|w| {
                let mut hs: Vec<pb::Histogram> = w.ints.iter().map(|(t, h)| histogram_to_proto(*t, h)).collect();
                hs.extend(w.floats.iter().map(|(t, h)| float_histogram_to_proto(*t, h)));
                pb::TimeSeries {
                    labels: w.labels.iter().map(|(n, v)| pb::Label { name: n.to_string(), value: v.clone() }).collect(),
                    samples: w.samples.iter().map(|&(t, v)| pb::Sample { value: v, timestamp: t }).collect(),
                    histograms: hs,
                    ..Default::default()
                }
            })
            .collect(),
        metadata: vec![],
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).expect("snappy")
}

const RW_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", "application/x-protobuf"),
    ("Content-Encoding", "snappy"),
    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
];

fn start_prometheus(bin: &Path, dir: &Path, port: u16) -> ProcessGuard {
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, "global:\n  scrape_interval: 1h\n  external_labels:\n    replica: r0\n").unwrap();
    let log = dir.join("prometheus.log");
    let guard = ProcessGuard::spawn(
        "prometheus",
        Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("prom-data").display()))
            .arg("--enable-feature=native-histograms")
            .arg("--web.enable-remote-write-receiver")
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        &log,
    );
    assert!(
        wait_ready(port, "/-/ready", Duration::from_secs(60)),
        "prometheus not ready:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    guard
}

/// A querier in this process over `endpoints`, deduplicating on `replica`; returns its
/// HTTP and gRPC ports.
fn start_querier(rt: &tokio::runtime::Runtime, endpoints: Vec<String>, stop: &Shutdown) -> (u16, u16) {
    let http = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let grpc = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let ports = (http.local_addr().unwrap().port(), grpc.local_addr().unwrap().port());
    let args = norn_query::Args {
        endpoints,
        replica_labels: vec!["replica".into()],
        endpoint_refresh_interval: Duration::from_millis(500),
        // An Info probe that times out marks its store down until the next round
        // (queries then miss its data): generous, for a loaded machine.
        endpoint_info_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    rt.spawn(norn_query::run_with_listeners(args, http, grpc, stop.clone()));
    assert!(wait_ready(ports.0, "/-/ready", Duration::from_secs(60)), "querier not ready");
    ports
}

/// Query paths: those whose answers must equal Prometheus 2.42's, and those whose
/// answers must only agree across the queriers. `histogram_quantile` and
/// `histogram_fraction` interpolate linearly inside a bucket in Prometheus 2.42 and
/// exponentially (for exponential schemas) since Prometheus 3, which the engine follows
/// (its conformance suite is Prometheus's current promqltest); over the same raw data
/// they give different numbers, so they are checked for equality between the sidecar,
/// receive and deduplicated paths instead, and for the same series as Prometheus (as is
/// one sum whose float rounding differs).
fn query_paths(end: i64) -> (Vec<String>, Vec<String>) {
    let s = |ms: i64| format!("{}.{:03}", ms / 1000, ms % 1000);
    // Instants well inside the data (extrapolation at a series' start differs between
    // Prometheus 2 and 3), one of them with the counter reset inside a 5m window.
    let reset_t = end - (SAMPLES - RESET_AT) * STEP_MS + 60_000;
    let instant = [
        "e2e_hist",
        "e2e_hist[1m]",
        "e2e_counter",
        "rate(e2e_hist[5m])",
        "increase(e2e_hist[10m])",
        "histogram_count(e2e_hist)",
        "histogram_sum(rate(e2e_hist[5m]))",
        "histogram_count(rate(e2e_hist[5m]))",
        "sum by (kind) (rate(e2e_hist[5m]))",
        "sum(e2e_hist)",
        "{__name__=~\"e2e_(hist|counter)\"}",
    ];
    let interpolated = [
        "histogram_quantile(0.9, rate(e2e_hist[5m]))",
        "histogram_quantile(0.5, e2e_hist)",
        "histogram_quantile(0.1, e2e_hist)",
        "histogram_fraction(0, 4, e2e_hist)",
        "histogram_fraction(-10, 0.5, rate(e2e_hist[5m]))",
        // Adds rates of three histograms whose counts are not exact binary fractions;
        // Prometheus 2.42's count can differ in the last bit (summation differs).
        "sum(rate(e2e_hist[5m]))",
    ];
    let (mut parity, mut across) = (Vec::new(), Vec::new());
    for t in [end - 600_000, reset_t] {
        for q in instant {
            parity.push(format!("/api/v1/query?query={}&time={}", enc(q), s(t)));
        }
        for q in interpolated {
            across.push(format!("/api/v1/query?query={}&time={}", enc(q), s(t)));
        }
    }
    let range = |q: &str| {
        format!("/api/v1/query_range?query={}&start={}&end={}&step=60", enc(q), s(end - 2_400_000), s(end - 60_000))
    };
    for q in ["rate(e2e_hist[5m])", "e2e_hist", "histogram_count(e2e_hist)", "sum(e2e_hist)"] {
        parity.push(range(q));
    }
    across.push(range("histogram_quantile(0.9, sum by (kind) (rate(e2e_hist[5m])))"));
    parity.push(format!(
        "/api/v1/series?match[]={}&start={}&end={}",
        enc("{__name__=~\"e2e_(hist|counter)\"}"),
        s(end - 3_000_000),
        s(end)
    ));
    (parity, across)
}

/// Paths over the float twin of `int_s0`; `e2e_fhist_twin` is replaced by the original
/// for Prometheus.
fn twin_paths(end: i64) -> Vec<String> {
    let s = |ms: i64| format!("{}.{:03}", ms / 1000, ms % 1000);
    let reset_t = end - (SAMPLES - RESET_AT) * STEP_MS + 60_000;
    let mut out = Vec::new();
    for t in [end - 600_000, reset_t] {
        for q in [
            "e2e_fhist_twin",
            "e2e_fhist_twin[1m]",
            "rate(e2e_fhist_twin[5m])",
            "increase(e2e_fhist_twin[10m])",
            "histogram_count(e2e_fhist_twin)",
            "histogram_sum(rate(e2e_fhist_twin[5m]))",
            "sum by (kind) (rate(e2e_fhist_twin[5m]))",
        ] {
            out.push(format!("/api/v1/query?query={}&time={}", enc(q), s(t)));
        }
    }
    out.push(format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=60",
        enc("rate(e2e_fhist_twin[5m])"),
        s(end - 2_400_000),
        s(end - 60_000)
    ));
    out
}

/// `/federate` asked for delimited protobuf, decoded.
fn federate_proto(port: u16, path: &str) -> Vec<norn_storeapi::io::prometheus::client::MetricFamily> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
    write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n").unwrap();
    let mut b = Vec::new();
    c.read_to_end(&mut b).unwrap();
    let split = b.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP head");
    let head = String::from_utf8_lossy(&b[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: application/vnd.google.protobuf"), "{head}");
    let mut body = b[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let mut buf = body.as_slice();
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(norn_storeapi::io::prometheus::client::MetricFamily::decode_length_delimited(&mut buf).unwrap());
    }
    out
}

/// Removes `__name__` from every result's metric.
fn drop_names(v: &mut serde_json::Value) {
    if let Some(rs) = v["data"]["result"].as_array_mut() {
        for r in rs {
            if let Some(m) = r["metric"].as_object_mut() {
                m.remove("__name__");
            }
        }
    }
}

/// The series (metric labels) of a query answer, in order.
fn result_metrics(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["data"]["result"].as_array().map(|r| r.iter().map(|s| s["metric"].clone()).collect()).unwrap_or_default()
}

/// Differences between Prometheus's and the querier's answers (status and `data`).
fn differences(prom: u16, q: u16, paths: &[String]) -> Vec<String> {
    let mut bad = Vec::new();
    for p in paths {
        let (pc, pb) = http_get(prom, p).unwrap();
        let (nc, nb) = http_get(q, p).unwrap();
        let (pv, nv) = (json(&pb), json(&nb));
        if pc != nc || pv["data"] != nv["data"] || pv["status"] != nv["status"] {
            bad.push(format!("{p}\n  prometheus {pc}: {pb}\n  norn {nc}: {nb}"));
        }
    }
    bad
}

/// Decoded streamed remote-read answer: series (labels without `replica`) → samples,
/// histograms as float histograms.
fn remote_read(port: u16, re: &str, mint: i64, maxt: i64) -> BTreeMap<String, Vec<(i64, String)>> {
    let req = pb::ReadRequest {
        queries: vec![pb::Query {
            start_timestamp_ms: mint,
            end_timestamp_ms: maxt,
            matchers: vec![pb::LabelMatcher { r#type: 2, name: "__name__".into(), value: re.into() }],
            hints: None,
        }],
        accepted_response_types: vec![pb::read_request::ResponseType::StreamedXorChunks as i32],
    };
    let body = snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap();
    let h = [("Content-Type", "application/x-protobuf"), ("Content-Encoding", "snappy")];
    let (code, text) = http_post_bytes(port, "/api/v1/read", &h, &body);
    assert_eq!(code, 200, "remote read on {port}: {}", String::from_utf8_lossy(&text));
    let mut buf = bytes::BytesMut::from(text.as_slice());
    let frames = norn_sidecar::prom::take_frames(&mut buf, "test").unwrap();
    assert!(buf.is_empty(), "trailing bytes in remote read answer");
    let mut out: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for f in frames {
        for s in f.chunked_series {
            let key: Vec<String> =
                s.labels.iter().filter(|l| l.name != "replica").map(|l| format!("{}={:?}", l.name, l.value)).collect();
            let samples = out.entry(key.join(",")).or_default();
            for c in s.chunks {
                let e = norn_storeapi::chunks::encoding_from_remote_read(c.r#type).unwrap();
                let chunk = norn_tsdb::chunkenc::Chunk::new(e, c.data);
                for smp in chunk.iter().unwrap() {
                    use norn_tsdb::chunkenc::Sample as S;
                    let (t, v) = match smp {
                        S::Float(t, v) => (t, format!("{v}")),
                        S::Histogram(t, h) => (t, strip_hint(h.to_float())),
                        S::FloatHistogram(t, h) => (t, strip_hint(*h)),
                    };
                    if (mint..=maxt).contains(&t) {
                        samples.push((t, v));
                    }
                }
            }
        }
    }
    out
}

/// Decoded sampled remote-read answer, keyed like [`remote_read`].
fn remote_read_sampled(port: u16, re: &str, mint: i64, maxt: i64) -> BTreeMap<String, Vec<(i64, String)>> {
    let req = pb::ReadRequest {
        queries: vec![pb::Query {
            start_timestamp_ms: mint,
            end_timestamp_ms: maxt,
            matchers: vec![pb::LabelMatcher { r#type: 2, name: "__name__".into(), value: re.into() }],
            hints: None,
        }],
        accepted_response_types: vec![],
    };
    let body = snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap();
    let h = [("Content-Type", "application/x-protobuf"), ("Content-Encoding", "snappy")];
    let (code, raw) = http_post_bytes(port, "/api/v1/read", &h, &body);
    assert_eq!(code, 200, "sampled remote read on {port}: {}", String::from_utf8_lossy(&raw));
    let plain = snap::raw::Decoder::new().decompress_vec(&raw).unwrap();
    // `prometheus_copy` shares the wire form and has the histogram conversion.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Resp {
        #[prost(message, repeated, tag = "1")]
        results: Vec<Res>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Res {
        #[prost(message, repeated, tag = "1")]
        timeseries: Vec<norn_storeapi::prometheus_copy::TimeSeries>,
    }
    let resp = Resp::decode(plain.as_slice()).unwrap();
    let mut out: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for ts in resp.results.into_iter().flat_map(|r| r.timeseries) {
        let key: Vec<String> =
            ts.labels.iter().filter(|l| l.name != "replica").map(|l| format!("{}={:?}", l.name, l.value)).collect();
        let samples = out.entry(key.join(",")).or_default();
        samples.extend(ts.samples.iter().map(|s| (s.timestamp, format!("{}", s.value))));
        for h in &ts.histograms {
            let (t, fh) = match norn_storeapi::histogram_from_proto(h).unwrap() {
                norn_storeapi::HistogramSample::Int(t, h) => (t, h.to_float()),
                norn_storeapi::HistogramSample::Float(t, h) => (t, h),
            };
            samples.push((t, strip_hint(fh)));
        }
        samples.sort_by_key(|p| p.0);
    }
    out
}

fn strip_hint(h: FloatHistogram) -> String {
    format!("{:?}", FloatHistogram { counter_reset_hint: Default::default(), ..h })
}

fn http_post_bytes(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status");
    let mut body = buf[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (code, body)
}

/// Undoes HTTP/1.1 chunked transfer encoding.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { break };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

#[test]
fn native_histograms_through_sidecar_and_receive_match_prometheus() {
    let Some(prom_bin) = require_tool("prometheus") else { return };
    let work = tempdir().unwrap();
    let prom_port = free_port();
    let _prom = start_prometheus(&prom_bin, work.path(), prom_port);

    let end = now_ms() / 1000 * 1000 - 60_000;
    let start = end - SAMPLES * STEP_MS;
    let data = dataset(start);
    // Prometheus 2.42's remote-write receiver reads integer histograms only (it takes the
    // deltas of a float histogram and rejects it), so float histograms go to receive alone
    // and are checked against what was written.
    let (floats, ints): (Vec<&Written>, Vec<&Written>) = data.iter().partition(|w| !w.floats.is_empty());
    let body = write_body(&ints);
    let (code, msg) = http_post(prom_port, "/api/v1/write", &RW_HEADERS, &body).unwrap();
    assert!(code == 200 || code == 204, "prometheus write: {code} {msg}");

    let mut recv = Receiver::new("recv", work.path(), &["--label=replica=\"r1\"".to_string()]);
    recv.start();
    let all: Vec<&Written> = data.iter().collect();
    let recv_write = http_post(recv.rw_port, "/api/v1/receive", &RW_HEADERS, &write_body(&all)).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stop = Shutdown::new();
    let (sc_grpc, sc_http) = (free_port(), free_port());
    let sidecar_args = norn_sidecar::Args {
        prometheus_url: format!("http://127.0.0.1:{prom_port}"),
        prometheus_ready_timeout: "30s".into(),
        get_config_interval: "500ms".into(),
        get_config_timeout: "2s".into(),
        request_timeout: "30s".into(),
        tsdb_path: work.path().join("prom-data"),
        grpc_address: format!("127.0.0.1:{sc_grpc}"),
        http_address: format!("127.0.0.1:{sc_http}"),
        objstore_config_file: None,
        objstore_config: None,
        upload_compacted: false,
        sync_interval: "500ms".into(),
        min_time: "0000-01-01T00:00:00Z".into(),
    };
    let sidecar = rt.spawn(norn_sidecar::run(sidecar_args, stop.clone()));
    assert!(wait_ready(sc_http, "/-/ready", Duration::from_secs(60)), "sidecar not ready");

    let sc_addr = format!("127.0.0.1:{sc_grpc}");
    let both = start_querier(&rt, vec![sc_addr.clone(), recv.grpc_addr()], &stop);
    // A querier over the deduplicating querier's StoreAPI: histograms cross a second hop
    // as float-histogram chunks.
    let stacked = start_querier(&rt, vec![format!("127.0.0.1:{}", both.1)], &stop);
    let queriers = [
        ("sidecar", start_querier(&rt, vec![sc_addr], &stop)),
        ("receive", start_querier(&rt, vec![recv.grpc_addr()], &stop)),
        ("both", both),
        ("stacked", stacked),
    ];

    let (paths, across) = query_paths(end);
    // Endpoints are discovered asynchronously (Info probes); retry until every querier
    // sees its endpoints, bounded.
    for (name, (q, _)) in &queriers {
        // The sidecar path is checked first; the receiver must have taken the write
        // before its queriers are.
        if *name == "receive" {
            let (code, msg) = &recv_write;
            assert!(*code == 200 || *code == 204, "receive write: {code} {msg}\n{}", recv.log_text());
        }
        let mut bad = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            bad = differences(prom_port, *q, &paths);
            if bad.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(bad.is_empty(), "querier over {name}: {} of {} differ:\n{}", bad.len(), paths.len(), bad.join("\n"));
    }

    // Federation in the text format: Prometheus 2.42 leaves native histograms out (the
    // format has no way to carry them) and keeps the floats; so must the querier.
    // Prometheus adds its external labels and an empty `instance`, the querier does not.
    let fed = format!("/federate?match[]={}", enc("{__name__=~\"e2e_(hist|counter)\"}"));
    let (code, prom_fed) = http_get(prom_port, &fed).unwrap();
    assert_eq!(code, 200, "{prom_fed}");
    let prom_fed = prom_fed.replace(",instance=\"\"", "").replace(",replica=\"r0\"", "");
    assert!(prom_fed.contains("e2e_counter{") && !prom_fed.contains("e2e_hist"), "{prom_fed}");
    for (name, (q, _)) in &queriers {
        assert_eq!(http_get(*q, &fed).unwrap(), (200, prom_fed.clone()), "federate on the querier over {name}");
    }

    // Float histograms: norn over the float twin answers as Prometheus over `int_s0`
    // (metric names aside).
    let twin = "e2e_fhist_twin";
    let orig = "e2e_hist{kind=\"int_s0\"}";
    for path in twin_paths(end) {
        let (pc, pb) = http_get(prom_port, &path.replace(&enc(twin), &enc(orig))).unwrap();
        let mut want = json(&pb);
        drop_names(&mut want);
        assert_eq!(pc, 200, "{path}: {pb}");
        assert!(!want["data"]["result"].as_array().is_none_or(Vec::is_empty), "{path}: {pb}");
        for (name, (q, _)) in &queriers[1..] {
            let (nc, nb) = http_get(*q, &path).unwrap();
            let mut got = json(&nb);
            drop_names(&mut got);
            assert_eq!((nc, &got["data"]), (200, &want["data"]), "{path} on the querier over {name}\n{nb}\n{pb}");
        }
    }

    // Federation in the protobuf format carries the histograms; the same families, minus
    // the labels Prometheus adds.
    let mut want_fams = federate_proto(prom_port, &fed);
    for f in &mut want_fams {
        for m in &mut f.metric {
            m.label.retain(|l| {
                !matches!((l.name.as_deref(), l.value.as_deref()), (Some("instance"), Some("")) | (Some("replica"), _))
            });
        }
    }
    assert!(want_fams.iter().any(|f| f.name.as_deref() == Some("e2e_hist")), "{want_fams:?}");
    for (name, (q, _)) in &queriers {
        assert_eq!(federate_proto(*q, &fed), want_fams, "protobuf federate on the querier over {name}");
    }

    // Interpolating functions: the same answer on every path, the same series as Prometheus.
    for p in &across {
        let (_, pb) = http_get(prom_port, p).unwrap();
        let answers: Vec<(&str, u16, serde_json::Value)> = queriers
            .iter()
            .map(|(name, (q, _))| {
                let (c, b) = http_get(*q, p).unwrap();
                (*name, c, json(&b))
            })
            .collect();
        for (name, code, v) in &answers {
            assert_eq!(*code, 200, "{p} on {name}: {v}");
            assert_eq!(v["data"], answers[0].2["data"], "{p}: {name} differs from {}", answers[0].0);
            assert_eq!(result_metrics(v), result_metrics(&json(&pb)), "{p}: series of {name} and prometheus");
        }
    }

    // Remote read of the querier returns Prometheus's histograms (as float histograms).
    let (mint, maxt) = (end - 1_800_000, end);
    let ints_re = "e2e_(hist|counter)";
    let want = remote_read(prom_port, ints_re, mint, maxt);
    assert_eq!(want.len(), ints.len(), "{:?}", want.keys());
    for (name, (q, _)) in &queriers {
        assert_eq!(remote_read(*q, ints_re, mint, maxt), want, "remote read through the querier over {name}");
    }
    // Sampled remote read (no streaming accepted). Prometheus 2.42 returns histogram
    // series without their histograms; current Prometheus fills `histograms`, as the
    // querier does, with the values the streamed chunks carry.
    let mut want_sampled = remote_read_sampled(prom_port, ints_re, mint, maxt);
    assert_eq!(want_sampled.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (k, v) in want_sampled.iter_mut() {
        if v.is_empty() {
            v.clone_from(&want[k]);
        }
    }
    assert_eq!(want_sampled, want);
    for (name, (q, _)) in &queriers {
        assert_eq!(remote_read_sampled(*q, ints_re, mint, maxt), want_sampled, "sampled remote read over {name}");
    }

    // Integer histograms go out of remote read as integer histograms: sampled answers with
    // integer fields, streamed answers as HISTOGRAM chunks, equal to what Prometheus stored.
    let int_hist = |port: u16, streamed: bool| -> Vec<pb::Histogram> {
        let req = pb::ReadRequest {
            queries: vec![pb::Query {
                start_timestamp_ms: mint,
                end_timestamp_ms: maxt,
                matchers: vec![
                    pb::LabelMatcher { r#type: 0, name: "__name__".into(), value: "e2e_hist".into() },
                    pb::LabelMatcher { r#type: 0, name: "kind".into(), value: "int_s0".into() },
                ],
                hints: None,
            }],
            accepted_response_types: if streamed {
                vec![pb::read_request::ResponseType::StreamedXorChunks as i32]
            } else {
                vec![]
            },
        };
        let body = snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap();
        let h = [("Content-Type", "application/x-protobuf"), ("Content-Encoding", "snappy")];
        let (code, raw) = http_post_bytes(port, "/api/v1/read", &h, &body);
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&raw));
        let mut out = Vec::new();
        if streamed {
            let mut buf = bytes::BytesMut::from(raw.as_slice());
            for f in norn_sidecar::prom::take_frames(&mut buf, "test").unwrap() {
                for c in f.chunked_series.into_iter().flat_map(|s| s.chunks) {
                    assert_eq!(c.r#type, pb::chunk::Encoding::Histogram as i32, "chunk type on {port}");
                    let chunk = norn_tsdb::chunkenc::Chunk::new(norn_tsdb::chunkenc::Encoding::Histogram, c.data);
                    for smp in chunk.iter().unwrap() {
                        let norn_tsdb::chunkenc::Sample::Histogram(t, h) = smp else { panic!("{smp:?}") };
                        if (mint..=maxt).contains(&t) {
                            out.push(histogram_to_proto(t, &h));
                        }
                    }
                }
            }
        } else {
            let resp = pb::ReadResponse::decode(snap::raw::Decoder::new().decompress_vec(&raw).unwrap().as_slice());
            out = resp.unwrap().results.into_iter().flat_map(|r| r.timeseries).flat_map(|t| t.histograms).collect();
        }
        // The reset hint is the chunk's, which each store cuts its own way.
        out.iter_mut().for_each(|h| h.reset_hint = 0);
        out
    };
    let want_ints = int_hist(prom_port, true);
    assert_eq!(want_ints.len(), 120);
    assert!(want_ints.iter().all(|h| matches!(h.count, Some(pb::histogram::Count::CountInt(_)))));
    for (name, (q, _)) in &queriers[1..3] {
        assert_eq!(int_hist(*q, true), want_ints, "streamed integer histograms through the querier over {name}");
        assert_eq!(int_hist(*q, false), want_ints, "sampled integer histograms through the querier over {name}");
    }

    // A second Prometheus 2.42 whose only data is `remote_read` from a querier answers as
    // the Prometheus that stored the data. (2.42's remote-read client asks for samples and
    // reads no histograms from them, whatever the server sends: native histograms through
    // it arrived in Prometheus 2.44; they are checked on the wire above.)
    for (name, (q, _)) in &queriers[1..3] {
        let rr_dir = work.path().join(format!("rr-{name}"));
        let read_url = format!("http://127.0.0.1:{q}/api/v1/read");
        let (_rr, rr_port) = norn_testkit::start_remote_read_prometheus(
            &prom_bin,
            &rr_dir,
            &read_url,
            &["--enable-feature=native-histograms"],
        );
        let log = rr_dir.join("prometheus.log");
        for sel in ["e2e_counter[5m]", "rate(e2e_counter[5m])"] {
            let p = format!("/api/v1/query?query={}&time={}", enc(sel), end / 1000);
            let (pc, pb) = http_get(prom_port, &p).unwrap();
            let (rc, rb) = http_get(rr_port, &p).unwrap();
            let want = json(&pb);
            assert_eq!(pc, 200, "{p}: {pb}");
            assert!(!want["data"]["result"].as_array().is_none_or(Vec::is_empty), "{p}: {pb}");
            assert_eq!(
                (rc, &json(&rb)["data"]),
                (200, &want["data"]),
                "{sel} through a Prometheus reading the querier over {name}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }

    // Float histograms: what was written, read back through the receiver.
    let mut want_f: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for w in &floats {
        let key: Vec<String> = w.labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
        want_f.insert(
            key.join(","),
            w.floats
                .iter()
                .filter(|(t, _)| (mint..=maxt).contains(t))
                .map(|(t, h)| (*t, strip_hint(h.clone())))
                .collect(),
        );
    }
    for (name, (q, _)) in &queriers[1..] {
        assert_eq!(
            remote_read(*q, "e2e_fhist.*", mint, maxt),
            want_f,
            "float histograms through the querier over {name}"
        );
    }

    // The querier's own StoreAPI passes the endpoints' chunks through: integer histograms stay
    // integer histogram chunks, float histograms float-histogram chunks.
    let (_, (_, q_grpc)) = &queriers[2];
    let types = rt.block_on(chunk_types(format!("http://127.0.0.1:{q_grpc}"), mint, maxt));
    let fh = norn_storeapi::thanos::chunk::Encoding::FloatHistogram as i32;
    let ih = norn_storeapi::thanos::chunk::Encoding::Histogram as i32;
    let xor = norn_storeapi::thanos::chunk::Encoding::Xor as i32;
    assert_eq!(types.get("e2e_hist"), Some(&[ih].into()), "{types:?}");
    assert_eq!(types.get("e2e_fhist"), Some(&[fh].into()), "{types:?}");
    assert_eq!(types.get("e2e_counter"), Some(&[xor].into()), "{types:?}");

    stop.cancel();
    let _ = rt.block_on(sidecar);
    recv.stop();
}

/// Chunk types per metric name in a querier's StoreAPI answer.
async fn chunk_types(addr: String, mint: i64, maxt: i64) -> BTreeMap<String, std::collections::BTreeSet<i32>> {
    use norn_storeapi::thanos::{LabelMatcher, SeriesRequest, series_response, store_client::StoreClient};
    let mut c = StoreClient::connect(addr).await.unwrap();
    let req = SeriesRequest {
        min_time: mint,
        max_time: maxt,
        matchers: vec![LabelMatcher { r#type: 2, name: "__name__".into(), value: "e2e_.*".into() }],
        ..Default::default()
    };
    let mut stream = c.series(req).await.unwrap().into_inner();
    let mut out: BTreeMap<String, std::collections::BTreeSet<i32>> = BTreeMap::new();
    while let Some(frame) = stream.message().await.unwrap() {
        let list = match frame.result {
            Some(series_response::Result::Series(s)) => vec![s],
            Some(series_response::Result::Batch(b)) => b.series,
            _ => continue,
        };
        for s in list {
            let name = s.labels.iter().find(|l| l.name == "__name__").map(|l| l.value.clone()).unwrap_or_default();
            out.entry(name).or_default().extend(s.chunks.iter().filter_map(|c| c.raw.as_ref().map(|r| r.r#type)));
        }
    }
    out
}
