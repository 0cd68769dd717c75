//! A block's index read on demand: the [`IndexHeader`] answers symbols, label names and
//! values and where each postings list lies; postings lists and series entries are read
//! from the index in the bucket with ranged GETs (nearby ranges coalesced as Thanos does,
//! 512 KiB gap), decoded with tsdb's index code, and kept in the shared [`IndexCache`].

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use norn_model::{Labels, Matcher};
use norn_objstore::Bucket;
use norn_tsdb::TsdbError;
use norn_tsdb::chunks::ChunkRef;
use norn_tsdb::encoding::Decbuf;
use norn_tsdb::index::{HEADER_SIZE, PostingsPlan, PostingsSet, TOC_SIZE, decode_postings_list, decode_series_entry};
use ulid::Ulid;

use crate::cache::{CacheKey, CacheValue, IndexCache};
use crate::fetch::{MAX_GAP, MAX_RANGE, coalesce, partition};
use crate::indexheader::IndexHeader;
use crate::metrics::Metrics;

/// Bytes assumed for a series entry before it is read (Thanos's `maxSeriesSize`); a
/// longer entry is read again on its own.
pub const SERIES_SIZE_ESTIMATE: u64 = 64 * 1024;
/// Smallest series-entry estimate: a whole length prefix (a uvarint, at most 10 bytes)
/// always fits, so an incomplete prefix means one that runs past the series section.
const MIN_SERIES_SIZE_ESTIMATE: u64 = 16;
/// Label values of the matchers' names above which planning (a regex over every value)
/// runs as CPU work off the async worker.
pub(crate) const CPU_WORK_VALUES: usize = 4096;
/// Series IDs in the fetched postings lists above which combining them runs as CPU work.
const CPU_WORK_POSTINGS: usize = 64 * 1024;
/// Ranged GETs in flight per lookup.
const FETCH_CONCURRENCY: usize = 8;

