//! `/api/v1/workers`: the worker protocol (register, heartbeat, deregister) and the worker
//! registry (admin). Agents register with the registration token and then use the
//! worker-scoped token they receive; neither token is an API key, and an API key is not a
//! worker token.
//!
//! The protocol's requests and replies, and its limits, are `hodei_protocol`'s, shared
//! with the agent (a change one side misses does not compile); a log shipment must also
//! fit the body limit (`DEFAULT_BODY_LIMIT`), base64 and JSON included.

use std::collections::BTreeMap;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use hodei_core::names::check_resource_name;
use hodei_core::validation::check_range;
use hodei_core::ValidationErrors;
use hodei_protocol::{
    Assignment, Assignments, FinishReply, FinishReport, Heartbeat, HeartbeatReply, LogShipment, Outcome, PollQuery,
    RegisterWorker, Registered, ReportOutcome, Reports, ReportsReply, StartReport, DEFAULT_POLL_SECONDS,
    MAX_LOG_CHUNKS, MAX_LOG_CHUNK_BYTES, MAX_POLL_SECONDS, MAX_REPORTS,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{bearer_token, hash_key, Admin};
use crate::error::{ApiError, Json, Problem, Query};
use crate::http::AppState;
use crate::store::assignment::{self, AttemptResult, Recorded};
use crate::store::dispatch::FailureResult;
use crate::store::workers::{self, NewWorker, WorkerState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_worker))
        .routes(routes!(list_workers))
        .routes(routes!(get_worker))
        .routes(routes!(heartbeat))
        .routes(routes!(deregister))
        .routes(routes!(poll_assignments))
        .routes(routes!(start_job))
        .routes(routes!(finish_job))
        .routes(routes!(post_reports))
        .routes(routes!(ship_logs))
}

/// Append job output (stdout/stderr chunks) for an attempt this worker holds.
#[utoipa::path(
    post, path = "/workers/{id}/jobs/{job_id}/logs", tag = "workers", request_body = LogShipment, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Worker id"), ("job_id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 204, description = "stored"),
        (status = 409, description = "stale attempt", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn ship_logs(
    State(state): State<AppState>,
    identity: WorkerIdentity,
    Path((id, job_id)): Path<(String, String)>,
    Json(shipment): Json<LogShipment>,
) -> Result<StatusCode, ApiError> {
    let id = identity.check(&id)?;
    let job_id = parse_job(&job_id)?;
    let mut errors = ValidationErrors::new();
    if shipment.chunks.len() > MAX_LOG_CHUNKS {
        errors.add("chunks", format!("at most {MAX_LOG_CHUNKS} chunks per shipment"));
    }
    let mut chunks = Vec::with_capacity(shipment.chunks.len());
    for (index, chunk) in shipment.chunks.into_iter().enumerate() {
        if chunk.stream != "stdout" && chunk.stream != "stderr" {
            errors.add(format!("chunks[{index}].stream"), "must be stdout or stderr");
        }
        match crate::store::logs::chunk_bytes(&chunk) {
            Ok(bytes) if bytes.len() > MAX_LOG_CHUNK_BYTES => {
                errors.add(format!("chunks[{index}]"), format!("at most {MAX_LOG_CHUNK_BYTES} bytes of output"))
            }
            Ok(bytes) => chunks.push(crate::store::logs::OutputChunk { stream: chunk.stream, bytes }),
            Err(message) => errors.add(format!("chunks[{index}]"), message),
        }
    }
    errors.into_result(())?;
    if crate::store::logs::append(&state.db, id, job_id, shipment.attempt, &chunks).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(stale_attempt())
    }
}

fn record_starts(state: &AppState, started: &[assignment::Started]) {
    let since: Vec<std::time::Duration> = started
        .iter()
        .map(|started| std::time::Duration::from_secs_f64(started.since_submission_seconds.max(0.0)))
        .collect();
    state.metrics.record_starts(&since);
}

fn outcome(recorded: &Recorded) -> Outcome {
    match recorded {
        Recorded::Stale | Recorded::Failed(FailureResult::Stale) => Outcome::Stale,
        Recorded::Succeeded => Outcome::Succeeded,
        Recorded::Failed(FailureResult::RetryScheduled { .. }) => Outcome::RetryScheduled,
        Recorded::Failed(FailureResult::DeadLettered { .. }) => Outcome::DeadLettered,
        Recorded::Failed(FailureResult::Cancelled) => Outcome::Cancelled,
    }
}

/// The assignment as the worker receives it, from the row the store delivered.
fn to_assignment(row: assignment::Assignment) -> Assignment {
    Assignment {
        job_id: row.job_id,
        attempt: row.attempt,
        argv: row.argv.0,
        env: row.env.0.into_iter().collect(),
        working_dir: row.working_dir,
        timeout_seconds: row.timeout_seconds,
        traceparent: row.traceparent,
    }
}

