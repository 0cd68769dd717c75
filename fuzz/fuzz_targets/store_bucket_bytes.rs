//! Bytes a store gateway reads from a bucket must give errors, never panics: a block's
//! meta.json (with its `thanos` section) and chunk records fetched by ranged reads (the
//! whole input, and every suffix of it as if a reference pointed there).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use norn_store::fetch::{parse_record, partition};
use norn_store::sync::parse_meta;

fuzz_target!(|data: &[u8]| {
    let id = ulid::Ulid::from_string("01HZZZZZZZZZZZZZZZZZZZZZZZ").expect("valid ULID");
    let _ = parse_meta(id, data);
    let buf = Bytes::copy_from_slice(data);
    for at in 0..buf.len().min(64) {
        let rest = buf.slice(at..);
        let _ = parse_record(&rest, false);
        let _ = parse_record(&rest, true);
    }
    // Offsets derived from the input, as an index's chunk references would be.
    let mut offs: Vec<u64> = data.chunks(4).map(|c| c.iter().fold(0u64, |a, &b| a << 8 | u64::from(b))).collect();
    offs.sort_unstable();
    offs.dedup();
    let size = offs.last().copied().unwrap_or(0).saturating_add(data.len() as u64);
    for p in partition(&offs, size, 16_000, 512 * 1024, 8 << 20) {
        assert!(p.range.start <= p.range.end && p.range.end <= size.max(p.range.start));
    }
});
