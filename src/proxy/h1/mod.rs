//! HTTP/1.1 to upstreams, driven inline by the request's own task.
//!
//! hyper's client runs every connection as a task of its own and talks to it through channels:
//! per request a dispatch message, a oneshot back, two task switches, and hyper's general
//! parser building the response. This codec does the same exchange inside the request's
//! future: write the head (and the body, framed), read and parse the response head, and hand
//! out a body that reads the rest from the connection. When the whole response is already in
//! the read buffer (small answers, the common case), the connection goes back to its pool
//! before the head is even returned.
//!
//! What an exchange guarantees:
//! - request framing from the body: no body → as the request said (`content-length: 0` added
//!   for POST/PUT/PATCH), known size → `content-length`, unknown → `transfer-encoding: chunked`;
//!   a body that ends short of or runs past its length fails and the connection is dropped;
//! - the response head is read while the request body is still being sent: an upstream that
//!   answers early (a 413, a 401) is heard at once, and the rest of the request body is still
//!   offered to it while the response streams (a full-duplex echo keeps working); such a
//!   connection is not reused;
//! - 1xx interim answers are skipped; 204, 304 and answers to HEAD have no body; framing per
//!   RFC 9112 §6.3 (chunked last → chunked, other transfer codings → until close, equal
//!   `content-length` values → that length, nothing → until close);
//! - a connection is reused only when the exchange ended cleanly: request fully sent, response
//!   fully read, keep-alive on both sides, nothing unread left behind.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::pool::Release;
use crate::body::Stall;

pub mod server;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response head larger than this is refused (Envoy: 60 KiB; nginx: 4–8 KiB).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Response header fields at most (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Read at least this much at a time; grows to [`MAX_READ`] while a body fills every read.
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;
/// Bytes of chunk extensions, and of trailers, accepted (and dropped).
const MAX_CHUNK_EXT: usize = 4 * 1024;
const MAX_TRAILERS: usize = MAX_HEAD_BYTES;

/// A byte stream to an upstream that can tell, without blocking, whether it is still usable
/// while idle.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// False when the peer closed the idle connection or sent something unasked: either way
    /// no request may be sent on it. Must not block; may use a readiness the runtime cached.
    fn idle_usable(&mut self) -> bool;
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connection error")]
    Io(#[source] io::Error),
    #[error("connection closed before the response head")]
    ClosedBeforeHead,
    #[error("connection closed in the response head")]
    ClosedInHead,
    #[error("connection closed in the response body")]
    ClosedInBody,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("response head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} fields")]
    HeadTooLarge,
    #[error("request body failed")]
    Body(#[source] BoxError),
    #[error("request body of {declared} bytes announced, {sent} sent")]
    BodyLength { declared: u64, sent: u64 },
    #[error("upstream idle for {0:?} in the response body")]
    Idle(Duration),
}

impl From<io::Error> for H1Error {
    fn from(e: io::Error) -> Self {
        H1Error::Io(e)
    }
}

/// A failed exchange; `unsent` is the request when not one byte of it reached the connection
/// (it may be sent again elsewhere).
pub struct Failure<B> {
    pub error: H1Error,
    pub unsent: Option<Request<B>>,
}

/// One upstream connection: the stream, its read buffer (kept between exchanges: a response
/// may end in the same read as the head) and a head buffer reused by every request.
pub struct Conn<Io> {
    io: Io,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    read_size: usize,
}

impl<Io: Transport> Conn<Io> {
    pub fn new(io: Io) -> Conn<Io> {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(MIN_READ),
            wbuf: Vec::with_capacity(512),
            read_size: MIN_READ,
        }
    }

    /// Whether this idle connection can take a request (see [`Transport::idle_usable`]).
    pub fn idle_usable(&mut self) -> bool {
        self.rbuf.is_empty() && self.io.idle_usable()
    }

    /// Send `req` (origin-form target, `Host` set) and read the response head. The body is
    /// read from the connection as the returned response's body is polled; `release` takes
    /// the connection back when the exchange ends cleanly.
    pub async fn exchange<B>(
        mut self,
        req: Request<B>,
        release: Release<Io>,
    ) -> Result<Response<UpstreamBody<Io>>, Failure<B>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (framing, upgrade) = encode_head(&mut self.wbuf, &req);
        let head_request = req.method() == Method::HEAD;
        let mut out = Outgoing {
            head: std::mem::take(&mut self.wbuf),
            head_pos: 0,
            prefix: ChunkPrefix::default(),
            data: Bytes::new(),
            suffix: b"",
            body: None,
            chunked: matches!(framing, Framing::Chunked),
            declared: match framing {
                Framing::Length(n) => Some(n),
                _ => None,
            },
            sent: 0,
            written: 0,
            finished: false,
        };

        if req.body().is_end_stream() {
            // A request without a body is its head. Its first write decides whether the
            // connection takes it at all: refused outright (an idle connection the upstream
            // closed), the request is still whole and can go elsewhere.
            match poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, &out.head)).await {
                Ok(n) if n > 0 => {
                    out.head_pos = n;
                    out.written = n as u64;
                }
                Ok(_) => {
                    return Err(Failure {
                        error: H1Error::Io(io::ErrorKind::WriteZero.into()),
                        unsent: Some(req),
                    })
                }
                Err(e) => {
                    return Err(Failure {
                        error: H1Error::Io(e),
                        unsent: Some(req),
                    })
                }
            }
            out.finished_body();
        } else {
            // The head goes out with the body's first piece when that is ready at once.
            out.body = Some(Box::pin(req.into_body()));
        }

        // Send the rest while listening for the answer. An upstream that stops reading may
        // have answered already: a failed write ends sending, the head is still awaited.
        let mut write_failed = None;
        let head = poll_fn(|cx| {
            if !out.finished && write_failed.is_none() {
                match out.poll_send(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(H1Error::Io(e))) => write_failed = Some(e),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            match self.poll_head(cx, head_request, upgrade) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(match write_failed.take() {
                    Some(w) if matches!(e, H1Error::ClosedBeforeHead) => H1Error::Io(w),
                    _ => e,
                })),
                other => other,
            }
        })
        .await
        .map_err(|error| Failure {
            error,
            unsent: None,
        })?;
        let mut head = head;
        if head.status == StatusCode::SWITCHING_PROTOCOLS && !out.finished {
            return Err(Failure {
                error: H1Error::Invalid("101 Switching Protocols before the request was sent"),
                unsent: None,
            });
        }
        if write_failed.is_some() {
            // Nothing more can be sent: the answer stands, the connection is spent.
            head.keep_alive = false;
        }
        if out.head_pos == out.head.len() {
            self.wbuf = std::mem::take(&mut out.head);
            out.head_pos = 0;
        }
        let sending = (!out.finished && write_failed.is_none())
            .then(|| Box::new(out) as Box<dyn SendRest<Io>>);
        Ok(self.respond(head, sending, release))
    }

    /// Read until a final (non-1xx) response head is in, and parse it.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        upgrade: bool,
    ) -> Poll<Result<Head, H1Error>> {
        loop {
            if !self.rbuf.is_empty() {
                if let Some(head) = parse_head(&mut self.rbuf, head_request, upgrade)? {
                    return Poll::Ready(Ok(head));
                }
                if self.rbuf.len() >= MAX_HEAD_BYTES {
                    return Poll::Ready(Err(H1Error::HeadTooLarge));
                }
            }
            let n = ready!(self.poll_read(cx))?;
            if n == 0 {
                return Poll::Ready(Err(if self.rbuf.is_empty() {
                    H1Error::ClosedBeforeHead
                } else {
                    H1Error::ClosedInHead
                }));
            }
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        fill(&mut self.io, &mut self.rbuf, &mut self.read_size, cx)
    }

    fn respond(
        mut self,
        head: Head,
        sending: Option<Box<dyn SendRest<Io>>>,
        release: Release<Io>,
    ) -> Response<UpstreamBody<Io>> {
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            // Upgraded: the connection (and what came after the head) is the tunnel's now.
            let tunnel = Upgraded::new(Rewind {
                prefix: self.rbuf.split().freeze(),
                io: self.io,
            });
            let mut resp = Response::new(UpstreamBody {
                state: BodyState::Done,
            });
            *resp.status_mut() = head.status;
            *resp.version_mut() = head.version;
            *resp.headers_mut() = head.headers;
            resp.extensions_mut().insert(tunnel);
            return resp;
        }
        let reusable = head.keep_alive;
        let state = match head.framing {
            // The request is still being sent: the body (even an empty one) ends only once it
            // is, so the client's body is read to its end (its connection stays usable) and
            // the upstream connection can be reused after all.
            framing if sending.is_some() => {
                Streaming::state(self, framing, reusable, sending, release)
            }
            BodyFraming::Empty => {
                if reusable && self.rbuf.is_empty() {
                    release.put(self);
                }
                BodyState::Done
            }
            BodyFraming::Length(n) if self.rbuf.len() as u64 >= n => {
                // The whole body is here already: the connection can serve the next request.
                let data = self.rbuf.split_to(n as usize).freeze();
                if reusable && self.rbuf.is_empty() {
                    release.put(self);
                }
                if data.is_empty() {
                    BodyState::Done
                } else {
                    BodyState::Whole(data)
                }
            }
            framing => Streaming::state(self, framing, reusable, sending, release),
        };
        let mut resp = Response::new(UpstreamBody { state });
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        resp
    }
}

