//! One TSDB (head + WAL + local blocks) per tenant under `--tsdb.path/<tenant>`.
//!
//! The storage engine's `Db` is not on main yet, so this module puts the pieces
//! together itself: blocks opened at start, the head replaying its WAL, head compaction
//! adding the new block to the queryable set before the head drops that data, and
//! time-based retention.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use norn_model::{Labels, LabelsBuilder, Matcher};
use norn_tsdb::block::{Block, open_blocks};
use norn_tsdb::head::{Head, HeadOptions, HeadSeries};
use norn_tsdb::meta::BlockMeta;
use norn_tsdb::series::{Series, merge_series};
use parking_lot::{Mutex, RwLock};

/// Where a series' chunks are, to be read when it is sent.
#[derive(Debug, Clone)]
pub enum Source {
    /// A series of a local block, by index id.
    Block(Arc<Block>, u32),
    /// A head series.
    Head(HeadSeries),
}

/// A series found by [`TenantDb::select_lazy`]: its labels and the places holding its
/// chunks.
#[derive(Debug, Clone)]
pub struct LazySeries {
    pub labels: Labels,
    pub sources: Vec<Source>,
}

/// Folds neighbours with equal labels into one entry (input sorted by labels).
pub fn group_lazy(sorted: Vec<LazySeries>) -> Vec<LazySeries> {
    let mut out: Vec<LazySeries> = Vec::with_capacity(sorted.len());
    for s in sorted {
        match out.last_mut() {
            Some(last) if last.labels == s.labels => last.sources.extend(s.sources),
            _ => out.push(s),
        }
    }
    out
}

/// Reads the chunks of `s` overlapping `[mint, maxt]` from all its sources, merged as
/// [`TenantDb::select`] merges them; `None` when nothing is left (e.g. the head
/// dropped the data since the lookup).
pub fn load_series(s: &LazySeries, mint: i64, maxt: i64) -> norn_tsdb::Result<Option<Series>> {
    let mut refs = Vec::new();
    if let [one] = s.sources.as_slice() {
        // Nothing to merge; the labels are the source's own.
        return match one {
            Source::Block(b, id) => b.series_by_id(*id, mint, maxt, &mut refs),
            Source::Head(h) => Ok(h.series(mint, maxt)),
        };
    }
    let mut sets = Vec::with_capacity(s.sources.len());
    for src in &s.sources {
        let got = match src {
            Source::Block(b, id) => b.series_by_id(*id, mint, maxt, &mut refs)?,
            Source::Head(h) => h.series(mint, maxt),
        };
        // Sources of one entry may come from several tenants whose stored labels
        // differ only by what external labels override; merge under the entry's labels.
        sets.push(
            got.into_iter()
                .map(|mut x| {
                    x.labels = s.labels.clone();
                    x
                })
                .collect(),
        );
    }
    Ok(merge_series(sets).pop())
}

/// Why a tenant name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant {0:?}: tenant names are 1-255 characters of [A-Za-z0-9_.-], not starting with '.'")]
pub struct InvalidTenant(pub String);

/// Checks a tenant name so it cannot escape the data directory or clash with
/// the engine's own files.
pub fn validate_tenant(t: &str) -> Result<(), InvalidTenant> {
    let ok = !t.is_empty()
        && t.len() <= 255
        && !t.starts_with('.')
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok { Ok(()) } else { Err(InvalidTenant(t.to_string())) }
}

/// One tenant's database.
#[derive(Debug)]
pub struct TenantDb {
    pub tenant: String,
    dir: PathBuf,
    pub head: Head,
    blocks: RwLock<Vec<Arc<Block>>>,
    /// External labels of this TSDB (the `--label` flags, ring labels, tenant label).
    pub ext_labels: Labels,
    compact_lock: Mutex<()>,
}

