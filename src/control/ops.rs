//! Live changes as pure functions: (table, route, change) → new table. No I/O, no clocks;
//! the caller swaps the result in atomically.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::mirror::{MirrorCounters, MirrorPolicy, Sampler, Shadow};
use crate::routing::{Route, Table, VirtualHost, WeightedDestination};
use crate::telemetry::Metrics;

/// Where a route sends traffic: what live control changes, persists and rolls back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// (service, weight)
    pub destinations: Vec<(String, u32)>,
    /// (service, percent)
    pub mirrors: Vec<(String, f64)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OpError {
    #[error("no route `{0}`")]
    NoRoute(String),
    #[error("no service `{0}`")]
    NoService(String),
    #[error("route `{route}` has no mirror `{shadow}`")]
    NoMirror { route: String, shadow: String },
    #[error("{0}")]
    Invalid(String),
}

pub fn targets(route: &Route) -> Targets {
    Targets {
        destinations: route
            .destinations
            .iter()
            .map(|d| (d.service.name.clone(), d.weight))
            .collect(),
        mirrors: route
            .mirrors
            .iter()
            .map(|m| (m.shadow.service.name.clone(), m.sampler.percent()))
            .collect(),
    }
}

pub fn find_route<'t>(table: &'t Table, name: &str) -> Result<&'t Route, OpError> {
    table
        .routes()
        .find(|r| &*r.name == name)
        .ok_or_else(|| OpError::NoRoute(name.to_owned()))
}

/// The table with `route` sending to `t`. Shadows are reused across tables (limits, breakers
/// and counters carry over).
pub fn apply(table: &Table, route: &str, t: &Targets, metrics: &Metrics) -> Result<Table, OpError> {
    let old = find_route(table, route)?;
    let service = |name: &str| {
        table
            .service(name)
            .cloned()
            .ok_or_else(|| OpError::NoService(name.to_owned()))
    };
    if t.destinations.is_empty() {
        return Err(OpError::Invalid(
            "a route needs at least one destination".into(),
        ));
    }
    let sum: u64 = t.destinations.iter().map(|(_, w)| u64::from(*w)).sum();
    if sum == 0 || sum > u64::from(u32::MAX) {
        return Err(OpError::Invalid(
            "the weights must add up to more than 0".into(),
        ));
    }
    let mut destinations = Vec::new();
    for (name, weight) in &t.destinations {
        destinations.push(WeightedDestination {
            service: service(name)?,
            weight: *weight,
        });
    }
    let mut mirrors = Vec::new();
    for (name, percent) in &t.mirrors {
        if !(percent.is_finite() && (0.0..=100.0).contains(percent)) {
            return Err(OpError::Invalid(format!(
                "{percent} is not a percentage between 0 and 100"
            )));
        }
        let svc = service(name)?;
        let shadow = {
            let mut shadows = table
                .shadows
                .lock()
                .map_err(|_| OpError::Invalid("shadow registry poisoned".into()))?;
            shadows
                .entry(name.clone())
                .or_insert_with(|| {
                    let settings = table.shadow_settings.get(name).cloned().unwrap_or_default();
                    Arc::new(Shadow::new(svc.clone(), settings, metrics))
                })
                .clone()
        };
        // Keep the counters of a mirror that stays; new ones get their own.
        let counters = old
            .mirrors
            .iter()
            .find(|m| m.shadow.name == shadow.name)
            .map(|m| m.counters.clone())
            .unwrap_or_else(|| Arc::new(MirrorCounters::new(metrics, &old.name, &shadow.name)));
        mirrors.push(MirrorPolicy {
            shadow,
            sampler: Sampler::from_percent(*percent),
            counters,
        });
    }
    let new_route = old.with_targets(destinations, mirrors);
    let virtual_hosts = table
        .virtual_hosts
        .iter()
        .map(|vh| VirtualHost {
            routes: vh
                .routes
                .iter()
                .map(|r| {
                    if &*r.name == route {
                        new_route.clone()
                    } else {
                        r.clone()
                    }
                })
                .collect(),
            ..vh.clone()
        })
        .collect();
    Ok(Table {
        virtual_hosts,
        ..table.clone()
    })
}

