//! Parses and evaluates arbitrary query strings, as an instant and as a range query, over
//! a small store of floats, a classic histogram, a native histogram and a stale marker.
//! Any outcome is fine except a panic; limits keep pathological queries short.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use norn_model::Labels;
use norn_promql::conformance::script::parse_histogram;
use norn_promql::value::stale_nan;
use norn_promql::{Engine, EngineOptions, MemStorage, StoredValue};

fn storage() -> &'static MemStorage {
    static S: OnceLock<MemStorage> = OnceLock::new();
    S.get_or_init(|| {
        let mut m = MemStorage::new();
        let min = 60_000i64;
        for (job, k) in [("a", 1.0), ("b", -2.5)] {
            let l = Labels::from_pairs([("__name__", "m"), ("job", job)]);
            m.append(&l, (0..20).map(|i| (i * min, StoredValue::Float(k * i as f64))));
            for le in ["0.1", "1", "+Inf"] {
                let l = Labels::from_pairs([("__name__", "h_bucket"), ("job", job), ("le", le)]);
                let f: f64 = if le == "+Inf" { 3.0 } else { le.parse().unwrap_or(0.0) + 1.0 };
                m.append(&l, (0..20).map(|i| (i * min, StoredValue::Float(f * i as f64))));
            }
        }
        let g = Labels::from_pairs([("__name__", "g"), ("x", "y")]);
        let mut vals: Vec<(i64, StoredValue)> = (0..10).map(|i| (i * min, StoredValue::Float(f64::NAN))).collect();
        vals.push((10 * min, StoredValue::Float(stale_nan())));
        vals.push((11 * min, StoredValue::Float(f64::INFINITY)));
        m.append(&g, vals);
        if let Ok((h, _)) = parse_histogram("{{schema:0 sum:5 count:4 z_bucket:1 buckets:[1 2 1] n_buckets:[1]}}") {
            let h = Arc::new(h);
            let l = Labels::from_pairs([("__name__", "nh")]);
            m.append(&l, (0..20).map(|i| (i * min, StoredValue::Histogram(h.clone()))));
        }
        m
    })
}

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        Engine::new(EngineOptions {
            max_samples: 100_000,
            timeout: Some(Duration::from_millis(500)),
            ..EngineOptions::default()
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else { return };
    if q.len() > 512 {
        return;
    }
    let (s, e) = (storage(), engine());
    let _ = e.instant_query(s, q, 10 * 60_000);
    let _ = e.range_query(s, q, 0, 20 * 60_000, 60_000);
});
