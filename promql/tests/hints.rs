//! The engine tells the storage what it is about to read.

use std::sync::{Arc, Mutex};

use norn_model::{Labels, Matcher};
use norn_promql::storage::StorageError;
use norn_promql::{Engine, MemStorage, Queryable, SelectHints, StoredSeries, StoredValue};

struct Recording {
    inner: MemStorage,
    seen: Mutex<Vec<SelectHints>>,
}

impl Queryable for Recording {
    fn select(&self, m: &[Matcher], h: &SelectHints) -> Result<Vec<Arc<StoredSeries>>, StorageError> {
        self.seen.lock().unwrap().push(h.clone());
        self.inner.select(m, h)
    }
}

#[test]
fn hints_carry_range_function_and_grouping() {
    let mut inner = MemStorage::new();
    let l = Labels::from_pairs([("__name__", "x_total"), ("job", "a")]);
    inner.append(&l, (0..20).map(|i| (i * 60_000, StoredValue::Float(i as f64))));
    let rec = Recording { inner, seen: Mutex::new(vec![]) };
    let e = Engine::default();
    let r = e.range_query(
        &rec,
        "sum by (job) (rate(x_total[5m])) + on(job) group_left count by (job) (x_total)",
        600_000,
        900_000,
        60_000,
    );
    assert!(r.value.is_ok(), "{:?}", r.value);
    let seen = rec.seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    let rate = &seen[0];
    assert_eq!(rate.func.as_deref(), Some("rate"));
    assert_eq!(rate.range, 300_000);
    assert_eq!((rate.start, rate.end, rate.step), (600_000 - 300_000 - 300_000, 900_000, 60_000));
    let count = &seen[1];
    assert!(count.by);
    assert_eq!(count.grouping, vec!["job".to_string()]);
    assert_eq!((count.start, count.end), (600_000 - 300_000, 900_000));
}
