//! Subcommands, one file each. `anyhow` lives here and in `main.rs` only.

mod check;
mod compare;
mod ctl;
mod demo;
mod diffs;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "mirrorctl",
    version,
    about = "Traffic-mirroring reverse proxy: answer from the primary, mirror a sample to shadows, never let a shadow touch the client."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy.
    Serve(Box<serve::ServeArgs>),
    /// Validate a config file; prints `file:line:column: problem` and exits 1 on a bad one.
    Check(check::CheckArgs),
    /// Start a built-in v1 (primary) and v2 (shadow) behind the proxy and show mirroring live.
    Demo(demo::DemoArgs),
    /// Report, per route, how the shadow answered compared with the primary (from the store).
    Compare(compare::CompareArgs),
    /// Show the newest pairs whose answers differ, side by side.
    Diffs(diffs::DiffsArgs),
    #[command(flatten)]
    Ctl(ctl::Ctl),
}

pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(a) => serve::run(*a),
        Command::Check(a) => check::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Diffs(a) => diffs::run(a),
        Command::Ctl(c) => ctl::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mirrorctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs for operators (not the access log) go to stderr; `RUST_LOG` filters them.
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs piped to files or collectors stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
