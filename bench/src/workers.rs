//! `hodei bench latency`, `heartbeats` and `running`: what the worker side of the system
//! costs. Each command starts its own `hodei serve` (as `bench` does) on the configured
//! database, with real `hodei-worker` processes or simulated workers speaking the worker
//! protocol over HTTP, and reads job timestamps and counts straight from the database.
//! Use a scratch database: what the benchmarks submit and register stays there. CPU
//! shares come from `/proc`, so they are only reported when Postgres runs on this machine.
//! The benchmarks drive the system through its HTTP API only; the one thing they do
//! behind its back is kill, at the end, the job processes their own workers started.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::e2e::{create_bench_tenant, percentile, start_server_with_env, ChildServer, BENCH_REGISTRATION_TOKEN};
use hodei_api::config::Config;
use hodei_api::store::dispatch::random_fraction;

#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Single submits per second, sent open loop on a fixed schedule.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of load before measuring starts; its jobs finish and the database is
    /// analyzed before the measured load begins.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 8)]
    slots: usize,
}

#[derive(Debug, Args)]
pub struct HeartbeatArgs {
    /// Simulated workers.
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    /// Seconds between a worker's heartbeats (the server's `worker_heartbeat_seconds`).
    #[arg(long, default_value_t = 5)]
    interval: u32,
    /// Seconds of heartbeats measured.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Seconds per reported window.
    #[arg(long, default_value_t = 10.0)]
    window: f64,
    /// Seconds measured with every worker registered but silent, before the heartbeats.
    #[arg(long, default_value_t = 10.0)]
    baseline: f64,
}

#[derive(Debug, Args)]
pub struct RunningArgs {
    /// Long jobs kept running at once.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    #[arg(long, default_value_t = 10)]
    workers: usize,
    /// Slots per worker for the long jobs; each worker gets `--spare-slots` more for the
    /// probe jobs.
    #[arg(long, default_value_t = 1000)]
    slots: usize,
    #[arg(long, default_value_t = 8)]
    spare_slots: usize,
    /// How long each long job sleeps, in seconds: it must outlast the ramp-up and the
    /// probes. The jobs' processes are killed at the end (found by a marker in their
    /// environment), so a long value costs no waiting.
    #[arg(long, default_value_t = 120)]
    sleep: u64,
    /// Seconds of probing while every long job runs.
    #[arg(long, default_value_t = 30.0)]
    probe_seconds: f64,
    /// Probe requests per second, open loop, rotating over get job, list jobs and submit.
    #[arg(long, default_value_t = 30.0)]
    probe_rate: f64,
}

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, 100 on every Linux ABI).
pub(crate) const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The environment variable that marks the processes of one benchmark run's jobs.
const RUN_MARKER_VARIABLE: &str = "HODEI_BENCH_RUN";

/// The percentiles reported, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
struct Percentiles {
    count: usize,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self {
            count: samples.len(),
            p50: percentile(&samples, 50.0),
            p95: percentile(&samples, 95.0),
            p99: percentile(&samples, 99.0),
            max: percentile(&samples, 100.0),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  (n={})",
            self.p50, self.p95, self.p99, self.max, self.count
        )
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(1024).build()?)
}

// ---------------------------------------------------------------------------------------
// latency

pub async fn latency(args: LatencyArgs, config: &Config) -> anyhow::Result<()> {
    ensure!(args.rate > 0.0 && args.duration > 0.0 && args.warmup >= 0.0, "--rate and --duration must be positive");
    let (server, url, admin_key) = start_server_with_env(config, &[]).await?;
    let pool = hodei_api::db::connect(config.require_database_url()?.expose(), 2).await?;
    let fleet = WorkerFleet::start(&url, FleetSpec::sized(args.workers, args.slots, false))?;
    fleet.wait_registered(&pool).await?;
    let client = http_client()?;
    let tenant_key = create_bench_tenant(&client, &url, &admin_key).await?;

    let body = Arc::new(json!({"command": {"argv": ["true"]}}));
    let submit = |_| submit_job(client.clone(), url.clone(), tenant_key.clone(), body.clone());
    // The warm-up, then the planner statistics a running system has: autovacuum analyzes a
    // table once a tenth of it changed, and this machine's clusters run without it. Plans
    // cached while the tables were nearly empty are made again (the assign statement's was
    // a sequential scan of `jobs`, read whole in every cycle as the table grew).
    let warmup = open_loop(args.rate, (args.warmup * args.rate) as usize, submit).await?;
    let warmed: Vec<Uuid> = warmup.iter().filter_map(|s| s.outcome.as_ref().ok().copied()).collect();
    wait_for_all(&pool, &warmed, &["succeeded"], Duration::from_secs(120)).await?;
    sqlx::query("analyze").execute(&pool).await?;

    let watch = CpuWatch::new(&pool, &server, fleet.pids()).await?;
    let meter = crate::footprint::Meter::start(&pool, &url).await?;
    let cpu_before = watch.snapshot()?;
    let submits = open_loop(args.rate, (args.duration * args.rate) as usize, submit).await?;
    let cpu = watch.shares(&cpu_before, &watch.snapshot()?);
    let ids: Vec<Uuid> = submits.iter().filter_map(|s| s.outcome.as_ref().ok().copied()).collect();
    let errors = submits.len() - ids.len();
    if let Some(error) = submits.iter().find_map(|s| s.outcome.as_ref().err()) {
        eprintln!("first submit error: {error:#}");
    }
    let http = Percentiles::of(submits.iter().filter(|s| s.outcome.is_ok()).map(|s| s.latency).collect());

    let finished = wait_for_all(&pool, &ids, &["succeeded"], Duration::from_secs(120)).await?;
    let window = meter.end(&pool).await?;
    let delays = job_delays(&pool, &ids).await?;
    drop(fleet);
    drop(server);
    let footprint = window.per_job(&pool, ids.len()).await?;

    // Little's law: slots busy on average = arrival rate x mean time a job holds its slot.
    let mean_held =
        delays.slot_held.iter().map(Duration::as_secs_f64).sum::<f64>() / delays.slot_held.len().max(1) as f64;
    let busy_slots = args.rate * mean_held;
    let assigned = Percentiles::of(delays.assigned);
    let started = Percentiles::of(delays.started);
    let assigned_to_started = Percentiles::of(delays.assigned_to_started);
    let slot_held = Percentiles::of(delays.slot_held);
    println!(
        "latency: single no-op jobs open loop at {rate} jobs/s for {duration} s (after {warmup} s warm-up), \
         {workers} workers x {slots} slots\n  \
         submitted {submitted}, submit errors {errors}, succeeded {finished}\n  \
         HTTP submit ms:       {http}\n  \
         submit->assigned ms:  {assigned}\n  \
         submit->started ms:   {started}\n  \
         assigned->started ms: {assigned_to_started}\n  \
         slot held (assigned->finished) ms: {slot_held}\n  \
         slots busy on average (rate x mean hold): {busy_slots:.1} of {total_slots}\n  \
         CPU while submitting: {cpu}\n  \
         {footprint}\n  \
         ({negative} jobs had assigned_at before created_at: the cycle's now() is its transaction start)\n  \
         target p95 submit->assigned < 5 ms: {assigned_verdict}; p95 submit->started < 20 ms: {started_verdict}",
        rate = args.rate,
        duration = args.duration,
        warmup = args.warmup,
        workers = args.workers,
        slots = args.slots,
        submitted = submits.len(),
        total_slots = args.workers * args.slots,
        negative = delays.negative_assigned,
        assigned_verdict = verdict(assigned.p95 < 5.0),
        started_verdict = verdict(started.p95 < 20.0),
    );
    println!(
        "{}",
        json!({
            "bench": "latency", "rate": args.rate, "duration_s": args.duration, "workers": args.workers,
            "slots": args.slots, "submitted": submits.len(), "errors": errors, "succeeded": finished,
            "http_submit_ms": http, "submit_to_assigned_ms": assigned, "submit_to_started_ms": started,
            "assigned_to_started_ms": assigned_to_started, "slot_held_ms": slot_held, "busy_slots": busy_slots,
            "cpu_percent_of_one_core": cpu, "footprint": footprint,
            "target_met": {"assigned_p95_lt_5ms": assigned.p95 < 5.0, "started_p95_lt_20ms": started.p95 < 20.0},
        })
    );
    Ok(())
}

