//! The REST API end to end: the real `hodei serve` binary, a real Postgres, HTTP.

use hodei_e2e::{start_system, Server, TestDatabase, ADMIN_KEY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn count(database: &TestDatabase, sql: &str) -> i64 {
    let pool = database.pool().await;
    let value: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.expect("count query");
    pool.close().await;
    value
}

#[tokio::test]
async fn submit_and_read_back_a_job() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let spec = json!({
        "queue": "high",
        "priority": 8,
        "command": {"argv": ["echo", "hello"], "env": {"GREETING": "hi"}, "working_dir": "/tmp", "timeout_seconds": 60},
        "resources": {"cpu_millis": 500, "memory_mib": 256, "labels": {"arch": "x86_64"}},
        "max_attempts": 5,
        "deadline": "2999-01-01T00:00:00Z",
        "metadata": {"team": "data"}
    });
    let created = acme.post("/api/v1/jobs", spec).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let id = created.body["id"].as_str().expect("an id").to_owned();

    let mut fetched = acme.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(fetched.status, StatusCode::OK);
    // A queued job says why it waits: here, no worker exists at all.
    let pending = fetched.body.as_object_mut().expect("object").remove("pending").expect("pending");
    assert_eq!((pending["code"].as_str(), pending["position"].as_i64()), (Some("no_workers"), Some(0)));
    // No attempt yet; and the submission warned that nothing offers its label.
    let attempts = fetched.body.as_object_mut().expect("object").remove("attempts").expect("attempts");
    assert_eq!(attempts, json!([]));
    // Nothing ran, so nothing is rolled up: no cost yet.
    let cost = fetched.body.as_object_mut().expect("object").remove("cost").expect("cost");
    assert_eq!(cost, Value::Null);
    let mut created = created;
    let warnings = created.body.as_object_mut().expect("object").remove("warnings").expect("warnings");
    assert!(warnings[0].as_str().is_some_and(|w| w.contains("arch=x86_64")), "{warnings}");
    assert_eq!(fetched.body, created.body);
    let job = &fetched.body;
    assert_eq!(job["tenant"], "acme");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["queue"], "high");
    assert_eq!(job["priority"], 8);
    assert_eq!(job["command"]["argv"], json!(["echo", "hello"]));
    assert_eq!(job["command"]["env"]["GREETING"], "hi");
    assert_eq!(job["resources"], json!({"cpu_millis": 500, "memory_mib": 256, "labels": {"arch": "x86_64"}}));
    assert_eq!(job["max_attempts"], 5);
    assert_eq!(job["metadata"], json!({"team": "data"}));

    // Defaults for a minimal job.
    let minimal = acme.submit(&["true"]).await;
    assert_eq!((minimal["queue"].as_str(), minimal["priority"].as_i64()), (Some("default"), Some(5)));
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused() {
    let system = start_system().await;
    let server = &system.server;
    let anonymous = server.anonymous();
    anonymous.get("/api/v1/jobs").await.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let bad = hodei_e2e::Client::new(&server.url, Some("hodei_not-a-real-key"));
    let reply = bad.get("/api/v1/jobs").await;
    reply.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));

    // Open endpoints.
    assert_eq!(anonymous.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(anonymous.get("/readyz").await.status, StatusCode::OK);
    let document = anonymous.get("/api/v1/openapi.json").await;
    assert_eq!(document.status, StatusCode::OK);
    assert_eq!(document.body["info"]["title"], "Hodei");
    let docs = anonymous.get("/docs/").await;
    assert_eq!(docs.status, StatusCode::OK);
    assert!(docs.body.as_str().is_some_and(|html| html.contains("swagger")), "{docs:?}");

    // A tenant key cannot administer; an admin key cannot submit.
    let acme = server.tenant("acme").await;
    acme.get("/api/v1/tenants").await.assert_problem(StatusCode::FORBIDDEN, "forbidden");
    server
        .admin()
        .post("/api/v1/jobs", json!({"command": {"argv": ["true"]}}))
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn a_tenant_cannot_see_or_touch_another_tenants_jobs() {
    let system = start_system().await;
    let a = system.server.tenant("tenant-a").await;
    let b = system.server.tenant("tenant-b").await;
    let job = a.submit(&["sleep", "1"]).await;
    let id = job["id"].as_str().expect("id");

    b.get(&format!("/api/v1/jobs/{id}")).await.assert_problem(StatusCode::NOT_FOUND, "not_found");
    b.post(&format!("/api/v1/jobs/{id}/cancel"), json!({})).await.assert_problem(StatusCode::NOT_FOUND, "not_found");
    // The 404 for someone else's job is the same as for a job that never existed.
    let missing = b.get("/api/v1/jobs/01900000-0000-7000-8000-000000000000").await;
    let foreign = b.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(missing.status, foreign.status);
    assert_eq!(missing.body["code"], foreign.body["code"]);

    let listed = b.get("/api/v1/jobs").await;
    assert_eq!(listed.body["jobs"], json!([]));
    // A's event is visible to A (so it has been published) but never to B.
    wait_for_events(&a, "/api/v1/events", 1).await;
    let events = b.get("/api/v1/events").await;
    assert_eq!(events.body["events"], json!([]));

    // Untouched, and still visible to its owner and to an admin.
    assert_eq!(a.get(&format!("/api/v1/jobs/{id}")).await.body["state"], "queued");
    assert_eq!(system.server.admin().get(&format!("/api/v1/jobs/{id}")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_idempotency_key_returns_the_original_job() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let body = json!({"command": {"argv": ["echo", "once"]}});
    let first = acme.post_with("/api/v1/jobs", body.clone(), &[("Idempotency-Key", "order-42")]).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let second = acme.post_with("/api/v1/jobs", body.clone(), &[("Idempotency-Key", "order-42")]).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body["id"], first.body["id"]);
    assert_eq!(count(&system.database, "select count(*) from jobs").await, 1);

    // The same key with a different request is refused and writes nothing.
    let other = json!({"command": {"argv": ["echo", "twice"]}});
    acme.post_with("/api/v1/jobs", other, &[("Idempotency-Key", "order-42")])
        .await
        .assert_problem(StatusCode::CONFLICT, "idempotency_key_reused");

    // Keys are per tenant: another tenant may use the same one.
    let globex = system.server.tenant("globex").await;
    let theirs = globex.post_with("/api/v1/jobs", body.clone(), &[("Idempotency-Key", "order-42")]).await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    assert_ne!(theirs.body["id"], first.body["id"]);

    // Batches replay as a whole.
    let batch = json!({"jobs": [{"command": {"argv": ["a"]}}, {"command": {"argv": ["b"]}}]});
    let first_batch = acme.post_with("/api/v1/jobs/batch", batch.clone(), &[("Idempotency-Key", "batch-1")]).await;
    assert_eq!(first_batch.status, StatusCode::CREATED);
    let replayed = acme.post_with("/api/v1/jobs/batch", batch, &[("Idempotency-Key", "batch-1")]).await;
    assert_eq!(replayed.status, StatusCode::OK);
    assert_eq!(replayed.body["ids"], first_batch.body["ids"]);
    assert_eq!(count(&system.database, "select count(*) from jobs").await, 4);
}

#[tokio::test]
async fn invalid_submissions_get_a_problem_and_write_nothing() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;

    let unknown_field = acme.post("/api/v1/jobs", json!({"command": {"argv": ["true"]}, "priorty": 3})).await;
    unknown_field.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    assert!(unknown_field.body["detail"].as_str().is_some_and(|d| d.contains("unknown field `priorty`")));

    let out_of_range = acme.post("/api/v1/jobs", json!({"command": {"argv": ["true"]}, "priority": 11})).await;
    out_of_range.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(
        out_of_range.body["errors"],
        json!([{"field": "priority", "message": "must be between 1 and 10, got 11"}])
    );

    let malformed = acme.send(Method::POST, "/api/v1/jobs", Some(b"{\"command\": ".to_vec()), &[]).await;
    malformed.assert_problem(StatusCode::BAD_REQUEST, "malformed_json");

    let no_content_type = acme.send(Method::POST, "/api/v1/jobs", None, &[]).await;
    no_content_type.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

    let (status, response) = send_oversized_body(&system.server, acme.key().expect("key"), 2 * 1024 * 1024).await;
    assert_eq!(status, 413, "{response}");
    assert!(response.contains("application/problem+json") && response.contains("body_too_large"), "{response}");

    acme.post("/api/v1/jobs", json!({"queue": "nope", "command": {"argv": ["true"]}}))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "unknown_queue");

    // A batch with one bad job is refused whole, naming the job.
    let batch = json!({"jobs": [{"command": {"argv": ["true"]}}, {"command": {"argv": []}}]});
    let refused = acme.post("/api/v1/jobs/batch", batch).await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(refused.body["errors"][0]["field"], "jobs[1].command.argv");
    let batch = json!({"jobs": [{"command": {"argv": ["true"]}}, {"queue": "nope", "command": {"argv": ["true"]}}]});
    acme.post("/api/v1/jobs/batch", batch).await.assert_problem(StatusCode::NOT_FOUND, "unknown_queue");
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"command": {"argv": ["true"]}})).collect();
    acme.post("/api/v1/jobs/batch", json!({"jobs": too_many}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");

    assert_eq!(count(&system.database, "select count(*) from jobs").await, 0);
    assert_eq!(count(&system.database, "select count(*) from job_events").await, 0);
}

#[tokio::test]
async fn batches_are_atomic_and_keep_their_order() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let jobs: Vec<Value> =
        (0..1000).map(|i| json!({"command": {"argv": ["echo", i.to_string()]}, "priority": 1 + i % 10})).collect();
    let reply = acme.post("/api/v1/jobs/batch", json!({ "jobs": jobs })).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let ids = reply.body["ids"].as_array().expect("ids").clone();
    assert_eq!(ids.len(), 1000);
    for index in [0usize, 417, 999] {
        let job = acme.get(&format!("/api/v1/jobs/{}", ids[index].as_str().expect("id"))).await;
        assert_eq!(job.body["command"]["argv"], json!(["echo", index.to_string()]));
    }
    assert_eq!(count(&system.database, "select count(*) from jobs").await, 1000);
    assert_eq!(count(&system.database, "select count(*) from job_events where kind = 'job.submitted'").await, 1000);
}

