//! Thanos's binary *index-header* (format version 1): the parts of a block's index the
//! gateway needs before any query — the symbol table and the postings offset table —
//! copied from the index in the bucket with ranged GETs, so the index itself (often GBs)
//! never lands on local disk.
//!
//! ```text
//! magic 0xBAAAD792 <4b> | version 1 <1b> | index version <1b> | index postings offset table ref <8b>
//! symbol table (exact copy from the index)
//! postings offset table (exact copy from the index)
//! TOC: ref(symbols) <8b> | ref(postings offset table) <8b> | CRC32C <4b>
//! ```
//!
//! [`IndexHeader`] maps the file, checks it whole once (magic, versions, TOC and section
//! CRCs, bounds, order) and keeps in memory only every 32nd symbol offset and every
//! `sampling`-th postings offset per label name, as Thanos's binary reader does; lookups
//! scan the mapped file from the nearest sample.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use norn_objstore::Bucket;
use norn_tsdb::TsdbError;
use norn_tsdb::encoding::{Decbuf, DecodeError, crc32c, put_be64};
use norn_tsdb::index::{FORMAT_V2, FORMAT_V3, HEADER_SIZE, INDEX_MAGIC, TOC_SIZE, Toc};

/// Magic number at the start of an index-header.
pub const MAGIC: u32 = 0xBAAA_D792;
/// The index-header format version written and read.
pub const VERSION: u8 = 1;
/// Magic, version, index version and the index's postings offset table reference.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 8;
/// References of the two sections and their CRC32C.
pub const TOC_LEN: usize = 8 + 8 + 4;
/// File name under `<data-dir>/<ulid>/`.
pub const FILENAME: &str = "index-header";
/// Postings offsets kept in memory: every 32nd per label name (Thanos's default of
/// `--store.index-header-posting-offsets-in-mem-sampling`).
pub const DEFAULT_POSTINGS_SAMPLING: usize = 32;
/// Symbol offsets kept in memory: every 32nd (Prometheus's and Thanos's factor).
const SYMBOL_SAMPLING: usize = 32;

/// Why an index-header could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("{0}")]
    Bucket(#[from] norn_objstore::Error),
    #[error(transparent)]
    Corrupt(#[from] TsdbError),
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: std::io::Error },
}

fn corrupt(path: &Path, offset: u64, what: impl Into<String>) -> HeaderError {
    HeaderError::Corrupt(TsdbError::corrupt_at(path, offset, what))
}

/// Checks the `len | body | crc` section at the start of `buf` (file offset `base`) and
/// returns the whole section (length prefix to CRC).
fn section<'a>(path: &Path, buf: &'a [u8], base: u64, what: &str) -> Result<&'a [u8], HeaderError> {
    let mut d = Decbuf::with_base(buf, base as usize);
    let c = |e: DecodeError| HeaderError::Corrupt(TsdbError::corrupt(path, e));
    let len = d.be32().map_err(c)? as usize;
    let body = d.bytes(len).map_err(c)?;
    let want = d.be32().map_err(c)?;
    let got = crc32c(body);
    if want != got {
        return Err(corrupt(
            path,
            base + 4 + len as u64,
            format!("{what} checksum mismatch: stored {want:#010x}, computed {got:#010x}"),
        ));
    }
    Ok(&buf[..len + 8])
}

/// Reads `range` of `key`, failing unless all of it came back.
async fn get_exact(bucket: &Bucket, key: &str, range: Range<u64>) -> Result<Bytes, HeaderError> {
    let want = range.end.saturating_sub(range.start);
    let b = bucket.get_range(key, range.clone()).await?;
    if b.len() as u64 != want {
        return Err(corrupt(
            Path::new(key),
            range.start,
            format!("ranged read of {want} bytes returned {} (index shorter than listed)", b.len()),
        ));
    }
    Ok(b)
}

/// Largest ranged GET while building a header (Thanos's `partitionSize`): memory holds
/// one piece however large the symbol or postings offset table.
pub const BUILD_PIECE: u64 = 8 * 1024 * 1024;

fn overlap(a: &Range<u64>, b: &Range<u64>) -> Range<u64> {
    a.start.max(b.start)..a.end.min(b.end).max(a.start.max(b.start))
}

/// A header file being written: bytes appended, GETs and bytes read counted.
struct Writer {
    f: tokio::fs::File,
    path: PathBuf,
    pos: u64,
    gets: u64,
    read: u64,
}

