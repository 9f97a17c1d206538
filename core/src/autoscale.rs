//! The autoscaler of dynamic pools as a pure decision: from the pool's scaling spec, what
//! it can serve (demand), what it has (capacity), its cooldown state and `now`, how many
//! workers it should have and why. The reconcile leader gathers the inputs, records every
//! decision (holds too) in the pool's scaling history and hands the size to the pool plan.
//!
//! The rules:
//! - Every target-tracking policy and every step trigger that fires recommends a size;
//!   the largest wins. So a scale-out needs one policy, a scale-in needs all of them to
//!   agree (the largest recommendation is below the current size). With no policy at all
//!   the pool tracks one queued or running job per slot.
//! - The warm buffer adds idle workers on top of what demand needs.
//! - Schedules active at `now` raise the minimum (and may set the maximum) for their
//!   window; the size stays within the effective `[min, max]`.
//! - Cooldowns: no scale-out within `scale_out_seconds` of the last scale-out, no
//!   scale-in within `scale_in_seconds` of the last scaling action of either kind. Below
//!   the minimum the pool grows at once, whatever the cooldown.
//! - Scale-in takes only idle workers that have been idle for `idle_seconds` (above the
//!   maximum, any idle worker), at most `scale_in_step` at a time. A busy worker is never a
//!   victim: capacity that is busy is never given up.
//! - Paused scaling holds the current size.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::calendar::{parse_cron, parse_zone};
use crate::ValidationErrors;

/// How a dynamic pool scales.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingSpec {
    /// Idle workers kept ready on top of what demand needs.
    #[schema(minimum = 0, maximum = 1000)]
    pub warm: u32,
    /// A worker idle this long may be scaled in.
    #[schema(minimum = 0, maximum = 86400)]
    pub idle_seconds: u32,
    /// A worker older than this is drained and replaced.
    #[schema(minimum = 60, maximum = 2592000)]
    pub max_lifetime_seconds: Option<u32>,
    /// A worker that has run this many jobs is drained and replaced.
    #[schema(minimum = 1, maximum = 1000000000)]
    pub max_jobs_per_instance: Option<u32>,
    /// At most this many workers draining at once: a count (`2`) or a share of the pool
    /// (`20%`, rounded up, at least 1).
    #[schema(pattern = "^[0-9]{1,4}%?$")]
    pub disruption_budget: String,
    #[schema(max_items = 20)]
    pub policies: Vec<TargetPolicy>,
    #[schema(max_items = 20)]
    pub triggers: Vec<StepTrigger>,
    #[schema(max_items = 20)]
    pub schedules: Vec<Schedule>,
    pub cooldown: Cooldown,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            warm: 0,
            idle_seconds: 60,
            max_lifetime_seconds: None,
            max_jobs_per_instance: None,
            disruption_budget: "10%".to_owned(),
            policies: Vec::new(),
            triggers: Vec::new(),
            schedules: Vec::new(),
            cooldown: Cooldown::default(),
        }
    }
}

/// Target tracking: size the pool so the metric meets the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetPolicy {
    /// 1–63 characters, as resource names.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub name: String,
    pub metric: TargetMetric,
    /// `backlog_per_slot`: queued jobs allowed per slot (> 0); `utilization`: the share of
    /// slots busy, in (0, 1].
    #[schema(exclusive_minimum = 0, maximum = 1000)]
    pub target: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetMetric {
    /// Running jobs take a slot each; queued jobs `target` to a slot.
    BacklogPerSlot,
    /// Running and queued jobs fill `target` of the slots.
    Utilization,
}

/// Step scaling: when the metric reaches a step's threshold, add that step's workers to
/// the current size (the highest step reached counts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepTrigger {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub name: String,
    pub metric: TriggerMetric,
    #[schema(min_items = 1, max_items = 20)]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerMetric {
    /// Queued jobs the pool can serve.
    QueueDepth,
    /// Seconds the oldest of them has waited.
    OldestWaitSeconds,
    /// Queued jobs within a quarter of their queue's SLA.
    SlaAtRisk,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The threshold (inclusive), from 0 to 1,000,000,000.
    #[schema(minimum = 0, maximum = 1000000000)]
    pub at_least: f64,
    /// Workers to add to the current size.
    #[schema(minimum = 1, maximum = 1000)]
    pub add: u32,
}

