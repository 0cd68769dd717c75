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
        let off = off as usize;
        let end = self.data.len() - TOC_SIZE;
        decode_postings_list(&self.path, &self.data[off.min(end)..end], off)
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

    /// IDs of the series selected by all `matchers`, with Prometheus's semantics (see
    /// [`PostingsPlan`]): postings lists are read as the plan's evaluation needs them.
    pub fn postings_for_matchers(&self, matchers: &[Matcher]) -> Result<Vec<u32>> {
        let plan = PostingsPlan::new(matchers, |name| Ok(self.label_values(name)))?;
        plan.evaluate(|name, value| self.postings(name, value))
    }

    /// The labels and chunk references of series `id`.
    pub fn series(&self, id: u32) -> Result<(Labels, Vec<ChunkRef>)> {
        let mut chunks = Vec::new();
        let labels = self.series_into(id, &mut chunks)?;
        Ok((labels, chunks))
    }

    /// Like [`IndexReader::series`], reusing `chunks`' allocation.
    pub fn series_into(&self, id: u32, chunks: &mut Vec<ChunkRef>) -> Result<Labels> {
        let off = u64::from(id) * 16;
        if off < self.toc.series || off >= self.series_end {
            chunks.clear();
            return Err(TsdbError::corrupt_at(
                &self.path,
                off,
                format!("series reference {id} outside series section"),
            ));
        }
        let off = off as usize;
        let (labels, _) = decode_series_entry(
            &self.path,
            &self.data[off..self.series_end as usize],
            off,
            |r| self.symbol(r),
            chunks,
        )?;
        Ok(labels)
    }
}

/// Decodes the postings list (`len | count | ids… | crc`) at the start of `buf`, which
/// lies at file offset `base` (bytes after the list are ignored): checks the CRC, the
/// count and that the IDs ascend strictly. `path` names the file in errors.
pub fn decode_postings_list(path: &Path, buf: &[u8], base: usize) -> Result<Vec<u32>> {
    let c = |e| TsdbError::corrupt(path, e);
    let mut d = Decbuf::with_base(buf, base);
    let len = d.be32().map_err(c)? as usize;
    let body_at = base + 4;
    let body = d.bytes(len).map_err(c)?;
    let want = d.be32().map_err(c)?;
    let got = crc32c(body);
    if !checksum_ok(want, got) {
        return Err(TsdbError::corrupt_at(
            path,
            (body_at + len) as u64,
            format!("postings list checksum mismatch: stored {want:#010x}, computed {got:#010x}"),
        ));
    }
    let mut d = Decbuf::with_base(body, body_at);
    let n = d.be32().map_err(c)? as usize;
    if d.remaining() != n.saturating_mul(4) {
        return Err(TsdbError::corrupt_at(path, body_at as u64, "postings count does not match list length"));
    }
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id_at = d.offset();
        let id = d.be32().map_err(c)?;
        if ids.last().is_some_and(|&p| p >= id) {
            return Err(TsdbError::corrupt_at(path, id_at as u64, "postings not strictly ascending"));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Bytes the series entry at the start of `buf` occupies (length prefix, body and CRC),
/// read from its length prefix alone; `None` when `buf` is too short to hold the prefix.
/// Lets a reader holding part of an index tell whether an entry is complete.
pub fn series_entry_size(buf: &[u8]) -> Option<usize> {
    let mut d = Decbuf::new(buf);
    let len = d.uvarint().ok()?;
    usize::try_from(len).ok()?.checked_add(d.pos())?.checked_add(4)
}

/// Decodes the series entry at the start of `buf` (file offset `base`; bytes after the
/// entry are ignored) into its labels, resolving symbol references with `symbol`, and its
/// chunk references into `chunks`. Checks the CRC, label order and that nothing trails
/// the chunk list. Returns the labels and the entry's size in bytes.
pub fn decode_series_entry<'s>(
    path: &Path,
    buf: &[u8],
    base: usize,
    symbol: impl Fn(u32) -> Result<&'s str>,
    chunks: &mut Vec<ChunkRef>,
) -> Result<(Labels, usize)> {
    chunks.clear();
    let c = |e| TsdbError::corrupt(path, e);
    let mut d = Decbuf::with_base(buf, base);
    let len = d.uvarint_len().map_err(c)?;
    let body_at = d.offset();
    let body = d.bytes(len).map_err(c)?;
    let want = d.be32().map_err(c)?;
    let size = d.pos();
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
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(n.min(body.len()));
    for _ in 0..n {
        let at = d.offset() as u64;
        let nr = d.uvarint32().map_err(c)?;
        let vr = d.uvarint32().map_err(c)?;
        let bad = |e: TsdbError| match e {
            TsdbError::Corrupt { what, .. } => TsdbError::corrupt_at(path, at, what),
            e => e,
        };
        let name = symbol(nr).map_err(bad)?;
        let value = symbol(vr).map_err(bad)?;
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
    Ok((labels, size))
}

/// One operand of a [`PostingsPlan`]: every series, or the union of the postings lists of
/// some values of one label name (values absent from the index contribute nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostingsSet {
    /// The all-postings list (key `("", "")`).
    All,
    /// Union of the lists of `name=value` for each value.
    Values { name: String, values: Vec<String> },
}

/// How the postings of a set of matchers are computed, with Prometheus's semantics: a
/// matcher that accepts the empty string also selects series without the label, so it
/// is applied by subtracting the series it rejects; with only such matchers the result
/// is taken out of all series; with no matchers it is empty.
///
/// Planning needs only label values (the postings offset table), so a reader that
/// fetches postings lists from far away can learn every list it needs first
/// ([`PostingsPlan::keys`]), fetch them together, then [`PostingsPlan::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PostingsPlan {
    /// Intersected; when empty with no matchers, the result is empty.
    pub intersect: Vec<PostingsSet>,
    /// Subtracted from the intersection.
    pub subtract: Vec<PostingsSet>,
}

