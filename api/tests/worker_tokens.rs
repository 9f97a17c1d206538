//! Worker tokens served from memory (`worker_tokens`, fed by `loops::Notifications`)
//! against a real Postgres: a cached token needs no lookup, and a worker that is marked
//! gone, deleted, or whose replica's listener is lost, is refused again.

use std::sync::Arc;

use hodei_api::loops::Notifications;
use hodei_api::store::workers;
use hodei_api::testing::TestDatabase;
use hodei_api::worker_tokens::WorkerTokens;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[allow(dead_code)] // the shared helpers this file does not use
mod support;
use support::{end_listening_session, register_worker_with_token, until};

/// A migrated database and the process's notifications session on it, once it listens.
async fn listening() -> (TestDatabase, PgPool, CancellationToken, Arc<WorkerTokens>) {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let shutdown = CancellationToken::new();
    let tokens = Notifications::spawn(pool.clone(), shutdown.clone()).worker_tokens;
    until("the listener is connected", async || tokens.is_listening()).await;
    (database, pool, shutdown, tokens)
}

/// Changes the token stored for `worker` behind the cache's back: a resolve that still
/// answers the worker can only have come from memory.
async fn change_stored_token(pool: &PgPool, worker: Uuid) {
    sqlx::query("update workers set token_hash = $2 where id = $1")
        .bind(worker)
        .bind(Uuid::now_v7().as_bytes().to_vec())
        .execute(pool)
        .await
        .expect("change the stored token");
}

#[tokio::test]
async fn a_live_workers_token_is_served_from_memory_until_the_worker_is_gone() {
    let (_database, pool, shutdown, tokens) = listening().await;

    let (gone_token, deleted_token) = (b"token-of-a-worker-that-leaves", b"token-of-a-worker-deleted-now");
    let leaving = register_worker_with_token(&pool, 1, gone_token).await;
    let deleted = register_worker_with_token(&pool, 1, deleted_token).await;
    assert_eq!(tokens.resolve(&pool, gone_token).await.expect("resolve"), Some(leaving));
    assert_eq!(tokens.resolve(&pool, deleted_token).await.expect("resolve"), Some(deleted));
    assert_eq!(tokens.resolve(&pool, b"nobody's token").await.expect("resolve"), None);
    change_stored_token(&pool, leaving).await;
    assert_eq!(tokens.resolve(&pool, gone_token).await.expect("resolve"), Some(leaving), "served from memory");

    // Marked gone: the notification makes the replica forget it, and the lookup refuses it.
    sqlx::query("update workers set token_hash = $2 where id = $1")
        .bind(leaving)
        .bind(gone_token.to_vec())
        .execute(&pool)
        .await
        .expect("restore");
    workers::deregister(&pool, leaving).await.expect("deregister");
    until("the gone worker is refused", async || tokens.resolve(&pool, gone_token).await.expect("resolve").is_none())
        .await;
    // Deleted: the same.
    sqlx::query("delete from workers where id = $1").bind(deleted).execute(&pool).await.expect("delete");
    until("the deleted worker is refused", async || {
        tokens.resolve(&pool, deleted_token).await.expect("resolve").is_none()
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_lost_listener_empties_the_cache_until_it_is_back() {
    let (_database, pool, shutdown, tokens) = listening().await;
    let token = b"token-cached-before-the-listener-is-lost";
    let worker = register_worker_with_token(&pool, 1, token).await;
    assert_eq!(tokens.resolve(&pool, token).await.expect("resolve"), Some(worker));
    change_stored_token(&pool, worker).await;
    assert_eq!(tokens.resolve(&pool, token).await.expect("resolve"), Some(worker), "served from memory");

    // The listener's session ends (as when the database restarts): what it might have
    // missed is not trusted, so the token is looked up again, and no longer matches.
    end_listening_session(&pool).await;
    until("the cached token is dropped", async || tokens.resolve(&pool, token).await.expect("resolve").is_none()).await;
    until("a new listener is connected", async || tokens.is_listening()).await;
    shutdown.cancel();
}
