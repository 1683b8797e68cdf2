//! Prometheus metrics: one registry per process, rendered as text on the admin listener.
//!
//! Hot-path counters are looked up once (per route and shadow, when a table is built) and
//! kept as handles; only per-status series are looked up per request.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Arc<str>,
    /// `primary` for the primary path, the shadow's name for a mirror.
    pub target: Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub route: Arc<str>,
    pub target: Arc<str>,
}

/// What happened to one route's request with respect to one mirror.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum MirrorOutcome {
    /// A copy was handed to the shadow.
    sent,
    /// The shadow answered (any status) within its timeout.
    succeeded,
    /// Connecting or talking to the shadow failed.
    failed,
    /// The shadow did not answer within its timeout.
    timeout,
    /// Not chosen by the route's percentage.
    sampled_out,
    /// The mirror's method filter excludes the request's method.
    filtered_method,
    /// The request body exceeded the mirror's body cap.
    body_too_large,
    /// The shadow already had its maximum of requests in flight.
    overload,
    /// The shadow's circuit breaker is open.
    circuit_open,
    /// The client's body never completed (aborted upload or primary failure).
    body_incomplete,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub route: Arc<str>,
    pub shadow: Arc<str>,
    pub outcome: MirrorOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PairLabels {
    pub route: Arc<str>,
    pub shadow: Arc<str>,
    /// `same`, `status`, `body`, `headers`, `unpaired`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub route: Arc<str>,
    pub shadow: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub shadow: Arc<str>,
}

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    mirror: Family<MirrorLabels, Counter>,
    pub shadow_in_flight: Family<ShadowLabels, Gauge>,
    pub shadow_circuit_open: Family<ShadowLabels, Gauge>,
    pub in_flight: Gauge,
    pub connections: Gauge,
    pub access_log_dropped: Counter,
    pairs: Family<PairLabels, Counter>,
    drift: Family<DriftLabels, Histogram>,
    pub store_written: Counter,
    pub store_dropped: Counter,
}

fn drift_histogram() -> Histogram {
    // Shadow minus primary latency, seconds: ±1 ms … ±10 s.
    let pos = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
    ];
    Histogram::new(pos.iter().rev().map(|x| -x).chain([0.0]).chain(pos))
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 18,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mirrorctl");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> _,
        );
        let mirror = Family::<MirrorLabels, Counter>::default();
        let shadow_in_flight = Family::<ShadowLabels, Gauge>::default();
        let shadow_circuit_open = Family::<ShadowLabels, Gauge>::default();
        let in_flight = Gauge::default();
        let connections = Gauge::default();
        let access_log_dropped = Counter::default();
        let pairs = Family::<PairLabels, Counter>::default();
        let drift =
            Family::<DriftLabels, Histogram>::new_with_constructor(drift_histogram as fn() -> _);
        let store_written = Counter::default();
        let store_dropped = Counter::default();
        registry.register(
            "mirror_pairs",
            "Compared primary/shadow pairs by route, shadow and outcome (same, status, body, headers, unpaired)",
            pairs.clone(),
        );
        registry.register(
            "pair_latency_drift_seconds",
            "Shadow minus primary time to response head, per compared pair",
            drift.clone(),
        );
        registry.register(
            "store_written",
            "Compared pairs written to the store",
            store_written.clone(),
        );
        registry.register(
            "store_dropped",
            "Compared pairs dropped because the store was slow or unavailable",
            store_dropped.clone(),
        );
        registry.register(
            "requests",
            "Upstream responses by route, target (primary or shadow name) and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the upstream's response head, by route and target",
            latency.clone(),
        );
        registry.register(
            "mirror",
            "Mirror decisions and results by route, shadow and outcome",
            mirror.clone(),
        );
        registry.register(
            "shadow_in_flight",
            "Mirrored requests in flight per shadow",
            shadow_in_flight.clone(),
        );
        registry.register(
            "shadow_circuit_open",
            "1 while a shadow's circuit breaker is open",
            shadow_circuit_open.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Client requests being served",
            in_flight.clone(),
        );
        registry.register(
            "client_connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access-log lines dropped because the writer was behind",
            access_log_dropped.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            mirror,
            shadow_in_flight,
            shadow_circuit_open,
            in_flight,
            connections,
            access_log_dropped,
            pairs,
            drift,
            store_written,
            store_dropped,
        }
    }

    pub fn pair(&self, route: &Arc<str>, shadow: &Arc<str>, outcome: &'static str) -> Counter {
        self.pairs.get_or_create_owned(&PairLabels {
            route: route.clone(),
            shadow: shadow.clone(),
            outcome,
        })
    }

    pub fn drift(&self, route: &Arc<str>, shadow: &Arc<str>, seconds: f64) {
        self.drift
            .get_or_create(&DriftLabels {
                route: route.clone(),
                shadow: shadow.clone(),
            })
            .observe(seconds);
    }

    /// A handle to one mirror-outcome counter, to keep on the hot path.
    pub fn mirror_counter(
        &self,
        route: &Arc<str>,
        shadow: &Arc<str>,
        outcome: MirrorOutcome,
    ) -> Counter {
        self.mirror.get_or_create_owned(&MirrorLabels {
            route: route.clone(),
            shadow: shadow.clone(),
            outcome,
        })
    }

    pub fn shadow_gauge(family: &Family<ShadowLabels, Gauge>, shadow: &Arc<str>) -> Gauge {
        family.get_or_create_owned(&ShadowLabels {
            shadow: shadow.clone(),
        })
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The series of one (route, target) pair, resolved once when a table is built so that a
/// request touches no map and no label hashing: the histogram directly, the status counter
/// through a lock-free slot per status code.
#[derive(Debug)]
pub struct TargetStats {
    route: Arc<str>,
    target: Arc<str>,
    latency: Histogram,
    requests: Family<RequestLabels, Counter>,
    by_status: Box<[std::sync::OnceLock<Counter>]>,
}

impl TargetStats {
    pub fn observe(&self, status: u16, elapsed: Duration) {
        self.latency.observe(elapsed.as_secs_f64());
        let labels = || RequestLabels {
            route: self.route.clone(),
            target: self.target.clone(),
            status,
        };
        match self.by_status.get(usize::from(status)) {
            Some(slot) => slot
                .get_or_init(|| self.requests.get_or_create_owned(&labels()))
                .inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
    }
}

impl Metrics {
    pub fn target_stats(&self, route: &Arc<str>, target: &Arc<str>) -> TargetStats {
        TargetStats {
            route: route.clone(),
            target: target.clone(),
            latency: self.latency.get_or_create_owned(&LatencyLabels {
                route: route.clone(),
                target: target.clone(),
            }),
            requests: self.requests.clone(),
            // One slot per code up to 599; rarer codes take the map.
            by_status: (0..600).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }
}
