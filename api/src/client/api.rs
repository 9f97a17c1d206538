//! Talking to the API: finding its URL and key (flags, then `HODEI_API_*`, then the
//! profile `hodei dev` writes), sending requests with a timeout, and turning every failure
//! into a `ClientError` that carries its exit code. It speaks HTTP and JSON, never tables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

use crate::client::{ClientOptions, Profile, PROFILE_FILE};

/// The directory `hodei dev` keeps its profile in, relative to where it runs.
const DEFAULT_PROFILE_DIR: &str = ".hodei";
/// The longest one request may take, from connecting to the end of the body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of a response that is not a problem document an error message quotes.
const MAX_QUOTED_BODY: usize = 200;

/// Why a client command failed; each kind has the exit code `--help` documents.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad arguments, or no URL or key to use (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The API could not be reached, or stopped answering (exit 1).
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The API answered 5xx, or something that is not what it promises (exit 1).
    #[error("{url}: {reason}")]
    Server { url: String, reason: String },
    /// 404 (exit 3).
    #[error("not found: {detail}")]
    NotFound { detail: String },
    /// Any other 4xx (exit 4).
    #[error("rejected ({status} {code}): {detail}{}", field_lines(.errors))]
    Rejected { status: u16, code: String, detail: String, errors: Vec<FieldProblem> },
    /// `jobs logs --follow` saw the job end other than succeeded (exit 5).
    #[error("job {id} ended {state}")]
    JobUnsuccessful { id: String, state: String },
    /// Stdout or stderr could not be written, e.g. a closed pipe (exit 1).
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } | ClientError::Server { .. } | ClientError::Output(_) => 1,
            ClientError::Usage(_) => 2,
            ClientError::NotFound { .. } => 3,
            ClientError::Rejected { .. } => 4,
            ClientError::JobUnsuccessful { .. } => 5,
        }
    }

    fn unexpected_answer(url: &Url, reason: impl std::fmt::Display) -> Self {
        ClientError::Server { url: url.to_string(), reason: format!("unexpected answer: {reason}") }
    }
}

/// One invalid field of a `validation_failed` problem.
#[derive(Debug, Clone, Deserialize)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

fn field_lines(errors: &[FieldProblem]) -> String {
    errors.iter().map(|error| format!("\n  {}: {}", error.field, error.message)).collect()
}

/// The parts of an RFC 9457 problem document the client reports.
#[derive(Debug, Default, Deserialize)]
struct Problem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    trace_id: String,
    #[serde(default)]
    errors: Vec<FieldProblem>,
}

/// Which of the profile's keys a command presents when none is given explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// A tenant's key: jobs, queues, dead letters.
    Tenant,
    /// The admin key: pools, workers.
    Admin,
}

/// An HTTP client bound to one API and one key.
#[derive(Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    base_url: Url,
    api_key: String,
}

