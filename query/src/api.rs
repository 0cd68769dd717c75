//! The Prometheus HTTP API (and Thanos's additions), remote read, federation and the UI.

// Helpers return the finished error response so handlers can `?`/match them straight out;
// the size of `Response` on the error path does not matter for request handling.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use norn_model::{Labels, MatchType, Matcher};
use norn_promql::{Engine, EngineOptions, QueryError, QueryResult, StoredValue};
use promql_parser::parser::Expr;
use tokio::sync::Semaphore;

use crate::Args;
use crate::fanout::{Fanout, FanoutError, QueryOptions, StoreQueryable};
use crate::json;
use crate::timeparse::{MAX_TIME, MIN_TIME, format_rfc3339, now_ms, parse_duration_param, parse_time};

/// Most points a range query may return per series, as Prometheus limits it.
const MAX_POINTS: i64 = 11_000;

/// Shared state of the HTTP handlers.
#[derive(Debug)]
pub struct ApiState {
    /// Flags.
    pub args: Args,
    /// The fan-out over the endpoint set.
    pub fanout: Arc<Fanout>,
    engine: Engine,
    pub(crate) limiter: Arc<Semaphore>,
    ready: Arc<std::sync::atomic::AtomicBool>,
}

impl ApiState {
    /// State for the handlers; `ready` flips once the first endpoint refresh finished.
    pub fn new(args: Args, fanout: Arc<Fanout>, ready: Arc<std::sync::atomic::AtomicBool>) -> Self {
        let engine = Engine::new(EngineOptions {
            lookback_delta: args.lookback_delta.as_millis() as i64,
            max_samples: args.max_samples,
            ..Default::default()
        });
        let limiter = Arc::new(Semaphore::new(args.max_concurrent.max(1)));
        ApiState { args, fanout, engine, limiter, ready }
    }
}

/// The router with every route.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(crate::metadata::handler))
        .route("/api/v1/query_exemplars", get(crate::exemplars::handler).post(crate::exemplars::handler))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/status/flags", get(flags))
        .route("/api/v1/format_query", get(format_query).post(format_query))
        .route("/api/v1/stores", get(stores))
        .route("/api/v1/read", post(crate::remote_read::handler))
        .route("/federate", get(federate))
        .route("/-/healthy", get(|| async { "Norn query is Healthy.\n" }))
        .route("/-/ready", get(ready))
        .route("/", get(ui))
        .with_state(state)
}

/// Request parameters from the URL and, for POST forms, the body.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn from(q: Option<String>, headers: &HeaderMap, method: &Method, body: &[u8]) -> Params {
        let mut v: Vec<(String, String)> = Vec::new();
        if let Some(q) = q {
            v.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if *method == Method::POST && is_form {
            // Form values come before URL values, as Go's ParseForm orders them.
            let mut f: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
            f.extend(v);
            v = f;
        }
        Params(v)
    }
    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
    fn all(&self, k: &str) -> Vec<&str> {
        self.0.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect()
    }
}

