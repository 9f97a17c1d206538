//! Tenant quotas, purely: what a submission's tenant may still take (`admit`), and the
//! scheduling cycle's placement within each tenant's limits, bursts included
//! (`place_within_quotas`). The store reads limits and usage (usage is summed from the
//! attempts workers hold, never kept as a counter) and carries out what these say.
//!
//! Each limit has one behaviour, as in Kueue and AWS Batch:
//! - **CPU, memory and concurrently running jobs** are *deferring* limits: a job that
//!   would take its tenant past one is accepted and waits (`tenant_at_quota`) until the
//!   tenant's own jobs free enough; the scheduling cycle never assigns past them (except
//!   within a burst session), and skips the tenant's jobs without holding up anyone else's.
//!   A job that alone needs more than the quota could never run: it is refused (422).
//! - **Queued jobs and the monthly budget** are *rejecting* limits: a submission that would
//!   go past one is refused whole (429 with `Retry-After`) and nothing is written.
//!
//! A **burst** lets a tenant go up to `percentage` of its CPU, memory and job limits (150 =
//! one and a half times), only with capacity no job within its own tenant's quota wants in
//! the same cycle: within-quota jobs are placed first, and burst jobs only when none of them
//! is left waiting for capacity.

use std::collections::BTreeMap;

use crate::placement::{Capacity, Demand, FreeWorker, Placement, Strategy, TotalCapacity, Unplaced};

/// `Retry-After` for a job accepted but deferred by a quota: guidance for clients that
/// prefer to hold back rather than queue.
pub const DEFERRED_RETRY_AFTER_SECONDS: i64 = 10;
/// `Retry-After` for a submission refused by the queued-jobs limit.
pub const QUEUED_RETRY_AFTER_SECONDS: i64 = 5;

/// A tenant limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Cpu,
    Memory,
    ConcurrentJobs,
    QueuedJobs,
    MonthlyBudget,
}

impl Resource {
    /// The limit's field name, as in the quotas API and the configuration.
    pub fn field(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu_millis",
            Resource::Memory => "memory_mib",
            Resource::ConcurrentJobs => "max_concurrent_jobs",
            Resource::QueuedJobs => "max_queued_jobs",
            Resource::MonthlyBudget => "monthly_budget",
        }
    }

    /// In words, with its unit.
    pub fn describe(self) -> &'static str {
        match self {
            Resource::Cpu => "CPU (millicores)",
            Resource::Memory => "memory (MiB)",
            Resource::ConcurrentJobs => "concurrently running jobs",
            Resource::QueuedJobs => "queued jobs",
            Resource::MonthlyBudget => "monthly budget",
        }
    }
}

/// A tenant's limits in force; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    pub cpu_millis: Option<i64>,
    pub memory_mib: Option<i64>,
    pub max_concurrent_jobs: Option<i64>,
    pub max_queued_jobs: Option<i64>,
    pub monthly_budget: Option<f64>,
}

impl Limits {
    /// It limits what the tenant may run (CPU, memory or jobs).
    pub fn limits_running(&self) -> bool {
        self.cpu_millis.is_some() || self.memory_mib.is_some() || self.max_concurrent_jobs.is_some()
    }

    /// The running limits with their use: (resource, in use, limit).
    fn running(&self, usage: &Usage) -> [(Resource, i64, Option<i64>); 3] {
        [
            (Resource::Cpu, usage.cpu_millis, self.cpu_millis),
            (Resource::Memory, usage.memory_mib, self.memory_mib),
            (Resource::ConcurrentJobs, usage.jobs, self.max_concurrent_jobs),
        ]
    }
}

/// What a tenant's assigned and running attempts hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub cpu_millis: i64,
    pub memory_mib: i64,
    pub jobs: i64,
}

impl Usage {
    fn add(&mut self, job: Request) {
        self.cpu_millis += job.cpu_millis;
        self.memory_mib += job.memory_mib;
        self.jobs += 1;
    }

    /// The highest use of a limited resource, as a percentage of its limit.
    pub fn peak_percentage(&self, limits: &Limits) -> f64 {
        limits
            .running(self)
            .into_iter()
            .filter_map(|(_, used, limit)| limit.map(|limit| percentage_of(used, limit)))
            .fold(0.0, f64::max)
    }
}

/// `used` as a percentage of `limit`; any use of a zero limit is the largest finite number
/// (it must stay a number in JSON and in the database).
fn percentage_of(used: i64, limit: i64) -> f64 {
    if limit == 0 {
        if used == 0 {
            0.0
        } else {
            f64::MAX
        }
    } else {
        used as f64 * 100.0 / limit as f64
    }
}

