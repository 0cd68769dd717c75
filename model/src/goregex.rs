//! Go (RE2) regular expression syntax, translated to an equivalent `regex` crate pattern.
//!
//! Prometheus compiles matcher and `label_replace` regexes with Go's `regexp`. The Rust
//! crate rejects some valid Go syntax (a literal `{`, `\Q…\E`, octal escapes, `\p{^L}`)
//! and, worse, gives some shared syntax another meaning: Rust's `\d`, `\s`, `\w`, `\b` are
//! Unicode-aware where Go's are ASCII-only, `\<` is a word boundary in Rust but a literal
//! `<` in Go, and `[a&&b]` or `[a[b]]` are set operations in Rust but plain members in Go.
//! So the Go pattern is parsed here with Go's rules and re-emitted with every construct
//! spelled out explicitly (flags baked into each leaf), never passed through as text.

use std::fmt;

/// Why a Go regular expression was rejected; the text reads as Go's `*syntax.Error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct GoRegexError {
    /// Go's error code text, e.g. `missing closing )`.
    pub code: &'static str,
    /// The offending part of the pattern, as Go quotes it.
    pub expr: String,
}

impl fmt::Display for GoRegexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error parsing regexp: {}: `{}`", self.code, self.expr)
    }
}

fn err<T>(code: &'static str, expr: impl Into<String>) -> Result<T, GoRegexError> {
    Err(GoRegexError { code, expr: expr.into() })
}

/// Go's limit on repetition counts and on nesting depth.
const MAX_REPEAT: u32 = 1000;
const MAX_HEIGHT: usize = 1000;
const RUST_NEST_LIMIT: u32 = 500;

/// Compiles a Go regular expression (exactly as Go would receive it, so callers add
/// Prometheus's `^(?s:…)$` themselves) into a Rust regex with the same matches.
pub fn compile(pattern: &str) -> Result<regex::Regex, GoRegexError> {
    let rust = translate(pattern)?;
    regex::RegexBuilder::new(&rust)
        // The emitted pattern nests deeper than the source (Go allows 1000 levels).
        // The Rust compiler recurses per nesting level: past this depth it could overflow a
        // 2 MiB thread stack in debug builds, so deeper patterns (Go allows 1000) are refused.
        .nest_limit(RUST_NEST_LIMIT)
        .size_limit(64 << 20)
        .build()
        // A pattern Go accepts but the Rust engine cannot hold, in Go's words for such cases.
        .map_err(|e| GoRegexError {
            code: if e.to_string().contains("nest") { "expression nests too deeply" } else { "expression too large" },
            expr: pattern.to_string(),
        })
}

/// Translates a Go regular expression into a Rust `regex` pattern with identical semantics.
pub fn translate(pattern: &str) -> Result<String, GoRegexError> {
    let node = Parser::new(pattern).parse()?;
    let mut out = String::with_capacity(pattern.len() * 2);
    emit_alts(&node, &mut out);
    Ok(out)
}

#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    fold: bool,
    multi: bool,
    dotnl: bool,
    ungreedy: bool,
}

#[derive(Debug)]
enum Node {
    Lit {
        c: char,
        fold: bool,
    },
    /// A complete Rust class expression, e.g. `[a-z]`, already with its `(?i:…)` if any.
    Class(String),
    Dot {
        nl: bool,
    },
    LineStart,
    LineEnd,
    TextStart,
    TextEnd,
    WordBoundary,
    NotWordBoundary,
    Group {
        name: Option<String>,
        capture: bool,
        alts: Vec<Vec<Node>>,
        height: usize,
    },
    Repeat {
        sub: Box<Node>,
        min: u32,
        max: Option<u32>,
        greedy: bool,
        height: usize,
    },
}

impl Node {
    fn height(&self) -> usize {
        match self {
            Node::Group { height, .. } | Node::Repeat { height, .. } => *height,
            _ => 1,
        }
    }

    /// The largest count this node repeats its innermost operand (Go's `repeatIsValid`).
    fn repeat_ok(&self, n: u32) -> bool {
        match self {
            Node::Repeat { sub, min, max, .. } => {
                let m = max.unwrap_or(*min);
                if m == 0 {
                    return true;
                }
                if m > n {
                    return false;
                }
                sub.repeat_ok(n / m)
            }
            Node::Group { alts, .. } => alts.iter().flatten().all(|s| s.repeat_ok(n)),
            _ => true,
        }
    }
}

