//! HTTP/1.1 to clients: our own server side, on the guard's single parse of each head.
//!
//! hyper's HTTP/1 server parsed every head a second time after the guard had checked it, ran
//! its own state machine and buffered writer, and fed request bodies through a channel. Here
//! one task per connection does it all in order:
//!
//! ```text
//! read ─▶ head parsed and checked once (guard::parse_request) ─▶ Request ─▶ service
//!      ─▶ body: in the buffer already → whole; otherwise the read side moves into the body and
//!         comes back (oneshot) once the body is read to its end
//! service's Response ─▶ head encoded (framing, connection, date) ─▶ head + body written
//!      ─▶ keep-alive: next head (pipelined bytes stay buffered) │ otherwise shut down, linger
//! ```
//! A refused head gets no request: the service is called once more with the refusal (so it is
//! logged and mapped to HTTP where every error is) and the connection closes after the answer;
//! nothing after the refused head is read.
//!
//! Timeouts: the first head must be complete within `first_head`; a kept-alive connection must
//! bring its next head within `keep_alive` (nginx: `client_header_timeout` 60 s,
//! `keepalive_timeout` 75 s). The timer is armed once per connection and moved only when it
//! would fire more than a few seconds early, so a busy connection does not touch the timer
//! wheel per request.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

use super::{
    fill, BoxError, ChunkPrefix, Chunked, Decoder, H1Error, Outgoing, Rewind, Upgraded, MIN_READ,
};
use crate::proxy::guard::{self, FieldSpan, HeadLimits, Refusal, RequestHead};

/// A timer this close to its deadline is left as is (see the module docs).
const TIMER_SLACK: Duration = Duration::from_secs(5);
/// After a response that ends the connection, unread request bytes are read and dropped for
/// this long (at most [`LINGER_BYTES`]) so closing does not reset the connection under the
/// client's feet before it has read the answer (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// An upgraded connection with no byte either way for this long is closed (Envoy's stream idle
/// timeout; nginx applies `proxy_read_timeout`, 60 s).
const TUNNEL_IDLE: Duration = Duration::from_secs(300);

/// The server's limits and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub limits: HeadLimits,
    /// The first request head must be complete within this.
    pub first_head: Duration,
    /// A kept-alive connection must bring its next head within this.
    pub keep_alive: Duration,
    /// A client that takes no response bytes for this long is disconnected (nginx's
    /// `send_timeout`: between two writes, not for the whole response).
    pub send: Duration,
}

/// In a request's extensions: the client's connection can be handed over if the answer is
/// `101 Switching Protocols` (an HTTP/1.1 request with `Connection: upgrade` and no body).
#[derive(Debug, Clone, Copy)]
pub struct CanUpgrade;

/// A client connection's stream, in two halves: the request body reads one while the
/// response is written to the other.
pub trait SplitIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn split_io(self) -> (Self::Read, Self::Write);
}

impl SplitIo for tokio::net::TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split_io(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl<T> SplitIo for tokio_rustls::server::TlsStream<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn split_io(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// The read side: the stream and what was read from it but not used yet.
struct Reader<R> {
    io: R,
    buf: BytesMut,
    read_size: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        fill(&mut self.io, &mut self.buf, &mut self.read_size, cx)
    }
}

/// Why reading a request body failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("client closed the connection in the request body")]
    Closed,
    #[error("invalid chunked request body")]
    Chunked,
    #[error("reading the request body")]
    Io(#[source] io::Error),
}

/// A request body read from the client's connection as it is polled.
pub struct IncomingBody {
    state: In,
}

enum In {
    Done,
    Whole(Bytes),
    Streaming(Box<dyn Source>),
}

/// A body still arriving on the connection (the read side's type erased).
trait Source: Send {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, RequestBodyError>>>;
    fn is_end(&self) -> bool;
    fn remaining(&self) -> Option<u64>;
}

/// The read side coming back to its connection when the body ends or is dropped.
struct Returned<R> {
    reader: Reader<R>,
    /// The body was read to its end: the next head follows in the stream.
    finished: bool,
}

struct Streaming<R> {
    reader: Option<Reader<R>>,
    decoder: Decoder,
    back: Option<oneshot::Sender<Returned<R>>>,
}

impl<R> Streaming<R> {
    fn give_back(&mut self) {
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let finished = self.decoder.finished();
            let _ = back.send(Returned { reader, finished });
        }
    }
}