impl ApiClient {
    /// Finds the URL and key: `--api-url`/`--api-key` (or `HODEI_API_URL`/`HODEI_API_KEY`),
    /// else the profile (`--profile`, or `.hodei/profile.json` when it exists), whose
    /// admin key serves `KeyRole::Admin` commands.
    pub fn connect(options: &ClientOptions, role: KeyRole) -> Result<Self, ClientError> {
        let given =
            |value: &Option<String>| value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        let (explicit_url, explicit_key) = (given(&options.api_url), given(&options.api_key));
        let profile = match (&explicit_url, &explicit_key) {
            (Some(_), Some(_)) => None,
            _ => load_profile(options.profile.as_deref())?,
        };
        let api_url = explicit_url.or_else(|| profile.as_ref().map(|p| p.api_url.clone())).ok_or_else(|| {
            ClientError::Usage(
                "no API URL: pass --api-url, set HODEI_API_URL, or run `hodei dev` here so .hodei/profile.json exists"
                    .to_owned(),
            )
        })?;
        let api_key = explicit_key
            .or_else(|| {
                profile.map(|p| match role {
                    KeyRole::Tenant => p.api_key,
                    KeyRole::Admin => p.admin_key,
                })
            })
            .ok_or_else(|| ClientError::Usage("no API key: pass --api-key or set HODEI_API_KEY".to_owned()))?;
        let base_url = parse_base_url(&api_url)?;
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("hodei-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path)
                .map_err(|error| ClientError::Usage(format!("--ca-file {}: {error}", path.display())))?;
            let authorities = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
                ClientError::Usage(format!("--ca-file {}: not PEM certificates: {error}", path.display()))
            })?;
            if authorities.is_empty() {
                return Err(ClientError::Usage(format!("--ca-file {}: holds no certificate", path.display())));
            }
            for authority in authorities {
                builder = builder.add_root_certificate(authority);
            }
        }
        let http =
            builder.build().map_err(|error| ClientError::Usage(format!("cannot set up the HTTP client: {error}")))?;
        Ok(Self { http, base_url, api_key })
    }

    /// `GET /api/v1/<path...>?<query>`.
    pub async fn get(&self, path: &[&str], query: &[(&str, String)]) -> Result<Value, ClientError> {
        self.send(self.request(Method::GET, path).query(query)).await
    }

    /// A request to `/api/v1/<path...>` with the key; each path part is one escaped segment.
    pub fn request(&self, method: Method, path: &[&str]) -> RequestBuilder {
        let mut url = self.base_url.clone();
        // Only URLs that cannot be a base refuse segments, and `parse_base_url` rejects those.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["api", "v1"]).extend(path);
        }
        self.http.request(method, url).bearer_auth(&self.api_key)
    }

    /// Sends `request` and returns the response itself when it succeeded (for a stream),
    /// or the error its status stands for.
    pub async fn open(&self, request: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let request = request.build().map_err(|error| ClientError::Usage(format!("invalid request: {error}")))?;
        let url = request.url().clone();
        let unreachable =
            |error: reqwest::Error| ClientError::Unreachable { url: origin(&url), reason: describe(&error) };
        let response = self.http.execute(request).await.map_err(unreachable)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        Err(failure(&url, status, &body))
    }

    /// Sends `request` and returns its JSON body (`null` when empty), or the error its
    /// status stands for.
    pub async fn send(&self, request: RequestBuilder) -> Result<Value, ClientError> {
        let request = request.build().map_err(|error| ClientError::Usage(format!("invalid request: {error}")))?;
        let url = request.url().clone();
        let unreachable =
            |error: reqwest::Error| ClientError::Unreachable { url: origin(&url), reason: describe(&error) };
        let response = self.http.execute(request).await.map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            if body.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&body).map_err(|error| ClientError::unexpected_answer(&url, error));
        }
        Err(failure(&url, status, &body))
    }
}

/// Keeps the pairs whose value is present, for a query string:
/// `present([("state", Some(..)), ("queue", None)])` sends only `state`.
pub fn present<const N: usize>(pairs: [(&str, Option<String>); N]) -> Vec<(&str, String)> {
    pairs.into_iter().filter_map(|(name, value)| value.map(|value| (name, value))).collect()
}

/// The error a non-success answer stands for.
fn failure(url: &Url, status: StatusCode, body: &[u8]) -> ClientError {
    let problem = serde_json::from_slice::<Problem>(body).ok().filter(|problem| !problem.detail.is_empty());
    let Some(problem) = problem else {
        let text = String::from_utf8_lossy(body);
        let quoted: String = text.trim().chars().take(MAX_QUOTED_BODY).collect();
        let detail = if quoted.is_empty() { status.to_string() } else { format!("{status}: {quoted}") };
        return match status {
            StatusCode::NOT_FOUND => ClientError::NotFound { detail },
            status if status.is_client_error() => {
                ClientError::Rejected { status: status.as_u16(), code: String::new(), detail, errors: Vec::new() }
            }
            _ => ClientError::Server { url: url.to_string(), reason: detail },
        };
    };
    match status {
        StatusCode::NOT_FOUND => ClientError::NotFound { detail: problem.detail },
        status if status.is_client_error() => ClientError::Rejected {
            status: status.as_u16(),
            code: problem.code,
            detail: problem.detail,
            errors: problem.errors,
        },
        status => ClientError::Server {
            url: url.to_string(),
            reason: format!("{status}: {} (code {}, trace id {})", problem.detail, problem.code, problem.trace_id),
        },
    }
}

