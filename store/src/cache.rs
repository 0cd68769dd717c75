//! The in-memory index cache (`--index-cache-size`, Thanos's flag and default): decoded
//! postings lists and raw series entries read from the bucket, least recently used
//! evicted first once their bytes exceed the limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use ulid::Ulid;

use crate::metrics::Metrics;

/// Thanos's default `--index-cache-size`: 250 MiB.
pub const DEFAULT_SIZE: u64 = 250 * 1024 * 1024;

/// What is cached: a postings list of a block, or a series entry by series reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    Postings(Ulid, String, String),
    Series(Ulid, u32),
}

/// A cached item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheValue {
    /// Series IDs, decoded and checked.
    Postings(Arc<Vec<u32>>),
    /// A series entry's bytes (length prefix to CRC), checked when decoded.
    Series(Bytes),
}

impl CacheKey {
    fn size(&self) -> u64 {
        match self {
            CacheKey::Postings(_, n, v) => (n.len() + v.len() + 64) as u64,
            CacheKey::Series(..) => 48,
        }
    }
}

impl CacheValue {
    fn size(&self) -> u64 {
        match self {
            CacheValue::Postings(p) => p.len() as u64 * 4 + 24,
            CacheValue::Series(b) => b.len() as u64 + 32,
        }
    }
}

#[derive(Debug, Default)]
struct Lru {
    items: HashMap<CacheKey, (CacheValue, u64)>,
    /// Last use → key; the first entry is evicted first.
    order: BTreeMap<u64, CacheKey>,
    bytes: u64,
    tick: u64,
}

/// A bounded LRU cache shared by all blocks. Size 0 disables it.
#[derive(Debug)]
pub struct IndexCache {
    max_bytes: u64,
    lru: Mutex<Lru>,
    metrics: Arc<Metrics>,
}

impl IndexCache {
    /// A cache holding at most `max_bytes` (keys and values, estimated).
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> IndexCache {
        IndexCache { max_bytes, lru: Mutex::new(Lru::default()), metrics }
    }

    /// The cached value of `key`, marked as used.
    pub fn get(&self, key: &CacheKey) -> Option<CacheValue> {
        if self.max_bytes == 0 {
            return None;
        }
        self.metrics.index_cache_requests.inc();
        let mut l = self.lru.lock();
        l.tick += 1;
        let now = l.tick;
        let (v, was) = {
            let (v, used) = l.items.get_mut(key)?;
            let was = std::mem::replace(used, now);
            (v.clone(), was)
        };
        l.order.remove(&was);
        l.order.insert(now, key.clone());
        self.metrics.index_cache_hits.inc();
        Some(v)
    }

    /// Stores `value`, evicting the least recently used items to make room; an item
    /// larger than the whole cache is not stored.
    pub fn put(&self, key: CacheKey, value: CacheValue) {
        let size = key.size() + value.size();
        if size > self.max_bytes {
            return;
        }
        let mut l = self.lru.lock();
        l.tick += 1;
        let now = l.tick;
        if let Some((old, used)) = l.items.remove(&key) {
            l.order.remove(&used);
            l.bytes -= key.size() + old.size();
        }
        while l.bytes + size > self.max_bytes {
            let Some((_, k)) = l.order.pop_first() else { break };
            if let Some((v, _)) = l.items.remove(&k) {
                l.bytes -= k.size() + v.size();
            }
        }
        l.bytes += size;
        l.order.insert(now, key.clone());
        l.items.insert(key, (value, now));
        self.metrics.index_cache_bytes.set(l.bytes as i64);
        self.metrics.index_cache_items.set(l.items.len() as i64);
    }

    /// Drops every item of block `id` (a block no longer served). A scan of the whole
    /// cache, done once per dropped block at sync.
    pub fn remove_block(&self, id: Ulid) {
        let mut l = self.lru.lock();
        let gone: Vec<(CacheKey, u64)> = l
            .items
            .iter()
            .filter(|(k, _)| matches!(k, CacheKey::Postings(b, ..) | CacheKey::Series(b, _) if *b == id))
            .map(|(k, (_, used))| (k.clone(), *used))
            .collect();
        for (k, used) in gone {
            l.order.remove(&used);
            if let Some((v, _)) = l.items.remove(&k) {
                l.bytes -= k.size() + v.size();
            }
        }
        self.metrics.index_cache_bytes.set(l.bytes as i64);
        self.metrics.index_cache_items.set(l.items.len() as i64);
    }

    /// Bytes held (estimated).
    pub fn bytes(&self) -> u64 {
        self.lru.lock().bytes
    }
}

/// Parses a size flag as Thanos does (`units.Base2Bytes`): a number with an optional
/// unit B, KB/KiB, MB/MiB, GB/GiB, TB/TiB, all powers of 1024.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 250MB)"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "KIB" | "K" => 1 << 10,
        "MB" | "MIB" | "M" => 1 << 20,
        "GB" | "GIB" | "G" => 1 << 30,
        "TB" | "TIB" | "T" => 1 << 40,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn cache(max: u64) -> IndexCache {
        IndexCache::new(max, Arc::new(Metrics::new(&mut Registry::default())))
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let id = Ulid::nil();
        let k = |i: u32| CacheKey::Series(id, i);
        let v = |n: usize| CacheValue::Series(Bytes::from(vec![0u8; n]));
        let item = k(0).size() + v(100).size();
        let c = cache(3 * item);
        for i in 0..3 {
            c.put(k(i), v(100));
        }
        assert_eq!(c.bytes(), 3 * item);
        assert!(c.get(&k(0)).is_some()); // 0 is now the most recent
        c.put(k(3), v(100));
        assert!(c.get(&k(1)).is_none(), "least recently used goes first");
        for i in [0, 2, 3] {
            assert_eq!(c.get(&k(i)), Some(v(100)), "{i}");
        }
        // Too big for the cache: not stored, nothing evicted.
        c.put(k(9), v(10 * item as usize));
        assert!(c.get(&k(9)).is_none());
        assert_eq!(c.bytes(), 3 * item);
        // Replacing a key keeps the byte count right.
        c.put(k(0), v(50));
        assert_eq!(c.bytes(), 2 * item + k(0).size() + v(50).size());
        assert_eq!(c.metrics.index_cache_hits.get(), 4);
        // A dropped block's items go, others stay.
        let other = Ulid::from_parts(1, 1);
        c.put(CacheKey::Postings(other, "a".into(), "b".into()), CacheValue::Postings(Arc::new(vec![1])));
        c.remove_block(id);
        assert!(c.get(&k(0)).is_none() && c.get(&k(2)).is_none());
        assert!(c.get(&CacheKey::Postings(other, "a".into(), "b".into())).is_some());
        assert_eq!(c.bytes(), CacheKey::Postings(other, "a".into(), "b".into()).size() + 4 + 24);
        let off = cache(0);
        off.put(k(1), v(1));
        assert!(off.get(&k(1)).is_none());
    }

    #[test]
    fn sizes_parse_as_thanos_does() {
        for (s, want) in [("250MB", 250 << 20), ("1GiB", 1 << 30), ("0", 0), ("512KB", 512 << 10), ("7B", 7)] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
        for s in ["", "MB", "1XB", "-1MB", "99999999999999TB"] {
            assert!(parse_size(s).is_err(), "{s}");
        }
    }
}
