//! Binary operators: arithmetic, comparison and set operators with vector matching.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use norn_model::{FloatHistogram, Labels, METRIC_NAME};
use promql_parser::parser::{BinModifier, BinaryExpr, LabelModifier, VectorMatchCardinality};

use crate::engine::{EvalResult, Evaluator, QueryError, labels_only, labels_without};
use crate::histogram as hist;
use crate::value::{Sample, Value};

/// Operator kinds, from the parser's token text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl Op {
    fn from_str(s: &str) -> Option<Op> {
        Some(match s {
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "^" => Op::Pow,
            "atan2" => Op::Atan2,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            "<" => Op::Lt,
            ">=" => Op::Ge,
            "<=" => Op::Le,
            "and" => Op::And,
            "or" => Op::Or,
            "unless" => Op::Unless,
            _ => return None,
        })
    }

    fn is_comparison(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Gt | Op::Lt | Op::Ge | Op::Le)
    }

    fn is_set(self) -> bool {
        matches!(self, Op::And | Op::Or | Op::Unless)
    }

    fn text(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
            Op::Div => "/",
            Op::Mod => "%",
            Op::Pow => "^",
            Op::Atan2 => "atan2",
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Lt => "<",
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::And => "and",
            Op::Or => "or",
            Op::Unless => "unless",
        }
    }
}

/// Float operation; returns (value, keep).
pub(crate) fn float_op(op: Op, l: f64, r: f64) -> (f64, bool) {
    match op {
        Op::Add => (l + r, true),
        Op::Sub => (l - r, true),
        Op::Mul => (l * r, true),
        Op::Div => (l / r, true),
        Op::Pow => (l.powf(r), true),
        Op::Mod => (go_mod(l, r), true),
        Op::Atan2 => (l.atan2(r), true),
        Op::Eq => (l, l == r),
        Op::Ne => (l, l != r),
        Op::Gt => (l, l > r),
        Op::Lt => (l, l < r),
        Op::Ge => (l, l >= r),
        Op::Le => (l, l <= r),
        Op::And | Op::Or | Op::Unless => (l, true),
    }
}

/// Go's math.Mod: result has the sign of `x`.
pub(crate) fn go_mod(x: f64, y: f64) -> f64 {
    if y == 0.0 || x.is_infinite() || x.is_nan() || y.is_nan() {
        return f64::NAN;
    }
    x % y
}

type ElemResult = Result<(f64, Option<Arc<FloatHistogram>>, bool), String>;

fn elem_op(
    op: Op,
    fl: f64,
    fr: f64,
    hl: Option<&Arc<FloatHistogram>>,
    hr: Option<&Arc<FloatHistogram>>,
    reconciled: &mut Option<&'static str>,
) -> ElemResult {
    let incompatible = |lt: &str, rt: &str| {
        Err(format!(
            "incompatible sample types encountered for binary operator \"{}\": {} {} {}",
            op.text(),
            lt,
            op.text(),
            rt
        ))
    };
    match (hl, hr) {
        (None, None) => {
            let (v, k) = float_op(op, fl, fr);
            Ok((v, None, k))
        }
        (None, Some(h)) => match op {
            Op::Mul => {
                let mut n = (**h).clone();
                hist::scale(&mut n, fl);
                Ok((0.0, Some(Arc::new(n)), true))
            }
            _ => incompatible("float", "histogram"),
        },
        (Some(h), None) => match op {
            Op::Mul => {
                let mut n = (**h).clone();
                hist::scale(&mut n, fr);
                Ok((0.0, Some(Arc::new(n)), true))
            }
            Op::Div => {
                let mut n = (**h).clone();
                hist::div(&mut n, fr);
                Ok((0.0, Some(Arc::new(n)), true))
            }
            _ => incompatible("histogram", "float"),
        },
        (Some(a), Some(b)) => match op {
            Op::Add | Op::Sub => {
                if hist::custom_mismatch(a, b) {
                    *reconciled = Some(if op == Op::Add { "addition" } else { "subtraction" });
                }
                let r = if op == Op::Add { hist::add(a, b) } else { hist::sub(a, b) };
                match r {
                    Ok(h) => Ok((0.0, Some(Arc::new(h)), true)),
                    Err(e) => Err(e),
                }
            }
            Op::Eq => Ok((0.0, Some(a.clone()), hist::equals(a, b))),
            Op::Ne => Ok((0.0, Some(a.clone()), !hist::equals(a, b))),
            _ => incompatible("histogram", "histogram"),
        },
    }
}

