//! Keeping the set of served blocks in step with the bucket: list it, load new blocks
//! (meta.json checked, an index-header built from ranged reads of the index into the
//! data directory, the index verified through ranged reads unless turned off), skip
//! broken and deletion-marked blocks, drop blocks that vanished.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use norn_model::Labels;
use norn_objstore::Bucket;
use norn_tsdb::meta::BlockMeta;
use parking_lot::{Mutex, RwLock};
use ulid::Ulid;

use crate::bucketindex::{BucketIndex, IndexError};
use crate::cache::IndexCache;
use crate::indexheader::{self, HeaderError, IndexHeader};
use crate::metrics::Metrics;

/// Marker object Thanos's compactor (and `thanos tools bucket mark`) writes before
/// deleting a block: such blocks are no longer served.
pub const DELETION_MARK: &str = "deletion-mark.json";

/// A block served from the bucket: its meta, external labels, its index (header local,
/// postings and series read from the bucket) and the sizes of its chunk segment files
/// (for ranged reads).
#[derive(Debug)]
pub struct StoreBlock {
    /// Block ID (its directory in the bucket).
    pub id: Ulid,
    /// The parsed meta.json.
    pub meta: BlockMeta,
    /// `thanos.labels` of the meta: added to every series of the block.
    pub ext: Labels,
    /// The index: `<data-dir>/<ulid>/index-header` plus ranged reads of `<ulid>/index`.
    pub index: BucketIndex,
    /// Size in bytes of `chunks/000001`, `chunks/000002`, … in that order.
    pub segments: Vec<u64>,
    /// Downsampling resolution in ms: 0 (raw), 300000 (5m) or 3600000 (1h).
    pub resolution: i64,
}

impl StoreBlock {
    /// Whether the block holds samples in the closed range `[mint, maxt]` (a block's
    /// `maxTime` is exclusive).
    pub fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        self.meta.min_time <= maxt && self.meta.max_time > mint
    }
}

