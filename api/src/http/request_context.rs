//! The request id and the trace context. The request id: taken from a valid incoming
//! `x-request-id` or made fresh, kept for the request's lifetime
//! (`error::with_request_id`, so error bodies can quote it). The trace context (W3C
//! `traceparent`): an incoming header that parses keeps its trace and gets this request's
//! own span id; one that is absent or invalid is ignored and a new trace starts — never a
//! refusal. Both are fields of the request's tracing span, so every log line of the
//! request carries them; the trace context is a request extension
//! (`Extension<TraceParent>`, which submissions keep with their jobs); and both are
//! returned on every response.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hodei_protocol::trace_context::{self, NewTraceBytes, TraceParent};
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const TRACEPARENT_HEADER: &str = trace_context::HEADER;

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

/// Fills `bytes` from the system's randomness; should it ever fail, from the time and a
/// process-wide counter (still unique in this process, which is all a span id needs).
fn random_bytes(bytes: &mut [u8]) {
    if getrandom::getrandom(bytes).is_err() {
        let fallback = uuid::Uuid::now_v7();
        for (byte, source) in bytes.iter_mut().zip(fallback.as_bytes().iter().cycle()) {
            *byte = *source;
        }
    }
}

/// This request's trace context: the caller's trace with a new span for this hop, or a new
/// trace when the request carries no single valid `traceparent`.
fn trace_context_of(headers: &axum::http::HeaderMap) -> TraceParent {
    let mut values = headers.get_all(TRACEPARENT_HEADER).iter();
    let incoming = match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok().and_then(TraceParent::parse),
        _ => None,
    };
    let mut span_id = [0; 8];
    random_bytes(&mut span_id);
    match incoming {
        Some(incoming) => incoming.child(span_id),
        None => {
            let mut trace_id = [0; 16];
            random_bytes(&mut trace_id);
            TraceParent::new_trace(NewTraceBytes { trace_id, span_id })
        }
    }
}

pub async fn middleware(mut request: Request, next: Next) -> Response {
    let trace = trace_context_of(request.headers());
    request.extensions_mut().insert(trace);
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
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = %trace.trace_id(),
        %method,
        route = %route
    );
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
    if let Ok(value) = HeaderValue::from_str(&trace.to_string()) {
        response.headers_mut().insert(TRACEPARENT_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(TRACEPARENT_HEADER, HeaderValue::from_str(value).expect("a header value"));
        }
        headers
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_a_span_of_this_request() {
        let trace = trace_context_of(&headers(&[INCOMING]));
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(trace.parent_id(), "00f067aa0ba902b7");
        assert_eq!(trace.flags(), 1);
        assert_ne!(trace_context_of(&headers(&[INCOMING])).parent_id(), trace.parent_id());
    }

    #[test]
    fn an_absent_invalid_or_repeated_traceparent_starts_a_new_trace() {
        let uppercase = INCOMING.to_uppercase();
        for case in [vec![], vec!["garbage"], vec![uppercase.as_str()], vec![INCOMING, INCOMING]] {
            let trace = trace_context_of(&headers(&case));
            assert_ne!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736", "{case:?}");
            assert_eq!(TraceParent::parse(&trace.to_string()), Some(trace), "{case:?}");
        }
        assert_ne!(trace_context_of(&HeaderMap::new()).trace_id(), trace_context_of(&HeaderMap::new()).trace_id());
    }
}
