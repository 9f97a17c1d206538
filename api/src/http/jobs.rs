//! `/api/v1/jobs`: submit (one or a batch), get, list and cancel jobs. A tenant key sees
//! only its own tenant's jobs: any other job is "not found", never "forbidden".

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use hodei_core::names::check_resource_name;
use hodei_core::{JobSpec, JobState, ValidJob, ValidationErrors};
use hodei_protocol::trace_context::TraceParent;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, Json, Problem, Query};
use crate::http::AppState;
use crate::store::assignment;
use crate::store::enqueue::{self, SubmitOutcome};
use crate::store::jobs::{self, CancelResult, Idempotency, JobFilter, Submitter};
use crate::store::logs;

pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
pub const MAX_BATCH_JOBS: usize = 1000;
pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(retry_job))
        .routes(routes!(cancel_jobs))
        .routes(routes!(retry_jobs))
        .routes(routes!(job_logs))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Return chunks after this position (`next_after` of the previous call).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// At most this many chunks, 1-1000 (default 500).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub chunks: Vec<LogChunk>,
    pub next_after: i64,
}

/// One chunk of output.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LogChunk {
    /// Position; pass the last one seen as `after` to continue.
    pub seq: i64,
    pub attempt: i32,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The chunk as text: its bytes decoded as UTF-8, each invalid sequence shown as U+FFFD.
    /// Workers split output only between whole characters, so valid UTF-8 reads back whole.
    pub data: String,
    /// The exact bytes the job wrote, standard base64 (RFC 4648, padded).
    pub data_base64: String,
    pub at: DateTime<Utc>,
}

impl From<logs::LogChunk> for LogChunk {
    fn from(chunk: logs::LogChunk) -> Self {
        let logs::LogChunk { seq, attempt, stream, data, data_base64, at } = chunk;
        Self { seq, attempt, stream, data, data_base64, at }
    }
}

/// A job's output (stdout and stderr of every attempt), read by cursor: each chunk's exact
/// bytes (`data_base64`) and the same as text (`data`).
#[utoipa::path(
    get, path = "/jobs/{id}/logs", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id"), LogsQuery),
    responses((status = 200, body = LogPage), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn job_logs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<axum::Json<LogPage>, ApiError> {
    let job_id = parse_job_id(&id)?;
    // The same tenant check as reading the job: another tenant's job does not exist.
    jobs::get(&state.db, principal.tenant_scope(), job_id).await?.ok_or_else(|| job_not_found(&id))?;
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request("invalid_query", format!("after: must not be negative, got {after}")));
    }
    let limit = query.limit.unwrap_or(500);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit: must be between 1 and 1000, got {limit}")));
    }
    let chunks: Vec<LogChunk> =
        logs::read(&state.db, job_id, after, limit).await?.into_iter().map(LogChunk::from).collect();
    let next_after = chunks.last().map_or(after, |chunk| chunk.seq);
    Ok(axum::Json(LogPage { chunks, next_after }))
}

/// The batch route, kept apart because it accepts a larger body.
pub fn batch_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(submit_batch))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSubmit {
    /// 1 to 1000 jobs, all accepted or none.
    #[schema(min_items = 1, max_items = 1000)]
    pub jobs: Vec<JobSpec>,
}

/// The ids of a batch's jobs, in the order they were submitted.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchSubmitted {
    pub ids: Vec<Uuid>,
    /// What might keep a job from running, as `jobs[INDEX]: …` (a deadline already past).
    /// Absent when there is nothing to say.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The jobs accepted but deferred by the tenant's quota. Absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<Deferral>,
}

/// A job accepted but deferred: its tenant is at a CPU, memory or concurrency quota, so it
/// waits (`pending.code` `tenant_at_quota`) until the tenant's own jobs free enough. The
/// response's `Retry-After` is guidance for clients that prefer to hold back.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deferral {
    pub id: Uuid,
    /// Always `tenant_at_quota`.
    pub reason: String,
    /// The limit: `cpu_millis`, `memory_mib` or `max_concurrent_jobs`.
    pub limit: String,
    /// What the tenant's jobs hold of it now, what this job needs, and the limit.
    pub in_use: i64,
    pub requested: i64,
    pub maximum: i64,
    pub retry_after_seconds: i64,
    pub message: String,
}

