//! `norn tools tsdb …` against promtool 2.42 and a real Prometheus: blocks we write are
//! read by them, blocks they write are read by us, and the printed outputs agree.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use norn_testkit::{ProcessGuard, free_port, http_get, norn_bin, require_tool, run, run_ok, tempdir, wait_ready};

/// First sample time (s): 1700000000 lies 53 min into a 2 h block, so the data covers a
/// partial first block, full middle blocks and a partial last one.
const BASE: i64 = 1_700_000_000;
const STEP: i64 = 30;
const SAMPLES: i64 = 7 * 3600 / STEP;

/// An OpenMetrics input exercising the edges: NaN, ±Inf, huge and tiny floats, repeated
/// values, label values with quotes, backslashes, newlines and UTF-8, fractional-second
/// timestamps, a counter with exemplars, several 2 h blocks.
fn openmetrics_input() -> String {
    let specials =
        ["NaN", "+Inf", "-Inf", "1e308", "5e-324", "-0", "0.1", "42", "42", "-1.5e-7", "1.7976931348623157e308"];
    let mut s = String::new();
    let ts = |i: i64| -> String {
        match i % 4 {
            0 => format!("{}", BASE + i * STEP),
            1 => format!("{}.25", BASE + i * STEP),
            2 => format!("{}.123", BASE + i * STEP),
            _ => format!("{}.5", BASE + i * STEP),
        }
    };
    s.push_str("# HELP interop_gauge A gauge with awkward values.\n# TYPE interop_gauge gauge\n");
    for (kind, off) in [("special", 0usize), ("quote\\\"back\\\\slash\\nnewline", 3), ("utf8-é-日本-🙂", 5)] {
        for i in 0..SAMPLES {
            let v = specials[(i as usize + off) % specials.len()];
            writeln!(s, "interop_gauge{{kind=\"{kind}\",z=\"last\"}} {v} {}", ts(i)).unwrap();
        }
    }
    s.push_str("# TYPE interop_requests counter\n# UNIT interop_requests requests\n");
    for code in ["200", "500"] {
        for i in 0..SAMPLES {
            let v = i * if code == "200" { 7 } else { 1 };
            if i % 50 == 0 {
                writeln!(
                    s,
                    "interop_requests_total{{code=\"{code}\"}} {v} {} # {{trace_id=\"abc\"}} 1 {}",
                    ts(i),
                    BASE
                )
                .unwrap();
            } else {
                writeln!(s, "interop_requests_total{{code=\"{code}\"}} {v} {}", ts(i)).unwrap();
            }
        }
    }
    s.push_str("# TYPE interop_repeat gauge\n");
    for i in 0..SAMPLES {
        writeln!(s, "interop_repeat 7 {}", BASE + i * STEP).unwrap();
    }
    s.push_str("# TYPE interop_sparse unknown\n");
    for i in (0..SAMPLES).step_by(20) {
        writeln!(s, "interop_sparse{{}} {} {}", i as f64 * 0.5, BASE + i * STEP).unwrap();
    }
    s.push_str("# EOF\n");
    s
}

fn norn(args: &[&str]) -> Command {
    let mut c = Command::new(norn_bin());
    c.args(args);
    c
}

fn promtool(args: &[&str]) -> Option<Command> {
    let bin = require_tool("promtool")?;
    let mut c = Command::new(bin);
    c.args(args);
    Some(c)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

fn sorted_lines(s: &str) -> Vec<&str> {
    let mut v: Vec<&str> = s.lines().collect();
    v.sort_unstable();
    v
}

/// `(minTime, maxTime)` from a block's meta.json.
fn block_range(b: &Path) -> (i64, i64) {
    let m = std::fs::read_to_string(b.join("meta.json")).unwrap();
    let num = |key: &str| -> i64 {
        let at = m.find(key).unwrap() + key.len();
        m[at..].trim_start_matches([':', ' ']).split(',').next().unwrap().trim().parse().unwrap()
    };
    (num("\"minTime\""), num("\"maxTime\""))
}

/// Block directories by time (ULIDs made within one millisecond are not ordered).
fn block_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().len() == 26)
        .collect();
    v.sort_by_key(|p| block_range(p));
    v
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() { dir_bytes(&e.path()) } else { e.metadata().unwrap().len() }
        })
        .sum()
}

