//! The checks behind the cargo-fuzz targets in `fuzz/`, kept here so the ordinary test suite
//! replays the fuzz seeds through them too (`tests/fuzz_seeds.rs`).
//!
//! Each function takes raw bytes. Input that mirrorctl would never see (not UTF-8, a request
//! its server refuses, a config that does not validate) ends the check early; a panic means
//! mirrorctl broke one of its own promises, which is what the fuzzer reports:
//!
//! - [`config_native`], [`config_istio`]: loading never panics; an error names the file and a
//!   line inside it; an accepted config is a table the proxy can serve (every route has
//!   destinations, every service endpoints with a port, route and service names are unique,
//!   routing a request picks the first matching route of the right virtual host).
//! - [`route_match`]: a request against two fixed tables (native and Istio) picks the first
//!   matching route of the virtual host an independent re-implementation of Envoy's host
//!   precedence picks; weighted picks, endpoint picks, rewrites and mirror admission hold up.
//! - [`upstream_headers`]: a client head as the proxy's server builds it (HTTP/1.x: its own
//!   parse; HTTP/2: the h2 crate's rules), through the primary path's header pipeline
//!   (`check_request`, `identify` (hop-by-hop, request id, `x-forwarded-*`), the route's
//!   header ops and rewrite, `Host`) and the mirror copies, written as HTTP/1.1 by the
//!   proxy's codec, parse back with `httparse` to the same method, path and headers; hop-by-hop headers are gone and the request id, `x-forwarded-for` and `Host`
//!   are there once each.
//!
//! Input formats (lines separated by `\n`, so seeds are readable text):
//!
//! - `route_match`: `METHOD`, `AUTHORITY` (empty: none), `REQUEST-TARGET`, then `name: value`.
//! - `upstream_headers`: `VERSION` (`1.0`, `1.1` or `2`), `METHOD`, `REQUEST-TARGET`, then
//!   `name: value` (HTTP/2: `:authority: host` gives the authority). After an empty line,
//!   optional route lines make a table of their own through the config loader:
//!   `set NAME VALUE`, `add NAME VALUE`, `remove NAME`, `rewrite-uri PATH`,
//!   `rewrite-authority HOST`, `prefix PATH`, `ignore-case`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Uri, Version};

use crate::config::{self, ConfigError};
use crate::mirror::MIRROR_HEADER;
use crate::proxy::headers;
use crate::routing::{
    sample_hash, strip_port, Domain, MatchBlock, RequestView, Route, Table, VirtualHost,
};
use crate::telemetry::Metrics;

const SOURCE: &str = "fuzz.yaml";

/// Headers that must never reach an upstream (RFC 9110 §7.6.1 and the README's list).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A representative native config (also a fuzz seed): hosts, subsets, every match kind,
/// weights, mirrors with each sampling mode, header changes and rewrites.
pub const NATIVE_CONFIG: &str = include_str!("../fuzz/seeds/config_native/representative.yaml");

/// A representative Istio config (also a fuzz seed): three virtual services (exact, wildcard and catch-all
/// hosts), subsets from a DestinationRule, STATIC and DNS ServiceEntries.
pub const ISTIO_CONFIG: &str = include_str!("../fuzz/seeds/config_istio/representative.yaml");

fn fixed_tables() -> &'static [Table; 2] {
    static TABLES: OnceLock<[Table; 2]> = OnceLock::new();
    TABLES.get_or_init(|| {
        let metrics = Metrics::new();
        let native = match config::load_str(NATIVE_CONFIG, "native", &metrics) {
            Ok(rt) => rt.table,
            Err(e) => panic!("the representative native config is refused: {e}"),
        };
        let files = [("istio".to_owned(), ISTIO_CONFIG.to_owned())];
        let istio = match config::flags::istio_runtime(&Default::default(), &files, &metrics) {
            Ok((rt, _)) => rt.table,
            Err(e) => panic!("the representative Istio config is refused: {e}"),
        };
        [native, istio]
    })
}

// ---------------------------------------------------------------------------------------------
// Config loading.

/// Native YAML text → parse + validation → routing table.
pub fn config_native(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let metrics = Metrics::new();
    match config::load_str(text, SOURCE, &metrics) {
        Ok(rt) => check_table(&rt.table),
        Err(e) => check_error(&e, text),
    }
}

