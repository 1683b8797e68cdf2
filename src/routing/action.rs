//! What a route does to a request besides choosing where it goes: header changes, rewrites,
//! timeout, retries, and how its mirrors are sampled. Pure functions over `http` types.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;

use super::StringMatch;

/// Istio `headers.request` / `headers.response`: `set` replaces, `add` appends, `remove` drops.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

/// Istio `rewrite`: `uri` replaces the matched prefix (or the whole path when the match was
/// not a prefix); `authority` replaces `Host`.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<HeaderValue>,
}

impl Rewrite {
    /// The new path and query, given how the route's URI matched.
    pub fn path(
        &self,
        original: &PathAndQuery,
        matched: Option<&StringMatch>,
    ) -> Option<PathAndQuery> {
        let new = self.uri.as_ref()?;
        let path = original.path();
        let rest = match matched {
            Some(StringMatch::Prefix(p)) if path.starts_with(p.as_str()) => &path[p.len()..],
            Some(StringMatch::Prefix(p)) if path.len() >= p.len() => &path[p.len()..], // ignoreUriCase
            _ => "",
        };
        let mut s = String::with_capacity(new.len() + rest.len() + 16);
        s.push_str(new);
        // "/api" → "/" with rest "/users" must not become "//users".
        if s.ends_with('/') && rest.starts_with('/') {
            s.pop();
        }
        s.push_str(rest);
        if s.is_empty() {
            s.push('/');
        }
        if let Some(q) = original.query() {
            s.push('?');
            s.push_str(q);
        }
        PathAndQuery::try_from(s).ok()
    }
}

/// When a failed primary attempt is tried again (Envoy `retry_on` names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx, or a reset/connect failure.
    pub five_xx: bool,
    /// 502, 503, 504.
    pub gateway_error: bool,
    pub connect_failure: bool,
    /// The connection failed after connecting (reset, closed mid-response).
    pub reset: bool,
    /// 409.
    pub retriable_4xx: bool,
    /// `retriable-status-codes` and bare status codes in `retryOn`.
    pub statuses: Vec<u16>,
}

impl RetryOn {
    /// Parse Istio's comma-separated `retryOn`; unknown names are an error.
    pub fn parse(s: &str) -> Result<RetryOn, String> {
        let mut r = RetryOn::default();
        for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            match item {
                "5xx" => r.five_xx = true,
                "gateway-error" => r.gateway_error = true,
                "connect-failure" => r.connect_failure = true,
                "reset" | "reset-before-request" | "refused-stream" => r.reset = true,
                "retriable-4xx" => r.retriable_4xx = true,
                "retriable-status-codes" => {}
                // gRPC and HTTP/2 stream conditions never arise on our HTTP/1.1 upstreams.
                "cancelled" | "deadline-exceeded" | "internal" | "resource-exhausted"
                | "unavailable" | "envoy-ratelimited" | "retriable-headers" => {}
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => r.statuses.push(c),
                    _ => return Err(format!("`{code}` is not a retry condition")),
                },
            }
        }
        Ok(r)
    }

    pub fn on_status(&self, status: u16) -> bool {
        (self.five_xx && status >= 500)
            || (self.gateway_error && matches!(status, 502..=504))
            || (self.retriable_4xx && status == 409)
            || self.statuses.contains(&status)
    }

    pub fn on_connect_failure(&self) -> bool {
        self.connect_failure || self.five_xx || self.gateway_error || self.reset
    }

    pub fn on_reset(&self) -> bool {
        self.reset || self.five_xx
    }
}

/// Istio `retries`. Applied to the primary only; a mirror is never sent twice.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
}

/// How a route's mirrors decide which requests to copy.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Sampling {
    /// Independently random per request and mirror.
    #[default]
    Random,
    /// A hash of the request id: the same requests go to every shadow (at equal percentages)
    /// and a given id is always mirrored or never.
    RequestId,
    /// A hash of this header's value (e.g. a user id); absent header = random.
    Header(HeaderName),
}

/// Everything a route does besides choosing destinations.
#[derive(Debug, Clone, Default)]
pub struct RouteAction {
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite: Option<Rewrite>,
    /// Overrides the service's request timeout.
    pub timeout: Option<Duration>,
    pub retries: Option<RetryPolicy>,
    pub sampling: Sampling,
}

/// FNV-1a with murmur3's 64-bit finalizer (so ids that differ only in their last characters
/// still spread over the whole range), top 32 bits: stable across processes and releases, so
/// a user can reproduce which ids were mirrored.
pub fn sample_hash(value: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pq(s: &'static str) -> PathAndQuery {
        PathAndQuery::from_static(s)
    }

    #[test]
    fn header_ops() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        let ops = HeaderOps {
            set: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("2"),
            )],
            add: vec![(
                HeaderName::from_static("x-b"),
                HeaderValue::from_static("2"),
            )],
            remove: vec![HeaderName::from_static("x-c")],
        };
        h.insert("x-c", HeaderValue::from_static("gone"));
        ops.apply(&mut h);
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), ["2"]);
        assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(!h.contains_key("x-c"));
    }

    #[test]
    fn rewrite_replaces_the_matched_prefix() {
        let r = Rewrite {
            uri: Some("/v2".into()),
            authority: None,
        };
        let prefix = StringMatch::Prefix("/api".into());
        assert_eq!(
            r.path(&pq("/api/users?x=1"), Some(&prefix)).expect("pq"),
            "/v2/users?x=1"
        );
        let slash = Rewrite {
            uri: Some("/".into()),
            authority: None,
        };
        assert_eq!(
            slash.path(&pq("/api/users"), Some(&prefix)).expect("pq"),
            "/users"
        );
        assert_eq!(slash.path(&pq("/api"), Some(&prefix)).expect("pq"), "/");
        let exact = StringMatch::Exact("/old".into());
        assert_eq!(r.path(&pq("/old?q"), Some(&exact)).expect("pq"), "/v2?q");
        assert_eq!(r.path(&pq("/anything"), None).expect("pq"), "/v2");
    }

    #[test]
    fn retry_on_parsing() {
        let r = RetryOn::parse("gateway-error,connect-failure,409").expect("parse");
        assert!(r.on_status(503) && !r.on_status(500) && r.on_status(409));
        assert!(r.on_connect_failure());
        assert!(!r.on_reset());
        assert!(RetryOn::parse("5xx").expect("parse").on_status(500));
        assert!(RetryOn::parse("sometimes").is_err());
    }

    #[test]
    fn sample_hash_is_stable_and_spread() {
        assert_eq!(sample_hash(b"abc"), sample_hash(b"abc"));
        assert_ne!(sample_hash(b"abc"), sample_hash(b"abd"));
        // Uniform enough, also over short runs of similar ids: 10 % within 5 sd.
        let t = super::super::Sampler::from_percent(10.0);
        for n in [200u32, 20_000] {
            let hits = (0..n)
                .filter(|i| t.sample_with(sample_hash(format!("req-{i}").as_bytes())))
                .count() as f64;
            let (mean, sd) = (f64::from(n) * 0.1, (f64::from(n) * 0.09).sqrt());
            assert!((hits - mean).abs() < 5.0 * sd, "n = {n}: hits = {hits}");
        }
    }
}
