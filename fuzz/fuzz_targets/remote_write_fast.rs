//! The borrowed remote-write 1.0 parser (`parse_v1_fast`, `label_pairs`) against prost on
//! the same bytes: it must never panic, and whatever it accepts prost must decode to the
//! same labels and samples (NaN payloads compared bitwise). Through `decode_body`, which
//! takes the fast path where it can, the label sets must be those the prost path yields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use norn_storeapi::RemoteWriteV1;
use norn_storeapi::prometheus_copy::Sample;
use norn_storeapi::remote_write::{Limits, Protocol, decode_body, label_pairs, parse_v1_fast, validate};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some(fast) = parse_v1_fast(data) else { return };
    // Label bytes are parsed only when a series is new to the cache: the body is
    // accepted when they parse too.
    let parsed = fast.series.iter().all(|(span, _)| label_pairs(span).is_some());
    let Ok(req) = RemoteWriteV1::decode(data) else {
        assert!(!parsed, "the fast path accepted what prost refuses");
        return;
    };
    assert_eq!(fast.series.len(), req.timeseries.len());
    assert!(req.metadata.is_empty());
    let bits = |s: &[Sample]| s.iter().map(|x| (x.value.to_bits(), x.timestamp)).collect::<Vec<_>>();
    for ((span, samples), ts) in fast.series.iter().zip(&req.timeseries) {
        assert_eq!(bits(samples), bits(&ts.samples));
        assert!(ts.exemplars.is_empty() && ts.histograms.is_empty());
        if let Some(pairs) = label_pairs(span) {
            let want: Vec<(&str, &str)> = ts.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
            assert_eq!(pairs, want);
        }
    }
    let limits = Limits { labels_per_series: 64, ..Limits::default() };
    let Ok(body) = snap::raw::Encoder::new().compress_vec(data) else { return };
    let got = decode_body(&body, Protocol::V1, &limits).map(|d| d.labels);
    assert_eq!(got, validate(&req.timeseries, &limits));
});
