//! `hodei schedules`: cron schedules that submit jobs (`/api/v1/schedules`). Creating one
//! takes a tenant key, like submitting a job; rows are read from the JSON generically.

use clap::{Args, Subcommand, ValueEnum};
use hodei_core::schedule::{MissedFirePolicy, OverlapPolicy, ScheduleSpec};
use hodei_core::{CommandSpec, JobSpec, ResourceRequest};
use reqwest::Method;
use serde_json::Value;

use crate::client::api::{ApiClient, ClientError, KeyRole};
use crate::client::output::{self, Column};
use crate::client::{ClientOptions, Output};

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Create a schedule and print its id alone (the schedule itself with --output json).
    Create(CreateArgs),
    /// List the schedules with their next fire time.
    List,
    /// Show one schedule, its next fire times and its recent fires with their jobs.
    Get {
        /// The schedule id.
        id: String,
    },
    /// Pause a schedule: it fires nothing until resumed.
    Pause {
        /// The schedule id.
        id: String,
    },
    /// Resume a paused schedule from now (the paused fire times are not caught up).
    Resume {
        /// The schedule id.
        id: String,
    },
    /// Delete a schedule (the jobs it submitted stay).
    Delete {
        /// The schedule id.
        id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Overlap {
    Allow,
    Skip,
    CancelPrevious,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MissedFires {
    Skip,
    RunOnce,
    RunAll,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The schedule's name, unique within the tenant.
    name: String,
    /// When to fire: six fields with seconds (`*/10 * * * * *`) or five without (`0 8 * * Mon-Fri`).
    #[arg(long)]
    cron: String,
    /// The IANA time zone the expression is read in [default: UTC]
    #[arg(long, value_name = "ZONE")]
    time_zone: Option<String>,
    /// What a fire does while the previous fire's job is still queued or running [default: allow]
    #[arg(long, value_enum)]
    overlap: Option<Overlap>,
    /// What happens to fire times missed while no replica could fire them [default: skip]
    #[arg(long, value_enum)]
    missed_fires: Option<MissedFires>,
    /// The most missed fires `run-all` submits at once, 1-1000 [default: 100]
    #[arg(long, value_name = "N")]
    max_missed_fires: Option<u32>,
    /// The job's queue [default: default]
    #[arg(long)]
    queue: Option<String>,
    /// The job's priority, 1 (lowest) to 10 (highest) [default: 5]
    #[arg(long)]
    priority: Option<i64>,
    /// CPU in millicores, 1000 = one core [default: 1000]
    #[arg(long, value_name = "MILLICORES")]
    cpu: Option<i64>,
    /// Memory in MiB [default: 512]
    #[arg(long, value_name = "MIB")]
    memory: Option<i64>,
    /// Wall-clock limit in seconds [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<i64>,
    /// The program and its arguments, after `--`; run directly, without a shell.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    argv: Vec<String>,
}

const SCHEDULE_COLUMNS: [Column; 6] = [
    Column::new("ID", |schedule| output::text(&schedule["id"])),
    Column::new("NAME", |schedule| output::text(&schedule["name"])),
    Column::new("CRON", |schedule| output::text(&schedule["cron"])),
    Column::new("ZONE", |schedule| output::text(&schedule["time_zone"])),
    Column::new("STATE", |schedule| if schedule["paused"] == true { "paused".into() } else { "active".into() }),
    Column::new("NEXT FIRE", |schedule| output::time(&schedule["next_fire_at"])),
];

const FIRE_COLUMNS: [Column; 3] = [
    Column::new("FIRE AT", |fire| output::time(&fire["fire_at"])),
    Column::new("OUTCOME", |fire| output::text(&fire["outcome"])),
    Column::new("JOB", |fire| output::text(&fire["job_id"])),
];

pub async fn run(command: SchedulesCommand, options: &ClientOptions) -> Result<(), ClientError> {
    let api = ApiClient::connect(options, KeyRole::Tenant)?;
    match command {
        SchedulesCommand::Create(args) => {
            let created = api.send(api.request(Method::POST, &["schedules"]).json(&spec(args))).await?;
            match options.output {
                Output::Json => output::print_json(&created),
                Output::Table => output::print_line(&output::text(&created["id"])),
            }
        }
        SchedulesCommand::List => {
            let answer = api.get(&["schedules"], &[]).await?;
            match options.output {
                Output::Json => output::print_json(&answer),
                Output::Table => output::print_table(&SCHEDULE_COLUMNS, rows(&answer["schedules"])),
            }
        }
        SchedulesCommand::Get { id } => {
            let schedule = api.get(&["schedules", &id], &[]).await?;
            match options.output {
                Output::Json => output::print_json(&schedule),
                Output::Table => {
                    output::print_table(&SCHEDULE_COLUMNS, std::slice::from_ref(&schedule))?;
                    let next: Vec<String> = rows(&schedule["next_fires"]).iter().map(output::time).collect();
                    output::print_line(&format!("\nnext fires: {}\n", next.join(", ")))?;
                    output::print_table(&FIRE_COLUMNS, rows(&schedule["fires"]))
                }
            }
        }
        SchedulesCommand::Pause { id } => change(&api, &id, "pause", options.output).await,
        SchedulesCommand::Resume { id } => change(&api, &id, "resume", options.output).await,
        SchedulesCommand::Delete { id } => {
            api.send(api.request(Method::DELETE, &["schedules", &id])).await?;
            output::print_line(&format!("{id}: deleted"))
        }
    }
}

async fn change(api: &ApiClient, id: &str, action: &str, format: Output) -> Result<(), ClientError> {
    let schedule = api.send(api.request(Method::POST, &["schedules", id, action])).await?;
    match format {
        Output::Json => output::print_json(&schedule),
        Output::Table => {
            let state = if schedule["paused"] == true { "paused" } else { "active" };
            output::print_line(&format!("{id}: {state}"))
        }
    }
}

fn rows(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn spec(args: CreateArgs) -> ScheduleSpec {
    ScheduleSpec {
        name: args.name,
        cron: args.cron,
        time_zone: args.time_zone.unwrap_or_else(|| "UTC".to_owned()),
        job: JobSpec {
            queue: args.queue,
            priority: args.priority,
            command: CommandSpec {
                argv: args.argv,
                env: Default::default(),
                working_dir: None,
                timeout_seconds: args.timeout,
            },
            resources: ResourceRequest { cpu_millis: args.cpu, memory_mib: args.memory, labels: Default::default() },
            max_attempts: None,
            deadline: None,
            not_before: None,
            metadata: None,
        },
        overlap: match args.overlap.unwrap_or(Overlap::Allow) {
            Overlap::Allow => OverlapPolicy::Allow,
            Overlap::Skip => OverlapPolicy::Skip,
            Overlap::CancelPrevious => OverlapPolicy::CancelPrevious,
        },
        missed_fires: match args.missed_fires.unwrap_or(MissedFires::Skip) {
            MissedFires::Skip => MissedFirePolicy::Skip,
            MissedFires::RunOnce => MissedFirePolicy::RunOnce,
            MissedFires::RunAll => MissedFirePolicy::RunAll,
        },
        max_missed_fires: args.max_missed_fires.unwrap_or(100),
    }
}
