//! The worker agent against the real API: it registers, heartbeats, shows up in the
//! registry, and deregisters on SIGTERM. Worker tokens and API keys do not mix.

use std::process::Stdio;
use std::time::{Duration, Instant};

use hodei_e2e::{
    binary, free_port, start_system, wait_for_state, Client, Server, TestDatabase, WORKER_REGISTRATION_TOKEN,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn wait_for<F: FnMut(&Value) -> bool>(admin: &Client, path: &str, mut done: F) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = admin.get(path).await;
        if reply.status == StatusCode::OK && done(&reply.body) {
            return reply.body;
        }
        assert!(Instant::now() < deadline, "condition never held at {path}: {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_worker_registers_heartbeats_and_leaves_on_sigterm() {
    let system = start_system().await;
    let admin = system.server.admin();
    let mut worker = tokio::process::Command::new(binary("hodei-worker"))
        .args(["--api-url", &system.server.url, "run", "--name", "w1", "--cpu-millis", "2000"])
        .args(["--memory-mib", "4096", "--slots", "3", "--label", "gpu=none", "--label", "zone=a"])
        .env("HODEI_WORKER_REGISTRATION_TOKEN", WORKER_REGISTRATION_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start hodei-worker");

    let listed =
        wait_for(&admin, "/api/v1/workers", |body| body["workers"].as_array().is_some_and(|w| w.len() == 1)).await;
    let registered = &listed["workers"][0];
    assert_eq!((registered["name"].as_str(), registered["state"].as_str()), (Some("w1"), Some("idle")));
    assert_eq!((registered["cpu_millis"].as_i64(), registered["memory_mib"].as_i64()), (Some(2000), Some(4096)));
    assert_eq!(registered["slots"], 3);
    assert_eq!(registered["labels"], json!({"gpu": "none", "zone": "a"}));
    let id = registered["id"].as_str().expect("id").to_owned();
    let first_beat = registered["last_heartbeat_at"].as_str().expect("time").to_owned();

    // Heartbeats arrive (every second here).
    wait_for(&admin, &format!("/api/v1/workers/{id}"), |body| body["last_heartbeat_at"].as_str() != Some(&first_beat))
        .await;

    let pid = worker.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await.expect("exits").expect("status");
    assert!(status.success(), "{status:?}");
    let gone = admin.get(&format!("/api/v1/workers/{id}")).await;
    assert_eq!(gone.body["state"], "gone");
    assert!(gone.body["gone_at"].is_string());
    assert_eq!(admin.get("/api/v1/workers").await.body["workers"], json!([]));
    let history = admin.get("/api/v1/workers?include_gone=true").await;
    assert_eq!(history.body["workers"].as_array().expect("workers").len(), 1);
}

#[tokio::test]
async fn worker_credentials_are_checked() {
    let system = start_system().await;
    let server = &system.server;
    let body = json!({"name": "w", "cpu_millis": 1000, "memory_mib": 512});

    let wrong = Client::new(&server.url, Some("not-the-registration-token-0123456789"));
    wrong.post("/api/v1/workers/register", body.clone()).await.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let registration = Client::new(&server.url, Some(WORKER_REGISTRATION_TOKEN));
    let bad =
        registration.post("/api/v1/workers/register", json!({"name": "w", "cpu_millis": 0, "memory_mib": 512})).await;
    bad.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let registered = registration.post("/api/v1/workers/register", body.clone()).await;
    assert_eq!(registered.status, StatusCode::CREATED, "{registered:?}");
    let (id, token) =
        (registered.body["worker_id"].as_str().expect("id"), registered.body["token"].as_str().expect("token"));

    // A worker token is not an API key, and an API key is not a worker token.
    let as_worker = Client::new(&server.url, Some(token));
    as_worker.get("/api/v1/jobs").await.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let tenant = server.tenant("acme").await;
    tenant
        .post(&format!("/api/v1/workers/{id}/heartbeat"), json!({"state": "idle"}))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    // A token acts for its own worker only.
    let other = registration.post("/api/v1/workers/register", body).await;
    let other_id = other.body["worker_id"].as_str().expect("id");
    as_worker
        .post(&format!("/api/v1/workers/{other_id}/heartbeat"), json!({"state": "idle"}))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        as_worker.post(&format!("/api/v1/workers/{id}/heartbeat"), json!({"state": "busy"})).await.status,
        StatusCode::OK
    );
    tenant.get("/api/v1/workers").await.assert_problem(StatusCode::FORBIDDEN, "forbidden");

    // After deregistering, the token is dead.
    assert_eq!(
        as_worker.post(&format!("/api/v1/workers/{id}/deregister"), json!({})).await.status,
        StatusCode::NO_CONTENT
    );
    as_worker
        .post(&format!("/api/v1/workers/{id}/heartbeat"), json!({"state": "idle"}))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn batched_reports_are_fenced_one_by_one_and_a_drain_reaches_the_heartbeat() {
    let database = TestDatabase::empty().await;
    // Assignments hold for longer than this test takes, however slow the machine.
    let environment = [("HODEI_WORKER_ASSIGNMENT_TIMEOUT_SECONDS", "60")];
    let server = &Server::spawn_configured(&database.url, free_port(), None, &environment);
    server.wait_ready(Duration::from_secs(60)).await;
    let registration = Client::new(&server.url, Some(WORKER_REGISTRATION_TOKEN));
    let body = json!({"name": "w", "cpu_millis": 1000, "memory_mib": 512, "slots": 2});
    let registered = registration.post("/api/v1/workers/register", body).await;
    let (id, token) =
        (registered.body["worker_id"].as_str().expect("id"), registered.body["token"].as_str().expect("token"));
    let worker = Client::new(&server.url, Some(token));
    let acme = server.tenant("acme").await;
    let small = json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 100, "memory_mib": 64}});
    let first = acme.post("/api/v1/jobs", small.clone()).await.body["id"].as_str().expect("id").to_owned();
    let second = acme.post("/api/v1/jobs", small).await.body["id"].as_str().expect("id").to_owned();

    let mut assigned = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while assigned.len() < 2 {
        let polled = worker.get(&format!("/api/v1/workers/{id}/assignments?wait_seconds=1")).await;
        assigned.extend(polled.body["assignments"].as_array().expect("assignments").iter().cloned());
        assert!(Instant::now() < deadline, "jobs were not assigned: {assigned:?}");
    }
    let attempt = |job: &str| assigned.iter().find(|a| a["job_id"] == job).expect("assigned")["attempt"].clone();

    // One batch: both start, the first succeeds, the second reports a wrong attempt.
    let reports = json!({
        "started": [{"job_id": first, "attempt": attempt(&first)}, {"job_id": second, "attempt": attempt(&second)}],
        "finished": [
            {"job_id": first, "attempt": attempt(&first), "exit_code": 0},
            {"job_id": second, "attempt": 99, "exit_code": 0},
        ],
    });
    let reply = worker.post(&format!("/api/v1/workers/{id}/reports"), reports).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let outcomes = |kind: &str| -> Vec<String> {
        reply.body[kind]
            .as_array()
            .expect(kind)
            .iter()
            .map(|o| o["outcome"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(outcomes("started"), ["recorded", "recorded"]);
    assert_eq!(outcomes("finished"), ["succeeded", "stale"]);
    assert_eq!(acme.get(&format!("/api/v1/jobs/{first}")).await.body["state"], "succeeded");
    assert_eq!(acme.get(&format!("/api/v1/jobs/{second}")).await.body["state"], "running");
    let in_use = server.admin().get(&format!("/api/v1/workers/{id}")).await;
    assert_eq!((in_use.body["used_slots"].as_i64(), in_use.body["state"].as_str()), (Some(1), Some("busy")));

    // The control plane asks the worker to drain; it keeps draining whatever it reports.
    sqlx::query("update workers set state = 'draining' where id = $1::uuid")
        .bind(id)
        .execute(&sqlx::PgPool::connect(&database.url).await.expect("connect"))
        .await
        .expect("drain");
    let beat = worker.post(&format!("/api/v1/workers/{id}/heartbeat"), json!({"state": "idle"})).await;
    assert_eq!(beat.body["drain"], true, "{beat:?}");
    let beat = worker.post(&format!("/api/v1/workers/{id}/heartbeat"), json!({"state": "idle"})).await;
    assert_eq!(beat.body["drain"], true, "a worker cannot undo a drain: {beat:?}");
}

#[tokio::test]
async fn a_fair_queue_gives_each_tenant_its_highest_priority_job_first_through_workers() {
    let system = start_system().await;
    let server = &system.server;
    let created = server.admin().post("/api/v1/queues", json!({"name": "shared", "policy": "fair"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let acme = server.tenant("acme").await;
    let job = |priority: i64| json!({"command": {"argv": ["true"]}, "queue": "shared", "priority": priority});
    let low = acme.post("/api/v1/jobs", job(1)).await.body["id"].as_str().expect("id").to_owned();
    let high = acme.post("/api/v1/jobs", job(9)).await.body["id"].as_str().expect("id").to_owned();

    // One worker with one slot: the scheduler must pick acme's priority-9 job first, even
    // though its priority-1 job holds the earlier fair-share tag.
    let registration = Client::new(&server.url, Some(WORKER_REGISTRATION_TOKEN));
    let body = json!({"name": "w", "cpu_millis": 1000, "memory_mib": 4096, "slots": 1});
    let registered = registration.post("/api/v1/workers/register", body).await;
    let (id, token) =
        (registered.body["worker_id"].as_str().expect("id"), registered.body["token"].as_str().expect("token"));
    let worker = Client::new(&server.url, Some(token));
    let mut order = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while order.len() < 2 {
        let polled = worker.get(&format!("/api/v1/workers/{id}/assignments?wait_seconds=1")).await;
        for assignment in polled.body["assignments"].as_array().expect("assignments") {
            let job_id = assignment["job_id"].as_str().expect("job id").to_owned();
            let finished = json!({"finished": [{"job_id": job_id, "attempt": assignment["attempt"], "exit_code": 0}]});
            let reply = worker.post(&format!("/api/v1/workers/{id}/reports"), finished).await;
            assert_eq!(reply.body["finished"][0]["outcome"], "succeeded", "{reply:?}");
            order.push(job_id);
        }
        assert!(Instant::now() < deadline, "jobs were not assigned: {order:?}");
    }
    assert_eq!(order, [high, low]);
}

#[tokio::test]
async fn the_noop_executor_is_for_benchmarks_only_and_runs_nothing() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    // Without the setting that allows it, the worker refuses to start.
    let refused = tokio::process::Command::new(binary("hodei-worker"))
        .args(["--api-url", &system.server.url, "run", "--executor", "noop"])
        .env("HODEI_WORKER_REGISTRATION_TOKEN", WORKER_REGISTRATION_TOKEN)
        .env_remove("HODEI_WORKER_NOOP_EXECUTOR")
        .output()
        .await
        .expect("run hodei-worker");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("HODEI_WORKER_NOOP_EXECUTOR=allow"), "{refused:?}");

    // Allowed: a job that would fail if it ran succeeds, and it printed nothing.
    let marker = std::env::temp_dir().join(format!("hodei-noop-{}", uuid::Uuid::now_v7()));
    let _worker = tokio::process::Command::new(binary("hodei-worker"))
        .args(["--api-url", &system.server.url, "run", "--name", "noop", "--executor", "noop"])
        .env("HODEI_WORKER_REGISTRATION_TOKEN", WORKER_REGISTRATION_TOKEN)
        .env("HODEI_WORKER_NOOP_EXECUTOR", "allow")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start hodei-worker");
    let touch = format!("touch {} && exit 1", marker.display());
    let job = acme.post("/api/v1/jobs", json!({"command": {"argv": ["sh", "-c", touch]}})).await;
    assert_eq!(job.status, StatusCode::CREATED, "{job:?}");
    let id = job.body["id"].as_str().expect("id").to_owned();
    let done = wait_for_state(&acme, &id, &["succeeded", "dead_lettered"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(!marker.exists(), "the noop executor ran the job");
}