pub(crate) fn respond(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(crate) fn ok(data: &str, warnings: &[String], infos: &[String]) -> Response {
    respond(StatusCode::OK, json::success(data, warnings, infos))
}

pub(crate) fn bad_data(msg: impl AsRef<str>) -> Response {
    respond(StatusCode::BAD_REQUEST, json::error("bad_data", msg.as_ref(), &[], &[]))
}

fn fanout_err(e: FanoutError, warnings: &[String]) -> Response {
    match e {
        FanoutError::Timeout => {
            respond(StatusCode::SERVICE_UNAVAILABLE, json::error("timeout", "query timed out", warnings, &[]))
        }
        // Thanos answers a failed Select/LabelNames/LabelValues as an execution error.
        FanoutError::Endpoint(m) => {
            respond(StatusCode::UNPROCESSABLE_ENTITY, json::error("execution", &m, warnings, &[]))
        }
        FanoutError::TooManySamples => respond(
            StatusCode::UNPROCESSABLE_ENTITY,
            json::error("execution", &FanoutError::TooManySamples.to_string(), warnings, &[]),
        ),
    }
}

/// A boolean parameter as Go's `strconv.ParseBool` reads it, with its error wording.
fn parse_bool(v: Option<&str>, default: bool) -> Result<bool, String> {
    match v {
        None => Ok(default),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(o) => Err(format!("strconv.ParseBool: parsing {}: invalid syntax", norn_model::format::go_quote(o))),
    }
}

/// Whether a tenant name is accepted, as Thanos's `IsTenantValid` (`tenant == path.Base(tenant)`):
/// no `/` in it, except the name `/` itself.
fn tenant_valid(t: &str) -> bool {
    t == "/" || !t.contains('/')
}

/// The `limit` parameter of the series and label endpoints, as Prometheus 3 reads it:
/// absent or 0 means no limit; not a number or negative is bad data.
fn limit_param(p: &Params) -> Result<Option<usize>, Response> {
    let Some(v) = p.get("limit") else { return Ok(None) };
    let n: i64 = v.parse().map_err(|_| {
        bad_data(format!(
            "invalid parameter \"limit\": strconv.Atoi: parsing {}: invalid syntax",
            norn_model::format::go_quote(v)
        ))
    })?;
    if n < 0 {
        return Err(bad_data("invalid parameter \"limit\": limit must be non-negative"));
    }
    Ok(usize::try_from(n).ok().filter(|n| *n > 0))
}

/// Prometheus's warning when `limit` cut a list short.
const TRUNCATED: &str = "results truncated due to limit";

impl ApiState {
    pub(crate) fn query_options(&self, p: &Params, headers: &HeaderMap) -> Result<QueryOptions, Response> {
        // Worded as Thanos's `errors.Wrapf(err, "'%s' parameter", ...)`.
        let dedup =
            parse_bool(p.get("dedup"), self.args.dedup).map_err(|e| bad_data(format!("'dedup' parameter: {e}")))?;
        let partial = parse_bool(p.get("partial_response"), self.args.partial_response)
            .map_err(|e| bad_data(format!("'partial_response' parameter: {e}")))?;
        let mut timeout = self.args.timeout;
        if let Some(t) = p.get("timeout") {
            let ms = parse_duration_param(t).map_err(|e| bad_data(format!("invalid parameter \"timeout\": {e}")))?;
            if ms > 0 {
                timeout = timeout.min(Duration::from_millis(ms as u64));
            }
        }
        // As Thanos's `GetTenantFromHTTP`: the configured header, then `THANOS-TENANT` (what
        // Thanos's query-frontend converts the configured header into), then the default.
        // A value that is not plain text is refused rather than read as the default tenant,
        // which with enforcement would serve another tenant's data.
        let mut tenant = None;
        for name in [self.args.tenant_header.as_str(), "thanos-tenant"] {
            if let Some(h) = headers.get(name).filter(|h| !h.is_empty()) {
                tenant = Some(h.to_str().map_err(|_| bad_data("Tenant name not valid"))?.to_string());
                break;
            }
        }
        let tenant = tenant.unwrap_or_else(|| self.args.default_tenant.clone());
        if !tenant_valid(&tenant) {
            return Err(bad_data("Tenant name not valid"));
        }
        // The fan-out replaces any matcher on the tenant label with this one, as Thanos's
        // prom-label-proxy enforcer (`NewEnforcer(false, ...)`) does.
        let extra_matchers = if self.args.enforce_tenancy {
            vec![Matcher::equal(self.args.tenant_label_name.clone(), tenant.clone())]
        } else {
            vec![]
        };
        Ok(QueryOptions {
            dedup,
            replica_labels: self.args.replica_labels.clone(),
            partial_response: partial,
            tenant: Some(tenant),
            extra_matchers,
            deadline: Instant::now() + timeout,
            // Replicas are decoded before dedup, so the limit allows one full copy per replica
            // label value seen in practice (RF up to 3) before refusing.
            max_samples: self.args.max_samples.saturating_mul(3),
            max_source_resolution: 0,
            aggregates: vec![],
        })
    }

    /// The `max_source_resolution` parameter in ms (Thanos's `parseDownsamplingParamMillis`):
    /// a duration, or `auto` (or nothing, with `--query.auto-downsampling`) for `auto_ms`.
    pub(crate) fn max_source_resolution(&self, p: &Params, auto_ms: i64) -> Result<i64, Response> {
        let val = p.get("max_source_resolution").unwrap_or("");
        let mut ms = if self.args.auto_downsampling || val == "auto" { auto_ms } else { 0 };
        if !val.is_empty() && val != "auto" {
            ms = parse_duration_param(val).map_err(|e| bad_data(format!("'max_source_resolution' parameter: {e}")))?;
        }
        if ms < 0 {
            return Err(bad_data("negative 'max_source_resolution' is not accepted. Try a positive integer"));
        }
        Ok(ms)
    }

    /// Runs the engine on a blocking thread (it calls back into the async fan-out).
    async fn run_engine(
        self: &Arc<Self>,
        opts: QueryOptions,
        f: impl FnOnce(&Engine, &StoreQueryable) -> QueryResult + Send + 'static,
    ) -> Result<(QueryResult, Vec<String>), Response> {
        let _permit = self.limiter.acquire().await.map_err(|_| bad_data("shutting down"))?;
        let deadline = opts.deadline;
        let st = self.clone();
        let handle = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            let q = StoreQueryable::new(st.fanout.clone(), opts, handle);
            let r = f(&st.engine, &q);
            (r, q.take_warnings())
        });
        match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), task).await {
            Err(_) => Err(respond(
                StatusCode::SERVICE_UNAVAILABLE,
                json::error("timeout", "query timed out in expression evaluation", &[], &[]),
            )),
            Ok(Err(e)) => {
                Err(respond(StatusCode::INTERNAL_SERVER_ERROR, json::error("internal", &e.to_string(), &[], &[])))
            }
            Ok(Ok(r)) => Ok(r),
        }
    }
}

