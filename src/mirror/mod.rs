//! The mirror path: decide which shadows get a copy of a request, and send it fire-and-forget.
//!
//! Admission ([`MirrorPolicy::admit`]) runs on the request's task and only touches atomics:
//! sampling, the method filter, the body cap, the circuit breaker and the per-shadow
//! in-flight limit. Every refusal is counted by reason. An admitted copy is a [`Ticket`];
//! firing it spawns a task that owns everything it needs.
//!
//! This path never awaits anything the primary path waits on, never queues without bound,
//! and its failures are never visible to the client.

mod breaker;
mod sample;
mod tee;

pub use breaker::{Admit, Breaker};
pub use sample::Sampler;
pub use tee::{ChunksBody, MirrorBody, PendingMirror, Tee, TeeBody};

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::compare::{Capture, Comparator, Observation, PrimaryWatch};
use crate::routing::Service;
use crate::telemetry::metrics::TargetStats;
use crate::telemetry::{AccessLog, Entry, Metrics, MirrorOutcome};

/// Marks a mirrored request, with the shadow's name as value.
pub const MIRROR_HEADER: HeaderName = HeaderName::from_static("x-mirrorctl-shadow");

/// The client mirrored requests go through: a pool of its own, apart from the primary's.
pub type ShadowClient = crate::proxy::pool::Pool;

/// How a shadow is treated; the defaults follow Envoy/Istio where they have one.
#[derive(Debug, Clone)]
pub struct ShadowSettings {
    /// Mirrored requests in flight at most; past it copies are dropped (`overload`).
    pub max_in_flight: usize,
    /// Deadline for the shadow's whole answer.
    pub timeout: Duration,
    /// Request bodies larger than this are not mirrored (`body_too_large`).
    pub max_body_bytes: u64,
    /// Request-body bytes held for this shadow's copies in flight, at most; a copy that would
    /// exceed it is dropped (`overload`). Bounds memory whatever the in-flight count.
    pub max_buffered_bytes: u64,
    /// Only these methods are mirrored; `None` = all.
    pub methods: Option<Vec<Method>>,
    /// Appended to the host part of `Host`/`:authority` (`-shadow`); `None` = unchanged.
    pub host_suffix: Option<String>,
    /// Consecutive transport failures that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses before one probe is let through.
    pub breaker_cooldown: Duration,
}

impl Default for ShadowSettings {
    fn default() -> Self {
        ShadowSettings {
            max_in_flight: 256,
            timeout: Duration::from_secs(5),
            max_body_bytes: 1024 * 1024,
            max_buffered_bytes: 4 * 1024 * 1024,
            methods: None,
            host_suffix: Some("-shadow".into()),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
        }
    }
}

/// A service in its role as a mirror target, with the state that bounds it.
#[derive(Debug)]
pub struct Shadow {
    pub name: Arc<str>,
    pub service: Arc<Service>,
    pub settings: ShadowSettings,
    pub breaker: Breaker,
    limiter: Arc<Semaphore>,
    /// In KiB: one permit per KiB of body held.
    buffered: Arc<Semaphore>,
    in_flight: Gauge,
    circuit_open: Gauge,
    /// `x-mirrorctl-shadow: <name>`, built once.
    marker: HeaderValue,
    /// The last client host and its suffixed form: most traffic has one host.
    host_cache: std::sync::Mutex<Option<(HeaderValue, HeaderValue)>>,
}

