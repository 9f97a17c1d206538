//! The `tenants` table: who may submit work, and each tenant's weight for fair queuing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

pub const DEFAULT_WEIGHT: i32 = 1;
pub const MAX_WEIGHT: i32 = 1000;

#[derive(Debug, Clone, PartialEq, Serialize, FromRow, ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    /// It still has jobs that are queued or on a worker; nothing was deleted.
    HasActiveJobs(i64),
}

/// Deletes a tenant with its keys, finished jobs and events, unless it has active jobs.
pub async fn delete(db: &mut sqlx::PgConnection, name: &str) -> sqlx::Result<DeleteOutcome> {
    let Some((tenant_id,)) = sqlx::query_as::<_, (Uuid,)>("select id from tenants where name = $1 for update")
        .bind(name)
        .fetch_optional(&mut *db)
        .await?
    else {
        return Ok(DeleteOutcome::NotFound);
    };
    let (active,): (i64,) =
        sqlx::query_as("select count(*) from jobs where tenant_id = $1 and state in ('queued', 'assigned', 'running')")
            .bind(tenant_id)
            .fetch_one(&mut *db)
            .await?;
    if active > 0 {
        return Ok(DeleteOutcome::HasActiveJobs(active));
    }
    sqlx::query("delete from tenants where id = $1").bind(tenant_id).execute(&mut *db).await?;
    Ok(DeleteOutcome::Deleted)
}
