//! `hodei dev`, the first quick-start command: with no database configured it creates an
//! embedded Postgres cluster, serves the API with a dev tenant, stops cleanly on Ctrl-C,
//! and reuses the cluster and keys on the next run.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hodei_e2e::{binary, free_port, Client};
use reqwest::StatusCode;
use serde_json::Value;

struct DevRun {
    child: tokio::process::Child,
    url: String,
}

async fn start_dev(data_dir: &Path) -> DevRun {
    start_dev_with_stderr(data_dir, Stdio::null()).await
}

async fn start_dev_with_stderr(data_dir: &Path, stderr: Stdio) -> DevRun {
    start_dev_with(data_dir, stderr, &[]).await
}

async fn start_dev_with(data_dir: &Path, stderr: Stdio, environment: &[(&str, &str)]) -> DevRun {
    let port = free_port();
    let child = tokio::process::Command::new(binary("hodei"))
        .arg("dev")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HODEI_DEV_DATA_DIR", data_dir)
        .env("HODEI_LISTEN", format!("127.0.0.1:{port}"))
        .envs(environment.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("start hodei dev");
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if client.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success())
            && data_dir.join("profile.json").is_file()
        {
            break;
        }
        assert!(Instant::now() < deadline, "hodei dev did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    DevRun { child, url }
}

async fn interrupt_and_wait(run: &mut DevRun) -> std::process::ExitStatus {
    let pid = run.child.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args(["-INT", &pid]).status().expect("kill");
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(60), run.child.wait()).await.expect("exits in time").expect("status")
}

fn profile(data_dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data_dir.join("profile.json")).expect("profile")).expect("json")
}

