//! Chunk bytes from the bucket: the chunk references of a batch of series are grouped by
//! segment file, nearby ones coalesced into one ranged GET, and every record's length,
//! encoding and CRC checked before its bytes are served.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use norn_objstore::Bucket;
use norn_tsdb::chunkenc::Encoding;
use norn_tsdb::chunkenc::aggr::AGGR_ENCODING;
use norn_tsdb::chunks::{SEGMENT_HEADER_SIZE, segment_name};
use norn_tsdb::encoding::{Decbuf, crc32c};

use crate::metrics::Metrics;
use crate::sync::StoreBlock;

/// Bytes assumed for a chunk record whose length is not known before it is read (as
/// Thanos's store gateway does); a longer record is read again on its own.
pub const CHUNK_SIZE_ESTIMATE: u64 = 16_000;
/// Chunks whose estimated ranges are at most this far apart are read in one request:
/// a few hundred KiB more is cheaper than another round trip to object storage.
pub const MAX_GAP: u64 = 512 * 1024;
/// Largest coalesced read: joining stops here, so one request never pulls a large part of
/// a 512 MiB segment into memory for sparse references.
pub const MAX_RANGE: u64 = 8 * 1024 * 1024;
/// Ranged GETs in flight per batch.
const FETCH_CONCURRENCY: usize = 8;

/// One ranged read: the byte range and which of the (sorted) offsets it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Bytes to read.
    pub range: Range<u64>,
    /// Positions in the offsets list whose records start inside `range`.
    pub offsets: Range<usize>,
}

/// Coalesces sorted record offsets of one segment of `size` bytes into ranged reads:
/// each record is assumed to span `estimate` bytes (cut at the end of the file), and
/// ranges closer than `max_gap` are joined while the joined read stays within
/// `max_range` bytes.
pub fn partition(offsets: &[u64], size: u64, estimate: u64, max_gap: u64, max_range: u64) -> Vec<Part> {
    let ranges: Vec<Range<u64>> =
        offsets.iter().map(|&off| off..off.saturating_add(estimate).min(size).max(off)).collect();
    coalesce(&ranges, max_gap, max_range)
}

/// Joins byte ranges sorted by start into ranged reads (Thanos's gap-based
/// partitioner): a range starting at most `max_gap` after the current read's end joins
/// it while the read stays within `max_range` bytes; a single range is never split.
pub fn coalesce(ranges: &[Range<u64>], max_gap: u64, max_range: u64) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::new();
    for (i, r) in ranges.iter().enumerate() {
        let (off, end) = (r.start, r.end.max(r.start));
        match out.last_mut() {
            Some(p)
                if off <= p.range.end.saturating_add(max_gap) && end.max(p.range.end) - p.range.start <= max_range =>
            {
                p.range.end = p.range.end.max(end);
                p.offsets.end = i + 1;
            }
            _ => out.push(Part { range: off..end, offsets: i..i + 1 }),
        }
    }
    out
}

/// A chunk record that failed its checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block {block} chunks/{segment} offset {offset}: {what}")]
pub struct ChunkError {
    pub block: String,
    pub segment: String,
    pub offset: u64,
    pub what: String,
}

/// A chunk as read from a segment: its encoding byte (XOR, histogram, float histogram,
/// or Thanos's aggregate chunk 0xFF) and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChunk {
    pub encoding: u8,
    pub data: Bytes,
}

/// What a read buffer holds of the record at an offset.
#[derive(Debug, PartialEq)]
pub enum Record {
    /// The whole record, checked.
    Chunk(RawChunk),
    /// The record is longer than the buffer: it spans this many bytes from its offset.
    Truncated(u64),
}

