//! `/api/v1/tenants`: tenants and their API keys. Admin only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use hodei_core::names::check_resource_name;
use hodei_core::validation::check_range;
use hodei_core::ValidationErrors;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{generate_key, Admin};
use crate::error::{ApiError, Json, Problem, Query};
use crate::http::AppState;
use crate::store::api_keys;
use crate::store::tenants::{self, DeleteOutcome, DEFAULT_WEIGHT, MAX_WEIGHT};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(get_tenant, update_tenant, delete_tenant))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1–63 characters: lowercase letters, digits, `-`, `_`.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub name: String,
    /// Fair-queuing weight, 1–1000 (default 1).
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    /// Share of contended queue capacity relative to other tenants (1–1000).
    pub weight: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<tenants::Tenant> for Tenant {
    fn from(tenant: tenants::Tenant) -> Self {
        let tenants::Tenant { id, name, weight, created_at, updated_at } = tenant;
        Self { id, name, weight, created_at, updated_at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// A label for the key, e.g. `ci`.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub name: Option<String>,
}

/// A new key. `key` is shown this once; only its hash is kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewApiKey {
    pub id: Uuid,
    pub tenant: String,
    pub key: String,
    pub prefix: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A key as listed: never the key itself.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<api_keys::ApiKeyInfo> for ApiKeyInfo {
    fn from(key: api_keys::ApiKeyInfo) -> Self {
        let api_keys::ApiKeyInfo { id, prefix, name, created_at, revoked_at } = key;
        Self { id, prefix, name, created_at, revoked_at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyInfo>,
}

fn check_weight(errors: &mut ValidationErrors, weight: i64) {
    check_range(errors, "weight", weight, 1, MAX_WEIGHT as i64);
}

async fn find_tenant(state: &AppState, name: &str) -> Result<tenants::Tenant, ApiError> {
    tenants::get(&state.db, name).await?.ok_or_else(|| ApiError::not_found(format!("no tenant named {name:?}")))
}

/// Create a tenant.
#[utoipa::path(
    post, path = "/tenants", tag = "tenants", request_body = CreateTenant, security(("bearer" = [])),
    responses(
        (status = 201, body = Tenant),
        (status = 409, description = "name taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid", body = Problem, content_type = "application/problem+json")
    )
)]
async fn create_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    Json(request): Json<CreateTenant>,
) -> Result<(StatusCode, axum::Json<Tenant>), ApiError> {
    let mut errors = ValidationErrors::new();
    if let Err(message) = check_resource_name(&request.name) {
        errors.add("name", message);
    }
    let weight = request.weight.unwrap_or(DEFAULT_WEIGHT as i64);
    check_weight(&mut errors, weight);
    errors.into_result(())?;
    let tenant = tenants::create(&state.db, &request.name, weight as i32).await?;
    tracing::info!(tenant = %tenant.name, weight, "tenant created");
    Ok((StatusCode::CREATED, axum::Json(tenant.into())))
}

/// List tenants.
#[utoipa::path(get, path = "/tenants", tag = "tenants", security(("bearer" = [])), responses((status = 200, body = TenantList)))]
async fn list_tenants(State(state): State<AppState>, _admin: Admin) -> Result<axum::Json<TenantList>, ApiError> {
    Ok(axum::Json(TenantList { tenants: tenants::list(&state.db).await?.into_iter().map(Tenant::from).collect() }))
}

/// Get a tenant.
#[utoipa::path(
    get, path = "/tenants/{tenant}", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = Tenant), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<axum::Json<Tenant>, ApiError> {
    Ok(axum::Json(find_tenant(&state, &name).await?.into()))
}

