//! `hodei pools`: the worker pools (`/api/v1/pools`, admin). Rows are read from the JSON
//! generically, so a pool shape that grows a field still renders.

use clap::Subcommand;
use serde_json::Value;

use crate::client::api::{ApiClient, ClientError, KeyRole};
use crate::client::output::{self, Column};
use crate::client::{ClientOptions, Output};

#[derive(Debug, Subcommand)]
pub enum PoolsCommand {
    /// List the pools with their size and ready workers.
    List,
    /// Show one pool (as JSON, with its template and worker counts).
    Get {
        /// The pool id.
        id: String,
    },
}

const POOL_COLUMNS: [Column; 7] = [
    Column::new("ID", |pool| output::text(&pool["id"])),
    Column::new("KIND", |pool| output::text(&pool["kind"])),
    Column::new("PROVIDER", |pool| output::text(&pool["provider"])),
    // A static pool's size; a dynamic pool's bounds.
    Column::new("SIZE", |pool| match pool["kind"].as_str() {
        Some("dynamic") => format!("{}..{}", output::text(&pool["min_size"]), output::text(&pool["max_size"])),
        _ => output::text(&pool["size"]),
    }),
    Column::new("DESIRED", |pool| output::text(&pool["scaling_status"]["desired_size"])),
    Column::new("READY", |pool| output::text(&pool["workers"]["ready"])),
    Column::new("STRATEGY", |pool| output::text(&pool["strategy"])),
];

pub async fn run(command: PoolsCommand, options: &ClientOptions) -> Result<(), ClientError> {
    let api = ApiClient::connect(options, KeyRole::Admin)?;
    match command {
        PoolsCommand::List => {
            let answer = api.get(&["pools"], &[]).await?;
            match options.output {
                Output::Json => output::print_json(&answer),
                Output::Table => output::print_table(&POOL_COLUMNS, pools_in(&answer)),
            }
        }
        // A pool's template has no fixed shape: its JSON is the clearest table.
        PoolsCommand::Get { id } => output::print_json(&api.get(&["pools", &id], &[]).await?),
    }
}

/// The pools of a list answer: `{"pools": [...]}`, or a bare array.
fn pools_in(answer: &Value) -> &[Value] {
    answer["pools"].as_array().or_else(|| answer.as_array()).map(Vec::as_slice).unwrap_or_default()
}
