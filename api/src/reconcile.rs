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
//! Each tick, for each pool: read the pool's members, what the provider says of their
//! instances and their workers' rows; ask `hodei_core::pool_plan::plan` (pure) for the
//! actions; carry them out in order (fenced writes, provider calls). The plan, member by
//! member:
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
//! attempts start, up to the pool's provisioning concurrency at once. A pool being
//! deleted drains its workers and goes once empty; a failed pool ends its workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hodei_core::autoscale::{self, ScalingAction, ScalingState};
use hodei_core::pool::{CapacityType, PoolKindName, PoolSpec};
use hodei_core::pool_plan::{
    self, Action, AttemptFailure, DrainReason, InstanceStatus, MemberFacts, MemberStatus, PendingAttempt, PlanContext,
    PoolState, WorkerFacts,
};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::{FailureSource, Metrics};
use crate::provider::{InstanceState, Provider, ProviderError, Providers, ProvisionRequest, SpotQuote};
use crate::store::leases::{self, Lease};
use crate::store::pools::{self, Member};
use crate::store::{assignment, cost, dispatch};

/// How old an instance no member knows must be before it is terminated: a launch that is
/// being recorded right now is not a stray.
pub const UNKNOWN_INSTANCE_GRACE: Duration = Duration::from_secs(30);

/// The shortest time between two reconcile ticks, however often jobs become ready.
pub const MIN_TICK_GAP: Duration = Duration::from_millis(200);

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
    /// Where provisioning attempts, their failures and the autoscaler's decisions are counted.
    pub metrics: Arc<Metrics>,
    holder: Uuid,
    holder_info: String,
    /// The term this replica leads in, and since when.
    leading: Arc<Mutex<Option<(Lease, tokio::time::Instant)>>>,
}

impl Reconciler {
    pub fn new(db: PgPool, providers: Providers, heartbeat: Duration) -> Self {
        Self {
            db,
            providers,
            heartbeat,
            interval: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            lease_name: LEADER_LEASE.to_owned(),
            metrics: Arc::new(Metrics::new()),
            holder: Uuid::now_v7(),
            holder_info: leases::holder_info(),
            leading: Arc::default(),
        }
    }