fn parse_job(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found(format!("no job {id:?}")))
}

fn stale_attempt() -> ApiError {
    ApiError::conflict("stale_attempt", "this attempt is no longer the job's current one on this worker")
}

/// Wait for work: returns the worker's new assignments at once when there are any, else
/// as soon as some are made (or when the wait ends, with none).
#[utoipa::path(
    get, path = "/workers/{id}/assignments", tag = "workers", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Worker id"), PollQuery),
    responses((status = 200, body = Assignments), (status = 401, body = Problem, content_type = "application/problem+json"))
)]
async fn poll_assignments(
    State(state): State<AppState>,
    identity: WorkerIdentity,
    Path(id): Path<String>,
    Query(query): Query<PollQuery>,
) -> Result<axum::Json<Assignments>, ApiError> {
    let id = identity.check(&id)?;
    let wait_seconds = query.wait_seconds.unwrap_or(DEFAULT_POLL_SECONDS);
    if wait_seconds > MAX_POLL_SECONDS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("wait_seconds: must be at most {MAX_POLL_SECONDS}, got {wait_seconds}"),
        ));
    }
    let wait = std::time::Duration::from_secs(wait_seconds);
    let assignments = crate::loops::long_poll(&state.db, &state.assigned, id, wait, &state.shutdown).await?;
    Ok(axum::Json(Assignments { assignments: assignments.into_iter().map(to_assignment).collect() }))
}

/// The worker started an assigned attempt.
#[utoipa::path(
    post, path = "/workers/{id}/jobs/{job_id}/start", tag = "workers", request_body = StartReport, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Worker id"), ("job_id" = Uuid, Path, description = "Job id")),
    responses((status = 204, description = "recorded"), (status = 409, description = "stale attempt", body = Problem, content_type = "application/problem+json"))
)]
async fn start_job(
    State(state): State<AppState>,
    identity: WorkerIdentity,
    Path((id, job_id)): Path<(String, String)>,
    Json(report): Json<StartReport>,
) -> Result<StatusCode, ApiError> {
    let id = identity.check(&id)?;
    let job_id = parse_job(&job_id)?;
    let mut connection = state.db.acquire().await?;
    let started = assignment::start_many(
        &mut *connection,
        id,
        &[assignment::StartReport { job_id, attempt: report.attempt, succeeds_here: false }],
    )
    .await?;
    record_starts(&state, &started);
    if started.iter().any(|started| started.job_id == job_id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(stale_attempt())
    }
}

/// The attempt ended. A result for an attempt that is no longer current is refused (409).
#[utoipa::path(
    post, path = "/workers/{id}/jobs/{job_id}/finish", tag = "workers", request_body = FinishReport, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Worker id"), ("job_id" = Uuid, Path, description = "Job id")),
    responses((status = 200, body = FinishReply), (status = 409, description = "stale attempt", body = Problem, content_type = "application/problem+json"))
)]
async fn finish_job(
    State(state): State<AppState>,
    identity: WorkerIdentity,
    Path((id, job_id)): Path<(String, String)>,
    Json(report): Json<FinishReport>,
) -> Result<axum::Json<FinishReply>, ApiError> {
    let id = identity.check(&id)?;
    let job_id = parse_job(&job_id)?;
    let result = AttemptResult { job_id, attempt: report.attempt, exit_code: report.exit_code, error: report.error };
    let random = crate::store::dispatch::random_fraction()?;
    let mut connection = state.db.acquire().await?;
    let recorded = assignment::finish(&mut connection, id, &result, random).await?;
    state.metrics.record_results(std::slice::from_ref(&recorded));
    match outcome(&recorded) {
        Outcome::Stale => Err(stale_attempt()),
        outcome => Ok(axum::Json(FinishReply { outcome })),
    }
}

