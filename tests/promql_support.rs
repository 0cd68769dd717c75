//! Shared by the PromQL differential test and benchmark: deterministic generated data,
//! a Prometheus 2.42 process fed through remote write, and its HTTP query API.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use norn_model::Labels;
use norn_promql::{MemStorage, StoredValue};
use norn_testkit::{ProcessGuard, free_port, wait_ready};

/// A small deterministic PRNG (xorshift64*), so runs are reproducible without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// One generated series: labels and (ms, value) samples ascending.
pub type GenSeries = (Vec<(String, String)>, Vec<(i64, f64)>);

/// Data start (ms), a whole minute, so query grids derived from it are whole minutes.
pub const T0: i64 = 28_333_333 * 60_000;
/// Scrape interval of the generated data (ms).
pub const INTERVAL: i64 = 15_000;

/// Generated data: counters `req_total{job,instance,code}` (with occasional resets),
/// gauges `temp{job,instance}` (a random walk, one with a 20 min gap) and a classic
/// histogram `lat_bucket{job,le}` / `lat_sum` / `lat_count`, `duration_ms` long.
///
/// `instances` scales the series count. Every series' timestamps carry a sub-second
/// offset that is never 0 or 500 ms: queries are evaluated at `x.5 s` and ranges and
/// steps are whole seconds, so no sample sits on a range boundary. Prometheus 2.42's
/// selectors are closed on the left and 3.x's left-open; off-grid samples make the two
/// agree.
pub fn generate(seed: u64, instances: usize, duration_ms: i64) -> Vec<GenSeries> {
    let mut rng = Rng::new(seed);
    let n = (duration_ms / INTERVAL) as usize;
    let mut out: Vec<GenSeries> = Vec::new();
    let mut k = 0i64;
    let offset = |k: &mut i64| {
        *k += 1;
        let o = (137 + 31 * *k) % 1000;
        if o == 0 || o == 500 { 77 } else { o }
    };
    let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    for job in ["api", "web"] {
        for i in 0..instances {
            let inst = i.to_string();
            for code in ["200", "500"] {
                let off = offset(&mut k);
                let rate = if code == "200" { 5.0 + rng.unit() * 10.0 } else { rng.unit() };
                let mut v = rng.unit() * 100.0;
                let mut samples = Vec::with_capacity(n);
                for s in 0..n {
                    if rng.chance(0.003) {
                        v = 0.0; // counter reset
                    }
                    v += (rate * rng.unit() * 30.0).round();
                    samples.push((T0 + s as i64 * INTERVAL + off, v));
                }
                out.push((l(&[("__name__", "req_total"), ("code", code), ("instance", &inst), ("job", job)]), samples));
            }
            let off = offset(&mut k);
            let mut v = rng.unit() * 40.0 - 10.0;
            let gap = i == 0 && job == "web";
            let mut samples = Vec::with_capacity(n);
            for s in 0..n {
                v += rng.unit() * 2.0 - 1.0;
                let t = s as i64 * INTERVAL;
                if gap && (40 * 60_000..60 * 60_000).contains(&t) {
                    continue;
                }
                samples.push((T0 + t + off, (v * 100.0).round() / 100.0));
            }
            out.push((l(&[("__name__", "temp"), ("instance", &inst), ("job", job)]), samples));
        }
        let bounds = ["0.1", "0.5", "1", "+Inf"];
        let off = offset(&mut k);
        let mut counts = [0.0f64; 4];
        let mut sum = 0.0;
        let mut per: Vec<Vec<(i64, f64)>> = (0..6).map(|_| Vec::with_capacity(n)).collect();
        for s in 0..n {
            let t = T0 + s as i64 * INTERVAL + off;
            for _ in 0..rng.below(20) {
                let x = rng.unit() * rng.unit() * 2.0;
                sum += x;
                for (b, c) in bounds.iter().zip(counts.iter_mut()) {
                    let le: f64 = if *b == "+Inf" { f64::INFINITY } else { b.parse().unwrap() };
                    if x <= le {
                        *c += 1.0;
                    }
                }
            }
            for (b, c) in counts.iter().enumerate() {
                per[b].push((t, *c));
            }
            per[4].push((t, (sum * 1000.0).round() / 1000.0));
            per[5].push((t, counts[3]));
        }
        for (b, le) in bounds.iter().enumerate() {
            out.push((l(&[("__name__", "lat_bucket"), ("job", job), ("le", le)]), std::mem::take(&mut per[b])));
        }
        out.push((l(&[("__name__", "lat_sum"), ("job", job)]), std::mem::take(&mut per[4])));
        out.push((l(&[("__name__", "lat_count"), ("job", job)]), std::mem::take(&mut per[5])));
    }
    out
}

