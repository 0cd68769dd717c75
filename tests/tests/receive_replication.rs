//! Three `norn receive` processes on loopback with replication factor 3 behind one
//! hashring file; a real Prometheus (Debian package) remote-writes what it scrapes, and
//! a test writer sends its own series with a tenant header and records which writes were
//! acknowledged. Every series lands on all three; one receiver is killed and writes keep
//! succeeding; it restarts, replays its WAL and serves its data; no acknowledged sample
//! is lost.
//!
//! Prometheus is configured with `headers: {THANOS-TENANT: tenant-a}`. Debian's 2.42
//! build (2.42.0+ds) never sends configured remote-write headers, not even made-up
//! ones like `X-Foo` (checked against a header-dumping server): the config parses and
//! `/api/v1/status/config` lists the headers, but the binary has no
//! `injectHeadersRoundTripper` (upstream's wrapper that sets them; `sigV4RoundTripper`
//! from the same function is there). Debian patches OpenTelemetry out of that code,
//! the likely cause. So Prometheus writes through a small
//! loopback gateway that sets the tenant header when it is missing, as an
//! authenticating proxy in front of receivers would; an upstream build's own header
//! passes through unchanged. Either way every scraped series must land in
//! `--tsdb.path/tenant-a` with `tenant_id="tenant-a"`.

mod receive_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use norn_testkit::receive::Receiver;
use norn_testkit::{ProcessGuard, free_port, http_get, require_tool, wait_ready};
use receive_support::{Got, HeaderProxy, eq, now_ms, post, series, write_body};

const TENANT: &str = "tenant-a";

fn key(g: &Got) -> Vec<(String, String)> {
    g.labels.iter().filter(|(n, _)| n != "receive_replica").cloned().collect()
}

async fn by_series(addr: &str, job: &str, mint: i64, maxt: i64) -> BTreeMap<Vec<(String, String)>, Vec<(i64, f64)>> {
    let got = series(addr, vec![eq("job", job)], mint, maxt)
        .await
        .unwrap_or_else(|e| panic!("StoreAPI Series on {addr}: {e}"));
    // A StoreAPI answers with whole chunks, so samples newer than `maxt` come along (as
    // many as had arrived when each receiver was asked): only the range asked is compared.
    got.iter()
        .map(|g| (key(g), g.samples.iter().copied().filter(|&(t, _)| (mint..=maxt).contains(&t)).collect()))
        .collect()
}

type Snapshot = BTreeMap<Vec<(String, String)>, Vec<(i64, f64)>>;

/// The first difference between r0's snapshot and another receiver's, if any. Samples are
/// compared bitwise, so that equal staleness markers (NaN) compare equal.
fn first_difference(snaps: &[Snapshot]) -> Option<String> {
    let bits = |x: &[(i64, f64)]| x.iter().map(|&(t, v)| (t, v.to_bits())).collect::<Vec<_>>();
    for (i, s) in snaps.iter().enumerate().skip(1) {
        let a: BTreeSet<_> = snaps[0].keys().collect();
        let b: BTreeSet<_> = s.keys().collect();
        if a != b {
            let only0: Vec<_> = a.difference(&b).collect();
            let only_i: Vec<_> = b.difference(&a).collect();
            return Some(format!("series sets of r0 and r{i} differ: only on r0 {only0:?}, only on r{i} {only_i:?}"));
        }
        for (k, v) in &snaps[0] {
            if bits(v) != bits(&s[k]) {
                return Some(format!("samples of {k:?} differ between r0 and r{i}:\n  r0: {v:?}\n  r{i}: {:?}", s[k]));
            }
        }
    }
    None
}

