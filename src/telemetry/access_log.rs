//! Structured access log: one logfmt line per primary request and one per mirrored request,
//! both carrying the same `request_id`.
//!
//! Lines are formatted on the request's task and handed to one writer thread through a
//! bounded queue. When the writer falls behind (a slow disk, a blocked stdout pipe) lines are
//! dropped and counted: logging never applies back-pressure to the proxy.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Off,
    Stdout,
    Stderr,
    File(std::path::PathBuf),
}

impl std::str::FromStr for Sink {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "off" | "none" => Sink::Off,
            "stdout" | "-" => Sink::Stdout,
            "stderr" => Sink::Stderr,
            "" => return Err("empty access-log destination".into()),
            path => Sink::File(path.into()),
        })
    }
}

/// One access-log entry. Borrowed fields: building one costs no allocation.
pub struct Entry<'a> {
    /// `primary` or `mirror`.
    pub kind: &'static str,
    pub request_id: &'a str,
    pub route: &'a str,
    pub target: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub upstream: &'a str,
    /// `None` when no response arrived.
    pub status: Option<u16>,
    pub duration: Duration,
    /// Why the exchange failed, if it did.
    pub error: Option<&'a str>,
}

#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    dropped: Counter,
}

const QUEUE_LINES: usize = 16 * 1024;

impl AccessLog {
    pub fn disabled() -> AccessLog {
        AccessLog {
            tx: None,
            dropped: Counter::default(),
        }
    }

    /// Start the writer thread for `sink`.
    pub fn start(sink: &Sink, dropped: Counter) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match sink {
            Sink::Off => return Ok(AccessLog { tx: None, dropped }),
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::Stderr => Box::new(std::io::stderr()),
            Sink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = sync_channel::<String>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
                while let Ok(line) = rx.recv() {
                    let _ = w.write_all(line.as_bytes());
                    // Drain what is queued, then flush once: one syscall per burst.
                    while let Ok(line) = rx.try_recv() {
                        let _ = w.write_all(line.as_bytes());
                    }
                    let _ = w.flush();
                }
            })?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped,
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log(&self, e: &Entry<'_>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(format_line(e, SystemTime::now())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// `ts=… kind=primary request_id=… route=… target=… method=GET path=/hello status=200 duration_ms=9.303 upstream=…`
pub fn format_line(e: &Entry<'_>, now: SystemTime) -> String {
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "ts={} kind={} request_id={} route={} target={} method={} path=",
        humantime::format_rfc3339_millis(now),
        e.kind,
        Quoted(e.request_id),
        Quoted(e.route),
        Quoted(e.target),
        e.method,
    );
    let _ = write!(s, "{}", Quoted(e.path));
    match e.status {
        Some(st) => {
            let _ = write!(s, " status={st}");
        }
        None => s.push_str(" status=-"),
    }
    let _ = write!(
        s,
        " duration_ms={:.3} upstream={}",
        e.duration.as_secs_f64() * 1000.0,
        Quoted(e.upstream)
    );
    if let Some(err) = e.error {
        let _ = write!(s, " error={}", Quoted(err));
    }
    s.push('\n');
    s
}

/// logfmt value: bare when safe, otherwise double-quoted with escapes.
struct Quoted<'a>(&'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        let bare = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
        if bare {
            return f.write_str(v);
        }
        f.write_char('"')?;
        for c in v.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_line() {
        let e = Entry {
            kind: "mirror",
            request_id: "abc",
            route: "default",
            target: "v2",
            method: "GET",
            path: "/hello?a=b c",
            upstream: "127.0.0.1:9002",
            status: Some(200),
            duration: Duration::from_micros(9303),
            error: None,
        };
        let line = format_line(&e, SystemTime::UNIX_EPOCH);
        assert_eq!(
            line,
            "ts=1970-01-01T00:00:00.000Z kind=mirror request_id=abc route=default target=v2 \
             method=GET path=\"/hello?a=b c\" status=200 duration_ms=9.303 upstream=127.0.0.1:9002\n"
        );
    }

    #[test]
    fn quoting_escapes_controls() {
        assert_eq!(Quoted("a\"b\n").to_string(), "\"a\\\"b\\n\"");
        assert_eq!(Quoted("").to_string(), "\"\"");
    }
}
