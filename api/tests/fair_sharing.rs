//! Dominant-resource fair sharing through the scheduling cycle `hodei serve` runs: a
//! tenant's past usage is accrued from what its attempts hold, and a `fair` queue then
//! offers scarce capacity to the tenant with the lower dominant share first, even when the
//! other's jobs have the earlier tags. With fair sharing off, tags decide.

use chrono::Utc;
use hodei_api::store::queues::{self, RetrySettings};
use hodei_api::store::quotas::{self, TenancySettings};
use hodei_api::store::tenants;
use hodei_api::testing::TestDatabase;
use hodei_core::queue::QueueSettings;
use hodei_core::{JobSpec, ValidJob};
use serde_json::json;
use sqlx::PgPool;

#[allow(dead_code)] // the shared helpers this file does not use
mod support;
use support::{register_worker, scheduler, submit};

fn job(cpu_millis: u32) -> ValidJob {
    let spec = json!({"queue": "shared", "command": {"argv": ["true"]}, "resources": {"cpu_millis": cpu_millis}});
    serde_json::from_value::<JobSpec>(spec).expect("spec").validate(Utc::now()).expect("valid")
}

async fn fair_sharing(pool: &PgPool, enabled: bool) {
    let settings =
        TenancySettings { fair_sharing_enabled: enabled, fair_sharing_half_life_seconds: 3600, ..Default::default() };
    quotas::write_settings(pool, &TenancySettings { burst_max_overage_percentage: 150, ..settings })
        .await
        .expect("settings");
}

#[tokio::test]
async fn past_usage_is_accrued_and_the_lower_dominant_share_goes_first() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let settings = QueueSettings::with_policy("shared", "fair");
    let retry = RetrySettings { retry_base_seconds: 0.001, retry_max_seconds: 0.01 };
    queues::upsert(&pool, &settings, retry).await.expect("queue");
    let heavy = tenants::create(&pool, "heavy", 1).await.expect("tenant").id;
    let light = tenants::create(&pool, "light", 1).await.expect("tenant").id;
    fair_sharing(&pool, true).await;

    // `heavy` holds a worker for a minute (as the accrual sees it: its last update was a
    // minute before the next one).
    let running = submit(&pool, (heavy, "heavy"), &[job(2000)], None).await;
    register_worker(&pool, 1).await;
    let assigned = scheduler(&pool, 200, 500).tick().await.expect("cycle").assigned;
    assert_eq!(assigned.iter().map(|a| a.job_id).collect::<Vec<_>>(), running);
    let mut connection = pool.acquire().await.expect("connection");
    assert_eq!(quotas::accrue_fair_usage(&mut connection, 3600.0).await.expect("accrue"), Some(1));
    sqlx::query("update tenant_fair_usage set at = at - 60").execute(&pool).await.expect("backdate");
    quotas::accrue_fair_usage(&mut connection, 3600.0).await.expect("accrue");
    let (heavy_past, light_rows): (f64, i64) = sqlx::query_as(
        "select (select cpu_millis_seconds from tenant_fair_usage where tenant_id = $1),
                (select count(*) from tenant_fair_usage where tenant_id = $2)",
    )
    .bind(heavy)
    .bind(light)
    .fetch_one(&pool)
    .await
    .expect("usage");
    // 2000 millicores for 60 s, decayed over one minute of a one-hour half-life.
    assert!((heavy_past - 2000.0 * 60.0).abs() < 2000.0 * 60.0 * 0.02, "{heavy_past}");
    assert_eq!(light_rows, 0, "a tenant that held nothing has no past");
    sqlx::query("delete from worker_jobs").execute(&pool).await.expect("free the worker");
    sqlx::query("update jobs set state = 'succeeded' where id = $1")
        .bind(running[0])
        .execute(&pool)
        .await
        .expect("end");

    // `heavy` submits first, so its tags come first; one slot is free.
    let heavy_jobs = submit(&pool, (heavy, "heavy"), &[job(100), job(100)], None).await;
    let light_jobs = submit(&pool, (light, "light"), &[job(100), job(100)], None).await;
    register_worker(&pool, 1).await;
    sqlx::query("update workers set gone_at = now() where id in (select id from workers order by id limit 1)")
        .execute(&pool)
        .await
        .expect("retire the first worker");
    let assigned = scheduler(&pool, 200, 500).tick().await.expect("cycle").assigned;
    assert_eq!(assigned.len(), 1);
    assert_eq!(assigned[0].job_id, light_jobs[0], "the tenant with no past goes first");

    // With fair sharing off, the earlier tag wins.
    fair_sharing(&pool, false).await;
    register_worker(&pool, 1).await;
    let assigned = scheduler(&pool, 200, 500).tick().await.expect("cycle").assigned;
    assert_eq!(assigned.len(), 1);
    assert_eq!(assigned[0].job_id, heavy_jobs[0]);
}
