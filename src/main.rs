//! The `mirrorctl` binary: parse arguments, run a subcommand, map its outcome to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = mirrorctl::cli::Cli::parse();
    mirrorctl::cli::run(cli)
}
