//! Worker tokens resolved without a database round trip per request (`token_cache`). A
//! worker makes one or two requests per job (its long poll, its reports) and every one
//! of them carried a token lookup; a live worker's token now comes from memory once it
//! has been looked up.
//!
//! A worker stops being live only by being marked gone (`gone_at`: deregistration, the
//! lease reaper, scale-in, the reconciler) or deleted, and a trigger notifies
//! `hodei_worker_gone` with its id in the same transaction (migration `20261207000005`).
//! A notification forgets the worker's token, so its next request is looked up again and
//! refused. The window is the notification's delivery after the commit (milliseconds);
//! what a gone worker could send in it changes nothing, since every write of the worker
//! protocol is fenced on the worker's hold or row in its own statement.

use std::sync::Arc;

use sqlx::PgPool;
use uuid::Uuid;

use crate::store::workers;
use crate::token_cache::TokenCache;

/// The channel a worker's id is notified on when it stops being live.
pub const WORKER_GONE_CHANNEL: &str = "hodei_worker_gone";

#[derive(Debug, Default)]
pub struct WorkerTokens {
    cache: TokenCache<Uuid>,
}

impl WorkerTokens {
    /// Looks every token up in the database until a listening session starts
    /// (`loops::Notifications` drives it).
    pub fn uncached() -> Arc<Self> {
        Arc::default()
    }

    /// The live worker `token_hash` belongs to.
    pub async fn resolve(&self, db: &PgPool, token_hash: &[u8]) -> sqlx::Result<Option<Uuid>> {
        self.cache.resolve(token_hash, workers::resolve_token(db, token_hash)).await
    }

    /// Whether tokens are being cached (a listener is connected).
    pub fn is_listening(&self) -> bool {
        self.cache.is_listening()
    }

    /// Forgets `worker`'s token at once: for the replica that marks it gone itself, so
    /// its own next request is refused without waiting for the notification.
    pub fn forget(&self, worker: Uuid) {
        self.cache.forget_where(|id| *id == worker);
    }

    /// A notification on `WORKER_GONE_CHANNEL` (`loops::Notifications` listens).
    pub(crate) fn notified(&self, payload: &str) {
        match payload.parse::<Uuid>() {
            Ok(worker) => self.forget(worker),
            Err(_) => self.cache.forget_all(),
        }
    }

    /// A listening session is in place: tokens may be cached.
    pub(crate) fn start_listening(&self) {
        self.cache.start_listening();
    }

    /// The session is gone: forget everything, and cache nothing until the next one.
    pub(crate) fn stop_listening(&self) {
        self.cache.stop_listening();
    }
}
