//! The cost tables: `prices`, the `instances` ledger and its price changes
//! (`instance_prices`), `job_attempts` (written by a trigger on `worker_jobs`), and
//! `cost_allocations`, the roll-up of the pure attribution
//! (`hodei_core::cost::attribute`) that the analysts' views read, and `cost_daily`, its
//! sum per day, which the cost reports read.
//! Never decides how a cost splits: it gathers the windows, asks the core, and writes
//! the answer.

use std::collections::HashMap;

use chrono::{DateTime, Duration, DurationRound, NaiveDate, Utc};
use hodei_core::cost::{self, AttemptWindow, InstanceWindow, PriceChange, Weighting};
use sqlx::{FromRow, PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

/// The roll-up's bucket: an hour.
pub const BUCKET: Duration = Duration::hours(1);

/// Serialises roll-ups across replicas, so two can never interleave a bucket's delete and
/// insert (which would count it twice).
const ROLLUP_LOCK: i64 = 0x686f_6465_6963_6f73;

/// Serialises spot price refreshes across replicas, so a change is recorded once.
const SPOT_PRICE_LOCK: i64 = 0x686f_6465_6973_706f;

/// What an hour of an instance costs. `instance_type` and `region` may be `*`.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    pub provider: String,
    pub instance_type: String,
    pub capacity_type: String,
    pub region: String,
    pub price_per_hour: f64,
    pub currency: String,
    /// What one instance of the type offers, when the price list says.
    pub cpu_millis: Option<u32>,
    pub memory_mib: Option<u32>,
}

impl From<&hodei_core::cost::PriceSpec> for Price {
    fn from(spec: &hodei_core::cost::PriceSpec) -> Self {
        Self {
            provider: spec.provider.clone(),
            instance_type: spec.instance_type.clone(),
            capacity_type: spec.capacity_type.as_str().to_owned(),
            region: spec.region.clone(),
            price_per_hour: spec.price_per_hour,
            currency: spec.currency.clone(),
            cpu_millis: spec.cpu_millis,
            memory_mib: spec.memory_mib,
        }
    }
}

/// Replaces the price list.
pub async fn replace_prices(db: &mut PgConnection, prices: &[Price]) -> sqlx::Result<()> {
    sqlx::query("delete from prices").execute(&mut *db).await?;
    insert_prices(db, prices).await
}

/// Adds or updates prices, keeping the others.
pub async fn upsert_prices(db: impl PgExecutor<'_>, prices: &[Price]) -> sqlx::Result<()> {
    insert_prices(db, prices).await
}

async fn insert_prices(db: impl PgExecutor<'_>, prices: &[Price]) -> sqlx::Result<()> {
    let column = |get: fn(&Price) -> &str| prices.iter().map(|price| get(price).to_owned()).collect::<Vec<_>>();
    sqlx::query(
        "insert into prices (provider, instance_type, capacity_type, region, price_per_hour, currency, cpu_millis, memory_mib)
         select p, t, c, r, h::numeric, u, m, b
           from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[], $7::int[], $8::int[])
             as x (p, t, c, r, h, u, m, b)
         on conflict (provider, instance_type, capacity_type, region)
             do update set price_per_hour = excluded.price_per_hour, currency = excluded.currency,
                           cpu_millis = excluded.cpu_millis, memory_mib = excluded.memory_mib",
    )
    .bind(column(|price| &price.provider))
    .bind(column(|price| &price.instance_type))
    .bind(column(|price| &price.capacity_type))
    .bind(column(|price| &price.region))
    .bind(prices.iter().map(|price| price.price_per_hour).collect::<Vec<_>>())
    .bind(column(|price| &price.currency))
    .bind(prices.iter().map(|price| price.cpu_millis.map(|cpu| cpu as i32)).collect::<Vec<_>>())
    .bind(prices.iter().map(|price| price.memory_mib.map(|memory| memory as i32)).collect::<Vec<_>>())
    .execute(db)
    .await?;
    Ok(())
}

