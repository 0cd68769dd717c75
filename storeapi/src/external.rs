//! What every StoreAPI server does with a request's matchers and its external labels:
//! Thanos answers as if every series carried the server's external labels, so matchers
//! on those labels are decided once per server (or block) and the rest go to the data.

use norn_model::{Labels, Matcher};
use tonic::Status;

use crate::{matchers_from_proto, thanos};

/// A request's matchers, or `InvalidArgument` naming what was wrong with them.
pub fn request_matchers(ms: &[thanos::LabelMatcher]) -> Result<Vec<Matcher>, Status> {
    matchers_from_proto(ms).map_err(|e| Status::invalid_argument(format!("matchers: {e}")))
}

/// How many entries a request's `limit` field allows: 0 or less means no limit (Thanos).
pub fn request_limit(limit: i64) -> usize {
    if limit > 0 { usize::try_from(limit).unwrap_or(usize::MAX) } else { usize::MAX }
}

/// Checks the label a LabelValues request asks about: Thanos refuses an empty name.
pub fn check_label_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("label name parameter cannot be empty"));
    }
    Ok(())
}

/// Matchers left for the data once those on external labels `ext` are checked; `None`
/// when an external label rules the whole source (a block, a Prometheus) out.
pub fn strip_external(ext: &Labels, ms: &[Matcher]) -> Option<Vec<Matcher>> {
    let mut rest = Vec::new();
    for m in ms {
        match ext.get(&m.name) {
            Some(v) if !m.matches(v) => return None,
            Some(_) => {}
            None => rest.push(m.clone()),
        }
    }
    Some(rest)
}

/// Labels with the external labels set over them (external labels win, as in Thanos).
pub fn with_external(l: &Labels, ext: &Labels) -> Labels {
    if ext.is_empty() {
        return l.clone();
    }
    let mut b = l.to_builder();
    for (n, v) in ext.iter() {
        b.set(n, v);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use norn_model::MatchType;

    use super::*;

    #[test]
    fn external_label_matching() {
        let ext = Labels::from_pairs([("replica", "a"), ("cluster", "eu")]);
        let re = |n: &str, v: &str| Matcher::new(MatchType::Regex, n, v).unwrap();
        // matchers -> None (source ruled out) or the number left for the data
        let cases: Vec<(Vec<Matcher>, Option<usize>)> = vec![
            (vec![Matcher::equal("__name__", "up")], Some(1)),
            (vec![Matcher::equal("__name__", "up"), Matcher::equal("replica", "a")], Some(1)),
            (vec![Matcher::equal("__name__", "up"), Matcher::equal("replica", "b")], None),
            (vec![re("cluster", "e.*"), re("job", ".+")], Some(1)),
            (vec![re("cluster", "us|ap")], None),
            (vec![Matcher::new(MatchType::NotEqual, "cluster", "eu").unwrap()], None),
            (vec![Matcher::new(MatchType::NotEqual, "cluster", "us").unwrap()], Some(0)),
            (vec![Matcher::equal("replica", "a")], Some(0)),
            (vec![Matcher::equal("zone", "")], Some(1)),
        ];
        for (ms, want) in cases {
            assert_eq!(strip_external(&ext, &ms).map(|r| r.len()), want, "{ms:?}");
        }
        assert_eq!(strip_external(&Labels::empty(), &[Matcher::equal("replica", "a")]).map(|r| r.len()), Some(1));
    }

    #[test]
    fn external_labels_win() {
        let ext = Labels::from_pairs([("replica", "a")]);
        let l = Labels::from_pairs([("__name__", "up"), ("replica", "x"), ("z", "1")]);
        assert_eq!(with_external(&l, &ext), Labels::from_pairs([("__name__", "up"), ("replica", "a"), ("z", "1")]));
        assert_eq!(with_external(&l, &Labels::empty()), l);
    }

    #[test]
    fn limits_and_label_names() {
        for (limit, want) in [(0, usize::MAX), (-1, usize::MAX), (1, 1), (500, 500)] {
            assert_eq!(request_limit(limit), want, "{limit}");
        }
        assert_eq!(check_label_name("").unwrap_err().code(), tonic::Code::InvalidArgument);
        assert!(check_label_name("job").is_ok());
    }

    #[test]
    fn bad_matchers_are_invalid_arguments() {
        let bad = thanos::LabelMatcher { r#type: 99, name: "a".into(), value: "b".into() };
        let e = request_matchers(&[bad]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("matchers: "), "{}", e.message());
        let ok = thanos::LabelMatcher { r#type: 0, name: "a".into(), value: "b".into() };
        assert_eq!(request_matchers(&[ok]).unwrap().len(), 1);
    }
}
