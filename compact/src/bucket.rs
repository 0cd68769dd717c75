//! One compaction pass over a bucket: clean, apply retention, plan and merge per group.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use norn_block::ThanosMeta;
use norn_objstore::Bucket;
use norn_tsdb::block::Block;
use norn_tsdb::meta::BlockMeta;
use serde_json::json;
use ulid::Ulid;

use crate::metrics::Metrics;
use crate::plan::{GroupKey, PlanBlock, plan};
use crate::{Config, RunError};

/// Marker of a block scheduled for deletion.
pub const DELETION_MARK: &str = "deletion-mark.json";
/// Marker of a block excluded from compaction.
pub const NO_COMPACT_MARK: &str = "no-compact-mark.json";

/// What the bucket listing says about one block directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Every object of the block, relative to `<ulid>/`.
    pub files: Vec<String>,
    pub meta: bool,
    pub deletion_mark: bool,
    pub no_compact_mark: bool,
}

/// Groups a recursive bucket listing by block ID; keys outside `<ulid>/…` are ignored.
pub fn group_listing(keys: &[(String, u64)]) -> BTreeMap<Ulid, Listed> {
    let mut out: BTreeMap<Ulid, Listed> = BTreeMap::new();
    for (key, _) in keys {
        let Some((dir, rest)) = key.split_once('/') else { continue };
        let Ok(id) = Ulid::from_string(dir) else { continue };
        if rest.is_empty() {
            continue;
        }
        let e = out.entry(id).or_default();
        match rest {
            "meta.json" => e.meta = true,
            DELETION_MARK => e.deletion_mark = true,
            NO_COMPACT_MARK => e.no_compact_mark = true,
            _ => {}
        }
        e.files.push(rest.to_string());
    }
    out
}

/// A block's meta with its `thanos` section's stream identity.
#[derive(Debug, Clone)]
pub struct Meta {
    pub meta: BlockMeta,
    pub group: GroupKey,
}

/// Checks a meta.json's bytes for block `id` and reads its group.
pub fn parse_meta(id: Ulid, bytes: &[u8]) -> Result<Meta, String> {
    let meta = BlockMeta::from_json(Path::new(&format!("{id}/meta.json")), bytes).map_err(|e| e.to_string())?;
    if meta.ulid != id {
        return Err(format!("ulid {} does not match the block directory", meta.ulid));
    }
    if meta.min_time > meta.max_time {
        return Err(format!("minTime {} after maxTime {}", meta.min_time, meta.max_time));
    }
    let t = meta.extra.get("thanos").ok_or("no thanos section")?;
    let t = t.as_object().ok_or("thanos section is not an object")?;
    let mut labels = BTreeMap::new();
    if let Some(l) = t.get("labels").filter(|l| !l.is_null()) {
        for (k, v) in l.as_object().ok_or("thanos.labels is not an object")? {
            let v = v.as_str().ok_or_else(|| format!("thanos label {k:?} is not a string"))?;
            labels.insert(k.clone(), v.to_string());
        }
    }
    let resolution = match t.get("downsample").and_then(|d| d.get("resolution")) {
        None => 0,
        Some(r) => r.as_i64().ok_or("thanos.downsample.resolution is not an integer")?,
    };
    Ok(Meta { meta, group: GroupKey { resolution, labels } })
}

/// `deletion_time` (unix seconds) of a deletion-mark.json.
pub fn parse_deletion_mark(bytes: &[u8]) -> Result<i64, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v.get("version").and_then(|v| v.as_i64()) != Some(1) {
        return Err(format!("unexpected version {}", v.get("version").unwrap_or(&serde_json::Value::Null)));
    }
    v.get("deletion_time").and_then(|t| t.as_i64()).ok_or_else(|| "deletion_time missing or not an integer".into())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub compactions: usize,
    pub marked: usize,
    pub cleaned: usize,
    pub broken: usize,
}

/// The compactor over one bucket.
#[derive(Debug)]
pub struct Compactor {
    pub bucket: Bucket,
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
}

impl Compactor {
    pub fn new(bucket: Bucket, cfg: Config, metrics: Arc<Metrics>) -> Compactor {
        Compactor { bucket, cfg, metrics }
    }

