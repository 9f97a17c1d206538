//! Cost recommendations end to end: eight days of a pool's history in the ledger (four
//! large instances, weekday office hours of small, short, retryable jobs, quiet nights and
//! weekends) and an instance that ran unpriced; `hodei serve` rolls it up, and the
//! recommendations name each saving with its evidence.

use std::time::Duration;

use chrono::{DateTime, Datelike, DurationRound, Timelike, Utc};
use hodei_api::store::enqueue;
use hodei_api::store::jobs::Submitter;
use hodei_api::store::tenants;
use hodei_core::ordering::PolicyRegistry;
use hodei_core::{JobSpec, ValidJob};
use hodei_e2e::{free_port, wait_until, ConfigFile, Server, TestDatabase};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const LARGE: &str = "local-4000m-16384Mi";

async fn instance(
    db: &PgPool,
    pool: &str,
    instance_type: &str,
    price: Option<f64>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> i64 {
    sqlx::query_scalar(
        "insert into instances (pool_id, member_id, provider, instance, instance_type, capacity_type, region,
                                cpu_millis, memory_mib, price_per_hour, launched_at, terminated_at)
         values ($1, $2, 'local', $3, $4, 'on_demand', 'local', 4000, 16384, $5::numeric, $6, $7) returning id",
    )
    .bind(pool)
    .bind(Uuid::now_v7())
    .bind(format!("{}", Uuid::now_v7()))
    .bind(instance_type)
    .bind(price)
    .bind(from)
    .bind(to)
    .fetch_one(db)
    .await
    .expect("instance")
}

/// Retryable jobs (three attempts) of 1,000 m and 2 GiB.
async fn jobs(db: &PgPool, count: usize) -> (Uuid, Vec<Uuid>) {
    let tenant_id = tenants::create(db, "acme", 1).await.expect("tenant").id;
    let spec: JobSpec = serde_json::from_value(json!({"command": {"argv": ["true"]},
        "resources": {"cpu_millis": 1000, "memory_mib": 2048}, "max_attempts": 3}))
    .expect("spec");
    let job: ValidJob = spec.validate(Utc::now()).expect("valid");
    let registry = PolicyRegistry::shipped();
    let settings = enqueue::QueueSettingsCache::disabled();
    let context = enqueue::SubmitContext { registry: &registry, settings: &settings };
    let submitter = Submitter { tenant_id, tenant_name: "acme", traceparent: None };
    let mut connection = db.acquire().await.expect("connection");
    enqueue::submit(&mut connection, context, submitter, &vec![job; count], None, false).await.expect("submit");
    let ids = sqlx::query_scalar("select id from jobs order by id").fetch_all(db).await.expect("ids");
    (tenant_id, ids)
}

fn busy(at: DateTime<Utc>) -> bool {
    at.weekday().num_days_from_monday() < 5 && (8..18).contains(&at.hour())
}

fn find<'a>(recommendations: &'a [Value], kind: &str, pool: &str) -> &'a Value {
    recommendations
        .iter()
        .find(|r| r["kind"] == kind && r["pool"] == pool)
        .unwrap_or_else(|| panic!("no {kind} recommendation for {pool}: {recommendations:#?}"))
}

