//! API keys and who is calling.
//!
//! A key is `hodei_` followed by 48 hex characters (24 random bytes). Only its SHA-256 is
//! stored, so a database dump reveals no usable key; keys carry enough entropy that a
//! fast hash is the right one. Every request resolves its key to a `Principal`: an admin,
//! or exactly one tenant. A tenant principal can reach nothing outside its tenant.
//!
//! Nothing here knows about HTTP: `http::auth` reads the bearer key of a request and
//! resolves it to a `Principal`.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Read by `http::auth`; reachable here as well for the callers that import it from here.
pub use crate::http::auth::bearer_token;

pub const KEY_PREFIX: &str = "hodei_";
/// Characters of a key kept in clear to tell keys apart (`hodei_` and 8 more).
pub const VISIBLE_PREFIX_LEN: usize = 14;

/// The caller behind a request's bearer key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant { id: Uuid, name: String },
}

/// A principal asked for something its key may not do; the reason is safe to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forbidden(pub &'static str);

impl Principal {
    /// Admin only: tenants and keys are managed by admins.
    pub fn require_admin(&self) -> Result<(), Forbidden> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant { .. } => Err(Forbidden("this endpoint requires an admin key")),
        }
    }

    /// The tenant a request acts for; admins have none and cannot submit jobs.
    pub fn require_tenant(&self) -> Result<(Uuid, &str), Forbidden> {
        match self {
            Principal::Tenant { id, name } => Ok((*id, name)),
            Principal::Admin => Err(Forbidden("this endpoint acts within a tenant: use a tenant key")),
        }
    }

    /// The tenant a read is limited to: its own for a tenant key, none for an admin.
    pub fn tenant_scope(&self) -> Option<Uuid> {
        match self {
            Principal::Tenant { id, .. } => Some(*id),
            Principal::Admin => None,
        }
    }
}

/// A freshly generated key: shown to its owner once, stored only as `hash`.
#[derive(Debug)]
pub struct NewKey {
    pub plaintext: String,
    pub hash: Vec<u8>,
    pub prefix: String,
}

pub fn generate_key() -> anyhow::Result<NewKey> {
    let mut bytes = [0u8; 24];
    getrandom::getrandom(&mut bytes).map_err(|error| anyhow::anyhow!("no randomness available: {error}"))?;
    let plaintext = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    Ok(NewKey { hash: hash_key(&plaintext), prefix: visible_prefix(&plaintext), plaintext })
}

pub fn hash_key(plaintext: &str) -> Vec<u8> {
    Sha256::digest(plaintext.as_bytes()).to_vec()
}

pub fn visible_prefix(plaintext: &str) -> String {
    plaintext.chars().take(VISIBLE_PREFIX_LEN).collect()
}

/// An admin caller. As an extractor (`http::auth`) it runs before the body is read, so a
/// tenant key is refused (403) before anything it sent is looked at.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_hash_to_what_is_stored() {
        let first = generate_key().expect("key");
        let second = generate_key().expect("key");
        assert_ne!(first.plaintext, second.plaintext);
        assert!(first.plaintext.starts_with(KEY_PREFIX));
        assert_eq!(first.plaintext.len(), KEY_PREFIX.len() + 48);
        assert_eq!(first.hash, hash_key(&first.plaintext));
        assert_eq!(first.prefix, &first.plaintext[..VISIBLE_PREFIX_LEN]);
    }
}
