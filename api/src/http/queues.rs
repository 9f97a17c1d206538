//! `/api/v1/queues`: queues and their settings (changes need an admin key), and queue
//! status (any key; a tenant sees only its own backlog in it).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use hodei_core::queue::{
    ExpiredDeadline, OverflowPolicy, QueueSettings, DEFAULT_AGING_SECONDS, DEFAULT_STARVATION_AFTER_SECONDS,
};
use hodei_core::validation::check_range;
use hodei_core::ValidationErrors;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Admin, Principal};
use crate::error::{ApiError, Json, Problem, Query};
use crate::http::AppState;
use crate::store::queue_status;
use crate::store::queues::{self, DeleteOutcome, RetrySettings};

pub const DEFAULT_STATUS_WINDOW_SECONDS: i64 = 900;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_queue, list_queues))
        .routes(routes!(get_queue, update_queue, delete_queue))
        .routes(routes!(queue_status))
}

/// Reads a field that may be absent (keep), `null` (clear) or a value (set).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The policies this server registers (`PolicyRegistry::shipped`), as the schema of a
/// request's `policy`.
fn policy_names() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let mut names: Vec<serde_json::Value> =
        hodei_core::ordering::PolicyRegistry::shipped().names().map(serde_json::Value::from).collect();
    names.push(serde_json::Value::Null);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(names))
        .description(Some("`fifo`, `priority`, `fair`, `edf`, or a registered custom policy such as `sjf`."))
        .build()
}

/// Queue settings in a request. On create, absent fields take their defaults; on update,
/// absent fields keep their value and `null` clears an optional one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueChanges {
    /// `fifo`, `priority`, `fair`, `edf`, or a registered custom policy such as `sjf`.
    #[schema(schema_with = policy_names)]
    pub policy: Option<String>,
    /// Serving order between queues: lower first (`high` 0, `default` 1, `low` 2).
    #[schema(minimum = 0, maximum = 100)]
    pub tier: Option<i16>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 100000000)]
    pub max_size: Option<Option<i64>>,
    pub overflow: Option<OverflowPolicy>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub overflow_queue: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 2592000)]
    pub sla_max_wait_seconds: Option<Option<i64>>,
    #[schema(minimum = 1, maximum = 2592000)]
    pub aging_seconds: Option<i64>,
    #[schema(minimum = 1, maximum = 2592000)]
    pub starvation_after_seconds: Option<i64>,
    pub expired_deadline: Option<ExpiredDeadline>,
    /// First retry delay, in seconds: above 0, at most 86400.
    #[schema(exclusive_minimum = 0, maximum = 86400)]
    pub retry_base_seconds: Option<f64>,
    /// Longest retry delay, in seconds: at least `retry_base_seconds`, at most 604800.
    #[schema(exclusive_minimum = 0, maximum = 604800)]
    pub retry_max_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateQueue {
    /// 1–63 characters: lowercase letters, digits, `-`, `_`.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub name: String,
    #[serde(flatten)]
    pub settings: QueueChanges,
}

/// A queue as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Queue {
    #[serde(flatten)]
    pub settings: QueueSettings,
    /// Delay before the first retry of a failed job (doubles per attempt, with jitter).
    pub retry_base_seconds: f64,
    pub retry_max_seconds: f64,
    /// `high`, `default` and `low` always exist and cannot be deleted.
    pub builtin: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<queues::Queue> for Queue {
    fn from(queue: queues::Queue) -> Self {
        let queues::Queue { settings, retry_base_seconds, retry_max_seconds, builtin, created_at, updated_at } = queue;
        Self { settings, retry_base_seconds, retry_max_seconds, builtin, created_at, updated_at }
    }
}

/// Wait-time percentiles over the window, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct WaitPercentiles {
    /// Jobs dispatched in the window (the sample behind the percentiles).
    pub dispatched: i64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One tenant's waiting work in a queue.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TenantBacklog {
    pub tenant: String,
    pub ready: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct QueueStatus {
    pub queue: String,
    pub policy: String,
    pub window_seconds: i64,
    /// Jobs ready for dispatch now.
    pub length: i64,
    /// Jobs waiting for a time (not-before or retry backoff).
    pub scheduled: i64,
    /// How long the oldest ready job has waited, in seconds.
    pub oldest_wait_seconds: Option<f64>,
    pub wait: WaitPercentiles,
    pub sla_max_wait_seconds: Option<i64>,
    /// Jobs dispatched in the window after waiting longer than the SLA.
    pub sla_breaches: i64,
    /// Jobs waiting now that are already past the SLA.
    pub sla_breaching_now: i64,
    /// Submissions admitted to this queue in the window (including redirects into it).
    pub submitted: i64,
    pub rejected: i64,
    pub redirected_away: i64,
    pub evicted: i64,
    pub cancelled_while_queued: i64,
    pub deadline_expired: i64,
    /// Cancelled while queued, per job submitted.
    pub abandonment_rate: f64,
    /// Rejected, redirected away or evicted, per job offered.
    pub overflow_rate: f64,
    /// Ready jobs per tenant (a tenant key sees only its own).
    pub tenants: Vec<TenantBacklog>,
}