/// A window, starting at each fire time of a cron expression and lasting
/// `duration_minutes`, during which the pool's bounds change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub name: String,
    /// When each window starts: `sec min hour day-of-month month day-of-week [year]`, or
    /// five fields without seconds (e.g. `0 8 * * Mon-Fri`).
    #[schema(min_length = 9, max_length = 200)]
    pub cron: String,
    /// An IANA time zone the expression is read in (default `UTC`).
    #[serde(default = "utc")]
    #[schema(min_length = 1, max_length = 64)]
    pub time_zone: String,
    #[schema(minimum = 1, maximum = 10080)]
    pub duration_minutes: u32,
    /// The minimum during the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1000)]
    pub min_size: Option<u32>,
    /// The maximum during the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1000)]
    pub max_size: Option<u32>,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// Cooldowns and the scale-in step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Cooldown {
    /// No scale-out within this long of the last scale-out.
    #[schema(minimum = 0, maximum = 86400)]
    pub scale_out_seconds: u32,
    /// No scale-in within this long of the last scaling action.
    #[schema(minimum = 0, maximum = 86400)]
    pub scale_in_seconds: u32,
    /// The most workers one scale-in takes away (unlimited if unset).
    #[schema(minimum = 1, maximum = 1000)]
    pub scale_in_step: Option<u32>,
}

impl Default for Cooldown {
    fn default() -> Self {
        Self { scale_out_seconds: 0, scale_in_seconds: 30, scale_in_step: None }
    }
}

/// A disruption budget as a number of workers, for a pool of `size`.
pub fn disruption_budget(budget: &str, size: u32) -> u32 {
    match budget.strip_suffix('%') {
        Some(percent) => {
            let percent: u64 = percent.parse().unwrap_or(10);
            u32::try_from((u64::from(size) * percent).div_ceil(100)).unwrap_or(u32::MAX).max(1)
        }
        None => budget.parse().unwrap_or(1),
    }
}

/// Checks a dynamic pool's bounds and scaling spec; errors are named by field.
pub fn validate(min_size: Option<u32>, max_size: Option<u32>, spec: &ScalingSpec, errors: &mut ValidationErrors) {
    match (min_size, max_size) {
        (_, None) => errors.add("max_size", "a dynamic pool needs max_size"),
        (_, Some(0)) => errors.add("max_size", "must be at least 1"),
        (Some(min), Some(max)) if min > max => {
            errors.add("min_size", format!("must not be more than max_size ({max}), got {min}"))
        }
        (_, Some(max)) if max > 1000 => errors.add("max_size", format!("must be at most 1000, got {max}")),
        _ => {}
    }
    validate_spec(spec, errors, "scaling.");
}

/// Checks a scaling spec (for the pool's `scaling` or one of its API parts).
pub fn validate_spec(spec: &ScalingSpec, errors: &mut ValidationErrors, prefix: &str) {
    let budget = &spec.disruption_budget;
    let digits = budget.strip_suffix('%').unwrap_or(budget);
    let valid_budget = !digits.is_empty()
        && digits.len() <= 4
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.parse::<u32>().is_ok_and(|n| n >= 1 && (!budget.ends_with('%') || n <= 100));
    if !valid_budget {
        errors.add(
            format!("{prefix}disruption_budget"),
            format!("must be a count of at least 1 (\"2\") or a percentage from 1% to 100% (\"20%\"), got {budget:?}"),
        );
    }
    if spec.warm > 1000 {
        errors.add(format!("{prefix}warm"), format!("must be at most 1000, got {}", spec.warm));
    }
    if spec.idle_seconds > 86_400 {
        errors.add(format!("{prefix}idle_seconds"), "must be at most 86400");
    }
    if spec.max_lifetime_seconds.is_some_and(|s| !(60..=2_592_000).contains(&s)) {
        errors.add(format!("{prefix}max_lifetime_seconds"), "must be between 60 and 2592000");
    }
    if spec.max_jobs_per_instance.is_some_and(|jobs| !(1..=1_000_000_000).contains(&jobs)) {
        errors.add(format!("{prefix}max_jobs_per_instance"), "must be between 1 and 1000000000");
    }
    validate_policies(&spec.policies, errors, &format!("{prefix}policies"));
    validate_triggers(&spec.triggers, errors, &format!("{prefix}triggers"));
    validate_schedules(&spec.schedules, errors, &format!("{prefix}schedules"));
    validate_cooldown(&spec.cooldown, errors, &format!("{prefix}cooldown."));
}

