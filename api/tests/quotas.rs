//! A queued job's pending reason follows its tenant's quota as it is now: a job accepted
//! while its tenant was under quota says `tenant_at_quota` once the tenant is at a limit
//! the job would pass (the cycle passes over such a tenant's rows without noting anything
//! on them) and is not assigned, and stops saying so, and runs, when the limit no longer
//! holds it back. A job that waits only for busy workers says `waiting_for_capacity`, from
//! the workers as they are, without the cycle writing its row.

use chrono::Utc;
use hodei_api::store::assignment;
use hodei_api::store::enqueue::{self, SubmitOutcome};
use hodei_api::store::jobs::Submitter;
use hodei_api::store::quotas;
use hodei_api::store::tenants;
use hodei_api::testing::TestDatabase;
use hodei_core::ordering::PolicyRegistry;
use hodei_core::quota::Limits;
use hodei_core::JobSpec;
use serde_json::json;

#[allow(dead_code)] // the shared helpers this file does not use
mod support;
use support::{register_sized_worker, register_worker, scheduler, submit};

#[tokio::test]
async fn a_waiting_job_says_when_its_tenant_is_at_quota() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let tenant = tenants::create(&pool, "acme", 1).await.expect("tenant");
    let spec = json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 500}});
    let job = serde_json::from_value::<JobSpec>(spec).expect("spec").validate(Utc::now()).expect("valid");
    let registry = PolicyRegistry::shipped();
    let settings = enqueue::QueueSettingsCache::disabled();
    let context = enqueue::SubmitContext { registry: &registry, settings: &settings };
    let submitter = Submitter { tenant_id: tenant.id, tenant_name: "acme", traceparent: None };
    let mut connection = pool.acquire().await.expect("connection");
    let id = match enqueue::submit(&mut connection, context, submitter, &[job], None, false).await.expect("submit") {
        SubmitOutcome::Created { ids, deferred, .. } => {
            assert!(deferred.is_empty(), "no quota yet: accepted");
            ids[0]
        }
        other => panic!("not created: {other:?}"),
    };
    register_worker(&pool, 1).await;
    let pending = assignment::pending(&mut connection, id).await.expect("pending").expect("queued");
    assert_eq!(pending.code, "queued");

    // Its tenant's CPU quota is now below what the job needs on top of nothing held.
    let quota = Limits { cpu_millis: Some(400), ..Limits::default() };
    quotas::put_own(&pool, tenant.id, &quota).await.expect("quota");
    let pending = assignment::pending(&mut connection, id).await.expect("pending").expect("queued");
    assert_eq!(pending.code, "tenant_at_quota");
    let cycle = scheduler(&pool, 10, 10).tick().await.expect("cycle");
    assert!(cycle.assigned.is_empty(), "a job past its tenant's quota is not assigned");
    let pending = assignment::pending(&mut connection, id).await.expect("pending").expect("queued");
    assert_eq!(pending.code, "tenant_at_quota");
    assert!(
        pending.message.contains("CPU (millicores) quota: 0 in use of 400, this job needs 500"),
        "{}",
        pending.message
    );

    quotas::put_own(&pool, tenant.id, &Limits::default()).await.expect("no quota");
    let pending = assignment::pending(&mut connection, id).await.expect("pending").expect("queued");
    assert_eq!(pending.code, "queued", "a reason the quota no longer gives is not kept");
    let cycle = scheduler(&pool, 10, 10).tick().await.expect("cycle");
    assert_eq!(cycle.assigned.iter().map(|a| a.job_id).collect::<Vec<_>>(), [id]);
}

#[tokio::test]
async fn a_job_waiting_for_busy_workers_says_so_without_the_cycle_writing_it() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let tenant = tenants::create(&pool, "acme", 1).await.expect("tenant");
    let job = |cpu: i32| {
        let spec = json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": cpu}});
        serde_json::from_value::<JobSpec>(spec).expect("spec").validate(Utc::now()).expect("valid")
    };
    let ids = submit(&pool, (tenant.id, "acme"), &[job(600), job(500)], None).await;
    // Room for both by slots, for one of them by CPU.
    register_sized_worker(&pool, 1000, 2).await;
    let mut connection = pool.acquire().await.expect("connection");
    let code = |pending: Option<assignment::Pending>| pending.expect("queued").code;
    assert_eq!(code(assignment::pending(&mut connection, ids[1]).await.expect("pending")), "queued");
    // What the row holds, and the version of it (`xmin` changes with every write).
    let row = |id| {
        sqlx::query_as::<_, (Option<String>, String)>(
            "select pending_code, xmin::text from ready_jobs where job_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
    };
    let before = row(ids[1]).await.expect("row");

    let cycle = scheduler(&pool, 10, 10).tick().await.expect("cycle");
    assert_eq!(cycle.assigned.iter().map(|a| a.job_id).collect::<Vec<_>>(), [ids[0]], "CPU for one");
    let pending = assignment::pending(&mut connection, ids[1]).await.expect("pending").expect("queued");
    assert_eq!(
        (pending.code.as_str(), pending.message.as_str()),
        ("waiting_for_capacity", "the workers that can run this job are busy")
    );
    assert_eq!(row(ids[1]).await.expect("row"), before, "the cycle did not write the waiting row");

    // A note an earlier cycle left (say, before a labelled worker came) is cleared by the
    // next cycle that finds the job only waits for capacity.
    sqlx::query(
        "update ready_jobs set pending_code = 'no_worker_with_labels', pending_message = 'm' where job_id = $1",
    )
    .bind(ids[1])
    .execute(&pool)
    .await
    .expect("note");
    // It is passed over at once: a live worker has the labels and the size.
    assert_eq!(code(assignment::pending(&mut connection, ids[1]).await.expect("pending")), "waiting_for_capacity");
    let cycle = scheduler(&pool, 10, 10).tick().await.expect("cycle");
    assert!(cycle.assigned.is_empty(), "still no room");
    assert_eq!(row(ids[1]).await.expect("row").0, None, "the stale note is gone");
    assert_eq!(code(assignment::pending(&mut connection, ids[1]).await.expect("pending")), "waiting_for_capacity");

    // A worker with room: the job is queued for the next cycle, which runs it.
    register_worker(&pool, 1).await;
    assert_eq!(code(assignment::pending(&mut connection, ids[1]).await.expect("pending")), "queued");
    let cycle = scheduler(&pool, 10, 10).tick().await.expect("cycle");
    assert_eq!(cycle.assigned.iter().map(|a| a.job_id).collect::<Vec<_>>(), [ids[1]]);
}
