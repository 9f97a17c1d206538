//! What the store-level tests share: a worker to dispatch to and the scheduling cycle
//! `hodei serve` runs, so jobs leave their queues only as production takes them.

use hodei_api::loops::Scheduler;
use hodei_api::store::assignment::CycleLimits;
use hodei_api::store::workers;
use sqlx::PgPool;
use uuid::Uuid;

/// A worker with room for `slots` jobs of any size.
pub async fn register_worker(pool: &PgPool, slots: i32) -> Uuid {
    let (labels, token) = (Default::default(), Uuid::now_v7());
    let worker = workers::NewWorker {
        name: "test",
        pool: "default",
        cpu_millis: i32::MAX,
        memory_mib: i32::MAX,
        slots,
        labels: &labels,
        instance_id: None,
        token_hash: token.as_bytes(),
    };
    workers::register(pool, &worker).await.expect("register").id
}

/// The scheduling cycle `hodei serve` runs, with these limits per cycle.
pub fn scheduler(pool: &PgPool, workers: i64, jobs: i64) -> Scheduler {
    Scheduler { limits: CycleLimits { workers, jobs }, ..Scheduler::new(pool.clone()) }
}
