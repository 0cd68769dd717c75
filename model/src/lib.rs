//! Norn's data model, shared by storage, query and the wire layers.
//!
//! Nothing in here does I/O: labels (sorted, compact, with a cached hash that equals
//! Prometheus's `labels.Hash`), matchers with Prometheus's fully anchored regex
//! semantics, native histograms, and float formatting the way Go prints floats.

pub mod format;
pub mod goregex;
pub mod histogram;
pub mod labels;
pub mod matcher;

pub use histogram::{CounterResetHint, FloatHistogram, Histogram, Span};
pub use labels::{LabelError, Labels, LabelsBuilder, METRIC_NAME};
pub use matcher::{MatchType, Matcher, MatcherError};
