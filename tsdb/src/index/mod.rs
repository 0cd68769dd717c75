//! The block index (spec §3): symbols, series with their chunk references, postings lists
//! and the postings offset table, closed by a table of contents.
//!
//! [`IndexWriter`] writes version 2 in the layout of Prometheus ≥ 3.7 (no legacy label
//! index sections); [`IndexReader`] reads versions 2 and 3, with or without the legacy
//! sections.

pub mod postings;
mod reader;
mod writer;

pub use reader::{
    IndexReader, PostingsPlan, PostingsSet, decode_postings_list, decode_series_entry, series_entry_size,
};
pub use writer::IndexWriter;

use crate::encoding::{Decbuf, DecodeError, crc32c, put_be64};

/// Magic number at the start of an index file.
pub const INDEX_MAGIC: u32 = 0xBAAA_D700;
/// The version we write.
pub const FORMAT_V2: u8 = 2;
/// Read exactly like v2.
pub const FORMAT_V3: u8 = 3;
/// Size of the header: magic and version.
pub const HEADER_SIZE: usize = 5;
/// Size of the table of contents at the end of the file.
pub const TOC_SIZE: usize = 6 * 8 + 4;
/// File name of a block's index.
pub const INDEX_FILENAME: &str = "index";

/// Whether a stored checksum is accepted. The `fuzzing-skip-checksums` feature (enabled
/// only by the fuzz crate) accepts every checksum so fuzzing reaches the decoders behind
/// them instead of stopping at the first CRC.
#[inline]
pub(crate) fn checksum_ok(stored: u32, computed: u32) -> bool {
    cfg!(feature = "fuzzing-skip-checksums") || stored == computed
}

/// Absolute offsets of the index sections; zero means absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Toc {
    /// The symbol table (always 5).
    pub symbols: u64,
    /// Start of the series section.
    pub series: u64,
    /// Start of the legacy label indices (where they would start when absent).
    pub label_indices: u64,
    /// The legacy label offset table (equal to `postings_table` when absent).
    pub label_indices_table: u64,
    /// Start of the postings lists.
    pub postings: u64,
    /// The postings offset table.
    pub postings_table: u64,
}