fn query_answer(r: QueryResult, mut endpoint_warnings: Vec<String>, ts: i64) -> Response {
    endpoint_warnings.extend(r.warnings);
    match r.value {
        Ok(v) => {
            let mut data = String::new();
            json::write_query_data(&mut data, &v, ts);
            ok(&data, &endpoint_warnings, &r.infos)
        }
        Err(QueryError::Parse(m)) => {
            respond(StatusCode::BAD_REQUEST, json::error("bad_data", &m, &endpoint_warnings, &r.infos))
        }
        Err(e) => {
            let m = e.to_string();
            if m.contains("query timed out") {
                return respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json::error("timeout", &m, &endpoint_warnings, &r.infos),
                );
            }
            respond(StatusCode::UNPROCESSABLE_ENTITY, json::error("execution", &m, &endpoint_warnings, &r.infos))
        }
    }
}

fn parse_query(p: &Params) -> Result<(String, Expr), Response> {
    let q = p.get("query").unwrap_or("").to_string();
    match norn_promql::parse(&q) {
        Ok(e) => Ok((q, e)),
        Err(e) => Err(bad_data(format!("invalid parameter \"query\": {e}"))),
    }
}

async fn query(
    State(st): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::from(q, &headers, &method, &body);
    let ts = match p.get("time") {
        None => now_ms(),
        Some(t) => match parse_time(t) {
            Ok(t) => t,
            Err(e) => return bad_data(format!("invalid parameter \"time\": Invalid time value for 'time': {e}")),
        },
    };
    let mut opts = match st.query_options(&p, &headers) {
        Ok(o) => o,
        Err(r) => return r,
    };
    // Instant queries read raw data unless asked (Thanos's default instant resolution, 0).
    opts.max_source_resolution = match st.max_source_resolution(&p, 0) {
        Ok(ms) => ms,
        Err(r) => return r,
    };
    let (text, expr) = match parse_query(&p) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match st.run_engine(opts, move |e, q| e.instant_expr(q, &expr, &text, ts)).await {
        Ok((r, w)) => query_answer(r, w, ts),
        Err(r) => r,
    }
}

