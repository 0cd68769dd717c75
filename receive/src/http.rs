//! `POST /api/v1/receive` (and `/api/v1/push`): Prometheus remote write 1.0 and 2.0.

use std::sync::Arc;

use axum::Router as AxumRouter;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use norn_model::Labels;
use norn_service::Health;
use norn_storeapi::io::prometheus::write::v2;
use norn_storeapi::prometheus_copy::TimeSeries;
use norn_storeapi::{RemoteWriteV1, V2Counts, v2_to_v1};
use prost::Message;

use crate::router::{Batch, Router};
use crate::tenants::validate_tenant;
use crate::write::{Limits, WriteError, validate};

/// Header Thanos receivers use between themselves for the replica number over HTTP.
pub const REPLICA_HEADER: &str = "THANOS-REPLICA";

/// State of the remote-write handler.
#[derive(Debug)]
pub struct WriteApi {
    pub router: Arc<Router>,
    pub health: Arc<Health>,
    pub limits: Limits,
    pub tenant_header: String,
    pub default_tenant: String,
}

/// Which remote-write protocol a request uses, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V1,
    V2,
}

/// Picks the protocol from `Content-Type`; an unknown `proto=` is refused (415).
pub fn protocol(content_type: Option<&str>) -> Result<Protocol, String> {
    let Some(ct) = content_type else { return Ok(Protocol::V1) };
    let mut parts = ct.split(';').map(str::trim);
    let media = parts.next().unwrap_or("");
    if !media.is_empty() && !media.eq_ignore_ascii_case("application/x-protobuf") {
        return Err(format!("unsupported content type {ct:?}"));
    }
    for p in parts {
        if let Some(v) = p.strip_prefix("proto=") {
            return match v.trim_matches('"') {
                "prometheus.WriteRequest" => Ok(Protocol::V1),
                "io.prometheus.write.v2.Request" => Ok(Protocol::V2),
                other => Err(format!("unsupported remote write message {other:?}")),
            };
        }
    }
    Ok(Protocol::V1)
}

/// Decompresses a snappy block body, checking the length its header claims against
/// `limit` before allocating anything.
pub fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, WriteError> {
    let n = snap::raw::decompress_len(body).map_err(|e| WriteError::BadRequest(format!("snappy decode: {e}")))?;
    if limit > 0 && n > limit {
        return Err(WriteError::TooLarge(format!("decompressed body of {n} bytes exceeds the limit of {limit} bytes")));
    }
    let mut out = vec![0u8; n];
    let got = snap::raw::Decoder::new()
        .decompress(body, &mut out)
        .map_err(|e| WriteError::BadRequest(format!("snappy decode: {e}")))?;
    out.truncate(got);
    Ok(out)
}

fn error_response(e: &WriteError) -> Response {
    let code = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, format!("{e}\n")).into_response()
}

/// A decoded, validated remote-write body.
#[derive(Debug)]
pub struct Decoded {
    pub series: Vec<TimeSeries>,
    /// One label set per series, in order.
    pub labels: Vec<Labels>,
    /// Remote write 2.0 only: what the request carried.
    pub counts: Option<V2Counts>,
}

/// Decodes a remote-write body (snappy, then protobuf of the given protocol) and
/// validates its series; the entry point the fuzz target exercises.
pub fn decode_body(body: &[u8], proto: Protocol, limits: &Limits) -> Result<Decoded, WriteError> {
    let raw = decompress(body, limits.size_bytes)?;
    let (series, counts) = match proto {
        Protocol::V1 => {
            let req = RemoteWriteV1::decode(raw.as_slice())
                .map_err(|e| WriteError::BadRequest(format!("protobuf decode of prometheus.WriteRequest: {e}")))?;
            (req.timeseries, None)
        }
        Protocol::V2 => {
            let req = v2::Request::decode(raw.as_slice()).map_err(|e| {
                WriteError::BadRequest(format!("protobuf decode of io.prometheus.write.v2.Request: {e}"))
            })?;
            let (s, c) = v2_to_v1(req).map_err(|e| WriteError::BadRequest(e.to_string()))?;
            (s, Some(c))
        }
    };
    drop(raw);
    let labels = validate(&series, limits)?;
    Ok(Decoded { series, labels, counts })
}

