//! Who is calling: the bearer key of a request, resolved to a `Principal` (or refused)
//! before the handler runs.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::auth::{hash_key, Admin, Forbidden, Principal};
use crate::error::ApiError;
use crate::http::AppState;
use crate::store;

impl From<Forbidden> for ApiError {
    fn from(Forbidden(detail): Forbidden) -> Self {
        ApiError::forbidden(detail)
    }
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

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Principal::from_request_parts(parts, state).await?.require_admin()?;
        Ok(Admin)
    }
}
