//! Test support: in-process upstreams on 127.0.0.1:0 that record what they receive, a proxy
//! started in-process, and a pooled client. Every wait has a deadline.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

pub use mirrorctl::config::flags::ServeFlags;
use mirrorctl::proxy::Running;
use mirrorctl::telemetry::Metrics;

pub const DEADLINE: Duration = Duration::from_secs(10);

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub body_sha256: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Path → (status, content type, body).
pub type Responder = Arc<dyn Fn(&str) -> (u16, &'static str, String) + Send + Sync>;

#[derive(Clone)]
pub enum Behavior {
    /// Answer 200 with this body.
    Answer(&'static str),
    /// Answer with this status.
    Status(u16),
    /// Record the request, then hold the answer until the gate gets a permit.
    Hold(Arc<Semaphore>),
    /// Read the request, never answer (a black hole).
    Never,
    /// Answer with `status` to the first N requests, then 200 `ok`.
    FailFirst(usize, u16),
    /// Answer by path: (status, content type, body).
    ByPath(Responder),
}

pub struct Upstream {
    pub addr: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Recorded>>,
    pub count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

pub fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

impl Upstream {
    pub async fn start(behavior: Behavior) -> Upstream {
        Upstream::start_with(behavior, None).await
    }

    /// An upstream that speaks TLS (https://) with this acceptor's certificate.
    pub async fn start_tls(behavior: Behavior, tls: tokio_rustls::TlsAcceptor) -> Upstream {
        Upstream::start_with(behavior, Some(tls)).await
    }

    /// An upstream on a given address (e.g. a killed one's, to restart it).
    pub async fn start_at(addr: SocketAddr, behavior: Behavior) -> Upstream {
        Upstream::bind_with(addr, behavior, None).await
    }

    async fn start_with(behavior: Behavior, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Upstream::bind_with(any, behavior, tls).await
    }

    /// Dropping an upstream kills it: the listener and every open connection close.
    async fn bind_with(
        addr: SocketAddr,
        behavior: Behavior,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        // A server's backlog (nginx: 511), not std's 128: a burst of new connections from the
        // proxy (256 h2 streams at once) must not be dropped and retried after a second.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(addr).expect("bind upstream");
        let l = socket.listen(4096).expect("listen");
        let addr = l.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let c2 = count.clone();
        let task = tokio::spawn(async move {
            // Connections belong to this task: aborting it closes them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                while conns.try_join_next().is_some() {}
                let tx = tx.clone();
                let behavior = behavior.clone();
                let count = c2.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    let behavior = behavior.clone();
                    let count = count.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let rec = Recorded {
                            method: parts.method.clone(),
                            target: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            headers: parts.headers.clone(),
                            body_len: body.len(),
                            body_sha256: sha256(&body),
                        };
                        let seen = count.fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send(rec);
                        let resp = match behavior {
                            Behavior::Answer(b) => {
                                Response::new(Full::new(Bytes::from_static(b.as_bytes())))
                            }
                            Behavior::Status(s) => {
                                let mut r =
                                    Response::new(Full::new(Bytes::from_static(b"status\n")));
                                *r.status_mut() = StatusCode::from_u16(s).expect("status");
                                r
                            }
                            Behavior::Hold(gate) => {
                                let _p = gate.acquire().await.expect("gate");
                                Response::new(Full::new(Bytes::from_static(b"held\n")))
                            }
                            Behavior::Never => std::future::pending().await,
                            Behavior::FailFirst(n, status) if seen < n => {
                                let mut r =
                                    Response::new(Full::new(Bytes::from_static(b"failing\n")));
                                *r.status_mut() = StatusCode::from_u16(status).expect("status");
                                r
                            }
                            Behavior::FailFirst(..) => {
                                Response::new(Full::new(Bytes::from_static(b"ok")))
                            }
                            Behavior::ByPath(f) => {
                                let (status, ctype, body) = f(parts.uri.path());
                                let mut r = Response::new(Full::new(Bytes::from(body)));
                                *r.status_mut() = StatusCode::from_u16(status).expect("status");
                                r.headers_mut()
                                    .insert("content-type", ctype.parse().expect("ctype"));
                                r
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let tls = tls.clone();
                conns.spawn(async move {
                    let b = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = b.serve_connection(TokioIo::new(s), svc).await;
                        }
                        Some(tls) => {
                            if let Ok(s) = tls.accept(s).await {
                                let _ = b.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            rx: tokio::sync::Mutex::new(rx),
            count,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next request this upstream received, waiting up to the deadline.
    pub async fn next(&self) -> Recorded {
        tokio::time::timeout(DEADLINE, self.rx.lock().await.recv())
            .await
            .expect("upstream received nothing before the deadline")
            .expect("upstream channel open")
    }

    /// Whether a request arrives within `d` (for asserting that none does).
    pub async fn next_within(&self, d: Duration) -> Option<Recorded> {
        tokio::time::timeout(d, self.rx.lock().await.recv())
            .await
            .ok()
            .flatten()
    }

    /// Everything received so far and not yet taken.
    pub async fn drain(&self) -> Vec<Recorded> {
        let mut rx = self.rx.lock().await;
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r);
        }
        out
    }

    pub fn received(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

pub fn flags(primary: &str, shadows: &[String]) -> ServeFlags {
    ServeFlags {
        listen: vec!["127.0.0.1:0".into()],
        admin: Some("127.0.0.1:0".into()),
        primary: Some(primary.to_owned()),
        shadow: shadows.to_vec(),
        access_log: Some("off".into()),
        ..ServeFlags::default()
    }
}

/// Flags that serve the given config files on ephemeral ports.
pub fn config_flags(paths: &[std::path::PathBuf]) -> ServeFlags {
    ServeFlags {
        config: paths.to_vec(),
        listen: vec!["127.0.0.1:0".into()],
        admin: Some("127.0.0.1:0".into()),
        access_log: Some("off".into()),
        ..ServeFlags::default()
    }
}

/// A copy of a file from `examples/` with its upstream ports replaced (e.g. 9001 → the port
/// of a test upstream), in a temp dir of its own.
pub fn example(path: &str, ports: &[(u16, u16)]) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let mut text = std::fs::read_to_string(&src).expect("read example");
    for (from, to) in ports {
        text = text.replace(&format!(": {from}"), &format!(": {to}"));
        text = text.replace(&format!(":{from}"), &format!(":{to}"));
    }
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mirrorctl-ex-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("tmp");
    let out = dir.join(src.file_name().expect("name"));
    std::fs::write(&out, text).expect("write");
    out
}

pub struct Proxy {
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Proxy {
    pub async fn start(f: ServeFlags) -> Proxy {
        let metrics = Arc::new(Metrics::new());
        let cfg = mirrorctl::config::flags::load(&f, &metrics).expect("valid config");
        let running = mirrorctl::proxy::start(cfg, metrics)
            .await
            .expect("start proxy");
        Proxy {
            addr: running.listen_addrs[0],
            admin: running.admin_addr.expect("admin"),
            running: Some(running),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn metrics(&self) -> String {
        let (st, body) = send(
            &client(),
            Request::get(format!("http://{}/metrics", self.admin))
                .body(Full::new(Bytes::new()))
                .expect("req"),
        )
        .await;
        assert_eq!(st, 200);
        String::from_utf8(body.to_vec()).expect("utf8")
    }

    /// The value of one series, e.g. `mirrorctl_mirror_total{route="default",shadow="shadow",outcome="sent"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let m = self.metrics().await;
        m.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Poll a metric until `pred` holds (bounded: 200 tries, DEADLINE).
    pub async fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let end = tokio::time::Instant::now() + DEADLINE;
        for _ in 0..200 {
            let v = self.metric(series).await;
            if pred(v) || tokio::time::Instant::now() > end {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.metric(series).await
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(c: &TestClient, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    let resp = tokio::time::timeout(DEADLINE, c.request(req))
        .await
        .expect("response before deadline")
        .expect("response");
    let st = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (st, body)
}

pub async fn get(c: &TestClient, url: &str) -> (StatusCode, Bytes) {
    send(
        c,
        Request::get(url)
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await
}

/// A raw HTTP/1.1 exchange on a fresh connection; returns what the server sent until it
/// closed or the deadline passed.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Shared log of what a test saw, for assertion messages.
pub type Log = Arc<Mutex<Vec<String>>>;

/// GET with extra headers; returns the status, headers and body.
pub async fn get_with(
    c: &TestClient,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).expect("req");
    let resp = tokio::time::timeout(DEADLINE, c.request(req))
        .await
        .expect("response before deadline")
        .expect("response");
    let st = resp.status();
    let h = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (st, h, body)
}

/// A config file with this text, in a temp dir of its own.
pub fn write_cfg(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mirrorctl-rt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, text).expect("write");
    p
}

/// An upstream answered by hand, for tests that need exact bytes on the wire: a listener on
/// 127.0.0.1, port 0.
pub async fn raw_upstream() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

/// Read from `s` into `buf` until it holds `want` (bounded by [`DEADLINE`]).
pub async fn read_until_has<S>(s: &mut S, buf: &mut Vec<u8>, want: &[u8])
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(DEADLINE, async {
        let mut b = [0u8; 4096];
        while !buf.windows(want.len()).any(|w| w == want) {
            let n = s.read(&mut b).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&b[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no {want:?} before the deadline: {:?}",
            String::from_utf8_lossy(buf)
        )
    });
}

/// Accept one connection and read its request head (bounded by [`DEADLINE`]): the stream, the
/// head lower-cased, and whatever came after the head.
pub async fn accept_head(l: &TcpListener) -> (tokio::net::TcpStream, String, Vec<u8>) {
    let (mut s, _) = tokio::time::timeout(DEADLINE, l.accept())
        .await
        .expect("a connection before the deadline")
        .expect("accept");
    let mut buf = Vec::new();
    read_until_has(&mut s, &mut buf, b"\r\n\r\n").await;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let rest = buf[end..].to_vec();
    (s, head, rest)
}
