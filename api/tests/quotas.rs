//! A queued job's pending reason follows its tenant's quota as it is now: a job accepted
//! while its tenant was under quota says `tenant_at_quota` once the tenant is at a limit
//! the job would pass (the cycle passes over such a tenant's rows without noting anything
//! on them) and is not assigned, and stops saying so, and runs, when the limit no longer
//! holds it back.

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
use support::{register_worker, scheduler};

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
