//! Shared helpers of the `receive_*` tests: building remote-write bodies and reading
//! series back over the StoreAPI.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use norn_storeapi::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use norn_storeapi::thanos::store_client::StoreClient;
use norn_storeapi::thanos::{self, LabelMatcher, SeriesRequest, series_response};
use norn_tsdb::chunkenc::{Chunk, Encoding, Sample as TsdbSample};
use prost::Message;

/// A series to write: labels (sent in the given order) and samples.
pub type Input<'a> = (Vec<(&'a str, &'a str)>, Vec<(i64, f64)>);

/// A snappy-compressed `prometheus.WriteRequest`.
pub fn write_body(series: &[Input<'_>]) -> Vec<u8> {
    let req = WriteRequest {
        timeseries: series
            .iter()
            .map(|(ls, ss)| TimeSeries {
                labels: ls.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect(),
                samples: ss.iter().map(|&(t, v)| Sample { value: v, timestamp: t }).collect(),
                ..Default::default()
            })
            .collect(),
        metadata: Vec::new(),
    };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).expect("snappy")
}

/// POSTs a remote-write body with an optional tenant header.
pub fn post(port: u16, tenant: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut h = vec![
        ("Content-Type", "application/x-protobuf"),
        ("Content-Encoding", "snappy"),
        ("X-Prometheus-Remote-Write-Version", "0.1.0"),
    ];
    if let Some(t) = tenant {
        h.push(("THANOS-TENANT", t));
    }
    norn_testkit::receive::http_post(port, "/api/v1/receive", &h, body).expect("POST remote write")
}

/// A series read back: labels as `name=value` pairs and decoded samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Got {
    pub labels: Vec<(String, String)>,
    pub samples: Vec<(i64, f64)>,
}

impl Got {
    pub fn label(&self, n: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str())
    }
}

/// Equality matcher.
pub fn eq(n: &str, v: &str) -> LabelMatcher {
    LabelMatcher { r#type: 0, name: n.into(), value: v.into() }
}

/// Calls `thanos.Store/Series` on `addr` and decodes every chunk.
pub async fn series(addr: &str, matchers: Vec<LabelMatcher>, mint: i64, maxt: i64) -> Result<Vec<Got>, String> {
    let mut c = StoreClient::connect(format!("http://{addr}")).await.map_err(|e| e.to_string())?;
    let req = SeriesRequest { min_time: mint, max_time: maxt, matchers, response_batch_size: 64, ..Default::default() };
    let mut stream = c.series(req).await.map_err(|e| e.to_string())?.into_inner();
    let mut out = Vec::new();
    while let Some(frame) = stream.message().await.map_err(|e| e.to_string())? {
        let list = match frame.result {
            Some(series_response::Result::Series(s)) => vec![s],
            Some(series_response::Result::Batch(b)) => b.series,
            _ => continue,
        };
        for s in list {
            out.push(decode(s)?);
        }
    }
    Ok(out)
}

fn decode(s: thanos::Series) -> Result<Got, String> {
    let mut samples = Vec::new();
    for c in s.chunks {
        let raw = c.raw.ok_or("chunk without raw data")?;
        if raw.r#type != 0 {
            return Err(format!("unexpected chunk type {}", raw.r#type));
        }
        let chunk = Chunk { encoding: Encoding::Xor, data: bytes::Bytes::from(raw.data) };
        for smp in chunk.iter().map_err(|e| e.to_string())? {
            if let TsdbSample::Float(t, v) = smp {
                samples.push((t, v));
            }
        }
    }
    samples.sort_by_key(|s| s.0);
    samples.dedup_by_key(|s| s.0);
    Ok(Got { labels: s.labels.into_iter().map(|l| (l.name, l.value)).collect(), samples })
}

/// Calls `thanos.Store/Series` on `addr` and returns the series as sent, chunks untouched.
pub async fn series_raw(
    addr: &str,
    matchers: Vec<LabelMatcher>,
    mint: i64,
    maxt: i64,
) -> Result<Vec<thanos::Series>, String> {
    let mut c = StoreClient::connect(format!("http://{addr}")).await.map_err(|e| e.to_string())?;
    let req = SeriesRequest { min_time: mint, max_time: maxt, matchers, response_batch_size: 1, ..Default::default() };
    let mut stream = c.series(req).await.map_err(|e| e.to_string())?.into_inner();
    let mut out = Vec::new();
    while let Some(frame) = stream.message().await.map_err(|e| e.to_string())? {
        match frame.result {
            Some(series_response::Result::Series(s)) => out.push(s),
            Some(series_response::Result::Batch(b)) => out.extend(b.series),
            _ => {}
        }
    }
    Ok(out)
}

/// A loopback HTTP/1.1 forwarder that adds a header to every request that lacks it,
/// the way an authenticating gateway in front of receivers sets the tenant. Counts the
/// requests that arrived with the header already set.
pub struct HeaderProxy {
    pub port: u16,
    pub had_header: Arc<AtomicUsize>,
    pub forwarded: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HeaderProxy {
    /// Listens on an ephemeral loopback port and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16, name: &'static str, value: &'static str) -> HeaderProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let had_header = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, f, st) = (had_header.clone(), forwarded.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let (h, f) = (h.clone(), f.clone());
                std::thread::spawn(move || {
                    let _ = proxy_conn(client, upstream, name, value, &h, &f);
                });
            }
        });
        HeaderProxy { port, had_header, forwarded, stop }
    }
}

impl Drop for HeaderProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
    }
}

/// Forwards requests of one keep-alive connection, each head rewritten, each body
/// passed on by its Content-Length (remote-write senders always set it).
fn proxy_conn(
    client: TcpStream,
    upstream: u16,
    name: &str,
    value: &str,
    had: &AtomicUsize,
    fwd: &AtomicUsize,
) -> std::io::Result<()> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let (mut up_read, mut client_write) = (up.try_clone()?, client.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_read, &mut client_write);
        let _ = client_write.shutdown(std::net::Shutdown::Both);
    });
    let mut r = BufReader::new(client);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let done = line == "\r\n";
            head.push(line);
            if done || head.len() > 200 {
                break;
            }
        }
        let lower = |l: &String| l.to_ascii_lowercase();
        let len: u64 = head
            .iter()
            .find_map(|l| lower(l).strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        let prefix = format!("{}:", name.to_ascii_lowercase());
        if head.iter().any(|l| lower(l).starts_with(&prefix)) {
            had.fetch_add(1, Ordering::Relaxed);
        } else {
            head.insert(1, format!("{name}: {value}\r\n"));
        }
        up.write_all(head.concat().as_bytes())?;
        std::io::copy(&mut (&mut r).take(len), &mut up)?;
        fwd.fetch_add(1, Ordering::Relaxed);
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
