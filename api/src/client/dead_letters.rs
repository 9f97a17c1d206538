//! `hodei dead-letters`: jobs that gave up, with their reason, and putting one back in its
//! queue (`/api/v1/dead-letters`).

use clap::Subcommand;
use reqwest::Method;

use crate::client::api::{present, ApiClient, ClientError, KeyRole};
use crate::client::jobs::print_job_page;
use crate::client::output::{self, Column, MAX_TEXT_WIDTH};
use crate::client::{ClientOptions, Output};

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead-lettered jobs, newest first.
    List {
        /// Only jobs of this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only jobs dead-lettered for this reason (attempts_exhausted, fatal_error, evicted,
        /// deadline_expired, queue_deleted).
        #[arg(long)]
        reason: Option<String>,
        /// At most this many jobs, 1-500 [default: 50]
        #[arg(long, value_name = "N")]
        limit: Option<i64>,
        /// Continue after a previous page (its `next_cursor`).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Put a dead-lettered job back in its queue with a fresh set of attempts.
    Redrive {
        /// The job id.
        id: String,
    },
}

const DEAD_LETTER_COLUMNS: [Column; 6] = [
    Column::new("ID", |job| output::text(&job["id"])),
    Column::new("QUEUE", |job| output::text(&job["queue"])),
    Column::new("REASON", |job| output::text(&job["dead_letter_reason"])),
    Column::new("ATTEMPT", |job| output::used_of(&job["attempt"], &job["max_attempts"])),
    Column::new("FINISHED", |job| output::time(&job["finished_at"])),
    Column::new("LAST ERROR", |job| output::truncated(output::text(&job["last_error"]), MAX_TEXT_WIDTH)),
];

pub async fn run(command: DeadLettersCommand, options: &ClientOptions) -> Result<(), ClientError> {
    let api = ApiClient::connect(options, KeyRole::Tenant)?;
    match command {
        DeadLettersCommand::List { queue, reason, limit, cursor } => {
            let query = present([
                ("queue", queue),
                ("reason", reason),
                ("limit", limit.map(|limit| limit.to_string())),
                ("cursor", cursor),
            ]);
            let page = api.get(&["dead-letters"], &query).await?;
            print_job_page(&page, &DEAD_LETTER_COLUMNS, options.output)
        }
        DeadLettersCommand::Redrive { id } => {
            let job = api.send(api.request(Method::POST, &["dead-letters", &id, "redrive"])).await?;
            match options.output {
                Output::Json => output::print_json(&job),
                Output::Table => output::print_line(&format!("{id}: {}", output::text(&job["state"]))),
            }
        }
    }
}
