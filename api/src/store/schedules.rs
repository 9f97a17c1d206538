//! The `schedules` and `schedule_fires` tables: cron schedules of jobs, and firing them.
//! What a fire does is decided by `hodei_core::schedule` (purely); `fire_next` claims one
//! due schedule (`for update skip locked`), asks for the plan, and in the same transaction
//! records each fire time (primary key: schedule and fire time) and submits its job through
//! `enqueue::submit`, the path every submission takes (admission, quotas, events). So a fire
//! happens exactly once however many replicas try: the row lock keeps a second replica off
//! the schedule while a fire is in flight, the key refuses a fire recorded before, and a
//! replica that dies mid-fire leaves neither the fire nor its job.

use chrono::{DateTime, Utc};
use hodei_core::schedule::{FireAction, Previous, ScheduleSpec, SkipReason, ValidSchedule};
use hodei_core::JobState;
use hodei_protocol::trace_context::{NewTraceBytes, TraceParent};
use sqlx::types::Json;
use sqlx::{Acquire, FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::store::enqueue::{self, SubmitContext, SubmitOutcome};
use crate::store::jobs::{self, Submitter};

/// A schedule as stored.
#[derive(Debug, Clone, FromRow)]
pub struct Schedule {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// Name of the owning tenant.
    pub tenant: String,
    pub spec: Json<ScheduleSpec>,
    pub paused: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub fires_after: DateTime<Utc>,
    pub next_fire_at: Option<DateTime<Utc>>,
}

const SCHEDULE_COLUMNS: &str = "s.id, s.tenant_id, t.name as tenant, s.spec, s.paused, s.created_at, s.updated_at, \
     s.fires_after, s.next_fire_at";

/// What became of one fire time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireOutcome {
    Submitted,
    SkippedOverlap,
    /// Admission or the tenant's quota refused the job (the reason is in `detail`).
    Rejected,
}

impl FireOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FireOutcome::Submitted => "submitted",
            FireOutcome::SkippedOverlap => "skipped_overlap",
            FireOutcome::Rejected => "rejected",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [FireOutcome::Submitted, FireOutcome::SkippedOverlap, FireOutcome::Rejected]
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }
}

/// One recorded fire.
#[derive(Debug, Clone)]
pub struct FireRecord {
    pub fire_at: DateTime<Utc>,
    pub job_id: Option<Uuid>,
    pub outcome: FireOutcome,
    pub detail: Option<String>,
    pub fired_at: DateTime<Utc>,
}

#[derive(FromRow)]
struct FireRow {
    fire_at: DateTime<Utc>,
    job_id: Option<Uuid>,
    outcome: String,
    detail: Option<String>,
    fired_at: DateTime<Utc>,
}

/// Stores a validated schedule whose fire times start after `now` (the database's clock).
/// A name the tenant already uses violates `schedules_tenant_name_key`.
pub async fn create(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    schedule: &ValidSchedule,
    now: DateTime<Utc>,
) -> sqlx::Result<Schedule> {
    let next_fire_at = schedule.next_fires(now, 1).first().copied();
    sqlx::query_as(&format!(
        "with s as (
             insert into schedules (id, tenant_id, name, spec, created_at, updated_at, fires_after, next_fire_at)
             values ($1, $2, $3, $4, $5, $5, $5, $6)
             returning *
         )
         select {SCHEDULE_COLUMNS} from s join tenants t on t.id = s.tenant_id"
    ))
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(&schedule.spec.name)
    .bind(Json(&schedule.spec))
    .bind(now)
    .bind(next_fire_at)
    .fetch_one(db)
    .await
}

/// Schedules in `tenant_scope` (all of them for `None`), by name.
pub async fn list(db: impl PgExecutor<'_>, tenant_scope: Option<Uuid>) -> sqlx::Result<Vec<Schedule>> {
    sqlx::query_as(&format!(
        "select {SCHEDULE_COLUMNS} from schedules s join tenants t on t.id = s.tenant_id
         where $1::uuid is null or s.tenant_id = $1
         order by t.name, s.name"
    ))
    .bind(tenant_scope)
    .fetch_all(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, tenant_scope: Option<Uuid>, id: Uuid) -> sqlx::Result<Option<Schedule>> {
    sqlx::query_as(&format!(
        "select {SCHEDULE_COLUMNS} from schedules s join tenants t on t.id = s.tenant_id
         where s.id = $2 and ($1::uuid is null or s.tenant_id = $1)"
    ))
    .bind(tenant_scope)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The most recent `limit` fires of a schedule, newest first.
pub async fn recent_fires(db: impl PgExecutor<'_>, id: Uuid, limit: i64) -> sqlx::Result<Vec<FireRecord>> {
    let rows: Vec<FireRow> = sqlx::query_as(
        "select fire_at, job_id, outcome, detail, fired_at from schedule_fires
         where schedule_id = $1 order by fire_at desc limit $2",
    )
    .bind(id)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            let outcome = FireOutcome::parse(&row.outcome)
                .ok_or_else(|| sqlx::Error::Decode(format!("unknown fire outcome {}", row.outcome).into()))?;
            Ok(FireRecord {
                fire_at: row.fire_at,
                job_id: row.job_id,
                outcome,
                detail: row.detail,
                fired_at: row.fired_at,
            })
        })
        .collect()
}

