//! `thanos.Store` and `thanos.info.Info` over the served blocks.
//!
//! Series: blocks are chosen by time range and external-label matchers; each block's
//! local index yields the matching series and their chunk references (labels with the
//! block's external labels on). Series with equal labels from several blocks become one,
//! their chunks in time order. Chunk bytes are then read from the bucket a batch of
//! series at a time, as the frames are built, and sent through a bounded channel, so
//! memory holds one batch of chunks however large the answer.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use norn_model::{Labels, Matcher};
use norn_storeapi::external::{check_label_name, request_limit, request_matchers, strip_external, with_external};
use norn_storeapi::labels_to_proto;
use norn_storeapi::thanos::info::{InfoRequest, InfoResponse, StoreInfo, TsdbInfo, info_server};
use norn_storeapi::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse, SeriesRequest,
    SeriesResponse, series_response, store_server,
};
use norn_tsdb::chunks::{ChunkMeta, ChunkRef};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use ulid::Ulid;
use xxhash_rust::xxh64::xxh64;

use crate::fetch::ChunkFetcher;
use crate::sync::{BlockSet, StoreBlock};

/// Chunks whose bytes are fetched together (one batch of series' worth of ranged reads).
const FETCH_BATCH_CHUNKS: usize = 4096;
/// Most series per fetch batch, whatever their chunk counts.
const FETCH_BATCH_SERIES: usize = 1024;

/// One series of an answer: its labels and, per block holding it, the chunk references
/// inside the requested range.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    pub labels: Labels,
    pub parts: Vec<(usize, Vec<ChunkRef>)>,
}

/// Series IDs of `matchers` in a block (all series when every matcher was on an
/// external label).
fn postings(b: &StoreBlock, rest: &[Matcher]) -> norn_tsdb::Result<Vec<u32>> {
    if rest.is_empty() { b.index.all_postings() } else { b.index.postings_for_matchers(rest) }
}

/// The series of `blocks` matching `ms` with chunks in `[mint, maxt]`, external labels
/// on, sorted by labels, equal label sets joined. Runs on a blocking thread.
pub fn select(blocks: &[Arc<StoreBlock>], ms: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Selected>, Status> {
    let mut all: Vec<(Labels, usize, Vec<ChunkRef>)> = Vec::new();
    let mut refs = Vec::new();
    for (bi, b) in blocks.iter().enumerate() {
        if !b.overlaps(mint, maxt) {
            continue;
        }
        let Some(rest) = strip_external(&b.ext, ms) else { continue };
        let ids = postings(b, &rest).map_err(|e| block_err(b, e))?;
        for id in ids {
            let l = b.index.series_into(id, &mut refs).map_err(|e| block_err(b, e))?;
            refs.retain(|c| c.min_time <= maxt && c.max_time >= mint);
            if refs.is_empty() {
                continue;
            }
            all.push((with_external(&l, &b.ext), bi, std::mem::take(&mut refs)));
        }
    }
    // Stable: equal labels keep block order (by min time), so joined chunks stay sorted
    // in the common case of non-overlapping blocks.
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<Selected> = Vec::new();
    for (l, bi, r) in all {
        match out.last_mut() {
            Some(s) if s.labels == l => s.parts.push((bi, r)),
            _ => out.push(Selected { labels: l, parts: vec![(bi, r)] }),
        }
    }
    Ok(out)
}

fn block_err(b: &StoreBlock, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("block {}: {e}", b.id))
}

/// IDs of blocks another component serves from its own disk right now; the gateway
/// leaves them out (`norn standalone`: its receiver's blocks until retention removes them).
#[derive(Clone)]
pub struct ServedElsewhere(pub Arc<dyn Fn() -> HashSet<Ulid> + Send + Sync>);

impl std::fmt::Debug for ServedElsewhere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServedElsewhere(..)")
    }
}

/// The StoreAPI and Info services of the gateway.
#[derive(Debug, Clone)]
pub struct BucketStore {
    pub set: Arc<BlockSet>,
    pub fetcher: ChunkFetcher,
    /// `--min-time` / `--max-time`: nothing outside is served.
    pub min_time: i64,
    pub max_time: i64,
    /// Blocks to leave out at the time of each request.
    pub served_elsewhere: Option<ServedElsewhere>,
}

impl BucketStore {
    /// The blocks to answer from now: the synced set less those served elsewhere.
    pub fn blocks(&self) -> Arc<Vec<Arc<StoreBlock>>> {
        let all = self.set.snapshot();
        let Some(ServedElsewhere(f)) = &self.served_elsewhere else { return all };
        let skip = f();
        if !all.iter().any(|b| skip.contains(&b.id)) {
            return all;
        }
        Arc::new(all.iter().filter(|b| !skip.contains(&b.id)).cloned().collect())
    }

    fn clamp(&self, mint: i64, maxt: i64) -> (i64, i64) {
        (mint.max(self.min_time), maxt.min(self.max_time))
    }

