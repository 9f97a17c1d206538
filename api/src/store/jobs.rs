//! The `jobs` table: the full, durable record of every job. Every change of a job's state
//! appends its event to `job_events` in the same statement or transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hodei_core::job::CancelOutcome;
use hodei_core::{JobState, ValidJob};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::events;

/// A job as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    /// Name of the owning tenant.
    pub tenant: String,
    pub queue: String,
    pub state: JobState,
    pub priority: i16,
    pub command: JobCommand,
    pub resources: JobResources,
    pub max_attempts: i32,
    /// Attempts started so far.
    pub attempt: i32,
    pub deadline: Option<DateTime<Utc>>,
    pub not_before: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// When a cancel was requested for a job already on a worker.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobCommand {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub timeout_seconds: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobResources {
    pub cpu_millis: i32,
    pub memory_mib: i32,
    pub labels: BTreeMap<String, String>,
}

/// Columns of a job row, as `JobRow` reads them. `tenant` must be supplied by the query.
const JOB_COLUMNS: &str = "j.id, j.queue, j.state, j.priority, j.argv, j.env, j.working_dir, j.timeout_seconds,
    j.cpu_millis, j.memory_mib, j.labels, j.max_attempts, j.attempt, j.deadline, j.not_before, j.metadata,
    j.cancel_requested_at, j.created_at, j.updated_at, j.finished_at, j.idempotency_fingerprint";

#[derive(Debug, FromRow)]
struct JobRow {
    id: Uuid,
    tenant: String,
    queue: String,
    state: String,
    priority: i16,
    argv: Json<Vec<String>>,
    env: Json<BTreeMap<String, String>>,
    working_dir: Option<String>,
    timeout_seconds: i32,
    cpu_millis: i32,
    memory_mib: i32,
    labels: Json<BTreeMap<String, String>>,
    max_attempts: i32,
    attempt: i32,
    deadline: Option<DateTime<Utc>>,
    not_before: Option<DateTime<Utc>>,
    metadata: serde_json::Value,
    cancel_requested_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    idempotency_fingerprint: Option<Vec<u8>>,
}

impl JobRow {
    fn into_job(self) -> sqlx::Result<Job> {
        let state = JobState::parse(&self.state)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown job state {:?}", self.state).into()))?;
        Ok(Job {
            id: self.id,
            tenant: self.tenant,
            queue: self.queue,
            state,
            priority: self.priority,
            command: JobCommand {
                argv: self.argv.0,
                env: self.env.0,
                working_dir: self.working_dir,
                timeout_seconds: self.timeout_seconds,
            },
            resources: JobResources { cpu_millis: self.cpu_millis, memory_mib: self.memory_mib, labels: self.labels.0 },
            max_attempts: self.max_attempts,
            attempt: self.attempt,
            deadline: self.deadline,
            not_before: self.not_before,
            metadata: self.metadata,
            cancel_requested_at: self.cancel_requested_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        })
    }
}

/// A client's idempotency key and a digest of the request that carried it.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: Vec<u8>,
}

/// What a submission did.
#[derive(Debug)]
pub enum SubmitOutcome<T> {
    Created(T),
    /// The idempotency key was seen before with the same request: the original result.
    Replayed(T),
    /// The idempotency key was seen before with a different request. Nothing was written.
    KeyReused,
    /// A job names a queue that does not exist. Nothing was written.
    UnknownQueues(Vec<String>),
}

/// The tenant a submission belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Submitter<'a> {
    pub tenant_id: Uuid,
    pub tenant_name: &'a str,
}

