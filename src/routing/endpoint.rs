//! Endpoints of a service: load balancing (round robin, least request) and passive outlier
//! detection (eject after consecutive failures, bring back after the ejection time).
//!
//! All state is atomics; picking never blocks. When every endpoint is ejected, all of them are
//! eligible again (Envoy's panic mode): a service is never made unreachable by ejection alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    /// Power of two choices on active requests (Envoy's LEAST_REQUEST).
    LeastRequest,
    Random,
}

/// Istio `outlierDetection`, the parts a proxy without a control plane can apply.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    /// Consecutive 5xx responses or connect failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// Count only 502/503/504 and connect failures (Istio `consecutiveGatewayErrors`).
    pub gateway_errors_only: bool,
    pub base_ejection: Duration,
    /// At most this share of endpoints ejected at once (at least one may always be).
    pub max_ejection_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            gateway_errors_only: false,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

/// The port an endpoint of this scheme has when its address gives none (443 for https).
pub fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTPS {
        443
    } else {
        80
    }
}

/// One address of a service, with the labels subsets select on.
#[derive(Debug)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub authority: Authority,
    pub labels: BTreeMap<String, String>,
    active: AtomicUsize,
    failures: AtomicU32,
    /// Milliseconds since the process epoch until which it is ejected; 0 = in service.
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
}

impl Clone for Endpoint {
    /// A copy for another service (e.g. a subset): same address and labels, fresh state.
    fn clone(&self) -> Self {
        Endpoint::new(
            self.scheme.clone(),
            self.authority.clone(),
            self.labels.clone(),
        )
    }
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Endpoint {
    pub fn new(scheme: Scheme, authority: Authority, labels: BTreeMap<String, String>) -> Endpoint {
        Endpoint {
            scheme,
            authority,
            labels,
            active: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Count a request in flight until the guard is dropped (for least request).
    pub fn start(&self) -> ActiveGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self)
    }
}

pub struct ActiveGuard<'a>(&'a Endpoint);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an exchange with an endpoint says about its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// A 5xx status (gateway: 502/503/504).
    ServerError {
        gateway: bool,
    },
    ConnectFailure,
}

/// The endpoints of one service or subset, with how to choose among them.
#[derive(Debug)]
pub struct EndpointSet {
    pub endpoints: Vec<Endpoint>,
    pub lb: LbPolicy,
    pub outlier: Option<OutlierPolicy>,
    next: AtomicUsize,
}

impl EndpointSet {
    pub fn new(endpoints: Vec<Endpoint>, lb: LbPolicy, outlier: Option<OutlierPolicy>) -> Self {
        EndpointSet {
            endpoints,
            lb,
            outlier,
            next: AtomicUsize::new(0),
        }
    }