/// Istio multi-document YAML → importer → routing table, as `serve --config` does it.
pub fn config_istio(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let metrics = Metrics::new();
    let files = [(SOURCE.to_owned(), text.to_owned())];
    match config::flags::istio_runtime(&Default::default(), &files, &metrics) {
        Ok((rt, warnings)) => {
            for w in &warnings {
                assert!(
                    w.starts_with(&format!("warning: {SOURCE}")),
                    "a warning that does not name the file: {w}"
                );
            }
            check_table(&rt.table);
        }
        Err(e) => check_error(&e, text),
    }
}

/// An error names the file and, when it has a place, a line that exists.
fn check_error(e: &ConfigError, text: &str) {
    assert_eq!(e.file, SOURCE, "an error about another file: {e}");
    assert!(!e.message.is_empty(), "an error without a message: {e:?}");
    match e.line {
        Some(line) => {
            // YAML breaks lines at LF, CR LF and a lone CR; count every CR and LF to stay loose.
            let lines = 1 + text.bytes().filter(|b| matches!(b, b'\n' | b'\r')).count() as u64;
            assert!(
                (1..=lines).contains(&line),
                "line {line} of a {lines}-line text: {e}"
            );
            assert!(
                e.column.is_some_and(|c| c >= 1),
                "a line without column: {e}"
            );
        }
        None => assert!(e.column.is_none(), "a column without line: {e:?}"),
    }
}

/// What the proxy relies on in every table it serves.
fn check_table(t: &Table) {
    let mut services = HashSet::new();
    for s in &t.services {
        assert!(
            services.insert(s.name.as_str()),
            "service `{}` twice",
            s.name
        );
        assert!(
            !s.endpoints.endpoints.is_empty(),
            "service `{}` has no endpoints",
            s.name
        );
        for e in &s.endpoints.endpoints {
            assert!(
                e.authority.port_u16().is_some(),
                "service `{}`: endpoint `{}` has no usable port (hyper would connect to 80)",
                s.name,
                e.authority
            );
        }
        assert!(s.pick_endpoint().is_some(), "service `{}`: no pick", s.name);
    }
    let mut routes = HashSet::new();
    let mut any = false;
    for r in t.routes() {
        any = true;
        assert!(routes.insert(r.name.clone()), "route `{}` twice", r.name);
        check_route_targets(t, r);
    }
    assert!(any, "a table without routes");
    for vh in &t.virtual_hosts {
        assert!(
            !vh.routes.is_empty(),
            "virtual host `{}` has no routes: its hosts would only ever get 404",
            vh.name
        );
    }
    // Route a few requests to every domain: first match wins, nothing panics.
    for vh in &t.virtual_hosts {
        for d in &vh.domains {
            let host = match d {
                Domain::Exact(e) => e.clone(),
                Domain::Suffix(s) => format!("x{s}"),
                Domain::Any => "anything".to_owned(),
            };
            for (method, target) in [("GET", "/"), ("POST", "/api/v1/users?debug=1&x=%20")] {
                let Ok(req) = Request::builder()
                    .method(method)
                    .uri(target)
                    .header("host", host.as_str())
                    .header("x-rollout", "shadow")
                    .body(())
                else {
                    continue;
                };
                let (parts, ()) = req.into_parts();
                let view = RequestView {
                    parts: &parts,
                    authority: Some(&host),
                    scheme: "http",
                };
                if let Some((route, matched)) = check_select(t, &view) {
                    check_route_use(route, matched, &parts, Some(host.as_str()), host.as_bytes());
                }
            }
        }
    }
}

