//! Weighted fair queuing across tenants, computed once per job at enqueue.
//!
//! Each job gets a virtual finish tag `F = max(V, F_last(tenant)) + k / weight(tenant)`,
//! where `V` is the queue's virtual time (the smallest tag still queued), `F_last` the
//! tenant's largest queued tag, and `k` the job's position among the tenant's jobs in one
//! submission. Dispatching in tag order then gives each backlogged tenant a share of
//! dispatches proportional to its weight; a tenant that was idle starts at `V` and is
//! served within one round; and a tenant's flood only lengthens its own tail.
//!
//! Also the dispatch side of the `fair` policy (`slot_order`, `retags`): in a batch, each
//! tenant's highest-priority jobs take the slots its tags earned, and tags move so its
//! share is unchanged.

use std::collections::{BTreeMap, BTreeSet};

/// The virtual finish tag of a tenant's `position`-th job in one submission.
pub fn wfq_tag(virtual_time: f64, tenant_last_tag: Option<f64>, weight: f64, position: u32) -> f64 {
    let start = tenant_last_tag.map_or(virtual_time, |last| last.max(virtual_time));
    start + f64::from(position) / weight.max(f64::MIN_POSITIVE)
}

/// Jain's fairness index of `values`: 1 when all are equal, `1/n` when one has everything.
pub fn jain_index(values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let sum_of_squares: f64 = values.iter().map(|v| v * v).sum();
    if values.is_empty() || sum_of_squares == 0.0 {
        return 1.0;
    }
    sum * sum / (values.len() as f64 * sum_of_squares)
}

/// One row of a queue's head as a scheduling step locked it, for the `fair` policy's
/// within-tenant order. `slot`: among the queue's next rows in tag order (the slots say
/// how many jobs each tenant gets now). `candidate`: offered to placement (every row
/// without a tag, and each tenant's own best jobs, as many as its slots).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadRow<J, T> {
    pub job: J,
    pub tenant: T,
    /// The row's tag (its rank in the queue's index).
    pub rank: f64,
    pub priority: i16,
    pub seq: i64,
    /// Tagged by the `fair` policy (rows queued before the queue became fair are not).
    pub fair: bool,
    pub slot: bool,
    pub candidate: bool,
}

/// The order in which a step's rows are offered to placement, as indices into `rows`:
/// each tenant's best jobs take its slots in priority order, so a tenant's
/// highest-priority job goes first at the place of its earliest tag; rows without a tag
/// keep their own place.
pub fn slot_order<J: Ord, T: Ord>(rows: &[HeadRow<J, T>]) -> Vec<usize> {
    let mut slot_ranks: BTreeMap<&T, Vec<f64>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.fair && r.slot) {
        slot_ranks.entry(&row.tenant).or_default().push(row.rank);
    }
    slot_ranks.values_mut().for_each(|ranks| ranks.sort_by(f64::total_cmp));
    let mut best: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].fair && rows[i].candidate).collect();
    best.sort_by_key(|&i| (std::cmp::Reverse(rows[i].priority), rows[i].seq));
    let mut place_of: Vec<f64> = rows.iter().map(|r| r.rank).collect();
    let mut used: BTreeMap<&T, usize> = BTreeMap::new();
    for i in best {
        let index = used.entry(&rows[i].tenant).or_default();
        if let Some(rank) = slot_ranks.get(&rows[i].tenant).and_then(|ranks| ranks.get(*index)) {
            place_of[i] = *rank;
        }
        *index += 1;
    }
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by(|&a, &b| place_of[a].total_cmp(&place_of[b]).then(rows[a].seq.cmp(&rows[b].seq)));
    order
}