/// Set (add or change) one mirror's percentage.
pub fn set_mirror(t: &Targets, shadow: &str, percent: f64) -> Targets {
    let mut n = t.clone();
    match n.mirrors.iter_mut().find(|(s, _)| s == shadow) {
        Some(m) => m.1 = percent,
        None => n.mirrors.push((shadow.to_owned(), percent)),
    }
    n
}

pub fn remove_mirror(t: &Targets, route: &str, shadow: &str) -> Result<Targets, OpError> {
    let mut n = t.clone();
    let before = n.mirrors.len();
    n.mirrors.retain(|(s, _)| s != shadow);
    if n.mirrors.len() == before {
        return Err(OpError::NoMirror {
            route: route.to_owned(),
            shadow: shadow.to_owned(),
        });
    }
    Ok(n)
}

/// Promote: the shadow becomes the only primary; every former primary becomes a 100 % mirror
/// (reverse mirroring, so late regressions still show in `compare`). Other mirrors stay.
pub fn promote(t: &Targets, route: &str, shadow: Option<&str>) -> Result<Targets, OpError> {
    let shadow = match shadow {
        Some(s) => s.to_owned(),
        None => match t.mirrors.as_slice() {
            [(s, _)] => s.clone(),
            [] => {
                return Err(OpError::Invalid(format!(
                    "route `{route}` has no mirror to promote"
                )))
            }
            _ => {
                return Err(OpError::Invalid(format!(
                    "route `{route}` has several mirrors: say which (--shadow)"
                )))
            }
        },
    };
    if !t.mirrors.iter().any(|(s, _)| *s == shadow) {
        return Err(OpError::NoMirror {
            route: route.to_owned(),
            shadow,
        });
    }
    let mut mirrors: Vec<(String, f64)> = t
        .destinations
        .iter()
        .filter(|(s, w)| *w > 0 && *s != shadow)
        .map(|(s, _)| (s.clone(), 100.0))
        .collect();
    for (s, p) in &t.mirrors {
        if *s != shadow && !mirrors.iter().any(|(m, _)| m == s) {
            mirrors.push((s.clone(), *p));
        }
    }
    Ok(Targets {
        destinations: vec![(shadow, 100)],
        mirrors,
    })
}

/// Drain: stop mirroring on the route.
pub fn drain(t: &Targets) -> Targets {
    Targets {
        destinations: t.destinations.clone(),
        mirrors: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(d: &[(&str, u32)], m: &[(&str, f64)]) -> Targets {
        Targets {
            destinations: d.iter().map(|(s, w)| (s.to_string(), *w)).collect(),
            mirrors: m.iter().map(|(s, p)| (s.to_string(), *p)).collect(),
        }
    }

    #[test]
    fn promote_reverses_the_mirror() {
        let before = t(&[("v1", 100)], &[("v2", 10.0)]);
        assert_eq!(
            promote(&before, "r", None),
            Ok(t(&[("v2", 100)], &[("v1", 100.0)]))
        );
        let several = t(&[("v1", 90), ("v2", 10)], &[("v2", 100.0), ("v3", 25.0)]);
        assert!(promote(&several, "r", None).is_err());
        assert_eq!(
            promote(&several, "r", Some("v2")),
            Ok(t(&[("v2", 100)], &[("v1", 100.0), ("v3", 25.0)]))
        );
        assert!(matches!(
            promote(&before, "r", Some("v9")),
            Err(OpError::NoMirror { .. })
        ));
    }

    #[test]
    fn mirror_edits() {
        let a = t(&[("v1", 1)], &[("v2", 10.0)]);
        assert_eq!(set_mirror(&a, "v2", 50.0), t(&[("v1", 1)], &[("v2", 50.0)]));
        assert_eq!(
            set_mirror(&a, "v3", 1.0),
            t(&[("v1", 1)], &[("v2", 10.0), ("v3", 1.0)])
        );
        assert_eq!(remove_mirror(&a, "r", "v2"), Ok(t(&[("v1", 1)], &[])));
        assert!(remove_mirror(&a, "r", "v3").is_err());
        assert_eq!(drain(&a), t(&[("v1", 1)], &[]));
    }
}
