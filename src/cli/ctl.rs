//! Commands that talk to a running proxy's admin API: `status`, `set-mirror`, `set-weight`,
//! `promote`, `rollback`, `schedule`, `cancel`, `reload`. Human output by default, JSON with
//! `--format json`; any refusal exits non-zero with the server's reason.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

#[derive(clap::Args, Debug, Clone)]
pub struct AdminArgs {
    /// The proxy's admin listener.
    #[arg(long, default_value = "127.0.0.1:9901", value_name = "IP:PORT")]
    pub admin: String,
    /// Bearer token (also MIRRORCTL_TOKEN).
    #[arg(
        long = "admin-token",
        env = "MIRRORCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// File whose first line is the token.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// table (default) or json.
    #[arg(long, default_value = "table", value_name = "FORMAT")]
    pub format: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum Ctl {
    /// Routes, destinations and weights, mirrors with live counters, scheduled actions.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set (or add) a mirror's percentage on a route; `--remove` takes it off.
    SetMirror {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        route: String,
        #[arg(long)]
        shadow: String,
        #[arg(long, required_unless_present = "remove")]
        percent: Option<f64>,
        #[arg(long)]
        remove: bool,
    },
    /// Set a route's destination weights: `set-weight --route R v1=90 v2=10`.
    SetWeight {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        route: String,
        #[arg(required = true, value_name = "DEST=WEIGHT")]
        weights: Vec<String>,
    },
    /// The shadow becomes the primary; the old primary is mirrored at 100 % (rollback is one
    /// command). `--keep-mirror 24h` schedules the drain of that mirror.
    Promote {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        route: String,
        #[arg(long)]
        shadow: Option<String>,
        #[arg(long, value_name = "DURATION")]
        keep_mirror: Option<String>,
    },
    /// Restore the route's exact previous state.
    Rollback {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        route: String,
    },
    /// Run an action later: `schedule --route R --after 24h drain`.
    Schedule {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        route: String,
        #[arg(long, value_name = "DURATION")]
        after: String,
        #[arg(value_name = "ACTION")]
        action: String,
    },
    /// Cancel a scheduled action by id.
    Cancel {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        id: u64,
    },
    /// Re-read the config files; a bad file is refused and the running config stays.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// One HTTP/1.1 exchange with the admin listener (loopback, Connection: close).
fn call(
    a: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let token = crate::config::flags::read_token(a.token.as_deref(), a.admin_token_file.as_deref())
        .map_err(|e| format!("--admin-token-file {e}"))?;
    let mut s = TcpStream::connect(&a.admin)
        .map_err(|e| format!("cannot reach the admin API at {}: {e}", a.admin))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        a.admin
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if body.is_some() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&payload);
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("malformed answer from the admin API")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed status line")?;
    let v = serde_json::from_str(body.trim()).unwrap_or(Value::String(body.to_owned()));
    Ok((status, v))
}

pub fn run(c: Ctl) -> anyhow::Result<ExitCode> {
    let (admin, method, path, body) = match &c {
        Ctl::Status { admin } => (admin, "GET", "/status".to_owned(), None),
        Ctl::SetMirror {
            admin,
            route,
            shadow,
            remove: true,
            ..
        } => (
            admin,
            "DELETE",
            format!("/routes/{route}/mirrors/{shadow}"),
            None,
        ),
        Ctl::SetMirror {
            admin,
            route,
            shadow,
            percent,
            ..
        } => (
            admin,
            "POST",
            format!("/routes/{route}/mirrors"),
            Some(json!({"shadow": shadow, "percent": percent.unwrap_or(0.0)})),
        ),
        Ctl::SetWeight {
            admin,
            route,
            weights,
        } => {
            let mut pairs = Vec::new();
            for w in weights {
                let parsed = w
                    .split_once('=')
                    .and_then(|(d, n)| n.parse::<u32>().ok().map(|n| (d.to_owned(), n)));
                match parsed {
                    Some(p) => pairs.push(p),
                    None => {
                        eprintln!("mirrorctl set-weight: `{w}` is not DEST=WEIGHT");
                        return Ok(ExitCode::from(2));
                    }
                }
            }
            (
                admin,
                "PUT",
                format!("/routes/{route}/weights"),
                Some(json!({"weights": pairs})),
            )
        }
        Ctl::Promote {
            admin,
            route,
            shadow,
            keep_mirror,
        } => (
            admin,
            "POST",
            format!("/routes/{route}/promote"),
            Some(json!({"shadow": shadow, "keep_mirror": keep_mirror})),
        ),
        Ctl::Rollback { admin, route } => (
            admin,
            "POST",
            format!("/routes/{route}/rollback"),
            Some(json!({})),
        ),
        Ctl::Schedule {
            admin,
            route,
            after,
            action,
        } => (
            admin,
            "POST",
            format!("/routes/{route}/schedule"),
            Some(json!({"after": after, "action": action})),
        ),
        Ctl::Cancel { admin, id } => (admin, "DELETE", format!("/schedules/{id}"), None),
        Ctl::Reload { admin } => (admin, "POST", "/reload".to_owned(), Some(json!({}))),
    };
    match call(admin, method, &path, body.as_ref()) {
        Ok((status, v)) if (200..300).contains(&status) => {
            if admin.format == "json" {
                println!("{v:#}");
            } else {
                print!("{}", human(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok((status, v)) => {
            let why = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            eprintln!("mirrorctl: refused ({status}): {why}");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("mirrorctl: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

/// 100 → `100`, 12.5 → `12.5`.
fn pct(v: &Value) -> String {
    let x = (v.as_f64().unwrap_or(0.0) * 1000.0).round() / 1000.0;
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

fn targets(t: &Value) -> String {
    let d: Vec<String> = t["destinations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| format!("{}={}", x[0].as_str().unwrap_or("?"), x[1]))
                .collect()
        })
        .unwrap_or_default();
    let m: Vec<String> = t["mirrors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| format!("{}@{}%", x[0].as_str().unwrap_or("?"), pct(&x[1])))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "route {} mirror {}",
        d.join(" "),
        if m.is_empty() {
            "-".into()
        } else {
            m.join(" ")
        }
    )
}

fn human(v: &Value) -> String {
    let mut s = String::new();
    if let Some(routes) = v["routes"].as_array() {
        for r in routes {
            let d: Vec<String> = r["destinations"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            format!("{}={}", x["service"].as_str().unwrap_or("?"), x["weight"])
                        })
                        .collect()
                })
                .unwrap_or_default();
            s.push_str(&format!(
                "{:<20} -> {}\n",
                r["name"].as_str().unwrap_or("?"),
                d.join(" ")
            ));
            for m in r["mirrors"].as_array().into_iter().flatten() {
                s.push_str(&format!(
                    "{:<20}    mirror {} {}% sent={} ok={} dropped={} in_flight={}{}\n",
                    "",
                    m["shadow"].as_str().unwrap_or("?"),
                    pct(&m["percent"]),
                    m["sent"],
                    m["succeeded"],
                    m["dropped"],
                    m["in_flight"],
                    if m["circuit_open"] == true {
                        " circuit-open"
                    } else {
                        ""
                    }
                ));
            }
        }
        for sch in v["schedules"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "scheduled #{}: {} route {} at {}\n",
                sch["id"],
                sch["action"].as_str().unwrap_or("?"),
                sch["route"].as_str().unwrap_or("?"),
                crate::store::sqlite_ts(sch["due_ms"].as_i64().unwrap_or(0))
            ));
        }
        return s;
    }
    if let Some(c) = v.get("change") {
        s.push_str(&format!(
            "{} {}: {}  (was: {})\n",
            c["action"].as_str().unwrap_or("?"),
            c["route"].as_str().unwrap_or("?"),
            targets(&c["after"]),
            targets(&c["before"])
        ));
    }
    for key in ["scheduled", "cancelled"] {
        if let Some(sch) = v.get(key) {
            s.push_str(&format!(
                "{key} #{}: {} route {} at {}\n",
                sch["id"],
                sch["action"].as_str().unwrap_or("?"),
                sch["route"].as_str().unwrap_or("?"),
                crate::store::sqlite_ts(sch["due_ms"].as_i64().unwrap_or(0))
            ));
        }
    }
    if v.get("reloaded").is_some() {
        s.push_str("reloaded\n");
    }
    s
}