impl TenantDb {
    /// Opens (or creates) the tenant directory: blocks first, so the head knows which
    /// samples are already persisted, then the head with WAL replay.
    pub fn open(dir: &Path, tenant: &str, ext_labels: Labels, opts: HeadOptions) -> norn_tsdb::Result<TenantDb> {
        std::fs::create_dir_all(dir).map_err(norn_tsdb::TsdbError::io("create dir", dir))?;
        let (blocks, broken) = open_blocks(dir);
        for (p, e) in broken {
            tracing::error!(tenant, block = %p.display(), error = %e, "skipping unreadable block");
        }
        let newest = blocks.iter().map(|b| b.meta().max_time).max().unwrap_or(i64::MIN);
        let head = Head::open(dir, HeadOptions { min_valid_time: opts.min_valid_time.max(newest), ..opts })?;
        let st = head.replay_stats();
        tracing::info!(
            tenant,
            blocks = blocks.len(),
            wal_segments = st.segments,
            series = st.series,
            samples = st.samples,
            exemplars = st.exemplars,
            "tenant TSDB opened"
        );
        Ok(TenantDb {
            tenant: tenant.to_string(),
            dir: dir.to_path_buf(),
            head,
            blocks: RwLock::new(blocks.into_iter().map(Arc::new).collect()),
            ext_labels,
            compact_lock: Mutex::new(()),
        })
    }

    /// The tenant directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The local blocks, oldest first.
    pub fn blocks(&self) -> Vec<Arc<Block>> {
        self.blocks.read().clone()
    }

    /// Series from head and blocks matching `matchers` (without external labels) in
    /// `[mint, maxt]`, merged by label set, in label order.
    pub fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> norn_tsdb::Result<Vec<Series>> {
        let mut sets = Vec::new();
        for b in self.blocks() {
            let m = b.meta();
            if m.max_time <= mint || m.min_time > maxt {
                continue;
            }
            sets.push(if matchers.is_empty() { b.select_all(mint, maxt)? } else { b.select(matchers, mint, maxt)? });
        }
        sets.push(self.head.select(matchers, mint, maxt));
        Ok(merge_series(sets))
    }

