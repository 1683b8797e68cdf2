//! `mirrorctl compare`: per route, how the shadow answered compared with the primary, from the
//! store; gates for pipelines (exit 0 within all, 1 when one is exceeded, 2 on usage/store errors).

use std::process::ExitCode;

use crate::compare::report::{self, Gates};
use crate::config::parse_duration;
use crate::store;

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Where pairs were recorded: sqlite:PATH (or a .db path) or postgres://…
    #[arg(long, value_name = "URL")]
    pub store: String,
    /// Only pairs newer than this (e.g. 10m, 1h, 7d).
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub since: String,
    /// Only this route.
    #[arg(long, value_name = "ROUTE")]
    pub route: Option<String>,
    /// A shadow running the primary's version: fields differing between primary and it are
    /// learned as noise per route and not reported against the other shadows (Diffy's method).
    #[arg(long, value_name = "SHADOW")]
    pub secondary: Option<String>,
    /// table (default) or json.
    #[arg(long, default_value = "table", value_name = "FORMAT")]
    pub format: String,
    /// Fail when a route's shadow 5xx rate exceeds the primary's by more than this (0–1).
    #[arg(long, value_name = "RATE")]
    pub max_error_rate_delta: Option<f64>,
    /// Fail when a route's shadow p95 exceeds the primary's by more than this many ms.
    #[arg(long, value_name = "MS")]
    pub max_p95_drift_ms: Option<f64>,
    /// Fail when a route's share of pairs with a different status or body exceeds this (0–1).
    #[arg(long, value_name = "RATE")]
    pub max_diff_rate: Option<f64>,
}

pub fn run(a: CompareArgs) -> anyhow::Result<ExitCode> {
    let usage = |m: String| {
        eprintln!("mirrorctl compare: {m}");
        Ok(ExitCode::from(2))
    };
    let since = match parse_duration(&a.since) {
        Ok(d) => d,
        Err(m) => return usage(format!("--since: {m}")),
    };
    if !matches!(a.format.as_str(), "table" | "json") {
        return usage(format!("--format: `{}` (table or json)", a.format));
    }
    let mut st = match store::open(&a.store) {
        Ok(s) => s,
        Err(e) => return usage(format!("{}: {e}", store::redact(&a.store))),
    };
    let rows = match st.pairs_since(
        store::now_ms() - since.as_millis() as i64,
        a.route.as_deref(),
    ) {
        Ok(r) => r,
        Err(e) => return usage(format!("{}: {e}", store::redact(&a.store))),
    };
    let r = report::build_with_noise(&rows, a.secondary.as_deref());
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", report::table(&r));
    }
    let gates = Gates {
        max_error_rate_delta: a.max_error_rate_delta,
        max_p95_drift_ms: a.max_p95_drift_ms,
        max_diff_rate: a.max_diff_rate,
    };
    let failed = gates.check(&r);
    for f in &failed {
        eprintln!("gate failed: {f}");
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
