//! Replicas stay equal under ordered writes (issue 5). Three `norn receive` with
//! replication factor 3; several client threads write through r0, each owning some
//! series and sending them as many small batches, a series' next batch only after the
//! previous one was answered (as Prometheus's remote write does per shard). Every
//! receiver must then hold exactly the same samples.
//!
//! Before the router waited for all replicas, r0 answered at quorum (2 of 3) while the
//! third replica's write was still running; the next batch could reach that replica
//! first and its late batch was then dropped as out of order at commit, silently and
//! counted as appended. Under this load that happened on most runs.

mod receive_support;

use std::collections::BTreeMap;
use std::thread;

use norn_testkit::http_get;
use norn_testkit::receive::Receiver;
use receive_support::{Got, eq, now_ms, post, series, write_body};

const TENANT: &str = "tenant-eq";
const WORKERS: usize = 12;
const SERIES_PER_WORKER: usize = 20;
const BATCHES: i64 = 60;
const STEP_MS: i64 = 1000;

type Data = BTreeMap<Vec<(String, String)>, Vec<(i64, f64)>>;

fn by_series(got: &[Got]) -> Data {
    got.iter()
        .map(|g| {
            let key = g.labels.iter().filter(|(n, _)| n != "receive_replica").cloned().collect();
            (key, g.samples.clone())
        })
        .collect()
}

/// Sum of a metric's samples whose line starts with `prefix` on a receiver's /metrics.
fn metric(r: &Receiver, prefix: &str) -> f64 {
    let (_, body) = http_get(r.http_port, "/metrics").unwrap();
    body.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Series that differ between `a` and `b`, with a description of the first few.
fn diff(a: &Data, b: &Data) -> (usize, String) {
    let mut n = 0;
    let mut out = String::new();
    for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let (x, y) = (a.get(k).map(Vec::as_slice).unwrap_or(&[]), b.get(k).map(Vec::as_slice).unwrap_or(&[]));
        if x != y {
            n += 1;
            if n <= 3 {
                let missing: Vec<i64> = x.iter().filter(|s| !y.contains(s)).map(|s| s.0).collect();
                let extra: Vec<i64> = y.iter().filter(|s| !x.contains(s)).map(|s| s.0).collect();
                out.push_str(&format!(
                    "\n  {k:?}: {} vs {} samples; only in first at {missing:?}, only in second at {extra:?}",
                    x.len(),
                    y.len()
                ));
            }
        }
    }
    (n, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rf3_replicas_hold_the_same_samples_after_ordered_writes() {
    let work = norn_testkit::tempdir().unwrap();
    let rs = Receiver::ring(work.path(), 3, 3, "receive_replica");

    // Each worker owns its series and sends batch b (one sample per series at
    // base + b * STEP_MS) only after batch b - 1 was answered.
    let base = now_ms() - BATCHES * STEP_MS;
    let port = rs[0].rw_port;
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            thread::spawn(move || -> Result<(), String> {
                let names: Vec<(String, String)> =
                    (0..SERIES_PER_WORKER).map(|i| (format!("w{w:02}"), format!("s{i:02}"))).collect();
                for b in 0..BATCHES {
                    let t = base + b * STEP_MS;
                    let input: Vec<_> = names
                        .iter()
                        .enumerate()
                        .map(|(i, (wn, sn))| {
                            let ls = vec![
                                ("__name__", "rxw_equal"),
                                ("job", "rxw"),
                                ("s", sn.as_str()),
                                ("worker", wn.as_str()),
                            ];
                            (ls, vec![(t, (b * 1000 + i as i64) as f64)])
                        })
                        .collect();
                    let (code, body) = post(port, Some(TENANT), &write_body(&input));
                    if code != 200 && code != 204 {
                        return Err(format!("worker {w} batch {b}: HTTP {code}: {body}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for (w, h) in workers.into_iter().enumerate() {
        h.join().unwrap_or_else(|_| panic!("worker {w} panicked")).unwrap();
    }

    // Every write was answered after all three replicas had it: no waiting needed.
    let mut data = Vec::new();
    for r in &rs {
        let got = series(&r.grpc_addr(), vec![eq("job", "rxw")], 0, i64::MAX)
            .await
            .unwrap_or_else(|e| panic!("StoreAPI Series on {}: {e}", r.name));
        data.push(by_series(&got));
    }
    let want: Data = (0..WORKERS)
        .flat_map(|w| {
            (0..SERIES_PER_WORKER).map(move |i| {
                let key = vec![
                    ("__name__".to_string(), "rxw_equal".to_string()),
                    ("job".into(), "rxw".into()),
                    ("s".into(), format!("s{i:02}")),
                    ("tenant_id".into(), TENANT.into()),
                    ("worker".into(), format!("w{w:02}")),
                ];
                let samples = (0..BATCHES).map(|b| (base + b * STEP_MS, (b * 1000 + i as i64) as f64)).collect();
                (key, samples)
            })
        })
        .collect();
    let stats: Vec<String> = rs
        .iter()
        .map(|r| {
            format!(
                "{}: appended {} out_of_order {} replica_failures {}",
                r.name,
                metric(r, "norn_receive_samples_total{outcome=\"appended\"}"),
                metric(r, "norn_receive_samples_total{outcome=\"out_of_order\"}"),
                metric(r, "norn_receive_replica_failures_total"),
            )
        })
        .collect();
    let mut failures = Vec::new();
    for (i, d) in data.iter().enumerate() {
        let (n, detail) = diff(&want, d);
        if n > 0 {
            failures.push(format!("r{i} differs from what was written in {n} of {} series:{detail}", want.len()));
        }
    }
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), stats.join("\n"));
    for r in &rs {
        assert_eq!(metric(r, "norn_receive_samples_total{outcome=\"out_of_order\"}"), 0.0, "{}", stats.join("\n"));
        assert_eq!(
            metric(r, "norn_receive_samples_total{outcome=\"appended\"}"),
            (WORKERS * SERIES_PER_WORKER) as f64 * BATCHES as f64,
            "{}",
            stats.join("\n")
        );
    }
}
