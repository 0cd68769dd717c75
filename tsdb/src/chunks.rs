//! Block chunk segment files (`<block>/chunks/000001`, …; spec §4).
//!
//! A segment is an 8-byte header followed by records
//! `uvarint len | encoding byte | data | CRC32C(encoding ‖ data)`. A chunk is referenced
//! from the index by `(0-based segment position << 32) | record offset`.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::chunkenc::{Chunk, Encoding};
use crate::encoding::{Decbuf, crc32c, put_uvarint};
use crate::mmap::map_file;
use crate::{Result, TsdbError};

/// Magic number at the start of every block chunk segment.
pub const SEGMENT_MAGIC: u32 = 0x85BD_40DD;
/// Segment format version.
pub const SEGMENT_VERSION: u8 = 1;
/// Size of the segment header: magic, version, 3 bytes padding.
pub const SEGMENT_HEADER_SIZE: usize = 8;
/// Largest size of a record's length field (a uvarint of a 32-bit length).
const MAX_LEN_FIELD_SIZE: usize = 5;
/// Prometheus's default maximum segment size (512 MiB).
pub const DEFAULT_SEGMENT_SIZE: u64 = 512 * 1024 * 1024;

/// A chunk with the time range of its samples (closed: `[min_time, max_time]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkMeta {
    /// Timestamp of the first sample.
    pub min_time: i64,
    /// Timestamp of the last sample.
    pub max_time: i64,
    /// The encoded chunk.
    pub chunk: Chunk,
}

/// A chunk given by its encoding byte and data, for encodings without a decoder here
/// (Thanos's aggregate chunks, 0xFF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChunkMeta {
    /// Timestamp of the first sample.
    pub min_time: i64,
    /// Timestamp of the last sample.
    pub max_time: i64,
    /// The segment-file encoding byte.
    pub encoding: u8,
    /// The chunk data.
    pub data: Bytes,
}

/// A chunk's place in the segment files as the index records it, without the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// Timestamp of the first sample.
    pub min_time: i64,
    /// Timestamp of the last sample.
    pub max_time: i64,
    /// `(segment position << 32) | offset`.
    pub chunk_ref: u64,
}

/// The name of the segment file with 1-based sequence number `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:06}")
}

/// Writes chunk segment files into a directory, cutting a new segment when a series'
/// chunks would not fit into the current one.
#[derive(Debug)]
pub struct ChunkWriter {
    dir: PathBuf,
    segment_size: u64,
    /// Sequence number of the open segment (1-based, as in its name); 0 before the first.
    seq: u64,
    cur: Option<BufWriter<File>>,
    cur_path: PathBuf,
    /// Bytes written to the open segment, header included.
    cur_len: u64,
    scratch: Vec<u8>,
}

impl ChunkWriter {
    /// A writer creating segments in `dir` (created if missing) with the default size.
    pub fn new(dir: &Path) -> Result<Self> {
        Self::with_segment_size(dir, DEFAULT_SEGMENT_SIZE)
    }

    /// A writer with a custom maximum segment size (tests use small ones).
    pub fn with_segment_size(dir: &Path, segment_size: u64) -> Result<Self> {
        fs::create_dir_all(dir).map_err(TsdbError::io("create dir", dir))?;
        Ok(ChunkWriter {
            dir: dir.to_path_buf(),
            segment_size,
            seq: 0,
            cur: None,
            cur_path: PathBuf::new(),
            cur_len: 0,
            scratch: Vec::new(),
        })
    }

    /// The record size Prometheus assumes when planning segments: it counts the length
    /// field at its maximum (5 bytes) rather than its real size.
    fn planned_size(data_len: usize) -> u64 {
        (MAX_LEN_FIELD_SIZE + 1 + data_len + 4) as u64
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some(w) = self.cur.take() {
            let f = w.into_inner().map_err(|e| TsdbError::Io {
                op: "flush",
                path: self.cur_path.clone(),
                source: e.into_error(),
            })?;
            f.sync_all().map_err(TsdbError::io("fsync", &self.cur_path))?;
        }
        Ok(())
    }

