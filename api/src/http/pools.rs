//! `/api/v1/pools` (admin): pools of workers and their members' provisioning status.
//! Pools from the configuration file are listed here too but change only in the file.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use hodei_core::pool::{validate_pool, PoolSpec};
use hodei_core::pool_plan::{MemberStatus, PoolState};
use hodei_core::ValidationErrors;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::{ApiError, Json, Problem};
use crate::http::AppState;
use crate::store::pools::{self, Change};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_pool, list_pools))
        .routes(routes!(get_pool, update_pool, delete_pool))
        .routes(routes!(pool_workers))
        .merge(super::scaling::router())
}

/// Where a pool's spec comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    File,
    Api,
}

impl From<pools::Source> for Source {
    fn from(source: pools::Source) -> Self {
        match source {
            pools::Source::File => Source::File,
            pools::Source::Api => Source::Api,
        }
    }
}

/// How many of a pool's members are in each status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct MemberCounts {
    pub provisioning: i64,
    pub ready: i64,
    pub draining: i64,
    pub terminating: i64,
    pub failed: i64,
}

impl From<pools::MemberCounts> for MemberCounts {
    fn from(counts: pools::MemberCounts) -> Self {
        let pools::MemberCounts { provisioning, ready, draining, terminating, failed } = counts;
        Self { provisioning, ready, draining, terminating, failed }
    }
}

/// A pool as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Pool {
    #[serde(flatten)]
    pub spec: PoolSpec,
    pub source: Source,
    /// `active`, `deleting` (its workers drain, then it goes) or `failed` (see `state_reason`).
    #[schema(value_type = String)]
    pub state: PoolState,
    pub state_reason: Option<String>,
    pub workers: MemberCounts,
    pub scaling_status: ScalingStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<pools::Pool> for Pool {
    fn from(pool: pools::Pool) -> Self {
        let pools::Pool { spec, source, state, state_reason, workers, scaling, created_at, updated_at } = pool;
        Self {
            spec,
            source: source.into(),
            state,
            state_reason,
            workers: workers.into(),
            scaling_status: scaling.into(),
            created_at,
            updated_at,
        }
    }
}

/// Where the pool's scaling stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ScalingStatus {
    /// `scaling` (normal), `paused` (the autoscaler holds the size) or `drained` (every
    /// worker drains; none starts until resumed). Changed with `POST /pools/{id}/lifecycle`.
    #[schema(pattern = "^(scaling|paused|drained)$")]
    pub lifecycle: String,
    /// The size the autoscaler last decided (dynamic pools).
    pub desired_size: Option<i32>,
    pub last_scale_out_at: Option<DateTime<Utc>>,
    pub last_scale_in_at: Option<DateTime<Utc>>,
}

impl From<pools::ScalingStatus> for ScalingStatus {
    fn from(status: pools::ScalingStatus) -> Self {
        let pools::ScalingStatus { lifecycle, desired_size, last_scale_out_at, last_scale_in_at } = status;
        Self { lifecycle, desired_size, last_scale_out_at, last_scale_in_at }
    }
}

/// One member and, once it registered, its worker.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Member {
    pub id: Uuid,
    pub pool_id: String,
    /// `provisioning`, `ready`, `draining`, `terminating` or `failed`.
    #[schema(value_type = String)]
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
    /// Seconds the worker has held no job (absent while it runs one).
    pub worker_idle_seconds: Option<f64>,
    /// Jobs the worker has been given.
    pub worker_jobs_run: Option<i64>,
}

