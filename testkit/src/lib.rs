//! Helpers for Norn's integration tests: locating the `norn` binary and reference tools
//! (promtool, prometheus), running them with captured output, and temporary directories.

pub mod dns;
pub mod receive;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use tempfile::{TempDir, tempdir};

/// The `norn` binary built for this test run.
///
/// Integration tests live in their own crate, so Cargo does not hand them
/// `CARGO_BIN_EXE_norn`; the binary sits next to the test executable's `deps/` folder.
/// `NORN_BIN` overrides the lookup.
pub fn norn_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NORN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile> directory");
    let bin = profile_dir.join(format!("norn{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} not found: build it first with `cargo build -p norn`", bin.display());
    bin
}

/// A reference tool from PATH (e.g. `promtool`), or `None` when it is not installed.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// A reference tool that the test cannot do without. Missing tools fail the test rather
/// than skipping it, unless `NORN_ALLOW_MISSING_TOOLS=1`, so CI cannot pass vacuously.
pub fn require_tool(tool: &str) -> Option<PathBuf> {
    match which(tool) {
        Some(p) => Some(p),
        None if std::env::var("NORN_ALLOW_MISSING_TOOLS").as_deref() == Ok("1") => {
            eprintln!("skipping: {tool} not installed and NORN_ALLOW_MISSING_TOOLS=1");
            None
        }
        None => panic!("{tool} is not installed; install it (see .ci/run) or set NORN_ALLOW_MISSING_TOOLS=1"),
    }
}

/// Runs a command to completion, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command to completion and returns its output whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a process the test starts
/// later: bound, read back and released.
///
/// Two races make a plain bind-to-port-0 unsafe on a busy machine: the kernel can hand
/// the same port to two calls of one test binary (tests run in parallel threads), and it
/// takes ports for outgoing connections (every HTTP and gRPC client of the tests) from the
/// same ephemeral range, so one of them can take the port before the server binds it.
/// So ports come from below the ephemeral range (`ip_local_port_range`), never twice in
/// one process, starting at an offset derived from the process id so that test binaries
/// running at the same time on one machine rarely meet. Falls back to port 0 when no
/// port below the range is free.
pub fn free_port() -> u16 {
    free_port_where(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A port on 127.0.0.1 free for both UDP and TCP (a DNS server binds both), chosen as
/// [`free_port`] chooses.
pub fn free_udp_tcp_port() -> u16 {
    free_port_where(|p| {
        std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
    })
}

fn free_port_where(free: impl Fn(u16) -> bool) -> u16 {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    // Ports handed out by this process (whether or not their user bound them yet).
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 12_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(65_535);
    if high > LOW + 1_000 {
        let span = high - LOW;
        let start = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (LOW + (start + n) % span) as u16;
            let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
            if given.contains(&port) || !free(port) {
                continue;
            }
            given.push(port);
            return port;
        }
    }
    // No room below the ephemeral range: let the kernel choose, still never twice.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        drop(l);
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && free(port) {
            given.push(port);
            return port;
        }
    }
}

/// A child process that is killed (and reaped) when the guard is dropped, so a failing
/// test does not leave servers running.
#[derive(Debug)]
pub struct ProcessGuard {
    child: std::process::Child,
}

impl ProcessGuard {
    /// Spawns `cmd` with stdout and stderr sent to `log` (a file the test can print on
    /// failure).
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> ProcessGuard {
        let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        let child = cmd
            .stdout(out)
            .stderr(err)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}): {e}"));
        ProcessGuard { child }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Asks the process to stop with SIGTERM (via `kill`, to avoid a libc dependency) and
    /// waits up to `timeout` for it to exit. Returns whether it exited in time; the guard
    /// still kills it on drop otherwise.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> bool {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.try_wait().is_some() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }

    /// Whether the process has exited (and with what status).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET against `127.0.0.1:port`, returning status code and body.
/// Enough for readiness probes and JSON API calls without an HTTP client dependency.
pub fn http_get(port: u16, path_and_query: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    // Generous: a debug build on a loaded CI machine answers a heavy query slowly.
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed HTTP response: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Polls `GET path` on `127.0.0.1:port` every 100 ms until it answers 200, for at most
/// `timeout`. Returns whether it became ready.
pub fn wait_ready(port: u16, path: &str, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if matches!(http_get(port, path), Ok((200, _))) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// A Prometheus (binary `prom`) in `dir` whose only data is `remote_read` from `read_url`
/// (`read_recent: true`, scraping nothing), started with `extra` flags and ready: its
/// process and HTTP port. Panics with its log when it does not become ready in 60 s.
pub fn start_remote_read_prometheus(prom: &Path, dir: &Path, read_url: &str, extra: &[&str]) -> (ProcessGuard, u16) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let cfg = dir.join("prometheus.yml");
    let yml = format!("global:\n  scrape_interval: 1h\nremote_read:\n  - url: {read_url}\n    read_recent: true\n");
    std::fs::write(&cfg, yml).unwrap_or_else(|e| panic!("writing {}: {e}", cfg.display()));
    let port = free_port();
    let log = dir.join("prometheus.log");
    let guard = ProcessGuard::spawn(
        "prometheus (remote read)",
        Command::new(prom)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .args(extra)
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        &log,
    );
    if !wait_ready(port, "/-/ready", std::time::Duration::from_secs(60)) {
        panic!("prometheus reading {read_url} not ready:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }
    (guard, port)
}
