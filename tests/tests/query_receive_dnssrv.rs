//! Three `norn receive` processes (RF=3, replica labels r0..r2) behind `norn query`
//! discovering them with `--endpoint=dnssrv+…` through a real DNS server (dnsmasq on a
//! loopback port). The same remote-write requests go into a Debian Prometheus (its
//! remote-write receiver); the querier's JSON must equal Prometheus's, stay equal with one
//! receiver killed (adding a partial-response warning), and fail with partial response off.

mod receive_support;

#[path = "../../query/tests/common/canonical_json.rs"]
mod canonical_json;

use std::process::Command;
use std::time::{Duration, Instant};

use canonical_json::canonical_without;
use norn_testkit::dns::Dnsmasq;
use norn_testkit::receive::{Receiver, http_post};
use norn_testkit::{ProcessGuard, free_port, http_get, require_tool, wait_ready};
use receive_support::{now_ms, post, write_body};

const TENANT_LABEL: (&str, &str) = ("tenant_id", "default-tenant");

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

fn dataset(end: i64) -> Vec<Series> {
    let mut out = Vec::new();
    let start = end - 3_600_000;
    for (i, job) in ["api", "db"].iter().enumerate() {
        for inst in 0..2 {
            let labels = vec![
                ("__name__".to_string(), "e2e_requests_total".to_string()),
                ("instance".to_string(), format!("h{inst}")),
                ("job".to_string(), job.to_string()),
            ];
            let mut v = 0.0;
            let samples = (0..240)
                .map(|k| {
                    v += ((2 * i + inst + 1) * (1 + k % 3)) as f64;
                    (start + k as i64 * 15_000 + 7, v)
                })
                .collect();
            out.push((labels, samples));
        }
        let labels = vec![("__name__".to_string(), "e2e_up".to_string()), ("job".to_string(), job.to_string())];
        out.push((
            labels,
            (0..240).map(|k| (start + k as i64 * 15_000 + 7, if k % 61 == 3 { 0.0 } else { 1.0 })).collect(),
        ));
    }
    out
}

fn body_of(data: &[Series], extra: Option<(&str, &str)>) -> Vec<u8> {
    let inputs: Vec<receive_support::Input<'_>> = data
        .iter()
        .map(|(l, s)| {
            let mut ls: Vec<(&str, &str)> = l.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            if let Some(e) = extra {
                ls.push(e);
                ls.sort();
            }
            (ls, s.clone())
        })
        .collect();
    write_body(&inputs)
}

