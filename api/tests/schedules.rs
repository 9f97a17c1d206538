//! Firing schedules against a real Postgres: however many transactions try a due fire at
//! once, it happens once, with one job; a fire rolled back (a replica dying mid-fire)
//! leaves nothing and is fired by the next claimer; overlap `skip` records a fire without
//! a job while the previous one waits, `cancel_previous` cancels it (counted as
//! abandoned); and the claim reads the due index, not the table.

use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound, Utc};
use hodei_api::loops::Schedules;
use hodei_api::metrics::{Metrics, Snapshot};
use hodei_api::store::enqueue::{QueueSettingsCache, SubmitContext};
use hodei_api::store::schedules::{self, FireOutcome};
use hodei_api::store::tenants;
use hodei_api::testing::TestDatabase;
use hodei_core::ordering::PolicyRegistry;
use hodei_core::schedule::{ScheduleSpec, ValidSchedule};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn schedule(overlap: &str, missed_fires: &str) -> ValidSchedule {
    let spec: ScheduleSpec = serde_json::from_value(json!({
        "name": "every-second",
        "cron": "* * * * * *",
        "job": {"command": {"argv": ["true"]}},
        "overlap": overlap,
        "missed_fires": missed_fires,
    }))
    .expect("spec");
    spec.validate(Utc::now()).expect("valid")
}

/// A schedule created `seconds_ago` on the database's clock, so fires are due at once.
async fn due_schedule(pool: &PgPool, schedule: &ValidSchedule, seconds_ago: i64) -> (Uuid, Uuid, DateTime<Utc>) {
    let tenant_id = tenants::create(pool, "acme", 1).await.expect("tenant").id;
    let now = hodei_api::store::database_now(pool).await.expect("now");
    let created_at = now - Duration::seconds(seconds_ago) - Duration::milliseconds(500);
    let created = schedules::create(pool, tenant_id, schedule, created_at).await.expect("create");
    (tenant_id, created.id, created_at)
}

async fn fires(pool: &PgPool, schedule_id: Uuid) -> Vec<(DateTime<Utc>, Option<Uuid>, String)> {
    sqlx::query_as("select fire_at, job_id, outcome from schedule_fires where schedule_id = $1 order by fire_at")
        .bind(schedule_id)
        .fetch_all(pool)
        .await
        .expect("fires")
}

async fn job_count(pool: &PgPool, tenant_id: Uuid) -> i64 {
    sqlx::query_scalar("select count(*) from jobs where tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(pool)
        .await
        .expect("a value")
}

#[tokio::test]
async fn concurrent_fires_of_the_same_due_times_create_one_job_each() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let (tenant_id, schedule_id, created_at) = due_schedule(&pool, &schedule("allow", "run_all"), 5).await;

    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let registry = PolicyRegistry::shipped();
                let settings = QueueSettingsCache::disabled();
                let context = SubmitContext { registry: &registry, settings: &settings };
                let mut connection = pool.acquire().await.expect("connection");
                schedules::fire_next(&mut connection, context).await.expect("fire")
            })
        })
        .collect();
    let mut fired_jobs = 0;
    for attempt in attempts {
        fired_jobs += attempt.await.expect("task").map_or(0, |fired| fired.jobs.len());
    }

    let recorded = fires(&pool, schedule_id).await;
    assert!(recorded.len() >= 5, "the five due seconds were fired: {recorded:?}");
    assert_eq!(fired_jobs, recorded.len(), "each fire reported once");
    assert_eq!(job_count(&pool, tenant_id).await, recorded.len() as i64, "one job per fire, no duplicate");
    // Consecutive seconds from the first after creation: no gap, none twice.
    for (index, (fire_at, job_id, outcome)) in recorded.iter().enumerate() {
        let expected =
            created_at.duration_trunc(Duration::seconds(1)).expect("truncate") + Duration::seconds(index as i64 + 1);
        assert_eq!(*fire_at, expected);
        assert!(job_id.is_some());
        assert_eq!(outcome, FireOutcome::Submitted.as_str());
    }
}

#[tokio::test]
async fn a_fire_rolled_back_leaves_nothing_and_the_next_claimer_fires_it() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let (tenant_id, schedule_id, _) = due_schedule(&pool, &schedule("allow", "run_once"), 3).await;
    let registry = PolicyRegistry::shipped();
    let settings = QueueSettingsCache::disabled();
    let context = SubmitContext { registry: &registry, settings: &settings };

    // A replica fires inside a transaction it never commits: it dies mid-fire.
    let mut dying = pool.begin().await.expect("begin");
    let fired = schedules::fire_next(&mut dying, context).await.expect("fire").expect("due");
    assert_eq!(fired.jobs.len(), 1);
    // While it holds the schedule, another replica skips it rather than firing it twice.
    let mut other = pool.acquire().await.expect("connection");
    assert!(schedules::fire_next(&mut other, context).await.expect("fire").is_none());
    drop(dying);

    assert!(fires(&pool, schedule_id).await.is_empty());
    assert_eq!(job_count(&pool, tenant_id).await, 0);
    let fired = schedules::fire_next(&mut other, context).await.expect("fire").expect("still due");
    assert_eq!(fired.jobs.len(), 1);
    assert_eq!(fires(&pool, schedule_id).await.len(), 1);
    assert_eq!(job_count(&pool, tenant_id).await, 1);
}

