//! One client request, in phases:
//!
//! ```text
//! check ─▶ identify (request id, forwarded) ─▶ route ─▶ admit mirrors ─▶ send primary ─▶ respond
//!                                                          │                 │ body tee
//!                                                          └────── fire copies (own tasks)
//! ```
//! The client's answer depends only on the primary. Mirrors are admitted synchronously
//! (atomics only) and sent on tasks of their own once the body they copy has ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;

use super::error::{error_chain, ProxyError};
use super::headers;
use super::{ProxyBody, State};
use crate::mirror::{MirrorBody, MirrorRequest, PendingMirror, TeeBody};
use crate::telemetry::Entry;

const PRIMARY: &str = "primary";

pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let start = Instant::now();
    state.metrics.in_flight.inc();
    let resp = match forward(&state, req, peer, start).await {
        Ok(r) => r,
        Err((e, ctx)) => {
            log_primary(
                &state,
                &ctx,
                Some(e.status().as_u16()),
                start,
                Some(&e.to_string()),
            );
            e.to_response().map(Either::Right)
        }
    };
    state.metrics.in_flight.dec();
    resp
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

async fn forward(
    state: &State,
    req: Request<Incoming>,
    peer: SocketAddr,
    start: Instant,
) -> Result<Response<ProxyBody>, (ProxyError, LogCtx)> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut ctx = LogCtx {
        request_id: None,
        route: None,
        method: parts.method.clone(),
        path: path_and_query.clone(),
        upstream: None,
    };
    if let Err(why) = headers::check_request(&parts) {
        return Err((ProxyError::BadRequest(why), ctx));
    }

    // Identify.
    let host = headers::request_host(&parts);
    let request_id = headers::ensure_request_id(&mut parts.headers);
    ctx.request_id = Some(request_id.clone());
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_forwarded(&mut parts.headers, peer.ip(), "http");

    // Route. The table is loaded once: the request finishes on the table it started with.
    let table = state.table.load();
    let Some(route) = table.select(&parts) else {
        return Err((ProxyError::NoRoute(ctx.path.to_string()), ctx));
    };
    ctx.route = Some(route.name.clone());
    let Some(dest) = route.pick_destination() else {
        return Err((ProxyError::NoRoute(ctx.path.to_string()), ctx));
    };
    let service = dest.service.clone();
    let Some(endpoint) = service.pick_endpoint() else {
        return Err((ProxyError::NoEndpoint(service.name.clone()), ctx));
    };
    ctx.upstream = Some(endpoint.authority.clone());

    // Admit mirrors: synchronous, atomics only.
    let declared_len = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut tickets = Vec::new();
    for m in &route.mirrors {
        if let Some(t) = m.admit(&parts.method, declared_len) {
            tickets.push(t);
        }
    }
    let body = if tickets.is_empty() {
        TeeBody::passthrough(body)
    } else {
        let mut mirror_headers = parts.headers.clone();
        mirror_headers.remove(HOST);
        let request = Arc::new(MirrorRequest {
            route: route.name.clone(),
            request_id: request_id.clone(),
            method: parts.method.clone(),
            path_and_query: path_and_query.clone(),
            host: host.clone(),
            headers: mirror_headers,
        });
        if body.is_end_stream() {
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
                PendingMirror {
                    ctx: state.mirror.clone(),
                    request,
                    tickets,
                    cap,
                },
            )
        }
    };

    // The primary request: same method, path, headers; Host preserved.
    let uri = Uri::builder()
        .scheme(endpoint.scheme.clone())
        .authority(endpoint.authority.clone())
        .path_and_query(path_and_query)
        .build();
    let Ok(uri) = uri else {
        return Err((ProxyError::BadRequest("invalid request target"), ctx));
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    if !parts.headers.contains_key(HOST) {
        if let Some(h) = host {
            parts.headers.insert(HOST, h);
        }
    }
    let upstream_req = Request::from_parts(parts, body);

    let timeout = service.request_timeout;
    let result = tokio::time::timeout(timeout, state.client.request(upstream_req)).await;
    let mut resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let reason = error_chain(&e);
            let err = if e.is_connect() {
                ProxyError::Connect {
                    upstream: ctx.upstream(),
                    reason,
                }
            } else {
                ProxyError::Upstream {
                    upstream: ctx.upstream(),
                    reason,
                }
            };
            return Err((err, ctx));
        }
        Err(_) => {
            let err = ProxyError::Timeout {
                upstream: ctx.upstream(),
                after_ms: timeout.as_millis(),
            };
            return Err((err, ctx));
        }
    };
    headers::strip_hop_by_hop(resp.headers_mut());
    let status = resp.status().as_u16();
    route.primary_stats.observe(status, start.elapsed());
    log_primary(state, &ctx, Some(status), start, None);
    Ok(resp.map(Either::Left))
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
