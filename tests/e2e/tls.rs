//! TLS on both sides: the client-facing listener (ALPN h2 and http/1.1, certificate reloaded
//! in place) and `https://` primaries and shadows (verified against a CA, SNI from the host).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::support::*;

/// A CA and a certificate it signed for `localhost`, written as PEM files.
struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(format!(
            "mirrorctl-tls-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");
        Pki {
            ca: ca.der().clone(),
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            dir,
        }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
        .expect("server config");
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    }

    fn connector(&self, alpn: &[u8]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One GET over TLS to `addr` as `localhost`, with ALPN `alpn`: status, negotiated ALPN, body.
async fn tls_get(
    pki: &Pki,
    addr: std::net::SocketAddr,
    alpn: &[u8],
    path: &str,
) -> Result<(StatusCode, Vec<u8>, Bytes), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tokio::time::timeout(DEADLINE, pki.connector(alpn).connect(name, tcp))
        .await
        .map_err(|_| "handshake deadline".to_owned())?
        .map_err(|e| e.to_string())?;
    let negotiated = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    let io = TokioIo::new(tls);
    let resp = if negotiated == b"h2" {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(format!("https://localhost{path}"))
            .body(Empty::<Bytes>::new())
            .expect("req");
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .expect("req");
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status();
    let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
        .await
        .map_err(|_| "body deadline".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, negotiated, body))
}

#[tokio::test]
async fn tls_listener_speaks_h2_and_http1_and_reloads_its_certificate() {
    let pki = Pki::new("listener");
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let mut f = flags(&primary.url(), &[shadow.url()]);
    f.tls_listen = vec!["127.0.0.1:0".into()];
    f.tls_cert = Some(pki.path("cert.pem"));
    f.tls_key = Some(pki.path("key.pem"));
    let proxy = Proxy::start(f).await;
    let addr = proxy.running.as_ref().expect("running").tls_addrs[0];

    for (alpn, path) in [(&b"h2"[..], "/over-h2"), (b"http/1.1", "/over-h1")] {
        let (status, negotiated, body) = tls_get(&pki, addr, alpn, path).await.expect("get");
        assert_eq!(
            (status, negotiated.as_slice(), &body[..]),
            (StatusCode::OK, alpn, &b"v1"[..])
        );
        for seen in [primary.next().await, shadow.next().await] {
            assert_eq!(seen.target, path);
            assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        }
    }
    // The plain listener still answers plain HTTP.
    let reply = raw(
        proxy.addr,
        b"GET /plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(
        primary.next().await.header("x-forwarded-proto"),
        Some("http")
    );

    // Reload: a broken key is refused and the certificate in use stays.
    let running = proxy.running.as_ref().expect("running");
    std::fs::write(pki.path("key.pem"), "not a key").expect("write");
    let e = running
        .reload_tls()
        .expect_err("bad key refused")
        .to_string();
    assert!(e.contains("key.pem"), "{e}");
    assert!(tls_get(&pki, addr, b"http/1.1", "/still").await.is_ok());
    // A certificate from another CA: after the reload, clients trusting only the old CA fail
    // and clients trusting the new one succeed.
    let next = pki.install_new_ca("listener-next");
    running.reload_tls().expect("reload");
    only_the_new_ca_verifies(&pki, &next, addr).await;
    proxy.stop().await;
}

impl Pki {
    /// A new CA and certificate, copied over this one's `cert.pem` and `key.pem`.
    fn install_new_ca(&self, name: &str) -> Pki {
        let next = Pki::new(name);
        for f in ["cert.pem", "key.pem"] {
            std::fs::copy(next.path(f), self.path(f)).expect("copy");
        }
        next
    }
}

