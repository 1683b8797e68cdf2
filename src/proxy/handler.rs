//! One client request, in phases:
//!
//! ```text
//! check ─▶ identify (request id, forwarded) ─▶ route ─▶ rewrite ─▶ admit mirrors ─▶ primary ─▶ respond
//!                                                                     │      (retries)   │ body tee
//!                                                                     └── fire copies (own tasks)
//! ```
//! The client's answer depends only on the primary. Mirrors are admitted synchronously
//! (atomics only) and sent on tasks of their own once the body they copy has ended; a retry
//! of the primary never sends a mirror again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, UPGRADE};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};

use super::error::{error_chain, ProxyError};
use super::guard::Refusal;
use super::h1::server::{CanUpgrade, RequestBodyError};
use super::headers::{self, ClientAddr};
use super::{PrimaryBody, ProxyBody, RequestBody, State};
use crate::body::{BodyTimeout, BodyTooLarge, ClientBody};
use crate::compare::{ms_since, Capture, CaptureBody, PrimaryCapture};
use crate::mirror::{MirrorBody, MirrorMeta, MirrorRequest, PendingMirror, Tee, TeeBody};
use crate::routing::{sample_hash, Health, RequestView, RetryPolicy, Sampling, Service};
use crate::telemetry::Entry;

const PRIMARY: &str = "primary";

