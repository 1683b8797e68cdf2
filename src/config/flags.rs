//! The quick form: `serve --listen … --primary URL --shadow URL … --mirror-percent P`.
//!
//! Flags become the same file types a YAML config is read into (one service `primary`, one
//! per `--shadow` named `shadow` or `shadow-N`, one route `default`), so they pass through the
//! same validation. With `--config`, `--listen`, `--admin` and `--access-log` override the file.

use std::path::PathBuf;

use serde_saphyr::{Location, Spanned};

use super::build::{build_with_warnings, shadow_settings, Common};
use super::common::Ctx;
use super::native::{
    DestinationFile, EndpointFile, FileConfig, MirrorFile, RouteFile, ServiceFile, ShadowFile,
    TimeoutsFile,
};
use super::{ConfigError, Runtime};
use crate::telemetry::Metrics;

const SOURCE: &str = "command line";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeFlags {
    /// Config file: native YAML, or Istio YAML (VirtualService, DestinationRule, ServiceEntry;
    /// repeatable, several documents per file).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Vec<PathBuf>,
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
    /// Body bytes held for copies in flight per shadow (default 4MiB).
    #[arg(long, value_name = "SIZE")]
    pub mirror_max_buffered: Option<String>,
    /// Mirror only these methods, comma-separated (e.g. GET,HEAD).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub mirror_methods: Vec<String>,
    /// Keep the shadow's Host unchanged (default: suffix `-shadow`).
    #[arg(long)]
    pub no_shadow_host_suffix: bool,
    /// A request body that sends nothing for this long fails with 408 (default 60s).
    #[arg(long, value_name = "DURATION")]
    pub body_timeout: Option<String>,
    /// A client that takes no response bytes for this long is disconnected (default 60s).
    #[arg(long, value_name = "DURATION")]
    pub send_timeout: Option<String>,
    /// A new connection whose first request head is not complete this long after accept (TLS
    /// handshake included) is closed (default 30s). HTTP/2: the handshake and the preface.
    #[arg(long, value_name = "DURATION")]
    pub header_timeout: Option<String>,
    /// Client connections open at once (default 10000); past it accepting pauses.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Accept TLS on this address too (repeatable); needs --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Vec<String>,
    /// Certificate chain (PEM) for --tls-listen; re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) for --tls-listen; re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that https:// upstreams are verified against (default: Mozilla's roots).
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// Request line and headers together (default 64KiB): 431 past it, 414 for a long line.
    #[arg(long, value_name = "SIZE")]
    pub max_header_bytes: Option<String>,
    /// Header fields in one request (default 100): 431 past it.
    #[arg(long, value_name = "N")]
    pub max_headers: Option<usize>,
    /// Largest request body (default: no limit, bodies stream; 0 = no limit): 413 past it.
    #[arg(long, value_name = "SIZE")]
    pub max_body_bytes: Option<String>,
    /// Keep live changes and schedules in this file across restarts.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Bearer token for admin changes (or the file's first line with --admin-token-file).
    #[arg(
        long = "admin-token",
        env = "MIRRORCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,
    /// File whose first line is the admin bearer token.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Compare shadows with the primary and record pairs here: sqlite:PATH or postgres://…
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// JSON path never reported as a difference (repeatable), e.g. '$.timestamp'.
    #[arg(long, value_name = "PATH")]
    pub compare_ignore_field: Vec<String>,
    /// Header never reported as a difference (repeatable).
    #[arg(long, value_name = "NAME")]
    pub compare_ignore_header: Vec<String>,
}

/// `--store` and the `--compare-*` flags, over whatever the config said.
fn overlay_compare(f: &ServeFlags, rt: &mut Runtime) -> Result<(), ConfigError> {
    if let Some(url) = &f.store {
        super::build::check_store_url(url).map_err(|m| flag_err("--store", m))?;
        match rt.compare.as_mut() {
            Some(c) => c.store = url.clone(),
            None => rt.compare = Some(crate::compare::CompareConfig::new(url.clone())),
        }
    }
    if f.compare_ignore_field.is_empty() && f.compare_ignore_header.is_empty() {
        return Ok(());
    }
    let Some(c) = rt.compare.as_mut() else {
        return Err(flag_err(
            "--compare-ignore-field",
            "comparing needs a store: add --store URL",
        ));
    };
    for p in &f.compare_ignore_field {
        c.rules.ignore_fields.push(
            p.parse()
                .map_err(|m: String| flag_err("--compare-ignore-field", m))?,
        );
    }
    c.rules.ignore_headers.extend(
        f.compare_ignore_header
            .iter()
            .map(|h| h.to_ascii_lowercase()),
    );
    Ok(())
}

