//! Reading downsampled data as Thanos's querier does (`pkg/query/querier.go`,
//! `pkg/query/iter.go`): the aggregates asked of the stores follow from the PromQL
//! function a selection feeds, and each series' chunks turn into samples from those
//! aggregates (raw chunks, e.g. of blocks not downsampled yet, are read as they are).

use norn_promql::StoredValue;
use norn_storeapi::thanos::{self, Aggr};
use norn_tsdb::chunkenc::XorIterator;

use crate::seriesview::{RawChunk, WireChunk};

/// The aggregates a selection feeding `func` reads (Thanos's `aggrsFromFunc`): min, max
/// and count functions their aggregate, `sum_*` the sum, counter functions the counter;
/// anything else (plain selections and `sum` included) count and sum, read as their
/// average.
pub fn aggrs_from_func(func: Option<&str>) -> Vec<Aggr> {
    let f = func.unwrap_or("");
    if f == "min" || f.starts_with("min_") {
        vec![Aggr::Min]
    } else if f == "max" || f.starts_with("max_") {
        vec![Aggr::Max]
    } else if f == "count" || f.starts_with("count_") {
        vec![Aggr::Count]
    } else if f.starts_with("sum_") {
        vec![Aggr::Sum]
    } else if matches!(f, "increase" | "rate" | "irate" | "resets" | "xincrease" | "xrate") {
        vec![Aggr::Counter]
    } else {
        vec![Aggr::Count, Aggr::Sum]
    }
}

fn slot(a: Aggr) -> Option<usize> {
    match a {
        Aggr::Count => Some(0),
        Aggr::Sum => Some(1),
        Aggr::Min => Some(2),
        Aggr::Max => Some(3),
        Aggr::Counter => Some(4),
        Aggr::Raw => None,
    }
}

/// Every sample of a StoreAPI chunk in time order.
fn samples_of(c: &RawChunk, out: &mut Vec<(i64, StoredValue)>) -> Result<(), String> {
    if c.encoding == thanos::chunk::Encoding::Xor as i32 {
        let mut it = XorIterator::new(&c.data).map_err(|e| e.to_string())?;
        while let Some((t, v)) = it.next() {
            out.push((t, StoredValue::Float(v)));
        }
        return it.err().map_or(Ok(()), |e| Err(e.to_string()));
    }
    let proto =
        thanos::AggrChunk { min_time: i64::MIN, max_time: i64::MAX, raw: Some(c.to_proto()), ..Default::default() };
    norn_storeapi::chunks::for_each_sample(&proto, i64::MIN, i64::MAX, |s| out.push(crate::wire::from_sample(s)))
        .map_err(|e| e.to_string())
}

/// Appends a chunk's samples after those of the previous chunks: samples not after the
/// last one kept are skipped (chunks are ordered but may overlap), as Thanos's chunk
/// series iterator does.
fn chain(out: &mut Vec<(i64, StoredValue)>, chunk: Vec<(i64, StoredValue)>) {
    for s in chunk {
        if out.last().is_none_or(|l| s.0 > l.0) {
            out.push(s);
        }
    }
}

/// Thanos's `ApplyCounterResetsSeriesIterator` over consecutive chunks (raw, or the
/// counter aggregate): float counters made monotonic with resets folded in. A sample
/// repeating the previous timestamp is a chunk's true last raw value: it is not emitted
/// but is what the next chunk's first value is compared with. Histogram samples pass
/// through unchanged; NaNs are dropped.
fn apply_counter_resets(chunks: Vec<Vec<(i64, StoredValue)>>) -> Vec<(i64, StoredValue)> {
    let mut out: Vec<(i64, StoredValue)> = Vec::new();
    let (mut last_t, mut last_v, mut total) = (i64::MIN, 0.0f64, 0.0f64);
    let mut floats = 0usize;
    for (t, v) in chunks.into_iter().flatten() {
        let StoredValue::Float(v) = v else {
            if t > last_t {
                last_t = t;
                out.push((t, v));
            }
            continue;
        };
        if v.is_nan() {
            continue;
        }
        if floats == 0 {
            total = v;
        } else if t > last_t {
            total += if v >= last_v { v - last_v } else { v };
        } else {
            if t == last_t {
                last_v = v;
            }
            continue;
        }
        floats += 1;
        (last_t, last_v) = (t, v);
        out.push((t, StoredValue::Float(total)));
    }
    out
}

