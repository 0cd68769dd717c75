//! Exemplars from remote write, kept per tenant in the tenant head's bounded circular
//! buffer (`--tsdb.max-exemplars`, 0 disables) and logged in the tenant's WAL in the
//! same commit as the request's samples (one WAL write per request), so they survive a
//! restart as in Prometheus and Thanos; and the Thanos `Exemplars` gRPC
//! service over them with each tenant's external labels attached to the series labels,
//! as Thanos receive answers.
//!
//! Like Thanos receive, a refused exemplar (out of order, label set too long, series
//! without a stored sample) never fails the write: it is counted and logged.

use std::sync::Arc;

use norn_model::{Labels, Matcher};
use norn_storeapi::prometheus_copy::TimeSeries;
use norn_storeapi::thanos::{self, ExemplarData, ExemplarsRequest, ExemplarsResponse, exemplars_response};
use norn_storeapi::{labels_from_proto, labels_to_proto};
use norn_tsdb::exemplar::{Exemplar, ExemplarError};
use norn_tsdb::head::{Appender, CommitStats};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tonic::{Request, Response, Status};

use crate::tenants::MultiTsdb;
use norn_storeapi::external::{strip_external, with_external};

/// What appending a request's exemplars did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExemplarStats {
    pub appended: u64,
    pub out_of_order: u64,
    pub label_length: u64,
    pub invalid_labels: u64,
    /// The series has no sample in the head (all its samples were refused).
    pub unknown_series: u64,
    /// Logging them failed (the commit's error is returned to the client).
    pub failed: u64,
    /// Accepted into the appender, waiting for its commit (then `appended`, `failed`
    /// or, when a concurrent commit stored a newer one, `out_of_order`).
    pub staged: u64,
}

/// Appends exemplars into the tenants' heads and counts the outcomes.
#[derive(Debug)]
pub struct TenantExemplars {
    max: usize,
    /// Exemplars received, by outcome (appended, out_of_order, label_length,
    /// invalid_labels, unknown_series, failed).
    outcomes: Family<Vec<(String, String)>, Counter>,
}

impl TenantExemplars {
    /// `max` is `--tsdb.max-exemplars` (each head's buffer is sized by its
    /// `HeadOptions::max_exemplars`); 0 disables exemplar storage.
    pub fn new(max: usize) -> TenantExemplars {
        TenantExemplars { max, outcomes: Family::default() }
    }

    /// Registers `norn_receive_exemplars` (by outcome) and `norn_receive_max_exemplars`.
    pub fn register(&self, reg: &mut Registry) {
        let r = reg.sub_registry_with_prefix("norn_receive");
        r.register("exemplars", "Exemplars received, by outcome", self.outcomes.clone());
        let max = Gauge::<i64>::default();
        max.set(self.max as i64);
        r.register("max_exemplars", "Exemplars kept per tenant (--tsdb.max-exemplars)", max);
    }

    /// Whether exemplar storage is on.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// Adds the exemplars of one series (labels `l`) to `app`, the appender that also
    /// carries the request's samples, so that they are logged in the same WAL write,
    /// after the samples, as Prometheus and Thanos receive do. The series' samples must
    /// have been appended first (an exemplar needs its series in the head). Refusals are
    /// counted in `st`, never returned.
    pub fn stage(&self, app: &mut Appender<'_>, ts: &TimeSeries, l: &Labels, st: &mut ExemplarStats) {
        if self.max == 0 {
            return;
        }
        for e in &ts.exemplars {
            let Ok(el) = labels_from_proto(&e.labels) else {
                st.invalid_labels += 1;
                continue;
            };
            match app.append_exemplar(l, Exemplar { labels: el, value: e.value, ts: e.timestamp }) {
                Ok(()) => st.staged += 1,
                Err(ExemplarError::OutOfOrder) => st.out_of_order += 1,
                Err(ExemplarError::LabelLength) => st.label_length += 1,
                Err(ExemplarError::UnknownSeries) => st.unknown_series += 1,
                Err(ExemplarError::Disabled | ExemplarError::Duplicate) => {}
            }
        }
    }

