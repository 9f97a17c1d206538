//! `hodei jobs`: submit, get, list and cancel jobs, and read or follow their output, over
//! `/api/v1/jobs`. The request body is the API's own `JobSpec`, so the two cannot drift.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use hodei_core::{CommandSpec, JobSpec, JobState, ResourceRequest};
use reqwest::Method;
use serde_json::Value;

use crate::client::api::{present, ApiClient, ClientError, KeyRole};
use crate::client::output::{self, Column, MAX_TEXT_WIDTH};
use crate::client::{ClientOptions, Output};

/// How often `jobs logs --follow` asks for new output and the job's state.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(300);
/// Log chunks asked for per request (the API's maximum).
const LOG_PAGE: usize = 1000;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Submit a job and print its id alone (the job itself with --output json).
    #[command(override_usage = "hodei jobs submit [OPTIONS] -- <CMD>...")]
    Submit(SubmitArgs),
    /// Show a job; for a queued job, why it is still waiting.
    Get {
        /// The job id.
        id: String,
    },
    /// List jobs, newest first.
    List(ListArgs),
    /// Cancel a job, or the unfinished jobs a filter selects: a queued job at once, a job
    /// on a worker as soon as its worker hears.
    Cancel(BulkArgs),
    /// Run a finished job (succeeded, cancelled or dead-lettered) again, with fresh
    /// attempts; or the finished jobs a filter selects.
    Retry(BulkArgs),
    /// Print a job's output as it was written: its stdout to stdout, its stderr to stderr.
    #[command(after_help = "With --follow, the exit code tells how the job ended: 0 succeeded, \
        5 cancelled or dead-lettered (and 1-4 as for every command).")]
    Logs(LogsArgs),
    /// Follow job events as they happen (`GET /events/stream`), one line each; reconnects
    /// where it left off. With a job id, ends when the job has finished.
    Watch(WatchArgs),
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only this job's events; the command ends once the job has finished.
    id: Option<String>,
    /// Only events of jobs in this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only these kinds, comma-separated (`job.succeeded,job.dead_lettered`).
    #[arg(long)]
    kind: Option<String>,
    /// Start after this stream position (default: the beginning).
    #[arg(long, default_value_t = 0)]
    after: i64,
}

/// One job by id, or many by filter (`--all` when there is no filter, so that a bare
/// command never acts on every job).
#[derive(Debug, Args)]
pub struct BulkArgs {
    /// The job id; without it, the jobs the filters select.
    #[arg(required_unless_present_any = ["queue", "state", "all"])]
    id: Option<String>,
    /// Only jobs in this queue.
    #[arg(long, conflicts_with = "id")]
    queue: Option<String>,
    /// Only jobs in this state (cancel: scheduled, queued, assigned, running; retry:
    /// succeeded, cancelled, dead_lettered).
    #[arg(long, conflicts_with = "id")]
    state: Option<String>,
    /// Every job the command can act on, in no particular queue or state.
    #[arg(long, conflicts_with = "id")]
    all: bool,
    /// At most this many jobs, oldest first (1-1000) [default: 1000]
    #[arg(long, conflicts_with = "id")]
    limit: Option<i64>,
}

impl BulkArgs {
    /// The selection as the bulk endpoints take it.
    fn selection(&self) -> Value {
        let mut selection = serde_json::Map::new();
        for (field, value) in [
            ("queue", self.queue.clone().map(Value::from)),
            ("state", self.state.clone().map(Value::from)),
            ("limit", self.limit.map(Value::from)),
        ] {
            if let Some(value) = value {
                selection.insert(field.to_owned(), value);
            }
        }
        Value::Object(selection)
    }
}

