//! `hodei bench pool`: a static `local` pool from the configuration file — how long until
//! all its workers are ready, and how long an idle pool worker takes to be allocated to a
//! job (submit → assigned, from the job's own timestamps).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use crate::e2e::{create_bench_tenant, start_server_with_env};
use hodei_api::config::Config;

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
    let db = hodei_api::db::connect(config.require_database_url()?.expose(), 2).await?;
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

#[derive(Debug, Args)]
pub struct AutoscaleArgs {
    /// Rounds: each waits for the pool to be empty, submits one job and times the launch.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
}

/// Reaction of a dynamic pool: backlog → the provider's launch call (the member's attempt,
/// on the database clock), and backlog → the job started on the new worker.
pub async fn autoscale(args: AutoscaleArgs, config: &Config) -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!("hodei-bench-autoscale-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        "pools:\n  - id: elastic\n    kind: dynamic\n    min_size: 0\n    max_size: 4\n    \
         template: {slots: 1, cpu_millis: 1000, memory_mib: 256}\n    \
         scaling: {idle_seconds: 0, cooldown: {scale_out_seconds: 0, scale_in_seconds: 0}}\n",
    )?;
    let environment = [("HODEI_CONFIG", file.display().to_string())];
    let (_server, url, admin_key) = start_server_with_env(config, &environment).await?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let tenant_key = create_bench_tenant(&client, &url, &admin_key).await?;
    let db = hodei_api::db::connect(config.require_database_url()?.expose(), 2).await?;
    let members = async || -> anyhow::Result<Vec<serde_json::Value>> {
        let body: serde_json::Value = client
            .get(format!("{url}/api/v1/pools/elastic/workers"))
            .bearer_auth(&admin_key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(body["workers"].as_array().cloned().unwrap_or_default())
    };
    let (mut to_launch, mut to_start) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !members().await?.is_empty() {
            anyhow::ensure!(Instant::now() < deadline, "round {round}: the pool did not scale in to 0");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let body: serde_json::Value = client
            .post(format!("{url}/api/v1/jobs"))
            .bearer_auth(&tenant_key)
            .json(&json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 500, "memory_mib": 64}}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = body["id"].as_str().context("a job id")?.parse::<uuid::Uuid>()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let launched = loop {
            let found = members().await?.into_iter().find_map(|m| m["attempt_started_at"].as_str().map(str::to_owned));
            if let Some(at) = found {
                break at;
            }
            anyhow::ensure!(Instant::now() < deadline, "round {round}: no launch");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let (launch_ms, start_ms): (f64, Option<f64>) = loop {
            let row: (f64, Option<f64>) = sqlx::query_as(
                "select extract(epoch from $2::timestamptz - created_at)::float8 * 1000,
                        extract(epoch from started_at - created_at)::float8 * 1000
                 from jobs where id = $1",
            )
            .bind(id)
            .bind(&launched)
            .fetch_one(&db)
            .await?;
            if row.1.is_some() {
                break row;
            }
            anyhow::ensure!(Instant::now() < deadline, "round {round}: the job did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        to_launch.push(launch_ms);
        to_start.push(start_ms.unwrap_or_default());
    }
    let summary = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.95), values[values.len() - 1])
    };
    let (launch_p50, launch_p95, launch_max) = summary(&mut to_launch);
    let (start_p50, start_p95, start_max) = summary(&mut to_start);
    println!(
        "dynamic local pool at 0, {rounds} rounds of one job\n  \
         backlog → launch call        p50 {launch_p50:.0} ms  p95 {launch_p95:.0} ms  max {launch_max:.0} ms   (target p95 ≤ 1 s)\n  \
         backlog → started on the new worker  p50 {start_p50:.0} ms  p95 {start_p95:.0} ms  max {start_max:.0} ms",
        rounds = args.rounds,
    );
    println!(
        "{}",
        json!({"rounds": args.rounds, "launch_ms": {"p50": launch_p50, "p95": launch_p95, "max": launch_max},
               "started_ms": {"p50": start_p50, "p95": start_p95, "max": start_max}})
    );
    db.close().await;
    drop(_server);
    let _ = std::fs::remove_file(&file);
    Ok(())
}
