//! `/api/v1/tenants`: tenants and their API keys. Admin only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use hodei_core::names::check_resource_name;
use hodei_core::validation::check_range;
use hodei_core::ValidationErrors;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{generate_key, Principal};
use crate::error::{ApiError, Json, Problem};
use crate::http::AppState;
use crate::store::api_keys::{self, ApiKeyInfo};
use crate::store::tenants::{self, DeleteOutcome, Tenant, DEFAULT_WEIGHT, MAX_WEIGHT};

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

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// A label for the key, e.g. `ci`.
    #[serde(default)]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyInfo>,
}

fn check_weight(errors: &mut ValidationErrors, weight: i64) {
    check_range(errors, "weight", weight, 1, MAX_WEIGHT as i64);
}

async fn find_tenant(state: &AppState, name: &str) -> Result<Tenant, ApiError> {
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
    principal: Principal,
    Json(request): Json<CreateTenant>,
) -> Result<(StatusCode, axum::Json<Tenant>), ApiError> {
    principal.require_admin()?;
    let mut errors = ValidationErrors::new();
    if let Err(message) = check_resource_name(&request.name) {
        errors.add("name", message);
    }
    let weight = request.weight.unwrap_or(DEFAULT_WEIGHT as i64);
    check_weight(&mut errors, weight);
    errors.into_result(())?;
    let tenant = tenants::create(&state.db, &request.name, weight as i32).await?;
    tracing::info!(tenant = %tenant.name, weight, "tenant created");
    Ok((StatusCode::CREATED, axum::Json(tenant)))
}

/// List tenants.
#[utoipa::path(get, path = "/tenants", tag = "tenants", security(("bearer" = [])), responses((status = 200, body = TenantList)))]
async fn list_tenants(State(state): State<AppState>, principal: Principal) -> Result<axum::Json<TenantList>, ApiError> {
    principal.require_admin()?;
    Ok(axum::Json(TenantList { tenants: tenants::list(&state.db).await? }))
}

/// Get a tenant.
#[utoipa::path(
    get, path = "/tenants/{tenant}", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = Tenant), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn get_tenant(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<axum::Json<Tenant>, ApiError> {
    principal.require_admin()?;
    Ok(axum::Json(find_tenant(&state, &name).await?))
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
    principal: Principal,
    Path(name): Path<String>,
    Json(request): Json<UpdateTenant>,
) -> Result<axum::Json<Tenant>, ApiError> {
    principal.require_admin()?;
    let mut errors = ValidationErrors::new();
    check_weight(&mut errors, request.weight);
    errors.into_result(())?;
    tenants::set_weight(&state.db, &name, request.weight as i32)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("no tenant named {name:?}")))
}

/// Delete a tenant with its keys and finished jobs. Refused while it has active jobs.
#[utoipa::path(
    delete, path = "/tenants/{tenant}", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "has active jobs", body = Problem, content_type = "application/problem+json")
    )
)]
async fn delete_tenant(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    let mut transaction = state.db.begin().await?;
    let outcome = tenants::delete(&mut transaction, &name).await?;
    transaction.commit().await?;
    match outcome {
        DeleteOutcome::Deleted => Ok(StatusCode::NO_CONTENT),
        DeleteOutcome::NotFound => Err(ApiError::not_found(format!("no tenant named {name:?}"))),
        DeleteOutcome::HasActiveJobs(count) => Err(ApiError::conflict(
            "tenant_has_active_jobs",
            format!("tenant {name:?} has {count} queued or running jobs; cancel them first"),
        )),
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
    principal: Principal,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, axum::Json<NewApiKey>), ApiError> {
    principal.require_admin()?;
    // The body is optional: an empty one means "no name".
    let request: CreateApiKey = if body.iter().all(u8::is_ascii_whitespace) {
        CreateApiKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| ApiError::unprocessable("invalid_body", error.to_string()))?
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
    principal: Principal,
    Path(name): Path<String>,
) -> Result<axum::Json<ApiKeyList>, ApiError> {
    principal.require_admin()?;
    let tenant = find_tenant(&state, &name).await?;
    Ok(axum::Json(ApiKeyList { api_keys: api_keys::list_for_tenant(&state.db, tenant.id).await? }))
}

/// Revoke a tenant's key. Requests with it fail from now on.
#[utoipa::path(
    delete, path = "/tenants/{tenant}/api-keys/{key_id}", tag = "tenants", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "Tenant name"), ("key_id" = Uuid, Path, description = "Key id")),
    responses((status = 204, description = "revoked"), (status = 404, body = Problem, content_type = "application/problem+json"))
)]
async fn revoke_api_key(
    State(state): State<AppState>,
    principal: Principal,
    Path((name, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    principal.require_admin()?;
    let tenant = find_tenant(&state, &name).await?;
    let not_found = || ApiError::not_found(format!("tenant {name:?} has no key {key_id:?}"));
    let key_id = Uuid::parse_str(&key_id).map_err(|_| not_found())?;
    if api_keys::revoke(&state.db, tenant.id, key_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}
