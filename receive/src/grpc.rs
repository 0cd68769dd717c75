//! The gRPC services on `--grpc-address`: forwarding (`thanos.WriteableStore`), the
//! StoreAPI (`thanos.Store`) over every tenant's head and local blocks, and
//! `thanos.info.Info`.

use std::collections::BTreeSet;
use std::sync::Arc;

use norn_model::{Labels, Matcher};
use norn_service::Health;
use norn_storeapi::thanos::info::{
    ExemplarsInfo, InfoRequest, InfoResponse, MetricMetadataInfo, StoreInfo, TsdbInfo, info_server,
};
use norn_storeapi::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse, SeriesRequest,
    SeriesResponse, WriteRequest, WriteResponse, series_response, store_server, writeable_store_server,
};
use norn_storeapi::{labels_to_proto, matchers_from_proto};
use norn_tsdb::series::Series;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use xxhash_rust::xxh64::xxh64;

use crate::router::{Batch, Router};
use crate::tenants::{LazySeries, MultiTsdb, TenantDb, group_lazy, load_series, validate_tenant};
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

/// Matchers left for the TSDB after checking those on external labels; `None` when an
/// external label rules the tenant out.
pub(crate) fn tenant_matchers(ext: &Labels, ms: &[Matcher]) -> Option<Vec<Matcher>> {
    let mut rest = Vec::new();
    for m in ms {
        match ext.get(&m.name) {
            Some(v) => {
                if !m.matches(v) {
                    return None;
                }
            }
            None => rest.push(m.clone()),
        }
    }
    Some(rest)
}

/// Series labels with the TSDB's external labels added (external labels win).
pub(crate) fn with_ext(l: &Labels, ext: &Labels) -> Labels {
    if ext.is_empty() {
        return l.clone();
    }
    let mut b = l.to_builder();
    for (n, v) in ext.iter() {
        b.set(n, v);
    }
    b.build()
}

fn to_proto(labels: &Labels, s: &Series, skip_chunks: bool) -> thanos::Series {
    let chunks = if skip_chunks {
        Vec::new()
    } else {
        s.chunks.iter().map(|c| norn_storeapi::chunks::aggr_chunk(c, xxh64(&c.chunk.data, 0))).collect()
    };
    thanos::Series { labels: labels_to_proto(labels), chunks }
}

/// Frames of Series responses buffered between the reader and the gRPC stream.
const SERIES_CHANNEL_FRAMES: usize = 4;

/// `thanos.Store` and `thanos.info.Info` over every tenant.
#[derive(Debug, Clone)]
pub struct StoreService {
    pub tsdb: Arc<MultiTsdb>,
}

fn bad_matchers(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("matchers: {e}"))
}

