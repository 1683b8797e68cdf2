//! Validation: file types → [`Runtime`]. Every check reports the field's own location.
//! [`Builder`] is shared with the Istio importer: services (subsets are services of their
//! own), shadows (one per service used as a mirror), routes and their metrics.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::{Method, Uri};

use super::common::{self, Ctx, S};
use super::native::{
    EndpointFile, FileConfig, MirrorFile, RouteFile, ServiceFile, ShadowFile, TlsFile,
};
use super::units::{body_limit, head_bytes_limit, parse_size};
use super::{ConfigError, Runtime};
use crate::mirror::{MirrorCounters, MirrorPolicy, Sampler, Shadow, ShadowSettings};
use crate::routing::{
    Domain, Endpoint, EndpointSet, LbPolicy, MatchBlock, Route, RouteAction, Sampling, Service,
    Table, VirtualHost, WeightedDestination,
};
use crate::telemetry::{Metrics, Sink};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Client connections at once (nginx: worker_connections × workers; Envoy: overload manager).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Idle time within a request body (nginx client_body_timeout: 60 s).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a client may take no response bytes (nginx send_timeout: 60 s).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// From accept to the first complete request head, TLS handshake included (nginx
/// client_header_timeout: 60 s; Envoy request_headers_timeout: off).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Collects services, shadows and routes into a [`Table`].
pub struct Builder<'m> {
    metrics: &'m Metrics,
    pub services: Vec<Arc<Service>>,
    shadow_settings: HashMap<String, ShadowSettings>,
    shadows: HashMap<String, Arc<Shadow>>,
    pub warnings: Vec<String>,
}

/// A mirror before it is bound to its route's counters.
pub struct MirrorSpec {
    pub service: Arc<Service>,
    pub percent: f64,
}

impl<'m> Builder<'m> {
    pub fn new(metrics: &'m Metrics) -> Self {
        Builder {
            metrics,
            services: Vec::new(),
            shadow_settings: HashMap::new(),
            shadows: HashMap::new(),
            warnings: Vec::new(),
        }
    }

