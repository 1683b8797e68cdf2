//! `mirrorctl diffs`: the newest pairs whose answers differ, side by side, request id included.

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::compare::report::PairRow;
use crate::store;

#[derive(clap::Args, Debug)]
pub struct DiffsArgs {
    /// Where pairs were recorded: sqlite:PATH (or a .db path) or postgres://…
    #[arg(long, value_name = "URL")]
    pub store: String,
    /// Only this route.
    #[arg(long, value_name = "ROUTE")]
    pub route: Option<String>,
    /// How many pairs.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub limit: usize,
}

pub fn run(a: DiffsArgs) -> anyhow::Result<ExitCode> {
    let rows =
        match store::open(&a.store).and_then(|mut s| s.recent_diffs(a.route.as_deref(), a.limit)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("mirrorctl diffs: {}: {e}", store::redact(&a.store));
                return Ok(ExitCode::from(2));
            }
        };
    let color = std::io::stdout().is_terminal();
    if rows.is_empty() {
        println!("no differing pairs recorded");
    }
    for r in &rows {
        print!("{}", render(r, color));
    }
    Ok(ExitCode::SUCCESS)
}

const WIDTH: usize = 60;

/// One pair: a header line, then primary and shadow bodies in two columns, differing lines marked.
pub fn render(r: &PairRow, color: bool) -> String {
    let (red, green, bold, reset) = if color {
        ("\x1b[31m", "\x1b[32m", "\x1b[1m", "\x1b[0m")
    } else {
        ("", "", "", "")
    };
    let ts = crate::store::sqlite_ts(r.ts_ms);
    let mut s = format!(
        "{bold}{} {} {} route={} shadow={} request_id={}{reset}\n  {}\n  primary {} in {:.1} ms | shadow {} in {:.1} ms\n",
        ts, r.method, r.path, r.route, r.shadow, r.request_id, r.diff_summary, r.primary_status, r.primary_latency_ms,
        r.shadow_status, r.shadow_latency_ms
    );
    let p = pretty(r.primary_body.as_deref().unwrap_or(""));
    let sh = pretty(r.shadow_body.as_deref().unwrap_or(""));
    let (pl, sl): (Vec<&str>, Vec<&str>) = (p.lines().collect(), sh.lines().collect());
    s.push_str(&format!("  {:<WIDTH$} | {}\n", "primary", "shadow"));
    for i in 0..pl.len().max(sl.len()).min(40) {
        let a = pl.get(i).copied().unwrap_or("");
        let b = sl.get(i).copied().unwrap_or("");
        let a_cut: String = a.chars().take(WIDTH).collect();
        let b_cut: String = b.chars().take(WIDTH).collect();
        if a == b {
            s.push_str(&format!("  {a_cut:<WIDTH$} | {b_cut}\n"));
        } else {
            s.push_str(&format!(
                "{red}- {a_cut:<WIDTH$}{reset} | {green}{b_cut}{reset}\n"
            ));
        }
    }
    s.push('\n');
    s
}

/// JSON pretty-printed (so fields line up side by side); other text as is.
fn pretty(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_owned())
}
