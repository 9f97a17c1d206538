//! What the cost recommendations read: each pool's hours in the cost roll-up, its
//! attempts' shapes and lengths, the price list with shapes, and instances that ran
//! unpriced, over a period. Never decides anything: `hodei_core::recommend` does.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use hodei_core::pool::CapacityType;
use hodei_core::recommend::{AttemptStats, Hour, Offer, PoolUsage, Unpriced};
use sqlx::{FromRow, PgPool};

use crate::store::pools;

/// Everything the rules look at, for `from..to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub pools: Vec<PoolUsage>,
    pub offers: Vec<Offer>,
    pub unpriced: Vec<Unpriced>,
}

fn capacity(text: &str) -> CapacityType {
    if text == "spot" {
        CapacityType::Spot
    } else {
        CapacityType::OnDemand
    }
}

fn unsigned(value: Option<i32>) -> u32 {
    value.and_then(|value| u32::try_from(value).ok()).unwrap_or(0)
}

#[derive(FromRow)]
struct HourRow {
    pool: String,
    bucket_start: DateTime<Utc>,
    instance_seconds: f64,
    used_share_seconds: f64,
    amount: Option<f64>,
}

#[derive(FromRow)]
struct ShapeRow {
    pool_id: String,
    instance_type: String,
    capacity_type: String,
    region: String,
    cpu_millis: Option<i32>,
    memory_mib: Option<i32>,
    price_per_hour: Option<f64>,
}

#[derive(FromRow)]
struct AttemptRow {
    pool: String,
    attempts: i64,
    p95_cpu_millis: Option<i32>,
    p95_memory_mib: Option<i32>,
    max_cpu_millis: Option<i32>,
    max_memory_mib: Option<i32>,
    suitable_attempts: i64,
    suitable_median_seconds: Option<f64>,
}

#[derive(FromRow)]
struct OfferRow {
    provider: String,
    instance_type: String,
    capacity_type: String,
    region: String,
    cpu_millis: Option<i32>,
    memory_mib: Option<i32>,
    price_per_hour: f64,
}

#[derive(FromRow)]
struct UnpricedRow {
    pool_id: String,
    provider: String,
    instance_type: String,
    capacity_type: String,
    region: String,
    instances: i64,
    instance_hours: f64,
}