    pub fn find(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn add(&mut self, service: Service, shadow: ShadowSettings) -> Arc<Service> {
        let s = Arc::new(service);
        self.shadow_settings.insert(s.name.clone(), shadow);
        self.services.push(s.clone());
        s
    }

    fn shadow(&mut self, service: &Arc<Service>) -> Arc<Shadow> {
        let settings = self
            .shadow_settings
            .get(&service.name)
            .cloned()
            .unwrap_or_default();
        let metrics = self.metrics;
        self.shadows
            .entry(service.name.clone())
            .or_insert_with(|| Arc::new(Shadow::new(service.clone(), settings, metrics)))
            .clone()
    }

    pub fn route(
        &mut self,
        name: Arc<str>,
        matches: Vec<MatchBlock>,
        destinations: Vec<WeightedDestination>,
        mirrors: Vec<MirrorSpec>,
        action: RouteAction,
    ) -> Route {
        let mirrors = mirrors
            .into_iter()
            .map(|m| {
                let shadow = self.shadow(&m.service);
                MirrorPolicy {
                    counters: Arc::new(MirrorCounters::new(self.metrics, &name, &shadow.name)),
                    shadow,
                    sampler: Sampler::from_percent(m.percent),
                }
            })
            .collect();
        Route::new(name, matches, destinations, mirrors, action, self.metrics)
    }

    pub fn finish(self, virtual_hosts: Vec<VirtualHost>) -> Table {
        Table {
            services: self.services,
            virtual_hosts,
            shadows: Arc::new(std::sync::Mutex::new(self.shadows)),
            shadow_settings: self.shadow_settings,
        }
    }
}

fn addr(cx: &Ctx, v: &S<String>, field: &str) -> Result<SocketAddr, ConfigError> {
    v.value.trim().parse().map_err(|_| {
        cx.err(
            &v.referenced,
            field,
            format!(
                "`{}` is not an IP:port address (e.g. 127.0.0.1:8080)",
                v.value
            ),
        )
    })
}

/// Listener-level settings that both formats share.
pub struct Common {
    pub listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub access_log: Sink,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
}

fn common_settings(cx: &Ctx, f: &FileConfig) -> Result<Common, ConfigError> {
    let mut listen = Vec::new();
    for (i, l) in f.listeners.iter().enumerate() {
        listen.push(addr(cx, l, &format!("listeners[{i}]"))?);
    }
    if listen.is_empty() {
        return Err(ConfigError::whole(
            cx.source,
            "listeners: at least one listener is needed (or pass --listen)",
        ));
    }
    let admin = f.admin.as_ref().map(|a| addr(cx, a, "admin")).transpose()?;
    let access_log = match &f.access_log {
        None => Sink::Stdout,
        Some(v) => v
            .value
            .parse()
            .map_err(|m: String| cx.err(&v.referenced, "access_log", m))?,
    };
    let t = &f.timeouts;
    let opt_dur = |v: &Option<S<String>>, field: &str, default: Duration| {
        v.as_ref().map_or(Ok(default), |v| cx.duration(v, field))
    };
    Ok(Common {
        listen,
        admin,
        access_log,
        connect_timeout: opt_dur(&t.connect, "timeouts.connect", DEFAULT_CONNECT_TIMEOUT)?,
        request_timeout: opt_dur(&t.request, "timeouts.request", DEFAULT_REQUEST_TIMEOUT)?,
        shutdown_timeout: opt_dur(&t.shutdown, "timeouts.shutdown", DEFAULT_SHUTDOWN_TIMEOUT)?,
    })
}

pub fn runtime(c: Common, table: Table) -> Runtime {
    Runtime {
        listen: c.listen,
        admin: c.admin,
        access_log: c.access_log,
        connect_timeout: c.connect_timeout,
        shutdown_timeout: c.shutdown_timeout,
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        max_connections: DEFAULT_MAX_CONNECTIONS,
        body_timeout: DEFAULT_BODY_TIMEOUT,
        send_timeout: DEFAULT_SEND_TIMEOUT,
        header_timeout: DEFAULT_HEADER_TIMEOUT,
        max_body: None,
        head_limits: Default::default(),
        tls_listen: Vec::new(),
        tls: None,
        upstream_ca: None,
        compare: None,
        control: Default::default(),
        table,
    }
}

/// Validate a native config.
pub fn build(f: FileConfig, source: &str, metrics: &Metrics) -> Result<Runtime, ConfigError> {
    let (rt, _warnings) = build_with_warnings(f, source, metrics)?;
    Ok(rt)
}

pub fn build_with_warnings(
    f: FileConfig,
    source: &str,
    metrics: &Metrics,
) -> Result<(Runtime, Vec<String>), ConfigError> {
    let cx = Ctx {
        source,
        line_offset: 0,
        doc: None,
    };
    let common = common_settings(&cx, &f)?;
    let compare = f
        .compare
        .as_ref()
        .map(|c| compare_config(&cx, c))
        .transpose()?;
    let shadow_defaults = shadow_settings(
        &cx,
        &f.mirror_defaults,
        ShadowSettings::default(),
        "mirror_defaults",
    )?;
    let mut b = Builder::new(metrics);
    let mut files: HashMap<String, &ServiceFile> = HashMap::new();
    for (i, s) in f.services.value.iter().enumerate() {
        let field = format!("services[{i}]");
        if files.contains_key(&s.name.value) {
            return Err(cx.err(
                &s.name.referenced,
                &format!("{field}.name"),
                format!("service `{}` is defined twice", s.name.value),
            ));
        }
        let settings = match &s.shadow {
            Some(sh) => {
                shadow_settings(&cx, sh, shadow_defaults.clone(), &format!("{field}.shadow"))?
            }
            None => shadow_defaults.clone(),
        };
        let svc = service(&cx, s, &field, common.request_timeout)?;
        // Subsets become services of their own, `name/subset`.
        for (j, sub) in s.subsets.iter().enumerate() {
            let sf = format!("{field}.subsets[{j}]");
            let eps: Vec<Endpoint> = svc
                .endpoints
                .endpoints
                .iter()
                .filter(|e| sub.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                .cloned()
                .collect();
            if eps.is_empty() {
                return Err(cx.err(
                    &sub.name.referenced,
                    &sf,
                    format!(
                        "no endpoint of `{}` has the labels {:?}",
                        s.name.value, sub.labels
                    ),
                ));
            }
            let name = format!("{}/{}", s.name.value, sub.name.value);
            if b.find(&name).is_some() {
                return Err(cx.err(
                    &sub.name.referenced,
                    &format!("{sf}.name"),
                    format!("subset `{}` is defined twice", sub.name.value),
                ));
            }
            let set = EndpointSet::new(eps, svc.endpoints.lb, svc.endpoints.outlier.clone());
            b.add(
                Service::new(name, set, svc.request_timeout),
                settings.clone(),
            );
        }
        b.add(svc, settings);
        files.insert(s.name.value.clone(), s);
    }
    if b.services.is_empty() {
        return Err(cx.err(
            &f.services.referenced,
            "services",
            "at least one service is needed",
        ));
    }
    let mut routes: Vec<Route> = Vec::new();
    for (i, r) in f.routes.value.iter().enumerate() {
        let field = format!("routes[{i}]");
        if routes.iter().any(|x| *x.name == *r.name.value) {
            return Err(cx.err(
                &r.name.referenced,
                &format!("{field}.name"),
                format!("route `{}` is defined twice", r.name.value),
            ));
        }
        let route = native_route(&cx, r, &field, &mut b)?;
        routes.push(route);
    }
    if routes.is_empty() {
        return Err(cx.err(
            &f.routes.referenced,
            "routes",
            "at least one route is needed",
        ));
    }
    let domains = match &f.hosts {
        None => vec![Domain::Any],
        Some(hs) => hs.iter().map(|h| Domain::parse(&h.value)).collect(),
    };
    let warnings = std::mem::take(&mut b.warnings);
    let table = b.finish(vec![VirtualHost {
        name: "default".into(),
        domains,
        routes,
    }]);
    let mut rt = runtime(common, table);
    rt.compare = compare;
    if let Some(l) = &f.limits {
        if let Some(m) = &l.max_connections {
            if m.value == 0 {
                return Err(cx.err(
                    &m.referenced,
                    "limits.max_connections",
                    "must be at least 1",
                ));
            }
            rt.max_connections = m.value;
        }
        if let Some(m) = &l.max_header_bytes {
            rt.head_limits.max_bytes = head_bytes_limit(&m.value)
                .map_err(|e| cx.err(&m.referenced, "limits.max_header_bytes", e))?;
        }
        if let Some(m) = &l.max_body {
            rt.max_body =
                body_limit(&m.value).map_err(|e| cx.err(&m.referenced, "limits.max_body", e))?;
        }
        if let Some(m) = &l.max_headers {
            if m.value == 0 {
                return Err(cx.err(&m.referenced, "limits.max_headers", "must be at least 1"));
            }
            rt.head_limits.max_headers = m.value;
        }
    }
    if let Some(t) = &f.tls {
        tls_settings(&cx, t, &mut rt)?;
    }
    Ok((rt, warnings))
}

/// The `tls:` block: listeners with their certificate (checked now, so `check` finds a bad
/// file), and the CA bundle for `https://` upstreams.
fn tls_settings(cx: &Ctx, t: &TlsFile, rt: &mut Runtime) -> Result<(), ConfigError> {
    for (i, l) in t.listeners.iter().enumerate() {
        rt.tls_listen
            .push(addr(cx, l, &format!("tls.listeners[{i}]"))?);
    }
    rt.tls = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let files = crate::proxy::tls::TlsFiles {
                cert: cert.value.clone().into(),
                key: key.value.clone().into(),
            };
            if let Err(e) = crate::proxy::tls::ServerTls::load(&files) {
                let (loc, field) = match &e {
                    crate::proxy::tls::TlsError::File { path, .. } if *path == files.cert => {
                        (&cert.referenced, "tls.cert")
                    }
                    _ => (&key.referenced, "tls.key"),
                };
                return Err(cx.err(loc, field, e));
            }
            Some(files)
        }
        (Some(c), None) => return Err(cx.err(&c.referenced, "tls.key", "is needed with tls.cert")),
        (None, Some(k)) => return Err(cx.err(&k.referenced, "tls.cert", "is needed with tls.key")),
        (None, None) => None,
    };
    match (&rt.tls, t.listeners.first()) {
        (None, Some(l)) => {
            return Err(cx.err(&l.referenced, "tls.listeners", "need tls.cert and tls.key"))
        }
        (Some(_), None) => {
            if let Some(c) = &t.cert {
                return Err(cx.err(
                    &c.referenced,
                    "tls.cert",
                    "is for TLS listeners: give tls.listeners",
                ));
            }
        }
        _ => {}
    }
    if let Some(ca) = &t.upstream_ca {
        let path = std::path::PathBuf::from(&ca.value);
        crate::proxy::tls::client_config(Some(&path))
            .map_err(|e| cx.err(&ca.referenced, "tls.upstream_ca", e))?;
        rt.upstream_ca = Some(path);
    }
    Ok(())
}

