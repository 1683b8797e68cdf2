//! `mirrorctl serve`: run the proxy until SIGTERM/SIGINT, then drain gracefully.

use std::process::ExitCode;
use std::sync::Arc;

use crate::config::flags::{self, ServeFlags};
use crate::telemetry::Metrics;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub flags: ServeFlags,
    /// Worker threads, each with its own accept socket and upstream pools (default: one per core).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing();
    let metrics = Arc::new(Metrics::new());
    let rt_cfg = match flags::load_with_warnings(&a.flags, &metrics) {
        Ok((mut r, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            if let Some(w) = a.workers {
                r.workers = w.max(1);
            }
            if r.control.state.is_none() {
                r.control.state = Some("mirrorctl.state.json".into());
            }
            r
        }
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    // The control plane (signals, admin) runs here; requests run on the proxy's workers.
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        // Handlers first: a signal that arrives once we say "serving" must stop us gracefully.
        let mut signals = Signals::install()?;
        let running = crate::proxy::start(rt_cfg, metrics).await?;
        for a in &running.listen_addrs {
            tracing::info!(listen = %a, "serving");
        }
        for a in &running.tls_addrs {
            tracing::info!(listen = %a, "serving TLS");
        }
        if let Some(a) = running.admin_addr {
            tracing::info!(admin = %a, "admin listening");
        }
        // SIGHUP re-reads the config; a bad file keeps the running table.
        while signals.wait().await == Stop::Reload {
            match running.control.reload("SIGHUP") {
                Ok(()) => tracing::info!("config reloaded"),
                Err(e) => tracing::error!(error = %e, "reload refused; the running config stays"),
            }
            if running.tls.is_some() {
                match running.reload_tls() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => tracing::error!(error = %e, "TLS reload refused; the certificate in use stays"),
                }
            }
        }
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[derive(PartialEq)]
enum Stop {
    Shutdown,
    Reload,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn wait(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Shutdown,
            _ = self.int.recv() => Stop::Shutdown,
            _ = self.hup.recv() => Stop::Reload,
        }
    }
}
