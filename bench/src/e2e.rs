//! `hodei-bench`: load generators that drive a real `hodei serve` over HTTP and report
//! throughput and latency percentiles. By default the benchmark starts its own server as
//! a child process against the configured database (use a scratch database: the jobs it
//! submits stay there); `--url` and `--admin-key` aim it at a running system instead.

use std::net::TcpListener;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tokio::sync::Mutex;

use crate::workers::{wait_for_all, FleetSpec, WorkerFleet};
use hodei_api::auth::generate_key;
use hodei_api::config::Config;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Job submission: single submits at a fixed rate, or batches as fast as they go.
    Submit(SubmitArgs),
    /// The queue engine in-process (no HTTP) through the scheduling cycle: enqueue,
    /// cycle+complete, dispatch at depth.
    /// Use a scratch database: it adds queues and millions of jobs.
    Engine(crate::engine::EngineArgs),
    /// End to end: a server, real `hodei-worker` processes, no-op jobs from batched submit
    /// to completed; throughput and submit→assigned / submit→started latency.
    E2e(E2eArgs),
    /// Submit→assigned/started latency of single no-op jobs at a steady rate, with idle
    /// capacity on real workers.
    Latency(crate::workers::LatencyArgs),
    /// Heartbeat latency and database CPU with many simulated workers, over time.
    Heartbeats(crate::workers::HeartbeatArgs),
    /// Many long jobs running at once on real workers: API latency and whether the
    /// scheduler keeps assigning new work meanwhile.
    Running(crate::workers::RunningArgs),
    /// A static `local` pool: time until all its workers are ready, and allocation latency
    /// of an idle pool worker to a job.
    Pool(crate::pools::PoolArgs),
    /// A dynamic `local` pool at 0: from a job appearing to the provider's launch call
    /// and to the job started on the new worker, round after round.
    Autoscale(crate::pools::AutoscaleArgs),
    /// `/metrics` on a large deployment (queues and workers written in SQL): how long a
    /// scrape takes.
    Scrape(crate::scrape::ScrapeArgs),
    /// The cost roll-up over many finished attempts (written in SQL), and month-long cost
    /// reports.
    Cost(crate::cost::CostArgs),
    /// What tenant quotas add to the scheduling cycle, at many tenants with quotas.
    Quotas(crate::quotas::QuotasArgs),
    /// List, filter and status reads with millions of jobs in the table (written in SQL).
    Reads(crate::reads::ReadsArgs),
    /// A steady stream of no-op jobs for a long time with a short retention: table and
    /// index sizes, dead rows and autovacuum runs over time.
    Sustain(crate::sustain::SustainArgs),
    /// Very many jobs running at once on simulated workers (100,000 by default): API
    /// latency under a probe, assignment of new work, heartbeats over time.
    Hold(crate::hold::HoldArgs),
}

#[derive(Debug, Args)]
pub struct E2eArgs {
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 8)]
    slots: usize,
    /// How the workers run jobs: `process` spawns `true` for each; `noop` runs nothing
    /// (`hodei-worker run --executor noop`), so the run measures the control plane alone.
    #[arg(long, value_enum, default_value_t = WorkerExecutor::Process)]
    executor: WorkerExecutor,
    /// Jobs run before the measured ones; they finish and the database is analyzed before
    /// the measured jobs are submitted.
    #[arg(long, default_value_t = 2000)]
    warmup_jobs: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkerExecutor {
    Process,
    Noop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubmitMode {
    Single,
    Batch,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[arg(long, value_enum, default_value_t = SubmitMode::Single)]
    mode: SubmitMode,
    /// Single mode: requests per second, sent open-loop on a fixed schedule.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Batch mode: concurrent clients, each sending one batch at a time.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Batch mode: jobs per batch (at most 1000).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Use a running server instead of starting one.
    #[arg(long, requires = "admin_key")]
    url: Option<String>,
    /// An admin key of the running server given with --url.
    #[arg(long)]
    admin_key: Option<String>,
}

pub async fn run(command: BenchCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        BenchCommand::Submit(args) => submit(args, config).await,
        BenchCommand::Engine(args) => crate::engine::run(args, config).await,
        BenchCommand::E2e(args) => end_to_end(args, config).await,
        BenchCommand::Latency(args) => crate::workers::latency(args, config).await,
        BenchCommand::Heartbeats(args) => crate::workers::heartbeats(args, config).await,
        BenchCommand::Running(args) => crate::workers::running(args, config).await,
        BenchCommand::Pool(args) => crate::pools::pool(args, config).await,
        BenchCommand::Autoscale(args) => crate::pools::autoscale(args, config).await,
        BenchCommand::Scrape(args) => crate::scrape::scrape(args, config).await,
        BenchCommand::Cost(args) => crate::cost::cost(args, config).await,
        BenchCommand::Quotas(args) => crate::quotas::quotas(args, config).await,
        BenchCommand::Reads(args) => crate::reads::reads(args, config).await,
        BenchCommand::Sustain(args) => crate::sustain::sustain(args, config).await,
        BenchCommand::Hold(args) => crate::hold::hold(args, config).await,
    }
}

