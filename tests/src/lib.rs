//! End-to-end harness: starts the real `hodei` binary against a real Postgres database of
//! its own and talks to it over HTTP, exactly as a client would.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub use hodei_api::testing::TestDatabase;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A binary of this workspace, built next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let test_executable = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = test_executable.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub const ADMIN_KEY: &str = "e2e-admin-key-0123456789abcdefghijklmnop";
pub const WORKER_REGISTRATION_TOKEN: &str = "e2e-worker-registration-0123456789abcdef";

/// A running `hodei serve` process; killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: tokio::process::Child,
    pub url: String,
    pub log: PathBuf,
}

impl Server {
    /// Starts `hodei serve` on `database_url` and waits until it answers `/readyz`.
    pub async fn start(database_url: &str) -> Server {
        let server = Self::spawn(database_url);
        server.wait_ready(Duration::from_secs(60)).await;
        server
    }

    /// Starts `hodei serve` without waiting for it.
    pub fn spawn(database_url: &str) -> Server {
        Self::spawn_on(database_url, free_port())
    }

    /// Starts `hodei serve` on `port` without waiting for it.
    pub fn spawn_on(database_url: &str, port: u16) -> Server {
        Self::spawn_configured(database_url, port, None, &[])
    }

    /// Starts `hodei serve` on `port` with a configuration file and extra environment.
    pub fn spawn_configured(
        database_url: &str,
        port: u16,
        config: Option<&std::path::Path>,
        environment: &[(&str, &str)],
    ) -> Server {
        let log = std::env::temp_dir().join(format!("hodei-e2e-{port}-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create the server log");
        let mut command = tokio::process::Command::new(binary("hodei"));
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let child = command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HODEI_DATABASE_URL", database_url)
            .env("HODEI_LISTEN", format!("127.0.0.1:{port}"))
            .env("HODEI_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            .env("HODEI_WORKER_REGISTRATION_TOKEN", WORKER_REGISTRATION_TOKEN)
            .env("HODEI_WORKER_HEARTBEAT_SECONDS", "1")
            .env("HODEI_WORKER_LEASE_SECONDS", "4")
            .env("HODEI_WORKER_ASSIGNMENT_TIMEOUT_SECONDS", "2")
            .env("HODEI_DATABASE_MAX_CONNECTIONS", "8")
            .env("HODEI_LOG_LEVEL", "info")
            // The tests' pools are local workers on this machine.
            .env("HODEI_PROVIDERS_LOCAL_ENABLED", "true")
            .envs(environment.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("start hodei serve");
        Server { child, url: format!("http://127.0.0.1:{port}"), log }
    }

    pub async fn wait_ready(&self, limit: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", self.url)).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "server not ready in {limit:?}; log:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_default()
    }

    /// Stops the process gracefully (SIGTERM: it drains its local workers) and waits.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.is_err() {
            self.kill().await;
        }
    }

    /// Kills the process (SIGKILL) and waits for it to end.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited (and with what status).
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn admin(&self) -> Client {
        Client::new(&self.url, Some(ADMIN_KEY))
    }

    pub fn anonymous(&self) -> Client {
        Client::new(&self.url, None)
    }

    /// Creates a tenant and returns a client holding a new key for it.
    pub async fn tenant(&self, name: &str) -> Client {
        let admin = self.admin();
        let created = admin.post("/api/v1/tenants", serde_json::json!({"name": name})).await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        let key = admin.post(&format!("/api/v1/tenants/{name}/api-keys"), serde_json::json!({"name": "e2e"})).await;
        assert_eq!(key.status, StatusCode::CREATED, "{key:?}");
        Client::new(&self.url, key.body["key"].as_str())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// An HTTP response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts this is a problem document with the given status and code.
    pub fn assert_problem(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{self:?}");
        assert_eq!(self.body["code"], code, "{self:?}");
        assert_eq!(self.body["status"], status.as_u16(), "{self:?}");
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{self:?}");
        assert_eq!(self.body["trace_id"].as_str(), self.header("x-request-id"), "{self:?}");
    }
}

/// A client with an optional bearer key.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    pub fn new(base: &str, key: Option<&str>) -> Self {
        Self { http: reqwest::Client::new(), base: base.to_owned(), key: key.map(str::to_owned) }
    }

    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the request reaches the server");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("a response body");
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply { status, headers, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(body.to_string().into_bytes()), &[]).await
    }

    pub async fn post_with(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::POST, path, Some(body.to_string().into_bytes()), headers).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None, &[]).await
    }

    /// Submits `{"command": {"argv": argv}}` and returns the created job.
    pub async fn submit(&self, argv: &[&str]) -> Value {
        let reply = self.post("/api/v1/jobs", serde_json::json!({"command": {"argv": argv}})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.body
    }
}