    /// Competes for leadership every tick and reconciles while leading. `ready` (jobs that
    /// became ready) wakes it early, so a dynamic pool reacts to a backlog within a
    /// fraction of the interval; ticks are at least `MIN_TICK_GAP` apart.
    pub async fn run(self, mut ready: Option<crate::loops::Waiter>, shutdown: CancellationToken) {
        loop {
            let started = tokio::time::Instant::now();
            if let Err(error) = self.tick().await {
                tracing::warn!(error = format!("{error:#}"), "reconciling pools failed; retrying");
            }
            let woken = async {
                match ready.as_mut() {
                    Some(waiter) => waiter.wait(self.interval).await,
                    None => tokio::time::sleep(self.interval).await,
                }
                tokio::time::sleep_until(started + MIN_TICK_GAP).await;
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = woken => {}
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
        for pools::Reconciled { spec, state, scaling } in pools::specs(&self.db).await? {
            let Some(provider) = self.providers.get(&spec.provider) else {
                tracing::debug!(pool = %spec.id, provider = %spec.provider, "no such provider here; skipping the pool");
                continue;
            };
            let pool = PoolReconciler {
                reconciler: self,
                spec: &spec,
                instance_type: hodei_core::cost::instance_type_of(&spec),
                scaling: &scaling,
                provider: provider.clone(),
                leading_for,
                lease,
            };
            if let Err(error) = pool.reconcile(state).await {
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
    /// What the ledger calls its instances (`hodei_core::cost::instance_type_of`).
    instance_type: String,
    scaling: &'a pools::ScalingStatus,
    provider: Arc<dyn Provider>,
    leading_for: Duration,
    lease: Lease,
}

/// How carrying out a plan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carried {
    Done,
    /// A provider refused an attempt for the last time and the pool failed (`fail_fast`).
    PoolFailed,
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

    /// Reads the pool, asks for its plan and carries it out; a pool that fails while its
    /// attempts run is then wound down the same way (read, plan, carry out).
    async fn reconcile(&self, state: PoolState) -> anyhow::Result<()> {
        if self.plan_and_carry_out(state).await? == Carried::PoolFailed {
            self.plan_and_carry_out(PoolState::Failed).await?;
        }
        Ok(())
    }

    async fn plan_and_carry_out(&self, state: PoolState) -> anyhow::Result<Carried> {
        // Provisioning times and retry times were written by the database: the plan
        // compares them with its clock.
        let now = self.still_leading().await?;
        self.end_unknown_instances(now).await?;
        let members = pools::members(self.db(), &self.spec.id).await?;
        let mut facts = Vec::with_capacity(members.len());
        for member in &members {
            facts.push(self.facts(member).await);
        }
        let mut context = PlanContext {
            now,
            leading_for: self.leading_for,
            heartbeat: self.reconciler.heartbeat,
            lease: self.reconciler.lease,
            size: None,
        };
        let drained_spec;
        let mut spec = self.spec;
        if state == PoolState::Active {
            if self.scaling.lifecycle == "drained" {
                // Every worker drains, busy ones too (they finish their jobs), until resumed.
                drained_spec = PoolSpec { kind: PoolKindName::Static, ..self.spec.clone() };
                spec = &drained_spec;
                context.size = Some(0);
            } else if self.spec.kind == PoolKindName::Dynamic {
                context.size = Some(self.autoscale(&facts, now).await?);
            }
        }
        let actions = pool_plan::plan(spec, state, &facts, &context);
        self.carry_out(&members, actions).await
    }

    /// The autoscaler's decision for a dynamic pool, recorded with its inputs (fenced).
    async fn autoscale(&self, facts: &[MemberFacts<Uuid>], now: DateTime<Utc>) -> anyhow::Result<u32> {
        let scaling = &self.spec.scaling;
        let demand = pools::demand(self.db(), self.spec).await?;
        let capacity = pool_plan::capacity(self.spec, facts);
        let state = ScalingState {
            last_scale_out_at: self.scaling.last_scale_out_at,
            last_scale_in_at: self.scaling.last_scale_in_at,
            paused: self.scaling.lifecycle == "paused",
        };
        let decision = autoscale::decide(
            self.spec.min_workers(),
            self.spec.max_workers(),
            scaling,
            &demand,
            &capacity,
            &state,
            now,
        );
        let inputs = serde_json::json!({
            "demand": demand,
            "capacity": capacity,
            "recommendations": decision.recommendations,
            "schedules_active": decision.schedules_active,
            "cooldown_until": decision.cooldown_until,
            "last_scale_out_at": state.last_scale_out_at,
            "last_scale_in_at": state.last_scale_in_at,
        });
        if decision.action != ScalingAction::Hold {
            tracing::info!(pool = %self.spec.id, action = decision.action.as_str(), from = decision.current,
                to = decision.desired, by = %decision.decided_by, "{}", decision.reason);
        }
        self.write(async |db| pools::record_decision(db, &self.spec.id, &decision, &inputs).await).await?;
        self.reconciler.metrics.record_autoscaler_decision(&self.spec.id, decision.action.as_str());
        Ok(decision.desired)
    }

    /// Cloud first: instances the provider runs for this pool that no member knows (a
    /// launch whose record was lost, a deposed leader's launch) are terminated once older
    /// than `UNKNOWN_INSTANCE_GRACE`, so nothing keeps billing unseen. Providers that
    /// cannot list (the `local` provider) skip this.
    async fn end_unknown_instances(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let listed = match self.provider.list(self.spec).await {
            Ok(Some(listed)) => listed,
            Ok(None) => return Ok(()),
            Err(error) => {
                tracing::warn!(pool = %self.spec.id, %error, "listing the provider's instances failed");
                return Ok(());
            }
        };
        // The ledger learns where each instance runs (a spot instance's zone prices it).
        let zones: Vec<(String, String)> =
            listed.iter().filter_map(|instance| Some((instance.instance.clone(), instance.zone.clone()?))).collect();
        if !zones.is_empty() {
            self.write(async |db| cost::record_zones(db, &zones).await).await?;
        }
        // Read after the listing: an instance recorded in between is known.
        let known: Vec<Option<String>> =
            pools::members(self.db(), &self.spec.id).await?.into_iter().map(|member| member.instance).collect();
        for instance in listed {
            let grace = chrono::Duration::from_std(UNKNOWN_INSTANCE_GRACE).unwrap_or_default();
            if known.contains(&Some(instance.instance.clone())) || now - instance.launched_at < grace {
                continue;
            }
            self.still_leading().await?;
            tracing::warn!(pool = %self.spec.id, instance = %instance.instance, member = ?instance.member,
                "terminating an instance no member knows");
            if let Err(error) = self.provider.terminate(&instance.instance).await {
                tracing::warn!(pool = %self.spec.id, instance = %instance.instance, %error, "terminating it failed");
            }
        }
        Ok(())
    }

    /// A member as the plan sees it: with what the provider says of its instance.
    async fn facts(&self, member: &Member) -> MemberFacts<Uuid> {
        // A failed member's instance does not enter the plan (it waits for its backoff).
        let instance = match member.instance.as_ref().filter(|_| member.status != MemberStatus::Failed) {
            Some(instance) => Some(match self.provider.describe(instance).await {
                Ok(InstanceState::Running) => InstanceStatus::Running,
                Ok(InstanceState::Gone) | Err(_) => InstanceStatus::Gone,
            }),
            None => None,
        };
        MemberFacts {
            id: member.id,
            status: member.status,
            attempts: u32::try_from(member.attempts).unwrap_or(0),
            instance,
            attempt_started_at: member.attempt_started_at,
            retry_at: member.retry_at,
            worker: member.worker_id.map(|_| WorkerFacts {
                busy: member.worker_used_slots.unwrap_or(0) > 0,
                heartbeat_age_seconds: member.heartbeat_age_seconds,
                health_failures: u32::try_from(member.worker_health_failures.unwrap_or(0)).unwrap_or(0),
                idle_seconds: member.worker_idle_seconds,
                jobs_run: u64::try_from(member.worker_jobs_run.unwrap_or(0)).unwrap_or(0),
                draining: member.worker_state.as_deref() == Some("draining"),
            }),
            age_seconds: member.age_seconds,
        }
    }

    /// Carries out a plan's actions in order; the first error stops the rest.
    async fn carry_out(&self, members: &[Member], actions: Vec<Action<Uuid>>) -> anyhow::Result<Carried> {
        let by_id: HashMap<Uuid, &Member> = members.iter().map(|member| (member.id, member)).collect();
        let read = |id: Uuid| {
            by_id.get(&id).copied().ok_or_else(|| anyhow::anyhow!("the plan names member {id}, which was not read"))
        };
        let mut added: Vec<Uuid> = Vec::new();
        for action in actions {
            match action {
                Action::MarkReady { member } => {
                    let took = self.write(async |db| pools::mark_ready(db, member).await).await?;
                    if let Some(took) = took {
                        self.reconciler.metrics.record_ready(&self.spec.id, Duration::from_secs_f64(took.max(0.0)));
                    }
                }
                Action::FailAttempt { member, terminate_instance, failure } => {
                    if terminate_instance {
                        self.terminate(read(member)?).await;
                    }
                    self.record_attempt_failure(member, &failure).await?;
                }
                Action::Replace { member, reason } => self.replace(read(member)?, reason.as_str()).await?,
                Action::Drain { member, reason: DrainReason::ScaleIn } => {
                    // Only if it is still idle under the scheduler's lock; else it stays.
                    let member = read(member)?;
                    let worker =
                        member.worker_id.ok_or_else(|| anyhow::anyhow!("member {} has no worker", member.id))?;
                    let drained = self
                        .write(async |db| {
                            let drained = assignment::drain_if_idle(&mut *db, worker).await?;
                            if drained {
                                pools::set_status(&mut *db, member.id, MemberStatus::Draining).await?;
                            }
                            Ok(drained)
                        })
                        .await?;
                    tracing::info!(pool = %self.spec.id, member = %member.id, drained, "scaling in an idle worker");
                }
                Action::Drain { member, reason } => {
                    match reason {
                        DrainReason::Unhealthy => {
                            tracing::info!(pool = %self.spec.id, %member, "draining an unhealthy worker")
                        }
                        DrainReason::Recycle => tracing::info!(pool = %self.spec.id, %member,
                            "draining a worker past its lifetime or job limit"),
                        _ => {}
                    }
                    self.drain(read(member)?).await?;
                }
                Action::Discard { member } => {
                    let member = read(member)?;
                    self.still_leading().await?;
                    self.terminate(member).await;
                    self.write(async |db| {
                        pools::remove_member(&mut *db, member.id).await?;
                        cost::record_termination(&mut *db, member.id).await
                    })
                    .await?;
                }
                Action::RemoveFailed { member } => {
                    self.write(async |db| pools::remove_member(db, member).await).await?;
                }
                Action::AddMembers { count } => {
                    for _ in 0..count {
                        added.push(self.write(async |db| pools::add_member(db, &self.spec.id).await).await?);
                    }
                }
                Action::StartAttempts { members: pending, added: count } => {
                    let mut attempts: Vec<PendingAttempt<Uuid>> = pending;
                    attempts
                        .extend(added.iter().take(count).map(|&member| PendingAttempt { member, attempts_so_far: 0 }));
                    if self.start_attempts(attempts).await? == Carried::PoolFailed {
                        return Ok(Carried::PoolFailed);
                    }
                }
                Action::RemovePoolIfEmpty => {
                    if self.write(async |db| pools::remove_if_empty(db, &self.spec.id).await).await? {
                        tracing::info!(pool = %self.spec.id, "pool deleted");
                    }
                }
            }
        }
        Ok(Carried::Done)
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
        let given_up = self
            .write(async |db| {
                let mut given_up = Vec::new();
                if let Some(worker) = member.worker_id {
                    given_up = assignment::abandon_worker(&mut *db, worker, &reason, random).await?;
                }
                pools::remove_member(&mut *db, member.id).await?;
                cost::record_termination(&mut *db, member.id).await?;
                Ok(given_up)
            })
            .await?;
        for result in &given_up {
            self.reconciler.metrics.record_failure(FailureSource::WorkerGone, result);
        }
        Ok(())
    }

    /// Records a failed attempt: retried later, or the member failed, and with
    /// `fail_fast` the pool too, in the same write.
    async fn record_attempt_failure(&self, member: Uuid, failure: &AttemptFailure) -> anyhow::Result<()> {
        let message = &failure.message;
        tracing::warn!(pool = %self.spec.id, %member, %message, "provisioning a worker failed");
        self.reconciler.metrics.record_provision_failure(&self.spec.id);
        self.write(async |db| {
            pools::attempt_failed(&mut *db, member, message, failure.give_up, failure.retry_in_seconds).await?;
            cost::record_termination(&mut *db, member).await?;
            if let Some(reason) = &failure.pool_failure {
                pools::fail_pool(&mut *db, &self.spec.id, reason).await?;
            }
            Ok(())
        })
        .await
    }

    /// The worker finishes its jobs and leaves; then the member is terminated.
    async fn drain(&self, member: &Member) -> anyhow::Result<()> {
        let worker = member.worker_id.ok_or_else(|| anyhow::anyhow!("member {} has no worker to drain", member.id))?;
        self.write(async |db| {
            assignment::drain_worker(&mut *db, worker).await?;
            pools::set_status(&mut *db, member.id, MemberStatus::Draining).await
        })
        .await
    }

    /// The ledger's record of a member's new instance, with the spot price observed for
    /// it (`None`: the price list's).
    fn launch<'s>(&'s self, member: Uuid, instance: &'s str, observed_price_per_hour: Option<f64>) -> cost::Launch<'s> {
        let cloud = self.spec.cloud.as_ref();
        cost::Launch {
            pool: &self.spec.id,
            member,
            provider: &self.spec.provider,
            instance,
            instance_type: self.instance_type.as_str(),
            capacity_type: cloud.map_or("on_demand", |cloud| cloud.capacity_type.as_str()),
            region: cloud.and_then(|cloud| cloud.region.as_deref()).unwrap_or(if self.spec.provider == "local" {
                "local"
            } else {
                "default"
            }),
            cpu_millis: self.spec.template.cpu_millis,
            memory_mib: self.spec.template.memory_mib,
            observed_price_per_hour,
        }
    }

    fn is_spot(&self) -> bool {
        self.spec.cloud.as_ref().is_some_and(|cloud| cloud.capacity_type == CapacityType::Spot)
    }

    /// The spot price a new instance of this pool launches at: the spot market's now
    /// (`hodei_core::cost::spot_price_in_force`, the region's highest, as the zone is not
    /// known here), or `None` when the quotes failed or name no price for its type (the
    /// price list's then; a launch never fails for want of a price).
    fn launch_price(&self, quotes: &Result<Vec<SpotQuote>, ProviderError>) -> Option<f64> {
        match quotes {
            Ok(quotes) => {
                let price = hodei_core::cost::spot_price_in_force(quotes, &self.instance_type, None);
                if price.is_none() {
                    tracing::warn!(pool = %self.spec.id, instance_type = %self.instance_type,
                        "no spot price quoted for the instance type; the price list's is recorded");
                }
                price
            }
            Err(error) => {
                tracing::warn!(pool = %self.spec.id, %error,
                    "reading spot prices failed; the price list's is recorded");
                None
            }
        }
    }

    /// Starts provisioning attempts in parallel; each records its instance or its failure.
    async fn start_attempts(&self, members: Vec<PendingAttempt<Uuid>>) -> anyhow::Result<Carried> {
        // A spot pool's launches are priced with one reading of the spot market per batch,
        // asked while the instances launch.
        let mut quotes = (self.is_spot() && !members.is_empty()).then(|| {
            let provider = self.provider.clone();
            let spec = self.spec.clone();
            tokio::spawn(async move { provider.spot_prices(&spec).await })
        });
        let mut launch_price: Option<Option<f64>> = None;
        let mut attempts = tokio::task::JoinSet::new();
        for pending in members {
            // Recorded (and fenced) before the provider is called: a deposed leader never
            // provisions, and the next leader sees the attempt.
            self.write(async |db| pools::attempt_started(db, pending.member).await).await?;
            self.reconciler.metrics.record_provision_attempt(&self.spec.id);
            let provider = self.provider.clone();
            let metrics = self.reconciler.metrics.clone();
            let pool = self.spec.id.clone();
            let request = ProvisionRequest {
                member: pending.member,
                attempt: pending.attempts_so_far + 1,
                pool: self.spec.clone(),
            };
            let limit = Duration::from_secs(self.spec.provisioning_timeout_seconds().into());
            attempts.spawn(async move {
                let started = std::time::Instant::now();
                let result = match tokio::time::timeout(limit, provider.provision(&request)).await {
                    Ok(result) => result.map_err(|error| error.to_string()),
                    Err(_) => Err(format!("the provider did not answer within {} s", limit.as_secs())),
                };
                metrics.record_provision_answer(&pool, started.elapsed());
                (pending, result)
            });
        }
        let mut unrecorded: Option<anyhow::Error> = None;
        while let Some(joined) = attempts.join_next().await {
            let (pending, result) = joined?;
            let member = pending.member;
            match result {
                Ok(instance) => {
                    if launch_price.is_none() {
                        let answer = match quotes.take() {
                            Some(task) => Some(task.await.unwrap_or_else(|error| {
                                Err(ProviderError::new(format!("reading spot prices: {error}")))
                            })),
                            None => None,
                        };
                        launch_price = Some(answer.as_ref().and_then(|answer| self.launch_price(answer)));
                    }
                    let launch = self.launch(member, &instance, launch_price.flatten());
                    let recorded = self
                        .write(async |db| {
                            pools::set_instance(&mut *db, member, &instance).await?;
                            cost::record_launch(&mut *db, &launch).await
                        })
                        .await;
                    if let Err(error) = recorded {
                        // Nobody knows of this instance: end it rather than leak it.
                        tracing::warn!(pool = %self.spec.id, %member, %instance,
                            "terminating an instance whose launch could not be recorded");
                        if let Err(terminate) = self.provider.terminate(&instance).await {
                            tracing::warn!(%instance, %terminate, "terminating an unrecorded instance failed");
                        }
                        // The other attempts still finish (and are ended the same way).
                        unrecorded.get_or_insert(error);
                    }
                }
                Err(error) => {
                    if unrecorded.is_none() {
                        let failure =
                            pool_plan::attempt_failure(self.spec, &member, pending.attempts_so_far + 1, &error);
                        self.record_attempt_failure(member, &failure).await?;
                        if failure.pool_failure.is_some() {
                            return Ok(Carried::PoolFailed);
                        }
                    }
                }
            }
        }
        unrecorded.map_or(Ok(Carried::Done), Err)
    }
}
