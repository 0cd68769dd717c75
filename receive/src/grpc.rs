//! The gRPC services on `--grpc-address`: forwarding (`thanos.WriteableStore`), the
//! StoreAPI (`thanos.Store`) over every tenant's head and local blocks, and
//! `thanos.info.Info`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use norn_model::{Labels, Matcher};
use norn_service::Health;
use norn_storeapi::external::{strip_external, with_external};
use norn_storeapi::labels_to_proto;
use norn_storeapi::thanos::info::{
    ExemplarsInfo, InfoRequest, InfoResponse, MetricMetadataInfo, StoreInfo, TsdbInfo, info_server,
};
use norn_storeapi::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse, SeriesRequest,
    SeriesResponse, WriteRequest, WriteResponse, store_server, writeable_store_server,
};
use norn_tsdb::series::Series;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::router::{Batch, Router};
pub use crate::series_frames::StoreGrpc;
use crate::series_frames::{ExtLabels, Frame, FrameSource, FrameWriter, SeriesFrames};
use crate::tenants::{LazySeries, MultiTsdb, Source, TenantDb, load_series, validate_tenant};
use crate::write::WriteError;
use norn_storeapi::remote_write::{Limits, validate};

/// `thanos.WriteableStore`: writes forwarded by peers (or sent by Thanos routers).
#[derive(Debug)]
pub struct WriteService {
    pub router: Arc<Router>,
    pub health: Arc<Health>,
    pub limits: Limits,
    pub default_tenant: String,
}

#[tonic::async_trait]
impl writeable_store_server::WriteableStore for WriteService {
    async fn remote_write(&self, req: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        if !self.health.is_ready() {
            return Err(Status::unavailable("receiver is not ready"));
        }
        let req = req.into_inner();
        // Newer Thanos senders use field 4 (several tenants) and leave 1–2 empty.
        let parts: Vec<(String, Vec<norn_storeapi::prometheus_copy::TimeSeries>)> =
            if !req.timeseries_tenant_data.is_empty() {
                req.timeseries_tenant_data.into_iter().map(|t| (t.tenant, t.timeseries)).collect()
            } else {
                vec![(req.tenant, req.timeseries)]
            };
        let mut first_err: Option<WriteError> = None;
        for (tenant, series) in parts {
            let tenant = if tenant.is_empty() { self.default_tenant.clone() } else { tenant };
            let r = async {
                validate_tenant(&tenant).map_err(|e| WriteError::BadRequest(e.to_string()))?;
                let labels = validate(&series, &self.limits)?;
                self.router.write(Batch { tenant, series, labels }, req.replica).await
            }
            .await;
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(Response::new(WriteResponse {})),
            Some(e) => Err(e.to_status()),
        }
    }
}

/// Frames of Series responses buffered between the reader and the gRPC stream.
const SERIES_CHANNEL_FRAMES: usize = 4;

/// When a Series request is answered on the calling task, without a blocking thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InlineLimits {
    /// The selection runs on the calling task only when all heads together hold at most
    /// this many series: at worst (`{__name__=~".+"}`) it scans them all, and an async
    /// worker must not be held for long.
    select_head_series: usize,
    /// Whether the selection may run on the calling task although a local block overlaps
    /// the time range (tests: the answer is the same either way).
    with_blocks: bool,
    /// Frames are made on the calling task for at most this many selected series; a
    /// larger selection goes to a blocking thread.
    encode_series: usize,
}

/// The limits Series requests are served with.
const INLINE: InlineLimits = InlineLimits { select_head_series: 50_000, with_blocks: false, encode_series: 128 };

/// Runs `send` on a blocking thread, its frames and then its error, if any, streamed
/// through a bounded channel: a slow client stops the reader after a few frames instead
/// of the whole response piling up in memory.
fn on_blocking_thread(
    send: impl FnOnce(&mpsc::Sender<Result<Frame, Status>>) -> Result<(), Status> + Send + 'static,
) -> SeriesFrames {
    let (tx, rx) = mpsc::channel(SERIES_CHANNEL_FRAMES);
    tokio::task::spawn_blocking(move || {
        // A panic must not end the stream as if it were complete (the body sends
        // `grpc-status: 0` when the channel closes): it becomes the stream's error.
        let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| send(&tx)))
            .unwrap_or_else(|_| Err(Status::internal("Series: the reader of this request panicked")));
        if let Err(e) = sent {
            let _ = tx.blocking_send(Err(e));
        }
    });
    SeriesFrames::Channel(ReceiverStream::new(rx))
}

/// Makes the frames of `all` (a selection, sorted by the labels sent) for `req`: series
/// in frames of `response_batch_size`, each series' chunks read only when it is its turn,
/// chunks as stored. A head series' chunks are copied into the frame straight from the
/// series, under its lock, when nothing needs merging or filtering. Stops early when
/// `send` returns false or, checked before each series, `cancelled` holds (the client
/// went away). `per_series` is the size of a series in recent frames, to size the next
/// frames' buffers; it is updated from each frame.
/// Most bytes reserved up front for a frame (what the frame buffer pool keeps).
const MAX_FRAME_RESERVE: usize = 4 << 20;
/// Most bytes reserved for one series before its lock is taken.
const MAX_SERIES_RESERVE: usize = 1 << 20;

