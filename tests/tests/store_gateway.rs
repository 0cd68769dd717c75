//! `norn store` over a FILESYSTEM bucket of promtool-made blocks (two overlapping sets,
//! Thanos meta sections with an external label), queried through `norn query`: every
//! query of a table answers as Prometheus 2.42 does over a copy of the same blocks. A
//! block with a corrupt index is skipped with a log line naming it, a deletion-marked
//! block is not served, and the rest still answers.
//!
//! Over S3 (a real `moto_server`) the gateway lists, downloads indexes and reads chunk
//! ranges, answering as over the same blocks in a FILESYSTEM bucket.
//!
//! `norn standalone`'s embedded gateway keeps history queryable after local retention
//! removed the block it uploaded.

mod receive_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use norn_model::Labels;
use norn_testkit::{ProcessGuard, free_port, http_get, norn_bin, require_tool, run_ok, tempdir, wait_ready};
use receive_support::{eq, now_ms, post, series, write_body};

/// Start of the data (s): a fixed time in the past, so every block is "history".
const T0: i64 = 1_700_000_000;

fn enc(q: &str) -> String {
    q.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn api(port: u16, path: &str) -> serde_json::Value {
    let (code, body) = http_get(port, path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `labels → value(s)` of a query answer (vector, matrix or scalar).
fn result(v: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let data = &v["data"];
    if data["resultType"] == "scalar" {
        return vec![("scalar".into(), data["result"].clone())];
    }
    let mut out: Vec<(String, serde_json::Value)> = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let m: std::collections::BTreeMap<String, String> = serde_json::from_value(s["metric"].clone()).unwrap();
            let vals = if s.get("values").is_some() { s["values"].clone() } else { s["value"].clone() };
            (Labels::from_pairs(m.iter()).to_string(), vals)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// OpenMetrics text: gauges `g{instance, job}` every `step` s over `[from, to)`, values
/// a function of the time, plus `extra` series on their own.
fn openmetrics(from: i64, to: i64, step: i64, seed: f64, extra: &str) -> String {
    let mut s = String::from("# TYPE g gauge\n");
    for (inst, job) in [("a", "api"), ("b", "api"), ("c", "db")] {
        let mut t = from;
        while t < to {
            let v = seed + ((t - T0) as f64 / 60.0).sin() * 10.0 + inst.len() as f64 * (t % 7) as f64;
            s.push_str(&format!("g{{instance=\"{inst}\",job=\"{job}\"}} {v} {t}\n"));
            t += step;
        }
    }
    s.push_str(extra);
    s.push_str("# EOF\n");
    s
}

/// Runs promtool's backfill of `text` into `out`; returns the block directories made.
fn backfill(promtool: &Path, work: &Path, name: &str, text: &str) -> Vec<std::path::PathBuf> {
    let input = work.join(format!("{name}.om"));
    std::fs::write(&input, text).unwrap();
    let out = work.join(name);
    run_ok(Command::new(promtool).args(["tsdb", "create-blocks-from", "openmetrics", "-q"]).arg(&input).arg(&out));
    let mut v: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Puts a block into the bucket under `id` with a Thanos meta section carrying `ext`.
fn put_in_bucket(block: &Path, bucket: &Path, id: &str, ext: &[(&str, &str)]) -> std::path::PathBuf {
    let dst = bucket.join(id);
    copy_dir(&block.join("chunks"), &dst.join("chunks"));
    std::fs::copy(block.join("index"), dst.join("index")).unwrap();
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(block.join("meta.json")).unwrap()).unwrap();
    meta["ulid"] = id.into();
    let labels: serde_json::Map<String, serde_json::Value> =
        ext.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    meta["thanos"] =
        serde_json::json!({"version": 1, "labels": labels, "downsample": {"resolution": 0}, "source": "test"});
    std::fs::write(dst.join("meta.json"), serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    dst
}

/// Whether two answers hold the same series with the same timestamps and values equal
/// within 1e-9 relative (2.42 and 3.x sum in different orders; Kahan summation in 3.x).
fn same(a: &[(String, serde_json::Value)], b: &[(String, serde_json::Value)]) -> bool {
    fn points(v: &serde_json::Value) -> Vec<(f64, String)> {
        let arr = v.as_array().unwrap();
        if arr.first().is_some_and(|x| x.is_array()) {
            arr.iter().flat_map(points).collect()
        } else {
            vec![(arr[0].as_f64().unwrap(), arr[1].as_str().unwrap().to_string())]
        }
    }
    let close = |x: &str, y: &str| {
        x == y
            || match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
                _ => false,
            }
    };
    a.len() == b.len()
        && a.iter().zip(b).all(|((la, va), (lb, vb))| {
            let (pa, pb) = (points(va), points(vb));
            la == lb && pa.len() == pb.len() && pa.iter().zip(&pb).all(|(x, y)| x.0 == y.0 && close(&x.1, &y.1))
        })
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

#[test]
fn store_gateway_answers_like_prometheus_over_the_same_blocks() {
    let Some(promtool) = require_tool("promtool") else { return };
    let Some(prom_bin) = require_tool("prometheus") else { return };
    let tmp = tempdir().unwrap();
    let work = tmp.path();

    // Set A: 6 h of three gauges every minute. Set B overlaps A's middle 2 h with samples
    // at other timestamps for one of them, and adds a series of its own.
    let a = backfill(&promtool, work, "a", &openmetrics(T0, T0 + 6 * 3600, 60, 0.0, ""));
    let mut extra = String::from("# TYPE only_b gauge\n");
    for i in 0..120 {
        extra.push_str(&format!("only_b{{k=\"v\"}} {} {}\n", i * 2, T0 + 2 * 3600 + i * 60 + 30));
    }
    let b_text = openmetrics(T0 + 2 * 3600 + 30, T0 + 4 * 3600, 60, 5.0, &extra);
    // Only instance "a" in B, so that series has two interleaved sources.
    let b_text: String = b_text
        .lines()
        .filter(|l| !l.starts_with("g{instance=\"b\"") && !l.starts_with("g{instance=\"c\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let b = backfill(&promtool, work, "b", &b_text);
    assert!(a.len() >= 3 && !b.is_empty(), "blocks: {a:?} {b:?}");

    // The bucket: every block with cluster="c1"; plus a corrupt copy and a deleted one.
    let bucket = work.join("bucket");
    for blk in a.iter().chain(&b) {
        put_in_bucket(blk, &bucket, blk.file_name().unwrap().to_str().unwrap(), &[("cluster", "c1")]);
    }
    let broken_id = ulid::Ulid::generate().to_string();
    let broken = put_in_bucket(&a[0], &bucket, &broken_id, &[("cluster", "broken")]);
    let mut idx = std::fs::read(broken.join("index")).unwrap();
    let mid = idx.len() / 2;
    for x in &mut idx[mid..mid + 8] {
        *x ^= 0xa5;
    }
    std::fs::write(broken.join("index"), idx).unwrap();
    let deleted_id = ulid::Ulid::generate().to_string();
    let deleted = put_in_bucket(&a[1], &bucket, &deleted_id, &[("cluster", "deleted")]);
    std::fs::write(
        deleted.join("deletion-mark.json"),
        format!(r#"{{"id":"{deleted_id}","deletion_time":1,"version":1}}"#),
    )
    .unwrap();

    // Prometheus over a copy of the good blocks, scraping nothing.
    let pdata = work.join("prom-data");
    for blk in a.iter().chain(&b) {
        copy_dir(blk, &pdata.join(blk.file_name().unwrap()));
    }
    let cfg = work.join("prometheus.yml");
    std::fs::write(&cfg, "global:\n  scrape_interval: 1m\n").unwrap();
    let pport = free_port();
    let _prom = ProcessGuard::spawn(
        "prometheus",
        Command::new(&prom_bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", pdata.display()))
            .arg("--storage.tsdb.retention.time=100y")
            .arg(format!("--web.listen-address=127.0.0.1:{pport}")),
        &work.join("prometheus.log"),
    );

    let (shttp, sgrpc) = (free_port(), free_port());
    let slog = work.join("store.log");
    let _store = ProcessGuard::spawn(
        "norn store",
        Command::new(norn_bin())
            .arg("store")
            .arg(format!("--data-dir={}", work.join("store-cache").display()))
            .arg(format!("--objstore.config=type: FILESYSTEM\nconfig:\n  directory: {}\n", bucket.display()))
            // Off by default (as Thanos, blocks load from their index-header alone); on here
            // so the block with a damaged index is found and skipped at load.
            .arg("--store.verify-index-on-load=true")
            .arg(format!("--http-address=127.0.0.1:{shttp}"))
            .arg(format!("--grpc-address=127.0.0.1:{sgrpc}")),
        &slog,
    );
    let store_log = || std::fs::read_to_string(&slog).unwrap_or_default();
    assert!(wait_ready(shttp, "/-/ready", Duration::from_secs(60)), "store not ready:\n{}", store_log());
    let log = store_log();
    assert!(
        log.lines().any(|l| l.contains("skipping broken block") && l.contains(&broken_id)),
        "no log line for the broken block {broken_id}:\n{log}"
    );
    let (_, metrics) = http_get(shttp, "/metrics").unwrap();
    let loaded = a.len() + b.len();
    assert!(metrics.contains(&format!("norn_bucket_store_blocks_loaded {loaded}")), "{metrics}");

    let (qhttp, qgrpc) = (free_port(), free_port());
    let qlog = work.join("query.log");
    let _query = ProcessGuard::spawn(
        "norn query",
        Command::new(norn_bin())
            .arg("query")
            .arg(format!("--http-address=127.0.0.1:{qhttp}"))
            .arg(format!("--grpc-address=127.0.0.1:{qgrpc}"))
            .arg(format!("--endpoint=127.0.0.1:{sgrpc}"))
            // Stripped like a replica label, so answers carry Prometheus's labels.
            .arg("--query.replica-label=cluster"),
        &qlog,
    );
    let query_log = || std::fs::read_to_string(&qlog).unwrap_or_default();
    assert!(wait_ready(qhttp, "/-/ready", Duration::from_secs(60)), "query not ready:\n{}", query_log());
    assert!(wait_ready(pport, "/-/ready", Duration::from_secs(60)), "prometheus not ready");
    let at = T0 + 3 * 3600;
    wait_until("the store's blocks visible to the querier", Duration::from_secs(60), || {
        let v = api(qhttp, &format!("/api/v1/query?query=g&time={at}"));
        v["data"]["result"].as_array().is_some_and(|r| !r.is_empty())
    });

    let end = T0 + 6 * 3600;
    let cases: Vec<String> = [
        ("g", T0 + 10),
        ("g", at),
        ("g", end + 200),
        ("g{instance=~\"a|c\"}", at + 45),
        ("only_b", at),
        ("sum by (job) (g)", at + 3600),
        ("count_over_time(g[1h])", at),
        ("max_over_time({__name__=~\"g|only_b\"}[30m])", at + 900),
        ("g{cluster=\"other\"}", at),
        ("count(g)", T0 - 3600),
    ]
    .iter()
    // Evaluation times are 17 s off every sample (samples sit on whole and half minutes):
    // 2.42 closes range selectors and the lookback on the left, 3.x (and Norn) do not.
    .map(|(q, t)| format!("/api/v1/query?query={}&time={}", enc(q), t + 17))
    .chain(
        [
            ("g", T0 - 600, end + 600, 300),
            ("delta(g[5m])", T0, end, 120),
            ("sum by (job) (avg_over_time(g[10m]))", T0 + 3600, T0 + 5 * 3600, 600),
            ("g{instance=\"a\"}", T0 + 2 * 3600 - 120, T0 + 2 * 3600 + 600, 15),
            ("only_b * 2", T0, end, 60),
        ]
        .iter()
        .map(|(q, s, e, step)| {
            format!("/api/v1/query_range?query={}&start={}&end={}&step={step}", enc(q), s + 17, e + 17)
        }),
    )
    .collect();
    for path in &cases {
        let theirs = api(pport, path);
        let ours = api(qhttp, path);
        let (ours, theirs) = (result(&ours), result(&theirs));
        assert!(
            same(&ours, &theirs),
            "{path}: norn query over norn store differs from Prometheus\nours: {ours:?}\ntheirs: {theirs:?}"
        );
    }
    let (_, metrics) = http_get(shttp, "/metrics").unwrap();
    let figure = |name: &str| {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.split(' ').nth(1)).unwrap_or("?").to_string()
    };
    eprintln!(
        "{} queries: {} Series calls, {} ranged GETs, {} bytes read from the bucket",
        cases.len(),
        figure("norn_bucket_store_series_requests_total"),
        figure("norn_bucket_store_chunk_fetches_total"),
        figure("norn_bucket_store_chunk_fetched_bytes_total")
    );
    // Not vacuous: most of the table has data.
    let nonempty = cases.iter().filter(|p| !result(&api(pport, p)).is_empty()).count();
    assert!(nonempty >= cases.len() - 3, "{nonempty} of {} cases have data", cases.len());

    // Neither the broken block's nor the deleted block's external labels are served.
    let v = api(qhttp, &format!("/api/v1/label/cluster/values?start={T0}&end={end}"));
    let values = v["data"].as_array().cloned().unwrap_or_default();
    assert!(!values.iter().any(|x| x == "broken" || x == "deleted"), "{v}");
    let v = api(qhttp, &format!("/api/v1/label/__name__/values?start={T0}&end={end}"));
    assert_eq!(v["data"], serde_json::json!(["g", "only_b"]), "{v}");
}

/// Block directories (ULID names) under `dir`, one level down per tenant.
fn local_blocks(tsdb: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(tsdb).into_iter().flatten().flatten() {
        for b in std::fs::read_dir(t.path()).into_iter().flatten().flatten() {
            let n = b.file_name().to_string_lossy().into_owned();
            if ulid::Ulid::from_string(&n).is_ok() && b.path().join("meta.json").is_file() {
                out.push(n);
            }
        }
    }
    out
}

#[test]
fn standalone_history_survives_local_retention() {
    let tmp = tempdir().unwrap();
    let work = tmp.path();
    let data = work.join("sa");
    let (http, grpc, rw) = (free_port(), free_port(), free_port());
    let log = work.join("standalone.log");
    let _sa = ProcessGuard::spawn(
        "norn standalone",
        Command::new(norn_bin())
            .arg("standalone")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--http-address=127.0.0.1:{http}"))
            .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
            .arg(format!("--remote-write.address=127.0.0.1:{rw}"))
            // A block cut from 4 h of data is older than 1 h: shipped, then deleted locally.
            .arg("--tsdb.retention=1h")
            .arg("--tsdb.maintenance-interval=200ms")
            .arg("--store.sync-block-duration=200ms"),
        &log,
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_ready(http, "/-/ready", Duration::from_secs(60)), "standalone not ready:\n{}", log_text());

    let end = now_ms() / 60_000 * 60_000;
    let samples: Vec<(i64, f64)> = (0..240).map(|i| (end - (239 - i) * 60_000, i as f64)).collect();
    let (code, msg) = post(rw, None, &write_body(&[(vec![("__name__", "hist"), ("job", "b")], samples)]));
    assert_eq!(code, 204, "{msg}");

    // The cut block reaches the bucket and leaves the receiver's disk.
    let bucket = data.join("bucket");
    let tsdb = data.join("tsdb");
    let mut shipped = String::new();
    wait_until("a block shipped and removed by retention", Duration::from_secs(60), || {
        let in_bucket: Vec<String> = std::fs::read_dir(&bucket)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("meta.json").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let local = local_blocks(&tsdb);
        match in_bucket.iter().find(|b| !local.contains(b)) {
            Some(b) => {
                shipped = b.clone();
                true
            }
            None => false,
        }
    });
    // The store syncs on its own 200 ms schedule, not necessarily before retention ran.
    wait_until(&format!("the store's sync log naming block {shipped}"), Duration::from_secs(60), || {
        log_text().contains(&shipped)
    });

    // Every sample is still there: the old ones from the bucket.
    let q = format!("/api/v1/query?query={}&time={}", enc("count_over_time(hist[4h])"), end / 1000);
    wait_until("the store gateway serving the removed block", Duration::from_secs(60), || {
        api(http, &q)["data"]["result"][0]["value"][1] == "240"
    });
    let v = api(http, &format!("/api/v1/query?query=hist&time={}", (end - 230 * 60_000) / 1000));
    assert_eq!(v["data"]["result"][0]["value"][1], "9", "{v}");
    assert!(!v.to_string().contains("receive_replica"), "{v}");
}

/// Starts `norn store` on `bucket_yaml`; returns its process, gRPC address and log path.
fn start_store(work: &Path, name: &str, bucket_yaml: &str) -> (ProcessGuard, String) {
    let (http, grpc) = (free_port(), free_port());
    let log = work.join(format!("{name}.log"));
    let g = ProcessGuard::spawn(
        name,
        Command::new(norn_bin())
            .arg("store")
            .arg(format!("--data-dir={}", work.join(format!("{name}-cache")).display()))
            .arg(format!("--objstore.config={bucket_yaml}"))
            .arg(format!("--http-address=127.0.0.1:{http}"))
            .arg(format!("--grpc-address=127.0.0.1:{grpc}")),
        &log,
    );
    let ready = wait_ready(http, "/-/ready", Duration::from_secs(60));
    assert!(ready, "{name} not ready:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    (g, format!("127.0.0.1:{grpc}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bucket_answers_as_a_filesystem_bucket() {
    let Some(promtool) = require_tool("promtool") else { return };
    let Some(moto) = require_tool("moto_server") else { return };
    let tmp = tempdir().unwrap();
    let work = tmp.path();
    let port = free_port();
    let _moto = ProcessGuard::spawn(
        "moto_server",
        Command::new(moto).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
        &work.join("moto.log"),
    );
    assert!(wait_ready(port, "/", Duration::from_secs(60)), "moto_server not ready");
    let s3_yaml = format!(
        "type: S3\nconfig:\n  bucket: norn\n  endpoint: 127.0.0.1:{port}\n  insecure: true\n  access_key: test\n  secret_key: test\n  region: us-east-1\nprefix: history\n"
    );
    let create = Command::new("python3")
        .args(["-c", "import sys, boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:' + sys.argv[1], aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='norn')", &port.to_string()])
        .output()
        .expect("python3");
    assert!(create.status.success(), "{}", String::from_utf8_lossy(&create.stderr));

    // Blocks with series big enough for several chunks per series and segment reads of
    // more than one coalesced range.
    let blocks = backfill(&promtool, work, "a", &openmetrics(T0, T0 + 6 * 3600, 15, 1.0, ""));
    let fs_bucket = work.join("bucket");
    let s3 = norn_objstore::Bucket::from_yaml(&s3_yaml).unwrap();
    for blk in &blocks {
        let id = blk.file_name().unwrap().to_str().unwrap().to_string();
        let dst = put_in_bucket(blk, &fs_bucket, &id, &[("cluster", "c1")]);
        let mut files = vec!["index".to_string()];
        for e in std::fs::read_dir(dst.join("chunks")).unwrap() {
            files.push(format!("chunks/{}", e.unwrap().file_name().to_string_lossy()));
        }
        files.push("meta.json".into());
        for f in files {
            s3.upload_file(&format!("{id}/{f}"), &dst.join(&f)).await.unwrap();
        }
    }
    let (_fs, fs_addr) =
        start_store(work, "store-fs", &format!("type: FILESYSTEM\nconfig:\n  directory: {}\n", fs_bucket.display()));
    let (_s3, s3_addr) = start_store(work, "store-s3", &s3_yaml);
    let from_fs = series(&fs_addr, vec![eq("__name__", "g")], T0 * 1000, (T0 + 6 * 3600) * 1000).await.unwrap();
    let from_s3 = series(&s3_addr, vec![eq("__name__", "g")], T0 * 1000, (T0 + 6 * 3600) * 1000).await.unwrap();
    assert_eq!(from_fs.len(), 3);
    assert!(from_fs.iter().all(|g| g.samples.len() == 6 * 240 && g.label("cluster") == Some("c1")), "{from_fs:?}");
    assert_eq!(from_s3, from_fs);
}
