//! The routing table: what every config form (native YAML, Istio YAML, CLI flags) compiles to.
//!
//! A [`Table`] holds services (named sets of labelled endpoints; a subset is a service of its
//! own) and virtual hosts: domains plus an ordered list of routes. A route has match blocks
//! (ORed; the conditions inside one block are ANDed), weighted destinations (the primary:
//! exactly one is chosen per request), mirror policies (each considered on its own) and an
//! action (header changes, rewrite, timeout, retries). This module owns selection only: it
//! does no I/O, never blocks, and is tested without sockets. Tables are immutable once built;
//! runtime changes swap a whole new table in.

mod action;
mod endpoint;
mod matching;

pub use action::{sample_hash, HeaderOps, RetryOn, RetryPolicy, Rewrite, RouteAction, Sampling};
pub use endpoint::{default_port, Endpoint, EndpointSet, Health, LbPolicy, OutlierPolicy};
pub use matching::{MatchBlock, RequestView, StringMatch};

use std::sync::Arc;
use std::time::Duration;

pub use crate::mirror::{MirrorPolicy, Sampler};
use crate::telemetry::metrics::TargetStats;

/// One validated, immutable routing table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub services: Vec<Arc<Service>>,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Every service's state as a mirror target, made when first mirrored to; carried from
    /// table to table so in-flight limits and breakers survive live changes.
    pub shadows:
        Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<crate::mirror::Shadow>>>>,
    /// How each service is treated when it becomes a mirror target.
    pub shadow_settings: std::collections::HashMap<String, crate::mirror::ShadowSettings>,
}

/// Which request hosts a group of routes serves (Istio `VirtualService.hosts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// Compared case-insensitively with the host, port stripped.
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    Suffix(String),
    Any,
}

impl Domain {
    pub fn parse(s: &str) -> Domain {
        match s {
            "*" => Domain::Any,
            _ if s.starts_with("*.") => Domain::Suffix(s[1..].to_ascii_lowercase()),
            _ => Domain::Exact(s.to_ascii_lowercase()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<Domain>,
    pub routes: Vec<Route>,
}

/// A named upstream (Envoy: a cluster): one version of an application, or one subset of it.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub endpoints: EndpointSet,
    /// How long the primary may take to send its response head.
    pub request_timeout: Duration,
}

/// A route: the first one whose matches accept a request handles it.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    /// Empty means "match everything".
    pub matches: Vec<MatchBlock>,
    pub destinations: Vec<WeightedDestination>,
    pub mirrors: Vec<MirrorPolicy>,
    pub action: RouteAction,
    /// Metrics of this route's primary responses.
    pub primary_stats: Arc<TargetStats>,
    total_weight: u32,
}

/// A primary destination and its share of the route's traffic.
#[derive(Debug, Clone)]
pub struct WeightedDestination {
    pub service: Arc<Service>,
    pub weight: u32,
}

impl Service {
    pub fn new(name: String, endpoints: EndpointSet, request_timeout: Duration) -> Service {
        Service {
            name,
            endpoints,
            request_timeout,
        }
    }

    /// `None` only for a service without endpoints, which validation refuses.
    pub fn pick_endpoint(&self) -> Option<&Endpoint> {
        self.endpoints.pick()
    }
}

impl Route {
    pub fn new(
        name: impl Into<Arc<str>>,
        matches: Vec<MatchBlock>,
        destinations: Vec<WeightedDestination>,
        mirrors: Vec<MirrorPolicy>,
        action: RouteAction,
        metrics: &crate::telemetry::Metrics,
    ) -> Route {
        let total_weight = destinations.iter().map(|d| d.weight).sum();
        let name: Arc<str> = name.into();
        Route {
            primary_stats: Arc::new(metrics.target_stats(&name, &"primary".into())),
            name,
            matches,
            destinations,
            mirrors,
            action,
            total_weight,
        }
    }

    /// The same route sending elsewhere: new destinations and mirrors, same matches, action
    /// and metrics.
    pub fn with_targets(
        &self,
        destinations: Vec<WeightedDestination>,
        mirrors: Vec<MirrorPolicy>,
    ) -> Route {
        Route {
            total_weight: destinations.iter().map(|d| d.weight).sum(),
            destinations,
            mirrors,
            ..self.clone()
        }
    }

