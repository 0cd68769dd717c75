//! The `norn sidecar` binary: refuses to start beside a Prometheus without external
//! labels and says why; beside one with them it becomes ready, serves /metrics, and
//! stops cleanly on SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use norn_testkit::{ProcessGuard, free_port, http_get, norn_bin, require_tool, tempdir, wait_ready};

fn prometheus(bin: &std::path::Path, dir: &std::path::Path, port: u16, external: &str) -> ProcessGuard {
    let cfg = dir.join(format!("prometheus-{port}.yml"));
    std::fs::write(&cfg, format!("global:\n  scrape_interval: 1s\n{external}scrape_configs: []\n")).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join(format!("data-{port}")).display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let g = ProcessGuard::spawn("prometheus", &mut cmd, &dir.join(format!("prometheus-{port}.log")));
    assert!(wait_ready(port, "/-/ready", Duration::from_secs(60)), "prometheus not ready");
    g
}

fn sidecar(prom_port: u16, dir: &std::path::Path, grpc: u16, http: u16) -> Command {
    let mut c = Command::new(norn_bin());
    c.arg("sidecar")
        .arg(format!("--prometheus.url=http://127.0.0.1:{prom_port}"))
        .arg(format!("--tsdb.path={}", dir.join(format!("data-{prom_port}")).display()))
        .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
        .arg(format!("--http-address=127.0.0.1:{http}"))
        .arg("--prometheus.ready_timeout=20s");
    c
}

#[test]
fn sidecar_binary_refuses_without_external_labels_and_runs_with_them() {
    let Some(bin) = require_tool("prometheus") else { return };
    let tmp = tempdir().unwrap();

    let bare = free_port();
    let _p1 = prometheus(&bin, tmp.path(), bare, "");
    let out = sidecar(bare, tmp.path(), free_port(), free_port()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without external labels:\n{stderr}");
    assert!(stderr.contains("has no external labels") && stderr.contains("external_labels"), "{stderr}");

    let labelled = free_port();
    let _p2 = prometheus(&bin, tmp.path(), labelled, "  external_labels:\n    replica: r0\n");
    let (grpc, http) = (free_port(), free_port());
    let log = tmp.path().join("sidecar.log");
    let mut s = ProcessGuard::spawn("sidecar", &mut sidecar(labelled, tmp.path(), grpc, http), &log);
    assert!(wait_ready(http, "/-/ready", Duration::from_secs(60)), "{}", std::fs::read_to_string(&log).unwrap());
    let (_, metrics) = http_get(http, "/metrics").unwrap();
    assert!(metrics.contains("norn_sidecar_prometheus_up 1"), "{metrics}");

    let pid = s.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = s.try_wait() {
            break st;
        }
        assert!(Instant::now() < end, "sidecar did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit {status}: {}", std::fs::read_to_string(&log).unwrap());
}
