//! `hodei-bench hold`: a very large number of jobs running at once, on simulated workers.
//! Workers are registered over HTTP and speak the worker protocol as `hodei-worker` does
//! (long-poll for assignments, report each start, heartbeat on schedule) but run nothing
//! and never finish, so the jobs stay running. Once all are running, a probe of API
//! requests (get a running job, list 50 jobs, submit a job) runs open loop, while the
//! heartbeats are measured per window; the probe's own jobs must be assigned and started
//! meanwhile (the scheduler keeps assigning with every running job in the tables).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use serde_json::json;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::e2e::{create_bench_tenant, percentile, start_server_with_env, BENCH_REGISTRATION_TOKEN};
use hodei_api::config::Config;

#[derive(Debug, Args)]
pub struct HoldArgs {
    /// Jobs held running at once.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Simulated workers; the jobs are spread over them.
    #[arg(long, default_value_t = 100)]
    workers: usize,
    /// Heartbeat interval, seconds (the server's `worker_heartbeat_seconds`).
    #[arg(long, default_value_t = 5)]
    heartbeat: u32,
    /// Probe requests per second.
    #[arg(long, default_value_t = 30.0)]
    probe_rate: f64,
    /// Seconds of probing.
    #[arg(long, default_value_t = 30.0)]
    probe_seconds: f64,
    /// Seconds per reported heartbeat window.
    #[arg(long, default_value_t = 10.0)]
    window: f64,
}

/// Every job asks for this little, so a worker's capacity is its slots.
const JOB: &str = r#"{"command": {"argv": ["true"]}, "resources": {"cpu_millis": 1, "memory_mib": 1}}"#;

#[derive(Debug, Clone)]
struct Simulated {
    id: String,
    token: String,
}

/// A heartbeat: when it was sent (since the start), its latency, whether it was accepted.
type Beat = (Duration, Duration, bool);