/// Why a block could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("meta.json: {0}")]
    Meta(String),
    #[error("{0}")]
    Bucket(#[from] norn_objstore::Error),
    #[error("index: {0}")]
    Index(#[from] norn_tsdb::TsdbError),
    #[error("index: {0}")]
    Remote(#[from] IndexError),
    #[error("index-header: {0}")]
    Header(#[from] HeaderError),
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: std::io::Error },
    #[error("{0}")]
    Layout(String),
}

/// The blocks being served; readers take a snapshot that stays valid while the set is
/// replaced under them.
#[derive(Debug, Default)]
pub struct BlockSet {
    blocks: RwLock<Arc<Vec<Arc<StoreBlock>>>>,
}

impl BlockSet {
    /// The current blocks, ordered by min time, then ID.
    pub fn snapshot(&self) -> Arc<Vec<Arc<StoreBlock>>> {
        self.blocks.read().clone()
    }

    fn replace(&self, mut v: Vec<Arc<StoreBlock>>) {
        v.sort_by_key(|b| (b.meta.min_time, b.id));
        *self.blocks.write() = Arc::new(v);
    }

    /// An empty set or one with the given blocks (tests, embedding).
    pub fn with_blocks(v: Vec<Arc<StoreBlock>>) -> BlockSet {
        let s = BlockSet::default();
        s.replace(v);
        s
    }
}

/// What the bucket listing says about one block directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Size of meta.json, if present.
    pub meta: Option<u64>,
    /// Size of the index, if present.
    pub index: Option<u64>,
    /// Chunk segment files by sequence number (`000001` → 1), with sizes.
    pub segments: BTreeMap<u64, u64>,
    /// Whether a deletion mark is present.
    pub deletion_marked: bool,
}

/// Groups a recursive bucket listing by block ID. Keys outside `<ulid>/…` (debug
/// directories, other tools' files) are ignored.
pub fn group_listing(keys: &[(String, u64)]) -> BTreeMap<Ulid, Listed> {
    let mut out: BTreeMap<Ulid, Listed> = BTreeMap::new();
    for (key, size) in keys {
        let Some((dir, rest)) = key.split_once('/') else { continue };
        let Ok(id) = Ulid::from_string(dir) else { continue };
        let e = out.entry(id).or_default();
        match rest {
            "meta.json" => e.meta = Some(*size),
            "index" => e.index = Some(*size),
            DELETION_MARK => e.deletion_marked = true,
            r => {
                if let Some(seq) = r.strip_prefix("chunks/").and_then(|n| n.parse::<u64>().ok()) {
                    e.segments.insert(seq, *size);
                }
            }
        }
    }
    out
}

/// The `thanos` section's external labels and downsampling resolution.
fn thanos_labels(meta: &BlockMeta) -> Result<(Labels, i64), LoadError> {
    let Some(t) = meta.extra.get("thanos") else { return Ok((Labels::empty(), 0)) };
    let bad = |what: &str| LoadError::Meta(format!("thanos section: {what}"));
    let t = t.as_object().ok_or_else(|| bad("not an object"))?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(l) = t.get("labels").filter(|l| !l.is_null()) {
        let l = l.as_object().ok_or_else(|| bad("labels is not an object"))?;
        for (k, v) in l {
            let v = v.as_str().ok_or_else(|| bad(&format!("label {k:?} is not a string")))?;
            if k.is_empty() || v.is_empty() {
                return Err(bad(&format!("empty label name or value in {k:?}={v:?}")));
            }
            pairs.push((k.clone(), v.to_string()));
        }
    }
    let resolution = match t.get("downsample").and_then(|d| d.get("resolution")) {
        None => 0,
        Some(r) => r.as_i64().ok_or_else(|| bad("downsample.resolution is not an integer"))?,
    };
    Ok((Labels::from_pairs(pairs.iter().map(|(a, b)| (a.as_str(), b.as_str()))), resolution))
}

/// Downsampling resolutions served (Thanos's three levels), coarsest first.
pub const RESOLUTIONS: [i64; 3] = [3_600_000, 300_000, 0];

/// Checks a meta.json's bytes for block `id`; returns the meta, its external labels and
/// its downsampling resolution.
pub fn parse_meta(id: Ulid, bytes: &[u8]) -> Result<(BlockMeta, Labels, i64), LoadError> {
    let meta = BlockMeta::from_json(Path::new(&format!("{id}/meta.json")), bytes)
        .map_err(|e| LoadError::Meta(e.to_string()))?;
    if meta.ulid != id {
        return Err(LoadError::Meta(format!("ulid {} does not match the block directory", meta.ulid)));
    }
    if meta.min_time > meta.max_time {
        return Err(LoadError::Meta(format!("minTime {} after maxTime {}", meta.min_time, meta.max_time)));
    }
    let (ext, resolution) = thanos_labels(&meta)?;
    if !RESOLUTIONS.contains(&resolution) {
        return Err(LoadError::Meta(format!("unsupported downsampling resolution {resolution} ms")));
    }
    Ok((meta, ext, resolution))
}

/// Postings lists or series read at once while verifying an index.
const VERIFY_BATCH: usize = 8192;

/// Reads every postings list and series entry of an index once through ranged GETs
/// (nothing cached, nothing written to disk), so corruption anywhere in it is found at
/// load rather than at query time, and checks each chunk reference points into a
/// segment file that exists.
pub async fn verify_index(index: &BucketIndex, segments: &[u64]) -> Result<(), LoadError> {
    index.check_all_postings(VERIFY_BATCH).await?;
    let all = index.postings(&[(String::new(), String::new())], false).await?.pop().unwrap_or_default();
    for batch in all.chunks(VERIFY_BATCH) {
        for (labels, refs) in index.series(batch, false).await? {
            for r in &refs {
                let seg = (r.chunk_ref >> 32) as usize;
                let off = r.chunk_ref & 0xffff_ffff;
                match segments.get(seg) {
                    Some(&size) if off >= norn_tsdb::chunks::SEGMENT_HEADER_SIZE as u64 && off < size => {}
                    _ => {
                        return Err(LoadError::Layout(format!(
                            "series {labels} references chunk {:#x} outside the {} segment file(s)",
                            r.chunk_ref,
                            segments.len()
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Outcome of one sync pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Blocks loaded in this pass.
    pub loaded: usize,
    /// Blocks served before and still.
    pub kept: usize,
    /// Blocks no longer served (gone from the bucket or marked for deletion).
    pub dropped: usize,
    /// Blocks that failed to load, with the reason (logged once per change of the block).
    pub failed: Vec<(Ulid, String)>,
    /// Blocks skipped because of a deletion mark.
    pub deletion_marked: usize,
    /// Blocks outside `--min-time`/`--max-time`.
    pub out_of_range: usize,
}

/// Loads blocks from the bucket into a [`BlockSet`].
#[derive(Debug)]
pub struct Syncer {
    pub bucket: Bucket,
    /// Local cache (`--data-dir`): `<ulid>/index-header` per served block.
    pub dir: PathBuf,
    /// Only blocks overlapping `[min_time, max_time]` are served.
    pub min_time: i64,
    pub max_time: i64,
    /// Blocks loaded at once.
    pub concurrency: usize,
    pub set: Arc<BlockSet>,
    pub metrics: Arc<Metrics>,
    /// Postings and series read for queries (`--index-cache-size`).
    pub cache: Arc<IndexCache>,
    /// Every how many postings offsets of a label name one is kept in memory
    /// (`--store.index-header-posting-offsets-in-mem-sampling`).
    pub postings_sampling: usize,
    /// Read every postings list and series of a new block once before serving it
    /// (`--store.verify-index-on-load`).
    pub verify: bool,
    /// Blocks that failed, with what the listing said then: retried only once that changes.
    failed: Mutex<HashMap<Ulid, (Listed, String)>>,
}

impl Syncer {
    /// A syncer filling `set`.
    pub fn new(
        bucket: Bucket,
        dir: PathBuf,
        (min_time, max_time): (i64, i64),
        concurrency: usize,
        set: Arc<BlockSet>,
        metrics: Arc<Metrics>,
    ) -> Syncer {
        Syncer {
            bucket,
            dir,
            min_time,
            max_time,
            concurrency: concurrency.max(1),
            set,
            cache: Arc::new(IndexCache::new(crate::cache::DEFAULT_SIZE, metrics.clone())),
            metrics,
            postings_sampling: indexheader::DEFAULT_POSTINGS_SAMPLING,
            // As `--store.verify-index-on-load`'s default.
            verify: false,
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// One pass: list the bucket, load what is new, drop what vanished. Fails only when
    /// the bucket cannot be listed; broken blocks are reported and skipped.
    pub async fn sync(&self) -> Result<SyncReport, norn_objstore::Error> {
        let listing = group_listing(&self.bucket.list_with_sizes("").await?);
        let current = self.set.snapshot();
        let by_id: HashMap<Ulid, Arc<StoreBlock>> = current.iter().map(|b| (b.id, b.clone())).collect();
        let mut report = SyncReport::default();
        let mut keep: Vec<Arc<StoreBlock>> = Vec::new();
        let mut todo: Vec<(Ulid, Listed)> = Vec::new();
        {
            let mut failed = self.failed.lock();
            failed.retain(|id, _| listing.contains_key(id));
            for (id, l) in &listing {
                if l.meta.is_none() {
                    continue; // upload in progress (meta.json goes last) or partial delete
                }
                if l.deletion_marked {
                    report.deletion_marked += 1;
                    continue;
                }
                if let Some(b) = by_id.get(id) {
                    keep.push(b.clone());
                    continue;
                }
                match failed.get(id) {
                    Some((was, why)) if was == l => report.failed.push((*id, why.clone())),
                    _ => todo.push((*id, l.clone())),
                }
            }
        }
        report.kept = keep.len();
        report.dropped = current.len() - keep.len();
        if !todo.is_empty() {
            tracing::info!(new = todo.len(), served = keep.len(), "loading new blocks from the bucket");
        }
        let total = todo.len();
        let mut done = 0usize;
        let mut loads = futures::stream::iter(todo.into_iter().map(|(id, l)| async move {
            let r = self.load(id, &l).await;
            (id, l, r)
        }))
        .buffer_unordered(self.concurrency);
        while let Some((id, l, r)) = loads.next().await {
            done += 1;
            self.metrics.block_loads.inc();
            match r {
                Ok(Some(b)) => {
                    tracing::info!(
                        block = %id,
                        min_time = b.meta.min_time,
                        max_time = b.meta.max_time,
                        series = b.meta.stats.num_series,
                        external_labels = %b.ext,
                        progress = format!("{done}/{total}"),
                        "block loaded"
                    );
                    report.loaded += 1;
                    keep.push(Arc::new(b));
                }
                Ok(None) => report.out_of_range += 1,
                Err(e) => {
                    self.metrics.block_load_failures.inc();
                    let why = e.to_string();
                    tracing::warn!(block = %id, reason = %why, progress = format!("{done}/{total}"), "skipping broken block");
                    let _ = std::fs::remove_dir_all(self.dir.join(id.to_string()));
                    self.failed.lock().insert(id, (l, why.clone()));
                    report.failed.push((id, why));
                }
            }
        }
        drop(loads);
        for b in current.iter().filter(|b| !keep.iter().any(|k| k.id == b.id)) {
            tracing::info!(block = %b.id, "block gone from the bucket or marked for deletion; dropped");
            // Its cached postings and series would otherwise sit in the cache until evicted.
            self.cache.remove_block(b.id);
        }
        self.metrics.block_drops.inc_by(report.dropped as u64);
        self.metrics.blocks_loaded.set(keep.len() as i64);
        let served: std::collections::HashSet<String> = keep.iter().map(|b| b.id.to_string()).collect();
        self.set.replace(keep);
        self.remove_stale_dirs(&served);
        Ok(report)
    }

    /// Removes cached block directories of blocks no longer served (after the set was
    /// swapped; open readers keep their mapping of a removed file).
    fn remove_stale_dirs(&self, served: &std::collections::HashSet<String>) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if Ulid::from_string(&name).is_ok()
                && !served.contains(&name)
                && e.path().is_dir()
                && let Err(err) = std::fs::remove_dir_all(e.path())
            {
                tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove cached block");
            }
        }
    }

    /// Loads one block; `None` when it lies outside the served time range.
    async fn load(&self, id: Ulid, l: &Listed) -> Result<Option<StoreBlock>, LoadError> {
        let raw = self.bucket.get(&format!("{id}/meta.json")).await?;
        let (meta, ext, resolution) = parse_meta(id, &raw)?;
        if meta.min_time > self.max_time || meta.max_time <= self.min_time {
            tracing::debug!(block = %id, "block outside --min-time/--max-time; not served");
            return Ok(None);
        }
        let Some(index_size) = l.index else { return Err(LoadError::Layout("no index in the bucket".into())) };
        let mut segments = Vec::with_capacity(l.segments.len());
        for (i, (seq, size)) in l.segments.iter().enumerate() {
            if *seq != i as u64 + 1 {
                return Err(LoadError::Layout(format!(
                    "chunk segment {} missing",
                    norn_tsdb::chunks::segment_name(i as u64 + 1)
                )));
            }
            segments.push(*size);
        }
        let dir = self.dir.join(id.to_string());
        let io = |op, p: &Path| {
            let path = p.display().to_string();
            move |source| LoadError::Io { op, path, source }
        };
        tokio::fs::create_dir_all(&dir).await.map_err(io("create dir", &dir))?;
        // A whole index cached by an earlier version is no longer used.
        for name in [norn_tsdb::index::INDEX_FILENAME, "index.tmp"] {
            let old = dir.join(name);
            if tokio::fs::try_exists(&old).await.unwrap_or(false) {
                tokio::fs::remove_file(&old).await.map_err(io("remove", &old))?;
            }
        }
        let path = dir.join(indexheader::FILENAME);
        let sampling = self.postings_sampling;
        let open = |path: PathBuf| async move {
            tokio::task::spawn_blocking(move || IndexHeader::open(&path, sampling))
                .await
                .map_err(|e| LoadError::Layout(format!("index-header task: {e}")))
        };
        // A header left from before a restart is reused once it checks out; a damaged
        // one is rebuilt.
        let existing = if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            match open(path.clone()).await? {
                // The header must belong to an index of this size: its postings lists end
                // before the index's TOC.
                Ok(h) if h.postings_end() > index_size.saturating_sub(norn_tsdb::index::TOC_SIZE as u64) => {
                    tracing::warn!(
                        block = %id,
                        postings_end = h.postings_end(),
                        index_size,
                        "index-header does not fit the index in the bucket; rebuilding it"
                    );
                    None
                }
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(block = %id, error = %e, "damaged index-header; rebuilding it");
                    None
                }
            }
        } else {
            None
        };
        let header = match existing {
            Some(h) => h,
            None => {
                let (gets, bytes) = indexheader::build(&self.bucket, &format!("{id}/index"), index_size, &path).await?;
                self.metrics.index_header_builds.inc();
                self.metrics.index_fetches.inc_by(gets);
                self.metrics.index_fetched_bytes.inc_by(bytes);
                open(path).await??
            }
        };
        let index =
            BucketIndex::new(id, header, self.bucket.clone(), index_size, self.cache.clone(), self.metrics.clone());
        if self.verify {
            verify_index(&index, &segments).await?;
        }
        Ok(Some(StoreBlock { id, meta, ext, index, segments, resolution }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use norn_block::ThanosMeta;
    use norn_tsdb::block::BlockWriter;
    use norn_tsdb::series::encode_float_chunks;
    use prometheus_client::registry::Registry;

    use super::*;

    /// Writes a block with `n` series into a temp dir and uploads it with external labels.
    pub(crate) async fn upload_block(bucket: &Bucket, mint: i64, n: usize, ext: &[(&str, &str)]) -> Ulid {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::new(dir.path(), mint, mint + 10_000).unwrap();
        for i in 0..n {
            let l = Labels::from_pairs([("__name__", "up"), ("i", &format!("{i:03}"))]);
            w.add_series(&l, &encode_float_chunks((0..10).map(|s| (mint + s * 1000, i as f64)), 120)).unwrap();
        }
        let meta = w.finish().unwrap();
        let t = ThanosMeta {
            labels: ext.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<BTreeMap<_, _>>(),
            source: "test".into(),
            resolution: 0,
        };
        norn_block::upload(bucket, &dir.path().join(meta.ulid.to_string()), &t).await.unwrap();
        meta.ulid
    }

    fn syncer(bucket: &Bucket, dir: &Path) -> Syncer {
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        Syncer::new(bucket.clone(), dir.to_path_buf(), (i64::MIN, i64::MAX), 2, Arc::default(), metrics)
    }

    #[tokio::test]
    async fn sync_loads_good_skips_broken_and_deleted_drops_vanished() {
        let bdir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let bucket = Bucket::filesystem(bdir.path()).unwrap();
        let good = upload_block(&bucket, 0, 3, &[("replica", "a")]).await;
        let bad_index = upload_block(&bucket, 20_000, 2, &[("replica", "a")]).await;
        let bad_meta = upload_block(&bucket, 40_000, 2, &[("replica", "a")]).await;
        let deleted = upload_block(&bucket, 60_000, 2, &[("replica", "a")]).await;
        let partial = upload_block(&bucket, 80_000, 2, &[("replica", "a")]).await;

        // Flip one byte in the middle of an index (a series entry or postings list).
        let key = format!("{bad_index}/index");
        let mut idx = bucket.get(&key).await.unwrap().to_vec();
        let mid = idx.len() / 2;
        idx[mid] ^= 0xff;
        bucket.put(&key, Bytes::from(idx)).await.unwrap();
        bucket.put(&format!("{bad_meta}/meta.json"), Bytes::from_static(b"{\"ulid\": 7")).await.unwrap();
        bucket.put(&format!("{deleted}/{DELETION_MARK}"), Bytes::from_static(b"{}")).await.unwrap();
        bucket.delete(&format!("{partial}/meta.json")).await.unwrap();
        bucket.put("debug/metas/x.json", Bytes::from_static(b"{}")).await.unwrap();

        let mut s = syncer(&bucket, cache.path());
        s.verify = true; // finds the damaged index at load
        let r = s.sync().await.unwrap();
        assert_eq!(r.loaded, 1, "{r:?}");
        assert_eq!(r.deletion_marked, 1);
        let mut failed: Vec<Ulid> = r.failed.iter().map(|f| f.0).collect();
        failed.sort();
        let mut want = vec![bad_index, bad_meta];
        want.sort();
        assert_eq!(failed, want, "{r:?}");
        assert!(r.failed.iter().any(|(id, why)| *id == bad_meta && why.contains("meta.json")), "{r:?}");
        let snap = s.set.snapshot();
        assert_eq!(snap.iter().map(|b| b.id).collect::<Vec<_>>(), vec![good]);
        assert_eq!(snap[0].ext, Labels::from_pairs([("replica", "a")]));
        assert!(cache.path().join(good.to_string()).join(indexheader::FILENAME).exists());
        assert!(!cache.path().join(good.to_string()).join("index").exists(), "the index stays in the bucket");
        assert!(!cache.path().join(bad_index.to_string()).exists(), "a broken block leaves no cache behind");

        // A second pass keeps what it has, does not retry unchanged broken blocks, and
        // drops a block that vanished.
        for k in bucket.list(&good.to_string()).await.unwrap() {
            bucket.delete(&k).await.unwrap();
        }
        let r = s.sync().await.unwrap();
        assert_eq!((r.loaded, r.kept, r.dropped), (0, 0, 1), "{r:?}");
        assert_eq!(r.failed.len(), 2);
        assert!(s.set.snapshot().is_empty());
        assert!(!cache.path().join(good.to_string()).exists());
        assert_eq!(s.metrics.block_load_failures.get(), 2, "unchanged broken blocks are not reloaded");

        // Completing the partial upload makes it appear.
        let r2 = upload_block(&bucket, 100_000, 1, &[("replica", "b")]).await;
        let r = s.sync().await.unwrap();
        assert_eq!(r.loaded, 1);
        assert_eq!(s.set.snapshot()[0].id, r2);
    }

    #[tokio::test]
    async fn time_range_flags_filter_blocks() {
        let bdir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let bucket = Bucket::filesystem(bdir.path()).unwrap();
        upload_block(&bucket, 0, 1, &[("a", "1")]).await;
        let late = upload_block(&bucket, 50_000, 1, &[("a", "1")]).await;
        let mut s = syncer(&bucket, cache.path());
        s.min_time = 20_000;
        let r = s.sync().await.unwrap();
        assert_eq!((r.loaded, r.out_of_range), (1, 1));
        assert_eq!(s.set.snapshot()[0].id, late);
    }

    #[tokio::test]
    async fn damaged_index_header_is_rebuilt_and_verification_can_be_turned_off() {
        let bdir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let bucket = Bucket::filesystem(bdir.path()).unwrap();
        let id = upload_block(&bucket, 0, 40, &[("replica", "a")]).await;
        let s = syncer(&bucket, cache.path());
        assert_eq!(s.sync().await.unwrap().loaded, 1);
        assert_eq!(s.metrics.index_header_builds.get(), 1);
        let hp = cache.path().join(id.to_string()).join(indexheader::FILENAME);
        let good = std::fs::read(&hp).unwrap();
        // A whole index left by an earlier version goes at the next load.
        let old_index = cache.path().join(id.to_string()).join("index");
        std::fs::write(&old_index, b"old").unwrap();

        // A header of a larger block's index (valid, but not this index's).
        let big = upload_block(&bucket, 0, 400, &[("replica", "a")]).await;
        let big_key = format!("{big}/index");
        let big_size = bucket.get(&big_key).await.unwrap().len() as u64;
        let other = cache.path().join("other-header");
        indexheader::build(&bucket, &big_key, big_size, &other).await.unwrap();
        let other = std::fs::read(&other).unwrap();
        bucket.put(&format!("{big}/{DELETION_MARK}"), Bytes::from_static(b"{}")).await.unwrap();

        // A restart reuses a good header and rebuilds a damaged one or one that does not
        // fit the index.
        for (damage, builds) in [(None, 0), (Some(20), 1), (Some(good.len() - 1), 1), (Some(usize::MAX), 1)] {
            let mut b = good.clone();
            match damage {
                Some(usize::MAX) => b = other.clone(),
                Some(i) => b[i] ^= 0xff,
                None => {}
            }
            std::fs::write(&hp, &b).unwrap();
            let s2 = syncer(&bucket, cache.path());
            let r = s2.sync().await.unwrap();
            assert_eq!(r.loaded, 1, "{damage:?}: {r:?}");
            assert_eq!(s2.metrics.index_header_builds.get(), builds, "{damage:?}");
            assert_eq!(std::fs::read(&hp).unwrap(), good, "{damage:?}");
            assert!(!old_index.exists());
        }

        // A series entry damaged in the bucket: skipped at load when verifying; served
        // (and failing only when read) when not, as Thanos does.
        let key = format!("{id}/index");
        let whole = bucket.get(&key).await.unwrap();
        let reader = norn_tsdb::index::IndexReader::from_bytes(Path::new(&key), whole.clone()).unwrap();
        let sid = reader.all_postings().unwrap()[20];
        let mut b = whole.to_vec();
        b[sid as usize * 16 + 4] ^= 0xff;
        bucket.put(&key, Bytes::from(b)).await.unwrap();
        std::fs::remove_dir_all(cache.path().join(id.to_string())).unwrap();
        let mut eager = syncer(&bucket, cache.path());
        eager.verify = true;
        let r = eager.sync().await.unwrap();
        assert_eq!(r.failed.len(), 1, "{r:?}");
        assert!(r.failed[0].1.contains("series checksum mismatch"), "{r:?}");
        let lazy = syncer(&bucket, cache.path());
        assert!(!lazy.verify, "lazy by default, as the flag");
        assert_eq!(lazy.sync().await.unwrap().loaded, 1);
        let blk = lazy.set.snapshot()[0].clone();
        assert!(blk.index.series(&[reader.all_postings().unwrap()[0]], true).await.is_ok());
        let e = blk.index.series(&[sid], true).await.unwrap_err().to_string();
        assert!(e.contains(&key) && e.contains("checksum"), "{e}");
    }

    #[test]
    fn listing_groups_by_block() {
        let id = Ulid::from_string("01HZZZZZZZZZZZZZZZZZZZZZZZ").unwrap();
        let keys: Vec<(String, u64)> = [
            (format!("{id}/chunks/000001"), 10),
            (format!("{id}/chunks/000002"), 20),
            (format!("{id}/index"), 30),
            (format!("{id}/meta.json"), 40),
            (format!("{id}/{DELETION_MARK}"), 2),
            ("not-a-block/meta.json".to_string(), 1),
            ("toplevel".to_string(), 1),
        ]
        .into_iter()
        .collect();
        let g = group_listing(&keys);
        assert_eq!(g.len(), 1);
        let l = &g[&id];
        assert_eq!((l.meta, l.index, l.deletion_marked), (Some(40), Some(30), true));
        assert_eq!(l.segments, BTreeMap::from([(1, 10), (2, 20)]));
    }

    #[test]
    fn meta_checks() {
        let id = Ulid::from_string("01HZZZZZZZZZZZZZZZZZZZZZZZ").unwrap();
        let meta = |extra: &str| {
            format!(
                r#"{{"ulid":"{id}","minTime":0,"maxTime":10,"stats":{{}},"compaction":{{"level":1}},"version":1{extra}}}"#
            )
        };
        let ok = parse_meta(id, meta(r#","thanos":{"labels":{"a":"1"},"downsample":{"resolution":0}}"#).as_bytes());
        assert_eq!(ok.unwrap().1, Labels::from_pairs([("a", "1")]));
        let five = parse_meta(id, meta(r#","thanos":{"downsample":{"resolution":300000}}"#).as_bytes());
        assert_eq!(five.unwrap().2, 300_000);
        assert!(parse_meta(id, meta("").as_bytes()).unwrap().1.is_empty());
        for (bad, why) in [
            (meta(r#","thanos":{"labels":{"a":1}}"#), "not a string"),
            (meta(r#","thanos":{"downsample":{"resolution":60000}}"#), "unsupported downsampling resolution 60000"),
            (meta(r#","thanos":[]"#), "not an object"),
            (r#"{"ulid":"01HZZZZZZZZZZZZZZZZZZZZZZY","version":1}"#.to_string(), "does not match"),
            (format!(r#"{{"ulid":"{id}","minTime":10,"maxTime":0,"version":1}}"#), "after maxTime"),
            ("\u{0}".to_string(), "meta.json"),
        ] {
            let e = parse_meta(id, bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
