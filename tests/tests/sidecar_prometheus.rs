//! `norn sidecar` beside a real Prometheus 2.42 scraping real targets on loopback (itself
//! and the sidecar), with 5 s blocks and compaction off:
//! - StoreAPI Series (remote read with streamed XOR chunks) returns what Prometheus's own
//!   query API returns for the same raw range;
//! - every block Prometheus persists appears in a FILESYSTEM bucket with a Thanos
//!   meta.json, readable identically by `promtool tsdb dump` and `norn tools tsdb dump`;
//! - Prometheus stopped: the sidecar goes not-ready; restarted: it recovers by itself
//!   and shipping resumes; a restarted sidecar uploads nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use norn_model::Labels;
use norn_service::Shutdown;
use norn_sidecar::{Args, run};
use norn_storeapi::thanos::info::InfoRequest;
use norn_storeapi::thanos::info::info_client::InfoClient;
use norn_storeapi::thanos::store_client::StoreClient;
use norn_storeapi::thanos::{LabelMatcher, LabelValuesRequest, SeriesRequest, series_response};
use norn_testkit::{ProcessGuard, free_port, http_get, norn_bin, require_tool, run_ok, tempdir, wait_ready};
use norn_tsdb::chunkenc::{Chunk, Encoding, Sample};

const BLOCK: &str = "5s";

struct Prom {
    _guard: ProcessGuard,
}