/// Inserts one job and its `job.submitted` event in a single statement.
pub async fn submit_one(
    db: &mut PgConnection,
    submitter: Submitter<'_>,
    job: &ValidJob,
    idempotency: Option<&Idempotency>,
) -> sqlx::Result<SubmitOutcome<Job>> {
    let inserted: Option<JobRow> = sqlx::query_as(&format!(
        "with j as (
            insert into jobs (id, tenant_id, queue, state, priority, argv, env, working_dir, timeout_seconds,
                cpu_millis, memory_mib, labels, max_attempts, deadline, not_before, metadata,
                idempotency_key, idempotency_fingerprint)
            values ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
            on conflict on constraint jobs_idempotency_key do nothing
            returning *
         ), submitted as (
            {SUBMITTED_EVENT_INSERT}
         )
         select {JOB_COLUMNS}, $18::text as tenant from j"
    ))
    .bind(Uuid::now_v7())
    .bind(submitter.tenant_id)
    .bind(&job.queue)
    .bind(job.priority)
    .bind(Json(&job.argv))
    .bind(Json(&job.env))
    .bind(&job.working_dir)
    .bind(job.timeout_seconds)
    .bind(job.cpu_millis)
    .bind(job.memory_mib)
    .bind(Json(&job.labels))
    .bind(job.max_attempts)
    .bind(job.deadline)
    .bind(job.not_before)
    .bind(&job.metadata)
    .bind(idempotency.map(|i| &i.key))
    .bind(idempotency.map(|i| &i.fingerprint))
    .bind(submitter.tenant_name)
    .fetch_optional(&mut *db)
    .await
    .or_else(|error| unknown_queue_as_none(error, &mut None))?;

    if let Some(row) = inserted {
        return Ok(SubmitOutcome::Created(row.into_job()?));
    }
    let Some(idempotency) = idempotency else {
        // Without a key the insert cannot conflict, so only a missing queue gets here.
        return Ok(SubmitOutcome::UnknownQueues(missing_queues(&mut *db, std::slice::from_ref(&job.queue)).await?));
    };
    if !missing_queues(&mut *db, std::slice::from_ref(&job.queue)).await?.is_empty() {
        return Ok(SubmitOutcome::UnknownQueues(vec![job.queue.clone()]));
    }
    let existing = find_by_idempotency_keys(&mut *db, submitter, std::slice::from_ref(&idempotency.key)).await?;
    match existing.into_iter().next() {
        Some(row) if row.idempotency_fingerprint.as_deref() == Some(idempotency.fingerprint.as_slice()) => {
            Ok(SubmitOutcome::Replayed(row.into_job()?))
        }
        _ => Ok(SubmitOutcome::KeyReused),
    }
}

/// The CTE that appends a `job.submitted` event for every row of `j`.
const SUBMITTED_EVENT_INSERT: &str = "insert into job_events (tenant_id, job_id, kind, state, data)
    select tenant_id, id, 'job.submitted', 'queued', jsonb_build_object('queue', queue, 'priority', priority)
    from j order by id";

