//! The querier against three in-process replicas: answers equal those of the engine over
//! one copy of the data, replicas are deduplicated, a dead replica changes nothing but
//! adds a warning (or fails the query with partial response off), queriers stack, and
//! `dnssrv+` endpoints resolve through a real DNS server when dnsmasq is installed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{FakeStore, enc, serve_store, start_querier};
use norn_model::Labels;
use norn_promql::{Engine, MemStorage, StoredValue};
use tokio_util::sync::CancellationToken;

const T0: i64 = 1_700_000_000_000;

fn data() -> common::Data {
    let mut out = Vec::new();
    for (i, job) in ["api", "db", "web"].iter().enumerate() {
        for inst in 0..2 {
            let l = Labels::from_pairs([
                ("__name__", "http_requests_total"),
                ("job", job),
                ("instance", &format!("h{inst}")),
            ]);
            let mut v = 0.0;
            let samples = (0..240)
                .map(|k| {
                    v += (i + inst + 1) as f64 * (1 + k % 3) as f64;
                    (T0 + k * 15_000, v)
                })
                .collect();
            out.push((l, samples));
        }
        let l = Labels::from_pairs([("__name__", "up"), ("job", job)]);
        out.push((l, (0..240).map(|k| (T0 + k * 15_000, if k % 50 == 7 { 0.0 } else { 1.0 })).collect()));
    }
    out
}

fn truth_json(e: &Engine, mem: &MemStorage, q: &str, range: Option<(i64, i64, i64)>, ts: i64) -> String {
    let r = match range {
        None => e.instant_query(mem, q, ts),
        Some((s, en, st)) => e.range_query(mem, q, s, en, st),
    };
    let mut d = String::new();
    norn_query::json::write_query_data(&mut d, &r.value.expect("truth query"), if range.is_some() { 0 } else { ts });
    d
}

fn data_of(body: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["data"].clone()
}