/// Pauses a schedule: no fire until it is resumed.
pub async fn pause(db: impl PgExecutor<'_>, tenant_scope: Option<Uuid>, id: Uuid) -> sqlx::Result<Option<Schedule>> {
    sqlx::query_as(&format!(
        "with s as (
             update schedules set paused = true, updated_at = now()
             where id = $2 and ($1::uuid is null or tenant_id = $1)
             returning *
         )
         select {SCHEDULE_COLUMNS} from s join tenants t on t.id = s.tenant_id"
    ))
    .bind(tenant_scope)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Resumes a paused schedule from now: the fire times it was paused through are not
/// missed fires, they are dropped. Resuming a running schedule changes nothing.
pub async fn resume(db: &mut PgConnection, tenant_scope: Option<Uuid>, id: Uuid) -> sqlx::Result<Option<Schedule>> {
    let mut transaction = db.begin().await?;
    let Some(schedule) = get_for_update(&mut transaction, tenant_scope, id).await? else { return Ok(None) };
    if !schedule.paused {
        return Ok(Some(schedule));
    }
    let now = crate::store::database_now(&mut *transaction).await?;
    let next_fire_at = match schedule.spec.0.validate(now) {
        Ok(valid) => valid.next_fires(now, 1).first().copied(),
        Err(_) => None,
    };
    let resumed = sqlx::query_as(&format!(
        "with s as (
             update schedules set paused = false, fires_after = $2, next_fire_at = $3, updated_at = $2
             where id = $1 returning *
         )
         select {SCHEDULE_COLUMNS} from s join tenants t on t.id = s.tenant_id"
    ))
    .bind(id)
    .bind(now)
    .bind(next_fire_at)
    .fetch_one(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(Some(resumed))
}