impl Toc {
    /// The 52 bytes that end the index.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(TOC_SIZE);
        for v in [
            self.symbols,
            self.series,
            self.label_indices,
            self.label_indices_table,
            self.postings,
            self.postings_table,
        ] {
            put_be64(&mut b, v);
        }
        let crc = crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    /// Parses the TOC from the last 52 bytes of `file`.
    pub fn decode(file: &[u8]) -> Result<Toc, DecodeError> {
        if file.len() < TOC_SIZE {
            return Err(DecodeError { what: "file too short for a table of contents", offset: 0 });
        }
        let base = file.len() - TOC_SIZE;
        let b = &file[base..];
        let mut d = Decbuf::with_base(b, base);
        let toc = Toc {
            symbols: d.be64()?,
            series: d.be64()?,
            label_indices: d.be64()?,
            label_indices_table: d.be64()?,
            postings: d.be64()?,
            postings_table: d.be64()?,
        };
        let want = d.be32()?;
        if !checksum_ok(want, crc32c(&b[..48])) {
            return Err(DecodeError { what: "table of contents checksum mismatch", offset: base + 48 });
        }
        Ok(toc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TsdbError;
    use crate::chunks::ChunkRef;
    use crate::encoding::put_be32;
    use norn_model::{Labels, MatchType, Matcher};
    use std::collections::BTreeSet;
    use std::path::Path;

    fn write_index(path: &Path, series: &[(Labels, Vec<ChunkRef>)]) {
        let syms: BTreeSet<&str> = series.iter().flat_map(|(l, _)| l.iter().flat_map(|(n, v)| [n, v])).collect();
        let mut w = IndexWriter::new(path, syms).unwrap();
        for (l, c) in series {
            w.add_series(l, c).unwrap();
        }
        w.finish().unwrap();
    }

    fn section(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_be32(&mut out, body.len() as u32);
        out.extend_from_slice(body);
        out.extend_from_slice(&crc32c(body).to_be_bytes());
        out
    }

    #[test]
    fn golden_single_series_index() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index");
        let refs = vec![ChunkRef { min_time: 0, max_time: 10, chunk_ref: 8 }];
        write_index(&p, &[(Labels::from_pairs([("a", "1")]), refs.clone())]);
        let mut want = vec![0xBA, 0xAA, 0xD7, 0x00, 0x02];
        want.extend(section(&[0, 0, 0, 2, 1, b'1', 1, b'a']));
        assert_eq!(want.len(), 21);
        want.resize(32, 0);
        let body = [1u8, 1, 0, 1, 0, 10, 8];
        want.push(7);
        want.extend_from_slice(&body);
        want.extend_from_slice(&crc32c(&body).to_be_bytes());
        assert_eq!(want.len(), 44);
        want.extend(section(&[0, 0, 0, 1, 0, 0, 0, 2]));
        want.extend(section(&[0, 0, 0, 1, 0, 0, 0, 2]));
        assert_eq!(want.len(), 76);
        want.extend(section(&[0, 0, 0, 2, 2, 0, 0, 44, 2, 1, b'a', 1, b'1', 60]));
        want.extend(
            Toc {
                symbols: 5,
                series: 21,
                label_indices: 44,
                label_indices_table: 76,
                postings: 44,
                postings_table: 76,
            }
            .encode(),
        );
        assert_eq!(std::fs::read(&p).unwrap(), want);

        let r = IndexReader::open(&p).unwrap();
        assert_eq!(r.series(2).unwrap(), (Labels::from_pairs([("a", "1")]), refs));
        assert_eq!(r.postings("a", "1").unwrap(), vec![2]);
        assert_eq!(r.all_postings().unwrap(), vec![2]);
        assert_eq!(r.label_names(), vec!["a"]);
        assert_eq!(r.label_values("a"), vec!["1"]);
        assert_eq!(r.symbols().collect::<Result<Vec<_>, _>>().unwrap(), vec!["1", "a"]);
    }

    fn sample_index(dir: &Path) -> IndexReader {
        let l = |p: &[(&str, &str)]| Labels::from_pairs(p.iter().copied());
        let series = vec![
            (l(&[("a", "1")]), vec![ChunkRef { min_time: -5, max_time: 5, chunk_ref: 8 }]),
            (l(&[("a", "1"), ("b", "x")]), vec![]),
            (l(&[("a", "2"), ("b", "y")]), vec![]),
            (
                l(&[("a", "3"), ("b", "x"), ("c", "z")]),
                vec![
                    ChunkRef { min_time: 0, max_time: 10, chunk_ref: 20 },
                    ChunkRef { min_time: 11, max_time: 11, chunk_ref: 30 },
                    ChunkRef { min_time: 100, max_time: 200, chunk_ref: (1 << 32) | 8 },
                ],
            ),
        ];
        let p = dir.join("index");
        write_index(&p, &series);
        let r = IndexReader::open(&p).unwrap();
        let ids = r.all_postings().unwrap();
        assert_eq!(ids.len(), 4);
        for (id, (l, c)) in ids.iter().zip(&series) {
            assert_eq!(&r.series(*id).unwrap(), &(l.clone(), c.clone()));
        }
        r
    }

    #[test]
    fn postings_for_matchers_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let r = sample_index(dir.path());
        let ids = r.all_postings().unwrap();
        let m = |k, n: &str, v: &str| Matcher::new(k, n, v).unwrap();
        use MatchType::*;
        let cases: Vec<(Vec<Matcher>, Vec<usize>)> = vec![
            (vec![m(Equal, "a", "1")], vec![0, 1]),
            (vec![m(Equal, "a", "1"), m(Equal, "b", "")], vec![0]),
            (vec![m(NotEqual, "a", "1")], vec![2, 3]),
            (vec![m(NotEqual, "b", "x")], vec![0, 2]),
            (vec![m(Regex, "b", "x|y")], vec![1, 2, 3]),
            (vec![m(Regex, "b", ".+")], vec![1, 2, 3]),
            (vec![m(NotRegex, "b", "x")], vec![0, 2]),
            (vec![m(Regex, "b", "x|")], vec![0, 1, 3]),
            (vec![m(Regex, "a", "1|2"), m(NotEqual, "b", "")], vec![1, 2]),
            (vec![m(Equal, "c", "")], vec![0, 1, 2]),
            (vec![m(Equal, "a", "nope")], vec![]),
            (vec![m(Equal, "nope", "x")], vec![]),
            (vec![m(Regex, "a", ".*")], vec![0, 1, 2, 3]),
            (vec![m(NotRegex, "a", "1|2")], vec![3]),
            (vec![m(Regex, "b", "x.*")], vec![1, 3]),
            (vec![m(NotEqual, "b", "x"), m(Regex, "a", "1|3")], vec![0]),
            (vec![m(Regex, "a", "[13]"), m(NotRegex, "c", ".+")], vec![0, 1]),
            (vec![], vec![]),
        ];
        for (ms, want) in cases {
            let want: Vec<u32> = want.iter().map(|&i| ids[i]).collect();
            assert_eq!(r.postings_for_matchers(&ms).unwrap(), want, "{ms:?}");
        }
    }

