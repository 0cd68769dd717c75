//! A database directory: persisted blocks plus the head, queried together.
//!
//! Layout as Prometheus's (spec §1): `<dir>/<ULID>/` blocks and `<dir>/wal/`. Blocks that
//! fail to open are logged and skipped so one broken block never takes the rest down.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use norn_model::Matcher;
use parking_lot::{Mutex, RwLock};

use crate::block::{Block, TMP_FOR_CREATION, open_blocks};
use crate::head::{Appender, Head, HeadOptions};
use crate::meta::BlockMeta;
use crate::series::{Series, merge_series};
use crate::{Result, TsdbError};

/// Suffix of a block directory being deleted.
pub const TMP_FOR_DELETION: &str = ".tmp-for-deletion";

/// Database settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct DbOptions {
    pub head: HeadOptions,
    /// Blocks whose end lies this many ms or more before the newest block's end are
    /// deleted (Prometheus's time retention); 0 keeps everything.
    pub retention: i64,
}

/// An open database. `Send + Sync`.
#[derive(Debug)]
pub struct Db {
    dir: PathBuf,
    opts: DbOptions,
    head: Head,
    blocks: RwLock<Vec<Arc<Block>>>,
    compaction: Mutex<()>,
}

impl Db {
    /// Opens (creating if needed) the database in `dir`: removes leftovers of interrupted
    /// block creation/deletion, opens the blocks (broken ones are logged with
    /// `tracing::warn!` and skipped), then replays the head's WAL with samples older than
    /// the newest block's end treated as persisted.
    pub fn open(dir: &Path, opts: DbOptions) -> Result<Db> {
        std::fs::create_dir_all(dir).map_err(TsdbError::io("create dir", dir))?;
        remove_tmp_dirs(dir)?;
        let (blocks, errors) = open_blocks(dir);
        for (path, err) in errors {
            tracing::warn!(block = %path.display(), error = %err, "skipping block that failed to open");
        }
        let newest = blocks.iter().map(|b| b.meta().max_time).max().unwrap_or(i64::MIN);
        let head_opts = HeadOptions { min_valid_time: opts.head.min_valid_time.max(newest), ..opts.head };
        let head = Head::open(dir, head_opts)?;
        let db = Db {
            dir: dir.to_path_buf(),
            opts,
            head,
            blocks: RwLock::new(blocks.into_iter().map(Arc::new).collect()),
            compaction: Mutex::new(()),
        };
        db.apply_retention()?;
        Ok(db)
    }

    /// Closes the head's WAL cleanly (see [`Head::close`]).
    pub fn close(self) -> Result<()> {
        self.head.close()
    }

    /// The database directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// A new appender on the head.
    pub fn appender(&self) -> Appender<'_> {
        self.head.appender()
    }

    /// The open blocks, sorted by min time.
    pub fn blocks(&self) -> Vec<Arc<Block>> {
        self.blocks.read().clone()
    }

    /// Series matching `matchers` (all series if empty) with data in `[mint, maxt]`,
    /// merged across blocks and head, sorted by labels.
    pub fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>> {
        let blocks = self.blocks();
        let mut sets = Vec::with_capacity(blocks.len() + 1);
        for b in blocks.iter().filter(|b| b.meta().min_time <= maxt && b.meta().max_time > mint) {
            let mut s = if matchers.is_empty() { b.select_all(mint, maxt)? } else { b.select(matchers, mint, maxt)? };
            s.sort_by(|a, b| a.labels.cmp(&b.labels));
            sets.push(s);
        }
        sets.push(self.head.select(matchers, mint, maxt));
        Ok(merge_series(sets))
    }

    /// Label names across blocks and head, sorted and unique.
    pub fn label_names(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<String> = self.head.label_names().into_iter().collect();
        for b in self.blocks() {
            names.extend(b.index().label_names().into_iter().filter(|n| !n.is_empty()).map(str::to_string));
        }
        names.into_iter().collect()
    }

    /// Values of label `name` across blocks and head, sorted and unique.
    pub fn label_values(&self, name: &str) -> Vec<String> {
        let mut values: std::collections::BTreeSet<String> = self.head.label_values(name).into_iter().collect();
        for b in self.blocks() {
            values.extend(b.index().label_values(name).into_iter().map(str::to_string));
        }
        values.into_iter().collect()
    }

    /// Persists the head's compactable data as blocks (each becomes queryable before
    /// the head drops it), then applies retention. Returns the new blocks' metas.
    pub fn compact(&self) -> Result<Vec<BlockMeta>> {
        let _g = self.compaction.lock();
        let metas = self.head.compact_with(&self.dir, |meta| {
            let b = Block::open(&self.dir.join(meta.ulid.to_string()))?;
            let mut blocks = self.blocks.write();
            blocks.push(Arc::new(b));
            blocks.sort_by_key(|b| (b.meta().min_time, b.meta().max_time));
            Ok(())
        })?;
        self.apply_retention()?;
        Ok(metas)
    }

    /// Deletes blocks beyond the time retention: renamed to `<ulid>.tmp-for-deletion`
    /// first so a crash never leaves a half-deleted block that looks valid.
    pub fn apply_retention(&self) -> Result<Vec<ulid::Ulid>> {
        if self.opts.retention <= 0 {
            return Ok(Vec::new());
        }
        let doomed: Vec<Arc<Block>> = {
            let mut blocks = self.blocks.write();
            let Some(newest) = blocks.iter().map(|b| b.meta().max_time).max() else { return Ok(Vec::new()) };
            let (old, keep): (Vec<_>, Vec<_>) =
                blocks.drain(..).partition(|b| newest.saturating_sub(b.meta().max_time) >= self.opts.retention);
            *blocks = keep;
            old
        };
        let mut deleted = Vec::new();
        for b in doomed {
            let from = b.dir().to_path_buf();
            let to = self.dir.join(format!("{}{TMP_FOR_DELETION}", b.meta().ulid));
            std::fs::rename(&from, &to).map_err(TsdbError::io("rename", &from))?;
            std::fs::remove_dir_all(&to).map_err(TsdbError::io("remove", &to))?;
            tracing::info!(block = %b.meta().ulid, "deleted block beyond retention");
            deleted.push(b.meta().ulid);
        }
        Ok(deleted)
    }
}

