//! Heartbeats: at the interval the API asks for, the worker's state and health go to the
//! API; each one that gets through renews the lease (here and in the keeper), and its
//! reply carries the instructions: jobs to cancel, a drain, new intervals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hodei_protocol::{Heartbeat, HeartbeatReply, WorkerState};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::agent::Agent;
use crate::health::{health_check, HealthCheck};
use crate::session::{answer, token_refused, Answer};

/// Heartbeats every `seconds` (or as the API says) until the lease is lost. `stopping`:
/// the agent is draining. `drain` is notified when the control plane asks for a drain.
pub async fn heartbeat_loop(
    agent: Arc<Agent>,
    seconds: u64,
    stopping: Arc<AtomicBool>,
    health_command: Option<HealthCheck>,
    drain: Arc<Notify>,
    interruption_notice: Arc<AtomicBool>,
) {
    let session = &agent.session;
    let mut interval = Duration::from_secs(seconds.max(1));
    loop {
        tokio::time::sleep(interval).await;
        let state = if stopping.load(Ordering::Relaxed) { WorkerState::Draining } else { WorkerState::Idle };
        let healthy = match &health_command {
            Some(check) => health_check(check, interval).await,
            None => true,
        };
        let sent_at = Instant::now();
        let interruption_notice = interruption_notice.load(Ordering::Relaxed);
        let response = match session.post("heartbeat", &Heartbeat { state, healthy, interruption_notice }).await {
            Ok(response) => response,
            Err(error) => {
                eprintln!("hodei-worker: heartbeat failed: {error}");
                continue;
            }
        };
        match answer(response.status()) {
            Answer::Taken => {}
            Answer::LeaseLost => return session.lease.lose(token_refused("a heartbeat")),
            _ => {
                eprintln!("hodei-worker: heartbeat failed: HTTP {}", response.status());
                continue;
            }
        }
        // A reply that cannot be read still counts as a heartbeat that got through.
        let reply = response.json::<HeartbeatReply>().await.ok();
        if let Some(reply) = &reply {
            interval = Duration::from_secs(u64::from(reply.heartbeat_seconds).max(1));
        }
        let lease =
            reply.as_ref().and_then(|reply| reply.lease_seconds).map(|seconds| Duration::from_secs(seconds.into()));
        let remaining = session.lease.renew(sent_at, lease, Some(interval));
        if let Err(error) = agent.supervisor.renew(remaining).await {
            return session.lease.lose(format!("the keeper process is gone ({error})"));
        }
        let Some(reply) = reply else { continue };
        for job in &reply.cancel {
            if let Some(cancel) = agent.cancels.lock().ok().and_then(|c| c.get(job).cloned()) {
                cancel.notify_one();
            }
        }
        if reply.drain && state != WorkerState::Draining {
            println!("the control plane asked this worker to drain");
            drain.notify_one();
        }
    }
}
