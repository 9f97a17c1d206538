//! The `tenants` table: who may submit work, and each tenant's weight for fair queuing.

use chrono::{DateTime, Utc};
use sqlx::{Connection, FromRow, PgExecutor};
use uuid::Uuid;

pub const DEFAULT_WEIGHT: i32 = 1;
pub const MAX_WEIGHT: i32 = 1000;

#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    /// Share of contended queue capacity relative to other tenants (1–1000).
    pub weight: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn create(db: impl PgExecutor<'_>, name: &str, weight: i32) -> sqlx::Result<Tenant> {
    sqlx::query_as(
        "insert into tenants (id, name, weight) values ($1, $2, $3)
         returning id, name, weight, created_at, updated_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(weight)
    .fetch_one(db)
    .await
}

pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Tenant>> {
    sqlx::query_as("select id, name, weight, created_at, updated_at from tenants order by name").fetch_all(db).await
}

pub async fn get(db: impl PgExecutor<'_>, name: &str) -> sqlx::Result<Option<Tenant>> {
    sqlx::query_as("select id, name, weight, created_at, updated_at from tenants where name = $1")
        .bind(name)
        .fetch_optional(db)
        .await
}

pub async fn set_weight(db: impl PgExecutor<'_>, name: &str, weight: i32) -> sqlx::Result<Option<Tenant>> {
    sqlx::query_as(
        "update tenants set weight = $2, updated_at = now() where name = $1
         returning id, name, weight, created_at, updated_at",
    )
    .bind(name)
    .bind(weight)
    .fetch_optional(db)
    .await
}

/// What deleting a tenant did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    /// It still has jobs that have not ended (scheduled, queued, assigned or running), by
    /// state; nothing was deleted.
    HasUnfinishedJobs(Vec<(String, i64)>),
}

/// The states of a job that has not ended.
pub const UNFINISHED_STATES: [&str; 4] = ["scheduled", "queued", "assigned", "running"];

/// Deletes a tenant with its keys, finished jobs and events, unless it has jobs that have
/// not ended: those are never discarded silently, even when one is put back in its queue
/// while the tenant is being deleted.
pub async fn delete(db: &mut sqlx::PgConnection, name: &str) -> sqlx::Result<DeleteOutcome> {
    let Some((tenant_id,)) = sqlx::query_as::<_, (Uuid,)>("select id from tenants where name = $1 for update")
        .bind(name)
        .fetch_optional(&mut *db)
        .await?
    else {
        return Ok(DeleteOutcome::NotFound);
    };
    let unfinished = unfinished_jobs(&mut *db, tenant_id).await?;
    if !unfinished.is_empty() {
        return Ok(DeleteOutcome::HasUnfinishedJobs(unfinished));
    }
    // The tenant's row lock keeps new jobs out, not an ended job put back in its queue (a
    // redrive, a retry) after the check above. Deleting the jobs waits for each one's row
    // lock and then sees the job as it is now: one that no longer has ended undoes it all.
    let mut deletes = db.begin().await?;
    let revived: Option<String> = sqlx::query_scalar(
        "with gone as (delete from jobs where tenant_id = $1 returning state)
         select state from gone where state = any($2) limit 1",
    )
    .bind(tenant_id)
    .bind(UNFINISHED_STATES)
    .fetch_optional(&mut *deletes)
    .await?;
    if let Some(state) = revived {
        deletes.rollback().await?;
        let unfinished = unfinished_jobs(&mut *db, tenant_id).await?;
        return Ok(DeleteOutcome::HasUnfinishedJobs(if unfinished.is_empty() { vec![(state, 1)] } else { unfinished }));
    }
    // Each statement below reads what committed before it started, so every event of the
    // jobs deleted above: each was written holding its job's row lock, or while the job had
    // not ended (see the migration that dropped the events' tenant key).
    sqlx::query("delete from tenants where id = $1").bind(tenant_id).execute(&mut *deletes).await?;
    sqlx::query("delete from job_events where tenant_id = $1").bind(tenant_id).execute(&mut *deletes).await?;
    sqlx::query("delete from queue_activity where tenant_id = $1").bind(tenant_id).execute(&mut *deletes).await?;
    deletes.commit().await?;
    Ok(DeleteOutcome::Deleted)
}

/// A tenant's jobs that have not ended, counted by state (states in lifecycle order).
pub async fn unfinished_jobs(db: impl PgExecutor<'_>, tenant_id: Uuid) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "select state, count(*) from jobs where tenant_id = $1 and state = any($2)
         group by state order by array_position($2, state)",
    )
    .bind(tenant_id)
    .bind(UNFINISHED_STATES)
    .fetch_all(db)
    .await
}

/// Ids of up to `limit` of a tenant's jobs that have not ended and whose cancel was not
/// yet requested.
pub async fn uncancelled_jobs(db: impl PgExecutor<'_>, tenant_id: Uuid, limit: i64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "select id from jobs where tenant_id = $1 and state = any($2)
           and (cancel_requested_at is null or state in ('scheduled', 'queued'))
         order by id limit $3",
    )
    .bind(tenant_id)
    .bind(UNFINISHED_STATES)
    .bind(limit)
    .fetch_all(db)
    .await
}
