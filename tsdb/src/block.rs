//! Persistent blocks: [`BlockWriter`] builds one in a temporary directory and renames
//! it into place; [`Block`] opens one (memory-mapped) and answers selections.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use norn_model::{Labels, Matcher};
use ulid::Ulid;

use crate::chunkenc::Encoding;
use crate::chunks::{ChunkMeta, ChunkReader, ChunkRef, ChunkWriter, RawChunkMeta, sync_dir};
use crate::index::{INDEX_FILENAME, IndexReader, IndexWriter};
use crate::meta::{BlockMeta, BlockMetaCompaction, META_FILENAME, read_meta, write_meta};
use crate::series::Series;
use crate::tombstones::{TOMBSTONES_FILENAME, Tombstones, read_tombstones, write_tombstones};
use crate::{Result, TsdbError};

/// Suffix of a block directory under construction.
pub const TMP_FOR_CREATION: &str = ".tmp-for-creation";
/// Name of the chunk segment directory inside a block.
pub const CHUNKS_DIR: &str = "chunks";

/// Writes a new block. Series must be added in ascending label order.
///
/// Chunks are streamed to the segment files as series arrive; labels and chunk
/// references are kept in memory until [`BlockWriter::finish`] writes the index, because
/// the index starts with the symbol table of all labels.
#[derive(Debug)]
pub struct BlockWriter {
    parent: PathBuf,
    tmp: PathBuf,
    meta: BlockMeta,
    chunks: Option<ChunkWriter>,
    series: Vec<(Labels, Vec<ChunkRef>)>,
    last: Option<Labels>,
    legacy_label_indices: bool,
    done: bool,
}

impl BlockWriter {
    /// Starts a block covering `[min_time, max_time)` under `parent`, with a new ULID,
    /// level 1 and itself as the only source.
    pub fn new(parent: &Path, min_time: i64, max_time: i64) -> Result<BlockWriter> {
        Self::with_segment_size(parent, min_time, max_time, crate::chunks::DEFAULT_SEGMENT_SIZE)
    }