fn send_frames(
    all: Vec<(Arc<ExtLabels>, LazySeries)>,
    req: &SeriesRequest,
    per_series: &AtomicUsize,
    cancelled: impl Fn() -> bool,
    mut send: impl FnMut(Frame) -> bool,
) -> Result<(), Status> {
    let batch = req.response_batch_size.max(1) as usize;
    let limit = if req.limit > 0 { req.limit as usize } else { usize::MAX };
    let (mint, maxt) = (req.min_time, req.max_time);
    let total = all.len();
    let writer = |sent: usize, at: usize| {
        let left = (total - at).min(limit - sent).min(batch);
        let each = match per_series.load(Ordering::Relaxed) {
            0 => 512,
            n => n + n / 8,
        };
        // The estimate comes from other requests' series (any tenant, chunks or not) and the
        // batch size from the client: reserve no more than a pooled buffer up front and let
        // the frame grow past it.
        FrameWriter::new(batch > 1, left.saturating_mul(each).min(MAX_FRAME_RESERVE))
    };
    let mut w = writer(0, 0);
    let mut sent = 0usize;
    for (at, (ext, lazy)) in all.into_iter().enumerate() {
        if sent >= limit {
            break;
        }
        if cancelled() {
            return Ok(());
        }
        let keep = if req.skip_chunks { 0 } else { usize::MAX };
        // `Some(false)`: the series has no chunk in the range.
        let direct = match lazy.sources.as_slice() {
            [Source::Head(h)] => {
                // Room for a series of the usual size before its lock is taken: growing the
                // frame (megabytes copied, fresh pages) under a series lock would hold up
                // the tenant's commits, which take series locks.
                w.reserve(per_series.load(Ordering::Relaxed).clamp(512, MAX_SERIES_RESERVE));
                h.with_plain_chunks(mint, maxt, |closed, open| {
                    if closed.is_empty() && open.is_none() {
                        return false;
                    }
                    w.push(&lazy.labels, &ext, closed.iter().chain(open).take(keep));
                    true
                })
            }
            _ => None,
        };
        match direct {
            Some(true) => {}
            Some(false) => continue,
            None => {
                let Some(s) = load_series(&lazy, mint, maxt)
                    .map_err(|e| Status::internal(format!("series {}: {e}", lazy.labels)))?
                else {
                    continue;
                };
                w.push(&lazy.labels, &ext, s.chunks.iter().take(keep));
            }
        }
        sent += 1;
        if w.series() >= batch {
            per_series.store(w.series_bytes() / w.series(), Ordering::Relaxed);
            let full = std::mem::replace(&mut w, writer(sent, at + 1));
            if !send(full.finish()) {
                return Ok(()); // client went away
            }
        }
    }
    if w.series() > 0 {
        per_series.store(w.series_bytes() / w.series(), Ordering::Relaxed);
        send(w.finish());
    }
    Ok(())
}

/// `thanos.Store` and `thanos.info.Info` over every tenant.
#[derive(Debug, Clone)]
pub struct StoreService {
    pub tsdb: Arc<MultiTsdb>,
    /// Bytes per series of the last Series frame made, to size the next frames.
    per_series: Arc<AtomicUsize>,
}

impl StoreService {
    /// Serves the tenants of `tsdb`.
    pub fn new(tsdb: Arc<MultiTsdb>) -> Self {
        StoreService { tsdb, per_series: Arc::default() }
    }