impl From<&enqueue::Deferred> for Deferral {
    fn from(deferred: &enqueue::Deferred) -> Self {
        let excess = &deferred.excess;
        Self {
            id: deferred.id,
            reason: "tenant_at_quota".to_owned(),
            limit: excess.resource.field().to_owned(),
            in_use: excess.in_use,
            requested: excess.requested,
            maximum: excess.limit,
            retry_after_seconds: hodei_core::quota::DEFERRED_RETRY_AFTER_SECONDS,
            message: excess.describe(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListJobsQuery {
    /// Only jobs in this state.
    #[param(value_type = Option<JobState>)]
    pub state: Option<String>,
    /// Only jobs in this queue.
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub queue: Option<String>,
    /// Only jobs created at or after this time (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Only jobs created before this time (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<Uuid>)]
    pub cursor: Option<String>,
    /// Page size, 1–500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

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
    /// Attempts started so far, ever: the fencing number of the current (or last) attempt.
    pub attempt: i32,
    /// Attempts started in the current run: since submission, or since the job was last
    /// redriven or retried by hand. This is what `max_attempts` bounds.
    pub run_attempt: i32,
    pub deadline: Option<DateTime<Utc>>,
    pub not_before: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
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
    /// The W3C trace context (`traceparent`) of the request that submitted the job: its
    /// trace id is the caller's when that request carried a valid `traceparent`. The job
    /// runs with it as `TRACEPARENT`. Null for jobs submitted before it was kept.
    #[schema(pattern = "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")]
    pub traceparent: Option<String>,
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

impl From<jobs::Job> for Job {
    fn from(job: jobs::Job) -> Self {
        let jobs::Job {
            id,
            tenant,
            queue,
            state,
            priority,
            command,
            resources,
            max_attempts,
            attempt,
            run_attempt,
            deadline,
            not_before,
            metadata,
            cancel_requested_at,
            queued_at,
            assigned_at,
            wait_ms,
            sla_breached,
            run_at,
            dead_letter_reason,
            last_error,
            submitted_queue,
            worker_id,
            started_at,
            exit_code,
            traceparent,
            created_at,
            updated_at,
            finished_at,
        } = job;
        let jobs::JobCommand { argv, env, working_dir, timeout_seconds } = command;
        let jobs::JobResources { cpu_millis, memory_mib, labels } = resources;
        Self {
            id,
            tenant,
            queue,
            state,
            priority,
            command: JobCommand { argv, env, working_dir, timeout_seconds },
            resources: JobResources { cpu_millis, memory_mib, labels },
            max_attempts,
            attempt,
            run_attempt,
            deadline,
            not_before,
            metadata,
            cancel_requested_at,
            queued_at,
            assigned_at,
            wait_ms,
            sla_breached,
            run_at,
            dead_letter_reason,
            last_error,
            submitted_queue,
            worker_id,
            started_at,
            exit_code,
            traceparent,
            created_at,
            updated_at,
            finished_at,
        }
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn idempotency_from(
    headers: &HeaderMap,
    body_digest: impl FnOnce() -> Vec<u8>,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let visible = |key: &&str| (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    let key = value.to_str().ok().filter(visible).ok_or_else(|| {
        ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters")
    })?;
    Ok(Some(Idempotency { key: key.to_owned(), fingerprint: body_digest() }))
}

fn digest<T: Serialize>(value: &T) -> Vec<u8> {
    Sha256::digest(serde_json::to_vec(value).unwrap_or_default()).to_vec()
}

fn submitted_response<T: Serialize>(replayed: bool, body: T) -> Response {
    if replayed {
        let mut response = (StatusCode::OK, axum::Json(body)).into_response();
        response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        response
    } else {
        (StatusCode::CREATED, axum::Json(body)).into_response()
    }
}

/// 409: the key is bound to another request (the state of the server, not this request's
/// form, is in the way).
fn key_reused() -> ApiError {
    ApiError::conflict(
        "idempotency_key_reused",
        "this Idempotency-Key was already used for a different request; use a new key",
    )
}

/// 404: a queue the request names does not exist (a job's, or a schedule's job's).
pub(crate) fn unknown_queues(queues: Vec<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_queue", format!("no queue named {}", queues.join(", ")))
}

/// 429 or 422: the tenant's quota refused the submission, naming the limit, what is in
/// use and the limit (also as `errors[0]`, field `quota.<limit>`).
pub(crate) fn over_quota(rejection: &hodei_core::quota::QuotaRejection) -> ApiError {
    use hodei_core::quota::QuotaRejection;
    let field = format!("quota.{}", rejection.resource().field());
    let (status, code, usage) = match rejection {
        QuotaRejection::TooLarge { excess, .. } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "exceeds_tenant_quota",
            format!("needs {} of a limit of {}", excess.requested, excess.limit),
        ),
        QuotaRejection::QueuedJobs { queued, requested, limit, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "tenant_quota_exceeded",
            format!("{queued} queued, {requested} more asked, limit {limit}"),
        ),
        QuotaRejection::Budget { spent, budget, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "tenant_budget_exhausted",
            format!("{spent:.2} spent this month, budget {budget:.2}"),
        ),
    };
    let mut errors = ValidationErrors::new();
    errors.add(field, usage);
    let error = ApiError::new(status, code, rejection.describe()).with_errors(errors);
    match rejection.retry_after_seconds() {
        Some(seconds) => error.with_header(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds)),
        None => error,
    }
}

pub(crate) fn queue_full(queue: &str, retry_after_seconds: i64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "queue_full",
        format!("queue {queue:?} is full; retry after {retry_after_seconds} s"),
    )
    .with_header(axum::http::header::RETRY_AFTER, HeaderValue::from(retry_after_seconds))
}

/// Counts a submission's jobs by the queue they named and what admission decided.
fn record_submission(state: &AppState, tenant: &str, jobs: &[ValidJob], outcome: &SubmitOutcome) {
    let named: Vec<&str> = jobs.iter().map(|job| job.queue.as_str()).collect();
    state.metrics.record_submission(tenant, &named, outcome);
}

/// Turns a submission's outcome into a response; `one` picks the single-job body.
/// A job as its submission is answered: the job, and what might keep it from running.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmittedJob {
    #[serde(flatten)]
    pub job: Job,
    /// Reasons the job may wait for a long time or forever (no worker and no pool offers
    /// the labels it needs), or may not run (its deadline has passed). Absent when there
    /// are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Set when the tenant's quota deferred the job: it is accepted and waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<Deferral>,
}

fn submission_response(outcome: SubmitOutcome, one: bool, warnings: Vec<String>) -> Result<Response, ApiError> {
    let respond = |replayed: bool, ids: Vec<Uuid>, jobs: Vec<jobs::Job>, deferred: Vec<Deferral>| {
        let retry_after = (!deferred.is_empty()).then_some(hodei_core::quota::DEFERRED_RETRY_AFTER_SECONDS);
        let mut response = if one {
            let job = jobs.into_iter().next().ok_or_else(|| ApiError::internal(anyhow::anyhow!("no job returned")))?;
            let deferred = deferred.into_iter().next();
            submitted_response(replayed, SubmittedJob { job: job.into(), warnings, deferred })
        } else {
            submitted_response(replayed, BatchSubmitted { ids, warnings, deferred })
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        Ok(response)
    };
    match outcome {
        SubmitOutcome::Created { ids, jobs, deferred, .. } => {
            respond(false, ids, jobs, deferred.iter().map(Deferral::from).collect())
        }
        SubmitOutcome::Replayed { ids, jobs } => respond(true, ids, jobs, Vec::new()),
        SubmitOutcome::OverQuota(rejection) => Err(over_quota(&rejection)),
        SubmitOutcome::KeyReused => Err(key_reused()),
        SubmitOutcome::UnknownQueues(queues) => Err(unknown_queues(queues)),
        SubmitOutcome::Rejected { queue, retry_after_seconds } => Err(queue_full(&queue, retry_after_seconds)),
    }
}

/// Submit a job. It is acknowledged only once it is committed.
#[utoipa::path(
    post, path = "/jobs", tag = "jobs", request_body = JobSpec, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Retrying with the same key returns the original job instead of a new one", pattern = "^[!-~]{1,255}$")),
    responses(
        (status = 201, description = "queued", body = SubmittedJob),
        (status = 200, description = "replay of an earlier submission with the same Idempotency-Key", body = SubmittedJob),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "the job names a queue that does not exist", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the Idempotency-Key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "the queue is full, or the tenant is at its queued-jobs limit or its monthly budget (see Retry-After)", body = Problem, content_type = "application/problem+json")
    )
)]
async fn submit_job(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceParent>,
    principal: Principal,
    headers: HeaderMap,
    Json(spec): Json<JobSpec>,
) -> Result<Response, ApiError> {
    let (tenant_id, tenant_name) = principal.require_tenant()?;
    let job = spec.validate(Utc::now())?;
    let idempotency = idempotency_from(&headers, || digest(&spec))?;
    let mut connection = state.db.acquire().await?;
    let mut warnings = job.warnings.clone();
    if !job.labels.is_empty() && !crate::store::workers::labels_offered(&mut *connection, &job.labels).await? {
        let wanted: Vec<String> = job.labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
        warnings.push(format!(
            "no worker and no pool offers the labels {}: the job waits until one does",
            wanted.join(", ")
        ));
    }
    let submitter = Submitter { tenant_id, tenant_name, traceparent: Some(trace) };
    let outcome = enqueue::submit(
        &mut connection,
        state.submit_context(),
        submitter,
        std::slice::from_ref(&job),
        idempotency.as_ref(),
        true,
    )
    .await?;
    record_submission(&state, tenant_name, std::slice::from_ref(&job), &outcome);
    submission_response(outcome, true, warnings)
}

/// Submit up to 1000 jobs in one transaction: all are queued, or none.
#[utoipa::path(
    post, path = "/jobs/batch", tag = "jobs", request_body = BatchSubmit, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Retrying with the same key returns the original ids", pattern = "^[!-~]{1,255}$")),
    responses(
        (status = 201, description = "queued", body = BatchSubmitted),
        (status = 200, description = "replay of an earlier batch with the same Idempotency-Key", body = BatchSubmitted),
        (status = 404, description = "a job names a queue that does not exist", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the Idempotency-Key was used for a different request", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "a queue is full, or the tenant is at its queued-jobs limit or its monthly budget (see Retry-After)", body = Problem, content_type = "application/problem+json")
    )
)]
async fn submit_batch(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceParent>,
    principal: Principal,
    headers: HeaderMap,
    Json(batch): Json<BatchSubmit>,
) -> Result<Response, ApiError> {
    let (tenant_id, tenant_name) = principal.require_tenant()?;
    if batch.jobs.is_empty() || batch.jobs.len() > MAX_BATCH_JOBS {
        return Err(ValidationErrors::single(
            "jobs",
            format!("must hold between 1 and {MAX_BATCH_JOBS} jobs, got {}", batch.jobs.len()),
        )
        .into());
    }
    let now = Utc::now();
    let mut errors = ValidationErrors::new();
    let mut valid: Vec<ValidJob> = Vec::with_capacity(batch.jobs.len());
    for (index, spec) in batch.jobs.iter().enumerate() {
        match spec.validate(now) {
            Ok(job) => valid.push(job),
            Err(job_errors) => errors.merge_prefixed(&format!("jobs[{index}]."), job_errors),
        }
    }
    errors.into_result(())?;
    let idempotency = idempotency_from(&headers, || digest(&batch))?;
    let mut connection = state.db.acquire().await?;
    let submitter = Submitter { tenant_id, tenant_name, traceparent: Some(trace) };
    let outcome =
        enqueue::submit(&mut connection, state.submit_context(), submitter, &valid, idempotency.as_ref(), false)
            .await?;
    record_submission(&state, tenant_name, &valid, &outcome);
    let warnings = valid
        .iter()
        .enumerate()
        .flat_map(|(index, job)| job.warnings.iter().map(move |warning| format!("jobs[{index}]: {warning}")))
        .collect();
    submission_response(outcome, false, warnings)
}

/// Checks a page's cursor and size: `(jobs older than this id, page size)`.
pub(crate) fn page(cursor: Option<&str>, limit: Option<i64>) -> Result<(Option<Uuid>, i64), ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit: must be between 1 and {MAX_PAGE_SIZE}, got {limit}"),
        ));
    }
    let before_id = cursor
        .map(|cursor| {
            Uuid::parse_str(cursor)
                .map_err(|_| ApiError::bad_request("invalid_query", "cursor: not a cursor returned by this endpoint"))
        })
        .transpose()?;
    Ok((before_id, limit))
}

