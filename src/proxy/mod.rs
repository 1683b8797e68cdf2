//! The proxy: listeners, the shared state every request reads, and start/stop.
//!
//! Composition happens here and nowhere else: a validated [`Runtime`] becomes bound listeners,
//! a pooled primary client, a separate pooled shadow client, the admin listener and the access
//! log. [`Running`] is the handle the CLI and the tests hold; dropping it does not stop the
//! proxy, [`Running::shutdown`] does (stop accepting, finish in-flight requests up to a deadline).

pub mod error;
pub mod guard;
pub mod h1;
mod handler;
pub mod headers;
pub mod pool;
mod server;
pub(crate) mod timer;
pub mod tls;

pub use error::{error_chain, ProxyError};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::config::Runtime;
use crate::mirror::{MirrorContext, TeeBody};
use crate::routing::Table;
use crate::telemetry::{AccessLog, Metrics};

/// An upstream response's body, streamed from its connection.
pub type UpstreamBody = h1::UpstreamBody<h1::UpstreamIo>;

/// What the client receives: the primary's streamed body (observed when compared), or a
/// short local answer.
pub type ProxyBody = Either<crate::compare::CaptureBody<UpstreamBody>, Full<Bytes>>;

/// A client's request body: read by our HTTP/1.1 server, or hyper's HTTP/2 stream.
pub type RequestBody = Either<h1::server::IncomingBody, Incoming>;

/// A primary request's body: the client's, streamed through the mirror tee, or empty for a
/// request that may be retried.
pub type PrimaryBody =
    Either<TeeBody<crate::body::ClientBody<RequestBody>>, http_body_util::Empty<Bytes>>;

pub use h1::Connector;

/// The primary's pooled client.
pub type PrimaryClient = pool::Pool;

/// Everything a request reads. One per worker thread (its own upstream pools); the table,
/// metrics and access log are shared by all workers.
pub struct State {
    pub table: Arc<ArcSwap<Table>>,
    pub client: PrimaryClient,
    pub mirror: MirrorContext,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    /// Client connections open at once, shared by every worker.
    pub connection_slots: Arc<tokio::sync::Semaphore>,
    /// A request body that sends nothing for this long fails (408).
    pub body_timeout: Duration,
    /// An HTTP/1.1 client that takes no response bytes for this long is disconnected.
    pub send_timeout: Duration,
    /// From accept to the first complete request head (TLS handshake included).
    pub header_timeout: Duration,
    /// A request body larger than this fails (413); `None`: no limit.
    pub max_body: Option<u64>,
    /// Request head size and field count (431, 414).
    pub head_limits: guard::HeadLimits,
}

/// A started proxy.
pub struct Running {
    pub listen_addrs: Vec<SocketAddr>,
    /// The TLS listeners' addresses.
    pub tls_addrs: Vec<SocketAddr>,
    /// The TLS listeners' certificate (reload with [`Running::reload_tls`]).
    pub tls: Option<Arc<tls::ServerTls>>,
    pub admin_addr: Option<SocketAddr>,
    pub table: Arc<ArcSwap<Table>>,
    pub metrics: Arc<Metrics>,
    pub control: Arc<crate::control::Control>,
    scheduler: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    workers: Vec<oneshot::Receiver<()>>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
    shutdown_timeout: Duration,
}

/// TCP (connect timeout, `TCP_NODELAY`), then TLS for `https://` endpoints.
pub fn connector(connect_timeout: Duration, tls: &rustls::ClientConfig) -> Connector {
    Connector::new(connect_timeout, tls)
}

