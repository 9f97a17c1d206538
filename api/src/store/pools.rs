//! The `pools` and `pool_members` tables: each pool's declared spec, and one member row per
//! worker it provisions, with the provider's handle and the provisioning status. Only the
//! reconcile loop changes members; the API and the configuration file change specs.

use chrono::{DateTime, Utc};
use hodei_core::autoscale::{Decision, Demand};
use hodei_core::pool::PoolSpec;
use hodei_core::pool_plan::{MemberStatus, PoolState};
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

/// Where a pool's spec comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    File,
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Api => "api",
        }
    }
}

/// How many of a pool's members are in each status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberCounts {
    pub provisioning: i64,
    pub ready: i64,
    pub draining: i64,
    pub terminating: i64,
    pub failed: i64,
}

/// A pool: its spec, where the spec comes from, its state, and its members by status.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub spec: PoolSpec,
    pub source: Source,
    /// `active`, `deleting` (its workers drain, then it goes) or `failed` (see `state_reason`).
    pub state: PoolState,
    pub state_reason: Option<String>,
    pub workers: MemberCounts,
    pub scaling: ScalingStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a pool's scaling stands: its lifecycle and the autoscaler's last decision.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ScalingStatus {
    /// `scaling`, `paused` or `drained`.
    pub lifecycle: String,
    /// What the autoscaler last decided (dynamic pools).
    pub desired_size: Option<i32>,
    pub last_scale_out_at: Option<DateTime<Utc>>,
    pub last_scale_in_at: Option<DateTime<Utc>>,
}