#[tokio::test]
async fn overlap_skip_records_fires_without_a_job_while_the_previous_job_waits() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let (tenant_id, schedule_id, _) = due_schedule(&pool, &schedule("skip", "run_once"), 1).await;
    let registry = PolicyRegistry::shipped();
    let settings = QueueSettingsCache::disabled();
    let context = SubmitContext { registry: &registry, settings: &settings };
    let mut connection = pool.acquire().await.expect("connection");

    // No worker runs the first job, so it is still queued at the following seconds.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while fires(&pool, schedule_id).await.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "three fires within 10 s");
        schedules::fire_next(&mut connection, context).await.expect("fire");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let recorded = fires(&pool, schedule_id).await;
    assert_eq!(recorded[0].2, FireOutcome::Submitted.as_str());
    assert!(recorded[0].1.is_some());
    for (_, job_id, outcome) in &recorded[1..] {
        assert_eq!(outcome, FireOutcome::SkippedOverlap.as_str());
        assert_eq!(*job_id, None);
    }
    assert_eq!(job_count(&pool, tenant_id).await, 1);
}

#[tokio::test]
async fn overlap_cancel_previous_cancels_the_waiting_job_before_submitting() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let (tenant_id, schedule_id, _) = due_schedule(&pool, &schedule("cancel_previous", "run_once"), 1).await;
    // The loop `hodei serve` runs, so what it counts is what production counts.
    let metrics = Arc::new(Metrics::new());
    let looped = Schedules {
        metrics: metrics.clone(),
        ..Schedules::new(pool.clone(), Arc::new(PolicyRegistry::shipped()), Arc::new(QueueSettingsCache::disabled()))
    };

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while fires(&pool, schedule_id).await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "two fires within 10 s");
        looped.tick().await.expect("fire");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let recorded = fires(&pool, schedule_id).await;
    let states: Vec<String> = sqlx::query_scalar(
        "select j.state from schedule_fires f join jobs j on j.id = f.job_id
         where f.schedule_id = $1 order by f.fire_at limit 2",
    )
    .bind(schedule_id)
    .fetch_all(&pool)
    .await
    .expect("states");
    assert_eq!(states, ["cancelled", "queued"], "{recorded:?}");
    assert_eq!(job_count(&pool, tenant_id).await, recorded.len() as i64);
    // Each job cancelled while it waited is abandoned, as a cancel through the API is.
    let text = metrics.render(&Snapshot::default());
    let abandoned = format!("hodei_jobs_abandoned_total{{queue=\"default\"}} {}", recorded.len() - 1);
    assert!(text.contains(&abandoned), "{abandoned} in\n{text}");
}

#[tokio::test]
async fn the_claim_reads_the_due_index() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let tenant_id = tenants::create(&pool, "acme", 1).await.expect("tenant").id;
    // 100,000 schedules, one in a hundred paused, due over the next day.
    sqlx::query(
        "insert into schedules (id, tenant_id, name, spec, paused, fires_after, next_fire_at)
         select gen_random_uuid(), $1, 's' || g, '{}', g % 100 = 0, now(), now() + g * interval '1 second'
         from generate_series(1, 100000) g",
    )
    .bind(tenant_id)
    .execute(&pool)
    .await
    .expect("seed");
    sqlx::query("analyze schedules").execute(&pool).await.expect("analyze");
    let plan: serde_json::Value = sqlx::query_scalar(&format!("explain (format json) {}", schedules::CLAIM_DUE))
        .fetch_one(&pool)
        .await
        .expect("explain");
    let mut nodes = Vec::new();
    plan_nodes(&plan, &mut nodes);
    let on_schedules: Vec<&(String, String, String)> = nodes.iter().filter(|(_, r, _)| r == "schedules").collect();
    assert!(on_schedules.iter().any(|(kind, _, index)| kind == "Index Scan" && index == "schedules_due"), "{nodes:?}");
    assert!(on_schedules.iter().all(|(kind, _, _)| kind != "Seq Scan"), "{nodes:?}");
}

/// Every plan node as (node type, relation, index).
fn plan_nodes(plan: &serde_json::Value, out: &mut Vec<(String, String, String)>) {
    match plan {
        serde_json::Value::Array(items) => items.iter().for_each(|item| plan_nodes(item, out)),
        serde_json::Value::Object(map) => {
            if let Some(kind) = map.get("Node Type").and_then(serde_json::Value::as_str) {
                let field =
                    |name: &str| map.get(name).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
                out.push((kind.to_owned(), field("Relation Name"), field("Index Name")));
            }
            map.values().for_each(|value| plan_nodes(value, out));
        }
        _ => {}
    }
}
