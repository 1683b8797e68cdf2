//! The accept loop: HTTP/1.1 (keep-alive, our own server: [`super::h1::server`]) and HTTP/2
//! (prior knowledge, h2c, or ALPN `h2` over TLS; hyper's) on one port.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::Either;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncRead;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::h1::server::{self as h1, SplitIo};
use super::headers::ClientAddr;
use super::tls::ServerTls;
use super::{handler, State};

/// How long a kept-alive HTTP/1.1 connection may stay idle (nginx's `keepalive_timeout`).
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(75);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<Arc<ServerTls>>,
    mut stop: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) {
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new()).max_concurrent_streams(256);
    let settings = h1::Settings {
        limits: state.head_limits,
        first_head: state.header_timeout,
        keep_alive: KEEP_ALIVE_TIMEOUT,
        send: state.send_timeout,
    };
    // Every connection task holds a sender: all are gone when the last connection ends.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    loop {
        // A free connection slot first: at the cap, new clients wait in the kernel's backlog.
        let slot = tokio::select! {
            s = state.connection_slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        // One deadline from accept for the TLS handshake, the protocol sniff and the first head.
        let first_head_by = tokio::time::Instant::now() + state.header_timeout;
        let conn = Conn {
            state: state.clone(),
            h2: h2.clone(),
            settings,
            stop: stop.clone(),
            peer,
            first_head_by,
        };
        let tls = tls.clone();
        let alive = alive.clone();
        state.metrics.connections.inc();
        tokio::spawn(async move {
            let metrics = conn.state.metrics.clone();
            match tls {
                None => conn.serve(stream, "http").await,
                Some(tls) => {
                    let hs =
                        tokio::time::timeout_at(first_head_by, tls.acceptor().accept(stream)).await;
                    match hs {
                        Ok(Ok(s)) => conn.serve(s, "https").await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            metrics.connections.dec();
            drop(slot);
            drop(alive);
        });
    }
    drop(listener);
    drop(alive);
    // Connections finish their request in flight and close (idle ones at once).
    if tokio::time::timeout(shutdown_timeout, all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            ?shutdown_timeout,
            "shutdown deadline passed with requests in flight"
        );
    }
}

/// What one client connection is served with.
struct Conn {
    state: Arc<State>,
    h2: http2::Builder<TokioExecutor>,
    settings: h1::Settings,
    stop: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
    /// When the first request head must be complete (the header timeout after accept).
    first_head_by: tokio::time::Instant,
}

impl Conn {
    /// One client connection (plain, or TLS after its handshake): HTTP/1.1 by our server, or
    /// HTTP/2 by hyper's when it starts with the preface.
    async fn serve<I: SplitIo>(self, mut io: I, scheme: &'static str) {
        let Conn {
            state,
            h2,
            mut settings,
            stop,
            peer,
            first_head_by,
        } = self;
        let mut buf = BytesMut::with_capacity(8 * 1024);
        // A client that connects and says nothing is dropped like one that stalls its head.
        let Ok(Ok(http2)) = tokio::time::timeout_at(first_head_by, sniff(&mut io, &mut buf)).await
        else {
            tracing::debug!(%peer, "nothing sent before the header timeout");
            return;
        };
        // What is left of the header timeout is the first head's (HTTP/2: hyper's settings).
        settings.first_head = first_head_by.saturating_duration_since(tokio::time::Instant::now());
        // Formatted once: every request of this connection appends it to `x-forwarded-for`.
        let client = ClientAddr::from(peer.ip());
        if !http2 {
            h1::serve_connection(io, buf, settings, stop, move |req, refused| {
                handler::handle(
                    state.clone(),
                    req.map(Either::Left),
                    client.clone(),
                    refused,
                    scheme,
                )
            })
            .await;
            return;
        }
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let fut = handler::handle(
                state.clone(),
                req.map(Either::Right),
                client.clone(),
                None,
                scheme,
            );
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        });
        let io = TokioIo::new(super::h1::Rewind {
            prefix: buf.freeze(),
            io,
        });
        let conn = h2.serve_connection(io, svc);
        tokio::pin!(conn);
        let ended = tokio::select! {
            r = conn.as_mut() => r,
            () = h1::stopped(stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, %peer, "client connection ended with an error");
        }
    }
}

/// Read until the first bytes tell the HTTP/2 preface from an HTTP/1 request (they stay in
/// `buf`): `Ok(true)` for HTTP/2. End of stream before any byte: an error.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) -> io::Result<bool> {
    use tokio::io::AsyncReadExt;
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        if io.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            // A short start that is not the preface: HTTP/1, which answers it.
            return Ok(false);
        }
    }
}