/// Why postings or series could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{0}")]
    Bucket(#[from] norn_objstore::Error),
    #[error(transparent)]
    Corrupt(#[from] TsdbError),
}

/// The index of a served block: its header locally, the rest in the bucket.
#[derive(Debug)]
pub struct BucketIndex {
    /// The block.
    pub id: Ulid,
    /// The block's index-header.
    pub header: IndexHeader,
    bucket: Bucket,
    /// `<ulid>/index`, also the path in errors.
    key: String,
    path: PathBuf,
    /// Size of the index object.
    size: u64,
    cache: Arc<IndexCache>,
    metrics: Arc<Metrics>,
    /// Bytes read for a series entry before its length is known.
    series_estimate: u64,
}

impl BucketIndex {
    /// Reads the index of block `id` (`size` bytes in the bucket) through `header`.
    pub fn new(
        id: Ulid,
        header: IndexHeader,
        bucket: Bucket,
        size: u64,
        cache: Arc<IndexCache>,
        metrics: Arc<Metrics>,
    ) -> BucketIndex {
        let key = format!("{id}/index");
        BucketIndex {
            id,
            header,
            bucket,
            path: PathBuf::from(&key),
            key,
            size,
            cache,
            metrics,
            series_estimate: SERIES_SIZE_ESTIMATE,
        }
    }

    /// Reads `estimate` bytes (at least 16) for each series entry before its length is
    /// known, instead of [`SERIES_SIZE_ESTIMATE`]; longer entries are read again.
    pub fn with_series_estimate(mut self, estimate: u64) -> BucketIndex {
        self.series_estimate = estimate.max(MIN_SERIES_SIZE_ESTIMATE);
        self
    }

    /// Label names with at least one series, ascending.
    pub fn label_names(&self) -> Vec<&str> {
        self.header.label_names()
    }

    /// Values of label `name`, ascending.
    pub fn label_values(&self, name: &str) -> norn_tsdb::Result<Vec<&str>> {
        self.header.label_values(name)
    }

    fn corrupt(&self, offset: u64, what: impl Into<String>) -> IndexError {
        IndexError::Corrupt(TsdbError::corrupt_at(&self.path, offset, what))
    }

    /// Reads `parts`, `FETCH_CONCURRENCY` ranged GETs at a time, in the order they finish.
    fn fetch_parts(
        &self,
        parts: Vec<crate::fetch::Part>,
    ) -> impl futures::Stream<Item = (crate::fetch::Part, Result<Bytes, IndexError>)> + '_ {
        futures::stream::iter(parts.into_iter().map(move |p| async move {
            let b = self.get(p.range.clone()).await;
            (p, b)
        }))
        .buffer_unordered(FETCH_CONCURRENCY)
    }

    async fn get(&self, range: Range<u64>) -> Result<Bytes, IndexError> {
        self.metrics.index_fetches.inc();
        let want = range.end.saturating_sub(range.start);
        let b = self.bucket.get_range(&self.key, range.clone()).await?;
        self.metrics.index_fetched_bytes.inc_by(b.len() as u64);
        if (b.len() as u64) < want {
            return Err(self.corrupt(range.start, format!("read of {want} bytes returned {}", b.len())));
        }
        Ok(b)
    }

    /// IDs of the series selected by `matchers` (Prometheus's semantics, as
    /// [`norn_tsdb::index::IndexReader::postings_for_matchers`]): every postings list the
    /// plan needs is fetched at once, then combined.
    /// An intersected matcher none of whose values has a list in the index selects
    /// nothing: the answer is empty before anything is fetched, as in Thanos.
    pub async fn postings_for_matchers(&self, matchers: &[Matcher]) -> Result<Vec<u32>, IndexError> {
        let plan = || -> Result<Option<PostingsPlan>, IndexError> {
            let plan = PostingsPlan::new(matchers, |n| self.header.label_values(n))?;
            for s in &plan.intersect {
                if let PostingsSet::Values { name, values } = s {
                    let mut present = false;
                    for v in values {
                        if self.header.postings_range(name, v)?.is_some() {
                            present = true;
                            break;
                        }
                    }
                    if !present {
                        return Ok(None);
                    }
                }
            }
            Ok(Some(plan))
        };
        // Planning runs a regex over every value of a name: CPU work once there are many.
        let values: usize = matchers.iter().map(|m| self.header.value_count(&m.name)).sum();
        let plan = if values > CPU_WORK_VALUES { crate::cpu_work(plan)? } else { plan()? };
        let Some(plan) = plan else { return Ok(Vec::new()) };
        let keys = plan.keys();
        let lists = self.postings(&keys, true).await?;
        let by_key: HashMap<(&str, &str), &Arc<Vec<u32>>> =
            keys.iter().zip(&lists).map(|((n, v), l)| ((n.as_str(), v.as_str()), l)).collect();
        let evaluate = || plan.evaluate(|n, v| Ok(by_key.get(&(n, v)).map(|l| l.to_vec()).unwrap_or_default()));
        // Merging and intersecting long lists is CPU work too.
        let ids: usize = lists.iter().map(|l| l.len()).sum();
        Ok(if ids > CPU_WORK_POSTINGS { crate::cpu_work(evaluate)? } else { evaluate()? })
    }

    /// IDs of every series.
    pub async fn all_postings(&self) -> Result<Vec<u32>, IndexError> {
        let mut l = self.postings(&[(String::new(), String::new())], true).await?;
        Ok(l.pop().map(|l| l.to_vec()).unwrap_or_default())
    }

    /// The postings lists of `keys` (`("", "")`: all series), in order; a key without a
    /// list gives an empty one. `use_cache` false neither reads nor fills the cache.
    pub async fn postings(&self, keys: &[(String, String)], use_cache: bool) -> Result<Vec<Arc<Vec<u32>>>, IndexError> {
        let mut out: Vec<Option<Arc<Vec<u32>>>> = vec![None; keys.len()];
        let mut misses: Vec<(Range<u64>, usize)> = Vec::new();
        let limit = self.size.saturating_sub(TOC_SIZE as u64);
        for (i, (n, v)) in keys.iter().enumerate() {
            let Some(r) = self.header.postings_range(n, v)? else {
                out[i] = Some(Arc::default());
                continue;
            };
            if r.start >= r.end || r.end > limit {
                return Err(self.corrupt(r.start, format!("postings list {n}={v:?} range {r:?} outside the index")));
            }
            if use_cache
                && let Some(CacheValue::Postings(p)) =
                    self.cache.get(&CacheKey::Postings(self.id, n.clone(), v.clone()))
            {
                out[i] = Some(p);
                continue;
            }
            misses.push((r, i));
        }
        misses.sort_by_key(|m| m.0.start);
        let ranges: Vec<Range<u64>> = misses.iter().map(|m| m.0.clone()).collect();
        let parts = coalesce(&ranges, MAX_GAP, MAX_RANGE);
        let mut fetched = self.fetch_parts(parts);
        while let Some((p, b)) = fetched.next().await {
            let b = b?;
            for (r, i) in &misses[p.offsets] {
                let at = (r.start - p.range.start) as usize;
                let ids = Arc::new(decode_postings_list(&self.path, &b[at..], r.start as usize)?);
                if use_cache {
                    let (n, v) = &keys[*i];
                    self.cache
                        .put(CacheKey::Postings(self.id, n.clone(), v.clone()), CacheValue::Postings(ids.clone()));
                }
                out[*i] = Some(ids);
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Reads and checks every postings list of the index (nothing cached), `batch`
    /// lists at a time.
    pub async fn check_all_postings(&self, batch: usize) -> Result<(), IndexError> {
        let mut ranges: Vec<Range<u64>> = Vec::new();
        self.header.for_each_postings_range(|r| ranges.push(r))?;
        let limit = self.size.saturating_sub(TOC_SIZE as u64);
        if let Some(r) = ranges.iter().find(|r| r.start >= r.end || r.end > limit) {
            return Err(self.corrupt(r.start, format!("postings list range {r:?} outside the index")));
        }
        for chunk in ranges.chunks(batch.max(1)) {
            let parts = coalesce(chunk, MAX_GAP, MAX_RANGE);
            let mut fetched = self.fetch_parts(parts);
            while let Some((p, b)) = fetched.next().await {
                let b = b?;
                for r in &chunk[p.offsets] {
                    decode_postings_list(&self.path, &b[(r.start - p.range.start) as usize..], r.start as usize)?;
                }
            }
        }
        Ok(())
    }

    /// Labels and chunk references of the series `ids` (any order), in that order.
    /// `use_cache` false neither reads nor fills the cache.
    pub async fn series(&self, ids: &[u32], use_cache: bool) -> Result<Vec<(Labels, Vec<ChunkRef>)>, IndexError> {
        let end = self.header.series_end().min(self.size.saturating_sub(TOC_SIZE as u64));
        let mut raw: Vec<Option<Bytes>> = vec![None; ids.len()];
        let mut misses: Vec<(u64, usize)> = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let off = u64::from(id) * 16;
            if off < HEADER_SIZE as u64 || off >= end {
                return Err(self.corrupt(off, format!("series reference {id} outside series section")));
            }
            if use_cache && let Some(CacheValue::Series(b)) = self.cache.get(&CacheKey::Series(self.id, id)) {
                raw[i] = Some(b);
                continue;
            }
            misses.push((off, i));
        }
        misses.sort_unstable();
        let offs: Vec<u64> = misses.iter().map(|m| m.0).collect();
        let parts = partition(&offs, end, self.series_estimate, MAX_GAP, MAX_RANGE);
        let mut fetched = self.fetch_parts(parts);
        while let Some((p, b)) = fetched.next().await {
            let b = b?;
            for &(off, i) in &misses[p.offsets] {
                let at = usize::try_from(off - p.range.start).unwrap_or(usize::MAX).min(b.len());
                let rest = &b[at..];
                // The entry's size from its length prefix, checked against what is left of
                // the series section before any arithmetic on it (a damaged prefix can
                // claim up to 2^64 bytes).
                let mut d = Decbuf::with_base(rest, off as usize);
                let len =
                    d.uvarint().map_err(|e| self.corrupt(off, format!("series entry has a bad length prefix: {e}")))?;
                let left = end - off;
                let n = match len.checked_add(d.pos() as u64 + 4) {
                    Some(n) if n <= left => n,
                    _ => {
                        return Err(self.corrupt(
                            off,
                            format!("series entry has a bad length prefix: {len} bytes run past the series section ({left} bytes left)"),
                        ));
                    }
                };
                let entry = if n <= rest.len() as u64 {
                    let n = n as usize;
                    // Cached entries are copied out, or they would keep the whole read
                    // (gaps included) alive.
                    if use_cache { Bytes::copy_from_slice(&rest[..n]) } else { b.slice(at..at + n) }
                } else {
                    // Longer than the estimate: read on its own. Awaited here, inside the
                    // drain loop, which holds back the other reads' results meanwhile;
                    // such entries (series with thousands of chunks) are rare.
                    self.get(off..off + n).await?
                };
                if use_cache {
                    self.cache.put(CacheKey::Series(self.id, ids[i]), CacheValue::Series(entry.clone()));
                }
                raw[i] = Some(entry);
            }
        }
        let decode = || {
            let mut out = Vec::with_capacity(ids.len());
            for (i, r) in raw.into_iter().enumerate() {
                let off = u64::from(ids[i]) * 16;
                let Some(r) = r else { return Err(self.corrupt(off, "series entry not fetched")) };
                let mut chunks = Vec::new();
                let (l, _) = decode_series_entry(&self.path, &r, off as usize, |s| self.header.symbol(s), &mut chunks)?;
                out.push((l, chunks));
            }
            Ok(out)
        };
        if ids.len() > 256 { crate::cpu_work(decode) } else { decode() }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use norn_model::MatchType;
    use norn_tsdb::block::BlockWriter;
    use norn_tsdb::index::IndexReader;
    use norn_tsdb::series::encode_float_chunks;
    use prometheus_client::registry::Registry;
    use proptest::prelude::*;

    use super::*;
    use crate::indexheader;

    const NAMES: [&str; 4] = ["__name__", "a", "b", "c"];
    const VALUES: [&str; 5] = ["x", "y", "z", "xy", "w"];
    const PATTERNS: [&str; 9] = ["", "x", "y", "x|y", ".*", ".+", "x.*", "q", "xy|w|zz"];

    /// Writes and uploads a block with `series` (label sets as value indexes per name,
    /// `None` for unset) and opens its index both ways.
    async fn both(
        dir: &Path,
        series: &BTreeSet<Vec<(usize, usize)>>,
        sampling: usize,
        cache: u64,
        estimate: u64,
    ) -> (IndexReader, BucketIndex) {
        let bucket = Bucket::filesystem(&dir.join("bucket")).unwrap();
        let tmp = dir.join("tmp");
        let mut sets: Vec<Labels> = series
            .iter()
            .map(|s| Labels::from_pairs(s.iter().map(|&(n, v)| (NAMES[n], VALUES[v]))))
            .filter(|l| !l.is_empty())
            .collect();
        sets.sort();
        sets.dedup();
        let mut w = BlockWriter::new(&tmp, 0, 100_000).unwrap();
        for (i, l) in sets.iter().enumerate() {
            w.add_series(l, &encode_float_chunks((0..3 + i as i64 % 5).map(|t| (t * 1000, t as f64)), 2)).unwrap();
        }
        let meta = w.finish().unwrap();
        let labels = [("r".to_string(), "1".to_string())].into_iter().collect();
        let t = norn_block::ThanosMeta { labels, source: "test".into(), resolution: 0 };
        norn_block::upload(&bucket, &tmp.join(meta.ulid.to_string()), &t).await.unwrap();
        let key = format!("{}/index", meta.ulid);
        let whole = bucket.get(&key).await.unwrap();
        let size = whole.len() as u64;
        let hp = dir.join(indexheader::FILENAME);
        indexheader::build(&bucket, &key, size, &hp).await.unwrap();
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let cache = Arc::new(IndexCache::new(cache, metrics.clone()));
        let header = IndexHeader::open(&hp, sampling).unwrap();
        let remote = BucketIndex::new(meta.ulid, header, bucket, size, cache, metrics).with_series_estimate(estimate);
        (IndexReader::from_bytes(Path::new(&key), whole).unwrap(), remote)
    }

    fn matcher() -> impl Strategy<Value = Matcher> {
        (0..4usize, 0..NAMES.len(), 0..PATTERNS.len()).prop_map(|(k, n, p)| {
            let kind = [MatchType::Equal, MatchType::NotEqual, MatchType::Regex, MatchType::NotRegex][k];
            Matcher::new(kind, NAMES[n], PATTERNS[p]).unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Postings of any matchers and every series read on demand equal those of the
        /// whole index, whatever the sampling, with and without the cache (asked twice,
        /// so the second answer comes from the cache).
        #[test]
        fn on_demand_reads_equal_the_whole_index(
            series in proptest::collection::btree_set(
                proptest::collection::vec((0..NAMES.len(), 0..VALUES.len()), 1..4)
                    .prop_map(|v| v.into_iter().collect::<std::collections::BTreeMap<_, _>>().into_iter().collect()),
                1..40,
            ),
            sampling in 1..6usize,
            cache in prop_oneof![Just(0u64), Just(1u64 << 20)],
            estimate in prop_oneof![Just(16u64), Just(SERIES_SIZE_ESTIMATE)],
            queries in proptest::collection::vec(proptest::collection::vec(matcher(), 0..4), 1..12),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (whole, remote) = rt.block_on(both(dir.path(), &series, sampling, cache, estimate));
            for _round in 0..2 {
                for ms in &queries {
                    let want = whole.postings_for_matchers(ms).unwrap();
                    let got = rt.block_on(remote.postings_for_matchers(ms)).unwrap();
                    prop_assert_eq!(&got, &want, "{:?}", ms);
                    // Both go through PostingsPlan: check the semantics against a filter
                    // over each series' labels too (no matchers select nothing; an unset
                    // label matches as the empty value).
                    let brute: Vec<u32> = if ms.is_empty() {
                        Vec::new()
                    } else {
                        whole
                            .all_postings()
                            .unwrap()
                            .into_iter()
                            .filter(|&id| {
                                let (l, _) = whole.series(id).unwrap();
                                ms.iter().all(|m| m.matches(l.get(&m.name).unwrap_or("")))
                            })
                            .collect()
                    };
                    prop_assert_eq!(&got, &brute, "{:?}", ms);
                }
                let all = whole.all_postings().unwrap();
                prop_assert_eq!(rt.block_on(remote.all_postings()).unwrap(), all.clone());
                let mut ids = all.clone();
                ids.reverse(); // any order
                let got = rt.block_on(remote.series(&ids, true)).unwrap();
                for (id, s) in ids.iter().zip(got) {
                    prop_assert_eq!(s, whole.series(*id).unwrap());
                }
            }
            if cache > 0 {
                prop_assert!(remote.metrics.index_cache_hits.get() > 0);
            }
        }
    }

    #[tokio::test]
    async fn bad_references_and_damaged_bytes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let series: BTreeSet<Vec<(usize, usize)>> = (0..5).map(|v| vec![(0, 0), (1, v)]).collect();
        let (whole, remote) = both(dir.path(), &series, 32, 0, SERIES_SIZE_ESTIMATE).await;
        let e = remote.series(&[u32::MAX], false).await.unwrap_err().to_string();
        assert!(e.contains("outside series section") && e.contains("/index"), "{e}");
        // Damage the first series entry in the bucket: reading it names block and offset.
        let id = whole.all_postings().unwrap()[0];
        let key = format!("{}/index", remote.id);
        let mut b = remote.bucket.get(&key).await.unwrap().to_vec();
        b[id as usize * 16 + 3] ^= 0xff;
        remote.bucket.put(&key, b.into()).await.unwrap();
        let e = remote.series(&[id], false).await.unwrap_err().to_string();
        assert!(e.contains(&key) && e.contains("series"), "{e}");
        // Damage a postings list: the full check and a lookup both report it.
        remote.check_all_postings(2).await.unwrap();
        let r = remote.header.postings_range("a", "z").unwrap().unwrap();
        let mut b = remote.bucket.get(&key).await.unwrap().to_vec();
        b[r.start as usize + 9] ^= 0xff;
        remote.bucket.put(&key, b.into()).await.unwrap();
        for e in [
            remote.check_all_postings(2).await.unwrap_err().to_string(),
            remote.postings_for_matchers(&[Matcher::equal("a", "z")]).await.unwrap_err().to_string(),
        ] {
            assert!(e.contains(&key) && e.contains("postings list checksum mismatch"), "{e}");
        }
    }

    #[tokio::test]
    async fn damaged_length_prefixes_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let series: BTreeSet<Vec<(usize, usize)>> = (0..5).map(|v| vec![(0, 0), (1, v)]).collect();
        let (whole, remote) = both(dir.path(), &series, 32, 0, SERIES_SIZE_ESTIMATE).await;
        let key = format!("{}/index", remote.id);
        let good = remote.bucket.get(&key).await.unwrap().to_vec();
        let id = whole.all_postings().unwrap()[1];
        let off = id as usize * 16;
        // A varint overflowing 64 bits, the largest length (2^64 - 1), one just short of
        // usize::MAX once the prefix and CRC are added, one past the section.
        let mut huge = vec![0xff; 8];
        huge.extend_from_slice(&[0xef, 0x01]);
        for prefix in [vec![0xff; 10], [vec![0xff; 9], vec![0x01]].concat(), huge, vec![0xff, 0xff, 0x03]] {
            let mut b = good.clone();
            b[off..off + prefix.len()].copy_from_slice(&prefix);
            remote.bucket.put(&key, b.into()).await.unwrap();
            for ids in [vec![id], whole.all_postings().unwrap()] {
                let e = remote.series(&ids, false).await.unwrap_err().to_string();
                assert!(
                    e.contains(&key) && e.contains(&off.to_string()) && e.contains("bad length prefix"),
                    "{prefix:x?}: {e}"
                );
            }
        }
    }

    #[tokio::test]
    async fn absent_intersected_values_fetch_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let series: BTreeSet<Vec<(usize, usize)>> = (0..5).map(|v| vec![(0, v), (1, v)]).collect();
        let (whole, remote) = both(dir.path(), &series, 32, 1 << 20, SERIES_SIZE_ESTIMATE).await;
        let re = |n: &str, v: &str| Matcher::new(MatchType::Regex, n, v).unwrap();
        for ms in [
            vec![Matcher::equal("a", "nope"), re("__name__", ".+")],
            vec![re("__name__", ".+"), re("a", "q|zz")],
            vec![re("b", ".+"), re("__name__", "x|y")],
        ] {
            let before = remote.metrics.index_fetches.get();
            assert_eq!(remote.postings_for_matchers(&ms).await.unwrap(), Vec::<u32>::new(), "{ms:?}");
            assert_eq!(whole.postings_for_matchers(&ms).unwrap(), Vec::<u32>::new(), "{ms:?}");
            assert_eq!(remote.metrics.index_fetches.get(), before, "{ms:?}: ranged reads");
        }
        // A present value is fetched.
        let before = remote.metrics.index_fetches.get();
        assert_eq!(remote.postings_for_matchers(&[Matcher::equal("a", "x")]).await.unwrap().len(), 1);
        assert!(remote.metrics.index_fetches.get() > before);
    }

    #[tokio::test]
    async fn entries_longer_than_the_estimate_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let series: BTreeSet<Vec<(usize, usize)>> = (0..5).map(|v| vec![(0, v), (1, v), (2, 4 - v), (3, v)]).collect();
        let (whole, remote) = both(dir.path(), &series, 32, 0, 16).await;
        let key = format!("{}/index", remote.id);
        let idx = remote.bucket.get(&key).await.unwrap();
        let mut refetched = 0;
        for id in whole.all_postings().unwrap() {
            let off = id as usize * 16;
            let (_, size) =
                decode_series_entry(Path::new(&key), &idx[off..], off, |r| remote.header.symbol(r), &mut Vec::new())
                    .unwrap();
            let before = remote.metrics.index_fetches.get();
            assert_eq!(remote.series(&[id], false).await.unwrap()[0], whole.series(id).unwrap());
            let extra = usize::from(size > 16);
            refetched += extra;
            assert_eq!(remote.metrics.index_fetches.get() - before, 1 + extra as u64, "series {id} of {size} bytes");
        }
        assert!(refetched > 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random bytes written over the series and postings sections of the index in the
        /// bucket (the header built before) give answers or errors, never a panic.
        #[test]
        fn damaged_series_and_postings_never_panic(
            damage in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 1..12)), 1..8),
            estimate in prop_oneof![Just(16u64), Just(SERIES_SIZE_ESTIMATE)],
            queries in proptest::collection::vec(proptest::collection::vec(matcher(), 0..3), 1..6),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let series: BTreeSet<Vec<(usize, usize)>> =
                (0..12).map(|i| vec![(0, i % 5), (1, (i / 2) % 5), (2, (i / 3) % 5)]).collect();
            let (whole, remote) = rt.block_on(both(dir.path(), &series, 2, 0, estimate));
            let key = format!("{}/index", remote.id);
            let toc = whole.toc();
            let mut b = rt.block_on(remote.bucket.get(&key)).unwrap().to_vec();
            let span = toc.series as usize..toc.postings_table as usize;
            for (at, bytes) in damage {
                let at = span.start + at as usize % span.len();
                let n = bytes.len().min(span.end - at);
                b[at..at + n].copy_from_slice(&bytes[..n]);
            }
            rt.block_on(remote.bucket.put(&key, b.into())).unwrap();
            rt.block_on(async {
                for ms in &queries {
                    if let Ok(ids) = remote.postings_for_matchers(ms).await {
                        let _ = remote.series(&ids, false).await;
                    }
                }
                let _ = remote.check_all_postings(3).await;
                if let Ok(ids) = remote.all_postings().await {
                    let _ = remote.series(&ids, false).await;
                }
                for id in whole.all_postings().unwrap() {
                    let _ = remote.series(&[id], false).await;
                }
            });
        }
    }
}
