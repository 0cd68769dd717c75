//! `norn query` as a process: it serves what a `norn receive` process holds, promtool
//! can query it, and it exits cleanly on SIGTERM.

mod receive_support;

use std::process::Command;
use std::time::Duration;

use norn_testkit::receive::Receiver;
use norn_testkit::{ProcessGuard, free_port, http_get, norn_bin, require_tool, wait_ready};
use receive_support::{now_ms, post, write_body};

#[test]
fn norn_query_process_serves_a_receiver_to_promtool() {
    let Some(promtool) = require_tool("promtool") else { return };
    let work = norn_testkit::tempdir().unwrap();
    let mut r = Receiver::new("r0", work.path(), &["--label=replica=\"r0\"".to_string()]);
    r.start();
    let t = now_ms() - 10_000;
    let body = write_body(&[(vec![("__name__", "cli_metric"), ("job", "x")], vec![(t - 15_000, 1.0), (t, 42.0)])]);
    let (code, msg) = post(r.rw_port, None, &body);
    assert!(code == 200 || code == 204, "{code} {msg}");

    let (http, grpc) = (free_port(), free_port());
    let mut q = ProcessGuard::spawn(
        "norn query",
        Command::new(norn_bin())
            .arg("query")
            .arg(format!("--http-address=127.0.0.1:{http}"))
            .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
            .arg(format!("--endpoint={}", r.grpc_addr()))
            .arg("--query.replica-label=replica"),
        &work.path().join("query.log"),
    );
    let log = || std::fs::read_to_string(work.path().join("query.log")).unwrap_or_default();
    assert!(wait_ready(http, "/-/ready", Duration::from_secs(60)), "query not ready:\n{}", log());

    // Ready means one discovery round ran; an Info call that timed out on a loaded machine
    // leaves the receiver for a later round: polled (bounded).
    let mut answer = (0, String::new());
    for _ in 0..600 {
        answer = http_get(http, "/api/v1/query?query=cli_metric").unwrap();
        if answer.1.contains("\"42\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = answer;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"42\""), "{body}");
    assert!(!body.contains("replica"), "{body}");

    let out = Command::new(promtool)
        .args(["query", "instant", &format!("http://127.0.0.1:{http}"), "cli_metric"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("=> 42 @["),
        "promtool: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let _ = Command::new("kill").arg("-TERM").arg(q.id().to_string()).status();
    let mut status = None;
    for _ in 0..600 {
        if let Some(s) = q.try_wait() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(status.is_some_and(|s| s.success()), "norn query did not exit cleanly on SIGTERM: {status:?}\n{}", log());
}

/// `--endpoint.sd-files` with a YAML file: its targets are used, a change is picked up at
/// the next refresh, and a broken file is logged with its name while its last good
/// targets stay in use.
#[test]
fn norn_query_reads_yaml_sd_files() {
    let work = norn_testkit::tempdir().unwrap();
    let t = now_ms() - 10_000;
    let rs = receivers_with_one_metric_each(work.path(), t, &[("r0", "sd_a"), ("r1", "sd_b")]);
    let sd = work.path().join("stores.yaml");
    let write = |text: String| {
        // Replaced in one rename, as config management does, so no half-written file is read.
        let tmp = work.path().join("stores.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &sd).unwrap();
    };
    write(format!("# receivers\n- targets:\n    - {}\n  labels:\n    zone: a\n", rs[0].grpc_addr()));
    let (http, grpc) = (free_port(), free_port());
    let _q = ProcessGuard::spawn(
        "norn query",
        Command::new(norn_bin())
            .arg("query")
            .arg(format!("--http-address=127.0.0.1:{http}"))
            .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
            .arg(format!("--endpoint.sd-files={}", sd.display()))
            .arg("--endpoint.refresh-interval=200ms")
            .arg("--query.replica-label=replica"),
        &work.path().join("query.log"),
    );
    let log = || std::fs::read_to_string(work.path().join("query.log")).unwrap_or_default();
    assert!(wait_ready(http, "/-/ready", Duration::from_secs(60)), "query not ready:\n{}", log());
    // Which of the two metrics the querier serves, once it serves `want` (bounded wait).
    let served = |want: &str| -> (bool, bool) {
        let has = |m: &str| {
            let (code, body) = http_get(http, &format!("/api/v1/query?query={m}")).unwrap();
            assert_eq!(code, 200, "{body}");
            body.contains(&format!("\"__name__\":\"{m}\""))
        };
        for _ in 0..600 {
            if has(want) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (has("sd_a"), has("sd_b"))
    };
    assert_eq!(served("sd_a"), (true, false), "{}", log());
    write(format!("- targets: ['{}']\n", rs[1].grpc_addr()));
    let mut now = (true, false);
    for _ in 0..600 {
        now = served("sd_b");
        if now == (false, true) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(now, (false, true), "after the change:\n{}", log());
    write(format!("- targets: ['{}'\n", rs[0].grpc_addr()));
    let mut reported = false;
    for _ in 0..600 {
        reported = log().lines().any(|l| l.contains("reading endpoint SD file") && l.contains("stores.yaml"));
        if reported {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reported, "broken file not reported:\n{}", log());
    assert_eq!(served("sd_b"), (false, true), "the last good targets must stay:\n{}", log());
    // A name that does not say the format is refused at start, naming the file.
    let bad = work.path().join("stores.txt");
    std::fs::write(&bad, "[]").unwrap();
    let bad_log = refused_at_start(work.path(), &format!("--endpoint.sd-files={}", bad.display()));
    assert!(bad_log.contains("stores.txt") && bad_log.contains("unsupported file extension"), "{bad_log}");
    for mut r in rs {
        r.stop();
    }
}

/// `--endpoint.sd-files` with patterns (`*.json`, `tg_*.yml`): a file that appears is
/// used, one that goes takes its targets with it, one that breaks is logged with its
/// name and keeps its last good targets; a pattern in a directory is refused at start.
#[test]
fn norn_query_follows_sd_file_globs() {
    let work = norn_testkit::tempdir().unwrap();
    let t = now_ms() - 10_000;
    let rs = receivers_with_one_metric_each(work.path(), t, &[("r0", "glob_a"), ("r1", "glob_b")]);
    let sd = work.path().join("sd");
    std::fs::create_dir_all(&sd).unwrap();
    // Written in one rename, so no half-written file is read.
    let write = |name: &str, text: String| {
        let tmp = work.path().join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, sd.join(name)).unwrap();
    };
    let (http, grpc) = (free_port(), free_port());
    let _q = ProcessGuard::spawn(
        "norn query",
        Command::new(norn_bin())
            .arg("query")
            .arg(format!("--http-address=127.0.0.1:{http}"))
            .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
            .arg(format!("--endpoint.sd-files={},{}", sd.join("*.json").display(), sd.join("tg_*.yml").display()))
            .arg("--endpoint.refresh-interval=200ms")
            .arg("--query.replica-label=replica"),
        &work.path().join("query.log"),
    );
    let log = || std::fs::read_to_string(work.path().join("query.log")).unwrap_or_default();
    assert!(wait_ready(http, "/-/ready", Duration::from_secs(60)), "query not ready:\n{}", log());
    let has = |m: &str| {
        let (code, body) = http_get(http, &format!("/api/v1/query?query={m}")).unwrap();
        assert_eq!(code, 200, "{body}");
        body.contains(&format!("\"__name__\":\"{m}\""))
    };
    // Waits (bounded) until the querier serves exactly `want` of the two metrics.
    let until = |want: (bool, bool), what: &str| {
        let mut now = (false, false);
        for _ in 0..600 {
            now = (has("glob_a"), has("glob_b"));
            if now == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: serving {now:?}, want {want:?}\n{}", log());
    };
    write("a.json", format!(r#"[{{"targets": ["{}"]}}]"#, rs[0].grpc_addr()));
    until((true, false), "a.json appeared");
    write("tg_b.yml", format!("- targets: ['{}']\n", rs[1].grpc_addr()));
    // Not matched by either pattern: ignored.
    write("other.yml", format!("- targets: ['{}']\n", rs[0].grpc_addr()));
    until((true, true), "tg_b.yml appeared");
    std::fs::remove_file(sd.join("a.json")).unwrap();
    until((false, true), "a.json removed");
    write("tg_b.yml", format!("- targets: ['{}'\n", rs[1].grpc_addr()));
    let mut reported = false;
    for _ in 0..600 {
        reported = log().lines().any(|l| l.contains("reading endpoint SD file") && l.contains("tg_b.yml"));
        if reported {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reported, "broken file not reported:\n{}", log());
    // The error is logged before the refresh that follows it applies the targets: hold
    // the state over several refresh intervals (200 ms) rather than one poll.
    for _ in 0..10 {
        assert_eq!((has("glob_a"), has("glob_b")), (false, true), "tg_b.yml broken: its last good targets stay");
        std::thread::sleep(Duration::from_millis(150));
    }
    // A pattern in a directory is refused at start, naming it.
    let bad_log = refused_at_start(
        work.path(),
        &format!("--endpoint.sd-files={}", work.path().join("*").join("x.yml").display()),
    );
    assert!(bad_log.contains("x.yml") && bad_log.contains("only the file name may be a pattern"), "{bad_log}");
    for mut r in rs {
        r.stop();
    }
}

/// Starts `norn query` with `flag` (and free ports), waits (bounded) for it to exit and
/// checks it failed; returns its log.
fn refused_at_start(work: &std::path::Path, flag: &str) -> String {
    let (http, grpc) = (free_port(), free_port());
    let log = work.join("query-bad.log");
    let mut q = ProcessGuard::spawn(
        "norn query (refused flag)",
        Command::new(norn_bin())
            .arg("query")
            .arg(format!("--http-address=127.0.0.1:{http}"))
            .arg(format!("--grpc-address=127.0.0.1:{grpc}"))
            .arg(flag),
        &log,
    );
    let mut status = None;
    for _ in 0..600 {
        status = q.try_wait();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.is_some_and(|s| !s.success()), "{flag}: {status:?}\n{text}");
    text
}

/// One receiver per `(name, metric)`, replica label `name`, each holding one sample of its
/// metric at `t`.
fn receivers_with_one_metric_each(work: &std::path::Path, t: i64, named: &[(&str, &str)]) -> Vec<Receiver> {
    let mut rs = Vec::new();
    for (name, metric) in named {
        let mut r = Receiver::new(name, work, &[format!("--label=replica=\"{name}\"")]);
        r.start();
        let body = write_body(&[(vec![("__name__", *metric)], vec![(t, 1.0)])]);
        let (code, msg) = post(r.rw_port, None, &body);
        assert!(code == 200 || code == 204, "{code} {msg}");
        rs.push(r);
    }
    rs
}
