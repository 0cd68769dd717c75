//! Validation of incoming series and appends to a tenant's head, with the error classes
//! that decide HTTP and gRPC status codes.

use norn_model::Labels;
use norn_model::labels::is_valid_legacy_label_name;
use norn_storeapi::prometheus_copy::TimeSeries;
use norn_storeapi::{ConvertError, labels_from_proto, thanos};
use norn_tsdb::head::AppendError;

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

/// Per-request limits; 0 disables a limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Decompressed request size in bytes (and the compressed body's size).
    pub size_bytes: usize,
    pub series: usize,
    pub samples: usize,
    pub labels_per_series: usize,
    pub label_name_length: usize,
    pub label_value_length: usize,
}

/// A wire label list as Prometheus prints a series, for error messages.
pub fn describe(ls: &[thanos::Label]) -> String {
    let mut s = String::from("{");
    for (i, l) in ls.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let v: String = l.value.chars().take(128).collect();
        s.push_str(&format!("{}={:?}", l.name, v));
    }
    s.push('}');
    s
}

/// Checks request-level limits and every series' labels; returns the label sets, in
/// request order. The first bad series is named in the error.
pub fn validate(series: &[TimeSeries], limits: &Limits) -> Result<Vec<Labels>, WriteError> {
    if limits.series > 0 && series.len() > limits.series {
        return Err(WriteError::TooLarge(format!("request has {} series, limit is {}", series.len(), limits.series)));
    }
    if limits.samples > 0 {
        let n: usize = series.iter().map(|s| s.samples.len() + s.histograms.len()).sum();
        if n > limits.samples {
            return Err(WriteError::TooLarge(format!("request has {n} samples, limit is {}", limits.samples)));
        }
    }
    let mut out = Vec::with_capacity(series.len());
    for ts in series {
        let bad = |what: String| format!("series {}: {what}", describe(&ts.labels));
        if limits.labels_per_series > 0 && ts.labels.len() > limits.labels_per_series {
            return Err(WriteError::BadRequest(bad(format!(
                "{} labels, limit is {}",
                ts.labels.len(),
                limits.labels_per_series
            ))));
        }
        for l in &ts.labels {
            if limits.label_name_length > 0 && l.name.len() > limits.label_name_length {
                return Err(WriteError::BadRequest(bad(format!(
                    "label name {:?} longer than {} bytes",
                    l.name, limits.label_name_length
                ))));
            }
            if limits.label_value_length > 0 && l.value.len() > limits.label_value_length {
                return Err(WriteError::BadRequest(bad(format!(
                    "value of label {:?} longer than {} bytes",
                    l.name, limits.label_value_length
                ))));
            }
            if !l.name.is_empty() && !is_valid_legacy_label_name(&l.name) {
                return Err(WriteError::BadRequest(bad(format!("invalid label name {:?}", l.name))));
            }
        }
        let labels = labels_from_proto(&ts.labels).map_err(|e| match e {
            ConvertError::Labels(_) | ConvertError::EmptyLabelValue(_) => WriteError::Conflict(bad(e.to_string())),
            e => WriteError::BadRequest(bad(e.to_string())),
        })?;
        if labels.metric_name().is_none_or(str::is_empty) {
            return Err(WriteError::BadRequest(bad("no metric name (__name__ label)".into())));
        }
        out.push(labels);
    }
    Ok(out)
}

/// What a local append did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendStats {
    pub appended: u64,
    pub conflicts: u64,
    pub unsupported: u64,
}

/// Appends the series `idx` of a request to `db` in one WAL-acknowledged commit.
/// Returns, per entry of `idx`, the error of that series if any of its samples was
/// refused (valid samples are committed anyway, as Thanos does); an `Err` means the
/// commit itself failed and nothing was stored.
pub fn append_local(
    db: &TenantDb,
    series: &[TimeSeries],
    labels: &[Labels],
    idx: &[usize],
    stats: &mut AppendStats,
) -> Result<Vec<Option<WriteError>>, WriteError> {
    let mut app = db.head.appender();
    let mut per = Vec::with_capacity(idx.len());
    for &i in idx {
        let (ts, l) = (&series[i], &labels[i]);
        let mut first: Option<(AppendError, i64)> = None;
        let mut refused = 0u64;
        for s in &ts.samples {
            match app.append(l, s.timestamp, s.value) {
                Ok(()) => stats.appended += 1,
                Err(e) => {
                    refused += 1;
                    first.get_or_insert((e, s.timestamp));
                }
            }
        }
        stats.conflicts += refused;
        let mut err = first.map(|(e, t)| {
            WriteError::Conflict(format!(
                "series {}: {e} at timestamp {t} ({refused} of {} samples refused)",
                describe(&ts.labels),
                ts.samples.len()
            ))
        });
        if !ts.histograms.is_empty() {
            stats.unsupported += ts.histograms.len() as u64;
            err.get_or_insert_with(|| {
                WriteError::BadRequest(format!(
                    "series {}: native histogram samples are not supported yet ({} refused)",
                    describe(&ts.labels),
                    ts.histograms.len()
                ))
            });
        }
        per.push(err);
    }
    app.commit().map_err(|e| WriteError::Internal(format!("WAL commit for tenant {}: {e}", db.tenant)))?;
    Ok(per)
}

#[cfg(test)]
mod tests {
    use norn_storeapi::prometheus_copy::Sample;

    use super::*;

    fn ts(pairs: &[(&str, &str)]) -> TimeSeries {
        TimeSeries {
            labels: pairs.iter().map(|(n, v)| thanos::Label { name: n.to_string(), value: v.to_string() }).collect(),
            samples: vec![Sample { value: 1.0, timestamp: 1 }],
            ..Default::default()
        }
    }

    #[test]
    fn validation_table() {
        let lim = Limits { labels_per_series: 3, label_name_length: 10, label_value_length: 5, ..Default::default() };
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<u16>);
        let cases: &[Case<'_>] = &[
            (&[("__name__", "up"), ("job", "a")], None),
            (&[("job", "a")], Some(400)),
            (&[("__name__", "up"), ("9bad", "a")], Some(400)),
            (&[("__name__", "up"), ("b", "1"), ("a", "2")], Some(409)),
            (&[("__name__", "up"), ("a", "1"), ("a", "2")], Some(409)),
            (&[("__name__", "up"), ("a", "")], Some(409)),
            (&[("__name__", "up"), ("a", "1"), ("b", "1"), ("c", "1")], Some(400)),
            (&[("__name__", "up"), ("abcdefghijk", "1")], Some(400)),
            (&[("__name__", "up"), ("a", "123456")], Some(400)),
        ];
        for (pairs, want) in cases {
            let got = validate(&[ts(pairs)], &lim).err().map(|e| e.http_status());
            assert_eq!(got, *want, "{pairs:?}");
        }
        let err = validate(&[ts(&[("__name__", "ok")]), ts(&[("job", "x")])], &lim).unwrap_err();
        assert!(err.to_string().contains(r#"{job="x"}"#), "{err}");
    }

    #[test]
    fn request_limits() {
        let many = vec![ts(&[("__name__", "a")]); 3];
        let lim = Limits { series: 2, ..Default::default() };
        assert_eq!(validate(&many, &lim).unwrap_err().http_status(), 413);
        let lim = Limits { samples: 2, ..Default::default() };
        assert_eq!(validate(&many, &lim).unwrap_err().http_status(), 413);
        assert!(validate(&many, &Limits::default()).is_ok());
    }

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
}
