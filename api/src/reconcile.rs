//! The reconcile loop: keeps every pool at its declared size with healthy workers.
//!
//! Exactly one replica reconciles at a time: the leader holds the `reconcile` lease
//! (`store::leases`), renewed every tick and, while a tick runs, in the background. A
//! leader that dies, freezes or loses the database stops renewing; once the lease expires
//! another replica takes it in a new term. Every write a leader makes is fenced by its
//! term in the same transaction, so a deposed leader whose tick is still running changes
//! nothing (and provisions nothing: an attempt is recorded, fenced, before the provider
//! is called). Times are read from the database, the clock every replica shares.
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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hodei_core::pool::{members_to_drain, provisioning_backoff_seconds, FailureHandling, MemberView, PoolSpec};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::provider::{InstanceState, Provider, Providers, ProvisionRequest};
use crate::store::leases::{self, Lease};
use crate::store::pools::{self, Member};
use crate::store::{assignment, dispatch};

/// The lease the reconcile leader holds.
pub const LEADER_LEASE: &str = "reconcile";

/// A write was refused because this replica no longer holds the lease in its term.
#[derive(Debug, thiserror::Error)]
#[error("lost the reconcile leadership (term {term})")]
pub struct LostLeadership {
    pub term: i64,
}

#[derive(Debug, Clone)]
pub struct Reconciler {
    pub db: PgPool,
    pub providers: Providers,
    /// The workers' heartbeat interval: silence for `failure_threshold` of them is a failure.
    pub heartbeat: Duration,
    pub interval: Duration,
    /// How long leadership lasts without a renewal: how soon another replica takes over
    /// from a leader that died or froze.
    pub lease: Duration,
    /// The lease's name: replicas reconciling the same pools share it (`LEADER_LEASE`).
    pub lease_name: String,
    holder: Uuid,
    holder_info: String,
    /// The term this replica leads in, and since when.
    leading: Arc<Mutex<Option<(Lease, tokio::time::Instant)>>>,
}

impl Reconciler {
    pub fn new(db: PgPool, providers: Providers, heartbeat: Duration) -> Self {
        let host = std::fs::read_to_string("/etc/hostname").map(|name| name.trim().to_owned()).unwrap_or_default();
        Self {
            db,
            providers,
            heartbeat,
            interval: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            lease_name: LEADER_LEASE.to_owned(),
            holder: Uuid::now_v7(),
            holder_info: format!("{host} pid {}", std::process::id()),
            leading: Arc::default(),
        }
    }

    /// Competes for leadership every tick and reconciles while leading.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(error) = self.tick().await {
                tracing::warn!(error = format!("{error:#}"), "reconciling pools failed; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        let held = self.leading.lock().ok().and_then(|leading| leading.map(|(lease, _)| lease));
        if let Some(lease) = held {
            let _ = leases::release(&self.db, &self.lease_name, lease).await;
        }
    }

    /// Takes or renews the lease; the term led in and for how long, or `None`.
    async fn lead(&self) -> anyhow::Result<Option<(Lease, Duration)>> {
        let acquired = leases::acquire_or_renew(
            &self.db,
            &self.lease_name,
            self.holder,
            &self.holder_info,
            self.lease.as_secs_f64(),
        )
        .await;
        let mut leading = self.leading.lock().map_err(|_| anyhow::anyhow!("the leadership state is poisoned"))?;
        let acquired = match acquired {
            Ok(acquired) => acquired,
            Err(error) => {
                // Renewal is what keeps the lease; without it the term may end under us.
                return Err(anyhow::Error::new(error).context("renewing the reconcile lease"));
            }
        };
        match (acquired, leading.as_ref()) {
            (Some(lease), Some((held, since))) if *held == lease => Ok(Some((lease, since.elapsed()))),
            (Some(lease), _) => {
                tracing::info!(term = lease.term, "leading pool reconciliation");
                *leading = Some((lease, tokio::time::Instant::now()));
                Ok(Some((lease, Duration::ZERO)))
            }
            (None, held) => {
                if let Some((lease, _)) = held {
                    tracing::warn!(term = lease.term, "lost the reconcile leadership");
                }
                *leading = None;
                Ok(None)
            }
        }
    }

