//! A PromQL front end that reports bad queries as Prometheus does.
//!
//! `promql-parser` builds the AST the engine evaluates, but its error messages and
//! positions are its own. This module lexes and parses the query again the way
//! Prometheus's `lex.go` and `generated_parser.y` do, keeping byte positions, so that a
//! bad query is answered with Prometheus's wording: lexer errors, the grammar's
//! `unexpected <item> in <context>, expected <what>` messages, the semantic errors raised
//! while reducing (unknown functions, bad durations and numbers, `@`/offset misuse,
//! regex errors) and, when the syntax is fine, the type checks of `checkAST`
//! ([`crate::check`]). Only the first error is reported, as Prometheus's
//! `ParseErrors.Error()` does.
//!
//! The accepted language is Prometheus 3.x's as far as Norn implements it (numbers as
//! durations, quoted UTF-8 label names, `fill` modifiers, `limitk`/`limit_ratio`); the
//! wording of errors follows Prometheus 2.42, the reference the error tests run against.

use crate::check;

/// Where a message starts, in bytes from the start of the query.
pub(crate) type Pos = usize;

/// A first error: byte position and message (without the `line:col: parse error:` prefix).
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// Byte offset the error points at.
    pub pos: Pos,
    /// The message as Prometheus words it.
    pub msg: String,
}

impl ParseError {
    /// The full text, `line:col: parse error: msg`, with Prometheus's line and column
    /// (1-based; the column counts bytes since the last newline).
    pub fn render(&self, query: &str) -> String {
        let pos = self.pos.min(query.len());
        let before = &query.as_bytes()[..pos];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let col = match before.iter().rposition(|b| *b == b'\n') {
            Some(i) => pos - i,
            None => pos + 1,
        };
        format!("{line}:{col}: parse error: {}", self.msg)
    }
}

/// Checks `query` as Prometheus would parse and type-check it; the first error, if any.
pub fn check_query(query: &str) -> Result<(), ParseError> {
    let mut p = Parser::new(query);
    let node = p.parse_start();
    if p.gave_up {
        return Ok(());
    }
    if let Some(e) = p.errors.into_iter().next() {
        return Err(e);
    }
    match node {
        Some(n) => check::check_ast(query, &n),
        None => Ok(()),
    }
}

/// A label matcher of a series selector: name, operator (`=`, `!=`, `=~`, `!~`), value.
pub type SelectorMatcher = (String, &'static str, String);

/// Parses a series selector (`match[]`) as Prometheus's `ParseMetricSelector` does: only a
/// vector selector, no type checks. The metric name comes back as a `__name__` matcher.
pub fn parse_selector(text: &str) -> Result<Vec<SelectorMatcher>, ParseError> {
    let mut p = Parser::new(text);
    let node = p.selector_only();
    if let Some(e) = p.errors.into_iter().next() {
        return Err(e);
    }
    let Some(Node::Selector { name, matchers, .. }) = node else {
        return Err(ParseError { pos: 0, msg: "no selector found".into() });
    };
    let mut out: Vec<SelectorMatcher> = matchers
        .into_iter()
        .map(|m| {
            let op = match m.op {
                MatchKind::Eq => "=",
                MatchKind::Neq => "!=",
                MatchKind::Re => "=~",
                MatchKind::Nre => "!~",
            };
            (m.name, op, m.value)
        })
        .collect();
    if let Some(n) = name {
        out.insert(0, ("__name__".into(), "=", n));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------

/// Binary operators (and `=~`/`!~`, which Prometheus also counts as operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eqlc,
    Neq,
    Lss,
    Lte,
    Gtr,
    Gte,
    And,
    Or,
    Unless,
    EqlRegex,
    NeqRegex,
}

impl Op {
    pub(crate) fn text(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
            Op::Div => "/",
            Op::Mod => "%",
            Op::Pow => "^",
            Op::Atan2 => "atan2",
            Op::Eqlc => "==",
            Op::Neq => "!=",
            Op::Lss => "<",
            Op::Lte => "<=",
            Op::Gtr => ">",
            Op::Gte => ">=",
            Op::And => "and",
            Op::Or => "or",
            Op::Unless => "unless",
            Op::EqlRegex => "=~",
            Op::NeqRegex => "!~",
        }
    }

    /// Binding strength in binary expressions; `None` for the matcher operators.
    fn precedence(self) -> Option<u8> {
        Some(match self {
            Op::Or => 1,
            Op::And | Op::Unless => 2,
            Op::Eqlc | Op::Neq | Op::Lss | Op::Lte | Op::Gtr | Op::Gte => 3,
            Op::Add | Op::Sub => 4,
            Op::Mul | Op::Div | Op::Mod | Op::Atan2 => 5,
            Op::Pow => 6,
            Op::EqlRegex | Op::NeqRegex => return None,
        })
    }

    pub(crate) fn is_comparison(self) -> bool {
        matches!(self, Op::Eqlc | Op::Neq | Op::Lss | Op::Lte | Op::Gtr | Op::Gte)
    }

    pub(crate) fn is_set(self) -> bool {
        matches!(self, Op::And | Op::Or | Op::Unless)
    }
}

/// Keywords that are neither operators nor aggregators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    Bool,
    By,
    GroupLeft,
    GroupRight,
    Ignoring,
    Offset,
    On,
    Without,
    Start,
    End,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Eof,
    /// A lexer error; the message is the item's value.
    Error,
    Comment,
    Ident,
    MetricIdent,
    Number,
    Duration,
    Str,
    LParen,
    RParen,
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Comma,
    Colon,
    Eql,
    At,
    Op(Op),
    Kw(Kw),
    Agg,
}

#[derive(Debug, Clone)]
struct Tok {
    kind: Kind,
    pos: Pos,
    val: String,
}

