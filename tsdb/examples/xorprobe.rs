use norn_tsdb::chunkenc::{XorChunk, XorIterator};
use std::hint::black_box;
use std::time::Instant;
fn main() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut t = 1_700_000_000_000i64;
    let mut cv = 1234567.0;
    let mut gv = 0.5f64;
    let mut c = XorChunk::new();
    let mut g = XorChunk::new();
    for _ in 0..120 {
        t += 15_000 + (rnd() % 51) as i64 - 25;
        if rnd() % 4 != 0 {
            cv += (rnd() % 500) as f64;
        }
        gv += ((rnd() % 1000) as f64 - 500.0) / 1e4;
        c.append(t, cv);
        g.append(t, gv);
    }
    for (name, ch) in [("counter", &c), ("gauge", &g)] {
        let bytes = ch.bytes().to_vec();
        let mut best = f64::MAX;
        for _ in 0..200 {
            let st = Instant::now();
            for _ in 0..200 {
                let mut it = XorIterator::new(black_box(&bytes)).unwrap();
                let mut acc = 0.0;
                let mut last = 0;
                while let Some((t, v)) = it.next() {
                    acc += v;
                    last = t;
                }
                black_box((acc, last));
            }
            best = best.min(st.elapsed().as_nanos() as f64 / 200.0 / 120.0);
        }
        let mut bestenc = f64::MAX;
        let samples: Vec<(i64, f64)> = ch.iter().collect();
        for _ in 0..100 {
            let st = Instant::now();
            for _ in 0..100 {
                let mut x = XorChunk::new();
                for &(t, v) in black_box(&samples) {
                    x.append(t, v);
                }
                black_box(x.into_bytes());
            }
            bestenc = bestenc.min(st.elapsed().as_nanos() as f64 / 100.0 / 120.0);
        }
        println!("{name}: decode {best:.2} ns/sample, encode {bestenc:.2} ns/sample");
    }
}
