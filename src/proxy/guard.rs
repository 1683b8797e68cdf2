//! The HTTP/1 request-head guard: our own check of every request head before hyper sees it.
//!
//! hyper resolves some ambiguous framing instead of refusing it (Content-Length together with
//! Transfer-Encoding: it drops the length; a repeated identical Content-Length: it keeps one).
//! A proxy must refuse those (RFC 9112 §6.1, §6.3): the next hop may frame differently and a
//! second request can hide in the body. So the client connection's bytes pass through
//! [`GuardedIo`], which follows the HTTP/1 message framing and holds each request head back
//! until it is complete and checked:
//!
//! ```text
//! socket ─▶ head (parsed with httparse, framing checked; held until complete) ─▶ hyper
//!        ─▶ body (Content-Length: counted; chunked: chunk lines parsed) ─▶ hyper
//! ```
//! Reads go into hyper's own buffer and are checked there; only a head (or chunk line) that
//! is not complete yet is moved to the guard's buffer until the rest arrives. A body with a
//! known length is read no further than its end, so the next head is always checked.
//!
//! A refused head never reaches hyper. In its place hyper reads a stand-in request and then
//! end of stream; the stand-in's index is recorded in [`ConnGuard`], and the service answers
//! it with the refusal's status (400, 414 or 431) and `connection: close`. So refusals are
//! answered in order after any pipelined requests before them, and are logged and mapped to
//! HTTP in the one place every error is. Bytes after a refused head never reach hyper.
//!
//! HTTP/2 connections (prior-knowledge preface) pass through untouched: h2 frames its own
//! messages and hyper's h2 rejects connection-specific headers itself.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// What a connection's guard tells its service: which request (by index on the connection)
/// is the stand-in for a refused head, and why.
#[derive(Debug)]
pub struct ConnGuard {
    refused_at: AtomicU64,
    refusal: OnceLock<Refusal>,
    served: AtomicU64,
}

impl Default for ConnGuard {
    fn default() -> Self {
        ConnGuard {
            refused_at: AtomicU64::new(u64::MAX),
            refusal: OnceLock::new(),
            served: AtomicU64::new(0),
        }
    }
}

impl ConnGuard {
    /// Called once per request the service receives, in order: the refusal if this request
    /// is the stand-in for a refused head.
    pub fn next_request(&self) -> Option<Refusal> {
        let i = self.served.fetch_add(1, Ordering::Relaxed);
        if i == self.refused_at.load(Ordering::Acquire) {
            self.refusal.get().copied()
        } else {
            None
        }
    }

    fn refuse(&self, index: u64, why: Refusal) {
        let _ = self.refusal.set(why);
        self.refused_at.store(index, Ordering::Release);
    }
}

/// What hyper reads in place of a refused head: a request it parses, answered by the service
/// from [`ConnGuard`]. Then end of stream.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nhost: refused.invalid\r\n\r\n";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Read size while a head (or a chunk-size line) is being collected.
const HEAD_READ: usize = 8 * 1024;
/// Room in hyper's buffer from which a new head is read (and checked) in place.
const MIN_IN_PLACE: usize = 1024;

/// Where the reader is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connection start: HTTP/2 preface or HTTP/1 head.
    Start,
    Head,
    /// Body bytes still to come with a known length.
    Length(u64),
    Chunked(Chunk),
    /// HTTP/2: not ours to frame.
    Passthrough,
    /// Refused or broken framing: what is buffered goes to hyper, then end of stream.
    Closing,
}

/// The chunked-body grammar (RFC 9112 §7.1), as hyper's decoder reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { digits: u8, size: u64 },
    SizeLws { size: u64 },
    Ext { size: u64 },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

enum Step {
    /// Consumed this many bytes; the phase may have changed.
    Took(usize),
    /// More input is needed.
    NeedMore,
    /// The head starting here is refused.
    Refuse(Refusal),
}

/// A client connection's stream with its request heads checked; see the module docs.
pub struct GuardedIo<T> {
    /// The stream, behind a limit that is lifted except for direct body reads (so a direct
    /// read never runs past the body into the next head, and never zeroes hyper's buffer).
    inner: tokio::io::Take<T>,
    guard: Arc<ConnGuard>,
    limits: HeadLimits,
    phase: Phase,
    /// Bytes read but not yet handed to hyper: `buf[out..scanned]` is checked and may go,
    /// `buf[scanned..end]` is not yet. `buf` only grows (kept for the connection, like
    /// hyper's own read buffer), so reads never re-zero it.
    buf: Vec<u8>,
    out: usize,
    scanned: usize,
    end: usize,
    /// How far into the current head no end of head was found (no re-parse per byte).
    searched: usize,
    /// Request heads checked so far (the next head's index).
    heads: u64,
    eof: bool,
    /// A head was refused: after the stand-in, reads never complete. (End of stream would
    /// make hyper drop the connection before it answers; the stand-in's answer closes it.)
    refused: bool,
}