impl Tok {
    /// Prometheus's `Item.desc()`: how an unexpected item is named in messages.
    fn desc(&self) -> String {
        let short = |v: &str| {
            if v.chars().count() > 10 {
                format!("{}...", check::go_quote(&v.chars().take(10).collect::<String>()))
            } else {
                check::go_quote(v)
            }
        };
        match &self.kind {
            Kind::Eof => "end of input".into(),
            Kind::Error => self.val.clone(),
            Kind::Comment => format!("comment {}", short(&self.val)),
            Kind::Ident => format!("identifier {}", check::go_quote(&self.val)),
            Kind::MetricIdent => format!("metric identifier {}", check::go_quote(&self.val)),
            Kind::Number => format!("number {}", short(&self.val)),
            Kind::Duration => format!("duration {}", short(&self.val)),
            Kind::Str => format!("string {}", short(&self.val)),
            Kind::LParen
            | Kind::RParen
            | Kind::LBrace
            | Kind::RBrace
            | Kind::LBracket
            | Kind::RBracket
            | Kind::Comma
            | Kind::Colon
            | Kind::Eql => check::go_quote(&self.val),
            // `@` has no entry in Prometheus's item-name table, so its type prints as a
            // bare item number (57385 in 2.42).
            Kind::At => "\"<Item 57385>\" <op:@>".into(),
            Kind::Op(_) => format!("<op:{}>", self.val),
            Kind::Kw(_) => format!("<{}>", self.val),
            Kind::Agg => format!("<aggr:{}>", self.val),
        }
    }
}

fn is_space(c: Option<char>) -> bool {
    matches!(c, Some(' ' | '\t' | '\n' | '\r'))
}

fn is_alpha(c: Option<char>) -> bool {
    matches!(c, Some(c) if c == '_' || c.is_ascii_alphabetic())
}

fn is_digit(c: Option<char>) -> bool {
    matches!(c, Some(c) if c.is_ascii_digit())
}

fn is_alnum(c: Option<char>) -> bool {
    is_alpha(c) || is_digit(c)
}

const AGGREGATORS: &[&str] = &[
    "avg",
    "bottomk",
    "count",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
    "max",
    "min",
    "quantile",
    "stddev",
    "stdvar",
    "sum",
    "topk",
];

fn keyword(word: &str) -> Option<Kind> {
    let w = word.to_ascii_lowercase();
    Some(match w.as_str() {
        "and" => Kind::Op(Op::And),
        "or" => Kind::Op(Op::Or),
        "unless" => Kind::Op(Op::Unless),
        "atan2" => Kind::Op(Op::Atan2),
        "offset" => Kind::Kw(Kw::Offset),
        "by" => Kind::Kw(Kw::By),
        "without" => Kind::Kw(Kw::Without),
        "on" => Kind::Kw(Kw::On),
        "ignoring" => Kind::Kw(Kw::Ignoring),
        "group_left" => Kind::Kw(Kw::GroupLeft),
        "group_right" => Kind::Kw(Kw::GroupRight),
        "bool" => Kind::Kw(Kw::Bool),
        "start" => Kind::Kw(Kw::Start),
        "end" => Kind::Kw(Kw::End),
        "inf" | "nan" => Kind::Number,
        a if AGGREGATORS.contains(&a) => Kind::Agg,
        _ => return None,
    })
}

/// Prometheus's lexer, item by item (`lex.go`'s state machine flattened).
struct Lexer<'a> {
    input: &'a str,
    pos: usize,
    start: usize,
    paren_depth: i64,
    brace_open: bool,
    bracket_open: bool,
    got_colon: bool,
    /// The next item must be the duration right after `[`.
    after_bracket: bool,
    done: bool,
}

impl<'a> Lexer<'a> {
    fn new(input: &'a str) -> Self {
        Lexer {
            input,
            pos: 0,
            start: 0,
            paren_depth: 0,
            brace_open: false,
            bracket_open: false,
            got_colon: false,
            after_bracket: false,
            done: false,
        }
    }

