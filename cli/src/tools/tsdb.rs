//! `norn tools tsdb …`: create blocks from OpenMetrics, dump, list and analyze blocks,
//! printing what promtool 2.42 prints.

use std::collections::HashMap;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use norn_model::format::go_format_g;
use norn_tsdb::backfill::{self, BackfillOptions, Progress};
use norn_tsdb::block::{Block, open_blocks};
use norn_tsdb::chunkenc::Sample;
use norn_tsdb::meta::BlockMeta;
use norn_tsdb::series::{Series, merge_series};

use super::format::{base2_bytes, go_duration_ms, go_time_utc, tabwriter};
use super::selector::parse_selector;

/// `norn tools tsdb` subcommands.
#[derive(Debug, Subcommand)]
pub enum TsdbCommand {
    /// Import samples from an input format and produce TSDB blocks.
    #[command(name = "create-blocks-from", subcommand)]
    CreateBlocksFrom(CreateBlocksFrom),
    /// Print the samples of every block (and of the WAL, if any) in a data directory
    /// (`{labels} value timestamp`).
    Dump(DumpArgs),
    /// List the blocks of a data directory.
    List(ListArgs),
    /// Print label and chunk statistics of one block.
    Analyze(AnalyzeArgs),
}

/// Input formats for `create-blocks-from`.
#[derive(Debug, Subcommand)]
pub enum CreateBlocksFrom {
    /// Import samples from an OpenMetrics text file.
    Openmetrics(OpenMetricsArgs),
}

/// Arguments of `create-blocks-from openmetrics`.
#[derive(Debug, Args)]
pub struct OpenMetricsArgs {
    /// OpenMetrics file to read samples from.
    pub input: PathBuf,
    /// Output directory for generated blocks.
    #[arg(default_value = "data/")]
    pub output_dir: PathBuf,
    /// Maximum duration of a created block (e.g. 2h, 6h, 1d); rounded down to one of
    /// Prometheus's block ranges.
    #[arg(long, default_value = "2h", value_parser = parse_duration_ms)]
    pub max_block_duration: i64,
    /// Do not print created blocks.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print human readable values.
    #[arg(short = 'r', long)]
    pub human_readable: bool,
}

/// Arguments of `dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Database path.
    #[arg(default_value = "data/")]
    pub dir: PathBuf,
    /// Minimum timestamp to dump (ms).
    #[arg(long, default_value_t = i64::MIN, allow_hyphen_values = true)]
    pub min_time: i64,
    /// Maximum timestamp to dump (ms).
    #[arg(long, default_value_t = i64::MAX, allow_hyphen_values = true)]
    pub max_time: i64,
    /// Series selector, e.g. `{job="x"}` or `up{a=~"b"}`.
    #[arg(long = "match")]
    pub selector: Option<String>,
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Database path.
    #[arg(default_value = "data/")]
    pub dir: PathBuf,
    /// Print human readable values.
    #[arg(short = 'r', long)]
    pub human_readable: bool,
}

/// Arguments of `analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Database path.
    #[arg(default_value = "data/")]
    pub dir: PathBuf,
    /// Block to analyze (default is the last block).
    pub block_id: Option<String>,
    /// How many items to show in each list.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Run extended analysis (chunk fullness).
    #[arg(long)]
    pub extended: bool,
}

/// Runs a `norn tools tsdb` command.
pub fn run(cmd: TsdbCommand) -> Result<()> {
    match cmd {
        TsdbCommand::CreateBlocksFrom(CreateBlocksFrom::Openmetrics(a)) => create_from_openmetrics(&a),
        TsdbCommand::Dump(a) => dump(&a),
        TsdbCommand::List(a) => list(&a),
        TsdbCommand::Analyze(a) => analyze(&a),
    }
}

/// Parses a duration such as `2h`, `1d12h`, `90m` or `1.5h` (Prometheus and Go forms)
/// into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    if s == "0" {
        return Ok(0);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".to_string());
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {s:?}"));
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "y" => 365.0 * 86_400_000.0,
            "w" => 7.0 * 86_400_000.0,
            "d" => 86_400_000.0,
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 1e-3,
            "ns" => 1e-6,
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        rest = &rest[unit_len..];
        total += n * ms;
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(total as i64)
}

