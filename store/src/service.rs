//! `thanos.Store` and `thanos.info.Info` over the served blocks.
//!
//! Series: blocks are chosen by time range and external-label matchers; each block's
//! index (header local, postings and series read from the bucket on demand) yields the
//! matching series and their chunk references (labels with the block's external labels
//! on). Series with equal labels from several blocks become one,
//! their chunks in time order. Chunk bytes are then read from the bucket a batch of
//! series at a time, as the frames are built, and sent through a bounded channel, so
//! memory holds one batch of chunks however large the answer.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use norn_model::{Labels, Matcher};
use norn_storeapi::external::{check_label_name, request_limit, request_matchers, strip_external, with_external};
use norn_storeapi::labels_to_proto;
use norn_storeapi::thanos::info::{InfoRequest, InfoResponse, StoreInfo, TsdbInfo, info_server};
use norn_storeapi::thanos::{
    self, LabelNamesRequest, LabelNamesResponse, LabelValuesRequest, LabelValuesResponse, SeriesRequest,
    SeriesResponse, series_response, store_server,
};
use norn_tsdb::chunkenc::aggr::{AGGR_ENCODING, AggrChunk, AggrType};
use norn_tsdb::chunkenc::{Chunk, Encoding};
use norn_tsdb::chunks::{ChunkMeta, ChunkRef};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use ulid::Ulid;
use xxhash_rust::xxh64::xxh64;

use crate::bucketindex::CPU_WORK_VALUES;
use crate::fetch::{ChunkFetcher, RawChunk};
use crate::sync::{BlockSet, RESOLUTIONS, StoreBlock};

/// Chunks whose bytes are fetched together (one batch of series' worth of ranged reads).
const FETCH_BATCH_CHUNKS: usize = 4096;
/// Most series per fetch batch, whatever their chunk counts.
const FETCH_BATCH_SERIES: usize = 1024;
/// Series entries read from a block's index at once.
const SERIES_READ_BATCH: usize = 4096;
/// Blocks whose postings and series are read at once.
const BLOCK_CONCURRENCY: usize = 8;

/// One series of an answer: its labels and, per block holding it, the chunk references
/// inside the requested range.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    pub labels: Labels,
    pub parts: Vec<(usize, Vec<ChunkRef>)>,
}

/// Series IDs of `matchers` in a block (all series when every matcher was on an
/// external label).
async fn postings(b: &StoreBlock, rest: &[Matcher]) -> Result<Vec<u32>, Status> {
    let r = if rest.is_empty() { b.index.all_postings().await } else { b.index.postings_for_matchers(rest).await };
    r.map_err(|e| block_err(b, e))
}

/// A series' labels and chunk references.
type SeriesRefs = (Labels, Vec<ChunkRef>);

/// Labels (external ones on) and chunk references of the series of `b` selected by
/// `rest`, read a batch at a time; `keep` filters the chunk references (a series left
/// without any is dropped).
async fn block_series(
    b: &StoreBlock,
    rest: &[Matcher],
    keep: impl Fn(&ChunkRef) -> bool,
) -> Result<Vec<SeriesRefs>, Status> {
    let ids = postings(b, rest).await?;
    let mut out = Vec::new();
    for batch in ids.chunks(SERIES_READ_BATCH) {
        for (l, mut refs) in b.index.series(batch, true).await.map_err(|e| block_err(b, e))? {
            refs.retain(&keep);
            if !refs.is_empty() {
                out.push((with_external(&l, &b.ext), refs));
            }
        }
    }
    Ok(out)
}

/// Labels of the series of `b` selected by `rest` (no external labels).
async fn block_labels(b: &StoreBlock, rest: &[Matcher]) -> Result<Vec<Labels>, Status> {
    let ids = postings(b, rest).await?;
    let mut out = Vec::with_capacity(ids.len());
    for batch in ids.chunks(SERIES_READ_BATCH) {
        out.extend(b.index.series(batch, true).await.map_err(|e| block_err(b, e))?.into_iter().map(|(l, _)| l));
    }
    Ok(out)
}

/// Which blocks answer `[mint, maxt]` for a client accepting resolutions up to
/// `max_res` ms, as Thanos's `bucketBlockSet.getFor` picks them within each external
/// label set: blocks of the coarsest allowed resolution, and where they leave gaps, the
/// next finer resolution's blocks, down to raw.
pub fn choose_blocks(blocks: &[Arc<StoreBlock>], mint: i64, maxt: i64, max_res: i64) -> Vec<bool> {
    let spans: Vec<BlockSpan<'_>> =
        blocks.iter().map(|b| (&b.ext, b.resolution, b.meta.min_time, b.meta.max_time)).collect();
    choose(&spans, mint, maxt, max_res)
}