fn check_name(name: &str, seen: &mut std::collections::BTreeSet<String>, field: String, errors: &mut ValidationErrors) {
    if let Err(message) = crate::names::check_resource_name(name) {
        errors.add(field, message);
    } else if !seen.insert(name.to_owned()) {
        errors.add(field, format!("duplicate name {name:?}"));
    }
}

pub fn validate_policies(policies: &[TargetPolicy], errors: &mut ValidationErrors, field: &str) {
    if policies.len() > 20 {
        errors.add(field, "at most 20");
    }
    let mut seen = Default::default();
    for (index, policy) in policies.iter().enumerate() {
        check_name(&policy.name, &mut seen, format!("{field}[{index}].name"), errors);
        let valid = match policy.metric {
            TargetMetric::BacklogPerSlot => policy.target > 0.0 && policy.target <= 1000.0,
            TargetMetric::Utilization => policy.target > 0.0 && policy.target <= 1.0,
        };
        if !valid || !policy.target.is_finite() {
            let range = match policy.metric {
                TargetMetric::BacklogPerSlot => "more than 0 and at most 1000",
                TargetMetric::Utilization => "more than 0 and at most 1",
            };
            errors.add(format!("{field}[{index}].target"), format!("must be {range}, got {}", policy.target));
        }
    }
}

pub fn validate_triggers(triggers: &[StepTrigger], errors: &mut ValidationErrors, field: &str) {
    if triggers.len() > 20 {
        errors.add(field, "at most 20");
    }
    let mut seen = Default::default();
    for (index, trigger) in triggers.iter().enumerate() {
        check_name(&trigger.name, &mut seen, format!("{field}[{index}].name"), errors);
        if trigger.steps.is_empty() || trigger.steps.len() > 20 {
            errors.add(format!("{field}[{index}].steps"), "needs 1 to 20 steps");
        }
        for (step_index, step) in trigger.steps.iter().enumerate() {
            if !(step.at_least.is_finite() && (0.0..=1e9).contains(&step.at_least)) {
                errors.add(
                    format!("{field}[{index}].steps[{step_index}].at_least"),
                    "must be a number from 0 to 1000000000",
                );
            }
            if !(1..=1000).contains(&step.add) {
                errors.add(format!("{field}[{index}].steps[{step_index}].add"), "must be between 1 and 1000");
            }
        }
    }
}

pub fn validate_schedules(schedules: &[Schedule], errors: &mut ValidationErrors, field: &str) {
    if schedules.len() > 20 {
        errors.add(field, "at most 20");
    }
    let mut seen = Default::default();
    for (index, schedule) in schedules.iter().enumerate() {
        check_name(&schedule.name, &mut seen, format!("{field}[{index}].name"), errors);
        if !(9..=200).contains(&schedule.cron.len()) {
            errors.add(format!("{field}[{index}].cron"), "must be 9 to 200 characters");
        } else if let Err(message) = parse_cron(&schedule.cron) {
            errors.add(format!("{field}[{index}].cron"), message);
        }
        if let Err(message) = parse_zone(&schedule.time_zone) {
            errors.add(format!("{field}[{index}].time_zone"), message);
        }
        if !(1..=10_080).contains(&schedule.duration_minutes) {
            errors.add(format!("{field}[{index}].duration_minutes"), "must be between 1 and 10080");
        }
        if let (Some(min), Some(max)) = (schedule.min_size, schedule.max_size) {
            if min > max {
                errors.add(format!("{field}[{index}].min_size"), format!("must not be more than max_size ({max})"));
            }
        }
        for (name, value) in [("min_size", schedule.min_size), ("max_size", schedule.max_size)] {
            if value.is_some_and(|v| v > 1000) {
                errors.add(format!("{field}[{index}].{name}"), "must be at most 1000");
            }
        }
    }
}

