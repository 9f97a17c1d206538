//! The worker agent's guarantees, end to end with `hodei serve` and real `hodei-worker`
//! processes: a job ends when its main process does (whatever it left running dies with
//! it), its output reads back byte for byte however it is made, and its processes never
//! outlive their agent or their lease — not when the agent is frozen past its lease, not
//! when it is SIGKILLed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use hodei_e2e::{
    binary, is_alive, processes_marked, registered_worker_id, send_signal, start_system, start_worker_logging_to,
    Client, System,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// A scratch directory for one test (worker logs, files jobs write), removed at the end
/// unless the test failed.
#[derive(Debug)]
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn scratch() -> Scratch {
    let directory = std::env::temp_dir().join(format!("hodei-agent-e2e-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&directory).expect("create a scratch directory");
    Scratch(directory)
}

fn worker(system: &System, name: &str, extra_args: &[&str], scratch: &Path) -> tokio::process::Child {
    let args = [&["--cpu-millis", "2000", "--memory-mib", "4096"][..], extra_args].concat();
    start_worker_logging_to(&system.server.url, name, &args, &scratch.join(format!("{name}.log")))
}

fn worker_log(scratch: &Path, name: &str) -> String {
    std::fs::read_to_string(scratch.join(format!("{name}.log"))).unwrap_or_default()
}

async fn submit(client: &Client, spec: Value) -> String {
    let reply = client.post("/api/v1/jobs", spec).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    reply.body["id"].as_str().expect("id").to_owned()
}

/// Polls the job until `done` holds, for up to `limit`.
async fn wait_for_job(client: &Client, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let job = client.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(job.status, StatusCode::OK, "{job:?}");
        if done(&job.body) {
            return job.body;
        }
        assert!(Instant::now() < deadline, "job {id}: the condition did not hold within {limit:?}: {}", job.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job's output as the API gives it back: the exact bytes of each stream, and the text
/// view of stdout.
#[derive(Debug, Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_text: String,
}

async fn output_of(client: &Client, id: &str) -> Output {
    let mut output = Output::default();
    let mut after = 0;
    loop {
        let page = client.get(&format!("/api/v1/jobs/{id}/logs?after={after}&limit=1000")).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let chunks = page.body["chunks"].as_array().expect("chunks").clone();
        if chunks.is_empty() {
            return output;
        }
        for chunk in &chunks {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(chunk["data_base64"].as_str().expect("data_base64"))
                .expect("valid base64");
            let text = chunk["data"].as_str().expect("data");
            if chunk["stream"] == "stdout" {
                output.stdout.extend(bytes);
                output.stdout_text.push_str(text);
            } else {
                output.stderr.extend(bytes);
            }
        }
        after = page.body["next_after"].as_i64().expect("cursor");
    }
}

/// Waits until no live process carries `marker`, for up to `limit`.
async fn wait_until_none_marked(marker: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = processes_marked(marker);
        if left.is_empty() {
            return;
        }
        let described: Vec<String> = left
            .iter()
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!("{pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " "))
            })
            .collect();
        assert!(Instant::now() < deadline, "processes of the job survive after {limit:?}: {described:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_exit(child: &mut tokio::process::Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    tokio::time::timeout(limit, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within {limit:?}"))
        .expect("the exit status")
}

#[tokio::test]
async fn a_job_ends_when_its_main_process_does_and_what_it_left_holding_its_output_dies() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let scratch = scratch();
    let _worker = worker(&system, "w", &[], &scratch);
    let marker = format!("hodei-e2e-linger-{}", Uuid::now_v7());
    let spec = json!({
        "command": {
            "argv": ["sh", "-c", "echo start; sleep 600 & exit 0"],
            "env": {"HODEI_E2E_MARKER": marker},
            "timeout_seconds": 5,
        },
        "max_attempts": 1,
    });
    let id = submit(&acme, spec).await;
    let done = wait_for_job(&acme, &id, Duration::from_secs(30), |job| {
        ["succeeded", "dead_lettered", "cancelled"].iter().any(|state| job["state"] == *state)
    })
    .await;
    assert_eq!((done["state"].as_str(), done["exit_code"].as_i64()), (Some("succeeded"), Some(0)), "{done}");
    assert_eq!(output_of(&acme, &id).await.stdout, b"start\n");
    // The background `sleep 600` held stdout; it died with its job's process group.
    wait_until_none_marked(&marker, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn output_of_control_bytes_ships_whole_and_the_result_follows() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let scratch = scratch();
    let _worker = worker(&system, "w", &[], &scratch);
    // 2,000,000 bytes of 0x01: as JSON text each would be escaped to six bytes.
    let spec =
        json!({"command": {"argv": ["sh", "-c", "head -c 2000000 /dev/zero | tr '\\0' '\\1'"]}, "max_attempts": 1});
    let id = submit(&acme, spec).await;
    let done = wait_for_job(&acme, &id, Duration::from_secs(60), |job| {
        ["succeeded", "dead_lettered"].iter().any(|state| job["state"] == *state)
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}; worker log:\n{}", worker_log(&scratch, "w"));
    let output = output_of(&acme, &id).await;
    assert_eq!(output.stdout.len(), 2_000_000);
    assert!(output.stdout.iter().all(|byte| *byte == 1));
    assert_eq!(output.stderr, b"", "nothing was lost");
    assert!(!worker_log(&scratch, "w").contains("413"), "{}", worker_log(&scratch, "w"));
}

#[tokio::test]
async fn output_reads_back_byte_for_byte_through_the_api_and_the_cli() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let scratch = scratch();
    let _worker = worker(&system, "w", &[], &scratch);
    // 200,000 three-byte characters: reads of the pipe end inside characters.
    let euros = submit(&acme, json!({"command": {"argv": ["sh", "-c", "yes € | head -n 200000 | tr -d '\\n'"]}})).await;
    // Bytes that are not UTF-8, and NUL, on both streams.
    let binary_script = r"printf '\377\376\0abc'; printf 'e\0r\377r' >&2";
    let raw = submit(&acme, json!({"command": {"argv": ["sh", "-c", binary_script]}})).await;
    for id in [&euros, &raw] {
        wait_for_job(&acme, id, Duration::from_secs(60), |job| job["state"] == "succeeded").await;
    }

    let expected = "€".repeat(200_000);
    let output = output_of(&acme, &euros).await;
    assert_eq!(output.stdout, expected.as_bytes());
    assert!(!output.stdout_text.contains('\u{FFFD}'), "a character was split between chunks");
    assert_eq!(output.stdout_text, expected);
    let output = output_of(&acme, &raw).await;
    assert_eq!((output.stdout.as_slice(), output.stderr.as_slice()), (&b"\xff\xfe\0abc"[..], &b"e\0r\xffr"[..]));

    // `hodei jobs logs` writes the same bytes.
    let key = acme.key().expect("a key");
    for (id, stdout, stderr) in [(&euros, expected.as_bytes(), &b""[..]), (&raw, b"\xff\xfe\0abc", b"e\0r\xffr")] {
        let printed = tokio::process::Command::new(binary("hodei"))
            .args(["jobs", "logs", id])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HODEI_API_URL", &system.server.url)
            .env("HODEI_API_KEY", key)
            .current_dir(&*scratch)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("hodei runs");
        assert_eq!(printed.status.code(), Some(0), "{printed:?}");
        assert_eq!((printed.stdout.as_slice(), printed.stderr.as_slice()), (stdout, stderr));
    }
}

/// A job for the frozen-agent tests: the first run sleeps 30 s, a later one 1 s; each
/// writes `begin <pid>` and `end <pid>` to the file given as `$1`.
fn two_phase_job(file: &Path, marker: &str) -> Value {
    let script =
        r#"if [ -s "$1" ]; then nap=1; else nap=30; fi; echo "begin $$" >> "$1"; sleep $nap; echo "end $$" >> "$1""#;
    json!({
        "command": {"argv": ["sh", "-c", script, marker, file], "env": {"HODEI_E2E_MARKER": marker}},
        "max_attempts": 3,
    })
}

fn lines_of(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Waits until `file` has at least `count` lines starting with `begin `; returns their pids.
async fn wait_for_begins(file: &Path, count: usize, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let begins: Vec<u32> =
            lines_of(file).iter().filter_map(|line| line.strip_prefix("begin ")?.parse().ok()).collect();
        if begins.len() >= count {
            return begins;
        }
        assert!(Instant::now() < deadline, "{count} run(s) did not begin within {limit:?}: {:?}", lines_of(file));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether process `pid` is stopped (SIGSTOP), from `/proc/<pid>/stat`.
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? == "T"))
        .unwrap_or(false)
}

