//! Blocks in a bucket: the Thanos `thanos` section of meta.json, block upload in
//! Thanos's order (chunks, index, then meta.json last so readers never see a partial
//! block as complete), and the shipper's local state file.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use norn_objstore::Bucket;
use norn_tsdb::meta::{BlockMeta, read_meta};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use ulid::Ulid;

/// Shipper state file name in a TSDB directory.
pub const SHIPPER_FILE: &str = "thanos.shipper.json";

/// A block error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Tsdb(#[from] norn_tsdb::TsdbError),
    #[error("{0}")]
    Bucket(#[from] norn_objstore::Error),
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: String, source: std::io::Error },
    #[error("block {0}: {1}")]
    Invalid(String, String),
}

/// Result of block operations.
pub type Result<T> = std::result::Result<T, Error>;

fn io(op: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, path: p.display().to_string(), source }
}

/// What identifies a block's producer in its `thanos` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThanosMeta {
    /// External labels (stream identity); required non-empty for upload.
    pub labels: BTreeMap<String, String>,
    /// Producer, e.g. `receive`, `sidecar`.
    pub source: String,
    /// Downsampling resolution in ms (0 = raw).
    pub resolution: i64,
}

/// Files of a block directory relative to it, sorted, with sizes (`meta.json` listed
/// without size, as Thanos does).
fn gather_files(dir: &Path) -> Result<Vec<(String, Option<u64>)>> {
    let mut out = Vec::new();
    let chunks = dir.join("chunks");
    let mut segs: Vec<_> = std::fs::read_dir(&chunks)
        .map_err(io("read dir", &chunks))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .collect();
    segs.sort_by_key(|e| e.file_name());
    for e in segs {
        let len = e.metadata().map_err(io("stat", &e.path()))?.len();
        out.push((format!("chunks/{}", e.file_name().to_string_lossy()), Some(len)));
    }
    let index = dir.join("index");
    let len = std::fs::metadata(&index).map_err(io("stat", &index))?.len();
    out.push(("index".into(), Some(len)));
    out.push(("meta.json".into(), None));
    Ok(out)
}

/// The `thanos` section for a block, as Thanos writes it.
pub fn thanos_section(t: &ThanosMeta, files: &[(String, Option<u64>)], upload_time: Option<&str>) -> Value {
    let segment_files: Vec<String> =
        files.iter().filter_map(|(p, _)| p.strip_prefix("chunks/").map(str::to_string)).collect();
    let files: Vec<Value> = files
        .iter()
        .map(|(p, s)| match s {
            Some(s) => json!({"rel_path": p, "size_bytes": s}),
            None => json!({"rel_path": p}),
        })
        .collect();
    let mut m = Map::new();
    m.insert("version".into(), 1.into());
    m.insert("labels".into(), json!(t.labels));
    m.insert("downsample".into(), json!({"resolution": t.resolution}));
    m.insert("source".into(), t.source.clone().into());
    if !segment_files.is_empty() {
        m.insert("segment_files".into(), json!(segment_files));
    }
    m.insert("files".into(), Value::Array(files));
    if let Some(u) = upload_time {
        m.insert("upload_time".into(), u.into());
    }
    Value::Object(m)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Uploads the block in `dir` to `<ulid>/…` in the bucket: chunk segments, index, and
/// last meta.json carrying the `thanos` section. Refuses blocks without external
/// labels, as Thanos does. Returns the uploaded meta.
pub async fn upload(bucket: &Bucket, dir: &Path, t: &ThanosMeta) -> Result<BlockMeta> {
    let mut meta = read_meta(dir)?;
    let id = meta.ulid.to_string();
    if t.labels.is_empty() {
        return Err(Error::Invalid(id, "empty external labels; refusing to upload".into()));
    }
    let files = gather_files(dir)?;
    for (rel, _) in files.iter().filter(|(p, _)| p != "meta.json") {
        bucket.upload_file(&format!("{id}/{rel}"), &dir.join(rel)).await?;
    }
    meta.extra.insert("thanos".into(), thanos_section(t, &files, Some(&now_rfc3339())));
    bucket.put(&format!("{id}/meta.json"), Bytes::from(meta.to_json())).await?;
    Ok(meta)
}

/// The shipper's record of uploaded blocks (`thanos.shipper.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipperState {
    pub version: u32,
    #[serde(default)]
    pub uploaded: Vec<Ulid>,
}