/// promtool 2.42's dump refuses a directory without `wal/`; it also leaves a
/// `chunks_head/` behind, so dump a copy-free path that tolerates both.
fn promtool_dump(dir: &Path) -> Option<String> {
    std::fs::create_dir_all(dir.join("wal")).unwrap();
    let out = run_ok(&mut promtool(&["tsdb", "dump", dir.to_str().unwrap()])?);
    Some(stdout(&out))
}

struct Fixture {
    _tmp: norn_testkit::TempDir,
    input: PathBuf,
    ours: PathBuf,
    theirs: PathBuf,
}

/// Backfills the same input with norn and with promtool.
fn fixture() -> Option<Fixture> {
    let tmp = tempdir().unwrap();
    let input = tmp.path().join("input.om");
    std::fs::write(&input, openmetrics_input()).unwrap();
    let ours = tmp.path().join("ours");
    let theirs = tmp.path().join("theirs");
    let mut p = promtool(&["tsdb", "create-blocks-from", "openmetrics", "-q"])?;
    run_ok(p.arg(&input).arg(&theirs));
    let out = run_ok(norn(&["tools", "tsdb", "create-blocks-from", "openmetrics"]).arg(&input).arg(&ours));
    let table = stdout(&out);
    assert!(table.starts_with("BLOCK ULID"), "{table}");
    assert_eq!(table.lines().count(), 1 + block_dirs(&ours).len());
    Some(Fixture { _tmp: tmp, input, ours, theirs })
}

#[test]
fn promtool_reads_our_blocks_like_its_own() {
    let Some(f) = fixture() else { return };
    let ours = block_dirs(&f.ours);
    let theirs = block_dirs(&f.theirs);
    assert_eq!(ours.len(), theirs.len());
    assert!(ours.len() >= 4, "input should span several blocks");
    let dump_ours = promtool_dump(&f.ours).unwrap();
    let dump_theirs = promtool_dump(&f.theirs).unwrap();
    assert_eq!(dump_ours.lines().count(), dump_theirs.lines().count());
    assert_eq!(sorted_lines(&dump_ours), sorted_lines(&dump_theirs));
    for b in &ours {
        let id = b.file_name().unwrap().to_str().unwrap();
        run_ok(&mut promtool(&["tsdb", "analyze", "--extended", f.ours.to_str().unwrap(), id]).unwrap());
    }
    // promtool 2.42 predates Prometheus's 1 KiB cap on XOR chunks, which we follow, so
    // series whose values compress badly (NaN, ±Inf, 1e308 …) are cut into more chunks
    // here; the samples are the same and sizes stay close.
    let (so, st) = (ours.iter().map(|p| dir_bytes(p)).sum::<u64>(), theirs.iter().map(|p| dir_bytes(p)).sum::<u64>());
    let ratio = so as f64 / st as f64;
    println!("block size ratio norn/promtool: {ratio:.4} ({so} / {st} bytes)");
    assert!((0.95..=1.05).contains(&ratio), "size ratio {ratio}");
    assert!(f.input.exists());
}