/// Change a tenant's fair-queuing weight.
#[utoipa::path(
    patch, path = "/tenants/{tenant}", tag = "tenants", request_body = UpdateTenant, security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, body = Tenant),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn update_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    Json(request): Json<UpdateTenant>,
) -> Result<axum::Json<Tenant>, ApiError> {
    let mut errors = ValidationErrors::new();
    check_weight(&mut errors, request.weight);
    errors.into_result(())?;
    tenants::set_weight(&state.db, &name, request.weight as i32)
        .await?
        .map(|tenant| axum::Json(tenant.into()))
        .ok_or_else(|| ApiError::not_found(format!("no tenant named {name:?}")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteTenantQuery {
    /// Cancel the tenant's jobs that have not ended first (each with its event): waiting
    /// ones at once, ones on a worker by asking the worker to stop them. Without it, a
    /// tenant with such jobs is not deleted.
    pub cancel_jobs: Option<bool>,
}

/// Delete a tenant with its keys and finished jobs. Jobs that have not ended are never
/// discarded: without `cancel_jobs=true` the delete is refused (409, with their counts by
/// state); with it they are cancelled first, and a tenant whose jobs are still stopping on
/// workers answers 409 until they have.
#[utoipa::path(
    delete, path = "/tenants/{tenant}", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name"), DeleteTenantQuery),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "has jobs that have not ended", body = Problem, content_type = "application/problem+json")
    )
)]
async fn delete_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    Query(query): Query<DeleteTenantQuery>,
) -> Result<StatusCode, ApiError> {
    if query.cancel_jobs == Some(true) {
        let tenant = find_tenant(&state, &name).await?;
        let mut connection = state.db.acquire().await?;
        loop {
            let batch = tenants::uncancelled_jobs(&mut *connection, tenant.id, 500).await?;
            if batch.is_empty() {
                break;
            }
            for job_id in batch {
                crate::store::jobs::cancel(&mut connection, Some(tenant.id), job_id).await?;
            }
        }
    }
    let mut transaction = state.db.begin().await?;
    let outcome = tenants::delete(&mut transaction, &name).await?;
    transaction.commit().await?;
    // Its keys went with it: this replica refuses them from now on, the others when notified.
    state.api_keys.forget_all();
    match outcome {
        DeleteOutcome::Deleted => Ok(StatusCode::NO_CONTENT),
        DeleteOutcome::NotFound => Err(ApiError::not_found(format!("no tenant named {name:?}"))),
        DeleteOutcome::HasUnfinishedJobs(counts) => {
            let listed: Vec<String> = counts.iter().map(|(state, count)| format!("{count} {state}")).collect();
            let advice = if query.cancel_jobs == Some(true) {
                "their cancellation was requested from their workers; delete again once they have stopped"
            } else {
                "cancel them first, or delete with ?cancel_jobs=true"
            };
            Err(ApiError::conflict(
                "tenant_has_unfinished_jobs",
                format!("tenant {name:?} has jobs that have not ended ({}); {advice}", listed.join(", ")),
            ))
        }
    }
}

/// Issue a new API key for a tenant. The key is in the response once; only its hash is kept.
#[utoipa::path(
    post, path = "/tenants/{tenant}/api-keys", tag = "tenants", request_body(content = Option<CreateApiKey>), security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 201, body = NewApiKey), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn create_api_key(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, axum::Json<NewApiKey>), ApiError> {
    // The body is optional: an empty one, or `null`, means "no name".
    let request: CreateApiKey = if body.iter().all(u8::is_ascii_whitespace) {
        CreateApiKey::default()
    } else {
        crate::error::parse_json_body::<Option<CreateApiKey>>(&body)?.unwrap_or_default()
    };
    let key_name = request.name.unwrap_or_default();
    if key_name.len() > 200 {
        return Err(ValidationErrors::single("name", "must be at most 200 characters").into());
    }
    let tenant = find_tenant(&state, &name).await?;
    let key = generate_key()?;
    let info = api_keys::insert_tenant_key(&state.db, tenant.id, &key, &key_name).await?;
    tracing::info!(tenant = %tenant.name, key_prefix = %info.prefix, "api key issued");
    Ok((
        StatusCode::CREATED,
        axum::Json(NewApiKey {
            id: info.id,
            tenant: tenant.name,
            key: key.plaintext,
            prefix: info.prefix,
            name: info.name,
            created_at: info.created_at,
        }),
    ))
}

/// List a tenant's keys (never the keys themselves).
#[utoipa::path(
    get, path = "/tenants/{tenant}/api-keys", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = ApiKeyList), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn list_api_keys(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<axum::Json<ApiKeyList>, ApiError> {
    let tenant = find_tenant(&state, &name).await?;
    let api_keys = api_keys::list_for_tenant(&state.db, tenant.id).await?.into_iter().map(ApiKeyInfo::from).collect();
    Ok(axum::Json(ApiKeyList { api_keys }))
}

/// Revoke a tenant's key. Requests with it fail from now on.
#[utoipa::path(
    delete, path = "/tenants/{tenant}/api-keys/{key_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name"), ("key_id" = Uuid, Path, description = "Key id")),
    responses((status = 204, description = "revoked"), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn revoke_api_key(
    State(state): State<AppState>,
    _admin: Admin,
    Path((name, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = find_tenant(&state, &name).await?;
    let not_found = || ApiError::not_found(format!("tenant {name:?} has no key {key_id:?}"));
    let key_id = Uuid::parse_str(&key_id).map_err(|_| not_found())?;
    if api_keys::revoke(&state.db, tenant.id, key_id).await? {
        // This replica refuses the key from now on; the others when notified.
        state.api_keys.forget_all();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}
