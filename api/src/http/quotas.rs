//! Tenant quotas and burst sessions: `/api/v1/tenants/{tenant}/quotas` (admins change, a
//! tenant reads its own), `/api/v1/tenants/{tenant}/burst` and the dry run
//! `/api/v1/quotas/enforce`. Another tenant's quotas and sessions are 404 to a tenant key.
//! Decisions are `hodei_core::quota`'s; usage is read from what workers hold.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hodei_core::quota::{self, QuotaDecision, QuotaRejection};
use hodei_core::validation::check_range;
use hodei_core::{JobSpec, ValidationErrors};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::config::MAX_QUOTA;
use crate::error::{ApiError, Json, Problem};
use crate::http::AppState;
use crate::store::queue_backlog;
use crate::store::quotas::{self, BurstSession, StartBurst};
use crate::store::tenants;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_quotas, put_quotas))
        .routes(routes!(get_burst, start_burst, end_burst))
        .routes(routes!(enforce))
}

/// The largest monthly budget accepted.
pub const MAX_BUDGET: f64 = 1e12;
/// The quotas view reports queued jobs up to this many.
const QUEUED_COUNT_CAP: i64 = 1_000_000;

/// A tenant's own limits. An absent or null field falls back to the deployment's default
/// (`multi_tenancy.default_tenant_quota`, when `multi_tenancy.enabled`), else no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// Millicores held by the tenant's assigned and running jobs.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub cpu_millis: Option<i64>,
    /// MiB held by the tenant's assigned and running jobs.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub memory_mib: Option<i64>,
    /// Jobs assigned or running at once.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub max_concurrent_jobs: Option<i64>,
    /// Jobs waiting (ready or scheduled); a submission past it is refused (429).
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub max_queued_jobs: Option<i64>,
    /// Attributed cost per calendar month (UTC); once reached, submissions are refused
    /// (429) until the month ends. Enforced while the cost roll-up runs.
    #[schema(minimum = 0, maximum = 1e12)]
    pub monthly_budget: Option<f64>,
}

impl QuotaSpec {
    fn validate(&self) -> Result<quota::Limits, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        for (field, value) in [
            ("cpu_millis", self.cpu_millis),
            ("memory_mib", self.memory_mib),
            ("max_concurrent_jobs", self.max_concurrent_jobs),
            ("max_queued_jobs", self.max_queued_jobs),
        ] {
            if let Some(value) = value {
                check_range(&mut errors, field, value, 0, MAX_QUOTA);
            }
        }
        if let Some(budget) = self.monthly_budget {
            if !budget.is_finite() || !(0.0..=MAX_BUDGET).contains(&budget) {
                errors.add("monthly_budget", format!("must be between 0 and {MAX_BUDGET}, got {budget}"));
            }
        }
        errors.into_result(quota::Limits {
            cpu_millis: self.cpu_millis,
            memory_mib: self.memory_mib,
            max_concurrent_jobs: self.max_concurrent_jobs,
            max_queued_jobs: self.max_queued_jobs,
            monthly_budget: self.monthly_budget,
        })
    }

    fn from_limits(limits: &quota::Limits) -> Self {
        Self {
            cpu_millis: limits.cpu_millis,
            memory_mib: limits.memory_mib,
            max_concurrent_jobs: limits.max_concurrent_jobs,
            max_queued_jobs: limits.max_queued_jobs,
            monthly_budget: limits.monthly_budget,
        }
    }
}

/// What a tenant's jobs use now, beside its limits.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QuotaUsage {
    pub cpu_millis: i64,
    pub memory_mib: i64,
    /// Jobs assigned or running.
    pub concurrent_jobs: i64,
    /// Jobs waiting, ready or scheduled (counted up to 1,000,000).
    pub queued_jobs: i64,
    /// Cost attributed to the tenant this calendar month (from the hourly roll-up).
    pub month_cost: f64,
}

/// Jobs admitted or refused in the last 24 hours, by decision and reason.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdmissionCount {
    /// `accepted`, `redirected`, `deferred` or `rejected`.
    pub decision: String,
    /// For `deferred`: `tenant_at_quota`; for `rejected`: the limit, or `queue full`.
    pub reason: Option<String>,
    pub jobs: i64,
}