fn s<T>(v: T) -> Spanned<T> {
    Spanned::new(v, Location::UNKNOWN, Location::UNKNOWN)
}

fn flag_err(flag: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError::whole(SOURCE, format!("{flag}: {msg}"))
}

/// The `--mirror-*` flags as the file's `mirror_defaults`.
fn shadow_file(f: &ServeFlags) -> ShadowFile {
    ShadowFile {
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
    }
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
    let mut services = vec![service_file("primary", primary)];
    let mut mirrors = Vec::new();
    for (i, url) in f.shadow.iter().enumerate() {
        super::build::parse_endpoint(url).map_err(|m| flag_err("--shadow", m))?;
        let name = if f.shadow.len() == 1 {
            "shadow".to_owned()
        } else {
            format!("shadow-{}", i + 1)
        };
        services.push(service_file(&name, url));
        mirrors.push(MirrorFile {
            destination: s(name),
            subset: None,
            percent: Some(s(percent)),
            percentage: None,
        });
    }
    Ok(FileConfig {
        listeners: Vec::new(),
        admin: None,
        access_log: None,
        timeouts: TimeoutsFile {
            connect: f.connect_timeout.clone().map(s),
            request: f.request_timeout.clone().map(s),
            shutdown: f.shutdown_timeout.clone().map(s),
        },
        mirror_defaults: shadow_file(f),
        services: s(services),
        hosts: None,
        compare: None,
        limits: None,
        tls: None,
        routes: s(vec![RouteFile {
            name: s("default".into()),
            matches: Vec::new(),
            route: s(vec![DestinationFile {
                destination: s("primary".into()),
                subset: None,
                weight: None,
            }]),
            mirrors,
            headers: None,
            rewrite: None,
            timeout: None,
            retries: None,
            mirror_sampling: None,
        }]),
    })
}

fn service_file(name: &str, url: &str) -> ServiceFile {
    ServiceFile {
        name: s(name.to_owned()),
        endpoints: s(vec![s(EndpointFile::Address(url.to_owned()))]),
        request_timeout: None,
        shadow: None,
        subsets: Vec::new(),
        load_balancer: None,
        outlier_detection: None,
    }
}

/// Build the runtime from flags: config files with overrides, or the quick form.
pub fn load(f: &ServeFlags, metrics: &Metrics) -> Result<Runtime, ConfigError> {
    load_with_warnings(f, metrics).map(|(rt, _)| rt)
}