#[derive(FromRow)]
struct PriceRow {
    provider: String,
    instance_type: String,
    capacity_type: String,
    region: String,
    price_per_hour: f64,
    currency: String,
    cpu_millis: Option<i32>,
    memory_mib: Option<i32>,
}

pub async fn prices(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Price>> {
    let rows: Vec<PriceRow> = sqlx::query_as(
        "select provider, instance_type, capacity_type, region, price_per_hour::float8 as price_per_hour, currency,
                cpu_millis, memory_mib
           from prices order by provider, instance_type, capacity_type, region",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Price {
            provider: row.provider,
            instance_type: row.instance_type,
            capacity_type: row.capacity_type,
            region: row.region,
            price_per_hour: row.price_per_hour,
            currency: row.currency,
            cpu_millis: row.cpu_millis.and_then(|cpu| u32::try_from(cpu).ok()),
            memory_mib: row.memory_mib.and_then(|memory| u32::try_from(memory).ok()),
        })
        .collect())
}

/// An instance a pool now runs, as the ledger records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch<'a> {
    pub pool: &'a str,
    pub member: Uuid,
    pub provider: &'a str,
    pub instance: &'a str,
    pub instance_type: &'a str,
    pub capacity_type: &'a str,
    pub region: &'a str,
    pub cpu_millis: Option<u32>,
    pub memory_mib: Option<u32>,
    /// The spot market's price observed at launch (a spot pool's); `None`: the price list's.
    pub observed_price_per_hour: Option<f64>,
}

/// Opens the ledger row of a launched instance, with the price observed at launch or else
/// the most specific of the price list (an exact instance type before `*`, then an exact
/// region before `*`), and ends the member's previous one if it had one. One statement.
pub async fn record_launch(db: impl PgExecutor<'_>, launch: &Launch<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "with ended as (
             update instances set terminated_at = now() where member_id = $2 and terminated_at is null
         )
         insert into instances (pool_id, member_id, provider, instance, instance_type, capacity_type, region,
                                cpu_millis, memory_mib, price_per_hour)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                 coalesce($10::float8::numeric,
                          (select p.price_per_hour from prices p
                            where p.provider = $3 and p.instance_type in ($5, '*') and p.capacity_type = $6
                              and p.region in ($7, '*')
                            order by p.instance_type = '*', p.region = '*' limit 1)))",
    )
    .bind(launch.pool)
    .bind(launch.member)
    .bind(launch.provider)
    .bind(launch.instance)
    .bind(launch.instance_type)
    .bind(launch.capacity_type)
    .bind(launch.region)
    .bind(launch.cpu_millis.map(|cpu| cpu as i32))
    .bind(launch.memory_mib.map(|memory| memory as i32))
    .bind(launch.observed_price_per_hour)
    .execute(db)
    .await?;
    Ok(())
}

/// Records the zones a provider's listing gives for open ledger rows (those it did not
/// know yet or that moved); one statement.
pub async fn record_zones(db: impl PgExecutor<'_>, listed: &[(String, String)]) -> sqlx::Result<u64> {
    if listed.is_empty() {
        return Ok(0);
    }
    let updated = sqlx::query(
        "update instances i set zone = x.zone
           from unnest($1::text[], $2::text[]) as x (instance, zone)
          where i.instance = x.instance and i.terminated_at is null and i.zone is distinct from x.zone",
    )
    .bind(listed.iter().map(|(instance, _)| instance.clone()).collect::<Vec<_>>())
    .bind(listed.iter().map(|(_, zone)| zone.clone()).collect::<Vec<_>>())
    .execute(db)
    .await?;
    Ok(updated.rows_affected())
}

/// A spot instance still running, with the price in force for it now.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct OpenSpotInstance {
    pub id: i64,
    pub pool_id: String,
    pub instance_type: String,
    /// Its availability zone, once a listing said it.
    pub zone: Option<String>,
    /// Its latest price change's, or its launch price; `None`: unpriced.
    pub price_per_hour: Option<f64>,
}