    /// Like [`TenantDb::select`], but reads only labels and chunk time ranges now:
    /// each entry names where the series' chunks are, to be read by [`load_series`]
    /// when the series is sent. Sorted by labels, one entry per label set.
    pub fn select_lazy(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> norn_tsdb::Result<Vec<LazySeries>> {
        let mut all: Vec<LazySeries> = Vec::new();
        let mut refs = Vec::new();
        for b in self.blocks() {
            let m = b.meta();
            if m.max_time <= mint || m.min_time > maxt {
                continue;
            }
            let ids = if matchers.is_empty() {
                b.index().all_postings()?
            } else {
                b.index().postings_for_matchers(matchers)?
            };
            for id in ids {
                let labels = b.index().series_into(id, &mut refs)?;
                if refs.iter().any(|r| r.max_time >= mint && r.min_time <= maxt) {
                    all.push(LazySeries { labels, sources: vec![Source::Block(b.clone(), id)] });
                }
            }
        }
        let from_blocks = !all.is_empty();
        for h in self.head.select_lazy(matchers) {
            all.push(LazySeries { labels: h.labels().clone(), sources: vec![Source::Head(h)] });
        }
        if !from_blocks {
            return Ok(all); // the head's series alone: sorted, one per label set
        }
        // Stable: for one label set, blocks (oldest first) stay ahead of the head.
        all.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(group_lazy(all))
    }

    /// Earliest sample time held (blocks or head); `None` when empty.
    pub fn min_time(&self) -> Option<i64> {
        let b = self.blocks.read().iter().map(|b| b.meta().min_time).min();
        let h = Some(self.head.min_time()).filter(|&t| t != i64::MAX);
        match (b, h) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Cuts head blocks while the head spans more than 1.5 block ranges; each new block
    /// becomes queryable before its data leaves the head.
    pub fn compact(&self) -> norn_tsdb::Result<Vec<BlockMeta>> {
        let _g = self.compact_lock.lock();
        if !self.head.compactable() {
            return Ok(Vec::new());
        }
        self.head.compact_with(&self.dir, |meta| {
            let b = Block::open(&self.dir.join(meta.ulid.to_string()))?;
            let mut bl = self.blocks.write();
            bl.push(Arc::new(b));
            bl.sort_by_key(|b| b.meta().min_time);
            Ok(())
        })
    }

    /// Deletes blocks that ended before `cutoff` and that `may_delete` allows (e.g.
    /// already uploaded). Returns the deleted ULIDs.
    pub fn apply_retention(&self, cutoff: i64, may_delete: impl Fn(&BlockMeta) -> bool) -> Vec<ulid::Ulid> {
        let doomed: Vec<Arc<Block>> = {
            let mut bl = self.blocks.write();
            let (old, keep): (Vec<_>, Vec<_>) =
                bl.drain(..).partition(|b| b.meta().max_time <= cutoff && may_delete(b.meta()));
            *bl = keep;
            old
        };
        let mut out = Vec::new();
        for b in doomed {
            let dir = b.dir().to_path_buf();
            let id = b.meta().ulid;
            drop(b);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => out.push(id),
                Err(e) => tracing::warn!(tenant = self.tenant, block = %dir.display(), error = %e, "retention delete"),
            }
        }
        out
    }
}

/// Settings shared by all tenants' TSDBs.
#[derive(Debug, Clone)]
pub struct TsdbSettings {
    pub root: PathBuf,
    pub head: HeadOptions,
    /// `--label` flags.
    pub labels: Vec<(String, String)>,
    /// `--receive.tenant-label-name`; empty adds no tenant label (single-tenant use, whose
    /// answers then equal those of a Prometheus fed the same data).
    pub tenant_label: String,
}

/// All tenants' TSDBs.
#[derive(Debug)]
pub struct MultiTsdb {
    settings: TsdbSettings,
    tenants: RwLock<BTreeMap<String, Arc<TenantDb>>>,
    open_lock: Mutex<()>,
}

impl MultiTsdb {
    /// An empty set; call [`MultiTsdb::open_existing`] to load what is on disk.
    pub fn new(settings: TsdbSettings) -> MultiTsdb {
        MultiTsdb { settings, tenants: RwLock::new(BTreeMap::new()), open_lock: Mutex::new(()) }
    }

    /// External labels of a tenant's TSDB.
    pub fn ext_labels(&self, tenant: &str, ring_labels: &BTreeMap<String, String>) -> Labels {
        let mut b = LabelsBuilder::new();
        for (n, v) in ring_labels {
            b.set(n, v);
        }
        for (n, v) in &self.settings.labels {
            b.set(n, v);
        }
        if !self.settings.tenant_label.is_empty() {
            b.set(&self.settings.tenant_label, tenant);
        }
        b.build()
    }

    /// Opens every tenant directory found under the root (replaying WALs). Invalid
    /// directory names are skipped with a warning.
    pub fn open_existing(&self) -> norn_tsdb::Result<()> {
        let root = &self.settings.root;
        std::fs::create_dir_all(root).map_err(norn_tsdb::TsdbError::io("create dir", root))?;
        let rd = std::fs::read_dir(root).map_err(norn_tsdb::TsdbError::io("read dir", root))?;
        for e in rd {
            let e = e.map_err(norn_tsdb::TsdbError::io("read dir", root))?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
            if !e.path().is_dir() || validate_tenant(&name).is_err() {
                if e.path().is_dir() {
                    tracing::warn!(dir = name, "ignoring directory that is not a valid tenant name");
                }
                continue;
            }
            self.get_or_open(&name, &BTreeMap::new())?;
        }
        Ok(())
    }