/// One request, start to answer. (One async fn, not a wrapper around another: every level of
/// nested future is moved whole when it starts, and these are kilobytes.)
pub async fn handle(
    state: Arc<State>,
    req: Request<RequestBody>,
    client: ClientAddr,
    refused: Option<Refusal>,
    scheme: &'static str,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let _in_flight = InFlight::start(&state.metrics.in_flight);
    let state: &State = &state;
    let client = &client;

    let (mut parts, body) = req.into_parts();
    let original_pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut ctx = LogCtx {
        request_id: None,
        route: None,
        method: parts.method.clone(),
        path: original_pq.clone(),
        upstream: None,
    };
    if let Some(why) = refused {
        // The stand-in for a head the guard refused (logged as `GET /` with the reason).
        return fail(state, why.into(), &ctx, start);
    }
    if let Err(why) = headers::check_request(&parts) {
        return fail(state, ProxyError::BadRequest(why), &ctx, start);
    }

    // A WebSocket upgrade, when the client's connection can be handed over (HTTP/1.1).
    let upgrade = parts.extensions.remove::<CanUpgrade>().is_some()
        && parts
            .headers
            .get(UPGRADE)
            .is_some_and(headers::offers_websocket);

    // Identify.
    let mut host = headers::request_host(&parts);
    let request_id = headers::identify(&mut parts.headers, client, scheme);
    ctx.request_id = Some(request_id.clone());

    // Route. The table is loaded once: the request finishes on the table it started with.
    let table = state.table.load();
    let view = RequestView {
        parts: &parts,
        authority: host.as_ref().and_then(|h| h.to_str().ok()),
        scheme,
    };
    let Some((route, matched)) = table.select(&view) else {
        return fail(
            state,
            ProxyError::NoRoute(ctx.path.to_string()),
            &ctx,
            start,
        );
    };
    ctx.route = Some(route.name.clone());
    let Some(dest) = route.pick_destination() else {
        return fail(
            state,
            ProxyError::NoRoute(ctx.path.to_string()),
            &ctx,
            start,
        );
    };
    let service = dest.service.clone();

    // The route's action: header changes and rewrites reach the primary and the mirrors alike.
    let action = &route.action;
    action.request_headers.apply(&mut parts.headers);
    if upgrade {
        // Hop-by-hop, stripped with the rest: asked of the primary again, for WebSocket only
        // (whatever else the client offered, the upstream cannot pick).
        parts
            .headers
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let mut path_and_query = original_pq;
    if let Some(rw) = &action.rewrite {
        if let Some(p) = rw.path(&path_and_query, matched.and_then(|m| m.uri.as_ref())) {
            path_and_query = p;
        }
        if let Some(a) = &rw.authority {
            host = Some(a.clone());
        }
    }

    // Admit mirrors: synchronous, atomics only.
    let declared_len = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A body announced over the limit is refused before any upstream hears of it (a chunked or
    // HTTP/2 body without a length is cut where it passes the limit, below).
    if let (Some(n), Some(max)) = (declared_len, state.max_body) {
        if n > max {
            return fail(state, ProxyError::BodyTooLarge(max), &ctx, start);
        }
    }
    let key = match &action.sampling {
        Sampling::Random => None,
        Sampling::RequestId => Some(sample_hash(request_id.as_bytes())),
        Sampling::Header(h) => parts.headers.get(h).map(|v| sample_hash(v.as_bytes())),
    };
    let mut tickets = Vec::new();
    // An upgraded connection is a two-way stream only the primary can answer: never copied.
    for m in route.mirrors.iter().filter(|_| !upgrade) {
        if let Some(t) = m.admit(&parts.method, declared_len, key) {
            tickets.push(t);
        }
    }
    parts.headers.remove(HOST);
    let bodiless = body.is_end_stream();
    let body = ClientBody::new(body, state.body_timeout, state.max_body);
    // Pairs to compare: the shadows wait on this for the primary's observation.
    let (compare_tx, primary_watch) = match &state.mirror.compare {
        Some(_) if !tickets.is_empty() => {
            let (tx, rx) = tokio::sync::watch::channel(None);
            (Some(tx), Some(rx))
        }
        _ => (None, None),
    };
    let body = if tickets.is_empty() {
        TeeBody::passthrough(body)
    } else {
        let request = Arc::new(MirrorRequest {
            meta: MirrorMeta {
                route: route.name.clone(),
                request_id: request_id.clone(),
                method: parts.method.clone(),
                path_and_query: path_and_query.clone(),
                host: host.clone(),
                primary: primary_watch,
            },
            headers: parts.headers.clone(),
        });
        if bodiless {
            for t in tickets {
                t.fire(&state.mirror, request.clone(), MirrorBody::empty());
            }
            TeeBody::passthrough(body)
        } else {
            let cap = tickets
                .iter()
                .map(|t| t.max_body_bytes())
                .min()
                .unwrap_or(0);
            TeeBody::new(
                body,
                Tee::new(PendingMirror {
                    ctx: state.mirror.clone(),
                    request,
                    tickets,
                    cap,
                }),
            )
        }
    };
    if let Some(h) = host {
        parts.headers.insert(HOST, h);
    }
    parts.version = Version::HTTP_11;

    // The primary, with retries when the route asks and the request can be replayed.
    let timeout = action.timeout.unwrap_or(service.request_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let retry = action
        .retries
        .as_ref()
        .filter(|_| bodiless && is_idempotent(&parts.method));
    let mut resp = match retry {
        None => {
            let req = Request::from_parts(parts, Either::Left(body));
            // Boxed: the exchange's future is kilobytes, and every enclosing future (this one,
            // the connection's) would carry it and be moved whole when it starts.
            match Box::pin(try_once(
                state,
                &service,
                req,
                &path_and_query,
                deadline,
                None,
                &mut ctx,
            ))
            .await
            {
                Outcome::Response(r) => r,
                Outcome::Failed { error, .. } => return fail(state, error, &ctx, start),
            }
        }
        Some(policy) => {
            drop(body);
            match Box::pin(with_retries(
                state,
                &service,
                &parts,
                &path_and_query,
                deadline,
                policy,
                &mut ctx,
            ))
            .await
            {
                Ok(r) => r,
                Err((e, ctx)) => return fail(state, e, &ctx, start),
            }
        }
    };
    // The upstream going silent in the body: the same limit as for its head.
    resp.body_mut().idle_timeout(timeout);
    // A 101 answers only a request that carried `Upgrade` (the codec refuses it otherwise), and
    // only a client's own WebSocket upgrade carries one (config refuses it in route headers);
    // it must also switch to WebSocket. Its `Upgrade` goes back after the hop-by-hop strip.
    let switched_to = if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        match resp.headers().get(UPGRADE) {
            Some(u) if upgrade && headers::offers_websocket(u) => Some(u.clone()),
            _ => {
                let e = ProxyError::Upstream {
                    upstream: ctx.upstream(),
                    reason: "101 Switching Protocols not to the WebSocket the client asked for"
                        .into(),
                };
                return fail(state, e, &ctx, start);
            }
        }
    } else {
        None
    };
    headers::strip_hop_by_hop(resp.headers_mut());
    if let Some(u) = switched_to {
        resp.headers_mut().insert(UPGRADE, u);
    }
    action.response_headers.apply(resp.headers_mut());
    let status = resp.status().as_u16();
    route.primary_stats.observe(status, start.elapsed());
    log_primary(state, &ctx, Some(status), start, None);
    let resp = match (compare_tx, &state.mirror.compare) {
        (Some(tx), Some(cmp)) => {
            let capture = PrimaryCapture {
                tx,
                status,
                headers: resp.headers().clone(),
                latency_ms: ms_since(start),
                capture: Capture::new(cmp.capture_bytes()),
            };
            resp.map(|b| CaptureBody::new(b, capture))
        }
        _ => resp.map(CaptureBody::passthrough),
    };
    resp.map(Either::Left)
}

/// Counts a request in flight until dropped (answered, failed, or abandoned by its client).
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn start(g: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A request that ends in an error: logged, and answered with the error's status.
fn fail(state: &State, e: ProxyError, ctx: &LogCtx, start: Instant) -> Response<ProxyBody> {
    log_primary(
        state,
        ctx,
        Some(e.status().as_u16()),
        start,
        Some(&e.to_string()),
    );
    e.to_response().map(Either::Right)
}

/// What the access log needs, gathered as the request goes; cheap clones only (no allocation).
struct LogCtx {
    request_id: Option<HeaderValue>,
    route: Option<Arc<str>>,
    method: Method,
    path: PathAndQuery,
    upstream: Option<Authority>,
}

impl LogCtx {
    fn upstream(&self) -> String {
        self.upstream
            .as_ref()
            .map_or_else(|| "-".to_owned(), |a| a.to_string())
    }
}

type Failed = (ProxyError, LogCtx);

/// The first error of type `T` in `e`'s chain of causes.
fn find_cause<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What one attempt ended with, before it becomes a response or a retry.
enum Outcome {
    Response(Response<super::UpstreamBody>),
    Failed { error: ProxyError, connect: bool },
}

/// One try at the primary: pick an endpoint, send, wait for the head until `deadline`
/// (or `per_try` if sooner), and report the endpoint's health for outlier detection.
async fn try_once(
    state: &State,
    service: &Service,
    mut req: Request<PrimaryBody>,
    path_and_query: &PathAndQuery,
    deadline: tokio::time::Instant,
    per_try: Option<Duration>,
    ctx: &mut LogCtx,
) -> Outcome {
    let Some(endpoint) = service.pick_endpoint() else {
        return Outcome::Failed {
            error: ProxyError::NoEndpoint(service.name.clone()),
            connect: false,
        };
    };
    ctx.upstream = Some(endpoint.authority.clone());
    *req.uri_mut() = super::pool::origin_form(path_and_query);
    let until = match per_try {
        Some(t) => deadline.min(tokio::time::Instant::now() + t),
        None => deadline,
    };
    let _active = endpoint.start();
    let started = tokio::time::Instant::now();
    match super::timer::timeout_at(
        until,
        state
            .client
            .send(&endpoint.scheme, &endpoint.authority, req),
    )
    .await
    {
        Ok(Ok(resp)) => {
            let st = resp.status().as_u16();
            let health = if st >= 500 {
                Health::ServerError {
                    gateway: matches!(st, 502..=504),
                }
            } else {
                Health::Ok
            };
            service.endpoints.report(endpoint, health);
            Outcome::Response(resp)
        }
        Ok(Err(e)) => {
            if let Some(t) = find_cause::<BodyTimeout>(&e) {
                return Outcome::Failed {
                    error: ProxyError::ClientBodyTimeout(t.0),
                    connect: false,
                };
            }
            if let Some(t) = find_cause::<BodyTooLarge>(&e) {
                return Outcome::Failed {
                    error: ProxyError::BodyTooLarge(t.0),
                    connect: false,
                };
            }
            if let Some(RequestBodyError::Chunked) = find_cause::<RequestBodyError>(&e) {
                return Outcome::Failed {
                    error: ProxyError::BadRequest("invalid chunked request body"),
                    connect: false,
                };
            }
            let reason = error_chain(&e);
            let connect = e.is_connect();
            if connect {
                service.endpoints.report(endpoint, Health::ConnectFailure);
            }
            let upstream = ctx.upstream();
            let error = if connect {
                ProxyError::Connect { upstream, reason }
            } else {
                ProxyError::Upstream { upstream, reason }
            };
            Outcome::Failed { error, connect }
        }
        Err(_) => Outcome::Failed {
            error: ProxyError::Timeout {
                upstream: ctx.upstream(),
                after_ms: started.elapsed().as_millis(),
            },
            connect: false,
        },
    }
}

async fn with_retries(
    state: &State,
    service: &Service,
    parts: &http::request::Parts,
    pq: &PathAndQuery,
    deadline: tokio::time::Instant,
    policy: &RetryPolicy,
    ctx: &mut LogCtx,
) -> Result<Response<super::UpstreamBody>, Failed> {
    let mut tries_left = policy.attempts;
    loop {
        let mut req = Request::new(Either::Right(Empty::<Bytes>::new()));
        *req.method_mut() = parts.method.clone();
        *req.headers_mut() = parts.headers.clone();
        *req.version_mut() = parts.version;
        let out = try_once(
            state,
            service,
            req,
            pq,
            deadline,
            policy.per_try_timeout,
            ctx,
        )
        .await;
        let past_deadline = tokio::time::Instant::now() >= deadline;
        let again = tries_left > 0
            && !past_deadline
            && match &out {
                Outcome::Response(r) => policy.retry_on.on_status(r.status().as_u16()),
                Outcome::Failed { connect: true, .. } => policy.retry_on.on_connect_failure(),
                Outcome::Failed {
                    error: ProxyError::Timeout { .. },
                    ..
                } => policy.per_try_timeout.is_some(),
                Outcome::Failed { .. } => policy.retry_on.on_reset(),
            };
        if !again {
            return match out {
                Outcome::Response(r) => Ok(r),
                Outcome::Failed { error, .. } => Err((error, ctx.cloned())),
            };
        }
        tries_left -= 1;
        // Envoy's default back-off base: 25 ms, jittered, never past the deadline.
        let pause = Duration::from_millis(fastrand::u64(0..=25));
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
    }
}

impl LogCtx {
    fn cloned(&self) -> LogCtx {
        LogCtx {
            request_id: self.request_id.clone(),
            route: self.route.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            upstream: self.upstream.clone(),
        }
    }
}

fn log_primary(
    state: &State,
    ctx: &LogCtx,
    status: Option<u16>,
    start: Instant,
    error: Option<&str>,
) {
    if !state.access_log.enabled() {
        return;
    }
    state.access_log.log(&Entry {
        kind: PRIMARY,
        request_id: ctx
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        route: ctx.route.as_deref().unwrap_or("-"),
        target: PRIMARY,
        method: ctx.method.as_str(),
        path: ctx.path.as_str(),
        upstream: ctx.upstream.as_ref().map_or("-", |a| a.as_str()),
        status,
        duration: start.elapsed(),
        error,
    });
}
