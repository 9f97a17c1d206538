//! What a user of any job scheduler expects: a warning when a job asks for labels nobody
//! offers, re-running a finished job by hand (one, or many by filter), cancelling many by
//! filter, every attempt in `jobs get`, attempts counted per run, and logs told apart by
//! attempt.

use std::process::Output;
use std::time::{Duration, Instant};

use hodei_e2e::{binary, start_system, wait_for_state, System};
use reqwest::StatusCode;
use serde_json::json;

/// `hodei ARGS` against the system; the client options go before a `--`, if any.
fn cli(system: &System, key: &str, args: &[&str]) -> Output {
    let split = args.iter().position(|arg| *arg == "--").unwrap_or(args.len());
    std::process::Command::new(binary("hodei"))
        .args(&args[..split])
        .args(["--api-url", &system.server.url, "--api-key", key])
        .args(&args[split..])
        .output()
        .expect("hodei")
}

#[tokio::test]
async fn a_job_whose_labels_nobody_offers_is_flagged_at_submit() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let flagged = acme
        .post("/api/v1/jobs", json!({"command": {"argv": ["true"]}, "resources": {"labels": {"gpu": "a100"}}}))
        .await;
    assert_eq!(flagged.status, StatusCode::CREATED, "{flagged:?}");
    let warnings = flagged.body["warnings"].as_array().expect("warnings");
    assert!(warnings[0].as_str().is_some_and(|w| w.contains("gpu=a100")), "{warnings:?}");
    let plain = acme.submit(&["true"]).await;
    assert!(plain.get("warnings").is_none(), "no labels, no warning: {plain}");

    let submitted = cli(&system, acme.key().expect("key"), &["jobs", "submit", "--label", "gpu=h100", "--", "true"]);
    assert!(submitted.status.success(), "{submitted:?}");
    let id = String::from_utf8_lossy(&submitted.stdout).trim().to_owned();
    assert_eq!(id.len(), 36, "the id alone on stdout: {id:?}");
    assert!(String::from_utf8_lossy(&submitted.stderr)
        .contains("warning: no worker and no pool offers the labels gpu=h100"));

    // Following its output says why it waits, once the scheduler has looked (a worker
    // without the label is there).
    let _plain = hodei_e2e::start_worker(&system.server.url, "plain", &[]);
    use tokio::io::AsyncBufReadExt;
    let mut follow = tokio::process::Command::new(binary("hodei"))
        .args(["jobs", "logs", &id, "--follow", "--api-url", &system.server.url, "--api-key"])
        .arg(acme.key().expect("key"))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("hodei jobs logs --follow");
    let mut lines = tokio::io::BufReader::new(follow.stderr.take().expect("stderr")).lines();
    // (It may first say that no worker is registered yet.)
    let mut said = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !said.iter().any(|line: &String| line.starts_with("waiting:") && line.contains("gpu=h100")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, lines.next_line()).await;
        said.push(
            line.unwrap_or_else(|_| panic!("no note within 30 s: {said:?}")).expect("stderr").unwrap_or_default(),
        );
    }
}

#[tokio::test]
async fn finished_jobs_run_again_by_hand_and_many_jobs_are_cancelled_or_retried_by_filter() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let other = system.server.tenant("other").await;
    // No worker yet: these wait.
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(acme.submit(&["true"]).await["id"].as_str().expect("id").to_owned());
    }
    let theirs = other.submit(&["true"]).await["id"].as_str().expect("id").to_owned();
    let refused = acme.post(&format!("/api/v1/jobs/{}/retry", waiting[0]), json!({})).await;
    refused.assert_problem(StatusCode::CONFLICT, "job_not_finished");

    let cancelled = acme.post("/api/v1/jobs/cancel", json!({"state": "queued"})).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    let mut ids: Vec<String> =
        cancelled.body["ids"].as_array().expect("ids").iter().map(|id| id.as_str().expect("id").to_owned()).collect();
    ids.sort();
    waiting.sort();
    assert_eq!(ids, waiting, "exactly the tenant's own queued jobs");
    assert_eq!(
        other.get(&format!("/api/v1/jobs/{theirs}")).await.body["state"],
        "queued",
        "another tenant's job is untouched"
    );

    let retried = acme.post("/api/v1/jobs/retry", json!({"state": "cancelled", "limit": 2})).await;
    assert_eq!(retried.body["ids"].as_array().map(Vec::len), Some(2), "{retried:?}");

    // A worker runs what is queued; a failing job dead-letters after its one attempt.
    let _worker = hodei_e2e::start_worker(&system.server.url, "w", &["--slots", "2"]);
    let failing = acme
        .post("/api/v1/jobs", json!({"command": {"argv": ["sh", "-c", "echo run; exit 3"]}, "max_attempts": 1}))
        .await
        .body["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let dead = wait_for_state(&acme, &failing, &["dead_lettered"]).await;
    assert_eq!((dead["attempt"].as_i64(), dead["run_attempt"].as_i64()), (Some(1), Some(1)), "{dead}");

    // By hand: it runs again with a fresh attempt, and its history keeps both.
    let again = acme.post(&format!("/api/v1/jobs/{failing}/retry"), json!({})).await;
    assert_eq!((again.status, again.body["state"].as_str()), (StatusCode::OK, Some("queued")), "{again:?}");
    let dead = wait_for_state(&acme, &failing, &["dead_lettered"]).await;
    assert_eq!((dead["attempt"].as_i64(), dead["run_attempt"].as_i64()), (Some(2), Some(1)), "{dead}");
    let attempts = dead["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{dead}");
    for (index, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["attempt"], index as i64 + 1, "{attempt}");
        assert_eq!(attempt["outcome"], "dead_lettered", "{attempt}");
        assert!(attempt["error"].as_str().is_some_and(|e| e.contains("code 3")), "{attempt}");
        assert!(!attempt["worker_id"].is_null() && !attempt["started_at"].is_null(), "{attempt}");
    }

    let key = acme.key().expect("key");
    let shown = cli(&system, key, &["jobs", "get", &failing]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("1/1"), "attempts counted in the current run: {shown}");
    assert!(shown.contains("attempt 1: dead_lettered") && shown.contains("attempt 2: dead_lettered"), "{shown}");

    // Output by attempt: all of it with the later attempt announced, or one attempt alone.
    let all = cli(&system, key, &["jobs", "logs", &failing]);
    assert_eq!(String::from_utf8_lossy(&all.stdout), "run\nrun\n");
    assert!(String::from_utf8_lossy(&all.stderr).contains("--- attempt 2 ---"), "{all:?}");
    let second = cli(&system, key, &["jobs", "logs", &failing, "--attempt", "2"]);
    assert_eq!(String::from_utf8_lossy(&second.stdout), "run\n");
    assert!(!String::from_utf8_lossy(&second.stderr).contains("attempt"), "{second:?}");
    let by_cli = cli(&system, key, &["jobs", "retry", &failing]);
    assert!(String::from_utf8_lossy(&by_cli.stdout).contains("queued again"), "{by_cli:?}");
}