fn check_route_targets(t: &Table, r: &Route) {
    assert!(
        !r.destinations.is_empty(),
        "route `{}` has no destination",
        r.name
    );
    let total: u64 = r.destinations.iter().map(|d| u64::from(d.weight)).sum();
    assert!(
        (1..=u64::from(u32::MAX)).contains(&total),
        "route `{}`: weights add up to {total}",
        r.name
    );
    for d in &r.destinations {
        assert!(
            t.service(&d.service.name)
                .is_some_and(|s| Arc::ptr_eq(s, &d.service)),
            "route `{}`: destination `{}` is not the table's service",
            r.name,
            d.service.name
        );
    }
    for m in &r.mirrors {
        let p = m.sampler.percent();
        assert!(
            (0.0..=100.0).contains(&p),
            "route `{}`: mirror at {p} %",
            r.name
        );
        assert!(
            t.service(&m.shadow.service.name).is_some(),
            "route `{}`: mirror `{}` is not a service of the table",
            r.name,
            m.shadow.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Route matching.

/// A request (method, authority, target, headers) against the fixed tables.
pub fn route_match(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let (Some(method), Some(authority), Some(target)) = (lines.next(), lines.next(), lines.next())
    else {
        return;
    };
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let mut b = Request::builder().method(method).uri(uri);
    for line in lines {
        if let Some((name, value)) = split_field(line) {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_bytes(trim_ows(value)),
            ) {
                b = b.header(n, v);
            }
        }
    }
    let Ok(req) = b.body(()) else {
        return;
    };
    let (parts, ()) = req.into_parts();
    // The proxy matches on the Host value as text (`HeaderValue::to_str`).
    let host = HeaderValue::from_bytes(authority).ok();
    let authority = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .filter(|a| !a.is_empty());
    for t in fixed_tables() {
        let view = RequestView {
            parts: &parts,
            authority,
            scheme: "http",
        };
        if let Some((route, matched)) = check_select(t, &view) {
            check_route_use(route, matched, &parts, authority, data);
        }
    }
}

/// `Table::select` against first-match-wins over the virtual host that Envoy's precedence
/// (exact, then the longest `*.suffix`, then `*`) picks, computed here independently.
fn check_select<'t>(
    t: &'t Table,
    view: &RequestView<'_>,
) -> Option<(&'t Route, Option<&'t MatchBlock>)> {
    let chosen = t.virtual_host(view.authority);
    let expected = expected_virtual_host(t, view.authority);
    assert!(
        match (chosen, expected) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        },
        "host {:?}: virtual host {:?}, expected {:?}",
        view.authority,
        chosen.map(|v| &v.name),
        expected.map(|v| &v.name)
    );
    let selected = t.select(view);
    let first = chosen.and_then(|vh| vh.routes.iter().find(|r| r.matching(view).is_some()));
    match (selected, first) {
        (None, None) => None,
        (Some((route, matched)), Some(first)) => {
            assert!(
                std::ptr::eq(route, first),
                "selected `{}`, but `{}` comes first and matches",
                route.name,
                first.name
            );
            match matched {
                Some(m) => {
                    assert!(
                        m.matches(view),
                        "route `{}`: the block does not match",
                        route.name
                    );
                    assert!(
                        route.matches.iter().any(|x| std::ptr::eq(x, m)),
                        "route `{}`: the block is another route's",
                        route.name
                    );
                }
                None => assert!(
                    route.matches.is_empty(),
                    "route `{}` matched without a block",
                    route.name
                ),
            }
            selected
        }
        (s, f) => panic!(
            "select chose {:?}, the first matching route is {:?}",
            s.map(|(r, _)| &r.name),
            f.map(|r| &r.name)
        ),
    }
}

fn expected_virtual_host<'t>(t: &'t Table, authority: Option<&str>) -> Option<&'t VirtualHost> {
    if let [vh] = t.virtual_hosts.as_slice() {
        if vh.domains == [Domain::Any] {
            return Some(vh);
        }
    }
    let host = authority.map(strip_port).unwrap_or("").to_ascii_lowercase();
    let rank = |d: &Domain| match d {
        Domain::Exact(e) if *e == host => Some(usize::MAX),
        Domain::Suffix(s) if host.len() > s.len() && host.ends_with(s.as_str()) => {
            Some(s.len() + 1)
        }
        Domain::Any => Some(0),
        _ => None,
    };
    let best = t
        .virtual_hosts
        .iter()
        .filter_map(|vh| vh.domains.iter().filter_map(rank).max())
        .max()?;
    t.virtual_hosts
        .iter()
        .find(|vh| vh.domains.iter().filter_map(rank).max() == Some(best))
}

