//! `norn standalone` as the README's quickstart runs it: remote write in, the Prometheus
//! HTTP API out, one process and one data directory.
//!
//! 1. Series remote-written into standalone and into a real Prometheus (its remote-write
//!    receiver) read back through query, query_range, series, labels and label values with
//!    JSON equal byte for byte after key ordering; no tenant label appears.
//! 2. A restart on the same data directory replays the WAL and answers the same as soon as
//!    `/-/ready` says so; a block cut from the head lands in `<data-dir>/bucket`; with
//!    `--receive.tenant-label-name=tenant_id` the tenant label appears; the StoreAPI on
//!    `--grpc-address` serves the data to a stacked querier.
//! 3. A Prometheus configured as the README says delivers its own samples.
//! 4. The README's quickstart command and prometheus.yml snippet match the binary's defaults.

mod receive_support;

/// Canonical JSON (keys sorted, number and string tokens as written), shared with the
/// querier's parity tests.
#[path = "../../query/tests/common/canonical_json.rs"]
mod canonical_json;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use norn_testkit::receive::http_post;
use norn_testkit::{ProcessGuard, free_port, http_get, norn_bin, require_tool, wait_ready};
use receive_support::{eq, now_ms, post, write_body};

/// A `norn standalone` process on loopback ports, restartable on the same data directory.
struct Standalone {
    http: u16,
    grpc: u16,
    rw: u16,
    data_dir: PathBuf,
    work: PathBuf,
    starts: u32,
    log: PathBuf,
    guard: Option<ProcessGuard>,
}

impl Standalone {
    fn new(work: &Path) -> Standalone {
        Standalone {
            http: free_port(),
            grpc: free_port(),
            rw: free_port(),
            data_dir: work.join("norn-data"),
            work: work.to_path_buf(),
            starts: 0,
            log: PathBuf::new(),
            guard: None,
        }
    }

    /// Starts with `extra` flags and waits for `/-/ready`.
    fn start(&mut self, extra: &[&str]) {
        self.starts += 1;
        self.log = self.work.join(format!("standalone.{}.log", self.starts));
        let mut cmd = Command::new(norn_bin());
        cmd.arg("standalone")
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--http-address=127.0.0.1:{}", self.http))
            .arg(format!("--grpc-address=127.0.0.1:{}", self.grpc))
            .arg(format!("--remote-write.address=127.0.0.1:{}", self.rw))
            .args(extra)
            .env("RUST_LOG", "info");
        self.guard = Some(ProcessGuard::spawn("norn standalone", &mut cmd, &self.log));
        if !wait_ready(self.http, "/-/ready", Duration::from_secs(60)) {
            panic!("norn standalone did not become ready; log:\n{}", self.log_text());
        }
    }

    /// SIGTERM, and a clean exit expected.
    fn stop(&mut self) {
        let mut g = self.guard.take().expect("running");
        assert!(g.terminate(Duration::from_secs(60)), "standalone did not stop; log:\n{}", self.log_text());
        let st = g.try_wait().expect("exited");
        assert!(st.success(), "standalone exited with {st}; log:\n{}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path).unwrap_or_else(|e| panic!("GET {path}: {e}\nlog:\n{}", self.log_text()))
    }
}

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

type Series = (Vec<(String, String)>, Vec<(i64, f64)>);

/// Two jobs of counters and gauges over the hour before `end`, 15 s apart.
fn dataset(end: i64) -> Vec<Series> {
    let start = end - 3_600_000;
    let mut out = Vec::new();
    for (i, job) in ["api", "db"].iter().enumerate() {
        for inst in 0..2 {
            let labels = vec![
                ("__name__".to_string(), "sa_requests_total".to_string()),
                ("instance".to_string(), format!("h{inst}:9100")),
                ("job".to_string(), job.to_string()),
            ];
            let mut v = 0.0;
            let samples = (0..240)
                .map(|k| {
                    v += ((2 * i + inst + 1) * (1 + k % 4)) as f64;
                    (start + k as i64 * 15_000 + 3, v)
                })
                .collect();
            out.push((labels, samples));
        }
        let labels = vec![("__name__".to_string(), "sa_up".to_string()), ("job".to_string(), job.to_string())];
        out.push((
            labels,
            (0..240).map(|k| (start + k as i64 * 15_000 + 3, if k % 53 == 5 { 0.0 } else { 1.0 })).collect(),
        ));
        let labels = vec![
            ("__name__".to_string(), "sa_temperature_celsius".to_string()),
            ("job".to_string(), job.to_string()),
            ("room".to_string(), format!("r{i}")),
        ];
        out.push((labels, (0..240).map(|k| (start + k as i64 * 15_000 + 3, 20.0 + (k % 17) as f64 * 0.25)).collect()));
    }
    out
}

fn body_of(data: &[Series]) -> Vec<u8> {
    let inputs: Vec<receive_support::Input<'_>> =
        data.iter().map(|(l, s)| (l.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(), s.clone())).collect();
    write_body(&inputs)
}

const RW_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", "application/x-protobuf"),
    ("Content-Encoding", "snappy"),
    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
];

