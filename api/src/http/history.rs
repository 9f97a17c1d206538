//! Historical metrics from SQL (admins): a metric of a queue or a pool over a range, and a
//! pool's series together. What is kept, and how a range and step read it, is
//! `hodei_core::history`'s; the roll-up is `store::history`'s.

use axum::extract::{Path, State};
use chrono::{DateTime, Duration, Utc};
use hodei_core::history::{self, Family, Metric, Plan, Point, Range, Resolution};
use hodei_core::ValidationErrors;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Admin;
use crate::error::{ApiError, Problem, Query};
use crate::http::AppState;
use crate::store::{self, pools};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(historical)).routes(routes!(pool_metrics))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoricalQuery {
    /// The metric (see `Metric`).
    #[param(value_type = Metric)]
    pub metric: String,
    /// The queue, for a queue's metric.
    #[param(min_length = 1, max_length = 200)]
    pub queue: Option<String>,
    /// The pool, for a pool's metric.
    #[param(min_length = 1, max_length = 200)]
    pub pool: Option<String>,
    /// The range's start (default: an hour before `to`); within the retention.
    pub from: Option<DateTime<Utc>>,
    /// The range's end (default: now).
    pub to: Option<DateTime<Utc>>,
    /// Seconds per point: whole minutes within the last day, whole hours before it
    /// (default: as fine as 1,500 points allow).
    #[param(minimum = 60, maximum = 31536000)]
    pub step: Option<i64>,
}

/// One metric's values over a range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub metric: Metric,
    /// The queue's or the pool's name.
    pub series: String,
    /// The first step's start.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step_seconds: i64,
    /// The buckets read: `minute` (kept a day) or `hour`.
    pub resolution: Resolution,
    /// One point per step that has data, in order.
    pub points: Vec<Point>,
}

fn plan_of(state: &AppState, range: Range, now: DateTime<Utc>) -> Result<Plan, ValidationErrors> {
    history::plan(range, now, Duration::days(state.metric_history_retention_days.into()))
}

async fn read(state: &AppState, plan: &Plan, metric: Metric, series: &str) -> Result<Vec<Point>, ApiError> {
    let buckets = store::history::series(&state.db, plan.resolution, metric, series, plan.from, plan.to).await?;
    Ok(history::fold(plan, metric, &buckets))
}

/// A metric of a queue (`queue_length`, `oldest_wait_seconds`, `submitted`, `dispatched`,
/// `wait_mean_seconds`, `wait_p95_seconds`, `succeeded`, `failed`) or of a pool
/// (`pool_size`, `pool_ready`, `pool_busy`, `pool_utilization`), from the roll-up: per
/// minute for the last day, per hour for `metrics.history.retention_days`.
#[utoipa::path(
    get, path = "/metrics/historical", tag = "metrics", security(("bearer" = [])), params(HistoricalQuery),
    responses(
        (status = 200, body = History),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn historical(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<HistoricalQuery>,
) -> Result<axum::Json<History>, ApiError> {
    let mut errors = ValidationErrors::new();
    let metric = Metric::parse(&query.metric);
    if metric.is_none() {
        let names: Vec<&str> = Metric::ALL.iter().map(|metric| metric.as_str()).collect();
        errors.add("metric", format!("unknown metric {:?}; one of {}", query.metric, names.join(", ")));
    }
    let series = match (metric.map(Metric::family), &query.queue, &query.pool) {
        (Some(Family::Queue), Some(queue), None) => Some(queue.clone()),
        (Some(Family::Pool), None, Some(pool)) => Some(pool.clone()),
        (Some(Family::Queue), _, _) => {
            errors.add("queue", "a queue's metric needs `queue` (and no `pool`)");
            None
        }
        (Some(Family::Pool), _, _) => {
            errors.add("pool", "a pool's metric needs `pool` (and no `queue`)");
            None
        }
        (None, _, _) => None,
    };
    let now = store::database_now(&state.db).await?;
    let plan = match plan_of(&state, Range { from: query.from, to: query.to, step_seconds: query.step }, now) {
        Ok(plan) => Some(plan),
        Err(problems) => {
            errors.merge_prefixed("", problems);
            None
        }
    };
    let (Some(metric), Some(series), Some(plan)) = (metric, series, plan) else {
        return Err(ApiError::validation(errors));
    };
    let points = read(&state, &plan, metric, &series).await?;
    Ok(axum::Json(History {
        metric,
        series,
        from: plan.from,
        to: plan.to,
        step_seconds: plan.step.num_seconds(),
        resolution: plan.resolution,
        points,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// The range's start (default: an hour before `to`); within the retention.
    pub from: Option<DateTime<Utc>>,
    /// The range's end (default: now).
    pub to: Option<DateTime<Utc>>,
    /// Seconds per point: whole minutes within the last day, whole hours before it.
    #[param(minimum = 60, maximum = 31536000)]
    pub step: Option<i64>,
}

/// A pool's series over a range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolMetrics {
    pub pool: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step_seconds: i64,
    pub resolution: Resolution,
    /// Members of the pool.
    pub pool_size: Vec<Point>,
    /// Members ready with a live worker.
    pub pool_ready: Vec<Point>,
    /// Workers running at least one job.
    pub pool_busy: Vec<Point>,
    /// Slots in use of its live workers, from 0 to 1.
    pub pool_utilization: Vec<Point>,
}

/// A pool's size, readiness, busy workers and utilisation over a range, from the roll-up.
#[utoipa::path(
    get, path = "/pools/{id}/metrics", tag = "metrics", security(("bearer" = [])),
    params(("id" = String, Path, description = "The pool."), RangeQuery),
    responses(
        (status = 200, body = PoolMetrics),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn pool_metrics(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    Query(query): Query<RangeQuery>,
) -> Result<axum::Json<PoolMetrics>, ApiError> {
    if pools::get(&state.db, &id).await?.is_none() {
        return Err(ApiError::not_found(format!("no pool {id:?}")));
    }
    let now = store::database_now(&state.db).await?;
    let plan = plan_of(&state, Range { from: query.from, to: query.to, step_seconds: query.step }, now)?;
    Ok(axum::Json(PoolMetrics {
        from: plan.from,
        to: plan.to,
        step_seconds: plan.step.num_seconds(),
        resolution: plan.resolution,
        pool_size: read(&state, &plan, Metric::PoolSize, &id).await?,
        pool_ready: read(&state, &plan, Metric::PoolReady, &id).await?,
        pool_busy: read(&state, &plan, Metric::PoolBusy, &id).await?,
        pool_utilization: read(&state, &plan, Metric::PoolUtilization, &id).await?,
        pool: id,
    }))
}