/// `scheme://host:port` of `url`: what "cannot reach" is about.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The most specific reason a request failed, without repeating its URL.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return format!("no answer within {} s", REQUEST_TIMEOUT.as_secs());
    }
    let mut innermost: &dyn std::error::Error = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let reason = innermost.to_string();
    if reason.contains("certificate") {
        return format!("{reason} (the server's TLS certificate is not trusted here: pass --ca-file with its CA)");
    }
    reason
}

fn parse_base_url(text: &str) -> Result<Url, ClientError> {
    let invalid = |reason: String| ClientError::Usage(format!("API URL {text:?}: {reason}"));
    let url = Url::parse(text).map_err(|error| invalid(error.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(invalid("expected an http:// or https:// URL such as http://127.0.0.1:8080".to_owned()));
    }
    Ok(url)
}

/// The profile named by `--profile`/`HODEI_PROFILE` (which must exist), else
/// `.hodei/profile.json` if it exists.
fn load_profile(explicit: Option<&Path>) -> Result<Option<Profile>, ClientError> {
    let path = match explicit {
        Some(path) => path.to_owned(),
        None => {
            let path = PathBuf::from(DEFAULT_PROFILE_DIR).join(PROFILE_FILE);
            if !path.exists() {
                return Ok(None);
            }
            path
        }
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|error| ClientError::Usage(format!("cannot read the profile {}: {error}", path.display())))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| ClientError::Usage(format!("the profile {} is not valid: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Url {
        Url::parse("http://127.0.0.1:8080/api/v1/jobs/x").expect("url")
    }

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        let problem = |status: u16, code: &str| {
            format!(r#"{{"status":{status},"code":"{code}","detail":"because","trace_id":"t"}}"#)
        };
        let cases = [
            (StatusCode::NOT_FOUND, problem(404, "not_found"), 3),
            (StatusCode::UNPROCESSABLE_ENTITY, problem(422, "validation_failed"), 4),
            (StatusCode::CONFLICT, problem(409, "job_finished"), 4),
            (StatusCode::UNAUTHORIZED, problem(401, "unauthorized"), 4),
            (StatusCode::INTERNAL_SERVER_ERROR, problem(500, "internal"), 1),
            (StatusCode::BAD_GATEWAY, "<html>proxy says no</html>".to_owned(), 1),
            (StatusCode::NOT_FOUND, String::new(), 3),
        ];
        for (status, body, exit_code) in cases {
            assert_eq!(failure(&url(), status, body.as_bytes()).exit_code(), exit_code, "{status} {body}");
        }
    }

    #[test]
    fn a_rejection_names_its_code_detail_and_fields() {
        let body = r#"{"status":422,"code":"validation_failed","detail":"invalid job","trace_id":"t",
            "errors":[{"field":"priority","message":"must be between 1 and 10, got 11"}]}"#;
        let message = failure(&url(), StatusCode::UNPROCESSABLE_ENTITY, body.as_bytes()).to_string();
        assert_eq!(
            message,
            "rejected (422 validation_failed): invalid job\n  priority: must be between 1 and 10, got 11"
        );
    }

    #[test]
    fn only_present_query_values_are_sent() {
        let query = present([("state", Some("queued".to_owned())), ("queue", None), ("limit", Some("5".to_owned()))]);
        assert_eq!(query, [("state", "queued".to_owned()), ("limit", "5".to_owned())]);
    }

    #[test]
    fn the_base_url_must_be_http() {
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("https://hodei.example.com/prefix/").is_ok());
        for bad in ["127.0.0.1:8080", "ftp://host", "mailto:someone@example.com", ""] {
            assert_eq!(parse_base_url(bad).map_err(|e| e.exit_code()).err(), Some(2), "{bad}");
        }
    }
}
