//! Retention: finished jobs go once past their state's (or their queue's) retention, with
//! their events and logs; logs of finished jobs go sooner; a job inside its idempotency
//! window, a dead letter awaiting redrive and anything still waiting stay; queue activity
//! goes by its own age. Pruned by the `Retention` loop `hodei serve` runs, one replica at
//! a time.

use chrono::{DateTime, Duration, Utc};
use hodei_api::loops::Retention;
use hodei_api::store::assignment::{self, AttemptResult};
use hodei_api::store::jobs::{self, Idempotency};
use hodei_api::store::retention::{Policy, Pruned, QueueRetention};
use hodei_api::store::tenants;
use hodei_api::testing::TestDatabase;
use hodei_core::{JobSpec, ValidJob};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[allow(dead_code)] // the shared helpers this file does not use
mod support;
use support::{register_worker, scheduler};

fn policy() -> Policy {
    Policy {
        succeeded: Duration::hours(24),
        cancelled: Duration::hours(24),
        dead_lettered: Duration::hours(168),
        logs: Duration::hours(12),
        queue_activity: Duration::hours(100),
        idempotency_window: Duration::hours(48),
        queues: vec![QueueRetention {
            queue: "high".to_owned(),
            succeeded: Some(Duration::hours(720)),
            cancelled: None,
            dead_lettered: None,
        }],
        // One row per statement: a tick works through several batches.
        batch: 1,
    }
}

fn job(queue: &str, max_attempts: u32) -> ValidJob {
    let spec: JobSpec = serde_json::from_value(json!({"queue": queue, "command": {"argv": ["true"]},
        "resources": {"cpu_millis": 100, "memory_mib": 64}, "max_attempts": max_attempts}))
    .expect("spec");
    spec.validate(Utc::now()).expect("valid")
}

async fn submit(pool: &PgPool, tenant_id: Uuid, job: ValidJob, key: Option<&str>) -> Uuid {
    let idempotency = key.map(|key| Idempotency { key: key.to_owned(), fingerprint: vec![1, 2, 3] });
    support::submit(pool, (tenant_id, "acme"), &[job], idempotency.as_ref()).await[0]
}