async fn submit_job(
    client: reqwest::Client,
    url: String,
    key: String,
    body: Arc<serde_json::Value>,
) -> anyhow::Result<Uuid> {
    let response = client.post(format!("{url}/api/v1/jobs")).bearer_auth(key).json(body.as_ref()).send().await?;
    let status = response.status();
    if status.as_u16() != 201 {
        bail!("submit: HTTP {status}: {}", response.text().await.unwrap_or_default());
    }
    let job: serde_json::Value = response.json().await?;
    job["id"].as_str().context("the job has no id")?.parse().context("the job id is not a UUID")
}

/// How long jobs took from their submission to their assignment and to their start, and
/// how long each held its worker slot, from their own timestamps. `assigned_at` is the
/// scheduling cycle's `now()`, its transaction's start, which can precede the job's
/// `created_at` by the cycle's first queries: submit→assigned is a slight underestimate.
#[derive(Debug, Default)]
struct JobDelays {
    assigned: Vec<Duration>,
    started: Vec<Duration>,
    /// From assigned to started: delivery by long poll, the spawn and the start report.
    assigned_to_started: Vec<Duration>,
    /// From assigned to finished: how long the job held its worker slot.
    slot_held: Vec<Duration>,
    /// `assigned_at` before `created_at` (counted as zero).
    negative_assigned: usize,
}

/// One job's intervals, in seconds.
#[derive(Debug, sqlx::FromRow)]
struct JobDelayRow {
    assigned: Option<f64>,
    started: Option<f64>,
    assigned_to_started: Option<f64>,
    slot_held: Option<f64>,
}