/// As [`load`], with the warnings (ignored mesh-only fields, deprecated spellings).
pub fn load_with_warnings(
    f: &ServeFlags,
    metrics: &Metrics,
) -> Result<(Runtime, Vec<String>), ConfigError> {
    let (mut rt, warnings) = load_config(f, metrics)?;
    overlay_compare(f, &mut rt)?;
    if let Some(n) = f.max_connections {
        if n == 0 {
            return Err(flag_err("--max-connections", "must be at least 1"));
        }
        rt.max_connections = n;
    }
    // TLS flags override the file's `tls:` block, each on its own.
    if !f.tls_listen.is_empty() {
        rt.tls_listen = f
            .tls_listen
            .iter()
            .map(|a| {
                a.parse().map_err(|_| {
                    flag_err("--tls-listen", format!("`{a}` is not an IP:port address"))
                })
            })
            .collect::<Result<_, _>>()?;
    }
    rt.tls = match (&f.tls_cert, &f.tls_key, rt.tls.take()) {
        (Some(cert), Some(key), _) => Some(crate::proxy::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (Some(cert), None, Some(file)) => Some(crate::proxy::tls::TlsFiles {
            cert: cert.clone(),
            key: file.key,
        }),
        (None, Some(key), Some(file)) => Some(crate::proxy::tls::TlsFiles {
            cert: file.cert,
            key: key.clone(),
        }),
        (None, None, file) => file,
        (Some(_), None, None) => return Err(flag_err("--tls-cert", "needs --tls-key")),
        (None, Some(_), None) => return Err(flag_err("--tls-key", "needs --tls-cert")),
    };
    if rt.tls.is_none() && !rt.tls_listen.is_empty() {
        return Err(flag_err("--tls-listen", "needs --tls-cert and --tls-key"));
    }
    if rt.tls.is_some() && rt.tls_listen.is_empty() {
        return Err(flag_err("--tls-cert", "needs --tls-listen ADDR"));
    }
    if f.upstream_ca.is_some() {
        rt.upstream_ca = f.upstream_ca.clone();
    }
    if let Some(v) = &f.max_header_bytes {
        rt.head_limits.max_bytes =
            super::units::head_bytes_limit(v).map_err(|m| flag_err("--max-header-bytes", m))?;
    }
    if let Some(v) = &f.max_body_bytes {
        rt.max_body = super::units::body_limit(v).map_err(|m| flag_err("--max-body-bytes", m))?;
    }
    if let Some(n) = f.max_headers {
        if n == 0 {
            return Err(flag_err("--max-headers", "must be at least 1"));
        }
        rt.head_limits.max_headers = n;
    }
    for (value, flag, field) in [
        (&f.body_timeout, "--body-timeout", &mut rt.body_timeout),
        (&f.send_timeout, "--send-timeout", &mut rt.send_timeout),
        (
            &f.header_timeout,
            "--header-timeout",
            &mut rt.header_timeout,
        ),
    ] {
        if let Some(t) = value {
            let d = super::parse_duration(t).map_err(|m| flag_err(flag, m))?;
            if d.is_zero() {
                return Err(flag_err(
                    flag,
                    "must be more than 0 (it would close every connection)",
                ));
            }
            *field = d;
        }
    }
    rt.control.state = f.state.clone();
    rt.control.token = admin_token(f)?;
    if let Some(a) = rt.admin {
        if !a.ip().is_loopback() && rt.control.token.is_none() {
            return Err(flag_err(
                "--admin",
                format!("{a} is not loopback: a non-loopback admin listener needs a token (MIRRORCTL_TOKEN or --admin-token-file)"),
            ));
        }
    }
    if !f.config.is_empty() {
        let again = f.clone();
        rt.control.reloader = Some(Box::new(move |m: &Metrics| {
            load_config(&again, m)
                .map(|(rt, _)| rt.table)
                .map_err(|e| e.to_string())
        }));
    }
    Ok((rt, warnings))
}

/// The admin token: `--admin-token`/`MIRRORCTL_TOKEN`, or the first line of `--admin-token-file`.
pub fn admin_token(f: &ServeFlags) -> Result<Option<String>, ConfigError> {
    match read_token(f.admin_token.as_deref(), f.admin_token_file.as_deref()) {
        Ok(Some(t)) if t.len() < 16 => Err(flag_err("admin token", "use at least 16 characters")),
        Ok(t) => Ok(t),
        Err(m) => Err(flag_err("--admin-token-file", m)),
    }
}

/// A token given directly or as the first line of a file (the file wins); shared by the
/// server and the CLI commands.
pub fn read_token(
    token: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, String> {
    match (token, file) {
        (_, Some(path)) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Some(text.lines().next().unwrap_or("").trim().to_owned()))
        }
        (Some(t), None) => Ok(Some(t.trim().to_owned())),
        (None, None) => Ok(None),
    }
}