struct Frame {
    alts: Vec<Vec<Node>>,
    cur: Vec<Node>,
    capture: bool,
    name: Option<String>,
    saved: Flags,
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    flags: Flags,
    /// Capture names seen so far.
    names: Vec<String>,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser { src, pos: 0, flags: Flags::default(), names: Vec::new() }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn parse(mut self) -> Result<Node, GoRegexError> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut top = Frame { alts: Vec::new(), cur: Vec::new(), capture: false, name: None, saved: self.flags };
        // Where the previous repetition operator began, to reject `a**` as Go does.
        let mut last_repeat: Option<usize> = None;
        while let Some(c) = self.peek() {
            let start = self.pos;
            let mut this_repeat = None;
            match c {
                '(' => {
                    let (capture, name, inner) = if self.rest().starts_with("(?") {
                        match self.parse_group_flags()? {
                            GroupStart::SetFlags(f) => {
                                // `(?i)`: lasts to the end of the enclosing group, pushes nothing.
                                self.flags = f;
                                last_repeat = None;
                                continue;
                            }
                            GroupStart::Open { capture, name, flags } => (capture, name, flags),
                        }
                    } else {
                        self.bump();
                        (true, None, self.flags)
                    };
                    let frame = Frame { alts: Vec::new(), cur: Vec::new(), capture, name, saved: self.flags };
                    stack.push(std::mem::replace(&mut top, frame));
                    self.flags = inner;
                    if stack.len() > MAX_HEIGHT {
                        return err("expression nests too deeply", self.src);
                    }
                }
                ')' => {
                    self.bump();
                    let Some(outer) = stack.pop() else {
                        return err("unexpected )", self.src);
                    };
                    let done = std::mem::replace(&mut top, outer);
                    self.flags = done.saved;
                    let mut alts = done.alts;
                    alts.push(done.cur);
                    let height = 1 + alts.iter().flatten().map(Node::height).max().unwrap_or(0);
                    let node = Node::Group { name: done.name, capture: done.capture, alts, height };
                    if node.height() > MAX_HEIGHT {
                        return err("expression nests too deeply", self.src);
                    }
                    top.cur.push(node);
                }
                '|' => {
                    self.bump();
                    let cur = std::mem::take(&mut top.cur);
                    top.alts.push(cur);
                }
                '^' => {
                    self.bump();
                    top.cur.push(if self.flags.multi { Node::LineStart } else { Node::TextStart });
                }
                '$' => {
                    self.bump();
                    top.cur.push(if self.flags.multi { Node::LineEnd } else { Node::TextEnd });
                }
                '.' => {
                    self.bump();
                    top.cur.push(Node::Dot { nl: self.flags.dotnl });
                }
                '[' => {
                    let class = self.parse_class()?;
                    top.cur.push(Node::Class(class));
                }
                '*' | '+' | '?' | '{' => {
                    let (min, max) = match c {
                        '*' => {
                            self.bump();
                            (0, None)
                        }
                        '+' => {
                            self.bump();
                            (1, None)
                        }
                        '?' => {
                            self.bump();
                            (0, Some(1))
                        }
                        _ => match parse_repeat(self.rest()) {
                            None => {
                                // Not `{n}`, `{n,}` or `{n,m}`: Go takes the `{` literally.
                                self.bump();
                                top.cur.push(Node::Lit { c: '{', fold: self.flags.fold });
                                last_repeat = None;
                                continue;
                            }
                            Some((min, max, len)) => {
                                self.pos += len;
                                let bad = |n: i64| !(0..=MAX_REPEAT as i64).contains(&n);
                                if bad(min) || max.is_some_and(bad) || max.is_some_and(|m| m < min) {
                                    return err("invalid repeat count", &self.src[start..self.pos]);
                                }
                                (min as u32, max.map(|m| m as u32))
                            }
                        },
                    };
                    let mut greedy = !self.flags.ungreedy;
                    if self.peek() == Some('?') {
                        self.bump();
                        greedy = !greedy;
                    }
                    if let Some(lr) = last_repeat {
                        return err("invalid nested repetition operator", &self.src[lr..self.pos]);
                    }
                    let Some(sub) = top.cur.pop() else {
                        return err("missing argument to repetition operator", &self.src[start..self.pos]);
                    };
                    let height = 1 + sub.height();
                    let node = Node::Repeat { sub: Box::new(sub), min, max, greedy, height };
                    if (min >= 2 || max.is_some_and(|m| m >= 2)) && c == '{' && !node.repeat_ok(MAX_REPEAT) {
                        return err("invalid repeat count", &self.src[start..self.pos]);
                    }
                    if node.height() > MAX_HEIGHT {
                        return err("expression nests too deeply", self.src);
                    }
                    top.cur.push(node);
                    this_repeat = Some(start);
                }
                '\\' => self.parse_escape_outside(&mut top.cur)?,
                _ => {
                    self.bump();
                    top.cur.push(Node::Lit { c, fold: self.flags.fold });
                }
            }
            last_repeat = this_repeat;
        }
        if !stack.is_empty() {
            return err("missing closing )", self.src);
        }
        let mut alts = top.alts;
        alts.push(top.cur);
        Ok(Node::Group { name: None, capture: false, alts, height: 0 })
    }
}