/// After a reload onto `new`'s certificate: `old`'s CA no longer verifies, `new`'s does.
async fn only_the_new_ca_verifies(old: &Pki, new: &Pki, addr: std::net::SocketAddr) {
    let refused = tls_get(old, addr, b"http/1.1", "/old-ca").await;
    assert!(
        refused.is_err_and(|e| e.contains("certificate")),
        "old CA must not verify"
    );
    let (status, _, _) = tls_get(new, addr, b"http/1.1", "/new-ca")
        .await
        .expect("new CA");
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn https_primary_and_shadow_are_verified_against_the_ca() {
    let pki = Pki::new("upstream");
    let primary = Upstream::start_tls(Behavior::Answer("secure v1"), pki.acceptor()).await;
    let shadow = Upstream::start_tls(Behavior::Answer("secure v2"), pki.acceptor()).await;
    let url = |u: &Upstream| format!("https://localhost:{}", u.addr.port());
    let mut f = flags(&url(&primary), &[url(&shadow)]);
    f.upstream_ca = Some(pki.path("ca.pem"));
    let proxy = Proxy::start(f).await;
    let c = client();
    let (status, _, body) = get_with(&c, &format!("http://{}/s", proxy.addr), &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"secure v1"[..]));
    assert_eq!(primary.next().await.target, "/s");
    assert_eq!(shadow.next().await.target, "/s");
    proxy.stop().await;

    // Without the CA (Mozilla roots only) the primary's certificate is not trusted: 502 with
    // the reason, and the shadow's failure is counted, never seen by the client.
    let proxy = Proxy::start(flags(&url(&primary), &[url(&shadow)])).await;
    let (status, _, body) = get_with(&c, &format!("http://{}/untrusted", proxy.addr), &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("certificate"), "{body}");
    proxy.stop().await;
}

#[test]
fn tls_flags_are_checked() {
    let metrics = mirrorctl::telemetry::Metrics::new();
    let mut f = flags("http://127.0.0.1:1", &[]);
    f.tls_listen = vec!["127.0.0.1:0".into()];
    let e = mirrorctl::config::flags::load(&f, &metrics).expect_err("no cert");
    assert!(e.to_string().contains("--tls-listen"), "{e}");
    f.tls_cert = Some("/nonexistent/cert.pem".into());
    let e = mirrorctl::config::flags::load(&f, &metrics).expect_err("no key");
    assert!(e.to_string().contains("--tls-cert"), "{e}");
}

/// The real binary with a native `tls:` block: SIGHUP swaps in a new certificate, and a
/// broken key on the next SIGHUP is refused with the file named while the new one stays.
#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_real_binary() {
    use tokio::io::AsyncBufReadExt;
    let pki = Pki::new("hup");
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let cfg = pki.path("mirror.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners: [127.0.0.1:0]\naccess_log: 'off'\ntls:\n  listeners: [127.0.0.1:0]\n  cert: {}\n  key: {}\nservices:\n  - {{name: v1, endpoints: ['{}']}}\nroutes:\n  - {{name: default, route: [{{destination: v1}}]}}\n",
            pki.path("cert.pem").display(),
            pki.path("key.pem").display(),
            primary.addr
        ),
    )
    .expect("write");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mirrorctl"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--state")
        .arg(pki.path("state.json"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut wait_for = async |needle: &str| -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(l))) if l.contains(needle) => return l,
                Ok(Ok(Some(_))) => {}
                other => panic!("no log line with `{needle}`: {other:?}"),
            }
        }
    };
    let line = wait_for("serving TLS").await;
    let addr: std::net::SocketAddr = line
        .rsplit("listen=")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no address in `{line}`"));
    let (status, _, body) = tls_get(&pki, addr, b"h2", "/before")
        .await
        .expect("first CA");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"v1"[..]));
    assert_eq!(primary.next().await.target, "/before");

    let hup = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill")
    };
    let next = pki.install_new_ca("hup-next");
    hup(child.id().expect("pid"));
    wait_for("TLS certificate reloaded").await;
    only_the_new_ca_verifies(&pki, &next, addr).await;

    std::fs::write(pki.path("key.pem"), "not a key").expect("break");
    hup(child.id().expect("pid"));
    let refused = wait_for("TLS reload refused").await;
    assert!(refused.contains("key.pem"), "{refused}");
    let (status, _, _) = tls_get(&next, addr, b"h2", "/kept").await.expect("kept");
    assert_eq!(status, StatusCode::OK);

    std::process::Command::new("kill")
        .args(["-TERM", &child.id().expect("pid").to_string()])
        .status()
        .expect("kill");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("stops")
        .expect("wait");
    assert!(status.success(), "{status}");
}