pub async fn hold(args: HoldArgs, config: &Config) -> anyhow::Result<()> {
    ensure!(
        args.jobs > 0 && args.workers > 0 && args.probe_rate > 0.0,
        "--jobs, --workers, --probe-rate must be positive"
    );
    let lease = (args.heartbeat * 12).max(60);
    let (server, url, admin_key) = start_server_with_env(
        config,
        &[
            ("HODEI_WORKER_HEARTBEAT_SECONDS", args.heartbeat.to_string()),
            ("HODEI_WORKER_LEASE_SECONDS", lease.to_string()),
        ],
    )
    .await?;
    let pool = hodei_api::db::connect(config.require_database_url()?.expose(), 2).await?;
    let probe_jobs = (args.probe_rate * args.probe_seconds / 3.0).ceil() as usize + 1;
    // Room for every held job and every probe job.
    let slots = (args.jobs + probe_jobs).div_ceil(args.workers) + 1;
    let client = reqwest::Client::new();
    let mut workers = Vec::with_capacity(args.workers);
    for index in 0..args.workers {
        let body = json!({"name": format!("hold-{index}"), "pool": "default", "slots": slots,
                          "cpu_millis": slots, "memory_mib": slots, "labels": {}, "instance_id": null});
        let response = client
            .post(format!("{url}/api/v1/workers/register"))
            .bearer_auth(BENCH_REGISTRATION_TOKEN)
            .json(&body)
            .send()
            .await?;
        if response.status().as_u16() != 201 {
            bail!("registering a worker: HTTP {}: {}", response.status(), response.text().await.unwrap_or_default());
        }
        let registered: serde_json::Value = response.json().await?;
        workers.push(Simulated {
            id: registered["worker_id"].as_str().context("no worker_id")?.to_owned(),
            token: registered["token"].as_str().context("no token")?.to_owned(),
        });
    }
    let started_at = tokio::time::Instant::now();
    let beats: Arc<Mutex<Vec<Beat>>> = Arc::default();
    let mut agents = tokio::task::JoinSet::new();
    for (index, worker) in workers.iter().enumerate() {
        let phase = Duration::from_secs_f64(f64::from(args.heartbeat) * index as f64 / args.workers as f64);
        agents.spawn(heartbeats(url.clone(), worker.clone(), started_at, phase, args.heartbeat, beats.clone()));
        agents.spawn(take_and_start(url.clone(), worker.clone()));
    }

    let tenant_key = create_bench_tenant(&client, &url, &admin_key).await?;
    let filling = Instant::now();
    let job: serde_json::Value = serde_json::from_str(JOB)?;
    let mut held: Vec<Uuid> = Vec::with_capacity(args.jobs);
    while held.len() < args.jobs {
        let n = (args.jobs - held.len()).min(1000);
        let reply: serde_json::Value = client
            .post(format!("{url}/api/v1/jobs/batch"))
            .bearer_auth(&tenant_key)
            .json(&json!({"jobs": vec![job.clone(); n]}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        held.extend(reply["ids"].as_array().into_iter().flatten().filter_map(|id| id.as_str()?.parse::<Uuid>().ok()));
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    let running = loop {
        let running: i64 =
            sqlx::query_scalar("select count(*) from worker_jobs where started").fetch_one(&pool).await?;
        if running as usize >= args.jobs {
            break running;
        }
        ensure!(Instant::now() < deadline, "only {running} of {} jobs running after 900 s", args.jobs);
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let fill_seconds = filling.elapsed().as_secs_f64();
    println!(
        "hold: {running} jobs running on {} simulated workers x {slots} slots after {fill_seconds:.1} s",
        args.workers
    );

    // The probe.
    let probe_start = started_at.elapsed();
    let watch_from = crate::footprint::Meter::start(&pool, &url).await?;
    let interval = Duration::from_secs_f64(1.0 / args.probe_rate);
    let count = (args.probe_rate * args.probe_seconds) as usize;
    let held = Arc::new(held);
    let mut probes = tokio::task::JoinSet::new();
    let begin = tokio::time::Instant::now();
    for index in 0..count {
        let due = begin + interval.mul_f64(index as f64);
        tokio::time::sleep_until(due).await;
        let (client, url, key, held, job) =
            (client.clone(), url.clone(), tenant_key.clone(), held.clone(), job.clone());
        probes.spawn(async move {
            let request = match index % 3 {
                0 => client.get(format!("{url}/api/v1/jobs/{}", held[index * 7919 % held.len()])),
                1 => client.get(format!("{url}/api/v1/jobs?limit=50")),
                _ => client.post(format!("{url}/api/v1/jobs")).json(&job),
            };
            let response = request.bearer_auth(key).send().await;
            let latency = due.elapsed();
            let submitted = match response {
                Ok(r) if r.status().is_success() => {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    Ok((index % 3 == 2).then(|| body["id"].as_str().and_then(|id| id.parse::<Uuid>().ok())).flatten())
                }
                Ok(r) => Err(format!("HTTP {}", r.status())),
                Err(error) => Err(error.to_string()),
            };
            (latency, submitted)
        });
    }
    let mut latencies = Vec::with_capacity(count);
    let mut probe_ids = Vec::new();
    let mut errors = Vec::new();
    while let Some(done) = probes.join_next().await {
        let (latency, outcome) = done?;
        latencies.push(latency);
        match outcome {
            Ok(Some(id)) => probe_ids.push(id),
            Ok(None) => {}
            Err(error) => errors.push(error),
        }
    }
    let probe_end = started_at.elapsed();
    let started_deadline = Instant::now() + Duration::from_secs(60);
    let probes_started = loop {
        let started: i64 =
            sqlx::query_scalar("select count(*) from jobs where id = any($1) and started_at is not null")
                .bind(&probe_ids)
                .fetch_one(&pool)
                .await?;
        if started as usize == probe_ids.len() || Instant::now() > started_deadline {
            break started;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let window = watch_from.end(&pool).await?;
    let delays: Vec<(f64, f64)> = sqlx::query_as(
        "select extract(epoch from assigned_at - created_at)::float8 * 1000, extract(epoch from started_at - created_at)::float8 * 1000
         from jobs where id = any($1) and started_at is not null",
    )
    .bind(&probe_ids)
    .fetch_all(&pool)
    .await?;
    agents.abort_all();
    drop(server);
    let footprint = window.per_job(&pool, count).await?;

    let cpu = footprint.postgres_cpu_percent.map_or("n/a".to_owned(), |percent| format!("{percent:.0}%"));
    latencies.sort();
    let ms = |p: f64| percentile(&latencies, p);
    let mut assigned: Vec<Duration> =
        delays.iter().map(|(a, _)| Duration::from_secs_f64(a.max(0.0) / 1000.0)).collect();
    let mut started: Vec<Duration> = delays.iter().map(|(_, s)| Duration::from_secs_f64(s.max(0.0) / 1000.0)).collect();
    assigned.sort();
    started.sort();
    println!(
        "probe: {count} requests at {}/s over {} s (get a running job, list 50, submit), {} errors{}\n  \
         API ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}   target p95 < 50 ms: {}\n  \
         probe jobs started: {probes_started} of {}; submit->assigned p50 {:.1} p95 {:.1} ms; submit->started p50 {:.1} p95 {:.1} ms\n  \
         Postgres during the probe: {cpu} of one core",
        args.probe_rate,
        args.probe_seconds,
        errors.len(),
        errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        ms(50.0),
        ms(95.0),
        ms(99.0),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        if ms(95.0) < 50.0 { "met" } else { "MISSED" },
        probe_ids.len(),
        percentile(&assigned, 50.0),
        percentile(&assigned, 95.0),
        percentile(&started, 50.0),
        percentile(&started, 95.0),
    );

    // Heartbeats per window, from when the jobs were all running.
    let beats = beats.lock().await.clone();
    println!(
        "heartbeats ({} workers every {} s), by window from the start of the probe:",
        args.workers, args.heartbeat
    );
    let window = Duration::from_secs_f64(args.window);
    let mut from = probe_start;
    let mut rows = Vec::new();
    while from < probe_end {
        let mut in_window: Vec<Duration> =
            beats.iter().filter(|(at, _, _)| *at >= from && *at < from + window).map(|(_, l, _)| *l).collect();
        let failed = beats.iter().filter(|(at, _, ok)| *at >= from && *at < from + window && !ok).count();
        in_window.sort();
        let p99 = percentile(&in_window, 99.0);
        println!(
            "  {:5.0}-{:<5.0} s: {} beats, p50 {:.1} ms, p99 {:.1} ms, {failed} refused",
            from.as_secs_f64(),
            (from + window).as_secs_f64(),
            in_window.len(),
            percentile(&in_window, 50.0),
            p99
        );
        rows.push(json!({"from_s": from.as_secs_f64(), "beats": in_window.len(), "p99_ms": p99, "refused": failed}));
        from += window;
    }
    println!(
        "{}",
        json!({"bench": "hold", "jobs": args.jobs, "running": running, "workers": args.workers, "slots": slots,
               "fill_seconds": fill_seconds, "probe_p50_ms": ms(50.0), "probe_p95_ms": ms(95.0), "probe_p99_ms": ms(99.0),
               "probe_errors": errors.len(), "probe_jobs": probe_ids.len(), "probe_jobs_started": probes_started,
               "heartbeat_windows": rows, "footprint": footprint})
    );
    Ok(())
}

/// A simulated worker's heartbeats, every `interval` seconds from `start + phase`.
async fn heartbeats(
    url: String,
    worker: Simulated,
    start: tokio::time::Instant,
    phase: Duration,
    interval: u32,
    beats: Arc<Mutex<Vec<Beat>>>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let endpoint = format!("{url}/api/v1/workers/{}/heartbeat", worker.id);
    let mut due = phase;
    loop {
        tokio::time::sleep_until(start + due).await;
        let response = client.post(&endpoint).bearer_auth(&worker.token).json(&json!({"state": "busy"})).send().await;
        let ok = match response {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        beats.lock().await.push((due, (start + due).elapsed(), ok));
        due += Duration::from_secs(interval.into());
    }
}

/// A simulated worker's agent: takes its assignments and reports each started, and never
/// finishes one.
async fn take_and_start(url: String, worker: Simulated) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    loop {
        let reply: serde_json::Value = client
            .get(format!("{url}/api/v1/workers/{}/assignments?wait_seconds=5", worker.id))
            .bearer_auth(&worker.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let started: Vec<serde_json::Value> = reply["assignments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| json!({"job_id": a["job_id"], "attempt": a["attempt"]}))
            .collect();
        for chunk in started.chunks(hodei_protocol::MAX_REPORTS) {
            client
                .post(format!("{url}/api/v1/workers/{}/reports", worker.id))
                .bearer_auth(&worker.token)
                .json(&json!({"started": chunk, "finished": []}))
                .send()
                .await?
                .error_for_status()?;
        }
    }
}
