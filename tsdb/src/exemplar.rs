//! In-memory exemplar storage as Prometheus's head keeps it: one circular buffer of fixed
//! size shared by all series, each series' exemplars chained oldest to newest through the
//! buffer, so the newest `max` exemplars are kept whatever series they belong to.
//!
//! Validation follows Prometheus: an exemplar whose label names and values together exceed
//! [`MAX_LABEL_SET_RUNES`] runes is refused, one equal to its series' newest is a duplicate
//! (refused by [`ExemplarStorage::validate`], silently ignored by
//! [`ExemplarStorage::add`]), and one not newer than its series' newest is out of order.
//! The head owns one storage and logs its exemplars in the WAL (see
//! [`crate::head::Appender::append_exemplar`]), so they survive a restart.

use std::collections::HashMap;

use norn_model::{Labels, Matcher};
use parking_lot::Mutex;

/// Most runes an exemplar's label names and values may have together (OpenMetrics).
pub const MAX_LABEL_SET_RUNES: usize = 128;

/// One exemplar.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// Its own labels (e.g. `trace_id`), not the series'.
    pub labels: Labels,
    /// Observed value.
    pub value: f64,
    /// Milliseconds since the epoch.
    pub ts: i64,
}

/// The exemplars of one series, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesExemplars {
    /// The series they were recorded for.
    pub series: Labels,
    /// In time order.
    pub exemplars: Vec<Exemplar>,
}

/// Why an exemplar was refused; the messages are Prometheus's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExemplarError {
    #[error("exemplar storage is disabled or max exemplars is less than or equal to 0")]
    Disabled,
    #[error("label length for exemplar exceeds maximum of {MAX_LABEL_SET_RUNES} UTF-8 characters")]
    LabelLength,
    #[error("duplicate exemplar")]
    Duplicate,
    #[error("out of order exemplar")]
    OutOfOrder,
    /// Exemplars are stored for series of the head only (Prometheus:
    /// "unknown HeadSeriesRef when trying to add exemplar").
    #[error("unknown series when trying to add exemplar")]
    UnknownSeries,
}

const NONE: usize = usize::MAX;

#[derive(Debug)]
struct Entry {
    series: Labels,
    exemplar: Exemplar,
    /// Slot of the series' next newer exemplar, or `NONE`.
    next: usize,
}

#[derive(Debug, Clone, Copy)]
struct Chain {
    oldest: usize,
    newest: usize,
}

#[derive(Debug, Default)]
struct Inner {
    slots: Vec<Option<Entry>>,
    next_slot: usize,
    index: HashMap<Labels, Chain>,
}

/// A bounded circular exemplar buffer; a size of 0 disables it.
#[derive(Debug, Default)]
pub struct ExemplarStorage {
    inner: Mutex<Inner>,
}

impl ExemplarStorage {
    /// Storage for at most `max` exemplars.
    pub fn new(max: usize) -> ExemplarStorage {
        let mut slots = Vec::new();
        slots.resize_with(max, || None);
        ExemplarStorage { inner: Mutex::new(Inner { slots, next_slot: 0, index: HashMap::new() }) }
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.inner.lock().slots.len()
    }