    /// Sends one batch of series (chunks fetched) into `tx` in frames of `batch`.
    /// Returns false when the client went away.
    async fn send_batch(
        &self,
        blocks: &[Arc<StoreBlock>],
        series: &[Selected],
        skip_chunks: bool,
        batch: usize,
        tx: &mpsc::Sender<Result<SeriesResponse, Status>>,
    ) -> Result<bool, Status> {
        let chunks = if skip_chunks {
            Default::default()
        } else {
            let wants: Vec<(usize, u64)> = series
                .iter()
                .flat_map(|s| s.parts.iter().flat_map(|(b, rs)| rs.iter().map(|r| (*b, r.chunk_ref))))
                .collect();
            self.fetcher.fetch(blocks, &wants).await.map_err(|e| Status::internal(e.to_string()))?
        };
        let mut pending: Vec<thanos::Series> = Vec::with_capacity(batch.min(series.len()));
        for s in series {
            let mut cs: Vec<thanos::AggrChunk> = Vec::new();
            if !skip_chunks {
                let mut metas: Vec<ChunkMeta> = Vec::new();
                for (b, rs) in &s.parts {
                    for r in rs {
                        let Some(c) = chunks.get(&(*b, r.chunk_ref)) else {
                            return Err(Status::internal(format!(
                                "block {}: chunk {:#x} not fetched",
                                blocks[*b].id, r.chunk_ref
                            )));
                        };
                        metas.push(ChunkMeta { min_time: r.min_time, max_time: r.max_time, chunk: c.clone() });
                    }
                }
                if s.parts.len() > 1 {
                    metas.sort_by_key(|m| (m.min_time, m.max_time));
                }
                cs = metas.iter().map(|m| norn_storeapi::chunks::aggr_chunk(m, xxh64(&m.chunk.data, 0))).collect();
            }
            pending.push(thanos::Series { labels: labels_to_proto(&s.labels), chunks: cs });
            if pending.len() >= batch && !send_frame(tx, &mut pending, batch).await {
                return Ok(false);
            }
        }
        Ok(pending.is_empty() || send_frame(tx, &mut pending, batch).await)
    }
}

/// Sends `pending` as one frame (a lone series when the batch size is 1).
async fn send_frame(
    tx: &mpsc::Sender<Result<SeriesResponse, Status>>,
    pending: &mut Vec<thanos::Series>,
    batch: usize,
) -> bool {
    let frame = if batch == 1 && pending.len() == 1 {
        series_response::Result::Series(pending.pop().unwrap_or_default())
    } else {
        series_response::Result::Batch(thanos::SeriesBatch { series: std::mem::take(pending) })
    };
    tx.send(Ok(SeriesResponse { result: Some(frame) })).await.is_ok()
}

/// Splits `series` into fetch batches of bounded chunk count.
fn fetch_batches(series: &[Selected]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut chunks) = (0, 0);
    for (i, s) in series.iter().enumerate() {
        chunks += s.parts.iter().map(|p| p.1.len()).sum::<usize>();
        if chunks >= FETCH_BATCH_CHUNKS || i + 1 - start >= FETCH_BATCH_SERIES {
            out.push(start..i + 1);
            start = i + 1;
            chunks = 0;
        }
    }
    if start < series.len() {
        out.push(start..series.len());
    }
    out
}

#[tonic::async_trait]
impl store_server::Store for BucketStore {
    type SeriesStream = ReceiverStream<Result<SeriesResponse, Status>>;