async fn query_range(
    State(st): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::from(q, &headers, &method, &body);
    let start = match parse_time(p.get("start").unwrap_or("")) {
        Ok(t) => t,
        Err(e) => return bad_data(format!("invalid parameter \"start\": {e}")),
    };
    let end = match parse_time(p.get("end").unwrap_or("")) {
        Ok(t) => t,
        Err(e) => return bad_data(format!("invalid parameter \"end\": {e}")),
    };
    if end < start {
        return bad_data("invalid parameter \"end\": end timestamp must not be before start time");
    }
    let step = match parse_duration_param(p.get("step").unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return bad_data(format!("invalid parameter \"step\": {e}")),
    };
    if step <= 0 {
        return bad_data(
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
        );
    }
    if (end - start) / step > MAX_POINTS {
        return bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        );
    }
    let mut opts = match st.query_options(&p, &headers) {
        Ok(o) => o,
        Err(r) => return r,
    };
    opts.max_source_resolution = match st.max_source_resolution(&p, step / 5) {
        Ok(ms) => ms,
        Err(r) => return r,
    };
    let (text, expr) = match parse_query(&p) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match st.run_engine(opts, move |e, q| e.range_expr(q, &expr, &text, start, end, step)).await {
        Ok((r, w)) => query_answer(r, w, start),
        Err(r) => r,
    }
}

fn to_matchers(sel: &str) -> Result<Vec<Matcher>, String> {
    // Worded as Prometheus's `ParseMetricSelector`.
    let parsed = norn_promql::parse::parse_selector(sel).map_err(|e| e.render(sel))?;
    let mut out = Vec::new();
    for (name, op, value) in parsed {
        let kind = match op {
            "=" => MatchType::Equal,
            "!=" => MatchType::NotEqual,
            "=~" => MatchType::Regex,
            _ => MatchType::NotRegex,
        };
        out.push(Matcher::new(kind, name, value).map_err(|e| e.to_string())?);
    }
    if out.iter().all(|m| m.matches_empty()) {
        return Err("match[] must contain at least one non-empty matcher".into());
    }
    Ok(out)
}

/// The matcher sets of `match[]`; `/series` words errors as an invalid parameter, the
/// label endpoints give the bare message, as Prometheus does.
fn match_sets(p: &Params, prefixed: bool) -> Result<Vec<Vec<Matcher>>, Response> {
    p.all("match[]")
        .into_iter()
        .map(|s| {
            to_matchers(s)
                .map_err(|e| bad_data(if prefixed { format!("invalid parameter \"match[]\": {e}") } else { e }))
        })
        .collect()
}

/// `start`/`end` of the series and label endpoints, worded as Prometheus's `parseTimeParam`.
fn range_params(p: &Params) -> Result<(i64, i64), Response> {
    let param = |name: &str, default: i64| match p.get(name) {
        None => Ok(default),
        Some(s) => parse_time(s)
            .map_err(|e| bad_data(format!("invalid parameter \"{name}\": Invalid time value for '{name}': {e}"))),
    };
    Ok((param("start", MIN_TIME)?, param("end", MAX_TIME)?))
}

async fn series(
    State(st): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::from(q, &headers, &method, &body);
    if p.all("match[]").is_empty() {
        return bad_data("no match[] parameter provided");
    }
    let (start, end) = match range_params(&p) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let sets = match match_sets(&p, true) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let limit = match limit_param(&p) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let opts = match st.query_options(&p, &headers) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let mut all: BTreeSet<Labels> = BTreeSet::new();
    let mut warnings = Vec::new();
    for ms in sets {
        match st.fanout.select(&opts, &ms, start, end, true).await {
            Ok(sel) => {
                warnings.extend(sel.warnings);
                all.extend(sel.series.into_iter().map(|(l, _)| l));
            }
            Err(e) => return fanout_err(e, &warnings),
        }
    }
    if let Some(l) = limit
        && all.len() > l
    {
        warnings.push(TRUNCATED.to_string());
    }
    let mut data = String::from("[");
    for (i, l) in all.iter().take(limit.unwrap_or(usize::MAX)).enumerate() {
        if i > 0 {
            data.push(',');
        }
        json::write_labels(&mut data, l);
    }
    data.push(']');
    ok(&data, &warnings, &[])
}