fn start_prometheus(bin: &Path, dir: &Path, port: u16, sidecar_http: u16, log: &Path) -> Prom {
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  external_labels:\n    cluster: e2e\n    replica: r0\n\
             scrape_configs:\n- job_name: prometheus\n  static_configs:\n  - targets: ['127.0.0.1:{port}']\n\
             - job_name: sidecar\n  static_configs:\n  - targets: ['127.0.0.1:{sidecar_http}']\n"
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--storage.tsdb.min-block-duration={BLOCK}"))
        .arg(format!("--storage.tsdb.max-block-duration={BLOCK}"))
        .arg("--storage.tsdb.retention.time=1d");
    let guard = ProcessGuard::spawn("prometheus", &mut cmd, log);
    assert!(wait_ready(port, "/-/ready", Duration::from_secs(60)), "prometheus not ready:\n{}", read(log));
    Prom { _guard: guard }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn sidecar_args(prom_port: u16, data: &Path, bucket: &Path, grpc: u16, http: u16) -> Args {
    Args {
        prometheus_url: format!("http://127.0.0.1:{prom_port}"),
        prometheus_ready_timeout: "30s".into(),
        get_config_interval: "500ms".into(),
        get_config_timeout: "2s".into(),
        request_timeout: "30s".into(),
        tsdb_path: data.to_path_buf(),
        grpc_address: format!("127.0.0.1:{grpc}"),
        http_address: format!("127.0.0.1:{http}"),
        objstore_config_file: None,
        objstore_config: Some(format!("type: FILESYSTEM\nconfig:\n  directory: {}\n", bucket.display())),
        upload_compacted: false,
        sync_interval: "500ms".into(),
        min_time: "0000-01-01T00:00:00Z".into(),
    }
}

/// Block ULIDs in the bucket whose meta.json is there (complete uploads).
fn bucket_blocks(bucket: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(bucket) else { return out };
    for e in rd.flatten() {
        let meta = e.path().join("meta.json");
        if let Ok(b) = std::fs::read(&meta) {
            out.insert(e.file_name().to_string_lossy().into_owned(), serde_json::from_slice(&b).unwrap());
        }
    }
    out
}

fn local_blocks(data: &Path) -> BTreeSet<String> {
    std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 26 && ulid::Ulid::from_string(n).is_ok())
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn metric(port: u16, name: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
}

fn lm(n: &str, v: &str) -> LabelMatcher {
    LabelMatcher { r#type: 0, name: n.into(), value: v.into() }
}

/// Series → samples in `[mint, maxt]` from the sidecar, keyed by labels without the
/// external labels.
async fn sidecar_series(grpc: u16, ms: Vec<LabelMatcher>, mint: i64, maxt: i64) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut c = StoreClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
    let req =
        SeriesRequest { min_time: mint, max_time: maxt, matchers: ms, response_batch_size: 64, ..Default::default() };
    let mut s = c.series(req).await.unwrap().into_inner();
    let mut out = BTreeMap::new();
    let mut prev: Option<Labels> = None;
    while let Some(r) = s.message().await.unwrap() {
        let batch = match r.result.unwrap() {
            series_response::Result::Series(x) => vec![x],
            series_response::Result::Batch(b) => b.series,
            other => panic!("unexpected {other:?}"),
        };
        for x in batch {
            let l = norn_storeapi::labels_from_proto(&x.labels).unwrap();
            assert!(prev.as_ref().is_none_or(|p| *p < l), "stream not sorted: {prev:?} then {l}");
            prev = Some(l.clone());
            assert_eq!(l.get("cluster"), Some("e2e"));
            assert_eq!(l.get("replica"), Some("r0"));
            let mut samples = Vec::new();
            for ch in x.chunks {
                let raw = ch.raw.unwrap();
                assert_eq!(raw.r#type, 0, "XOR");
                for smp in Chunk::new(Encoding::Xor, raw.data).iter().unwrap() {
                    let Sample::Float(t, v) = smp else { panic!("{smp:?}") };
                    if (mint..=maxt).contains(&t) {
                        samples.push((t, v));
                    }
                }
            }
            let key = l.to_builder().del("cluster").del("replica").build().to_string();
            out.insert(key, samples);
        }
    }
    out
}

/// `query?query=<sel>[range]&time=T` from Prometheus: raw samples in `[T-range, T]`.
fn prom_series(port: u16, selector: &str, range_s: i64, t_ms: i64) -> BTreeMap<String, Vec<(i64, f64)>> {
    let v = api(port, &format!("/api/v1/query?query={}&time={}", enc(&format!("{selector}[{range_s}s]")), secs(t_ms)));
    let mut out = BTreeMap::new();
    for s in v["data"]["result"].as_array().unwrap() {
        let m: BTreeMap<String, String> = serde_json::from_value(s["metric"].clone()).unwrap();
        let samples: Vec<(i64, f64)> = s["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
                (t, p[1].as_str().unwrap().parse::<f64>().unwrap())
            })
            .collect();
        out.insert(Labels::from_pairs(m.iter()).to_string(), samples);
    }
    out
}

fn enc(q: &str) -> String {
    q.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A successful Prometheus-API answer's JSON.
fn api(port: u16, path: &str) -> serde_json::Value {
    let (code, body) = http_get(port, path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{body}");
    v
}

/// A `query_range` result as `labels → [(t, value string)]`, with `drop` labels removed.
fn range_result(v: &serde_json::Value, drop: &[&str]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    for s in v["data"]["result"].as_array().unwrap() {
        let mut m: BTreeMap<String, String> = serde_json::from_value(s["metric"].clone()).unwrap();
        m.retain(|k, _| !drop.contains(&k.as_str()));
        let pts = s["values"].as_array().unwrap().iter().map(|p| (p[0].to_string(), p[1].to_string())).collect();
        out.insert(Labels::from_pairs(m.iter()).to_string(), pts);
    }
    out
}

/// `norn query` over the sidecar answers PromQL as Prometheus itself does.
fn querier_matches_prometheus(rt: &tokio::runtime::Runtime, sidecar_grpc: u16, prom_port: u16, t: i64) {
    let qhttp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let qgrpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let qport = qhttp.local_addr().unwrap().port();
    qhttp.set_nonblocking(true).unwrap();
    qgrpc.set_nonblocking(true).unwrap();
    let args = norn_query::Args {
        endpoints: vec![format!("127.0.0.1:{sidecar_grpc}")],
        replica_labels: vec!["replica".into()],
        endpoint_refresh_interval: Duration::from_millis(500),
        ..Default::default()
    };
    let stop = Shutdown::new();
    let q = rt.spawn({
        let stop = stop.clone();
        async move {
            let h = tokio::net::TcpListener::from_std(qhttp).unwrap();
            let g = tokio::net::TcpListener::from_std(qgrpc).unwrap();
            norn_query::run_with_listeners(args, h, g, stop).await
        }
    });
    let probe = format!("/api/v1/query?query=up&time={}", secs(t));
    wait_until(
        "the querier to see the sidecar",
        Duration::from_secs(60),
        || matches!(http_get(qport, &probe), Ok((200, b)) if b.contains("\"job\"")),
    );
    // Raw samples (range vectors at one instant).
    let strip = |v: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let mut m: BTreeMap<String, String> = serde_json::from_value(s["metric"].clone()).unwrap();
                m.remove("cluster");
                (Labels::from_pairs(m.iter()).to_string(), s["values"].clone())
            })
            .collect()
    };
    for sel in ["up[30s]", "prometheus_http_requests_total[30s]"] {
        let path = format!("/api/v1/query?query={}&time={}", enc(sel), secs(t));
        assert_eq!(strip(&api(qport, &path)), strip(&api(prom_port, &path)), "{sel}");
    }
    // PromQL over the sidecar's data. (rate() is left out: near a series' first sample
    // the engine's extrapolation differs from Prometheus 2.42's, with equal raw data.)
    for (expr, back) in [
        ("up", 30_000),
        ("prometheus_tsdb_head_series", 30_000),
        ("count by (job) (up)", 30_000),
        ("max_over_time(prometheus_http_requests_total[5s])", 30_000),
        ("sum by (job) (prometheus_http_requests_total)", 30_000),
    ] {
        let (start, end) = (t - back, t);
        let path = format!("/api/v1/query_range?query={}&start={}&end={}&step=1", enc(expr), secs(start), secs(end));
        let theirs = range_result(&api(prom_port, &path), &[]);
        let ours = range_result(&api(qport, &path), &["cluster"]);
        assert!(!theirs.is_empty(), "{expr}: Prometheus returned nothing");
        let diff: Vec<String> = theirs
            .iter()
            .filter(|(k, v)| ours.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}\n  prometheus {v:?}\n  norn query {:?}", ours.get(k)))
            .collect();
        assert!(diff.is_empty() && ours.len() == theirs.len(), "{expr}: norn query differs:\n{}", diff.join("\n"));
    }

    // Label APIs through the querier: Prometheus's names plus the external ones.
    let window = format!("start={}&end={}", secs(t - 30_000), secs(t));
    let names = |port| -> BTreeSet<String> {
        serde_json::from_value(api(port, &format!("/api/v1/labels?{window}"))["data"].clone()).unwrap()
    };
    let (ours, theirs) = (names(qport), names(prom_port));
    assert!(theirs.is_subset(&ours), "{theirs:?} not in {ours:?}");
    assert!(ours.difference(&theirs).all(|n| n == "cluster" || n == "replica"), "{ours:?}");
    let jobs = |port| api(port, &format!("/api/v1/label/job/values?{window}"))["data"].clone();
    assert_eq!(jobs(qport), jobs(prom_port));
    stop.cancel();
    rt.block_on(q).unwrap().unwrap();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn same_samples(a: &[(i64, f64)], b: &[(i64, f64)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && (x.1 == y.1 || (x.1.is_nan() && y.1.is_nan())))
}

fn dumps_agree(bucket: &Path, scratch: &Path) {
    // promtool wants a `wal/` in the directory it dumps: dump a copy of the bucket.
    let copy = scratch.join("bucket-copy");
    std::fs::create_dir_all(copy.join("wal")).unwrap();
    for (id, _) in bucket_blocks(bucket) {
        let to = copy.join(&id);
        std::fs::create_dir_all(to.join("chunks")).unwrap();
        for rel in ["meta.json", "index"] {
            std::fs::copy(bucket.join(&id).join(rel), to.join(rel)).unwrap();
        }
        for e in std::fs::read_dir(bucket.join(&id).join("chunks")).unwrap().flatten() {
            std::fs::copy(e.path(), to.join("chunks").join(e.file_name())).unwrap();
        }
    }
    let Some(promtool) = require_tool("promtool") else { return };
    let theirs = run_ok(Command::new(promtool).args(["tsdb", "dump", copy.to_str().unwrap()])).stdout;
    let ours = run_ok(Command::new(norn_bin()).args(["tools", "tsdb", "dump", copy.to_str().unwrap()])).stdout;
    let theirs = String::from_utf8(theirs).unwrap();
    assert!(theirs.lines().count() > 100, "promtool dumped too little:\n{theirs}");
    let ours = String::from_utf8(ours).unwrap();
    if ours != theirs {
        let (a, b): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), theirs.lines().collect());
        let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
        let around = |l: &[&str]| l[at.saturating_sub(3)..(at + 4).min(l.len())].join("\n");
        let blocks: Vec<String> = bucket_blocks(bucket)
            .iter()
            .map(|(id, m)| format!("{id} {}..{} {}", m["minTime"], m["maxTime"], m["compaction"]["sources"]))
            .collect();
        panic!(
            "norn and promtool dumps differ: {} vs {} lines, first at line {at}\nnorn:\n{}\npromtool:\n{}\nblocks:\n{}",
            a.len(),
            b.len(),
            around(&a),
            around(&b),
            blocks.join("\n")
        );
    }
}

