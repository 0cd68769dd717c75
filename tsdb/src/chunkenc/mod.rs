//! Chunk encodings: XOR for floats, and the native-histogram encodings, each bit-exact
//! with Prometheus's `tsdb/chunkenc`.
//!
//! A [`Chunk`] is an encoding plus its bytes (shared, so chunks can point into an mmap'd
//! segment file without copying). [`Chunk::iter`] decodes lazily.

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
    Xor(XorIterator<'a>),
    Histogram(HistogramIterator<'a>),
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