/// The open ledger rows of spot instances, by pool.
pub async fn open_spot_instances(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<OpenSpotInstance>> {
    sqlx::query_as(
        "select i.id, i.pool_id, i.instance_type, i.zone,
                (case when latest.found then latest.price_per_hour else i.price_per_hour end)::float8 as price_per_hour
           from instances i
           left join lateral (select p.price_per_hour, true as found from instance_prices p
                               where p.instance_id = i.id order by p.effective_from desc limit 1) latest on true
          where i.terminated_at is null and i.capacity_type = 'spot'
          order by i.pool_id, i.id",
    )
    .fetch_all(db)
    .await
}

/// A spot price observed for an instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObservedPrice {
    pub instance: i64,
    pub price_per_hour: f64,
}

/// Records, in force from `at`, each observed price that differs from the price in force
/// for its still-open instance; returns how many changed. One replica at a time (a
/// transaction-scoped advisory lock): a second refresh with the same prices, or one that
/// waited for the first, changes nothing.
pub async fn record_spot_prices(
    db: &mut PgConnection,
    observed: &[ObservedPrice],
    at: DateTime<Utc>,
) -> sqlx::Result<u64> {
    use sqlx::Acquire;
    let mut transaction = db.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)").bind(SPOT_PRICE_LOCK).execute(&mut *transaction).await?;
    let changed = sqlx::query(
        "insert into instance_prices (instance_id, effective_from, price_per_hour, source)
         select i.id, greatest($3, i.launched_at), x.price::numeric, 'spot_market'
           from unnest($1::bigint[], $2::float8[]) as x (id, price)
           join instances i on i.id = x.id and i.terminated_at is null
           left join lateral (select p.price_per_hour, true as found from instance_prices p
                               where p.instance_id = i.id order by p.effective_from desc limit 1) latest on true
          where x.price::numeric is distinct from
                (case when latest.found then latest.price_per_hour else i.price_per_hour end)
         on conflict (instance_id, effective_from)
             do update set price_per_hour = excluded.price_per_hour, source = excluded.source",
    )
    .bind(observed.iter().map(|price| price.instance).collect::<Vec<_>>())
    .bind(observed.iter().map(|price| price.price_per_hour).collect::<Vec<_>>())
    .bind(at)
    .execute(&mut *transaction)
    .await?
    .rows_affected();
    transaction.commit().await?;
    Ok(changed)
}

/// Ends the member's open ledger row (its instance was terminated, or forgotten).
pub async fn record_termination(db: impl PgExecutor<'_>, member: Uuid) -> sqlx::Result<()> {
    sqlx::query("update instances set terminated_at = now() where member_id = $1 and terminated_at is null")
        .bind(member)
        .execute(db)
        .await?;
    Ok(())
}

/// Ends open ledger rows whose member no longer runs that instance (a pool deleted with
/// its members, a member removed by a path that did not record it).
pub async fn end_orphaned_instances(db: impl PgExecutor<'_>) -> sqlx::Result<u64> {
    let ended = sqlx::query(
        "update instances i set terminated_at = now()
          where i.terminated_at is null
            and not exists (select 1 from pool_members m where m.id = i.member_id and m.instance = i.instance)",
    )
    .execute(db)
    .await?;
    Ok(ended.rows_affected())
}

/// What the roll-up keeps and how it weighs a share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tracking {
    pub by_tenant: bool,
    pub by_job: bool,
    pub weighting: Weighting,
}

/// What a roll-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RolledUp {
    pub buckets: u32,
    pub instances: u64,
    pub attempts: u64,
}

