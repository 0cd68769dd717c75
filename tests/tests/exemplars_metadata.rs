//! Exemplars and metric metadata end to end: a Debian Prometheus with exemplar storage
//! scrapes a loopback target serving OpenMetrics with exemplars and remote-writes
//! (`send_exemplars: true`, metadata every second) into `norn receive`; `norn query` over
//! the receiver must answer `/api/v1/query_exemplars` and `/api/v1/metadata` as Prometheus
//! answers for its own scrape. A `norn sidecar` next to the same Prometheus is a second
//! path: `norn query` over the sidecar must give the same answers.
//!
//! Prometheus has the external label `replica="p0"` (the sidecar needs one); both
//! queriers use `replica` as their replica label, so it is removed from their answers as
//! deduplication removes it. The one unavoidable difference: receive attaches its tenant
//! label (`tenant_id="default-tenant"`) to every series, as Thanos receive does, so it is
//! removed from the receive path's series labels before comparing.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use norn_testkit::receive::Receiver;
use norn_testkit::{ProcessGuard, free_port, http_get, norn_bin, require_tool, wait_ready};
use serde_json::Value;

/// Distinct exemplars per series the target serves before it repeats the last one.
const EXEMPLAR_STEPS: u64 = 4;

/// The OpenMetrics exposition of scrape `n`; exemplar timestamps are explicit (in
/// seconds, from `base_s`), so both stores keep exactly the same ones.
fn exposition(n: u64, base_s: u64) -> String {
    let k = n.min(EXEMPLAR_STEPS);
    let ts = format!("{}.{:03}", base_s + k, 100 + k * 7);
    format!(
        "# TYPE demo_requests counter\n\
         # HELP demo_requests Requests \\\"served\\\" so far.\n\
         demo_requests_total{{path=\"/a\"}} {a} # {{trace_id=\"a{k}\"}} 1 {ts}\n\
         demo_requests_total{{path=\"/b\"}} {b} # {{span_id=\"s{k}\",trace_id=\"b{k}\"}} 2.5 {ts}\n\
         # TYPE demo_temperature_celsius gauge\n\
         # UNIT demo_temperature_celsius celsius\n\
         # HELP demo_temperature_celsius Room temperature.\n\
         demo_temperature_celsius 21.5\n\
         # TYPE demo_latency_seconds histogram\n\
         # HELP demo_latency_seconds Request latency.\n\
         demo_latency_seconds_bucket{{le=\"0.1\"}} {c} # {{trace_id=\"l{k}\"}} 0.05 {ts}\n\
         demo_latency_seconds_bucket{{le=\"+Inf\"}} {d}\n\
         demo_latency_seconds_sum {s}\n\
         demo_latency_seconds_count {d}\n\
         # EOF\n",
        a = 10 * (n + 1),
        b = 5 * (n + 1),
        c = n + 1,
        d = 2 * (n + 1),
        s = 0.25 * (n + 1) as f64,
    )
}

/// Serves the exposition on a loopback port from a background thread; returns the port
/// and the scrape counter.
fn start_target(base_s: u64) -> (u16, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let scrapes = Arc::new(AtomicU64::new(0));
    let counter = scrapes.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let body = exposition(counter.fetch_add(1, Ordering::SeqCst), base_s);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, scrapes)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn get(port: u16, path: &str) -> Value {
    let (code, body) = http_get(port, path).unwrap_or_else(|e| panic!("GET {path} on {port}: {e}"));
    assert_eq!(code, 200, "GET {path} on {port}: {body}");
    json(&body)
}

/// Removes the receiver's tenant label from every `seriesLabels`.
fn without_tenant(mut v: Value) -> Value {
    if let Some(arr) = v["data"].as_array_mut() {
        for s in arr {
            if let Some(o) = s["seriesLabels"].as_object_mut() {
                o.remove("tenant_id");
            }
        }
    }
    v
}

fn exemplar_count(v: &Value) -> usize {
    v["data"].as_array().map_or(0, |a| a.iter().map(|s| s["exemplars"].as_array().map_or(0, Vec::len)).sum())
}