impl Writer {
    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> HeaderError {
        let path = self.path.display().to_string();
        move |source| HeaderError::Io { op, path, source }
    }

    async fn write(&mut self, b: &[u8]) -> Result<(), HeaderError> {
        use tokio::io::AsyncWriteExt;
        self.f.write_all(b).await.map_err(self.io("write"))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Copies `range` of the index at `key`, which starts with a `len | body | crc32c`
    /// section (what follows it in the range is copied unchecked, as Thanos copies it),
    /// in ranged GETs of at most `piece` bytes, checking the section's CRC on the way.
    async fn copy_section(
        &mut self,
        bucket: &Bucket,
        key: &str,
        range: Range<u64>,
        piece: u64,
        what: &str,
    ) -> Result<(), HeaderError> {
        let kp = Path::new(key);
        let total = range.end - range.start;
        let (mut prefix, mut stored) = ([0u8; 4], [0u8; 4]);
        let mut len: Option<u64> = None;
        let mut crc = 0u32;
        let mut pos = 0u64;
        while pos < total {
            let n = piece.max(1).min(total - pos);
            let b = get_exact(bucket, key, range.start + pos..range.start + pos + n).await?;
            self.gets += 1;
            self.read += n;
            let here = pos..pos + n;
            let slice = |r: &Range<u64>| &b[(r.start - pos) as usize..(r.end - pos) as usize];
            let p = overlap(&here, &(0..4));
            if !p.is_empty() {
                prefix[p.start as usize..p.end as usize].copy_from_slice(slice(&p));
            }
            if len.is_none() && here.end >= 4 {
                let l = u64::from(u32::from_be_bytes(prefix));
                if l + 8 > total {
                    return Err(corrupt(
                        kp,
                        range.start,
                        format!("{what} of {l} bytes runs past its span of {total} bytes"),
                    ));
                }
                len = Some(l);
            }
            if let Some(l) = len {
                crc = crc32c::crc32c_append(crc, slice(&overlap(&here, &(4..4 + l))));
                let c = overlap(&here, &(4 + l..8 + l));
                if !c.is_empty() {
                    let at = (c.start - 4 - l) as usize;
                    stored[at..at + (c.end - c.start) as usize].copy_from_slice(slice(&c));
                }
            }
            self.write(&b).await?;
            pos += n;
        }
        let Some(l) = len else {
            return Err(corrupt(kp, range.start, format!("{what} of {total} bytes is too short")));
        };
        let want = u32::from_be_bytes(stored);
        if want != crc {
            return Err(corrupt(
                kp,
                range.start + 4 + l,
                format!("{what} checksum mismatch: stored {want:#010x}, computed {crc:#010x}"),
            ));
        }
        Ok(())
    }
}

/// Builds the index-header of the index at `key` (`size` bytes, from the listing) into
/// `out`, byte for byte as Thanos's `WriteBinary` does: ranged GETs of the TOC and the
/// index header, then the symbol table with the padding after it (up to the series) and
/// the postings offset table with the index's TOC after it, each streamed to the file in
/// pieces of at most [`BUILD_PIECE`] bytes with its CRC checked on the way. The file is
/// written beside `out`, synced and renamed, so a crash never leaves half a header.
/// Returns the number of ranged GETs and the bytes they read.
pub async fn build(bucket: &Bucket, key: &str, size: u64, out: &Path) -> Result<(u64, u64), HeaderError> {
    build_in_pieces(bucket, key, size, out, BUILD_PIECE).await
}

/// [`build`] with ranged GETs of at most `piece` bytes.
pub async fn build_in_pieces(
    bucket: &Bucket,
    key: &str,
    size: u64,
    out: &Path,
    piece: u64,
) -> Result<(u64, u64), HeaderError> {
    let kp = Path::new(key);
    if size < (HEADER_SIZE + TOC_SIZE) as u64 {
        return Err(corrupt(kp, 0, format!("index too short ({size} bytes)")));
    }
    let toc_at = size - TOC_SIZE as u64;
    let tail = get_exact(bucket, key, toc_at..size).await?;
    let toc = Toc::decode(&tail).map_err(|e| {
        HeaderError::Corrupt(TsdbError::corrupt(kp, DecodeError { offset: e.offset + toc_at as usize, ..e }))
    })?;
    if toc.symbols < HEADER_SIZE as u64 || toc.symbols >= toc_at {
        return Err(corrupt(kp, toc_at, format!("symbol table offset {} outside the index", toc.symbols)));
    }
    if toc.postings_table <= toc.symbols || toc.postings_table >= toc_at {
        return Err(corrupt(
            kp,
            toc_at,
            format!("postings offset table offset {} outside the index", toc.postings_table),
        ));
    }
    let head = get_exact(bucket, key, 0..HEADER_SIZE as u64).await?;
    let mut d = Decbuf::new(&head);
    let c = |e: DecodeError| HeaderError::Corrupt(TsdbError::corrupt(kp, e));
    let magic = d.be32().map_err(c)?;
    if magic != INDEX_MAGIC {
        return Err(corrupt(kp, 0, format!("invalid index magic {magic:#010x}")));
    }
    let version = d.u8().map_err(c)?;
    if version != FORMAT_V2 && version != FORMAT_V3 {
        return Err(corrupt(kp, 4, format!("unsupported index version {version}")));
    }
    let mut gets = 2;
    // The symbols end where the series start (Thanos copies up to there, padding
    // included); a damaged TOC costs one more round trip for the length prefix.
    let sym_end = if toc.series > toc.symbols && toc.series <= toc.postings_table {
        toc.series
    } else {
        gets += 1;
        let p = get_exact(bucket, key, toc.symbols..toc.symbols + 4).await?;
        let len = u64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]));
        (toc.symbols + len + 8).min(toc_at)
    };

    let tmp = out.with_extension("tmp");
    let f = tokio::fs::File::create(&tmp).await.map_err(|source| HeaderError::Io {
        op: "create",
        path: tmp.display().to_string(),
        source,
    })?;
    let mut w = Writer { f, path: tmp.clone(), pos: 0, gets: 0, read: (TOC_SIZE + HEADER_SIZE) as u64 };
    let r = async {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&MAGIC.to_be_bytes());
        h.push(VERSION);
        h.push(version);
        put_be64(&mut h, toc.postings_table);
        w.write(&h).await?;
        let sym_ref = w.pos;
        w.copy_section(bucket, key, toc.symbols..sym_end, piece, "symbol table").await?;
        let table_ref = w.pos;
        w.copy_section(bucket, key, toc.postings_table..size, piece, "postings offset table").await?;
        let mut t = Vec::with_capacity(TOC_LEN);
        put_be64(&mut t, sym_ref);
        put_be64(&mut t, table_ref);
        let crc = crc32c(&t);
        t.extend_from_slice(&crc.to_be_bytes());
        w.write(&t).await?;
        // Synced before the rename, as Thanos does: after a crash the name points at
        // the whole file or at nothing.
        w.f.sync_all().await.map_err(w.io("sync"))?;
        Ok::<_, HeaderError>(())
    }
    .await;
    if let Err(e) = r {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, out).await.map_err(|source| HeaderError::Io {
        op: "rename",
        path: tmp.display().to_string(),
        source,
    })?;
    Ok((gets + w.gets, w.read))
}

