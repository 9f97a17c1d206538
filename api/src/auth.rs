//! API keys and who is calling.
//!
//! A key is `hodei_` followed by 48 hex characters (24 random bytes). Only its SHA-256 is
//! stored, so a database dump reveals no usable key; keys carry enough entropy that a
//! fast hash is the right one. Every request resolves its key to a `Principal`: an admin,
//! or exactly one tenant. A tenant principal can reach nothing outside its tenant.
//!
//! Nothing here knows about HTTP: `http::auth` hands a request's headers to
//! `bearer_token` and resolves the key to a `Principal`.

use sha2::{Digest, Sha256};
use uuid::Uuid;

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

/// Where a request's `Authorization` header is read from (`http::auth` implements it for
/// the HTTP header map).
pub trait AuthorizationHeader {
    /// The header's value, if the request has one.
    fn authorization(&self) -> Option<&[u8]>;
}

/// A request without a usable key; the reason is safe to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unauthenticated(pub &'static str);

/// The token of an `Authorization: Bearer <token>` header: API keys, worker tokens and the
/// worker registration token all arrive this way. The value must be header text (visible
/// ASCII and tabs).
pub fn bearer_token<H: AuthorizationHeader + ?Sized>(headers: &H) -> Result<&str, Unauthenticated> {
    let header = headers.authorization().ok_or(Unauthenticated("missing Authorization: Bearer <token> header"))?;
    Some(header)
        .filter(|value| value.iter().all(|&byte| byte == b'\t' || (32..127).contains(&byte)))
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or(Unauthenticated("the Authorization header must be 'Bearer <token>'"))
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

/// A tenant caller, for what acts within a tenant (an admin key cannot). As an extractor
/// (`http::auth`) it runs before the body is read, like `Admin`.
#[derive(Debug, Clone)]
pub struct TenantCaller {
    pub id: Uuid,
    pub name: String,
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

    struct Header(Option<&'static [u8]>);

    impl AuthorizationHeader for Header {
        fn authorization(&self) -> Option<&[u8]> {
            self.0
        }
    }

    #[test]
    fn bearer_tokens_are_read_from_header_text_only() {
        assert_eq!(bearer_token(&Header(Some(b"Bearer hodei_abc"))), Ok("hodei_abc"));
        assert_eq!(bearer_token(&Header(Some(b"Bearer  hodei_abc\t"))), Ok("hodei_abc"));
        assert!(bearer_token(&Header(None)).is_err_and(|refused| refused.0.starts_with("missing")));
        for refused in [&b"Basic hodei_abc"[..], b"Bearer ", b"bearer hodei_abc", "Bearer hodéi".as_bytes()] {
            assert_eq!(
                bearer_token(&Header(Some(refused))),
                Err(Unauthenticated("the Authorization header must be 'Bearer <token>'"))
            );
        }
    }
}
