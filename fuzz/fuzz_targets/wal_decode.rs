//! WAL reading and record decoding on arbitrary bytes; nothing may panic. The first
//! byte picks the mode, since random bytes almost never carry valid CRCs:
//! * `0 mod 3`: the rest is a WAL segment read with `SegmentReader`, every record decoded;
//! * `1 mod 3`: the rest is one record body for `record::decode`;
//! * `2 mod 3`: the rest is wrapped in a correctly checksummed full fragment (snappy flag
//!   from bit 7 of the mode byte), exercising decompression and decoding behind the CRC.
#![no_main]

use libfuzzer_sys::fuzz_target;
use norn_tsdb::encoding::crc32c;
use norn_tsdb::wal::{PAGE_SIZE, RECORD_HEADER_SIZE, SegmentReader, record};

fn read_segment(data: &[u8]) {
    let mut r = SegmentReader::new(data);
    loop {
        match r.next() {
            Ok(Some(rec)) => {
                let _ = record::decode(rec);
            }
            Ok(None) => break,
            Err(e) => {
                assert!(e.offset <= data.len());
                assert!(e.offset >= r.good_offset());
                break;
            }
        }
    }
    assert!(r.good_offset() <= data.len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => read_segment(rest),
        1 => {
            let _ = record::decode(rest);
        }
        _ => {
            let payload = &rest[..rest.len().min(PAGE_SIZE - RECORD_HEADER_SIZE)];
            let mut seg = vec![if mode & 0x80 != 0 { 0x09 } else { 0x01 }];
            seg.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            seg.extend_from_slice(&crc32c(payload).to_be_bytes());
            seg.extend_from_slice(payload);
            read_segment(&seg);
        }
    }
});
