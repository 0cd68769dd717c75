//! `norn tools promql-test` on an upstream promqltest script: every case passes and the
//! summary line has the promised shape.

use std::process::Command;

use norn_testkit::{norn_bin, run};

fn conformance_dir() -> std::path::PathBuf {
    norn_promql::conformance::testdata_dir()
}

#[test]
fn promql_test_runs_upstream_script() {
    let file = conformance_dir().join("literals.test");
    assert!(file.exists(), "{} missing", file.display());
    let out = run(Command::new(norn_bin()).args(["tools", "promql-test"]).arg(&file));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    let parts: Vec<&str> = last.split(' ').collect();
    assert_eq!(parts.len(), 6, "summary line {last:?}");
    assert_eq!((parts[1], parts[3], parts[5]), ("passed,", "failed,", "skipped"), "summary line {last:?}");
    assert!(parts[0].parse::<usize>().unwrap() > 0, "nothing ran: {last:?}");
    assert_eq!(parts[2], "0", "failures:\n{stdout}");
}

#[test]
fn promql_test_fails_on_wrong_expectation() {
    let dir = norn_testkit::tempdir().unwrap();
    let file = dir.path().join("bad.test");
    std::fs::write(&file, "load 1m\n  m 1 2 3\n\neval instant at 1m m\n  m 7\n\neval instant at 1m m\n  m 2\n")
        .unwrap();
    let out = run(Command::new(norn_bin()).args(["tools", "promql-test"]).arg(&file));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "expected failure exit\n{stdout}");
    assert!(stdout.contains("bad.test:4:"), "failing case not located:\n{stdout}");
    assert_eq!(stdout.lines().last(), Some("1 passed, 1 failed, 0 skipped"), "{stdout}");
}
