//! The tombstones file (spec §6): deleted time intervals per series.
//!
//! `BE32 magic | version byte | repeat(uvarint ref, varint mint, varint maxt) | BE32 CRC32C`,
//! where the CRC covers the entries only.

use std::collections::BTreeMap;
use std::path::Path;

use crate::encoding::{Decbuf, crc32c, put_uvarint, put_varint};
use crate::meta::write_file_atomic;
use crate::{Result, TsdbError};

/// File name of a block's tombstones.
pub const TOMBSTONES_FILENAME: &str = "tombstones";
/// Magic number of the tombstones file.
pub const TOMBSTONES_MAGIC: u32 = 0x0130_BA30;
/// Tombstones format version.
pub const TOMBSTONES_VERSION: u8 = 1;

/// Deleted intervals (closed) keyed by series ID, each list sorted and coalesced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tombstones {
    by_series: BTreeMap<u32, Vec<(i64, i64)>>,
}

/// Adds `[mint, maxt]` to sorted, disjoint `ivs`, merging overlapping and adjacent
/// intervals (as Prometheus's `Intervals.Add` does).
pub fn add_interval(ivs: &mut Vec<(i64, i64)>, (mint, maxt): (i64, i64)) {
    ivs.push((mint, maxt));
    ivs.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(ivs.len());
    for &(a, b) in ivs.iter() {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *ivs = out;
}

/// Whether `t` falls into one of the sorted intervals.
pub fn is_deleted(ivs: &[(i64, i64)], t: i64) -> bool {
    ivs.iter().any(|&(a, b)| a <= t && t <= b)
}

impl Tombstones {
    /// No deletions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `[mint, maxt]` of series `id` deleted.
    pub fn add(&mut self, id: u32, interval: (i64, i64)) {
        add_interval(self.by_series.entry(id).or_default(), interval);
    }

    /// The deleted intervals of series `id`, sorted and disjoint.
    pub fn get(&self, id: u32) -> &[(i64, i64)] {
        self.by_series.get(&id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether nothing is deleted.
    pub fn is_empty(&self) -> bool {
        self.by_series.is_empty()
    }

    /// Total number of intervals (what `meta.json` counts as `numTombstones`).
    pub fn num_intervals(&self) -> u64 {
        self.by_series.values().map(|v| v.len() as u64).sum()
    }

    /// All `(series id, intervals)` in ID order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[(i64, i64)])> {
        self.by_series.iter().map(|(k, v)| (*k, v.as_slice()))
    }

    /// The file contents.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + 16 * self.by_series.len());
        out.extend_from_slice(&TOMBSTONES_MAGIC.to_be_bytes());
        out.push(TOMBSTONES_VERSION);
        for (id, ivs) in &self.by_series {
            for &(a, b) in ivs {
                put_uvarint(&mut out, u64::from(*id));
                put_varint(&mut out, a);
                put_varint(&mut out, b);
            }
        }
        let crc = crc32c(&out[5..]);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Parses file contents; `path` names the file in errors.
    pub fn decode(path: &Path, b: &[u8]) -> Result<Self> {
        let c = |e| TsdbError::corrupt(path, e);
        if b.len() < 9 {
            return Err(TsdbError::corrupt_at(path, 0, format!("tombstones file too short ({} bytes)", b.len())));
        }
        let mut d = Decbuf::new(b);
        let magic = d.be32().map_err(c)?;
        if magic != TOMBSTONES_MAGIC {
            return Err(TsdbError::corrupt_at(path, 0, format!("invalid tombstones magic {magic:#010x}")));
        }
        let version = d.u8().map_err(c)?;
        if version != TOMBSTONES_VERSION {
            return Err(TsdbError::corrupt_at(path, 4, format!("unsupported tombstones version {version}")));
        }
        let crc_at = b.len() - 4;
        let want = u32::from_be_bytes([b[crc_at], b[crc_at + 1], b[crc_at + 2], b[crc_at + 3]]);
        let got = crc32c(&b[5..crc_at]);
        if want != got {
            return Err(TsdbError::corrupt_at(
                path,
                crc_at as u64,
                format!("tombstones checksum mismatch: stored {want:#010x}, computed {got:#010x}"),
            ));
        }
        let mut d = Decbuf::with_base(&b[5..crc_at], 5);
        let mut t = Tombstones::new();
        while d.remaining() > 0 {
            let id = d.uvarint32().map_err(c)?;
            let mint = d.varint().map_err(c)?;
            let maxt = d.varint().map_err(c)?;
            t.add(id, (mint, maxt));
        }
        Ok(t)
    }
}

/// Reads `<block_dir>/tombstones`; a missing file means no deletions.
pub fn read_tombstones(block_dir: &Path) -> Result<Tombstones> {
    let path = block_dir.join(TOMBSTONES_FILENAME);
    match std::fs::read(&path) {
        Ok(b) => Tombstones::decode(&path, &b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tombstones::new()),
        Err(e) => Err(TsdbError::Io { op: "read", path, source: e }),
    }
}

/// Writes `<block_dir>/tombstones` atomically.
pub fn write_tombstones(block_dir: &Path, t: &Tombstones) -> Result<()> {
    write_file_atomic(&block_dir.join(TOMBSTONES_FILENAME), &t.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_nine_bytes() {
        assert_eq!(Tombstones::new().encode(), vec![0x01, 0x30, 0xBA, 0x30, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn golden_entry() {
        let mut t = Tombstones::new();
        t.add(3, (-1, 2));
        let b = t.encode();
        let body = [3u8, 1, 4];
        assert_eq!(&b[5..8], &body);
        assert_eq!(&b[8..], &crc32c(&body).to_be_bytes());
        assert_eq!(Tombstones::decode(Path::new("t"), &b).unwrap(), t);
    }

    #[test]
    fn intervals_coalesce() {
        type Case<'a> = (&'a [(i64, i64)], &'a [(i64, i64)]);
        let cases: &[Case<'_>] = &[
            (&[(1, 2), (3, 4)], &[(1, 4)]),
            (&[(1, 2), (4, 5)], &[(1, 2), (4, 5)]),
            (&[(4, 5), (1, 10)], &[(1, 10)]),
            (&[(10, 20), (1, 2), (15, 30)], &[(1, 2), (10, 30)]),
            (&[(i64::MIN, i64::MAX), (0, 1)], &[(i64::MIN, i64::MAX)]),
        ];
        for (input, want) in cases {
            let mut v = Vec::new();
            for &iv in *input {
                add_interval(&mut v, iv);
            }
            assert_eq!(&v, want, "{input:?}");
        }
        assert!(is_deleted(&[(1, 2), (5, 6)], 5));
        assert!(!is_deleted(&[(1, 2), (5, 6)], 3));
    }

    #[test]
    fn file_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_tombstones(dir.path()).unwrap().is_empty());
        let mut t = Tombstones::new();
        t.add(1, (10, 20));
        t.add(1, (30, 40));
        t.add(7, (i64::MIN, 0));
        write_tombstones(dir.path(), &t).unwrap();
        let back = read_tombstones(dir.path()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.num_intervals(), 3);
        let p = dir.path().join(TOMBSTONES_FILENAME);
        let mut b = std::fs::read(&p).unwrap();
        b[6] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(read_tombstones(dir.path()), Err(TsdbError::Corrupt { .. })));
        for bad in [&[1u8, 2][..], &[0, 0, 0, 0, 1, 0, 0, 0, 0], &[1, 0x30, 0xBA, 0x30, 2, 0, 0, 0, 0]] {
            assert!(Tombstones::decode(&p, bad).is_err());
        }
        // Valid CRC over a truncated entry.
        let mut b = vec![0x01, 0x30, 0xBA, 0x30, 1, 0x80];
        let crc = crc32c(&b[5..]);
        b.extend_from_slice(&crc.to_be_bytes());
        assert!(matches!(Tombstones::decode(&p, &b), Err(TsdbError::Corrupt { offset: 5, .. })));
    }
}