/// `{n}`, `{n,}`, `{n,m}` at the start of `s`: (min, max, bytes used). Go refuses leading
/// zeros, in which case (as for any other malformed form) the `{` is a literal.
fn parse_repeat(s: &str) -> Option<(i64, Option<i64>, usize)> {
    let b = s.as_bytes();
    let mut i = 1;
    let int = |i: &mut usize| -> Option<i64> {
        let st = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        if *i == st || (*i - st >= 2 && b[st] == b'0') {
            return None;
        }
        // Go caps the value rather than overflow; anything that large is invalid anyway.
        Some(s[st..*i].parse::<i64>().unwrap_or(i64::MAX))
    };
    let min = int(&mut i)?;
    let max = if b.get(i) == Some(&b',') {
        i += 1;
        if b.get(i) == Some(&b'}') { None } else { Some(int(&mut i)?) }
    } else {
        Some(min)
    };
    if b.get(i) != Some(&b'}') {
        return None;
    }
    Some((min, max, i + 1))
}

enum GroupStart {
    SetFlags(Flags),
    Open { capture: bool, name: Option<String>, flags: Flags },
}

fn is_valid_capture_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Parser<'_> {
    /// After `(?`: a named capture, a flag group `(?i:`, or flags `(?i)`.
    fn parse_group_flags(&mut self) -> Result<GroupStart, GoRegexError> {
        let t = self.rest();
        let start = self.pos;
        let name_at = if t.starts_with("(?P<") {
            Some(4)
        } else if t.starts_with("(?<") && !t.starts_with("(?<=") && !t.starts_with("(?<!") {
            // Go 1.22+ (Prometheus 3.x) accepts `(?<name>`; lookbehind stays unsupported.
            Some(3)
        } else {
            None
        };
        if let Some(k) = name_at {
            let Some(end) = t.find('>') else {
                return err("invalid named capture", t);
            };
            let name = &t[k..end];
            if !is_valid_capture_name(name) {
                return err("invalid named capture", &t[..=end]);
            }
            // Go allows repeated names and names starting with a digit; Rust does not, so
            // those groups stay numbered only (`$name` then finds the first, as in Go).
            let rust_name = (!self.names.iter().any(|n| n == name) && !name.starts_with(|c: char| c.is_ascii_digit()))
                .then(|| name.to_string());
            self.names.push(name.to_string());
            self.pos += end + 1;
            return Ok(GroupStart::Open { capture: true, name: rust_name, flags: self.flags });
        }
        self.pos += 2;
        let mut f = self.flags;
        let mut negate = false;
        let mut saw = false;
        while let Some(c) = self.bump() {
            let v = !negate;
            match c {
                'i' => f.fold = v,
                'm' => f.multi = v,
                's' => f.dotnl = v,
                'U' => f.ungreedy = v,
                '-' if !negate => {
                    negate = true;
                    saw = false;
                    continue;
                }
                ':' | ')' if !negate || saw => {
                    return Ok(if c == ':' {
                        GroupStart::Open { capture: false, name: None, flags: f }
                    } else {
                        GroupStart::SetFlags(f)
                    });
                }
                _ => break,
            }
            saw = true;
        }
        err("invalid or unsupported Perl syntax", &self.src[start..self.pos])
    }

    fn parse_escape_outside(&mut self, cur: &mut Vec<Node>) -> Result<(), GoRegexError> {
        let start = self.pos;
        let t = self.rest();
        let Some(c) = t[1..].chars().next() else {
            return err("trailing backslash at end of expression", "");
        };
        let fold = self.flags.fold;
        match c {
            'A' => cur.push(Node::TextStart),
            'z' => cur.push(Node::TextEnd),
            'b' => cur.push(Node::WordBoundary),
            'B' => cur.push(Node::NotWordBoundary),
            'C' => return err("invalid escape sequence", "\\C"),
            'Q' => {
                let body = &t[2..];
                let (lit, used) = match body.find("\\E") {
                    Some(i) => (&body[..i], 2 + i + 2),
                    None => (body, t.len()),
                };
                cur.extend(lit.chars().map(|c| Node::Lit { c, fold }));
                self.pos += used;
                return Ok(());
            }
            'd' | 'D' | 's' | 'S' | 'w' | 'W' => {
                let (neg, body) = perl_class(c);
                cur.push(Node::Class(wrap_fold(fold, &format!("[{}{body}]", if neg { "^" } else { "" }))));
            }
            'p' | 'P' => {
                self.pos += 1;
                let item = self.parse_unicode_class(start)?;
                cur.push(Node::Class(wrap_fold(fold, &item)));
                return Ok(());
            }
            _ => {
                let cp = self.parse_escape()?;
                cur.push(match char::from_u32(cp) {
                    Some(c) => Node::Lit { c, fold },
                    None => Node::Class(NOTHING.to_string()),
                });
                return Ok(());
            }
        }
        self.pos += 1 + c.len_utf8();
        Ok(())
    }

    /// A single-character escape at `\`; Go's `parseEscape`.
    /// Returns a code point, not a `char`: Go accepts surrogates (`\x{D800}`), which no
    /// string can contain.
    fn parse_escape(&mut self) -> Result<u32, GoRegexError> {
        let start = self.pos;
        self.bump();
        let Some(c) = self.bump() else {
            return err("trailing backslash at end of expression", "");
        };
        let bad = |p: &Self| err("invalid escape sequence", &p.src[start..p.pos]);
        match c {
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c as u32),
            '1'..='7' if !matches!(self.peek(), Some('0'..='7')) => bad(self),
            '0'..='7' => {
                // Up to three octal digits in all, so at most 0o777.
                let mut v = c as u32 - '0' as u32;
                for _ in 0..2 {
                    match self.peek() {
                        Some(d @ '0'..='7') => {
                            self.bump();
                            v = v * 8 + (d as u32 - '0' as u32);
                        }
                        _ => break,
                    }
                }
                Ok(v)
            }
            'x' => {
                let hex = |p: &mut Self| p.bump().and_then(|d| d.to_digit(16));
                if self.peek() == Some('{') {
                    self.bump();
                    let mut v: u32 = 0;
                    let mut n = 0;
                    loop {
                        match self.bump() {
                            Some('}') if n > 0 => break,
                            Some(d) if d.is_ascii_hexdigit() => {
                                v = v.saturating_mul(16).saturating_add(d.to_digit(16).unwrap_or(0));
                                n += 1;
                                if v > 0x10FFFF {
                                    return bad(self);
                                }
                            }
                            _ => return bad(self),
                        }
                    }
                    Ok(v)
                } else {
                    match (hex(self), hex(self)) {
                        (Some(a), Some(b)) => Ok(a * 16 + b),
                        _ => bad(self),
                    }
                }
            }
            'a' => Ok(0x07),
            'f' => Ok(0x0c),
            'n' => Ok(0x0a),
            'r' => Ok(0x0d),
            't' => Ok(0x09),
            'v' => Ok(0x0b),
            _ => bad(self),
        }
    }

    /// After `\p`/`\P` (self.pos at the letter `p`/`P`): the Rust class item, without brackets.
    fn parse_unicode_class(&mut self, start: usize) -> Result<String, GoRegexError> {
        let neg0 = self.bump() == Some('P');
        let name = match self.bump() {
            Some('{') => {
                let Some(end) = self.rest().find('}') else {
                    return err("invalid character class range", &self.src[start..]);
                };
                let n = &self.rest()[..end];
                self.pos += end + 1;
                n
            }
            Some(c) => &self.src[self.pos - c.len_utf8()..self.pos],
            None => return err("invalid character class range", &self.src[start..]),
        };
        let (neg, name) = match name.strip_prefix('^') {
            Some(n) => (!neg0, n),
            None => (neg0, name),
        };
        let Some(body) = unicode_table(name) else {
            return err("invalid character class range", &self.src[start..self.pos]);
        };
        Ok(if neg { format!("[^{body}]") } else { format!("[{body}]") })
    }

    /// A bracketed class at `[`: the complete Rust class, folded if `(?i)` is on.
    fn parse_class(&mut self) -> Result<String, GoRegexError> {
        let start = self.pos;
        self.bump();
        let mut out = String::from("[");
        if self.peek() == Some('^') {
            self.bump();
            out.push('^');
        }
        let mut first = true;
        loop {
            let Some(c) = self.peek() else {
                return err("missing closing ]", &self.src[start..]);
            };
            if c == ']' && !first {
                self.bump();
                break;
            }
            first = false;
            let t = self.rest();
            if let Some(inner) = t.strip_prefix("[:")
                && let Some(end) = inner.find(":]")
            {
                let name = &t[..end + 4];
                let Some(body) = posix_class(&inner[..end]) else {
                    return err("invalid character class range", name);
                };
                out.push_str(&body);
                self.pos += name.len();
                continue;
            }
            if c == '\\' {
                match t[1..].chars().next() {
                    Some(p @ ('d' | 'D' | 's' | 'S' | 'w' | 'W')) => {
                        let (neg, body) = perl_class(p);
                        out.push_str(&format!("[{}{body}]", if neg { "^" } else { "" }));
                        self.pos += 2;
                        continue;
                    }
                    Some('p' | 'P') => {
                        let at = self.pos;
                        self.pos += 1;
                        let item = self.parse_unicode_class(at)?;
                        out.push_str(&item);
                        continue;
                    }
                    _ => {}
                }
            }
            let item_start = self.pos;
            let lo = self.class_char(start)?;
            let mut hi = lo;
            let t = self.rest();
            if t.len() >= 2 && t.starts_with('-') && !t[1..].starts_with(']') {
                self.bump();
                hi = self.class_char(start)?;
                if hi < lo {
                    return err("invalid character class range", &self.src[item_start..self.pos]);
                }
            }
            // Surrogates cannot be written in a Rust class; they match nothing anyway.
            let (lo, hi) = (if (0xD800..0xE000).contains(&lo) { 0xE000 } else { lo }, hi.min(0x10FFFF));
            let hi = if (0xD800..0xE000).contains(&hi) { 0xD7FF } else { hi };
            if lo <= hi {
                out.push_str(&format!("\\x{{{lo:X}}}-\\x{{{hi:X}}}"));
            } else {
                out.push_str(NOTHING);
            }
        }
        out.push(']');
        Ok(wrap_fold(self.flags.fold, &out))
    }

    fn class_char(&mut self, class_start: usize) -> Result<u32, GoRegexError> {
        match self.peek() {
            None => err("missing closing ]", &self.src[class_start..]),
            Some('\\') => self.parse_escape(),
            Some(c) => {
                self.bump();
                Ok(c as u32)
            }
        }
    }
}