impl Shadow {
    pub fn new(service: Arc<Service>, settings: ShadowSettings, metrics: &Metrics) -> Shadow {
        let name: Arc<str> = service.name.as_str().into();
        Shadow {
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
            limiter: Arc::new(Semaphore::new(settings.max_in_flight)),
            buffered: Arc::new(Semaphore::new(
                kib(settings.max_buffered_bytes).min(Semaphore::MAX_PERMITS as u64) as usize,
            )),
            in_flight: Metrics::shadow_gauge(&metrics.shadow_in_flight, &name),
            circuit_open: Metrics::shadow_gauge(&metrics.shadow_circuit_open, &name),
            marker: HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("shadow")),
            host_cache: std::sync::Mutex::new(None),
            name,
            service,
            settings,
        }
    }

    /// Mirrored requests currently in flight to this shadow.
    pub fn in_flight(&self) -> usize {
        self.settings.max_in_flight - self.limiter.available_permits()
    }

    /// `my-app:3000` → `my-app-shadow:3000` (Envoy's convention).
    pub fn shadow_host(&self, host: &HeaderValue) -> HeaderValue {
        let Some(suffix) = &self.settings.host_suffix else {
            return host.clone();
        };
        if let Ok(cache) = self.host_cache.lock() {
            if let Some((_, to)) = cache.as_ref().filter(|(from, _)| from == host) {
                return to.clone();
            }
        }
        let Ok(h) = host.to_str() else {
            return host.clone();
        };
        let (name, port) = split_port(h);
        let suffixed = HeaderValue::from_str(&format!("{name}{suffix}{port}"))
            .unwrap_or_else(|_| host.clone());
        if let Ok(mut cache) = self.host_cache.lock() {
            *cache = Some((host.clone(), suffixed.clone()));
        }
        suffixed
    }
}

fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

/// Split `host:port` into (`host`, `:port`); IPv6 literals keep their brackets.
fn split_port(h: &str) -> (&str, &str) {
    match h.rfind(':') {
        Some(i) if !h[i..].contains(']') && h[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            h.split_at(i)
        }
        _ => (h, ""),
    }
}

/// The counters of one (route, shadow) pair, looked up once when the table is built.
#[derive(Debug)]
pub struct MirrorCounters {
    by_outcome: [Counter; 10],
    /// The shadow's responses on this route.
    pub stats: TargetStats,
}

const OUTCOMES: [MirrorOutcome; 10] = [
    MirrorOutcome::sent,
    MirrorOutcome::succeeded,
    MirrorOutcome::failed,
    MirrorOutcome::timeout,
    MirrorOutcome::sampled_out,
    MirrorOutcome::filtered_method,
    MirrorOutcome::body_too_large,
    MirrorOutcome::overload,
    MirrorOutcome::circuit_open,
    MirrorOutcome::body_incomplete,
];

impl MirrorCounters {
    pub fn new(metrics: &Metrics, route: &Arc<str>, shadow: &Arc<str>) -> MirrorCounters {
        MirrorCounters {
            by_outcome: OUTCOMES.map(|o| metrics.mirror_counter(route, shadow, o)),
            stats: metrics.target_stats(route, shadow),
        }
    }

    pub fn inc(&self, outcome: MirrorOutcome) {
        let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.by_outcome[i].inc();
    }

    pub fn get(&self, outcome: MirrorOutcome) -> u64 {
        let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.by_outcome[i].get()
    }
}

/// Copy a sample of a route's requests to one shadow.
#[derive(Debug, Clone)]
pub struct MirrorPolicy {
    pub shadow: Arc<Shadow>,
    pub sampler: Sampler,
    pub counters: Arc<MirrorCounters>,
}

impl MirrorPolicy {
    /// Decide whether this request is copied to the shadow; count why not.
    /// `content_length` is the declared body size, when the client declared one; `key` is the
    /// request's sampling hash in consistent mode (`None`: random).
    pub fn admit(
        &self,
        method: &Method,
        content_length: Option<u64>,
        key: Option<u32>,
    ) -> Option<Ticket> {
        let refuse = |outcome| {
            self.counters.inc(outcome);
            None
        };
        let sampled = match key {
            Some(k) => self.sampler.sample_with(k),
            None => self.sampler.sample(),
        };
        if !sampled {
            return refuse(MirrorOutcome::sampled_out);
        }
        let s = &self.shadow.settings;
        if let Some(methods) = &s.methods {
            if !methods.contains(method) {
                return refuse(MirrorOutcome::filtered_method);
            }
        }
        if content_length.is_some_and(|n| n > s.max_body_bytes) {
            return refuse(MirrorOutcome::body_too_large);
        }
        let probe = match self.shadow.breaker.admit() {
            Admit::Yes => false,
            Admit::Probe => true,
            Admit::No => return refuse(MirrorOutcome::circuit_open),
        };
        let Ok(permit) = self.shadow.limiter.clone().try_acquire_owned() else {
            if probe {
                self.shadow.breaker.release_probe();
            }
            return refuse(MirrorOutcome::overload);
        };
        Some(Ticket {
            shadow: self.shadow.clone(),
            counters: self.counters.clone(),
            permit: Some(permit),
            probe,
        })
    }
}

