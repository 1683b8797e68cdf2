//! `mirrorctl check --config FILE`: validate without serving.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;
use crate::telemetry::Metrics;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Config file to validate.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
}

pub fn run(a: CheckArgs) -> anyhow::Result<ExitCode> {
    match config::load_file(&a.config, &Metrics::new()) {
        Ok(rt) => {
            let mirrors: usize = rt.table.routes.iter().map(|r| r.mirrors.len()).sum();
            println!(
                "{}: ok ({} services, {} routes, {} mirrors)",
                a.config.display(),
                rt.table.services.len(),
                rt.table.routes.len(),
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
