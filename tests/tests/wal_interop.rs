//! The WAL `norn receive` writes is Prometheus's: a Prometheus 2.42 started on a
//! receiver's tenant directory (with `--enable-feature=exemplar-storage`, without which
//! it skips exemplar records) replays its samples and exemplars and serves them.

use std::process::Command;
use std::time::{Duration, Instant};

use norn_storeapi::prometheus;
use norn_testkit::receive::{Receiver, http_post};
use norn_testkit::{ProcessGuard, free_port, http_get, require_tool, tempdir, wait_ready};
use prost::Message;
use serde_json::Value;

fn snappy(b: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(b).unwrap()
}

/// Per series name (sorted), its exemplars as `(trace id, value, timestamp)`, JSON-printed.
type SeriesExemplars = Vec<(String, Vec<(String, String, String)>)>;

fn exemplars_of(v: &Value) -> SeriesExemplars {
    let mut out: Vec<_> = v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {v}"))
        .iter()
        .map(|s| {
            let ex = s["exemplars"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["labels"]["trace_id"].to_string(), e["value"].to_string(), e["timestamp"].to_string()))
                .collect();
            (s["seriesLabels"]["__name__"].to_string(), ex)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn prometheus_replays_a_receive_wal_with_exemplars() {
    let Some(prom) = require_tool("prometheus") else { return };
    let work = tempdir().unwrap();
    let mut recv = Receiver::new("r0", work.path(), &["--tsdb.max-exemplars=100".to_string()]);
    recv.start();
    // Whole seconds, so exemplar timestamps end in .007 whatever the clock.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 * 1000;
    let l = |n: &str, v: &str| prometheus::Label { name: n.into(), value: v.into() };
    let series = |name: &str, k: i64| prometheus::TimeSeries {
        labels: vec![l("__name__", name), l("job", "j")],
        samples: (0..3)
            .map(|i| prometheus::Sample { value: (k + i) as f64, timestamp: now - 60_000 + i * 20_000 })
            .collect(),
        exemplars: (0..3)
            .map(|i| prometheus::Exemplar {
                labels: vec![l("trace_id", &format!("{name}-{i}"))],
                value: 0.5 + i as f64,
                timestamp: now - 60_000 + i * 20_000 + 7,
            })
            .collect(),
        ..Default::default()
    };
    let req = prometheus::WriteRequest { timeseries: vec![series("wal_a", 1), series("wal_b", 10)], metadata: vec![] };
    let h = [
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "snappy"),
        ("X-Prometheus-Remote-Write-Version", "0.1.0"),
    ];
    let (code, body) = http_post(recv.rw_port, "/api/v1/receive", &h, &snappy(&req.encode_to_vec())).unwrap();
    assert_eq!(code, 204, "{body}");
    recv.stop();

    let data = recv.data_dir.join("default-tenant");
    assert!(data.join("wal").is_dir(), "no WAL in {}", data.display());
    let config = work.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n").unwrap();
    let port = free_port();
    let log = work.path().join("prometheus.log");
    let mut guard = ProcessGuard::spawn(
        "prometheus",
        Command::new(prom)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg("--enable-feature=exemplar-storage")
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        &log,
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_ready(port, "/-/ready", Duration::from_secs(60)), "prometheus not ready:\n{}", log_text());

    let (start, end) = ((now - 120_000) as f64 / 1000.0, (now + 1000) as f64 / 1000.0);
    let q = format!("/api/v1/query_exemplars?query=%7B__name__%3D~%22wal_.%2B%22%7D&start={start}&end={end}");
    // Ready means the WAL has been replayed; the loop only guards against a slow HTTP API.
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let r = http_get(port, &q).ok().filter(|(c, _)| *c == 200);
        if let Some((_, b)) = r {
            break serde_json::from_str::<Value>(&b).unwrap_or_else(|e| panic!("{e}: {b}"));
        }
        assert!(Instant::now() < deadline, "no answer to {q}:\n{}", log_text());
        std::thread::sleep(Duration::from_millis(250));
    };
    let want: SeriesExemplars = ["wal_a", "wal_b"]
        .iter()
        .map(|name| {
            let ex = (0..3)
                .map(|i| {
                    let ts = now - 60_000 + i * 20_000 + 7;
                    (
                        format!("\"{name}-{i}\""),
                        format!("\"{}\"", 0.5 + i as f64),
                        format!("{}.{:03}", ts / 1000, ts % 1000),
                    )
                })
                .collect();
            (format!("\"{name}\""), ex)
        })
        .collect();
    assert_eq!(exemplars_of(&got), want, "{got}\n{}", log_text());
    // The samples too.
    let (_, body) = http_get(port, &format!("/api/v1/query?query=wal_b&time={end}")).unwrap();
    assert!(body.contains("\"12\""), "{body}\n{}", log_text());
    assert!(guard.terminate(Duration::from_secs(60)), "prometheus did not stop:\n{}", log_text());
}
