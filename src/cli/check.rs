//! `mirrorctl check --config FILE [--config FILE …]`: validate without serving.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::flags::{self, ServeFlags};
use crate::telemetry::Metrics;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Config file(s) to validate: one native file, or Istio files.
    #[arg(long, short = 'c', value_name = "FILE", required = true)]
    pub config: Vec<PathBuf>,
}

pub fn run(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let f = ServeFlags {
        config: a.config.clone(),
        ..ServeFlags::default()
    };
    let names: Vec<String> = a.config.iter().map(|p| p.display().to_string()).collect();
    match flags::load_with_warnings(&f, &Metrics::new()) {
        Ok((rt, warnings)) => {
            for w in &warnings {
                eprintln!("{w}");
            }
            let routes: Vec<_> = rt.table.routes().collect();
            let mirrors: usize = routes.iter().map(|r| r.mirrors.len()).sum();
            println!(
                "{}: ok ({} services, {} routes, {} mirrors)",
                names.join(", "),
                rt.table.services.len(),
                routes.len(),
                mirrors
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}
