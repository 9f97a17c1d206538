//! Replays a demand trace through a pool's autoscaler and plan with a virtual clock: the
//! same `autoscale::decide` and `pool_plan::plan` the reconcile leader runs, one tick per
//! second, with jobs placed first-come first-served on free slots. Reports what the
//! policy costs (instance-hours × price), how long jobs waited, how many instances were
//! launched and terminated, and how many busy workers were taken (must be 0).
//!
//! The machine is modelled as simply as the decision needs: an instance becomes a ready
//! worker `launch_seconds` after its launch, a draining worker leaves once its jobs end,
//! and a scale-in drain happens only if the worker is still idle (as `drain_if_idle` does
//! under the scheduler's lock).

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::autoscale::{self, Demand, ScalingAction, ScalingState};
use crate::pool::{PoolKindName, PoolSpec};
use crate::pool_plan::{
    self, Action, DrainReason, InstanceStatus, MemberFacts, MemberStatus, PlanContext, PoolState, WorkerFacts,
};

/// One job of the trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrival {
    /// Seconds from the start of the trace.
    pub at: f64,
    /// How long it runs once started.
    pub duration: f64,
}

/// How the virtual machine behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// From the launch call until the worker registers.
    pub launch_seconds: u32,
    /// Price of one instance per hour.
    pub price_per_hour: f64,
    /// When the trace starts (schedules are read against it).
    pub start: DateTime<Utc>,
}

/// What the replay measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub jobs: usize,
    /// Jobs still unfinished when the trace's last job should have ended plus an hour.
    pub unfinished: usize,
    pub instance_hours: f64,
    pub cost: f64,
    pub wait_p50_seconds: f64,
    pub wait_p95_seconds: f64,
    pub wait_max_seconds: f64,
    pub launched: usize,
    pub terminated: usize,
    /// Workers ended while they ran a job: the autoscaler must never cause one.
    pub busy_interrupted: usize,
    pub peak_instances: usize,
    pub scale_outs: usize,
    pub scale_ins: usize,
}

#[derive(Debug, Clone)]
struct Instance {
    id: u32,
    launched_at: u64,
    status: MemberStatus,
    /// Ends of the jobs it runs.
    running: Vec<u64>,
    idle_since: u64,
    jobs_run: u64,
}

