//! The hashring file is re-read when it changes: a valid new ring takes effect without
//! a restart and without failing requests, an invalid file is reported and the last good
//! ring is kept.

mod receive_support;

use std::time::{Duration, Instant};

use norn_testkit::http_get;
use norn_testkit::receive::Receiver;
use receive_support::{now_ms, post, write_body};

fn reloads(r: &Receiver, result: &str) -> u64 {
    let (_, m) = http_get(r.http_port, "/metrics").unwrap();
    let key = format!("norn_receive_hashring_reloads_total{{result=\"{result}\"}}");
    m.lines().find(|l| l.starts_with(&key)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replaces the file in one rename, so that the receiver (re-reading it every 200 ms)
/// never reads it half-written.
fn write_ring(ring: &std::path::Path, text: &str) {
    let tmp = ring.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, ring).unwrap();
}

#[test]
fn ring_file_changes_are_picked_up_and_bad_files_ignored() {
    let work = norn_testkit::tempdir().unwrap();
    let ring = work.path().join("hashring.json");
    let extra = vec![
        format!("--receive.hashrings-file={}", ring.display()),
        "--receive.hashrings-file-refresh-interval=200ms".into(),
    ];
    let mut r = Receiver::new("hr", work.path(), &extra);
    // This node alone.
    write_ring(&ring, &format!("[{{\"endpoints\": [\"{}\"]}}]", r.grpc_addr()));
    r.start();
    let body = |i: i64| write_body(&[(vec![("__name__", "norn_reload"), ("n", "1")], vec![(now_ms() + i, 1.0)])]);
    assert_eq!(post(r.rw_port, None, &body(0)).0, 204);

    // Invalid JSON: reported, the ring is kept and writes still succeed.
    write_ring(&ring, "[{not json");
    wait_for("failed reload", || reloads(&r, "failure") >= 1);
    assert_eq!(post(r.rw_port, None, &body(1)).0, 204);
    // The reload is counted before it is logged.
    wait_for("the failed reload logged", || r.log_text().contains("keeping the last good ring"));

    // An empty list is refused too.
    write_ring(&ring, "[]");
    wait_for("second failed reload", || reloads(&r, "failure") >= 2);
    assert_eq!(post(r.rw_port, None, &body(2)).0, 204);

    // A valid ring that sends this tenant elsewhere (an address nobody listens on):
    // writes now fail as unavailable (503, retried by Prometheus), proving the new ring is used.
    write_ring(&ring, "[{\"endpoints\": [\"127.0.0.1:1\"]}]");
    wait_for("successful reload", || reloads(&r, "success") >= 2);
    let (code, text) = post(r.rw_port, None, &body(3));
    assert_eq!(code, 503, "{text}");

    // And back.
    write_ring(&ring, &format!("[{{\"endpoints\": [\"{}\"]}}]", r.grpc_addr()));
    wait_for("third reload", || reloads(&r, "success") >= 3);
    assert_eq!(post(r.rw_port, None, &body(4)).0, 204);
}
