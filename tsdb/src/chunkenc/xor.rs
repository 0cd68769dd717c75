//! The XOR (Gorilla) float chunk, bit-exact with `tsdb/chunkenc/xor.go`.

use super::ChunkError;
use super::bstream::{BitReader, BitWriter};

/// Worst-case bytes one appended sample can add; the head cuts a chunk before it grows
/// past 1024 bytes with this much headroom.
pub const MAX_BYTES_PER_SAMPLE: usize = 19;

/// Whether `x` fits the asymmetric signed range of an `nbits` field:
/// `-(2^(n-1) - 1) ..= 2^(n-1)`.
#[inline]
pub(crate) fn bit_range(x: i64, nbits: u32) -> bool {
    -((1i64 << (nbits - 1)) - 1) <= x && x <= 1i64 << (nbits - 1)
}

/// An XOR chunk being built (or re-opened for appending).
#[derive(Debug, Clone)]
pub struct XorChunk {
    b: BitWriter,
    num: u16,
    t: i64,
    v: f64,
    t_delta: u64,
    leading: u8,
    trailing: u8,
}

impl Default for XorChunk {
    fn default() -> Self {
        Self::new()
    }
}

impl XorChunk {
    /// An empty chunk (just the two-byte sample count).
    pub fn new() -> Self {
        XorChunk {
            b: BitWriter::from_bytes(vec![0, 0], 0),
            num: 0,
            t: 0,
            v: 0.0,
            t_delta: 0,
            leading: 0xff,
            trailing: 0,
        }
    }

    /// Re-opens encoded chunk bytes for appending, rebuilding the appender state by
    /// decoding every sample (as Prometheus's `Appender()` does).
    pub fn from_bytes(data: &[u8]) -> Result<Self, ChunkError> {
        let mut it = XorIterator::new(data)?;
        while it.next().is_some() {}
        if let Some(e) = it.err() {
            return Err(e.clone());
        }
        let used_bits = it.bits_consumed();
        let num = it.num_total;
        // The iterator starts with the 0xff "no window yet" sentinel, so a chunk whose values
        // never changed reopens exactly as a continuously appended one would. (Prometheus'
        // reopened appender starts from a zero window instead, which costs bits but reads
        // the same.)
        let (leading, trailing) = (it.leading, it.trailing);
        Ok(XorChunk {
            b: BitWriter::resume(data, used_bits),
            num,
            t: it.t,
            v: f64::from_bits(it.val),
            t_delta: it.t_delta,
            leading,
            trailing,
        })
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        self.b.bytes()
    }

    /// Consumes the chunk, returning its bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.b.bytes
    }

    /// Number of samples.
    pub fn num_samples(&self) -> usize {
        usize::from(self.num)
    }

    /// Timestamp of the last sample (meaningless when empty).
    pub fn last_timestamp(&self) -> i64 {
        self.t
    }

    /// Value of the last sample (meaningless when empty).
    pub fn last_value(&self) -> f64 {
        self.v
    }

    /// Appends a sample. Timestamps must increase; the caller (the head) enforces that.
    /// A chunk holds at most 65535 samples; the head cuts far earlier.
    pub fn append(&mut self, t: i64, v: f64) {
        let b = &mut self.b;
        match self.num {
            0 => {
                let mut buf = Vec::with_capacity(10);
                crate::encoding::put_varint(&mut buf, t);
                for x in buf {
                    b.write_byte(x);
                }
                b.write_bits(v.to_bits(), 64);
            }
            1 => {
                let t_delta = t.wrapping_sub(self.t) as u64;
                let mut buf = Vec::with_capacity(10);
                crate::encoding::put_uvarint(&mut buf, t_delta);
                for x in buf {
                    b.write_byte(x);
                }
                xor_write(b, v, self.v, &mut self.leading, &mut self.trailing);
                self.t_delta = t_delta;
            }
            _ => {
                let t_delta = t.wrapping_sub(self.t) as u64;
                let dod = t_delta.wrapping_sub(self.t_delta) as i64;
                // Prefix and payload go out in one write (≤ 24 bits); Go writes the payload last.
                let mask = |n: u32| (dod as u64) & ((1u64 << n) - 1);
                if dod == 0 {
                    b.write_bit(false);
                } else if bit_range(dod, 14) {
                    b.write_bits_tail((0b10 << 14) | mask(14), 16, 14);
                } else if bit_range(dod, 17) {
                    b.write_bits_tail((0b110 << 17) | mask(17), 20, 17);
                } else if bit_range(dod, 20) {
                    b.write_bits_tail((0b1110 << 20) | mask(20), 24, 20);
                } else {
                    b.write_bits(0b1111, 4);
                    b.write_bits(dod as u64, 64);
                }
                xor_write(b, v, self.v, &mut self.leading, &mut self.trailing);
                self.t_delta = t_delta;
            }
        }
        self.t = t;
        self.v = v;
        self.num = self.num.wrapping_add(1);
        let n = self.num.to_be_bytes();
        let bytes = self.b.bytes_mut();
        bytes[0] = n[0];
        bytes[1] = n[1];
    }

    /// An iterator over the samples.
    pub fn iter(&self) -> XorIterator<'_> {
        // The chunk was built by us, so its header is always present.
        XorIterator::new(self.bytes()).unwrap_or_else(|_| XorIterator::empty())
    }
}