async fn label_strings(st: &ApiState, p: &Params, headers: &HeaderMap, name: Option<&str>) -> Response {
    let (start, end) = match range_params(p) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let sets = match match_sets(p, false) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let limit = match limit_param(p) {
        Ok(l) => l,
        Err(r) => return r,
    };
    let opts = match st.query_options(p, headers) {
        Ok(o) => o,
        Err(r) => return r,
    };
    match st.fanout.label_strings(&opts, name, &sets, start, end).await {
        Ok((mut vals, mut w)) => {
            if let Some(l) = limit
                && vals.len() > l
            {
                vals.truncate(l);
                w.push(TRUNCATED.to_string());
            }
            ok(&json::str_array(&vals), &w, &[])
        }
        Err(e) => fanout_err(e, &[]),
    }
}

async fn labels(
    State(st): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let p = Params::from(q, &headers, &method, &body);
    label_strings(&st, &p, &headers, None).await
}

async fn label_values(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let p = Params::from(q, &headers, &Method::GET, &[]);
    // Prometheus accepts `U__`-escaped names for UTF-8 label names.
    let name = unescape_label_name(&name);
    if name.is_empty() || name.chars().any(char::is_control) {
        return bad_data(format!("invalid label name: {name:?}"));
    }
    label_strings(&st, &p, &headers, Some(&name)).await
}

fn unescape_label_name(n: &str) -> String {
    let Some(rest) = n.strip_prefix("U__") else { return n.to_string() };
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '_' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'_') {
            chars.next();
            out.push('_');
            continue;
        }
        let hex: String = chars.by_ref().take_while(|c| *c != '_').collect();
        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
            Some(ch) => out.push(ch),
            None => return n.to_string(),
        }
    }
    out
}

async fn buildinfo() -> Response {
    let mut d = String::from("{\"version\":");
    json::write_str(&mut d, env!("CARGO_PKG_VERSION"));
    d.push_str(",\"revision\":\"\",\"branch\":\"\",\"buildUser\":\"\",\"buildDate\":\"\",\"goVersion\":\"\"}");
    ok(&d, &[], &[])
}

async fn flags(State(st): State<Arc<ApiState>>) -> Response {
    let mut d = String::from("{");
    for (i, (k, v)) in st.args.flag_map().iter().enumerate() {
        if i > 0 {
            d.push(',');
        }
        json::write_str(&mut d, k);
        d.push(':');
        json::write_str(&mut d, v);
    }
    d.push('}');
    ok(&d, &[], &[])
}

async fn format_query(method: Method, headers: HeaderMap, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let p = Params::from(q, &headers, &method, &body);
    match parse_query(&p) {
        Ok((_, e)) => {
            let mut d = String::new();
            json::write_str(&mut d, &e.prettify());
            ok(&d, &[], &[])
        }
        Err(r) => r,
    }
}