/// Inserts a batch atomically: every job or none, and returns their ids in input order.
/// With an idempotency key, job `i` gets the key `<key>#<i>`, so a retried batch returns
/// the same ids.
pub async fn submit_batch(
    db: &mut PgConnection,
    submitter: Submitter<'_>,
    jobs: &[ValidJob],
    idempotency: Option<&Idempotency>,
) -> sqlx::Result<SubmitOutcome<Vec<Uuid>>> {
    let mut ids: Vec<Uuid> = (0..jobs.len()).map(|_| Uuid::now_v7()).collect();
    ids.sort();
    let keys: Vec<Option<String>> =
        (0..jobs.len()).map(|index| idempotency.map(|i| format!("{}#{index}", i.key))).collect();
    let mut transaction = sqlx::Connection::begin(&mut *db).await?;
    let mut unknown_queue = None;
    let inserted: Vec<Uuid> = sqlx::query_scalar(&format!(
        "with input as (
            select * from unnest($1::uuid[], $2::text[], $3::int2[], $4::jsonb[], $5::jsonb[], $6::text[],
                $7::int4[], $8::int4[], $9::int4[], $10::jsonb[], $11::int4[], $12::timestamptz[],
                $13::timestamptz[], $14::jsonb[], $15::text[])
            as i(id, queue, priority, argv, env, working_dir, timeout_seconds, cpu_millis, memory_mib, labels,
                 max_attempts, deadline, not_before, metadata, idempotency_key)
         ), j as (
            insert into jobs (id, tenant_id, queue, state, priority, argv, env, working_dir, timeout_seconds,
                cpu_millis, memory_mib, labels, max_attempts, deadline, not_before, metadata,
                idempotency_key, idempotency_fingerprint)
            select id, $16, queue, 'queued', priority, argv, env, working_dir, timeout_seconds, cpu_millis,
                memory_mib, labels, max_attempts, deadline, not_before, metadata, idempotency_key, $17
            from input order by id
            on conflict on constraint jobs_idempotency_key do nothing
            returning *
         ), submitted as (
            {SUBMITTED_EVENT_INSERT}
         )
         select id from j"
    ))
    .bind(&ids)
    .bind(jobs.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.priority).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| Json(&j.argv)).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| Json(&j.env)).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.working_dir.as_deref()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.timeout_seconds).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.cpu_millis).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.memory_mib).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| Json(&j.labels)).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.deadline).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.not_before).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| &j.metadata).collect::<Vec<_>>())
    .bind(&keys)
    .bind(submitter.tenant_id)
    .bind(idempotency.map(|i| &i.fingerprint))
    .fetch_all(&mut *transaction)
    .await
    .or_else(|error| unknown_queue_as_none::<()>(error, &mut unknown_queue).map(|()| Vec::new()))?;

    if unknown_queue.is_some() {
        transaction.rollback().await?;
        let queues: Vec<String> = jobs.iter().map(|j| j.queue.clone()).collect();
        return Ok(SubmitOutcome::UnknownQueues(missing_queues(&mut *db, &queues).await?));
    }
    if inserted.len() == jobs.len() {
        transaction.commit().await?;
        // `ids` is sorted, as is generation order, so it is also the input order.
        return Ok(SubmitOutcome::Created(ids));
    }
    // Some keys existed: roll back whatever was inserted, then decide between a replay of
    // the same batch and a key reused for something else.
    transaction.rollback().await?;
    let Some(idempotency) = idempotency else {
        return Err(sqlx::Error::Protocol("batch insert returned fewer rows than it was given".into()));
    };
    let keys: Vec<String> = keys.into_iter().flatten().collect();
    let existing = find_by_idempotency_keys(&mut *db, submitter, &keys).await?;
    let same_request = existing.len() == jobs.len()
        && existing
            .iter()
            .all(|row| row.idempotency_fingerprint.as_deref() == Some(idempotency.fingerprint.as_slice()));
    if !same_request {
        return Ok(SubmitOutcome::KeyReused);
    }
    Ok(SubmitOutcome::Replayed(existing.iter().map(|row| row.id).collect()))
}

/// Turns a foreign-key violation on `jobs.queue` into "no rows", noting that it happened.
fn unknown_queue_as_none<T: Default>(error: sqlx::Error, flag: &mut Option<()>) -> sqlx::Result<T> {
    match error.as_database_error().and_then(|e| e.constraint()) {
        Some("jobs_queue_fkey") => {
            *flag = Some(());
            Ok(T::default())
        }
        _ => Err(error),
    }
}

async fn missing_queues(db: impl PgExecutor<'_>, queues: &[String]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "select distinct q from unnest($1::text[]) as q where not exists (select 1 from queues where name = q) order by q",
    )
    .bind(queues)
    .fetch_all(db)
    .await
}

/// Rows holding `keys`, in the order of `keys`.
async fn find_by_idempotency_keys(
    db: impl PgExecutor<'_>,
    submitter: Submitter<'_>,
    keys: &[String],
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(&format!(
        "select {JOB_COLUMNS}, $3::text as tenant
         from unnest($2::text[]) with ordinality as k(key, ord)
         join jobs j on j.tenant_id = $1 and j.idempotency_key = k.key
         order by k.ord"
    ))
    .bind(submitter.tenant_id)
    .bind(keys)
    .bind(submitter.tenant_name)
    .fetch_all(db)
    .await
}