    fn peek(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn backup(&mut self, c: Option<char>) {
        if let Some(c) = c {
            self.pos -= c.len_utf8();
        }
    }

    fn accept(&mut self, valid: &str) -> bool {
        match self.peek() {
            Some(c) if valid.contains(c) => {
                self.pos += c.len_utf8();
                true
            }
            _ => false,
        }
    }

    fn accept_run(&mut self, valid: &str) {
        while self.accept(valid) {}
    }

    fn emit(&mut self, kind: Kind) -> Tok {
        let t = Tok { kind, pos: self.start, val: self.input[self.start..self.pos].to_string() };
        self.start = self.pos;
        t
    }

    fn error(&mut self, msg: String) -> Tok {
        self.done = true;
        Tok { kind: Kind::Error, pos: self.start, val: msg }
    }

    fn skip_spaces(&mut self) {
        while is_space(self.peek()) {
            self.pos += 1;
        }
        self.start = self.pos;
    }

    /// `scanNumber` of Prometheus 2.42: true when a number ends here.
    fn scan_number(&mut self) -> bool {
        let mut digits = "0123456789";
        if self.accept("0") && self.accept("xX") {
            digits = "0123456789abcdefABCDEF";
        }
        self.accept_run(digits);
        if self.accept(".") {
            self.accept_run(digits);
        }
        if self.accept("eE") {
            self.accept("+-");
            self.accept_run("0123456789");
        }
        !is_alnum(self.peek())
    }

    fn accept_remaining_duration(&mut self) -> bool {
        if !self.accept("smhdwy") {
            return false;
        }
        self.accept("s");
        while self.accept("0123456789") {
            self.accept_run("0123456789");
            if !self.accept("smhdw") {
                return false;
            }
            self.accept("s");
        }
        !is_alnum(self.peek())
    }

    fn next_item(&mut self) -> Tok {
        if self.done {
            self.start = self.input.len();
            return Tok { kind: Kind::Eof, pos: self.input.len(), val: String::new() };
        }
        if self.after_bracket {
            self.after_bracket = false;
            return self.lex_duration();
        }
        loop {
            self.start = self.pos;
            if self.input[self.pos..].starts_with('#') {
                while !matches!(self.peek(), None | Some('\n' | '\r')) {
                    self.pos += self.peek().map_or(1, char::len_utf8);
                }
                return self.emit(Kind::Comment);
            }
            if self.brace_open {
                if let Some(t) = self.lex_inside_braces() {
                    return t;
                }
                continue;
            }
            if let Some(t) = self.lex_statement() {
                return t;
            }
        }
    }

    /// Inside `{...}`: `None` after skipping spaces.
    fn lex_inside_braces(&mut self) -> Option<Tok> {
        let r = self.next();
        Some(match r {
            None => self.error("unexpected end of input inside braces".into()),
            Some(' ' | '\t' | '\n' | '\r') => {
                self.skip_spaces();
                return None;
            }
            c if is_alpha(c) => {
                while is_alnum(self.peek()) {
                    self.pos += 1;
                }
                self.emit(Kind::Ident)
            }
            Some(',') => self.emit(Kind::Comma),
            Some(q @ ('"' | '\'')) => self.lex_string(q),
            Some('`') => self.lex_raw_string(),
            Some('=') => {
                if self.accept("~") {
                    self.emit(Kind::Op(Op::EqlRegex))
                } else {
                    self.emit(Kind::Eql)
                }
            }
            Some('!') => match self.next() {
                Some('~') => self.emit(Kind::Op(Op::NeqRegex)),
                Some('=') => self.emit(Kind::Op(Op::Neq)),
                nr => self.error(format!("unexpected character after '!' inside braces: {}", check::go_quote_rune(nr))),
            },
            Some('{') => self.error(format!("unexpected left brace {}", check::go_quote_rune(r))),
            Some('}') => {
                self.brace_open = false;
                self.emit(Kind::RBrace)
            }
            _ => self.error(format!("unexpected character inside braces: {}", check::go_quote_rune(r))),
        })
    }

    fn lex_statement(&mut self) -> Option<Tok> {
        let r = self.next();
        Some(match r {
            None => {
                if self.paren_depth != 0 {
                    self.error("unclosed left parenthesis".into())
                } else if self.bracket_open {
                    self.error("unclosed left bracket".into())
                } else {
                    self.done = true;
                    self.emit(Kind::Eof)
                }
            }
            Some(',') => self.emit(Kind::Comma),
            Some(' ' | '\t' | '\n' | '\r') => {
                self.skip_spaces();
                return None;
            }
            Some('*') => self.emit(Kind::Op(Op::Mul)),
            Some('/') => self.emit(Kind::Op(Op::Div)),
            Some('%') => self.emit(Kind::Op(Op::Mod)),
            Some('+') => self.emit(Kind::Op(Op::Add)),
            Some('-') => self.emit(Kind::Op(Op::Sub)),
            Some('^') => self.emit(Kind::Op(Op::Pow)),
            Some('=') => match self.peek() {
                Some('=') => {
                    self.pos += 1;
                    self.emit(Kind::Op(Op::Eqlc))
                }
                Some('~') => self.error("unexpected character after '=': '~'".into()),
                _ => self.emit(Kind::Eql),
            },
            Some('!') => match self.next() {
                Some('=') => self.emit(Kind::Op(Op::Neq)),
                t => self.error(format!("unexpected character after '!': {}", check::go_quote_rune(t))),
            },
            Some('<') => {
                if self.accept("=") {
                    self.emit(Kind::Op(Op::Lte))
                } else {
                    self.emit(Kind::Op(Op::Lss))
                }
            }
            Some('>') => {
                if self.accept("=") {
                    self.emit(Kind::Op(Op::Gte))
                } else {
                    self.emit(Kind::Op(Op::Gtr))
                }
            }
            c if is_digit(c) || (c == Some('.') && is_digit(self.peek())) => {
                self.backup(c);
                if self.scan_number() {
                    self.emit(Kind::Number)
                } else if self.accept_remaining_duration() {
                    self.emit(Kind::Duration)
                } else {
                    let v = check::go_quote(&self.input[self.start..self.pos]);
                    self.error(format!("bad number or duration syntax: {v}"))
                }
            }
            Some(q @ ('"' | '\'')) => self.lex_string(q),
            Some('`') => self.lex_raw_string(),
            c if is_alpha(c) || c == Some(':') => {
                if !self.bracket_open {
                    self.backup(c);
                    while is_alnum(self.peek()) || self.peek() == Some(':') {
                        self.pos += 1;
                    }
                    let word = &self.input[self.start..self.pos];
                    let kind = match keyword(word) {
                        Some(k) => k,
                        None if word.contains(':') => Kind::MetricIdent,
                        None => Kind::Ident,
                    };
                    self.emit(kind)
                } else if self.got_colon {
                    self.error(format!("unexpected colon {}", check::go_quote_rune(c)))
                } else {
                    self.got_colon = true;
                    self.emit(Kind::Colon)
                }
            }
            Some('(') => {
                self.paren_depth += 1;
                self.emit(Kind::LParen)
            }
            Some(')') => {
                self.paren_depth -= 1;
                if self.paren_depth < 0 {
                    self.start = self.pos;
                    self.error("unexpected right parenthesis ')'".into())
                } else {
                    self.emit(Kind::RParen)
                }
            }
            Some('{') => {
                self.brace_open = true;
                self.emit(Kind::LBrace)
            }
            Some('[') => {
                if self.bracket_open {
                    self.error("unexpected left bracket '['".into())
                } else {
                    self.got_colon = false;
                    let t = self.emit(Kind::LBracket);
                    self.skip_spaces();
                    self.bracket_open = true;
                    self.after_bracket = true;
                    t
                }
            }
            Some(']') => {
                if !self.bracket_open {
                    self.error("unexpected right bracket ']'".into())
                } else {
                    self.bracket_open = false;
                    self.emit(Kind::RBracket)
                }
            }
            Some('@') => self.emit(Kind::At),
            _ => self.error(format!("unexpected character: {}", check::go_quote_rune(r))),
        })
    }

    /// The range right after `[`: a duration, or (Prometheus 3.x) a plain number of seconds.
    fn lex_duration(&mut self) -> Tok {
        self.start = self.pos;
        let begin = self.pos;
        if self.scan_number() {
            if self.pos == begin {
                return self.error("missing unit character in duration".into());
            }
            return self.emit(Kind::Number);
        }
        if !self.accept_remaining_duration() {
            let v = check::go_quote(&self.input[self.start..self.pos]);
            return self.error(format!("bad duration syntax: {v}"));
        }
        self.emit(Kind::Duration)
    }

    fn lex_string(&mut self, quote: char) -> Tok {
        loop {
            match self.next() {
                Some('\\') => {
                    if let Some(t) = self.lex_escape(quote) {
                        return t;
                    }
                }
                Some('\u{FFFD}') => return self.error("invalid UTF-8 rune".into()),
                None | Some('\n') => return self.error("unterminated quoted string".into()),
                Some(c) if c == quote => return self.emit(Kind::Str),
                Some(_) => {}
            }
        }
    }

    /// After a backslash: `Some(error)` for a bad escape sequence.
    fn lex_escape(&mut self, quote: char) -> Option<Tok> {
        let mut ch = self.next();
        let (mut n, base, max) = match ch {
            Some('a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\') => return None,
            Some(c) if c == quote => return None,
            Some('0'..='7') => (3, 8, 255u32),
            Some('x') => {
                ch = self.next();
                (2, 16, 255)
            }
            Some('u') => {
                ch = self.next();
                (4, 16, 0x10FFFF)
            }
            Some('U') => {
                ch = self.next();
                (8, 16, 0x10FFFF)
            }
            None => return Some(self.error("escape sequence not terminated".into())),
            Some(c) => return Some(self.error(format!("unknown escape sequence {}", check::go_unicode(c)))),
        };
        let mut x: u32 = 0;
        while n > 0 {
            let d = ch.and_then(|c| c.to_digit(16)).unwrap_or(16);
            if d >= base {
                return Some(match ch {
                    None => self.error("escape sequence not terminated".into()),
                    Some(c) => self.error(format!("illegal character {} in escape sequence", check::go_unicode(c))),
                });
            }
            x = x.saturating_mul(base).saturating_add(d);
            n -= 1;
            if n > 0 {
                ch = self.next();
            }
        }
        if x > max || (0xD800..0xE000).contains(&x) {
            return Some(self.error("escape sequence is an invalid Unicode code point".into()));
        }
        None
    }

    fn lex_raw_string(&mut self) -> Tok {
        loop {
            match self.next() {
                Some('\u{FFFD}') => return self.error("invalid UTF-8 rune".into()),
                None => return self.error("unterminated raw string".into()),
                Some('`') => return self.emit(Kind::Str),
                Some(_) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// AST
// ---------------------------------------------------------------------------------------

/// Value types as `checkAST` sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Scalar,
    Vector,
    Matrix,
    String,
}

impl Type {
    /// Prometheus's `DocumentedType`.
    pub(crate) fn documented(self) -> &'static str {
        match self {
            Type::Scalar => "scalar",
            Type::Vector => "instant vector",
            Type::Matrix => "range vector",
            Type::String => "string",
        }
    }

    /// The raw `ValueType` string.
    pub(crate) fn raw(self) -> &'static str {
        match self {
            Type::Scalar => "scalar",
            Type::Vector => "vector",
            Type::Matrix => "matrix",
            Type::String => "string",
        }
    }
}

/// A label matcher of a selector.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    pub name: String,
    pub op: MatchKind,
    pub value: String,
}

/// Matcher operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MatchKind {
    Eq,
    Neq,
    Re,
    Nre,
}

/// Vector matching of a binary expression.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matching {
    pub on: bool,
    pub labels: Vec<String>,
    /// `group_left`/`group_right` was given.
    pub grouped: bool,
    pub include: Vec<String>,
    pub fill: bool,
}