pub(crate) fn parse_job_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| job_not_found(id))
}

pub(crate) fn job_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no job with id {id:?}"))
}

/// Get a job.
#[utoipa::path(
    get, path = "/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, body = JobDetail), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_job(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<JobDetail>, ApiError> {
    let job_id = parse_job_id(&id)?;
    let mut connection = state.db.acquire().await?;
    let job = jobs::get(&mut *connection, principal.tenant_scope(), job_id).await?.ok_or_else(|| job_not_found(&id))?;
    let pending =
        if job.state == JobState::Queued { assignment::pending(&mut connection, job_id).await? } else { None };
    let pending = pending.map(Pending::from);
    let attempts = crate::store::events::attempts(&mut *connection, job_id).await?;
    let attempts = attempts.into_iter().map(AttemptRecord::from).collect();
    let cost = crate::store::cost::job_cost(&mut *connection, job_id).await?.map(JobCost::from);
    Ok(axum::Json(JobDetail { job: job.into(), pending, attempts, cost }))
}

/// A job, and for a queued one why it is still waiting.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: Job,
    /// Present while the job is queued: the scheduler's latest reason.
    pub pending: Option<Pending>,
    /// Every attempt so far, oldest first: worker, start, end, outcome, error.
    pub attempts: Vec<AttemptRecord>,
    /// What its attempts cost, as of the last roll-up (null before its first).
    pub cost: Option<JobCost>,
}

