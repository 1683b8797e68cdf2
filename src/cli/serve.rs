//! `mirrorctl serve`: run the proxy until SIGTERM/SIGINT, then drain gracefully.

use std::process::ExitCode;
use std::sync::Arc;

use crate::config::flags::{self, ServeFlags};
use crate::telemetry::Metrics;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub flags: ServeFlags,
    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing();
    let metrics = Arc::new(Metrics::new());
    let rt_cfg = match flags::load(&a.flags, &metrics) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let runtime = super::runtime(a.workers)?;
    runtime.block_on(async move {
        let running = crate::proxy::start(rt_cfg, metrics).await?;
        for a in &running.listen_addrs {
            tracing::info!(listen = %a, "serving");
        }
        if let Some(a) = running.admin_addr {
            tracing::info!(admin = %a, "admin listening");
        }
        wait_for_signal().await?;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
