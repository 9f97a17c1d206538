//! The agent's connection to the API: the URLs of its replicas and fail-over between them,
//! the HTTP client, registration, and the worker-token requests (poll, reports, output,
//! heartbeat, deregistration) with their retries and what each answer means. Every body
//! sent and every reply read is a `hodei_protocol` type.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use hodei_protocol::{Assignment, Assignments, PollQuery, RegisterWorker, Registered, DEFAULT_POLL_SECONDS};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use crate::lease::Lease;

/// The API URLs given, checked.
pub fn api_urls(given: Option<&str>) -> Result<Vec<String>, String> {
    let given = given.ok_or("--api-url (or HODEI_API_URL) is required")?;
    let api_urls: Vec<String> = given.split(',').map(|url| url.trim().trim_end_matches('/').to_owned()).collect();
    if let Some(bad) = api_urls.iter().find(|url| !(url.starts_with("http://") || url.starts_with("https://"))) {
        return Err(format!("--api-url must start with http:// or https://, got {bad:?}"));
    }
    Ok(api_urls)
}

/// The HTTP client: rustls with the system's certificate store (read from disk, offline),
/// plus the authorities of `ca_file`.
pub fn client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
        let authorities = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-file {}: not PEM certificates", path.display()))?;
        if authorities.is_empty() {
            bail!("--ca-file {}: holds no certificate", path.display());
        }
        for authority in authorities {
            builder = builder.add_root_certificate(authority);
        }
    }
    Ok(builder.build()?)
}

/// The innermost cause of a failed request, with a hint when it is an untrusted certificate.
pub fn describe_request_error(error: &reqwest::Error) -> String {
    let mut innermost: &dyn std::error::Error = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let reason = innermost.to_string();
    if reason.contains("certificate") {
        format!("{reason} (the API's TLS certificate is not trusted here: pass --ca-file with its CA)")
    } else {
        reason
    }
}

/// `check`: whether the API at `api_url` is reachable and ready.
pub async fn check(client: &reqwest::Client, api_url: &str) -> anyhow::Result<()> {
    let response =
        client.get(format!("{api_url}/readyz")).send().await.map_err(|error| {
            anyhow::anyhow!("cannot reach the API at {api_url}: {}", describe_request_error(&error))
        })?;
    if !response.status().is_success() {
        bail!("API at {api_url} is not ready: HTTP {}", response.status());
    }
    println!("API at {api_url} is ready");
    Ok(())
}

/// A registration the API took.
#[derive(Debug)]
pub struct Registration {
    pub registered: Registered,
    /// When the request that got through was sent: the lease counts from then.
    pub sent_at: Instant,
    /// The replica that took it (an index into the API URLs), to carry on with.
    pub replica: usize,
}

