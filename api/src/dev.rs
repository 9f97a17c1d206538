//! `hodei dev`: a complete local system from one command. Uses the configured database,
//! or creates (first run) and starts an embedded cluster under the dev data directory;
//! applies migrations; makes sure a `dev` tenant exists with a key; serves the API with a
//! static `local` pool of workers (unless the configuration declares pools); and on Ctrl-C
//! stops everything it started.
//!
//! The keys are written to `<data dir>/profile.json` (mode 0600) so the next run, and
//! command-line clients, can reuse them: the database keeps only their hashes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use sqlx::{Executor, PgPool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{generate_key, hash_key};
use crate::client::{print_quietly, Profile, PROFILE_FILE};
use crate::config::{Config, Secret};
use crate::embedded_postgres::{EmbeddedCluster, PostgresInstallation};
use crate::{serve, store};
use hodei_core::autoscale::{Cooldown, ScalingSpec};
use hodei_core::placement::Strategy;
use hodei_core::pool::{HealthSettings, PoolKindName, PoolSpec, ProvisioningSettings, WorkerTemplate};

pub const DEV_TENANT: &str = "dev";
const DEV_DATABASE: &str = "hodei";

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let data_dir = config.dev_data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;

    let (database_url, cluster) = match &config.database_url {
        Some(url) => (url.expose().to_owned(), None),
        None => {
            let cluster = tokio::task::spawn_blocking({
                let pg_dir = data_dir.join("postgres");
                move || -> anyhow::Result<(EmbeddedCluster, bool)> {
                    let cluster = EmbeddedCluster::open_or_init(PostgresInstallation::discover()?, &pg_dir)?;
                    let started = cluster.start()?;
                    Ok((cluster, started))
                }
            })
            .await??;
            let (cluster, started) = cluster;
            tracing::info!(port = cluster.port(), data_dir = %cluster.data_dir().display(), started, "embedded Postgres ready");
            create_database_if_missing(&cluster.url("postgres"), DEV_DATABASE).await?;
            (cluster.url(DEV_DATABASE), Some(cluster))
        }
    };

    let result = serve_dev(config, &database_url, &data_dir).await;

    if let Some(cluster) = cluster {
        tracing::info!("stopping embedded Postgres");
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
    }
    result
}

async fn serve_dev(config: &Config, database_url: &str, data_dir: &Path) -> anyhow::Result<()> {
    let pool = serve::prepare_database(config, database_url).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the listen address {}", config.listen))?;
    let address = listener.local_addr()?;
    let api_url = format!("http://{address}");
    let profile = ensure_profile(&pool, data_dir, &api_url).await?;
    print_banner(&profile, &data_dir.join(PROFILE_FILE));

    // A static pool of real local workers, registered with a token made for this run.
    let mut config = config.clone();
    config
        .worker_registration_token
        .get_or_insert_with(|| Secret::new(generate_key().map(|k| k.plaintext).unwrap_or_default()));
    config.default_pools = vec![local_pool()];
    // The whole system on one machine: its workers are local processes.
    config.providers.local.enabled.get_or_insert(true);
    config.local_worker_log_dir.get_or_insert_with(|| data_dir.join("workers"));
    // Costs show within a minute (unless the configuration chose another interval).
    if config.cost_tracking.rollup_interval_seconds
        == crate::config::CostTrackingConfig::default().rollup_interval_seconds
    {
        config.cost_tracking.rollup_interval_seconds = 60;
    }
    let shutdown = CancellationToken::new();
    serve::cancel_on_signals(shutdown.clone());
    // On Ctrl-C the API drains first; then the workers finish what they run and leave.
    let served = serve::serve_http(&config, pool.clone(), listener, shutdown).await;
    pool.close().await;
    served
}

/// The most workers `hodei dev`'s local pool scales out to.
pub const LOCAL_WORKERS: u32 = 4;

/// The pool `hodei dev` runs when the configuration declares none.
/// This machine's CPUs, in millicores.
fn host_cpu_millis() -> u32 {
    std::thread::available_parallelism().map_or(1000, |cpus| cpus.get() as u32 * 1000)
}

/// One local worker's share of `total`: half of it. Two workers together offer what the
/// machine has; at four the pool promises twice that (a local worker's capacity is a
/// budget it offers the scheduler, not a reservation), so a default job (1 CPU, 512 MiB)
/// fits one worker even on a two-core machine.
fn share(total: u32) -> u32 {
    (total / 2).max(1)
}

