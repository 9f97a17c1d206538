//! Ordering policies: each turns a job into a `rank` when it enters its queue. The queue
//! is then read in `(rank, submission sequence)` order straight off an index, so dispatch
//! never sorts or scans the backlog. Custom policies implement `OrderingPolicy` and are
//! registered by name at start-up.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::fairness::wfq_tag;
use crate::queue::QueueSettings;

/// A job without a deadline in an `edf` queue gets an implicit one this many aging
/// periods after it was queued, so it is served after jobs with nearer deadlines but
/// never waits forever.
pub const EDF_IMPLICIT_DEADLINE_AGING_PERIODS: f64 = 100.0;

/// What a policy may look at to place a job. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct RankInput {
    pub priority: i16,
    pub enqueued_at: f64,
    pub deadline: Option<f64>,
    /// The client's estimate of the run time (`metadata.estimated_seconds`), if any.
    pub estimated_seconds: Option<f64>,
    pub timeout_seconds: i32,
    /// Present for policies that ask for it (`needs_fair_context`).
    pub fair: Option<FairContext>,
}

/// Weighted-fair-queuing state at the moment a job is queued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FairContext {
    /// The queue's virtual time: the smallest tag still queued (0 when the queue is empty).
    pub virtual_time: f64,
    /// The largest tag of this tenant's jobs still queued, if any.
    pub tenant_last_tag: Option<f64>,
    pub weight: f64,
    /// 1 for the tenant's first job in this submission, 2 for its second, ...
    pub position: u32,
}

/// Places jobs in a queue. Lower ranks are dispatched first; equal ranks in submission
/// order. Must be pure: the same input always gives the same rank.
pub trait OrderingPolicy: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;

    /// Whether `rank` needs `RankInput::fair` (costs two index look-ups at enqueue).
    fn needs_fair_context(&self) -> bool {
        false
    }

    /// Whether dispatch must hand each tenant its own highest-priority job first (the
    /// `fair` policy; see the store's claim).
    fn orders_within_tenant_by_priority(&self) -> bool {
        false
    }

    fn rank(&self, job: &RankInput, queue: &QueueSettings) -> f64;
}

/// Submission order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fifo;

impl OrderingPolicy for Fifo {
    fn name(&self) -> &str {
        "fifo"
    }

    fn rank(&self, _job: &RankInput, _queue: &QueueSettings) -> f64 {
        0.0
    }
}

/// Higher priority first, FIFO within a priority, with aging: the rank is the queueing
/// time minus `priority × aging_seconds`, so a job overtakes every job queued more than
/// `(their priority − its priority) × aging_seconds` after it. A priority-1 job waits at
/// most `9 × aging_seconds` behind later arrivals of any priority.
#[derive(Debug, Clone, Copy, Default)]
pub struct Priority;

impl OrderingPolicy for Priority {
    fn name(&self) -> &str {
        "priority"
    }

    fn rank(&self, job: &RankInput, queue: &QueueSettings) -> f64 {
        job.enqueued_at - f64::from(job.priority) * queue.aging_seconds as f64
    }
}

/// Earliest deadline first; jobs without a deadline get an implicit one
/// (`EDF_IMPLICIT_DEADLINE_AGING_PERIODS × aging_seconds` after queueing).
#[derive(Debug, Clone, Copy, Default)]
pub struct EarliestDeadlineFirst;

impl OrderingPolicy for EarliestDeadlineFirst {
    fn name(&self) -> &str {
        "edf"
    }

    fn rank(&self, job: &RankInput, queue: &QueueSettings) -> f64 {
        job.deadline.unwrap_or(job.enqueued_at + EDF_IMPLICIT_DEADLINE_AGING_PERIODS * queue.aging_seconds as f64)
    }
}

/// Weighted fair queuing across tenants (see `fairness`). Within a tenant, dispatch
/// hands out the tenant's highest-priority job for each slot the tags grant it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fair;

