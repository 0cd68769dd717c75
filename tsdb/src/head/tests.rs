use std::collections::BTreeMap;

use norn_model::{Labels, Matcher};

use super::*;
use crate::block::Block;
use crate::chunkenc::Sample;

const H: i64 = 60 * 60 * 1000;

fn lbl(i: usize) -> Labels {
    Labels::from_pairs([("__name__", "m"), ("i", &i.to_string())])
}

fn opts() -> HeadOptions {
    HeadOptions {
        wal: WalOptions { sync: wal::SyncPolicy::OnSegmentSwitch, ..Default::default() },
        ..Default::default()
    }
}

type Data = BTreeMap<String, Vec<(i64, u64)>>;

fn collect(series: &[Series], mint: i64, maxt: i64) -> Data {
    let mut out = Data::new();
    for s in series {
        let v: Vec<(i64, u64)> = s
            .samples(mint, maxt)
            .map(|r| match r.unwrap() {
                Sample::Float(t, v) => (t, v.to_bits()),
                other => panic!("{other:?}"),
            })
            .collect();
        out.entry(s.labels.to_string()).or_default().extend(v);
    }
    out
}

#[track_caller]
fn assert_same(got: &Data, want: &Data) {
    let gk: Vec<&String> = got.keys().collect();
    let wk: Vec<&String> = want.keys().collect();
    assert_eq!(gk, wk, "series differ");
    for (k, w) in want {
        let g = &got[k];
        if g != w {
            let i = g.iter().zip(w).position(|(a, b)| a != b).unwrap_or(g.len().min(w.len()));
            panic!(
                "{k}: {} samples vs {} wanted; first difference at #{i}: got {:?} want {:?}",
                g.len(),
                w.len(),
                g.get(i),
                w.get(i)
            );
        }
    }
}

fn head_data(h: &Head) -> Data {
    collect(&h.select(&[], i64::MIN, i64::MAX), i64::MIN, i64::MAX)
}

#[test]
fn append_rules() {
    use AppendError::*;
    // (ooo window, steps: (t, v, expected)); all on one series, each step committed.
    type Case = (i64, &'static [(i64, f64, Result<(), AppendError>)]);
    let cases: &[Case] = &[
        (0, &[(100, 1.0, Ok(())), (200, 2.0, Ok(())), (150, 3.0, Err(OutOfOrder))]),
        (0, &[(100, 1.0, Ok(())), (100, 1.0, Ok(())), (100, 2.0, Err(DuplicateSampleForTimestamp))]),
        // NaN with the same bits is a duplicate, not a conflict.
        (0, &[(100, f64::NAN, Ok(())), (100, f64::NAN, Ok(()))]),
        // Older than max - chunk_range/2 (1h) is out of bounds, even for a new series.
        (0, &[(3 * H, 1.0, Ok(())), (2 * H - 1, 1.0, Err(OutOfBounds)), (2 * H, 1.0, Err(OutOfOrder))]),
        // OOO window 30m: in-window accepted, older too old, OOO duplicates checked.
        (
            30 * 60_000,
            &[
                (3 * H, 1.0, Ok(())),
                (3 * H - 60_000, 2.0, Ok(())),
                (3 * H - 60_000, 2.0, Ok(())),
                (3 * H - 60_000, 3.0, Err(DuplicateSampleForTimestamp)),
                (2 * H, 1.0, Err(TooOldForOutOfOrderWindow)),
            ],
        ),
    ];
    for (ci, (window, steps)) in cases.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let h = Head::open(dir.path(), HeadOptions { out_of_order_time_window: *window, ..opts() }).unwrap();
        for (si, (t, v, want)) in steps.iter().enumerate() {
            let mut app = h.appender();
            assert_eq!(&app.append(&lbl(0), *t, *v), want, "case {ci} step {si}");
            app.commit().unwrap();
        }
    }
    // Within one batch: order and duplicates are checked against the batch too.
    let dir = tempfile::tempdir().unwrap();
    let h = Head::open(dir.path(), opts()).unwrap();
    let mut app = h.appender();
    app.append(&lbl(0), 10, 1.0).unwrap();
    assert_eq!(app.append(&lbl(0), 5, 1.0), Err(OutOfOrder));
    assert_eq!(app.append(&lbl(0), 10, 2.0), Err(DuplicateSampleForTimestamp));
    assert_eq!(app.append(&Labels::empty(), 10, 2.0), Err(EmptyLabels));
    app.append(&lbl(0), 10, 1.0).unwrap();
    assert_eq!(app.len(), 1);
    app.commit().unwrap();
    // Rollback leaves nothing visible.
    let mut app = h.appender();
    app.append(&lbl(1), 20, 1.0).unwrap();
    app.rollback();
    assert_eq!(head_data(&h).len(), 1);
    assert_eq!((h.min_time(), h.max_time()), (10, 10));
}

/// Two appenders on one series whose checks both passed; the second one commits first,
/// so the first one's sample may have become invalid by the time it commits. The
/// commit must say what it dropped (nothing used to), and the stored data must be the
/// first-committed value.
#[test]
fn commit_reports_samples_dropped_by_concurrent_commits() {
    let st = |f: fn(&mut CommitStats)| {
        let mut s = CommitStats::default();
        f(&mut s);
        s
    };
    // (ooo window, committed before, late appender's sample, early committer's samples,
    // late commit's stats, sample at the late sample's timestamp afterwards).
    type Case = (i64, &'static [(i64, f64)], (i64, f64), &'static [(i64, f64)], CommitStats, Option<f64>);
    let cases: Vec<(&str, Case)> = vec![
        ("out of order", (0, &[], (100, 1.0), &[(200, 2.0)], st(|s| s.out_of_order = 1), None)),
        ("same ts other value", (0, &[], (200, 1.0), &[(200, 2.0)], st(|s| s.duplicate_timestamp = 1), Some(2.0))),
        ("same ts same value", (0, &[], (200, 2.0), &[(200, 2.0)], st(|s| s.duplicates = 1), Some(2.0))),
        ("out of bounds", (0, &[], (1, 1.0), &[(3 * H, 2.0)], st(|s| s.out_of_bounds = 1), None)),
        ("in order still", (0, &[], (300, 1.0), &[(200, 2.0)], st(|s| s.applied = 1), Some(1.0))),
        // With an OOO window the late sample is still stored, unless its timestamp was
        // taken meanwhile (by in-order data) or it fell out of the window.
        ("ooo accepted", (H, &[], (100, 1.0), &[(200, 2.0)], st(|s| s.applied = 1), Some(1.0))),
        (
            "ooo ts taken in order, other value",
            (H, &[(100, 0.0)], (150, 1.0), &[(150, 2.0), (200, 3.0)], st(|s| s.duplicate_timestamp = 1), Some(2.0)),
        ),
        (
            "ooo ts taken in order, same value",
            (H, &[(100, 0.0)], (150, 2.0), &[(150, 2.0), (200, 3.0)], st(|s| s.duplicates = 1), Some(2.0)),
        ),
        ("ooo too old", (H, &[], (1, 1.0), &[(3 * H, 2.0)], st(|s| s.too_old = 1), None)),
    ];
    for (name, (window, before, (lt, lv), early, want, at)) in cases {
        let dir = tempfile::tempdir().unwrap();
        let h = Head::open(dir.path(), HeadOptions { out_of_order_time_window: window, ..opts() }).unwrap();
        let mut app = h.appender();
        for &(t, v) in before {
            app.append(&lbl(0), t, v).unwrap();
        }
        app.commit().unwrap();
        let mut late = h.appender();
        late.append(&lbl(0), lt, lv).unwrap_or_else(|e| panic!("{name}: late append: {e}"));
        let mut first = h.appender();
        for &(t, v) in early {
            first.append(&lbl(0), t, v).unwrap_or_else(|e| panic!("{name}: early append: {e}"));
        }
        let fs = first.commit().unwrap();
        assert_eq!((fs.applied, fs.dropped()), (early.len() as u64, 0), "{name}: first commit");
        let got = late.commit().unwrap();
        assert_eq!(got, want, "{name}");
        assert_eq!(got.dropped() > 0, at != Some(lv) && got.duplicates == 0, "{name}: dropped() agrees");
        let stored: Vec<(i64, u64)> = head_data(&h).into_values().next().unwrap_or_default();
        let value_at = stored.iter().find(|&&(t, _)| t == lt).map(|&(_, b)| f64::from_bits(b));
        assert_eq!(value_at, at, "{name}: stored at {lt}: {stored:?}");
        // The WAL holds exactly what each commit applied: replay (which accepts any
        // logged OOO sample, whatever the window) neither drops nor revives a sample.
        let data = head_data(&h);
        let n: usize = data.values().map(Vec::len).sum();
        drop(h);
        let h = Head::open(dir.path(), HeadOptions { out_of_order_time_window: window, ..opts() }).unwrap();
        assert_eq!(head_data(&h), data, "{name}: after replay");
        let rs = h.replay_stats();
        assert_eq!((rs.samples, rs.dropped_samples), (n as u64, 0), "{name}: samples logged = samples stored");
    }
}

