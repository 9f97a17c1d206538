//! Dynamic pools of real local workers under the real `hodei serve`: a burst of jobs scales
//! the pool out, the jobs run on the new workers, the pool scales back in once they are
//! idle, no busy worker is ever taken, and the scaling history explains every step. Bad
//! scaling specs are refused precisely; the lifecycle pauses, drains and resumes a pool.

use std::time::{Duration, Instant};

use hodei_e2e::{free_port, wait_until, Client, ConfigFile, Server, TestDatabase};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn members(admin: &Client, pool: &str) -> Vec<Value> {
    admin.get(&format!("/api/v1/pools/{pool}/workers")).await.body["workers"].as_array().cloned().unwrap_or_default()
}

async fn history(admin: &Client, pool: &str) -> Vec<Value> {
    let reply = admin.get(&format!("/api/v1/pools/{pool}/scaling/history?limit=500")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body["entries"].as_array().cloned().expect("entries")
}

const BURST_POOL: &str = "pools:
  - id: burst
    kind: dynamic
    min_size: 0
    max_size: 3
    template: {slots: 1, cpu_millis: 1000, memory_mib: 512}
    scaling:
      idle_seconds: 2
      cooldown: {scale_out_seconds: 0, scale_in_seconds: 1}
";

#[tokio::test]
async fn a_burst_scales_the_pool_out_and_idle_workers_are_scaled_back_in() {
    let database = TestDatabase::empty().await;
    let config = ConfigFile::new(BURST_POOL);
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(config.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let acme = server.tenant("acme").await;
    // At rest the pool has no worker.
    let pool = admin.get("/api/v1/pools/burst").await;
    assert_eq!((pool.body["kind"].as_str(), pool.body["max_size"].as_u64()), (Some("dynamic"), Some(3)), "{pool:?}");
    assert!(members(&admin, "burst").await.is_empty());

    let burst_at = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(acme.submit(&["sleep", "3"]).await["id"].as_str().expect("id").to_owned());
    }
    // Three jobs, one slot each: three workers.
    let mut first_started = None;
    let peak = wait_until("three ready workers running the burst", Duration::from_secs(60), async || {
        for id in &ids {
            let job = acme.get(&format!("/api/v1/jobs/{id}")).await.body;
            if job["state"] == "running" && first_started.is_none() {
                first_started = Some(burst_at.elapsed());
            }
        }
        let members = members(&admin, "burst").await;
        let ready = members.iter().filter(|m| m["status"] == "ready" && m["worker_id"].is_string()).count();
        (ready == 3).then_some(members)
    })
    .await;
    eprintln!("scaled out to 3 in {:?}; first job started after {first_started:?}", burst_at.elapsed());

    // Every job runs once, to the end: no worker was taken from under a job.
    let mut ran_on = std::collections::BTreeSet::new();
    for id in &ids {
        let job = wait_until(&format!("job {id} to finish"), Duration::from_secs(60), async || {
            let job = acme.get(&format!("/api/v1/jobs/{id}")).await.body;
            (job["state"] == "succeeded" || job["state"] == "failed" || job["state"] == "dead_lettered").then_some(job)
        })
        .await;
        assert_eq!((job["state"].as_str(), job["attempt"].as_i64()), (Some("succeeded"), Some(1)), "{job}");
        ran_on.insert(job["worker_id"].to_string());
    }
    let peak_workers: std::collections::BTreeSet<String> = peak.iter().map(|m| m["worker_id"].to_string()).collect();
    assert!(ran_on.is_subset(&peak_workers), "the jobs ran on the pool's new workers: {ran_on:?} vs {peak_workers:?}");

    // Idle for 2 s, the workers are scaled in, down to the minimum of 0.
    wait_until("the pool to scale back in to 0", Duration::from_secs(60), async || {
        members(&admin, "burst").await.is_empty().then_some(())
    })
    .await;

    let entries = history(&admin, "burst").await;
    let actions: Vec<&str> =
        entries.iter().rev().filter_map(|e| e["action"].as_str()).filter(|a| *a != "hold").collect();
    assert_eq!(actions.first(), Some(&"scale_out"), "{entries:#?}");
    assert_eq!(actions.last(), Some(&"scale_in"), "{entries:#?}");
    let out = entries.iter().find(|e| e["action"] == "scale_out").expect("a scale-out");
    assert!(out["desired_size"].as_i64() >= Some(1), "{out}");
    assert!(out["reason"].as_str().expect("reason").contains("queued"), "{out}");
    assert!(out["inputs"]["demand"]["queued"].as_u64() >= Some(1), "{out}");
    let scaled_in: i64 = entries
        .iter()
        .filter(|e| e["action"] == "scale_in")
        .map(|e| e["current_size"].as_i64().unwrap_or(0) - e["desired_size"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(scaled_in, 3, "three workers scaled in: {entries:#?}");
    for entry in entries.iter().filter(|e| e["action"] == "scale_in") {
        // Scale-in only ever counted idle workers as victims.
        let capacity = &entry["inputs"]["capacity"];
        let removed = entry["current_size"].as_i64().unwrap_or(0) - entry["desired_size"].as_i64().unwrap_or(0);
        assert!(removed <= capacity["idle"].as_i64().unwrap_or(0), "{entry}");
    }
    // And SQL reads the same history.
    let sql = database.pool().await;
    let rows: i64 = sqlx::query_scalar("select count(*) from scaling_history where pool_id = 'burst'")
        .fetch_one(&sql)
        .await
        .expect("count");
    assert_eq!(rows as usize, entries.len());
    server.stop().await;
}

#[tokio::test]
async fn scaling_specs_are_checked_and_the_lifecycle_pauses_drains_and_resumes() {
    let database = TestDatabase::empty().await;
    let mut server = Server::spawn_configured(&database.url, free_port(), None, &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();

    let bad = |patch: Value| {
        let mut spec = json!({"id": "d", "kind": "dynamic", "min_size": 0, "max_size": 2,
            "template": {"slots": 1, "cpu_millis": 100, "memory_mib": 64}});
        if let (Some(spec), Some(patch)) = (spec.as_object_mut(), patch.as_object()) {
            spec.extend(patch.clone());
        }
        spec
    };
    for (patch, field) in [
        (json!({"min_size": 5}), "min_size: must not be more than max_size (2), got 5"),
        (
            json!({"scaling": {"schedules": [{"name": "s", "cron": "noon", "duration_minutes": 5}]}}),
            "scaling.schedules[0].cron",
        ),
        (
            json!({"scaling": {"schedules": [{"name": "s", "cron": "0 8 * * *", "time_zone": "Mars/Base", "duration_minutes": 5}]}}),
            "scaling.schedules[0].time_zone: unknown time zone",
        ),
        (json!({"size": 2}), "size: a dynamic pool has min_size and max_size, not size"),
    ] {
        let reply = admin.post("/api/v1/pools", bad(patch.clone())).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert!(reply.body["detail"].as_str().unwrap_or_default().contains(field), "{patch}: {reply:?}");
    }
    assert_eq!(admin.get("/api/v1/pools/d").await.status, StatusCode::NOT_FOUND, "nothing was created");

    let created = admin.post("/api/v1/pools", bad(json!({"min_size": 0}))).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.body["scaling_status"]["lifecycle"], "scaling");

    // Scaling parts, one at a time.
    let policies = json!({"policies": [{"name": "backlog", "metric": "backlog_per_slot", "target": 2.0}],
        "schedules": [{"name": "office", "cron": "0 8 * * Mon-Fri", "time_zone": "Europe/Madrid", "duration_minutes": 600, "min_size": 1}]});
    let put = admin
        .send(
            reqwest::Method::PUT,
            "/api/v1/pools/d/scaling/policies",
            Some(policies.to_string().into_bytes()),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");
    assert_eq!(admin.get("/api/v1/pools/d/scaling/policies").await.body, policies);
    assert_eq!(admin.get("/api/v1/pools/d").await.body["scaling"]["policies"][0]["name"], "backlog");
    let bad_trigger =
        json!({"triggers": [{"name": "deep", "metric": "queue_depth", "steps": [{"at_least": 10, "add": 0}]}]});
    let put = admin
        .send(
            reqwest::Method::PUT,
            "/api/v1/pools/d/scaling/triggers",
            Some(bad_trigger.to_string().into_bytes()),
            &[("content-type", "application/json")],
        )
        .await;
    put.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(put.body["detail"].as_str().unwrap_or_default().contains("triggers[0].steps[0].add"), "{put:?}");
    assert_eq!(admin.get("/api/v1/pools/d/scaling/triggers").await.body, json!({"triggers": []}), "nothing changed");
    let cooldown = json!({"scale_out_seconds": 5, "scale_in_seconds": 60, "scale_in_step": 1});
    let put = admin
        .send(
            reqwest::Method::PUT,
            "/api/v1/pools/d/scaling/cooldown",
            Some(cooldown.to_string().into_bytes()),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");
    assert_eq!(admin.get("/api/v1/pools/d/scaling/cooldown").await.body, cooldown);

    // A static pool does not scale.
    let fixed = admin.post("/api/v1/pools", json!({"id": "fixed", "size": 1})).await;
    assert_eq!(fixed.status, StatusCode::CREATED, "{fixed:?}");
    let put = admin
        .send(
            reqwest::Method::PUT,
            "/api/v1/pools/fixed/scaling/cooldown",
            Some(cooldown.to_string().into_bytes()),
            &[("content-type", "application/json")],
        )
        .await;
    put.assert_problem(StatusCode::CONFLICT, "not_dynamic");
    admin
        .post("/api/v1/pools/fixed/lifecycle", json!({"action": "pause"}))
        .await
        .assert_problem(StatusCode::CONFLICT, "not_dynamic");

    // Lifecycle: pause, drain, resume.
    let paused = admin.post("/api/v1/pools/d/lifecycle", json!({"action": "pause"})).await;
    assert_eq!(
        (paused.status, paused.body["scaling_status"]["lifecycle"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{paused:?}"
    );
    let drained = admin.post("/api/v1/pools/d/lifecycle", json!({"action": "drain"})).await;
    assert_eq!(drained.body["scaling_status"]["lifecycle"], "drained");
    let resumed = admin.post("/api/v1/pools/d/lifecycle", json!({"action": "resume"})).await;
    assert_eq!(resumed.body["scaling_status"]["lifecycle"], "scaling");
    admin
        .post("/api/v1/pools/d/lifecycle", json!({"action": "explode"}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    admin
        .post("/api/v1/pools/nope/lifecycle", json!({"action": "pause"}))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not_found");
    let page = admin.get("/api/v1/pools/d/scaling/history?limit=0").await;
    page.assert_problem(StatusCode::BAD_REQUEST, "invalid_query");
    server.stop().await;
}

/// `hodei simulate` on the built-in bursty day: the same decision the leader runs, three
/// policies compared in one run.
#[test]
fn the_simulator_compares_policies_on_a_bursty_day() {
    let simulate = |pool: &str| -> Value {
        let file = ConfigFile::new(pool);
        let output = std::process::Command::new(hodei_e2e::binary("hodei"))
            .args(["simulate", "--trace", "builtin:bursty-day", "--launch-seconds", "30", "--pool"])
            .arg(file.path())
            .output()
            .expect("run hodei simulate");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("a JSON report")
    };
    let fixed = simulate("id: fixed\nsize: 40\ntemplate: {slots: 2}\n");
    let naive = simulate(
        "id: naive\nkind: dynamic\nmin_size: 0\nmax_size: 40\ntemplate: {slots: 2}\nscaling: {idle_seconds: 0, cooldown: {scale_in_seconds: 0}}\n",
    );
    let tuned = simulate(
        "id: tuned\nkind: dynamic\nmin_size: 1\nmax_size: 40\ntemplate: {slots: 2}\nscaling: {idle_seconds: 120, warm: 1, cooldown: {scale_out_seconds: 10, scale_in_seconds: 60}}\n",
    );
    eprintln!("fixed {fixed}\nnaive {naive}\ntuned {tuned}");
    for report in [&fixed, &naive, &tuned] {
        assert_eq!(
            (report["busy_interrupted"].as_u64(), report["unfinished"].as_u64()),
            (Some(0), Some(0)),
            "{report}"
        );
    }
    let cost = |report: &Value| report["cost"].as_f64().expect("cost");
    let p95 = |report: &Value| report["wait_p95_seconds"].as_f64().expect("p95");
    assert!(cost(&tuned) < cost(&fixed) / 2.0 && cost(&naive) < cost(&fixed) / 2.0, "{tuned} {naive} vs {fixed}");
    // A pool sized for the peak never waits for a launch; the scaled pools do, in bursts.
    assert!(p95(&fixed) <= p95(&tuned) && p95(&fixed) <= p95(&naive), "{fixed} vs {tuned} {naive}");
    // Scaling in the moment a worker is idle relaunches more often than waiting 120 s.
    assert!(naive["launched"].as_u64() > tuned["launched"].as_u64(), "{naive} vs {tuned}");

    let bad = ConfigFile::new("id: bad\nkind: dynamic\nmin_size: 5\nmax_size: 2\n");
    let output = std::process::Command::new(hodei_e2e::binary("hodei"))
        .args(["simulate", "--trace", "builtin:bursty-day", "--pool"])
        .arg(bad.path())
        .output()
        .expect("run hodei simulate");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("min_size: must not be more than max_size (2), got 5"));
}

/// A metadata service per instance (`/{instance}/latest/...`) that answers 404 (no notice)
/// until `notice` names the instance, then 200.
async fn serve_interruption_notices(notice: std::sync::Arc<std::sync::Mutex<String>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let notice = notice.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let read = stream.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..read]);
                let answer = if request.starts_with("PUT ") {
                    "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\ntoken".to_owned()
                } else if notice.lock().is_ok_and(|n| !n.is_empty() && request.contains(n.as_str())) {
                    let body = r#"{"action": "terminate", "time": "2026-12-02T10:02:00Z"}"#;
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{address}/{{instance_id}}/latest/meta-data/spot/instance-action")
}

/// A spot interruption notice: the worker drains at once, the pool starts a replacement
/// while the old worker still drains, and the job it could not finish runs again there.
#[tokio::test]
async fn an_interruption_notice_drains_the_worker_and_the_pool_replaces_it_at_once() {
    let notice = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let url = serve_interruption_notices(notice.clone()).await;
    let database = TestDatabase::empty().await;
    let config = ConfigFile::new(
        "pools:\n  - id: spot\n    size: 1\n    template: {slots: 1, cpu_millis: 1000, memory_mib: 512}\n",
    );
    let environment =
        [("HODEI_LOCAL_WORKER_INTERRUPTION_URL", url.as_str()), ("HODEI_LOCAL_WORKER_DRAIN_SECONDS", "2")];
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(config.path()), &environment);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let acme = server.tenant("acme").await;
    let first = wait_until("the pool's worker", Duration::from_secs(60), async || {
        let members = members(&admin, "spot").await;
        members.first().filter(|m| m["status"] == "ready" && m["worker_id"].is_string()).cloned()
    })
    .await;
    let id = acme.submit(&["sleep", "4"]).await["id"].as_str().expect("id").to_owned();
    wait_until("the job to run", Duration::from_secs(30), async || {
        (acme.get(&format!("/api/v1/jobs/{id}")).await.body["state"] == "running").then_some(())
    })
    .await;

    *notice.lock().expect("lock") = first["id"].as_str().expect("member id").to_owned();
    // A second member starts while the first one still drains (its job has 2 s).
    wait_until("a replacement while the interrupted worker drains", Duration::from_secs(30), async || {
        let members = members(&admin, "spot").await;
        let old_drains = members.iter().any(|m| m["id"] == first["id"] && m["worker_state"] == "draining");
        (old_drains && members.len() == 2).then_some(())
    })
    .await;
    let worker = admin.get(&format!("/api/v1/workers/{}", first["worker_id"].as_str().expect("id"))).await;
    assert_eq!(worker.body["state"], "draining", "{worker:?}");

    // The job was interrupted by the drain's deadline and runs again on the replacement.
    let job = wait_until("the job to succeed", Duration::from_secs(60), async || {
        let job = acme.get(&format!("/api/v1/jobs/{id}")).await.body;
        (job["state"] == "succeeded").then_some(job)
    })
    .await;
    assert_eq!(job["attempt"], 2, "{job}");
    assert_ne!(job["worker_id"], first["worker_id"], "{job}");
    wait_until("the interrupted member to go", Duration::from_secs(30), async || {
        let members = members(&admin, "spot").await;
        (members.len() == 1 && members[0]["id"] != first["id"]).then_some(())
    })
    .await;
    assert!(server.log_text().contains("interruption notice"), "{}", server.log_text());
    server.stop().await;
}

/// A schedule on the real clock: every even minute opens a one-minute window with a
/// minimum of two workers; the pool grows at its start and shrinks back at its end.
#[tokio::test]
async fn a_schedule_window_raises_the_minimum_at_its_start_and_releases_it_at_its_end() {
    let database = TestDatabase::empty().await;
    let config = ConfigFile::new(
        "pools:
  - id: office
    kind: dynamic
    min_size: 0
    max_size: 2
    template: {slots: 1, cpu_millis: 1000, memory_mib: 512}
    scaling:
      idle_seconds: 0
      cooldown: {scale_out_seconds: 0, scale_in_seconds: 0}
      schedules: [{name: even, cron: \"0 */2 * * * *\", duration_minutes: 1, min_size: 2}]
",
    );
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(config.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let ready = async |admin: &Client| {
        members(admin, "office").await.iter().filter(|m| m["status"] == "ready" && m["worker_id"].is_string()).count()
    };
    // Within two minutes a window opens: two workers, decided by the schedule.
    wait_until("the window to bring two workers", Duration::from_secs(150), async || {
        (ready(&admin).await == 2).then_some(())
    })
    .await;
    let opened = history(&admin, "office").await;
    let out = opened.iter().find(|e| e["action"] == "scale_out").expect("a scale-out");
    assert_eq!(out["decided_by"], "schedule even", "{out}");
    assert_eq!(out["min_size"], 2, "{out}");
    assert_eq!(out["inputs"]["schedules_active"], serde_json::json!(["even"]), "{out}");
    // A minute later it closes: back to none.
    wait_until("the window to close", Duration::from_secs(90), async || {
        members(&admin, "office").await.is_empty().then_some(())
    })
    .await;
    let closed = history(&admin, "office").await;
    let scale_in = closed.iter().find(|e| e["action"] == "scale_in").expect("a scale-in");
    assert_eq!(scale_in["min_size"], 0, "{scale_in}");
    assert!(scale_in["id"].as_i64() > out["id"].as_i64());
    server.stop().await;
}
