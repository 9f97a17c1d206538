//! What the benchmarks share: a `hodei serve` child process to measure, a tenant to
//! submit as, and percentiles.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::auth::generate_key;
use crate::config::Config;

/// A `hodei serve` child process, killed when dropped.
#[derive(Debug)]
pub(crate) struct ChildServer {
    _child: tokio::process::Child,
}

impl ChildServer {
    /// The server's process id, while it runs.
    pub(crate) fn id(&self) -> Option<u32> {
        self._child.id()
    }
}

/// The registration token the benchmark's own server and workers share.
pub(crate) const BENCH_REGISTRATION_TOKEN: &str = "hodei-bench-registration-token-0123456789";

/// Starts `hodei serve` as a child process on a free port against the configured database,
/// with extra `HODEI_*` settings for the server (they win over the benchmark's own
/// environment, which the server otherwise inherits): the server, its URL, its admin key.
pub(crate) async fn start_server_with_env(
    config: &Config,
    extra_env: &[(&str, String)],
) -> anyhow::Result<(ChildServer, String, String)> {
    let database_url = config.require_database_url()?.expose().to_owned();
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let admin_key = generate_key()?.plaintext;
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("HODEI_WORKER_REGISTRATION_TOKEN", BENCH_REGISTRATION_TOKEN)
        .env("HODEI_DATABASE_URL", database_url)
        .env("HODEI_LISTEN", format!("127.0.0.1:{port}"))
        .env("HODEI_BOOTSTRAP_ADMIN_KEY", &admin_key)
        .env("HODEI_LOG_LEVEL", "warn")
        // Benchmarks that need workers run them as local processes.
        .env("HODEI_PROVIDERS_LOCAL_ENABLED", "true")
        .env_remove("HODEI_CONFIG")
        .envs(extra_env.iter().map(|(name, value)| (*name, value.as_str())))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting hodei serve")?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the server did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((ChildServer { _child: child }, url, admin_key))
}

pub(crate) async fn create_bench_tenant(
    client: &reqwest::Client,
    url: &str,
    admin_key: &str,
) -> anyhow::Result<String> {
    let name = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let response =
        client.post(format!("{url}/api/v1/tenants")).bearer_auth(admin_key).json(&json!({"name": name})).send().await?;
    if !response.status().is_success() {
        bail!("creating the bench tenant: {} {}", response.status(), response.text().await.unwrap_or_default());
    }
    let response = client.post(format!("{url}/api/v1/tenants/{name}/api-keys")).bearer_auth(admin_key).send().await?;
    if !response.status().is_success() {
        bail!("creating the bench key: {}", response.status());
    }
    let body: serde_json::Value = response.json().await?;
    body["key"].as_str().map(str::to_owned).context("the key response has no key")
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}
