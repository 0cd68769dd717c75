//! Validation of incoming series and appends to a tenant's head, with the error classes
//! that decide HTTP and gRPC status codes.

use norn_model::Labels;
use norn_storeapi::prometheus_copy::TimeSeries;
use norn_storeapi::remote_write::{RejectKind, Rejected, describe_labels};
use norn_storeapi::{HistogramSample, histogram_from_proto_checked};

use crate::exemplars::{ExemplarStats, TenantExemplars};
use crate::tenants::TenantDb;

/// Why a write failed, classed as Thanos classes them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Malformed or invalid data: HTTP 400, gRPC `InvalidArgument`; not retried.
    #[error("{0}")]
    BadRequest(String),
    /// Out-of-order, duplicate-timestamp, out-of-bounds samples or bad label sets:
    /// HTTP 409, gRPC `AlreadyExists`; not retried.
    #[error("{0}")]
    Conflict(String),
    /// Over a request limit: HTTP 413; not retried.
    #[error("{0}")]
    TooLarge(String),
    /// Not ready, peer down, quorum failed for transient reasons: HTTP 503, gRPC
    /// `Unavailable`; retried.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: HTTP 500, gRPC `Internal`; retried.
    #[error("{0}")]
    Internal(String),
}

impl From<Rejected> for WriteError {
    fn from(r: Rejected) -> WriteError {
        match r.kind {
            RejectKind::BadRequest => WriteError::BadRequest(r.msg),
            RejectKind::Conflict => WriteError::Conflict(r.msg),
            RejectKind::TooLarge => WriteError::TooLarge(r.msg),
        }
    }
}

impl WriteError {
    /// The HTTP status code for this class.
    pub fn http_status(&self) -> u16 {
        match self {
            WriteError::BadRequest(_) => 400,
            WriteError::Conflict(_) => 409,
            WriteError::TooLarge(_) => 413,
            WriteError::Unavailable(_) => 503,
            WriteError::Internal(_) => 500,
        }
    }

    /// The gRPC status for this class.
    pub fn to_status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            WriteError::BadRequest(_) | WriteError::TooLarge(_) => tonic::Status::invalid_argument(msg),
            WriteError::Conflict(_) => tonic::Status::already_exists(msg),
            WriteError::Unavailable(_) => tonic::Status::unavailable(msg),
            WriteError::Internal(_) => tonic::Status::internal(msg),
        }
    }

    /// The class of a gRPC error returned by a peer.
    pub fn from_status(s: &tonic::Status) -> WriteError {
        use tonic::Code;
        let msg = s.message().to_string();
        match s.code() {
            Code::AlreadyExists => WriteError::Conflict(msg),
            Code::InvalidArgument => WriteError::BadRequest(msg),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted => {
                WriteError::Unavailable(msg)
            }
            _ => WriteError::Internal(msg),
        }
    }
}

/// What a local append did, in samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendStats {
    /// Stored (or identical to what was stored).
    pub appended: u64,
    /// Refused when appended (out of order, duplicate, out of bounds …): the client is told.
    pub conflicts: u64,
    /// Accepted when appended but dropped at commit because a concurrent commit to the
    /// same series got there first (see [`norn_tsdb::head::CommitStats`]); the client is
    /// not told, the receiver counts and logs them.
    pub out_of_order: u64,
    pub duplicate_timestamp: u64,
    pub out_of_bounds: u64,
    pub too_old: u64,
}

impl AppendStats {
    /// Samples dropped at commit, all reasons together.
    pub fn dropped_at_commit(&self) -> u64 {
        self.out_of_order + self.duplicate_timestamp + self.out_of_bounds + self.too_old
    }
}

