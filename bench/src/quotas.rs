//! `hodei-bench quotas`: what tenant quotas cost the scheduling cycle. `--tenants` tenants
//! each hold `--held` running attempts (so usage is summed over real holdings); every round
//! queues one job for each of `--batch` tenants, registers a free worker with room for
//! all of them, and times one scheduling cycle (`loops::Scheduler::tick`, the one `hodei
//! serve` runs). Rounds alternate between no quotas at all and a (non-binding) quota for
//! every tenant, so both do the same placement and the ratio of their medians is the
//! quota check's cost; a last set of rounds makes a tenth of the tenants saturated, to
//! time the path that skips them. Use a scratch database: it adds tenants and jobs.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use hodei_api::config::Config;
use hodei_api::db;
use hodei_api::loops::Scheduler;
use hodei_api::store::assignment::CycleLimits;
use hodei_api::store::enqueue::{self, SubmitOutcome};
use hodei_api::store::jobs::Submitter;
use hodei_api::store::{queues, quotas, workers};
use hodei_core::ordering::PolicyRegistry;
use hodei_core::queue::QueueSettings;
use hodei_core::{JobSpec, ValidJob};
use sqlx::PgPool;
use uuid::Uuid;

use crate::e2e::percentile;

#[derive(Debug, Args)]
pub struct QuotasArgs {
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// Running attempts each tenant holds throughout.
    #[arg(long, default_value_t = 2)]
    held: usize,
    /// Jobs per cycle, one per tenant (at most `--tenants`).
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Timed cycles per mode.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
}

const QUEUE: &str = "quota-bench";

fn job() -> anyhow::Result<ValidJob> {
    let spec = serde_json::json!({"queue": QUEUE, "command": {"argv": ["true"]}, "resources": {"cpu_millis": 100}});
    Ok(serde_json::from_value::<JobSpec>(spec)?.validate(Utc::now())?)
}

async fn submit_each(pool: &PgPool, tenants: &[(Uuid, String)], jobs: usize) -> anyhow::Result<()> {
    let registry = PolicyRegistry::shipped();
    let settings = enqueue::QueueSettingsCache::disabled();
    let batch = vec![job()?; jobs];
    let mut connection = pool.acquire().await?;
    for (id, name) in tenants {
        let context = enqueue::SubmitContext { registry: &registry, settings: &settings };
        let submitter = Submitter { tenant_id: *id, tenant_name: name, traceparent: None };
        match enqueue::submit(&mut connection, context, submitter, &batch, None, false).await? {
            SubmitOutcome::Created { .. } => {}
            other => anyhow::bail!("submission not created: {other:?}"),
        }
    }
    Ok(())
}

async fn worker(pool: &PgPool, slots: usize) -> anyhow::Result<Uuid> {
    let (labels, token) = (Default::default(), Uuid::now_v7());
    let worker = workers::NewWorker {
        name: "quota-bench",
        pool: "default",
        cpu_millis: i32::MAX,
        memory_mib: i32::MAX,
        slots: slots as i32,
        labels: &labels,
        instance_id: None,
        token_hash: token.as_bytes(),
    };
    Ok(workers::register(pool, &worker).await?.id)
}

/// The quotas of a mode: none; a non-binding one for every tenant; or that, with every
/// tenth tenant's CPU quota at what it holds (saturated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    On,
    Saturating,
}

/// Quotas change rarely in a deployment; here they change every round, so the table is
/// vacuumed after each change, as autovacuum would keep a stable one.
async fn set_mode(pool: &PgPool, mode: Mode, tenants: &[(Uuid, String)], held_cpu: i64) -> anyhow::Result<()> {
    sqlx::query("delete from tenant_quotas").execute(pool).await?;
    if mode != Mode::Off {
        write_quotas(pool, mode, tenants, held_cpu).await?;
    }
    sqlx::query("vacuum analyze tenant_quotas").execute(pool).await?;
    Ok(())
}

