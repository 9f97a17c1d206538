//! `/api/v1/pools/{id}/scaling/*` and `/api/v1/pools/{id}/lifecycle` (admin): a dynamic
//! pool's target-tracking policies and schedules, step triggers and cooldowns, the history
//! of the autoscaler's decisions, and its lifecycle (pause scaling, resume, drain all).
//!
//! The scaling parts are parts of the pool's spec (`scaling`): changing one through the API
//! replaces that part of an API pool's spec; a pool from the configuration file changes in
//! the file.

use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use hodei_core::autoscale::{self, Cooldown, Schedule, StepTrigger, TargetPolicy};
use hodei_core::pool::{PoolKindName, PoolSpec};
use hodei_core::ValidationErrors;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::pools::{find, refuse, validate, Pool};
use crate::auth::Admin;
use crate::error::{ApiError, Json, Problem};
use crate::http::AppState;
use crate::store::pools;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_policies, put_policies))
        .routes(routes!(get_triggers, put_triggers))
        .routes(routes!(get_cooldown, put_cooldown))
        .routes(routes!(scaling_history))
        .routes(routes!(change_lifecycle))
}

/// Target-tracking policies and schedules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScalingPolicies {
    #[serde(default)]
    #[schema(max_items = 20)]
    pub policies: Vec<TargetPolicy>,
    #[serde(default)]
    #[schema(max_items = 20)]
    pub schedules: Vec<Schedule>,
}

/// Step triggers on queue depth, oldest wait or SLA at risk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScalingTriggers {
    #[schema(max_items = 20)]
    pub triggers: Vec<StepTrigger>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// `next_cursor` of the previous page.
    #[param(minimum = 1)]
    pub cursor: Option<i64>,
    /// Page size, 1–500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// One decision of the autoscaler (consecutive identical holds are one entry, `repeats`
/// times, the last at `last_decided_at`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub id: i64,
    pub decided_at: DateTime<Utc>,
    pub last_decided_at: DateTime<Utc>,
    pub repeats: i32,
    /// `scale_out`, `scale_in` or `hold`.
    pub action: String,
    pub current_size: i32,
    pub desired_size: i32,
    /// What the policies asked for, before bounds, cooldowns and idle rules.
    pub recommended: i32,
    pub min_size: i32,
    pub max_size: i32,
    /// The policy, trigger, schedule or rule that decided.
    pub decided_by: String,
    pub reason: String,
    /// Demand, capacity, every recommendation by name, open schedules, cooldown state.
    #[schema(value_type = Object)]
    pub inputs: serde_json::Value,
}