/// A binary built beside this one (`hodei`, `hodei-worker`), with a clear error if it is
/// missing.
pub fn sibling_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(path.exists(), "{} not found: build it with `cargo build --release --bin {name}`", path.display());
    Ok(path)
}

/// A `hodei serve` child process, killed when dropped.
#[derive(Debug)]
pub struct ChildServer {
    _child: tokio::process::Child,
}

impl ChildServer {
    /// The server's process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self._child.id()
    }
}

/// The registration token the benchmark's own server and workers share.
pub const BENCH_REGISTRATION_TOKEN: &str = "hodei-bench-registration-token-0123456789";

async fn start_server(config: &Config) -> anyhow::Result<(ChildServer, String, String)> {
    start_server_with_env(config, &[]).await
}

/// `start_server`, with extra `HODEI_*` settings for the server (they win over the
/// benchmark's own environment, which the server otherwise inherits).
pub async fn start_server_with_env(
    config: &Config,
    extra_env: &[(&str, String)],
) -> anyhow::Result<(ChildServer, String, String)> {
    let database_url = config.require_database_url()?.expose().to_owned();
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let admin_key = generate_key()?.plaintext;
    let child = tokio::process::Command::new(sibling_binary("hodei")?)
        .arg("serve")
        .env("HODEI_WORKER_REGISTRATION_TOKEN", BENCH_REGISTRATION_TOKEN)
        .env("HODEI_DATABASE_URL", database_url)
        .env("HODEI_LISTEN", format!("127.0.0.1:{port}"))
        .env("HODEI_BOOTSTRAP_ADMIN_KEY", &admin_key)
        .env("HODEI_LOG_LEVEL", "warn")
        // Benchmarks that need workers run them as local processes.
        .env("HODEI_PROVIDERS_LOCAL_ENABLED", "true")
        .env_remove("HODEI_CONFIG")
        .envs(extra_env.iter().map(|(name, value)| (*name, value.as_str())))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting hodei serve")?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the server did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((ChildServer { _child: child }, url, admin_key))
}

pub async fn create_bench_tenant(client: &reqwest::Client, url: &str, admin_key: &str) -> anyhow::Result<String> {
    let name = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let response =
        client.post(format!("{url}/api/v1/tenants")).bearer_auth(admin_key).json(&json!({"name": name})).send().await?;
    if !response.status().is_success() {
        bail!("creating the bench tenant: {} {}", response.status(), response.text().await.unwrap_or_default());
    }
    let response = client.post(format!("{url}/api/v1/tenants/{name}/api-keys")).bearer_auth(admin_key).send().await?;
    if !response.status().is_success() {
        bail!("creating the bench key: {}", response.status());
    }
    let body: serde_json::Value = response.json().await?;
    body["key"].as_str().map(str::to_owned).context("the key response has no key")
}

