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
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;

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
    pub routes: S<Vec<RouteFile>>,
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
    /// Body bytes held for copies in flight to this shadow, at most (default `8MiB`).
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    pub uri: Option<S<StringMatchFile>>,
    pub method: Option<S<StringMatchFile>>,
    #[serde(default)]
    pub headers: BTreeMap<String, S<StringMatchFile>>,
}

/// `{exact: ...}`, `{prefix: ...}`, or `{}` (present).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchFile {
    pub exact: Option<String>,
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationFile {
    /// A service name.
    pub destination: S<String>,
    /// Share of traffic: weight ÷ sum of weights (default 1; absent on all = equal split).
    pub weight: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorFile {
    /// A service name.
    pub destination: S<String>,
    /// 0–100, fractional allowed (default 100).
    pub percent: Option<S<f64>>,
}
