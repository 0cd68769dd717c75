//! Go formatting that promtool's output depends on: `time.Duration.String`,
//! `time.Time.String` in UTC, `units.Base2Bytes.String` and `text/tabwriter` tables.

/// Go's `time.Duration(ns).String()`, e.g. `1h59m45.001s`, `10m0s`, `1.5ms`, `0s`.
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".to_string();
    }
    let neg = ns < 0;
    let mut u = ns.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        let (prec, unit) = match u {
            0..1_000 => (0, "ns"),
            1_000..1_000_000 => (3, "µs"),
            _ => (6, "ms"),
        };
        let (frac, int) = frac_digits(u, prec);
        out.push_str(&int.to_string());
        out.push_str(&frac);
        out.push_str(unit);
    } else {
        let (frac, secs) = frac_digits(u, 9);
        u = secs;
        out = format!("{}{frac}s", u % 60);
        u /= 60;
        if u > 0 {
            out = format!("{}m{out}", u % 60);
            u /= 60;
            if u > 0 {
                out = format!("{u}h{out}");
            }
        }
    }
    if neg { format!("-{out}") } else { out }
}

/// Go's `fmtFrac`: the low `prec` decimal digits of `v` as a fraction without trailing
/// zeros (empty if all zero), and `v` with them removed.
fn frac_digits(mut v: u64, prec: u32) -> (String, u64) {
    let mut digits = Vec::new();
    let mut printed = false;
    for _ in 0..prec {
        let d = v % 10;
        printed = printed || d != 0;
        if printed {
            digits.push(b'0' + d as u8);
        }
        v /= 10;
    }
    if !printed {
        return (String::new(), v);
    }
    digits.reverse();
    (format!(".{}", String::from_utf8(digits).expect("ASCII digits")), v)
}

/// A duration given in milliseconds, multiplied out to nanoseconds with Go's wrapping
/// `time.Duration` arithmetic.
pub fn go_duration_ms(ms: i64) -> String {
    go_duration(ms.wrapping_mul(1_000_000))
}

/// `time.Unix(secs, 0).UTC().String()`: `2023-11-15 00:00:00 +0000 UTC`.
pub fn go_time_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} +0000 UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `units.Base2Bytes(n).String()` from alecthomas/units: `24KiB406B`, `1MiB`, `0B`.
pub fn base2_bytes(n: i64) -> String {
    const MULT: [&str; 7] = ["", "K", "M", "G", "T", "P", "E"];
    let mut parts: Vec<String> = Vec::new();
    let mut n = n;
    for (i, m) in MULT.iter().enumerate() {
        if n % 1024 != 0 || (i == 0 && n == 0) {
            let suffix = if i == 0 { "B" } else { "iB" };
            parts.push(format!("{}{m}{suffix}", n % 1024));
        }
        n /= 1024;
        if n == 0 {
            break;
        }
    }
    parts.reverse();
    parts.concat()
}

/// Go's `text/tabwriter` with the given minimum cell width, padding 2, pad char ' ' and
/// no flags, for tables whose rows all have the same number of cells: every cell but the
/// last of a row is padded to its column's widest cell plus two, at least `min_width`.
pub fn tabwriter(rows: &[Vec<String>], min_width: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![min_width.saturating_sub(2); cols];
    for r in rows {
        for (i, c) in r.iter().enumerate().take(r.len().saturating_sub(1)) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            out.push_str(c);
            if i + 1 < r.len() {
                out.extend(std::iter::repeat_n(' ', widths[i] + 2 - c.chars().count()));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (ms, want) in [
            (0, "0s"),
            (1, "1ms"),
            (999, "999ms"),
            (1000, "1s"),
            (7_185_001, "1h59m45.001s"),
            (600_001, "10m0.001s"),
            (7_200_000, "2h0m0s"),
            (-1500, "-1.5s"),
            (90_061_500, "25h1m1.5s"),
        ] {
            assert_eq!(go_duration_ms(ms), want, "{ms}");
        }
        assert_eq!(go_duration(1500), "1.5µs");
        assert_eq!(go_duration(12), "12ns");
        assert_eq!(go_duration(1_500_000), "1.5ms");
    }

    #[test]
    fn times() {
        assert_eq!(go_time_utc(1_700_006_400), "2023-11-15 00:00:00 +0000 UTC");
        assert_eq!(go_time_utc(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time_utc(951_782_400 + 3661), "2000-02-29 01:01:01 +0000 UTC");
        assert_eq!(go_time_utc(-1), "1969-12-31 23:59:59 +0000 UTC");
    }

    #[test]
    fn bytes() {
        for (n, want) in [(0, "0B"), (1, "1B"), (1024, "1KiB"), (24 * 1024 + 406, "24KiB406B"), (1 << 20, "1MiB")] {
            assert_eq!(base2_bytes(n), want);
        }
        assert_eq!(base2_bytes((1 << 20) + 5), "1MiB5B");
    }

    #[test]
    fn table() {
        let rows = vec![
            vec!["A".to_string(), "BB".to_string(), "C".to_string()],
            vec!["aaaa".to_string(), "b".to_string(), "last cell".to_string()],
        ];
        assert_eq!(tabwriter(&rows, 0), "A     BB  C\naaaa  b   last cell\n");
        assert_eq!(tabwriter(&rows, 5), "A     BB   C\naaaa  b    last cell\n");
    }
}
