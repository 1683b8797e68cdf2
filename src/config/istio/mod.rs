//! Istio `networking.istio.io` (v1alpha3, v1beta1, v1 — one schema) as a config source:
//! `VirtualService` routes, `DestinationRule` subsets and policies, `ServiceEntry` addresses.
//!
//! A destination `{host, subset, port}` becomes one service (Envoy: a cluster) whose endpoints
//! are the `ServiceEntry` endpoints of that host and port, filtered by the subset's labels.
//! Mesh-only fields are accepted with a warning; fields we cannot honour are errors naming the
//! file, line, document and field path: nothing is dropped silently.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::uri::{Authority, Scheme};
use serde::de::IgnoredAny;

use super::build::{check_percent, check_weights, Builder, Common, MirrorSpec};
use super::common::{self, Ctx, S};
use super::{ConfigError, Runtime};
use crate::mirror::ShadowSettings;
use crate::routing::{
    Domain, Endpoint, EndpointSet, LbPolicy, OutlierPolicy, RouteAction, Service, VirtualHost,
    WeightedDestination,
};
use crate::telemetry::Metrics;

mod types;
use types::*;

const API_GROUP: &str = "networking.istio.io/";
const VERSIONS: [&str; 3] = ["v1alpha3", "v1beta1", "v1"];

/// One document of one file, with what errors need to point into it.
struct Located<T> {
    source: String,
    line_offset: u64,
    label: String,
    namespace: String,
    name: String,
    spec: S<T>,
}

impl<T> Located<T> {
    fn cx(&self) -> Ctx<'_> {
        Ctx {
            source: &self.source,
            line_offset: self.line_offset,
            doc: Some(self.label.clone()),
        }
    }
}

#[derive(Default)]
struct Docs {
    vs: Vec<Located<VirtualServiceSpec>>,
    dr: Vec<Located<DestinationRuleSpec>>,
    se: Vec<Located<ServiceEntrySpec>>,
    warnings: Vec<String>,
}

/// Whether a file's text is Istio (any document with an `apiVersion: networking.istio.io/…`).
pub fn looks_like_istio(text: &str) -> bool {
    text.lines()
        .any(|l| l.trim_start().starts_with("apiVersion:") && l.contains(API_GROUP))
}

/// Split multi-document YAML on `---` lines: (0-based line offset, text) per non-empty document.
fn split_documents(text: &str) -> Vec<(u64, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 0u64;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") && line[3..].trim().chars().all(|c| c == ' ') || line == "..." {
            if !cur.trim().is_empty() {
                docs.push((start, std::mem::take(&mut cur)));
            }
            cur.clear();
            start = i as u64 + 1;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    // A file without a final newline: no line of its own after the last one, so that an
    // error at the end of the file points into it.
    if !text.ends_with('\n') {
        cur.pop();
    }
    if !cur.trim().is_empty() {
        docs.push((start, cur));
    }
    docs
}

fn yaml_err(source: &str, offset: u64, label: &str, e: &serde_saphyr::Error) -> ConfigError {
    let msg = format!("{label}: {}", super::units::yaml_message(e));
    match e.location() {
        Some(loc) => {
            let mut err = ConfigError::at(source, &loc, msg);
            if let Some(l) = err.line.as_mut() {
                *l += offset;
            }
            err
        }
        None => ConfigError::whole(source, msg),
    }
}