/// A block as [`choose`] sees it: external labels, resolution, `[minTime, maxTime)`.
pub type BlockSpan<'a> = (&'a Labels, i64, i64, i64);

/// [`choose_blocks`] over block spans.
pub fn choose(blocks: &[BlockSpan<'_>], mint: i64, maxt: i64, max_res: i64) -> Vec<bool> {
    let mut chosen = vec![false; blocks.len()];
    let mut sets: BTreeMap<&Labels, [Vec<usize>; 3]> = BTreeMap::new();
    for (i, b) in blocks.iter().enumerate() {
        if let Some(level) = RESOLUTIONS.iter().position(|&r| r == b.1) {
            sets.entry(b.0).or_default()[level].push(i);
        }
    }
    for levels in sets.values_mut() {
        for l in levels.iter_mut() {
            l.sort_by_key(|&i| (blocks[i].2, blocks[i].3));
        }
        let Some(first) = RESOLUTIONS.iter().position(|&r| r <= max_res) else { continue };
        fill(blocks, levels, first, mint, maxt, &mut chosen);
    }
    chosen
}

/// Picks the blocks of resolution level `level` overlapping `[mint, maxt]`, filling the
/// gaps before, between and after them from the finer levels.
fn fill(blocks: &[BlockSpan<'_>], levels: &[Vec<usize>; 3], level: usize, mint: i64, maxt: i64, out: &mut [bool]) {
    if mint > maxt {
        return;
    }
    let finer = level + 1 < RESOLUTIONS.len();
    let mut start = mint;
    for &i in &levels[level] {
        let (_, _, bmin, bmax) = blocks[i];
        // Block ranges are half-open: [minTime, maxTime).
        if bmax <= mint {
            continue;
        }
        if bmin > maxt {
            break;
        }
        if finer {
            fill(blocks, levels, level + 1, start, bmin - 1, out);
        }
        out[i] = true;
        start = bmax;
    }
    if finer {
        fill(blocks, levels, level + 1, start, maxt, out);
    }
}

/// The series of `blocks` matching `ms` with chunks in `[mint, maxt]`, external labels
/// on, sorted by labels, equal label sets joined; only blocks [`choose_blocks`] picks for
/// `max_res` take part. Blocks are read a few at a time.
pub async fn select(
    blocks: &[Arc<StoreBlock>],
    ms: &[Matcher],
    mint: i64,
    maxt: i64,
    max_res: i64,
) -> Result<Vec<Selected>, Status> {
    let chosen = choose_blocks(blocks, mint, maxt, max_res);
    let mut jobs: Vec<(usize, Arc<StoreBlock>, Vec<Matcher>)> = Vec::new();
    for (bi, b) in blocks.iter().enumerate() {
        if !chosen[bi] || !b.overlaps(mint, maxt) {
            continue;
        }
        let Some(rest) = strip_external(&b.ext, ms) else { continue };
        jobs.push((bi, b.clone(), rest));
    }
    let mut per_block: Vec<(usize, Vec<SeriesRefs>)> = futures::stream::iter(jobs)
        .map(|(bi, b, rest)| async move {
            let s = block_series(&b, &rest, |c| c.min_time <= maxt && c.max_time >= mint).await?;
            Ok::<_, Status>((bi, s))
        })
        .buffer_unordered(BLOCK_CONCURRENCY)
        .try_collect()
        .await?;
    per_block.sort_by_key(|p| p.0);
    Ok(crate::cpu_work(move || {
        let mut all: Vec<(Labels, usize, Vec<ChunkRef>)> = Vec::new();
        for (bi, series) in per_block {
            all.extend(series.into_iter().map(|(l, r)| (l, bi, r)));
        }
        // Stable: equal labels keep block order (by min time), so joined chunks stay
        // sorted in the common case of non-overlapping blocks.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<Selected> = Vec::new();
        for (l, bi, r) in all {
            match out.last_mut() {
                Some(s) if s.labels == l => s.parts.push((bi, r)),
                _ => out.push(Selected { labels: l, parts: vec![(bi, r)] }),
            }
        }
        out
    }))
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
    /// Series calls running at once (`--store.grpc.series-max-concurrency`, Thanos's
    /// gate): a call waits for a permit and holds it until its stream is sent.
    pub series_gate: Arc<tokio::sync::Semaphore>,
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
    #[allow(clippy::too_many_arguments)]
    async fn send_batch(
        &self,
        blocks: &[Arc<StoreBlock>],
        series: &[Selected],
        skip_chunks: bool,
        aggregates: &[i32],
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
                for (b, rs) in &s.parts {
                    for r in rs {
                        let Some(c) = chunks.get(&(*b, r.chunk_ref)) else {
                            return Err(Status::internal(format!(
                                "block {}: chunk {:#x} not fetched",
                                blocks[*b].id, r.chunk_ref
                            )));
                        };
                        let out = storepb_chunk(r.min_time, r.max_time, c, aggregates).map_err(|e| {
                            Status::internal(format!("block {}: chunk {:#x}: {e}", blocks[*b].id, r.chunk_ref))
                        })?;
                        cs.push(out);
                    }
                }
                if s.parts.len() > 1 {
                    cs.sort_by_key(|m| (m.min_time, m.max_time));
                }
            }
            pending.push(thanos::Series { labels: labels_to_proto(&s.labels), chunks: cs });
            if pending.len() >= batch && !send_frame(tx, &mut pending, batch).await {
                return Ok(false);
            }
        }
        Ok(pending.is_empty() || send_frame(tx, &mut pending, batch).await)
    }
}

