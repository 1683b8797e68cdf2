//! The admin API's routes. `handle` takes any request body, so it is tested without a socket.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{json, text, token_matches, AdminState};
use crate::control::{ops, ControlError, OpError};
use crate::telemetry::MirrorOutcome;

const MAX_BODY: usize = 64 * 1024;

/// `peer` names who asked, for the audit log.
pub async fn handle<B>(state: &AdminState, req: Request<B>, peer: &str) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segs.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            return text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.render(),
            )
        }
        (&Method::GET, ["healthz"]) => return text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, ["status"]) => {
            return json(
                StatusCode::OK,
                &serde_json::to_value(status(state)).unwrap_or_default(),
            )
        }
        (&Method::GET, ["config"]) => {
            return text(StatusCode::OK, "application/yaml", effective_config(state))
        }
        _ => {}
    }
    let change = matches!(
        (req.method(), segs.as_slice()),
        (&Method::POST, ["reload"])
            | (&Method::POST, ["routes", _, "mirrors"])
            | (&Method::DELETE, ["routes", _, "mirrors", _])
            | (&Method::PUT, ["routes", _, "weights"])
            | (
                &Method::POST,
                ["routes", _, "promote" | "rollback" | "schedule"]
            )
            | (&Method::DELETE, ["schedules", _])
    );
    if !change {
        return json(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no such endpoint: {} {path}", req.method())}),
        );
    }
    // Authentication first: an unauthenticated request's body is never read.
    let Some(expected) = &state.token else {
        return json(
            StatusCode::FORBIDDEN,
            &json!({"error": "changes are disabled: start the proxy with MIRRORCTL_TOKEN or --admin-token-file"}),
        );
    };
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token_matches(given.as_bytes(), expected.as_bytes()) {
        let mut r = json(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "missing or wrong bearer token"}),
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let Some(control) = &state.control else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "live control is not running"}),
        );
    };
    let method = req.method().clone();
    let segs: Vec<String> = segs.iter().map(|s| (*s).to_owned()).collect();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": format!("body: {e}")}),
            )
        }
    };
    let who = format!("admin-api {peer}");
    let who = who.as_str();
    let seg = |i: usize| segs.get(i).map(String::as_str).unwrap_or("");
    let result: Result<serde_json::Value, ControlError> = match (method, seg(0), seg(2)) {
        (Method::POST, "reload", _) => control.reload(who).map(|()| json!({"reloaded": true})),
        (Method::POST, "routes", "mirrors") => match parse::<SetMirror>(&body) {
            Ok(b) => control
                .change(who, seg(1), "set-mirror", |t| {
                    Ok(ops::set_mirror(t, &b.shadow, b.percent))
                })
                .map(|c| json!({"change": c})),
            Err(e) => Err(e),
        },
        (Method::DELETE, "routes", "mirrors") => {
            let (route, shadow) = (seg(1).to_owned(), seg(3).to_owned());
            control
                .change(who, &route, "remove-mirror", |t| {
                    ops::remove_mirror(t, &route, &shadow)
                })
                .map(|c| json!({"change": c}))
        }
        (Method::PUT, "routes", "weights") => match parse::<SetWeights>(&body) {
            Ok(b) => set_weights(control, who, seg(1), &b.weights),
            Err(e) => Err(e),
        },
        (Method::POST, "routes", "promote") => match parse::<Promote>(&body) {
            Ok(b) => {
                let route = seg(1).to_owned();
                let changed = control.change(who, &route, "promote", |t| {
                    ops::promote(t, &route, b.shadow.as_deref())
                });
                match (changed, b.keep_mirror) {
                    (Ok(c), Some(keep)) => match crate::config::parse_duration(&keep) {
                        Ok(d) => control
                            .schedule(who, &route, "drain", d)
                            .map(|s| json!({"change": c, "scheduled": s})),
                        Err(m) => Err(ControlError::Op(OpError::Invalid(format!(
                            "keep_mirror: {m}"
                        )))),
                    },
                    (Ok(c), None) => Ok(json!({"change": c})),
                    (Err(e), _) => Err(e),
                }
            }
            Err(e) => Err(e),
        },
        (Method::POST, "routes", "rollback") => {
            control.rollback(who, seg(1)).map(|c| json!({"change": c}))
        }
        (Method::POST, "routes", "schedule") => match parse::<Schedule>(&body) {
            Ok(b) => match crate::config::parse_duration(&b.after) {
                Ok(d) => control
                    .schedule(who, seg(1), &b.action, d)
                    .map(|s| json!({"scheduled": s})),
                Err(m) => Err(ControlError::Op(OpError::Invalid(format!("after: {m}")))),
            },
            Err(e) => Err(e),
        },
        (Method::DELETE, "schedules", _) => match seg(1).parse::<u64>() {
            Ok(id) => control.cancel(who, id).map(|s| json!({"cancelled": s})),
            Err(_) => Err(ControlError::Op(OpError::Invalid(format!(
                "`{}` is not a schedule id",
                seg(1)
            )))),
        },
        _ => Err(ControlError::Op(OpError::Invalid("no such change".into()))),
    };
    match result {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => {
            let status = match &e {
                ControlError::Op(OpError::NoRoute(_)) | ControlError::NoSchedule(_) => {
                    StatusCode::NOT_FOUND
                }
                ControlError::Op(_) | ControlError::UnknownAction(_) => StatusCode::BAD_REQUEST,
                ControlError::NoHistory(_) => StatusCode::CONFLICT,
                ControlError::Reload(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ControlError::State { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            json(status, &json!({"error": e.to_string()}))
        }
    }
}

fn set_weights(
    control: &crate::control::Control,
    who: &str,
    route: &str,
    weights: &[(String, u32)],
) -> Result<serde_json::Value, ControlError> {
    control
        .change(who, route, "set-weight", |t| {
            Ok(ops::Targets {
                destinations: weights.to_vec(),
                mirrors: t.mirrors.clone(),
            })
        })
        .map(|c| json!({"change": c}))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body)
        .map_err(|e| ControlError::Op(OpError::Invalid(format!("request body: {e}"))))
}

#[derive(Deserialize)]
struct SetMirror {
    shadow: String,
    percent: f64,
}

#[derive(Deserialize)]
struct SetWeights {
    /// `[["v1", 90], ["v2", 10]]`
    weights: Vec<(String, u32)>,
}

#[derive(Deserialize)]
struct Promote {
    shadow: Option<String>,
    keep_mirror: Option<String>,
}

#[derive(Deserialize)]
struct Schedule {
    after: String,
    action: String,
}

#[derive(Serialize)]
pub struct StatusDoc {
    pub routes: Vec<RouteStatus>,
    pub schedules: Vec<crate::control::Scheduled>,
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
        schedules: state
            .control
            .as_ref()
            .map(|c| c.schedules())
            .unwrap_or_default(),
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

#[derive(Serialize)]
struct EffectiveService {
    name: String,
    endpoints: Vec<String>,
}

#[derive(Serialize)]
struct EffectiveRoute {
    name: String,
    route: Vec<EffectiveDestination>,
    mirrors: Vec<EffectiveMirror>,
}

#[derive(Serialize)]
struct EffectiveDestination {
    destination: String,
    weight: u32,
}

#[derive(Serialize)]
struct EffectiveMirror {
    destination: String,
    percent: f64,
}

#[derive(Serialize)]
struct Effective {
    services: Vec<EffectiveService>,
    routes: Vec<EffectiveRoute>,
}

/// The live table's services and targets as YAML (native form; matches and actions are as
/// in the config files).
fn effective_config(state: &AdminState) -> String {
    let t = state.table.load();
    let doc = Effective {
        services: t
            .services
            .iter()
            .map(|s| EffectiveService {
                name: s.name.clone(),
                endpoints: s
                    .endpoints
                    .endpoints
                    .iter()
                    .map(|e| e.authority.to_string())
                    .collect(),
            })
            .collect(),
        routes: t
            .routes()
            .map(|r| EffectiveRoute {
                name: r.name.to_string(),
                route: r
                    .destinations
                    .iter()
                    .map(|d| EffectiveDestination {
                        destination: d.service.name.clone(),
                        weight: d.weight,
                    })
                    .collect(),
                mirrors: r
                    .mirrors
                    .iter()
                    .map(|m| EffectiveMirror {
                        destination: m.shadow.service.name.clone(),
                        percent: (m.sampler.percent() * 1000.0).round() / 1000.0,
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_saphyr::to_string(&doc).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}
