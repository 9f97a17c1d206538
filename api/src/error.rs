//! The one HTTP error type. Renders RFC 9457 `application/problem+json` with a stable,
//! machine-readable `code`. Client errors carry a message safe to show; internal errors
//! become an opaque 500 that names the request's trace id and are logged once, here.

use std::future::Future;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hodei_core::{FieldError, ValidationErrors};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `answer` (a request's handling) with `request_id` as the id its error bodies
/// quote; `http::request_context` calls it for every request.
pub async fn with_request_id<F: Future>(request_id: String, answer: F) -> F::Output {
    REQUEST_ID.scope(request_id, answer).await
}

/// The current request's id, or `-` outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| "-".to_owned())
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem kind: `urn:hodei:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `validation_failed`, `not_found`, `queue_full`.
    pub code: String,
    /// The request id, also sent as the `x-request-id` header and written in the logs.
    pub trace_id: String,
    /// For `validation_failed`: every invalid field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// An error returned by a handler.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    internal: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), errors: Vec::new(), headers: Vec::new(), internal: None }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn validation(errors: ValidationErrors) -> Self {
        let mut error = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", errors.to_string());
        error.errors = errors.errors().to_vec();
        error
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        let mut api_error = Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal server error");
        api_error.internal = Some(error.into());
        api_error
    }

    /// The fields the problem is about, as in a validation failure's `errors`.
    pub fn with_errors(mut self, errors: ValidationErrors) -> Self {
        self.errors = errors.errors().to_vec();
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> Self {
        Self::validation(errors)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        // Named constraints are part of the schema's contract and map to client errors;
        // anything else is ours to fix.
        if let Some(db_error) = error.as_database_error() {
            if db_error.constraint() == Some("tenants_name_key") {
                return Self::conflict("tenant_exists", "a tenant with this name already exists");
            }
            if db_error.constraint() == Some("schedules_tenant_name_key") {
                return Self::conflict("schedule_exists", "the tenant already has a schedule with this name");
            }
        }
        Self::internal(error)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        Self::internal(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let trace_id = current_request_id();
        let detail = match &self.internal {
            Some(error) => {
                // Named `request_id`: the request's span already carries the W3C trace id
                // as `trace_id` (`http::request_context`).
                tracing::error!(request_id = %trace_id, error = format!("{error:#}"), "internal error");
                format!("internal server error; quote trace id {trace_id} when reporting it")
            }
            None => self.detail,
        };
        let problem = Problem {
            problem_type: format!("urn:hodei:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail,
            code: self.code.to_owned(),
            trace_id,
            errors: self.errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// `axum::Json` whose rejections (malformed JSON, unknown fields, wrong types, missing
/// content type, oversized body) are problem documents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is larger than this endpoint accepts",
                )
            } else {
                ApiError::bad_request("invalid_body", rejection.body_text())
            }
        })?;
        parse_json_body(&bytes).map(Json)
    }
}

/// `application/json`, or any `+json` type.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a request body: a syntax error is 400 `malformed_json`, a document of the wrong
/// shape 422 `invalid_body` naming the field. A whole number written as a float (`399.0`)
/// counts as that number wherever an integer is expected: JSON does not tell the two
/// apart, and many clients write every number as a float.
pub fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| (error.path().to_string(), error.into_inner()))
        .and_then(|value| deserializer.end().map(|()| value).map_err(|error| (".".to_owned(), error)));
    match parsed {
        Ok(value) => Ok(value),
        Err((_, first)) if first.is_data() && first.to_string().contains("floating point") => {
            let mut document: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|error| body_error(".", &error))?;
            whole_floats_to_integers(&mut document);
            serde_path_to_error::deserialize(document)
                .map_err(|error| body_error(&error.path().to_string(), error.inner()))
        }
        Err((path, error)) => Err(body_error(&path, &error)),
    }
}

fn body_error(path: &str, inner: &serde_json::Error) -> ApiError {
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {inner}"));
    }
    let detail = if path == "." { inner.to_string() } else { format!("{path}: {inner}") };
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
        format!("Failed to deserialize the JSON body into the target type: {detail}"),
    )
}

fn whole_floats_to_integers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(number) => {
            if let Some(float) = number.as_f64().filter(|_| number.is_f64()) {
                if float.fract() == 0.0 && float.abs() < 9.0e15 {
                    *value = serde_json::Value::from(float as i64);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(whole_floats_to_integers),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(whole_floats_to_integers),
        _ => {}
    }
}

/// `axum::extract::Query` whose rejections are problem documents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", rejection.body_text())
}

/// Fallback for unknown paths.
pub async fn route_not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Fallback for a known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not accept that method")
}
