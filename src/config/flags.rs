//! The quick form: `serve --listen … --primary URL --shadow URL … --mirror-percent P`.
//!
//! Flags become the same file types a YAML config is read into (one service `primary`, one
//! per `--shadow` named `shadow` or `shadow-N`, one route `default`), so they pass through the
//! same validation. With `--config`, `--listen`, `--admin` and `--access-log` override the file.

use std::path::PathBuf;

use serde_saphyr::{Location, Spanned};

use super::native::{
    DestinationFile, EndpointFile, FileConfig, MirrorFile, RouteFile, ServiceFile, ShadowFile,
    TimeoutsFile,
};
use super::{build, load_file_config, ConfigError, Runtime};
use crate::telemetry::Metrics;

const SOURCE: &str = "command line";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeFlags {
    /// Native YAML config file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to accept client traffic on (repeatable). Default 127.0.0.1:8080.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Vec<String>,
    /// The primary upstream (quick form), e.g. http://127.0.0.1:9001.
    #[arg(long, value_name = "URL")]
    pub primary: Option<String>,
    /// A shadow upstream that receives mirrored copies (repeatable).
    #[arg(long, value_name = "URL")]
    pub shadow: Vec<String>,
    /// Share of requests mirrored to each shadow, 0–100, fractional allowed.
    #[arg(long, value_name = "PERCENT")]
    pub mirror_percent: Option<f64>,
    /// Admin listener (metrics, status).
    #[arg(long, value_name = "IP:PORT")]
    pub admin: Option<String>,
    /// Access log: stdout (default), stderr, off, or a file path.
    #[arg(long, value_name = "DEST")]
    pub access_log: Option<String>,
    /// Upstream connect timeout (default 1s).
    #[arg(long, value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Primary response-head timeout (default 30s).
    #[arg(long, value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// Graceful-shutdown deadline (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// Shadow answer deadline (default 5s).
    #[arg(long, value_name = "DURATION")]
    pub mirror_timeout: Option<String>,
    /// Mirrored requests in flight per shadow (default 256).
    #[arg(long, value_name = "N")]
    pub mirror_max_in_flight: Option<usize>,
    /// Largest mirrored request body (default 1MiB).
    #[arg(long, value_name = "SIZE")]
    pub mirror_max_body: Option<String>,
    /// Body bytes held for copies in flight per shadow (default 8MiB).
    #[arg(long, value_name = "SIZE")]
    pub mirror_max_buffered: Option<String>,
    /// Mirror only these methods, comma-separated (e.g. GET,HEAD).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub mirror_methods: Vec<String>,
    /// Keep the shadow's Host unchanged (default: suffix `-shadow`).
    #[arg(long)]
    pub no_shadow_host_suffix: bool,
}

fn s<T>(v: T) -> Spanned<T> {
    Spanned::new(v, Location::UNKNOWN, Location::UNKNOWN)
}

fn flag_err(flag: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError::whole(SOURCE, format!("{flag}: {msg}"))
}

