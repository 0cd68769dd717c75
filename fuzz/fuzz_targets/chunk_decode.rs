//! Decodes arbitrary bytes as a chunk: the first byte picks the encoding, the rest is
//! the chunk data. Decoding must never panic, and a chunk that decodes cleanly must
//! re-open for appending.
#![no_main]

use libfuzzer_sys::fuzz_target;
use norn_tsdb::chunkenc::{Chunk, Encoding, FloatHistogramChunk, HistogramChunk, Sample, XorChunk};

fuzz_target!(|data: &[u8]| {
    let Some((&enc, rest)) = data.split_first() else { return };
    let Ok(encoding) = Encoding::from_u8(enc) else { return };
    let chunk = Chunk::new(encoding, rest.to_vec());
    let Ok(mut it) = chunk.iter() else { return };
    let mut n = 0usize;
    for s in it.by_ref() {
        n += 1;
        match s {
            Sample::Histogram(_, h) => assert!(h.sum.is_nan() || h.is_consistent()),
            Sample::FloatHistogram(_, h) => assert!(h.sum.is_nan() || h.is_consistent()),
            Sample::Float(..) => {}
        }
    }
    assert!(n <= chunk.num_samples());
    let clean = it.err().is_none();
    let reopened = match encoding {
        Encoding::Xor => XorChunk::from_bytes(rest).map(|c| c.num_samples()),
        Encoding::Histogram => HistogramChunk::from_bytes(rest).map(|c| c.num_samples()),
        Encoding::FloatHistogram => FloatHistogramChunk::from_bytes(rest).map(|c| c.num_samples()),
    };
    assert_eq!(reopened.is_ok(), clean);
    if let Ok(m) = reopened {
        assert_eq!(m, n);
    }
});