/// A Rust class that matches nothing (Rust has no `[]`).
const NOTHING: &str = "[a&&b]";

fn wrap_fold(fold: bool, class: &str) -> String {
    if fold { format!("(?i:{class})") } else { class.to_string() }
}

/// Go's Perl classes are ASCII-only: (negated, body for inside brackets).
fn perl_class(c: char) -> (bool, &'static str) {
    let body = match c.to_ascii_lowercase() {
        'd' => "0-9",
        's' => "\\t\\n\\x0C\\r ",
        _ => "0-9A-Za-z_",
    };
    (c.is_ascii_uppercase(), body)
}

/// Go's POSIX classes (ASCII only), `[:name:]` and `[:^name:]`, as a nested Rust class.
fn posix_class(name: &str) -> Option<String> {
    let (neg, name) = match name.strip_prefix('^') {
        Some(n) => (true, n),
        None => (false, name),
    };
    let body = match name {
        "alnum" => "0-9A-Za-z",
        "alpha" => "A-Za-z",
        "ascii" => "\\x00-\\x7F",
        "blank" => "\\t ",
        "cntrl" => "\\x00-\\x1F\\x7F",
        "digit" => "0-9",
        "graph" => "!-~",
        "lower" => "a-z",
        "print" => " -~",
        "punct" => "!-/:-@\\[-`\\{-~",
        "space" => "\\t\\n\\x0B\\x0C\\r ",
        "upper" => "A-Z",
        "word" => "0-9A-Za-z_",
        "xdigit" => "0-9A-Fa-f",
        _ => return None,
    };
    Some(format!("[{}{body}]", if neg { "^" } else { "" }))
}

