//! The `job_logs` table: job output shipped by workers, read back by cursor.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

/// One chunk of output.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow, ToSchema)]
pub struct LogChunk {
    /// Position; pass the last one seen as `after` to continue.
    pub seq: i64,
    pub attempt: i32,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub data: String,
    pub at: DateTime<Utc>,
}

/// A chunk as a worker sends it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewChunk {
    /// `stdout` or `stderr`.
    pub stream: String,
    pub data: String,
}

/// Appends chunks for the attempt `worker_id` holds; false (nothing written) when it holds
/// no such attempt.
pub async fn append(
    db: impl PgExecutor<'_>,
    worker_id: Uuid,
    job_id: Uuid,
    attempt: i32,
    chunks: &[NewChunk],
) -> sqlx::Result<bool> {
    let held: bool = sqlx::query_scalar(
        "with held as (
            select 1 from worker_jobs where job_id = $1 and worker_id = $2 and attempt = $3
         ), written as (
            insert into job_logs (job_id, attempt, stream, data)
            select $1, $3, stream, data from unnest($4::text[], $5::text[]) with ordinality as c(stream, data, n)
            where exists (select 1 from held) order by n
         )
         select exists (select 1 from held)",
    )
    .bind(job_id)
    .bind(worker_id)
    .bind(attempt)
    .bind(chunks.iter().map(|c| c.stream.as_str()).collect::<Vec<_>>())
    .bind(chunks.iter().map(|c| c.data.as_str()).collect::<Vec<_>>())
    .fetch_one(db)
    .await?;
    Ok(held)
}

/// Chunks of `job_id` after `after`, oldest first.
pub async fn read(db: impl PgExecutor<'_>, job_id: Uuid, after: i64, limit: i64) -> sqlx::Result<Vec<LogChunk>> {
    sqlx::query_as(
        "select seq, attempt, stream, data, at from job_logs where job_id = $1 and seq > $2 order by seq limit $3",
    )
    .bind(job_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}