/// Parses the chunk record `uvarint len | encoding | data | crc32c(encoding ‖ data)` at
/// the start of `buf`. Errors name what is wrong; `buf` ending early is not an error
/// unless it could not have been longer (`at_eof`).
pub fn parse_record(buf: &Bytes, at_eof: bool) -> Result<Record, String> {
    let mut d = Decbuf::new(buf);
    let len = match d.uvarint() {
        Ok(l) => l,
        Err(_) if !at_eof && buf.len() < 10 => return Ok(Record::Truncated(10)),
        Err(e) => return Err(format!("record length: {e}")),
    };
    let head = d.pos() as u64;
    let total = head.saturating_add(1).saturating_add(len).saturating_add(4);
    if total > buf.len() as u64 {
        if at_eof {
            return Err(format!("record of {total} bytes runs past the end of the segment"));
        }
        return Ok(Record::Truncated(total));
    }
    let (head, len) = (head as usize, len as usize);
    let enc_byte = buf[head];
    let body = head + 1..head + 1 + len;
    let crc_at = body.end;
    let want = u32::from_be_bytes([buf[crc_at], buf[crc_at + 1], buf[crc_at + 2], buf[crc_at + 3]]);
    let got = crc32c(&buf[head..crc_at]);
    if want != got {
        return Err(format!("chunk checksum mismatch: stored {want:#010x}, computed {got:#010x}"));
    }
    if enc_byte != AGGR_ENCODING {
        Encoding::from_u8(enc_byte).map_err(|e| e.to_string())?;
    }
    // A copy, not a slice: a slice would keep the whole coalesced read (gaps included)
    // alive until the batch is sent.
    Ok(Record::Chunk(RawChunk { encoding: enc_byte, data: Bytes::copy_from_slice(&buf[body]) }))
}

/// Fetches chunks from the bucket.
#[derive(Debug, Clone)]
pub struct ChunkFetcher {
    pub bucket: Bucket,
    pub metrics: Arc<Metrics>,
}

/// A chunk wanted: the block (by position in the caller's list) and its reference.
pub type Want = (usize, u64);

impl ChunkFetcher {
    async fn get(&self, key: &str, range: Range<u64>) -> Result<Bytes, norn_objstore::Error> {
        self.metrics.chunk_fetches.inc();
        let b = self.bucket.get_range(key, range).await?;
        self.metrics.chunk_fetched_bytes.inc_by(b.len() as u64);
        Ok(b)
    }

