//! Head append throughput: 10k series × 120 samples (15 s apart) on one thread,
//! committing every 1000 samples, with the WAL on a temp dir — once with the default
//! fsync-per-commit policy and once without fsync.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use norn_model::Labels;
use norn_tsdb::head::{Head, HeadOptions};
use norn_tsdb::wal::{SyncPolicy, WalOptions};

const SERIES: usize = 10_000;
const SAMPLES: usize = 120;
const BATCH: usize = 1000;

fn labels() -> Vec<Labels> {
    (0..SERIES)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", format!("metric_{}", i % 100)),
                ("instance", format!("host-{}:9100", i / 100)),
                ("job", "node".to_string()),
            ])
        })
        .collect()
}

fn run(lbls: &[Labels], sync: SyncPolicy) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let opts = HeadOptions { wal: WalOptions { sync, ..Default::default() }, ..Default::default() };
    let head = Head::open(dir.path(), opts).unwrap();
    let start = Instant::now();
    let mut app = head.appender();
    for s in 0..SAMPLES {
        let t = 1_700_000_000_000 + s as i64 * 15_000;
        for (i, l) in lbls.iter().enumerate() {
            app.append(l, t, (s * 7 + i) as f64).unwrap();
            if app.len() == BATCH {
                app.commit().unwrap();
                app = head.appender();
            }
        }
    }
    app.commit().unwrap();
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let lbls = labels();
    let mut g = c.benchmark_group("head_append");
    g.throughput(Throughput::Elements((SERIES * SAMPLES) as u64));
    g.sample_size(10);
    for (name, sync) in [("fsync_per_commit", SyncPolicy::PerCommit), ("no_fsync", SyncPolicy::OnSegmentSwitch)] {
        g.bench_function(name, |b| b.iter_custom(|iters| (0..iters).map(|_| run(&lbls, sync)).sum()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