/// The generated data as an in-process store for Norn's engine.
pub fn mem_storage(data: &[GenSeries]) -> MemStorage {
    let mut m = MemStorage::new();
    for (labels, samples) in data {
        let l = Labels::from_pairs(labels.iter().map(|(a, b)| (a.as_str(), b.as_str())));
        m.append(&l, samples.iter().map(|&(t, v)| (t, StoredValue::Float(v))));
    }
    m
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_bytes_field(buf: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(buf, (field << 3) | 2);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A remote-write `WriteRequest` (prometheus/prompb) for the samples of `data` with
/// timestamps in `[from, to)`, protobuf-encoded by hand: only labels and float samples.
pub fn encode_write_request(data: &[GenSeries], from: i64, to: i64) -> Vec<u8> {
    let mut req = Vec::new();
    for (labels, samples) in data {
        let mut ts = Vec::new();
        for (n, v) in labels {
            let mut lb = Vec::new();
            put_bytes_field(&mut lb, 1, n.as_bytes());
            put_bytes_field(&mut lb, 2, v.as_bytes());
            put_bytes_field(&mut ts, 1, &lb);
        }
        let mut any = false;
        for &(t, v) in samples.iter().filter(|(t, _)| (from..to).contains(t)) {
            let mut sb = Vec::new();
            sb.push(1 << 3 | 1); // value: double
            sb.extend_from_slice(&v.to_le_bytes());
            sb.push(2 << 3); // timestamp: int64 varint
            put_varint(&mut sb, t as u64);
            put_bytes_field(&mut ts, 2, &sb);
            any = true;
        }
        if any {
            put_bytes_field(&mut req, 1, &ts);
        }
    }
    req
}

/// A plain HTTP/1.0 POST to `127.0.0.1:port`; returns status and body.
pub fn http_post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("POST {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = h.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, b.to_string()))
}

/// Percent-encodes a query parameter value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Seconds with millisecond precision, as Prometheus's API takes them.
pub fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// A running Prometheus 2.42 with the remote-write receiver, killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    /// The HTTP port.
    pub port: u16,
    _guard: ProcessGuard,
    /// Temporary directory holding config, data and log.
    pub dir: norn_testkit::TempDir,
}

impl Prometheus {
    /// Starts `prometheus` on a free port and waits until it is ready.
    pub fn start(binary: &Path) -> Prometheus {
        let dir = norn_testkit::tempdir().expect("tempdir");
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, "global:\n  scrape_interval: 1h\nscrape_configs: []\n").expect("write config");
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let guard = ProcessGuard::spawn(
            "prometheus",
            Command::new(binary)
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-remote-write-receiver")
                .arg("--query.max-samples=500000000"),
            &log,
        );
        assert!(
            wait_ready(port, "/-/ready", Duration::from_secs(60)),
            "prometheus not ready; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Prometheus { port, _guard: guard, dir }
    }

    /// Sends `data` through remote write in 10-minute slices in time order, so every
    /// slice is within the head's appendable window.
    pub fn write(&self, data: &[GenSeries]) {
        let max = data.iter().filter_map(|(_, s)| s.last().map(|p| p.0)).max().unwrap_or(T0);
        let mut from = T0;
        while from <= max {
            let to = from + 10 * 60_000;
            let body = snap::raw::Encoder::new().compress_vec(&encode_write_request(data, from, to)).expect("snappy");
            let (status, resp) = http_post(
                self.port,
                "/api/v1/write",
                &[
                    ("Content-Type", "application/x-protobuf"),
                    ("Content-Encoding", "snappy"),
                    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
                ],
                &body,
            )
            .expect("remote write");
            assert!((200..300).contains(&status), "remote write: HTTP {status}: {resp}");
            from = to;
        }
    }

    /// Runs an instant (`range = None`) or range query through the HTTP API and returns
    /// the decoded JSON body.
    pub fn query(&self, q: &str, time: i64, range: Option<(i64, i64)>) -> serde_json::Value {
        self.query_with(q, time, range, "")
    }

    /// Like [`Self::query`], with `extra` (e.g. `&stats=all`) appended to the URL.
    pub fn query_with(&self, q: &str, time: i64, range: Option<(i64, i64)>, extra: &str) -> serde_json::Value {
        let path = match range {
            None => format!("/api/v1/query?query={}&time={}", urlencode(q), secs(time)),
            Some((end, step)) => format!(
                "/api/v1/query_range?query={}&start={}&end={}&step={}",
                urlencode(q),
                secs(time),
                secs(end),
                secs(step)
            ),
        } + extra;
        let (status, body) = norn_testkit::http_get(self.port, &path).expect("prometheus query");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("HTTP {status}: bad JSON ({e}): {body}"))
    }
}
