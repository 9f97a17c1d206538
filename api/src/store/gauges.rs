//! What `/metrics` reads from the database at a scrape: the numbers that only the
//! database knows (queue lengths and waits, workers by state, pool sizes, what each
//! tenant's jobs hold, month-to-date costs). One query per
//! group of families, whatever the number of queues, workers or pools. Read-only; counts
//! of events (submissions, dispatches, results) are never recomputed here: they are
//! counted where they happen.

use sqlx::{FromRow, PgExecutor};

/// One queue's gauges: its ready and scheduled jobs now, and its activity over the
/// recent window (the same numbers as its status).
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct QueueGauges {
    pub queue: String,
    pub length: i64,
    pub scheduled: i64,
    pub oldest_wait_seconds: Option<f64>,
    pub sla_breaching_now: i64,
    pub dispatched: i64,
    pub wait_p50_ms: Option<f64>,
    pub wait_p95_ms: Option<f64>,
    pub wait_p99_ms: Option<f64>,
    pub sla_breaches: i64,
    pub accepted: i64,
    pub rejected: i64,
    pub redirected_away: i64,
    pub redirected_in: i64,
    pub evicted: i64,
    pub cancelled_while_queued: i64,
}

impl QueueGauges {
    /// Cancelled while queued, per job submitted (as in queue status).
    pub fn abandonment_ratio(&self) -> f64 {
        ratio(self.cancelled_while_queued, self.accepted + self.redirected_in)
    }

    /// Rejected, redirected away or evicted, per job offered (as in queue status).
    pub fn overflow_ratio(&self) -> f64 {
        let submitted = self.accepted + self.redirected_in;
        ratio(self.rejected + self.redirected_away + self.evicted, submitted + self.rejected + self.redirected_away)
    }
}

