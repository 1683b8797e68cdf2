//! A per-worker HTTP/1.1 connection pool over the inline codec of [`super::h1`].
//!
//! A worker's pool is a map from endpoint (scheme + authority) to a LIFO list of idle
//! connections behind an uncontended mutex. A request takes the most recent idle connection
//! (or makes one), runs its exchange on it inside its own task (no connection task, no
//! channels), and the connection comes back when its response has been read to the end —
//! for a small answer, before the head is even returned.
//!
//! What it guarantees:
//! - connections made by the shared [`Connector`] (TCP with its connect timeout and
//!   `TCP_NODELAY`, TLS for `https://`), errors while connecting told apart ([`PoolError::is_connect`]);
//! - idle connections reused (most recent first), never one the upstream closed or wrote to
//!   while idle, at most `max_idle_per_endpoint` kept per endpoint, closed after
//!   `idle_timeout` without use;
//! - a request that a reused connection refused outright (not one byte written: the upstream
//!   had closed it) is sent once more on a fresh connection. A request that was (partly)
//!   written is never replayed.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::Body;
use tokio::time::Instant;

use super::h1::{Conn, Connect, Connector, Failure, H1Error, Transport, UpstreamBody};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response head from the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The connection could not be made (TCP, its timeout, TLS).
    #[error("connect failed")]
    Connect(#[source] BoxError),
    /// The connection failed while sending the request or reading the response head.
    #[error("request failed")]
    Send(#[source] H1Error),
}

impl PoolError {
    /// A failure to connect: nothing was sent, the endpoint may be down.
    pub fn is_connect(&self) -> bool {
        matches!(self, PoolError::Connect(_))
    }
}

/// How the pool keeps connections.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// An idle connection unused this long is closed.
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint; past it the oldest is closed.
    pub max_idle_per_endpoint: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            idle_timeout: Duration::from_secs(60),
            max_idle_per_endpoint: 256,
        }
    }
}

/// An endpoint: the connections to it are interchangeable. Hashed once, when made (the map
/// then uses that hash as is); authorities compare as the configuration spelled them.
#[derive(Debug, Clone)]
struct Key {
    hash: u64,
    https: bool,
    authority: Authority,
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.hash == other.hash
            && self.https == other.https
            && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// FNV-1a over the authority's bytes: the keys are short authorities from our own
/// configuration (not attacker input), so a fast non-keyed hash is enough (SipHash fed byte
/// by byte was most of the legacy pool's cost).
fn fnv(bytes: &[u8], https: bool) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes.iter().chain([&u8::from(https)]) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The map's hasher: a [`Key`] is hashed already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (by `Key`); anything else still hashes deterministically.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Idle<Io> {
    conn: Conn<Io>,
    since: Instant,
}

struct Inner<Io> {
    idle: HashMap<Key, VecDeque<Idle<Io>>, BuildHasherDefault<Prehashed>>,
    /// Whether the task that closes expired idle connections is running.
    reaper: bool,
}

/// The idle connections of one pool (shared with the response bodies that give them back).
struct Store<Io> {
    config: PoolConfig,
    inner: Mutex<Inner<Io>>,
    stats: Stats,
}

/// Gives a connection back to its pool once its exchange ended cleanly.
pub struct Release<Io> {
    store: Arc<Store<Io>>,
    key: Key,
}

impl<Io: Transport> Release<Io> {
    pub(super) fn put(self, conn: Conn<Io>) {
        checkin(&self.store, self.key, conn);
    }
}

struct Shared<C: Connect> {
    connector: C,
    store: Arc<Store<C::Io>>,
}

/// What the pool did, counted (tests; cheap relaxed atomics on one thread).
#[derive(Debug, Default)]
pub struct Stats {
    /// New connections made.
    pub connects: std::sync::atomic::AtomicU64,
    /// Requests sent on an idle connection.
    pub reuses: std::sync::atomic::AtomicU64,
    /// Requests a reused connection refused unsent, sent again on a fresh one.
    pub retries: std::sync::atomic::AtomicU64,
}

/// A worker's upstream connections. Cheap to clone (shared). `C` makes connections: the
/// proxy's [`Connector`], or an in-memory one in tests.
pub struct Pool<C: Connect = Connector> {
    shared: Arc<Shared<C>>,
}

impl<C: Connect> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Pool {
            shared: self.shared.clone(),
        }
    }
}

impl<C: Connect> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.shared.store.config)
            .finish_non_exhaustive()
    }
}