impl StoreService {
    /// Series of every tenant matching `ms` in `[mint, maxt]`, labels extended with the
    /// tenant's external labels, sorted by those labels.
    fn select(&self, ms: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<(Labels, Series)>, Status> {
        let mut out = Vec::new();
        for db in self.tsdb.all() {
            let Some(rest) = tenant_matchers(&db.ext_labels, ms) else { continue };
            let got =
                db.select(&rest, mint, maxt).map_err(|e| Status::internal(format!("tenant {}: {e}", db.tenant)))?;
            out.extend(got.into_iter().map(|s| (with_ext(&s.labels, &db.ext_labels), s)));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Label sets and chunk locations of every tenant's matching series, with the
    /// tenant's external labels, sorted; chunks are not read yet.
    fn select_lazy(&self, ms: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<LazySeries>, Status> {
        let mut out = Vec::new();
        for db in self.tsdb.all() {
            let Some(rest) = tenant_matchers(&db.ext_labels, ms) else { continue };
            let got = db
                .select_lazy(&rest, mint, maxt)
                .map_err(|e| Status::internal(format!("tenant {}: {e}", db.tenant)))?;
            out.extend(got.into_iter().map(|mut s| {
                s.labels = with_ext(&s.labels, &db.ext_labels);
                s
            }));
        }
        // External labels can change the order of a tenant's series, so sort again.
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(group_lazy(out))
    }

    /// Sends the series of a request in frames of `response_batch_size` series, reading
    /// each series' chunks only when it is its turn; chunks go out as stored.
    fn stream_series(
        &self,
        ms: &[Matcher],
        req: &SeriesRequest,
        tx: &mpsc::Sender<Result<SeriesResponse, Status>>,
    ) -> Result<(), Status> {
        let all = self.select_lazy(ms, req.min_time, req.max_time)?;
        let batch = req.response_batch_size.max(1) as usize;
        let limit = if req.limit > 0 { req.limit as usize } else { usize::MAX };
        let send = |frame| tx.blocking_send(Ok(SeriesResponse { result: Some(frame) })).is_ok();
        let mut pending = Vec::with_capacity(batch.min(1024));
        let mut sent = 0usize;
        for lazy in &all {
            if sent >= limit {
                break;
            }
            let Some(s) = load_series(lazy, req.min_time, req.max_time)
                .map_err(|e| Status::internal(format!("series {}: {e}", lazy.labels)))?
            else {
                continue;
            };
            sent += 1;
            pending.push(to_proto(&lazy.labels, &s, req.skip_chunks));
            if pending.len() >= batch {
                let frame = if batch == 1 {
                    series_response::Result::Series(pending.pop().unwrap_or_default())
                } else {
                    series_response::Result::Batch(thanos::SeriesBatch { series: std::mem::take(&mut pending) })
                };
                if !send(frame) {
                    return Ok(()); // client went away
                }
            }
        }
        if !pending.is_empty() {
            send(series_response::Result::Batch(thanos::SeriesBatch { series: pending }));
        }
        Ok(())
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

#[tonic::async_trait]
impl store_server::Store for StoreService {
    type SeriesStream = ReceiverStream<Result<SeriesResponse, Status>>;

    async fn series(&self, req: Request<SeriesRequest>) -> Result<Response<Self::SeriesStream>, Status> {
        let req = req.into_inner();
        let ms = matchers_from_proto(&req.matchers).map_err(bad_matchers)?;
        let me = self.clone();
        // Bounded: a slow client stops the reader after a few frames instead of the
        // whole response piling up in memory.
        let (tx, rx) = mpsc::channel(SERIES_CHANNEL_FRAMES);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = me.stream_series(&ms, &req, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn label_names(&self, req: Request<LabelNamesRequest>) -> Result<Response<LabelNamesResponse>, Status> {
        let req = req.into_inner();
        let ms = matchers_from_proto(&req.matchers).map_err(bad_matchers)?;
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
        let ms = matchers_from_proto(&req.matchers).map_err(bad_matchers)?;
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
                supports_without_replica_labels: false,
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
        assert_eq!(tenant_matchers(&ext, &[eq("tenant_id", "a"), eq("job", "x")]).unwrap().len(), 1);
        assert!(tenant_matchers(&ext, &[eq("tenant_id", "b")]).is_none());
        let re = Matcher::new(MatchType::Regex, "replica", "r.*").unwrap();
        assert_eq!(tenant_matchers(&ext, &[re]).unwrap().len(), 0);
        let l = with_ext(&Labels::from_pairs([("__name__", "up"), ("replica", "x")]), &ext);
        assert_eq!(l.to_string(), r#"{__name__="up", replica="r0", tenant_id="a"}"#);
    }

    use std::collections::BTreeMap;

    use norn_tsdb::head::HeadOptions;

    use crate::tenants::TsdbSettings;

    /// Two tenants; tenant "a" has blocks and head data for the same series. Label
    /// `b` sorts between a series' own labels and the tenant label, so adding external
    /// labels changes the order of a tenant's series.
    fn store() -> (tempfile::TempDir, StoreService) {
        let dir = tempfile::tempdir().unwrap();
        let settings = TsdbSettings {
            root: dir.path().to_path_buf(),
            head: HeadOptions { chunk_range: 10_000, ..HeadOptions::default() },
            labels: Vec::new(),
            tenant_label: "c".into(),
        };
        let m = Arc::new(MultiTsdb::new(settings));
        for (tenant, n) in [("a", 40), ("b", 5)] {
            let db = m.get_or_open(tenant, &BTreeMap::new()).unwrap();
            let mut app = db.head.appender();
            for i in 0..n {
                app.append(&Labels::from_pairs([("__name__", "m"), ("a", "1")]), i * 1000, i as f64).unwrap();
                app.append(&Labels::from_pairs([("__name__", "m"), ("a", "1"), ("d", "x")]), i * 1000, 1.0).unwrap();
                app.append(&Labels::from_pairs([("__name__", "m"), ("a", &format!("v{i:02}"))]), 0, 1.0).unwrap();
            }
            app.commit().unwrap();
            db.compact().unwrap();
        }
        assert!(!m.get("a").unwrap().blocks().is_empty(), "tenant a should have blocks");
        (dir, StoreService { tsdb: m })
    }

    fn collect(svc: &StoreService, req: SeriesRequest, cap: usize) -> (usize, Vec<thanos::Series>) {
        let ms = matchers_from_proto(&req.matchers).unwrap();
        let (tx, mut rx) = mpsc::channel(cap);
        let svc = svc.clone();
        let h = std::thread::spawn(move || svc.stream_series(&ms, &req, &tx));
        let (mut frames, mut out) = (0, Vec::new());
        while let Some(f) = rx.blocking_recv() {
            frames += 1;
            match f.unwrap().result {
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

    #[test]
    fn series_stream_in_order_in_batches() {
        let (_dir, svc) = store();
        let want = {
            let all = svc.select(&[], 0, i64::MAX).unwrap();
            all.iter().map(|(l, s)| to_proto(l, s, false)).collect::<Vec<_>>()
        };
        assert_eq!(want.len(), 2 + 40 + 2 + 5, "{:?}", names(&want));
        let mut sorted = names(&want);
        sorted.sort_by(|a, b| {
            let pairs = |x: &str| x.split(',').map(str::to_string).collect::<Vec<_>>();
            let (pa, pb) = (pairs(a), pairs(b));
            pa.iter().map(|p| p.split_once('=').unwrap()).cmp(pb.iter().map(|p| p.split_once('=').unwrap()))
        });
        assert_eq!(names(&want), sorted);
        // Head and block chunks of one series come out as one series.
        let a1 = want.iter().find(|s| names(std::slice::from_ref(*s))[0] == "__name__=m,a=1,c=a").unwrap();
        assert!(a1.chunks.len() > 1, "{a1:?}");
        for (batch, cap) in [(1i64, 1usize), (3, 1), (7, 2), (0, 4), (1000, 1)] {
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
        assert_eq!(collect(&svc, req, 1).1.len(), 7);
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
}
