//! Cron schedules end to end: a tenant's schedule fires every second and its jobs run on a
//! real worker; pause stops the fires and resume restarts them; bad input answers 422
//! naming the field (a job in a queue that does not exist: 404, as `POST /jobs` answers)
//! and stores nothing; another tenant sees nothing. And exactly once:
//! three replicas on one database, one killed with SIGKILL and another started, fire every
//! second of a `run_all` schedule once, with one job each, no duplicate and no gap.

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use hodei_e2e::{start_system, start_worker, wait_until, Client, Server, TestDatabase};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn every_second(name: &str) -> Value {
    json!({"name": name, "cron": "* * * * * *", "job": {"command": {"argv": ["true"]}}})
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().expect("a time").parse().expect("RFC 3339")
}

async fn detail(client: &Client, id: &str) -> Value {
    let reply = client.get(&format!("/api/v1/schedules/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

async fn database_now(pool: &sqlx::PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("select now()").fetch_one(pool).await.expect("now")
}

async fn fire_count(pool: &sqlx::PgPool, id: &str) -> i64 {
    sqlx::query_scalar("select count(*) from schedule_fires where schedule_id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn a_schedule_fires_jobs_that_run_and_pauses_and_resumes() {
    let system = start_system().await;
    let server = &system.server;
    let pool = system.database.pool().await;
    let acme = server.tenant("acme").await;
    let _worker = start_worker(&server.url, "w1", &[]);

    let created = acme.post("/api/v1/schedules", every_second("tick")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let id = created.body["id"].as_str().expect("id").to_owned();
    assert_eq!(created.body["tenant"], "acme");
    assert_eq!(created.body["overlap"], "allow");
    assert_eq!(created.body["missed_fires"], "skip");
    let created_at = time(&created.body["created_at"]);

    // Its jobs run: at least two fires whose jobs succeeded on the worker.
    let fires = wait_until("two fires whose jobs succeeded", Duration::from_secs(30), async || {
        let fires = detail(&acme, &id).await["fires"].as_array().cloned().unwrap_or_default();
        let mut succeeded = 0;
        for fire in &fires {
            let Some(job_id) = fire["job_id"].as_str() else { continue };
            if acme.get(&format!("/api/v1/jobs/{job_id}")).await.body["state"] == "succeeded" {
                succeeded += 1;
            }
        }
        (succeeded >= 2).then_some(fires)
    })
    .await;
    for fire in &fires {
        assert_eq!(fire["outcome"], "submitted", "{fire}");
        assert!(time(&fire["fire_at"]) > created_at, "no fire before creation: {fire}");
    }
    // Each fire's job carries a trace of its own.
    let mut traces = std::collections::BTreeSet::new();
    for fire in &fires {
        let Some(job_id) = fire["job_id"].as_str() else { continue };
        let job = acme.get(&format!("/api/v1/jobs/{job_id}")).await.body;
        let traceparent = job["traceparent"].as_str().unwrap_or_else(|| panic!("no traceparent: {job}")).to_owned();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert!(parts.len() == 4 && parts[0] == "00" && parts[1].len() == 32, "{traceparent}");
        traces.insert(parts[1].to_owned());
    }
    assert_eq!(traces.len(), fires.iter().filter(|fire| fire["job_id"].is_string()).count(), "{traces:?}");
    let shown = detail(&acme, &id).await;
    let next: Vec<DateTime<Utc>> = shown["next_fires"].as_array().expect("next_fires").iter().map(time).collect();
    assert_eq!(next.len(), 5);
    assert!(next.windows(2).all(|pair| pair[1] - pair[0] == chrono::Duration::seconds(1)), "{next:?}");
    assert!(next[0] > time(&shown["fires"][0]["fire_at"]), "the next fire is after the last");

    // Pause: once it answers, nothing fires, for as long as it stays paused.
    let paused = acme.post(&format!("/api/v1/schedules/{id}/pause"), json!({})).await;
    assert_eq!(paused.status, StatusCode::OK, "{paused:?}");
    assert_eq!(paused.body["paused"], true);
    let paused_at = time(&paused.body["updated_at"]);
    let fires_when_paused = fire_count(&pool, &id).await;
    assert!(detail(&acme, &id).await["next_fires"].as_array().expect("next_fires").is_empty());
    wait_until("three seconds of the database's clock while paused", Duration::from_secs(10), async || {
        (database_now(&pool).await > paused_at + chrono::Duration::seconds(3)).then_some(())
    })
    .await;
    assert_eq!(fire_count(&pool, &id).await, fires_when_paused, "a paused schedule fired");
    // Each fire's job was counted as a submission, as the API's are.
    let metrics = server.anonymous().get("/metrics").await.body.as_str().unwrap_or_default().to_owned();
    let counted = format!(
        "hodei_jobs_submitted_total{{queue=\"default\",tenant=\"acme\",decision=\"accepted\"}} {fires_when_paused}"
    );
    assert!(metrics.contains(&counted), "{counted} not in\n{metrics}");

    // Resume: fires again, from the resume on; the paused seconds are not caught up.
    let resumed = acme.post(&format!("/api/v1/schedules/{id}/resume"), json!({})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{resumed:?}");
    assert_eq!(resumed.body["paused"], false);
    let resumed_at = time(&resumed.body["updated_at"]);
    wait_until("a fire after the resume", Duration::from_secs(10), async || {
        (fire_count(&pool, &id).await > fires_when_paused).then_some(())
    })
    .await;
    let in_pause: i64 = sqlx::query_scalar(
        "select count(*) from schedule_fires where schedule_id = $1::uuid and fire_at > $2 and fire_at <= $3",
    )
    .bind(&id)
    .bind(paused_at)
    .bind(resumed_at)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(in_pause, 0, "fire times of the paused window were fired");

    // Another tenant: not found, whatever it asks; and its list is empty.
    let globex = server.tenant("globex").await;
    for reply in [
        globex.get(&format!("/api/v1/schedules/{id}")).await,
        globex.post(&format!("/api/v1/schedules/{id}/pause"), json!({})).await,
        globex.post(&format!("/api/v1/schedules/{id}/resume"), json!({})).await,
        globex.delete(&format!("/api/v1/schedules/{id}")).await,
    ] {
        reply.assert_problem(StatusCode::NOT_FOUND, "not_found");
    }
    assert_eq!(globex.get("/api/v1/schedules").await.body["schedules"], json!([]));
    // An admin sees every tenant's schedules but cannot create one: refused before its
    // body (here not even JSON) is read.
    let admin = server.admin();
    assert_eq!(admin.get("/api/v1/schedules").await.body["schedules"][0]["id"], id.as_str());
    let refused = admin
        .send(
            reqwest::Method::POST,
            "/api/v1/schedules",
            Some(b"not json".to_vec()),
            &[("content-type", "application/json")],
        )
        .await;
    refused.assert_problem(StatusCode::FORBIDDEN, "forbidden");

    // Bad input: 422 naming the field, nothing stored.
    let bad = [
        (json!({"cron": "every second please"}), "cron"),
        (json!({"cron": "0 0 0 1 1 * 2020"}), "cron"),
        (json!({"time_zone": "Mars/Olympus"}), "time_zone"),
        (json!({"job": {"command": {"argv": []}}}), "job.command.argv"),
        (json!({"job": {"command": {"argv": ["true"]}, "priority": 11}}), "job.priority"),
    ];
    for (change, field) in bad {
        let mut body = every_second("bad");
        body.as_object_mut().expect("a value").extend(change.as_object().expect("a value").clone());
        let reply = acme.post("/api/v1/schedules", body).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        let fields: Vec<&str> =
            reply.body["errors"].as_array().expect("errors").iter().filter_map(|e| e["field"].as_str()).collect();
        assert_eq!(fields, [field], "{reply:?}");
    }
    // A job naming a queue that does not exist: refused as `POST /jobs` refuses it.
    let mut body = every_second("bad");
    body["job"]["queue"] = json!("nowhere");
    let submitted = acme.post("/api/v1/jobs", body["job"].clone()).await;
    submitted.assert_problem(StatusCode::NOT_FOUND, "unknown_queue");
    let reply = acme.post("/api/v1/schedules", body).await;
    reply.assert_problem(StatusCode::NOT_FOUND, "unknown_queue");
    assert_eq!(reply.body["detail"], submitted.body["detail"], "{reply:?}");
    let stored: i64 = sqlx::query_scalar("select count(*) from schedules").fetch_one(&pool).await.expect("count");
    assert_eq!(stored, 1, "a refused schedule was stored");
    acme.post("/api/v1/schedules", every_second("tick")).await.assert_problem(StatusCode::CONFLICT, "schedule_exists");

    // Delete: gone, with its fire records; its jobs stay.
    let jobs_before: i64 = sqlx::query_scalar("select count(*) from jobs").fetch_one(&pool).await.expect("count");
    assert_eq!(acme.delete(&format!("/api/v1/schedules/{id}")).await.status, StatusCode::NO_CONTENT);
    acme.get(&format!("/api/v1/schedules/{id}")).await.assert_problem(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(fire_count(&pool, &id).await, 0);
    let jobs_after: i64 = sqlx::query_scalar("select count(*) from jobs").fetch_one(&pool).await.expect("count");
    assert!(jobs_after >= jobs_before);
}

#[tokio::test]
async fn three_replicas_fire_every_second_exactly_once_through_a_sigkill() {
    let database = TestDatabase::empty().await;
    let spawn = || Server::spawn_configured(&database.url, hodei_e2e::free_port(), None, &[]);
    let mut replicas = vec![spawn(), spawn(), spawn()];
    for replica in &replicas {
        replica.wait_ready(Duration::from_secs(60)).await;
    }
    let pool = database.pool().await;
    let acme = replicas[1].tenant("acme").await;
    let schedule = json!({
        "name": "every-second",
        "cron": "* * * * * *",
        "job": {"command": {"argv": ["true"]}, "resources": {"cpu_millis": 10}},
        "missed_fires": "run_all",
        "max_missed_fires": 1000,
    });
    let created = acme.post("/api/v1/schedules", schedule).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let id = created.body["id"].as_str().expect("id").to_owned();
    let created_at = time(&created.body["created_at"]);

    wait_until("three fires", Duration::from_secs(20), async || (fire_count(&pool, &id).await >= 3).then_some(()))
        .await;
    replicas[0].kill().await;
    let after_kill = fire_count(&pool, &id).await;
    wait_until("four fires after the kill", Duration::from_secs(20), async || {
        (fire_count(&pool, &id).await >= after_kill + 4).then_some(())
    })
    .await;
    // A replica restarting joins in.
    replicas.push(spawn());
    replicas[3].wait_ready(Duration::from_secs(60)).await;
    let after_restart = fire_count(&pool, &id).await;
    wait_until("four fires after the restart", Duration::from_secs(20), async || {
        (fire_count(&pool, &id).await >= after_restart + 4).then_some(())
    })
    .await;
    let client = Client::new(&replicas[2].url, acme.key());
    let paused = client.post(&format!("/api/v1/schedules/{id}/pause"), json!({})).await;
    assert_eq!(paused.status, StatusCode::OK, "{paused:?}");
    let paused_at = time(&paused.body["updated_at"]);

    let fires: Vec<(DateTime<Utc>, Option<uuid::Uuid>)> =
        sqlx::query_as("select fire_at, job_id from schedule_fires where schedule_id = $1::uuid order by fire_at")
            .bind(&id)
            .fetch_all(&pool)
            .await
            .expect("fires");
    // Every second from the first after creation to the last fired, each once: no gap.
    let first =
        created_at.duration_trunc(chrono::Duration::seconds(1)).expect("a value") + chrono::Duration::seconds(1);
    let expected: Vec<DateTime<Utc>> =
        (0..fires.len() as i64).map(|second| first + chrono::Duration::seconds(second)).collect();
    let fired_at: Vec<DateTime<Utc>> = fires.iter().map(|(at, _)| *at).collect();
    assert_eq!(fired_at, expected, "fire times with a gap or out of place");
    // Up to the pause (less the last tick's lateness) nothing is missing.
    assert!(*fired_at.last().expect("a value") >= paused_at - chrono::Duration::seconds(2), "fires stopped early");
    // One job per fire, every one a distinct job, and no job of the tenant without a fire.
    let mut job_ids: Vec<uuid::Uuid> = fires.iter().map(|(_, job)| job.expect("a job for every fire")).collect();
    job_ids.sort();
    job_ids.dedup();
    assert_eq!(job_ids.len(), fires.len(), "two fires share a job");
    let jobs: i64 = sqlx::query_scalar("select count(*) from jobs").fetch_one(&pool).await.expect("count");
    assert_eq!(jobs, fires.len() as i64, "a job without its fire, or a fire twice");
    let submitted_events: i64 = sqlx::query_scalar("select count(*) from job_events where kind = 'job.submitted'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(submitted_events, jobs, "every job submitted once, with its event");
}