/// Starts a real `hodei-worker` registering with the API at `api_url`; killed when dropped.
pub fn start_worker(api_url: &str, name: &str, extra_args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(binary("hodei-worker"))
        .args(["--api-url", api_url, "run", "--name", name])
        .args(extra_args)
        .env("HODEI_WORKER_REGISTRATION_TOKEN", WORKER_REGISTRATION_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start hodei-worker")
}

/// A server on a database of its own. The server stops before its database is dropped.
#[derive(Debug)]
pub struct System {
    pub server: Server,
    pub database: TestDatabase,
}

/// A fresh, empty database and a server that applies the schema to it at start-up.
pub async fn start_system() -> System {
    let database = TestDatabase::empty().await;
    let server = Server::start(&database.url).await;
    System { server, database }
}

/// Like `start_worker`, with the agent's stderr in `log` (to quote when a test fails).
pub fn start_worker_logging_to(
    api_url: &str,
    name: &str,
    extra_args: &[&str],
    log: &std::path::Path,
) -> tokio::process::Child {
    let log = std::fs::File::create(log).expect("create the worker log");
    tokio::process::Command::new(binary("hodei-worker"))
        .args(["--api-url", api_url, "run", "--name", name])
        .args(extra_args)
        .env("HODEI_WORKER_REGISTRATION_TOKEN", WORKER_REGISTRATION_TOKEN)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start hodei-worker")
}

/// Live processes (zombies excluded) whose command line or environment contains `marker`.
pub fn processes_marked(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let contains = |bytes: &[u8]| bytes.windows(marker.len()).any(|window| window == marker.as_bytes());
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && is_alive(*pid))
        .filter(|pid| {
            ["cmdline", "environ"]
                .iter()
                .any(|file| std::fs::read(format!("/proc/{pid}/{file}")).is_ok_and(|bytes| contains(&bytes)))
        })
        .collect()
}

/// Whether process `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()?.to_owned()))
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`, ...) to process `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
    assert!(status.is_ok_and(|status| status.success()), "kill -{signal} {pid}");
}

/// Waits (up to 60 s) until job `id` is in one of `states`, and returns it.
pub async fn wait_for_state(client: &Client, id: &str, states: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = client.get(&format!("/api/v1/jobs/{id}")).await.body;
        if states.iter().any(|state| job["state"] == *state) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never reached {states:?}: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 30 s) until a worker named `name` has registered, and returns its id.
pub async fn registered_worker_id(admin: &Client, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = admin.get("/api/v1/workers").await;
        if let Some(worker) = listed.body["workers"].as_array().and_then(|w| w.iter().find(|w| w["name"] == name)) {
            return worker["id"].as_str().expect("id").to_owned();
        }
        assert!(Instant::now() < deadline, "worker {name} did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A configuration file in the temp directory, removed on drop.
#[derive(Debug)]
pub struct ConfigFile(PathBuf);

impl ConfigFile {
    pub fn new(contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hodei-e2e-config-{}-{}.yaml", std::process::id(), free_port()));
        std::fs::write(&path, contents).expect("write the config file");
        Self(path)
    }

    pub fn write(&self, contents: &str) {
        std::fs::write(&self.0, contents).expect("rewrite the config file");
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Polls `check` every 100 ms until it gives a value; fails the test after `limit`.
pub async fn wait_until<T>(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
