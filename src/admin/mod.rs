//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/status` (routes, mirrors,
//! shadow state as JSON). Read-only for now; it must never share a port with client traffic.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use arc_swap::ArcSwap;

use crate::routing::Table;
use crate::telemetry::Metrics;
use crate::telemetry::MirrorOutcome;

/// What the admin listener reads.
pub struct AdminState {
    pub table: Arc<ArcSwap<Table>>,
    pub metrics: Arc<Metrics>,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(&state, &req)) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// Route one admin request. Pure apart from reading `state`: testable without a socket.
pub fn handle<B>(state: &AdminState, req: &Request<B>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.render(),
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/status") => {
            let body = serde_json::to_string_pretty(&status(state)).unwrap_or_default();
            text(StatusCode::OK, "application/json", body + "\n")
        }
        (_, "/metrics" | "/healthz" | "/status") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn text(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

#[derive(Serialize)]
pub struct StatusDoc {
    pub routes: Vec<RouteStatus>,
}

#[derive(Serialize)]
pub struct RouteStatus {
    pub name: String,
    pub destinations: Vec<DestinationStatus>,
    pub mirrors: Vec<MirrorStatus>,
}

#[derive(Serialize)]
pub struct DestinationStatus {
    pub service: String,
    pub weight: u32,
}

#[derive(Serialize)]
pub struct MirrorStatus {
    pub shadow: String,
    pub percent: f64,
    pub in_flight: usize,
    pub circuit_open: bool,
    pub sent: u64,
    pub succeeded: u64,
    pub dropped: u64,
}

pub fn status(state: &AdminState) -> StatusDoc {
    let table = state.table.load();
    StatusDoc {
        routes: table
            .routes()
            .map(|r| RouteStatus {
                name: r.name.to_string(),
                destinations: r
                    .destinations
                    .iter()
                    .map(|d| DestinationStatus {
                        service: d.service.name.clone(),
                        weight: d.weight,
                    })
                    .collect(),
                mirrors: r
                    .mirrors
                    .iter()
                    .map(|m| {
                        let c = &m.counters;
                        MirrorStatus {
                            shadow: m.shadow.name.to_string(),
                            percent: m.sampler.percent(),
                            in_flight: m.shadow.in_flight(),
                            circuit_open: m.shadow.breaker.is_open(),
                            sent: c.get(MirrorOutcome::sent),
                            succeeded: c.get(MirrorOutcome::succeeded),
                            dropped: [
                                MirrorOutcome::body_too_large,
                                MirrorOutcome::overload,
                                MirrorOutcome::circuit_open,
                                MirrorOutcome::body_incomplete,
                            ]
                            .iter()
                            .map(|o| c.get(*o))
                            .sum(),
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}