/// Writes the XOR of `new` against `cur` with the leading/trailing window scheme.
#[inline]
pub(crate) fn xor_write(b: &mut BitWriter, new: f64, cur: f64, leading: &mut u8, trailing: &mut u8) {
    let delta = new.to_bits() ^ cur.to_bits();
    if delta == 0 {
        b.write_bit(false);
        return;
    }
    let mut new_leading = delta.leading_zeros() as u8;
    let new_trailing = delta.trailing_zeros() as u8;
    if new_leading >= 32 {
        new_leading = 31;
    }
    if *leading != 0xff && new_leading >= *leading && new_trailing >= *trailing {
        // Control "10" then the window's bits.
        let sig = 64 - u32::from(*leading) - u32::from(*trailing);
        let payload = delta >> *trailing;
        if sig <= 62 {
            b.write_bits_tail((0b10 << sig) | payload, sig + 2, sig);
        } else {
            b.write_bits(0b10, 2);
            b.write_bits(payload, sig);
        }
        return;
    }
    *leading = new_leading;
    *trailing = new_trailing;
    let sigbits = 64 - u32::from(new_leading) - u32::from(new_trailing);
    // Control "11", 5 bits of leading zeros, 6 bits of significant bits (64 is written
    // as 0, which cannot otherwise occur), then the bits themselves.
    let header = (0b11 << 11) | (u64::from(new_leading) << 6) | u64::from(sigbits & 0x3f);
    let payload = delta >> new_trailing;
    if sigbits <= 51 {
        b.write_bits_tail((header << sigbits) | payload, 13 + sigbits, sigbits);
    } else {
        b.write_bits(header, 13);
        b.write_bits(payload, sigbits);
    }
}

/// Reads one XOR-encoded value into `value`; `None` on truncated or corrupt input.
#[inline]
pub(crate) fn xor_read(br: &mut BitReader<'_>, value: &mut u64, leading: &mut u8, trailing: &mut u8) -> Option<()> {
    if xor_read_lenient(br, value, leading, trailing) && !br.overrun() { Some(()) } else { None }
}

