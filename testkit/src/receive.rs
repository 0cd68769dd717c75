//! Running `norn receive` processes in tests, and a minimal HTTP POST for remote writes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{ProcessGuard, free_port, norn_bin, wait_ready};

/// A `norn receive` process on loopback ports, restartable on the same ports and data
/// directory.
#[derive(Debug)]
pub struct Receiver {
    pub name: String,
    pub http_port: u16,
    pub rw_port: u16,
    pub grpc_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    extra: Vec<String>,
    guard: Option<ProcessGuard>,
    starts: u32,
}

impl Receiver {
    /// Picks ports; `extra` flags are appended to every start.
    pub fn new(name: &str, work: &Path, extra: &[String]) -> Receiver {
        Receiver {
            name: name.to_string(),
            http_port: free_port(),
            rw_port: free_port(),
            grpc_port: free_port(),
            data_dir: work.join(format!("{name}-data")),
            log: work.join(format!("{name}.log")),
            extra: extra.to_vec(),
            guard: None,
            starts: 0,
        }
    }

    /// `n` receivers `r0..r{n-1}` in one hashring file under `work`, with replication
    /// factor `rf`, each labelled `<replica_label>="r<i>"`, started and ready.
    pub fn ring(work: &Path, n: usize, rf: usize, replica_label: &str) -> Vec<Receiver> {
        let ring_file = work.join("hashring.json");
        let mut rs: Vec<Receiver> = (0..n)
            .map(|i| {
                let extra = vec![
                    format!("--receive.hashrings-file={}", ring_file.display()),
                    format!("--receive.replication-factor={rf}"),
                    format!("--label={replica_label}=\"r{i}\""),
                ];
                Receiver::new(&format!("r{i}"), work, &extra)
            })
            .collect();
        let eps: Vec<String> = rs.iter().map(|r| format!("\"{}\"", r.grpc_addr())).collect();
        let ring = format!("[{{\"hashring\": \"default\", \"endpoints\": [{}]}}]", eps.join(", "));
        if let Err(e) = std::fs::write(&ring_file, ring) {
            panic!("writing {}: {e}", ring_file.display());
        }
        for r in rs.iter_mut() {
            r.start();
        }
        rs
    }

    /// `127.0.0.1:<grpc port>`, the address to list in a hashring.
    pub fn grpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// Starts the process (without waiting for readiness).
    pub fn spawn(&mut self) {
        self.starts += 1;
        let log = self.log.with_extension(format!("{}.log", self.starts));
        let mut cmd = Command::new(norn_bin());
        cmd.arg("receive")
            .arg(format!("--http-address=127.0.0.1:{}", self.http_port))
            .arg(format!("--remote-write.address=127.0.0.1:{}", self.rw_port))
            .arg(format!("--grpc-address=127.0.0.1:{}", self.grpc_port))
            .arg(format!("--receive.local-endpoint={}", self.grpc_addr()))
            .arg(format!("--tsdb.path={}", self.data_dir.display()))
            .args(&self.extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        self.guard = Some(ProcessGuard::spawn(&self.name, &mut cmd, &log));
        self.log = log;
    }

    /// Starts the process and waits until `/-/ready` answers 200.
    pub fn start(&mut self) {
        self.spawn();
        if !wait_ready(self.http_port, "/-/ready", Duration::from_secs(60)) {
            panic!("{} did not become ready; log:\n{}", self.name, self.log_text());
        }
    }

    /// Kills the process with SIGKILL (no graceful shutdown).
    pub fn kill(&mut self) {
        self.guard = None;
    }

    /// Asks the process to stop with SIGTERM and waits (up to 60 s: a loaded machine
    /// flushes a debug build's TSDB slowly) for it to exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut g = self.guard.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(g.id().to_string()).status();
        for _ in 0..600 {
            if let Some(st) = g.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().map(ProcessGuard::id)
    }

    /// The current log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An HTTP/1.1 POST to `127.0.0.1:port` with `Connection: close`; returns status and
/// body.
pub fn http_post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    // Generous: a replicated write on a loaded CI machine can take a while.
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes())?;
    // The server may answer (e.g. 413) and close before reading a large body.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed HTTP response: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Resident set size of a process in KiB (Linux), from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