#[test]
fn commit_logs_only_what_it_applies_within_a_batch() {
    // One batch: in-order 100 and 300, then 100 again out of order (accepted at append:
    // the batch's own samples are not in the series yet), then 50 out of order.
    let cases: Vec<(&str, f64, CommitStats, f64)> = vec![
        ("same value", 1.0, CommitStats { applied: 3, duplicates: 1, ..Default::default() }, 1.0),
        ("other value", 2.0, CommitStats { applied: 3, duplicate_timestamp: 1, ..Default::default() }, 1.0),
    ];
    for (name, v, want, at) in cases {
        let dir = tempfile::tempdir().unwrap();
        let o = HeadOptions { out_of_order_time_window: H, ..opts() };
        let h = Head::open(dir.path(), o).unwrap();
        let mut app = h.appender();
        for (t, v) in [(100, 1.0), (300, 1.0), (100, v), (50, 5.0)] {
            app.append(&lbl(0), t, v).unwrap_or_else(|e| panic!("{name}: append {t}: {e}"));
        }
        assert_eq!(app.commit().unwrap(), want, "{name}");
        let data = head_data(&h);
        let stored = data.values().next().unwrap().clone();
        assert_eq!(stored, vec![(50, 5f64.to_bits()), (100, at.to_bits()), (300, 1f64.to_bits())], "{name}");
        drop(h);
        let h = Head::open(dir.path(), o).unwrap();
        assert_eq!(head_data(&h), data, "{name}: after replay");
        assert_eq!((h.replay_stats().samples, h.replay_stats().dropped_samples), (3, 0), "{name}");
    }
}

fn fill(h: &Head, series: usize, from: i64, to: i64, step: i64, want: &mut Data) {
    let mut t = from;
    while t < to {
        let mut app = h.appender();
        for i in 0..series {
            let v = (t / step) as f64 * (i + 1) as f64;
            app.append(&lbl(i), t, v).unwrap();
            want.entry(lbl(i).to_string()).or_default().push((t, v.to_bits()));
        }
        app.commit().unwrap();
        t += step;
    }
}

#[test]
fn restart_replays_the_same_data() {
    // Small segments too, so replay crosses many segment switches.
    for (compression, segment_size) in
        [(wal::Compression::None, wal::DEFAULT_SEGMENT_SIZE), (wal::Compression::Snappy, wal::PAGE_SIZE)]
    {
        let dir = tempfile::tempdir().unwrap();
        let o = HeadOptions { wal: WalOptions { compression, segment_size, ..opts().wal }, ..opts() };
        let mut want = Data::new();
        {
            let h = Head::open(dir.path(), o).unwrap();
            fill(&h, 20, 1000, 1000 + 600 * 15_000, 15_000, &mut want);
            assert_same(&head_data(&h), &want);
        }
        let h = Head::open(dir.path(), o).unwrap();
        assert_same(&head_data(&h), &want);
        let st = h.replay_stats();
        assert_eq!((st.series, st.samples, st.dropped_samples), (20, 20 * 600, 0));
        if segment_size < wal::DEFAULT_SEGMENT_SIZE {
            assert!(st.segments >= 3, "{st:?}");
        }
        assert!(st.truncated.is_none());
        // Appending continues after the replayed data with the same refs.
        let mut app = h.appender();
        app.append(&lbl(3), 1000 + 600 * 15_000, 1.0).unwrap();
        app.commit().unwrap();
        drop(h);
        let h = Head::open(dir.path(), o).unwrap();
        assert_eq!(h.num_series(), 20);
        assert_eq!(h.replay_stats().samples, 20 * 600 + 1);
    }
}

#[test]
fn restart_with_torn_wal_keeps_committed_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut want = Data::new();
    {
        let h = Head::open(dir.path(), opts()).unwrap();
        fill(&h, 5, 0, 100 * 1000, 1000, &mut want);
    }
    let seg = wal::segment_path(&dir.path().join("wal"), 0);
    // Cut into the last record (the segment itself was padded when the head dropped).
    let data = std::fs::read(&seg).unwrap();
    let mut r = wal::SegmentReader::new(&data);
    let mut end = 0;
    while r.next().unwrap().is_some() {
        end = r.good_offset();
    }
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(end as u64 - 10).unwrap();
    let h = Head::open(dir.path(), opts()).unwrap();
    let st = h.replay_stats().clone();
    assert!(st.truncated.is_some());
    // The last commit (5 samples at t=99000) is lost, everything before survives.
    for v in want.values_mut() {
        v.pop();
    }
    assert_same(&head_data(&h), &want);
}