#[test]
fn the_tls_block_is_checked_with_its_location() {
    let pki = Pki::new("block");
    let metrics = mirrorctl::telemetry::Metrics::new();
    let base = "listeners: [127.0.0.1:0]\nservices:\n  - {name: v1, endpoints: ['127.0.0.1:9']}\nroutes:\n  - {name: d, route: [{destination: v1}]}\n";
    let load =
        |tls: &str| mirrorctl::config::load_str(&format!("{base}tls:\n{tls}"), "m.yaml", &metrics);
    let cert = pki.path("cert.pem").display().to_string();
    let key = pki.path("key.pem").display().to_string();
    let rt = load(&format!(
        "  listeners: [127.0.0.1:0]\n  cert: {cert}\n  key: {key}\n  upstream_ca: {}\n",
        pki.path("ca.pem").display()
    ))
    .expect("valid");
    assert_eq!(rt.tls_listen.len(), 1);
    assert_eq!(rt.upstream_ca, Some(pki.path("ca.pem")));
    for (tls, want) in [
        (
            format!("  listeners: [127.0.0.1:0]\n  cert: {cert}\n  key: /nonexistent/key.pem\n"),
            "m.yaml:9:8: tls.key: /nonexistent/key.pem: ",
        ),
        (
            format!("  listeners: [127.0.0.1:0]\n  cert: {key}\n  key: {key}\n"),
            "m.yaml:8:9: tls.cert: ",
        ),
        (
            "  listeners: [127.0.0.1:0]\n".to_owned(),
            "m.yaml:7:15: tls.listeners: need tls.cert and tls.key",
        ),
        (
            format!("  cert: {cert}\n  key: {key}\n"),
            "m.yaml:7:9: tls.cert: is for TLS listeners",
        ),
        (
            "  upstream_ca: /nonexistent/ca.pem\n".to_owned(),
            "m.yaml:7:16: tls.upstream_ca: /nonexistent/ca.pem",
        ),
        (
            "  listeners: [nope]\n".to_owned(),
            "m.yaml:7:15: tls.listeners[0]: `nope`",
        ),
    ] {
        let e = load(&tls).expect_err(&tls).to_string();
        assert!(e.starts_with(want), "{tls}\n{e}");
    }
}

