//! From stored pairs to the `mirrorctl compare` report and its gates. Pure.

use std::collections::BTreeMap;

use serde::Serialize;

use super::diff::generalize;

/// One recorded pair, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRow {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub route: String,
    pub shadow: String,
    pub method: String,
    pub path: String,
    pub request_id: String,
    pub primary_status: i32,
    pub shadow_status: i32,
    pub primary_latency_ms: f64,
    pub shadow_latency_ms: f64,
    /// `same`, `status`, `body`, `headers`.
    pub diff_kind: String,
    pub diff_summary: String,
    /// Differing fields (JSON paths, `line N`, `body`), comma-separated.
    pub diff_fields: String,
    pub primary_body: Option<String>,
    pub shadow_body: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteReport {
    pub route: String,
    pub shadow: String,
    pub pairs: u64,
    pub primary_status: BTreeMap<String, u64>,
    pub shadow_status: BTreeMap<String, u64>,
    /// Share of 5xx answers.
    pub primary_error_rate: f64,
    pub shadow_error_rate: f64,
    pub error_rate_delta: f64,
    pub primary_p50_ms: f64,
    pub primary_p95_ms: f64,
    pub primary_p99_ms: f64,
    pub shadow_p50_ms: f64,
    pub shadow_p95_ms: f64,
    pub shadow_p99_ms: f64,
    /// shadow p95 − primary p95.
    pub p95_drift_ms: f64,
    pub status_mismatch_rate: f64,
    pub body_diff_rate: f64,
    pub header_diff_rate: f64,
    /// Pairs whose status or body differ, over all pairs (what `--max-diff-rate` gates).
    pub diff_rate: f64,
    pub top_fields: Vec<FieldCount>,
    /// Fields learned as noise from the secondary and left out of the rates above.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub noise_fields: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldCount {
    pub field: String,
    pub pairs: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub routes: Vec<RouteReport>,
}

/// Linear interpolation between closest ranks: PostgreSQL's `percentile_cont`.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let pos = q * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Per route, the share of primary/secondary pairs in which each (generalized) field differs.
fn learn_noise(
    rows: &[PairRow],
    secondary: &str,
) -> BTreeMap<String, (BTreeMap<String, f64>, f64)> {
    let mut counts: BTreeMap<String, (BTreeMap<String, u64>, u64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.shadow == secondary) {
        let e = counts.entry(r.route.clone()).or_default();
        e.1 += 1;
        for f in fields_of(r) {
            *e.0.entry(f).or_insert(0) += 1;
        }
    }
    counts
        .into_iter()
        .map(|(route, (fields, n))| {
            let total = n as f64;
            (
                route,
                (
                    fields
                        .into_iter()
                        .map(|(f, c)| (f, c as f64 / total))
                        .collect(),
                    total,
                ),
            )
        })
        .collect()
}

