//! Dominant-resource fairness (DRF) across tenants, with decayed past usage, as Kueue's
//! admission fair sharing does it.
//!
//! Jobs ask for more than one resource (CPU and memory), so "fair" cannot mean equal CPU or
//! equal memory. DRF compares tenants by their dominant share: the largest fraction of the
//! cluster they hold in any one resource. Offering jobs to placement lowest dominant share
//! first (progressive filling) equalises dominant shares, which is the allocation no tenant
//! would trade for another's and that no tenant can game by lying about its demands.
//!
//! Current holdings alone forget history: a tenant that ran the whole cluster all night
//! would compete as an equal the moment its jobs finish. So each tenant also carries its
//! past usage in resource-seconds, decayed by `2^(−age/H)` with half-life `H`. The share is
//!
//! ```text
//! share = ( max(cpu_now / C_cpu, mem_now / C_mem)
//!         + max(cpu_past · ln2 / (C_cpu · H), mem_past · ln2 / (C_mem · H)) ) / weight
//! ```
//!
//! The past term is normalised by `C · H / ln2`, the integral of the decay weights, so it
//! is the tenant's exponentially weighted average share over recent history (the quantity
//! Kueue's moving average of usage tracks): a tenant that has always held a fraction `s`
//! of the cluster has a past term of `s`, on the same scale as its current share.
//!
//! Robustness: a capacity that is zero, negative or not a number makes its resource count
//! for nothing (that dimension's share is 0); negative or NaN amounts count as zero; a
//! weight that is not positive counts as the smallest positive weight (the tenant goes
//! last); a half-life that is not positive means no memory. No input panics, and
//! [`dominant_share`] never returns NaN.
//!
//! Pure: no IO, no clock. Callers pass `now` as Unix seconds.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::f64::consts::LN_2;

/// Resources of a whole cluster (or a cycle's capacity), the denominators of shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// CPU in thousandths of a core.
    pub cpu_millis: f64,
    /// Memory in MiB.
    pub memory_mib: f64,
}

/// A tenant's past usage, decayed: resource-seconds weighted by `2^(−age/half_life)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DecayedUsage {
    /// CPU-millis × seconds, decayed to `at`.
    pub cpu_millis_seconds: f64,
    /// MiB × seconds, decayed to `at`.
    pub memory_mib_seconds: f64,
    /// When (Unix seconds) the values were last decayed.
    pub at: f64,
}

impl DecayedUsage {
    /// The usage decayed to `now`: each value is multiplied by `2^(−(now − at)/H)`, so it
    /// never increases, and `at` becomes `now`. A `now` that is not after `at` (or is NaN)
    /// leaves the usage unchanged.
    pub fn decayed_to(&self, now: f64, half_life_seconds: f64) -> DecayedUsage {
        if !positive(now - self.at) {
            return *self;
        }
        let factor = decay_factor(now - self.at, half_life_seconds);
        DecayedUsage {
            cpu_millis_seconds: self.cpu_millis_seconds * factor,
            memory_mib_seconds: self.memory_mib_seconds * factor,
            at: now,
        }
    }

    /// The usage at `now` after holding `cpu_millis` and `memory_mib` constantly from `at`
    /// to `now`: the old usage decayed to `now`, plus the exact integral of the holdings
    /// under decay, `amount · (H / ln2) · (1 − 2^(−(now − at)/H))`. Splitting an interval
    /// in two gives the same result (up to rounding). Negative or NaN holdings count as
    /// zero; a `now` that is not after `at` changes nothing.
    pub fn accrue(&self, now: f64, half_life_seconds: f64, cpu_millis: f64, memory_mib: f64) -> DecayedUsage {
        if !positive(now - self.at) {
            return *self;
        }
        let held = held_seconds(now - self.at, half_life_seconds);
        let decayed = self.decayed_to(now, half_life_seconds);
        DecayedUsage {
            cpu_millis_seconds: decayed.cpu_millis_seconds + cpu_millis.max(0.0) * held,
            memory_mib_seconds: decayed.memory_mib_seconds + memory_mib.max(0.0) * held,
            at: now,
        }
    }
}

