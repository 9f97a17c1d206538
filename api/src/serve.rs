//! Running the control plane: prepare the database, then serve HTTP until shut down.

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{hash_key, visible_prefix};
use crate::config::Config;
use crate::http::workers::WorkerSettings;
use crate::http::{app, metrics_app, AppState};
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hodei_core::ordering::PolicyRegistry;
use hodei_core::pool::PoolSpec;

use crate::loops::{CostRollup, LeaseReaper, Notifications, Promoter, Scheduler, SpotPriceRefresh};
use crate::provider::{LocalProvider, LocalSettings, Providers};
use crate::reconcile::Reconciler;
use crate::store::assignment::Timeouts;
use crate::{db, store};

/// Connects, applies migrations (safe when replicas start together), and installs the
/// bootstrap admin key if one is configured.
pub async fn prepare_database(config: &Config, database_url: &str) -> anyhow::Result<PgPool> {
    let pool = db::connect(database_url, config.database_max_connections).await?;
    db::migrate(&pool).await?;
    if let Some(key) = &config.bootstrap_admin_key {
        store::api_keys::ensure_admin_key(&pool, &hash_key(key.expose()), &visible_prefix(key.expose()), "bootstrap")
            .await
            .context("installing the bootstrap admin key")?;
    }
    Ok(pool)
}

