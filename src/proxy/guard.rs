//! The HTTP/1 request-head check: every client request head is parsed once, here, and refused
//! when its framing is ambiguous or it is over the limits, before any upstream hears of it.
//!
//! A proxy must refuse what an origin server might resolve (RFC 9112 §6.1, §6.3): Content-Length
//! together with Transfer-Encoding, repeated Content-Length, a transfer coding other than
//! chunked: the next hop may frame differently and a second request can hide in the body. The
//! client-facing server ([`super::h1::server`]) builds each request from this parse (the
//! fields' positions) and answers a refusal with its status (400, 414 or 431), then closes the
//! connection without reading anything after the refused head.
//!
//! HTTP/2 frames its own messages; hyper's h2 rejects connection-specific headers itself.

/// Limits on a request head (defaults close to Envoy's 60 KiB / 100 headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Request line and headers together, in bytes (431 past it; 414 when the request line
    /// alone is longer).
    pub max_bytes: usize,
    /// Header fields in one request (431 past it).
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Ambiguous or invalid framing, or a head that does not parse (400).
    Malformed(&'static str),
    /// The head is larger than [`HeadLimits::max_bytes`] or has too many fields (431).
    HeadTooLarge(&'static str),
    /// The request line alone is longer than [`HeadLimits::max_bytes`] (414).
    UriTooLong,
}

/// How a checked request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// Where a field's name and value are in the head: `[name start, name end, value start,
/// value end]`, offsets from the head's first byte.
pub type FieldSpan = [u32; 4];

/// A checked request head: its length, framing, and where its parts are (offsets into the
/// bytes given to [`parse_request`]; the fields' spans are in the vector it was given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    pub len: usize,
    pub body: Body,
    pub method: (u32, u32),
    pub target: (u32, u32),
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// `Connection: close` was sent.
    pub close: bool,
    /// `Connection: keep-alive` was sent (what keeps an HTTP/1.0 connection open).
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// `Connection: upgrade` on an HTTP/1.1 request without a body: the client may switch
    /// protocols (whether it is let to is the handler's call).
    pub upgrade: bool,
}

/// Parse and check one request head at the start of `bytes`: `None` while it is incomplete
/// (and within the limits). `fields` receives where each header field is.
pub fn parse_request(
    bytes: &[u8],
    limits: HeadLimits,
    fields: &mut Vec<FieldSpan>,
) -> Result<Option<RequestHead>, Refusal> {
    use std::mem::MaybeUninit;
    const ON_STACK: usize = 128;
    // Uninitialised slots: httparse writes the ones it uses (zeroing 4 KiB of slots per head
    // was a measurable part of the guard's cost).
    if limits.max_headers <= ON_STACK {
        let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; ON_STACK];
        check_with(bytes, limits, &mut headers[..limits.max_headers], fields)
    } else {
        let mut headers = Vec::with_capacity(limits.max_headers);
        headers.resize_with(limits.max_headers, MaybeUninit::uninit);
        check_with(bytes, limits, &mut headers, fields)
    }
}

fn span(base: &[u8], part: &[u8]) -> (u32, u32) {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start as u32, (start + part.len()) as u32)
}

fn check_with<'b>(
    bytes: &'b [u8],
    limits: HeadLimits,
    headers: &mut [std::mem::MaybeUninit<httparse::Header<'b>>],
    fields: &mut Vec<FieldSpan>,
) -> Result<Option<RequestHead>, Refusal> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(bytes, headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if bytes.len() <= limits.max_bytes {
                return Ok(None);
            }
            return Err(too_large(bytes, limits.max_bytes));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::HeadTooLarge("too many header fields"))
        }
        Err(e) => return Err(Refusal::Malformed(malformed_reason(e))),
    };
    if len > limits.max_bytes {
        return Err(too_large(bytes, limits.max_bytes));
    }
    let minor = req.version.unwrap_or(1);
    let http11 = minor == 1;
    let mut length: Option<u64> = None;
    let mut te = false;
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    let mut upgrade = false;
    fields.clear();
    for h in req.headers.iter() {
        let (n0, n1) = span(bytes, h.name.as_bytes());
        let (v0, v1) = span(bytes, h.value);
        fields.push([n0, n1, v0, v1]);
        if h.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(Refusal::Malformed("more than one Content-Length"));
            }
            match parse_length(h.value) {
                Some(n) => length = Some(n),
                None => return Err(Refusal::Malformed("invalid Content-Length")),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te {
                return Err(Refusal::Malformed("more than one Transfer-Encoding"));
            }
            te = true;
            if !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(Refusal::Malformed("Transfer-Encoding other than chunked"));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',').map(trim_ows) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue |= trim_ows(h.value).eq_ignore_ascii_case(b"100-continue");
        }
    }
    let body = match (te, length) {
        (true, Some(_)) => return Err(Refusal::Malformed("Content-Length with Transfer-Encoding")),
        (true, None) if !http11 => return Err(Refusal::Malformed("Transfer-Encoding in HTTP/1.0")),
        (true, None) => Body::Chunked,
        (false, Some(0)) | (false, None) => Body::None,
        (false, Some(n)) => Body::Length(n),
    };
    let method = req.method.map_or((0, 0), |m| span(bytes, m.as_bytes()));
    let target = req.path.map_or((0, 0), |p| span(bytes, p.as_bytes()));
    Ok(Some(RequestHead {
        len,
        body,
        method,
        target,
        minor,
        close,
        keep_alive,
        expect_continue: expect_continue && http11,
        upgrade: upgrade && http11 && body == Body::None,
    }))
}