#[test]
fn compaction_cuts_blocks_at_boundaries_and_truncates_wal() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    std::fs::create_dir_all(&blocks).unwrap();
    let h = Head::open(dir.path(), opts()).unwrap();
    let mut want = Data::new();
    let start = 30 * 60_000; // not aligned
    fill(&h, 10, start, 7 * H, 15_000, &mut want);
    assert!(h.compactable());
    let metas = h.compact(&blocks).unwrap();
    // Head spans 0:30..7:00; blocks cut while span > 3h: [0:30,2h), [2h,4h).
    let ranges: Vec<(i64, i64)> = metas.iter().map(|m| (m.min_time, m.max_time)).collect();
    assert_eq!(ranges, vec![(start, 2 * H), (2 * H, 4 * H)]);
    assert!(!h.compactable());
    assert_eq!(h.min_time(), 4 * H);
    assert_eq!(h.min_valid_time(), 4 * H);
    let mut got = head_data(&h);
    for m in &metas {
        let b = Block::open(&blocks.join(m.ulid.to_string())).unwrap();
        assert_eq!(b.meta().compaction.level, 1);
        assert_eq!(b.meta().stats.num_samples, 10 * ((m.max_time - m.min_time) / 15_000) as u64);
        let s = b.select_all(i64::MIN, i64::MAX).unwrap();
        for c in s.iter().flat_map(|s| &s.chunks) {
            assert!(c.min_time >= m.min_time && c.max_time < m.max_time);
        }
        for (k, v) in collect(&s, i64::MIN, i64::MAX) {
            got.entry(k).or_default().extend(v);
        }
    }
    for v in got.values_mut() {
        v.sort_unstable();
    }
    assert_same(&got, &want);
    // WAL: checkpoint replaces the old segments; a restart restores only the head part.
    let wal_dir = dir.path().join("wal");
    assert!(wal::last_checkpoint(&wal_dir).unwrap().is_some());
    assert!(!wal::segment_path(&wal_dir, 0).exists());
    // Series are still in the head (they have data after 4h), so still indexed.
    assert_eq!(h.label_values("i").len(), 10);
    // Nothing more to persist: the WAL is left alone.
    let segs = wal::list_segments(&wal_dir).unwrap();
    assert!(h.compact(&blocks).unwrap().is_empty());
    assert_eq!(wal::list_segments(&wal_dir).unwrap(), segs);
    let head_part = head_data(&h);
    drop(h);
    let h = Head::open(dir.path(), HeadOptions { min_valid_time: 4 * H, ..opts() }).unwrap();
    assert_same(&head_data(&h), &head_part);
    assert_eq!(h.replay_stats().dropped_samples, 0);
}

#[test]
fn appends_continue_during_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    std::fs::create_dir_all(&blocks).unwrap();
    let h = Head::open(dir.path(), opts()).unwrap();
    let mut want = Data::new();
    fill(&h, 50, 0, 4 * H, 60_000, &mut want);
    let mut want2 = Data::new();
    std::thread::scope(|s| {
        s.spawn(|| fill(&h, 50, 4 * H, 5 * H, 60_000, &mut want2));
        while h.compactable() || h.max_time() < 5 * H - 60_000 {
            h.compact(&blocks).unwrap();
        }
    });
    for (k, v) in want2 {
        want.get_mut(&k).unwrap().extend(v);
    }
    let mut got = head_data(&h);
    for e in std::fs::read_dir(&blocks).unwrap() {
        let b = Block::open(&e.unwrap().path()).unwrap();
        for (k, v) in collect(&b.select_all(i64::MIN, i64::MAX).unwrap(), i64::MIN, i64::MAX) {
            got.entry(k).or_default().extend(v);
        }
    }
    for v in got.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    assert_same(&got, &want);
}

#[test]
fn out_of_order_window() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    std::fs::create_dir_all(&blocks).unwrap();
    let o = HeadOptions { out_of_order_time_window: 3 * H, ..opts() };
    let h = Head::open(dir.path(), o).unwrap();
    let mut want = Data::new();
    // In-order every minute over 0..6h, then OOO samples on the half minute over 3h..6h.
    fill(&h, 3, 0, 6 * H, 60_000, &mut want);
    fill(&h, 3, 3 * H + 30_000, 6 * H, 60_000, &mut want);
    for v in want.values_mut() {
        v.sort_unstable();
    }
    assert_same(&head_data(&h), &want);
    // Replay puts OOO samples back into the OOO buffer.
    drop(h);
    let h = Head::open(dir.path(), o).unwrap();
    assert_same(&head_data(&h), &want);
    assert_eq!(h.replay_stats().dropped_samples, 0);
    // Compaction: in-order blocks [0,2h) and [2h,4h), the latter merging OOO samples
    // into non-overlapping chunks.
    let metas = h.compact(&blocks).unwrap();
    assert_eq!(metas.iter().map(|m| (m.min_time, m.max_time)).collect::<Vec<_>>(), vec![(0, 2 * H), (2 * H, 4 * H)]);
    assert_eq!(metas[1].stats.num_samples, 3 * (120 + 60));
    // An OOO sample into the persisted range [2h,4h), within the 3h window.
    let mut app = h.appender();
    app.append(&lbl(0), 3 * H + 15_000, 42.0).unwrap();
    app.commit().unwrap();
    want.get_mut(&lbl(0).to_string()).unwrap().push((3 * H + 15_000, 42f64.to_bits()));
    let metas2 = h.compact(&blocks).unwrap();
    assert_eq!(metas2.len(), 1);
    assert_eq!((metas2[0].min_time, metas2[0].max_time), (2 * H, 4 * H));
    assert_eq!(metas2[0].compaction.hints, vec!["from-out-of-order".to_string()]);
    let mut got = head_data(&h);
    for m in metas.iter().chain(&metas2) {
        let b = Block::open(&blocks.join(m.ulid.to_string())).unwrap();
        let s = b.select_all(i64::MIN, i64::MAX).unwrap();
        for s in &s {
            assert!(!s.has_overlapping_chunks(), "block chunks must not overlap");
        }
        for (k, v) in collect(&s, i64::MIN, i64::MAX) {
            got.entry(k).or_default().extend(v);
        }
    }
    for v in got.values_mut() {
        v.sort_unstable();
    }
    for v in want.values_mut() {
        v.sort_unstable();
    }
    assert_same(&got, &want);
}

#[test]
fn select_filters_by_matchers_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let h = Head::open(dir.path(), opts()).unwrap();
    let mut want = Data::new();
    fill(&h, 5, 0, 100_000, 1000, &mut want);
    let s = h.select(&[Matcher::equal("i", "3")], 10_000, 19_999);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].labels, lbl(3));
    assert_eq!(collect(&s, 10_000, 19_999).values().next().unwrap().len(), 10);
    assert!(h.select(&[Matcher::equal("i", "9")], 0, 100_000).is_empty());
    let all = h.select(&[], 0, i64::MAX);
    assert!(all.windows(2).all(|w| w[0].labels < w[1].labels));
    let re = |v: &str| Matcher::new(norn_model::MatchType::Regex, "i", v).unwrap();
    assert_eq!(h.select(&[re("1|3|7")], 0, i64::MAX).len(), 2);
    assert_eq!(h.select(&[re(".*[24]")], 0, i64::MAX).len(), 2);
    let ne = Matcher::new(norn_model::MatchType::NotEqual, "i", "0").unwrap();
    assert_eq!(h.select(&[Matcher::equal("__name__", "m"), ne], 0, i64::MAX).len(), 4);
    assert_eq!(h.label_names(), vec!["__name__", "i"]);
    assert_eq!(h.label_values("i"), vec!["0", "1", "2", "3", "4"]);
}

fn hist(i: u64) -> norn_model::Histogram {
    norn_model::Histogram {
        schema: 1,
        zero_threshold: 1e-128,
        zero_count: i,
        count: 4 * i,
        sum: i as f64 * 2.5,
        positive_spans: vec![norn_model::Span { offset: -1, length: 3 }],
        positive_buckets: vec![i as i64, 0, i as i64],
        ..Default::default()
    }
}

