//! Jobs run end to end: `hodei serve` assigns them to real `hodei-worker` processes, which
//! run real commands and report; results, exit codes and events are right, and placement
//! is best fit.

use std::time::{Duration, Instant};

use hodei_e2e::{registered_worker_id, start_system, Client, System, WORKER_REGISTRATION_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn start_worker(system: &System, name: &str, cpu_millis: u32) -> tokio::process::Child {
    let cpu_millis = cpu_millis.to_string();
    hodei_e2e::start_worker(
        &system.server.url,
        name,
        &["--cpu-millis", &cpu_millis, "--memory-mib", "4096", "--slots", "2"],
    )
}

async fn wait_for_state(client: &Client, id: &str, states: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = client.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(job.status, StatusCode::OK, "{job:?}");
        if states.iter().any(|s| job.body["state"] == *s) {
            return job.body;
        }
        assert!(Instant::now() < deadline, "job {id} never reached {states:?}: {:?}", job.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(client: &Client, spec: Value) -> String {
    let reply = client.post("/api/v1/jobs", spec).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    reply.body["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn jobs_run_on_real_workers_with_best_fit_placement() {
    let system = start_system().await;
    let admin = system.server.admin();
    let acme = system.server.tenant("acme").await;
    let _small = start_worker(&system, "small", 1000);
    let _large = start_worker(&system, "large", 4000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let workers = loop {
        let listed = admin.get("/api/v1/workers").await;
        if listed.body["workers"].as_array().is_some_and(|w| w.len() == 2) {
            break listed.body["workers"].as_array().expect("workers").clone();
        }
        assert!(Instant::now() < deadline, "workers did not register: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id_of = |name: &str| workers.iter().find(|w| w["name"] == name).map(|w| w["id"].clone()).expect("worker");

    // A job that fits nowhere waits, and does not block the jobs behind it.
    let too_big = submit(&acme, json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 64000}})).await;
    let echo =
        submit(&acme, json!({"command": {"argv": ["sh", "-c", "exit 0"]}, "resources": {"cpu_millis": 1000}})).await;
    let done = wait_for_state(&acme, &echo, &["succeeded"]).await;
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["worker_id"], id_of("small"), "best fit: the smallest adequate worker");
    let big = submit(&acme, json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 3000}})).await;
    assert_eq!(wait_for_state(&acme, &big, &["succeeded"]).await["worker_id"], id_of("large"));

    let failing = submit(&acme, json!({"command": {"argv": ["sh", "-c", "exit 3"]}, "max_attempts": 1})).await;
    let failed = wait_for_state(&acme, &failing, &["dead_lettered"]).await;
    assert_eq!(
        (failed["exit_code"].as_i64(), failed["dead_letter_reason"].as_str()),
        (Some(3), Some("attempts_exhausted"))
    );

    let slow =
        submit(&acme, json!({"command": {"argv": ["sleep", "30"], "timeout_seconds": 1}, "max_attempts": 1})).await;
    let timed_out = wait_for_state(&acme, &slow, &["dead_lettered"]).await;
    assert!(timed_out["last_error"].as_str().is_some_and(|e| e.contains("timed out")), "{timed_out}");

    // A timeout asks first: SIGTERM reaches the job's process group, which may clean up.
    let polite = "trap 'echo cleaned-up; exit 0' TERM; sleep 30 & wait";
    let polite =
        submit(&acme, json!({"command": {"argv": ["sh", "-c", polite], "timeout_seconds": 1}, "max_attempts": 1}))
            .await;
    let stopped = wait_for_state(&acme, &polite, &["dead_lettered"]).await;
    assert!(stopped["last_error"].as_str().is_some_and(|e| e.contains("timed out")), "{stopped}");
    let output = acme.get(&format!("/api/v1/jobs/{polite}/logs")).await;
    assert!(output.body.to_string().contains("cleaned-up"), "the job saw SIGTERM: {output:?}");

    let missing = submit(&acme, json!({"command": {"argv": ["/no/such/program"]}, "max_attempts": 1})).await;
    let not_started = wait_for_state(&acme, &missing, &["dead_lettered"]).await;
    assert!(not_started["last_error"].as_str().is_some_and(|e| e.contains("could not start")), "{not_started}");

    // The jobs that cannot run say why, in the scheduler's words.
    let waiting = acme.get(&format!("/api/v1/jobs/{too_big}")).await;
    assert_eq!(
        (waiting.body["state"].as_str(), waiting.body["pending"]["code"].as_str()),
        (Some("queued"), Some("no_worker_large_enough")),
        "{waiting:?}"
    );
    let gpu = submit(&acme, json!({"command": {"argv": ["true"]}, "resources": {"labels": {"gpu": "a100"}}})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = acme.get(&format!("/api/v1/jobs/{gpu}")).await;
        if job.body["pending"]["code"] == "no_worker_with_labels" {
            assert!(job.body["pending"]["message"].as_str().is_some_and(|m| m.contains("gpu=a100")), "{job:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no reason recorded: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Events are published once older transactions finish: wait for all four.
    let deadline = Instant::now() + Duration::from_secs(20);
    let kinds = loop {
        let events = acme.get(&format!("/api/v1/events?job_id={echo}")).await;
        let kinds: Vec<String> = events.body["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["kind"].as_str().map(str::to_owned))
            .collect();
        if kinds.len() >= 4 || Instant::now() > deadline {
            break kinds;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(kinds, ["job.submitted", "job.assigned", "job.started", "job.succeeded"]);
    let small = admin.get(&format!("/api/v1/workers/{}", id_of("small").as_str().expect("id"))).await;
    assert!(small.body["jobs_run"].as_i64().is_some_and(|n| n >= 1), "{small:?}");
    assert_eq!(small.body["used_slots"], 0);
}

#[tokio::test]
async fn cancelling_a_running_job_stops_it_on_its_worker() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let _worker = start_worker(&system, "w", 2000);
    let id = submit(&acme, json!({"command": {"argv": ["sleep", "60"]}, "max_attempts": 3})).await;
    wait_for_state(&acme, &id, &["running"]).await;
    let requested = acme.post(&format!("/api/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(
        (requested.body["state"].as_str(), requested.body["cancel_requested_at"].is_string()),
        (Some("running"), true)
    );
    let cancelled = wait_for_state(&acme, &id, &["cancelled", "succeeded", "dead_lettered", "queued"]).await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["attempt"], 1, "not retried");
}

#[tokio::test]
async fn a_job_on_a_killed_worker_is_requeued_and_completes_elsewhere() {
    let system = start_system().await;
    let admin = system.server.admin();
    let acme = system.server.tenant("acme").await;
    let mut doomed = start_worker(&system, "doomed", 2000);
    let doomed_id = registered_worker_id(&admin, "doomed").await;
    let id = submit(&acme, json!({"command": {"argv": ["sleep", "2"]}})).await;
    let running = wait_for_state(&acme, &id, &["running"]).await;
    assert_eq!(running["worker_id"], doomed_id.as_str());

    doomed.start_kill().expect("SIGKILL");
    doomed.wait().await.expect("reaped");
    let _survivor = start_worker(&system, "survivor", 2000);
    let survivor_id = registered_worker_id(&admin, "survivor").await;

    // The lease (4 s here) expires; the job is requeued and runs on the survivor.
    let done = wait_for_state(&acme, &id, &["succeeded"]).await;
    assert_eq!((done["worker_id"].as_str(), done["attempt"].as_i64()), (Some(survivor_id.as_str()), Some(2)));
    let gone = admin.get(&format!("/api/v1/workers/{doomed_id}")).await;
    assert_eq!(gone.body["state"], "gone", "{gone:?}");
}

#[tokio::test]
async fn results_survive_the_api_being_down_for_twenty_seconds() {
    // Workers hold their attempts for a lease without hearing from the control plane; an
    // outage shorter than the lease costs nothing. (A longer one makes them stop their
    // jobs: nobody could tell them apart from a worker that died.)
    let database = hodei_e2e::TestDatabase::empty().await;
    let lease = [("HODEI_WORKER_LEASE_SECONDS", "40")];
    let server = hodei_e2e::Server::spawn_configured(&database.url, hodei_e2e::free_port(), None, &lease);
    server.wait_ready(Duration::from_secs(60)).await;
    let mut system = hodei_e2e::System { server, database };
    let acme = system.server.tenant("acme").await;
    let _worker = start_worker(&system, "w", 2000);
    let first = submit(&acme, json!({"command": {"argv": ["sleep", "5"]}})).await;
    let second = submit(&acme, json!({"command": {"argv": ["sh", "-c", "sleep 6; exit 4"]}, "max_attempts": 1})).await;
    wait_for_state(&acme, &first, &["running"]).await;
    wait_for_state(&acme, &second, &["running"]).await;

    let port = system.server.port();
    system.server.kill().await;
    // Both jobs finish while the API is away; the worker holds on to their results.
    tokio::time::sleep(Duration::from_secs(20)).await;
    system.server = hodei_e2e::Server::spawn_configured(&system.database.url, port, None, &lease);
    system.server.wait_ready(Duration::from_secs(60)).await;

    let done = wait_for_state(&acme, &first, &["succeeded", "dead_lettered", "queued", "scheduled"]).await;
    assert_eq!((done["state"].as_str(), done["attempt"].as_i64()), (Some("succeeded"), Some(1)), "{done}");
    let failed = wait_for_state(&acme, &second, &["dead_lettered", "succeeded", "queued", "scheduled"]).await;
    assert_eq!((failed["state"].as_str(), failed["exit_code"].as_i64()), (Some("dead_lettered"), Some(4)), "{failed}");
}

#[tokio::test]
async fn a_jobs_output_is_stored_and_read_back_by_cursor() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let other = system.server.tenant("other").await;
    let _worker = start_worker(&system, "w", 2000);
    let script = "for i in $(seq 1 20000); do echo line $i; done; echo oops >&2";
    let id = submit(&acme, json!({"command": {"argv": ["sh", "-c", script]}})).await;
    wait_for_state(&acme, &id, &["succeeded"]).await;

    let (mut stdout, mut stderr, mut after, mut pages) = (String::new(), String::new(), 0_i64, 0);
    loop {
        let page = acme.get(&format!("/api/v1/jobs/{id}/logs?after={after}&limit=7")).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let chunks = page.body["chunks"].as_array().expect("chunks").clone();
        if chunks.is_empty() {
            break;
        }
        pages += 1;
        for chunk in chunks {
            let target = if chunk["stream"] == "stdout" { &mut stdout } else { &mut stderr };
            target.push_str(chunk["data"].as_str().expect("data"));
        }
        after = page.body["next_after"].as_i64().expect("cursor");
    }
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 20000);
    assert_eq!((lines[0], lines[19999]), ("line 1", "line 20000"));
    assert_eq!(stderr, "oops\n");
    assert!(pages >= 1);
    other.get(&format!("/api/v1/jobs/{id}/logs")).await.assert_problem(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn an_assignment_that_is_never_started_times_out() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    // A worker that registers and takes work but never starts it.
    let registration = Client::new(&system.server.url, Some(WORKER_REGISTRATION_TOKEN));
    let silent = registration
        .post("/api/v1/workers/register", json!({"name": "silent", "cpu_millis": 1000, "memory_mib": 1024}))
        .await;
    assert_eq!(silent.status, StatusCode::CREATED, "{silent:?}");
    let id = submit(&acme, json!({"command": {"argv": ["true"]}, "max_attempts": 1})).await;
    let dead = wait_for_state(&acme, &id, &["dead_lettered", "succeeded"]).await;
    assert_eq!(dead["state"], "dead_lettered");
    assert!(dead["last_error"].as_str().is_some_and(|e| e.contains("assignment timed out")), "{dead}");
    assert_eq!(dead["worker_id"], silent.body["worker_id"]);
}