    #[test]
    fn extreme_times_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index");
        let chunks = vec![
            ChunkRef { min_time: i64::MIN, max_time: -1, chunk_ref: 8 },
            ChunkRef { min_time: 0, max_time: 0, chunk_ref: 8 },
            ChunkRef { min_time: 1, max_time: i64::MAX, chunk_ref: u64::MAX },
        ];
        let l = Labels::from_pairs([("a", "1")]);
        write_index(&p, &[(l.clone(), chunks.clone())]);
        let r = IndexReader::open(&p).unwrap();
        let id = r.all_postings().unwrap()[0];
        assert_eq!(r.series(id).unwrap(), (l, chunks));
    }

    #[test]
    fn versions() {
        let dir = tempfile::tempdir().unwrap();
        sample_index(dir.path());
        let p = dir.path().join("index");
        let mut b = std::fs::read(&p).unwrap();
        for (v, ok) in [(1u8, false), (2, true), (3, true), (4, false)] {
            b[4] = v;
            let r = IndexReader::from_bytes(&p, b.clone().into());
            assert_eq!(r.is_ok(), ok, "version {v}");
            if let Ok(r) = r {
                assert_eq!(r.version(), v);
                assert_eq!(r.all_postings().unwrap().len(), 4);
            }
        }
    }

    #[test]
    fn writer_rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index");
        assert!(matches!(IndexWriter::new(&p, ["b", "a"]), Err(TsdbError::InvalidArgument(_))));
        let mut w = IndexWriter::new(&p, ["1", "2", "a"]).unwrap();
        let l1 = Labels::from_pairs([("a", "1")]);
        let l2 = Labels::from_pairs([("a", "2")]);
        w.add_series(&l2, &[]).unwrap();
        assert!(w.add_series(&l1, &[]).is_err());
        assert!(w.add_series(&Labels::from_pairs([("x", "1")]), &[]).is_err());
        let c = |a, b, r| ChunkRef { min_time: a, max_time: b, chunk_ref: r };
        let mut w = IndexWriter::new(&p, ["1", "2", "a"]).unwrap();
        assert!(w.add_series(&l1, &[c(5, 4, 8)]).is_err());
        let mut w = IndexWriter::new(&p, ["1", "2", "a"]).unwrap();
        assert!(w.add_series(&l1, &[c(1, 4, 8), c(4, 5, 9)]).is_err());
        let mut w = IndexWriter::new(&p, ["1", "2", "a"]).unwrap();
        assert!(w.add_series(&l1, &[c(1, 4, 8), c(5, 5, 7)]).is_err());
    }

    #[test]
    fn every_flipped_byte_is_an_error_or_harmless() {
        let dir = tempfile::tempdir().unwrap();
        sample_index(dir.path());
        let p = dir.path().join("index");
        let orig = std::fs::read(&p).unwrap();
        for i in 0..orig.len() {
            let mut b = orig.clone();
            b[i] ^= 0x55;
            match IndexReader::from_bytes(&p, b.into()) {
                Err(TsdbError::Corrupt { path, offset, .. }) => {
                    assert_eq!(path, p);
                    assert!(offset <= orig.len() as u64);
                }
                Err(e) => panic!("byte {i}: unexpected error {e}"),
                Ok(r) => {
                    // Series and postings are checked when read.
                    let mut bad = false;
                    for (n, v) in [("a", "1"), ("a", "2"), ("a", "3"), ("b", "x"), ("b", "y"), ("c", "z"), ("", "")] {
                        match r.postings(n, v) {
                            Ok(ids) => {
                                for id in ids {
                                    bad |= r.series(id).is_err();
                                }
                            }
                            Err(TsdbError::Corrupt { .. }) => bad = true,
                            Err(e) => panic!("byte {i}: {e}"),
                        }
                    }
                    // Only padding bytes may be flipped without any error.
                    if !bad {
                        assert_eq!(orig[i], 0, "byte {i} flipped without detection");
                    }
                }
            }
        }
        for n in [0, 5, 40, orig.len() - 1] {
            assert!(IndexReader::from_bytes(&p, orig[..n].to_vec().into()).is_err());
        }
    }
}
