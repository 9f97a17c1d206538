//! Placement: which free worker takes which job. Pure: the scheduling cycle locks a batch
//! of free capacity and a batch of candidate jobs, asks this module, and writes the answer.
//!
//! Jobs are placed in the order given (their queue order). For each, the workers that can
//! run it (enough free CPU, memory and a slot, and every required label with its value)
//! are considered; static pools before dynamic ones, then pools in their given order
//! (`group`); among the first such pool's workers, the pool's strategy picks:
//! `best_fit` the smallest adequate worker (least CPU then memory left over), `first_fit`
//! the first in the given order, `worst_fit` the one with the most room left (spreading).
//! A job that fits nowhere is reported with the reason and does not block later jobs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    #[serde(alias = "best-fit")]
    BestFit,
    #[serde(alias = "first-fit")]
    FirstFit,
    #[serde(alias = "worst-fit")]
    WorstFit,
}

/// Static pools' workers are used before dynamic pools' workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PoolKind {
    Static,
    Dynamic,
}

/// A worker's free capacity at the start of the cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct FreeWorker<W> {
    pub id: W,
    pub kind: PoolKind,
    pub free_cpu_millis: i64,
    pub free_memory_mib: i64,
    pub free_slots: i64,
    pub labels: BTreeMap<String, String>,
    /// The worker's pool, as an order: within a kind, lower groups are tried first.
    pub group: u32,
    /// The pool's matching strategy; `None` uses the cycle's default.
    pub strategy: Option<Strategy>,
}

/// What a job needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand<J> {
    pub id: J,
    pub cpu_millis: i64,
    pub memory_mib: i64,
    pub labels: BTreeMap<String, String>,
}

/// Why a job was not placed, from the most to the least fundamental.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaced {
    /// No worker has a label the job requires (with its value).
    NoWorkerWithLabels(Vec<String>),
    /// No worker is big enough, even when idle.
    TooLarge,
    /// Workers could run it, but none has room right now.
    NoFreeCapacity,
    /// Its tenant is at a quota (`hodei_core::quota`): it waits for the tenant's own jobs
    /// to free some.
    TenantAtQuota(crate::quota::Excess),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Placement<J, W> {
    pub assigned: Vec<(J, W)>,
    pub unplaced: Vec<(J, Unplaced)>,
}

/// The capacity a worker has when idle, to tell "too large" from "busy".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TotalCapacity {
    pub cpu_millis: i64,
    pub memory_mib: i64,
}

fn has_labels(worker: &BTreeMap<String, String>, required: &BTreeMap<String, String>) -> bool {
    required.iter().all(|(key, value)| worker.get(key) == Some(value))
}

/// How many candidate jobs a scheduling cycle reads (and locks) for `free_slots` free
/// slots, at most `limit`: twice the slots, so that jobs which do not fit where the slots
/// are do not leave them empty, and at least `MIN_CANDIDATES`. Under load the slots are
/// few and the queue long: reading the whole `limit` would lock, and note a reason on,
/// many jobs only to leave them where they are. Rounded up to a power of two, so that a
/// cycle asks for one of a few sizes (each size is a statement of its own, prepared once
/// per connection).
pub fn candidate_budget(free_slots: usize, limit: usize) -> usize {
    free_slots.saturating_mul(2).max(MIN_CANDIDATES).checked_next_power_of_two().unwrap_or(usize::MAX).min(limit)
}

/// The fewest candidates a cycle reads (`candidate_budget`).
pub const MIN_CANDIDATES: usize = 32;

/// Places `jobs` on `workers` (with each worker's total capacity, for reasons).
pub fn place<J: Clone, W: Clone>(
    strategy: Strategy,
    jobs: &[Demand<J>],
    workers: &[(FreeWorker<W>, TotalCapacity)],
) -> Placement<J, W> {
    let mut capacity = Capacity::new(strategy, workers);
    let mut placement = Placement { assigned: Vec::new(), unplaced: Vec::new() };
    for job in jobs {
        match capacity.place_one(job) {
            Ok(worker) => placement.assigned.push((job.id.clone(), worker)),
            Err(reason) => placement.unplaced.push((job.id.clone(), reason)),
        }
    }
    placement
}

/// The free capacity of a cycle's workers, taken job by job (`place` and
/// `hodei_core::quota::place_within_quotas` both place through it).
#[derive(Debug, Clone)]
pub struct Capacity<'a, W> {
    strategy: Strategy,
    workers: &'a [(FreeWorker<W>, TotalCapacity)],
    free: Vec<FreeWorker<W>>,
}

impl<'a, W: Clone> Capacity<'a, W> {
    pub fn new(strategy: Strategy, workers: &'a [(FreeWorker<W>, TotalCapacity)]) -> Self {
        Self { strategy, workers, free: workers.iter().map(|(w, _)| w.clone()).collect() }
    }

