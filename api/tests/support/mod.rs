//! What the store-level tests share: a worker to dispatch to and the scheduling cycle
//! `hodei serve` runs, so jobs leave their queues only as production takes them.

use std::time::{Duration, Instant};

use hodei_api::loops::Scheduler;
use hodei_api::store::assignment::CycleLimits;
use hodei_api::store::enqueue::{self, SubmitOutcome};
use hodei_api::store::jobs::{Idempotency, Submitter};
use hodei_api::store::workers;
use hodei_core::ordering::PolicyRegistry;
use hodei_core::ValidJob;
use sqlx::PgPool;
use uuid::Uuid;

/// A worker with room for `slots` jobs of any size.
pub async fn register_worker(pool: &PgPool, slots: i32) -> Uuid {
    register_worker_with_token(pool, slots, Uuid::now_v7().as_bytes()).await
}

/// `register_worker`, with `token_hash` as the hash of its token.
pub async fn register_worker_with_token(pool: &PgPool, slots: i32, token_hash: &[u8]) -> Uuid {
    register(pool, i32::MAX, slots, token_hash).await
}

/// A worker with room for `slots` jobs and `cpu_millis` of CPU in all (memory to spare).
pub async fn register_sized_worker(pool: &PgPool, cpu_millis: i32, slots: i32) -> Uuid {
    register(pool, cpu_millis, slots, Uuid::now_v7().as_bytes()).await
}

async fn register(pool: &PgPool, cpu_millis: i32, slots: i32, token_hash: &[u8]) -> Uuid {
    let labels = Default::default();
    let worker = workers::NewWorker {
        name: "test",
        pool: "default",
        cpu_millis,
        memory_mib: i32::MAX,
        slots,
        labels: &labels,
        instance_id: None,
        token_hash,
    };
    workers::register(pool, &worker).await.expect("register").id
}

/// The scheduling cycle `hodei serve` runs, with these limits per cycle.
pub fn scheduler(pool: &PgPool, workers: i64, jobs: i64) -> Scheduler {
    Scheduler { limits: CycleLimits { workers, jobs }, ..Scheduler::new(pool.clone()) }
}

/// Submits `jobs` for `tenant` (id and name) as the API does; their ids.
pub async fn submit(pool: &PgPool, tenant: (Uuid, &str), jobs: &[ValidJob], key: Option<&Idempotency>) -> Vec<Uuid> {
    let registry = PolicyRegistry::shipped();
    let settings = enqueue::QueueSettingsCache::disabled();
    let context = enqueue::SubmitContext { registry: &registry, settings: &settings };
    let submitter = Submitter { tenant_id: tenant.0, tenant_name: tenant.1, traceparent: None };
    let mut connection = pool.acquire().await.expect("connection");
    match enqueue::submit(&mut connection, context, submitter, jobs, key, false).await.expect("submit") {
        SubmitOutcome::Created { ids, .. } => ids,
        other => panic!("not created: {other:?}"),
    }
}

/// Ends the process's listening session (`loops::Notifications`), as a database restart
/// would, and waits until its backend has exited.
pub async fn end_listening_session(pool: &PgPool) {
    let ended: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity, pg_terminate_backend(pid, 10000)
         where datname = current_database() and pid <> pg_backend_pid() and query ilike 'listen%'",
    )
    .fetch_one(pool)
    .await
    .expect("end the listening session");
    assert_eq!(ended, 1, "one listening session");
}

/// Waits, up to 30 s, until `check` holds.
pub async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