/// Sampled postings offsets of one label name.
#[derive(Debug, Default)]
struct NameOffsets {
    /// Every `sampling`-th value (the first included) and the file position of its entry.
    samples: Vec<(String, u32)>,
    /// Position of the name's first entry and number of its values.
    first: u32,
    count: u32,
}

/// An opened index-header. Symbols, label names and values are served from the mapped
/// file; postings lists and series are in the bucket's index (see
/// [`crate::bucketindex::BucketIndex`]).
#[derive(Debug)]
pub struct IndexHeader {
    path: PathBuf,
    data: Bytes,
    index_version: u8,
    /// End of the last postings list: where the index's postings offset table starts.
    postings_end: u64,
    num_symbols: u32,
    /// File position of symbols 0, 32, 64, …
    symbol_samples: Vec<u32>,
    /// Positions of the postings offset table entries: first and one past the last.
    table: Range<usize>,
    names: BTreeMap<String, NameOffsets>,
    /// The all-postings list's byte range in the index.
    all_postings: Option<Range<u64>>,
    /// Start of the first postings list: series entries lie before it.
    postings_start: u64,
    sampling: usize,
}

/// One decoded postings offset table entry.
struct Entry<'a> {
    name: &'a str,
    value: &'a str,
    offset: u64,
    /// Position of the next entry.
    next: usize,
}

