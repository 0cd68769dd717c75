//! End-to-end tests live in this crate's `tests/` folder, one file per user story; the
//! library holds what several of them (and the benchmarks in `examples/`) share.

pub mod promql_support;