/// A progress bar over input bytes, then over blocks written.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn parsed(&mut self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
    fn writing(&mut self, blocks: u64) {
        self.0.set_style(
            ProgressStyle::with_template("writing blocks {bar:40} {pos}/{len} {elapsed}").expect("valid template"),
        );
        self.0.set_position(0);
        self.0.set_length(blocks);
    }
    fn block_written(&mut self, _meta: &BlockMeta) {
        self.0.inc(1);
    }
}

fn create_from_openmetrics(a: &OpenMetricsArgs) -> Result<()> {
    let input = norn_tsdb::mmap::map_file(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let opts = BackfillOptions { max_block_duration: a.max_block_duration };
    let blocks = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(input.len() as u64);
        pb.set_style(
            ProgressStyle::with_template("parsing {bar:40} {bytes}/{total_bytes} {elapsed}").expect("valid template"),
        );
        let mut bar = Bar(pb);
        let r = backfill::backfill_openmetrics(&input, &a.output_dir, &opts, &mut bar);
        bar.0.finish_and_clear();
        r
    } else {
        backfill::backfill_openmetrics(&input, &a.output_dir, &opts, &mut backfill::NoProgress)
    }
    .with_context(|| format!("creating blocks from {}", a.input.display()))?;
    if !a.quiet {
        // promtool prints each new block as its own table (header only before the
        // first), so columns line up only within one block's line.
        for (i, b) in blocks.iter().enumerate() {
            print!("{}", block_table(&[(&b.meta, b.size_bytes)], a.human_readable, i == 0));
        }
    }
    Ok(())
}

/// promtool's `printBlocks` table (a tabwriter with minimum cell width 13).
fn block_table(blocks: &[(&BlockMeta, u64)], human: bool, header: bool) -> String {
    let time = |t: i64| if human { go_time_utc(t / 1000) } else { t.to_string() };
    let mut rows = Vec::new();
    if header {
        rows.push(
            ["BLOCK ULID", "MIN TIME", "MAX TIME", "DURATION", "NUM SAMPLES", "NUM CHUNKS", "NUM SERIES", "SIZE"]
                .map(String::from)
                .to_vec(),
        );
    }
    for (m, size) in blocks {
        rows.push(vec![
            m.ulid.to_string(),
            time(m.min_time),
            time(m.max_time),
            go_duration_ms(m.max_time.wrapping_sub(m.min_time)),
            m.stats.num_samples.to_string(),
            m.stats.num_chunks.to_string(),
            m.stats.num_series.to_string(),
            if human { base2_bytes(*size as i64) } else { size.to_string() },
        ]);
    }
    tabwriter(&rows, 13)
}

fn open_dir_blocks(dir: &Path) -> Result<Vec<Block>> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let (blocks, errors) = open_blocks(dir);
    for (path, e) in errors {
        eprintln!("warning: skipping block {}: {e}", path.display());
    }
    Ok(blocks)
}

fn list(a: &ListArgs) -> Result<()> {
    let blocks = open_dir_blocks(&a.dir)?;
    let rows: Vec<(&BlockMeta, u64)> = blocks.iter().map(|b| (b.meta(), b.size_bytes())).collect();
    print!("{}", block_table(&rows, a.human_readable, true));
    Ok(())
}

/// Selects from one block and decodes every sample once, so a block whose series or
/// chunks are damaged is found before anything of it is printed.
fn select_checked(
    b: &Block,
    matchers: Option<&[norn_model::Matcher]>,
    mint: i64,
    maxt: i64,
) -> norn_tsdb::Result<Vec<Series>> {
    let series = match matchers {
        Some(m) => b.select(m, mint, maxt)?,
        None => b.select_all(mint, maxt)?,
    };
    for s in &series {
        for smp in s.samples(mint, maxt) {
            smp?;
        }
    }
    Ok(series)
}