fn fields_of(r: &PairRow) -> Vec<String> {
    let mut seen: Vec<String> = r
        .diff_fields
        .split(", ")
        .filter(|f| !f.is_empty())
        .map(generalize)
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

/// Diffy's rule: a field is the candidate's only if it differs more often than between the
/// primary and the secondary, by more than 20 % relatively and 0.03 % absolutely.
pub fn is_signal(raw: f64, noise: f64) -> bool {
    raw > noise && (raw - noise) / (raw + noise) > 0.20 && (raw - noise) > 0.0003
}

pub fn build(rows: &[PairRow]) -> Report {
    build_with_noise(rows, None)
}

/// The report; with `secondary` (a shadow running the primary's version), fields that differ
/// between primary and secondary are learned as noise per route and not held against the other
/// shadows, and the secondary's own rows are left out.
pub fn build_with_noise(rows: &[PairRow], secondary: Option<&str>) -> Report {
    let noise = secondary.map(|s| learn_noise(rows, s)).unwrap_or_default();
    let mut groups: BTreeMap<(&str, &str), Vec<&PairRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| Some(r.shadow.as_str()) != secondary) {
        groups.entry((&r.route, &r.shadow)).or_default().push(r);
    }
    let mut routes: Vec<RouteReport> = groups
        .into_iter()
        .map(|((route, shadow), rs)| {
            let n = rs.len() as f64;
            let mut p: Vec<f64> = rs.iter().map(|r| r.primary_latency_ms).collect();
            let mut s: Vec<f64> = rs.iter().map(|r| r.shadow_latency_ms).collect();
            p.sort_by(f64::total_cmp);
            s.sort_by(f64::total_cmp);
            let mut ps = BTreeMap::new();
            let mut ss = BTreeMap::new();
            for r in &rs {
                *ps.entry(r.primary_status.to_string()).or_insert(0) += 1;
                *ss.entry(r.shadow_status.to_string()).or_insert(0) += 1;
            }
            let rate = |f: &dyn Fn(&PairRow) -> bool| rs.iter().filter(|r| f(r)).count() as f64 / n;
            let perr = rate(&|r| r.primary_status >= 500);
            let serr = rate(&|r| r.shadow_status >= 500);
            let mut fields: BTreeMap<String, u64> = BTreeMap::new();
            for r in &rs {
                for f in fields_of(r) {
                    *fields.entry(f).or_insert(0) += 1;
                }
            }
            // Fields that are noise on this route: they do not count as differences.
            let route_noise = noise.get(route);
            let noisy: Vec<String> = match route_noise {
                Some((rates, _)) => fields
                    .iter()
                    .filter(|(f, c)| {
                        !is_signal(**c as f64 / n, rates.get(*f).copied().unwrap_or(0.0))
                    })
                    .map(|(f, _)| f.clone())
                    .collect(),
                None => Vec::new(),
            };
            fields.retain(|f, _| !noisy.contains(f));
            let body_differs = |r: &PairRow| fields_of(r).iter().any(|f| !noisy.contains(f));
            let mut top: Vec<FieldCount> = fields
                .into_iter()
                .map(|(field, pairs)| FieldCount { field, pairs })
                .collect();
            top.sort_by(|a, b| b.pairs.cmp(&a.pairs).then(a.field.cmp(&b.field)));
            top.truncate(5);
            let (pp95, sp95) = (percentile(&p, 0.95), percentile(&s, 0.95));
            RouteReport {
                route: route.to_owned(),
                shadow: shadow.to_owned(),
                pairs: rs.len() as u64,
                primary_status: ps,
                shadow_status: ss,
                primary_error_rate: round3(perr),
                shadow_error_rate: round3(serr),
                error_rate_delta: round3(serr - perr),
                primary_p50_ms: round3(percentile(&p, 0.5)),
                primary_p95_ms: round3(pp95),
                primary_p99_ms: round3(percentile(&p, 0.99)),
                shadow_p50_ms: round3(percentile(&s, 0.5)),
                shadow_p95_ms: round3(sp95),
                shadow_p99_ms: round3(percentile(&s, 0.99)),
                p95_drift_ms: round3(sp95 - pp95),
                status_mismatch_rate: round3(rate(&|r| r.diff_kind == "status")),
                body_diff_rate: round3(rate(&|r| {
                    (r.diff_kind == "body" || r.diff_kind == "status") && body_differs(r)
                })),
                header_diff_rate: round3(rate(&|r| r.diff_kind == "headers")),
                diff_rate: round3(rate(&|r| {
                    r.diff_kind == "status" || (r.diff_kind == "body" && body_differs(r))
                })),
                top_fields: top,
                noise_fields: noisy,
            }
        })
        .collect();
    routes.sort_by(|a, b| {
        b.p95_drift_ms
            .total_cmp(&a.p95_drift_ms)
            .then(a.route.cmp(&b.route))
    });
    Report { routes }
}

/// Pipeline gates: any exceeded → exit 1.
#[derive(Debug, Clone, Default)]
pub struct Gates {
    pub max_error_rate_delta: Option<f64>,
    pub max_p95_drift_ms: Option<f64>,
    pub max_diff_rate: Option<f64>,
}

impl Gates {
    /// One line per exceeded gate and route.
    pub fn check(&self, r: &Report) -> Vec<String> {
        let mut out = Vec::new();
        for x in &r.routes {
            let name = format!("route {} (shadow {})", x.route, x.shadow);
            if let Some(g) = self.max_error_rate_delta {
                if x.error_rate_delta > g {
                    out.push(format!(
                        "{name}: error-rate delta {:.3} > --max-error-rate-delta {g}",
                        x.error_rate_delta
                    ));
                }
            }
            if let Some(g) = self.max_p95_drift_ms {
                if x.p95_drift_ms > g {
                    out.push(format!(
                        "{name}: p95 drift {:.1} ms > --max-p95-drift-ms {g}",
                        x.p95_drift_ms
                    ));
                }
            }
            if let Some(g) = self.max_diff_rate {
                if x.diff_rate > g {
                    out.push(format!(
                        "{name}: diff rate {:.3} > --max-diff-rate {g}",
                        x.diff_rate
                    ));
                }
            }
        }
        out
    }
}

