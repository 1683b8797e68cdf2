//! The accept loop: HTTP/1.1 (keep-alive) and HTTP/2 (prior knowledge, h2c) on one port.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::guard::{ConnGuard, GuardedIo};
use super::{handler, State};

/// How long a client may take to send a request head (slowloris guard; nginx: 60 s).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
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
        let metrics = state.metrics.clone();
        let guard = Arc::new(ConnGuard::default());
        let io = GuardedIo::new(stream, guard.clone(), state.head_limits);
        let svc = service_fn(move |req| {
            let state = state.clone();
            let refused = guard.next_request();
            async move {
                Ok::<_, std::convert::Infallible>(handler::handle(state, req, peer, refused).await)
            }
        });
        let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
        let conn = graceful.watch(conn);
        metrics.connections.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "client connection ended with an error");
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
