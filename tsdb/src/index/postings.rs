//! Set operations over postings lists: sorted, duplicate-free `u32` series IDs.

/// The IDs in both `a` and `b`. When one list is much shorter, each of its IDs is
/// looked up in the longer one by galloping (exponential then binary search), so the cost
/// is O(short · log(long / short)) rather than O(long).
pub fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(short.len());
    if short.is_empty() {
        return out;
    }
    if long.len() / short.len() >= 8 {
        let mut rest = long;
        for &x in short {
            let i = gallop(rest, x);
            if i == rest.len() {
                break;
            }
            if rest[i] == x {
                out.push(x);
                rest = &rest[i + 1..];
            } else {
                rest = &rest[i..];
            }
        }
    } else {
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].cmp(&b[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    out.push(a[i]);
                    i += 1;
                    j += 1;
                }
            }
        }
    }
    out
}

/// Index of the first element of sorted `s` that is `>= x` (or `s.len()`).
fn gallop(s: &[u32], x: u32) -> usize {
    let mut hi = 1;
    while hi < s.len() && s[hi - 1] < x {
        hi *= 2;
    }
    let lo = hi / 2;
    let hi = hi.min(s.len());
    lo + s[lo..hi].partition_point(|&v| v < x)
}

/// The intersection of all lists, smallest first so each step shrinks the work; no lists
/// gives the empty list.
pub fn intersect_all(mut lists: Vec<Vec<u32>>) -> Vec<u32> {
    if lists.is_empty() {
        return Vec::new();
    }
    lists.sort_by_key(Vec::len);
    let mut it = lists.into_iter();
    let mut acc = it.next().unwrap_or_default();
    for l in it {
        if acc.is_empty() {
            break;
        }
        acc = intersect(&acc, &l);
    }
    acc
}

/// The union of two lists.
pub fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The union of many lists, merged pairwise in a balanced tree (O(n log k)).
pub fn merge(mut lists: Vec<Vec<u32>>) -> Vec<u32> {
    lists.retain(|l| !l.is_empty());
    while lists.len() > 1 {
        let mut next = Vec::with_capacity(lists.len().div_ceil(2));
        let mut it = lists.into_iter();
        while let Some(a) = it.next() {
            match it.next() {
                Some(b) => next.push(union(&a, &b)),
                None => next.push(a),
            }
        }
        lists = next;
    }
    lists.pop().unwrap_or_default()
}

/// The IDs of `a` that are not in `b`.
pub fn difference(a: &[u32], b: &[u32]) -> Vec<u32> {
    if b.is_empty() {
        return a.to_vec();
    }
    let mut out = Vec::with_capacity(a.len());
    if b.len() * 8 >= a.len() {
        // Similar sizes: one linear pass over both.
        let mut j = 0;
        for &x in a {
            while j < b.len() && b[j] < x {
                j += 1;
            }
            if b.get(j) != Some(&x) {
                out.push(x);
            }
        }
        return out;
    }
    let mut rest = b;
    for &x in a {
        let i = if rest.len() > 64 { gallop(rest, x) } else { rest.partition_point(|&v| v < x) };
        rest = &rest[i..];
        if rest.first() != Some(&x) {
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn table() {
        type Case<'a> = (&'a [u32], &'a [u32], &'a [u32], &'a [u32], &'a [u32]);
        let cases: &[Case<'_>] = &[
            // a, b, a∩b, a∪b, a∖b
            (&[], &[], &[], &[], &[]),
            (&[1, 2, 3], &[], &[], &[1, 2, 3], &[1, 2, 3]),
            (&[1, 3, 5], &[2, 3, 4, 5], &[3, 5], &[1, 2, 3, 4, 5], &[1]),
            (
                &[7],
                &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
                &[7],
                &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17],
                &[],
            ),
            (&[0, u32::MAX], &[u32::MAX], &[u32::MAX], &[0, u32::MAX], &[0]),
        ];
        for (a, b, i, u, d) in cases {
            assert_eq!(intersect(a, b), *i);
            assert_eq!(intersect(b, a), *i);
            assert_eq!(union(a, b), *u);
            assert_eq!(merge(vec![a.to_vec(), b.to_vec()]), *u);
            assert_eq!(difference(a, b), *d);
        }
        assert_eq!(intersect_all(vec![vec![1, 2, 3], vec![2, 3], vec![3, 4]]), vec![3]);
        assert!(intersect_all(vec![]).is_empty());
        assert!(merge(vec![]).is_empty());
    }

    proptest! {
        #[test]
        fn ops_match_sets(a in proptest::collection::btree_set(0u32..5000, 0..300),
                          b in proptest::collection::btree_set(0u32..5000, 0..3000),
                          c in proptest::collection::btree_set(0u32..5000, 0..50)) {
            let av: Vec<u32> = a.iter().copied().collect();
            let bv: Vec<u32> = b.iter().copied().collect();
            let cv: Vec<u32> = c.iter().copied().collect();
            prop_assert_eq!(set(&intersect(&av, &bv)), &a & &b);
            prop_assert_eq!(set(&union(&av, &bv)), &a | &b);
            prop_assert_eq!(set(&difference(&av, &bv)), &a - &b);
            prop_assert_eq!(set(&difference(&bv, &cv)), &b - &c);
            prop_assert_eq!(set(&merge(vec![av.clone(), bv.clone(), cv.clone()])), &(&a | &b) | &c);
            prop_assert_eq!(set(&intersect_all(vec![av, bv, cv])), &(&a & &b) & &c);
        }
    }
}