fn load_config(f: &ServeFlags, metrics: &Metrics) -> Result<(Runtime, Vec<String>), ConfigError> {
    if !f.config.is_empty()
        && (f.primary.is_some() || !f.shadow.is_empty() || f.mirror_percent.is_some())
    {
        return Err(flag_err(
            "--config",
            "--primary/--shadow/--mirror-percent describe a config of their own; use them or a file, not both",
        ));
    }
    let mut texts = Vec::new();
    for path in &f.config {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::whole(&source, format!("cannot read: {e}")))?;
        texts.push((source, text));
    }
    let istio = texts
        .iter()
        .filter(|(_, t)| super::istio::looks_like_istio(t))
        .count();
    if istio > 0 {
        if istio != texts.len() {
            let native = texts
                .iter()
                .find(|(_, t)| !super::istio::looks_like_istio(t))
                .map(|x| x.0.clone())
                .unwrap_or_default();
            return Err(ConfigError::whole(
                &native,
                "not an Istio file: native and Istio configs cannot be mixed",
            ));
        }
        return istio_runtime(f, &texts, metrics);
    }
    let (mut file, source) = match texts.as_slice() {
        [] => (quick_config(f)?, SOURCE.to_owned()),
        [(source, text)] => (super::parse_str(text, source)?, source.clone()),
        [_, (second, _), ..] => {
            return Err(ConfigError::whole(
                second,
                "one native config file at a time (several files are for Istio configs)",
            ))
        }
    };
    if !f.listen.is_empty() {
        file.listeners = f.listen.iter().cloned().map(s).collect();
    } else if file.listeners.is_empty() && f.config.is_empty() {
        file.listeners = vec![s("127.0.0.1:8080".into())];
    }
    if let Some(a) = &f.admin {
        file.admin = Some(s(a.clone()));
    }
    if let Some(a) = &f.access_log {
        file.access_log = Some(s(a.clone()));
    }
    build_with_warnings(file, &source, metrics).map_err(|mut e| {
        // A flag's value carries no location: say which flag, not a YAML path.
        if e.line.is_none() && source == SOURCE {
            e.message = flagify(&e.message);
        }
        e
    })
}

/// Istio files (`(source, text)` pairs) into a runtime. They carry no listeners or proxy
/// settings: those come from flags.
pub fn istio_runtime(
    f: &ServeFlags,
    texts: &[(String, String)],
    metrics: &Metrics,
) -> Result<(Runtime, Vec<String>), ConfigError> {
    let cx = Ctx {
        source: SOURCE,
        line_offset: 0,
        doc: None,
    };
    let parse_addr = |v: &str, flag: &str| {
        v.parse()
            .map_err(|_| flag_err(flag, format!("`{v}` is not an IP:port address")))
    };
    let listen = if f.listen.is_empty() {
        vec![parse_addr("127.0.0.1:8080", "--listen")?]
    } else {
        f.listen
            .iter()
            .map(|l| parse_addr(l, "--listen"))
            .collect::<Result<_, _>>()?
    };
    let admin = f
        .admin
        .as_deref()
        .map(|a| parse_addr(a, "--admin"))
        .transpose()?;
    let access_log = match &f.access_log {
        Some(a) => a.parse().map_err(|m: String| flag_err("--access-log", m))?,
        None => crate::telemetry::Sink::Stdout,
    };
    let dur = |v: &Option<String>, field: &str, default| match v {
        Some(v) => flagged(cx.duration(&s(v.clone()), field)),
        None => Ok(default),
    };
    let common = Common {
        listen,
        admin,
        access_log,
        connect_timeout: dur(
            &f.connect_timeout,
            "timeouts.connect",
            super::build::DEFAULT_CONNECT_TIMEOUT,
        )?,
        request_timeout: dur(
            &f.request_timeout,
            "timeouts.request",
            super::build::DEFAULT_REQUEST_TIMEOUT,
        )?,
        shutdown_timeout: dur(
            &f.shutdown_timeout,
            "timeouts.shutdown",
            super::build::DEFAULT_SHUTDOWN_TIMEOUT,
        )?,
    };
    let shadow = flagged(shadow_settings(
        &cx,
        &shadow_file(f),
        Default::default(),
        "mirror_defaults",
    ))?;
    super::istio::build(texts, common, shadow, metrics)
}

fn flagged<T>(r: Result<T, ConfigError>) -> Result<T, ConfigError> {
    r.map_err(|mut e| {
        e.message = flagify(&e.message);
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
