//! Request matching: one [`MatchBlock`] is a set of conditions that must all hold.
//!
//! The shape is Istio's `HTTPMatchRequest`: `uri`, `method`, `authority`, `scheme` as
//! exact / prefix / regex (RE2 syntax, whole-string match as in Envoy), `headers` (`{}` =
//! present), `withoutHeaders`, `queryParams` and `ignoreUriCase`.

use http::header::HeaderName;
use http::request::Parts;
use regex::Regex;

/// How one string (a path, a method, a header value) is compared.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Anchored: the whole value must match.
    Regex(Regex),
    /// `{}` in Istio: the value only has to be present.
    Present,
}

impl PartialEq for StringMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (StringMatch::Exact(a), StringMatch::Exact(b)) => a == b,
            (StringMatch::Prefix(a), StringMatch::Prefix(b)) => a == b,
            (StringMatch::Regex(a), StringMatch::Regex(b)) => a.as_str() == b.as_str(),
            (StringMatch::Present, StringMatch::Present) => true,
            _ => false,
        }
    }
}

impl StringMatch {
    /// A regex that must match the whole value (`^(?:…)$`).
    pub fn regex(pattern: &str) -> Result<StringMatch, regex::Error> {
        Regex::new(&format!("^(?:{pattern})$")).map(StringMatch::Regex)
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(e) => value == e,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
            StringMatch::Present => true,
        }
    }

    /// Case-insensitive for exact and prefix (Istio's `ignoreUriCase`); regex as written.
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(e) => value.eq_ignore_ascii_case(e),
            StringMatch::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            other => other.matches(value),
        }
    }
}

/// Conditions ANDed together; an empty block matches every request.
#[derive(Debug, Clone, Default)]
pub struct MatchBlock {
    /// Compared with the path only (no query string), as Istio does.
    pub uri: Option<StringMatch>,
    pub ignore_uri_case: bool,
    pub method: Option<StringMatch>,
    /// The `Host`/`:authority` as sent (port included when the client sent one).
    pub authority: Option<StringMatch>,
    /// `http` or `https` (the listener's scheme).
    pub scheme: Option<StringMatch>,
    pub headers: Vec<(HeaderName, StringMatch)>,
    /// Headers whose match must fail (`{}` = must be absent).
    pub without_headers: Vec<(HeaderName, StringMatch)>,
    pub query_params: Vec<(String, StringMatch)>,
}

/// What matching reads besides the request head.
pub struct RequestView<'a> {
    pub parts: &'a Parts,
    pub authority: Option<&'a str>,
    pub scheme: &'a str,
}

impl MatchBlock {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let parts = req.parts;
        if let Some(m) = &self.uri {
            let path = parts.uri.path();
            let ok = if self.ignore_uri_case {
                m.matches_ignore_case(path)
            } else {
                m.matches(path)
            };
            if !ok {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !m.matches(parts.method.as_str()) {
                return false;
            }
        }
        if let Some(m) = &self.authority {
            if !req.authority.is_some_and(|a| m.matches(a)) {
                return false;
            }
        }
        if let Some(m) = &self.scheme {
            if !m.matches(req.scheme) {
                return false;
            }
        }
        let header_ok = |name: &HeaderName, m: &StringMatch| {
            parts
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v)))
        };
        if !self.headers.iter().all(|(n, m)| header_ok(n, m)) {
            return false;
        }
        if self.without_headers.iter().any(|(n, m)| header_ok(n, m)) {
            return false;
        }
        if !self.query_params.is_empty() {
            let query = parts.uri.query().unwrap_or("");
            return self
                .query_params
                .iter()
                .all(|(name, m)| query_values(query, name).any(|v| m.matches(&v)));
        }
        true
    }
}