/// Whether `value > 0`; false for NaN, so a NaN takes the same path as zero.
fn positive(value: f64) -> bool {
    value > 0.0
}

/// The weight `2^(−elapsed/H)` of usage `elapsed` seconds old. `elapsed > 0`.
fn decay_factor(elapsed: f64, half_life_seconds: f64) -> f64 {
    if !positive(half_life_seconds) {
        return 0.0;
    }
    let factor = (-elapsed / half_life_seconds).exp2();
    // NaN only for an endless time under an endless half-life: no decay.
    if factor.is_nan() {
        1.0
    } else {
        factor
    }
}

/// `∫ 2^(−(elapsed − s)/H) ds` over `s` in `[0, elapsed]`: how many decayed seconds a
/// constant holding adds. Written as `elapsed · (1 − e^(−x)) / x` with `x = elapsed · ln2 / H`,
/// which stays accurate for short intervals and finite for huge half-lives. `elapsed > 0`.
fn held_seconds(elapsed: f64, half_life_seconds: f64) -> f64 {
    if !positive(half_life_seconds) {
        return 0.0;
    }
    let x = elapsed * LN_2 / half_life_seconds;
    if x == 0.0 || x.is_nan() {
        // No decay over the interval (endless half-life): every second counts fully.
        return elapsed;
    }
    if x.is_infinite() {
        // Everything older than a few half-lives is gone: the integral's limit.
        return half_life_seconds / LN_2;
    }
    elapsed * (-(-x).exp_m1() / x)
}

/// A tenant as DRF sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantShare {
    /// CPU it holds now (assigned and running), in millis.
    pub cpu_millis: f64,
    /// Memory it holds now (assigned and running), in MiB.
    pub memory_mib: f64,
    /// Its decayed past usage, already decayed to now.
    pub past: DecayedUsage,
    /// Its fair-queuing weight (>= 1 in practice; a weight that is not positive counts as
    /// the smallest positive one).
    pub weight: f64,
}

impl TenantShare {
    /// A tenant that holds nothing, has no past and weight 1.
    fn fresh() -> TenantShare {
        TenantShare { cpu_millis: 0.0, memory_mib: 0.0, past: DecayedUsage::default(), weight: 1.0 }
    }
}

/// The dominant share of a tenant, its current dominant share plus its past one, divided
/// by its weight:
///
/// `(max(cpu/C_cpu, mem/C_mem) + max(cpu_past·ln2/(C_cpu·H), mem_past·ln2/(C_mem·H))) / weight`
///
/// with `H = half_life_seconds`. The past term is the tenant's exponentially weighted
/// average share (see the module doc), so it approaches 1 for a tenant that has held the
/// whole cluster for many half-lives. Never NaN; a resource with zero capacity counts for
/// nothing.
pub fn dominant_share(tenant: &TenantShare, capacity: Capacity, half_life_seconds: f64) -> f64 {
    let current =
        share_of(tenant.cpu_millis, capacity.cpu_millis).max(share_of(tenant.memory_mib, capacity.memory_mib));
    let past = share_of(average_held(tenant.past.cpu_millis_seconds, half_life_seconds), capacity.cpu_millis)
        .max(share_of(average_held(tenant.past.memory_mib_seconds, half_life_seconds), capacity.memory_mib));
    let share = (current + past) / tenant.weight.max(f64::MIN_POSITIVE);
    // NaN only for an endless share under an endless weight: count it as nothing.
    if share.is_nan() {
        0.0
    } else {
        share
    }
}

/// `amount / capacity`, with negative or NaN amounts as 0 and a capacity that is not
/// positive counting for nothing. Never NaN.
fn share_of(amount: f64, capacity: f64) -> f64 {
    if !positive(capacity) {
        return 0.0;
    }
    let share = amount.max(0.0) / capacity;
    // NaN only for an endless amount of an endless capacity.
    if share.is_nan() {
        0.0
    } else {
        share
    }
}

/// The average amount held that decayed resource-seconds stand for: `usage · ln2 / H`.
/// A half-life that is not positive means no memory.
fn average_held(resource_seconds: f64, half_life_seconds: f64) -> f64 {
    if !positive(half_life_seconds) {
        return 0.0;
    }
    resource_seconds.max(0.0) * LN_2 / half_life_seconds
}