/// What every copy of one request shares: taken from the client's request after the
/// primary-path header hygiene, before any shadow-specific change.
#[derive(Debug)]
pub struct MirrorRequest {
    pub meta: MirrorMeta,
    /// Headers as sent to the primary, without `Host`.
    pub headers: HeaderMap,
}

/// The small, cheaply cloned part of a mirrored request (no allocation to clone).
#[derive(Debug, Clone)]
pub struct MirrorMeta {
    pub route: Arc<str>,
    pub request_id: HeaderValue,
    pub method: Method,
    pub path_and_query: PathAndQuery,
    /// The client's `Host` (or HTTP/2 `:authority`).
    pub host: Option<HeaderValue>,
    /// The primary's answer, when the pair is to be compared.
    pub primary: Option<PrimaryWatch>,
}

/// Everything a mirror task needs besides the request.
#[derive(Debug, Clone)]
pub struct MirrorContext {
    pub client: ShadowClient,
    pub access_log: AccessLog,
    pub compare: Option<Arc<Comparator>>,
}

/// An admitted copy: holds one of the shadow's in-flight slots until it is fired and done,
/// or dropped.
#[derive(Debug)]
pub struct Ticket {
    shadow: Arc<Shadow>,
    counters: Arc<MirrorCounters>,
    permit: Option<OwnedSemaphorePermit>,
    probe: bool,
}

impl Ticket {
    /// The largest body this copy may carry.
    pub fn max_body_bytes(&self) -> u64 {
        self.shadow.settings.max_body_bytes
    }

    /// Give up on this copy, counting why.
    pub fn abandon(mut self, outcome: MirrorOutcome) {
        self.counters.inc(outcome);
        self.permit = None;
        if self.probe {
            self.shadow.breaker.release_probe();
            self.probe = false;
        }
    }

