//! The pool's health command, run before each heartbeat; its result rides on the heartbeat.

use std::process::Stdio;
use std::time::Duration;

/// The pool's health command, run with `HODEI_WORKER_ID` and `HODEI_INSTANCE_ID` set.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub argv: Vec<String>,
    pub env: Vec<(&'static str, String)>,
}

/// Runs the health command; healthy if it exits 0 within `limit`.
pub async fn health_check(check: &HealthCheck, limit: Duration) -> bool {
    let Some((program, args)) = check.argv.split_first() else { return true };
    let mut command = tokio::process::Command::new(program);
    command.args(args).envs(check.env.iter().map(|(name, value)| (*name, value)));
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(limit, command.status()).await {
        Ok(Ok(status)) => status.success(),
        _ => false,
    }
}
