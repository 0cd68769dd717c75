//! A read-only view of a data directory's head, rebuilt from `wal/` (checkpoint, then
//! segments) the way Prometheus replays it, for `dump`. Unlike opening the head for
//! writing, nothing in the directory is created, repaired or truncated.

use std::collections::HashMap;
use std::path::Path;

use norn_model::Labels;
use norn_tsdb::series::{SAMPLES_PER_CHUNK, Series, encode_float_chunks};
use norn_tsdb::wal::record::{self, Record};
use norn_tsdb::wal::{last_checkpoint, read_segments};

/// What replay found; `warning` is set when the WAL ends in damage (replay stops there,
/// as Prometheus's does after repairing).
#[derive(Debug, Default)]
pub struct WalHead {
    pub series: Vec<Series>,
    pub warning: Option<String>,
}

#[derive(Default)]
struct HeadSeries {
    samples: Vec<(i64, f64)>,
    deleted: Vec<(i64, i64)>,
}

/// Replays `dir/wal`. Samples before `min_valid_time` (the newest block's end) belong to
/// blocks and are skipped; per series, a sample not newer than the last one is dropped,
/// as in-order replay does. Histogram samples are not kept (dump prints floats only).
pub fn read_wal_head(dir: &Path, min_valid_time: i64) -> norn_tsdb::Result<WalHead> {
    let wal_dir = dir.join("wal");
    let mut by_ref: HashMap<u64, usize> = HashMap::new();
    let mut by_labels: HashMap<Labels, usize> = HashMap::new();
    let mut series: Vec<(Labels, HeadSeries)> = Vec::new();
    let mut handle = |rec: &[u8]| -> norn_tsdb::Result<()> {
        let r = record::decode(rec).map_err(|e| {
            norn_tsdb::TsdbError::corrupt_at(&wal_dir, e.offset as u64, format!("WAL record: {}", e.what))
        })?;
        match r {
            Record::Series(list) => {
                for s in list {
                    if s.labels.is_empty() {
                        continue;
                    }
                    let next = series.len();
                    let idx = *by_labels.entry(s.labels.clone()).or_insert(next);
                    if idx == next {
                        series.push((s.labels, HeadSeries::default()));
                    }
                    by_ref.insert(s.series_ref, idx);
                }
            }
            Record::Samples(list) => {
                for s in list {
                    let Some(&idx) = by_ref.get(&s.series_ref) else { continue };
                    if s.t < min_valid_time {
                        continue;
                    }
                    let hs = &mut series[idx].1;
                    if hs.samples.last().is_none_or(|&(lt, _)| s.t > lt) {
                        hs.samples.push((s.t, s.v));
                    }
                }
            }
            Record::Tombstones(list) => {
                for t in list {
                    if let Some(&idx) = by_ref.get(&t.series_ref) {
                        series[idx].1.deleted.push((t.mint, t.maxt));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    };
    let mut warning = None;
    let mut from = 0;
    if let Some((n, cp)) = last_checkpoint(&wal_dir)? {
        from = n + 1;
        if let Err(e) = read_segments(&cp, 0, false, &mut handle) {
            warning = Some(format!("WAL checkpoint: {e}"));
        }
    }
    if warning.is_none()
        && let Err(e) = read_segments(&wal_dir, from, false, &mut handle)
    {
        warning = Some(format!("WAL: {e}"));
    }
    let mut out: Vec<Series> = series
        .into_iter()
        .filter(|(_, hs)| !hs.samples.is_empty())
        .map(|(labels, hs)| {
            let mut deleted = hs.deleted;
            deleted.sort_unstable();
            let deleted = norn_tsdb::series::normalise_intervals(&deleted);
            Series { labels, chunks: encode_float_chunks(hs.samples, SAMPLES_PER_CHUNK), deleted }
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(WalHead { series: out, warning })
}
