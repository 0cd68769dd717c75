//! PromQL latency: the same generated data in Prometheus 2.42 (fed through remote write)
//! and in Norn's engine (in-process `MemStorage`), a standard query set timed on both.
//!
//! Prometheus is timed by its own `stats=all` query timings (`evalTotalTime`: engine and
//! storage reads, without queueing, HTTP or JSON), with the HTTP round trip shown for
//! reference; Norn by the wall time of `Engine::range_query`/`instant_query` (parse and
//! evaluation). Each figure is the median of `RUNS` after one warm-up run.
//!
//! `cargo run --release -p norn-tests --example bench_promql [INSTANCES]` (default 200:
//! 2 jobs × 200 instances × (2 counters + 1 gauge) + 2 × 6 histogram series, 2 h at 15 s).

use std::time::{Duration, Instant};

use norn_promql::{Engine, EngineOptions};
use norn_testkit::which;
use norn_tests::promql_support::{Prometheus, T0, generate, mem_storage};

const RUNS: usize = 7;

const QUERIES: &[&str] = &[
    "temp",
    "rate(req_total[5m])",
    "sum(rate(req_total[5m]))",
    "sum by (job) (rate(req_total[5m]))",
    "sum by (job, instance) (rate(req_total[5m])) / on (job, instance) temp",
    "rate(req_total[5m]) / ignoring (code) group_left temp",
    "histogram_quantile(0.9, sum by (le, job) (rate(lat_bucket[5m])))",
    "avg_over_time(temp[10m])",
    "quantile_over_time(0.9, temp[10m])",
    "topk(5, temp)",
    "quantile(0.9, temp)",
    "count_values(\"v\", round(temp))",
    "max_over_time(rate(req_total[1m])[10m:1m])",
    "temp > 10 and on (job, instance) sum by (job, instance) (rate(req_total[5m])) > 1",
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let instances: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let data = generate(42, instances, 2 * 3600 * 1000);
    if let Ok(filter) = std::env::var("NORN_BENCH_ONLY") {
        // Norn alone, for profiling: every query containing the filter, range mode, 20 runs.
        let store = mem_storage(&data);
        let engine = Engine::new(EngineOptions::default());
        let (start, end, step) = (T0 + 10 * 60_000 + 500, T0 + 120 * 60_000 + 500, 30_000);
        for q in QUERIES.iter().filter(|q| q.contains(filter.as_str())) {
            let t = Instant::now();
            for _ in 0..20 {
                assert!(engine.range_query(&store, q, start, end, step).value.is_ok());
            }
            println!("{q}: {:.2} ms", ms(t.elapsed()) / 20.0);
        }
        return;
    }
    let bin = which("prometheus").expect("prometheus not on PATH");
    let samples: usize = data.iter().map(|s| s.1.len()).sum();
    println!("{} series, {samples} samples; median of {RUNS} runs after a warm-up\n", data.len());
    let prom = Prometheus::start(&bin);
    prom.write(&data);
    let store = mem_storage(&data);
    let engine = Engine::new(EngineOptions::default());

    // Range: 110 min at 30 s steps (221 steps); instant: near the end of the data.
    let (start, end, step) = (T0 + 10 * 60_000 + 500, T0 + 120 * 60_000 + 500, 30_000);
    let instant_t = T0 + 110 * 60_000 + 500;
    println!("| query | kind | Norn ms | Prometheus eval ms | Prometheus HTTP ms | Norn / Prometheus |");
    println!("|---|---|---:|---:|---:|---:|");
    let (mut log_sum, mut n) = (0.0f64, 0usize);
    let (mut tot_norn, mut tot_prom) = (0.0f64, 0.0f64);
    for q in QUERIES {
        for range in [true, false] {
            let (mut tn, mut tp, mut th) = (Vec::new(), Vec::new(), Vec::new());
            for run in 0..=RUNS {
                let t = Instant::now();
                let r = if range {
                    engine.range_query(&store, q, start, end, step)
                } else {
                    engine.instant_query(&store, q, instant_t)
                };
                let norn = ms(t.elapsed());
                assert!(r.value.is_ok(), "{q}: {:?}", r.value);
                let t = Instant::now();
                let body = prom.query_with(
                    q,
                    if range { start } else { instant_t },
                    range.then_some((end, step)),
                    "&stats=all",
                );
                let http = ms(t.elapsed());
                assert_eq!(body["status"], "success", "{q}: {body}");
                let eval = body["data"]["stats"]["timings"]["evalTotalTime"].as_f64().expect("stats timings") * 1000.0;
                if run > 0 {
                    tn.push(norn);
                    tp.push(eval);
                    th.push(http);
                }
            }
            let (n_ms, p_ms, h_ms) = (median(tn), median(tp), median(th));
            let ratio = n_ms / p_ms;
            log_sum += ratio.ln();
            n += 1;
            tot_norn += n_ms;
            tot_prom += p_ms;
            let kind = if range { "range" } else { "instant" };
            println!("| `{q}` | {kind} | {n_ms:.2} | {p_ms:.2} | {h_ms:.2} | {ratio:.2}× |");
        }
    }
    println!(
        "\ngeometric mean of ratios: {:.2}×; total Norn {tot_norn:.1} ms vs Prometheus {tot_prom:.1} ms ({:.2}×)",
        (log_sum / n as f64).exp(),
        tot_norn / tot_prom
    );
}
