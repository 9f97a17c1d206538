//! Static pools of real local workers: the reconcile loop keeps them at size, replaces a
//! killed worker without losing its job, follows edits of the configuration file (and
//! refuses invalid ones), retries failed provisioning, and moves to another replica when
//! its leader dies.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hodei_api::provider::{
    BoxFuture, InstanceState, LocalProvider, LocalSettings, Provider, ProviderError, Providers, ProvisionRequest,
};
use hodei_api::reconcile::Reconciler;
use hodei_core::pool::{PoolSpec, ProviderLimits};
use hodei_e2e::{binary, free_port, wait_until, Client, ConfigFile, Server, TestDatabase, WORKER_REGISTRATION_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn pool_yaml(id: &str, size: u32) -> String {
    format!("pools:\n  - id: {id}\n    size: {size}\n    template: {{slots: 1, cpu_millis: 1000, memory_mib: 512}}\n")
}

/// The pool's members once exactly `ready` of them are ready with a registered worker and
/// nothing else is left.
async fn wait_for_ready(admin: &Client, pool: &str, ready: usize, limit: Duration) -> Vec<Value> {
    wait_until(&format!("pool {pool} to have exactly {ready} ready workers"), limit, async || {
        let members = admin.get(&format!("/api/v1/pools/{pool}/workers")).await;
        let members = members.body["workers"].as_array()?.clone();
        let all_ready = members.iter().all(|m| m["status"] == "ready" && m["worker_id"].is_string());
        (members.len() == ready && all_ready).then_some(members)
    })
    .await
}

async fn job(client: &Client, id: &str) -> Value {
    let reply = client.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

async fn wait_for_job(client: &Client, id: &str, states: &[&str], limit: Duration) -> Value {
    wait_until(&format!("job {id} to reach {states:?}"), limit, async || {
        let job = job(client, id).await;
        states.iter().any(|s| job["state"] == *s).then_some(job)
    })
    .await
}

/// Waits until `member` is no longer in the pool.
async fn wait_for_removal(admin: &Client, pool: &str, member: &Value) {
    wait_until(&format!("member {} to leave pool {pool}", member["id"]), Duration::from_secs(30), async || {
        let members = admin.get(&format!("/api/v1/pools/{pool}/workers")).await;
        let members = members.body["workers"].as_array()?.clone();
        members.iter().all(|m| m["id"] != member["id"]).then_some(())
    })
    .await
}

fn pid_of(member: &Value) -> String {
    member["instance"].as_str().and_then(|i| i.strip_prefix("pid:")).expect("a local instance").to_owned()
}

async fn kill(pid: &str) {
    let status = tokio::process::Command::new("kill").args(["-KILL", pid]).status().await.expect("kill");
    assert!(status.success());
}

#[tokio::test]
async fn a_killed_worker_is_replaced_and_its_job_completes_elsewhere() {
    let database = TestDatabase::empty().await;
    let config = ConfigFile::new(&pool_yaml("trio", 3));
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(config.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let acme = server.tenant("acme").await;
    let before = wait_for_ready(&admin, "trio", 3, Duration::from_secs(60)).await;

    let submitted = acme.submit(&["sh", "-c", "sleep 2; echo done"]).await;
    let id = submitted["id"].as_str().expect("id");
    let running = wait_for_job(&acme, id, &["running"], Duration::from_secs(30)).await;
    let victim = before.iter().find(|m| m["worker_id"] == running["worker_id"]).expect("the job's worker is a member");
    let killed_at = Instant::now();
    kill(&pid_of(victim)).await;

    wait_for_removal(&admin, "trio", victim).await;
    let after = wait_for_ready(&admin, "trio", 3, Duration::from_secs(30)).await;
    let replaced_in = killed_at.elapsed();
    let ids = |members: &[Value]| members.iter().map(|m| m["id"].to_string()).collect::<BTreeSet<_>>();
    assert!(!ids(&after).contains(&victim["id"].to_string()), "the dead member was replaced");
    assert_eq!(ids(&before).intersection(&ids(&after)).count(), 2, "the healthy members stayed");
    eprintln!("pool back to 3 ready workers {replaced_in:?} after the kill");
    // Four members became ready, each timed from its attempt's start to its registration.
    let scrape = wait_until("four times to ready in the metrics", Duration::from_secs(10), async || {
        let text = server.anonymous().get("/metrics").await.body.as_str().unwrap_or_default().to_owned();
        text.contains("hodei_pool_provision_to_ready_seconds_count{pool=\"trio\"} 4").then_some(text)
    })
    .await;
    let sum: f64 = scrape
        .lines()
        .find_map(|line| line.strip_prefix("hodei_pool_provision_to_ready_seconds_sum{pool=\"trio\"} "))
        .and_then(|value| value.trim().parse().ok())
        .expect("a sum");
    assert!(sum > 0.0 && sum < 4.0 * 60.0, "{sum}");

    let finished = wait_for_job(&acme, id, &["succeeded"], Duration::from_secs(60)).await;
    assert_ne!(finished["worker_id"], running["worker_id"], "completed on another worker");
    assert_eq!(finished["attempt"], 2, "{finished}");
    let victim_worker = admin.get(&format!("/api/v1/workers/{}", running["worker_id"].as_str().expect("id"))).await;
    assert_eq!(victim_worker.body["state"], "gone", "{victim_worker:?}");
    server.stop().await;
}

#[tokio::test]
async fn editing_the_file_resizes_the_pool_and_an_invalid_edit_changes_nothing() {
    let database = TestDatabase::empty().await;
    let config = ConfigFile::new(&pool_yaml("elastic", 3));
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(config.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let acme = server.tenant("acme").await;
    wait_for_ready(&admin, "elastic", 3, Duration::from_secs(60)).await;

    // Two workers busy with long jobs.
    let mut busy_jobs = Vec::new();
    for _ in 0..2 {
        busy_jobs.push(acme.submit(&["sleep", "120"]).await["id"].as_str().expect("id").to_owned());
    }
    let mut busy_workers = BTreeSet::new();
    for id in &busy_jobs {
        busy_workers
            .insert(wait_for_job(&acme, id, &["running"], Duration::from_secs(30)).await["worker_id"].to_string());
    }
    assert_eq!(busy_workers.len(), 2);

    config.write(&pool_yaml("elastic", 5));
    wait_for_ready(&admin, "elastic", 5, Duration::from_secs(60)).await;
    config.write(&pool_yaml("elastic", 3));
    let shrunk = wait_for_ready(&admin, "elastic", 3, Duration::from_secs(60)).await;
    let remaining: BTreeSet<String> = shrunk.iter().map(|m| m["worker_id"].to_string()).collect();
    assert!(busy_workers.is_subset(&remaining), "busy workers were kept: {busy_workers:?} vs {remaining:?}");
    for id in &busy_jobs {
        let job = job(&acme, id).await;
        assert_eq!((job["state"].as_str(), job["attempt"].as_i64()), (Some("running"), Some(1)), "{job}");
    }

    config.write("pools:\n  - id: elastic\n    size: 0\n");
    wait_until("the invalid edit to be rejected", Duration::from_secs(20), async || {
        server.log_text().contains("rejected the changed configuration").then_some(())
    })
    .await;
    assert!(server.log_text().contains("pools[0].size: must be at least 1"), "{}", server.log_text());
    let pool = admin.get("/api/v1/pools/elastic").await;
    assert_eq!((pool.body["size"].as_u64(), pool.body["state"].as_str()), (Some(3), Some("active")), "{pool:?}");
    assert_eq!(wait_for_ready(&admin, "elastic", 3, Duration::from_secs(5)).await.len(), 3);

    for id in &busy_jobs {
        assert_eq!(acme.post(&format!("/api/v1/jobs/{id}/cancel"), json!({})).await.status, StatusCode::OK);
    }
    server.stop().await;
}

#[tokio::test]
async fn pools_through_the_api_validate_resize_and_delete() {
    let database = TestDatabase::empty().await;
    let config = ConfigFile::new(&pool_yaml("from-file", 1));
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(config.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();

    let spec =
        json!({"id": "api", "size": 1, "strategy": "worst-fit", "template": {"slots": 2, "labels": {"zone": "a"}}});
    let created = admin.post("/api/v1/pools", spec.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!((created.body["source"].as_str(), created.body["strategy"].as_str()), (Some("api"), Some("worst_fit")));
    admin.post("/api/v1/pools", spec).await.assert_problem(StatusCode::CONFLICT, "pool_exists");
    let invalid = admin.post("/api/v1/pools", json!({"id": "bad", "size": 0, "provider": "moon"})).await;
    invalid.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let detail = invalid.body.to_string();
    assert!(detail.contains("must be at least 1") && detail.contains("unknown provider"), "{detail}");
    let tenant = server.tenant("acme").await;
    assert_eq!(tenant.get("/api/v1/pools").await.status, StatusCode::FORBIDDEN);

    let workers = wait_for_ready(&admin, "api", 1, Duration::from_secs(60)).await;
    let worker = admin.get(&format!("/api/v1/workers/{}", workers[0]["worker_id"].as_str().expect("id"))).await;
    assert_eq!((worker.body["pool"].as_str(), worker.body["slots"].as_i64()), (Some("api"), Some(2)));
    assert_eq!(worker.body["labels"]["zone"], "a");

    let resized = admin
        .send(
            reqwest::Method::PUT,
            "/api/v1/pools/api",
            Some(json!({"id": "api", "size": 2, "template": {"slots": 2}}).to_string().into_bytes()),
            &[],
        )
        .await;
    assert_eq!(resized.status, StatusCode::OK, "{resized:?}");
    wait_for_ready(&admin, "api", 2, Duration::from_secs(60)).await;
    let file_edit = admin
        .send(
            reqwest::Method::PUT,
            "/api/v1/pools/from-file",
            Some(json!({"id": "from-file", "size": 2}).to_string().into_bytes()),
            &[],
        )
        .await;
    file_edit.assert_problem(StatusCode::CONFLICT, "pool_from_file");

    let listed = admin.get("/api/v1/pools").await;
    let ids: Vec<&str> =
        listed.body["pools"].as_array().expect("pools").iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(ids, ["api", "from-file"]);

    assert_eq!(admin.delete("/api/v1/pools/api").await.status, StatusCode::ACCEPTED);
    wait_until("the deleted pool to drain and go", Duration::from_secs(60), async || {
        (admin.get("/api/v1/pools/api").await.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let live = admin.get("/api/v1/workers?pool=api").await;
    assert_eq!(live.body["workers"].as_array().map(Vec::len), Some(0), "{live:?}");
    server.stop().await;
}

#[tokio::test]
async fn leadership_moves_to_another_replica_when_the_leader_dies() {
    let database = TestDatabase::empty().await;
    let ports = [free_port(), free_port()];
    let urls = ports.map(|port| format!("http://127.0.0.1:{port}"));
    let api_urls = urls.join(",");
    let config = ConfigFile::new(&pool_yaml("shared", 2));
    let environment = [("HODEI_LOCAL_WORKER_API_URL", api_urls.as_str())];
    let first = Server::spawn_configured(&database.url, ports[0], Some(config.path()), &environment);
    first.wait_ready(Duration::from_secs(60)).await;
    let second = Server::spawn_configured(&database.url, ports[1], Some(config.path()), &environment);
    second.wait_ready(Duration::from_secs(60)).await;
    let admin = second.admin();
    wait_for_ready(&admin, "shared", 2, Duration::from_secs(60)).await;

    const LEADING: &str = "leading pool reconciliation";
    let (mut leader, mut follower) = if first.log_text().contains(LEADING) { (first, second) } else { (second, first) };
    assert!(leader.log_text().contains(LEADING) && !follower.log_text().contains(LEADING), "exactly one leads");
    leader.kill().await;
    let admin = follower.admin();
    let took_over_in = {
        let killed_at = Instant::now();
        wait_until("the follower to take over", Duration::from_secs(15), async || {
            follower.log_text().contains(LEADING).then_some(())
        })
        .await;
        killed_at.elapsed()
    };
    eprintln!("the follower took over {took_over_in:?} after the leader died");

    // The new leader reconciles: a killed worker is replaced.
    let members = wait_for_ready(&admin, "shared", 2, Duration::from_secs(30)).await;
    kill(&pid_of(&members[0])).await;
    wait_for_removal(&admin, "shared", &members[0]).await;
    let after = wait_for_ready(&admin, "shared", 2, Duration::from_secs(30)).await;
    assert!(after.iter().all(|m| m["id"] != members[0]["id"]), "the killed worker was replaced");
    follower.stop().await;
}

/// A provider that fails the first `failures` attempts of every member it is asked for,
/// then provisions for real through the local provider.
#[derive(Debug)]
struct Flaky {
    inner: LocalProvider,
    failures: u32,
    attempts: Mutex<HashMap<uuid::Uuid, u32>>,
}

impl Provider for Flaky {
    fn limits(&self) -> ProviderLimits {
        self.inner.limits()
    }

    fn provision<'a>(&'a self, request: &'a ProvisionRequest) -> BoxFuture<'a, Result<String, ProviderError>> {
        let attempt = {
            let mut attempts = self.attempts.lock().expect("lock");
            let count = attempts.entry(request.member).or_default();
            *count += 1;
            *count
        };
        if attempt <= self.failures {
            return Box::pin(async move { Err(ProviderError::new(format!("injected failure {attempt}"))) });
        }
        self.inner.provision(request)
    }

    fn terminate<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.inner.terminate(instance)
    }

    fn describe<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<InstanceState, ProviderError>> {
        self.inner.describe(instance)
    }
}

#[tokio::test]
async fn provisioning_retries_failed_attempts_and_fail_fast_gives_up_with_the_reason() {
    let database = TestDatabase::empty().await;
    let mut server = Server::spawn_configured(&database.url, free_port(), None, &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let flaky = Arc::new(Flaky {
        inner: LocalProvider::new(LocalSettings {
            worker_binary: binary("hodei-worker"),
            api_urls: server.url.clone(),
            registration_token: WORKER_REGISTRATION_TOKEN.to_owned(),
            log_dir: None,
            ca_file: None,
            interruption_url: None,
            drain_timeout: Duration::from_secs(10),
        }),
        failures: 2,
        attempts: Mutex::default(),
    });
    let db = sqlx::PgPool::connect(&database.url).await.expect("connect");
    let heartbeat = Duration::from_secs(1);
    let mut reconciler = Reconciler::new(db.clone(), Providers::default().with("flaky", flaky.clone()), heartbeat);
    // The server's own reconciler leads the pools of its providers; this one, with a
    // provider of its own, leads under a lease of its own.
    reconciler.lease_name = "reconcile-flaky".to_owned();
    let insert = async |spec: Value| {
        let spec: PoolSpec = serde_json::from_value(spec).expect("spec");
        hodei_api::store::pools::create(&db, &spec).await.expect("insert").expect("new pool");
    };
    // Three attempts allowed, the first two of each fail: the pool still reaches full size.
    insert(json!({"id": "patient", "provider": "flaky", "size": 3, "provisioning": {"concurrency": 2}})).await;
    // Fail-fast with two attempts: the pool fails, saying why.
    insert(json!({"id": "strict", "provider": "flaky", "size": 2,
                  "provisioning": {"attempts": 2, "on_failure": "fail_fast", "mode": "sequential"}}))
    .await;

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(reconciler.tick().await.expect("tick"), "the only holder of its lease leads");
        let patient = admin.get("/api/v1/pools/patient").await.body;
        let strict = admin.get("/api/v1/pools/strict").await.body;
        if patient["workers"]["ready"] == 3 && strict["state"] == "failed" {
            let reason = strict["state_reason"].as_str().expect("a reason");
            assert!(reason.contains("attempt 2/2: injected failure 2"), "{reason}");
            break;
        }
        assert!(Instant::now() < deadline, "pools did not converge: {patient} / {strict}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let members = admin.get("/api/v1/pools/patient/workers").await.body;
    for member in members["workers"].as_array().expect("members") {
        assert_eq!(member["attempts"], 3, "{member}");
        assert!(member["last_error"].as_str().is_some_and(|e| e.contains("injected failure 2")), "{member}");
    }
    let strict = admin.get("/api/v1/pools/strict/workers").await.body;
    assert!(strict["workers"].as_array().expect("members").iter().all(|m| m["worker_id"].is_null()), "{strict}");
    flaky.inner.stop_own_workers(Duration::from_secs(10)).await;
    server.stop().await;
}

#[tokio::test]
async fn a_worker_failing_its_health_command_is_drained_and_replaced() {
    let database = TestDatabase::empty().await;
    let marks = std::env::temp_dir().join(format!("hodei-unhealthy-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&marks).expect("marks dir");
    // Healthy unless a file named after the worker's member id exists.
    let check = format!("test ! -e {}/$HODEI_INSTANCE_ID", marks.display());
    let config = ConfigFile::new(&format!(
        "pools:\n  - id: checked\n    size: 2\n    template: {{slots: 1, cpu_millis: 1000, memory_mib: 512}}\n    \
         health: {{command: [sh, -c, {check:?}], failure_threshold: 2}}\n"
    ));
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(config.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let before = wait_for_ready(&admin, "checked", 2, Duration::from_secs(60)).await;

    let sick = &before[0];
    std::fs::write(marks.join(sick["id"].as_str().expect("member id")), b"").expect("mark unhealthy");
    wait_until("failed health checks to be counted", Duration::from_secs(30), async || {
        let worker = admin.get(&format!("/api/v1/workers/{}", sick["worker_id"].as_str()?)).await;
        worker.body["health_failures"].as_i64().filter(|failures| *failures >= 1)
    })
    .await;
    wait_for_removal(&admin, "checked", sick).await;
    let after = wait_for_ready(&admin, "checked", 2, Duration::from_secs(30)).await;
    assert!(after.iter().any(|m| m["id"] == before[1]["id"]), "the healthy worker stayed");
    let drained = admin.get(&format!("/api/v1/workers/{}", sick["worker_id"].as_str().expect("id"))).await;
    assert_eq!(drained.body["state"], "gone", "the sick worker left: {drained:?}");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&marks);
}

/// A provider that starts nothing: it hands out instance handles, counting every launch,
/// and each launch waits at a gate the test opens, so a leader can be held mid-tick.
#[derive(Debug)]
struct Gated {
    launched: Mutex<Vec<uuid::Uuid>>,
    terminated: Mutex<Vec<String>>,
    gate: tokio::sync::Semaphore,
}

impl Provider for Gated {
    fn limits(&self) -> ProviderLimits {
        ProviderLimits { name: "gated".to_owned(), max_memory_mib: 1 << 20, max_cpu_millis: 1 << 20 }
    }

    fn provision<'a>(&'a self, request: &'a ProvisionRequest) -> BoxFuture<'a, Result<String, ProviderError>> {
        self.launched.lock().expect("lock").push(request.member);
        Box::pin(async move {
            let _pass = self.gate.acquire().await.map_err(|error| ProviderError::new(error.to_string()))?;
            Ok(format!("instance-of-{}", request.member))
        })
    }

    fn terminate<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        self.terminated.lock().expect("lock").push(instance.to_owned());
        Box::pin(async { Ok(()) })
    }

    fn describe<'a>(&'a self, _instance: &'a str) -> BoxFuture<'a, Result<InstanceState, ProviderError>> {
        Box::pin(async { Ok(InstanceState::Running) })
    }
}

/// A leader that loses its term while its provider calls are in flight records nothing
/// when they return (and ends the instances nobody knows of), and the new leader does not
/// launch those members a second time.
#[tokio::test]
async fn a_deposed_leader_writes_nothing_and_no_member_is_provisioned_twice() {
    let database = TestDatabase::migrated().await;
    let db = sqlx::PgPool::connect(&database.url).await.expect("connect");
    let spec: PoolSpec = serde_json::from_value(json!({"id": "gated", "provider": "gated", "size": 2,
        "provisioning": {"timeout_seconds": 60}}))
    .expect("spec");
    hodei_api::store::pools::create(&db, &spec).await.expect("insert").expect("new pool");
    let provider = Arc::new(Gated {
        launched: Mutex::default(),
        terminated: Mutex::default(),
        gate: tokio::sync::Semaphore::new(0),
    });
    let providers = Providers::default().with("gated", provider.clone());
    let mut old_leader = Reconciler::new(db.clone(), providers.clone(), Duration::from_secs(1));
    // A long lease: it renews rarely, so the test decides when it runs out.
    old_leader.lease = Duration::from_secs(60);
    let new_leader = Reconciler::new(db.clone(), providers, Duration::from_secs(1));

    let stuck_tick = tokio::spawn(async move { old_leader.tick().await });
    wait_until("both launches to start", Duration::from_secs(30), async || {
        (provider.launched.lock().expect("lock").len() == 2).then_some(())
    })
    .await;
    assert!(!new_leader.tick().await.expect("tick"), "the lease is held: no second leader");

    // The old leader freezes past its lease; the other replica takes over in a new term.
    sqlx::query("update leader_leases set expires_at = now() - interval '1 second'")
        .execute(&db)
        .await
        .expect("expire the lease");
    assert!(new_leader.tick().await.expect("tick"), "an expired lease is taken over");
    assert_eq!(provider.launched.lock().expect("lock").len(), 2, "attempts in flight are not launched again");

    // The old leader's launches return: their instances cannot be recorded in its term.
    provider.gate.add_permits(2);
    let result = stuck_tick.await.expect("the old tick");
    let error = format!("{:#}", result.expect_err("the deposed leader's writes are refused"));
    assert!(error.contains("lost the reconcile leadership"), "{error}");
    let mut terminated = provider.terminated.lock().expect("lock").clone();
    terminated.sort();
    let mut launched: Vec<String> =
        provider.launched.lock().expect("lock").iter().map(|member| format!("instance-of-{member}")).collect();
    launched.sort();
    assert_eq!(terminated, launched, "the unrecorded instances are ended, not leaked");
    let recorded: i64 = sqlx::query_scalar("select count(*) from pool_members where instance is not null")
        .fetch_one(&db)
        .await
        .expect("members");
    assert_eq!(recorded, 0, "nothing was written after the term ended");
    assert!(new_leader.tick().await.expect("tick"));
    assert_eq!(provider.launched.lock().expect("lock").len(), 2, "still no second launch");
}

/// A leader that freezes (SIGSTOP) stops renewing its lease: another replica leads within
/// a few seconds, and when the old one thaws it has lost its term and changes nothing.
#[tokio::test]
async fn a_frozen_leader_is_replaced_within_seconds_and_fenced_when_it_thaws() {
    let database = TestDatabase::empty().await;
    let ports = [free_port(), free_port()];
    let urls = ports.map(|port| format!("http://127.0.0.1:{port}"));
    let api_urls = urls.join(",");
    let config = ConfigFile::new(&pool_yaml("frozen", 2));
    let environment = [("HODEI_LOCAL_WORKER_API_URL", api_urls.as_str())];
    let first = Server::spawn_configured(&database.url, ports[0], Some(config.path()), &environment);
    first.wait_ready(Duration::from_secs(60)).await;
    let second = Server::spawn_configured(&database.url, ports[1], Some(config.path()), &environment);
    second.wait_ready(Duration::from_secs(60)).await;
    wait_for_ready(&second.admin(), "frozen", 2, Duration::from_secs(60)).await;

    const LEADING: &str = "leading pool reconciliation";
    let (mut leader, mut follower) = if first.log_text().contains(LEADING) { (first, second) } else { (second, first) };
    let leader_pid = leader.pid().expect("the leader's pid").to_string();
    let db = sqlx::PgPool::connect(&database.url).await.expect("connect");
    let holder: String = sqlx::query_scalar("select holder_info from leader_leases where name = 'reconcile'")
        .fetch_one(&db)
        .await
        .expect("the lease");
    assert!(holder.ends_with(&format!("pid {leader_pid}")), "{holder} leads, not {leader_pid}");

    let signal = async |name: &str| {
        let status = tokio::process::Command::new("kill").args([name, &leader_pid]).status().await.expect("kill");
        assert!(status.success(), "kill {name} {leader_pid}");
    };
    signal("-STOP").await;
    let frozen_at = Instant::now();
    wait_until("the follower to take over", Duration::from_secs(15), async || {
        follower.log_text().contains(LEADING).then_some(())
    })
    .await;
    eprintln!("the follower took over {:?} after the leader froze", frozen_at.elapsed());
    let term: i64 = sqlx::query_scalar("select term from leader_leases where name = 'reconcile'")
        .fetch_one(&db)
        .await
        .expect("the lease");
    assert!(term >= 2, "a new term: {term}");
    signal("-CONT").await;
    wait_until("the thawed leader to learn it lost its term", Duration::from_secs(15), async || {
        leader.log_text().contains("lost the reconcile leadership").then_some(())
    })
    .await;
    // One leader: the pool stays at its size, with no member launched twice.
    let admin = follower.admin();
    let members = wait_for_ready(&admin, "frozen", 2, Duration::from_secs(30)).await;
    let all = admin.get("/api/v1/pools/frozen/workers").await.body;
    assert_eq!(all["workers"].as_array().map(Vec::len), Some(2), "{all}");
    for member in &members {
        assert_eq!(member["attempts"], 1, "{member}");
    }
    leader.stop().await;
    follower.stop().await;
}