pub fn validate_cooldown(cooldown: &Cooldown, errors: &mut ValidationErrors, prefix: &str) {
    if cooldown.scale_out_seconds > 86_400 {
        errors.add(format!("{prefix}scale_out_seconds"), "must be at most 86400");
    }
    if cooldown.scale_in_seconds > 86_400 {
        errors.add(format!("{prefix}scale_in_seconds"), "must be at most 86400");
    }
    if cooldown.scale_in_step.is_some_and(|step| !(1..=1000).contains(&step)) {
        errors.add(format!("{prefix}scale_in_step"), "must be between 1 and 1000");
    }
}

/// Whether the schedule's window is open at `now`: some fire time lies in
/// `(now - duration, now]`.
pub fn schedule_active(schedule: &Schedule, now: DateTime<Utc>) -> bool {
    let (Ok(cron), Ok(zone)) = (parse_cron(&schedule.cron), parse_zone(&schedule.time_zone)) else { return false };
    let window_start = (now - Duration::minutes(schedule.duration_minutes.into())).with_timezone(&zone);
    cron.after(&window_start).next().is_some_and(|fire| fire.with_timezone(&Utc) <= now)
}

/// What the pool can serve right now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Demand {
    /// Queued jobs that fit the pool's workers and that no static pool can take.
    pub queued: u64,
    /// Jobs running on the pool's workers.
    pub running: u64,
    /// Seconds the oldest queued job has waited.
    pub oldest_wait_seconds: f64,
    /// Queued jobs within a quarter of their queue's SLA.
    pub sla_at_risk: u64,
}

/// What the pool has right now. Draining workers are not capacity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Capacity {
    /// Registered, not draining, running nothing.
    pub idle: u32,
    /// Of the idle ones, those idle for at least `idle_seconds`.
    pub idle_long_enough: u32,
    pub busy: u32,
    /// Launched or launching, not registered yet.
    pub provisioning: u32,
    pub draining: u32,
    /// Slots each worker has.
    pub slots_per_worker: u32,
}

impl Capacity {
    pub fn current(&self) -> u32 {
        self.idle + self.busy + self.provisioning
    }
}

/// The pool's scaling state, as its row keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScalingState {
    pub last_scale_out_at: Option<DateTime<Utc>>,
    pub last_scale_in_at: Option<DateTime<Utc>>,
    /// Scaling paused by the lifecycle API: the size is held.
    pub paused: bool,
}

/// What the autoscaler decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScalingAction {
    ScaleOut,
    ScaleIn,
    Hold,
}

impl ScalingAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ScalingAction::ScaleOut => "scale_out",
            ScalingAction::ScaleIn => "scale_in",
            ScalingAction::Hold => "hold",
        }
    }
}

/// A decision with everything it was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Decision {
    pub action: ScalingAction,
    /// The size before.
    pub current: u32,
    /// The size the pool should have now.
    pub desired: u32,
    /// What the policies asked for, before bounds, cooldowns and idle rules.
    pub recommended: u32,
    /// The effective bounds (schedules applied).
    pub min: u32,
    pub max: u32,
    /// The policy, trigger, schedule or rule that decided (`min_size`, `cooldown`, …).
    pub decided_by: String,
    pub reason: String,
    /// Every recommendation by name.
    pub recommendations: BTreeMap<String, u32>,
    /// Schedules whose window is open.
    pub schedules_active: Vec<String>,
    /// Until when the cooldown that held a change lasts.
    pub cooldown_until: Option<DateTime<Utc>>,
}

