//! Waiting jobs per queue and tenant, counted where they are written: triggers on
//! `ready_jobs` and `scheduled_jobs` add each statement's rows to `queue_backlog`, one row
//! per queue, tenant and backend (see the migration `queue_backlog`). Reading a queue's
//! length, or a tenant's waiting jobs, is a sum over a few rows, whatever its depth: queue
//! status, the metrics, a bounded queue's admission and the queued-jobs quota read them.

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// One tenant's waiting jobs in a queue.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Backlog {
    pub tenant: String,
    /// Ready for dispatch.
    pub ready: i64,
    /// Waiting for a time (not-before or retry backoff).
    pub scheduled: i64,
}

/// The waiting jobs of `queue` per tenant (only `tenant_scope`'s with one), most ready
/// first; tenants with nothing waiting are left out.
pub async fn of_queue(db: &mut PgConnection, queue: &str, tenant_scope: Option<Uuid>) -> sqlx::Result<Vec<Backlog>> {
    sqlx::query_as(
        "select t.name as tenant, sum(b.ready)::int8 as ready, sum(b.scheduled)::int8 as scheduled
         from queue_backlog b join tenants t on t.id = b.tenant_id
         where b.queue = $1 and ($2::uuid is null or b.tenant_id = $2)
         group by t.name
         having sum(b.ready) <> 0 or sum(b.scheduled) <> 0
         order by sum(b.ready) desc, t.name",
    )
    .bind(queue)
    .bind(tenant_scope)
    .fetch_all(db)
    .await
}

/// The jobs waiting (ready or scheduled) in `queue`, or `cap` if more.
pub async fn in_queue(db: impl PgExecutor<'_>, queue: &str, cap: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "select least(coalesce(sum(ready + scheduled), 0), $2)::int8 from queue_backlog where queue = $1",
    )
    .bind(queue)
    .bind(cap)
    .fetch_one(db)
    .await
}

/// The jobs `tenant_id` has waiting (ready or scheduled) in any queue, or `cap` if more.
pub async fn of_tenant(db: impl PgExecutor<'_>, tenant_id: Uuid, cap: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "select least(coalesce(sum(ready + scheduled), 0), $2)::int8 from queue_backlog where tenant_id = $1",
    )
    .bind(tenant_id)
    .bind(cap)
    .fetch_one(db)
    .await
}

/// Folds the counters of backends that have exited into one row per queue and tenant, and
/// drops folded rows that count nothing. Never waits: a row some transaction holds is left
/// for the next fold.
pub async fn fold(db: impl PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "with gone as (
            select queue, tenant_id, slot from queue_backlog b
            where slot <> 0 and not exists (select 1 from pg_stat_activity a where a.pid = b.slot)
            for update skip locked
         ), removed as (
            delete from queue_backlog b using gone g
            where b.queue = g.queue and b.tenant_id = g.tenant_id and b.slot = g.slot
            returning b.queue, b.tenant_id, b.ready, b.scheduled
         ), folded as (
            insert into queue_backlog as b (queue, tenant_id, slot, ready, scheduled)
            select queue, tenant_id, 0, sum(ready), sum(scheduled) from removed
            group by queue, tenant_id order by queue, tenant_id
            on conflict (queue, tenant_id, slot) do update
                set ready = b.ready + excluded.ready, scheduled = b.scheduled + excluded.scheduled
         ), empty as (
            select queue, tenant_id from queue_backlog
            where slot = 0 and ready = 0 and scheduled = 0
            for update skip locked
         ), dropped as (
            -- Counted again by the next statement that adds a job; nothing folds into a
            -- row this statement deletes (the rows folded above are not yet visible to it).
            delete from queue_backlog b using empty e
            where b.queue = e.queue and b.tenant_id = e.tenant_id and b.slot = 0
              and not exists (select 1 from removed r where r.queue = e.queue and r.tenant_id = e.tenant_id)
         )
         select 1",
    )
    .execute(db)
    .await?;
    Ok(())
}