/// Turn the quick-form flags into a file config.
fn quick_config(f: &ServeFlags) -> Result<FileConfig, ConfigError> {
    let primary = f.primary.as_ref().ok_or_else(|| {
        flag_err(
            "--primary",
            "a primary upstream is needed (or pass --config FILE)",
        )
    })?;
    super::build::parse_endpoint(primary).map_err(|m| flag_err("--primary", m))?;
    let percent = f.mirror_percent.unwrap_or(100.0);
    if !(percent.is_finite() && (0.0..=100.0).contains(&percent)) {
        return Err(flag_err(
            "--mirror-percent",
            format!("{percent} is not between 0 and 100"),
        ));
    }
    let mut services = vec![ServiceFile {
        name: s("primary".into()),
        endpoints: s(vec![s(EndpointFile::Address(primary.clone()))]),
        request_timeout: None,
        shadow: None,
    }];
    let mut mirrors = Vec::new();
    for (i, url) in f.shadow.iter().enumerate() {
        super::build::parse_endpoint(url).map_err(|m| flag_err("--shadow", m))?;
        let name = if f.shadow.len() == 1 {
            "shadow".to_owned()
        } else {
            format!("shadow-{}", i + 1)
        };
        services.push(ServiceFile {
            name: s(name.clone()),
            endpoints: s(vec![s(EndpointFile::Address(url.clone()))]),
            request_timeout: None,
            shadow: None,
        });
        mirrors.push(MirrorFile {
            destination: s(name),
            percent: Some(s(percent)),
        });
    }
    let mirror_defaults = ShadowFile {
        max_in_flight: f.mirror_max_in_flight.map(s),
        timeout: f.mirror_timeout.clone().map(s),
        max_body: f.mirror_max_body.clone().map(s),
        max_buffered: f.mirror_max_buffered.clone().map(s),
        methods: (!f.mirror_methods.is_empty()).then(|| {
            f.mirror_methods
                .iter()
                .map(|m| s(m.trim().to_owned()))
                .collect()
        }),
        host_suffix: f.no_shadow_host_suffix.then(|| s(String::new())),
        breaker: None,
    };
    Ok(FileConfig {
        listeners: Vec::new(),
        admin: None,
        access_log: None,
        timeouts: TimeoutsFile {
            connect: f.connect_timeout.clone().map(s),
            request: f.request_timeout.clone().map(s),
            shutdown: f.shutdown_timeout.clone().map(s),
        },
        mirror_defaults,
        services: s(services),
        routes: s(vec![RouteFile {
            name: s("default".into()),
            matches: Vec::new(),
            route: s(vec![DestinationFile {
                destination: s("primary".into()),
                weight: None,
            }]),
            mirrors,
        }]),
    })
}

/// Build the runtime from flags: a config file with overrides, or the quick form.
pub fn load(f: &ServeFlags, metrics: &Metrics) -> Result<Runtime, ConfigError> {
    let (mut file, source) = match &f.config {
        Some(path) => {
            if f.primary.is_some() || !f.shadow.is_empty() || f.mirror_percent.is_some() {
                return Err(flag_err(
                    "--config",
                    "--primary/--shadow/--mirror-percent describe a config of their own; use them or a file, not both",
                ));
            }
            (load_file_config(path)?, path.display().to_string())
        }
        None => (quick_config(f)?, SOURCE.to_owned()),
    };
    if !f.listen.is_empty() {
        file.listeners = f.listen.iter().cloned().map(s).collect();
    } else if file.listeners.is_empty() && f.config.is_none() {
        file.listeners = vec![s("127.0.0.1:8080".into())];
    }
    if let Some(a) = &f.admin {
        file.admin = Some(s(a.clone()));
    }
    if let Some(a) = &f.access_log {
        file.access_log = Some(s(a.clone()));
    }
    build(file, &source, metrics).map_err(|mut e| {
        // A flag's value carries no location: say which flag, not a YAML path.
        if e.line.is_none() && source == SOURCE {
            e.message = flagify(&e.message);
        }
        e
    })
}

/// `mirror_defaults.timeout: …` → `--mirror-timeout: …` for errors in flag values.
fn flagify(msg: &str) -> String {
    const MAP: &[(&str, &str)] = &[
        ("mirror_defaults.timeout", "--mirror-timeout"),
        ("mirror_defaults.max_body", "--mirror-max-body"),
        ("mirror_defaults.max_buffered", "--mirror-max-buffered"),
        ("mirror_defaults.max_in_flight", "--mirror-max-in-flight"),
        ("mirror_defaults.methods", "--mirror-methods"),
        ("timeouts.connect", "--connect-timeout"),
        ("timeouts.request", "--request-timeout"),
        ("timeouts.shutdown", "--shutdown-timeout"),
        ("listeners", "--listen"),
        ("admin", "--admin"),
        ("access_log", "--access-log"),
    ];
    for (field, flag) in MAP.iter().copied() {
        if let Some(rest) = msg.strip_prefix(field) {
            let rest =
                rest.trim_start_matches(|c: char| c == '[' || c == ']' || c.is_ascii_digit());
            return format!("{flag}{rest}");
        }
    }
    msg.to_owned()
}
