//! Counter-aware deduplication through the querier: three replicas of a counter, the
//! first with a scrape gap and the others restarted long ago (their count is 980 lower
//! where dedup switches to them). Queries through counter functions see one continuous
//! counter, as Thanos shows it; other queries see the replicas' values as stored.

mod common;

use std::sync::Arc;

use common::{FakeStore, serve_store, start_querier};
use norn_model::Labels;
use norn_promql::{Engine, MemStorage, StoredValue};
use tokio_util::sync::CancellationToken;

const T0: i64 = 1_700_000_000_000;
const SCRAPES: i64 = 80;

fn counter() -> Labels {
    Labels::from_pairs([("__name__", "c_total"), ("job", "x")])
}

/// Replica r0: every 15 s, 1000 + 10 per scrape, no scrapes 40..=47.
fn r0() -> Vec<(i64, f64)> {
    (0..SCRAPES).filter(|k| !(40..48).contains(k)).map(|k| (T0 + k * 15_000, 1000.0 + 10.0 * k as f64)).collect()
}

/// Replicas r1 and r2: 5 s later than r0, 10 per scrape from 0.
fn r1() -> Vec<(i64, f64)> {
    (0..SCRAPES).map(|k| (T0 + k * 15_000 + 5000, 10.0 * k as f64)).collect()
}

/// What dedup picks: r0 up to its gap; then r1 from its first scrape past the penalty
/// (twice the last interval after r0's last sample: 585 s + 30 s, so scrape 41 at 620 s),
/// where dedup stays. `raise` is added to r1's values (the counter adjustment).
fn picked(raise: f64) -> Vec<(i64, f64)> {
    let mut out: Vec<(i64, f64)> = r0().into_iter().filter(|(t, _)| *t <= T0 + 39 * 15_000).collect();
    out.extend(r1().into_iter().filter(|(t, _)| *t >= T0 + 41 * 15_000 + 5000).map(|(t, v)| (t, v + raise)));
    out
}

fn truth_json(e: &Engine, samples: &[(i64, f64)], q: &str, range: (i64, i64, i64)) -> String {
    let mut mem = MemStorage::new();
    mem.append(&counter(), samples.iter().map(|(t, v)| (*t, StoredValue::Float(*v))));
    let r = e.range_query(&mem, q, range.0, range.1, range.2);
    let mut d = String::new();
    norn_query::json::write_query_data(&mut d, &r.value.expect("truth query"), 0);
    d
}

fn data_of(body: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["status"], "success", "{body}");
    v["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_functions_see_no_reset_when_dedup_switches_replicas() {
    check_counter_dedup(false).await;
}

/// The same with stores that strip the replica label when asked (Thanos's
/// `without_replica_labels`): their series are told apart by endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_dedup_with_stores_stripping_replica_labels() {
    check_counter_dedup(true).await;
}

async fn check_counter_dedup(strip: bool) {
    let mut stops = Vec::new();
    let mut addrs = Vec::new();
    for (r, samples) in [("r0", r0()), ("r1", r1()), ("r2", r1())] {
        let stop = CancellationToken::new();
        let mut store = FakeStore::new(Labels::from_pairs([("replica", r)]), Arc::new(vec![(counter(), samples)]));
        store.strip = strip;
        addrs.push(serve_store(store, stop.clone()).await.to_string());
        stops.push(stop);
    }
    let q = start_querier(norn_query::Args {
        endpoints: addrs,
        replica_labels: vec!["replica".into()],
        endpoint_refresh_interval: std::time::Duration::from_millis(200),
        // An Info probe that times out marks its store down until the next round
        // (queries then miss its data): generous, for a loaded machine.
        endpoint_info_timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    })
    .await;

    // At the switch r1 is at 410 where r0 was last at 1390: raised by 980.
    let adjusted = picked(980.0);
    let raw = picked(0.0);
    let engine = Engine::default();
    let range = (T0 + 300_000, T0 + (SCRAPES - 1) * 15_000, 30_000);
    // (query, what the querier must answer like)
    let cases = [
        ("rate(c_total[5m])", &adjusted),
        ("increase(c_total[2m])", &adjusted),
        ("irate(c_total[1m])", &adjusted),
        ("resets(c_total[10m])", &adjusted),
        ("sum by (job) (rate(c_total[5m]))", &adjusted),
        ("c_total", &raw),
        ("max_over_time(c_total[10m])", &raw),
        ("delta(c_total[2m])", &raw),
    ];
    for (expr, samples) in cases {
        let (code, body) = q
            .post_form(
                "/api/v1/query_range",
                &[
                    ("query", expr),
                    ("start", &(range.0 / 1000).to_string()),
                    ("end", &(range.1 / 1000).to_string()),
                    ("step", "30s"),
                ],
            )
            .await;
        assert_eq!(code, 200, "{expr}: {body}");
        let want: serde_json::Value = serde_json::from_str(&truth_json(&engine, samples, expr, range)).unwrap();
        assert_eq!(data_of(&body), want, "{expr}");
    }

    // The adjustment is what removes the reset: without it there is one.
    let path = format!("/api/v1/query?query={}&time={}", common::enc("resets(c_total[30m])"), range.1 / 1000);
    let (_, body) = q.get(&path).await;
    assert_eq!(data_of(&body)["result"][0]["value"][1], "0", "{body}");
    let want = truth_json(&engine, &raw, "resets(c_total[30m])", (range.1, range.1, 1000));
    assert!(want.contains("\"1\""), "the raw replicas have a reset: {want}");

    q.stop.cancel();
    for s in stops {
        s.cancel();
    }
}