/// A job's cost: its share of the instances its attempts ran on.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobCost {
    /// Null when an attempt ran on an unpriced instance (unknown, not zero).
    pub amount: Option<f64>,
    pub currency: String,
    pub unpriced: bool,
}

impl From<crate::store::cost::JobCost> for JobCost {
    fn from(cost: crate::store::cost::JobCost) -> Self {
        let crate::store::cost::JobCost { amount, currency, unpriced } = cost;
        Self { amount, currency, unpriced }
    }
}

/// Why a queued job waits, from the scheduler's last decision and the queue ahead of it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Pending {
    /// `no_workers`, `tenant_at_quota` (its tenant is at a CPU, memory or job quota this
    /// job would pass), `no_worker_with_labels`, `no_worker_large_enough`,
    /// `waiting_for_capacity` or `queued`.
    pub code: String,
    pub message: String,
    /// Jobs ahead of it in its queue.
    pub position: i64,
}

impl From<assignment::Pending> for Pending {
    fn from(pending: assignment::Pending) -> Self {
        let assignment::Pending { code, message, position } = pending;
        Self { code, message, position }
    }
}

/// One attempt of a job as its events tell it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
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

impl From<crate::store::events::AttemptRecord> for AttemptRecord {
    fn from(record: crate::store::events::AttemptRecord) -> Self {
        let crate::store::events::AttemptRecord {
            attempt,
            worker_id,
            assigned_at,
            started_at,
            ended_at,
            outcome,
            error,
        } = record;
        Self { attempt, worker_id, assigned_at, started_at, ended_at, outcome, error }
    }
}

