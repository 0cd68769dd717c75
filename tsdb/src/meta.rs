//! `meta.json` (spec §2), read and written exactly as Go's
//! `json.MarshalIndent(meta, "", "\t")` does: tab indentation, Prometheus's field order,
//! zero stats omitted, no trailing newline. Keys we do not know (Thanos's `"thanos"`)
//! are kept in order and written back after the known ones.

use std::fs;
use std::path::Path;

use serde_json::{Map, Value};
use ulid::Ulid;

use crate::{Result, TsdbError};

/// File name of the block metadata.
pub const META_FILENAME: &str = "meta.json";
/// The only meta format version.
pub const META_VERSION: u32 = 1;

/// A block's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMeta {
    /// The block's ID, also its directory name.
    pub ulid: Ulid,
    /// Inclusive lower bound of sample timestamps (ms).
    pub min_time: i64,
    /// Exclusive upper bound of sample timestamps (ms).
    pub max_time: i64,
    /// Counts of what the block holds.
    pub stats: BlockStats,
    /// Compaction history.
    pub compaction: BlockMetaCompaction,
    /// Meta format version, always 1.
    pub version: u32,
    /// Keys other than Prometheus's, e.g. `"thanos"`, kept verbatim and in order.
    pub extra: Map<String, Value>,
}

/// Counts of what a block holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// All samples (float and histogram).
    pub num_samples: u64,
    /// Samples in XOR chunks.
    pub num_float_samples: u64,
    /// Samples in histogram and float histogram chunks.
    pub num_histogram_samples: u64,
    /// Series with at least one chunk.
    pub num_series: u64,
    /// Chunks.
    pub num_chunks: u64,
    /// Deleted intervals in the tombstones file.
    pub num_tombstones: u64,
}

/// How a block came to be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockMetaCompaction {
    /// 1 for blocks cut from the head, max of inputs + 1 for merged blocks.
    pub level: u32,
    /// ULIDs of the level-1 blocks whose data this block contains, sorted.
    pub sources: Vec<Ulid>,
    /// Set on blocks that are to be deleted.
    pub deletable: bool,
    /// The blocks merged into this one, in input order.
    pub parents: Vec<BlockDesc>,
    /// Set when a compaction using this block failed.
    pub failed: bool,
    /// Sorted hints such as `"from-out-of-order"`.
    pub hints: Vec<String>,
}

/// A reference to another block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDesc {
    /// The block's ID.
    pub ulid: Ulid,
    /// Its inclusive lower time bound.
    pub min_time: i64,
    /// Its exclusive upper time bound.
    pub max_time: i64,
}

impl BlockMeta {
    /// A fresh level-1 meta for a new block with no data yet.
    pub fn new(ulid: Ulid, min_time: i64, max_time: i64) -> Self {
        BlockMeta {
            ulid,
            min_time,
            max_time,
            stats: BlockStats::default(),
            compaction: BlockMetaCompaction { level: 1, sources: vec![ulid], ..Default::default() },
            version: META_VERSION,
            extra: Map::new(),
        }
    }

    /// This block as a parent reference.
    pub fn desc(&self) -> BlockDesc {
        BlockDesc { ulid: self.ulid, min_time: self.min_time, max_time: self.max_time }
    }

