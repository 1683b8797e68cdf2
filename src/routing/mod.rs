//! The routing table: what every config form (native YAML, Istio YAML, CLI flags) compiles to.
//!
//! A [`Table`] holds services (named groups of labelled endpoints) and an ordered list of
//! routes. A route has match blocks (ORed; the conditions inside one block are ANDed), weighted
//! destinations (the primary: exactly one is chosen per request) and mirror policies (every
//! one is considered on its own). This module owns selection only: it does no I/O, never
//! blocks, and is tested without sockets. Tables are immutable once built; runtime changes
//! swap a whole new table in.

mod matching;

pub use matching::{MatchBlock, StringMatch};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};

pub use crate::mirror::{MirrorPolicy, Sampler};
use crate::telemetry::metrics::TargetStats;

/// One validated, immutable routing table.
#[derive(Debug)]
pub struct Table {
    pub services: Vec<Arc<Service>>,
    pub routes: Vec<Route>,
}

/// A named upstream: where requests for one version of an application go.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    /// How long the primary may take to send its response head.
    pub request_timeout: Duration,
    next: AtomicUsize,
}

/// One address of a service, with the labels subsets select on.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub authority: Authority,
    pub labels: BTreeMap<String, String>,
}

/// A route: the first one whose matches accept a request handles it.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    /// Empty means "match everything".
    pub matches: Vec<MatchBlock>,
    pub destinations: Vec<WeightedDestination>,
    pub mirrors: Vec<MirrorPolicy>,
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
    pub fn new(name: String, endpoints: Vec<Endpoint>, request_timeout: Duration) -> Service {
        Service {
            name,
            endpoints,
            request_timeout,
            next: AtomicUsize::new(0),
        }
    }

    /// Round-robin over the endpoints. `None` only for a service without endpoints,
    /// which validation refuses.
    pub fn pick_endpoint(&self) -> Option<&Endpoint> {
        match self.endpoints.len() {
            0 => None,
            1 => self.endpoints.first(),
            n => self
                .endpoints
                .get(self.next.fetch_add(1, Ordering::Relaxed) % n),
        }
    }
}

impl Route {
    pub fn new(
        name: impl Into<Arc<str>>,
        matches: Vec<MatchBlock>,
        destinations: Vec<WeightedDestination>,
        mirrors: Vec<MirrorPolicy>,
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
            total_weight,
        }
    }

    pub fn matches(&self, req: &http::request::Parts) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
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

impl Table {
    /// First route that matches, in order.
    pub fn select(&self, req: &http::request::Parts) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(req))
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Arc<Service> {
        Arc::new(Service::new(
            name.into(),
            vec![Endpoint {
                scheme: Scheme::HTTP,
                authority: Authority::from_static("127.0.0.1:1"),
                labels: BTreeMap::new(),
            }],
            Duration::from_secs(1),
        ))
    }

    fn parts(uri: &str) -> http::request::Parts {
        http::Request::get(uri)
            .body(())
            .expect("valid")
            .into_parts()
            .0
    }

    #[test]
    fn first_matching_route_wins() {
        let a = svc("a");
        let b = svc("b");
        let api = Route::new(
            "api",
            vec![MatchBlock {
                uri: Some(StringMatch::Prefix("/api".into())),
                ..MatchBlock::default()
            }],
            vec![WeightedDestination {
                service: a.clone(),
                weight: 1,
            }],
            vec![],
            &crate::telemetry::Metrics::new(),
        );
        let all = Route::new(
            "default",
            vec![],
            vec![WeightedDestination {
                service: b.clone(),
                weight: 1,
            }],
            vec![],
            &crate::telemetry::Metrics::new(),
        );
        let t = Table {
            services: vec![a, b],
            routes: vec![api, all],
        };
        assert_eq!(&*t.select(&parts("/api/x")).expect("route").name, "api");
        assert_eq!(&*t.select(&parts("/other")).expect("route").name, "default");
    }

    #[test]
    fn weighted_pick_follows_weights() {
        let r = Route::new(
            "r",
            vec![],
            vec![
                WeightedDestination {
                    service: svc("v1"),
                    weight: 90,
                },
                WeightedDestination {
                    service: svc("v2"),
                    weight: 10,
                },
            ],
            vec![],
            &crate::telemetry::Metrics::new(),
        );
        assert_eq!(r.pick_weighted(0).expect("d").service.name, "v1");
        assert_eq!(r.pick_weighted(89).expect("d").service.name, "v1");
        assert_eq!(r.pick_weighted(90).expect("d").service.name, "v2");
        assert_eq!(r.pick_weighted(99).expect("d").service.name, "v2");
        let v2 = (0..100_000)
            .filter(|_| r.pick_destination().expect("d").service.name == "v2")
            .count() as f64;
        // sd ≈ 95
        assert!((v2 - 10_000.0).abs() < 500.0, "v2 = {v2}");
    }

    #[test]
    fn round_robin_over_endpoints() {
        let ep = |a: &'static str| Endpoint {
            scheme: Scheme::HTTP,
            authority: Authority::from_static(a),
            labels: BTreeMap::new(),
        };
        let s = Service::new(
            "s".into(),
            vec![ep("127.0.0.1:1"), ep("127.0.0.1:2")],
            Duration::from_secs(1),
        );
        let picks: Vec<_> = (0..4)
            .map(|_| s.pick_endpoint().expect("ep").authority.port_u16())
            .collect();
        assert_eq!(picks, vec![Some(1), Some(2), Some(1), Some(2)]);
    }
}