async fn job_delays(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<JobDelays> {
    let rows: Vec<JobDelayRow> = sqlx::query_as(
        "select extract(epoch from assigned_at - created_at)::float8 as assigned,
                extract(epoch from started_at - created_at)::float8 as started,
                extract(epoch from started_at - assigned_at)::float8 as assigned_to_started,
                extract(epoch from finished_at - assigned_at)::float8 as slot_held
         from jobs where id = any($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let seconds = |value: f64| Duration::from_secs_f64(value.max(0.0));
    let mut delays = JobDelays::default();
    for row in rows {
        if let Some(value) = row.assigned {
            delays.negative_assigned += usize::from(value < 0.0);
            delays.assigned.push(seconds(value));
        }
        delays.started.extend(row.started.map(seconds));
        delays.assigned_to_started.extend(row.assigned_to_started.map(seconds));
        delays.slot_held.extend(row.slot_held.map(seconds));
    }
    Ok(delays)
}

/// Jobs of `ids` per state.
async fn state_counts(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as("select state, count(*) from jobs where id = any($1) group by state")
        .bind(ids)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Waits until every job of `ids` is in one of `states`; returns how many are.
pub(crate) async fn wait_for_all(
    pool: &PgPool,
    ids: &[Uuid],
    states: &[&str],
    limit: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        let counts = state_counts(pool, ids).await?;
        let done: i64 = states.iter().filter_map(|state| counts.get(*state)).sum();
        if done as usize == ids.len() {
            return Ok(ids.len());
        }
        if Instant::now() > deadline {
            bail!("after {} s only {done} of {} jobs are {states:?}: {counts:?}", limit.as_secs(), ids.len());
        }
        // Every 50 ms for a few thousand jobs, less often for more: the count reads every
        // job's row, and the benchmark must not load the database it measures.
        tokio::time::sleep(Duration::from_millis(50).max(Duration::from_micros(25 * ids.len() as u64))).await;
    }
}

/// One request of an open-loop run: how long it took from when it was due
/// (so a stalled server cannot hide its queueing delay).
#[derive(Debug)]
struct Timed<T> {
    latency: Duration,
    outcome: T,
}

/// Sends `count` requests at `rate` per second on a fixed schedule, whatever the server's
/// speed, each in its own task.
async fn open_loop<T, F, R>(rate: f64, count: usize, mut request: F) -> anyhow::Result<Vec<Timed<T>>>
where
    F: FnMut(usize) -> R,
    R: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for index in 0..count {
        let due = interval.mul_f64(index as f64);
        tokio::time::sleep_until(start + due).await;
        let sent = request(index);
        tasks.push(tokio::spawn(async move {
            let outcome = sent.await;
            Timed { latency: (start + due).elapsed(), outcome }
        }));
    }
    let mut done = Vec::with_capacity(count);
    for task in tasks {
        done.push(task.await?);
    }
    Ok(done)
}

// ---------------------------------------------------------------------------------------
// real workers

/// How many `hodei-worker` processes to start, and what each offers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FleetSpec {
    pub workers: usize,
    pub slots: usize,
    pub cpu_millis: i64,
    pub memory_mib: i64,
    /// `hodei-worker run --executor noop`: nothing runs, each job is reported succeeded.
    pub noop: bool,
}

impl FleetSpec {
    /// Workers with `slots` slots each, and a CPU and 1 GiB of memory per slot.
    pub(crate) fn sized(workers: usize, slots: usize, noop: bool) -> Self {
        Self { workers, slots, cpu_millis: (slots * 1000) as i64, memory_mib: (slots * 1024) as i64, noop }
    }
}

/// The `hodei-worker` processes of one benchmark run. Their jobs run in process groups of
/// their own, so killing a worker leaves its jobs behind: jobs that should not outlive the
/// run carry `HODEI_BENCH_RUN=<run id>` in their environment, and `shutdown` (or, as a
/// backstop, dropping the fleet) kills every process that carries it — first while the
/// workers are alive, so they reap their children, then the workers, then any straggler.
#[derive(Debug)]
pub(crate) struct WorkerFleet {
    workers: Vec<tokio::process::Child>,
    run_id: String,
    log_dir: PathBuf,
}

impl WorkerFleet {
    pub(crate) fn start(url: &str, spec: FleetSpec) -> anyhow::Result<Self> {
        let binary = crate::e2e::sibling_binary("hodei-worker")?;
        let run_id = Uuid::now_v7().simple().to_string();
        let log_dir = std::env::temp_dir().join(format!("hodei-bench-{run_id}"));
        std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        let mut fleet = Self { workers: Vec::with_capacity(spec.workers), run_id, log_dir };
        for index in 0..spec.workers {
            let log_path = fleet.log_dir.join(format!("worker-{index}.log"));
            let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
            let child = tokio::process::Command::new(&binary)
                .args(["--api-url", url, "run", "--name", &format!("{}{index}", fleet.name_prefix())])
                .args(["--slots", &spec.slots.to_string()])
                .args(["--cpu-millis", &spec.cpu_millis.to_string(), "--memory-mib", &spec.memory_mib.to_string()])
                .args(if spec.noop { &["--executor", "noop"][..] } else { &[][..] })
                .envs(spec.noop.then_some(("HODEI_WORKER_NOOP_EXECUTOR", "allow")))
                .env("HODEI_WORKER_REGISTRATION_TOKEN", BENCH_REGISTRATION_TOKEN)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            fleet.workers.push(child);
        }
        Ok(fleet)
    }

    fn name_prefix(&self) -> String {
        format!("bench-{}-", self.run_id)
    }

    /// `HODEI_BENCH_RUN=<run id>`, for the `env` of jobs that must die with the run.
    fn marker(&self) -> (String, String) {
        (RUN_MARKER_VARIABLE.to_owned(), self.run_id.clone())
    }

    fn pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(tokio::process::Child::id).collect()
    }

    pub(crate) async fn wait_registered(&self, pool: &PgPool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let registered: i64 =
                sqlx::query_scalar("select count(*) from workers where gone_at is null and starts_with(name, $1)")
                    .bind(self.name_prefix())
                    .fetch_one(pool)
                    .await?;
            if registered as usize == self.workers.len() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "only {registered} of {} workers registered within 60 s; see {}",
                self.workers.len(),
                self.log_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the workers and every process of the run's jobs; returns how many job
    /// processes it killed.
    async fn shutdown(mut self) -> anyhow::Result<usize> {
        let marker = format!("{RUN_MARKER_VARIABLE}={}", self.run_id);
        let mut killed: BTreeSet<u32> = tokio::task::spawn_blocking({
            let marker = marker.clone();
            move || kill_marked_processes(&marker)
        })
        .await??;
        // Give the workers a moment to reap what was killed, then stop them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for worker in &mut self.workers {
            worker.kill().await.context("killing a worker")?;
        }
        self.workers.clear();
        for _ in 0..10 {
            let more = tokio::task::spawn_blocking({
                let marker = marker.clone();
                move || kill_marked_processes(&marker)
            })
            .await??;
            if more.is_empty() {
                break;
            }
            killed.extend(more);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let left = tokio::task::spawn_blocking(move || marked_processes(&marker)).await??;
        ensure!(left.is_empty(), "{} job processes of the run survived: {left:?}", left.len());
        Ok(killed.len())
    }
}

impl Drop for WorkerFleet {
    fn drop(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        let marker = format!("{RUN_MARKER_VARIABLE}={}", self.run_id);
        let _ = kill_marked_processes(&marker);
        for worker in &mut self.workers {
            let _ = worker.start_kill();
        }
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(200));
            if kill_marked_processes(&marker).map_or(true, |killed| killed.is_empty()) {
                break;
            }
        }
    }
}

/// Process ids in `/proc`.
fn all_pids() -> anyhow::Result<Vec<u32>> {
    Ok(std::fs::read_dir("/proc")?.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()).collect())
}

/// Processes whose environment holds `marker` (`NAME=value`) exactly.
fn marked_processes(marker: &str) -> anyhow::Result<Vec<u32>> {
    let marker = marker.as_bytes();
    Ok(all_pids()?
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|byte| *byte == 0).any(|entry| entry == marker))
        })
        .collect())
}