impl<R> Drop for Streaming<R> {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<R: AsyncRead + Unpin + Send> Source for Streaming<R> {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, RequestBodyError>>> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut reader.buf;
            match &mut self.decoder {
                Decoder::Length(0) => {
                    self.give_back();
                    return Poll::Ready(None);
                }
                Decoder::Length(left) if !buf.is_empty() => {
                    let n = (buf.len() as u64).min(*left);
                    *left -= n;
                    let data = buf.split_to(n as usize).freeze();
                    if *left == 0 {
                        // The connection can read the next head while this last piece goes on.
                        self.give_back();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Decoder::Chunked(c) if !buf.is_empty() || *c == Chunked::End => {
                    match c.decode(buf) {
                        Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                        Ok(None) if *c == Chunked::End => {
                            self.give_back();
                            return Poll::Ready(None);
                        }
                        Ok(None) => {}
                        Err(_) => return Poll::Ready(Some(Err(RequestBodyError::Chunked))),
                    }
                }
                // Requests are never framed by close.
                Decoder::Close => return Poll::Ready(None),
                _ => {}
            }
            match ready!(reader.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Some(Err(RequestBodyError::Closed))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(RequestBodyError::Io(e)))),
            }
        }
    }

    fn is_end(&self) -> bool {
        self.reader.is_none() || matches!(self.decoder, Decoder::Length(0))
    }

    fn remaining(&self) -> Option<u64> {
        match self.decoder {
            Decoder::Length(n) => Some(n),
            _ if self.reader.is_none() => Some(0),
            _ => None,
        }
    }
}

impl IncomingBody {
    pub fn empty() -> IncomingBody {
        IncomingBody { state: In::Done }
    }