/// Rolls up every bucket from the last final one to `now` (the current bucket up to
/// `now`, again on every call until it closes), at most `max_buckets` closed ones per call.
/// The last closed bucket is rolled again too, for attempts that ended just as it closed.
pub async fn roll_up(db: &PgPool, now: DateTime<Utc>, tracking: Tracking, max_buckets: u32) -> sqlx::Result<RolledUp> {
    let closed_until: Option<DateTime<Utc>> =
        sqlx::query_scalar("select closed_until from cost_rollup where id = 1").fetch_one(db).await?;
    let first_launch: Option<DateTime<Utc>> =
        sqlx::query_scalar("select min(launched_at) from instances").fetch_one(db).await?;
    let start = match (closed_until, first_launch) {
        (Some(closed), _) => closed - BUCKET,
        (None, Some(first)) => first,
        (None, None) => return Ok(RolledUp::default()),
    };
    let mut bucket = start.duration_trunc(BUCKET).unwrap_or(start);
    let mut done = RolledUp::default();
    let mut ended = EndedAttempts::default();
    while bucket < now {
        let end = bucket + BUCKET;
        let closed = end <= now;
        if closed && done.buckets >= max_buckets {
            break;
        }
        if bucket >= ended.until {
            ended = EndedAttempts::read(db, bucket, (bucket + READ_AHEAD).min(now)).await?;
        }
        let cut = ended.cut;
        let ran = ended.overlapping(bucket, end);
        let mut transaction = db.begin().await?;
        let rolled = roll_up_bucket(&mut transaction, bucket, end.min(now), tracking, &ran, cut).await?;
        // A day's sum once its last bucket of this run is written.
        let last_of_run = !closed || end >= now || done.buckets + 1 >= max_buckets;
        if last_of_run || end.date_naive() != bucket.date_naive() {
            summarise_day(&mut transaction, bucket).await?;
        }
        if closed {
            sqlx::query("update cost_rollup set closed_until = greatest(coalesce(closed_until, $1), $1) where id = 1")
                .bind(end)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        done.buckets += 1;
        done.instances += rolled.instances;
        done.attempts += rolled.attempts;
        bucket = end;
    }
    Ok(done)
}

#[derive(FromRow)]
struct InstanceRow {
    id: i64,
    pool_id: String,
    cpu_millis: i32,
    memory_mib: i32,
    price_per_hour: Option<f64>,
    start_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
}

#[derive(FromRow)]
struct AttemptRow {
    instance_id: Option<i64>,
    job_id: Uuid,
    attempt: i32,
    tenant_id: Uuid,
    queue: String,
    cpu_millis: i32,
    memory_mib: i32,
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
}

/// How many buckets' ended attempts are read at once: one scan of `job_attempts` per day
/// rolled, not one per hour (each hour's own read would scan every attempt that ended
/// after it).
const READ_AHEAD: Duration = Duration::hours(24);

/// Attempts that ended before `cut` and overlap `from..until`, read in one statement and
/// handed out bucket by bucket in order. Those that end from `cut` on (a minute before the
/// read, so an ending transaction still open as it ran is not missed) each bucket reads
/// itself, with the attempts still held.
#[derive(Default)]
struct EndedAttempts {
    until: DateTime<Utc>,
    cut: DateTime<Utc>,
    /// By start.
    rows: Vec<AttemptRow>,
    /// `rows[..next]` have started before the last bucket handed out ended.
    next: usize,
    /// Of those, the ones that had not ended by its start.
    active: Vec<usize>,
}

impl EndedAttempts {
    async fn read(db: &PgPool, from: DateTime<Utc>, until: DateTime<Utc>) -> sqlx::Result<Self> {
        let cut: DateTime<Utc> = sqlx::query_scalar("select now() - interval '1 minute'").fetch_one(db).await?;
        let rows: Vec<AttemptRow> = sqlx::query_as(
            "select instance_id, job_id, attempt, tenant_id, queue, cpu_millis, memory_mib, started_at, ended_at
               from job_attempts
              where ended_at > $1 and ended_at < $3 and started_at < $2 and instance_id is not null
              order by started_at",
        )
        .bind(from)
        .bind(until)
        .bind(cut)
        .fetch_all(db)
        .await?;
        Ok(Self { until, cut, rows, next: 0, active: Vec::new() })
    }

    /// The attempts that overlap `start..end`; buckets must be asked for in order.
    fn overlapping(&mut self, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<&AttemptRow> {
        while self.next < self.rows.len() && self.rows[self.next].started_at < end {
            self.active.push(self.next);
            self.next += 1;
        }
        let rows = &self.rows;
        self.active.retain(|&index| rows[index].ended_at > start);
        self.active.iter().map(|&index| &rows[index]).collect()
    }
}

/// Recomputes the bucket starting at `bucket_start`, up to `until`: deletes what it held
/// and writes the attribution of every instance that ran in it, from the attempts that
/// ended before `cut` (`ended`, read ahead) and those it reads: ended since, or still held.
/// Run in a transaction.
async fn roll_up_bucket(
    db: &mut PgConnection,
    bucket_start: DateTime<Utc>,
    until: DateTime<Utc>,
    tracking: Tracking,
    ended: &[&AttemptRow],
    cut: DateTime<Utc>,
) -> sqlx::Result<RolledUp> {
    sqlx::query("select pg_advisory_xact_lock($1)").bind(ROLLUP_LOCK).execute(&mut *db).await?;
    sqlx::query("delete from cost_allocations where bucket_start = $1").bind(bucket_start).execute(&mut *db).await?;
    // A template that leaves the shape to the machine: the worker's row says it.
    sqlx::query(
        "update instances i set cpu_millis = w.cpu_millis, memory_mib = w.memory_mib
           from workers w
          where i.cpu_millis is null and i.terminated_at is null and w.gone_at is null
            and w.instance_id in (i.member_id::text, i.instance)",
    )
    .execute(&mut *db)
    .await?;
    let instances: Vec<InstanceRow> = sqlx::query_as(
        "select id, pool_id, coalesce(cpu_millis, 0) as cpu_millis, coalesce(memory_mib, 0) as memory_mib,
                price_per_hour::float8 as price_per_hour,
                greatest(launched_at, $1) as start_at, least(coalesce(terminated_at, $2), $2) as end_at
           from instances
          where launched_at < $2 and (terminated_at is null or terminated_at > $1)",
    )
    .bind(bucket_start)
    .bind(until)
    .fetch_all(&mut *db)
    .await?;
    if instances.is_empty() {
        return Ok(RolledUp::default());
    }
    // Attempts that ended since `cut`, and those still held (running to `until` so far).
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "select instance_id, job_id, attempt, tenant_id, queue, cpu_millis, memory_mib, started_at, ended_at
           from job_attempts
          where ended_at >= $3 and ended_at > $1 and started_at < $2 and instance_id is not null
         union all
         select (select i.id from instances i
                  where i.member_id::text = w.instance_id or i.instance = w.instance_id
                  order by i.id desc limit 1),
                h.job_id, h.attempt, j.tenant_id, j.queue, h.cpu_millis, h.memory_mib, h.assigned_at, $2
           from worker_jobs h join jobs j on j.id = h.job_id join workers w on w.id = h.worker_id
          where h.assigned_at < $2",
    )
    .bind(bucket_start)
    .bind(until)
    .bind(cut)
    .fetch_all(&mut *db)
    .await?;
    // The price changes that matter: the last one by the bucket's start (in force from
    // it) and those within it.
    let changes: Vec<(i64, DateTime<Utc>, Option<f64>)> = sqlx::query_as(
        "select p.instance_id, p.effective_from, p.price_per_hour::float8
           from instance_prices p
          where p.instance_id = any($1) and p.effective_from < $3
            and p.effective_from >= coalesce((select max(q.effective_from) from instance_prices q
                                               where q.instance_id = p.instance_id and q.effective_from <= $2),
                                              '-infinity')
          order by p.instance_id, p.effective_from",
    )
    .bind(instances.iter().map(|instance| instance.id).collect::<Vec<_>>())
    .bind(bucket_start)
    .bind(until)
    .fetch_all(&mut *db)
    .await?;
    let mut changes_of: HashMap<i64, Vec<PriceChange>> = HashMap::new();
    for (instance, from, price_per_hour) in changes {
        changes_of.entry(instance).or_default().push(PriceChange { from, price_per_hour });
    }
    let mut by_instance: HashMap<i64, Vec<&AttemptRow>> = HashMap::new();
    for attempt in ended.iter().copied().chain(&attempts) {
        if let Some(instance) = attempt.instance_id {
            by_instance.entry(instance).or_default().push(attempt);
        }
    }

    let mut rows = AllocationRows::default();
    let mut counted_attempts = 0;
    for instance in &instances {
        let ran = by_instance.get(&instance.id).map(Vec::as_slice).unwrap_or_default();
        let window = InstanceWindow {
            cpu_millis: u32::try_from(instance.cpu_millis).unwrap_or(0),
            memory_mib: u32::try_from(instance.memory_mib).unwrap_or(0),
            price_per_hour: instance.price_per_hour,
            start: instance.start_at,
            end: instance.end_at,
        };
        let windows: Vec<AttemptWindow> = ran
            .iter()
            .map(|attempt| AttemptWindow {
                cpu_millis: u32::try_from(attempt.cpu_millis).unwrap_or(0),
                memory_mib: u32::try_from(attempt.memory_mib).unwrap_or(0),
                start: attempt.started_at,
                end: attempt.ended_at,
            })
            .collect();
        let changes = changes_of.get(&instance.id).map(Vec::as_slice).unwrap_or_default();
        let mut counted = vec![false; ran.len()];
        // Each part of the window at its own price: one row per attempt and part.
        for segment in cost::price_segments(&window, changes) {
            let split = cost::attribute(&segment, &windows, tracking.weighting);
            rows.push_split(instance, ran, &split, tracking, &mut counted);
        }
        counted_attempts += counted.iter().filter(|&&counted| counted).count() as u64;
    }
    sqlx::query(
        "insert into cost_allocations (bucket_start, instance_id, pool, kind, job_id, attempt, tenant_id, queue,
                                       seconds, share_seconds, amount)
         select $1, i, p, k, j, a, t, q, s, ss, m::numeric
           from unnest($2::bigint[], $3::text[], $4::text[], $5::uuid[], $6::int[], $7::uuid[], $8::text[],
                       $9::float8[], $10::float8[], $11::float8[]) as x (i, p, k, j, a, t, q, s, ss, m)",
    )
    .bind(bucket_start)
    .bind(&rows.instance)
    .bind(&rows.pool)
    .bind(&rows.kind)
    .bind(&rows.job)
    .bind(&rows.attempt)
    .bind(&rows.tenant)
    .bind(&rows.queue)
    .bind(&rows.seconds)
    .bind(&rows.share_seconds)
    .bind(&rows.amount)
    .execute(&mut *db)
    .await?;
    Ok(RolledUp { buckets: 1, instances: instances.len() as u64, attempts: counted_attempts })
}