    /// `Some(block)` when the route takes the request: the block that matched (`None` inside
    /// when the route has no match blocks).
    pub fn matching(&self, req: &RequestView<'_>) -> Option<Option<&MatchBlock>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find(|m| m.matches(req)).map(Some)
    }

    /// Choose the primary destination: weight ÷ sum of weights.
    pub fn pick_destination(&self) -> Option<&WeightedDestination> {
        match self.destinations.len() {
            0 => None,
            1 => self.destinations.first(),
            _ => self.pick_weighted(fastrand::u32(..self.total_weight.max(1))),
        }
    }

    /// Weighted pick given a number in `0..total_weight`.
    pub fn pick_weighted(&self, mut ticket: u32) -> Option<&WeightedDestination> {
        for d in &self.destinations {
            if ticket < d.weight {
                return Some(d);
            }
            ticket -= d.weight;
        }
        self.destinations.last()
    }
}

/// `host:port` → `host` (IPv6 literals keep their brackets), lowercased by the caller.
pub fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

impl Table {
    /// The virtual host for a request host: exact domain first, then the longest wildcard
    /// suffix, then `*` (Envoy's order).
    pub fn virtual_host(&self, authority: Option<&str>) -> Option<&VirtualHost> {
        // The common case (flags, native config without hosts): one catch-all.
        if let [vh] = self.virtual_hosts.as_slice() {
            if vh.domains == [Domain::Any] {
                return Some(vh);
            }
        }
        let host = authority.map(strip_port).unwrap_or("").as_bytes();
        let mut best: Option<(&VirtualHost, usize)> = None;
        for vh in &self.virtual_hosts {
            for d in &vh.domains {
                // Domains are stored lowercase; hosts compare without allocating.
                let rank = match d {
                    Domain::Exact(e) if host.eq_ignore_ascii_case(e.as_bytes()) => usize::MAX,
                    Domain::Suffix(s)
                        if host.len() > s.len()
                            && host[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes()) =>
                    {
                        s.len() + 1
                    }
                    Domain::Any => 0,
                    _ => continue,
                };
                if best.is_none_or(|(_, r)| rank > r) {
                    best = Some((vh, rank));
                }
            }
        }
        best.map(|(vh, _)| vh)
    }