#[test]
fn exemplars_and_metadata_through_receive_match_prometheus() {
    let Some(prom_bin) = require_tool("prometheus") else { return };
    let work = norn_testkit::tempdir().unwrap();
    let base_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 600;
    let (target, scrapes) = start_target(base_s);

    let mut recv = Receiver::new("r0", work.path(), &["--tsdb.max-exemplars=1000".to_string()]);
    recv.start();

    let prom_port = free_port();
    let cfg = work.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  external_labels:\n    replica: p0\n\
             scrape_configs:\n  - job_name: demo\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n\
             remote_write:\n  - url: http://127.0.0.1:{}/api/v1/receive\n    send_exemplars: true\n\
             \x20   queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n\
             \x20   metadata_config:\n      send: true\n      send_interval: 1s\n",
            recv.rw_port
        ),
    )
    .unwrap();
    let _prom = ProcessGuard::spawn(
        "prometheus",
        Command::new(prom_bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", work.path().join("prom-data").display()))
            .arg("--enable-feature=exemplar-storage")
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        &work.path().join("prometheus.log"),
    );
    assert!(wait_ready(prom_port, "/-/ready", Duration::from_secs(60)), "prometheus not ready");

    let (sc_grpc, sc_http) = (free_port(), free_port());
    let _sidecar = ProcessGuard::spawn(
        "sidecar",
        Command::new(norn_bin())
            .arg("sidecar")
            .arg(format!("--prometheus.url=http://127.0.0.1:{prom_port}"))
            .arg(format!("--tsdb.path={}", work.path().join("prom-data").display()))
            .arg(format!("--grpc-address=127.0.0.1:{sc_grpc}"))
            .arg(format!("--http-address=127.0.0.1:{sc_http}")),
        &work.path().join("sidecar.log"),
    );
    assert!(wait_ready(sc_http, "/-/ready", Duration::from_secs(60)), "sidecar not ready");

    // Two queriers in process: one over the receiver, one over the sidecar.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let start_querier = |endpoint: String| {
        let http = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let grpc = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = http.local_addr().unwrap().port();
        let grpc_port = grpc.local_addr().unwrap().port();
        let args = norn_query::Args {
            endpoints: vec![endpoint],
            replica_labels: vec!["replica".into()],
            endpoint_refresh_interval: Duration::from_millis(500),
            // An Info probe that times out marks its store down until the next round
            // (queries then miss its data): generous, for a loaded machine.
            endpoint_info_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let task = rt.spawn(norn_query::run_with_listeners(args, http, grpc, stop.clone()));
        assert!(wait_ready(port, "/-/ready", Duration::from_secs(60)), "querier not ready");
        (port, grpc_port, task)
    };
    let (q_port, q_grpc, querier) = start_querier(recv.grpc_addr());
    let (s_port, _, s_querier) = start_querier(format!("127.0.0.1:{sc_grpc}"));
    // A querier stacked on the receive querier's gRPC services.
    let (t_port, _, t_querier) = start_querier(format!("127.0.0.1:{q_grpc}"));

    // Every series' exemplars have reached Prometheus (one per step) and then Norn.
    let series = 3;
    let want_exemplars = series * (EXEMPLAR_STEPS as usize + 1);
    let queries = [
        "/api/v1/query_exemplars?query=demo_requests_total",
        "/api/v1/query_exemplars?query=sum(rate(demo_requests_total%5B1m%5D))%20%2B%20demo_latency_seconds_bucket",
        "/api/v1/query_exemplars?query=demo_requests_total%7Bpath%3D%22%2Fb%22%7D",
        "/api/v1/query_exemplars?query=%7B__name__%3D~%22demo_.%2B%22%7D",
    ];
    let all = queries[3];
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let p = get(prom_port, all);
        let n = without_tenant(get(q_port, all));
        let s = get(s_port, all);
        let t = without_tenant(get(t_port, all));
        if exemplar_count(&p) == want_exemplars && n == p && s == p && t == p {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "exemplars did not converge after {} scrapes:\nprometheus {p}\nreceive    {n}\nsidecar    {s}\nstacked    {t}",
            scrapes.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let range = |q: &str, start: u64, end: u64| format!("{q}&start={start}&end={end}");
    let mut checks: Vec<String> = queries.iter().map(|q| q.to_string()).collect();
    // A time range that cuts through the exemplars (inclusive ends at whole seconds).
    checks.push(range(queries[0], base_s + 2, base_s + 3));
    checks.push(range(queries[0], base_s + 100, base_s + 200));
    for q in &checks {
        let p = get(prom_port, q);
        let n = without_tenant(get(q_port, q));
        assert_eq!(n, p, "{q} through receive");
        assert_eq!(get(s_port, q), p, "{q} through the sidecar");
        assert_eq!(without_tenant(get(t_port, q)), p, "{q} through stacked queriers");
    }
    let p = get(prom_port, &checks[4]);
    assert_eq!(exemplar_count(&p), 2, "range query should cut: {p}");
    // Series labels as receive stores them carry the tenant label; without
    // deduplication the replica label shows.
    let raw = get(q_port, queries[2]);
    assert_eq!(raw["data"][0]["seriesLabels"]["tenant_id"], "default-tenant", "{raw}");
    let raw = get(s_port, &format!("{}&dedup=false", queries[2]));
    assert_eq!(raw["data"][0]["seriesLabels"]["replica"], "p0", "{raw}");
    // Selecting on the external label works through the sidecar.
    let q = "/api/v1/query_exemplars?query=demo_requests_total%7Breplica%3D%22p0%22%7D";
    assert_eq!(get(s_port, q), get(prom_port, queries[0]), "{q}");
    let q = "/api/v1/query_exemplars?query=demo_requests_total%7Breplica%3D%22p1%22%7D";
    assert_eq!(get(s_port, q)["data"], serde_json::json!([]), "{q}");

    // Bad requests are refused as Prometheus refuses them.
    for q in ["/api/v1/query_exemplars?query=rate(", "/api/v1/query_exemplars?query=up&start=10&end=5"] {
        let (pc, pb) = http_get(prom_port, q).unwrap();
        let (nc, nb) = http_get(q_port, q).unwrap();
        assert_eq!((nc, json(&nb)["errorType"].clone()), (pc, json(&pb)["errorType"].clone()), "{q}: {nb} vs {pb}");
    }
    // No selectors: Prometheus answers 204 without a body.
    let q = "/api/v1/query_exemplars?query=1%2B1";
    assert_eq!(http_get(q_port, q).unwrap(), http_get(prom_port, q).unwrap());

    // Metadata: sent every second by the remote-write queue.
    let md = "/api/v1/metadata";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = get(prom_port, md);
        let n = get(q_port, md);
        let s = get(s_port, md);
        let t = get(t_port, md);
        if p["data"].as_object().is_some_and(|o| o.len() == 3) && n == p && s == p && t == p {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metadata did not converge:\nprometheus {p}\nreceive    {n}\nsidecar    {s}\nstacked    {t}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for q in
        ["/api/v1/metadata?metric=demo_temperature_celsius", "/api/v1/metadata?metric=nope", "/api/v1/metadata?limit=0"]
    {
        let p = get(prom_port, q);
        assert_eq!(get(q_port, q), p, "{q} through receive");
        assert_eq!(get(s_port, q), p, "{q} through the sidecar");
    }
    // Prometheus picks which metric survives a limit at random; the count must agree.
    let q = "/api/v1/metadata?limit=2";
    assert_eq!(get(q_port, q)["data"].as_object().map(|o| o.len()), Some(2));
    let (nc, nb) = http_get(q_port, "/api/v1/metadata?limit=x").unwrap();
    let (pc, pb) = http_get(prom_port, "/api/v1/metadata?limit=x").unwrap();
    assert_eq!((nc, json(&nb)["error"].clone()), (pc, json(&pb)["error"].clone()));

    stop.cancel();
    let _ = rt.block_on(querier);
    let _ = rt.block_on(s_querier);
    let _ = rt.block_on(t_querier);
    recv.stop();
}

fn snappy(b: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(b).unwrap()
}

/// Remote write 2.0 (exemplars and per-series metadata) and 1.0 (metadata field, refused
/// exemplars) straight into a receiver with two tenants; the querier's JSON is checked
/// exactly.
#[test]
fn remote_write_2_and_1_exemplars_and_metadata_reach_the_querier() {
    use norn_storeapi::io::prometheus::write::v2;
    use norn_storeapi::prometheus::{self, metric_metadata::MetricType};
    use prost::Message;

    let work = norn_testkit::tempdir().unwrap();
    let mut recv = Receiver::new("r0", work.path(), &["--tsdb.max-exemplars=3".to_string()]);
    recv.start();
    let t0 = 1_700_000_000_000i64;

    let syms: Vec<String> = ["", "__name__", "rw2_total", "job", "a", "trace_id", "x1", "x2", "Requests.", "bytes"]
        .map(String::from)
        .into();
    let ex = |trace: u32, v: f64, t: i64| v2::Exemplar { labels_refs: vec![5, trace], value: v, timestamp: t };
    let req = v2::Request {
        symbols: syms,
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 2, 3, 4],
            samples: vec![v2::Sample { value: 1.0, timestamp: t0, start_timestamp: 0 }],
            exemplars: vec![ex(6, 0.5, t0 - 500), ex(7, 1.5, t0)],
            metadata: Some(v2::Metadata { r#type: 1, help_ref: 8, unit_ref: 9 }),
            ..Default::default()
        }],
    };
    let h2 = [
        ("Content-Type", "application/x-protobuf;proto=io.prometheus.write.v2.Request"),
        ("Content-Encoding", "snappy"),
        ("X-Prometheus-Remote-Write-Version", "2.0.0"),
        ("THANOS-TENANT", "team-a"),
    ];
    let (code, body) =
        norn_testkit::receive::http_post(recv.rw_port, "/api/v1/receive", &h2, &snappy(&req.encode_to_vec())).unwrap();
    assert_eq!(code, 204, "{body}");

    // 1.0: an exemplar older than the series' newest is refused without failing the
    // write; metadata arrives in the request's own field (here with no series at all).
    let l = |n: &str, v: &str| prometheus::Label { name: n.into(), value: v.into() };
    let v1 = prometheus::WriteRequest {
        timeseries: vec![prometheus::TimeSeries {
            labels: vec![l("__name__", "rw1_seconds"), l("job", "b")],
            samples: vec![prometheus::Sample { value: 2.0, timestamp: t0 }],
            exemplars: vec![
                prometheus::Exemplar { labels: vec![l("trace_id", "y1")], value: 0.25, timestamp: t0 },
                prometheus::Exemplar { labels: vec![l("trace_id", "y0")], value: 0.5, timestamp: t0 - 1 },
            ],
            ..Default::default()
        }],
        metadata: vec![],
    };
    let post1 = |tenant: &str, r: &prometheus::WriteRequest| {
        let h = [
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
            ("THANOS-TENANT", tenant),
        ];
        norn_testkit::receive::http_post(recv.rw_port, "/api/v1/receive", &h, &snappy(&r.encode_to_vec())).unwrap()
    };
    assert_eq!(post1("team-b", &v1).0, 204);
    let md_only = prometheus::WriteRequest {
        timeseries: vec![],
        metadata: vec![prometheus::MetricMetadata {
            r#type: MetricType::Gauge as i32,
            metric_family_name: "rw1_seconds".into(),
            help: "Latency \"p99\".".into(),
            unit: "seconds".into(),
        }],
    };
    assert_eq!(post1("team-b", &md_only).0, 204);
    let (_, metrics) = http_get(recv.http_port, "/metrics").unwrap();
    for line in [
        r#"norn_receive_exemplars_total{outcome="appended"} 3"#,
        r#"norn_receive_exemplars_total{outcome="out_of_order"} 1"#,
        "norn_receive_max_exemplars 3",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing from\n{metrics}");
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let http = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let grpc = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let q_port = http.local_addr().unwrap().port();
    let args = norn_query::Args {
        endpoints: vec![recv.grpc_addr()],
        endpoint_refresh_interval: Duration::from_millis(500),
        // An Info probe that times out marks its store down until the next round
        // (queries then miss its data): generous, for a loaded machine.
        endpoint_info_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let querier = rt.spawn(norn_query::run_with_listeners(args, http, grpc, stop.clone()));
    assert!(wait_ready(q_port, "/-/ready", Duration::from_secs(60)), "querier not ready");

    // Ready means one discovery round ran; an Info call that timed out on a loaded machine
    // leaves the receiver for a later round: the first answer is polled (bounded).
    let want = r#"{"status":"success","data":[{"seriesLabels":{"__name__":"rw1_seconds","job":"b","tenant_id":"team-b"},"exemplars":[{"labels":{"trace_id":"y1"},"value":"0.25","timestamp":1700000000}]},{"seriesLabels":{"__name__":"rw2_total","job":"a","tenant_id":"team-a"},"exemplars":[{"labels":{"trace_id":"x1"},"value":"0.5","timestamp":1699999999.500},{"labels":{"trace_id":"x2"},"value":"1.5","timestamp":1700000000}]}]}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = http_get(q_port, "/api/v1/query_exemplars?query=rw2_total%20or%20rw1_seconds").unwrap();
        if (code, body.as_str()) == (200, want) {
            break;
        }
        if Instant::now() > deadline {
            assert_eq!(code, 200, "{body}");
            assert_eq!(body, want);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // Selecting on the tenant label (an external label) narrows to one tenant.
    let q = "/api/v1/query_exemplars?query=%7Btenant_id%3D%22team-a%22%2Cjob%3D~%22.%2B%22%7D&start=1699999999.9";
    let v = get(q_port, q);
    assert_eq!(exemplar_count(&v), 1, "{v}");
    assert_eq!(v["data"][0]["exemplars"][0]["labels"]["trace_id"], "x2", "{v}");

    let (code, body) = http_get(q_port, "/api/v1/metadata").unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        r#"{"status":"success","data":{"rw1_seconds":[{"type":"gauge","help":"Latency \"p99\".","unit":"seconds"}],"rw2_total":[{"type":"counter","help":"Requests.","unit":"bytes"}]}}"#
    );

    // The buffer holds 3 exemplars per tenant: a fourth evicts the oldest.
    let more = |t: i64, trace: &str| prometheus::WriteRequest {
        timeseries: vec![prometheus::TimeSeries {
            labels: vec![l("__name__", "rw1_seconds"), l("job", "b")],
            samples: vec![prometheus::Sample { value: 2.0, timestamp: t }],
            exemplars: vec![prometheus::Exemplar { labels: vec![l("trace_id", trace)], value: 1.0, timestamp: t }],
            ..Default::default()
        }],
        metadata: vec![],
    };
    for (i, trace) in ["y2", "y3", "y4"].iter().enumerate() {
        assert_eq!(post1("team-b", &more(t0 + 1000 * (i as i64 + 1), trace)).0, 204);
    }
    let v = get(q_port, "/api/v1/query_exemplars?query=rw1_seconds");
    let traces: Vec<_> =
        v["data"][0]["exemplars"].as_array().unwrap().iter().map(|e| e["labels"]["trace_id"].clone()).collect();
    assert_eq!(traces, ["y2", "y3", "y4"], "{v}");

    // Exemplars are in the tenants' WALs: a receiver killed with SIGKILL and restarted
    // on the same directory answers the same (the replayed buffers evict as before).
    let all = "/api/v1/query_exemplars?query=rw2_total%20or%20rw1_seconds";
    let before = get(q_port, all);
    assert_eq!(exemplar_count(&before), 5, "{before}");
    recv.kill();
    recv.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let after = http_get(q_port, all).ok().filter(|(c, _)| *c == 200).map(|(_, b)| json(&b));
        if after.as_ref() == Some(&before) {
            break;
        }
        assert!(Instant::now() < deadline, "after restart: {after:?}, before: {before}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The log may carry ANSI colour codes around each field.
    let mut log = String::new();
    let mut esc = false;
    for c in recv.log_text().chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (false, c) => log.push(c),
            (true, _) => {}
        }
    }
    assert!(log.contains("exemplars=2") && log.contains("exemplars=4"), "replayed exemplars per tenant:\n{log}");

    stop.cancel();
    let _ = rt.block_on(querier);
    recv.stop();
}