impl From<queue_status::QueueStatus> for QueueStatus {
    fn from(status: queue_status::QueueStatus) -> Self {
        let queue_status::QueueStatus {
            queue,
            policy,
            window_seconds,
            length,
            scheduled,
            oldest_wait_seconds,
            wait,
            sla_max_wait_seconds,
            sla_breaches,
            sla_breaching_now,
            submitted,
            rejected,
            redirected_away,
            evicted,
            cancelled_while_queued,
            deadline_expired,
            abandonment_rate,
            overflow_rate,
            tenants,
        } = status;
        let queue_status::WaitPercentiles { dispatched, p50_ms, p95_ms, p99_ms } = wait;
        Self {
            queue,
            policy,
            window_seconds,
            length,
            scheduled,
            oldest_wait_seconds,
            wait: WaitPercentiles { dispatched, p50_ms, p95_ms, p99_ms },
            sla_max_wait_seconds,
            sla_breaches,
            sla_breaching_now,
            submitted,
            rejected,
            redirected_away,
            evicted,
            cancelled_while_queued,
            deadline_expired,
            abandonment_rate,
            overflow_rate,
            tenants: tenants
                .into_iter()
                .map(|queue_status::TenantBacklog { tenant, ready }| TenantBacklog { tenant, ready })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<Queue>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// The window for rates and wait percentiles, in seconds (default 900, at most 7 days).
    #[param(minimum = 1, maximum = 604800)]
    pub window_seconds: Option<i64>,
}

impl QueueChanges {
    fn apply(self, mut settings: QueueSettings, mut retry: RetrySettings) -> (QueueSettings, RetrySettings) {
        if let Some(policy) = self.policy {
            settings.policy = policy;
        }
        if let Some(tier) = self.tier {
            settings.tier = tier;
        }
        if let Some(max_size) = self.max_size {
            settings.max_size = max_size;
        }
        if let Some(overflow) = self.overflow {
            settings.overflow = overflow;
        }
        if let Some(overflow_queue) = self.overflow_queue {
            settings.overflow_queue = overflow_queue;
        }
        if let Some(sla) = self.sla_max_wait_seconds {
            settings.sla_max_wait_seconds = sla;
        }
        if let Some(aging) = self.aging_seconds {
            settings.aging_seconds = aging;
        }
        if let Some(starvation) = self.starvation_after_seconds {
            settings.starvation_after_seconds = starvation;
        }
        if let Some(expired) = self.expired_deadline {
            settings.expired_deadline = expired;
        }
        if let Some(base) = self.retry_base_seconds {
            retry.retry_base_seconds = base;
        }
        if let Some(max) = self.retry_max_seconds {
            retry.retry_max_seconds = max;
        }
        (settings, retry)
    }
}

fn validate(state: &AppState, settings: &QueueSettings, retry: RetrySettings) -> Result<(), ApiError> {
    let mut errors = match settings.validate(|name| state.policies.contains(name)) {
        Ok(()) => ValidationErrors::new(),
        Err(errors) => errors,
    };
    if !(retry.retry_base_seconds > 0.0 && retry.retry_base_seconds <= 86_400.0) {
        errors.add("retry_base_seconds", "must be above 0 and at most 86400");
    }
    // A maximum below the base is allowed: every delay is then the maximum.
    if !(retry.retry_max_seconds > 0.0 && retry.retry_max_seconds <= 7.0 * 86_400.0) {
        errors.add("retry_max_seconds", "must be above 0 and at most 604800");
    }
    check_range(&mut errors, "tier", settings.tier.into(), 0, 100);
    errors.into_result(()).map_err(ApiError::from)
}

async fn save(state: &AppState, settings: &QueueSettings, retry: RetrySettings) -> Result<queues::Queue, ApiError> {
    match queues::upsert(&state.db, settings, retry).await {
        Ok(queue) => Ok(queue),
        Err(error) if error.as_database_error().and_then(|e| e.constraint()) == Some("queues_overflow_queue_fkey") => {
            // A queue the request names does not exist: 404, as for a job's queue.
            Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "unknown_queue",
                format!("overflow_queue: no queue named {:?}", settings.overflow_queue.as_deref().unwrap_or_default()),
            ))
        }
        Err(error) => Err(error.into()),
    }
}

async fn find(state: &AppState, name: &str) -> Result<queues::Queue, ApiError> {
    queues::get(&state.db, name).await?.ok_or_else(|| ApiError::not_found(format!("no queue named {name:?}")))
}

