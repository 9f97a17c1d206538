//! `/api/v1/pools` (admin): pools of workers and their members' provisioning status.
//! Pools from the configuration file are listed here too but change only in the file.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use hodei_core::pool::{validate_pool, PoolSpec};
use hodei_core::ValidationErrors;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Admin;
use crate::error::{ApiError, Json, Problem};
use crate::http::AppState;
use crate::store::pools::{self, Change, Member, Pool};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_pool, list_pools))
        .routes(routes!(get_pool, update_pool, delete_pool))
        .routes(routes!(pool_workers))
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
fn validate(state: &AppState, spec: &PoolSpec) -> Result<(), ApiError> {
    validate_pool(spec, &state.provider_limits)?;
    let mut errors = ValidationErrors::default();
    if spec.size > state.pool_limits.max_pool_size {
        errors.add(
            "size",
            format!("must be at most {} (max_pool_size), got {}", state.pool_limits.max_pool_size, spec.size),
        );
    }
    if spec.provider == "local" {
        const HOST: &str = "local workers run on the control-plane host: set it in the configuration file";
        if spec.health.command.is_some() {
            errors.add("health.command", format!("not allowed through the API for the local provider ({HOST})"));
        }
        if !spec.template.env.is_empty() {
            errors.add("template.env", format!("not allowed through the API for the local provider ({HOST})"));
        }
    }
    errors.into_result(()).map_err(ApiError::from)
}

async fn find(state: &AppState, id: &str) -> Result<Pool, ApiError> {
    pools::get(&state.db, id).await?.ok_or_else(|| ApiError::not_found(format!("no pool with id {id:?}")))
}

fn refuse(change: Change, id: &str) -> Result<(), ApiError> {
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
    validate(&state, &spec)?;
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
    Ok(axum::Json(PoolList { pools: pools::list(&state.db).await? }))
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
        (status = 409, description = "defined in the file, or being deleted", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn update_pool(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Json(spec): Json<PoolSpec>,
) -> Result<axum::Json<Pool>, ApiError> {
    if spec.id != id {
        return Err(ValidationErrors::single("id", format!("must match the path ({id:?})")).into());
    }
    validate(&state, &spec)?;
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
    Ok(axum::Json(PoolWorkers { workers: pools::members(&state.db, &id).await? }))
}
