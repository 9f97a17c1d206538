//! `hodei-worker`: the agent that runs jobs on a worker machine. It talks to the Hodei API
//! over HTTP only and must never hold database credentials.
//!
//! This is the skeleton of the runtime: it knows where its API is and can check that the
//! API is reachable. Registration, heartbeats, long-poll assignment and execution build on
//! it.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "hodei-worker", version, about = "Hodei worker agent")]
struct Cli {
    /// Base URL of the Hodei API, e.g. http://127.0.0.1:8080
    #[arg(long, env = "HODEI_API_URL")]
    api_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the API is reachable and ready; exit 0 if so, 1 if not.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let api_url = cli.api_url.trim_end_matches('/').to_owned();
    if !(api_url.starts_with("http://") || api_url.starts_with("https://")) {
        eprintln!("hodei-worker: --api-url must start with http:// or https://, got {api_url:?}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hodei-worker: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check => runtime.block_on(check(&api_url)),
    }
}

async fn check(api_url: &str) -> ExitCode {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
        Ok(client) => client,
        Err(error) => {
            eprintln!("hodei-worker: {error}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(format!("{api_url}/readyz")).send().await {
        Ok(response) if response.status().is_success() => {
            println!("API at {api_url} is ready");
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!("hodei-worker: API at {api_url} is not ready: HTTP {}", response.status());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("hodei-worker: cannot reach the API at {api_url}: {error}");
            ExitCode::FAILURE
        }
    }
}
