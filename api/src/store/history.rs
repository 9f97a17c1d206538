//! Historical metrics (`metric_history`): the roll-up that writes them and the reads the
//! API serves. What is kept and how a range folds is `hodei_core::history`'s.

use chrono::{DateTime, Duration, DurationRound, Utc};
use hodei_core::history::{Metric, Point, Resolution};
use sqlx::{FromRow, PgConnection, PgExecutor, PgPool};

/// One roll-up at a time across replicas: the first to take it rolls, the others skip.
const HISTORY_LOCK: i64 = 0x686f_6465_6968_6973;

/// How far back a first roll-up (with nothing rolled yet) reaches.
fn first_reach(resolution: Resolution) -> Duration {
    match resolution {
        Resolution::Minute => Duration::hours(1),
        Resolution::Hour => Duration::days(1),
    }
}

/// What a roll-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RolledUp {
    /// False when another replica held the roll-up.
    pub rolled: bool,
    /// Event rows written (both resolutions).
    pub event_rows: u64,
    /// Gauge samples taken (both resolutions).
    pub gauge_rows: u64,
}

#[derive(FromRow)]
struct Row {
    series: String,
    bucket_start: DateTime<Utc>,
    metric: String,
    value: f64,
}

/// Recomputes the event metrics of every bucket from the last final one to `now`, samples
/// the gauges into `now`'s minute and averages its hour's minutes, and prunes what is past
/// its retention. One transaction.
pub async fn roll_up(db: &PgPool, now: DateTime<Utc>, retention: Duration) -> sqlx::Result<RolledUp> {
    let mut transaction = db.begin().await?;
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
        .bind(HISTORY_LOCK)
        .fetch_one(&mut *transaction)
        .await?;
    if !locked {
        return Ok(RolledUp::default());
    }
    let mut done = RolledUp { rolled: true, ..RolledUp::default() };
    for resolution in [Resolution::Minute, Resolution::Hour] {
        done.event_rows += roll_events(&mut transaction, resolution, now).await?;
    }
    done.gauge_rows += sample_gauges(&mut transaction, now).await?;
    done.gauge_rows += average_gauges_by_hour(&mut transaction, now).await?;
    sqlx::query(
        "delete from metric_history
          where (resolution = 'minute' and bucket_start < $1) or (resolution = 'hour' and bucket_start < $2)",
    )
    .bind(now - hodei_core::history::MINUTE_RETENTION)
    .bind(now - retention)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(done)
}

fn unit(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::Minute => "minute",
        Resolution::Hour => "hour",
    }
}

async fn roll_events(db: &mut PgConnection, resolution: Resolution, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let current = now.duration_trunc(resolution.duration()).unwrap_or(now);
    let rolled: Option<DateTime<Utc>> =
        sqlx::query_scalar("select rolled_until from metric_history_rollup where resolution = $1")
            .bind(resolution.as_str())
            .fetch_optional(&mut *db)
            .await?;
    // From the bucket the last roll-up was in (it may have grown since), so nothing is
    // missed after a gap and nothing counts twice.
    let from = rolled.map_or(current - first_reach(resolution), |rolled| rolled.min(current));
    let events: Vec<&str> =
        Metric::ALL.iter().filter(|metric| !metric.is_gauge()).map(|metric| metric.as_str()).collect();
    sqlx::query("delete from metric_history where resolution = $1 and bucket_start >= $2 and metric = any($3)")
        .bind(resolution.as_str())
        .bind(from)
        .bind(&events)
        .execute(&mut *db)
        .await?;
    // Each queue's activity through its own index (`queue_activity (queue, at)`), and the
    // attempts that ended, by queue.
    let rows: Vec<Row> = sqlx::query_as(
        "with activity as (
             select q.name as series, a.bucket, a.submitted, a.dispatched, w.mean_seconds, w.p95_seconds
               from queues q
               cross join lateral (
                   select date_trunc($3, at) as bucket,
                          coalesce(sum(jobs) filter (where kind = 'accepted'), 0)::float8 as submitted,
                          coalesce(sum(jobs) filter (where kind = 'dispatched'), 0)::float8 as dispatched
                     from queue_activity where queue = q.name and at >= $1 and at < $2
                    group by 1
               ) a
               left join lateral (
                   select avg(wait)::float8 / 1000 as mean_seconds,
                          (percentile_cont(0.95) within group (order by wait))::float8 / 1000 as p95_seconds
                     from queue_activity d cross join lateral unnest(d.waits_ms) as wait
                    where d.queue = q.name and d.kind = 'dispatched' and d.at >= a.bucket
                      and d.at < a.bucket + ('1 ' || $3)::interval
               ) w on true
         ), ended as (
             select queue as series, date_trunc($3, ended_at) as bucket,
                    count(*) filter (where outcome = 'succeeded')::float8 as succeeded,
                    count(*) filter (where outcome not in ('succeeded', 'superseded'))::float8 as failed
               from job_attempts where ended_at >= $1 and ended_at < $2
              group by 1, 2
         )
         select series, bucket as bucket_start, metric, value from activity
          cross join lateral (values ('submitted', submitted), ('dispatched', dispatched),
                                     ('wait_mean_seconds', mean_seconds), ('wait_p95_seconds', p95_seconds))
                as m (metric, value)
          where value is not null and (metric <> 'submitted' or value > 0) and (metric <> 'dispatched' or value > 0)
         union all
         select series, bucket, metric, value from ended
          cross join lateral (values ('succeeded', succeeded), ('failed', failed)) as m (metric, value)
          where value > 0",
    )
    .bind(from)
    .bind(now)
    .bind(unit(resolution))
    .fetch_all(&mut *db)
    .await?;
    let written = insert(db, resolution, &rows).await?;
    sqlx::query(
        "insert into metric_history_rollup (resolution, rolled_until) values ($1, $2)
         on conflict (resolution) do update set rolled_until = greatest(metric_history_rollup.rolled_until, $2)",
    )
    .bind(resolution.as_str())
    .bind(current)
    .execute(&mut *db)
    .await?;
    Ok(written)
}