/// SIGKILLs every process whose environment holds `marker`; returns their ids.
fn kill_marked_processes(marker: &str) -> anyhow::Result<BTreeSet<u32>> {
    let pids = marked_processes(marker)?;
    for chunk in pids.chunks(500) {
        // Some may have exited meanwhile: `kill` then fails for those, which is fine.
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(chunk.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status()
            .context("running kill")?;
    }
    Ok(pids.into_iter().collect())
}

// ---------------------------------------------------------------------------------------
// CPU from /proc

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone)]
struct ProcessStat {
    command: String,
    parent: u32,
    /// utime + stime, in clock ticks.
    own_ticks: u64,
    /// cutime + cstime: the CPU of its children that it has reaped.
    reaped_children_ticks: u64,
}

fn process_stat(pid: u32) -> Option<ProcessStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let command = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |index: usize| fields.get(index).and_then(|field| field.parse::<u64>().ok());
    Some(ProcessStat {
        command,
        parent: u32::try_from(number(1)?).ok()?,
        own_ticks: number(11)? + number(12)?,
        reaped_children_ticks: number(13)? + number(14)?,
    })
}

/// The postmaster of `pool`'s Postgres, when it runs on this machine (and is visible in
/// `/proc`): the parent of one of its backends.
pub(crate) async fn postmaster_of(pool: &PgPool) -> anyhow::Result<Option<u32>> {
    let backend: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(pool).await?;
    let postmaster = u32::try_from(backend)
        .ok()
        .and_then(process_stat)
        .filter(|backend| backend.command == "postgres")
        .map(|backend| backend.parent)
        .filter(|parent| process_stat(*parent).is_some_and(|stat| stat.command == "postgres"));
    if postmaster.is_none() {
        eprintln!("Postgres does not run on this machine (or is not visible in /proc): no database CPU");
    }
    Ok(postmaster)
}

/// The CPU ticks of a Postgres cluster so far: its postmaster, the children it has
/// reaped, and its live children.
pub(crate) fn cluster_ticks(postmaster: u32) -> u64 {
    let Ok(pids) = all_pids() else { return 0 };
    pids.into_iter()
        .filter_map(|pid| Some((pid, process_stat(pid)?)))
        .filter(|(_, stat)| stat.command == "postgres")
        .map(|(pid, stat)| match pid == postmaster {
            true => stat.own_ticks + stat.reaped_children_ticks,
            false if stat.parent == postmaster => stat.own_ticks,
            false => 0,
        })
        .sum()
}

/// The processes whose CPU a benchmark reports.
#[derive(Debug, Clone)]
struct CpuWatch {
    /// The postmaster of the benchmark's Postgres, when it runs on this machine.
    postmaster: Option<u32>,
    /// ` <database> `, as the database's backends show it in their command line.
    database_in_command_line: String,
    server: Option<u32>,
    workers: Vec<u32>,
}

/// Cumulative CPU ticks at one moment.
#[derive(Debug, Clone, Copy)]
struct CpuSnapshot {
    at: Instant,
    /// Every process named `postgres` on the machine.
    postgres_all: u64,
    /// The postmaster, its live children and the children it has reaped.
    postgres_cluster: u64,
    /// Backends connected to the benchmark's database.
    database_backends: u64,
    server: u64,
    workers: u64,
    bench: u64,
}

/// CPU use between two snapshots, in % of one core.
#[derive(Debug, Clone, Copy, Serialize)]
struct CpuShares {
    postgres_cluster: Option<f64>,
    postgres_all: f64,
    database_backends: f64,
    server: f64,
    workers: f64,
    bench: f64,
}

impl std::fmt::Display for CpuShares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.postgres_cluster {
            Some(cluster) => write!(f, "postgres cluster {cluster:.1}%")?,
            None => write!(f, "postgres cluster n/a")?,
        }
        write!(
            f,
            " (its backends of the bench database {:.1}%; all postgres processes {:.1}%), hodei serve {:.1}%",
            self.database_backends, self.postgres_all, self.server
        )?;
        if !self.workers.is_nan() && self.workers > 0.0 {
            write!(f, ", workers {:.1}%", self.workers)?;
        }
        write!(f, ", bench {:.1}% of one core", self.bench)
    }
}

impl CpuWatch {
    async fn new(pool: &PgPool, server: &ChildServer, workers: Vec<u32>) -> anyhow::Result<Self> {
        let database: String = sqlx::query_scalar("select current_database()").fetch_one(pool).await?;
        let postmaster = postmaster_of(pool).await?;
        Ok(Self { postmaster, database_in_command_line: format!(" {database} "), server: server.id(), workers })
    }

    fn snapshot(&self) -> anyhow::Result<CpuSnapshot> {
        let bench_pid = std::process::id();
        let mut snapshot = CpuSnapshot {
            at: Instant::now(),
            postgres_all: 0,
            postgres_cluster: 0,
            database_backends: 0,
            server: 0,
            workers: 0,
            bench: 0,
        };
        for pid in all_pids()? {
            let Some(stat) = process_stat(pid) else { continue };
            if stat.command == "postgres" {
                snapshot.postgres_all += stat.own_ticks;
                if Some(pid) == self.postmaster {
                    snapshot.postgres_cluster += stat.own_ticks + stat.reaped_children_ticks;
                } else if Some(stat.parent) == self.postmaster {
                    snapshot.postgres_cluster += stat.own_ticks;
                    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&command_line).contains(&self.database_in_command_line) {
                        snapshot.database_backends += stat.own_ticks;
                    }
                }
            } else if Some(pid) == self.server {
                snapshot.server += stat.own_ticks;
            } else if self.workers.contains(&pid) {
                snapshot.workers += stat.own_ticks;
            } else if pid == bench_pid {
                snapshot.bench += stat.own_ticks;
            }
        }
        Ok(snapshot)
    }

    fn shares(&self, from: &CpuSnapshot, to: &CpuSnapshot) -> CpuShares {
        let seconds = to.at.duration_since(from.at).as_secs_f64().max(1e-9);
        let share = |from: u64, to: u64| to.saturating_sub(from) as f64 / CLOCK_TICKS_PER_SECOND / seconds * 100.0;
        CpuShares {
            postgres_cluster: self.postmaster.map(|_| share(from.postgres_cluster, to.postgres_cluster)),
            postgres_all: share(from.postgres_all, to.postgres_all),
            database_backends: share(from.database_backends, to.database_backends),
            server: share(from.server, to.server),
            workers: share(from.workers, to.workers),
            bench: share(from.bench, to.bench),
        }
    }
}

