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
    let next = Pki::new("listener-next");
    std::fs::copy(next.path("cert.pem"), pki.path("cert.pem")).expect("copy");
    std::fs::copy(next.path("key.pem"), pki.path("key.pem")).expect("copy");
    running.reload_tls().expect("reload");
    let old = tls_get(&pki, addr, b"http/1.1", "/old-ca").await;
    assert!(
        old.is_err_and(|e| e.contains("certificate")),
        "old CA must not verify"
    );
    let (status, _, _) = tls_get(&next, addr, b"http/1.1", "/new-ca")
        .await
        .expect("new CA");
    assert_eq!(status, StatusCode::OK);
    proxy.stop().await;
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
