use proptest::prelude::*;

use super::*;

fn read_all(dir: &Path) -> (Vec<Vec<u8>>, ReadStats) {
    let mut out = Vec::new();
    let stats = read_segments(dir, 0, true, |r| {
        out.push(r.to_vec());
        Ok(())
    })
    .unwrap();
    (out, stats)
}

fn record(len: usize, seed: u8, compressible: bool) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if compressible {
                (i / 64) as u8 ^ seed
            } else {
                (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed
            }
        })
        .collect()
}

fn write(dir: &Path, opts: WalOptions, batches: &[Vec<Vec<u8>>]) {
    let mut w = Wal::open(dir, opts).unwrap();
    for b in batches {
        let refs: Vec<&[u8]> = b.iter().map(|r| r.as_slice()).collect();
        w.log(&refs).unwrap();
    }
    w.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn round_trip(
        batches in prop::collection::vec(
            prop::collection::vec((0usize..80_000, any::<u8>(), any::<bool>()), 1..5), 1..6),
        snappy in any::<bool>(),
        pages in 2usize..5,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<Vec<Vec<u8>>> = batches
            .iter()
            .map(|b| b.iter().map(|&(l, s, c)| record(l, s, c)).collect())
            .collect();
        let opts = WalOptions {
            segment_size: pages * PAGE_SIZE,
            compression: if snappy { Compression::Snappy } else { Compression::None },
            sync: SyncPolicy::OnSegmentSwitch,
        };
        write(dir.path(), opts, &batches);
        let (got, stats) = read_all(dir.path());
        let want: Vec<Vec<u8>> = batches.into_iter().flatten().collect();
        prop_assert_eq!(got, want);
        prop_assert!(stats.truncated.is_none());
        // Every non-final segment is whole pages; records never span segments
        // (each segment parses on its own, which read_segments relies on).
        let segs = list_segments(dir.path()).unwrap();
        for s in &segs {
            let len = std::fs::metadata(segment_path(dir.path(), *s)).unwrap().len() as usize;
            prop_assert_eq!(len % PAGE_SIZE, 0);
        }
    }
}

#[test]
fn fragment_layout_matches_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    // 40000 bytes: first fragment fills page 0 (32761 payload bytes), last has the rest.
    let rec = record(40_000, 1, false);
    write(dir.path(), WalOptions::default(), &[vec![b"abc".to_vec(), rec.clone()]]);
    let data = std::fs::read(segment_path(dir.path(), 0)).unwrap();
    assert_eq!(data.len(), 2 * PAGE_SIZE);
    assert_eq!(data[0], FRAG_FULL);
    assert_eq!(u16::from_be_bytes([data[1], data[2]]), 3);
    assert_eq!(u32::from_be_bytes([data[3], data[4], data[5], data[6]]), crate::encoding::crc32c(b"abc"));
    assert_eq!(data[10], FRAG_FIRST);
    assert_eq!(usize::from(u16::from_be_bytes([data[11], data[12]])), PAGE_SIZE - 10 - 7);
    assert_eq!(data[PAGE_SIZE], FRAG_LAST);
    // Snappy-compressible record gets the 0x08 flag.
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions { compression: Compression::Snappy, ..Default::default() };
    write(dir.path(), opts, &[vec![vec![7u8; 1000], vec![]]]);
    let data = std::fs::read(segment_path(dir.path(), 0)).unwrap();
    assert_eq!(data[0], FRAG_FULL | SNAPPY_FLAG);
    let (got, _) = read_all(dir.path());
    assert_eq!(got, vec![vec![7u8; 1000], vec![]]);
}

#[test]
fn reopen_starts_a_new_segment_after_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), WalOptions::default(), &[vec![b"one".to_vec()]]);
    write(dir.path(), WalOptions::default(), &[vec![b"two".to_vec()]]);
    assert_eq!(list_segments(dir.path()).unwrap(), vec![0, 1]);
    let (got, stats) = read_all(dir.path());
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(stats.segments, 2);
    std::fs::write(dir.path().join("00000005"), b"").unwrap();
    assert!(list_segments(dir.path()).is_err(), "gap must be reported");
}

