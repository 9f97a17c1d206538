//! `/api/v1/dead-letters`: jobs that gave up (attempts exhausted, fatal error, evicted,
//! deadline expired), for inspection and redrive. Tenant-scoped like every job read.

use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, Json, Problem, Query};
use crate::http::jobs::{job_not_found, list_page, page, parse_job_id, queue_full, Job, JobList};
use crate::http::AppState;
use crate::store::dispatch::{self, RedriveFilter};
use crate::store::jobs::{self, JobFilter};
use hodei_core::backoff::DeadLetterReason;
use hodei_core::names::check_resource_name;
use hodei_core::JobState;

pub const MAX_REDRIVE: i64 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_dead_letters))
        .routes(routes!(get_dead_letter))
        .routes(routes!(redrive_one))
        .routes(routes!(redrive_many))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub queue: Option<String>,
    /// Why the jobs gave up.
    pub reason: Option<DeadLetterReason>,
    #[param(value_type = Option<Uuid>)]
    pub cursor: Option<String>,
    /// Page size, 1–500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub queue: Option<String>,
    /// Why the jobs gave up.
    pub reason: Option<DeadLetterReason>,
    /// At most this many (default and maximum 1000), oldest first.
    #[schema(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Redriven {
    /// The jobs put back in their queues.
    pub ids: Vec<Uuid>,
}

async fn find(state: &AppState, principal: &Principal, id: &str) -> Result<jobs::Job, ApiError> {
    let job_id = parse_job_id(id)?;
    jobs::get(&state.db, principal.tenant_scope(), job_id)
        .await?
        .filter(|job| job.state == JobState::DeadLettered)
        .ok_or_else(|| ApiError::not_found(format!("no dead-lettered job with id {id:?}")))
}

/// List dead-lettered jobs, newest first.
#[utoipa::path(
    get, path = "/dead-letters", tag = "dead-letters", security(("bearer" = [])), params(DeadLetterQuery),
    responses((status = 200, body = JobList), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
async fn list_dead_letters(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<DeadLetterQuery>,
) -> Result<axum::Json<JobList>, ApiError> {
    let (before_id, limit) = page(query.cursor.as_deref(), query.limit)?;
    if let Some(queue) = &query.queue {
        check_resource_name(queue)
            .map_err(|message| ApiError::bad_request("invalid_query", format!("queue: {message}")))?;
    }
    let filter = JobFilter {
        tenant_scope: principal.tenant_scope(),
        state: Some(JobState::DeadLettered),
        queue: query.queue,
        dead_letter_reason: query.reason.map(|reason| reason.as_str().to_owned()),
        before_id,
        limit,
        ..JobFilter::default()
    };
    Ok(axum::Json(list_page(&state, &filter).await?))
}

/// Inspect one dead-lettered job (its reason and last error are on the job).
#[utoipa::path(
    get, path = "/dead-letters/{id}", tag = "dead-letters", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_dead_letter(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Job>, ApiError> {
    Ok(axum::Json(Job::from(find(&state, &principal, &id).await?)))
}

/// Put one dead-lettered job back in its queue with a fresh set of attempts.
///
/// A full queue refuses it (429, whatever the queue's overflow policy): the job stays
/// dead-lettered.
#[utoipa::path(
    post, path = "/dead-letters/{id}/redrive", tag = "dead-letters", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Job id")),
    responses(
        (status = 200, description = "queued again", body = Job),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "the job's queue is full (see Retry-After); the job stays dead-lettered", body = Problem, content_type = "application/problem+json")
    )
)]
async fn redrive_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Job>, ApiError> {
    let job = find(&state, &principal, &id).await?;
    let mut connection = state.db.acquire().await?;
    let filter =
        RedriveFilter { tenant_scope: principal.tenant_scope(), job_id: Some(job.id), limit: 1, ..Default::default() };
    let redriven = dispatch::redrive(&mut connection, &state.policies, &filter).await?;
    state.metrics.record_dead_letters("queue_deleted", redriven.queue_deleted);
    if let Some(refused) = redriven.refused.first() {
        return Err(queue_full(&refused.queue, refused.retry_after_seconds));
    }
    jobs::get(&mut *connection, principal.tenant_scope(), job.id)
        .await?
        .map(|row| axum::Json(Job::from(row)))
        .ok_or_else(|| job_not_found(&id))
}

/// Put a filtered set of dead-lettered jobs back in their queues.
///
/// Jobs whose queue is full stay dead-lettered: the answer lists the jobs queued again.
#[utoipa::path(
    post, path = "/dead-letters/redrive", tag = "dead-letters", request_body = RedriveRequest, security(("bearer" = [])),
    responses((status = 200, body = Redriven), (status = 422, body = Problem, content_type = "application/problem+json"))
)]
async fn redrive_many(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<RedriveRequest>,
) -> Result<axum::Json<Redriven>, ApiError> {
    if let Some(queue) = &request.queue {
        check_resource_name(queue).map_err(|message| hodei_core::ValidationErrors::single("queue", message))?;
    }
    let limit = request.limit.unwrap_or(MAX_REDRIVE);
    if !(1..=MAX_REDRIVE).contains(&limit) {
        return Err(
            hodei_core::ValidationErrors::single("limit", format!("must be between 1 and {MAX_REDRIVE}")).into()
        );
    }
    let filter = RedriveFilter {
        tenant_scope: principal.tenant_scope(),
        job_id: None,
        queue: request.queue,
        reason: request.reason.map(|reason| reason.as_str().to_owned()),
        limit,
    };
    let mut connection = state.db.acquire().await?;
    let redriven = dispatch::redrive(&mut connection, &state.policies, &filter).await?;
    state.metrics.record_dead_letters("queue_deleted", redriven.queue_deleted);
    Ok(axum::Json(Redriven { ids: redriven.ids }))
}
