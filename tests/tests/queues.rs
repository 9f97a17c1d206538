//! Queues, queue status, dead letters and metrics over HTTP against the real binary.

use hodei_e2e::start_system;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn queues_are_managed_by_admins_and_enforce_their_size() {
    let system = start_system().await;
    let server = &system.server;
    let admin = server.admin();
    let a = server.tenant("tenant-a").await;
    let b = server.tenant("tenant-b").await;

    a.post("/api/v1/queues", json!({"name": "tiny"})).await.assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let created = admin.post("/api/v1/queues", json!({"name": "tiny", "policy": "fifo", "max_size": 1})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!((created.body["policy"].as_str(), created.body["max_size"].as_i64()), (Some("fifo"), Some(1)));
    admin.post("/api/v1/queues", json!({"name": "tiny"})).await.assert_problem(StatusCode::CONFLICT, "queue_exists");
    let bad = admin.post("/api/v1/queues", json!({"name": "odd", "policy": "random"})).await;
    bad.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(bad.body["errors"][0]["field"], "policy");
    let bad = admin.post("/api/v1/queues", json!({"name": "odd", "overflow": "redirect"})).await;
    bad.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(bad.body["errors"][0]["field"], "overflow_queue");

    let job = a.post("/api/v1/jobs", json!({"queue": "tiny", "command": {"argv": ["true"]}})).await;
    assert_eq!(job.status, StatusCode::CREATED);
    let full = a.post("/api/v1/jobs", json!({"queue": "tiny", "command": {"argv": ["true"]}})).await;
    full.assert_problem(StatusCode::TOO_MANY_REQUESTS, "queue_full");
    assert_eq!(full.header("retry-after"), Some("5"));

    let names: Vec<String> = a.get("/api/v1/queues").await.body["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| q["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["high", "default", "tiny", "low"]);

    let status = a.get("/api/v1/queues/tiny/status").await;
    assert_eq!(status.status, StatusCode::OK, "{status:?}");
    assert_eq!((status.body["length"].as_i64(), status.body["rejected"].as_i64()), (Some(1), Some(1)));
    assert_eq!(status.body["tenants"], json!([{"tenant": "tenant-a", "ready": 1}]));
    // Another tenant sees the queue's numbers but not who is waiting in it.
    assert_eq!(b.get("/api/v1/queues/tiny/status").await.body["tenants"], json!([]));

    let patched =
        admin.send(Method::PATCH, "/api/v1/queues/tiny", Some(br#"{"max_size": null, "tier": 2}"#.to_vec()), &[]).await;
    assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    assert_eq!((patched.body["max_size"].is_null(), patched.body["tier"].as_i64()), (true, Some(2)));

    admin.delete("/api/v1/queues/tiny").await.assert_problem(StatusCode::CONFLICT, "queue_not_empty");
    admin.delete("/api/v1/queues/default").await.assert_problem(StatusCode::CONFLICT, "queue_builtin");
    a.post(&format!("/api/v1/jobs/{}/cancel", job.body["id"].as_str().expect("id")), json!({})).await;
    assert_eq!(admin.delete("/api/v1/queues/tiny").await.status, StatusCode::NO_CONTENT);
    admin.get("/api/v1/queues/tiny").await.assert_problem(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn evicted_jobs_are_dead_letters_that_can_be_redriven() {
    let system = start_system().await;
    let server = &system.server;
    let admin = server.admin();
    let a = server.tenant("tenant-a").await;
    let b = server.tenant("tenant-b").await;
    let created = admin
        .post(
            "/api/v1/queues",
            json!({"name": "bounded", "policy": "priority", "max_size": 1, "overflow": "evict_lowest"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let low = a.post("/api/v1/jobs", json!({"queue": "bounded", "priority": 1, "command": {"argv": ["true"]}})).await;
    let high = a.post("/api/v1/jobs", json!({"queue": "bounded", "priority": 9, "command": {"argv": ["true"]}})).await;
    assert_eq!((low.status, high.status), (StatusCode::CREATED, StatusCode::CREATED));
    let low_id = low.body["id"].as_str().expect("id");

    let dead = a.get("/api/v1/dead-letters?reason=evicted").await;
    assert_eq!(dead.body["jobs"].as_array().expect("jobs").len(), 1, "{dead:?}");
    assert_eq!(dead.body["jobs"][0]["id"], low_id);
    assert_eq!(dead.body["jobs"][0]["dead_letter_reason"], "evicted");
    assert_eq!(b.get("/api/v1/dead-letters").await.body["jobs"], json!([]));
    b.get(&format!("/api/v1/dead-letters/{low_id}")).await.assert_problem(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(a.get(&format!("/api/v1/dead-letters/{low_id}")).await.body["state"], "dead_lettered");

    // A redrive must fit: it never evicts, and the queue is full with `high`.
    let refused = a.post(&format!("/api/v1/dead-letters/{low_id}/redrive"), json!({})).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "queue_full");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(a.post("/api/v1/dead-letters/redrive", json!({"queue": "bounded"})).await.body["ids"], json!([]));
    assert_eq!(a.get(&format!("/api/v1/dead-letters/{low_id}")).await.body["state"], "dead_lettered");

    let high_id = high.body["id"].as_str().expect("id");
    assert_eq!(a.post(&format!("/api/v1/jobs/{high_id}/cancel"), json!({})).await.status, StatusCode::OK);
    let redriven = a.post(&format!("/api/v1/dead-letters/{low_id}/redrive"), json!({})).await;
    assert_eq!(redriven.status, StatusCode::OK, "{redriven:?}");
    assert_eq!((redriven.body["state"].as_str(), redriven.body["attempt"].as_i64()), (Some("queued"), Some(0)));
    let nothing_left = a.post("/api/v1/dead-letters/redrive", json!({"queue": "bounded"})).await;
    assert_eq!(nothing_left.body["ids"], json!([]));
    // Running the cancelled job again by hand meets the same limit.
    let retry = a.post(&format!("/api/v1/jobs/{high_id}/retry"), json!({})).await;
    retry.assert_problem(StatusCode::TOO_MANY_REQUESTS, "queue_full");
    assert_eq!(a.get(&format!("/api/v1/jobs/{high_id}")).await.body["state"], "cancelled");

    let metrics = server.anonymous().get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.body.as_str().expect("text");
    assert!(text.contains("hodei_queue_length{queue=\"bounded\"} 1"), "{text}");
    assert!(text.contains("# TYPE hodei_queue_overflow_ratio gauge"), "{text}");
}