    /// Keeps the lease renewed until `done` (a tick may wait on providers for longer
    /// than a lease); stops at the first renewal that finds the lease lost.
    async fn keep_renewed(&self, lease: Lease, done: CancellationToken) {
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(self.lease / 3) => {}
            }
            match self.lead().await {
                Ok(Some((renewed, _))) if renewed == lease => {}
                Ok(_) => return,
                Err(error) => tracing::warn!(error = format!("{error:#}"), "renewing the reconcile lease failed"),
            }
        }
    }

    /// One pass over every pool if this replica leads (or can take the lead); returns
    /// whether it did. Tests step the loop with it.
    pub async fn tick(&self) -> anyhow::Result<bool> {
        let Some((lease, leading_for)) = self.lead().await? else { return Ok(false) };
        let done = CancellationToken::new();
        let (result, ()) = tokio::join!(
            async {
                let result = self.tick_leading_for(lease, leading_for).await;
                done.cancel();
                result
            },
            self.keep_renewed(lease, done.clone())
        );
        result.map(|()| true)
    }

    /// One pass, by a leader that took over `leading_for` ago. Silent heartbeats count
    /// against a worker only once the leader has led for longer than the silence limit:
    /// after an outage of the whole control plane, workers had nobody to heartbeat to.
    async fn tick_leading_for(&self, lease: Lease, leading_for: Duration) -> anyhow::Result<()> {
        for (spec, state) in pools::specs(&self.db).await? {
            let Some(provider) = self.providers.get(&spec.provider) else {
                tracing::debug!(pool = %spec.id, provider = %spec.provider, "no such provider here; skipping the pool");
                continue;
            };
            let pool = PoolReconciler { reconciler: self, spec: &spec, provider: provider.clone(), leading_for, lease };
            let result = match state.as_str() {
                "active" => pool.reconcile().await,
                "deleting" => pool.wind_down(true).await,
                _ => pool.wind_down(false).await,
            };
            if let Err(error) = result {
                if let Some(lost) = error.downcast_ref::<LostLeadership>() {
                    return Err(anyhow::anyhow!("{lost}; this tick stops"));
                }
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
    lease: Lease,
}

impl PoolReconciler<'_> {
    fn db(&self) -> &PgPool {
        &self.reconciler.db
    }

    /// Runs `write` in a transaction fenced by this leader's term: refused with
    /// `LostLeadership` (and nothing written) once another replica has taken over.
    async fn write<T>(&self, write: impl AsyncFnOnce(&mut PgConnection) -> sqlx::Result<T>) -> anyhow::Result<T> {
        let mut transaction = self.db().begin().await?;
        if leases::check(&mut transaction, &self.reconciler.lease_name, self.lease).await?.is_none() {
            return Err(LostLeadership { term: self.lease.term }.into());
        }
        let written = write(&mut transaction).await?;
        transaction.commit().await?;
        Ok(written)
    }

    /// The database's clock, if this leader still leads: checked before calling a
    /// provider, so a deposed leader does not act on what it read in its term.
    async fn still_leading(&self) -> anyhow::Result<DateTime<Utc>> {
        let mut connection = self.db().acquire().await?;
        leases::check(&mut connection, &self.reconciler.lease_name, self.lease)
            .await?
            .ok_or_else(|| LostLeadership { term: self.lease.term }.into())
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
        self.still_leading().await?;
        self.terminate(member).await;
        let reason = format!("worker replaced: {reason}");
        let random = dispatch::random_fraction()?;
        self.write(async |db| {
            if let Some(worker) = member.worker_id {
                assignment::abandon_worker(&mut *db, worker, &reason, random).await?;
            }
            pools::remove_member(&mut *db, member.id).await
        })
        .await
    }

    /// A provisioning attempt failed. Returns false when the pool failed (fail-fast).
    async fn attempt_failed(&self, member: &Member, error: &str) -> anyhow::Result<bool> {
        let attempts = member.attempts.max(1) as u32;
        let allowed = self.spec.provisioning.attempts;
        let message = format!("attempt {attempts}/{allowed}: {error}");
        tracing::warn!(pool = %self.spec.id, member = %member.id, %message, "provisioning a worker failed");
        let retry_in = provisioning_backoff_seconds(attempts);
        if attempts < allowed {
            self.write(async |db| pools::attempt_failed(db, member.id, &message, false, retry_in).await).await?;
            return Ok(true);
        }
        // Attempts used up: the member is given up. With `retry` a fresh one replaces it
        // once the backoff has passed; with `fail_fast` the pool fails.
        let fail_fast = self.spec.provisioning.on_failure == FailureHandling::FailFast;
        let reason = format!("provisioning worker {} failed: {message}", member.id);
        self.write(async |db| {
            pools::attempt_failed(&mut *db, member.id, &message, true, retry_in).await?;
            if fail_fast {
                pools::fail_pool(&mut *db, &self.spec.id, &reason).await?;
            }
            Ok(())
        })
        .await?;
        Ok(!fail_fast)
    }

    async fn reconcile(&self) -> anyhow::Result<()> {
        let threshold = self.spec.health.failure_threshold.max(1);
        let silence_limit = self.reconciler.heartbeat.as_secs_f64() * f64::from(threshold) + 1.0;
        let timeout = chrono::Duration::seconds(self.spec.provisioning.timeout_seconds.into());
        // Provisioning times and retry times were written by the database: compare them
        // with its clock.
        let now = self.still_leading().await?;
        let mut views: Vec<MemberView<Uuid>> = Vec::new();
        let mut pending: Vec<Member> = Vec::new();
        let mut in_flight = 0usize;
        let members = pools::members(self.db(), &self.spec.id).await?;
        for member in &members {
            match member.status.as_str() {
                "provisioning" => {
                    if member.worker_id.is_some() {
                        self.write(async |db| pools::set_status(db, member.id, "ready").await).await?;
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
                    } else if let (Some(started), None) = (member.attempt_started_at, member.retry_at) {
                        // An attempt was recorded but its instance never was: the provider
                        // call is still running, or the leader that made it lost its term
                        // or died. Re-provisioning now could launch a second instance for
                        // the member; only once the attempt is well past its timeout is it
                        // counted as failed (and retried).
                        let abandoned_after = timeout
                            + chrono::Duration::from_std(self.reconciler.lease).unwrap_or(chrono::Duration::zero());
                        if now - started > abandoned_after {
                            let error = format!("the provider reported no instance within {} s", timeout.num_seconds());
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
                        self.write(async |db| pools::remove_member(db, member.id).await).await?;
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
            let id = self.write(async |db| pools::add_member(db, &self.spec.id).await).await?;
            pending.push(new_member(id, &self.spec.id, now));
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
                self.still_leading().await?;
                self.terminate(member).await;
                self.write(async |db| pools::remove_member(db, member.id).await).await
            }
        }
    }

    /// The worker finishes its jobs and leaves; then the member is terminated.
    async fn drain(&self, member: &Member, worker: Uuid) -> anyhow::Result<()> {
        self.write(async |db| {
            assignment::drain_worker(&mut *db, worker).await?;
            pools::set_status(&mut *db, member.id, "draining").await
        })
        .await
    }

    /// Starts provisioning attempts in parallel; each records its instance or its failure.
    async fn start_attempts(&self, members: Vec<Member>) -> anyhow::Result<()> {
        let mut attempts = tokio::task::JoinSet::new();
        for member in members {
            // Recorded (and fenced) before the provider is called: a deposed leader never
            // provisions, and the next leader sees the attempt.
            self.write(async |db| pools::attempt_started(db, member.id).await).await?;
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
        let mut unrecorded: Option<anyhow::Error> = None;
        while let Some(joined) = attempts.join_next().await {
            let (mut member, result) = joined?;
            member.attempts += 1;
            match result {
                Ok(instance) => {
                    let recorded = self.write(async |db| pools::set_instance(db, member.id, &instance).await).await;
                    if let Err(error) = recorded {
                        // Nobody knows of this instance: end it rather than leak it.
                        tracing::warn!(pool = %self.spec.id, member = %member.id, %instance,
                            "terminating an instance whose launch could not be recorded");
                        if let Err(terminate) = self.provider.terminate(&instance).await {
                            tracing::warn!(%instance, %terminate, "terminating an unrecorded instance failed");
                        }
                        // The other attempts still finish (and are ended the same way).
                        unrecorded.get_or_insert(error);
                    }
                }
                Err(error) => {
                    if unrecorded.is_none() && !self.attempt_failed(&member, &error).await? {
                        return self.wind_down(false).await;
                    }
                }
            }
        }
        unrecorded.map_or(Ok(()), Err)
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
        if deleting && self.write(async |db| pools::remove_if_empty(db, &self.spec.id).await).await? {
            tracing::info!(pool = %self.spec.id, "pool deleted");
        }
        Ok(())
    }
}

fn busy(member: &Member) -> bool {
    member.worker_used_slots.unwrap_or(0) > 0
}

fn new_member(id: Uuid, pool: &str, now: DateTime<Utc>) -> Member {
    Member {
        id,
        pool_id: pool.to_owned(),
        status: "provisioning".to_owned(),
        attempts: 0,
        instance: None,
        last_error: None,
        attempt_started_at: None,
        retry_at: None,
        created_at: now,
        worker_id: None,
        worker_state: None,
        worker_used_slots: None,
        worker_last_heartbeat_at: None,
        worker_health_failures: None,
        heartbeat_age_seconds: None,
    }
}
