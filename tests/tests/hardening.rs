//! What an attacker or a careless client could do to the control plane, refused: no pool
//! spec becomes a command on the control-plane host, the local provider is off unless the
//! operator enables it, no secret of the control plane reaches a worker or a job,
//! authorisation comes before the body is read, a tenant sees only its own numbers, and a
//! tenant's unfinished jobs are never deleted silently.

use std::time::{Duration, Instant};

use hodei_e2e::{free_port, wait_for_state, Server, TestDatabase, ADMIN_KEY, WORKER_REGISTRATION_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn no_pool_spec_from_the_api_becomes_a_command_on_the_control_plane_host() {
    let database = TestDatabase::empty().await;
    let server = Server::start(&database.url).await;
    let admin = server.admin();
    let marker = std::env::temp_dir().join(format!("hodei-pwned-{}-{}", std::process::id(), free_port()));
    let shell = format!("id > {}", marker.display());

    let replaced = admin
        .post(
            "/api/v1/pools",
            json!({"id": "x", "kind": "static", "provider": "local", "size": 1,
                   "template": {"command": ["sh", "-c", shell]}}),
        )
        .await;
    replaced.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    assert!(replaced.body["detail"].as_str().is_some_and(|d| d.contains("command")), "{replaced:?}");

    let health =
        admin.post("/api/v1/pools", json!({"id": "y", "size": 1, "health": {"command": ["sh", "-c", shell]}})).await;
    assert_eq!(health.status, StatusCode::FORBIDDEN, "{health:?}");
    assert!(health.body.to_string().contains("health.command"), "{health:?}");
    let environment = admin
        .post("/api/v1/pools", json!({"id": "z", "size": 1, "template": {"env": {"LD_PRELOAD": "/tmp/x.so"}}}))
        .await;
    assert_eq!(environment.status, StatusCode::FORBIDDEN, "{environment:?}");
    assert!(environment.body.to_string().contains("template.env"), "{environment:?}");

    let pools = admin.get("/api/v1/pools").await;
    assert_eq!(pools.body["pools"].as_array().map(Vec::len), Some(0), "nothing was created: {pools:?}");
    assert!(!marker.exists(), "a pool spec ran a command on this host");
}

#[tokio::test]
async fn the_local_provider_is_off_unless_enabled_and_pools_are_bounded() {
    let database = TestDatabase::empty().await;
    let port = free_port();
    let server = Server::spawn_configured(&database.url, port, None, &[("HODEI_PROVIDERS_LOCAL_ENABLED", "false")]);
    server.wait_ready(Duration::from_secs(60)).await;
    let refused = server.admin().post("/api/v1/pools", json!({"id": "local-pool", "size": 1})).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{refused:?}");
    assert!(refused.body.to_string().contains("unknown provider"), "{refused:?}");
    drop(server);

    let database = TestDatabase::empty().await;
    let server = Server::spawn_configured(
        &database.url,
        free_port(),
        None,
        &[("HODEI_MAX_POOLS", "1"), ("HODEI_MAX_POOL_SIZE", "2")],
    );
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let too_large = admin.post("/api/v1/pools", json!({"id": "big", "size": 3})).await;
    assert_eq!(too_large.status, StatusCode::UNPROCESSABLE_ENTITY, "{too_large:?}");
    assert!(too_large.body.to_string().contains("max_pool_size"), "{too_large:?}");
    assert_eq!(admin.post("/api/v1/pools", json!({"id": "one", "size": 1})).await.status, StatusCode::CREATED);
    admin
        .post("/api/v1/pools", json!({"id": "two", "size": 1}))
        .await
        .assert_problem(StatusCode::CONFLICT, "too_many_pools");
    assert_eq!(admin.delete("/api/v1/pools/one").await.status, StatusCode::ACCEPTED);
}

/// The worker a local pool starts sees none of the control plane's secrets (not its
/// database URL, not its admin key: only the registration token it needs), and the jobs
/// it runs see not even that.
#[tokio::test]
async fn no_control_plane_secret_reaches_a_worker_or_a_job() {
    let database = TestDatabase::empty().await;
    let config = std::env::temp_dir().join(format!("hodei-secrets-{}-{}.yaml", std::process::id(), free_port()));
    std::fs::write(&config, "pools:\n  - id: local\n    size: 1\n    template: {slots: 1}\n").expect("config");
    let server = Server::spawn_configured(&database.url, free_port(), Some(&config), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let acme = server.tenant("acme").await;
    let job = acme.submit(&["sh", "-c", "env; echo ---worker---; tr '\\0' '\\n' < /proc/$PPID/environ"]).await;
    let id = job["id"].as_str().expect("id");
    let done = wait_for_state(&acme, id, &["succeeded", "dead_lettered"]).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let logs = acme.get(&format!("/api/v1/jobs/{id}/logs")).await.body;
    let output: String =
        logs["chunks"].as_array().expect("chunks").iter().filter_map(|chunk| chunk["data"].as_str()).collect();
    let (job_environment, worker_environment) = output.split_once("---worker---").expect("both environments");
    assert!(job_environment.contains("PATH="), "the job's environment was printed: {output}");
    assert!(worker_environment.contains("PATH="), "the worker's environment was printed: {output}");
    for secret in [ADMIN_KEY, database.url.as_str(), "HODEI_DATABASE_URL", "HODEI_BOOTSTRAP_ADMIN_KEY"] {
        assert!(!output.contains(secret), "{secret} reached the worker or its job:\n{output}");
    }
    for secret in [WORKER_REGISTRATION_TOKEN, "HODEI_WORKER_REGISTRATION_TOKEN"] {
        assert!(!job_environment.contains(secret), "{secret} reached the job:\n{job_environment}");
    }
    let _ = std::fs::remove_file(&config);
}

#[tokio::test]
async fn a_tenant_key_is_refused_before_its_body_is_read() {
    let database = TestDatabase::empty().await;
    let server = Server::start(&database.url).await;
    let acme = server.tenant("acme").await;
    // No body, no content type: still 403, not 415.
    let patch = acme.send(Method::PATCH, "/api/v1/tenants/acme", None, &[]).await;
    patch.assert_problem(StatusCode::FORBIDDEN, "forbidden");
    // A body that would not validate: still 403, not 422.
    acme.post("/api/v1/pools", json!({"id": "x"})).await.assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let garbage = acme.send(Method::POST, "/api/v1/queues", Some(b"{not json".to_vec()), &[]).await;
    garbage.assert_problem(StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_numbers_in_queue_status() {
    let database = TestDatabase::empty().await;
    let server = Server::start(&database.url).await;
    let acme = server.tenant("acme").await;
    let other = server.tenant("other").await;
    for _ in 0..3 {
        acme.submit(&["true"]).await;
    }
    other.submit(&["true"]).await;
    let mine = other.get("/api/v1/queues/default/status").await.body;
    assert_eq!((mine["length"].as_i64(), mine["submitted"].as_i64()), (Some(1), Some(1)), "{mine}");
    assert_eq!(mine["tenants"].as_array().map(Vec::len), Some(1), "{mine}");
    let all = server.admin().get("/api/v1/queues/default/status").await.body;
    assert_eq!((all["length"].as_i64(), all["submitted"].as_i64()), (Some(4), Some(4)), "{all}");
}

#[tokio::test]
async fn deleting_a_tenant_never_discards_jobs_that_have_not_ended() {
    let database = TestDatabase::empty().await;
    let server = Server::start(&database.url).await;
    let admin = server.admin();
    let tenant = server.tenant("t3").await;
    let later =
        tenant.post("/api/v1/jobs", json!({"command": {"argv": ["true"]}, "not_before": "2030-01-01T00:00:00Z"})).await;
    assert_eq!(later.status, StatusCode::CREATED, "{later:?}");
    tenant.submit(&["true"]).await;

    let refused = admin.delete("/api/v1/tenants/t3").await;
    refused.assert_problem(StatusCode::CONFLICT, "tenant_has_unfinished_jobs");
    let detail = refused.body["detail"].as_str().expect("detail");
    assert!(detail.contains("1 scheduled") && detail.contains("1 queued"), "{detail}");
    let id = later.body["id"].as_str().expect("id");
    assert_eq!(tenant.get(&format!("/api/v1/jobs/{id}")).await.body["state"], "scheduled", "the job is still there");

    let db = sqlx::PgPool::connect(&database.url).await.expect("connect");
    let history = "select (select count(*) from job_events), (select count(*) from queue_activity)";
    let (events, activity): (i64, i64) = sqlx::query_as(history).fetch_one(&db).await.expect("history");
    assert!(events >= 2 && activity >= 1, "each job's submitted event, the accepted submits: {events}, {activity}");
    assert_eq!(admin.delete("/api/v1/tenants/t3?cancel_jobs=true").await.status, StatusCode::NO_CONTENT);
    let left: i64 = sqlx::query_scalar("select count(*) from jobs").fetch_one(&db).await.expect("jobs");
    assert_eq!(left, 0);
    let after: (i64, i64) = sqlx::query_as(history).fetch_one(&db).await.expect("history");
    assert_eq!(after, (0, 0), "the tenant's events and queue activity go with it");
    let waiting: i64 =
        sqlx::query_scalar("select (select count(*) from ready_jobs) + (select count(*) from scheduled_jobs)")
            .fetch_one(&db)
            .await
            .expect("waiting rows");
    assert_eq!(waiting, 0, "no waiting row outlives its job");
}

/// A client that trickles its request head is cut off at the header deadline, and the
/// connection limit holds: at the limit a new client waits until a connection frees up.
#[tokio::test]
async fn slow_clients_are_cut_off_and_connections_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let database = TestDatabase::empty().await;
    let server = Server::spawn_configured(
        &database.url,
        free_port(),
        None,
        &[("HODEI_HTTP_HEADER_READ_TIMEOUT_SECONDS", "1"), ("HODEI_HTTP_MAX_CONNECTIONS", "2")],
    );
    server.wait_ready(Duration::from_secs(60)).await;
    let address = format!("127.0.0.1:{}", server.port());

    let mut trickling = tokio::net::TcpStream::connect(&address).await.expect("connect");
    trickling.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("half a head");
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), trickling.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a trickled head held its connection for 10 s");
    assert!(started.elapsed() >= Duration::from_millis(900), "cut off before the deadline: {:?}", started.elapsed());

    // Two silent connections take both places; a third client is not served until one goes.
    let first = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let _second = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().expect("client");
    let at_limit = impatient.get(format!("{}/healthz", server.url)).send().await;
    assert!(at_limit.is_err(), "served beyond the connection limit: {at_limit:?}");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if impatient.get(format!("{}/healthz", server.url)).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "a freed connection was not given to the next client");
    }
}

