//! `norn compact` over a FILESYSTEM bucket: five 2h blocks of one stream (plus a broken
//! block) → one pass merges the four of the first, finished 8h range into one level-2
//! block and marks them for deletion (the newest 2h block waits, as in Thanos); the broken
//! block is logged by id and left alone. `norn store` + `norn query` over the bucket then
//! answer a set of queries exactly as they did before compaction.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use norn_model::Labels;
use norn_testkit::{ProcessGuard, free_port, http_get, norn_bin, run_ok, tempdir, wait_ready};
use norn_tsdb::block::BlockWriter;
use norn_tsdb::series::encode_float_chunks;

/// Start of the data (s), aligned to 8h so the first four 2h blocks fill one 8h range.
const T0: i64 = 1_699_977_600;
const H: i64 = 3600;

fn bucket_yaml(bucket: &Path) -> String {
    format!("--objstore.config=type: FILESYSTEM\nconfig:\n  directory: {}\n", bucket.display())
}

/// Writes a 2h block starting at `T0 + start_h` into the bucket directory with a Thanos
/// meta section (`cluster="c1"`): gauges `g{instance}` every minute, and `sparse` only in
/// blocks with an even start hour divisible by 4.
fn write_block(bucket: &Path, start_h: i64) -> String {
    let (mint, maxt) = ((T0 + start_h * H) * 1000, (T0 + (start_h + 2) * H) * 1000);
    let mut w = BlockWriter::new(bucket, mint, maxt).unwrap();
    let mut series: Vec<(Labels, f64)> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, inst)| (Labels::from_pairs([("__name__", "g"), ("instance", inst)]), i as f64))
        .collect();
    if start_h % 4 == 0 {
        series.push((Labels::from_pairs([("__name__", "sparse"), ("k", "v")]), 7.0));
    }
    series.sort_by(|a, b| a.0.cmp(&b.0));
    for (l, seed) in &series {
        let samples =
            (mint..maxt).step_by(60_000).map(|t| (t, seed * 100.0 + ((t / 60_000) as f64 / 7.0).sin() * 10.0));
        w.add_series(l, &encode_float_chunks(samples, 120)).unwrap();
    }
    let meta = w.finish().unwrap();
    let id = meta.ulid.to_string();
    let p = bucket.join(&id).join("meta.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    m["thanos"] = serde_json::json!({"version": 1, "labels": {"cluster": "c1"}, "downsample": {"resolution": 0}, "source": "test"});
    std::fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    id
}

