//! Reading records back from WAL segments, repairing a torn tail in the newest one.

use std::fs::OpenOptions;
use std::path::Path;

use super::{
    FRAG_FIRST, FRAG_FULL, FRAG_LAST, FRAG_MIDDLE, FRAG_PAGE_TERM, PAGE_SIZE, RECORD_HEADER_SIZE, SNAPPY_FLAG,
    ZSTD_FLAG, list_segments, segment_path,
};
use crate::encoding::crc32c;
use crate::{Result, TsdbError};

/// Why a segment could not be read past some offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentError {
    /// Offset in the segment where the bad fragment (or padding) starts.
    pub offset: usize,
    /// What is wrong there.
    pub what: String,
}

/// Reads the records of one segment held in memory.
#[derive(Debug)]
pub struct SegmentReader<'a> {
    data: &'a [u8],
    pos: usize,
    /// End offset of the last complete record.
    good: usize,
    rec: Vec<u8>,
    comp: Vec<u8>,
}

impl<'a> SegmentReader<'a> {
    /// A reader over a segment's bytes.
    pub fn new(data: &'a [u8]) -> Self {
        SegmentReader { data, pos: 0, good: 0, rec: Vec::new(), comp: Vec::new() }
    }

    /// Offset just past the last record returned.
    pub fn good_offset(&self) -> usize {
        self.good
    }

    /// The next record, `None` at a clean end of the segment.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<&[u8]>, FragmentError> {
        self.rec.clear();
        self.comp.clear();
        let mut i = 0usize;
        let mut compressed = false;
        loop {
            let pos = self.pos;
            let err = |what: String| FragmentError { offset: pos, what };
            if pos >= self.data.len() {
                if i == 0 {
                    return Ok(None);
                }
                return Err(err("segment ends inside a multi-fragment record".into()));
            }
            let hdr = self.data[pos];
            let typ = hdr & 0x07;
            if typ == FRAG_PAGE_TERM {
                // The rest of the page must be zero padding.
                let end = (pos / PAGE_SIZE + 1) * PAGE_SIZE;
                if end > self.data.len() {
                    return Err(err("segment ends inside page padding".into()));
                }
                if self.data[pos..end].iter().any(|&b| b != 0) {
                    return Err(err("unexpected non-zero byte in page padding".into()));
                }
                self.pos = end;
                continue;
            }
            let page_left = PAGE_SIZE - pos % PAGE_SIZE;
            if page_left < RECORD_HEADER_SIZE {
                return Err(err("fragment header crosses a page boundary".into()));
            }
            if self.data.len() - pos < RECORD_HEADER_SIZE {
                return Err(err("truncated fragment header".into()));
            }
            let len = usize::from(u16::from_be_bytes([self.data[pos + 1], self.data[pos + 2]]));
            let crc =
                u32::from_be_bytes([self.data[pos + 3], self.data[pos + 4], self.data[pos + 5], self.data[pos + 6]]);
            if RECORD_HEADER_SIZE + len > page_left {
                return Err(err(format!("fragment of {len} bytes crosses a page boundary")));
            }
            let start = pos + RECORD_HEADER_SIZE;
            if self.data.len() - start < len {
                return Err(err(format!(
                    "truncated fragment: {len} bytes announced, {} present",
                    self.data.len() - start
                )));
            }
            let payload = &self.data[start..start + len];
            let got = crc32c(payload);
            if got != crc {
                return Err(err(format!("fragment checksum mismatch: stored {crc:08x}, computed {got:08x}")));
            }
            match (i == 0, typ) {
                (true, FRAG_FULL | FRAG_FIRST) | (false, FRAG_MIDDLE | FRAG_LAST) => {}
                (_, t) if t > FRAG_LAST => return Err(err(format!("invalid fragment type {t}"))),
                (true, t) => return Err(err(format!("fragment type {t} cannot start a record"))),
                (false, t) => return Err(err(format!("fragment type {t} inside a multi-fragment record"))),
            }
            if hdr & ZSTD_FLAG != 0 {
                return Err(err("zstd-compressed WAL records are unsupported".into()));
            }
            if i == 0 {
                compressed = hdr & SNAPPY_FLAG != 0;
            } else if compressed != (hdr & SNAPPY_FLAG != 0) {
                return Err(err("compression flag differs between fragments of one record".into()));
            }
            if compressed {
                self.comp.extend_from_slice(payload);
            } else {
                self.rec.extend_from_slice(payload);
            }
            self.pos = start + len;
            if typ == FRAG_FULL || typ == FRAG_LAST {
                if compressed && !self.comp.is_empty() {
                    let n = snap::raw::decompress_len(&self.comp)
                        .map_err(|e| FragmentError { offset: pos, what: format!("snappy: {e}") })?;
                    // A snappy block cannot expand more than ~32x; refuse absurd
                    // announced lengths instead of allocating them.
                    if n > self.comp.len().saturating_mul(64) + 1024 {
                        return Err(FragmentError { offset: pos, what: "snappy length implausible".into() });
                    }
                    self.rec.resize(n, 0);
                    snap::raw::Decoder::new()
                        .decompress(&self.comp, &mut self.rec)
                        .map_err(|e| FragmentError { offset: pos, what: format!("snappy: {e}") })?;
                }
                self.good = self.pos;
                return Ok(Some(&self.rec));
            }
            i += 1;
        }
    }
}