/// One job, if it exists and `tenant_scope` (when given) owns it.
pub async fn get(db: impl PgExecutor<'_>, tenant_scope: Option<Uuid>, id: Uuid) -> sqlx::Result<Option<Job>> {
    let row: Option<JobRow> = sqlx::query_as(&format!(
        "select {JOB_COLUMNS}, t.name as tenant from jobs j join tenants t on t.id = j.tenant_id
         where j.id = $1 and ($2::uuid is null or j.tenant_id = $2)"
    ))
    .bind(id)
    .bind(tenant_scope)
    .fetch_optional(db)
    .await?;
    row.map(JobRow::into_job).transpose()
}

/// Filters for listing jobs. All are optional and combine with "and".
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub tenant_scope: Option<Uuid>,
    pub state: Option<JobState>,
    pub queue: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Only jobs older than this id (the cursor of the previous page).
    pub before_id: Option<Uuid>,
    pub limit: i64,
}

/// Newest first. Returns up to `limit` jobs and whether more follow.
pub async fn list(db: impl PgExecutor<'_>, filter: &JobFilter) -> sqlx::Result<(Vec<Job>, bool)> {
    let rows: Vec<JobRow> = sqlx::query_as(&format!(
        "select {JOB_COLUMNS}, t.name as tenant from jobs j join tenants t on t.id = j.tenant_id
         where ($1::uuid is null or j.tenant_id = $1)
           and ($2::text is null or j.state = $2)
           and ($3::text is null or j.queue = $3)
           and ($4::timestamptz is null or j.created_at >= $4)
           and ($5::timestamptz is null or j.created_at < $5)
           and ($6::uuid is null or j.id < $6)
         order by j.id desc
         limit $7"
    ))
    .bind(filter.tenant_scope)
    .bind(filter.state.map(JobState::as_str))
    .bind(&filter.queue)
    .bind(filter.created_after)
    .bind(filter.created_before)
    .bind(filter.before_id)
    .bind(filter.limit + 1)
    .fetch_all(db)
    .await?;
    let has_more = rows.len() as i64 > filter.limit;
    let jobs = rows.into_iter().take(filter.limit as usize).map(JobRow::into_job).collect::<sqlx::Result<_>>()?;
    Ok((jobs, has_more))
}

/// What a cancel request found and did.
#[derive(Debug)]
pub enum CancelResult {
    NotFound,
    /// The job after the request (cancelled, or marked for its worker to stop).
    Done(Job),
    /// The job had already finished; unchanged.
    AlreadyFinished(Job),
}