/// The size a dynamic pool with bounds `[min_size, max_size]` should have now.
pub fn decide(
    min_size: u32,
    max_size: u32,
    spec: &ScalingSpec,
    demand: &Demand,
    capacity: &Capacity,
    state: &ScalingState,
    now: DateTime<Utc>,
) -> Decision {
    let current = capacity.current();
    let slots = f64::from(capacity.slots_per_worker.max(1));

    // Bounds, with the schedules open now.
    let active: Vec<&Schedule> = spec.schedules.iter().filter(|s| schedule_active(s, now)).collect();
    let mut min = min_size;
    let mut max = max_size;
    let mut min_by = "min_size".to_owned();
    for schedule in &active {
        if let Some(schedule_min) = schedule.min_size.filter(|&m| m > min) {
            min = schedule_min;
            min_by = format!("schedule {}", schedule.name);
        }
    }
    let scheduled_max: Option<u32> = active.iter().filter_map(|s| s.max_size).max();
    if let Some(scheduled_max) = scheduled_max {
        max = scheduled_max;
    }
    min = min.min(max);

    // What each policy and fired trigger recommends.
    let mut recommendations = BTreeMap::new();
    let running = demand.running as f64;
    let queued = demand.queued as f64;
    if spec.policies.is_empty() {
        recommendations.insert("default".to_owned(), ceil_u32((running + queued) / slots));
    }
    for policy in &spec.policies {
        let size = match policy.metric {
            TargetMetric::BacklogPerSlot => ceil_u32(running / slots + queued / (slots * policy.target)),
            TargetMetric::Utilization => ceil_u32((running + queued) / (slots * policy.target)),
        };
        recommendations.insert(policy.name.clone(), size);
    }
    for trigger in &spec.triggers {
        let value = match trigger.metric {
            TriggerMetric::QueueDepth => queued,
            TriggerMetric::OldestWaitSeconds => demand.oldest_wait_seconds,
            TriggerMetric::SlaAtRisk => demand.sla_at_risk as f64,
        };
        let step = trigger.steps.iter().filter(|step| value >= step.at_least).map(|step| step.add).max();
        if let Some(add) = step {
            recommendations.insert(trigger.name.clone(), current.saturating_add(add));
        }
    }
    let (decided_by, recommended) = recommendations
        .iter()
        .max_by_key(|(name, size)| (**size, std::cmp::Reverse((*name).clone())))
        .map(|(name, size)| (name.clone(), *size))
        .unwrap_or_else(|| ("default".to_owned(), 0));
    let wanted = recommended.saturating_add(spec.warm);
    let target = wanted.clamp(min, max);
    let target_by = if target == wanted {
        if spec.warm > 0 && recommended < target {
            format!("{decided_by} + warm {}", spec.warm)
        } else {
            decided_by.clone()
        }
    } else if target == min {
        min_by.clone()
    } else {
        "max_size".to_owned()
    };

    let decision = |action, desired, by: String, reason: String, cooldown_until| Decision {
        action,
        current,
        desired,
        recommended,
        min,
        max,
        decided_by: by,
        reason,
        recommendations: recommendations.clone(),
        schedules_active: active.iter().map(|s| s.name.clone()).collect(),
        cooldown_until,
    };
    let hold = |by: &str, reason: String, until| decision(ScalingAction::Hold, current, by.to_owned(), reason, until);

    if state.paused {
        return hold("paused", format!("scaling is paused; {target_by} asks for {target}"), None);
    }
    if target > current {
        let add = target - current;
        if current >= min {
            if let Some(until) = cooling(state.last_scale_out_at, spec.cooldown.scale_out_seconds, now) {
                return hold("cooldown", format!("{target_by} asks for {target}; scale-out cooldown"), Some(until));
            }
        }
        let reason = format!(
            "{target_by} asks for {target} (queued {}, running {}, {} slot(s) per worker); adding {add}",
            demand.queued, demand.running, capacity.slots_per_worker
        );
        return decision(ScalingAction::ScaleOut, target, target_by, reason, None);
    }
    if target < current {
        let last_action = state.last_scale_in_at.max(state.last_scale_out_at);
        if current <= max {
            if let Some(until) = cooling(last_action, spec.cooldown.scale_in_seconds, now) {
                return hold("cooldown", format!("{target_by} asks for {target}; scale-in cooldown"), Some(until));
            }
        }
        // Only idle workers go: above the maximum any idle one, else those idle long enough.
        let victims = if current > max { capacity.idle } else { capacity.idle_long_enough };
        let step = spec.cooldown.scale_in_step.unwrap_or(u32::MAX);
        let remove = (current - target).min(victims).min(step);
        if remove == 0 {
            let reason = if capacity.idle == 0 {
                format!("{target_by} asks for {target}; every worker is busy")
            } else {
                format!("{target_by} asks for {target}; no worker idle for {} s yet", spec.idle_seconds)
            };
            return hold("idle_seconds", reason, None);
        }
        let reason = format!("{target_by} asks for {target}; removing {remove} idle worker(s)");
        return decision(ScalingAction::ScaleIn, current - remove, target_by, reason, None);
    }
    hold(&target_by, format!("{target_by} asks for {target}, which the pool has"), None)
}