    /// The JSON text, byte-identical to Prometheus's.
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("ulid".into(), Value::String(self.ulid.to_string()));
        m.insert("minTime".into(), self.min_time.into());
        m.insert("maxTime".into(), self.max_time.into());
        let mut s = Map::new();
        let st = &self.stats;
        for (k, v) in [
            ("numSamples", st.num_samples),
            ("numFloatSamples", st.num_float_samples),
            ("numHistogramSamples", st.num_histogram_samples),
            ("numSeries", st.num_series),
            ("numChunks", st.num_chunks),
            ("numTombstones", st.num_tombstones),
        ] {
            if v != 0 {
                s.insert(k.into(), v.into());
            }
        }
        m.insert("stats".into(), Value::Object(s));
        let c = &self.compaction;
        let mut cm = Map::new();
        cm.insert("level".into(), c.level.into());
        if !c.sources.is_empty() {
            cm.insert("sources".into(), c.sources.iter().map(|u| Value::String(u.to_string())).collect());
        }
        if c.deletable {
            cm.insert("deletable".into(), true.into());
        }
        if !c.parents.is_empty() {
            let ps = c
                .parents
                .iter()
                .map(|p| {
                    let mut pm = Map::new();
                    pm.insert("ulid".into(), Value::String(p.ulid.to_string()));
                    pm.insert("minTime".into(), p.min_time.into());
                    pm.insert("maxTime".into(), p.max_time.into());
                    Value::Object(pm)
                })
                .collect();
            cm.insert("parents".into(), Value::Array(ps));
        }
        if c.failed {
            cm.insert("failed".into(), true.into());
        }
        if !c.hints.is_empty() {
            cm.insert("hints".into(), c.hints.iter().cloned().map(Value::String).collect());
        }
        m.insert("compaction".into(), Value::Object(cm));
        m.insert("version".into(), self.version.into());
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(&Value::Object(m), &mut ser).expect("serialising a Value cannot fail");
        go_html_escape(String::from_utf8(out).expect("serde_json writes UTF-8"))
    }

    /// Parses meta JSON; `path` is used in errors.
    pub fn from_json(path: &Path, text: &[u8]) -> Result<Self> {
        let v: Value = serde_json::from_slice(text).map_err(|e| {
            TsdbError::corrupt_at(path, json_offset(text, e.line(), e.column()), format!("invalid JSON: {e}"))
        })?;
        let Value::Object(mut m) = v else {
            return Err(TsdbError::corrupt_at(path, 0, "meta is not a JSON object"));
        };
        let bad = |what: String| TsdbError::corrupt_at(path, 0, what);
        let version = take_u64(&mut m, "version").map_err(&bad)?.unwrap_or(0);
        if version != u64::from(META_VERSION) {
            return Err(bad(format!("unexpected meta file version {version}")));
        }
        let ulid = take_ulid(&mut m, "ulid").map_err(&bad)?.ok_or_else(|| bad("missing ulid".into()))?;
        let min_time = take_i64(&mut m, "minTime").map_err(&bad)?.unwrap_or(0);
        let max_time = take_i64(&mut m, "maxTime").map_err(&bad)?.unwrap_or(0);
        let mut stats = BlockStats::default();
        if let Some(s) = m.remove("stats") {
            let Value::Object(mut s) = s else { return Err(bad("stats is not an object".into())) };
            let mut get = |k: &str| take_u64(&mut s, k).map(Option::unwrap_or_default).map_err(&bad);
            stats = BlockStats {
                num_samples: get("numSamples")?,
                num_float_samples: get("numFloatSamples")?,
                num_histogram_samples: get("numHistogramSamples")?,
                num_series: get("numSeries")?,
                num_chunks: get("numChunks")?,
                num_tombstones: get("numTombstones")?,
            };
        }
        let mut compaction = BlockMetaCompaction::default();
        if let Some(c) = m.remove("compaction") {
            let Value::Object(mut c) = c else { return Err(bad("compaction is not an object".into())) };
            let level = take_u64(&mut c, "level").map_err(&bad)?.unwrap_or(0);
            compaction.level = u32::try_from(level).map_err(|_| bad(format!("compaction level {level} too large")))?;
            compaction.sources = take_array(&mut c, "sources")
                .map_err(&bad)?
                .into_iter()
                .map(|v| parse_ulid(&v))
                .collect::<Result<_, String>>()
                .map_err(&bad)?;
            compaction.deletable = take_bool(&mut c, "deletable").map_err(&bad)?;
            compaction.failed = take_bool(&mut c, "failed").map_err(&bad)?;
            for p in take_array(&mut c, "parents").map_err(&bad)? {
                let Value::Object(mut p) = p else { return Err(bad("parent is not an object".into())) };
                compaction.parents.push(BlockDesc {
                    ulid: take_ulid(&mut p, "ulid").map_err(&bad)?.ok_or_else(|| bad("parent without ulid".into()))?,
                    min_time: take_i64(&mut p, "minTime").map_err(&bad)?.unwrap_or(0),
                    max_time: take_i64(&mut p, "maxTime").map_err(&bad)?.unwrap_or(0),
                });
            }
            for h in take_array(&mut c, "hints").map_err(&bad)? {
                let Value::String(h) = h else { return Err(bad("hint is not a string".into())) };
                compaction.hints.push(h);
            }
        }
        Ok(BlockMeta { ulid, min_time, max_time, stats, compaction, version: META_VERSION, extra: m })
    }
}