#[tokio::test]
async fn listing_pages_through_every_job_once_with_filters() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let mut submitted = Vec::new();
    for index in 0..23 {
        let queue = if index % 2 == 0 { "default" } else { "low" };
        let reply = acme.post("/api/v1/jobs", json!({"queue": queue, "command": {"argv": ["true"]}})).await;
        submitted.push(reply.body["id"].as_str().expect("id").to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/jobs?limit=10&cursor={cursor}"),
            None => "/api/v1/jobs?limit=10".to_owned(),
        };
        let page = acme.get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        pages += 1;
        seen.extend(
            page.body["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_str().expect("id").to_owned()),
        );
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let low = acme.get("/api/v1/jobs?queue=low&limit=500").await;
    assert_eq!(low.body["jobs"].as_array().expect("jobs").len(), 11);
    assert!(low.body["jobs"].as_array().expect("jobs").iter().all(|j| j["queue"] == "low"));

    acme.post(&format!("/api/v1/jobs/{}/cancel", submitted[0]), json!({})).await;
    let cancelled = acme.get("/api/v1/jobs?state=cancelled").await;
    assert_eq!(cancelled.body["jobs"].as_array().expect("jobs").len(), 1);
    assert_eq!(cancelled.body["jobs"][0]["id"], submitted[0].as_str());

    let future = acme.get("/api/v1/jobs?created_after=2999-01-01T00:00:00Z").await;
    assert_eq!(future.body["jobs"], json!([]));

    acme.get("/api/v1/jobs?state=bogus").await.assert_problem(StatusCode::BAD_REQUEST, "invalid_query");
    acme.get("/api/v1/jobs?limit=0").await.assert_problem(StatusCode::BAD_REQUEST, "invalid_query");
    acme.get("/api/v1/jobs?cursor=nope").await.assert_problem(StatusCode::BAD_REQUEST, "invalid_query");
    acme.get("/api/v1/jobs?colour=red").await.assert_problem(StatusCode::BAD_REQUEST, "invalid_query");
}

#[tokio::test]
async fn cancel_and_follow_the_event_stream() {
    let system = start_system().await;
    let acme = system.server.tenant("acme").await;
    let first = acme.submit(&["sleep", "60"]).await;
    let second = acme.submit(&["sleep", "60"]).await;
    let first_id = first["id"].as_str().expect("id");

    let cancelled = acme.post(&format!("/api/v1/jobs/{first_id}/cancel"), json!({})).await;
    assert_eq!(cancelled.status, StatusCode::OK);
    assert_eq!(cancelled.body["state"], "cancelled");
    assert!(cancelled.body["finished_at"].is_string());
    // Cancelling again is harmless.
    assert_eq!(acme.post(&format!("/api/v1/jobs/{first_id}/cancel"), json!({})).await.body["state"], "cancelled");

    // Events are handed out once every transaction older than them has finished (on a
    // shared server, other databases' transactions count too), so wait for them.
    let page = wait_for_events(&acme, "/api/v1/events?limit=2", 2).await;
    let events = page.body["events"].as_array().expect("events");
    assert_eq!((events[0]["job_id"].as_str(), events[0]["kind"].as_str()), (Some(first_id), Some("job.submitted")));
    assert_eq!(events[1]["job_id"], second["id"]);
    let after = page.body["next_after"].as_i64().expect("cursor");
    let rest = wait_for_events(&acme, &format!("/api/v1/events?after={after}"), 1).await;
    let rest_events = rest.body["events"].as_array().expect("events");
    assert_eq!(rest_events.len(), 1);
    assert_eq!(
        (rest_events[0]["kind"].as_str(), rest_events[0]["state"].as_str()),
        (Some("job.cancelled"), Some("cancelled"))
    );
    assert!(rest_events[0]["id"].as_i64().expect("id") > after);
    let caught_up = acme.get(&format!("/api/v1/events?after={}", rest.body["next_after"])).await;
    assert_eq!(caught_up.body["events"], json!([]));

    let only_second =
        wait_for_events(&acme, &format!("/api/v1/events?job_id={}", second["id"].as_str().expect("id")), 1).await;
    assert_eq!(only_second.body["events"].as_array().expect("events").len(), 1);
}

/// Polls `path` until it returns at least `count` events, with a deadline.
async fn wait_for_events(client: &hodei_e2e::Client, path: &str, count: usize) -> hodei_e2e::Reply {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let reply = client.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        if reply.body["events"].as_array().is_some_and(|events| events.len() >= count) {
            return reply;
        }
        assert!(std::time::Instant::now() < deadline, "fewer than {count} events at {path}: {reply:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tenants_and_keys_are_managed_by_admins() {
    let system = start_system().await;
    let server = &system.server;
    let admin = server.admin();
    let created = admin.post("/api/v1/tenants", json!({"name": "acme", "weight": 3})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["weight"], 3);
    admin.post("/api/v1/tenants", json!({"name": "acme"})).await.assert_problem(StatusCode::CONFLICT, "tenant_exists");
    admin
        .post("/api/v1/tenants", json!({"name": "Not Valid"}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    admin
        .post("/api/v1/tenants", json!({"name": "x", "weight": 0}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");

    let updated = admin.send(Method::PATCH, "/api/v1/tenants/acme", Some(br#"{"weight": 7}"#.to_vec()), &[]).await;
    assert_eq!(updated.body["weight"], 7);
    assert_eq!(admin.get("/api/v1/tenants/acme").await.body["weight"], 7);
    let names: Vec<Value> = admin.get("/api/v1/tenants").await.body["tenants"]
        .as_array()
        .expect("list")
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("acme")]);

    let key = admin.post("/api/v1/tenants/acme/api-keys", json!({"name": "ci"})).await;
    assert_eq!(key.status, StatusCode::CREATED);
    let acme = hodei_e2e::Client::new(&server.url, key.body["key"].as_str());
    let job = acme.submit(&["true"]).await;
    let listed = admin.get("/api/v1/tenants/acme/api-keys").await;
    assert!(!listed.body.to_string().contains(key.body["key"].as_str().expect("key")), "keys are never listed");

    // Revoked keys stop working at once.
    let key_id = key.body["id"].as_str().expect("id");
    assert_eq!(admin.delete(&format!("/api/v1/tenants/acme/api-keys/{key_id}")).await.status, StatusCode::NO_CONTENT);
    acme.get("/api/v1/jobs").await.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");

    // A tenant with a queued job cannot be deleted; once it is cancelled, it can.
    admin.delete("/api/v1/tenants/acme").await.assert_problem(StatusCode::CONFLICT, "tenant_has_unfinished_jobs");
    admin.post(&format!("/api/v1/jobs/{}/cancel", job["id"].as_str().expect("id")), json!({})).await;
    assert_eq!(admin.delete("/api/v1/tenants/acme").await.status, StatusCode::NO_CONTENT);
    admin.get("/api/v1/tenants/acme").await.assert_problem(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn every_response_carries_a_request_id_that_reaches_the_logs() {
    let system = start_system().await;
    let anonymous = system.server.anonymous();
    let generated = anonymous.get("/healthz").await;
    assert!(generated.header("x-request-id").is_some_and(|id| !id.is_empty()));
    let chosen = anonymous.send(Method::GET, "/api/v1/jobs", None, &[("x-request-id", "trace-abc-123")]).await;
    assert_eq!(chosen.header("x-request-id"), Some("trace-abc-123"));
    assert_eq!(chosen.body["trace_id"], "trace-abc-123");
    // The request is logged with its id (the log is written as the response is sent).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !system.server.log_text().contains("trace-abc-123") {
        assert!(std::time::Instant::now() < deadline, "request id not in the log:\n{}", system.server.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_servers_starting_together_on_an_empty_database_both_come_up() {
    let database = TestDatabase::empty().await;
    let first = Server::spawn(&database.url);
    let second = Server::spawn(&database.url);
    let limit = std::time::Duration::from_secs(60);
    tokio::join!(first.wait_ready(limit), second.wait_ready(limit));
    // Both serve the same data.
    let acme = first.tenant("acme").await;
    let job = acme.submit(&["true"]).await;
    let via_second = hodei_e2e::Client::new(&second.url, acme.key());
    let fetched = via_second.get(&format!("/api/v1/jobs/{}", job["id"].as_str().expect("id"))).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(count(&database, "select count(*) from _sqlx_migrations").await, count_migration_files());
    drop((first, second));
}

fn count_migration_files() -> i64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    std::fs::read_dir(dir)
        .expect("migrations dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql")))
        .count() as i64
}

#[tokio::test]
async fn the_bootstrap_admin_key_is_the_configured_string() {
    let system = start_system().await;
    let admin = hodei_e2e::Client::new(&system.server.url, Some(ADMIN_KEY));
    assert_eq!(admin.get("/api/v1/tenants").await.status, StatusCode::OK);
    // Stored as its SHA-256 only.
    let pool = system.database.pool().await;
    let (admins, matching_hash, plaintext): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where key_hash = sha256($1::bytea)),
                count(*) filter (where position($1::bytea in key_hash) > 0)
         from api_keys where role = 'admin'",
    )
    .bind(ADMIN_KEY.as_bytes())
    .fetch_one(&pool)
    .await
    .expect("query");
    assert_eq!((admins, matching_hash, plaintext), (1, 1, 0));
}

/// Sends a request with a body of `length` bytes, ignoring a server that stops reading
/// it part way, and returns the response's status and text.
async fn send_oversized_body(server: &Server, key: &str, length: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = server.url.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /api/v1/jobs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    let writing = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        writer.write_all(&vec![b' '; length]).await
    });
    let mut response = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), reader.read_to_end(&mut response)).await;
    writing.abort();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, text)
}