/// Recomputes `cost_daily` for the UTC day of `bucket_start` from its allocations (under
/// the roll-up's lock, which the caller's `roll_up_bucket` took).
async fn summarise_day(db: &mut PgConnection, bucket_start: DateTime<Utc>) -> sqlx::Result<()> {
    sqlx::query(
        "with day as (select ($1 at time zone 'UTC')::date as day),
              cleared as (delete from cost_daily d using day where d.day = day.day)
         insert into cost_daily (day, pool, kind, tenant_id, queue, amount, unpriced_share_seconds, attempts,
                                 share_seconds)
         select day.day, a.pool, a.kind, a.tenant_id, a.queue, coalesce(sum(a.amount), 0)::float8,
                coalesce(sum(a.share_seconds) filter (where a.amount is null), 0),
                count(distinct (a.job_id, a.attempt)) filter (where a.kind = 'attempt'),
                sum(a.share_seconds)
           from cost_allocations a, day
          where a.bucket_start >= day.day::timestamp at time zone 'UTC'
            and a.bucket_start < (day.day + 1)::timestamp at time zone 'UTC'
          group by day.day, a.pool, a.kind, a.tenant_id, a.queue",
    )
    .bind(bucket_start)
    .execute(&mut *db)
    .await?;
    Ok(())
}