/// List jobs, newest first, with filters and cursor pagination.
#[utoipa::path(
    get, path = "/jobs", tag = "jobs", security(("bearer" = [])), params(ListJobsQuery),
    responses((status = 200, body = JobList), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
async fn list_jobs(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ListJobsQuery>,
) -> Result<axum::Json<JobList>, ApiError> {
    let state_filter = match &query.state {
        None => None,
        Some(text) => Some(JobState::parse(text).ok_or_else(|| {
            let known: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(
                "invalid_query",
                format!("state: unknown state {text:?}; expected one of {}", known.join(", ")),
            )
        })?),
    };
    if let Some(queue) = &query.queue {
        check_resource_name(queue)
            .map_err(|message| ApiError::bad_request("invalid_query", format!("queue: {message}")))?;
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit: must be between 1 and {MAX_PAGE_SIZE}, got {limit}"),
        ));
    }
    let before_id =
        match &query.cursor {
            None => None,
            Some(cursor) => Some(Uuid::parse_str(cursor).map_err(|_| {
                ApiError::bad_request("invalid_query", "cursor: not a cursor returned by this endpoint")
            })?),
        };
    let filter = JobFilter {
        tenant_scope: principal.tenant_scope(),
        state: state_filter,
        queue: query.queue,
        created_after: query.created_after,
        created_before: query.created_before,
        dead_letter_reason: None,
        before_id,
        limit,
    };
    Ok(axum::Json(list_page(&state, &filter).await?))
}