/// Replays `trace` (any order) through the pool's scaling; a static pool keeps its size.
pub fn replay(spec: &PoolSpec, trace: &[Arrival], machine: &Machine) -> Report {
    let mut arrivals: Vec<Arrival> = trace.to_vec();
    arrivals.sort_by(|a, b| a.at.total_cmp(&b.at));
    let slots = spec.template.slots().max(1) as usize;
    let last_end = arrivals.iter().map(|a| a.at + a.duration).fold(0.0, f64::max);
    let horizon = (last_end + 3600.0).ceil() as u64;

    let mut queue: VecDeque<(u64, u64)> = VecDeque::new(); // (arrived, duration)
    let mut next_arrival = 0;
    let mut instances: Vec<Instance> = Vec::new();
    let mut next_id = 0u32;
    let mut waits: Vec<f64> = Vec::new();
    let mut state = ScalingState::default();
    let (mut launched, mut terminated, mut busy_interrupted) = (0, 0, 0);
    let (mut instance_seconds, mut peak, mut scale_outs, mut scale_ins) = (0u64, 0usize, 0, 0);
    let context = |now| PlanContext {
        now,
        leading_for: Duration::from_secs(86_400),
        heartbeat: Duration::from_secs(5),
        lease: Duration::from_secs(5),
        size: None,
    };

    for second in 0..=horizon {
        let now = machine.start + chrono::Duration::seconds(second as i64);
        // Arrivals, then finished jobs, then launches that completed.
        while next_arrival < arrivals.len() && arrivals[next_arrival].at <= second as f64 {
            queue.push_back((second, arrivals[next_arrival].duration.ceil().max(1.0) as u64));
            next_arrival += 1;
        }
        for instance in &mut instances {
            let before = instance.running.len();
            instance.running.retain(|&end| end > second);
            if before > 0 && instance.running.is_empty() {
                instance.idle_since = second;
            }
        }
        // First come, first served on ready, non-draining workers with a free slot.
        for instance in instances.iter_mut().filter(|i| i.status == MemberStatus::Ready) {
            while instance.running.len() < slots {
                let Some((arrived, duration)) = queue.pop_front() else { break };
                waits.push((second - arrived) as f64);
                instance.running.push(second + duration);
                instance.jobs_run += 1;
            }
        }

        // The pool's plan, from its members as the reconciler would read them.
        let facts: Vec<MemberFacts<u32>> = instances
            .iter()
            .map(|instance| {
                let registered = second >= instance.launched_at + u64::from(machine.launch_seconds);
                MemberFacts {
                    id: instance.id,
                    status: instance.status,
                    attempts: 1,
                    instance: Some(InstanceStatus::Running),
                    attempt_started_at: Some(machine.start + chrono::Duration::seconds(instance.launched_at as i64)),
                    retry_at: None,
                    worker: registered.then(|| WorkerFacts {
                        busy: !instance.running.is_empty(),
                        heartbeat_age_seconds: Some(0.0),
                        health_failures: 0,
                        idle_seconds: instance.running.is_empty().then(|| (second - instance.idle_since) as f64),
                        jobs_run: instance.jobs_run,
                        draining: false,
                    }),
                    age_seconds: (second - instance.launched_at) as f64,
                }
            })
            .collect();
        let mut plan_context = context(now);
        if spec.kind == PoolKindName::Dynamic {
            let busy_slots: usize = instances.iter().map(|i| i.running.len()).sum();
            let demand = Demand {
                queued: queue.len() as u64,
                running: busy_slots as u64,
                oldest_wait_seconds: queue.front().map_or(0.0, |(arrived, _)| (second - arrived) as f64),
                sla_at_risk: 0,
            };
            let capacity = pool_plan::capacity(spec, &facts);
            let decision = autoscale::decide(
                spec.min_workers(),
                spec.max_workers(),
                &spec.scaling,
                &demand,
                &capacity,
                &state,
                now,
            );
            match decision.action {
                ScalingAction::ScaleOut => {
                    state.last_scale_out_at = Some(now);
                    scale_outs += 1;
                }
                ScalingAction::ScaleIn => {
                    state.last_scale_in_at = Some(now);
                    scale_ins += 1;
                }
                ScalingAction::Hold => {}
            }
            plan_context.size = Some(decision.desired);
        }
        for action in pool_plan::plan(spec, PoolState::Active, &facts, &plan_context) {
            let find = |instances: &mut Vec<Instance>, id: u32| instances.iter().position(|i| i.id == id);
            match action {
                Action::MarkReady { member } => {
                    if let Some(index) = find(&mut instances, member) {
                        instances[index].status = MemberStatus::Ready;
                        instances[index].idle_since = second;
                    }
                }
                Action::AddMembers { count } => {
                    for _ in 0..count {
                        instances.push(Instance {
                            id: next_id,
                            launched_at: second,
                            status: MemberStatus::Provisioning,
                            running: Vec::new(),
                            idle_since: second,
                            jobs_run: 0,
                        });
                        next_id += 1;
                        launched += 1;
                    }
                }
                Action::Drain { member, reason } => {
                    if let Some(index) = find(&mut instances, member) {
                        // A scale-in drain only takes a worker that is still idle.
                        if reason != DrainReason::ScaleIn || instances[index].running.is_empty() {
                            instances[index].status = MemberStatus::Draining;
                        }
                    }
                }
                Action::Replace { member, .. } | Action::Discard { member } => {
                    if let Some(index) = find(&mut instances, member) {
                        if !instances[index].running.is_empty() {
                            busy_interrupted += 1;
                            // Its jobs go back to the queue, as a replaced worker's do.
                            for _ in 0..instances[index].running.len() {
                                queue.push_front((second, 1));
                            }
                        }
                        instances.remove(index);
                        terminated += 1;
                    }
                }
                Action::FailAttempt { .. }
                | Action::RemoveFailed { .. }
                | Action::StartAttempts { .. }
                | Action::RemovePoolIfEmpty => {}
            }
        }
        // A drained worker's instance ends (as the plan replaces a drained member).
        let before = instances.len();
        instances.retain(|i| !(i.status == MemberStatus::Draining && i.running.is_empty()));
        terminated += before - instances.len();
        instance_seconds += instances.len() as u64;
        peak = peak.max(instances.len());
        if next_arrival == arrivals.len()
            && queue.is_empty()
            && second as f64 > last_end
            && instances.iter().all(|i| i.running.is_empty())
            && spec.kind == PoolKindName::Static
        {
            break;
        }
    }
    waits.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        if waits.is_empty() {
            0.0
        } else {
            waits[((waits.len() - 1) as f64 * q).round() as usize]
        }
    };
    let instance_hours = instance_seconds as f64 / 3600.0;
    Report {
        jobs: arrivals.len(),
        unfinished: queue.len() + instances.iter().map(|i| i.running.len()).sum::<usize>(),
        instance_hours,
        cost: instance_hours * machine.price_per_hour,
        wait_p50_seconds: quantile(0.5),
        wait_p95_seconds: quantile(0.95),
        wait_max_seconds: waits.last().copied().unwrap_or(0.0),
        launched,
        terminated,
        busy_interrupted,
        peak_instances: peak,
        scale_outs,
        scale_ins,
    }
}

