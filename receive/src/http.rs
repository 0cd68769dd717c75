//! `POST /api/v1/receive` (and `/api/v1/push`, and Prometheus's own receiver path
//! `/api/v1/write`): Prometheus remote write 1.0 and 2.0.

use std::sync::Arc;

use axum::Router as AxumRouter;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use norn_service::Health;
use norn_storeapi::V2Counts;
use norn_storeapi::remote_write::{Decoded, LabelCache, Limits, decode_body_cached, protocol};

use crate::router::{Batch, Router};
use crate::tenants::validate_tenant;
use crate::write::WriteError;

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
    /// Validated label sets of recent series (validation depends only on `limits`).
    pub label_cache: LabelCache,
    /// Where request metadata goes.
    pub metadata: Arc<crate::metadata::MetadataStore>,
}

fn error_response(e: &WriteError) -> Response {
    let code = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, format!("{e}\n")).into_response()
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
    let Decoded { series, labels, counts, metadata } =
        decode_body_cached(body, proto, &api.limits, Some(&api.label_cache)).map_err(WriteError::from)?;
    api.metadata.record(&tenant, &metadata);
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
        .route("/api/v1/write", post(receive))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api)
}