#[derive(Debug, FromRow)]
struct PoolRow {
    spec: Json<PoolSpec>,
    source: String,
    #[sqlx(try_from = "String")]
    state: PoolState,
    state_reason: Option<String>,
    #[sqlx(flatten)]
    scaling: ScalingStatus,
    provisioning: i64,
    ready: i64,
    draining: i64,
    terminating: i64,
    failed: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<PoolRow> for Pool {
    fn from(row: PoolRow) -> Self {
        Pool {
            spec: row.spec.0,
            source: if row.source == "file" { Source::File } else { Source::Api },
            state: row.state,
            state_reason: row.state_reason,
            workers: MemberCounts {
                provisioning: row.provisioning,
                ready: row.ready,
                draining: row.draining,
                terminating: row.terminating,
                failed: row.failed,
            },
            scaling: row.scaling,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const POOL_SELECT: &str = "select p.spec, p.source, p.state, p.state_reason, p.created_at, p.updated_at,
        p.lifecycle, p.desired_size, p.last_scale_out_at, p.last_scale_in_at,
        count(m.id) filter (where m.status = 'provisioning') as provisioning,
        count(m.id) filter (where m.status = 'ready') as ready,
        count(m.id) filter (where m.status = 'draining') as draining,
        count(m.id) filter (where m.status = 'terminating') as terminating,
        count(m.id) filter (where m.status = 'failed') as failed
    from pools p left join pool_members m on m.pool_id = p.id";

pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Pool>> {
    let rows: Vec<PoolRow> =
        sqlx::query_as(&format!("{POOL_SELECT} group by p.id order by p.id")).fetch_all(db).await?;
    Ok(rows.into_iter().map(Pool::from).collect())
}

pub async fn get(db: impl PgExecutor<'_>, id: &str) -> sqlx::Result<Option<Pool>> {
    let row: Option<PoolRow> =
        sqlx::query_as(&format!("{POOL_SELECT} where p.id = $1 group by p.id")).bind(id).fetch_optional(db).await?;
    Ok(row.map(Pool::from))
}

/// Creates an API-defined pool; `None` if the id is taken.
pub async fn create(db: impl PgExecutor<'_>, spec: &PoolSpec) -> sqlx::Result<Option<()>> {
    let inserted = bind_spec(sqlx::query(&format!("{INSERT_SPEC} on conflict (id) do nothing")), spec, Source::Api)
        .execute(db)
        .await?;
    Ok((inserted.rows_affected() == 1).then_some(()))
}

/// How many pools exist (from the file and the API).
pub async fn count(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("select count(*) from pools").fetch_one(db).await
}

/// Inserts a pool (`$1` id … `$5` spec, `$6` source); callers add the conflict clause.
const INSERT_SPEC: &str = "insert into pools (id, kind, provider, size, spec, source) values ($1, $2, $3, $4, $5, $6)";

fn bind_spec<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    spec: &'q PoolSpec,
    source: Source,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(&spec.id)
        .bind(spec.kind.as_str())
        .bind(&spec.provider)
        .bind(spec.max_workers() as i32)
        .bind(Json(spec))
        .bind(source.as_str())
}

/// Creates the pool, or replaces its spec if it has the same source and a different spec
/// (a changed spec makes a failed pool active again). A pool of the other source is left
/// alone.
async fn put(db: impl PgExecutor<'_>, spec: &PoolSpec, source: Source) -> sqlx::Result<()> {
    let upsert = format!(
        "{INSERT_SPEC} on conflict (id) do update set kind = excluded.kind, provider = excluded.provider,
             size = excluded.size, spec = excluded.spec, state = 'active', state_reason = null, updated_at = now()
         where pools.source = excluded.source and pools.spec is distinct from excluded.spec"
    );
    bind_spec(sqlx::query(&upsert), spec, source).execute(db).await?;
    Ok(())
}

/// What an update or delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Done,
    NotFound,
    /// The pool follows the configuration file; change it there.
    FromFile,
    /// The pool is being deleted.
    Deleting,
}

/// Replaces an API-defined pool's spec. A changed spec makes a failed pool active again.
pub async fn update(db: &mut PgConnection, spec: &PoolSpec) -> sqlx::Result<Change> {
    let current: Option<(String, String)> = sqlx::query_as("select source, state from pools where id = $1 for update")
        .bind(&spec.id)
        .fetch_optional(&mut *db)
        .await?;
    let Some((source, state)) = current else { return Ok(Change::NotFound) };
    if source == Source::File.as_str() {
        return Ok(Change::FromFile);
    }
    if decode_pool_state(state)? == PoolState::Deleting {
        return Ok(Change::Deleting);
    }
    put(db, spec, Source::Api).await?;
    Ok(Change::Done)
}

/// Starts deleting an API-defined pool: its workers drain, then the reconciler removes it.
pub async fn delete(db: &mut PgConnection, id: &str) -> sqlx::Result<Change> {
    let source: Option<String> = sqlx::query_scalar("select source from pools where id = $1 for update")
        .bind(id)
        .fetch_optional(&mut *db)
        .await?;
    match source.as_deref() {
        None => Ok(Change::NotFound),
        Some("file") => Ok(Change::FromFile),
        Some(_) => {
            mark_deleting(db, &[id.to_owned()]).await?;
            Ok(Change::Done)
        }
    }
}

async fn mark_deleting(db: impl PgExecutor<'_>, ids: &[String]) -> sqlx::Result<()> {
    sqlx::query("update pools set state = 'deleting', updated_at = now() where id = any($1) and state <> 'deleting'")
        .bind(ids)
        .execute(db)
        .await?;
    Ok(())
}

/// Makes the file-defined pools match `specs`: creates and updates them, and starts
/// deleting file pools no longer listed. Pools created through the API are left alone,
/// and a file pool cannot take over an API pool's id.
pub async fn sync_file_pools(db: &mut PgConnection, specs: &[PoolSpec]) -> sqlx::Result<Vec<String>> {
    for spec in specs {
        put(&mut *db, spec, Source::File).await?;
    }
    let listed: Vec<String> = specs.iter().map(|spec| spec.id.clone()).collect();
    let gone: Vec<String> =
        sqlx::query_scalar("select id from pools where source = 'file' and not (id = any($1)) and state <> 'deleting'")
            .bind(&listed)
            .fetch_all(&mut *db)
            .await?;
    mark_deleting(&mut *db, &gone).await?;
    sqlx::query_scalar("select id from pools where id = any($1) and source = 'api' order by id")
        .bind(&listed)
        .fetch_all(&mut *db)
        .await
}

/// One member and, once it registered, its worker.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct Member {
    pub id: Uuid,
    pub pool_id: String,
    /// `provisioning`, `ready`, `draining`, `terminating` or `failed`.
    #[sqlx(try_from = "String")]
    pub status: MemberStatus,
    /// Provisioning attempts so far.
    pub attempts: i32,
    /// The provider's handle for the instance.
    pub instance: Option<String>,
    pub last_error: Option<String>,
    pub attempt_started_at: Option<DateTime<Utc>>,
    pub retry_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub worker_id: Option<Uuid>,
    /// The worker's own state (`idle`, `busy`, `draining`, …).
    pub worker_state: Option<String>,
    pub worker_used_slots: Option<i32>,
    pub worker_last_heartbeat_at: Option<DateTime<Utc>>,
    pub worker_health_failures: Option<i32>,
    /// Seconds since the worker's last heartbeat.
    pub heartbeat_age_seconds: Option<f64>,
    /// Seconds the worker has held no job (`None` while it holds one).
    pub worker_idle_seconds: Option<f64>,
    pub worker_jobs_run: Option<i64>,
    /// Seconds since the member was added.
    pub age_seconds: f64,
}

/// A pool's members, oldest first.
pub async fn members(db: impl PgExecutor<'_>, pool_id: &str) -> sqlx::Result<Vec<Member>> {
    sqlx::query_as(
        "select m.id, m.pool_id, m.status, m.attempts, m.instance, m.last_error, m.attempt_started_at, m.retry_at,
                m.created_at, w.id as worker_id, w.state as worker_state, (select count(*)::int4 from worker_jobs h where h.worker_id = w.id) as worker_used_slots,
                w.last_heartbeat_at as worker_last_heartbeat_at, w.health_failures as worker_health_failures,
                extract(epoch from now() - w.last_heartbeat_at)::float8 as heartbeat_age_seconds,
                case when not exists (select 1 from worker_jobs h where h.worker_id = w.id)
                    then extract(epoch from now() - w.idle_since)::float8 end as worker_idle_seconds,
                w.jobs_run as worker_jobs_run,
                extract(epoch from now() - m.created_at)::float8 as age_seconds
         from pool_members m
         -- A member's worker registers with the member id as its instance id, or (instances
         -- of an Auto Scaling group, which cannot know their member) with the instance's id.
         left join workers w on (w.instance_id = m.id::text or w.instance_id = m.instance) and w.gone_at is null
         where m.pool_id = $1 order by m.created_at, m.id",
    )
    .bind(pool_id)
    .fetch_all(db)
    .await
}