fn ratio(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Every queue's gauges over the last `window_seconds`, in one statement. Each queue's
/// rows are reached through its own indexes: its counters (`queue_backlog`), the oldest
/// entries of `ready_jobs (queue, enqueued_at)`, its activity (`queue_activity (queue, at)`).
pub async fn queues(db: impl PgExecutor<'_>, window_seconds: i64) -> sqlx::Result<Vec<QueueGauges>> {
    sqlx::query_as(
        "select q.name as queue, s.length, s.scheduled, r.oldest_wait_seconds, r.sla_breaching_now,
                w.dispatched, w.wait_p50_ms, w.wait_p95_ms, w.wait_p99_ms,
                a.sla_breaches, a.accepted, a.rejected, a.redirected_away, a.evicted, a.cancelled_while_queued,
                coalesce(i.jobs, 0) as redirected_in
         from queues q
         cross join lateral (
             select coalesce(sum(ready), 0)::int8 as length, coalesce(sum(scheduled), 0)::int8 as scheduled
             from queue_backlog where queue = q.name
         ) s
         cross join lateral (
             select extract(epoch from now() - min(enqueued_at))::float8 as oldest_wait_seconds,
                    (select count(*) from ready_jobs
                     where q.sla_max_wait_seconds is not null and queue = q.name
                       and enqueued_at < now() - make_interval(secs => q.sla_max_wait_seconds)) as sla_breaching_now
             from ready_jobs where queue = q.name
         ) r
         cross join lateral (
             select count(wait) as dispatched,
                    percentile_cont(0.5) within group (order by wait) as wait_p50_ms,
                    percentile_cont(0.95) within group (order by wait) as wait_p95_ms,
                    percentile_cont(0.99) within group (order by wait) as wait_p99_ms
             from queue_activity d cross join lateral unnest(d.waits_ms) as wait
             where d.queue = q.name and d.kind = 'dispatched' and d.at > now() - make_interval(secs => $1)
         ) w
         cross join lateral (
             select coalesce(sum(sla_breaches) filter (where kind = 'dispatched'), 0)::int8 as sla_breaches,
                    coalesce(sum(jobs) filter (where kind = 'accepted'), 0)::int8 as accepted,
                    coalesce(sum(jobs) filter (where kind = 'rejected'), 0)::int8 as rejected,
                    coalesce(sum(jobs) filter (where kind = 'redirected'), 0)::int8 as redirected_away,
                    coalesce(sum(jobs) filter (where kind = 'evicted'), 0)::int8 as evicted,
                    coalesce(sum(jobs) filter (where kind = 'cancelled_queued'), 0)::int8 as cancelled_while_queued
             from queue_activity where queue = q.name and at > now() - make_interval(secs => $1)
         ) a
         left join (
             -- Redirects into a queue are recorded on the queue they came from (no index
             -- leads to them by target: one pass over the window's redirects for all).
             select target_queue, sum(jobs)::int8 as jobs from queue_activity
             where kind = 'redirected' and at > now() - make_interval(secs => $1)
             group by target_queue
         ) i on i.target_queue = q.name
         order by q.name",
    )
    .bind(window_seconds as f64)
    .fetch_all(db)
    .await
}

/// Live workers of one pool in one state (`idle` and `busy` from what they hold).
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct WorkerCount {
    pub pool: String,
    pub state: String,
    pub workers: i64,
}

/// Live workers by pool and state, in one statement.
pub async fn workers(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<WorkerCount>> {
    sqlx::query_as(
        "select w.pool,
                case when w.state in ('idle', 'busy') then case when h.worker_id is null then 'idle' else 'busy' end
                     else w.state end as state,
                count(*) as workers
         from workers w
         left join (select distinct worker_id from worker_jobs) h on h.worker_id = w.id
         where w.gone_at is null
         group by 1, 2 order by 1, 2",
    )
    .fetch_all(db)
    .await
}

/// A pool's size: what it should have (a static pool's size, the autoscaler's last
/// decision for a dynamic one), its members by status, and its busy workers.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct PoolSize {
    pub pool: String,
    pub kind: String,
    pub desired: i64,
    pub max: i64,
    pub provisioning: i64,
    pub ready: i64,
    pub draining: i64,
    pub failed: i64,
    pub busy: i64,
}

/// Every pool's size, in one statement.
pub async fn pools(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<PoolSize>> {
    sqlx::query_as(
        "select p.id as pool, p.kind,
                coalesce(p.desired_size, p.size)::int8 as desired, p.size::int8 as max,
                coalesce(m.provisioning, 0) as provisioning, coalesce(m.ready, 0) as ready,
                coalesce(m.draining, 0) as draining, coalesce(m.failed, 0) as failed,
                coalesce(b.busy, 0) as busy
         from pools p
         left join (
             select pool_id,
                    count(*) filter (where status = 'provisioning') as provisioning,
                    count(*) filter (where status = 'ready') as ready,
                    count(*) filter (where status in ('draining', 'terminating')) as draining,
                    count(*) filter (where status = 'failed') as failed
             from pool_members group by pool_id
         ) m on m.pool_id = p.id
         left join (
             select w.pool, count(*) as busy from workers w
             where w.gone_at is null and exists (select 1 from worker_jobs h where h.worker_id = w.id)
             group by w.pool
         ) b on b.pool = p.id
         order by p.id",
    )
    .fetch_all(db)
    .await
}

/// What one tenant's jobs hold on workers now: the attempts assigned or running, and the
/// resources they reserve.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct TenantUsage {
    /// The tenant's name.
    pub tenant: String,
    pub running_jobs: i64,
    pub cpu_millis: i64,
    pub memory_mib: i64,
}

/// Every tenant's usage, in one statement: tenants holding nothing report zeros, so a
/// tenant's series drops to zero rather than vanishing when its last job ends. Read from
/// `worker_jobs` (each row carries its tenant) through `worker_jobs (tenant_id, job_id)`.
pub async fn tenant_usage(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<TenantUsage>> {
    sqlx::query_as(
        "select t.name as tenant, count(h.job_id) as running_jobs,
                coalesce(sum(h.cpu_millis), 0)::int8 as cpu_millis,
                coalesce(sum(h.memory_mib), 0)::int8 as memory_mib
           from tenants t left join worker_jobs h on h.tenant_id = t.id
          group by t.name
          order by t.name",
    )
    .fetch_all(db)
    .await
}

/// What the current UTC month has cost so far, from the roll-up's sums per day
/// (`cost_daily`): per pool, attributed to attempts and idle; per tenant, attributed.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct MonthCost {
    /// `pool` or `tenant`.
    pub scope: String,
    /// The pool's id or the tenant's name.
    pub key: String,
    pub attributed: f64,
    pub idle: f64,
}

/// Every pool's and tenant's cost this month, in one statement.
pub async fn month_costs(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<MonthCost>> {
    sqlx::query_as(
        "with month as (
             select * from cost_daily
              where day >= date_trunc('month', now() at time zone 'UTC')::date
         )
         select 'pool' as scope, pool as key,
                coalesce(sum(amount) filter (where kind = 'attempt'), 0)::float8 as attributed,
                coalesce(sum(amount) filter (where kind = 'idle'), 0)::float8 as idle
           from month group by pool
         union all
         select 'tenant', coalesce(t.name, m.tenant_id::text), coalesce(sum(m.amount), 0)::float8, 0
           from month m left join tenants t on t.id = m.tenant_id
          where m.kind = 'attempt' and m.tenant_id is not null
          group by 2
         order by 1, 2",
    )
    .fetch_all(db)
    .await
}
