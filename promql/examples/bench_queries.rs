//! Times a few standard queries over generated data:
//! `cargo run --release -p norn-promql --example bench_queries`.

use std::time::Instant;

use norn_model::Labels;
use norn_promql::{Engine, MemStorage, StoredValue};

fn main() {
    let (jobs, instances, interval, hours) = (10, 100, 15_000i64, 6i64);
    let points = hours * 3_600_000 / interval;
    let mut s = MemStorage::new();
    for j in 0..jobs {
        for i in 0..instances {
            let job = format!("job{j}");
            let inst = format!("inst{i}");
            let l = Labels::from_pairs([("__name__", "http_requests_total"), ("job", &job), ("instance", &inst)]);
            s.append(&l, (0..points).map(|k| (k * interval, StoredValue::Float((k * (i + 1)) as f64))));
            let l = Labels::from_pairs([("__name__", "up"), ("job", &job), ("instance", &inst)]);
            s.append(&l, (0..points).map(|k| (k * interval, StoredValue::Float(1.0))));
        }
    }
    println!("{} series x {points} samples", s.len());
    let e = Engine::default();
    let end = hours * 3_600_000;
    let queries = [
        "sum by (job) (rate(http_requests_total[5m]))",
        "topk(5, rate(http_requests_total[5m]))",
        "http_requests_total / on(job, instance) group_left up",
        "histogram_quantile(0.9, sum by (job, le) (label_replace(rate(http_requests_total[5m]), \"le\", \"$1\", \"instance\", \"inst(.*)\")))",
        "max_over_time(http_requests_total[10m:1m])",
    ];
    for q in queries {
        let t = Instant::now();
        let r = e.range_query(&s, q, 0, end, 60_000);
        let took = t.elapsed();
        let n = match &r.value {
            Ok(norn_promql::Value::Matrix(m)) => m.len(),
            Ok(_) => 0,
            Err(err) => panic!("{q}: {err}"),
        };
        println!("{took:>10.2?}  range 6h/60s  {n:>5} series  {q}");
        let t = Instant::now();
        let _ = e.instant_query(&s, q, end);
        println!("{:>10.2?}  instant                     {q}", t.elapsed());
    }
}
