//! `/api/v1/schedules`: cron schedules that submit a job at each fire time. A tenant key
//! creates them and sees only its own (another tenant's schedule is "not found"); an admin
//! key lists, reads, pauses, resumes and deletes any, but cannot create one, as it cannot
//! submit a job. Firing is the `Schedules` loop's (`store::schedules::fire_next`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use hodei_core::schedule::ScheduleSpec;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Principal, TenantCaller};
use crate::error::{ApiError, Json, Problem};
use crate::http::AppState;
use crate::store;
use crate::store::schedules::{self, FireOutcome};

/// How many upcoming fire times `GET /schedules/{id}` shows.
pub const NEXT_FIRES: usize = 5;
/// How many past fires `GET /schedules/{id}` shows.
pub const RECENT_FIRES: i64 = 20;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_schedule, list_schedules))
        .routes(routes!(get_schedule, delete_schedule))
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
}

/// A schedule as the API shows it: its spec, its state and its next fire time.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Schedule {
    pub id: Uuid,
    pub tenant: String,
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// A paused schedule fires nothing; resuming drops the fire times it was paused through.
    pub paused: bool,
    /// The next fire time (absent when paused, or when the expression never fires again).
    pub next_fire_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<schedules::Schedule> for Schedule {
    fn from(schedule: schedules::Schedule) -> Self {
        let schedules::Schedule { id, tenant, spec, paused, created_at, updated_at, next_fire_at, .. } = schedule;
        Self {
            id,
            tenant,
            spec: spec.0,
            paused,
            next_fire_at: if paused { None } else { next_fire_at },
            created_at,
            updated_at,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The job was submitted (`job_id`).
    Submitted,
    /// The previous fire's job was still active (`overlap: skip`), or a later fire of the
    /// same catch-up was submitted instead.
    SkippedOverlap,
    /// Admission refused the job (a full queue, the tenant's quota; see `detail`).
    Rejected,
}

impl From<FireOutcome> for Outcome {
    fn from(outcome: FireOutcome) -> Self {
        match outcome {
            FireOutcome::Submitted => Outcome::Submitted,
            FireOutcome::SkippedOverlap => Outcome::SkippedOverlap,
            FireOutcome::Rejected => Outcome::Rejected,
        }
    }
}

/// One past fire.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ScheduleFire {
    /// The fire time of the expression.
    pub fire_at: DateTime<Utc>,
    pub outcome: Outcome,
    pub job_id: Option<Uuid>,
    pub detail: Option<String>,
    /// When it was fired.
    pub fired_at: DateTime<Utc>,
}

impl From<schedules::FireRecord> for ScheduleFire {
    fn from(record: schedules::FireRecord) -> Self {
        let schedules::FireRecord { fire_at, job_id, outcome, detail, fired_at } = record;
        Self { fire_at, outcome: outcome.into(), job_id, detail, fired_at }
    }
}

/// A schedule with its upcoming fire times and its most recent fires.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ScheduleDetail {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// The next five fire times (none while paused).
    pub next_fires: Vec<DateTime<Utc>>,
    /// The last 20 fires, newest first.
    pub fires: Vec<ScheduleFire>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no schedule with id {id:?}"))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| not_found(id))
}

/// Create a schedule (tenant keys only: its jobs belong to the caller's tenant).
///
/// Its job must name a queue that exists, as a submission must (404 `unknown_queue`).
#[utoipa::path(
    post, path = "/schedules", tag = "schedules", request_body = ScheduleSpec, security(("bearer" = [])),
    responses(
        (status = 201, body = Schedule),
        (status = 404, description = "the job names a queue that does not exist (as for `POST /jobs`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the tenant has a schedule with this name", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "a cron expression that does not parse, an unknown time zone or an invalid job (the field is named)", body = Problem, content_type = "application/problem+json")
    )
)]
async fn create_schedule(
    State(state): State<AppState>,
    tenant: TenantCaller,
    Json(spec): Json<ScheduleSpec>,
) -> Result<(StatusCode, axum::Json<Schedule>), ApiError> {
    let now = store::database_now(&state.db).await?;
    let schedule = spec.validate(now)?;
    // Refused as a submission naming it would be. (A queue deleted later makes each fire
    // a recorded rejection.)
    let missing = store::enqueue::missing_queues(&state.db, std::slice::from_ref(&schedule.job.queue)).await?;
    if !missing.is_empty() {
        return Err(crate::http::jobs::unknown_queues(missing));
    }
    let created = schedules::create(&state.db, tenant.id, &schedule, now).await?;
    Ok((StatusCode::CREATED, axum::Json(created.into())))
}

/// List schedules: the caller's tenant's, or every tenant's for an admin key.
#[utoipa::path(get, path = "/schedules", tag = "schedules", security(("bearer" = [])), responses((status = 200, body = ScheduleList)))]
async fn list_schedules(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<ScheduleList>, ApiError> {
    let listed = schedules::list(&state.db, principal.tenant_scope()).await?;
    Ok(axum::Json(ScheduleList { schedules: listed.into_iter().map(Schedule::from).collect() }))
}

/// Get a schedule, its next fire times and its recent fires with their jobs.
#[utoipa::path(
    get, path = "/schedules/{id}", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses((status = 200, body = ScheduleDetail), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<ScheduleDetail>, ApiError> {
    let schedule_id = parse_id(&id)?;
    let mut connection = state.db.acquire().await?;
    let schedule =
        schedules::get(&mut *connection, principal.tenant_scope(), schedule_id).await?.ok_or_else(|| not_found(&id))?;
    let now = store::database_now(&mut *connection).await?;
    let next_fires = match (schedule.paused, schedule.spec.0.validate(now)) {
        (false, Ok(valid)) => valid.next_fires(now.max(schedule.fires_after), NEXT_FIRES),
        _ => Vec::new(),
    };
    let fires = schedules::recent_fires(&mut *connection, schedule_id, RECENT_FIRES).await?;
    Ok(axum::Json(ScheduleDetail {
        schedule: schedule.into(),
        next_fires,
        fires: fires.into_iter().map(ScheduleFire::from).collect(),
    }))
}

/// Pause a schedule: it fires nothing until resumed.
#[utoipa::path(
    post, path = "/schedules/{id}/pause", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn pause_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Schedule>, ApiError> {
    let schedule_id = parse_id(&id)?;
    let paused =
        schedules::pause(&state.db, principal.tenant_scope(), schedule_id).await?.ok_or_else(|| not_found(&id))?;
    Ok(axum::Json(paused.into()))
}

/// Resume a paused schedule from now: the fire times it was paused through are dropped.
#[utoipa::path(
    post, path = "/schedules/{id}/resume", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses((status = 200, body = Schedule), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn resume_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<Schedule>, ApiError> {
    let schedule_id = parse_id(&id)?;
    let mut connection = state.db.acquire().await?;
    let resumed = schedules::resume(&mut connection, principal.tenant_scope(), schedule_id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(axum::Json(resumed.into()))
}

/// Delete a schedule and its fire records. The jobs it submitted stay.
#[utoipa::path(
    delete, path = "/schedules/{id}", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Schedule id")),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn delete_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let schedule_id = parse_id(&id)?;
    if !schedules::delete(&state.db, principal.tenant_scope(), schedule_id).await? {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT)
}
