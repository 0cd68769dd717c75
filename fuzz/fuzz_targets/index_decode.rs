//! Arbitrary bytes opened as a block index must give errors, never panics: open the file,
//! then walk symbols, label names and values, every postings list and every series.
#![no_main]

use libfuzzer_sys::fuzz_target;
use norn_model::{MatchType, Matcher};
use norn_tsdb::index::IndexReader;

fuzz_target!(|data: &[u8]| {
    // Through a real file, so the mmap path is exercised as in production.
    let path = std::env::temp_dir().join(format!("norn-fuzz-index-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(r) = IndexReader::open(&path) else { return };
    for s in r.symbols() {
        let _ = s;
    }
    let names: Vec<String> = r.label_names().iter().map(|s| s.to_string()).collect();
    if let Ok(all) = r.all_postings() {
        for id in all.iter().take(10_000) {
            let _ = r.series(*id);
        }
    }
    for n in &names {
        for v in r.label_values(n) {
            if let Ok(ids) = r.postings(n, v) {
                for id in ids.iter().take(1000) {
                    let _ = r.series(*id);
                }
            }
        }
        if let Ok(m) = Matcher::new(MatchType::NotRegex, n.as_str(), "a.*") {
            let _ = r.postings_for_matchers(&[m]);
        }
    }
    // Series IDs need not come from postings: probe a few arbitrary ones too.
    for id in [0u32, 1, 2, 5, u32::MAX] {
        let _ = r.series(id);
    }
});
