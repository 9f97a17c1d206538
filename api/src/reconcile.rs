//! The reconcile loop: keeps every pool at its declared size with healthy workers.
//!
//! Exactly one replica reconciles at a time: the leader is whoever holds a Postgres
//! advisory lock on a connection of its own. When the leader dies its connection closes,
//! the lock is released, and another replica takes over at its next tick.
//!
//! Each tick, for each pool, member by member:
//! - `provisioning`: becomes `ready` when its worker registers; an attempt whose instance
//!   died or that ran past the provisioning timeout is terminated and retried with backoff
//!   up to the pool's attempts; then `retry` marks the member `failed` (it is replaced
//!   after a backoff) and `fail_fast` fails the pool with the reason.
//! - `ready`: a worker whose process is gone, or whose heartbeats stopped for
//!   `failure_threshold` intervals (counted only once this leader has led that long, so an
//!   outage of the whole control plane is not blamed on the workers), is terminated and
//!   its jobs requeued at once (fenced by attempt numbers, so nothing is lost or run
//!   twice); one that failed its health command
//!   `failure_threshold` times in a row is drained first, then terminated.
//! - `draining`: once the worker has left (or its instance is gone) it is terminated.
//!
//! Then members are added or drained (idle ones first) to match the size, and pending
//! attempts start, up to the pool's provisioning concurrency at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hodei_core::pool::{members_to_drain, provisioning_backoff_seconds, FailureHandling, MemberView, PoolSpec};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::provider::{InstanceState, Provider, Providers, ProvisionRequest};
use crate::store::pools::{self, Member};
use crate::store::{assignment, dispatch};

/// The advisory lock key the leader holds ("hodei reconcile").
pub const LEADER_LOCK: i64 = 0x686f_6465_6972_6563;

#[derive(Debug, Clone)]
pub struct Reconciler {
    pub db: PgPool,
    pub providers: Providers,
    /// The workers' heartbeat interval: silence for `failure_threshold` of them is a failure.
    pub heartbeat: Duration,
    pub interval: Duration,
}

impl Reconciler {
    pub fn new(db: PgPool, providers: Providers, heartbeat: Duration) -> Self {
        Self { db, providers, heartbeat, interval: Duration::from_secs(1) }
    }

    /// Competes for leadership every tick and reconciles while leading.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut leader: Option<(PgConnection, tokio::time::Instant)> = None;
        loop {
            leader = match leader.take() {
                Some((mut connection, since)) => match sqlx::query("select 1").execute(&mut connection).await {
                    Ok(_) => Some((connection, since)),
                    Err(error) => {
                        tracing::warn!(%error, "lost the reconcile leadership connection");
                        None
                    }
                },
                None => self.try_lead().await.map(|connection| (connection, tokio::time::Instant::now())),
            };
            if let Some((_, since)) = &leader {
                if let Err(error) = self.tick_leading_for(since.elapsed()).await {
                    tracing::warn!(error = format!("{error:#}"), "reconciling pools failed; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        if let Some((connection, _)) = leader {
            let _ = connection.close().await;
        }
    }

    async fn try_lead(&self) -> Option<PgConnection> {
        let mut connection = match PgConnection::connect_with(&self.db.connect_options()).await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "cannot open the reconcile leadership connection");
                return None;
            }
        };
        let acquired: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut connection)
            .await
            .unwrap_or(false);
        if acquired {
            tracing::info!("leading pool reconciliation");
            Some(connection)
        } else {
            let _ = connection.close().await;
            None
        }
    }

    /// One pass over every pool (the leader's work; tests call it directly).
    pub async fn tick(&self) -> anyhow::Result<()> {
        self.tick_leading_for(Duration::MAX).await
    }

    /// One pass, by a leader that took over `leading_for` ago. Silent heartbeats count
    /// against a worker only once the leader has led for longer than the silence limit:
    /// after an outage of the whole control plane, workers had nobody to heartbeat to.
    async fn tick_leading_for(&self, leading_for: Duration) -> anyhow::Result<()> {
        for (spec, state) in pools::specs(&self.db).await? {
            let Some(provider) = self.providers.get(&spec.provider) else {
                tracing::debug!(pool = %spec.id, provider = %spec.provider, "no such provider here; skipping the pool");
                continue;
            };
            let pool = PoolReconciler { reconciler: self, spec: &spec, provider: provider.clone(), leading_for };
            let result = match state.as_str() {
                "active" => pool.reconcile().await,
                "deleting" => pool.wind_down(true).await,
                _ => pool.wind_down(false).await,
            };
            if let Err(error) = result {
                tracing::warn!(pool = %spec.id, error = format!("{error:#}"), "reconciling the pool failed");
            }
        }
        Ok(())
    }
}