    pub fn pick(&self) -> Option<&Endpoint> {
        let n = self.endpoints.len();
        if n <= 1 {
            return self.endpoints.first();
        }
        let healthy = |e: &&Endpoint| self.outlier.is_none() || !e.is_ejected();
        let any_healthy = self.outlier.is_none() || self.endpoints.iter().any(|e| !e.is_ejected());
        // Panic mode: all ejected, so all are eligible.
        let eligible = |e: &&Endpoint| !any_healthy || healthy(e);
        match self.lb {
            LbPolicy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &self.endpoints[(start + i) % n])
                    .find(eligible)
            }
            LbPolicy::Random => {
                let start = fastrand::usize(..n);
                (0..n)
                    .map(|i| &self.endpoints[(start + i) % n])
                    .find(eligible)
            }
            LbPolicy::LeastRequest => {
                let pool: Vec<&Endpoint> = self.endpoints.iter().filter(eligible).collect();
                match pool.len() {
                    0 => None,
                    1 => pool.first().copied(),
                    m => {
                        let a = pool[fastrand::usize(..m)];
                        let b = pool[fastrand::usize(..m)];
                        Some(if b.active() < a.active() { b } else { a })
                    }
                }
            }
        }
    }

    /// Passive health: update the endpoint's failure count and eject it when it crosses the
    /// threshold (and the ejection cap allows).
    pub fn report(&self, ep: &Endpoint, health: Health) {
        let Some(p) = &self.outlier else { return };
        let counts = match health {
            Health::Ok => false,
            Health::ConnectFailure => true,
            Health::ServerError { gateway } => gateway || !p.gateway_errors_only,
        };
        if !counts {
            ep.failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = ep.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < p.consecutive_failures || ep.is_ejected() {
            return;
        }
        let ejected = self.endpoints.iter().filter(|e| e.is_ejected()).count();
        let cap = (self.endpoints.len() * p.max_ejection_percent as usize / 100).max(1);
        if ejected >= cap {
            return;
        }
        // Envoy: each ejection lasts base × times ejected.
        let times = ep.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = p.base_ejection.as_millis() as u64 * u64::from(times.min(10));
        ep.ejected_until_ms.store(now_ms() + ms, Ordering::Relaxed);
        ep.failures.store(0, Ordering::Relaxed);
        tracing::warn!(endpoint = %ep.authority, ejection_ms = ms, "outlier detection ejected an endpoint");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(a: &'static str) -> Endpoint {
        Endpoint::new(Scheme::HTTP, Authority::from_static(a), BTreeMap::new())
    }

    #[test]
    fn round_robin_cycles() {
        let s = EndpointSet::new(
            vec![ep("a:1"), ep("b:1"), ep("c:1")],
            LbPolicy::RoundRobin,
            None,
        );
        let got: Vec<_> = (0..6)
            .map(|_| s.pick().expect("ep").authority.host().to_owned())
            .collect();
        assert_eq!(got, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let s = EndpointSet::new(vec![ep("a:1"), ep("b:1")], LbPolicy::LeastRequest, None);
        let busy = &s.endpoints[0];
        let _g: Vec<_> = (0..10).map(|_| busy.start()).collect();
        // Two random choices; b wins whenever it is among them: ≥ 3/4 of picks.
        let b = (0..4000)
            .filter(|_| s.pick().expect("ep").authority.host() == "b")
            .count();
        assert!(b > 2800, "b picked {b} of 4000");
        drop(_g);
        assert_eq!(busy.active(), 0);
    }

    #[test]
    fn outlier_ejects_and_panic_mode_keeps_serving() {
        let policy = OutlierPolicy {
            consecutive_failures: 3,
            gateway_errors_only: false,
            base_ejection: Duration::from_secs(3600),
            max_ejection_percent: 50,
        };
        let s = EndpointSet::new(
            vec![ep("a:1"), ep("b:1")],
            LbPolicy::RoundRobin,
            Some(policy),
        );
        let a = &s.endpoints[0];
        s.report(a, Health::ServerError { gateway: false });
        s.report(a, Health::Ok); // resets
        s.report(a, Health::ServerError { gateway: false });
        s.report(a, Health::ConnectFailure);
        assert!(!a.is_ejected());
        s.report(a, Health::ServerError { gateway: true });
        assert!(a.is_ejected());
        for _ in 0..10 {
            assert_eq!(s.pick().expect("ep").authority.host(), "b");
        }
        // The cap (50 % of 2 = 1) keeps b in service even when it fails too.
        let b = &s.endpoints[1];
        for _ in 0..5 {
            s.report(b, Health::ConnectFailure);
        }
        assert!(!b.is_ejected());
    }

    #[test]
    fn gateway_only_ignores_500() {
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            gateway_errors_only: true,
            ..OutlierPolicy::default()
        };
        let s = EndpointSet::new(
            vec![ep("a:1"), ep("b:1")],
            LbPolicy::RoundRobin,
            Some(policy),
        );
        s.report(&s.endpoints[0], Health::ServerError { gateway: false });
        assert!(!s.endpoints[0].is_ejected());
        s.report(&s.endpoints[0], Health::ServerError { gateway: true });
        assert!(s.endpoints[0].is_ejected());
    }
}
