//! Test support (feature `testing`): a moto server of one's own, a fault proxy in front of
//! it for what moto cannot do (throttling, capacity errors), and settings for both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::AwsSettings;

/// How to get moto's server, for the messages of tests that need it.
pub const MOTO_INSTALL: &str = "pip install 'moto[server]'";

/// Sets the environment the SDK's standard credential chain reads to moto's dummy
/// credentials (and keeps it off the instance metadata service).
pub fn use_test_credentials() {
    for (key, value) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_SESSION_TOKEN", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        if std::env::var(key).ok().as_deref() != Some(value) {
            std::env::set_var(key, value);
        }
    }
}

/// Settings for a deployment whose AWS is at `endpoint`.
pub fn settings(endpoint: &str, deployment: &str) -> AwsSettings {
    AwsSettings {
        region: "us-east-1".to_owned(),
        endpoint_url: Some(endpoint.to_owned()),
        deployment: deployment.to_owned(),
        api_urls: "http://127.0.0.1:9".to_owned(),
        registration_token_parameter: Some(format!("/hodei/{deployment}/registration-token")),
        worker_binary: "/usr/local/bin/hodei-worker".to_owned(),
        drain_timeout_seconds: 30,
    }
}

/// A retry policy like the providers' (5 attempts), with a short backoff for tests.
pub fn fast_retry() -> aws_config::retry::RetryConfig {
    aws_config::retry::RetryConfig::standard()
        .with_max_attempts(5)
        .with_initial_backoff(Duration::from_millis(20))
        .with_max_backoff(Duration::from_millis(200))
}

/// A `moto_server` on a free loopback port, ended when dropped.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
}

impl MotoServer {
    /// Starts `moto_server` (or `$MOTO_SERVER`) and waits until it answers. Fails, naming
    /// the install command, when it is not installed.
    pub async fn start() -> Result<Self, String> {
        let program = std::env::var_os("MOTO_SERVER").map(PathBuf::from).unwrap_or_else(|| "moto_server".into());
        let port = free_port().map_err(|error| format!("no free port: {error}"))?;
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                format!("cannot start {}: {error}; install moto's server with `{MOTO_INSTALL}`", program.display())
            })?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = Self { child, addr };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("{} exited at start ({status}); is it `{MOTO_INSTALL}`?", program.display()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{} did not answer on {addr} within 30 s", program.display()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// A fault the proxy answers with instead of forwarding a request.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The query action it applies to (`RunInstances`), any if `None`.
    pub action: Option<String>,
    /// Text the form-encoded request must contain (`InstanceType=m5.large`), if any.
    pub body_contains: Option<String>,
    /// How many requests it answers before it stops; forever if `None`.
    pub times: Option<u32>,
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Fault {
    /// EC2's throttling answer (HTTP 503 `RequestLimitExceeded`) to the next `times`
    /// requests for the action.
    pub fn throttle(action: &str, times: u32) -> Self {
        Self {
            action: Some(action.to_owned()),
            body_contains: None,
            times: Some(times),
            status: 503,
            code: "RequestLimitExceeded".to_owned(),
            message: "Request limit exceeded.".to_owned(),
        }
    }

    /// EC2's `InsufficientInstanceCapacity` (HTTP 500) to every launch of the instance type.
    pub fn no_capacity(instance_type: &str) -> Self {
        Self {
            action: Some("RunInstances".to_owned()),
            body_contains: Some(format!("InstanceType={instance_type}")),
            times: None,
            status: 500,
            code: "InsufficientInstanceCapacity".to_owned(),
            message: format!(
                "We currently do not have sufficient {instance_type} capacity in the Availability Zone you requested."
            ),
        }
    }
}

#[derive(Debug, Default)]
struct ProxyState {
    faults: Vec<Fault>,
    /// Requests seen, by action.
    seen: HashMap<String, u32>,
    /// Requests answered with a fault, by action.
    faulted: HashMap<String, u32>,
}

/// A loopback HTTP proxy in front of moto that answers some requests with AWS errors.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| handle(state.clone(), upstream, request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    pub fn clear(&self) {
        self.lock().faults.clear();
    }

    /// Requests for the action the proxy received.
    pub fn seen(&self, action: &str) -> u32 {
        self.lock().seen.get(action).copied().unwrap_or(0)
    }

    /// Requests for the action it answered with a fault.
    pub fn faulted(&self, action: &str) -> u32 {
        self.lock().faulted.get(action).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    state: Arc<Mutex<ProxyState>>,
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let form = String::from_utf8_lossy(&body).into_owned();
    let action = form.split('&').find_map(|pair| pair.strip_prefix("Action=")).unwrap_or_default().to_owned();
    let fault = {
        let mut state = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *state.seen.entry(action.clone()).or_default() += 1;
        let index = state.faults.iter().position(|fault| {
            fault.action.as_deref().is_none_or(|wanted| wanted == action)
                && fault.body_contains.as_deref().is_none_or(|text| form.contains(text))
                && fault.times != Some(0)
        });
        index.map(|index| {
            let fault = &mut state.faults[index];
            if let Some(times) = &mut fault.times {
                *times -= 1;
            }
            let fault = fault.clone();
            *state.faulted.entry(action.clone()).or_default() += 1;
            fault
        })
    };
    if let Some(fault) = fault {
        return Ok(error_response(&fault, &form));
    }
    let forwarded = async {
        let stream = TcpStream::connect(upstream).await.map_err(|error| error.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|error| error.to_string())?;
        tokio::spawn(connection);
        let response = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|error| error.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|error| error.to_string())?.to_bytes();
        Ok::<_, String>(Response::from_parts(parts, Full::new(body)))
    };
    Ok(forwarded.await.unwrap_or_else(|error| {
        let mut response = Response::new(Full::new(Bytes::from(format!("proxy: {error}"))));
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        response
    }))
}

/// The error as EC2 (`Response/Errors/Error`) or as an awsQuery service such as Auto
/// Scaling (`ErrorResponse/Error`) writes it.
fn error_response(fault: &Fault, form: &str) -> Response<Full<Bytes>> {
    let request_id = uuid::Uuid::now_v7();
    let body = if form.contains("Version=2016-11-15") {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
            fault.code, fault.message
        )
    } else {
        format!(
            "<ErrorResponse><Error><Type>{}</Type><Code>{}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
            if fault.status >= 500 { "Receiver" } else { "Sender" },
            fault.code,
            fault.message
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/xml"));
    response
}