    /// Send the copy on a task of its own. Returns at once.
    pub fn fire(mut self, ctx: &MirrorContext, req: Arc<MirrorRequest>, body: MirrorBody) {
        let held = match u32::try_from(kib(body.len())) {
            Ok(0) => None,
            Ok(n) => match self.shadow.buffered.clone().try_acquire_many_owned(n) {
                Ok(p) => Some(p),
                Err(_) => return self.abandon(MirrorOutcome::overload),
            },
            Err(_) => return self.abandon(MirrorOutcome::body_too_large),
        };
        let permit = self.permit.take();
        let probe = std::mem::take(&mut self.probe);
        let shadow = self.shadow.clone();
        let counters = self.counters.clone();
        let ctx = ctx.clone();
        counters.inc(MirrorOutcome::sent);
        shadow.in_flight.inc();
        tokio::spawn(async move {
            // The last holder of the request takes its headers instead of copying them.
            let (meta, headers) = match Arc::try_unwrap(req) {
                Ok(r) => (r.meta, r.headers),
                Err(shared) => (shared.meta.clone(), shared.headers.clone()),
            };
            let outcome = send(&shadow, &counters, &ctx, &meta, headers, body).await;
            shadow.in_flight.dec();
            drop(permit);
            drop(held);
            let observed = match outcome {
                Ok(obs) => {
                    shadow.breaker.on_success(probe);
                    counters.inc(MirrorOutcome::succeeded);
                    obs
                }
                Err(o) => {
                    shadow.breaker.on_failure(probe);
                    counters.inc(o);
                    None
                }
            };
            shadow.circuit_open.set(i64::from(shadow.breaker.is_open()));
            // Pairing happens after the slot is free: a slow primary never holds shadow capacity.
            if let (Some(s_obs), Some(cmp), Some(mut rx)) =
                (observed, ctx.compare.as_ref(), meta.primary.clone())
            {
                let waited =
                    tokio::time::timeout(cmp.config.pair_timeout, rx.wait_for(Option::is_some))
                        .await;
                match waited {
                    Ok(Ok(p)) => {
                        if let Some(p_obs) = p.as_ref() {
                            let p_obs = p_obs.clone();
                            drop(p);
                            cmp.record(&meta, &shadow.name, &p_obs, &s_obs);
                        }
                    }
                    _ => cmp.unpaired(&meta, &shadow.name),
                }
            }
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.permit.is_some() {
            // Neither fired nor abandoned: the body never completed.
            self.counters.inc(MirrorOutcome::body_incomplete);
            if self.probe {
                self.shadow.breaker.release_probe();
            }
        }
    }
}

async fn send(
    shadow: &Shadow,
    counters: &MirrorCounters,
    ctx: &MirrorContext,
    req: &MirrorMeta,
    headers: HeaderMap,
    body: MirrorBody,
) -> Result<Option<Observation>, MirrorOutcome> {
    let start = Instant::now();
    let capture_cap = ctx
        .compare
        .as_ref()
        .filter(|_| req.primary.is_some())
        .map(|c| c.capture_bytes());
    // Latency is to the response head, as on the primary path, so the two compare.
    let log = |status: Option<u16>, upstream: &str, error: Option<&str>, elapsed: Duration| {
        if let Some(st) = status {
            counters.stats.observe(st, elapsed);
        }
        if ctx.access_log.enabled() {
            ctx.access_log.log(&Entry {
                kind: "mirror",
                request_id: req.request_id.to_str().unwrap_or("-"),
                route: &req.route,
                target: &shadow.name,
                method: req.method.as_str(),
                path: req.path_and_query.as_str(),
                upstream,
                status,
                duration: elapsed,
                error,
            });
        }
    };
    let Some(ep) = shadow.service.pick_endpoint() else {
        log(None, "-", Some("no endpoint"), start.elapsed());
        return Err(MirrorOutcome::failed);
    };
    let upstream = ep.authority.as_str();
    let mut r = Request::new(body.reader());
    *r.method_mut() = req.method.clone();
    *r.uri_mut() = crate::proxy::pool::origin_form(&req.path_and_query);
    *r.headers_mut() = headers;
    if let Some(h) = &req.host {
        r.headers_mut().insert(HOST, shadow.shadow_host(h));
    }
    r.headers_mut().insert(MIRROR_HEADER, shadow.marker.clone());
    let exchange = async {
        let resp = ctx.client.send(&ep.scheme, &ep.authority, r).await?;
        let status = resp.status().as_u16();
        let head_latency = start.elapsed();
        let headers = capture_cap.map(|_| resp.headers().clone());
        // Read the body frame by frame: discarded, or kept up to the capture cap for comparing.
        let mut capture = capture_cap.map(Capture::new);
        let mut body = resp.into_body();
        // Bounds the rest of the request too, should it still be sent after the answer.
        body.idle_timeout(shadow.settings.timeout);
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let (Some(c), Some(d)) = (capture.as_mut(), frame.data_ref()) {
                c.push(d);
            }
        }
        let observed = match (capture, headers) {
            (Some(c), Some(headers)) => {
                let (body, body_truncated) = c.finish();
                Some(Observation {
                    status,
                    headers,
                    latency_ms: head_latency.as_secs_f64() * 1000.0,
                    body,
                    body_truncated,
                })
            }
            _ => None,
        };
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, head_latency, observed))
    };
    let until = tokio::time::Instant::now() + shadow.settings.timeout;
    match crate::proxy::timer::timeout_at(until, exchange).await {
        Ok(Ok((status, head_latency, observed))) => {
            log(Some(status), upstream, None, head_latency);
            Ok(observed)
        }
        Ok(Err(e)) => {
            let reason = crate::proxy::error_chain(&*e);
            log(None, upstream, Some(&reason), start.elapsed());
            Err(MirrorOutcome::failed)
        }
        Err(_) => {
            log(None, upstream, Some("timeout"), start.elapsed());
            Err(MirrorOutcome::timeout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_suffix_goes_before_the_port() {
        assert_eq!(split_port("my-app:3000"), ("my-app", ":3000"));
        assert_eq!(split_port("my-app"), ("my-app", ""));
        assert_eq!(split_port("[::1]:80"), ("[::1]", ":80"));
        assert_eq!(split_port("[::1]"), ("[::1]", ""));
    }
}