    /// Reads every wanted chunk, a few ranged GETs per segment file.
    pub async fn fetch(
        &self,
        blocks: &[Arc<StoreBlock>],
        wants: &[Want],
    ) -> Result<HashMap<Want, RawChunk>, ChunkError> {
        // (block, segment) → sorted offsets.
        let mut by_seg: BTreeMap<(usize, usize), Vec<u64>> = BTreeMap::new();
        for &(b, r) in wants {
            by_seg.entry((b, (r >> 32) as usize)).or_default().push(r & 0xffff_ffff);
        }
        let mut jobs = Vec::new();
        for ((b, seg), mut offs) in by_seg {
            offs.sort_unstable();
            offs.dedup();
            let block = &blocks[b];
            let err = |offset: u64, what: String| ChunkError {
                block: block.id.to_string(),
                segment: segment_name(seg as u64 + 1),
                offset,
                what,
            };
            let Some(&size) = block.segments.get(seg) else {
                return Err(err(offs[0], format!("no such segment ({} in the block)", block.segments.len())));
            };
            if let Some(&bad) = offs.iter().find(|&&o| o < SEGMENT_HEADER_SIZE as u64 || o >= size) {
                return Err(err(bad, format!("offset outside the segment of {size} bytes")));
            }
            let key = format!("{}/chunks/{}", block.id, segment_name(seg as u64 + 1));
            for p in partition(&offs, size, CHUNK_SIZE_ESTIMATE, MAX_GAP, MAX_RANGE) {
                let offsets = offs[p.offsets.clone()].to_vec();
                jobs.push((b, seg, key.clone(), size, p.range, offsets));
            }
        }
        let mut out = HashMap::with_capacity(wants.len());
        let mut results =
            futures::stream::iter(jobs.into_iter().map(|(b, seg, key, size, range, offsets)| async move {
                let r = self.fetch_part(blocks, b, seg, &key, size, range, &offsets).await;
                (b, seg, r)
            }))
            .buffer_unordered(FETCH_CONCURRENCY);
        while let Some((b, seg, r)) = results.next().await {
            for (off, c) in r? {
                out.insert((b, ((seg as u64) << 32) | off), c);
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_part(
        &self,
        blocks: &[Arc<StoreBlock>],
        b: usize,
        seg: usize,
        key: &str,
        size: u64,
        range: Range<u64>,
        offsets: &[u64],
    ) -> Result<Vec<(u64, RawChunk)>, ChunkError> {
        let err = |offset: u64, what: String| ChunkError {
            block: blocks[b].id.to_string(),
            segment: segment_name(seg as u64 + 1),
            offset,
            what,
        };
        let buf = self.get(key, range.clone()).await.map_err(|e| err(range.start, e.to_string()))?;
        if (buf.len() as u64) < range.end - range.start {
            return Err(err(
                range.start,
                format!("read {} bytes of {} (segment shorter than listed)", buf.len(), range.end - range.start),
            ));
        }
        let mut out = Vec::with_capacity(offsets.len());
        for &off in offsets {
            let rel = (off - range.start) as usize;
            let at_eof = range.end == size;
            let rec = buf.slice(rel..);
            let chunk = match parse_record(&rec, at_eof).map_err(|w| err(off, w))? {
                Record::Chunk(c) => c,
                Record::Truncated(mut total) => {
                    // A record longer than the estimate: read it alone. Its length is
                    // known after the first read, so a second one always suffices.
                    let mut got = None;
                    for _ in 0..2 {
                        let end = off.saturating_add(total).min(size);
                        let again = self.get(key, off..end).await.map_err(|e| err(off, e.to_string()))?;
                        match parse_record(&again, end == size).map_err(|w| err(off, w))? {
                            Record::Chunk(c) => {
                                got = Some(c);
                                break;
                            }
                            Record::Truncated(t) => total = t,
                        }
                    }
                    got.ok_or_else(|| err(off, "record longer than announced".into()))?
                }
            };
            out.push((off, chunk));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use norn_tsdb::encoding::put_uvarint;

    use super::*;

    #[test]
    fn coalescing() {
        // (offsets, segment size, estimate, gap) -> (ranges, offset positions)
        type Case = (&'static [u64], u64, u64, u64, u64, &'static [(Range<u64>, Range<usize>)]);
        let cases: &[Case] = &[
            (&[], 1000, 100, 0, u64::MAX, &[]),
            (&[8], 1000, 100, 0, u64::MAX, &[(8..108, 0..1)]),
            (&[8], 50, 100, 0, u64::MAX, &[(8..50, 0..1)]),
            // Overlapping estimates join even without a gap allowance.
            (&[8, 50, 120], 1000, 100, 0, u64::MAX, &[(8..220, 0..3)]),
            // Far apart: separate reads unless the gap allows joining.
            (&[8, 500], 1000, 100, 0, u64::MAX, &[(8..108, 0..1), (500..600, 1..2)]),
            (&[8, 500], 1000, 100, 392, u64::MAX, &[(8..600, 0..2)]),
            (&[8, 500], 1000, 100, 391, u64::MAX, &[(8..108, 0..1), (500..600, 1..2)]),
            (&[8, 20, 900, 990], 1000, 100, 10, u64::MAX, &[(8..120, 0..2), (900..1000, 2..4)]),
            // The size cap splits what the gap would join.
            (&[8, 50, 120], 1000, 100, 0, 150, &[(8..150, 0..2), (120..220, 2..3)]),
            (&[8, 500], 1000, 100, 1000, 200, &[(8..108, 0..1), (500..600, 1..2)]),
            // A lone record longer than the cap is still read whole.
            (&[8], 1000, 100, 0, 10, &[(8..108, 0..1)]),
        ];
        for (offs, size, est, gap, cap, want) in cases {
            let got: Vec<(Range<u64>, Range<usize>)> =
                partition(offs, *size, *est, *gap, *cap).into_iter().map(|p| (p.range, p.offsets)).collect();
            assert_eq!(got, want.to_vec(), "{offs:?} size {size} est {est} gap {gap} cap {cap}");
        }
    }

    proptest::proptest! {
        /// Every offset lands in exactly one read that starts at or before it, reads are
        /// ascending and disjoint, and none runs past the segment.
        #[test]
        fn partition_covers_each_offset_once(
            mut offs in proptest::collection::vec(8u64..1_000_000, 0..60),
            est in 1u64..20_000,
            gap in 0u64..100_000,
            cap in 1u64..200_000,
        ) {
            offs.sort_unstable();
            offs.dedup();
            let size = 1_000_000;
            let parts = partition(&offs, size, est, gap, cap);
            let mut next = 0;
            for (i, p) in parts.iter().enumerate() {
                proptest::prop_assert_eq!(p.offsets.start, next);
                next = p.offsets.end;
                proptest::prop_assert!(p.range.end <= size);
                for &o in &offs[p.offsets.clone()] {
                    proptest::prop_assert!(p.range.start <= o && o < p.range.end);
                }
                if p.offsets.len() > 1 {
                    proptest::prop_assert!(p.range.end - p.range.start <= cap);
                }
                if i > 0 {
                    // Split because of the gap or the cap, never for no reason.
                    let prev = &parts[i - 1];
                    let first = offs[p.offsets.start];
                    let first_end = (first + est).min(size);
                    proptest::prop_assert!(
                        first > prev.range.end + gap || first_end.max(prev.range.end) - prev.range.start > cap
                    );
                }
            }
            proptest::prop_assert_eq!(next, offs.len());
        }

        /// Arbitrary bytes never panic the record parser.
        #[test]
        fn records_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64), eof: bool) {
            let _ = parse_record(&Bytes::from(data), eof);
        }
    }

    fn record(enc: u8, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_uvarint(&mut v, data.len() as u64);
        v.push(enc);
        v.extend_from_slice(data);
        let crc = crc32c(&v[v.len() - data.len() - 1..]);
        v.extend_from_slice(&crc.to_be_bytes());
        v
    }

    #[test]
    fn records() {
        let rec = record(1, &[0, 0]);
        let buf = Bytes::from([rec.clone(), vec![9; 5]].concat());
        let xor = RawChunk { encoding: Encoding::Xor as u8, data: Bytes::from_static(&[0, 0]) };
        assert_eq!(parse_record(&buf, false).unwrap(), Record::Chunk(xor));
        let aggr = RawChunk { encoding: 0xff, data: Bytes::from_static(&[0, 0, 0, 0, 0]) };
        assert_eq!(parse_record(&Bytes::from(record(0xff, &aggr.data)), true).unwrap(), Record::Chunk(aggr));
        // Short buffer: asks for the whole record, unless at the end of the file.
        let short = Bytes::from(rec[..4].to_vec());
        assert_eq!(parse_record(&short, false).unwrap(), Record::Truncated(rec.len() as u64));
        assert!(parse_record(&short, true).unwrap_err().contains("past the end"));
        let mut bad = rec.clone();
        bad[2] ^= 1;
        assert!(parse_record(&Bytes::from(bad), true).unwrap_err().contains("checksum"));
        assert!(parse_record(&Bytes::from(record(99, &[1])), true).is_err());
        assert!(parse_record(&Bytes::from_static(&[0xff; 3]), true).is_err());
        assert_eq!(parse_record(&Bytes::from_static(&[0xff; 3]), false).unwrap(), Record::Truncated(10));
        assert!(parse_record(&Bytes::new(), true).is_err());
    }
}