/// [`xor_read`] without the end-of-stream check (the caller checks
/// [`BitReader::overrun`]); `false` only for an impossible window.
#[inline(always)]
pub(crate) fn xor_read_lenient(br: &mut BitReader<'_>, value: &mut u64, leading: &mut u8, trailing: &mut u8) -> bool {
    // Control bits plus a new window's 11 header bits.
    br.ensure(13);
    let w = br.word();
    if w >> 63 == 0 {
        br.skip(1);
        return true;
    }
    let (shift, mbits, used) = if (w >> 62) & 1 == 0 {
        if *leading == 0xff {
            // Reuse before any window was set: Prometheus' reader starts from a zero
            // window and reads all 64 bits, so do the same.
            (0, 64, 2)
        } else {
            (u32::from(*trailing), 64 - u32::from(*leading) - u32::from(*trailing), 2)
        }
    } else {
        // Two control bits, then 5 bits of leading zeros and 6 of significant bits.
        let l = ((w >> 57) & 0x1f) as u32;
        let mut m = ((w >> 51) & 0x3f) as u32;
        if m == 0 {
            m = 64;
        }
        if l + m > 64 {
            return false;
        }
        *trailing = (64 - l - m) as u8;
        *leading = l as u8;
        (64 - l - m, m, 13)
    };
    let bits = if used + mbits <= br.avail() {
        // Everything is in the word already loaded.
        br.skip(used + mbits);
        (w << used) >> (64 - mbits)
    } else {
        br.skip(used);
        br.read_bits_lenient(mbits)
    };
    *value ^= bits << shift;
    true
}

/// Decodes an XOR chunk sample by sample, lazily.
#[derive(Debug, Clone)]
pub struct XorIterator<'a> {
    br: BitReader<'a>,
    data_bits: usize,
    num_total: u16,
    num_read: u16,
    t: i64,
    val: u64,
    t_delta: u64,
    leading: u8,
    trailing: u8,
    err: Option<ChunkError>,
}

impl<'a> XorIterator<'a> {
    /// An iterator over encoded chunk bytes (starting with the two-byte count).
    pub fn new(data: &'a [u8]) -> Result<Self, ChunkError> {
        if data.len() < 2 {
            return Err(ChunkError::Corrupt { encoding: "XOR", reason: "chunk shorter than its 2-byte header" });
        }
        let mut it = Self::empty();
        it.br = BitReader::new(&data[2..]);
        it.data_bits = (data.len() - 2) * 8;
        it.num_total = u16::from_be_bytes([data[0], data[1]]);
        Ok(it)
    }

    fn empty() -> Self {
        XorIterator {
            br: BitReader::new(&[]),
            data_bits: 0,
            num_total: 0,
            num_read: 0,
            t: 0,
            val: 0,
            t_delta: 0,
            leading: 0xff,
            trailing: 0,
            err: None,
        }
    }

    /// Number of samples the header announces.
    pub fn num_samples(&self) -> usize {
        usize::from(self.num_total)
    }

    /// The error that ended iteration early, if any.
    pub fn err(&self) -> Option<&ChunkError> {
        self.err.as_ref()
    }

    /// Bits of the chunk consumed so far, including the 16-bit header.
    pub(crate) fn bits_consumed(&self) -> usize {
        16 + self.data_bits - self.br.bits_remaining()
    }

    #[cold]
    fn fail(&mut self) -> Option<(i64, f64)> {
        self.err = Some(ChunkError::Corrupt { encoding: "XOR", reason: "truncated or invalid sample data" });
        self.num_read = self.num_total;
        None
    }

    /// The next `(timestamp, value)`.
    #[inline(always)]
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<(i64, f64)> {
        if self.num_read >= self.num_total {
            return None;
        }
        if self.num_read < 2 {
            return self.next_head();
        }
        let br = &mut self.br;
        // One refill covers the dod (≤ 24 bits unless raw) and a value header (≤ 13);
        // both are decoded from this word with a single skip at the end, which keeps
        // the buffer updates off the dependency chain.
        br.refill();
        let w = br.word();
        let ones = w.leading_ones();
        let (dod, dlen): (i64, u32) = match ones {
            0 => (0, 1),
            1..=3 => {
                let sz = match ones {
                    1 => 14,
                    2 => 17,
                    _ => 20,
                };
                let bits = (w << (ones + 1)) >> (64 - sz);
                // bitRange decoding: values above 2^(sz-1) are negative.
                (bits.wrapping_sub(u64::from(bits > (1u64 << (sz - 1))) << sz) as i64, ones + 1 + sz)
            }
            _ => return self.next_raw_dod(),
        };
        self.t_delta = (self.t_delta as i64).wrapping_add(dod) as u64;
        self.t = self.t.wrapping_add(self.t_delta as i64);
        let rem = br.avail() - dlen;
        let v = w << dlen;
        if v >> 63 == 0 {
            br.skip(dlen + 1);
        } else {
            let (hdr, shift, m) = if (v >> 62) & 1 == 0 {
                if self.leading == 0xff {
                    (2, 0, 64)
                } else {
                    let (l, t) = (u32::from(self.leading), u32::from(self.trailing));
                    (2, t, 64 - l - t)
                }
            } else {
                let l = ((v >> 57) & 0x1f) as u32;
                let m = match ((v >> 51) & 0x3f) as u32 {
                    0 => 64,
                    m => m,
                };
                if l + m > 64 {
                    return self.fail();
                }
                self.leading = l as u8;
                self.trailing = (64 - l - m) as u8;
                (13, 64 - l - m, m)
            };
            let bits = if hdr + m <= rem {
                br.skip(dlen + hdr + m);
                (v << hdr) >> (64 - m)
            } else {
                br.skip(dlen + hdr);
                br.read_bits_lenient(m)
            };
            self.val ^= bits << shift;
        }
        if br.overrun() {
            return self.fail();
        }
        self.num_read += 1;
        Some((self.t, f64::from_bits(self.val)))
    }