/// The human-readable table.
pub fn table(r: &Report) -> String {
    let mut s = String::from(
        "route            shadow         pairs  p50 prim/shad ms   p95 prim/shad ms   p99 prim/shad ms   drift_ms  err Δ   status≠  body≠   top fields\n",
    );
    for x in &r.routes {
        let fields: Vec<String> = x
            .top_fields
            .iter()
            .map(|f| format!("{} ({})", f.field, f.pairs))
            .collect();
        s.push_str(&format!(
            "{:<16} {:<14} {:>5}  {:>7.1}/{:<8.1}  {:>7.1}/{:<8.1}  {:>7.1}/{:<8.1}  {:>8.1}  {:>+6.3}  {:>6.1}%  {:>5.1}%  {}\n",
            x.route,
            x.shadow,
            x.pairs,
            x.primary_p50_ms,
            x.shadow_p50_ms,
            x.primary_p95_ms,
            x.shadow_p95_ms,
            x.primary_p99_ms,
            x.shadow_p99_ms,
            x.p95_drift_ms,
            x.error_rate_delta,
            x.status_mismatch_rate * 100.0,
            x.body_diff_rate * 100.0,
            if fields.is_empty() { "-".into() } else { fields.join(", ") }
        ));
    }
    if r.routes.is_empty() {
        s.push_str("(no pairs recorded in this window)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(route: &str, ps: i32, ss: i32, pl: f64, sl: f64, kind: &str, fields: &str) -> PairRow {
        PairRow {
            ts_ms: 0,
            route: route.into(),
            shadow: "v2".into(),
            method: "GET".into(),
            path: "/".into(),
            request_id: "r".into(),
            primary_status: ps,
            shadow_status: ss,
            primary_latency_ms: pl,
            shadow_latency_ms: sl,
            diff_kind: kind.into(),
            diff_summary: String::new(),
            diff_fields: fields.into(),
            primary_body: None,
            shadow_body: None,
        }
    }

    #[test]
    fn percentile_matches_percentile_cont() {
        // SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY x) FROM (VALUES (1),(2),(3),(4)) v(x) = 3.85
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0], 0.95) - 3.85).abs() < 1e-9);
        assert_eq!(percentile(&[5.0], 0.5), 5.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn report_rates_and_order() {
        let rows = vec![
            row("a", 200, 500, 1.0, 2.0, "status", ""),
            row("a", 200, 200, 1.0, 2.0, "same", ""),
            row("b", 200, 200, 1.0, 50.0, "body", "$.items[0].id, $.price"),
            row("b", 200, 200, 1.0, 50.0, "body", "$.items[3].id"),
        ];
        let r = build(&rows);
        assert_eq!(r.routes[0].route, "b", "largest drift first");
        let b = &r.routes[0];
        assert_eq!(b.body_diff_rate, 1.0);
        assert_eq!(
            b.top_fields[0],
            FieldCount {
                field: "$.items[*].id".into(),
                pairs: 2
            }
        );
        let a = &r.routes[1];
        assert_eq!(a.status_mismatch_rate, 0.5);
        assert_eq!(a.error_rate_delta, 0.5);
        assert_eq!(a.shadow_status.get("500"), Some(&1));
        let gates = Gates {
            max_error_rate_delta: Some(0.1),
            max_p95_drift_ms: Some(10.0),
            max_diff_rate: None,
        };
        let failed = gates.check(&r);
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert!(failed
            .iter()
            .any(|f| f.contains("route b") && f.contains("p95 drift")));
        assert!(failed
            .iter()
            .any(|f| f.contains("route a") && f.contains("error-rate delta")));
        assert!(Gates::default().check(&r).is_empty());
    }
}

#[cfg(test)]
mod noise_tests {
    use super::*;

    fn row(shadow: &str, fields: &str) -> PairRow {
        PairRow {
            ts_ms: 0,
            route: "r".into(),
            shadow: shadow.into(),
            method: "GET".into(),
            path: "/".into(),
            request_id: "x".into(),
            primary_status: 200,
            shadow_status: 200,
            primary_latency_ms: 1.0,
            shadow_latency_ms: 1.0,
            diff_kind: if fields.is_empty() {
                "same".into()
            } else {
                "body".into()
            },
            diff_summary: String::new(),
            diff_fields: fields.into(),
            primary_body: None,
            shadow_body: None,
        }
    }

    #[test]
    fn secondary_noise_is_not_held_against_the_candidate() {
        let mut rows = Vec::new();
        for i in 0..100 {
            // The timestamp differs between any two answers; v2 also changes the price.
            rows.push(row("v1b", "$.timestamp"));
            rows.push(row(
                "v2",
                if i % 2 == 0 {
                    "$.price, $.timestamp"
                } else {
                    "$.timestamp"
                },
            ));
        }
        let plain = build(&rows);
        let v2 = plain.routes.iter().find(|r| r.shadow == "v2").expect("v2");
        assert_eq!(v2.body_diff_rate, 1.0);
        let learned = build_with_noise(&rows, Some("v1b"));
        assert_eq!(
            learned.routes.len(),
            1,
            "the secondary's own rows are not a report row"
        );
        let v2 = &learned.routes[0];
        assert_eq!(v2.noise_fields, ["$.timestamp"]);
        assert_eq!(
            v2.top_fields,
            [FieldCount {
                field: "$.price".into(),
                pairs: 50
            }]
        );
        assert_eq!(v2.body_diff_rate, 0.5);
        assert_eq!(v2.diff_rate, 0.5);
    }

    #[test]
    fn diffy_thresholds() {
        assert!(is_signal(0.5, 0.0));
        assert!(!is_signal(0.5, 0.5));
        assert!(!is_signal(0.55, 0.5), "within 20 % relative");
        assert!(!is_signal(0.0002, 0.0), "below 0.03 % absolute");
    }
}
