//! Reads a memory-mapped index, checking every length, offset and checksum it touches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use norn_model::{Labels, MatchType, Matcher};

use super::postings::{difference, intersect_all, merge};
use super::{FORMAT_V2, FORMAT_V3, HEADER_SIZE, INDEX_MAGIC, TOC_SIZE, Toc, checksum_ok};
use crate::chunks::ChunkRef;
use crate::encoding::{Decbuf, DecodeError, crc32c};
use crate::mmap::map_file;
use crate::{Result, TsdbError};

/// An opened index. Symbols and the postings offset table are indexed at open; series
/// and postings lists are decoded (and checksummed) on each access.
#[derive(Debug)]
pub struct IndexReader {
    path: PathBuf,
    data: Bytes,
    version: u8,
    toc: Toc,
    /// File offset of each symbol's length prefix, by symbol reference.
    symbols: Vec<u32>,
    /// Label name → (value, file offset of its postings list), values ascending.
    postings: BTreeMap<String, Vec<(String, u64)>>,
    all_postings: Option<u64>,
    /// End of the region series may occupy.
    series_end: u64,
}

impl IndexReader {
    /// Maps and validates the index file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let data = map_file(path)?;
        Self::from_bytes(path, data)
    }

    /// Validates an index held in memory; `path` is used in errors.
    pub fn from_bytes(path: &Path, data: Bytes) -> Result<Self> {
        let c = |e: DecodeError| TsdbError::corrupt(path, e);
        if data.len() < HEADER_SIZE + TOC_SIZE {
            return Err(TsdbError::corrupt_at(path, 0, format!("index too short ({} bytes)", data.len())));
        }
        let mut d = Decbuf::new(&data);
        let magic = d.be32().map_err(c)?;
        if magic != INDEX_MAGIC {
            return Err(TsdbError::corrupt_at(path, 0, format!("invalid index magic {magic:#010x}")));
        }
        let version = d.u8().map_err(c)?;
        if version != FORMAT_V2 && version != FORMAT_V3 {
            return Err(TsdbError::corrupt_at(path, 4, format!("unsupported index version {version}")));
        }
        let toc = Toc::decode(&data).map_err(c)?;
        let toc_at = (data.len() - TOC_SIZE) as u64;
        for (what, off) in [
            ("symbols", toc.symbols),
            ("series", toc.series),
            ("label indices", toc.label_indices),
            ("label indices table", toc.label_indices_table),
            ("postings", toc.postings),
            ("postings offset table", toc.postings_table),
        ] {
            if off > toc_at {
                return Err(TsdbError::corrupt_at(path, toc_at, format!("{what} offset {off} beyond end of index")));
            }
        }
        if toc.symbols < HEADER_SIZE as u64 || toc.postings_table < HEADER_SIZE as u64 {
            return Err(TsdbError::corrupt_at(path, toc_at, "table of contents lacks symbols or postings table"));
        }
        let mut r = IndexReader {
            path: path.to_path_buf(),
            data: data.clone(),
            version,
            toc,
            symbols: Vec::new(),
            postings: BTreeMap::new(),
            all_postings: None,
            series_end: toc_at,
        };
        r.read_symbols()?;
        r.read_postings_table()?;
        Ok(r)
    }

    /// Reads the `len | body | crc` section at `off`, verifying the CRC; returns the body
    /// and its file offset.
    fn section(&self, off: u64, what: &'static str) -> Result<(&[u8], usize)> {
        let off = off as usize;
        let end = self.data.len() - TOC_SIZE;
        let mut d = Decbuf::with_base(&self.data[off.min(end)..end], off);
        let len = d.be32().map_err(|e| TsdbError::corrupt(&self.path, e))? as usize;
        let body_at = off + 4;
        let body = d.bytes(len).map_err(|e| TsdbError::corrupt(&self.path, e))?;
        let want = d.be32().map_err(|e| TsdbError::corrupt(&self.path, e))?;
        let got = crc32c(body);
        if !checksum_ok(want, got) {
            return Err(TsdbError::corrupt_at(
                &self.path,
                (body_at + len) as u64,
                format!("{what} checksum mismatch: stored {want:#010x}, computed {got:#010x}"),
            ));
        }
        Ok((body, body_at))
    }

    fn read_symbols(&mut self) -> Result<()> {
        let (body, at) = self.section(self.toc.symbols, "symbol table")?;
        let mut d = Decbuf::with_base(body, at);
        let c = |e| TsdbError::corrupt(&self.path, e);
        let count = d.be32().map_err(c)? as usize;
        if count > d.remaining() {
            return Err(TsdbError::corrupt_at(&self.path, at as u64, "symbol count exceeds table size"));
        }
        let mut offs = Vec::with_capacity(count);
        for _ in 0..count {
            offs.push(d.offset() as u32);
            d.uvarint_str().map_err(c)?;
        }
        if d.remaining() != 0 {
            return Err(TsdbError::corrupt_at(&self.path, d.offset() as u64, "trailing bytes in symbol table"));
        }
        self.symbols = offs;
        Ok(())
    }

    fn read_postings_table(&mut self) -> Result<()> {
        let data = self.data.clone();
        let (body, at) = self.section(self.toc.postings_table, "postings offset table")?;
        // Re-borrow from our own handle on the mapping so `self` can be filled in below.
        let body = &data[at..at + body.len()];
        let path = self.path.clone();
        let c = |e| TsdbError::corrupt(&path, e);
        let mut d = Decbuf::with_base(body, at);
        let count = d.be32().map_err(c)?;
        let limit = self.data.len() as u64 - TOC_SIZE as u64;
        let mut prev: Option<(&str, &str)> = None;
        for _ in 0..count {
            let entry_at = d.offset() as u64;
            let keys = d.uvarint().map_err(c)?;
            if keys != 2 {
                return Err(TsdbError::corrupt_at(&path, entry_at, format!("postings key count {keys}, want 2")));
            }
            let name = d.uvarint_str().map_err(c)?;
            let value = d.uvarint_str().map_err(c)?;
            let off = d.uvarint().map_err(c)?;
            if off >= limit {
                return Err(TsdbError::corrupt_at(&path, entry_at, format!("postings offset {off} beyond index")));
            }
            if let Some(p) = prev
                && p >= (name, value)
            {
                return Err(TsdbError::corrupt_at(&path, entry_at, "postings offset table not sorted"));
            }
            prev = Some((name, value));
            if name.is_empty() && value.is_empty() {
                self.all_postings = Some(off);
            } else {
                self.postings.entry(name.to_string()).or_default().push((value.to_string(), off));
            }
        }
        if d.remaining() != 0 {
            return Err(TsdbError::corrupt_at(&path, d.offset() as u64, "trailing bytes in postings offset table"));
        }
        Ok(())
    }

    /// The file this index was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The table of contents.
    pub fn toc(&self) -> &Toc {
        &self.toc
    }

    /// Size of the index file in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// Number of symbols.
    pub fn num_symbols(&self) -> usize {
        self.symbols.len()
    }

    /// The symbol with reference `r`.
    pub fn symbol(&self, r: u32) -> Result<&str> {
        let Some(&off) = self.symbols.get(r as usize) else {
            return Err(TsdbError::corrupt_at(&self.path, 0, format!("unknown symbol reference {r}")));
        };
        let off = off as usize;
        Decbuf::with_base(&self.data[off..], off).uvarint_str().map_err(|e| TsdbError::corrupt(&self.path, e))
    }

    /// All symbols, in order.
    pub fn symbols(&self) -> impl Iterator<Item = Result<&str>> {
        (0..self.symbols.len() as u32).map(|r| self.symbol(r))
    }

    /// Label names with at least one series, ascending.
    pub fn label_names(&self) -> Vec<&str> {
        self.postings.keys().map(String::as_str).collect()
    }

    /// Values of label `name`, ascending (empty if the name is unknown).
    pub fn label_values(&self, name: &str) -> Vec<&str> {
        self.postings.get(name).map(|v| v.iter().map(|(v, _)| v.as_str()).collect()).unwrap_or_default()
    }

    fn read_postings_at(&self, off: u64) -> Result<Vec<u32>> {
        let (body, at) = self.section(off, "postings list")?;
        let c = |e| TsdbError::corrupt(&self.path, e);
        let mut d = Decbuf::with_base(body, at);
        let n = d.be32().map_err(c)? as usize;
        if d.remaining() != n.saturating_mul(4) {
            return Err(TsdbError::corrupt_at(&self.path, at as u64, "postings count does not match list length"));
        }
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id_at = d.offset();
            let id = d.be32().map_err(c)?;
            if ids.last().is_some_and(|&p| p >= id) {
                return Err(TsdbError::corrupt_at(&self.path, id_at as u64, "postings not strictly ascending"));
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// IDs of the series with label `name="value"`, ascending.
    pub fn postings(&self, name: &str, value: &str) -> Result<Vec<u32>> {
        if name.is_empty() && value.is_empty() {
            return self.all_postings();
        }
        let Some(vals) = self.postings.get(name) else { return Ok(Vec::new()) };
        match vals.binary_search_by(|(v, _)| v.as_str().cmp(value)) {
            Ok(i) => self.read_postings_at(vals[i].1),
            Err(_) => Ok(Vec::new()),
        }
    }

    /// IDs of every series.
    pub fn all_postings(&self) -> Result<Vec<u32>> {
        match self.all_postings {
            Some(off) => self.read_postings_at(off),
            None => Ok(Vec::new()),
        }
    }

    /// Union of the postings of the values of `name` for which `keep` holds.
    fn postings_where(&self, name: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<u32>> {
        let Some(vals) = self.postings.get(name) else { return Ok(Vec::new()) };
        let lists =
            vals.iter().filter(|(v, _)| keep(v)).map(|(_, off)| self.read_postings_at(*off)).collect::<Result<_>>()?;
        Ok(merge(lists))
    }

    fn postings_for_values(&self, name: &str, values: &[&str]) -> Result<Vec<u32>> {
        let lists = values.iter().map(|v| self.postings(name, v)).collect::<Result<_>>()?;
        Ok(merge(lists))
    }

    /// Series matching the value set of `m` (which must not match the empty string in
    /// this use, or the caller handles the unset case).
    fn postings_matching(&self, m: &Matcher) -> Result<Vec<u32>> {
        if let Some(set) = m.set_matches() {
            return self.postings_for_values(&m.name, &set);
        }
        self.postings_where(&m.name, |v| m.matches(v))
    }

    /// Series whose value of `m.name` is set and does not satisfy `m`.
    fn postings_not_matching(&self, m: &Matcher) -> Result<Vec<u32>> {
        match m.kind {
            MatchType::NotEqual => return self.postings(&m.name, &m.value),
            MatchType::NotRegex => {
                if let Ok(inv) = Matcher::new(MatchType::Regex, m.name.clone(), m.value.clone())
                    && let Some(set) = inv.set_matches()
                {
                    return self.postings_for_values(&m.name, &set);
                }
            }
            MatchType::Equal | MatchType::Regex => {}
        }
        self.postings_where(&m.name, |v| !m.matches(v))
    }

    /// IDs of the series selected by all `matchers`, with Prometheus's semantics: a
    /// matcher that accepts the empty string also selects series without the label, so
    /// it is applied by subtracting the series it rejects. With only such matchers the
    /// result is taken out of all series; with no matchers it is empty.
    pub fn postings_for_matchers(&self, matchers: &[Matcher]) -> Result<Vec<u32>> {
        if matchers.is_empty() {
            return Ok(Vec::new());
        }
        let must_be_set: std::collections::HashSet<&str> =
            matchers.iter().filter(|m| !m.matches_empty()).map(|m| m.name.as_str()).collect();
        let mut its = Vec::new();
        let mut nots = Vec::new();
        for m in matchers {
            let is_not = matches!(m.kind, MatchType::NotEqual | MatchType::NotRegex);
            let intersecting = must_be_set.contains(m.name.as_str()) && !(is_not && m.matches_empty());
            if intersecting {
                let p = self.postings_matching(m)?;
                if p.is_empty() {
                    return Ok(p);
                }
                its.push(p);
            } else {
                nots.push(self.postings_not_matching(m)?);
            }
        }
        if its.is_empty() {
            its.push(self.all_postings()?);
        }
        let mut out = intersect_all(its);
        for n in &nots {
            if out.is_empty() {
                break;
            }
            out = difference(&out, n);
        }
        Ok(out)
    }

    /// The labels and chunk references of series `id`.
    pub fn series(&self, id: u32) -> Result<(Labels, Vec<ChunkRef>)> {
        let mut chunks = Vec::new();
        let labels = self.series_into(id, &mut chunks)?;
        Ok((labels, chunks))
    }

    /// Like [`IndexReader::series`], reusing `chunks`' allocation.
    pub fn series_into(&self, id: u32, chunks: &mut Vec<ChunkRef>) -> Result<Labels> {
        chunks.clear();
        let off = u64::from(id) * 16;
        if off < self.toc.series || off >= self.series_end {
            return Err(TsdbError::corrupt_at(
                &self.path,
                off,
                format!("series reference {id} outside series section"),
            ));
        }
        let off = off as usize;
        let path = &self.path;
        let c = |e| TsdbError::corrupt(path, e);
        let mut d = Decbuf::with_base(&self.data[off..self.series_end as usize], off);
        let len = d.uvarint_len().map_err(c)?;
        let body_at = d.offset();
        let body = d.bytes(len).map_err(c)?;
        let want = d.be32().map_err(c)?;
        let got = crc32c(body);
        if !checksum_ok(want, got) {
            return Err(TsdbError::corrupt_at(
                path,
                (body_at + len) as u64,
                format!("series checksum mismatch: stored {want:#010x}, computed {got:#010x}"),
            ));
        }
        let mut d = Decbuf::with_base(body, body_at);
        let n = d.uvarint_len().map_err(c)?;
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(n);
        for _ in 0..n {
            let at = d.offset() as u64;
            let nr = d.uvarint32().map_err(c)?;
            let vr = d.uvarint32().map_err(c)?;
            let bad = |e: TsdbError| match e {
                TsdbError::Corrupt { what, .. } => TsdbError::corrupt_at(path, at, what),
                e => e,
            };
            let name = self.symbol(nr).map_err(bad)?;
            let value = self.symbol(vr).map_err(bad)?;
            if pairs.last().is_some_and(|(p, _)| *p >= name) || name.is_empty() {
                return Err(TsdbError::corrupt_at(path, at, "series labels not sorted or empty name"));
            }
            pairs.push((name, value));
        }
        let labels = Labels::from_sorted_unchecked_iter(pairs.into_iter());
        let nchunks = d.uvarint_len().map_err(c)?;
        if nchunks > 0 {
            let min_time = d.varint().map_err(c)?;
            let max_time = add_delta(min_time, d.uvarint().map_err(c)?);
            let chunk_ref = d.uvarint().map_err(c)?;
            chunks.push(ChunkRef { min_time, max_time, chunk_ref });
            for _ in 1..nchunks {
                let prev = chunks[chunks.len() - 1];
                let min_time = add_delta(prev.max_time, d.uvarint().map_err(c)?);
                let max_time = add_delta(min_time, d.uvarint().map_err(c)?);
                let chunk_ref = prev.chunk_ref.wrapping_add(d.varint().map_err(c)? as u64);
                chunks.push(ChunkRef { min_time, max_time, chunk_ref });
            }
        }
        if d.remaining() != 0 {
            return Err(TsdbError::corrupt_at(path, d.offset() as u64, "trailing bytes in series entry"));
        }
        Ok(labels)
    }
}

/// `base + delta` with Go's wrapping int64 arithmetic, so any file Prometheus can write
/// (even with absurd time spans) reads back the same.
fn add_delta(base: i64, delta: u64) -> i64 {
    base.wrapping_add(delta as i64)
}
