//! Exemplars from remote write, kept per tenant in the tenant head's bounded circular
//! buffer (`--tsdb.max-exemplars`, 0 disables) and logged in the tenant's WAL, so they
//! survive a restart as in Prometheus and Thanos; and the Thanos `Exemplars` gRPC
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
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tonic::{Request, Response, Status};

use crate::tenants::{MultiTsdb, TenantDb};
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
    /// Logging them failed (the WAL error is logged).
    pub failed: u64,
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

    /// Stores the exemplars of series `idx` of a request (`labels[i]` is the label set of
    /// `series[i]`) in the tenant's head, after the request's samples were committed (an
    /// exemplar needs its series in the head): one commit, hence one WAL write, for
    /// them all. Refusals are counted, never returned.
    pub fn append(&self, db: &TenantDb, series: &[TimeSeries], labels: &[Labels], idx: &[usize]) -> ExemplarStats {
        let mut st = ExemplarStats::default();
        if self.max == 0 || idx.iter().all(|&i| series.get(i).is_none_or(|s| s.exemplars.is_empty())) {
            return st;
        }
        let tenant = db.tenant.as_str();
        let mut app = db.head.appender();
        for &i in idx {
            let (Some(ts), Some(l)) = (series.get(i), labels.get(i)) else { continue };
            for e in &ts.exemplars {
                let Ok(el) = labels_from_proto(&e.labels) else {
                    st.invalid_labels += 1;
                    continue;
                };
                match app.append_exemplar(l, Exemplar { labels: el, value: e.value, ts: e.timestamp }) {
                    Ok(()) => {}
                    Err(ExemplarError::OutOfOrder) => st.out_of_order += 1,
                    Err(ExemplarError::LabelLength) => st.label_length += 1,
                    Err(ExemplarError::UnknownSeries) => st.unknown_series += 1,
                    Err(ExemplarError::Disabled | ExemplarError::Duplicate) => {}
                }
            }
        }
        match app.commit() {
            Ok(c) => {
                st.appended += c.exemplars;
                st.out_of_order += c.exemplars_out_of_order;
            }
            Err(e) => {
                st.failed += 1;
                tracing::error!(tenant, error = %e, "logging exemplars");
            }
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
        st
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

    fn l(n: &str, v: &str) -> thanos::Label {
        thanos::Label { name: n.into(), value: v.into() }
    }

    fn series(name: &str, ex: &[(&str, i64)]) -> TimeSeries {
        TimeSeries {
            labels: vec![l("__name__", name)],
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

    #[test]
    fn append_counts_refusals_and_survives_reopen() {
        use norn_tsdb::head::HeadOptions;
        let dir = tempfile::tempdir().unwrap();
        let opts = HeadOptions { max_exemplars: 10, ..HeadOptions::default() };
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
            series("d", &[("w", 1)]),
        ];
        let labels: Vec<Labels> = s.iter().map(|t| labels_from_proto(&t.labels).unwrap()).collect();
        // Samples of a, b, c are in the head; d has none.
        let mut app = db.head.appender();
        for l in &labels[..3] {
            app.append(l, 1, 1.0).unwrap();
        }
        app.commit().unwrap();
        let st = te.append(&db, &s, &labels, &[0, 1, 2, 3]);
        let want = ExemplarStats {
            appended: 2,
            out_of_order: 1,
            label_length: 1,
            invalid_labels: 1,
            unknown_series: 1,
            failed: 0,
        };
        assert_eq!(st, want);
        let all = vec![vec![Matcher::new(norn_model::MatchType::Regex, "__name__", ".+").unwrap()]];
        let before = db.head.exemplars().select(i64::MIN, i64::MAX, &all);
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].exemplars.iter().map(|e| e.ts).collect::<Vec<_>>(), vec![10, 20]);
        drop(db);
        let db = TenantDb::open(dir.path(), "t1", Labels::empty(), opts).unwrap();
        assert_eq!(db.head.exemplars().select(i64::MIN, i64::MAX, &all), before);
        // Disabled storage takes nothing.
        let off = TenantExemplars::new(0);
        assert_eq!(off.append(&db, &s, &labels, &[0]), ExemplarStats::default());
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
