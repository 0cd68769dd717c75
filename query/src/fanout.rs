//! Parallel StoreAPI fan-out and the [`Queryable`] the PromQL engine reads through.

use std::sync::Arc;
use std::time::Instant;

use norn_model::{Labels, Matcher};
use norn_promql::storage::StorageError;
use norn_promql::{Queryable, SelectHints, StoredSeries, StoredValue};
use norn_storeapi::thanos::store_client::StoreClient;
use norn_storeapi::thanos::{self, LabelNamesRequest, LabelValuesRequest, PartialResponseStrategy, SeriesRequest};
use norn_tsdb::chunkenc::XorIterator;
use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::dedup::{
    Limits, MergeError, RawSeries, Source, header_count, is_counter_func, merge_and_dedup_within, merge_raw_within,
    prepare,
};
use crate::endpoints::{EndpointSet, EndpointState};
use crate::seriesview::{MAX_MESSAGE_BYTES, SeriesFrame, SeriesView, WireChunk, decode_response, decode_response_lazy};

/// Per-request settings of a query.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// Deduplicate on `replica_labels`.
    pub dedup: bool,
    /// Replica labels.
    pub replica_labels: Vec<String>,
    /// Endpoint failures become warnings (true) or fail the request (false).
    pub partial_response: bool,
    /// gRPC metadata carrying the tenant (`thanos-tenant`) and its value.
    pub tenant: Option<String>,
    /// Matchers added to every selection (tenancy enforcement).
    pub extra_matchers: Vec<Matcher>,
    /// When the request must be finished.
    pub deadline: Instant,
    /// Most samples one selection may decode across all endpoints (replicas included, as
    /// their chunk headers announce them); 0 means no limit. With the bytes the endpoints
    /// may send for it (16 per sample, at least 64 MiB), bounds the memory a query can take.
    pub max_samples: usize,
    /// Coarsest downsampling resolution (ms) the stores may answer with
    /// (`max_resolution_window`); 0 reads raw data only.
    pub max_source_resolution: i64,
    /// Aggregates asked for when `max_source_resolution` > 0 and no PromQL function
    /// decides them (a querier above passing its request on).
    pub aggregates: Vec<i32>,
}

/// A failure of a fan-out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FanoutError {
    /// An endpoint failed and partial response is off.
    #[error("{0}")]
    Endpoint(String),
    /// The deadline passed.
    #[error("query timed out")]
    Timeout,
    /// The selection would decode more than the sample limit.
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
}

/// Series of one selection, merged and deduplicated, with warnings of failed endpoints.
#[derive(Debug, Default)]
pub struct Selection {
    /// Series in label order.
    pub series: Vec<(Labels, Vec<(i64, StoredValue)>)>,
    /// Endpoint warnings.
    pub warnings: Vec<String>,
}

/// Series of one selection merged by labels with their chunks as received (no decoding,
/// no deduplication), with warnings of failed endpoints.
#[derive(Debug, Default)]
pub struct RawSelection {
    /// Series in label order, chunks sorted by time range.
    pub series: Vec<RawSeries>,
    /// Endpoint warnings.
    pub warnings: Vec<String>,
}

fn status_msg(addr: &str, s: &tonic::Status) -> String {
    format!("receive series from {addr}: rpc error: code = {:?} desc = {}", s.code(), s.message())
}

/// `matchers` with the enforced `extra` ones: a matcher on a label an extra matcher names is
/// replaced by it (Thanos enforces tenancy with prom-label-proxy's enforcer, which replaces).
pub(crate) fn with_extra_matchers(matchers: &[Matcher], extra: &[Matcher]) -> Vec<Matcher> {
    let mut all: Vec<Matcher> = matchers.iter().filter(|m| !extra.iter().any(|x| x.name == m.name)).cloned().collect();
    all.extend(extra.iter().cloned());
    all
}

fn with_tenant<T>(msg: T, tenant: &Option<String>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = tenant
        && let Ok(v) = t.parse()
    {
        req.metadata_mut().insert("thanos-tenant", v);
    }
    req
}