/// Writes a WAL whose last segment holds many records spanning several pages; returns
/// the records and the end offset of each in the last segment.
fn damaged_fixture(dir: &Path, snappy: bool) -> (Vec<Vec<u8>>, Vec<usize>) {
    let opts = WalOptions {
        compression: if snappy { Compression::Snappy } else { Compression::None },
        sync: SyncPolicy::OnSegmentSwitch,
        ..Default::default()
    };
    let recs: Vec<Vec<u8>> = (0..40).map(|i| record([10, 300, 5000, 40_000][i % 4] + i, i as u8, i % 3 == 0)).collect();
    let mut w = Wal::open(dir, opts).unwrap();
    for r in &recs {
        w.log(&[r]).unwrap();
    }
    std::mem::forget(w); // no close or drop: the last page stays short, as after a crash
    let data = std::fs::read(segment_path(dir, 0)).unwrap();
    let mut r = SegmentReader::new(&data);
    let mut ends = Vec::new();
    while r.next().unwrap().is_some() {
        ends.push(r.good_offset());
    }
    assert_eq!(ends.len(), recs.len());
    (recs, ends)
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn check_prefix(got: &[Vec<u8>], recs: &[Vec<u8>], ends: &[usize], damage_at: usize) {
    let intact = ends.iter().filter(|&&e| e <= damage_at).count();
    assert!(got.len() >= intact, "lost records before the damage at {damage_at}: {} < {intact}", got.len());
    assert_eq!(got, &recs[..got.len()], "replay returned something other than a prefix");
}

#[test]
fn torn_tail_is_truncated_at_last_good_record() {
    for snappy in [false, true] {
        let src = tempfile::tempdir().unwrap();
        let (recs, ends) = damaged_fixture(src.path(), snappy);
        let total = *ends.last().unwrap();
        let mut cuts: Vec<usize> = (0..total).step_by(997).collect();
        for &e in &ends {
            cuts.extend([e.saturating_sub(1), e, e + 1, e + 7]);
        }
        for p in 1..=(total / PAGE_SIZE) {
            cuts.extend([p * PAGE_SIZE - 1, p * PAGE_SIZE, p * PAGE_SIZE + 3]);
        }
        for cut in cuts.into_iter().filter(|&c| c < total) {
            let d = tempfile::tempdir().unwrap();
            copy_dir(src.path(), d.path());
            let seg = segment_path(d.path(), 0);
            std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut as u64).unwrap();
            let (got, stats) = read_all(d.path());
            check_prefix(&got, &recs, &ends, cut);
            assert_eq!(got.len(), ends.iter().filter(|&&e| e <= cut).count(), "cut {cut}");
            if !ends.contains(&cut) && cut != 0 {
                let t = stats.truncated.expect("truncation reported");
                assert_eq!(t.offset as usize, ends.iter().copied().filter(|&e| e <= cut).max().unwrap_or(0));
            }
            // Repaired: a second replay is clean, gives the same, and appending works.
            let (again, stats2) = read_all(d.path());
            assert_eq!(again, got);
            assert!(stats2.truncated.is_none(), "cut {cut}: {stats2:?}");
            write(d.path(), WalOptions::default(), &[vec![b"after".to_vec()]]);
            let (after, _) = read_all(d.path());
            assert_eq!(after.last().unwrap(), b"after");
        }
    }
}

#[test]
fn flipped_bytes_in_last_segment_never_panic() {
    let src = tempfile::tempdir().unwrap();
    let (recs, ends) = damaged_fixture(src.path(), true);
    let data = std::fs::read(segment_path(src.path(), 0)).unwrap();
    for at in (0..data.len()).step_by(331).chain([0, 1, 2, 3, 6, 7, PAGE_SIZE, PAGE_SIZE + 1]) {
        for mask in [0x01u8, 0x80, 0xff] {
            let d = tempfile::tempdir().unwrap();
            let mut bad = data.clone();
            bad[at] ^= mask;
            std::fs::write(segment_path(d.path(), 0), &bad).unwrap();
            let (got, _) = read_all(d.path());
            check_prefix(&got, &recs, &ends, at);
        }
    }
}

#[test]
fn damage_in_an_earlier_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), WalOptions::default(), &[vec![b"one".to_vec(), b"two".to_vec()]]);
    write(dir.path(), WalOptions::default(), &[vec![b"three".to_vec()]]);
    let p = segment_path(dir.path(), 0);
    let mut data = std::fs::read(&p).unwrap();
    data[12] ^= 0xff;
    std::fs::write(&p, data).unwrap();
    let err = read_segments(dir.path(), 0, true, |_| Ok(())).unwrap_err().to_string();
    assert!(err.contains("00000000") && err.contains("offset 10"), "{err}");
}

#[test]
fn checkpoint_keeps_live_series_and_recent_samples() {
    use norn_model::Labels;
    use record::*;
    let dir = tempfile::tempdir().unwrap();
    let mut w = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let mut b = Vec::new();
    encode_series(
        &[
            RefSeries { series_ref: 1, labels: Labels::from_pairs([("a", "1")]) },
            RefSeries { series_ref: 2, labels: Labels::from_pairs([("a", "2")]) },
        ],
        &mut b,
    );
    let mut s = Vec::new();
    encode_samples(
        &[
            RefSample { series_ref: 1, t: 10, v: 1.0 },
            RefSample { series_ref: 1, t: 100, v: 2.0 },
            RefSample { series_ref: 2, t: 5, v: 3.0 },
        ],
        &mut s,
    );
    w.log(&[&b, &s]).unwrap();
    let to = w.current_segment();
    w.next_segment().unwrap();
    let mut s2 = Vec::new();
    encode_samples(&[RefSample { series_ref: 1, t: 200, v: 4.0 }], &mut s2);
    w.log(&[&s2]).unwrap();
    let st = create_checkpoint(dir.path(), to, |r| r == 1, 50, Compression::Snappy).unwrap();
    assert_eq!((st.kept_series, st.dropped_series, st.kept_samples, st.dropped_samples), (1, 1, 1, 2));
    assert_eq!(list_segments(dir.path()).unwrap(), vec![to + 1]);
    let (n, cp) = last_checkpoint(dir.path()).unwrap().unwrap();
    assert_eq!(n, to);
    let mut recs = Vec::new();
    read_segments(&cp, 0, false, |r| {
        recs.push(decode(r).unwrap());
        Ok(())
    })
    .unwrap();
    assert_eq!(
        recs,
        vec![
            Record::Series(vec![RefSeries { series_ref: 1, labels: Labels::from_pairs([("a", "1")]) }]),
            Record::Samples(vec![RefSample { series_ref: 1, t: 100, v: 2.0 }]),
        ]
    );
    // A second checkpoint folds the first one in and removes it.
    w.next_segment().unwrap();
    create_checkpoint(dir.path(), to + 1, |_| true, 150, Compression::None).unwrap();
    let (n2, cp2) = last_checkpoint(dir.path()).unwrap().unwrap();
    assert_eq!(n2, to + 1);
    assert!(!cp.exists());
    let mut recs = Vec::new();
    read_segments(&cp2, 0, false, |r| {
        recs.push(decode(r).unwrap());
        Ok(())
    })
    .unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1], Record::Samples(vec![RefSample { series_ref: 1, t: 200, v: 4.0 }]));
}