// ---------------------------------------------------------------------------------------
// heartbeats

/// A simulated worker: registered over HTTP, then heartbeating with its own token.
#[derive(Debug, Clone)]
struct SimulatedWorker {
    id: String,
    token: String,
}

/// One heartbeat: when it was due (from the start of the heartbeats), how long it took from
/// then, and whether the server accepted it.
#[derive(Debug, Clone, Copy)]
struct Beat {
    due: Duration,
    latency: Duration,
    ok: bool,
}

pub async fn heartbeats(args: HeartbeatArgs, config: &Config) -> anyhow::Result<()> {
    ensure!(
        args.workers > 0 && args.duration > 0.0 && args.window > 0.0,
        "--workers, --duration, --window must be positive"
    );
    ensure!(args.interval >= 1, "--interval must be at least 1 second");
    // Workers are marked gone after a lease without heartbeats: keep the baseline (when
    // they are silent) well inside it.
    let lease_seconds = (args.interval * 6).max(30);
    ensure!(args.baseline < f64::from(lease_seconds) / 2.0, "--baseline must stay below {} s", lease_seconds / 2);
    let (server, url, _admin_key) = start_server_with_env(
        config,
        &[
            ("HODEI_WORKER_HEARTBEAT_SECONDS", args.interval.to_string()),
            ("HODEI_WORKER_LEASE_SECONDS", lease_seconds.to_string()),
        ],
    )
    .await?;
    let pool = hodei_api::db::connect(config.require_database_url()?.expose(), 2).await?;
    let watch = CpuWatch::new(&pool, &server, Vec::new()).await?;
    let run_id = Uuid::now_v7().simple().to_string();

    let registering = Instant::now();
    let workers = register_simulated_workers(&url, &run_id, args.workers).await?;
    let registration_seconds = registering.elapsed().as_secs_f64();

    let before_baseline = watch.snapshot()?;
    tokio::time::sleep(Duration::from_secs_f64(args.baseline)).await;
    let after_baseline = watch.snapshot()?;
    let baseline = watch.shares(&before_baseline, &after_baseline);

    let interval = Duration::from_secs(args.interval.into());
    let duration = Duration::from_secs_f64(args.duration);
    let window = Duration::from_secs_f64(args.window);
    let windows = (args.duration / args.window).ceil() as usize;
    let start = tokio::time::Instant::now();
    let sampler = tokio::spawn({
        let watch = watch.clone();
        async move {
            let mut snapshots = Vec::with_capacity(windows + 1);
            for index in 0..=windows {
                tokio::time::sleep_until(start + window.mul_f64(index as f64).min(duration)).await;
                snapshots.push(watch.snapshot()?);
            }
            anyhow::Ok(snapshots)
        }
    });
    let mut beating = tokio::task::JoinSet::new();
    for worker in workers {
        let phase = interval.mul_f64(random_fraction()?);
        let url = url.clone();
        beating.spawn(async move { heartbeat_schedule(&url, &worker, start, phase, interval, duration).await });
    }
    let mut beats: Vec<Beat> = Vec::new();
    while let Some(worker_beats) = beating.join_next().await {
        beats.extend(worker_beats??);
    }
    let snapshots = sampler.await??;

    let alive: i64 = sqlx::query_scalar("select count(*) from workers where gone_at is null and starts_with(name, $1)")
        .bind(format!("sim-{run_id}-"))
        .fetch_one(&pool)
        .await?;
    drop(server);

    println!(
        "heartbeats: {workers} simulated workers, one heartbeat each every {interval} s at a random phase \
         ({rate:.0} heartbeats/s), for {duration} s\n  \
         registered {workers} workers in {registration_seconds:.1} s\n  \
         baseline, every worker registered and silent, {baseline_seconds} s: {baseline}",
        workers = args.workers,
        interval = args.interval,
        rate = args.workers as f64 / f64::from(args.interval),
        duration = args.duration,
        baseline_seconds = args.baseline,
    );
    println!(
        "  {:<12} {:>10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8} {:>8}",
        "window",
        "heartbeats",
        "errors",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "pg clus %",
        "pg db %",
        "serve %",
        "bench %"
    );
    let mut rows = Vec::with_capacity(windows);
    for index in 0..windows {
        let from = window.mul_f64(index as f64);
        let to = (from + window).min(duration);
        let in_window: Vec<&Beat> = beats.iter().filter(|beat| beat.due >= from && beat.due < to).collect();
        let errors = in_window.iter().filter(|beat| !beat.ok).count();
        let latency = Percentiles::of(in_window.iter().filter(|beat| beat.ok).map(|beat| beat.latency).collect());
        let cpu = match (snapshots.get(index), snapshots.get(index + 1)) {
            (Some(first), Some(last)) => Some(watch.shares(first, last)),
            _ => None,
        };
        println!(
            "  {:<12} {:>10} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.1} {:>10.1} {:>8.1} {:>8.1}",
            format!("{:.0}-{:.0} s", from.as_secs_f64(), to.as_secs_f64()),
            in_window.len(),
            errors,
            latency.p50,
            latency.p95,
            latency.p99,
            latency.max,
            cpu.and_then(|cpu| cpu.postgres_cluster).unwrap_or(f64::NAN),
            cpu.map_or(f64::NAN, |cpu| cpu.database_backends),
            cpu.map_or(f64::NAN, |cpu| cpu.server),
            cpu.map_or(f64::NAN, |cpu| cpu.bench),
        );
        rows.push(json!({
            "from_s": from.as_secs_f64(), "to_s": to.as_secs_f64(), "heartbeats": in_window.len(), "errors": errors,
            "latency_ms": latency, "cpu_percent_of_one_core": cpu,
        }));
    }
    let whole = match (snapshots.first(), snapshots.last()) {
        (Some(first), Some(last)) => Some(watch.shares(first, last)),
        _ => None,
    };
    let overall = Percentiles::of(beats.iter().filter(|beat| beat.ok).map(|beat| beat.latency).collect());
    let errors = beats.iter().filter(|beat| !beat.ok).count();
    let first_p99 = rows.first().and_then(|row| row["latency_ms"]["p99"].as_f64()).unwrap_or(f64::NAN);
    let last_p99 = rows.last().and_then(|row| row["latency_ms"]["p99"].as_f64()).unwrap_or(f64::NAN);
    let cluster_cpu = |row: Option<&serde_json::Value>| {
        row.and_then(|row| row["cpu_percent_of_one_core"]["postgres_cluster"].as_f64()).unwrap_or(f64::NAN)
    };
    let (first_cpu, last_cpu) = (cluster_cpu(rows.first()), cluster_cpu(rows.last()));
    let latency_flat = last_p99 <= 2.0 * first_p99;
    // CPU "grows" when the last window costs half as much again as the first, and more
    // than two points of a core (below that it is noise on this machine).
    let cpu_flat = !(last_cpu > 1.5 * first_cpu && last_cpu - first_cpu > 2.0);
    if let Some(whole) = whole {
        println!("  whole run: {whole}");
    }
    println!(
        "  all heartbeats: {overall}, errors {errors}; workers still registered at the end: {alive} of {}\n  \
         flat latency (p99 of the last window within 2x of the first: {last_p99:.2} vs {first_p99:.2} ms): {}\n  \
         flat database CPU (postgres cluster, last window vs first: {last_cpu:.1}% vs {first_cpu:.1}%): {}",
        args.workers,
        verdict(latency_flat),
        verdict(cpu_flat),
    );
    println!(
        "{}",
        json!({
            "bench": "heartbeats", "workers": args.workers, "interval_s": args.interval, "duration_s": args.duration,
            "registration_s": registration_seconds, "baseline_cpu_percent_of_one_core": baseline,
            "windows": rows, "whole_run_cpu_percent_of_one_core": whole, "heartbeat_ms": overall, "errors": errors,
            "workers_alive_at_end": alive, "latency_flat": latency_flat, "cpu_flat": cpu_flat,
        })
    );
    Ok(())
}

