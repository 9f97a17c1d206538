//! The pool lifecycle as a plan: from a pool's spec and state, its members as last read
//! (with what the provider says of each instance and what each worker row says) and the
//! time, the list of actions the reconcile loop carries out.
//!
//! Pure: no IO, no clock, no randomness. The loop gathers every input first (provider
//! descriptions, worker rows, the database's `now`, how long it has led) and passes it in
//! as plain data; the plan never calls back.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::pool::{
    members_to_drain, provisioning_backoff_seconds, FailureHandling, MemberView, PoolKindName, PoolSpec,
};

/// Where a pool member is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    /// An attempt runs (or waits for its backoff) until the member's worker registers.
    Provisioning,
    /// Its worker registered and takes jobs.
    Ready,
    /// Its worker finishes its jobs and leaves; then its instance is terminated.
    Draining,
    /// Its instance is to be terminated.
    Terminating,
    /// Gave up after its attempts; a fresh member replaces it once its backoff has passed.
    Failed,
}

impl MemberStatus {
    pub const ALL: [MemberStatus; 5] = [
        MemberStatus::Provisioning,
        MemberStatus::Ready,
        MemberStatus::Draining,
        MemberStatus::Terminating,
        MemberStatus::Failed,
    ];

    /// The value stored in `pool_members.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Provisioning => "provisioning",
            MemberStatus::Ready => "ready",
            MemberStatus::Draining => "draining",
            MemberStatus::Terminating => "terminating",
            MemberStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<MemberStatus> {
        MemberStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

impl fmt::Display for MemberStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl TryFrom<String> for MemberStatus {
    type Error = UnknownState;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        MemberStatus::parse(&text).ok_or(UnknownState { what: "pool member status", text })
    }
}

/// Where a pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolState {
    /// Kept at its declared size.
    Active,
    /// Its workers drain, then it goes.
    Deleting,
    /// Gave up (fail-fast provisioning); its workers are ended until its spec changes.
    Failed,
}

impl PoolState {
    pub const ALL: [PoolState; 3] = [PoolState::Active, PoolState::Deleting, PoolState::Failed];

    /// The value stored in `pools.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolState::Active => "active",
            PoolState::Deleting => "deleting",
            PoolState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<PoolState> {
        PoolState::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

impl fmt::Display for PoolState {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl TryFrom<String> for PoolState {
    type Error = UnknownState;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        PoolState::parse(&text).ok_or(UnknownState { what: "pool state", text })
    }
}

/// A stored state this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {text:?}")]
pub struct UnknownState {
    pub what: &'static str,
    pub text: String,
}

/// What the provider said of a member's instance when asked (an instance it cannot
/// describe counts as gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    Running,
    Gone,
}

/// A registered worker, as its row says.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerFacts {
    /// Runs jobs right now.
    pub busy: bool,
    /// Seconds since its last heartbeat, on the database clock.
    pub heartbeat_age_seconds: Option<f64>,
    /// Consecutive failed health checks.
    pub health_failures: u32,
    /// Seconds it has held no job (`None` while it runs one).
    pub idle_seconds: Option<f64>,
    /// Jobs it has been given.
    pub jobs_run: u64,
    /// It drains of its own accord (SIGTERM, an interruption notice): it takes no more
    /// work and leaves, so the pool replaces it now.
    pub draining: bool,
}

/// One member with everything the plan needs to know of it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberFacts<M> {
    pub id: M,
    pub status: MemberStatus,
    /// Provisioning attempts started so far.
    pub attempts: u32,
    /// `None` when no instance is recorded; else what the provider says of it.
    pub instance: Option<InstanceStatus>,
    pub attempt_started_at: Option<DateTime<Utc>>,
    pub retry_at: Option<DateTime<Utc>>,
    /// `None` until a worker registered for the member (or after it left).
    pub worker: Option<WorkerFacts>,
    /// Seconds since the member was added.
    pub age_seconds: f64,
}

/// The time and the loop's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanContext {
    /// The database's clock, which wrote the members' times.
    pub now: DateTime<Utc>,
    /// How long this replica has led: heartbeats that stopped count against a worker only
    /// once the leader has led for longer than the silence limit (after an outage of the
    /// whole control plane, the workers had nobody to heartbeat to).
    pub leading_for: Duration,
    /// The workers' heartbeat interval.
    pub heartbeat: Duration,
    /// How long leadership lasts without renewal: an attempt with no recorded instance is
    /// abandoned only this long after its timeout.
    pub lease: Duration,
    /// The size the autoscaler decided for a dynamic pool (`None`: the spec's size).
    pub size: Option<u32>,
}

/// Why a member is ended and forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceReason {
    WorkerLeft,
    InstanceGone,
    StoppedHeartbeating,
    Drained,
    PoolDeleted,
    PoolFailed,
}

impl ReplaceReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplaceReason::WorkerLeft => "the worker left",
            ReplaceReason::InstanceGone => "the worker's instance is gone",
            ReplaceReason::StoppedHeartbeating => "the worker stopped heartbeating",
            ReplaceReason::Drained => "drained",
            ReplaceReason::PoolDeleted => "the pool is deleted",
            ReplaceReason::PoolFailed => "the pool failed",
        }
    }
}

/// Why a worker is drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// It failed its health command `failure_threshold` times in a row.
    Unhealthy,
    /// The pool is larger than its size.
    Shrinking,
    /// A dynamic pool scales in: the worker is idle, and is drained only if it still is
    /// under the scheduler's lock.
    ScaleIn,
    /// It reached the pool's `max_lifetime_seconds` or `max_jobs_per_instance`.
    Recycle,
    PoolDeleted,
}

