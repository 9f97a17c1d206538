//! Running the control plane: prepare the database, then serve HTTP until shut down.

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{hash_key, visible_prefix};
use crate::config::Config;
use crate::http::workers::WorkerSettings;
use crate::http::{app, default_policies, AppState};
use crate::loops::{LeaseReaper, Promoter, Scheduler, Wakeup, ASSIGNED_CHANNEL, READY_CHANNEL};
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
    let assigned = Wakeup::spawn(pool.clone(), ASSIGNED_CHANNEL, shutdown.clone());
    let ready = Wakeup::spawn(pool.clone(), READY_CHANNEL, shutdown.clone());
    let state =
        AppState::new(pool.clone(), default_policies()).with_workers(workers, assigned).with_shutdown(shutdown.clone());
    let promoter = tokio::spawn(Promoter::new(pool.clone(), state.policies.clone()).run(shutdown.clone()));
    let mut scheduler = Scheduler::new(pool.clone());
    scheduler.limits.lease = workers.lease();
    let scheduler = tokio::spawn(scheduler.run(ready, shutdown.clone()));
    let timeouts = Timeouts {
        lease: workers.lease(),
        assignment: std::time::Duration::from_secs(config.worker_assignment_timeout_seconds.into()),
    };
    let reaper = tokio::spawn(LeaseReaper::new(pool, timeouts).run(shutdown.clone()));
    tracing::info!(%address, "listening on http://{address}");
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("serving HTTP");
    shutdown.cancel();
    let _ = tokio::join!(promoter, scheduler, reaper);
    served
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
        tracing::info!("shutting down");
        token.cancel();
    });
}