pub fn local_pool() -> PoolSpec {
    PoolSpec {
        id: "local".to_owned(),
        // Dynamic: one worker waits; a burst of jobs scales the pool out to four, and
        // workers idle for 30 s are scaled back in.
        kind: PoolKindName::Dynamic,
        provider: "local".to_owned(),
        size: None,
        min_size: Some(1),
        max_size: Some(LOCAL_WORKERS),
        scaling: ScalingSpec {
            idle_seconds: 30,
            cooldown: Cooldown { scale_out_seconds: 0, scale_in_seconds: 10, scale_in_step: None },
            ..ScalingSpec::default()
        },
        cloud: None,
        strategy: Strategy::BestFit,
        // The workers share this machine: each offers half of it (see `share`).
        template: WorkerTemplate {
            slots: Some(2),
            cpu_millis: Some(share(host_cpu_millis())),
            memory_mib: Some(share(crate::provider::host_memory_mib())),
            ..WorkerTemplate::default()
        },
        health: HealthSettings::default(),
        provisioning: ProvisioningSettings::default(),
    }
}

async fn create_database_if_missing(server_url: &str, database: &str) -> anyhow::Result<()> {
    let pool = crate::db::connect(server_url, 1).await?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(database)
        .fetch_one(&pool)
        .await?;
    if !exists {
        pool.execute(format!("create database {database}").as_str()).await?;
    }
    pool.close().await;
    Ok(())
}

/// `hodei dev keys`: the banner again, from the profile the running `hodei dev` wrote.
pub fn print_keys(config: &Config) -> anyhow::Result<()> {
    let path = config.dev_data_dir.join(PROFILE_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is `hodei dev` running from this directory?)", path.display()))?;
    let profile: Profile =
        serde_json::from_str(&text).with_context(|| format!("{} is not a profile", path.display()))?;
    print_banner(&profile, &path);
    Ok(())
}

/// Reuses the keys in the profile while they still work; otherwise issues new ones.
async fn ensure_profile(pool: &PgPool, data_dir: &Path, api_url: &str) -> anyhow::Result<Profile> {
    let path = data_dir.join(PROFILE_FILE);
    let previous: Option<Profile> =
        std::fs::read_to_string(&path).ok().and_then(|text| serde_json::from_str(&text).ok());

    let tenant = match store::tenants::get(pool, DEV_TENANT).await? {
        Some(tenant) => tenant,
        None => store::tenants::create(pool, DEV_TENANT, 1).await?,
    };
    let still_valid = |key: &str| {
        let hash = hash_key(key);
        async move { store::api_keys::resolve(pool, &hash).await }
    };

    let api_key = match &previous {
        Some(profile) if still_valid(&profile.api_key).await?.is_some() => profile.api_key.clone(),
        _ => {
            let key = generate_key()?;
            store::api_keys::insert_tenant_key(pool, tenant.id, &key, "hodei dev").await?;
            key.plaintext
        }
    };
    let admin_key = match &previous {
        Some(profile) if still_valid(&profile.admin_key).await?.is_some() => profile.admin_key.clone(),
        _ => {
            let key = generate_key()?;
            store::api_keys::insert_admin_key(pool, &key, "hodei dev").await?;
            key.plaintext
        }
    };
    let profile = Profile { api_url: api_url.to_owned(), tenant: DEV_TENANT.to_owned(), api_key, admin_key };
    std::fs::write(&path, serde_json::to_vec_pretty(&profile)?)
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(profile)
}

fn print_banner(profile: &Profile, profile_path: &Path) {
    print_quietly(&banner(profile, profile_path));
}

/// What `hodei dev` prints when it is up, and `hodei dev keys` prints again.
pub fn banner(profile: &Profile, profile_path: &Path) -> String {
    let url = &profile.api_url;
    format!(
        "\nHodei is running.\n\
         \n  API        {url}/api/v1\
         \n  Docs       {url}/docs\
         \n  OpenAPI    {url}/api/v1/openapi.json\
         \n  Tenant     {tenant}\
         \n  API key    {key}\
         \n  Admin key  {admin}\
         \n  Profile    {profile_path}\
         \n\nSubmit a job and follow its output (from this directory):\n  \
         ID=$({hodei} jobs submit -- echo hello) && {hodei} jobs logs \"$ID\" --follow\n\
         \nor with curl:\n  curl -s -X POST {url}/api/v1/jobs -H 'Authorization: Bearer {key}' \\\n    \
         -H 'Content-Type: application/json' -d '{{\"command\": {{\"argv\": [\"echo\", \"hello\"]}}}}'\n\
         \nPress Ctrl-C to stop; `{hodei} dev keys` prints this again.\n",
        tenant = profile.tenant,
        key = profile.api_key,
        admin = profile.admin_key,
        profile_path = profile_path.display(),
        hodei = invoked_as(),
    )
}

/// The command as it was started (`target/debug/hodei`), so the commands printed work
/// as they are; `hodei` when it was found on the PATH.
fn invoked_as() -> String {
    std::env::args().next().filter(|name| name.contains('/')).unwrap_or_else(|| "hodei".to_owned())
}