/// One page of jobs matching `filter`, with the cursor of the next page.
pub(crate) async fn list_page(state: &AppState, filter: &JobFilter) -> Result<JobList, ApiError> {
    let (jobs, has_more) = jobs::list(&state.db, filter).await?;
    let next_cursor = if has_more { jobs.last().map(|job| job.id.to_string()) } else { None };
    Ok(JobList { jobs: jobs.into_iter().map(Job::from).collect(), next_cursor })
}

/// Cancel a job. A queued job leaves its queue at once (state `cancelled`); for a job on a
/// worker the request is recorded (`cancel_requested_at`) and delivered to the worker.
#[utoipa::path(
    post, path = "/jobs/{id}/cancel", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "cancelled, or cancellation requested", body = Job),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the job already finished", body = Problem, content_type = "application/problem+json")
    )
)]
async fn cancel_job(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Job>, ApiError> {
    let job_id = parse_job_id(&id)?;
    let mut connection = state.db.acquire().await?;
    match jobs::cancel(&mut connection, principal.tenant_scope(), job_id).await? {
        CancelResult::Done(job) => {
            record_cancel(&state, &job);
            Ok(axum::Json(job.into()))
        }
        CancelResult::NotFound => Err(job_not_found(&id)),
        CancelResult::AlreadyFinished(job) => Err(ApiError::conflict(
            "job_finished",
            format!("job {id} already finished in state {}; there is nothing to cancel", job.state),
        )),
    }
}

/// Run a finished job (succeeded, cancelled or dead-lettered) again, with a fresh set of
/// attempts: it goes back to its queue; its history (attempts, events, output) is kept.
///
/// A full queue refuses it (429, whatever the queue's overflow policy): the job stays as
/// it was.
#[utoipa::path(
    post, path = "/jobs/{id}/retry", tag = "jobs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "queued again", body = Job),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the job has not finished", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "the job's queue is full (see Retry-After); the job is left as it was", body = Problem, content_type = "application/problem+json")
    )
)]
async fn retry_job(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Job>, ApiError> {
    let job_id = parse_job_id(&id)?;
    let mut connection = state.db.acquire().await?;
    let job = jobs::get(&mut *connection, principal.tenant_scope(), job_id).await?.ok_or_else(|| job_not_found(&id))?;
    let retried =
        crate::store::dispatch::retry_finished(&mut connection, &state.policies, principal.tenant_scope(), &[job_id])
            .await?;
    state.metrics.record_dead_letters("queue_deleted", retried.queue_deleted);
    if let Some(refused) = retried.refused.first() {
        return Err(queue_full(&refused.queue, refused.retry_after_seconds));
    }
    if retried.ids.is_empty() {
        return Err(ApiError::conflict(
            "job_not_finished",
            format!("job {id} is {}; only a succeeded, cancelled or dead-lettered job can be run again", job.state),
        ));
    }
    let job = jobs::get(&mut *connection, principal.tenant_scope(), job_id).await?.ok_or_else(|| job_not_found(&id))?;
    Ok(axum::Json(job.into()))
}

/// The states a job can be cancelled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnfinishedState {
    Scheduled,
    Queued,
    Assigned,
    Running,
}

/// The states a job can be run again from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishedState {
    Succeeded,
    Cancelled,
    DeadLettered,
}

/// Which jobs a bulk cancel acts on: the caller's own (every tenant's for an admin), by
/// state (default: every state a job can be cancelled in) and queue, at most `limit`
/// (default and maximum 1000), oldest first.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelSelection {
    pub state: Option<UnfinishedState>,
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub queue: Option<String>,
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// Which jobs a bulk retry acts on, as for a bulk cancel, among finished jobs.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySelection {
    pub state: Option<FinishedState>,
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub queue: Option<String>,
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// The jobs a bulk operation acted on.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkResult {
    pub ids: Vec<Uuid>,
}