async fn submit(args: SubmitArgs, config: &Config) -> anyhow::Result<()> {
    let (_server, url, admin_key) = match (&args.url, &args.admin_key) {
        (Some(url), Some(key)) => (None, url.trim_end_matches('/').to_owned(), key.clone()),
        _ => {
            let (server, url, key) = start_server(config).await?;
            (Some(server), url, key)
        }
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    let tenant_key = create_bench_tenant(&client, &url, &admin_key).await?;
    let report = match args.mode {
        SubmitMode::Single => single_open_loop(&client, &url, &tenant_key, &args).await?,
        SubmitMode::Batch => batch_closed_loop(&client, &url, &tenant_key, &args).await?,
    };
    println!("{report}");
    Ok(())
}

#[derive(Debug, Default)]
struct Samples {
    latencies: Vec<Duration>,
    errors: usize,
    jobs: usize,
}

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn summarize(title: &str, mut samples: Samples, measured: Duration) -> String {
    samples.latencies.sort();
    let seconds = measured.as_secs_f64();
    format!(
        "{title}\n  requests ok {ok}, errors {errors}, in {seconds:.1} s: {rps:.0} requests/s, {jps:.0} jobs/s\n  \
         latency ms: p50 {p50:.2}  p95 {p95:.2}  p99 {p99:.2}  max {max:.2}",
        ok = samples.latencies.len(),
        errors = samples.errors,
        rps = samples.latencies.len() as f64 / seconds,
        jps = samples.jobs as f64 / seconds,
        p50 = percentile(&samples.latencies, 50.0),
        p95 = percentile(&samples.latencies, 95.0),
        p99 = percentile(&samples.latencies, 99.0),
        max = percentile(&samples.latencies, 100.0),
    )
}

/// Sends single submits on a fixed schedule, whatever the server's speed, and measures
/// each from its scheduled send time (so a slow server cannot hide its queueing delay).
async fn single_open_loop(client: &reqwest::Client, url: &str, key: &str, args: &SubmitArgs) -> anyhow::Result<String> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let samples = Arc::new(Mutex::new(Samples::default()));
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let warmup_requests = (args.warmup * args.rate) as usize;
    let total = warmup_requests + (args.duration * args.rate) as usize;
    let body = json!({"command": {"argv": ["true"]}});
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for index in 0..total {
        let scheduled = start + interval.mul_f64(index as f64);
        tokio::time::sleep_until(scheduled).await;
        let (client, samples, body) = (client.clone(), samples.clone(), body.clone());
        let endpoint = format!("{url}/api/v1/jobs");
        let key = key.to_owned();
        tasks.push(tokio::spawn(async move {
            let result = client.post(endpoint).bearer_auth(key).json(&body).send().await;
            let elapsed = scheduled.elapsed();
            if index < warmup_requests {
                return;
            }
            let mut samples = samples.lock().await;
            match result {
                Ok(response) if response.status().as_u16() == 201 => {
                    samples.latencies.push(elapsed);
                    samples.jobs += 1;
                }
                _ => samples.errors += 1,
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let samples = std::mem::take(&mut *samples.lock().await);
    let title = format!(
        "single submit, open loop at {} requests/s for {} s (after {} s warm-up)",
        args.rate, args.duration, args.warmup
    );
    Ok(summarize(&title, samples, Duration::from_secs_f64(args.duration)))
}

/// `concurrency` clients each send batches back to back.
async fn batch_closed_loop(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    args: &SubmitArgs,
) -> anyhow::Result<String> {
    anyhow::ensure!((1..=1000).contains(&args.batch_size), "--batch-size must be 1-1000");
    let jobs: Vec<_> = (0..args.batch_size).map(|_| json!({"command": {"argv": ["true"]}})).collect();
    let body = Arc::new(serde_json::to_vec(&json!({ "jobs": jobs }))?);
    let samples = Arc::new(Mutex::new(Samples::default()));
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, samples, body) = (client.clone(), samples.clone(), body.clone());
        let endpoint = format!("{url}/api/v1/jobs/batch");
        let key = key.to_owned();
        let batch_size = args.batch_size;
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                let sent = Instant::now();
                let result = client
                    .post(&endpoint)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await;
                let ok = matches!(&result, Ok(response) if response.status().as_u16() == 201);
                if sent < measure_from || Instant::now() > stop_at {
                    continue;
                }
                let mut samples = samples.lock().await;
                if ok {
                    samples.latencies.push(sent.elapsed());
                    samples.jobs += batch_size;
                } else {
                    samples.errors += 1;
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let samples = std::mem::take(&mut *samples.lock().await);
    let title = format!(
        "batch submit, {} clients x {} jobs per batch for {} s (after {} s warm-up)",
        args.concurrency, args.batch_size, args.duration, args.warmup
    );
    Ok(summarize(&title, samples, Duration::from_secs_f64(args.duration)))
}

/// Submits `count` no-op jobs in batches of 1,000; their ids.
async fn submit_batches(
    client: &reqwest::Client,
    url: &str,
    tenant_key: &str,
    count: usize,
) -> anyhow::Result<Vec<uuid::Uuid>> {
    let mut ids: Vec<uuid::Uuid> = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
        let jobs: Vec<_> =
            chunk.iter().map(|_| json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 1000}})).collect();
        let response = client
            .post(format!("{url}/api/v1/jobs/batch"))
            .bearer_auth(tenant_key)
            .json(&json!({ "jobs": jobs }))
            .send()
            .await?
            .error_for_status()?;
        let body: serde_json::Value = response.json().await?;
        ids.extend(
            body["ids"].as_array().into_iter().flatten().filter_map(|id| id.as_str()?.parse::<uuid::Uuid>().ok()),
        );
    }
    Ok(ids)
}

async fn end_to_end(args: E2eArgs, config: &Config) -> anyhow::Result<()> {
    // The machine's own ceiling for no-op jobs: spawning `true` with as many at once as the
    // workers have slots, and nothing else running.
    let spawned = Instant::now();
    let spawns = if args.executor == WorkerExecutor::Process { 3000 } else { 0 };
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..spawns {
        if running.len() >= args.workers * args.slots {
            running.join_next().await;
        }
        running.spawn(tokio::process::Command::new("true").process_group(0).status());
    }
    while running.join_next().await.is_some() {}
    let spawn_rate = spawns as f64 / spawned.elapsed().as_secs_f64();

    let (server, url, admin_key) = start_server(config).await?;
    let pool = hodei_api::db::connect(config.require_database_url()?.expose(), 2).await?;
    let noop = args.executor == WorkerExecutor::Noop;
    let workers = WorkerFleet::start(&url, FleetSpec::sized(args.workers, args.slots, noop))?;
    workers.wait_registered(&pool).await?;
    let client = reqwest::Client::new();
    let tenant_key = create_bench_tenant(&client, &url, &admin_key).await?;

    // The warm-up, then the planner statistics a running system has (autovacuum analyzes a
    // table once a tenth of it changed; this machine's clusters run without it): plans
    // cached while the tables were nearly empty are made again.
    let warmed = submit_batches(&client, &url, &tenant_key, args.warmup_jobs).await?;
    wait_for_all(&pool, &warmed, &["succeeded"], Duration::from_secs(600)).await?;
    sqlx::query("analyze").execute(&pool).await?;

    let meter = crate::footprint::Meter::start(&pool, &url).await?;
    let ids = submit_batches(&client, &url, &tenant_key, args.jobs).await?;
    wait_for_all(&pool, &ids, &["succeeded"], Duration::from_secs(600)).await?;
    let window = meter.end(&pool).await?;
    // From the first submission to the last completion, by the database's clock.
    let seconds: f64 = sqlx::query_scalar(
        "select extract(epoch from max(finished_at) - min(created_at))::float8 from jobs where id = any($1)",
    )
    .bind(&ids)
    .fetch_one(&pool)
    .await?;
    let latency: E2eLatency = sqlx::query_as(
        "select percentile_cont(0.5) within group (order by a) as assigned_p50,
                percentile_cont(0.95) within group (order by a) as assigned_p95,
                percentile_cont(0.99) within group (order by a) as assigned_p99,
                percentile_cont(0.5) within group (order by s) as started_p50,
                percentile_cont(0.95) within group (order by s) as started_p95,
                percentile_cont(0.99) within group (order by s) as started_p99
         from (select extract(epoch from assigned_at - created_at)::float8 * 1000 as a,
                      extract(epoch from started_at - created_at)::float8 * 1000 as s
               from jobs where id = any($1)) t",
    )
    .bind(&ids)
    .fetch_one(&pool)
    .await?;
    let E2eLatency { assigned_p50, assigned_p95, assigned_p99, started_p50, started_p95, started_p99 } = latency;
    drop(workers);
    drop(server);
    let footprint = window.per_job(&pool, ids.len()).await?;
    let ceiling = match args.executor {
        WorkerExecutor::Process => format!(
            "spawning `true` alone on this machine, {} at once: {spawn_rate:.0} processes/s; end to end is {:.0}% of it",
            args.workers * args.slots,
            100.0 * ids.len() as f64 / seconds / spawn_rate
        ),
        WorkerExecutor::Noop => "no-op executor: the workers ran nothing (the control plane alone)".to_owned(),
    };
    println!(
        "end to end: {} no-op jobs, {} workers x {} slots, batched submit to all succeeded in {seconds:.1} s: {:.0} jobs/s\n  \
         submit->assigned ms: p50 {assigned_p50:.1}  p95 {assigned_p95:.1}  p99 {assigned_p99:.1}\n  \
         submit->started ms: p50 {started_p50:.1}  p95 {started_p95:.1}  p99 {started_p99:.1}\n  \
         (latencies include queueing behind the batch: this is a saturation run, not the steady-rate one)\n\
         {ceiling}\n{footprint}",
        ids.len(),
        args.workers,
        args.slots,
        ids.len() as f64 / seconds,
    );
    println!("{}", json!({"bench": "e2e", "jobs_per_second": ids.len() as f64 / seconds, "footprint": footprint}));
    Ok(())
}

/// Percentiles, in milliseconds, of the end-to-end run.
#[derive(Debug, sqlx::FromRow)]
struct E2eLatency {
    assigned_p50: f64,
    assigned_p95: f64,
    assigned_p99: f64,
    started_p50: f64,
    started_p95: f64,
    started_p99: f64,
}