impl From<pools::HistoryEntry> for HistoryEntry {
    fn from(entry: pools::HistoryEntry) -> Self {
        let pools::HistoryEntry {
            id,
            decided_at,
            last_decided_at,
            repeats,
            action,
            current_size,
            desired_size,
            recommended,
            min_size,
            max_size,
            decided_by,
            reason,
            inputs,
        } = entry;
        Self {
            id,
            decided_at,
            last_decided_at,
            repeats,
            action,
            current_size,
            desired_size,
            recommended,
            min_size,
            max_size,
            decided_by,
            reason,
            inputs: inputs.0,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScalingHistory {
    /// Newest first.
    pub entries: Vec<HistoryEntry>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<i64>,
}

/// What to do with the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleAction {
    /// The autoscaler holds the current size (dynamic pools).
    Pause,
    /// Back to normal: scaling resumes, a drained pool starts workers again.
    Resume,
    /// Every worker drains (running jobs finish) and no new one starts until resumed.
    Drain,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleRequest {
    pub action: LifecycleAction,
}

async fn spec_of(state: &AppState, id: &str) -> Result<PoolSpec, ApiError> {
    Ok(find(state, id).await?.spec)
}

/// Replaces part of a dynamic API pool's scaling spec, after validating the whole pool.
async fn change_scaling(state: &AppState, id: &str, change: impl FnOnce(&mut PoolSpec)) -> Result<PoolSpec, ApiError> {
    let mut spec = spec_of(state, id).await?;
    if spec.kind != PoolKindName::Dynamic {
        return Err(ApiError::conflict("not_dynamic", format!("pool {id:?} is static: it does not scale")));
    }
    change(&mut spec);
    validate(state, &spec).await?;
    let mut transaction = state.db.begin().await?;
    refuse(pools::update(&mut transaction, &spec).await?, id)?;
    transaction.commit().await?;
    Ok(spec)
}

fn checked(check: impl FnOnce(&mut ValidationErrors)) -> Result<(), ApiError> {
    let mut errors = ValidationErrors::new();
    check(&mut errors);
    errors.into_result(()).map_err(ApiError::from)
}

/// A pool's target-tracking policies and schedules.
#[utoipa::path(
    get, path = "/pools/{id}/scaling/policies", tag = "pools", security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id")),
    responses((status = 200, body = ScalingPolicies), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_policies(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<axum::Json<ScalingPolicies>, ApiError> {
    let scaling = spec_of(&state, &id).await?.scaling;
    Ok(axum::Json(ScalingPolicies { policies: scaling.policies, schedules: scaling.schedules }))
}

/// Replace a dynamic pool's target-tracking policies and schedules.
#[utoipa::path(
    put, path = "/pools/{id}/scaling/policies", tag = "pools", request_body = ScalingPolicies, security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id")),
    responses(
        (status = 200, body = ScalingPolicies),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a static pool, a pool from the file, or being deleted", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn put_policies(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Json(body): Json<ScalingPolicies>,
) -> Result<axum::Json<ScalingPolicies>, ApiError> {
    checked(|errors| {
        autoscale::validate_policies(&body.policies, errors, "policies");
        autoscale::validate_schedules(&body.schedules, errors, "schedules");
    })?;
    let spec = change_scaling(&state, &id, |spec| {
        spec.scaling.policies = body.policies.clone();
        spec.scaling.schedules = body.schedules.clone();
    })
    .await?;
    Ok(axum::Json(ScalingPolicies { policies: spec.scaling.policies, schedules: spec.scaling.schedules }))
}

/// A pool's step triggers.
#[utoipa::path(
    get, path = "/pools/{id}/scaling/triggers", tag = "pools", security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id")),
    responses((status = 200, body = ScalingTriggers), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_triggers(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<axum::Json<ScalingTriggers>, ApiError> {
    Ok(axum::Json(ScalingTriggers { triggers: spec_of(&state, &id).await?.scaling.triggers }))
}

/// Replace a dynamic pool's step triggers.
#[utoipa::path(
    put, path = "/pools/{id}/scaling/triggers", tag = "pools", request_body = ScalingTriggers, security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id")),
    responses(
        (status = 200, body = ScalingTriggers),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a static pool, a pool from the file, or being deleted", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn put_triggers(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Json(body): Json<ScalingTriggers>,
) -> Result<axum::Json<ScalingTriggers>, ApiError> {
    checked(|errors| autoscale::validate_triggers(&body.triggers, errors, "triggers"))?;
    let spec = change_scaling(&state, &id, |spec| spec.scaling.triggers = body.triggers.clone()).await?;
    Ok(axum::Json(ScalingTriggers { triggers: spec.scaling.triggers }))
}

/// A pool's cooldowns and scale-in step.
#[utoipa::path(
    get, path = "/pools/{id}/scaling/cooldown", tag = "pools", security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id")),
    responses((status = 200, body = Cooldown), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_cooldown(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<axum::Json<Cooldown>, ApiError> {
    Ok(axum::Json(spec_of(&state, &id).await?.scaling.cooldown))
}

/// Replace a dynamic pool's cooldowns and scale-in step.
#[utoipa::path(
    put, path = "/pools/{id}/scaling/cooldown", tag = "pools", request_body = Cooldown, security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id")),
    responses(
        (status = 200, body = Cooldown),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a static pool, a pool from the file, or being deleted", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn put_cooldown(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Json(body): Json<Cooldown>,
) -> Result<axum::Json<Cooldown>, ApiError> {
    checked(|errors| autoscale::validate_cooldown(&body, errors, ""))?;
    let spec = change_scaling(&state, &id, |spec| spec.scaling.cooldown = body.clone()).await?;
    Ok(axum::Json(spec.scaling.cooldown))
}

/// The autoscaler's decisions for a pool, newest first, with their inputs.
#[utoipa::path(
    get, path = "/pools/{id}/scaling/history", tag = "pools", security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id"), HistoryQuery),
    responses(
        (status = 200, body = ScalingHistory),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")
    )
)]
async fn scaling_history(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<axum::Json<ScalingHistory>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit: must be between 1 and 500, got {limit}")));
    }
    if query.cursor.is_some_and(|cursor| cursor < 1) {
        return Err(ApiError::bad_request("invalid_query", "cursor: not a cursor returned by this endpoint"));
    }
    find(&state, &id).await?;
    let entries: Vec<HistoryEntry> =
        pools::history(&state.db, &id, query.cursor, limit).await?.into_iter().map(HistoryEntry::from).collect();
    let next_cursor = (entries.len() as i64 == limit).then(|| entries.last().map(|entry| entry.id)).flatten();
    Ok(axum::Json(ScalingHistory { entries, next_cursor }))
}

/// Pause scaling, resume, or drain every worker of a pool.
#[utoipa::path(
    post, path = "/pools/{id}/lifecycle", tag = "pools", request_body = LifecycleRequest, security(("bearer" = [])),
    params(("id" = String, Path, description = "Pool id")),
    responses(
        (status = 200, body = Pool),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "pausing a static pool, or the pool is being deleted", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn change_lifecycle(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Json(body): Json<LifecycleRequest>,
) -> Result<axum::Json<Pool>, ApiError> {
    let pool = find(&state, &id).await?;
    let lifecycle = match body.action {
        LifecycleAction::Pause if pool.spec.kind != PoolKindName::Dynamic => {
            return Err(ApiError::conflict("not_dynamic", format!("pool {id:?} is static: it has no scaling to pause")))
        }
        LifecycleAction::Pause => "paused",
        LifecycleAction::Resume => "scaling",
        LifecycleAction::Drain => "drained",
    };
    if !pools::set_lifecycle(&state.db, &id, lifecycle).await? {
        return Err(ApiError::conflict("pool_deleting", format!("pool {id:?} is being deleted")));
    }
    Ok(axum::Json(find(&state, &id).await?))
}