impl<Io> Store<Io> {
    fn lock(&self) -> MutexGuard<'_, Inner<Io>> {
        // Nothing panics while holding it; if something did, the map is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<C: Connect> Pool<C> {
    pub fn new(connector: C, config: PoolConfig) -> Pool<C> {
        Pool {
            shared: Arc::new(Shared {
                connector,
                store: Arc::new(Store {
                    config,
                    inner: Mutex::new(Inner {
                        idle: HashMap::default(),
                        reaper: false,
                    }),
                    stats: Stats::default(),
                }),
            }),
        }
    }

    /// What the pool did so far.
    pub fn stats(&self) -> &Stats {
        &self.shared.store.stats
    }

    /// Idle connections held for an endpoint (for tests and metrics).
    pub fn idle_count(&self, scheme: &Scheme, authority: &Authority) -> usize {
        let key = Key::new(scheme, authority);
        self.shared
            .store
            .lock()
            .idle
            .get(&key)
            .map_or(0, VecDeque::len)
    }

    /// Send `req` (origin-form target) to the endpoint and return its response head; its
    /// body streams from the connection.
    ///
    /// A missing `Host` is set from the endpoint.
    pub async fn send<B>(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        mut req: Request<B>,
    ) -> Result<Response<UpstreamBody<C::Io>>, PoolError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if !req.headers().contains_key(HOST) {
            if let Some(h) = host_value(scheme, authority) {
                req.headers_mut().insert(HOST, h);
            }
        }
        let key = Key::new(scheme, authority);
        let store = &self.shared.store;
        if let Some(conn) = self.checkout(&key) {
            store.stats.reuses.fetch_add(1, Relaxed);
            let release = Release {
                store: store.clone(),
                key: key.clone(),
            };
            match conn.exchange(req, release).await {
                Ok(resp) => return Ok(resp),
                // Refused before one byte was written: the upstream closed this idle
                // connection. One more try, on a connection of our own.
                Err(Failure {
                    unsent: Some(unsent),
                    ..
                }) => {
                    store.stats.retries.fetch_add(1, Relaxed);
                    req = unsent;
                }
                Err(f) => return Err(PoolError::Send(f.error)),
            }
        }
        let conn = self.connect(&key).await?;
        let release = Release {
            store: store.clone(),
            key,
        };
        conn.exchange(req, release)
            .await
            .map_err(|f| PoolError::Send(f.error))
    }

    /// The most recently used idle connection still usable. Expired ones, and ones the
    /// upstream closed or wrote to while idle, are dropped on the way.
    fn checkout(&self, key: &Key) -> Option<Conn<C::Io>> {
        let mut inner = self.shared.store.lock();
        let list = inner.idle.get_mut(key)?;
        let now = Instant::now();
        let timeout = self.shared.store.config.idle_timeout;
        // The oldest are at the front: expired ones go first.
        while list
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) >= timeout)
        {
            list.pop_front();
        }
        while let Some(mut idle) = list.pop_back() {
            if idle.conn.idle_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// A new connection to the endpoint.
    async fn connect(&self, key: &Key) -> Result<Conn<C::Io>, PoolError> {
        self.shared.store.stats.connects.fetch_add(1, Relaxed);
        let io = self
            .shared
            .connector
            .connect(key.https, &key.authority)
            .await
            .map_err(PoolError::Connect)?;
        Ok(Conn::new(io))
    }
}

/// Back to the idle list, most recent last.
fn checkin<Io: Transport>(store: &Arc<Store<Io>>, key: Key, conn: Conn<Io>) {
    let max = store.config.max_idle_per_endpoint;
    if max == 0 {
        return;
    }
    let start_reaper = {
        let mut inner = store.lock();
        let list = inner.idle.entry(key).or_default();
        if list.len() >= max {
            list.pop_front();
        }
        list.push_back(Idle {
            conn,
            since: Instant::now(),
        });
        !std::mem::replace(&mut inner.reaper, true)
    };
    if start_reaper {
        tokio::spawn(reap(Arc::downgrade(store)));
    }
}

/// Close idle connections past their timeout or closed by their upstream, while the pool
/// exists and holds any.
async fn reap<Io: Transport>(store: Weak<Store<Io>>) {
    loop {
        let period = match store.upgrade() {
            Some(s) => s.config.idle_timeout / 2,
            None => return,
        };
        tokio::time::sleep(period.max(Duration::from_millis(10))).await;
        let Some(s) = store.upgrade() else { return };
        let now = Instant::now();
        let timeout = s.config.idle_timeout;
        let mut inner = s.lock();
        inner.idle.retain(|_, list| {
            list.retain_mut(|c| {
                now.saturating_duration_since(c.since) < timeout && c.conn.idle_usable()
            });
            !list.is_empty()
        });
        if inner.idle.is_empty() {
            // Restarted by the next checkin.
            inner.reaper = false;
            return;
        }
    }
}

