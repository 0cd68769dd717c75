//! Merging of series from several endpoints and replica deduplication.
//!
//! Replicas (series equal once the replica labels are removed) are deduplicated with
//! Thanos's penalty-based choice: both replicas are read in time order, the sample with
//! the smaller timestamp wins, and the replica not chosen must then skip ahead by twice
//! the gap between the last two chosen samples (5 s before any gap is known). This keeps
//! the sampling rate of the result that of one replica even when replicas' scrapes are
//! offset, and switches replicas across gaps. More than two replicas are chained:
//! `dedup(dedup(r0, r1), r2)`, replicas ordered by their labels.
//!
//! Before any decoding, a replica's chunks that are byte-identical to a chunk of an earlier
//! replica (same time range and data) are dropped, as Thanos drops chunks with equal
//! hashes: replicas fed the same samples usually cut identical chunks, so RF=3 decodes
//! about as much as RF=1.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::seriesview::WireChunk;
use norn_model::Labels;
use norn_promql::StoredValue;

/// Penalty (ms) applied before any sample gap is known, as Thanos does.
const INITIAL_PENALTY: i64 = 5000;

/// Samples of one series, ascending by time.
pub type Samples = Vec<(i64, StoredValue)>;

/// A series key and its replicas (replica labels, undecoded chunks, decoded samples).
type Group = (Labels, Vec<(Labels, Vec<WireChunk>, Samples)>);

/// A series as one endpoint returned it, decoded.
#[derive(Debug, Clone)]
pub struct RawSeries {
    /// Labels with replica labels removed (all labels without dedup).
    pub key: Labels,
    /// Only the replica labels (empty without dedup): with `key`, identifies the replica.
    pub replica: Labels,
    /// Chunks as received, decoded only when no earlier replica sent the same chunk.
    pub chunks: Vec<WireChunk>,
    /// Already decoded samples, ascending by time.
    pub samples: Vec<(i64, StoredValue)>,
}

/// Combines two replicas with the penalty rule.
pub fn dedup_pair(a: &[(i64, StoredValue)], b: &[(i64, StoredValue)]) -> Vec<(i64, StoredValue)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut ia, mut ib) = (0usize, 0usize);
    let (mut pen_a, mut pen_b) = (0i64, 0i64);
    let mut last_t = i64::MIN;
    let seek = |s: &[(i64, StoredValue)], i: &mut usize, t: i64| {
        while *i < s.len() && s[*i].0 < t {
            *i += 1;
        }
    };
    loop {
        let floor = last_t.saturating_add(1);
        seek(a, &mut ia, floor.saturating_add(pen_a));
        seek(b, &mut ib, floor.saturating_add(pen_b));
        let a_ok = ia < a.len();
        let b_ok = ib < b.len();
        match (a_ok, b_ok) {
            (false, false) => break,
            (true, false) => {
                last_t = a[ia].0;
                pen_a = 0;
                out.push(a[ia].clone());
            }
            (false, true) => {
                last_t = b[ib].0;
                pen_b = 0;
                out.push(b[ib].clone());
            }
            (true, true) => {
                let (ta, tb) = (a[ia].0, b[ib].0);
                if ta <= tb {
                    pen_b = if last_t != i64::MIN { 2 * (ta - last_t) } else { INITIAL_PENALTY };
                    pen_a = 0;
                    last_t = ta;
                    out.push(a[ia].clone());
                } else {
                    pen_a = if last_t != i64::MIN { 2 * (tb - last_t) } else { INITIAL_PENALTY };
                    pen_b = 0;
                    last_t = tb;
                    out.push(b[ib].clone());
                }
            }
        }
    }
    out
}

/// Union of two sample lists of the same series (same labels from two endpoints, e.g.
/// overlapping blocks): on equal timestamps the first list wins.
pub fn union(a: Vec<(i64, StoredValue)>, b: Vec<(i64, StoredValue)>) -> Vec<(i64, StoredValue)> {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut ai = a.into_iter().peekable();
    let mut bi = b.into_iter().peekable();
    loop {
        match (ai.peek(), bi.peek()) {
            (Some(x), Some(y)) => match x.0.cmp(&y.0) {
                Ordering::Less => out.push(ai.next().expect("peeked")),
                Ordering::Greater => out.push(bi.next().expect("peeked")),
                Ordering::Equal => {
                    out.push(ai.next().expect("peeked"));
                    bi.next();
                }
            },
            (Some(_), None) => out.extend(ai.by_ref()),
            (None, Some(_)) => out.extend(bi.by_ref()),
            (None, None) => break,
        }
    }
    out
}

