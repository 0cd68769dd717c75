//! WAL checkpoints (spec §7.4): after the head drops persisted data, everything up to a
//! segment is folded into `checkpoint.NNNNNNNN/` keeping only what the head still needs,
//! and the folded segments are deleted.

use std::path::{Path, PathBuf};

use super::record::{self, Record};
use super::{Compression, SyncPolicy, Wal, WalOptions, list_segments, read_segments, segment_path, sync_dir};
use crate::{Result, TsdbError};

const PREFIX: &str = "checkpoint.";

/// The newest complete checkpoint in `wal_dir`: its number (last folded segment) and path.
pub fn last_checkpoint(wal_dir: &Path) -> Result<Option<(u32, PathBuf)>> {
    Ok(list_checkpoints(wal_dir)?.pop())
}

fn list_checkpoints(wal_dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(wal_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(TsdbError::io("read dir", wal_dir)(e)),
    };
    for ent in rd {
        let ent = ent.map_err(TsdbError::io("read dir", wal_dir))?;
        let name = ent.file_name();
        let Some(num) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            continue; // e.g. an unfinished `.tmp`
        }
        if let Ok(n) = num.parse::<u32>() {
            out.push((n, ent.path()));
        }
    }
    out.sort_unstable_by_key(|(n, _)| *n);
    Ok(out)
}

/// Counts of what a checkpoint kept and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Series records kept (series still in the head).
    pub kept_series: u64,
    /// Series records dropped.
    pub dropped_series: u64,
    /// Samples (floats and histograms) at or after the cut-off kept.
    pub kept_samples: u64,
    /// Samples before the cut-off dropped.
    pub dropped_samples: u64,
    /// Tombstone intervals kept.
    pub kept_tombstones: u64,
    /// Tombstone intervals dropped.
    pub dropped_tombstones: u64,
    /// Exemplars of kept series at or after the cut-off kept.
    pub kept_exemplars: u64,
    /// Exemplars dropped.
    pub dropped_exemplars: u64,
}

/// Folds the previous checkpoint and segments `..=to` of `wal_dir` into
/// `checkpoint.<to>`, keeping series for which `keep` is true, samples and tombstones
/// at or after `mint`, and exemplars of kept series at or after `mint` (as Prometheus's
/// checkpoint does); then deletes the folded segments and older checkpoints. Other
/// record types are dropped (replay ignores them anyway).
pub fn create_checkpoint(
    wal_dir: &Path,
    to: u32,
    keep: impl Fn(u64) -> bool,
    mint: i64,
    compression: Compression,
) -> Result<CheckpointStats> {
    let prev = last_checkpoint(wal_dir)?;
    let from = prev.as_ref().map_or(0, |(n, _)| n + 1);
    let final_dir = wal_dir.join(format!("{PREFIX}{to:08}"));
    let tmp = wal_dir.join(format!("{PREFIX}{to:08}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(TsdbError::io("remove", &tmp))?;
    }
    let mut w = Wal::open(&tmp, WalOptions { compression, sync: SyncPolicy::OnSegmentSwitch, ..Default::default() })?;
    let mut stats = CheckpointStats::default();
    let mut out = Vec::new();
    let mut filter = |rec: &[u8], w: &mut Wal, stats: &mut CheckpointStats, path: &Path| -> Result<()> {
        let r = record::decode(rec).map_err(|e| TsdbError::corrupt(path, e))?;
        out.clear();
        let mut extra = Vec::new();
        match r {
            Record::Series(mut s) => {
                let before = s.len();
                s.retain(|s| keep(s.series_ref));
                stats.kept_series += s.len() as u64;
                stats.dropped_series += (before - s.len()) as u64;
                if !s.is_empty() {
                    record::encode_series(&s, &mut out);
                }
            }
            Record::Samples(mut s) => {
                let before = s.len();
                s.retain(|s| s.t >= mint);
                stats.kept_samples += s.len() as u64;
                stats.dropped_samples += (before - s.len()) as u64;
                if !s.is_empty() {
                    record::encode_samples(&s, &mut out);
                }
            }
            Record::Tombstones(mut s) => {
                let before = s.len();
                s.retain(|s| keep(s.series_ref) && s.maxt >= mint);
                stats.kept_tombstones += s.len() as u64;
                stats.dropped_tombstones += (before - s.len()) as u64;
                if !s.is_empty() {
                    record::encode_tombstones(&s, &mut out);
                }
            }
            Record::Exemplars(mut s) => {
                let before = s.len();
                s.retain(|e| keep(e.series_ref) && e.t >= mint);
                stats.kept_exemplars += s.len() as u64;
                stats.dropped_exemplars += (before - s.len()) as u64;
                if !s.is_empty() {
                    record::encode_exemplars(&s, &mut out);
                }
            }
            Record::Histograms(mut s) => {
                let before = s.len();
                s.retain(|s| s.t >= mint);
                stats.kept_samples += s.len() as u64;
                stats.dropped_samples += (before - s.len()) as u64;
                record::encode_histograms(&s, &mut extra);
            }
            Record::FloatHistograms(mut s) => {
                let before = s.len();
                s.retain(|s| s.t >= mint);
                stats.kept_samples += s.len() as u64;
                stats.dropped_samples += (before - s.len()) as u64;
                record::encode_float_histograms(&s, &mut extra);
            }
            Record::Unknown(_) => {}
        }
        if !out.is_empty() {
            w.log(&[&out])?;
        }
        for r in &extra {
            w.log(&[r])?;
        }
        Ok(())
    };
    let result = (|| -> Result<()> {
        if let Some((_, p)) = &prev {
            read_segments(p, 0, false, |rec| filter(rec, &mut w, &mut stats, p))?;
        }
        for seg in list_segments(wal_dir)?.into_iter().filter(|&s| s >= from && s <= to) {
            let path = segment_path(wal_dir, seg);
            let data = std::fs::read(&path).map_err(TsdbError::io("read", &path))?;
            let mut r = super::SegmentReader::new(&data);
            loop {
                match r.next() {
                    Ok(Some(rec)) => filter(rec, &mut w, &mut stats, &path)?,
                    Ok(None) => break,
                    Err(e) => return Err(TsdbError::corrupt_at(&path, e.offset as u64, e.what)),
                }
            }
        }
        Ok(())
    })();
    let closed = w.close();
    if let Err(e) = result.and(closed) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&tmp)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(TsdbError::io("remove", &final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(TsdbError::io("rename", &tmp))?;
    sync_dir(wal_dir)?;
    // The checkpoint is durable; what it replaces can go.
    for seg in list_segments(wal_dir)?.into_iter().filter(|&s| s <= to) {
        let p = segment_path(wal_dir, seg);
        std::fs::remove_file(&p).map_err(TsdbError::io("remove", &p))?;
    }
    for (n, p) in list_checkpoints(wal_dir)? {
        if n < to {
            std::fs::remove_dir_all(&p).map_err(TsdbError::io("remove", &p))?;
        }
    }
    sync_dir(wal_dir)?;
    Ok(stats)
}
