//! Remote-write request decoding as `norn receive` does it: snappy block decompression
//! (length checked against the limit first), protobuf decode of remote write 1.0 or
//! 2.0, the 2.0 → 1.0 translation, and label validation. The first byte picks the
//! protocol and whether the rest is taken as the snappy body or as the raw protobuf
//! (compressed here, so the fuzzer can reach the protobuf and validation code).
#![no_main]

use libfuzzer_sys::fuzz_target;
use norn_storeapi::remote_write::{Limits, Protocol, decode_body};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let proto = if sel & 1 == 0 { Protocol::V1 } else { Protocol::V2 };
    let limits = Limits { size_bytes: 1 << 20, labels_per_series: 64, ..Limits::default() };
    let body = if sel & 2 == 0 {
        rest.to_vec()
    } else {
        match snap::raw::Encoder::new().compress_vec(rest) {
            Ok(b) => b,
            Err(_) => return,
        }
    };
    if let Ok(d) = decode_body(&body, proto, &limits) {
        assert_eq!(d.series.len(), d.labels.len());
    }
});