    /// The route for a request and the match block that took it.
    pub fn select<'t>(
        &'t self,
        req: &RequestView<'_>,
    ) -> Option<(&'t Route, Option<&'t MatchBlock>)> {
        let vh = self.virtual_host(req.authority)?;
        vh.routes
            .iter()
            .find_map(|r| r.matching(req).map(|m| (r, m)))
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.virtual_hosts.iter().flat_map(|v| v.routes.iter())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::uri::{Authority, Scheme};

    use super::*;

    fn svc(name: &str) -> Arc<Service> {
        Arc::new(Service::new(
            name.into(),
            EndpointSet::new(
                vec![Endpoint::new(
                    Scheme::HTTP,
                    Authority::from_static("127.0.0.1:1"),
                    BTreeMap::new(),
                )],
                LbPolicy::RoundRobin,
                None,
            ),
            Duration::from_secs(1),
        ))
    }

    fn route(name: &str, matches: Vec<MatchBlock>, dests: Vec<(Arc<Service>, u32)>) -> Route {
        Route::new(
            name,
            matches,
            dests
                .into_iter()
                .map(|(service, weight)| WeightedDestination { service, weight })
                .collect(),
            vec![],
            RouteAction::default(),
            &crate::telemetry::Metrics::new(),
        )
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("valid").into_parts().0
    }

    fn select<'t>(t: &'t Table, p: &http::request::Parts, host: &str) -> Option<&'t str> {
        let v = RequestView {
            parts: p,
            authority: Some(host),
            scheme: "http",
        };
        t.select(&v).map(|(r, _)| &*r.name)
    }

    #[test]
    fn header_opt_in_route_goes_first() {
        let (v1, v2) = (svc("v1"), svc("v2"));
        let optin = route(
            "optin",
            vec![MatchBlock {
                headers: vec![(
                    http::HeaderName::from_static("x-rollout"),
                    StringMatch::Exact("shadow".into()),
                )],
                ..MatchBlock::default()
            }],
            vec![(v2.clone(), 1)],
        );
        let all = route("default", vec![], vec![(v1.clone(), 1)]);
        let t = Table {
            services: vec![v1, v2],
            shadows: Default::default(),
            shadow_settings: Default::default(),
            virtual_hosts: vec![VirtualHost {
                name: "all".into(),
                domains: vec![Domain::Any],
                routes: vec![optin, all],
            }],
        };
        assert_eq!(
            select(&t, &parts("/", &[("x-rollout", "shadow")]), "a"),
            Some("optin")
        );
        assert_eq!(select(&t, &parts("/", &[]), "a"), Some("default"));
    }

    #[test]
    fn virtual_host_precedence() {
        let s = svc("s");
        let vh = |name: &str, domains: &[&str]| VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| Domain::parse(d)).collect(),
            routes: vec![route(name, vec![], vec![(s.clone(), 1)])],
        };
        let t = Table {
            services: vec![s.clone()],
            shadows: Default::default(),
            shadow_settings: Default::default(),
            virtual_hosts: vec![
                vh("any", &["*"]),
                vh("wild", &["*.example.com"]),
                vh("deeper", &["*.api.example.com"]),
                vh("exact", &["my-app", "my-app.default.svc.cluster.local"]),
            ],
        };
        let p = parts("/", &[]);
        assert_eq!(select(&t, &p, "my-app"), Some("exact"));
        assert_eq!(select(&t, &p, "MY-APP:3000"), Some("exact"));
        assert_eq!(
            select(&t, &p, "my-app.default.svc.cluster.local"),
            Some("exact")
        );
        assert_eq!(select(&t, &p, "x.example.com"), Some("wild"));
        assert_eq!(select(&t, &p, "v1.api.example.com:8443"), Some("deeper"));
        assert_eq!(select(&t, &p, "example.com"), Some("any"));
        assert_eq!(select(&t, &p, "other"), Some("any"));
        let no_any = Table {
            services: vec![s.clone()],
            shadows: Default::default(),
            shadow_settings: Default::default(),
            virtual_hosts: vec![vh("exact", &["my-app"])],
        };
        assert_eq!(select(&no_any, &p, "other"), None);
    }

    #[test]
    fn weighted_pick_follows_weights() {
        let r = route("r", vec![], vec![(svc("v1"), 90), (svc("v2"), 10)]);
        assert_eq!(r.pick_weighted(0).expect("d").service.name, "v1");
        assert_eq!(r.pick_weighted(89).expect("d").service.name, "v1");
        assert_eq!(r.pick_weighted(90).expect("d").service.name, "v2");
        assert_eq!(r.pick_weighted(99).expect("d").service.name, "v2");
    }

    #[test]
    fn weighted_split_converges_to_its_weights() {
        // Property: for random weight vectors, observed shares stay within 5 sd of w / sum.
        let mut rng = fastrand::Rng::with_seed(7);
        for _case in 0..20 {
            let k = rng.usize(2..5);
            let weights: Vec<u32> = (0..k).map(|_| rng.u32(1..100)).collect();
            let sum: u32 = weights.iter().sum();
            let r = route(
                "r",
                vec![],
                weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| (svc(&format!("s{i}")), *w))
                    .collect(),
            );
            let n = 20_000;
            let mut counts = vec![0u32; k];
            for _ in 0..n {
                let d = r.pick_destination().expect("d");
                let i: usize = d.service.name[1..].parse().expect("index");
                counts[i] += 1;
            }
            for (i, w) in weights.iter().enumerate() {
                let p = f64::from(*w) / f64::from(sum);
                let sd = (f64::from(n) * p * (1.0 - p)).sqrt();
                let diff = (f64::from(counts[i]) - f64::from(n) * p).abs();
                assert!(
                    diff <= 5.0 * sd + 1.0,
                    "weights {weights:?}: s{i} got {}",
                    counts[i]
                );
            }
        }
    }

    #[test]
    fn strip_port_keeps_ipv6() {
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a"), "a");
    }
}