/// A failed provisioning attempt, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    /// `attempt n/allowed: error`, kept as the member's last error.
    pub message: String,
    /// Until the next attempt (or, when giving up, until the member is replaced).
    pub retry_in_seconds: u32,
    /// The attempts are used up: the member is marked failed.
    pub give_up: bool,
    /// With `fail_fast`, once the attempts are used up: why the pool fails.
    pub pool_failure: Option<String>,
}

/// An attempt about to start for a member that has had `attempts_so_far` before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAttempt<M> {
    pub member: M,
    pub attempts_so_far: u32,
}

/// One step of a plan, carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<M> {
    /// The member's worker registered: the member is ready.
    MarkReady { member: M },
    /// An attempt failed; when `terminate_instance`, its instance is terminated first.
    /// A `pool_failure` fails the pool in the same write.
    FailAttempt { member: M, terminate_instance: bool, failure: AttemptFailure },
    /// Terminate the member's instance, requeue its worker's jobs at once, forget it.
    Replace { member: M, reason: ReplaceReason },
    /// The member's worker finishes its jobs and leaves (the member becomes `draining`).
    Drain { member: M, reason: DrainReason },
    /// Shrinking: a member with no worker is ended (its instance terminated) and forgotten.
    Discard { member: M },
    /// A failed member's backoff has passed: forget it, so a fresh member takes its place.
    RemoveFailed { member: M },
    /// Add this many fresh members (provisioning, no attempt yet).
    AddMembers { count: usize },
    /// Start attempts for these members and for the first `added` members just added.
    StartAttempts { members: Vec<PendingAttempt<M>>, added: usize },
    /// The pool is being deleted: remove it if it has no members left.
    RemovePoolIfEmpty,
}

/// Decides a failed provisioning attempt: retry after a backoff while attempts remain;
/// then the member fails, and with `fail_fast` the pool fails with the reason.
pub fn attempt_failure(spec: &PoolSpec, member: &impl fmt::Display, attempts: u32, error: &str) -> AttemptFailure {
    let attempts = attempts.max(1);
    let allowed = spec.provisioning.attempts;
    let message = format!("attempt {attempts}/{allowed}: {error}");
    let give_up = attempts >= allowed;
    let pool_failure = (give_up && spec.provisioning.on_failure == FailureHandling::FailFast)
        .then(|| format!("provisioning worker {member} failed: {message}"));
    AttemptFailure { message, retry_in_seconds: provisioning_backoff_seconds(attempts), give_up, pool_failure }
}

/// The actions that bring a pool towards its spec, given its members (oldest first).
///
/// An active pool, member by member:
/// - `provisioning`: ready once its worker registered; an attempt whose instance is gone
///   or that ran past the timeout has failed (its instance is terminated); an attempt with
///   no recorded instance counts as failed only once it is past the timeout plus a lease
///   (its provider call may still be running, or a deposed leader made it); a member with
///   no attempt running starts one once its backoff has passed.
/// - `ready`: replaced if the worker left, its instance is gone, or its heartbeats stopped
///   for `failure_threshold` intervals (only once the leader has led that long); drained
///   if it failed its health command `failure_threshold` times in a row.
/// - `draining`: replaced once the worker left or its instance is gone; `terminating`:
///   replaced.
/// - `failed`: removed once its backoff has passed, holding its place until then.
///
/// Then fresh members are added up to the size, or the excess is drained (idle members
/// first, busy ones only when the idle ones are not enough; a member with no worker is
/// discarded), and attempts start, up to the provisioning concurrency minus the attempts
/// in flight. When an attempt failure fails the pool (`fail_fast`), the plan stops there
/// and ends every member not failed. A deleting pool drains its ready workers, waits for
/// draining ones whose instance runs, replaces the rest and goes once empty; a failed pool
/// replaces every member but the failed ones.
pub fn plan<M>(spec: &PoolSpec, state: PoolState, members: &[MemberFacts<M>], context: &PlanContext) -> Vec<Action<M>>
where
    M: Clone + PartialEq + fmt::Display,
{
    match state {
        PoolState::Active => plan_active(spec, members, context),
        PoolState::Deleting => plan_deleting(members),
        PoolState::Failed => {
            let statuses: Vec<Option<MemberStatus>> = members.iter().map(|member| Some(member.status)).collect();
            end_all_but_failed(members, &statuses)
        }
    }
}

