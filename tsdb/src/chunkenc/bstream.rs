//! MSB-first bit streams, as `tsdb/chunkenc/bstream.go` writes and reads them.

/// An append-only bit stream over a byte vector. `count` is the number of bits still
/// free in the last byte (0 means the last byte is full or there is none).
///
/// Byte-exactness with Go: Prometheus's `writeByte` always appends a fresh byte after the
/// one it completes, so a stream whose last write was a whole byte ending on a byte
/// boundary carries one trailing zero byte (`count == 8`). Chunk files keep that byte, so
/// we reproduce it: after any byte-granular write that ends aligned, the stream holds an
/// empty last byte, exactly as Go's does.
#[derive(Debug, Clone, Default)]
pub struct BitWriter {
    pub(crate) bytes: Vec<u8>,
    pub(crate) count: u8,
}

impl BitWriter {
    /// A stream over existing bytes; `free_bits` of the last byte are unused.
    pub fn from_bytes(bytes: Vec<u8>, free_bits: u8) -> Self {
        BitWriter { bytes, count: free_bits }
    }

    /// Resumes writing after the first `used_bits` bits of an encoded chunk: bits past them
    /// are cleared, and the trailing empty byte Go's writer leaves after an aligned
    /// byte-granular write is kept when `data` has it, so appending to a reopened chunk
    /// gives the bytes continuous appending would have.
    pub fn resume(data: &[u8], used_bits: usize) -> Self {
        let nbytes = used_bits.div_ceil(8).min(data.len());
        let mut bytes = data[..nbytes].to_vec();
        let free = (nbytes * 8).saturating_sub(used_bits) as u8;
        if free > 0 {
            let last = bytes.len() - 1;
            bytes[last] &= !((1u8 << free) - 1);
            return BitWriter { bytes, count: free };
        }
        if data.get(nbytes) == Some(&0) {
            bytes.push(0);
            return BitWriter { bytes, count: 8 };
        }
        BitWriter { bytes, count: 0 }
    }

    /// The bytes written so far (the last one zero-padded).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Mutable access to the bytes, e.g. to patch a header.
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// Writes one bit.
    #[inline]
    pub fn write_bit(&mut self, bit: bool) {
        if self.count == 0 {
            self.bytes.push(0);
            self.count = 8;
        }
        if bit {
            let last = self.bytes.len() - 1;
            self.bytes[last] |= 1 << (self.count - 1);
        }
        self.count -= 1;
    }

    /// Writes 8 bits.
    #[inline]
    pub fn write_byte(&mut self, byt: u8) {
        if self.count == 0 || self.count == 8 {
            if self.count == 8 {
                let last = self.bytes.len() - 1;
                self.bytes[last] = byt;
            } else {
                self.bytes.push(byt);
            }
            // Go's writeByte leaves an empty byte after an aligned write.
            self.bytes.push(0);
            self.count = 8;
            return;
        }
        let last = self.bytes.len() - 1;
        self.bytes[last] |= byt >> (8 - self.count);
        self.bytes.push(byt << self.count);
    }

    /// Writes the low `nbits` bits of `u`, most significant first.
    #[inline]
    pub fn write_bits(&mut self, u: u64, nbits: u32) {
        self.write_bits_tail(u, nbits, nbits);
    }

    /// Writes the low `nbits` bits of `u` in one go where Go makes several `writeBits`
    /// calls, the last of which wrote `go_tail` bits. Go's `writeBits` emits whole bytes
    /// through `writeByte` first, so only when that last call was a multiple of 8 bits
    /// and ends aligned does the stream carry the trailing empty byte (see the type docs).
    #[inline]
    pub fn write_bits_tail(&mut self, u: u64, nbits: u32, go_tail: u32) {
        debug_assert!(nbits <= 64 && go_tail <= nbits);
        if nbits == 0 {
            return;
        }
        let byte_granular = go_tail >= 8 && go_tail.is_multiple_of(8);
        // Left-align the payload so the next bit to write is bit 63.
        let mut u = u << (64 - nbits);
        let mut nbits = nbits;
        if self.count > 0 {
            let free = u32::from(self.count);
            let last = self.bytes.len() - 1;
            self.bytes[last] |= (u >> (64 - free)) as u8;
            if nbits <= free {
                self.count -= nbits as u8;
                if self.count == 0 && byte_granular {
                    self.bytes.push(0);
                    self.count = 8;
                }
                return;
            }
            u = if free == 64 { 0 } else { u << free };
            nbits -= free;
        }
        let whole = (nbits / 8) as usize;
        let be = u.to_be_bytes();
        self.bytes.extend_from_slice(&be[..whole]);
        let rest = nbits % 8;
        if rest > 0 {
            self.bytes.push(be[whole]);
            self.count = (8 - rest) as u8;
        } else if byte_granular {
            self.bytes.push(0);
            self.count = 8;
        } else {
            self.count = 0;
        }
    }
}

/// The eight bytes of `stream` at `pos` as a big-endian word, zero past the end.
#[inline(always)]
pub(crate) fn load_word(stream: &[u8], pos: usize) -> u64 {
    match stream.get(pos..pos.wrapping_add(8)) {
        Some(w) => u64::from_be_bytes(w.try_into().unwrap_or([0; 8])),
        None => load_word_tail(stream, pos),
    }
}

#[cold]
#[inline(never)]
fn load_word_tail(stream: &[u8], pos: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(rest) = stream.get(pos..) {
        let n = rest.len().min(8);
        a[..n].copy_from_slice(&rest[..n]);
    }
    u64::from_be_bytes(a)
}

