//! The same data in Debian's Prometheus (2.42, blocks written by its promtool) and behind
//! `norn query` (three replicas of a StoreAPI endpoint reading those very blocks with our
//! TSDB reader): the JSON answers must be equal after key ordering, and `promtool query`
//! must print the same against both.
//!
//! Sample timestamps sit 7 ms off the query grid so that Prometheus 2's closed range
//! boundaries and Prometheus 3's left-open ones select the same samples.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::canonical_json::canonical;
use common::{FakeStore, enc, serve_store, start_querier};
use norn_model::Labels;
use norn_tsdb::chunkenc::Sample;
use tokio_util::sync::CancellationToken;

const T0_S: i64 = 1_700_000_000;

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(tool)).find(|p| p.is_file())
}

fn write_openmetrics(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(f, "# TYPE http_requests counter").unwrap();
    for (i, job) in ["api", "db", "web"].iter().enumerate() {
        for inst in 0..2 {
            let mut v = 0u64;
            for k in 0..480 {
                v += ((2 * i + inst + 1) * (1 + k % 3)) as u64;
                if k == 300 && inst == 1 {
                    v = 3; // a counter reset
                }
                let t = T0_S * 1000 + k as i64 * 15_000 + 7;
                writeln!(
                    f,
                    "http_requests_total{{instance=\"h{inst}\",job=\"{job}\"}} {v} {}.{:03}",
                    t / 1000,
                    t % 1000
                )
                .unwrap();
            }
        }
    }
    writeln!(f, "# TYPE up gauge").unwrap();
    for job in ["api", "db", "web"] {
        for k in 0..480i64 {
            let t = T0_S * 1000 + k * 15_000 + 7;
            let v = if k % 97 == 5 { 0 } else { 1 };
            writeln!(f, "up{{job=\"{job}\"}} {v} {}.{:03}", t / 1000, t % 1000).unwrap();
        }
    }
    writeln!(f, "# TYPE temperature gauge").unwrap();
    for (j, room) in ["a\"b", "kitchen", "z<&>"].iter().enumerate() {
        for k in 0..240i64 {
            let t = T0_S * 1000 + k * 30_000 + 7;
            let v = 20.0 + (k as f64 / 7.0).sin() * 3.5 + j as f64 * 0.25;
            writeln!(f, "temperature{{room=\"{}\"}} {v} {}.{:03}", room.replace('"', "\\\""), t / 1000, t % 1000)
                .unwrap();
        }
    }
    writeln!(f, "# EOF").unwrap();
}