/// A pool as the reconciler works on it.
#[derive(Debug, Clone)]
pub struct Reconciled {
    pub spec: PoolSpec,
    pub state: PoolState,
    pub scaling: ScalingStatus,
}

/// Pool specs the reconciler works through, with their state.
pub async fn specs(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Reconciled>> {
    #[derive(FromRow)]
    struct Row {
        spec: Json<PoolSpec>,
        state: String,
        #[sqlx(flatten)]
        scaling: ScalingStatus,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "select spec, state, lifecycle, desired_size, last_scale_out_at, last_scale_in_at from pools order by id",
    )
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| Ok(Reconciled { spec: row.spec.0, state: decode_pool_state(row.state)?, scaling: row.scaling }))
        .collect()
}

/// What a dynamic pool's workers could serve now: queued jobs that fit the pool's worker
/// shape and labels, less the free slots of workers outside dynamic pools (static pools
/// are tried first); jobs running on its workers; the oldest fitting wait; fitting jobs
/// within the last quarter of their queue's SLA. One statement.
pub async fn demand(db: impl PgExecutor<'_>, spec: &PoolSpec) -> sqlx::Result<Demand> {
    let (queued, static_free, running, oldest, at_risk): (i64, i64, i64, f64, i64) = sqlx::query_as(
        "with fit as (
             select r.enqueued_at, q.sla_max_wait_seconds as sla from ready_jobs r
             join queues q on q.name = r.queue
             where ($2::int4 is null or r.cpu_millis <= $2) and ($3::int4 is null or r.memory_mib <= $3)
               and $4::jsonb @> r.labels
         )
         select (select count(*) from fit),
                (select coalesce(sum(greatest(w.slots - (select count(*) from worker_jobs h where h.worker_id = w.id), 0)), 0)::int8
                 from workers w where w.gone_at is null and w.state in ('idle', 'busy')
                   and not exists (select 1 from pools p where p.id = w.pool and p.kind = 'dynamic')),
                (select count(*) from worker_jobs h join workers w on w.id = h.worker_id
                 where w.pool = $1 and w.gone_at is null),
                coalesce((select extract(epoch from now() - min(enqueued_at))::float8 from fit), 0),
                (select count(*) from fit where sla is not null
                   and now() - enqueued_at > make_interval(secs => sla * 0.75))",
    )
    .bind(&spec.id)
    .bind(spec.template.cpu_millis.map(|cpu| cpu as i32))
    .bind(spec.template.memory_mib.map(|memory| memory as i32))
    .bind(Json(&spec.template.labels))
    .fetch_one(db)
    .await?;
    Ok(Demand {
        queued: u64::try_from(queued - static_free).unwrap_or(0),
        running: u64::try_from(running).unwrap_or(0),
        oldest_wait_seconds: if queued > static_free { oldest } else { 0.0 },
        sla_at_risk: u64::try_from(at_risk).unwrap_or(0),
    })
}

