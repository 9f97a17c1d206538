//! `hodei-worker`: the agent that runs on a worker machine. It talks to the Hodei API over
//! HTTP only and never holds database credentials.
//!
//! `run` registers with the registration token (receiving a worker id and a worker-scoped
//! token), heartbeats at the interval the API asks for, waits for assignments by long
//! poll, runs each job's argv as a child process (with its env, working directory and
//! timeout) and reports its start and result; a timeout or a cancel sends SIGTERM to the
//! job's process group, then SIGKILL after a grace period. On SIGTERM, Ctrl-C or a drain
//! instruction in a heartbeat reply it stops taking work, lets running jobs finish,
//! deregisters and exits 0. An optional health command runs before each heartbeat. If the API is unreachable it keeps
//! retrying with backoff; a result the API refuses as stale (409) is dropped.

use std::collections::BTreeMap;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "hodei-worker", version, about = "Hodei worker agent")]
struct Cli {
    /// Base URL of the Hodei API, e.g. http://127.0.0.1:8080; several replicas may be given,
    /// separated by commas: the worker moves to the next when one stops answering.
    #[arg(long, env = "HODEI_API_URL")]
    api_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the API is reachable and ready; exit 0 if so, 1 if not.
    Check,
    /// Register, heartbeat, and deregister on SIGTERM.
    Run(Box<RunArgs>),
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
    /// Drain and exit when the process that started this worker ends (the `local`
    /// provider's workers live and die with their control plane); running jobs get
    /// `--orphan-grace-seconds` to finish.
    #[arg(long)]
    exit_with_parent: bool,
    #[arg(long, default_value_t = 30)]
    orphan_grace_seconds: u64,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let api_urls: Vec<String> = cli.api_url.split(',').map(|url| url.trim().trim_end_matches('/').to_owned()).collect();
    if let Some(bad) = api_urls.iter().find(|url| !(url.starts_with("http://") || url.starts_with("https://"))) {
        eprintln!("hodei-worker: --api-url must start with http:// or https://, got {bad:?}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hodei-worker: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Check => runtime.block_on(check(&api_urls[0])),
        Command::Run(args) => runtime.block_on(run(api_urls, *args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hodei-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?)
}

async fn check(api_url: &str) -> anyhow::Result<()> {
    let response = client()?
        .get(format!("{api_url}/readyz"))
        .send()
        .await
        .with_context(|| format!("cannot reach the API at {api_url}"))?;
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
}

async fn run(api_urls: Vec<String>, args: RunArgs) -> anyhow::Result<()> {
    let client = client()?;
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
    let registered: Registered = loop {
        let api_url = &api_urls[url_index % api_urls.len()];
        url_index += 1;
        let attempt = client
            .post(format!("{api_url}/api/v1/workers/register"))
            .bearer_auth(&args.registration_token)
            .json(&body)
            .send()
            .await;
        match attempt {
            Ok(response) if response.status().is_success() => break response.json().await?,
            Ok(response) if response.status().is_client_error() => {
                bail!("registration refused: HTTP {}: {}", response.status(), response.text().await.unwrap_or_default())
            }
            Ok(response) => eprintln!("hodei-worker: registration failed: HTTP {}; retrying", response.status()),
            Err(error) => eprintln!("hodei-worker: cannot reach the API ({error}); retrying"),
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    };
    println!("registered as worker {}", registered.worker_id);
    let (report_sender, report_receiver) = tokio::sync::mpsc::unbounded_channel();
    let worker = Arc::new(WorkerSession {
        client: client.clone(),
        api_urls: api_urls.clone(),
        current: std::sync::atomic::AtomicUsize::new((url_index - 1) % api_urls.len()),
        id: registered.worker_id.clone(),
        token: registered.token.clone(),
        cancels: std::sync::Mutex::new(BTreeMap::new()),
        kill_grace: Duration::from_secs(args.kill_grace_seconds),
        reports: report_sender,
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
    let mut running = tokio::task::JoinSet::new();
    loop {
        let poll = worker.poll();
        tokio::select! {
            _ = &mut stop => break,
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
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
        }
        while running.try_join_next().is_some() {}
    }
    // Draining: take no more work, let running jobs finish and report.
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    let finished = async { while running.join_next().await.is_some() {} };
    tokio::pin!(finished);
    let mut orphaned_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = &mut finished => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if orphaned.load(std::sync::atomic::Ordering::Relaxed) {
            let since = *orphaned_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > Duration::from_secs(args.orphan_grace_seconds) {
                eprintln!("hodei-worker: the parent process is gone; leaving unfinished jobs to their leases");
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
    /// Between SIGTERM and SIGKILL when a job is stopped.
    kill_grace: Duration,
    /// Starts and results waiting to go to the API in the next batch.
    reports: tokio::sync::mpsc::UnboundedSender<Report>,
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
/// reports at once. Each batch is retried until the API takes it.
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
        let reply = worker.report("reports", json!({"started": started, "finished": finished})).await;
        let stale = reply
            .iter()
            .flat_map(|reply| ["started", "finished"].map(|kind| reply[kind].as_array().cloned().unwrap_or_default()))
            .flatten()
            .filter(|outcome| outcome["outcome"] == "stale")
            .count();
        if stale > 0 {
            eprintln!("hodei-worker: the API refused {stale} report(s) as stale; dropping them");
        }
        for delivered in waiting {
            let _ = delivered.send(());
        }
    }
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
        let response = self.fail_over(sent)?.error_for_status()?;
        #[derive(Deserialize)]
        struct Assignments {
            assignments: Vec<Assignment>,
        }
        Ok(response.json::<Assignments>().await?.assignments)
    }

    /// Sends a report until the API takes it (returning its reply) or refuses it as stale.
    async fn report(&self, path: &str, body: serde_json::Value) -> Option<serde_json::Value> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.post(path, &body).await {
                Ok(response) if response.status().is_success() => return response.json().await.ok(),
                Ok(response) if response.status() == reqwest::StatusCode::CONFLICT => {
                    eprintln!("hodei-worker: the API refused {path} as stale; dropping it");
                    return None;
                }
                Ok(response) => eprintln!("hodei-worker: {path} failed: HTTP {}; retrying", response.status()),
                Err(error) => eprintln!("hodei-worker: {path} failed: {error}; retrying"),
            }
            tokio::time::sleep(delay).await;
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
        match worker.post("heartbeat", &json!({ "state": state, "healthy": healthy })).await {
            Ok(response) if response.status().is_success() => {
                if let Ok(reply) = response.json::<serde_json::Value>().await {
                    if let Some(seconds) = reply["heartbeat_seconds"].as_u64() {
                        interval = Duration::from_secs(seconds.max(1));
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
            Ok(response) => eprintln!("hodei-worker: heartbeat failed: HTTP {}", response.status()),
            Err(error) => eprintln!("hodei-worker: heartbeat failed: {error}"),
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

/// Stops a job: SIGTERM to its whole process group, then SIGKILL after `grace`.
async fn stop_job(child: &mut tokio::process::Child, grace: Duration) {
    let Some(pid) = child.id() else { return };
    let group = format!("-{pid}");
    let signal = |name: &'static str| {
        let group = group.clone();
        async move {
            let _ = tokio::process::Command::new("kill")
                .args([name, "--", &group])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
    };
    signal("-TERM").await;
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal("-KILL").await;
        let _ = child.wait().await;
    }
}

/// Runs one attempt and reports it.
async fn run_assignment(worker: Arc<WorkerSession>, assignment: Assignment) {
    let path = |what: &str| format!("jobs/{}/{what}", assignment.job_id);
    let Some((program, args)) = assignment.argv.split_first() else {
        let report = json!({"attempt": assignment.attempt, "error": "empty argv"});
        worker.finish(&assignment, report).await;
        return;
    };
    let mut command = tokio::process::Command::new(program);
    command.args(args).envs(&assignment.env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.process_group(0).kill_on_drop(true);
    if let Some(dir) = &assignment.working_dir {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let report =
                json!({"attempt": assignment.attempt, "error": format!("could not start {program:?}: {error}")});
            worker.finish(&assignment, report).await;
            return;
        }
    };
    // Output goes to the API in chunks while the job runs.
    let (chunks, shipped) = tokio::sync::mpsc::channel::<(&'static str, Vec<u8>)>(64);
    let readers = [
        tokio::spawn(read_pipe(child.stdout.take(), "stdout", chunks.clone())),
        tokio::spawn(read_pipe(child.stderr.take(), "stderr", chunks)),
    ];
    let shipper = tokio::spawn(ship_logs(worker.clone(), path("logs"), assignment.attempt, shipped));
    let cancel = Arc::new(tokio::sync::Notify::new());
    if let Ok(mut cancels) = worker.cancels.lock() {
        cancels.insert(assignment.job_id.clone(), cancel.clone());
    }
    worker.queue_report(Report::Started(json!({"job_id": assignment.job_id, "attempt": assignment.attempt})));
    let limit = Duration::from_secs(assignment.timeout_seconds.max(1));
    let report = tokio::select! {
        waited = tokio::time::timeout(limit, child.wait()) => match waited {
            Ok(Ok(status)) => json!({"attempt": assignment.attempt, "exit_code": status.code()}),
            Ok(Err(error)) => json!({"attempt": assignment.attempt, "error": format!("waiting for the process: {error}")}),
            Err(_) => {
                stop_job(&mut child, worker.kill_grace).await;
                json!({"attempt": assignment.attempt, "error": format!("timed out after {} s", limit.as_secs())})
            }
        },
        _ = cancel.notified() => {
            stop_job(&mut child, worker.kill_grace).await;
            json!({"attempt": assignment.attempt, "error": "cancelled"})
        }
    };
    if let Ok(mut cancels) = worker.cancels.lock() {
        cancels.remove(&assignment.job_id);
    }
    // All output is shipped before the result, so a finished job's log is complete.
    for reader in readers {
        let _ = reader.await;
    }
    let _ = shipper.await;
    worker.finish(&assignment, report).await;
}

/// Reads a child's pipe to its end, passing chunks on.
async fn read_pipe<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<R>,
    stream: &'static str,
    chunks: tokio::sync::mpsc::Sender<(&'static str, Vec<u8>)>,
) {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else { return };
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(read) = pipe.read(&mut buffer).await {
        if read == 0 || chunks.send((stream, buffer[..read].to_vec())).await.is_err() {
            return;
        }
    }
}

/// Ships output chunks in batches (up to 256 chunks or about 256 KiB) until the pipes close.
async fn ship_logs(
    worker: Arc<WorkerSession>,
    path: String,
    attempt: i32,
    mut shipped: tokio::sync::mpsc::Receiver<(&'static str, Vec<u8>)>,
) {
    while let Some(first) = shipped.recv().await {
        let mut batch = vec![first];
        let mut bytes = batch[0].1.len();
        while batch.len() < 256 && bytes < 256 * 1024 {
            match shipped.try_recv() {
                Ok(chunk) => {
                    bytes += chunk.1.len();
                    batch.push(chunk);
                }
                Err(_) => break,
            }
        }
        let chunks: Vec<serde_json::Value> = batch
            .into_iter()
            .map(|(stream, data)| json!({"stream": stream, "data": String::from_utf8_lossy(&data).replace('\0', "")}))
            .collect();
        worker.report(&path, json!({"attempt": attempt, "chunks": chunks})).await;
    }
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
        let Command::Run(args) = cli.command else { panic!("run") };
        assert_eq!(args.health_command.map(|Argv(argv)| argv), Some(vec!["sh".into(), "-c".into(), "exit 0".into()]));
        assert_eq!(args.labels, [("zone".to_owned(), "a".to_owned())]);
        assert!(args.exit_with_parent);
        let empty =
            ["hodei-worker", "--api-url", "http://a", "run", "--registration-token", "t", "--health-command", "[]"];
        let error = Cli::try_parse_from(empty).expect_err("an empty health command is refused").to_string();
        assert!(error.contains("must not be empty"), "{error}");
    }
}
