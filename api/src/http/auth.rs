//! Who is calling: the bearer key of a request, resolved to a `Principal` (or refused)
//! before the handler runs.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};

use crate::auth::{
    bearer_token, hash_key, Admin, AuthorizationHeader, Forbidden, Principal, TenantCaller, Unauthenticated,
};
use crate::error::ApiError;
use crate::http::AppState;

impl AuthorizationHeader for HeaderMap {
    fn authorization(&self) -> Option<&[u8]> {
        self.get(AUTHORIZATION).map(HeaderValue::as_bytes)
    }
}

impl From<Unauthenticated> for ApiError {
    fn from(Unauthenticated(detail): Unauthenticated) -> Self {
        ApiError::unauthorized(detail)
    }
}

impl From<Forbidden> for ApiError {
    fn from(Forbidden(detail): Forbidden) -> Self {
        ApiError::forbidden(detail)
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = bearer_token(&parts.headers)?;
        state
            .api_keys
            .resolve(&state.db, &hash_key(key))
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

impl FromRequestParts<AppState> for TenantCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let (id, name) = principal.require_tenant()?;
        Ok(TenantCaller { id, name: name.to_owned() })
    }
}
