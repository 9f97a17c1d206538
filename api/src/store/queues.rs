//! The `queues` table: each queue's ordering policy, limits, SLA and aging settings.

use chrono::{DateTime, Utc};
use hodei_core::backoff::Backoff;
use hodei_core::queue::{ExpiredDeadline, OverflowPolicy, QueueSettings};
use sqlx::{FromRow, PgExecutor};

/// A queue: its settings, retry delays and timestamps.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub settings: QueueSettings,
    /// Delay before the first retry of a failed job (doubles per attempt, with jitter).
    pub retry_base_seconds: f64,
    pub retry_max_seconds: f64,
    /// `high`, `default` and `low` always exist and cannot be deleted.
    pub builtin: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Queue {
    pub fn backoff(&self) -> Backoff {
        Backoff { base_seconds: self.retry_base_seconds, max_seconds: self.retry_max_seconds, ..Backoff::default() }
    }
}

pub(crate) const QUEUE_COLUMNS: &str = "name, policy, tier, max_size, overflow, overflow_queue, sla_max_wait_seconds,
    aging_seconds, starvation_after_seconds, expired_deadline, retry_base_seconds, retry_max_seconds, builtin,
    created_at, updated_at";

#[derive(Debug, FromRow)]
pub(crate) struct QueueRow {
    name: String,
    policy: String,
    tier: i16,
    max_size: Option<i64>,
    overflow: String,
    overflow_queue: Option<String>,
    sla_max_wait_seconds: Option<i32>,
    aging_seconds: i32,
    starvation_after_seconds: i32,
    expired_deadline: String,
    retry_base_seconds: f64,
    retry_max_seconds: f64,
    builtin: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl QueueRow {
    pub(crate) fn into_queue(self) -> sqlx::Result<Queue> {
        let decode = |what: &str, value: &str| sqlx::Error::Decode(format!("unknown {what} {value:?}").into());
        Ok(Queue {
            settings: QueueSettings {
                overflow: OverflowPolicy::parse(&self.overflow).ok_or_else(|| decode("overflow", &self.overflow))?,
                expired_deadline: ExpiredDeadline::parse(&self.expired_deadline)
                    .ok_or_else(|| decode("expired_deadline", &self.expired_deadline))?,
                name: self.name,
                policy: self.policy,
                tier: self.tier,
                max_size: self.max_size,
                overflow_queue: self.overflow_queue,
                sla_max_wait_seconds: self.sla_max_wait_seconds.map(i64::from),
                aging_seconds: self.aging_seconds.into(),
                starvation_after_seconds: self.starvation_after_seconds.into(),
            },
            retry_base_seconds: self.retry_base_seconds,
            retry_max_seconds: self.retry_max_seconds,
            builtin: self.builtin,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

pub async fn get(db: impl PgExecutor<'_>, name: &str) -> sqlx::Result<Option<Queue>> {
    let row: Option<QueueRow> = sqlx::query_as(&format!("select {QUEUE_COLUMNS} from queues where name = $1"))
        .bind(name)
        .fetch_optional(db)
        .await?;
    row.map(QueueRow::into_queue).transpose()
}

/// The named queues that exist (missing names are simply absent).
pub async fn get_many(db: impl PgExecutor<'_>, names: &[String]) -> sqlx::Result<Vec<Queue>> {
    let rows: Vec<QueueRow> =
        sqlx::query_as(&format!("select {QUEUE_COLUMNS} from queues where name = any($1) order by name"))
            .bind(names)
            .fetch_all(db)
            .await?;
    rows.into_iter().map(QueueRow::into_queue).collect()
}

pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Queue>> {
    let rows: Vec<QueueRow> =
        sqlx::query_as(&format!("select {QUEUE_COLUMNS} from queues order by tier, name")).fetch_all(db).await?;
    rows.into_iter().map(QueueRow::into_queue).collect()
}

/// Settings a client may set on a queue, beyond what `QueueSettings` holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySettings {
    pub retry_base_seconds: f64,
    pub retry_max_seconds: f64,
}

/// Inserts or overwrites a queue's settings (`builtin` is never changed here).
pub async fn upsert(db: impl PgExecutor<'_>, settings: &QueueSettings, retry: RetrySettings) -> sqlx::Result<Queue> {
    let row: QueueRow = sqlx::query_as(&format!(
        "insert into queues (name, policy, tier, max_size, overflow, overflow_queue, sla_max_wait_seconds,
             aging_seconds, starvation_after_seconds, expired_deadline, retry_base_seconds, retry_max_seconds)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         on conflict (name) do update set policy = excluded.policy, tier = excluded.tier,
             max_size = excluded.max_size, overflow = excluded.overflow, overflow_queue = excluded.overflow_queue,
             sla_max_wait_seconds = excluded.sla_max_wait_seconds, aging_seconds = excluded.aging_seconds,
             starvation_after_seconds = excluded.starvation_after_seconds,
             expired_deadline = excluded.expired_deadline, retry_base_seconds = excluded.retry_base_seconds,
             retry_max_seconds = excluded.retry_max_seconds, updated_at = now()
         returning {QUEUE_COLUMNS}"
    ))
    .bind(&settings.name)
    .bind(&settings.policy)
    .bind(settings.tier)
    .bind(settings.max_size)
    .bind(settings.overflow.as_str())
    .bind(&settings.overflow_queue)
    .bind(settings.sla_max_wait_seconds.map(|s| s as i32))
    .bind(settings.aging_seconds as i32)
    .bind(settings.starvation_after_seconds as i32)
    .bind(settings.expired_deadline.as_str())
    .bind(retry.retry_base_seconds)
    .bind(retry.retry_max_seconds)
    .fetch_one(db)
    .await?;
    row.into_queue()
}

/// What deleting a queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    Builtin,
    /// It still holds waiting jobs, or jobs reference it.
    NotEmpty,
    /// Another queue names this one as its `overflow_queue`.
    RedirectTarget,
}

pub async fn delete(db: &mut sqlx::PgConnection, name: &str) -> sqlx::Result<DeleteOutcome> {
    let Some(queue) = sqlx::query_as::<_, (bool,)>("select builtin from queues where name = $1 for update")
        .bind(name)
        .fetch_optional(&mut *db)
        .await?
    else {
        return Ok(DeleteOutcome::NotFound);
    };
    if queue.0 {
        return Ok(DeleteOutcome::Builtin);
    }
    let (waiting, redirected_here): (bool, bool) = sqlx::query_as(
        "select exists (select 1 from ready_jobs where queue = $1)
                or exists (select 1 from scheduled_jobs where queue = $1),
                exists (select 1 from queues where overflow_queue = $1 and name <> $1)",
    )
    .bind(name)
    .fetch_one(&mut *db)
    .await?;
    if waiting {
        return Ok(DeleteOutcome::NotEmpty);
    }
    if redirected_here {
        return Ok(DeleteOutcome::RedirectTarget);
    }
    // Finished jobs keep their queue's name in history; a queue that has any is kept.
    match sqlx::query("delete from queues where name = $1").bind(name).execute(&mut *db).await {
        Ok(_) => Ok(DeleteOutcome::Deleted),
        Err(error) if error.as_database_error().and_then(|e| e.constraint()) == Some("jobs_queue_fkey") => {
            Ok(DeleteOutcome::NotEmpty)
        }
        Err(error) => Err(error),
    }
}