pub fn check_store_url(url: &str) -> Result<(), String> {
    let ok = url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || url
            .strip_prefix("sqlite:")
            .is_some_and(|p| !p.trim_start_matches("//").is_empty())
        || [".db", ".sqlite", ".sqlite3"]
            .iter()
            .any(|e| url.ends_with(e));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{url}`: use sqlite:PATH (or a .db path) or postgres://…"
        ))
    }
}

fn compare_config(
    cx: &Ctx,
    c: &super::native::CompareFile,
) -> Result<crate::compare::CompareConfig, ConfigError> {
    check_store_url(&c.store.value).map_err(|m| cx.err(&c.store.referenced, "compare.store", m))?;
    let mut cfg = crate::compare::CompareConfig::new(c.store.value.clone());
    if let Some(v) = &c.capture_body {
        cfg.capture_bytes = parse_size(&v.value)
            .map_err(|m| cx.err(&v.referenced, "compare.capture_body", m))?
            as usize;
    }
    cfg.rules.ignore_headers = c
        .ignore_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for (i, f) in c.ignore_fields.iter().enumerate() {
        cfg.rules
            .ignore_fields
            .push(f.value.parse().map_err(|m: String| {
                cx.err(&f.referenced, &format!("compare.ignore_fields[{i}]"), m)
            })?);
    }
    if let Some(r) = &c.retention {
        if let Some(a) = &r.max_age {
            cfg.retention.max_age = cx.duration(a, "compare.retention.max_age")?;
        }
        if let Some(n) = &r.max_rows {
            cfg.retention.max_rows = n.value;
        }
    }
    if let Some(t) = &c.pair_timeout {
        cfg.pair_timeout = cx.duration(t, "compare.pair_timeout")?;
    }
    Ok(cfg)
}

/// A service reference (`service` or `service` + `subset`) to the built service.
fn resolve(
    cx: &Ctx,
    b: &Builder,
    name: &S<String>,
    subset: Option<&S<String>>,
    field: &str,
) -> Result<Arc<Service>, ConfigError> {
    let Some(base) = b.find(&name.value) else {
        let known: Vec<&str> = b
            .services
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| !n.contains('/'))
            .collect();
        return Err(cx.err(
            &name.referenced,
            &format!("{field}.destination"),
            format!(
                "unknown service `{}` (services: {})",
                name.value,
                known.join(", ")
            ),
        ));
    };
    match subset {
        None => Ok(base.clone()),
        Some(sub) => b
            .find(&format!("{}/{}", name.value, sub.value))
            .cloned()
            .ok_or_else(|| {
                cx.err(
                    &sub.referenced,
                    &format!("{field}.subset"),
                    format!("service `{}` has no subset `{}`", name.value, sub.value),
                )
            }),
    }
}

fn native_route(
    cx: &Ctx,
    r: &RouteFile,
    field: &str,
    b: &mut Builder,
) -> Result<Route, ConfigError> {
    let name: Arc<str> = r.name.value.as_str().into();
    let mut matches = Vec::new();
    for (i, m) in r.matches.iter().enumerate() {
        matches.push(common::match_block(
            cx,
            m,
            &format!("{field}.match[{i}]"),
            &mut b.warnings,
        )?);
    }
    let dests = &r.route.value;
    if dests.is_empty() {
        return Err(cx.err(
            &r.route.referenced,
            &format!("{field}.route"),
            "at least one destination is needed",
        ));
    }
    let weighted = dests.iter().filter(|d| d.weight.is_some()).count();
    if weighted != 0 && weighted != dests.len() {
        return Err(cx.err(
            &r.route.referenced,
            &format!("{field}.route"),
            "give every destination a weight, or none",
        ));
    }
    let mut destinations = Vec::new();
    for (i, d) in dests.iter().enumerate() {
        let f = format!("{field}.route[{i}]");
        let service = resolve(cx, b, &d.destination, d.subset.as_ref(), &f)?;
        destinations.push(WeightedDestination {
            service,
            weight: d.weight.as_ref().map_or(1, |w| w.value),
        });
    }
    check_weights(
        cx,
        &destinations,
        &r.route.referenced,
        &format!("{field}.route"),
    )?;
    let mut mirrors: Vec<MirrorSpec> = Vec::new();
    for (i, m) in r.mirrors.iter().enumerate() {
        let f = format!("{field}.mirrors[{i}]");
        mirrors.push(native_mirror(cx, m, &f, b, &mirrors)?);
    }
    let (request_headers, response_headers) =
        common::headers(cx, &r.headers, &format!("{field}.headers"))?;
    let action = RouteAction {
        request_headers,
        response_headers,
        rewrite: common::rewrite(cx, &r.rewrite, &format!("{field}.rewrite"))?,
        timeout: r
            .timeout
            .as_ref()
            .map(|t| cx.duration(t, &format!("{field}.timeout")))
            .transpose()?,
        retries: common::retries(cx, &r.retries, &format!("{field}.retries"))?,
        sampling: match &r.mirror_sampling {
            None => Sampling::Random,
            Some(v) => sampling(&v.value)
                .map_err(|m| cx.err(&v.referenced, &format!("{field}.mirror_sampling"), m))?,
        },
    };
    Ok(b.route(name, matches, destinations, mirrors, action))
}

pub fn check_weights(
    cx: &Ctx,
    d: &[WeightedDestination],
    loc: &serde_saphyr::Location,
    field: &str,
) -> Result<(), ConfigError> {
    let sum: u64 = d.iter().map(|d| u64::from(d.weight)).sum();
    if sum == 0 {
        return Err(cx.err(loc, field, "the weights add up to 0"));
    }
    if sum > u64::from(u32::MAX) {
        return Err(cx.err(loc, field, "the weights add up to more than 2^32"));
    }
    Ok(())
}

pub fn sampling(s: &str) -> Result<Sampling, String> {
    match s {
        "random" => Ok(Sampling::Random),
        "request_id" | "request-id" => Ok(Sampling::RequestId),
        _ => match s.strip_prefix("header:") {
            Some(h) => HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                .map(Sampling::Header)
                .map_err(|_| format!("`{h}` is not a header name")),
            None => Err(format!("`{s}`: use random, request_id, or header:NAME")),
        },
    }
}

pub fn check_percent(cx: &Ctx, v: &S<f64>, field: &str) -> Result<f64, ConfigError> {
    if v.value.is_finite() && (0.0..=100.0).contains(&v.value) {
        Ok(v.value)
    } else {
        Err(cx.err(
            &v.referenced,
            field,
            format!("{} is not a percentage between 0 and 100", v.value),
        ))
    }
}

fn native_mirror(
    cx: &Ctx,
    m: &MirrorFile,
    field: &str,
    b: &Builder,
    earlier: &[MirrorSpec],
) -> Result<MirrorSpec, ConfigError> {
    let service = resolve(cx, b, &m.destination, m.subset.as_ref(), field)?;
    if earlier.iter().any(|p| p.service.name == service.name) {
        return Err(cx.err(
            &m.destination.referenced,
            &format!("{field}.destination"),
            format!("`{}` is already a mirror of this route", service.name),
        ));
    }
    let percent = match (&m.percent, &m.percentage) {
        (Some(_), Some(p)) => {
            return Err(cx.err(
                &p.value.referenced,
                &format!("{field}.percentage"),
                "give `percent` or `percentage`, not both",
            ))
        }
        (Some(p), None) => check_percent(cx, p, &format!("{field}.percent"))?,
        (None, Some(p)) => check_percent(cx, &p.value, &format!("{field}.percentage.value"))?,
        (None, None) => 100.0,
    };
    Ok(MirrorSpec { service, percent })
}

fn service(
    cx: &Ctx,
    s: &ServiceFile,
    field: &str,
    request_timeout: Duration,
) -> Result<Service, ConfigError> {
    if s.name.value.is_empty()
        || s.name.value.contains(char::is_whitespace)
        || s.name.value.contains('/')
    {
        return Err(cx.err(
            &s.name.referenced,
            &format!("{field}.name"),
            "a name without spaces or `/` is needed",
        ));
    }
    if s.endpoints.value.is_empty() {
        return Err(cx.err(
            &s.endpoints.referenced,
            &format!("{field}.endpoints"),
            "at least one endpoint is needed",
        ));
    }
    let mut endpoints = Vec::new();
    for (j, e) in s.endpoints.value.iter().enumerate() {
        let (addr, labels) = match &e.value {
            EndpointFile::Address(a) => (a.as_str(), BTreeMap::new()),
            EndpointFile::Full { address, labels } => (address.as_str(), labels.clone()),
        };
        let (scheme, authority) = parse_endpoint(addr)
            .map_err(|m| cx.err(&e.referenced, &format!("{field}.endpoints[{j}]"), m))?;
        endpoints.push(Endpoint::new(scheme, authority, labels));
    }
    let timeout = match &s.request_timeout {
        Some(v) => cx.duration(v, &format!("{field}.request_timeout"))?,
        None => request_timeout,
    };
    let lb = match &s.load_balancer {
        Some(v) => common::lb_policy(cx, v, &format!("{field}.load_balancer"))?,
        None => LbPolicy::RoundRobin,
    };
    let outlier = s
        .outlier_detection
        .as_ref()
        .map(|o| common::outlier(cx, o, &format!("{field}.outlier_detection")))
        .transpose()?;
    Ok(Service::new(
        s.name.value.clone(),
        EndpointSet::new(endpoints, lb, outlier),
        timeout,
    ))
}

/// `host:port`, `http://host[:port]` or `https://host[:port]` (no path; default ports 80/443).
pub fn parse_endpoint(addr: &str) -> Result<(Scheme, Authority), String> {
    let with_scheme = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|_| format!("`{addr}` is not an address (host:port or http://host:port)"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::HTTP,
        Some("https") => Scheme::HTTPS,
        _ => {
            return Err(format!(
                "`{addr}`: only http:// and https:// upstreams are supported"
            ))
        }
    };
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("`{addr}`: an upstream address has no path"));
    }
    let mut authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{addr}` has no host"))?;
    if authority.port_u16().is_none() {
        if !addr.contains("://") {
            return Err(format!("`{addr}` has no port"));
        }
        let port = crate::routing::default_port(&scheme);
        authority = format!("{}:{port}", authority.as_str())
            .parse()
            .map_err(|_| format!("`{addr}` is not an address"))?;
    }
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{addr}`: credentials in upstream addresses are not supported"
        ));
    }
    Ok((scheme, authority))
}