fn dump(a: &DumpArgs) -> Result<()> {
    let matchers = a.selector.as_deref().map(parse_selector).transpose().map_err(anyhow::Error::msg)?;
    let blocks = open_dir_blocks(&a.dir)?;
    let mut sets = Vec::with_capacity(blocks.len());
    for b in &blocks {
        match select_checked(b, matchers.as_deref(), a.min_time, a.max_time) {
            Ok(s) => sets.push(s),
            Err(e) => eprintln!("warning: skipping block {}: {e}", b.meta().ulid),
        }
    }
    // The head, when the directory has a WAL (a Prometheus data dir), as promtool does.
    if a.dir.join("wal").is_dir() {
        let newest = blocks.iter().map(|b| b.meta().max_time).max().unwrap_or(i64::MIN);
        let head = super::wal_head::read_wal_head(&a.dir, newest).context("reading the WAL")?;
        if let Some(w) = head.warning {
            eprintln!("warning: {w}; the head is served up to the damage");
        }
        let selected: Vec<Series> = head
            .series
            .into_iter()
            .filter(|s| {
                matchers.as_ref().is_none_or(|ms| ms.iter().all(|m| m.matches(s.labels.get(&m.name).unwrap_or(""))))
            })
            .collect();
        sets.push(selected);
    }
    let series = merge_series(sets);
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    for s in &series {
        let lbls = s.labels.to_string();
        for smp in s.samples(a.min_time, a.max_time) {
            // Like promtool 2.42, a series' dump stops at its first non-float sample.
            let Sample::Float(t, v) = smp.with_context(|| format!("reading series {lbls}"))? else { break };
            writeln!(out, "{lbls} {} {t}", go_format_g(v))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn analyze(a: &AnalyzeArgs) -> Result<()> {
    let blocks = open_dir_blocks(&a.dir)?;
    let block = match &a.block_id {
        Some(id) => blocks.iter().find(|b| b.meta().ulid.to_string() == *id),
        None => blocks.last(),
    };
    let Some(block) = block else {
        bail!("block {} not found", a.block_id.as_deref().unwrap_or(""));
    };
    let text = analyze_block(block, a.limit, a.extended)?;
    print!("{text}");
    Ok(())
}

/// promtool's `analyzeBlock` report. Where promtool's order among equal counts depends
/// on Go map iteration, ties are broken by key here.
fn analyze_block(block: &Block, limit: usize, extended: bool) -> Result<String> {
    use std::fmt::Write as _;
    let meta = block.meta();
    let ir = block.index();
    let mut o = String::new();
    let span = meta.max_time.wrapping_sub(meta.min_time);
    writeln!(o, "Block ID: {}", meta.ulid)?;
    writeln!(o, "Duration: {}", go_duration_ms(span))?;
    writeln!(o, "Series: {}", meta.stats.num_series)?;
    let names = ir.label_names();
    writeln!(o, "Label names: {}", names.len())?;

    let print_info = |o: &mut String, mut infos: Vec<(String, u64)>| {
        infos.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (k, m) in infos.into_iter().take(limit) {
            let _ = writeln!(o, "{m} {k}");
        }
    };

    let mut labels_uncovered: HashMap<String, u64> = HashMap::new();
    let mut pairs_uncovered: HashMap<String, u64> = HashMap::new();
    let mut pairs_count: HashMap<String, u64> = HashMap::new();
    let mut entries = 0u64;
    let mut refs = Vec::new();
    let mut fullness = [0u64; 10];
    let mut total_chunks = 0u64;
    for id in ir.all_postings()? {
        let lbls = ir.series_into(id, &mut refs)?;
        let (Some(first), Some(last)) = (refs.first(), refs.last()) else { continue };
        // Go computes this in uint64, wrapping when a series outspans its block.
        let uncovered = (span as u64).wrapping_sub(last.max_time.wrapping_sub(first.min_time) as u64);
        for (n, v) in lbls.iter() {
            let key = format!("{n}={v}");
            *labels_uncovered.entry(n.to_string()).or_default() =
                labels_uncovered.get(n).copied().unwrap_or(0).wrapping_add(uncovered);
            let e = pairs_uncovered.entry(key.clone()).or_default();
            *e = e.wrapping_add(uncovered);
            *pairs_count.entry(key).or_default() += 1;
            entries += 1;
        }
        if extended {
            for r in &refs {
                let n = block.chunks().chunk(r.chunk_ref)?.num_samples().min(120);
                let bucket = ((10.0 * n as f64 / 120.0).ceil() as usize).saturating_sub(1);
                fullness[bucket.min(9)] += 1;
                total_chunks += 1;
            }
        }
    }
    writeln!(o, "Postings (unique label pairs): {}", pairs_uncovered.len())?;
    writeln!(o, "Postings entries (total label pairs): {entries}")?;
    let churn = |m: u64| (m as f64 / span as f64) as u64;

    writeln!(o, "\nLabel pairs most involved in churning:")?;
    print_info(&mut o, pairs_uncovered.into_iter().map(|(k, m)| (k, churn(m))).collect());
    writeln!(o, "\nLabel names most involved in churning:")?;
    print_info(&mut o, labels_uncovered.into_iter().map(|(k, m)| (k, churn(m))).collect());
    writeln!(o, "\nMost common label pairs:")?;
    print_info(&mut o, pairs_count.into_iter().collect());

    writeln!(o, "\nLabel names with highest cumulative label value length:")?;
    print_info(
        &mut o,
        names.iter().map(|n| (n.to_string(), ir.label_values(n).iter().map(|v| v.len() as u64).sum())).collect(),
    );
    writeln!(o, "\nHighest cardinality labels:")?;
    print_info(&mut o, names.iter().map(|n| (n.to_string(), ir.label_values(n).len() as u64)).collect());
    writeln!(o, "\nHighest cardinality metric names:")?;
    let mut metric_names = Vec::new();
    for v in ir.label_values("__name__") {
        metric_names.push((v.to_string(), ir.postings("__name__", v)?.len() as u64));
    }
    print_info(&mut o, metric_names);

    if extended {
        writeln!(o, "\nCompaction analysis:")?;
        writeln!(o, "Fullness: Amount of samples in chunks (100% is 120 samples)")?;
        for (i, count) in fullness.iter().enumerate() {
            let pct = (100 * count).checked_div(total_chunks).unwrap_or(0);
            writeln!(o, "{:>7}%: {}", (i + 1) * 10, "#".repeat(pct as usize))?;
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_table_matches_promtool() {
        // Lines as promtool 2.42 printed them for the same metas.
        let mk = |id: &str, min: i64, max: i64, samples: u64, size: u64| {
            let mut m = BlockMeta::new(id.parse().unwrap(), min, max);
            m.stats.num_samples = samples;
            m.stats.num_chunks = 3;
            m.stats.num_series = 3;
            (m, size)
        };
        let a = mk("01M81D2DQD27JBNRNFYA7YRMMS", 1700000000000, 1700006360001, 162, 1154);
        let b = mk("01M81D2DR37DWKNHHTR0M52BQ6", 1700013680000, 1700014280001, 18, 871);
        assert_eq!(
            block_table(&[(&a.0, a.1)], false, true),
            "BLOCK ULID                  MIN TIME       MAX TIME       DURATION     NUM SAMPLES  NUM CHUNKS   \
             NUM SERIES   SIZE\n01M81D2DQD27JBNRNFYA7YRMMS  1700000000000  1700006360001  1h46m0.001s  162          \
             3            3            1154\n"
        );
        assert_eq!(
            block_table(&[(&b.0, b.1)], true, false),
            "01M81D2DR37DWKNHHTR0M52BQ6  2023-11-15 02:01:20 +0000 UTC  2023-11-15 02:11:20 +0000 UTC  \
             10m0.001s    18           3            3            871B\n"
        );
    }

    #[test]
    fn durations() {
        for (s, want) in [("2h", 7_200_000), ("1d", 86_400_000), ("1h30m", 5_400_000), ("1.5h", 5_400_000), ("0", 0)] {
            assert_eq!(parse_duration_ms(s).unwrap(), want, "{s}");
        }
        for s in ["", "h", "2x", "-1h"] {
            assert!(parse_duration_ms(s).is_err(), "{s}");
        }
    }
}