const MAX_BULK: i64 = 1000;

/// The ids a bulk operation selects: `wanted` states, in `queue`, at most `limit`.
async fn selected(
    state: &AppState,
    principal: &Principal,
    wanted: &[JobState],
    queue: Option<&str>,
    limit: Option<i64>,
) -> Result<Vec<Uuid>, ApiError> {
    let limit = limit.unwrap_or(MAX_BULK);
    if !(1..=MAX_BULK).contains(&limit) {
        return Err(ValidationErrors::single("limit", format!("must be between 1 and {MAX_BULK}, got {limit}")).into());
    }
    if let Some(queue) = queue {
        check_resource_name(queue).map_err(|message| ValidationErrors::single("queue", message))?;
    }
    Ok(jobs::select_ids(&state.db, principal.tenant_scope(), wanted, queue, limit).await?)
}

/// A job cancelled at once (rather than marked for its worker to stop) was waiting: it
/// is abandoned.
fn record_cancel(state: &AppState, job: &jobs::Job) {
    if job.state == JobState::Cancelled {
        state.metrics.record_abandoned(&job.queue);
    }
}

/// Cancel many jobs at once, by state (`scheduled`, `queued`, `assigned` or `running`;
/// default all of them) and queue.
#[utoipa::path(
    post, path = "/jobs/cancel", tag = "jobs", request_body = CancelSelection, security(("bearer" = [])),
    responses((status = 200, description = "the jobs cancelled or asked to stop", body = BulkResult))
)]
async fn cancel_jobs(
    State(state): State<AppState>,
    principal: Principal,
    Json(selection): Json<CancelSelection>,
) -> Result<axum::Json<BulkResult>, ApiError> {
    let wanted: Vec<JobState> = match selection.state {
        None => vec![JobState::Scheduled, JobState::Queued, JobState::Assigned, JobState::Running],
        Some(UnfinishedState::Scheduled) => vec![JobState::Scheduled],
        Some(UnfinishedState::Queued) => vec![JobState::Queued],
        Some(UnfinishedState::Assigned) => vec![JobState::Assigned],
        Some(UnfinishedState::Running) => vec![JobState::Running],
    };
    let ids = selected(&state, &principal, &wanted, selection.queue.as_deref(), selection.limit).await?;
    let mut connection = state.db.acquire().await?;
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        if let CancelResult::Done(job) = jobs::cancel(&mut connection, principal.tenant_scope(), id).await? {
            record_cancel(&state, &job);
            done.push(id);
        }
    }
    Ok(axum::Json(BulkResult { ids: done }))
}

/// Run many finished jobs again, by state (`succeeded`, `cancelled` or `dead_lettered`;
/// default all of them) and queue.
///
/// Jobs whose queue is full stay as they were: the answer lists the jobs queued again.
#[utoipa::path(
    post, path = "/jobs/retry", tag = "jobs", request_body = RetrySelection, security(("bearer" = [])),
    responses((status = 200, description = "the jobs queued again", body = BulkResult))
)]
async fn retry_jobs(
    State(state): State<AppState>,
    principal: Principal,
    Json(selection): Json<RetrySelection>,
) -> Result<axum::Json<BulkResult>, ApiError> {
    let wanted: Vec<JobState> = match selection.state {
        None => crate::store::dispatch::RETRYABLE_STATES.to_vec(),
        Some(FinishedState::Succeeded) => vec![JobState::Succeeded],
        Some(FinishedState::Cancelled) => vec![JobState::Cancelled],
        Some(FinishedState::DeadLettered) => vec![JobState::DeadLettered],
    };
    let ids = selected(&state, &principal, &wanted, selection.queue.as_deref(), selection.limit).await?;
    let mut connection = state.db.acquire().await?;
    let retried =
        crate::store::dispatch::retry_finished(&mut connection, &state.policies, principal.tenant_scope(), &ids)
            .await?;
    state.metrics.record_dead_letters("queue_deleted", retried.queue_deleted);
    Ok(axum::Json(BulkResult { ids: retried.ids }))
}