fn plan_active<M>(spec: &PoolSpec, members: &[MemberFacts<M>], context: &PlanContext) -> Vec<Action<M>>
where
    M: Clone + PartialEq + fmt::Display,
{
    let now = context.now;
    let threshold = spec.health.failure_threshold.max(1);
    let silence_limit = context.heartbeat.as_secs_f64() * f64::from(threshold) + 1.0;
    let timeout = chrono::Duration::seconds(spec.provisioning_timeout_seconds().into());
    let abandoned_after = timeout + chrono::Duration::from_std(context.lease).unwrap_or(chrono::Duration::zero());
    let mut actions = Vec::new();
    let mut views: Vec<MemberView<M>> = Vec::new();
    let mut pending: Vec<PendingAttempt<M>> = Vec::new();
    let mut in_flight = 0usize;
    // Each member's status once the actions so far are carried out; `None` once removed.
    let mut statuses: Vec<Option<MemberStatus>> = members.iter().map(|member| Some(member.status)).collect();
    let live = |member: &MemberFacts<M>, busy: bool| MemberView { id: member.id.clone(), live: true, busy };

    for (index, member) in members.iter().enumerate() {
        let id = member.id.clone();
        let instance_gone = member.instance.unwrap_or(InstanceStatus::Gone) == InstanceStatus::Gone;
        match member.status {
            MemberStatus::Provisioning => {
                if let Some(worker) = &member.worker {
                    actions.push(Action::MarkReady { member: id });
                    statuses[index] = Some(MemberStatus::Ready);
                    views.push(live(member, worker.busy));
                    continue;
                }
                views.push(live(member, false));
                let failed = if member.instance.is_some() {
                    let timed_out = member.attempt_started_at.is_some_and(|started| now - started > timeout);
                    if instance_gone {
                        Some((true, "the worker exited before registering".to_owned()))
                    } else if timed_out {
                        Some((true, format!("the worker did not register within {} s", timeout.num_seconds())))
                    } else {
                        in_flight += 1;
                        None
                    }
                } else if let (Some(started), None) = (member.attempt_started_at, member.retry_at) {
                    // An attempt was recorded but its instance never was: the provider
                    // call is still running, or the leader that made it lost its term or
                    // died. Re-provisioning now could launch a second instance for the
                    // member; only once the attempt is well past its timeout is it counted
                    // as failed (and retried).
                    if now - started > abandoned_after {
                        Some((false, format!("the provider reported no instance within {} s", timeout.num_seconds())))
                    } else {
                        in_flight += 1;
                        None
                    }
                } else {
                    if member.retry_at.is_none_or(|at| at <= now) {
                        pending.push(PendingAttempt { member: id.clone(), attempts_so_far: member.attempts });
                    }
                    None
                };
                if let Some((terminate_instance, error)) = failed {
                    let failure = attempt_failure(spec, &member.id, member.attempts, &error);
                    let fails_pool = failure.pool_failure.is_some();
                    statuses[index] =
                        Some(if failure.give_up { MemberStatus::Failed } else { MemberStatus::Provisioning });
                    actions.push(Action::FailAttempt { member: id, terminate_instance, failure });
                    if fails_pool {
                        actions.extend(end_all_but_failed(members, &statuses));
                        return actions;
                    }
                }
            }
            MemberStatus::Ready => {
                let replace = match &member.worker {
                    None => Some(ReplaceReason::WorkerLeft),
                    Some(_) if instance_gone => Some(ReplaceReason::InstanceGone),
                    Some(worker)
                        if context.leading_for.as_secs_f64() > silence_limit
                            && worker.heartbeat_age_seconds.is_some_and(|age| age > silence_limit) =>
                    {
                        Some(ReplaceReason::StoppedHeartbeating)
                    }
                    Some(worker) if worker.health_failures >= threshold => {
                        actions.push(Action::Drain { member: id.clone(), reason: DrainReason::Unhealthy });
                        statuses[index] = Some(MemberStatus::Draining);
                        None
                    }
                    // Leaving of its own accord: not capacity; a replacement starts now.
                    Some(worker) if worker.draining => None,
                    Some(worker) => {
                        views.push(live(member, worker.busy));
                        None
                    }
                };
                if let Some(reason) = replace {
                    actions.push(Action::Replace { member: id, reason });
                    statuses[index] = None;
                }
            }
            MemberStatus::Draining | MemberStatus::Terminating => {
                let left = member.worker.is_none() || instance_gone;
                if left || member.status == MemberStatus::Terminating {
                    actions.push(Action::Replace { member: id, reason: ReplaceReason::Drained });
                    statuses[index] = None;
                }
            }
            MemberStatus::Failed => {
                if member.retry_at.is_none_or(|at| at <= now) {
                    actions.push(Action::RemoveFailed { member: id });
                    statuses[index] = None;
                } else {
                    // Holds its place until the backoff has passed.
                    views.push(live(member, false));
                }
            }
        }
    }

    let size = context.size.unwrap_or_else(|| spec.min_workers()) as usize;
    let added = size.saturating_sub(views.iter().filter(|view| view.live).count());
    if added > 0 {
        actions.push(Action::AddMembers { count: added });
    }
    if spec.kind == PoolKindName::Dynamic {
        plan_dynamic_shrink(spec, members, &statuses, &views, size, &mut actions);
        let room = spec.provisioning.parallelism().saturating_sub(in_flight);
        pending.truncate(room);
        let added_now = added.min(room - pending.len());
        if !pending.is_empty() || added_now > 0 {
            actions.push(Action::StartAttempts { members: pending, added: added_now });
        }
        return actions;
    }
    let excess = members_to_drain(&views, size);
    pending.retain(|attempt| !excess.contains(&attempt.member));
    for member in members.iter().filter(|member| excess.contains(&member.id)) {
        let id = member.id.clone();
        actions.push(match member.worker {
            Some(_) => Action::Drain { member: id, reason: DrainReason::Shrinking },
            None => Action::Discard { member: id },
        });
    }

    let room = spec.provisioning.parallelism().saturating_sub(in_flight);
    pending.truncate(room);
    let added_now = added.min(room - pending.len());
    if !pending.is_empty() || added_now > 0 {
        actions.push(Action::StartAttempts { members: pending, added: added_now });
    }
    actions
}

