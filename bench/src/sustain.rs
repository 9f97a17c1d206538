//! `hodei-bench sustain`: a steady stream of no-op jobs for a long time, and what the
//! tables and their indexes become. Jobs are submitted in batches on a fixed schedule
//! (open loop), run by real `hodei-worker` processes with the no-op executor, and pruned
//! by the server's own retention loop with a short retention; every sample reports each
//! table's size (heap and indexes), live and dead rows, autovacuum runs so far, and the
//! jobs that succeeded since the last sample. Sizes that stop growing are the steady
//! state; sizes that grow with time are bloat (or a retention that does not keep up).
//! Autovacuum must be on in the benchmark's Postgres for the answer to mean anything.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

use crate::e2e::{create_bench_tenant, start_server_with_env};
use crate::workers::{FleetSpec, WorkerFleet};
use hodei_api::config::Config;

#[derive(Debug, Args)]
pub struct SustainArgs {
    /// Jobs per second, submitted in batches on a fixed schedule.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Jobs per batch request.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Minutes of load.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60.0)]
    sample_seconds: f64,
    /// How long succeeded jobs (and their events and logs) are kept, in minutes: the
    /// server's `retention.succeeded_hours` and `logs_hours`.
    #[arg(long, default_value_t = 5.0)]
    retention_minutes: f64,
    /// Seconds between the retention loop's passes (`retention.interval_seconds`).
    #[arg(long, default_value_t = 10)]
    retention_interval: u32,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 64)]
    slots: usize,
}

/// The tables a job writes.
const TABLES: [&str; 6] = ["jobs", "job_events", "ready_jobs", "worker_jobs", "job_attempts", "queue_activity"];

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
struct TableSample {
    table: String,
    heap_bytes: i64,
    index_bytes: i64,
    live_rows: i64,
    dead_rows: i64,
    autovacuums: i64,
}

#[derive(Debug, Clone, Serialize)]
struct Sample {
    minute: f64,
    succeeded_per_second: f64,
    submit_errors: usize,
    tables: Vec<TableSample>,
}

pub async fn sustain(args: SustainArgs, config: &Config) -> anyhow::Result<()> {
    ensure!(args.rate > 0.0 && args.minutes > 0.0 && args.batch > 0, "--rate, --minutes and --batch must be positive");
    ensure!(args.retention_minutes >= 1.0, "--retention-minutes must be at least 1");
    let config_file = std::env::temp_dir().join(format!("hodei-bench-sustain-{}.yaml", std::process::id()));
    let hours = args.retention_minutes / 60.0;
    std::fs::write(
        &config_file,
        format!(
            "retention:\n  succeeded_hours: {hours}\n  cancelled_hours: {hours}\n  logs_hours: {hours}\n  \
             idempotency_window_hours: {hours}\n  interval_seconds: {}\n",
            args.retention_interval
        ),
    )
    .with_context(|| format!("writing {}", config_file.display()))?;
    let (server, url, admin_key) =
        start_server_with_env(config, &[("HODEI_CONFIG", config_file.display().to_string())]).await?;
    let pool = hodei_api::db::connect(config.require_database_url()?.expose(), 2).await?;
    let autovacuum: String = sqlx::query_scalar("select current_setting('autovacuum')").fetch_one(&pool).await?;
    if autovacuum != "on" {
        eprintln!("autovacuum is {autovacuum} in this Postgres: dead rows will only be reclaimed by pruning");
    }
    let fleet = WorkerFleet::start(&url, FleetSpec::sized(args.workers, args.slots, true))?;
    fleet.wait_registered(&pool).await?;
    let client = reqwest::Client::new();
    let key = create_bench_tenant(&client, &url, &admin_key).await?;
    let body = json!({"jobs": vec![json!({"command": {"argv": ["true"]}}); args.batch]});

    println!(
        "sustain: {} no-op jobs/s in batches of {} for {} min, retention {} min, {} workers x {} slots (noop executor); autovacuum {autovacuum}",
        args.rate, args.batch, args.minutes, args.retention_minutes, args.workers, args.slots
    );
    let interval = Duration::from_secs_f64(args.batch as f64 / args.rate);
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.minutes * 60.0);
    let mut next_sample = started + Duration::from_secs_f64(args.sample_seconds);
    let mut samples = Vec::new();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut errors = 0;
    let mut succeeded_before = succeeded(&pool).await?;
    let mut sampled_at = Instant::now();
    let mut due = tokio::time::Instant::now();
    while Instant::now() < end {
        tokio::time::sleep_until(due).await;
        due += interval;
        let (client, url, key, body) = (client.clone(), url.clone(), key.clone(), body.clone());
        in_flight.spawn(async move {
            let response = client.post(format!("{url}/api/v1/jobs/batch")).bearer_auth(key).json(&body).send().await;
            response.is_ok_and(|r| r.status().as_u16() == 201)
        });
        while let Some(done) = in_flight.try_join_next() {
            errors += usize::from(!done.unwrap_or(false));
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs_f64(args.sample_seconds);
            let now_succeeded = succeeded(&pool).await?;
            let sample = Sample {
                minute: started.elapsed().as_secs_f64() / 60.0,
                succeeded_per_second: (now_succeeded - succeeded_before) as f64 / sampled_at.elapsed().as_secs_f64(),
                submit_errors: errors,
                tables: tables(&pool).await?,
            };
            succeeded_before = now_succeeded;
            sampled_at = Instant::now();
            print_sample(&sample);
            samples.push(sample);
        }
    }
    while let Some(done) = in_flight.join_next().await {
        errors += usize::from(!done.unwrap_or(false));
    }
    drop(fleet);
    drop(server);
    let _ = std::fs::remove_file(&config_file);
    println!(
        "{}",
        json!({"bench": "sustain", "rate": args.rate, "minutes": args.minutes,
        "retention_minutes": args.retention_minutes, "submit_errors": errors, "samples": samples})
    );
    Ok(())
}

/// Jobs that ever succeeded: the tenant's counter of finished jobs, which retention does
/// not lower (the jobs themselves are deleted).
async fn succeeded(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select count(*) from job_attempts where outcome = 'succeeded'").fetch_one(pool).await?)
}

async fn tables(pool: &PgPool) -> anyhow::Result<Vec<TableSample>> {
    Ok(sqlx::query_as(
        "select relname::text as table, pg_relation_size(relid) as heap_bytes, pg_indexes_size(relid) as index_bytes,
                n_live_tup as live_rows, n_dead_tup as dead_rows, autovacuum_count as autovacuums
         from pg_stat_user_tables where relname = any($1) order by array_position($1, relname::text)",
    )
    .bind(TABLES.map(str::to_owned).to_vec())
    .fetch_all(pool)
    .await?)
}

fn print_sample(sample: &Sample) {
    println!(
        "  minute {:5.1}: {:6.0} succeeded/s, {} submit errors",
        sample.minute, sample.succeeded_per_second, sample.submit_errors
    );
    for t in &sample.tables {
        println!(
            "    {:<15} heap {:>8.1} MiB  indexes {:>8.1} MiB  live {:>9}  dead {:>8}  autovacuums {}",
            t.table,
            t.heap_bytes as f64 / 1048576.0,
            t.index_bytes as f64 / 1048576.0,
            t.live_rows,
            t.dead_rows,
            t.autovacuums
        );
    }
}