#[tokio::test]
async fn dev_starts_a_complete_local_system_and_stops_cleanly() {
    let data_dir = std::env::temp_dir().join(format!("hodei-dev-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);

    let mut first = start_dev(&data_dir).await;
    let first_profile = profile(&data_dir);
    assert_eq!(first_profile["tenant"], "dev");
    assert_eq!(first_profile["api_url"], first.url.as_str());
    let dev = Client::new(&first.url, first_profile["api_key"].as_str());
    let job = dev.submit(&["echo", "hello"]).await;
    assert_eq!(job["tenant"], "dev");
    // The local worker pool runs it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = dev.get(&format!("/api/v1/jobs/{}", job["id"].as_str().expect("id"))).await;
        if current.body["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the dev system did not run the job: {current:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = dev.get(&format!("/api/v1/jobs/{}/logs", job["id"].as_str().expect("id"))).await;
    assert_eq!(logs.body["chunks"][0]["data"], "hello\n");
    let delayed = dev
        .post("/api/v1/jobs", serde_json::json!({"command": {"argv": ["true"]}, "not_before": "2999-01-01T00:00:00Z"}))
        .await;
    assert_eq!(delayed.body["state"], "scheduled");
    let admin = Client::new(&first.url, first_profile["admin_key"].as_str());
    assert_eq!(admin.get("/api/v1/tenants").await.status, StatusCode::OK);

    let status = interrupt_and_wait(&mut first).await;
    assert!(status.success(), "{status:?}");
    assert!(!data_dir.join("postgres/postmaster.pid").exists(), "the embedded Postgres was stopped");

    // The next run reuses the cluster, its data and the same keys.
    let mut second = start_dev(&data_dir).await;
    let second_profile = profile(&data_dir);
    assert_eq!(second_profile["api_key"], first_profile["api_key"]);
    let dev = Client::new(&second.url, second_profile["api_key"].as_str());
    let fetched = dev.get(&format!("/api/v1/jobs/{}", job["id"].as_str().expect("id"))).await;
    assert_eq!(fetched.status, StatusCode::OK, "jobs survive a restart: {fetched:?}");
    assert_eq!(fetched.body["state"], "succeeded");
    // The queue itself survived both restarts (of the API and of Postgres).
    let status = dev.get("/api/v1/queues/default/status").await;
    assert_eq!((status.body["length"].as_i64(), status.body["scheduled"].as_i64()), (Some(0), Some(1)), "{status:?}");
    assert!(interrupt_and_wait(&mut second).await.success());

    let _ = std::fs::remove_dir_all(&data_dir);
}

/// `hodei dev 2>&1 | tee log`, then Ctrl-C: the terminal's Ctrl-C ends `tee` too, so
/// everything hodei writes afterwards goes to a closed pipe. It must still shut down, and
/// stop its Postgres.
#[tokio::test]
async fn dev_stops_cleanly_when_its_output_pipe_is_gone() {
    let data_dir = std::env::temp_dir().join(format!("hodei-dev-pipe-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut run = start_dev_with_stderr(&data_dir, Stdio::piped()).await;
    // The reader goes away, as `tee` does on Ctrl-C.
    drop(run.child.stdout.take());
    drop(run.child.stderr.take());
    let status = interrupt_and_wait(&mut run).await;
    assert!(status.success(), "{status:?}");
    assert!(!data_dir.join("postgres/postmaster.pid").exists(), "the embedded Postgres was stopped");
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Ctrl-C on `hodei dev` with a job running: the workers drain for their bounded time,
/// then stop the job and record its attempt as interrupted; nothing of it survives, and on
/// the next start it runs again, once.
#[tokio::test]
async fn ctrl_c_interrupts_a_running_job_which_runs_again_once_on_the_next_start() {
    let data_dir = std::env::temp_dir().join(format!("hodei-dev-interrupt-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let runs = data_dir.join("runs");
    let marker = format!("hodei-dev-interrupt-{}", std::process::id());
    let script = format!("echo begin >> {runs}; sleep 15 # {marker}\necho end >> {runs}", runs = runs.display());
    let drain = [("HODEI_LOCAL_WORKER_DRAIN_SECONDS", "1")];

    let mut first = start_dev_with(&data_dir, Stdio::null(), &drain).await;
    let dev = Client::new(&first.url, profile(&data_dir)["api_key"].as_str());
    let job = dev.submit(&["sh", "-c", &script]).await;
    let id = job["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&runs).unwrap_or_default().lines().count() < 1 {
        assert!(Instant::now() < deadline, "the job did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let interrupted_at = Instant::now();
    assert!(interrupt_and_wait(&mut first).await.success());
    eprintln!("hodei dev stopped {:?} after Ctrl-C", interrupted_at.elapsed());
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).into_owned())
        .filter(|cmdline| cmdline.contains(&marker))
        .collect();
    assert!(survivors.is_empty(), "the job outlived hodei dev: {survivors:?}");

    let mut second = start_dev_with(&data_dir, Stdio::null(), &drain).await;
    let dev = Client::new(&second.url, profile(&data_dir)["api_key"].as_str());
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        let current = dev.get(&format!("/api/v1/jobs/{id}")).await.body;
        if current["state"] == "succeeded" || current["state"] == "dead_lettered" {
            break current;
        }
        assert!(Instant::now() < deadline, "the interrupted job did not run again: {current}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((done["state"].as_str(), done["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{done}");
    let events = dev.get(&format!("/api/v1/events?job_id={id}")).await.body;
    let retried: Vec<&Value> =
        events["events"].as_array().expect("events").iter().filter(|e| e["kind"] == "job.retry_scheduled").collect();
    assert_eq!(retried.len(), 1, "{events}");
    assert!(retried[0]["data"]["error"].as_str().is_some_and(|e| e.contains("interrupted")), "{events}");
    let lines = std::fs::read_to_string(&runs).expect("runs");
    assert_eq!(lines.lines().collect::<Vec<_>>(), ["begin", "begin", "end"], "one interrupted run, then one whole run");
    assert!(interrupt_and_wait(&mut second).await.success());
    let _ = std::fs::remove_dir_all(&data_dir);
}