/// A dynamic pool: scale-in takes only idle workers, longest idle first (the autoscaler
/// decided how many); then workers past their lifetime or job limit are drained, within
/// the disruption budget (workers already draining count against it).
fn plan_dynamic_shrink<M>(
    spec: &PoolSpec,
    members: &[MemberFacts<M>],
    statuses: &[Option<MemberStatus>],
    views: &[MemberView<M>],
    size: usize,
    actions: &mut Vec<Action<M>>,
) where
    M: Clone + PartialEq + fmt::Display,
{
    let live: Vec<&MemberFacts<M>> =
        members.iter().filter(|member| views.iter().any(|view| view.live && view.id == member.id)).collect();
    let excess = live.len().saturating_sub(size);
    let mut idle: Vec<(&MemberFacts<M>, f64)> = live
        .iter()
        .filter(|member| statuses_of(members, statuses, &member.id) == Some(MemberStatus::Ready))
        .filter_map(|member| Some((*member, member.worker.as_ref()?.idle_seconds?)))
        .collect();
    idle.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut drained: Vec<M> = Vec::new();
    for (member, _) in idle.into_iter().take(excess) {
        actions.push(Action::Drain { member: member.id.clone(), reason: DrainReason::ScaleIn });
        drained.push(member.id.clone());
    }
    let scaling = &spec.scaling;
    if scaling.max_lifetime_seconds.is_none() && scaling.max_jobs_per_instance.is_none() {
        return;
    }
    let draining_now = statuses.iter().filter(|status| **status == Some(MemberStatus::Draining)).count();
    let budget = crate::autoscale::disruption_budget(&scaling.disruption_budget, spec.max_workers().max(1)) as usize;
    let mut room = budget.saturating_sub(draining_now + drained.len());
    for member in live {
        if room == 0 {
            break;
        }
        let Some(worker) = &member.worker else { continue };
        if drained.contains(&member.id) || statuses_of(members, statuses, &member.id) != Some(MemberStatus::Ready) {
            continue;
        }
        let old = scaling.max_lifetime_seconds.is_some_and(|limit| member.age_seconds >= f64::from(limit));
        let used = scaling.max_jobs_per_instance.is_some_and(|limit| worker.jobs_run >= u64::from(limit));
        if old || used {
            actions.push(Action::Drain { member: member.id.clone(), reason: DrainReason::Recycle });
            room -= 1;
        }
    }
}

fn statuses_of<M: PartialEq>(
    members: &[MemberFacts<M>],
    statuses: &[Option<MemberStatus>],
    id: &M,
) -> Option<MemberStatus> {
    members.iter().position(|member| member.id == *id).and_then(|index| statuses[index])
}

/// What a dynamic pool has, for its autoscaler: idle (and idle for `idle_seconds`), busy,
/// provisioning (or failed and holding its place) and draining members. A worker that
/// drains of its own accord is draining, not capacity.
pub fn capacity<M>(spec: &PoolSpec, members: &[MemberFacts<M>]) -> crate::autoscale::Capacity {
    let mut capacity = crate::autoscale::Capacity { slots_per_worker: spec.template.slots(), ..Default::default() };
    for member in members {
        match (member.status, &member.worker) {
            (MemberStatus::Ready, Some(worker)) if worker.draining => capacity.draining += 1,
            (MemberStatus::Ready, Some(worker)) if worker.busy => capacity.busy += 1,
            (MemberStatus::Ready, Some(worker)) => {
                capacity.idle += 1;
                if worker.idle_seconds.is_some_and(|idle| idle >= f64::from(spec.scaling.idle_seconds)) {
                    capacity.idle_long_enough += 1;
                }
            }
            (MemberStatus::Draining | MemberStatus::Terminating, _) => capacity.draining += 1,
            _ => capacity.provisioning += 1,
        }
    }
    capacity
}

/// After the pool failed: every member not removed and not failed is replaced.
fn end_all_but_failed<M: Clone>(members: &[MemberFacts<M>], statuses: &[Option<MemberStatus>]) -> Vec<Action<M>> {
    members
        .iter()
        .zip(statuses)
        .filter(|(_, status)| status.is_some_and(|status| status != MemberStatus::Failed))
        .map(|(member, _)| Action::Replace { member: member.id.clone(), reason: ReplaceReason::PoolFailed })
        .collect()
}

