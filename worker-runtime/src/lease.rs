//! What the agent knows of its lease. The control plane gives a worker's jobs away when the
//! worker has not heartbeated for a lease (`worker_lease_seconds`), and kills its token when
//! it marks the worker gone; from then on the jobs may be running elsewhere, so the agent
//! must have stopped them (local fencing). This module decides when that moment is; it
//! never stops anything itself.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The lease as this agent sees it, and whether it is lost.
#[derive(Debug)]
pub struct Lease {
    held: Mutex<Held>,
    lost: tokio::sync::watch::Sender<Option<String>>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    terms: Terms,
    /// When this agent stops its jobs unless a heartbeat gets through first.
    fence_at: Instant,
}

/// The protocol's timing as this agent knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// How long the control plane holds the jobs without a heartbeat.
    pub lease: Duration,
    /// How often this agent heartbeats.
    pub heartbeat: Duration,
}

/// When jobs must be stopped after a heartbeat sent at `sent_at` got through. The control
/// plane counts the lease from when it received that heartbeat, which is later, so this is
/// early by the request's latency, and by a margin for clocks that run apart that never
/// eats more than half the slack a lease leaves over a heartbeat interval. A lease the
/// agent assumed shorter than a heartbeat interval is wrong (the control plane's is
/// always longer), and counts as one second longer than the interval.
pub fn fence_deadline(sent_at: Instant, terms: Terms) -> Instant {
    let lease = terms.lease.max(terms.heartbeat + Duration::from_secs(1));
    let margin = (lease / 10).min(Duration::from_secs(1)).min((lease - terms.heartbeat) / 2);
    sent_at + lease - margin
}

impl Lease {
    /// A lease on `terms` that started when the registration was sent.
    pub fn new(terms: Terms, sent_at: Instant) -> Self {
        let held = Held { terms, fence_at: fence_deadline(sent_at, terms) };
        Self { held: Mutex::new(held), lost: tokio::sync::watch::Sender::new(None) }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A heartbeat sent at `sent_at` got through; its reply may have given the lease and
    /// the heartbeat interval. Returns how long the jobs may run from now without another.
    pub fn renew(&self, sent_at: Instant, lease: Option<Duration>, heartbeat: Option<Duration>) -> Duration {
        let mut held = self.held();
        if let Some(lease) = lease.filter(|lease| !lease.is_zero()) {
            held.terms.lease = lease;
        }
        if let Some(heartbeat) = heartbeat.filter(|heartbeat| !heartbeat.is_zero()) {
            held.terms.heartbeat = heartbeat;
        }
        held.fence_at = held.fence_at.max(fence_deadline(sent_at, held.terms));
        held.fence_at.saturating_duration_since(Instant::now())
    }

    pub fn length(&self) -> Duration {
        self.held().terms.lease
    }

    pub fn fence_at(&self) -> Instant {
        self.held().fence_at
    }

    /// The lease is gone, for `reason` (the first reason given is kept).
    pub fn lose(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.lost.send_if_modified(|lost| {
            if lost.is_some() {
                return false;
            }
            *lost = Some(reason);
            true
        });
    }

    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Resolves, with the reason, once the lease is lost.
    pub async fn lost(&self) -> String {
        let mut receiver = self.lost.subscribe();
        let reason = match receiver.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The sender lives as long as `self`.
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

/// Loses the lease once its fence deadline passes without a heartbeat moving it.
pub async fn watch(lease: &Lease) {
    loop {
        let fence_at = lease.fence_at();
        tokio::select! {
            _ = tokio::time::sleep_until(fence_at) => {}
            _ = lease.lost() => return,
        }
        if lease.fence_at() <= Instant::now() {
            lease.lose(format!("no heartbeat got through for {} s, the lease", lease.length().as_secs_f64()));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_comes_before_the_lease_runs_out_but_after_the_next_heartbeat_is_due() {
        let now = Instant::now();
        let cases = [
            // (lease, heartbeat, fence after, all in ms)
            (30_000, 5_000, 29_000),
            (4_000, 1_000, 3_600),
            (2_000, 1_000, 1_800),
            (30_000, 29_000, 29_500),
            (600_000, 5_000, 599_000),
            // Assumed shorter than a heartbeat interval: wrong, so one second past it.
            (30_000, 60_000, 60_500),
        ];
        for (lease, heartbeat, fence) in cases {
            let terms = Terms { lease: Duration::from_millis(lease), heartbeat: Duration::from_millis(heartbeat) };
            assert_eq!(fence_deadline(now, terms), now + Duration::from_millis(fence), "{terms:?}");
        }
    }

    #[tokio::test]
    async fn a_lease_is_lost_when_no_heartbeat_moves_it_and_kept_while_they_do() {
        let started = Instant::now();
        let terms = Terms { lease: Duration::from_millis(1000), heartbeat: Duration::from_millis(100) };
        let lease = Lease::new(terms, started);
        let watcher = async {
            watch(&lease).await;
            Instant::now()
        };
        let beats = async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // The reply says the lease is longer than this agent assumed.
                lease.renew(Instant::now(), Some(Duration::from_millis(1200)), None);
            }
            std::future::pending::<()>().await
        };
        let lost_at = tokio::select! {
            lost_at = watcher => lost_at,
            _ = beats => unreachable!("the heartbeats never end"),
        };
        // The last heartbeat went at 500 ms or later: the fence is 1200 - 120 ms after it.
        assert!(lost_at - started >= Duration::from_millis(1580), "{:?}", lost_at - started);
        assert!(lease.is_lost());
        assert_eq!(lease.lost().await, "no heartbeat got through for 1.2 s, the lease");
        lease.lose("a second reason is ignored");
        assert!(lease.lost().await.starts_with("no heartbeat"));
    }
}
