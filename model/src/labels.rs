//! Label sets: sorted by name, stored in one allocation, with the hash Prometheus computes.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use xxhash_rust::xxh64::Xxh64;

/// The label that carries the metric name.
pub const METRIC_NAME: &str = "__name__";

/// Separator Prometheus puts after every name and value when hashing a label set.
const HASH_SEP: u8 = 0xff;

/// Why a label set was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("duplicate label name {0:?}")]
    Duplicate(String),
    #[error("labels not sorted: {prev:?} before {next:?}")]
    Unsorted { prev: String, next: String },
    #[error("empty label name")]
    EmptyName,
    #[error("invalid label name {0:?}")]
    InvalidName(String),
    #[error("label set too large: {0} bytes")]
    TooLarge(usize),
}

/// An immutable, sorted set of labels.
///
/// All names and values live in one string with an offset table, behind an `Arc`, so a
/// clone is a reference-count bump and a series costs two allocations however many labels
/// it has. The hash is computed once, at construction, exactly as Prometheus's
/// `labels.Hash` does (xxh64, seed 0, every name and value followed by `0xff`), so hashes
/// can be compared with Thanos's and used for placement.
#[derive(Clone)]
pub struct Labels(Arc<Inner>);

struct Inner {
    hash: u64,
    text: Box<str>,
    /// `ends[2i]` is the end of name i in `text`, `ends[2i+1]` the end of value i.
    ends: Box<[u32]>,
}

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Self::from_sorted_unchecked_iter(std::iter::empty())
    }

    /// Builds a label set from pairs in any order. Later duplicates of a name replace
    /// earlier ones; pairs with an empty value are dropped, as Prometheus does.
    pub fn from_pairs<N: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        let mut b = LabelsBuilder::new();
        for (n, v) in pairs {
            b.set(n.as_ref(), v.as_ref());
        }
        b.build()
    }

    /// Builds a label set from pairs that must already be sorted by name and unique.
    pub fn from_sorted<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, LabelError> {
        let mut prev: Option<&str> = None;
        let mut v: Vec<(&str, &str)> = Vec::new();
        for (n, val) in pairs {
            if n.is_empty() {
                return Err(LabelError::EmptyName);
            }
            if let Some(p) = prev {
                match p.cmp(n) {
                    Ordering::Less => {}
                    Ordering::Equal => return Err(LabelError::Duplicate(n.to_string())),
                    Ordering::Greater => {
                        return Err(LabelError::Unsorted { prev: p.to_string(), next: n.to_string() });
                    }
                }
            }
            prev = Some(n);
            v.push((n, val));
        }
        Ok(Self::from_sorted_unchecked_iter(v.into_iter()))
    }

    /// Builds a label set from pairs the caller guarantees to be sorted and unique
    /// (e.g. read back from an index whose order has been checked).
    pub fn from_sorted_unchecked_iter<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut text = String::new();
        let mut ends = Vec::new();
        let mut h = Xxh64::new(0);
        for (n, v) in pairs {
            text.push_str(n);
            ends.push(text.len() as u32);
            text.push_str(v);
            ends.push(text.len() as u32);
            h.update(n.as_bytes());
            h.update(&[HASH_SEP]);
            h.update(v.as_bytes());
            h.update(&[HASH_SEP]);
        }
        Labels(Arc::new(Inner { hash: h.digest(), text: text.into_boxed_str(), ends: ends.into_boxed_slice() }))
    }

    /// Prometheus's `labels.Hash` of this set.
    pub fn hash_value(&self) -> u64 {
        self.0.hash
    }

    /// Number of labels.
    #[inline]
    pub fn len(&self) -> usize {
        self.0.ends.len() / 2
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.ends.is_empty()
    }

    /// The i-th label (in name order).
    #[inline]
    pub fn get_index(&self, i: usize) -> Option<(&str, &str)> {
        let ends = &self.0.ends;
        if 2 * i + 1 >= ends.len() {
            return None;
        }
        let start = if i == 0 { 0 } else { ends[2 * i - 1] as usize };
        let ne = ends[2 * i] as usize;
        let ve = ends[2 * i + 1] as usize;
        Some((&self.0.text[start..ne], &self.0.text[ne..ve]))
    }

    /// Labels in name order.
    #[inline]
    pub fn iter(&self) -> LabelsIter<'_> {
        LabelsIter { labels: self, i: 0 }
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        // Label sets are small; a linear scan beats binary search on typical sizes.
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The metric name, if any.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// Total bytes of names and values.
    pub fn byte_size(&self) -> usize {
        self.0.text.len()
    }

    /// A builder seeded with these labels.
    pub fn to_builder(&self) -> LabelsBuilder {
        let mut b = LabelsBuilder::new();
        for (n, v) in self.iter() {
            b.set(n, v);
        }
        b
    }
}

impl Default for Labels {
    fn default() -> Self {
        Self::empty()
    }
}

/// Iterator over `(name, value)` pairs of a [`Labels`].
#[derive(Debug, Clone)]
pub struct LabelsIter<'a> {
    labels: &'a Labels,
    i: usize,
}

impl<'a> Iterator for LabelsIter<'a> {
    type Item = (&'a str, &'a str);
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let r = self.labels.get_index(self.i)?;
        self.i += 1;
        Some(r)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.labels.len() - self.i;
        (n, Some(n))
    }
}

impl ExactSizeIterator for LabelsIter<'_> {}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = LabelsIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.ends == other.0.ends && self.0.text == other.0.text)
    }
}

impl Eq for Labels {}