/// The values of one query parameter, percent-decoded (`+` is a space).
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = String> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
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

    fn hn(s: &'static str) -> HeaderName {
        HeaderName::from_static(s)
    }

    fn re(p: &str) -> StringMatch {
        StringMatch::regex(p).expect("regex")
    }

    fn view<'a>(p: &'a Parts, authority: Option<&'a str>, scheme: &'a str) -> RequestView<'a> {
        RequestView {
            parts: p,
            authority,
            scheme,
        }
    }

    #[test]
    fn table() {
        let uri = |m: StringMatch| MatchBlock {
            uri: Some(m),
            ..Default::default()
        };
        let cases: Vec<(&str, MatchBlock, Parts, Option<&str>, bool)> = vec![
            (
                "prefix",
                uri(StringMatch::Prefix("/api".into())),
                req("GET", "/api/users?x=1", &[]),
                None,
                true,
            ),
            (
                "prefix miss",
                uri(StringMatch::Prefix("/api".into())),
                req("GET", "/ap", &[]),
                None,
                false,
            ),
            (
                "prefix not inside",
                uri(StringMatch::Prefix("/api".into())),
                req("GET", "/x/api", &[]),
                None,
                false,
            ),
            (
                "exact ignores query",
                uri(StringMatch::Exact("/health".into())),
                req("GET", "/health?v=1", &[]),
                None,
                true,
            ),
            (
                "exact miss",
                uri(StringMatch::Exact("/health".into())),
                req("GET", "/healthz", &[]),
                None,
                false,
            ),
            (
                "regex whole",
                uri(re("/users/[0-9]+")),
                req("GET", "/users/42", &[]),
                None,
                true,
            ),
            (
                "regex anchored",
                uri(re("/users/[0-9]+")),
                req("GET", "/users/42/orders", &[]),
                None,
                false,
            ),
            (
                "ignore case prefix",
                MatchBlock {
                    uri: Some(StringMatch::Prefix("/API".into())),
                    ignore_uri_case: true,
                    ..Default::default()
                },
                req("GET", "/api/v1", &[]),
                None,
                true,
            ),
            (
                "ignore case exact",
                MatchBlock {
                    uri: Some(StringMatch::Exact("/Health".into())),
                    ignore_uri_case: true,
                    ..Default::default()
                },
                req("GET", "/HEALTH", &[]),
                None,
                true,
            ),
            (
                "case matters by default",
                uri(StringMatch::Exact("/Health".into())),
                req("GET", "/health", &[]),
                None,
                false,
            ),
            (
                "method",
                MatchBlock {
                    method: Some(StringMatch::Exact("POST".into())),
                    ..Default::default()
                },
                req("POST", "/", &[]),
                None,
                true,
            ),
            (
                "method regex",
                MatchBlock {
                    method: Some(re("GET|HEAD")),
                    ..Default::default()
                },
                req("DELETE", "/", &[]),
                None,
                false,
            ),
            (
                "authority exact",
                MatchBlock {
                    authority: Some(StringMatch::Exact("my-app".into())),
                    ..Default::default()
                },
                req("GET", "/", &[]),
                Some("my-app"),
                true,
            ),
            (
                "authority prefix",
                MatchBlock {
                    authority: Some(StringMatch::Prefix("api.".into())),
                    ..Default::default()
                },
                req("GET", "/", &[]),
                Some("web.example"),
                false,
            ),
            (
                "scheme",
                MatchBlock {
                    scheme: Some(StringMatch::Exact("https".into())),
                    ..Default::default()
                },
                req("GET", "/", &[]),
                None,
                false,
            ),
            (
                "header exact",
                MatchBlock {
                    headers: vec![(hn("x-rollout"), StringMatch::Exact("shadow".into()))],
                    ..Default::default()
                },
                req("GET", "/", &[("x-rollout", "shadow")]),
                None,
                true,
            ),
            (
                "header other value",
                MatchBlock {
                    headers: vec![(hn("x-rollout"), StringMatch::Exact("shadow".into()))],
                    ..Default::default()
                },
                req("GET", "/", &[("x-rollout", "primary")]),
                None,
                false,
            ),
            (
                "header present",
                MatchBlock {
                    headers: vec![(hn("x-debug"), StringMatch::Present)],
                    ..Default::default()
                },
                req("GET", "/", &[("x-debug", "")]),
                None,
                true,
            ),
            (
                "header regex",
                MatchBlock {
                    headers: vec![(hn("user-agent"), re(".*curl.*"))],
                    ..Default::default()
                },
                req("GET", "/", &[("user-agent", "curl/8.0")]),
                None,
                true,
            ),
            (
                "without header absent",
                MatchBlock {
                    without_headers: vec![(hn("x-canary"), StringMatch::Present)],
                    ..Default::default()
                },
                req("GET", "/", &[]),
                None,
                true,
            ),
            (
                "without header present",
                MatchBlock {
                    without_headers: vec![(hn("x-canary"), StringMatch::Present)],
                    ..Default::default()
                },
                req("GET", "/", &[("x-canary", "1")]),
                None,
                false,
            ),
            (
                "without header other value",
                MatchBlock {
                    without_headers: vec![(hn("x-env"), StringMatch::Exact("test".into()))],
                    ..Default::default()
                },
                req("GET", "/", &[("x-env", "prod")]),
                None,
                true,
            ),
            (
                "query exact",
                MatchBlock {
                    query_params: vec![("user".into(), StringMatch::Exact("a b".into()))],
                    ..Default::default()
                },
                req("GET", "/?x=1&user=a%20b", &[]),
                None,
                true,
            ),
            (
                "query regex",
                MatchBlock {
                    query_params: vec![("id".into(), re("[0-9]+"))],
                    ..Default::default()
                },
                req("GET", "/?id=abc", &[]),
                None,
                false,
            ),
            (
                "query absent",
                MatchBlock {
                    query_params: vec![("id".into(), StringMatch::Present)],
                    ..Default::default()
                },
                req("GET", "/?other=1", &[]),
                None,
                false,
            ),
            (
                "empty block",
                MatchBlock::default(),
                req("DELETE", "/anything", &[]),
                None,
                true,
            ),
        ];
        for (name, m, r, authority, want) in &cases {
            assert_eq!(
                m.matches(&view(r, *authority, "http")),
                *want,
                "case {name}"
            );
        }
    }

    #[test]
    fn conditions_in_a_block_are_anded() {
        let m = MatchBlock {
            uri: Some(StringMatch::Prefix("/pay".into())),
            headers: vec![(hn("x-rollout"), StringMatch::Exact("shadow".into()))],
            ..Default::default()
        };
        let yes = req("GET", "/payments", &[("x-rollout", "shadow")]);
        let no_header = req("GET", "/payments", &[]);
        let no_path = req("GET", "/other", &[("x-rollout", "shadow")]);
        assert!(m.matches(&view(&yes, None, "http")));
        assert!(!m.matches(&view(&no_header, None, "http")));
        assert!(!m.matches(&view(&no_path, None, "http")));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(decode("a%20b+c"), "a b c");
        assert_eq!(decode("%zz%"), "%zz%");
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%é"), "%é");
    }
}
