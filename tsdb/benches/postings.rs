//! Postings set operations on lists the size of real selections.

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use norn_tsdb::index::postings::{difference, intersect, intersect_all, merge};
use std::hint::black_box;

/// `n` sorted IDs spread evenly over `0..span`, offset so different lists interleave.
fn ids(n: u32, span: u32, offset: u32) -> Vec<u32> {
    let step = (span / n).max(1);
    (0..n).map(|i| i * step + offset % step).collect()
}

fn bench(c: &mut Criterion) {
    let span = 4_000_000;
    let big = ids(1_000_000, span, 0);
    let big2 = ids(1_000_000, span, 2);
    // Every 10th/100th ID of `big`, so the 3-way intersection is not empty.
    let mid = ids(100_000, span, 0);
    let small = ids(10_000, span, 0);
    let mut g = c.benchmark_group("postings");
    g.bench_function(BenchmarkId::new("intersect", "1M_x_10k"), |b| {
        b.iter(|| intersect(black_box(&big), black_box(&small)))
    });
    g.bench_function(BenchmarkId::new("intersect", "1M_x_1M"), |b| {
        b.iter(|| intersect(black_box(&big), black_box(&big2)))
    });
    g.bench_function(BenchmarkId::new("intersect3", "1M_x_100k_x_10k"), |b| {
        b.iter_batched(
            || vec![big.clone(), mid.clone(), small.clone()],
            |v| intersect_all(black_box(v)),
            BatchSize::LargeInput,
        )
    });
    g.bench_function(BenchmarkId::new("merge", "1M_+_100k_+_10k"), |b| {
        b.iter_batched(|| vec![big.clone(), mid.clone(), small.clone()], |v| merge(black_box(v)), BatchSize::LargeInput)
    });
    g.bench_function(BenchmarkId::new("difference", "1M_minus_100k"), |b| {
        b.iter(|| difference(black_box(&big), black_box(&mid)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
