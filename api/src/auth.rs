//! API keys and who is calling.
//!
//! A key is `hodei_` followed by 48 hex characters (24 random bytes). Only its SHA-256 is
//! stored, so a database dump reveals no usable key; keys carry enough entropy that a
//! fast hash is the right one. Every request resolves its key to a `Principal`: an admin,
//! or exactly one tenant. A tenant principal can reach nothing outside its tenant.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::http::AppState;
use crate::store;

pub const KEY_PREFIX: &str = "hodei_";
/// Characters of a key kept in clear to tell keys apart (`hodei_` and 8 more).
pub const VISIBLE_PREFIX_LEN: usize = 14;

/// The caller behind a request's bearer key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant { id: Uuid, name: String },
}

impl Principal {
    /// Admin only: tenants and keys are managed by admins.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant { .. } => Err(ApiError::forbidden("this endpoint requires an admin key")),
        }
    }

    /// The tenant a request acts for; admins have none and cannot submit jobs.
    pub fn require_tenant(&self) -> Result<(Uuid, &str), ApiError> {
        match self {
            Principal::Tenant { id, name } => Ok((*id, name)),
            Principal::Admin => Err(ApiError::forbidden("this endpoint acts within a tenant: use a tenant key")),
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

/// The token of an `Authorization: Bearer <token>` header: API keys, worker tokens and the
/// worker registration token all arrive this way.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be 'Bearer <token>'"))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = bearer_token(&parts.headers)?;
        store::api_keys::resolve(&state.db, &hash_key(key))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))
    }
}

/// An admin caller. As an extractor it runs before the body is read, so a tenant key is
/// refused (403) before anything it sent is looked at.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Principal::from_request_parts(parts, state).await?.require_admin()?;
        Ok(Admin)
    }
}

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