async fn stores(State(st): State<Arc<ApiState>>) -> Response {
    let mut by_type: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for ep in st.fanout.endpoints.all() {
        let s = ep.status.read().clone();
        // As Thanos: an endpoint whose component type is unknown (never answered Info) is
        // left out.
        let Some(kind) = s.info.as_ref().map(|i| i.component.clone()).filter(|c| !c.is_empty()) else {
            continue;
        };
        let mut o = String::from("{\"name\":");
        json::write_str(&mut o, &ep.addr);
        o.push_str(",\"lastCheck\":");
        // Go's zero `time.Time` when never checked.
        let checked = s.last_check.map(format_rfc3339).unwrap_or_else(|| "0001-01-01T00:00:00Z".into());
        json::write_str(&mut o, &checked);
        o.push_str(",\"lastError\":");
        match &s.last_error {
            Some(e) => json::write_str(&mut o, e),
            None => o.push_str("null"),
        }
        o.push_str(",\"labelSets\":[");
        if let Some(info) = &s.info {
            for (i, l) in info.label_sets.iter().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                json::write_labels(&mut o, l);
            }
        }
        let (min_time, max_time) = s.info.as_ref().map(|i| (i.min_time, i.max_time)).unwrap_or_default();
        let _ = write!(o, "],\"minTime\":{min_time},\"maxTime\":{max_time}}}");
        by_type.entry(kind).or_default().push(o);
    }
    let mut d = String::from("{");
    for (i, (k, v)) in by_type.iter().enumerate() {
        if i > 0 {
            d.push(',');
        }
        json::write_str(&mut d, k);
        d.push_str(":[");
        d.push_str(&v.join(","));
        d.push(']');
    }
    d.push('}');
    ok(&d, &[], &[])
}

async fn ready(State(st): State<Arc<ApiState>>) -> Response {
    if st.ready.load(std::sync::atomic::Ordering::Acquire) {
        (StatusCode::OK, "Norn query is Ready.\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Norn query is not ready.\n").into_response()
    }
}