    /// A pass, logged and counted.
    pub async fn pass_logged(&self) -> Result<PassReport, RunError> {
        let started = std::time::Instant::now();
        match self.pass().await {
            Ok(r) => {
                self.metrics.iterations.inc();
                tracing::info!(
                    compactions = r.compactions,
                    marked = r.marked,
                    cleaned = r.cleaned,
                    broken = r.broken,
                    elapsed = ?started.elapsed(),
                    "compaction pass done"
                );
                Ok(r)
            }
            Err(e) => {
                self.metrics.pass_failures.inc();
                tracing::error!(error = %e, "compaction pass failed");
                Err(e)
            }
        }
    }

    /// Writes `<id>/deletion-mark.json`.
    async fn mark_for_deletion(&self, id: Ulid, details: &str) -> Result<(), RunError> {
        let mark = json!({"id": id.to_string(), "deletion_time": now_ms() / 1000, "version": 1, "details": details});
        self.bucket.put(&format!("{id}/{DELETION_MARK}"), Bytes::from(mark.to_string())).await?;
        self.metrics.blocks_marked.inc();
        tracing::info!(block = %id, details, "marked for deletion");
        Ok(())
    }

    /// Deletes a block as Thanos does: meta.json first (readers then see a partial
    /// block), the other objects, the deletion mark last.
    async fn delete_block(&self, id: Ulid, l: &Listed) -> Result<(), RunError> {
        self.bucket.delete(&format!("{id}/meta.json")).await?;
        for f in l.files.iter().filter(|f| *f != "meta.json" && *f != DELETION_MARK) {
            self.bucket.delete(&format!("{id}/{f}")).await?;
        }
        self.bucket.delete(&format!("{id}/{DELETION_MARK}")).await?;
        self.metrics.blocks_cleaned.inc();
        tracing::info!(block = %id, "deleted block marked for deletion");
        Ok(())
    }