/// What one job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request {
    pub cpu_millis: i64,
    pub memory_mib: i64,
}

/// A limit a job would pass: how much is in use, what the job asks, and the limit (at the
/// percentage it was checked against).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Excess {
    pub resource: Resource,
    pub in_use: i64,
    pub requested: i64,
    pub limit: i64,
}

impl Excess {
    /// By how much the limit would be passed.
    pub fn over_by(&self) -> i64 {
        self.in_use + self.requested - self.limit
    }

    pub fn describe(&self) -> String {
        format!(
            "tenant at its {} quota: {} in use of {}, this job needs {}",
            self.resource.describe(),
            self.in_use,
            self.limit,
            self.requested
        )
    }
}

/// A limit scaled to `percentage` (100 = the limit itself), rounded down.
pub fn scaled(limit: i64, percentage: u32) -> i64 {
    (i128::from(limit) * i128::from(percentage) / 100).min(i128::from(i64::MAX)) as i64
}

/// The first running limit that `usage` plus `job` would pass at `percentage` of the limits.
pub fn exceeds(limits: &Limits, usage: &Usage, job: Request, percentage: u32) -> Option<Excess> {
    let requested = [job.cpu_millis, job.memory_mib, 1];
    limits.running(usage).into_iter().zip(requested).find_map(|((resource, in_use, limit), requested)| {
        let limit = scaled(limit?, percentage);
        (in_use + requested > limit).then_some(Excess { resource, in_use, requested, limit })
    })
}

/// A tenant as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TenantLoad {
    pub limits: Limits,
    pub usage: Usage,
    /// Its jobs waiting (ready or scheduled).
    pub queued: i64,
    /// Its attributed cost this calendar month.
    pub month_cost: f64,
    /// Whether the monthly budget is enforced (cost tracking is on).
    pub budget_enforced: bool,
    /// Seconds until the month ends, the `Retry-After` of a spent budget.
    pub seconds_to_month_end: i64,
}

/// What admission decides for one job of an admitted submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaDecision {
    Accepted,
    /// Accepted, but its tenant is at a quota now: it waits for the tenant's own jobs.
    Deferred(Excess),
}

/// Why a submission was refused whole.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QuotaRejection {
    /// One job alone needs more than the quota (422): it could never run.
    TooLarge { job: usize, excess: Excess },
    /// The queued-jobs limit (429).
    QueuedJobs { queued: i64, requested: i64, limit: i64, retry_after_seconds: i64 },
    /// The month's attributed cost has reached the budget (429 until the month ends).
    Budget { spent: f64, budget: f64, retry_after_seconds: i64 },
}

impl QuotaRejection {
    pub fn resource(&self) -> Resource {
        match self {
            QuotaRejection::TooLarge { excess, .. } => excess.resource,
            QuotaRejection::QueuedJobs { .. } => Resource::QueuedJobs,
            QuotaRejection::Budget { .. } => Resource::MonthlyBudget,
        }
    }

    pub fn retry_after_seconds(&self) -> Option<i64> {
        match self {
            QuotaRejection::TooLarge { .. } => None,
            QuotaRejection::QueuedJobs { retry_after_seconds, .. }
            | QuotaRejection::Budget { retry_after_seconds, .. } => Some(*retry_after_seconds),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            QuotaRejection::TooLarge { job, excess } => format!(
                "job {job} needs {} of {} but the tenant's quota is {}: it could never run",
                excess.requested,
                excess.resource.describe(),
                excess.limit
            ),
            QuotaRejection::QueuedJobs { queued, requested, limit, retry_after_seconds } => format!(
                "tenant at its queued-jobs limit: {queued} queued of {limit}, this submission adds {requested}; \
                 retry after {retry_after_seconds} s"
            ),
            QuotaRejection::Budget { spent, budget, .. } => {
                format!("tenant's monthly budget is spent: {spent:.2} attributed this month of {budget:.2}")
            }
        }
    }
}