fn all_samples(series: &[Series]) -> BTreeMap<String, Vec<Sample>> {
    let mut out: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for s in series {
        out.entry(s.labels.to_string()).or_default().extend(s.samples(i64::MIN, i64::MAX).map(|r| r.unwrap()));
    }
    out
}

#[test]
fn native_histograms_append_replay_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    let h = Head::open(dir.path(), opts()).unwrap();
    let (hl, fl) = (lbl(100), lbl(101));
    let mut want: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for i in 0..(7 * 60) {
        let t = i * 60_000;
        let mut app = h.appender();
        app.append_histogram(&hl, t, &hist(i as u64 + 1)).unwrap();
        app.append_float_histogram(&fl, t, &hist(i as u64 + 1).to_float()).unwrap();
        app.commit().unwrap();
        want.entry(hl.to_string()).or_default().push(Sample::Histogram(t, Box::new(hist(i as u64 + 1))));
        want.entry(fl.to_string())
            .or_default()
            .push(Sample::FloatHistogram(t, Box::new(hist(i as u64 + 1).to_float())));
    }
    // Rules: duplicates must be identical; histograms are in order only.
    let mut app = h.appender();
    app.append_histogram(&hl, 0, &hist(1)).unwrap_err();
    assert_eq!(app.append_histogram(&hl, 419 * 60_000, &hist(420)), Ok(()));
    assert_eq!(app.append_histogram(&hl, 419 * 60_000, &hist(5)), Err(AppendError::DuplicateSampleForTimestamp));
    assert_eq!(app.append(&hl, 419 * 60_000, 1.0), Err(AppendError::DuplicateSampleForTimestamp));
    let mut bad = hist(1);
    bad.positive_buckets.pop();
    assert!(matches!(app.append_histogram(&hl, 500 * 60_000, &bad), Err(AppendError::InvalidHistogram(_))));
    app.rollback();

    let norm = |m: BTreeMap<String, Vec<Sample>>| -> BTreeMap<String, Vec<Sample>> {
        // Chunk decoding sets counter-reset hints from the chunk header; compare the rest.
        m.into_iter()
            .map(|(k, v)| {
                let v = v
                    .into_iter()
                    .map(|s| match s {
                        Sample::Histogram(t, mut h) => {
                            h.counter_reset_hint = Default::default();
                            Sample::Histogram(t, h)
                        }
                        Sample::FloatHistogram(t, mut h) => {
                            h.counter_reset_hint = Default::default();
                            Sample::FloatHistogram(t, h)
                        }
                        s => s,
                    })
                    .collect();
                (k, v)
            })
            .collect()
    };
    let want = norm(want);
    assert_eq!(norm(all_samples(&h.select(&[], i64::MIN, i64::MAX))), want);
    drop(h);
    let h = Head::open(dir.path(), opts()).unwrap();
    assert_eq!(h.replay_stats().samples, 2 * 7 * 60);
    assert_eq!(norm(all_samples(&h.select(&[], i64::MIN, i64::MAX))), want);
    let metas = h.compact(&blocks).unwrap();
    assert_eq!(metas.len(), 2);
    let mut got = all_samples(&h.select(&[], i64::MIN, i64::MAX));
    for m in metas.iter().rev() {
        assert_eq!(m.stats.num_histogram_samples, m.stats.num_samples);
        let b = Block::open(&blocks.join(m.ulid.to_string())).unwrap();
        for (k, mut v) in all_samples(&b.select_all(i64::MIN, i64::MAX).unwrap()) {
            let e = got.entry(k).or_default();
            v.append(e);
            *e = v;
        }
    }
    assert_eq!(norm(got), want);
}

/// Interop check against a WAL written by a real Prometheus: run with
/// `NORN_PROM_DATA=<prometheus data dir> cargo test -p norn-tsdb --lib -- --ignored prometheus_wal`.
/// Replays a copy of its `wal/` and checks every series has samples.
#[test]
#[ignore]
fn replays_a_prometheus_wal() {
    let Ok(src) = std::env::var("NORN_PROM_DATA") else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("wal")).unwrap();
    for e in std::fs::read_dir(std::path::Path::new(&src).join("wal")).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), dir.path().join("wal").join(e.file_name())).unwrap();
        }
    }
    let h = Head::open(dir.path(), opts()).unwrap();
    let st = h.replay_stats().clone();
    eprintln!("{st:?}");
    assert!(st.series > 0 && st.samples > 0 && st.truncated.is_none());
    let data = head_data(&h);
    assert_eq!(data.len() as u64, st.series);
    let up = h.select(&[Matcher::equal("__name__", "up")], i64::MIN, i64::MAX);
    assert_eq!(up.len(), 1);
    eprintln!("up: {:?}", collect(&up, i64::MIN, i64::MAX).values().next().unwrap());
}

/// Writes a WAL for a real Prometheus to replay: run with
/// `NORN_WRITE_DATA=<empty dir> cargo test -p norn-tsdb --lib -- --ignored wal_for_prometheus`,
/// then start `prometheus --storage.tsdb.path=<dir>` and query `norn_wal_test`.
#[test]
#[ignore]
fn wal_for_prometheus() {
    let Ok(dst) = std::env::var("NORN_WRITE_DATA") else { return };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let o = HeadOptions { wal: WalOptions { compression: wal::Compression::Snappy, ..opts().wal }, ..opts() };
    let h = Head::open(std::path::Path::new(&dst), o).unwrap();
    let mut t = now - 600_000;
    while t <= now {
        let mut app = h.appender();
        for i in 0..3 {
            let l = Labels::from_pairs([("__name__", "norn_wal_test"), ("i", &i.to_string())]);
            app.append(&l, t, (t - now) as f64 / 1000.0 + i as f64).unwrap();
        }
        app.append_histogram(
            &Labels::from_pairs([("__name__", "norn_wal_hist")]),
            t,
            &hist(((t - now + 600_000) / 15_000) as u64 + 1),
        )
        .unwrap();
        app.commit().unwrap();
        t += 15_000;
    }
    eprintln!("now={now}");
}

#[test]
fn concurrent_appenders_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let h = Head::open(dir.path(), opts()).unwrap();
    let threads = 4;
    let wants: Vec<Data> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|th| {
                let h = &h;
                s.spawn(move || {
                    let mut want = Data::new();
                    for step in 0..200i64 {
                        let mut app = h.appender();
                        for i in 0..25 {
                            let l = Labels::from_pairs([("th", th.to_string()), ("i", i.to_string())]);
                            // Every thread also writes the shared series; only in-order
                            // samples are accepted, so it is checked for order only.
                            let shared = Labels::from_pairs([("shared", "1")]);
                            let _ = app.append(&shared, step * 1000 + th, 1.0);
                            app.append(&l, step * 1000, step as f64).unwrap();
                            want.entry(l.to_string()).or_default().push((step * 1000, (step as f64).to_bits()));
                        }
                        app.commit().unwrap();
                        let _ = h.select(&[Matcher::equal("th", th.to_string())], 0, i64::MAX);
                    }
                    want
                })
            })
            .collect();
        hs.into_iter().map(|j| j.join().unwrap()).collect()
    });
    let mut want: Data = wants.into_iter().flatten().collect();
    let got = head_data(&h);
    let shared = got.get("{shared=\"1\"}").unwrap().clone();
    assert!(shared.windows(2).all(|w| w[0].0 < w[1].0));
    want.insert("{shared=\"1\"}".to_string(), shared);
    assert_same(&got, &want);
    h.close().unwrap();
    let h = Head::open(dir.path(), opts()).unwrap();
    assert_same(&head_data(&h), &want);
}

