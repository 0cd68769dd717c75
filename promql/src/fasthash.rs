//! Hash maps for the evaluator's per-step bookkeeping. Keys are mostly `Labels`, whose
//! hash is already computed (xxhash, as Prometheus's), so SipHash over it only costs time;
//! a multiply-rotate mix is enough.

use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FastHasher`].
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FastHasher>>;
/// A `HashSet` with [`FastHasher`].
pub(crate) type HashSet<K> = std::collections::HashSet<K, BuildHasherDefault<FastHasher>>;

/// Multiply-rotate hashing of whole words (FxHash-style), with a final fold so the low
/// bits hashbrown indexes by depend on the high bits of aligned pointers too.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.add(v as u64);
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.add(v as u64);
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_work_with_labels_and_strings() {
        let mut m: HashMap<(usize, norn_model::Labels), usize> = HashMap::default();
        for i in 0..1000 {
            let l = norn_model::Labels::from_pairs([("a", i.to_string())]);
            m.insert((i % 7, l), i);
        }
        assert_eq!(m.len(), 1000);
        let l = norn_model::Labels::from_pairs([("a", "500")]);
        assert_eq!(m.get(&(500 % 7, l)), Some(&500));
        let s: HashSet<String> = ["x", "y", "x"].iter().map(|s| s.to_string()).collect();
        assert_eq!(s.len(), 2);
    }
}