impl PostingsPlan {
    /// Plans `matchers`; `label_values(name)` lists the values of a label in the index.
    pub fn new<'v>(matchers: &[Matcher], mut label_values: impl FnMut(&str) -> Result<Vec<&'v str>>) -> Result<Self> {
        let mut plan = PostingsPlan::default();
        if matchers.is_empty() {
            return Ok(plan);
        }
        let must_be_set: std::collections::HashSet<&str> =
            matchers.iter().filter(|m| !m.matches_empty()).map(|m| m.name.as_str()).collect();
        let values_of = |name: &str, vs: Vec<&str>| PostingsSet::Values {
            name: name.to_string(),
            values: vs.into_iter().map(str::to_string).collect(),
        };
        for m in matchers {
            let is_not = matches!(m.kind, MatchType::NotEqual | MatchType::NotRegex);
            let intersecting = must_be_set.contains(m.name.as_str()) && !(is_not && m.matches_empty());
            if intersecting {
                // Series matching the value set of `m`.
                let set = match m.set_matches() {
                    Some(set) => values_of(&m.name, set),
                    None => values_of(&m.name, label_values(&m.name)?.into_iter().filter(|v| m.matches(v)).collect()),
                };
                plan.intersect.push(set);
            } else {
                // Series whose value of `m.name` is set and does not satisfy `m`.
                let set = match m.kind {
                    MatchType::NotEqual => Some(values_of(&m.name, vec![m.value.as_str()])),
                    MatchType::NotRegex => Matcher::new(MatchType::Regex, m.name.clone(), m.value.clone())
                        .ok()
                        .and_then(|inv| inv.set_matches().map(|set| values_of(&m.name, set))),
                    MatchType::Equal | MatchType::Regex => None,
                };
                let set = match set {
                    Some(s) => s,
                    None => values_of(&m.name, label_values(&m.name)?.into_iter().filter(|v| !m.matches(v)).collect()),
                };
                plan.subtract.push(set);
            }
        }
        if plan.intersect.is_empty() {
            plan.intersect.push(PostingsSet::All);
        }
        Ok(plan)
    }

    /// Every `(name, value)` whose postings list the evaluation may read, deduplicated;
    /// `("", "")` stands for all postings.
    pub fn keys(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for s in self.intersect.iter().chain(&self.subtract) {
            match s {
                PostingsSet::All => out.push((String::new(), String::new())),
                PostingsSet::Values { name, values } => out.extend(values.iter().map(|v| (name.clone(), v.clone()))),
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The series IDs selected, reading lists with `postings(name, value)` (`("", "")`:
    /// all series; unknown keys must give an empty list). Stops reading once the
    /// result is known to be empty.
    pub fn evaluate(&self, mut postings: impl FnMut(&str, &str) -> Result<Vec<u32>>) -> Result<Vec<u32>> {
        if self.intersect.is_empty() {
            return Ok(Vec::new());
        }
        let mut read = |s: &PostingsSet| -> Result<Vec<u32>> {
            match s {
                PostingsSet::All => postings("", ""),
                PostingsSet::Values { name, values } => {
                    let lists = values.iter().map(|v| postings(name, v)).collect::<Result<_>>()?;
                    Ok(merge(lists))
                }
            }
        };
        let mut its = Vec::with_capacity(self.intersect.len());
        for s in &self.intersect {
            let p = read(s)?;
            if p.is_empty() {
                return Ok(p);
            }
            its.push(p);
        }
        let mut out = intersect_all(its);
        for s in &self.subtract {
            if out.is_empty() {
                break;
            }
            out = difference(&out, &read(s)?);
        }
        Ok(out)
    }
}

/// `base + delta` with Go's wrapping int64 arithmetic, so any file Prometheus can write
/// (even with absurd time spans) reads back the same.
fn add_delta(base: i64, delta: u64) -> i64 {
    base.wrapping_add(delta as i64)
}