/// A series' samples in `[mint, maxt]` from chunks answered for `aggrs` (what
/// [`aggrs_from_func`] asked for), as Thanos's querier reads them: for one aggregate,
/// each chunk's aggregate (or its raw data); for the counter, the reset-adjusted series
/// over all chunks; for count and sum, each chunk's raw data or else the average
/// sum / count per window.
pub fn decode_series(
    chunks: &[&WireChunk],
    aggrs: &[Aggr],
    mint: i64,
    maxt: i64,
) -> Result<Vec<(i64, StoredValue)>, String> {
    let mut out: Vec<(i64, StoredValue)> = Vec::new();
    match aggrs {
        [Aggr::Counter] => {
            let mut parts = Vec::with_capacity(chunks.len());
            for c in chunks {
                let Some(src) = c.aggrs[4].as_ref().or(c.raw.as_ref()) else {
                    return Err("chunk without the counter aggregate or raw data".into());
                };
                let mut v = Vec::new();
                samples_of(src, &mut v)?;
                parts.push(v);
            }
            out = apply_counter_resets(parts);
        }
        [one] => {
            let i = slot(*one).ok_or("raw is not an aggregate")?;
            for c in chunks {
                let Some(src) = c.aggrs[i].as_ref().or(c.raw.as_ref()) else {
                    return Err(format!("chunk without the {} aggregate or raw data", one.as_str_name()));
                };
                let mut v = Vec::new();
                samples_of(src, &mut v)?;
                chain(&mut out, v);
            }
        }
        [Aggr::Count, Aggr::Sum] => {
            for c in chunks {
                let mut v = Vec::new();
                if let Some(raw) = &c.raw {
                    samples_of(raw, &mut v)?;
                } else {
                    let (Some(cnt), Some(sum)) = (&c.aggrs[0], &c.aggrs[1]) else {
                        return Err("chunk without count and sum aggregates or raw data".into());
                    };
                    let (mut cs, mut ss) = (Vec::new(), Vec::new());
                    samples_of(cnt, &mut cs)?;
                    samples_of(sum, &mut ss)?;
                    if cs.len() != ss.len() {
                        return Err("sum and count iterator not aligned".into());
                    }
                    for ((ct, cv), (st, sv)) in cs.into_iter().zip(ss) {
                        let (StoredValue::Float(n), StoredValue::Float(s)) = (cv, sv) else {
                            return Err("averages of native-histogram aggregates are not supported".into());
                        };
                        if ct != st {
                            return Err("sum and count timestamps not aligned".into());
                        }
                        v.push((ct, StoredValue::Float(s / n)));
                    }
                }
                chain(&mut out, v);
            }
        }
        other => return Err(format!("unexpected result aggregate type {other:?}")),
    }
    out.retain(|s| s.0 >= mint && s.0 <= maxt);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use norn_tsdb::chunkenc::XorChunk;

    use super::*;

    fn xor(s: &[(i64, f64)]) -> Option<RawChunk> {
        let mut c = XorChunk::new();
        for &(t, v) in s {
            c.append(t, v);
        }
        Some(RawChunk { encoding: 0, data: Bytes::from(c.into_bytes()), hash: 0 })
    }

    fn floats(v: &[(i64, StoredValue)]) -> Vec<(i64, f64)> {
        v.iter()
            .map(|(t, v)| match v {
                StoredValue::Float(f) => (*t, *f),
                o => panic!("{o:?}"),
            })
            .collect()
    }

    #[test]
    fn aggregates_per_function() {
        for (f, want) in [
            (None, vec![Aggr::Count, Aggr::Sum]),
            (Some("sum"), vec![Aggr::Count, Aggr::Sum]),
            (Some("avg_over_time"), vec![Aggr::Count, Aggr::Sum]),
            (Some("min"), vec![Aggr::Min]),
            (Some("min_over_time"), vec![Aggr::Min]),
            (Some("max_over_time"), vec![Aggr::Max]),
            (Some("count_over_time"), vec![Aggr::Count]),
            (Some("count_values"), vec![Aggr::Count]),
            (Some("sum_over_time"), vec![Aggr::Sum]),
            (Some("rate"), vec![Aggr::Counter]),
            (Some("increase"), vec![Aggr::Counter]),
            (Some("irate"), vec![Aggr::Counter]),
            (Some("resets"), vec![Aggr::Counter]),
            (Some("delta"), vec![Aggr::Count, Aggr::Sum]),
            (Some("minute"), vec![Aggr::Count, Aggr::Sum]),
        ] {
            assert_eq!(aggrs_from_func(f), want, "{f:?}");
        }
    }

    /// Two 5m chunks of a counter that resets between them, then a raw chunk.
    fn chunks() -> Vec<WireChunk> {
        let agg = |count: &[(i64, f64)], sum: &[(i64, f64)], counter: &[(i64, f64)]| WireChunk {
            min_time: count[0].0,
            max_time: count[count.len() - 1].0,
            raw: None,
            aggrs: [xor(count), xor(sum), xor(&[(count[0].0, 1.0)]), xor(&[(count[0].0, 9.0)]), xor(counter)],
        };
        vec![
            agg(
                &[(100, 2.0), (200, 4.0)],
                &[(100, 10.0), (200, 20.0)],
                &[(50, 4.0), (100, 6.0), (200, 12.0), (200, 12.0)],
            ),
            agg(&[(300, 5.0)], &[(300, 50.0)], &[(250, 1.0), (300, 3.0), (300, 3.0)]),
            WireChunk { min_time: 400, max_time: 500, raw: xor(&[(400, 5.0), (500, 8.0)]), aggrs: Default::default() },
        ]
    }

    #[test]
    fn series_from_aggregates() {
        let cs = chunks();
        let refs: Vec<&WireChunk> = cs.iter().collect();
        // Averages, then the raw chunk as is.
        let got = decode_series(&refs, &[Aggr::Count, Aggr::Sum], i64::MIN, i64::MAX).unwrap();
        assert_eq!(floats(&got), vec![(100, 5.0), (200, 5.0), (300, 10.0), (400, 5.0), (500, 8.0)]);
        // One aggregate: that aggregate, raw where there is none.
        let got = decode_series(&refs, &[Aggr::Count], i64::MIN, i64::MAX).unwrap();
        assert_eq!(floats(&got), vec![(100, 2.0), (200, 4.0), (300, 5.0), (400, 5.0), (500, 8.0)]);
        // Counter: 4 → 6 → 12 (last raw 12), reset to 1 (+1) → 3 (+2), then raw 5 (+2), 8 (+3).
        let got = decode_series(&refs, &[Aggr::Counter], i64::MIN, i64::MAX).unwrap();
        assert_eq!(
            floats(&got),
            vec![(50, 4.0), (100, 6.0), (200, 12.0), (250, 13.0), (300, 15.0), (400, 17.0), (500, 20.0)]
        );
        // Bounded to the range.
        let got = decode_series(&refs, &[Aggr::Counter], 100, 300).unwrap();
        assert_eq!(floats(&got), vec![(100, 6.0), (200, 12.0), (250, 13.0), (300, 15.0)]);
        // Overlapping chunks: later samples not after the last kept are skipped.
        let mut dup = chunks();
        dup.insert(1, dup[0].clone());
        let refs: Vec<&WireChunk> = dup.iter().collect();
        let got = decode_series(&refs, &[Aggr::Max], i64::MIN, i64::MAX).unwrap();
        assert_eq!(floats(&got), vec![(100, 9.0), (300, 9.0), (400, 5.0), (500, 8.0)]);
    }

    #[test]
    fn missing_or_misaligned_aggregates_are_errors() {
        let mut cs = chunks();
        cs[0].aggrs[1] = xor(&[(100, 10.0)]);
        let refs: Vec<&WireChunk> = cs.iter().collect();
        assert!(decode_series(&refs, &[Aggr::Count, Aggr::Sum], 0, 1000).unwrap_err().contains("not aligned"));
        let bare = WireChunk { min_time: 0, max_time: 0, raw: None, aggrs: Default::default() };
        for a in [vec![Aggr::Counter], vec![Aggr::Min], vec![Aggr::Count, Aggr::Sum]] {
            assert!(decode_series(&[&bare], &a, 0, 1).is_err(), "{a:?}");
        }
        assert!(decode_series(&[&bare], &[Aggr::Raw], 0, 1).is_err());
        assert!(decode_series(&[&bare], &[Aggr::Sum, Aggr::Count], 0, 1).is_err());
    }
}