impl ShipperState {
    /// Reads the state of a TSDB dir; missing or unreadable → empty (blocks are then
    /// checked against the bucket again).
    pub fn read(tsdb_dir: &Path) -> ShipperState {
        let p = tsdb_dir.join(SHIPPER_FILE);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %p.display(), error = %e, "ignoring unreadable shipper state");
                ShipperState::default()
            }),
            Err(_) => ShipperState::default(),
        }
    }

    /// Writes the state atomically (tmp file + rename).
    pub fn write(&self, tsdb_dir: &Path) -> Result<()> {
        let p = tsdb_dir.join(SHIPPER_FILE);
        let tmp = tsdb_dir.join(format!("{SHIPPER_FILE}.tmp"));
        let s = ShipperState { version: 1, uploaded: self.uploaded.clone() };
        let text = serde_json::to_vec_pretty(&s).map_err(|e| Error::Invalid(SHIPPER_FILE.into(), e.to_string()))?;
        std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &p).map_err(io("rename", &p))
    }
}

#[cfg(test)]
mod tests {
    use norn_model::Labels;
    use norn_tsdb::block::BlockWriter;
    use norn_tsdb::series::encode_float_chunks;

    use super::*;

    #[tokio::test]
    async fn upload_writes_meta_last_with_thanos_section() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::new(dir.path(), 0, 10_000).unwrap();
        let l = Labels::from_pairs([("__name__", "up")]);
        w.add_series(&l, &encode_float_chunks((0..10).map(|i| (i * 1000, 1.0)), 120)).unwrap();
        let meta = w.finish().unwrap();
        let bdir = dir.path().join(meta.ulid.to_string());
        let bucket_dir = tempfile::tempdir().unwrap();
        let bucket = Bucket::filesystem(bucket_dir.path()).unwrap();
        let t = ThanosMeta {
            labels: BTreeMap::from([("tenant_id".into(), "a".into())]),
            source: "receive".into(),
            resolution: 0,
        };
        upload(&bucket, &bdir, &t).await.unwrap();
        let id = meta.ulid.to_string();
        let keys = bucket.list(&id).await.unwrap();
        assert_eq!(keys, vec![format!("{id}/chunks/000001"), format!("{id}/index"), format!("{id}/meta.json")]);
        let m: Value = serde_json::from_slice(&bucket.get(&format!("{id}/meta.json")).await.unwrap()).unwrap();
        let th = &m["thanos"];
        assert_eq!(th["labels"]["tenant_id"], "a");
        assert_eq!(th["source"], "receive");
        assert_eq!(th["downsample"]["resolution"], 0);
        assert_eq!(th["segment_files"][0], "000001");
        assert_eq!(th["files"][2]["rel_path"], "meta.json");
        assert!(th["upload_time"].is_string());
        assert_eq!(m["version"], 1);
        // Local meta untouched.
        assert!(read_meta(&bdir).unwrap().extra.get("thanos").is_none());

        let empty = ThanosMeta { labels: BTreeMap::new(), ..t };
        assert!(upload(&bucket, &bdir, &empty).await.is_err());
    }

    #[test]
    fn shipper_state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ShipperState::read(dir.path()), ShipperState::default());
        let s = ShipperState { version: 1, uploaded: vec![Ulid::generate()] };
        s.write(dir.path()).unwrap();
        assert_eq!(ShipperState::read(dir.path()), s);
        let text = std::fs::read_to_string(dir.path().join(SHIPPER_FILE)).unwrap();
        assert!(text.contains("\"version\": 1"));
    }
}
