//! Bounds-checked readers and writers for the integer encodings every TSDB file uses:
//! big-endian fixed width, Go's uvarint/varint, length-prefixed strings, CRC32C.
//!
//! Every read returns an error instead of panicking, carrying the offset where decoding
//! failed so callers can name the place in the file.

/// A decoding failure at a byte offset within the buffer being read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at offset {offset}")]
pub struct DecodeError {
    /// What was wrong.
    pub what: &'static str,
    /// Offset in the decoded buffer (relative to where the `Decbuf` started, plus its base).
    pub offset: usize,
}

/// CRC-32 with the Castagnoli polynomial, as Prometheus uses everywhere.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// A cursor over a byte slice. `base` is added to offsets in errors so they are file
/// offsets when the slice is part of a file.
#[derive(Debug, Clone)]
pub struct Decbuf<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Decbuf<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Decbuf { buf, pos: 0, base: 0 }
    }

    /// A cursor whose error offsets are reported relative to `base`.
    pub fn with_base(buf: &'a [u8], base: usize) -> Self {
        Decbuf { buf, pos: 0, base }
    }

    /// Current position (absolute, including `base`).
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Position within the slice.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The unconsumed bytes.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// An error at the current position.
    pub fn err(&self, what: &'static str) -> DecodeError {
        DecodeError { what, offset: self.offset() }
    }

    /// Consumes `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.err("unexpected end of data"));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.bytes(n).map(|_| ())
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn be16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn be32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn be64(&mut self) -> Result<u64, DecodeError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A float64 stored as its IEEE-754 bits, big-endian.
    pub fn be_f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.be64()?))
    }

    /// Go's `binary.Uvarint`: at most 10 bytes, overflow rejected.
    pub fn uvarint(&mut self) -> Result<u64, DecodeError> {
        let mut x: u64 = 0;
        let mut s: u32 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos + i) else {
                return Err(DecodeError { what: "unexpected end of data in uvarint", offset: self.offset() });
            };
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(self.err("uvarint overflows 64 bits"));
                }
                self.pos += i + 1;
                return Ok(x | (u64::from(b) << s));
            }
            x |= u64::from(b & 0x7f) << s;
            s += 7;
        }
        Err(self.err("uvarint overflows 64 bits"))
    }

    /// A uvarint that must fit in 32 bits.
    pub fn uvarint32(&mut self) -> Result<u32, DecodeError> {
        let at = self.offset();
        let v = self.uvarint()?;
        u32::try_from(v).map_err(|_| DecodeError { what: "uvarint overflows 32 bits", offset: at })
    }

    /// A uvarint used as a length or count, checked against what is left so a corrupt
    /// value cannot make the caller allocate more than the input could hold.
    pub fn uvarint_len(&mut self) -> Result<usize, DecodeError> {
        let at = self.offset();
        let v = self.uvarint()?;
        if v > self.remaining() as u64 {
            return Err(DecodeError { what: "length exceeds remaining data", offset: at });
        }
        Ok(v as usize)
    }

    /// Go's `binary.Varint` (zig-zag).
    pub fn varint(&mut self) -> Result<i64, DecodeError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A uvarint-length-prefixed byte string.
    pub fn uvarint_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.uvarint_len()?;
        self.bytes(n)
    }

    /// A uvarint-length-prefixed UTF-8 string.
    pub fn uvarint_str(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.offset();
        let b = self.uvarint_bytes()?;
        std::str::from_utf8(b).map_err(|_| DecodeError { what: "invalid UTF-8 in string", offset: at })
    }
}

/// Appends Go's uvarint encoding of `v`.
#[inline]
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends Go's zig-zag varint encoding of `v`.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends a uvarint length and the bytes.
pub fn put_uvarint_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvarint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends a big-endian u32.
pub fn put_be32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a big-endian u64.
pub fn put_be64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Number of bytes `put_uvarint` writes for `v`.
pub fn uvarint_size(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        for v in [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 300, -300] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(Decbuf::new(&b).varint().unwrap(), v);
        }
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut b = Vec::new();
            put_uvarint(&mut b, v);
            assert_eq!(b.len(), uvarint_size(v));
            assert_eq!(Decbuf::new(&b).uvarint().unwrap(), v);
        }
    }

    #[test]
    fn decode_errors_carry_offsets() {
        let mut d = Decbuf::with_base(&[0x80, 0x80], 100);
        assert_eq!(d.uvarint().unwrap_err().offset, 100);
        let over = [0xff; 11];
        assert!(Decbuf::new(&over).uvarint().is_err());
        let mut d = Decbuf::new(&[5, b'a']);
        assert!(d.uvarint_bytes().is_err());
        assert!(Decbuf::new(&[1, 2, 3]).be32().is_err());
    }

    #[test]
    fn crc_is_castagnoli() {
        // Standard check value for CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
