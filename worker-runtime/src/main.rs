//! `hodei-worker`: the agent that runs on a worker machine. It talks to the Hodei API over
//! HTTP only and never holds database credentials.
//!
//! `run` registers with the registration token (receiving a worker id and a worker-scoped
//! token), heartbeats at the interval the API asks for, waits for assignments by long
//! poll, runs each job's argv as a child process in its own process group (with its env,
//! working directory and timeout) and reports its start, output and result; a timeout or a
//! cancel sends SIGTERM to the job's process group, then SIGKILL after a grace period. When
//! a job's main process exits, what it left running gets a moment to finish writing its
//! output (never past the job's timeout), then the whole group is killed. On SIGTERM,
//! Ctrl-C or a drain instruction in a heartbeat reply it stops taking work, lets running
//! jobs finish, deregisters and exits 0. An optional health command runs before each
//! heartbeat. If the API is unreachable it keeps retrying with backoff; a report the API
//! refuses as stale (409) is dropped, and so is one it refuses for good (another 4xx but
//! 408 and 429), output then being replaced by a note saying so.
//!
//! Jobs never outlive their agent: a keeper process (`keeper`) kills them when the agent
//! dies, however it dies. And they never outlive its lease (`lease`): when the API refuses
//! the worker's token (401: the control plane counts it gone and has given its jobs away)
//! or no heartbeat has got through for a lease, the agent kills its jobs at once, drops
//! their results and exits 1; a frozen agent's keeper does the killing for it.

mod keeper;
mod lease;
mod output;

use std::collections::BTreeMap;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use rustix::process::Signal;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::keeper::Supervisor;
use crate::lease::Lease;
use crate::output::Capture;