#[test]
fn delete_hides_samples_survives_restart_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    let mut want = Data::new();
    {
        let h = Head::open(dir.path(), opts()).unwrap();
        fill(&h, 3, 0, 7 * H, 60_000, &mut want);
        assert_eq!(h.delete(&[Matcher::equal("i", "1")], 30 * 60_000, 3 * H).unwrap(), 1);
        assert_eq!(h.delete(&[Matcher::equal("i", "9")], 0, 10).unwrap(), 0);
    }
    want.get_mut(&lbl(1).to_string()).unwrap().retain(|(t, _)| !(30 * 60_000..=3 * H).contains(t));
    let h = Head::open(dir.path(), opts()).unwrap();
    assert_same(&head_data(&h), &want);
    let metas = h.compact(&blocks).unwrap();
    assert_eq!(metas.len(), 2);
    let mut got = head_data(&h);
    for m in metas.iter().rev() {
        let b = Block::open(&blocks.join(m.ulid.to_string())).unwrap();
        for (k, mut v) in collect(&b.select_all(i64::MIN, i64::MAX).unwrap(), i64::MIN, i64::MAX) {
            let e = got.entry(k).or_default();
            v.append(e);
            *e = v;
        }
    }
    assert_same(&got, &want);
    // The checkpoint keeps tombstones that still matter (none here: all before 4h).
    drop(h);
    let h = Head::open(dir.path(), HeadOptions { min_valid_time: 4 * H, ..opts() }).unwrap();
    assert_eq!(head_data(&h).values().map(Vec::len).sum::<usize>(), 3 * 180);
}

#[test]
fn compaction_garbage_collects_persisted_series() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    let h = Head::open(dir.path(), opts()).unwrap();
    let gone = Labels::from_pairs([("__name__", "m"), ("i", "gone")]);
    let mut app = h.appender();
    app.append(&gone, 1000, 1.0).unwrap();
    app.commit().unwrap();
    let mut want = Data::new();
    fill(&h, 2, 0, 7 * H, 60_000, &mut want);
    assert_eq!(h.num_series(), 3);
    h.compact(&blocks).unwrap();
    assert_eq!(h.num_series(), 2);
    assert_eq!(h.label_values("i"), vec!["0", "1"]);
    assert!(h.select(&[Matcher::equal("i", "gone")], i64::MIN, i64::MAX).is_empty());
    drop(h);
    let h = Head::open(dir.path(), HeadOptions { min_valid_time: 4 * H, ..opts() }).unwrap();
    assert_eq!(h.num_series(), 2, "checkpoint must drop the collected series");
    // New series get refs above every replayed one.
    let mut app = h.appender();
    app.append(&gone, 8 * H, 1.0).unwrap();
    app.commit().unwrap();
    assert_eq!(h.num_series(), 3);
}

mod model {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Whatever `append` accepts is exactly what queries show after commit, and a
        /// restart replays exactly that (first value wins for repeated OOO timestamps).
        #[test]
        fn accepted_samples_are_visible_and_replayed(
            ops in prop::collection::vec((0usize..3, 0i64..400, 0u8..4, any::<bool>()), 1..300),
            ops2 in prop::collection::vec((0usize..3, 0i64..400, 0u8..4, any::<bool>()), 0..200),
            window in prop_oneof![Just(0i64), Just(100_000i64), Just(300_000i64)],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let o = HeadOptions { chunk_range: 200_000, out_of_order_time_window: window, ..opts() };
            let h = Head::open(dir.path(), o).unwrap();
            let mut model: BTreeMap<String, BTreeMap<i64, u64>> = BTreeMap::new();
            let mut app = h.appender();
            let mut batch: Vec<(String, i64, u64)> = Vec::new();
            for (series, tstep, val, commit) in ops {
                let t = tstep * 1000;
                let v = f64::from(val);
                if app.append(&lbl(series), t, v).is_ok() {
                    batch.push((lbl(series).to_string(), t, v.to_bits()));
                }
                if commit {
                    app.commit().unwrap();
                    for (k, t, v) in batch.drain(..) {
                        model.entry(k).or_default().entry(t).or_insert(v);
                    }
                    app = h.appender();
                }
            }
            app.commit().unwrap();
            for (k, t, v) in batch.drain(..) {
                model.entry(k).or_default().entry(t).or_insert(v);
            }
            let want: Data = model.into_iter().map(|(k, m)| (k, m.into_iter().collect())).collect();
            let got = head_data(&h);
            prop_assert_eq!(&got, &want);
            drop(h);
            let h = Head::open(dir.path(), o).unwrap();
            prop_assert_eq!(head_data(&h), want.clone());

            // Compaction (with OOO data in and before the persisted ranges) keeps every
            // sample exactly once across blocks and head, also after a restart.
            let blocks = dir.path().join("blocks");
            let metas = h.compact(&blocks).unwrap();
            let union = |h: &Head| -> Result<Data, TestCaseError> {
                let mut got = head_data(h);
                if let Ok(rd) = std::fs::read_dir(&blocks) {
                    for e in rd {
                        let b = Block::open(&e.unwrap().path()).unwrap();
                        for s in b.select_all(i64::MIN, i64::MAX).unwrap() {
                            prop_assert!(!s.has_overlapping_chunks());
                        }
                        for (k, v) in collect(&b.select_all(i64::MIN, i64::MAX).unwrap(), i64::MIN, i64::MAX) {
                            got.entry(k).or_default().extend(v);
                        }
                    }
                }
                for v in got.values_mut() {
                    v.sort_unstable();
                }
                Ok(got)
            };
            prop_assert_eq!(union(&h)?, want.clone());
            // Phase 2: the same operations half a second later (never colliding with
            // phase-1 timestamps), many now out of order or inside persisted ranges,
            // then compaction again (OOO blocks).
            let mut want = want;
            let mut app = h.appender();
            for (series, tstep, val, commit) in &ops2 {
                let t = tstep * 1000 + 500;
                if app.append(&lbl(*series), t, f64::from(*val)).is_ok() {
                    batch.push((lbl(*series).to_string(), t, f64::from(*val).to_bits()));
                }
                if *commit {
                    app.commit().unwrap();
                    app = h.appender();
                }
            }
            app.commit().unwrap();
            let mut model: BTreeMap<String, BTreeMap<i64, u64>> =
                want.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect();
            for (k, t, v) in batch.drain(..) {
                model.entry(k).or_default().entry(t).or_insert(v);
            }
            want = model.into_iter().map(|(k, m)| (k, m.into_iter().collect())).collect();
            let metas2 = h.compact(&blocks).unwrap();
            prop_assert_eq!(union(&h)?, want.clone());
            let min_valid = metas.iter().chain(&metas2).map(|m| m.max_time).max().unwrap_or(i64::MIN);
            drop(h);
            let h = Head::open(dir.path(), HeadOptions { min_valid_time: min_valid, ..o }).unwrap();
            prop_assert_eq!(union(&h)?, want);
        }
    }
}