async fn ui() -> Response {
    let mut r = Response::new(Body::from(crate::ui::INDEX_HTML));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

/// `/federate`: the latest sample of every series matching `match[]`, in the text format.
async fn federate(State(st): State<Arc<ApiState>>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let p = Params::from(q, &headers, &Method::GET, &[]);
    // As Prometheus's federation handler: no `match[]` selects nothing (an empty 200), and a
    // bad selector or parameter is a plain-text 400, not the API's JSON.
    let plain_400 = |msg: String| {
        let mut r = (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        r
    };
    let sets = match p.all("match[]").into_iter().map(to_matchers).collect::<Result<Vec<_>, _>>() {
        Ok(s) => s,
        Err(e) => return plain_400(e),
    };
    let opts = match st.query_options(&p, &headers) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let now = now_ms();
    let mint = now - st.args.lookback_delta.as_millis() as i64;
    let mut latest: std::collections::BTreeMap<Labels, (i64, f64)> = Default::default();
    let mut latest_h: std::collections::BTreeMap<Labels, (i64, Arc<norn_model::FloatHistogram>)> = Default::default();
    for ms in sets {
        let sel = match st.fanout.select(&opts, &ms, mint, now, false).await {
            Ok(s) => s,
            // The storage's error as it is, plain text, as Prometheus's `http.Error`.
            Err(e) => {
                let mut r = (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                return r;
            }
        };
        for (l, samples) in sel.series {
            // The last sample in the lookback window; a staleness marker means the series ended.
            match samples.iter().rev().find(|(t, _)| *t <= now && *t > mint) {
                Some((t, StoredValue::Float(v))) if !norn_promql::value::is_stale_nan(*v) => {
                    latest.insert(l, (*t, *v));
                }
                Some((t, StoredValue::Histogram(h))) if !norn_promql::value::is_stale_nan(h.sum) => {
                    latest_h.insert(l, (*t, h.clone()));
                }
                _ => {}
            }
        }
    }
    // Native histograms only exist in the protobuf format; the text format leaves them out,
    // as Prometheus does.
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if crate::federate_proto::wants_protobuf(accept) {
        use crate::federate_proto::{CONTENT_TYPE, Latest, render};
        let mut all: Vec<(Labels, Latest)> = latest.into_iter().map(|(l, (t, v))| (l, Latest::Float(t, v))).collect();
        all.extend(latest_h.into_iter().map(|(l, (t, h))| (l, Latest::Histogram(t, h))));
        let mut r = (StatusCode::OK, render(&all)).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        return r;
    }
    let mut by_name: Vec<(&Labels, &(i64, f64))> = latest.iter().collect();
    by_name.sort_by(|a, b| a.0.metric_name().cmp(&b.0.metric_name()).then_with(|| a.0.cmp(b.0)));
    let mut out = String::new();
    let mut last_name: Option<&str> = None;
    for (l, (t, v)) in by_name {
        let name = l.metric_name().unwrap_or("");
        if last_name != Some(name) {
            let _ = writeln!(out, "# TYPE {name} untyped");
            last_name = Some(name);
        }
        out.push_str(name);
        let rest: Vec<(&str, &str)> = l.iter().filter(|(n, _)| *n != norn_model::METRIC_NAME).collect();
        if !rest.is_empty() {
            out.push('{');
            for (i, (n, v)) in rest.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{n}=\"{}\"", escape_label_value(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {} {t}", text_float(*v));
    }
    let mut r = (StatusCode::OK, out).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n").replace('"', "\\\"")
}

fn text_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "+Inf".into()
    } else if f == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        norn_model::format::go_format_g(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_merge_form_and_url() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        let p = Params::from(Some("match[]=a&x=1".into()), &h, &Method::POST, b"match[]=b%7Bc%3D%22d%22%7D&query=up");
        assert_eq!(p.all("match[]"), vec!["b{c=\"d\"}", "a"]);
        assert_eq!(p.get("query"), Some("up"));
        assert_eq!(p.get("x"), Some("1"));
    }

    #[test]
    fn selectors_to_matchers() {
        let ms = to_matchers(r#"up{job=~"a.*",x!="1"}"#).unwrap();
        let names: Vec<String> = ms.iter().map(|m| format!("{}{}{}", m.name, m.kind.as_str(), m.value)).collect();
        assert_eq!(names, vec!["__name__=up", "job=~a.*", "x!=1"]);
        assert!(to_matchers("sum(up)").is_err());
    }

    #[test]
    fn label_name_unescape() {
        assert_eq!(unescape_label_name("job"), "job");
        assert_eq!(unescape_label_name("U__a_2e_b"), "a.b");
        assert_eq!(unescape_label_name("U__a__b"), "a_b");
    }

    #[test]
    fn bool_limit_and_tenant_params() {
        assert_eq!(parse_bool(Some("T"), false), Ok(true));
        assert_eq!(parse_bool(None, true), Ok(true));
        assert_eq!(parse_bool(Some("yes"), true), Err("strconv.ParseBool: parsing \"yes\": invalid syntax".into()));
        let lim = |q: &str| limit_param(&Params::from(Some(q.into()), &HeaderMap::new(), &Method::GET, &[]));
        assert_eq!(lim("").ok(), Some(None));
        assert_eq!(lim("limit=0").ok(), Some(None));
        assert_eq!(lim("limit=3").ok(), Some(Some(3)));
        for bad in ["limit=-1", "limit=x", "limit=1.5"] {
            assert_eq!(lim(bad).map(|_| ()).unwrap_err().status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        for (t, ok) in [("a", true), ("a.b-c", true), ("/", true), ("a/b", false), ("a/", false), ("//", false)] {
            assert_eq!(tenant_valid(t), ok, "{t}");
        }
    }

    #[test]
    fn enforced_matchers_replace_same_label() {
        let got = crate::fanout::with_extra_matchers(
            &[Matcher::equal("__name__", "up"), Matcher::equal("tenant_id", "other")],
            &[Matcher::equal("tenant_id", "mine")],
        );
        let s: Vec<String> = got.iter().map(|m| format!("{}{}{}", m.name, m.kind.as_str(), m.value)).collect();
        assert_eq!(s, vec!["__name__=up", "tenant_id=mine"]);
    }

    #[test]
    fn text_floats() {
        assert_eq!(text_float(1.0), "1");
        assert_eq!(text_float(f64::NAN), "NaN");
        assert_eq!(text_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(escape_label_value("a\"b\\\n"), "a\\\"b\\\\\\n");
    }
}