/// A listening socket that several workers can each bind (the kernel spreads connections).
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Bind every listener, then serve until [`Running::shutdown`].
///
/// Thread per core: each of `rt.workers` threads runs a single-threaded runtime with its own
/// accept socket (SO_REUSEPORT) and its own primary and shadow pools, so a request and the
/// connections it uses never cross threads. The admin listener runs on the caller's runtime.
pub async fn start(rt: Runtime, metrics: Arc<Metrics>) -> std::io::Result<Running> {
    let access_log = AccessLog::start(&rt.access_log, metrics.access_log_dropped.clone())?;
    let table = Arc::new(ArcSwap::from_pointee(rt.table));
    let workers = rt.workers.max(1);
    let comparator = rt
        .compare
        .map(|c| Arc::new(crate::compare::Comparator::start(c, metrics.clone())));

    let client_tls = tls::client_config(rt.upstream_ca.as_deref())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let server_tls = match &rt.tls {
        Some(files) => Some(Arc::new(
            tls::ServerTls::load(files).map_err(|e| std::io::Error::other(e.to_string()))?,
        )),
        None => None,
    };

    // Each worker gets its own socket of every listener (plain, then TLS).
    let mut sockets: Vec<Vec<(std::net::TcpListener, bool)>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut listen_addrs = Vec::new();
    let mut tls_addrs = Vec::new();
    let all = rt.listen.iter().map(|a| (a, false));
    let all = all.chain(rt.tls_listen.iter().map(|a| (a, true)));
    for (addr, secure) in all {
        let ctx = |e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
        };
        let first = bind_reuseport(*addr).map_err(ctx)?;
        let actual = first.local_addr()?;
        if secure {
            tls_addrs.push(actual);
        } else {
            listen_addrs.push(actual);
        }
        sockets[0].push((first, secure));
        for w in sockets.iter_mut().skip(1) {
            w.push((bind_reuseport(actual).map_err(ctx)?, secure));
        }
    }

    let (stop, stop_rx) = watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        rt.max_connections.min(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let mut done = Vec::new();
    for (i, listeners) in sockets.into_iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        done.push(rx);
        let table = table.clone();
        let metrics = metrics.clone();
        let access_log = access_log.clone();
        let comparator = comparator.clone();
        let slots = slots.clone();
        let stop_rx = stop_rx.clone();
        let connect_timeout = rt.connect_timeout;
        let shutdown_timeout = rt.shutdown_timeout;
        let body_timeout = rt.body_timeout;
        let send_timeout = rt.send_timeout;
        let header_timeout = rt.header_timeout;
        let max_body = rt.max_body;
        let head_limits = rt.head_limits;
        let client_tls = client_tls.clone();
        let server_tls = server_tls.clone();
        std::thread::Builder::new()
            .name(format!("mirrorctl-worker-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "worker runtime failed to start");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let state = Arc::new(State {
                        table,
                        client: pool::Pool::new(
                            connector(connect_timeout, &client_tls),
                            pool::PoolConfig::default(),
                        ),
                        mirror: MirrorContext {
                            client: pool::Pool::new(
                                connector(connect_timeout, &client_tls),
                                pool::PoolConfig::default(),
                            ),
                            access_log: access_log.clone(),
                            compare: comparator,
                        },
                        metrics,
                        access_log,
                        connection_slots: slots,
                        body_timeout,
                        send_timeout,
                        header_timeout,
                        max_body,
                        head_limits,
                    });
                    let mut set = JoinSet::new();
                    for (l, secure) in listeners {
                        match TcpListener::from_std(l) {
                            Ok(l) => {
                                set.spawn(server::serve(
                                    l,
                                    state.clone(),
                                    secure.then(|| server_tls.clone()).flatten(),
                                    stop_rx.clone(),
                                    shutdown_timeout,
                                ));
                            }
                            Err(e) => tracing::error!(error = %e, "listener setup failed"),
                        }
                    }
                    while set.join_next().await.is_some() {}
                });
                // Mirrors still in flight end with the runtime: they never hold up a shutdown.
                drop(runtime);
                let _ = tx.send(());
            })?;
    }

    let control = crate::control::Control::start(
        table.clone(),
        metrics.clone(),
        rt.control.state.clone(),
        rt.control.reloader,
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let scheduler = tokio::spawn(control.clone().scheduler(stop_rx.clone()));
    let (admin_addr, admin_task) = match rt.admin {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on admin {addr}: {e}"))
            })?;
            let a = l.local_addr()?;
            let admin = crate::admin::AdminState {
                table: table.clone(),
                metrics: metrics.clone(),
                control: Some(control.clone()),
                token: rt.control.token.clone(),
            };
            (
                Some(a),
                Some(tokio::spawn(crate::admin::serve(
                    l,
                    Arc::new(admin),
                    stop_rx.clone(),
                ))),
            )
        }
        None => (None, None),
    };
    Ok(Running {
        listen_addrs,
        tls_addrs,
        tls: server_tls,
        admin_addr,
        table,
        metrics,
        control,
        scheduler,
        stop,
        workers: done,
        admin_task,
        shutdown_timeout: rt.shutdown_timeout,
    })
}

impl Running {
    /// Stop accepting, let in-flight requests finish (up to the shutdown timeout), return.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let deadline = self.shutdown_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(deadline, async {
            for w in self.workers {
                let _ = w.await;
            }
        })
        .await;
        if let Some(t) = self.admin_task {
            t.abort();
        }
        self.scheduler.abort();
    }

    /// Re-read the TLS listeners' certificate and key (SIGHUP); a bad pair keeps the current.
    pub fn reload_tls(&self) -> Result<(), tls::TlsError> {
        match &self.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// Replace the routing table; requests already routed finish on the old one.
    pub fn swap_table(&self, table: Table) {
        self.table.store(Arc::new(table));
    }
}
