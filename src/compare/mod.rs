//! Comparing what the shadow did with what the primary did, per request, inline.
//!
//! The primary's answer is observed as it streams to the client ([`CaptureBody`]: references
//! to the chunks up to a cap, never a delay) and published on a per-request watch channel. Each
//! shadow task, once its own answer is in and its in-flight slot released, waits (bounded) for
//! that observation, diffs the two ([`diff`]) and hands one row to the store writer. Nothing
//! here runs on the client's path except the capture's chunk references.

pub mod diff;
pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use tokio::sync::watch;

pub use diff::{Observation, Rules};
use report::PairRow;

use crate::body::{Observed, Observer};
use crate::mirror::MirrorMeta;
use crate::store::{Retention, Writer};
use crate::telemetry::Metrics;

/// The primary's observation, published once its body has ended.
pub type PrimaryWatch = watch::Receiver<Option<Arc<Observation>>>;

/// `compare:` in the config / `--store` on the command line.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub store: String,
    pub rules: Rules,
    /// Bytes of each body kept for diffing (default 64 KiB).
    pub capture_bytes: usize,
    pub retention: Retention,
    /// How long a shadow's answer waits for the primary's (default 30 s).
    pub pair_timeout: Duration,
}

impl CompareConfig {
    pub fn new(store: String) -> CompareConfig {
        CompareConfig {
            store,
            rules: Rules::default(),
            capture_bytes: 64 * 1024,
            retention: Retention::default(),
            pair_timeout: Duration::from_secs(30),
        }
    }
}

/// Bodies kept in the store for `mirrorctl diffs`, per side, at most.
const STORED_BODY: usize = 4096;

#[derive(Debug)]
pub struct Comparator {
    pub config: CompareConfig,
    writer: Writer,
    metrics: Arc<Metrics>,
}

impl Comparator {
    pub fn start(config: CompareConfig, metrics: Arc<Metrics>) -> Comparator {
        let writer = Writer::start(
            config.store.clone(),
            config.retention.clone(),
            metrics.store_written.clone(),
            metrics.store_dropped.clone(),
        );
        Comparator {
            config,
            writer,
            metrics,
        }
    }

    pub fn capture_bytes(&self) -> usize {
        self.config.capture_bytes
    }

    /// A shadow answer has nothing to pair with (the primary failed or never finished).
    pub fn unpaired(&self, meta: &MirrorMeta, shadow: &Arc<str>) {
        self.metrics.pair(&meta.route, shadow, "unpaired").inc();
    }

    /// Diff one pair, count it, queue it for the store.
    pub fn record(&self, meta: &MirrorMeta, shadow: &Arc<str>, p: &Observation, s: &Observation) {
        let d = diff::diff(p, s, &self.config.rules);
        let kind = d.kind();
        self.metrics.pair(&meta.route, shadow, kind).inc();
        self.metrics
            .drift(&meta.route, shadow, (s.latency_ms - p.latency_ms) / 1000.0);
        let excerpt = |o: &Observation| {
            (kind != "same").then(|| {
                let n = o.body.len().min(STORED_BODY);
                String::from_utf8_lossy(&o.body[..n]).into_owned()
            })
        };
        self.writer.submit(PairRow {
            ts_ms: crate::store::now_ms(),
            route: meta.route.to_string(),
            shadow: shadow.to_string(),
            method: meta.method.to_string(),
            path: meta.path_and_query.to_string(),
            request_id: meta.request_id.to_str().unwrap_or("-").to_owned(),
            primary_status: i32::from(p.status),
            shadow_status: i32::from(s.status),
            primary_latency_ms: p.latency_ms,
            shadow_latency_ms: s.latency_ms,
            diff_kind: kind.to_owned(),
            diff_summary: d.summary(p, s),
            diff_fields: d.fields.join(", "),
            primary_body: excerpt(p),
            shadow_body: excerpt(s),
        });
    }
}

/// Up to `cap` bytes of a body, from its chunks.
#[derive(Debug, Default)]
pub struct Capture {
    chunks: Vec<Bytes>,
    len: usize,
    cap: usize,
    truncated: bool,
}

impl Capture {
    pub fn new(cap: usize) -> Capture {
        Capture {
            cap,
            ..Capture::default()
        }
    }

    pub fn push(&mut self, data: &Bytes) {
        let room = self.cap - self.len;
        if data.len() > room {
            self.truncated = true;
        }
        if room > 0 {
            let take = data.len().min(room);
            self.chunks.push(data.slice(..take));
            self.len += take;
        }
    }

    /// The captured bytes and whether the body was longer.
    pub fn finish(self) -> (Bytes, bool) {
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(self.len);
                for c in &self.chunks {
                    b.extend_from_slice(c);
                }
                b.freeze()
            }
        };
        (body, self.truncated)
    }
}

/// The primary's side of a pair in the making.
pub struct PrimaryCapture {
    pub tx: watch::Sender<Option<Arc<Observation>>>,
    pub status: u16,
    pub headers: HeaderMap,
    pub latency_ms: f64,
    pub capture: Capture,
}

impl PrimaryCapture {
    fn publish(self) {
        let (body, body_truncated) = self.capture.finish();
        let _ = self.tx.send(Some(Arc::new(Observation {
            status: self.status,
            headers: self.headers,
            latency_ms: self.latency_ms,
            body,
            body_truncated,
        })));
    }
}

/// The primary's response body on its way to the client, observed for comparison.
pub type CaptureBody<B> = Observed<B, PrimaryCapture>;

impl Observer for PrimaryCapture {
    fn data(&mut self, chunk: &Bytes) -> bool {
        self.capture.push(chunk);
        true
    }

    fn end(self) {
        self.publish();
    }

    /// A body that fails is not a pair: dropping the sender tells the shadows.
    fn error(self) {}
}

/// Milliseconds since `start`.
pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_up_to_the_cap() {
        let mut c = Capture::new(5);
        c.push(&Bytes::from_static(b"abc"));
        c.push(&Bytes::from_static(b"defg"));
        c.push(&Bytes::from_static(b"h"));
        assert_eq!(c.finish(), (Bytes::from_static(b"abcde"), true));
        let mut c = Capture::new(5);
        c.push(&Bytes::from_static(b"abc"));
        assert_eq!(c.finish(), (Bytes::from_static(b"abc"), false));
    }
}