fn parse_file(source: &str, text: &str, docs: &mut Docs) -> Result<(), ConfigError> {
    for (n, (offset, doc)) in split_documents(text).into_iter().enumerate() {
        let index = n + 1;
        let h: Header = serde_saphyr::from_str(&doc)
            .map_err(|e| yaml_err(source, offset, &format!("document {index}"), &e))?;
        let kind = h.kind.as_ref().map(|k| k.value.clone()).unwrap_or_default();
        let name = h
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| format!("doc{index}"));
        let label = format!("document {index} ({kind} {name})");
        let cx = Ctx {
            source,
            line_offset: offset,
            doc: Some(format!("document {index}")),
        };
        let Some(api) = &h.api_version else {
            return Err(ConfigError::whole(
                source,
                format!("document {index}: apiVersion is missing"),
            ));
        };
        let version = api.value.strip_prefix(API_GROUP);
        if !version.is_some_and(|v| VERSIONS.contains(&v)) {
            return Err(cx.err(
                &api.referenced,
                "apiVersion",
                format!(
                    "`{}` is not supported (networking.istio.io/v1alpha3, v1beta1 or v1)",
                    api.value
                ),
            ));
        }
        let namespace = h
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        macro_rules! typed {
            ($t:ty) => {{
                let d: Doc<$t> = serde_saphyr::from_str(&doc)
                    .map_err(|e| yaml_err(source, offset, &label, &e))?;
                Located {
                    source: source.to_owned(),
                    line_offset: offset,
                    label: label.clone(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    spec: d.spec,
                }
            }};
        }
        match kind.as_str() {
            "VirtualService" => docs.vs.push(typed!(VirtualServiceSpec)),
            "DestinationRule" => docs.dr.push(typed!(DestinationRuleSpec)),
            "ServiceEntry" => docs.se.push(typed!(ServiceEntrySpec)),
            "Gateway" | "Sidecar" | "WorkloadEntry" | "WorkloadGroup" | "EnvoyFilter"
            | "ProxyConfig" => {
                let loc = h
                    .kind
                    .as_ref()
                    .map(|k| k.referenced)
                    .unwrap_or(serde_saphyr::Location::UNKNOWN);
                docs.warnings.push(cx.warn(&loc, "kind", format!("{kind} is mesh configuration; ignored (mirrorctl listens where --listen says)")));
            }
            _ => {
                let loc = h
                    .kind
                    .as_ref()
                    .map(|k| k.referenced)
                    .unwrap_or(serde_saphyr::Location::UNKNOWN);
                return Err(cx.err(
                    &loc,
                    "kind",
                    format!(
                        "`{kind}` is not supported (VirtualService, DestinationRule, ServiceEntry)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `reviews` in namespace `prod` → `reviews.prod.svc.cluster.local`; names with dots stay.
fn fqdn(host: &str, ns: &str) -> String {
    let h = host.to_ascii_lowercase();
    if h.contains('.') || h == "*" || h.starts_with("*.") {
        h
    } else {
        format!("{h}.{ns}.svc.cluster.local")
    }
}

/// The names Envoy would serve a VirtualService host under (Istio's domain expansion).
fn domains(host: &str, ns: &str) -> Vec<Domain> {
    if host == "*" || host.starts_with("*.") {
        return vec![Domain::parse(host)];
    }
    let f = fqdn(host, ns);
    let mut out = vec![Domain::parse(host), Domain::parse(&f)];
    if let Some(short) = f.strip_suffix(".svc.cluster.local") {
        out.push(Domain::parse(short));
        out.push(Domain::parse(&format!("{short}.svc")));
        if let Some((name, _)) = short.split_once('.') {
            out.push(Domain::parse(name));
        }
    }
    out.dedup();
    out
}

/// Reports fields that are mesh-only (warning) or that we cannot honour (error).
fn ignored(cx: &Ctx, v: &Option<S<IgnoredAny>>, field: &str, warnings: &mut Vec<String>) {
    if let Some(v) = v {
        warnings.push(cx.warn(&v.referenced, field, "mesh-only field, ignored"));
    }
}

fn unsupported(
    cx: &Ctx,
    v: &Option<S<IgnoredAny>>,
    field: &str,
    why: &str,
) -> Result<(), ConfigError> {
    match v {
        Some(v) => Err(cx.err(
            &v.referenced,
            field,
            format!("not supported by mirrorctl ({why})"),
        )),
        None => Ok(()),
    }
}

/// What a DestinationRule says about TLS towards its destination.
enum UpstreamTls {
    Plain,
    /// TLS; `sni` (when given) must be every endpoint's host (else the prepared error).
    Simple {
        sni: Option<(String, ConfigError)>,
    },
}

struct Importer<'a, 'm> {
    b: Builder<'m>,
    docs: &'a Docs,
    request_timeout: std::time::Duration,
    shadow: ShadowSettings,
    /// Service name → the host it was made for: a host's first label names its services
    /// unless another host took that name first (then the whole host name does).
    service_hosts: HashMap<String, String>,
}

impl Importer<'_, '_> {
    fn policy(
        &mut self,
        cx: &Ctx,
        tp: &TrafficPolicy,
        field: &str,
        lb: &mut LbPolicy,
        outlier: &mut Option<OutlierPolicy>,
        tls: &mut Option<UpstreamTls>,
    ) -> Result<(), ConfigError> {
        if let Some(l) = &tp.load_balancer {
            unsupported(
                cx,
                &l.value.consistent_hash,
                &format!("{field}.loadBalancer.consistentHash"),
                "use simple load balancing",
            )?;
            ignored(
                cx,
                &l.value.locality_lb_setting,
                &format!("{field}.loadBalancer.localityLbSetting"),
                &mut self.b.warnings,
            );
            ignored(
                cx,
                &l.value.warmup_duration_secs,
                &format!("{field}.loadBalancer.warmupDurationSecs"),
                &mut self.b.warnings,
            );
            if let Some(s) = &l.value.simple {
                *lb = common::lb_policy(cx, s, &format!("{field}.loadBalancer.simple"))?;
            }
        }
        if let Some(o) = &tp.outlier_detection {
            *outlier = Some(common::outlier(
                cx,
                o,
                &format!("{field}.outlierDetection"),
            )?);
        }
        if let Some(c) = &tp.connection_pool {
            self.b.warnings.push(cx.warn(&c.referenced, &format!("{field}.connectionPool"), "not applied (mirrorctl pools per endpoint; shadows are bounded by their own limits)"));
        }
        if let Some(t) = &tp.tls {
            *tls = Some(self.client_tls(cx, t, &format!("{field}.tls"))?);
        }
        unsupported(
            cx,
            &tp.port_level_settings,
            &format!("{field}.portLevelSettings"),
            "give one policy per host",
        )?;
        unsupported(cx, &tp.tunnel, &format!("{field}.tunnel"), "no tunnelling")?;
        unsupported(
            cx,
            &tp.proxy_protocol,
            &format!("{field}.proxyProtocol"),
            "no PROXY protocol",
        )?;
        Ok(())
    }

    /// `trafficPolicy.tls`. Without a mesh there is no sidecar to do `ISTIO_MUTUAL`: the
    /// destination is reached in plain HTTP, with a warning. `SIMPLE` is TLS verified against
    /// the proxy's upstream CA bundle (`--upstream-ca`, `tls.upstream_ca`, else Mozilla's
    /// roots), SNI = the endpoint's host. Client certificates and per-destination CAs are
    /// refused rather than half applied.
    fn client_tls(
        &mut self,
        cx: &Ctx,
        t: &S<ClientTls>,
        field: &str,
    ) -> Result<UpstreamTls, ConfigError> {
        let c = &t.value;
        let mode = c
            .mode
            .as_ref()
            .map_or_else(|| "DISABLE".to_owned(), |m| m.value.to_ascii_uppercase());
        let mode_loc = c.mode.as_ref().map_or(t.referenced, |m| m.referenced);
        let per_destination = "give the CA bundle to the proxy (--upstream-ca or tls.upstream_ca)";
        match mode.as_str() {
            "DISABLE" => return Ok(UpstreamTls::Plain),
            "ISTIO_MUTUAL" => {
                self.b.warnings.push(cx.warn(
                    &mode_loc,
                    &format!("{field}.mode"),
                    "ISTIO_MUTUAL needs the mesh's certificates: ignored, the destination is reached in plain HTTP",
                ));
                return Ok(UpstreamTls::Plain);
            }
            "SIMPLE" => {}
            "MUTUAL" => return Err(cx.err(
                &mode_loc,
                &format!("{field}.mode"),
                "not supported by mirrorctl (no client certificates towards upstreams; use SIMPLE)",
            )),
            other => {
                return Err(cx.err(
                    &mode_loc,
                    &format!("{field}.mode"),
                    format!("`{other}` is not a TLS mode (DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL)"),
                ))
            }
        }
        unsupported(
            cx,
            &c.client_certificate,
            &format!("{field}.clientCertificate"),
            "no client certificates towards upstreams",
        )?;
        unsupported(
            cx,
            &c.private_key,
            &format!("{field}.privateKey"),
            "no client certificates towards upstreams",
        )?;
        unsupported(
            cx,
            &c.credential_name,
            &format!("{field}.credentialName"),
            "no Kubernetes secrets; give files",
        )?;
        unsupported(
            cx,
            &c.ca_certificates,
            &format!("{field}.caCertificates"),
            per_destination,
        )?;
        unsupported(
            cx,
            &c.ca_crl,
            &format!("{field}.caCrl"),
            "no revocation lists",
        )?;
        unsupported(
            cx,
            &c.subject_alt_names,
            &format!("{field}.subjectAltNames"),
            "the certificate is checked against the endpoint's host name",
        )?;
        if let Some(v) = &c.insecure_skip_verify {
            if v.value {
                return Err(cx.err(
                    &v.referenced,
                    &format!("{field}.insecureSkipVerify"),
                    format!("mirrorctl always verifies upstream certificates; {per_destination}"),
                ));
            }
        }
        Ok(UpstreamTls::Simple {
            sni: c.sni.as_ref().map(|s| {
                let e = cx.err(
                    &s.referenced,
                    &format!("{field}.sni"),
                    format!("`{}` is not the endpoints' host name: mirrorctl sends the endpoint's host as SNI and verifies the certificate against it", s.value),
                );
                (s.value.clone(), e)
            }),
        })
    }

    /// The service for a destination, made on first use.
    fn destination(
        &mut self,
        cx: &Ctx,
        ns: &str,
        d: &S<Destination>,
        field: &str,
    ) -> Result<Arc<Service>, ConfigError> {
        let dest = &d.value;
        let host = fqdn(&dest.host.value, ns);
        let docs = self.docs;
        let se = docs.se.iter().find(|se| {
            se.spec
                .value
                .hosts
                .iter()
                .any(|h| fqdn(&h.value, &se.namespace) == host)
        });
        let Some(se) = se else {
            return Err(cx.err(&dest.host.referenced, &format!("{field}.host"), format!("no ServiceEntry declares host `{host}` (mirrorctl learns addresses from ServiceEntry)")));
        };
        let sx = se.cx();
        let spec = &se.spec.value;
        let port = match (&dest.port, spec.ports.len()) {
            (Some(p), _) => spec
                .ports
                .iter()
                .find(|x| x.number.value == p.number.value)
                .ok_or_else(|| {
                    cx.err(
                        &p.number.referenced,
                        &format!("{field}.port.number"),
                        format!("ServiceEntry {} has no port {}", se.name, p.number.value),
                    )
                })?,
            (None, 1) => &spec.ports[0],
            (None, 0) => {
                return Err(sx.err(
                    &se.spec.referenced,
                    "spec.ports",
                    "at least one port is needed",
                ))
            }
            (None, _) => {
                return Err(cx.err(
                    &d.referenced,
                    &format!("{field}.port"),
                    format!("ServiceEntry {} has several ports: say which", se.name),
                ))
            }
        };
        if let Some(p) = &port.protocol {
            if !matches!(
                p.value.to_ascii_uppercase().as_str(),
                "HTTP" | "HTTP2" | "GRPC"
            ) {
                return Err(sx.err(
                    &p.referenced,
                    "spec.ports.protocol",
                    format!("`{}` is not proxied (HTTP only)", p.value),
                ));
            }
        }
        let subset_name = dest.subset.as_ref().map(|s| s.value.clone());
        let first_label = host.split('.').next().unwrap_or(&host).to_owned();
        let short = match self.service_hosts.get(&first_label) {
            Some(owner) if *owner != host => host.clone(),
            _ => first_label,
        };
        self.service_hosts
            .entry(short.clone())
            .or_insert_with(|| host.clone());
        let mut name = match &subset_name {
            Some(s) => format!("{short}/{s}"),
            None => short.clone(),
        };
        if spec.ports.len() > 1 {
            name = format!("{name}:{}", port.number.value);
        }
        if let Some(existing) = self.b.find(&name) {
            return Ok(existing.clone());
        }

        // Endpoints of this host and port.
        let resolution = spec
            .resolution
            .as_ref()
            .map(|r| r.value.to_ascii_uppercase())
            .unwrap_or_else(|| "NONE".into());
        if !matches!(resolution.as_str(), "STATIC" | "DNS" | "DNS_ROUND_ROBIN") {
            let loc = spec
                .resolution
                .as_ref()
                .map_or(se.spec.referenced, |r| r.referenced);
            return Err(sx.err(
                &loc,
                "spec.resolution",
                format!("`{resolution}` needs a mesh; use STATIC or DNS"),
            ));
        }
        let mut endpoints = Vec::new();
        for (i, e) in spec.endpoints.iter().enumerate() {
            let p = port
                .name
                .as_ref()
                .and_then(|n| e.ports.get(n).copied())
                .or(port.target_port)
                .unwrap_or(port.number.value);
            let authority = endpoint_authority(&e.address.value, p).map_err(|m| {
                sx.err(
                    &e.address.referenced,
                    &format!("spec.endpoints[{i}].address"),
                    m,
                )
            })?;
            endpoints.push(Endpoint::new(Scheme::HTTP, authority, e.labels.clone()));
        }
        if endpoints.is_empty() {
            if resolution == "STATIC" {
                return Err(sx.err(
                    &se.spec.referenced,
                    "spec.endpoints",
                    "resolution STATIC needs endpoints",
                ));
            }
            // DNS without endpoints: the host itself is the address.
            for h in &spec.hosts {
                let authority =
                    endpoint_authority(&h.value, port.target_port.unwrap_or(port.number.value))
                        .map_err(|m| sx.err(&h.referenced, "spec.hosts", m))?;
                endpoints.push(Endpoint::new(Scheme::HTTP, authority, BTreeMap::new()));
            }
        }

        // Policies and the subset from the DestinationRule.
        let mut lb = LbPolicy::RoundRobin;
        let mut outlier = None;
        let mut tls = None;
        let dr = docs
            .dr
            .iter()
            .find(|dr| fqdn(&dr.spec.value.host.value, &dr.namespace) == host);
        if let Some(dr) = dr {
            let dx = dr.cx();
            if let Some(tp) = &dr.spec.value.traffic_policy {
                self.policy(
                    &dx,
                    tp,
                    "spec.trafficPolicy",
                    &mut lb,
                    &mut outlier,
                    &mut tls,
                )?;
            }
        }
        if let Some(sub) = &dest.subset {
            let Some(dr) = dr else {
                return Err(cx.err(
                    &sub.referenced,
                    &format!("{field}.subset"),
                    format!("no DestinationRule for host `{host}` defines subsets"),
                ));
            };
            let dx = dr.cx();
            let Some((j, s)) = dr
                .spec
                .value
                .subsets
                .iter()
                .enumerate()
                .find(|(_, s)| s.name.value == sub.value)
            else {
                let known: Vec<&str> = dr
                    .spec
                    .value
                    .subsets
                    .iter()
                    .map(|s| s.name.value.as_str())
                    .collect();
                return Err(cx.err(
                    &sub.referenced,
                    &format!("{field}.subset"),
                    format!(
                        "DestinationRule {} has no subset `{}` (subsets: {})",
                        dr.name,
                        sub.value,
                        known.join(", ")
                    ),
                ));
            };
            if let Some(tp) = &s.traffic_policy {
                self.policy(
                    &dx,
                    tp,
                    &format!("spec.subsets[{j}].trafficPolicy"),
                    &mut lb,
                    &mut outlier,
                    &mut tls,
                )?;
            }
            endpoints.retain(|e| s.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
            if endpoints.is_empty() {
                return Err(dx.err(
                    &s.name.referenced,
                    &format!("spec.subsets[{j}]"),
                    format!(
                        "no endpoint of ServiceEntry {} has the labels {:?}",
                        se.name, s.labels
                    ),
                ));
            }
        }
        if let Some(UpstreamTls::Simple { sni }) = tls {
            for e in &mut endpoints {
                if let Some((sni, err)) = &sni {
                    if !e.authority.host().eq_ignore_ascii_case(sni) {
                        return Err(err.clone());
                    }
                }
                e.scheme = Scheme::HTTPS;
            }
        }
        let svc = Service::new(
            name,
            EndpointSet::new(endpoints, lb, outlier),
            self.request_timeout,
        );
        Ok(self.b.add(svc, self.shadow.clone()))
    }

    fn route(
        &mut self,
        vs: &Located<VirtualServiceSpec>,
        i: usize,
        r: &HttpRoute,
        single: bool,
    ) -> Result<crate::routing::Route, ConfigError> {
        let cx = vs.cx();
        let field = format!("spec.http[{i}]");
        let ns = vs.namespace.as_str();
        unsupported(
            &cx,
            &r.redirect,
            &format!("{field}.redirect"),
            "mirrorctl proxies, it does not redirect",
        )?;
        unsupported(
            &cx,
            &r.direct_response,
            &format!("{field}.directResponse"),
            "mirrorctl proxies, it does not answer",
        )?;
        unsupported(
            &cx,
            &r.delegate,
            &format!("{field}.delegate"),
            "inline the delegated routes",
        )?;
        unsupported(
            &cx,
            &r.fault,
            &format!("{field}.fault"),
            "no fault injection",
        )?;
        unsupported(
            &cx,
            &r.cors_policy,
            &format!("{field}.corsPolicy"),
            "no CORS handling",
        )?;
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            matches.push(common::match_block(
                &cx,
                m,
                &format!("{field}.match[{j}]"),
                &mut self.b.warnings,
            )?);
        }
        let Some(route) = &r.route else {
            return Err(ConfigError::whole(
                &vs.source,
                format!(
                    "{}: {field}.route: at least one destination is needed",
                    vs.label
                ),
            ));
        };
        let mut destinations = Vec::new();
        for (j, d) in route.value.iter().enumerate() {
            let f = format!("{field}.route[{j}]");
            unsupported(
                &cx,
                &d.headers,
                &format!("{f}.headers"),
                "set headers on the route, not the destination",
            )?;
            let service = self.destination(&cx, ns, &d.destination, &format!("{f}.destination"))?;
            // Istio: a lone destination without weight takes 100 %; weights are relative.
            let weight = d
                .weight
                .as_ref()
                .map_or(if route.value.len() == 1 { 100 } else { 0 }, |w| w.value);
            destinations.push(WeightedDestination { service, weight });
        }
        if destinations.is_empty() {
            return Err(cx.err(
                &route.referenced,
                &format!("{field}.route"),
                "at least one destination is needed",
            ));
        }
        check_weights(
            &cx,
            &destinations,
            &route.referenced,
            &format!("{field}.route"),
        )?;
        let mut mirrors: Vec<MirrorSpec> = Vec::new();
        match (&r.mirror, &r.mirrors) {
            (Some(m), Some(_)) => {
                return Err(cx.err(
                    &m.referenced,
                    &format!("{field}.mirror"),
                    "`mirror` and `mirrors` together are not allowed; use `mirrors`",
                ));
            }
            (Some(m), None) => {
                let percent = match (&r.mirror_percentage, &r.mirror_percent) {
                    (Some(p), _) => {
                        check_percent(&cx, &p.value, &format!("{field}.mirrorPercentage.value"))?
                    }
                    (None, Some(p)) => {
                        self.b.warnings.push(cx.warn(
                            &p.referenced,
                            &format!("{field}.mirrorPercent"),
                            "deprecated; use mirrorPercentage",
                        ));
                        check_percent(
                            &cx,
                            &S::new(f64::from(p.value), p.referenced, p.defined),
                            &format!("{field}.mirrorPercent"),
                        )?
                    }
                    (None, None) => 100.0,
                };
                let service = self.destination(&cx, ns, m, &format!("{field}.mirror"))?;
                mirrors.push(MirrorSpec { service, percent });
            }
            (None, Some(list)) => {
                for (j, m) in list.value.iter().enumerate() {
                    let f = format!("{field}.mirrors[{j}]");
                    let service =
                        self.destination(&cx, ns, &m.destination, &format!("{f}.destination"))?;
                    if mirrors.iter().any(|x| x.service.name == service.name) {
                        return Err(cx.err(
                            &m.destination.referenced,
                            &format!("{f}.destination"),
                            format!("`{}` is already a mirror of this route", service.name),
                        ));
                    }
                    let percent = match &m.percentage {
                        Some(p) => check_percent(&cx, &p.value, &format!("{f}.percentage.value"))?,
                        None => 100.0,
                    };
                    mirrors.push(MirrorSpec { service, percent });
                }
            }
            (None, None) => {}
        }
        let (request_headers, response_headers) =
            common::headers(&cx, &r.headers, &format!("{field}.headers"))?;
        let action = RouteAction {
            request_headers,
            response_headers,
            rewrite: common::rewrite(&cx, &r.rewrite, &format!("{field}.rewrite"))?,
            timeout: r
                .timeout
                .as_ref()
                .map(|t| cx.duration(t, &format!("{field}.timeout")))
                .transpose()?,
            retries: common::retries(&cx, &r.retries, &format!("{field}.retries"))?,
            sampling: Default::default(),
        };
        let name: Arc<str> = match &r.name {
            Some(n) => n.value.as_str().into(),
            None if single => vs.name.as_str().into(),
            None => format!("{}-{i}", vs.name).into(),
        };
        Ok(self.b.route(name, matches, destinations, mirrors, action))
    }
}

fn endpoint_authority(address: &str, port: u32) -> Result<Authority, String> {
    if address.starts_with("unix://") {
        return Err(format!("`{address}`: unix sockets are not supported"));
    }
    // Past 65535 the authority still parses, without a port: hyper would connect to 80.
    if u16::try_from(port).is_err() {
        return Err(format!(
            "`{address}`: port {port} is not between 0 and 65535"
        ));
    }
    let host = if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_owned()
    };
    Authority::try_from(format!("{host}:{port}"))
        .map_err(|_| format!("`{address}` is not an address"))
}

/// Read Istio files and build the runtime; listeners and the rest come from `common`.
pub fn build(
    files: &[(String, String)],
    common: Common,
    shadow: ShadowSettings,
    metrics: &Metrics,
) -> Result<(Runtime, Vec<String>), ConfigError> {
    let mut docs = Docs::default();
    for (source, text) in files {
        parse_file(source, text, &mut docs)?;
    }
    let first = files.first().map(|f| f.0.clone()).unwrap_or_default();
    if docs.vs.is_empty() {
        return Err(ConfigError::whole(
            &first,
            "no VirtualService: nothing to route",
        ));
    }
    let mut warnings = std::mem::take(&mut docs.warnings);
    let mut imp = Importer {
        b: Builder::new(metrics),
        docs: &docs,
        request_timeout: common.request_timeout,
        shadow,
        service_hosts: HashMap::new(),
    };
    let mut vhosts = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for vs in &docs.vs {
        let cx = vs.cx();
        let spec = &vs.spec.value;
        ignored(&cx, &spec.gateways, "spec.gateways", &mut imp.b.warnings);
        ignored(&cx, &spec.export_to, "spec.exportTo", &mut imp.b.warnings);
        unsupported(&cx, &spec.tcp, "spec.tcp", "HTTP routes only")?;
        unsupported(&cx, &spec.tls, "spec.tls", "HTTP routes only")?;
        if spec.hosts.is_empty() {
            return Err(cx.err(
                &vs.spec.referenced,
                "spec.hosts",
                "at least one host is needed",
            ));
        }
        // As Istio's validation: a VirtualService routes something.
        if spec.http.is_empty() {
            return Err(cx.err(
                &vs.spec.referenced,
                "spec.http",
                "at least one route is needed",
            ));
        }
        let mut routes = Vec::new();
        let single = spec.http.len() == 1;
        for (i, r) in spec.http.iter().enumerate() {
            let route = imp.route(vs, i, r, single)?;
            if let Some(prev) = names.insert(route.name.to_string(), vs.label.clone()) {
                let loc = r.name.as_ref().map_or(vs.spec.referenced, |n| n.referenced);
                return Err(cx.err(
                    &loc,
                    &format!("spec.http[{i}].name"),
                    format!("route name `{}` is already used in {prev}", route.name),
                ));
            }
            routes.push(route);
        }
        vhosts.push(VirtualHost {
            name: vs.name.clone(),
            domains: spec
                .hosts
                .iter()
                .flat_map(|h| domains(&h.value, &vs.namespace))
                .collect(),
            routes,
        });
    }
    for dr in &docs.dr {
        let cx = dr.cx();
        ignored(
            &cx,
            &dr.spec.value.export_to,
            "spec.exportTo",
            &mut imp.b.warnings,
        );
        unsupported(
            &cx,
            &dr.spec.value.workload_selector,
            "spec.workloadSelector",
            "no workloads here",
        )?;
    }
    for se in &docs.se {
        let cx = se.cx();
        let s = &se.spec.value;
        for (v, f) in [
            (&s.location, "spec.location"),
            (&s.addresses, "spec.addresses"),
            (&s.export_to, "spec.exportTo"),
            (&s.subject_alt_names, "spec.subjectAltNames"),
        ] {
            ignored(&cx, v, f, &mut imp.b.warnings);
        }
        unsupported(
            &cx,
            &s.workload_selector,
            "spec.workloadSelector",
            "list endpoints instead",
        )?;
        for (i, e) in s.endpoints.iter().enumerate() {
            for (v, f) in [
                (&e.network, "network"),
                (&e.locality, "locality"),
                (&e.weight, "weight"),
                (&e.service_account, "serviceAccount"),
            ] {
                ignored(
                    &cx,
                    v,
                    &format!("spec.endpoints[{i}].{f}"),
                    &mut imp.b.warnings,
                );
            }
        }
    }
    warnings.append(&mut imp.b.warnings);
    let table = imp.b.finish(vhosts);
    Ok((super::build::runtime(common, table), warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_with_line_offsets() {
        let d = split_documents("a: 1\n---\nb: 2\nc: 3\n--- \n\n---\nd: 4\n");
        assert_eq!(d.len(), 3);
        assert_eq!(d[0], (0, "a: 1\n".into()));
        assert_eq!(d[1], (2, "b: 2\nc: 3\n".into()));
        assert_eq!(d[2].0, 7);
        assert_eq!(
            split_documents("a: 1\n---\nb: 2"),
            [(0, "a: 1\n".into()), (2, "b: 2".into())]
        );
    }

    #[test]
    fn an_error_at_the_end_of_the_file_points_into_it() {
        // Found by the config_istio fuzz target: the last document got a newline the file
        // does not have, and an error at its end named line 2 of a 1-line file.
        let files = [("x.yaml".to_owned(), "%{}on".to_owned())];
        let e = crate::config::flags::istio_runtime(&Default::default(), &files, &Metrics::new())
            .map(drop)
            .expect_err("not YAML");
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn a_virtual_service_without_routes_is_refused() {
        // Found by the config_istio fuzz target: it was accepted, and its hosts only ever got
        // 404.
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n";
        let files = [("vs.yaml".to_owned(), text.to_owned())];
        let e = crate::config::flags::istio_runtime(&Default::default(), &files, &Metrics::new())
            .map(drop)
            .expect_err("no routes");
        assert_eq!(
            e.to_string(),
            "vs.yaml:5:3: document 1 (VirtualService web): spec.http: at least one route is needed"
        );
    }

    #[test]
    fn ports_past_65535_are_refused() {
        // Found by the config_istio fuzz check on a hand-written input (the fuzzer did not
        // reach it): `number: 70000` made an endpoint without a port, which hyper connects
        // to on port 80.
        let text = crate::fuzzing::ISTIO_CONFIG.replace("number: 8080", "number: 70000");
        let files = [("x.yaml".to_owned(), text)];
        let e = crate::config::flags::istio_runtime(&Default::default(), &files, &Metrics::new())
            .map(drop)
            .expect_err("port out of range");
        assert!(
            e.to_string()
                .contains("port 70000 is not between 0 and 65535"),
            "{e}"
        );
        assert!(endpoint_authority("10.0.0.1", 65535).is_ok());
    }

    #[test]
    fn host_expansion() {
        let d = domains("my-app", "default");
        for want in [
            "my-app",
            "my-app.default",
            "my-app.default.svc",
            "my-app.default.svc.cluster.local",
        ] {
            assert!(d.contains(&Domain::Exact(want.into())), "{want} in {d:?}");
        }
        assert_eq!(
            domains("*.example.com", "x"),
            vec![Domain::Suffix(".example.com".into())]
        );
        assert_eq!(fqdn("reviews", "prod"), "reviews.prod.svc.cluster.local");
        assert_eq!(fqdn("api.example.com", "prod"), "api.example.com");
    }
}