    /// Completes `st` with what the commit of the appender the exemplars were staged in
    /// did (`None` when it failed: every staged exemplar is then counted as failed),
    /// then counts and logs the outcomes.
    pub fn finish(&self, tenant: &str, st: &mut ExemplarStats, commit: Option<&CommitStats>) {
        match commit {
            Some(c) => {
                st.appended += c.exemplars;
                st.out_of_order += c.exemplars_out_of_order;
            }
            None => st.failed += st.staged,
        }
        for (outcome, n) in [
            ("appended", st.appended),
            ("out_of_order", st.out_of_order),
            ("label_length", st.label_length),
            ("invalid_labels", st.invalid_labels),
            ("unknown_series", st.unknown_series),
            ("failed", st.failed),
        ] {
            if n > 0 {
                self.outcomes.get_or_create(&vec![("outcome".to_string(), outcome.to_string())]).inc_by(n);
            }
        }
        if st.out_of_order + st.label_length + st.invalid_labels + st.unknown_series > 0 {
            tracing::debug!(
                tenant,
                out_of_order = st.out_of_order,
                label_length = st.label_length,
                invalid_labels = st.invalid_labels,
                unknown_series = st.unknown_series,
                "exemplars refused"
            );
        }
    }
}

/// Matcher sets with the matchers on `ext`'s labels removed, as Thanos's
/// `selectorsMatchesExternalLabels`: `None` when no set is compatible with `ext`; sets
/// left empty are dropped.
pub fn sets_for_tenant(sets: &[Vec<Matcher>], ext: &Labels) -> Option<Vec<Vec<Matcher>>> {
    let mut matched = false;
    let mut out = Vec::new();
    for s in sets {
        if let Some(rest) = strip_external(ext, s) {
            matched = true;
            if !rest.is_empty() {
                out.push(rest);
            }
        }
    }
    matched.then_some(out)
}

/// `thanos.Exemplars` over every tenant.
#[derive(Debug, Clone)]
pub struct ExemplarsService {
    pub tsdb: Arc<MultiTsdb>,
    pub exemplars: Arc<TenantExemplars>,
}