/// `hodei openapi | head -c 200`: the reader leaves early, and hodei exits quietly.
#[tokio::test]
async fn printing_to_a_closed_pipe_is_not_a_crash() {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new(hodei_e2e::binary("hodei"))
        .arg("openapi")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("hodei openapi");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut head = [0u8; 200];
    stdout.read_exact(&mut head).await.expect("the first 200 bytes");
    drop(stdout);
    let output =
        tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.expect("exits").expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
}

/// Every error is a problem document, whoever answered it; and a whole number written as
/// a float is that number.
#[tokio::test]
async fn every_error_is_a_problem_and_whole_floats_are_integers() {
    let database = TestDatabase::empty().await;
    let server = Server::start(&database.url).await;
    let acme = server.tenant("acme").await;
    let not_utf8 = acme.get("/api/v1/jobs/%FF%FE").await;
    assert_eq!(not_utf8.header("content-type"), Some("application/problem+json"), "{not_utf8:?}");
    assert_eq!(not_utf8.body["status"], not_utf8.status.as_u16(), "{not_utf8:?}");
    assert!(not_utf8.status.is_client_error(), "{not_utf8:?}");
    let docs = server.anonymous().get("/docs/no-such-page").await;
    docs.assert_problem(StatusCode::NOT_FOUND, "not_found");

    let weight =
        server.admin().send(Method::PATCH, "/api/v1/tenants/acme", Some(br#"{"weight": 399.0}"#.to_vec()), &[]).await;
    assert_eq!((weight.status, weight.body["weight"].as_i64()), (StatusCode::OK, Some(399)), "{weight:?}");
    let fraction =
        server.admin().send(Method::PATCH, "/api/v1/tenants/acme", Some(br#"{"weight": 2.5}"#.to_vec()), &[]).await;
    fraction.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
}

/// A client that sends its head but trickles its body is cut off at the body deadline.
#[tokio::test]
async fn a_trickled_body_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let database = TestDatabase::empty().await;
    let server =
        Server::spawn_configured(&database.url, free_port(), None, &[("HODEI_HTTP_BODY_READ_TIMEOUT_SECONDS", "1")]);
    server.wait_ready(Duration::from_secs(60)).await;
    let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{}", server.port())).await.expect("connect");
    let head = format!(
        "POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"na"
    );
    stream.write_all(head.as_bytes()).await.expect("head and a little body");
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a trickled body held its connection for 10 s");
    assert!(started.elapsed() >= Duration::from_millis(900), "cut off early: {:?}", started.elapsed());
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "{answer}");
}
