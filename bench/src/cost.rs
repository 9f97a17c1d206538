//! `hodei-bench cost`: the cost roll-up and the cost reports at volume. Writes `--attempts`
//! finished attempts spread over `--instances` instances and `--days` days straight into
//! the ledger (the tables the roll-up reads), times one roll-up of all of it (the
//! `CostRollup` loop's tick, in-process), then times `--reports` month-long reports per
//! grouping (the statement `GET /cost-reports` runs). Empties the cost tables of the
//! scratch database first.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use hodei_api::config::Config;
use hodei_api::db;
use hodei_api::loops::CostRollup;
use hodei_api::store::cost::{self, GroupBy, ReportScope, Tracking};
use hodei_core::cost::Weighting;

use crate::e2e::percentile;

#[derive(Debug, Args)]
pub struct CostArgs {
    #[arg(long, default_value_t = 1_000_000)]
    attempts: i64,
    #[arg(long, default_value_t = 200)]
    instances: i64,
    #[arg(long, default_value_t = 7)]
    days: i64,
    #[arg(long, default_value_t = 20)]
    tenants: i64,
    #[arg(long, default_value_t = 50)]
    reports: usize,
}

pub async fn cost(args: CostArgs, config: &Config) -> anyhow::Result<()> {
    let database_url = config.require_database_url()?.expose().to_owned();
    let pool = db::connect(&database_url, 4).await?;
    db::migrate(&pool).await?;
    // One statement: `instance_prices` refers to `instances`.
    sqlx::query("truncate cost_daily, cost_allocations, job_attempts, instance_prices, instances")
        .execute(&pool)
        .await?;
    sqlx::query("update cost_rollup set closed_until = null").execute(&pool).await?;
    let started = Instant::now();
    sqlx::query(
        "insert into instances (pool_id, member_id, provider, instance, instance_type, capacity_type, region,
                                cpu_millis, memory_mib, price_per_hour, launched_at)
         select format('pool-%s', i % 10), gen_random_uuid(), 'aws-ec2', format('i-%s', i), 'm5.xlarge', 'on_demand',
                'eu-west-1', 4000, 16384, case when i % 50 = 0 then null else 0.192 end,
                now() - make_interval(days => $2)
           from generate_series(1, $1) as i",
    )
    .bind(args.instances)
    .bind(args.days as i32)
    .execute(&pool)
    .await
    .context("writing instances")?;
    // Each instance runs its share of attempts one after another, 10-130 s each, some
    // overlapping. Job ids are time-ordered UUIDv7s, as `hodei` makes them at submission
    // (48 bits of milliseconds first), so the roll-up's job index grows at its right edge
    // as it does in production, not at random places.
    sqlx::query(
        "with base as (select min(id) as first, min(launched_at) as at from instances),
              spacing as (select extract(epoch from make_interval(days => $3)) * $2 / $1 as seconds)
         insert into job_attempts (job_id, attempt, tenant_id, queue, pool, worker_id, instance_id, cpu_millis,
                                   memory_mib, started_at, ended_at, outcome)
         select (lpad(to_hex((extract(epoch from base.at) * 1000)::int8 + (n / $2 * spacing.seconds * 1000)::int8), 12, '0')
                 || '7' || substr(md5(n::text), 1, 3) || '8' || substr(md5(n::text), 4, 15))::uuid,
                1, ('00000000-0000-0000-0000-' || lpad((n % $4)::text, 12, '0'))::uuid,
                (array['default', 'high', 'low'])[1 + n % 3], format('pool-%s', (n % $2 + 1) % 10),
                gen_random_uuid(), base.first + n % $2,
                500 + (n % 7) * 250, 512 + (n % 5) * 1024,
                base.at + make_interval(secs => (n / $2) * spacing.seconds),
                base.at + make_interval(secs => (n / $2) * spacing.seconds + 10 + (n % 120)),
                'succeeded'
           from generate_series(0, $1 - 1) as n, base, spacing",
    )
    .bind(args.attempts)
    .bind(args.instances)
    .bind(args.days as i32)
    .bind(args.tenants)
    .execute(&pool)
    .await
    .context("writing attempts")?;
    sqlx::query("analyze instances").execute(&pool).await?;
    sqlx::query("analyze job_attempts").execute(&pool).await?;
    println!(
        "wrote {} attempts on {} instances over {} days in {:?}",
        args.attempts,
        args.instances,
        args.days,
        started.elapsed()
    );

    let tracking = Tracking { by_tenant: true, by_job: true, weighting: Weighting::default() };
    let rollup = CostRollup { max_buckets: u32::MAX, ..CostRollup::new(pool.clone(), tracking) };
    let started = Instant::now();
    let rolled = rollup.tick().await?.context("another replica leads the cost roll-up")?;
    let took = started.elapsed();
    println!(
        "roll-up: {} buckets, {} instance-buckets, {} attempt-buckets in {:.2} s",
        rolled.buckets,
        rolled.instances,
        rolled.attempts,
        took.as_secs_f64()
    );
    let started = Instant::now();
    rollup.tick().await?;
    println!("roll-up again (the last closed hour and the current one): {:.3} s", started.elapsed().as_secs_f64());

    let to = Utc::now().date_naive();
    let from = to - chrono::Duration::days(30);
    for group_by in [GroupBy::Tenant, GroupBy::Pool, GroupBy::Queue, GroupBy::Day] {
        for scope in [ReportScope::All, ReportScope::Tenant(uuid::Uuid::from_u128(1))] {
            let mut times: Vec<Duration> = Vec::with_capacity(args.reports);
            for _ in 0..args.reports {
                let started = Instant::now();
                cost::report(&pool, group_by, from, to, scope).await?;
                times.push(started.elapsed());
            }
            times.sort();
            println!(
                "report group_by={} {}: p50 {:.1} ms, p95 {:.1} ms",
                group_by.as_str(),
                if scope == ReportScope::All { "admin" } else { "tenant" },
                percentile(&times, 50.0),
                percentile(&times, 95.0)
            );
        }
    }
    Ok(())
}
