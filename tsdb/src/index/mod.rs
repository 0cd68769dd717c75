//! The block index (spec §3): symbols, series with their chunk references, postings lists
//! and the postings offset table, closed by a table of contents.
//!
//! [`IndexWriter`] writes version 2 in the layout of Prometheus ≥ 3.7 (no legacy label
//! index sections); [`IndexReader`] reads versions 2 and 3, with or without the legacy
//! sections.

pub mod postings;
mod reader;
mod writer;

pub use reader::IndexReader;
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

/// Absolute offsets of the index sections; zero means absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Toc {
    pub symbols: u64,
    pub series: u64,
    pub label_indices: u64,
    pub label_indices_table: u64,
    pub postings: u64,
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
        if crc32c(&b[..48]) != want {
            return Err(DecodeError { what: "table of contents checksum mismatch", offset: base + 48 });
        }
        Ok(toc)
    }
}
