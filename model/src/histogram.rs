//! Native histograms, shaped as Prometheus's `model/histogram` types so chunk and wire
//! encodings map one to one.

/// What is known about counter resets between this histogram and the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum CounterResetHint {
    /// No information.
    #[default]
    Unknown = 0,
    /// A counter reset happened.
    CounterReset = 1,
    /// Definitely no counter reset.
    NotCounterReset = 2,
    /// A gauge histogram, where counter resets mean nothing.
    Gauge = 3,
}

impl CounterResetHint {
    /// From the numeric value used in WAL records; unknown values map to `Unknown`.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::CounterReset,
            2 => Self::NotCounterReset,
            3 => Self::Gauge,
            _ => Self::Unknown,
        }
    }
}

/// A run of consecutive buckets: `offset` buckets after the end of the previous span
/// (or after index 0 for the first), `length` buckets long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Gap to the previous span (or the starting index for the first span).
    pub offset: i32,
    /// Number of buckets in the span.
    pub length: u32,
}

/// The schema number of native histograms with custom bucket boundaries (NHCB).
pub const CUSTOM_BUCKETS_SCHEMA: i32 = -53;

/// An integer native histogram. Bucket counts are stored as deltas: each bucket holds
/// the difference to the previous bucket of the same sign (the first holds its count).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    pub counter_reset_hint: CounterResetHint,
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: u64,
    pub count: u64,
    pub sum: f64,
    pub positive_spans: Vec<Span>,
    pub negative_spans: Vec<Span>,
    pub positive_buckets: Vec<i64>,
    pub negative_buckets: Vec<i64>,
    /// Upper bounds for schema -53 (custom buckets); empty otherwise.
    pub custom_values: Vec<f64>,
}

/// A float native histogram. Bucket counts are absolute.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FloatHistogram {
    pub counter_reset_hint: CounterResetHint,
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: f64,
    pub count: f64,
    pub sum: f64,
    pub positive_spans: Vec<Span>,
    pub negative_spans: Vec<Span>,
    pub positive_buckets: Vec<f64>,
    pub negative_buckets: Vec<f64>,
    pub custom_values: Vec<f64>,
}

impl Histogram {
    /// The float form, with absolute bucket counts.
    pub fn to_float(&self) -> FloatHistogram {
        fn absolute(deltas: &[i64]) -> Vec<f64> {
            let mut acc = 0i64;
            deltas
                .iter()
                .map(|d| {
                    acc = acc.wrapping_add(*d);
                    acc as f64
                })
                .collect()
        }
        FloatHistogram {
            counter_reset_hint: self.counter_reset_hint,
            schema: self.schema,
            zero_threshold: self.zero_threshold,
            zero_count: self.zero_count as f64,
            count: self.count as f64,
            sum: self.sum,
            positive_spans: self.positive_spans.clone(),
            negative_spans: self.negative_spans.clone(),
            positive_buckets: absolute(&self.positive_buckets),
            negative_buckets: absolute(&self.negative_buckets),
            custom_values: self.custom_values.clone(),
        }
    }

    /// Whether the spans and bucket slices agree in length.
    pub fn is_consistent(&self) -> bool {
        spans_len(&self.positive_spans) == Some(self.positive_buckets.len())
            && spans_len(&self.negative_spans) == Some(self.negative_buckets.len())
    }
}

impl FloatHistogram {
    /// Whether the spans and bucket slices agree in length.
    pub fn is_consistent(&self) -> bool {
        spans_len(&self.positive_spans) == Some(self.positive_buckets.len())
            && spans_len(&self.negative_spans) == Some(self.negative_buckets.len())
    }
}

/// Total bucket count the spans describe, `None` on overflow.
pub fn spans_len(spans: &[Span]) -> Option<usize> {
    spans.iter().try_fold(0usize, |acc, s| acc.checked_add(s.length as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_float_accumulates_deltas() {
        let h = Histogram {
            count: 6,
            positive_spans: vec![Span { offset: 0, length: 3 }],
            positive_buckets: vec![1, 1, -1],
            ..Default::default()
        };
        assert!(h.is_consistent());
        assert_eq!(h.to_float().positive_buckets, vec![1.0, 2.0, 1.0]);
    }
}