mod exemplars {
    use super::*;
    use crate::exemplar::{Exemplar, ExemplarError, SeriesExemplars};

    fn ex(trace: &str, v: f64, ts: i64) -> Exemplar {
        Exemplar { labels: Labels::from_pairs([("trace_id", trace)]), value: v, ts }
    }

    fn all_exemplars(h: &Head) -> Vec<SeriesExemplars> {
        let any = vec![vec![Matcher::new(norn_model::MatchType::Regex, "__name__", ".+").unwrap()]];
        h.exemplars().select(i64::MIN, i64::MAX, &any)
    }

    fn eo() -> HeadOptions {
        HeadOptions { max_exemplars: 100, ..opts() }
    }

    #[test]
    fn append_rules() {
        let dir = tempfile::tempdir().unwrap();
        let h = Head::open(dir.path(), eo()).unwrap();
        let mut app = h.appender();
        // The series must exist: appended in this batch (or before).
        assert_eq!(app.append_exemplar(&lbl(0), ex("a", 1.0, 10)), Err(ExemplarError::UnknownSeries));
        app.append(&lbl(0), 10, 1.0).unwrap();
        app.append_exemplar(&lbl(0), ex("a", 1.0, 10)).unwrap();
        // Within the batch: a duplicate is ignored, an older one refused.
        app.append_exemplar(&lbl(0), ex("a", 1.0, 10)).unwrap();
        assert_eq!(app.append_exemplar(&lbl(0), ex("b", 1.0, 9)), Err(ExemplarError::OutOfOrder));
        let st = app.commit().unwrap();
        assert_eq!((st.applied, st.exemplars, st.exemplars_out_of_order), (1, 1, 0));
        // Against the stored ones.
        let mut app = h.appender();
        app.append_exemplar(&lbl(0), ex("a", 1.0, 10)).unwrap();
        assert_eq!(app.append_exemplar(&lbl(0), ex("b", 1.0, 10)), Err(ExemplarError::OutOfOrder));
        app.append_exemplar(&lbl(0), ex("c", 2.0, 20)).unwrap();
        // A concurrent commit stores a newer one first: this one is dropped, not logged.
        let mut other = h.appender();
        other.append_exemplar(&lbl(0), ex("d", 3.0, 30)).unwrap();
        assert_eq!(other.commit().unwrap().exemplars, 1);
        let st = app.commit().unwrap();
        assert_eq!((st.exemplars, st.exemplars_out_of_order), (0, 1));
        let want = vec![ex("a", 1.0, 10), ex("d", 3.0, 30)];
        assert_eq!(all_exemplars(&h)[0].exemplars, want);
        drop(h);
        let h = Head::open(dir.path(), eo()).unwrap();
        assert_eq!(all_exemplars(&h)[0].exemplars, want);
        assert_eq!((h.replay_stats().exemplars, h.replay_stats().dropped_exemplars), (2, 0));
        // Disabled storage refuses them (and replay skips the records).
        let off = Head::open(dir.path(), opts()).unwrap();
        assert!(all_exemplars(&off).is_empty());
        assert_eq!(off.replay_stats().dropped_exemplars, 2);
        assert_eq!(off.appender().append_exemplar(&lbl(0), ex("e", 1.0, 40)), Err(ExemplarError::Disabled));
    }

    /// A commit carrying samples, histograms and exemplars is one WAL write (one fsync
    /// under the per-commit policy) whose records come in Prometheus's order: series,
    /// samples, histograms, exemplars.
    #[test]
    fn one_commit_is_one_wal_write() {
        let dir = tempfile::tempdir().unwrap();
        let o = HeadOptions { wal: WalOptions::default(), ..eo() };
        let h = Head::open(dir.path(), o).unwrap();
        assert_eq!(h.wal_stats(), wal::WalStats::default());
        let mut app = h.appender();
        app.append(&lbl(0), 10, 1.0).unwrap();
        app.append_exemplar(&lbl(0), ex("a", 1.0, 10)).unwrap();
        app.append_histogram(&lbl(1), 10, &hist(1)).unwrap();
        app.append_exemplar(&lbl(1), ex("b", 2.0, 10)).unwrap();
        let st = app.commit().unwrap();
        assert_eq!((st.applied, st.exemplars), (2, 2));
        assert_eq!(h.wal_stats(), wal::WalStats { writes: 1, records: 4, fsyncs: 1 });
        // An exemplar-only commit (series already logged) is one write of one record.
        let mut app = h.appender();
        app.append_exemplar(&lbl(0), ex("c", 3.0, 20)).unwrap();
        app.commit().unwrap();
        assert_eq!(h.wal_stats(), wal::WalStats { writes: 2, records: 5, fsyncs: 2 });
        // Nothing to log: no write.
        h.appender().commit().unwrap();
        assert_eq!(h.wal_stats().writes, 2);
        drop(h);
        let mut kinds = Vec::new();
        wal::read_segments(&dir.path().join("wal"), 0, false, |rec| {
            kinds.push(match crate::wal::record::decode(rec).unwrap() {
                Record::Series(s) => format!("series:{}", s.len()),
                Record::Samples(s) => format!("samples:{}", s.len()),
                Record::Histograms(s) => format!("histograms:{}", s.len()),
                Record::Exemplars(s) => format!("exemplars:{}", s.len()),
                other => format!("{other:?}"),
            });
            Ok(())
        })
        .unwrap();
        assert_eq!(kinds, ["series:2", "samples:1", "histograms:1", "exemplars:2", "exemplars:1"]);
    }

    #[test]
    fn exemplars_survive_restart_and_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let blocks = dir.path().join("blocks");
        let h = Head::open(dir.path(), eo()).unwrap();
        // Series 0 lives on; series 1 stops early and is garbage-collected at compaction.
        let step = 10 * 60_000;
        let mut t = 0;
        while t < 7 * H {
            let mut app = h.appender();
            app.append(&lbl(0), t, 1.0).unwrap();
            app.append_exemplar(&lbl(0), ex(&format!("t{t}"), t as f64, t)).unwrap();
            if t < H {
                app.append(&lbl(1), t, 1.0).unwrap();
                app.append_exemplar(&lbl(1), ex("x", 1.0, t)).unwrap();
            }
            app.commit().unwrap();
            t += step;
        }
        let before = all_exemplars(&h);
        assert_eq!(before.len(), 2);
        drop(h);
        let h = Head::open(dir.path(), eo()).unwrap();
        assert_eq!(all_exemplars(&h), before);
        h.compact(&blocks).unwrap();
        assert!(wal::last_checkpoint(&h.wal_dir()).unwrap().is_some());
        let mint = h.min_valid_time();
        drop(h);
        // After the checkpoint: only series 0's exemplars at or after its cut-off.
        let h = Head::open(dir.path(), eo()).unwrap();
        let got = all_exemplars(&h);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].series, lbl(0));
        let want: Vec<Exemplar> = before[0].exemplars.iter().filter(|e| e.ts >= mint).cloned().collect();
        assert!(!want.is_empty() && want.len() < before[0].exemplars.len());
        assert_eq!(got[0].exemplars, want);
    }
}

