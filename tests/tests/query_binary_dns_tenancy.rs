//! The `norn query` BINARY as a Thanos user starts it: two `norn receive` processes (RF=1,
//! so each holds part of the data) found through `--endpoint=dnssrv+…` answered by dnsmasq
//! on a loopback port (`--endpoint.dns-server`); `--query.enforce-tenancy` with two tenants
//! written through the tenant header (each sees only its own series, whatever tenant matcher
//! its query carries); `--no-query.partial-response` (kingpin's negated flag) making a dead
//! receiver an error; and `dnssrv+name:port` using that port instead of the records' ports,
//! as Thanos does.

mod receive_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use norn_testkit::dns::Dnsmasq;
use norn_testkit::receive::{Receiver, http_post};
use norn_testkit::{ProcessGuard, free_port, http_get, norn_bin, wait_ready};
use receive_support::{now_ms, post, write_body};

const SRV: &str = "_grpc._tcp.recv.norn.test";

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// `norn query` with `flags`, ready; its HTTP port.
fn start_querier(work: &Path, name: &str, flags: &[String]) -> (ProcessGuard, u16) {
    let (http, grpc) = (free_port(), free_port());
    let log = work.join(format!("{name}.log"));
    let guard = ProcessGuard::spawn(
        name,
        Command::new(norn_bin())
            .arg("query")
            .arg(format!("--http-address=127.0.0.1:{http}"))
            .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
            .arg("--endpoint.refresh-interval=300ms")
            // An Info probe that times out marks its receiver down until the next round
            // (queries then miss its data): generous, for a loaded machine.
            .arg("--endpoint.info-timeout=10s")
            .args(flags),
        &log,
    );
    assert!(
        wait_ready(http, "/-/ready", Duration::from_secs(60)),
        "{name} not ready:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    (guard, http)
}

/// The receive endpoints the querier lists, sorted, once there are `n` (bounded wait: 60 s,
/// as Info calls time out and are retried a refresh later on a loaded machine).
fn wait_stores(port: u16, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (_, body) = http_get(port, "/api/v1/stores").unwrap();
        names = json(&body)["data"]["receive"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["name"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        names.sort();
        if names.len() >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    names
}

/// An instant query POSTed as a form, with a tenant header if given.
fn query(port: u16, tenant: Option<&str>, expr: &str, t: i64) -> (u16, serde_json::Value) {
    let body: String = [("query", expr.to_string()), ("time", t.to_string())]
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(t) = tenant {
        h.push(("THANOS-TENANT", t));
    }
    let (code, text) = http_post(port, "/api/v1/query", &h, body.as_bytes()).unwrap();
    (code, json(&text))
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `(tenant_id, job)` of every series of an instant vector, sorted.
fn series_of(v: &serde_json::Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let m = &s["metric"];
                    (m["tenant_id"].as_str().unwrap_or("").into(), m["job"].as_str().unwrap_or("").into())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn query_binary_discovers_by_dnssrv_and_enforces_tenancy() {
    let work = norn_testkit::tempdir().unwrap();
    let mut rs = Receiver::ring(work.path(), 2, 1, "replica");
    let ports: Vec<u16> = rs.iter().map(|r| r.grpc_port).collect();
    let Some(dns) = Dnsmasq::start(work.path(), SRV, "recv.norn.test", &ports) else { return };
    let dns_flag = format!("--endpoint.dns-server=127.0.0.1:{}", dns.port);

    // Two tenants, several jobs each, so the ring spreads each tenant over both receivers.
    let end = now_ms() / 1000 * 1000 - 30_000;
    let jobs = |prefix: &str| (0..6).map(|j| format!("{prefix}{j}")).collect::<Vec<_>>();
    for (tenant, prefix) in [("alpha", "a"), ("beta", "b")] {
        let js = jobs(prefix);
        let inputs: Vec<receive_support::Input<'_>> = js
            .iter()
            .map(|j| {
                (
                    vec![("__name__", "tq_up"), ("job", j.as_str())],
                    (0..4).rev().map(|k| (end - k * 15_000, 1.0)).collect(),
                )
            })
            .collect();
        let (code, msg) = post(rs[0].rw_port, Some(tenant), &write_body(&inputs));
        assert!(code == 200 || code == 204, "write {tenant}: {code} {msg}");
    }
    let t = end / 1000;

    let (_q, port) = start_querier(
        work.path(),
        "query-enforced",
        &[
            format!("--endpoint=dnssrv+{SRV}"),
            dns_flag.clone(),
            "--query.enforce-tenancy".into(),
            "--no-query.partial-response".into(),
        ],
    );
    let want: Vec<String> =
        rs.iter().map(|r| r.grpc_addr()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    assert_eq!(wait_stores(port, 2), want);
    let (_, flags) = http_get(port, "/api/v1/status/flags").unwrap();
    let flags = json(&flags);
    assert_eq!(flags["data"]["query.partial-response"], "false", "{flags}");
    assert_eq!(flags["data"]["query.enforce-tenancy"], "true", "{flags}");

    let own = |tenant: &str, prefix: &str| -> Vec<(String, String)> {
        jobs(prefix).into_iter().map(|j| (tenant.to_string(), j)).collect()
    };
    for (tenant, expr, want) in [
        (Some("alpha"), "tq_up", own("alpha", "a")),
        (Some("beta"), "tq_up", own("beta", "b")),
        // A matcher on another tenant is replaced by the enforced one, not added to it.
        (Some("alpha"), r#"tq_up{tenant_id="beta"}"#, own("alpha", "a")),
        (Some("beta"), r#"tq_up{tenant_id=~"alpha|beta"}"#, own("beta", "b")),
        // No header: the default tenant, which wrote nothing.
        (None, "tq_up", vec![]),
    ] {
        let (code, v) = query(port, tenant, expr, t);
        assert_eq!(code, 200, "{tenant:?} {expr}: {v}");
        assert_eq!(series_of(&v), want, "{tenant:?} {expr}: {v}");
    }

    // `dnssrv+name:port`: the given port replaces the records' ports, so both records name
    // the same endpoint.
    let (_q2, port2) =
        start_querier(work.path(), "query-port", &[format!("--endpoint=dnssrv+{SRV}:{}", ports[0]), dns_flag]);
    assert_eq!(wait_stores(port2, 1), vec![rs[0].grpc_addr()]);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(wait_stores(port2, 1), vec![rs[0].grpc_addr()], "the record ports must not come back");
    // Without enforcement, a tenant's query reads whatever that receiver holds.
    let (code, v) = query(port2, Some("alpha"), "tq_up", t);
    assert_eq!(code, 200, "{v}");
    assert!(!series_of(&v).is_empty(), "{v}");

    // A receiver gone, partial response off (the negated flag): the query fails.
    rs[1].kill();
    let mut last = (0, serde_json::Value::Null);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        last = query(port, Some("alpha"), "tq_up", t);
        if last.0 != 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(last.0, 200, "{}", last.1);
    assert_eq!(last.1["status"], "error", "{}", last.1);
}
