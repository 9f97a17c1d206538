//! The `job_events` table: an append-only log of every job state change, read by cursor.
//!
//! Event ids are stream positions built from the writing transaction's id (see the
//! migration). `after` returns only events whose transaction id is older than every
//! transaction of this database still running, so an event can never appear behind a
//! cursor that a client already holds.
//!
//! Each event also carries its job's `version`: one job's events numbered in the order
//! their transactions committed. The stream as a whole is in position order, which for
//! one job can differ from commit order; a consumer folding a job's state uses `version`,
//! and reading one job (`job_id`) returns its events in version order with the version as
//! the cursor.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

/// One entry of the job event stream.
#[derive(Debug, Clone, PartialEq, FromRow)]
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
    /// The job's own event number, 1 for `job.submitted`: the order in which its changes
    /// committed.
    pub version: i32,
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
    /// One job's events, in version order; `after` is then a version.
    pub job_id: Option<Uuid>,
    pub after: i64,
    pub limit: i64,
}

/// The stream position below which every event has committed or never will: the oldest
/// transaction of this database still running (or, with none, the next transaction id).
///
/// `pg_snapshot_xmin` would be simpler but spans the whole cluster: one idle transaction
/// in another database would hold the stream back for as long as it stays open. So the
/// in-progress transactions of the statement's snapshot are filtered: those positively
/// known to belong to another database (through their transaction-id locks and their
/// backend's database, or as prepared transactions of another database) are left out.
/// Any in-progress transaction that cannot be placed — one that has its id but has not yet
/// taken the lock on it, or ended after the snapshot — counts, which only delays events.
/// The assumption that remains: every transaction that writes events holds the lock on its
/// own transaction id while it runs, which Postgres guarantees.
const HORIZON: &str = "(select coalesce(
        (select min(x::text::bigint) from pg_snapshot_xip(snapshot.s) x
         where (x::text::bigint & 4294967295) not in (
             select l.transactionid::text::bigint from pg_locks l join pg_stat_activity a on a.pid = l.pid
             where l.locktype = 'transactionid' and l.granted and l.mode = 'ExclusiveLock'
               and a.datname is distinct from current_database()
             union all
             select p.transaction::text::bigint from pg_prepared_xacts p where p.database <> current_database())),
        pg_snapshot_xmax(snapshot.s)::text::bigint) << 20
    from (select pg_current_snapshot() as s) snapshot)";

/// Events after the cursor that are safe to hand out: in stream order, or for one job in
/// version order (every committed event of a job is visible: its versions commit in order,
/// so what a snapshot sees of one job is always a prefix).
pub async fn list_after(db: impl PgExecutor<'_>, filter: &EventFilter) -> sqlx::Result<Vec<JobEvent>> {
    let sql = match filter.job_id {
        Some(_) => "select e.id, e.job_id, t.name as tenant, e.kind, e.state, e.attempt, e.version, e.data, e.at
             from job_events e join tenants t on t.id = e.tenant_id
             where ($1::uuid is null or e.tenant_id = $1) and e.job_id = $2 and e.version > $3
             order by e.version
             limit $4"
            .to_owned(),
        None => format!(
            "select e.id, e.job_id, t.name as tenant, e.kind, e.state, e.attempt, e.version, e.data, e.at
             from job_events e join tenants t on t.id = e.tenant_id
             where ($1::uuid is null or e.tenant_id = $1) and $2::uuid is null
               and e.id > $3 and e.id < {HORIZON}
             order by e.id
             limit $4"
        ),
    };
    sqlx::query_as(&sql)
        .bind(filter.tenant_scope)
        .bind(filter.job_id)
        .bind(filter.after)
        .bind(filter.limit)
        .fetch_all(db)
        .await
}

/// What a stream follower wants: every event after `after` (a stream position) of its
/// tenant, optionally only one job's, one queue's or some kinds.
#[derive(Debug, Clone, Default)]
pub struct StreamFilter {
    pub tenant_scope: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub queue: Option<String>,
    pub kinds: Option<Vec<String>>,
    pub after: i64,
    pub limit: i64,
}

/// Events after a stream position in stream order, below the horizon (so a follower that
/// resumes from the last position it saw misses nothing), filtered.
pub async fn stream_after(db: impl PgExecutor<'_>, filter: &StreamFilter) -> sqlx::Result<Vec<JobEvent>> {
    sqlx::query_as(&format!(
        "select e.id, e.job_id, t.name as tenant, e.kind, e.state, e.attempt, e.version, e.data, e.at
         from job_events e join tenants t on t.id = e.tenant_id
         where ($1::uuid is null or e.tenant_id = $1) and ($2::uuid is null or e.job_id = $2)
           and ($3::text is null or exists (select 1 from jobs j where j.id = e.job_id and j.queue = $3))
           and ($4::text[] is null or e.kind = any($4))
           and e.id > $5 and e.id < {HORIZON}
         order by e.id
         limit $6"
    ))
    .bind(filter.tenant_scope)
    .bind(filter.job_id)
    .bind(&filter.queue)
    .bind(&filter.kinds)
    .bind(filter.after)
    .bind(filter.limit)
    .fetch_all(db)
    .await
}