/// A damaged tail that replay cut off the newest segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The truncated segment's number.
    pub segment: u32,
    /// Offset of the first dropped byte (the end of the last good record).
    pub offset: u64,
    /// Bytes dropped (the file is then re-padded to a page boundary with zeros).
    pub dropped_bytes: u64,
    /// Why reading stopped.
    pub reason: String,
}

/// What [`read_segments`] went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Segments read.
    pub segments: usize,
    /// Records read.
    pub records: u64,
    /// The cut-off damaged tail, if any.
    pub truncated: Option<Truncation>,
}

/// Reads every record of the segments in `dir` numbered `from` or higher, in order,
/// passing each to `f`. Damage in the newest segment is cut off (when `repair_tail`) and
/// logged; damage anywhere else is an error naming the segment and offset.
pub fn read_segments(
    dir: &Path,
    from: u32,
    repair_tail: bool,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<ReadStats> {
    let segs: Vec<u32> = list_segments(dir)?.into_iter().filter(|&s| s >= from).collect();
    let mut stats = ReadStats { segments: segs.len(), ..Default::default() };
    for (idx, &seg) in segs.iter().enumerate() {
        let path = segment_path(dir, seg);
        let data = std::fs::read(&path).map_err(TsdbError::io("read", &path))?;
        let mut r = SegmentReader::new(&data);
        let failure = loop {
            match r.next() {
                Ok(Some(rec)) => {
                    stats.records += 1;
                    f(rec)?;
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        let Some(e) = failure else { continue };
        let last = idx + 1 == segs.len();
        if !(last && repair_tail) {
            return Err(TsdbError::corrupt_at(&path, e.offset as u64, e.what));
        }
        let good = r.good_offset();
        let dropped = data.len() - good;
        tracing::warn!(
            segment = %path.display(),
            offset = good,
            dropped_bytes = dropped,
            reason = %e.what,
            "WAL tail is damaged; truncating it at the last good record"
        );
        let file = OpenOptions::new().write(true).open(&path).map_err(TsdbError::io("open", &path))?;
        // Truncate, then pad with zeros to the page boundary as Prometheus's repair does,
        // so the segment stays a sequence of whole pages.
        file.set_len(good as u64)
            .and_then(|_| file.set_len(good.next_multiple_of(PAGE_SIZE) as u64))
            .map_err(TsdbError::io("truncate", &path))?;
        file.sync_all().map_err(TsdbError::io("fsync", &path))?;
        stats.truncated =
            Some(Truncation { segment: seg, offset: good as u64, dropped_bytes: dropped as u64, reason: e.what });
    }
    Ok(stats)
}
