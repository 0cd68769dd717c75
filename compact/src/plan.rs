//! The compaction planner, after Thanos's `tsdbBasedPlanner` (itself Prometheus's
//! leveled planner): within one group (same external labels and resolution), overlapping
//! blocks are merged first; otherwise the first aligned range of the next level
//! (8h, 2d, 14d by default) whose blocks either span it fully or end before the newest
//! block starts. The newest block is never picked by level (it may still be joined by a
//! block of the same size), and blocks with a no-compact mark are never picked.

use std::collections::BTreeMap;

use ulid::Ulid;

/// Thanos's default level ranges in ms: 2h, 8h, 2d, 14d.
pub const DEFAULT_RANGES: [i64; 4] = [2 * 3_600_000, 8 * 3_600_000, 48 * 3_600_000, 14 * 24 * 3_600_000];

/// What the planner needs to know of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanBlock {
    pub id: Ulid,
    pub min_time: i64,
    pub max_time: i64,
    /// `compaction.failed` in the meta: ranges containing it are not picked.
    pub failed: bool,
    /// A `no-compact-mark.json` is present.
    pub no_compact: bool,
}

/// A compaction group: blocks of one stream (external labels) at one resolution.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub resolution: i64,
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{{", self.resolution)?;
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        f.write_str("}")
    }
}

/// The blocks of one group to merge next, or nothing to do. `ranges[0]` is the size of
/// the blocks producers upload (2h); higher entries are the levels compacted into.
pub fn plan(blocks: &[PlanBlock], ranges: &[i64]) -> Vec<Ulid> {
    let mut by_min: Vec<&PlanBlock> = blocks.iter().collect();
    by_min.sort_by_key(|b| (b.min_time, b.id));
    let eligible: Vec<&PlanBlock> = by_min.iter().copied().filter(|b| !b.no_compact).collect();
    let overlapping = select_overlapping(&eligible);
    if !overlapping.is_empty() {
        return overlapping.iter().map(|b| b.id).collect();
    }
    // Leave out the newest block (by start): it was just uploaded and may yet be joined
    // by a block of the same size; this also gives a block's worth of time to act on it.
    let Some((_, older)) = by_min.split_last() else { return Vec::new() };
    select_by_level(ranges, older).iter().map(|b| b.id).collect()
}

/// The first run of blocks overlapping one another, in start order.
fn select_overlapping<'a>(by_min: &[&'a PlanBlock]) -> Vec<&'a PlanBlock> {
    let mut out: Vec<&PlanBlock> = Vec::new();
    let Some(first) = by_min.first() else { return out };
    let mut max_t = first.max_time;
    for (i, b) in by_min.iter().enumerate().skip(1) {
        if b.min_time < max_t {
            if out.is_empty() {
                out.push(by_min[i - 1]);
            }
            out.push(b);
        } else if !out.is_empty() {
            break;
        }
        max_t = max_t.max(b.max_time);
    }
    out
}

fn select_by_level<'a>(ranges: &[i64], by_min: &[&'a PlanBlock]) -> Vec<&'a PlanBlock> {
    let Some(last) = by_min.last() else { return Vec::new() };
    let high_time = last.min_time;
    for &iv in ranges.iter().skip(1) {
        for part in split_by_range(by_min, iv) {
            if part.len() < 2 || part.iter().any(|b| b.failed) {
                continue;
            }
            let (mint, maxt) = (part[0].min_time, part[part.len() - 1].max_time);
            // The whole range is covered (gaps allowed), or nothing can join it any more.
            if !(maxt - mint == iv || maxt <= high_time) {
                continue;
            }
            // No-compact blocks split the run without shifting the range boundaries.
            let mut start = 0;
            for (i, b) in part.iter().enumerate() {
                if b.no_compact {
                    if i - start > 1 {
                        return part[start..i].to_vec();
                    }
                    start = i + 1;
                }
            }
            if part.len() - start > 1 {
                return part[start..].to_vec();
            }
        }
    }
    Vec::new()
}

