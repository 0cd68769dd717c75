//! Text formats that must match Go byte for byte: `strconv.Quote` and float formatting
//! (`%g` as `fmt` prints it, and `strconv.FormatFloat(f, 'f', -1, 64)` as Prometheus's
//! JSON API prints sample values). Tools that print what promtool prints depend on these.

use std::fmt::{self, Write};

/// Writes `s` quoted as Go's `strconv.Quote` does.
pub fn write_go_quoted<W: Write + ?Sized>(w: &mut W, s: &str) -> fmt::Result {
    w.write_char('"')?;
    for c in s.chars() {
        match c {
            '"' => w.write_str("\\\"")?,
            '\\' => w.write_str("\\\\")?,
            '\u{07}' => w.write_str("\\a")?,
            '\u{08}' => w.write_str("\\b")?,
            '\u{0c}' => w.write_str("\\f")?,
            '\n' => w.write_str("\\n")?,
            '\r' => w.write_str("\\r")?,
            '\t' => w.write_str("\\t")?,
            '\u{0b}' => w.write_str("\\v")?,
            c if is_go_printable(c) => w.write_char(c)?,
            c if (c as u32) < 0x80 => write!(w, "\\x{:02x}", c as u32)?,
            c if (c as u32) <= 0xffff => write!(w, "\\u{:04x}", c as u32)?,
            c => write!(w, "\\U{:08x}", c as u32)?,
        }
    }
    w.write_char('"')
}

/// `strconv.Quote(s)` as a `String`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    // Writing to a String cannot fail.
    let _ = write_go_quoted(&mut out, s);
    out
}

/// An approximation of Go's `unicode.IsPrint` that is exact for ASCII and for the
/// characters label values carry in practice: controls, the private-use and
/// separator categories Go rejects are escaped.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let u = c as u32;
    !matches!(u,
        0x00ad            // soft hyphen (Cf)
        | 0x0600..=0x0605 // Arabic format characters
        | 0x061c | 0x06dd | 0x070f
        | 0x180e
        | 0x200b..=0x200f // zero-width and direction marks
        | 0x202a..=0x202e
        | 0x2060..=0x2064 | 0x2066..=0x206f
        | 0xd800..=0xdfff
        | 0xe000..=0xf8ff // private use
        | 0xfeff
        | 0xfff9..=0xfffb
        | 0xfffe | 0xffff
        | 0xf0000..=0x10ffff)
}

