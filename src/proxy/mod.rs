//! The proxy: listeners, the shared state every request reads, and start/stop.
//!
//! Composition happens here and nowhere else: a validated [`Runtime`] becomes bound listeners,
//! a pooled primary client, a separate pooled shadow client, the admin listener and the access
//! log. [`Running`] is the handle the CLI and the tests hold; dropping it does not stop the
//! proxy, [`Running::shutdown`] does (stop accepting, finish in-flight requests up to a deadline).

pub mod error;
mod handler;
pub mod headers;
mod server;

pub use error::{error_chain, ProxyError};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Runtime;
use crate::mirror::{MirrorContext, TeeBody};
use crate::routing::Table;
use crate::telemetry::{AccessLog, Metrics};

/// What the client receives: the primary's streamed body, or a short local answer.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The primary's pooled client; request bodies stream through the mirror tee.
pub type PrimaryClient = Client<HttpConnector, TeeBody<Incoming>>;

/// Everything a request reads. The table is swapped whole; the rest lives as long as the process.
pub struct State {
    pub table: ArcSwap<Table>,
    pub client: PrimaryClient,
    pub mirror: MirrorContext,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    primary_label: Arc<str>,
}

/// A started proxy.
pub struct Running {
    pub listen_addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shutdown_timeout: Duration,
}

fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_connect_timeout(Some(connect_timeout));
    c.set_nodelay(true);
    c.enforce_http(false);
    c
}

fn client_builder() -> hyper_util::client::legacy::Builder {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    b
}

/// Bind every listener, then serve until [`Running::shutdown`].
pub async fn start(rt: Runtime, metrics: Arc<Metrics>) -> std::io::Result<Running> {
    let access_log = AccessLog::start(&rt.access_log, metrics.access_log_dropped.clone())?;
    let client = client_builder().build(connector(rt.connect_timeout));
    let shadow_client = client_builder().build(connector(rt.connect_timeout));
    let state = Arc::new(State {
        table: ArcSwap::from_pointee(rt.table),
        client,
        mirror: MirrorContext {
            client: shadow_client,
            metrics: metrics.clone(),
            access_log: access_log.clone(),
        },
        metrics,
        access_log,
        primary_label: "primary".into(),
    });

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut listen_addrs = Vec::new();
    for addr in &rt.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        listen_addrs.push(l.local_addr()?);
        tasks.spawn(server::serve(
            l,
            state.clone(),
            stop_rx.clone(),
            rt.shutdown_timeout,
        ));
    }
    let admin_addr = match rt.admin {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on admin {addr}: {e}"))
            })?;
            let a = l.local_addr()?;
            tasks.spawn(crate::admin::serve(l, state.clone(), stop_rx.clone()));
            Some(a)
        }
        None => None,
    };
    Ok(Running {
        listen_addrs,
        admin_addr,
        state,
        stop,
        tasks,
        shutdown_timeout: rt.shutdown_timeout,
    })
}

impl Running {
    /// Stop accepting, let in-flight requests finish (up to the shutdown timeout), return.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let deadline = self.shutdown_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }

    /// Replace the routing table; requests already routed finish on the old one.
    pub fn swap_table(&self, table: Table) {
        self.state.table.store(Arc::new(table));
    }
}
