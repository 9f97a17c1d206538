//! `hodei workers`: the worker registry (`/api/v1/workers`, admin): each worker's state,
//! capacity in use, jobs run and last heartbeat.

use clap::Subcommand;

use crate::client::api::{present, ApiClient, ClientError, KeyRole};
use crate::client::output::{self, Column};
use crate::client::{ClientOptions, Output};

#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// List the registered workers.
    List {
        /// Only workers of this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Include workers that have left.
        #[arg(long)]
        include_gone: bool,
    },
}

const WORKER_COLUMNS: [Column; 9] = [
    Column::new("ID", |worker| output::text(&worker["id"])),
    Column::new("NAME", |worker| output::text(&worker["name"])),
    Column::new("POOL", |worker| output::text(&worker["pool"])),
    Column::new("STATE", |worker| output::text(&worker["state"])),
    Column::new("CPU", |worker| output::used_of(&worker["used_cpu_millis"], &worker["cpu_millis"])),
    Column::new("MEMORY MIB", |worker| output::used_of(&worker["used_memory_mib"], &worker["memory_mib"])),
    Column::new("SLOTS", |worker| output::used_of(&worker["used_slots"], &worker["slots"])),
    Column::new("JOBS RUN", |worker| output::text(&worker["jobs_run"])),
    Column::new("LAST HEARTBEAT", |worker| output::time(&worker["last_heartbeat_at"])),
];

pub async fn run(command: WorkersCommand, options: &ClientOptions) -> Result<(), ClientError> {
    let api = ApiClient::connect(options, KeyRole::Admin)?;
    let WorkersCommand::List { pool, include_gone } = command;
    let query = present([("pool", pool), ("include_gone", include_gone.then(|| "true".to_owned()))]);
    let answer = api.get(&["workers"], &query).await?;
    match options.output {
        Output::Json => output::print_json(&answer),
        Output::Table => {
            output::print_table(&WORKER_COLUMNS, answer["workers"].as_array().map(Vec::as_slice).unwrap_or_default())
        }
    }
}