/// One attempt of a job as its events tell it.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct AttemptRecord {
    /// The attempt's number (the job's `attempt` when it ran).
    pub attempt: i32,
    pub worker_id: Option<Uuid>,
    pub assigned_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// `succeeded`, `failed` (retried), `dead_lettered`, `cancelled`, or `running` (not ended).
    pub outcome: String,
    /// Why it failed, as its worker or the control plane said (`exited with code 3`, …).
    pub error: Option<String>,
}

/// A job's attempts, oldest first, from its events.
pub async fn attempts(db: impl PgExecutor<'_>, job_id: Uuid) -> sqlx::Result<Vec<AttemptRecord>> {
    sqlx::query_as(
        "select attempt,
                (array_agg((data->>'worker_id')::uuid) filter (where kind = 'job.assigned'))[1] as worker_id,
                min(at) filter (where kind = 'job.assigned') as assigned_at,
                min(at) filter (where kind = 'job.started') as started_at,
                max(at) filter (where kind = any($2)) as ended_at,
                coalesce((array_agg(case kind when 'job.succeeded' then 'succeeded'
                                              when 'job.retry_scheduled' then 'failed'
                                              when 'job.dead_lettered' then 'dead_lettered'
                                              else 'cancelled' end order by version desc)
                          filter (where kind = any($2)))[1], 'running') as outcome,
                (array_agg(data->>'error' order by version desc) filter (where kind = any($2)))[1] as error
         from job_events where job_id = $1 and attempt > 0
         group by attempt having count(*) filter (where kind = 'job.assigned') > 0
         order by attempt",
    )
    .bind(job_id)
    .bind(["job.succeeded", "job.retry_scheduled", "job.dead_lettered", "job.cancelled"])
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tenants;
    use crate::testing::TestDatabase;
    use sqlx::Connection;

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

    /// A transaction left open in another database of the same server must not hold this
    /// database's stream back.
    #[tokio::test]
    async fn an_open_transaction_in_another_database_does_not_stall_the_stream() {
        let database = TestDatabase::migrated().await;
        let pool = database.pool().await;
        let tenant = tenants::create(&pool, "acme", 1).await.expect("tenant");
        let all = EventFilter { tenant_scope: Some(tenant.id), job_id: None, after: 0, limit: 100 };

        let elsewhere = TestDatabase::empty().await;
        let mut other = sqlx::PgConnection::connect(&elsewhere.url).await.expect("connect elsewhere");
        sqlx::query("begin").execute(&mut other).await.expect("begin elsewhere");
        sqlx::query("select pg_current_xact_id()").execute(&mut other).await.expect("an id elsewhere");

        append_for(&pool, tenant.id, "while another database waits").await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let visible = list_after(&pool, &all).await.expect("list");
            if visible.len() == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "an idle transaction in another database held the stream back: {visible:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // An open transaction of this database still does.
        let mut own = pool.begin().await.expect("begin here");
        append_for(&mut *own, tenant.id, "uncommitted").await;
        append_for(&pool, tenant.id, "after it").await;
        assert_eq!(list_after(&pool, &all).await.expect("list").len(), 1);
        own.rollback().await.expect("rollback");
        sqlx::query("rollback").execute(&mut other).await.expect("rollback elsewhere");
    }

    /// One job's events are numbered in commit order, and reading one job returns them in
    /// that order even where stream positions say otherwise: here the transaction that
    /// wrote first (the smaller position) commits last.
    #[tokio::test]
    async fn a_jobs_events_follow_commit_order() {
        let database = TestDatabase::migrated().await;
        let pool = database.pool().await;
        let tenant = tenants::create(&pool, "acme", 1).await.expect("tenant");
        let job_id = Uuid::now_v7();
        let event = |kind| NewEvent { tenant_id: tenant.id, job_id, kind, state: "queued", attempt: 0 };
        append(&pool, event("job.submitted")).await.expect("submitted");

        // The earlier transaction takes its id first, then commits after a later one.
        let mut earlier = pool.begin().await.expect("begin");
        sqlx::query("select pg_current_xact_id()").execute(&mut *earlier).await.expect("an id");
        let mut later = pool.begin().await.expect("begin");
        append(&mut *later, event("job.cancel_requested")).await.expect("first to commit");
        later.commit().await.expect("commit");
        append(&mut *earlier, event("job.cancelled")).await.expect("last to commit");
        earlier.commit().await.expect("commit");

        // A transaction of another database that was running when a read took its snapshot
        // and ended before the read placed it counts as this database's and delays the
        // stream (tests of other databases run alongside): read until all three are out.
        let all = EventFilter { tenant_scope: None, job_id: None, after: 0, limit: 10 };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let stream = loop {
            let stream = list_after(&pool, &all).await.expect("stream");
            if stream.len() == 3 || std::time::Instant::now() >= deadline {
                break stream;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let by_position: Vec<&str> = stream.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(by_position, ["job.submitted", "job.cancelled", "job.cancel_requested"]);

        let one_job = EventFilter { tenant_scope: Some(tenant.id), job_id: Some(job_id), after: 0, limit: 10 };
        let events = list_after(&pool, &one_job).await.expect("job events");
        let in_order: Vec<(&str, i32)> = events.iter().map(|e| (e.kind.as_str(), e.version)).collect();
        assert_eq!(in_order, [("job.submitted", 1), ("job.cancel_requested", 2), ("job.cancelled", 3)]);
        let rest = list_after(&pool, &EventFilter { after: 2, ..one_job }).await.expect("after version 2");
        assert_eq!(rest.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["job.cancelled"]);
    }
}