#[test]
fn commit_rechecks_when_another_series_moved_the_window() {
    // The late sample's own series is untouched, but another series' commit moves the
    // head's max time so far that the sample falls out of the appendable window.
    for (window, want) in [
        (0, CommitStats { out_of_bounds: 1, ..Default::default() }),
        (H, CommitStats { too_old: 1, ..Default::default() }),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let o = HeadOptions { out_of_order_time_window: window, ..opts() };
        let h = Head::open(dir.path(), o).unwrap();
        let mut app = h.appender();
        app.append(&lbl(0), 1, 1.0).unwrap();
        app.append(&lbl(1), 1, 1.0).unwrap();
        app.commit().unwrap();
        let mut late = h.appender();
        late.append(&lbl(0), 2, 2.0).unwrap();
        let mut other = h.appender();
        other.append(&lbl(1), 3 * H, 1.0).unwrap();
        other.commit().unwrap();
        assert_eq!(late.commit().unwrap(), want, "window {window}");
        let data = head_data(&h);
        drop(h);
        let h = Head::open(dir.path(), o).unwrap();
        assert_eq!(head_data(&h), data, "window {window}: after replay");
        assert_eq!(h.replay_stats().dropped_samples, 0);
    }
}

#[test]
fn concurrent_commits_log_exactly_what_they_store() {
    // Threads race on three shared series with timestamps jumping back and forth, so
    // commits drop samples for every reason (too old, duplicate timestamp, out of order
    // within the window) after their appends were accepted. Replay must rebuild exactly
    // the committed state, dropping nothing and reviving nothing.
    for window in [0, 60_000] {
        let dir = tempfile::tempdir().unwrap();
        let o = HeadOptions { chunk_range: 120_000, out_of_order_time_window: window, ..opts() };
        let h = Head::open(dir.path(), o).unwrap();
        // All appenders of a round check against the same state, then all commit.
        let barrier = std::sync::Barrier::new(4);
        let dropped: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4i64)
                .map(|th| {
                    let (h, barrier) = (&h, &barrier);
                    s.spawn(move || {
                        let mut dropped = 0;
                        for step in 0..150i64 {
                            let mut app = h.appender();
                            for i in 0..6i64 {
                                // Mostly rising, with jumps back of up to ~100 s.
                                let t = step * 2_000 + ((th * 7 + i * 13 + step * 5) % 50) * 2_000 - 40_000;
                                let _ = app.append(&lbl((i % 3) as usize), t.max(0), (th * 1000 + step) as f64);
                            }
                            barrier.wait();
                            dropped += app.commit().unwrap().dropped();
                        }
                        dropped
                    })
                })
                .collect();
            hs.into_iter().map(|j| j.join().unwrap()).sum()
        });
        let data = head_data(&h);
        let n: usize = data.values().map(Vec::len).sum();
        drop(h);
        let h = Head::open(dir.path(), o).unwrap();
        assert_eq!(head_data(&h), data, "window {window}: after replay ({dropped} dropped at commit)");
        let rs = h.replay_stats();
        assert_eq!((rs.samples, rs.dropped_samples), (n as u64, 0), "window {window}");
    }
}

mod ranking {
    use proptest::prelude::*;

    use super::*;

    /// Label sets over a small alphabet: prefixes of each other, equal names with other
    /// values, empty values dropped.
    fn arb_labels() -> impl Strategy<Value = Labels> {
        proptest::collection::vec(("[ab_]{1,2}", "[xy]{1,2}"), 1..4).prop_map(Labels::from_pairs)
    }

    #[derive(Debug, Clone)]
    enum Step {
        Insert(Vec<Labels>),
        Select(Option<usize>),
        Rank,
        Gc,
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => proptest::collection::vec(arb_labels(), 1..40).prop_map(Step::Insert),
            3 => proptest::option::of(0usize..4).prop_map(Step::Select),
            1 => Just(Step::Rank),
            1 => Just(Step::Gc),
        ]
    }

    fn check_sorted(h: &Head, ms: &[Matcher]) -> std::result::Result<(), TestCaseError> {
        let got: Vec<Labels> = h.select_lazy(ms).iter().map(|s| s.labels().clone()).collect();
        let mut want: Vec<Labels> = h.matching(ms).iter().map(|s| s.labels.clone()).collect();
        want.sort();
        prop_assert_eq!(got, want);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever mix of new series, rankings (here and started by selects) and garbage
        /// collection: selects come out in label order, each series once.
        #[test]
        fn selects_are_in_label_order(steps in proptest::collection::vec(arb_step(), 1..30)) {
            let dir = tempfile::tempdir().unwrap();
            let h = Head::open(dir.path(), opts()).unwrap();
            let mut t = 0;
            for step in steps {
                match step {
                    Step::Insert(ls) => {
                        let mut app = h.appender();
                        for l in &ls {
                            t += 1;
                            app.append(l, t, 1.0).unwrap();
                        }
                        app.commit().unwrap();
                    }
                    Step::Select(None) => check_sorted(&h, &[])?,
                    Step::Select(Some(i)) => {
                        let name = ["a", "b", "_", "ab"][i];
                        check_sorted(&h, &[Matcher::new(norn_model::MatchType::NotEqual, name, "x").unwrap()])?;
                        check_sorted(&h, &[Matcher::equal(name, "y")])?;
                    }
                    Step::Rank => h.rank_series_now(),
                    Step::Gc => {
                        // Drops the series whose only sample is older than the newest few.
                        let cut = t - 10;
                        let removed = h.series.gc(|s| s.data.lock().min_time().is_some_and(|m| m < cut));
                        h.postings.remove(&removed);
                    }
                }
                check_sorted(&h, &[])?;
            }
        }
    }

    /// Ranked and unranked series interleave: new series land between, before and after
    /// ranked ones, and after a ranking all are ranked.
    #[test]
    fn new_series_merge_with_ranked_ones() {
        let dir = tempfile::tempdir().unwrap();
        let h = Head::open(dir.path(), opts()).unwrap();
        let add = |range: std::ops::Range<usize>, t: i64| {
            let mut app = h.appender();
            for i in range.step_by(2) {
                app.append(&Labels::from_pairs([("i", format!("{i:04}"))]), t, 1.0).unwrap();
            }
            app.commit().unwrap();
        };
        add(10..100, 1);
        h.rank_series_now();
        let epoch = h.ranking.epoch();
        assert!(h.series.all().iter().all(|s| order_rank(s, epoch).is_some()));
        add(1..120, 2); // odd numbers: every gap, both ends
        let got: Vec<String> = h.select_lazy(&[]).iter().map(|s| s.labels().get("i").unwrap().to_string()).collect();
        let mut want = got.clone();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(got.len(), 45 + 60);
        h.rank_series_now();
        let epoch = h.ranking.epoch();
        assert!(h.series.all().iter().all(|s| order_rank(s, epoch).is_some()));
        let again: Vec<String> = h.select_lazy(&[]).iter().map(|s| s.labels().get("i").unwrap().to_string()).collect();
        assert_eq!(again, want);
    }

    fn order_rank(s: &MemSeries, epoch: u32) -> Option<u32> {
        let r = s.rank.load(Ordering::Relaxed);
        ((r >> 32) as u32 == epoch).then_some(r as u32)
    }

    /// Selects racing with appenders creating series and with rankings: every select is
    /// in label order.
    #[test]
    fn concurrent_creation_and_ranking() {
        let dir = tempfile::tempdir().unwrap();
        let h = Head::open(dir.path(), opts()).unwrap();
        std::thread::scope(|sc| {
            for w in 0..2 {
                let h = &h;
                sc.spawn(move || {
                    for round in 0..40 {
                        let mut app = h.appender();
                        for i in 0..25 {
                            let l = Labels::from_pairs([
                                ("w", w.to_string()),
                                ("i", format!("{}", (i * 7919 + round) % 997)),
                            ]);
                            let _ = app.append(&l, round, 1.0);
                        }
                        app.commit().unwrap();
                    }
                });
            }
            let h = &h;
            sc.spawn(move || {
                for _ in 0..60 {
                    let got: Vec<Labels> = h.select_lazy(&[]).iter().map(|s| s.labels().clone()).collect();
                    assert!(got.windows(2).all(|w| w[0] < w[1]));
                    h.rank_series_now();
                }
            });
        });
        let got: Vec<Labels> = h.select_lazy(&[]).iter().map(|s| s.labels().clone()).collect();
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(got.len(), h.num_series());
    }
}

