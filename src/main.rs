//! The `mirrorctl` binary: parse arguments, run a subcommand, map its outcome to an exit code.

use clap::Parser;

// glibc malloc showed up at ~7 % of proxy CPU under load; mimalloc's per-thread free lists
// suit a proxy's many small, short-lived allocations (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = mirrorctl::cli::Cli::parse();
    mirrorctl::cli::run(cli)
}