struct PoolReconciler<'a> {
    reconciler: &'a Reconciler,
    spec: &'a PoolSpec,
    provider: Arc<dyn Provider>,
    leading_for: Duration,
}

impl PoolReconciler<'_> {
    fn db(&self) -> &PgPool {
        &self.reconciler.db
    }

    async fn describe(&self, member: &Member) -> InstanceState {
        match &member.instance {
            Some(instance) => self.provider.describe(instance).await.unwrap_or(InstanceState::Gone),
            None => InstanceState::Gone,
        }
    }

    async fn terminate(&self, member: &Member) {
        if let Some(instance) = &member.instance {
            if let Err(error) = self.provider.terminate(instance).await {
                tracing::warn!(pool = %self.spec.id, member = %member.id, %error, "terminating an instance failed");
            }
        }
    }

    /// Terminates the member's instance, requeues its worker's jobs, and forgets it.
    async fn replace(&self, member: &Member, reason: &str) -> anyhow::Result<()> {
        tracing::info!(pool = %self.spec.id, member = %member.id, reason, "replacing a worker");
        self.terminate(member).await;
        if let Some(worker) = member.worker_id {
            let mut connection = self.db().acquire().await?;
            let reason = format!("worker replaced: {reason}");
            assignment::abandon_worker(&mut connection, worker, &reason, dispatch::random_fraction()?).await?;
        }
        pools::remove_member(self.db(), member.id).await?;
        Ok(())
    }

    /// A provisioning attempt failed. Returns false when the pool failed (fail-fast).
    async fn attempt_failed(&self, member: &Member, error: &str) -> anyhow::Result<bool> {
        let attempts = member.attempts.max(1) as u32;
        let allowed = self.spec.provisioning.attempts;
        let message = format!("attempt {attempts}/{allowed}: {error}");
        tracing::warn!(pool = %self.spec.id, member = %member.id, %message, "provisioning a worker failed");
        let retry_in = provisioning_backoff_seconds(attempts);
        if attempts < allowed {
            pools::attempt_failed(self.db(), member.id, &message, false, retry_in).await?;
            return Ok(true);
        }
        // Attempts used up: the member is given up. With `retry` a fresh one replaces it
        // once the backoff has passed; with `fail_fast` the pool fails.
        pools::attempt_failed(self.db(), member.id, &message, true, retry_in).await?;
        if self.spec.provisioning.on_failure == FailureHandling::FailFast {
            let reason = format!("provisioning worker {} failed: {message}", member.id);
            pools::fail_pool(self.db(), &self.spec.id, &reason).await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn reconcile(&self) -> anyhow::Result<()> {
        let threshold = self.spec.health.failure_threshold.max(1);
        let silence_limit = self.reconciler.heartbeat.as_secs_f64() * f64::from(threshold) + 1.0;
        let timeout = chrono::Duration::seconds(self.spec.provisioning.timeout_seconds.into());
        let now = Utc::now();
        let mut views: Vec<MemberView<Uuid>> = Vec::new();
        let mut pending: Vec<Member> = Vec::new();
        let mut in_flight = 0usize;
        let members = pools::members(self.db(), &self.spec.id).await?;
        for member in &members {
            match member.status.as_str() {
                "provisioning" => {
                    if member.worker_id.is_some() {
                        pools::set_status(self.db(), member.id, "ready").await?;
                        views.push(MemberView { id: member.id, live: true, busy: busy(member) });
                        continue;
                    }
                    views.push(MemberView { id: member.id, live: true, busy: false });
                    if member.instance.is_some() {
                        let timed_out = member.attempt_started_at.is_some_and(|started| now - started > timeout);
                        let died = self.describe(member).await == InstanceState::Gone;
                        if timed_out || died {
                            self.terminate(member).await;
                            let error = if died {
                                "the worker exited before registering".to_owned()
                            } else {
                                format!("the worker did not register within {} s", timeout.num_seconds())
                            };
                            if !self.attempt_failed(member, &error).await? {
                                return self.wind_down(false).await;
                            }
                        } else {
                            in_flight += 1;
                        }
                    } else if member.retry_at.is_none_or(|at| at <= now) {
                        pending.push(member.clone());
                    }
                }
                "ready" => {
                    let Some(worker) = member.worker_id else {
                        // The worker left (deregistered, or silent past its lease).
                        self.replace(member, "the worker left").await?;
                        continue;
                    };
                    if self.describe(member).await == InstanceState::Gone {
                        self.replace(member, "the worker's instance is gone").await?;
                    } else if self.leading_for.as_secs_f64() > silence_limit
                        && member.heartbeat_age_seconds.is_some_and(|age| age > silence_limit)
                    {
                        self.replace(member, "the worker stopped heartbeating").await?;
                    } else if member.worker_health_failures.unwrap_or(0) >= threshold as i32 {
                        tracing::info!(pool = %self.spec.id, member = %member.id, "draining an unhealthy worker");
                        self.drain(member, worker).await?;
                    } else {
                        views.push(MemberView { id: member.id, live: true, busy: busy(member) });
                    }
                }
                "draining" | "terminating" => {
                    let left = member.worker_id.is_none() || self.describe(member).await == InstanceState::Gone;
                    if left || member.status == "terminating" {
                        self.replace(member, "drained").await?;
                    }
                }
                "failed" => {
                    if member.retry_at.is_none_or(|at| at <= now) {
                        pools::remove_member(self.db(), member.id).await?;
                    } else {
                        // Holds its place until the backoff has passed.
                        views.push(MemberView { id: member.id, live: true, busy: false });
                    }
                }
                _ => {}
            }
        }

        let size = self.spec.size as usize;
        let live = views.iter().filter(|view| view.live).count();
        for _ in live..size {
            let id = pools::add_member(self.db(), &self.spec.id).await?;
            pending.push(new_member(id, &self.spec.id));
        }
        let excess = members_to_drain(&views, size);
        pending.retain(|member| !excess.contains(&member.id));
        for member in members.iter().filter(|member| excess.contains(&member.id)) {
            self.shrink(member).await?;
        }

        let room = self.spec.provisioning.parallelism().saturating_sub(in_flight);
        self.start_attempts(pending.into_iter().take(room).collect()).await
    }

    /// Removes one member to shrink the pool: drained if it has a worker, else ended.
    async fn shrink(&self, member: &Member) -> anyhow::Result<()> {
        match member.worker_id {
            Some(worker) => self.drain(member, worker).await,
            None => {
                self.terminate(member).await;
                pools::remove_member(self.db(), member.id).await?;
                Ok(())
            }
        }
    }

    /// The worker finishes its jobs and leaves; then the member is terminated.
    async fn drain(&self, member: &Member, worker: Uuid) -> anyhow::Result<()> {
        assignment::drain_worker(self.db(), worker).await?;
        pools::set_status(self.db(), member.id, "draining").await?;
        Ok(())
    }

    /// Starts provisioning attempts in parallel; each records its instance or its failure.
    async fn start_attempts(&self, members: Vec<Member>) -> anyhow::Result<()> {
        let mut attempts = tokio::task::JoinSet::new();
        for member in members {
            pools::attempt_started(self.db(), member.id).await?;
            let provider = self.provider.clone();
            let request = ProvisionRequest { member: member.id, pool: self.spec.clone() };
            let limit = Duration::from_secs(self.spec.provisioning.timeout_seconds.into());
            attempts.spawn(async move {
                let result = match tokio::time::timeout(limit, provider.provision(&request)).await {
                    Ok(result) => result.map_err(|error| error.to_string()),
                    Err(_) => Err(format!("the provider did not answer within {} s", limit.as_secs())),
                };
                (member, result)
            });
        }
        while let Some(joined) = attempts.join_next().await {
            let (mut member, result) = joined?;
            member.attempts += 1;
            match result {
                Ok(instance) => pools::set_instance(self.db(), member.id, &instance).await?,
                Err(error) => {
                    if !self.attempt_failed(&member, &error).await? {
                        return self.wind_down(false).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// A pool being deleted drains its workers, then goes; a failed pool ends them all.
    async fn wind_down(&self, deleting: bool) -> anyhow::Result<()> {
        for member in pools::members(self.db(), &self.spec.id).await? {
            match (member.status.as_str(), member.worker_id) {
                ("ready", Some(worker)) if deleting => self.drain(&member, worker).await?,
                ("draining", Some(_)) if deleting && self.describe(&member).await == InstanceState::Running => {}
                ("failed", _) if !deleting => {}
                _ => self.replace(&member, if deleting { "the pool is deleted" } else { "the pool failed" }).await?,
            }
        }
        if deleting && pools::remove_if_empty(self.db(), &self.spec.id).await? {
            tracing::info!(pool = %self.spec.id, "pool deleted");
        }
        Ok(())
    }
}

fn busy(member: &Member) -> bool {
    member.worker_used_slots.unwrap_or(0) > 0
}

fn new_member(id: Uuid, pool: &str) -> Member {
    Member {
        id,
        pool_id: pool.to_owned(),
        status: "provisioning".to_owned(),
        attempts: 0,
        instance: None,
        last_error: None,
        attempt_started_at: None,
        retry_at: None,
        created_at: Utc::now(),
        worker_id: None,
        worker_state: None,
        worker_used_slots: None,
        worker_last_heartbeat_at: None,
        worker_health_failures: None,
        heartbeat_age_seconds: None,
    }
}