/// One candidate job: its tenant and what it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<T> {
    /// The tenant the job belongs to.
    pub tenant: T,
    /// CPU it asks for, in millis.
    pub cpu_millis: f64,
    /// Memory it asks for, in MiB.
    pub memory_mib: f64,
}

/// The order in which candidates are offered to placement, as indices into `candidates`,
/// by progressive filling: repeatedly take the next job (in the given order) of the tenant
/// with the lowest [`dominant_share`], then add that job's demand to the tenant's holdings
/// (as if it were placed) before choosing again. Ties go to the lower tenant (`Ord`), so
/// the order is deterministic. Each tenant's own jobs keep their relative order. Tenants
/// missing from `tenants` hold nothing, have no past and weight 1. Negative or NaN demands
/// add nothing.
///
/// Complexity: O(n log t) for n candidates of t tenants (a heap of tenants by share, plus
/// O(n log t) to group the candidates).
pub fn drf_order<T: Ord + Clone>(
    candidates: &[Candidate<T>],
    tenants: &BTreeMap<T, TenantShare>,
    capacity: Capacity,
    half_life_seconds: f64,
) -> Vec<usize> {
    let mut queues = tenant_queues(candidates, tenants);
    let mut heap: BinaryHeap<Reverse<Turn>> = queues
        .iter()
        .enumerate()
        .map(|(rank, (share, _))| Reverse(Turn { share: dominant_share(share, capacity, half_life_seconds), rank }))
        .collect();
    let mut order = Vec::with_capacity(candidates.len());
    while let Some(Reverse(turn)) = heap.pop() {
        let (share, jobs) = &mut queues[turn.rank];
        let Some(job) = jobs.pop_front() else { continue };
        order.push(job);
        share.cpu_millis += candidates[job].cpu_millis.max(0.0);
        share.memory_mib += candidates[job].memory_mib.max(0.0);
        if !jobs.is_empty() {
            heap.push(Reverse(Turn { share: dominant_share(share, capacity, half_life_seconds), rank: turn.rank }));
        }
    }
    order
}

/// Each tenant that has candidates, in tenant order: its share (holdings grow as its jobs
/// are taken) and its candidates' indices in their given order.
fn tenant_queues<T: Ord + Clone>(
    candidates: &[Candidate<T>],
    tenants: &BTreeMap<T, TenantShare>,
) -> Vec<(TenantShare, VecDeque<usize>)> {
    let mut jobs: BTreeMap<&T, VecDeque<usize>> = BTreeMap::new();
    for (index, candidate) in candidates.iter().enumerate() {
        jobs.entry(&candidate.tenant).or_default().push_back(index);
    }
    jobs.into_iter()
        .map(|(tenant, queue)| (tenants.get(tenant).copied().unwrap_or_else(TenantShare::fresh), queue))
        .collect()
}

