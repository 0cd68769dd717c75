//! Appending records to WAL segments.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{
    Compression, FRAG_FIRST, FRAG_FULL, FRAG_LAST, FRAG_MIDDLE, PAGE_SIZE, RECORD_HEADER_SIZE, SNAPPY_FLAG, SyncPolicy,
    WalOptions, WalStats, list_segments, segment_path, sync_dir,
};
use crate::encoding::crc32c;
use crate::{Result, TsdbError};

/// A WAL open for appending. Always writes to a fresh segment numbered after every
/// existing segment and checkpoint, so it never has to trust a possibly torn tail.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    file: File,
    segment: u32,
    page: Vec<u8>,
    /// Bytes of `page` in use.
    alloc: usize,
    /// Bytes of `page` already written to the file.
    flushed: usize,
    /// Full pages already written to the current segment.
    done_pages: usize,
    compress_buf: Vec<u8>,
    encoder: snap::raw::Encoder,
    stats: WalStats,
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir` for appending. Read the WAL first
    /// with [`super::read_segments`] (which repairs a torn tail): a short newest segment
    /// is padded to whole pages here, which must only happen to a clean one.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<Wal> {
        std::fs::create_dir_all(dir).map_err(TsdbError::io("create dir", dir))?;
        let segs = list_segments(dir)?;
        if let Some(&last) = segs.last() {
            pad_segment(dir, last)?;
        }
        let mut next = segs.last().map_or(0, |l| l + 1);
        if let Some((cp, _)) = super::last_checkpoint(dir)? {
            next = next.max(cp + 1);
        }
        let opts = WalOptions { segment_size: opts.segment_size.max(PAGE_SIZE).next_multiple_of(PAGE_SIZE), ..opts };
        let file = create_segment(dir, next)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            opts,
            file,
            segment: next,
            page: vec![0; PAGE_SIZE],
            alloc: 0,
            flushed: 0,
            done_pages: 0,
            compress_buf: Vec::new(),
            encoder: snap::raw::Encoder::new(),
            stats: WalStats::default(),
        })
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of the segment being written.
    pub fn current_segment(&self) -> u32 {
        self.segment
    }

    /// What this WAL has written since it was opened.
    pub fn stats(&self) -> WalStats {
        self.stats
    }

    /// Appends records in order and then syncs according to the policy. A record never
    /// spans segments.
    pub fn log(&mut self, recs: &[&[u8]]) -> Result<()> {
        self.stats.writes += 1;
        for rec in recs {
            self.log_one(rec)?;
            self.stats.records += 1;
        }
        if self.alloc > self.flushed {
            self.flush_page(false)?;
        }
        if self.opts.sync == SyncPolicy::PerCommit {
            self.file.sync_data().map_err(TsdbError::io("fsync", self.seg_path()))?;
            self.stats.fsyncs += 1;
        }
        Ok(())
    }

    /// Closes the current segment (padding its last page) and starts the next one.
    /// Returns the new segment's number.
    pub fn next_segment(&mut self) -> Result<u32> {
        if self.alloc > 0 {
            self.flush_page(true)?;
        }
        self.file.sync_all().map_err(TsdbError::io("fsync", self.seg_path()))?;
        self.stats.fsyncs += 1;
        let next = self.segment + 1;
        self.file = create_segment(&self.dir, next)?;
        self.segment = next;
        self.done_pages = 0;
        Ok(next)
    }

    /// Pads and syncs the current segment.
    pub fn close(mut self) -> Result<()> {
        if self.alloc > 0 {
            self.flush_page(true)?;
        }
        self.file.sync_all().map_err(TsdbError::io("fsync", self.seg_path()))
    }

    fn seg_path(&self) -> PathBuf {
        segment_path(&self.dir, self.segment)
    }

    fn pages_per_segment(&self) -> usize {
        self.opts.segment_size / PAGE_SIZE
    }

    fn log_one(&mut self, rec: &[u8]) -> Result<()> {
        let mut compressed = false;
        let mut comp = std::mem::take(&mut self.compress_buf);
        let mut rec = rec;
        if self.opts.compression == Compression::Snappy && !rec.is_empty() {
            // Only ever grown, so records do not pay for re-zeroing it each time.
            let need = snap::raw::max_compress_len(rec.len());
            if comp.len() < need {
                comp.resize(need, 0);
            }
            if let Ok(n) = self.encoder.compress(rec, &mut comp[..need])
                && n < rec.len()
            {
                rec = &comp[..n];
                compressed = true;
            }
        }
        let res = self.write_fragments(rec, compressed);
        self.compress_buf = comp;
        res
    }

    fn write_fragments(&mut self, mut rec: &[u8], compressed: bool) -> Result<()> {
        // Free payload space left in this segment; if the record does not fit, start a
        // new segment so that records never cross segment boundaries.
        let left = (PAGE_SIZE - self.alloc).saturating_sub(RECORD_HEADER_SIZE)
            + (PAGE_SIZE - RECORD_HEADER_SIZE) * self.pages_per_segment().saturating_sub(self.done_pages + 1);
        if rec.len() > left && (self.done_pages > 0 || self.alloc > 0) {
            self.next_segment()?;
        }
        let mut i = 0;
        while i == 0 || !rec.is_empty() {
            let l = rec.len().min(PAGE_SIZE - self.alloc - RECORD_HEADER_SIZE);
            let part = &rec[..l];
            let mut typ = match (i == 0, l == rec.len()) {
                (true, true) => FRAG_FULL,
                (false, true) => FRAG_LAST,
                (true, false) => FRAG_FIRST,
                (false, false) => FRAG_MIDDLE,
            };
            if compressed {
                typ |= SNAPPY_FLAG;
            }
            let buf = &mut self.page[self.alloc..];
            buf[0] = typ;
            buf[1..3].copy_from_slice(&(l as u16).to_be_bytes());
            buf[3..7].copy_from_slice(&crc32c(part).to_be_bytes());
            buf[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + l].copy_from_slice(part);
            self.alloc += RECORD_HEADER_SIZE + l;
            if PAGE_SIZE - self.alloc < RECORD_HEADER_SIZE {
                self.flush_page(true)?;
            }
            rec = &rec[l..];
            i += 1;
        }
        Ok(())
    }

    /// Writes the unwritten part of the page; with `clear` (or when the page is full)
    /// pads it to the page end with zeros and starts a new page.
    fn flush_page(&mut self, clear: bool) -> Result<()> {
        let clear = clear || PAGE_SIZE - self.alloc < RECORD_HEADER_SIZE;
        if clear {
            self.page[self.alloc..].fill(0);
            self.alloc = PAGE_SIZE;
        }
        let path = segment_path(&self.dir, self.segment);
        self.file.write_all(&self.page[self.flushed..self.alloc]).map_err(TsdbError::io("write", path))?;
        self.flushed = self.alloc;
        if clear {
            self.alloc = 0;
            self.flushed = 0;
            self.done_pages += 1;
        }
        Ok(())
    }
}

impl Drop for Wal {
    /// Pads the last page like `close` (errors ignored: nothing to report them to), so a
    /// cleanly dropped WAL ends on a page boundary as Prometheus's does.
    fn drop(&mut self) {
        if self.alloc > 0 {
            let _ = self.flush_page(true);
        }
    }
}

/// Pads a segment left short (by a crash after a clean record end) with zeros to a page
/// boundary, as Prometheus does before moving on, so every segment but the newest is
/// whole pages. Only call after the segment has been read (and repaired if torn).
fn pad_segment(dir: &Path, n: u32) -> Result<()> {
    let p = segment_path(dir, n);
    let len = std::fs::metadata(&p).map_err(TsdbError::io("stat", &p))?.len();
    let page = PAGE_SIZE as u64;
    if len % page != 0 {
        let f = OpenOptions::new().write(true).open(&p).map_err(TsdbError::io("open", &p))?;
        f.set_len(len.next_multiple_of(page)).and_then(|_| f.sync_all()).map_err(TsdbError::io("pad", &p))?;
    }
    Ok(())
}

fn create_segment(dir: &Path, n: u32) -> Result<File> {
    let p = segment_path(dir, n);
    let f = OpenOptions::new().create(true).write(true).truncate(true).open(&p).map_err(TsdbError::io("create", &p))?;
    sync_dir(dir)?;
    Ok(f)
}