/// Which of `ids` are still there, and how many events and log chunks they have.
async fn left(pool: &PgPool, ids: &[Uuid]) -> Vec<(bool, i64, i64)> {
    let mut found = Vec::new();
    for id in ids {
        let row: (bool, i64, i64) = sqlx::query_as(
            "select exists (select 1 from jobs where id = $1),
                    (select count(*) from job_events where job_id = $1),
                    (select count(*) from job_logs where job_id = $1)",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("left");
        found.push(row);
    }
    found
}

async fn activity(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from queue_activity").fetch_one(pool).await.expect("activity")
}

#[tokio::test]
async fn finished_jobs_their_events_and_logs_go_each_after_their_own_retention() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let tenant_id = tenants::create(&pool, "acme", 1).await.expect("tenant").id;
    let worker = register_worker(&pool, 10).await;

    let succeeded = submit(&pool, tenant_id, job("default", 1), None).await;
    let failed = submit(&pool, tenant_id, job("default", 1), None).await;
    let keyed = submit(&pool, tenant_id, job("default", 1), Some("nightly-report")).await;
    let kept_by_queue = submit(&pool, tenant_id, job("high", 1), None).await;
    let assigned = scheduler(&pool, 10, 10).tick().await.expect("cycle").assigned;
    assert_eq!(assigned.len(), 4);
    let results: Vec<AttemptResult> = assigned
        .iter()
        .map(|a| AttemptResult {
            job_id: a.job_id,
            attempt: a.attempt,
            exit_code: Some(if a.job_id == failed { 1 } else { 0 }),
            error: None,
        })
        .collect();
    let mut connection = pool.acquire().await.expect("connection");
    assignment::finish_many(&mut connection, worker, &results, 0.5).await.expect("finish");
    let cancelled = submit(&pool, tenant_id, job("low", 1), None).await;
    jobs::cancel(&mut connection, Some(tenant_id), cancelled).await.expect("cancel");
    // Still queued (no cycle runs again): never finished, never pruned.
    let waiting = submit(&pool, tenant_id, job("low", 1), None).await;
    drop(connection);
    for id in [succeeded, failed] {
        sqlx::query("insert into job_logs (job_id, attempt, stream, data, bytes) values ($1, 1, 'stdout', 'hi', 'hi')")
            .bind(id)
            .execute(&pool)
            .await
            .expect("log");
    }
    let states: Vec<String> = {
        let mut states = Vec::new();
        for id in [succeeded, failed, keyed, kept_by_queue, cancelled, waiting] {
            let state: String = sqlx::query_scalar("select state from jobs where id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("job");
            states.push(state);
        }
        states
    };
    assert_eq!(states, ["succeeded", "dead_lettered", "succeeded", "succeeded", "cancelled", "queued"]);
    let all = [succeeded, failed, keyed, kept_by_queue, cancelled, waiting];
    let before = left(&pool, &all).await;
    assert!(before.iter().all(|(exists, events, _)| *exists && *events > 0), "{before:?}");
    let activity_before = activity(&pool).await;
    assert!(activity_before > 0);

    let now: DateTime<Utc> = hodei_api::store::database_now(&pool).await.expect("now");
    let retention = Retention::new(pool.clone(), policy());
    assert_eq!(retention.tick_at(now + Duration::hours(1)).await.expect("prune"), Pruned::default(), "nothing is due");

    // Past the log retention: the finished jobs' output goes, the jobs stay.
    let pruned = retention.tick_at(now + Duration::hours(13)).await.expect("prune");
    assert_eq!(pruned, Pruned { logs: 2, ..Pruned::default() });
    assert!(left(&pool, &all).await.iter().all(|(exists, _, logs)| *exists && *logs == 0));

    // Past a day: the succeeded and the cancelled job go with their events; the keyed one
    // is inside its idempotency window, the dead letter waits for a redrive, the `high`
    // queue keeps its jobs for 30 days, and the waiting job never finished.
    let pruned = retention.tick_at(now + Duration::hours(25)).await.expect("prune");
    assert_eq!(pruned.jobs, 2, "{pruned:?}");
    assert_eq!(pruned.events as i64, before[0].1 + before[4].1, "{pruned:?}");
    let gone: Vec<bool> = left(&pool, &all).await.iter().map(|(exists, _, _)| !exists).collect();
    assert_eq!(gone, [true, false, false, false, true, false]);

    // Past the idempotency window, then past the dead letters' week (and queue activity's
    // 100 hours).
    assert_eq!(retention.tick_at(now + Duration::hours(49)).await.expect("prune").jobs, 1);
    assert!(!left(&pool, &[keyed]).await[0].0, "the keyed job goes once its window closed");
    assert_eq!(activity(&pool).await, activity_before, "queue activity is kept 100 hours");
    let pruned = retention.tick_at(now + Duration::hours(169)).await.expect("prune");
    assert_eq!(pruned.jobs, 1, "{pruned:?}");
    assert_eq!(pruned.queue_activity as i64, activity_before, "{pruned:?}");
    assert_eq!(activity(&pool).await, 0);
    let gone: Vec<bool> = left(&pool, &all).await.iter().map(|(exists, _, _)| !exists).collect();
    assert_eq!(gone, [true, true, true, false, true, false], "the high queue's job and the waiting one stay");
    let pruned = retention.tick_at(now + Duration::hours(721)).await.expect("prune");
    assert_eq!(pruned.jobs, 1, "the high queue's job goes after its 30 days");
    assert!(left(&pool, &[waiting]).await[0].0, "a job that never finished is never pruned");
}

#[tokio::test]
async fn one_replica_prunes_at_a_time() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let first = Retention::new(pool.clone(), policy());
    let second = Retention::new(pool.clone(), policy());
    assert!(first.tick().await.expect("tick").is_some(), "the first to ask leads");
    assert_eq!(second.tick().await.expect("tick"), None, "the other skips its tick");
    first.leadership.release(&pool).await;
    assert!(second.tick().await.expect("tick").is_some(), "a released lease is taken at the next tick");
}