/// A tenant's limits and usage side by side.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantQuotas {
    pub tenant: String,
    /// The tenant's own limits (null: the default applies).
    pub own: QuotaSpec,
    /// The limits in force: its own, else the defaults (null: no limit).
    pub limits: QuotaSpec,
    pub usage: QuotaUsage,
    /// Whether the monthly budget is enforced here (the cost roll-up runs).
    pub budget_enforced: bool,
    /// The burst session open now, if any.
    pub burst: Option<BurstSessionView>,
    pub admissions_last_24h: Vec<AdmissionCount>,
}

/// A burst session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BurstSessionView {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    /// When it ends or ended: the planned end, or earlier when ended by hand.
    pub ended_at: DateTime<Utc>,
    /// The planned end.
    pub ends_at: DateTime<Utc>,
    /// The tenant may go up to this percentage of its quota (150 = 1.5 times).
    pub max_overage_percentage: i32,
    /// Opened by the scheduler itself (`burst_capacity.automatic`).
    pub automatic: bool,
    /// The highest use of a limited resource it reached, as a percentage of the quota.
    pub peak_percentage: f64,
    pub active: bool,
    pub remaining_seconds: i64,
}

impl From<BurstSession> for BurstSessionView {
    fn from(session: BurstSession) -> Self {
        let remaining = if session.active { (session.ended_at - Utc::now()).num_seconds().max(0) } else { 0 };
        Self {
            id: session.id,
            started_at: session.started_at,
            ended_at: session.ended_at,
            ends_at: session.ends_at,
            max_overage_percentage: session.max_overage_percentage,
            automatic: session.automatic,
            peak_percentage: session.peak_percentage,
            active: session.active,
            remaining_seconds: remaining,
        }
    }
}

/// The tenant a request may see: any for an admin, only its own for a tenant key (another
/// tenant is not found, so names do not leak).
async fn visible_tenant(state: &AppState, principal: &Principal, name: &str) -> Result<tenants::Tenant, ApiError> {
    let not_found = || ApiError::not_found(format!("no tenant named {name:?}"));
    if let Principal::Tenant { name: own, .. } = principal {
        if own != name {
            return Err(not_found());
        }
    }
    tenants::get(&state.db, name).await?.ok_or_else(not_found)
}

/// The `{tenant}` of the path, as the caller may see it: checked (with the caller's right to
/// change it, for the extractors below) before any body is read.
#[derive(Debug)]
pub struct VisibleTenant {
    pub principal: Principal,
    pub tenant: tenants::Tenant,
}

impl FromRequestParts<AppState> for VisibleTenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::bad_request("invalid_path", rejection.body_text()))?;
        let tenant = visible_tenant(state, &principal, &name).await?;
        Ok(Self { principal, tenant })
    }
}

/// A tenant whose quotas the caller may change: admins only.
#[derive(Debug)]
pub struct QuotaManager(pub tenants::Tenant);

impl FromRequestParts<AppState> for QuotaManager {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let visible = VisibleTenant::from_request_parts(parts, state).await?;
        visible.principal.require_admin()?;
        Ok(Self(visible.tenant))
    }
}

/// A tenant whose burst sessions the caller may start and end: admins, and the tenant
/// itself when `burst_capacity.tenant_may_request` is on.
#[derive(Debug)]
pub struct BurstManager {
    pub tenant: tenants::Tenant,
    pub settings: quotas::TenancySettings,
}

impl FromRequestParts<AppState> for BurstManager {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let visible = VisibleTenant::from_request_parts(parts, state).await?;
        let settings = may_change_bursts(state, &visible.principal).await?;
        Ok(Self { tenant: visible.tenant, settings })
    }
}

/// A tenant's limits, what it uses, its burst session and its recent admission decisions.
#[utoipa::path(
    get, path = "/tenants/{tenant}/quotas", tag = "quotas", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = TenantQuotas), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_quotas(
    State(state): State<AppState>,
    visible: VisibleTenant,
) -> Result<axum::Json<TenantQuotas>, ApiError> {
    Ok(axum::Json(quotas_view(&state, &visible.tenant).await?))
}