/// Reads an MSB-first bit stream.
///
/// Bits are buffered left-aligned in a 64-bit word refilled eight bytes at a time
/// (Giesen's "variant 4" refill: the partially loaded byte is re-ORed on the next refill,
/// which is harmless because it holds the same bits). Reading past the end yields zero
/// bits and is reported as `None`; hot loops may instead read leniently and check
/// [`BitReader::overrun`] once per sample.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    pub(crate) stream: &'a [u8],
    /// Next byte to load (may run past the end: those bytes read as zero).
    pub(crate) pos: usize,
    /// Buffered bits, left-aligned; `avail` of them are counted as loaded.
    pub(crate) buf: u64,
    pub(crate) avail: u32,
}

impl<'a> BitReader<'a> {
    /// A reader at the start of `stream`.
    pub fn new(stream: &'a [u8]) -> Self {
        BitReader { stream, pos: 0, buf: 0, avail: 0 }
    }

    /// Tops the buffer up to at least 56 bits.
    #[inline(always)]
    pub(crate) fn refill(&mut self) {
        self.buf |= load_word(self.stream, self.pos) >> self.avail;
        self.pos += ((63 - self.avail) >> 3) as usize;
        self.avail |= 56;
    }

    /// Bits consumed so far.
    #[inline(always)]
    fn consumed(&self) -> usize {
        self.pos * 8 - self.avail as usize
    }

    /// Whether more bits were consumed than the stream holds.
    #[inline(always)]
    pub fn overrun(&self) -> bool {
        self.consumed() > self.stream.len() * 8
    }

    /// Bits not yet read (0 after an overrun).
    pub fn bits_remaining(&self) -> usize {
        (self.stream.len() * 8).saturating_sub(self.consumed())
    }

    /// The next `n` (1 ..= 56) bits without consuming them; the caller has refilled.
    #[inline(always)]
    pub(crate) fn peek(&self, n: u32) -> u64 {
        debug_assert!((1..=56).contains(&n) && n <= self.avail);
        self.buf >> (64 - n)
    }

    /// Buffered bits (at least 56 right after a refill).
    #[inline(always)]
    pub(crate) fn avail(&self) -> u32 {
        self.avail
    }

    /// Refills only when fewer than `n` (≤ 56) bits are buffered; a refill sits on the
    /// decoder's critical path, so skipping it when possible is the main saving.
    #[inline(always)]
    pub(crate) fn ensure(&mut self, n: u32) {
        if self.avail < n {
            self.refill();
        }
    }

    /// The buffered word (for prefix decoding with leading_ones).
    #[inline(always)]
    pub(crate) fn word(&self) -> u64 {
        self.buf
    }

    /// Drops `n` (≤ 56, ≤ buffered) bits.
    #[inline(always)]
    pub(crate) fn skip(&mut self, n: u32) {
        debug_assert!(n <= self.avail && n < 64);
        self.buf <<= n;
        self.avail -= n;
    }

    /// Reads `n` (≤ 64) bits; past the end they are zero. Check [`Self::overrun`].
    #[inline(always)]
    pub(crate) fn read_bits_lenient(&mut self, n: u32) -> u64 {
        if n == 0 {
            return 0;
        }
        if n > 56 {
            return self.read_long(n);
        }
        if self.avail < n {
            self.refill();
        }
        let v = self.peek(n);
        self.skip(n);
        v
    }

    /// 57 to 64 bits: more than one refill guarantees.
    #[inline(never)]
    fn read_long(&mut self, n: u32) -> u64 {
        if self.avail < 32 {
            self.refill();
        }
        let hi = self.peek(32);
        self.skip(32);
        self.refill();
        let lo = self.peek(n - 32);
        self.skip(n - 32);
        (hi << (n - 32)) | lo
    }

    /// Reads one bit.
    #[inline]
    pub fn read_bit(&mut self) -> Option<bool> {
        let v = self.read_bits_lenient(1) == 1;
        if self.overrun() { None } else { Some(v) }
    }

    /// Reads `nbits` (≤ 64) bits as an unsigned integer.
    #[inline]
    pub fn read_bits(&mut self, nbits: u32) -> Option<u64> {
        debug_assert!(nbits <= 64);
        let v = self.read_bits_lenient(nbits);
        if self.overrun() { None } else { Some(v) }
    }

    /// Reads 8 bits.
    #[inline]
    pub fn read_byte(&mut self) -> Option<u8> {
        self.read_bits(8).map(|v| v as u8)
    }

    /// Reads a Go uvarint from the bit stream, byte by byte (as `binary.ReadUvarint` over
    /// the bstream reader does).
    pub fn read_uvarint(&mut self) -> Option<u64> {
        let mut x: u64 = 0;
        let mut s: u32 = 0;
        for i in 0..10 {
            let b = self.read_byte()?;
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return None;
                }
                return Some(x | (u64::from(b) << s));
            }
            x |= u64::from(b & 0x7f) << s;
            s += 7;
        }
        None
    }

    /// Reads a Go zig-zag varint from the bit stream.
    pub fn read_varint(&mut self) -> Option<i64> {
        let u = self.read_uvarint()?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip() {
        let mut w = BitWriter::default();
        let items: &[(u64, u32)] = &[(1, 1), (0, 1), (0x3ff, 10), (u64::MAX, 64), (5, 3), (0xAB, 8), (0, 0), (1, 64)];
        for (v, n) in items {
            w.write_bits(*v, *n);
        }
        let mut r = BitReader::new(w.bytes());
        for (v, n) in items {
            let mask = if *n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            assert_eq!(r.read_bits(*n), Some(v & mask), "{n} bits");
        }
    }
}
