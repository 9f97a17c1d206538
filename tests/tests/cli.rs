//! The `hodei` client commands as a script uses them: the real binary, configured only by
//! `HODEI_API_URL`/`HODEI_API_KEY`, against a real server and a real worker. Submitting,
//! following logs, cancelling, reading and listing work, and each kind of failure has its
//! documented exit code.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use hodei_e2e::{binary, free_port, start_system, System};
use serde_json::Value;
use uuid::Uuid;

/// The longest any one `hodei` invocation may take (a `--follow` waits for its job).
const INVOCATION_LIMIT: Duration = Duration::from_secs(90);

/// Runs `hodei` with nothing but the API's URL and a key in its environment, in an empty
/// directory (so no `.hodei/profile.json` is found).
#[derive(Debug)]
struct Hodei {
    url: String,
    key: String,
    directory: PathBuf,
}

impl Hodei {
    fn new(url: &str, key: &str) -> Self {
        let directory = std::env::temp_dir().join(format!("hodei-cli-e2e-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&directory).expect("create an empty working directory");
        Self { url: url.to_owned(), key: key.to_owned(), directory }
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[("HODEI_API_URL", &self.url), ("HODEI_API_KEY", &self.key)]).await
    }

    async fn run_with(&self, args: &[&str], environment: &[(&str, &str)]) -> Output {
        let mut command = tokio::process::Command::new(binary("hodei"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(environment.iter().copied())
            .current_dir(&self.directory)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        tokio::time::timeout(INVOCATION_LIMIT, command.output())
            .await
            .unwrap_or_else(|_| panic!("hodei {args:?} did not finish in {INVOCATION_LIMIT:?}"))
            .expect("hodei runs")
    }

    /// `hodei ARGS` must succeed; returns its stdout.
    async fn stdout(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert_eq!(output.status.code(), Some(0), "hodei {args:?}: {}", describe(&output));
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// `hodei ARGS --output json` must succeed; returns the JSON it printed.
    async fn json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = args.iter().copied().chain(["--output", "json"]).collect();
        let stdout = self.stdout(&args).await;
        serde_json::from_str(&stdout)
            .unwrap_or_else(|error| panic!("hodei {args:?} printed no JSON ({error}): {stdout}"))
    }

    /// `hodei jobs submit ARGS` prints the new job's id alone.
    async fn submit(&self, args: &[&str]) -> String {
        let args: Vec<&str> = ["jobs", "submit"].into_iter().chain(args.iter().copied()).collect();
        let id = self.stdout(&args).await.trim().to_owned();
        Uuid::parse_str(&id).unwrap_or_else(|_| panic!("hodei {args:?} printed {id:?}, not a job id"));
        id
    }

    /// Polls `hodei jobs get ID --output json` until the job is in `state`.
    async fn wait_for_state(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.json(&["jobs", "get", id]).await;
            if job["state"] == state {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} never reached {state}: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Hodei {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_exit(output: &Output, code: i32, stderr_mentions: &str) {
    assert_eq!(output.status.code(), Some(code), "{}", describe(output));
    assert!(String::from_utf8_lossy(&output.stderr).contains(stderr_mentions), "{}", describe(output));
}

fn start_worker(system: &System) -> tokio::process::Child {
    hodei_e2e::start_worker(&system.server.url, "cli-e2e", &["--slots", "2"])
}

#[tokio::test]
async fn scripts_drive_jobs_through_the_cli_with_documented_exit_codes() {
    let system = start_system().await;
    let tenant = system.server.tenant("acme").await;
    let hodei = Hodei::new(&system.server.url, tenant.key().expect("a tenant key"));
    let _worker = start_worker(&system);

    // Submit, then follow the output to the end: exit 0 for a job that succeeded.
    let echo = hodei.submit(&["--", "echo", "hello"]).await;
    let followed = hodei.run(&["jobs", "logs", &echo, "--follow"]).await;
    assert_eq!(followed.status.code(), Some(0), "{}", describe(&followed));
    assert_eq!(String::from_utf8_lossy(&followed.stdout), "hello\n");
    assert_eq!(hodei.json(&["jobs", "get", &echo]).await["state"], "succeeded");

    // The options reach the job, and its stderr goes to stderr.
    let options = hodei
        .submit(&[
            "--queue",
            "high",
            "--priority",
            "9",
            "--cpu",
            "250",
            "--memory",
            "64",
            "--env",
            "WHO=world",
            "--timeout",
            "30",
            "--",
            "sh",
            "-c",
            "echo \"hi $WHO\" >&2",
        ])
        .await;
    let followed = hodei.run(&["jobs", "logs", &options, "--follow"]).await;
    assert_eq!(followed.status.code(), Some(0), "{}", describe(&followed));
    assert_eq!(String::from_utf8_lossy(&followed.stderr), "hi world\n");
    assert_eq!(String::from_utf8_lossy(&followed.stdout), "");
    let job = hodei.json(&["jobs", "get", &options]).await;
    assert_eq!(job["queue"], "high", "{job}");
    assert_eq!(job["priority"], 9, "{job}");
    assert_eq!(job["resources"]["cpu_millis"], 250, "{job}");
    assert_eq!(job["resources"]["memory_mib"], 64, "{job}");
    assert_eq!(job["command"]["timeout_seconds"], 30, "{job}");

    // Cancel a running job: it ends cancelled, and following it exits 5.
    let sleeper = hodei.submit(&["--", "sleep", "30"]).await;
    hodei.wait_for_state(&sleeper, "running").await;
    assert!(hodei.stdout(&["jobs", "cancel", &sleeper]).await.contains(&sleeper));
    hodei.wait_for_state(&sleeper, "cancelled").await;
    assert_exit(&hodei.run(&["jobs", "logs", &sleeper, "--follow"]).await, 5, "cancelled");

    // Listing shows them all, as JSON for scripts and as a table for people.
    let listed = hodei.json(&["jobs", "list"]).await;
    let ids: Vec<&str> = listed["jobs"].as_array().expect("jobs").iter().filter_map(|job| job["id"].as_str()).collect();
    for id in [&echo, &options, &sleeper] {
        assert!(ids.contains(&id.as_str()), "{id} missing from {listed}");
    }
    let table = hodei.stdout(&["jobs", "list", "--state", "cancelled"]).await;
    assert!(table.starts_with("ID") && table.contains(&sleeper) && !table.contains(&echo), "{table}");

    // Every failure has its exit code.
    assert_exit(&hodei.run(&["jobs", "submit"]).await, 2, "CMD");
    assert_exit(&hodei.run(&["jobs", "list", "--state", "sleeping"]).await, 2, "sleeping");
    assert_exit(&hodei.run_with(&["jobs", "list"], &[]).await, 2, "no API URL");
    assert_exit(&hodei.run(&["jobs", "get", &Uuid::now_v7().to_string()]).await, 3, "not found");
    assert_exit(&hodei.run(&["jobs", "submit", "--priority", "11", "--", "true"]).await, 4, "validation_failed");
    assert_exit(&hodei.run(&["jobs", "cancel", &echo]).await, 4, "job_finished");
    assert_exit(&hodei.run(&["jobs", "cancel"]).await, 2, "<ID>");

    // By filter: every job waiting in a queue no worker serves, then all of them again.
    let mut stuck = Vec::new();
    for _ in 0..2 {
        stuck.push(hodei.submit(&["--queue", "low", "--label", "gpu=none", "--", "true"]).await);
    }
    let cancelled = hodei.json(&["jobs", "cancel", "--queue", "low", "--state", "queued"]).await;
    let mut ids: Vec<&str> = cancelled["ids"].as_array().expect("ids").iter().filter_map(|id| id.as_str()).collect();
    ids.sort_unstable();
    let mut expected: Vec<&str> = stuck.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "{cancelled}");
    let retried = hodei.stdout(&["jobs", "retry", "--queue", "low", "--state", "cancelled"]).await;
    assert!(stuck.iter().all(|id| retried.contains(id.as_str())), "{retried}");
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let unreachable = hodei.run(&["jobs", "list", "--api-url", &nowhere]).await;
    assert_exit(&unreachable, 1, &format!("cannot reach {nowhere}"));
}

#[tokio::test]
async fn schedules_are_created_read_paused_and_deleted_through_the_cli() {
    let system = start_system().await;
    let tenant = system.server.tenant("acme").await;
    let hodei = Hodei::new(&system.server.url, tenant.key().expect("a tenant key"));

    let args = ["schedules", "create", "tick", "--cron", "* * * * * *", "--missed-fires", "run-all", "--cpu", "100"];
    let args: Vec<&str> = args.into_iter().chain(["--", "echo", "tick"]).collect();
    let id = hodei.stdout(&args).await.trim().to_owned();
    Uuid::parse_str(&id).unwrap_or_else(|_| panic!("schedules create printed {id:?}, not an id"));
    let listed = hodei.stdout(&["schedules", "list"]).await;
    assert!(listed.contains("tick") && listed.contains("active") && listed.contains(&id), "{listed}");

    // It fires: a past fire with its job, which is a real job of the tenant.
    let job_id = hodei_e2e::wait_until("a fire with a job", Duration::from_secs(20), async || {
        let schedule = hodei.json(&["schedules", "get", &id]).await;
        schedule["fires"][0]["job_id"].as_str().map(str::to_owned)
    })
    .await;
    let job = hodei.json(&["jobs", "get", &job_id]).await;
    assert_eq!(job["command"]["argv"], serde_json::json!(["echo", "tick"]), "{job}");
    assert_eq!(job["resources"]["cpu_millis"], 100, "{job}");
    let shown = hodei.stdout(&["schedules", "get", &id]).await;
    assert!(shown.contains("next fires:") && shown.contains("submitted") && shown.contains(&job_id), "{shown}");

    assert_eq!(hodei.stdout(&["schedules", "pause", &id]).await.trim(), format!("{id}: paused"));
    assert_eq!(hodei.json(&["schedules", "get", &id]).await["paused"], true);
    assert_eq!(hodei.stdout(&["schedules", "resume", &id]).await.trim(), format!("{id}: active"));

    // A cron expression that does not parse: rejected (4), naming the field.
    let bad = hodei.run(&["schedules", "create", "bad", "--cron", "every day", "--", "true"]).await;
    assert_exit(&bad, 4, "cron");

    assert_eq!(hodei.stdout(&["schedules", "delete", &id]).await.trim(), format!("{id}: deleted"));
    assert_exit(&hodei.run(&["schedules", "get", &id]).await, 3, "no schedule");
}
