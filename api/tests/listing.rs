//! Listing jobs: every filter, read through the table or index that serves it, returns what
//! a scan of all jobs would, page by page, for a tenant and for an admin.

use chrono::{DateTime, Duration, Utc};
use hodei_api::store::assignment::{self, AttemptResult};
use hodei_api::store::jobs::{self, JobFilter};
use hodei_api::store::tenants;
use hodei_api::testing::TestDatabase;
use hodei_core::{JobSpec, JobState, ValidJob};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[allow(dead_code)] // the shared helpers this file does not use
mod support;
use support::{register_worker, scheduler, submit};

fn job(queue: &str, max_attempts: u32, later: bool) -> ValidJob {
    let mut spec = json!({"queue": queue, "command": {"argv": ["true"]},
        "resources": {"cpu_millis": 100, "memory_mib": 64}, "max_attempts": max_attempts});
    if later {
        spec["not_before"] = json!((Utc::now() + Duration::hours(1)).to_rfc3339());
    }
    let spec: JobSpec = serde_json::from_value(spec).expect("spec");
    spec.validate(Utc::now()).expect("valid")
}

/// Every page of `filter`, `limit` at a time, following the cursor.
async fn all_pages(pool: &PgPool, filter: &JobFilter) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut filter = filter.clone();
    loop {
        let (page, more) = jobs::list(pool, &filter).await.expect("list");
        assert!(page.len() as i64 <= filter.limit);
        ids.extend(page.iter().map(|job| job.id));
        if !more {
            return ids;
        }
        filter.before_id = page.last().map(|job| job.id);
    }
}

#[tokio::test]
async fn every_filter_lists_what_a_scan_of_all_jobs_finds() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let acme = tenants::create(&pool, "acme", 1).await.expect("tenant").id;
    let globex = tenants::create(&pool, "globex", 1).await.expect("tenant").id;
    let worker = register_worker(&pool, 6).await;
    for (tenant, name) in [(acme, "acme"), (globex, "globex")] {
        // Three to run (one fails for good), then more than the worker holds: three stay
        // assigned (one of them started), the rest wait; two wait for a time; one is cancelled.
        let batch = [job("default", 1, false), job("low", 1, false), job("default", 1, false)];
        submit(&pool, (tenant, name), &batch, None).await;
        let assigned = scheduler(&pool, 10, 10).tick().await.expect("cycle").assigned;
        let results: Vec<AttemptResult> = assigned
            .iter()
            .enumerate()
            .map(|(index, a)| AttemptResult {
                job_id: a.job_id,
                attempt: a.attempt,
                exit_code: Some(if index == 0 { 1 } else { 0 }),
                error: None,
            })
            .collect();
        let mut connection = pool.acquire().await.expect("connection");
        assignment::finish_many(&mut connection, worker, &results, 0.5).await.expect("finish");
        let more: Vec<ValidJob> = (0..7).map(|i| job(if i % 2 == 0 { "default" } else { "low" }, 1, false)).collect();
        submit(&pool, (tenant, name), &more, None).await;
        submit(&pool, (tenant, name), &[job("low", 1, true), job("default", 1, true)], None).await;
        let cancelled = submit(&pool, (tenant, name), &[job("default", 1, false)], None).await;
        jobs::cancel(&mut connection, Some(tenant), cancelled[0]).await.expect("cancel");
    }
    let assigned = scheduler(&pool, 10, 6).tick().await.expect("cycle").assigned;
    assert_eq!(assigned.len(), 6, "the worker fills up");
    let mut connection = pool.acquire().await.expect("connection");
    assert!(assignment::start(&mut connection, worker, assigned[0].job_id, assigned[0].attempt).await.expect("start"));
    drop(connection);

    let counts: Vec<(String, i64)> = sqlx::query_as("select state, count(*) from jobs group by state order by state")
        .fetch_all(&pool)
        .await
        .expect("counts");
    let present: Vec<&str> = counts.iter().map(|(state, _)| state.as_str()).collect();
    assert_eq!(
        present,
        ["assigned", "cancelled", "dead_lettered", "queued", "running", "scheduled", "succeeded"],
        "every state is there to list: {counts:?}"
    );

    let states = [
        None,
        Some(JobState::Scheduled),
        Some(JobState::Queued),
        Some(JobState::Assigned),
        Some(JobState::Running),
        Some(JobState::Succeeded),
        Some(JobState::Cancelled),
        Some(JobState::DeadLettered),
    ];
    for tenant_scope in [None, Some(acme), Some(globex)] {
        for state in states {
            for queue in [None, Some("default"), Some("low"), Some("high")] {
                for limit in [2, 50] {
                    let filter = JobFilter {
                        tenant_scope,
                        state,
                        queue: queue.map(str::to_owned),
                        limit,
                        ..JobFilter::default()
                    };
                    let listed = all_pages(&pool, &filter).await;
                    let scanned: Vec<Uuid> = sqlx::query_scalar(
                        "select id from jobs where ($1::uuid is null or tenant_id = $1) and ($2::text is null or state = $2)
                           and ($3::text is null or queue = $3) order by id desc",
                    )
                    .bind(tenant_scope)
                    .bind(state.map(JobState::as_str))
                    .bind(queue)
                    .fetch_all(&pool)
                    .await
                    .expect("scan");
                    assert_eq!(
                        listed, scanned,
                        "tenant {tenant_scope:?}, state {state:?}, queue {queue:?}, limit {limit}"
                    );
                }
            }
        }
    }
    // Dead letters by reason, and a created-at window, through the same reads.
    let filter = JobFilter {
        state: Some(JobState::DeadLettered),
        dead_letter_reason: Some("failed".to_owned()),
        created_after: Some(Utc::now() - Duration::hours(1)),
        limit: 1,
        ..JobFilter::default()
    };
    let reasons: Vec<Option<String>> =
        sqlx::query_scalar("select dead_letter_reason from jobs where state = 'dead_lettered'")
            .fetch_all(&pool)
            .await
            .expect("reasons");
    let failed = reasons.iter().filter(|reason| reason.as_deref() == Some("failed")).count();
    assert_eq!(all_pages(&pool, &filter).await.len(), failed, "{reasons:?}");
    // An admin's queue filter reads each tenant's page of the queue: with a created-at
    // window, the window is applied before each tenant's page is cut.
    let middle: DateTime<Utc> = sqlx::query_scalar(
        "select created_at from jobs where queue = 'low' order by id offset (select count(*) / 2 from jobs where queue = 'low') limit 1",
    )
    .fetch_one(&pool)
    .await
    .expect("middle");
    for (after, before) in [(Some(middle), None), (None, Some(middle))] {
        let filter = JobFilter {
            queue: Some("low".to_owned()),
            created_after: after,
            created_before: before,
            limit: 1,
            ..JobFilter::default()
        };
        let scanned: Vec<Uuid> = sqlx::query_scalar(
            "select id from jobs where queue = 'low' and ($1::timestamptz is null or created_at >= $1)
               and ($2::timestamptz is null or created_at < $2) order by id desc",
        )
        .bind(after)
        .bind(before)
        .fetch_all(&pool)
        .await
        .expect("scan");
        assert!(!scanned.is_empty());
        assert_eq!(all_pages(&pool, &filter).await, scanned, "after {after:?}, before {before:?}");
    }
}