fn cooling(last: Option<DateTime<Utc>>, seconds: u32, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let until = last? + Duration::seconds(seconds.into());
    (until > now).then_some(until)
}

fn ceil_u32(value: f64) -> u32 {
    if value.is_finite() && value > 0.0 {
        value.ceil().min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("a time").with_timezone(&Utc)
    }

    fn capacity(idle: u32, busy: u32, provisioning: u32) -> Capacity {
        Capacity { idle, idle_long_enough: idle, busy, provisioning, draining: 0, slots_per_worker: 1 }
    }

    fn demand(queued: u64, running: u64) -> Demand {
        Demand { queued, running, oldest_wait_seconds: 0.0, sla_at_risk: 0 }
    }

    const NOW: &str = "2026-12-02T10:00:00Z";

    #[test]
    fn a_backlog_scales_out_to_one_slot_per_job_within_max() {
        let spec = ScalingSpec::default();
        let decision = decide(0, 4, &spec, &demand(3, 0), &capacity(0, 0, 0), &Default::default(), at(NOW));
        assert_eq!(
            (decision.action, decision.desired, decision.decided_by.as_str()),
            (ScalingAction::ScaleOut, 3, "default")
        );
        let decision = decide(0, 4, &spec, &demand(30, 0), &capacity(0, 0, 0), &Default::default(), at(NOW));
        assert_eq!((decision.desired, decision.decided_by.as_str()), (4, "max_size"));
        // Provisioning workers count as capacity: no second launch for the same backlog.
        let decision = decide(0, 4, &spec, &demand(3, 0), &capacity(0, 0, 3), &Default::default(), at(NOW));
        assert_eq!(decision.action, ScalingAction::Hold);
    }

    #[test]
    fn the_largest_recommendation_wins() {
        let spec = ScalingSpec {
            policies: vec![
                TargetPolicy { name: "backlog".into(), metric: TargetMetric::BacklogPerSlot, target: 4.0 },
                TargetPolicy { name: "util".into(), metric: TargetMetric::Utilization, target: 0.5 },
            ],
            triggers: vec![StepTrigger {
                name: "deep".into(),
                metric: TriggerMetric::QueueDepth,
                steps: vec![Step { at_least: 10.0, add: 2 }, Step { at_least: 100.0, add: 8 }],
            }],
            ..ScalingSpec::default()
        };
        let slots = Capacity { slots_per_worker: 2, ..capacity(1, 1, 0) };
        // 8 queued, 2 running, 2 slots: backlog 2/2 + 8/8 = 2; util (10)/(2*0.5) = 10.
        let decision = decide(0, 50, &spec, &demand(8, 2), &slots, &Default::default(), at(NOW));
        assert_eq!(decision.recommendations["backlog"], 2);
        assert_eq!(decision.recommendations["util"], 10);
        assert!(!decision.recommendations.contains_key("deep"));
        assert_eq!((decision.desired, decision.decided_by.as_str()), (10, "util"));
        // 120 queued: the trigger's top step adds 8 to the current 2, but util wants more.
        let decision = decide(0, 500, &spec, &demand(120, 2), &slots, &Default::default(), at(NOW));
        assert_eq!(decision.recommendations["deep"], 10);
        assert_eq!(decision.desired, 122);
    }

    #[test]
    fn scale_in_takes_only_workers_idle_long_enough_and_needs_every_policy() {
        let spec = ScalingSpec::default();
        let state = ScalingState::default();
        // 4 workers, 1 busy, 3 idle but only 1 idle long enough: remove 1.
        let mut pool = capacity(3, 1, 0);
        pool.idle_long_enough = 1;
        let decision = decide(0, 4, &spec, &demand(0, 1), &pool, &state, at(NOW));
        assert_eq!((decision.action, decision.desired), (ScalingAction::ScaleIn, 3));
        // None idle long enough: hold, and say why.
        pool.idle_long_enough = 0;
        let decision = decide(0, 4, &spec, &demand(0, 1), &pool, &state, at(NOW));
        assert_eq!((decision.action, decision.decided_by.as_str()), (ScalingAction::Hold, "idle_seconds"));
        // Every worker busy: never below what runs.
        let decision = decide(0, 4, &spec, &demand(0, 0), &capacity(0, 4, 0), &state, at(NOW));
        assert_eq!((decision.action, decision.desired), (ScalingAction::Hold, 4));
        // A firing trigger blocks scale-in even when the target policy would shrink.
        let mut spec = spec;
        spec.triggers = vec![StepTrigger {
            name: "waiting".into(),
            metric: TriggerMetric::OldestWaitSeconds,
            steps: vec![Step { at_least: 30.0, add: 1 }],
        }];
        let waiting = Demand { oldest_wait_seconds: 45.0, ..demand(0, 0) };
        let decision = decide(0, 8, &spec, &waiting, &capacity(4, 0, 0), &state, at(NOW));
        assert_eq!(
            (decision.action, decision.desired, decision.decided_by.as_str()),
            (ScalingAction::ScaleOut, 5, "waiting")
        );
    }

    #[test]
    fn cooldowns_hold_changes_but_not_the_minimum() {
        let spec = ScalingSpec {
            cooldown: Cooldown { scale_out_seconds: 60, scale_in_seconds: 120, scale_in_step: Some(1) },
            ..ScalingSpec::default()
        };
        let state = ScalingState { last_scale_out_at: Some(at("2026-12-02T09:59:30Z")), ..Default::default() };
        let decision = decide(0, 10, &spec, &demand(5, 0), &capacity(0, 1, 0), &state, at(NOW));
        assert_eq!(decision.action, ScalingAction::Hold);
        assert_eq!(decision.cooldown_until, Some(at("2026-12-02T10:00:30Z")));
        // Below the minimum: grow now.
        let decision = decide(3, 10, &spec, &demand(0, 0), &capacity(0, 1, 0), &state, at(NOW));
        assert_eq!(
            (decision.action, decision.desired, decision.decided_by.as_str()),
            (ScalingAction::ScaleOut, 3, "min_size")
        );
        // Scale-in waits for 120 s after the last action, then takes one at a time.
        let decision = decide(0, 10, &spec, &demand(0, 0), &capacity(4, 0, 0), &state, at(NOW));
        assert_eq!(decision.action, ScalingAction::Hold);
        let decision = decide(0, 10, &spec, &demand(0, 0), &capacity(4, 0, 0), &state, at("2026-12-02T10:01:31Z"));
        assert_eq!((decision.action, decision.desired), (ScalingAction::ScaleIn, 3));
    }

    #[test]
    fn warm_buffer_and_pause() {
        let spec = ScalingSpec { warm: 2, ..Default::default() };
        let decision = decide(0, 10, &spec, &demand(1, 0), &capacity(0, 0, 0), &Default::default(), at(NOW));
        assert_eq!((decision.desired, decision.decided_by.as_str()), (3, "default + warm 2"));
        let paused = ScalingState { paused: true, ..Default::default() };
        let decision = decide(0, 10, &spec, &demand(100, 0), &capacity(1, 0, 0), &paused, at(NOW));
        assert_eq!(
            (decision.action, decision.desired, decision.decided_by.as_str()),
            (ScalingAction::Hold, 1, "paused")
        );
    }

    #[test]
    fn a_schedule_raises_the_minimum_in_its_window_in_its_time_zone() {
        let spec = ScalingSpec {
            schedules: vec![Schedule {
                name: "office".into(),
                cron: "0 8 * * Mon-Fri".into(),
                time_zone: "Europe/Madrid".into(),
                duration_minutes: 600,
                min_size: Some(10),
                max_size: None,
            }],
            ..Default::default()
        };
        let idle = capacity(0, 0, 0);
        let none = ScalingState::default();
        // Wednesday 2026-12-02, Madrid is UTC+1: the window is 07:00–17:00 UTC.
        for (time, open) in [
            ("2026-12-02T06:59:59Z", false),
            ("2026-12-02T07:00:00Z", true),
            ("2026-12-02T16:59:59Z", true),
            ("2026-12-02T17:00:00Z", false),
            ("2026-12-05T10:00:00Z", false), // Saturday
        ] {
            let decision = decide(0, 20, &spec, &demand(0, 0), &idle, &none, at(time));
            assert_eq!(decision.min, if open { 10 } else { 0 }, "{time}");
            assert_eq!(decision.desired, if open { 10 } else { 0 }, "{time}");
            assert_eq!(decision.schedules_active.is_empty(), !open, "{time}");
        }
    }

    #[test]
    fn specs_are_checked_field_by_field() {
        let mut errors = ValidationErrors::new();
        let spec = ScalingSpec {
            disruption_budget: "150%".into(),
            policies: vec![TargetPolicy { name: "u".into(), metric: TargetMetric::Utilization, target: 1.5 }],
            schedules: vec![Schedule {
                name: "s".into(),
                cron: "every day at noon".into(),
                time_zone: "Mars/Olympus".into(),
                duration_minutes: 0,
                min_size: Some(5),
                max_size: Some(2),
            }],
            ..Default::default()
        };
        validate(Some(5), Some(2), &spec, &mut errors);
        let message = errors.to_string();
        for expected in [
            "min_size: must not be more than max_size (2), got 5",
            "scaling.disruption_budget: must be a count",
            "scaling.policies[0].target: must be more than 0 and at most 1, got 1.5",
            "scaling.schedules[0].cron: does not parse as a cron expression",
            "scaling.schedules[0].time_zone: unknown time zone \"Mars/Olympus\"",
            "scaling.schedules[0].duration_minutes: must be between 1 and 10080",
            "scaling.schedules[0].min_size: must not be more than max_size (2)",
        ] {
            assert!(message.contains(expected), "{expected} not in {message}");
        }
        assert_eq!(disruption_budget("20%", 12), 3);
        assert_eq!(disruption_budget("20%", 1), 1);
        assert_eq!(disruption_budget("2", 100), 2);
    }

    proptest! {
        /// Whatever the inputs: the size stays within the bounds unless busy workers
        /// hold it above them; scale-in never removes more than the idle workers.
        #[test]
        fn decisions_respect_bounds_and_busy_workers(
            min in 0u32..6, extra in 0u32..10, idle in 0u32..8, busy in 0u32..8, provisioning in 0u32..4,
            queued in 0u64..100, running in 0u64..20, seconds in 0i64..600, paused in any::<bool>(),
        ) {
            let max = min + extra.max(1);
            let pool = Capacity { idle, idle_long_enough: idle / 2, busy, provisioning, draining: 0, slots_per_worker: 2 };
            let state = ScalingState {
                last_scale_out_at: Some(Utc.timestamp_opt(1_800_000_000, 0).single().expect("time")),
                last_scale_in_at: None,
                paused,
            };
            let now = Utc.timestamp_opt(1_800_000_000 + seconds, 0).single().expect("time");
            let decision = decide(min, max, &ScalingSpec::default(), &demand(queued, running), &pool, &state, now);
            let current = pool.current();
            prop_assert!(decision.desired >= busy + provisioning || decision.desired >= current);
            if decision.desired < current {
                prop_assert!(current - decision.desired <= pool.idle);
                prop_assert!(decision.desired >= min);
            }
            if decision.desired > current {
                prop_assert!(decision.desired <= max);
            }
            if paused {
                prop_assert_eq!(decision.desired, current);
            }
        }
    }
}
