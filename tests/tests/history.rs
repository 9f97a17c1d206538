//! Historical metrics through `hodei serve`: the roll-up (every second here) keeps what
//! a queue and a pool did, `GET /metrics/historical` and `GET /pools/{id}/metrics` read it
//! back, and bad queries are refused naming the parameter.

use std::time::Duration;

use hodei_e2e::{free_port, wait_for_state, wait_until, ConfigFile, Server, TestDatabase};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn total(reply: &Value) -> f64 {
    reply["points"].as_array().map_or(0.0, |points| points.iter().filter_map(|p| p["value"].as_f64()).sum())
}

#[tokio::test]
async fn a_queue_s_and_a_pool_s_history_reads_back_and_bad_queries_name_the_parameter() {
    let database = TestDatabase::empty().await;
    let config = ConfigFile::new(
        "pools:\n  - id: solo\n    size: 1\n    template: {slots: 2, cpu_millis: 1000, memory_mib: 512}\n\
         metrics:\n  history: {interval_seconds: 1}\n",
    );
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(config.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let acme = server.tenant("acme").await;
    let mut ids = Vec::new();
    for argv in [["true"], ["true"], ["false"]] {
        let reply = acme.post("/api/v1/jobs", json!({"command": {"argv": argv}, "max_attempts": 1})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        ids.push(reply.body["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        wait_for_state(&acme, id, &["succeeded", "dead_lettered"]).await;
    }

    // The three jobs, dispatched and ended, in the last ten minutes' minute buckets.
    let query = |metric: &str| {
        let from =
            (chrono::Utc::now() - chrono::Duration::minutes(10)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        format!("/api/v1/metrics/historical?metric={metric}&queue=default&from={}&step=60", from.replace('+', "%2B"))
    };
    for (metric, expected) in [("dispatched", 3.0), ("submitted", 3.0), ("succeeded", 2.0), ("failed", 1.0)] {
        let reply = wait_until(&format!("{expected} {metric} in the history"), Duration::from_secs(30), async || {
            let reply = admin.get(&query(metric)).await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            (total(&reply.body) == expected).then_some(reply)
        })
        .await;
        assert_eq!(reply.body["resolution"], "minute", "{reply:?}");
        assert_eq!(reply.body["step_seconds"], 60, "{reply:?}");
    }
    let lengths = admin.get(&query("queue_length")).await;
    assert!(!lengths.body["points"].as_array().expect("points").is_empty(), "{lengths:?}");

    // The pool: one member, ready, sampled every second.
    let pool = wait_until("the pool's history", Duration::from_secs(30), async || {
        let reply = admin.get("/api/v1/pools/solo/metrics").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let ready = reply.body["pool_ready"].as_array().and_then(|points| points.last()).map(|p| p["value"].clone());
        (ready == Some(json!(1.0))).then_some(reply)
    })
    .await;
    assert_eq!(pool.body["pool_size"].as_array().and_then(|p| p.last()).map(|p| p["value"].clone()), Some(json!(1.0)));

    // Bad queries change nothing and name what is wrong.
    let refused = admin.get("/api/v1/metrics/historical?metric=queue_depth&queue=default").await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(refused.body.to_string().contains("\"field\":\"metric\""), "{refused:?}");
    let refused = admin.get("/api/v1/metrics/historical?metric=pool_busy&queue=default").await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(refused.body.to_string().contains("\"field\":\"pool\""), "{refused:?}");
    let week_ago = (chrono::Utc::now() - chrono::Duration::days(7)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let path = format!(
        "/api/v1/metrics/historical?metric=dispatched&queue=default&from={}&step=60",
        week_ago.replace('+', "%2B")
    );
    let refused = admin.get(&path).await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(refused.body.to_string().contains("\"field\":\"step\""), "{refused:?}");
    let missing = admin.get("/api/v1/pools/nowhere/metrics").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{missing:?}");
    let forbidden = acme.get(&query("dispatched")).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN, "{forbidden:?}");
    server.stop().await;
}