pub fn shadow_settings(
    cx: &Ctx,
    f: &ShadowFile,
    mut s: ShadowSettings,
    field: &str,
) -> Result<ShadowSettings, ConfigError> {
    if let Some(v) = &f.max_in_flight {
        if v.value == 0 {
            return Err(cx.err(
                &v.referenced,
                &format!("{field}.max_in_flight"),
                "must be at least 1",
            ));
        }
        s.max_in_flight = v.value;
    }
    if let Some(v) = &f.timeout {
        s.timeout = cx.duration(v, &format!("{field}.timeout"))?;
        if s.timeout.is_zero() {
            return Err(cx.err(
                &v.referenced,
                &format!("{field}.timeout"),
                "must be above zero",
            ));
        }
    }
    if let Some(v) = &f.max_body {
        s.max_body_bytes = parse_size(&v.value)
            .map_err(|m| cx.err(&v.referenced, &format!("{field}.max_body"), m))?;
    }
    if let Some(v) = &f.max_buffered {
        s.max_buffered_bytes = parse_size(&v.value)
            .map_err(|m| cx.err(&v.referenced, &format!("{field}.max_buffered"), m))?;
    }
    if let Some(ms) = &f.methods {
        let mut methods = Vec::new();
        for (i, m) in ms.iter().enumerate() {
            let up = m.value.to_ascii_uppercase();
            let method = Method::from_bytes(up.as_bytes()).map_err(|_| {
                cx.err(
                    &m.referenced,
                    &format!("{field}.methods[{i}]"),
                    format!("`{}` is not a method", m.value),
                )
            })?;
            methods.push(method);
        }
        s.methods = Some(methods);
    }
    if let Some(v) = &f.host_suffix {
        if v.value
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        {
            return Err(cx.err(
                &v.referenced,
                &format!("{field}.host_suffix"),
                "only letters, digits, `-` and `.` are allowed",
            ));
        }
        s.host_suffix = (!v.value.is_empty()).then(|| v.value.clone());
    }
    if let Some(b) = &f.breaker {
        if let Some(v) = &b.consecutive_failures {
            if v.value == 0 {
                return Err(cx.err(
                    &v.referenced,
                    &format!("{field}.breaker.consecutive_failures"),
                    "must be at least 1",
                ));
            }
            s.breaker_failures = v.value;
        }
        if let Some(v) = &b.cooldown {
            s.breaker_cooldown = cx.duration(v, &format!("{field}.breaker.cooldown"))?;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_http_and_https_with_default_ports() {
        let ok = |a: &str| {
            let (s, auth) = parse_endpoint(a).expect(a);
            format!("{s}://{auth}")
        };
        assert_eq!(ok("127.0.0.1:9001"), "http://127.0.0.1:9001");
        assert_eq!(ok("http://v1.local"), "http://v1.local:80");
        assert_eq!(ok("https://v1.local"), "https://v1.local:443");
        assert_eq!(ok("https://localhost:8443"), "https://localhost:8443");
        for bad in ["v1.local", "ftp://a:1", "http://a:1/path", "http://u:p@a:1"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_block() {
        let metrics = Metrics::new();
        let load = |limits: &str| {
            crate::config::load_str(
                &format!("listeners: [127.0.0.1:0]\nservices: [{{name: v1, endpoints: ['127.0.0.1:9']}}]\nroutes: [{{name: d, route: [{{destination: v1}}]}}]\nlimits:\n{limits}"),
                "m.yaml",
                &metrics,
            )
        };
        let rt = load(
            "  max_body: 10MiB\n  max_header_bytes: 2KiB\n  max_headers: 7\n  max_connections: 9\n",
        )
        .expect("valid");
        assert_eq!(rt.max_body, Some(10 << 20));
        assert_eq!(
            (rt.head_limits.max_bytes, rt.head_limits.max_headers),
            (2048, 7)
        );
        assert_eq!(rt.max_connections, 9);
        assert_eq!(
            load("  max_body: 0\n").expect("valid").max_body,
            None,
            "0 = no limit"
        );
        let e = load("  max_body: lots\n")
            .expect_err("bad size")
            .to_string();
        assert!(e.starts_with("m.yaml:5:13: limits.max_body: "), "{e}");
    }
}