async fn quotas_view(state: &AppState, tenant: &tenants::Tenant) -> Result<TenantQuotas, ApiError> {
    let mut connection = state.db.acquire().await?;
    let own = quotas::own(&mut *connection, tenant.id).await?;
    let limits = quotas::limits(&mut *connection, tenant.id).await?;
    let used = quotas::usage(&mut *connection, tenant.id).await?;
    let queued = queue_backlog::of_tenant(&mut *connection, tenant.id, QUEUED_COUNT_CAP).await?;
    let (month_cost, _) = quotas::month_cost(&mut *connection, tenant.id).await?;
    let settings = quotas::settings(&mut *connection).await?;
    let burst = quotas::latest_session(&mut *connection, tenant.id).await?.filter(|s| s.active).map(Into::into);
    let admissions = quotas::admissions(&mut *connection, tenant.id, 24)
        .await?
        .into_iter()
        .map(|(decision, reason, jobs)| AdmissionCount { decision, reason, jobs })
        .collect();
    Ok(TenantQuotas {
        tenant: tenant.name.clone(),
        own: QuotaSpec::from_limits(&own),
        limits: QuotaSpec::from_limits(&limits),
        usage: QuotaUsage {
            cpu_millis: used.cpu_millis,
            memory_mib: used.memory_mib,
            concurrent_jobs: used.jobs,
            queued_jobs: queued,
            month_cost,
        },
        budget_enforced: settings.budget_enforced,
        burst,
        admissions_last_24h: admissions,
    })
}

/// Replace a tenant's own limits (admin). A lowered limit never stops running jobs: the
/// tenant's new jobs wait until its use is under it.
#[utoipa::path(
    put, path = "/tenants/{tenant}/quotas", tag = "quotas", request_body = QuotaSpec, security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, body = TenantQuotas),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn put_quotas(
    State(state): State<AppState>,
    QuotaManager(tenant): QuotaManager,
    Json(spec): Json<QuotaSpec>,
) -> Result<axum::Json<TenantQuotas>, ApiError> {
    let own = spec.validate()?;
    quotas::put_own(&state.db, tenant.id, &own).await?;
    state.queue_settings.tenants.forget(tenant.id);
    tracing::info!(tenant = %tenant.name, ?own, "tenant quota set");
    Ok(axum::Json(quotas_view(&state, &tenant).await?))
}

/// The jobs a dry run asks about.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnforceRequest {
    /// The tenant (required with an admin key; a tenant key may name only itself).
    #[schema(max_length = 63)]
    pub tenant: Option<String>,
    /// 1 to 1000 jobs, as a batch submission would send them.
    #[schema(min_items = 1, max_items = 1000)]
    pub jobs: Vec<JobSpec>,
}

/// What a submission of the jobs would get from the tenant's limits now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EnforceResult {
    /// `accepted` (every job may start now), `deferred` (accepted, some wait for the
    /// tenant's own jobs to free quota) or `rejected`.
    pub decision: String,
    /// The status a submission would be answered with: 201, 422 or 429.
    pub status: u16,
    /// The limit that defers or refuses (`cpu_millis`, `memory_mib`,
    /// `max_concurrent_jobs`, `max_queued_jobs`, `monthly_budget`).
    pub limit: Option<String>,
    /// What is in use of it, what the jobs ask, the limit, and by how much it would be passed.
    pub in_use: Option<f64>,
    pub requested: Option<f64>,
    pub maximum: Option<f64>,
    pub over_by: Option<f64>,
    /// When to try again (for `deferred`, guidance for clients that prefer to hold back).
    pub retry_after_seconds: Option<i64>,
    /// Indexes of the jobs that would be deferred.
    pub deferred_jobs: Vec<usize>,
    pub message: String,
}

fn enforce_result(outcome: &Result<Vec<QuotaDecision>, QuotaRejection>) -> EnforceResult {
    let base = EnforceResult {
        decision: "accepted".into(),
        status: 201,
        limit: None,
        in_use: None,
        requested: None,
        maximum: None,
        over_by: None,
        retry_after_seconds: None,
        deferred_jobs: Vec::new(),
        message: "every job is within the tenant's limits".into(),
    };
    match outcome {
        Ok(decisions) => {
            let deferred: Vec<(usize, &quota::Excess)> = decisions
                .iter()
                .enumerate()
                .filter_map(|(i, d)| match d {
                    QuotaDecision::Deferred(excess) => Some((i, excess)),
                    QuotaDecision::Accepted => None,
                })
                .collect();
            let Some((_, first)) = deferred.first() else { return base };
            EnforceResult {
                decision: "deferred".into(),
                limit: Some(first.resource.field().into()),
                in_use: Some(first.in_use as f64),
                requested: Some(first.requested as f64),
                maximum: Some(first.limit as f64),
                over_by: Some(first.over_by() as f64),
                retry_after_seconds: Some(quota::DEFERRED_RETRY_AFTER_SECONDS),
                deferred_jobs: deferred.iter().map(|(i, _)| *i).collect(),
                message: format!("accepted; {} job(s) would wait: {}", deferred.len(), first.describe()),
                ..base
            }
        }
        Err(rejection) => {
            let (status, in_use, requested, maximum) = match rejection {
                QuotaRejection::TooLarge { excess, .. } => (422, 0.0, excess.requested as f64, excess.limit as f64),
                QuotaRejection::QueuedJobs { queued, requested, limit, .. } => {
                    (429, *queued as f64, *requested as f64, *limit as f64)
                }
                QuotaRejection::Budget { spent, budget, .. } => (429, *spent, 0.0, *budget),
            };
            EnforceResult {
                decision: "rejected".into(),
                status,
                limit: Some(rejection.resource().field().into()),
                in_use: Some(in_use),
                requested: Some(requested),
                maximum: Some(maximum),
                over_by: Some((in_use + requested - maximum).max(0.0)),
                retry_after_seconds: rejection.retry_after_seconds(),
                deferred_jobs: Vec::new(),
                message: rejection.describe(),
            }
        }
    }
}