impl<T: AsyncRead> GuardedIo<T> {
    pub fn new(inner: T, guard: Arc<ConnGuard>, limits: HeadLimits) -> Self {
        use tokio::io::AsyncReadExt;
        GuardedIo {
            inner: inner.take(u64::MAX),
            guard,
            limits,
            phase: Phase::Start,
            buf: Vec::new(),
            out: 0,
            scanned: 0,
            end: 0,
            searched: 0,
            heads: 0,
            eof: false,
            refused: false,
        }
    }

    /// Check `rest`, the bytes after those already checked: how many of them may go to hyper.
    fn scan(&mut self, rest: &[u8]) -> Step {
        if rest.is_empty() {
            return Step::NeedMore;
        }
        match self.phase {
            Phase::Start => {
                let n = rest.len().min(H2_PREFACE.len());
                if rest[..n] != H2_PREFACE[..n] {
                    self.phase = Phase::Head;
                    Step::Took(0)
                } else if n == H2_PREFACE.len() {
                    self.phase = Phase::Passthrough;
                    Step::Took(rest.len())
                } else if self.eof {
                    self.phase = Phase::Head;
                    Step::Took(0)
                } else {
                    Step::NeedMore
                }
            }
            Phase::Head => {
                // Parse on the first bytes, then again only when a line has ended since (a
                // head trickled byte by byte is parsed once per line, not once per byte).
                let new_line = rest[self.searched..].contains(&b'\n');
                if self.searched > 0 && !new_line && rest.len() <= self.limits.max_bytes {
                    self.searched = rest.len();
                    return Step::NeedMore;
                }
                self.head(rest)
            }
            Phase::Length(n) => {
                let k = usize::try_from(n).map_or(rest.len(), |n| n.min(rest.len()));
                let left = n - k as u64;
                self.phase = if left == 0 {
                    Phase::Head
                } else {
                    Phase::Length(left)
                };
                Step::Took(k)
            }
            Phase::Chunked(c) => {
                let (took, next) = chunk_step(c, rest);
                self.phase = match next {
                    Some(ChunkNext::In(c)) => Phase::Chunked(c),
                    Some(ChunkNext::Done) => Phase::Head,
                    // hyper's decoder fails on the same bytes and the connection ends.
                    None => Phase::Closing,
                };
                if took == 0 && self.phase == Phase::Chunked(c) {
                    Step::NeedMore
                } else {
                    Step::Took(took)
                }
            }
            Phase::Passthrough | Phase::Closing => Step::Took(rest.len()),
        }
    }

    fn head(&mut self, rest: &[u8]) -> Step {
        match check_head(rest, self.limits) {
            HeadCheck::Complete { len, body } => {
                self.heads += 1;
                self.searched = 0;
                self.phase = match body {
                    Body::None => Phase::Head,
                    Body::Length(n) => Phase::Length(n),
                    Body::Chunked => Phase::Chunked(Chunk::Size { digits: 0, size: 0 }),
                };
                Step::Took(len)
            }
            HeadCheck::Partial => {
                self.searched = rest.len();
                Step::NeedMore
            }
            HeadCheck::Refused(why) => Step::Refuse(why),
        }
    }

    /// Replace the unchecked bytes with the stand-in request and end the stream after it.
    fn refuse(&mut self, why: Refusal) {
        self.guard.refuse(self.heads, why);
        self.end = self.scanned;
        self.put(STAND_IN);
        self.phase = Phase::Closing;
        self.eof = true;
        self.refused = true;
    }

    fn put(&mut self, bytes: &[u8]) {
        let to = self.end + bytes.len();
        if self.buf.len() < to {
            self.buf.resize(to, 0);
        }
        self.buf[self.end..to].copy_from_slice(bytes);
        self.end = to;
    }
}

/// What a client connection speaks, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    Http2,
}

