//! An in-process StoreAPI endpoint over fixed float series, for querier tests.

#![allow(dead_code)]

pub mod canonical_json;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use norn_model::{Labels, Matcher};
use norn_storeapi::thanos::info::info_server::{Info, InfoServer};
use norn_storeapi::thanos::info::{InfoRequest, InfoResponse, StoreInfo};
use norn_storeapi::thanos::store_server::{Store, StoreServer};
use norn_storeapi::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse, SeriesRequest,
    SeriesResponse, ZLabelSet, series_response,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Float series: labels and (t, v) samples.
pub type Data = Vec<(Labels, Vec<(i64, f64)>)>;

/// A StoreAPI endpoint serving `data` with external labels `ext` added to every series;
/// chunks are encoded once, up front, so serving costs what a real store's reads cost.
#[derive(Debug, Clone)]
pub struct FakeStore {
    pub ext: Labels,
    pub data: Arc<Data>,
    encoded: Arc<Vec<(Labels, Vec<thanos::AggrChunk>)>>,
    /// Advertises and honours `without_replica_labels` (strips those external labels).
    pub strip: bool,
}

impl FakeStore {
    /// A store over `data` with external labels `ext`.
    pub fn new(ext: Labels, data: Arc<Data>) -> FakeStore {
        let mut encoded: Vec<(Labels, Vec<thanos::AggrChunk>)> = data
            .iter()
            .map(|(l, samples)| {
                let chunks = samples
                    .chunks(120)
                    .map(|part| {
                        let mut c = norn_tsdb::chunkenc::XorChunk::new();
                        for (t, v) in part {
                            c.append(*t, *v);
                        }
                        thanos::AggrChunk {
                            min_time: part[0].0,
                            max_time: part[part.len() - 1].0,
                            raw: Some(thanos::Chunk { r#type: 0, data: c.bytes().to_vec(), hash: 0 }),
                            ..Default::default()
                        }
                    })
                    .collect();
                (with_ext(l, &ext), chunks)
            })
            .collect();
        encoded.sort_by(|a, b| a.0.cmp(&b.0));
        FakeStore { ext, data, encoded: Arc::new(encoded), strip: false }
    }
}

fn with_ext(l: &Labels, ext: &Labels) -> Labels {
    let mut b = l.to_builder();
    for (n, v) in ext.iter() {
        b.set(n, v);
    }
    b.build()
}

impl FakeStore {
    fn matching(&self, ms: &[Matcher], mint: i64, maxt: i64) -> Vec<(Labels, Vec<(i64, f64)>)> {
        let mut out: Vec<(Labels, Vec<(i64, f64)>)> = self
            .data
            .iter()
            .map(|(l, s)| (with_ext(l, &self.ext), s))
            .filter(|(l, _)| ms.iter().all(|m| m.matches(l.get(&m.name).unwrap_or(""))))
            .map(|(l, s)| (l, s.iter().copied().filter(|(t, _)| *t >= mint && *t <= maxt).collect::<Vec<_>>()))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The stream type of the test stores' `Series` answers.
pub type SeriesStream = Pin<Box<dyn Stream<Item = Result<SeriesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Store for FakeStore {
    type SeriesStream = SeriesStream;
    async fn series(&self, req: Request<SeriesRequest>) -> Result<Response<SeriesStream>, Status> {
        let r = req.into_inner();
        let ms =
            norn_storeapi::matchers_from_proto(&r.matchers).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut out = Vec::new();
        for (l, chunks) in self.encoded.iter() {
            if !ms.iter().all(|m| m.matches(l.get(&m.name).unwrap_or(""))) {
                continue;
            }
            let chunks: Vec<thanos::AggrChunk> =
                chunks.iter().filter(|c| c.max_time >= r.min_time && c.min_time <= r.max_time).cloned().collect();
            if chunks.is_empty() {
                continue;
            }
            let chunks = if r.skip_chunks { vec![] } else { chunks };
            let mut labels = norn_storeapi::labels_to_proto(l);
            if self.strip {
                labels.retain(|l| !(r.without_replica_labels.contains(&l.name) && self.ext.get(&l.name).is_some()));
            }
            let s = thanos::Series { labels, chunks };
            out.push(Ok(SeriesResponse { result: Some(series_response::Result::Series(s)) }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }
    async fn label_names(&self, req: Request<LabelNamesRequest>) -> Result<Response<LabelNamesResponse>, Status> {
        let r = req.into_inner();
        let ms =
            norn_storeapi::matchers_from_proto(&r.matchers).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut names: Vec<String> = self
            .matching(&ms, r.start, r.end)
            .iter()
            .flat_map(|(l, _)| l.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>())
            .collect();
        names.sort();
        names.dedup();
        Ok(Response::new(LabelNamesResponse { names, ..Default::default() }))
    }
    async fn label_values(&self, req: Request<LabelValuesRequest>) -> Result<Response<LabelValuesResponse>, Status> {
        let r = req.into_inner();
        let ms =
            norn_storeapi::matchers_from_proto(&r.matchers).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut values: Vec<String> = self
            .matching(&ms, r.start, r.end)
            .iter()
            .filter_map(|(l, _)| l.get(&r.label).map(str::to_string))
            .collect();
        values.sort();
        values.dedup();
        Ok(Response::new(LabelValuesResponse { values, ..Default::default() }))
    }
}

#[tonic::async_trait]
impl Info for FakeStore {
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let mint = self.data.iter().filter_map(|(_, s)| s.first().map(|p| p.0)).min().unwrap_or(i64::MAX);
        Ok(Response::new(InfoResponse {
            label_sets: vec![ZLabelSet { labels: norn_storeapi::labels_to_proto(&self.ext) }],
            component_type: "receive".into(),
            store: Some(StoreInfo {
                min_time: mint,
                max_time: i64::MAX,
                supports_without_replica_labels: self.strip,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

/// Serves `store` (Store and Info) on a loopback port until `stop` is cancelled.
pub async fn serve_store<S: Store + Info + Clone>(store: S, stop: CancellationToken) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(StoreServer::new(store.clone()))
            .add_service(InfoServer::new(store))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(l), stop.cancelled_owned())
            .await
            .unwrap();
    });
    addr
}

/// A running querier.
pub struct Querier {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub stop: CancellationToken,
}

/// Starts a querier on loopback ports.
pub async fn start_querier(mut args: norn_query::Args) -> Querier {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ha, ga) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    args.http_address = ha;
    args.grpc_address = ga;
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { norn_query::run_with_listeners(args, http, grpc, s).await.unwrap() });
    let q = Querier { http: ha, grpc: ga, stop };
    // Ready once the first endpoint refresh is done (bounded: 60 s for a loaded machine).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("http://{ha}/-/ready")).await
            && r.status().is_success()
        {
            return q;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("querier did not become ready");
}

impl Querier {
    /// GET a path, returning status and body.
    pub async fn get(&self, path_and_query: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{}", self.http, path_and_query)).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
    /// POST a form, returning status and body.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let r = reqwest::Client::new()
            .post(format!("http://{}{}", self.http, path))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// URL-encodes a query parameter value.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