impl From<pools::Member> for Member {
    fn from(member: pools::Member) -> Self {
        let pools::Member {
            id,
            pool_id,
            status,
            attempts,
            instance,
            last_error,
            attempt_started_at,
            retry_at,
            created_at,
            worker_id,
            worker_state,
            worker_used_slots,
            worker_last_heartbeat_at,
            worker_health_failures,
            worker_idle_seconds,
            worker_jobs_run,
            // Not shown: the last heartbeat's and the creation's times say it.
            heartbeat_age_seconds: _,
            age_seconds: _,
        } = member;
        Self {
            id,
            pool_id,
            status,
            attempts,
            instance,
            last_error,
            attempt_started_at,
            retry_at,
            created_at,
            worker_id,
            worker_state,
            worker_used_slots,
            worker_last_heartbeat_at,
            worker_health_failures,
            worker_idle_seconds,
            worker_jobs_run,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolList {
    pub pools: Vec<Pool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolWorkers {
    /// One entry per worker the pool provisions, with its provisioning status.
    pub workers: Vec<Member>,
}

/// A pool through the API: valid for a provider this replica has, within the
/// deployment's size bound, and — for `local`, whose workers run on the control-plane host
/// itself — without a health command or environment of its own: those run or take effect
/// on this host, so only the operator's configuration file may set them.
pub(crate) async fn validate(state: &AppState, spec: &PoolSpec) -> Result<(), ApiError> {
    validate_pool(spec, &state.provider_limits)?;
    // What only the provider can know: an instance type or launch template that does not
    // exist in the account, an Auto Scaling group that is not there.
    if let Some(provider) = state.providers.get(&spec.provider) {
        let mut errors = ValidationErrors::default();
        for (field, message) in provider.validate(spec).await {
            errors.add(field, message);
        }
        errors.into_result(()).map_err(ApiError::from)?;
    }
    let mut errors = ValidationErrors::default();
    if spec.max_workers() > state.pool_limits.max_pool_size {
        errors.add(
            spec.size_field(),
            format!("must be at most {} (max_pool_size), got {}", state.pool_limits.max_pool_size, spec.max_workers()),
        );
    }
    errors.into_result(()).map_err(ApiError::from)?;
    // Not invalid, but not the API's to set: a 403 names the field.
    if spec.provider == "local" {
        const HOST: &str = "local workers run on the control-plane host: set it in the configuration file";
        if spec.health.command.is_some() {
            return Err(ApiError::forbidden(format!(
                "health.command: not allowed through the API for the local provider ({HOST})"
            )));
        }
        if !spec.template.env.is_empty() {
            return Err(ApiError::forbidden(format!(
                "template.env: not allowed through the API for the local provider ({HOST})"
            )));
        }
    }
    Ok(())
}

pub(crate) async fn find(state: &AppState, id: &str) -> Result<Pool, ApiError> {
    pools::get(&state.db, id)
        .await?
        .map(Pool::from)
        .ok_or_else(|| ApiError::not_found(format!("no pool with id {id:?}")))
}

pub(crate) fn refuse(change: Change, id: &str) -> Result<(), ApiError> {
    match change {
        Change::Done => Ok(()),
        Change::NotFound => Err(ApiError::not_found(format!("no pool with id {id:?}"))),
        Change::FromFile => Err(ApiError::conflict(
            "pool_from_file",
            format!("pool {id:?} is defined in the configuration file; change it there"),
        )),
        Change::Deleting => Err(ApiError::conflict("pool_deleting", format!("pool {id:?} is being deleted"))),
    }
}

/// Create a pool; its workers are provisioned by the reconcile loop.
#[utoipa::path(
    post, path = "/pools", tag = "pools", request_body = PoolSpec, security(("bearer" = [])),
    responses(
        (status = 201, body = Pool),
        (status = 409, description = "exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn create_pool(
    State(state): State<AppState>,
    _admin: Admin,
    Json(spec): Json<PoolSpec>,
) -> Result<(StatusCode, axum::Json<Pool>), ApiError> {
    validate(&state, &spec).await?;
    let existing = pools::count(&state.db).await?;
    if existing >= i64::from(state.pool_limits.max_pools) {
        return Err(ApiError::conflict(
            "too_many_pools",
            format!("the deployment allows {} pools (max_pools) and has {existing}", state.pool_limits.max_pools),
        ));
    }
    if pools::create(&state.db, &spec).await?.is_none() {
        return Err(ApiError::conflict("pool_exists", format!("a pool with id {:?} already exists", spec.id)));
    }
    Ok((StatusCode::CREATED, axum::Json(find(&state, &spec.id).await?)))
}

/// List pools.
#[utoipa::path(get, path = "/pools", tag = "pools", security(("bearer" = [])), responses((status = 200, body = PoolList)))]
async fn list_pools(State(state): State<AppState>, _admin: Admin) -> Result<axum::Json<PoolList>, ApiError> {
    Ok(axum::Json(PoolList { pools: pools::list(&state.db).await?.into_iter().map(Pool::from).collect() }))
}

/// Get a pool.
#[utoipa::path(
    get, path = "/pools/{id}", tag = "pools", security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id")),
    responses((status = 200, body = Pool), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_pool(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<axum::Json<Pool>, ApiError> {
    Ok(axum::Json(find(&state, &id).await?))
}

/// Replace a pool's spec (size, template, strategy, health, provisioning).
#[utoipa::path(
    put, path = "/pools/{id}", tag = "pools", request_body = PoolSpec, security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id")),
    responses(
        (status = 200, body = Pool),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "defined in the file, being deleted, or the body names another pool", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn update_pool(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Json(spec): Json<PoolSpec>,
) -> Result<axum::Json<Pool>, ApiError> {
    // A pool that does not exist is 404 whatever the body says.
    find(&state, &id).await?;
    if spec.id != id {
        // Both parts are well-formed; they name two different pools.
        return Err(ApiError::conflict(
            "id_mismatch",
            format!("the body names pool {:?}, the path {id:?}: a PUT replaces the pool its path names", spec.id),
        ));
    }
    validate(&state, &spec).await?;
    let mut transaction = state.db.begin().await?;
    refuse(pools::update(&mut transaction, &spec).await?, &id)?;
    transaction.commit().await?;
    Ok(axum::Json(find(&state, &id).await?))
}

/// Delete a pool: its workers drain (running jobs finish), then it goes.
#[utoipa::path(
    delete, path = "/pools/{id}", tag = "pools", security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id")),
    responses(
        (status = 202, description = "draining", body = Pool),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "defined in the file", body = Problem, content_type = "application/problem+json")
    )
)]
async fn delete_pool(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<(StatusCode, axum::Json<Pool>), ApiError> {
    let mut transaction = state.db.begin().await?;
    refuse(pools::delete(&mut transaction, &id).await?, &id)?;
    transaction.commit().await?;
    Ok((StatusCode::ACCEPTED, axum::Json(find(&state, &id).await?)))
}

/// A pool's workers with their provisioning status.
#[utoipa::path(
    get, path = "/pools/{id}/workers", tag = "pools", security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id")),
    responses((status = 200, body = PoolWorkers), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn pool_workers(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<axum::Json<PoolWorkers>, ApiError> {
    find(&state, &id).await?;
    let workers = pools::members(&state.db, &id).await?.into_iter().map(Member::from).collect();
    Ok(axum::Json(PoolWorkers { workers }))
}
