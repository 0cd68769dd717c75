//! Thanos's aggregate chunk (`pkg/compact/downsample/aggr.go`), the chunk of downsampled
//! blocks, stored with encoding byte 0xFF.
//!
//! The data is five entries in [`AggrType`] order (count, sum, min, max, counter). Each
//! entry is a uvarint length `L`; `L = 0` marks the aggregate absent, otherwise one
//! encoding byte and `L` bytes of an ordinary chunk follow. Float series carry five XOR
//! chunks; native-histogram series (as Thanos writes them) an XOR count and float
//! histogram sum and counter, min and max absent.
//!
//! The format lives here, next to the other encodings, because the compactor writes it,
//! the store gateway serves it and the fuzz crate decodes it, and all of them already
//! depend on this crate.

use bytes::Bytes;

use super::{Chunk, ChunkError, Encoding};
use crate::encoding::{Decbuf, put_uvarint};

/// The segment-file encoding byte of an aggregate chunk.
pub const AGGR_ENCODING: u8 = 0xFF;

/// The aggregates of a downsampled chunk, in their on-disk order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum AggrType {
    /// Raw samples per window.
    Count = 0,
    /// Sum of the window's samples.
    Sum = 1,
    /// Smallest sample of the window.
    Min = 2,
    /// Largest sample of the window.
    Max = 3,
    /// Counter value with resets folded in, plus the first and last raw samples.
    Counter = 4,
}

impl AggrType {
    /// All aggregates in on-disk order.
    pub const ALL: [AggrType; 5] = [AggrType::Count, AggrType::Sum, AggrType::Min, AggrType::Max, AggrType::Counter];

    /// The name Thanos prints for it.
    pub fn name(self) -> &'static str {
        match self {
            AggrType::Count => "count",
            AggrType::Sum => "sum",
            AggrType::Min => "min",
            AggrType::Max => "max",
            AggrType::Counter => "counter",
        }
    }
}

/// A decoded aggregate chunk: one optional sub-chunk per [`AggrType`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AggrChunk {
    /// Sub-chunks indexed by `AggrType as usize`.
    pub parts: [Option<Chunk>; 5],
}

fn corrupt(reason: &'static str) -> ChunkError {
    ChunkError::Corrupt { encoding: "aggregate", reason }
}

impl AggrChunk {
    /// The sub-chunk of one aggregate, if present.
    pub fn get(&self, t: AggrType) -> Option<&Chunk> {
        self.parts[t as usize].as_ref()
    }

    /// Samples of the count aggregate (what Thanos reports as the chunk's sample count).
    pub fn num_samples(&self) -> usize {
        self.get(AggrType::Count).map_or(0, Chunk::num_samples)
    }

    /// Whether the aggregates are of a native-histogram series (the counter is a
    /// histogram chunk), as Thanos tells them apart.
    pub fn is_histogram(&self) -> bool {
        matches!(self.get(AggrType::Counter), Some(c) if c.encoding != Encoding::Xor)
    }

    /// The chunk data (without the 0xFF encoding byte), byte-identical to Thanos's
    /// `EncodeAggrChunk`. An empty sub-chunk cannot be told from an absent one on disk and
    /// is written as absent.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.parts.iter().flatten().map(|c| c.data.len() + 6).sum());
        for p in &self.parts {
            match p {
                Some(c) if !c.data.is_empty() => {
                    put_uvarint(&mut b, c.data.len() as u64);
                    b.push(c.encoding as u8);
                    b.extend_from_slice(&c.data);
                }
                _ => put_uvarint(&mut b, 0),
            }
        }
        b
    }

    /// Decodes chunk data (after the 0xFF byte); sub-chunks share `data`. Bytes after the
    /// fifth entry are ignored, as Thanos ignores them.
    pub fn decode(data: &Bytes) -> Result<AggrChunk, ChunkError> {
        let mut out = AggrChunk::default();
        let mut d = Decbuf::new(data);
        for slot in out.parts.iter_mut() {
            let len = d.uvarint().map_err(|_| corrupt("entry length missing or malformed"))?;
            if len == 0 {
                continue;
            }
            let len = usize::try_from(len).map_err(|_| corrupt("entry length overflows"))?;
            if d.remaining() < len.saturating_add(1) {
                return Err(corrupt("entry runs past the end of the chunk"));
            }
            let start = d.pos();
            let enc = Encoding::from_u8(data[start])?;
            let body = data.slice(start + 1..start + 1 + len);
            d.skip(len + 1).map_err(|_| corrupt("entry runs past the end of the chunk"))?;
            *slot = Some(Chunk::new(enc, body));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::chunkenc::XorChunk;

    fn xor(samples: &[(i64, f64)]) -> Chunk {
        let mut c = XorChunk::new();
        for &(t, v) in samples {
            c.append(t, v);
        }
        Chunk::new(Encoding::Xor, c.into_bytes())
    }

    #[test]
    fn layout_is_thanos() {
        let c = xor(&[(1, 2.0)]);
        let n = c.data.len();
        let a = AggrChunk { parts: [Some(c.clone()), None, None, None, Some(c.clone())] };
        let b = a.encode();
        let mut want = vec![n as u8, 1];
        want.extend_from_slice(&c.data);
        want.extend_from_slice(&[0, 0, 0, n as u8, 1]);
        want.extend_from_slice(&c.data);
        assert_eq!(b, want);
        let back = AggrChunk::decode(&Bytes::from(b)).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.num_samples(), 1);
        assert!(!back.is_histogram());
    }

    #[test]
    fn malformed_entries_are_errors() {
        for (bytes, what) in [
            (&[][..], "missing"),
            (&[0, 0, 0, 0][..], "missing"),
            (&[3, 1, 0][..], "past the end"),
            (&[1, 9, 0, 0, 0, 0, 0][..], "unknown chunk encoding 9"),
            (&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..], "past the end"),
            (&[0x80][..], "missing"),
        ] {
            let e = AggrChunk::decode(&Bytes::copy_from_slice(bytes)).unwrap_err().to_string();
            assert!(e.contains(what), "{bytes:?}: {e}");
        }
        // Five absent entries are a valid (empty) chunk; trailing bytes are ignored.
        assert_eq!(AggrChunk::decode(&Bytes::from_static(&[0, 0, 0, 0, 0, 7])).unwrap(), AggrChunk::default());
    }

    fn arb_chunk() -> impl Strategy<Value = Option<Chunk>> {
        prop_oneof![
            Just(None),
            proptest::collection::vec((0i64..1_000_000, any::<f64>()), 1..50).prop_map(|mut s| {
                s.sort_by_key(|x| x.0);
                Some(xor(&s))
            }),
            (1u8..=3, proptest::collection::vec(any::<u8>(), 1..40))
                .prop_map(|(e, d)| Some(Chunk::new(Encoding::from_u8(e).unwrap(), d))),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(parts in proptest::array::uniform5(arb_chunk())) {
            let a = AggrChunk { parts };
            let b = a.encode();
            let back = AggrChunk::decode(&Bytes::from(b.clone())).unwrap();
            prop_assert_eq!(&back, &a);
            prop_assert_eq!(back.encode(), b);
        }

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(a) = AggrChunk::decode(&Bytes::from(data.clone())) {
                // What decodes re-encodes to the same aggregates.
                prop_assert_eq!(AggrChunk::decode(&Bytes::from(a.encode())).unwrap(), a);
            }
        }
    }
}