/// The expression tree `checkAST` walks; positions are byte ranges.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Number {
        start: Pos,
        end: Pos,
    },
    Str {
        start: Pos,
        end: Pos,
    },
    Selector {
        start: Pos,
        end: Pos,
        name: Option<String>,
        matchers: Vec<Matcher>,
        offset: bool,
        at: bool,
        bypass: bool,
    },
    Matrix {
        start: Pos,
        end: Pos,
        offset: bool,
        at: bool,
        vs: Box<Node>,
    },
    Subquery {
        start: Pos,
        end: Pos,
        offset: bool,
        at: bool,
        expr: Box<Node>,
    },
    Call {
        start: Pos,
        end: Pos,
        func: Option<check::Func>,
        args: Vec<Node>,
    },
    Aggregate {
        start: Pos,
        end: Pos,
        op: String,
        param: Option<Box<Node>>,
        expr: Option<Box<Node>>,
    },
    Binary {
        start: Pos,
        end: Pos,
        op: Op,
        lhs: Box<Node>,
        rhs: Box<Node>,
        bool_: bool,
        matching: Option<Matching>,
    },
    Unary {
        start: Pos,
        end: Pos,
        expr: Box<Node>,
    },
    Paren {
        start: Pos,
        end: Pos,
        expr: Box<Node>,
    },
}

impl Node {
    pub(crate) fn start(&self) -> Pos {
        match self {
            Node::Number { start, .. }
            | Node::Str { start, .. }
            | Node::Selector { start, .. }
            | Node::Matrix { start, .. }
            | Node::Subquery { start, .. }
            | Node::Call { start, .. }
            | Node::Aggregate { start, .. }
            | Node::Binary { start, .. }
            | Node::Unary { start, .. }
            | Node::Paren { start, .. } => *start,
        }
    }

    pub(crate) fn end(&self) -> Pos {
        match self {
            Node::Number { end, .. }
            | Node::Str { end, .. }
            | Node::Selector { end, .. }
            | Node::Matrix { end, .. }
            | Node::Subquery { end, .. }
            | Node::Call { end, .. }
            | Node::Aggregate { end, .. }
            | Node::Binary { end, .. }
            | Node::Unary { end, .. }
            | Node::Paren { end, .. } => *end,
        }
    }

    fn set_end(&mut self, e: Pos) {
        match self {
            Node::Number { end, .. }
            | Node::Str { end, .. }
            | Node::Selector { end, .. }
            | Node::Matrix { end, .. }
            | Node::Subquery { end, .. }
            | Node::Call { end, .. }
            | Node::Aggregate { end, .. }
            | Node::Binary { end, .. }
            | Node::Unary { end, .. }
            | Node::Paren { end, .. } => *end = e,
        }
    }

