//! Worker tokens resolved without a database round trip per request. A worker makes one
//! or two requests per job (its long poll, its reports) and every one of them carried a
//! token lookup; a live worker's token now comes from memory once it has been looked up.
//!
//! A worker stops being live only by being marked gone (`gone_at`: deregistration, the
//! lease reaper, scale-in, the reconciler) or deleted, and a trigger notifies
//! `hodei_worker_gone` with its id in the same transaction (migration `20261207000005`).
//! Each replica listens (`loops::Notifications`); a notification forgets the worker's
//! token, so its next request is looked up again and refused. The window is the notification's
//! delivery after the commit (milliseconds); what a gone worker could send in it changes
//! nothing, since every write of the worker protocol is fenced on the worker's hold or
//! row in its own statement. Tokens are cached only while the listener is connected: when
//! it is lost (notifications may have been missed), the cache is emptied and not used
//! again until a new listener is in place. A lookup that races with a notification is not
//! cached (`generation`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::PgPool;
use uuid::Uuid;

use crate::store::workers;

/// The channel a worker's id is notified on when it stops being live.
pub const WORKER_GONE_CHANNEL: &str = "hodei_worker_gone";

/// Live workers' tokens at most; past that the cache starts over.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
pub struct WorkerTokens {
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    /// A listener is connected: what is cached is forgotten when it must be.
    listening: bool,
    /// Bumped whenever a token is forgotten, so a lookup that was under way does not
    /// cache what it read before.
    generation: u64,
    by_hash: HashMap<Vec<u8>, Uuid>,
}

impl WorkerTokens {
    /// Looks every token up in the database until a listening session starts
    /// (`loops::Notifications` drives it).
    pub fn uncached() -> Arc<Self> {
        Arc::default()
    }

    /// The live worker `token_hash` belongs to.
    pub async fn resolve(&self, db: &PgPool, token_hash: &[u8]) -> sqlx::Result<Option<Uuid>> {
        let generation = {
            let cache = self.lock();
            if cache.listening {
                if let Some(id) = cache.by_hash.get(token_hash) {
                    return Ok(Some(*id));
                }
            }
            cache.generation
        };
        let found = workers::resolve_token(db, token_hash).await?;
        if let Some(id) = found {
            let mut cache = self.lock();
            if cache.listening && cache.generation == generation {
                if cache.by_hash.len() >= MAX_ENTRIES {
                    cache.by_hash.clear();
                }
                cache.by_hash.insert(token_hash.to_vec(), id);
            }
        }
        Ok(found)
    }

    /// Whether tokens are being cached (a listener is connected).
    pub fn is_listening(&self) -> bool {
        self.lock().listening
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // The cache holds no invariant a panic elsewhere could break half-way.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets `worker`'s token at once: for the replica that marks it gone itself, so
    /// its own next request is refused without waiting for the notification.
    pub fn forget(&self, worker: Uuid) {
        let mut cache = self.lock();
        cache.generation += 1;
        cache.by_hash.retain(|_, id| *id != worker);
    }

    /// A notification on `WORKER_GONE_CHANNEL` (`loops::Notifications` listens).
    pub(crate) fn notified(&self, payload: &str) {
        match payload.parse::<Uuid>() {
            Ok(worker) => self.forget(worker),
            Err(_) => self.forget_all(),
        }
    }

    fn forget_all(&self) {
        self.lock().forget_all();
    }

    /// A listening session is in place: tokens may be cached.
    pub(crate) fn start_listening(&self) {
        let mut cache = self.lock();
        cache.generation += 1;
        cache.listening = true;
    }

    /// The session is gone: forget everything, and cache nothing until the next one.
    pub(crate) fn stop_listening(&self) {
        let mut cache = self.lock();
        cache.listening = false;
        cache.forget_all();
    }
}

impl Cache {
    fn forget_all(&mut self) {
        self.generation += 1;
        self.by_hash.clear();
    }
}