#[test]
fn sidecar_serves_and_ships_a_real_prometheus() {
    let Some(prom_bin) = require_tool("prometheus") else { return };
    let tmp = tempdir().unwrap();
    let data = tmp.path().join("data");
    let bucket = tmp.path().join("bucket");
    let (pport, grpc, http) = (free_port(), free_port(), free_port());
    let plog = tmp.path().join("prometheus.log");
    let prom = start_prometheus(&prom_bin, tmp.path(), pport, http, &plog);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Shutdown::new();
    let sidecar = rt.spawn(run(sidecar_args(pport, &data, &bucket, grpc, http), stop.clone()));
    assert!(wait_ready(http, "/-/ready", Duration::from_secs(60)), "sidecar not ready");

    // Info: external labels from Prometheus's configuration.
    let info = rt.block_on(async {
        InfoClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap().info(InfoRequest {}).await.unwrap()
    });
    let info = info.into_inner();
    assert_eq!(info.component_type, "sidecar");
    let ext = norn_storeapi::labels_from_proto(&info.label_sets[0].labels).unwrap();
    assert_eq!(ext.to_string(), r#"{cluster="e2e", replica="r0"}"#);

    // Blocks get cut (5 s ranges) and shipped, with a Thanos meta.json.
    wait_until("two blocks in the bucket", Duration::from_secs(90), || bucket_blocks(&bucket).len() >= 2);
    for (id, m) in bucket_blocks(&bucket) {
        assert_eq!(m["ulid"], id.as_str());
        assert_eq!(m["version"], 1);
        assert_eq!(m["thanos"]["source"], "sidecar");
        assert_eq!(m["thanos"]["labels"], serde_json::json!({"cluster": "e2e", "replica": "r0"}));
        assert_eq!(m["thanos"]["downsample"]["resolution"], 0);
        assert!(m["compaction"]["level"] == 1, "{m}");
        assert!(bucket.join(&id).join("index").exists() && bucket.join(&id).join("chunks/000001").exists());
    }

    // Series over StoreAPI equals Prometheus's own answer for the same raw range (head
    // and persisted blocks both covered: 40 s back with 5 s blocks).
    // Prometheus keeps scraping while the two sides are asked one after the other, and a
    // scrape's samples carry its start time but land when it ends: compared up to `t`,
    // once every target has a scrape newer than `t` (scrapes of one target run one after
    // another, so all older ones are complete then).
    std::thread::sleep(Duration::from_secs(3));
    let t = now_ms() - 1500;
    let range_s = 40;
    wait_until("a scrape of every target after the compared range", Duration::from_secs(60), || {
        let v = api(pport, &format!("/api/v1/query?query={}", enc("timestamp(up)")));
        let newest: Vec<f64> = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["value"][1].as_str()?.parse().ok())
            .collect();
        newest.len() == 2 && newest.iter().all(|&ts| ts * 1000.0 > t as f64)
    });
    for sel in [
        r#"up"#,
        r#"prometheus_tsdb_head_series"#,
        "prometheus_http_requests_total",
        r#"{job="sidecar",__name__=~"norn_sidecar_.*"}"#,
    ] {
        let want = prom_series(pport, sel, range_s, t);
        let ms = match sel {
            "up" => vec![lm("__name__", "up")],
            "prometheus_tsdb_head_series" => vec![lm("__name__", sel), lm("replica", "r0")],
            "prometheus_http_requests_total" => vec![lm("__name__", sel)],
            _ => vec![
                lm("job", "sidecar"),
                LabelMatcher { r#type: 2, name: "__name__".into(), value: "norn_sidecar_.*".into() },
            ],
        };
        let got = rt.block_on(sidecar_series(grpc, ms, t - range_s * 1000, t));
        assert!(!want.is_empty(), "{sel}: Prometheus returned nothing");
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{sel}");
        for (k, w) in &want {
            assert!(w.len() >= 10 || k.contains("handler"), "{k}: only {} samples", w.len());
            assert!(same_samples(&got[k], w), "{k}:\nsidecar    {:?}\nprometheus {:?}", got[k], w);
        }
    }
    // Evaluate between two scrapes of the `prometheus` job, so no rate() window edge
    // falls on one of its samples (range-boundary semantics differ between Prometheus
    // versions; this compares data, not that).
    let last = prom_series(pport, r#"up{job="prometheus"}"#, 10, t).into_values().next().unwrap();
    querier_matches_prometheus(&rt, grpc, pport, last.last().unwrap().0 - 500);
    // Figures for the report (debug build; not asserted): every series of one job.
    let started = Instant::now();
    let all = rt.block_on(sidecar_series(grpc, vec![lm("job", "prometheus")], 0, t));
    let ours = started.elapsed();
    let started = Instant::now();
    let (code, body) =
        http_get(pport, &format!("/api/v1/query?query={}&time={}", enc(r#"{job="prometheus"}[10m]"#), secs(t)))
            .unwrap();
    let theirs = started.elapsed();
    assert_eq!(code, 200);
    eprintln!(
        "sidecar Series {{job=\"prometheus\"}}: {} series, {} samples in {ours:?} (Prometheus query API: {} bytes in {theirs:?})",
        all.len(),
        all.values().map(Vec::len).sum::<usize>(),
        body.len()
    );
    // A matcher on another replica: nothing.
    assert!(rt.block_on(sidecar_series(grpc, vec![lm("__name__", "up"), lm("replica", "r1")], 0, t)).is_empty());
    // Label values through the HTTP API, external labels answered here.
    let jobs = rt.block_on(async {
        let mut c = StoreClient::connect(format!("http://127.0.0.1:{grpc}")).await.unwrap();
        let req = LabelValuesRequest { label: "job".into(), start: t - 60_000, end: t, ..Default::default() };
        let jobs = c.label_values(req.clone()).await.unwrap().into_inner().values;
        let rep = c.label_values(LabelValuesRequest { label: "replica".into(), ..req }).await.unwrap().into_inner();
        assert_eq!(rep.values, ["r0"]);
        jobs
    });
    assert_eq!(jobs, ["prometheus", "sidecar"]);

    // Prometheus goes away: not ready. Back on the same data dir: ready again, shipping resumes.
    drop(prom);
    wait_until("sidecar not ready", Duration::from_secs(60), || matches!(http_get(http, "/-/ready"), Ok((503, _))));
    assert_eq!(metric(http, "norn_sidecar_prometheus_up"), 0.0);
    let before = bucket_blocks(&bucket);
    let prom = start_prometheus(&prom_bin, tmp.path(), pport, http, &plog);
    wait_until("sidecar ready again", Duration::from_secs(60), || {
        wait_ready(http, "/-/ready", Duration::from_millis(100))
    });
    wait_until("new blocks after the restart", Duration::from_secs(90), || {
        bucket_blocks(&bucket).len() >= before.len() + 2
    });

    // The sidecar restarts: nothing is uploaded twice (state file), newer blocks still are.
    stop.cancel();
    rt.block_on(sidecar).unwrap().unwrap();
    let uploads_so_far = bucket_blocks(&bucket);
    let stop = Shutdown::new();
    let sidecar = rt.spawn(run(sidecar_args(pport, &data, &bucket, grpc, http), stop.clone()));
    assert!(wait_ready(http, "/-/ready", Duration::from_secs(60)), "restarted sidecar not ready");
    wait_until("a block shipped by the restarted sidecar", Duration::from_secs(90), || {
        bucket_blocks(&bucket).len() > uploads_so_far.len()
    });
    let after = bucket_blocks(&bucket);
    for (id, m) in &uploads_so_far {
        assert_eq!(after[id]["thanos"]["upload_time"], m["thanos"]["upload_time"], "{id} uploaded again");
    }
    assert_eq!(metric(http, "norn_sidecar_shipper_uploads_total") as usize, after.len() - uploads_so_far.len());
    // Every bucket block is a distinct Prometheus block, and no two cover the same range.
    let ranges: BTreeSet<(i64, i64)> =
        after.values().map(|m| (m["minTime"].as_i64().unwrap(), m["maxTime"].as_i64().unwrap())).collect();
    assert_eq!(ranges.len(), after.len(), "overlapping uploads: {after:#?}");
    let shipped: Vec<String> =
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(data.join("thanos.shipper.json")).unwrap()).unwrap()
            ["uploaded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
    let local = local_blocks(&data);
    assert!(shipped.iter().all(|id| local.contains(id) && after.contains_key(id)), "{shipped:?}");
    stop.cancel();
    rt.block_on(sidecar).unwrap().unwrap();
    drop(prom);

    dumps_agree(&bucket, tmp.path());
}