fn client(ep: &EndpointState) -> StoreClient<tonic::transport::Channel> {
    StoreClient::new(ep.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// Decodes one wire chunk (float or native histogram), keeping samples in `[mint, maxt]`.
fn decode_chunk(c: &WireChunk, mint: i64, maxt: i64, out: &mut Vec<(i64, StoredValue)>) -> Result<(), String> {
    let Some(raw) = &c.raw else { return Ok(()) };
    if raw.encoding == thanos::chunk::Encoding::Xor as i32 {
        if c.max_time < mint || c.min_time > maxt {
            return Ok(());
        }
        // Floats straight from the received message's bytes, without copying the chunk.
        let mut it = XorIterator::new(&raw.data).map_err(|e| e.to_string())?;
        while let Some((t, v)) = it.next() {
            if t < mint {
                continue;
            }
            if t > maxt {
                break;
            }
            out.push((t, StoredValue::Float(v)));
        }
        return match it.err() {
            Some(e) => Err(e.to_string()),
            None => Ok(()),
        };
    }
    // Histogram chunks go through storeapi's decoder, which wants the prost form (a copy;
    // the TSDB chunk iterator owns its bytes anyway).
    norn_storeapi::chunks::for_each_sample(&c.to_proto(), mint, maxt, |s| out.push(crate::wire::from_sample(s)))
        .map_err(|e| e.to_string())
}

/// Sorts samples by time and drops repeated timestamps (chunks from one endpoint may
/// overlap, e.g. head and block).
fn normalize(samples: &mut Vec<(i64, StoredValue)>) {
    if samples.windows(2).all(|w| w[0].0 < w[1].0) {
        return;
    }
    samples.sort_by_key(|p| p.0);
    samples.dedup_by_key(|p| p.0);
}

struct SeriesCall {
    req: SeriesRequest,
    /// Samples received so far from the endpoints whose series are read as they arrive
    /// (chunk headers); the merge counts the others' on top.
    decoded: std::sync::atomic::AtomicUsize,
    /// Bytes received so far from all endpoints of this selection.
    received: std::sync::atomic::AtomicUsize,
    tenant: Option<String>,
    replica_labels: Vec<String>,
    limits: Limits,
}

impl SeriesCall {
    /// The limits of the merge: the selection's, with what the fan-out counted.
    fn merge_limits(&self) -> Limits {
        Limits { counted: self.decoded.load(std::sync::atomic::Ordering::Relaxed), ..self.limits }
    }
}

enum FetchError {
    Endpoint(String),
    Limit,
    /// The streamed merge no longer reads this endpoint's series.
    Gone,
}

/// Bytes the endpoints of one selection may send together, for a sample limit of
/// `max_samples` (0: no limit). The series of endpoints left for the merge are counted
/// there, exactly; until then this bounds the memory they hold (and what any endpoint may
/// send in chunks whose headers announce fewer samples than they hold). Generous, so that
/// it refuses no selection the sample count would take: 16 bytes per sample of the limit
/// (what a decoded sample takes; chunks hold about 1-2 bytes per sample, labels
/// included), and at least 64 MiB.
fn byte_budget(max_samples: usize) -> usize {
    if max_samples == 0 { usize::MAX } else { max_samples.saturating_mul(16).max(64 << 20) }
}

impl From<String> for FetchError {
    fn from(s: String) -> Self {
        FetchError::Endpoint(s)
    }
}

/// The replica labels an endpoint is asked to strip stand for, or `None` when it is not
/// asked. An endpoint that can strip the replica labels does (as Thanos asks its stores to):
/// fewer bytes to send and compare. Its series are then told apart by where they came from
/// rather than by their replica labels. Only when its Info label sets agree on the replica
/// labels' values: those values then stand for what it removed, so its series stay one
/// replica with the same labels' series elsewhere (e.g. the store gateway over the blocks
/// this receiver uploaded).
fn identity_of(ep: &EndpointState, replica_labels: &[String]) -> Option<Vec<(String, String)>> {
    ep.status.read().info.as_ref().and_then(|i| {
        if replica_labels.is_empty() || !i.supports_without_replica_labels {
            return None;
        }
        let of = |ls: &Labels| -> Vec<(String, String)> {
            ls.iter()
                .filter(|(n, _)| replica_labels.iter().any(|r| r == n))
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let first = of(i.label_sets.first()?);
        i.label_sets.iter().all(|ls| of(ls) == first).then_some(first)
    })
}

/// Streams one endpoint's answer: its series as received and its warnings; `identity` is
/// what the endpoint is asked to strip ([`identity_of`]). With `sink`
/// (a streamed merge) each batch is handed on as it arrives instead, waiting while the
/// merge has enough. Unless `lazy`, series are prepared for the merge as they arrive
/// ([`prepare`]: parsed, checked, chunks outside the selection's range dropped); lazy ones
/// are left for the merge, which reads only those that are not copies of another endpoint's.
async fn fetch_series(
    ep: Arc<EndpointState>,
    call: Arc<SeriesCall>,
    lazy: bool,
    identity: Option<Vec<(String, String)>>,
    sink: Option<tokio::sync::mpsc::Sender<Delivery>>,
) -> Result<(Source, Vec<String>), FetchError> {
    let stripped = identity.is_some();
    let mut req = call.req.clone();
    if stripped {
        req.without_replica_labels = call.replica_labels.clone();
    }
    // Messages are read straight from the HTTP/2 DATA frames (no decode buffer copy) and
    // decoded without copying: labels and chunk bytes stay slices of the received frames.
    let mut channel = ep.channel.clone();
    let mut stream = crate::seriesview::call_series(&mut channel, &req, call.tenant.as_deref(), MAX_MESSAGE_BYTES)
        .await
        .map_err(|s| status_msg(&ep.addr, &s))?;
    // Batches are kept as they arrived: no copying of every series into one growing list.
    let mut batches: Vec<Vec<SeriesView>> = Vec::new();
    let mut warnings = Vec::new();
    let rl = &call.replica_labels;
    let limits = &call.limits;
    // No label set is built here: series stay views until the merge, which builds one per
    // group of replicas. The limit is checked on the chunk headers' sample counts of the
    // eager endpoint's series as they arrive, before decoding. A lazy endpoint's series are
    // not read here at all: the merge counts them (copies as the series they copy), and
    // meanwhile what endpoints hold is bounded by its bytes.
    // Label-only selections load no samples: the sample limit does not bound them, and
    // neither may its byte budget.
    let budget = if call.req.skip_chunks { usize::MAX } else { byte_budget(limits.max_samples) };
    let handle = |s: &mut SeriesView| -> Result<(), FetchError> {
        if lazy {
            return Ok(());
        }
        let added = prepare(s, rl, limits, &ep.addr)?;
        let total = call.decoded.fetch_add(added, std::sync::atomic::Ordering::Relaxed) + added;
        if limits.max_samples > 0 && total > limits.max_samples {
            return Err(FetchError::Limit);
        }
        Ok(())
    };
    let decode = if lazy { decode_response_lazy } else { decode_response };
    while let Some(buf) = stream.next().await.map_err(|s| status_msg(&ep.addr, &s))? {
        let n = buf.len();
        if call.received.fetch_add(n, std::sync::atomic::Ordering::Relaxed).saturating_add(n) > budget {
            return Err(FetchError::Limit);
        }
        let msg = decode(buf).map_err(|e| status_msg(&ep.addr, &tonic::Status::internal(e.to_string())))?;
        match msg {
            SeriesFrame::Series(mut s) => {
                handle(&mut s)?;
                // A lone series joins the last batch (a series split over several frames
                // stays in pieces: the merge joins them).
                match (&sink, batches.last_mut()) {
                    (Some(tx), _) => tx.send(Delivery::Batch(vec![s])).await.map_err(|_| FetchError::Gone)?,
                    (None, Some(last)) => last.push(s),
                    (None, None) => batches.push(vec![s]),
                }
            }
            SeriesFrame::Batch(mut b) => {
                for s in &mut b {
                    handle(s)?;
                }
                match &sink {
                    Some(tx) => tx.send(Delivery::Batch(b)).await.map_err(|_| FetchError::Gone)?,
                    None => batches.push(b),
                }
            }
            SeriesFrame::Warning(w) => warnings.push(w),
            SeriesFrame::Hints | SeriesFrame::Empty => {}
        }
    }
    let identity = identity.unwrap_or_default();
    Ok((Source { name: ep.addr.clone(), batches, stripped, identity, counted: !lazy }, warnings))
}

/// What an endpoint's streamed answer hands to the merge.
#[derive(Debug)]
pub enum Delivery {
    /// Series as received (a batch, or one series).
    Batch(Vec<SeriesView>),
    /// A warning the endpoint sent.
    Warning(String),
    /// The endpoint's answer ended in this failure.
    Failed(FanoutError),
}

/// Series a streamed merge keeps waiting per endpoint (each batch about 1 MB at most): what
/// an endpoint may hold in the querier beyond its connection's flow-control window.
const STREAM_BATCHES: usize = 2;

/// A selection whose endpoints' answers are still arriving ([`Fanout::select_streamed`]):
/// its sources (without series yet) for [`crate::dedup::merge_streamed`] and the feed that
/// fills them.
#[derive(Debug)]
pub struct StreamedSelection {
    /// One per endpoint asked, in endpoint order.
    pub sources: Vec<Source>,
    /// Where their series come from.
    pub feed: StreamFeed,
    /// The replica labels the merge groups by (none without dedup).
    pub replica_labels: Vec<String>,
    /// The selection's range and sample limit, for the merge to count.
    pub limits: Limits,
}

/// The series of a [`StreamedSelection`]'s endpoints as they arrive. Endpoint failures are
/// warnings with partial response, else they fail the merge; a timeout or the sample limit
/// fails it either way. The endpoints' tasks end when the feed is dropped.
#[derive(Debug)]
pub struct StreamFeed {
    receivers: Vec<Option<tokio::sync::mpsc::Receiver<Delivery>>>,
    partial_response: bool,
    deadline: tokio::time::Instant,
    handle: Handle,
    /// Warnings so far: endpoints that were down, failed or sent warnings.
    pub warnings: Vec<String>,
    _tasks: tokio::task::JoinSet<()>,
}

impl StreamFeed {
    /// The next batch of source `src` appended to its series (true), or false once it has no
    /// more. When nothing has arrived yet `idle` runs first (the merge hands on what it has
    /// made), then this waits, on the runtime the fan-out runs on: call it from a blocking
    /// thread, never from an async task.
    pub fn more(
        &mut self,
        sources: &mut [Source],
        src: usize,
        idle: &mut dyn FnMut() -> Result<(), MergeError>,
    ) -> Result<bool, MergeError> {
        use tokio::sync::mpsc::error::TryRecvError;
        loop {
            let Some(rx) = self.receivers.get_mut(src).and_then(Option::as_mut) else { return Ok(false) };
            let next = match rx.try_recv() {
                Ok(d) => Some(d),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    idle()?;
                    match self.handle.block_on(tokio::time::timeout_at(self.deadline, rx.recv())) {
                        Ok(d) => d,
                        Err(_) => return Err(MergeError::Invalid(FanoutError::Timeout.to_string())),
                    }
                }
            };
            match next {
                Some(Delivery::Batch(b)) => {
                    if let Some(s) = sources.get_mut(src) {
                        s.batches.push(b);
                    }
                    return Ok(true);
                }
                Some(Delivery::Warning(w)) => self.warnings.push(w),
                None => {
                    self.receivers[src] = None;
                    return Ok(false);
                }
                Some(Delivery::Failed(e)) => {
                    self.receivers[src] = None;
                    return match e {
                        FanoutError::Endpoint(m) if self.partial_response => {
                            self.warnings.push(m);
                            Ok(false)
                        }
                        FanoutError::TooManySamples => Err(MergeError::TooManySamples),
                        e => Err(MergeError::Invalid(e.to_string())),
                    };
                }
            }
        }
    }

    /// A series of source `src` did not check out: with partial response the source is left
    /// out from here on (a warning), else the merge fails with `message`.
    pub fn failed(&mut self, src: usize, message: String) -> Result<(), MergeError> {
        if let Some(r) = self.receivers.get_mut(src) {
            // Its task ends at its next send.
            *r = None;
        }
        if !self.partial_response {
            return Err(MergeError::Invalid(message));
        }
        self.warnings.push(message);
        Ok(())
    }
}

/// One endpoint's answer for a streamed merge: batches through `tx` as they arrive (none
/// prepared here: the merge reads and counts them all), then its warnings or its failure.
async fn stream_series(
    ep: Arc<EndpointState>,
    call: Arc<SeriesCall>,
    identity: Option<Vec<(String, String)>>,
    tx: tokio::sync::mpsc::Sender<Delivery>,
    deadline: tokio::time::Instant,
) {
    let fetch = fetch_series(ep, call, true, identity, Some(tx.clone()));
    let last = match tokio::time::timeout_at(deadline, fetch).await {
        Ok(Ok((_, warnings))) => {
            for w in warnings {
                if tx.send(Delivery::Warning(w)).await.is_err() {
                    return;
                }
            }
            return;
        }
        Ok(Err(FetchError::Gone)) => return,
        Ok(Err(FetchError::Endpoint(e))) => FanoutError::Endpoint(e),
        Ok(Err(FetchError::Limit)) => FanoutError::TooManySamples,
        Err(_) => FanoutError::Timeout,
    };
    let _ = tx.send(Delivery::Failed(last)).await;
}

/// A selection's Series call: the endpoints to ask, warnings so far, and the call.
type PreparedCall = (Vec<Arc<EndpointState>>, Vec<String>, Arc<SeriesCall>);

/// Fans requests out to the endpoint set.
#[derive(Debug)]
pub struct Fanout {
    /// The endpoints.
    pub endpoints: Arc<EndpointSet>,
}

impl Fanout {
    fn strategy(opts: &QueryOptions) -> i32 {
        if opts.partial_response { PartialResponseStrategy::Warn as i32 } else { PartialResponseStrategy::Abort as i32 }
    }

    /// Runs `merge` over `sources`. A source whose series do not check out (read in the merge
    /// when it was read lazily) fails the request, or with partial response is left out with
    /// a warning and the merge runs again without it: what happened before when such a series
    /// failed its endpoint's stream. Each retry has one source less.
    fn merge_leaving_out_bad<T>(
        opts: &QueryOptions,
        mut sources: Vec<Source>,
        warnings: &mut Vec<String>,
        mut merge: impl FnMut(&mut [Source]) -> Result<T, MergeError>,
    ) -> Result<T, FanoutError> {
        loop {
            match merge(&mut sources) {
                Ok(v) => return Ok(v),
                Err(MergeError::Source { index, message }) if opts.partial_response && index < sources.len() => {
                    sources.remove(index);
                    warnings.push(message);
                }
                Err(MergeError::TooManySamples) => return Err(FanoutError::TooManySamples),
                Err(e) => return Err(FanoutError::Endpoint(e.to_string())),
            }
        }
    }

    /// Handles failed endpoints per the partial-response setting.
    fn absorb(opts: &QueryOptions, errs: Vec<String>, warnings: &mut Vec<String>) -> Result<(), FanoutError> {
        if errs.is_empty() {
            return Ok(());
        }
        if !opts.partial_response {
            return Err(FanoutError::Endpoint(errs.join("; ")));
        }
        warnings.extend(errs);
        Ok(())
    }

    /// Series matching `matchers` with samples in `[mint, maxt]` (labels only when
    /// `skip_chunks`), from all endpoints that may hold them, merged and deduplicated.
    pub async fn select(
        &self,
        opts: &QueryOptions,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        skip_chunks: bool,
    ) -> Result<Selection, FanoutError> {
        self.select_for(opts, matchers, mint, maxt, skip_chunks, None).await
    }

    /// [`Fanout::select`] for a selection feeding the PromQL function `func`: replicas of
    /// series read by a counter function are deduplicated as counters (see `dedup`).
    pub async fn select_for(
        &self,
        opts: &QueryOptions,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        skip_chunks: bool,
        func: Option<&str>,
    ) -> Result<Selection, FanoutError> {
        // As Thanos's querier: stores (and queriers stacked below) see the function.
        let hints = func.map(|name| thanos::QueryHints {
            func: Some(thanos::Func { name: name.to_string() }),
            ..Default::default()
        });
        // Downsampled data: the aggregates the function reads (Thanos's querier).
        let aggrs = if opts.max_source_resolution > 0 { crate::downsampled::aggrs_from_func(func) } else { vec![] };
        let aggr_nums: Vec<i32> = aggrs.iter().map(|&a| a as i32).collect();
        let (sources, mut warnings, call) =
            self.fetch(opts, matchers, mint, maxt, skip_chunks, hints, aggr_nums).await?;
        let (mint, maxt) = (call.limits.mint, call.limits.maxt);
        let limits = call.merge_limits();
        let decode = |chunks: &[&WireChunk]| -> Result<Vec<(i64, StoredValue)>, String> {
            if !aggrs.is_empty() {
                let mut samples = crate::downsampled::decode_series(chunks, &aggrs, mint, maxt)?;
                normalize(&mut samples);
                return Ok(samples);
            }
            // Chunk headers announce their sample counts: one allocation per series.
            let n = chunks.iter().filter_map(|c| c.raw.as_ref()).map(|r| header_count(&r.data)).sum();
            let mut samples = Vec::with_capacity(n);
            for c in chunks {
                decode_chunk(c, mint, maxt, &mut samples)?;
            }
            normalize(&mut samples);
            Ok(samples)
        };
        let counter = is_counter_func(func);
        let series = Self::merge_leaving_out_bad(opts, sources, &mut warnings, |sources| {
            merge_and_dedup_within(sources, &call.replica_labels, counter, &decode, &limits)
        })?;
        Ok(Selection { series, warnings })
    }

    /// Series matching `matchers` with chunks overlapping `[mint, maxt]` (labels only when
    /// `skip_chunks`), merged by labels with their chunks as the endpoints sent them (see
    /// [`merge_raw`]): what a querier serves to a querier stacked above it. Replicas are
    /// never deduplicated here (`opts.dedup` is ignored); `hints` are passed on as given.
    pub async fn select_raw(
        &self,
        opts: &QueryOptions,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        skip_chunks: bool,
        hints: Option<thanos::QueryHints>,
    ) -> Result<RawSelection, FanoutError> {
        let opts = QueryOptions { dedup: false, ..opts.clone() };
        let aggrs = opts.aggregates.clone();
        let (sources, mut warnings, call) = self.fetch(&opts, matchers, mint, maxt, skip_chunks, hints, aggrs).await?;
        let limits = call.merge_limits();
        let series =
            Self::merge_leaving_out_bad(&opts, sources, &mut warnings, |sources| merge_raw_within(sources, &limits))?;
        Ok(RawSelection { series, warnings })
    }

    /// [`Fanout::select_raw`] for a merge that runs while the endpoints' answers arrive
    /// ([`crate::dedup::merge_streamed`]): the Series calls are started and the selection
    /// returned at once. With `opts.dedup` the endpoints that can are asked to strip the
    /// replica labels, and the merge groups replicas. Must be called within the runtime the
    /// feed later waits on.
    pub fn select_streamed(
        &self,
        opts: &QueryOptions,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        skip_chunks: bool,
        hints: Option<thanos::QueryHints>,
    ) -> Result<StreamedSelection, FanoutError> {
        let aggrs = opts.aggregates.clone();
        let (eps, warnings, call) = self.prepare_call(opts, matchers, mint, maxt, skip_chunks, hints, aggrs)?;
        let deadline = tokio::time::Instant::from_std(opts.deadline);
        let mut tasks = tokio::task::JoinSet::new();
        let mut sources = Vec::with_capacity(eps.len());
        let mut receivers = Vec::with_capacity(eps.len());
        for ep in eps {
            let identity = identity_of(&ep, &call.replica_labels);
            sources.push(Source {
                name: ep.addr.clone(),
                batches: Vec::new(),
                stripped: identity.is_some(),
                identity: identity.clone().unwrap_or_default(),
                counted: false,
            });
            let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BATCHES);
            receivers.push(Some(rx));
            tasks.spawn(stream_series(ep, call.clone(), identity, tx, deadline));
        }
        let feed = StreamFeed {
            receivers,
            partial_response: opts.partial_response,
            deadline,
            handle: Handle::current(),
            warnings,
            _tasks: tasks,
        };
        Ok(StreamedSelection { sources, feed, replica_labels: call.replica_labels.clone(), limits: call.limits })
    }

    /// Asks every endpoint that may hold the selection for its series: their answers in
    /// endpoint order (chunks outside `[mint, maxt]` dropped), the warnings, and the call.
    /// With `opts.max_source_resolution` > 0 stores may answer from downsampled blocks
    /// with `aggregates`.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        opts: &QueryOptions,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        skip_chunks: bool,
        query_hints: Option<thanos::QueryHints>,
        aggregates: Vec<i32>,
    ) -> Result<(Vec<Source>, Vec<String>, Arc<SeriesCall>), FanoutError> {
        let (eps, mut warnings, call) =
            self.prepare_call(opts, matchers, mint, maxt, skip_chunks, query_hints, aggregates)?;
        let mut set = tokio::task::JoinSet::new();
        for (i, ep) in eps.into_iter().enumerate() {
            let call = call.clone();
            // The first endpoint's series are read as they arrive, in parallel with the
            // streams; the others' are left for the merge, which skips the copies among them
            // (replicas: RF=3 reads each series once, plus a comparison per copy).
            let lazy = i > 0;
            let identity = identity_of(&ep, &call.replica_labels);
            set.spawn(async move { fetch_series(ep, call, lazy, identity, None).await.map(|(s, w)| (i, s, w)) });
        }
        // Sources in endpoint order, not in the order they finish: which replica comes first
        // decides ties in dedup, and the answer must not depend on timing.
        let mut sources: Vec<(usize, Source)> = Vec::new();
        let mut errs = Vec::new();
        let deadline = tokio::time::Instant::from_std(opts.deadline);
        loop {
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Err(_) => return Err(FanoutError::Timeout),
                Ok(None) => break,
                Ok(Some(Ok(Ok((i, series, w))))) => {
                    sources.push((i, series));
                    warnings.extend(w);
                }
                Ok(Some(Ok(Err(FetchError::Endpoint(e))))) => errs.push(e),
                Ok(Some(Ok(Err(FetchError::Limit)))) => return Err(FanoutError::TooManySamples),
                Ok(Some(Ok(Err(FetchError::Gone)))) => errs.push("fan-out: series not read".to_string()),
                Ok(Some(Err(e))) => errs.push(format!("fan-out task failed: {e}")),
            }
        }
        Self::absorb(opts, errs, &mut warnings)?;
        sources.sort_unstable_by_key(|(i, _)| *i);
        Ok((sources.into_iter().map(|(_, s)| s).collect(), warnings, call))
    }

    /// The Series call of a selection and the endpoints to ask (endpoints that are down are
    /// warnings, or fail the selection without partial response).
    #[allow(clippy::too_many_arguments)]
    fn prepare_call(
        &self,
        opts: &QueryOptions,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        skip_chunks: bool,
        query_hints: Option<thanos::QueryHints>,
        aggregates: Vec<i32>,
    ) -> Result<PreparedCall, FanoutError> {
        let all_matchers = with_extra_matchers(matchers, &opts.extra_matchers);
        let (eps, down) = self.endpoints.select(&all_matchers, mint, maxt);
        let mut warnings = Vec::new();
        Self::absorb(opts, down, &mut warnings)?;
        let replica_labels = if opts.dedup { opts.replica_labels.clone() } else { vec![] };
        let call = Arc::new(SeriesCall {
            req: SeriesRequest {
                min_time: mint,
                max_time: maxt,
                matchers: all_matchers.iter().map(norn_storeapi::matcher_to_proto).collect(),
                partial_response_disabled: !opts.partial_response,
                partial_response_strategy: Self::strategy(opts),
                skip_chunks,
                // Fewer, larger frames (about 1 MB at 1,024 series): fewer codec calls and
                // wakeups per stream; RF=3 / Prometheus 1.27 -> 1.14 in scripts/bench-query.
                response_batch_size: 1024,
                query_hints,
                max_resolution_window: opts.max_source_resolution,
                aggregates,
                ..Default::default()
            },
            decoded: Default::default(),
            received: Default::default(),
            tenant: opts.tenant.clone(),
            replica_labels,
            limits: Limits { mint, maxt, max_samples: opts.max_samples, counted: 0 },
        });
        Ok((eps, warnings, call))
    }

    /// Label names (or values of `name` when given) across endpoints, sorted and unique.
    pub async fn label_strings(
        &self,
        opts: &QueryOptions,
        name: Option<&str>,
        matcher_sets: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> Result<(Vec<String>, Vec<String>), FanoutError> {
        if let Some(n) = name
            && opts.dedup
            && opts.replica_labels.iter().any(|r| r == n)
        {
            return Ok((vec![], vec![]));
        }
        let sets: Vec<Vec<Matcher>> = if matcher_sets.is_empty() { vec![vec![]] } else { matcher_sets.to_vec() };
        let mut warnings = Vec::new();
        let mut out: std::collections::BTreeSet<String> = Default::default();
        let deadline = tokio::time::Instant::from_std(opts.deadline);
        for ms in sets {
            let all = with_extra_matchers(&ms, &opts.extra_matchers);
            let (eps, down) = self.endpoints.select(&all, start, end);
            Self::absorb(opts, down, &mut warnings)?;
            let proto: Vec<thanos::LabelMatcher> = all.iter().map(norn_storeapi::matcher_to_proto).collect();
            let mut set = tokio::task::JoinSet::new();
            for ep in eps {
                let proto = proto.clone();
                let name = name.map(str::to_string);
                let tenant = opts.tenant.clone();
                let strat = Self::strategy(opts);
                set.spawn(async move {
                    let mut c = client(&ep);
                    match name {
                        Some(label) => {
                            let req = LabelValuesRequest {
                                label,
                                partial_response_strategy: strat,
                                start,
                                end,
                                matchers: proto,
                                ..Default::default()
                            };
                            let r = c.label_values(with_tenant(req, &tenant)).await;
                            r.map(|r| {
                                let r = r.into_inner();
                                (r.values, r.warnings)
                            })
                            .map_err(|s| status_msg(&ep.addr, &s))
                        }
                        None => {
                            let req = LabelNamesRequest {
                                partial_response_strategy: strat,
                                start,
                                end,
                                matchers: proto,
                                ..Default::default()
                            };
                            let r = c.label_names(with_tenant(req, &tenant)).await;
                            r.map(|r| {
                                let r = r.into_inner();
                                (r.names, r.warnings)
                            })
                            .map_err(|s| status_msg(&ep.addr, &s))
                        }
                    }
                });
            }
            let mut errs = Vec::new();
            loop {
                match tokio::time::timeout_at(deadline, set.join_next()).await {
                    Err(_) => return Err(FanoutError::Timeout),
                    Ok(None) => break,
                    Ok(Some(Ok(Ok((vals, w))))) => {
                        out.extend(vals);
                        warnings.extend(w);
                    }
                    Ok(Some(Ok(Err(e)))) => errs.push(e),
                    Ok(Some(Err(e))) => errs.push(format!("fan-out task failed: {e}")),
                }
            }
            Self::absorb(opts, errs, &mut warnings)?;
        }
        if name.is_none() && opts.dedup {
            out.retain(|n| !opts.replica_labels.contains(n));
        }
        out.retain(|v| !v.is_empty());
        Ok((out.into_iter().collect(), warnings))
    }
}