impl ExemplarsService {
    /// The answer to a request, one `ExemplarData` per series, tenants in name order.
    pub fn collect(&self, req: &ExemplarsRequest) -> Result<Vec<ExemplarData>, Status> {
        let expr = norn_promql::parse(&req.query).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sets = norn_promql::selectors::extract_selectors(&expr)
            .map_err(|e| Status::invalid_argument(format!("matchers: {e}")))?;
        let mut out = Vec::new();
        for db in self.tsdb.all() {
            let store = db.head.exemplars();
            let Some(sets) = sets_for_tenant(&sets, &db.ext_labels) else { continue };
            if sets.is_empty() {
                return Err(Status::invalid_argument("no matchers specified (excluding external labels)"));
            }
            for r in store.select(req.start, req.end, &sets) {
                out.push(ExemplarData {
                    series_labels: Some(thanos::LabelSet {
                        labels: labels_to_proto(&with_external(&r.series, &db.ext_labels)),
                    }),
                    exemplars: r
                        .exemplars
                        .into_iter()
                        .map(|e| thanos::Exemplar {
                            labels: Some(thanos::LabelSet { labels: labels_to_proto(&e.labels) }),
                            value: e.value,
                            ts: e.ts,
                        })
                        .collect(),
                });
            }
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl thanos::exemplars_server::Exemplars for ExemplarsService {
    type ExemplarsStream = futures::stream::Iter<std::vec::IntoIter<Result<ExemplarsResponse, Status>>>;

    async fn exemplars(&self, req: Request<ExemplarsRequest>) -> Result<Response<Self::ExemplarsStream>, Status> {
        let data = self.collect(req.get_ref())?;
        let items: Vec<_> = data
            .into_iter()
            .map(|d| Ok(ExemplarsResponse { result: Some(exemplars_response::Result::Data(d)) }))
            .collect();
        Ok(Response::new(futures::stream::iter(items)))
    }
}

#[cfg(test)]
mod tests {
    use norn_storeapi::prometheus_copy;

    use super::*;
    use crate::tenants::TenantDb;

    fn l(n: &str, v: &str) -> thanos::Label {
        thanos::Label { name: n.into(), value: v.into() }
    }

    fn series(name: &str, ex: &[(&str, i64)]) -> TimeSeries {
        TimeSeries {
            labels: vec![l("__name__", name)],
            samples: vec![prometheus_copy::Sample { value: 1.0, timestamp: 1 }],
            exemplars: ex
                .iter()
                .map(|(trace, t)| prometheus_copy::Exemplar {
                    labels: vec![l("trace_id", trace)],
                    value: 1.0,
                    timestamp: *t,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// A request's samples and exemplars are stored in one commit (one WAL write);
    /// refused exemplars are counted, and the stored ones survive a restart.
    #[test]
    fn append_counts_refusals_in_one_commit_and_survives_reopen() {
        use crate::write::{AppendStats, append_local};
        use norn_tsdb::head::HeadOptions;
        use norn_tsdb::wal::{SyncPolicy, WalOptions, WalStats};
        let dir = tempfile::tempdir().unwrap();
        let wal = WalOptions { sync: SyncPolicy::PerCommit, ..WalOptions::default() };
        let opts = HeadOptions { max_exemplars: 10, wal, ..HeadOptions::default() };
        let db = TenantDb::open(dir.path(), "t1", Labels::empty(), opts).unwrap();
        let te = TenantExemplars::new(10);
        let s = vec![
            series("a", &[("x", 10), ("x", 10), ("y", 5), ("z", 20)]),
            series("b", &[(&"t".repeat(200), 1)]),
            TimeSeries {
                exemplars: vec![prometheus_copy::Exemplar {
                    labels: vec![l("b", "1"), l("a", "1")],
                    ..Default::default()
                }],
                ..series("c", &[])
            },
            // No sample: the series is not in the head.
            TimeSeries { samples: vec![], ..series("d", &[("w", 1)]) },
        ];
        let labels: Vec<Labels> = s.iter().map(|t| labels_from_proto(&t.labels).unwrap()).collect();
        let mut st = AppendStats::default();
        let per = append_local(&db, &s, &labels, &[0, 1, 2, 3], &mut st, &te).unwrap();
        assert_eq!(per, vec![None; 4]);
        assert_eq!(st.appended, 3);
        // Series record, samples record, exemplars record: one write, one fsync.
        assert_eq!(db.head.wal_stats(), WalStats { writes: 1, records: 3, fsyncs: 1 });
        let outcome = |o: &str| te.outcomes.get_or_create(&vec![("outcome".to_string(), o.to_string())]).get();
        let want = [("appended", 2), ("out_of_order", 1), ("label_length", 1), ("invalid_labels", 1)];
        for (o, n) in want.into_iter().chain([("unknown_series", 1), ("failed", 0)]) {
            assert_eq!(outcome(o), n, "{o}");
        }
        let all = vec![vec![Matcher::new(norn_model::MatchType::Regex, "__name__", ".+").unwrap()]];
        let before = db.head.exemplars().select(i64::MIN, i64::MAX, &all);
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].exemplars.iter().map(|e| e.ts).collect::<Vec<_>>(), vec![10, 20]);
        // A write with exemplars only (series known) is one write too.
        let later = [TimeSeries { samples: vec![], ..series("a", &[("v", 30)]) }];
        append_local(&db, &later, &labels[..1], &[0], &mut st, &te).unwrap();
        assert_eq!(db.head.wal_stats().writes, 2);
        assert_eq!(outcome("appended"), 3);
        drop(db);
        let db = TenantDb::open(dir.path(), "t1", Labels::empty(), opts).unwrap();
        let got = db.head.exemplars().select(i64::MIN, i64::MAX, &all);
        assert_eq!(got[0].exemplars.iter().map(|e| e.ts).collect::<Vec<_>>(), vec![10, 20, 30]);
        // Disabled storage takes nothing, and the samples still go in.
        let off = TenantExemplars::new(0);
        let more =
            [TimeSeries { samples: vec![prometheus_copy::Sample { value: 2.0, timestamp: 2 }], ..later[0].clone() }];
        let mut st = AppendStats::default();
        append_local(&db, &more, &labels[..1], &[0], &mut st, &off).unwrap();
        assert_eq!(st.appended, 1);
        assert_eq!(db.head.exemplars().select(i64::MIN, i64::MAX, &all), got);
        assert_eq!(off.outcomes.get_or_create(&vec![("outcome".to_string(), "appended".to_string())]).get(), 0);
    }

    #[test]
    fn external_label_selection() {
        let ext = Labels::from_pairs([("tenant_id", "a")]);
        let eq = |n: &str, v: &str| Matcher::equal(n, v);
        let cases: Vec<(Vec<Vec<Matcher>>, Option<usize>)> = vec![
            (vec![vec![eq("__name__", "x")]], Some(1)),
            (vec![vec![eq("__name__", "x"), eq("tenant_id", "a")]], Some(1)),
            (vec![vec![eq("__name__", "x"), eq("tenant_id", "b")]], None),
            (vec![vec![eq("tenant_id", "b")], vec![eq("__name__", "y")]], Some(1)),
            (vec![vec![eq("tenant_id", "a")]], Some(0)),
        ];
        for (sets, want) in cases {
            assert_eq!(sets_for_tenant(&sets, &ext).map(|s| s.len()), want, "{sets:?}");
        }
    }
}
