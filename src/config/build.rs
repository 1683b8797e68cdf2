//! Validation: file types → [`Runtime`]. Every check reports the field's own location.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::{Method, Uri};
use serde_saphyr::Location;

use super::native::{
    DestinationFile, EndpointFile, FileConfig, MatchFile, MirrorFile, RouteFile, ServiceFile,
    ShadowFile, StringMatchFile, S,
};
use super::units::{parse_duration, parse_size};
use super::{ConfigError, Runtime};
use crate::mirror::{MirrorCounters, MirrorPolicy, Sampler, Shadow, ShadowSettings};
use crate::routing::{
    Endpoint, MatchBlock, Route, Service, StringMatch, Table, WeightedDestination,
};
use crate::telemetry::{Metrics, Sink};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

struct Ctx<'a> {
    source: &'a str,
}

impl Ctx<'_> {
    fn err(&self, loc: &Location, field: &str, msg: impl std::fmt::Display) -> ConfigError {
        ConfigError::at(self.source, loc, format!("{field}: {msg}"))
    }

    fn duration(&self, v: &S<String>, field: &str) -> Result<Duration, ConfigError> {
        parse_duration(&v.value).map_err(|m| self.err(&v.referenced, field, m))
    }

    fn addr(&self, v: &S<String>, field: &str) -> Result<SocketAddr, ConfigError> {
        v.value.trim().parse().map_err(|_| {
            self.err(
                &v.referenced,
                field,
                format!(
                    "`{}` is not an IP:port address (e.g. 127.0.0.1:8080)",
                    v.value
                ),
            )
        })
    }
}

pub fn build(f: FileConfig, source: &str, metrics: &Metrics) -> Result<Runtime, ConfigError> {
    let cx = Ctx { source };
    let mut listen = Vec::new();
    for (i, l) in f.listeners.iter().enumerate() {
        listen.push(cx.addr(l, &format!("listeners[{i}]"))?);
    }
    if listen.is_empty() {
        return Err(ConfigError::whole(
            source,
            "listeners: at least one listener is needed (or pass --listen)",
        ));
    }
    let admin = f.admin.as_ref().map(|a| cx.addr(a, "admin")).transpose()?;
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
    let connect_timeout = opt_dur(&t.connect, "timeouts.connect", DEFAULT_CONNECT_TIMEOUT)?;
    let request_timeout = opt_dur(&t.request, "timeouts.request", DEFAULT_REQUEST_TIMEOUT)?;
    let shutdown_timeout = opt_dur(&t.shutdown, "timeouts.shutdown", DEFAULT_SHUTDOWN_TIMEOUT)?;

    let shadow_defaults = shadow_settings(
        &cx,
        &f.mirror_defaults,
        ShadowSettings::default(),
        "mirror_defaults",
    )?;

    // Services.
    let mut services: Vec<Arc<Service>> = Vec::new();
    let mut shadow_cfg: HashMap<String, ShadowSettings> = HashMap::new();
    for (i, s) in f.services.value.iter().enumerate() {
        let field = format!("services[{i}]");
        if services.iter().any(|x| x.name == s.name.value) {
            return Err(cx.err(
                &s.name.referenced,
                &format!("{field}.name"),
                format!("service `{}` is defined twice", s.name.value),
            ));
        }
        services.push(Arc::new(service(&cx, s, &field, request_timeout)?));
        let settings = match &s.shadow {
            Some(sh) => {
                shadow_settings(&cx, sh, shadow_defaults.clone(), &format!("{field}.shadow"))?
            }
            None => shadow_defaults.clone(),
        };
        shadow_cfg.insert(s.name.value.clone(), settings);
    }
    if services.is_empty() {
        return Err(cx.err(
            &f.services.referenced,
            "services",
            "at least one service is needed",
        ));
    }

    // Routes.
    let mut shadows: HashMap<String, Arc<Shadow>> = HashMap::new();
    let mut routes = Vec::new();
    for (i, r) in f.routes.value.iter().enumerate() {
        let field = format!("routes[{i}]");
        if routes.iter().any(|x: &Route| *x.name == *r.name.value) {
            return Err(cx.err(
                &r.name.referenced,
                &format!("{field}.name"),
                format!("route `{}` is defined twice", r.name.value),
            ));
        }
        routes.push(route(
            &cx,
            r,
            &field,
            &services,
            &shadow_cfg,
            &mut shadows,
            metrics,
        )?);
    }
    if routes.is_empty() {
        return Err(cx.err(
            &f.routes.referenced,
            "routes",
            "at least one route is needed",
        ));
    }
    Ok(Runtime {
        listen,
        admin,
        access_log,
        connect_timeout,
        shutdown_timeout,
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        table: Table { services, routes },
    })
}

