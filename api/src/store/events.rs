//! The `job_events` table: an append-only log of every job state change, read by cursor.
//!
//! Event ids are stream positions built from the writing transaction's id (see the
//! migration). `after` returns only events whose transaction id is older than every
//! transaction still running, so an event can never appear behind a cursor that a client
//! already holds.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

/// One entry of the job event stream.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow, ToSchema)]
pub struct JobEvent {
    /// Stream position; pass the last one seen as `after` to continue.
    pub id: i64,
    pub job_id: Uuid,
    pub tenant: String,
    /// What happened, e.g. `job.submitted`, `job.cancelled`, `job.cancel_requested`.
    pub kind: String,
    /// The job's state after the event.
    pub state: String,
    pub attempt: i32,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub tenant_id: Uuid,
    pub job_id: Uuid,
    pub kind: &'a str,
    pub state: &'a str,
    pub attempt: i32,
}

pub async fn append(db: impl PgExecutor<'_>, event: NewEvent<'_>) -> sqlx::Result<()> {
    sqlx::query("insert into job_events (tenant_id, job_id, kind, state, attempt) values ($1, $2, $3, $4, $5)")
        .bind(event.tenant_id)
        .bind(event.job_id)
        .bind(event.kind)
        .bind(event.state)
        .bind(event.attempt)
        .execute(db)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub tenant_scope: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub after: i64,
    pub limit: i64,
}

/// Events after the cursor, oldest first, that are safe to hand out.
pub async fn list_after(db: impl PgExecutor<'_>, filter: &EventFilter) -> sqlx::Result<Vec<JobEvent>> {
    sqlx::query_as(
        "select e.id, e.job_id, t.name as tenant, e.kind, e.state, e.attempt, e.data, e.at
         from job_events e join tenants t on t.id = e.tenant_id
         where ($1::uuid is null or e.tenant_id = $1)
           and ($2::uuid is null or e.job_id = $2)
           and e.id > $3
           and e.id < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)
         order by e.id
         limit $4",
    )
    .bind(filter.tenant_scope)
    .bind(filter.job_id)
    .bind(filter.after)
    .bind(filter.limit)
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tenants;
    use crate::testing::TestDatabase;

    async fn append_for(db: impl PgExecutor<'_>, tenant_id: Uuid, kind: &str) {
        append(db, NewEvent { tenant_id, job_id: Uuid::now_v7(), kind, state: "queued", attempt: 0 })
            .await
            .expect("append");
    }

    /// The guarantee the cursor rests on: an event committed after an older transaction's
    /// event is held back until that transaction ends, so a reader's cursor never passes
    /// an event that is still to appear.
    #[tokio::test]
    async fn a_later_commit_waits_for_an_older_open_transaction() {
        let database = TestDatabase::migrated().await;
        let pool = database.pool().await;
        let tenant = tenants::create(&pool, "acme", 1).await.expect("tenant");
        let all = EventFilter { tenant_scope: Some(tenant.id), job_id: None, after: 0, limit: 100 };

        let mut older = pool.begin().await.expect("begin");
        append_for(&mut *older, tenant.id, "older").await;
        append_for(&pool, tenant.id, "newer").await;

        let visible = list_after(&pool, &all).await.expect("list");
        assert!(visible.is_empty(), "the newer event must wait for the older transaction: {visible:?}");

        older.commit().await.expect("commit");
        let mut visible = Vec::new();
        // Other databases' transactions on a shared server can hold events back briefly too.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while visible.len() < 2 {
            assert!(std::time::Instant::now() < deadline, "events not published: {visible:?}");
            visible = list_after(&pool, &all).await.expect("list");
        }
        let kinds: Vec<&str> = visible.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["older", "newer"]);
        assert!(visible[0].id < visible[1].id);
        let after_first = EventFilter { after: visible[0].id, ..all.clone() };
        let rest = list_after(&pool, &after_first).await.expect("list");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].kind, "newer");
    }
}