/// With values that compress normally, our blocks are byte for byte promtool's (bar
/// meta.json, whose ULID differs and which has the newer `numFloatSamples` stat): chunk
/// boundaries, every encoded bit, and Go bstream's trailing empty byte after an aligned
/// final write.
#[test]
fn plain_data_gives_identical_block_files() {
    let tmp = tempdir().unwrap();
    let mut text = String::new();
    for s in 0..20 {
        writeln!(text, "# TYPE plain_{s} gauge").unwrap();
        for i in 0..4 * 240 {
            writeln!(text, "plain_{s}{{instance=\"host-{s}\"}} {} {}", (i * s) as f64 * 1.5, BASE + i * 15).unwrap();
        }
    }
    text.push_str("# EOF\n");
    let input = tmp.path().join("plain.om");
    std::fs::write(&input, text).unwrap();
    let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    let Some(mut p) = promtool(&["tsdb", "create-blocks-from", "openmetrics", "-q"]) else { return };
    run_ok(p.arg(&input).arg(&theirs));
    run_ok(norn(&["tools", "tsdb", "create-blocks-from", "openmetrics", "-q"]).arg(&input).arg(&ours));
    let (a, b) = (block_dirs(&ours), block_dirs(&theirs));
    assert_eq!(a.len(), b.len());
    assert!(a.len() >= 2);
    for (a, b) in a.iter().zip(&b) {
        for file in ["index", "chunks/000001", "tombstones"] {
            assert!(std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(), "{file} differs");
        }
    }
}

#[test]
fn our_tools_print_what_promtool_prints() {
    let Some(f) = fixture() else { return };
    let dir = f.theirs.to_str().unwrap();
    // dump: exact, including order.
    let theirs = promtool_dump(&f.theirs).unwrap();
    let ours = stdout(&run_ok(&mut norn(&["tools", "tsdb", "dump", dir])));
    assert_eq!(ours, theirs);
    for args in [
        vec!["--match", "{kind=~\"utf8.*|special\"}"],
        vec!["--match", "interop_requests_total{code!=\"500\"}", "--min-time", "1700003600000"],
        vec!["--min-time", "1700010000000", "--max-time", "1700012000000"],
    ] {
        let mut p = promtool(&["tsdb", "dump"]).unwrap();
        let theirs = stdout(&run_ok(p.args(&args).arg(dir)));
        let ours = stdout(&run_ok(norn(&["tools", "tsdb", "dump"]).args(&args).arg(dir)));
        assert!(!ours.is_empty());
        assert_eq!(ours, theirs, "{args:?}");
    }
    // list: exact, both formats.
    for flags in [vec![], vec!["-r"]] {
        let mut p = promtool(&["tsdb", "list"]).unwrap();
        let theirs = stdout(&run_ok(p.args(&flags).arg(dir)));
        let ours = stdout(&run_ok(norn(&["tools", "tsdb", "list"]).args(&flags).arg(dir)));
        assert_eq!(ours, theirs, "{flags:?}");
    }
    // analyze: every section. promtool orders entries with equal counts by Go map
    // iteration order, which is random, so within a section lines are compared as sets
    // (with a limit high enough that ties are not cut).
    let mut ids: Vec<String> =
        block_dirs(&f.theirs).iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
    ids.push(String::new());
    for id in ids {
        let mut args = vec!["--limit", "1000", "--extended", dir];
        if !id.is_empty() {
            args.push(&id);
        }
        let mut p = promtool(&["tsdb", "analyze"]).unwrap();
        let theirs = stdout(&run_ok(p.args(&args)));
        let ours = stdout(&run_ok(norn(&["tools", "tsdb", "analyze"]).args(&args)));
        let sections = |s: &str| -> Vec<Vec<String>> {
            s.split("\n\n")
                .map(|sec| {
                    let mut v: Vec<String> = sec.lines().map(String::from).collect();
                    if v.len() > 1 {
                        v[1..].sort();
                    }
                    v
                })
                .collect()
        };
        assert_eq!(sections(&ours), sections(&theirs), "analyze {id}");
        assert!(ours.contains("Compaction analysis:"));
    }
}

