//! Backfilling: turning an OpenMetrics text file into TSDB blocks, the job of
//! `promtool tsdb create-blocks-from openmetrics`, with the same blocks as a result.
//!
//! What "the same" means, taken from promtool 2.42:
//! * blocks cover aligned ranges of the block duration (2 h unless a larger
//!   `--max-block-duration` picks one of Prometheus's exponential ranges); a block's
//!   `minTime` is its first sample and `maxTime` its last sample + 1;
//! * chunks are cut as Prometheus's head cuts them, with the head's chunk range at twice
//!   the block duration (promtool's block writer pretends the block is twice as large so
//!   that it accepts samples from the whole range);
//! * per series and block, a sample with the timestamp of the previous one and the same
//!   value is dropped as a duplicate.
//!
//! Unlike promtool the input is parsed once (promtool re-parses it for every block), and
//! samples that promtool would drop silently or reject depending on how they fall into
//! its 5000-sample appender batches (out of order, or a duplicate timestamp with another
//! value) are always rejected, with the line. A failed run leaves no block behind.

pub mod openmetrics;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

use norn_model::Labels;

use crate::TsdbError;
use crate::block::{Block, BlockWriter};
use crate::head::ChunkCutter;
use crate::meta::BlockMeta;
use openmetrics::{ParseError, Parser};

/// Prometheus's default (and minimum) block duration: 2 h in milliseconds.
pub const DEFAULT_BLOCK_DURATION: i64 = 7_200_000;

/// The block duration promtool uses for a `--max-block-duration` (ms): the largest of
/// Prometheus's exponential block ranges (2 h × 3ⁿ, ten steps) not above it, and 2 h for
/// anything up to 2 h.
pub fn compatible_block_duration(max_block_duration: i64) -> i64 {
    if max_block_duration <= DEFAULT_BLOCK_DURATION {
        return DEFAULT_BLOCK_DURATION;
    }
    let ranges: Vec<i64> = std::iter::successors(Some(DEFAULT_BLOCK_DURATION), |r| Some(r * 3)).take(10).collect();
    ranges.iter().copied().take_while(|&r| r <= max_block_duration).last().unwrap_or(DEFAULT_BLOCK_DURATION)
}

/// Why a backfill failed.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The input is not valid OpenMetrics.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A sample cannot be stored (no timestamp, out of order, conflicting duplicate).
    #[error("line {line}: {msg}")]
    Sample { line: usize, msg: String },
    /// Writing a block failed.
    #[error(transparent)]
    Tsdb(#[from] TsdbError),
}

/// Options of a backfill run.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Upper bound for the block duration in ms; see [`compatible_block_duration`].
    pub max_block_duration: i64,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        BackfillOptions { max_block_duration: DEFAULT_BLOCK_DURATION }
    }
}

/// Progress callbacks, e.g. for a progress bar. All methods default to doing nothing.
pub trait Progress {
    /// `done` of `total` input bytes parsed.
    fn parsed(&mut self, _done: u64, _total: u64) {}
    /// All input parsed; `blocks` blocks are about to be written.
    fn writing(&mut self, _blocks: u64) {}
    /// One more block written.
    fn block_written(&mut self, _meta: &BlockMeta) {}
}

/// A [`Progress`] that reports nothing.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A block written by a backfill.
#[derive(Debug)]
pub struct CreatedBlock {
    /// The block's directory.
    pub dir: PathBuf,
    /// Its meta.json contents.
    pub meta: BlockMeta,
    /// Bytes on disk as Prometheus counts them (index, chunks, meta, tombstones).
    pub size_bytes: u64,
}

/// FxHash: the raw series bytes are hashed once per sample, so a cheap hash matters more
/// than DoS resistance (the input is the operator's own file).
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn write_u64(&mut self, i: u64) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(K);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The last sample of a series within one block range, for order and duplicate checks.
#[derive(Debug, Clone, Copy)]
struct Tail {
    block: i64,
    t: i64,
    v: u64,
}

#[derive(Debug)]
struct SeriesData {
    labels: Labels,
    samples: Vec<(i64, f64)>,
    /// One entry per block range the series has samples in, in order of first sample.
    tails: Vec<Tail>,
    /// Whether samples arrived in time order (only false when a later block range came
    /// before an earlier one in the file).
    sorted: bool,
}

/// Everything parsed from an input: series with time-sorted samples.
#[derive(Debug)]
struct Parsed {
    series: Vec<SeriesData>,
    min_t: i64,
    max_t: i64,
}