impl Key {
    fn new(scheme: &Scheme, authority: &Authority) -> Key {
        let https = *scheme == Scheme::HTTPS;
        Key {
            hash: fnv(authority.as_str().as_bytes(), https),
            https,
            authority: authority.clone(),
        }
    }
}

/// `Host` for an endpoint: its host, and its port unless it is the scheme's default.
pub(crate) fn host_value(scheme: &Scheme, authority: &Authority) -> Option<HeaderValue> {
    match authority.port_u16() {
        Some(p) if p != crate::routing::default_port(scheme) => {
            HeaderValue::from_str(&format!("{}:{p}", authority.host())).ok()
        }
        _ => HeaderValue::from_str(authority.host()).ok(),
    }
}

/// The request target an origin server expects: path and query only (`/` when empty).
pub fn origin_form(pq: &http::uri::PathAndQuery) -> Uri {
    Uri::from(pq.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

    /// An in-memory upstream per connection: answers `200 ok` to each request head, and
    /// closes after `close_after` answers, or when the test drops it (`kill`). With `refuse`,
    /// every connection attempt fails as a refused TCP connect would.
    #[derive(Clone, Default)]
    struct Upstream {
        connects: Arc<AtomicUsize>,
        refuse: bool,
        close_after: Option<usize>,
        /// Each connection's kill switch: dropping one closes that server side.
        kill: Arc<Mutex<Vec<tokio::sync::oneshot::Sender<()>>>>,
        /// Set when a server side saw EOF from the pool (the pool closed the connection).
        closed_by_pool: Arc<AtomicUsize>,
        /// Connections do not see the upstream's close while idle.
        blind: bool,
    }

    /// The client half of an in-memory connection.
    struct TestIo {
        io: DuplexStream,
        /// Blind to the upstream's close while idle, as when the runtime has not yet seen
        /// the FIN that is on its way.
        blind: bool,
    }

    impl Transport for TestIo {
        fn idle_usable(&mut self) -> bool {
            if self.blind {
                return true;
            }
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut b = [0u8; 1];
            let mut buf = tokio::io::ReadBuf::new(&mut b);
            Pin::new(&mut self.io)
                .poll_read(&mut cx, &mut buf)
                .is_pending()
        }
    }

    impl AsyncRead for TestIo {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for TestIo {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    impl Connect for Upstream {
        type Io = TestIo;

        async fn connect(&self, _https: bool, _a: &Authority) -> Result<TestIo, BoxError> {
            self.connects.fetch_add(1, Relaxed);
            if self.refuse {
                return Err(
                    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into(),
                );
            }
            let (client, server) = tokio::io::duplex(64 * 1024);
            let (kill_tx, kill_rx) = tokio::sync::oneshot::channel();
            self.kill.lock().expect("lock").push(kill_tx);
            tokio::spawn(serve(
                server,
                self.close_after,
                kill_rx,
                self.closed_by_pool.clone(),
            ));
            Ok(TestIo {
                io: client,
                blind: self.blind,
            })
        }
    }

    async fn serve(
        mut s: DuplexStream,
        close_after: Option<usize>,
        mut kill: tokio::sync::oneshot::Receiver<()>,
        closed_by_pool: Arc<AtomicUsize>,
    ) {
        let mut buf = Vec::new();
        let mut answered = 0;
        loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::select! {
                r = s.read(&mut chunk) => r.unwrap_or(0),
                _ = &mut kill => return,
            };
            if n == 0 {
                closed_by_pool.fetch_add(1, Relaxed);
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                let ok = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                answered += 1;
                if ok.is_err() || close_after == Some(answered) {
                    return;
                }
            }
        }
    }

    fn pool(up: &Upstream, config: PoolConfig) -> Pool<Upstream> {
        Pool::new(up.clone(), config)
    }

    fn endpoint() -> (Scheme, Authority) {
        (Scheme::HTTP, Authority::from_static("upstream.test:8080"))
    }

    async fn get(p: &Pool<Upstream>) -> Result<Bytes, PoolError> {
        let (scheme, authority) = endpoint();
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = Uri::from_static("/x");
        let resp = p.send(&scheme, &authority, req).await?;
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.map_err(PoolError::Send)?;
        Ok(body.to_bytes())
    }

    /// Let the in-memory upstreams run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn idle_connections_are_reused() {
        let up = Upstream::default();
        let p = pool(&up, PoolConfig::default());
        for _ in 0..3 {
            assert_eq!(get(&p).await.expect("get"), "ok");
            settle().await;
        }
        assert_eq!(up.connects.load(Relaxed), 1);
        assert_eq!(p.stats().reuses.load(Relaxed), 2);
        let (s, a) = endpoint();
        assert_eq!(p.idle_count(&s, &a), 1);
    }

    #[tokio::test]
    async fn a_closed_connection_is_never_handed_out() {
        let up = Upstream {
            close_after: Some(1),
            ..Upstream::default()
        };
        let p = pool(&up, PoolConfig::default());
        assert_eq!(get(&p).await.expect("first"), "ok");
        settle().await;
        assert_eq!(get(&p).await.expect("second"), "ok");
        assert_eq!(up.connects.load(Relaxed), 2);
        assert_eq!(
            p.stats().retries.load(Relaxed),
            0,
            "seen closed, not retried"
        );
    }

    #[tokio::test]
    async fn an_unsent_request_on_a_stale_connection_is_retried_once_on_a_fresh_one() {
        let up = Upstream {
            blind: true,
            ..Upstream::default()
        };
        let p = pool(&up, PoolConfig::default());
        assert_eq!(get(&p).await.expect("first"), "ok");
        settle().await;
        // The upstream closes the idle connection; the pool has not seen it yet when the next
        // request goes out on it, so the connection refuses the request unwritten.
        drop(up.kill.lock().expect("lock").pop());
        settle().await;
        assert_eq!(get(&p).await.expect("retried"), "ok");
        assert_eq!(up.connects.load(Relaxed), 2);
        assert_eq!(p.stats().retries.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_failed_fresh_connection_is_not_retried() {
        let up = Upstream {
            refuse: true,
            ..Default::default()
        };
        let p = pool(&up, PoolConfig::default());
        let (s, a) = endpoint();
        let e = p.send(&s, &a, Request::new(Empty::new())).await;
        let e = e.expect_err("refused");
        assert!(e.is_connect());
        assert_eq!(crate::proxy::error_chain(&e), "connect failed: refused");
        assert_eq!(up.connects.load(Relaxed), 1, "one attempt, no retry");
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let up = Upstream::default();
        let p = pool(
            &up,
            PoolConfig {
                idle_timeout: Duration::from_millis(50),
                ..PoolConfig::default()
            },
        );
        assert_eq!(get(&p).await.expect("get"), "ok");
        let (s, a) = endpoint();
        assert_eq!(p.idle_count(&s, &a), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        settle().await;
        assert_eq!(p.idle_count(&s, &a), 0, "reaped");
        assert_eq!(up.closed_by_pool.load(Relaxed), 1, "and closed");
        assert_eq!(get(&p).await.expect("get"), "ok");
        assert_eq!(up.connects.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_per_endpoint() {
        let up = Upstream::default();
        let p = pool(
            &up,
            PoolConfig {
                max_idle_per_endpoint: 2,
                ..PoolConfig::default()
            },
        );
        let all = futures_join(&p, 5).await;
        for r in &all {
            assert_eq!(
                r.as_ref().map_err(|e| crate::proxy::error_chain(e)).ok(),
                Some(&Bytes::from_static(b"ok")),
                "{r:?}"
            );
        }
        let (s, a) = endpoint();
        assert_eq!(up.connects.load(Relaxed), 5);
        assert_eq!(p.idle_count(&s, &a), 2);
    }

    async fn futures_join(p: &Pool<Upstream>, n: usize) -> Vec<Result<Bytes, PoolError>> {
        // Heads first, all at once: each request needs a connection of its own.
        let (scheme, authority) = endpoint();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let p = p.clone();
            let (scheme, authority) = (scheme.clone(), authority.clone());
            set.spawn(async move {
                let resp = p
                    .send(&scheme, &authority, Request::new(Empty::new()))
                    .await?;
                Ok::<_, PoolError>(resp)
            });
        }
        let mut heads = Vec::new();
        while let Some(r) = set.join_next().await {
            heads.push(r.expect("task"));
        }
        let mut out = Vec::new();
        for h in heads {
            out.push(match h {
                Ok(resp) => resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .map_err(PoolError::Send),
                Err(e) => Err(e),
            });
        }
        out
    }
}