impl OrderingPolicy for Fair {
    fn name(&self) -> &str {
        "fair"
    }

    fn needs_fair_context(&self) -> bool {
        true
    }

    fn orders_within_tenant_by_priority(&self) -> bool {
        true
    }

    fn rank(&self, job: &RankInput, _queue: &QueueSettings) -> f64 {
        match job.fair {
            Some(fair) => wfq_tag(fair.virtual_time, fair.tenant_last_tag, fair.weight, fair.position),
            // Without context (never from the store) fall back to arrival order.
            None => job.enqueued_at,
        }
    }
}

/// A custom policy shipped as the example plugin: shortest estimated job first, with
/// aging. The rank is the queueing time plus the estimate (`metadata.estimated_seconds`,
/// else the job's timeout), so short jobs go first and a long job waits at most its own
/// estimate behind later, shorter ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShortestEstimatedFirst;

impl OrderingPolicy for ShortestEstimatedFirst {
    fn name(&self) -> &str {
        "sjf"
    }

    fn rank(&self, job: &RankInput, _queue: &QueueSettings) -> f64 {
        job.enqueued_at + job.estimated_seconds.unwrap_or(f64::from(job.timeout_seconds)).max(0.0)
    }
}

/// The policies a process knows, by name.
#[derive(Debug, Clone)]
pub struct PolicyRegistry {
    policies: BTreeMap<String, Arc<dyn OrderingPolicy>>,
}

impl PolicyRegistry {
    /// `fifo`, `priority`, `edf` and `fair`.
    pub fn with_builtins() -> Self {
        let mut registry = Self { policies: BTreeMap::new() };
        registry.register(Arc::new(Fifo));
        registry.register(Arc::new(Priority));
        registry.register(Arc::new(EarliestDeadlineFirst));
        registry.register(Arc::new(Fair));
        registry
    }

    /// The built-ins and the shipped plugin `sjf`: what `hodei serve` registers.
    pub fn shipped() -> Self {
        let mut registry = Self::with_builtins();
        registry.register(Arc::new(ShortestEstimatedFirst));
        registry
    }