fn service(
    cx: &Ctx,
    s: &ServiceFile,
    field: &str,
    request_timeout: Duration,
) -> Result<Service, ConfigError> {
    if s.name.value.is_empty() || s.name.value.contains(char::is_whitespace) {
        return Err(cx.err(
            &s.name.referenced,
            &format!("{field}.name"),
            "a name without spaces is needed",
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
        endpoints.push(Endpoint {
            scheme,
            authority,
            labels,
        });
    }
    let timeout = match &s.request_timeout {
        Some(v) => cx.duration(v, &format!("{field}.request_timeout"))?,
        None => request_timeout,
    };
    Ok(Service::new(s.name.value.clone(), endpoints, timeout))
}

/// `host:port` or `http://host:port` (no path).
pub fn parse_endpoint(addr: &str) -> Result<(Scheme, Authority), String> {
    let with_scheme = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|_| format!("`{addr}` is not an address (host:port or http://host:port)"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(format!("`{addr}`: https upstreams are not supported yet")),
        _ => return Err(format!("`{addr}`: only http:// upstreams are supported")),
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("`{addr}`: an upstream address has no path"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{addr}` has no host"))?;
    if authority.port_u16().is_none() {
        return Err(format!("`{addr}` has no port"));
    }
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{addr}`: credentials in upstream addresses are not supported"
        ));
    }
    Ok((Scheme::HTTP, authority))
}

fn shadow_settings(
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
        s.host_suffix = (!v.value.is_empty()).then(|| v.value.clone());
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

fn string_match(cx: &Ctx, m: &S<StringMatchFile>, field: &str) -> Result<StringMatch, ConfigError> {
    match (&m.value.exact, &m.value.prefix) {
        (Some(e), None) => Ok(StringMatch::Exact(e.clone())),
        (None, Some(p)) => Ok(StringMatch::Prefix(p.clone())),
        (None, None) => Ok(StringMatch::Present),
        (Some(_), Some(_)) => Err(cx.err(
            &m.referenced,
            field,
            "give one of `exact` or `prefix`, not both",
        )),
    }
}

fn match_block(cx: &Ctx, m: &MatchFile, field: &str) -> Result<MatchBlock, ConfigError> {
    let uri = m
        .uri
        .as_ref()
        .map(|u| string_match(cx, u, &format!("{field}.uri")))
        .transpose()?;
    let method = m
        .method
        .as_ref()
        .map(|u| string_match(cx, u, &format!("{field}.method")))
        .transpose()?;
    let mut headers = Vec::new();
    for (k, v) in &m.headers {
        let f = format!("{field}.headers.{k}");
        if k.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(cx.err(&v.referenced, &f, "header names must be lowercase"));
        }
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| cx.err(&v.referenced, &f, format!("`{k}` is not a header name")))?;
        headers.push((name, string_match(cx, v, &f)?));
    }
    Ok(MatchBlock {
        uri,
        method,
        headers,
    })
}

