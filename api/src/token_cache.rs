//! Bearer tokens resolved without a database round trip per request: what a token hash
//! resolves to is looked up once and then served from memory, for as long as nothing can
//! have changed it unseen. Whatever would change it (a worker marked gone, a key revoked)
//! notifies a Postgres channel in the transaction that changes it; each replica listens
//! (`loops::Notifications`) and forgets what the notification names, so the next request
//! is looked up again. The replica that makes the change forgets at once, before it
//! answers. Entries are cached only while the listener is connected: when it is lost
//! (notifications may have been missed), the cache is emptied and not used again until a
//! new listener is in place. A lookup that races with a notification is not cached
//! (`generation`). The users: `worker_tokens` and `key_cache`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

/// Entries at most; past that the cache starts over.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug)]
pub struct TokenCache<V> {
    cache: Mutex<Cache<V>>,
}

#[derive(Debug)]
struct Cache<V> {
    /// A listener is connected: what is cached is forgotten when it must be.
    listening: bool,
    /// Bumped whenever something is forgotten, so a lookup that was under way does not
    /// cache what it read before.
    generation: u64,
    by_hash: HashMap<Vec<u8>, V>,
}

impl<V> Default for TokenCache<V> {
    fn default() -> Self {
        Self { cache: Mutex::new(Cache { listening: false, generation: 0, by_hash: HashMap::new() }) }
    }
}

impl<V: Clone> TokenCache<V> {
    /// What `token_hash` resolves to: from memory, or from `lookup` (cached when found).
    pub async fn resolve<F>(&self, token_hash: &[u8], lookup: F) -> sqlx::Result<Option<V>>
    where
        F: Future<Output = sqlx::Result<Option<V>>>,
    {
        let generation = {
            let cache = self.lock();
            if cache.listening {
                if let Some(value) = cache.by_hash.get(token_hash) {
                    return Ok(Some(value.clone()));
                }
            }
            cache.generation
        };
        let found = lookup.await?;
        if let Some(value) = &found {
            let mut cache = self.lock();
            if cache.listening && cache.generation == generation {
                if cache.by_hash.len() >= MAX_ENTRIES {
                    cache.by_hash.clear();
                }
                cache.by_hash.insert(token_hash.to_vec(), value.clone());
            }
        }
        Ok(found)
    }

    /// Whether entries are being cached (a listener is connected).
    pub fn is_listening(&self) -> bool {
        self.lock().listening
    }

    fn lock(&self) -> MutexGuard<'_, Cache<V>> {
        // The cache holds no invariant a panic elsewhere could break half-way.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets the entries `gone` says must go.
    pub fn forget_where(&self, gone: impl Fn(&V) -> bool) {
        let mut cache = self.lock();
        cache.generation += 1;
        cache.by_hash.retain(|_, value| !gone(value));
    }

    /// Forgets everything.
    pub fn forget_all(&self) {
        self.lock().forget_all();
    }

    /// A listening session is in place: entries may be cached.
    pub fn start_listening(&self) {
        let mut cache = self.lock();
        cache.generation += 1;
        cache.listening = true;
    }

    /// The session is gone: forget everything, and cache nothing until the next one.
    pub fn stop_listening(&self) {
        let mut cache = self.lock();
        cache.listening = false;
        cache.forget_all();
    }
}

impl<V> Cache<V> {
    fn forget_all(&mut self) {
        self.generation += 1;
        self.by_hash.clear();
    }
}
