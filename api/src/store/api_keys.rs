//! The `api_keys` table: hashes of admin and tenant keys, and their revocation.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::auth::{NewKey, Principal};

/// A key as listed: never the key itself.
#[derive(Debug, Clone, FromRow)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The principal a key hash belongs to, if the key exists and is not revoked.
pub async fn resolve(db: impl PgExecutor<'_>, key_hash: &[u8]) -> sqlx::Result<Option<Principal>> {
    let row: Option<(Option<Uuid>, Option<String>)> = sqlx::query_as(
        "select k.tenant_id, t.name from api_keys k left join tenants t on t.id = k.tenant_id
         where k.key_hash = $1 and k.revoked_at is null",
    )
    .bind(key_hash)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(tenant_id, tenant_name)| match (tenant_id, tenant_name) {
        (Some(id), Some(name)) => Principal::Tenant { id, name },
        _ => Principal::Admin,
    }))
}

pub async fn insert_tenant_key(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    key: &NewKey,
    name: &str,
) -> sqlx::Result<ApiKeyInfo> {
    sqlx::query_as(
        "insert into api_keys (id, tenant_id, role, key_hash, key_prefix, name) values ($1, $2, 'tenant', $3, $4, $5)
         returning id, key_prefix as prefix, name, created_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(&key.hash)
    .bind(&key.prefix)
    .bind(name)
    .fetch_one(db)
    .await
}

pub async fn insert_admin_key(db: impl PgExecutor<'_>, key: &NewKey, name: &str) -> sqlx::Result<ApiKeyInfo> {
    sqlx::query_as(
        "insert into api_keys (id, role, key_hash, key_prefix, name) values ($1, 'admin', $2, $3, $4)
         returning id, key_prefix as prefix, name, created_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(&key.hash)
    .bind(&key.prefix)
    .bind(name)
    .fetch_one(db)
    .await
}

/// Makes `key_hash` a valid admin key (the bootstrap key): idempotent, and it un-revokes
/// a bootstrap key that an operator revoked only if the configuration still names it.
pub async fn ensure_admin_key(db: impl PgExecutor<'_>, key_hash: &[u8], prefix: &str, name: &str) -> sqlx::Result<()> {
    sqlx::query(
        "insert into api_keys (id, role, key_hash, key_prefix, name) values ($1, 'admin', $2, $3, $4)
         on conflict (key_hash) do update set revoked_at = null
         where api_keys.role = 'admin'",
    )
    .bind(Uuid::now_v7())
    .bind(key_hash)
    .bind(prefix)
    .bind(name)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn list_for_tenant(db: impl PgExecutor<'_>, tenant_id: Uuid) -> sqlx::Result<Vec<ApiKeyInfo>> {
    sqlx::query_as(
        "select id, key_prefix as prefix, name, created_at, revoked_at from api_keys
         where tenant_id = $1 order by created_at, id",
    )
    .bind(tenant_id)
    .fetch_all(db)
    .await
}

/// Revokes one of a tenant's keys; false when the tenant has no such key.
pub async fn revoke(db: impl PgExecutor<'_>, tenant_id: Uuid, key_id: Uuid) -> sqlx::Result<bool> {
    let result =
        sqlx::query("update api_keys set revoked_at = coalesce(revoked_at, now()) where id = $1 and tenant_id = $2")
            .bind(key_id)
            .bind(tenant_id)
            .execute(db)
            .await?;
    Ok(result.rows_affected() == 1)
}