/// Dry run: would these jobs be admitted for this tenant now, as far as its limits go (a
/// queue's own size limit is not part of it)? Nothing is written.
#[utoipa::path(
    post, path = "/quotas/enforce", tag = "quotas", request_body = EnforceRequest, security(("bearer" = [])),
    responses(
        (status = 200, body = EnforceResult),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn enforce(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<EnforceRequest>,
) -> Result<axum::Json<EnforceResult>, ApiError> {
    let name = match (&principal, &request.tenant) {
        (_, Some(name)) => name.clone(),
        (Principal::Tenant { name, .. }, None) => name.clone(),
        (Principal::Admin, None) => {
            return Err(ValidationErrors::single("tenant", "required with an admin key").into());
        }
    };
    if request.jobs.is_empty() || request.jobs.len() > 1000 {
        return Err(ValidationErrors::single(
            "jobs",
            format!("must hold between 1 and 1000 jobs, got {}", request.jobs.len()),
        )
        .into());
    }
    let tenant = visible_tenant(&state, &principal, &name).await?;
    let now = Utc::now();
    let mut valid = Vec::with_capacity(request.jobs.len());
    let mut errors = ValidationErrors::new();
    for (index, spec) in request.jobs.iter().enumerate() {
        match spec.validate(now) {
            Ok(job) => valid.push(job),
            Err(job_errors) => {
                for error in job_errors.errors() {
                    errors.add(format!("jobs[{index}].{}", error.field), error.message.clone());
                }
            }
        }
    }
    errors.into_result(())?;
    let mut connection = state.db.acquire().await?;
    let limits = quotas::limits(&mut *connection, tenant.id).await?;
    let load = quotas::load(&mut connection, tenant.id, limits).await?;
    let outcome = quota::admit(&load, &crate::store::enqueue::requests(&valid));
    Ok(axum::Json(enforce_result(&outcome)))
}

/// A burst session request; absent fields take the deployment's maximum.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BurstRequest {
    /// Up to this percentage of the quota (101 to `burst_capacity.max_overage_percentage`).
    #[schema(minimum = 101, maximum = 1000)]
    pub max_overage_percentage: Option<i64>,
    /// For this many seconds (1 to `burst_capacity.burst_duration_minutes` × 60).
    #[schema(minimum = 1, maximum = 604800)]
    pub duration_seconds: Option<i64>,
}

/// A tenant's burst state: the session open now, the last one, and the cool-down.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BurstStatus {
    pub active: Option<BurstSessionView>,
    /// The latest session, open or not.
    pub latest: Option<BurstSessionView>,
    /// A new session may not start before this.
    pub cooldown_until: Option<DateTime<Utc>>,
    /// The tenant's highest use of a limited resource now, as a percentage of its quota.
    pub usage_percentage: f64,
}

/// Whether `principal` may start or end the tenant's sessions.
async fn may_change_bursts(state: &AppState, principal: &Principal) -> Result<quotas::TenancySettings, ApiError> {
    let settings = quotas::settings(&state.db).await?;
    if matches!(principal, Principal::Tenant { .. }) && !settings.burst_tenant_may_request {
        return Err(ApiError::forbidden(
            "only an admin may start or end burst sessions here (burst_capacity.tenant_may_request is off)",
        ));
    }
    Ok(settings)
}