#[tokio::test]
async fn an_agent_the_control_plane_gave_up_on_kills_its_job_and_exits() {
    let system = start_system().await;
    let admin = system.server.admin();
    let acme = system.server.tenant("acme").await;
    let scratch = scratch();
    let mut given_up = worker(&system, "given-up", &[], &scratch);
    registered_worker_id(&admin, "given-up").await;
    let (file, marker) = (scratch.join("runs"), format!("hodei-e2e-given-up-{}", Uuid::now_v7()));
    let id = submit(&acme, two_phase_job(&file, &marker)).await;
    let first = wait_for_begins(&file, 1, Duration::from_secs(30)).await[0];

    // The control plane marks the worker gone (as the lease reaper does with a worker it
    // stopped hearing from): its token dies, and its next request is answered 401.
    let db = sqlx::PgPool::connect(&system.database.url).await.expect("connect");
    sqlx::query("update workers set state = 'gone', gone_at = now() where name = 'given-up'")
        .execute(&db)
        .await
        .expect("give the worker up");
    let status = wait_for_exit(&mut given_up, Duration::from_secs(10), "the given-up agent").await;
    assert!(!status.success(), "it lost its lease: {status:?}; log:\n{}", worker_log(&scratch, "given-up"));
    assert!(worker_log(&scratch, "given-up").contains("lost the lease"), "{}", worker_log(&scratch, "given-up"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(first) {
        assert!(Instant::now() < deadline, "the job outlived its agent's lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The attempt is given up and retried elsewhere, once.
    let _other = worker(&system, "other", &[], &scratch);
    let other = registered_worker_id(&admin, "other").await;
    let done = wait_for_job(&acme, &id, Duration::from_secs(30), |job| job["state"] == "succeeded").await;
    assert_eq!((done["attempt"].as_i64(), done["worker_id"].as_str()), (Some(2), Some(other.as_str())), "{done}");
    let second = wait_for_begins(&file, 2, Duration::from_secs(5)).await[1];
    assert_eq!(lines_of(&file), [format!("begin {first}"), format!("begin {second}"), format!("end {second}")]);
    wait_until_none_marked(&marker, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_frozen_agents_keeper_kills_its_job_before_the_lease_runs_out() {
    let system = start_system().await;
    let admin = system.server.admin();
    let acme = system.server.tenant("acme").await;
    let scratch = scratch();
    // The agent learns the lease (4 s here) from the control plane.
    let mut frozen = worker(&system, "frozen", &[], &scratch);
    registered_worker_id(&admin, "frozen").await;
    let (file, marker) = (scratch.join("runs"), format!("hodei-e2e-keeper-{}", Uuid::now_v7()));
    let id = submit(&acme, two_phase_job(&file, &marker)).await;
    let first = wait_for_begins(&file, 1, Duration::from_secs(30)).await[0];

    let agent = frozen.id().expect("running");
    send_signal(agent, "STOP");
    let _other = worker(&system, "other", &[], &scratch);
    // Never two runs at once: the first is dead before the second begins.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut first_died_while_frozen = false;
    let second = loop {
        let alive = is_alive(first);
        if !alive && is_stopped(agent) {
            first_died_while_frozen = true;
        }
        let begins: Vec<u32> =
            lines_of(&file).iter().filter_map(|line| line.strip_prefix("begin ")?.parse().ok()).collect();
        if let Some(second) = begins.get(1) {
            assert!(!is_alive(first), "two runs at once: the first still runs as the second begins");
            break *second;
        }
        assert!(Instant::now() < deadline, "the job was not retried: {:?}", lines_of(&file));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(first_died_while_frozen, "the first run died only after the agent woke");
    send_signal(agent, "CONT");
    let status = wait_for_exit(&mut frozen, Duration::from_secs(10), "the woken agent").await;
    assert!(!status.success(), "{status:?}; log:\n{}", worker_log(&scratch, "frozen"));

    let done = wait_for_job(&acme, &id, Duration::from_secs(30), |job| job["state"] == "succeeded").await;
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(lines_of(&file), [format!("begin {first}"), format!("begin {second}"), format!("end {second}")]);
}

#[tokio::test]
async fn a_job_dies_with_its_agent_when_the_agent_is_sigkilled() {
    let system = start_system().await;
    let admin = system.server.admin();
    let acme = system.server.tenant("acme").await;
    let scratch = scratch();
    let mut doomed = worker(&system, "doomed", &[], &scratch);
    registered_worker_id(&admin, "doomed").await;
    let marker = format!("hodei-e2e-sigkill-{}", Uuid::now_v7());
    // A shell and two sleeps, all in the job's own process group.
    let script = "sleep 600 & sleep 600; wait";
    let spec = json!({"command": {"argv": ["sh", "-c", script, &marker], "env": {"HODEI_E2E_MARKER": marker}}});
    let id = submit(&acme, spec).await;
    wait_for_job(&acme, &id, Duration::from_secs(30), |job| job["state"] == "running").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_marked(&marker).len() < 3 {
        assert!(Instant::now() < deadline, "the job's processes did not start: {:?}", processes_marked(&marker));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    doomed.start_kill().expect("SIGKILL");
    doomed.wait().await.expect("reaped");
    wait_until_none_marked(&marker, Duration::from_secs(10)).await;
}