/// Starts and results of several attempts in one request: how a busy worker reports.
/// Each is fenced like its single counterpart; a stale one is answered `stale`.
#[utoipa::path(
    post, path = "/workers/{id}/reports", tag = "workers", request_body = Reports, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Worker id")),
    responses((status = 200, body = ReportsReply), (status = 422, body = Problem, content_type = "application/problem+json"))
)]
async fn post_reports(
    State(state): State<AppState>,
    identity: WorkerIdentity,
    Path(id): Path<String>,
    Json(reports): Json<Reports>,
) -> Result<axum::Json<ReportsReply>, ApiError> {
    let id = identity.check(&id)?;
    if reports.started.len() > MAX_REPORTS || reports.finished.len() > MAX_REPORTS {
        return Err(ValidationErrors::single(
            "started",
            format!("at most {MAX_REPORTS} starts and {MAX_REPORTS} results"),
        )
        .into());
    }
    let starts: Vec<(Uuid, i32)> = reports.started.iter().map(|s| (s.job_id, s.attempt)).collect();
    let results: Vec<AttemptResult> = reports
        .finished
        .into_iter()
        .map(|f| AttemptResult { job_id: f.job_id, attempt: f.attempt, exit_code: f.exit_code, error: f.error })
        .collect();
    let random = crate::store::dispatch::random_fraction()?;
    let mut connection = state.db.acquire().await?;
    let (recorded, finished) = assignment::record_report(&mut connection, id, &starts, &results, random).await?;
    record_starts(&state, &recorded);
    state.metrics.record_results(&finished);
    let started = starts
        .iter()
        .map(|(job_id, _)| ReportOutcome {
            job_id: *job_id,
            outcome: if recorded.iter().any(|started| started.job_id == *job_id) {
                Outcome::Recorded
            } else {
                Outcome::Stale
            },
        })
        .collect();
    let finished = results
        .iter()
        .zip(&finished)
        .map(|(result, recorded)| ReportOutcome { job_id: result.job_id, outcome: outcome(recorded) })
        .collect();
    Ok(axum::Json(ReportsReply { started, finished }))
}

/// What the control plane tells workers about the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSettings {
    /// SHA-256 of the registration token; registration is closed without one.
    pub registration_token_hash: Option<[u8; 32]>,
    pub heartbeat_seconds: u32,
    pub lease_seconds: u32,
}

impl WorkerSettings {
    pub fn new(registration_token: Option<&str>, heartbeat_seconds: u32, lease_seconds: u32) -> Self {
        let registration_token_hash = registration_token.map(|token| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&hash_key(token));
            hash
        });
        Self { registration_token_hash, heartbeat_seconds, lease_seconds }
    }

    pub fn heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.heartbeat_seconds.into())
    }

    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_seconds.into())
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self { registration_token_hash: None, heartbeat_seconds: 5, lease_seconds: 30 }
    }
}

/// The worker behind a request's worker token.
#[derive(Debug, Clone, Copy)]
pub struct WorkerIdentity(pub Uuid);

impl FromRequestParts<AppState> for WorkerIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        state
            .worker_tokens
            .resolve(&state.db, &hash_key(token))
            .await?
            .map(WorkerIdentity)
            .ok_or_else(|| ApiError::unauthorized("unknown worker token, or the worker has deregistered"))
    }
}

impl WorkerIdentity {
    /// The path names this worker (a token acts for its own worker only).
    fn check(self, path_id: &str) -> Result<Uuid, ApiError> {
        match Uuid::parse_str(path_id) {
            Ok(id) if id == self.0 => Ok(id),
            _ => Err(ApiError::not_found(format!("no worker {path_id:?} for this token"))),
        }
    }
}

/// A worker as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
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