/// Admits a submission of `jobs` (in order) for a tenant: all of them, some deferred, or
/// none. A job that alone needs more than a quota refuses the submission first (it could
/// never run), then the rejecting limits (budget, queued jobs); then each job is checked
/// against the deferring limits, each seeing what the jobs before it would take.
pub fn admit(load: &TenantLoad, jobs: &[Request]) -> Result<Vec<QuotaDecision>, QuotaRejection> {
    let limits = &load.limits;
    if let Some((job, excess)) =
        jobs.iter().enumerate().find_map(|(i, job)| exceeds(limits, &Usage::default(), *job, 100).map(|e| (i, e)))
    {
        return Err(QuotaRejection::TooLarge { job, excess });
    }
    if let (true, Some(budget)) = (load.budget_enforced, limits.monthly_budget) {
        if load.month_cost >= budget {
            return Err(QuotaRejection::Budget {
                spent: load.month_cost,
                budget,
                retry_after_seconds: load.seconds_to_month_end.max(1),
            });
        }
    }
    if let Some(limit) = limits.max_queued_jobs {
        let requested = jobs.len() as i64;
        if load.queued + requested > limit {
            return Err(QuotaRejection::QueuedJobs {
                queued: load.queued,
                requested,
                limit,
                retry_after_seconds: QUEUED_RETRY_AFTER_SECONDS,
            });
        }
    }
    let mut usage = load.usage;
    Ok(jobs
        .iter()
        .map(|job| match exceeds(limits, &usage, *job, 100) {
            Some(excess) => QuotaDecision::Deferred(excess),
            None => {
                usage.add(*job);
                QuotaDecision::Accepted
            }
        })
        .collect())
}

/// Whether and how far a tenant may go past its quota in this cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Burst {
    #[default]
    None,
    /// An open session up to `percentage` of the quota.
    Session { percentage: u32 },
    /// No session, but one opens by itself if the tenant bursts now.
    Automatic { percentage: u32 },
}

impl Burst {
    fn percentage(self) -> Option<u32> {
        match self {
            Burst::None => None,
            Burst::Session { percentage } | Burst::Automatic { percentage } => Some(percentage),
        }
    }
}

/// A limited tenant as the scheduling cycle sees it, under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TenantQuota {
    pub limits: Limits,
    pub usage: Usage,
    pub burst: Burst,
}

/// What the cycle is to write besides the placement.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaPlacement<J, W, T> {
    pub placement: Placement<J, W>,
    /// Tenants that went past their quota in this cycle, with their peak use as a
    /// percentage of their limits afterwards.
    pub bursting: BTreeMap<T, f64>,
    /// Tenants whose automatic burst opens now (a subset of `bursting`).
    pub opened: Vec<T>,
}

