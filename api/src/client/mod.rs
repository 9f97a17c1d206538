//! The `hodei` command-line client: `jobs`, `queues`, `schedules`, `pools`, `workers` and
//! `dead-letters` subcommands that speak to a running API over HTTP, exactly as any other
//! client would. It owns argument parsing for those commands, finding the API URL and key,
//! rendering answers as tables or JSON, and the exit codes scripts rely on. It must never
//! read the server configuration or touch the database.

mod api;
mod dead_letters;
mod jobs;
mod output;
mod pools;
mod queues;
mod schedules;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use api::ClientError;
pub use dead_letters::DeadLettersCommand;
pub use jobs::JobsCommand;
pub use output::print_quietly;
pub use pools::PoolsCommand;
pub use queues::QueuesCommand;
pub use schedules::SchedulesCommand;
pub use workers::WorkersCommand;

/// The profile's file name, in `.hodei/` or in the dev data directory.
pub const PROFILE_FILE: &str = "profile.json";

/// What a local client needs to talk to the dev system; `hodei dev` writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub api_url: String,
    pub tenant: String,
    pub api_key: String,
    pub admin_key: String,
}

/// The exit codes of the client commands, as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  server or network error (unreachable, timeout, 5xx)
  2  usage error (bad arguments, no API URL or key)
  3  not found (404)
  4  rejected by the API (any other 4xx; its `detail` and `code` are printed)
  5  `jobs logs --follow` only: the job ended cancelled or dead-lettered";

/// The client commands, flattened into the top-level `hodei` command.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Jobs through the API: submit, get, list, cancel, logs.
    #[command(after_help = EXIT_CODES_HELP)]
    Jobs(ClientArgs<JobsCommand>),
    /// Queues through the API: list, status.
    #[command(after_help = EXIT_CODES_HELP)]
    Queues(ClientArgs<QueuesCommand>),
    /// Cron schedules of jobs through the API: create, list, get, pause, resume, delete.
    #[command(after_help = EXIT_CODES_HELP)]
    Schedules(ClientArgs<SchedulesCommand>),
    /// Worker pools through the API (admin): list, get.
    #[command(after_help = EXIT_CODES_HELP)]
    Pools(ClientArgs<PoolsCommand>),
    /// The worker registry through the API (admin): list.
    #[command(after_help = EXIT_CODES_HELP)]
    Workers(ClientArgs<WorkersCommand>),
    /// Dead-lettered jobs through the API: list, redrive.
    #[command(after_help = EXIT_CODES_HELP)]
    DeadLetters(ClientArgs<DeadLettersCommand>),
}

/// A resource's subcommand with the options every client command takes.
#[derive(Debug, Args)]
pub struct ClientArgs<C: Subcommand> {
    #[command(flatten)]
    pub options: ClientOptions,
    #[command(subcommand)]
    pub command: C,
}

/// Where the API is, which key to present, and how to print the answer.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Client options")]
pub struct ClientOptions {
    /// Base URL of the API, e.g. http://127.0.0.1:8080 [default: `api_url` of the profile]
    #[arg(long, global = true, env = "HODEI_API_URL", value_name = "URL")]
    pub api_url: Option<String>,
    /// API key [default: the profile's `api_key`; its `admin_key` for `pools` and `workers`]
    #[arg(long, global = true, env = "HODEI_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Profile file with `api_url`, `api_key` and `admin_key`, as `hodei dev` writes it
    /// [default: .hodei/profile.json, when it exists]
    #[arg(long, global = true, env = "HODEI_PROFILE", value_name = "PATH")]
    pub profile: Option<PathBuf>,
    /// PEM file of certificate authorities to trust for an https:// API, besides the
    /// system's (for a private CA).
    #[arg(long, global = true, env = "HODEI_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// `table` for people, `json` (the API's own JSON) for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Runs one client command on a small runtime of its own and maps the outcome to the
/// documented exit code.
pub fn main(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hodei: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hodei: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn run(command: ClientCommand) -> Result<(), ClientError> {
    match command {
        ClientCommand::Jobs(ClientArgs { options, command }) => jobs::run(command, &options).await,
        ClientCommand::Queues(ClientArgs { options, command }) => queues::run(command, &options).await,
        ClientCommand::Schedules(ClientArgs { options, command }) => schedules::run(command, &options).await,
        ClientCommand::Pools(ClientArgs { options, command }) => pools::run(command, &options).await,
        ClientCommand::Workers(ClientArgs { options, command }) => workers::run(command, &options).await,
        ClientCommand::DeadLetters(ClientArgs { options, command }) => dead_letters::run(command, &options).await,
    }
}