fn find_service<'a>(
    cx: &Ctx,
    services: &'a [Arc<Service>],
    name: &S<String>,
    field: &str,
) -> Result<&'a Arc<Service>, ConfigError> {
    services
        .iter()
        .find(|s| s.name == name.value)
        .ok_or_else(|| {
            let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
            cx.err(
                &name.referenced,
                field,
                format!(
                    "unknown service `{}` (services: {})",
                    name.value,
                    known.join(", ")
                ),
            )
        })
}

fn route(
    cx: &Ctx,
    r: &RouteFile,
    field: &str,
    services: &[Arc<Service>],
    shadow_cfg: &HashMap<String, ShadowSettings>,
    shadows: &mut HashMap<String, Arc<Shadow>>,
    metrics: &Metrics,
) -> Result<Route, ConfigError> {
    let name: Arc<str> = r.name.value.as_str().into();
    let mut matches = Vec::new();
    for (i, m) in r.matches.iter().enumerate() {
        matches.push(match_block(cx, m, &format!("{field}.match[{i}]"))?);
    }
    let dests: &[DestinationFile] = &r.route.value;
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
        let service =
            find_service(cx, services, &d.destination, &format!("{f}.destination"))?.clone();
        let weight = d.weight.as_ref().map_or(1, |w| w.value);
        destinations.push(WeightedDestination { service, weight });
    }
    if destinations
        .iter()
        .map(|d| u64::from(d.weight))
        .sum::<u64>()
        == 0
    {
        return Err(cx.err(
            &r.route.referenced,
            &format!("{field}.route"),
            "the weights add up to 0",
        ));
    }
    if destinations
        .iter()
        .map(|d| u64::from(d.weight))
        .sum::<u64>()
        > u64::from(u32::MAX)
    {
        return Err(cx.err(
            &r.route.referenced,
            &format!("{field}.route"),
            "the weights add up to more than 2^32",
        ));
    }
    let mut mirrors = Vec::new();
    for (i, m) in r.mirrors.iter().enumerate() {
        mirrors.push(mirror(
            cx,
            m,
            &format!("{field}.mirrors[{i}]"),
            &name,
            services,
            shadow_cfg,
            shadows,
            metrics,
            &mirrors,
        )?);
    }
    Ok(Route::new(name, matches, destinations, mirrors, metrics))
}

#[allow(clippy::too_many_arguments)]
fn mirror(
    cx: &Ctx,
    m: &MirrorFile,
    field: &str,
    route: &Arc<str>,
    services: &[Arc<Service>],
    shadow_cfg: &HashMap<String, ShadowSettings>,
    shadows: &mut HashMap<String, Arc<Shadow>>,
    metrics: &Metrics,
    earlier: &[MirrorPolicy],
) -> Result<MirrorPolicy, ConfigError> {
    let service = find_service(
        cx,
        services,
        &m.destination,
        &format!("{field}.destination"),
    )?;
    if earlier
        .iter()
        .any(|p| p.shadow.service.name == service.name)
    {
        return Err(cx.err(
            &m.destination.referenced,
            &format!("{field}.destination"),
            format!("`{}` is already a mirror of this route", service.name),
        ));
    }
    let percent = match &m.percent {
        None => 100.0,
        Some(p) if p.value.is_finite() && (0.0..=100.0).contains(&p.value) => p.value,
        Some(p) => {
            return Err(cx.err(
                &p.referenced,
                &format!("{field}.percent"),
                format!("{} is not a percentage between 0 and 100", p.value),
            ))
        }
    };
    let shadow = shadows
        .entry(service.name.clone())
        .or_insert_with(|| {
            let settings = shadow_cfg.get(&service.name).cloned().unwrap_or_default();
            Arc::new(Shadow::new(service.clone(), settings, metrics))
        })
        .clone();
    let counters = Arc::new(MirrorCounters::new(metrics, route, &shadow.name));
    Ok(MirrorPolicy {
        shadow,
        sampler: Sampler::from_percent(percent),
        counters,
    })
}