impl<T: AsyncRead + Unpin> GuardedIo<T> {
    /// Read until the first bytes tell the HTTP/2 preface from an HTTP/1 request; they stay
    /// buffered for hyper. (Doing it here, once, spares every later read the rewind layer of
    /// hyper-util's protocol-detecting server.) End of stream or a read error: HTTP/1, and
    /// hyper then sees the end (or an empty request) itself.
    pub async fn sniff(&mut self) -> Protocol {
        std::future::poll_fn(|cx| self.poll_sniff(cx)).await
    }

    fn poll_sniff(&mut self, cx: &mut Context<'_>) -> Poll<Protocol> {
        loop {
            match self.phase {
                Phase::Start => {}
                Phase::Passthrough => return Poll::Ready(Protocol::Http2),
                _ => return Poll::Ready(Protocol::Http1),
            }
            let buf = std::mem::take(&mut self.buf);
            let step = self.scan(&buf[self.scanned..self.end]);
            self.buf = buf;
            if let Step::Took(n) = step {
                self.scanned += n;
                continue;
            }
            if self.eof {
                return Poll::Ready(Protocol::Http1);
            }
            if self.buf.len() - self.end < H2_PREFACE.len() {
                let grow = self.end + HEAD_READ;
                self.buf.resize(grow, 0);
            }
            let mut rb = ReadBuf::new(&mut self.buf[self.end..]);
            match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    self.end += n;
                    if n == 0 {
                        self.eof = true;
                    }
                }
                Poll::Ready(Err(_)) => self.eof = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            // Checked bytes first.
            if this.out < this.scanned {
                let n = (this.scanned - this.out).min(dst.remaining());
                dst.put_slice(&this.buf[this.out..this.out + n]);
                this.out += n;
                if this.out == this.end {
                    this.out = 0;
                    this.scanned = 0;
                    this.end = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let buf = std::mem::take(&mut this.buf);
            let step = this.scan(&buf[this.scanned..this.end]);
            this.buf = buf;
            match step {
                Step::Took(n) => {
                    this.scanned += n;
                    continue;
                }
                Step::Refuse(why) => {
                    this.refuse(why);
                    continue;
                }
                Step::NeedMore => {}
            }
            if this.eof {
                // A partial head or body at end of stream: hyper sees what there is.
                let n = this.end - this.scanned;
                if n > 0 {
                    this.scanned += n;
                    continue;
                }
                if this.refused {
                    return Poll::Pending;
                }
                return Poll::Ready(Ok(()));
            }
            // Nothing buffered and the next bytes are body data: read straight into hyper's
            // buffer, no further than the data goes.
            if this.end == 0 {
                let direct = match this.phase {
                    Phase::Passthrough => Some(u64::MAX),
                    Phase::Length(n) | Phase::Chunked(Chunk::Data(n)) => Some(n),
                    _ => None,
                };
                if let Some(limit) = direct {
                    let before = dst.filled().len();
                    this.inner.set_limit(limit);
                    let polled = Pin::new(&mut this.inner).poll_read(cx, dst);
                    this.inner.set_limit(u64::MAX);
                    ready!(polled)?;
                    let n = dst.filled().len() - before;
                    if n > 0 {
                        this.phase = match this.phase {
                            Phase::Length(l) if l == n as u64 => Phase::Head,
                            Phase::Length(l) => Phase::Length(l - n as u64),
                            Phase::Chunked(Chunk::Data(l)) if l == n as u64 => {
                                Phase::Chunked(Chunk::DataCr)
                            }
                            Phase::Chunked(Chunk::Data(l)) => {
                                Phase::Chunked(Chunk::Data(l - n as u64))
                            }
                            p => p,
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                // A new head (or chunk line): read into hyper's buffer and check it there.
                // Usually the whole head (and the body after it) arrives in one read, and it
                // goes to hyper without a copy; a part not yet checkable is moved to ours.
                if dst.remaining() >= MIN_IN_PLACE {
                    let before = dst.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, dst))?;
                    let got = dst.filled().len() - before;
                    if got == 0 {
                        this.eof = true;
                        continue;
                    }
                    let (mut ok, mut refusal) = (0, None);
                    while ok < got {
                        match this.scan(&dst.filled()[before + ok..]) {
                            Step::Took(n) => ok += n,
                            Step::NeedMore => break,
                            Step::Refuse(why) => {
                                refusal = Some(why);
                                break;
                            }
                        }
                    }
                    match refusal {
                        Some(why) => this.refuse(why),
                        None => this.put(&dst.filled()[before + ok..]),
                    }
                    dst.set_filled(before + ok);
                    if ok > 0 {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
            }
            // Collect more of a head (or chunk line) in our own buffer.
            if this.out == this.scanned && this.scanned > 0 {
                this.buf.copy_within(this.scanned..this.end, 0);
                this.end -= this.scanned;
                this.out = 0;
                this.scanned = 0;
            }
            if this.buf.len() - this.end < HEAD_READ / 2 {
                let grow = this.end + HEAD_READ;
                this.buf.resize(grow, 0);
            }
            let mut rb = ReadBuf::new(&mut this.buf[this.end..]);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            this.end += rb.filled().len();
            let n = rb.filled().len();
            match polled {
                Poll::Ready(Ok(())) if n == 0 => this.eof = true,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner.get_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner.get_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.get_ref().is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner.get_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner.get_mut()).poll_shutdown(cx)
    }
}

/// How a checked request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeadCheck {
    Complete { len: usize, body: Body },
    Partial,
    Refused(Refusal),
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
}

/// Check one request head at the start of `bytes` (pure: no I/O).
pub fn check_head(bytes: &[u8], limits: HeadLimits) -> HeadCheck {
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

enum ChunkNext {
    In(Chunk),
    Done,
}

/// Advance the chunk grammar over `bytes`: how many were consumed, and the next state
/// (`None`: not a valid chunked body).
fn chunk_step(mut c: Chunk, bytes: &[u8]) -> (usize, Option<ChunkNext>) {
    let mut i = 0;
    while i < bytes.len() {
        if let Chunk::Data(n) = c {
            let k = usize::try_from(n).map_or(bytes.len() - i, |n| n.min(bytes.len() - i));
            i += k;
            let left = n - k as u64;
            c = if left == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data(left)
            };
            continue;
        }
        let b = bytes[i];
        i += 1;
        c = match (c, b) {
            (Chunk::Size { digits, size }, b) if b.is_ascii_hexdigit() => {
                if digits >= 16 {
                    return (i, None);
                }
                let d = (b as char).to_digit(16).unwrap_or(0);
                Chunk::Size {
                    digits: digits + 1,
                    size: size << 4 | u64::from(d),
                }
            }
            (Chunk::Size { digits, size }, b' ' | b'\t') if digits > 0 => Chunk::SizeLws { size },
            (Chunk::Size { digits, size }, b';') if digits > 0 => Chunk::Ext { size },
            (Chunk::Size { digits, size }, b'\r') if digits > 0 => Chunk::SizeLf { size },
            (Chunk::SizeLws { size }, b' ' | b'\t') => Chunk::SizeLws { size },
            (Chunk::SizeLws { size }, b';') => Chunk::Ext { size },
            (Chunk::SizeLws { size }, b'\r') => Chunk::SizeLf { size },
            (Chunk::Ext { size }, b'\r') => Chunk::SizeLf { size },
            (Chunk::Ext { .. }, b'\n') => return (i, None),
            (Chunk::Ext { size }, _) => Chunk::Ext { size },
            (Chunk::SizeLf { size: 0 }, b'\n') => Chunk::TrailerStart,
            (Chunk::SizeLf { size }, b'\n') => Chunk::Data(size),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size { digits: 0, size: 0 },
            (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
            (Chunk::TrailerStart, b'\n') => return (i, None),
            (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
            (Chunk::TrailerStart | Chunk::Trailer, _) => Chunk::Trailer,
            (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
            (Chunk::EndLf, b'\n') => return (i, Some(ChunkNext::Done)),
            _ => return (i, None),
        };
    }
    (i, Some(ChunkNext::In(c)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    #[test]
    fn chunk_grammar_at_every_split() {
        let body = b"5\r\nhello\r\na;ext=1\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n";
        for split in 0..=body.len() {
            let (a, b) = body.split_at(split);
            let (n, next) = chunk_step(Chunk::Size { digits: 0, size: 0 }, a);
            assert_eq!(n, a.len());
            let Some(ChunkNext::In(c)) = next else {
                assert_eq!(split, body.len(), "ended early at {split}");
                continue;
            };
            let (m, next) = chunk_step(c, b);
            assert_eq!(m, b.len(), "split {split}");
            assert!(matches!(next, Some(ChunkNext::Done)), "split {split}");
        }
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello",
            b"2\r\nabX",
            b"0\r\n\n",
            b"11111111111111111\r\n",
        ] {
            let (_, next) = chunk_step(Chunk::Size { digits: 0, size: 0 }, bad);
            assert!(next.is_none(), "{bad:?}");
        }
    }

    /// Feed `input` in pieces of `piece` bytes through the guard; what hyper would read.
    /// `input` written in pieces of `piece` bytes, read through the guard `read` bytes at a
    /// time (under [`MIN_IN_PLACE`]: through the guard's buffer; over: in the reader's).
    async fn through(input: &[u8], piece: usize, read: usize) -> (Vec<u8>, Option<Refusal>, u64) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let guard = Arc::new(ConnGuard::default());
        let mut io = GuardedIo::new(server, guard.clone(), HeadLimits::default());
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            for c in input.chunks(piece.max(1)) {
                client.write_all(c).await.expect("write");
                tokio::task::yield_now().await;
            }
            client.shutdown().await.expect("shutdown");
        });
        // Until end of stream, or the stand-in (after which reads never complete).
        let mut out = Vec::new();
        let mut chunk = vec![0u8; read];
        for _ in 0..100_000 {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), io.read(&mut chunk))
                .await
                .expect("read before deadline")
                .expect("read");
            out.extend_from_slice(&chunk[..n]);
            if n == 0 || (guard.refusal.get().is_some() && out.ends_with(STAND_IN)) {
                break;
            }
        }
        writer.await.expect("writer");
        let at = guard.refused_at.load(Ordering::Acquire);
        (out, guard.refusal.get().copied(), at)
    }

    #[tokio::test]
    async fn pipelined_requests_pass_and_a_smuggled_one_is_cut_off() {
        let good = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: a\r\n\r\nPOST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let bad = b"POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
        let input = [&good[..], &bad[..]].concat();
        for (piece, read) in [1, 3, 7, 64, 4096]
            .into_iter()
            .flat_map(|p| [(p, 512), (p, 8192)])
        {
            let (out, why, at) = through(&input, piece, read).await;
            assert_eq!(
                out,
                [&good[..], STAND_IN].concat(),
                "piece {piece} read {read}"
            );
            assert_eq!(
                why,
                Some(Refusal::Malformed("Content-Length with Transfer-Encoding"))
            );
            assert_eq!(at, 3, "the fourth request is the stand-in");
        }
    }

    #[tokio::test]
    async fn sniff_tells_the_preface_from_http1_and_keeps_the_bytes() {
        let h2 = [H2_PREFACE, &[0u8, 0, 0, 4, 0, 0, 0, 0, 0][..]].concat();
        for (input, want) in [
            (&h2[..], Protocol::Http2),
            (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], Protocol::Http1),
            (&b"PRI * HTTP/1.1\r\nHost: a\r\n\r\n"[..], Protocol::Http1),
            (&b"PRI * HTT"[..], Protocol::Http1), // a prefix of the preface, then the end
            (&b""[..], Protocol::Http1),
        ] {
            for piece in [1, 5, 4096] {
                let (mut client, server) = tokio::io::duplex(1 << 16);
                let mut io = GuardedIo::new(
                    server,
                    Arc::new(ConnGuard::default()),
                    HeadLimits::default(),
                );
                let bytes = input.to_vec();
                let writer = tokio::spawn(async move {
                    for c in bytes.chunks(piece) {
                        client.write_all(c).await.expect("write");
                        tokio::task::yield_now().await;
                    }
                    client.shutdown().await.expect("shutdown");
                });
                let got = tokio::time::timeout(std::time::Duration::from_secs(5), io.sniff())
                    .await
                    .expect("sniffed");
                assert_eq!(got, want, "{input:?} in pieces of {piece}");
                let mut out = Vec::new();
                tokio::time::timeout(std::time::Duration::from_secs(5), io.read_to_end(&mut out))
                    .await
                    .unwrap_or_else(|_| panic!("read {input:?} in pieces of {piece}: {out:?}"))
                    .expect("read");
                assert_eq!(out, input, "{input:?} in pieces of {piece}");
                writer.await.expect("writer");
            }
        }
    }

    #[tokio::test]
    async fn h2_and_clean_streams_pass_unchanged() {
        let h2 = [H2_PREFACE, &[0u8, 0, 0, 4, 0, 0, 0, 0, 0][..]].concat();
        for input in [
            &h2[..],
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo",
        ] {
            for (piece, read) in [1, 5, 4096].into_iter().flat_map(|p| [(p, 512), (p, 8192)]) {
                let (out, why, _) = through(input, piece, read).await;
                assert_eq!(out, input, "piece {piece} read {read}");
                assert_eq!(why, None);
            }
        }
    }
}
