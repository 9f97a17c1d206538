//! `run`: the agent's life. It starts the keeper, registers, then heartbeats, reports and
//! long-polls for work, running each assignment; on SIGTERM, Ctrl-C, a drain instruction
//! or (with `--exit-with-parent`) its parent's death it drains, deregisters and returns.
//! When the lease is lost it kills its jobs at once and fails (local fencing).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use hodei_protocol::RegisterWorker;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use crate::cli::{Argv, RunArgs};
use crate::health::HealthCheck;
use crate::keeper::{self, Supervisor};
use crate::lease::{self, Lease};
use crate::reports::{report_loop, Reporter};
use crate::session::{self, Session};
use crate::{executor, heartbeat, machine};

/// What the agent's tasks share once it is registered.
#[derive(Debug)]
pub struct Agent {
    /// The API, and the lease.
    pub(crate) session: Arc<Session>,
    /// Running jobs, by id: notified to stop them when the API says they were cancelled.
    pub(crate) cancels: Mutex<BTreeMap<Uuid, Arc<Notify>>>,
    /// Set when a drain ran out of time: jobs stopped now were interrupted, not cancelled.
    pub(crate) interrupted: AtomicBool,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    pub(crate) kill_grace: Duration,
    /// Starts and results waiting to go to the API in the next batch.
    pub(crate) reports: Reporter,
    /// The keeper, told of every job's process group.
    pub(crate) supervisor: Supervisor,
    /// Benchmarks only (`--executor noop`): report each assignment succeeded, run nothing.
    pub(crate) noop: bool,
}

