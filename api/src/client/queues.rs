//! `hodei queues`: list the queues with their settings, and show one queue's status
//! (`/api/v1/queues`). Read-only: changing queues stays with the API and its admins.

use clap::Subcommand;
use serde_json::Value;

use crate::client::api::{present, ApiClient, ClientError, KeyRole};
use crate::client::output::{self, Column};
use crate::client::{ClientOptions, Output};

#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// List the queues and their settings.
    List,
    /// A queue's length, waits, SLA breaches, overflow and backlog per tenant.
    Status {
        /// The queue name.
        name: String,
        /// The window for rates and wait percentiles, in seconds [default: 900]
        #[arg(long, value_name = "SECONDS")]
        window: Option<i64>,
    },
}

const QUEUE_COLUMNS: [Column; 7] = [
    Column::new("NAME", |queue| output::text(&queue["name"])),
    Column::new("POLICY", |queue| output::text(&queue["policy"])),
    Column::new("TIER", |queue| output::text(&queue["tier"])),
    Column::new("MAX SIZE", |queue| output::text(&queue["max_size"])),
    Column::new("OVERFLOW", |queue| match queue["overflow_queue"].as_str() {
        Some(target) => format!("{} -> {target}", output::text(&queue["overflow"])),
        None => output::text(&queue["overflow"]),
    }),
    Column::new("SLA (S)", |queue| output::text(&queue["sla_max_wait_seconds"])),
    Column::new("BUILTIN", |queue| output::text(&queue["builtin"])),
];

const TENANT_COLUMNS: [Column; 2] = [
    Column::new("TENANT", |backlog| output::text(&backlog["tenant"])),
    Column::new("READY", |backlog| output::text(&backlog["ready"])),
];

pub async fn run(command: QueuesCommand, options: &ClientOptions) -> Result<(), ClientError> {
    let api = ApiClient::connect(options, KeyRole::Tenant)?;
    let answer = match &command {
        QueuesCommand::List => api.get(&["queues"], &[]).await?,
        QueuesCommand::Status { name, window } => {
            let query = present([("window_seconds", window.map(|seconds| seconds.to_string()))]);
            api.get(&["queues", name, "status"], &query).await?
        }
    };
    match (options.output, command) {
        (Output::Json, _) => output::print_json(&answer),
        (Output::Table, QueuesCommand::List) => {
            output::print_table(&QUEUE_COLUMNS, answer["queues"].as_array().map(Vec::as_slice).unwrap_or_default())
        }
        (Output::Table, QueuesCommand::Status { .. }) => print_status(&answer),
    }
}

fn print_status(status: &Value) -> Result<(), ClientError> {
    let number = |name: &str| output::field(&status[name]);
    let wait = &status["wait"];
    let milliseconds = |name: &str| wait[name].as_f64().map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms"));
    let percentiles = format!(
        "p50 {}, p95 {}, p99 {} ({} dispatched)",
        milliseconds("p50_ms"),
        milliseconds("p95_ms"),
        milliseconds("p99_ms"),
        output::text(&wait["dispatched"])
    );
    let rate = |name: &str| status[name].as_f64().map(|rate| format!("{:.1}%", rate * 100.0));
    output::print_fields(&[
        ("queue", number("queue")),
        ("policy", number("policy")),
        ("window", status["window_seconds"].as_i64().map(|seconds| format!("{seconds} s"))),
        ("ready", number("length")),
        ("scheduled", number("scheduled")),
        ("oldest wait", status["oldest_wait_seconds"].as_f64().map(|seconds| format!("{seconds:.1} s"))),
        ("wait", Some(percentiles)),
        ("sla", status["sla_max_wait_seconds"].as_i64().map(|seconds| format!("{seconds} s"))),
        ("sla breaches", number("sla_breaches")),
        ("breaching now", number("sla_breaching_now")),
        ("submitted", number("submitted")),
        ("rejected", number("rejected")),
        ("redirected away", number("redirected_away")),
        ("evicted", number("evicted")),
        ("cancelled while queued", number("cancelled_while_queued")),
        ("deadline expired", number("deadline_expired")),
        ("abandonment rate", rate("abandonment_rate")),
        ("overflow rate", rate("overflow_rate")),
    ])?;
    let tenants = status["tenants"].as_array().map(Vec::as_slice).unwrap_or_default();
    if tenants.is_empty() {
        return Ok(());
    }
    output::print_line("")?;
    output::print_table(&TENANT_COLUMNS, tenants)
}
