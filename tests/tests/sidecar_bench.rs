//! Throughput of StoreAPI Series against a running `norn sidecar` (ignored by default):
//! `NORN_SIDECAR_BENCH_GRPC=127.0.0.1:10901 NORN_SIDECAR_BENCH_MATCH=job=bench \
//!  cargo test -p norn-tests --test sidecar_bench -- --ignored --nocapture`.
//! Prints series, chunks and samples received (samples decoded) and the time taken.

use std::time::Instant;

use norn_storeapi::thanos::store_client::StoreClient;
use norn_storeapi::thanos::{LabelMatcher, SeriesRequest, series_response};
use norn_tsdb::chunkenc::{Chunk, Encoding};

#[test]
#[ignore = "needs a running sidecar; see the module docs"]
fn series_throughput() {
    let addr = std::env::var("NORN_SIDECAR_BENCH_GRPC").expect("NORN_SIDECAR_BENCH_GRPC");
    let m = std::env::var("NORN_SIDECAR_BENCH_MATCH").unwrap_or_else(|_| "job=bench".into());
    let (name, value) = m.split_once('=').expect("NAME=VALUE");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = StoreClient::connect(format!("http://{addr}")).await.unwrap().max_decoding_message_size(1 << 30);
        for round in 0..3 {
            let req = SeriesRequest {
                min_time: i64::MIN,
                max_time: i64::MAX,
                matchers: vec![LabelMatcher { r#type: 0, name: name.into(), value: value.into() }],
                response_batch_size: 64,
                ..Default::default()
            };
            let start = Instant::now();
            let mut s = c.series(req).await.unwrap().into_inner();
            let (mut series, mut chunks, mut samples, mut bytes) = (0usize, 0usize, 0usize, 0usize);
            while let Some(r) = s.message().await.unwrap() {
                let batch = match r.result {
                    Some(series_response::Result::Series(x)) => vec![x],
                    Some(series_response::Result::Batch(b)) => b.series,
                    _ => continue,
                };
                for x in batch {
                    series += 1;
                    for ch in x.chunks {
                        let raw = ch.raw.unwrap();
                        chunks += 1;
                        bytes += raw.data.len();
                        samples += Chunk::new(Encoding::Xor, raw.data).iter().unwrap().count();
                    }
                }
            }
            let el = start.elapsed();
            println!(
                "round {round}: {series} series, {chunks} chunks ({bytes} bytes), {samples} samples in {el:?} = {:.0} samples/s",
                samples as f64 / el.as_secs_f64()
            );
        }
    });
}
