//! `hodei-bench scrape`: how long `/metrics` takes to answer on a large deployment. It
//! starts `hodei serve`, writes `--queues` queues (each with recent dispatches, so the
//! windowed percentiles have work to do) and `--workers` live workers directly in SQL, then
//! times `--scrapes` scrapes one after the other. Leaves its rows in the scratch database
//! (a new run replaces them).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hodei_api::config::Config;
use hodei_api::db;

use crate::e2e::{percentile, start_server_with_env};

#[derive(Debug, Args)]
pub struct ScrapeArgs {
    #[arg(long, default_value_t = 1000)]
    queues: usize,
    #[arg(long, default_value_t = 10_000)]
    workers: usize,
    /// Pools the workers are spread over.
    #[arg(long, default_value_t = 20)]
    pools: usize,
    /// Dispatch records per queue in the window (each with 10 waits).
    #[arg(long, default_value_t = 10)]
    dispatches_per_queue: usize,
    #[arg(long, default_value_t = 50)]
    scrapes: usize,
}

pub async fn scrape(args: ScrapeArgs, config: &Config) -> anyhow::Result<()> {
    let (_server, url, _admin_key) = start_server_with_env(config, &[]).await?;
    let database_url = config.require_database_url()?.expose().to_owned();
    let pool = db::connect(&database_url, 2).await?;
    let mut transaction = pool.begin().await?;
    sqlx::query("delete from workers where pool like 'scrape-bench-%'").execute(&mut *transaction).await?;
    sqlx::query("delete from queue_activity where queue like 'scrape-bench-%'").execute(&mut *transaction).await?;
    sqlx::query("delete from queues where name like 'scrape-bench-%'").execute(&mut *transaction).await?;
    sqlx::query(
        "insert into queues (name, tier) select format('scrape-bench-%s', lpad(i::text, 5, '0')), 1
         from generate_series(1, $1) as i",
    )
    .bind(args.queues as i32)
    .execute(&mut *transaction)
    .await
    .context("inserting queues")?;
    sqlx::query(
        "insert into queue_activity (queue, kind, jobs, waits_ms, sla_breaches)
         select format('scrape-bench-%s', lpad(q::text, 5, '0')), 'dispatched', 10,
                array(select (random() * 5000)::int8 from generate_series(1, 10)), 0
         from generate_series(1, $1) as q, generate_series(1, $2) as d",
    )
    .bind(args.queues as i32)
    .bind(args.dispatches_per_queue as i32)
    .execute(&mut *transaction)
    .await
    .context("inserting queue activity")?;
    // Live workers that never heartbeat: their last heartbeat is set in the future, so the
    // lease reaper leaves them alone for the run.
    sqlx::query(
        "insert into workers (id, name, pool, state, cpu_millis, memory_mib, slots, token_hash, last_heartbeat_at)
         select gen_random_uuid(), format('scrape-bench-%s', i), format('scrape-bench-%s', i % $2), 'idle',
                1000, 1024, 1, sha256(convert_to(format('scrape-bench-%s-%s', i, random()), 'UTF8')),
                now() + interval '1 day'
         from generate_series(1, $1) as i",
    )
    .bind(args.workers as i32)
    .bind(args.pools.max(1) as i32)
    .execute(&mut *transaction)
    .await
    .context("inserting workers")?;
    transaction.commit().await?;
    sqlx::query("analyze queues, queue_activity, workers").execute(&pool).await?;

    let client = reqwest::Client::new();
    let mut samples = Vec::with_capacity(args.scrapes);
    let mut size = 0;
    for round in 0..args.scrapes + 3 {
        let started = Instant::now();
        let response = client.get(format!("{url}/metrics")).send().await?;
        if !response.status().is_success() {
            bail!("scrape answered {}", response.status());
        }
        let body = response.text().await?;
        let took = started.elapsed();
        size = body.len();
        // The first three warm the connection and the database's caches.
        if round >= 3 {
            samples.push(took);
        }
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() * 1000.0 / samples.len().max(1) as f64;
    println!(
        "scrape: {} queues, {} workers in {} pools: {} scrapes of {} KiB, median {:.1} ms, p95 {:.1} ms, max {:.1} ms, mean {:.1} ms",
        args.queues,
        args.workers,
        args.pools,
        samples.len(),
        size / 1024,
        percentile(&samples, 50.0),
        percentile(&samples, 95.0),
        percentile(&samples, 100.0),
        mean
    );
    Ok(())
}