    /// The type `Expr.Type()` reports.
    pub(crate) fn typ(&self) -> Type {
        match self {
            Node::Number { .. } => Type::Scalar,
            Node::Str { .. } => Type::String,
            Node::Selector { .. } | Node::Aggregate { .. } => Type::Vector,
            Node::Matrix { .. } | Node::Subquery { .. } => Type::Matrix,
            Node::Call { func, .. } => func.map_or(Type::Vector, |f| f.ret),
            Node::Binary { lhs, rhs, .. } => {
                if lhs.typ() == Type::Scalar && rhs.typ() == Type::Scalar {
                    Type::Scalar
                } else {
                    Type::Vector
                }
            }
            Node::Unary { expr, .. } | Node::Paren { expr, .. } => expr.typ(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------------

/// Parsing stopped at a syntax error (already recorded).
struct Stop;

type PResult<T> = Result<T, Stop>;

/// Most nesting the parser follows before giving up (this only bounds our own stack;
/// promql-parser's answer is used then).
const MAX_DEPTH: usize = 200;

/// Most binary operators in a query: chains build trees as deep as they are long, and
/// the checks walk them recursively.
const MAX_BINARY: usize = 2000;

struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<Tok>,
    /// A token given back, read before `peeked` (a `fill` that turned out to be a name).
    pushback: Option<Tok>,
    /// End of the last token taken.
    last_end: Pos,
    errors: Vec<ParseError>,
    /// Contexts with an error production in Prometheus's grammar that enclose the
    /// current position; the innermost one names an otherwise unhandled syntax error.
    contexts: Vec<&'static str>,
    depth: usize,
    binaries: usize,
    gave_up: bool,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            lex: Lexer::new(input),
            peeked: None,
            pushback: None,
            last_end: 0,
            errors: Vec::new(),
            contexts: Vec::new(),
            depth: 0,
            binaries: 0,
            gave_up: false,
        }
    }

    fn peek(&mut self) -> &Tok {
        if let Some(t) = &self.pushback {
            return t;
        }
        if self.peeked.is_none() {
            let mut t = self.lex.next_item();
            while t.kind == Kind::Comment {
                t = self.lex.next_item();
            }
            if t.kind == Kind::Error {
                // Prometheus records the lexer error and tells the grammar the input ended.
                self.errors.push(ParseError { pos: t.pos, msg: t.val.clone() });
            }
            self.peeked = Some(t);
        }
        self.peeked.as_ref().expect("just filled")
    }

    fn kind(&mut self) -> Kind {
        self.peek().kind.clone()
    }

    fn take(&mut self) -> Tok {
        if let Some(t) = self.pushback.take() {
            self.last_end = t.pos + t.val.len();
            return t;
        }
        self.peek();
        let t = self.peeked.take().expect("peeked");
        if t.kind != Kind::Eof && t.kind != Kind::Error {
            self.last_end = t.pos + t.val.len();
        }
        t
    }

    /// Stops without an error of our own: the query is beyond what this checker follows.
    fn give_up(&mut self) -> Stop {
        self.gave_up = true;
        Stop
    }

    fn semantic(&mut self, pos: Pos, msg: String) {
        self.errors.push(ParseError { pos, msg });
    }

    /// A syntax error at the next token, worded by the innermost error context unless
    /// `context`/`expected` are given.
    fn unexpected(&mut self, context: Option<&str>, expected: &str) -> Stop {
        let t = self.peek().clone();
        if t.kind != Kind::Error {
            let ctx = context.or_else(|| self.contexts.last().copied()).unwrap_or("");
            let mut msg = format!("unexpected {}", t.desc());
            if !ctx.is_empty() {
                msg.push_str(" in ");
                msg.push_str(ctx);
            }
            if !expected.is_empty() {
                msg.push_str(", expected ");
                msg.push_str(expected);
            }
            self.errors.push(ParseError { pos: t.pos, msg });
        }
        Stop
    }

    fn parse_start(&mut self) -> Option<Node> {
        if self.kind() == Kind::Eof {
            self.semantic(0, "no expression found in input".into());
            return None;
        }
        let Ok(e) = self.expr(0) else { return None };
        if self.kind() != Kind::Eof {
            let _ = self.unexpected(None, "");
            return None;
        }
        Some(e)
    }

    /// A lone vector selector up to the end of the input.
    fn selector_only(&mut self) -> Option<Node> {
        let r = match self.kind() {
            Kind::LBrace => self.selector(None),
            Kind::Ident
            | Kind::MetricIdent
            | Kind::Agg
            | Kind::Op(Op::And | Op::Or | Op::Unless)
            | Kind::Kw(Kw::By | Kw::Without | Kw::Offset | Kw::Start | Kw::End) => {
                let t = self.take();
                self.selector(Some(t))
            }
            _ => Err(self.unexpected(None, "")),
        };
        let node = r.ok()?;
        if self.kind() != Kind::Eof {
            let _ = self.unexpected(None, "");
            return None;
        }
        Some(node)
    }

    /// An expression whose binary operators bind at least as tightly as `min_prec`.
    fn expr(&mut self, min_prec: u8) -> PResult<Node> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.give_up());
        }
        let r = self.expr_inner(min_prec);
        self.depth -= 1;
        r
    }

    fn expr_inner(&mut self, min_prec: u8) -> PResult<Node> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.kind() {
                Kind::Op(op) => op,
                _ => return Ok(lhs),
            };
            let Some(prec) = op.precedence() else { return Ok(lhs) };
            if prec < min_prec {
                return Ok(lhs);
            }
            self.take();
            self.binaries += 1;
            if self.binaries > MAX_BINARY {
                return Err(self.give_up());
            }
            let (bool_, matching) = self.bin_modifiers()?;
            // `^` is right-associative, the others left-associative.
            let next = if op == Op::Pow { prec } else { prec + 1 };
            let rhs = self.expr(next)?;
            let (start, end) = (lhs.start(), rhs.end());
            lhs = Node::Binary { start, end, op, lhs: Box::new(lhs), rhs: Box::new(rhs), bool_, matching };
        }
    }

    fn unary(&mut self) -> PResult<Node> {
        if let Kind::Op(Op::Add | Op::Sub) = self.kind() {
            let t = self.take();
            // Unary operators bind like `*`: tighter are only `^` and the postfix modifiers.
            let e = self.expr(6)?;
            let end = e.end();
            return Ok(match e {
                Node::Number { .. } => Node::Number { start: t.pos, end },
                e => Node::Unary { start: t.pos, end, expr: Box::new(e) },
            });
        }
        let p = self.primary()?;
        self.postfix(p)
    }

    fn starts_expr(k: &Kind) -> bool {
        matches!(
            k,
            Kind::Number
                | Kind::Duration
                | Kind::Str
                | Kind::Ident
                | Kind::MetricIdent
                | Kind::LBrace
                | Kind::LParen
                | Kind::Agg
                | Kind::Op(Op::Add | Op::Sub | Op::And | Op::Or | Op::Unless)
                | Kind::Kw(Kw::By | Kw::Without | Kw::Offset | Kw::Start | Kw::End)
        )
    }

    fn primary(&mut self) -> PResult<Node> {
        match self.kind() {
            Kind::Number => {
                let t = self.take();
                if let Err(e) = check::parse_number(&t.val) {
                    self.semantic(t.pos, format!("error parsing number: {e}"));
                }
                Ok(Node::Number { start: t.pos, end: t.pos + t.val.len() })
            }
            // Prometheus 3.x: a duration is a number of seconds.
            Kind::Duration => {
                let t = self.take();
                if let Err(m) = check::parse_duration(&t.val) {
                    self.semantic(t.pos, m);
                }
                Ok(Node::Number { start: t.pos, end: t.pos + t.val.len() })
            }
            Kind::Str => {
                let t = self.take();
                Ok(Node::Str { start: t.pos, end: t.pos + t.val.len() })
            }
            Kind::LParen => {
                let t = self.take();
                let e = self.expr(0)?;
                if self.kind() != Kind::RParen {
                    return Err(self.unexpected(None, ""));
                }
                self.take();
                Ok(Node::Paren { start: t.pos, end: self.last_end, expr: Box::new(e) })
            }
            Kind::LBrace => self.selector(None),
            Kind::Agg => {
                let t = self.take();
                match self.kind() {
                    Kind::LParen | Kind::Kw(Kw::By | Kw::Without) => self.aggregate(t),
                    _ => self.selector(Some(t)),
                }
            }
            Kind::Ident => {
                let t = self.take();
                if self.kind() == Kind::LParen {
                    return self.call(t);
                }
                self.selector(Some(t))
            }
            Kind::Kw(Kw::Start | Kw::End) => {
                // Prometheus 3.x: start() and end() are also functions.
                let t = self.take();
                if self.kind() == Kind::LParen {
                    return self.call(t);
                }
                self.selector(Some(t))
            }
            Kind::MetricIdent
            | Kind::Op(Op::And | Op::Or | Op::Unless)
            | Kind::Kw(Kw::By | Kw::Without | Kw::Offset) => {
                let t = self.take();
                self.selector(Some(t))
            }
            _ => Err(self.unexpected(None, "")),
        }
    }

    fn call(&mut self, name: Tok) -> PResult<Node> {
        let func = check::function(&name.val);
        if func.is_none() {
            self.semantic(name.pos, format!("unknown function with name {}", check::go_quote(&name.val)));
        }
        let args = self.call_body()?;
        Ok(Node::Call { start: name.pos, end: self.last_end, func, args })
    }

    /// `( args )`, the next token being `(`.
    fn call_body(&mut self) -> PResult<Vec<Node>> {
        self.take();
        let mut args = Vec::new();
        if self.kind() == Kind::RParen {
            self.take();
            return Ok(args);
        }
        loop {
            args.push(self.expr(0)?);
            match self.kind() {
                Kind::Comma => {
                    let c = self.take();
                    if self.kind() == Kind::RParen {
                        self.semantic(c.pos, "trailing commas not allowed in function call args".into());
                        self.take();
                        return Ok(args);
                    }
                }
                Kind::RParen => {
                    self.take();
                    return Ok(args);
                }
                _ => return Err(self.unexpected(None, "")),
            }
        }
    }

    fn aggregate(&mut self, op: Tok) -> PResult<Node> {
        self.contexts.push("aggregation");
        let r = self.aggregate_inner();
        self.contexts.pop();
        let args = r?;
        let start = op.pos;
        let end = self.last_end;
        let name = op.val.to_ascii_lowercase();
        if args.is_empty() {
            self.semantic(start, "no arguments for aggregate expression provided".into());
            return Ok(Node::Aggregate { start, end, op: name, param: None, expr: None });
        }
        let with_param =
            matches!(name.as_str(), "topk" | "bottomk" | "quantile" | "count_values" | "limitk" | "limit_ratio");
        let want = if with_param { 2 } else { 1 };
        let mut args = args;
        if args.len() != want {
            self.semantic(
                start,
                format!(
                    "wrong number of arguments for aggregate expression provided, expected {want}, got {}",
                    args.len()
                ),
            );
            return Ok(Node::Aggregate { start, end, op: name, param: None, expr: None });
        }
        let expr = args.pop().map(Box::new);
        let param = args.pop().map(Box::new);
        Ok(Node::Aggregate { start, end, op: name, param, expr })
    }

    fn aggregate_inner(&mut self) -> PResult<Vec<Node>> {
        let mut grouped = false;
        if matches!(self.kind(), Kind::Kw(Kw::By | Kw::Without)) {
            self.take();
            self.grouping_labels()?;
            grouped = true;
        }
        if self.kind() != Kind::LParen {
            return Err(self.unexpected(None, ""));
        }
        let args = self.call_body()?;
        if !grouped && matches!(self.kind(), Kind::Kw(Kw::By | Kw::Without)) {
            self.take();
            self.grouping_labels()?;
        }
        Ok(args)
    }

    /// `( label, ... )` after by/without/on/ignoring/group_x.
    fn grouping_labels(&mut self) -> PResult<Vec<String>> {
        const CTX: Option<&str> = Some("grouping opts");
        if self.kind() != Kind::LParen {
            return Err(self.unexpected(CTX, "\"(\""));
        }
        self.take();
        let mut out = Vec::new();
        if self.kind() == Kind::RParen {
            self.take();
            return Ok(out);
        }
        loop {
            let k = self.kind();
            let label_like = matches!(
                k,
                Kind::Ident
                    | Kind::MetricIdent
                    | Kind::Agg
                    | Kind::Op(Op::And | Op::Or | Op::Unless | Op::Atan2)
                    | Kind::Kw(_)
            );
            if k == Kind::Str {
                let t = self.take();
                out.push(check::unquote(&t.val).unwrap_or_default());
            } else if label_like {
                if !check::is_label(&self.peek().val) {
                    return Err(self.unexpected(CTX, "label"));
                }
                let t = self.take();
                out.push(t.val);
            } else {
                return Err(self.unexpected(CTX, "label"));
            }
            match self.kind() {
                Kind::Comma => {
                    self.take();
                    if self.kind() == Kind::RParen {
                        self.take();
                        return Ok(out);
                    }
                }
                Kind::RParen => {
                    self.take();
                    return Ok(out);
                }
                _ => return Err(self.unexpected(CTX, "\",\" or \")\"")),
            }
        }
    }

    /// `bool`, `on`/`ignoring`, `group_left`/`group_right` and `fill` after an operator.
    fn bin_modifiers(&mut self) -> PResult<(bool, Option<Matching>)> {
        let mut bool_ = false;
        if self.kind() == Kind::Kw(Kw::Bool) {
            self.take();
            bool_ = true;
        }
        let mut m = Matching::default();
        let mut any = false;
        if let Kind::Kw(kw @ (Kw::On | Kw::Ignoring)) = self.kind() {
            self.take();
            m.on = kw == Kw::On;
            m.labels = self.grouping_labels()?;
            any = true;
            if let Kind::Kw(Kw::GroupLeft | Kw::GroupRight) = self.kind() {
                self.take();
                m.grouped = true;
                if self.kind() == Kind::LParen {
                    m.include = self.grouping_labels()?;
                } else if !Self::starts_expr(&self.kind()) && !self.is_fill() {
                    return Err(self.unexpected(Some("grouping opts"), "\"(\""));
                }
            }
        }
        while self.is_fill() {
            let f = self.take();
            if self.kind() != Kind::LParen {
                // `fill` without `(` is the right-hand operand's metric name.
                self.pushback = Some(f);
                break;
            }
            m.fill = true;
            any = true;
            // fill(<number>) with an optional sign.
            self.take();
            if matches!(self.kind(), Kind::Op(Op::Add | Op::Sub)) {
                self.take();
            }
            if self.kind() != Kind::Number {
                return Err(self.unexpected(None, ""));
            }
            self.take();
            if self.kind() != Kind::RParen {
                return Err(self.unexpected(None, ""));
            }
            self.take();
        }
        Ok((bool_, any.then_some(m)))
    }

    fn is_fill(&mut self) -> bool {
        let t = self.peek();
        t.kind == Kind::Ident && matches!(t.val.as_str(), "fill" | "fill_left" | "fill_right")
    }

    /// A vector selector: optional name token, then optional `{...}`.
    fn selector(&mut self, name: Option<Tok>) -> PResult<Node> {
        let start = name.as_ref().map_or_else(|| self.peek().pos, |t| t.pos);
        let mut matchers = Vec::new();
        let mut braces = false;
        if self.kind() == Kind::LBrace {
            braces = true;
            self.take();
            self.label_matchers(&mut matchers)?;
        }
        let end = self.last_end;
        let name = name.map(|t| t.val);
        if name.is_none() && !braces {
            return Err(self.unexpected(None, ""));
        }
        Ok(Node::Selector { start, end, name, matchers, offset: false, at: false, bypass: false })
    }

    /// Inside `{`, up to and including `}`.
    fn label_matchers(&mut self, out: &mut Vec<Matcher>) -> PResult<()> {
        const CTX: Option<&str> = Some("label matching");
        if self.kind() == Kind::RBrace {
            self.take();
            return Ok(());
        }
        loop {
            let label = match self.kind() {
                Kind::Ident => self.take(),
                Kind::Str => self.take(),
                _ => return Err(self.unexpected(CTX, "identifier or \"}\"")),
            };
            let quoted = label.kind == Kind::Str;
            let name = if quoted { check::unquote(&label.val).unwrap_or_default() } else { label.val.clone() };
            let op = match self.kind() {
                Kind::Eql => Some(MatchKind::Eq),
                Kind::Op(Op::Neq) => Some(MatchKind::Neq),
                Kind::Op(Op::EqlRegex) => Some(MatchKind::Re),
                Kind::Op(Op::NeqRegex) => Some(MatchKind::Nre),
                _ => None,
            };
            match op {
                Some(op) => {
                    self.take();
                    if self.kind() != Kind::Str {
                        return Err(self.unexpected(CTX, "string"));
                    }
                    let v = self.take();
                    let value = check::unquote(&v.val).unwrap_or_default();
                    if matches!(op, MatchKind::Re | MatchKind::Nre)
                        && let Err(e) = check::go_regex_check(&value)
                    {
                        self.semantic(label.pos, e);
                    }
                    out.push(Matcher { name, op, value });
                }
                // Prometheus 3.x: a lone quoted string is the metric name.
                None if quoted && matches!(self.kind(), Kind::Comma | Kind::RBrace) => {
                    out.push(Matcher { name: "__name__".into(), op: MatchKind::Eq, value: name });
                }
                None => return Err(self.unexpected(CTX, "label matching operator")),
            }
            match self.kind() {
                Kind::Comma => {
                    self.take();
                    if self.kind() == Kind::RBrace {
                        self.take();
                        return Ok(());
                    }
                }
                Kind::RBrace => {
                    self.take();
                    return Ok(());
                }
                _ => return Err(self.unexpected(CTX, "\",\" or \"}\"")),
            }
        }
    }

    /// Ranges, subqueries, `offset` and `@` after an operand.
    fn postfix(&mut self, mut e: Node) -> PResult<Node> {
        loop {
            match self.kind() {
                Kind::LBracket => e = self.range_or_subquery(e)?,
                Kind::Kw(Kw::Offset) => e = self.offset(e)?,
                Kind::At => e = self.at(e)?,
                _ => return Ok(e),
            }
        }
    }

    fn duration_value(&mut self) -> PResult<()> {
        let t = self.take();
        if t.kind == Kind::Duration {
            if let Err(m) = check::parse_duration(&t.val) {
                self.semantic(t.pos, m);
            }
        } else if let Err(m) = check::parse_number(&t.val) {
            self.semantic(t.pos, format!("error parsing number: {m}"));
        }
        Ok(())
    }

    fn range_or_subquery(&mut self, e: Node) -> PResult<Node> {
        let lb = self.take();
        if !matches!(self.kind(), Kind::Duration | Kind::Number) {
            return Err(self.unexpected(Some("subquery selector"), "duration"));
        }
        self.duration_value()?;
        match self.kind() {
            Kind::RBracket => {
                self.take();
                let end = self.last_end;
                let msg = match &e {
                    Node::Selector { offset: true, .. } => Some("no offset modifiers allowed before range"),
                    Node::Selector { at: true, .. } => Some("no @ modifiers allowed before range"),
                    Node::Selector { .. } => None,
                    _ => Some("ranges only allowed for vector selectors"),
                };
                if let Some(m) = msg {
                    self.semantic(lb.pos, m.into());
                }
                Ok(Node::Matrix { start: e.start(), end, offset: false, at: false, vs: Box::new(e) })
            }
            Kind::Colon => {
                self.take();
                if matches!(self.kind(), Kind::Duration | Kind::Number) {
                    self.duration_value()?;
                    if self.kind() != Kind::RBracket {
                        return Err(self.unexpected(Some("subquery selector"), "\"]\""));
                    }
                } else if self.kind() != Kind::RBracket {
                    return Err(self.unexpected(Some("subquery selector"), "duration or \"]\""));
                }
                self.take();
                Ok(Node::Subquery { start: e.start(), end: self.last_end, offset: false, at: false, expr: Box::new(e) })
            }
            _ => Err(self.unexpected(Some("subquery or range"), "\":\" or \"]\"")),
        }
    }

    fn offset(&mut self, mut e: Node) -> PResult<Node> {
        const CTX: Option<&str> = Some("offset");
        self.take();
        if let Kind::Op(Op::Sub | Op::Add) = self.kind() {
            self.take();
        }
        if !matches!(self.kind(), Kind::Duration | Kind::Number) {
            return Err(self.unexpected(CTX, "duration"));
        }
        let t = self.peek().clone();
        self.duration_value()?;
        let zero = check::duration_is_zero(&t.val);
        let end = self.last_end;
        let start = e.start();
        match &mut e {
            Node::Selector { offset, .. } | Node::Matrix { offset, .. } | Node::Subquery { offset, .. } => {
                if *offset {
                    self.semantic(start, "offset may not be set multiple times".into());
                } else {
                    *offset = !zero;
                }
            }
            _ => self.semantic(
                start,
                "offset modifier must be preceded by an instant vector selector or range vector selector or a subquery"
                    .into(),
            ),
        }
        e.set_end(end);
        Ok(e)
    }

    fn at(&mut self, mut e: Node) -> PResult<Node> {
        const CTX: Option<&str> = Some("@");
        self.take();
        let mut ts = None;
        match self.kind() {
            Kind::Kw(Kw::Start | Kw::End) => {
                self.take();
                if self.kind() != Kind::LParen {
                    return Err(self.unexpected(CTX, "timestamp"));
                }
                self.take();
                if self.kind() != Kind::RParen {
                    return Err(self.unexpected(CTX, "timestamp"));
                }
                self.take();
            }
            k => {
                let mut sign = 1.0;
                if let Kind::Op(op @ (Op::Add | Op::Sub)) = k {
                    self.take();
                    if op == Op::Sub {
                        sign = -1.0;
                    }
                }
                if !matches!(self.kind(), Kind::Number | Kind::Duration) {
                    return Err(self.unexpected(CTX, "timestamp"));
                }
                let t = self.take();
                let v = if t.kind == Kind::Duration {
                    check::parse_duration(&t.val).map(|()| 0.0)
                } else {
                    check::parse_number(&t.val).map_err(|m| format!("error parsing number: {m}"))
                };
                match v {
                    Ok(v) => ts = Some(sign * v),
                    Err(m) => self.semantic(t.pos, m),
                }
            }
        }
        let start = e.start();
        if let Some(v) = ts
            && (!v.is_finite() || v >= i64::MAX as f64 || v <= i64::MIN as f64)
        {
            self.semantic(start, format!("timestamp out of bounds for @ modifier: {}", check::go_f(v)));
        }
        let end = self.last_end;
        match &mut e {
            Node::Selector { at, .. } | Node::Matrix { at, .. } | Node::Subquery { at, .. } => {
                if *at {
                    self.semantic(start, "@ <timestamp> may not be set multiple times".into());
                } else {
                    *at = true;
                }
            }
            _ => self.semantic(
                start,
                "@ modifier must be preceded by an instant vector selector or range vector selector or a subquery"
                    .into(),
            ),
        }
        e.set_end(end);
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(q: &str) -> String {
        check_query(q).map_or_else(|e| e.render(q), |()| String::new())
    }

    #[test]
    fn positions_count_lines_and_bytes() {
        let cases = [
            ("sum(\nfoo", "2:4: parse error: unclosed left parenthesis"),
            (
                "foo +\n\n  bar[5m]",
                "3:3: parse error: binary expression must contain only scalar and instant vector types",
            ),
            ("\"ä\" + 1", "1:1: parse error: binary expression must contain only scalar and instant vector types"),
            // Columns count bytes, as Prometheus's do.
            ("{a=\"ä\"} + $", "1:12: parse error: unexpected character: '$'"),
            ("foo # comment\n)", "2:2: parse error: unexpected right parenthesis ')'"),
        ];
        for (q, want) in cases {
            assert_eq!(err(q), want, "{q:?}");
        }
    }

    #[test]
    fn three_x_syntax_is_accepted() {
        for q in [
            "foo[5]",
            "foo offset 5",
            "{\"foo\"}",
            "{\"a.b\"=\"c\"}",
            "sum by (\"a.b\") (foo)",
            "a + fill(0) b",
            "a + fill_left(1) fill_right(-1) b",
            "a + fill",
            "predict_linear(foo[5m], 1h)",
            "foo @ 100s",
            "start() - end()",
            "limitk(2, foo)",
            "limit_ratio(0.5, foo)",
            "sum(foo) by (a,)",
        ] {
            assert_eq!(err(q), "", "{q}");
        }
    }

    #[test]
    fn deep_and_long_queries_do_not_overflow_the_stack() {
        let long = format!("1{}", "+1".repeat(200_000));
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        let unary = format!("{}1", "-".repeat(100_000));
        for q in [long, deep, unary] {
            // Beyond the checker's limits the verdict is left to promql-parser.
            let _ = check_query(&q);
        }
    }
}