    /// Like [`BlockWriter::new`] with a custom chunk segment size.
    pub fn with_segment_size(parent: &Path, min_time: i64, max_time: i64, segment_size: u64) -> Result<BlockWriter> {
        let ulid = Ulid::generate();
        fs::create_dir_all(parent).map_err(TsdbError::io("create dir", parent))?;
        let tmp = parent.join(format!("{ulid}{TMP_FOR_CREATION}"));
        fs::create_dir(&tmp).map_err(TsdbError::io("create dir", &tmp))?;
        let chunks = match ChunkWriter::with_segment_size(&tmp.join(CHUNKS_DIR), segment_size) {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        Ok(BlockWriter {
            parent: parent.to_path_buf(),
            tmp,
            meta: BlockMeta::new(ulid, min_time, max_time),
            chunks: Some(chunks),
            series: Vec::new(),
            last: None,
            legacy_label_indices: false,
            done: false,
        })
    }

    /// The new block's ULID.
    pub fn ulid(&self) -> Ulid {
        self.meta.ulid
    }

    /// Adds a series. Labels must be strictly greater than the previous series'; chunks
    /// sorted by time and non-overlapping. A series without chunks is skipped.
    pub fn add_series(&mut self, labels: &Labels, chunks: &[ChunkMeta]) -> Result<()> {
        if !self.check_series(labels, chunks.iter().map(|c| (c.min_time, c.max_time)))? {
            return Ok(());
        }
        let writer = self.chunks.as_mut().expect("chunk writer lives until finish");
        let refs = writer.write_chunks(chunks)?;
        let st = &mut self.meta.stats;
        st.num_series += 1;
        st.num_chunks += chunks.len() as u64;
        for c in chunks {
            let n = c.chunk.num_samples() as u64;
            st.num_samples += n;
            match c.chunk.encoding {
                Encoding::Xor => st.num_float_samples += n,
                Encoding::Histogram | Encoding::FloatHistogram => st.num_histogram_samples += n,
            }
        }
        self.push_series(labels, chunks.iter().map(|c| (c.min_time, c.max_time)), refs);
        Ok(())
    }

    /// Like [`BlockWriter::add_series`] for chunks given as encoding byte and data (the
    /// aggregate chunks of downsampled blocks); `num_samples` is what the series adds to
    /// the meta's sample count.
    pub fn add_series_raw(&mut self, labels: &Labels, chunks: &[RawChunkMeta], num_samples: u64) -> Result<()> {
        if !self.check_series(labels, chunks.iter().map(|c| (c.min_time, c.max_time)))? {
            return Ok(());
        }
        let writer = self.chunks.as_mut().expect("chunk writer lives until finish");
        let refs = writer.write_raw_chunks(chunks)?;
        let st = &mut self.meta.stats;
        st.num_series += 1;
        st.num_chunks += chunks.len() as u64;
        st.num_samples += num_samples;
        self.push_series(labels, chunks.iter().map(|c| (c.min_time, c.max_time)), refs);
        Ok(())
    }

    /// Records a written series: its labels and its chunks' time ranges with their references.
    fn push_series(&mut self, labels: &Labels, ranges: impl Iterator<Item = (i64, i64)>, refs: Vec<u64>) {
        let refs = ranges
            .zip(refs)
            .map(|((min_time, max_time), chunk_ref)| ChunkRef { min_time, max_time, chunk_ref })
            .collect();
        self.series.push((labels.clone(), refs));
    }

    /// Checks order and chunk ranges; false when the series has no chunks (skipped).
    fn check_series(&mut self, labels: &Labels, ranges: impl Iterator<Item = (i64, i64)>) -> Result<bool> {
        if let Some(prev) = &self.last
            && prev >= labels
        {
            return Err(TsdbError::InvalidArgument(format!("series {labels} added out of order after {prev}")));
        }
        if labels.is_empty() {
            return Err(TsdbError::InvalidArgument("series without labels".to_string()));
        }
        self.last = Some(labels.clone());
        let mut prev_max: Option<i64> = None;
        for (i, (mint, maxt)) in ranges.enumerate() {
            if mint > maxt || prev_max.is_some_and(|p| mint <= p) {
                return Err(TsdbError::InvalidArgument(format!(
                    "series {labels}: chunks must be sorted and non-overlapping, got [{mint}, {maxt}] at {i}"
                )));
            }
            prev_max = Some(maxt);
        }
        Ok(prev_max.is_some())
    }

    /// Replaces the compaction section (for blocks made by merging others).
    pub fn set_compaction(&mut self, c: BlockMetaCompaction) {
        self.meta.compaction = c;
    }

    /// Keys to write into `meta.json` besides Prometheus's (e.g. `"thanos"`).
    pub fn set_meta_extra(&mut self, extra: serde_json::Map<String, serde_json::Value>) {
        self.meta.extra = extra;
    }

    /// Write the index in the layout of Prometheus ≤ 3.6, with the legacy label index
    /// sections (byte-identical to what e.g. promtool 2.42 writes).
    pub fn set_legacy_label_indices(&mut self, on: bool) {
        self.legacy_label_indices = on;
    }

    /// Writes index, tombstones and meta, fsyncs, and renames the block into place.
    /// On error nothing of the temporary directory is left behind.
    pub fn finish(mut self) -> Result<BlockMeta> {
        let res = self.finish_inner();
        if res.is_err() {
            let _ = fs::remove_dir_all(&self.tmp);
        }
        self.done = true;
        res
    }

    fn finish_inner(&mut self) -> Result<BlockMeta> {
        if let Some(w) = self.chunks.take() {
            w.finish()?;
        }
        // Prometheus's head always contributes the empty string (the name and value of its
        // all-postings key) to the symbols of the blocks it writes; do the same so our
        // index bytes match.
        let symbols: HashSet<&str> = std::iter::once("")
            .chain(self.series.iter().flat_map(|(l, _)| l.iter().flat_map(|(n, v)| [n, v])))
            .collect();
        let mut symbols: Vec<&str> = symbols.into_iter().collect();
        symbols.sort_unstable();
        let mut iw = IndexWriter::new(&self.tmp.join(INDEX_FILENAME), symbols)?;
        iw.set_legacy_label_indices(self.legacy_label_indices);
        for (l, refs) in &self.series {
            iw.add_series(l, refs)?;
        }
        iw.finish()?;
        write_tombstones(&self.tmp, &Tombstones::new())?;
        write_meta(&self.tmp, &self.meta)?;
        sync_dir(&self.tmp)?;
        let dst = self.parent.join(self.meta.ulid.to_string());
        fs::rename(&self.tmp, &dst).map_err(TsdbError::io("rename", &self.tmp))?;
        sync_dir(&self.parent)?;
        Ok(self.meta.clone())
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        // An abandoned writer must not leave a half-written block behind.
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// An opened block: meta, memory-mapped index and chunks, and tombstones.
#[derive(Debug)]
pub struct Block {
    dir: PathBuf,
    meta: BlockMeta,
    index: IndexReader,
    chunks: ChunkReader,
    tombstones: Tombstones,
    size: u64,
}

fn file_size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

impl Block {
    /// Opens the block in `dir`, validating meta, index (TOC, symbol and postings table
    /// checksums), chunk segment headers and tombstones.
    pub fn open(dir: &Path) -> Result<Block> {
        let meta = read_meta(dir)?;
        let index = IndexReader::open(&dir.join(INDEX_FILENAME))?;
        let chunks = ChunkReader::open(&dir.join(CHUNKS_DIR))?;
        let tombstones = read_tombstones(dir)?;
        let size = index.size()
            + chunks.size()
            + file_size(&dir.join(META_FILENAME))
            + file_size(&dir.join(TOMBSTONES_FILENAME));
        Ok(Block { dir: dir.to_path_buf(), meta, index, chunks, tombstones, size })
    }

    /// The block's metadata.
    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    /// The block's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The block's index.
    pub fn index(&self) -> &IndexReader {
        &self.index
    }

    /// The block's chunk segments.
    pub fn chunks(&self) -> &ChunkReader {
        &self.chunks
    }

    /// The block's deleted intervals.
    pub fn tombstones(&self) -> &Tombstones {
        &self.tombstones
    }

    /// Bytes on disk (index, chunks, meta, tombstones).
    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    /// Marks `[mint, maxt]` of every series matching `matchers` deleted: the tombstones
    /// file and `numTombstones` in `meta.json` are rewritten (each atomically), as
    /// Prometheus's `Block.Delete` does. Data is removed for good at the next compaction.
    pub fn delete(&mut self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<()> {
        let ids = self.index.postings_for_matchers(matchers)?;
        let mut tombstones = self.tombstones.clone();
        let mut refs = Vec::new();
        for id in ids {
            self.index.series_into(id, &mut refs)?;
            // Like Prometheus, only series with data in the range get a tombstone.
            if refs.iter().any(|r| r.min_time <= maxt && mint <= r.max_time) {
                tombstones.add(id, (mint, maxt));
            }
        }
        if tombstones == self.tombstones {
            return Ok(());
        }
        write_tombstones(&self.dir, &tombstones)?;
        let mut meta = self.meta.clone();
        meta.stats.num_tombstones = tombstones.num_intervals();
        write_meta(&self.dir, &meta)?;
        self.tombstones = tombstones;
        self.meta = meta;
        Ok(())
    }

    /// Series matching all `matchers` with a chunk overlapping `[mint, maxt]`, in label
    /// order. Chunk data is shared with the mapping and decoded only when iterated;
    /// chunks wholly deleted are left out, other deletions travel in `Series::deleted`.
    pub fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>> {
        let ids = self.index.postings_for_matchers(matchers)?;
        self.series_for(&ids, mint, maxt)
    }

    /// Every series of the block with its chunks overlapping `[mint, maxt]`.
    pub fn select_all(&self, mint: i64, maxt: i64) -> Result<Vec<Series>> {
        let ids = self.index.all_postings()?;
        self.series_for(&ids, mint, maxt)
    }

    fn series_for(&self, ids: &[u32], mint: i64, maxt: i64) -> Result<Vec<Series>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut refs = Vec::new();
        for &id in ids {
            out.extend(self.series_by_id(id, mint, maxt, &mut refs)?);
        }
        Ok(out)
    }

    /// The series with index id `id` (from [`IndexReader::postings_for_matchers`]) with
    /// its chunks overlapping `[mint, maxt]`, as [`Block::select`] returns it; `None`
    /// when no chunk is left. `refs` is scratch space reused across calls.
    pub fn series_by_id(&self, id: u32, mint: i64, maxt: i64, refs: &mut Vec<ChunkRef>) -> Result<Option<Series>> {
        let labels = self.index.series_into(id, refs)?;
        let deleted = self.tombstones.get(id);
        let mut chunks = Vec::new();
        for r in refs.iter() {
            if r.max_time < mint || r.min_time > maxt {
                continue;
            }
            if deleted.iter().any(|&(a, b)| a <= r.min_time && r.max_time <= b) {
                continue;
            }
            let chunk = self.chunks.chunk(r.chunk_ref)?;
            chunks.push(ChunkMeta { min_time: r.min_time, max_time: r.max_time, chunk });
        }
        if chunks.is_empty() {
            return Ok(None);
        }
        Ok(Some(Series { labels, chunks, deleted: deleted.to_vec() }))
    }
}

/// Opens every ULID-named subdirectory of `dir`. Blocks that fail to open are returned
/// with their error so the caller can log and skip them; the rest are sorted by min time.
pub fn open_blocks(dir: &Path) -> (Vec<Block>, Vec<(PathBuf, TsdbError)>) {
    let mut blocks = Vec::new();
    let mut errors = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return (blocks, vec![(dir.to_path_buf(), TsdbError::Io { op: "read dir", path: dir.into(), source: e })]);
        }
    };
    for e in entries {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                errors.push((dir.to_path_buf(), TsdbError::Io { op: "read dir", path: dir.into(), source: err }));
                continue;
            }
        };
        let path = e.path();
        let is_block = e.file_name().to_str().is_some_and(|n| n.len() == 26 && Ulid::from_string(n).is_ok());
        if !is_block || !path.is_dir() {
            continue;
        }
        match Block::open(&path) {
            Ok(b) => blocks.push(b),
            Err(err) => errors.push((path, err)),
        }
    }
    blocks.sort_by_key(|b| (b.meta.min_time, b.meta.ulid));
    (blocks, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkenc::Sample;
    use crate::series::encode_float_chunks;
    use norn_model::MatchType;
    use proptest::prelude::*;

    pub(crate) fn float_samples(s: &Series, mint: i64, maxt: i64) -> Vec<(i64, f64)> {
        s.samples(mint, maxt)
            .map(|r| match r.unwrap() {
                Sample::Float(t, v) => (t, v),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn write_block(parent: &Path, series: &[(Labels, Vec<(i64, f64)>)]) -> BlockMeta {
        let mint = series.iter().flat_map(|(_, s)| s.first()).map(|s| s.0).min().unwrap_or(0);
        let maxt = series.iter().flat_map(|(_, s)| s.last()).map(|s| s.0).max().unwrap_or(0);
        let mut w = BlockWriter::new(parent, mint, maxt + 1).unwrap();
        let mut sorted: Vec<_> = series.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (l, s) in sorted {
            w.add_series(l, &encode_float_chunks(s.iter().copied(), 120)).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn write_open_select() {
        let dir = tempfile::tempdir().unwrap();
        let s = |job: &str, inst: &str| Labels::from_pairs([("__name__", "up"), ("job", job), ("instance", inst)]);
        let data = vec![
            (s("api", "a"), (0..300).map(|i| (i * 10, i as f64)).collect::<Vec<_>>()),
            (s("api", "b"), vec![(5, 1.0)]),
            (s("db", "a"), vec![(1, 2.0), (2, 3.0)]),
        ];
        let meta = write_block(dir.path(), &data);
        assert_eq!(meta.stats.num_series, 3);
        assert_eq!(meta.stats.num_samples, 303);
        assert_eq!(meta.stats.num_float_samples, 303);
        assert_eq!(meta.stats.num_chunks, 5);
        assert_eq!((meta.min_time, meta.max_time), (0, 2991));
        let bdir = dir.path().join(meta.ulid.to_string());
        assert!(!dir.path().join(format!("{}{TMP_FOR_CREATION}", meta.ulid)).exists());
        assert_eq!(std::fs::read(bdir.join("tombstones")).unwrap().len(), 9);
        let b = Block::open(&bdir).unwrap();
        assert_eq!(b.meta(), &meta);
        assert!(b.size_bytes() > 0);
        let got = b.select(&[Matcher::equal("job", "api")], i64::MIN, i64::MAX).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].labels, data[0].0);
        assert_eq!(float_samples(&got[0], i64::MIN, i64::MAX), data[0].1);
        // Time filtering drops chunks outside the range and series left without chunks.
        let got = b.select(&[Matcher::new(MatchType::Regex, "__name__", "u.").unwrap()], 1300, 1400).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].chunks.len(), 1);
        assert_eq!(float_samples(&got[0], 1300, 1400).len(), 11);
        let (blocks, errs) = open_blocks(dir.path());
        assert_eq!(blocks.len(), 1);
        assert!(errs.is_empty());
    }

    #[test]
    fn blocks_are_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Block>();
        assert_send_sync::<Series>();
        fn assert_send<T: Send>() {}
        assert_send::<BlockWriter>();
    }

    #[test]
    fn tombstones_are_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let l = Labels::from_pairs([("a", "1")]);
        let l2 = Labels::from_pairs([("a", "2")]);
        let meta = write_block(
            dir.path(),
            &[(l.clone(), (0..10).map(|i| (i, i as f64)).collect()), (l2.clone(), vec![(1, 1.0), (2, 2.0)])],
        );
        let bdir = dir.path().join(meta.ulid.to_string());
        let b = Block::open(&bdir).unwrap();
        let ids = b.index().all_postings().unwrap();
        let mut t = Tombstones::new();
        t.add(ids[0], (2, 4));
        t.add(ids[1], (0, 100));
        write_tombstones(&bdir, &t).unwrap();
        let b = Block::open(&bdir).unwrap();
        let got = b.select_all(i64::MIN, i64::MAX).unwrap();
        assert_eq!(got.len(), 1, "fully deleted series disappear");
        assert_eq!(
            float_samples(&got[0], i64::MIN, i64::MAX).iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![0, 1, 5, 6, 7, 8, 9]
        );
    }

    #[test]
    fn delete_writes_tombstones_and_meta() {
        let dir = tempfile::tempdir().unwrap();
        let l = |v: &str| Labels::from_pairs([("a", v)]);
        let meta =
            write_block(dir.path(), &[(l("1"), (0..10).map(|i| (i, i as f64)).collect()), (l("2"), vec![(100, 1.0)])]);
        let bdir = dir.path().join(meta.ulid.to_string());
        let mut b = Block::open(&bdir).unwrap();
        b.delete(&[Matcher::new(MatchType::Regex, "a", ".+").unwrap()], 3, 5).unwrap();
        assert_eq!(b.meta().stats.num_tombstones, 1, "series 2 has no data in [3, 5]");
        b.delete(&[Matcher::equal("a", "1")], 6, 6).unwrap();
        let b = Block::open(&bdir).unwrap();
        assert_eq!(b.meta().stats.num_tombstones, 1, "adjacent intervals coalesce");
        let got = b.select(&[Matcher::equal("a", "1")], i64::MIN, i64::MAX).unwrap();
        let ts: Vec<i64> = float_samples(&got[0], i64::MIN, i64::MAX).iter().map(|s| s.0).collect();
        assert_eq!(ts, vec![0, 1, 2, 7, 8, 9]);
    }

    #[test]
    fn writer_errors_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = encode_float_chunks([(1, 1.0)], 120);
        {
            let mut w = BlockWriter::new(dir.path(), 0, 10).unwrap();
            w.add_series(&Labels::from_pairs([("a", "2")]), &chunks).unwrap();
            assert!(w.add_series(&Labels::from_pairs([("a", "1")]), &chunks).is_err());
            assert!(w.add_series(&Labels::empty(), &chunks).is_err());
            let mut overlapping = chunks.clone();
            overlapping.extend(chunks.clone());
            assert!(w.add_series(&Labels::from_pairs([("a", "3")]), &overlapping).is_err());
            // Dropped without finish.
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A series without chunks is skipped; an empty block is still valid.
        let mut w = BlockWriter::new(dir.path(), 0, 10).unwrap();
        w.add_series(&Labels::from_pairs([("a", "1")]), &[]).unwrap();
        let meta = w.finish().unwrap();
        assert_eq!(meta.stats.num_series, 0);
        let b = Block::open(&dir.path().join(meta.ulid.to_string())).unwrap();
        assert!(b.select_all(i64::MIN, i64::MAX).unwrap().is_empty());
        assert!(b.index().label_names().is_empty());
    }

    #[test]
    fn corrupt_blocks_are_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<(Labels, Vec<(i64, f64)>)> = (0..20)
            .map(|i| {
                (
                    Labels::from_pairs([("i", format!("{i:02}").as_str())]),
                    (0..30).map(|t| (t, t as f64 * 1.5)).collect(),
                )
            })
            .collect();
        let meta = write_block(dir.path(), &data);
        let bdir = dir.path().join(meta.ulid.to_string());
        let walk = |bdir: &Path| -> Result<usize> {
            let b = Block::open(bdir)?;
            let mut n = 0;
            for s in b.select_all(i64::MIN, i64::MAX)? {
                for smp in s.samples(i64::MIN, i64::MAX) {
                    smp?;
                    n += 1;
                }
            }
            Ok(n)
        };
        assert_eq!(walk(&bdir).unwrap(), 600);
        for file in ["index", "chunks/000001", "meta.json", "tombstones"] {
            let p = bdir.join(file);
            let orig = std::fs::read(&p).unwrap();
            let step = (orig.len() / 97).max(1);
            let mut detected = 0;
            for i in (0..orig.len()).step_by(step) {
                let mut b = orig.clone();
                b[i] ^= 0xA5;
                std::fs::write(&p, &b).unwrap();
                match walk(&bdir) {
                    Ok(_) => {}
                    Err(TsdbError::Corrupt { path, .. }) => {
                        assert!(path.starts_with(&bdir), "{path:?}");
                        detected += 1;
                    }
                    Err(TsdbError::Chunk { .. }) => detected += 1,
                    Err(e) => panic!("{file} byte {i}: unexpected {e}"),
                }
            }
            assert!(detected > 0, "{file}: no corruption detected");
            std::fs::write(&p, &orig).unwrap();
        }
        // The error names the file and the offset.
        let p = bdir.join("chunks/000001");
        let mut b = std::fs::read(&p).unwrap();
        b[20] ^= 0xff;
        std::fs::write(&p, &b).unwrap();
        let e = walk(&bdir).unwrap_err().to_string();
        assert!(e.contains("chunks/000001") && e.contains("offset"), "{e}");
        // A broken block is skipped by open_blocks with its error.
        let (blocks, errs) = open_blocks(dir.path());
        assert_eq!(blocks.len(), 1);
        assert!(errs.is_empty());
        std::fs::write(bdir.join("meta.json"), b"{").unwrap();
        let (blocks, errs) = open_blocks(dir.path());
        assert!(blocks.is_empty());
        assert_eq!(errs.len(), 1);
        assert!(errs[0].1.to_string().contains("meta.json"));
    }

    fn label_sets() -> impl Strategy<Value = Vec<Labels>> {
        proptest::collection::btree_set(proptest::collection::btree_map("[a-c_]{1,3}", "[x-z0-9]{1,4}", 1..4), 1..30)
            .prop_map(|sets| {
                let mut v: Vec<Labels> = sets.into_iter().map(Labels::from_pairs).collect();
                v.sort();
                v.dedup();
                v
            })
    }

    fn sample_lists(n: usize) -> impl Strategy<Value = Vec<Vec<(i64, f64)>>> {
        proptest::collection::vec(
            (
                -1_000_000i64..1_000_000,
                proptest::collection::vec((1i64..100_000, prop_oneof![any::<f64>(), -1e6f64..1e6]), 1..400),
            ),
            n,
        )
        .prop_map(|lists| {
            lists
                .into_iter()
                .map(|(start, deltas)| {
                    let mut t = start;
                    deltas
                        .into_iter()
                        .map(|(d, v)| {
                            t += d;
                            (t, v)
                        })
                        .collect()
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn round_trip(data in label_sets().prop_flat_map(|ls| { let n = ls.len(); (Just(ls), sample_lists(n)) })) {
            let (labels, samples) = data;
            let dir = tempfile::tempdir().unwrap();
            let series: Vec<(Labels, Vec<(i64, f64)>)> = labels.into_iter().zip(samples).collect();
            // Small segments so several chunk files are exercised.
            let mut w = BlockWriter::with_segment_size(dir.path(), i64::MIN, i64::MAX, 4096).unwrap();
            for (l, s) in &series {
                w.add_series(l, &encode_float_chunks(s.iter().copied(), 120)).unwrap();
            }
            let meta = w.finish().unwrap();
            let b = Block::open(&dir.path().join(meta.ulid.to_string())).unwrap();
            let got = b.select_all(i64::MIN, i64::MAX).unwrap();
            prop_assert_eq!(got.len(), series.len());
            for (g, (l, s)) in got.iter().zip(&series) {
                prop_assert_eq!(&g.labels, l);
                let gs = float_samples(g, i64::MIN, i64::MAX);
                prop_assert_eq!(gs.len(), s.len());
                for (a, e) in gs.iter().zip(s) {
                    prop_assert_eq!(a.0, e.0);
                    prop_assert_eq!(a.1.to_bits(), e.1.to_bits());
                }
            }
            prop_assert_eq!(meta.stats.num_samples, series.iter().map(|s| s.1.len() as u64).sum::<u64>());
            // Every label value lookup finds exactly the series carrying it.
            for name in b.index().label_names() {
                for value in b.index().label_values(name) {
                    let sel = b.select(&[Matcher::equal(name, value)], i64::MIN, i64::MAX).unwrap();
                    let want = series.iter().filter(|(l, _)| l.get(name) == Some(value)).count();
                    prop_assert_eq!(sel.len(), want);
                }
            }
        }
    }
}

/// Interop with the reference promtool (2.42 here): we read a block it writes and it
/// reads a block we write, compared sample by sample with `promtool tsdb dump`.
#[cfg(test)]
mod promtool_interop {
    use super::*;
    use crate::chunkenc::Sample;
    use crate::series::encode_float_chunks;
    use norn_model::format::go_format_g;
    use std::process::Command;

    fn promtool() -> Option<&'static str> {
        let ok = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("promtool not found; skipping interop test");
        }
        ok.then_some("promtool")
    }

    /// `promtool tsdb dump` lines for every sample of every series of `blocks`.
    fn our_dump(blocks: &[Block]) -> Vec<String> {
        let sets = blocks.iter().map(|b| b.select_all(i64::MIN, i64::MAX).unwrap()).collect();
        let mut out = Vec::new();
        for s in crate::series::merge_series(sets) {
            for smp in s.samples(i64::MIN, i64::MAX) {
                match smp.unwrap() {
                    Sample::Float(t, v) => out.push(format!("{} {} {t}", s.labels, go_format_g(v))),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        out
    }

    fn promtool_dump(tool: &str, data_dir: &Path) -> Vec<String> {
        // `tsdb dump` opens the directory as a database and wants a WAL directory.
        fs::create_dir_all(data_dir.join("wal")).unwrap();
        let o = Command::new(tool).args(["tsdb", "dump"]).arg(data_dir).output().unwrap();
        assert!(o.status.success(), "promtool dump failed: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().lines().map(str::to_string).collect()
    }

    fn series_data() -> Vec<(Labels, Vec<(i64, f64)>)> {
        let base = 1_700_000_000_000i64;
        vec![
            (
                Labels::from_pairs([("__name__", "http_requests_total"), ("code", "200"), ("path", "/a\"b\\c")]),
                (0..500).map(|i| (base + i * 15_000, (i * i) as f64 + 0.5)).collect(),
            ),
            (Labels::from_pairs([("__name__", "temp"), ("room", "a")]), vec![(base, -0.001), (base + 60_000, 1e21)]),
            (Labels::from_pairs([("__name__", "temp"), ("room", "b")]), vec![(base + 1000, 123456789.0)]),
        ]
    }

    #[test]
    fn read_promtool_block_and_promtool_reads_ours() {
        let Some(tool) = promtool() else { return };
        let dir = tempfile::tempdir().unwrap();
        let data = series_data();
        // OpenMetrics input: seconds timestamps, series grouped per metric family.
        let mut om = String::new();
        for (l, samples) in &data {
            let name = l.get("__name__").unwrap();
            let rest: Vec<String> = l
                .iter()
                .filter(|(n, _)| *n != "__name__")
                .map(|(n, v)| format!("{n}={}", norn_model::format::go_quote(v)))
                .collect();
            for (t, v) in samples {
                om.push_str(&format!(
                    "{name}{{{}}} {} {}.{:03}\n",
                    rest.join(","),
                    go_format_g(*v),
                    t / 1000,
                    t % 1000
                ));
            }
        }
        om.push_str("# EOF\n");
        let om_path = dir.path().join("in.om");
        fs::write(&om_path, om).unwrap();
        let theirs = dir.path().join("theirs");
        let o = Command::new(tool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&om_path)
            .arg(&theirs)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

        let (blocks, errs) = open_blocks(&theirs);
        assert!(errs.is_empty(), "{errs:?}");
        // 500 samples 15 s apart span two 2-hour block ranges.
        assert_eq!(blocks.len(), 2);
        // 2.42 writes the legacy label index sections; the reader must skip them.
        assert_ne!(blocks[0].index().toc().label_indices, blocks[0].index().toc().postings);
        let want = promtool_dump(tool, &theirs);
        assert_eq!(want.len(), 503);
        assert_eq!(our_dump(&blocks), want);
        assert_eq!(blocks.iter().map(|b| b.meta().stats.num_samples).sum::<u64>(), 503);
        assert_eq!(blocks[0].index().label_values("__name__"), vec!["http_requests_total", "temp"]);
        for b in &blocks {
            // The meta.json we would write is byte-identical to promtool's.
            assert_eq!(b.meta().to_json().as_bytes(), &fs::read(b.dir().join("meta.json")).unwrap()[..]);
        }

        // Rewriting promtool's blocks chunk by chunk gives byte-identical index (in the
        // legacy layout 2.42 writes) and chunk files.
        for b in &blocks {
            let mut w = BlockWriter::new(&dir.path().join("rewrite"), b.meta().min_time, b.meta().max_time).unwrap();
            w.set_legacy_label_indices(true);
            for s in b.select_all(i64::MIN, i64::MAX).unwrap() {
                w.add_series(&s.labels, &s.chunks).unwrap();
            }
            let m = w.finish().unwrap();
            let nd = dir.path().join("rewrite").join(m.ulid.to_string());
            for f in ["index", "chunks/000001", "tombstones"] {
                assert!(fs::read(nd.join(f)).unwrap() == fs::read(b.dir().join(f)).unwrap(), "{f} differs");
            }
            // 2.42 predates numFloatSamples; compare what it does count.
            let (a, e) = (m.stats, b.meta().stats);
            assert_eq!((a.num_samples, a.num_series, a.num_chunks), (e.num_samples, e.num_series, e.num_chunks));
            assert_eq!((m.min_time, m.max_time), (b.meta().min_time, b.meta().max_time));
        }

        // Now the other way round.
        let ours = dir.path().join("ours");
        let mint = data.iter().map(|d| d.1[0].0).min().unwrap();
        let maxt = data.iter().map(|d| d.1[d.1.len() - 1].0).max().unwrap();
        let mut w = BlockWriter::new(&ours, mint, maxt + 1).unwrap();
        for (l, s) in &data {
            w.add_series(l, &encode_float_chunks(s.iter().copied(), 120)).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(promtool_dump(tool, &ours), want);
        // `analyze` walks label values and postings of our index.
        let o = Command::new(tool).args(["tsdb", "analyze"]).arg(&ours).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(text.contains("Series: 3") && text.contains("Label names: 4"), "{text}");
    }
}
