//! The label matchers of every vector selector in an expression, as Prometheus's
//! `parser.ExtractSelectors` returns them; the exemplars API selects series with them.

use norn_model::{MatchType, Matcher, MatcherError};
use promql_parser::label::MatchOp;
use promql_parser::parser::{Expr, VectorSelector};

/// One matcher set per vector selector (a selector with `or` groups gives one set per
/// group), in the order they appear; the metric name becomes a `__name__` matcher.
pub fn extract_selectors(expr: &Expr) -> Result<Vec<Vec<Matcher>>, MatcherError> {
    let mut out = Vec::new();
    walk(expr, &mut out)?;
    Ok(out)
}

fn walk(e: &Expr, out: &mut Vec<Vec<Matcher>>) -> Result<(), MatcherError> {
    match e {
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                walk(p, out)?;
            }
            walk(&a.expr, out)
        }
        Expr::Unary(u) => walk(&u.expr, out),
        Expr::Binary(b) => {
            walk(&b.lhs, out)?;
            walk(&b.rhs, out)
        }
        Expr::Paren(p) => walk(&p.expr, out),
        Expr::Subquery(s) => walk(&s.expr, out),
        Expr::VectorSelector(vs) => selector(vs, out),
        Expr::MatrixSelector(ms) => selector(&ms.vs, out),
        Expr::Call(c) => c.args.args.iter().try_for_each(|a| walk(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => Ok(()),
    }
}

fn selector(vs: &VectorSelector, out: &mut Vec<Vec<Matcher>>) -> Result<(), MatcherError> {
    let convert = |ms: &[promql_parser::label::Matcher]| -> Result<Vec<Matcher>, MatcherError> {
        let mut set = Vec::with_capacity(ms.len() + 1);
        if let Some(n) = &vs.name {
            set.push(Matcher::equal(norn_model::METRIC_NAME, n.clone()));
        }
        for m in ms {
            let kind = match &m.op {
                MatchOp::Equal => MatchType::Equal,
                MatchOp::NotEqual => MatchType::NotEqual,
                MatchOp::Re(_) => MatchType::Regex,
                MatchOp::NotRe(_) => MatchType::NotRegex,
            };
            set.push(Matcher::new(kind, m.name.clone(), crate::rewrite::go_regex_source(&m.value))?);
        }
        Ok(set)
    };
    if vs.matchers.or_matchers.is_empty() {
        out.push(convert(&vs.matchers.matchers)?);
    } else {
        for group in &vs.matchers.or_matchers {
            out.push(convert(group)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(q: &str) -> Vec<String> {
        let e = crate::parse(q).unwrap();
        extract_selectors(&e)
            .unwrap()
            .iter()
            .map(|set| {
                set.iter().map(|m| format!("{}{}{:?}", m.name, m.kind.as_str(), m.value)).collect::<Vec<_>>().join(",")
            })
            .collect()
    }

    #[test]
    fn selectors_of_expressions() {
        let cases: &[(&str, &[&str])] = &[
            ("up", &["__name__=\"up\""]),
            (r#"rate(http_total{job="a"}[5m])"#, &["__name__=\"http_total\",job=\"a\""]),
            (
                r#"sum by (le) (rate(h_bucket[1m])) / on() group_left count(x{a=~"b.*"} offset 1m)"#,
                &["__name__=\"h_bucket\"", "__name__=\"x\",a=~\"b.*\""],
            ),
            (r#"max_over_time((-{job="x"})[5m:1m])"#, &["job=\"x\""]),
            (r#"topk(3, y)"#, &["__name__=\"y\""]),
            ("1 + 2", &[]),
        ];
        for (q, want) in cases {
            assert_eq!(show(q), *want, "{q}");
        }
    }
}
