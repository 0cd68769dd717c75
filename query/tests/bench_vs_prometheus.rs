//! Range-query latency: Debian Prometheus alone on promtool-written blocks against
//! `norn query` over one (RF=1) and three (RF=3, deduplicated) StoreAPI endpoints serving
//! the very same blocks. Prints medians and ratios; asserts nothing about timings.
//!
//! Run: `cargo test --release -p norn-query --test bench_vs_prometheus -- --ignored --nocapture`

mod common;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FakeStore, enc, serve_store, start_querier};
use norn_model::Labels;
use norn_tsdb::chunkenc::Sample;
use tokio_util::sync::CancellationToken;

const T0_S: i64 = 1_700_000_000;
const JOBS: usize = 10;
const INSTANCES: usize = 50;
const SAMPLES: i64 = 1440; // 6 h at 15 s

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn approx_eq(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::String(x), V::String(y)) => match (x.parse::<f64>(), y.parse::<f64>()) {
            (Ok(p), Ok(q)) => p == q || (p - q).abs() <= 1e-9 * p.abs().max(q.abs()),
            _ => x == y,
        },
        (V::Array(x), V::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| approx_eq(p, q)),
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| approx_eq(v, w)))
        }
        _ => a == b,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Medians (ms) of `runs` GETs of `path` against each base URL, interleaved so that load
/// from other processes hits all targets alike; and the last body of each.
async fn time_gets(bases: &[&str], path: &str, runs: usize) -> Vec<(f64, String)> {
    let client = reqwest::Client::new();
    let mut times = vec![Vec::new(); bases.len()];
    let mut bodies = vec![String::new(); bases.len()];
    for round in 0..runs + 2 {
        for (i, base) in bases.iter().enumerate() {
            let t = Instant::now();
            let r = client.get(format!("{base}{path}")).send().await.unwrap();
            assert!(r.status().is_success());
            bodies[i] = r.text().await.unwrap();
            if round >= 2 {
                times[i].push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    times.into_iter().map(median).zip(bodies).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run in release with --ignored --nocapture"]
async fn range_query_latency_vs_prometheus_and_dedup_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let om = tmp.path().join("bench.om");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&om).unwrap());
        writeln!(f, "# TYPE bench_requests counter").unwrap();
        for j in 0..JOBS {
            for i in 0..INSTANCES {
                let mut v = 0u64;
                for k in 0..SAMPLES {
                    v += ((j + i + k as usize) % 7) as u64;
                    let t = T0_S * 1000 + k * 15_000 + 7;
                    writeln!(
                        f,
                        "bench_requests_total{{instance=\"i{i}\",job=\"j{j}\"}} {v} {}.{:03}",
                        t / 1000,
                        t % 1000
                    )
                    .unwrap();
                }
            }
        }
        writeln!(f, "# EOF").unwrap();
    }
    let data_dir = tmp.path().join("prom");
    let out =
        Command::new("promtool").args(["tsdb", "create-blocks-from", "openmetrics"]).arg(&om).arg(&data_dir).output();
    let out = out.expect("promtool");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut all: std::collections::BTreeMap<Labels, Vec<(i64, f64)>> = Default::default();
    for e in std::fs::read_dir(&data_dir).unwrap() {
        let p = e.unwrap().path();
        if !p.join("meta.json").exists() {
            continue;
        }
        let b = norn_tsdb::block::Block::open(&p).unwrap();
        for s in b.select_all(i64::MIN, i64::MAX).unwrap() {
            let v = all.entry(s.labels.clone()).or_default();
            for smp in s.samples(i64::MIN, i64::MAX) {
                if let Sample::Float(t, x) = smp.unwrap() {
                    v.push((t, x));
                }
            }
        }
    }
    let data: Arc<common::Data> = Arc::new(
        all.into_iter()
            .map(|(l, mut s)| {
                s.sort_by_key(|p| p.0);
                (l, s)
            })
            .collect(),
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = tmp.path().join("prometheus.yml");
    std::fs::write(&cfg, "global:\n  scrape_interval: 1h\n").unwrap();
    let _prom = Kill(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", data_dir.display()))
            .args(["--storage.tsdb.retention.time=100y", &format!("--web.listen-address=127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = format!("http://127.0.0.1:{port}");
    for _ in 0..1200 {
        if reqwest::get(format!("{prom}/-/ready")).await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stop = CancellationToken::new();
    let mut eps = Vec::new();
    for r in 0..3 {
        eps.push(
            serve_store(FakeStore::new(Labels::from_pairs([("replica", format!("r{r}"))]), data.clone()), stop.clone())
                .await
                .to_string(),
        );
    }
    let mk = |eps: Vec<String>| norn_query::Args {
        endpoints: eps,
        replica_labels: vec!["replica".into()],
        ..Default::default()
    };
    let rf1 = start_querier(mk(eps[..1].to_vec())).await;
    let rf3 = start_querier(mk(eps.clone())).await;
    let (n1, n3) = (format!("http://{}", rf1.http), format!("http://{}", rf3.http));

    let (s, e) = (T0_S + 600, T0_S + SAMPLES * 15);
    let queries = [
        ("sum by (job) (rate(bench_requests_total[5m]))", 60),
        ("rate(bench_requests_total{job=\"j3\"}[5m])", 60),
        ("bench_requests_total{job=\"j1\"}", 15),
    ];
    println!(
        "| query | step | Prometheus ms | norn RF=1 ms | norn RF=3 ms | RF=1 / Prom | RF=3 / Prom | RF=3 / RF=1 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (q, step) in queries {
        let path = format!("/api/v1/query_range?query={}&start={s}&end={e}&step={step}", enc(q));
        let mut res = time_gets(&[&prom, &n1, &n3], &path, 15).await.into_iter();
        let (p, pb) = res.next().unwrap();
        let (a, ab) = res.next().unwrap();
        let (b, bb) = res.next().unwrap();
        let (pv, av, bv): (serde_json::Value, serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&pb).unwrap(),
            serde_json::from_str(&ab).unwrap(),
            serde_json::from_str(&bb).unwrap(),
        );
        // Prometheus 2.42 sums naively, our engine with Kahan compensation as Prometheus 3
        // does: values may differ in the last bits.
        assert!(approx_eq(&pv["data"], &av["data"]), "{q}: RF=1 differs from Prometheus");
        assert!(av["data"] == bv["data"], "{q}: RF=3 differs from RF=1");
        println!("| `{q}` | {step}s | {p:.1} | {a:.1} | {b:.1} | {:.2} | {:.2} | {:.2} |", a / p, b / p, b / a);
    }
    rf1.stop.cancel();
    rf3.stop.cancel();
    stop.cancel();
}