    /// One pass over the bucket.
    pub async fn pass(&self) -> Result<PassReport, RunError> {
        let mut report = PassReport::default();
        // Leftovers of a pass that was interrupted (passes never run at once).
        let scratch = self.cfg.data_dir.join("compact");
        match tokio::fs::remove_dir_all(&scratch).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(std::io::Error::other(format!("emptying {}: {e}", scratch.display())).into());
            }
            _ => {}
        }
        let listing = group_listing(&self.bucket.list_with_sizes("").await?);
        let now = now_ms();
        let mut live: Vec<(Ulid, &Listed)> = Vec::new();
        for (&id, l) in &listing {
            if l.deletion_mark {
                match self.bucket.get(&format!("{id}/{DELETION_MARK}")).await.map(|b| parse_deletion_mark(&b)) {
                    Ok(Ok(t)) if now / 1000 - t >= self.cfg.delete_delay_ms / 1000 => {
                        self.delete_block(id, l).await?;
                        report.cleaned += 1;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(block = %id, error = %e, "unreadable deletion mark; block left alone"),
                    Err(e) => tracing::warn!(block = %id, error = %e, "deletion mark unreadable; block left alone"),
                }
                continue;
            }
            if !l.meta {
                // A partial upload (or a block being deleted); Thanos removes these after
                // --delete-delay by object age, which the listing does not give us.
                tracing::info!(block = %id, "no meta.json (partial upload); skipped");
                continue;
            }
            live.push((id, l));
        }

        let mut metas: Vec<(Meta, &Listed)> = Vec::new();
        for (id, l) in live {
            let parsed = match self.bucket.get(&format!("{id}/meta.json")).await {
                Ok(b) => parse_meta(id, &b),
                Err(e) => Err(e.to_string()),
            };
            match parsed {
                Ok(m) => metas.push((m, l)),
                Err(reason) => {
                    report.broken += 1;
                    self.metrics.broken_blocks.inc();
                    tracing::warn!(block = %id, reason, "broken block left alone");
                }
            }
        }

        // Retention of raw blocks, by end time.
        if self.cfg.retention_raw_ms > 0 {
            let cutoff = now.saturating_sub(self.cfg.retention_raw_ms);
            let mut kept = Vec::new();
            for (m, l) in metas {
                if m.group.resolution == 0 && m.meta.max_time < cutoff {
                    self.mark_for_deletion(m.meta.ulid, "retention of raw blocks").await?;
                    report.marked += 1;
                } else {
                    kept.push((m, l));
                }
            }
            metas = kept;
        }

        // Blocks whose sources another block of their group holds entirely (left over when
        // a compaction uploaded its result but did not mark its sources) are garbage.
        let mut garbage = BTreeSet::new();
        for (a, _) in &metas {
            let sa: BTreeSet<_> = a.meta.compaction.sources.iter().collect();
            let covered = metas.iter().any(|(b, _)| {
                b.meta.ulid != a.meta.ulid
                    && b.group == a.group
                    && sa.len() < b.meta.compaction.sources.len()
                    && sa.iter().all(|s| b.meta.compaction.sources.contains(s))
            });
            if covered && !sa.is_empty() {
                garbage.insert(a.meta.ulid);
            }
        }
        for &id in &garbage {
            self.mark_for_deletion(id, "sources already compacted into another block").await?;
            report.marked += 1;
        }
        metas.retain(|(m, _)| !garbage.contains(&m.meta.ulid));

        let mut groups: BTreeMap<GroupKey, Vec<(Meta, Listed)>> = BTreeMap::new();
        for (m, l) in metas {
            groups.entry(m.group.clone()).or_default().push((m, l.clone()));
        }
        let n_groups = groups.len();
        let results: Vec<Result<PassReport, RunError>> = futures::stream::iter(groups)
            .map(|(key, blocks)| self.compact_group(key, blocks))
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        let mut failed = 0;
        for r in results {
            match r {
                Ok(r) => {
                    report.compactions += r.compactions;
                    report.marked += r.marked;
                }
                Err(_) => failed += 1,
            }
        }
        if failed > 0 {
            return Err(RunError::Groups { failed, groups: n_groups });
        }
        Ok(report)
    }

    /// Merges the group's blocks level by level until the planner has nothing left.
    async fn compact_group(&self, key: GroupKey, mut blocks: Vec<(Meta, Listed)>) -> Result<PassReport, RunError> {
        let mut report = PassReport::default();
        if key.resolution != 0 {
            tracing::info!(group = %key, "downsampled group not compacted (downsampling is not supported)");
            return Ok(report);
        }
        // Each round removes at least two blocks and adds at most one.
        for _ in 0..blocks.len() {
            let pb: Vec<PlanBlock> = blocks
                .iter()
                .map(|(m, l)| PlanBlock {
                    id: m.meta.ulid,
                    min_time: m.meta.min_time,
                    max_time: m.meta.max_time,
                    failed: m.meta.compaction.failed,
                    no_compact: l.no_compact_mark,
                })
                .collect();
            let picked = plan(&pb, &self.cfg.ranges);
            if picked.len() < 2 {
                break;
            }
            let sources: Vec<&(Meta, Listed)> = blocks.iter().filter(|(m, _)| picked.contains(&m.meta.ulid)).collect();
            let out = match self.merge(&key, &sources).await {
                Ok(out) => out,
                Err(e) => {
                    self.metrics.group_compaction_failures.inc();
                    tracing::error!(group = %key, blocks = ?picked, error = %e, "compaction failed; group left as is");
                    return Err(e);
                }
            };
            for id in &picked {
                self.mark_for_deletion(*id, "source of compacted block").await?;
                report.marked += 1;
            }
            blocks.retain(|(m, _)| !picked.contains(&m.meta.ulid));
            report.compactions += 1;
            self.metrics.group_compactions.inc();
            if let Some(meta) = out {
                tracing::info!(group = %key, block = %meta.ulid, sources = picked.len(), level = meta.compaction.level,
                    mint = meta.min_time, maxt = meta.max_time, "compacted");
                blocks.push((Meta { meta, group: key.clone() }, Listed { meta: true, ..Listed::default() }));
            } else {
                tracing::info!(group = %key, sources = picked.len(), "compacted block is empty; sources only marked");
            }
        }
        Ok(report)
    }

    /// Downloads `sources`, merges them and uploads the result; `None` when the result
    /// holds no samples (nothing uploaded).
    async fn merge(&self, key: &GroupKey, sources: &[&(Meta, Listed)]) -> Result<Option<BlockMeta>, RunError> {
        let scratch = self.cfg.data_dir.join("compact").join(Ulid::generate().to_string());
        let r = self.merge_in(key, sources, &scratch).await;
        if let Err(e) = tokio::fs::remove_dir_all(&scratch).await {
            tracing::warn!(dir = %scratch.display(), error = %e, "could not remove scratch directory");
        }
        r
    }

    async fn merge_in(
        &self,
        key: &GroupKey,
        sources: &[&(Meta, Listed)],
        scratch: &Path,
    ) -> Result<Option<BlockMeta>, RunError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (m, l) in sources {
            let id = m.meta.ulid;
            let dir = scratch.join(id.to_string());
            tokio::fs::create_dir_all(dir.join("chunks")).await?;
            for f in l.files.iter().filter(|f| *f == "index" || *f == "meta.json" || f.starts_with("chunks/")) {
                self.bucket.download_file(&format!("{id}/{f}"), &dir.join(f)).await?;
            }
            dirs.push(dir);
        }
        let out_parent = scratch.join("out");
        let meta = tokio::task::spawn_blocking(move || -> Result<BlockMeta, String> {
            let blocks = dirs
                .iter()
                .map(|d| Block::open(d).map_err(|e| format!("opening downloaded block {}: {e}", d.display())))
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&Block> = blocks.iter().collect();
            norn_tsdb::compact::compact_blocks(&refs, &out_parent).map_err(|e| format!("merging: {e}"))
        })
        .await?
        .map_err(std::io::Error::other)?;
        if meta.stats.num_samples == 0 {
            return Ok(None);
        }
        let t = ThanosMeta { labels: key.labels.clone(), source: "compactor".into(), resolution: key.resolution };
        let dir = scratch.join("out").join(meta.ulid.to_string());
        norn_block::upload(&self.bucket, &dir, &t).await.map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Some(meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::Labels;
    use norn_tsdb::block::BlockWriter;
    use norn_tsdb::chunkenc::Sample;
    use norn_tsdb::series::encode_float_chunks;

    const H: i64 = 3_600_000;

    /// Uploads a block over `[mint, maxt)` h with one sample a minute of `up{i}` for each
    /// `i < n`, under external labels `ext`.
    async fn upload_block(bucket: &Bucket, mint: i64, maxt: i64, n: usize, ext: &str) -> Ulid {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::new(dir.path(), mint * H, maxt * H).unwrap();
        let mut series: Vec<Labels> =
            (0..n).map(|i| Labels::from_pairs([("__name__", "up"), ("i", &i.to_string())])).collect();
        series.sort();
        for l in &series {
            let samples = (mint * 60..maxt * 60).map(|m| (m * 60_000, m as f64));
            w.add_series(l, &encode_float_chunks(samples, 120)).unwrap();
        }
        let meta = w.finish().unwrap();
        let t = ThanosMeta { labels: BTreeMap::from([("r".into(), ext.into())]), source: "test".into(), resolution: 0 };
        norn_block::upload(bucket, &dir.path().join(meta.ulid.to_string()), &t).await.unwrap();
        meta.ulid
    }

    fn compactor(bucket: &Bucket, data: &Path, delete_delay_ms: i64, retention_raw_ms: i64) -> Compactor {
        let cfg = Config {
            data_dir: data.to_path_buf(),
            retention_raw_ms,
            delete_delay_ms,
            concurrency: 2,
            ranges: crate::plan::DEFAULT_RANGES.to_vec(),
        };
        Compactor::new(bucket.clone(), cfg, Arc::new(Metrics::default()))
    }

    async fn listing(bucket: &Bucket) -> BTreeMap<Ulid, Listed> {
        group_listing(&bucket.list_with_sizes("").await.unwrap())
    }

    #[tokio::test]
    async fn pass_compacts_marks_and_later_deletes() {
        let bdir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let bucket = Bucket::filesystem(bdir.path()).unwrap();
        let mut sources = Vec::new();
        for h in [0, 2, 4, 6] {
            sources.push(upload_block(&bucket, h, h + 2, 3, "a").await);
        }
        let newest = upload_block(&bucket, 8, 10, 3, "a").await;
        // Another stream's blocks are a group of their own: two blocks, nothing to do.
        let other = [upload_block(&bucket, 0, 2, 1, "b").await, upload_block(&bucket, 2, 4, 1, "b").await];
        // A broken block is left alone.
        let broken = Ulid::generate();
        bucket.put(&format!("{broken}/meta.json"), Bytes::from_static(b"{not json")).await.unwrap();

        let c = compactor(&bucket, data.path(), 48 * H, 0);
        let r = c.pass().await.unwrap();
        assert_eq!(r, PassReport { compactions: 1, marked: 4, cleaned: 0, broken: 1 });
        let l = listing(&bucket).await;
        for id in &sources {
            assert!(l[id].deletion_mark, "{id} marked");
        }
        assert!(!l[&newest].deletion_mark && !l[&other[0]].deletion_mark && !l[&broken].deletion_mark);
        let new: Vec<_> = l
            .keys()
            .filter(|id| !sources.contains(id) && **id != newest && !other.contains(id) && **id != broken)
            .collect();
        assert_eq!(new.len(), 1);
        let m = parse_meta(*new[0], &bucket.get(&format!("{}/meta.json", new[0])).await.unwrap()).unwrap();
        assert_eq!((m.meta.min_time, m.meta.max_time, m.meta.compaction.level), (0, 8 * H, 2));
        assert_eq!(m.meta.compaction.sources, {
            let mut s = sources.clone();
            s.sort();
            s
        });
        assert_eq!(m.meta.stats.num_samples, 3 * 8 * 60);
        let th = &m.meta.extra["thanos"];
        assert_eq!((th["source"].as_str(), th["labels"]["r"].as_str()), (Some("compactor"), Some("a")));

        // The merged block holds every sample of its sources.
        let dl = data.path().join("check");
        for f in &l[new[0]].files {
            std::fs::create_dir_all(dl.join(f).parent().unwrap()).unwrap();
            bucket.download_file(&format!("{}/{f}", new[0]), &dl.join(f)).await.unwrap();
        }
        let b = Block::open(&dl).unwrap();
        let got = b.select_all(i64::MIN, i64::MAX).unwrap();
        assert_eq!(got.len(), 3);
        for s in &got {
            let v: Vec<(i64, f64)> = s
                .samples(i64::MIN, i64::MAX)
                .map(|x| match x.unwrap() {
                    Sample::Float(t, v) => (t, v),
                    o => panic!("{o:?}"),
                })
                .collect();
            assert_eq!(v, (0..8 * 60).map(|m| (m * 60_000, m as f64)).collect::<Vec<_>>());
        }

        // Nothing more to do within the delay; the scratch space is emptied.
        let r = c.pass().await.unwrap();
        assert_eq!(r, PassReport { compactions: 0, marked: 0, cleaned: 0, broken: 1 });
        assert!(std::fs::read_dir(data.path().join("compact")).map_or(true, |d| d.count() == 0));

        // With no delay the marked sources are deleted, every object of them.
        let r = compactor(&bucket, data.path(), 0, 0).pass().await.unwrap();
        assert_eq!(r.cleaned, 4);
        let l = listing(&bucket).await;
        assert!(sources.iter().all(|id| !l.contains_key(id)));
        assert!(l.contains_key(new[0]) && l.contains_key(&newest));

        // Retention marks raw blocks that ended before now - retention (all of these).
        let r = compactor(&bucket, data.path(), 48 * H, H).pass().await.unwrap();
        assert_eq!(r.marked, 4);
        assert!(
            listing(&bucket)
                .await
                .values()
                .filter(|l| l.meta)
                .all(|l| l.deletion_mark || !l.files.contains(&"index".to_string()))
        );
    }

    #[tokio::test]
    async fn corrupt_source_fails_its_group_only() {
        let bdir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let bucket = Bucket::filesystem(bdir.path()).unwrap();
        let mut bad = Vec::new();
        for h in [0, 2, 4, 6, 8] {
            upload_block(&bucket, h, h + 2, 2, "good").await;
            bad.push(upload_block(&bucket, h, h + 2, 2, "bad").await);
        }
        let key = format!("{}/index", bad[1]);
        let mut idx = bucket.get(&key).await.unwrap().to_vec();
        let n = idx.len();
        for b in &mut idx[n / 3..n / 3 + 16] {
            *b ^= 0x5a;
        }
        bucket.put(&key, Bytes::from(idx)).await.unwrap();
        let c = compactor(&bucket, data.path(), 48 * H, 0);
        match c.pass().await {
            Err(RunError::Groups { failed: 1, groups: 2 }) => {}
            other => panic!("{other:?}"),
        }
        let l = listing(&bucket).await;
        assert!(bad.iter().all(|id| !l[id].deletion_mark), "the failed group's blocks stay unmarked");
        assert_eq!(l.values().filter(|l| l.deletion_mark).count(), 4, "the good group was compacted");
        assert!(std::fs::read_dir(data.path().join("compact")).map_or(true, |d| d.count() == 0));
    }

    #[tokio::test]
    async fn no_compact_mark_and_leftover_duplicates() {
        let bdir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let bucket = Bucket::filesystem(bdir.path()).unwrap();
        let mut ids = Vec::new();
        for h in [0, 2, 4, 6, 8] {
            ids.push(upload_block(&bucket, h, h + 2, 1, "a").await);
        }
        let mark = json!({"id": ids[2].to_string(), "version": 1, "no_compact_time": 1, "reason": "manual"});
        bucket.put(&format!("{}/{NO_COMPACT_MARK}", ids[2]), Bytes::from(mark.to_string())).await.unwrap();
        let c = compactor(&bucket, data.path(), 48 * H, 0);
        let r = c.pass().await.unwrap();
        // [0,2) and [2,4) merge; the marked block splits the range, [6,8) stays alone.
        assert_eq!((r.compactions, r.marked), (1, 2));
        let l = listing(&bucket).await;
        assert!(l[&ids[0]].deletion_mark && l[&ids[1]].deletion_mark);
        assert!(ids[2..].iter().all(|id| !l[id].deletion_mark));

        // A crash between upload and marking leaves sources unmarked: the next pass marks
        // them as covered by the merged block.
        for id in &ids[..2] {
            bucket.delete(&format!("{id}/{DELETION_MARK}")).await.unwrap();
        }
        let r = c.pass().await.unwrap();
        assert_eq!((r.compactions, r.marked), (0, 2));
    }

    #[test]
    fn listing_groups_by_block() {
        let id = Ulid::from_parts(5, 5);
        let keys: Vec<(String, u64)> = [
            format!("{id}/meta.json"),
            format!("{id}/index"),
            format!("{id}/chunks/000001"),
            format!("{id}/{NO_COMPACT_MARK}"),
            "debug/metas/x.json".into(),
            "README".into(),
        ]
        .into_iter()
        .map(|k| (k, 1))
        .collect();
        let g = group_listing(&keys);
        assert_eq!(g.len(), 1);
        let l = &g[&id];
        assert!(l.meta && l.no_compact_mark && !l.deletion_mark);
        assert_eq!(l.files, vec!["meta.json", "index", "chunks/000001", NO_COMPACT_MARK]);
    }

    #[test]
    fn meta_and_mark_checks() {
        let id = Ulid::from_parts(5, 5);
        let meta = |thanos: &str| {
            format!(
                r#"{{"ulid":"{id}","minTime":0,"maxTime":10,"stats":{{}},"compaction":{{"level":1,"sources":["{id}"]}},"version":1{thanos}}}"#
            )
        };
        let m =
            parse_meta(id, meta(r#","thanos":{"labels":{"a":"1"},"downsample":{"resolution":0}}"#).as_bytes()).unwrap();
        assert_eq!(m.group.labels, BTreeMap::from([("a".to_string(), "1".to_string())]));
        for (bytes, want) in [
            (meta(""), "no thanos section"),
            (meta(r#","thanos":{"labels":{"a":1}}"#), "not a string"),
            (meta(r#","thanos":[]"#), "not an object"),
            (meta(r#","thanos":{"downsample":{"resolution":"x"}}"#), "not an integer"),
            ("{".to_string(), ""),
            (meta("").replace(&id.to_string(), &Ulid::from_parts(6, 6).to_string()), "does not match"),
        ] {
            let e = parse_meta(id, bytes.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{bytes}: {e}");
        }
        assert_eq!(parse_deletion_mark(br#"{"id":"x","deletion_time":1700000000,"version":1}"#), Ok(1_700_000_000));
        assert!(parse_deletion_mark(br#"{"id":"x","deletion_time":1,"version":2}"#).is_err());
        assert!(parse_deletion_mark(br#"{"id":"x","version":1}"#).is_err());
        assert!(parse_deletion_mark(b"\xff").is_err());
    }
}
