//! Request matching: one [`MatchBlock`] is a set of conditions that must all hold.
//!
//! The shape follows Istio's `HTTPMatchRequest` so later match kinds (regex, query
//! parameters, `withoutHeaders`, case-insensitive URIs) slot in without changing callers.

use http::header::HeaderName;
use http::request::Parts;

/// How one string (a path, a method, a header value) is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// `{}` in Istio: the value only has to be present.
    Present,
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(e) => value == e,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Present => true,
        }
    }
}

/// Conditions ANDed together; an empty block matches every request.
#[derive(Debug, Clone, Default)]
pub struct MatchBlock {
    /// Compared with the path only (no query string), as Istio does.
    pub uri: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub headers: Vec<(HeaderName, StringMatch)>,
}

impl MatchBlock {
    pub fn matches(&self, req: &Parts) -> bool {
        if let Some(m) = &self.uri {
            if !m.matches(req.uri.path()) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !m.matches(req.method.as_str()) {
                return false;
            }
        }
        self.headers.iter().all(|(name, m)| {
            req.headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("valid request").into_parts().0
    }

    #[test]
    fn table() {
        let prefix_api = MatchBlock {
            uri: Some(StringMatch::Prefix("/api".into())),
            ..Default::default()
        };
        let exact_get_health = MatchBlock {
            uri: Some(StringMatch::Exact("/health".into())),
            method: Some(StringMatch::Exact("GET".into())),
            ..Default::default()
        };
        let rollout = MatchBlock {
            headers: vec![(
                HeaderName::from_static("x-rollout"),
                StringMatch::Exact("shadow".into()),
            )],
            ..Default::default()
        };
        let has_debug = MatchBlock {
            headers: vec![(HeaderName::from_static("x-debug"), StringMatch::Present)],
            ..Default::default()
        };
        let cases: &[(&MatchBlock, Parts, bool)] = &[
            (&prefix_api, req("GET", "/api/users?x=1", &[]), true),
            (&prefix_api, req("GET", "/ap", &[]), false),
            (&prefix_api, req("GET", "/other/api", &[]), false),
            (&exact_get_health, req("GET", "/health", &[]), true),
            (&exact_get_health, req("GET", "/health?verbose", &[]), true),
            (&exact_get_health, req("POST", "/health", &[]), false),
            (&exact_get_health, req("GET", "/healthz", &[]), false),
            (&rollout, req("GET", "/", &[("x-rollout", "shadow")]), true),
            (
                &rollout,
                req("GET", "/", &[("x-rollout", "primary")]),
                false,
            ),
            (&rollout, req("GET", "/", &[]), false),
            (&has_debug, req("GET", "/", &[("x-debug", "")]), true),
            (&has_debug, req("GET", "/", &[]), false),
            (
                &MatchBlock::default(),
                req("DELETE", "/anything", &[]),
                true,
            ),
        ];
        for (i, (m, r, want)) in cases.iter().enumerate() {
            assert_eq!(
                m.matches(r),
                *want,
                "case {i}: {m:?} vs {} {}",
                r.method,
                r.uri
            );
        }
    }
}