    /// A sample whose dod needed the raw 64-bit form.
    #[cold]
    fn next_raw_dod(&mut self) -> Option<(i64, f64)> {
        self.br.skip(4);
        let dod = self.br.read_bits_lenient(64) as i64;
        self.t_delta = (self.t_delta as i64).wrapping_add(dod) as u64;
        self.t = self.t.wrapping_add(self.t_delta as i64);
        if !xor_read_lenient(&mut self.br, &mut self.val, &mut self.leading, &mut self.trailing) || self.br.overrun() {
            return self.fail();
        }
        self.num_read += 1;
        Some((self.t, f64::from_bits(self.val)))
    }

    /// Samples 0 and 1, whose timestamps are whole-byte varints.
    #[cold]
    fn next_head(&mut self) -> Option<(i64, f64)> {
        if self.num_read == 0 {
            let Some(t) = self.br.read_varint() else { return self.fail() };
            let Some(v) = self.br.read_bits(64) else { return self.fail() };
            self.t = t;
            self.val = v;
        } else {
            let Some(d) = self.br.read_uvarint() else { return self.fail() };
            self.t_delta = d;
            self.t = self.t.wrapping_add(d as i64);
            if xor_read(&mut self.br, &mut self.val, &mut self.leading, &mut self.trailing).is_none() {
                return self.fail();
            }
        }
        self.num_read += 1;
        Some((self.t, f64::from_bits(self.val)))
    }

    /// Advances to the first sample with timestamp ≥ `t`.
    pub fn seek(&mut self, t: i64) -> Option<(i64, f64)> {
        if self.num_read > 0 && self.t >= t {
            return Some((self.t, f64::from_bits(self.val)));
        }
        while let Some(s) = self.next() {
            if s.0 >= t {
                return Some(s);
            }
        }
        None
    }
}