/// Cancels a queued job at once; records the request for a job on a worker.
pub async fn cancel(db: &mut PgConnection, tenant_scope: Option<Uuid>, id: Uuid) -> sqlx::Result<CancelResult> {
    let mut transaction = sqlx::Connection::begin(&mut *db).await?;
    let locked: Option<(String,)> =
        sqlx::query_as("select state from jobs where id = $1 and ($2::uuid is null or tenant_id = $2) for update")
            .bind(id)
            .bind(tenant_scope)
            .fetch_optional(&mut *transaction)
            .await?;
    let Some((state,)) = locked else {
        return Ok(CancelResult::NotFound);
    };
    let state = JobState::parse(&state).ok_or_else(|| sqlx::Error::Decode(format!("unknown state {state}").into()))?;
    let change = match state.on_cancel() {
        CancelOutcome::CancelledNow => Some(("job.cancelled", "cancelled")),
        CancelOutcome::HandedToWorker => Some(("job.cancel_requested", state.as_str())),
        CancelOutcome::AlreadyCancelled | CancelOutcome::NotCancellable => None,
    };
    if let Some((kind, new_state)) = change {
        let (tenant_id, attempt): (Uuid, i32) = sqlx::query_as(
            "update jobs set state = $2,
                 cancel_requested_at = coalesce(cancel_requested_at, now()),
                 finished_at = case when $2 = 'cancelled' then now() else finished_at end,
                 updated_at = now()
             where id = $1 returning tenant_id, attempt",
        )
        .bind(id)
        .bind(new_state)
        .fetch_one(&mut *transaction)
        .await?;
        events::append(&mut *transaction, events::NewEvent { tenant_id, job_id: id, kind, state: new_state, attempt })
            .await?;
    }
    let job = get(&mut *transaction, tenant_scope, id)
        .await?
        .ok_or_else(|| sqlx::Error::Protocol("a locked job vanished".into()))?;
    transaction.commit().await?;
    Ok(match state.on_cancel() {
        CancelOutcome::NotCancellable => CancelResult::AlreadyFinished(job),
        _ => CancelResult::Done(job),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tenants;
    use crate::testing::TestDatabase;
    use hodei_core::JobSpec;

    fn valid_job() -> ValidJob {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({"command": {"argv": ["true"]}})).expect("spec");
        spec.validate(Utc::now()).expect("valid")
    }

    async fn submitted(db: &mut PgConnection, submitter: Submitter<'_>) -> Job {
        match submit_one(db, submitter, &valid_job(), None).await.expect("submit") {
            SubmitOutcome::Created(job) => job,
            other => panic!("not created: {other:?}"),
        }
    }

    async fn event_kinds(db: impl PgExecutor<'_>, job_id: Uuid) -> Vec<String> {
        sqlx::query_scalar("select kind from job_events where job_id = $1 order by id")
            .bind(job_id)
            .fetch_all(db)
            .await
            .expect("events")
    }

    #[tokio::test]
    async fn cancelling_follows_the_state_of_the_job() {
        let database = TestDatabase::migrated().await;
        let pool = database.pool().await;
        let mut db = pool.acquire().await.expect("connection");
        let tenant = tenants::create(&mut *db, "acme", 1).await.expect("tenant");
        let submitter = Submitter { tenant_id: tenant.id, tenant_name: "acme" };

        // On a worker: the request is recorded, the state is the worker's to change.
        let running = submitted(&mut db, submitter).await;
        sqlx::query("update jobs set state = 'running', attempt = 1 where id = $1")
            .bind(running.id)
            .execute(&mut *db)
            .await
            .expect("mark running");
        let CancelResult::Done(job) = cancel(&mut db, Some(tenant.id), running.id).await.expect("cancel") else {
            panic!("expected Done");
        };
        assert_eq!(job.state, JobState::Running);
        assert!(job.cancel_requested_at.is_some());
        assert_eq!(event_kinds(&mut *db, running.id).await, ["job.submitted", "job.cancel_requested"]);

        // Finished: nothing to cancel, nothing changes.
        let finished = submitted(&mut db, submitter).await;
        sqlx::query("update jobs set state = 'succeeded', finished_at = now() where id = $1")
            .bind(finished.id)
            .execute(&mut *db)
            .await
            .expect("mark succeeded");
        let result = cancel(&mut db, Some(tenant.id), finished.id).await.expect("cancel");
        assert!(
            matches!(result, CancelResult::AlreadyFinished(ref job) if job.state == JobState::Succeeded),
            "{result:?}"
        );
        assert_eq!(event_kinds(&mut *db, finished.id).await, ["job.submitted"]);

        // Another tenant's scope finds nothing.
        let other = tenants::create(&mut *db, "other", 1).await.expect("tenant");
        let queued = submitted(&mut db, submitter).await;
        assert!(matches!(cancel(&mut db, Some(other.id), queued.id).await.expect("cancel"), CancelResult::NotFound));
        assert_eq!(
            get(&mut *db, Some(tenant.id), queued.id).await.expect("get").expect("exists").state,
            JobState::Queued
        );
    }
}
