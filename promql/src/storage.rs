//! The storage interface the engine reads from, and a simple in-memory implementation.

use std::collections::HashMap;
use std::sync::Arc;

use norn_model::{FloatHistogram, Labels, Matcher};

/// What the engine knows about a selection; lets remote stores push work down.
#[derive(Debug, Clone, Default)]
pub struct SelectHints {
    /// Earliest timestamp (ms) any sample may be needed from.
    pub start: i64,
    /// Latest timestamp (ms) any sample may be needed from.
    pub end: i64,
    /// Query resolution step (ms); 0 for instant queries.
    pub step: i64,
    /// Range of the enclosing range selector (ms); 0 for instant selectors.
    pub range: i64,
    /// The function the selection feeds, if any (e.g. `rate`).
    pub func: Option<String>,
    /// Grouping labels of the enclosing aggregation.
    pub grouping: Vec<String>,
    /// Whether `grouping` is a `by` (true) or `without` (false) list.
    pub by: bool,
}

/// One stored sample value.
#[derive(Debug, Clone)]
pub enum StoredValue {
    /// A float (may be a staleness marker).
    Float(f64),
    /// A native histogram.
    Histogram(Arc<FloatHistogram>),
}

/// A stored series: labels and samples ascending by time.
#[derive(Debug, Clone)]
pub struct StoredSeries {
    /// The series' labels.
    pub labels: Labels,
    /// Timestamps (ms), strictly ascending.
    pub ts: Vec<i64>,
    /// Values, parallel to `ts`.
    pub values: Vec<StoredValue>,
    /// Start timestamps (ms; 0 = unknown), parallel to `ts`, or empty when none is known.
    pub st: Vec<i64>,
}

/// Errors a storage may return.
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(pub String);

/// Something the engine can read series from.
pub trait Queryable: Send + Sync {
    /// Series matching all `matchers`, sorted by labels, with at least the samples in
    /// `[hints.start, hints.end]` (more is allowed).
    fn select(&self, matchers: &[Matcher], hints: &SelectHints) -> Result<Vec<Arc<StoredSeries>>, StorageError>;
}

/// An in-memory store of sorted series; the conformance runner's `load` fills it.
#[derive(Debug, Default, Clone)]
pub struct MemStorage {
    series: Vec<Arc<StoredSeries>>,
    by_labels: HashMap<Labels, usize>,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds samples to a series (created if missing). Samples at timestamps already
    /// present replace the stored ones; the series stays sorted.
    pub fn append(&mut self, labels: &Labels, samples: impl IntoIterator<Item = (i64, StoredValue)>) {
        self.append_with_st(labels, samples.into_iter().map(|(t, v)| (t, v, 0)));
    }

    /// Like [`Self::append`], with a start timestamp per sample (0 = unknown).
    pub fn append_with_st(&mut self, labels: &Labels, samples: impl IntoIterator<Item = (i64, StoredValue, i64)>) {
        let idx = match self.by_labels.get(labels) {
            Some(i) => *i,
            None => {
                let i = self.series.len();
                self.series.push(Arc::new(StoredSeries {
                    labels: labels.clone(),
                    ts: vec![],
                    values: vec![],
                    st: vec![],
                }));
                self.by_labels.insert(labels.clone(), i);
                i
            }
        };
        let s = Arc::make_mut(&mut self.series[idx]);
        let old_st = std::mem::take(&mut s.st);
        let n = s.ts.len();
        let mut pairs: Vec<(i64, StoredValue, i64)> =
            s.ts.drain(..)
                .zip(s.values.drain(..))
                .enumerate()
                .map(|(i, (t, v))| (t, v, if old_st.len() == n { old_st[i] } else { 0 }))
                .collect();
        pairs.extend(samples);
        // Stable sort then keep the last of equal timestamps, so later writes win.
        pairs.sort_by_key(|p| p.0);
        let mut out: Vec<(i64, StoredValue, i64)> = Vec::with_capacity(pairs.len());
        for p in pairs {
            match out.last_mut() {
                Some(last) if last.0 == p.0 => *last = p,
                _ => out.push(p),
            }
        }
        let any_st = out.iter().any(|p| p.2 != 0);
        for (t, v, st) in out {
            s.ts.push(t);
            s.values.push(v);
            if any_st {
                s.st.push(st);
            }
        }
    }

    /// Number of series stored.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

impl Queryable for MemStorage {
    fn select(&self, matchers: &[Matcher], _hints: &SelectHints) -> Result<Vec<Arc<StoredSeries>>, StorageError> {
        let mut out: Vec<Arc<StoredSeries>> = self
            .series
            .iter()
            .filter(|s| matchers.iter().all(|m| m.matches(s.labels.get(&m.name).unwrap_or(""))))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use norn_model::MatchType;

    #[test]
    fn append_sorts_and_replaces() {
        let mut m = MemStorage::new();
        let l = Labels::from_pairs([("__name__", "a")]);
        m.append(&l, [(10, StoredValue::Float(1.0)), (0, StoredValue::Float(0.0))]);
        m.append(&l, [(10, StoredValue::Float(2.0))]);
        let got = m.select(&[Matcher::equal("__name__", "a")], &SelectHints::default()).unwrap();
        assert_eq!(got[0].ts, vec![0, 10]);
        assert!(matches!(got[0].values[1], StoredValue::Float(v) if v == 2.0));
        let none = m.select(&[Matcher::new(MatchType::Regex, "__name__", "b.*").unwrap()], &Default::default());
        assert!(none.unwrap().is_empty());
    }
}