impl std::hash::Hash for Labels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl Ord for Labels {
    /// Prometheus's `labels.Compare`: label by label, name then value, bytewise; a set
    /// that is a prefix of another sorts first.
    fn cmp(&self, other: &Self) -> Ordering {
        // Walks both offset tables directly: names and values alternate in `ends`, so
        // comparing segment i of each is comparing name then value, label by label. Bytes,
        // not `str` slices, to skip char-boundary checks (this is on every sort path).
        let (a, b) = (&*self.0, &*other.0);
        let (ta, tb) = (a.text.as_bytes(), b.text.as_bytes());
        let (mut sa, mut sb) = (0usize, 0usize);
        for (&ea, &eb) in a.ends.iter().zip(b.ends.iter()) {
            let (ea, eb) = (ea as usize, eb as usize);
            let c = ta.get(sa..ea).cmp(&tb.get(sb..eb));
            if c != Ordering::Equal {
                return c;
            }
            (sa, sb) = (ea, eb);
        }
        a.ends.len().cmp(&b.ends.len())
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Labels {
    /// The format of Prometheus's `labels.Labels.String()`: `{a="1", b="2"}`, values
    /// quoted as Go's `strconv.Quote` does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(n)?;
            f.write_str("=")?;
            crate::format::write_go_quoted(f, v)?;
        }
        f.write_str("}")
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Accumulates labels in any order and produces a sorted [`Labels`].
#[derive(Debug, Clone, Default)]
pub struct LabelsBuilder {
    pairs: Vec<(String, String)>,
}

impl LabelsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`; an empty value removes the label.
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        match self.pairs.iter_mut().find(|(n, _)| n == name) {
            Some(p) => value.clone_into(&mut p.1),
            None => self.pairs.push((name.to_string(), value.to_string())),
        }
        self
    }

    /// Removes `name`.
    pub fn del(&mut self, name: &str) -> &mut Self {
        self.pairs.retain(|(n, _)| n != name);
        self
    }

    /// Current value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The sorted label set (labels with empty values are left out).
    pub fn build(&self) -> Labels {
        let mut v: Vec<(&str, &str)> =
            self.pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(n, v)| (n.as_str(), v.as_str())).collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Labels::from_sorted_unchecked_iter(v.into_iter())
    }
}

/// Whether `name` is a valid label name in Prometheus's legacy (pre-UTF-8) scheme:
/// `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_legacy_label_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Whether `name` is a valid metric name in the legacy scheme: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_legacy_metric_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b':')
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_deduplicated() {
        let l = Labels::from_pairs([("b", "2"), ("a", "1"), ("b", "3"), ("c", "")]);
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "3")]);
        assert_eq!(l.get("b"), Some("3"));
        assert_eq!(l.get("c"), None);
        assert_eq!(l.to_string(), r#"{a="1", b="3"}"#);
    }

    #[test]
    fn hash_matches_prometheus() {
        // labels.FromStrings("__name__","up","job","x").Hash() computed with Go's
        // xxhash.Sum64 over "__name__\xffup\xffjob\xffx\xff".
        let l = Labels::from_pairs([("__name__", "up"), ("job", "x")]);
        let mut buf = Vec::new();
        for (n, v) in l.iter() {
            buf.extend_from_slice(n.as_bytes());
            buf.push(0xff);
            buf.extend_from_slice(v.as_bytes());
            buf.push(0xff);
        }
        assert_eq!(l.hash_value(), xxhash_rust::xxh64::xxh64(&buf, 0));
        assert_eq!(Labels::empty().hash_value(), xxhash_rust::xxh64::xxh64(&[], 0));
    }

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn compare_like_prometheus() {
        let cases: &[(Pairs<'_>, Pairs<'_>, Ordering)] = &[
            (&[("a", "1")], &[("a", "1")], Ordering::Equal),
            (&[("a", "1")], &[("a", "1"), ("b", "1")], Ordering::Less),
            (&[("a", "2")], &[("a", "1"), ("b", "1")], Ordering::Greater),
            (&[("a", "1")], &[("b", "0")], Ordering::Less),
            (&[], &[("a", "")], Ordering::Equal),
            (&[("ab", "c")], &[("a", "bc")], Ordering::Greater),
            (&[("a", "b")], &[("a", "bc")], Ordering::Less),
            (&[("a", "1"), ("b", "2")], &[("a", "1"), ("c", "0")], Ordering::Less),
            (&[("a", "1"), ("b", "2")], &[("a", "1"), ("b", "10")], Ordering::Greater),
            (&[("é", "1")], &[("z", "1")], Ordering::Greater),
        ];
        for (a, b, want) in cases {
            let a = Labels::from_pairs(a.iter().copied());
            let b = Labels::from_pairs(b.iter().copied());
            assert_eq!(a.cmp(&b), *want, "{a} vs {b}");
            assert_eq!(b.cmp(&a), want.reverse(), "{b} vs {a}");
            assert_eq!(a.cmp(&b), a.iter().cmp(b.iter()), "{a} vs {b}: pairwise definition");
        }
    }

    #[test]
    fn from_sorted_rejects_bad_sets() {
        assert!(matches!(Labels::from_sorted([("b", "1"), ("a", "1")]), Err(LabelError::Unsorted { .. })));
        assert!(matches!(Labels::from_sorted([("a", "1"), ("a", "2")]), Err(LabelError::Duplicate(_))));
        assert!(matches!(Labels::from_sorted([("", "1")]), Err(LabelError::EmptyName)));
    }

    #[test]
    fn legacy_names() {
        for (n, ok) in [("a", true), ("_a1", true), ("1a", false), ("a-b", false), ("", false), ("a:b", false)] {
            assert_eq!(is_valid_legacy_label_name(n), ok, "{n}");
        }
        assert!(is_valid_legacy_metric_name("a:b"));
    }
}