impl Iterator for XorIterator<'_> {
    type Item = (i64, f64);
    #[inline]
    fn next(&mut self) -> Option<(i64, f64)> {
        XorIterator::next(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut c = XorChunk::new();
        for (t, v) in samples {
            c.append(*t, *v);
        }
        let got: Vec<(i64, u64)> = c.iter().map(|(t, v)| (t, v.to_bits())).collect();
        let want: Vec<(i64, u64)> = samples.iter().map(|(t, v)| (*t, v.to_bits())).collect();
        assert_eq!(got, want);
        c.bytes().to_vec()
    }

    #[test]
    fn known_bytes() {
        // Two samples: t0 = 1000 (varint 0xd0 0x0f), v0 = 1.0; t1 = 1015, v1 = 1.0
        // (xor 0 → one 0 bit, padded).
        let b = round_trip(&[(1000, 1.0), (1015, 1.0)]);
        assert_eq!(b, vec![0, 2, 0xd0, 0x0f, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x0f, 0x00]);
    }

    #[test]
    fn single_sample_keeps_gos_trailing_byte() {
        // Go's bstream appends an empty byte after every aligned whole-byte write, so a
        // one-sample chunk (varint t0, 64-bit v0) ends with a zero byte in Prometheus's files.
        let b = round_trip(&[(1000, 1.0)]);
        assert_eq!(b, vec![0, 1, 0xd0, 0x0f, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn dod_buckets_and_specials() {
        let mut s = vec![(0i64, 0.0f64)];
        let deltas = [1i64, 1, 8193, 1, 65537, 3, 524289, 2, 1 << 40, 5, 5];
        let vals = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e308, 5e-324, -0.0, 42.0, 42.0, 1.5, 0.1, 7.0];
        let mut t = 0;
        for (d, v) in deltas.iter().zip(vals) {
            t += d;
            s.push((t, v));
        }
        round_trip(&s);
    }

    #[test]
    fn negative_timestamps_and_reopen() {
        let s: Vec<(i64, f64)> = (0..200).map(|i| (-100_000 + i * 15_000 + (i % 7), (i as f64).sin())).collect();
        let mut c = XorChunk::new();
        for (t, v) in &s[..100] {
            c.append(*t, *v);
        }
        let mut c2 = XorChunk::from_bytes(c.bytes()).unwrap();
        for (t, v) in &s[100..] {
            c2.append(*t, *v);
            c.append(*t, *v);
        }
        assert_eq!(c.bytes(), c2.bytes());
    }

    #[test]
    fn corrupt_input_is_an_error() {
        assert!(XorIterator::new(&[1]).is_err());
        let mut it = XorIterator::new(&[0, 5, 0x80]).unwrap();
        assert_eq!(it.next(), None);
        assert!(it.err().is_some());
    }

    /// Strictly increasing timestamps with gaps from 1 ms to 2^52 ms, starting anywhere
    /// (negative included), and arbitrary f64 bit patterns.
    fn arb_samples() -> impl Strategy<Value = Vec<(i64, u64)>> {
        let gap = prop_oneof![
            4 => 1i64..100_000,
            1 => 1i64..(1i64 << 52),
            2 => Just(15_000i64),
        ];
        let bits = prop_oneof![
            3 => any::<u64>(),
            2 => Just(f64::NAN.to_bits()),
            1 => Just(0x7ff0_0000_0000_0002u64),
            1 => Just(0xfff8_dead_beef_0001u64),
            1 => Just(f64::INFINITY.to_bits()),
            1 => Just(f64::NEG_INFINITY.to_bits()),
            1 => Just((-0.0f64).to_bits()),
            2 => (0u64..1000).prop_map(|v| (v as f64).to_bits()),
        ];
        (-(1i64 << 60)..(1i64 << 60), proptest::collection::vec((gap, bits), 1..300)).prop_map(|(start, v)| {
            let mut t = start;
            v.into_iter()
                .map(|(g, b)| {
                    t += g;
                    (t, b)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn prop_round_trip_bitwise(samples in arb_samples()) {
            let mut c = XorChunk::new();
            for (t, b) in &samples {
                c.append(*t, f64::from_bits(*b));
            }
            let got: Vec<(i64, u64)> = c.iter().map(|(t, v)| (t, v.to_bits())).collect();
            prop_assert_eq!(got, samples);
        }

        #[test]
        fn prop_reopen_and_append_is_identical(samples in arb_samples(), cut in any::<prop::sample::Index>()) {
            let k = cut.index(samples.len() + 1);
            let mut whole = XorChunk::new();
            for (t, b) in &samples {
                whole.append(*t, f64::from_bits(*b));
            }
            let mut part = XorChunk::new();
            for (t, b) in &samples[..k] {
                part.append(*t, f64::from_bits(*b));
            }
            let mut reopened = XorChunk::from_bytes(part.bytes()).unwrap();
            prop_assert_eq!(reopened.bytes(), part.bytes());
            for (t, b) in &samples[k..] {
                reopened.append(*t, f64::from_bits(*b));
            }
            prop_assert_eq!(reopened.bytes(), whole.bytes());
        }
    }
}
