//! One querier over a sidecar'd Prometheus and a receive cluster (two receivers,
//! replication factor 2) that the same Prometheus remote-writes to: three copies of every
//! series, told apart only by replica labels, come back as one deduplicated answer equal
//! to Prometheus's own.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use norn_model::Labels;
use norn_service::Shutdown;
use norn_testkit::receive::Receiver;
use norn_testkit::{ProcessGuard, free_port, http_get, require_tool, tempdir, wait_ready};

fn enc(q: &str) -> String {
    q.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn api(port: u16, path: &str) -> serde_json::Value {
    let (code, body) = http_get(port, path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `labels (without `drop`) → values` of a query_range answer; dropping labels must not
/// merge two series.
fn result(v: &serde_json::Value, drop: &[&str]) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for s in v["data"]["result"].as_array().unwrap() {
        let mut m: BTreeMap<String, String> = serde_json::from_value(s["metric"].clone()).unwrap();
        m.retain(|k, _| !drop.contains(&k.as_str()));
        let k = Labels::from_pairs(m.iter()).to_string();
        assert!(out.insert(k.clone(), s["values"].clone()).is_none(), "{k} twice in {v}");
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn sidecar_and_receive_replicas_deduplicate_into_one_answer() {
    let Some(prom_bin) = require_tool("prometheus") else { return };
    let tmp = tempdir().unwrap();
    let work = tmp.path();

    // Two receivers, each series stored on both.
    let ring_file = work.join("hashrings.json");
    let extra = |i: u32| {
        vec![
            "--receive.replication-factor=2".to_string(),
            format!("--receive.hashrings-file={}", ring_file.display()),
            format!("--label=receive_replica=\"{i}\""),
        ]
    };
    let mut r1 = Receiver::new("r1", work, &extra(0));
    let mut r2 = Receiver::new("r2", work, &extra(1));
    let ring = format!(r#"[{{"endpoints": ["{}", "{}"]}}]"#, r1.grpc_addr(), r2.grpc_addr());
    std::fs::write(&ring_file, ring).unwrap();
    r1.start();
    r2.start();

    let (pport, sgrpc, shttp) = (free_port(), free_port(), free_port());
    let cfg = work.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  external_labels:\n    cluster: e2e\n    replica: p0\n    tenant_id: default-tenant\n\
             scrape_configs:\n- job_name: prometheus\n  static_configs:\n  - targets: ['127.0.0.1:{pport}']\n\
             remote_write:\n- url: http://127.0.0.1:{}/api/v1/receive\n  queue_config:\n    batch_send_deadline: 500ms\n",
            r1.rw_port
        ),
    )
    .unwrap();
    let data = work.join("prom-data");
    let plog = work.join("prometheus.log");
    let mut cmd = Command::new(&prom_bin);
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
        .arg("--storage.tsdb.min-block-duration=2h")
        .arg("--storage.tsdb.max-block-duration=2h");
    let _prom = ProcessGuard::spawn("prometheus", &mut cmd, &plog);
    assert!(wait_ready(pport, "/-/ready", Duration::from_secs(60)), "prometheus not ready");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Shutdown::new();
    let sidecar_args = norn_sidecar::Args {
        prometheus_url: format!("http://127.0.0.1:{pport}"),
        prometheus_ready_timeout: "30s".into(),
        get_config_interval: "1s".into(),
        get_config_timeout: "2s".into(),
        request_timeout: "30s".into(),
        tsdb_path: data.clone(),
        grpc_address: format!("127.0.0.1:{sgrpc}"),
        http_address: format!("127.0.0.1:{shttp}"),
        objstore_config_file: None,
        objstore_config: None,
        upload_compacted: false,
        sync_interval: "30s".into(),
        min_time: "0000-01-01T00:00:00Z".into(),
    };
    let sidecar = rt.spawn(norn_sidecar::run(sidecar_args, stop.clone()));
    assert!(wait_ready(shttp, "/-/ready", Duration::from_secs(60)), "sidecar not ready");

    let qhttp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let qgrpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let qport = qhttp.local_addr().unwrap().port();
    qhttp.set_nonblocking(true).unwrap();
    qgrpc.set_nonblocking(true).unwrap();
    let qargs = norn_query::Args {
        endpoints: vec![format!("127.0.0.1:{sgrpc}"), r1.grpc_addr(), r2.grpc_addr()],
        replica_labels: vec!["replica".into(), "receive_replica".into()],
        endpoint_refresh_interval: Duration::from_millis(500),
        ..Default::default()
    };
    let query = rt.spawn({
        let stop = stop.clone();
        async move {
            let h = tokio::net::TcpListener::from_std(qhttp).unwrap();
            let g = tokio::net::TcpListener::from_std(qgrpc).unwrap();
            norn_query::run_with_listeners(qargs, h, g, stop).await
        }
    });

    // Let 15 s of scrapes reach all three copies (remote write runs a little behind).
    std::thread::sleep(Duration::from_secs(18));
    let t = now_ms() - 3000;
    let range = |expr: &str, dedup: bool| {
        format!(
            "/api/v1/query_range?query={}&start={}&end={}&step=1&dedup={dedup}",
            enc(expr),
            secs(t - 12_000),
            secs(t)
        )
    };
    wait_until("three copies visible to the querier", Duration::from_secs(60), || {
        [r#"up{job="prometheus"}"#, "prometheus_build_info"].iter().all(|e| {
            let v = api(qport, &range(e, false));
            v["data"]["result"].as_array().is_some_and(|r| r.len() == 3)
        })
    });
    let copies = api(qport, &range("prometheus_build_info", false));
    let replicas: Vec<String> = copies["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}/{}", s["metric"]["replica"], s["metric"]["receive_replica"]))
        .collect();
    assert_eq!(replicas, [r#""p0"/"0""#, r#""p0"/"1""#, r#""p0"/null"#], "{copies}");

    // Remote write delivers the range to the receivers some time after Prometheus stored
    // it (batches, retries on a loaded machine), and a scrape's samples land when it ends:
    // each answer is polled (bounded) until it matches.
    for expr in ["up", "prometheus_build_info", "prometheus_tsdb_head_series", "sum by (job) (up)"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let theirs = result(&api(pport, &range(expr, true)), &[]);
            let ours = result(&api(qport, &range(expr, true)), &["cluster", "tenant_id"]);
            assert!(!theirs.is_empty(), "{expr}");
            if ours == theirs {
                break;
            }
            if Instant::now() > deadline {
                assert_eq!(ours, theirs, "{expr}: the deduplicated answer differs from Prometheus's");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    stop.cancel();
    rt.block_on(query).unwrap().unwrap();
    rt.block_on(sidecar).unwrap().unwrap();
}