/// Create a queue.
#[utoipa::path(
    post, path = "/queues", tag = "queues", request_body = CreateQueue, security(("bearer" = [])),
    responses(
        (status = 201, body = Queue),
        (status = 404, description = "overflow_queue names a queue that does not exist", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn create_queue(
    State(state): State<AppState>,
    _admin: Admin,
    Json(request): Json<CreateQueue>,
) -> Result<(StatusCode, axum::Json<Queue>), ApiError> {
    if queues::get(&state.db, &request.name).await?.is_some() {
        return Err(ApiError::conflict("queue_exists", format!("a queue named {:?} already exists", request.name)));
    }
    let defaults = QueueSettings {
        aging_seconds: DEFAULT_AGING_SECONDS,
        starvation_after_seconds: DEFAULT_STARVATION_AFTER_SECONDS,
        ..QueueSettings::with_policy(&request.name, "priority")
    };
    let default_retry = RetrySettings { retry_base_seconds: 2.0, retry_max_seconds: 600.0 };
    let (settings, retry) = request.settings.apply(defaults, default_retry);
    validate(&state, &settings, retry)?;
    Ok((StatusCode::CREATED, axum::Json(save(&state, &settings, retry).await?.into())))
}

/// List queues in serving order.
#[utoipa::path(get, path = "/queues", tag = "queues", security(("bearer" = [])), responses((status = 200, body = QueueList)))]
async fn list_queues(State(state): State<AppState>, _principal: Principal) -> Result<axum::Json<QueueList>, ApiError> {
    Ok(axum::Json(QueueList { queues: queues::list(&state.db).await?.into_iter().map(Queue::from).collect() }))
}

/// Get a queue.
#[utoipa::path(
    get, path = "/queues/{name}", tag = "queues", security(("bearer" = [])),
    params(("name" = String, Path, description = "Queue name")),
    responses((status = 200, body = Queue), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_queue(
    State(state): State<AppState>,
    _principal: Principal,
    Path(name): Path<String>,
) -> Result<axum::Json<Queue>, ApiError> {
    Ok(axum::Json(find(&state, &name).await?.into()))
}

/// Change a queue's settings. Jobs already queued keep their place; new ones are ordered
/// by the new settings.
#[utoipa::path(
    patch, path = "/queues/{name}", tag = "queues", request_body = QueueChanges, security(("bearer" = [])),
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 200, body = Queue),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the queue would redirect without an overflow_queue", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn update_queue(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    Json(changes): Json<QueueChanges>,
) -> Result<axum::Json<Queue>, ApiError> {
    let current = find(&state, &name).await?;
    let retry =
        RetrySettings { retry_base_seconds: current.retry_base_seconds, retry_max_seconds: current.retry_max_seconds };
    let (settings, retry) = changes.apply(current.settings, retry);
    if settings.overflow == OverflowPolicy::Redirect && settings.overflow_queue.is_none() {
        // The change is well-formed; the queue it would leave has nowhere to redirect to.
        return Err(ApiError::conflict(
            "no_overflow_queue",
            format!("queue {name:?} would redirect without an overflow_queue: name one in the same change"),
        ));
    }
    validate(&state, &settings, retry)?;
    Ok(axum::Json(save(&state, &settings, retry).await?.into()))
}

/// Delete a queue. Refused for built-in queues, for queues with waiting jobs, and for a
/// queue that another queue redirects to.
#[utoipa::path(
    delete, path = "/queues/{name}", tag = "queues", security(("bearer" = [])),
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json")
    )
)]
async fn delete_queue(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut transaction = state.db.begin().await?;
    let outcome = queues::delete(&mut transaction, &name).await?;
    if outcome == DeleteOutcome::Deleted {
        transaction.commit().await?;
    }
    match outcome {
        DeleteOutcome::Deleted => Ok(StatusCode::NO_CONTENT),
        DeleteOutcome::NotFound => Err(ApiError::not_found(format!("no queue named {name:?}"))),
        DeleteOutcome::Builtin => Err(ApiError::conflict("queue_builtin", format!("{name:?} is built in"))),
        DeleteOutcome::NotEmpty => {
            Err(ApiError::conflict("queue_not_empty", format!("queue {name:?} still has waiting jobs")))
        }
        DeleteOutcome::RedirectTarget => Err(ApiError::conflict(
            "queue_is_redirect_target",
            format!("another queue names {name:?} as its overflow_queue"),
        )),
    }
}

/// A queue's length, waits, SLA breaches, overflow and abandonment rates, and backlog per
/// tenant (a tenant key sees only its own line).
#[utoipa::path(
    get, path = "/queues/{name}/status", tag = "queues", security(("bearer" = [])),
    params(("name" = String, Path, description = "Queue name"), StatusQuery),
    responses((status = 200, body = QueueStatus), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn queue_status(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Query(query): Query<StatusQuery>,
) -> Result<axum::Json<QueueStatus>, ApiError> {
    let window = query.window_seconds.unwrap_or(DEFAULT_STATUS_WINDOW_SECONDS);
    if !(1..=7 * 86_400).contains(&window) {
        return Err(ApiError::bad_request("invalid_query", format!("window_seconds: must be 1-604800, got {window}")));
    }
    let queue = find(&state, &name).await?;
    let mut connection = state.db.acquire().await?;
    Ok(axum::Json(queue_status::status(&mut connection, &queue, window, principal.tenant_scope()).await?.into()))
}
