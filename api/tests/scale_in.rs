//! Scale-in never takes a busy worker: the autoscaler's drain (`drain_if_idle`) and the
//! scheduling cycle race on the same worker row, thousands of times, against a real
//! Postgres. Either the cycle assigned first and the drain is refused, or the drain
//! committed first and the cycle gives the worker nothing: never both.

use chrono::Utc;
use hodei_api::store::assignment::{self, AttemptResult};
use hodei_api::store::enqueue;
use hodei_api::store::jobs::Submitter;
use hodei_api::store::tenants;
use hodei_api::testing::TestDatabase;
use hodei_core::ordering::PolicyRegistry;
use hodei_core::{JobSpec, ValidJob};
use serde_json::json;
use uuid::Uuid;

#[allow(dead_code)] // the shared helpers this file does not use
mod support;
use support::{register_worker, scheduler};

const ROUNDS: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_is_never_drained_for_scale_in_and_given_a_job_at_once() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let registry = PolicyRegistry::shipped();
    let tenant_id = tenants::create(&pool, "acme", 1).await.expect("tenant").id;
    let submitter = Submitter { tenant_id, tenant_name: "acme", traceparent: None };
    let spec: JobSpec = serde_json::from_value(json!({"command": {"argv": ["true"]}})).expect("spec");
    let job: ValidJob = spec.validate(Utc::now()).expect("valid");
    let cycle = scheduler(&pool, 10, 10);
    let (mut drained_rounds, mut assigned_rounds) = (0, 0);

    for round in 0..ROUNDS {
        let worker = register_worker(&pool, 1).await;
        {
            let mut connection = pool.acquire().await.expect("connection");
            let settings = enqueue::QueueSettingsCache::disabled();
            let context = enqueue::SubmitContext { registry: &registry, settings: &settings };
            enqueue::submit(&mut connection, context, submitter, std::slice::from_ref(&job), None, false)
                .await
                .expect("submit");
        }
        // The two race: the cycle's assignment and the autoscaler's scale-in of the worker.
        let drain_pool = pool.clone();
        let drain = tokio::spawn(async move {
            let mut connection = drain_pool.acquire().await.expect("connection");
            assignment::drain_if_idle(&mut connection, worker).await.expect("drain")
        });
        let assigned = cycle.tick().await.expect("cycle").assigned;
        let drained = drain.await.expect("joined");

        let held: Vec<(Uuid, i32)> = sqlx::query_as("select job_id, attempt from worker_jobs where worker_id = $1")
            .bind(worker)
            .fetch_all(&pool)
            .await
            .expect("holdings");
        let state: String = sqlx::query_scalar("select state from workers where id = $1")
            .bind(worker)
            .fetch_one(&pool)
            .await
            .expect("state");
        assert!(!drained || held.is_empty(), "round {round}: the worker was drained for scale-in while given a job");
        assert_eq!(drained, state == "draining", "round {round}: drain said {drained}, the worker is {state}");
        assert_eq!(held.len(), assigned.len(), "round {round}: {assigned:?} vs {held:?}");
        if drained {
            drained_rounds += 1;
        } else {
            assigned_rounds += 1;
        }
        // Finish what was assigned and retire the worker, so the next round starts afresh
        // (a job left queued when the drain won goes to the next round's worker).
        let mut connection = pool.acquire().await.expect("connection");
        for (job_id, attempt) in held {
            let result = AttemptResult { job_id, attempt, exit_code: Some(0), error: None };
            assignment::finish(&mut connection, worker, &result, 0.5).await.expect("finish");
        }
        sqlx::query("update workers set state = 'gone', gone_at = now() where id = $1")
            .bind(worker)
            .execute(&pool)
            .await
            .expect("retire");
    }
    eprintln!("{ROUNDS} rounds: the drain won {drained_rounds}, the cycle won {assigned_rounds}");
    // Both outcomes happened, so the race was real.
    assert!(drained_rounds > 0 && assigned_rounds > 0, "drained {drained_rounds}, assigned {assigned_rounds}");
}