/// Records an autoscaler decision: the pool's desired size and last scaling times, and a
/// history row (a hold that repeats the last row only bumps its count and time).
pub async fn record_decision(
    db: &mut PgConnection,
    pool_id: &str,
    decision: &Decision,
    inputs: &serde_json::Value,
) -> sqlx::Result<()> {
    let action = decision.action.as_str();
    sqlx::query(
        "update pools set desired_size = $2,
             last_scale_out_at = case when $3 = 'scale_out' then now() else last_scale_out_at end,
             last_scale_in_at = case when $3 = 'scale_in' then now() else last_scale_in_at end
         where id = $1",
    )
    .bind(pool_id)
    .bind(decision.desired as i32)
    .bind(action)
    .execute(&mut *db)
    .await?;
    let repeated = sqlx::query(
        "update scaling_history set repeats = repeats + 1, last_decided_at = now()
         where id = (select id from scaling_history where pool_id = $1 order by id desc limit 1)
           and action = 'hold' and $2 = 'hold' and current_size = $3 and desired_size = $4
           and decided_by = $5 and reason = $6",
    )
    .bind(pool_id)
    .bind(action)
    .bind(decision.current as i32)
    .bind(decision.desired as i32)
    .bind(&decision.decided_by)
    .bind(&decision.reason)
    .execute(&mut *db)
    .await?
    .rows_affected();
    if repeated == 0 {
        sqlx::query(
            "insert into scaling_history (pool_id, action, current_size, desired_size, recommended, min_size, max_size,
                 decided_by, reason, inputs)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(pool_id)
        .bind(action)
        .bind(decision.current as i32)
        .bind(decision.desired as i32)
        .bind(decision.recommended as i32)
        .bind(decision.min as i32)
        .bind(decision.max as i32)
        .bind(&decision.decided_by)
        .bind(&decision.reason)
        .bind(Json(inputs))
        .execute(&mut *db)
        .await?;
    }
    Ok(())
}

/// One row of a pool's scaling history.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct HistoryEntry {
    pub id: i64,
    pub decided_at: DateTime<Utc>,
    pub last_decided_at: DateTime<Utc>,
    pub repeats: i32,
    pub action: String,
    pub current_size: i32,
    pub desired_size: i32,
    pub recommended: i32,
    pub min_size: i32,
    pub max_size: i32,
    pub decided_by: String,
    pub reason: String,
    pub inputs: Json<serde_json::Value>,
}