impl IndexHeader {
    /// Maps and checks the index-header at `path`, keeping every `sampling`-th postings
    /// offset in memory (1: all).
    pub fn open(path: &Path, sampling: usize) -> Result<IndexHeader, HeaderError> {
        let data = norn_tsdb::mmap::map_file(path)?;
        Self::from_bytes(path, data, sampling)
    }

    /// Checks an index-header held in memory; `path` names it in errors.
    pub fn from_bytes(path: &Path, data: Bytes, sampling: usize) -> Result<IndexHeader, HeaderError> {
        let c = |e: DecodeError| HeaderError::Corrupt(TsdbError::corrupt(path, e));
        if data.len() < HEADER_LEN + TOC_LEN {
            return Err(corrupt(path, 0, format!("index-header of {} bytes is too short", data.len())));
        }
        if data.len() > u32::MAX as usize {
            // Sampled positions are kept as u32.
            return Err(corrupt(path, 0, format!("index-header of {} bytes exceeds the 4 GiB supported", data.len())));
        }
        let mut d = Decbuf::new(&data);
        let magic = d.be32().map_err(c)?;
        if magic != MAGIC {
            return Err(corrupt(path, 0, format!("invalid index-header magic {magic:#010x}")));
        }
        let version = d.u8().map_err(c)?;
        if version != VERSION {
            return Err(corrupt(path, 4, format!("unsupported index-header version {version}")));
        }
        let index_version = d.u8().map_err(c)?;
        if index_version != FORMAT_V2 && index_version != FORMAT_V3 {
            return Err(corrupt(path, 5, format!("unsupported index version {index_version}")));
        }
        let postings_end = d.be64().map_err(c)?;
        let toc_at = data.len() - TOC_LEN;
        let mut t = Decbuf::with_base(&data[toc_at..], toc_at);
        let sym_ref = t.be64().map_err(c)?;
        let table_ref = t.be64().map_err(c)?;
        let want = t.be32().map_err(c)?;
        let got = crc32c(&data[toc_at..toc_at + 16]);
        if want != got {
            return Err(corrupt(path, toc_at as u64 + 16, "index-header table of contents checksum mismatch"));
        }
        let (sym_ref, table_ref) = (sym_ref as usize, table_ref as usize);
        if sym_ref < HEADER_LEN || sym_ref >= table_ref || table_ref >= toc_at {
            return Err(corrupt(
                path,
                toc_at as u64,
                format!("section references {sym_ref}, {table_ref} out of bounds"),
            ));
        }
        let mut h = IndexHeader {
            path: path.to_path_buf(),
            data: data.clone(),
            index_version,
            postings_end,
            num_symbols: 0,
            symbol_samples: Vec::new(),
            table: 0..0,
            names: BTreeMap::new(),
            all_postings: None,
            postings_start: postings_end,
            sampling: sampling.max(1),
        };
        let syms = section(path, &data[sym_ref..table_ref], sym_ref as u64, "symbol table")?;
        // The padding copied after the symbols (up to the index's series) is zeros.
        let pad = sym_ref + syms.len()..table_ref;
        if let Some(i) = data[pad.clone()].iter().position(|&b| b != 0) {
            return Err(corrupt(path, (pad.start + i) as u64, "non-zero padding after the symbol table"));
        }
        h.read_symbols(&syms[4..syms.len() - 4], sym_ref + 4)?;
        let table = section(path, &data[table_ref..toc_at], table_ref as u64, "postings offset table")?;
        // The index's TOC copied after the table must be intact and agree with the
        // header (headers of an earlier version end with the table).
        let rest = table_ref + table.len()..toc_at;
        if !rest.is_empty() {
            let bad = |what: String| corrupt(path, rest.start as u64, what);
            if rest.len() != TOC_SIZE {
                return Err(bad(format!("{} bytes after the postings offset table, want the index TOC", rest.len())));
            }
            let toc = Toc::decode(&data[rest.clone()]).map_err(|e| bad(format!("index TOC: {}", e.what)))?;
            if toc.postings_table != postings_end {
                return Err(bad(format!(
                    "index TOC's postings offset table {} differs from the header's {postings_end}",
                    toc.postings_table
                )));
            }
        }
        h.read_table(&table[4..table.len() - 4], table_ref + 4)?;
        Ok(h)
    }

