//! The accept loop: HTTP/1.1 (keep-alive) and HTTP/2 (prior knowledge, h2c) on one port.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::guard::{ConnGuard, GuardedIo, Protocol};
use super::headers::ClientAddr;
use super::tls::ServerTls;
use super::{handler, State};

/// How long a client may take to send a request head (slowloris guard; nginx: 60 s).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<Arc<ServerTls>>,
    mut stop: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new()).max_concurrent_streams(256);
    let builder = Builders { h1, h2 };
    let graceful = GracefulShutdown::new();
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
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        state.metrics.connections.inc();
        tokio::spawn(async move {
            let metrics = state.metrics.clone();
            match tls {
                None => serve_io(builder, watcher, stream, state, peer, "http").await,
                Some(tls) => {
                    let hs =
                        tokio::time::timeout(HEADER_READ_TIMEOUT, tls.acceptor().accept(stream))
                            .await;
                    match hs {
                        Ok(Ok(s)) => serve_io(builder, watcher, s, state, peer, "https").await,
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            metrics.connections.dec();
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?shutdown_timeout,
            "shutdown deadline passed with requests in flight"
        );
    }
}

/// hyper's server settings, HTTP/1.1 and HTTP/2.
#[derive(Clone)]
struct Builders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

/// One client connection (plain, or TLS after its handshake): every request head checked by
/// the guard, then hyper's HTTP/1.1 or HTTP/2 (prior knowledge, or ALPN `h2` over TLS: both
/// start with the preface).
async fn serve_io<I>(
    builder: Builders,
    watcher: hyper_util::server::graceful::Watcher,
    io: I,
    state: Arc<State>,
    peer: std::net::SocketAddr,
    scheme: &'static str,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let guard = Arc::new(ConnGuard::default());
    let mut io = GuardedIo::new(io, guard.clone(), state.head_limits);
    // A client that connects and says nothing is dropped like one that stalls its head.
    let Ok(protocol) = tokio::time::timeout(HEADER_READ_TIMEOUT, io.sniff()).await else {
        tracing::debug!(%peer, "nothing sent before the header timeout");
        return;
    };
    // Formatted once: every request of this connection appends it to `x-forwarded-for`.
    let client = ClientAddr::from(peer.ip());
    let svc = service_fn(move |req| {
        let state = state.clone();
        let refused = guard.next_request();
        let client = client.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                handler::handle(state, req, &client, refused, scheme).await,
            )
        }
    });
    let io = TokioIo::new(io);
    let ended = match protocol {
        Protocol::Http1 => watcher.watch(builder.h1.serve_connection(io, svc)).await,
        Protocol::Http2 => watcher.watch(builder.h2.serve_connection(io, svc)).await,
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, %peer, "client connection ended with an error");
    }
}