async fn insert(db: &mut PgConnection, resolution: Resolution, rows: &[Row]) -> sqlx::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let inserted = sqlx::query(
        "insert into metric_history (resolution, metric, series, bucket_start, value)
         select $1, m, s, b, v from unnest($2::text[], $3::text[], $4::timestamptz[], $5::float8[]) as x (m, s, b, v)",
    )
    .bind(resolution.as_str())
    .bind(rows.iter().map(|row| row.metric.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.series.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.bucket_start).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.value).collect::<Vec<_>>())
    .execute(db)
    .await?;
    Ok(inserted.rows_affected())
}

/// Queue lengths and oldest waits, pool sizes, readiness, busy workers and utilisation as
/// they are now, into `now`'s minute bucket, which keeps the latest sample: however many
/// roll-ups run in a minute (one per replica, or a replica's retry), the minute holds one
/// sample.
async fn sample_gauges(db: &mut PgConnection, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let bucket = now.duration_trunc(Resolution::Minute.duration()).unwrap_or(now);
    let sampled = sqlx::query(
        "with gauges as (
             select q.name as series, m.metric, m.value
               from queues q
               cross join lateral (
                   select count(*)::float8 as length,
                          coalesce(extract(epoch from $3 - min(enqueued_at)), 0)::float8 as oldest
                     from ready_jobs where queue = q.name
               ) r
               cross join lateral (values ('queue_length', r.length), ('oldest_wait_seconds', r.oldest)) as m (metric, value)
             union all
             select p.id, m.metric, m.value
               from pools p
               cross join lateral (
                   select count(*)::float8 as size,
                          count(*) filter (where s.status = 'ready' and w.id is not null)::float8 as ready
                     from pool_members s
                     left join workers w on w.instance_id in (s.id::text, s.instance) and w.gone_at is null
                    where s.pool_id = p.id
               ) c
               cross join lateral (
                   select count(*) filter (where h.used > 0)::float8 as busy,
                          coalesce(sum(h.used)::float8 / nullif(sum(w.slots), 0), 0)::float8 as utilization
                     from workers w
                     cross join lateral (select count(*) as used from worker_jobs j where j.worker_id = w.id) h
                    where w.pool = p.id and w.gone_at is null
               ) u
               cross join lateral (values ('pool_size', c.size), ('pool_ready', c.ready), ('pool_busy', u.busy),
                                          ('pool_utilization', u.utilization)) as m (metric, value)
         )
         insert into metric_history (resolution, metric, series, bucket_start, value, samples)
         select $1, metric, series, $2, value, 1 from gauges
         on conflict (resolution, metric, series, bucket_start) do update set value = excluded.value",
    )
    .bind(Resolution::Minute.as_str())
    .bind(bucket)
    .bind(now)
    .execute(db)
    .await?;
    Ok(sampled.rows_affected())
}

/// The gauges of `now`'s hour bucket: the mean of its minute buckets (`samples` of them),
/// recomputed from them, so each minute counts once whichever replicas sampled it and
/// however often. Minute buckets are kept a day, so an open hour's minutes are all there.
async fn average_gauges_by_hour(db: &mut PgConnection, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let hour = now.duration_trunc(Resolution::Hour.duration()).unwrap_or(now);
    let gauges: Vec<&str> =
        Metric::ALL.iter().filter(|metric| metric.is_gauge()).map(|metric| metric.as_str()).collect();
    let averaged = sqlx::query(
        "insert into metric_history (resolution, metric, series, bucket_start, value, samples)
         select $1, metric, series, $3, avg(value), count(*)::int4
           from metric_history
          where resolution = $2 and bucket_start >= $3 and bucket_start < $4 and metric = any($5)
          group by metric, series
         on conflict (resolution, metric, series, bucket_start) do update
             set value = excluded.value, samples = excluded.samples",
    )
    .bind(Resolution::Hour.as_str())
    .bind(Resolution::Minute.as_str())
    .bind(hour)
    .bind(hour + Resolution::Hour.duration())
    .bind(&gauges)
    .execute(db)
    .await?;
    Ok(averaged.rows_affected())
}

/// One series' buckets of `resolution` in `from..to`, in order.
pub async fn series(
    db: impl PgExecutor<'_>,
    resolution: Resolution,
    metric: Metric,
    series: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> sqlx::Result<Vec<Point>> {
    let rows: Vec<(DateTime<Utc>, f64)> = sqlx::query_as(
        "select bucket_start, value from metric_history
          where resolution = $1 and metric = $2 and series = $3 and bucket_start >= $4 and bucket_start < $5
          order by bucket_start",
    )
    .bind(resolution.as_str())
    .bind(metric.as_str())
    .bind(series)
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(at, value)| Point { at, value }).collect())
}