#[test]
fn prometheus_serves_our_blocks() {
    let Some(prom) = require_tool("prometheus") else { return };
    let tmp = tempdir().unwrap();
    let input = tmp.path().join("input.om");
    std::fs::write(&input, openmetrics_input()).unwrap();
    let data = tmp.path().join("data");
    run_ok(norn(&["tools", "tsdb", "create-blocks-from", "openmetrics", "-q"]).arg(&input).arg(&data));
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n").unwrap();
    let port = free_port();
    let log = tmp.path().join("prometheus.log");
    let mut guard = ProcessGuard::spawn(
        "prometheus",
        Command::new(prom)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        &log,
    );
    let ready = wait_ready(port, "/-/ready", Duration::from_secs(60));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready, "prometheus not ready (exit {:?}):\n{}", guard.try_wait(), log_text());
    // Samples from the first, a middle and the last block.
    for (query, i, want) in [
        ("interop_repeat", 10, "\"7\""),
        ("interop_requests_total%7Bcode%3D%22200%22%7D", 400, "\"2800\""),
        ("interop_sparse", 800, "\"400\""),
        ("interop_gauge%7Bkind%3D%22special%22%7D", 7, "\"42\""),
    ] {
        let t = BASE + i * STEP + 1;
        let (status, body) = http_get(port, &format!("/api/v1/query?query={query}&time={t}")).unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"status\":\"success\""), "{body}");
        assert!(body.contains(want), "query {query} at {t}: want {want} in {body}\n{}", log_text());
    }
    // The label value with quotes, backslash and newline survives the round trip.
    let (_, body) = http_get(port, "/api/v1/label/kind/values").unwrap();
    assert!(body.contains(r#""quote\"back\\slash\nnewline""#), "{body}");
    assert!(body.contains("utf8-é-日本-🙂"), "{body}");
    drop(guard);
}

#[test]
fn malformed_input_fails_cleanly() {
    let tmp = tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let good = openmetrics_input();
    let lines: Vec<&str> = good.lines().collect();
    let n = lines.len();
    let cases = [
        // Broken label block near the end, after many blocks' worth of samples.
        (format!("{}\nbad{{a=\"1\" 1 1\n# EOF\n", lines[..n - 1].join("\n")), n, "line"),
        // Missing # EOF.
        (format!("{}\n", lines[..n - 1].join("\n")), n, "# EOF"),
        // A sample going back in time within a block.
        (format!("{}\ninterop_repeat 7 {}\n# EOF\n", lines[..n - 1].join("\n"), BASE + 5), n, "out of order"),
    ];
    for (text, line, what) in cases {
        let input = tmp.path().join("bad.om");
        std::fs::write(&input, text).unwrap();
        let out = run(norn(&["tools", "tsdb", "create-blocks-from", "openmetrics"]).arg(&input).arg(&out_dir));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(&format!("line {line}")) && err.contains(what), "{err}");
        let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

#[test]
fn dump_skips_corrupt_blocks_and_names_them() {
    let tmp = tempdir().unwrap();
    let input = tmp.path().join("input.om");
    std::fs::write(&input, openmetrics_input()).unwrap();
    let data = tmp.path().join("data");
    run_ok(norn(&["tools", "tsdb", "create-blocks-from", "openmetrics", "-q"]).arg(&input).arg(&data));
    let full = stdout(&run_ok(&mut norn(&["tools", "tsdb", "dump", data.to_str().unwrap()])));
    let blocks = block_dirs(&data);
    assert!(blocks.len() >= 4);

    // A flipped byte inside chunk data (CRC mismatch) in one block, and one in the
    // series section of another block's index.
    let (chunk_victim, index_victim) = (&blocks[1], &blocks[2]);
    let seg = chunk_victim.join("chunks/000001");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let idx = index_victim.join("index");
    let mut bytes = std::fs::read(&idx).unwrap();
    let toc = bytes.len() - 52;
    // Series entries are 16-byte aligned after the section start the TOC records.
    let series_off = u64::from_be_bytes(bytes[toc + 8..toc + 16].try_into().unwrap()) as usize;
    bytes[series_off.next_multiple_of(16) + 3] ^= 0xff;
    std::fs::write(&idx, bytes).unwrap();

    let out = run_ok(&mut norn(&["tools", "tsdb", "dump", data.to_str().unwrap()]));
    let err = String::from_utf8_lossy(&out.stderr);
    for (victim, file) in [(chunk_victim, "chunks/000001"), (index_victim, "index")] {
        let id = victim.file_name().unwrap().to_str().unwrap();
        let line = err.lines().find(|l| l.contains(id)).unwrap_or_else(|| panic!("{id} not named in {err}"));
        assert!(line.contains(file) && line.contains("offset"), "{line}");
    }
    let broken = [block_range(chunk_victim), block_range(index_victim)];
    let want: Vec<&str> = full
        .lines()
        .filter(|l| {
            let t: i64 = l.rsplit(' ').next().unwrap().parse().unwrap();
            !broken.iter().any(|&(lo, hi)| lo <= t && t < hi)
        })
        .collect();
    let got = stdout(&out);
    assert!(!want.is_empty());
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
}

#[test]
fn max_block_duration_matches_promtool() {
    let tmp = tempdir().unwrap();
    let mut text = String::new();
    for s in 0..5 {
        for i in (0..40 * 3600).step_by(60) {
            writeln!(text, "long{{s=\"{s}\"}} {} {}", i % 97, BASE + i).unwrap();
        }
    }
    text.push_str("# EOF\n");
    let input = tmp.path().join("long.om");
    std::fs::write(&input, text).unwrap();
    // Columns that must agree: min/max time, samples, chunks, series (not ULID, size).
    let columns = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                [f[1], f[2], f[4], f[5], f[6]].join(" ")
            })
            .collect()
    };
    for (i, d) in ["30m", "6h", "24h", "72h"].iter().enumerate() {
        let flag = format!("--max-block-duration={d}");
        let (ours, theirs) = (tmp.path().join(format!("n{i}")), tmp.path().join(format!("p{i}")));
        let Some(mut p) = promtool(&["tsdb", "create-blocks-from", "openmetrics", &flag]) else { return };
        let theirs = stdout(&run_ok(p.arg(&input).arg(&theirs)));
        let ours = stdout(&run_ok(
            norn(&["tools", "tsdb", "create-blocks-from", "openmetrics", &flag]).arg(&input).arg(&ours),
        ));
        assert_eq!(columns(&ours), columns(&theirs), "{d}");
    }
}

