//! TLS with rustls (ring; no OpenSSL): the client-facing listener's certificate, reloadable
//! in place, and the verifying client configuration for `https://` upstreams.
//!
//! The listener's certificate sits behind a resolver holding an [`ArcSwap`]: a reload reads
//! and checks both files first and only then swaps, so a bad file keeps the certificate in use
//! and new handshakes pick up a good one at once (established connections keep theirs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Certificate chain and private key files (PEM) of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn load_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        file_err(
            &files.key,
            format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let ck = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        file_err(
            &files.key,
            format!("does not go with {}: {e}", files.cert.display()),
        )
    })?;
    Ok(Arc::new(ck))
}

#[derive(Debug)]
struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A TLS listener's configuration: ALPN h2 and http/1.1, certificate reloadable.
pub struct ServerTls {
    files: TlsFiles,
    resolver: Arc<Resolver>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl ServerTls {
    pub fn load(files: &TlsFiles) -> Result<ServerTls, TlsError> {
        let resolver = Arc::new(Resolver(ArcSwap::new(load_key(files)?)));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            files: files.clone(),
            resolver,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        })
    }

    /// Re-read the certificate and key; on error the current pair stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let ck = load_key(&self.files)?;
        self.resolver.0.store(ck);
        Ok(())
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// The client configuration for `https://` upstreams: server certificates verified against
/// `ca` (PEM bundle) when given, else the Mozilla roots (webpki-roots); SNI from the
/// upstream's host name (ALPN http/1.1 is set by the connector).
pub fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for c in read_certs(path)? {
                roots.add(c).map_err(|e| file_err(path, e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("mirrorctl-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, "not a certificate").expect("write");
        std::fs::write(&key, "not a key").expect("write");
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        let e = ServerTls::load(&files).err().expect("refused").to_string();
        assert!(e.starts_with(&cert.display().to_string()), "{e}");
        assert!(e.contains("no PEM certificate"), "{e}");

        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        std::fs::write(&cert, ck.cert.pem()).expect("write");
        let e = ServerTls::load(&files).err().expect("refused").to_string();
        assert!(e.starts_with(&key.display().to_string()), "{e}");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write");
        let tls = ServerTls::load(&files).expect("loads");
        // A broken file on reload keeps the pair in use.
        std::fs::write(&key, "gone").expect("write");
        assert!(tls.reload().is_err());
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).expect("cert");
        std::fs::write(&key, other.signing_key.serialize_pem()).expect("write");
        let e = tls.reload().expect_err("mismatch").to_string();
        assert!(e.contains("does not go with"), "{e}");
        std::fs::write(&cert, other.cert.pem()).expect("write");
        tls.reload().expect("good pair");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