fn load_blocks(dir: &Path) -> common::Data {
    let mut all: std::collections::BTreeMap<Labels, Vec<(i64, f64)>> = Default::default();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if !p.join("meta.json").exists() {
            continue;
        }
        let b = norn_tsdb::block::Block::open(&p).unwrap();
        for s in b.select_all(i64::MIN, i64::MAX).unwrap() {
            let out = all.entry(s.labels.clone()).or_default();
            for smp in s.samples(i64::MIN, i64::MAX) {
                if let Sample::Float(t, v) = smp.unwrap() {
                    out.push((t, v));
                }
            }
        }
    }
    all.into_iter()
        .map(|(l, mut s)| {
            s.sort_by_key(|p| p.0);
            s.dedup_by_key(|p| p.0);
            (l, s)
        })
        .collect()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn http_get(base: &str, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_and_promtool_match_prometheus() {
    let (Some(prometheus), Some(promtool)) = (which("prometheus"), which("promtool")) else {
        if std::env::var("NORN_ALLOW_MISSING_TOOLS").as_deref() == Ok("1") {
            eprintln!("skipping: prometheus/promtool not installed");
            return;
        }
        panic!("prometheus and promtool are needed (apt-get install prometheus) or set NORN_ALLOW_MISSING_TOOLS=1");
    };
    let tmp = tempfile::tempdir().unwrap();
    let om = tmp.path().join("data.om");
    write_openmetrics(&om);
    let data_dir = tmp.path().join("prom");
    let out = Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om)
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let data = Arc::new(load_blocks(&data_dir));
    assert_eq!(data.len(), 12);
    let cfg = tmp.path().join("prometheus.yml");
    std::fs::write(&cfg, "global:\n  scrape_interval: 1h\n").unwrap();
    let port = free_port();
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let _prom = Kill(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", data_dir.display()))
            .args(["--storage.tsdb.retention.time=100y", &format!("--web.listen-address=127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let prom = format!("http://127.0.0.1:{port}");
    let mut up = false;
    // Up to a minute: Prometheus opens its blocks slowly on a loaded machine.
    for _ in 0..1200 {
        if let Ok(r) = reqwest::get(format!("{prom}/-/ready")).await
            && r.status().is_success()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "prometheus did not start: {}", std::fs::read_to_string(tmp.path().join("prometheus.log")).unwrap());

    let stop = CancellationToken::new();
    let mut eps = Vec::new();
    for r in 0..3 {
        let store = FakeStore::new(Labels::from_pairs([("replica", format!("r{r}"))]), data.clone());
        eps.push(serve_store(store, stop.clone()).await.to_string());
    }
    let q = start_querier(norn_query::Args {
        endpoints: eps,
        replica_labels: vec!["replica".into()],
        ..Default::default()
    })
    .await;
    let norn = format!("http://{}", q.http);

    let t = T0_S + 3600;
    let (s, e) = (T0_S + 600, T0_S + 7000);
    let instant = [
        "up",
        "http_requests_total",
        "rate(http_requests_total[5m])",
        "sum by (job) (rate(http_requests_total[5m]))",
        "sum without (instance) (increase(http_requests_total[10m]))",
        "count(up)",
        "up == 0",
        "max_over_time(up[30m])",
        "topk(2, http_requests_total)",
        "http_requests_total{job=~\"a.*|w.*\"}",
        "temperature",
        "avg_over_time(temperature[10m])",
        "deriv(temperature[10m])",
        "quantile(0.9, temperature)",
        "temperature > 21",
        "1 + 1",
        "vector(1)",
        "time()",
        "absent(nonexistent)",
        "label_replace(up, \"dst\", \"$1\", \"job\", \"(.*)\")",
        "resets(http_requests_total[2h])",
    ];
    let mut paths: Vec<String> = instant.iter().map(|q| format!("/api/v1/query?query={}&time={t}", enc(q))).collect();
    for q in ["rate(http_requests_total[2m])", "sum by (job) (up)", "temperature", "max_over_time(temperature[3m])"] {
        paths.push(format!("/api/v1/query_range?query={}&start={s}&end={e}&step=60", enc(q)));
    }
    paths.extend([
        format!("/api/v1/series?match[]={}&start={s}&end={e}", enc("up")),
        format!("/api/v1/series?match[]={}&match[]={}", enc("temperature"), enc("http_requests_total{job=\"db\"}")),
        "/api/v1/labels".to_string(),
        "/api/v1/label/job/values".to_string(),
        "/api/v1/label/room/values".to_string(),
        "/api/v1/label/__name__/values".to_string(),
        format!("/api/v1/query?query={}&time={t}", enc("sum(")),
    ]);
    // format_query: Prometheus 2.42's pretty printer (and its parse errors).
    for q in [
        "sum by(job)(rate(http_requests_total{job=\"api\"}[5m]))",
        "1+2*3",
        "up offset 5m",
        "avg_over_time(temperature[5m:1m])",
        "http_requests_total / on(job, instance) group_left up",
        "label_replace(up, \"dst\", \"$1\", \"job\", \"(.*)\")",
        "topk(3, sum without(instance) (rate(http_requests_total{job=~\"a.*\",instance!=\"x\"}[5m])) > 0.5)",
        "-up",
        "sum(",
    ] {
        paths.push(format!("/api/v1/format_query?query={}", enc(q)));
    }
    let mut mismatches = Vec::new();
    for p in &paths {
        let (pc, pb) = http_get(&prom, p).await;
        let (nc, nb) = http_get(&norn, p).await;
        // Byte for byte after key ordering: number and string tokens as written.
        let (pv, nv) = (canonical(&pb), canonical(&nb));
        // Errors are worded as Prometheus's too (see tests/tests/promql_errors.rs).
        if pc != nc || pv != nv {
            mismatches.push(format!("{p}\n  prometheus {pc}: {pb}\n  norn       {nc}: {nb}"));
        }
    }
    assert!(mismatches.is_empty(), "{} of {} differ:\n{}", mismatches.len(), paths.len(), mismatches.join("\n"));

    // A second Prometheus reading remote from `norn query` answers like the first one.
    let rr_port = free_port();
    let rr_cfg = tmp.path().join("remote-read.yml");
    std::fs::write(
        &rr_cfg,
        format!(
            "global:\n  scrape_interval: 1h\nremote_read:\n  - url: http://{}/api/v1/read\n    read_recent: true\n",
            q.http
        ),
    )
    .unwrap();
    let rr_log = std::fs::File::create(tmp.path().join("prometheus-rr.log")).unwrap();
    let _rr = Kill(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", rr_cfg.display()))
            .arg(format!("--storage.tsdb.path={}", tmp.path().join("rr-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{rr_port}"))
            .stdout(Stdio::null())
            .stderr(rr_log)
            .spawn()
            .unwrap(),
    );
    let rr = format!("http://127.0.0.1:{rr_port}");
    for _ in 0..1200 {
        if reqwest::get(format!("{rr}/-/ready")).await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for expr in ["up", "rate(http_requests_total[5m])", "temperature"] {
        let p = format!("/api/v1/query?query={}&time={t}", enc(expr));
        let (_, a) = http_get(&prom, &p).await;
        let (_, b) = http_get(&rr, &p).await;
        let (av, bv): (serde_json::Value, serde_json::Value) =
            (serde_json::from_str(&a).unwrap(), serde_json::from_str(&b).unwrap());
        assert_eq!(
            av["data"],
            bv["data"],
            "remote read {expr}:\n{a}\n{b}\n{}",
            std::fs::read_to_string(tmp.path().join("prometheus-rr.log")).unwrap()
        );
    }

    // promtool prints the same against both servers.
    let ts = t.to_string();
    let (ss, es) = (s.to_string(), e.to_string());
    let runs: Vec<Vec<&str>> = vec![
        vec!["query", "instant", "--time", &ts, "URL", "sum by (job) (rate(http_requests_total[5m]))"],
        vec!["query", "range", "--start", &ss, "--end", &es, "--step", "5m", "URL", "temperature"],
        vec!["query", "series", "--match", "up", "--start", &ss, "--end", &es, "URL"],
        vec!["query", "labels", "--start", &ss, "--end", &es, "URL", "job"],
    ];
    for args in runs {
        let run = |base: &str| {
            let a: Vec<&str> = args.iter().map(|x| if *x == "URL" { base } else { *x }).collect();
            let o = Command::new(&promtool).args(&a).output().unwrap();
            assert!(o.status.success(), "promtool {a:?}: {}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let (a, b) = (run(&prom), run(&norn));
        assert!(!a.trim().is_empty(), "promtool {args:?} printed nothing");
        assert_eq!(a, b, "promtool {args:?}");
    }
    q.stop.cancel();
    stop.cancel();
}