/// What the proxy does with a selected route: weighted pick, endpoint, rewrite, mirrors.
fn check_route_use(
    route: &Route,
    matched: Option<&MatchBlock>,
    parts: &Parts,
    authority: Option<&str>,
    seed: &[u8],
) {
    let total: u32 = route.destinations.iter().map(|d| d.weight).sum();
    assert!(
        route.pick_destination().is_some(),
        "route `{}`: no pick",
        route.name
    );
    let ticket = sample_hash(seed) % total.max(1);
    let picked = route.pick_weighted(ticket);
    let mut start = 0u32;
    let expected = route.destinations.iter().find(|d| {
        let hit = ticket >= start && ticket - start < d.weight;
        start += d.weight;
        hit
    });
    assert!(
        match (picked, expected) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            _ => false,
        },
        "route `{}`: ticket {ticket} of {total} picked {:?}",
        route.name,
        picked.map(|d| &d.service.name)
    );
    for d in &route.destinations {
        assert!(d.service.pick_endpoint().is_some());
    }
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if let Some(rw) = &route.action.rewrite {
        let rewritten = rw.path(&pq, matched.and_then(|m| m.uri.as_ref()));
        assert!(
            rw.uri.is_none() || rewritten.is_some(),
            "route `{}`: rewrite.uri {:?} cannot rewrite `{pq}`",
            route.name,
            rw.uri
        );
        if let Some(p) = rewritten {
            assert!(
                p.path().starts_with('/'),
                "route `{}`: `{pq}` rewritten to `{p}`",
                route.name
            );
            assert_eq!(
                p.query(),
                pq.query(),
                "route `{}`: the rewrite of `{pq}` lost its query",
                route.name
            );
        }
    }
    let host = authority.and_then(|a| HeaderValue::from_str(a).ok());
    for m in &route.mirrors {
        // A ticket taken is given back when dropped.
        drop(m.admit(&parts.method, None, Some(sample_hash(seed))));
        if let Some(h) = &host {
            let shadow_host = m.shadow.shadow_host(h);
            let (Ok(before), Ok(after)) = (h.to_str(), shadow_host.to_str()) else {
                continue;
            };
            let port = |s: &str| s.len() - strip_port(s).len();
            let before_port = &before[before.len() - port(before)..];
            assert!(
                after.ends_with(before_port),
                "shadow host `{after}` lost the port of `{before}`"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream request heads.

/// A client request head through the primary path's header pipeline, then on the wire.
/// An upstream's answer read by the proxy's HTTP/1.1 codec (`proxy::h1`): input is a split
/// selector byte, a flags byte (bit 0: the request was HEAD), then the bytes the upstream sent.
/// Checked: no panic; the same head, body and error-ness whether the bytes come whole or in two
/// pieces; never more body than input.
pub fn upstream_response(data: &[u8]) {
    crate::proxy::h1::fuzz_response(data);
}

/// What a client sends on one connection, served by the proxy's HTTP/1.1 server
/// (`proxy::h1::server::serve_connection`) over an in-memory stream: input is a split selector
/// byte, then the client's bytes. Checked: no panic; the connection ends after the client's
/// last byte; the same requests (method, target, version, fields, body bytes or how the body
/// failed, refusal) whether the bytes arrive whole or in two pieces split anywhere.
pub fn client_stream(data: &[u8]) {
    crate::proxy::h1::server::fuzz_client(data);
}

pub fn upstream_headers(data: &[u8]) {
    let (head, ops) = match find(data, b"\n\n") {
        Some(i) => (&data[..i], Some(&data[i + 2..])),
        None => (data, None),
    };
    let Some(client) = ClientHead::parse(head) else {
        return;
    };
    let peer = if data.len() % 2 == 0 {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7))
    };
    match ops.filter(|o| !o.iter().all(u8::is_ascii_whitespace)) {
        Some(ops) => {
            let Some(text) = ops_config(ops) else {
                return;
            };
            let metrics = Metrics::new();
            // A route the config loader refuses never serves a request.
            if let Ok(rt) = config::load_str(&text, SOURCE, &metrics) {
                forward_and_check(&rt.table, &client, peer);
            }
        }
        None => {
            for t in fixed_tables() {
                forward_and_check(t, &client, peer);
            }
        }
    }
}

/// A request head as the proxy's server (HTTP/1.x: ours; HTTP/2: hyper's) hands it over.
struct ClientHead {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl ClientHead {
    fn parse(head: &[u8]) -> Option<ClientHead> {
        let mut lines = head.split(|b| *b == b'\n');
        let version = match lines.next()? {
            b"1.0" => Version::HTTP_10,
            b"2" => Version::HTTP_2,
            _ => Version::HTTP_11,
        };
        let method = lines.next()?;
        let target = lines.next()?;
        let fields: Vec<(&[u8], &[u8])> = lines.filter_map(split_field).collect();
        if version == Version::HTTP_2 {
            Self::h2(method, target, &fields)
        } else {
            Self::h1(version, method, target, &fields)
        }
    }

    /// HTTP/1.x: the head as bytes, through the proxy's own server-side parse and checks.
    fn h1(
        version: Version,
        method: &[u8],
        target: &[u8],
        fields: &[(&[u8], &[u8])],
    ) -> Option<ClientHead> {
        let mut wire = Vec::new();
        wire.extend_from_slice(method);
        wire.push(b' ');
        wire.extend_from_slice(target);
        wire.extend_from_slice(if version == Version::HTTP_10 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        for (n, v) in fields {
            wire.extend_from_slice(n);
            wire.push(b':');
            wire.extend_from_slice(v);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        // What the proxy's HTTP/1.1 server does with it: the guard's parse and checks, then
        // the request built from that parse.
        let mut fields = Vec::new();
        let head = match crate::proxy::guard::parse_request(
            &wire,
            crate::proxy::guard::HeadLimits::default(),
            &mut fields,
        ) {
            Ok(Some(h)) if h.len == wire.len() => h,
            _ => return None,
        };
        let mut buf = bytes::BytesMut::from(&wire[..]);
        let req = crate::proxy::h1::server::build_request(&mut buf, &head, &fields).ok()?;
        let (parts, _) = req.into_parts();
        Some(ClientHead {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
        })
    }

    /// HTTP/2: pseudo-headers and fields as the h2 crate accepts them (lowercase names, no
    /// connection-specific fields, `te: trailers` only; values are not trimmed).
    fn h2(method: &[u8], path: &[u8], fields: &[(&[u8], &[u8])]) -> Option<ClientHead> {
        let method = Method::from_bytes(method).ok()?;
        let mut authority = None;
        let mut headers = HeaderMap::new();
        for &(n, v) in fields {
            // One space after the colon is the separator; anything more is the value's.
            let v: &[u8] = v.strip_prefix(b" ").unwrap_or(v);
            if n == b":authority" {
                authority = Some(v);
                continue;
            }
            if n.iter().any(u8::is_ascii_uppercase) {
                return None;
            }
            let name = HeaderName::from_bytes(n).ok()?;
            let value = HeaderValue::from_bytes(v).ok()?;
            let connection_specific = [
                header::CONNECTION,
                header::TRANSFER_ENCODING,
                header::UPGRADE,
            ]
            .contains(&name)
                || name == "keep-alive"
                || name == "proxy-connection"
                || (name == header::TE && value != "trailers");
            if connection_specific {
                return None;
            }
            headers.append(name, value);
        }
        let uri = match authority {
            Some(a) => {
                let mut s = b"http://".to_vec();
                s.extend_from_slice(a);
                s.extend_from_slice(path);
                Uri::try_from(s).ok()?
            }
            None => Uri::try_from(path).ok()?,
        };
        Some(ClientHead {
            method,
            uri,
            version: Version::HTTP_2,
            headers,
        })
    }

    fn parts(&self) -> Option<Parts> {
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .version(self.version)
            .body(())
            .ok()?;
        *req.headers_mut() = self.headers.clone();
        Some(req.into_parts().0)
    }
}

/// One request as it leaves for an upstream, before hyper-util and hyper write it.
struct UpstreamHead {
    target: String,
    method: Method,
    /// Absolute: the endpoint's scheme and authority, then the path and query.
    uri: Uri,
    headers: HeaderMap,
    /// The `Host` the proxy meant to send (`None`: hyper-util adds the endpoint's).
    host: Option<HeaderValue>,
    /// `Some(name)` for a mirror copy.
    shadow: Option<Arc<str>>,
}

/// The steps of `proxy::handler::forward`, in its order, up to the upstream request.
fn forward_and_check(table: &Table, client: &ClientHead, peer: IpAddr) {
    let Some(mut parts) = client.parts() else {
        return;
    };
    if headers::check_request(&parts).is_err() {
        return; // 400
    }
    let listed = connection_listed(&parts.headers);
    let original_pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut host = headers::request_host(&parts);
    let request_id = headers::identify(&mut parts.headers, &peer.into(), "http");
    let view = RequestView {
        parts: &parts,
        authority: host.as_ref().and_then(|h| h.to_str().ok()),
        scheme: "http",
    };
    let Some((route, matched)) = table.select(&view) else {
        return; // 404
    };
    let Some(dest) = route.pick_destination() else {
        panic!("route `{}`: no destination", route.name);
    };
    let action = &route.action;
    action.request_headers.apply(&mut parts.headers);
    let mut pq = original_pq.clone();
    if let Some(rw) = &action.rewrite {
        match rw.path(&pq, matched.and_then(|m| m.uri.as_ref())) {
            Some(p) => pq = p,
            None => assert!(
                rw.uri.is_none(),
                "route `{}`: rewrite.uri {:?} cannot rewrite `{pq}`",
                route.name,
                rw.uri
            ),
        }
        if let Some(a) = &rw.authority {
            host = Some(a.clone());
        }
    }
    if action.rewrite.is_some() {
        assert_eq!(
            pq.query(),
            original_pq.query(),
            "route `{}`: the rewrite of `{original_pq}` lost its query",
            route.name
        );
    }
    parts.headers.remove(header::HOST);
    let mirror_headers = parts.headers.clone();
    if let Some(h) = &host {
        parts.headers.insert(header::HOST, h.clone());
    }

    let mut heads = Vec::new();
    let Some(ep) = dest.service.pick_endpoint() else {
        panic!("service `{}`: no endpoint", dest.service.name);
    };
    let Ok(uri) = Uri::builder()
        .scheme(ep.scheme.clone())
        .authority(ep.authority.clone())
        .path_and_query(pq.clone())
        .build()
    else {
        return; // 400
    };
    heads.push(UpstreamHead {
        target: intended_target(&pq),
        method: parts.method.clone(),
        uri,
        headers: parts.headers,
        host: host.clone(),
        shadow: None,
    });
    // Mirror copies (mirror::send): the shared headers, the shadow's Host, the marker.
    for m in &route.mirrors {
        let Some(ep) = m.shadow.service.pick_endpoint() else {
            panic!("shadow `{}`: no endpoint", m.shadow.name);
        };
        let Ok(uri) = Uri::builder()
            .scheme(ep.scheme.clone())
            .authority(ep.authority.clone())
            .path_and_query(pq.clone())
            .build()
        else {
            continue;
        };
        let mut h = mirror_headers.clone();
        let shadow_host = host.as_ref().map(|v| m.shadow.shadow_host(v));
        if let Some(v) = &shadow_host {
            h.insert(header::HOST, v.clone());
        }
        let marker =
            HeaderValue::from_str(&m.shadow.name).unwrap_or(HeaderValue::from_static("shadow"));
        h.insert(MIRROR_HEADER, marker);
        heads.push(UpstreamHead {
            target: intended_target(&pq),
            method: parts.method.clone(),
            uri,
            headers: h,
            host: shadow_host,
            shadow: Some(m.shadow.name.clone()),
        });
    }

    let ops = &action.request_headers;
    let set_by_route =
        |n: &HeaderName| ops.set.iter().any(|(x, _)| x == n) || ops.add.iter().any(|(x, _)| x == n);
    let touched = |n: &HeaderName| set_by_route(n) || ops.remove.contains(n);
    for head in heads {
        let what = match &head.shadow {
            Some(s) => format!("route `{}`, mirror `{s}`", route.name),
            None => format!("route `{}`, primary", route.name),
        };
        let (wire, sent) = write_like_pool(head.method.clone(), head.uri.clone(), head.headers);
        let parsed = reparse(&wire).unwrap_or_else(|e| {
            panic!(
                "{what}: the upstream head does not parse ({e}):\n{}",
                String::from_utf8_lossy(&wire)
            )
        });
        assert_eq!(parsed.method, head.method.as_str(), "{what}: method");
        assert_eq!(parsed.target, head.target, "{what}: request target");
        let mut want: Vec<(String, String)> = sent
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    v.as_bytes().escape_ascii().to_string(),
                )
            })
            .collect();
        let mut got = parsed.headers;
        want.sort();
        got.sort();
        assert_eq!(got, want, "{what}: headers changed on the wire");
        for (n, v) in &sent {
            assert!(
                !n.as_str()
                    .bytes()
                    .chain(v.as_bytes().iter().copied())
                    .any(|b| matches!(b, b'\r' | b'\n' | 0)),
                "{what}: CR, LF or NUL in `{n}`"
            );
        }
        for name in HOP_BY_HOP {
            assert!(
                !sent.contains_key(name),
                "{what}: hop-by-hop `{name}` sent upstream"
            );
        }
        for name in &listed {
            let ours = set_by_route(name)
                || [
                    headers::X_REQUEST_ID,
                    headers::X_FORWARDED_FOR,
                    header::HOST,
                ]
                .contains(name)
                || (*name == headers::X_FORWARDED_PROTO
                    && sent.get(name).is_some_and(|v| v == "http"))
                || (head.shadow.is_some() && *name == MIRROR_HEADER)
                // The codec's own framing of a bodiless POST/PUT/PATCH, not the client's.
                || (*name == header::CONTENT_LENGTH
                    && matches!(head.method, Method::POST | Method::PUT | Method::PATCH)
                    && sent.get(name).is_some_and(|v| v == "0"));
            assert!(
                ours || !sent.contains_key(name),
                "{what}: `{name}` was listed in Connection but sent upstream"
            );
        }
        if !touched(&headers::X_REQUEST_ID) {
            let ids: Vec<_> = sent.get_all(headers::X_REQUEST_ID).iter().collect();
            assert_eq!(ids, [&request_id], "{what}: x-request-id");
        }
        if !touched(&headers::X_FORWARDED_FOR) {
            let xff: Vec<_> = sent.get_all(headers::X_FORWARDED_FOR).iter().collect();
            let last = xff
                .first()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .map(str::trim);
            assert!(
                xff.len() == 1 && last == Some(peer.to_string().as_str()),
                "{what}: x-forwarded-for {xff:?} does not end with {peer}"
            );
        }
        let hosts: Vec<_> = sent.get_all(header::HOST).iter().collect();
        assert_eq!(hosts.len(), 1, "{what}: Host {hosts:?}");
        if let Some(h) = &head.host {
            assert_eq!(hosts[0], h, "{what}: Host");
        }
        if let Some(s) = &head.shadow {
            let marks: Vec<_> = sent.get_all(MIRROR_HEADER).iter().collect();
            assert!(
                marks.len() == 1 && (marks[0] == s.as_ref() || marks[0] == "shadow"),
                "{what}: {MIRROR_HEADER} {marks:?}"
            );
        }
    }
}

/// The names a `Connection` header lists, read as bytes (RFC 9110 §7.6.1).
fn connection_listed(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(trim_ows(t)).ok())
        .collect()
}

