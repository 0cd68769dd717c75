//! Persistent blocks: [`BlockWriter`] builds one in a temporary directory and renames
//! it into place; [`Block`] opens one (memory-mapped) and answers selections.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use norn_model::{Labels, Matcher};
use ulid::Ulid;

use crate::chunkenc::Encoding;
use crate::chunks::{ChunkMeta, ChunkReader, ChunkRef, ChunkWriter, sync_dir};
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
        if let Some(prev) = &self.last
            && prev >= labels
        {
            return Err(TsdbError::InvalidArgument(format!("series {labels} added out of order after {prev}")));
        }
        if labels.is_empty() {
            return Err(TsdbError::InvalidArgument("series without labels".to_string()));
        }
        self.last = Some(labels.clone());
        if chunks.is_empty() {
            return Ok(());
        }
        for (i, c) in chunks.iter().enumerate() {
            if c.min_time > c.max_time || (i > 0 && c.min_time <= chunks[i - 1].max_time) {
                return Err(TsdbError::InvalidArgument(format!(
                    "series {labels}: chunks must be sorted and non-overlapping, got [{}, {}] at {i}",
                    c.min_time, c.max_time
                )));
            }
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
        let refs = chunks
            .iter()
            .zip(refs)
            .map(|(c, r)| ChunkRef { min_time: c.min_time, max_time: c.max_time, chunk_ref: r })
            .collect();
        self.series.push((labels.clone(), refs));
        Ok(())
    }

    /// Replaces the compaction section (for blocks made by merging others).
    pub fn set_compaction(&mut self, c: BlockMetaCompaction) {
        self.meta.compaction = c;
    }

    /// Keys to write into `meta.json` besides Prometheus's (e.g. `"thanos"`).
    pub fn set_meta_extra(&mut self, extra: serde_json::Map<String, serde_json::Value>) {
        self.meta.extra = extra;
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
        let symbols: BTreeSet<&str> =
            self.series.iter().flat_map(|(l, _)| l.iter().flat_map(|(n, v)| [n, v])).collect();
        let mut iw = IndexWriter::new(&self.tmp.join(INDEX_FILENAME), symbols)?;
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
            let labels = self.index.series_into(id, &mut refs)?;
            let deleted = self.tombstones.get(id);
            let mut chunks = Vec::new();
            for r in &refs {
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
                continue;
            }
            out.push(Series { labels, chunks, deleted: deleted.to_vec() });
        }
        Ok(out)
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