impl From<workers::Worker> for Worker {
    fn from(worker: workers::Worker) -> Self {
        let workers::Worker {
            id,
            name,
            pool,
            state,
            cpu_millis,
            memory_mib,
            slots,
            labels,
            instance_id,
            used_cpu_millis,
            used_memory_mib,
            used_slots,
            jobs_run,
            health_failures,
            registered_at,
            last_heartbeat_at,
            gone_at,
        } = worker;
        Self {
            id,
            name,
            pool,
            state,
            cpu_millis,
            memory_mib,
            slots,
            labels,
            instance_id,
            used_cpu_millis,
            used_memory_mib,
            used_slots,
            jobs_run,
            health_failures,
            registered_at,
            last_heartbeat_at,
            gone_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<Worker>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkerQuery {
    pub pool: Option<String>,
    /// Include workers that have left (default false).
    pub include_gone: Option<bool>,
}

/// Register a worker agent. Authenticated with the registration token.
#[utoipa::path(
    post, path = "/workers/register", tag = "workers", request_body = RegisterWorker, security(("bearer" = [])),
    responses(
        (status = 201, body = Registered),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn register_worker(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Json(request): Json<RegisterWorker>,
) -> Result<(StatusCode, axum::Json<Registered>), ApiError> {
    let presented = bearer_token(&headers).ok().map(hash_key);
    match (state.workers.registration_token_hash, presented) {
        (None, _) => {
            return Err(ApiError::forbidden("worker registration is closed: no registration token is configured"))
        }
        (Some(expected), Some(presented)) if presented.as_slice() == expected.as_slice() => {}
        _ => return Err(ApiError::unauthorized("a valid worker registration token is required")),
    }
    let mut errors = ValidationErrors::new();
    if request.name.is_empty() || request.name.len() > 200 {
        errors.add("name", "must be 1-200 characters");
    }
    let pool = request.pool.clone().unwrap_or_else(|| "default".to_owned());
    if let Err(message) = check_resource_name(&pool) {
        errors.add("pool", message);
    }
    check_range(&mut errors, "cpu_millis", request.cpu_millis, 1, hodei_core::job::MAX_CPU_MILLIS);
    check_range(&mut errors, "memory_mib", request.memory_mib, 1, hodei_core::job::MAX_MEMORY_MIB);
    let slots = request.slots.unwrap_or(1);
    check_range(&mut errors, "slots", slots, 1, 1024);
    errors.into_result(())?;

    let key = crate::auth::generate_key()?;
    let token = format!("hodeiw_{}", key.plaintext.trim_start_matches(crate::auth::KEY_PREFIX));
    let worker = workers::register(
        &state.db,
        &NewWorker {
            name: &request.name,
            pool: &pool,
            cpu_millis: request.cpu_millis as i32,
            memory_mib: request.memory_mib as i32,
            slots: slots as i32,
            labels: &request.labels,
            instance_id: request.instance_id.as_deref(),
            token_hash: &hash_key(&token),
        },
    )
    .await?;
    tracing::info!(worker = %worker.id, name = %worker.name, pool = %worker.pool, "worker registered");
    Ok((
        StatusCode::CREATED,
        axum::Json(Registered {
            worker_id: worker.id,
            token,
            heartbeat_seconds: state.workers.heartbeat_seconds,
            lease_seconds: Some(state.workers.lease_seconds),
        }),
    ))
}

/// A worker's heartbeat. Authenticated with the worker's token.
#[utoipa::path(
    post, path = "/workers/{id}/heartbeat", tag = "workers", request_body = Heartbeat, security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Worker id")),
    responses((status = 200, body = HeartbeatReply), (status = 401, body = Problem, content_type = "application/problem+json"))
)]
async fn heartbeat(
    State(state): State<AppState>,
    identity: WorkerIdentity,
    Path(id): Path<String>,
    Json(request): Json<Heartbeat>,
) -> Result<axum::Json<HeartbeatReply>, ApiError> {
    let id = identity.check(&id)?;
    if !matches!(request.state, WorkerState::Idle | WorkerState::Busy | WorkerState::Draining) {
        return Err(ValidationErrors::single("state", "must be idle, busy or draining").into());
    }
    let mut connection = state.db.acquire().await?;
    let draining = request.state == WorkerState::Draining;
    let Some(outcome) =
        assignment::heartbeat(&mut *connection, id, draining, request.healthy, request.interruption_notice).await?
    else {
        return Err(ApiError::unauthorized("the worker has deregistered"));
    };
    state.metrics.record_heartbeat();
    if outcome.newly_interrupted {
        tracing::warn!(worker = %id, "the worker's instance is being reclaimed (interruption notice): it drains and is replaced");
    }
    Ok(axum::Json(HeartbeatReply {
        heartbeat_seconds: state.workers.heartbeat_seconds,
        lease_seconds: Some(state.workers.lease_seconds),
        cancel: outcome.cancel,
        drain: outcome.drain,
    }))
}

/// A worker leaves (after draining). Its token stops working.
#[utoipa::path(
    post, path = "/workers/{id}/deregister", tag = "workers", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Worker id")),
    responses((status = 204, description = "gone"), (status = 401, body = Problem, content_type = "application/problem+json"))
)]
async fn deregister(
    State(state): State<AppState>,
    identity: WorkerIdentity,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = identity.check(&id)?;
    if let Some(left) = workers::deregister(&state.db, id).await? {
        state.metrics.record_worker_left(&left.pool, left.jobs_run);
    }
    state.worker_tokens.forget(id);
    tracing::info!(worker = %id, "worker deregistered");
    Ok(StatusCode::NO_CONTENT)
}

/// List workers (admin).
#[utoipa::path(
    get, path = "/workers", tag = "workers", security(("bearer" = [])), params(WorkerQuery),
    responses((status = 200, body = WorkerList), (status = 403, body = Problem, content_type = "application/problem+json"))
)]
async fn list_workers(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<WorkerQuery>,
) -> Result<axum::Json<WorkerList>, ApiError> {
    let workers = workers::list(&state.db, query.pool.as_deref(), query.include_gone.unwrap_or(false)).await?;
    Ok(axum::Json(WorkerList { workers: workers.into_iter().map(Worker::from).collect() }))
}

/// Get a worker (admin).
#[utoipa::path(
    get, path = "/workers/{id}", tag = "workers", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Worker id")),
    responses((status = 200, body = Worker), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_worker(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<axum::Json<Worker>, ApiError> {
    let not_found = || ApiError::not_found(format!("no worker {id:?}"));
    let worker_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    workers::get(&state.db, worker_id).await?.map(|row| axum::Json(Worker::from(row))).ok_or_else(not_found)
}