fn plan_deleting<M: Clone>(members: &[MemberFacts<M>]) -> Vec<Action<M>> {
    let mut actions = Vec::new();
    for member in members {
        let member_id = member.id.clone();
        match (member.status, &member.worker) {
            (MemberStatus::Ready, Some(_)) => {
                actions.push(Action::Drain { member: member_id, reason: DrainReason::PoolDeleted })
            }
            (MemberStatus::Draining, Some(_)) if member.instance == Some(InstanceStatus::Running) => {}
            _ => actions.push(Action::Replace { member: member_id, reason: ReplaceReason::PoolDeleted }),
        }
    }
    actions.push(Action::RemovePoolIfEmpty);
    actions
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + seconds, 0).single().expect("a time")
    }

    /// Now is `at(1000)`; this leader has led for an hour; heartbeats every 5 s.
    fn context() -> PlanContext {
        PlanContext {
            now: at(1000),
            leading_for: Duration::from_secs(3600),
            heartbeat: Duration::from_secs(5),
            lease: Duration::from_secs(5),
            size: None,
        }
    }

    /// Defaults: attempts 3, timeout 120 s, concurrency 5, failure threshold 3, `retry`.
    fn spec(size: u32) -> PoolSpec {
        serde_json::from_value(serde_json::json!({"id": "p", "size": size})).expect("spec")
    }

    /// A dynamic pool of up to 10 whose autoscaler decided `size`.
    fn dynamic(scaling: serde_json::Value) -> PoolSpec {
        serde_json::from_value(serde_json::json!({
            "id": "d", "kind": "dynamic", "min_size": 0, "max_size": 10, "scaling": scaling
        }))
        .expect("spec")
    }

    fn sized(size: u32) -> PlanContext {
        PlanContext { size: Some(size), ..context() }
    }

    #[test]
    fn a_dynamic_pool_scales_in_idle_workers_only_longest_idle_first() {
        let idle_for = |id, seconds| MemberFacts {
            worker: Some(WorkerFacts { idle_seconds: Some(seconds), ..worker(false) }),
            ..ready(id, false)
        };
        let members = [ready(1, true), idle_for(2, 10.0), idle_for(3, 300.0), ready(4, true), launching(5, 5)];
        let spec = dynamic(serde_json::json!({}));
        let scale_in = |member| Action::Drain { member, reason: DrainReason::ScaleIn };
        assert_eq!(plan(&spec, PoolState::Active, &members, &sized(4)), vec![scale_in(3)]);
        // Asked for less than the busy and launching workers: only the idle ones go.
        assert_eq!(plan(&spec, PoolState::Active, &members, &sized(1)), vec![scale_in(3), scale_in(2)]);
        // Growing: members are added and started.
        let grown = plan(&spec, PoolState::Active, &members, &sized(7));
        assert_eq!(grown, vec![Action::AddMembers { count: 2 }, Action::StartAttempts { members: vec![], added: 2 }]);
    }

    #[test]
    fn a_worker_draining_of_its_own_accord_is_replaced_at_once() {
        let leaving = MemberFacts { worker: Some(WorkerFacts { draining: true, ..worker(true) }), ..ready(1, true) };
        let actions = plan(&spec(2), PoolState::Active, &[leaving, ready(2, false)], &context());
        assert_eq!(actions, vec![Action::AddMembers { count: 1 }, Action::StartAttempts { members: vec![], added: 1 }]);
    }

    #[test]
    fn old_or_worn_workers_are_recycled_within_the_disruption_budget() {
        let spec = dynamic(serde_json::json!({"max_lifetime_seconds": 3600, "max_jobs_per_instance": 100,
            "disruption_budget": "2"}));
        let aged = |id, age_seconds| MemberFacts { age_seconds, ..ready(id, true) };
        let worn = |id| MemberFacts { worker: Some(WorkerFacts { jobs_run: 100, ..worker(true) }), ..ready(id, true) };
        let recycle = |member| Action::Drain { member, reason: DrainReason::Recycle };
        let members = [aged(1, 4000.0), worn(2), aged(3, 5000.0), aged(4, 10.0)];
        assert_eq!(plan(&spec, PoolState::Active, &members, &sized(4)), vec![recycle(1), recycle(2)]);
        // One already draining leaves room for one more.
        let draining = MemberFacts { status: MemberStatus::Draining, ..aged(5, 10.0) };
        let members = [draining, aged(1, 4000.0), worn(2)];
        assert_eq!(plan(&spec, PoolState::Active, &members, &sized(2)), vec![recycle(1)]);
    }

    fn fail_fast(size: u32) -> PoolSpec {
        let mut spec = spec(size);
        spec.provisioning.on_failure = FailureHandling::FailFast;
        spec
    }

    /// A fresh member: no attempt yet.
    fn fresh(id: u32) -> MemberFacts<u32> {
        MemberFacts {
            id,
            status: MemberStatus::Provisioning,
            attempts: 0,
            instance: None,
            attempt_started_at: None,
            retry_at: None,
            worker: None,
            age_seconds: 600.0,
        }
    }

    /// An attempt started `ago` seconds before now whose instance runs, no worker yet.
    fn launching(id: u32, ago: i64) -> MemberFacts<u32> {
        MemberFacts {
            attempts: 1,
            instance: Some(InstanceStatus::Running),
            attempt_started_at: Some(at(1000 - ago)),
            ..fresh(id)
        }
    }

    fn worker(busy: bool) -> WorkerFacts {
        WorkerFacts {
            busy,
            heartbeat_age_seconds: Some(1.0),
            health_failures: 0,
            idle_seconds: (!busy).then_some(30.0),
            jobs_run: 1,
            draining: false,
        }
    }

    fn ready(id: u32, busy: bool) -> MemberFacts<u32> {
        MemberFacts { status: MemberStatus::Ready, worker: Some(worker(busy)), ..launching(id, 500) }
    }

    fn failure(message: &str, retry_in_seconds: u32, give_up: bool, pool_failure: Option<&str>) -> AttemptFailure {
        AttemptFailure {
            message: message.to_owned(),
            retry_in_seconds,
            give_up,
            pool_failure: pool_failure.map(str::to_owned),
        }
    }

    fn active(spec: &PoolSpec, members: &[MemberFacts<u32>]) -> Vec<Action<u32>> {
        plan(spec, PoolState::Active, members, &context())
    }

    #[test]
    fn states_round_trip_through_their_stored_values() {
        for status in MemberStatus::ALL {
            assert_eq!(MemberStatus::try_from(status.as_str().to_owned()), Ok(status));
        }
        for state in PoolState::ALL {
            assert_eq!(PoolState::parse(state.as_str()), Some(state));
        }
        let unknown = MemberStatus::try_from("lost".to_owned()).expect_err("unknown");
        assert_eq!(unknown.to_string(), "unknown pool member status \"lost\"");
        assert_eq!(PoolState::parse("Active"), None);
    }

    #[test]
    fn an_empty_pool_grows_to_its_size_within_the_concurrency() {
        assert_eq!(
            active(&spec(3), &[]),
            vec![Action::AddMembers { count: 3 }, Action::StartAttempts { members: vec![], added: 3 }]
        );
        assert_eq!(
            active(&spec(8), &[]),
            vec![Action::AddMembers { count: 8 }, Action::StartAttempts { members: vec![], added: 5 }]
        );
    }

    #[test]
    fn attempts_in_flight_count_against_the_concurrency_and_waiting_members_go_first() {
        let members = [launching(1, 10), launching(2, 10), fresh(3), launching(4, 10), fresh(5)];
        let pending = |member| PendingAttempt { member, attempts_so_far: 0 };
        // Five slots, three in flight: the two waiting members, then none of the new ones.
        assert_eq!(
            active(&spec(7), &members),
            vec![
                Action::AddMembers { count: 2 },
                Action::StartAttempts { members: vec![pending(3), pending(5)], added: 0 }
            ]
        );
        let mut sequential = spec(7);
        sequential.provisioning.mode = crate::pool::ProvisioningMode::Sequential;
        assert_eq!(active(&sequential, &members), vec![Action::AddMembers { count: 2 }]);
        let mut wide = spec(7);
        wide.provisioning.concurrency = 10;
        assert_eq!(
            active(&wide, &members)[1],
            Action::StartAttempts { members: vec![pending(3), pending(5)], added: 2 }
        );
    }

    #[test]
    fn a_member_whose_worker_registered_becomes_ready() {
        let registered = MemberFacts { worker: Some(worker(true)), ..launching(1, 10) };
        assert_eq!(active(&spec(1), &[registered]), vec![Action::MarkReady { member: 1 }]);
    }

    #[test]
    fn an_attempt_past_its_timeout_or_whose_instance_died_fails_and_is_retried_later() {
        assert!(active(&spec(1), &[launching(1, 120)]).is_empty(), "still within the timeout");
        let timed_out = "attempt 1/3: the worker did not register within 120 s";
        assert_eq!(
            active(&spec(1), &[launching(1, 121)]),
            vec![Action::FailAttempt {
                member: 1,
                terminate_instance: true,
                failure: failure(timed_out, 1, false, None)
            }]
        );
        let died = MemberFacts { instance: Some(InstanceStatus::Gone), attempts: 2, ..launching(1, 10) };
        let exited = "attempt 2/3: the worker exited before registering";
        assert_eq!(
            active(&spec(1), &[died]),
            vec![Action::FailAttempt { member: 1, terminate_instance: true, failure: failure(exited, 2, false, None) }]
        );
    }

    #[test]
    fn an_attempt_without_an_instance_is_abandoned_only_a_lease_after_its_timeout() {
        let unrecorded = |ago| MemberFacts { instance: None, ..launching(1, ago) };
        assert!(active(&spec(1), &[unrecorded(125)]).is_empty(), "its provider call may still run");
        let message = "attempt 1/3: the provider reported no instance within 120 s";
        assert_eq!(
            active(&spec(1), &[unrecorded(126)]),
            vec![Action::FailAttempt {
                member: 1,
                terminate_instance: false,
                failure: failure(message, 1, false, None)
            }]
        );
    }

    #[test]
    fn a_retry_waits_for_its_backoff() {
        let waiting = |retry_at| MemberFacts { instance: None, retry_at: Some(retry_at), ..launching(1, 10) };
        assert!(active(&spec(1), &[waiting(at(1001))]).is_empty());
        assert_eq!(
            active(&spec(1), &[waiting(at(1000))]),
            vec![Action::StartAttempts { members: vec![PendingAttempt { member: 1, attempts_so_far: 1 }], added: 0 }]
        );
    }

    #[test]
    fn with_retry_a_member_out_of_attempts_fails_holds_its_place_then_is_replaced() {
        let last = MemberFacts { attempts: 3, ..launching(1, 121) };
        let message = "attempt 3/3: the worker did not register within 120 s";
        assert_eq!(
            active(&spec(1), &[last]),
            vec![Action::FailAttempt { member: 1, terminate_instance: true, failure: failure(message, 4, true, None) }]
        );
        let failed = |retry_at| MemberFacts { status: MemberStatus::Failed, retry_at: Some(retry_at), ..fresh(1) };
        assert!(active(&spec(1), &[failed(at(1004))]).is_empty(), "holds its place during the backoff");
        assert_eq!(
            active(&spec(1), &[failed(at(999))]),
            vec![
                Action::RemoveFailed { member: 1 },
                Action::AddMembers { count: 1 },
                Action::StartAttempts { members: vec![], added: 1 }
            ]
        );
    }

    #[test]
    fn with_fail_fast_a_member_out_of_attempts_fails_the_pool_and_ends_the_others() {
        let held = MemberFacts { status: MemberStatus::Failed, retry_at: Some(at(2000)), ..fresh(4) };
        let registered = MemberFacts { worker: Some(worker(false)), ..launching(1, 10) };
        let last = MemberFacts { attempts: 3, instance: Some(InstanceStatus::Gone), ..launching(2, 10) };
        let members = [registered, last, ready(3, true), held, fresh(5)];
        let reason = "provisioning worker 2 failed: attempt 3/3: the worker exited before registering";
        let message = "attempt 3/3: the worker exited before registering";
        assert_eq!(
            active(&fail_fast(5), &members),
            vec![
                Action::MarkReady { member: 1 },
                Action::FailAttempt {
                    member: 2,
                    terminate_instance: true,
                    failure: failure(message, 4, true, Some(reason))
                },
                Action::Replace { member: 1, reason: ReplaceReason::PoolFailed },
                Action::Replace { member: 3, reason: ReplaceReason::PoolFailed },
                Action::Replace { member: 5, reason: ReplaceReason::PoolFailed },
            ]
        );
        // Attempts left: fail-fast retries like `retry`.
        let early = MemberFacts { attempts: 2, ..launching(2, 121) };
        let failed = active(&fail_fast(1), &[early]);
        assert!(
            matches!(
                &failed[..],
                [Action::FailAttempt { failure: AttemptFailure { give_up: false, pool_failure: None, .. }, .. }]
            ),
            "{failed:?}"
        );
    }

    #[test]
    fn attempt_failures_after_the_provider_call_are_decided_the_same_way() {
        let decided = attempt_failure(&fail_fast(1), &7, 3, "injected failure 3");
        assert_eq!(
            decided,
            failure(
                "attempt 3/3: injected failure 3",
                4,
                true,
                Some("provisioning worker 7 failed: attempt 3/3: injected failure 3")
            )
        );
        assert_eq!(attempt_failure(&spec(1), &7, 0, "x").message, "attempt 1/3: x");
    }

    #[test]
    fn a_worker_whose_process_is_gone_or_that_left_is_replaced() {
        let gone = MemberFacts { instance: Some(InstanceStatus::Gone), ..ready(1, true) };
        let left = MemberFacts { worker: None, ..ready(2, false) };
        assert_eq!(
            active(&spec(2), &[gone, left]),
            vec![
                Action::Replace { member: 1, reason: ReplaceReason::InstanceGone },
                Action::Replace { member: 2, reason: ReplaceReason::WorkerLeft },
                Action::AddMembers { count: 2 },
                Action::StartAttempts { members: vec![], added: 2 },
            ]
        );
    }

    #[test]
    fn heartbeats_silent_for_the_threshold_replace_the_worker() {
        // Threshold 3 × 5 s + 1 s: silent for more than 16 s.
        let silent = |age| MemberFacts {
            worker: Some(WorkerFacts { heartbeat_age_seconds: Some(age), ..worker(true) }),
            ..ready(1, true)
        };
        assert!(active(&spec(1), &[silent(16.0)]).is_empty());
        assert_eq!(
            active(&spec(1), &[silent(16.5)])[0],
            Action::Replace { member: 1, reason: ReplaceReason::StoppedHeartbeating }
        );
    }

    #[test]
    fn a_leader_that_has_not_led_for_the_silence_limit_does_not_blame_workers() {
        let silent = MemberFacts {
            worker: Some(WorkerFacts { heartbeat_age_seconds: Some(600.0), ..worker(false) }),
            ..ready(1, false)
        };
        let new_leader = PlanContext { leading_for: Duration::from_secs(16), ..context() };
        assert!(plan(&spec(1), PoolState::Active, std::slice::from_ref(&silent), &new_leader).is_empty());
        let led_long_enough = PlanContext { leading_for: Duration::from_secs(17), ..context() };
        assert_eq!(
            plan(&spec(1), PoolState::Active, &[silent], &led_long_enough)[0],
            Action::Replace { member: 1, reason: ReplaceReason::StoppedHeartbeating }
        );
    }

    #[test]
    fn a_worker_failing_its_health_command_the_threshold_times_is_drained_then_replaced() {
        let sick = |failures| MemberFacts {
            worker: Some(WorkerFacts { health_failures: failures, ..worker(true) }),
            ..ready(1, true)
        };
        assert!(active(&spec(1), &[sick(2)]).is_empty());
        assert_eq!(
            active(&spec(1), &[sick(3)]),
            vec![
                Action::Drain { member: 1, reason: DrainReason::Unhealthy },
                Action::AddMembers { count: 1 },
                Action::StartAttempts { members: vec![], added: 1 },
            ]
        );
        // Draining: kept while its worker finishes, replaced once it left or its instance is gone.
        let draining = MemberFacts { status: MemberStatus::Draining, ..sick(3) };
        let replacement = launching(2, 10);
        assert!(active(&spec(1), &[draining.clone(), replacement.clone()]).is_empty());
        let drained = Action::Replace { member: 1, reason: ReplaceReason::Drained };
        let left = MemberFacts { worker: None, ..draining.clone() };
        assert_eq!(active(&spec(1), &[left, replacement.clone()]), vec![drained.clone()]);
        let gone = MemberFacts { instance: Some(InstanceStatus::Gone), ..draining.clone() };
        assert_eq!(active(&spec(1), &[gone, replacement.clone()]), vec![drained.clone()]);
        let terminating = MemberFacts { status: MemberStatus::Terminating, ..draining };
        assert_eq!(active(&spec(1), &[terminating, replacement]), vec![drained]);
    }

    #[test]
    fn shrinking_drains_idle_workers_first_and_keeps_the_busy_ones() {
        let members = [ready(1, false), ready(2, true), ready(3, false), ready(4, true), ready(5, true)];
        let shrink = |member| Action::Drain { member, reason: DrainReason::Shrinking };
        assert_eq!(active(&spec(3), &members), vec![shrink(1), shrink(3)]);
        // Members without a worker are discarded, and not provisioned.
        let members = [ready(1, true), fresh(2), launching(3, 10)];
        assert_eq!(active(&spec(1), &members), vec![Action::Discard { member: 2 }, Action::Discard { member: 3 }]);
        // Busy workers are drained (they finish their jobs first) only once no idle one is left.
        let members = [ready(1, true), ready(2, true), ready(3, false)];
        assert_eq!(active(&spec(1), &members), vec![shrink(2), shrink(3)]);
    }

    #[test]
    fn a_deleting_pool_drains_its_workers_and_goes_once_empty() {
        let draining = MemberFacts { status: MemberStatus::Draining, ..ready(2, true) };
        let drained = MemberFacts { id: 3, instance: Some(InstanceStatus::Gone), ..draining.clone() };
        let failed = MemberFacts { status: MemberStatus::Failed, ..fresh(5) };
        let members = [ready(1, true), draining, drained, launching(4, 10), failed];
        let deleted = |member| Action::Replace { member, reason: ReplaceReason::PoolDeleted };
        assert_eq!(
            plan(&spec(5), PoolState::Deleting, &members, &context()),
            vec![
                Action::Drain { member: 1, reason: DrainReason::PoolDeleted },
                deleted(3),
                deleted(4),
                deleted(5),
                Action::RemovePoolIfEmpty
            ]
        );
        assert_eq!(plan::<u32>(&spec(5), PoolState::Deleting, &[], &context()), vec![Action::RemovePoolIfEmpty]);
    }

    #[test]
    fn a_failed_pool_ends_every_member_but_the_failed_ones() {
        let failed = MemberFacts { status: MemberStatus::Failed, ..fresh(2) };
        let members = [ready(1, true), failed, launching(3, 10)];
        let ended = |member| Action::Replace { member, reason: ReplaceReason::PoolFailed };
        assert_eq!(plan(&spec(3), PoolState::Failed, &members, &context()), vec![ended(1), ended(3)]);
    }

    fn any_member(id: u32) -> impl Strategy<Value = MemberFacts<u32>> {
        let status = prop::sample::select(MemberStatus::ALL.to_vec());
        let instance = prop::option::of(prop::sample::select(vec![InstanceStatus::Running, InstanceStatus::Gone]));
        let worker = prop::option::of((any::<bool>(), prop::option::of(0.0..60.0f64), 0u32..5).prop_map(
            |(busy, heartbeat_age_seconds, health_failures)| WorkerFacts {
                busy,
                heartbeat_age_seconds,
                health_failures,
                idle_seconds: (!busy).then_some(5.0),
                jobs_run: 0,
                draining: false,
            },
        ));
        let time = prop::option::of((800i64..1200).prop_map(at));
        (status, 0u32..5, instance, time.clone(), time, worker).prop_map(
            move |(status, attempts, instance, attempt_started_at, retry_at, worker)| MemberFacts {
                id,
                status,
                attempts,
                instance,
                attempt_started_at,
                retry_at,
                worker,
                age_seconds: 100.0,
            },
        )
    }

    /// Mostly ready workers, busy or idle, among members in any condition.
    fn any_members() -> impl Strategy<Value = Vec<MemberFacts<u32>>> {
        let member =
            |id: u32| prop_oneof![3 => any::<bool>().prop_map(move |busy| ready(id, busy)), 1 => any_member(id)];
        (0usize..12).prop_flat_map(move |count| (0..count as u32).map(member).collect::<Vec<_>>())
    }

    /// A ready worker with jobs that nothing is wrong with.
    fn busy_and_healthy(member: &MemberFacts<u32>) -> bool {
        member.status == MemberStatus::Ready
            && member.instance == Some(InstanceStatus::Running)
            && member.worker.as_ref().is_some_and(|worker| worker.busy && worker.health_failures < 3)
            && member.worker.as_ref().is_some_and(|worker| worker.heartbeat_age_seconds.is_none_or(|age| age <= 16.0))
    }

    proptest! {
        /// Shrinking never ends a busy worker, and drains one only when every idle worker
        /// that could go instead is going too.
        #[test]
        fn shrinking_never_ends_a_busy_worker_nor_drains_one_while_an_idle_one_stays(
            members in any_members(),
            size in 1u32..8,
            fail_fast_pool in any::<bool>(),
        ) {
            let spec = if fail_fast_pool { fail_fast(size) } else { spec(size) };
            let actions = active(&spec, &members);
            let shrunk: Vec<u32> = actions.iter().filter_map(|action| match action {
                Action::Drain { member, reason: DrainReason::Shrinking } | Action::Discard { member } => Some(*member),
                _ => None,
            }).collect();
            for member in members.iter().filter(|member| busy_and_healthy(member)) {
                let ended = actions.iter().any(|action| matches!(action,
                    Action::Replace { member: id, reason } if *id == member.id && *reason != ReplaceReason::PoolFailed));
                prop_assert!(!ended, "a busy healthy worker was ended: {actions:?}");
                let discarded = actions.contains(&Action::Discard { member: member.id });
                prop_assert!(!discarded, "a busy worker was discarded: {actions:?}");
                if shrunk.contains(&member.id) {
                    let idle_kept = members.iter().filter(|other| {
                        other.status == MemberStatus::Ready
                            && other.instance == Some(InstanceStatus::Running)
                            && other.worker.as_ref().is_some_and(|worker| !worker.busy && worker.health_failures < 3
                                && worker.heartbeat_age_seconds.is_none_or(|age| age <= 16.0))
                    }).find(|other| !shrunk.contains(&other.id));
                    prop_assert!(idle_kept.is_none(), "drained busy {} while idle {:?} stays: {actions:?}", member.id, idle_kept);
                }
            }
        }

        /// The plan never grows past the size, nor starts more attempts than it may.
        #[test]
        fn growing_stays_within_the_size_and_the_concurrency(members in any_members(), size in 1u32..8) {
            let actions = active(&spec(size), &members);
            for action in &actions {
                match action {
                    Action::AddMembers { count } => prop_assert!(*count <= size as usize),
                    Action::StartAttempts { members: waiting, added } => prop_assert!(waiting.len() + added <= 5),
                    Action::RemovePoolIfEmpty => prop_assert!(false, "an active pool is never removed"),
                    _ => {}
                }
            }
        }
    }
}