/// Applies `op` to one pair of operands; `None` when the pair is filtered out or invalid.
#[allow(clippy::too_many_arguments)]
fn compute(
    ev: &mut Evaluator<'_>,
    op: Op,
    fl: f64,
    fr: f64,
    hl: Option<&Arc<FloatHistogram>>,
    hr: Option<&Arc<FloatHistogram>>,
    return_bool: bool,
    pos: &str,
) -> Option<(f64, Option<Arc<FloatHistogram>>)> {
    let mut rec = None;
    let r = elem_op(op, fl, fr, hl, hr, &mut rec);
    if let Some(w) = rec {
        ev.info(format!("mismatched custom buckets were reconciled during {w}"), pos.to_string());
    }
    let (mut v, mut h, keep) = match r {
        Ok(x) => x,
        Err(msg) => {
            ev.info(msg, pos.to_string());
            return None;
        }
    };
    if return_bool {
        h = None;
        v = if keep { 1.0 } else { 0.0 };
    } else if !keep {
        return None;
    }
    if op.is_comparison() && !return_bool {
        v = fl;
        h = hl.cloned();
    }
    Some((v, h))
}

fn drops_name(op: Op) -> bool {
    matches!(op, Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod | Op::Pow | Op::Atan2)
}

pub(crate) fn binary(ev: &mut Evaluator<'_>, b: &BinaryExpr, ts: i64) -> EvalResult<Value> {
    if let promql_parser::parser::Expr::Call(c) = b.rhs.as_ref()
        && c.func.name.starts_with("__norn_trim_")
    {
        return trim(ev, b, c, ts);
    }
    let opname = b.op.to_string();
    let op = Op::from_str(&opname).ok_or_else(|| QueryError::Eval(format!("unknown binary operator {opname}")))?;
    let return_bool = b.modifier.as_ref().map(|m| m.return_bool).unwrap_or(false);
    let lhs = ev.eval(&b.lhs, ts)?;
    let rhs = ev.eval(&b.rhs, ts)?;
    // The position of the binary expression: its left operand starts it.
    let pos = ev.pos_cached(&b.lhs);
    let node = (b as *const BinaryExpr as usize).wrapping_mul(8);
    match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(r)) => {
            let (v, keep) = float_op(op, l, r);
            if op.is_comparison() {
                return Ok(Value::Scalar(if keep { 1.0 } else { 0.0 }));
            }
            Ok(Value::Scalar(v))
        }
        (Value::Vector(l), Value::Scalar(r)) => {
            Ok(Value::Vector(vector_scalar(ev, op, l, r, false, return_bool, &pos)))
        }
        (Value::Scalar(l), Value::Vector(r)) => Ok(Value::Vector(vector_scalar(ev, op, r, l, true, return_bool, &pos))),
        (Value::Vector(l), Value::Vector(r)) => {
            let default_mod = BinModifier::default();
            let m = b.modifier.as_ref().unwrap_or(&default_mod);
            if op.is_set() {
                return Ok(Value::Vector(set_op(ev, node, op, l, r, m)));
            }
            vector_vector(ev, node, op, l, r, m, return_bool, &pos).map(Value::Vector)
        }
        (l, r) => Err(QueryError::Eval(format!(
            "binary expression must contain only scalar and instant vector types, got {} and {}",
            l.type_name(),
            r.type_name()
        ))),
    }
}

/// `lhs </ rhs` and `lhs >/ rhs` (rewritten by `rewrite::mark_trim`).
fn trim(ev: &mut Evaluator<'_>, b: &BinaryExpr, c: &promql_parser::parser::Call, ts: i64) -> EvalResult<Value> {
    let keep_below = c.func.name.contains("upper");
    let lhs = ev.eval(&b.lhs, ts)?;
    let Value::Vector(lhs) = lhs else {
        return Err(QueryError::Eval("histogram trim operators need an instant vector on the left".into()));
    };
    let rhs = ev.eval(&c.args.args[0], ts)?;
    let apply = |s: &Sample, x: f64| -> Option<Sample> {
        let h = s.h.as_ref()?;
        let mut n = s.clone();
        n.h = Some(Arc::new(hist::trim(h, x, keep_below)));
        Some(n)
    };
    match rhs {
        Value::Scalar(x) => Ok(Value::Vector(lhs.iter().filter_map(|s| apply(s, x)).collect())),
        Value::Vector(rv) => {
            let default_mod = BinModifier::default();
            let m = b.modifier.as_ref().unwrap_or(&default_mod);
            let (on, names) = matching_of(m);
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let right: HashMap<Labels, f64> =
                rv.iter().filter(|s| s.h.is_none()).map(|s| (signature(&s.metric, on, &names), s.f)).collect();
            // One-to-one matching labels, as for comparisons: `on` keeps only its labels.
            Ok(Value::Vector(
                lhs.iter()
                    .filter_map(|s| right.get(&signature(&s.metric, on, &names)).and_then(|x| apply(s, *x)))
                    .map(|mut s| {
                        s.metric = if on { labels_only(&s.metric, &names) } else { labels_without(&s.metric, &names) };
                        s
                    })
                    .collect(),
            ))
        }
        v => Err(QueryError::Eval(format!("unexpected {} in histogram trim", v.type_name()))),
    }
}