/// The API paths compared with Prometheus, over the hour of `dataset(end)`.
fn api_paths(end: i64) -> Vec<String> {
    let t = (end - 120_000) / 1000;
    let (s, e) = ((end - 3_000_000) / 1000, end / 1000);
    let mut paths: Vec<String> = [
        "sa_up",
        "sa_requests_total",
        "rate(sa_requests_total[5m])",
        "sum by (job) (rate(sa_requests_total[5m]))",
        "count(sa_up == 0) or vector(0)",
        "max_over_time(sa_temperature_celsius[1h])",
        "topk(1, sa_temperature_celsius)",
        "sa_requests_total{job=~\"d.*\"} offset 10m",
        "absent(sa_nonexistent)",
    ]
    .iter()
    .map(|q| format!("/api/v1/query?query={}&time={t}", enc(q)))
    .collect();
    // Not avg_over_time: the PromQL engine's mean differs from Prometheus 2.42's in the last
    // digits (22.0875 against 22.087500000000002); that is the engine's business, not
    // standalone's.
    for q in ["rate(sa_requests_total[2m])", "sum(sa_up)", "min_over_time(sa_temperature_celsius[5m])"] {
        paths.push(format!("/api/v1/query_range?query={}&start={s}&end={e}&step=60", enc(q)));
    }
    paths.extend([
        format!("/api/v1/series?match[]={}&start={s}&end={e}", enc("sa_up")),
        format!("/api/v1/series?match[]={}&match[]={}", enc("sa_temperature_celsius"), enc("{job=\"api\"}")),
        "/api/v1/labels".to_string(),
        format!("/api/v1/labels?start={s}&end={e}"),
        "/api/v1/label/job/values".to_string(),
        "/api/v1/label/__name__/values".to_string(),
    ]);
    paths
}

/// The paths whose answers differ between the two servers, with both answers.
fn mismatches(paths: &[String], prom_port: u16, sa: &Standalone) -> Vec<String> {
    let mut bad = Vec::new();
    for p in paths {
        let (pc, pb) = http_get(prom_port, p).unwrap();
        let (nc, nb) = sa.get(p);
        let (pj, nj) = (canonical_json::canonical(&pb), canonical_json::canonical(&nb));
        if pc != nc || pj != nj {
            bad.push(format!("{p}\n  prometheus {pc}: {pj}\n  norn       {nc}: {nj}"));
        }
    }
    bad
}