    /// Exemplars currently held.
    pub fn len(&self) -> usize {
        self.inner.lock().slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `e` would be accepted for `series`.
    pub fn validate(&self, series: &Labels, e: &Exemplar) -> Result<(), ExemplarError> {
        self.inner.lock().validate(series, e)
    }

    /// Stores `e` for `series`, evicting the oldest exemplar in the buffer when full. A
    /// duplicate of the series' newest exemplar is ignored, as Prometheus ignores it:
    /// `Ok(false)`.
    pub fn add(&self, series: &Labels, e: Exemplar) -> Result<bool, ExemplarError> {
        let mut g = self.inner.lock();
        match g.validate(series, &e) {
            Ok(()) => {}
            Err(ExemplarError::Duplicate) => return Ok(false),
            Err(err) => return Err(err),
        }
        g.push(series, e);
        Ok(true)
    }

    /// Exemplars in `[start, end]` of the series matching any of the matcher sets, in
    /// series label order; series without exemplars in the range are left out.
    pub fn select(&self, start: i64, end: i64, matcher_sets: &[Vec<Matcher>]) -> Vec<SeriesExemplars> {
        let g = self.inner.lock();
        let mut out = Vec::new();
        for (series, chain) in &g.index {
            let (Some(oldest), Some(newest)) = (&g.slots[chain.oldest], &g.slots[chain.newest]) else {
                continue;
            };
            if oldest.exemplar.ts > end || newest.exemplar.ts < start {
                continue;
            }
            let matches = matcher_sets.iter().any(|ms| ms.iter().all(|m| m.matches(series.get(&m.name).unwrap_or(""))));
            if !matches {
                continue;
            }
            let mut ex = Vec::new();
            let mut slot = chain.oldest;
            // Bounded by the buffer size even if the chain were corrupt.
            for _ in 0..g.slots.len() {
                let Some(e) = &g.slots[slot] else { break };
                if e.exemplar.ts > end {
                    break;
                }
                if e.exemplar.ts >= start {
                    ex.push(e.exemplar.clone());
                }
                if e.next == NONE {
                    break;
                }
                slot = e.next;
            }
            if !ex.is_empty() {
                out.push(SeriesExemplars { series: series.clone(), exemplars: ex });
            }
        }
        out.sort_by(|a, b| a.series.cmp(&b.series));
        out
    }

    /// Earliest and latest exemplar timestamps held, `None` when empty.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        let g = self.inner.lock();
        let mut r: Option<(i64, i64)> = None;
        for e in g.slots.iter().flatten() {
            let t = e.exemplar.ts;
            r = Some(r.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
        }
        r
    }
}

impl Inner {
    fn validate(&self, series: &Labels, e: &Exemplar) -> Result<(), ExemplarError> {
        if self.slots.is_empty() {
            return Err(ExemplarError::Disabled);
        }
        let mut runes = 0;
        for (n, v) in e.labels.iter() {
            runes += n.chars().count() + v.chars().count();
            if runes > MAX_LABEL_SET_RUNES {
                return Err(ExemplarError::LabelLength);
            }
        }
        let Some(chain) = self.index.get(series) else { return Ok(()) };
        let Some(newest) = &self.slots[chain.newest] else { return Ok(()) };
        if newest.exemplar.labels == e.labels && newest.exemplar.ts == e.ts && newest.exemplar.value == e.value {
            return Err(ExemplarError::Duplicate);
        }
        if e.ts <= newest.exemplar.ts {
            return Err(ExemplarError::OutOfOrder);
        }
        Ok(())
    }

    fn push(&mut self, series: &Labels, e: Exemplar) {
        let slot = self.next_slot;
        // Evict the slot's previous occupant first: it is the oldest of its series.
        if let Some(prev) = self.slots[slot].take() {
            if prev.next == NONE {
                self.index.remove(&prev.series);
            } else if let Some(c) = self.index.get_mut(&prev.series) {
                c.oldest = prev.next;
            }
        }
        match self.index.get_mut(series) {
            Some(c) => {
                if let Some(n) = self.slots[c.newest].as_mut() {
                    n.next = slot;
                }
                c.newest = slot;
            }
            None => {
                self.index.insert(series.clone(), Chain { oldest: slot, newest: slot });
            }
        }
        self.slots[slot] = Some(Entry { series: series.clone(), exemplar: e, next: NONE });
        self.next_slot = (slot + 1) % self.slots.len();
    }
}

#[cfg(test)]
mod tests {
    use norn_model::MatchType;

    use super::*;

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    fn ex(trace: &str, v: f64, ts: i64) -> Exemplar {
        Exemplar { labels: ls(&[("trace_id", trace)]), value: v, ts }
    }

    fn all() -> Vec<Vec<Matcher>> {
        vec![vec![Matcher::new(MatchType::Regex, "__name__", ".+").unwrap()]]
    }

