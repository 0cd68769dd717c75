//! Ships the blocks Prometheus persists to the bucket: each new block directory in
//! `--tsdb.path` (never the head, which is no block directory), with a Thanos meta.json
//! carrying the external labels and source `sidecar`. What was shipped is recorded in
//! `thanos.shipper.json` in the data dir, so a restart uploads nothing twice.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use norn_block::{ShipperState, ThanosMeta, upload};
use norn_model::Labels;
use norn_objstore::Bucket;
use norn_tsdb::meta::{BlockMeta, META_FILENAME, read_meta};
use ulid::Ulid;

use crate::metrics::Metrics;

/// Where blocks are staged (hard links) while they upload, relative to the data dir, so
/// that Prometheus deleting or compacting a block mid-upload does not break it.
const STAGING: &str = "thanos/upload";

/// What one [`Shipper::sync`] pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Blocks uploaded in this pass.
    pub uploaded: Vec<Ulid>,
    /// Blocks found already in the bucket (an earlier upload whose state was not saved).
    pub found_in_bucket: Vec<Ulid>,
    /// Blocks that failed to upload (retried on the next pass).
    pub failed: Vec<Ulid>,
    /// Compacted blocks left alone (`--shipper.upload-compacted` off, or their sources
    /// already shipped).
    pub skipped_compacted: Vec<Ulid>,
}

/// Uploads the blocks of one Prometheus data directory.
#[derive(Debug)]
pub struct Shipper {
    pub bucket: Bucket,
    pub dir: PathBuf,
    pub upload_compacted: bool,
    pub metrics: Arc<Metrics>,
}

/// The persisted blocks in `dir`, oldest first: directories named by a ULID with a
/// readable meta.json. Prometheus builds blocks under `<ulid>.tmp-for-creation` and
/// renames them when complete, so a ULID-named directory is a finished block.
pub fn local_blocks(dir: &Path) -> std::io::Result<Vec<(PathBuf, BlockMeta)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if Ulid::from_string(name).is_err() || !e.path().is_dir() {
            continue;
        }
        let p = e.path();
        if !p.join(META_FILENAME).exists() {
            continue;
        }
        match read_meta(&p) {
            Ok(m) => out.push((p, m)),
            Err(e) => tracing::warn!(block = name, error = %e, "skipping block with unreadable meta.json"),
        }
    }
    out.sort_by_key(|(_, m)| (m.min_time, m.ulid));
    Ok(out)
}

/// Hard-links a block's files into `to` (chunks/, index, meta.json; tombstones are not
/// uploaded).
fn stage(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to.join("chunks"))?;
    for e in std::fs::read_dir(from.join("chunks"))? {
        let e = e?;
        if e.path().is_file() {
            std::fs::hard_link(e.path(), to.join("chunks").join(e.file_name()))?;
        }
    }
    for f in ["index", META_FILENAME] {
        std::fs::hard_link(from.join(f), to.join(f))?;
    }
    Ok(())
}

