//! MSB-first bit streams, as `tsdb/chunkenc/bstream.go` writes and reads them.

/// An append-only bit stream over a byte vector. `count` is the number of bits still
/// free in the last byte (0 means the last byte is full or there is none).
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
        if self.count == 0 {
            self.bytes.push(byt);
            return;
        }
        let last = self.bytes.len() - 1;
        self.bytes[last] |= byt >> (8 - self.count);
        self.bytes.push(byt << self.count);
    }

    /// Writes the low `nbits` bits of `u`, most significant first.
    #[inline]
    pub fn write_bits(&mut self, u: u64, mut nbits: u32) {
        debug_assert!(nbits <= 64);
        let mut u = if nbits == 0 { 0 } else { u << (64 - nbits) };
        while nbits >= 8 {
            self.write_byte((u >> 56) as u8);
            u <<= 8;
            nbits -= 8;
        }
        while nbits > 0 {
            self.write_bit((u >> 63) == 1);
            u <<= 1;
            nbits -= 1;
        }
    }
}

/// Reads an MSB-first bit stream. Running off the end is reported as `None`.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    stream: &'a [u8],
    /// Next byte to load into `buffer`.
    pos: usize,
    /// Up to 64 bits, left-aligned at bit `valid - 1`.
    buffer: u64,
    /// Number of valid bits in `buffer` (low bits).
    valid: u32,
}

impl<'a> BitReader<'a> {
    /// A reader at the start of `stream`.
    pub fn new(stream: &'a [u8]) -> Self {
        BitReader { stream, pos: 0, buffer: 0, valid: 0 }
    }

    #[inline]
    fn refill(&mut self) -> bool {
        if self.pos >= self.stream.len() {
            return false;
        }
        let rest = &self.stream[self.pos..];
        if rest.len() >= 8 && self.valid == 0 {
            let mut a = [0u8; 8];
            a.copy_from_slice(&rest[..8]);
            self.buffer = u64::from_be_bytes(a);
            self.pos += 8;
            self.valid = 64;
            return true;
        }
        // Top up byte by byte while there is room.
        while self.valid <= 56 && self.pos < self.stream.len() {
            self.buffer = (self.buffer << 8) | u64::from(self.stream[self.pos]);
            self.pos += 1;
            self.valid += 8;
        }
        true
    }

    /// Bits not yet read.
    pub fn bits_remaining(&self) -> usize {
        self.valid as usize + (self.stream.len() - self.pos) * 8
    }

    /// Reads one bit.
    #[inline]
    pub fn read_bit(&mut self) -> Option<bool> {
        if self.valid == 0 && !self.refill() {
            return None;
        }
        self.valid -= 1;
        Some((self.buffer >> self.valid) & 1 == 1)
    }

    /// Reads `nbits` (≤ 64) bits as an unsigned integer.
    #[inline]
    pub fn read_bits(&mut self, nbits: u32) -> Option<u64> {
        debug_assert!(nbits <= 64);
        if nbits == 0 {
            return Some(0);
        }
        if nbits <= self.valid {
            self.valid -= nbits;
            let v = if nbits == 64 { self.buffer } else { (self.buffer >> self.valid) & ((1u64 << nbits) - 1) };
            return Some(v);
        }
        // Take what is buffered, refill, take the rest.
        let have = self.valid;
        let hi = if have == 0 { 0 } else { self.buffer & ((1u64 << have) - 1) };
        self.valid = 0;
        if !self.refill() {
            return None;
        }
        let need = nbits - have;
        if need > self.valid {
            return None;
        }
        self.valid -= need;
        let lo = (self.buffer >> self.valid) & (if need == 64 { u64::MAX } else { (1u64 << need) - 1 });
        Some(if need == 64 { lo } else { (hi << need) | lo })
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
