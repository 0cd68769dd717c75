//! Query results: scalars, strings, instant vectors and range vectors (matrices).

use std::fmt;
use std::sync::Arc;

use norn_model::{FloatHistogram, Labels};

/// The bit pattern Prometheus uses for staleness markers.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// A staleness marker as a float.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether `f` is exactly the staleness-marker NaN (other NaNs are ordinary values).
pub fn is_stale_nan(f: f64) -> bool {
    f.to_bits() == STALE_NAN_BITS
}

/// One element of an instant vector: a float or a native histogram at a time.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The series' labels (may still carry `__name__` when `drop_name` is set).
    pub metric: Labels,
    /// Timestamp in milliseconds.
    pub t: i64,
    /// The float value (ignored when `h` is set).
    pub f: f64,
    /// The histogram value, if this is a histogram sample.
    pub h: Option<Arc<FloatHistogram>>,
    /// Delayed name removal: the metric name is dropped when the query finishes.
    pub drop_name: bool,
}

/// One series of a range vector.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// The series' labels.
    pub metric: Labels,
    /// Float points, ascending by time.
    pub floats: Vec<(i64, f64)>,
    /// Histogram points, ascending by time.
    pub histograms: Vec<(i64, Arc<FloatHistogram>)>,
    /// Delayed name removal, as for [`Sample`].
    pub drop_name: bool,
    /// Start timestamps of `floats` (0 = unknown), or empty when none is known.
    pub floats_st: Vec<i64>,
    /// Start timestamps of `histograms`, likewise.
    pub histograms_st: Vec<i64>,
}

/// The value of an expression.
#[derive(Debug, Clone)]
pub enum Value {
    /// A single number.
    Scalar(f64),
    /// A string literal.
    String(String),
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector (also the result of range queries).
    Matrix(Vec<Series>),
}

impl Value {
    /// The PromQL type name, as used in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

fn fmt_float(f: f64) -> String {
    norn_model::format::go_format_g(f)
}

/// Renders a histogram in the test-script literal syntax.
pub fn format_histogram(h: &FloatHistogram) -> String {
    let mut s = format!("{{{{schema:{} count:{} sum:{}", h.schema, fmt_float(h.count), fmt_float(h.sum));
    if h.zero_count != 0.0 {
        s.push_str(&format!(" z_bucket:{}", fmt_float(h.zero_count)));
    }
    if h.zero_threshold != 0.0 {
        s.push_str(&format!(" z_bucket_w:{}", fmt_float(h.zero_threshold)));
    }
    let buckets = |spans: &[norn_model::Span], vals: &[f64]| -> String {
        let mut out = Vec::new();
        let mut idx = 0i64;
        let mut k = 0usize;
        for (i, sp) in spans.iter().enumerate() {
            idx += sp.offset as i64;
            if i > 0 || sp.offset != 0 {
                out.push(format!("@{idx}:"));
            }
            for _ in 0..sp.length {
                out.push(vals.get(k).map(|v| fmt_float(*v)).unwrap_or_default());
                k += 1;
                idx += 1;
            }
        }
        out.join(" ")
    };
    if !h.positive_buckets.is_empty() {
        s.push_str(&format!(" buckets:[{}]", buckets(&h.positive_spans, &h.positive_buckets)));
    }
    if !h.negative_buckets.is_empty() {
        s.push_str(&format!(" n_buckets:[{}]", buckets(&h.negative_spans, &h.negative_buckets)));
    }
    if !h.custom_values.is_empty() {
        let cv: Vec<String> = h.custom_values.iter().map(|v| fmt_float(*v)).collect();
        s.push_str(&format!(" custom_values:[{}]", cv.join(" ")));
    }
    use norn_model::CounterResetHint as C;
    match h.counter_reset_hint {
        C::Unknown => {}
        C::CounterReset => s.push_str(" counter_reset_hint:reset"),
        C::NotCounterReset => s.push_str(" counter_reset_hint:not_reset"),
        C::Gauge => s.push_str(" counter_reset_hint:gauge"),
    }
    s.push_str("}}");
    s
}

/// Prometheus's `FloatHistogram.String()` form, used by `count_values`.
pub fn histogram_string(h: &FloatHistogram) -> String {
    let g = norn_model::format::go_format_g;
    let mut s = format!("{{count:{}, sum:{}", g(h.count), g(h.sum));
    for b in crate::histogram::buckets(h) {
        if b.count == 0.0 {
            continue;
        }
        s.push_str(&format!(
            ", {}{},{}{}:{}",
            if b.lower_inclusive { "[" } else { "(" },
            g(b.lower),
            g(b.upper),
            if b.upper_inclusive { "]" } else { ")" },
            g(b.count)
        ));
    }
    s.push('}');
    s
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.h {
            Some(h) => write!(f, "{} {} @{}", self.metric, format_histogram(h), self.t),
            None => write!(f, "{} {} @{}", self.metric, fmt_float(self.f), self.t),
        }
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} =>", self.metric)?;
        for (t, v) in &self.floats {
            write!(f, " {} @{}", fmt_float(*v), t)?;
        }
        for (t, h) in &self.histograms {
            write!(f, " {} @{}", format_histogram(h), t)?;
        }
        Ok(())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Scalar(v) => write!(f, "scalar: {}", fmt_float(*v)),
            Value::String(s) => write!(f, "string: {s:?}"),
            Value::Vector(v) => {
                write!(f, "vector [")?;
                for (i, s) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{s}")?;
                }
                write!(f, "]")
            }
            Value::Matrix(m) => {
                write!(f, "matrix [")?;
                for (i, s) in m.iter().enumerate() {
                    if i > 0 {
                        write!(f, "; ")?;
                    }
                    write!(f, "{s}")?;
                }
                write!(f, "]")
            }
        }
    }
}
