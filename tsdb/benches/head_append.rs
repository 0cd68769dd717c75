//! Head append throughput: 10k series × 120 samples (15 s apart) on one thread,
//! committing every 1000 samples, with the WAL on a temp dir — once with the default
//! fsync-per-commit policy and once without fsync. Also WAL replay (`Head::open`) of
//! the same data, uncompressed and snappy-compressed.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use norn_model::Labels;
use norn_tsdb::head::{Head, HeadOptions};
use norn_tsdb::wal::{Compression, SyncPolicy, WalOptions};

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
    fill(dir.path(), lbls, WalOptions { sync, ..Default::default() })
}

fn fill(dir: &std::path::Path, lbls: &[Labels], wal: WalOptions) -> Duration {
    let opts = HeadOptions { wal, ..Default::default() };
    let head = Head::open(dir, opts).unwrap();
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
    for (name, compression) in [("replay", Compression::None), ("replay_snappy", Compression::Snappy)] {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), &lbls, WalOptions { sync: SyncPolicy::OnSegmentSwitch, compression, ..Default::default() });
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let start = Instant::now();
                        let h = Head::open(dir.path(), HeadOptions::default()).unwrap();
                        let d = start.elapsed();
                        assert_eq!(h.replay_stats().samples, (SERIES * SAMPLES) as u64);
                        drop(h);
                        // Each open starts a new (empty) segment; remove it so every
                        // iteration replays the same WAL.
                        let segs = norn_tsdb::wal::list_segments(&dir.path().join("wal")).unwrap();
                        if segs.len() > 1 {
                            let last = *segs.last().unwrap();
                            std::fs::remove_file(norn_tsdb::wal::segment_path(&dir.path().join("wal"), last)).unwrap();
                        }
                        d
                    })
                    .sum()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