    fn cut(&mut self) -> Result<()> {
        self.close_current()?;
        self.seq += 1;
        let path = self.dir.join(segment_name(self.seq));
        let f = File::create(&path).map_err(TsdbError::io("create", &path))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut hdr = [0u8; SEGMENT_HEADER_SIZE];
        hdr[..4].copy_from_slice(&SEGMENT_MAGIC.to_be_bytes());
        hdr[4] = SEGMENT_VERSION;
        w.write_all(&hdr).map_err(TsdbError::io("write", &path))?;
        self.cur = Some(w);
        self.cur_path = path;
        self.cur_len = SEGMENT_HEADER_SIZE as u64;
        Ok(())
    }

    /// Writes the chunks of one series and returns their references, in order.
    ///
    /// Segments are cut exactly where Prometheus cuts them (so multi-segment blocks are
    /// byte-identical): the chunks fill what the open segment has left, then continue in
    /// fresh segments, each taking as many as fit; a chunk bigger than a segment gets one
    /// of its own.
    pub fn write_chunks(&mut self, chunks: &[ChunkMeta]) -> Result<Vec<u64>> {
        let recs: Vec<(u8, &[u8])> = chunks.iter().map(|c| (c.chunk.encoding as u8, &c.chunk.data[..])).collect();
        self.write_records(&recs)
    }

    /// Like [`ChunkWriter::write_chunks`] for chunks given as encoding byte and data, so
    /// encodings this crate does not decode (Thanos's aggregate chunks, 0xFF) can be written.
    pub fn write_raw_chunks(&mut self, chunks: &[RawChunkMeta]) -> Result<Vec<u64>> {
        let recs: Vec<(u8, &[u8])> = chunks.iter().map(|c| (c.encoding, &c.data[..])).collect();
        self.write_records(&recs)
    }

    fn write_records(&mut self, chunks: &[(u8, &[u8])]) -> Result<Vec<u64>> {
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let header = SEGMENT_HEADER_SIZE as u64;
        // The first batch may stay empty when the open segment cannot take even one chunk.
        let mut batches: Vec<std::ops::Range<usize>> = Vec::with_capacity(2);
        batches.push(0..0);
        let mut batch_size = 0u64;
        let mut filling_open_segment = self.cur.is_some() && self.cur_len > header;
        for (i, c) in chunks.iter().enumerate() {
            let sz = Self::planned_size(c.1.len());
            batch_size += sz;
            let cut = if filling_open_segment {
                batch_size + self.cur_len > self.segment_size
            } else {
                i != 0 && batch_size + header > self.segment_size
            };
            if cut {
                filling_open_segment = false;
                batches.push(i..i);
                batch_size = sz;
            }
            if let Some(b) = batches.last_mut() {
                b.end = i + 1;
            }
        }
        if self.cur.is_none() {
            self.cut()?;
        }
        let mut refs = Vec::with_capacity(chunks.len());
        let last = batches.len() - 1;
        for (bi, b) in batches.into_iter().enumerate() {
            for &(enc, data) in &chunks[b] {
                refs.push(self.write_one(enc, data)?);
            }
            if bi < last {
                self.cut()?;
            }
        }
        Ok(refs)
    }

    fn write_one(&mut self, encoding: u8, data: &[u8]) -> Result<u64> {
        let offset = self.cur_len;
        if offset > u64::from(u32::MAX) {
            return Err(TsdbError::InvalidArgument(format!("chunk segment offset {offset} exceeds 32 bits")));
        }
        self.scratch.clear();
        put_uvarint(&mut self.scratch, data.len() as u64);
        self.scratch.push(encoding);
        let crc_start = self.scratch.len() - 1;
        self.scratch.extend_from_slice(data);
        let crc = crc32c(&self.scratch[crc_start..]);
        self.scratch.extend_from_slice(&crc.to_be_bytes());
        let w = self.cur.as_mut().expect("a segment is open after cut");
        w.write_all(&self.scratch).map_err(TsdbError::io("write", &self.cur_path))?;
        self.cur_len += self.scratch.len() as u64;
        Ok(((self.seq - 1) << 32) | offset)
    }

    /// Flushes and fsyncs the last segment and the directory.
    pub fn finish(mut self) -> Result<()> {
        self.close_current()?;
        sync_dir(&self.dir)
    }
}

/// Fsyncs a directory so renames and new entries in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(TsdbError::io("open dir", dir))?;
    d.sync_all().map_err(TsdbError::io("fsync dir", dir))
}

/// Reads chunks from the memory-mapped segment files of a block.
#[derive(Debug)]
pub struct ChunkReader {
    segments: Vec<(PathBuf, Bytes)>,
    size: u64,
}

