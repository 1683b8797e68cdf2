//! Header hygiene between the client and the upstreams, shared by the primary and mirror paths.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1 and those named in `Connection`) never cross the proxy;
//! `x-forwarded-for` is appended, `x-forwarded-proto` set when absent; every request carries
//! one `x-request-id`, the client's when it sent a sane one.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request::Parts, Version};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether a header is hop-by-hop: one the proxy removes and manages itself.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::UPGRADE
}

/// Whether an `Upgrade` value offers WebSocket (the one upgrade proxied, as Envoy's default
/// `upgrade_configs`): a request's that lists it, or a `101`'s that chose it.
pub fn offers_websocket(v: &HeaderValue) -> bool {
    v.as_bytes().split(|b| *b == b',').any(|p| {
        let p = p.trim_ascii();
        let name = p.split(|b| *b == b'/').next().unwrap_or(p);
        name.eq_ignore_ascii_case(b"websocket")
    })
}

/// Remove hop-by-hop headers, including every header the `Connection` header names.
/// `Upgrade` goes too (the handler puts it back for a WebSocket upgrade).
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names finds which hop-by-hop ones are present (most messages carry
    // none, or only `Connection: keep-alive`); a hashed `remove` per possible name cost more
    // than the scan. Nothing is allocated: names go by index, Connection tokens as `&str`.
    let mut present = 0u16;
    for name in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == name) {
            present |= 1 << i;
        } else if name == header::UPGRADE {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` (index 0): its tokens read as bytes, so one non-ASCII byte cannot hide
        // the other names. The values are cheap clones (shared bytes).
        let mut values = h.get_all(header::CONNECTION).iter();
        match (values.next().cloned(), values.next()) {
            (Some(one), None) => remove_listed(h, &one),
            _ => {
                let all: Vec<HeaderValue> = h.get_all(header::CONNECTION).iter().cloned().collect();
                for v in &all {
                    remove_listed(h, v);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(name);
        }
    }
    if present & (1 << HOP_BY_HOP.len()) != 0 {
        h.remove(header::UPGRADE);
    }
}

/// Remove the headers a `Connection` value names.
fn remove_listed(h: &mut HeaderMap, connection: &HeaderValue) {
    for token in connection.as_bytes().split(|b| *b == b',') {
        // A token that is not a header name matches nothing (`remove` by `&str` neither
        // allocates nor fails).
        if let Ok(name) = std::str::from_utf8(token.trim_ascii()) {
            if !name.is_empty() {
                h.remove(name);
            }
        }
    }
}

/// Refuse what must never be forwarded. HTTP/1.1 needs exactly one `Host` (RFC 9112 §3.2);
/// hyper accepts a missing or repeated one, we do not. An HTTP/2 field value must not begin
/// or end with whitespace (RFC 9113 §8.2.1): the HTTP/1.1 upstream would read it trimmed
/// (the h2 crate lets it through; HTTP/1.1 parsing trims it already).
pub fn check_request(parts: &Parts) -> Result<(), &'static str> {
    if parts.method == http::Method::CONNECT {
        // hyper-util would send it to the upstream as `CONNECT upstream-address`: a tunnel
        // to the upstream itself. Tunnels are not proxied.
        return Err("CONNECT is not proxied");
    }
    let hosts = parts.headers.get_all(header::HOST).iter().count();
    match (parts.version, hosts) {
        (Version::HTTP_11, 0) => return Err("missing Host header"),
        (_, n) if n > 1 => return Err("more than one Host header"),
        _ => {}
    }
    let padded = |v: &HeaderValue| {
        let b = v.as_bytes();
        matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
    };
    if parts.version == Version::HTTP_2 && parts.headers.values().any(padded) {
        return Err("whitespace around a header value");
    }
    Ok(())
}

/// The request's host: the `Host` header, or the URI authority (HTTP/2 `:authority`).
pub fn request_host(parts: &Parts) -> Option<HeaderValue> {
    if let Some(h) = parts.headers.get(header::HOST) {
        return Some(h.clone());
    }
    parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

/// The client's address as an `x-forwarded-for` element, formatted once per connection:
/// the requests of a keep-alive connection share it instead of formatting it each time.
#[derive(Debug, Clone)]
pub struct ClientAddr(HeaderValue);

impl From<IpAddr> for ClientAddr {
    fn from(ip: IpAddr) -> ClientAddr {
        // An address formats to ASCII digits, dots, colons and hex: always a valid value.
        ClientAddr(
            HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown")),
        )
    }
}

/// The primary path's header hygiene, in this order: hop-by-hop headers go first, so a
/// `Connection: x-request-id` cannot take away the id the request is given; then the request
/// id (returned) and `x-forwarded-*`.
pub fn identify(h: &mut HeaderMap, client: &ClientAddr, proto: &'static str) -> HeaderValue {
    strip_hop_by_hop(h);
    let id = ensure_request_id(h);
    add_forwarded(h, client, proto);
    id
}

/// Keep the client's `x-request-id` when it is sane, otherwise make one; returns it.
pub fn ensure_request_id(h: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 200 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
            let id = v.clone();
            // One id per request: a repeated header is cut down to the one used.
            if h.get_all(X_REQUEST_ID).iter().nth(1).is_some() {
                h.insert(X_REQUEST_ID, id.clone());
            }
            return id;
        }
    }
    let id = new_request_id();
    h.insert(X_REQUEST_ID, id.clone());
    id
}

/// A random (version 4) UUID in its usual text form.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hi = (fastrand::u64(..) & !0xf000) | 0x4000; // version 4
    let lo = (fastrand::u64(..) & !(0xc << 60)) | (0x8 << 60); // RFC 4122 variant
    let mut out = [b'-'; 36];
    let mut nibbles = (0..16)
        .rev()
        .map(|i| (hi >> (i * 4)) & 0xf)
        .chain((0..16).rev().map(|i| (lo >> (i * 4)) & 0xf));
    for (i, byte) in out.iter_mut().enumerate() {
        if !matches!(i, 8 | 13 | 18 | 23) {
            *byte = HEX[nibbles.next().unwrap_or(0) as usize];
        }
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("-"))
}

/// Longest `x-forwarded-for` chain kept; a longer one is replaced by the client alone.
const MAX_FORWARDED_FOR: usize = 512;

/// Append the client's address to `x-forwarded-for`; set `x-forwarded-proto` if absent.
pub fn add_forwarded(h: &mut HeaderMap, client: &ClientAddr, proto: &'static str) {
    let value = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            let (prev, ip) = (prev.as_bytes(), client.0.as_bytes());
            let len = prev.len() + 2 + ip.len();
            if len <= MAX_FORWARDED_FOR {
                let mut buf = Vec::with_capacity(len);
                buf.extend_from_slice(prev);
                buf.extend_from_slice(b", ");
                buf.extend_from_slice(ip);
                HeaderValue::from_bytes(&buf).unwrap_or_else(|_| client.0.clone())
            } else {
                client.0.clone()
            }
        }
        // The common case: no chain yet, the cached value is shared (no allocation).
        _ => client.0.clone(),
    };
    // Several x-forwarded-for lines are folded into one list.
    h.insert(X_FORWARDED_FOR, value);
    if !h.contains_key(X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> ClientAddr {
        s.parse::<IpAddr>().expect("ip").into()
    }

    #[test]
    fn an_over_long_forwarded_chain_is_replaced() {
        let mut h = HeaderMap::new();
        let long = "1.1.1.1, ".repeat(60);
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_str(&long).expect("ascii"),
        );
        add_forwarded(&mut h, &ip("10.0.0.2"), "http");
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.2");
    }

    #[test]
    fn hop_by_hop_only_in_connection_list_or_absent() {
        let mut h = HeaderMap::new();
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));

        // Several Connection fields, names in any case, a token that is no header name.
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("X-One"));
        h.append("connection", HeaderValue::from_static(" ,x two, X-TWO ,"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"], "{h:?}");
    }

    #[test]
    fn connection_with_a_non_ascii_byte_still_names_headers() {
        // Found by the upstream_headers fuzz target: `to_str` failed on the whole value and
        // nothing it listed was removed.
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_bytes(b"keep-a\x9bive, x-secret").expect("obs-text is valid"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn a_connection_listed_request_id_is_replaced_not_lost() {
        // Found by the upstream_headers fuzz target: `Connection: x-request-id` removed the
        // id after it was chosen, so the primary and the shadows got none.
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-request-id"));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("hop-1"));
        let id = identify(&mut h, &ip("127.0.0.1"), "http");
        assert_ne!(id, "hop-1", "a hop-by-hop id is not the request's");
        assert_eq!(h.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(), [&id]);
        assert!(!h.contains_key("connection"));
        assert_eq!(h[X_FORWARDED_FOR], "127.0.0.1");
    }

    #[test]
    fn forwarded_appends() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut h, &ip("127.0.0.1"), "http");
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        add_forwarded(&mut h, &ip("::1"), "http");
        assert_eq!(h[X_FORWARDED_FOR], "::1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-1"));
        assert_eq!(ensure_request_id(&mut h), "abc-1");
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        let s = id.to_str().expect("ascii");
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_eq!(h[X_REQUEST_ID], id);
        assert_ne!(new_request_id(), new_request_id());
        // Found by the upstream_headers fuzz target: a repeated x-request-id went upstream
        // twice. The first (sane) one is kept, alone.
        let mut h = HeaderMap::new();
        h.append(X_REQUEST_ID, HeaderValue::from_static("abc-2"));
        h.append(X_REQUEST_ID, HeaderValue::from_static("other"));
        assert_eq!(ensure_request_id(&mut h), "abc-2");
        assert_eq!(
            h.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(),
            ["abc-2"]
        );
        let mut h = HeaderMap::new();
        h.append(X_REQUEST_ID, HeaderValue::from_static(""));
        h.append(X_REQUEST_ID, HeaderValue::from_static("other"));
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(h.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(), [id]);
    }

    #[test]
    fn host_rules() {
        let p = |v: Version, hosts: &[&str]| {
            let mut b = http::Request::get("/").version(v);
            for h in hosts {
                b = b.header("host", *h);
            }
            b.body(()).expect("req").into_parts().0
        };
        assert!(check_request(&p(Version::HTTP_11, &["a"])).is_ok());
        assert!(check_request(&p(Version::HTTP_11, &[])).is_err());
        assert!(check_request(&p(Version::HTTP_11, &["a", "b"])).is_err());
        assert!(check_request(&p(Version::HTTP_10, &[])).is_ok());
        assert!(check_request(&p(Version::HTTP_2, &[])).is_ok());
    }

    #[test]
    fn connect_is_refused() {
        // Found by the upstream_headers fuzz check on a hand-written input (the fuzzer did not
        // reach it): CONNECT went to the primary as `CONNECT 127.0.0.1:9001`.
        let p = http::Request::builder()
            .method("CONNECT")
            .uri("my-app:443")
            .header("host", "my-app:443")
            .body(())
            .expect("req")
            .into_parts()
            .0;
        assert_eq!(check_request(&p), Err("CONNECT is not proxied"));
    }

    #[test]
    fn http2_values_with_surrounding_whitespace_are_refused() {
        // Found by the upstream_headers fuzz target: `x: remove ` over HTTP/2 reached the
        // HTTP/1.1 upstream as `x: remove`.
        let p = |v: Version, value: &'static str| {
            http::Request::get("http://a/")
                .version(v)
                .header("host", "a")
                .header("x", HeaderValue::from_static(value))
                .body(())
                .expect("req")
                .into_parts()
                .0
        };
        for bad in ["remove ", " remove", "\tremove", " "] {
            assert_eq!(
                check_request(&p(Version::HTTP_2, bad)),
                Err("whitespace around a header value"),
                "{bad:?}"
            );
        }
        assert!(check_request(&p(Version::HTTP_2, "re move")).is_ok());
        assert!(check_request(&p(Version::HTTP_2, "")).is_ok());
    }
}