/// Registers `count` workers the way `hodei-worker run` does, 50 at a time.
async fn register_simulated_workers(url: &str, run_id: &str, count: usize) -> anyhow::Result<Vec<SimulatedWorker>> {
    let client = http_client()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(50));
    let mut registering = tokio::task::JoinSet::new();
    for index in 0..count {
        let (client, permits) = (client.clone(), permits.clone());
        let endpoint = format!("{url}/api/v1/workers/register");
        let body = json!({
            "name": format!("sim-{run_id}-{index}"),
            "pool": "default",
            "cpu_millis": 1000,
            "memory_mib": 1024,
            "slots": 1,
            "labels": {},
            "instance_id": null,
        });
        registering.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let response = client.post(endpoint).bearer_auth(BENCH_REGISTRATION_TOKEN).json(&body).send().await?;
            let status = response.status();
            if status.as_u16() != 201 {
                bail!("registering a worker: HTTP {status}: {}", response.text().await.unwrap_or_default());
            }
            let registered: serde_json::Value = response.json().await?;
            anyhow::Ok(SimulatedWorker {
                id: registered["worker_id"].as_str().context("no worker_id")?.to_owned(),
                token: registered["token"].as_str().context("no token")?.to_owned(),
            })
        });
    }
    let mut workers = Vec::with_capacity(count);
    while let Some(worker) = registering.join_next().await {
        workers.push(worker??);
    }
    Ok(workers)
}

/// One simulated worker's heartbeats, due at `start + phase + k * interval` until
/// `duration`, each measured from when it was due. Like a real worker it keeps its own
/// connection to the API.
async fn heartbeat_schedule(
    url: &str,
    worker: &SimulatedWorker,
    start: tokio::time::Instant,
    phase: Duration,
    interval: Duration,
    duration: Duration,
) -> anyhow::Result<Vec<Beat>> {
    let client = http_client()?;
    let endpoint = format!("{url}/api/v1/workers/{}/heartbeat", worker.id);
    let body = json!({"state": "idle"});
    let mut beats = Vec::new();
    let mut due = phase;
    while due < duration {
        tokio::time::sleep_until(start + due).await;
        let response = client.post(&endpoint).bearer_auth(&worker.token).json(&body).send().await;
        let ok = match response {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        beats.push(Beat { due, latency: (start + due).elapsed(), ok });
        due += interval;
    }
    Ok(beats)
}

// ---------------------------------------------------------------------------------------
// running

/// What this machine allows, from `/proc`.
#[derive(Debug, Clone, Copy)]
struct MachineLimits {
    /// Soft `RLIMIT_NOFILE` of this process (inherited by the server and the workers).
    open_files: Option<u64>,
    /// Soft `RLIMIT_NPROC` (not enforced for root).
    processes: Option<u64>,
    pid_max: Option<u64>,
    threads_max: Option<u64>,
    running_now: usize,
}

impl MachineLimits {
    fn read() -> anyhow::Result<Self> {
        let limits = std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
        // "Max open files            20000                20000                files"
        let soft = |name: &str| {
            limits.lines().find_map(|line| line.strip_prefix(name)?.split_whitespace().next()?.parse::<u64>().ok())
        };
        let number = |path: &str| std::fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
        Ok(Self {
            open_files: soft("Max open files"),
            processes: soft("Max processes"),
            pid_max: number("/proc/sys/kernel/pid_max"),
            threads_max: number("/proc/sys/kernel/threads-max"),
            running_now: all_pids()?.len(),
        })
    }
}

impl std::fmt::Display for MachineLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |value: Option<u64>| value.map_or_else(|| "unlimited".to_owned(), |value| value.to_string());
        write!(
            f,
            "ulimit -n {}, ulimit -u {}, pid_max {}, threads-max {}, processes now {}",
            show(self.open_files),
            show(self.processes),
            show(self.pid_max),
            show(self.threads_max),
            self.running_now
        )
    }
}

