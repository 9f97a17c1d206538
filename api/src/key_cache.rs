//! API keys resolved without a database round trip per request (`token_cache`): every
//! request of a client (a submit, a read) carried a lookup of its key.
//!
//! What a key resolves to changes only when the key is revoked or deleted (with its
//! tenant), and a statement trigger on `api_keys` notifies `hodei_api_keys` in the same
//! transaction (migration `20261207000009`). A notification forgets every cached key (keys
//! change rarely), so the next request of each is looked up again, and a revoked key is
//! refused. The replica that revokes a key or deletes a tenant forgets at once, before it
//! answers; another replica, when the notification reaches it (milliseconds after the
//! commit).

use std::sync::Arc;

use sqlx::PgPool;

use crate::auth::Principal;
use crate::store::api_keys;
use crate::token_cache::TokenCache;

/// The channel notified when keys are revoked or deleted.
pub const API_KEYS_CHANGED_CHANNEL: &str = "hodei_api_keys";

#[derive(Debug, Default)]
pub struct ApiKeys {
    cache: TokenCache<Principal>,
}

impl ApiKeys {
    /// Looks every key up in the database until a listening session starts
    /// (`loops::Notifications` drives it).
    pub fn uncached() -> Arc<Self> {
        Arc::default()
    }

    /// The principal of the live key whose hash is `key_hash`.
    pub async fn resolve(&self, db: &PgPool, key_hash: &[u8]) -> sqlx::Result<Option<Principal>> {
        self.cache.resolve(key_hash, api_keys::resolve(db, key_hash)).await
    }

    /// Whether keys are being cached (a listener is connected).
    pub fn is_listening(&self) -> bool {
        self.cache.is_listening()
    }

    /// Forgets every key: on a notification, and at once on the replica that revoked a
    /// key or deleted a tenant.
    pub fn forget_all(&self) {
        self.cache.forget_all();
    }

    pub(crate) fn start_listening(&self) {
        self.cache.start_listening();
    }

    pub(crate) fn stop_listening(&self) {
        self.cache.stop_listening();
    }
}