/// A tenant waiting for its next pick: lower share first, then lower tenant (`rank` is its
/// place in tenant order).
#[derive(Debug, Clone, Copy)]
struct Turn {
    share: f64,
    rank: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // Shares are never NaN, so `partial_cmp` always answers (and treats −0 as 0).
        self.share.partial_cmp(&other.share).unwrap_or(Ordering::Equal).then(self.rank.cmp(&other.rank))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Turn {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: f64 = 3600.0;

    fn job(tenant: u32, cpu_millis: f64, memory_mib: f64) -> Candidate<u32> {
        Candidate { tenant, cpu_millis, memory_mib }
    }

    fn tenant(weight: f64) -> TenantShare {
        TenantShare { weight, ..TenantShare::fresh() }
    }

    fn tenants_of(order: &[usize], candidates: &[Candidate<u32>]) -> Vec<u32> {
        order.iter().map(|&i| candidates[i].tenant).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn the_textbook_example_gives_a_three_jobs_and_b_two() {
        // 9 CPU, 18 GiB; A's jobs <1 CPU, 4 GiB> (memory-dominant, 2/9 each), B's jobs
        // <3 CPU, 1 GiB> (CPU-dominant, 1/3 each).
        let capacity = Capacity { cpu_millis: 9000.0, memory_mib: 18.0 * 1024.0 };
        let candidates: Vec<_> = (0..5).flat_map(|_| [job(1, 1000.0, 4096.0), job(2, 3000.0, 1024.0)]).collect();
        let order = drf_order(&candidates, &BTreeMap::new(), capacity, HOUR);
        let picked = tenants_of(&order[..5], &candidates);
        assert_eq!(picked, [1, 2, 1, 2, 1], "A, B alternate from A by the tie rule");
        assert_eq!(picked.iter().filter(|&&t| t == 1).count(), 3);

        // In every prefix, the two dominant shares stay within one job's share (1/3).
        let mut held = BTreeMap::from([(1, tenant(1.0)), (2, tenant(1.0))]);
        for &i in &order[..5] {
            let share = held.get_mut(&candidates[i].tenant).expect("both tenants are present");
            share.cpu_millis += candidates[i].cpu_millis;
            share.memory_mib += candidates[i].memory_mib;
            let a = dominant_share(&held[&1], capacity, HOUR);
            let b = dominant_share(&held[&2], capacity, HOUR);
            assert!((a - b).abs() <= 1.0 / 3.0 + 1e-12, "a = {a}, b = {b}");
        }
    }

    #[test]
    fn a_tenant_with_large_past_usage_goes_after_a_fresh_one() {
        let capacity = Capacity { cpu_millis: 10_000.0, memory_mib: 10_000.0 };
        // Tenant 1 (the lower, so it would win ties) held half the cluster for many
        // half-lives: its past term is about one half.
        let past = DecayedUsage::default().accrue(20.0 * HOUR, HOUR, 5000.0, 1000.0);
        let heavy = TenantShare { past, ..tenant(1.0) };
        assert!((dominant_share(&heavy, capacity, HOUR) - 0.5).abs() < 1e-5);
        let tenants = BTreeMap::from([(1, heavy)]);
        let candidates: Vec<_> = (0..10).flat_map(|_| [job(1, 1000.0, 1000.0), job(2, 1000.0, 1000.0)]).collect();
        let order = tenants_of(&drf_order(&candidates, &tenants, capacity, HOUR), &candidates);
        // The fresh tenant takes every pick until its share (0.1 per job) passes 0.5.
        assert_eq!(order[..6], [2, 2, 2, 2, 2, 1]);
    }

    #[test]
    fn a_weight_two_tenant_gets_twice_the_picks_in_every_prefix() {
        let capacity = Capacity { cpu_millis: 100_000.0, memory_mib: 100_000.0 };
        let tenants = BTreeMap::from([(1, tenant(1.0)), (2, tenant(2.0))]);
        let candidates: Vec<_> = (0..30).flat_map(|_| [job(1, 1000.0, 500.0), job(2, 1000.0, 500.0)]).collect();
        let order = tenants_of(&drf_order(&candidates, &tenants, capacity, HOUR), &candidates);
        let (mut light, mut heavy) = (0i32, 0i32);
        for &t in &order[..30] {
            if t == 1 {
                light += 1;
            } else {
                heavy += 1;
            }
            // Weighted shares heavy/2 and light differ by at most one job.
            assert!((heavy - 2 * light).abs() <= 2, "heavy {heavy}, light {light}");
        }
        assert_eq!((light, heavy), (10, 20));
    }

    #[test]
    fn usage_halves_after_one_half_life() {
        let usage = DecayedUsage { cpu_millis_seconds: 800.0, memory_mib_seconds: 60.0, at: 1000.0 };
        let later = usage.decayed_to(1000.0 + HOUR, HOUR);
        assert_eq!(later, DecayedUsage { cpu_millis_seconds: 400.0, memory_mib_seconds: 30.0, at: 1000.0 + HOUR });
        assert_eq!(usage.decayed_to(500.0, HOUR), usage, "a now before `at` changes nothing");
    }

    #[test]
    fn accruing_nothing_only_decays() {
        let usage = DecayedUsage { cpu_millis_seconds: 800.0, memory_mib_seconds: 60.0, at: 1000.0 };
        let now = 1000.0 + 2.5 * HOUR;
        assert_eq!(usage.accrue(now, HOUR, 0.0, 0.0), usage.decayed_to(now, HOUR));
    }

    #[test]
    fn accruing_over_split_intervals_equals_accruing_over_the_whole() {
        let start = DecayedUsage { cpu_millis_seconds: 1.0e6, memory_mib_seconds: 2.0e5, at: 1.7e9 };
        let (t1, t2) = (1.7e9 + 1234.5, 1.7e9 + 9876.0);
        let split = start.accrue(t1, HOUR, 2000.0, 512.0).accrue(t2, HOUR, 2000.0, 512.0);
        let whole = start.accrue(t2, HOUR, 2000.0, 512.0);
        assert!(close(split.cpu_millis_seconds, whole.cpu_millis_seconds), "{split:?} vs {whole:?}");
        assert!(close(split.memory_mib_seconds, whole.memory_mib_seconds), "{split:?} vs {whole:?}");
        assert_eq!(split.at, whole.at);
    }

    #[test]
    fn a_short_interval_accrues_about_amount_times_seconds() {
        let usage = DecayedUsage::default().accrue(1.0, HOUR, 3000.0, 100.0);
        assert!((usage.cpu_millis_seconds - 3000.0).abs() < 1.0, "{usage:?}");
        assert!((usage.memory_mib_seconds - 100.0).abs() < 0.1, "{usage:?}");
    }

    #[test]
    fn a_zero_capacity_resource_counts_for_nothing() {
        let capacity = Capacity { cpu_millis: 4000.0, memory_mib: 0.0 };
        let share = TenantShare { cpu_millis: 1000.0, memory_mib: 1e6, ..tenant(1.0) };
        assert_eq!(dominant_share(&share, capacity, HOUR), 0.25);
    }

    /// The share formula written out directly, for finite positive inputs.
    fn reference_share(t: &TenantShare, c: Capacity, h: f64) -> f64 {
        let now = (t.cpu_millis / c.cpu_millis).max(t.memory_mib / c.memory_mib);
        let past = (t.past.cpu_millis_seconds * LN_2 / h / c.cpu_millis)
            .max(t.past.memory_mib_seconds * LN_2 / h / c.memory_mib);
        (now + past) / t.weight
    }

    fn sane_tenant() -> impl Strategy<Value = TenantShare> {
        (0.0f64..8000.0, 0.0f64..8000.0, 0.0f64..1e8, 0.0f64..1e8, 1.0f64..4.0).prop_map(|(c, m, pc, pm, w)| {
            TenantShare {
                cpu_millis: c,
                memory_mib: m,
                past: DecayedUsage { cpu_millis_seconds: pc, memory_mib_seconds: pm, at: 0.0 },
                weight: w,
            }
        })
    }

    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MIN_POSITIVE),
            Just(f64::MAX),
            -1e6f64..1e6,
            any::<f64>(),
        ]
    }

    fn any_tenant() -> impl Strategy<Value = TenantShare> {
        (any_f64(), any_f64(), any_f64(), any_f64(), any_f64()).prop_map(|(c, m, pc, pm, w)| TenantShare {
            cpu_millis: c,
            memory_mib: m,
            past: DecayedUsage { cpu_millis_seconds: pc, memory_mib_seconds: pm, at: 0.0 },
            weight: w,
        })
    }

    fn is_permutation(order: &[usize], n: usize) -> bool {
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        sorted == (0..n).collect::<Vec<_>>()
    }

    proptest! {
        /// The order is a permutation, keeps each tenant's jobs in order, and every pick
        /// went to the lowest-share (then lowest) tenant that still had jobs.
        #[test]
        fn each_pick_goes_to_the_tenant_with_the_lowest_share(
            jobs in prop::collection::vec((0u32..5, 0.0f64..4000.0, 0.0f64..8000.0), 0..40),
            shares in prop::collection::btree_map(0u32..5, sane_tenant(), 0..5),
            cpu in 1000.0f64..100_000.0, memory in 1000.0f64..100_000.0, half_life in 60.0f64..86_400.0,
        ) {
            let capacity = Capacity { cpu_millis: cpu, memory_mib: memory };
            let candidates: Vec<_> = jobs.iter().map(|&(t, c, m)| job(t, c, m)).collect();
            let order = drf_order(&candidates, &shares, capacity, half_life);
            prop_assert!(is_permutation(&order, candidates.len()));

            let mut held: BTreeMap<u32, TenantShare> =
                candidates.iter().map(|c| (c.tenant, shares.get(&c.tenant).copied().unwrap_or(tenant(1.0)))).collect();
            let mut remaining: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for (i, c) in candidates.iter().enumerate() {
                remaining.entry(c.tenant).or_default().push(i);
            }
            for &pick in &order {
                let chosen = candidates[pick].tenant;
                let waiting: Vec<(u32, f64)> = remaining
                    .iter()
                    .filter(|(_, jobs)| !jobs.is_empty())
                    .map(|(&t, _)| (t, reference_share(&held[&t], capacity, half_life)))
                    .collect();
                let lowest = waiting.iter().map(|w| w.1).fold(f64::INFINITY, f64::min);
                // The reference does the same operations in the same order, so shares match exactly.
                let first_lowest = waiting.iter().find(|w| w.1 == lowest).map(|w| w.0);
                prop_assert_eq!(first_lowest, Some(chosen), "shares {:?}", waiting);
                let queue = remaining.get_mut(&chosen).expect("the chosen tenant has jobs");
                prop_assert_eq!(queue.remove(0), pick, "a tenant's jobs keep their order");
                let share = held.get_mut(&chosen).expect("every tenant with jobs is held");
                share.cpu_millis += candidates[pick].cpu_millis;
                share.memory_mib += candidates[pick].memory_mib;
            }
        }

        /// The formula in the doc comment is what `dominant_share` computes.
        #[test]
        fn dominant_share_follows_the_formula(
            t in sane_tenant(), cpu in 1.0f64..1e6, memory in 1.0f64..1e6, half_life in 1.0f64..1e6,
        ) {
            let capacity = Capacity { cpu_millis: cpu, memory_mib: memory };
            prop_assert!(close(dominant_share(&t, capacity, half_life), reference_share(&t, capacity, half_life)));
        }

        /// Whatever the numbers, nothing panics, no share is NaN, and the order is a
        /// permutation.
        #[test]
        fn arbitrary_inputs_give_no_nan_and_a_permutation(
            shares in prop::collection::btree_map(0u32..4, any_tenant(), 0..4),
            jobs in prop::collection::vec((0u32..4, any_f64(), any_f64()), 0..20),
            cpu in any_f64(), memory in any_f64(), half_life in any_f64(), now in any_f64(),
        ) {
            let capacity = Capacity { cpu_millis: cpu, memory_mib: memory };
            for share in shares.values() {
                prop_assert!(!dominant_share(share, capacity, half_life).is_nan());
                let _ = share.past.decayed_to(now, half_life);
                let _ = share.past.accrue(now, half_life, share.cpu_millis, share.memory_mib);
            }
            let candidates: Vec<_> = jobs.iter().map(|&(t, c, m)| job(t, c, m)).collect();
            let order = drf_order(&candidates, &shares, capacity, half_life);
            prop_assert!(is_permutation(&order, candidates.len()));
        }

        /// Finite usage decays to finite usage that never grows, at any sane half-life.
        #[test]
        fn decay_never_increases_usage(
            cpu in 0.0f64..1e12, memory in 0.0f64..1e12, elapsed in 0.0f64..1e9, half_life in 1.0f64..1e7,
        ) {
            let usage = DecayedUsage { cpu_millis_seconds: cpu, memory_mib_seconds: memory, at: 1.7e9 };
            let later = usage.decayed_to(1.7e9 + elapsed, half_life);
            prop_assert!(later.cpu_millis_seconds <= cpu && later.cpu_millis_seconds >= 0.0);
            prop_assert!(later.memory_mib_seconds <= memory && later.memory_mib_seconds >= 0.0);
        }
    }
}