#[test]
fn three_receivers_behind_dnssrv_match_prometheus_and_survive_a_kill() {
    let Some(prom_bin) = require_tool("prometheus") else { return };
    let work = norn_testkit::tempdir().unwrap();
    let mut rs = Receiver::ring(work.path(), 3, 3, "replica");
    let ports: Vec<u16> = rs.iter().map(|r| r.grpc_port).collect();
    let Some(dns) = Dnsmasq::start(work.path(), "_grpc._tcp.recv.norn.test", "recv.norn.test", &ports) else { return };

    // Prometheus with its remote-write receiver gets the very same requests.
    let prom_port = free_port();
    let cfg = work.path().join("prometheus.yml");
    std::fs::write(&cfg, "global:\n  scrape_interval: 1h\n").unwrap();
    let _prom = ProcessGuard::spawn(
        "prometheus",
        Command::new(prom_bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", work.path().join("prom-data").display()))
            .arg("--web.enable-remote-write-receiver")
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        &work.path().join("prometheus.log"),
    );
    assert!(wait_ready(prom_port, "/-/ready", Duration::from_secs(60)), "prometheus not ready");

    let end = now_ms() / 1000 * 1000 - 60_000;
    let data = dataset(end);
    let (code, msg) = post(rs[0].rw_port, None, &body_of(&data, None));
    assert!(code == 200 || code == 204, "receive: {code} {msg}");
    let h = [
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "snappy"),
        ("X-Prometheus-Remote-Write-Version", "0.1.0"),
    ];
    // Receivers add the tenant label to every series; Prometheus gets it in the data.
    let (code, msg) = http_post(prom_port, "/api/v1/write", &h, &body_of(&data, Some(TENANT_LABEL))).unwrap();
    assert!(code == 200 || code == 204, "prometheus write: {code} {msg}");

    // The querier, in process, discovering receivers through SRV records.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let http = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let grpc = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let q_port = http.local_addr().unwrap().port();
    let args = norn_query::Args {
        endpoints: vec!["dnssrv+_grpc._tcp.recv.norn.test".into()],
        dns_server: Some(format!("127.0.0.1:{}", dns.port).parse().unwrap()),
        replica_labels: vec!["replica".into()],
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
    // leaves its receiver for a later round.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, stores) = http_get(q_port, "/api/v1/stores").unwrap();
        let n = json(&stores)["data"]["receive"].as_array().map(Vec::len);
        if n == Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "not 3 receivers: {stores}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let t = (end - 120_000) / 1000;
    let (s, e) = ((end - 3_000_000) / 1000, end / 1000);
    let mut paths: Vec<String> = [
        "e2e_up",
        "e2e_requests_total",
        "rate(e2e_requests_total[5m])",
        "sum by (job) (rate(e2e_requests_total[5m]))",
        "count(e2e_up == 0) or vector(0)",
        "max_over_time(e2e_up[1h])",
    ]
    .iter()
    .map(|q| format!("/api/v1/query?query={}&time={t}", enc(q)))
    .collect();
    for q in ["rate(e2e_requests_total[2m])", "sum(e2e_up)"] {
        paths.push(format!("/api/v1/query_range?query={}&start={s}&end={e}&step=60", enc(q)));
    }
    paths.push(format!("/api/v1/series?match[]={}&start={s}&end={e}", enc("e2e_up")));
    paths.push(format!("/api/v1/label/job/values?start={s}&end={e}"));

    let compare = |expect_warning: bool| {
        let mut bad = Vec::new();
        for p in &paths {
            let (pc, pb) = http_get(prom_port, p).unwrap();
            let (nc, nb) = http_get(q_port, p).unwrap();
            let nv = json(&nb);
            // Byte for byte after key ordering; warnings differ by design (a receiver killed).
            let (pc_json, nc_json) = (canonical_without(&pb, &["warnings"]), canonical_without(&nb, &["warnings"]));
            if pc != nc || pc_json != nc_json {
                bad.push(format!("{p}\n  prometheus {pc}: {pb}\n  norn {nc}: {nb}"));
            }
            let warned = nv["warnings"].as_array().is_some_and(|w| !w.is_empty());
            if warned != expect_warning {
                bad.push(format!("{p}: warnings {warned}, expected {expect_warning}: {nb}"));
            }
        }
        bad
    };
    // Replication is asynchronous to the first write's acknowledgement only in quorum terms;
    // give all three receivers a moment to hold every sample.
    let converged = |expect_warning: bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let bad = compare(expect_warning);
            if bad.is_empty() || Instant::now() > deadline {
                return bad;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let bad = converged(false);
    assert!(bad.is_empty(), "{}", bad.join("\n"));

    // One receiver killed: the same answers, now with a warning (once the querier has
    // noticed, which takes a refresh round or a failed call: polled, bounded).
    rs[1].kill();
    let bad = converged(true);
    assert!(bad.is_empty(), "after kill:\n{}", bad.join("\n"));
    let (code, body) =
        http_get(q_port, &format!("/api/v1/query?query=e2e_up&time={t}&partial_response=false")).unwrap();
    assert_ne!(code, 200, "{body}");
    assert_eq!(json(&body)["status"], "error");

    stop.cancel();
    rt.block_on(querier).unwrap().unwrap();
}