    fn read_symbols(&mut self, body: &[u8], at: usize) -> Result<(), HeaderError> {
        let c = |e: DecodeError| HeaderError::Corrupt(TsdbError::corrupt(&self.path, e));
        let mut d = Decbuf::with_base(body, at);
        let count = d.be32().map_err(c)?;
        if count as usize > d.remaining() {
            return Err(corrupt(&self.path, at as u64, "symbol count exceeds table size"));
        }
        let mut samples = Vec::with_capacity(count as usize / SYMBOL_SAMPLING + 1);
        for i in 0..count as usize {
            if i.is_multiple_of(SYMBOL_SAMPLING) {
                samples.push(d.offset() as u32);
            }
            d.uvarint_str().map_err(c)?;
        }
        if d.remaining() != 0 {
            return Err(corrupt(&self.path, d.offset() as u64, "trailing bytes in symbol table"));
        }
        self.num_symbols = count;
        self.symbol_samples = samples;
        Ok(())
    }

    fn entry(&self, pos: usize) -> Result<Entry<'_>, HeaderError> {
        decode_entry(&self.path, &self.data, self.table.end, pos)
    }

    fn read_table(&mut self, body: &[u8], at: usize) -> Result<(), HeaderError> {
        let c = |e: DecodeError| HeaderError::Corrupt(TsdbError::corrupt(&self.path, e));
        let count = Decbuf::with_base(body, at).be32().map_err(c)?;
        self.table = at + 4..at + body.len();
        let mut pos = self.table.start;
        // Entries borrow from this handle on the mapping while `self` is filled in.
        let data = self.data.clone();
        let mut prev: Option<(&str, &str, u64)> = None;
        let mut names: BTreeMap<String, NameOffsets> = BTreeMap::new();
        let mut all = None;
        let mut first_offset = None;
        for i in 0..count {
            let e = decode_entry(&self.path, &data, self.table.end, pos)?;
            if e.offset >= self.postings_end {
                return Err(corrupt(&self.path, pos as u64, format!("postings offset {} beyond the lists", e.offset)));
            }
            if let Some((pn, pv, po)) = prev {
                if (pn, pv) >= (e.name, e.value) {
                    return Err(corrupt(&self.path, pos as u64, "postings offset table not sorted"));
                }
                // Lists are written in table order: each ends where the next starts.
                if po >= e.offset {
                    return Err(corrupt(&self.path, pos as u64, "postings offsets not ascending"));
                }
            }
            first_offset.get_or_insert(e.offset);
            if e.name.is_empty() && e.value.is_empty() {
                let end = if i + 1 < count { self.entry(e.next)?.offset } else { self.postings_end };
                all = Some(e.offset..end);
            } else {
                let n = names
                    .entry(e.name.to_string())
                    .or_insert_with(|| NameOffsets { first: pos as u32, ..Default::default() });
                if (n.count as usize).is_multiple_of(self.sampling) {
                    n.samples.push((e.value.to_string(), pos as u32));
                }
                n.count += 1;
            }
            prev = Some((e.name, e.value, e.offset));
            pos = e.next;
        }
        if pos != self.table.end {
            return Err(corrupt(&self.path, pos as u64, "trailing bytes in postings offset table"));
        }
        self.names = names;
        self.all_postings = all;
        self.postings_start = first_offset.unwrap_or(self.postings_end);
        Ok(())
    }

    /// The file this header was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Version of the index the header was built from (2 or 3).
    pub fn index_version(&self) -> u8 {
        self.index_version
    }

    /// Size of the index-header file.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// Where the index's postings lists end: its postings offset table.
    pub fn postings_end(&self) -> u64 {
        self.postings_end
    }

    /// Number of label names.
    pub fn label_count(&self) -> usize {
        self.names.len()
    }

    /// Number of values of label `name` (0 if unknown).
    pub fn value_count(&self, name: &str) -> usize {
        self.names.get(name).map_or(0, |n| n.count as usize)
    }

    /// Where series entries end in the index: the first postings list.
    pub fn series_end(&self) -> u64 {
        self.postings_start
    }

    /// Postings offsets held in memory (for tests and sizing).
    pub fn sampled_offsets(&self) -> usize {
        self.names.values().map(|n| n.samples.len()).sum()
    }

    /// The symbol with reference `r`.
    pub fn symbol(&self, r: u32) -> norn_tsdb::Result<&str> {
        if r >= self.num_symbols {
            return Err(TsdbError::corrupt_at(&self.path, 0, format!("unknown symbol reference {r}")));
        }
        let pos = self.symbol_samples[r as usize / SYMBOL_SAMPLING] as usize;
        let mut d = Decbuf::with_base(&self.data[pos..], pos);
        let c = |e: DecodeError| TsdbError::corrupt(&self.path, e);
        // Skipped symbols were checked as UTF-8 at open.
        for _ in 0..r as usize % SYMBOL_SAMPLING {
            d.uvarint_bytes().map_err(c)?;
        }
        d.uvarint_str().map_err(c)
    }

    /// Label names with at least one series, ascending.
    pub fn label_names(&self) -> Vec<&str> {
        self.names.keys().map(String::as_str).collect()
    }

    /// Values of label `name`, ascending (empty if the name is unknown).
    pub fn label_values(&self, name: &str) -> norn_tsdb::Result<Vec<&str>> {
        let Some(n) = self.names.get(name) else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity(n.count as usize);
        let mut pos = n.first as usize;
        for _ in 0..n.count {
            let e = self.entry(pos).map_err(into_tsdb)?;
            out.push(e.value);
            pos = e.next;
        }
        Ok(out)
    }

    /// Calls `f` with the byte range in the index of every postings list, in table
    /// order (one pass over the mapped table, no lookups).
    pub fn for_each_postings_range(&self, mut f: impl FnMut(Range<u64>)) -> norn_tsdb::Result<()> {
        let mut pos = self.table.start;
        while pos < self.table.end {
            let e = self.entry(pos).map_err(into_tsdb)?;
            let end =
                if e.next < self.table.end { self.entry(e.next).map_err(into_tsdb)?.offset } else { self.postings_end };
            f(e.offset..end);
            pos = e.next;
        }
        Ok(())
    }

    /// Byte range in the index of the postings list of `name="value"` (`("", "")`: all
    /// series); `None` when the index has no such list. The range runs to the next list,
    /// so it may hold padding after the list's CRC.
    pub fn postings_range(&self, name: &str, value: &str) -> norn_tsdb::Result<Option<Range<u64>>> {
        if name.is_empty() && value.is_empty() {
            return Ok(self.all_postings.clone());
        }
        let Some(n) = self.names.get(name) else { return Ok(None) };
        let i = n.samples.partition_point(|(v, _)| v.as_str() <= value);
        if i == 0 {
            return Ok(None);
        }
        let mut pos = n.samples[i - 1].1 as usize;
        for _ in 0..self.sampling {
            if pos >= self.table.end {
                return Ok(None);
            }
            let e = self.entry(pos).map_err(into_tsdb)?;
            if e.name != name || e.value > value {
                return Ok(None);
            }
            if e.value == value {
                let end = if e.next < self.table.end {
                    self.entry(e.next).map_err(into_tsdb)?.offset
                } else {
                    self.postings_end
                };
                return Ok(Some(e.offset..end));
            }
            pos = e.next;
        }
        Ok(None)
    }
}