fn vector_scalar(
    ev: &mut Evaluator<'_>,
    op: Op,
    vec: Vec<Sample>,
    scalar: f64,
    swap: bool,
    return_bool: bool,
    pos: &str,
) -> Vec<Sample> {
    let mut out = Vec::with_capacity(vec.len());
    for mut s in vec {
        let (fl, fr) = if swap { (scalar, s.f) } else { (s.f, scalar) };
        let (hl, hr) = if swap { (None, s.h.as_ref()) } else { (s.h.as_ref(), None) };
        let mut rec = None;
        let r = elem_op(op, fl, fr, hl, hr, &mut rec);
        if let Some(w) = rec {
            ev.info(format!("mismatched custom buckets were reconciled during {w}"), pos.to_string());
        }
        let (mut v, h, mut keep) = match r {
            Ok(x) => x,
            Err(msg) => {
                ev.info(msg, pos.to_string());
                continue;
            }
        };
        // The vector's value is the result of a filtering comparison, whichever side it is on.
        if op.is_comparison() && swap {
            v = s.f;
        }
        let mut h = h;
        if return_bool {
            h = None;
            v = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if !keep {
            continue;
        }
        if op.is_comparison() && !return_bool && s.h.is_some() {
            h = s.h.clone();
        }
        s.f = v;
        s.h = h;
        if drops_name(op) || return_bool {
            ev.mark_drop_name(&mut s);
        }
        out.push(s);
    }
    out
}

fn matching_of(m: &BinModifier) -> (bool, Vec<String>) {
    match &m.matching {
        Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
        Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
        None => (false, vec![]),
    }
}

/// Signature of the labels used for matching.
fn signature(l: &Labels, on: bool, names: &[&str]) -> Labels {
    if on {
        labels_only(l, names)
    } else {
        Labels::from_sorted_unchecked_iter(l.iter().filter(|(n, _)| *n != METRIC_NAME && !names.contains(n)))
    }
}

fn set_op(
    ev: &mut Evaluator<'_>,
    node: usize,
    op: Op,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    m: &BinModifier,
) -> Vec<Sample> {
    let (on, names) = matching_of(m);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut sig = |l: &Labels| ev.memo_labels(node, l, |l| signature(l, on, &names));
    match op {
        Op::And => {
            let rs: HashSet<Labels> = rhs.iter().map(|s| sig(&s.metric)).collect();
            lhs.into_iter().filter(|s| rs.contains(&sig(&s.metric))).collect()
        }
        Op::Unless => {
            let rs: HashSet<Labels> = rhs.iter().map(|s| sig(&s.metric)).collect();
            lhs.into_iter().filter(|s| !rs.contains(&sig(&s.metric))).collect()
        }
        _ => {
            let ls: HashSet<Labels> = lhs.iter().map(|s| sig(&s.metric)).collect();
            let mut out = lhs;
            out.extend(rhs.into_iter().filter(|s| !ls.contains(&sig(&s.metric))));
            out
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn vector_vector(
    ev: &mut Evaluator<'_>,
    node: usize,
    op: Op,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    m: &BinModifier,
    return_bool: bool,
    pos: &str,
) -> EvalResult<Vec<Sample>> {
    let (on, names) = matching_of(m);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (card_one_to_many, include): (bool, Vec<String>) = match &m.card {
        VectorMatchCardinality::OneToMany(l) => (true, l.labels.clone()),
        VectorMatchCardinality::ManyToOne(l) => (false, l.labels.clone()),
        _ => (false, vec![]),
    };
    let one_to_one = matches!(m.card, VectorMatchCardinality::OneToOne | VectorMatchCardinality::ManyToMany);
    let (lhs, rhs) = if card_one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut right: HashMap<Labels, usize> = HashMap::with_capacity(rhs.len());
    for (i, rs) in rhs.iter().enumerate() {
        let sig = ev.memo_labels(node + 1, &rs.metric, |l| signature(l, on, &names));
        if let Some(j) = right.get(&sig) {
            let one_side = if card_one_to_many { "left" } else { "right" };
            let matched = if on {
                labels_only(&rs.metric, &names)
            } else {
                let mut n = names.clone();
                n.push(METRIC_NAME);
                labels_without(&rs.metric, &n)
            };
            let (mut x, mut y) = (&rs.metric, &rhs[*j].metric);
            if y < x {
                std::mem::swap(&mut x, &mut y);
            }
            return Err(QueryError::Eval(format!(
                "found duplicate series for the match group {} on the {} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                matched, one_side, x, y
            )));
        }
        right.insert(sig, i);
    }
    let mut matched: HashMap<Labels, Option<HashSet<Labels>>> = HashMap::new();
    let mut out = Vec::new();
    for ls in &lhs {
        let sig = ev.memo_labels(node + 2, &ls.metric, |l| signature(l, on, &names));
        let Some(&ri) = right.get(&sig) else { continue };
        let rs = &rhs[ri];
        let (mut fl, mut fr) = (ls.f, rs.f);
        let (mut hl, mut hr) = (ls.h.as_ref(), rs.h.as_ref());
        if card_one_to_many {
            std::mem::swap(&mut fl, &mut fr);
            std::mem::swap(&mut hl, &mut hr);
        }
        let delayed = ev.opts.delayed_name_removal;
        let metric = ev.memo_labels2(node + 3, &ls.metric, &rs.metric, |a, b| {
            result_metric(a, b, op, on, &names, one_to_one, &include, delayed)
        });
        if one_to_one {
            if matched.contains_key(&sig) {
                return Err(QueryError::Eval(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                        .into(),
                ));
            }
            matched.insert(sig, None);
        } else {
            let set = matched.entry(sig).or_insert_with(|| Some(HashSet::new()));
            if let Some(set) = set
                && !set.insert(metric.clone())
            {
                return Err(QueryError::Eval(
                    "multiple matches for labels: grouping labels must ensure unique matches".into(),
                ));
            }
        }
        let Some((v, h)) = compute(ev, op, fl, fr, hl, hr, return_bool, pos) else { continue };
        let mut s = Sample { metric, t: ls.t, f: v, h, drop_name: false };
        if drops_name(op) || return_bool {
            ev.mark_drop_name(&mut s);
        } else if ls.drop_name && !card_one_to_many {
            s.drop_name = true;
        }
        out.push(s);
    }
    // fill/fill_left/fill_right: a missing operand takes the fill value. After the
    // one-to-many swap, "left" and "right" refer to the swapped sides.
    let (fill_l, fill_r) = (m.fill_values.lhs, m.fill_values.rhs);
    if let Some(fv) = fill_r {
        for ls in &lhs {
            let sig = signature(&ls.metric, on, &names);
            if right.contains_key(&sig) {
                continue;
            }
            let (fl, fr, hl, hr) =
                if card_one_to_many { (fv, ls.f, None, ls.h.as_ref()) } else { (ls.f, fv, ls.h.as_ref(), None) };
            let Some((v, h)) = compute(ev, op, fl, fr, hl, hr, return_bool, pos) else { continue };
            let metric = result_metric(
                &ls.metric,
                &Labels::empty(),
                op,
                on,
                &names,
                one_to_one,
                &include,
                ev.opts.delayed_name_removal,
            );
            let mut s = Sample { metric, t: ls.t, f: v, h, drop_name: false };
            if drops_name(op) || return_bool {
                ev.mark_drop_name(&mut s);
            }
            out.push(s);
        }
    }
    if let Some(fv) = fill_l {
        let left_sigs: HashSet<Labels> = lhs.iter().map(|s| signature(&s.metric, on, &names)).collect();
        for rs in &rhs {
            let sig = signature(&rs.metric, on, &names);
            if left_sigs.contains(&sig) {
                continue;
            }
            let (fl, fr, hl, hr) =
                if card_one_to_many { (rs.f, fv, rs.h.as_ref(), None) } else { (fv, rs.f, None, rs.h.as_ref()) };
            let Some((v, h)) = compute(ev, op, fl, fr, hl, hr, return_bool, pos) else { continue };
            out.push(Sample { metric: sig, t: rs.t, f: v, h, drop_name: false });
        }
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn result_metric(
    lhs: &Labels,
    rhs: &Labels,
    op: Op,
    on: bool,
    names: &[&str],
    one_to_one: bool,
    include: &[String],
    delayed_name_removal: bool,
) -> Labels {
    let mut b = lhs.to_builder();
    if drops_name(op) && !delayed_name_removal {
        b.del(METRIC_NAME);
    }
    if one_to_one {
        if on {
            let keep: Vec<String> =
                lhs.iter().filter(|(n, _)| !names.contains(n)).map(|(n, _)| n.to_string()).collect();
            for n in keep {
                // Keep the metric name for delayed removal; it is dropped at the end anyway.
                if n == METRIC_NAME && drops_name(op) && delayed_name_removal {
                    continue;
                }
                b.del(&n);
            }
        } else {
            for n in names {
                b.del(n);
            }
        }
    }
    for ln in include {
        match rhs.get(ln) {
            Some(v) if !v.is_empty() => {
                b.set(ln, v);
            }
            _ => {
                b.del(ln);
            }
        }
    }
    b.build()
}