/// A [`Queryable`] over the fan-out for one query. The engine is synchronous and runs
/// on a blocking thread; each selection blocks that thread on the async fan-out.
#[derive(Debug)]
pub struct StoreQueryable {
    fanout: Arc<Fanout>,
    opts: QueryOptions,
    handle: Handle,
    warnings: Mutex<Vec<String>>,
}

impl StoreQueryable {
    /// A queryable for one query; `handle` is the runtime the fan-out runs on.
    pub fn new(fanout: Arc<Fanout>, opts: QueryOptions, handle: Handle) -> Self {
        StoreQueryable { fanout, opts, handle, warnings: Mutex::new(Vec::new()) }
    }

    /// Warnings collected from endpoints so far.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock())
    }
}

impl Queryable for StoreQueryable {
    fn select(&self, matchers: &[Matcher], hints: &SelectHints) -> Result<Vec<Arc<StoredSeries>>, StorageError> {
        let sel = self
            .handle
            .block_on(self.fanout.select_for(
                &self.opts,
                matchers,
                hints.start,
                hints.end,
                false,
                hints.func.as_deref(),
            ))
            .map_err(|e| StorageError(e.to_string()))?;
        self.warnings.lock().extend(sel.warnings);
        Ok(sel
            .series
            .into_iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(labels, samples)| {
                let (ts, values) = samples.into_iter().unzip();
                Arc::new(StoredSeries { labels, ts, values, st: Vec::new() })
            })
            .collect())
    }
}