/// The request target an upstream should see for this path and query (origin form).
fn intended_target(pq: &PathAndQuery) -> String {
    match pq.query() {
        Some(q) => format!("{}?{q}", pq.path()),
        None => pq.path().to_owned(),
    }
}

/// What the upstream pool writes (`proxy::pool` then `proxy::h1`): a `Host` from the endpoint
/// when none is set, the origin-form target, the head as the codec encodes it (request line,
/// `name: value` lines in map order, `content-length: 0` for a bodiless POST/PUT/PATCH).
fn write_like_pool(method: Method, uri: Uri, mut headers: HeaderMap) -> (Vec<u8>, HeaderMap) {
    if !headers.contains_key(header::HOST) {
        if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
            if let Some(v) = crate::proxy::pool::host_value(scheme, authority) {
                headers.insert(header::HOST, v);
            }
        }
    }
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut req = http::Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    *req.method_mut() = method;
    *req.uri_mut() = crate::proxy::pool::origin_form(&pq);
    *req.headers_mut() = headers;
    let mut wire = Vec::new();
    crate::proxy::h1::encode_head(&mut wire, &req);
    let (parts, _) = req.into_parts();
    let mut sent = parts.headers;
    let bodiless_write = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if bodiless_write && !sent.contains_key(header::CONTENT_LENGTH) {
        sent.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    (wire, sent)
}

