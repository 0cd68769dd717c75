//! Validation of incoming series and appends to a tenant's head, with the error classes
//! that decide HTTP and gRPC status codes.

use norn_model::Labels;
use norn_storeapi::prometheus_copy::TimeSeries;
use norn_storeapi::remote_write::{RejectKind, Rejected, describe};
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
}
