//! Queue status: how long a queue is, how long its jobs wait, how often it breaches its
//! SLA, overflows or is abandoned, and whose work is in it. Computed on demand from the
//! queue's counters (`queue_backlog`), the ready queue's oldest entries and the queue's
//! activity log (admissions, and one row per dispatch with its waits), over a recent
//! window. Read-only.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::store::queue_backlog;
use crate::store::queues::Queue;

/// Wait-time percentiles over the window, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitPercentiles {
    /// Jobs dispatched in the window (the sample behind the percentiles).
    pub dispatched: i64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One tenant's waiting work in a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantBacklog {
    pub tenant: String,
    pub ready: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueStatus {
    pub queue: String,
    pub policy: String,
    pub window_seconds: i64,
    /// Jobs ready for dispatch now.
    pub length: i64,
    /// Jobs waiting for a time (not-before or retry backoff).
    pub scheduled: i64,
    /// How long the oldest ready job has waited, in seconds.
    pub oldest_wait_seconds: Option<f64>,
    pub wait: WaitPercentiles,
    pub sla_max_wait_seconds: Option<i64>,
    /// Jobs dispatched in the window after waiting longer than the SLA.
    pub sla_breaches: i64,
    /// Jobs waiting now that are already past the SLA.
    pub sla_breaching_now: i64,
    /// Submissions admitted to this queue in the window (including redirects into it).
    pub submitted: i64,
    pub rejected: i64,
    pub redirected_away: i64,
    pub evicted: i64,
    pub cancelled_while_queued: i64,
    pub deadline_expired: i64,
    /// Cancelled while queued, per job submitted.
    pub abandonment_rate: f64,
    /// Rejected, redirected away or evicted, per job offered.
    pub overflow_rate: f64,
    /// Ready jobs per tenant (a tenant key sees only its own).
    pub tenants: Vec<TenantBacklog>,
}

/// The status of `queue` over the last `window_seconds`; with `tenant_scope` every number
/// is that tenant's own (a tenant never learns another's traffic), without it the whole
/// queue's.
pub async fn status(
    db: &mut PgConnection,
    queue: &Queue,
    window_seconds: i64,
    tenant_scope: Option<Uuid>,
) -> sqlx::Result<QueueStatus> {
    let name = &queue.settings.name;
    let backlog = queue_backlog::of_queue(&mut *db, name, tenant_scope).await?;
    let length = backlog.iter().map(|tenant| tenant.ready).sum();
    let scheduled = backlog.iter().map(|tenant| tenant.scheduled).sum();
    // The oldest is the first entry of `ready_jobs (queue, enqueued_at)`; the jobs past
    // the SLA are a range of it (counted only when the queue has an SLA).
    let (oldest_wait_seconds, breaching_now): (Option<f64>, i64) = sqlx::query_as(
        "select (select extract(epoch from now() - min(enqueued_at))::float8 from ready_jobs
                 where queue = $1 and ($3::uuid is null or tenant_id = $3)),
                case when $2::int4 is null then 0 else
                    (select count(*) from ready_jobs
                     where queue = $1 and enqueued_at < now() - make_interval(secs => $2)
                       and ($3::uuid is null or tenant_id = $3)) end",
    )
    .bind(name)
    .bind(queue.settings.sla_max_wait_seconds.map(|s| s as i32))
    .bind(tenant_scope)
    .fetch_one(&mut *db)
    .await?;
    let (dispatched, p50, p95, p99, breaches): (i64, Option<f64>, Option<f64>, Option<f64>, i64) = sqlx::query_as(
        "select count(w.wait_ms),
                percentile_cont(0.5) within group (order by w.wait_ms),
                percentile_cont(0.95) within group (order by w.wait_ms),
                percentile_cont(0.99) within group (order by w.wait_ms),
                (select coalesce(sum(sla_breaches), 0)::int8 from queue_activity
                 where queue = $1 and kind = 'dispatched' and at > now() - make_interval(secs => $2)
                   and ($3::uuid is null or tenant_id = $3))
         from queue_activity a cross join lateral unnest(a.waits_ms) as w(wait_ms)
         where a.queue = $1 and a.kind = 'dispatched' and a.at > now() - make_interval(secs => $2)
           and ($3::uuid is null or a.tenant_id = $3)",
    )
    .bind(name)
    .bind(window_seconds as f64)
    .bind(tenant_scope)
    .fetch_one(&mut *db)
    .await?;
    let activity: Vec<(String, i64)> = sqlx::query_as(
        "select kind, sum(jobs)::int8 from queue_activity
         where queue = $1 and at > now() - make_interval(secs => $2) and ($3::uuid is null or tenant_id = $3)
         group by kind",
    )
    .bind(name)
    .bind(window_seconds as f64)
    .bind(tenant_scope)
    .fetch_all(&mut *db)
    .await?;
    let count = |kind: &str| activity.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n);
    // Redirects into this queue are recorded on the queue they came from.
    let (redirected_in,): (i64,) = sqlx::query_as(
        "select coalesce(sum(jobs), 0)::int8 from queue_activity
         where target_queue = $1 and kind = 'redirected' and at > now() - make_interval(secs => $2)
           and ($3::uuid is null or tenant_id = $3)",
    )
    .bind(name)
    .bind(window_seconds as f64)
    .bind(tenant_scope)
    .fetch_one(&mut *db)
    .await?;

    let submitted = count("accepted") + redirected_in;
    let (rejected, redirected_away, evicted) = (count("rejected"), count("redirected"), count("evicted"));
    let cancelled_while_queued = count("cancelled_queued");
    let offered = submitted + rejected + redirected_away;
    let ratio = |part: i64, whole: i64| if whole == 0 { 0.0 } else { part as f64 / whole as f64 };
    Ok(QueueStatus {
        queue: name.clone(),
        policy: queue.settings.policy.clone(),
        window_seconds,
        length,
        scheduled,
        oldest_wait_seconds,
        wait: WaitPercentiles { dispatched, p50_ms: p50, p95_ms: p95, p99_ms: p99 },
        sla_max_wait_seconds: queue.settings.sla_max_wait_seconds,
        sla_breaches: breaches,
        sla_breaching_now: breaching_now,
        submitted,
        rejected,
        redirected_away,
        evicted,
        cancelled_while_queued,
        deadline_expired: count("deadline_expired"),
        abandonment_rate: ratio(cancelled_while_queued, submitted),
        overflow_rate: ratio(rejected + redirected_away + evicted, offered),
        tenants: backlog
            .into_iter()
            .filter(|tenant| tenant.ready > 0)
            .map(|tenant| TenantBacklog { tenant: tenant.tenant, ready: tenant.ready })
            .collect(),
    })
}