/// Serves the API on `listener`, and runs the background loops, until `shutdown` is
/// cancelled; then drains in-flight requests.
pub async fn serve_http(
    config: &Config,
    pool: PgPool,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let address = listener.local_addr().context("reading the listen address")?;
    let workers = WorkerSettings::new(
        config.worker_registration_token.as_ref().map(|token| token.expose()),
        config.worker_heartbeat_seconds,
        config.worker_lease_seconds,
    );
    let notifications = Notifications::spawn(pool.clone(), shutdown.clone());
    let (assigned, ready) = (notifications.assigned.clone(), notifications.ready.clone());
    let (providers, local) = providers(config, address).await;
    // One set of metric families for the process: the API, the loops and the reconciler
    // record into it, and `/metrics` renders it.
    let metrics = Arc::new(Metrics::new());
    let metrics_port = config.metrics.prometheus.port;
    let state = AppState::new(pool.clone(), PolicyRegistry::shipped())
        .with_metrics(metrics.clone(), metrics_port.is_none())
        .with_workers(workers, assigned)
        .with_worker_tokens(notifications.worker_tokens.clone())
        .with_api_keys(notifications.api_keys.clone())
        .with_shutdown(shutdown.clone())
        .with_providers(providers.clone())
        .with_cost_retention_days(config.cost_tracking.retention_days)
        .with_cost_recommendations(config.cost_tracking.recommendations)
        .with_cost_spread_idle(config.cost_tracking.spread_idle_to_tenants)
        .with_metric_history_retention_days(config.metrics.history.retention_days)
        .with_pool_limits(crate::http::PoolLimits { max_pools: config.max_pools, max_pool_size: config.max_pool_size });
    if !config.effective_pools().is_empty() || config.source_file.is_some() {
        apply_file_pools(&pool, config.effective_pools()).await?;
    }
    apply_configured_prices(&pool, &config.cost_tracking).await?;
    let tenancy = store::quotas::TenancySettings::from_config(&config.multi_tenancy, config.cost_tracking.enabled);
    store::quotas::write_settings(&pool, &tenancy).await.context("writing multi_tenancy")?;
    let fair_sharing = &config.multi_tenancy.fair_sharing;
    let fair_usage = fair_sharing.enabled.then(|| {
        let half_life = std::time::Duration::from_secs(u64::from(fair_sharing.half_life_minutes) * 60);
        tokio::spawn(crate::loops::FairUsage::new(pool.clone(), half_life).run(shutdown.clone()))
    });
    let cost_rollup = config.cost_tracking.enabled.then(|| {
        let tracking = store::cost::Tracking {
            by_tenant: config.cost_tracking.track_by_tenant,
            by_job: config.cost_tracking.track_by_job,
            weighting: config.cost_tracking.weighting(),
        };
        let rollup = CostRollup {
            interval: std::time::Duration::from_secs(config.cost_tracking.rollup_interval_seconds.into()),
            retention_days: config.cost_tracking.retention_days,
            ..CostRollup::new(pool.clone(), tracking)
        };
        tokio::spawn(rollup.run(shutdown.clone()))
    });
    let history = &config.metrics.history;
    let metric_history = history.enabled.then(|| {
        let rollup = crate::loops::MetricHistory {
            interval: std::time::Duration::from_secs(history.interval_seconds.into()),
            retention: chrono::Duration::days(history.retention_days.into()),
            ..crate::loops::MetricHistory::new(pool.clone())
        };
        tokio::spawn(rollup.run(shutdown.clone()))
    });
    let retention = config.retention.enabled.then(|| {
        let pruning = crate::loops::Retention {
            interval: std::time::Duration::from_secs(config.retention.interval_seconds.into()),
            ..crate::loops::Retention::new(pool.clone(), store::retention::Policy::from_config(&config.retention))
        };
        tokio::spawn(pruning.run(shutdown.clone()))
    });
    let spot_prices = (config.cost_tracking.enabled && !providers.is_empty()).then(|| {
        let refresh = SpotPriceRefresh {
            interval: std::time::Duration::from_secs(u64::from(config.cost_tracking.spot_price_refresh_minutes) * 60),
            ..SpotPriceRefresh::new(pool.clone(), providers.clone())
        };
        tokio::spawn(refresh.run(shutdown.clone()))
    });
    let mut reconciler = Reconciler::new(pool.clone(), providers, workers.heartbeat());
    reconciler.metrics = metrics.clone();
    let reconciler = tokio::spawn(reconciler.run(Some(ready.waiter()), shutdown.clone()));
    let reloader = tokio::spawn(watch_config(
        config.source_file.clone(),
        config.default_pools.clone(),
        pool.clone(),
        shutdown.clone(),
    ));
    let promoter = Promoter { metrics: metrics.clone(), ..Promoter::new(pool.clone(), state.policies.clone()) };
    let promoter = tokio::spawn(promoter.run(shutdown.clone()));
    let schedules = crate::loops::Schedules {
        metrics: metrics.clone(),
        ..crate::loops::Schedules::new(pool.clone(), state.policies.clone(), state.queue_settings.clone())
    };
    let schedules = tokio::spawn(schedules.run(shutdown.clone()));
    let scheduler = Scheduler { metrics: metrics.clone(), ..Scheduler::new(pool.clone()) };
    let scheduler = tokio::spawn(scheduler.run(ready, shutdown.clone()));
    let timeouts = Timeouts {
        lease: workers.lease(),
        assignment: std::time::Duration::from_secs(config.worker_assignment_timeout_seconds.into()),
    };
    let reaper = LeaseReaper { metrics: metrics.clone(), ..LeaseReaper::new(pool, timeouts) };
    let reaper = tokio::spawn(reaper.run(shutdown.clone()));
    let tls = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => Some(crate::listener::tls_acceptor(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%address, "listening on {scheme}://{address}");
    // HTTP stops last: this replica's own workers report their last results through it.
    let stop_http = CancellationToken::new();
    let metrics_server = match metrics_port {
        Some(port) => {
            let metrics_address = SocketAddr::new(address.ip(), port);
            let metrics_listener = TcpListener::bind(metrics_address)
                .await
                .with_context(|| format!("binding the metrics address {metrics_address} (metrics.prometheus.port)"))?;
            tracing::info!(address = %metrics_address, "serving /metrics on {scheme}://{metrics_address}/metrics");
            Some(tokio::spawn(crate::listener::serve(
                metrics_listener,
                metrics_app(state.clone()),
                tls.clone(),
                config.http.limits(),
                stop_http.clone(),
            )))
        }
        None => None,
    };
    let server =
        tokio::spawn(crate::listener::serve(listener, app(state), tls, config.http.limits(), stop_http.clone()));
    shutdown.cancelled().await;
    let _ = tokio::join!(promoter, schedules, scheduler, reaper, reconciler, reloader);
    if let Some(fair_usage) = fair_usage {
        let _ = fair_usage.await;
    }
    if let Some(cost_rollup) = cost_rollup {
        let _ = cost_rollup.await;
    }
    if let Some(retention) = retention {
        let _ = retention.await;
    }
    if let Some(metric_history) = metric_history {
        let _ = metric_history.await;
    }
    if let Some(spot_prices) = spot_prices {
        let _ = spot_prices.await;
    }
    if let Some(local) = local {
        // The workers drain for their drain timeout, stop what is left (SIGTERM, then
        // SIGKILL after their 10 s kill grace) and report it interrupted; only then are
        // they killed.
        let grace = u64::from(config.local_worker_drain_seconds) + 15;
        local.stop_own_workers(std::time::Duration::from_secs(grace)).await;
    }
    stop_http.cancel();
    if let Some(metrics_server) = metrics_server {
        metrics_server.await.context("the metrics server task")?.context("serving /metrics")?;
    }
    server.await.context("the HTTP server task")?.context("serving HTTP")
}

/// The providers this replica can use: the AWS providers when `providers.aws` is set, and
/// `local` when it is enabled (`providers.local.enabled`; `hodei dev` enables it) and
/// workers can register.
async fn providers(config: &Config, address: SocketAddr) -> (Providers, Option<Arc<LocalProvider>>) {
    let mut providers = Providers::default();
    if let Some(aws) = &config.providers.aws {
        let clients = hodei_provider_aws::AwsClients::connect(aws).await;
        providers = providers
            .with("aws-ec2", Arc::new(hodei_provider_aws::Ec2Provider::new(clients.clone(), aws.clone())))
            .with("aws-asg", Arc::new(hodei_provider_aws::AsgProvider::new(clients, aws.clone())));
    }
    let local_pools = config.effective_pools().iter().any(|pool| pool.provider == "local");
    if !config.local_provider_enabled(false) {
        if local_pools {
            tracing::warn!("the local provider is disabled (providers.local.enabled); its pools are not provisioned");
        }
        return (providers, None);
    }
    let Some(token) = &config.worker_registration_token else {
        if local_pools {
            tracing::warn!("pools need worker_registration_token for their workers to register; not provisioning");
        }
        return (providers, None);
    };
    let api_urls = config.local_worker_api_url.clone().unwrap_or_else(|| {
        let host = if address.ip().is_unspecified() { "127.0.0.1".to_owned() } else { address.ip().to_string() };
        let scheme = if config.tls.cert_file.is_some() { "https" } else { "http" };
        format!("{scheme}://{host}:{}", address.port())
    });
    let local = Arc::new(LocalProvider::new(LocalSettings {
        worker_binary: config.local_worker_binary.clone().unwrap_or_else(LocalProvider::default_worker_binary),
        api_urls,
        registration_token: token.expose().to_owned(),
        log_dir: config.local_worker_log_dir.clone(),
        ca_file: config.local_worker_ca_file.clone(),
        interruption_url: config.local_worker_interruption_url.clone(),
        drain_timeout: std::time::Duration::from_secs(config.local_worker_drain_seconds.into()),
    }));
    (providers.with("local", local.clone()), Some(local))
}

/// Writes the configured prices: the list replaces the stored one when it is not empty,
/// and the `local` price (`local_price_per_worker_hour`, any shape) is set unless the list
/// names a `local` price.
pub async fn apply_configured_prices(db: &PgPool, config: &crate::config::CostTrackingConfig) -> anyhow::Result<()> {
    let mut transaction = db.begin().await?;
    if !config.prices.is_empty() {
        let prices: Vec<_> = config.prices.iter().map(store::cost::Price::from).collect();
        store::cost::replace_prices(&mut transaction, &prices).await.context("writing cost_tracking.prices")?;
    }
    if !config.prices.iter().any(|spec| spec.provider == "local") {
        let local = store::cost::Price {
            provider: "local".to_owned(),
            instance_type: "*".to_owned(),
            capacity_type: "on_demand".to_owned(),
            region: "*".to_owned(),
            price_per_hour: config.local_price_per_worker_hour,
            currency: "USD".to_owned(),
            cpu_millis: None,
            memory_mib: None,
        };
        store::cost::upsert_prices(&mut *transaction, &[local]).await.context("writing the local price")?;
    }
    transaction.commit().await?;
    Ok(())
}

/// Writes the configuration file's pools into the database (see `store::pools`).
pub async fn apply_file_pools(db: &PgPool, specs: &[PoolSpec]) -> anyhow::Result<()> {
    let mut transaction = db.begin().await?;
    // One replica at a time, so two replicas reloading at once cannot interleave.
    sqlx::query("select pg_advisory_xact_lock($1)").bind(FILE_POOLS_LOCK).execute(&mut *transaction).await?;
    let conflicts = store::pools::sync_file_pools(&mut transaction, specs).await?;
    transaction.commit().await?;
    for id in conflicts {
        tracing::warn!(pool = %id, "the configuration file names a pool that was created through the API; ignoring it");
    }
    tracing::info!(pools = specs.len(), "applied the configuration file's pools");
    Ok(())
}

const FILE_POOLS_LOCK: i64 = 0x686f_6465_6970_6f6f;

/// Reloads the configuration file when it changes (checked every second) or on SIGHUP and
/// applies its pools. An invalid file is rejected with the reason logged, and what runs
/// stays in force. Other settings take effect at the next restart.
async fn watch_config(file: Option<PathBuf>, defaults: Vec<PoolSpec>, db: PgPool, shutdown: CancellationToken) {
    let Some(file) = file else { return };
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = std::fs::read(&file).ok();
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hangup => true,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => false,
        };
        let contents = std::fs::read(&file).ok();
        if !forced && contents == seen {
            continue;
        }
        seen = contents;
        match Config::from_process_environment(Some(&file)) {
            Ok(mut config) => {
                config.default_pools = defaults.clone();
                if let Err(error) = apply_file_pools(&db, config.effective_pools()).await {
                    tracing::error!(error = format!("{error:#}"), "applying the reloaded configuration failed");
                }
            }
            Err(error) => tracing::error!(
                file = %file.display(),
                %error,
                "rejected the changed configuration; the running configuration stays in force"
            ),
        }
    }
}

/// `hodei serve`.
pub async fn run(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let url = config.require_database_url()?.expose().to_owned();
    let pool = prepare_database(config, &url).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the listen address {}", config.listen))?;
    serve_http(config, pool.clone(), listener, shutdown).await?;
    pool.close().await;
    Ok(())
}

/// Cancels the token on Ctrl-C or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
        // Cancel first: if logging cannot be written (its pipe closed with the terminal),
        // the shutdown has still begun.
        token.cancel();
        tracing::info!("shutting down");
    });
}