/// The StoreAPI form of a chunk read from a block: a raw chunk in `raw`; an aggregate
/// chunk (0xFF) as the requested `aggregates` (`thanos.Aggr` numbers) in fields 4–8, as
/// Thanos's `populateChunk` does: a requested aggregate the chunk lacks is an error,
/// `RAW` and unknown numbers are ignored.
pub fn storepb_chunk(
    min_time: i64,
    max_time: i64,
    c: &RawChunk,
    aggregates: &[i32],
) -> Result<thanos::AggrChunk, String> {
    if c.encoding != AGGR_ENCODING {
        let encoding = Encoding::from_u8(c.encoding).map_err(|e| e.to_string())?;
        let meta = ChunkMeta { min_time, max_time, chunk: Chunk::new(encoding, c.data.clone()) };
        return Ok(norn_storeapi::chunks::aggr_chunk(&meta, xxh64(&c.data, 0)));
    }
    let a = AggrChunk::decode(&c.data).map_err(|e| e.to_string())?;
    let mut out = thanos::AggrChunk { min_time, max_time, ..Default::default() };
    for &n in aggregates {
        let (t, slot) = match thanos::Aggr::try_from(n) {
            Ok(thanos::Aggr::Count) => (AggrType::Count, &mut out.count),
            Ok(thanos::Aggr::Sum) => (AggrType::Sum, &mut out.sum),
            Ok(thanos::Aggr::Min) => (AggrType::Min, &mut out.min),
            Ok(thanos::Aggr::Max) => (AggrType::Max, &mut out.max),
            Ok(thanos::Aggr::Counter) => (AggrType::Counter, &mut out.counter),
            Ok(thanos::Aggr::Raw) | Err(_) => continue,
        };
        let sub = a.get(t).ok_or_else(|| format!("aggregate {} does not exist", t.name()))?;
        *slot = Some(thanos::Chunk {
            r#type: norn_storeapi::chunks::storepb_encoding(sub.encoding) as i32,
            data: sub.data.to_vec(),
            hash: xxh64(&sub.data, 0),
        });
    }
    Ok(out)
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
        let permit = self
            .series_gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("store gateway shutting down"))?;
        let (mint, maxt) = self.clamp(req.min_time, req.max_time);
        let blocks = self.blocks();
        let selected =
            if mint > maxt { Vec::new() } else { select(&blocks, &ms, mint, maxt, req.max_resolution_window).await? };
        let limit = request_limit(req.limit);
        let selected = if selected.len() > limit { selected[..limit].to_vec() } else { selected };
        let batch = req.response_batch_size.max(1) as usize;
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            for r in fetch_batches(&selected) {
                match this.send_batch(&blocks, &selected[r], req.skip_chunks, &req.aggregates, batch, &tx).await {
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
        let mut set: BTreeSet<String> = BTreeSet::new();
        for b in blocks.iter().filter(|b| mint <= maxt && b.overlaps(mint, maxt)) {
            let Some(rest) = strip_external(&b.ext, &ms) else { continue };
            // Matchers only on external labels select the whole block: its index-header
            // answers without reading any series.
            let mut any = false;
            if rest.is_empty() {
                let mut add = || {
                    let ns = b.index.label_names();
                    any = !ns.is_empty();
                    set.extend(ns.into_iter().map(str::to_string));
                };
                if b.index.header.label_count() > CPU_WORK_VALUES { crate::cpu_work(add) } else { add() }
            } else {
                for l in block_labels(b, &rest).await? {
                    any = true;
                    set.extend(l.iter().map(|(n, _)| n.to_string()));
                }
            }
            if any {
                set.extend(b.ext.iter().map(|(n, _)| n.to_string()));
            }
        }
        let mut names: Vec<String> = set.into_iter().collect();
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
        let mut set: BTreeSet<String> = BTreeSet::new();
        for b in blocks.iter().filter(|b| mint <= maxt && b.overlaps(mint, maxt)) {
            let Some(rest) = strip_external(&b.ext, &ms) else { continue };
            if rest.is_empty() {
                match b.ext.get(&name) {
                    Some(v) if !b.index.label_names().is_empty() => {
                        set.insert(v.to_string());
                    }
                    Some(_) => {}
                    None => {
                        // A label of millions of values: CPU work off the async worker.
                        let mut add = || {
                            let vs = b.index.label_values(&name).map_err(|e| block_err(b, e))?;
                            set.extend(vs.into_iter().map(str::to_string));
                            Ok::<_, Status>(())
                        };
                        if b.index.header.value_count(&name) > CPU_WORK_VALUES { crate::cpu_work(add)? } else { add()? }
                    }
                }
                continue;
            }
            for l in block_labels(b, &rest).await? {
                if let Some(v) = with_external(&l, &b.ext).get(&name) {
                    set.insert(v.to_string());
                }
            }
        }
        let mut values: Vec<String> = set.into_iter().collect();
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
    fn block_choice_by_resolution() {
        let (a, b) = (Labels::from_pairs([("r", "a")]), Labels::from_pairs([("r", "b")]));
        const F: i64 = 300_000;
        const H: i64 = 3_600_000;
        // Stream a: raw [0,100) [100,200) [200,300); 5m [0,200); 1h [0,100).
        // Stream b: raw [0,300) only.
        let blocks: Vec<BlockSpan<'_>> = vec![
            (&a, 0, 0, 100),
            (&a, 0, 100, 200),
            (&a, 0, 200, 300),
            (&a, F, 0, 200),
            (&a, H, 0, 100),
            (&b, 0, 0, 300),
            (&a, 60_000, 0, 300), // unsupported resolution: never
        ];
        // (mint, maxt, max_res, chosen indexes)
        let cases: &[(i64, i64, i64, &[usize])] = &[
            (0, 299, 0, &[0, 1, 2, 5]),
            (0, 299, F, &[2, 3, 5]),
            (0, 299, H, &[2, 3, 4, 5]),
            (0, 299, 10 * H, &[2, 3, 4, 5]),
            (150, 160, H, &[3, 5]),
            (250, 260, H, &[2, 5]),
            (0, 50, F - 1, &[0, 5]),
            (300, 400, H, &[]),
            (10, 5, H, &[]),
            (0, 299, -1, &[]),
        ];
        for &(mint, maxt, res, want) in cases {
            let got: Vec<usize> =
                choose(&blocks, mint, maxt, res).iter().enumerate().filter(|x| *x.1).map(|x| x.0).collect();
            assert_eq!(got, want, "[{mint}, {maxt}] max_res {res}");
        }
    }

    #[test]
    fn aggregate_chunks_fill_the_requested_fields() {
        use norn_tsdb::chunkenc::XorChunk;
        let xor = |v: f64| {
            let mut c = XorChunk::new();
            c.append(299_999, v);
            Chunk::new(Encoding::Xor, c.into_bytes())
        };
        let a = AggrChunk { parts: [Some(xor(4.0)), Some(xor(10.0)), None, Some(xor(3.0)), Some(xor(9.0))] };
        let raw = RawChunk { encoding: AGGR_ENCODING, data: bytes::Bytes::from(a.encode()) };
        let n = |x: thanos::Aggr| x as i32;
        let got = storepb_chunk(
            299_999,
            299_999,
            &raw,
            &[n(thanos::Aggr::Count), n(thanos::Aggr::Sum), n(thanos::Aggr::Counter), n(thanos::Aggr::Raw), 99],
        )
        .unwrap();
        assert!(got.raw.is_none() && got.min.is_none() && got.max.is_none());
        let count = got.count.unwrap();
        assert_eq!(
            (count.r#type, &count.data[..]),
            (thanos::chunk::Encoding::Xor as i32, &a.parts[0].as_ref().unwrap().data[..])
        );
        assert_eq!(count.hash, xxh64(&count.data, 0));
        assert_eq!(got.sum.unwrap().data, a.parts[1].as_ref().unwrap().data.to_vec());
        assert_eq!(got.counter.unwrap().data, a.parts[4].as_ref().unwrap().data.to_vec());
        let e = storepb_chunk(0, 0, &raw, &[n(thanos::Aggr::Min)]).unwrap_err();
        assert_eq!(e, "aggregate min does not exist");
        assert!(
            storepb_chunk(0, 0, &RawChunk { encoding: AGGR_ENCODING, data: bytes::Bytes::from_static(&[7]) }, &[])
                .is_err()
        );
        // Raw chunks go to `raw` whatever was asked.
        let x = xor(1.0);
        let got = storepb_chunk(299_999, 299_999, &RawChunk { encoding: 1, data: x.data.clone() }, &[1, 2]).unwrap();
        assert_eq!(got.raw.unwrap().data, x.data.to_vec());
        assert!(got.count.is_none());
    }

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