/// Shortest round-trip decimal digits of a finite, non-zero |f|, and the decimal point
/// position: `f = 0.d1d2d3… × 10^dp`.
fn shortest_digits(f: f64) -> (String, i32) {
    // Rust's `{:e}` prints the shortest representation that round-trips, as Go's strconv
    // does, and with as many digits. Where two candidates of that length are equally close
    // to the exact value (1795421620.87890625: …062 or …063), Rust takes the upper one and
    // Go the even one; the exactly rounded form with that many digits (ties to even) is
    // Go's whenever it round-trips.
    let a = f.abs();
    let short = format!("{a:e}");
    let split = |s: &str| -> (String, i32) {
        let (mant, exp) = s.split_once('e').unwrap_or((s, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        (mant.chars().filter(|c| *c != '.').collect(), exp + 1)
    };
    let (digits, dp) = split(&short);
    // A tie needs both neighbours of the exact value to read back as `a`, so decimal steps
    // no wider than the float's: 16 digits or more (52 bits are 15.65 digits), or a
    // subnormal. And Rust's upper pick differs from Go's even one only when it is odd.
    // Everything else (most values: counts, short decimals) skips the second formatting.
    let odd = digits.as_bytes().last().is_some_and(|d| d % 2 == 1);
    if odd && (digits.len() >= 16 || a < f64::MIN_POSITIVE) {
        let exact = format!("{a:.*e}", digits.len() - 1);
        if exact != short && exact.parse::<f64>() == Ok(a) {
            return split(&exact);
        }
    }
    (digits, dp)
}

fn push_exp(out: &mut String, exp: i32) {
    out.push('e');
    out.push(if exp < 0 { '-' } else { '+' });
    let a = exp.unsigned_abs();
    if a < 10 {
        out.push('0');
    }
    let _ = write!(out, "{a}");
}

fn push_fixed(out: &mut String, digits: &str, dp: i32) {
    let nd = digits.len() as i32;
    if dp <= 0 {
        out.push_str("0.");
        for _ in 0..(-dp) {
            out.push('0');
        }
        out.push_str(digits);
    } else if dp >= nd {
        out.push_str(digits);
        for _ in 0..(dp - nd) {
            out.push('0');
        }
    } else {
        out.push_str(&digits[..dp as usize]);
        out.push('.');
        out.push_str(&digits[dp as usize..]);
    }
}

fn special(f: f64, out: &mut String, plus_inf: &str) -> bool {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f == f64::INFINITY {
        out.push_str(plus_inf);
    } else if f == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0" } else { "0" });
    } else {
        return false;
    }
    true
}

/// Go's `fmt.Sprintf("%g", f)`: shortest round-trip digits, in exponent form when the
/// decimal exponent is below -4 or at least 6 (Go decides with precision 6 when it
/// prints the shortest form). This is what `promtool tsdb dump` prints for values.
pub fn go_format_g(f: f64) -> String {
    let mut out = String::new();
    if special(f, &mut out, "+Inf") {
        return out;
    }
    if f < 0.0 {
        out.push('-');
    }
    let (digits, dp) = shortest_digits(f);
    let exp = dp - 1;
    if !(-4..6).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        push_exp(&mut out, exp);
    } else {
        push_fixed(&mut out, &digits, dp);
    }
    out
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`, which Prometheus's HTTP API uses for
/// sample values (`+Inf`, `-Inf` and `NaN` spelled as Prometheus spells them).
pub fn go_format_f(f: f64) -> String {
    let mut out = String::new();
    if special(f, &mut out, "+Inf") {
        return out;
    }
    if f < 0.0 {
        out.push('-');
    }
    let (digits, dp) = shortest_digits(f);
    push_fixed(&mut out, &digits, dp);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tie cases are written exactly (they are exact binary fractions): the point.
    #[allow(clippy::excessive_precision)]
    #[test]
    fn format_g_like_go() {
        // Expected strings are what Go 1.21's fmt.Sprintf("%g", x) prints.
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (123456.0, "123456"),
            (1000000.0, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1e100, "1e+100"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (100.25, "100.25"),
            (33.333333333333336, "33.333333333333336"),
            // Ties between two equally short candidates go to the even digit, as Go's
            // shortest formatting (Rust's `{:e}` takes the upper one).
            (1795421620.87890625, "1.7954216208789062e+09"),
            (24834720003041.3125, "2.4834720003041312e+13"),
            (676633807908965.25, "6.766338079089652e+14"),
            (90559468477630.625, "9.055946847763062e+13"),
        ];
        for (f, want) in cases {
            assert_eq!(go_format_g(*f), *want, "{f:e}");
        }
    }

    proptest::proptest! {
        /// Any finite value: the text reads back as the same value, with as many significant
        /// digits as the shortest round-trip form has.
        #[test]
        fn format_g_round_trips_at_shortest_length(bits in proptest::prelude::any::<u64>()) {
            let f = f64::from_bits(bits);
            proptest::prop_assume!(f.is_finite() && f != 0.0);
            let g = go_format_g(f);
            proptest::prop_assert_eq!(g.parse::<f64>().ok(), Some(f), "{}", g);
            let mant = |s: &str| s.split(['e', 'E']).next().unwrap_or_default().chars().filter(char::is_ascii_digit).collect::<String>();
            let sig = |s: &str| mant(s).trim_start_matches('0').trim_end_matches('0').len();
            proptest::prop_assert_eq!(sig(&g), sig(&format!("{f:e}")), "{} vs {:e}", g, f);
        }
    }

    // The tie cases are written exactly (they are exact binary fractions): the point.
    #[allow(clippy::excessive_precision)]
    #[test]
    fn format_f_like_go() {
        let cases: &[(f64, &str)] = &[
            (1e21, "1000000000000000000000"),
            (1795421620.87890625, "1795421620.8789062"),
            (187328024334792.625, "187328024334792.62"),
            (0.00001, "0.00001"),
            (1.5, "1.5"),
            (-2.0, "-2"),
            (f64::INFINITY, "+Inf"),
        ];
        for (f, want) in cases {
            assert_eq!(go_format_f(*f), *want, "{f:e}");
        }
    }

    #[test]
    fn quote_like_go() {
        let cases: &[(&str, &str)] = &[
            ("plain", r#""plain""#),
            ("a\"b", r#""a\"b""#),
            ("back\\slash", r#""back\\slash""#),
            ("new\nline\ttab", r#""new\nline\ttab""#),
            ("\u{1}", r#""\x01""#),
            ("\u{7f}", r#""\x7f""#),
            ("héllo ✓", "\"héllo ✓\""),
            ("\u{feff}", r#""\ufeff""#),
        ];
        for (s, want) in cases {
            assert_eq!(go_quote(s), *want);
        }
    }
}