/// One probe request while the long jobs run.
#[derive(Debug)]
enum ProbeOutcome {
    Get(bool),
    List(bool),
    Submit(Option<Uuid>),
}

pub async fn running(args: RunningArgs, config: &Config) -> anyhow::Result<()> {
    ensure!(args.jobs > 0 && args.workers > 0 && args.slots > 0, "--jobs, --workers and --slots must be positive");
    let slots_per_worker = args.slots + args.spare_slots;
    ensure!(slots_per_worker <= 1024, "--slots + --spare-slots must be at most 1024 (a worker's maximum)");
    ensure!(args.workers * args.slots >= args.jobs, "--workers x --slots must hold --jobs");
    ensure!(args.probe_rate > 0.0 && args.probe_seconds > 0.0, "--probe-rate and --probe-seconds must be positive");

    // Each running job holds three files in its worker (the stdout and stderr pipes and a
    // pidfd: 3,037 open files were measured for 1,008 running jobs); reports are batched, so
    // the server needs only a few connections per worker. The limit is inherited by the
    // server and the workers.
    let limits = MachineLimits::read()?;
    println!("machine: {limits}");
    let worker_files = 3 * slots_per_worker as u64 + 256;
    if let Some(open_files) = limits.open_files {
        ensure!(
            open_files >= worker_files,
            "a worker with {slots_per_worker} slots needs about {worker_files} open files, but ulimit -n is \
             {open_files}: run the bench under `ulimit -n {worker_files}` (or more), or use fewer --slots"
        );
    }
    let processes_needed = (limits.running_now + args.jobs + 2000) as u64;
    for (name, limit) in [("kernel.pid_max", limits.pid_max), ("kernel.threads-max", limits.threads_max)] {
        if let Some(limit) = limit {
            ensure!(
                limit >= processes_needed,
                "{} jobs need about {processes_needed} processes but {name} is {limit}: lower --jobs",
                args.jobs
            );
        }
    }
    if limits.processes.is_some_and(|processes| processes < processes_needed) {
        eprintln!("warning: ulimit -u is below the {processes_needed} processes the jobs need (root is exempt)");
    }

    let (server, url, admin_key) = start_server_with_env(config, &[]).await?;
    let pool = hodei_api::db::connect(config.require_database_url()?.expose(), 2).await?;
    let fleet = WorkerFleet::start(
        &url,
        FleetSpec {
            workers: args.workers,
            slots: slots_per_worker,
            cpu_millis: hodei_core::job::MAX_CPU_MILLIS,
            memory_mib: hodei_core::job::MAX_MEMORY_MIB,
            noop: false,
        },
    )?;
    fleet.wait_registered(&pool).await?;
    let watch = CpuWatch::new(&pool, &server, fleet.pids()).await?;
    let client = http_client()?;
    let tenant_key = create_bench_tenant(&client, &url, &admin_key).await?;
    println!(
        "{} workers x {slots_per_worker} slots registered; worker logs in {}",
        args.workers,
        fleet.log_dir.display()
    );

    // The long jobs, in batches of 1000.
    let submitting = Instant::now();
    let cpu_before_ramp = watch.snapshot()?;
    let marker: BTreeMap<String, String> = BTreeMap::from([fleet.marker()]);
    let long_job = json!({
        "command": {"argv": ["sleep", args.sleep.to_string()], "env": marker,
                    "timeout_seconds": args.sleep + 600},
        "resources": {"cpu_millis": 1, "memory_mib": 1},
        "max_attempts": 1,
    });
    let mut ids: Vec<Uuid> = Vec::with_capacity(args.jobs);
    while ids.len() < args.jobs {
        let batch = (args.jobs - ids.len()).min(1000);
        let jobs: Vec<&serde_json::Value> = std::iter::repeat_n(&long_job, batch).collect();
        let response = client
            .post(format!("{url}/api/v1/jobs/batch"))
            .bearer_auth(&tenant_key)
            .json(&json!({ "jobs": jobs }))
            .send()
            .await?;
        let status = response.status();
        if status.as_u16() != 201 {
            bail!("batch submit: HTTP {status}: {}", response.text().await.unwrap_or_default());
        }
        let body: serde_json::Value = response.json().await?;
        for id in body["ids"].as_array().context("the batch reply has no ids")? {
            ids.push(id.as_str().context("an id is not a string")?.parse()?);
        }
    }
    let submit_seconds = submitting.elapsed().as_secs_f64();
    println!("submitted {} `sleep {}` jobs in {submit_seconds:.1} s", ids.len(), args.sleep);

    let ramp = wait_for_running(&pool, &ids, &args, &fleet.log_dir).await?;
    let cpu_after_ramp = watch.snapshot()?;
    let ramp_cpu = watch.shares(&cpu_before_ramp, &cpu_after_ramp);
    println!("all {} jobs running {:.1} s after the first submit; ramp-up CPU: {ramp_cpu}", ids.len(), ramp);

    // Probes, open loop, while everything runs.
    let probe_count = (args.probe_rate * args.probe_seconds) as usize;
    let probe_job = Arc::new(json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 1, "memory_mib": 1}}));
    let running_ids = Arc::new(ids.clone());
    let mut picks = Vec::with_capacity(probe_count);
    for _ in 0..probe_count {
        picks.push(((random_fraction()? * running_ids.len() as f64) as usize).min(running_ids.len() - 1));
    }
    let cpu_before_probes = watch.snapshot()?;
    let probes = open_loop(args.probe_rate, probe_count, |index| {
        let (client, url, key) = (client.clone(), url.clone(), tenant_key.clone());
        let (running_ids, probe_job) = (running_ids.clone(), probe_job.clone());
        let pick = picks[index];
        async move {
            match index % 3 {
                0 => {
                    let id = running_ids[pick];
                    let sent = client.get(format!("{url}/api/v1/jobs/{id}")).bearer_auth(key).send().await;
                    ProbeOutcome::Get(sent.is_ok_and(|response| response.status().is_success()))
                }
                1 => {
                    let sent = client.get(format!("{url}/api/v1/jobs?limit=50")).bearer_auth(key).send().await;
                    let ok = match sent {
                        Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
                        _ => false,
                    };
                    ProbeOutcome::List(ok)
                }
                _ => ProbeOutcome::Submit(submit_job(client, url, key, probe_job).await.ok()),
            }
        }
    })
    .await?;
    let cpu_after_probes = watch.snapshot()?;
    let probe_cpu = watch.shares(&cpu_before_probes, &cpu_after_probes);
    let still_running = state_counts(&pool, &ids).await?.get("running").copied().unwrap_or(0);

    let mut by_kind: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut all_probes = Vec::with_capacity(probes.len());
    let mut probe_errors = 0;
    let mut probe_ids = Vec::new();
    for probe in &probes {
        let (kind, ok) = match &probe.outcome {
            ProbeOutcome::Get(ok) => ("get_job", *ok),
            ProbeOutcome::List(ok) => ("list_jobs", *ok),
            ProbeOutcome::Submit(id) => {
                probe_ids.extend(*id);
                ("submit", id.is_some())
            }
        };
        if ok {
            by_kind.entry(kind).or_default().push(probe.latency);
            all_probes.push(probe.latency);
        } else {
            probe_errors += 1;
        }
    }
    let probe_finished = wait_for_all(&pool, &probe_ids, &["succeeded"], Duration::from_secs(120)).await;
    let probe_delays = job_delays(&pool, &probe_ids).await?;

    // Stop the server first (no new assignments), then the job processes while their
    // workers still reap them, then the workers.
    drop(server);
    let killed = fleet.shutdown().await?;

    let api = Percentiles::of(all_probes);
    let kinds: BTreeMap<&str, Percentiles> =
        by_kind.into_iter().map(|(kind, samples)| (kind, Percentiles::of(samples))).collect();
    let probe_started = Percentiles::of(probe_delays.started);
    let probe_assigned = Percentiles::of(probe_delays.assigned);
    let probe_succeeded = match &probe_finished {
        Ok(count) => *count,
        Err(error) => {
            eprintln!("probe jobs: {error:#}");
            0
        }
    };
    println!(
        "running: {jobs} `sleep {sleep}` jobs on {workers} workers x {slots_per_worker} slots; all running after {ramp:.1} s\n  \
         probes for {probe_seconds} s at {probe_rate}/s while they ran ({still_running} of {jobs} still running at the end):\n  \
         API ms, all probes:   {api}  errors {probe_errors}",
        jobs = args.jobs,
        sleep = args.sleep,
        workers = args.workers,
        probe_seconds = args.probe_seconds,
        probe_rate = args.probe_rate,
    );
    for (kind, latency) in &kinds {
        println!("    {kind:<18} {latency}");
    }
    println!(
        "  probe submits of `true`: {probe_succeeded} of {} succeeded\n    submit->assigned ms: {probe_assigned}\n    \
         submit->started ms:  {probe_started}\n  \
         CPU during the probes: {probe_cpu}\n  \
         target API p95 < 50 ms: {}; the scheduler kept assigning new work: {}\n  \
         cleanup: killed {killed} job processes, none left",
        probe_ids.len(),
        verdict(api.p95 < 50.0),
        verdict(probe_succeeded == probe_ids.len() && !probe_ids.is_empty()),
    );
    println!(
        "{}",
        json!({
            "bench": "running", "jobs": args.jobs, "workers": args.workers, "slots_per_worker": slots_per_worker,
            "sleep_s": args.sleep, "submit_s": submit_seconds, "all_running_after_s": ramp,
            "still_running_after_probes": still_running, "probe_rate": args.probe_rate, "probe_s": args.probe_seconds,
            "api_ms": api, "api_ms_by_kind": kinds, "probe_errors": probe_errors,
            "probe_submits": probe_ids.len(), "probe_submits_succeeded": probe_succeeded,
            "probe_submit_to_assigned_ms": probe_assigned, "probe_submit_to_started_ms": probe_started,
            "ramp_cpu_percent_of_one_core": ramp_cpu, "probe_cpu_percent_of_one_core": probe_cpu,
            "killed_job_processes": killed, "target_met": {"api_p95_lt_50ms": api.p95 < 50.0},
        })
    );
    Ok(())
}

