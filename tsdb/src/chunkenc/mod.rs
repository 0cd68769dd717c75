//! Chunk encodings: XOR for floats, and the native-histogram encodings, each bit-exact
//! with Prometheus's `tsdb/chunkenc`.
//!
//! A [`Chunk`] is an encoding plus its bytes (shared, so chunks can point into an mmap'd
//! segment file without copying). [`Chunk::iter`] decodes lazily.

pub mod aggr;
pub mod bstream;
pub mod float_histogram;
pub mod histogram;
pub mod histogram_meta;
pub mod varbit;
pub mod xor;

use bytes::Bytes;
use norn_model::{FloatHistogram, Histogram};

pub use float_histogram::{FloatHistogramChunk, FloatHistogramIterator};
pub use histogram::{HistogramChunk, HistogramIterator};
pub use histogram_meta::{CounterResetHeader, HistogramAppendError, NewChunkReason, STALE_NAN_BITS, is_stale_nan};
pub use xor::{XorChunk, XorIterator};

/// Chunk encodings as stored in segment files (`tsdb/chunkenc/chunk.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    /// Floats, Gorilla-style.
    Xor = 1,
    /// Integer native histograms.
    Histogram = 2,
    /// Float native histograms.
    FloatHistogram = 3,
}

impl Encoding {
    /// The encoding for a stored byte; the newer XOR2 and ST encodings (4–6) are not
    /// supported yet and are reported as such.
    pub fn from_u8(b: u8) -> Result<Self, ChunkError> {
        match b {
            1 => Ok(Encoding::Xor),
            2 => Ok(Encoding::Histogram),
            3 => Ok(Encoding::FloatHistogram),
            other => Err(ChunkError::UnknownEncoding(other)),
        }
    }

    /// The name Prometheus prints for it.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Xor => "XOR",
            Encoding::Histogram => "histogram",
            Encoding::FloatHistogram => "floathistogram",
        }
    }
}

/// A chunk could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("unknown chunk encoding {0}")]
    UnknownEncoding(u8),
    #[error("corrupt {encoding} chunk: {reason}")]
    Corrupt { encoding: &'static str, reason: &'static str },
}

/// One sample of any value type.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    Float(i64, f64),
    Histogram(i64, Box<Histogram>),
    FloatHistogram(i64, Box<FloatHistogram>),
}

impl Sample {
    /// The sample's timestamp.
    pub fn timestamp(&self) -> i64 {
        match self {
            Sample::Float(t, _) | Sample::Histogram(t, _) | Sample::FloatHistogram(t, _) => *t,
        }
    }
}

/// An encoded chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// How `data` is encoded.
    pub encoding: Encoding,
    /// The encoded bytes, starting with the chunk's own header.
    pub data: Bytes,
}

impl Chunk {
    /// A chunk over encoded bytes.
    pub fn new(encoding: Encoding, data: impl Into<Bytes>) -> Self {
        Chunk { encoding, data: data.into() }
    }

    /// Number of samples the chunk header announces.
    pub fn num_samples(&self) -> usize {
        if self.data.len() < 2 {
            return 0;
        }
        // All three encodings start with a BE16 count (histograms keep their
        // counter-reset flags in the third byte).
        usize::from(u16::from_be_bytes([self.data[0], self.data[1]]))
    }

    /// Decodes the samples lazily.
    pub fn iter(&self) -> Result<SampleIter<'_>, ChunkError> {
        match self.encoding {
            Encoding::Xor => Ok(SampleIter::Xor(XorIterator::new(&self.data)?)),
            Encoding::Histogram => Ok(SampleIter::Histogram(HistogramIterator::new(&self.data)?)),
            Encoding::FloatHistogram => Ok(SampleIter::FloatHistogram(FloatHistogramIterator::new(&self.data)?)),
        }
    }
}