impl ChunkReader {
    /// Maps every numerically named file in `dir` (in numeric order) and checks its
    /// header. A missing directory is an error.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut seqs = Vec::new();
        for e in fs::read_dir(dir).map_err(TsdbError::io("read dir", dir))? {
            let e = e.map_err(TsdbError::io("read dir", dir))?;
            let name = e.file_name();
            if let Some(seq) = name.to_str().and_then(|s| s.parse::<u64>().ok()) {
                seqs.push((seq, e.path()));
            }
        }
        seqs.sort();
        let mut segments = Vec::with_capacity(seqs.len());
        let mut size = 0;
        for (_, path) in seqs {
            let data = map_file(&path)?;
            let mut d = Decbuf::new(&data);
            let magic = d.be32().map_err(|e| TsdbError::corrupt(&path, e))?;
            if magic != SEGMENT_MAGIC {
                return Err(TsdbError::corrupt_at(&path, 0, format!("invalid chunk segment magic {magic:#010x}")));
            }
            let version = d.u8().map_err(|e| TsdbError::corrupt(&path, e))?;
            if version != SEGMENT_VERSION {
                return Err(TsdbError::corrupt_at(&path, 4, format!("unsupported chunk segment version {version}")));
            }
            d.skip(3).map_err(|e| TsdbError::corrupt(&path, e))?;
            size += data.len() as u64;
            segments.push((path, data));
        }
        Ok(ChunkReader { segments, size })
    }

    /// Total bytes of all segments.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of segment files.
    pub fn num_segments(&self) -> usize {
        self.segments.len()
    }

    /// The chunk at `r`, sharing the mapped bytes; its CRC is checked.
    pub fn chunk(&self, r: u64) -> Result<Chunk> {
        let (enc_byte, data) = self.raw_chunk(r)?;
        let encoding = Encoding::from_u8(enc_byte).map_err(|e| TsdbError::Chunk {
            path: self.segments.get((r >> 32) as usize).map(|s| s.0.clone()).unwrap_or_default(),
            source: e,
        })?;
        Ok(Chunk { encoding, data })
    }

    /// The encoding byte and data of the chunk at `r` whatever the encoding (Thanos's
    /// aggregate chunks, 0xFF, included), sharing the mapped bytes; its CRC is checked.
    pub fn raw_chunk(&self, r: u64) -> Result<(u8, Bytes)> {
        let seg = (r >> 32) as usize;
        let off = (r & 0xffff_ffff) as usize;
        let Some((path, data)) = self.segments.get(seg) else {
            return Err(TsdbError::corrupt_at(
                self.segments.last().map(|s| s.0.clone()).unwrap_or_default(),
                off as u64,
                format!("chunk reference {r:#x} names segment {seg}, but there are {}", self.segments.len()),
            ));
        };
        if off < SEGMENT_HEADER_SIZE || off >= data.len() {
            return Err(TsdbError::corrupt_at(path, off as u64, format!("chunk offset outside the segment ({r:#x})")));
        }
        let mut d = Decbuf::with_base(&data[off..], off);
        let len = d.uvarint_len().map_err(|e| TsdbError::corrupt(path, e))?;
        let enc_at = d.offset();
        let enc_byte = d.u8().map_err(|e| TsdbError::corrupt(path, e))?;
        let body_start = d.offset();
        d.skip(len).map_err(|e| TsdbError::corrupt(path, e))?;
        let crc_at = d.offset();
        let want = d.be32().map_err(|e| TsdbError::corrupt(path, e))?;
        let got = crc32c(&data[enc_at..crc_at]);
        if got != want {
            return Err(TsdbError::corrupt_at(
                path,
                crc_at as u64,
                format!("chunk checksum mismatch: stored {want:#010x}, computed {got:#010x}"),
            ));
        }
        Ok((enc_byte, data.slice(body_start..crc_at)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkenc::XorChunk;

    fn xor(samples: &[(i64, f64)]) -> ChunkMeta {
        let mut c = XorChunk::new();
        for &(t, v) in samples {
            c.append(t, v);
        }
        ChunkMeta {
            min_time: samples[0].0,
            max_time: samples[samples.len() - 1].0,
            chunk: Chunk::new(Encoding::Xor, c.into_bytes()),
        }
    }

    #[test]
    fn golden_header_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ChunkWriter::new(dir.path()).unwrap();
        let c = ChunkMeta { min_time: 0, max_time: 0, chunk: Chunk::new(Encoding::Xor, vec![0u8, 0]) };
        let refs = w.write_chunks(&[c.clone(), c]).unwrap();
        w.finish().unwrap();
        assert_eq!(refs, vec![8, 8 + 8]);
        let b = fs::read(dir.path().join("000001")).unwrap();
        let crc = crc32c(&[1, 0, 0]).to_be_bytes();
        let mut want = vec![0x85, 0xBD, 0x40, 0xDD, 1, 0, 0, 0, 2, 1, 0, 0];
        want.extend_from_slice(&crc);
        assert_eq!(&b[..16], &want[..]);
        assert_eq!(b.len(), 24);
    }

    #[test]
    fn round_trip_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ChunkWriter::with_segment_size(dir.path(), 200).unwrap();
        let series: Vec<Vec<ChunkMeta>> =
            (0..20).map(|s| (0..3).map(|i| xor(&[(i * 10, s as f64), (i * 10 + 5, 1.5)])).collect()).collect();
        let refs: Vec<Vec<u64>> = series.iter().map(|cs| w.write_chunks(cs).unwrap()).collect();
        w.finish().unwrap();
        let r = ChunkReader::open(dir.path()).unwrap();
        assert!(r.num_segments() > 1);
        let mut prev = 0;
        for (cs, rs) in series.iter().zip(&refs) {
            for (c, &rf) in cs.iter().zip(rs) {
                assert!(rf > prev);
                prev = rf;
                assert_eq!(r.chunk(rf).unwrap(), c.chunk);
            }
        }
        // Refs of the second segment start with position 1.
        assert!(refs.iter().flatten().any(|r| r >> 32 == 1));
    }

    #[test]
    fn segments_are_cut_like_prometheus() {
        let dir = tempfile::tempdir().unwrap();
        // Records of 10 data bytes take 16 bytes but are planned as 20.
        let c = ChunkMeta { min_time: 0, max_time: 0, chunk: Chunk::new(Encoding::Xor, vec![0u8; 10]) };
        let mut w = ChunkWriter::with_segment_size(dir.path(), 8 + 40).unwrap();
        assert_eq!(w.write_chunks(std::slice::from_ref(&c)).unwrap(), vec![8]);
        // The first chunk still fits the open segment, the second starts a new one.
        assert_eq!(w.write_chunks(&[c.clone(), c.clone()]).unwrap(), vec![24, (1 << 32) | 8]);
        // Three chunks: two fit the rest of segment 2? 24 + 20 + 20 > 48, so one does.
        assert_eq!(
            w.write_chunks(&[c.clone(), c.clone(), c.clone()]).unwrap(),
            vec![(1 << 32) | 24, (2 << 32) | 8, (2 << 32) | 24]
        );
        // A chunk larger than a segment gets a segment of its own.
        let big = ChunkMeta { min_time: 0, max_time: 0, chunk: Chunk::new(Encoding::Xor, vec![0u8; 100]) };
        assert_eq!(w.write_chunks(&[big, c]).unwrap(), vec![3 << 32 | 8, 4 << 32 | 8]);
        assert!(w.write_chunks(&[]).unwrap().is_empty());
        w.finish().unwrap();
        let r = ChunkReader::open(dir.path()).unwrap();
        assert_eq!(r.num_segments(), 5);
        assert_eq!(r.chunk((3 << 32) | 8).unwrap().data.len(), 100);
    }

    #[test]
    fn corruption_is_reported_with_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ChunkWriter::new(dir.path()).unwrap();
        let refs = w.write_chunks(&[xor(&[(1, 1.0), (2, 2.0)])]).unwrap();
        w.finish().unwrap();
        let p = dir.path().join("000001");
        let mut b = fs::read(&p).unwrap();
        b[11] ^= 0xff;
        fs::write(&p, &b).unwrap();
        let r = ChunkReader::open(dir.path()).unwrap();
        match r.chunk(refs[0]) {
            Err(TsdbError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, p);
                assert!(offset >= 8);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(r.chunk(5 << 32).is_err());
        assert!(r.chunk(3).is_err());
        assert!(r.chunk(1 << 31).is_err());
        b[0] = 0;
        fs::write(&p, &b).unwrap();
        assert!(matches!(ChunkReader::open(dir.path()), Err(TsdbError::Corrupt { offset: 0, .. })));
        fs::write(&p, [0x85, 0xBD]).unwrap();
        assert!(ChunkReader::open(dir.path()).is_err());
    }
}
