//! `hodei-bench`: benchmarks of a Hodei system, kept out of the product binary. Each
//! command measures one thing and prints its numbers; `BENCHMARKS.md` says which command
//! produced which result. Use a scratch database (`HODEI_DATABASE_URL`): benchmarks leave
//! their jobs there.

mod cost;
mod e2e;
mod engine;
mod footprint;
mod hold;
mod pools;
mod quotas;
mod reads;
mod scrape;
mod sustain;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hodei_api::config::Config;

#[derive(Debug, Parser)]
#[command(name = "hodei-bench", version, about = "Load generators that measure a Hodei system")]
struct Cli {
    /// Configuration file (YAML). HODEI_* environment variables override it.
    #[arg(long, global = true, env = "HODEI_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: e2e::BenchCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_process_environment(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("hodei-bench: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hodei-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(e2e::run(cli.command, &config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hodei-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
