//! The `jobs` table: the full, durable record of every job. Every change of a job's state
//! appends its event to `job_events` in the same statement or transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hodei_core::job::CancelOutcome;
use hodei_core::JobState;
use hodei_protocol::trace_context::TraceParent;
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::store::events;

/// A job: its row, with its tenant's name.
#[derive(Debug, Clone, PartialEq)]
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
    /// Attempts started so far, ever: the fencing number of the current (or last) attempt.
    pub attempt: i32,
    /// Attempts started in the current run: since submission, or since the job was last
    /// redriven or retried by hand. This is what `max_attempts` bounds.
    pub run_attempt: i32,
    pub deadline: Option<DateTime<Utc>>,
    pub not_before: Option<DateTime<Utc>>,
    pub metadata: serde_json::Value,
    /// When a cancel was requested for a job already on a worker.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// When the job last entered its ready queue, and when it last left it.
    pub queued_at: Option<DateTime<Utc>>,
    pub assigned_at: Option<DateTime<Utc>>,
    /// Milliseconds the last dispatch waited in the queue.
    pub wait_ms: Option<i64>,
    /// Whether any dispatch of this job waited longer than its queue's SLA.
    pub sla_breached: bool,
    /// For a scheduled job: when it becomes ready.
    pub run_at: Option<DateTime<Utc>>,
    /// Why the job is in the dead-letter queue: `attempts_exhausted`, `fatal_error`,
    /// `evicted`, `deadline_expired`, `queue_deleted`.
    pub dead_letter_reason: Option<String>,
    pub last_error: Option<String>,
    /// The queue the job was submitted to, when an overflow redirect moved it.
    pub submitted_queue: Option<String>,
    /// The worker holding the current (or last) attempt.
    pub worker_id: Option<Uuid>,
    pub started_at: Option<DateTime<Utc>>,
    /// The last attempt's exit code.
    pub exit_code: Option<i32>,
    /// The W3C trace context of the request that submitted the job.
    pub traceparent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobCommand {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub timeout_seconds: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobResources {
    pub cpu_millis: i32,
    pub memory_mib: i32,
    pub labels: BTreeMap<String, String>,
}

/// Columns of a job row, as `JobRow` reads them. `tenant` must be supplied by the query.
pub(crate) const JOB_COLUMNS: &str =
    "j.id, j.queue, j.state, j.priority, j.argv, j.env, j.working_dir, j.timeout_seconds,
    j.cpu_millis, j.memory_mib, j.labels, j.max_attempts, j.attempt, j.attempt_base, j.deadline, j.not_before, j.metadata,
    j.cancel_requested_at, j.created_at, j.updated_at, j.finished_at, j.idempotency_fingerprint, j.queued_at,
    j.assigned_at, j.wait_ms, j.sla_breached, j.run_at, j.dead_letter_reason, j.last_error, j.submitted_queue,
    j.worker_id, j.started_at, j.exit_code, j.traceparent";

#[derive(Debug, FromRow)]
pub(crate) struct JobRow {
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
    attempt_base: i32,
    deadline: Option<DateTime<Utc>>,
    not_before: Option<DateTime<Utc>>,
    metadata: serde_json::Value,
    cancel_requested_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    idempotency_fingerprint: Option<Vec<u8>>,
    queued_at: Option<DateTime<Utc>>,
    assigned_at: Option<DateTime<Utc>>,
    wait_ms: Option<i64>,
    sla_breached: bool,
    run_at: Option<DateTime<Utc>>,
    dead_letter_reason: Option<String>,
    last_error: Option<String>,
    submitted_queue: Option<String>,
    worker_id: Option<Uuid>,
    started_at: Option<DateTime<Utc>>,
    exit_code: Option<i32>,
    traceparent: Option<String>,
}

impl JobRow {
    pub(crate) fn id(&self) -> Uuid {
        self.id
    }

    pub(crate) fn fingerprint(&self) -> Option<&[u8]> {
        self.idempotency_fingerprint.as_deref()
    }

    pub(crate) fn into_job(self) -> sqlx::Result<Job> {
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
            run_attempt: self.attempt - self.attempt_base,
            deadline: self.deadline,
            not_before: self.not_before,
            metadata: self.metadata,
            cancel_requested_at: self.cancel_requested_at,
            queued_at: self.queued_at,
            assigned_at: self.assigned_at,
            wait_ms: self.wait_ms,
            sla_breached: self.sla_breached,
            run_at: self.run_at,
            dead_letter_reason: self.dead_letter_reason,
            last_error: self.last_error,
            submitted_queue: self.submitted_queue,
            worker_id: self.worker_id,
            started_at: self.started_at,
            exit_code: self.exit_code,
            traceparent: self.traceparent,
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

/// The tenant a submission belongs to, and the trace it is part of.
#[derive(Debug, Clone, Copy)]
pub struct Submitter<'a> {
    pub tenant_id: Uuid,
    pub tenant_name: &'a str,
    /// The trace context of the submitting request, kept with every job it submits.
    pub traceparent: Option<TraceParent>,
}

/// Rows holding `keys`, in the order of `keys`.
pub(crate) async fn find_by_idempotency_keys(
    db: impl PgExecutor<'_>,
    submitter: Submitter<'_>,
    keys: &[String],
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(&format!(
        "select {JOB_COLUMNS}, $3::text as tenant
         from unnest($2::text[]) with ordinality as k(key, ord)
         join jobs j on j.tenant_id = $1 and j.idempotency_key = k.key and j.idempotency_key is not null
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
    /// Only dead letters with this reason.
    pub dead_letter_reason: Option<String>,
    /// Only jobs older than this id (the cursor of the previous page).
    pub before_id: Option<Uuid>,
    pub limit: i64,
}

/// Newest first. Returns up to `limit` jobs and whether more follow.
///
/// What a filter reads does not grow with history: a finished state is read through the
/// `outcome` indexes, a waiting or running one through the table that holds such jobs
/// (`ready_jobs`, `worker_jobs`, `scheduled_jobs`, each ordered by job id), a queue
/// through `jobs_tenant_queue_idx` (for an admin, one probe per tenant), everything else
/// through the tenant's (or all) jobs newest first. Only the filters given are in the
/// statement, so each gets its own plan.
pub async fn list(db: impl PgExecutor<'_>, filter: &JobFilter) -> sqlx::Result<(Vec<Job>, bool)> {
    let mut query = QueryBuilder::<Postgres>::new(format!("select {JOB_COLUMNS}, t.name as tenant from "));
    let admin_queue = filter.state.is_none() && filter.queue.is_some() && filter.tenant_scope.is_none();
    // Waiting and running jobs are listed from the table that holds them while they do.
    let holder = match filter.state {
        Some(JobState::Queued) => Some("ready_jobs"),
        Some(JobState::Scheduled) => Some("scheduled_jobs"),
        Some(JobState::Assigned | JobState::Running) => Some("worker_jobs"),
        _ => None,
    };
    // The column the page is ordered and cut by, after the leading columns of the index
    // that serves it (`index_order`).
    let mut index_order = String::new();
    let order = if let (Some(holder), Some(state)) = (holder, filter.state) {
        // The holding rows newest first, read on their own (`offset 0` keeps the planner
        // from folding them into a scan of `jobs`), then each job by its key: the page
        // ends after `limit` of them, whatever else the table holds.
        query.push(format_args!("(select h.job_id from {holder} h where true"));
        if let (Some(tenant), false) = (filter.tenant_scope, state == JobState::Scheduled) {
            query.push(" and h.tenant_id = ").push_bind(tenant);
        }
        if holder == "worker_jobs" {
            // An attempt held is started once its job runs.
            query.push(" and h.started = ").push_bind(state == JobState::Running);
        } else if let Some(queue) = &filter.queue {
            query.push(" and h.queue = ").push_bind(queue);
        }
        if let Some(before_id) = filter.before_id {
            query.push(" and h.job_id < ").push_bind(before_id);
        }
        query.push(" order by h.job_id desc offset 0) h join jobs j on j.id = h.job_id");
        query.push(" join tenants t on t.id = j.tenant_id where j.state = ").push_bind(state.as_str());
        if let Some(tenant) = filter.tenant_scope {
            query.push(" and j.tenant_id = ").push_bind(tenant);
        }
        if let Some(queue) = &filter.queue {
            query.push(" and j.queue = ").push_bind(queue);
        }
        "h.job_id"
    } else {
        // Read from `jobs` itself, the page comes from the index that serves the filter, in
        // its order: its leading columns are pinned by a range of one value (`between $1
        // and $1`) and lead the `order by`. With an equality instead, the planner drops
        // them from the order and may take the primary key, assuming a tenant's rows are
        // spread evenly through time, and scan all the newer jobs of others to find an old
        // tenant's page.
        if admin_queue {
            // An admin's queue filter: no index leads with the queue alone, so each
            // tenant's newest page in the queue is read from `jobs_tenant_queue_idx`
            // (one short probe per tenant), and the pages are merged. The tenant is an
            // equality: with a range of one value from the outer row, the scan would be
            // positioned by the tenant alone and walk all of its jobs for the queue.
            query.push("tenants t cross join lateral (select j.* from jobs j where j.tenant_id = t.id");
            index_order.push_str("j.tenant_id desc, j.queue desc, ");
        } else {
            query.push("jobs j join tenants t on t.id = j.tenant_id where true");
        }
        let mut pin = |query: &mut QueryBuilder<'_, Postgres>, column: &str| {
            query.push(format_args!(" and j.{column} between "));
            index_order.push_str(&format!("j.{column} desc, "));
        };
        if let Some(tenant) = filter.tenant_scope {
            pin(&mut query, "tenant_id");
            query.push_bind(tenant).push(" and ").push_bind(tenant);
        }
        match (filter.state, &filter.queue, filter.tenant_scope) {
            (Some(state), queue, _) => {
                pin(&mut query, "outcome");
                query.push_bind(state.as_str()).push(" and ").push_bind(state.as_str());
                if let Some(queue) = queue {
                    query.push(" and j.queue = ").push_bind(queue);
                }
            }
            (None, Some(queue), Some(_)) => {
                pin(&mut query, "queue");
                query.push_bind(queue).push(" and ").push_bind(queue);
            }
            (None, Some(queue), None) => {
                query.push(" and j.queue between ").push_bind(queue).push(" and ").push_bind(queue);
            }
            (None, None, _) => {}
        }
        if let Some(before_id) = filter.before_id {
            query.push(" and j.id < ").push_bind(before_id);
        }
        "j.id"
    };
    if let Some(after) = filter.created_after {
        query.push(" and j.created_at >= ").push_bind(after);
    }
    if let Some(before) = filter.created_before {
        query.push(" and j.created_at < ").push_bind(before);
    }
    if let Some(reason) = &filter.dead_letter_reason {
        query.push(" and j.dead_letter_reason = ").push_bind(reason);
    }
    query.push(format_args!(" order by {index_order}{order} desc limit "));
    query.push_bind(filter.limit + 1);
    if admin_queue {
        query.push(") j order by j.id desc limit ").push_bind(filter.limit + 1);
    }
    // Planned with its values every time (an unnamed statement): a plan cached for any
    // tenant would not know that one tenant's rows are a tenth of the table and another's a
    // handful, nor which end of the table they sit at.
    let rows: Vec<JobRow> = query.build_query_as().persistent(false).fetch_all(db).await?;
    let has_more = rows.len() as i64 > filter.limit;
    let jobs = rows.into_iter().take(filter.limit as usize).map(JobRow::into_job).collect::<sqlx::Result<_>>()?;
    Ok((jobs, has_more))
}

/// Ids of up to `limit` jobs in one of `states` (and `queue`, when given), oldest first.
pub async fn select_ids(
    db: impl PgExecutor<'_>,
    tenant_scope: Option<Uuid>,
    states: &[JobState],
    queue: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "select id from jobs where ($1::uuid is null or tenant_id = $1) and state = any($2)
           and ($3::text is null or queue = $3)
         order by id limit $4",
    )
    .bind(tenant_scope)
    .bind(states.iter().map(|state| state.as_str()).collect::<Vec<_>>())
    .bind(queue)
    .bind(limit)
    .fetch_all(db)
    .await
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

/// How often a cancel starts over when a job became waiting after it looked (see below).
const CANCEL_RETRIES: usize = 8;

/// Cancels a waiting (queued or scheduled) job at once; records the request for a job on
/// a worker.
pub async fn cancel(db: &mut PgConnection, tenant_scope: Option<Uuid>, id: Uuid) -> sqlx::Result<CancelResult> {
    for _ in 0..CANCEL_RETRIES {
        if let Some(result) = try_cancel(db, tenant_scope, id).await? {
            return Ok(result);
        }
    }
    Err(sqlx::Error::Protocol(format!("cancelling job {id}: it kept moving between queues")))
}

/// One try at a cancel; `None` when the job entered a waiting queue after this
/// transaction looked for its waiting row (a retry or a promotion committing meanwhile):
/// the caller starts over with a fresh snapshot.
async fn try_cancel(db: &mut PgConnection, tenant_scope: Option<Uuid>, id: Uuid) -> sqlx::Result<Option<CancelResult>> {
    let mut transaction = sqlx::Connection::begin(&mut *db).await?;
    // Take the job out of its waiting queue before locking the job row: the order the claim
    // and the promoter use (queue row, then job row), so cancel can never deadlock with
    // them. If a claimer holds the row, this waits for it and then finds the row gone.
    let (left_ready, left_scheduled): (Option<(String, Uuid)>, bool) = {
        let row: Option<(Option<String>, Option<Uuid>, bool)> = sqlx::query_as(
            "with ready as (
                delete from ready_jobs where job_id = $1 and ($2::uuid is null or tenant_id = $2)
                returning queue, tenant_id
             ), scheduled as (
                delete from scheduled_jobs s using jobs j
                where s.job_id = $1 and j.id = s.job_id and ($2::uuid is null or j.tenant_id = $2)
                returning s.job_id
             )
             select (select queue from ready), (select tenant_id from ready), exists (select 1 from scheduled)",
        )
        .bind(id)
        .bind(tenant_scope)
        .fetch_optional(&mut *transaction)
        .await?;
        match row {
            Some((Some(queue), Some(tenant_id), scheduled)) => (Some((queue, tenant_id)), scheduled),
            Some((_, _, scheduled)) => (None, scheduled),
            None => (None, false),
        }
    };
    let locked: Option<(String,)> =
        sqlx::query_as("select state from jobs where id = $1 and ($2::uuid is null or tenant_id = $2) for update")
            .bind(id)
            .bind(tenant_scope)
            .fetch_optional(&mut *transaction)
            .await?;
    let Some((state,)) = locked else {
        return Ok(Some(CancelResult::NotFound));
    };
    let state = JobState::parse(&state).ok_or_else(|| sqlx::Error::Decode(format!("unknown state {state}").into()))?;
    // The job row was locked after the waiting rows were looked for, so a transaction that
    // committed in between (a failed attempt scheduling its retry, a promotion, a redrive)
    // may have given the job a waiting row this statement's snapshot did not see. Marking
    // it cancelled now would leave that row behind, and the job would run again. Start
    // over instead: the lock is released, and the next look sees the committed row.
    let waiting_row_missed = match state {
        JobState::Queued => left_ready.is_none(),
        JobState::Scheduled => !left_scheduled,
        _ => false,
    };
    if waiting_row_missed {
        transaction.rollback().await?;
        return Ok(None);
    }
    let change = match state.on_cancel() {
        CancelOutcome::CancelledNow => Some(("job.cancelled", "cancelled")),
        CancelOutcome::HandedToWorker => Some(("job.cancel_requested", state.as_str())),
        CancelOutcome::AlreadyCancelled | CancelOutcome::NotCancellable => None,
    };
    if let Some((queue, tenant_id)) = &left_ready {
        sqlx::query(
            "insert into queue_activity (queue, tenant_id, kind, job_id) values ($1, $2, 'cancelled_queued', $3)",
        )
        .bind(queue)
        .bind(tenant_id)
        .bind(id)
        .execute(&mut *transaction)
        .await?;
    }
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
    Ok(Some(match state.on_cancel() {
        CancelOutcome::NotCancellable => CancelResult::AlreadyFinished(job),
        _ => CancelResult::Done(job),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tenants;
    use crate::testing::TestDatabase;
    use hodei_core::ordering::PolicyRegistry;
    use hodei_core::{JobSpec, ValidJob};

    fn valid_job() -> ValidJob {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({"command": {"argv": ["true"]}})).expect("spec");
        spec.validate(Utc::now()).expect("valid")
    }

    async fn submitted(db: &mut PgConnection, submitter: Submitter<'_>) -> Job {
        let registry = PolicyRegistry::shipped();
        let settings = crate::store::enqueue::QueueSettingsCache::disabled();
        let context = crate::store::enqueue::SubmitContext { registry: &registry, settings: &settings };
        match crate::store::enqueue::submit(db, context, submitter, &[valid_job()], None, true).await.expect("submit") {
            crate::store::enqueue::SubmitOutcome::Created { mut jobs, .. } => jobs.remove(0),
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
        let submitter = Submitter { tenant_id: tenant.id, tenant_name: "acme", traceparent: None };

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

    /// Marks a submitted job as running its first attempt, as a worker would.
    async fn mark_running(db: &mut PgConnection, job_id: Uuid) {
        sqlx::query("delete from ready_jobs where job_id = $1").bind(job_id).execute(&mut *db).await.expect("unready");
        sqlx::query("update jobs set state = 'running', attempt = 1 where id = $1")
            .bind(job_id)
            .execute(&mut *db)
            .await
            .expect("mark running");
    }

    async fn state_of(db: impl PgExecutor<'_>, job_id: Uuid) -> String {
        sqlx::query_scalar("select state from jobs where id = $1").bind(job_id).fetch_one(db).await.expect("state")
    }

    /// A cancel that arrives while the job's failed attempt is scheduling its retry must
    /// end the job for good: no scheduled row left behind, nothing for the promoter to
    /// bring back.
    #[tokio::test]
    async fn a_cancel_racing_a_retry_leaves_nothing_to_run_again() {
        let database = TestDatabase::migrated().await;
        let pool = database.pool().await;
        let mut db = pool.acquire().await.expect("connection");
        let tenant = tenants::create(&mut *db, "acme", 1).await.expect("tenant");
        let submitter = Submitter { tenant_id: tenant.id, tenant_name: "acme", traceparent: None };
        let job = submitted(&mut db, submitter).await;
        mark_running(&mut db, job.id).await;

        // The failure schedules its retry and holds the job row, not yet committed.
        let mut failing = pool.begin().await.expect("begin");
        let failure =
            crate::store::dispatch::Failure { job_id: job.id, attempt: 1, error: "boom".into(), retryable: true };
        let result = crate::store::dispatch::fail(&mut failing, &failure, 0.5).await.expect("fail");
        assert!(matches!(result, crate::store::dispatch::FailureResult::RetryScheduled { .. }), "{result:?}");

        // The cancel looks for a waiting row (none yet visible) and then waits for the job row.
        let cancelling = tokio::spawn({
            let pool = pool.clone();
            async move {
                let mut db = pool.acquire().await.expect("connection");
                cancel(&mut db, Some(tenant.id), job.id).await.expect("cancel")
            }
        });
        crate::testing::until_a_statement_waits_for_a_lock(&pool, "the cancel waits for the job row").await;
        failing.commit().await.expect("commit the failure");

        let CancelResult::Done(cancelled) = cancelling.await.expect("cancel task") else { panic!("expected Done") };
        assert_eq!(cancelled.state, JobState::Cancelled);
        let leftover: i64 = sqlx::query_scalar("select count(*) from scheduled_jobs where job_id = $1")
            .bind(job.id)
            .fetch_one(&mut *db)
            .await
            .expect("scheduled rows");
        assert_eq!(leftover, 0, "the retry's scheduled row must go with the cancel");
        sqlx::query("update scheduled_jobs set run_at = now()").execute(&mut *db).await.expect("make due");
        let registry = PolicyRegistry::shipped();
        crate::store::dispatch::promote_due(&mut db, &registry, 100).await.expect("promote");
        assert_eq!(state_of(&mut *db, job.id).await, "cancelled");
        assert_eq!(event_kinds(&mut *db, job.id).await.last().map(String::as_str), Some("job.cancelled"));
    }

    /// The promoter and the scheduling cycle move a job only from the state they expect:
    /// a cancelled job is never brought back by a waiting row, however it was left.
    #[tokio::test]
    async fn promotion_and_assignment_never_revive_a_cancelled_job() {
        let database = TestDatabase::migrated().await;
        let pool = database.pool().await;
        let mut db = pool.acquire().await.expect("connection");
        let tenant = tenants::create(&mut *db, "acme", 1).await.expect("tenant");
        let submitter = Submitter { tenant_id: tenant.id, tenant_name: "acme", traceparent: None };

        let scheduled = submitted(&mut db, submitter).await;
        mark_running(&mut db, scheduled.id).await;
        sqlx::query(
            "with j as (update jobs set state = 'cancelled', finished_at = now() where id = $1 returning id, queue, tenant_id)
             insert into scheduled_jobs (job_id, queue, tenant_id, run_at) select id, queue, tenant_id, now() from j",
        )
        .bind(scheduled.id)
        .execute(&mut *db)
        .await
        .expect("a cancelled job with a stray scheduled row");
        let registry = PolicyRegistry::shipped();
        crate::store::dispatch::promote_due(&mut db, &registry, 100).await.expect("promote");
        assert_eq!(state_of(&mut *db, scheduled.id).await, "cancelled");
        let rows: i64 = sqlx::query_scalar(
            "select (select count(*) from scheduled_jobs where job_id = $1) + (select count(*) from ready_jobs where job_id = $1)",
        )
        .bind(scheduled.id)
        .fetch_one(&mut *db)
        .await
        .expect("rows");
        assert_eq!(rows, 0, "the stray row is cleared, not promoted");

        let queued = submitted(&mut db, submitter).await;
        sqlx::query("update jobs set state = 'cancelled', finished_at = now() where id = $1")
            .bind(queued.id)
            .execute(&mut *db)
            .await
            .expect("a cancelled job with a stray ready row");
        sqlx::query(
            "insert into workers (id, name, pool, state, cpu_millis, memory_mib, slots, labels, token_hash)
             values ($1, 'w', 'default', 'idle', 4000, 4096, 4, '{}', '\\x00')",
        )
        .bind(Uuid::now_v7())
        .execute(&mut *db)
        .await
        .expect("a free worker");
        crate::store::assignment::run_cycle(
            &mut db,
            hodei_core::placement::Strategy::BestFit,
            crate::store::assignment::CycleLimits::default(),
        )
        .await
        .expect("cycle");
        assert_eq!(state_of(&mut *db, queued.id).await, "cancelled");
        let held: i64 = sqlx::query_scalar("select count(*) from worker_jobs where job_id = $1")
            .bind(queued.id)
            .fetch_one(&mut *db)
            .await
            .expect("holdings");
        assert_eq!(held, 0, "a cancelled job is never assigned");
    }

    /// A retry's time is the database's clock plus the backoff, never the API host's
    /// clock: it is compared with the database's `now()` by the promoter on every replica.
    #[tokio::test]
    async fn a_retry_is_scheduled_on_the_database_clock() {
        let database = TestDatabase::migrated().await;
        let pool = database.pool().await;
        let mut db = pool.acquire().await.expect("connection");
        let tenant = tenants::create(&mut *db, "acme", 1).await.expect("tenant");
        let job = submitted(&mut db, Submitter { tenant_id: tenant.id, tenant_name: "acme", traceparent: None }).await;
        mark_running(&mut db, job.id).await;

        let mut transaction = pool.begin().await.expect("begin");
        let failure =
            crate::store::dispatch::Failure { job_id: job.id, attempt: 1, error: "boom".into(), retryable: true };
        let result = crate::store::dispatch::fail(&mut transaction, &failure, 0.5).await.expect("fail");
        let crate::store::dispatch::FailureResult::RetryScheduled { run_at } = result else { panic!("{result:?}") };
        // `now()` is the transaction's start on the database's clock.
        let (database_now, scheduled_at): (DateTime<Utc>, DateTime<Utc>) =
            sqlx::query_as("select now(), run_at from scheduled_jobs where job_id = $1")
                .bind(job.id)
                .fetch_one(&mut *transaction)
                .await
                .expect("scheduled");
        let queue = crate::store::queues::get(&mut *transaction, "default").await.expect("queue").expect("default");
        let delay = queue.backoff().delay_seconds(1, hodei_core::backoff::jitter_for(0.5, job.id.as_u128(), 1));
        assert_eq!(scheduled_at, run_at);
        assert_eq!((run_at - database_now).num_microseconds(), Some((delay * 1e6).round() as i64));
    }

    /// The jobs of a worker that died together retry at different times: each job's
    /// jitter is its own, though the batch shares one random seed.
    #[tokio::test]
    async fn a_dead_workers_jobs_retry_spread_out() {
        let database = TestDatabase::migrated().await;
        let pool = database.pool().await;
        let mut db = pool.acquire().await.expect("connection");
        let tenant = tenants::create(&mut *db, "acme", 1).await.expect("tenant");
        let submitter = Submitter { tenant_id: tenant.id, tenant_name: "acme", traceparent: None };
        let worker = Uuid::now_v7();
        sqlx::query(
            "insert into workers (id, name, pool, state, cpu_millis, memory_mib, slots, labels, token_hash)
             values ($1, 'doomed', 'default', 'busy', 8000, 8192, 8, '{}', '\\x01')",
        )
        .bind(worker)
        .execute(&mut *db)
        .await
        .expect("a worker");
        for _ in 0..6 {
            let job = submitted(&mut db, submitter).await;
            mark_running(&mut db, job.id).await;
            sqlx::query(
                "insert into worker_jobs (job_id, worker_id, attempt, cpu_millis, memory_mib) values ($1, $2, 1, 1, 1)",
            )
            .bind(job.id)
            .bind(worker)
            .execute(&mut *db)
            .await
            .expect("held");
        }
        let given_up = crate::store::assignment::abandon_worker(&mut db, worker, "gone", 0.5).await.expect("abandon");
        assert_eq!(given_up.len(), 6);
        let times: Vec<DateTime<Utc>> =
            sqlx::query_scalar("select distinct run_at from scheduled_jobs").fetch_all(&mut *db).await.expect("runs");
        assert_eq!(times.len(), 6, "six retries at six different times: {times:?}");
    }
}