struct ParsedHead {
    method: String,
    target: String,
    /// Lowercase names; values with non-printable bytes escaped (`\xff`).
    headers: Vec<(String, String)>,
}

/// What an HTTP/1.1 upstream (httparse: hyper, and most servers' rules) reads.
fn reparse(wire: &[u8]) -> Result<ParsedHead, String> {
    let n = wire.iter().filter(|b| **b == b'\n').count();
    let mut slots = vec![httparse::EMPTY_HEADER; n];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(wire) {
        Ok(httparse::Status::Complete(len)) if len == wire.len() => {}
        Ok(httparse::Status::Complete(len)) => {
            return Err(format!("parsed {len} of {} bytes", wire.len()))
        }
        Ok(httparse::Status::Partial) => return Err("incomplete".into()),
        Err(e) => return Err(e.to_string()),
    }
    if req.version != Some(1) {
        return Err(format!("version {:?}", req.version));
    }
    Ok(ParsedHead {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    h.value.escape_ascii().to_string(),
                )
            })
            .collect(),
    })
}

/// The route lines of an `upstream_headers` input as a native config with one matching
/// route (and a catch-all after it).
fn ops_config(ops: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(ops).ok()?;
    let (mut set, mut add, mut remove) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rewrite, mut prefix, mut ignore_case) = (Vec::new(), None, false);
    for line in text.split('\n') {
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        let pair = || {
            let (n, v) = rest.split_once(' ').unwrap_or((rest, ""));
            format!("{}: {}", yaml_str(n), yaml_str(v))
        };
        match op {
            "set" => set.push(pair()),
            "add" => add.push(pair()),
            "remove" => remove.push(yaml_str(rest)),
            "rewrite-uri" => rewrite.push(format!("uri: {}", yaml_str(rest))),
            "rewrite-authority" => rewrite.push(format!("authority: {}", yaml_str(rest))),
            "prefix" => prefix = Some(yaml_str(rest)),
            "ignore-case" => ignore_case = true,
            _ => {}
        }
    }
    let matches = match prefix {
        Some(p) => format!("[{{uri: {{prefix: {p}}}, ignore_uri_case: {ignore_case}}}]"),
        None => "[]".to_owned(),
    };
    Some(format!(
        "listeners: [127.0.0.1:8080]
services:
  - {{name: app, endpoints: [127.0.0.1:9001]}}
  - {{name: shadow, endpoints: [127.0.0.1:9002]}}
routes:
  - name: fuzzed
    match: {matches}
    route: [{{destination: app}}]
    mirrors: [{{destination: shadow}}]
    headers: {{request: {{set: {{{}}}, add: {{{}}}, remove: [{}]}}}}
    rewrite: {{{}}}
  - name: rest
    route: [{{destination: app}}]
",
        set.join(", "),
        add.join(", "),
        remove.join(", "),
        rewrite.join(", "),
    ))
}

