//! Configuration in two steps: read (serde file types, [`native`]) then validate into a
//! [`Runtime`] whose routing table the proxy serves. Command-line flags ([`flags`]) produce the
//! same file types, so both forms go through one validation.
//!
//! Every error names where it is: `file:line:column: field: what is wrong`.

mod build;
pub mod common;
pub mod flags;
pub mod istio;
pub mod native;
mod units;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use build::{build, build_with_warnings};
pub use units::{parse_duration, parse_size};

use crate::routing::Table;
use crate::telemetry::{Metrics, Sink};

/// A validated configuration, ready to serve.
#[derive(Debug)]
pub struct Runtime {
    pub listen: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub access_log: Sink,
    pub connect_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Worker threads, each with its own accept socket and upstream pools.
    pub workers: usize,
    /// Client connections open at once, all workers together; past it accepting pauses.
    pub max_connections: usize,
    /// A request body that sends nothing for this long fails with 408 (nginx client_body_timeout).
    pub body_timeout: Duration,
    /// A client that takes no response bytes for this long is disconnected (nginx send_timeout).
    pub send_timeout: Duration,
    /// From accept to the first complete request head, TLS handshake and protocol detection
    /// included (nginx client_header_timeout); past it the connection is closed.
    pub header_timeout: Duration,
    /// A request body larger than this gets 413 (nginx client_max_body_size); `None`: no limit.
    pub max_body: Option<u64>,
    /// Request head size and field count (431 past either; 414 for a request line alone).
    pub head_limits: crate::proxy::guard::HeadLimits,
    /// TLS listeners (with `tls`'s certificate; ALPN h2 and http/1.1).
    pub tls_listen: Vec<SocketAddr>,
    pub tls: Option<crate::proxy::tls::TlsFiles>,
    /// CA bundle that `https://` upstreams are verified against (default: Mozilla's roots).
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Compare shadows with the primary and record the pairs (`None`: mirror only).
    pub compare: Option<crate::compare::CompareConfig>,
    /// Live control: state file, admin token, how to reload.
    pub control: ControlOptions,
    pub table: Table,
}

/// Live-control settings (from flags; config files do not carry secrets or state paths).
#[derive(Default)]
pub struct ControlOptions {
    /// Where live changes and schedules are kept across restarts (`None`: memory only).
    pub state: Option<std::path::PathBuf>,
    /// Bearer token required by every admin change.
    pub token: Option<String>,
    /// Rebuilds the table from the config files (reload, SIGHUP).
    pub reloader: Option<crate::control::Reloader>,
}

impl fmt::Debug for ControlOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlOptions")
            .field("state", &self.state)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("reloader", &self.reloader.is_some())
            .finish()
    }
}

/// A configuration problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `command line`.
    pub file: String,
    /// 1-based; `None` when the problem has no single place (or comes from flags).
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            (Some(l), None) => write!(f, "{}:{l}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl ConfigError {
    pub fn at(source: &str, loc: &serde_saphyr::Location, message: impl Into<String>) -> Self {
        let known = loc.line() > 0;
        ConfigError {
            file: source.to_owned(),
            line: known.then(|| loc.line()),
            column: known.then(|| loc.column()),
            message: message.into(),
        }
    }

    pub fn whole(source: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: source.to_owned(),
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

/// Parse native YAML text. `source` names it in errors.
pub fn parse_str(text: &str, source: &str) -> Result<native::FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::whole(source, "the file is empty"));
    }
    serde_saphyr::from_str::<native::FileConfig>(text).map_err(|e| {
        let message = units::yaml_message(&e);
        match e.location() {
            Some(loc) => ConfigError::at(source, &loc, message),
            None => ConfigError::whole(source, message),
        }
    })
}

/// A file's text and the name errors give it.
fn read(path: &Path) -> Result<(String, String), ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::whole(&source, format!("cannot read: {e}")))?;
    Ok((text, source))
}

/// Read and parse a config file (not yet validated).
pub fn load_file_config(path: &Path) -> Result<native::FileConfig, ConfigError> {
    let (text, source) = read(path)?;
    parse_str(&text, &source)
}

/// Parse and validate native YAML text: a file's contents, `source` naming it in errors.
pub fn load_str(text: &str, source: &str, metrics: &Metrics) -> Result<Runtime, ConfigError> {
    build(parse_str(text, source)?, source, metrics)
}

/// Read, parse and validate a config file.
pub fn load_file(path: &Path, metrics: &Metrics) -> Result<Runtime, ConfigError> {
    let (text, source) = read(path)?;
    load_str(&text, &source, metrics)
}