/// Splits blocks (sorted by start) into runs falling in the same range of size `tr`
/// aligned to multiples of `tr`; blocks larger than their aligned range are skipped.
fn split_by_range<'a>(by_min: &[&'a PlanBlock], tr: i64) -> Vec<Vec<&'a PlanBlock>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < by_min.len() {
        let t0 = by_min[i].min_time.div_euclid(tr) * tr;
        if by_min[i].max_time > t0.saturating_add(tr) {
            i += 1;
            continue;
        }
        let mut group = Vec::new();
        while i < by_min.len() && by_min[i].max_time <= t0.saturating_add(tr) {
            group.push(by_min[i]);
            i += 1;
        }
        out.push(group);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn ids(n: usize) -> Vec<Ulid> {
        let mut v: Vec<Ulid> = (0..n).map(|i| Ulid::from_parts(1_000 + i as u64, 7)).collect();
        v.sort();
        v
    }

    #[test]
    fn planner_table() {
        let id = ids(16);
        // (name, blocks as (index into id, minTime h, maxTime h, no_compact, failed), expected indexes)
        type Case = (&'static str, Vec<(usize, i64, i64, bool, bool)>, Vec<usize>);
        let cases: Vec<Case> = vec![
            ("empty", vec![], vec![]),
            ("single block", vec![(0, 0, 2, false, false)], vec![]),
            (
                "four 2h blocks filling 8h, nothing newer: newest held back, range not ended",
                vec![
                    (0, 0, 2, false, false),
                    (1, 2, 4, false, false),
                    (2, 4, 6, false, false),
                    (3, 6, 8, false, false),
                ],
                vec![],
            ),
            (
                "four 2h blocks filling 8h and one newer: the four",
                vec![
                    (0, 0, 2, false, false),
                    (1, 2, 4, false, false),
                    (2, 4, 6, false, false),
                    (3, 6, 8, false, false),
                    (4, 8, 10, false, false),
                ],
                vec![0, 1, 2, 3],
            ),
            (
                "gap inside a finished 8h range: the blocks present",
                vec![
                    (0, 0, 2, false, false),
                    (2, 4, 6, false, false),
                    (4, 8, 10, false, false),
                    (5, 10, 12, false, false),
                ],
                vec![0, 2],
            ),
            (
                "two 2h blocks at the start of the newest 8h range: wait",
                vec![(0, 8, 10, false, false), (1, 10, 12, false, false), (2, 12, 14, false, false)],
                vec![],
            ),
            (
                "8h blocks make a 2d block once the 2d range is full",
                (0..6)
                    .map(|i| (i, i as i64 * 8, i as i64 * 8 + 8, false, false))
                    .chain([(6, 48, 50, false, false)])
                    .collect(),
                vec![0, 1, 2, 3, 4, 5],
            ),
            (
                "overlapping blocks first, even the newest",
                vec![(0, 0, 2, false, false), (1, 2, 4, false, false), (2, 3, 5, false, false)],
                vec![1, 2],
            ),
            (
                "no-compact mark splits the range",
                vec![
                    (0, 0, 2, false, false),
                    (1, 2, 4, false, false),
                    (2, 4, 6, true, false),
                    (3, 6, 8, false, false),
                    (4, 8, 10, false, false),
                ],
                vec![0, 1],
            ),
            (
                "no-compact marked blocks never merge as overlapping",
                vec![(0, 0, 2, false, false), (1, 1, 3, true, false), (2, 8, 10, false, false)],
                vec![],
            ),
            (
                "a failed compaction keeps its range out",
                vec![
                    (0, 0, 2, false, true),
                    (1, 2, 4, false, false),
                    (2, 8, 10, false, false),
                    (3, 10, 12, false, false),
                ],
                vec![],
            ),
            (
                "misaligned block larger than its range is skipped",
                vec![
                    (0, 7, 9, false, false),
                    (1, 9, 11, false, false),
                    (2, 11, 13, false, false),
                    (3, 16, 18, false, false),
                    (4, 24, 26, false, false),
                ],
                vec![1, 2],
            ),
            (
                "negative times align downwards",
                vec![
                    (0, -8, -6, false, false),
                    (1, -6, -4, false, false),
                    (2, -4, -2, false, false),
                    (3, -2, 0, false, false),
                    (4, 0, 2, false, false),
                ],
                vec![0, 1, 2, 3],
            ),
        ];
        for (name, blocks, want) in cases {
            let blocks: Vec<PlanBlock> = blocks
                .iter()
                .map(|&(i, a, b, nc, f)| PlanBlock {
                    id: id[i],
                    min_time: a * H,
                    max_time: b * H,
                    no_compact: nc,
                    failed: f,
                })
                .collect();
            let want: Vec<Ulid> = want.iter().map(|&i| id[i]).collect();
            assert_eq!(plan(&blocks, &DEFAULT_RANGES), want, "{name}");
        }
    }

    #[test]
    fn group_key_display() {
        let k =
            GroupKey { resolution: 0, labels: BTreeMap::from([("a".into(), "1".into()), ("b".into(), "x".into())]) };
        assert_eq!(k.to_string(), "0@{a=\"1\",b=\"x\"}");
    }
}
