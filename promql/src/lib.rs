//! PromQL engine for Norn.
//!
//! Queries are parsed with `promql-parser` and evaluated here over a [`Queryable`]
//! with Prometheus 3.x semantics (left-open range selectors, 5m lookback, staleness
//! markers, `@`/offset, subqueries, native histograms). The [`conformance`] module
//! runs Prometheus's own promqltest scripts against the engine.

// Matching on an enum and then testing a field reads better than clippy's merged guards
// in the evaluator's many per-variant branches.
#![allow(clippy::collapsible_match)]

pub mod conformance;
pub mod engine;
pub mod histogram;
pub mod storage;
pub mod value;

pub mod rewrite;
pub mod selectors;

mod aggregate;
mod aggregate_major;
mod binary;
mod bounds;
mod check;
mod fasthash;
mod functions;
mod info;
pub mod parse;
mod series_major;

pub use engine::{Engine, EngineOptions, QueryError, QueryResult, parse};
pub use storage::{MemStorage, Queryable, SelectHints, StoredSeries, StoredValue};
pub use value::{Sample, Series, Value};