fn args(endpoints: Vec<String>) -> norn_query::Args {
    norn_query::Args {
        endpoints,
        replica_labels: vec!["replica".into()],
        endpoint_refresh_interval: Duration::from_millis(200),
        // An Info probe that times out marks its store down until the next round
        // (queries then miss its data): generous, for a loaded machine.
        endpoint_info_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_dedup_partial_response_and_stacking() {
    let d = Arc::new(data());
    let mut stops = Vec::new();
    let mut addrs = Vec::new();
    for r in 0..3 {
        let stop = CancellationToken::new();
        let store = FakeStore::new(Labels::from_pairs([("replica", format!("r{r}"))]), d.clone());
        addrs.push(serve_store(store, stop.clone()).await.to_string());
        stops.push(stop);
    }
    let q = start_querier(args(addrs.clone())).await;

    let mut mem = MemStorage::new();
    for (l, s) in d.iter() {
        mem.append(l, s.iter().map(|(t, v)| (*t, StoredValue::Float(*v))));
    }
    let engine = Engine::default();
    let end = T0 + 239 * 15_000;
    let instant = ["up", "http_requests_total", "sum by (job) (rate(http_requests_total[5m]))", "count(up)", "1 + 2"];
    let ranged = ["rate(http_requests_total[2m])", "max_over_time(up[10m])", "http_requests_total offset 5m"];
    let check = |label: &str, body: &str, want: &str| {
        let got = data_of(body);
        let want: serde_json::Value = serde_json::from_str(want).unwrap();
        assert_eq!(got, want, "{label}: {body}");
    };
    for expr in instant {
        let (code, body) = q.get(&format!("/api/v1/query?query={}&time={}", enc(expr), end as f64 / 1000.0)).await;
        assert_eq!(code, 200, "{body}");
        assert!(!body.contains("warnings"), "{body}");
        check(expr, &body, &truth_json(&engine, &mem, expr, None, end));
    }
    for expr in ranged {
        let (s, e) = (T0 + 600_000, end);
        let (code, body) = q
            .post_form(
                "/api/v1/query_range",
                &[
                    ("query", expr),
                    ("start", &(s / 1000).to_string()),
                    ("end", &(e / 1000).to_string()),
                    ("step", "30s"),
                ],
            )
            .await;
        assert_eq!(code, 200, "{body}");
        check(expr, &body, &truth_json(&engine, &mem, expr, Some((s, e, 30_000)), 0));
    }

    // Series, labels and values hide the replica label under dedup...
    let (_, body) = q.get(&format!("/api/v1/series?match[]={}", enc("up"))).await;
    let series = data_of(&body);
    assert_eq!(series.as_array().unwrap().len(), 3, "{body}");
    assert!(!body.contains("replica"), "{body}");
    let (_, body) = q.get("/api/v1/labels").await;
    assert_eq!(data_of(&body), serde_json::json!(["__name__", "instance", "job"]));
    let (_, body) = q.get("/api/v1/label/job/values").await;
    assert_eq!(data_of(&body), serde_json::json!(["api", "db", "web"]));
    // ...and show it without.
    let (_, body) = q.get(&format!("/api/v1/series?match[]={}&dedup=false", enc("up"))).await;
    assert_eq!(data_of(&body).as_array().unwrap().len(), 9, "{body}");
    let (_, body) = q.get(&format!("/api/v1/query?query=up&time={}&dedup=false", end / 1000)).await;
    assert_eq!(data_of(&body)["result"].as_array().unwrap().len(), 9, "{body}");
    let (_, body) = q.get("/api/v1/stores").await;
    assert_eq!(data_of(&body)["receive"].as_array().unwrap().len(), 3, "{body}");

    // A querier on top of this one's StoreAPI answers the same.
    let top = start_querier(args(vec![q.grpc.to_string()])).await;
    for expr in instant {
        let path = format!("/api/v1/query?query={}&time={}", enc(expr), end as f64 / 1000.0);
        let (_, a) = q.get(&path).await;
        let (_, b) = top.get(&path).await;
        assert_eq!(data_of(&a), data_of(&b), "stacked {expr}");
    }

    // A sample limit bounds what one query may decode.
    let small = start_querier(norn_query::Args { max_samples: 100, ..args(addrs.clone()) }).await;
    let (code, body) =
        small.get(&format!("/api/v1/query?query={}&time={}", enc("http_requests_total[1h]"), end / 1000)).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("too many samples"), "{body}");
    small.stop.cancel();

    // One replica down: same data, with a warning; an error when partial response is off.
    let before = q.get(&format!("/api/v1/query?query={}&time={}", enc("http_requests_total"), end / 1000)).await.1;
    stops[0].cancel();
    // The store shuts down and the querier notices on its own schedule: polled (bounded)
    // until the answer carries the warning.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let after = loop {
        let (code, after) =
            q.get(&format!("/api/v1/query?query={}&time={}", enc("http_requests_total"), end / 1000)).await;
        assert_eq!(code, 200, "{after}");
        assert_eq!(data_of(&before), data_of(&after));
        let v: serde_json::Value = serde_json::from_str(&after).unwrap();
        if v["warnings"].as_array().is_some_and(|w| !w.is_empty()) || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(after["warnings"].as_array().is_some_and(|w| !w.is_empty()), "{after}");
    let (code, body) =
        q.get(&format!("/api/v1/query?query={}&time={}&partial_response=false", enc("up"), end / 1000)).await;
    assert_ne!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"error\""), "{body}");
    top.stop.cancel();
    q.stop.cancel();
    for s in stops {
        s.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federate_returns_latest_samples_in_text_format() {
    let now = norn_query::timeparse::now_ms();
    let d = Arc::new(vec![
        (Labels::from_pairs([("__name__", "up"), ("job", "a")]), vec![(now - 60_000, 0.0), (now - 30_000, 1.0)]),
        (Labels::from_pairs([("__name__", "up"), ("job", "old")]), vec![(now - 3_600_000, 1.0)]),
        (Labels::from_pairs([("__name__", "x_total"), ("k", "q\"v")]), vec![(now - 10_000, 2.5)]),
    ]);
    let stop = CancellationToken::new();
    let mut eps = Vec::new();
    for r in 0..2 {
        eps.push(
            serve_store(FakeStore::new(Labels::from_pairs([("replica", format!("r{r}"))]), d.clone()), stop.clone())
                .await
                .to_string(),
        );
    }
    let q = start_querier(args(eps)).await;
    let (code, body) =
        q.get(&format!("/federate?match[]={}&match[]={}", enc("up"), enc("{__name__=\"x_total\"}"))).await;
    assert_eq!(code, 200, "{body}");
    let want = format!(
        "# TYPE up untyped\nup{{job=\"a\"}} 1 {}\n# TYPE x_total untyped\nx_total{{k=\"q\\\"v\"}} 2.5 {}\n",
        now - 30_000,
        now - 10_000
    );
    assert_eq!(body, want);
    q.stop.cancel();
    stop.cancel();
}

#[tokio::test]
async fn api_errors_and_misc_endpoints() {
    let q = start_querier(args(vec![])).await;
    let cases: &[(&str, u16, &str)] = &[
        ("/api/v1/query?query=sum(", 400, "bad_data"),
        ("/api/v1/query?query=up&time=abc", 400, "invalid parameter \\\"time\\\""),
        ("/api/v1/query_range?query=up&start=10&end=5&step=1", 400, "end timestamp must not be before start time"),
        ("/api/v1/query_range?query=up&start=0&end=5&step=0", 400, "zero or negative query resolution step"),
        ("/api/v1/query_range?query=up&start=0&end=100000&step=1", 400, "exceeded maximum resolution of 11,000 points"),
        ("/api/v1/series", 400, "no match[] parameter provided"),
        ("/api/v1/query?query=up", 200, "{\"resultType\":\"vector\",\"result\":[]}"),
        ("/api/v1/query?query=1.5&time=2.5", 200, "{\"resultType\":\"scalar\",\"result\":[2.500,\"1.5\"]}"),
        ("/api/v1/labels", 200, "\"data\":[]"),
        ("/api/v1/metadata", 200, "\"data\":{}"),
        ("/api/v1/query_exemplars?query=up", 200, "\"data\":[]"),
        ("/api/v1/format_query?query=sum%20by(job)(up)", 200, "\"data\":\"sum by (job) (up)\""),
        ("/api/v1/status/buildinfo", 200, "\"version\""),
        ("/api/v1/status/flags", 200, "\"query.replica-label\":\"replica\""),
        ("/", 200, "Norn query"),
        ("/-/healthy", 200, "Healthy"),
    ];
    for (path, code, needle) in cases {
        let (c, body) = q.get(path).await;
        assert_eq!(c, *code, "{path}: {body}");
        assert!(body.contains(needle), "{path}: {body} lacks {needle}");
    }
    q.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnssrv_endpoints_through_dnsmasq() {
    let Some(dnsmasq) =
        ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"].into_iter().find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("skipping: dnsmasq not installed (apt-get install dnsmasq-base)");
        return;
    };
    let d = Arc::new(data());
    let stop = CancellationToken::new();
    let mut ports = Vec::new();
    for r in 0..3 {
        let store = FakeStore::new(Labels::from_pairs([("replica", format!("r{r}"))]), d.clone());
        ports.push(serve_store(store, stop.clone()).await.port());
    }
    let dns_port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = std::process::Command::new(dnsmasq);
    cmd.args([
        "--no-daemon",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        &format!("--port={dns_port}"),
        "--user=root",
        "--pid-file=",
        "--host-record=store.norn.test,127.0.0.1",
    ]);
    for p in &ports {
        cmd.arg(format!("--srv-host=_grpc._tcp.recv.norn.test,store.norn.test,{p}"));
    }
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("start dnsmasq");
    // Ready once it answers on TCP (it binds UDP first), bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", dns_port)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "dnsmasq not answering on port {dns_port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut a = args(vec!["dnssrv+_grpc._tcp.recv.norn.test".into()]);
    a.dns_server = Some(format!("127.0.0.1:{dns_port}").parse().unwrap());
    let q = start_querier(a).await;
    // All three records' stores, once a refresh round has reached them (bounded).
    let (mut n, mut body) = (0, String::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        body = q.get("/api/v1/stores").await.1;
        n = data_of(&body)["receive"].as_array().map(|a| a.len()).unwrap_or(0);
        if n == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, res) = q.get(&format!("/api/v1/query?query=up&time={}", (T0 + 600_000) / 1000)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(n, 3, "{body}");
    assert_eq!(data_of(&res)["result"].as_array().unwrap().len(), 3, "{res}");
    q.stop.cancel();
    stop.cancel();
}
