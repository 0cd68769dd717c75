//! A real DNS server for `dnssrv+` discovery tests: dnsmasq (Debian `dnsmasq-base`)
//! answering SRV and A records on a loopback UDP/TCP port.

use std::path::Path;
use std::process::Command;

use crate::ProcessGuard;

/// A running dnsmasq; killed on drop.
#[derive(Debug)]
pub struct Dnsmasq {
    /// The port it answers on (127.0.0.1).
    pub port: u16,
    _guard: ProcessGuard,
}

impl Dnsmasq {
    /// Serves `srv_name` (e.g. `_grpc._tcp.recv.norn.test`) with one SRV record per port,
    /// all targeting `host` which resolves to 127.0.0.1. `None` when dnsmasq is missing
    /// and `NORN_ALLOW_MISSING_TOOLS=1` (the test should then skip).
    pub fn start(work: &Path, srv_name: &str, host: &str, ports: &[u16]) -> Option<Dnsmasq> {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .or_else(|| crate::require_tool("dnsmasq"))?;
        // A port free for UDP and TCP now; dnsmasq binds both.
        let port = crate::free_udp_tcp_port();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--log-queries",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--host-record={host},127.0.0.1"));
        // dnsmasq drops privileges to `nobody` unless told to stay as the current user.
        if std::env::var("USER").as_deref() == Ok("root") || is_root() {
            cmd.arg("--user=root");
        }
        for p in ports {
            cmd.arg(format!("--srv-host={srv_name},{host},{p}"));
        }
        let log = work.join("dnsmasq.log");
        let mut guard = ProcessGuard::spawn("dnsmasq", &mut cmd, &log);
        // Ready once it answers on TCP (it binds UDP first, then TCP). Bounded, and a
        // dnsmasq that never comes up fails here with its log rather than as a querier
        // that finds no endpoints.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = guard.try_wait();
            if exited.is_some() || std::time::Instant::now() > deadline {
                panic!(
                    "dnsmasq on port {port} not answering (exit status {exited:?}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Some(Dnsmasq { port, _guard: guard })
    }
}

fn is_root() -> bool {
    // /proc/self/status "Uid:" line: real, effective, saved, fs.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}