#[derive(Debug, Parser)]
#[command(name = "hodei-worker", version, about = "Hodei worker agent")]
struct Cli {
    /// Base URL of the Hodei API, e.g. http://127.0.0.1:8080; several replicas may be given,
    /// separated by commas: the worker moves to the next when one stops answering.
    #[arg(long, env = "HODEI_API_URL")]
    api_url: Option<String>,
    /// PEM file of certificate authorities to trust for an https:// API, besides the
    /// system's (for a private CA).
    #[arg(long, env = "HODEI_CA_FILE", value_name = "PATH")]
    ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the API is reachable and ready; exit 0 if so, 1 if not.
    Check,
    /// Register, heartbeat, and deregister on SIGTERM.
    Run(Box<RunArgs>),
    /// The agent's keeper (started by `run` itself): kills the agent's jobs when the agent
    /// is gone or its lease ran out.
    #[command(hide = true)]
    Keeper {
        #[arg(long)]
        session: String,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The pool's registration token.
    #[arg(long, env = "HODEI_WORKER_REGISTRATION_TOKEN", hide_env_values = true)]
    registration_token: String,
    /// This worker's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "default")]
    pool: String,
    /// CPU in millicores (default: detected).
    #[arg(long)]
    cpu_millis: Option<i64>,
    /// Memory in MiB (default: detected).
    #[arg(long)]
    memory_mib: Option<i64>,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    slots: i64,
    /// A label, `key=value`; repeat for more.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The cloud instance id, if any (a pool's provider sets it to the member id).
    #[arg(long)]
    instance_id: Option<String>,
    /// A health check run before each heartbeat, as a JSON array (`["pg_isready"]`), with
    /// `HODEI_WORKER_ID` and `HODEI_INSTANCE_ID` in its environment; a non-zero exit is
    /// reported as unhealthy.
    #[arg(long, value_parser = parse_argv)]
    health_command: Option<Argv>,
    /// After a timeout or a cancel, how long a job has between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 10)]
    kill_grace_seconds: u64,
    /// How long the control plane holds this worker's jobs without a heartbeat (its
    /// `worker_lease_seconds`), unless the API says: after that long without a heartbeat
    /// getting through, the jobs may be running elsewhere, so the worker kills them and exits.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_seconds: u64,
    /// Drain and exit when the process that started this worker ends (the `local`
    /// provider's workers live and die with their control plane); running jobs get
    /// `--orphan-grace-seconds` to finish.
    #[arg(long)]
    exit_with_parent: bool,
    #[arg(long, default_value_t = 30)]
    orphan_grace_seconds: u64,
    /// When draining (SIGTERM, Ctrl-C, or the control plane's instruction), how long
    /// running jobs get to finish; then they are stopped (SIGTERM, SIGKILL after the kill
    /// grace) and reported interrupted, which the control plane retries. Without it,
    /// running jobs get as long as they take.
    #[arg(long)]
    drain_timeout_seconds: Option<u64>,
}

/// A command line given as one JSON array.
#[derive(Debug, Clone)]
struct Argv(Vec<String>);

fn parse_argv(text: &str) -> Result<Argv, String> {
    let argv: Vec<String> = serde_json::from_str(text).map_err(|e| format!("expected a JSON array of strings: {e}"))?;
    if argv.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(Argv(argv))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

/// The API URLs given, checked.
fn api_urls(given: Option<&str>) -> Result<Vec<String>, String> {
    let given = given.ok_or("--api-url (or HODEI_API_URL) is required")?;
    let api_urls: Vec<String> = given.split(',').map(|url| url.trim().trim_end_matches('/').to_owned()).collect();
    if let Some(bad) = api_urls.iter().find(|url| !(url.starts_with("http://") || url.starts_with("https://"))) {
        return Err(format!("--api-url must start with http:// or https://, got {bad:?}"));
    }
    Ok(api_urls)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let api_urls = match (&cli.command, api_urls(cli.api_url.as_deref())) {
        (Command::Keeper { .. }, _) => Vec::new(),
        (_, Ok(api_urls)) => api_urls,
        (_, Err(message)) => {
            eprintln!("hodei-worker: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hodei-worker: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Keeper { session } => {
            let code = runtime.block_on(keeper::run(&session));
            runtime.shutdown_background();
            return code;
        }
        command => match client(cli.ca_file.as_deref()) {
            Err(error) => Err(error),
            Ok(client) => match command {
                Command::Check => runtime.block_on(check(&client, &api_urls[0])),
                Command::Run(args) => runtime.block_on(run(client, api_urls, *args)),
                Command::Keeper { .. } => unreachable!("handled above"),
            },
        },
    };
    // Nothing still in flight (a name lookup on a blocking thread) may hold up the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hodei-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The HTTP client: rustls with the system's certificate store (read from disk, offline),
/// plus the authorities of `ca_file`.
fn client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
        let authorities = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-file {}: not PEM certificates", path.display()))?;
        if authorities.is_empty() {
            bail!("--ca-file {}: holds no certificate", path.display());
        }
        for authority in authorities {
            builder = builder.add_root_certificate(authority);
        }
    }
    Ok(builder.build()?)
}

/// The innermost cause of a failed request, with a hint when it is an untrusted certificate.
fn describe_request_error(error: &reqwest::Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let reason = innermost.to_string();
    if reason.contains("certificate") {
        format!("{reason} (the API's TLS certificate is not trusted here: pass --ca-file with its CA)")
    } else {
        reason
    }
}

async fn check(client: &reqwest::Client, api_url: &str) -> anyhow::Result<()> {
    let response =
        client.get(format!("{api_url}/readyz")).send().await.map_err(|error| {
            anyhow::anyhow!("cannot reach the API at {api_url}: {}", describe_request_error(&error))
        })?;
    if !response.status().is_success() {
        bail!("API at {api_url} is not ready: HTTP {}", response.status());
    }
    println!("API at {api_url} is ready");
    Ok(())
}

/// CPU millicores and memory MiB of this machine.
fn detect_resources() -> (i64, i64) {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|number| number.parse::<i64>().ok())
        })
        .unwrap_or(1024 * 1024);
    (cpus * 1000, memory_kib / 1024)
}

#[derive(Debug, Deserialize)]
struct Registered {
    worker_id: String,
    token: String,
    heartbeat_seconds: u64,
    /// The control plane's lease, if the API says.
    #[serde(default)]
    lease_seconds: Option<u64>,
}

