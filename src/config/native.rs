//! The native YAML file, as serde types. Every field is documented in README.md
//! ("Configuration reference"); unknown fields are errors, so a typo never passes silently.
//!
//! ```yaml
//! listeners: [127.0.0.1:8080]
//! admin: 127.0.0.1:9901
//! services:
//!   - name: v1
//!     endpoints: [127.0.0.1:9001]
//!   - name: v2
//!     endpoints: [{address: 127.0.0.1:9002, labels: {track: canary}}]
//!     shadow: {timeout: 2s, methods: [GET, HEAD]}
//! routes:
//!   - name: api
//!     match: [{uri: {prefix: /api}}]
//!     route: [{destination: v1}]
//!     mirrors: [{destination: v2, percent: 10}]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

pub use super::common::S;
use super::common::{HeadersFile, MatchFile, OutlierFile, RetriesFile, RewriteFile};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Addresses to accept client traffic on.
    #[serde(default)]
    pub listeners: Vec<S<String>>,
    /// Admin listener (metrics, status); loopback recommended.
    pub admin: Option<S<String>>,
    /// `stdout` (default), `stderr`, `off`, or a file path.
    pub access_log: Option<S<String>>,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// Defaults for every service used as a shadow; a service's own `shadow:` wins.
    #[serde(default)]
    pub mirror_defaults: ShadowFile,
    pub services: S<Vec<ServiceFile>>,
    /// Request hosts these routes serve: exact, `*.suffix`, or `*` (default `["*"]`).
    pub hosts: Option<Vec<S<String>>>,
    /// Compare each mirrored answer with the primary's and record the pairs.
    pub compare: Option<CompareFile>,
    pub limits: Option<LimitsFile>,
    /// TLS listeners and how `https://` upstreams are verified.
    pub tls: Option<TlsFile>,
    pub routes: S<Vec<RouteFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Addresses that accept TLS (ALPN h2 and http/1.1), beside the plain `listeners`.
    #[serde(default)]
    pub listeners: Vec<S<String>>,
    /// Certificate chain (PEM) of the TLS listeners; re-read on SIGHUP.
    pub cert: Option<S<String>>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1); re-read on SIGHUP.
    pub key: Option<S<String>>,
    /// CA bundle (PEM) that `https://` upstreams are verified against (default: Mozilla's roots).
    pub upstream_ca: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// TCP connect to any upstream (default 1s).
    pub connect: Option<S<String>>,
    /// The primary's response head (default 30s).
    pub request: Option<S<String>>,
    /// Graceful-shutdown deadline for in-flight requests (default 10s).
    pub shutdown: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: S<String>,
    pub endpoints: S<Vec<S<EndpointFile>>>,
    /// Overrides `timeouts.request` for this service as a primary.
    pub request_timeout: Option<S<String>>,
    /// How the service is treated when it is a mirror target.
    pub shadow: Option<ShadowFile>,
    /// Named groups of endpoints selected by labels: `destination: v1, subset: canary`.
    #[serde(default)]
    pub subsets: Vec<SubsetFile>,
    /// `round_robin` (default), `least_request`, `random`.
    pub load_balancer: Option<S<String>>,
    /// Eject endpoints after consecutive failures (off unless given).
    pub outlier_detection: Option<S<OutlierFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetFile {
    pub name: S<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `127.0.0.1:9001`, `http://127.0.0.1:9001`, or `{address: ..., labels: {...}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EndpointFile {
    Address(String),
    Full {
        address: String,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowFile {
    /// Mirrored requests in flight at most (default 256); excess is dropped and counted.
    pub max_in_flight: Option<S<usize>>,
    /// Deadline for the shadow's whole answer (default 5s).
    pub timeout: Option<S<String>>,
    /// Largest request body mirrored, e.g. `1MiB` (default), `64KiB`, `0`.
    pub max_body: Option<S<String>>,
    /// Body bytes held for copies in flight to this shadow, at most (default `4MiB`).
    pub max_buffered: Option<S<String>>,
    /// Only these methods are mirrored (default: all).
    pub methods: Option<Vec<S<String>>>,
    /// Suffix for the shadow's Host (default `-shadow`); `""` keeps Host unchanged.
    pub host_suffix: Option<S<String>>,
    pub breaker: Option<BreakerFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    /// Consecutive connect failures/timeouts that open the breaker (default 5).
    pub consecutive_failures: Option<S<u32>>,
    /// How long it stays open before one probe (default 5s).
    pub cooldown: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: S<String>,
    /// Match blocks, ORed; conditions inside one block ANDed. Absent = match all.
    #[serde(default, rename = "match")]
    pub matches: Vec<MatchFile>,
    /// Primary destinations, weighted.
    pub route: S<Vec<DestinationFile>>,
    #[serde(default)]
    pub mirrors: Vec<MirrorFile>,
    /// `headers: {request: {set, add, remove}, response: {...}}`.
    pub headers: Option<HeadersFile>,
    /// `rewrite: {uri: /new-prefix, authority: host}`.
    pub rewrite: Option<RewriteFile>,
    /// Overrides the primary's request timeout for this route.
    pub timeout: Option<S<String>>,
    /// Primary-only retries: `{attempts, per_try_timeout, retry_on}`.
    pub retries: Option<RetriesFile>,
    /// `random` (default), `request_id`, or `header:NAME`: consistent mirror sampling.
    pub mirror_sampling: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationFile {
    /// A service name.
    pub destination: S<String>,
    /// One of the service's subsets.
    pub subset: Option<S<String>>,
    /// Share of traffic: weight ÷ sum of weights (default 1; absent on all = equal split).
    pub weight: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorFile {
    /// A service name.
    pub destination: S<String>,
    pub subset: Option<S<String>>,
    /// 0–100, fractional allowed (default 100).
    pub percent: Option<S<f64>>,
    /// Istio's spelling: `percentage: {value: 10}`.
    pub percentage: Option<PercentageFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PercentageFile {
    pub value: S<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareFile {
    /// `sqlite:PATH` (or a `.db` path) or `postgres://user:pass@host/db`.
    pub store: S<String>,
    /// Bytes of each body kept for diffing (default `64KiB`).
    pub capture_body: Option<S<String>>,
    /// Headers never reported as differences, besides the default noisy set.
    #[serde(default)]
    pub ignore_headers: Vec<String>,
    /// JSON paths never reported: `$.timestamp`, `$.items[*].id`.
    #[serde(default)]
    pub ignore_fields: Vec<S<String>>,
    pub retention: Option<RetentionFile>,
    /// How long a shadow's answer waits for the primary's (default `30s`).
    pub pair_timeout: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// Pairs older than this are deleted (default `7d`).
    pub max_age: Option<S<String>>,
    /// At most this many pairs are kept (default 1000000).
    pub max_rows: Option<S<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Client connections open at once, all workers together (default 10000).
    pub max_connections: Option<S<usize>>,
    /// Request line and headers together (default 64KiB): 431 past it, 414 for the line alone.
    pub max_header_bytes: Option<S<String>>,
    /// Header fields in one request (default 100): 431 past it.
    pub max_headers: Option<S<usize>>,
    /// Largest request body, e.g. `10MiB` (default: no limit, bodies stream): 413 past it.
    pub max_body: Option<S<String>>,
}