/// Go's general categories (`unicode.Categories`).
const GO_CATEGORIES: &[&str] = &[
    "Cc", "Cf", "Co", "Cs", "L", "Ll", "Lm", "Lo", "Lt", "Lu", "M", "Mc", "Me", "Mn", "N", "Nd", "Nl", "No", "P", "Pc",
    "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "S", "Sc", "Sk", "Sm", "So", "Z", "Zl", "Zp", "Zs",
];

/// The body of a Rust class for Go's `\p{name}`, or `None` if Go does not know the name.
fn unicode_table(name: &str) -> Option<String> {
    if name == "Any" {
        return Some("\\x00-\\x{10FFFF}".to_string());
    }
    // Go's `C` is Cc|Cf|Co|Cs; Rust's also has the unassigned code points (Cn). Surrogates
    // (Cs) never occur in a Rust string, and Rust refuses to name them: an empty set.
    if name == "C" {
        return Some("\\p{gc=Cc}\\p{gc=Cf}\\p{gc=Co}".to_string());
    }
    if name == "Cs" {
        return Some(NOTHING[1..NOTHING.len() - 1].to_string());
    }
    if GO_CATEGORIES.contains(&name) {
        return Some(format!("\\p{{gc={name}}}"));
    }
    // Scripts: Go is exact (`Greek`, `Old_Italic`) where Rust matches loosely, and a bare
    // Rust name means Script_Extensions, so ask for `sc=` and only with Go's spelling.
    // Rust also takes the four-letter ISO codes (`Grek`), Go only full names; these are the
    // scripts whose full name has four letters.
    const FOUR: &[&str] = &["Ahom", "Cham", "Lisu", "Miao", "Modi", "Newa", "Thai", "Toto"];
    let go_spelled = name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphabetic() || c == '_')
        && (name.len() != 4 || FOUR.contains(&name));
    if go_spelled {
        let item = format!("\\p{{sc={name}}}");
        if regex::Regex::new(&format!("[{item}]")).is_ok() {
            return Some(item);
        }
    }
    None
}

