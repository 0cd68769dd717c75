//! Writing a block: 100k series with one 120-sample XOR chunk each.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use norn_model::Labels;
use norn_tsdb::block::BlockWriter;
use norn_tsdb::chunkenc::{Chunk, Encoding, XorChunk};
use norn_tsdb::chunks::ChunkMeta;

const SERIES: usize = 100_000;

fn bench(c: &mut Criterion) {
    let series: Vec<(Labels, Vec<ChunkMeta>)> = (0..SERIES)
        .map(|i| {
            let labels = Labels::from_pairs([
                ("__name__", format!("metric_{}", i % 100)),
                ("instance", format!("host-{:05}", i / 100)),
                ("job", "bench".to_string()),
            ]);
            let mut x = XorChunk::new();
            for s in 0..120i64 {
                x.append(1_700_000_000_000 + s * 15_000, (i as f64) * 0.5 + (s % 7) as f64);
            }
            let chunk = ChunkMeta {
                min_time: 1_700_000_000_000,
                max_time: 1_700_000_000_000 + 119 * 15_000,
                chunk: Chunk::new(Encoding::Xor, x.into_bytes()),
            };
            (labels, vec![chunk])
        })
        .collect();
    let mut sorted = series;
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    // Measure the block's size once to report bytes per second.
    let dir = tempfile::tempdir().unwrap();
    let write = |parent: &std::path::Path| {
        let mut w = BlockWriter::new(parent, 1_700_000_000_000, 1_700_007_200_000).unwrap();
        for (l, c) in &sorted {
            w.add_series(l, c).unwrap();
        }
        w.finish().unwrap()
    };
    let meta = write(dir.path());
    let bdir = dir.path().join(meta.ulid.to_string());
    let size = norn_tsdb::block::Block::open(&bdir).unwrap().size_bytes();
    std::fs::remove_dir_all(&bdir).unwrap();
    let mut g = c.benchmark_group("block_write");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(size));
    g.bench_function("100k_series_x_120_samples", |b| {
        b.iter(|| {
            let m = write(dir.path());
            std::fs::remove_dir_all(dir.path().join(m.ulid.to_string())).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
