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
            endpoint_info_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let task = rt.spawn(norn_query::run_with_listeners(args, http, grpc, stop.clone()));
        assert!(wait_ready(port, "/-/ready", Duration::from_secs(30)), "querier not ready");
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