/// Registers with the registration token, retrying with backoff (and moving to the next
/// replica) while the API is unreachable or failing. `None` if `stop` resolved first.
pub async fn register(
    client: &reqwest::Client,
    api_urls: &[String],
    registration_token: &str,
    request: &RegisterWorker,
    stop: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<Option<Registration>> {
    let mut delay = Duration::from_millis(200);
    let mut url_index = 0;
    loop {
        let api_url = &api_urls[url_index % api_urls.len()];
        url_index += 1;
        let sent_at = Instant::now();
        let attempt = client
            .post(format!("{api_url}/api/v1/workers/register"))
            .bearer_auth(registration_token)
            .json(request)
            .send()
            .await;
        match attempt {
            Ok(response) if response.status().is_success() => {
                let registered: Registered = response.json().await?;
                return Ok(Some(Registration { registered, sent_at, replica: (url_index - 1) % api_urls.len() }));
            }
            Ok(response) if response.status().is_client_error() => {
                bail!("registration refused: HTTP {}: {}", response.status(), response.text().await.unwrap_or_default())
            }
            Ok(response) => eprintln!("hodei-worker: registration failed: HTTP {}; retrying", response.status()),
            Err(error) => {
                let reason = describe_request_error(&error);
                // An untrusted certificate will not become trusted by retrying.
                if reason.contains("certificate") {
                    bail!("cannot register with the API at {api_url}: {reason}");
                }
                eprintln!("hodei-worker: cannot reach the API ({reason}); retrying");
            }
        }
        tokio::select! {
            _ = &mut *stop => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// A registered worker's connection to the API, and its lease: nothing it sends counts
/// once the lease is lost.
#[derive(Debug)]
pub struct Session {
    client: reqwest::Client,
    api_urls: Vec<String>,
    /// The replica in use; moves on when it stops answering.
    current: AtomicUsize,
    id: Uuid,
    token: String,
    pub lease: Lease,
}

/// The deregistration carries no message: an empty JSON object.
#[derive(Debug, Serialize)]
struct Empty {}

impl Session {
    /// The session of the worker `registration` registered, on the replica that took it.
    pub fn new(client: reqwest::Client, api_urls: Vec<String>, registration: &Registration, lease: Lease) -> Self {
        Self {
            client,
            api_urls,
            current: AtomicUsize::new(registration.replica),
            id: registration.registered.worker_id,
            token: registration.registered.token.clone(),
            lease,
        }
    }

    /// The worker's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    fn api_url(&self) -> &str {
        &self.api_urls[self.current.load(Ordering::Relaxed) % self.api_urls.len()]
    }

    /// After a request could not be delivered: try the next replica next time.
    fn fail_over<T>(&self, result: reqwest::Result<T>) -> reqwest::Result<T> {
        if result.as_ref().is_err_and(|error| error.is_connect() || error.is_timeout()) && self.api_urls.len() > 1 {
            self.current.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// `POST /api/v1/workers/{id}/{path}` with the worker's token, once.
    pub async fn post<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> reqwest::Result<reqwest::Response> {
        let sent = self
            .client
            .post(format!("{}/api/v1/workers/{}/{path}", self.api_url(), self.id))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await;
        self.fail_over(sent)
    }

    /// Waits for work (the long poll).
    pub async fn poll(&self) -> anyhow::Result<Vec<Assignment>> {
        let sent = self
            .client
            .get(format!("{}/api/v1/workers/{}/assignments", self.api_url(), self.id))
            .query(&PollQuery { wait_seconds: Some(DEFAULT_POLL_SECONDS) })
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let response = self.fail_over(sent)?;
        if answer(response.status()) == Answer::LeaseLost {
            self.lease.lose(token_refused("a poll"));
        }
        Ok(response.error_for_status()?.json::<Assignments>().await?.assignments)
    }

    /// Sends a report until the API takes it or refuses it, or the lease is lost. A reply
    /// is read as `R` (`()` for none).
    pub async fn report<B, R>(&self, path: &str, body: &B) -> Delivery<R>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let mut delay = Duration::from_millis(200);
        loop {
            if self.lease.is_lost() {
                return Delivery::LeaseLost;
            }
            match self.post(path, body).await {
                Ok(response) => match answer(response.status()) {
                    Answer::Taken => return Delivery::Taken(response.json().await.ok()),
                    Answer::Stale => return Delivery::Stale,
                    Answer::LeaseLost => {
                        self.lease.lose(token_refused(path));
                        return Delivery::LeaseLost;
                    }
                    Answer::Refused => {
                        let status = response.status();
                        let text: String = response.text().await.unwrap_or_default().chars().take(300).collect();
                        return Delivery::Refused(format!("the API refused it for good: HTTP {status}: {text}"));
                    }
                    Answer::Retry => eprintln!("hodei-worker: {path} failed: HTTP {}; retrying", response.status()),
                },
                Err(error) => eprintln!("hodei-worker: {path} failed: {error}; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.lease.lost() => return Delivery::LeaseLost,
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// The worker leaves; its token stops working.
    pub async fn deregister(&self) -> anyhow::Result<()> {
        self.post("deregister", &Empty {})
            .await
            .context("deregistering")?
            .error_for_status()
            .context("deregistering")?;
        Ok(())
    }
}

/// What became of a report.
#[derive(Debug)]
pub enum Delivery<R = ()> {
    /// The API took it; its reply, if it had one.
    Taken(Option<R>),
    /// Refused as stale (409): the attempt is no longer this worker's.
    Stale,
    /// Refused for good (another 4xx): sending it again would not help.
    Refused(String),
    /// The lease is lost: nothing this worker sends counts any more.
    LeaseLost,
}

/// What the API's answer to a request made with the worker's token means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Taken,
    Stale,
    /// The token is dead: the control plane counts this worker gone and gave its jobs away.
    LeaseLost,
    Refused,
    Retry,
}

pub fn answer(status: reqwest::StatusCode) -> Answer {
    match status.as_u16() {
        200..=299 => Answer::Taken,
        401 => Answer::LeaseLost,
        409 => Answer::Stale,
        408 | 429 => Answer::Retry,
        400..=499 => Answer::Refused,
        _ => Answer::Retry,
    }
}

/// Why the lease is lost when the API refuses the worker's token for `what`.
pub fn token_refused(what: &str) -> String {
    format!("the API refused this worker's token for {what} (HTTP 401): the control plane counts it gone")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_taken_stale_fatal_permanent_or_retried() {
        let cases = [
            (200, Answer::Taken),
            (204, Answer::Taken),
            (401, Answer::LeaseLost),
            (409, Answer::Stale),
            (408, Answer::Retry),
            (429, Answer::Retry),
            (400, Answer::Refused),
            (404, Answer::Refused),
            (413, Answer::Refused),
            (422, Answer::Refused),
            (500, Answer::Retry),
            (503, Answer::Retry),
        ];
        for (status, expected) in cases {
            let status = reqwest::StatusCode::from_u16(status).expect("a status");
            assert_eq!(answer(status), expected, "{status}");
        }
    }
}