/// Go's encoder escapes `<`, `>`, `&`, U+2028 and U+2029 inside strings; they can only
/// occur inside strings in JSON text, so a textual replacement is exact.
fn go_html_escape(s: String) -> String {
    if !s.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return s;
    }
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

fn json_offset(text: &[u8], line: usize, column: usize) -> u64 {
    let mut off = 0usize;
    for (i, l) in text.split(|&b| b == b'\n').enumerate() {
        if i + 1 == line {
            return (off + column.saturating_sub(1)).min(text.len()) as u64;
        }
        off += l.len() + 1;
    }
    text.len() as u64
}

fn take_u64(m: &mut Map<String, Value>, k: &str) -> Result<Option<u64>, String> {
    match m.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| format!("{k} is not an unsigned integer: {v}")),
    }
}

fn take_i64(m: &mut Map<String, Value>, k: &str) -> Result<Option<i64>, String> {
    match m.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| format!("{k} is not an integer: {v}")),
    }
}

fn take_bool(m: &mut Map<String, Value>, k: &str) -> Result<bool, String> {
    match m.remove(k) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(v) => Err(format!("{k} is not a bool: {v}")),
    }
}

fn take_array(m: &mut Map<String, Value>, k: &str) -> Result<Vec<Value>, String> {
    match m.remove(k) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => Err(format!("{k} is not an array: {v}")),
    }
}

fn parse_ulid(v: &Value) -> Result<Ulid, String> {
    let Value::String(s) = v else { return Err(format!("ULID is not a string: {v}")) };
    Ulid::from_string(s).map_err(|e| format!("invalid ULID {s:?}: {e}"))
}

fn take_ulid(m: &mut Map<String, Value>, k: &str) -> Result<Option<Ulid>, String> {
    match m.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_ulid(&v).map(Some),
    }
}

/// Reads `<block_dir>/meta.json`.
pub fn read_meta(block_dir: &Path) -> Result<BlockMeta> {
    let path = block_dir.join(META_FILENAME);
    let text = fs::read(&path).map_err(TsdbError::io("read", &path))?;
    BlockMeta::from_json(&path, &text)
}

/// Writes `<block_dir>/meta.json` through a temporary file, fsynced and renamed.
pub fn write_meta(block_dir: &Path, m: &BlockMeta) -> Result<()> {
    write_file_atomic(&block_dir.join(META_FILENAME), m.to_json().as_bytes())
}