/// A YAML double-quoted scalar holding exactly `s`.
fn yaml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xffff => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

fn split_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    // `:authority: x` keeps its leading colon in the name.
    let start = usize::from(line.first() == Some(&b':'));
    let i = start + line[start..].iter().position(|b| *b == b':')?;
    Some((&line[..i], &line[i + 1..]))
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_tables_build_and_route() {
        let [native, istio] = fixed_tables();
        check_table(native);
        check_table(istio);
        assert_eq!(istio.virtual_hosts.len(), 3);
    }

    #[test]
    fn a_plain_request_reaches_every_upstream_intact() {
        // Runs every assertion of the target on an ordinary request.
        upstream_headers(b"1.1\nGET\n/api/users?x=1\nHost: my-app\nx-user: 7\nConnection: x-secret, keep-alive\nx-secret: 1\n");
        upstream_headers(b"2\nPOST\n/v1/reviews\n:authority: v1.api.example.com\nx-b: 1\n");
    }

    #[test]
    fn the_reparse_sees_what_was_written() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let (wire, sent) = write_like_pool(
            Method::GET,
            Uri::from_static("http://127.0.0.1:9001/p?q"),
            h,
        );
        assert_eq!(sent["host"], "127.0.0.1:9001");
        let p = reparse(&wire).expect("parses");
        assert_eq!((p.method.as_str(), p.target.as_str()), ("GET", "/p?q"));
        assert_eq!(p.headers.len(), 3);
        // A value with surrounding spaces does not survive the wire: the check would see it.
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static(" padded "));
        let (wire, _) = write_like_pool(Method::GET, Uri::from_static("http://a:1/"), h);
        let p = reparse(&wire).expect("parses");
        assert!(p.headers.contains(&("x-a".to_owned(), "padded".to_owned())));
    }

    #[test]
    fn yaml_strings_round_trip() {
        for s in [
            "plain",
            "a \"quoted\" \\ value",
            "tab\there",
            "é€😀",
            "\u{85}\u{2028}",
        ] {
            let y = format!("k: {}\n", yaml_str(s));
            let m: std::collections::BTreeMap<String, String> =
                serde_saphyr::from_str(&y).expect("yaml");
            assert_eq!(m["k"], s);
        }
    }
}
