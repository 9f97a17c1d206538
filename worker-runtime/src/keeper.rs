//! The keeper makes a job's processes die with the agent that supervises them. It is a
//! small process of the agent's own binary (`hodei-worker keeper`, in a process group of
//! its own), started before the agent registers, reading one line per event on its stdin:
//! `watch <pgid>` when a job starts, `forget <pgid>` when it is over, `lease <ms>` when a
//! heartbeat got through. When its stdin ends — the agent died, however, SIGKILL included —
//! or when the lease runs out unrenewed (the agent is frozen or hung), it kills every job
//! group it was told of and every process that carries the agent's session in its
//! environment (`HODEI_WORKER_SESSION`, set on every job), then exits.
//!
//! There is no window between starting a job and announcing its group: a job forked but
//! not yet announced holds a copy of the agent's end of the pipe until it execs (the pipe
//! is close-on-exec), so the keeper sees the end of its stdin only once the job runs with
//! the session in its environment, and the sweep finds it. The sweep also finds a process
//! that left its job's group but kept its environment. What can still escape: a process
//! that left its group *and* replaced its environment (`setsid`, then exec with a clean
//! environment), or overwrote it in memory.
//!
//! It ignores SIGTERM, SIGINT and SIGHUP: stopping is the agent's decision. Should the
//! keeper die anyway, the agent gives up its lease (its jobs would no longer die with it).
//!
//! This module also holds the agent's side (`Supervisor`) and the signals both send.

use std::collections::BTreeSet;
use std::io::{BufRead, Read};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// The environment variable every job of an agent carries: the agent's session.
pub const SESSION_VARIABLE: &str = "HODEI_WORKER_SESSION";

/// How a keeper that stopped the jobs because the agent's lease ran out exits.
pub const LEASE_RAN_OUT: u8 = 3;

/// Sends `signal` to process group `group`; false if there is no such group (any more).
pub fn signal_group(group: u32, signal: Signal) -> bool {
    let Some(pid) = i32::try_from(group).ok().and_then(Pid::from_raw) else { return false };
    kill_process_group(pid, signal).is_ok()
}

/// One line from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Watch(u32),
    Forget(u32),
    /// The lease holds for this long from now.
    Lease(Duration),
}

fn parse(line: &str) -> Option<Message> {
    let (kind, number) = line.trim().split_once(' ')?;
    match kind {
        "watch" => number.parse().ok().map(Message::Watch),
        "forget" => number.parse().ok().map(Message::Forget),
        "lease" => number.parse().ok().map(Duration::from_millis).map(Message::Lease),
        _ => None,
    }
}

/// The keeper process: runs until the agent is gone or its lease ran out.
pub async fn run(session: &str) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    // Registering a handler replaces the default action (termination); nothing reads them.
    let _ignored: Vec<_> = [SignalKind::terminate(), SignalKind::interrupt(), SignalKind::hangup()]
        .into_iter()
        .filter_map(|kind| signal(kind).ok())
        .collect();
    // Lines from a thread of its own: a blocking read of stdin, ending at EOF or an error.
    let (sender, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let mut groups = BTreeSet::new();
    let mut fence_at: Option<Instant> = None;
    loop {
        let line = tokio::select! {
            // A renewal already written is read before the deadline is looked at.
            biased;
            line = lines.recv() => line,
            _ = tokio::time::sleep_until(fence_at.unwrap_or_else(Instant::now)), if fence_at.is_some() => {
                let killed = stop_everything(&groups, session);
                say(&format!("the agent's lease ran out unrenewed; killed its jobs ({killed})"));
                return ExitCode::from(LEASE_RAN_OUT);
            }
        };
        match line.as_deref().map(parse) {
            Some(Some(Message::Watch(group))) => {
                groups.insert(group);
            }
            Some(Some(Message::Forget(group))) => {
                groups.remove(&group);
            }
            Some(Some(Message::Lease(remaining))) => fence_at = Some(Instant::now() + remaining),
            Some(None) => say("ignoring a line it does not understand"),
            // The agent's end of the pipe closed: the agent is gone.
            None => {
                let killed = stop_everything(&groups, session);
                if killed.any() {
                    say(&format!("the agent is gone; killed its jobs ({killed})"));
                }
                return ExitCode::SUCCESS;
            }
        }
    }
}

/// A line on stderr, if stderr can still take it (a closed pipe must not stop the keeper).
fn say(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "hodei-worker keeper: {message}");
}