struct Allocation<'a> {
    instance: i64,
    pool: &'a str,
    kind: &'static str,
    job: Option<Uuid>,
    attempt: Option<i32>,
    tenant: Option<Uuid>,
    queue: Option<&'a str>,
    seconds: f64,
    share_seconds: f64,
    amount: Option<f64>,
}

/// Allocations as columns, for one `unnest` insert.
#[derive(Default)]
struct AllocationRows {
    instance: Vec<i64>,
    pool: Vec<String>,
    kind: Vec<String>,
    job: Vec<Option<Uuid>>,
    attempt: Vec<Option<i32>>,
    tenant: Vec<Option<Uuid>>,
    queue: Vec<Option<String>>,
    seconds: Vec<f64>,
    share_seconds: Vec<f64>,
    amount: Vec<Option<f64>>,
}

impl AllocationRows {
    fn push(&mut self, allocation: Allocation<'_>) {
        self.instance.push(allocation.instance);
        self.pool.push(allocation.pool.to_owned());
        self.kind.push(allocation.kind.to_owned());
        self.job.push(allocation.job);
        self.attempt.push(allocation.attempt);
        self.tenant.push(allocation.tenant);
        self.queue.push(allocation.queue.map(str::to_owned));
        self.seconds.push(allocation.seconds);
        self.share_seconds.push(allocation.share_seconds);
        self.amount.push(allocation.amount);
    }