/// The postings offset table entry at `pos` of `data`, whose table ends at `end`.
fn decode_entry<'a>(path: &Path, data: &'a [u8], end: usize, pos: usize) -> Result<Entry<'a>, HeaderError> {
    let c = |e: DecodeError| HeaderError::Corrupt(TsdbError::corrupt(path, e));
    let end = end.max(pos).min(data.len());
    let mut d = Decbuf::with_base(&data[pos.min(end)..end], pos);
    let keys = d.uvarint().map_err(c)?;
    if keys != 2 {
        return Err(corrupt(path, pos as u64, format!("postings key count {keys}, want 2")));
    }
    let name = d.uvarint_str().map_err(c)?;
    let value = d.uvarint_str().map_err(c)?;
    let offset = d.uvarint().map_err(c)?;
    Ok(Entry { name, value, offset, next: d.offset() })
}

fn into_tsdb(e: HeaderError) -> TsdbError {
    match e {
        HeaderError::Corrupt(t) => t,
        other => TsdbError::corrupt_at("index-header", 0, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_tsdb::index::IndexReader;

    /// A block written by tsdb's block writer, uploaded; returns the bucket, the index key
    /// and its size.
    async fn block_in_bucket(dir: &Path, n: usize) -> (Bucket, String, u64) {
        let bucket = Bucket::filesystem(&dir.join("bucket")).unwrap();
        let id = crate::sync::tests::upload_block(&bucket, 0, n, &[("r", "1")]).await;
        let key = format!("{id}/index");
        let size = bucket.get(&key).await.unwrap().len() as u64;
        (bucket, key, size)
    }

    #[tokio::test]
    async fn round_trip_against_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, key, size) = block_in_bucket(dir.path(), 300).await;
        let out = dir.path().join(FILENAME);
        let (gets, read) = build(&bucket, &key, size, &out).await.unwrap();
        let whole = IndexReader::from_bytes(Path::new(&key), bucket.get(&key).await.unwrap()).unwrap();
        let toc = whole.toc();
        let want_read = (TOC_SIZE + HEADER_SIZE) as u64 + (toc.series - toc.symbols) + (size - toc.postings_table);
        assert_eq!((gets, read), (4, want_read));
        let file = std::fs::read(&out).unwrap();
        // Byte for byte what Thanos's WriteBinary writes: the index's symbols up to its
        // series (padding included), its postings offset table to its end (TOC included).
        let idx = bucket.get(&key).await.unwrap();
        let mut want = MAGIC.to_be_bytes().to_vec();
        want.extend_from_slice(&[VERSION, whole.version()]);
        want.extend_from_slice(&toc.postings_table.to_be_bytes());
        want.extend_from_slice(&idx[toc.symbols as usize..toc.series as usize]);
        want.extend_from_slice(&idx[toc.postings_table as usize..]);
        let t0 = want.len();
        want.extend_from_slice(&(HEADER_LEN as u64).to_be_bytes());
        want.extend_from_slice(&((HEADER_LEN as u64 + toc.series - toc.symbols).to_be_bytes()));
        let crc = crc32c(&want[t0..]);
        want.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(file, want);
        // Ranged GETs of a few bytes build the same file.
        let small = dir.path().join("small");
        let (gets, read) = build_in_pieces(&bucket, &key, size, &small, 7).await.unwrap();
        assert_eq!(read, want_read);
        assert!(gets > 100, "{gets}");
        assert_eq!(std::fs::read(&small).unwrap(), want);
        for sampling in [1, 2, 32, 1000] {
            let h = IndexHeader::open(&out, sampling).unwrap();
            assert_eq!(h.index_version(), whole.version());
            for (r, s) in whole.symbols().enumerate() {
                assert_eq!(h.symbol(r as u32).unwrap(), s.unwrap(), "symbol {r}");
            }
            assert!(h.symbol(whole.num_symbols() as u32).is_err());
            assert_eq!(h.label_names(), whole.label_names());
            for name in whole.label_names() {
                assert_eq!(h.label_values(name).unwrap(), whole.label_values(name), "{name}");
                for v in whole.label_values(name) {
                    let r = h.postings_range(name, v).unwrap().expect(v);
                    let ids = norn_tsdb::index::decode_postings_list(
                        Path::new(&key),
                        &bucket.get_range(&key, r.clone()).await.unwrap(),
                        r.start as usize,
                    )
                    .unwrap();
                    assert_eq!(ids, whole.postings(name, v).unwrap(), "{name}={v} sampling {sampling}");
                }
                // Values between, before and after the real ones are absent.
                for v in ["", "0", "00", "zzz", "000x"] {
                    assert_eq!(h.postings_range(name, v).unwrap().is_some(), whole.label_values(name).contains(&v));
                }
            }
            assert_eq!(h.postings_range("nope", "x").unwrap(), None);
            let all = h.postings_range("", "").unwrap().unwrap();
            let ids = norn_tsdb::index::decode_postings_list(
                Path::new(&key),
                &bucket.get_range(&key, all.clone()).await.unwrap(),
                all.start as usize,
            )
            .unwrap();
            assert_eq!(ids, whole.all_postings().unwrap());
            assert!(h.series_end() > whole.toc().series);
            let want_samples = 1 + 300usize.div_ceil(sampling); // __name__="up", i="000"…"299"
            assert_eq!(h.sampled_offsets(), want_samples, "sampling {sampling}");
        }
        // A series read through the header's symbols equals the whole index's.
        let h = IndexHeader::open(&out, 32).unwrap();
        let id = whole.all_postings().unwrap()[7];
        let idx = bucket.get(&key).await.unwrap();
        let mut chunks = Vec::new();
        let (l, _) = norn_tsdb::index::decode_series_entry(
            Path::new(&key),
            &idx[id as usize * 16..],
            id as usize * 16,
            |r| h.symbol(r),
            &mut chunks,
        )
        .unwrap();
        assert_eq!((l, chunks), whole.series(id).unwrap());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

        /// Any damage to a header is an error at open or leaves a header whose lookups
        /// answer (rightly or with an error) without panicking.
        #[test]
        fn damaged_headers_never_panic(
            flips in proptest::collection::vec((0usize..10_000, 1u8..=255), 1..6),
            cut in proptest::option::of(0usize..10_000),
        ) {
            let mut b = good_header().to_vec();
            for (i, x) in flips {
                let n = b.len();
                b[i % n] ^= x;
            }
            if let Some(c) = cut {
                let n = b.len();
                b.truncate(c % n);
            }
            if let Ok(h) = IndexHeader::from_bytes(Path::new("h"), b.into(), 3) {
                for r in 0..h.num_symbols + 2 {
                    let _ = h.symbol(r);
                }
                for n in h.label_names() {
                    for v in h.label_values(n).unwrap_or_default() {
                        let _ = h.postings_range(n, v);
                        let _ = h.postings_range(n, &format!("{v}\0"));
                    }
                }
                let _ = h.for_each_postings_range(|_| {});
            }
        }
    }

    /// A valid header of a 20-series block, built once.
    fn good_header() -> Bytes {
        static H: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
        H.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let (bucket, key, size) = block_in_bucket(dir.path(), 20).await;
                let out = dir.path().join(FILENAME);
                build(&bucket, &key, size, &out).await.unwrap();
                Bytes::from(std::fs::read(&out).unwrap())
            })
        })
        .clone()
    }

    #[tokio::test]
    async fn damaged_headers_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, key, size) = block_in_bucket(dir.path(), 5).await;
        let out = dir.path().join(FILENAME);
        build(&bucket, &key, size, &out).await.unwrap();
        let orig = std::fs::read(&out).unwrap();
        let p = Path::new("h");
        // Every byte flipped is an error naming the file: the index's postings table
        // reference (bytes 6..14, outside any CRC as in Thanos's format) is checked
        // against the index TOC copied after the table, the padding after the symbols
        // must be zeros.
        for i in 0..orig.len() {
            let mut b = orig.clone();
            b[i] ^= 0x5a;
            match IndexHeader::from_bytes(p, b.into(), 2) {
                Err(HeaderError::Corrupt(TsdbError::Corrupt { path, .. })) => assert_eq!(path, p),
                Err(e) => panic!("byte {i}: unexpected error {e}"),
                Ok(_) => panic!("byte {i} flipped without detection"),
            }
        }
        // A header of the earlier layout (sections copied exactly, no padding, no index
        // TOC) still opens.
        let h = IndexHeader::open(&out, 2).unwrap();
        let (sym_ref, table_ref) =
            (HEADER_LEN, u64::from_be_bytes(orig[orig.len() - 12..orig.len() - 4].try_into().unwrap()) as usize);
        let sym_len = u32::from_be_bytes(orig[sym_ref..sym_ref + 4].try_into().unwrap()) as usize + 8;
        let table_len = u32::from_be_bytes(orig[table_ref..table_ref + 4].try_into().unwrap()) as usize + 8;
        let mut old = orig[..sym_ref + sym_len].to_vec();
        old.extend_from_slice(&orig[table_ref..table_ref + table_len]);
        let t0 = old.len();
        old.extend_from_slice(&(sym_ref as u64).to_be_bytes());
        old.extend_from_slice(&((sym_ref + sym_len) as u64).to_be_bytes());
        let crc = crc32c(&old[t0..]);
        old.extend_from_slice(&crc.to_be_bytes());
        let o = IndexHeader::from_bytes(p, old.into(), 2).unwrap();
        assert_eq!(o.label_names(), h.label_names());
        assert_eq!(o.postings_range("i", "003").unwrap(), h.postings_range("i", "003").unwrap());
        for n in [0, 10, HEADER_LEN + TOC_LEN, orig.len() - 1] {
            assert!(IndexHeader::from_bytes(p, orig[..n].to_vec().into(), 32).is_err(), "cut at {n}");
        }
        // A damaged index in the bucket fails the build with its key and offset.
        let mut idx = bucket.get(&key).await.unwrap().to_vec();
        let last = idx.len() - 1;
        idx[last] ^= 1;
        bucket.put(&key, idx.into()).await.unwrap();
        let e = build(&bucket, &key, size, &out).await.unwrap_err().to_string();
        assert!(e.contains(&key) && e.contains("checksum"), "{e}");
        let e = build(&bucket, &key, size + 10, &out).await.unwrap_err().to_string();
        assert!(e.contains("shorter than listed") || e.contains("checksum"), "{e}");
    }
}