    /// The tenant's TSDB, opening it on first use. Blocking (WAL replay).
    pub fn get_or_open(
        &self,
        tenant: &str,
        ring_labels: &BTreeMap<String, String>,
    ) -> norn_tsdb::Result<Arc<TenantDb>> {
        if let Some(t) = self.tenants.read().get(tenant) {
            return Ok(t.clone());
        }
        let _g = self.open_lock.lock();
        if let Some(t) = self.tenants.read().get(tenant) {
            return Ok(t.clone());
        }
        let db = Arc::new(TenantDb::open(
            &self.settings.root.join(tenant),
            tenant,
            self.ext_labels(tenant, ring_labels),
            self.settings.head,
        )?);
        self.tenants.write().insert(tenant.to_string(), db.clone());
        Ok(db)
    }

    /// The tenant's TSDB if open.
    pub fn get(&self, tenant: &str) -> Option<Arc<TenantDb>> {
        self.tenants.read().get(tenant).cloned()
    }

    /// All open tenants, by name.
    pub fn all(&self) -> Vec<Arc<TenantDb>> {
        self.tenants.read().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names() {
        for ok in ["default-tenant", "team_a", "a.b", "X1"] {
            assert!(validate_tenant(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "a b", "ü", &"x".repeat(256)] {
            assert!(validate_tenant(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn open_append_reopen_select() {
        let dir = tempfile::tempdir().unwrap();
        let settings = TsdbSettings {
            root: dir.path().to_path_buf(),
            head: HeadOptions::default(),
            labels: vec![("replica".into(), "r0".into())],
            tenant_label: "tenant_id".into(),
        };
        let m = MultiTsdb::new(settings.clone());
        let db = m.get_or_open("t1", &BTreeMap::new()).unwrap();
        assert_eq!(db.ext_labels.to_string(), r#"{replica="r0", tenant_id="t1"}"#);
        let l = Labels::from_pairs([("__name__", "up"), ("job", "a")]);
        let mut app = db.head.appender();
        for t in 0..10 {
            app.append(&l, t * 1000, t as f64).unwrap();
        }
        app.commit().unwrap();
        drop(db);
        drop(m);

        let m = MultiTsdb::new(settings);
        m.open_existing().unwrap();
        let db = m.get("t1").expect("reopened");
        let got = db.select(&[Matcher::equal("job", "a")], 0, 100_000).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].samples(0, 100_000).count(), 10);
        assert_eq!(db.min_time(), Some(0));
    }

    #[test]
    fn tenant_label_name_empty_adds_no_label() {
        let dir = tempfile::tempdir().unwrap();
        for (name, want) in [("tenant_id", r#"{replica="r0", tenant_id="t1"}"#), ("", r#"{replica="r0"}"#)] {
            let m = MultiTsdb::new(TsdbSettings {
                root: dir.path().to_path_buf(),
                head: HeadOptions::default(),
                labels: vec![("replica".into(), "r0".into())],
                tenant_label: name.into(),
            });
            assert_eq!(m.ext_labels("t1", &BTreeMap::new()).to_string(), want, "tenant label name {name:?}");
        }
    }

    #[test]
    fn compaction_makes_blocks_queryable() {
        let dir = tempfile::tempdir().unwrap();
        let opts = HeadOptions { chunk_range: 10_000, ..HeadOptions::default() };
        let db = TenantDb::open(dir.path(), "t", Labels::empty(), opts).unwrap();
        let l = Labels::from_pairs([("__name__", "x")]);
        let mut app = db.head.appender();
        for t in 0..40 {
            app.append(&l, t * 1000, 1.0).unwrap();
        }
        app.commit().unwrap();
        let metas = db.compact().unwrap();
        assert!(!metas.is_empty());
        assert_eq!(db.blocks().len(), metas.len());
        let s = db.select(&[], 0, 100_000).unwrap();
        assert_eq!(s[0].samples(0, 100_000).count(), 40);
        let gone = db.apply_retention(i64::MAX, |_| true);
        assert_eq!(gone.len(), metas.len());
        assert!(db.blocks().is_empty());
    }
}
