//! The querier's HTTP API where Thanos/Prometheus users notice differences: the tenant
//! header forwarded to every endpoint as `thanos-tenant` (with and without
//! `--query.enforce-tenancy`, which replaces a tenant matcher of the query as Thanos's
//! prom-label-proxy enforcer does), invalid tenants, series/label calls with an endpoint down
//! and partial response off (422 `execution`, as Thanos), parameter wording (`start`/`end`,
//! `dedup`, `partial_response`, `limit`), `limit`'s truncation warning, `/api/v1/stores`
//! without endpoints that never answered Info, and `/federate` without or with a bad
//! `match[]`.

mod common;

use std::sync::Arc;

use common::{FakeStore, enc, serve_store, start_querier};
use norn_model::Labels;
use norn_storeapi::thanos::info::info_server::Info;
use norn_storeapi::thanos::info::{InfoRequest, InfoResponse};
use norn_storeapi::thanos::store_server::Store;
use norn_storeapi::thanos::{
    LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse, SeriesRequest,
};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// One call an endpoint saw: the method, its `thanos-tenant` metadata and its matchers.
type Seen = Arc<Mutex<Vec<(&'static str, Option<String>, Vec<String>)>>>;

/// A [`FakeStore`] recording what it is asked.
#[derive(Clone)]
struct Recording {
    inner: FakeStore,
    seen: Seen,
}

fn tenant_of<T>(r: &Request<T>) -> Option<String> {
    r.metadata().get("thanos-tenant").and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn matchers(ms: &[norn_storeapi::thanos::LabelMatcher]) -> Vec<String> {
    let mut out: Vec<String> = norn_storeapi::matchers_from_proto(ms)
        .unwrap()
        .iter()
        .map(|m| format!("{}{}{}", m.name, m.kind.as_str(), m.value))
        .collect();
    out.sort();
    out
}

use common::SeriesStream;

#[tonic::async_trait]
impl Store for Recording {
    type SeriesStream = SeriesStream;
    async fn series(&self, req: Request<SeriesRequest>) -> Result<Response<SeriesStream>, Status> {
        self.seen.lock().push(("series", tenant_of(&req), matchers(&req.get_ref().matchers)));
        self.inner.series(req).await
    }
    async fn label_names(&self, req: Request<LabelNamesRequest>) -> Result<Response<LabelNamesResponse>, Status> {
        self.seen.lock().push(("label_names", tenant_of(&req), matchers(&req.get_ref().matchers)));
        self.inner.label_names(req).await
    }
    async fn label_values(&self, req: Request<LabelValuesRequest>) -> Result<Response<LabelValuesResponse>, Status> {
        self.seen.lock().push(("label_values", tenant_of(&req), matchers(&req.get_ref().matchers)));
        self.inner.label_values(req).await
    }
}

#[tonic::async_trait]
impl Info for Recording {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.inner.info(req).await
    }
}

const T: i64 = 1_700_000_000_000;

fn data() -> Arc<common::Data> {
    let s = |tenant: &str, job: &str| {
        (
            Labels::from_pairs([("__name__", "m"), ("job", job), ("tenant_id", tenant)]),
            (0..10).map(|i| (T - 90_000 + i * 10_000, i as f64)).collect::<Vec<_>>(),
        )
    };
    Arc::new(vec![s("alpha", "a1"), s("alpha", "a2"), s("beta", "b")])
}

async fn get(http: std::net::SocketAddr, path: &str, tenant: Option<&str>) -> (u16, String, String) {
    let mut r = reqwest::Client::new().get(format!("http://{http}{path}"));
    if let Some(t) = tenant {
        r = r.header("THANOS-TENANT", t);
    }
    let r = r.send().await.unwrap();
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (r.status().as_u16(), ct, r.text().await.unwrap())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The `job` labels of an instant vector or series list answer.
fn jobs(body: &str) -> Vec<String> {
    let v = json(body);
    let items = v["data"]["result"].as_array().or_else(|| v["data"].as_array()).cloned().unwrap_or_default();
    let mut out: Vec<String> = items
        .iter()
        .map(|i| {
            let m = if i["metric"].is_object() { &i["metric"] } else { i };
            m["job"].as_str().unwrap_or("").to_string()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_header_forwarded_and_enforced() {
    let stop = CancellationToken::new();
    let seen: Seen = Default::default();
    let store = Recording { inner: FakeStore::new(Labels::default(), data()), seen: seen.clone() };
    let addr = serve_store(store, stop.clone()).await;
    let base = norn_query::Args { endpoints: vec![addr.to_string()], ..Default::default() };
    let q_at = format!("/api/v1/query?time={}&query=", T / 1000);

    // Without enforcement every tenant sees everything, and the tenant still reaches the store.
    let open = start_querier(base.clone()).await;
    let (code, _, body) = get(open.http, &format!("{q_at}m"), Some("alpha")).await;
    assert_eq!((code, jobs(&body)), (200, vec!["a1".into(), "a2".into(), "b".into()]), "{body}");
    let (code, _, body) = get(open.http, "/api/v1/labels", None).await;
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = get(open.http, "/api/v1/label/job/values", Some("beta")).await;
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = get(open.http, &format!("/api/v1/series?match[]={}", enc("m")), Some("")).await;
    assert_eq!(code, 200, "{body}");
    {
        let s = seen.lock();
        let calls: Vec<(&str, Option<&str>)> = s.iter().map(|(k, t, _)| (*k, t.as_deref())).collect();
        assert_eq!(
            calls,
            vec![
                ("series", Some("alpha")),
                ("label_names", Some("default-tenant")),
                ("label_values", Some("beta")),
                // An empty header means no tenant: the default one, as Thanos.
                ("series", Some("default-tenant")),
            ]
        );
        assert!(s.iter().all(|(_, _, ms)| !ms.iter().any(|m| m.starts_with("tenant_id"))), "{s:?}");
    }
    open.stop.cancel();
    seen.lock().clear();

    // Enforced: each tenant sees its own series; a matcher on another tenant is replaced.
    let enforced =
        start_querier(norn_query::Args { enforce_tenancy: true, default_tenant: "nobody".into(), ..base.clone() })
            .await;
    for (tenant, query, want) in [
        (Some("alpha"), "m", vec!["a1", "a2"]),
        (Some("beta"), "m", vec!["b"]),
        (Some("alpha"), r#"m{tenant_id="beta"}"#, vec!["a1", "a2"]),
        (Some("beta"), r#"sum by (job) (m{tenant_id=~".+"})"#, vec!["b"]),
        (None, "m", vec![]),
    ] {
        let (code, _, body) = get(enforced.http, &format!("{q_at}{}", enc(query)), tenant).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(jobs(&body), want, "{tenant:?} {query}: {body}");
    }
    let (_, _, body) =
        get(enforced.http, &format!("/api/v1/series?match[]={}", enc(r#"m{tenant_id="alpha"}"#)), Some("beta")).await;
    assert_eq!(jobs(&body), vec!["b"], "{body}");
    let (_, _, body) = get(enforced.http, "/api/v1/label/job/values", Some("alpha")).await;
    assert_eq!(json(&body)["data"], serde_json::json!(["a1", "a2"]), "{body}");
    let (_, _, body) = get(enforced.http, "/api/v1/label/tenant_id/values", Some("beta")).await;
    assert_eq!(json(&body)["data"], serde_json::json!(["beta"]), "{body}");
    {
        let s = seen.lock();
        assert!(!s.is_empty());
        for (kind, tenant, ms) in s.iter() {
            let want = format!("tenant_id={}", tenant.as_deref().unwrap_or("?"));
            let on_tenant: Vec<&String> = ms.iter().filter(|m| m.starts_with("tenant_id")).collect();
            assert_eq!(on_tenant, vec![&want], "{kind}: {ms:?}");
        }
    }
    // A tenant name with a path separator is refused, as Thanos's `IsTenantValid`.
    let (code, _, body) = get(enforced.http, &format!("{q_at}m"), Some("a/b")).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(json(&body)["error"], "Tenant name not valid");
    enforced.stop.cancel();

    // A custom tenant header, then THANOS-TENANT (what Thanos's query-frontend turns the custom
    // header into), then the default; a value that is not plain text is refused, not read as
    // the default tenant.
    let custom = start_querier(norn_query::Args {
        enforce_tenancy: true,
        default_tenant: "nobody".into(),
        tenant_header: "X-Scope-OrgID".into(),
        ..base.clone()
    })
    .await;
    for (headers, want) in [
        (vec![("X-Scope-OrgID", b"alpha".as_slice())], Ok(vec!["a1", "a2"])),
        (vec![("THANOS-TENANT", b"beta".as_slice())], Ok(vec!["b"])),
        (vec![("X-Scope-OrgID", b"alpha".as_slice()), ("THANOS-TENANT", b"beta".as_slice())], Ok(vec!["a1", "a2"])),
        (vec![("X-Scope-OrgID", b"".as_slice()), ("THANOS-TENANT", b"beta".as_slice())], Ok(vec!["b"])),
        (vec![], Ok(vec![])),
        (vec![("X-Scope-OrgID", "caf\u{e9}".as_bytes())], Err(400)),
    ] {
        let mut r = reqwest::Client::new().get(format!("http://{}{q_at}m", custom.http));
        for (name, value) in &headers {
            r = r.header(*name, reqwest::header::HeaderValue::from_bytes(value).unwrap());
        }
        let r = r.send().await.unwrap();
        let code = r.status().as_u16();
        let body = r.text().await.unwrap();
        match want {
            Ok(jobs_want) => {
                assert_eq!(code, 200, "{headers:?}: {body}");
                assert_eq!(jobs(&body), jobs_want, "{headers:?}: {body}");
            }
            Err(c) => assert_eq!(code, c, "{headers:?}: {body}"),
        }
    }
    custom.stop.cancel();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_limits_stores_and_federate_as_upstream() {
    let stop = CancellationToken::new();
    let up = serve_store(FakeStore::new(Labels::from_pairs([("replica", "x")]), data()), stop.clone()).await;
    // Nothing listens on this port: the endpoint never answers Info.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let q = start_querier(norn_query::Args {
        endpoints: vec![up.to_string(), dead.to_string()],
        partial_response: false,
        ..Default::default()
    })
    .await;
    let series = format!("/api/v1/series?match[]={}", enc("m"));

    // Endpoint down, partial response off: execution errors (422), as Thanos.
    for path in [series.as_str(), "/api/v1/labels", "/api/v1/label/job/values"] {
        let (code, _, body) = get(q.http, path, None).await;
        assert_eq!(code, 422, "{path}: {body}");
        assert_eq!(json(&body)["errorType"], "execution", "{path}: {body}");
        // On, the same calls answer with a warning.
        let (code, _, body) = get(q.http, &format!("{path}{}partial_response=1", sep(path)), None).await;
        assert_eq!(code, 200, "{path}: {body}");
        assert!(json(&body)["warnings"].as_array().is_some_and(|w| !w.is_empty()), "{path}: {body}");
    }

    // Parameter wording.
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{series}&start=yesterday"),
            r#"invalid parameter "start": Invalid time value for 'start': cannot parse "yesterday" to a valid timestamp"#,
        ),
        (
            "/api/v1/labels?end=x".into(),
            r#"invalid parameter "end": Invalid time value for 'end': cannot parse "x" to a valid timestamp"#,
        ),
        (format!("{series}&dedup=maybe"), r#"'dedup' parameter: strconv.ParseBool: parsing "maybe": invalid syntax"#),
        (
            "/api/v1/query?query=m&partial_response=2".into(),
            r#"'partial_response' parameter: strconv.ParseBool: parsing "2": invalid syntax"#,
        ),
        (
            "/api/v1/labels?limit=ten".into(),
            r#"invalid parameter "limit": strconv.Atoi: parsing "ten": invalid syntax"#,
        ),
        (format!("{series}&limit=-1"), r#"invalid parameter "limit": limit must be non-negative"#),
    ];
    for (path, want) in cases {
        let (code, _, body) = get(q.http, &path, None).await;
        assert_eq!(code, 400, "{path}: {body}");
        let v = json(&body);
        assert_eq!((v["errorType"].as_str(), v["error"].as_str()), (Some("bad_data"), Some(want)), "{path}");
    }

    // `limit`: cut lists carry Prometheus's warning; lists within the limit do not.
    let pr = "&partial_response=1";
    for (path, n, truncated) in [
        (format!("{series}&limit=2{pr}"), 2, true),
        (format!("{series}&limit=3{pr}"), 3, false),
        (format!("/api/v1/label/job/values?limit=1{pr}"), 1, true),
        (format!("/api/v1/labels?limit=0{pr}"), 4, false),
    ] {
        let (code, _, body) = get(q.http, &path, None).await;
        assert_eq!(code, 200, "{path}: {body}");
        let v = json(&body);
        assert_eq!(v["data"].as_array().map(Vec::len), Some(n), "{path}: {body}");
        let warned = v["warnings"].as_array().is_some_and(|w| w.iter().any(|w| w == "results truncated due to limit"));
        assert_eq!(warned, truncated, "{path}: {body}");
    }

    // Stores: the endpoint that never answered Info is left out; lastCheck is a time.
    let (_, _, body) = get(q.http, "/api/v1/stores", None).await;
    let v = json(&body);
    let data = v["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), vec!["receive"], "{body}");
    let rec = &data["receive"][0];
    assert_eq!(rec["name"], up.to_string());
    assert!(rec["lastCheck"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() >= 20), "{body}");
    assert_eq!(rec["lastError"], serde_json::Value::Null);
    assert_eq!(rec["labelSets"], serde_json::json!([{"replica": "x"}]));

    // Federate: no match[] is an empty 200; a bad selector a plain-text 400.
    let (code, ct, body) = get(q.http, "/federate", None).await;
    assert_eq!((code, body.as_str()), (200, ""), "{ct}");
    assert!(ct.starts_with("text/plain"), "{ct}");
    let (code, ct, body) = get(q.http, &format!("/federate?match[]={}", enc("m{")), None).await;
    assert_eq!(code, 400, "{body}");
    assert!(ct.starts_with("text/plain"), "{ct}");
    assert!(body.ends_with('\n') && !body.starts_with('{'), "{body}");

    q.stop.cancel();
    stop.cancel();
}

fn sep(path: &str) -> char {
    if path.contains('?') { '&' } else { '?' }
}