    /// A body that is all here already.
    pub fn whole(data: Bytes) -> IncomingBody {
        IncomingBody {
            state: if data.is_empty() {
                In::Done
            } else {
                In::Whole(data)
            },
        }
    }
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match &mut self.state {
            In::Done => Poll::Ready(None),
            In::Whole(_) => match std::mem::replace(&mut self.state, In::Done) {
                In::Whole(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                _ => Poll::Ready(None),
            },
            In::Streaming(s) => match ready!(s.poll_data(cx)) {
                Some(Ok(d)) => Poll::Ready(Some(Ok(Frame::data(d)))),
                Some(Err(e)) => {
                    self.state = In::Done;
                    Poll::Ready(Some(Err(e)))
                }
                None => {
                    self.state = In::Done;
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            In::Done => true,
            In::Whole(_) => false,
            In::Streaming(s) => s.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            In::Done => SizeHint::with_exact(0),
            In::Whole(b) => SizeHint::with_exact(b.len() as u64),
            In::Streaming(s) => s
                .remaining()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

impl std::fmt::Debug for IncomingBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IncomingBody")
    }
}

/// What waiting for the next head gave.
enum Next {
    Head(RequestHead),
    Refused(Refusal),
    /// End of stream, a read error, the timeout, or the server stopping.
    Closed(&'static str),
}

/// Serve HTTP/1.1 on one client connection until it closes. `buffered`: bytes already read
/// from it. `service` is called once per request, in order; with `Some(refusal)` for a head
/// that was refused (its request is a stand-in `GET /`).
pub async fn serve_connection<Io, S, F, B>(
    io: Io,
    buffered: BytesMut,
    settings: Settings,
    stop: watch::Receiver<bool>,
    mut service: S,
) where
    Io: SplitIo,
    S: FnMut(Request<IncomingBody>, Option<Refusal>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (r, w) = io.split_io();
    let mut w = SendTimeout::new(w, settings.send);
    let mut reader = Some(Reader {
        io: r,
        buf: buffered,
        read_size: MIN_READ,
    });
    let mut fields: Vec<FieldSpan> = Vec::new();
    let mut wbuf: Vec<u8> = Vec::with_capacity(512);
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    let mut stopped = Stop::new(stop);
    let mut wait = settings.first_head;
    loop {
        let Some(rd) = reader.as_mut() else { return };
        let next = next_head(
            rd,
            &settings.limits,
            &mut fields,
            &mut timer,
            wait,
            &mut stopped,
        )
        .await;
        wait = settings.keep_alive;
        let built = match next {
            Next::Closed(why) => {
                tracing::trace!(why, "client connection closed");
                return;
            }
            Next::Refused(r) => Err(r),
            Next::Head(h) => build_request(&mut rd.buf, &h, &fields).map(|req| (req, h)),
        };
        let (req, h) = match built {
            Ok(built) => built,
            Err(why) => {
                // A refused head: answered (as a stand-in `GET /`), then the connection closes;
                // nothing after it is read.
                let resp = service(Request::new(IncomingBody::empty()), Some(why)).await;
                let _ = write_response(&mut w, &mut wbuf, resp, false, 1, false).await;
                close(&mut w, reader.take()).await;
                return;
            }
        };
        let (mut req, back) = attach_body(req, &h, &mut reader);
        if h.upgrade {
            req.extensions_mut().insert(CanUpgrade);
        }
        if back.is_some()
            && h.expect_continue
            && w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
        {
            return;
        }
        let head_request = req.method() == Method::HEAD;
        let keep = if h.minor == 0 {
            h.keep_alive && !h.close
        } else {
            !h.close
        };
        let mut resp = service(req, None).await;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Only an upgrade the client asked for comes back as 101, with the upstream's side.
            let upstream = resp
                .extensions_mut()
                .remove::<Upgraded>()
                .and_then(|u| u.take());
            if let (Some(upstream), Some(rd), true) = (upstream, reader.take(), back.is_none()) {
                encode_switch(&mut wbuf, resp.headers());
                if w.write_all(&wbuf).await.is_ok() {
                    // Boxed: the connection's future stays as small as it is without it.
                    Box::pin(tunnel(rd, w, upstream, &mut stopped)).await;
                }
            }
            return;
        }
        let keep = keep && !stopped.now();
        let keep = match write_response(&mut w, &mut wbuf, resp, head_request, h.minor, keep).await
        {
            Ok(keep) => keep,
            Err(H1Error::Body(e)) => {
                // The upstream failed mid-answer (the head is out): the client sees the
                // connection end short of the body.
                let error = crate::proxy::error_chain(&*e);
                tracing::warn!(%error, "response body failed; client connection closed");
                return;
            }
            Err(_) => return,
        };
        if let Some(back) = back {
            // The body took the read side: it comes back when the body is read to its end
            // (or dropped: then the stream is mid-body and the connection ends).
            match tokio::time::timeout(settings.keep_alive, back).await {
                Ok(Ok(Returned {
                    reader: rd,
                    finished: true,
                })) => reader = Some(rd),
                // Dropped mid-body: the stream is not at a head.
                Ok(Ok(Returned { reader: rd, .. })) => {
                    close(&mut w, Some(rd)).await;
                    return;
                }
                // The body's read half did not come back in time (or was lost): end here (the
                // connection has no read side to drain: `reader` is empty).
                _ => {
                    close(&mut w, reader.take()).await;
                    return;
                }
            }
        }
        if !keep {
            close(&mut w, reader.take()).await;
            return;
        }
    }
}

/// An upgraded connection: bytes both ways, each side's end passed on to the other, until both
/// have ended — or no byte came either way for [`TUNNEL_IDLE`], or the server stops.
async fn tunnel<R, W>(
    client: Reader<R>,
    mut to_client: W,
    upstream: Box<dyn super::Tunnel>,
    stopped: &mut Stop,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Whatever the client sent after its head is the new protocol's first bytes.
    let mut from_client = Rewind {
        prefix: client.buf.freeze(),
        io: client.io,
    };
    let (mut from_upstream, mut to_upstream) = tokio::io::split(upstream);
    // When a byte last came, in milliseconds after `start` (shared by both directions).
    let start = Instant::now();
    let seen = std::sync::atomic::AtomicU64::new(0);
    let both = async {
        tokio::join!(
            pump(&mut from_client, &mut to_upstream, start, &seen),
            pump(&mut from_upstream, &mut to_client, start, &seen),
        )
    };
    let idle = async {
        loop {
            let last =
                start + Duration::from_millis(seen.load(std::sync::atomic::Ordering::Relaxed));
            if last + TUNNEL_IDLE <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(last + TUNNEL_IDLE).await;
        }
    };
    tokio::select! {
        _ = both => {}
        () = idle => tracing::debug!("upgraded connection idle; closed"),
        () = poll_fn(|cx| if stopped.poll(cx) { Poll::Ready(()) } else { Poll::Pending }) => {}
    }
}

/// One direction of a tunnel: what is read is written on (flushed: TLS buffers), and the end
/// of the stream is passed on as a shutdown. `seen`: when a byte last came, in milliseconds
/// after `start`.
async fn pump<R, Wr>(
    r: &mut R,
    w: &mut Wr,
    start: Instant,
    seen: &std::sync::atomic::AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    Wr: AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        let ms = start.elapsed().as_millis() as u64;
        seen.store(ms, std::sync::atomic::Ordering::Relaxed);
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
    }
}

/// The write side, failing with `TimedOut` once a write has waited `limit` for the client to
/// take bytes. The timer exists only while a write is blocked: a client that reads costs
/// nothing.
struct SendTimeout<W> {
    inner: W,
    stall: crate::body::Stall,
}

impl<W> SendTimeout<W> {
    fn new(inner: W, limit: Duration) -> Self {
        SendTimeout {
            inner,
            stall: crate::body::Stall::new(limit),
        }
    }

    /// After the inner write: `Ready` is progress; `Pending` is a stall, an error once it has
    /// lasted the limit.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall.progressed();
            return polled;
        }
        match self.stall.poll_stalled(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client took no response bytes within the send timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SendTimeout<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

/// End a connection after its last answer: shut the write side down, then drop what the
/// client still sends for a moment (when the read side is here).
async fn close<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(w: &mut W, reader: Option<Reader<R>>) {
    let _ = w.shutdown().await;
    if let Some(rd) = reader {
        linger(rd).await;
    }
}

/// Read until a whole head is buffered (or refused), the connection ends, the timer fires or
/// the server stops.
async fn next_head<R: AsyncRead + Unpin>(
    reader: &mut Reader<R>,
    limits: &HeadLimits,
    fields: &mut Vec<FieldSpan>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    wait: Duration,
    stopped: &mut Stop,
) -> Next {
    // Pipelined: the next head is here already.
    if !reader.buf.is_empty() {
        if let Some(n) = parse(&reader.buf, limits, fields) {
            return n;
        }
    }
    if stopped.now() {
        return Next::Closed("server stopping");
    }
    let deadline = Instant::now() + wait;
    match timer {
        Some(t) if t.deadline() + TIMER_SLACK >= deadline && t.deadline() <= deadline => {}
        Some(t) => t.as_mut().reset(deadline),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
    }
    let Some(timer) = timer.as_mut() else {
        return Next::Closed("no timer");
    };
    poll_fn(|cx| {
        loop {
            match reader.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    // What came before the end is still answered when it is refused.
                    return Poll::Ready(match parse(&reader.buf, limits, fields) {
                        Some(Next::Refused(r)) => Next::Refused(r),
                        _ => Next::Closed("end of stream"),
                    });
                }
                Poll::Ready(Ok(n)) => {
                    // A head can only end in a read that brought a line end: a long head
                    // trickled a byte at a time is not parsed again for every byte (the first
                    // KiB is, to refuse garbage at once; past the size limit it is, to refuse it).
                    let len = reader.buf.len();
                    let fresh = &reader.buf[len.saturating_sub(n)..];
                    if len - fresh.len() <= 1024 || fresh.contains(&b'\n') || len > limits.max_bytes
                    {
                        if let Some(n) = parse(&reader.buf, limits, fields) {
                            return Poll::Ready(n);
                        }
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Next::Closed("read error")),
                Poll::Pending => break,
            }
        }
        if stopped.poll(cx) {
            return Poll::Ready(Next::Closed("server stopping"));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Next::Closed("header timeout"));
        }
        Poll::Pending
    })
    .await
}

/// Resolves when the server is told to stop (never, if the stop sender is gone).
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The server's stop signal, waited on by one future per connection (registered once, not
/// once per request).
struct Stop {
    flag: watch::Receiver<bool>,
    /// `None` once the stop came.
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Stop {
    fn new(rx: watch::Receiver<bool>) -> Stop {
        Stop {
            flag: rx.clone(),
            signal: Some(Box::pin(stopped(rx))),
        }
    }

    /// Whether the server is stopping (no waker registered).
    fn now(&self) -> bool {
        self.signal.is_none() || *self.flag.borrow()
    }

    /// Whether the server is stopping; if not, `cx` is woken when it does.
    fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(f) = self.signal.as_mut() else {
            return true;
        };
        if f.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.signal = None;
        true
    }
}

fn parse(buf: &[u8], limits: &HeadLimits, fields: &mut Vec<FieldSpan>) -> Option<Next> {
    match guard::parse_request(buf, *limits, fields) {
        Ok(Some(h)) => Some(Next::Head(h)),
        Ok(None) => None,
        Err(r) => Some(Next::Refused(r)),
    }
}

/// The request from a checked head; the head's bytes leave the buffer (values share them).
pub(crate) fn build_request(
    buf: &mut BytesMut,
    h: &RequestHead,
    fields: &[FieldSpan],
) -> Result<Request<IncomingBody>, Refusal> {
    let head = buf.split_to(h.len).freeze();
    let method = Method::from_bytes(&head[h.method.0 as usize..h.method.1 as usize])
        .map_err(|_| Refusal::Malformed("invalid method"))?;
    let uri = Uri::from_maybe_shared(head.slice(h.target.0 as usize..h.target.1 as usize))
        .map_err(|_| Refusal::Malformed("invalid request target"))?;
    // Room for what the proxy adds (request id, forwarded headers) without growing the map.
    let mut headers = HeaderMap::with_capacity(fields.len() + 8);
    for &[n0, n1, v0, v1] in fields {
        let name = HeaderName::from_bytes(&head[n0 as usize..n1 as usize])
            .map_err(|_| Refusal::Malformed("invalid header name"))?;
        if name == CONNECTION && super::only_keep_alive(&head[v0 as usize..v1 as usize]) {
            // Read by the guard already (`RequestHead::keep_alive`).
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize))
            .map_err(|_| Refusal::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    let mut req = Request::new(IncomingBody::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if h.minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    Ok(req)
}

/// Give the request its body: already buffered whole, or streamed from the read side (which
/// then travels with the body; the receiver gets it back).
fn attach_body<R: AsyncRead + Unpin + Send + 'static>(
    mut req: Request<IncomingBody>,
    h: &RequestHead,
    reader: &mut Option<Reader<R>>,
) -> (
    Request<IncomingBody>,
    Option<oneshot::Receiver<Returned<R>>>,
) {
    let decoder = match h.body {
        guard::Body::None => return (req, None),
        guard::Body::Length(n) => {
            if let Some(rd) = reader.as_mut().filter(|rd| rd.buf.len() as u64 >= n) {
                *req.body_mut() = IncomingBody::whole(rd.buf.split_to(n as usize).freeze());
                return (req, None);
            }
            Decoder::Length(n)
        }
        guard::Body::Chunked => Decoder::new(super::BodyFraming::Chunked),
    };
    let (tx, rx) = oneshot::channel();
    let streaming = Streaming {
        reader: reader.take(),
        decoder,
        back: Some(tx),
    };
    *req.body_mut() = IncomingBody {
        state: In::Streaming(Box::new(streaming)),
    };
    (req, Some(rx))
}

/// Write the response (head, then body framed for the client); `Ok(keep_alive)`.
async fn write_response<W, B>(
    w: &mut W,
    wbuf: &mut Vec<u8>,
    resp: Response<B>,
    head_request: bool,
    minor: u8,
    keep: bool,
) -> Result<bool, H1Error>
where
    W: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = resp.into_parts();
    let framing = encode_response(
        wbuf,
        &parts.headers,
        parts.status,
        body.size_hint().exact(),
        head_request,
        minor,
        keep,
    );
    let mut out = Outgoing {
        head: std::mem::take(wbuf),
        head_pos: 0,
        prefix: ChunkPrefix::default(),
        data: Bytes::new(),
        suffix: b"",
        body: None,
        chunked: framing.chunked,
        declared: framing.length,
        sent: 0,
        written: 0,
        finished: false,
    };
    if framing.bodiless {
        drop(body);
        out.finished_body();
    } else {
        out.body = Some(Box::pin(body));
    }
    let sent = poll_fn(|cx| out.poll_send(w, cx)).await;
    *wbuf = std::mem::take(&mut out.head);
    wbuf.clear();
    sent.map(|()| framing.keep)
}

#[derive(Debug, PartialEq, Eq)]
struct ResponseFraming {
    bodiless: bool,
    chunked: bool,
    length: Option<u64>,
    keep: bool,
}

/// Encode the status line and headers into `buf`: framing from the body (its exact size →
/// `content-length`; unknown → chunked, or until close for an HTTP/1.0 client), `connection`
/// ours, `date` added when missing.
fn encode_response(
    buf: &mut Vec<u8>,
    headers: &HeaderMap,
    status: StatusCode,
    exact: Option<u64>,
    head_request: bool,
    minor: u8,
    keep: bool,
) -> ResponseFraming {
    let no_length = status == StatusCode::NO_CONTENT || status.is_informational();
    let bodiless = head_request || no_length || status == StatusCode::NOT_MODIFIED;
    let mut framing = ResponseFraming {
        bodiless,
        chunked: false,
        length: None,
        keep,
    };
    if !bodiless {
        match exact {
            Some(n) => framing.length = Some(n),
            None if minor == 0 => framing.keep = false,
            None => framing.chunked = true,
        }
    }
    buf.clear();
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    buf.extend_from_slice(b"\r\n");
    // One pass, no lookups: framing and `connection` are ours (a HEAD or 304 answer keeps the
    // length the upstream gave).
    let mut dated = false;
    for (name, value) in headers.iter() {
        if name == CONNECTION {
            framing.keep &= !value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| super::trim_ows(t).eq_ignore_ascii_case(b"close"));
            continue;
        }
        if name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && (!bodiless || no_length)) {
            continue;
        }
        dated |= name == DATE;
        super::push_field(buf, name, value);
    }
    if let Some(n) = framing.length {
        buf.extend_from_slice(b"content-length: ");
        super::push_decimal(buf, n);
        buf.extend_from_slice(b"\r\n");
    } else if framing.chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !framing.keep {
        buf.extend_from_slice(b"connection: close\r\n");
    } else if minor == 0 {
        buf.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !dated {
        buf.extend_from_slice(b"date: ");
        date::append(buf);
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    framing
}

/// The head of a `101 Switching Protocols`: the upstream's fields (its `Upgrade` among them),
/// `Connection: upgrade` of our own, no framing (the connection becomes the tunnel).
fn encode_switch(buf: &mut Vec<u8>, headers: &HeaderMap) {
    buf.clear();
    buf.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in headers {
        if name == CONNECTION || name == TRANSFER_ENCODING || name == CONTENT_LENGTH {
            continue;
        }
        super::push_field(buf, name, value);
    }
    buf.extend_from_slice(b"connection: upgrade\r\n\r\n");
}

/// Read and drop what the client still sends, briefly, before the connection is closed.
async fn linger<R: AsyncRead + Unpin>(mut reader: Reader<R>) {
    let mut dropped = 0usize;
    let _ = tokio::time::timeout(LINGER, async {
        while dropped < LINGER_BYTES {
            reader.buf.clear();
            match poll_fn(|cx| reader.poll_fill(cx)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
}

/// The `Date` header's value, formatted once per second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    pub fn append(buf: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                let s = httpdate::fmt_http_date(now);
                if s.len() == 29 {
                    c.1.copy_from_slice(s.as_bytes());
                    c.0 = secs;
                } else {
                    buf.extend_from_slice(s.as_bytes());
                    return;
                }
            }
            buf.extend_from_slice(&c.1);
        });
    }
}

