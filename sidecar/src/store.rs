//! `thanos.Store` and `thanos.info.Info` over the Prometheus beside the sidecar:
//! Series through remote read (label-only requests through `/api/v1/series`), label
//! names and values through the HTTP API, external labels added to every answer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use norn_model::Labels;
use norn_storeapi::external::{check_label_name, request_limit, request_matchers, strip_external, with_external};
use norn_storeapi::thanos::info::{
    ExemplarsInfo, InfoRequest, InfoResponse, MetricMetadataInfo, StoreInfo, TsdbInfo, info_server,
};
use norn_storeapi::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse, SeriesRequest,
    SeriesResponse, series_response, store_server,
};
use norn_storeapi::{labels_to_proto, prometheus};
use norn_tsdb::chunks::ChunkMeta;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use xxhash_rust::xxh64::xxh64;

use crate::metrics::Metrics;
use crate::prom::{PromClient, PromError, ReadMode};

/// What the sidecar knows about its Prometheus, refreshed by the heartbeat.
#[derive(Debug)]
pub struct PromMeta {
    labels: RwLock<Labels>,
    min_time: AtomicI64,
    /// `--min-time`: nothing older is served.
    pub limit_min_time: i64,
}

impl PromMeta {
    /// External labels `labels`, serving from `limit_min_time` on.
    pub fn new(labels: Labels, limit_min_time: i64) -> PromMeta {
        PromMeta { labels: RwLock::new(labels), min_time: AtomicI64::new(limit_min_time), limit_min_time }
    }

    /// The external labels.
    pub fn labels(&self) -> Labels {
        self.labels.read().clone()
    }

    /// Replaces the external labels (Prometheus reloaded its configuration).
    pub fn set_labels(&self, l: Labels) {
        *self.labels.write() = l;
    }

    /// The earliest time served: the oldest data Prometheus has, but not before
    /// `--min-time`.
    pub fn min_time(&self) -> i64 {
        self.min_time.load(Ordering::Acquire)
    }

    /// Records the oldest timestamp Prometheus holds (`None`: unknown, serve everything
    /// from `--min-time`).
    pub fn set_data_min_time(&self, t: Option<i64>) {
        let t = t.unwrap_or(i64::MIN).max(self.limit_min_time);
        self.min_time.store(t, Ordering::Release);
    }
}

/// Moves a request's start up to the first time served. With a query step the start is
/// moved by whole steps (and one more, to land inside), so PromQL evaluation points
/// above still line up, as Thanos does.
pub fn clamp_min_time(req_min: i64, available: i64, step_ms: i64) -> i64 {
    if req_min >= available {
        return req_min;
    }
    if step_ms <= 0 {
        return available;
    }
    let diff = available.saturating_sub(req_min);
    let mut t = req_min.saturating_add((diff / step_ms).saturating_mul(step_ms));
    if t != available {
        t = t.saturating_add(step_ms);
    }
    t
}

fn to_proto(labels: &Labels, chunks: &[ChunkMeta]) -> thanos::Series {
    thanos::Series {
        labels: labels_to_proto(labels),
        chunks: chunks.iter().map(|c| norn_storeapi::chunks::aggr_chunk(c, xxh64(&c.chunk.data, 0))).collect(),
    }
}