async fn write_quotas(pool: &PgPool, mode: Mode, tenants: &[(Uuid, String)], held_cpu: i64) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = tenants.iter().map(|(id, _)| *id).collect();
    let cpu: Vec<i64> = (0..tenants.len())
        .map(|i| if mode == Mode::Saturating && i % 10 == 0 { held_cpu } else { 1_000_000_000 })
        .collect();
    sqlx::query(
        "insert into tenant_quotas (tenant_id, cpu_millis, max_concurrent_jobs)
         select id, cpu, 1000000 from unnest($1::uuid[], $2::int8[]) as q(id, cpu)",
    )
    .bind(&ids)
    .bind(&cpu)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn quotas(args: QuotasArgs, config: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch <= args.tenants, "--batch must be at most --tenants");
    let database_url = config.require_database_url()?.expose().to_owned();
    let pool = db::connect(&database_url, 4).await?;
    db::migrate(&pool).await?;
    // A clean slate for this benchmark's own rows.
    sqlx::query("update workers set gone_at = now() where name = 'quota-bench' and gone_at is null")
        .execute(&pool)
        .await?;
    sqlx::query("delete from worker_jobs").execute(&pool).await?;
    sqlx::query("delete from ready_jobs where queue = $1").bind(QUEUE).execute(&pool).await?;
    let retry = queues::RetrySettings { retry_base_seconds: 1.0, retry_max_seconds: 60.0 };
    queues::upsert(&pool, &QueueSettings::with_policy(QUEUE, "fifo"), retry).await.context("the benchmark's queue")?;
    quotas::write_settings(&pool, &quotas::TenancySettings { burst_enabled: false, ..Default::default() }).await?;
    let tenants: Vec<(Uuid, String)> = sqlx::query_as(
        "insert into tenants (id, name) select gen_random_uuid(), format('quota-bench-%s', i)
         from generate_series(1, $1) as i
         on conflict (name) do update set name = excluded.name returning id, name",
    )
    .bind(args.tenants as i64)
    .fetch_all(&pool)
    .await?;

    // The holdings: every tenant's `held` jobs on one worker that they fill.
    let started = Instant::now();
    submit_each(&pool, &tenants, args.held).await?;
    worker(&pool, args.tenants * args.held).await?;
    let background = Scheduler { limits: CycleLimits { workers: 10, jobs: 500 }, ..Scheduler::new(pool.clone()) };
    while background.tick().await?.more {}
    let held: i64 = sqlx::query_scalar("select count(*) from worker_jobs").fetch_one(&pool).await?;
    println!("{} tenants holding {held} attempts, seeded in {:.1} s", tenants.len(), started.elapsed().as_secs_f64());
    sqlx::query("vacuum analyze tenants, worker_jobs, jobs, ready_jobs, workers").execute(&pool).await?;

    let scheduler =
        Scheduler { limits: CycleLimits { workers: 10, jobs: args.batch as i64 }, ..Scheduler::new(pool.clone()) };
    let held_cpu = args.held as i64 * 100;
    let mut times: Vec<(Mode, Duration, usize)> = Vec::new();
    let plan: Vec<Mode> = (0..args.rounds * 2)
        .map(|i| if i % 2 == 0 { Mode::Off } else { Mode::On })
        .chain(std::iter::repeat_n(Mode::Saturating, args.rounds))
        .collect();
    for (round, mode) in plan.into_iter().enumerate() {
        set_mode(&pool, mode, &tenants, held_cpu).await?;
        // A different `batch` tenants each round, one job each.
        let start = (round * args.batch) % tenants.len();
        let chosen: Vec<(Uuid, String)> = tenants.iter().cycle().skip(start).take(args.batch).cloned().collect();
        submit_each(&pool, &chosen, 1).await?;
        let free = worker(&pool, args.batch).await?;
        let began = Instant::now();
        let outcome = scheduler.tick().await?;
        times.push((mode, began.elapsed(), outcome.assigned.len()));
        // Back to the holdings alone: the round's jobs end, its worker goes, nothing waits.
        sqlx::query(
            "with ended as (delete from worker_jobs where worker_id = $1 returning job_id)
             update jobs set state = 'succeeded', finished_at = now() where id in (select job_id from ended)",
        )
        .bind(free)
        .execute(&pool)
        .await?;
        sqlx::query("update workers set gone_at = now() where id = $1").bind(free).execute(&pool).await?;
        sqlx::query(
            "with gone as (delete from ready_jobs where queue = $1 returning job_id)
             update jobs set state = 'cancelled', finished_at = now() where id in (select job_id from gone)",
        )
        .bind(QUEUE)
        .execute(&pool)
        .await?;
    }
    set_mode(&pool, Mode::Off, &tenants, held_cpu).await?;

    let summary = |mode: Mode| {
        let mut samples: Vec<Duration> = times.iter().filter(|(m, _, _)| *m == mode).map(|(_, t, _)| *t).collect();
        samples.sort();
        let assigned: Vec<usize> = times.iter().filter(|(m, _, _)| *m == mode).map(|(_, _, a)| *a).collect();
        let median_assigned = {
            let mut sorted = assigned.clone();
            sorted.sort();
            sorted.get(sorted.len() / 2).copied().unwrap_or_default()
        };
        (percentile(&samples, 50.0), percentile(&samples, 95.0), median_assigned)
    };
    let (off50, off95, off_assigned) = summary(Mode::Off);
    let (on50, on95, on_assigned) = summary(Mode::On);
    let (sat50, sat95, sat_assigned) = summary(Mode::Saturating);
    println!("cycle, no quotas:                 p50 {off50:.1} ms, p95 {off95:.1} ms, {off_assigned} assigned");
    println!(
        "cycle, {} tenants with quotas:  p50 {on50:.1} ms, p95 {on95:.1} ms, {on_assigned} assigned",
        tenants.len()
    );
    println!("cycle, a tenth of them saturated: p50 {sat50:.1} ms, p95 {sat95:.1} ms, {sat_assigned} assigned");
    println!("quota check cost (p50 with / p50 without): {:.3}", on50 / off50);
    Ok(())
}