/// The tenant's burst session, the latest one, and when a new one may start.
#[utoipa::path(
    get, path = "/tenants/{tenant}/burst", tag = "quotas", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = BurstStatus), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_burst(
    State(state): State<AppState>,
    VisibleTenant { tenant, .. }: VisibleTenant,
) -> Result<axum::Json<BurstStatus>, ApiError> {
    let mut connection = state.db.acquire().await?;
    let settings = quotas::settings(&mut *connection).await?;
    let latest = quotas::latest_session(&mut *connection, tenant.id).await?;
    let limits = quotas::limits(&mut *connection, tenant.id).await?;
    let usage = quotas::usage(&mut *connection, tenant.id).await?;
    let cooldown_until = latest
        .as_ref()
        .map(|s| s.ended_at + chrono::Duration::minutes(settings.burst_cooldown_minutes.into()))
        .filter(|until| *until > Utc::now());
    let latest: Option<BurstSessionView> = latest.map(Into::into);
    Ok(axum::Json(BurstStatus {
        active: latest.clone().filter(|s| s.active),
        latest,
        cooldown_until,
        usage_percentage: usage.peak_percentage(&limits),
    }))
}

/// Start a burst session: the tenant may go above its CPU, memory and job quotas, up to
/// the percentage, while capacity is otherwise idle, until the session ends. Running jobs
/// are never stopped when it ends; a cool-down follows.
#[utoipa::path(
    post, path = "/tenants/{tenant}/burst", tag = "quotas", request_body = BurstRequest, security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 201, body = BurstSessionView),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a session is open, the cool-down has not passed, or bursts are off", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn start_burst(
    State(state): State<AppState>,
    BurstManager { tenant, settings }: BurstManager,
    Json(request): Json<BurstRequest>,
) -> Result<Response, ApiError> {
    let max_percentage = i64::from(settings.burst_max_overage_percentage);
    let max_seconds = i64::from(settings.burst_duration_minutes) * 60;
    let percentage = request.max_overage_percentage.unwrap_or(max_percentage);
    let seconds = request.duration_seconds.unwrap_or(max_seconds);
    let mut errors = ValidationErrors::new();
    check_range(&mut errors, "max_overage_percentage", percentage, 101, max_percentage);
    check_range(&mut errors, "duration_seconds", seconds, 1, max_seconds);
    errors.into_result(())?;
    if !settings.burst_enabled {
        return Err(ApiError::conflict("burst_disabled", "burst sessions are off here (burst_capacity.enabled)"));
    }
    let mut connection = state.db.acquire().await?;
    if !quotas::limits(&mut *connection, tenant.id).await?.limits_running() {
        return Err(ApiError::unprocessable(
            "no_quota",
            format!("tenant {:?} has no CPU, memory or job quota to burst above", tenant.name),
        ));
    }
    match quotas::start_session(&mut connection, tenant.id, percentage as i32, seconds as i32).await? {
        StartBurst::Started(session) => {
            tracing::info!(tenant = %tenant.name, percentage, seconds, "burst session started");
            Ok((StatusCode::CREATED, axum::Json(BurstSessionView::from(session))).into_response())
        }
        StartBurst::AlreadyActive(session) => Err(ApiError::conflict(
            "burst_active",
            format!("tenant {:?} has a burst session open until {}", tenant.name, session.ended_at.to_rfc3339()),
        )),
        StartBurst::CoolingDown { until } => {
            let seconds = (until - Utc::now()).num_seconds().max(1);
            Err(ApiError::conflict(
                "burst_cooldown",
                format!("the last burst session ended recently; a new one may start at {}", until.to_rfc3339()),
            )
            .with_header(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds)))
        }
    }
}

/// End the tenant's burst session now. Its running jobs go on; no new job is assigned
/// above quota.
#[utoipa::path(
    delete, path = "/tenants/{tenant}/burst", tag = "quotas", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, body = BurstSessionView),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such tenant, or no session open", body = Problem, content_type = "application/problem+json")
    )
)]
async fn end_burst(
    State(state): State<AppState>,
    BurstManager { tenant, .. }: BurstManager,
) -> Result<axum::Json<BurstSessionView>, ApiError> {
    let session = quotas::end_session(&state.db, tenant.id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {:?} has no burst session open", tenant.name)))?;
    tracing::info!(tenant = %tenant.name, "burst session ended");
    Ok(axum::Json(session.into()))
}
