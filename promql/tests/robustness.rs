//! Bad queries never panic: parse errors and evaluation errors come back as values.

use norn_model::Labels;
use norn_promql::{Engine, MemStorage, QueryError, StoredValue};
use proptest::prelude::*;

fn storage() -> MemStorage {
    let mut s = MemStorage::new();
    for (name, job) in [("up", "a"), ("up", "b"), ("req_total", "a"), ("req_bucket", "a")] {
        let l = Labels::from_pairs([("__name__", name), ("job", job), ("le", "1")]);
        s.append(&l, (0..50).map(|i| (i * 15_000, StoredValue::Float(i as f64))));
    }
    s
}

#[test]
fn parse_errors_are_values() {
    let e = Engine::default();
    let s = storage();
    for q in ["sum(", "foo{", "1 +", "rate(foo)", "foo[5m", "{}", "foo @ bar", ")"] {
        let r = e.instant_query(&s, q, 0);
        assert!(matches!(r.value, Err(QueryError::Parse(_))), "{q}: {:?}", r.value);
    }
}

#[test]
fn parse_errors_carry_positions() {
    let cases = [
        ("foo bar", "1:5: parse error: "),
        ("sum by (a) foo", "1:12: parse error: "),
        ("sum(", "1:5: parse error: unclosed left parenthesis"),
        ("foo +\n bar baz", "2:6: parse error: "),
        // As Prometheus: the lexer reports a stray `)` just after it.
        (")", "1:2: parse error: unexpected right parenthesis ')'"),
    ];
    for (q, want) in cases {
        match norn_promql::parse(q) {
            Err(QueryError::Parse(msg)) => assert!(msg.starts_with(want), "{q:?}: {msg}"),
            other => panic!("{q:?}: {other:?}"),
        }
    }
}

#[test]
fn extreme_queries_do_not_panic() {
    let e = Engine::default();
    let s = storage();
    let queries = [
        "up[1000000y]",
        "up offset 1000000y",
        "up offset -1000000y",
        "rate(up[1ms])",
        "max_over_time(up[100y:1ms])",
        "up @ 1e15",
        "topk(1e300, up)",
        "topk(-1, up)",
        "quantile(NaN, up)",
        "histogram_quantile(0.5, up)",
        "histogram_quantile(0.5, rate(req_bucket[5m]))",
        "label_replace(up, \"x\", \"$99\", \"job\", \"(.*)\")",
        "count_values(\"job\", up)",
        "up / on(job) group_left up",
        "up * on() up",
        "absent(nope{a=\"b\"})",
        "predict_linear(up[1m], 1e308)",
        "round(up, 0)",
        "clamp(up, NaN, NaN)",
        "day_of_week(vector(1e300))",
        "year(vector(-1e18))",
        "sum_over_time(up[5m:0s])",
        "limit_ratio(2, up)",
        "scalar(up) ^ 1e308",
    ];
    for q in queries {
        let _ = e.instant_query(&s, q, 600_000);
        let _ = e.range_query(&s, q, 0, 600_000, 60_000);
    }
    assert!(e.range_query(&s, "up", 0, i64::MAX, 1).value.is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_queries_do_not_panic(q in "[a-z_(){}\\[\\]\"=~!,+*/^%<>@:0-9 .-]{0,40}") {
        let e = Engine::default();
        let s = storage();
        let _ = e.instant_query(&s, &q, 300_000);
    }

    #[test]
    fn composed_queries_do_not_panic(
        f in prop::sample::select(vec!["rate", "irate", "delta", "deriv", "changes", "resets", "avg_over_time",
            "max_over_time", "stddev_over_time", "last_over_time", "mad_over_time", "present_over_time"]),
        agg in prop::sample::select(vec!["sum", "avg", "min", "max", "count", "stddev", "group"]),
        op in prop::sample::select(vec!["+", "-", "*", "/", "%", "^", "==", "!=", ">", "<", "and", "or", "unless"]),
        range in 1u32..600,
        step in 0u32..120,
    ) {
        let e = Engine::default();
        let s = storage();
        let q = format!("{agg} by (job) ({f}(up[{range}s])) {op} on(job) {f}(up[{range}s:{}s])", step + 1);
        let r = e.range_query(&s, &q, 0, 900_000, 30_000);
        prop_assert!(r.value.is_ok() || matches!(r.value, Err(QueryError::Eval(_))), "{q}: {:?}", r.value);
    }
}
