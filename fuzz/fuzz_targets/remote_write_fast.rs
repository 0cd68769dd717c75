//! The borrowed remote-write 1.0 parser (`parse_v1_fast`) against prost on the same
//! bytes: it must never panic, and whatever it accepts prost must decode to the same
//! labels and samples (NaN payloads compared bitwise). Through `decode_body`, a body
//! taking the fast path must also validate as the prost path validates it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use norn_storeapi::RemoteWriteV1;
use norn_storeapi::remote_write::{Limits, Protocol, decode_body, parse_v1_fast, validate};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some(fast) = parse_v1_fast(data) else { return };
    let req = RemoteWriteV1::decode(data).expect("the fast path accepted what prost refuses");
    assert_eq!(fast.series.len(), req.timeseries.len());
    for (i, ts) in req.timeseries.iter().enumerate() {
        let want: Vec<(&str, &str)> = ts.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
        assert_eq!(fast.labels(i), want.as_slice());
        let bits = |s: &[norn_storeapi::prometheus_copy::Sample]| {
            s.iter().map(|x| (x.value.to_bits(), x.timestamp)).collect::<Vec<_>>()
        };
        assert_eq!(bits(&fast.series[i].1), bits(&ts.samples));
        assert!(ts.exemplars.is_empty() && ts.histograms.is_empty());
    }
    assert!(req.metadata.is_empty());
    let limits = Limits { labels_per_series: 64, ..Limits::default() };
    let Ok(body) = snap::raw::Encoder::new().compress_vec(data) else { return };
    let got = decode_body(&body, Protocol::V1, &limits).map(|d| d.labels);
    assert_eq!(got, validate(&req.timeseries, &limits));
});
