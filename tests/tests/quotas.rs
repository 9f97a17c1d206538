//! Tenant quotas end to end, with real replicas and real workers: a flooding tenant never
//! holds more than its CPU quota across three replicas while another tenant's jobs run;
//! deferred jobs run as their tenant's own jobs free quota; rejected submissions write
//! nothing; the dry run agrees with what a real submission then does; a burst session
//! reaches 1.5 times the quota, stops new assignments above it when it expires and kills
//! nothing; and a tenant cannot see or change another tenant's quotas or bursts.

use std::time::{Duration, Instant};

use hodei_e2e::{free_port, start_worker, wait_until, Client, ConfigFile, Reply, Server, TestDatabase};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

async fn put(client: &Client, path: &str, body: Value) -> Reply {
    client.send(Method::PUT, path, Some(body.to_string().into_bytes()), &[]).await
}

async fn tenant_id(pool: &sqlx::PgPool, name: &str) -> Uuid {
    sqlx::query_scalar("select id from tenants where name = $1").bind(name).fetch_one(pool).await.expect("tenant")
}

/// What the tenant's attempts hold now, summed from the jobs themselves (not from the
/// tenant column the scheduler reads), and how many are held.
async fn held(pool: &sqlx::PgPool, tenant: Uuid) -> (i64, i64) {
    sqlx::query_as(
        "select coalesce(sum(j.cpu_millis), 0)::int8, count(*) from worker_jobs h join jobs j on j.id = h.job_id
         where j.tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .expect("held")
}

async fn count(pool: &sqlx::PgPool, sql: &str, tenant: Uuid) -> i64 {
    sqlx::query_scalar(sql).bind(tenant).fetch_one(pool).await.expect("count")
}

fn jobs(count: usize, argv: &[&str], cpu_millis: u32) -> Value {
    let jobs: Vec<Value> = (0..count)
        .map(|_| json!({"command": {"argv": argv}, "resources": {"cpu_millis": cpu_millis, "memory_mib": 64}}))
        .collect();
    json!({ "jobs": jobs })
}

#[tokio::test]
async fn a_flooding_tenant_never_passes_its_cpu_quota_across_three_replicas() {
    let database = TestDatabase::empty().await;
    let mut replicas = vec![Server::spawn(&database.url), Server::spawn(&database.url), Server::spawn(&database.url)];
    for replica in &replicas {
        replica.wait_ready(Duration::from_secs(60)).await;
    }
    let admin = replicas[0].admin();
    let flood = replicas[0].tenant("flood").await;
    let steady = replicas[0].tenant("steady").await;
    let reply = put(&admin, "/api/v1/tenants/flood/quotas", json!({"cpu_millis": 2000})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body["limits"]["cpu_millis"], 2000);
    let mut workers = Vec::new();
    for (index, replica) in replicas.iter().enumerate() {
        workers.push(start_worker(
            &replica.url,
            &format!("w{index}"),
            &["--cpu-millis", "4000", "--memory-mib", "8192", "--slots", "8"],
        ));
    }
    let pool = database.pool().await;
    let flood_id = tenant_id(&pool, "flood").await;
    let steady_id = tenant_id(&pool, "steady").await;

    // The flood arrives through every replica; the other tenant's work comes after it.
    for replica in &replicas {
        let client = Client::new(&replica.url, flood.key());
        let reply = client.post("/api/v1/jobs/batch", jobs(40, &["sleep", "0.2"], 500)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    }
    let reply = steady.post("/api/v1/jobs/batch", jobs(30, &["sleep", "0.2"], 500)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");

    let finished = "select count(*) from jobs where tenant_id = $1 and state = 'succeeded'";
    let mut peak = 0;
    let mut steady_done_while_flood_waited = false;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (cpu, _) = held(&pool, flood_id).await;
        assert!(cpu <= 2000, "the flooding tenant holds {cpu} millicores, past its 2000 quota");
        peak = peak.max(cpu);
        let steady_done = count(&pool, finished, steady_id).await;
        let flood_done = count(&pool, finished, flood_id).await;
        if steady_done == 30 && flood_done < 120 {
            steady_done_while_flood_waited = true;
        }
        if flood_done == 120 && steady_done == 30 {
            break;
        }
        assert!(Instant::now() < deadline, "only {flood_done} flood and {steady_done} steady jobs finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(peak, 2000, "the flood used its whole quota");
    assert!(steady_done_while_flood_waited, "the other tenant's jobs waited behind the flood");
    drop(workers);
    for replica in &mut replicas {
        replica.stop().await;
    }
}

#[tokio::test]
async fn deferred_jobs_run_when_quota_frees_and_the_dry_run_agrees_with_submissions() {
    let database = TestDatabase::empty().await;
    let server = Server::start(&database.url).await;
    let admin = server.admin();
    let acme = server.tenant("acme").await;
    let _worker = start_worker(&server.url, "w", &["--cpu-millis", "4000", "--memory-mib", "8192", "--slots", "4"]);
    let reply = put(
        &admin,
        "/api/v1/tenants/acme/quotas",
        json!({"cpu_millis": 1000, "max_concurrent_jobs": 1, "max_queued_jobs": 2}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let pool = database.pool().await;
    let acme_id = tenant_id(&pool, "acme").await;
    let one = |argv: &[&str]| json!({"command": {"argv": argv}, "resources": {"cpu_millis": 100, "memory_mib": 64}});
    let dry_run = async |job: Value| {
        let reply = acme.post("/api/v1/quotas/enforce", json!({"jobs": [job]})).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply.body
    };

    // Nothing runs: accepted, and the dry run said so.
    let verdict = dry_run(one(&["sleep", "2"])).await;
    assert_eq!((verdict["decision"].as_str(), verdict["status"].as_u64()), (Some("accepted"), Some(201)));
    let first = acme.post("/api/v1/jobs", one(&["sleep", "2"])).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert!(first.body.get("deferred").is_none(), "{first:?}");
    hodei_e2e::wait_for_state(&acme, first.body["id"].as_str().expect("id"), &["running"]).await;

    // One job running is the whole quota: the next is accepted and deferred.
    let verdict = dry_run(one(&["true"])).await;
    assert_eq!(verdict["decision"], "deferred", "{verdict}");
    assert_eq!((verdict["limit"].as_str(), verdict["maximum"].as_f64()), (Some("max_concurrent_jobs"), Some(1.0)));
    let second = acme.post("/api/v1/jobs", one(&["true"])).await;
    assert_eq!(second.status, StatusCode::CREATED, "{second:?}");
    assert_eq!(second.body["deferred"]["reason"], "tenant_at_quota", "{second:?}");
    assert_eq!(second.body["deferred"]["limit"], "max_concurrent_jobs");
    assert_eq!(second.header("retry-after"), Some("10"));
    let second_id = second.body["id"].as_str().expect("id").to_owned();
    let job = acme.get(&format!("/api/v1/jobs/{second_id}")).await;
    assert_eq!(job.body["pending"]["code"], "tenant_at_quota", "{job:?}");

    // The queued-jobs limit refuses whole: the dry run says 429, and so does the submission.
    let third = acme.post("/api/v1/jobs", one(&["true"])).await;
    assert_eq!(third.status, StatusCode::CREATED, "{third:?}");
    assert_eq!(third.body["deferred"]["limit"], "max_concurrent_jobs", "{third:?}");
    let verdict = dry_run(one(&["true"])).await;
    assert_eq!((verdict["decision"].as_str(), verdict["status"].as_u64()), (Some("rejected"), Some(429)));
    assert_eq!(verdict["limit"], "max_queued_jobs");
    let jobs_before = count(&pool, "select count(*) from jobs where tenant_id = $1", acme_id).await;
    let refused = acme.post("/api/v1/jobs", one(&["true"])).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "tenant_quota_exceeded");
    assert_eq!(refused.body["errors"][0]["field"], "quota.max_queued_jobs", "{refused:?}");
    assert!(refused.header("retry-after").is_some());
    let refused_batch = acme.post("/api/v1/jobs/batch", jobs(2, &["true"], 100)).await;
    refused_batch.assert_problem(StatusCode::TOO_MANY_REQUESTS, "tenant_quota_exceeded");
    // A job larger than the quota could never run: 422, also in the dry run.
    let huge = json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 1500}});
    assert_eq!(dry_run(huge.clone()).await["status"], 422);
    acme.post("/api/v1/jobs", huge).await.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "exceeds_tenant_quota");
    assert_eq!(count(&pool, "select count(*) from jobs where tenant_id = $1", acme_id).await, jobs_before);

    // The deferred jobs run, one at a time, once the first has finished.
    for id in [first.body["id"].as_str().expect("id"), &second_id, third.body["id"].as_str().expect("id")] {
        let job = hodei_e2e::wait_for_state(&acme, id, &["succeeded"]).await;
        assert_eq!(job["state"], "succeeded");
    }
    let quotas = acme.get("/api/v1/tenants/acme/quotas").await;
    assert_eq!(quotas.status, StatusCode::OK, "{quotas:?}");
    let admissions = quotas.body["admissions_last_24h"].as_array().expect("admissions").clone();
    let jobs_with = |decision: &str, reason: Option<&str>| {
        admissions
            .iter()
            .filter(|a| a["decision"] == decision && a["reason"].as_str() == reason)
            .map(|a| a["jobs"].as_i64().unwrap_or_default())
            .sum::<i64>()
    };
    assert_eq!(jobs_with("deferred", Some("tenant_at_quota")), 2, "{admissions:?}");
    assert_eq!(jobs_with("rejected", Some("max_queued_jobs")), 3, "{admissions:?}");
    assert_eq!(jobs_with("rejected", Some("cpu_millis")), 1, "{admissions:?}");
    let metrics = admin.get("/metrics").await.body.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains(
            "hodei_tenant_quota_admissions_total{tenant=\"acme\",decision=\"deferred\",reason=\"max_concurrent_jobs\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_burst_reaches_one_and_a_half_times_the_quota_and_ends_without_killing_anything() {
    let database = TestDatabase::empty().await;
    let config =
        ConfigFile::new("multi_tenancy:\n  burst_capacity: {max_overage_percentage: 150, cooldown_minutes: 60}\n");
    let server = Server::spawn_configured(&database.url, free_port(), Some(config.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let acme = server.tenant("acme").await;
    let _worker = start_worker(&server.url, "w", &["--cpu-millis", "8000", "--memory-mib", "8192", "--slots", "8"]);
    let pool = database.pool().await;
    let acme_id = tenant_id(&pool, "acme").await;

    // A burst needs a quota to go above.
    let reply = admin.post("/api/v1/tenants/acme/burst", json!({})).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "no_quota");
    let reply = put(&admin, "/api/v1/tenants/acme/quotas", json!({"max_concurrent_jobs": 2})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let reply = acme.post("/api/v1/jobs/batch", jobs(6, &["sleep", "5"], 100)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let ids: Vec<String> =
        reply.body["ids"].as_array().expect("ids").iter().map(|id| id.as_str().expect("id").to_owned()).collect();
    wait_until("two jobs at the quota", Duration::from_secs(30), async || {
        (held(&pool, acme_id).await.1 == 2).then_some(())
    })
    .await;

    // Bad requests change nothing; a tenant key may not start a session here.
    let reply = admin.post("/api/v1/tenants/acme/burst", json!({"max_overage_percentage": 200})).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(reply.body["errors"][0]["field"], "max_overage_percentage");
    acme.post("/api/v1/tenants/acme/burst", json!({})).await.assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let reply = admin.post("/api/v1/tenants/acme/burst", json!({"duration_seconds": 4})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    assert_eq!(reply.body["max_overage_percentage"], 150);
    let again = admin.post("/api/v1/tenants/acme/burst", json!({"duration_seconds": 4})).await;
    again.assert_problem(StatusCode::CONFLICT, "burst_active");

    // Idle capacity: the burst takes the tenant to 3 jobs (1.5 × 2), never more.
    let started = Instant::now();
    let mut reached = false;
    while started.elapsed() < Duration::from_secs(3) {
        let (_, jobs) = held(&pool, acme_id).await;
        assert!(jobs <= 3, "{jobs} jobs held in a burst of 150% of 2");
        reached |= jobs == 3;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reached, "the burst never reached 3 jobs");
    let status = acme.get("/api/v1/tenants/acme/burst").await;
    assert_eq!(status.status, StatusCode::OK, "{status:?}");
    assert_eq!(status.body["active"]["active"], true, "{status:?}");

    // Once it ends, nothing new is assigned above the quota: whenever 3 are held, all
    // three were assigned during the session. The burst's job is not stopped.
    let ended_at: chrono::DateTime<chrono::Utc> =
        wait_until("the session to end", Duration::from_secs(10), async || {
            sqlx::query_scalar("select ended_at from burst_sessions where tenant_id = $1 and ended_at <= now()")
                .bind(acme_id)
                .fetch_optional(&pool)
                .await
                .expect("session")
        })
        .await;
    let terminal =
        "select count(*) from jobs where tenant_id = $1 and state in ('succeeded', 'dead_lettered', 'cancelled')";
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&pool, terminal, acme_id).await < 6 {
        let (total, after): (i64, i64) = sqlx::query_as(
            "select count(*), count(*) filter (where assigned_at >= $2) from worker_jobs where tenant_id = $1",
        )
        .bind(acme_id)
        .bind(ended_at)
        .fetch_one(&pool)
        .await
        .expect("held");
        assert!(total <= 2 || after == 0, "{total} held after the burst ended, {after} of them assigned since");
        assert!(Instant::now() < deadline, "the jobs did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        let job = acme.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!((job.body["state"].as_str(), job.body["attempt"].as_i64()), (Some("succeeded"), Some(1)), "{job:?}");
    }
    let peak: f64 = sqlx::query_scalar("select peak_percentage from burst_sessions where tenant_id = $1")
        .bind(acme_id)
        .fetch_one(&pool)
        .await
        .expect("peak");
    assert_eq!(peak, 150.0);
    // A cool-down follows.
    let reply = admin.post("/api/v1/tenants/acme/burst", json!({"duration_seconds": 4})).await;
    reply.assert_problem(StatusCode::CONFLICT, "burst_cooldown");
    assert!(reply.header("retry-after").is_some());
}

#[tokio::test]
async fn tenants_cannot_see_or_change_each_others_quotas_and_bad_limits_change_nothing() {
    let database = TestDatabase::empty().await;
    let server = Server::start(&database.url).await;
    let admin = server.admin();
    let acme = server.tenant("acme").await;
    let _globex = server.tenant("globex").await;
    let reply =
        put(&admin, "/api/v1/tenants/globex/quotas", json!({"cpu_millis": 4000, "monthly_budget": 100.0})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");

    for (method, path) in [
        (Method::GET, "/api/v1/tenants/globex/quotas"),
        (Method::PUT, "/api/v1/tenants/globex/quotas"),
        (Method::GET, "/api/v1/tenants/globex/burst"),
        (Method::POST, "/api/v1/tenants/globex/burst"),
        (Method::DELETE, "/api/v1/tenants/globex/burst"),
    ] {
        let reply = acme.send(method.clone(), path, Some(b"{}".to_vec()), &[]).await;
        reply.assert_problem(StatusCode::NOT_FOUND, "not_found");
    }
    let reply = acme
        .post("/api/v1/quotas/enforce", json!({"tenant": "globex", "jobs": [{"command": {"argv": ["true"]}}]}))
        .await;
    reply.assert_problem(StatusCode::NOT_FOUND, "not_found");
    // Its own quotas it may read, not change.
    let own = acme.get("/api/v1/tenants/acme/quotas").await;
    assert_eq!(own.status, StatusCode::OK, "{own:?}");
    put(&acme, "/api/v1/tenants/acme/quotas", json!({"cpu_millis": 1}))
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");

    for (body, field) in [
        (json!({"cpu_millis": -1}), "cpu_millis"),
        (json!({"max_queued_jobs": 10_000_000_000_i64}), "max_queued_jobs"),
        (json!({"monthly_budget": -5.0}), "monthly_budget"),
    ] {
        let reply = put(&admin, "/api/v1/tenants/globex/quotas", body).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(reply.body["errors"][0]["field"], field, "{reply:?}");
    }
    let unknown = put(&admin, "/api/v1/tenants/globex/quotas", json!({"cpus": 1})).await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY, "{unknown:?}");
    let after = admin.get("/api/v1/tenants/globex/quotas").await;
    assert_eq!(
        (after.body["own"]["cpu_millis"].as_i64(), after.body["own"]["monthly_budget"].as_f64()),
        (Some(4000), Some(100.0))
    );
    assert_eq!(after.body["budget_enforced"], true);
    assert_eq!(
        admin.get("/api/v1/tenants/nobody/quotas").await.status,
        StatusCode::NOT_FOUND,
        "an unknown tenant is not found"
    );
}

#[tokio::test]
async fn configured_defaults_apply_to_tenants_without_their_own() {
    let database = TestDatabase::empty().await;
    let server = Server::spawn_configured(
        &database.url,
        free_port(),
        None,
        &[("HODEI_MULTI_TENANCY_ENABLED", "true"), ("HODEI_DEFAULT_TENANT_QUOTA_MAX_QUEUED_JOBS", "1")],
    );
    server.wait_ready(Duration::from_secs(60)).await;
    let acme = server.tenant("acme").await;
    let quotas = acme.get("/api/v1/tenants/acme/quotas").await;
    assert_eq!(
        (quotas.body["own"]["max_queued_jobs"].is_null(), quotas.body["limits"]["max_queued_jobs"].as_i64()),
        (true, Some(1))
    );
    // No worker: the first job waits, the second is over the default.
    assert_eq!(acme.post("/api/v1/jobs", json!({"command": {"argv": ["true"]}})).await.status, StatusCode::CREATED);
    acme.post("/api/v1/jobs", json!({"command": {"argv": ["true"]}}))
        .await
        .assert_problem(StatusCode::TOO_MANY_REQUESTS, "tenant_quota_exceeded");
}