fn emit_lit(c: char, fold: bool, out: &mut String) {
    // Digits and ASCII punctuation have no case; anything else is left to Rust's folding.
    if fold && (c.is_ascii_alphabetic() || !c.is_ascii()) {
        out.push_str(&format!("(?i:\\x{{{:X}}})", c as u32));
    } else if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        out.push_str(&format!("\\x{{{:X}}}", c as u32));
    }
}

fn emit_alts(node: &Node, out: &mut String) {
    if let Node::Group { alts, .. } = node {
        for (i, alt) in alts.iter().enumerate() {
            if i > 0 {
                out.push('|');
            }
            for n in alt {
                emit(n, out);
            }
        }
    }
}

fn emit(node: &Node, out: &mut String) {
    match node {
        Node::Lit { c, fold } => emit_lit(*c, *fold, out),
        Node::Class(s) => out.push_str(s),
        Node::Dot { nl: true } => out.push_str("(?s:.)"),
        Node::Dot { nl: false } => out.push_str("(?-s:.)"),
        Node::LineStart => out.push_str("(?m:^)"),
        Node::LineEnd => out.push_str("(?m:$)"),
        Node::TextStart => out.push_str("\\A"),
        Node::TextEnd => out.push_str("\\z"),
        Node::WordBoundary => out.push_str("(?-u:\\b)"),
        Node::NotWordBoundary => out.push_str("(?-u:\\B)"),
        Node::Group { name, capture, .. } => {
            match (capture, name) {
                (true, Some(n)) => out.push_str(&format!("(?P<{n}>")),
                (true, _) => out.push('('),
                (false, _) => out.push_str("(?:"),
            }
            emit_alts(node, out);
            out.push(')');
        }
        Node::Repeat { sub, min, max, greedy, .. } => {
            out.push_str("(?:");
            emit(sub, out);
            out.push(')');
            match (min, max) {
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (0, Some(1)) => out.push('?'),
                (n, None) => out.push_str(&format!("{{{n},}}")),
                (n, Some(m)) if n == m => out.push_str(&format!("{{{n}}}")),
                (n, Some(m)) => out.push_str(&format!("{{{n},{m}}}")),
            }
            if !greedy {
                out.push('?');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles as Prometheus does for a matcher: anchored, `.` matching newlines.
    fn anchored(p: &str) -> Result<regex::Regex, GoRegexError> {
        compile(&format!("^(?s:{p})$"))
    }

    #[test]
    fn go_syntax_and_semantics() {
        // (Go pattern, must match, must not match)
        let cases: &[(&str, &[&str], &[&str])] = &[
            // A `{` that does not start a valid repetition is a literal.
            ("x{", &["x{"], &["x", "x{{"]),
            ("a{,3}", &["a{,3}"], &["a", "aaa"]),
            ("{foo", &["{foo"], &["foo"]),
            ("a{01}", &["a{01}"], &["a"]),
            ("a{2}", &["aa"], &["a", "a{2}"]),
            ("a{2,}", &["aa", "aaaa"], &["a"]),
            ("a{1,2}b", &["ab", "aab"], &["aaab"]),
            ("a{}", &["a{}"], &["a"]),
            // \Q…\E quotes; without \E to the end; a repetition binds the last character.
            (r"\Qa.b\E", &["a.b"], &["axb"]),
            (r"\Qab\E*", &["a", "abbb"], &["abab"]),
            (r"\Q\E", &[""], &["a"]),
            // Octal escapes.
            (r"\0", &["\0"], &["0"]),
            (r"\012", &["\n"], &["12"]),
            (r"\123", &["S"], &["123"]),
            (r"\0123", &["\n3"], &["S"]),
            (r"\x41\x{1F600}", &["A\u{1F600}"], &["x41"]),
            (r"\a\f\t\v", &["\x07\x0c\t\x0b"], &["a"]),
            // Unicode classes, negated with `^` too; Go's C has no unassigned code points.
            (r"\p{^L}", &["1"], &["a"]),
            (r"\P{^L}", &["a"], &["1"]),
            (r"\pL+", &["é", "ab"], &["1"]),
            (r"\PL", &["1"], &["é"]),
            (r"\p{Greek}", &["α"], &["a"]),
            (r"\pC", &["\0"], &["\u{378}", "a"]),
            (r"\p{Cs}|[^\p{Cs}]", &["a"], &["ab"]),
            (r"\P{Cs}", &["a"], &[""]),
            (r"\p{Any}", &["\n", "a"], &["", "ab"]),
            (r"[\p{Lu}\d]+", &["A1"], &["a"]),
            // Perl classes, \b and POSIX classes are ASCII-only in Go.
            (r"\s", &[" ", "\t", "\n", "\r", "\x0c"], &["\u{a0}", "\u{2003}", "\x0b"]),
            (r"\S", &["\u{a0}", "a"], &[" "]),
            (r"\d", &["7"], &["\u{663}", "a"]),
            (r"\w+", &["a_Z9"], &["é", "a-b"]),
            (r"\W", &["é", "-"], &["a"]),
            (r"é\b", &[], &["é"]),
            (r"é\B", &["é"], &[]),
            (r"\bfoo\b", &["foo"], &[]),
            (r"[\s\d]+", &[" 1"], &["\u{a0}", "\u{663}"]),
            ("[[:alpha:]]+", &["abc"], &["é", "1"]),
            ("[[:^alpha:]]", &["1", "é"], &["a"]),
            ("[[:space:]]", &["\x0b", " "], &["\u{a0}"]),
            ("[[:punct:]]+", &["!/:@[`{~"], &["a"]),
            ("[[:word:][:digit:]]+", &["a_1"], &["-"]),
            // Go class syntax is not Rust's: no nesting, no set operations.
            ("[a&&b]+", &["&", "a&b"], &["c"]),
            ("[+--]+", &["+,-"], &["a"]),
            ("[a~~b]+", &["~"], &["c"]),
            ("[[x]]", &["x]", "[]"], &["x"]),
            ("[]a]", &["]", "a"], &["b"]),
            ("[a-]", &["-", "a"], &["b"]),
            ("[^a]", &["\n", "b"], &["a"]),
            (r"[^\x00-\x{10FFFF}]|b", &["b"], &["a", ""]),
            (r"\x{D800}|[\x{D000}-\x{DFFF}]|[\x{D800}-\x{DBFF}]|b", &["b", "\u{D7FF}"], &["\u{fffd}", "\u{E000}"]),
            ("(?i)ſ", &["s", "S", "ſ"], &["t"]),
            (r"[\]\\]", &["]", "\\"], &["a"]),
            // Escaped punctuation is a literal; `\<` is not a word boundary as in Rust.
            (r"\<a\>", &["<a>"], &["a"]),
            (r"\#\ ", &["# "], &[]),
            // Rust's extended-mode characters are ordinary in Go.
            ("a b#c", &["a b#c"], &["abc"]),
            // Flags, their scope, and `.`.
            ("a.b", &["a\nb", "axb"], &["ab"]),
            ("(?-s:a.b)", &["axb"], &["a\nb"]),
            ("(?i)FOO", &["foo", "FoO"], &["fo"]),
            ("(a(?i)b)c", &["aBc", "abc"], &["aBC", "Abc"]),
            ("(?i:a)b", &["Ab"], &["AB"]),
            ("(?i)k", &["K", "\u{212a}"], &[]),
            ("(?i)[a-c]", &["B"], &["D"]),
            (r"(?i)\W", &["-"], &["\u{212a}", "k"]),
            ("(?m)a$\n^b", &["a\nb"], &[]),
            ("a$\n", &[], &["a\n"]),
            ("a(?)b", &["ab"], &[]),
            ("a(?i)*", &["", "aa"], &["aA"]),
            // Groups and alternation.
            ("(?P<name>x)y", &["xy"], &[]),
            ("(?<name>x)", &["x"], &[]),
            ("(?P<1a>x)", &["x"], &[]),
            ("(?P<n>a)(?P<n>b)", &["ab"], &[]),
            ("a|b|", &["a", "b", ""], &["ab"]),
            ("()", &[""], &["a"]),
            ("a*?b+?c??", &["abc", "b"], &[]),
            ("^a*", &["aa"], &[]),
        ];
        for (p, yes, no) in cases {
            let re = anchored(p).unwrap_or_else(|e| panic!("{p:?}: {e} ({:?})", translate(p)));
            for s in *yes {
                assert!(re.is_match(s), "{p:?} should match {s:?} (rust {:?})", translate(p));
            }
            for s in *no {
                assert!(!re.is_match(s), "{p:?} should not match {s:?} (rust {:?})", translate(p));
            }
        }
    }

    #[test]
    fn emitted_patterns() {
        let cases = [
            ("x{", r"x\x{7B}"),
            (r"\d", "[0-9]"),
            (r"\s", r"[\t\n\x0C\r ]"),
            ("(?i)a.", "(?i:\\x{61})(?-s:.)"),
            ("(?U)a+", "(?:a)+?"),
            ("(?U)a+?", "(?:a)+"),
            ("a{2,5}", "(?:a){2,5}"),
            ("[a-c]", r"[\x{61}-\x{63}]"),
            ("^$", r"\A\z"),
            ("(?m)^$", "(?m:^)(?m:$)"),
            (r"\b\B", r"(?-u:\b)(?-u:\B)"),
            (r"\p{Greek}", r"[\p{sc=Greek}]"),
            ("(?P<x>a)(?P<x>b)", "(?P<x>a)(b)"),
            (r"\Qa.b", r"a\x{2E}b"),
        ];
        for (go, rust) in cases {
            assert_eq!(translate(go).as_deref(), Ok(rust), "{go}");
        }
    }

    #[test]
    fn go_rejects() {
        let cases = [
            ("(", "missing closing ): `(`"),
            ("a)", "unexpected ): `a)`"),
            ("[a", "missing closing ]: `[a`"),
            ("a**", "invalid nested repetition operator: `**`"),
            ("a*+", "invalid nested repetition operator: `*+`"),
            ("a??*", "invalid nested repetition operator: `??*`"),
            ("a{2}*", "invalid nested repetition operator: `{2}*`"),
            ("*", "missing argument to repetition operator: `*`"),
            ("a|*", "missing argument to repetition operator: `*`"),
            ("(*)", "missing argument to repetition operator: `*`"),
            ("a{1001}", "invalid repeat count: `{1001}`"),
            ("a{2,1}", "invalid repeat count: `{2,1}`"),
            ("(a{500}){3}", "invalid repeat count: `{3}`"),
            (r"\1", r"invalid escape sequence: `\1`"),
            (r"\8", r"invalid escape sequence: `\8`"),
            (r"\Z", r"invalid escape sequence: `\Z`"),
            (r"\C", r"invalid escape sequence: `\C`"),
            (r"\e", r"invalid escape sequence: `\e`"),
            (r"\x{110000}", r"invalid escape sequence: `\x{110000`"),
            (r"\xG", r"invalid escape sequence: `\xG`"),
            (r"[\b]", r"invalid escape sequence: `\b`"),
            (r"[\Q]", r"invalid escape sequence: `\Q`"),
            ("a\\", "trailing backslash at end of expression: ``"),
            (r"\p{Grek}", r"invalid character class range: `\p{Grek}`"),
            (r"\p{greek}", r"invalid character class range: `\p{greek}`"),
            (r"\p{Letter}", r"invalid character class range: `\p{Letter}`"),
            (r"\p{Foo", r"invalid character class range: `\p{Foo`"),
            ("[[:foo:]]", "invalid character class range: `[:foo:]`"),
            ("[z-a]", "invalid character class range: `z-a`"),
            ("[a--b]", "invalid character class range: `a--`"),
            ("(?=x)", "invalid or unsupported Perl syntax: `(?=`"),
            ("(?!x)", "invalid or unsupported Perl syntax: `(?!`"),
            ("(?<=x)", "invalid or unsupported Perl syntax: `(?<`"),
            ("(?x)a", "invalid or unsupported Perl syntax: `(?x`"),
            ("(?i-)a", "invalid or unsupported Perl syntax: `(?i-)`"),
            ("(?P<a-b>x)", "invalid named capture: `(?P<a-b>`"),
            ("(?P<>x)", "invalid named capture: `(?P<>`"),
            ("(?P<a", "invalid named capture: `(?P<a`"),
        ];
        // An unterminated \Q quotes Prometheus's own closing `)$` too, as in Go.
        assert_eq!(anchored(r"\Qa.b").unwrap_err().code, "missing closing )");
        for (p, want) in cases {
            assert_eq!(translate(p).map_err(|e| e.to_string()), Err(format!("error parsing regexp: {want}")), "{p}");
        }
    }

    #[test]
    fn nesting_limits() {
        let deep = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
        assert!(anchored(&deep(400)).unwrap().is_match("a"));
        // Go takes 1000 levels; the Rust engine is held to less to keep its stack bounded.
        assert!(translate(&deep(999)).is_ok());
        assert_eq!(anchored(&deep(999)).unwrap_err().code, "expression nests too deeply");
        assert_eq!(translate(&deep(1001)).unwrap_err().code, "expression nests too deeply");
        let stars = format!("a{}", "(?i)*".repeat(2000));
        assert_eq!(translate(&stars).unwrap_err().code, "expression nests too deeply");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(p in r"[\\()\[\]{}|*+?.^$a-c0-9:,PpQEx<>=!&~\-_ iUsm\n]{0,40}") {
            if let Ok(rust) = translate(&p) {
                // Whatever Go accepts must compile on the Rust side too.
                proptest::prop_assert!(compile(&p).is_ok(), "{p:?} -> {rust:?}: {:?}", compile(&p).err());
            }
        }

        /// Where Go and Rust syntax and semantics coincide, the translation matches exactly
        /// what the pattern fed to Rust directly matches.
        #[test]
        fn agrees_with_rust_on_common_syntax(p in r"[ab.()|*+?^$]{0,12}", hay in r"[ab\n]{0,6}") {
            let rust = regex::Regex::new(&format!("^(?s:{p})$"));
            if let (Ok(rust), Ok(go)) = (rust, anchored(&p)) {
                proptest::prop_assert_eq!(rust.is_match(&hay), go.is_match(&hay), "{:?} on {:?}: {:?}", p, hay, translate(&p));
            }
        }

        #[test]
        fn never_panics_any(p in ".{0,40}") {
            let _ = compile(&p);
        }
    }
}