    /// Adds (or replaces) a policy under its own name.
    pub fn register(&mut self, policy: Arc<dyn OrderingPolicy>) -> &mut Self {
        self.policies.insert(policy.name().to_owned(), policy);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn OrderingPolicy>> {
        self.policies.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.policies.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.policies.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(priority: i16, enqueued_at: f64) -> RankInput {
        RankInput { priority, enqueued_at, deadline: None, estimated_seconds: None, timeout_seconds: 3600, fair: None }
    }

    fn order(policy: &dyn OrderingPolicy, queue: &QueueSettings, jobs: &[RankInput]) -> Vec<usize> {
        let mut indices: Vec<usize> = (0..jobs.len()).collect();
        // Stable sort: equal ranks keep submission order, as the index's sequence does.
        indices.sort_by(|a, b| policy.rank(&jobs[*a], queue).total_cmp(&policy.rank(&jobs[*b], queue)));
        indices
    }

    #[test]
    fn fifo_keeps_submission_order() {
        let queue = QueueSettings::with_policy("q", "fifo");
        let jobs = [job(1, 3.0), job(10, 2.0), job(5, 1.0)];
        assert_eq!(order(&Fifo, &queue, &jobs), [0, 1, 2]);
    }

    #[test]
    fn priority_orders_high_first_and_fifo_within_a_priority() {
        let queue = QueueSettings::with_policy("q", "priority");
        let jobs = [job(5, 0.0), job(9, 1.0), job(5, 2.0), job(1, 3.0), job(9, 4.0)];
        assert_eq!(order(&Priority, &queue, &jobs), [1, 4, 0, 2, 3]);
    }

    #[test]
    fn priority_ages_a_waiting_job_past_newer_higher_ones() {
        let queue = QueueSettings { aging_seconds: 10, ..QueueSettings::with_policy("q", "priority") };
        // A priority-1 job queued at t=0 beats a priority-10 job queued after t = 9 × 10 s.
        assert!(Priority.rank(&job(1, 0.0), &queue) < Priority.rank(&job(10, 91.0), &queue));
        assert!(Priority.rank(&job(1, 0.0), &queue) > Priority.rank(&job(10, 89.0), &queue));
    }

    #[test]
    fn edf_orders_by_deadline_with_undated_jobs_after() {
        let queue = QueueSettings::with_policy("q", "edf");
        let dated = |deadline: f64, at: f64| RankInput { deadline: Some(deadline), ..job(5, at) };
        let jobs = [job(5, 0.0), dated(500.0, 1.0), dated(100.0, 2.0), job(5, 3.0)];
        assert_eq!(order(&EarliestDeadlineFirst, &queue, &jobs), [2, 1, 0, 3]);
    }

    #[test]
    fn shortest_estimate_first_with_a_bounded_wait() {
        let queue = QueueSettings::with_policy("q", "sjf");
        let estimated = |seconds: f64, at: f64| RankInput { estimated_seconds: Some(seconds), ..job(5, at) };
        let jobs = [estimated(600.0, 0.0), estimated(5.0, 1.0), estimated(60.0, 2.0)];
        assert_eq!(order(&ShortestEstimatedFirst, &queue, &jobs), [1, 2, 0]);
        // The long job goes before anything queued more than its estimate later.
        assert!(
            ShortestEstimatedFirst.rank(&jobs[0], &queue) < ShortestEstimatedFirst.rank(&estimated(0.0, 601.0), &queue)
        );
    }

    proptest::proptest! {
        /// Priority with aging: a job is never overtaken by a later job of equal or lower
        /// priority, and a job queued more than (their priority − its priority) × aging
        /// earlier than a higher-priority job still goes first — the aging bound.
        #[test]
        fn priority_aging_bound(
            a_priority in 1i16..=10, b_priority in 1i16..=10, a_at in 0.0f64..1e6, gap in 0.0f64..1e5, aging in 1i64..1000
        ) {
            let queue = QueueSettings { aging_seconds: aging, ..QueueSettings::with_policy("q", "priority") };
            let (a, b) = (job(a_priority, a_at), job(b_priority, a_at + gap));
            let (rank_a, rank_b) = (Priority.rank(&a, &queue), Priority.rank(&b, &queue));
            if b_priority <= a_priority {
                proptest::prop_assert!(rank_a <= rank_b);
            }
            let bound = f64::from(b_priority - a_priority) * aging as f64;
            if gap > bound {
                proptest::prop_assert!(rank_a < rank_b);
            }
        }

        /// EDF: an earlier deadline always goes first, whatever the queueing times.
        #[test]
        fn edf_orders_by_deadline(d1 in 0.0f64..1e9, d2 in 0.0f64..1e9, t1 in 0.0f64..1e9, t2 in 0.0f64..1e9) {
            let queue = QueueSettings::with_policy("q", "edf");
            let a = RankInput { deadline: Some(d1), ..job(5, t1) };
            let b = RankInput { deadline: Some(d2), ..job(5, t2) };
            proptest::prop_assert_eq!(
                EarliestDeadlineFirst.rank(&a, &queue) < EarliestDeadlineFirst.rank(&b, &queue),
                d1 < d2
            );
        }
    }

    #[test]
    fn registry_knows_builtins_and_registered_plugins() {
        let mut registry = PolicyRegistry::with_builtins();
        assert!(!registry.contains("sjf"));
        registry.register(Arc::new(ShortestEstimatedFirst));
        let names: Vec<&str> = registry.names().collect();
        assert_eq!(names, ["edf", "fair", "fifo", "priority", "sjf"]);
        assert!(registry.get("fair").is_some_and(|p| p.needs_fair_context()));
        let shipped = PolicyRegistry::shipped();
        assert_eq!(shipped.names().collect::<Vec<_>>(), names);
    }
}
