//! Variable-bit integers as `tsdb/chunkenc/varbit.go` writes them (spec §5.3): a unary
//! prefix of up to eight 1 bits (ended by a 0 unless all eight are set) selects the
//! payload width.

use super::bstream::{BitReader, BitWriter};
use super::xor::bit_range;

/// Payload width for a prefix of `i` leading 1 bits.
const WIDTHS: [u32; 9] = [0, 3, 6, 9, 12, 18, 25, 56, 64];

/// Writes a signed integer; each width holds the asymmetric "bitRange" interval.
pub fn put_varbit_int(b: &mut BitWriter, v: i64) {
    if v == 0 {
        b.write_bit(false);
        return;
    }
    for (i, &w) in WIDTHS.iter().enumerate().skip(1).take(7) {
        if bit_range(v, w) {
            // `i` ones followed by a zero.
            b.write_bits(((1u64 << i) - 1) << 1, i as u32 + 1);
            b.write_bits(v as u64, w);
            return;
        }
    }
    b.write_bits(0xff, 8);
    b.write_bits(v as u64, 64);
}

/// Writes an unsigned integer; each width holds `0 ..= 2^w - 1`.
pub fn put_varbit_uint(b: &mut BitWriter, v: u64) {
    if v == 0 {
        b.write_bit(false);
        return;
    }
    let significant = 64 - v.leading_zeros();
    for (i, &w) in WIDTHS.iter().enumerate().skip(1).take(7) {
        if significant <= w {
            b.write_bits(((1u64 << i) - 1) << 1, i as u32 + 1);
            b.write_bits(v, w);
            return;
        }
    }
    b.write_bits(0xff, 8);
    b.write_bits(v, 64);
}

/// Reads the prefix and returns the payload width (the stream may have overrun; the
/// callers check once after the payload).
#[inline(always)]
fn read_width(r: &mut BitReader<'_>) -> u32 {
    r.ensure(8);
    let ones = r.word().leading_ones().min(8);
    r.skip(if ones == 8 { 8 } else { ones + 1 });
    WIDTHS[ones as usize]
}

/// Reads a signed varbit integer; `None` when the stream ends early.
#[inline]
pub fn read_varbit_int(r: &mut BitReader<'_>) -> Option<i64> {
    let w = read_width(r);
    let mut u = r.read_bits_lenient(w);
    if r.overrun() {
        return None;
    }
    if w > 0 && w < 64 && u > 1u64 << (w - 1) {
        u = u.wrapping_sub(1u64 << w);
    }
    Some(u as i64)
}

/// Reads an unsigned varbit integer; `None` when the stream ends early.
#[inline]
pub fn read_varbit_uint(r: &mut BitReader<'_>) -> Option<u64> {
    let w = read_width(r);
    let u = r.read_bits_lenient(w);
    if r.overrun() { None } else { Some(u) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn boundaries_round_trip_with_expected_sizes() {
        // (value, encoded bits) at every range edge.
        let ints: &[(i64, usize)] = &[
            (0, 1),
            (1, 5),
            (-3, 5),
            (4, 5),
            (-4, 9),
            (5, 9),
            (32, 9),
            (-31, 9),
            (33, 13),
            (-255, 13),
            (256, 13),
            (257, 17),
            (2048, 17),
            (-2047, 17),
            (2049, 24),
            (131072, 24),
            (131073, 32),
            (16777216, 32),
            (16777217, 64),
            ((1 << 55), 64),
            (-(1 << 55) + 1, 64),
            ((1 << 55) + 1, 72),
            (-(1 << 55), 72),
            (i64::MIN, 72),
            (i64::MAX, 72),
        ];
        for &(v, bits) in ints {
            let mut w = BitWriter::default();
            put_varbit_int(&mut w, v);
            let used = w.bytes().len() * 8 - usize::from(w.count);
            assert_eq!(used, bits, "size of {v}");
            let mut r = BitReader::new(w.bytes());
            assert_eq!(read_varbit_int(&mut r), Some(v));
        }
        let uints: &[(u64, usize)] = &[
            (0, 1),
            (1, 5),
            (7, 5),
            (8, 9),
            (63, 9),
            (64, 13),
            (511, 13),
            (512, 17),
            (4095, 17),
            (4096, 24),
            (262143, 24),
            (262144, 32),
            (33554431, 32),
            (33554432, 64),
            ((1 << 56) - 1, 64),
            (1 << 56, 72),
            (u64::MAX, 72),
        ];
        for &(v, bits) in uints {
            let mut w = BitWriter::default();
            put_varbit_uint(&mut w, v);
            let used = w.bytes().len() * 8 - usize::from(w.count);
            assert_eq!(used, bits, "size of {v}");
            let mut r = BitReader::new(w.bytes());
            assert_eq!(read_varbit_uint(&mut r), Some(v));
        }
    }

    #[test]
    fn known_bit_patterns() {
        // 4 → "10" + "100"; -3 → "10" + "101" (two's complement low 3 bits).
        let mut w = BitWriter::default();
        put_varbit_int(&mut w, 4);
        put_varbit_int(&mut w, -3);
        put_varbit_uint(&mut w, 7);
        // 10100 10101 10111 + pad → 1010 0101 0110 1110
        assert_eq!(w.bytes(), &[0b1010_0101, 0b0110_1110]);
    }

    #[test]
    fn truncated_is_none() {
        let mut w = BitWriter::default();
        put_varbit_int(&mut w, 1 << 40);
        let b = w.bytes();
        // 64 bits end byte-aligned, so the stream ends with Go's empty trailing byte.
        assert_eq!(b.last(), Some(&0));
        for n in 0..b.len() - 1 {
            let mut r = BitReader::new(&b[..n]);
            assert_eq!(read_varbit_int(&mut r), None, "cut at {n}");
        }
    }

    proptest! {
        #[test]
        fn prop_round_trip(ints in proptest::collection::vec(any::<i64>(), 0..50),
                           uints in proptest::collection::vec(any::<u64>(), 0..50)) {
            let mut w = BitWriter::default();
            for v in &ints { put_varbit_int(&mut w, *v); }
            for v in &uints { put_varbit_uint(&mut w, *v); }
            let mut r = BitReader::new(w.bytes());
            for v in &ints { prop_assert_eq!(read_varbit_int(&mut r), Some(*v)); }
            for v in &uints { prop_assert_eq!(read_varbit_uint(&mut r), Some(*v)); }
        }
    }
}