/// The `run` command: until drained (`Ok`), or until the lease is lost or the API
/// refuses the registration (`Err`).
pub async fn run(client: reqwest::Client, api_urls: Vec<String>, args: RunArgs) -> anyhow::Result<()> {
    // First, before any job can start: the keeper that kills this agent's jobs if it dies.
    let (supervisor, mut keeper) = Supervisor::start().context("starting the keeper process")?;
    let (detected_cpu, detected_memory) = machine::detect_resources();
    let request = RegisterWorker {
        name: args.name.clone().unwrap_or_else(machine::host_name),
        pool: Some(args.pool.clone()),
        cpu_millis: args.cpu_millis.unwrap_or(detected_cpu),
        memory_mib: args.memory_mib.unwrap_or(detected_memory),
        slots: Some(args.slots),
        labels: args.labels.iter().cloned().collect(),
        instance_id: args.instance_id.clone(),
    };

    // Stop taking work on SIGTERM / Ctrl-C, when the control plane asks for a drain, or
    // (with --exit-with-parent) when the parent process is gone.
    let drain = Arc::new(Notify::new());
    let orphaned = Arc::new(AtomicBool::new(false));
    if args.exit_with_parent {
        tokio::spawn(watch_parent(drain.clone(), orphaned.clone()));
    }
    let interruption_notice = Arc::new(AtomicBool::new(false));
    if let Some(url) = &args.interruption_url {
        let every = Duration::from_secs(args.interruption_poll_seconds);
        tokio::spawn(crate::interruption::watch(
            client.clone(),
            url.clone(),
            every,
            interruption_notice.clone(),
            drain.clone(),
        ));
    }
    let mut stop = Box::pin({
        let drain = drain.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = drain.notified() => {}
            }
        }
    });
    // Register, retrying with backoff while the API is unreachable.
    let Some(registration) =
        session::register(&client, &api_urls, &args.registration_token, &request, &mut stop).await?
    else {
        return Ok(());
    };
    let worker_id = registration.registered.worker_id;
    println!("registered as worker {worker_id}");
    let heartbeat_seconds = u64::from(registration.registered.heartbeat_seconds);
    let lease_seconds = registration.registered.lease_seconds.map_or(args.lease_seconds, u64::from);
    let terms = lease::Terms {
        lease: Duration::from_secs(lease_seconds.max(1)),
        heartbeat: Duration::from_secs(heartbeat_seconds.max(1)),
    };
    let lease = Lease::new(terms, registration.sent_at);
    let session = Arc::new(Session::new(client, api_urls, &registration, lease));
    let (reports, report_queue) = Reporter::new();
    let agent = Arc::new(Agent {
        session: session.clone(),
        cancels: Mutex::new(BTreeMap::new()),
        interrupted: AtomicBool::new(false),
        kill_grace: Duration::from_secs(args.kill_grace_seconds),
        reports,
        supervisor,
        noop: args.executor == crate::cli::Executor::Noop,
    });
    // The registration counts as the first heartbeat.
    let remaining = session.lease.fence_at().saturating_duration_since(Instant::now());
    agent.supervisor.renew(remaining).await.context("telling the keeper the lease")?;
    tokio::spawn({
        let session = session.clone();
        async move {
            let status = keeper.wait().await;
            let why = match status.as_ref().ok().and_then(std::process::ExitStatus::code) {
                Some(code) if code == i32::from(keeper::LEASE_RAN_OUT) => {
                    "the keeper killed the jobs: the lease ran out unrenewed".to_owned()
                }
                _ => format!("the keeper process ended ({status:?}): jobs would no longer die with this agent"),
            };
            session.lease.lose(why);
        }
    });
    tokio::spawn({
        let session = session.clone();
        async move { lease::watch(&session.lease).await }
    });
    let reporter = tokio::spawn(report_loop(session.clone(), report_queue));

    let stopping = Arc::new(AtomicBool::new(false));
    let heartbeats = tokio::spawn(heartbeat::heartbeat_loop(
        agent.clone(),
        heartbeat_seconds,
        stopping.clone(),
        args.health_command.clone().map(|Argv(argv)| HealthCheck {
            argv,
            env: [("HODEI_WORKER_ID", Some(worker_id.to_string())), ("HODEI_INSTANCE_ID", args.instance_id.clone())]
                .into_iter()
                .filter_map(|(name, value)| Some((name, value?)))
                .collect(),
        }),
        drain,
        interruption_notice,
    ));
    let lost = session.lease.lost();
    tokio::pin!(lost);
    let mut running = tokio::task::JoinSet::new();
    loop {
        let poll = session.poll();
        tokio::select! {
            _ = &mut stop => break,
            reason = &mut lost => return fence(&agent, &reason),
            assignments = poll => match assignments {
                Ok(assignments) => {
                    for assignment in assignments {
                        running.spawn(executor::run_assignment(agent.clone(), assignment));
                    }
                }
                Err(error) => {
                    eprintln!("hodei-worker: polling for work failed: {error:#}");
                    tokio::select! {
                        _ = &mut stop => break,
                        reason = &mut lost => return fence(&agent, &reason),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
        }
        while running.try_join_next().is_some() {}
    }
    // Draining: take no more work, let running jobs finish and report. It ends: a job ends
    // by its timeout, and a result the API cannot take ends with the lease.
    stopping.store(true, Ordering::Relaxed);
    let finished = async { while running.join_next().await.is_some() {} };
    tokio::pin!(finished);
    let mut orphaned_since: Option<Instant> = None;
    let drain_deadline = args.drain_timeout_seconds.map(|seconds| Instant::now() + Duration::from_secs(seconds));
    loop {
        tokio::select! {
            _ = &mut finished => break,
            reason = &mut lost => return fence(&agent, &reason),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if drain_deadline.is_some_and(|deadline| Instant::now() >= deadline)
            && !agent.interrupted.swap(true, Ordering::Relaxed)
        {
            let running: Vec<Arc<Notify>> =
                agent.cancels.lock().map(|cancels| cancels.values().cloned().collect()).unwrap_or_default();
            eprintln!(
                "hodei-worker: the drain ran out of time; interrupting {} running job(s), which will be retried",
                running.len()
            );
            for job in running {
                job.notify_one();
            }
        }
        if orphaned.load(Ordering::Relaxed) {
            let since = *orphaned_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(args.orphan_grace_seconds) {
                let killed = agent.supervisor.kill_all();
                eprintln!(
                    "hodei-worker: the parent process is gone; killed {killed} unfinished job(s), left to their leases"
                );
                break;
            }
        }
    }
    heartbeats.abort();
    reporter.abort();
    match session.deregister().await {
        Ok(()) => println!("deregistered"),
        // Without its parent the worker exits anyway; the lease reaper marks it gone.
        Err(error) if orphaned.load(Ordering::Relaxed) => eprintln!("hodei-worker: {error:#}"),
        Err(error) => return Err(error),
    }
    Ok(())
}

/// The lease is lost: the jobs may already run elsewhere. Kills them all at once and
/// gives up their results (the caller exits, dropping every task still holding one).
fn fence(agent: &Agent, reason: &str) -> anyhow::Result<()> {
    let killed = agent.supervisor.kill_all();
    bail!("lost the lease: {reason}; killed {killed} running job(s) and dropped their results")
}

/// This process's parent, from `/proc/self/stat`.
fn parent_pid() -> Option<u32> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Asks for a drain once the parent process has gone (this process was re-parented).
async fn watch_parent(drain: Arc<Notify>, orphaned: Arc<AtomicBool>) {
    let parent = parent_pid();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if parent_pid() != parent {
            eprintln!("hodei-worker: the parent process is gone; draining");
            orphaned.store(true, Ordering::Relaxed);
            drain.notify_one();
            return;
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