#[tokio::test]
async fn recommendations_name_idle_capacity_right_sizing_spot_schedules_and_missing_prices() {
    let database = TestDatabase::migrated().await;
    let db = database.pool().await;
    // Eight days up to the start of this hour.
    let end = Utc::now().duration_trunc(chrono::Duration::hours(1)).expect("hour");
    let start = end - chrono::Duration::days(8);
    let large: Vec<i64> = {
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(instance(&db, "batch", LARGE, Some(0.2), start, end).await);
        }
        ids
    };
    // A pool of another provider's type that nobody priced, ten hours.
    instance(&db, "legacy", "m5.large", None, end - chrono::Duration::hours(10), end).await;
    // Office hours: six jobs at a time, five minutes each, one and a half instances' worth.
    let (tenant, job_ids) = jobs(&db, 6).await;
    let (mut job, mut attempt, mut started, mut ended) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut instance_of = Vec::new();
    let mut at = start;
    let mut attempts_so_far = vec![0; job_ids.len()];
    while at < end {
        if busy(at) {
            for (lane, id) in job_ids.iter().enumerate() {
                attempts_so_far[lane] += 1;
                job.push(*id);
                attempt.push(attempts_so_far[lane]);
                started.push(at);
                ended.push(at + chrono::Duration::minutes(5));
                instance_of.push(large[lane % large.len()]);
            }
        }
        at += chrono::Duration::minutes(5);
    }
    sqlx::query(
        "insert into job_attempts (job_id, attempt, tenant_id, queue, pool, worker_id, instance_id, cpu_millis,
                                   memory_mib, started_at, ended_at, outcome)
         select j, a, $1, 'default', 'batch', $2, i, 1000, 2048, s, e, 'succeeded'
           from unnest($3::uuid[], $4::int[], $5::bigint[], $6::timestamptz[], $7::timestamptz[]) as x (j, a, i, s, e)",
    )
    .bind(tenant)
    .bind(Uuid::now_v7())
    .bind(&job)
    .bind(&attempt)
    .bind(&instance_of)
    .bind(&started)
    .bind(&ended)
    .execute(&db)
    .await
    .expect("attempts");

    // The pool as declared (its workers start now, after the period), a price list with a
    // smaller shape and a spot price.
    let config = ConfigFile::new(&format!(
        "pools:\n  - id: batch\n    size: 4\n    template: {{cpu_millis: 4000, memory_mib: 16384}}\n\
         cost_tracking:\n  rollup_interval_seconds: 1\n  prices:\n\
         \x20   - {{provider: local, instance_type: {LARGE}, price_per_hour: 0.2}}\n\
         \x20   - {{provider: local, instance_type: {LARGE}, capacity_type: spot, price_per_hour: 0.06}}\n\
         \x20   - {{provider: local, instance_type: local-2000m-8192Mi, price_per_hour: 0.1, cpu_millis: 2000, memory_mib: 8192}}\n\
         \x20   - {{provider: local, instance_type: local-1000m-1024Mi, price_per_hour: 0.02, cpu_millis: 1000, memory_mib: 1024}}\n"
    ));
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(config.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    wait_until("the history to be rolled up", Duration::from_secs(120), async || {
        let closed: Option<DateTime<Utc>> =
            sqlx::query_scalar("select closed_until from cost_rollup").fetch_one(&db).await.ok().flatten();
        closed.is_some_and(|closed| closed >= end).then_some(())
    })
    .await;

    let admin = server.admin();
    let reply = admin.get("/api/v1/cost-optimization/recommendations?days=8").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let body = &reply.body;
    let recommendations = body["recommendations"].as_array().expect("recommendations");

    // Four instances where the busiest hour used 6 jobs' shares of a quarter of the CPU and
    // an eighth of the memory, weighed by the instance's price split: 6 × 0.206 = 1.24.
    let weights = hodei_core::cost::Weighting::default().weights_for(4000, 16384);
    let busiest_expected = 6.0 * (weights.cpu * 0.25 + weights.memory * 0.125);
    let idle = find(recommendations, "idle_capacity", "batch");
    assert_eq!(
        (idle["setting"].as_str(), idle["current"].as_str(), idle["suggested"].as_str()),
        (Some("size"), Some("4"), Some("2")),
        "{idle:#}"
    );
    let busiest = idle["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .find(|e| e["name"] == "busiest_hour_instances")
        .expect("busiest hour");
    assert!((busiest["value"].as_f64().expect("value") - busiest_expected).abs() < 1e-6, "{idle:#}");
    assert_eq!(idle["estimated_monthly_saving"].as_f64(), Some(2.0 * 0.2 * 730.0), "{idle:#}");

    // Jobs of a quarter of the CPU: the cheapest type their largest fits, not the one too small.
    let right = find(recommendations, "right_size", "batch");
    assert_eq!(right["suggested"], "local-2000m-8192Mi", "{right:#}");
    // (The period ends at the current hour: if one began since the history was written, its
    // first hour is an hour later.)
    let from: DateTime<Utc> = body["from"].as_str().and_then(|from| from.parse().ok()).expect("from");
    let instance_hours = 4.0 * (end - from).num_hours() as f64;
    let expected = 0.1 * instance_hours * 730.0 / (8.0 * 24.0);
    assert!((right["estimated_monthly_saving"].as_f64().expect("saving") - expected).abs() < 1e-3, "{right:#}");

    // Every job ran five minutes and may be retried: all of the work suits spot.
    let spot = find(recommendations, "spot", "batch");
    assert_eq!(spot["suggested"], "spot", "{spot:#}");
    let median = spot["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .find(|e| e["name"] == "suitable_median_seconds")
        .expect("median");
    assert_eq!(median["value"].as_f64(), Some(300.0), "{spot:#}");

    // Nights and the weekend, every week of the period.
    let schedule = find(recommendations, "schedule", "batch");
    let windows: Vec<(String, u64, u64)> = schedule["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .map(|w| {
            (
                w["starts_day"].as_str().expect("day").to_owned(),
                w["starts_hour"].as_u64().expect("hour"),
                w["hours"].as_u64().expect("hours"),
            )
        })
        .collect();
    let expected: Vec<(String, u64, u64)> =
        [("Mon", 18, 14), ("Tue", 18, 14), ("Wed", 18, 14), ("Thu", 18, 14), ("Fri", 18, 62)]
            .into_iter()
            .map(|(day, hour, hours)| (day.to_owned(), hour, hours))
            .collect();
    assert_eq!(windows, expected, "{schedule:#}");

    // The unpriced instance: its cost is unknown, so no saving is claimed.
    let missing = find(recommendations, "missing_price", "legacy");
    assert!(missing["estimated_monthly_saving"].is_null(), "{missing:#}");
    assert!(missing["action"].as_str().is_some_and(|a| a.contains("m5.large")), "{missing:#}");

    // The total is the sum of what could be estimated, and savings come largest first.
    let savings: Vec<f64> = recommendations.iter().filter_map(|r| r["estimated_monthly_saving"].as_f64()).collect();
    assert!(savings.windows(2).all(|pair| pair[0] >= pair[1]), "{savings:?}");
    let total = body["total_estimated_monthly_saving"].as_f64().expect("total");
    assert!((total - savings.iter().sum::<f64>()).abs() < 1e-3, "{body:#}");

    // Admins only; a period longer than the retention names the field.
    let acme = server.tenant("globex").await;
    let refused = acme.get("/api/v1/cost-optimization/recommendations").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let refused = admin.get("/api/v1/cost-optimization/recommendations?days=91").await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_range");
    assert!(refused.body["detail"].as_str().is_some_and(|d| d.starts_with("days:")), "{refused:?}");
    server.stop().await;
}
