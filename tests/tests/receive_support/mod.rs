//! Shared helpers of the `receive_*` tests: building remote-write bodies and reading
//! series back over the StoreAPI.

#![allow(dead_code)]

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

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
