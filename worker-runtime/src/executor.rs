//! Runs one attempt: the job's argv as a child in a process group of its own, with its env
//! (less the agent's own `HODEI_*` settings) and working directory, watched by the keeper;
//! its output shipped while it runs; on a timeout or a cancel, SIGTERM to its group and
//! SIGKILL after the kill grace; when its main process ends, a moment for what it left
//! behind to finish writing, then SIGKILL to the group; then its result.
//!
//! A job with a trace context runs with it as `TRACEPARENT`, set after the job's own env
//! (the API warns the submitter when that env names it), and every line this module logs
//! about the job names the job, its attempt and its trace id.

use std::fmt;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hodei_protocol::trace_context::{self, TraceParent};
use hodei_protocol::{Assignment, FinishedAttempt};
use rustix::process::Signal;
use tokio::time::Instant;

use crate::agent::Agent;
use crate::keeper;
use crate::output::Capture;

/// How long the output of a job whose main process has exited may stay open (something it
/// left running still holds the pipes) before the job's process group is killed; never
/// past the job's timeout.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(2);
/// After the group is killed, how long the pipes may stay open (held by a process that
/// left the group) before they are abandoned.
const OUTPUT_AFTER_KILL: Duration = Duration::from_secs(1);

/// Stops a job: SIGTERM to its whole process group, then SIGKILL after `grace`.
async fn stop_job(child: &mut tokio::process::Child, group: u32, grace: Duration) {
    keeper::signal_group(group, Signal::TERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        keeper::signal_group(group, Signal::KILL);
        let _ = child.wait().await;
    }
}

/// Which attempt a log line is about: `job <id> attempt <n> trace_id <id>`, the trace id
/// when the job has a trace context.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptLabel {
    pub job_id: uuid::Uuid,
    pub attempt: i32,
    pub trace: Option<TraceParent>,
}

impl fmt::Display for AttemptLabel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "job {} attempt {}", self.job_id, self.attempt)?;
        match &self.trace {
            Some(trace) => write!(formatter, " trace_id {}", trace.trace_id()),
            None => Ok(()),
        }
    }
}

/// How an attempt ended, for its log line.
fn describe(report: &FinishedAttempt) -> String {
    match (&report.error, report.exit_code) {
        (Some(error), _) => format!("failed: {error}"),
        (None, Some(code)) => format!("exited with code {code}"),
        (None, None) => "ended by a signal".to_owned(),
    }
}

/// Runs one attempt and reports it.
pub async fn run_assignment(agent: Arc<Agent>, assignment: Assignment) {
    let (job_id, attempt) = (assignment.job_id, assignment.attempt);
    if agent.noop {
        agent.reports.started(job_id, attempt);
        agent.reports.finished(FinishedAttempt { job_id, attempt, exit_code: Some(0), error: None }).await;
        return;
    }
    // The API sends only trace contexts it parsed itself; anything else is not passed on.
    let trace = assignment.traceparent.as_deref().and_then(TraceParent::parse);
    let label = AttemptLabel { job_id, attempt, trace };
    if trace.is_none() && assignment.traceparent.is_some() {
        eprintln!("hodei-worker: {label}: the assignment's traceparent is not valid; the job runs without one");
    }
    let failed = |error: String| FinishedAttempt { job_id, attempt, exit_code: None, error: Some(error) };
    let Some((program, args)) = assignment.argv.split_first() else {
        agent.reports.finished(failed("empty argv".to_owned())).await;
        return;
    };
    let mut command = tokio::process::Command::new(program);
    // The job inherits the worker's environment but none of Hodei's own settings: the
    // registration token (and anything else the agent was given) stays with the agent.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HODEI_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(&assignment.env).env(keeper::SESSION_VARIABLE, agent.supervisor.session());
    if let Some(trace) = &trace {
        if assignment.env.get(trace_context::ENV_VARIABLE).is_some_and(|value| *value != trace.to_string()) {
            eprintln!("hodei-worker: {label}: the job's env sets TRACEPARENT; it runs with its trace context instead");
        }
        command.env(trace_context::ENV_VARIABLE, trace.to_string());
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.process_group(0).kill_on_drop(true);
    if let Some(dir) = &assignment.working_dir {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let report = failed(format!("could not start {program:?}: {error}"));
            eprintln!("hodei-worker: {label}: {}", describe(&report));
            agent.reports.finished(report).await;
            return;
        }
    };
    // Its own process group: the group id is the child's pid.
    let Some(group) = child.id() else {
        agent.reports.finished(failed(format!("{program:?} vanished as it started"))).await;
        return;
    };
    if let Err(error) = agent.supervisor.watch(group).await {
        // Nothing would kill this job if the agent died now: it must not run.
        keeper::signal_group(group, Signal::KILL);
        agent.session.lease.lose(format!("the keeper process is gone ({error}): jobs would outlive this agent"));
        return;
    }
    let limit = Duration::from_secs(u64::try_from(assignment.timeout_seconds.max(1)).unwrap_or(1));
    let deadline = Instant::now() + limit;
    // Output goes to the API in chunks while the job runs.
    let path = format!("jobs/{job_id}/logs");
    let mut output = Capture::start(&agent.session, path, attempt, child.stdout.take(), child.stderr.take());
    let cancel = Arc::new(tokio::sync::Notify::new());
    if let Ok(mut cancels) = agent.cancels.lock() {
        cancels.insert(job_id, cancel.clone());
    }
    agent.reports.started(job_id, attempt);
    eprintln!("hodei-worker: {label}: started");
    let report = tokio::select! {
        waited = tokio::time::timeout_at(deadline, child.wait()) => match waited {
            Ok(Ok(status)) => FinishedAttempt { job_id, attempt, exit_code: status.code(), error: None },
            Ok(Err(error)) => failed(format!("waiting for the process: {error}")),
            Err(_) => {
                stop_job(&mut child, group, agent.kill_grace).await;
                failed(format!("timed out after {} s", limit.as_secs()))
            }
        },
        _ = cancel.notified() => {
            stop_job(&mut child, group, agent.kill_grace).await;
            if agent.interrupted.load(Ordering::Relaxed) {
                failed("interrupted: the worker shut down before the job finished".to_owned())
            } else {
                failed("cancelled".to_owned())
            }
        }
    };
    if let Ok(mut cancels) = agent.cancels.lock() {
        cancels.remove(&job_id);
    }
    // The main process has ended. What it left running gets a moment to finish writing,
    // then the whole group is killed: nothing of a job outlives it, and a daemon holding
    // the pipes cannot keep the job from ending.
    let linger = OUTPUT_AFTER_EXIT.min(deadline.saturating_duration_since(Instant::now()));
    let closed = output.wait_closed(linger).await;
    keeper::signal_group(group, Signal::KILL);
    if !closed && !output.wait_closed(OUTPUT_AFTER_KILL).await {
        eprintln!(
            "hodei-worker: {label}: a process that left the job's process group holds its output open; \
             no longer reading it",
        );
    }
    // All output is shipped before the result, so a finished job's log is complete.
    output.finish().await;
    // Should the keeper be gone, its watcher has already given up the lease.
    let _ = agent.supervisor.forget(group).await;
    eprintln!("hodei-worker: {label}: {}", describe(&report));
    agent.reports.finished(report).await;
}
