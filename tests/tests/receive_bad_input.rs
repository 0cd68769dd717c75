//! A single `norn receive` refuses malformed and hostile remote writes with a 4xx and a
//! clear message, keeps its memory flat under bodies that claim gigabytes, and keeps
//! serving good writes, which come back over the StoreAPI with the tenant label.

mod receive_support;

use norn_testkit::receive::{Receiver, http_post, rss_kib};
use receive_support::{eq, now_ms, post, series, write_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_and_good_writes_still_land() {
    let work = norn_testkit::tempdir().unwrap();
    let extra = ["--receive.limits.request-size-bytes=1048576", "--receive.limits.labels-per-series=30"]
        .map(String::from)
        .to_vec();
    let mut r = Receiver::new("r0", work.path(), &extra);
    r.start();
    let t = now_ms();
    let good = write_body(&[(vec![("__name__", "norn_good"), ("job", "e2e")], vec![(t, 1.0), (t + 1000, 2.0)])]);

    let snappy = |raw: &[u8]| snap::raw::Encoder::new().compress_vec(raw).unwrap();
    let huge_claim: Vec<u8> = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x01, 0x02].to_vec();
    let mut over_limit = Vec::with_capacity(2 << 20);
    let mut x: u32 = 12345;
    while over_limit.len() < (2 << 20) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        over_limit.extend_from_slice(&x.to_le_bytes());
    }
    let unsorted = write_body(&[(vec![("job", "e2e"), ("__name__", "norn_bad")], vec![(t, 1.0)])]);
    let duplicate = write_body(&[(vec![("__name__", "norn_bad"), ("job", "a"), ("job", "b")], vec![(t, 1.0)])]);
    let no_name = write_body(&[(vec![("job", "nameless")], vec![(t, 1.0)])]);
    let bad_name = write_body(&[(vec![("__name__", "x"), ("bad-name", "v")], vec![(t, 1.0)])]);

    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("bad snappy", None, vec![0x0a, 0xff, 0xff, 0xff], 400, "snappy"),
        ("snappy header claiming 4 GiB", None, huge_claim.clone(), 413, "exceeds the limit"),
        ("bad protobuf", None, snappy(b"\x0a\xff\xff\xff\xff\x0f garbage"), 400, "protobuf"),
        ("body over the limit", None, over_limit, 413, ""),
        ("unsorted labels", None, unsorted, 409, "norn_bad"),
        ("duplicate labels", None, duplicate, 409, "duplicate"),
        ("no metric name", None, no_name, 400, "nameless"),
        ("invalid label name", None, bad_name, 400, "bad-name"),
        ("empty tenant", Some(""), good.clone(), 400, "invalid tenant"),
        ("path traversal tenant", Some("../x"), good.clone(), 400, "invalid tenant"),
    ];
    for (what, tenant, body, want, msg) in &cases {
        let (code, text) = post(r.rw_port, *tenant, body);
        assert_eq!(code, *want, "{what}: got {code} {text:?}");
        assert!(text.contains(msg), "{what}: message {text:?} should mention {msg:?}");
    }
    let (code, text) = http_post(
        r.rw_port,
        "/api/v1/receive",
        &[("Content-Type", "application/x-protobuf;proto=example.Unknown"), ("Content-Encoding", "snappy")],
        &good,
    )
    .unwrap();
    assert_eq!(code, 415, "unknown proto message: {text}");

    // Memory stays flat however often a tiny body claims gigabytes.
    let pid = r.pid().unwrap();
    let before = rss_kib(pid).unwrap();
    for _ in 0..200 {
        assert_eq!(post(r.rw_port, None, &huge_claim).0, 413);
    }
    let after = rss_kib(pid).unwrap();
    assert!(after < before + 64 * 1024, "RSS grew from {before} KiB to {after} KiB");

    // Still serving: a good write lands, with the tenant as external label.
    let (code, text) = post(r.rw_port, Some("team-a"), &good);
    assert_eq!(code, 204, "good write: {text}");
    let got = series(&r.grpc_addr(), vec![eq("__name__", "norn_good")], t - 1, t + 10_000).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].label("tenant_id"), Some("team-a"));
    assert_eq!(got[0].samples, vec![(t, 1.0), (t + 1000, 2.0)]);
    // Nothing from the refused requests was stored.
    let bad = series(&r.grpc_addr(), vec![eq("__name__", "norn_bad")], 0, i64::MAX).await.unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    // Re-sending the newest sample is accepted (a duplicate with an equal value).
    let again = write_body(&[(vec![("__name__", "norn_good"), ("job", "e2e")], vec![(t + 1000, 2.0)])]);
    assert_eq!(post(r.rw_port, Some("team-a"), &again).0, 204);
    // An older sample for the same series is an out-of-order conflict.
    let old = write_body(&[(vec![("__name__", "norn_good"), ("job", "e2e")], vec![(t - 5000, 1.0)])]);
    let (code, text) = post(r.rw_port, Some("team-a"), &old);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("out of order"), "{text}");

    let (code, metrics) = norn_testkit::http_get(r.http_port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("norn_receive_samples_total{outcome=\"appended\"}"), "{metrics}");
    assert!(r.stop().is_some_and(|s| s.success()), "graceful shutdown; log:\n{}", r.log_text());
}