fn enc(q: &str) -> String {
    q.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// A store gateway and a querier over the bucket.
struct Stack {
    _store: ProcessGuard,
    _query: ProcessGuard,
    qhttp: u16,
}

fn start_stack(work: &Path, bucket: &Path, name: &str) -> Stack {
    let (shttp, sgrpc) = (free_port(), free_port());
    let slog = work.join(format!("store-{name}.log"));
    let store = ProcessGuard::spawn(
        "norn store",
        Command::new(norn_bin())
            .arg("store")
            .arg(format!("--data-dir={}", work.join(format!("store-cache-{name}")).display()))
            .arg(bucket_yaml(bucket))
            .arg(format!("--http-address=127.0.0.1:{shttp}"))
            .arg(format!("--grpc-address=127.0.0.1:{sgrpc}")),
        &slog,
    );
    assert!(
        wait_ready(shttp, "/-/ready", Duration::from_secs(60)),
        "store not ready:\n{}",
        std::fs::read_to_string(&slog).unwrap_or_default()
    );
    let (qhttp, qgrpc) = (free_port(), free_port());
    let qlog = work.join(format!("query-{name}.log"));
    let query = ProcessGuard::spawn(
        "norn query",
        Command::new(norn_bin())
            .arg("query")
            .arg(format!("--http-address=127.0.0.1:{qhttp}"))
            .arg(format!("--grpc-address=127.0.0.1:{qgrpc}"))
            .arg(format!("--endpoint=127.0.0.1:{sgrpc}")),
        &qlog,
    );
    assert!(
        wait_ready(qhttp, "/-/ready", Duration::from_secs(60)),
        "query not ready:\n{}",
        std::fs::read_to_string(&qlog).unwrap_or_default()
    );
    // The querier learns the store's time range asynchronously: wait for data.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = http_get(qhttp, &format!("/api/v1/query?query=g&time={}", T0 + H)).unwrap();
        if body.contains("\"instance\"") {
            break;
        }
        assert!(Instant::now() < end, "no data through the querier: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Stack { _store: store, _query: query, qhttp }
}

/// The `data` of each query's answer.
fn answers(port: u16) -> Vec<(String, serde_json::Value)> {
    let range = |q: &str, step: i64| {
        format!("/api/v1/query_range?query={}&start={}&end={}&step={step}", enc(q), T0, T0 + 10 * H)
    };
    let paths = [
        format!("/api/v1/query?query=g&time={}", T0 + 3 * H),
        format!("/api/v1/query?query={}&time={}", enc("count_over_time(g[9h])"), T0 + 9 * H),
        format!("/api/v1/query?query={}&time={}", enc("sparse"), T0 + 4 * H + 30),
        range("g", 300),
        range("sum by (instance) (rate(g[10m]))", 600),
        range("max_over_time(sparse[1h])", 900),
        format!("/api/v1/series?match[]=sparse&start={}&end={}", T0, T0 + 10 * H),
        format!("/api/v1/label/instance/values?start={}&end={}", T0, T0 + 10 * H),
    ];
    paths
        .iter()
        .map(|p| {
            let (code, body) = http_get(port, p).unwrap();
            assert_eq!(code, 200, "{p}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            (p.clone(), v["data"].clone())
        })
        .collect()
}

#[test]
fn compact_merges_an_8h_range_and_answers_stay_the_same() {
    let tmp = tempdir().unwrap();
    let work = tmp.path();
    let bucket = work.join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let sources: Vec<String> = [0, 2, 4, 6].iter().map(|&h| write_block(&bucket, h)).collect();
    let newest = write_block(&bucket, 8);
    let broken = ulid::Ulid::generate().to_string();
    std::fs::create_dir_all(bucket.join(&broken)).unwrap();
    std::fs::write(bucket.join(&broken).join("meta.json"), b"{\"ulid\": 12").unwrap();

    let before = {
        let s = start_stack(work, &bucket, "before");
        answers(s.qhttp)
    };
    let non_empty = before.iter().filter(|(_, d)| d["result"].as_array().is_some_and(|r| !r.is_empty())).count();
    assert!(non_empty >= 5, "queries should return data: {before:?}");

    let log = work.join("compact.log");
    let out = run_ok(
        Command::new(norn_bin())
            .arg("compact")
            .arg(format!("--data-dir={}", work.join("compact-data").display()))
            .arg(bucket_yaml(&bucket))
            .arg(format!("--http-address=127.0.0.1:{}", free_port()))
            .arg("--downsampling.disable"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    std::fs::write(&log, &stderr).unwrap();
    assert!(
        stderr.lines().any(|l| l.contains("broken block left alone") && l.contains(&broken)),
        "no log line naming the broken block {broken}:\n{stderr}"
    );

    let dirs: Vec<String> = std::fs::read_dir(&bucket)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| ulid::Ulid::from_string(n).is_ok())
        .collect();
    for id in &sources {
        let mark: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bucket.join(id).join("deletion-mark.json")).unwrap()).unwrap();
        assert_eq!((mark["id"].as_str(), mark["version"].as_i64()), (Some(id.as_str()), Some(1)));
        assert!(mark["deletion_time"].as_i64().is_some_and(|t| t > T0), "{mark}");
    }
    for id in [&newest, &broken] {
        assert!(!bucket.join(id).join("deletion-mark.json").exists(), "{id} must not be marked");
    }
    let new: Vec<&String> = dirs.iter().filter(|d| !sources.contains(d) && **d != newest && **d != broken).collect();
    assert_eq!(new.len(), 1, "one new block expected: {dirs:?}\n{stderr}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bucket.join(new[0]).join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["minTime"].as_i64(), Some(T0 * 1000));
    assert_eq!(meta["maxTime"].as_i64(), Some((T0 + 8 * H) * 1000));
    assert_eq!(meta["compaction"]["level"], 2);
    assert_eq!(meta["compaction"]["sources"].as_array().unwrap().len(), 4);
    assert_eq!(meta["thanos"]["source"], "compactor");
    assert_eq!(meta["thanos"]["labels"], serde_json::json!({"cluster": "c1"}));
    assert_eq!(meta["thanos"]["downsample"]["resolution"], 0);
    assert_eq!(meta["stats"]["numSeries"], 4);

    // The store skips deletion-marked blocks: the answers come from the merged block now.
    let s = start_stack(work, &bucket, "after");
    let after = answers(s.qhttp);
    for ((p, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{p} changed by compaction");
    }
}

/// With `--wait` the compactor keeps running, serves its readiness and metrics, compacts
/// blocks that arrive later, and stops on SIGTERM with status 0.
#[test]
fn compact_wait_serves_http_and_compacts_later_blocks() {
    let tmp = tempdir().unwrap();
    let work = tmp.path();
    let bucket = work.join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let port = free_port();
    let log = work.join("compact.log");
    let mut c = ProcessGuard::spawn(
        "norn compact",
        Command::new(norn_bin())
            .arg("compact")
            .arg("--wait")
            .arg("--wait-interval=200ms")
            .arg(format!("--data-dir={}", work.join("compact-data").display()))
            .arg(bucket_yaml(&bucket))
            .arg(format!("--http-address=127.0.0.1:{port}")),
        &log,
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_ready(port, "/-/ready", Duration::from_secs(60)), "not ready:\n{}", read_log());
    let (code, _) = http_get(port, "/-/healthy").unwrap();
    assert_eq!(code, 200);

    // Blocks uploaded while it runs are compacted at a later pass. Each appears in the
    // bucket whole (renamed in), so no pass sees a half-written meta.json.
    let staging = work.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let sources: Vec<String> = [0, 2, 4, 6, 8].iter().map(|&h| write_block(&staging, h)).collect();
    for id in &sources {
        std::fs::rename(staging.join(id), bucket.join(id)).unwrap();
    }
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = http_get(port, "/metrics").unwrap();
        if metrics.contains("norn_compact_group_compactions_total 1") {
            assert!(metrics.contains("norn_compact_blocks_marked_total 4"), "{metrics}");
            break;
        }
        assert!(Instant::now() < end, "no compaction:\n{metrics}\n{}", read_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(sources[..4].iter().all(|id| bucket.join(id).join("deletion-mark.json").exists()));
    assert!(c.terminate(Duration::from_secs(60)), "did not stop:\n{}", read_log());
    assert_eq!(c.try_wait().and_then(|s| s.code()), Some(0));
}