    /// Puts `job` on the worker its pool's strategy picks and takes what it needs from that
    /// worker, or says why it fits nowhere now.
    pub fn place_one<J>(&mut self, job: &Demand<J>) -> Result<W, Unplaced> {
        let strategy = self.strategy;
        let candidates = self.free.iter().enumerate().filter(|(_, w)| {
            w.free_slots > 0
                && w.free_cpu_millis >= job.cpu_millis
                && w.free_memory_mib >= job.memory_mib
                && has_labels(&w.labels, &job.labels)
        });
        let leftover = |w: &FreeWorker<W>| (w.free_cpu_millis - job.cpu_millis, w.free_memory_mib - job.memory_mib);
        // Every worker of one group shares a strategy, so keys only compare like with like.
        let key = |index: usize, w: &FreeWorker<W>| {
            let within = match w.strategy.unwrap_or(strategy) {
                Strategy::FirstFit => (0, 0),
                Strategy::BestFit => leftover(w),
                Strategy::WorstFit => (-leftover(w).0, -leftover(w).1),
            };
            (w.kind, w.group, within, index)
        };
        let chosen = candidates.min_by_key(|(index, w)| key(*index, w)).map(|(index, _)| index);
        if let Some(index) = chosen {
            let worker = &mut self.free[index];
            worker.free_cpu_millis -= job.cpu_millis;
            worker.free_memory_mib -= job.memory_mib;
            worker.free_slots -= 1;
            return Ok(worker.id.clone());
        }
        let labelled: Vec<&(FreeWorker<W>, TotalCapacity)> =
            self.workers.iter().filter(|(w, _)| has_labels(&w.labels, &job.labels)).collect();
        Err(if labelled.is_empty() && !job.labels.is_empty() {
            Unplaced::NoWorkerWithLabels(job.labels.iter().map(|(k, v)| format!("{k}={v}")).collect())
        } else if !labelled
            .iter()
            .any(|(_, total)| total.cpu_millis >= job.cpu_millis && total.memory_mib >= job.memory_mib)
        {
            Unplaced::TooLarge
        } else {
            Unplaced::NoFreeCapacity
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
    use std::collections::BTreeSet;

    #[test]
    fn a_cycle_reads_twice_its_free_slots_within_its_limit() {
        assert_eq!(candidate_budget(0, 500), MIN_CANDIDATES);
        assert_eq!(candidate_budget(1, 500), MIN_CANDIDATES);
        assert_eq!(candidate_budget(50, 500), 128, "twice the slots, to a power of two");
        assert_eq!(candidate_budget(64, 500), 128);
        assert_eq!(candidate_budget(400, 500), 500);
        assert_eq!(candidate_budget(50, 10), 10, "never past the limit");
        assert_eq!(candidate_budget(usize::MAX, 500), 500);
        let sizes: BTreeSet<usize> = (0..10_000).map(|free| candidate_budget(free, 500)).collect();
        assert_eq!(sizes, BTreeSet::from([32, 64, 128, 256, 500]), "a few sizes whatever the free slots");
    }

    fn worker(id: &str, kind: PoolKind, cpu: i64, memory: i64) -> (FreeWorker<String>, TotalCapacity) {
        (
            FreeWorker {
                id: id.into(),
                kind,
                free_cpu_millis: cpu,
                free_memory_mib: memory,
                free_slots: 4,
                labels: BTreeMap::new(),
                group: 0,
                strategy: None,
            },
            TotalCapacity { cpu_millis: cpu, memory_mib: memory },
        )
    }

    fn job(id: &str, cpu: i64, memory: i64) -> Demand<String> {
        Demand { id: id.into(), cpu_millis: cpu, memory_mib: memory, labels: BTreeMap::new() }
    }

    fn workers_124() -> Vec<(FreeWorker<String>, TotalCapacity)> {
        vec![
            worker("four", PoolKind::Static, 4000, 8192),
            worker("one", PoolKind::Static, 1000, 2048),
            worker("two", PoolKind::Static, 2000, 4096),
        ]
    }

    #[test]
    fn best_fit_takes_the_smallest_adequate_worker() {
        let placed = place(Strategy::BestFit, &[job("j", 1000, 512)], &workers_124());
        assert_eq!(placed.assigned, [("j".to_owned(), "one".to_owned())]);
    }

    #[test]
    fn first_and_worst_fit() {
        let first = place(Strategy::FirstFit, &[job("j", 1000, 512)], &workers_124());
        assert_eq!(first.assigned[0].1, "four");
        let worst = place(Strategy::WorstFit, &[job("j", 1000, 512)], &workers_124());
        assert_eq!(worst.assigned[0].1, "four");
        let worst_small = place(Strategy::WorstFit, &[job("a", 1000, 512), job("b", 1000, 512)], &workers_124());
        assert_eq!(worst_small.assigned[1].1, "four", "four still has the most room after one job");
    }

    #[test]
    fn static_pools_before_dynamic() {
        let workers = vec![
            worker("dynamic-small", PoolKind::Dynamic, 1000, 1024),
            worker("static-big", PoolKind::Static, 8000, 16384),
        ];
        let placed = place(Strategy::BestFit, &[job("j", 1000, 512)], &workers);
        assert_eq!(placed.assigned[0].1, "static-big");
    }

    #[test]
    fn pools_are_tried_in_order_each_with_its_own_strategy() {
        let mut workers = workers_124();
        // "four" alone in the first pool, which spreads; "one" and "two" in the second.
        workers[0].0.group = 0;
        workers[0].0.strategy = Some(Strategy::WorstFit);
        for (worker, _) in &mut workers[1..] {
            worker.group = 1;
            worker.strategy = Some(Strategy::BestFit);
        }
        let placed = place(Strategy::FirstFit, &[job("a", 1000, 512)], &workers);
        assert_eq!(placed.assigned[0].1, "four", "the first pool that fits wins");
        let placed = place(Strategy::FirstFit, &[job("big", 5000, 512), job("b", 1500, 512)], &workers);
        assert_eq!(placed.assigned, [("b".to_owned(), "four".to_owned())]);
        workers[0].0.free_slots = 0;
        let placed = place(Strategy::FirstFit, &[job("c", 1000, 512)], &workers);
        assert_eq!(placed.assigned[0].1, "one", "the second pool's best fit");
    }

    #[test]
    fn a_job_that_fits_nowhere_waits_with_a_reason_and_blocks_nothing() {
        let mut gpu_job = job("gpu", 1000, 512);
        gpu_job.labels.insert("gpu".into(), "a100".into());
        let jobs = [job("huge", 64000, 512), gpu_job, job("small", 500, 256)];
        let placed = place(Strategy::BestFit, &jobs, &workers_124());
        assert_eq!(placed.assigned, [("small".to_owned(), "one".to_owned())]);
        assert_eq!(placed.unplaced[0], ("huge".to_owned(), Unplaced::TooLarge));
        assert_eq!(placed.unplaced[1], ("gpu".to_owned(), Unplaced::NoWorkerWithLabels(vec!["gpu=a100".into()])));
    }

    #[test]
    fn busy_workers_are_reported_as_no_free_capacity() {
        let mut busy = worker("busy", PoolKind::Static, 1000, 1024);
        busy.0.free_slots = 0;
        let placed = place(Strategy::BestFit, &[job("j", 500, 256)], &[busy]);
        assert_eq!(placed.unplaced, [("j".to_owned(), Unplaced::NoFreeCapacity)]);
    }

    proptest! {
        /// No worker is ever given more than it has free.
        #[test]
        fn never_overcommits(
            jobs in proptest::collection::vec((1i64..4000, 1i64..8192), 0..40),
            capacities in proptest::collection::vec((1i64..8000, 1i64..16384, 1i64..4), 1..6),
            strategy in prop_oneof![Just(Strategy::BestFit), Just(Strategy::FirstFit), Just(Strategy::WorstFit)],
        ) {
            let demands: Vec<Demand<usize>> = jobs.iter().enumerate()
                .map(|(i, (cpu, mem))| Demand { id: i, cpu_millis: *cpu, memory_mib: *mem, labels: BTreeMap::new() })
                .collect();
            let workers: Vec<(FreeWorker<usize>, TotalCapacity)> = capacities.iter().enumerate()
                .map(|(i, (cpu, mem, slots))| (
                    FreeWorker { id: i, kind: PoolKind::Static, free_cpu_millis: *cpu, free_memory_mib: *mem, free_slots: *slots, labels: BTreeMap::new(), group: 0, strategy: None },
                    TotalCapacity { cpu_millis: *cpu, memory_mib: *mem },
                ))
                .collect();
            let placed = place(strategy, &demands, &workers);
            prop_assert_eq!(placed.assigned.len() + placed.unplaced.len(), demands.len());
            for (index, (cpu, mem, slots)) in capacities.iter().enumerate() {
                let mine: Vec<usize> = placed.assigned.iter().filter(|(_, w)| *w == index).map(|(j, _)| *j).collect();
                prop_assert!(mine.len() as i64 <= *slots);
                prop_assert!(mine.iter().map(|j| demands[*j].cpu_millis).sum::<i64>() <= *cpu);
                prop_assert!(mine.iter().map(|j| demands[*j].memory_mib).sum::<i64>() <= *mem);
            }
        }
    }
}
