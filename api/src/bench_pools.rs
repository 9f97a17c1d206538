//! `hodei bench pool`: a static `local` pool from the configuration file — how long until
//! all its workers are ready, and how long an idle pool worker takes to be allocated to a
//! job (submit → assigned, from the job's own timestamps).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use crate::bench_support::{create_bench_tenant, start_server_with_env};
use crate::config::Config;

#[derive(Debug, Args)]
pub struct PoolArgs {
    /// Workers in the pool.
    #[arg(long, default_value_t = 50)]
    size: u32,
    /// Workers provisioned at once.
    #[arg(long, default_value_t = 5)]
    concurrency: u32,
    /// Jobs submitted one at a time to idle workers, for the allocation latency.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Submissions per second (far below the pool's capacity, so a worker is always idle).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
}

pub async fn pool(args: PoolArgs, config: &Config) -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!("hodei-bench-pool-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        format!(
            "pools:\n  - id: bench\n    size: {}\n    template: {{slots: 1, cpu_millis: 1000, memory_mib: 256}}\n    \
             provisioning: {{concurrency: {}}}\n",
            args.size, args.concurrency
        ),
    )?;
    let spawned = Instant::now();
    let environment = [("HODEI_CONFIG", file.display().to_string())];
    let (_server, url, admin_key) = start_server_with_env(config, &environment).await?;
    let serving = spawned.elapsed();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;

    // Time to a full pool, from the moment the server process was started.
    let mut first_ready = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let all_ready = loop {
        let pool: serde_json::Value = client
            .get(format!("{url}/api/v1/pools/bench"))
            .bearer_auth(&admin_key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let ready = pool["workers"]["ready"].as_u64().unwrap_or(0);
        if ready > 0 && first_ready.is_none() {
            first_ready = Some(spawned.elapsed());
        }
        if ready == u64::from(args.size) {
            break spawned.elapsed();
        }
        if Instant::now() > deadline {
            bail!("the pool did not fill within 10 minutes: {pool}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Allocation: single jobs at a slow steady rate; every one finds idle workers.
    let tenant_key = create_bench_tenant(&client, &url, &admin_key).await?;
    let db = crate::db::connect(config.require_database_url()?.expose(), 2).await?;
    let mut ids = Vec::with_capacity(args.jobs);
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let start = tokio::time::Instant::now();
    for index in 0..args.jobs {
        tokio::time::sleep_until(start + interval * index as u32).await;
        let body: serde_json::Value = client
            .post(format!("{url}/api/v1/jobs"))
            .bearer_auth(&tenant_key)
            .json(&json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 500, "memory_mib": 64}}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        ids.push(body["id"].as_str().context("a job id")?.parse::<uuid::Uuid>()?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: i64 = sqlx::query_scalar("select count(*) from jobs where id = any($1) and state = 'succeeded'")
            .bind(&ids)
            .fetch_one(&db)
            .await?;
        if done as usize == ids.len() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {done} of {} jobs succeeded", ids.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (p50, p95, p99, max): (f64, f64, f64, f64) = sqlx::query_as(
        "select percentile_cont(0.5) within group (order by a), percentile_cont(0.95) within group (order by a),
                percentile_cont(0.99) within group (order by a), max(a)
         from (select extract(epoch from assigned_at - created_at)::float8 * 1000 as a
               from jobs where id = any($1)) t",
    )
    .bind(&ids)
    .fetch_one(&db)
    .await?;
    let workers_used: i64 = sqlx::query_scalar("select count(distinct worker_id) from jobs where id = any($1)")
        .bind(&ids)
        .fetch_one(&db)
        .await?;

    println!(
        "static local pool of {size} (provisioning concurrency {concurrency})\n  \
         server ready        {serving:.2?}\n  \
         first worker ready  {first:.2?}\n  \
         all {size} ready       {all:.2?}   (the seed asks < 5 min for 50)\n\
         allocation of an idle pool worker, {jobs} jobs at {rate}/s over {workers_used} workers (submit → assigned)\n  \
         p50 {p50:.2} ms  p95 {p95:.2} ms  p99 {p99:.2} ms  max {max:.2} ms   (the seed asks < 10 ms)",
        size = args.size,
        concurrency = args.concurrency,
        first = first_ready.unwrap_or(all_ready),
        all = all_ready,
        jobs = args.jobs,
        rate = args.rate,
    );
    println!(
        "{}",
        json!({"pool_size": args.size, "concurrency": args.concurrency, "ready_seconds": all_ready.as_secs_f64(),
               "allocation_ms": {"p50": p50, "p95": p95, "p99": p99, "max": max}})
    );
    db.close().await;
    drop(_server);
    let _ = std::fs::remove_file(&file);
    Ok(())
}