impl Shipper {
    /// One pass: uploads every block not shipped yet, records the result. `ext` are the
    /// external labels put in each block's `thanos` section.
    pub async fn sync(&self, ext: &Labels) -> std::io::Result<SyncReport> {
        let mut report = SyncReport::default();
        let state = ShipperState::read(&self.dir);
        let shipped: HashSet<Ulid> = state.uploaded.iter().copied().collect();
        let blocks = local_blocks(&self.dir)?;
        let thanos = ThanosMeta {
            labels: ext.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            source: "sidecar".into(),
            resolution: 0,
        };
        // Blocks that Prometheus deleted drop out of the state, as in Thanos.
        let mut now_shipped: Vec<Ulid> = Vec::new();
        let mut shipped_sources: HashSet<Ulid> = HashSet::new();
        for (_, m) in &blocks {
            if shipped.contains(&m.ulid) {
                shipped_sources.extend(m.compaction.sources.iter().copied());
            }
        }
        for (path, m) in &blocks {
            let id = m.ulid;
            if shipped.contains(&id) {
                now_shipped.push(id);
                continue;
            }
            if m.compaction.level > 1 {
                let overlap = m.compaction.sources.iter().any(|s| shipped_sources.contains(s) || shipped.contains(s));
                if !self.upload_compacted || overlap {
                    report.skipped_compacted.push(id);
                    continue;
                }
            }
            match self.bucket.exists(&format!("{id}/{META_FILENAME}")).await {
                Ok(true) => {
                    tracing::info!(block = %id, "block already in the bucket; recording it as shipped");
                    report.found_in_bucket.push(id);
                    now_shipped.push(id);
                    shipped_sources.extend(m.compaction.sources.iter().copied());
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(block = %id, error = %e, "cannot check the bucket; will retry");
                    report.failed.push(id);
                    self.metrics.upload_failures.inc();
                    continue;
                }
            }
            match self.upload_one(path, id, &thanos).await {
                Ok(()) => {
                    tracing::info!(block = %id, min_time = m.min_time, max_time = m.max_time, "block uploaded");
                    self.metrics.uploads.inc();
                    report.uploaded.push(id);
                    now_shipped.push(id);
                    shipped_sources.extend(m.compaction.sources.iter().copied());
                    // Saved after every block: a crash now re-uploads nothing.
                    let st = ShipperState { version: 1, uploaded: now_shipped.clone() };
                    if let Err(e) = st.write(&self.dir) {
                        tracing::error!(error = %e, "writing shipper state");
                    }
                }
                Err(e) => {
                    tracing::error!(block = %id, error = %e, "block upload failed; will retry");
                    self.metrics.upload_failures.inc();
                    report.failed.push(id);
                }
            }
        }
        let st = ShipperState { version: 1, uploaded: now_shipped };
        if st.uploaded != state.uploaded || !self.dir.join(norn_block::SHIPPER_FILE).exists() {
            st.write(&self.dir).map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(report)
    }

    async fn upload_one(&self, path: &Path, id: Ulid, thanos: &ThanosMeta) -> Result<(), String> {
        let staged = self.dir.join(STAGING).join(id.to_string());
        let (p, s) = (path.to_path_buf(), staged.clone());
        tokio::task::spawn_blocking(move || stage(&p, &s))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("staging {} in {}: {e}", path.display(), staged.display()))?;
        let r = upload(&self.bucket, &staged, thanos).await.map(|_| ()).map_err(|e| e.to_string());
        if let Err(e) = std::fs::remove_dir_all(&staged) {
            tracing::warn!(dir = %staged.display(), error = %e, "removing staged block");
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use norn_tsdb::block::BlockWriter;
    use norn_tsdb::meta::{BlockMetaCompaction, write_meta};
    use norn_tsdb::series::encode_float_chunks;

    use super::*;

    fn block(dir: &Path, mint: i64) -> BlockMeta {
        let mut w = BlockWriter::new(dir, mint, mint + 10_000).unwrap();
        let l = Labels::from_pairs([("__name__", "up")]);
        w.add_series(&l, &encode_float_chunks((0..10).map(|i| (mint + i * 1000, 1.0)), 120)).unwrap();
        w.finish().unwrap()
    }

    fn shipper(dir: &Path, bucket: &Path, compacted: bool) -> Shipper {
        let mut reg = prometheus_client::registry::Registry::default();
        Shipper {
            bucket: Bucket::filesystem(bucket).unwrap(),
            dir: dir.to_path_buf(),
            upload_compacted: compacted,
            metrics: Arc::new(Metrics::new(&mut reg)),
        }
    }

    #[tokio::test]
    async fn ships_new_blocks_once_and_copes_with_deletion() {
        let data = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let ext = Labels::from_pairs([("replica", "a")]);
        // Not blocks: head files, a block being written, stray files.
        std::fs::create_dir_all(data.path().join("wal")).unwrap();
        std::fs::create_dir_all(data.path().join("chunks_head")).unwrap();
        std::fs::create_dir_all(data.path().join(format!("{}.tmp-for-creation", Ulid::generate()))).unwrap();
        std::fs::write(data.path().join("queries.active"), b"").unwrap();
        let a = block(data.path(), 0);
        let s = shipper(data.path(), bdir.path(), false);
        let r = s.sync(&ext).await.unwrap();
        assert_eq!(r.uploaded, vec![a.ulid]);
        let meta: serde_json::Value =
            serde_json::from_slice(&s.bucket.get(&format!("{}/meta.json", a.ulid)).await.unwrap()).unwrap();
        assert_eq!(meta["thanos"]["source"], "sidecar");
        assert_eq!(meta["thanos"]["labels"]["replica"], "a");
        assert!(!data.path().join(STAGING).join(a.ulid.to_string()).exists());

        // Nothing new: nothing uploaded.
        assert_eq!(s.sync(&ext).await.unwrap(), SyncReport::default());
        let b = block(data.path(), 20_000);
        assert_eq!(s.sync(&ext).await.unwrap().uploaded, vec![b.ulid]);
        assert_eq!(ShipperState::read(data.path()).uploaded, vec![a.ulid, b.ulid]);

        // Prometheus deletes a block (retention): it leaves the state.
        std::fs::remove_dir_all(data.path().join(a.ulid.to_string())).unwrap();
        s.sync(&ext).await.unwrap();
        assert_eq!(ShipperState::read(data.path()).uploaded, vec![b.ulid]);

        // State lost (or not saved before a crash): the bucket is checked, not re-uploaded.
        std::fs::remove_file(data.path().join(norn_block::SHIPPER_FILE)).unwrap();
        let r = s.sync(&ext).await.unwrap();
        assert_eq!((r.uploaded.len(), r.found_in_bucket), (0, vec![b.ulid]));
        assert_eq!(ShipperState::read(data.path()).uploaded, vec![b.ulid]);
    }

    #[tokio::test]
    async fn compacted_blocks() {
        let data = tempfile::tempdir().unwrap();
        let bdir = tempfile::tempdir().unwrap();
        let ext = Labels::from_pairs([("replica", "a")]);
        let a = block(data.path(), 0);
        let s = shipper(data.path(), bdir.path(), false);
        s.sync(&ext).await.unwrap();
        // A level-2 block made from `a` and an unshipped source.
        let mut c = block(data.path(), 40_000);
        c.compaction =
            BlockMetaCompaction { level: 2, sources: vec![a.ulid, Ulid::generate()], ..c.compaction.clone() };
        write_meta(&data.path().join(c.ulid.to_string()), &c).unwrap();
        assert_eq!(s.sync(&ext).await.unwrap().skipped_compacted, vec![c.ulid]);
        // Uploading compacted blocks is on, but `a` was shipped: uploading `c` would
        // duplicate its samples.
        let s2 = shipper(data.path(), bdir.path(), true);
        assert_eq!(s2.sync(&ext).await.unwrap().skipped_compacted, vec![c.ulid]);
        let mut d = block(data.path(), 80_000);
        d.compaction = BlockMetaCompaction { level: 2, sources: vec![Ulid::generate()], ..d.compaction.clone() };
        write_meta(&data.path().join(d.ulid.to_string()), &d).unwrap();
        assert_eq!(s2.sync(&ext).await.unwrap().uploaded, vec![d.ulid]);
    }
}