/// `POST /jobs/cancel` or `/jobs/retry`: what it did, as ids (JSON) or a count and ids.
async fn bulk(api: &ApiClient, action: &str, done: &str, args: &BulkArgs, format: Output) -> Result<(), ClientError> {
    let result = api.send(api.request(Method::POST, &["jobs", action]).json(&args.selection())).await?;
    match format {
        Output::Json => output::print_json(&result)?,
        Output::Table => {
            let ids: Vec<String> = result["ids"].as_array().into_iter().flatten().map(output::text).collect();
            eprintln!("{} job(s) {done}", ids.len());
            for id in ids {
                output::print_line(&id)?;
            }
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Queue [default: default]
    #[arg(long)]
    queue: Option<String>,
    /// 1 (lowest) to 10 (highest) [default: 5]
    #[arg(long)]
    priority: Option<i64>,
    /// CPU in millicores, 1000 = one core [default: 1000]
    #[arg(long, value_name = "MILLICORES")]
    cpu: Option<i64>,
    /// Memory in MiB [default: 512]
    #[arg(long, value_name = "MIB")]
    memory: Option<i64>,
    /// A label the worker must carry; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// An environment variable for the command; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Wall-clock limit in seconds [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<i64>,
    /// Attempts before the job is dead-lettered [default: 3]
    #[arg(long, value_name = "N")]
    max_attempts: Option<i64>,
    /// Submitting again with the same key returns the original job instead of a new one.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// The program and its arguments, after `--`; run directly, without a shell.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    argv: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state (scheduled, queued, assigned, running, succeeded, cancelled, dead_lettered).
    #[arg(long, value_parser = job_state)]
    state: Option<JobState>,
    /// Only jobs in this queue.
    #[arg(long)]
    queue: Option<String>,
    /// At most this many jobs, 1-500 [default: 50]
    #[arg(long, value_name = "N")]
    limit: Option<i64>,
    /// Continue after a previous page (its `next_cursor`).
    #[arg(long)]
    cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job id.
    id: String,
    /// Keep reading until the job has finished and all its output is printed.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only the output of this attempt (`jobs get` lists them). Without it, every
    /// attempt's output in order, each later attempt announced on stderr.
    #[arg(long)]
    attempt: Option<i64>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

fn job_state(text: &str) -> Result<JobState, String> {
    JobState::parse(text).ok_or_else(|| {
        let known: Vec<&str> = JobState::ALL.iter().map(|state| state.as_str()).collect();
        format!("expected one of {}", known.join(", "))
    })
}

pub async fn run(command: JobsCommand, options: &ClientOptions) -> Result<(), ClientError> {
    let api = ApiClient::connect(options, KeyRole::Tenant)?;
    let format = options.output;
    match command {
        JobsCommand::Submit(args) => submit(&api, args, format).await,
        JobsCommand::Get { id } => {
            let job = api.get(&["jobs", &id], &[]).await?;
            match format {
                Output::Json => output::print_json(&job),
                Output::Table => print_job(&job),
            }
        }
        JobsCommand::List(args) => list(&api, args, format).await,
        JobsCommand::Cancel(args @ BulkArgs { id: None, .. }) => {
            bulk(&api, "cancel", "cancelled or asked to stop", &args, format).await
        }
        JobsCommand::Retry(args @ BulkArgs { id: None, .. }) => {
            bulk(&api, "retry", "queued again", &args, format).await
        }
        JobsCommand::Cancel(BulkArgs { id: Some(id), .. }) => {
            let job = api.send(api.request(Method::POST, &["jobs", &id, "cancel"])).await?;
            match format {
                Output::Json => output::print_json(&job),
                Output::Table if job["state"] == JobState::Cancelled.as_str() => {
                    output::print_line(&format!("{id}: cancelled"))
                }
                Output::Table => output::print_line(&format!(
                    "{id}: cancel requested; the job is {} and stops when its worker hears",
                    output::text(&job["state"])
                )),
            }
        }
        JobsCommand::Retry(BulkArgs { id: Some(id), .. }) => {
            let job = api.send(api.request(Method::POST, &["jobs", &id, "retry"])).await?;
            match format {
                Output::Json => output::print_json(&job),
                Output::Table => output::print_line(&format!("{id}: queued again")),
            }
        }
        JobsCommand::Logs(args) => logs(&api, &args, format).await,
        JobsCommand::Watch(args) => watch(&api, &args, format).await,
    }
}

/// Reads the Server-Sent Events stream, printing each event, and reconnects after the last
/// one it saw when the connection drops (the server keeps no state for a follower).
async fn watch(api: &ApiClient, args: &WatchArgs, format: Output) -> Result<(), ClientError> {
    let mut after = args.after;
    let query: Vec<(&str, String)> = crate::client::api::present([
        ("job_id", args.id.clone()),
        ("queue", args.queue.clone()),
        ("kind", args.kind.clone()),
    ]);
    loop {
        let request = api
            .request(Method::GET, &["events", "stream"])
            .query(&query)
            .header("Last-Event-ID", after.to_string())
            .header("Accept", "text/event-stream")
            // A stream has no end: only the connection's own timeouts apply.
            .timeout(Duration::from_secs(365 * 24 * 3600));
        let mut response = match api.open(request).await {
            Ok(response) => response,
            Err(error @ ClientError::Unreachable { .. }) => {
                eprintln!("hodei: {error}; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        let mut buffer = String::new();
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) | Err(_) => break,
            };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let Some((id, data)) = parse_frame(&frame) else { continue };
                after = id;
                let event: Value = serde_json::from_str(&data).unwrap_or(Value::String(data));
                match format {
                    Output::Json => output::print_line(&event.to_string())?,
                    Output::Table => output::print_line(&format!(
                        "{}  {:<22} {}  {} (attempt {})",
                        output::text(&event["at"]),
                        output::text(&event["kind"]),
                        output::text(&event["job_id"]),
                        output::text(&event["state"]),
                        output::text(&event["attempt"]),
                    ))?,
                }
                let finished = ["succeeded", "cancelled", "dead_lettered"].iter().any(|state| event["state"] == *state);
                if args.id.is_some() && finished {
                    return Ok(());
                }
            }
        }
        eprintln!("hodei: the event stream closed; reconnecting after {after}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One Server-Sent Events frame: its id and data; `None` for comments (heartbeats).
fn parse_frame(frame: &str) -> Option<(i64, String)> {
    let mut id = None;
    let mut data = Vec::new();
    for line in frame.lines() {
        if let Some(value) = line.strip_prefix("id:") {
            id = value.trim().parse().ok();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
        }
    }
    Some((id?, data.join("\n")))
}

async fn submit(api: &ApiClient, args: SubmitArgs, format: Output) -> Result<(), ClientError> {
    let spec = JobSpec {
        queue: args.queue,
        priority: args.priority,
        command: CommandSpec {
            argv: args.argv,
            env: args.env.into_iter().collect::<BTreeMap<_, _>>(),
            working_dir: None,
            timeout_seconds: args.timeout,
        },
        resources: ResourceRequest {
            cpu_millis: args.cpu,
            memory_mib: args.memory,
            labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        },
        max_attempts: args.max_attempts,
        deadline: None,
        not_before: None,
        metadata: None,
    };
    let mut request = api.request(Method::POST, &["jobs"]).json(&spec);
    if let Some(key) = &args.idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let job = api.send(request).await?;
    match format {
        Output::Json => output::print_json(&job),
        Output::Table => {
            // The id alone on stdout (for `ID=$(hodei jobs submit ...)`), warnings on stderr.
            for warning in job["warnings"].as_array().into_iter().flatten().filter_map(|w| w.as_str()) {
                eprintln!("warning: {warning}");
            }
            output::print_line(&output::text(&job["id"]))
        }
    }
}

fn print_job(job: &Value) -> Result<(), ClientError> {
    let resources = &job["resources"];
    let labels = resources["labels"].as_object().filter(|labels| !labels.is_empty()).map(|labels| {
        labels.iter().map(|(key, value)| format!("{key}={}", output::text(value))).collect::<Vec<_>>().join(",")
    });
    let pending = &job["pending"];
    let pending = (!pending.is_null()).then(|| {
        format!(
            "{} ({} ahead): {}",
            output::text(&pending["code"]),
            output::text(&pending["position"]),
            output::text(&pending["message"])
        )
    });
    let time = |name: &str| (!job[name].is_null()).then(|| output::time(&job[name]));
    output::print_fields(&[
        ("id", output::field(&job["id"])),
        ("tenant", output::field(&job["tenant"])),
        ("queue", output::field(&job["queue"])),
        ("state", output::field(&job["state"])),
        ("waiting", pending),
        ("priority", output::field(&job["priority"])),
        ("command", Some(output::command_line(&job["command"]["argv"]))),
        ("resources", Some(format!("{} millicores, {} MiB", resources["cpu_millis"], resources["memory_mib"]))),
        ("labels", labels),
        ("attempt", Some(output::used_of(&job["run_attempt"], &job["max_attempts"]))),
        ("exit code", output::field(&job["exit_code"])),
        ("last error", output::field(&job["last_error"])),
        ("dead-letter reason", output::field(&job["dead_letter_reason"])),
        ("worker", output::field(&job["worker_id"])),
        ("created", time("created_at")),
        ("started", time("started_at")),
        ("finished", time("finished_at")),
        ("cancel requested", time("cancel_requested_at")),
    ])?;
    // One line per attempt, oldest first.
    for attempt in job["attempts"].as_array().into_iter().flatten() {
        let at = |name: &str| if attempt[name].is_null() { "-".to_owned() } else { output::time(&attempt[name]) };
        let mut line = format!(
            "attempt {}: {} on worker {}, started {}, ended {}",
            output::text(&attempt["attempt"]),
            output::text(&attempt["outcome"]),
            output::text(&attempt["worker_id"]),
            at("started_at"),
            at("ended_at"),
        );
        if let Some(error) = attempt["error"].as_str() {
            line.push_str(&format!(": {error}"));
        }
        output::print_line(&line)?;
    }
    Ok(())
}

/// The columns of a job list, shared with `dead-letters list`.
pub(crate) const JOB_COLUMNS: [Column; 7] = [
    Column::new("ID", |job| output::text(&job["id"])),
    Column::new("STATE", |job| output::text(&job["state"])),
    Column::new("QUEUE", |job| output::text(&job["queue"])),
    Column::new("PRIORITY", |job| output::text(&job["priority"])),
    Column::new("ATTEMPT", |job| output::used_of(&job["run_attempt"], &job["max_attempts"])),
    Column::new("CREATED", |job| output::time(&job["created_at"])),
    Column::new("COMMAND", |job| output::truncated(output::command_line(&job["command"]["argv"]), MAX_TEXT_WIDTH)),
];

async fn list(api: &ApiClient, args: ListArgs, format: Output) -> Result<(), ClientError> {
    let query = present([
        ("state", args.state.map(|state| state.as_str().to_owned())),
        ("queue", args.queue),
        ("limit", args.limit.map(|limit| limit.to_string())),
        ("cursor", args.cursor),
    ]);
    let page = api.get(&["jobs"], &query).await?;
    print_job_page(&page, &JOB_COLUMNS, format)
}

/// Prints a `{"jobs": [...], "next_cursor": ...}` page; in a table, says how to go on.
pub(crate) fn print_job_page(page: &Value, columns: &[Column], format: Output) -> Result<(), ClientError> {
    if format == Output::Json {
        return output::print_json(page);
    }
    let jobs = page["jobs"].as_array().map(Vec::as_slice).unwrap_or_default();
    output::print_table(columns, jobs)?;
    if let Some(cursor) = page["next_cursor"].as_str() {
        eprintln!("(more: add --cursor {cursor})");
    }
    Ok(())
}

/// Prints the job's output from the start. Following, it polls until the job is in a final
/// state and the output written before that is all printed: the API accepts output only
/// from the worker holding a live attempt, so nothing can follow a final state.
async fn logs(api: &ApiClient, args: &LogsArgs, format: Output) -> Result<(), ClientError> {
    let mut after = 0;
    let mut shown = Shown { attempt: None, only: args.attempt, waiting: None };
    loop {
        // The state is read before the output, so a final state means the output is complete.
        let state = if args.follow {
            let job = api.get(&["jobs", &args.id], &[]).await?;
            // Say once why a job waits when it may wait forever.
            let pending = job["pending"]["code"].as_str().map(str::to_owned);
            let may_wait_forever =
                matches!(pending.as_deref(), Some("no_workers" | "no_worker_with_labels" | "no_worker_large_enough"));
            if may_wait_forever && shown.waiting != pending {
                eprintln!("waiting: {}", output::text(&job["pending"]["message"]));
            }
            shown.waiting = pending;
            Some(job["state"].as_str().and_then(JobState::parse).ok_or_else(|| ClientError::Server {
                url: format!("job {}", args.id),
                reason: format!("unexpected answer: no known state in {job}"),
            })?)
        } else {
            None
        };
        after = print_new_output(api, &args.id, after, format, &mut shown).await?;
        match state {
            None | Some(JobState::Succeeded) => return Ok(()),
            Some(state) if state.is_terminal() => {
                return Err(ClientError::JobUnsuccessful { id: args.id.clone(), state: state.to_string() })
            }
            Some(_) => tokio::time::sleep(FOLLOW_INTERVAL).await,
        }
    }
}

/// What `jobs logs` has shown so far.
#[derive(Debug)]
struct Shown {
    /// The attempt of the last chunk written.
    attempt: Option<i64>,
    /// `--attempt`: only that one.
    only: Option<i64>,
    /// The pending reason last announced.
    waiting: Option<String>,
}

/// Prints every chunk after `after` and returns the position of the last one printed.
async fn print_new_output(
    api: &ApiClient,
    id: &str,
    mut after: i64,
    format: Output,
    shown: &mut Shown,
) -> Result<i64, ClientError> {
    loop {
        let query = [("after", after.to_string()), ("limit", LOG_PAGE.to_string())];
        let page = api.get(&["jobs", id, "logs"], &query).await?;
        let chunks = page["chunks"].as_array().map(Vec::as_slice).unwrap_or_default();
        let chunks: Vec<&Value> = chunks
            .iter()
            .filter(|chunk| shown.only.is_none_or(|only| chunk["attempt"].as_i64() == Some(only)))
            .collect();
        write_chunks(id, &chunks, format, shown)?;
        after = page["next_after"].as_i64().unwrap_or(after);
        if chunks.len() < LOG_PAGE {
            return Ok(after);
        }
    }
}

/// Writes chunks as the job wrote them: their exact bytes (`data_base64`), or their text
/// from a server that has no bytes to give.
fn write_chunks(id: &str, chunks: &[&Value], format: Output, shown: &mut Shown) -> Result<(), ClientError> {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    for chunk in chunks {
        match format {
            Output::Json => writeln!(stdout, "{chunk}")?,
            Output::Table => {
                let attempt = chunk["attempt"].as_i64();
                // Attempts after the first are announced on stderr, so stdout stays the
                // job's own bytes.
                if shown.attempt.is_some() && attempt != shown.attempt {
                    stdout.flush()?;
                    writeln!(stderr, "--- attempt {} ---", output::text(&chunk["attempt"]))?;
                }
                shown.attempt = attempt;
                let bytes = match chunk["data_base64"].as_str() {
                    Some(encoded) => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
                        .map_err(|_| ClientError::Server {
                            url: format!("output of job {id}"),
                            reason: format!("unexpected answer: chunk {} is not valid base64", chunk["seq"]),
                        })?,
                    None => chunk["data"].as_str().unwrap_or_default().as_bytes().to_vec(),
                };
                if chunk["stream"] == "stderr" {
                    stderr.write_all(&bytes)?;
                } else {
                    stdout.write_all(&bytes)?;
                }
            }
        }
    }
    stdout.flush()?;
    stderr.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_pairs_split_at_the_first_equals_sign() {
        assert_eq!(key_value("gpu=a100"), Ok(("gpu".to_owned(), "a100".to_owned())));
        assert_eq!(key_value("OPTS=a=b"), Ok(("OPTS".to_owned(), "a=b".to_owned())));
        assert_eq!(key_value("EMPTY="), Ok(("EMPTY".to_owned(), String::new())));
        assert!(key_value("novalue").is_err());
        assert!(key_value("=value").is_err());
    }
}