/// Reads the facts of the rolled-up hours in `from..to`; attempts count as suitable for
/// spot when they ran at most `spot_max_job_seconds` and their job may be retried.
pub async fn facts(
    db: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    spot_max_job_seconds: u32,
) -> sqlx::Result<Facts> {
    // An hour's idle row carries its instance-seconds; its attempt rows what they used.
    let hours: Vec<HourRow> = sqlx::query_as(
        "select pool, bucket_start,
                coalesce(sum(seconds) filter (where kind = 'idle'), 0)::float8 as instance_seconds,
                coalesce(sum(share_seconds) filter (where kind = 'attempt'), 0)::float8 as used_share_seconds,
                case when bool_or(amount is null) then null else sum(amount)::float8 end as amount
           from cost_allocations
          where bucket_start >= $1 and bucket_start < $2
          group by pool, bucket_start
          order by pool, bucket_start",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await?;
    // The pool's newest instance in the period: its type, shape and price (the last in force).
    let shapes: Vec<ShapeRow> = sqlx::query_as(
        "select distinct on (i.pool_id) i.pool_id, i.instance_type, i.capacity_type, i.region, i.cpu_millis,
                i.memory_mib,
                coalesce((select p.price_per_hour from instance_prices p
                           where p.instance_id = i.id and p.effective_from < $2
                           order by p.effective_from desc limit 1),
                         i.price_per_hour)::float8 as price_per_hour
           from instances i
          where i.launched_at < $2 and (i.terminated_at is null or i.terminated_at > $1)
          order by i.pool_id, i.id desc",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await?;
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "with ran as (
             select a.pool, a.cpu_millis, a.memory_mib,
                    extract(epoch from a.ended_at - a.started_at)::float8 as seconds,
                    (extract(epoch from a.ended_at - a.started_at) <= $3 and j.max_attempts > 1) as suitable
               from job_attempts a left join jobs j on j.id = a.job_id
              where a.ended_at > $1 and a.started_at < $2
         )
         select pool, count(*) as attempts,
                percentile_disc(0.95) within group (order by cpu_millis) as p95_cpu_millis,
                percentile_disc(0.95) within group (order by memory_mib) as p95_memory_mib,
                max(cpu_millis) as max_cpu_millis, max(memory_mib) as max_memory_mib,
                count(*) filter (where suitable) as suitable_attempts,
                percentile_cont(0.5) within group (order by seconds) filter (where suitable) as suitable_median_seconds
           from ran group by pool",
    )
    .bind(from)
    .bind(to)
    .bind(f64::from(spot_max_job_seconds))
    .fetch_all(db)
    .await?;
    // What the suitable attempts were charged, from the roll-up (needs `track_by_job`).
    let suitable: Vec<(String, f64)> = sqlx::query_as(
        "select c.pool, sum(c.share_seconds)::float8
           from cost_allocations c
           join job_attempts a on a.job_id = c.job_id and a.attempt = c.attempt
           join jobs j on j.id = c.job_id
          where c.kind = 'attempt' and c.bucket_start >= $1 and c.bucket_start < $2
            and extract(epoch from a.ended_at - a.started_at) <= $3 and j.max_attempts > 1
          group by c.pool",
    )
    .bind(from)
    .bind(to)
    .bind(f64::from(spot_max_job_seconds))
    .fetch_all(db)
    .await?;
    // The price list, with each type's shape from the list or else from an instance of it.
    let offers: Vec<OfferRow> = sqlx::query_as(
        "select p.provider, p.instance_type, p.capacity_type, p.region, p.price_per_hour::float8 as price_per_hour,
                coalesce(p.cpu_millis, s.cpu_millis) as cpu_millis, coalesce(p.memory_mib, s.memory_mib) as memory_mib
           from prices p
           left join lateral (
               select i.cpu_millis, i.memory_mib from instances i
                where i.provider = p.provider and i.instance_type = p.instance_type and i.cpu_millis is not null
                order by i.id desc limit 1
           ) s on true
          order by p.provider, p.instance_type, p.capacity_type, p.region",
    )
    .fetch_all(db)
    .await?;
    let unpriced: Vec<UnpricedRow> = sqlx::query_as(
        "select pool_id, provider, instance_type, capacity_type, region, count(*) as instances,
                (sum(extract(epoch from least(coalesce(terminated_at, $2), $2) - greatest(launched_at, $1))) / 3600)::float8
                    as instance_hours
           from instances
          where price_per_hour is null and launched_at < $2 and (terminated_at is null or terminated_at > $1)
          group by 1, 2, 3, 4, 5
         union all
         -- Attempts on workers no ledger instance records: their cost is unknown too.
         select pool, $3, 'unknown', 'on_demand', '*', count(distinct worker_id),
                (sum(extract(epoch from least(ended_at, $2) - greatest(started_at, $1))) / 3600)::float8
           from job_attempts
          where instance_id is null and started_at < $2 and ended_at > $1
          group by 1
          order by 1, 2, 3, 4, 5",
    )
    .bind(from)
    .bind(to)
    .bind(hodei_core::recommend::UNRECORDED_PROVIDER)
    .fetch_all(db)
    .await?;

    let mut hours_by_pool: HashMap<String, Vec<Hour>> = HashMap::new();
    for row in hours {
        hours_by_pool.entry(row.pool).or_default().push(Hour {
            start: row.bucket_start,
            instance_seconds: row.instance_seconds,
            used_share_seconds: row.used_share_seconds,
            amount: row.amount,
        });
    }
    let shapes: HashMap<String, ShapeRow> = shapes.into_iter().map(|row| (row.pool_id.clone(), row)).collect();
    let suitable: HashMap<String, f64> = suitable.into_iter().collect();
    let mut stats: HashMap<String, AttemptStats> = attempts
        .into_iter()
        .map(|row| {
            let stats = AttemptStats {
                attempts: u64::try_from(row.attempts).unwrap_or(0),
                p95_cpu_millis: unsigned(row.p95_cpu_millis),
                p95_memory_mib: unsigned(row.p95_memory_mib),
                max_cpu_millis: unsigned(row.max_cpu_millis),
                max_memory_mib: unsigned(row.max_memory_mib),
                spot_suitable_share_seconds: suitable.get(&row.pool).copied().unwrap_or(0.0),
                spot_suitable_attempts: u64::try_from(row.suitable_attempts).unwrap_or(0),
                spot_suitable_median_seconds: row.suitable_median_seconds.unwrap_or(0.0),
            };
            (row.pool, stats)
        })
        .collect();

    let mut usage = Vec::new();
    for pool in pools::list(db).await? {
        let spec = pool.spec;
        let (Some(hours), Some(shape)) = (hours_by_pool.remove(&spec.id), shapes.get(&spec.id)) else { continue };
        usage.push(PoolUsage {
            pool: spec.id.clone(),
            provider: spec.provider.clone(),
            kind: spec.kind,
            size: spec.size,
            min_size: spec.min_size,
            warm: spec.scaling.warm,
            instance_type: shape.instance_type.clone(),
            capacity_type: capacity(&shape.capacity_type),
            region: shape.region.clone(),
            cpu_millis: unsigned(shape.cpu_millis),
            memory_mib: unsigned(shape.memory_mib),
            price_per_hour: shape.price_per_hour,
            hours,
            attempts: stats.remove(&spec.id).unwrap_or_default(),
        });
    }
    Ok(Facts {
        pools: usage,
        offers: offers
            .into_iter()
            .map(|row| Offer {
                provider: row.provider,
                instance_type: row.instance_type,
                capacity_type: capacity(&row.capacity_type),
                region: row.region,
                cpu_millis: unsigned(row.cpu_millis),
                memory_mib: unsigned(row.memory_mib),
                price_per_hour: row.price_per_hour,
            })
            .collect(),
        unpriced: unpriced
            .into_iter()
            .map(|row| Unpriced {
                pool: row.pool_id,
                provider: row.provider,
                instance_type: row.instance_type,
                capacity_type: capacity(&row.capacity_type),
                region: row.region,
                instances: u64::try_from(row.instances).unwrap_or(0),
                instance_hours: row.instance_hours,
            })
            .collect(),
    })
}