/// Writes `path` via `path.tmp`, fsyncs it and renames it into place, so readers see
/// either the old or the new contents.
pub(crate) fn write_file_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp).map_err(TsdbError::io("create", &tmp))?;
    f.write_all(data).map_err(TsdbError::io("write", &tmp))?;
    f.sync_all().map_err(TsdbError::io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(TsdbError::io("rename", &tmp))?;
    if let Some(parent) = path.parent() {
        crate::chunks::sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROM: &str = "{\n\t\"ulid\": \"01HZX4T6M2J0Q3V9X0AAAAAAAA\",\n\t\"minTime\": 1700000000000,\n\t\"maxTime\": 1700007200000,\n\t\"stats\": {\n\t\t\"numSamples\": 1440,\n\t\t\"numFloatSamples\": 1440,\n\t\t\"numSeries\": 3,\n\t\t\"numChunks\": 12\n\t},\n\t\"compaction\": {\n\t\t\"level\": 1,\n\t\t\"sources\": [\n\t\t\t\"01HZX4T6M2J0Q3V9X0AAAAAAAA\"\n\t\t]\n\t},\n\t\"version\": 1\n}";

    #[test]
    fn golden_prometheus_meta_round_trips() {
        let m = BlockMeta::from_json(Path::new("meta.json"), PROM.as_bytes()).unwrap();
        assert_eq!(m.stats.num_samples, 1440);
        assert_eq!(m.stats.num_histogram_samples, 0);
        assert_eq!(m.compaction.level, 1);
        assert_eq!(m.to_json(), PROM);
    }

    #[test]
    fn empty_stats_and_full_compaction() {
        let u = Ulid::from_string("01HZX4T6M2J0Q3V9X0AAAAAAAA").unwrap();
        let p = Ulid::from_string("01HZX4T6M2J0Q3V9X0BBBBBBBB").unwrap();
        let mut m = BlockMeta::new(u, 0, 10);
        m.compaction = BlockMetaCompaction {
            level: 2,
            sources: vec![p, u],
            deletable: true,
            parents: vec![BlockDesc { ulid: p, min_time: 0, max_time: 5 }],
            failed: true,
            hints: vec!["from-out-of-order".into()],
        };
        let want = "{\n\t\"ulid\": \"01HZX4T6M2J0Q3V9X0AAAAAAAA\",\n\t\"minTime\": 0,\n\t\"maxTime\": 10,\n\t\"stats\": {},\n\t\"compaction\": {\n\t\t\"level\": 2,\n\t\t\"sources\": [\n\t\t\t\"01HZX4T6M2J0Q3V9X0BBBBBBBB\",\n\t\t\t\"01HZX4T6M2J0Q3V9X0AAAAAAAA\"\n\t\t],\n\t\t\"deletable\": true,\n\t\t\"parents\": [\n\t\t\t{\n\t\t\t\t\"ulid\": \"01HZX4T6M2J0Q3V9X0BBBBBBBB\",\n\t\t\t\t\"minTime\": 0,\n\t\t\t\t\"maxTime\": 5\n\t\t\t}\n\t\t],\n\t\t\"failed\": true,\n\t\t\"hints\": [\n\t\t\t\"from-out-of-order\"\n\t\t]\n\t},\n\t\"version\": 1\n}";
        assert_eq!(m.to_json(), want);
        assert_eq!(BlockMeta::from_json(Path::new("x"), want.as_bytes()).unwrap(), m);
    }

    #[test]
    fn thanos_section_is_preserved_in_order() {
        let text = PROM.trim_end_matches("\n}").to_string()
            + ",\n\t\"thanos\": {\n\t\t\"labels\": {\n\t\t\t\"z\": \"a<b\",\n\t\t\t\"a\": \"1\"\n\t\t},\n\t\t\"downsample\": {\n\t\t\t\"resolution\": 0\n\t\t},\n\t\t\"source\": \"sidecar\"\n\t}\n}";
        let text = text.replace("a<b", "a\\u003cb");
        let m = BlockMeta::from_json(Path::new("meta.json"), text.as_bytes()).unwrap();
        assert!(m.extra.contains_key("thanos"));
        assert_eq!(m.to_json(), text);
    }

    #[test]
    fn bad_meta_is_rejected_with_offsets() {
        let p = Path::new("b/meta.json");
        for bad in [
            "{",
            "[]",
            "{\"ulid\": \"01HZX4T6M2J0Q3V9X0AAAAAAAA\", \"version\": 2}",
            "{\"ulid\": \"nope\", \"version\": 1}",
            "{\"version\": 1}",
            "{\"ulid\": \"01HZX4T6M2J0Q3V9X0AAAAAAAA\", \"version\": 1, \"minTime\": \"x\"}",
            "{\"ulid\": \"01HZX4T6M2J0Q3V9X0AAAAAAAA\", \"version\": 1, \"stats\": {\"numSamples\": -1}}",
        ] {
            match BlockMeta::from_json(p, bad.as_bytes()) {
                Err(TsdbError::Corrupt { path, .. }) => assert_eq!(path, p),
                other => panic!("{bad}: {other:?}"),
            }
        }
        match BlockMeta::from_json(p, b"{\n\t\"ulid\": x}") {
            Err(TsdbError::Corrupt { offset, .. }) => assert_eq!(offset, 11),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn write_and_read_files() {
        let dir = tempfile::tempdir().unwrap();
        let m = BlockMeta::new(Ulid::generate(), 5, 6);
        write_meta(dir.path(), &m).unwrap();
        assert_eq!(read_meta(dir.path()).unwrap(), m);
        let text = fs::read_to_string(dir.path().join(META_FILENAME)).unwrap();
        assert!(!text.ends_with('\n'));
    }
}