    #[test]
    fn validation_rules() {
        let s = ExemplarStorage::new(4);
        let a = ls(&[("__name__", "a")]);
        s.add(&a, ex("x", 1.0, 10)).unwrap();
        let long = "x".repeat(MAX_LABEL_SET_RUNES - "trace_id".len() + 1);
        let fits = "é".repeat(MAX_LABEL_SET_RUNES - "trace_id".len());
        let cases = [
            (ex("x", 1.0, 10), Err(ExemplarError::Duplicate)),
            (ex("y", 1.0, 10), Err(ExemplarError::OutOfOrder)),
            (ex("x", 2.0, 9), Err(ExemplarError::OutOfOrder)),
            (ex(&long, 1.0, 11), Err(ExemplarError::LabelLength)),
            // Runes, not bytes, count.
            (ex(&fits, 1.0, 11), Ok(())),
            (ex("x", 1.0, 11), Ok(())),
        ];
        for (e, want) in cases {
            assert_eq!(s.validate(&a, &e), want, "{e:?}");
        }
        // A duplicate is ignored by add, other refusals are returned.
        assert_eq!(s.add(&a, ex("x", 1.0, 10)), Ok(false));
        assert_eq!(s.add(&a, ex("x", 1.0, 5)), Err(ExemplarError::OutOfOrder));
        assert_eq!(s.len(), 1);
        // Another series has its own order.
        s.add(&ls(&[("__name__", "b")]), ex("x", 1.0, 1)).unwrap();
        assert_eq!(ExemplarStorage::new(0).add(&a, ex("x", 1.0, 1)), Err(ExemplarError::Disabled));
    }

    #[test]
    fn ring_keeps_the_newest_across_series() {
        let s = ExemplarStorage::new(3);
        let (a, b) = (ls(&[("__name__", "a")]), ls(&[("__name__", "b")]));
        s.add(&a, ex("1", 1.0, 1)).unwrap();
        s.add(&b, ex("2", 2.0, 2)).unwrap();
        s.add(&a, ex("3", 3.0, 3)).unwrap();
        s.add(&b, ex("4", 4.0, 4)).unwrap(); // evicts a@1
        s.add(&b, ex("5", 5.0, 5)).unwrap(); // evicts b@2
        let got = s.select(i64::MIN, i64::MAX, &all());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].series, a);
        assert_eq!(got[0].exemplars.iter().map(|e| e.ts).collect::<Vec<_>>(), vec![3]);
        assert_eq!(got[1].exemplars.iter().map(|e| e.ts).collect::<Vec<_>>(), vec![4, 5]);
        s.add(&b, ex("6", 6.0, 6)).unwrap(); // evicts a@3, a's last: a leaves the index
        let got = s.select(i64::MIN, i64::MAX, &all());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].exemplars.iter().map(|e| e.ts).collect::<Vec<_>>(), vec![4, 5, 6]);
        assert_eq!(s.time_range(), Some((4, 6)));
        // A size-one ring replaces the series' only exemplar.
        let one = ExemplarStorage::new(1);
        one.add(&a, ex("1", 1.0, 1)).unwrap();
        one.add(&a, ex("2", 1.0, 2)).unwrap();
        let got = one.select(0, 10, &all());
        assert_eq!(got[0].exemplars, vec![ex("2", 1.0, 2)]);
    }

    #[test]
    fn select_by_time_and_matchers() {
        let s = ExemplarStorage::new(10);
        let a = ls(&[("__name__", "a"), ("job", "x")]);
        let b = ls(&[("__name__", "b"), ("job", "y")]);
        for t in 1..=4 {
            s.add(&a, ex("t", t as f64, t * 10)).unwrap();
            s.add(&b, ex("t", t as f64, t * 10)).unwrap();
        }
        let job = |v: &str| vec![Matcher::equal("job", v)];
        type Case = (i64, i64, Vec<Vec<Matcher>>, Vec<(&'static str, Vec<i64>)>);
        let cases: Vec<Case> = vec![
            (15, 30, vec![job("x")], vec![("a", vec![20, 30])]),
            (0, 100, vec![job("x"), job("y")], vec![("a", vec![10, 20, 30, 40]), ("b", vec![10, 20, 30, 40])]),
            (41, 100, all(), vec![]),
            (0, 9, all(), vec![]),
            (0, 100, vec![job("z")], vec![]),
            // A matcher on a missing label sees the empty value.
            (0, 10, vec![vec![Matcher::equal("__name__", "a"), Matcher::equal("nope", "")]], vec![("a", vec![10])]),
        ];
        for (start, end, ms, want) in cases {
            let got: Vec<(String, Vec<i64>)> = s
                .select(start, end, &ms)
                .into_iter()
                .map(|r| (r.series.metric_name().unwrap_or("").to_string(), r.exemplars.iter().map(|e| e.ts).collect()))
                .collect();
            let want: Vec<(String, Vec<i64>)> = want.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
            assert_eq!(got, want, "{start} {end} {ms:?}");
        }
    }
}