fn parse_input(input: &[u8], block_duration: i64, progress: &mut dyn Progress) -> Result<Parsed, BackfillError> {
    let mut p = Parser::new(input);
    let mut by_raw: FxMap<&[u8], u32> = FxMap::default();
    let mut by_labels: FxMap<Labels, u32> = FxMap::default();
    let mut series: Vec<SeriesData> = Vec::new();
    let (mut min_t, mut max_t) = (i64::MAX, i64::MIN);
    let mut last: Option<(&[u8], u32)> = None;
    let total = input.len() as u64;
    let mut n = 0u64;
    while let Some(s) = p.next_sample()? {
        n += 1;
        if n.is_multiple_of(1 << 16) {
            progress.parsed(p.position() as u64, total);
        }
        let Some(t) = s.timestamp_ms else {
            let l = p.labels().map(|l| l.to_string()).unwrap_or_else(|_| String::from_utf8_lossy(s.series).into());
            return Err(BackfillError::Sample {
                line: s.line,
                msg: format!("expected timestamp for series {l}, got none"),
            });
        };
        let id = match last {
            Some((raw, id)) if raw == s.series => id,
            _ => {
                let id = match by_raw.get(s.series) {
                    Some(&id) => id,
                    None => {
                        let labels = p.labels()?;
                        let next = series.len() as u32;
                        let id = *by_labels.entry(labels.clone()).or_insert(next);
                        if id == next {
                            series.push(SeriesData { labels, samples: Vec::new(), tails: Vec::new(), sorted: true });
                        }
                        by_raw.insert(s.series, id);
                        id
                    }
                };
                last = Some((s.series, id));
                id
            }
        };
        let sd = &mut series[id as usize];
        let block = t.div_euclid(block_duration);
        let v = s.value.to_bits();
        let tail = match sd.tails.last_mut() {
            Some(tail) if tail.block == block => Some(tail),
            _ => {
                let found = sd.tails.iter().position(|x| x.block == block);
                match found {
                    Some(i) => Some(&mut sd.tails[i]),
                    None => {
                        if sd.tails.last().is_some_and(|x| x.block > block) {
                            sd.sorted = false;
                        }
                        sd.tails.push(Tail { block, t, v });
                        None
                    }
                }
            }
        };
        if let Some(tail) = tail {
            if t < tail.t {
                return Err(BackfillError::Sample {
                    line: s.line,
                    msg: format!("out of order sample for series {} at {t} (after {})", sd.labels, tail.t),
                });
            }
            if t == tail.t {
                if v == tail.v {
                    continue;
                }
                return Err(BackfillError::Sample {
                    line: s.line,
                    msg: format!("duplicate sample for timestamp {t} of series {} with a different value", sd.labels),
                });
            }
            tail.t = t;
            tail.v = v;
        }
        sd.samples.push((t, s.value));
        min_t = min_t.min(t);
        max_t = max_t.max(t);
    }
    progress.parsed(total, total);
    for sd in &mut series {
        if !sd.sorted {
            // Within a block range samples are strictly increasing and ranges are
            // disjoint, so there are no equal timestamps and the sort is unambiguous.
            sd.samples.sort_unstable_by_key(|&(t, _)| t);
        }
        sd.tails = Vec::new();
    }
    Ok(Parsed { series, min_t, max_t })
}

/// Parses `input` and writes its samples as blocks into `output_dir` (created if
/// missing). Returns the new blocks in time order. On error, blocks this call already
/// wrote are removed again.
pub fn backfill_openmetrics(
    input: &[u8],
    output_dir: &Path,
    opts: &BackfillOptions,
    progress: &mut dyn Progress,
) -> Result<Vec<CreatedBlock>, BackfillError> {
    let mut created = Vec::new();
    let res = backfill_inner(input, output_dir, opts, progress, &mut created);
    if res.is_err() {
        for b in &created {
            let _ = std::fs::remove_dir_all(&b.dir);
        }
        created.clear();
    }
    res.map(|()| created)
}