fn start_prometheus(bin: &Path, work: &Path, config: &str) -> (ProcessGuard, u16) {
    let port = free_port();
    let name = format!("prometheus-{port}");
    let cfg = work.join(format!("{name}.yml"));
    std::fs::write(&cfg, config).unwrap();
    let log = work.join(format!("{name}.log"));
    let guard = ProcessGuard::spawn(
        "prometheus",
        Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", work.join(format!("{name}-data")).display()))
            .arg("--web.enable-remote-write-receiver")
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        &log,
    );
    assert!(
        wait_ready(port, "/-/ready", Duration::from_secs(60)),
        "prometheus not ready: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (guard, port)
}

#[test]
fn remote_written_series_read_back_as_prometheus_answers() {
    let Some(prom_bin) = require_tool("prometheus") else { return };
    let work = norn_testkit::tempdir().unwrap();
    let (_prom, prom_port) = start_prometheus(&prom_bin, work.path(), "global:\n  scrape_interval: 1h\n");
    let mut sa = Standalone::new(work.path());
    sa.start(&[]);

    let end = now_ms() / 1000 * 1000 - 60_000;
    let data = dataset(end);
    // Half through Thanos's path, half through Prometheus's; Prometheus gets everything.
    let (first, second) = data.split_at(data.len() / 2);
    let (code, msg) = post(sa.rw, None, &body_of(first));
    assert_eq!(code, 204, "standalone /api/v1/receive: {msg}");
    let (code, msg) = http_post(sa.rw, "/api/v1/write", &RW_HEADERS, &body_of(second)).unwrap();
    assert_eq!(code, 204, "standalone /api/v1/write: {msg}");
    let (code, msg) = http_post(prom_port, "/api/v1/write", &RW_HEADERS, &body_of(&data)).unwrap();
    assert!(code == 200 || code == 204, "prometheus write: {code} {msg}");

    // Queried at once: what was acknowledged is visible, no waiting for a refresh.
    let paths = api_paths(end);
    let bad = mismatches(&paths, prom_port, &sa);
    assert!(bad.is_empty(), "{} of {} differ:\n{}", bad.len(), paths.len(), bad.join("\n"));

    // Not vacuous: the answers hold the data, and no tenant label was added.
    let t = (end - 120_000) / 1000;
    let (_, body) = sa.get(&format!("/api/v1/query?query=sa_requests_total&time={t}"));
    assert_eq!(json(&body)["data"]["result"].as_array().map(Vec::len), Some(4), "{body}");
    let (_, body) = sa.get(&format!("/api/v1/query_range?query=sa_up&start={}&end={}&step=15", t - 600, t));
    let series = json(&body)["data"]["result"].as_array().cloned().unwrap_or_default();
    assert_eq!(series.len(), 2, "{body}");
    assert!(series.iter().all(|s| s["values"].as_array().is_some_and(|v| v.len() == 41)), "{body}");
    for p in &paths {
        let (_, body) = sa.get(p);
        assert!(!body.contains("tenant_id") && !body.contains("default-tenant"), "{p}: {body}");
        assert!(!body.contains("receive_replica"), "{p}: {body}");
    }

    // One address for everything a user points at it.
    let (code, metrics) = sa.get("/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("norn_receive"), "{metrics}");
    assert_eq!(sa.get("/-/healthy").0, 200);
    let (code, ui) = sa.get("/");
    assert_eq!(code, 200);
    assert!(ui.to_lowercase().contains("<html"), "{ui}");
    sa.stop();
}

#[test]
fn restart_replays_the_wal_ships_blocks_and_adds_the_tenant_label_on_request() {
    let work = norn_testkit::tempdir().unwrap();
    let mut sa = Standalone::new(work.path());
    // Short maintenance period so the block cut below is observed within the test.
    sa.start(&["--tsdb.maintenance-interval=200ms"]);

    // Four hours of one series: the head spans more than 1.5 block ranges and cuts a block.
    let end = now_ms() / 60_000 * 60_000;
    let long: Vec<(i64, f64)> = (0..240).map(|i| (end - (239 - i) * 60_000, i as f64)).collect();
    let mut data = dataset(end);
    data.push((vec![("__name__".into(), "sa_long".into()), ("job".into(), "batch".into())], long));
    let (code, msg) = post(sa.rw, None, &body_of(&data));
    assert_eq!(code, 204, "{msg}");

    let bucket = sa.data_dir.join("bucket");
    let deadline = Instant::now() + Duration::from_secs(60);
    let meta = loop {
        let found = std::fs::read_dir(&bucket)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("meta.json"))
            .find(|p| p.is_file());
        if let Some(m) = found {
            break m;
        }
        assert!(Instant::now() < deadline, "no block in {}; log:\n{}", bucket.display(), sa.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    let meta = json(&std::fs::read_to_string(&meta).unwrap());
    assert_eq!(meta["thanos"]["source"], "receive", "{meta}");
    // Blocks need an external label (Thanos's shipper rule): standalone's replica label,
    // which the querier strips from answers; no tenant label.
    assert_eq!(meta["thanos"]["labels"], serde_json::json!({"receive_replica": "standalone"}), "{meta}");

    let t = end / 1000;
    let paths = [
        format!("/api/v1/query?query={}&time={t}", enc("sa_long")),
        format!("/api/v1/query?query={}&time={t}", enc("count_over_time(sa_long[4h])")),
        format!("/api/v1/query?query={}&time={}", enc("sum by (job) (sa_requests_total)"), t - 120),
        format!("/api/v1/series?match[]={}", enc("{__name__=~\"sa_.*\"}")),
        "/api/v1/labels".to_string(),
    ];
    let answers = |sa: &Standalone| paths.iter().map(|p| sa.get(p)).collect::<Vec<_>>();
    let before = answers(&sa);
    let count = json(&before[1].1);
    assert_eq!(count["data"]["result"][0]["value"][1], "240", "every sample, across the cut: {}", before[1].1);

    // Restarted: answers are complete as soon as /-/ready is 200.
    sa.stop();
    sa.start(&[]);
    let after = answers(&sa);
    for ((p, b), a) in paths.iter().zip(&before).zip(&after) {
        assert_eq!(b, a, "{p} changed across the restart");
    }

    // The StoreAPI on --grpc-address serves the same data to a stacked querier.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let got = rt
        .block_on(receive_support::series(
            &format!("127.0.0.1:{}", sa.grpc),
            vec![eq("__name__", "sa_long")],
            0,
            i64::MAX,
        ))
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    // Raw, as Thanos's querier StoreAPI serves them: the upper querier dedups on the
    // replica label itself.
    let want: Vec<(String, String)> = [("__name__", "sa_long"), ("job", "batch"), ("receive_replica", "standalone")]
        .map(|(n, v)| (n.into(), v.into()))
        .into();
    assert_eq!(got[0].labels, want);
    assert_eq!(got[0].samples.len(), 240);
    drop(rt);

    // Asked for, the tenant label appears on every series.
    sa.stop();
    sa.start(&["--receive.tenant-label-name=tenant_id"]);
    let (_, body) = sa.get(&format!("/api/v1/query?query=sa_long&time={t}"));
    let v = json(&body);
    assert_eq!(v["data"]["result"][0]["metric"]["tenant_id"], "default-tenant", "{body}");
    let (_, body) = sa.get(&format!("/api/v1/series?match[]={}", enc("{__name__=~\"sa_.*\"}")));
    let series = json(&body)["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(series.len(), data.len(), "{body}");
    assert!(series.iter().all(|s| s["tenant_id"] == "default-tenant"), "{body}");
    sa.stop();
}

#[test]
fn prometheus_configured_as_the_readme_says_delivers_its_samples() {
    let Some(prom_bin) = require_tool("prometheus") else { return };
    let work = norn_testkit::tempdir().unwrap();
    let mut sa = Standalone::new(work.path());
    sa.start(&[]);
    // The README's snippet, with the test's port; Prometheus scrapes itself.
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: \
         ['127.0.0.1:{{PROM}}']\nremote_write:\n  - url: http://localhost:{}/api/v1/receive\n    queue_config:\n      \
         batch_send_deadline: 1s\n",
        sa.rw
    );
    // Prometheus's own port is only known once chosen: write the config after picking it.
    let prom_port = free_port();
    let config = config.replace("{PROM}", &prom_port.to_string());
    let cfg = work.path().join("prometheus-rw.yml");
    std::fs::write(&cfg, config).unwrap();
    let _prom = ProcessGuard::spawn(
        "prometheus",
        Command::new(prom_bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", work.path().join("prom-rw-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        &work.path().join("prometheus-rw.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, body) = sa.get(&format!("/api/v1/query?query={}", enc("up{job=\"self\"}")));
        let v = json(&body);
        if v["data"]["result"][0]["value"][1] == "1" {
            let metric = &v["data"]["result"][0]["metric"];
            assert_eq!(metric["instance"], format!("127.0.0.1:{prom_port}"), "{body}");
            assert!(metric.get("tenant_id").is_none(), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no samples from Prometheus; last answer {body}\nprometheus log:\n{}\nnorn log:\n{}",
            std::fs::read_to_string(work.path().join("prometheus-rw.log")).unwrap_or_default(),
            sa.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    sa.stop();
}

/// The default of `--flag` as `norn standalone --help` prints it.
fn help_default(help: &str, flag: &str) -> String {
    let at = help.find(flag).unwrap_or_else(|| panic!("{flag} not in help:\n{help}"));
    let rest = &help[at..];
    let d = rest.find("[default: ").unwrap_or_else(|| panic!("{flag} has no default:\n{help}"));
    let rest = &rest[d + "[default: ".len()..];
    rest[..rest.find(']').unwrap()].to_string()
}

#[test]
fn readme_quickstart_matches_the_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let qs = &readme[readme.find("## Quickstart").expect("a Quickstart section")..];
    let qs = &qs[..qs[3..].find("\n## ").map_or(qs.len(), |i| i + 3)];
    let commands: Vec<&str> = qs.split("```sh\n").skip(1).map(|b| b[..b.find("```").unwrap()].trim()).collect();
    assert_eq!(commands, ["cargo run --release -p norn -- standalone", "./scripts/test"], "{qs}");

    let help = norn_testkit::run_ok(Command::new(norn_bin()).args(["standalone", "--help"]));
    let help = String::from_utf8(help.stdout).unwrap();
    let rw_port = help_default(&help, "--remote-write.address").rsplit(':').next().unwrap().to_string();
    let http_port = help_default(&help, "--http-address").rsplit(':').next().unwrap().to_string();
    assert!(qs.contains(&format!("url: http://localhost:{rw_port}/api/v1/receive")), "{qs}");
    assert!(qs.contains(&format!("http://localhost:{http_port}")), "Grafana URL in {qs}");
    assert_eq!(help_default(&help, "--data-dir"), "./data");
}