    /// Series of every tenant matching `ms` in `[mint, maxt]`, labels extended with the
    /// tenant's external labels, sorted by those labels.
    fn select(&self, ms: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<(Labels, Series)>, Status> {
        let mut out = Vec::new();
        for db in self.tsdb.all() {
            let Some(rest) = strip_external(&db.ext_labels, ms) else { continue };
            let got =
                db.select(&rest, mint, maxt).map_err(|e| Status::internal(format!("tenant {}: {e}", db.tenant)))?;
            out.extend(got.into_iter().map(|s| (with_external(&s.labels, &db.ext_labels), s)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Chunk locations of every tenant's matching series with the labels they are sent
    /// under (the tenant's external labels merged in, `without` labels removed), sorted
    /// by those labels, one entry per label set; chunks are not read yet.
    fn select_lazy(
        &self,
        ms: &[Matcher],
        mint: i64,
        maxt: i64,
        without: &[String],
    ) -> Result<Vec<(Arc<ExtLabels>, LazySeries)>, Status> {
        let mut out = Vec::new();
        let mut tenants = 0;
        let mut noop = true;
        for db in self.tsdb.all() {
            let Some(rest) = strip_external(&db.ext_labels, ms) else { continue };
            let got = db
                .select_lazy(&rest, mint, maxt)
                .map_err(|e| Status::internal(format!("tenant {}: {e}", db.tenant)))?;
            // Names to strip that none of the selected series has cost nothing then.
            let ext = Arc::new(ExtLabels::new(&db.ext_labels, without).for_series(got.iter().map(|s| &s.labels)));
            tenants += 1;
            noop &= ext.is_noop();
            out.extend(got.into_iter().map(|s| (ext.clone(), s)));
        }
        if tenants == 1 && noop {
            return Ok(out); // one tenant's series, sent as stored: already sorted and grouped
        }
        let cmp = |a: &(Arc<ExtLabels>, LazySeries), b: &(Arc<ExtLabels>, LazySeries)| {
            a.0.merged(&a.1.labels).cmp(b.0.merged(&b.1.labels))
        };
        // External labels and stripped labels can change the order of a tenant's series
        // or make two equal, and tenants interleave; in the usual case (one tenant, order
        // kept) one check per series shows there is nothing to do. With one tenant, `out`
        // is sorted by stored labels, one entry per label set, so `keeps_order` applies
        // and spares the merged comparison for series the external labels do not touch.
        let in_order = if tenants == 1 && out.first().is_some_and(|(e, _)| e.untouched()) {
            // No series has a name the external labels override or strip.
            out.windows(2).all(|w| w[0].0.keeps_order(&w[0].1.labels, &w[1].1.labels) || cmp(&w[0], &w[1]).is_lt())
        } else if tenants == 1 {
            let mut touched = out.first().is_some_and(|(e, s)| e.touches(&s.labels));
            out.windows(2).all(|w| {
                let (ext, a, b) = (&w[0].0, &w[0].1.labels, &w[1].1.labels);
                let b_touched = ext.touches(b);
                let sure = !touched && !b_touched && ext.keeps_order(a, b);
                touched = b_touched;
                sure || cmp(&w[0], &w[1]).is_lt()
            })
        } else {
            out.windows(2).all(|w| cmp(&w[0], &w[1]).is_lt())
        };
        if in_order {
            return Ok(out);
        }
        out.sort_by(cmp);
        let mut grouped: Vec<(Arc<ExtLabels>, LazySeries)> = Vec::with_capacity(out.len());
        for (ext, s) in out {
            match grouped.last_mut() {
                Some((le, last)) if le.merged(&last.labels).eq(ext.merged(&s.labels)) => last.sources.extend(s.sources),
                _ => grouped.push((ext, s)),
            }
        }
        Ok(grouped)
    }

    /// Sends the series of a request in frames of `response_batch_size` series, reading
    /// each series' chunks only when it is its turn; chunks go out as stored.
    fn stream_series(
        &self,
        ms: &[Matcher],
        req: &SeriesRequest,
        tx: &mpsc::Sender<Result<Frame, Status>>,
    ) -> Result<(), Status> {
        let all = self.select_lazy(ms, req.min_time, req.max_time, &req.without_replica_labels)?;
        send_frames(all, req, &self.per_series, || tx.is_closed(), |frame| tx.blocking_send(Ok(frame)).is_ok())
    }

    /// Answers a Series request with the default [`InlineLimits`].
    fn start_series(&self, req: SeriesRequest) -> Result<SeriesFrames, Status> {
        self.start_series_with(req, INLINE)
    }

    /// Answers a Series request on the calling task when `inline` allows (see
    /// [`SeriesFrames`]), else on a blocking thread: [`StoreService::stream_series`]
    /// there when even the selection may be costly, or the frames of a selection made
    /// here that turned out large.
    fn start_series_with(&self, req: SeriesRequest, inline: InlineLimits) -> Result<SeriesFrames, Status> {
        let ms = norn_storeapi::external::request_matchers(&req.matchers)?;
        if !self.selects_inline(req.min_time, req.max_time, &inline) {
            let me = self.clone();
            return Ok(on_blocking_thread(move |tx| me.stream_series(&ms, &req, tx)));
        }
        let all = match self.select_lazy(&ms, req.min_time, req.max_time, &req.without_replica_labels) {
            Ok(all) => all,
            Err(e) => return Ok(SeriesFrames::ready(vec![Err(e)])),
        };
        if all.len() > inline.encode_series {
            let per_series = self.per_series.clone();
            return Ok(on_blocking_thread(move |tx| {
                send_frames(all, &req, &per_series, || tx.is_closed(), |f| tx.blocking_send(Ok(f)).is_ok())
            }));
        }
        let mut frames = Vec::new();
        if let Err(e) = send_frames(
            all,
            &req,
            &self.per_series,
            || false,
            |f| {
                frames.push(Ok(f));
                true
            },
        ) {
            frames.push(Err(e));
        }
        Ok(SeriesFrames::ready(frames))
    }

    /// Whether a selection over `[mint, maxt]` may run on the calling task under `inline`:
    /// the heads are small enough for even a full scan to be short, and (unless allowed)
    /// no local block overlaps the range, as block indexes and chunks are read from files.
    fn selects_inline(&self, mint: i64, maxt: i64, inline: &InlineLimits) -> bool {
        // Series counts are kept by each head (no stripe walk), so this costs a load per tenant.
        let head_series = self.tsdb.all().iter().map(|db| db.head.num_series()).fold(0usize, usize::saturating_add);
        if head_series > inline.select_head_series {
            return false;
        }
        inline.with_blocks
            || !self.tsdb.all().iter().any(|db| {
                db.blocks().iter().any(|b| {
                    let m = b.meta();
                    m.max_time > mint && m.min_time <= maxt
                })
            })
    }

    fn tsdb_info(db: &TenantDb) -> Option<TsdbInfo> {
        let min = db.min_time()?;
        Some(TsdbInfo {
            labels: Some(thanos::ZLabelSet { labels: labels_to_proto(&db.ext_labels) }),
            min_time: min,
            max_time: i64::MAX,
        })
    }
}

impl FrameSource for StoreService {
    fn series_frames(&self, req: Request<SeriesRequest>) -> Result<SeriesFrames, Status> {
        self.start_series(req.into_inner())
    }
}

#[tonic::async_trait]
impl store_server::Store for StoreService {
    type SeriesStream = std::pin::Pin<Box<dyn Stream<Item = Result<SeriesResponse, Status>> + Send>>;

    /// The prost form of the stream [`StoreGrpc`] serves with hand-encoded frames.
    async fn series(&self, req: Request<SeriesRequest>) -> Result<Response<Self::SeriesStream>, Status> {
        let frames = self.start_series(req.into_inner())?;
        Ok(Response::new(Box::pin(frames.map(|f| f.and_then(|f| f.to_proto())))))
    }

    async fn label_names(&self, req: Request<LabelNamesRequest>) -> Result<Response<LabelNamesResponse>, Status> {
        let req = req.into_inner();
        let ms = norn_storeapi::external::request_matchers(&req.matchers)?;
        let me = self.clone();
        let names = tokio::task::spawn_blocking(move || -> Result<Vec<String>, Status> {
            let mut set = BTreeSet::new();
            for (l, _) in me.select(&ms, req.start, req.end)? {
                set.extend(l.iter().map(|(n, _)| n.to_string()));
            }
            let mut v: Vec<String> = set.into_iter().collect();
            if req.limit > 0 {
                v.truncate(req.limit as usize);
            }
            Ok(v)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(LabelNamesResponse { names, ..Default::default() }))
    }

    async fn label_values(&self, req: Request<LabelValuesRequest>) -> Result<Response<LabelValuesResponse>, Status> {
        let req = req.into_inner();
        let ms = norn_storeapi::external::request_matchers(&req.matchers)?;
        let me = self.clone();
        let values = tokio::task::spawn_blocking(move || -> Result<Vec<String>, Status> {
            let mut set = BTreeSet::new();
            for (l, _) in me.select(&ms, req.start, req.end)? {
                if let Some(v) = l.get(&req.label) {
                    set.insert(v.to_string());
                }
            }
            let mut v: Vec<String> = set.into_iter().collect();
            if req.limit > 0 {
                v.truncate(req.limit as usize);
            }
            Ok(v)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(LabelValuesResponse { values, ..Default::default() }))
    }
}

#[tonic::async_trait]
impl info_server::Info for StoreService {
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let mut label_sets = Vec::new();
        let mut infos = Vec::new();
        for db in self.tsdb.all() {
            label_sets.push(thanos::ZLabelSet { labels: labels_to_proto(&db.ext_labels) });
            infos.extend(Self::tsdb_info(&db));
        }
        let min_time = infos.iter().map(|i| i.min_time).min().unwrap_or(i64::MAX);
        Ok(Response::new(InfoResponse {
            label_sets,
            component_type: "receive".into(),
            exemplars: Some(ExemplarsInfo { min_time: i64::MIN, max_time: i64::MAX }),
            metric_metadata: Some(MetricMetadataInfo {}),
            store: Some(StoreInfo {
                min_time,
                max_time: i64::MAX,
                supports_sharding: false,
                supports_without_replica_labels: true,
                tsdb_infos: infos,
                supports_projections: false,
            }),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use norn_model::MatchType;

    use super::*;

    #[test]
    fn external_label_matching() {
        let ext = Labels::from_pairs([("tenant_id", "a"), ("replica", "r0")]);
        let eq = |n: &str, v: &str| Matcher::equal(n, v);
        assert_eq!(strip_external(&ext, &[eq("tenant_id", "a"), eq("job", "x")]).unwrap().len(), 1);
        assert!(strip_external(&ext, &[eq("tenant_id", "b")]).is_none());
        let re = Matcher::new(MatchType::Regex, "replica", "r.*").unwrap();
        assert_eq!(strip_external(&ext, &[re]).unwrap().len(), 0);
        let l = with_external(&Labels::from_pairs([("__name__", "up"), ("replica", "x")]), &ext);
        assert_eq!(l.to_string(), r#"{__name__="up", replica="r0", tenant_id="a"}"#);
    }

    use std::collections::BTreeMap;

    use bytes::Bytes;
    use norn_model::Histogram;
    use norn_storeapi::thanos::series_response;
    use norn_tsdb::head::HeadOptions;
    use norn_tsdb::series::merge_series;
    use prost::Message;

    use crate::tenants::TsdbSettings;

    /// Two tenants with external labels `labels` plus the tenant label `tenant_label` (if
    /// any); tenant "a" has blocks and head data for the same series, tenant "b" also a
    /// native histogram series. With tenant label `c`, label `b` sorts between a series'
    /// own labels and the tenant label, so adding external labels changes the order of a
    /// tenant's series.
    fn store_with(labels: &[(&str, &str)], tenant_label: &str) -> (tempfile::TempDir, StoreService) {
        let dir = tempfile::tempdir().unwrap();
        let settings = TsdbSettings {
            root: dir.path().to_path_buf(),
            head: HeadOptions { chunk_range: 10_000, ..HeadOptions::default() },
            labels: labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            tenant_label: tenant_label.into(),
        };
        let m = Arc::new(MultiTsdb::new(settings));
        for (tenant, n) in [("a", 40), ("b", 5)] {
            let db = m.get_or_open(tenant, &BTreeMap::new()).unwrap();
            let mut app = db.head.appender();
            for i in 0..n {
                app.append(&Labels::from_pairs([("__name__", "m"), ("a", "1")]), i * 1000, i as f64).unwrap();
                app.append(&Labels::from_pairs([("__name__", "m"), ("a", "1"), ("d", "x")]), i * 1000, 1.0).unwrap();
                app.append(&Labels::from_pairs([("__name__", "m"), ("a", &format!("v{i:02}"))]), 0, 1.0).unwrap();
                if tenant == "b" {
                    let h = Histogram {
                        count: i as u64,
                        sum: i as f64,
                        schema: 1,
                        positive_spans: vec![norn_model::Span { offset: 0, length: 1 }],
                        positive_buckets: vec![i],
                        ..Default::default()
                    };
                    app.append_histogram(&Labels::from_pairs([("__name__", "h"), ("c", "own")]), i * 1000, &h).unwrap();
                }
            }
            app.commit().unwrap();
            db.compact().unwrap();
        }
        assert!(!m.get("a").unwrap().blocks().is_empty(), "tenant a should have blocks");
        (dir, StoreService::new(m))
    }

    fn store() -> (tempfile::TempDir, StoreService) {
        store_with(&[], "c")
    }

    /// What the prost path sent: the eager select (labels built with `with_external`), the
    /// `without` labels removed, re-sorted and merged by label set, every chunk through
    /// `aggr_chunk` (without hash, as now sent).
    fn reference(svc: &StoreService, req: &SeriesRequest) -> Vec<thanos::Series> {
        let ms = norn_storeapi::matchers_from_proto(&req.matchers).unwrap();
        let all = svc.select(&ms, req.min_time, req.max_time).unwrap();
        let stripped: Vec<Series> = all
            .into_iter()
            .map(|(l, mut s)| {
                let mut b = l.to_builder();
                for w in &req.without_replica_labels {
                    b.del(w);
                }
                s.labels = b.build();
                s
            })
            .collect();
        let merged = merge_series(vec![stripped]);
        let limit = if req.limit > 0 { req.limit as usize } else { usize::MAX };
        merged
            .iter()
            .take(limit)
            .map(|s| thanos::Series {
                labels: labels_to_proto(&s.labels),
                chunks: if req.skip_chunks {
                    Vec::new()
                } else {
                    s.chunks.iter().map(|c| norn_storeapi::chunks::aggr_chunk(c, 0)).collect()
                },
            })
            .collect()
    }

    /// Runs `stream_series`, encoding every frame by hand and decoding it with prost.
    fn collect(svc: &StoreService, req: SeriesRequest, cap: usize) -> (usize, Vec<thanos::Series>) {
        let ms = norn_storeapi::matchers_from_proto(&req.matchers).unwrap();
        let (tx, mut rx) = mpsc::channel(cap);
        let svc = svc.clone();
        let h = std::thread::spawn(move || svc.stream_series(&ms, &req, &tx));
        let (mut frames, mut out) = (0, Vec::new());
        while let Some(f) = rx.blocking_recv() {
            frames += 1;
            let decoded = SeriesResponse::decode(f.unwrap().bytes()).unwrap();
            match decoded.result {
                Some(series_response::Result::Series(s)) => out.push(s),
                Some(series_response::Result::Batch(b)) => out.extend(b.series),
                other => panic!("{other:?}"),
            }
        }
        h.join().unwrap().unwrap();
        (frames, out)
    }

    fn names(got: &[thanos::Series]) -> Vec<String> {
        got.iter()
            .map(|s| s.labels.iter().map(|l| format!("{}={}", l.name, l.value)).collect::<Vec<_>>().join(","))
            .collect()
    }

    fn label_sets(got: &[thanos::Series]) -> Vec<Labels> {
        got.iter().map(|s| Labels::from_pairs(s.labels.iter().map(|l| (&l.name, &l.value)))).collect()
    }

    #[test]
    fn series_stream_in_order_in_batches() {
        let (_dir, svc) = store();
        let req = SeriesRequest { max_time: i64::MAX, ..Default::default() };
        let want = reference(&svc, &req);
        assert_eq!(want.len(), 2 + 40 + 2 + 5 + 1, "{:?}", names(&want));
        let sets = label_sets(&want);
        assert!(sets.windows(2).all(|w| w[0] < w[1]), "{:?}", names(&want));
        // Head and block chunks of one series come out as one series.
        let a1 = want.iter().find(|s| names(std::slice::from_ref(*s))[0] == "__name__=m,a=1,c=a").unwrap();
        assert!(a1.chunks.len() > 1, "{a1:?}");
        for (batch, cap) in [(1i64, 1usize), (3, 1), (7, 2), (0, 4), (64, 1), (1000, 1)] {
            let req = SeriesRequest { max_time: i64::MAX, response_batch_size: batch, ..Default::default() };
            let (frames, got) = collect(&svc, req, cap);
            assert_eq!(got, want, "batch {batch}");
            assert_eq!(frames, want.len().div_ceil(batch.max(1) as usize), "batch {batch}");
        }
        let req = SeriesRequest { max_time: i64::MAX, limit: 5, skip_chunks: true, ..Default::default() };
        let (_, got) = collect(&svc, req, 1);
        assert_eq!(names(&got), names(&want[..5]));
        assert!(got.iter().all(|s| s.chunks.is_empty()));
        let req = SeriesRequest {
            max_time: i64::MAX,
            matchers: vec![thanos::LabelMatcher { r#type: 0, name: "c".into(), value: "b".into() }],
            ..Default::default()
        };
        assert_eq!(collect(&svc, req, 1).1.len(), 8);
    }

    /// Table: external labels sorting before, inside and after series labels, the
    /// histogram series' own `c` overridden by the tenant label, tenants merged when
    /// their labels coincide, `without_replica_labels`, time ranges without data, limits,
    /// skipped chunks and batch sizes 1 and 64: the hand-encoded stream decodes to what
    /// the prost path sent.
    #[test]
    fn series_stream_matches_the_prost_path() {
        let stores: &[(&[(&str, &str)], &str)] = &[
            (&[], ""),
            (&[], "c"),
            (&[("A", "first")], "c"),
            (&[("b", "inside"), ("replica", "r0")], "tenant"),
            (&[("replica", "r0")], "zz"),
            (&[("replica", "r0")], ""),
        ];
        let without: &[&[&str]] = &[&[], &["replica"], &["c"], &["a"], &["replica", "c", "zz", "b"]];
        let ranges = [(0, i64::MAX), (5000, 12_000), (100_000, 200_000)];
        for (labels, tenant_label) in stores {
            let (_dir, svc) = store_with(labels, tenant_label);
            for w in without {
                for (mint, maxt) in ranges {
                    // Also tenant "a" alone (selected by its tenant label): one tenant's
                    // series, where the order check may skip merged comparisons.
                    let one_tenant = [false, true].into_iter().filter(|&one| !one || !tenant_label.is_empty());
                    for (one, (batch, limit, skip_chunks)) in one_tenant
                        .flat_map(|one| [(1, 0, false), (64, 0, false), (64, 3, true), (1, 7, false)].map(|x| (one, x)))
                    {
                        let matchers = if one {
                            vec![thanos::LabelMatcher { r#type: 0, name: tenant_label.to_string(), value: "a".into() }]
                        } else {
                            Vec::new()
                        };
                        let req = SeriesRequest {
                            matchers,
                            min_time: mint,
                            max_time: maxt,
                            without_replica_labels: w.iter().map(|x| x.to_string()).collect(),
                            response_batch_size: batch,
                            limit,
                            skip_chunks,
                            ..Default::default()
                        };
                        let mut want = reference(&svc, &req);
                        let ctx = format!(
                            "ext {labels:?}/{tenant_label} one {one} without {w:?} [{mint},{maxt}] {batch} {limit}"
                        );
                        let (_, mut got) = collect(&svc, req, 4);
                        if !w.is_empty() {
                            // Series merged by stripping labels keep chunks of equal start
                            // time in source order, which differs from the reference's.
                            for s in want.iter_mut().chain(got.iter_mut()) {
                                s.chunks.sort_by(|a, b| {
                                    (a.min_time, a.max_time, a.raw.as_ref().map(|r| &r.data)).cmp(&(
                                        b.min_time,
                                        b.max_time,
                                        b.raw.as_ref().map(|r| &r.data),
                                    ))
                                });
                            }
                        }
                        assert_eq!(names(&got), names(&want), "{ctx}");
                        assert_eq!(got, want, "{ctx}");
                        let sets = label_sets(&got);
                        assert!(sets.windows(2).all(|x| x[0] < x[1]), "{ctx}: not sorted {:?}", names(&got));
                    }
                }
            }
        }
    }

    /// Every frame of a started answer, and whether it was made on the calling task.
    async fn frames_of(svc: &StoreService, req: &SeriesRequest, inline: InlineLimits) -> (bool, Vec<Bytes>) {
        let mut frames = svc.start_series_with(req.clone(), inline).unwrap();
        let ready = matches!(frames, SeriesFrames::Ready(_));
        let mut out = Vec::new();
        while let Some(f) = frames.next().await {
            out.push(f.unwrap().bytes());
        }
        (ready, out)
    }

    /// Inline selection and frames, inline selection with frames on a blocking thread,
    /// and everything on a blocking thread: the same bytes, frame by frame, as the
    /// prost path's messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn series_answers_are_the_same_on_every_path() {
        const ALL: InlineLimits =
            InlineLimits { select_head_series: usize::MAX, with_blocks: true, encode_series: usize::MAX };
        let paths = [
            (ALL, true),
            (InlineLimits { encode_series: 0, ..ALL }, false),
            (InlineLimits { select_head_series: 0, ..ALL }, false),
            (InlineLimits { with_blocks: false, ..ALL }, false), // tenant "a" has blocks
        ];
        let (_dir, svc) = store_with(&[("replica", "r0")], "c");
        let eq = |n: &str, v: &str| thanos::LabelMatcher { r#type: 0, name: n.into(), value: v.into() };
        let requests = [
            SeriesRequest { max_time: i64::MAX, ..Default::default() },
            SeriesRequest { max_time: i64::MAX, response_batch_size: 64, ..Default::default() },
            SeriesRequest {
                max_time: i64::MAX,
                response_batch_size: 3,
                without_replica_labels: vec!["replica".into()],
                matchers: vec![eq("__name__", "m")],
                ..Default::default()
            },
            SeriesRequest { min_time: 5000, max_time: 12_000, limit: 4, skip_chunks: true, ..Default::default() },
            SeriesRequest { max_time: i64::MAX, matchers: vec![eq("c", "b"), eq("a", "1")], ..Default::default() },
            SeriesRequest { max_time: i64::MAX, matchers: vec![eq("c", "nope")], ..Default::default() },
        ];
        for req in &requests {
            let want = {
                let (svc, req) = (svc.clone(), req.clone());
                tokio::task::spawn_blocking(move || reference(&svc, &req)).await.unwrap()
            };
            let ms = norn_storeapi::matchers_from_proto(&req.matchers).unwrap();
            let selected = svc.select_lazy(&ms, req.min_time, req.max_time, &req.without_replica_labels).unwrap();
            let mut first: Option<Vec<Bytes>> = None;
            for (inline, ready) in paths {
                let (was_ready, frames) = frames_of(&svc, req, inline).await;
                // An empty selection is never too large to answer here.
                let ready = ready || (inline.encode_series == 0 && selected.is_empty());
                assert_eq!(was_ready, ready, "{inline:?} {req:?}");
                let mut got = Vec::new();
                for f in &frames {
                    match SeriesResponse::decode(f.clone()).unwrap().result {
                        Some(series_response::Result::Series(s)) => got.push(s),
                        Some(series_response::Result::Batch(b)) => got.extend(b.series),
                        other => panic!("{other:?}"),
                    }
                }
                assert_eq!(got, want, "{inline:?} {req:?}");
                match &first {
                    None => first = Some(frames),
                    Some(f) => assert_eq!(&frames, f, "{inline:?} {req:?}"),
                }
            }
        }
        // A request the server refuses fails before any path is taken.
        let bad = SeriesRequest {
            matchers: vec![thanos::LabelMatcher { r#type: 2, name: "a".into(), value: "(".into() }],
            ..Default::default()
        };
        for (inline, _) in paths {
            let err = svc.start_series_with(bad.clone(), inline).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
    }

    /// Selections run on the calling task only over small heads and, by default, away
    /// from local blocks.
    #[test]
    fn inline_selection_limits() {
        let (_dir, svc) = store(); // 2×40 + 2×5 + 5 head series; tenant "a" has blocks up to ~30s
        let heads: usize = svc.tsdb.all().iter().map(|db| db.head.num_series()).sum();
        let limits =
            |select_head_series, with_blocks| InlineLimits { select_head_series, with_blocks, encode_series: 1 };
        let cases = [
            (limits(usize::MAX, true), (0, i64::MAX), true),
            (limits(heads, true), (0, i64::MAX), true),
            (limits(heads - 1, true), (0, i64::MAX), false),
            (limits(usize::MAX, false), (0, i64::MAX), false),
            (limits(usize::MAX, false), (1_000_000, 2_000_000), true),
            (INLINE, (1_000_000, 2_000_000), true),
            (INLINE, (0, 1000), false),
        ];
        for (inline, (mint, maxt), want) in cases {
            assert_eq!(svc.selects_inline(mint, maxt, &inline), want, "{inline:?} [{mint}, {maxt}]");
        }
    }

    #[test]
    fn series_stream_stops_when_the_client_goes_away() {
        let (_dir, svc) = store();
        let (tx, mut rx) = mpsc::channel(1);
        let req = SeriesRequest { max_time: i64::MAX, response_batch_size: 1, ..Default::default() };
        let h = std::thread::spawn(move || svc.stream_series(&[], &req, &tx));
        assert!(rx.blocking_recv().is_some());
        drop(rx);
        assert!(h.join().unwrap().is_ok());
    }

    /// A cancelled request stops its reader before the next series, not at the next frame.
    #[test]
    fn send_frames_checks_cancellation_per_series() {
        let (_dir, svc) = store();
        let req = SeriesRequest { max_time: i64::MAX, response_batch_size: 64, ..Default::default() };
        let all = svc.select_lazy(&[], req.min_time, req.max_time, &[]).unwrap();
        assert!(all.len() > 3, "{}", all.len());
        for cancel_at in [1, 3] {
            let checks = std::cell::Cell::new(0);
            let mut frames = 0;
            let cancelled = || {
                checks.set(checks.get() + 1);
                checks.get() >= cancel_at
            };
            send_frames(all.clone(), &req, &AtomicUsize::new(0), cancelled, |_| {
                frames += 1;
                true
            })
            .unwrap();
            assert_eq!((checks.get(), frames), (cancel_at, 0), "cancelled at check {cancel_at}");
        }
        // Not cancelled: one frame of every series.
        let got = all_frames(all.clone(), &req, 0);
        assert_eq!(got.len(), 1);
    }

    /// Every frame `send_frames` makes of `all`, not cancelled, starting from a size estimate
    /// of `per_series`.
    fn all_frames(all: Vec<(Arc<ExtLabels>, LazySeries)>, req: &SeriesRequest, per_series: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        send_frames(
            all,
            req,
            &AtomicUsize::new(per_series),
            || false,
            |f| {
                frames.push(f);
                true
            },
        )
        .unwrap();
        frames
    }

    /// A client's huge batch size and a huge size estimate left by earlier answers reserve
    /// no more than a pooled buffer's worth up front (an allocation of their product would
    /// abort the process), and the frames still carry every series.
    #[test]
    fn frame_reservations_are_bounded() {
        let (_dir, svc) = store();
        let req = SeriesRequest { max_time: i64::MAX, response_batch_size: i64::MAX, ..Default::default() };
        let all = svc.select_lazy(&[], req.min_time, req.max_time, &[]).unwrap();
        let want = all_frames(all.clone(), &req, 0);
        let got = all_frames(all, &req, usize::MAX / 4);
        assert_eq!(got, want);
        assert_eq!(got.len(), 1);
    }

    /// Over a real gRPC connection: `Series` answered by the hand-encoded codec equals
    /// the prost path, the other Store methods still reach the generated server, and Info
    /// advertises `without_replica_labels`.
    #[tokio::test]
    async fn store_grpc_serves_series_and_the_other_methods() {
        use norn_storeapi::thanos::info::info_client::InfoClient;
        use norn_storeapi::thanos::info::info_server::InfoServer;
        use norn_storeapi::thanos::store_client::StoreClient;

        let (_dir, svc) = store_with(&[("replica", "r0")], "c");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(StoreGrpc::new(svc.clone()))
                .add_service(InfoServer::new(svc.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut client = StoreClient::new(ch.clone());
        for (batch, without) in [(1, vec![]), (64, vec!["replica".to_string()])] {
            let req = SeriesRequest {
                max_time: i64::MAX,
                response_batch_size: batch,
                without_replica_labels: without,
                ..Default::default()
            };
            let want = {
                let (svc, req) = (svc.clone(), req.clone());
                tokio::task::spawn_blocking(move || reference(&svc, &req)).await.unwrap()
            };
            let mut stream = client.series(req).await.unwrap().into_inner();
            let mut got = Vec::new();
            while let Some(r) = stream.message().await.unwrap() {
                match r.result {
                    Some(series_response::Result::Series(s)) => got.push(s),
                    Some(series_response::Result::Batch(b)) => got.extend(b.series),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, want, "batch {batch}");
        }
        let bad = SeriesRequest {
            matchers: vec![thanos::LabelMatcher { r#type: 2, name: "a".into(), value: "(".into() }],
            ..Default::default()
        };
        let err = client.series(bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        let names = client.label_names(LabelNamesRequest { end: i64::MAX, ..Default::default() }).await.unwrap();
        assert_eq!(names.into_inner().names, ["__name__", "a", "c", "d", "replica"]);
        let info = InfoClient::new(ch).info(InfoRequest {}).await.unwrap().into_inner();
        assert!(info.store.unwrap().supports_without_replica_labels);
        server.abort();
    }

    /// A Series request in an encoding the server does not take is refused as
    /// UNIMPLEMENTED with the encodings it takes (gRPC spec: `grpc-accept-encoding`).
    #[tokio::test]
    async fn series_with_an_unknown_encoding_lists_the_accepted_ones() {
        let (_dir, svc) = store();
        let mut grpc = StoreGrpc::new(svc);
        for (enc, refused) in [("gzip", true), ("identity", false)] {
            let mut body = vec![0u8, 0, 0, 0, 0];
            body.extend_from_slice(&SeriesRequest::default().encode_to_vec());
            let req = http::Request::builder()
                .uri("/thanos.Store/Series")
                .header("content-type", "application/grpc")
                .header("grpc-encoding", enc)
                .body(tonic::body::Body::new(http_body_util::Full::new(Bytes::from(body))))
                .unwrap();
            let resp = tower::Service::call(&mut grpc, req).await.unwrap();
            let status = resp.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string());
            let accept = resp.headers().get("grpc-accept-encoding").map(|v| v.to_str().unwrap().to_string());
            if refused {
                assert_eq!(status.as_deref(), Some("12"), "{enc}");
                assert_eq!(accept.as_deref(), Some("snappy,identity"), "{enc}");
            } else {
                assert_eq!(status, None, "{enc}: not a trailers-only answer");
                assert_eq!(accept, None, "{enc}");
            }
        }
    }
}
