//! `hodei-worker`, the worker agent; all of it is the `hodei_worker_runtime` library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    hodei_worker_runtime::cli::main(hodei_worker_runtime::cli::Cli::parse())
}
