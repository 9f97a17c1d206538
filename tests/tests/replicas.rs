//! Three `hodei serve` replicas on one database and four real workers run 2,000 jobs while
//! one replica is killed with SIGKILL mid-run: every job ends exactly once, and no job runs
//! two attempts at the same time.

use std::process::Stdio;
use std::time::{Duration, Instant};

use hodei_e2e::{binary, Server, TestDatabase, WORKER_REGISTRATION_TOKEN};
use serde_json::json;

const JOBS: i64 = 2000;

async fn scalar(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect("query")
}

#[tokio::test]
async fn killing_a_replica_mid_run_loses_and_duplicates_nothing() {
    let database = TestDatabase::empty().await;
    let mut replicas = vec![Server::spawn(&database.url), Server::spawn(&database.url), Server::spawn(&database.url)];
    for replica in &replicas {
        replica.wait_ready(Duration::from_secs(60)).await;
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let acme = replicas[1].tenant("acme").await;

    let mut workers = Vec::new();
    for index in 0..4 {
        // Each worker knows every replica, starting from a different one.
        let mut order = urls.clone();
        order.rotate_left(index % 3);
        workers.push(
            tokio::process::Command::new(binary("hodei-worker"))
                .args(["--api-url", &order.join(","), "run", "--name", &format!("w{index}")])
                .args(["--cpu-millis", "4000", "--memory-mib", "8192", "--slots", "4"])
                .env("HODEI_WORKER_REGISTRATION_TOKEN", WORKER_REGISTRATION_TOKEN)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start hodei-worker"),
        );
    }

    let submitter = hodei_e2e::Client::new(&urls[2], acme.key());
    for _ in 0..JOBS / 500 {
        let jobs: Vec<_> =
            (0..500).map(|_| json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 100}})).collect();
        let reply = submitter.post("/api/v1/jobs/batch", json!({ "jobs": jobs })).await;
        assert_eq!(reply.status, reqwest::StatusCode::CREATED, "{reply:?}");
    }

    let pool = database.pool().await;
    let deadline = Instant::now() + Duration::from_secs(240);
    while scalar(&pool, "select count(*) from jobs where state = 'succeeded'").await < JOBS / 4 {
        assert!(Instant::now() < deadline, "jobs are not running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replicas[0].kill().await;

    let terminal = "select count(*) from jobs where state in ('succeeded', 'cancelled', 'dead_lettered')";
    while scalar(&pool, terminal).await < JOBS {
        assert!(Instant::now() < deadline, "only {} of {JOBS} jobs finished", scalar(&pool, terminal).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(scalar(&pool, "select count(*) from jobs where state = 'succeeded'").await, JOBS);
    assert_eq!(
        scalar(&pool, "select count(*) from (select job_id from job_events where kind = 'job.succeeded' group by job_id having count(*) > 1) d").await,
        0,
        "a job finished twice"
    );
    // No second attempt began before the first ended: between two assignments of a job
    // there is always the end of the earlier attempt.
    let overlapping = scalar(
        &pool,
        "select count(*) from (
            select job_id, kind, lag(kind) over (partition by job_id order by id) as previous
            from job_events where kind in ('job.assigned', 'job.retry_scheduled', 'job.succeeded', 'job.dead_lettered')
         ) e where kind = 'job.assigned' and previous = 'job.assigned'",
    )
    .await;
    assert_eq!(overlapping, 0, "a job was assigned again while an attempt was still open");
    assert_eq!(scalar(&pool, "select count(*) from worker_jobs").await, 0, "capacity all given back");
    drop(workers);
    pool.close().await;
}
