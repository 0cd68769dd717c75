//! Runs every upstream promqltest script and compares pass/fail counts with the
//! committed baseline (`conformance-baseline.txt`: `name passed failed skipped`).

use std::collections::BTreeMap;

use norn_promql::conformance::{Options, run_file, testdata_dir};

fn baseline() -> BTreeMap<String, (usize, usize, usize)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conformance-baseline.txt"))
        .expect("read conformance-baseline.txt");
    let mut m = BTreeMap::new();
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() != 4 || l.starts_with('#') {
            continue;
        }
        m.insert(w[0].to_string(), (w[1].parse().unwrap(), w[2].parse().unwrap(), w[3].parse().unwrap()));
    }
    m
}

#[test]
fn upstream_scripts_match_baseline() {
    let dir = testdata_dir();
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(rd) => {
            rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "test")).collect()
        }
        Err(e) => {
            eprintln!("skipping: cannot read {}: {e} (set NORN_PROMQL_TESTDATA)", dir.display());
            return;
        }
    };
    files.sort();
    let base = baseline();
    let opts = Options::default();
    let mut problems = Vec::new();
    let (mut tp, mut tf, mut ts) = (0, 0, 0);
    for f in &files {
        let rep = run_file(f, &opts);
        let (p, fl, s) = (rep.passed, rep.failed(), rep.skipped.len());
        tp += p;
        tf += fl;
        ts += s;
        println!("{} {} {} {}", rep.file, p, fl, s);
        if let Some(e) = &rep.error {
            problems.push(format!("{}: script error: {e}", rep.file));
        }
        match base.get(&rep.file) {
            None => problems.push(format!("{}: not in baseline (got {p} {fl} {s})", rep.file)),
            Some(&(bp, bf, _)) => {
                if fl > bf {
                    for c in &rep.failures {
                        eprintln!("{c}");
                    }
                    problems.push(format!("{}: {fl} failures, baseline allows {bf}", rep.file));
                }
                if bp < p {
                    problems
                        .push(format!("{}: baseline claims {bp} passes but {p} pass; update the baseline", rep.file));
                }
                if bp > p {
                    problems.push(format!("{}: {p} passes, baseline has {bp}", rep.file));
                }
            }
        }
    }
    println!("{tp} passed, {tf} failed, {ts} skipped");
    assert!(problems.is_empty(), "conformance regressions:\n{}", problems.join("\n"));
}