async fn run(client: reqwest::Client, api_urls: Vec<String>, args: RunArgs) -> anyhow::Result<()> {
    // First, before any job can start: the keeper that kills this agent's jobs if it dies.
    let (supervisor, mut keeper) = Supervisor::start().context("starting the keeper process")?;
    let (detected_cpu, detected_memory) = detect_resources();
    let name = args.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "worker".into())
    });
    let labels: BTreeMap<String, String> = args.labels.iter().cloned().collect();
    let body = json!({
        "name": name,
        "pool": args.pool,
        "cpu_millis": args.cpu_millis.unwrap_or(detected_cpu),
        "memory_mib": args.memory_mib.unwrap_or(detected_memory),
        "slots": args.slots,
        "labels": labels,
        "instance_id": args.instance_id,
    });

    // Stop taking work on SIGTERM / Ctrl-C, when the control plane asks for a drain, or
    // (with --exit-with-parent) when the parent process is gone.
    let drain = Arc::new(tokio::sync::Notify::new());
    let orphaned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if args.exit_with_parent {
        tokio::spawn(watch_parent(drain.clone(), orphaned.clone()));
    }
    let mut stop = Box::pin({
        let drain = drain.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = drain.notified() => {}
            }
        }
    });
    // Register, retrying with backoff while the API is unreachable.
    let mut delay = Duration::from_millis(200);
    let mut url_index = 0;
    let (registered, registered_at): (Registered, Instant) = loop {
        let api_url = &api_urls[url_index % api_urls.len()];
        url_index += 1;
        let sent_at = Instant::now();
        let attempt = client
            .post(format!("{api_url}/api/v1/workers/register"))
            .bearer_auth(&args.registration_token)
            .json(&body)
            .send()
            .await;
        match attempt {
            Ok(response) if response.status().is_success() => break (response.json().await?, sent_at),
            Ok(response) if response.status().is_client_error() => {
                bail!("registration refused: HTTP {}: {}", response.status(), response.text().await.unwrap_or_default())
            }
            Ok(response) => eprintln!("hodei-worker: registration failed: HTTP {}; retrying", response.status()),
            Err(error) => {
                let reason = describe_request_error(&error);
                // An untrusted certificate will not become trusted by retrying.
                if reason.contains("certificate") {
                    bail!("cannot register with the API at {api_url}: {reason}");
                }
                eprintln!("hodei-worker: cannot reach the API ({reason}); retrying");
            }
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    };
    println!("registered as worker {}", registered.worker_id);
    let terms = lease::Terms {
        lease: Duration::from_secs(registered.lease_seconds.unwrap_or(args.lease_seconds).max(1)),
        heartbeat: Duration::from_secs(registered.heartbeat_seconds.max(1)),
    };
    let (report_sender, report_receiver) = tokio::sync::mpsc::unbounded_channel();
    let worker = Arc::new(WorkerSession {
        client: client.clone(),
        api_urls: api_urls.clone(),
        current: std::sync::atomic::AtomicUsize::new((url_index - 1) % api_urls.len()),
        id: registered.worker_id.clone(),
        token: registered.token.clone(),
        cancels: std::sync::Mutex::new(BTreeMap::new()),
        interrupted: std::sync::atomic::AtomicBool::new(false),
        kill_grace: Duration::from_secs(args.kill_grace_seconds),
        reports: report_sender,
        lease: Lease::new(terms, registered_at),
        supervisor,
    });
    // The registration counts as the first heartbeat.
    let remaining = worker.lease.fence_at().saturating_duration_since(Instant::now());
    worker.supervisor.renew(remaining).await.context("telling the keeper the lease")?;
    tokio::spawn({
        let worker = worker.clone();
        async move {
            let status = keeper.wait().await;
            let why = match status.as_ref().ok().and_then(std::process::ExitStatus::code) {
                Some(code) if code == i32::from(keeper::LEASE_RAN_OUT) => {
                    "the keeper killed the jobs: the lease ran out unrenewed".to_owned()
                }
                _ => format!("the keeper process ended ({status:?}): jobs would no longer die with this agent"),
            };
            worker.lease.lose(why);
        }
    });
    tokio::spawn({
        let worker = worker.clone();
        async move { lease::watch(&worker.lease).await }
    });
    let reporter = tokio::spawn(report_loop(worker.clone(), report_receiver));

    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heartbeats = tokio::spawn(heartbeat_loop(
        worker.clone(),
        registered.heartbeat_seconds,
        stopping.clone(),
        args.health_command.clone().map(|Argv(argv)| HealthCheck {
            argv,
            env: [
                ("HODEI_WORKER_ID", Some(registered.worker_id.clone())),
                ("HODEI_INSTANCE_ID", args.instance_id.clone()),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect(),
        }),
        drain,
    ));
    let lost = worker.lease.lost();
    tokio::pin!(lost);
    let mut running = tokio::task::JoinSet::new();
    loop {
        let poll = worker.poll();
        tokio::select! {
            _ = &mut stop => break,
            reason = &mut lost => return fence(&worker, &reason),
            assignments = poll => match assignments {
                Ok(assignments) => {
                    for assignment in assignments {
                        running.spawn(run_assignment(worker.clone(), assignment));
                    }
                }
                Err(error) => {
                    eprintln!("hodei-worker: polling for work failed: {error:#}");
                    tokio::select! {
                        _ = &mut stop => break,
                        reason = &mut lost => return fence(&worker, &reason),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
        }
        while running.try_join_next().is_some() {}
    }
    // Draining: take no more work, let running jobs finish and report. It ends: a job ends
    // by its timeout, and a result the API cannot take ends with the lease.
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    let finished = async { while running.join_next().await.is_some() {} };
    tokio::pin!(finished);
    let mut orphaned_since: Option<tokio::time::Instant> = None;
    let drain_deadline = args.drain_timeout_seconds.map(|seconds| Instant::now() + Duration::from_secs(seconds));
    loop {
        tokio::select! {
            _ = &mut finished => break,
            reason = &mut lost => return fence(&worker, &reason),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if drain_deadline.is_some_and(|deadline| Instant::now() >= deadline)
            && !worker.interrupted.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let running: Vec<Arc<tokio::sync::Notify>> =
                worker.cancels.lock().map(|cancels| cancels.values().cloned().collect()).unwrap_or_default();
            eprintln!(
                "hodei-worker: the drain ran out of time; interrupting {} running job(s), which will be retried",
                running.len()
            );
            for job in running {
                job.notify_one();
            }
        }
        if orphaned.load(std::sync::atomic::Ordering::Relaxed) {
            let since = *orphaned_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > Duration::from_secs(args.orphan_grace_seconds) {
                let killed = worker.supervisor.kill_all();
                eprintln!(
                    "hodei-worker: the parent process is gone; killed {killed} unfinished job(s), left to their leases"
                );
                break;
            }
        }
    }
    heartbeats.abort();
    reporter.abort();
    let deregistered = async {
        worker
            .post("deregister", &json!({}))
            .await
            .context("deregistering")?
            .error_for_status()
            .context("deregistering")
    };
    match deregistered.await {
        Ok(_) => println!("deregistered"),
        // Without its parent the worker exits anyway; the lease reaper marks it gone.
        Err(error) if orphaned.load(std::sync::atomic::Ordering::Relaxed) => eprintln!("hodei-worker: {error:#}"),
        Err(error) => return Err(error),
    }
    Ok(())
}

/// The lease is lost: the jobs may already run elsewhere. Kills them all at once and
/// gives up their results (the caller exits, dropping every task still holding one).
fn fence(worker: &WorkerSession, reason: &str) -> anyhow::Result<()> {
    let killed = worker.supervisor.kill_all();
    bail!("lost the lease: {reason}; killed {killed} running job(s) and dropped their results")
}

/// This process's parent, from `/proc/self/stat`.
fn parent_pid() -> Option<u32> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Asks for a drain once the parent process has gone (this process was re-parented).
async fn watch_parent(drain: Arc<tokio::sync::Notify>, orphaned: Arc<std::sync::atomic::AtomicBool>) {
    let parent = parent_pid();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if parent_pid() != parent {
            eprintln!("hodei-worker: the parent process is gone; draining");
            orphaned.store(true, std::sync::atomic::Ordering::Relaxed);
            drain.notify_one();
            return;
        }
    }
}

/// A registered worker's connection to the API.
#[derive(Debug)]
struct WorkerSession {
    client: reqwest::Client,
    api_urls: Vec<String>,
    /// The replica in use; moves on when it stops answering.
    current: std::sync::atomic::AtomicUsize,
    id: String,
    token: String,
    /// Running jobs, by id: notified to stop them when the API says they were cancelled.
    cancels: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Notify>>>,
    /// Set when a drain ran out of time: jobs stopped now were interrupted, not cancelled.
    interrupted: std::sync::atomic::AtomicBool,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    kill_grace: Duration,
    /// Starts and results waiting to go to the API in the next batch.
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
    lease: Lease,
    /// The keeper, told of every job's process group.
    supervisor: Supervisor,
}

/// A start or a result on its way to the API. Results carry who waits for delivery.
#[derive(Debug)]
enum Report {
    Started(serde_json::Value),
    Finished(serde_json::Value, tokio::sync::oneshot::Sender<()>),
}

/// Most reports in one request (the API takes up to 1,000 of each kind).
const REPORT_BATCH: usize = 500;

/// Sends starts and results in batches: whatever queued up while the previous batch was
/// in flight goes in the next one, so a busy worker makes few requests and an idle one
/// reports at once. Each batch is retried until the API takes it (or refuses it for good).
async fn report_loop(worker: Arc<WorkerSession>, mut queued: tokio::sync::mpsc::UnboundedReceiver<Report>) {
    while let Some(first) = queued.recv().await {
        let mut batch = vec![first];
        while batch.len() < REPORT_BATCH {
            match queued.try_recv() {
                Ok(report) => batch.push(report),
                Err(_) => break,
            }
        }
        let mut started = Vec::new();
        let mut finished = Vec::new();
        let mut waiting = Vec::new();
        for report in batch {
            match report {
                Report::Started(body) => started.push(body),
                Report::Finished(body, delivered) => {
                    finished.push(body);
                    waiting.push(delivered);
                }
            }
        }
        let count = started.len() + finished.len();
        match worker.report("reports", &json!({"started": started, "finished": finished})).await {
            Delivery::Taken(reply) => {
                let stale = reply
                    .iter()
                    .flat_map(|reply| {
                        ["started", "finished"].map(|kind| reply[kind].as_array().cloned().unwrap_or_default())
                    })
                    .flatten()
                    .filter(|outcome| outcome["outcome"] == "stale")
                    .count();
                if stale > 0 {
                    eprintln!("hodei-worker: the API refused {stale} report(s) as stale; dropping them");
                }
            }
            Delivery::Stale => eprintln!("hodei-worker: the API refused {count} report(s) as stale; dropping them"),
            Delivery::Refused(why) => {
                eprintln!("hodei-worker: the API refused {count} report(s) ({why}); dropping them")
            }
            Delivery::LeaseLost => {}
        }
        for delivered in waiting {
            let _ = delivered.send(());
        }
    }
}

/// What became of a report.
#[derive(Debug)]
enum Delivery {
    /// The API took it; its reply, if it had one.
    Taken(Option<serde_json::Value>),
    /// Refused as stale (409): the attempt is no longer this worker's.
    Stale,
    /// Refused for good (another 4xx): sending it again would not help.
    Refused(String),
    /// The lease is lost: nothing this worker sends counts any more.
    LeaseLost,
}

/// What the API's answer to a request made with the worker's token means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Taken,
    Stale,
    /// The token is dead: the control plane counts this worker gone and gave its jobs away.
    LeaseLost,
    Refused,
    Retry,
}

fn answer(status: reqwest::StatusCode) -> Answer {
    match status.as_u16() {
        200..=299 => Answer::Taken,
        401 => Answer::LeaseLost,
        409 => Answer::Stale,
        408 | 429 => Answer::Retry,
        400..=499 => Answer::Refused,
        _ => Answer::Retry,
    }
}

fn token_refused(what: &str) -> String {
    format!("the API refused this worker's token for {what} (HTTP 401): the control plane counts it gone")
}

impl WorkerSession {
    fn api_url(&self) -> &str {
        &self.api_urls[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.api_urls.len()]
    }

    /// After a request could not be delivered: try the next replica next time.
    fn fail_over<T>(&self, result: reqwest::Result<T>) -> reqwest::Result<T> {
        if result.as_ref().is_err_and(|error| error.is_connect() || error.is_timeout()) && self.api_urls.len() > 1 {
            self.current.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Result<reqwest::Response> {
        let sent = self
            .client
            .post(format!("{}/api/v1/workers/{}/{path}", self.api_url(), self.id))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await;
        self.fail_over(sent)
    }

    fn queue_report(&self, report: Report) {
        if self.reports.send(report).is_err() {
            eprintln!("hodei-worker: the report queue is closed; a report was lost");
        }
    }

    /// Queues an attempt's result and waits until the API has taken it (or refused it).
    async fn finish(&self, assignment: &Assignment, mut result: serde_json::Value) {
        result["job_id"] = json!(assignment.job_id);
        let (delivered, taken) = tokio::sync::oneshot::channel();
        self.queue_report(Report::Finished(result, delivered));
        let _ = taken.await;
    }

    async fn poll(&self) -> anyhow::Result<Vec<Assignment>> {
        let sent = self
            .client
            .get(format!("{}/api/v1/workers/{}/assignments?wait_seconds=20", self.api_url(), self.id))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let response = self.fail_over(sent)?;
        if answer(response.status()) == Answer::LeaseLost {
            self.lease.lose(token_refused("a poll"));
        }
        #[derive(Deserialize)]
        struct Assignments {
            assignments: Vec<Assignment>,
        }
        Ok(response.error_for_status()?.json::<Assignments>().await?.assignments)
    }

    /// Sends a report until the API takes it or refuses it, or the lease is lost.
    async fn report(&self, path: &str, body: &serde_json::Value) -> Delivery {
        let mut delay = Duration::from_millis(200);
        loop {
            if self.lease.is_lost() {
                return Delivery::LeaseLost;
            }
            match self.post(path, body).await {
                Ok(response) => match answer(response.status()) {
                    Answer::Taken => return Delivery::Taken(response.json().await.ok()),
                    Answer::Stale => return Delivery::Stale,
                    Answer::LeaseLost => {
                        self.lease.lose(token_refused(path));
                        return Delivery::LeaseLost;
                    }
                    Answer::Refused => {
                        let status = response.status();
                        let text: String = response.text().await.unwrap_or_default().chars().take(300).collect();
                        return Delivery::Refused(format!("the API refused it for good: HTTP {status}: {text}"));
                    }
                    Answer::Retry => eprintln!("hodei-worker: {path} failed: HTTP {}; retrying", response.status()),
                },
                Err(error) => eprintln!("hodei-worker: {path} failed: {error}; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.lease.lost() => return Delivery::LeaseLost,
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Assignment {
    job_id: String,
    attempt: i32,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
    timeout_seconds: u64,
}

async fn heartbeat_loop(
    worker: Arc<WorkerSession>,
    seconds: u64,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    health_command: Option<HealthCheck>,
    drain: Arc<tokio::sync::Notify>,
) {
    let mut interval = Duration::from_secs(seconds.max(1));
    loop {
        tokio::time::sleep(interval).await;
        let state = if stopping.load(std::sync::atomic::Ordering::Relaxed) { "draining" } else { "idle" };
        let healthy = match &health_command {
            Some(check) => health_check(check, interval).await,
            None => true,
        };
        let sent_at = Instant::now();
        let response = match worker.post("heartbeat", &json!({ "state": state, "healthy": healthy })).await {
            Ok(response) => response,
            Err(error) => {
                eprintln!("hodei-worker: heartbeat failed: {error}");
                continue;
            }
        };
        match answer(response.status()) {
            Answer::Taken => {}
            Answer::LeaseLost => return worker.lease.lose(token_refused("a heartbeat")),
            _ => {
                eprintln!("hodei-worker: heartbeat failed: HTTP {}", response.status());
                continue;
            }
        }
        let reply = response.json::<serde_json::Value>().await.unwrap_or_default();
        if let Some(seconds) = reply["heartbeat_seconds"].as_u64() {
            interval = Duration::from_secs(seconds.max(1));
        }
        let lease = reply["lease_seconds"].as_u64().map(Duration::from_secs);
        let remaining = worker.lease.renew(sent_at, lease, Some(interval));
        if let Err(error) = worker.supervisor.renew(remaining).await {
            return worker.lease.lose(format!("the keeper process is gone ({error})"));
        }
        for job in reply["cancel"].as_array().into_iter().flatten().filter_map(|j| j.as_str()) {
            if let Some(cancel) = worker.cancels.lock().ok().and_then(|c| c.get(job).cloned()) {
                cancel.notify_one();
            }
        }
        if reply["drain"].as_bool() == Some(true) && state != "draining" {
            println!("the control plane asked this worker to drain");
            drain.notify_one();
        }
    }
}

/// The pool's health command, run with `HODEI_WORKER_ID` and `HODEI_INSTANCE_ID` set.
#[derive(Debug, Clone)]
struct HealthCheck {
    argv: Vec<String>,
    env: Vec<(&'static str, String)>,
}

/// Runs the health command; healthy if it exits 0 within `limit`.
async fn health_check(check: &HealthCheck, limit: Duration) -> bool {
    let Some((program, args)) = check.argv.split_first() else { return true };
    let mut command = tokio::process::Command::new(program);
    command.args(args).envs(check.env.iter().map(|(name, value)| (*name, value)));
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(limit, command.status()).await {
        Ok(Ok(status)) => status.success(),
        _ => false,
    }
}

/// How long the output of a job whose main process has exited may stay open (something it
/// left running still holds the pipes) before the job's process group is killed; never
/// past the job's timeout.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(2);
/// After the group is killed, how long the pipes may stay open (held by a process that
/// left the group) before they are abandoned.
const OUTPUT_AFTER_KILL: Duration = Duration::from_secs(1);

/// Stops a job: SIGTERM to its whole process group, then SIGKILL after `grace`.
async fn stop_job(child: &mut tokio::process::Child, group: u32, grace: Duration) {
    keeper::signal_group(group, Signal::TERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        keeper::signal_group(group, Signal::KILL);
        let _ = child.wait().await;
    }
}

/// Runs one attempt and reports it.
async fn run_assignment(worker: Arc<WorkerSession>, assignment: Assignment) {
    let attempt = assignment.attempt;
    let failed = |error: String| json!({"attempt": attempt, "error": error});
    let Some((program, args)) = assignment.argv.split_first() else {
        worker.finish(&assignment, failed("empty argv".to_owned())).await;
        return;
    };
    let mut command = tokio::process::Command::new(program);
    // The job inherits the worker's environment but none of Hodei's own settings: the
    // registration token (and anything else the agent was given) stays with the agent.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HODEI_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(&assignment.env).env(keeper::SESSION_VARIABLE, worker.supervisor.session());
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.process_group(0).kill_on_drop(true);
    if let Some(dir) = &assignment.working_dir {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            worker.finish(&assignment, failed(format!("could not start {program:?}: {error}"))).await;
            return;
        }
    };
    // Its own process group: the group id is the child's pid.
    let Some(group) = child.id() else {
        worker.finish(&assignment, failed(format!("{program:?} vanished as it started"))).await;
        return;
    };
    if let Err(error) = worker.supervisor.watch(group).await {
        // Nothing would kill this job if the agent died now: it must not run.
        keeper::signal_group(group, Signal::KILL);
        worker.lease.lose(format!("the keeper process is gone ({error}): jobs would outlive this agent"));
        return;
    }
    let limit = Duration::from_secs(assignment.timeout_seconds.max(1));
    let deadline = Instant::now() + limit;
    // Output goes to the API in chunks while the job runs.
    let path = format!("jobs/{}/logs", assignment.job_id);
    let mut output = Capture::start(&worker, path, attempt, child.stdout.take(), child.stderr.take());
    let cancel = Arc::new(tokio::sync::Notify::new());
    if let Ok(mut cancels) = worker.cancels.lock() {
        cancels.insert(assignment.job_id.clone(), cancel.clone());
    }
    worker.queue_report(Report::Started(json!({"job_id": assignment.job_id, "attempt": attempt})));
    let report = tokio::select! {
        waited = tokio::time::timeout_at(deadline, child.wait()) => match waited {
            Ok(Ok(status)) => json!({"attempt": attempt, "exit_code": status.code()}),
            Ok(Err(error)) => failed(format!("waiting for the process: {error}")),
            Err(_) => {
                stop_job(&mut child, group, worker.kill_grace).await;
                failed(format!("timed out after {} s", limit.as_secs()))
            }
        },
        _ = cancel.notified() => {
            stop_job(&mut child, group, worker.kill_grace).await;
            if worker.interrupted.load(std::sync::atomic::Ordering::Relaxed) {
                failed("interrupted: the worker shut down before the job finished".to_owned())
            } else {
                failed("cancelled".to_owned())
            }
        }
    };
    if let Ok(mut cancels) = worker.cancels.lock() {
        cancels.remove(&assignment.job_id);
    }
    // The main process has ended. What it left running gets a moment to finish writing,
    // then the whole group is killed: nothing of a job outlives it, and a daemon holding
    // the pipes cannot keep the job from ending.
    let linger = OUTPUT_AFTER_EXIT.min(deadline.saturating_duration_since(Instant::now()));
    let closed = output.wait_closed(linger).await;
    keeper::signal_group(group, Signal::KILL);
    if !closed && !output.wait_closed(OUTPUT_AFTER_KILL).await {
        eprintln!(
            "hodei-worker: job {}: a process that left the job's process group holds its output open; \
             no longer reading it",
            assignment.job_id
        );
    }
    // All output is shipped before the result, so a finished job's log is complete.
    output.finish().await;
    // Should the keeper be gone, its watcher has already given up the lease.
    let _ = worker.supervisor.forget(group).await;
    worker.finish(&assignment, report).await;
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_arguments_parse() {
        let cli = Cli::try_parse_from([
            "hodei-worker",
            "--api-url",
            "http://a,http://b",
            "run",
            "--registration-token",
            "t",
            "--health-command",
            r#"["sh", "-c", "exit 0"]"#,
            "--label",
            "zone=a",
            "--exit-with-parent",
        ])
        .expect("parses");
        assert_eq!(api_urls(cli.api_url.as_deref()), Ok(vec!["http://a".to_owned(), "http://b".to_owned()]));
        let Command::Run(args) = cli.command else { panic!("run") };
        assert_eq!(args.health_command.map(|Argv(argv)| argv), Some(vec!["sh".into(), "-c".into(), "exit 0".into()]));
        assert_eq!(args.labels, [("zone".to_owned(), "a".to_owned())]);
        assert!(args.exit_with_parent);
        assert_eq!(args.lease_seconds, 30);
        let empty =
            ["hodei-worker", "--api-url", "http://a", "run", "--registration-token", "t", "--health-command", "[]"];
        let error = Cli::try_parse_from(empty).expect_err("an empty health command is refused").to_string();
        assert!(error.contains("must not be empty"), "{error}");
        assert!(api_urls(None).is_err());
        assert!(api_urls(Some("http://a,ftp://b")).is_err_and(|error| error.contains("ftp://b")));
    }

    #[test]
    fn answers_are_taken_stale_fatal_permanent_or_retried() {
        let cases = [
            (200, Answer::Taken),
            (204, Answer::Taken),
            (401, Answer::LeaseLost),
            (409, Answer::Stale),
            (408, Answer::Retry),
            (429, Answer::Retry),
            (400, Answer::Refused),
            (404, Answer::Refused),
            (413, Answer::Refused),
            (422, Answer::Refused),
            (500, Answer::Retry),
            (503, Answer::Retry),
        ];
        for (status, expected) in cases {
            let status = reqwest::StatusCode::from_u16(status).expect("a status");
            assert_eq!(answer(status), expected, "{status}");
        }
    }
}