/// A pool's scaling history, newest first, before the cursor `before` (an entry id).
pub async fn history(
    db: impl PgExecutor<'_>,
    pool_id: &str,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<HistoryEntry>> {
    sqlx::query_as(
        "select id, decided_at, last_decided_at, repeats, action, current_size, desired_size, recommended,
                min_size, max_size, decided_by, reason, inputs
         from scaling_history where pool_id = $1 and ($2::int8 is null or id < $2)
         order by id desc limit $3",
    )
    .bind(pool_id)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Sets a pool's lifecycle (`scaling`, `paused`, `drained`); `false` if there is no such pool.
pub async fn set_lifecycle(db: impl PgExecutor<'_>, pool_id: &str, lifecycle: &str) -> sqlx::Result<bool> {
    let updated =
        sqlx::query("update pools set lifecycle = $2, updated_at = now() where id = $1 and state <> 'deleting'")
            .bind(pool_id)
            .bind(lifecycle)
            .execute(db)
            .await?;
    Ok(updated.rows_affected() == 1)
}

fn decode_pool_state(state: String) -> sqlx::Result<PoolState> {
    PoolState::try_from(state).map_err(|error| sqlx::Error::Decode(error.into()))
}

pub async fn add_member(db: impl PgExecutor<'_>, pool_id: &str) -> sqlx::Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query("insert into pool_members (id, pool_id, status) values ($1, $2, 'provisioning')")
        .bind(id)
        .bind(pool_id)
        .execute(db)
        .await?;
    Ok(id)
}

/// A provisioning attempt begins.
pub async fn attempt_started(db: impl PgExecutor<'_>, member: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "update pool_members set attempts = attempts + 1, attempt_started_at = now(), retry_at = null,
             instance = null, updated_at = now()
         where id = $1",
    )
    .bind(member)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn set_instance(db: impl PgExecutor<'_>, member: Uuid, instance: &str) -> sqlx::Result<()> {
    sqlx::query("update pool_members set instance = $2, updated_at = now() where id = $1")
        .bind(member)
        .bind(instance)
        .execute(db)
        .await?;
    Ok(())
}

/// A provisioning attempt failed: the member tries again after `retry_in_seconds`, or,
/// when `give_up`, is marked `failed` (and replaced once `retry_in_seconds` have passed).
pub async fn attempt_failed(
    db: impl PgExecutor<'_>,
    member: Uuid,
    error: &str,
    give_up: bool,
    retry_in_seconds: u32,
) -> sqlx::Result<()> {
    sqlx::query(
        "update pool_members set instance = null, last_error = $2, updated_at = now(),
             status = case when $3 then 'failed' else status end,
             retry_at = now() + make_interval(secs => $4)
         where id = $1",
    )
    .bind(member)
    .bind(error)
    .bind(give_up)
    .bind(retry_in_seconds as i32)
    .execute(db)
    .await?;
    Ok(())
}

/// Marks a provisioning member ready (its worker registered); how long ago its current
/// attempt started, in seconds: the time to ready.
pub async fn mark_ready(db: impl PgExecutor<'_>, member: Uuid) -> sqlx::Result<Option<f64>> {
    let took: Option<Option<f64>> = sqlx::query_scalar(
        "update pool_members set status = 'ready', updated_at = now() where id = $1
         returning extract(epoch from now() - attempt_started_at)::float8",
    )
    .bind(member)
    .fetch_optional(db)
    .await?;
    Ok(took.flatten())
}

pub async fn set_status(db: impl PgExecutor<'_>, member: Uuid, status: MemberStatus) -> sqlx::Result<()> {
    sqlx::query("update pool_members set status = $2, updated_at = now() where id = $1")
        .bind(member)
        .bind(status.as_str())
        .execute(db)
        .await?;
    Ok(())
}

pub async fn remove_member(db: impl PgExecutor<'_>, member: Uuid) -> sqlx::Result<()> {
    sqlx::query("delete from pool_members where id = $1").bind(member).execute(db).await?;
    Ok(())
}

/// The pool gave up (fail-fast provisioning).
pub async fn fail_pool(db: impl PgExecutor<'_>, id: &str, reason: &str) -> sqlx::Result<()> {
    sqlx::query("update pools set state = 'failed', state_reason = $2, updated_at = now() where id = $1")
        .bind(id)
        .bind(reason)
        .execute(db)
        .await?;
    Ok(())
}

/// Removes a deleted pool once it has no members left.
pub async fn remove_if_empty(db: impl PgExecutor<'_>, id: &str) -> sqlx::Result<bool> {
    let removed = sqlx::query(
        "delete from pools p where p.id = $1 and p.state = 'deleting'
             and not exists (select 1 from pool_members m where m.pool_id = p.id)",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(removed.rows_affected() == 1)
}
