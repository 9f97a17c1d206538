//! Weighted fair queuing across tenants, computed once per job at enqueue.
//!
//! Each job gets a virtual finish tag `F = max(V, F_last(tenant)) + k / weight(tenant)`,
//! where `V` is the queue's virtual time (the smallest tag still queued), `F_last` the
//! tenant's largest queued tag, and `k` the job's position among the tenant's jobs in one
//! submission. Dispatching in tag order then gives each backlogged tenant a share of
//! dispatches proportional to its weight; a tenant that was idle starts at `V` and is
//! served within one round; and a tenant's flood only lengthens its own tail.

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

#[cfg(test)]
mod tests {
    use super::*;
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