/// A bursty day, deterministic: a quiet night, a working day with bursts every hour, and
/// an evening tail. `seed` shifts the bursts.
pub fn bursty_day(seed: u64) -> Vec<Arrival> {
    let mut arrivals = Vec::new();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    for hour in 0..24u32 {
        let base = f64::from(hour) * 3600.0;
        let (steady, burst) = match hour {
            0..=6 => (2, 0),
            7 | 18..=20 => (20, 40),
            8..=17 => (40, 120),
            _ => (6, 0),
        };
        for _ in 0..steady {
            arrivals.push(Arrival { at: base + next() * 3600.0, duration: 30.0 + next() * 270.0 });
        }
        let burst_at = base + next() * 3000.0;
        for _ in 0..burst {
            arrivals.push(Arrival { at: burst_at + next() * 120.0, duration: 60.0 + next() * 120.0 });
        }
    }
    arrivals
}

/// The start of a virtual day: Wednesday 2026-12-02, 00:00 UTC.
pub fn a_wednesday() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).single().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(json: serde_json::Value) -> PoolSpec {
        serde_json::from_value(json).expect("spec")
    }

    fn machine() -> Machine {
        Machine { launch_seconds: 30, price_per_hour: 0.10, start: a_wednesday() }
    }

    #[test]
    fn a_dynamic_pool_costs_less_than_one_sized_for_the_peak_and_interrupts_nobody() {
        let trace = bursty_day(7);
        let dynamic = pool(serde_json::json!({"id": "d", "kind": "dynamic", "min_size": 1, "max_size": 40,
            "template": {"slots": 2}, "scaling": {"idle_seconds": 120, "warm": 1,
            "cooldown": {"scale_out_seconds": 10, "scale_in_seconds": 60}}}));
        let scaled = replay(&dynamic, &trace, &machine());
        let fixed =
            replay(&pool(serde_json::json!({"id": "f", "size": 40, "template": {"slots": 2}})), &trace, &machine());
        assert_eq!(scaled.busy_interrupted, 0, "{scaled:?}");
        assert_eq!((scaled.unfinished, fixed.unfinished), (0, 0), "{scaled:?} {fixed:?}");
        assert!(scaled.cost < fixed.cost / 2.0, "dynamic {scaled:?} vs fixed {fixed:?}");
        assert!(scaled.launched > 1 && scaled.terminated > 0, "{scaled:?}");
        // The fixed pool never waits for a launch; the dynamic one pays for its launches.
        assert!(fixed.wait_p95_seconds <= scaled.wait_p95_seconds, "{scaled:?} {fixed:?}");
    }

    #[test]
    fn a_schedule_keeps_workers_warm_through_office_hours() {
        let trace = bursty_day(3);
        let spec = |schedules: serde_json::Value| {
            pool(serde_json::json!({"id": "d", "kind": "dynamic", "min_size": 0, "max_size": 40,
                "template": {"slots": 2}, "scaling": {"idle_seconds": 60, "schedules": schedules}}))
        };
        let plain = replay(&spec(serde_json::json!([])), &trace, &machine());
        let office = replay(
            &spec(
                serde_json::json!([{"name": "office", "cron": "0 8 * * Mon-Fri", "duration_minutes": 600, "min_size": 10}]),
            ),
            &trace,
            &machine(),
        );
        assert_eq!((plain.busy_interrupted, office.busy_interrupted), (0, 0));
        assert!(office.cost > plain.cost, "the window's minimum costs: {office:?} vs {plain:?}");
        assert!(office.wait_p95_seconds <= plain.wait_p95_seconds, "and saves waits: {office:?} vs {plain:?}");
    }
}