mod open_chunk_snapshot {
    use super::*;

    /// The open chunk's copy is shared by queries until a sample is appended, and what a
    /// query gets always holds every sample committed before it.
    #[test]
    fn reused_until_appended() {
        let dir = tempfile::tempdir().unwrap();
        let h = Head::open(dir.path(), opts()).unwrap();
        let l = lbl(1);
        for t in 0..300i64 {
            let mut app = h.appender();
            app.append(&l, t, t as f64).unwrap();
            app.commit().unwrap();
            let a = h.select_lazy(&[])[0].series(i64::MIN, i64::MAX).unwrap();
            let b = h.select_lazy(&[])[0].series(i64::MIN, i64::MAX).unwrap();
            let (oa, ob) = (a.chunks.last().unwrap(), b.chunks.last().unwrap());
            assert_eq!(oa.max_time, t);
            // The same bytes, not a second copy.
            assert_eq!(oa.chunk.data.as_ptr(), ob.chunk.data.as_ptr());
            let n = collect(&[a], i64::MIN, i64::MAX).values().next().unwrap().len();
            assert_eq!(n, t as usize + 1);
        }
    }

    /// Queries racing with appends never see a stale open chunk: each sees at least the
    /// samples committed before it started, in order, without gaps.
    #[test]
    fn concurrent_appends() {
        let dir = tempfile::tempdir().unwrap();
        let h = Head::open(dir.path(), opts()).unwrap();
        let l = lbl(7);
        let committed = AtomicI64::new(-1);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for t in 0..2000i64 {
                    let mut app = h.appender();
                    app.append(&l, t, t as f64).unwrap();
                    app.commit().unwrap();
                    committed.store(t, Ordering::Release);
                }
            });
            sc.spawn(|| {
                while committed.load(Ordering::Acquire) < 1999 {
                    let before = committed.load(Ordering::Acquire);
                    let Some(s) = h.select_lazy(&[]).first().and_then(|s| s.series(i64::MIN, i64::MAX)) else {
                        continue;
                    };
                    let got = collect(&[s], i64::MIN, i64::MAX);
                    let ts: Vec<i64> = got.values().next().unwrap().iter().map(|x| x.0).collect();
                    assert!(ts.len() as i64 > before, "{} samples, {before} committed before", ts.len());
                    assert!(ts.iter().enumerate().all(|(i, &t)| t == i as i64));
                }
            });
        });
    }
}

/// `with_plain_chunks` lends exactly the chunks `series` copies out when there is nothing
/// to merge or filter, and declines when OOO samples fall in the range or an interval is
/// deleted.
#[test]
fn plain_chunks_are_the_copied_ones() {
    let dir = tempfile::tempdir().unwrap();
    let o = HeadOptions { out_of_order_time_window: 3 * H, samples_per_chunk: 30, ..opts() };
    let h = Head::open(dir.path(), o).unwrap();
    let mut want = Data::new();
    // Series 0 and 1 in order every minute over 0..3h (closed chunks and an open one);
    // series 1 also gets OOO samples in 2h..3h; series 2 gets a deleted interval.
    fill(&h, 3, 0, 3 * H, 60_000, &mut want);
    let ooo: Vec<i64> = (2 * H + 30_000..3 * H).step_by(600_000).collect();
    let mut app = h.appender();
    for &t in &ooo {
        app.append(&lbl(1), t, 1.0).unwrap();
    }
    app.commit().unwrap();
    h.delete(&[Matcher::equal("i", "2")], H, H + 60_000).unwrap();
    let ranges = [
        (i64::MIN, i64::MAX),
        (0, 0),
        (H, 2 * H),
        (2 * H - 1, 2 * H + 1),
        (3 * H - 60_000, 3 * H),
        (3 * H, i64::MAX),
        (-5, -1),
        (2 * H, H),
    ];
    for s in h.select_lazy(&[]) {
        let i = s.labels().get("i").unwrap().to_string();
        for (mint, maxt) in ranges {
            let lent = s.with_plain_chunks(mint, maxt, |closed, open| {
                closed.iter().chain(open).map(|c| (c.min_time, c.max_time, c.chunk.data.clone())).collect::<Vec<_>>()
            });
            let copied: Vec<_> = s
                .series(mint, maxt)
                .map(|x| x.chunks.into_iter().map(|c| (c.min_time, c.max_time, c.chunk.data)).collect())
                .unwrap_or_default();
            let ooo_in_range = i == "1" && ooo.iter().any(|t| (mint..=maxt).contains(t));
            match lent {
                Some(lent) => {
                    assert!(i == "0" || (i == "1" && !ooo_in_range), "series {i} [{mint}, {maxt}]");
                    assert_eq!(lent, copied, "series {i} [{mint}, {maxt}]");
                }
                None => assert!(i == "2" || ooo_in_range, "series {i} [{mint}, {maxt}] declined"),
            }
        }
    }
}

/// Garbage collection takes the series it removes off the count of ranked series, so the
/// next ranking comes after as many new series as for a head that never held them.
#[test]
fn gc_refreshes_the_ranked_count() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = dir.path().join("blocks");
    let h = Head::open(dir.path(), opts()).unwrap();
    let mut app = h.appender();
    for i in 0..20 {
        app.append(&lbl(100 + i), 1000, 1.0).unwrap();
    }
    app.commit().unwrap();
    let mut want = Data::new();
    fill(&h, 2, 0, 7 * H, 60_000, &mut want);
    h.rank_series_now();
    assert_eq!(h.ranking.ranked(), 22);
    h.compact(&blocks).unwrap();
    assert_eq!(h.num_series(), 2);
    assert_eq!(h.ranking.ranked(), 2);
}