    async fn series(&self, req: Request<SeriesRequest>) -> Result<Response<Self::SeriesStream>, Status> {
        let req = req.into_inner();
        self.fetcher.metrics.series_requests.inc();
        let ms = request_matchers(&req.matchers)?;
        let (mint, maxt) = self.clamp(req.min_time, req.max_time);
        let blocks = self.blocks();
        let selected = if mint > maxt {
            Vec::new()
        } else {
            let bs = blocks.clone();
            tokio::task::spawn_blocking(move || select(&bs, &ms, mint, maxt))
                .await
                .map_err(|e| Status::internal(format!("series selection task: {e}")))??
        };
        let limit = request_limit(req.limit);
        let selected = if selected.len() > limit { selected[..limit].to_vec() } else { selected };
        let batch = req.response_batch_size.max(1) as usize;
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            for r in fetch_batches(&selected) {
                match this.send_batch(&blocks, &selected[r], req.skip_chunks, batch, &tx).await {
                    Ok(true) => {}
                    Ok(false) => return, // the client went away
                    Err(st) => {
                        tracing::warn!(error = %st.message(), "Series failed");
                        let _ = tx.send(Err(st)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn label_names(&self, req: Request<LabelNamesRequest>) -> Result<Response<LabelNamesResponse>, Status> {
        let req = req.into_inner();
        let ms = request_matchers(&req.matchers)?;
        let (mint, maxt) = self.clamp(req.start, req.end);
        let blocks = self.blocks();
        let mut names: Vec<String> = tokio::task::spawn_blocking(move || -> Result<Vec<String>, Status> {
            let mut set: BTreeSet<String> = BTreeSet::new();
            for b in blocks.iter().filter(|b| mint <= maxt && b.overlaps(mint, maxt)) {
                let Some(rest) = strip_external(&b.ext, &ms) else { continue };
                // Matchers only on external labels select the whole block: its index
                // answers without a walk over the series.
                let mut any = false;
                if rest.is_empty() {
                    let ns = b.index.label_names();
                    any = !ns.is_empty();
                    set.extend(ns.into_iter().map(str::to_string));
                } else {
                    for id in postings(b, &rest).map_err(|e| block_err(b, e))? {
                        let (l, _) = b.index.series(id).map_err(|e| block_err(b, e))?;
                        any = true;
                        set.extend(l.iter().map(|(n, _)| n.to_string()));
                    }
                }
                if any {
                    set.extend(b.ext.iter().map(|(n, _)| n.to_string()));
                }
            }
            Ok(set.into_iter().collect())
        })
        .await
        .map_err(|e| Status::internal(format!("label names task: {e}")))??;
        names.truncate(request_limit(req.limit));
        Ok(Response::new(LabelNamesResponse { names, ..Default::default() }))
    }

    async fn label_values(&self, req: Request<LabelValuesRequest>) -> Result<Response<LabelValuesResponse>, Status> {
        let req = req.into_inner();
        check_label_name(&req.label)?;
        let ms = request_matchers(&req.matchers)?;
        let (mint, maxt) = self.clamp(req.start, req.end);
        let blocks = self.blocks();
        let name = req.label.clone();
        let mut values: Vec<String> = tokio::task::spawn_blocking(move || -> Result<Vec<String>, Status> {
            let mut set: BTreeSet<String> = BTreeSet::new();
            for b in blocks.iter().filter(|b| mint <= maxt && b.overlaps(mint, maxt)) {
                let Some(rest) = strip_external(&b.ext, &ms) else { continue };
                if rest.is_empty() {
                    match b.ext.get(&name) {
                        Some(v) if !b.index.label_names().is_empty() => {
                            set.insert(v.to_string());
                        }
                        Some(_) => {}
                        None => set.extend(b.index.label_values(&name).into_iter().map(str::to_string)),
                    }
                    continue;
                }
                for id in postings(b, &rest).map_err(|e| block_err(b, e))? {
                    let (l, _) = b.index.series(id).map_err(|e| block_err(b, e))?;
                    if let Some(v) = with_external(&l, &b.ext).get(&name) {
                        set.insert(v.to_string());
                    }
                }
            }
            Ok(set.into_iter().collect())
        })
        .await
        .map_err(|e| Status::internal(format!("label values task: {e}")))??;
        values.truncate(request_limit(req.limit));
        Ok(Response::new(LabelValuesResponse { values, ..Default::default() }))
    }
}

#[tonic::async_trait]
impl info_server::Info for BucketStore {
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(self.info_now()))
    }
}

impl BucketStore {
    /// Label sets and time range of the blocks served now. Without blocks the range is
    /// empty (`min_time` > `max_time`), so queriers skip this store, as Thanos's does.
    pub fn info_now(&self) -> InfoResponse {
        let blocks = self.blocks();
        let mut sets: Vec<(Labels, i64, i64)> = Vec::new();
        for b in blocks.iter() {
            let (mint, maxt) = (b.meta.min_time.max(self.min_time), b.meta.max_time.min(self.max_time));
            match sets.iter_mut().find(|s| s.0 == b.ext) {
                Some(s) => {
                    s.1 = s.1.min(mint);
                    s.2 = s.2.max(maxt);
                }
                None => sets.push((b.ext.clone(), mint, maxt)),
            }
        }
        sets.sort_by(|a, b| a.0.cmp(&b.0));
        let min_time = sets.iter().map(|s| s.1).min().unwrap_or(i64::MAX);
        let max_time = sets.iter().map(|s| s.2).max().unwrap_or(i64::MIN);
        let zl = |l: &Labels| thanos::ZLabelSet { labels: labels_to_proto(l) };
        InfoResponse {
            label_sets: sets.iter().map(|s| zl(&s.0)).collect(),
            component_type: "store".into(),
            store: Some(StoreInfo {
                min_time,
                max_time,
                supports_sharding: false,
                supports_without_replica_labels: false,
                tsdb_infos: sets
                    .iter()
                    .map(|s| TsdbInfo { labels: Some(zl(&s.0)), min_time: s.1, max_time: s.2 })
                    .collect(),
                supports_projections: false,
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn fetch_batches_bound_chunks_and_series() {
        let s = |n: usize| Selected {
            labels: Labels::empty(),
            parts: vec![(0, vec![ChunkRef { min_time: 0, max_time: 0, chunk_ref: 8 }; n])],
        };
        assert!(fetch_batches(&[]).is_empty());
        assert_eq!(fetch_batches(&[s(1), s(2)]), vec![0..2]);
        assert_eq!(fetch_batches(&[s(4000), s(100), s(1)]), vec![0..2, 2..3]);
        let many: Vec<Selected> = (0..FETCH_BATCH_SERIES + 1).map(|_| s(1)).collect();
        assert_eq!(fetch_batches(&many), vec![0..FETCH_BATCH_SERIES, FETCH_BATCH_SERIES..FETCH_BATCH_SERIES + 1]);
    }
}