/// An Istio DestinationRule with `tls: {mode: SIMPLE}` originates TLS to its destination
/// (verified against `--upstream-ca`, SNI = the endpoint's host); `ISTIO_MUTUAL`, which only a
/// mesh can do, is a warning and plain HTTP. The two hosts share their first label (`api`):
/// each keeps its own endpoints.
#[tokio::test]
async fn istio_destination_rule_tls_simple_and_istio_mutual() {
    let pki = Pki::new("istio");
    let primary = Upstream::start_tls(Behavior::Answer("over tls"), pki.acceptor()).await;
    let shadow = Upstream::start(Behavior::Answer("plain")).await;
    let cfg = pki.path("istio.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api}}
spec:
  hosts: [api.example.com]
  http:
    - route: [{{destination: {{host: api.example.com}}}}]
      mirror: {{host: api.example.org}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api-com}}
spec:
  hosts: [api.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]
  resolution: DNS
  endpoints: [{{address: localhost, ports: {{http: {tls_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api-com}}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {{mode: SIMPLE, sni: localhost}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api-org}}
spec:
  hosts: [api.example.org]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {plain_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api-org}}
spec:
  host: api.example.org
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
"#,
            tls_port = primary.addr.port(),
            plain_port = shadow.addr.port(),
        ),
    )
    .expect("write");
    let mut f = config_flags(std::slice::from_ref(&cfg));
    f.upstream_ca = Some(pki.path("ca.pem"));
    let metrics = mirrorctl::telemetry::Metrics::new();
    let (_, warnings) = mirrorctl::config::flags::load_with_warnings(&f, &metrics).expect("valid");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("spec.trafficPolicy.tls.mode: ISTIO_MUTUAL needs the mesh"),
        "{warnings:?}"
    );
    let proxy = Proxy::start(f).await;
    let c = client();
    let (status, _, body) =
        get_with(&c, &proxy.url("/orders"), &[("host", "api.example.com")]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"over tls"[..]));
    assert_eq!(primary.next().await.target, "/orders");
    assert_eq!(shadow.next().await.target, "/orders");
    proxy.stop().await;

    // The modes and fields mirrorctl cannot honour are refused where they are written.
    let text = std::fs::read_to_string(&cfg).expect("read");
    for (from, to, want) in [
        (
            "tls: {mode: SIMPLE, sni: localhost}",
            "tls: {mode: MUTUAL}",
            "istio.yaml:25:17: document 3 (DestinationRule api-com): spec.trafficPolicy.tls.mode: not supported",
        ),
        (
            "tls: {mode: SIMPLE, sni: localhost}",
            "tls: {mode: SIMPLE, sni: other.example}",
            "istio.yaml:25:30: document 3 (DestinationRule api-com): spec.trafficPolicy.tls.sni: `other.example` is not the endpoints' host name",
        ),
        (
            "tls: {mode: SIMPLE, sni: localhost}",
            "tls: {mode: SIMPLE, insecureSkipVerify: true}",
            "spec.trafficPolicy.tls.insecureSkipVerify: mirrorctl always verifies",
        ),
        (
            "tls: {mode: SIMPLE, sni: localhost}",
            "tls: {mode: SIMPLE, caCertificates: /etc/ca.pem}",
            "spec.trafficPolicy.tls.caCertificates: not supported by mirrorctl (give the CA bundle to the proxy",
        ),
    ] {
        std::fs::write(&cfg, text.replace(from, to)).expect("write");
        let e = mirrorctl::config::flags::load(&config_flags(std::slice::from_ref(&cfg)), &metrics)
            .map(drop)
            .expect_err(to)
            .to_string();
        assert!(e.contains(want), "{to}\n{e}");
    }
}

/// The header timeout covers the TLS handshake: a client that connects to the TLS listener
/// and sends nothing is closed when it runs out, counted from accept.
#[tokio::test]
async fn a_silent_tls_client_is_closed_at_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new("silent");
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let mut f = flags(&primary.url(), &[]);
    f.tls_listen = vec!["127.0.0.1:0".into()];
    f.tls_cert = Some(pki.path("cert.pem"));
    f.tls_key = Some(pki.path("key.pem"));
    f.header_timeout = Some("300ms".into());
    let proxy = Proxy::start(f).await;
    let addr = proxy.running.as_ref().expect("running").tls_addrs[0];
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let t0 = std::time::Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("closed before the deadline")
        .unwrap_or(0);
    let waited = t0.elapsed();
    assert_eq!(n, 0, "nothing sent to a silent client: {rest:?}");
    assert!(
        waited >= std::time::Duration::from_millis(300)
            && waited < std::time::Duration::from_secs(5),
        "closed {waited:?} after connecting"
    );
    // A real client is still served.
    let (status, _, body) = tls_get(&pki, addr, b"http/1.1", "/after")
        .await
        .expect("get");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"v1"[..]));
    proxy.stop().await;
}