impl SplitIo for tokio::io::DuplexStream {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn split_io(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// Fuzzing: any bytes a client sends on one connection, served by [`serve_connection`] over
/// an in-memory stream; the service reads each request's body to its end and answers `ok`.
/// Input: a split selector byte, then the client's bytes. Checked: no panic, the connection
/// ends once the client has sent everything, and the same requests (method, target, version,
/// headers, body bytes or how the body failed, refusal) whether the bytes arrive whole or in
/// two pieces split anywhere; never more body bytes than input.
pub(crate) fn fuzz_client(data: &[u8]) {
    let [sel, wire @ ..] = data else {
        return;
    };
    let split = usize::from(*sel).min(wire.len());
    let whole = serve_pieces(&[wire]);
    let pieces = serve_pieces(&[&wire[..split], &wire[split..]]);
    assert_eq!(whole, pieces, "split at {split}");
    let body_bytes: usize = whole.iter().map(|(_, n)| n).sum();
    assert!(
        body_bytes <= wire.len(),
        "{body_bytes} body bytes from {} bytes",
        wire.len()
    );
}

/// Serve `pieces` (written in turn, each once the server has read everything before it) and
/// describe the requests the service saw, each with its body's length.
fn serve_pieces(pieces: &[&[u8]]) -> Vec<(String, usize)> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return Vec::new();
    };
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (_stop_tx, stop) = watch::channel(false);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, usize)>::new()));
        let log = seen.clone();
        let settings = Settings {
            limits: HeadLimits::default(),
            first_head: Duration::from_secs(30),
            keep_alive: Duration::from_secs(75),
            send: Duration::from_secs(60),
        };
        let served = tokio::spawn(serve_connection(
            server,
            BytesMut::new(),
            settings,
            stop,
            move |req: Request<IncomingBody>, refused: Option<Refusal>| {
                let log = log.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let (body, len) = match body.collect().await {
                        Ok(b) => {
                            let b = b.to_bytes();
                            (format!("{b:?}"), b.len())
                        }
                        Err(e) => (format!("error: {e}"), 0),
                    };
                    let fields: Vec<String> = parts
                        .headers
                        .iter()
                        .map(|(n, v)| format!("{n}={:?}", v.as_bytes()))
                        .collect();
                    let line = format!(
                        "{refused:?} {} {} {:?} {} body {body}",
                        parts.method,
                        parts.uri,
                        parts.version,
                        fields.join(",")
                    );
                    if let Ok(mut l) = log.lock() {
                        l.push((line, len));
                    }
                    Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")))
                }
            },
        ));
        for piece in pieces {
            if client.write_all(piece).await.is_err() {
                break;
            }
            // Let the server read (and act on) this piece before the next one.
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
        }
        let _ = client.shutdown().await;
        // Read the answers until the server closes: it must, once the client's bytes are all
        // read (a connection still open here is a hang libFuzzer reports as a slow input).
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut sink)).await;
        let ended = tokio::time::timeout(Duration::from_secs(20), served).await;
        assert!(
            ended.is_ok(),
            "the connection did not end after the client's last byte"
        );
        let out = seen.lock().map(|l| l.clone()).unwrap_or_default();
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(
        headers: &[(&'static str, &'static str)],
        status: u16,
        exact: Option<u64>,
        head_request: bool,
        minor: u8,
    ) -> (String, ResponseFraming) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(*n, HeaderValue::from_static(v));
        }
        let mut buf = Vec::new();
        let f = encode_response(
            &mut buf,
            &map,
            StatusCode::from_u16(status).expect("status"),
            exact,
            head_request,
            minor,
            true,
        );
        (String::from_utf8(buf).expect("ascii head"), f)
    }

    /// The fuzz harness's server run, on inputs whose outcome is known.
    #[test]
    fn the_client_stream_harness_sees_what_the_server_serves() {
        let lines = |v: Vec<(String, usize)>| v.into_iter().map(|(l, _)| l).collect::<Vec<_>>();
        let seen = lines(serve_pieces(&[
            b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\nhost: x\r\n",
            b"content-length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\nhost: x\r\n\r\n",
        ]));
        assert_eq!(seen.len(), 3, "{seen:#?}");
        assert!(
            seen[0].starts_with("None GET /a HTTP/1.1 host=") && seen[0].ends_with("body b\"\"")
        );
        assert!(
            seen[1].contains("POST /b") && seen[1].ends_with("body b\"xyz\""),
            "{}",
            seen[1]
        );
        assert!(seen[2].contains("GET /c"), "{}", seen[2]);
        // A smuggling attempt: refused, and nothing after it is served.
        let seen = lines(serve_pieces(&[
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\
            transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
        ]));
        assert_eq!(seen.len(), 1, "{seen:#?}");
        assert!(
            seen[0].starts_with("Some(Malformed(\"Content-Length with Transfer-Encoding\"))"),
            "{}",
            seen[0]
        );
        // A body cut short by the end of the stream fails; the connection still ends.
        let seen = lines(serve_pieces(&[
            b"POST /s HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nshort",
        ]));
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0].ends_with("body error: client closed the connection in the request body"),
            "{}",
            seen[0]
        );
    }

    #[test]
    fn response_framing_follows_the_body_and_the_client() {
        let dated = [("date", "Mon, 23 Nov 2026 20:00:00 GMT")];
        // Known size: content-length from the body, whatever the upstream said.
        let (s, f) = encode(
            &[("content-length", "99"), dated[0]],
            200,
            Some(5),
            false,
            1,
        );
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\ndate: Mon, 23 Nov 2026 20:00:00 GMT\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!((f.length, f.chunked, f.keep), (Some(5), false, true));
        // Unknown size: chunked to HTTP/1.1, until close to HTTP/1.0.
        let (s, f) = encode(&dated, 200, None, false, 1);
        assert!(s.contains("transfer-encoding: chunked\r\n"), "{s}");
        assert!(f.chunked && f.keep);
        let (s, f) = encode(&dated, 200, None, false, 0);
        assert!(
            s.contains("connection: close\r\n") && !s.contains("chunked"),
            "{s}"
        );
        assert!(!f.chunked && !f.keep);
        // HTTP/1.0 kept alive says so.
        let (s, _) = encode(&dated, 200, Some(0), false, 0);
        assert!(s.contains("connection: keep-alive\r\n"), "{s}");
        // HEAD keeps the upstream's length, sends no body; 204 has no length at all.
        let (s, f) = encode(&[("content-length", "42"), dated[0]], 200, None, true, 1);
        assert!(s.contains("content-length: 42\r\n") && f.bodiless, "{s}");
        let (s, f) = encode(&[("content-length", "0"), dated[0]], 204, Some(0), false, 1);
        assert!(!s.contains("content-length") && f.bodiless, "{s}");
        // The service's `connection: close` ends the connection; a date is added when missing.
        let (s, f) = encode(&[("connection", "close")], 502, Some(3), false, 1);
        assert!(s.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{s}");
        assert!(s.contains("connection: close\r\n") && s.contains("date: ") && !f.keep);
        assert_eq!(s.matches("connection").count(), 1, "{s}");
    }
}