    /// The rows of one part of an instance's window: each attempt that ran in it
    /// (marked in `counted`), and its idle.
    fn push_split(
        &mut self,
        instance: &InstanceRow,
        ran: &[&AttemptRow],
        split: &cost::Attribution,
        tracking: Tracking,
        counted: &mut [bool],
    ) {
        for ((attempt, share), counted) in ran.iter().zip(&split.attempts).zip(counted.iter_mut()) {
            if share.seconds <= 0.0 {
                continue;
            }
            *counted = true;
            self.push(Allocation {
                instance: instance.id,
                pool: &instance.pool_id,
                kind: "attempt",
                job: tracking.by_job.then_some(attempt.job_id),
                attempt: tracking.by_job.then_some(attempt.attempt),
                tenant: tracking.by_tenant.then_some(attempt.tenant_id),
                queue: Some(&attempt.queue),
                seconds: share.seconds,
                share_seconds: share.share_seconds,
                amount: share.amount,
            });
        }
        self.push(Allocation {
            instance: instance.id,
            pool: &instance.pool_id,
            kind: "idle",
            job: None,
            attempt: None,
            tenant: None,
            queue: None,
            seconds: split.instance_seconds,
            share_seconds: split.idle_share_seconds,
            amount: split.idle_amount,
        });
    }
}

/// Forgets the detail older than the retention: hourly allocations, attempts and ended
/// instances. The daily roll-up (`cost_daily`, and the `_day` views over it) is kept.
pub async fn prune(db: &PgPool, now: DateTime<Utc>, retention_days: u32) -> sqlx::Result<()> {
    let horizon = now - Duration::days(retention_days.into());
    let mut transaction = db.begin().await?;
    sqlx::query("delete from cost_allocations where bucket_start < $1")
        .bind(horizon)
        .execute(&mut *transaction)
        .await?;
    sqlx::query("delete from job_attempts where ended_at < $1").bind(horizon).execute(&mut *transaction).await?;
    sqlx::query("delete from instances where terminated_at < $1").bind(horizon).execute(&mut *transaction).await?;
    transaction.commit().await
}

/// A job's cost so far, once rolled up: `None` before its first roll-up.
#[derive(Debug, Clone, PartialEq)]
pub struct JobCost {
    /// `None` when part of it ran on an unpriced instance.
    pub amount: Option<f64>,
    pub currency: String,
    pub unpriced: bool,
}

/// An attempt that ran on a worker no ledger instance records (one registered by hand, not
/// provisioned by a pool) has no price: the job is unpriced, never free.
pub async fn job_cost(db: impl PgExecutor<'_>, job: Uuid) -> sqlx::Result<Option<JobCost>> {
    let row: Option<(Option<f64>, String, bool)> = sqlx::query_as(
        "with ledgerless as (
             select exists (select 1 from job_attempts where job_id = $1 and instance_id is null) as ran
         )
         select case when l.ran then null else c.amount::float8 end, coalesce(c.currency, 'USD'),
                l.ran or coalesce(c.unpriced, false)
           from ledgerless l left join cost_by_job c on c.job_id = $1
          where c.job_id is not null or l.ran",
    )
    .bind(job)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(amount, currency, unpriced)| JobCost { amount, currency, unpriced }))
}