/// Decodes and validates a request into a batch, or the error to answer with.
fn decode(api: &WriteApi, headers: &HeaderMap, body: &[u8]) -> Result<(Batch, i64, Option<V2Counts>), WriteError> {
    let tenant = match headers.get(api.tenant_header.as_str()) {
        None => api.default_tenant.clone(),
        Some(v) => {
            v.to_str().map_err(|_| WriteError::BadRequest("tenant header is not valid text".into()))?.to_string()
        }
    };
    validate_tenant(&tenant).map_err(|e| WriteError::BadRequest(e.to_string()))?;
    let replica = match headers.get(REPLICA_HEADER) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| WriteError::BadRequest(format!("bad {REPLICA_HEADER} header")))?,
    };
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let proto = protocol(ct).map_err(WriteError::BadRequest)?;
    let Decoded { series, labels, counts } = decode_body(body, proto, &api.limits)?;
    Ok((Batch { tenant, series, labels }, replica, counts))
}

async fn receive(State(api): State<Arc<WriteApi>>, headers: HeaderMap, body: Bytes) -> Response {
    let resp = handle(&api, &headers, &body).await;
    api.router.metrics.record_request("receive", resp.status().as_u16());
    resp
}

async fn handle(api: &WriteApi, headers: &HeaderMap, body: &[u8]) -> Response {
    if !api.health.is_ready() {
        return error_response(&WriteError::Unavailable("receiver is not ready".into()));
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if let Err(m) = protocol(ct) {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("{m}\n")).into_response();
    }
    let (batch, replica, counts) = match decode(api, headers, body) {
        Ok(x) => x,
        Err(e) => return error_response(&e),
    };
    match api.router.write(batch, replica).await {
        Ok(()) => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Some(c) = counts {
                let h = r.headers_mut();
                for (k, v) in [
                    ("x-prometheus-remote-write-samples-written", c.samples),
                    ("x-prometheus-remote-write-histograms-written", c.histograms),
                    ("x-prometheus-remote-write-exemplars-written", c.exemplars),
                ] {
                    h.insert(k, v.into());
                }
            }
            r
        }
        Err(e) => {
            tracing::debug!(error = %e, "remote write failed");
            error_response(&e)
        }
    }
}

/// The remote-write routes.
pub fn routes(api: Arc<WriteApi>) -> AxumRouter {
    let limit = if api.limits.size_bytes > 0 { api.limits.size_bytes } else { usize::MAX };
    AxumRouter::new()
        .route("/api/v1/receive", post(receive))
        .route("/api/v1/push", post(receive))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_by_content_type() {
        let cases = [
            (None, Ok(Protocol::V1)),
            (Some("application/x-protobuf"), Ok(Protocol::V1)),
            (Some("application/x-protobuf;proto=prometheus.WriteRequest"), Ok(Protocol::V1)),
            (Some("application/x-protobuf;proto=io.prometheus.write.v2.Request"), Ok(Protocol::V2)),
        ];
        for (ct, want) in cases {
            assert_eq!(protocol(ct), want, "{ct:?}");
        }
        assert!(protocol(Some("application/x-protobuf;proto=foo.Bar")).is_err());
        assert!(protocol(Some("application/json")).is_err());
    }

    #[test]
    fn snappy_claims_checked_before_allocating() {
        // A 5-byte body whose varint header claims ~4 GiB.
        let huge = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(decompress(&huge, 1 << 20).unwrap_err().http_status(), 413);
        assert_eq!(decompress(b"\x05garbage", 1 << 20).unwrap_err().http_status(), 400);
        assert_eq!(decompress(&[0x80], 1 << 20).unwrap_err().http_status(), 400);
        let ok = snap::raw::Encoder::new().compress_vec(b"hello").unwrap();
        assert_eq!(decompress(&ok, 1 << 20).unwrap(), b"hello");
    }
}