/// Waits until every long job runs; returns the seconds since the first submit. Fails,
/// with what it saw, when some job ended or failed, when the running count stops growing
/// for a minute, or when waiting longer would let the jobs end during the probes.
async fn wait_for_running(pool: &PgPool, ids: &[Uuid], args: &RunningArgs, log_dir: &Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let give_up = Duration::from_secs_f64((args.sleep as f64 - args.probe_seconds - 10.0).max(10.0));
    let mut best = (0_i64, Instant::now());
    let mut last_report = Instant::now();
    loop {
        let counts = state_counts(pool, ids).await?;
        let running = counts.get("running").copied().unwrap_or(0);
        if running as usize == ids.len() {
            return Ok(started.elapsed().as_secs_f64());
        }
        if running > best.0 {
            best = (running, Instant::now());
        }
        let ended: i64 = counts
            .iter()
            .filter(|(state, _)| !matches!(state.as_str(), "queued" | "assigned" | "running"))
            .map(|(_, n)| n)
            .sum();
        let problem = if ended > 0 {
            Some("some long jobs left queued/assigned/running (failed or ended)")
        } else if best.1.elapsed() > Duration::from_secs(60) {
            Some("the running count has not grown for 60 s")
        } else if started.elapsed() > give_up {
            Some("the jobs would end before the probes: raise --sleep")
        } else {
            None
        };
        if let Some(problem) = problem {
            bail!(
                "{problem}: after {:.0} s, at most {} of {} jobs were running at once; now {counts:?}; worker logs in {}",
                started.elapsed().as_secs_f64(),
                best.0,
                ids.len(),
                log_dir.display()
            );
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            println!("  {:>5.0} s: {counts:?}", started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