/// Tags of a `fair` queue after placement, given that queue's rows (tags of different
/// queues are different scales and never move between them): each tenant used as many of its earliest slot
/// tags as it had jobs placed. A remaining row that holds one of those tags takes, in
/// order, the later tag of a placed job that was not a slot, so the tenant's remaining
/// tags are exactly the ones it has not used (priorities reorder work within a tenant,
/// never the shares between tenants). Returns (row to retag, its new tag).
pub fn retags<J: Ord + Clone, T: Ord>(rows: &[HeadRow<J, T>], placed: &BTreeSet<J>) -> Vec<(J, f64)> {
    let mut retags = Vec::new();
    let tenants: BTreeSet<&T> = rows.iter().filter(|r| r.fair).map(|r| &r.tenant).collect();
    for tenant in tenants {
        let mine = || rows.iter().filter(move |r| r.fair && &r.tenant == tenant);
        let mut slots: Vec<&HeadRow<J, T>> = mine().filter(|r| r.slot).collect();
        slots.sort_by(|a, b| a.rank.total_cmp(&b.rank));
        let used = mine().filter(|r| placed.contains(&r.job)).count();
        let used_slots = &slots[..used.min(slots.len())];
        let mut freed: Vec<&HeadRow<J, T>> = used_slots.iter().copied().filter(|r| !placed.contains(&r.job)).collect();
        let mut taken: Vec<&HeadRow<J, T>> =
            mine().filter(|r| placed.contains(&r.job)).filter(|r| !used_slots.iter().any(|s| s.job == r.job)).collect();
        freed.sort_by(|a, b| a.rank.total_cmp(&b.rank));
        taken.sort_by(|a, b| a.rank.total_cmp(&b.rank));
        retags.extend(freed.iter().zip(&taken).map(|(row, by)| (row.job.clone(), by.rank)));
    }
    retags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(job: u32, tenant: u32, rank: f64, priority: i16, slot: bool, candidate: bool) -> HeadRow<u32, u32> {
        HeadRow { job, tenant, rank, priority, seq: job.into(), fair: true, slot, candidate }
    }

    #[test]
    fn a_tenants_best_job_takes_its_earliest_slot_and_leaves_its_later_tag_behind() {
        // Tenant 1 holds the two earliest tags with low-priority jobs; its priority-9 job
        // (tag 5) is its best; tenant 2 holds tag 2.
        let rows = vec![
            head(1, 1, 1.0, 1, true, true),
            head(2, 2, 2.0, 5, true, true),
            head(3, 1, 3.0, 1, true, false),
            head(4, 1, 5.0, 9, false, true),
        ];
        let order: Vec<u32> = slot_order(&rows).into_iter().map(|i| rows[i].job).collect();
        assert_eq!(order, [4, 2, 1, 3], "job 4 goes at tag 1, job 1 at tag 3");

        // Only job 4 is placed: tenant 1 used its earliest tag (1.0), so job 1, which holds
        // it, takes job 4's tag (5.0); tenant 2 is untouched.
        assert_eq!(retags(&rows, &BTreeSet::from([4])), [(1, 5.0)]);
        // Placing jobs that hold their own slots changes no tag.
        assert!(retags(&rows, &BTreeSet::from([1, 2])).is_empty());
    }

    #[test]
    fn rows_without_a_tag_keep_their_place() {
        let mut untagged = head(7, 3, 1.5, 9, true, true);
        untagged.fair = false;
        let rows = vec![head(1, 1, 1.0, 1, true, true), untagged, head(2, 1, 2.0, 1, true, true)];
        let order: Vec<u32> = slot_order(&rows).into_iter().map(|i| rows[i].job).collect();
        assert_eq!(order, [1, 7, 2]);
        assert!(retags(&rows, &BTreeSet::from([7])).is_empty());
    }
    use proptest::prelude::*;

    /// A queue of (tenant, tag) kept in tag order, as the index keeps it.
    #[derive(Default)]
    struct SimulatedQueue {
        entries: Vec<(usize, f64, u64)>,
        sequence: u64,
    }

    impl SimulatedQueue {
        fn virtual_time(&self) -> f64 {
            self.entries
                .iter()
                .map(|e| e.1)
                .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))))
                .unwrap_or(0.0)
        }

        fn enqueue(&mut self, tenant: usize, weight: f64, count: u32) {
            let v = self.virtual_time();
            let last = self.entries.iter().filter(|e| e.0 == tenant).map(|e| e.1).reduce(f64::max);
            for position in 1..=count {
                self.sequence += 1;
                self.entries.push((tenant, wfq_tag(v, last, weight, position), self.sequence));
            }
        }

        fn dispatch(&mut self) -> Option<usize> {
            let best = (0..self.entries.len()).min_by(|a, b| {
                let (ea, eb) = (self.entries[*a], self.entries[*b]);
                ea.1.total_cmp(&eb.1).then(ea.2.cmp(&eb.2))
            })?;
            Some(self.entries.remove(best).0)
        }
    }

    #[test]
    fn tags_advance_by_inverse_weight_from_the_later_of_v_and_the_tenant() {
        assert_eq!(wfq_tag(10.0, None, 2.0, 1), 10.5);
        assert_eq!(wfq_tag(10.0, Some(12.0), 2.0, 3), 13.5);
        assert_eq!(wfq_tag(10.0, Some(4.0), 1.0, 1), 11.0);
    }

    #[test]
    fn jain_index_bounds() {
        assert!((jain_index(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((jain_index(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn a_late_tenant_is_served_within_one_round_despite_a_flood() {
        let mut queue = SimulatedQueue::default();
        queue.enqueue(0, 1.0, 10_000);
        for _ in 0..50 {
            queue.dispatch();
        }
        queue.enqueue(1, 1.0, 1);
        let position = (1..).find(|_| queue.dispatch() == Some(1)).expect("served");
        // Ahead of the newcomer's tag V + 1/w are only each other tenant's jobs tagged in
        // [V, V + 1/w]: at most w_i/w + 1 of them per tenant, here 2; the flood behind
        // them does not count.
        assert!(position <= 3, "served after {position} dispatches");
    }

    proptest! {
        /// Backlogged tenants receive dispatches in proportion to their weights.
        #[test]
        fn shares_converge_to_weights(weights in proptest::collection::vec(1u32..10, 2..6)) {
            let mut queue = SimulatedQueue::default();
            for (tenant, weight) in weights.iter().enumerate() {
                queue.enqueue(tenant, f64::from(*weight), 400);
            }
            let total_weight: u32 = weights.iter().sum();
            let rounds = 300 / total_weight as usize + 1;
            let dispatches = rounds * total_weight as usize;
            let mut counts = vec![0usize; weights.len()];
            for _ in 0..dispatches {
                counts[queue.dispatch().expect("backlogged")] += 1;
            }
            let normalised: Vec<f64> = counts.iter().zip(&weights).map(|(c, w)| *c as f64 / f64::from(*w)).collect();
            prop_assert!(jain_index(&normalised) > 0.99, "counts {:?} weights {:?}", counts, weights);
            for (count, weight) in counts.iter().zip(&weights) {
                let expected = (dispatches as f64) * f64::from(*weight) / f64::from(total_weight);
                prop_assert!((*count as f64 - expected).abs() <= 1.0 + f64::from(*weight), "count {} expected {}", count, expected);
            }
        }
    }
}