/// Places `jobs` (each with its tenant, in dispatch order) on `workers`, never taking a
/// tenant in `tenants` past its limits: a job that would is held (`TenantAtQuota`) and
/// later jobs go on as if it were not there. Then, if no job within its tenant's quota was
/// left waiting for capacity, the held jobs of tenants that may burst are placed within
/// their burst percentage. Tenants not in `tenants` have no limits.
pub fn place_within_quotas<J: Clone, W: Clone, T: Ord + Clone>(
    strategy: Strategy,
    jobs: &[(Demand<J>, T)],
    workers: &[(FreeWorker<W>, TotalCapacity)],
    tenants: &BTreeMap<T, TenantQuota>,
) -> QuotaPlacement<J, W, T> {
    let mut capacity = Capacity::new(strategy, workers);
    let mut usage: BTreeMap<T, Usage> = tenants.iter().map(|(t, q)| (t.clone(), q.usage)).collect();
    let mut placement = Placement { assigned: Vec::new(), unplaced: Vec::new() };
    let mut held: Vec<(&Demand<J>, &T, Excess)> = Vec::new();
    let mut within_quota_waiting = false;
    let request = |job: &Demand<J>| Request { cpu_millis: job.cpu_millis, memory_mib: job.memory_mib };
    for (job, tenant) in jobs {
        if let (Some(quota), Some(used)) = (tenants.get(tenant), usage.get(tenant)) {
            if let Some(excess) = exceeds(&quota.limits, used, request(job), 100) {
                held.push((job, tenant, excess));
                continue;
            }
        }
        match capacity.place_one(job) {
            Ok(worker) => {
                if let Some(used) = usage.get_mut(tenant) {
                    used.add(request(job));
                }
                placement.assigned.push((job.id.clone(), worker));
            }
            Err(reason) => {
                within_quota_waiting |= reason == Unplaced::NoFreeCapacity;
                placement.unplaced.push((job.id.clone(), reason));
            }
        }
    }
    let mut bursting = BTreeMap::new();
    let mut opened = Vec::new();
    for (job, tenant, excess) in held {
        let quota = &tenants[tenant];
        let used = usage.get_mut(tenant).expect("every held job's tenant has usage");
        let may_burst = quota.burst.percentage().filter(|_| !within_quota_waiting);
        let Some(percentage) = may_burst else {
            placement.unplaced.push((job.id.clone(), Unplaced::TenantAtQuota(excess)));
            continue;
        };
        if let Some(excess) = exceeds(&quota.limits, used, request(job), percentage) {
            placement.unplaced.push((job.id.clone(), Unplaced::TenantAtQuota(excess)));
            continue;
        }
        match capacity.place_one(job) {
            Ok(worker) => {
                used.add(request(job));
                placement.assigned.push((job.id.clone(), worker));
                if matches!(quota.burst, Burst::Automatic { .. }) && !opened.contains(tenant) {
                    opened.push(tenant.clone());
                }
                bursting.insert(tenant.clone(), used.peak_percentage(&quota.limits));
            }
            Err(reason) => placement.unplaced.push((job.id.clone(), reason)),
        }
    }
    QuotaPlacement { placement, bursting, opened }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::PoolKind;
    use proptest::prelude::{prop_assert, proptest};

    fn limits(cpu: i64) -> Limits {
        Limits { cpu_millis: Some(cpu), ..Limits::default() }
    }

    fn request(cpu: i64) -> Request {
        Request { cpu_millis: cpu, memory_mib: 1 }
    }

    fn worker(id: u32, cpu: i64) -> (FreeWorker<u32>, TotalCapacity) {
        (
            FreeWorker {
                id,
                kind: PoolKind::Static,
                free_cpu_millis: cpu,
                free_memory_mib: 1 << 20,
                free_slots: 100,
                labels: BTreeMap::new(),
                group: 0,
                strategy: None,
            },
            TotalCapacity { cpu_millis: cpu, memory_mib: 1 << 20 },
        )
    }

    fn job(id: u32, tenant: char, cpu: i64) -> (Demand<u32>, char) {
        (Demand { id, cpu_millis: cpu, memory_mib: 1, labels: BTreeMap::new() }, tenant)
    }

    fn quota(cpu: i64, used: i64, burst: Burst) -> TenantQuota {
        TenantQuota { limits: limits(cpu), usage: Usage { cpu_millis: used, memory_mib: 0, jobs: 0 }, burst }
    }

    #[test]
    fn jobs_past_a_deferring_limit_are_accepted_and_deferred() {
        let load = TenantLoad {
            limits: limits(2000),
            usage: Usage { cpu_millis: 1000, ..Usage::default() },
            ..TenantLoad::default()
        };
        let decisions = admit(&load, &[request(500), request(1000), request(500)]).expect("admitted");
        assert_eq!(decisions[0], QuotaDecision::Accepted);
        assert_eq!(
            decisions[1],
            QuotaDecision::Deferred(Excess { resource: Resource::Cpu, in_use: 1500, requested: 1000, limit: 2000 })
        );
        assert_eq!(
            decisions[2],
            QuotaDecision::Accepted,
            "a later job that fits is not deferred behind one that does not"
        );
    }

    #[test]
    fn rejecting_limits_refuse_the_whole_submission() {
        let queued = TenantLoad {
            limits: Limits { max_queued_jobs: Some(10), ..Limits::default() },
            queued: 9,
            ..TenantLoad::default()
        };
        assert!(admit(&queued, &[request(1)]).is_ok());
        let refused = admit(&queued, &[request(1), request(1)]).expect_err("over the queued limit");
        assert_eq!(
            refused,
            QuotaRejection::QueuedJobs {
                queued: 9,
                requested: 2,
                limit: 10,
                retry_after_seconds: QUEUED_RETRY_AFTER_SECONDS
            }
        );
        let spent = TenantLoad {
            limits: Limits { monthly_budget: Some(10.0), ..Limits::default() },
            month_cost: 10.0,
            budget_enforced: true,
            seconds_to_month_end: 3600,
            ..TenantLoad::default()
        };
        assert_eq!(admit(&spent, &[request(1)]).expect_err("spent").retry_after_seconds(), Some(3600));
        assert!(admit(&TenantLoad { budget_enforced: false, ..spent }, &[request(1)]).is_ok(), "not enforced");
        let too_large =
            admit(&TenantLoad { limits: limits(1000), ..TenantLoad::default() }, &[request(1), request(1500)]);
        assert!(matches!(too_large, Err(QuotaRejection::TooLarge { job: 1, .. })));
    }

    #[test]
    fn a_tenant_at_quota_is_skipped_without_blocking_the_others() {
        let tenants = BTreeMap::from([('a', quota(1000, 1000, Burst::None))]);
        let jobs = [job(1, 'a', 500), job(2, 'a', 500), job(3, 'b', 500)];
        let placed = place_within_quotas(Strategy::BestFit, &jobs, &[worker(0, 4000)], &tenants);
        assert_eq!(placed.placement.assigned, [(3, 0)]);
        assert!(matches!(
            placed.placement.unplaced[0],
            (1, Unplaced::TenantAtQuota(Excess { resource: Resource::Cpu, .. }))
        ));
        assert!(placed.bursting.is_empty());
    }

    #[test]
    fn a_burst_takes_only_capacity_no_job_within_quota_waits_for() {
        let tenants = BTreeMap::from([('a', quota(1000, 1000, Burst::Session { percentage: 150 }))]);
        // Idle capacity: the burst goes up to 1.5 times the quota, no further.
        let jobs = [job(1, 'a', 250), job(2, 'a', 250), job(3, 'a', 250)];
        let placed = place_within_quotas(Strategy::BestFit, &jobs, &[worker(0, 4000)], &tenants);
        assert_eq!(placed.placement.assigned.len(), 2);
        assert_eq!(placed.bursting.get(&'a'), Some(&150.0));
        assert!(placed.opened.is_empty());
        // Another tenant's job waits for capacity: no burst in this cycle.
        let jobs = [job(1, 'a', 250), job(2, 'b', 3000), job(3, 'b', 1000)];
        let placed = place_within_quotas(Strategy::BestFit, &jobs, &[worker(0, 3500)], &tenants);
        assert_eq!(placed.placement.assigned, [(2, 0)]);
        assert!(placed.bursting.is_empty());
    }

    #[test]
    fn use_of_a_zero_limit_is_a_finite_percentage() {
        let used = Usage { cpu_millis: 1, ..Usage::default() };
        assert!(used.peak_percentage(&limits(0)).is_finite());
        assert!(used.peak_percentage(&limits(0)) > used.peak_percentage(&limits(1)));
        assert_eq!(Usage::default().peak_percentage(&limits(0)), 0.0);
    }

    #[test]
    fn an_automatic_burst_opens_when_used() {
        let tenants = BTreeMap::from([('a', quota(1000, 1000, Burst::Automatic { percentage: 200 }))]);
        let placed = place_within_quotas(Strategy::BestFit, &[job(1, 'a', 500)], &[worker(0, 4000)], &tenants);
        assert_eq!(placed.opened, ['a']);
    }

    proptest! {
        /// No limited tenant ends a cycle above its quota (or its burst percentage), and a
        /// job of an unlimited tenant is never held for a quota.
        #[test]
        fn never_past_a_limit(
            jobs in proptest::collection::vec((0u8..3, 1i64..2000), 0..40),
            quotas in proptest::collection::vec((0i64..4000, 0i64..4000, proptest::option::of(101u32..300)), 2),
            capacity in 1i64..20000,
        ) {
            let tenants: BTreeMap<u8, TenantQuota> = quotas.iter().enumerate().map(|(t, (cpu, used, burst))| {
                let burst = burst.map_or(Burst::None, |percentage| Burst::Session { percentage });
                (t as u8, quota(*cpu, (*used).min(*cpu), burst))
            }).collect();
            let jobs: Vec<(Demand<usize>, u8)> = jobs.iter().enumerate()
                .map(|(i, (tenant, cpu))| (Demand { id: i, cpu_millis: *cpu, memory_mib: 1, labels: BTreeMap::new() }, *tenant))
                .collect();
            let workers = [(
                FreeWorker { id: 0u8, kind: PoolKind::Static, free_cpu_millis: capacity, free_memory_mib: 1 << 20, free_slots: 1000, labels: BTreeMap::new(), group: 0, strategy: None },
                TotalCapacity { cpu_millis: capacity, memory_mib: 1 << 20 },
            )];
            let placed = place_within_quotas(Strategy::BestFit, &jobs, &workers, &tenants);
            for (tenant, quota) in &tenants {
                let added: i64 = placed.placement.assigned.iter()
                    .filter(|(j, _)| jobs[*j].1 == *tenant).map(|(j, _)| jobs[*j].0.cpu_millis).sum();
                let percentage = quota.burst.percentage().unwrap_or(100);
                prop_assert!(quota.usage.cpu_millis + added <= scaled(quota.limits.cpu_millis.expect("every tenant here has a CPU limit"), percentage));
            }
            for (j, reason) in &placed.placement.unplaced {
                if matches!(reason, Unplaced::TenantAtQuota(_)) {
                    prop_assert!(jobs[*j].1 != 2, "tenant 2 has no limits");
                }
            }
        }
    }
}
