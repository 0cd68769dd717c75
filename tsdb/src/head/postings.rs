//! The head's inverted index: label name → value → sorted series refs, so selects with
//! equality or literal-set matchers touch only candidate series.

use std::collections::HashMap;

use norn_model::{Labels, Matcher};
use parking_lot::RwLock;

/// Postings of the head's series.
#[derive(Debug, Default)]
pub(crate) struct MemPostings {
    m: RwLock<HashMap<String, HashMap<String, Vec<u64>>>>,
}

impl MemPostings {
    /// Indexes a new series.
    pub fn add(&self, r: u64, labels: &Labels) {
        let mut m = self.m.write();
        for (n, v) in labels.iter() {
            let list = m.entry(n.to_string()).or_default().entry(v.to_string()).or_default();
            // Refs are created in increasing order but indexed from several threads.
            match list.last() {
                Some(&last) if last > r => {
                    if let Err(i) = list.binary_search(&r) {
                        list.insert(i, r);
                    }
                }
                Some(&last) if last == r => {}
                _ => list.push(r),
            }
        }
    }

    /// Removes garbage-collected series.
    pub fn remove(&self, removed: &[(u64, Labels)]) {
        if removed.is_empty() {
            return;
        }
        let mut m = self.m.write();
        for (r, labels) in removed {
            for (n, v) in labels.iter() {
                let Some(values) = m.get_mut(n) else { continue };
                if let Some(list) = values.get_mut(v) {
                    if let Ok(i) = list.binary_search(r) {
                        list.remove(i);
                    }
                    if list.is_empty() {
                        values.remove(v);
                    }
                }
                if values.is_empty() {
                    m.remove(n);
                }
            }
        }
    }

    /// Candidate refs for `matchers`: the intersection of the postings of every
    /// equality / literal-set matcher that does not match the empty string. `None` when
    /// no matcher narrows the search (callers then scan all series). Candidates must
    /// still be checked against all matchers.
    pub fn candidates(&self, matchers: &[Matcher]) -> Option<Vec<u64>> {
        let m = self.m.read();
        let mut acc: Option<Vec<u64>> = None;
        for mt in matchers {
            if mt.matches_empty() {
                continue;
            }
            let Some(values) = mt.set_matches() else { continue };
            let mut union: Vec<u64> = Vec::new();
            if let Some(by_value) = m.get(&mt.name) {
                for v in values {
                    if let Some(list) = by_value.get(v) {
                        union.extend_from_slice(list);
                    }
                }
            }
            union.sort_unstable();
            union.dedup();
            acc = Some(match acc {
                None => union,
                Some(prev) => intersect(&prev, &union),
            });
            if acc.as_ref().is_some_and(Vec::is_empty) {
                break;
            }
        }
        acc
    }

    /// Label names in use, sorted.
    pub fn label_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.m.read().keys().cloned().collect();
        v.sort_unstable();
        v
    }

    /// Values of label `name`, sorted.
    pub fn label_values(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self.m.read().get(name).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        v.sort_unstable();
        v
    }
}

fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
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
    out
}

#[cfg(test)]
mod tests {
    use norn_model::MatchType;

    use super::*;

    #[test]
    fn candidates_intersect_equal_and_set_matchers() {
        let p = MemPostings::default();
        let l = |job: &str, i: &str| Labels::from_pairs([("job", job), ("i", i)]);
        p.add(3, &l("a", "1"));
        p.add(1, &l("a", "2"));
        p.add(2, &l("b", "1"));
        let m = |k, n: &str, v: &str| Matcher::new(k, n, v).unwrap();
        assert_eq!(p.candidates(&[m(MatchType::Equal, "job", "a")]), Some(vec![1, 3]));
        assert_eq!(p.candidates(&[m(MatchType::Regex, "i", "1|2"), m(MatchType::Equal, "job", "b")]), Some(vec![2]));
        assert_eq!(p.candidates(&[m(MatchType::NotEqual, "job", "a")]), None);
        assert_eq!(p.candidates(&[m(MatchType::Equal, "job", "")]), None);
        assert_eq!(p.candidates(&[m(MatchType::Equal, "nope", "x")]), Some(vec![]));
        assert_eq!(p.label_names(), vec!["i", "job"]);
        assert_eq!(p.label_values("job"), vec!["a", "b"]);
        p.remove(&[(1, l("a", "2"))]);
        assert_eq!(p.label_values("i"), vec!["1"]);
        assert_eq!(p.candidates(&[m(MatchType::Equal, "job", "a")]), Some(vec![3]));
    }
}