/// Removes `*.tmp-for-creation`, `*.tmp-for-deletion` and legacy `*.tmp` directories.
fn remove_tmp_dirs(dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(TsdbError::io("read dir", dir))?;
    for e in rd {
        let e = e.map_err(TsdbError::io("read dir", dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if [TMP_FOR_CREATION, TMP_FOR_DELETION, ".tmp"].iter().any(|s| name.ends_with(s)) && e.path().is_dir() {
            let p = e.path();
            std::fs::remove_dir_all(&p).map_err(TsdbError::io("remove", &p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use norn_model::Labels;

    use super::*;
    use crate::chunkenc::Sample;
    use crate::wal::{SyncPolicy, WalOptions};

    const H: i64 = 60 * 60 * 1000;

    fn opts(retention: i64) -> DbOptions {
        DbOptions {
            head: HeadOptions {
                wal: WalOptions { sync: SyncPolicy::OnSegmentSwitch, ..Default::default() },
                ..Default::default()
            },
            retention,
        }
    }

    fn count(db: &Db, m: &[Matcher]) -> (usize, usize) {
        let s = db.select(m, i64::MIN, i64::MAX).unwrap();
        let n = s
            .iter()
            .map(|s| s.samples(i64::MIN, i64::MAX).filter(|r| matches!(r, Ok(Sample::Float(..)))).count())
            .sum();
        (s.len(), n)
    }

    fn fill(db: &Db, from: i64, to: i64) {
        let mut t = from;
        while t < to {
            let mut app = db.appender();
            for i in 0..4 {
                app.append(&Labels::from_pairs([("__name__", "x"), ("i", &i.to_string())]), t, t as f64).unwrap();
            }
            app.commit().unwrap();
            t += 60_000;
        }
    }

    #[test]
    fn compaction_keeps_data_queryable_across_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path(), opts(0)).unwrap();
            fill(&db, 0, 8 * H);
            assert_eq!(count(&db, &[]), (4, 4 * 480));
            let metas = db.compact().unwrap();
            assert_eq!(metas.len(), 3);
            assert_eq!(db.blocks().len(), 3);
            assert_eq!(count(&db, &[]), (4, 4 * 480));
            assert_eq!(count(&db, &[Matcher::equal("i", "2")]), (1, 480));
            assert_eq!(db.label_names(), vec!["__name__", "i"]);
            assert_eq!(db.label_values("i"), vec!["0", "1", "2", "3"]);
            // Samples inside the persisted range are now out of bounds.
            let mut app = db.appender();
            assert!(app.append(&Labels::from_pairs([("i", "0")]), H, 1.0).is_err());
        }
        let db = Db::open(dir.path(), opts(0)).unwrap();
        assert_eq!(db.blocks().len(), 3);
        assert_eq!(count(&db, &[]), (4, 4 * 480));
        assert_eq!(db.head().replay_stats().dropped_samples, 0);
    }

    #[test]
    fn retention_deletes_old_blocks_and_broken_blocks_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts(4 * H)).unwrap();
        fill(&db, 0, 12 * H);
        db.compact().unwrap();
        let ranges: Vec<(i64, i64)> = db.blocks().iter().map(|b| (b.meta().min_time, b.meta().max_time)).collect();
        // Blocks up to 10h were cut; those ending 4h or more before 10h are gone.
        assert_eq!(ranges, vec![(6 * H, 8 * H), (8 * H, 10 * H)]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3); // 2 blocks + wal
        let broken = db.blocks()[0].dir().join("index");
        drop(db);
        std::fs::write(&broken, b"garbage").unwrap();
        std::fs::create_dir(dir.path().join(format!("01ARZ3NDEKTSV4RRFFQ69G5FAV{TMP_FOR_CREATION}"))).unwrap();
        let db = Db::open(dir.path(), opts(4 * H)).unwrap();
        assert_eq!(db.blocks().len(), 1);
        assert!(!dir.path().join(format!("01ARZ3NDEKTSV4RRFFQ69G5FAV{TMP_FOR_CREATION}")).exists());
        // The [8h,10h) block and the head's 10h..12h remain.
        assert_eq!(count(&db, &[]).1, 4 * (120 + 120));
    }
}
