//! Queue promises kept on the path production runs: a real `hodei serve` assigns to a real
//! `hodei-worker`. A job that waited past its queue's SLA is marked and counted; an `edf`
//! job whose deadline passed while queued is dead-lettered under `dead_letter`, and runs,
//! recorded as expired, under `run`.

use std::time::Duration;

use hodei_e2e::{start_system, start_worker, wait_for_state};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn sla_breaches_and_expired_deadlines_are_kept_by_the_scheduling_cycle() {
    let system = start_system().await;
    let admin = system.server.admin();
    let acme = system.server.tenant("acme").await;
    for queue in [
        json!({"name": "tight", "sla_max_wait_seconds": 1}),
        json!({"name": "expiring", "policy": "edf", "expired_deadline": "dead_letter"}),
        json!({"name": "lenient", "policy": "edf", "expired_deadline": "run"}),
    ] {
        let created = admin.post("/api/v1/queues", queue.clone()).await;
        assert_eq!(created.status, StatusCode::CREATED, "{queue}: {created:?}");
    }
    let submit = async |queue: &str, deadline: Option<String>| {
        let mut spec = json!({"queue": queue, "command": {"argv": ["true"]}});
        if let Some(deadline) = deadline {
            spec["deadline"] = json!(deadline);
        }
        let reply = acme.post("/api/v1/jobs", spec).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.body["id"].as_str().expect("id").to_owned()
    };
    let soon = || (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let waited = submit("tight", None).await;
    let expires = submit("expiring", Some(soon())).await;
    let runs_late = submit("lenient", Some(soon())).await;
    // No worker yet: the jobs wait past the SLA and past their deadlines (the waiting is
    // the condition under test, not a hope that something happened).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _worker = start_worker(&system.server.url, "late", &["--slots", "4"]);

    let done = wait_for_state(&acme, &waited, &["succeeded"]).await;
    assert_eq!(done["sla_breached"], true, "{done}");
    let status = acme.get("/api/v1/queues/tight/status").await.body;
    assert_eq!(status["sla_breaches"], 1, "{status}");
    let metrics = system.server.anonymous().get("/metrics").await.body;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(metrics.contains("hodei_queue_sla_breaches_recent{queue=\"tight\"} 1"), "{metrics}");

    let dead = wait_for_state(&acme, &expires, &["dead_lettered", "succeeded"]).await;
    assert_eq!(
        (dead["state"].as_str(), dead["dead_letter_reason"].as_str()),
        (Some("dead_lettered"), Some("deadline_expired")),
        "{dead}"
    );
    assert_eq!(dead["attempt"], 0, "it never ran: {dead}");
    // Counted where the cycle dead-lettered it.
    let metrics = system.server.anonymous().get("/metrics").await.body;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(metrics.contains("hodei_dead_letters_total{reason=\"deadline_expired\"} 1"), "{metrics}");

    let ran = wait_for_state(&acme, &runs_late, &["succeeded", "dead_lettered"]).await;
    assert_eq!(ran["state"], "succeeded", "{ran}");
    for queue in ["expiring", "lenient"] {
        let status = acme.get(&format!("/api/v1/queues/{queue}/status")).await.body;
        assert_eq!(status["deadline_expired"], 1, "{queue}: {status}");
    }
}

#[tokio::test]
async fn a_deadline_already_past_is_accepted_with_a_warning_and_expires_at_dispatch() {
    let system = start_system().await;
    let admin = system.server.admin();
    let acme = system.server.tenant("acme").await;
    let queue = json!({"name": "expiring", "policy": "edf", "expired_deadline": "dead_letter"});
    assert_eq!(admin.post("/api/v1/queues", queue).await.status, StatusCode::CREATED);
    let past = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let reply =
        acme.post("/api/v1/jobs", json!({"queue": "expiring", "deadline": past, "command": {"argv": ["true"]}})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let warning = reply.body["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("has passed: the job expires when it is dispatched"), "{reply:?}");
    let id = reply.body["id"].as_str().expect("id").to_owned();
    let batch = json!({"jobs": [
        {"queue": "expiring", "command": {"argv": ["true"]}},
        {"queue": "expiring", "deadline": past, "command": {"argv": ["true"]}}
    ]});
    let reply = acme.post("/api/v1/jobs/batch", batch).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let warnings = reply.body["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{reply:?}");
    assert!(warnings[0].as_str().is_some_and(|w| w.starts_with("jobs[1]: the deadline")), "{reply:?}");

    let _worker = start_worker(&system.server.url, "w", &[]);
    let dead = wait_for_state(&acme, &id, &["dead_lettered", "succeeded"]).await;
    assert_eq!(dead["dead_letter_reason"], "deadline_expired", "{dead}");
}