/// Puts external labels on every series, sorts by the result and joins series that
/// became equal (their chunks concatenated in time order). Prometheus's own order
/// can change once external labels are inserted, and the StoreAPI stream must be sorted.
pub fn finish_series(mut all: Vec<(Labels, Vec<ChunkMeta>)>, ext: &Labels) -> Vec<(Labels, Vec<ChunkMeta>)> {
    for (l, _) in all.iter_mut() {
        *l = with_external(l, ext);
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(Labels, Vec<ChunkMeta>)> = Vec::with_capacity(all.len());
    for (l, c) in all {
        match out.last_mut() {
            Some((last, cs)) if *last == l => {
                cs.extend(c);
                cs.sort_by_key(|c| c.min_time);
            }
            _ => out.push((l, c)),
        }
    }
    out
}

fn prom_status(e: PromError) -> Status {
    if e.is_unreachable() { Status::unavailable(e.to_string()) } else { Status::internal(e.to_string()) }
}

/// The StoreAPI and Info services.
#[derive(Debug, Clone)]
pub struct SidecarStore {
    pub prom: PromClient,
    pub meta: Arc<PromMeta>,
    pub metrics: Arc<Metrics>,
}

impl SidecarStore {
    fn hints(req: &SeriesRequest, mint: i64) -> Option<prometheus::ReadHints> {
        let h = req.query_hints.as_ref()?;
        Some(prometheus::ReadHints {
            step_ms: h.step_millis,
            func: h.func.as_ref().map(|f| f.name.clone()).unwrap_or_default(),
            start_ms: mint,
            end_ms: req.max_time,
            grouping: h.grouping.as_ref().map(|g| g.labels.clone()).unwrap_or_default(),
            by: h.grouping.as_ref().is_some_and(|g| g.by),
            range_ms: h.range.as_ref().map(|r| r.millis).unwrap_or_default(),
        })
    }

    /// The series of a request, external labels on, sorted; and warnings.
    async fn select(&self, req: &SeriesRequest) -> Result<(Vec<(Labels, Vec<ChunkMeta>)>, Vec<String>), Status> {
        let ms = request_matchers(&req.matchers)?;
        let ext = self.meta.labels();
        let Some(rest) = strip_external(&ext, &ms) else { return Ok((Vec::new(), Vec::new())) };
        if rest.is_empty() {
            return Err(Status::invalid_argument("no matchers specified (excluding external labels)"));
        }
        let step = req.query_hints.as_ref().map(|h| h.step_millis).unwrap_or(0);
        let mint = clamp_min_time(req.min_time, self.meta.min_time(), step);
        if mint > req.max_time {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut warnings = Vec::new();
        let raw: Vec<(Labels, Vec<ChunkMeta>)> = if req.skip_chunks {
            let ls = self.prom.series(&rest, mint, req.max_time).await.map_err(prom_status)?;
            ls.into_iter().map(|l| (l, Vec::new())).collect()
        } else {
            let (got, mode, skipped) =
                self.prom.remote_read(&rest, mint, req.max_time, Self::hints(req, mint)).await.map_err(prom_status)?;
            self.metrics.remote_reads.get_or_create(&vec![("mode".into(), mode_name(mode).into())]).inc();
            if skipped > 0 {
                warnings.push(format!("{skipped} chunks of encodings this sidecar does not know were left out"));
            }
            got.into_iter().map(|s| (s.labels, s.chunks)).collect()
        };
        Ok((finish_series(raw, &ext), warnings))
    }
}

fn mode_name(m: ReadMode) -> &'static str {
    match m {
        ReadMode::Streamed => "streamed",
        ReadMode::Sampled => "sampled",
    }
}

#[tonic::async_trait]
impl store_server::Store for SidecarStore {
    type SeriesStream = ReceiverStream<Result<SeriesResponse, Status>>;

    async fn series(&self, req: Request<SeriesRequest>) -> Result<Response<Self::SeriesStream>, Status> {
        let req = req.into_inner();
        let (all, warnings) = self.select(&req).await?;
        let limit = request_limit(req.limit);
        let batch = req.response_batch_size.max(1) as usize;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for w in warnings {
                if tx.send(Ok(SeriesResponse { result: Some(series_response::Result::Warning(w)) })).await.is_err() {
                    return;
                }
            }
            let mut pending = Vec::with_capacity(batch.min(1024));
            for (labels, chunks) in all.iter().take(limit) {
                pending.push(to_proto(labels, chunks));
                if pending.len() >= batch {
                    let frame = if batch == 1 {
                        series_response::Result::Series(pending.pop().unwrap_or_default())
                    } else {
                        series_response::Result::Batch(thanos::SeriesBatch { series: std::mem::take(&mut pending) })
                    };
                    if tx.send(Ok(SeriesResponse { result: Some(frame) })).await.is_err() {
                        return; // the client went away
                    }
                }
            }
            if !pending.is_empty() {
                let frame = series_response::Result::Batch(thanos::SeriesBatch { series: pending });
                let _ = tx.send(Ok(SeriesResponse { result: Some(frame) })).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn label_names(&self, req: Request<LabelNamesRequest>) -> Result<Response<LabelNamesResponse>, Status> {
        let req = req.into_inner();
        let ms = request_matchers(&req.matchers)?;
        let ext = self.meta.labels();
        let Some(rest) = strip_external(&ext, &ms) else { return Ok(Response::new(LabelNamesResponse::default())) };
        let start = clamp_min_time(req.start, self.meta.min_time(), 0);
        let mut set: BTreeSet<String> = BTreeSet::new();
        if start <= req.end {
            set.extend(self.prom.label_names(&rest, start, req.end).await.map_err(prom_status)?);
        }
        // Prometheus's answer lacks the external labels; every series served carries them.
        if !set.is_empty() {
            set.extend(ext.iter().map(|(n, _)| n.to_string()));
        }
        let mut names: Vec<String> = set.into_iter().collect();
        names.truncate(request_limit(req.limit));
        Ok(Response::new(LabelNamesResponse { names, ..Default::default() }))
    }

    async fn label_values(&self, req: Request<LabelValuesRequest>) -> Result<Response<LabelValuesResponse>, Status> {
        let req = req.into_inner();
        check_label_name(&req.label)?;
        let ms = request_matchers(&req.matchers)?;
        let ext = self.meta.labels();
        let Some(rest) = strip_external(&ext, &ms) else { return Ok(Response::new(LabelValuesResponse::default())) };
        if let Some(v) = ext.get(&req.label) {
            return Ok(Response::new(LabelValuesResponse { values: vec![v.to_string()], ..Default::default() }));
        }
        let start = clamp_min_time(req.start, self.meta.min_time(), 0);
        let mut values = if start <= req.end {
            self.prom.label_values(&req.label, &rest, start, req.end).await.map_err(prom_status)?
        } else {
            Vec::new()
        };
        values.sort();
        values.dedup();
        values.truncate(request_limit(req.limit));
        Ok(Response::new(LabelValuesResponse { values, ..Default::default() }))
    }
}

#[tonic::async_trait]
impl info_server::Info for SidecarStore {
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let ext = thanos::ZLabelSet { labels: labels_to_proto(&self.meta.labels()) };
        let min_time = self.meta.min_time();
        Ok(Response::new(InfoResponse {
            label_sets: vec![ext.clone()],
            component_type: "sidecar".into(),
            exemplars: Some(ExemplarsInfo { min_time: i64::MIN, max_time: i64::MAX }),
            metric_metadata: Some(MetricMetadataInfo {}),
            store: Some(StoreInfo {
                min_time,
                max_time: i64::MAX,
                supports_sharding: false,
                supports_without_replica_labels: false,
                tsdb_infos: vec![TsdbInfo { labels: Some(ext), min_time, max_time: i64::MAX }],
                supports_projections: false,
            }),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use norn_model::Matcher;
    use norn_tsdb::chunkenc::Chunk;

    use super::*;
    use norn_tsdb::chunkenc::Encoding;

    #[test]
    fn min_time_clamping() {
        // (request start, available, step) -> start asked of Prometheus
        for (req, avail, step, want) in [
            (100, 50, 0, 100),
            (0, 1000, 0, 1000),
            (0, 1000, 300, 1200),
            (0, 900, 300, 900),
            (i64::MIN, 1000, 0, 1000),
            (i64::MIN, 0, 15_000, i64::MIN + ((-(i64::MIN + 1)) / 15_000) * 15_000 + 15_000),
        ] {
            assert_eq!(clamp_min_time(req, avail, step), want, "{req} {avail} {step}");
        }
    }

    fn cm(t: i64) -> ChunkMeta {
        ChunkMeta { min_time: t, max_time: t, chunk: Chunk::new(Encoding::Xor, vec![0u8, 0]) }
    }

    #[test]
    fn external_labels_resort_and_join() {
        let ext = Labels::from_pairs([("c", "0")]);
        // Sorted as Prometheus sends them; inserting c="0" reverses the order.
        let input = vec![
            (Labels::from_pairs([("a", "1")]), vec![cm(1)]),
            (Labels::from_pairs([("a", "1"), ("b", "1")]), vec![cm(2)]),
            (Labels::from_pairs([("a", "1"), ("c", "9")]), vec![cm(0)]),
        ];
        let out = finish_series(input, &ext);
        let names: Vec<String> = out.iter().map(|(l, _)| l.to_string()).collect();
        assert_eq!(names, [r#"{a="1", b="1", c="0"}"#, r#"{a="1", c="0"}"#]);
        // {a=1} and {a=1,c=9} both became {a=1,c=0}: one series, chunks in time order.
        assert_eq!(out[1].1.iter().map(|c| c.min_time).collect::<Vec<_>>(), [0, 1]);
    }

    #[tokio::test]
    async fn prometheus_down_is_unavailable() {
        use store_server::Store;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut reg = prometheus_client::registry::Registry::default();
        let store = SidecarStore {
            prom: PromClient::new(&format!("http://127.0.0.1:{port}"), std::time::Duration::from_secs(2)).unwrap(),
            meta: Arc::new(PromMeta::new(Labels::from_pairs([("replica", "a")]), i64::MIN)),
            metrics: Arc::new(Metrics::new(&mut reg)),
        };
        let m = norn_storeapi::matcher_to_proto(&Matcher::equal("__name__", "up"));
        let req = SeriesRequest { matchers: vec![m.clone()], max_time: 10, ..Default::default() };
        assert_eq!(store.series(Request::new(req)).await.unwrap_err().code(), tonic::Code::Unavailable);
        let req = LabelNamesRequest { matchers: vec![m], end: 10, ..Default::default() };
        assert_eq!(store.label_names(Request::new(req)).await.unwrap_err().code(), tonic::Code::Unavailable);
    }

    #[test]
    fn chunk_encodings_on_the_wire() {
        let l = Labels::from_pairs([("__name__", "x")]);
        let mut c = cm(5);
        c.chunk.encoding = Encoding::FloatHistogram;
        let s = to_proto(&l, &[cm(1), c]);
        let raw: Vec<i32> = s.chunks.iter().map(|c| c.raw.as_ref().unwrap().r#type).collect();
        assert_eq!(raw, [0, 2]);
        assert_eq!(s.chunks[0].raw.as_ref().unwrap().hash, xxh64(&[0, 0], 0));
    }
}
