//! API keys served from memory (`key_cache`, fed by `loops::Notifications`) against a real
//! Postgres: a cached key needs no lookup, and a key that is revoked, whose tenant is
//! deleted, or whose replica's listener is lost, is looked up again (and refused).

use std::sync::Arc;

use hodei_api::auth::{generate_key, NewKey, Principal};
use hodei_api::key_cache::ApiKeys;
use hodei_api::loops::Notifications;
use hodei_api::store::{api_keys, tenants};
use hodei_api::testing::TestDatabase;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[allow(dead_code)] // the shared helpers this file does not use
mod support;
use support::{end_listening_session, until};

/// Changes the hash stored for `key` with triggers off (no notification): a resolve that
/// still answers the key's principal can only have come from memory.
async fn change_stored_hash(pool: &PgPool, key: Uuid, hash: &[u8]) {
    let mut transaction = pool.begin().await.expect("begin");
    sqlx::query("set local session_replication_role = replica").execute(&mut *transaction).await.expect("set");
    sqlx::query("update api_keys set key_hash = $2 where id = $1")
        .bind(key)
        .bind(hash)
        .execute(&mut *transaction)
        .await
        .expect("change the stored hash");
    transaction.commit().await.expect("commit");
}

async fn tenant_key(pool: &PgPool, tenant: Uuid) -> (Uuid, NewKey) {
    let key = generate_key().expect("key");
    let id = api_keys::insert_tenant_key(pool, tenant, &key, "test").await.expect("insert").id;
    (id, key)
}

#[tokio::test]
async fn a_key_is_served_from_memory_until_it_is_revoked_or_its_tenant_deleted() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let shutdown = CancellationToken::new();
    let keys: Arc<ApiKeys> = Notifications::spawn(pool.clone(), shutdown.clone()).api_keys;
    until("the listener is connected", async || keys.is_listening()).await;
    let acme = tenants::create(&pool, "acme", 1).await.expect("tenant").id;
    let beta = tenants::create(&pool, "beta", 1).await.expect("tenant").id;
    let as_acme = Some(Principal::Tenant { id: acme, name: "acme".into() });
    let as_beta = Some(Principal::Tenant { id: beta, name: "beta".into() });
    let unknown = Uuid::now_v7().as_bytes().to_vec();

    // Revoked: the notification makes the replica forget, and the lookup refuses it.
    let (revoked, key) = tenant_key(&pool, acme).await;
    assert_eq!(keys.resolve(&pool, &key.hash).await.expect("resolve"), as_acme);
    change_stored_hash(&pool, revoked, &unknown).await;
    assert_eq!(keys.resolve(&pool, &key.hash).await.expect("resolve"), as_acme, "served from memory");
    change_stored_hash(&pool, revoked, &key.hash).await;
    assert!(api_keys::revoke(&pool, acme, revoked).await.expect("revoke"));
    until("the revoked key is refused", async || keys.resolve(&pool, &key.hash).await.expect("resolve").is_none())
        .await;

    // Deleted with its tenant: the same.
    let (deleted, key) = tenant_key(&pool, beta).await;
    assert_eq!(keys.resolve(&pool, &key.hash).await.expect("resolve"), as_beta);
    change_stored_hash(&pool, deleted, &unknown).await;
    assert_eq!(keys.resolve(&pool, &key.hash).await.expect("resolve"), as_beta, "served from memory");
    change_stored_hash(&pool, deleted, &key.hash).await;
    let mut transaction = pool.begin().await.expect("begin");
    let outcome = tenants::delete(&mut transaction, "beta").await.expect("delete");
    transaction.commit().await.expect("commit");
    assert!(matches!(outcome, tenants::DeleteOutcome::Deleted), "{outcome:?}");
    until("the deleted tenant's key is refused", async || {
        keys.resolve(&pool, &key.hash).await.expect("resolve").is_none()
    })
    .await;

    // The listening session is lost: nothing is served from memory until a new one listens.
    let (kept, key) = tenant_key(&pool, acme).await;
    assert_eq!(keys.resolve(&pool, &key.hash).await.expect("resolve"), as_acme);
    change_stored_hash(&pool, kept, &unknown).await;
    end_listening_session(&pool).await;
    until("the key is looked up again", async || keys.resolve(&pool, &key.hash).await.expect("resolve").is_none())
        .await;
    shutdown.cancel();
}