/// Read once into `buf`'s spare room (at least half of `read_size`); a read that fills all of
/// it doubles `read_size`, up to [`MAX_READ`] (a body that fills every read gets larger reads).
fn fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    read_size: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < *read_size / 2 {
        buf.reserve(*read_size);
    }
    let want = buf.capacity() - buf.len();
    let n = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, buf))?;
    if n == want && *read_size < MAX_READ {
        *read_size *= 2;
    }
    Poll::Ready(Ok(n))
}

// ---------------------------------------------------------------------------------------
// Writing the request.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: the request's own `content-length` (if any) stays.
    None,
    Length(u64),
    Chunked,
}

fn request_framing<B: Body>(req: &Request<B>) -> Framing {
    let body = req.body();
    if body.is_end_stream() {
        return Framing::None;
    }
    match body.size_hint().exact() {
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

/// The request head as an HTTP/1.1 upstream reads it, into `buf`: request line, `name: value`
/// lines in map order, the framing header. `Transfer-Encoding` (hop-by-hop) is never copied; a
/// `Content-Length` only when there is no body to frame.
///
/// Also says whether the request asks for an upgrade (has `Upgrade`): only then may its
/// answer be `101`.
pub(crate) fn encode_head<B: Body>(buf: &mut Vec<u8>, req: &Request<B>) -> (Framing, bool) {
    let framing = request_framing(req);
    buf.clear();
    buf.extend_from_slice(req.method().as_str().as_bytes());
    buf.push(b' ');
    // Origin form: the path (`/` when empty, also before a bare query), then `?query`.
    match req.uri().path_and_query() {
        Some(pq) => {
            buf.extend_from_slice(pq.path().as_bytes());
            if let Some(q) = pq.query() {
                buf.push(b'?');
                buf.extend_from_slice(q.as_bytes());
            }
        }
        None => buf.push(b'/'),
    }
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_length = false;
    let mut upgrade = false;
    for (name, value) in req.headers() {
        if name == TRANSFER_ENCODING {
            continue;
        }
        upgrade |= name == UPGRADE;
        if name == CONTENT_LENGTH {
            if framing != Framing::None {
                continue;
            }
            has_length = true;
        }
        push_field(buf, name, value);
    }
    match framing {
        Framing::None => {
            let needs = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
            if needs && !has_length {
                buf.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        Framing::Length(n) => {
            buf.extend_from_slice(b"content-length: ");
            push_decimal(buf, n);
            buf.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    buf.extend_from_slice(b"\r\n");
    (framing, upgrade)
}

/// One `name: value` line of a head (both heads the proxy writes: requests upstream, responses
/// to clients).
#[inline(always)]
pub(crate) fn push_field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// A chunk's size line, `{hex}\r\n`.
#[derive(Default)]
struct ChunkPrefix {
    bytes: [u8; 18],
    len: u8,
    pos: u8,
}

impl ChunkPrefix {
    fn set(&mut self, n: usize) {
        let mut tmp = [0u8; 16];
        let mut i = tmp.len();
        let mut v = n;
        loop {
            i -= 1;
            tmp[i] = b"0123456789abcdef"[v & 0xf];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        let hex = &tmp[i..];
        self.bytes[..hex.len()].copy_from_slice(hex);
        self.bytes[hex.len()..hex.len() + 2].copy_from_slice(b"\r\n");
        self.len = (hex.len() + 2) as u8;
        self.pos = 0;
    }

    fn rest(&self) -> &[u8] {
        &self.bytes[self.pos as usize..self.len as usize]
    }
}

/// The request still to write: what is left of the head, the current chunk (size line, data,
/// CRLF), and the body to poll for more.
struct Outgoing<B> {
    head: Vec<u8>,
    head_pos: usize,
    prefix: ChunkPrefix,
    data: Bytes,
    suffix: &'static [u8],
    body: Option<Pin<Box<B>>>,
    chunked: bool,
    declared: Option<u64>,
    sent: u64,
    /// Bytes the connection took (head, framing and body).
    written: u64,
    finished: bool,
}

impl<B> Outgoing<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    fn pending(&self) -> bool {
        self.head_pos < self.head.len()
            || !self.prefix.rest().is_empty()
            || !self.data.is_empty()
            || !self.suffix.is_empty()
    }

    fn finished_body(&mut self) {
        self.body = None;
        if self.chunked {
            self.suffix = b"0\r\n\r\n";
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.written += n as u64;
        let h = (self.head.len() - self.head_pos).min(n);
        self.head_pos += h;
        n -= h;
        let p = self.prefix.rest().len().min(n);
        self.prefix.pos += p as u8;
        n -= p;
        let d = self.data.len().min(n);
        bytes::Buf::advance(&mut self.data, d);
        n -= d;
        let s = self.suffix.len().min(n);
        self.suffix = &self.suffix[s..];
    }

    /// Poll the body for more when nothing is queued, write what is queued (the head and
    /// the first piece in one vectored write), until the body has ended and all of it is
    /// written (then flushed).
    fn poll_send<Io: AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), H1Error>> {
        loop {
            let queued =
                !self.prefix.rest().is_empty() || !self.data.is_empty() || !self.suffix.is_empty();
            let mut waiting = false;
            if !queued {
                if let Some(body) = self.body.as_mut() {
                    match body.as_mut().poll_frame(cx) {
                        Poll::Pending => waiting = true,
                        Poll::Ready(None) => {
                            if let Some(declared) = self.declared.filter(|d| *d != self.sent) {
                                return Poll::Ready(Err(H1Error::BodyLength {
                                    declared,
                                    sent: self.sent,
                                }));
                            }
                            self.finished_body();
                        }
                        Poll::Ready(Some(Err(e))) => {
                            return Poll::Ready(Err(H1Error::Body(e.into())))
                        }
                        Poll::Ready(Some(Ok(frame))) => {
                            // Trailers are dropped: HTTP/1 upstreams rarely ask for them.
                            if let Ok(data) = frame.into_data() {
                                if !data.is_empty() {
                                    self.sent += data.len() as u64;
                                    if let Some(declared) = self.declared.filter(|d| self.sent > *d)
                                    {
                                        return Poll::Ready(Err(H1Error::BodyLength {
                                            declared,
                                            sent: self.sent,
                                        }));
                                    }
                                    if self.chunked {
                                        self.prefix.set(data.len());
                                        self.suffix = b"\r\n";
                                    }
                                    self.data = data;
                                }
                            }
                        }
                    }
                }
            }
            if self.pending() {
                let slices = [
                    IoSlice::new(&self.head[self.head_pos..]),
                    IoSlice::new(self.prefix.rest()),
                    IoSlice::new(&self.data),
                    IoSlice::new(self.suffix),
                ];
                let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
                if n == 0 {
                    return Poll::Ready(Err(H1Error::Io(io::ErrorKind::WriteZero.into())));
                }
                self.advance(n);
                continue;
            }
            if waiting {
                // Everything so far goes out before waiting for the client.
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                return Poll::Pending;
            }
            if self.body.is_none() {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// The rest of a request body, sent while its response streams.
trait SendRest<Io>: Send {
    fn poll_rest(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>>;
    /// Grows whenever the upstream took more of the request.
    fn progress(&self) -> u64;
}

impl<Io, B> SendRest<Io> for Outgoing<B>
where
    Io: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    fn poll_rest(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        self.poll_send(io, cx)
    }

    fn progress(&self) -> u64 {
        self.written
    }
}

// ---------------------------------------------------------------------------------------
// Reading the response.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: BodyFraming,
    keep_alive: bool,
}

/// Parse a response head at the front of `buf`: `None` while incomplete. Interim (1xx)
/// answers are consumed and skipped. The head's bytes leave `buf`; header values share them.
/// `upgrade`: the request asked for one, so a `101` is its final answer (the connection then
/// carries the new protocol).
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    upgrade: bool,
) -> Result<Option<Head>, H1Error> {
    loop {
        let mut slots = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let base = buf.as_ptr() as usize;
        let mut idx = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let (len, code, minor, count) = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => {
                for (i, h) in resp.headers.iter().enumerate() {
                    let n0 = h.name.as_ptr() as usize - base;
                    let v0 = h.value.as_ptr() as usize - base;
                    idx[i] = (
                        n0 as u32,
                        (n0 + h.name.len()) as u32,
                        v0 as u32,
                        (v0 + h.value.len()) as u32,
                    );
                }
                (
                    len,
                    resp.code.unwrap_or(0),
                    resp.version.unwrap_or(1),
                    resp.headers.len(),
                )
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(H1Error::HeadTooLarge),
            Err(_) => return Err(H1Error::Invalid("malformed response head")),
        };
        let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("status code"))?;
        let mut switched = false;
        if status.is_informational() {
            if status != StatusCode::SWITCHING_PROTOCOLS {
                let _ = buf.split_to(len);
                continue;
            }
            if !upgrade {
                return Err(H1Error::Invalid(
                    "101 Switching Protocols without an upgrade",
                ));
            }
            // The final answer to an upgrade: no body, the connection is the new protocol's.
            switched = true;
        }
        let head = buf.split_to(len).freeze();
        // Room for what the proxy adds to a response without growing the map.
        let mut headers = HeaderMap::with_capacity(count + 4);
        let mut length: Option<u64> = None;
        let mut chunked = None::<bool>;
        let mut close = false;
        let mut keep_alive_token = false;
        for &(n0, n1, v0, v1) in &idx[..count] {
            let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize])
                .map_err(|_| H1Error::Invalid("header name"))?;
            let raw = &head[v0 as usize..v1 as usize];
            if name == CONTENT_LENGTH {
                let n = parse_content_length(raw).ok_or(H1Error::Invalid("content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(H1Error::Invalid("content-length"));
                }
                length = Some(n);
            } else if name == TRANSFER_ENCODING {
                // The last coding of the last field decides.
                let last = raw
                    .rsplit(|b| *b == b',')
                    .next()
                    .map(trim_ows)
                    .unwrap_or(b"");
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            } else if name == CONNECTION {
                for token in raw.split(|b| *b == b',').map(trim_ows) {
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
                if only_keep_alive(raw) {
                    // Read here; stripping it later would remove exactly it (and `Keep-Alive`,
                    // hop-by-hop anyway).
                    continue;
                }
            }
            let value = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize))
                .map_err(|_| H1Error::Invalid("header value"))?;
            headers.append(name, value);
        }
        let version = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let mut keep_alive = !close && (minor != 0 || keep_alive_token);
        let framing = if head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            BodyFraming::Empty
        } else if let Some(chunked) = chunked {
            // Transfer-Encoding wins over Content-Length; the pair is suspicious: no reuse.
            keep_alive &= length.is_none();
            if chunked {
                BodyFraming::Chunked
            } else {
                BodyFraming::Close
            }
        } else if let Some(n) = length {
            BodyFraming::Length(n)
        } else {
            BodyFraming::Close
        };
        if framing == BodyFraming::Close {
            keep_alive = false;
        }
        if switched {
            return Ok(Some(Head {
                status,
                version,
                headers,
                framing: BodyFraming::Empty,
                keep_alive: false,
            }));
        }
        return Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// A `Connection` value naming nothing but `keep-alive` (what most HTTP/1.1 peers send). Such
/// a field means nothing past this hop and names no header a proxy must remove besides
/// `Keep-Alive`, which is hop-by-hop anyway: the parsers leave it out of the header map.
pub(crate) fn only_keep_alive(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .map(trim_ows)
        .all(|t| t.eq_ignore_ascii_case(b"keep-alive"))
}

/// `1*DIGIT`, or a list of equal ones (`5, 5`), as RFC 9110 §8.6 allows.
fn parse_content_length(raw: &[u8]) -> Option<u64> {
    let mut value = None;
    for part in raw.split(|b| *b == b',').map(trim_ows) {
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        if value.is_some_and(|v| v != n) {
            return None;
        }
        value = Some(n);
    }
    value
}

fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| *c != b' ' && *c != b'\t')
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| *c != b' ' && *c != b'\t')
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

// ---------------------------------------------------------------------------------------
// The response body.

/// An upstream response's body, read from its connection as it is polled. Dropped before
/// its end, the connection is closed; read to its end cleanly, it goes back to the pool.
///
/// Dropped after its last byte while the request body is still being sent (hyper's server
/// drops a body once its `content-length` is written, and at once for an empty one), the rest
/// of the request body is sent on a task of its own: the client's body is read to its end (its
/// connection stays usable) and the upstream connection goes back to the pool.
pub struct UpstreamBody<Io: Transport> {
    state: BodyState<Io>,
}

impl<Io: Transport> Drop for UpstreamBody<Io> {
    fn drop(&mut self) {
        let BodyState::Streaming(s) = &self.state else {
            return;
        };
        if s.sending.is_none() || !s.decoder.finished() {
            return;
        }
        let BodyState::Streaming(s) = std::mem::replace(&mut self.state, BodyState::Done) else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(finish_sending(*s));
        }
    }
}

/// The rest of a request whose answer was read in full, then its connection back to the pool.
async fn finish_sending<Io: Transport>(mut s: Streaming<Io>) {
    let Some(mut sending) = s.sending.take() else {
        return;
    };
    let stall = &mut s.stall;
    let sent = poll_fn(|cx| {
        let before = sending.progress();
        match sending.poll_rest(&mut s.conn.io, cx) {
            Poll::Ready(r) => Poll::Ready(r.is_ok()),
            Poll::Pending => {
                let Some(stall) = stall.as_mut() else {
                    return Poll::Pending;
                };
                if sending.progress() != before {
                    stall.progressed();
                }
                // An upstream that stops reading the rest is given up on.
                stall.poll_stalled(cx).map(|()| false)
            }
        }
    })
    .await;
    if sent && s.reusable && s.conn.rbuf.is_empty() {
        if let Some(r) = s.release.take() {
            r.put(s.conn);
        }
    }
}

enum BodyState<Io> {
    Done,
    Whole(Bytes),
    Streaming(Box<Streaming<Io>>),
}

struct Streaming<Io> {
    conn: Conn<Io>,
    decoder: Decoder,
    reusable: bool,
    sending: Option<Box<dyn SendRest<Io>>>,
    release: Option<Release<Io>>,
    /// Set by [`UpstreamBody::idle_timeout`]: neither a response byte read nor a request byte
    /// taken for that long fails the body.
    stall: Option<Stall>,
}

enum Decoder {
    Length(u64),
    Chunked(Chunked),
    Close,
}

impl Decoder {
    /// The whole body has been decoded.
    fn finished(&self) -> bool {
        matches!(self, Decoder::Length(0) | Decoder::Chunked(Chunked::End))
    }

    fn new(framing: BodyFraming) -> Decoder {
        match framing {
            BodyFraming::Empty => Decoder::Length(0),
            BodyFraming::Length(n) => Decoder::Length(n),
            BodyFraming::Chunked => Decoder::Chunked(Chunked::Size {
                value: 0,
                digits: 0,
                ext: 0,
            }),
            BodyFraming::Close => Decoder::Close,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Hex digits, then extensions (counted) up to CRLF.
    Size {
        value: u64,
        digits: u8,
        ext: usize,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Trailer lines (dropped) until an empty one; `line` bytes into the current line.
    Trailers {
        line: usize,
        total: usize,
        cr: bool,
    },
    End,
}

impl Chunked {
    /// Decode from the front of `buf`: data when some is there, `None` when more input is
    /// needed or the body ended (`self == End`).
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, H1Error> {
        let bad = || H1Error::Invalid("chunked encoding");
        while !buf.is_empty() {
            match *self {
                Chunked::Size { value, digits, ext } => {
                    let b = buf[0];
                    let _ = buf.split_to(1);
                    // `ext`: 0 in the size's digits, 1 in whitespace after them (only more
                    // whitespace, `;` or CR may follow), 2 and up inside an extension after `;`
                    // (no control bytes but HTAB: a bare LF must not end the line here when
                    // another hop would end it there).
                    let set = |ext| Chunked::Size { value, digits, ext };
                    *self = match b {
                        b'\r' if digits > 0 => Chunked::SizeLf { value },
                        _ if ext >= 2 => {
                            if ext > MAX_CHUNK_EXT || (b < 0x20 && b != b'\t') || b == 0x7f {
                                return Err(bad());
                            }
                            set(ext + 1)
                        }
                        b' ' | b'\t' if digits > 0 => set(1),
                        b';' if digits > 0 => set(2),
                        _ if ext == 1 => return Err(bad()),
                        _ => {
                            let d = (b as char).to_digit(16).ok_or_else(bad)?;
                            if digits >= 16 {
                                return Err(bad());
                            }
                            Chunked::Size {
                                value: value << 4 | u64::from(d),
                                digits: digits + 1,
                                ext,
                            }
                        }
                    };
                }
                Chunked::SizeLf { value } => {
                    if buf[0] != b'\n' {
                        return Err(bad());
                    }
                    let _ = buf.split_to(1);
                    *self = if value == 0 {
                        Chunked::Trailers {
                            line: 0,
                            total: 0,
                            cr: false,
                        }
                    } else {
                        Chunked::Data(value)
                    };
                }
                Chunked::Data(left) => {
                    let n = (buf.len() as u64).min(left);
                    let data = buf.split_to(n as usize).freeze();
                    *self = if n == left {
                        Chunked::DataCr
                    } else {
                        Chunked::Data(left - n)
                    };
                    return Ok(Some(data));
                }
                Chunked::DataCr | Chunked::DataLf => {
                    let want = if *self == Chunked::DataCr {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if buf[0] != want {
                        return Err(bad());
                    }
                    let _ = buf.split_to(1);
                    *self = if want == b'\r' {
                        Chunked::DataLf
                    } else {
                        Chunked::Size {
                            value: 0,
                            digits: 0,
                            ext: 0,
                        }
                    };
                }
                Chunked::Trailers { line, total, cr } => {
                    let b = buf[0];
                    let _ = buf.split_to(1);
                    if total > MAX_TRAILERS {
                        return Err(bad());
                    }
                    *self = match (b, cr) {
                        (b'\n', true) if line == 0 => Chunked::End,
                        (b'\n', true) => Chunked::Trailers {
                            line: 0,
                            total: total + 1,
                            cr: false,
                        },
                        (b'\r', false) => Chunked::Trailers {
                            line,
                            total: total + 1,
                            cr: true,
                        },
                        (b'\r' | b'\n', _) => return Err(bad()),
                        _ if cr => return Err(bad()),
                        _ => Chunked::Trailers {
                            line: line + 1,
                            total: total + 1,
                            cr: false,
                        },
                    };
                }
                Chunked::End => return Ok(None),
            }
        }
        Ok(None)
    }
}

impl<Io: Transport> Streaming<Io> {
    fn state(
        conn: Conn<Io>,
        framing: BodyFraming,
        reusable: bool,
        sending: Option<Box<dyn SendRest<Io>>>,
        release: Release<Io>,
    ) -> BodyState<Io> {
        BodyState::Streaming(Box::new(Streaming {
            conn,
            decoder: Decoder::new(framing),
            reusable,
            sending,
            release: Some(release),
            stall: None,
        }))
    }

    /// The next piece of the body, bounded by the idle timeout when one is set.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, H1Error>>> {
        let before = self.sending.as_ref().map(|s| s.progress());
        let r = self.poll_body(cx);
        let Some(stall) = self.stall.as_mut() else {
            return r;
        };
        if r.is_ready() {
            stall.progressed();
            return r;
        }
        if self.sending.as_ref().map(|s| s.progress()) != before {
            // The upstream took more of the request: a new stall starts now (and is timed:
            // nothing else may wake this body).
            stall.progressed();
        }
        match stall.poll_stalled(cx) {
            Poll::Ready(()) => {
                self.reusable = false;
                self.sending = None;
                Poll::Ready(Some(Err(H1Error::Idle(stall.idle()))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, H1Error>>> {
        loop {
            if let Some(s) = self.sending.as_mut() {
                match s.poll_rest(&mut self.conn.io, cx) {
                    Poll::Ready(Ok(())) => self.sending = None,
                    // The upstream answered and stopped reading: its answer still counts.
                    Poll::Ready(Err(_)) => {
                        self.sending = None;
                        self.reusable = false;
                    }
                    Poll::Pending => {}
                }
            }
            // The body has ended; it is over once the request is sent too.
            let end = || -> Poll<Option<Result<Bytes, H1Error>>> { Poll::Ready(None) };
            let buf = &mut self.conn.rbuf;
            match &mut self.decoder {
                Decoder::Length(0) => {
                    return if self.sending.is_some() {
                        Poll::Pending
                    } else {
                        end()
                    }
                }
                Decoder::Length(left) if !buf.is_empty() => {
                    let n = (buf.len() as u64).min(*left);
                    *left -= n;
                    return Poll::Ready(Some(Ok(buf.split_to(n as usize).freeze())));
                }
                Decoder::Chunked(c) if !buf.is_empty() || *c == Chunked::End => {
                    match c.decode(buf) {
                        Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                        Ok(None) if *c == Chunked::End => {
                            return if self.sending.is_some() {
                                Poll::Pending
                            } else {
                                end()
                            }
                        }
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                Decoder::Close if !buf.is_empty() => {
                    let all = buf.len();
                    return Poll::Ready(Some(Ok(buf.split_to(all).freeze())));
                }
                _ => {}
            }
            match ready!(self.conn.poll_read(cx)) {
                Ok(0) => {
                    return Poll::Ready(match self.decoder {
                        Decoder::Close => {
                            self.reusable = false;
                            // Nothing more reaches an upstream that closed.
                            self.sending = None;
                            None
                        }
                        _ => Some(Err(H1Error::ClosedInBody)),
                    });
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(H1Error::Io(e)))),
            }
        }
    }
}

impl<Io: Transport> UpstreamBody<Io> {
    /// Fail the body when the upstream neither sends a response byte nor takes a request byte
    /// for `idle` (nginx's `proxy_read_timeout`; also bounds sending the rest of a request
    /// whose answer came early). A body already read whole is unaffected.
    pub fn idle_timeout(&mut self, idle: Duration) {
        if let BodyState::Streaming(s) = &mut self.state {
            s.stall = Some(Stall::new(idle));
        }
    }
}

impl<Io: Transport> Body for UpstreamBody<Io> {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        match &mut self.state {
            BodyState::Done => Poll::Ready(None),
            BodyState::Whole(_) => match std::mem::replace(&mut self.state, BodyState::Done) {
                BodyState::Whole(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                _ => Poll::Ready(None),
            },
            BodyState::Streaming(s) => match ready!(s.poll_data(cx)) {
                Some(Ok(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Some(Err(e)) => {
                    self.state = BodyState::Done;
                    Poll::Ready(Some(Err(e)))
                }
                None => {
                    if let BodyState::Streaming(s) =
                        std::mem::replace(&mut self.state, BodyState::Done)
                    {
                        let s = *s;
                        if s.reusable && s.sending.is_none() && s.conn.rbuf.is_empty() {
                            if let Some(r) = s.release {
                                r.put(s.conn);
                            }
                        }
                    }
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Done => true,
            BodyState::Streaming(s) => {
                matches!(s.decoder, Decoder::Length(0)) && s.sending.is_none()
            }
            BodyState::Whole(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Whole(b) => SizeHint::with_exact(b.len() as u64),
            BodyState::Streaming(s) => match s.decoder {
                Decoder::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}

impl<Io: Transport> std::fmt::Debug for UpstreamBody<Io> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamBody")
    }
}

// ---------------------------------------------------------------------------------------
// Upgraded connections (`101 Switching Protocols`).

/// A byte stream both ways: what an upgraded connection becomes.
pub trait Tunnel: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Tunnel for T {}

/// The upstream side of an upgraded exchange, in the `101` response's extensions: the server
/// takes it and joins it to the client's connection.
#[derive(Clone)]
pub struct Upgraded(Arc<std::sync::Mutex<Option<Box<dyn Tunnel>>>>);

impl Upgraded {
    fn new(t: impl Tunnel + 'static) -> Upgraded {
        Upgraded(Arc::new(std::sync::Mutex::new(Some(Box::new(t)))))
    }

    /// The stream, once.
    pub fn take(&self) -> Option<Box<dyn Tunnel>> {
        self.0.lock().ok()?.take()
    }
}

/// A stream whose first bytes were read already: they are read again first.
pub(crate) struct Rewind<I> {
    pub prefix: Bytes,
    pub io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            bytes::Buf::advance(&mut self.prefix, n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------
// The proxy's transport: TCP, or TLS over it.

/// A connection to an upstream: plain TCP or TLS (rustls) over TCP.
pub enum UpstreamIo {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl UpstreamIo {
    fn tcp(&self) -> &tokio::net::TcpStream {
        match self {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_ref().0,
        }
    }
}

impl Transport for UpstreamIo {
    fn idle_usable(&mut self) -> bool {
        // Readable while idle means EOF, a reset or bytes nobody asked for. The readiness
        // is the one the runtime cached: no system call unless the socket says readable.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        self.tcp().poll_peek(&mut cx, &mut buf).is_pending()
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Makes upstream connections: TCP (connect timeout, `TCP_NODELAY`), then TLS for https.
#[derive(Clone)]
pub struct Connector {
    connect_timeout: std::time::Duration,
    tls: tokio_rustls::TlsConnector,
}

impl Connector {
    pub fn new(connect_timeout: std::time::Duration, tls: &rustls::ClientConfig) -> Connector {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Connector {
            connect_timeout,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        }
    }
}

/// How a pool makes connections (the proxy's [`Connector`], or in-memory ones in tests).
pub trait Connect: Send + Sync + 'static {
    type Io: Transport;
    fn connect(
        &self,
        https: bool,
        authority: &http::uri::Authority,
    ) -> impl std::future::Future<Output = Result<Self::Io, BoxError>> + Send;
}

impl Connect for Connector {
    type Io = UpstreamIo;

    async fn connect(
        &self,
        https: bool,
        authority: &http::uri::Authority,
    ) -> Result<UpstreamIo, BoxError> {
        let host = authority.host();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::time::timeout(self.connect_timeout, connect_tcp(bare, port))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("tcp connect timed out after {:?}", self.connect_timeout),
                )
            })??;
        tcp.set_nodelay(true)?;
        if !https {
            return Ok(UpstreamIo::Plain(tcp));
        }
        let name = rustls_pki_types::ServerName::try_from(bare.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{bare}: {e}")))?;
        let tls = self.tls.connect(name, tcp).await?;
        Ok(UpstreamIo::Tls(Box::new(tls)))
    }
}

/// TCP to the first address of `host` that accepts (IP literals without a lookup).
async fn connect_tcp(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("tcp connect error: {e}")));
    }
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => io::Error::new(e.kind(), format!("tcp connect error: {e}")),
        None => io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address")),
    })
}

/// The fuzz target `upstream_response` (see `crate::fuzzing`): an upstream's answer, bytes as
/// they come, read by this codec's head parser and body decoder. Input: a split selector, a
/// HEAD flag, then the bytes. Checked: nothing panics; reading them in two pieces (split where
/// the selector says) gives the same head, the same body bytes and the same error-ness as
/// reading them whole; no more body bytes than input bytes.
pub(crate) fn fuzz_response(data: &[u8]) {
    let [sel, flags, wire @ ..] = data else {
        return;
    };
    let head_request = flags & 1 == 1;
    let split = usize::from(*sel).min(wire.len());
    let whole = read_response(&[wire], head_request);
    let pieces = read_response(&[&wire[..split], &wire[split..]], head_request);
    assert_eq!(whole, pieces, "split at {split}");
    if let Ok(Some((_, body, _))) = &whole {
        assert!(body.len() <= wire.len());
    }
}

/// What reading these pieces in turn gave: the head (status, fields, framing), the body bytes
/// decoded, whether the body ended; or that it failed.
type ReadOutcome = Result<Option<(String, Vec<u8>, bool)>, ()>;

fn read_response(pieces: &[&[u8]], head_request: bool) -> ReadOutcome {
    let mut buf = BytesMut::new();
    let mut head = None;
    let mut decoder = None;
    let mut body = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        if head.is_none() {
            match parse_head(&mut buf, head_request, false) {
                Ok(Some(h)) => {
                    let fields: Vec<String> = h
                        .headers
                        .iter()
                        .map(|(n, v)| format!("{n}={:?}", v.as_bytes()))
                        .collect();
                    head = Some(format!(
                        "{} {:?} {:?} ka={} {}",
                        h.status,
                        h.version,
                        h.framing,
                        h.keep_alive,
                        fields.join(",")
                    ));
                    decoder = Some(Decoder::new(h.framing));
                }
                Ok(None) if buf.len() >= MAX_HEAD_BYTES => return Err(()),
                Ok(None) => continue,
                Err(_) => return Err(()),
            }
        }
        let Some(dec) = decoder.as_mut() else {
            continue;
        };
        match dec {
            Decoder::Length(left) => {
                let n = (buf.len() as u64).min(*left);
                *left -= n;
                body.extend_from_slice(&buf.split_to(n as usize));
            }
            Decoder::Chunked(c) => loop {
                match c.decode(&mut buf) {
                    Ok(Some(d)) => body.extend_from_slice(&d),
                    Ok(None) => break,
                    Err(_) => return Err(()),
                }
            },
            Decoder::Close => body.extend_from_slice(&buf.split_to(buf.len())),
        }
    }
    Ok(head.map(|h| {
        let ended = decoder.is_some_and(|d| d.finished());
        (h, body, ended)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use std::future::Future;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn head_of(raw: &[u8], head_request: bool) -> Result<Option<(Head, BytesMut)>, H1Error> {
        let mut buf = BytesMut::from(raw);
        Ok(parse_head(&mut buf, head_request, false)?.map(|h| (h, buf)))
    }

    fn framing(raw: &str) -> (BodyFraming, bool) {
        let (h, _) = head_of(raw.as_bytes(), false)
            .expect("parses")
            .expect("complete");
        (h.framing, h.keep_alive)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        use BodyFraming::*;
        let ok = "HTTP/1.1 200 OK\r\n";
        assert_eq!(
            framing(&format!("{ok}content-length: 5\r\n\r\n")),
            (Length(5), true)
        );
        assert_eq!(
            framing(&format!("{ok}content-length: 5, 5\r\n\r\n")),
            (Length(5), true)
        );
        assert_eq!(
            framing(&format!("{ok}transfer-encoding: chunked\r\n\r\n")),
            (Chunked, true)
        );
        assert_eq!(
            framing(&format!("{ok}transfer-encoding: gzip, chunked\r\n\r\n")),
            (Chunked, true)
        );
        // Another coding last: the body runs until close.
        assert_eq!(
            framing(&format!("{ok}transfer-encoding: gzip\r\n\r\n")),
            (Close, false)
        );
        // TE wins over CL, and such a connection is not reused.
        assert_eq!(
            framing(&format!(
                "{ok}content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
            )),
            (Chunked, false)
        );
        assert_eq!(framing(&format!("{ok}\r\n")), (Close, false));
        assert_eq!(
            framing(&format!(
                "{ok}connection: close\r\ncontent-length: 1\r\n\r\n"
            )),
            (Length(1), false)
        );
        assert_eq!(framing("HTTP/1.1 204 No Content\r\n\r\n"), (Empty, true));
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"),
            (Empty, true)
        );
        // HTTP/1.0: reused only when it says keep-alive.
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"),
            (Length(1), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n"),
            (Length(1), true)
        );
        // The answer to HEAD has no body, whatever its length says.
        let (h, _) = head_of(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true)
            .expect("parses")
            .expect("complete");
        assert_eq!(h.framing, Empty);
        assert_eq!(h.headers["content-length"], "9");
    }

    #[test]
    fn bad_response_heads_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
        ] {
            assert!(head_of(raw.as_bytes(), false).is_err(), "{raw:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(matches!(
            head_of(raw.as_bytes(), false),
            Err(H1Error::HeadTooLarge)
        ));
    }

    #[test]
    fn interim_answers_are_skipped_and_the_body_stays_in_the_buffer() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\nhiHTTP";
        let (h, rest) = head_of(raw, false).expect("parses").expect("complete");
        assert_eq!(h.status, 201);
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert!(h.headers.get("link").is_none());
        assert_eq!(&rest[..], b"hiHTTP");
        // Incomplete: nothing consumed.
        let partial = b"HTTP/1.1 200 OK\r\ncontent-len";
        let mut buf = BytesMut::from(&partial[..]);
        assert!(parse_head(&mut buf, false, false)
            .expect("so far so good")
            .is_none());
        assert_eq!(buf.len(), partial.len());
    }

    /// The chunked decoder fed at every split point gives the same data and ends.
    #[test]
    fn chunked_decoding_at_every_split() {
        let wire =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: t\r\n\r\n";
        for split in 0..=wire.len() {
            let mut dec = Chunked::Size {
                value: 0,
                digits: 0,
                ext: 0,
            };
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(part);
                while let Some(d) = dec.decode(&mut buf).expect("valid") {
                    out.extend_from_slice(&d);
                }
            }
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz", "split at {split}");
            assert_eq!(dec, Chunked::End, "split at {split}");
            assert!(buf.is_empty());
        }
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\n",
            b"11111111111111111\r\n",
            b"\r\n",
            // Another hop could read these lines differently (review finding): a second number
            // after the size, a bare LF or a NUL inside an extension.
            b"5 6\r\nhello\r\n",
            b"3;\nabc\r\n0\r\n\r\n",
            b"3;a\x00b\r\nabc\r\n",
        ] {
            let mut dec = Chunked::Size {
                value: 0,
                digits: 0,
                ext: 0,
            };
            let mut buf = BytesMut::from(bad);
            let r = (|| {
                while dec.decode(&mut buf)?.is_some() {}
                Ok::<_, H1Error>(())
            })();
            assert!(r.is_err(), "{bad:?}");
        }
    }

    fn request<B>(method: Method, headers: &[(&str, &str)], body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = http::Uri::from_static("/p?q=1");
        for (n, v) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        req
    }

    fn encoded<B: Body>(req: &Request<B>) -> String {
        let mut buf = Vec::new();
        encode_head(&mut buf, req);
        String::from_utf8(buf).expect("ascii")
    }

    #[test]
    fn request_framing_comes_from_the_body() {
        let get = request(Method::GET, &[("host", "a")], Empty::<Bytes>::new());
        assert_eq!(encoded(&get), "GET /p?q=1 HTTP/1.1\r\nhost: a\r\n\r\n");
        let post = request(Method::POST, &[("host", "a")], Empty::<Bytes>::new());
        assert_eq!(
            encoded(&post),
            "POST /p?q=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"
        );
        // A known size is the length sent, whatever the header said; TE never copied.
        let sized = request(
            Method::PUT,
            &[("content-length", "99"), ("transfer-encoding", "chunked")],
            Full::new(Bytes::from_static(b"abc")),
        );
        assert_eq!(
            encoded(&sized),
            "PUT /p?q=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\n"
        );
        let stream = futures_stream(vec![b"ab".to_vec()]);
        let chunked = request(Method::POST, &[("content-length", "2")], stream);
        assert_eq!(
            encoded(&chunked),
            "POST /p?q=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    /// A body of pieces, size unknown (chunked on the wire).
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn futures_stream(parts: Vec<Vec<u8>>) -> Chunks {
        Chunks(parts.into_iter().map(Bytes::from).collect())
    }

    /// A body fed by the test as it goes.
    struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    /// An in-memory upstream connection that is always usable while idle.
    struct Mem(DuplexStream);

    impl Transport for Mem {
        fn idle_usable(&mut self) -> bool {
            true
        }
    }
    impl AsyncRead for Mem {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }
    impl AsyncWrite for Mem {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    type TestPool = crate::proxy::pool::Pool<OneConn>;

    /// Hands out one prepared in-memory connection.
    struct OneConn(std::sync::Mutex<Option<DuplexStream>>);

    impl Connect for OneConn {
        type Io = Mem;
        async fn connect(&self, _: bool, _: &http::uri::Authority) -> Result<Mem, BoxError> {
            let io = self
                .0
                .lock()
                .expect("lock")
                .take()
                .ok_or("no more connections")?;
            Ok(Mem(io))
        }
    }

    fn pool_with_one_conn() -> (TestPool, DuplexStream) {
        let (client, server) = tokio::io::duplex(1024);
        let pool = TestPool::new(
            OneConn(std::sync::Mutex::new(Some(client))),
            crate::proxy::pool::PoolConfig::default(),
        );
        (pool, server)
    }

    async fn read_until(server: &mut DuplexStream, end: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        while !got.windows(end.len()).any(|w| w == end) {
            let n = server.read(&mut b).await.expect("read");
            assert!(
                n > 0,
                "closed early; got {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&b[..n]);
        }
        got
    }

    fn endpoint() -> (http::uri::Scheme, http::uri::Authority) {
        (
            http::uri::Scheme::HTTP,
            http::uri::Authority::from_static("up:80"),
        )
    }

    #[tokio::test]
    async fn chunked_request_and_streamed_response_then_reuse() {
        let (pool, mut server) = pool_with_one_conn();
        let (s, a) = endpoint();
        let up = tokio::spawn(async move {
            let got = read_until(&mut server, b"0\r\n\r\n").await;
            server
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
                .await
                .expect("write");
            // The rest only after the client read the first piece (the body streams).
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            server
                .write_all(b"2\r\nde\r\n0\r\n\r\n")
                .await
                .expect("write");
            let second = read_until(&mut server, b"\r\n\r\n").await;
            server
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .expect("write");
            (got, second, server)
        });
        let body = futures_stream(vec![b"hello ".to_vec(), b"world".to_vec()]);
        let resp = pool
            .send(&s, &a, request(Method::POST, &[], body))
            .await
            .expect("response");
        assert_eq!(resp.status(), 200);
        let data = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(data, "abcde");
        // The same (only) connection serves the next request.
        let resp = pool
            .send(&s, &a, request(Method::GET, &[], Empty::<Bytes>::new()))
            .await
            .expect("second response on the same connection");
        assert_eq!(resp.status(), 204);
        let (got, second, _server) = up.await.expect("upstream");
        let got = String::from_utf8(got).expect("ascii");
        assert!(
            got.starts_with(
                "POST /p?q=1 HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
            "{got}"
        );
        assert!(
            got.ends_with("6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"),
            "{got}"
        );
        assert!(second.starts_with(b"GET /p?q=1 HTTP/1.1\r\n"));
        assert_eq!(
            pool.stats()
                .reuses
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    /// An upstream that answers before the request body is complete is heard at once, and the
    /// rest of the body is still sent to it while its answer streams (a full-duplex echo).
    #[tokio::test]
    async fn early_answer_while_the_body_is_still_coming() {
        let (pool, mut server) = pool_with_one_conn();
        let (s, a) = endpoint();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let body = Channel(rx);
        let up = tokio::spawn(async move {
            let got = read_until(&mut server, b"first").await;
            server
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                .await
                .expect("write");
            let rest = read_until(&mut server, b"0\r\n\r\n").await;
            server
                .write_all(b"4\r\nlast\r\n0\r\n\r\n")
                .await
                .expect("write");
            (got, rest)
        });
        tx.send(Bytes::from_static(b"first")).await.expect("send");
        let resp = pool
            .send(&s, &a, request(Method::POST, &[], body))
            .await
            .expect("the head arrives while the body is open");
        let mut body = resp.into_body();
        let first = body
            .frame()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .expect("data");
        assert_eq!(first, "first");
        tx.send(Bytes::from_static(b"second")).await.expect("send");
        drop(tx);
        let last = body
            .frame()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .expect("data");
        assert_eq!(last, "last");
        assert!(body.frame().await.is_none());
        let (_, rest) = up.await.expect("upstream");
        assert!(
            rest.ends_with(b"6\r\nsecond\r\n0\r\n\r\n"),
            "{:?}",
            String::from_utf8_lossy(&rest)
        );
        // Request and answer both complete: the connection is kept.
        assert_eq!(pool.idle_count(&s, &a), 1);
    }

    /// A PUT whose body the test feeds (`first` sent), to an upstream that answers `200 ok` in
    /// full after `first` and then reads until `until`; returns once the client read `ok`.
    async fn early_complete_answer(
        until: &'static [u8],
    ) -> (
        TestPool,
        tokio::sync::mpsc::Sender<Bytes>,
        UpstreamBody<Mem>,
        tokio::task::JoinHandle<(Vec<u8>, DuplexStream)>,
    ) {
        let (pool, mut server) = pool_with_one_conn();
        let (s, a) = endpoint();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let up = tokio::spawn(async move {
            read_until(&mut server, b"first").await;
            server
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .expect("write");
            let rest = read_until(&mut server, until).await;
            (rest, server)
        });
        tx.send(Bytes::from_static(b"first")).await.expect("send");
        let resp = pool
            .send(&s, &a, request(Method::PUT, &[], Channel(rx)))
            .await
            .expect("head");
        let mut body = resp.into_body();
        let ok = body.frame().await.expect("frame").expect("ok");
        assert_eq!(ok.into_data().expect("data"), "ok");
        (pool, tx, body, up)
    }

    /// An upstream that answers in full before reading the body (nginx's `return`): the
    /// answer's body ends only once the request body is sent, so the client's body is read
    /// to its end and neither connection is spoiled.
    #[tokio::test]
    async fn a_complete_early_answer_ends_after_the_request_body() {
        let (pool, tx, mut body, up) = early_complete_answer(b"second").await;
        let (s, a) = endpoint();
        assert!(!body.is_end_stream(), "the request is still being sent");
        {
            let mut next = std::pin::pin!(body.frame());
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(
                next.as_mut().poll(&mut cx).is_pending(),
                "ends after the request"
            );
        }
        tx.send(Bytes::from_static(b"second")).await.expect("send");
        drop(tx);
        assert!(body.frame().await.is_none());
        let (rest, _server) = up.await.expect("upstream");
        assert!(String::from_utf8_lossy(&rest).contains("6\r\nsecond"));
        assert_eq!(pool.idle_count(&s, &a), 1, "reusable");
    }

    /// The same, with the answer's body dropped after its last byte (as hyper's server does
    /// once the `content-length` is written): the rest of the request is still sent, and the
    /// connection comes back to the pool.
    #[tokio::test]
    async fn a_dropped_complete_answer_still_sends_the_rest_of_the_request() {
        let (pool, tx, body, up) = early_complete_answer(b"0\r\n\r\n").await;
        let (s, a) = endpoint();
        drop(body);
        tx.send(Bytes::from_static(b"second")).await.expect("send");
        drop(tx);
        let (rest, _server) = up.await.expect("upstream");
        assert!(String::from_utf8_lossy(&rest).contains("6\r\nsecond\r\n0\r\n\r\n"));
        // The finishing task gives the connection back (bounded wait: it runs on this runtime).
        for _ in 0..100 {
            if pool.idle_count(&s, &a) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.idle_count(&s, &a), 1, "reusable");
    }

    /// A response body that trickles is not cut while it moves; once the upstream sends
    /// nothing for the idle timeout the body fails, and the connection is not reused.
    #[tokio::test(start_paused = true)]
    async fn a_response_body_the_upstream_stops_sending_fails_after_the_idle_timeout() {
        let (pool, mut server) = pool_with_one_conn();
        let (s, a) = endpoint();
        let up = tokio::spawn(async move {
            read_until(&mut server, b"\r\n\r\n").await;
            server
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await
                .expect("write");
            for piece in [&b"de"[..], b"f"] {
                tokio::time::sleep(Duration::from_secs(3)).await;
                server.write_all(piece).await.expect("write");
            }
            // Then silence, the connection held open.
            server
        });
        let resp = pool
            .send(&s, &a, request(Method::GET, &[], Empty::<Bytes>::new()))
            .await
            .expect("head");
        let mut body = resp.into_body();
        body.idle_timeout(Duration::from_secs(5));
        let mut got = Vec::new();
        let mut last = tokio::time::Instant::now();
        let read = async {
            loop {
                match body.frame().await.expect("no end before the 10 bytes") {
                    Ok(f) => {
                        got.extend_from_slice(&f.into_data().expect("data"));
                        last = tokio::time::Instant::now();
                    }
                    Err(e) => break e,
                }
            }
        };
        let err = tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the body fails well before 60 s");
        // Paused clock: exactly the timeout after the last byte.
        assert_eq!(last.elapsed(), Duration::from_secs(5));
        assert_eq!(got, b"abcdef", "3 s pauses are under the 5 s timeout");
        assert!(
            matches!(err, H1Error::Idle(d) if d == Duration::from_secs(5)),
            "{err:?}"
        );
        assert!(body.frame().await.is_none(), "failed bodies end");
        let server = up.await.expect("upstream");
        assert_eq!(pool.idle_count(&s, &a), 0, "not reused");
        drop(server);
    }

    /// A PUT whose body the test feeds (`first` sent) to an upstream that answers `answer` once
    /// it has `first`, then reads until `until` (nothing more when `None`) and holds the
    /// connection open; the response's body gets a 5 s idle timeout.
    async fn put_answered_early(
        answer: &'static [u8],
        until: Option<&'static [u8]>,
    ) -> (
        TestPool,
        tokio::sync::mpsc::Sender<Bytes>,
        UpstreamBody<Mem>,
        tokio::task::JoinHandle<DuplexStream>,
    ) {
        let (pool, mut server) = pool_with_one_conn();
        let (s, a) = endpoint();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let up = tokio::spawn(async move {
            read_until(&mut server, b"first").await;
            server.write_all(answer).await.expect("write");
            if let Some(until) = until {
                read_until(&mut server, until).await;
            }
            server
        });
        tx.send(Bytes::from_static(b"first")).await.expect("send");
        let resp = pool
            .send(&s, &a, request(Method::PUT, &[], Channel(rx)))
            .await
            .expect("head");
        let mut body = resp.into_body();
        body.idle_timeout(Duration::from_secs(5));
        (pool, tx, body, up)
    }

    /// An early answer whose upload then completes: the poll that finishes sending is also the
    /// one that starts timing the silence after it (a response the upstream then never ends
    /// fails after the idle timeout instead of waiting for ever).
    #[tokio::test(start_paused = true)]
    async fn silence_after_an_early_answers_upload_ends_is_timed_too() {
        // The whole request is read; the rest of the answer never comes.
        let (_pool, tx, mut body, up) = put_answered_early(
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
            Some(b"0\r\n\r\n"),
        )
        .await;
        let first = body.frame().await.expect("frame").expect("ok");
        assert_eq!(first.into_data().expect("data"), "0123456789");
        tx.send(Bytes::from_static(b"second")).await.expect("send");
        drop(tx);
        let next = tokio::time::timeout(Duration::from_secs(60), body.frame())
            .await
            .expect("the body fails well before 60 s");
        assert!(
            matches!(next, Some(Err(H1Error::Idle(_)))),
            "{:?}",
            next.map(|r| r.map(|f| f.into_data().ok()))
        );
        drop(up.await.expect("upstream"));
    }

    /// `101` is a final answer only to a request that asked for an upgrade (then it has no
    /// body, the connection is not reused, and what follows its head stays in the buffer).
    #[test]
    fn switching_protocols_only_when_asked() {
        let wire = &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nframes"[..];
        let mut buf = BytesMut::from(wire);
        let h = parse_head(&mut buf, false, true)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(h.framing, BodyFraming::Empty);
        assert!(!h.keep_alive);
        assert_eq!(h.headers["upgrade"], "websocket");
        assert_eq!(&buf[..], b"frames");
        let mut buf = BytesMut::from(wire);
        assert!(
            parse_head(&mut buf, false, false).is_err(),
            "not asked: refused"
        );
    }

    /// An early complete answer dropped while the rest of the request is still to be sent, to
    /// an upstream that stopped reading: the finishing task gives up after the idle timeout,
    /// drops the client's body and does not pool the connection.
    #[tokio::test(start_paused = true)]
    async fn sending_the_rest_to_an_upstream_that_stopped_reading_is_given_up() {
        // Reads nothing after `first`: the 1 KiB duplex buffer fills.
        let (pool, tx, mut body, up) =
            put_answered_early(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", None).await;
        let (s, a) = endpoint();
        let ok = body.frame().await.expect("frame").expect("ok");
        assert_eq!(ok.into_data().expect("data"), "ok");
        drop(body);
        let t0 = tokio::time::Instant::now();
        tx.send(Bytes::from(vec![b'x'; 8192])).await.expect("send");
        // The finishing task drops the request body when it gives up.
        tokio::time::timeout(Duration::from_secs(60), tx.closed())
            .await
            .expect("given up well before 60 s");
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
        assert_eq!(pool.idle_count(&s, &a), 0, "not reused");
        drop(up.await.expect("upstream"));
    }

    #[tokio::test]
    async fn a_body_shorter_than_announced_fails_and_a_close_delimited_answer_ends_at_eof() {
        let (pool, mut server) = pool_with_one_conn();
        let (s, a) = endpoint();
        let up = tokio::spawn(async move {
            let got = read_until(&mut server, b"\r\n\r\n").await;
            server
                .write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil")
                .await
                .expect("write");
            server.write_all(b" close").await.expect("write");
            drop(server);
            got
        });
        let resp = pool
            .send(&s, &a, request(Method::GET, &[], Empty::<Bytes>::new()))
            .await
            .expect("response");
        let data = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(data, "until close");
        up.await.expect("upstream");
        assert_eq!(pool.idle_count(&s, &a), 0, "never reused");

        // A body announced as 10 bytes that ends after 3: an error, not a short request.
        let (pool, mut server) = pool_with_one_conn();
        let up = tokio::spawn(async move { read_until(&mut server, b"abc").await });
        let body = futures_stream(vec![b"abc".to_vec()]);
        struct Lying(Chunks);
        impl Body for Lying {
            type Data = Bytes;
            type Error = std::io::Error;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
                Pin::new(&mut self.0).poll_frame(cx)
            }
            fn size_hint(&self) -> SizeHint {
                SizeHint::with_exact(10)
            }
        }
        let e = pool
            .send(&s, &a, request(Method::POST, &[], Lying(body)))
            .await
            .expect_err("short body");
        assert_eq!(
            crate::proxy::error_chain(&e),
            "request failed: request body of 10 bytes announced, 3 sent"
        );
        up.await.expect("upstream");
    }
}