struct HeapItem {
    key: Labels,
    replica: Labels,
    src: usize,
}

impl PartialEq for HeapItem {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for HeapItem {
    // Reversed: BinaryHeap is a max-heap and we pop the smallest label set first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.key.cmp(&self.key).then_with(|| o.replica.cmp(&self.replica)).then_with(|| o.src.cmp(&self.src))
    }
}

/// Decodes a replica's chunks into samples ascending by time.
pub type Decoder<'a> = dyn Fn(&[&WireChunk]) -> Result<Samples, String> + 'a;

/// What makes two wire chunks equal: time range, encoding and bytes.
type ChunkId<'a> = (i64, i64, i32, &'a [u8]);

fn chunk_id(c: &WireChunk) -> Option<ChunkId<'_>> {
    c.raw.as_ref().map(|r| (c.min_time, c.max_time, r.encoding, &r.data[..]))
}

/// Whether `seen` (sorted by time range) holds a chunk equal to `id`.
fn contains(seen: &[ChunkId<'_>], id: ChunkId<'_>) -> bool {
    let from = seen.partition_point(|s| (s.0, s.1) < (id.0, id.1));
    seen[from..].iter().take_while(|s| (s.0, s.1) == (id.0, id.1)).any(|s| s.2 == id.2 && s.3 == id.3)
}

/// Combines one group: identical chunks of later replicas dropped, the rest decoded,
/// replicas chained through [`dedup_pair`].
fn flush_group(replicas: Vec<(Labels, Vec<WireChunk>, Samples)>, decode: &Decoder<'_>) -> Result<Samples, String> {
    // One replica (RF=1, or no dedup): nothing to compare against.
    if replicas.len() == 1 {
        let (_, chunks, pre) = replicas.into_iter().next().expect("one replica");
        let refs: Vec<&WireChunk> = chunks.iter().collect();
        let samples = if refs.is_empty() { Vec::new() } else { decode(&refs)? };
        return Ok(if pre.is_empty() { samples } else { union(samples, pre) });
    }
    // Chunks of earlier replicas, sorted by time range: a binary search and a memcmp per
    // chunk, instead of hashing every chunk's bytes.
    let mut seen: Vec<ChunkId<'_>> = Vec::new();
    let mut acc: Option<Samples> = None;
    for (_, chunks, pre) in &replicas {
        // Borrowed, not cloned: chunk data is the bulk of a response.
        let keep: Vec<&WireChunk> =
            chunks.iter().filter(|c| chunk_id(c).is_none_or(|id| !contains(&seen, id))).collect();
        seen.extend(chunks.iter().filter_map(chunk_id));
        seen.sort_unstable_by_key(|id| (id.0, id.1));
        let mut samples = if keep.is_empty() { Vec::new() } else { decode(&keep)? };
        if !pre.is_empty() {
            samples = union(samples, pre.clone());
        }
        if samples.is_empty() {
            continue;
        }
        acc = Some(match acc {
            None => samples,
            Some(a) => dedup_pair(&a, &samples),
        });
    }
    Ok(acc.unwrap_or_default())
}

/// K-way merges per-endpoint series lists (each sorted by `key`, then `replica`) into one
/// list sorted by `key`; series with equal keys are combined: equal replica labels by
/// concatenating their chunks and [`union`] of their samples, different replica labels
/// (replicas) by [`dedup_pair`] in replica label order. Series left without samples are kept
/// (label-only selections need them).
pub fn merge_and_dedup(sources: Vec<Vec<RawSeries>>, decode: &Decoder<'_>) -> Result<Vec<(Labels, Samples)>, String> {
    let mut iters: Vec<std::vec::IntoIter<RawSeries>> = sources.into_iter().map(Vec::into_iter).collect();
    let mut pending: Vec<Option<RawSeries>> = iters.iter_mut().map(Iterator::next).collect();
    let mut heap = BinaryHeap::new();
    for (src, p) in pending.iter().enumerate() {
        if let Some(s) = p {
            heap.push(HeapItem { key: s.key.clone(), replica: s.replica.clone(), src });
        }
    }
    let mut out: Vec<(Labels, Samples)> = Vec::new();
    // The group being built: its key and its replicas in label order.
    let mut group: Option<Group> = None;
    while let Some(item) = heap.pop() {
        let s = pending[item.src].take().expect("heap entry has a pending series");
        if let Some(next) = iters[item.src].next() {
            heap.push(HeapItem { key: next.key.clone(), replica: next.replica.clone(), src: item.src });
            pending[item.src] = Some(next);
        }
        match &mut group {
            Some((k, reps)) if *k == s.key => match reps.last_mut() {
                Some((replica, chunks, samples)) if *replica == s.replica => {
                    chunks.extend(s.chunks);
                    let prev = std::mem::take(samples);
                    *samples = union(prev, s.samples);
                }
                _ => reps.push((s.replica, s.chunks, s.samples)),
            },
            _ => {
                if let Some((k, reps)) = group.take() {
                    out.push((k, flush_group(reps, decode)?));
                }
                group = Some((s.key, vec![(s.replica, s.chunks, s.samples)]));
            }
        }
    }
    if let Some((k, reps)) = group.take() {
        out.push((k, flush_group(reps, decode)?));
    }
    Ok(out)
}

/// Labels without the replica labels.
pub fn strip_labels(l: &Labels, replica_labels: &[String]) -> Labels {
    if replica_labels.is_empty() || !l.iter().any(|(n, _)| replica_labels.iter().any(|r| r == n)) {
        return l.clone();
    }
    Labels::from_sorted_unchecked_iter(l.iter().filter(|(n, _)| !replica_labels.iter().any(|r| r == n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fl(ts: &[i64]) -> Vec<(i64, StoredValue)> {
        ts.iter().map(|&t| (t, StoredValue::Float(t as f64))).collect()
    }
    fn times(s: &[(i64, StoredValue)]) -> Vec<i64> {
        s.iter().map(|p| p.0).collect()
    }

    #[test]
    fn dedup_pair_table() {
        // (replica a, replica b, expected timestamps)
        let cases: Vec<(Vec<i64>, Vec<i64>, Vec<i64>)> = vec![
            // Identical replicas: one copy.
            (vec![0, 10_000, 20_000], vec![0, 10_000, 20_000], vec![0, 10_000, 20_000]),
            // Offset scrapes: keep a's cadence, never interleave.
            (vec![0, 10_000, 20_000, 30_000], vec![1000, 11_000, 21_000, 31_000], vec![0, 10_000, 20_000, 30_000]),
            // a has a gap: b fills it after the penalty (2x the last gap) lapses, and a is not
            // picked again while b's cadence continues.
            (
                vec![0, 10_000, 60_000, 70_000],
                vec![1000, 11_000, 21_000, 31_000, 41_000, 51_000, 61_000, 71_000],
                vec![0, 10_000, 31_000, 41_000, 51_000, 61_000, 71_000],
            ),
            // One replica empty.
            (vec![], vec![5, 6], vec![5, 6]),
            (vec![5, 6], vec![], vec![5, 6]),
            // b starts earlier.
            (vec![10_000, 20_000], vec![2000, 12_000, 22_000], vec![2000, 10_000, 20_000]),
        ];
        for (a, b, want) in cases {
            let got = dedup_pair(&fl(&a), &fl(&b));
            assert_eq!(times(&got), want, "a={a:?} b={b:?}");
        }
    }

    #[test]
    fn contains_matches_time_range_encoding_and_bytes() {
        let mut seen: Vec<ChunkId<'_>> = vec![(0, 10, 1, b"a"), (0, 10, 1, b"b"), (20, 30, 1, b"c")];
        seen.sort_unstable_by_key(|id| (id.0, id.1));
        // (candidate, expected)
        let cases: Vec<(ChunkId<'_>, bool)> = vec![
            ((0, 10, 1, b"a"), true),
            ((0, 10, 1, b"b"), true),
            ((20, 30, 1, b"c"), true),
            ((0, 10, 2, b"a"), false),
            ((0, 11, 1, b"a"), false),
            ((20, 30, 1, b"a"), false),
            ((40, 50, 1, b"c"), false),
            ((-5, 0, 1, b"a"), false),
        ];
        for (id, want) in cases {
            assert_eq!(contains(&seen, id), want, "{id:?}");
        }
        assert!(!contains(&[], (0, 0, 1, b"")));
    }

    #[test]
    fn union_prefers_first() {
        let a = vec![(1, StoredValue::Float(1.0)), (3, StoredValue::Float(3.0))];
        let b = vec![(1, StoredValue::Float(9.0)), (2, StoredValue::Float(2.0)), (4, StoredValue::Float(4.0))];
        let got = union(a, b);
        assert_eq!(times(&got), vec![1, 2, 3, 4]);
        assert!(matches!(got[0].1, StoredValue::Float(v) if v == 1.0));
    }

    fn no_decode(_: &[&WireChunk]) -> Result<Samples, String> {
        Err("no chunks expected".into())
    }

    fn raw(l: &[(&str, &str)], replicas: &[String], ts: &[i64]) -> RawSeries {
        let full = Labels::from_pairs(l.iter().copied());
        let replica = Labels::from_pairs(l.iter().copied().filter(|(n, _)| replicas.iter().any(|r| r == n)));
        RawSeries { key: strip_labels(&full, replicas), replica, chunks: vec![], samples: fl(ts) }
    }

    #[test]
    fn merge_three_replicas_in_label_order() {
        let rl = vec!["replica".to_string()];
        let s0 = vec![
            raw(&[("__name__", "a"), ("replica", "0")], &rl, &[0, 10_000]),
            raw(&[("__name__", "b"), ("replica", "0")], &rl, &[0]),
        ];
        let s1 = vec![raw(&[("__name__", "a"), ("replica", "1")], &rl, &[1000, 11_000, 21_000])];
        let s2 = vec![
            raw(&[("__name__", "a"), ("replica", "2")], &rl, &[500]),
            raw(&[("__name__", "c"), ("replica", "2")], &rl, &[7]),
        ];
        let got = merge_and_dedup(vec![s0, s1, s2], &no_decode).unwrap();
        let names: Vec<String> = got.iter().map(|(l, _)| l.to_string()).collect();
        assert_eq!(names, vec![r#"{__name__="a"}"#, r#"{__name__="b"}"#, r#"{__name__="c"}"#]);
        // Replica 0 wins at 0 and 10s; replica 1's 21s sample lies within its penalty
        // (2 x 10s after 10s), so it is skipped as Thanos skips it.
        assert_eq!(times(&got[0].1), vec![0, 10_000]);
    }

    #[test]
    fn merge_without_dedup_keeps_replicas_apart_and_unions_equal_series() {
        let rl: Vec<String> = vec![];
        let s0 = vec![raw(&[("__name__", "a"), ("replica", "0")], &rl, &[0, 2])];
        let s1 = vec![
            raw(&[("__name__", "a"), ("replica", "0")], &rl, &[1, 2]),
            raw(&[("__name__", "a"), ("replica", "1")], &rl, &[5]),
        ];
        let got = merge_and_dedup(vec![s0, s1], &no_decode).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(times(&got[0].1), vec![0, 1, 2]);
        assert_eq!(times(&got[1].1), vec![5]);
    }

    #[test]
    fn identical_chunks_of_later_replicas_are_not_decoded() {
        let chunk = |min: i64, max: i64, data: &[u8]| WireChunk {
            min_time: min,
            max_time: max,
            raw: Some(crate::seriesview::RawChunk { encoding: 0, data: bytes::Bytes::copy_from_slice(data), hash: 0 }),
        };
        let rl = vec!["replica".to_string()];
        let mk = |r: &str, chunks: Vec<WireChunk>| {
            let full = Labels::from_pairs([("__name__", "a"), ("replica", r)]);
            RawSeries {
                key: strip_labels(&full, &rl),
                replica: Labels::from_pairs([("replica", r)]),
                chunks,
                samples: vec![],
            }
        };
        let decoded = std::cell::RefCell::new(Vec::new());
        let decode = |cs: &[&WireChunk]| -> Result<Samples, String> {
            decoded.borrow_mut().extend(cs.iter().map(|c| c.min_time));
            Ok(fl(&cs.iter().flat_map(|c| [c.min_time, c.max_time]).collect::<Vec<_>>()))
        };
        let s0 = vec![mk("0", vec![chunk(0, 10, b"x"), chunk(20, 30, b"y")])];
        let s1 = vec![mk("1", vec![chunk(0, 10, b"x"), chunk(20, 30, b"other"), chunk(40, 50, b"z")])];
        let got = merge_and_dedup(vec![s0, s1], &decode).unwrap();
        // Replica 1's first chunk equals replica 0's and is skipped; the others are decoded.
        assert_eq!(*decoded.borrow(), vec![0, 20, 20, 40]);
        assert_eq!(got.len(), 1);
    }
}