/// Appends the series `idx` of a request to `db`, samples and exemplars (these through
/// `exemplars`, which counts their outcomes) in one commit, hence one WAL write, as
/// Thanos receive does. Returns, per entry of `idx`, the error of that series if any of
/// its samples was refused (valid samples are committed anyway, as Thanos does; a
/// refused exemplar never fails the write); an `Err` means the commit itself failed and
/// nothing was stored.
pub fn append_local(
    db: &TenantDb,
    series: &[TimeSeries],
    labels: &[Labels],
    idx: &[usize],
    stats: &mut AppendStats,
    exemplars: &TenantExemplars,
) -> Result<Vec<Option<WriteError>>, WriteError> {
    let mut app = db.head.appender();
    let mut ex = ExemplarStats::default();
    let mut per = Vec::with_capacity(idx.len());
    for &i in idx {
        let (ts, l) = (&series[i], &labels[i]);
        let mut first: Option<(String, i64)> = None;
        let mut refused = 0u64;
        for s in &ts.samples {
            match app.append(l, s.timestamp, s.value) {
                Ok(()) => stats.appended += 1,
                Err(e) => {
                    refused += 1;
                    first.get_or_insert((e.to_string(), s.timestamp));
                }
            }
        }
        let mut hist_refused = 0u64;
        for h in &ts.histograms {
            // Validated with the request; a failure here is a bug upstream of us, but
            // it is reported rather than trusted.
            let r = match histogram_from_proto_checked(h) {
                Ok(HistogramSample::Int(t, h)) => app.append_histogram(l, t, &h).map_err(|e| (e.to_string(), t)),
                Ok(HistogramSample::Float(t, h)) => {
                    app.append_float_histogram(l, t, &h).map_err(|e| (e.to_string(), t))
                }
                Err(e) => Err((e.msg, e.t)),
            };
            match r {
                Ok(()) => stats.appended += 1,
                Err((e, t)) => {
                    hist_refused += 1;
                    first.get_or_insert((e, t));
                }
            }
        }
        // After the series' samples, which create it in the head when it is new.
        if !ts.exemplars.is_empty() {
            exemplars.stage(&mut app, ts, l, &mut ex);
        }
        stats.conflicts += refused + hist_refused;
        let total = ts.samples.len() + ts.histograms.len();
        let err = first.map(|(e, t)| {
            WriteError::Conflict(format!(
                "series {}: {e} at timestamp {t} ({} of {total} samples refused)",
                describe_labels(l),
                refused + hist_refused,
            ))
        });
        per.push(err);
    }
    let c = match app.commit() {
        Ok(c) => c,
        Err(e) => {
            exemplars.finish(&db.tenant, &mut ex, None);
            return Err(WriteError::Internal(format!("WAL commit for tenant {}: {e}", db.tenant)));
        }
    };
    exemplars.finish(&db.tenant, &mut ex, Some(&c));
    let dropped = c.dropped();
    if dropped > 0 {
        // Counted as appended above, when they were accepted.
        stats.appended = stats.appended.saturating_sub(dropped);
        stats.out_of_order += c.out_of_order;
        stats.duplicate_timestamp += c.duplicate_timestamp;
        stats.out_of_bounds += c.out_of_bounds;
        stats.too_old += c.too_old;
        // Once per request, not per sample. Such drops mean two writes of one series
        // raced on this receiver (a client not waiting for its answers, or replicas
        // answered before they had stored: see the router).
        tracing::warn!(
            tenant = %db.tenant,
            dropped,
            out_of_order = c.out_of_order,
            duplicate_timestamp = c.duplicate_timestamp,
            out_of_bounds = c.out_of_bounds,
            too_old = c.too_old,
            "samples dropped at commit: a concurrent write to the same series committed newer samples first"
        );
    }
    Ok(per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping_round_trips() {
        for e in [
            WriteError::BadRequest("x".into()),
            WriteError::Conflict("x".into()),
            WriteError::Unavailable("x".into()),
            WriteError::Internal("x".into()),
        ] {
            assert_eq!(WriteError::from_status(&e.to_status()), e);
        }
    }

    use std::collections::BTreeMap;

    use norn_model::Matcher;
    use norn_storeapi::prometheus_copy::{self as pc, BucketSpan, Sample as WireSample};
    use norn_storeapi::thanos::Label;
    use norn_tsdb::chunkenc::{Encoding, Sample};
    use norn_tsdb::head::HeadOptions;

    use crate::tenants::{MultiTsdb, TsdbSettings};

    fn wire_int(t: i64, n: i64) -> pc::Histogram {
        pc::Histogram {
            count: Some(pc::histogram::Count::CountInt((3 * n) as u64)),
            sum: n as f64,
            schema: 2,
            zero_threshold: 0.001,
            zero_count: Some(pc::histogram::ZeroCount::ZeroCountInt(n as u64)),
            positive_spans: vec![BucketSpan { offset: 1, length: 2 }],
            positive_deltas: vec![n, 0],
            timestamp: t,
            ..Default::default()
        }
    }

    fn wire_float(t: i64, x: f64) -> pc::Histogram {
        pc::Histogram {
            count: Some(pc::histogram::Count::CountFloat(x)),
            sum: x,
            schema: norn_model::histogram::CUSTOM_BUCKETS_SCHEMA,
            positive_spans: vec![BucketSpan { offset: 0, length: 1 }],
            positive_counts: vec![x],
            custom_values: vec![1.0, 2.0],
            timestamp: t,
            reset_hint: 3,
            ..Default::default()
        }
    }

    fn series(name: &str, hs: Vec<pc::Histogram>, floats: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: vec![Label { name: "__name__".into(), value: name.into() }],
            samples: floats.iter().map(|&(timestamp, value)| WireSample { value, timestamp }).collect(),
            histograms: hs,
            ..Default::default()
        }
    }

    /// Native histograms go to the head, survive a restart through the WAL and end up
    /// in blocks as histogram chunks with their fields intact.
    #[test]
    fn histograms_appended_replayed_and_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let settings = TsdbSettings {
            root: dir.path().to_path_buf(),
            head: HeadOptions { chunk_range: 100_000, ..HeadOptions::default() },
            labels: Vec::new(),
            tenant_label: "tenant_id".into(),
        };
        let reqs = [
            series("h_int", (0..50).map(|i| wire_int(i * 1000, i + 1)).collect(), &[]),
            series("h_float", (0..50).map(|i| wire_float(i * 1000, i as f64 + 0.5)).collect(), &[]),
        ];
        let labels: Vec<Labels> =
            norn_storeapi::remote_write::validate(&reqs, &Default::default()).expect("valid request");
        {
            let m = MultiTsdb::new(settings.clone());
            let db = m.get_or_open("t", &BTreeMap::new()).unwrap();
            let mut st = AppendStats::default();
            let per = append_local(&db, &reqs, &labels, &[0, 1], &mut st, &TenantExemplars::new(0)).unwrap();
            assert_eq!(per, vec![None, None]);
            assert_eq!(st.appended, 100);
            // Repeating an older histogram is refused as out of order, naming the series.
            let late = [series("h_int", vec![wire_int(10_000, 99)], &[])];
            let per = append_local(&db, &late, &labels[..1], &[0], &mut st, &TenantExemplars::new(0)).unwrap();
            let e = per[0].clone().expect("refused");
            assert_eq!(e.http_status(), 409, "{e}");
            assert!(e.to_string().contains("h_int") && e.to_string().contains("timestamp 10000"), "{e}");
        }
        let check = |db: &TenantDb, n_int: usize| {
            let got = db.select(&[Matcher::equal("__name__", "h_int")], 0, i64::MAX).unwrap();
            let samples: Vec<Sample> = got[0].samples(0, i64::MAX).map(Result::unwrap).collect();
            assert_eq!(samples.len(), n_int);
            let Sample::Histogram(t, h) = &samples[7] else { panic!("{:?}", samples[7]) };
            assert_eq!((*t, h.count, h.zero_count, h.schema), (7000, 24, 8, 2));
            assert_eq!(h.positive_buckets, vec![8, 0]);
            assert!(got[0].chunks.iter().all(|c| c.chunk.encoding == Encoding::Histogram));
            let got = db.select(&[Matcher::equal("__name__", "h_float")], 0, i64::MAX).unwrap();
            let samples: Vec<Sample> = got[0].samples(0, i64::MAX).map(Result::unwrap).collect();
            let Sample::FloatHistogram(_, f) = &samples[3] else { panic!("{:?}", samples[3]) };
            assert_eq!((f.count, f.custom_values.as_slice()), (3.5, &[1.0, 2.0][..]));
            assert!(got[0].chunks.iter().all(|c| c.chunk.encoding == Encoding::FloatHistogram));
        };
        // WAL replay.
        let m = MultiTsdb::new(settings.clone());
        m.open_existing().unwrap();
        let db = m.get("t").expect("reopened");
        assert_eq!(db.head.replay_stats().samples, 100);
        check(&db, 50);
        // Into a block (more samples so the head spans 1.5 block ranges), then read back.
        let more = [series("h_int", (50..200).map(|i| wire_int(i * 1000, i + 1)).collect(), &[])];
        let mut st = AppendStats::default();
        append_local(&db, &more, &labels[..1], &[0], &mut st, &TenantExemplars::new(0)).unwrap();
        let metas = db.compact().unwrap();
        assert!(!metas.is_empty());
        assert!(metas.iter().all(|m| m.stats.num_histogram_samples > 0), "{metas:?}");
        check(&db, 200);
    }

    #[test]
    fn bad_histogram_refuses_the_request_naming_the_series() {
        let mut h = wire_int(5, 2);
        h.positive_deltas = vec![2, -3];
        let req = [series("ok", vec![], &[(1, 1.0)]), series("broken_hist", vec![h], &[])];
        let e = norn_storeapi::remote_write::validate(&req, &Default::default()).unwrap_err();
        assert_eq!(e.http_status(), 400);
        let msg = e.to_string();
        assert!(msg.contains(r#"__name__="broken_hist""#) && msg.contains("observation count of -1"), "{msg}");
    }
}