/// A head over the limit: 414 when the request line alone is, 431 otherwise.
fn too_large(bytes: &[u8], max: usize) -> Refusal {
    let line = &bytes[skip_empty_lines(bytes)..];
    if line.iter().take(max).any(|b| *b == b'\n') {
        Refusal::HeadTooLarge("request header fields too large")
    } else {
        Refusal::UriTooLong
    }
}

fn skip_empty_lines(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count()
}

fn malformed_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method or request line",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid HTTP version",
    }
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| *b != b' ' && *b != b'\t');
    let end = v.iter().rposition(|b| *b != b' ' && *b != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// `1*DIGIT`, no sign, no list, at most 19 digits (fits u64).
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim_ows(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum HeadCheck {
        Complete { len: usize, body: Body },
        Partial,
        Refused(Refusal),
    }

    /// One head at the start of `bytes`, checked: what the tests compare.
    fn check_head(bytes: &[u8], limits: HeadLimits) -> HeadCheck {
        let mut fields = Vec::new();
        match parse_request(bytes, limits, &mut fields) {
            Ok(Some(h)) => HeadCheck::Complete {
                len: h.len,
                body: h.body,
            },
            Ok(None) => HeadCheck::Partial,
            Err(r) => HeadCheck::Refused(r),
        }
    }

    fn check(bytes: &[u8]) -> HeadCheck {
        check_head(bytes, HeadLimits::default())
    }

    fn refused(bytes: &[u8]) -> Refusal {
        match check(bytes) {
            HeadCheck::Refused(r) => r,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn framing_rules() {
        let ok = |b: &[u8]| match check(b) {
            HeadCheck::Complete { body, .. } => body,
            other => panic!("{other:?}"),
        };
        assert_eq!(ok(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Body::None);
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Body::Length(12)
        );
        assert_eq!(
            ok(b"POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n"),
            Body::Chunked
        );
        for (bytes, why) in [
            (
                &b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                "Content-Length with Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
                "Content-Length with Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
                "more than one Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                "more than one Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding in HTTP/1.0",
            ),
            (
                b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
                "invalid header name",
            ),
            (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", "invalid header value"),
            (b"GET / HTTP/1.1\r\nX : b\r\n\r\n", "invalid header name"),
        ] {
            assert_eq!(refused(bytes), Refusal::Malformed(why), "{bytes:?}");
        }
    }

    #[test]
    fn size_limits() {
        let limits = HeadLimits {
            max_bytes: 100,
            max_headers: 3,
        };
        let long_uri = [b"GET /".as_slice(), &[b'a'; 200]].concat();
        assert_eq!(
            check_head(&long_uri, limits),
            HeadCheck::Refused(Refusal::UriTooLong)
        );
        let long_header = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 200]].concat();
        assert!(matches!(
            check_head(&long_header, limits),
            HeadCheck::Refused(Refusal::HeadTooLarge(_))
        ));
        let many = b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\n\r\n";
        assert_eq!(
            check_head(many, limits),
            HeadCheck::Refused(Refusal::HeadTooLarge("too many header fields"))
        );
        assert_eq!(
            check_head(b"GET / HTTP/1.1\r\nX: a", limits),
            HeadCheck::Partial
        );
    }
}
