//! One compaction pass over a bucket: clean, apply retention, plan and merge per group.

use std::collections::{BTreeMap, BTreeSet, HashSet};
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

use crate::downsample;
use crate::metrics::Metrics;
use crate::plan::{GroupKey, PlanBlock, plan};
use crate::{Config, RunError};

/// Marker of a block scheduled for deletion.
pub const DELETION_MARK: &str = "deletion-mark.json";
/// Marker of a block excluded from compaction.
pub const NO_COMPACT_MARK: &str = "no-compact-mark.json";
/// Marker of a block excluded from downsampling.
pub const NO_DOWNSAMPLE_MARK: &str = "no-downsample-mark.json";

/// What the bucket listing says about one block directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Every object of the block, relative to `<ulid>/`.
    pub files: Vec<String>,
    pub meta: bool,
    pub deletion_mark: bool,
    pub no_compact_mark: bool,
    pub no_downsample_mark: bool,
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
            NO_DOWNSAMPLE_MARK => e.no_downsample_mark = true,
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

/// The listing of a block just uploaded, from its meta's `thanos.files`.
fn uploaded_listing(meta: &BlockMeta) -> Listed {
    let files = meta
        .extra
        .get("thanos")
        .and_then(|t| t.get("files"))
        .and_then(|f| f.as_array())
        .map(|fs| fs.iter().filter_map(|f| f.get("rel_path")?.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    Listed { files, meta: true, ..Listed::default() }
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
    /// Downsampled blocks uploaded.
    pub downsampled: usize,
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
                    downsampled = r.downsampled,
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

        // Downsampling and retention work on the bucket as compaction left it.
        let mut metas = self.live_metas().await?;
        let mut ds_failed = 0;
        if self.cfg.downsampling {
            ds_failed = self.downsample_all(&mut metas, &mut report).await?;
        }
        let now = now_ms();
        for (m, _) in &metas {
            let keep = match m.group.resolution {
                0 => self.cfg.retention_raw_ms,
                downsample::RES_5M => self.cfg.retention_5m_ms,
                downsample::RES_1H => self.cfg.retention_1h_ms,
                _ => 0,
            };
            if keep > 0 && m.meta.max_time < now.saturating_sub(keep) {
                let why = format!("retention of resolution {} ms", m.group.resolution);
                self.mark_for_deletion(m.meta.ulid, &why).await?;
                report.marked += 1;
            }
        }
        if failed > 0 {
            return Err(RunError::Groups { failed, groups: n_groups });
        }
        if ds_failed > 0 {
            return Err(RunError::Downsample { failed: ds_failed });
        }
        Ok(report)
    }

    /// Blocks with a readable meta.json and no deletion mark (broken ones were logged by
    /// the pass already).
    async fn live_metas(&self) -> Result<Vec<(Meta, Listed)>, RunError> {
        let listing = group_listing(&self.bucket.list_with_sizes("").await?);
        let mut out = Vec::new();
        for (id, l) in listing {
            if l.deletion_mark || !l.meta {
                continue;
            }
            if let Ok(b) = self.bucket.get(&format!("{id}/meta.json")).await
                && let Ok(m) = parse_meta(id, &b)
            {
                out.push((m, l));
            }
        }
        out.sort_by_key(|(m, _)| (m.meta.min_time, m.meta.ulid));
        Ok(out)
    }

    /// Thanos's two downsampling rounds: raw blocks of ≥ 40h whose sources no 5m block
    /// covers yet get one, then likewise 5m blocks of ≥ 10 days a 1h block. New blocks
    /// are added to `metas`. Returns how many blocks failed (logged and counted; the
    /// others are still done).
    async fn downsample_all(
        &self,
        metas: &mut Vec<(Meta, Listed)>,
        report: &mut PassReport,
    ) -> Result<usize, RunError> {
        let mut failed = 0;
        for (from, to, min_range) in [
            (0, downsample::RES_5M, downsample::RANGE_5M),
            (downsample::RES_5M, downsample::RES_1H, downsample::RANGE_1H),
        ] {
            let covered: HashSet<Ulid> = metas
                .iter()
                .filter(|(m, _)| m.group.resolution == to)
                .flat_map(|(m, _)| m.meta.compaction.sources.iter().copied())
                .collect();
            let todo: Vec<(Meta, Listed)> = metas
                .iter()
                .filter(|(m, l)| {
                    m.group.resolution == from
                        && !l.no_downsample_mark
                        && m.meta.max_time - m.meta.min_time >= min_range
                        && m.meta.compaction.sources.iter().any(|s| !covered.contains(s))
                })
                .cloned()
                .collect();
            for (m, l) in todo {
                self.metrics.downsamples.get_or_create(&Metrics::resolution(to)).inc();
                match self.downsample_one(&m, &l, to).await {
                    Ok(new) => {
                        report.downsampled += 1;
                        let listed = uploaded_listing(&new.meta);
                        metas.push((new, listed));
                    }
                    Err(e) => {
                        failed += 1;
                        self.metrics.downsample_failures.get_or_create(&Metrics::resolution(to)).inc();
                        tracing::error!(block = %m.meta.ulid, group = %m.group, resolution = to, error = %e,
                            "downsampling failed");
                    }
                }
            }
        }
        Ok(failed)
    }

    /// Downloads a block, downsamples it to `to` and uploads the result.
    async fn downsample_one(&self, m: &Meta, l: &Listed, to: i64) -> Result<Meta, RunError> {
        let scratch = self.cfg.data_dir.join("compact").join(Ulid::generate().to_string());
        let id = m.meta.ulid;
        tracing::info!(block = %id, group = %m.group, from = m.group.resolution, to, mint = m.meta.min_time,
            maxt = m.meta.max_time, "downsampling block");
        let started = std::time::Instant::now();
        let r = async {
            let dir = self.download(id, l, &scratch).await?;
            let out_parent = scratch.join("out");
            let (meta, from) = (m.meta.clone(), m.group.resolution);
            let (new, rep) =
                tokio::task::spawn_blocking(move || downsample::downsample_block(&dir, &meta, from, to, &out_parent))
                    .await?
                    .map_err(|e| std::io::Error::other(format!("downsampling block {id}: {e}")))?;
            let source = m.meta.extra.get("thanos").and_then(|t| t.get("source")).and_then(|s| s.as_str());
            let t = ThanosMeta {
                labels: m.group.labels.clone(),
                source: source.unwrap_or("compactor").to_string(),
                resolution: to,
            };
            let dir = scratch.join("out").join(new.ulid.to_string());
            let uploaded =
                norn_block::upload(&self.bucket, &dir, &t).await.map_err(|e| std::io::Error::other(e.to_string()))?;
            if rep.histogram_series > 0 {
                tracing::warn!(block = %id, series = rep.histogram_series,
                    "native-histogram samples are not downsampled; left out of the downsampled block");
            }
            tracing::info!(block = %id, downsampled = %new.ulid, resolution = to, series = rep.series,
                elapsed = ?started.elapsed(), "downsampled block uploaded");
            Ok::<_, RunError>(Meta {
                meta: uploaded,
                group: GroupKey { resolution: to, labels: m.group.labels.clone() },
            })
        }
        .await;
        if let Err(e) = tokio::fs::remove_dir_all(&scratch).await {
            tracing::warn!(dir = %scratch.display(), error = %e, "could not remove scratch directory");
        }
        r
    }

    /// Downloads the index, meta.json and chunk segments of block `id` to `<scratch>/<id>`.
    async fn download(&self, id: Ulid, l: &Listed, scratch: &Path) -> Result<PathBuf, RunError> {
        let dir = scratch.join(id.to_string());
        tokio::fs::create_dir_all(dir.join("chunks")).await?;
        for f in l.files.iter().filter(|f| *f == "index" || *f == "meta.json" || f.starts_with("chunks/")) {
            self.bucket.download_file(&format!("{id}/{f}"), &dir.join(f)).await?;
        }
        Ok(dir)
    }

    /// Merges the group's blocks level by level until the planner has nothing left.
    async fn compact_group(&self, key: GroupKey, mut blocks: Vec<(Meta, Listed)>) -> Result<PassReport, RunError> {
        let mut report = PassReport::default();
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
                // Its file list lets a later round of this pass download it.
                let listed = uploaded_listing(&meta);
                blocks.push((Meta { meta, group: key.clone() }, listed));
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
            dirs.push(self.download(m.meta.ulid, l, scratch).await?);
        }
        let out_parent = scratch.join("out");
        let downsampled = key.resolution != 0;
        let meta = tokio::task::spawn_blocking(move || -> Result<BlockMeta, String> {
            if downsampled {
                // Aggregate chunks are passed through: the tsdb merge would decode them.
                let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
                return downsample::merge_downsampled(&refs, &out_parent).map_err(|e| format!("merging: {e}"));
            }
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
        let uploaded =
            norn_block::upload(&self.bucket, &dir, &t).await.map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Some(uploaded))
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
            retention_5m_ms: 0,
            retention_1h_ms: 0,
            downsampling: true,
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
        assert_eq!(r, PassReport { compactions: 1, marked: 4, cleaned: 0, broken: 1, downsampled: 0 });
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
        assert_eq!(r, PassReport { compactions: 0, marked: 0, cleaned: 0, broken: 1, downsampled: 0 });
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

    /// Downloads block `id` and returns its series with their aggregate chunks decoded
    /// (count and counter sub-chunks as samples).
    async fn aggregates(bucket: &Bucket, id: Ulid, dir: &Path) -> Vec<(Labels, Vec<(i64, f64)>, Vec<(i64, f64)>)> {
        let dl = dir.join(id.to_string());
        for (k, _) in bucket.list_with_sizes(&id.to_string()).await.unwrap() {
            let rel = k.strip_prefix(&format!("{id}/")).unwrap();
            std::fs::create_dir_all(dl.join(rel).parent().unwrap()).unwrap();
            bucket.download_file(&k, &dl.join(rel)).await.unwrap();
        }
        let b = Block::open(&dl).unwrap();
        let mut out = Vec::new();
        for sid in b.index().all_postings().unwrap() {
            let (l, refs) = b.index().series(sid).unwrap();
            let (mut count, mut counter) = (Vec::new(), Vec::new());
            for r in refs {
                let (enc, data) = b.chunks().raw_chunk(r.chunk_ref).unwrap();
                assert_eq!(enc, 0xFF);
                let a = norn_tsdb::chunkenc::aggr::AggrChunk::decode(&data).unwrap();
                for (t, dst) in [
                    (norn_tsdb::chunkenc::aggr::AggrType::Count, &mut count),
                    (norn_tsdb::chunkenc::aggr::AggrType::Counter, &mut counter),
                ] {
                    for smp in a.get(t).unwrap().iter().unwrap() {
                        match smp {
                            Sample::Float(t, v) => dst.push((t, v)),
                            o => panic!("{o:?}"),
                        }
                    }
                }
            }
            out.push((l, count, counter));
        }
        out
    }

    #[tokio::test]
    async fn downsamples_raw_to_5m_once_and_applies_its_retention() {
        let bdir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let bucket = Bucket::filesystem(bdir.path()).unwrap();
        let raw = upload_block(&bucket, 0, 48, 2, "a").await;
        // Too short to downsample (< 40h).
        let short = upload_block(&bucket, 48, 50, 1, "a").await;
        let c = compactor(&bucket, data.path(), 48 * H, 0);
        let r = c.pass().await.unwrap();
        assert_eq!((r.downsampled, r.compactions, r.marked), (1, 0, 0));
        let l = listing(&bucket).await;
        let new: Vec<Ulid> = l.keys().copied().filter(|id| *id != raw && *id != short).collect();
        assert_eq!(new.len(), 1);
        let m = parse_meta(new[0], &bucket.get(&format!("{}/meta.json", new[0])).await.unwrap()).unwrap();
        assert_eq!(m.group.resolution, downsample::RES_5M);
        assert_eq!(m.group.labels, BTreeMap::from([("r".to_string(), "a".to_string())]));
        assert_eq!((m.meta.min_time, m.meta.max_time), (0, 48 * H));
        assert_eq!(m.meta.compaction.sources, vec![raw]);
        assert_eq!(m.meta.extra["thanos"]["source"], "test");
        assert_eq!(m.meta.stats.num_series, 2);
        assert_eq!(m.meta.stats.num_samples, 2 * 48 * 12);
        let got = aggregates(&bucket, new[0], data.path()).await;
        assert_eq!(got.len(), 2);
        for (_, count, counter) in &got {
            assert_eq!(count.len(), 48 * 12);
            // Whole windows; a chunk's last window ends at its last sample.
            assert!(count.iter().all(|&(t, v)| v == 5.0 && ((t + 1) % (5 * 60_000) == 0 || t % 60_000 == 0)));
            assert!(count.windows(2).all(|w| w[0].0 < w[1].0));
            // The counter ends with the last raw value (minute index 48·60 − 1).
            assert_eq!(counter.last().unwrap().1, (48 * 60 - 1) as f64);
        }
        assert_eq!(c.metrics.downsamples.get_or_create(&Metrics::resolution(downsample::RES_5M)).get(), 1);

        // Its sources are covered now: nothing more to do.
        let r = c.pass().await.unwrap();
        assert_eq!(r.downsampled, 0);

        // 5m retention marks the 5m block only; disabled downsampling makes nothing new.
        let mut c = compactor(&bucket, data.path(), 48 * H, 0);
        c.cfg.retention_5m_ms = H;
        let r = c.pass().await.unwrap();
        assert_eq!((r.marked, r.downsampled), (1, 0));
        let l = listing(&bucket).await;
        assert!(l[&new[0]].deletion_mark && !l[&raw].deletion_mark);
        let mut c = compactor(&bucket, data.path(), 48 * H, 0);
        c.cfg.downsampling = false;
        assert_eq!(c.pass().await.unwrap().downsampled, 0);
    }

    #[tokio::test]
    async fn downsamples_ten_days_to_5m_and_1h() {
        let bdir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let bucket = Bucket::filesystem(bdir.path()).unwrap();
        // Ten days, one series, a sample every 10 minutes counting up.
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::new(dir.path(), 0, 240 * H).unwrap();
        let samples = (0..240 * 6).map(|i| (i * 600_000, i as f64));
        w.add_series(&Labels::from_pairs([("__name__", "c")]), &encode_float_chunks(samples, 120)).unwrap();
        let meta = w.finish().unwrap();
        let t = ThanosMeta { labels: BTreeMap::from([("r".into(), "x".into())]), source: "test".into(), resolution: 0 };
        norn_block::upload(&bucket, &dir.path().join(meta.ulid.to_string()), &t).await.unwrap();

        let c = compactor(&bucket, data.path(), 48 * H, 0);
        let r = c.pass().await.unwrap();
        assert_eq!(r.downsampled, 2);
        let mut by_res = BTreeMap::new();
        for id in listing(&bucket).await.keys() {
            let m = parse_meta(*id, &bucket.get(&format!("{id}/meta.json")).await.unwrap()).unwrap();
            by_res.insert(m.group.resolution, m);
        }
        assert_eq!(by_res.keys().copied().collect::<Vec<_>>(), vec![0, downsample::RES_5M, downsample::RES_1H]);
        let h1 = &by_res[&downsample::RES_1H];
        assert_eq!(h1.meta.compaction.sources, vec![meta.ulid]);
        assert_eq!((h1.meta.min_time, h1.meta.max_time), (0, 240 * H));
        let got = aggregates(&bucket, h1.meta.ulid, data.path()).await;
        assert_eq!(got.len(), 1);
        let (_, count, counter) = &got[0];
        // 240 hours of 6 samples each.
        assert_eq!(count.len(), 240);
        assert_eq!(count.iter().map(|s| s.1).sum::<f64>(), 1440.0);
        assert!(count.iter().all(|s| s.1 == 6.0));
        // The counter never resets: its last window value is the last raw value.
        let n = counter.len();
        assert_eq!(counter[n - 1], counter[n - 2]);
        assert_eq!(counter[n - 1].1, 1439.0);
        assert_eq!(counter[0], (0, 0.0));
    }

    /// Uploads a 5m block over `[mint, maxt)` h of one counter series (a raw sample every
    /// 5 minutes, value = minutes since 0).
    async fn upload_5m(bucket: &Bucket, mint: i64, maxt: i64) -> Ulid {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::new(dir.path(), mint * H, maxt * H).unwrap();
        let raw: Vec<(i64, f64)> = (mint * 12..maxt * 12).map(|i| (i * 300_000, (i * 5) as f64)).collect();
        let (chunks, n) = downsample::downsample_raw(&raw, downsample::RES_5M);
        w.add_series_raw(&Labels::from_pairs([("__name__", "c")]), &chunks, n).unwrap();
        let meta = w.finish().unwrap();
        let t = ThanosMeta {
            labels: BTreeMap::from([("r".into(), "5m".into())]),
            source: "compactor".into(),
            resolution: downsample::RES_5M,
        };
        norn_block::upload(bucket, &dir.path().join(meta.ulid.to_string()), &t).await.unwrap();
        meta.ulid
    }

    #[tokio::test]
    async fn downsampled_group_compacts_then_downsamples_to_1h() {
        let bdir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let bucket = Bucket::filesystem(bdir.path()).unwrap();
        let mut two_days = Vec::new();
        for d in 0..7 {
            two_days.push(upload_5m(&bucket, d * 48, d * 48 + 48).await);
        }
        let newest = upload_5m(&bucket, 336, 338).await;
        let c = compactor(&bucket, data.path(), 48 * H, 0);
        let r = c.pass().await.unwrap();
        assert_eq!((r.compactions, r.marked, r.downsampled), (1, 7, 1));
        let l = listing(&bucket).await;
        assert!(two_days.iter().all(|id| l[id].deletion_mark) && !l[&newest].deletion_mark);
        let mut by_res: BTreeMap<i64, Vec<Meta>> = BTreeMap::new();
        for (id, li) in &l {
            if li.deletion_mark {
                continue;
            }
            let m = parse_meta(*id, &bucket.get(&format!("{id}/meta.json")).await.unwrap()).unwrap();
            by_res.entry(m.group.resolution).or_default().push(m);
        }
        let fives = &by_res[&downsample::RES_5M];
        let merged = fives.iter().find(|m| m.meta.ulid != newest).unwrap();
        assert_eq!((merged.meta.min_time, merged.meta.max_time), (0, 336 * H));
        assert_eq!(merged.meta.compaction.sources.len(), 7);
        // The merged block passes the aggregate chunks through: the same windows.
        let got = aggregates(&bucket, merged.meta.ulid, data.path()).await;
        assert_eq!(got[0].1.len(), 336 * 12);
        let hour = &by_res[&downsample::RES_1H];
        assert_eq!(hour.len(), 1);
        assert_eq!(hour[0].meta.compaction.sources, merged.meta.compaction.sources);
        let got = aggregates(&bucket, hour[0].meta.ulid, data.path()).await;
        let (_, count, counter) = &got[0];
        assert_eq!(count.len(), 336);
        assert!(count.iter().all(|s| s.1 == 12.0), "{count:?}");
        // A counter without resets: the last window holds the last raw value, 5 per 5m.
        assert_eq!(counter.last().unwrap().1, ((336 * 12 - 1) * 5) as f64);
        assert_eq!(counter[counter.len() - 2].1, ((336 * 12 - 1) * 5) as f64);
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
