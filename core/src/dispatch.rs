//! Which queues a dispatch batch draws from, and how much from each.
//!
//! Queues are served in tier order (`high` 0, `default` 1, `low` 2, then user tiers).
//! Anti-starvation: when queues in lower tiers have a job that has waited at least their
//! `starvation_after_seconds`, the one with the oldest such job is served first, for up to
//! a quarter of the batch (at least one job). So under a permanent backlog in higher tiers
//! a starving queue is served in every batch: its oldest job waits at most
//! `starvation_after_seconds` plus one dispatch cycle per starving queue, and it drains at
//! no less than a quarter of the dispatch rate (shared among starving queues).

/// A queue that has ready work, as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueHead {
    pub queue: String,
    pub tier: i16,
    /// Queueing time of the queue's oldest ready job (Unix seconds).
    pub oldest_enqueued_at: f64,
    pub starvation_after_seconds: i64,
}

/// Take up to `max_jobs` from `queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimStep {
    pub queue: String,
    pub max_jobs: usize,
}

/// The share of a batch reserved for starving queues: a quarter, at least one job.
pub fn starvation_share(batch: usize) -> usize {
    batch.div_ceil(4).max(1).min(batch)
}

/// The claim steps for one batch of `batch` jobs. Callers run them in order and stop when
/// the batch is full; a step may find fewer jobs than `max_jobs`.
pub fn plan_dispatch(heads: &[QueueHead], now: f64, batch: usize) -> Vec<ClaimStep> {
    if batch == 0 || heads.is_empty() {
        return Vec::new();
    }
    let top_tier = heads.iter().map(|h| h.tier).min().unwrap_or_default();
    let mut starving: Vec<&QueueHead> = heads
        .iter()
        .filter(|h| h.tier > top_tier && now - h.oldest_enqueued_at >= h.starvation_after_seconds as f64)
        .collect();
    starving.sort_by(|a, b| a.oldest_enqueued_at.total_cmp(&b.oldest_enqueued_at));

    let mut steps = Vec::new();
    if let Some(most_starved) = starving.first() {
        steps.push(ClaimStep { queue: most_starved.queue.clone(), max_jobs: starvation_share(batch) });
    }
    let mut in_tier_order: Vec<&QueueHead> = heads.iter().collect();
    in_tier_order.sort_by(|a, b| a.tier.cmp(&b.tier).then_with(|| a.queue.cmp(&b.queue)));
    steps.extend(in_tier_order.into_iter().map(|head| ClaimStep { queue: head.queue.clone(), max_jobs: batch }));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(queue: &str, tier: i16, oldest: f64) -> QueueHead {
        QueueHead { queue: queue.into(), tier, oldest_enqueued_at: oldest, starvation_after_seconds: 60 }
    }

    #[test]
    fn tiers_in_order_when_nothing_starves() {
        let heads = [head("low", 2, 990.0), head("high", 0, 999.0), head("default", 1, 995.0)];
        let steps = plan_dispatch(&heads, 1000.0, 10);
        let queues: Vec<&str> = steps.iter().map(|s| s.queue.as_str()).collect();
        assert_eq!(queues, ["high", "default", "low"]);
        assert!(steps.iter().all(|s| s.max_jobs == 10));
    }

    #[test]
    fn a_starving_lower_tier_goes_first_for_a_quarter_of_the_batch() {
        let heads = [head("high", 0, 999.0), head("low", 2, 900.0)];
        let steps = plan_dispatch(&heads, 1000.0, 10);
        assert_eq!(steps[0], ClaimStep { queue: "low".into(), max_jobs: 3 });
        assert_eq!(steps[1].queue, "high");
    }

    #[test]
    fn the_top_tier_never_counts_as_starving() {
        let heads = [head("high", 0, 0.0)];
        assert_eq!(plan_dispatch(&heads, 1000.0, 4), [ClaimStep { queue: "high".into(), max_jobs: 4 }]);
    }

    #[test]
    fn a_batch_of_one_still_serves_a_starving_queue() {
        assert_eq!(starvation_share(1), 1);
        let heads = [head("high", 0, 999.0), head("low", 2, 0.0)];
        assert_eq!(plan_dispatch(&heads, 1000.0, 1)[0].queue, "low");
    }
}
