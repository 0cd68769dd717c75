//! The querier's own StoreAPI and Info services, so queriers can be stacked: series are
//! fanned out to the endpoint set and merged by labels with their chunks passed through
//! undecoded, without replica deduplication (the querier above deduplicates, as with
//! Thanos's proxy store).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use norn_model::Labels;
use norn_storeapi::thanos::info::info_server::Info;
use norn_storeapi::thanos::info::{InfoRequest, InfoResponse, StoreInfo};
use norn_storeapi::thanos::store_server::Store;
use norn_storeapi::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse, PartialResponseStrategy,
    SeriesRequest, SeriesResponse, ZLabelSet, series_response,
};
use tonic::{Request, Response, Status};

use crate::dedup::RawSeries;
use crate::fanout::{Fanout, FanoutError, QueryOptions};
use crate::seriesview::WireChunk;

/// StoreAPI + Info over the fan-out.
#[derive(Debug, Clone)]
pub struct QuerierStore {
    /// The fan-out.
    pub fanout: Arc<Fanout>,
    /// Longest a request may run.
    pub timeout: Duration,
}

fn tenant_of<T>(r: &Request<T>) -> Option<String> {
    r.metadata().get("thanos-tenant").and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn status(e: FanoutError) -> Status {
    match e {
        FanoutError::Timeout => Status::deadline_exceeded("query timed out"),
        FanoutError::Endpoint(m) => Status::unavailable(m),
        FanoutError::TooManySamples => Status::resource_exhausted(FanoutError::TooManySamples.to_string()),
    }
}

impl QuerierStore {
    fn opts(&self, strategy: i32, disabled: bool, tenant: Option<String>) -> QueryOptions {
        QueryOptions {
            dedup: false,
            replica_labels: vec![],
            partial_response: !disabled && strategy != PartialResponseStrategy::Abort as i32,
            tenant,
            extra_matchers: vec![],
            deadline: Instant::now() + self.timeout,
            max_samples: 0,
            max_source_resolution: 0,
            aggregates: vec![],
        }
    }
}

/// A merged series in its prost form: chunk bytes, encodings and hashes as the endpoints
/// sent them (integer histogram chunks stay integer histogram chunks).
fn series_msg((labels, chunks): RawSeries) -> thanos::Series {
    thanos::Series {
        labels: norn_storeapi::labels_to_proto(&labels),
        chunks: chunks.iter().map(WireChunk::to_proto).collect(),
    }
}

/// Most series put in one `SeriesBatch` frame, whatever the client asks (a frame must stay
/// under the client's message size limit).
const MAX_BATCH: usize = 1024;

type SeriesStream = Pin<Box<dyn Stream<Item = Result<SeriesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Store for QuerierStore {
    type SeriesStream = SeriesStream;

    async fn series(&self, req: Request<SeriesRequest>) -> Result<Response<SeriesStream>, Status> {
        let tenant = tenant_of(&req);
        let r = req.into_inner();
        let matchers =
            norn_storeapi::matchers_from_proto(&r.matchers).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut opts = self.opts(r.partial_response_strategy, r.partial_response_disabled, tenant);
        // A querier above asking for downsampled data gets it from the stores below.
        opts.max_source_resolution = r.max_resolution_window;
        opts.aggregates = r.aggregates.clone();
        // Passed on whole: a querier above us sends the PromQL function, which stores below
        // may use (Thanos's proxy store does the same).
        let sel = self
            .fanout
            .select_raw(&opts, &matchers, r.min_time, r.max_time, r.skip_chunks, r.query_hints)
            .await
            .map_err(status)?;
        let warnings =
            sel.warnings.into_iter().map(|w| Ok(SeriesResponse { result: Some(series_response::Result::Warning(w)) }));
        let skip_chunks = r.skip_chunks;
        // Frames are put in their prost form only when the stream is polled: the answer is
        // not held twice. A client asking for batches (as receive does, and our fan-out
        // asks) gets `SeriesBatch` frames: fewer frames to decode above.
        let batch = usize::try_from(r.response_batch_size).unwrap_or(0).clamp(1, MAX_BATCH);
        let mut series = sel.series.into_iter().filter(move |(_, chunks)| skip_chunks || !chunks.is_empty());
        let series = std::iter::from_fn(move || {
            let first = series.next()?;
            let result = if batch == 1 {
                series_response::Result::Series(series_msg(first))
            } else {
                let mut list = Vec::with_capacity(batch.min(64));
                list.push(series_msg(first));
                while list.len() < batch
                    && let Some(s) = series.next()
                {
                    list.push(series_msg(s));
                }
                series_response::Result::Batch(thanos::SeriesBatch { series: list })
            };
            Some(Ok(SeriesResponse { result: Some(result) }))
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(warnings.chain(series)))))
    }

    async fn label_names(&self, req: Request<LabelNamesRequest>) -> Result<Response<LabelNamesResponse>, Status> {
        let tenant = tenant_of(&req);
        let r = req.into_inner();
        let ms =
            norn_storeapi::matchers_from_proto(&r.matchers).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let opts = self.opts(r.partial_response_strategy, r.partial_response_disabled, tenant);
        let sets = if ms.is_empty() { vec![] } else { vec![ms] };
        let (names, warnings) = self.fanout.label_strings(&opts, None, &sets, r.start, r.end).await.map_err(status)?;
        Ok(Response::new(LabelNamesResponse { names, warnings, hints: None }))
    }

    async fn label_values(&self, req: Request<LabelValuesRequest>) -> Result<Response<LabelValuesResponse>, Status> {
        let tenant = tenant_of(&req);
        let r = req.into_inner();
        let ms =
            norn_storeapi::matchers_from_proto(&r.matchers).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let opts = self.opts(r.partial_response_strategy, r.partial_response_disabled, tenant);
        let sets = if ms.is_empty() { vec![] } else { vec![ms] };
        let (values, warnings) =
            self.fanout.label_strings(&opts, Some(&r.label), &sets, r.start, r.end).await.map_err(status)?;
        Ok(Response::new(LabelValuesResponse { values, warnings, hints: None }))
    }
}

#[tonic::async_trait]
impl Info for QuerierStore {
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let mut sets: std::collections::BTreeSet<Labels> = Default::default();
        let (mut mint, mut maxt) = (i64::MAX, i64::MIN);
        for ep in self.fanout.endpoints.all() {
            let st = ep.status.read();
            if let (Some(info), None) = (&st.info, &st.last_error) {
                sets.extend(info.label_sets.iter().cloned());
                mint = mint.min(info.min_time);
                maxt = maxt.max(info.max_time);
            }
        }
        if mint > maxt {
            // No healthy endpoint: advertise an empty range so upper queriers skip us.
            (mint, maxt) = (i64::MAX, i64::MIN);
        }
        Ok(Response::new(InfoResponse {
            label_sets: sets.iter().map(|l| ZLabelSet { labels: norn_storeapi::labels_to_proto(l) }).collect(),
            component_type: "query".into(),
            store: Some(StoreInfo { min_time: mint, max_time: maxt, ..Default::default() }),
            exemplars: Some(norn_storeapi::thanos::info::ExemplarsInfo { min_time: i64::MIN, max_time: i64::MAX }),
            metric_metadata: Some(norn_storeapi::thanos::info::MetricMetadataInfo {}),
            ..Default::default()
        }))
    }
}