/// How a cost report groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Tenant,
    Pool,
    Queue,
    Day,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Pool => "pool",
            Self::Queue => "queue",
            Self::Day => "day",
        }
    }
}

/// Whose costs a report shows: everything, or one tenant's attempts (never idle cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportScope {
    All,
    Tenant(Uuid),
}

/// One line of a cost report.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct ReportRow {
    pub key: String,
    /// What attempts were charged (priced instances only).
    pub attributed_amount: f64,
    /// What no attempt used (by pool and day; zero when grouping by tenant or queue, and
    /// for a tenant's report).
    pub idle_amount: f64,
    /// Instance-seconds on unpriced instances: reported apart, never priced at zero.
    pub unpriced_share_seconds: f64,
    pub attempts: i64,
}

/// Costs of the UTC days `from..=to`, grouped. Tenant scopes read only their own attempts.
pub async fn report(
    db: impl PgExecutor<'_>,
    group_by: GroupBy,
    from: NaiveDate,
    to: NaiveDate,
    scope: ReportScope,
) -> sqlx::Result<Vec<ReportRow>> {
    let tenant = match scope {
        ReportScope::All => None,
        ReportScope::Tenant(tenant) => Some(tenant),
    };
    sqlx::query_as(
        "select case $1 when 'tenant' then coalesce(t.name, a.tenant_id::text, '')
                        when 'pool' then a.pool
                        when 'queue' then coalesce(a.queue, '')
                        else to_char(a.day, 'YYYY-MM-DD') end as key,
                coalesce(sum(a.amount) filter (where a.kind = 'attempt'), 0)::float8 as attributed_amount,
                coalesce(sum(a.amount) filter (where a.kind = 'idle'), 0)::float8 as idle_amount,
                coalesce(sum(a.unpriced_share_seconds), 0)::float8 as unpriced_share_seconds,
                coalesce(sum(a.attempts), 0)::int8 as attempts
           from cost_daily a left join tenants t on t.id = a.tenant_id
          where a.day >= $2 and a.day <= $3
            and ($4::uuid is null or (a.tenant_id = $4 and a.kind = 'attempt'))
            and ($1 in ('pool', 'day') or a.kind = 'attempt')
          group by 1 order by 1",
    )
    .bind(group_by.as_str())
    .bind(from)
    .bind(to)
    .bind(tenant)
    .fetch_all(db)
    .await
}

/// Each tenant's part of its pools' idle cost over the UTC days `from..=to` (keyed as a
/// report by tenant keys its lines): per pool and day, the idle cost split between the
/// tenants by what their attempts were charged there. A pool-day that ran no priced
/// attempt keeps its idle cost (no tenant used it). Tenant scopes read their own part.
pub async fn idle_by_tenant(
    db: impl PgExecutor<'_>,
    from: NaiveDate,
    to: NaiveDate,
    scope: ReportScope,
) -> sqlx::Result<Vec<(String, f64)>> {
    let tenant = match scope {
        ReportScope::All => None,
        ReportScope::Tenant(tenant) => Some(tenant),
    };
    sqlx::query_as(
        "with used as (
             select day, pool, tenant_id, sum(amount) as amount
               from cost_daily where kind = 'attempt' and day >= $1 and day <= $2 and tenant_id is not null
              group by 1, 2, 3
         ), idle as (
             select day, pool, sum(amount) as amount from cost_daily
              where kind = 'idle' and day >= $1 and day <= $2 group by 1, 2
         ), totals as (
             select day, pool, sum(amount) as amount from used group by 1, 2
         )
         select coalesce(t.name, u.tenant_id::text) as key,
                sum(i.amount * u.amount / t_.amount)::float8 as idle
           from used u
           join totals t_ on t_.day = u.day and t_.pool = u.pool and t_.amount > 0
           join idle i on i.day = u.day and i.pool = u.pool
           left join tenants t on t.id = u.tenant_id
          where $3::uuid is null or u.tenant_id = $3
          group by 1 order by 1",
    )
    .bind(from)
    .bind(to)
    .bind(tenant)
    .fetch_all(db)
    .await
}
