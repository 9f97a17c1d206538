//! The request id: taken from a valid incoming `x-request-id` or made fresh, kept for the
//! request's lifetime (`error::with_request_id`, so error bodies can quote it), attached to
//! the request's tracing span, and returned on every response.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Requests that machines make all the time: the worker protocol (but registering and
/// leaving) and the probes.
fn is_routine(route: &str) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/metrics")
        || (route.starts_with("/api/v1/workers/{id}/") && !route.ends_with("/deregister"))
}

/// Every error is a problem document: an error answered by something other than our
/// handlers (a path that is not UTF-8, a 404 of the documentation UI) is rewritten as one,
/// with the same status and, when it gave one, its text as the detail.
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(crate::error::PROBLEM_CONTENT_TYPE.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text =
        axum::body::to_bytes(body, 16 * 1024).await.map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned());
    let detail = match text {
        Ok(text) if !text.is_empty() => text,
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let code = match status {
        axum::http::StatusCode::NOT_FOUND => "not_found",
        axum::http::StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        axum::http::StatusCode::BAD_REQUEST => "bad_request",
        _ if status.is_server_error() => "internal",
        _ => "request_refused",
    };
    let mut problem = crate::error::ApiError::new(status, code, detail).into_response();
    for (name, value) in parts
        .headers
        .iter()
        .filter(|(name, _)| *name != axum::http::header::CONTENT_TYPE && *name != axum::http::header::CONTENT_LENGTH)
    {
        problem.headers_mut().insert(name.clone(), value.clone());
    }
    problem
}

pub async fn middleware(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| acceptable(id))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    let method = request.method().clone();
    let span = tracing::info_span!("request", request_id = %request_id, %method, route = %route);
    let started = Instant::now();
    let answered = async { as_problem(next.run(request).await).await };
    let mut response = crate::error::with_request_id(request_id.clone(), answered.instrument(span.clone())).await;
    let status = response.status().as_u16();
    let latency_us = started.elapsed().as_micros() as u64;
    span.in_scope(|| {
        // Heartbeats, long polls, reports and probes come every second from every worker:
        // logged at debug unless they fail, so the log shows what people did.
        if status < 400 && is_routine(&route) {
            tracing::debug!(status, latency_us, "request");
        } else if status >= 500 {
            tracing::warn!(status, latency_us, "request");
        } else {
            tracing::info!(status, latency_us, "request");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