async fn get_for_update(db: &mut PgConnection, tenant_scope: Option<Uuid>, id: Uuid) -> sqlx::Result<Option<Schedule>> {
    sqlx::query_as(&format!(
        "select {SCHEDULE_COLUMNS} from schedules s join tenants t on t.id = s.tenant_id
         where s.id = $2 and ($1::uuid is null or s.tenant_id = $1)
         for update of s"
    ))
    .bind(tenant_scope)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Deletes a schedule and its fire records (its jobs stay). `false` if there was none.
pub async fn delete(db: impl PgExecutor<'_>, tenant_scope: Option<Uuid>, id: Uuid) -> sqlx::Result<bool> {
    let deleted = sqlx::query("delete from schedules where id = $2 and ($1::uuid is null or tenant_id = $1)")
        .bind(tenant_scope)
        .bind(id)
        .execute(db)
        .await?;
    Ok(deleted.rows_affected() > 0)
}

/// A new trace context from the system's randomness (from a UUIDv7 should that ever fail:
/// still unique, which is what a trace id needs).
fn new_trace() -> TraceParent {
    let mut bytes = [0_u8; 24];
    if getrandom::getrandom(&mut bytes).is_err() {
        let fallback = Uuid::now_v7();
        for (byte, source) in bytes.iter_mut().zip(fallback.as_bytes().iter().cycle()) {
            *byte = *source;
        }
    }
    let mut trace_id = [0_u8; 16];
    let mut span_id = [0_u8; 8];
    trace_id.copy_from_slice(&bytes[..16]);
    span_id.copy_from_slice(&bytes[16..]);
    TraceParent::new_trace(NewTraceBytes { trace_id, span_id })
}

/// What one `fire_next` did.
#[derive(Debug, Default)]
pub struct Fired {
    pub schedule_id: Uuid,
    /// The schedule's tenant, by name.
    pub tenant: String,
    /// Each submission's outcome with the queue its job named, for counting once committed.
    pub submissions: Vec<(String, SubmitOutcome)>,
    /// Jobs submitted, by fire time.
    pub jobs: Vec<(DateTime<Utc>, Uuid)>,
    pub skipped: usize,
    pub rejected: usize,
    /// Fire times another transaction had recorded already (none while the row lock holds).
    pub already_fired: usize,
    /// The queue of each previous job that `cancel_previous` cancelled while it waited
    /// (abandoned), for counting once committed.
    pub abandoned: Vec<String>,
}

#[derive(FromRow)]
struct Claimed {
    id: Uuid,
    tenant_id: Uuid,
    tenant: String,
    spec: Json<ScheduleSpec>,
    fires_after: DateTime<Utc>,
    now: DateTime<Utc>,
}

/// The most overdue schedule, locked; one a concurrent transaction holds is skipped. It
/// reads the `schedules_due` index from its oldest entry (a test checks the plan).
pub const CLAIM_DUE: &str = "select s.id, s.tenant_id, t.name as tenant, s.spec, s.fires_after, now() as now
     from schedules s join tenants t on t.id = s.tenant_id
     where not s.paused and s.next_fire_at <= now()
     order by s.next_fire_at
     limit 1
     for update of s skip locked";

/// Claims the schedule most overdue (`next_fire_at <= now()`, skipping any another
/// transaction holds) and carries out its fires in one transaction; `None` when no
/// schedule is due.
pub async fn fire_next(db: &mut PgConnection, context: SubmitContext<'_>) -> sqlx::Result<Option<Fired>> {
    let mut transaction = db.begin().await?;
    let claimed: Option<Claimed> = sqlx::query_as(CLAIM_DUE).fetch_optional(&mut *transaction).await?;
    let Some(claimed) = claimed else { return Ok(None) };
    let mut fired = Fired { schedule_id: claimed.id, tenant: claimed.tenant.clone(), ..Fired::default() };
    let schedule = match claimed.spec.0.validate(claimed.now) {
        Ok(schedule) => schedule,
        Err(errors) => {
            // Stored specs were valid when stored; one that no longer is stops firing
            // rather than failing every tick.
            tracing::warn!(schedule = %claimed.id, %errors, "a stored schedule no longer validates; it stops firing");
            sqlx::query("update schedules set next_fire_at = null, updated_at = now() where id = $1")
                .bind(claimed.id)
                .execute(&mut *transaction)
                .await?;
            transaction.commit().await?;
            return Ok(Some(fired));
        }
    };
    let previous: Option<(Uuid, String)> = sqlx::query_as(
        "select j.id, j.state from schedule_fires f join jobs j on j.id = f.job_id
         where f.schedule_id = $1 order by f.fire_at desc limit 1",
    )
    .bind(claimed.id)
    .fetch_optional(&mut *transaction)
    .await?;
    let active = previous
        .as_ref()
        .filter(|(_, state)| JobState::parse(state).is_some_and(|state| !state.is_terminal()))
        .map(|(id, _)| *id);
    let plan = schedule.due(
        claimed.fires_after,
        claimed.now,
        if active.is_some() { Previous::Active } else { Previous::Idle },
    );
    if let (true, Some(previous_job)) = (plan.cancel_previous, active) {
        let cancelled = jobs::cancel(&mut transaction, Some(claimed.tenant_id), previous_job).await?;
        // Cancelled at once (not merely asked to stop): it was still waiting.
        if let jobs::CancelResult::Done(job) = cancelled {
            if job.state == JobState::Cancelled {
                fired.abandoned.push(job.queue);
            }
        }
    }
    for fire in &plan.fires {
        // Each fire starts a trace of its own, which its job carries to its worker.
        let submitter =
            Submitter { tenant_id: claimed.tenant_id, tenant_name: &claimed.tenant, traceparent: Some(new_trace()) };
        let outcome = match fire.action {
            FireAction::Submit => FireOutcome::Submitted,
            FireAction::Skip(SkipReason::Overlap) => FireOutcome::SkippedOverlap,
        };
        let recorded: Option<DateTime<Utc>> = sqlx::query_scalar(
            "insert into schedule_fires (schedule_id, fire_at, outcome) values ($1, $2, $3)
             on conflict do nothing returning fire_at",
        )
        .bind(claimed.id)
        .bind(fire.at)
        .bind(outcome.as_str())
        .fetch_optional(&mut *transaction)
        .await?;
        if recorded.is_none() {
            fired.already_fired += 1;
            continue;
        }
        if outcome == FireOutcome::SkippedOverlap {
            fired.skipped += 1;
            continue;
        }
        let submitted =
            enqueue::submit(&mut transaction, context, submitter, std::slice::from_ref(&schedule.job), None, false)
                .await?;
        let (job_id, outcome, detail) = match &submitted {
            SubmitOutcome::Created { ids, .. } => (ids.first().copied(), FireOutcome::Submitted, None),
            SubmitOutcome::UnknownQueues(queues) => {
                (None, FireOutcome::Rejected, Some(format!("no queue named {}", queues.join(", "))))
            }
            SubmitOutcome::Rejected { queue, .. } => {
                (None, FireOutcome::Rejected, Some(format!("the queue {queue:?} is full")))
            }
            SubmitOutcome::OverQuota(rejection) => (None, FireOutcome::Rejected, Some(rejection.describe())),
            SubmitOutcome::Replayed { ids, .. } => (ids.first().copied(), FireOutcome::Submitted, None),
            SubmitOutcome::KeyReused => (None, FireOutcome::Rejected, Some("idempotency key reused".to_owned())),
        };
        fired.submissions.push((schedule.job.queue.clone(), submitted));
        sqlx::query(
            "update schedule_fires set job_id = $3, outcome = $4, detail = $5 where schedule_id = $1 and fire_at = $2",
        )
        .bind(claimed.id)
        .bind(fire.at)
        .bind(job_id)
        .bind(outcome.as_str())
        .bind(detail)
        .execute(&mut *transaction)
        .await?;
        match job_id {
            Some(job_id) => fired.jobs.push((fire.at, job_id)),
            None => fired.rejected += 1,
        }
    }
    sqlx::query("update schedules set fires_after = $2, next_fire_at = $3, updated_at = now() where id = $1")
        .bind(claimed.id)
        .bind(plan.fires_after)
        .bind(plan.next_fire_at)
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(Some(fired))
}
