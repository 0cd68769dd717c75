//! The XOR (Gorilla) float chunk, bit-exact with `tsdb/chunkenc/xor.go`.

use super::ChunkError;
use super::bstream::{BitReader, BitWriter, load_word};

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
        let (leading, trailing) = it.leading_trailing();
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

/// Samples [`XorIterator::decode_into`] decodes per pass of its hot loop, into stack
/// buffers: each pass keeps the decoder state in registers throughout.
const BATCH: usize = 32;

/// Decodes an XOR chunk lazily.
#[derive(Debug, Clone)]
pub struct XorIterator<'a> {
    br: BitReader<'a>,
    data_bits: usize,
    num_total: u16,
    /// Samples decoded so far.
    num_read: u16,
    /// Decoder state after the last decoded sample, which is the last one returned.
    t: i64,
    val: u64,
    t_delta: u64,
    /// The value window as (shift, width), i.e. (trailing zeros, significant bits); kept in
    /// this form because the hot loop uses it so. Before any window the shift is 64, which
    /// marks "no window yet" (Prometheus then reads all 64 bits) and is never used to shift:
    /// a 64-bit read takes the slow path.
    wshift: u32,
    wm: u32,
    /// An error found by the decoder, made visible through `err` once iteration ends.
    pending_err: Option<ChunkError>,
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
            wshift: 64,
            wm: 64,
            pending_err: None,
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

    /// The window as the encoder keeps it: leading and trailing zeros, leading 0xff for none.
    fn leading_trailing(&self) -> (u8, u8) {
        if self.wshift >= 64 { (0xff, 0) } else { ((64 - self.wm - self.wshift) as u8, self.wshift as u8) }
    }

    fn set_window(&mut self, leading: u8, trailing: u8) {
        (self.wshift, self.wm) = if leading == 0xff {
            (64, 64)
        } else {
            (u32::from(trailing), 64 - u32::from(leading) - u32::from(trailing))
        };
    }

    /// Bits of the chunk consumed so far, including the 16-bit header.
    pub(crate) fn bits_consumed(&self) -> usize {
        16 + self.data_bits - self.br.bits_remaining()
    }

    #[cold]
    fn fail(&mut self) {
        self.pending_err = Some(ChunkError::Corrupt { encoding: "XOR", reason: "truncated or invalid sample data" });
        self.num_read = self.num_total;
    }

    /// The next `(timestamp, value)`.
    #[inline]
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<(i64, f64)> {
        if self.num_read >= 2 && self.num_read < self.num_total {
            let (mut t, mut v) = ([0i64; 1], [0u64; 1]);
            if self.decode_run(&mut t, &mut v) == 1 {
                return Some((t[0], f64::from_bits(v[0])));
            }
        }
        self.next_cold()
    }

    /// The first two samples, samples the hot loop leaves to the slow path, and the end.
    #[inline(never)]
    fn next_cold(&mut self) -> Option<(i64, f64)> {
        let (mut t, mut v) = ([0i64; 1], [0u64; 1]);
        if self.decode_raw(&mut t, &mut v) == 0 {
            if let Some(e) = self.pending_err.take() {
                self.err = Some(e);
            }
            return None;
        }
        Some((t[0], f64::from_bits(v[0])))
    }

    /// Decodes all remaining samples, appending them to `ts` and `vs`; returns how many
    /// were appended. This is faster than calling [`Self::next`] per sample, as the decoder
    /// state stays in registers. The samples before a corrupt one are appended before the
    /// error is returned (it is also kept for [`Self::err`]).
    pub fn decode_into(&mut self, ts: &mut Vec<i64>, vs: &mut Vec<f64>) -> Result<usize, ChunkError> {
        let mut added = 0;
        let mut bt = [0i64; BATCH];
        let mut bv = [0u64; BATCH];
        loop {
            let n = self.decode_raw(&mut bt, &mut bv);
            if n == 0 {
                break;
            }
            ts.extend_from_slice(&bt[..n]);
            vs.extend(bv[..n].iter().map(|b| f64::from_bits(*b)));
            added += n;
        }
        if let Some(e) = self.pending_err.take() {
            self.err = Some(e);
        }
        match &self.err {
            Some(e) => Err(e.clone()),
            None => Ok(added),
        }
    }

    /// Decodes up to `min(ts.len(), vs.len())` samples into `ts` and the value bits into
    /// `vs`; returns how many. Fewer means the chunk ended or is corrupt (`pending_err`).
    fn decode_raw(&mut self, ts: &mut [i64], vs: &mut [u64]) -> usize {
        let want = ts.len().min(vs.len()).min(usize::from(self.num_total - self.num_read));
        let mut i = 0;
        while i < want && self.num_read < 2 {
            let Some((t, v)) = self.next_head() else { return i };
            ts[i] = t;
            vs[i] = v;
            i += 1;
        }
        while i < want {
            let n = self.decode_run(&mut ts[i..want], &mut vs[i..want]);
            i += n;
            if i < want {
                // The run stopped at a sample it does not handle inline.
                let Some((t, v)) = self.next_slow() else { return i };
                ts[i] = t;
                vs[i] = v;
                i += 1;
            }
        }
        i
    }

    /// The hot loop: decodes samples from the third on, with all state in locals, until
    /// the output is full or a sample needs the slow path (raw 64-bit dod, a value longer
    /// than the loaded word, a corrupt window, or the end of the data).
    #[inline(always)]
    fn decode_run(&mut self, ts: &mut [i64], vs: &mut [u64]) -> usize {
        // The bit reader's state, unpacked so that it stays in registers (see BitReader::refill).
        let stream = self.br.stream;
        let end_bits = stream.len() * 8;
        let (mut pos, mut buf, mut avail) = (self.br.pos, self.br.buf, self.br.avail);
        let (mut t, mut t_delta, mut val) = (self.t, self.t_delta, self.val);
        let (mut wshift, mut wm) = (self.wshift, self.wm);
        let mut n = 0;
        for (ts_out, vs_out) in ts.iter_mut().zip(vs.iter_mut()) {
            // Refill only when fewer than 37 bits (a 24-bit dod and a 13-bit value header)
            // are buffered: a refill puts a load on the sample-to-sample dependency chain,
            // and a predictable branch keeps it off when the bits are already there.
            if avail < 37 {
                buf |= load_word(stream, pos) >> avail;
                pos += ((63 - avail) >> 3) as usize;
                avail |= 56;
            }
            let w = buf;
            // One test per prefix bit, with constant widths after each: which bucket comes
            // next is usually predictable (regular scrapes keep to one), and this is fewer
            // instructions than counting leading ones without lzcnt.
            let (dod, dlen): (i64, u32) = if w >> 63 == 0 {
                (0, 1)
            } else if w >> 62 & 1 == 0 {
                (dod_field::<2, 14>(w), 16)
            } else if w >> 61 & 1 == 0 {
                (dod_field::<3, 17>(w), 20)
            } else if w >> 60 & 1 == 0 {
                (dod_field::<4, 20>(w), 24)
            } else {
                break;
            };
            let v = w << dlen;
            // Value: control "0" (unchanged), "10" (current window) or "11" (new window:
            // 5 bits of leading zeros, 6 of width with 64 written as 0).
            if v >> 63 != 0 {
                let (hdr, m, shift) = if v >> 62 & 1 == 0 {
                    (2, wm, wshift)
                } else {
                    let l = ((v >> 57) & 0x1f) as u32;
                    let m = match ((v >> 51) & 0x3f) as u32 {
                        0 => 64,
                        m => m,
                    };
                    if l + m > 64 {
                        break;
                    }
                    (13, m, 64 - l - m)
                };
                let len = dlen + hdr + m;
                let (payload, nbuf, npos, navail) = if len <= avail {
                    // len ≤ avail ≤ 63, so the shift is in range.
                    ((v << hdr) >> (64 - m), buf << len, pos, avail - len)
                } else {
                    // The value runs past the buffered bits: read its payload from where it
                    // starts in the stream and restart the buffer after it.
                    if m > 56 {
                        break;
                    }
                    let start = pos * 8 - avail as usize + (dlen + hdr) as usize;
                    let p = load_word(stream, start >> 3) << (start & 7);
                    let next = start + m as usize;
                    let nbuf = load_word(stream, next >> 3) << (next & 7);
                    (p >> (64 - m), nbuf, (next >> 3) + 7, 56 - (next & 7) as u32)
                };
                (buf, pos, avail) = (nbuf, npos, navail);
                (wm, wshift) = (m, shift);
                val ^= payload << shift;
            } else {
                buf <<= dlen + 1;
                avail -= dlen + 1;
            }
            if pos * 8 - avail as usize > end_bits {
                // Truncated. The state has moved past the sample, which is harmless: the
                // slow path then fails on the same overrun.
                break;
            }
            t_delta = (t_delta as i64).wrapping_add(dod) as u64;
            t = t.wrapping_add(t_delta as i64);
            *ts_out = t;
            *vs_out = val;
            n += 1;
        }
        (self.br.pos, self.br.buf, self.br.avail) = (pos, buf, avail);
        (self.t, self.t_delta, self.val) = (t, t_delta, val);
        (self.wshift, self.wm) = (wshift, wm);
        self.num_read += n as u16;
        n
    }

    /// One sample from the third on, reading field by field: for what [`Self::decode_run`]
    /// leaves out.
    #[cold]
    fn next_slow(&mut self) -> Option<(i64, u64)> {
        let br = &mut self.br;
        br.refill();
        let ones = br.word().leading_ones().min(4);
        br.skip(ones + u32::from(ones < 4));
        let dod = match ones {
            0 => 0,
            4 => br.read_bits_lenient(64) as i64,
            _ => {
                let sz = [14, 17, 20][ones as usize - 1];
                let bits = br.read_bits_lenient(sz);
                bits.wrapping_sub(u64::from(bits > (1u64 << (sz - 1))) << sz) as i64
            }
        };
        let (mut leading, mut trailing) = self.leading_trailing();
        let br = &mut self.br;
        if !xor_read_lenient(br, &mut self.val, &mut leading, &mut trailing) || br.overrun() {
            self.fail();
            return None;
        }
        self.set_window(leading, trailing);
        self.t_delta = (self.t_delta as i64).wrapping_add(dod) as u64;
        self.t = self.t.wrapping_add(self.t_delta as i64);
        self.num_read += 1;
        Some((self.t, self.val))
    }

    /// Samples 0 and 1, whose timestamps are whole-byte varints.
    #[cold]
    fn next_head(&mut self) -> Option<(i64, u64)> {
        if self.num_read == 0 {
            let (Some(t), Some(v)) = (self.br.read_varint(), self.br.read_bits(64)) else {
                self.fail();
                return None;
            };
            self.t = t;
            self.val = v;
        } else {
            let Some(d) = self.br.read_uvarint() else {
                self.fail();
                return None;
            };
            self.t_delta = d;
            self.t = self.t.wrapping_add(d as i64);
            let (mut leading, mut trailing) = self.leading_trailing();
            if xor_read(&mut self.br, &mut self.val, &mut leading, &mut trailing).is_none() {
                self.fail();
                return None;
            }
            self.set_window(leading, trailing);
        }
        self.num_read += 1;
        Some((self.t, self.val))
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

/// The `SZ`-bit dod field after a `PREFIX`-bit prefix at the top of `w`, in Prometheus's
/// `bitRange` form (`-(2^(SZ-1) - 1) ..= 2^(SZ-1)`, values above 2^(SZ-1) stand for
/// negatives). Subtracting one maps that range onto the two's-complement one, so an
/// arithmetic shift sign-extends it; adding one back gives the dod.
#[inline(always)]
fn dod_field<const PREFIX: u32, const SZ: u32>(w: u64) -> i64 {
    (((w << PREFIX).wrapping_sub(1 << (64 - SZ)) as i64) >> (64 - SZ)) + 1
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

    /// A straightforward field-by-field decoder after `xor.go`'s iterator, to check the
    /// batched one against: the samples before the first error, and whether there was one.
    fn reference_decode(data: &[u8]) -> (Vec<(i64, u64)>, bool) {
        let mut out = Vec::new();
        let Some(hdr) = data.get(..2) else { return (out, true) };
        let num = u16::from_be_bytes([hdr[0], hdr[1]]);
        let mut br = BitReader::new(&data[2..]);
        let (mut t, mut td, mut val, mut leading, mut trailing) = (0i64, 0u64, 0u64, 0u32, 0u32);
        for i in 0..num {
            let ok = (|| -> Option<()> {
                if i == 0 {
                    t = br.read_varint()?;
                    val = br.read_bits(64)?;
                    return Some(());
                }
                if i == 1 {
                    td = br.read_uvarint()?;
                } else {
                    let mut d = 0u8;
                    for _ in 0..4 {
                        d <<= 1;
                        if !br.read_bit()? {
                            break;
                        }
                        d |= 1;
                    }
                    let sz = match d {
                        0b0 => 0,
                        0b10 => 14,
                        0b110 => 17,
                        0b1110 => 20,
                        _ => 64,
                    };
                    let mut dod = 0i64;
                    if sz != 0 {
                        let mut bits = br.read_bits(sz)?;
                        if sz != 64 && bits > (1 << (sz - 1)) {
                            bits = bits.wrapping_sub(1 << sz);
                        }
                        dod = bits as i64;
                    }
                    td = (td as i64).wrapping_add(dod) as u64;
                }
                t = t.wrapping_add(td as i64);
                if br.read_bit()? {
                    if br.read_bit()? {
                        leading = br.read_bits(5)? as u32;
                        let mut m = br.read_bits(6)? as u32;
                        if m == 0 {
                            m = 64;
                        }
                        if leading + m > 64 {
                            return None;
                        }
                        trailing = 64 - leading - m;
                    }
                    let m = 64 - leading - trailing;
                    val ^= br.read_bits(m)? << trailing;
                }
                Some(())
            })();
            if ok.is_none() {
                return (out, true);
            }
            out.push((t, val));
        }
        (out, false)
    }

    /// What the iterator yields: samples until it stops, and whether it stopped on an error.
    fn fast_decode(data: &[u8]) -> (Vec<(i64, u64)>, bool) {
        let Ok(mut it) = XorIterator::new(data) else { return (Vec::new(), true) };
        let got = it.by_ref().map(|(t, v)| (t, v.to_bits())).collect();
        (got, it.err().is_some())
    }

    #[test]
    fn batch_api_and_seek_across_batches() {
        let s: Vec<(i64, f64)> = (0..150).map(|i| (i * 1000 + (i % 3), (i as f64) * 0.25)).collect();
        let mut c = XorChunk::new();
        for (t, v) in &s {
            c.append(*t, *v);
        }
        let (mut ts, mut vs) = (Vec::new(), Vec::new());
        assert_eq!(c.iter().decode_into(&mut ts, &mut vs), Ok(150));
        assert_eq!(ts.iter().copied().zip(vs.iter().copied()).collect::<Vec<_>>(), s);
        // Partly consumed, then the rest in one go.
        let mut it = c.iter();
        for _ in 0..40 {
            it.next();
        }
        let (mut ts, mut vs) = (vec![-1], vec![-1.0]);
        assert_eq!(it.decode_into(&mut ts, &mut vs), Ok(110));
        assert_eq!(ts[1..], s[40..].iter().map(|x| x.0).collect::<Vec<_>>()[..]);
        assert_eq!(it.next(), None);
        // seek keeps returning the current sample until it is passed, across batch ends.
        let mut it = c.iter();
        for target in [0, 31_000, 31_000, 32_001, 99_000, 149_001] {
            let want = s.iter().find(|x| x.0 >= target).copied();
            assert_eq!(it.seek(target), want, "seek {target}");
        }
        assert_eq!(it.seek(150_000), None);
    }

    #[test]
    fn truncated_chunks_match_the_reference() {
        let s: Vec<(i64, f64)> =
            (0..100).map(|i| (i * 15_000 + (i * 7919) % 50, ((i * 31) % 17) as f64 * 1.5e-3)).collect();
        let mut c = XorChunk::new();
        for (t, v) in &s {
            c.append(*t, *v);
        }
        let full = c.bytes();
        for cut in 0..full.len() {
            let data = &full[..cut];
            let (fast, fast_err) = fast_decode(data);
            let (want, want_err) = reference_decode(data);
            assert_eq!((fast, fast_err), (want, want_err), "cut at {cut}");
        }
        let mut it = XorIterator::new(&full[..full.len() / 2]).unwrap();
        let (mut ts, mut vs) = (Vec::new(), Vec::new());
        assert!(it.decode_into(&mut ts, &mut vs).is_err());
        assert_eq!(ts.len(), reference_decode(&full[..full.len() / 2]).0.len());
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
        fn prop_matches_reference_on_any_bytes(count in 0u16..400, body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut data = count.to_be_bytes().to_vec();
            data.extend_from_slice(&body);
            prop_assert_eq!(fast_decode(&data), reference_decode(&data));
        }

        #[test]
        fn prop_matches_reference_on_encoded(samples in arb_samples(), flip in any::<prop::sample::Index>()) {
            let mut c = XorChunk::new();
            for (t, b) in &samples {
                c.append(*t, f64::from_bits(*b));
            }
            let mut data = c.bytes().to_vec();
            prop_assert_eq!(fast_decode(&data), reference_decode(&data));
            // One flipped bit: the two still agree on every sample and on failing.
            let bit = flip.index(data.len() * 8);
            data[bit / 8] ^= 0x80 >> (bit % 8);
            prop_assert_eq!(fast_decode(&data), reference_decode(&data));
        }

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