/// A lazy decoder over a chunk of any encoding.
#[derive(Debug)]
pub enum SampleIter<'a> {
    /// Encoding 1.
    Xor(XorIterator<'a>),
    /// Encoding 2.
    Histogram(HistogramIterator<'a>),
    /// Encoding 3.
    FloatHistogram(FloatHistogramIterator<'a>),
}

impl SampleIter<'_> {
    /// The error that ended iteration early, if any.
    pub fn err(&self) -> Option<&ChunkError> {
        match self {
            SampleIter::Xor(it) => it.err(),
            SampleIter::Histogram(it) => it.err(),
            SampleIter::FloatHistogram(it) => it.err(),
        }
    }
}

impl Iterator for SampleIter<'_> {
    type Item = Sample;
    fn next(&mut self) -> Option<Sample> {
        match self {
            SampleIter::Xor(it) => it.next().map(|(t, v)| Sample::Float(t, v)),
            SampleIter::Histogram(it) => it.next().map(|(t, h)| Sample::Histogram(t, Box::new(h))),
            SampleIter::FloatHistogram(it) => it.next().map(|(t, h)| Sample::FloatHistogram(t, Box::new(h))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::Span;
    use proptest::prelude::*;

    /// One valid chunk per encoding, with enough variety to reach every decoder branch.
    fn sample_chunks() -> Vec<Chunk> {
        let mut x = XorChunk::new();
        let mut t = -5_000i64;
        for i in 0..40i64 {
            t += [15_000, 15_001, 14_990, 1 << 20, 1 << 40][i as usize % 5];
            x.append(t, [1.0, 1.0, f64::NAN, (i as f64).sqrt(), -0.0, 1e300][i as usize % 6]);
        }
        let mut h = HistogramChunk::new();
        let mut fh = FloatHistogramChunk::new();
        let mut nhcb = HistogramChunk::new();
        for i in 0..12u64 {
            let hist = Histogram {
                schema: 2,
                zero_threshold: 0.003,
                zero_count: i,
                count: 10 * i + 3,
                sum: i as f64 * 1.25,
                positive_spans: vec![Span { offset: -3, length: 2 }, Span { offset: 4, length: 3 }],
                positive_buckets: vec![i as i64, 1, 0, (i as i64) * 70_000, -1],
                negative_spans: vec![Span { offset: 1, length: 1 }],
                negative_buckets: vec![2 * i as i64],
                ..Default::default()
            };
            h.append(i as i64 * 60_000, &hist).unwrap();
            fh.append(i as i64 * 60_000 + 7, &hist.to_float()).unwrap();
            let custom = Histogram {
                schema: norn_model::histogram::CUSTOM_BUCKETS_SCHEMA,
                count: i,
                sum: i as f64,
                positive_spans: vec![Span { offset: 0, length: 3 }],
                positive_buckets: vec![i as i64, 0, 0],
                custom_values: vec![0.25, 1.0, 2.5e9],
                ..Default::default()
            };
            nhcb.append(i as i64, &custom).unwrap();
        }
        vec![
            Chunk::new(Encoding::Xor, x.into_bytes()),
            Chunk::new(Encoding::Histogram, h.into_bytes()),
            Chunk::new(Encoding::FloatHistogram, fh.into_bytes()),
            Chunk::new(Encoding::Histogram, nhcb.into_bytes()),
        ]
    }

    /// Decodes everything a chunk yields; the number of samples never exceeds the header.
    fn drain(c: &Chunk) -> (usize, bool) {
        let Ok(mut it) = c.iter() else { return (0, true) };
        let n = it.by_ref().count();
        assert!(n <= c.num_samples());
        let reopen_err = match c.encoding {
            Encoding::Xor => XorChunk::from_bytes(&c.data).is_err(),
            Encoding::Histogram => HistogramChunk::from_bytes(&c.data).is_err(),
            Encoding::FloatHistogram => FloatHistogramChunk::from_bytes(&c.data).is_err(),
        };
        assert_eq!(reopen_err, it.err().is_some());
        (n, it.err().is_some())
    }

    #[test]
    fn valid_chunks_decode_fully() {
        for c in sample_chunks() {
            let (n, err) = drain(&c);
            assert!(!err, "{:?}", c.encoding);
            assert_eq!(n, c.num_samples());
            assert!(n > 0);
        }
    }

    #[test]
    fn truncations_never_panic_and_mostly_fail() {
        for c in sample_chunks() {
            for len in 0..c.data.len() {
                let cut = Chunk::new(c.encoding, c.data.slice(..len));
                let (n, err) = drain(&cut);
                // Losing the last byte can lose padding only; anything shorter must
                // either error or yield fewer samples.
                assert!(err || n < c.num_samples() || len + 1 >= c.data.len(), "{:?} len {len}", c.encoding);
            }
        }
    }

    #[test]
    fn bit_flips_never_panic() {
        for c in sample_chunks() {
            for bit in 0..c.data.len() * 8 {
                let mut data = c.data.to_vec();
                data[bit / 8] ^= 0x80 >> (bit % 8);
                drain(&Chunk::new(c.encoding, data));
            }
        }
    }

    /// Writes the sample chunks as fuzzing seeds (first byte = encoding):
    /// `NORN_FUZZ_SEEDS=fuzz/corpus/chunk_decode cargo test -p norn-tsdb --lib write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir = std::path::PathBuf::from(std::env::var("NORN_FUZZ_SEEDS").expect("NORN_FUZZ_SEEDS"));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, c) in sample_chunks().into_iter().enumerate() {
            let mut b = vec![c.encoding as u8];
            b.extend_from_slice(&c.data);
            std::fs::write(dir.join(format!("seed-{i}")), b).unwrap();
        }
    }

    #[test]
    fn num_samples_reads_full_u16_for_histograms() {
        let c = Chunk::new(Encoding::Histogram, vec![0x40, 0x01, 0x80]);
        assert_eq!(c.num_samples(), 0x4001);
    }

    proptest! {
        #[test]
        fn prop_random_bytes_never_panic(enc in 1u8..=3, data in proptest::collection::vec(any::<u8>(), 0..200)) {
            drain(&Chunk::new(Encoding::from_u8(enc).unwrap(), data));
        }
    }
}
