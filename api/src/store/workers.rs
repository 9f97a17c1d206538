//! The `workers` table: registered worker agents, their capacity, and their liveness.
//! A heartbeat is one narrow `update` that touches no indexed column, so it stays cheap
//! with thousands of workers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

/// Where a worker is in its life: the worker protocol's (`idle`, `busy`, `draining` in
/// heartbeats), shared with the agent.
pub use hodei_protocol::WorkerState;

/// A worker: its row, with the capacity its held attempts use.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub id: Uuid,
    pub name: String,
    pub pool: String,
    pub state: WorkerState,
    pub cpu_millis: i32,
    pub memory_mib: i32,
    pub slots: i32,
    pub labels: BTreeMap<String, String>,
    pub instance_id: Option<String>,
    pub used_cpu_millis: i32,
    pub used_memory_mib: i32,
    pub used_slots: i32,
    /// Jobs run so far (reuse).
    pub jobs_run: i64,
    /// Consecutive failed health checks.
    pub health_failures: i32,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub gone_at: Option<DateTime<Utc>>,
}

#[derive(Debug, FromRow)]
struct WorkerRow {
    id: Uuid,
    name: String,
    pool: String,
    state: String,
    cpu_millis: i32,
    memory_mib: i32,
    slots: i32,
    labels: Json<BTreeMap<String, String>>,
    instance_id: Option<String>,
    used_cpu_millis: i32,
    used_memory_mib: i32,
    used_slots: i32,
    jobs_run: i64,
    health_failures: i32,
    registered_at: DateTime<Utc>,
    last_heartbeat_at: DateTime<Utc>,
    gone_at: Option<DateTime<Utc>>,
}

/// Workers with the capacity their held attempts use; `idle`/`busy` follows from it.
const WORKER_SELECT: &str = "select w.id, w.name, w.pool,
        case when w.state in ('idle', 'busy') then case when u.slots > 0 then 'busy' else 'idle' end
             else w.state end as state,
        w.cpu_millis, w.memory_mib, w.slots, w.labels, w.instance_id,
        coalesce(u.cpu, 0)::int4 as used_cpu_millis, coalesce(u.memory, 0)::int4 as used_memory_mib,
        u.slots::int4 as used_slots, w.jobs_run, w.health_failures, w.registered_at, w.last_heartbeat_at, w.gone_at
    from workers w
    cross join lateral (
        select sum(h.cpu_millis) as cpu, sum(h.memory_mib) as memory, count(*) as slots
        from worker_jobs h where h.worker_id = w.id
    ) u";

impl WorkerRow {
    fn into_worker(self) -> sqlx::Result<Worker> {
        let state = WorkerState::parse(&self.state)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown worker state {:?}", self.state).into()))?;
        Ok(Worker {
            id: self.id,
            name: self.name,
            pool: self.pool,
            state,
            cpu_millis: self.cpu_millis,
            memory_mib: self.memory_mib,
            slots: self.slots,
            labels: self.labels.0,
            instance_id: self.instance_id,
            used_cpu_millis: self.used_cpu_millis,
            used_memory_mib: self.used_memory_mib,
            used_slots: self.used_slots,
            jobs_run: self.jobs_run,
            health_failures: self.health_failures,
            registered_at: self.registered_at,
            last_heartbeat_at: self.last_heartbeat_at,
            gone_at: self.gone_at,
        })
    }
}

/// What a registering worker says about itself.
#[derive(Debug, Clone)]
pub struct NewWorker<'a> {
    pub name: &'a str,
    pub pool: &'a str,
    pub cpu_millis: i32,
    pub memory_mib: i32,
    pub slots: i32,
    pub labels: &'a BTreeMap<String, String>,
    pub instance_id: Option<&'a str>,
    pub token_hash: &'a [u8],
}

pub async fn register(db: impl PgExecutor<'_>, worker: &NewWorker<'_>) -> sqlx::Result<Worker> {
    let row: WorkerRow = sqlx::query_as(&format!(
        "with inserted as (
            insert into workers (id, name, pool, state, cpu_millis, memory_mib, slots, labels, instance_id, token_hash)
            values ($1, $2, $3, 'idle', $4, $5, $6, $7, $8, $9)
            returning *
         )
         {}",
        WORKER_SELECT.replace("from workers w", "from inserted w")
    ))
    .bind(Uuid::now_v7())
    .bind(worker.name)
    .bind(worker.pool)
    .bind(worker.cpu_millis)
    .bind(worker.memory_mib)
    .bind(worker.slots)
    .bind(Json(worker.labels))
    .bind(worker.instance_id)
    .bind(worker.token_hash)
    .fetch_one(db)
    .await?;
    row.into_worker()
}

/// The live worker a token belongs to.
pub async fn resolve_token(db: impl PgExecutor<'_>, token_hash: &[u8]) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("select id from workers where token_hash = $1 and gone_at is null")
        .bind(token_hash)
        .fetch_optional(db)
        .await
}

/// Marks a worker gone; its token stops working.
pub async fn deregister(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Left>> {
    sqlx::query_as(
        "update workers set state = 'gone', gone_at = now() where id = $1 and gone_at is null
         returning pool, jobs_run",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Marks gone every live worker silent for longer than `lease` (it stopped heartbeating:
/// its process died, or its host did). Returns each with its pool and jobs run.
pub async fn mark_silent_gone(db: impl PgExecutor<'_>, lease: std::time::Duration) -> sqlx::Result<Vec<Left>> {
    sqlx::query_as(
        "update workers set state = 'gone', gone_at = now()
         where gone_at is null and last_heartbeat_at < now() - make_interval(secs => $1)
         returning pool, jobs_run",
    )
    .bind(lease.as_secs_f64())
    .fetch_all(db)
    .await
}

/// A worker that left (it deregistered, or went silent and was marked gone): its pool and
/// how many jobs it had run.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Left {
    pub pool: String,
    pub jobs_run: i64,
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Worker>> {
    let row: Option<WorkerRow> =
        sqlx::query_as(&format!("{WORKER_SELECT} where w.id = $1")).bind(id).fetch_optional(db).await?;
    row.map(WorkerRow::into_worker).transpose()
}

/// Workers, newest first; `include_gone` adds those that left.
pub async fn list(db: impl PgExecutor<'_>, pool: Option<&str>, include_gone: bool) -> sqlx::Result<Vec<Worker>> {
    let rows: Vec<WorkerRow> = sqlx::query_as(&format!(
        "{WORKER_SELECT}
         where ($1::text is null or w.pool = $1) and ($2 or w.gone_at is null)
         order by w.id desc"
    ))
    .bind(pool)
    .bind(include_gone)
    .fetch_all(db)
    .await?;
    rows.into_iter().map(WorkerRow::into_worker).collect()
}

/// Whether any live worker carries `labels`, or any active pool's workers would: when none
/// does, a job that needs them waits until one appears.
pub async fn labels_offered(db: impl PgExecutor<'_>, labels: &BTreeMap<String, String>) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (select 1 from workers where gone_at is null and labels @> $1)
             or exists (select 1 from pools where state = 'active' and spec->'template'->'labels' @> $1)",
    )
    .bind(Json(labels))
    .fetch_one(db)
    .await
}
