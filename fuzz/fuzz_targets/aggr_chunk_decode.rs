//! Decodes arbitrary bytes as a Thanos aggregate chunk (encoding 0xFF). Decoding must never
//! panic; what decodes must re-encode to the same aggregates, and each sub-chunk must
//! iterate without panicking.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use norn_tsdb::chunkenc::aggr::{AggrChunk, AggrType};

fuzz_target!(|data: &[u8]| {
    let Ok(a) = AggrChunk::decode(&Bytes::copy_from_slice(data)) else { return };
    let again = AggrChunk::decode(&Bytes::from(a.encode())).expect("re-encoded chunk decodes");
    assert_eq!(again, a);
    for t in AggrType::ALL {
        if let Some(c) = a.get(t)
            && let Ok(it) = c.iter()
        {
            assert!(it.count() <= c.num_samples());
        }
    }
    let _ = a.num_samples();
});