fn backfill_inner(
    input: &[u8],
    output_dir: &Path,
    opts: &BackfillOptions,
    progress: &mut dyn Progress,
    created: &mut Vec<CreatedBlock>,
) -> Result<(), BackfillError> {
    let bd = compatible_block_duration(opts.max_block_duration);
    let mut parsed = parse_input(input, bd, progress)?;
    std::fs::create_dir_all(output_dir).map_err(TsdbError::io("create dir", output_dir))?;
    if parsed.series.is_empty() {
        progress.writing(0);
        return Ok(());
    }
    parsed.series.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
    let first = parsed.min_t.div_euclid(bd);
    let last = parsed.max_t.div_euclid(bd);
    // Blocks actually holding samples; data may have long gaps.
    let mut blocks: Vec<i64> = parsed
        .series
        .iter()
        .flat_map(|s| {
            let mut prev = None;
            s.samples.iter().filter_map(move |&(t, _)| {
                let b = t.div_euclid(bd);
                (prev != Some(b)).then(|| {
                    prev = Some(b);
                    b
                })
            })
        })
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    debug_assert!(blocks.first() == Some(&first) && blocks.last() == Some(&last));
    progress.writing(blocks.len() as u64);

    // Which samples of which series go into each block: (series, start, end) in label order.
    let mut cursors = vec![0usize; parsed.series.len()];
    let mut plans: Vec<Vec<(usize, usize, usize)>> = Vec::with_capacity(blocks.len());
    for &b in &blocks {
        let mut spans = Vec::new();
        for (i, s) in parsed.series.iter().enumerate() {
            let start = cursors[i];
            // By block index rather than `t < end`, which would overflow for the last
            // range before i64::MAX.
            let end = start + s.samples[start..].partition_point(|&(t, _)| t.div_euclid(bd) <= b);
            cursors[i] = end;
            if end > start {
                spans.push((i, start, end));
            }
        }
        debug_assert!(!spans.is_empty());
        plans.push(spans);
    }

    // Blocks are independent: write them on as many threads as there are cores, which
    // mostly overlaps one block's fsyncs with the next block's encoding.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(plans.len()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let series = &parsed.series;
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<CreatedBlock, TsdbError>)>();
    let mut results: Vec<Option<CreatedBlock>> = (0..plans.len()).map(|_| None).collect();
    let mut first_err = None;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (plans, next, failed) = (&plans, &next, &failed);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= plans.len() || failed.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let r = write_block(output_dir, series, &plans[i], bd);
                    if r.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (i, r) in rx {
            match r {
                Ok(b) => {
                    progress.block_written(&b.meta);
                    results[i] = Some(b);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    });
    // Hand every written block to the caller's list first, so that on error they are
    // all removed.
    created.extend(results.into_iter().flatten());
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Writes one block from the given sample spans (non-empty, in label order).
fn write_block(
    output_dir: &Path,
    series: &[SeriesData],
    spans: &[(usize, usize, usize)],
    block_duration: i64,
) -> Result<CreatedBlock, TsdbError> {
    // The block's min/max time are its first and last sample (+1), as promtool's block
    // writer records the head's bounds.
    let bmin = spans.iter().map(|&(i, s, _)| series[i].samples[s].0).min().unwrap_or(0);
    let bmax = spans.iter().map(|&(i, _, e)| series[i].samples[e - 1].0).max().unwrap_or(0);
    let mut w = BlockWriter::new(output_dir, bmin, bmax.saturating_add(1))?;
    w.set_legacy_label_indices(true);
    // promtool's block writer runs its head with twice the block duration as chunk range.
    let chunk_range = block_duration.saturating_mul(2);
    let mut chunks = Vec::new();
    for &(i, start, end) in spans {
        let s = &series[i];
        let mut cutter = ChunkCutter::new(chunk_range);
        chunks.clear();
        for &(t, v) in &s.samples[start..end] {
            if let Some(c) = cutter.append(t, v) {
                chunks.push(c);
            }
        }
        chunks.extend(cutter.finish());
        w.add_series(&s.labels, &chunks)?;
    }
    let meta = w.finish()?;
    let dir = output_dir.join(meta.ulid.to_string());
    // Reopening validates what we wrote and measures it the way Prometheus does.
    match Block::open(&dir) {
        Ok(block) => Ok(CreatedBlock { size_bytes: block.size_bytes(), dir, meta }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkenc::Sample;

    const H2: i64 = DEFAULT_BLOCK_DURATION;

    #[test]
    fn block_durations() {
        for (max, want) in
            [(0, H2), (H2, H2), (3 * H2 - 1, H2), (3 * H2, 3 * H2), (10 * H2, 9 * H2), (i64::MAX, 19683 * H2)]
        {
            assert_eq!(compatible_block_duration(max), want, "{max}");
        }
    }

    fn run(input: &str) -> (tempfile::TempDir, Result<Vec<CreatedBlock>, BackfillError>) {
        let dir = tempfile::tempdir().unwrap();
        let r = backfill_openmetrics(input.as_bytes(), dir.path(), &BackfillOptions::default(), &mut NoProgress);
        (dir, r)
    }

    fn dump(blocks: &[CreatedBlock]) -> Vec<String> {
        let mut out = Vec::new();
        for b in blocks {
            let block = Block::open(&b.dir).unwrap();
            for s in block.select_all(i64::MIN, i64::MAX).unwrap() {
                for smp in s.samples(i64::MIN, i64::MAX) {
                    let Sample::Float(t, v) = smp.unwrap() else { panic!() };
                    out.push(format!("{} {v} {t}", s.labels));
                }
            }
        }
        out
    }

    #[test]
    fn blocks_follow_promtool_boundaries() {
        // 3 series, one sample per 2 minutes over 4 h starting mid-block.
        let mut input = String::new();
        let base = 1_700_000_000i64;
        for s in 0..3 {
            input.push_str(&format!("# TYPE m{s} gauge\n"));
            for i in (0..4 * 3600).step_by(120) {
                input.push_str(&format!("m{s}{{a=\"x{s}\"}} {} {}\n", i as f64 * 1.5, base + i));
            }
        }
        input.push_str("# EOF\n");
        let (_d, r) = run(&input);
        let blocks = r.unwrap();
        let got: Vec<_> = blocks.iter().map(|b| (b.meta.min_time, b.meta.max_time, b.meta.stats.num_samples)).collect();
        // Same figures as promtool 2.42 prints for this input.
        assert_eq!(
            got,
            vec![
                (1700000000000, 1700006360001, 162),
                (1700006480000, 1700013560001, 180),
                (1700013680000, 1700014280001, 18)
            ]
        );
        assert!(blocks.iter().all(|b| b.meta.stats.num_chunks == 3 && b.size_bytes > 0));
    }

    #[test]
    fn chunk_range_is_twice_the_block() {
        // 40 s spacing in a 4h-aligned block: promtool 2.42 cuts 2 chunks per series
        // (head chunk range 4 h), not 1.
        let mut input = String::new();
        for i in (0..7200).step_by(40) {
            input.push_str(&format!("m 1 {}\n", 1_700_006_400 + i));
        }
        input.push_str("# EOF\n");
        let (_d, r) = run(&input);
        assert_eq!(r.unwrap()[0].meta.stats.num_chunks, 2);
    }

    #[test]
    fn unsorted_blocks_and_duplicates() {
        let input = "a 1 7300\na 2 7400\na 3 10\na 3 10\na 4 20\nb 1 7300\n# EOF\n";
        let (_d, r) = run(input);
        let blocks = r.unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            dump(&blocks),
            vec![
                "{__name__=\"a\"} 3 10000",
                "{__name__=\"a\"} 4 20000",
                "{__name__=\"a\"} 1 7300000",
                "{__name__=\"a\"} 2 7400000",
                "{__name__=\"b\"} 1 7300000"
            ]
        );
    }

    #[test]
    fn same_series_spelled_differently() {
        let input = "a{x=\"1\",y=\"2\"} 1 1\na{y=\"2\",x=\"1\"} 2 2\na{y=\"2\",x=\"1\",z=\"\"} 3 3\n# EOF\n";
        let (_d, r) = run(input);
        let blocks = r.unwrap();
        assert_eq!(blocks[0].meta.stats.num_series, 1);
        assert_eq!(blocks[0].meta.stats.num_samples, 3);
    }

    #[test]
    fn errors_leave_nothing_behind() {
        let mut input = String::new();
        for i in 0..100 {
            input.push_str(&format!("a 1 {}\n", i * 3600));
        }
        let cases = [
            (format!("{input}a 1 5\n# EOF\n"), 101, "out of order"),
            (format!("{input}a 2 {}\n# EOF\n", 99 * 3600), 101, "duplicate sample"),
            (format!("{input}a 1\n# EOF\n"), 101, "expected timestamp"),
            (format!("{input}a{{b=\"1\",b=\"1\"}} 1 1\n# EOF\n"), 101, "not unique"),
            (format!("{input}a 1 1e30 x\n# EOF\n"), 101, "expected end of line"),
            (input.clone(), 101, "# EOF"),
        ];
        for (text, line, what) in cases {
            let (d, r) = run(&text);
            let e = r.unwrap_err().to_string();
            assert!(e.starts_with(&format!("line {line}: ")) && e.contains(what), "{e}");
            assert_eq!(std::fs::read_dir(d.path()).map(|r| r.count()).unwrap_or(0), 0, "{e}");
        }
    }

    #[test]
    fn extreme_timestamps() {
        let (_d, r) = run("a 1 9223372036854775807\na 2 -9223372036854775808\n# EOF\n");
        let blocks = r.unwrap();
        assert_eq!(blocks.len(), 2);
        assert!(blocks.iter().all(|b| b.meta.stats.num_samples == 1));
        assert_eq!(blocks[1].meta.max_time, i64::MAX);
    }

    #[test]
    fn empty_input_writes_nothing() {
        let (d, r) = run("# TYPE a gauge\n# EOF\n");
        assert!(r.unwrap().is_empty());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