/// The receivers' log lines about lagging or failed replica writes.
fn replica_log_lines(rs: &[Receiver]) -> Vec<String> {
    rs.iter()
        .flat_map(|r| {
            let name = r.name.clone();
            r.log_text()
                .lines()
                .filter(|l| l.contains("replica write") || l.contains("quorum"))
                .map(|l| format!("{name}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Polls until `f` returns true or `secs` pass.
async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("timed out waiting for {what}");
}

fn prom_metric(port: u16, name: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").unwrap();
    body.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_receivers_rf3_with_prometheus_survive_a_kill() {
    let Some(prom_bin) = require_tool("prometheus") else { return };
    let work = norn_testkit::tempdir().unwrap();
    let mut rs = Receiver::ring(work.path(), 3, 3, "receive_replica");

    // Prometheus scrapes the receivers' /metrics and remote-writes into r0 through the
    // tenant gateway.
    let gateway = HeaderProxy::start(rs[0].rw_port, "THANOS-TENANT", TENANT);
    let prom_port = free_port();
    let targets: Vec<String> = rs.iter().map(|r| format!("'127.0.0.1:{}'", r.http_port)).collect();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: receivers\n    static_configs:\n      - targets: [{}]\nremote_write:\n  - url: http://127.0.0.1:{}/api/v1/receive\n    headers:\n      THANOS-TENANT: {TENANT}\n    queue_config:\n      batch_send_deadline: 500ms\n      min_backoff: 100ms\n      max_backoff: 1s\n",
        targets.join(", "),
        gateway.port
    );
    let cfg_file = work.path().join("prometheus.yml");
    std::fs::write(&cfg_file, cfg).unwrap();
    let prom_log = work.path().join("prometheus.log");
    let _prom = ProcessGuard::spawn(
        "prometheus",
        Command::new(prom_bin)
            .arg(format!("--config.file={}", cfg_file.display()))
            .arg(format!("--storage.tsdb.path={}", work.path().join("prom-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        &prom_log,
    );
    assert!(wait_ready(prom_port, "/-/ready", Duration::from_secs(60)), "prometheus not ready");

    // Our own writer through r0 records which samples were acknowledged.
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, port) = (acked.clone(), stop.clone(), rs[0].rw_port);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = now_ms();
                let body =
                    write_body(&[(vec![("__name__", "norn_e2e_acked"), ("job", "writer")], vec![(t, t as f64)])]);
                if post(port, Some(TENANT), &body).0 == 204 {
                    acked.lock().unwrap().push(t);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // Every scraped series reaches all three receivers.
    let addrs: Vec<String> = rs.iter().map(Receiver::grpc_addr).collect();
    let writer_tenant = |a: &str| {
        let a = a.to_string();
        async move {
            let got = series(&a, vec![eq("job", "writer")], 0, i64::MAX).await.unwrap();
            got.iter().all(|g| g.label("tenant_id") == Some(TENANT))
        }
    };
    eventually(60, "scraped series on every receiver", async || {
        for a in &addrs {
            if by_series(a, "receivers", 0, i64::MAX).await.len() < 50 {
                return false;
            }
        }
        true
    })
    .await;
    // Compared up to a moment already past: what Prometheus scraped before `t0` reaches
    // the receivers over remote write (batches, retries) some time later, and each
    // receiver is asked at a different moment. So the three answers are polled until they
    // agree (bounded); receivers that stay different fail the test.
    let t0 = now_ms();
    let deadline = Instant::now() + Duration::from_secs(60);
    let snaps = loop {
        let snaps = [
            by_series(&addrs[0], "receivers", 0, t0).await,
            by_series(&addrs[1], "receivers", 0, t0).await,
            by_series(&addrs[2], "receivers", 0, t0).await,
        ];
        match first_difference(&snaps) {
            None => break snaps,
            Some(diff) if Instant::now() > deadline => panic!(
                "replicas still differ 60 s after {t0}: {diff}\nreceiver log lines about replicas:\n{}",
                replica_log_lines(&rs).join("\n")
            ),
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    assert!(snaps[0].len() >= 50, "only {} series", snaps[0].len());
    for k in snaps[0].keys() {
        let t = k.iter().find(|(n, _)| n == "tenant_id").map(|(_, v)| v.as_str());
        assert_eq!(t, Some(TENANT), "scraped series without the tenant label: {k:?}");
    }
    assert!(gateway.forwarded.load(Ordering::Relaxed) > 0, "no request went through the gateway");
    eprintln!(
        "gateway: {} remote-write requests, {} already carried THANOS-TENANT",
        gateway.forwarded.load(Ordering::Relaxed),
        gateway.had_header.load(Ordering::Relaxed)
    );
    // Each receiver keeps the tenant's data in its own TSDB directory, and no other.
    for r in &rs {
        let wal = r.data_dir.join(TENANT).join("wal");
        let segs = std::fs::read_dir(&wal).map(|d| d.count()).unwrap_or(0);
        assert!(segs > 0, "{}: no WAL segments in {}", r.name, wal.display());
        assert!(!r.data_dir.join("default-tenant").exists(), "{}: data landed in default-tenant", r.name);
    }
    for a in &addrs {
        assert!(writer_tenant(a).await, "writer series on {a} without tenant label {TENANT}");
    }
    // Kill r2 without warning; writes through r0 keep succeeding (quorum 2 of 3).
    let acked_before_kill: Vec<i64> = acked.lock().unwrap().clone();
    rs[2].kill();
    let killed_at = now_ms();
    // How fast the writer gets through depends on the machine: polled, not timed.
    eventually(60, "20 acknowledged writes after the kill", async || {
        acked.lock().unwrap().iter().filter(|&&t| t > killed_at).count() > 20
    })
    .await;
    eventually(60, "Prometheus samples on r1 after the kill", async || {
        by_series(&addrs[1], "receivers", killed_at + 2000, i64::MAX).await.values().any(|v| !v.is_empty())
    })
    .await;
    assert_eq!(prom_metric(prom_port, "prometheus_remote_storage_samples_failed_total"), 0.0);

    // r2 comes back on the same ports and data dir, replays its WAL and serves what it had.
    rs[2].start();
    let log = rs[2].log_text();
    assert!(log.contains("tenant TSDB opened"), "no WAL replay logged:\n{log}");
    let r2 = by_series(&addrs[2], "writer", 0, i64::MAX).await;
    let r2_samples: BTreeSet<i64> = r2.values().flatten().map(|s| s.0).collect();
    let missing: Vec<&i64> = acked_before_kill.iter().filter(|t| !r2_samples.contains(t)).collect();
    assert!(missing.is_empty(), "r2 lost {} acknowledged samples after restart: {missing:?}", missing.len());
    // And it receives new writes again.
    let restarted_at = now_ms();
    eventually(60, "new samples on the restarted receiver", async || {
        by_series(&addrs[2], "writer", restarted_at, i64::MAX).await.values().any(|v| !v.is_empty())
    })
    .await;
    // r0 retries a peer that failed only after a backoff (up to 5 s): writes acknowledged
    // before r2 got its first new sample may be missing there.
    let resumed_at = now_ms();

    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // No acknowledged sample is lost: each is on at least a quorum (2) of receivers,
    // and on all three unless it was written while r2 was down. A write is answered once
    // every replica has it (or after a bounded wait), so this should hold at once; it
    // is polled (bounded) so that a replica write still in flight on a slow machine
    // does not count as lost.
    let all: Vec<i64> = acked.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut per_node = Vec::new();
        for a in &addrs {
            let s = by_series(a, "writer", 0, i64::MAX).await;
            per_node.push(s.values().flatten().map(|s| s.0).collect::<BTreeSet<i64>>());
        }
        let mut lost = Vec::new();
        for t in &all {
            let n = per_node.iter().filter(|s| s.contains(t)).count();
            let down = *t > killed_at - 1000 && *t < (restarted_at + 6000).max(resumed_at);
            if n < 2 || !(down || n == 3) {
                lost.push(format!("{t} on {n} receivers"));
            }
        }
        if lost.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged samples missing on receivers: {lost:?}\nreceiver log lines about replicas:\n{}",
            replica_log_lines(&rs).join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("receiver log lines about replicas:\n{}", replica_log_lines(&rs).join("\n"));
    let (_, m) = http_get(rs[0].http_port, "/metrics").unwrap();
    assert!(m.contains("norn_receive_forward_requests_total{result=\"success\"}"), "{m}");
    for r in rs.iter_mut() {
        assert!(r.stop().is_some_and(|s| s.success()), "{} did not shut down cleanly:\n{}", r.name, r.log_text());
    }
}