/// A Prometheus data directory with only a head (WAL): our dump replays the WAL
/// read-only and prints what promtool prints.
#[test]
fn dump_reads_a_prometheus_wal() {
    let Some(prom) = require_tool("prometheus") else { return };
    let tmp = tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let log = tmp.path().join("prometheus.log");
    let mut guard = ProcessGuard::spawn(
        "prometheus",
        Command::new(prom)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        &log,
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_ready(port, "/-/ready", Duration::from_secs(60)), "not ready:\n{}", log_text());
    // Wait (bounded) until a few scrapes have been stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // At least 3 scrapes: a poll delayed on a loaded machine may first see 6 or more.
        let (_, body) = http_get(port, "/api/v1/query?query=count_over_time(up%5B1m%5D)").unwrap();
        let stored = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["result"][0]["value"][1].as_str().and_then(|n| n.parse::<u32>().ok()));
        if stored.is_some_and(|n| n >= 3) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no scrapes stored: {body}\n{}", log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(guard.terminate(Duration::from_secs(60)), "prometheus did not stop:\n{}", log_text());
    let dir = data.to_str().unwrap();
    for args in [vec![], vec!["--match", "{__name__=~\"prometheus_tsdb_head.*|up\"}"]] {
        let theirs = stdout(&run_ok(promtool(&["tsdb", "dump"]).unwrap().args(&args).arg(dir)));
        let ours = stdout(&run_ok(norn(&["tools", "tsdb", "dump"]).args(&args).arg(dir)));
        assert!(ours.lines().count() > 10, "{ours}");
        assert_eq!(ours, theirs, "{args:?}");
    }
}
