//! The Istio resources' serde types: what `networking.istio.io` documents may contain.
//! Mesh-only fields are declared so they can be warned about; unsupported ones so they can be
//! refused with their location. Everything else is an unknown-field error.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::config::common::{HeadersFile, MatchFile, OutlierFile, RetriesFile, RewriteFile, S};
use crate::config::native::PercentageFile;

#[derive(Debug, Deserialize)]
pub(super) struct Header {
    #[serde(rename = "apiVersion")]
    pub(super) api_version: Option<S<String>>,
    pub(super) kind: Option<S<String>>,
    #[serde(default)]
    pub(super) metadata: Meta,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Meta {
    pub(super) name: Option<String>,
    pub(super) namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Doc<T> {
    pub(super) spec: S<T>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VirtualServiceSpec {
    #[serde(default)]
    pub(super) hosts: Vec<S<String>>,
    pub(super) gateways: Option<S<IgnoredAny>>,
    #[serde(rename = "exportTo")]
    pub(super) export_to: Option<S<IgnoredAny>>,
    #[serde(default)]
    pub(super) http: Vec<HttpRoute>,
    pub(super) tcp: Option<S<IgnoredAny>>,
    pub(super) tls: Option<S<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HttpRoute {
    pub(super) name: Option<S<String>>,
    #[serde(default, rename = "match")]
    pub(super) matches: Vec<MatchFile>,
    pub(super) route: Option<S<Vec<RouteDestination>>>,
    pub(super) rewrite: Option<RewriteFile>,
    pub(super) timeout: Option<S<String>>,
    pub(super) retries: Option<RetriesFile>,
    pub(super) headers: Option<HeadersFile>,
    pub(super) mirror: Option<S<Destination>>,
    #[serde(rename = "mirrorPercentage")]
    pub(super) mirror_percentage: Option<PercentageFile>,
    #[serde(rename = "mirrorPercent")]
    pub(super) mirror_percent: Option<S<u32>>,
    pub(super) mirrors: Option<S<Vec<MirrorPolicyFile>>>,
    pub(super) redirect: Option<S<IgnoredAny>>,
    #[serde(rename = "directResponse")]
    pub(super) direct_response: Option<S<IgnoredAny>>,
    pub(super) delegate: Option<S<IgnoredAny>>,
    pub(super) fault: Option<S<IgnoredAny>>,
    #[serde(rename = "corsPolicy")]
    pub(super) cors_policy: Option<S<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteDestination {
    pub(super) destination: S<Destination>,
    pub(super) weight: Option<S<u32>>,
    pub(super) headers: Option<S<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Destination {
    pub(super) host: S<String>,
    pub(super) subset: Option<S<String>>,
    pub(super) port: Option<PortSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PortSelector {
    pub(super) number: S<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MirrorPolicyFile {
    pub(super) destination: S<Destination>,
    pub(super) percentage: Option<PercentageFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DestinationRuleSpec {
    pub(super) host: S<String>,
    #[serde(rename = "trafficPolicy")]
    pub(super) traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub(super) subsets: Vec<Subset>,
    #[serde(rename = "exportTo")]
    pub(super) export_to: Option<S<IgnoredAny>>,
    #[serde(rename = "workloadSelector")]
    pub(super) workload_selector: Option<S<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrafficPolicy {
    #[serde(rename = "loadBalancer")]
    pub(super) load_balancer: Option<S<LoadBalancer>>,
    #[serde(rename = "outlierDetection")]
    pub(super) outlier_detection: Option<S<OutlierFile>>,
    #[serde(rename = "connectionPool")]
    pub(super) connection_pool: Option<S<IgnoredAny>>,
    pub(super) tls: Option<S<ClientTls>>,
    #[serde(rename = "portLevelSettings")]
    pub(super) port_level_settings: Option<S<IgnoredAny>>,
    pub(super) tunnel: Option<S<IgnoredAny>>,
    #[serde(rename = "proxyProtocol")]
    pub(super) proxy_protocol: Option<S<IgnoredAny>>,
}

/// `trafficPolicy.tls`: how the proxy speaks to the destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientTls {
    pub(super) mode: Option<S<String>>,
    #[serde(rename = "clientCertificate")]
    pub(super) client_certificate: Option<S<IgnoredAny>>,
    #[serde(rename = "privateKey")]
    pub(super) private_key: Option<S<IgnoredAny>>,
    #[serde(rename = "caCertificates")]
    pub(super) ca_certificates: Option<S<IgnoredAny>>,
    #[serde(rename = "credentialName")]
    pub(super) credential_name: Option<S<IgnoredAny>>,
    #[serde(rename = "subjectAltNames")]
    pub(super) subject_alt_names: Option<S<IgnoredAny>>,
    pub(super) sni: Option<S<String>>,
    #[serde(rename = "insecureSkipVerify")]
    pub(super) insecure_skip_verify: Option<S<bool>>,
    #[serde(rename = "caCrl")]
    pub(super) ca_crl: Option<S<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoadBalancer {
    pub(super) simple: Option<S<String>>,
    #[serde(rename = "consistentHash")]
    pub(super) consistent_hash: Option<S<IgnoredAny>>,
    #[serde(rename = "localityLbSetting")]
    pub(super) locality_lb_setting: Option<S<IgnoredAny>>,
    #[serde(rename = "warmupDurationSecs")]
    pub(super) warmup_duration_secs: Option<S<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Subset {
    pub(super) name: S<String>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(rename = "trafficPolicy")]
    pub(super) traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceEntrySpec {
    pub(super) hosts: Vec<S<String>>,
    #[serde(default)]
    pub(super) ports: Vec<PortFile>,
    pub(super) resolution: Option<S<String>>,
    #[serde(default)]
    pub(super) endpoints: Vec<WorkloadEntry>,
    pub(super) location: Option<S<IgnoredAny>>,
    pub(super) addresses: Option<S<IgnoredAny>>,
    #[serde(rename = "exportTo")]
    pub(super) export_to: Option<S<IgnoredAny>>,
    #[serde(rename = "subjectAltNames")]
    pub(super) subject_alt_names: Option<S<IgnoredAny>>,
    #[serde(rename = "workloadSelector")]
    pub(super) workload_selector: Option<S<IgnoredAny>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PortFile {
    pub(super) number: S<u32>,
    pub(super) name: Option<String>,
    pub(super) protocol: Option<S<String>>,
    #[serde(rename = "targetPort")]
    pub(super) target_port: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkloadEntry {
    pub(super) address: S<String>,
    #[serde(default)]
    pub(super) ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    pub(super) network: Option<S<IgnoredAny>>,
    pub(super) locality: Option<S<IgnoredAny>>,
    pub(super) weight: Option<S<IgnoredAny>>,
    #[serde(rename = "serviceAccount")]
    pub(super) service_account: Option<S<IgnoredAny>>,
}