/// What a sweep killed.
#[derive(Debug, Default, Clone, Copy)]
struct Killed {
    groups: usize,
    processes: usize,
}

impl Killed {
    fn any(self) -> bool {
        self.groups + self.processes > 0
    }
}

impl std::fmt::Display for Killed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} process group(s), {} stray process(es)", self.groups, self.processes)
    }
}

/// SIGKILL to every group, then to every process of the session, until none is left.
fn stop_everything(groups: &BTreeSet<u32>, session: &str) -> Killed {
    let mut killed =
        Killed { groups: groups.iter().filter(|group| signal_group(**group, Signal::KILL)).count(), processes: 0 };
    // Processes may be forking while this runs: sweep until a sweep finds none.
    for _ in 0..50 {
        let found = processes_of_session(session);
        if found.is_empty() {
            break;
        }
        for pid in found {
            if kill_process(pid, Signal::KILL).is_ok() {
                killed.processes += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    killed
}

/// Live processes whose environment holds `HODEI_WORKER_SESSION=<session>`, from `/proc`
/// (a zombie's environment reads empty, so the dead are not found again).
fn processes_of_session(session: &str) -> Vec<Pid> {
    let needle = format!("{SESSION_VARIABLE}={session}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let own = std::process::id();
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|byte| *byte == 0).any(|entry| entry == needle.as_bytes()))
        })
        .filter_map(|pid| Pid::from_raw(i32::try_from(pid).ok()?))
        .collect()
}

/// The agent's side of its keeper: announces job groups and lease renewals.
#[derive(Debug)]
pub struct Supervisor {
    session: String,
    keeper: tokio::sync::Mutex<tokio::process::ChildStdin>,
    groups: std::sync::Mutex<BTreeSet<u32>>,
}

impl Supervisor {
    /// Starts the keeper; the child is returned so the agent can notice if it ends.
    pub fn start() -> std::io::Result<(Supervisor, tokio::process::Child)> {
        let session = new_session()?;
        // The running binary itself, even if the file was replaced since it started.
        let mut child = tokio::process::Command::new("/proc/self/exe")
            .arg0("hodei-worker")
            .args(["keeper", "--session", &session])
            .stdin(Stdio::piped())
            // Its own group: a Ctrl-C at a terminal, or a signal to the agent's group, is
            // for the agent; the keeper must see the agent go.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("the keeper has no stdin"))?;
        let supervisor =
            Supervisor { session, keeper: tokio::sync::Mutex::new(stdin), groups: std::sync::Mutex::default() };
        Ok((supervisor, child))
    }

    /// The value of `HODEI_WORKER_SESSION` for this agent's jobs.
    pub fn session(&self) -> &str {
        &self.session
    }

    async fn send(&self, line: String) -> std::io::Result<()> {
        let mut keeper = self.keeper.lock().await;
        keeper.write_all(line.as_bytes()).await?;
        keeper.flush().await
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A job's process group: killed if this agent dies. Once this returns, the keeper
    /// has it (written to its pipe, which it reads even after the agent is gone).
    pub async fn watch(&self, group: u32) -> std::io::Result<()> {
        self.groups().insert(group);
        self.send(format!("watch {group}\n")).await
    }

    /// The job is over and its group killed.
    pub async fn forget(&self, group: u32) -> std::io::Result<()> {
        self.groups().remove(&group);
        self.send(format!("forget {group}\n")).await
    }

    /// The lease holds for `remaining` from now: the keeper kills the jobs when it runs
    /// out without another renewal.
    pub async fn renew(&self, remaining: Duration) -> std::io::Result<()> {
        self.send(format!("lease {}\n", remaining.as_millis())).await
    }

    /// SIGKILL to every job group now (the lease is lost). Returns how many there were.
    pub fn kill_all(&self) -> usize {
        let groups = self.groups().clone();
        for group in &groups {
            signal_group(*group, Signal::KILL);
        }
        groups.len()
    }
}

/// 128 random bits, in hex.
fn new_session() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        assert_eq!(parse("watch 123\n"), Some(Message::Watch(123)));
        assert_eq!(parse("forget 7"), Some(Message::Forget(7)));
        assert_eq!(parse("lease 2500"), Some(Message::Lease(Duration::from_millis(2500))));
        for bad in ["", "watch", "watch -1", "watch x", "kill 3", "lease 1.5"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sessions_are_random_and_hex() {
        let (first, second) = (new_session().expect("urandom"), new_session().expect("urandom"));
        assert_eq!(first.len(), 32);
        assert!(first.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(first, second);
    }
}
