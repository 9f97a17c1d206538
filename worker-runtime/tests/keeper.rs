//! The keeper as a real process: what it was told of dies when its stdin ends or its lease
//! runs out, and so does a process that only carries the agent's session; SIGTERM does not
//! stop it.

use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SESSION: &str = "0123456789abcdef0123456789abcdef";

fn keeper(session: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hodei-worker"))
        .args(["keeper", "--session", session])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the keeper")
}

/// `sleep 300` as the leader of a process group of its own, with `environment`.
fn sleeper(environment: &[(&str, &str)]) -> Child {
    Command::new("sleep").arg("300").envs(environment.iter().copied()).process_group(0).spawn().expect("start sleep")
}

/// Waits until `child` has exited, and returns how.
fn wait_for_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "process {} still runs after {limit:?}", child.id());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until process `pid` has a handler for SIGTERM (`SigCgt` in `/proc/<pid>/status`).
fn wait_until_it_catches_sigterm(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the keeper runs");
        let caught = status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << (15 - 1)) != 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the keeper never caught SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tell(keeper: &mut Child, line: &str) {
    let stdin = keeper.stdin.as_mut().expect("stdin");
    stdin.write_all(line.as_bytes()).and_then(|()| stdin.flush()).expect("write to the keeper");
}

#[test]
fn when_the_agent_goes_its_jobs_and_session_processes_die_and_nothing_else() {
    let mut keeper = keeper(SESSION);
    let mut watched = sleeper(&[]);
    let mut forgotten = sleeper(&[]);
    let mut unannounced = sleeper(&[("HODEI_WORKER_SESSION", SESSION)]);
    let mut stranger = sleeper(&[("HODEI_WORKER_SESSION", "another-agent")]);
    tell(&mut keeper, &format!("watch {}\nwatch {}\nforget {}\n", watched.id(), forgotten.id(), forgotten.id()));
    // Stopping is the agent's decision: SIGTERM leaves the keeper running.
    wait_until_it_catches_sigterm(keeper.id());
    assert!(Command::new("kill").args(["-TERM", &keeper.id().to_string()]).status().expect("kill").success());
    drop(keeper.stdin.take());

    assert_eq!(wait_for_exit(&mut keeper, Duration::from_secs(10)).code(), Some(0));
    assert_eq!(wait_for_exit(&mut watched, Duration::from_secs(1)).signal(), Some(9));
    assert_eq!(wait_for_exit(&mut unannounced, Duration::from_secs(1)).signal(), Some(9));
    for other in [&mut forgotten, &mut stranger] {
        assert_eq!(other.try_wait().expect("try_wait"), None, "the keeper killed {}", other.id());
        other.kill().expect("kill");
        other.wait().expect("reap");
    }
}

#[test]
fn when_the_lease_runs_out_unrenewed_the_keeper_kills_the_jobs_and_says_so() {
    let session = "fedcba9876543210fedcba9876543210";
    let mut keeper = keeper(session);
    let mut job = sleeper(&[]);
    let started = Instant::now();
    tell(&mut keeper, &format!("watch {}\nlease 300\n", job.id()));
    assert_eq!(wait_for_exit(&mut keeper, Duration::from_secs(10)).code(), Some(3), "the lease ran out");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(wait_for_exit(&mut job, Duration::from_secs(1)).signal(), Some(9));
}
