//! Writes an index file in Prometheus's v2 layout without the legacy label indices.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use norn_model::Labels;

use super::{FORMAT_V2, INDEX_MAGIC, Toc};
use crate::chunks::ChunkRef;
use crate::encoding::{crc32c, put_be32, put_uvarint, put_uvarint_bytes, put_varint};
use crate::{Result, TsdbError};

/// Streams series into an index file; postings are collected in memory and written by
/// [`IndexWriter::finish`].
///
/// All symbols must be known up front because series refer to them by position in the
/// sorted symbol table, which comes first in the file.
#[derive(Debug)]
pub struct IndexWriter {
    path: PathBuf,
    w: BufWriter<File>,
    pos: u64,
    symbols: Vec<String>,
    /// Symbol → reference; hashing beats binary search over long shared prefixes.
    symbol_refs: HashMap<String, u32>,
    /// (name symbol, value symbol) → series IDs; symbol order is string order, so this map
    /// iterates in the order the postings must be written.
    postings: BTreeMap<(u32, u32), Vec<u32>>,
    all: Vec<u32>,
    legacy_label_indices: bool,
    last: Option<Labels>,
    last_chunk_ref: u64,
    toc: Toc,
    buf: Vec<u8>,
}

impl IndexWriter {
    /// Creates the index at `path` and writes the header and symbol table. `symbols`
    /// must be every label name and value the series will use, sorted and unique.
    pub fn new<S: AsRef<str>>(path: &Path, symbols: impl IntoIterator<Item = S>) -> Result<Self> {
        let symbols: Vec<String> = symbols.into_iter().map(|s| s.as_ref().to_string()).collect();
        if let Some(w) = symbols.windows(2).find(|w| w[0] >= w[1]) {
            return Err(TsdbError::InvalidArgument(format!(
                "index symbols not sorted and unique: {:?} before {:?}",
                w[0], w[1]
            )));
        }
        let f = File::create(path).map_err(TsdbError::io("create", path))?;
        let symbol_refs = symbols.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();
        let mut iw = IndexWriter {
            path: path.to_path_buf(),
            w: BufWriter::with_capacity(1 << 20, f),
            pos: 0,
            symbols,
            symbol_refs,
            postings: BTreeMap::new(),
            all: Vec::new(),
            last: None,
            last_chunk_ref: 0,
            legacy_label_indices: false,
            toc: Toc::default(),
            buf: Vec::new(),
        };
        let mut hdr = INDEX_MAGIC.to_be_bytes().to_vec();
        hdr.push(FORMAT_V2);
        iw.write(&hdr)?;
        iw.toc.symbols = iw.pos;
        let mut body = Vec::new();
        put_be32(&mut body, iw.symbols.len() as u32);
        for s in &iw.symbols {
            put_uvarint_bytes(&mut body, s.as_bytes());
        }
        iw.write_section(&body)?;
        iw.toc.series = iw.pos;
        Ok(iw)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(TsdbError::io("write", &self.path))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Writes `len BE32 | body | CRC32C(body)`.
    fn write_section(&mut self, body: &[u8]) -> Result<()> {
        let len = u32::try_from(body.len())
            .map_err(|_| TsdbError::InvalidArgument(format!("index section of {} bytes exceeds 4 GiB", body.len())))?;
        self.write(&len.to_be_bytes())?;
        self.write(body)?;
        self.write(&crc32c(body).to_be_bytes())
    }

    fn pad(&mut self, align: u64) -> Result<()> {
        let n = (align - self.pos % align) % align;
        if n > 0 {
            self.write(&vec![0u8; n as usize])?;
        }
        Ok(())
    }

    fn symbol_ref(&self, s: &str) -> Result<u32> {
        self.symbol_refs
            .get(s)
            .copied()
            .ok_or_else(|| TsdbError::InvalidArgument(format!("symbol {s:?} not in the index symbol table")))
    }

    /// Appends a series (labels strictly greater than the previous series'; chunks sorted,
    /// non-overlapping, with non-decreasing refs) and returns its ID.
    pub fn add_series(&mut self, labels: &Labels, chunks: &[ChunkRef]) -> Result<u32> {
        if let Some(prev) = &self.last
            && prev >= labels
        {
            return Err(TsdbError::InvalidArgument(format!("series {labels} added out of order after {prev}")));
        }
        for (i, c) in chunks.iter().enumerate() {
            if c.min_time > c.max_time {
                return Err(TsdbError::InvalidArgument(format!(
                    "series {labels}: chunk [{}, {}] has min time after max time",
                    c.min_time, c.max_time
                )));
            }
            if c.chunk_ref < self.last_chunk_ref {
                return Err(TsdbError::InvalidArgument(format!("series {labels}: chunk references go backwards")));
            }
            self.last_chunk_ref = c.chunk_ref;
            if i > 0 && c.min_time <= chunks[i - 1].max_time {
                return Err(TsdbError::InvalidArgument(format!(
                    "series {labels}: chunks overlap or are unsorted ({} <= {})",
                    c.min_time,
                    chunks[i - 1].max_time
                )));
            }
        }
        self.pad(16)?;
        let id = u32::try_from(self.pos / 16)
            .map_err(|_| TsdbError::InvalidArgument("index exceeds 64 GiB of series".to_string()))?;
        let mut body = std::mem::take(&mut self.buf);
        body.clear();
        put_uvarint(&mut body, labels.len() as u64);
        for (n, v) in labels.iter() {
            let (nr, vr) = (self.symbol_ref(n)?, self.symbol_ref(v)?);
            put_uvarint(&mut body, u64::from(nr));
            put_uvarint(&mut body, u64::from(vr));
            self.postings.entry((nr, vr)).or_default().push(id);
        }
        put_uvarint(&mut body, chunks.len() as u64);
        if let Some(c0) = chunks.first() {
            put_varint(&mut body, c0.min_time);
            put_uvarint(&mut body, c0.max_time.wrapping_sub(c0.min_time) as u64);
            put_uvarint(&mut body, c0.chunk_ref);
            for w in chunks.windows(2) {
                let (p, c) = (&w[0], &w[1]);
                put_uvarint(&mut body, c.min_time.wrapping_sub(p.max_time) as u64);
                put_uvarint(&mut body, c.max_time.wrapping_sub(c.min_time) as u64);
                put_varint(&mut body, c.chunk_ref.wrapping_sub(p.chunk_ref) as i64);
            }
        }
        let mut len = Vec::with_capacity(5);
        put_uvarint(&mut len, body.len() as u64);
        self.write(&len)?;
        self.write(&body)?;
        self.write(&crc32c(&body).to_be_bytes())?;
        self.buf = body;
        self.all.push(id);
        self.last = Some(labels.clone());
        Ok(id)
    }

    fn write_postings_list(&mut self, ids: &[u32]) -> Result<u64> {
        self.pad(4)?;
        let at = self.pos;
        let mut body = Vec::with_capacity(4 + 4 * ids.len());
        put_be32(&mut body, ids.len() as u32);
        for &id in ids {
            put_be32(&mut body, id);
        }
        self.write_section(&body)?;
        Ok(at)
    }

    /// Also write the label indices and label offset table that Prometheus ≤ 3.6 wrote
    /// (no reader needs them; useful for byte-identity with older Prometheus).
    pub fn set_legacy_label_indices(&mut self, on: bool) {
        self.legacy_label_indices = on;
    }

    /// Writes the postings, the postings offset table and the TOC, then fsyncs the file.
    pub fn finish(mut self) -> Result<()> {
        // Without label indices both of their TOC entries point where they would start.
        self.toc.label_indices = self.pos;
        let postings = std::mem::take(&mut self.postings);
        let mut label_index_offsets = Vec::new();
        if self.legacy_label_indices {
            let mut names: Vec<(u32, Vec<u32>)> = Vec::new();
            for &(n, v) in postings.keys() {
                match names.last_mut() {
                    Some((last, vals)) if *last == n => vals.push(v),
                    _ => names.push((n, vec![v])),
                }
            }
            for (n, vals) in names {
                self.pad(4)?;
                label_index_offsets.push((n, self.pos));
                let mut body = Vec::with_capacity(8 + 4 * vals.len());
                put_be32(&mut body, 1);
                put_be32(&mut body, vals.len() as u32);
                for v in vals {
                    put_be32(&mut body, v);
                }
                self.write_section(&body)?;
            }
        }
        self.toc.postings = self.pos;
        let mut table = Vec::new();
        let all = std::mem::take(&mut self.all);
        let at = self.write_postings_list(&all)?;
        let mut count = 1u32;
        add_table_entry(&mut table, "", "", at);
        for ((n, v), ids) in &postings {
            let at = self.write_postings_list(ids)?;
            let (n, v) = (&self.symbols[*n as usize], &self.symbols[*v as usize]);
            add_table_entry(&mut table, n, v, at);
            count += 1;
        }
        self.toc.label_indices_table = self.pos;
        if self.legacy_label_indices {
            let mut body = Vec::new();
            put_be32(&mut body, label_index_offsets.len() as u32);
            for (n, off) in &label_index_offsets {
                put_uvarint(&mut body, 1);
                put_uvarint_bytes(&mut body, self.symbols[*n as usize].as_bytes());
                put_uvarint(&mut body, *off);
            }
            self.write_section(&body)?;
        }
        self.toc.postings_table = self.pos;
        let mut body = Vec::with_capacity(4 + table.len());
        put_be32(&mut body, count);
        body.extend_from_slice(&table);
        self.write_section(&body)?;
        let toc = self.toc.encode();
        self.write(&toc)?;
        let f = self.w.into_inner().map_err(|e| TsdbError::Io {
            op: "flush",
            path: self.path.clone(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(TsdbError::io("fsync", &self.path))
    }
}

fn add_table_entry(out: &mut Vec<u8>, name: &str, value: &str, offset: u64) {
    put_uvarint(out, 2);
    put_uvarint_bytes(out, name.as_bytes());
    put_uvarint_bytes(out, value.as_bytes());
    put_uvarint(out, offset);
}
