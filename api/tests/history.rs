//! Historical metrics: the roll-up counts every event once, whatever restarts and gaps
//! come between its runs, and samples the gauges as they are, once per minute however
//! many replicas roll up.

use chrono::{DateTime, Duration, DurationRound, Utc};
use hodei_api::loops::MetricHistory;
use hodei_api::store::enqueue::{self, SubmitOutcome};
use hodei_api::store::jobs::Submitter;
use hodei_api::store::{history, tenants};
use hodei_api::testing::TestDatabase;
use hodei_core::history::{Metric, Resolution};
use hodei_core::ordering::PolicyRegistry;
use hodei_core::{JobSpec, ValidJob};
use sqlx::PgPool;
use uuid::Uuid;

/// `jobs` dispatched from `default` at `at`, each having waited `wait_ms`.
async fn dispatched(db: &PgPool, at: DateTime<Utc>, jobs: i32, wait_ms: i64) {
    sqlx::query(
        "insert into queue_activity (at, queue, kind, jobs, waits_ms) values ($1, 'default', 'dispatched', $2, $3)",
    )
    .bind(at)
    .bind(jobs)
    .bind(vec![wait_ms; jobs as usize])
    .execute(db)
    .await
    .expect("activity");
}

async fn ended(db: &PgPool, at: DateTime<Utc>, outcome: &str) {
    sqlx::query(
        "insert into job_attempts (job_id, attempt, tenant_id, queue, pool, worker_id, cpu_millis, memory_mib,
                                   started_at, ended_at, outcome)
         values ($1, 1, $2, 'default', 'p', $3, 100, 64, $4 - interval '5 seconds', $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::now_v7())
    .bind(Uuid::now_v7())
    .bind(at)
    .bind(outcome)
    .execute(db)
    .await
    .expect("attempt");
}

async fn values(db: &PgPool, resolution: Resolution, metric: Metric, from: DateTime<Utc>) -> Vec<(DateTime<Utc>, f64)> {
    history::series(db, resolution, metric, "default", from, from + Duration::days(1))
        .await
        .expect("series")
        .into_iter()
        .map(|point| (point.at, point.value))
        .collect()
}

#[tokio::test]
async fn every_event_counts_once_across_restarts_and_gaps() {
    let database = TestDatabase::migrated().await;
    let db = database.pool().await;
    let start = (Utc::now() - Duration::minutes(40)).duration_trunc(Duration::hours(1)).expect("hour");
    let minute = |m: i64| start + Duration::minutes(m);
    dispatched(&db, minute(0) + Duration::seconds(10), 3, 2000).await;
    dispatched(&db, minute(0) + Duration::seconds(50), 1, 6000).await;
    dispatched(&db, minute(2) + Duration::seconds(5), 2, 1000).await;
    ended(&db, minute(2) + Duration::seconds(30), "succeeded").await;
    ended(&db, minute(2) + Duration::seconds(40), "retried").await;

    // A replica rolls up in the middle of minute 2, and again (nothing counts twice).
    let rollup = MetricHistory::new(db.clone());
    assert!(rollup.tick_at(minute(2) + Duration::seconds(45)).await.expect("roll").rolled);
    rollup.tick_at(minute(2) + Duration::seconds(50)).await.expect("roll again");
    // More of minute 2 arrives after it, then a gap of an hour with nobody rolling.
    dispatched(&db, minute(2) + Duration::seconds(55), 4, 3000).await;
    dispatched(&db, minute(30), 5, 500).await;
    ended(&db, minute(31), "succeeded").await;

    // Another replica (a restart) picks up from where the first left off.
    let restarted = MetricHistory::new(db.clone());
    restarted.tick_at(minute(65)).await.expect("roll after the gap");

    assert_eq!(
        values(&db, Resolution::Minute, Metric::Dispatched, start).await,
        [(minute(0), 4.0), (minute(2), 6.0), (minute(30), 5.0)]
    );
    assert_eq!(values(&db, Resolution::Minute, Metric::Succeeded, start).await, [(minute(2), 1.0), (minute(31), 1.0)]);
    assert_eq!(values(&db, Resolution::Minute, Metric::Failed, start).await, [(minute(2), 1.0)]);
    // Minute 0: waits of 2, 2, 2 and 6 seconds.
    let means = values(&db, Resolution::Minute, Metric::WaitMeanSeconds, start).await;
    assert_eq!(means[0], (minute(0), 3.0));
    // The hours hold the same events, summed.
    assert_eq!(
        values(&db, Resolution::Hour, Metric::Dispatched, start).await,
        [(start, 15.0)],
        "the first hour, rolled before and after it closed"
    );

    // Gauges are what the roll-up saw when it ran: an empty queue, twice.
    let lengths = values(&db, Resolution::Minute, Metric::QueueLength, start).await;
    assert_eq!(lengths, [(minute(2), 0.0), (minute(65), 0.0)]);

    // Two replicas at once: one rolls, the other skips; still counted once.
    dispatched(&db, minute(65) + Duration::seconds(1), 7, 100).await;
    let (first, second) = tokio::join!(
        rollup.tick_at(minute(65) + Duration::seconds(2)),
        restarted.tick_at(minute(65) + Duration::seconds(2))
    );
    let rolled = [first.expect("first"), second.expect("second")];
    assert!(rolled.iter().any(|r| r.rolled), "{rolled:?}");
    rollup.tick_at(minute(65) + Duration::seconds(3)).await.expect("once more");
    let last = values(&db, Resolution::Minute, Metric::Dispatched, start).await;
    assert_eq!(last.last(), Some(&(minute(65), 7.0)), "{last:?}");
}

/// `jobs` ready in `default`, submitted as the API submits them.
async fn submit(db: &PgPool, tenant_id: Uuid, jobs: usize) {
    let job: ValidJob = serde_json::from_value::<JobSpec>(serde_json::json!({"command": {"argv": ["true"]}}))
        .expect("spec")
        .validate(Utc::now())
        .expect("valid");
    let registry = PolicyRegistry::shipped();
    let settings = enqueue::QueueSettingsCache::disabled();
    let context = enqueue::SubmitContext { registry: &registry, settings: &settings };
    let submitter = Submitter { tenant_id, tenant_name: "acme", traceparent: None };
    let mut connection = db.acquire().await.expect("connection");
    let outcome = enqueue::submit(&mut connection, context, submitter, &vec![job; jobs], None, false).await;
    assert!(matches!(outcome, Ok(SubmitOutcome::Created { .. })), "{outcome:?}");
}

#[tokio::test]
async fn an_hours_gauge_mean_counts_each_minute_once_however_many_replicas_sample_it() {
    let database = TestDatabase::migrated().await;
    let db = database.pool().await;
    let tenant_id = tenants::create(&db, "acme", 1).await.expect("tenant").id;
    let start = (Utc::now() - Duration::hours(3)).duration_trunc(Duration::hours(1)).expect("hour");
    let minute = |m: i64| start + Duration::minutes(m);

    // Minute 0: one replica samples an empty queue.
    let first = MetricHistory::new(db.clone());
    first.tick_at(minute(0) + Duration::seconds(10)).await.expect("roll");
    // Minute 1: two jobs wait, and two replicas sample them, one after the other.
    submit(&db, tenant_id, 2).await;
    let second = MetricHistory::new(db.clone());
    first.tick_at(minute(1) + Duration::seconds(10)).await.expect("roll");
    second.tick_at(minute(1) + Duration::seconds(40)).await.expect("roll again");

    assert_eq!(values(&db, Resolution::Minute, Metric::QueueLength, start).await, [(minute(0), 0.0), (minute(1), 2.0)]);
    // One sample per minute: (0 + 2) / 2, as with one replica. Counting every roll-up's
    // sample would give (0 + 2 + 2) / 3.
    assert_eq!(values(&db, Resolution::Hour, Metric::QueueLength, start).await, [(start, 1.0)]);

    // A later minute of the same hour moves the mean by one minute's weight.
    second.tick_at(minute(2) + Duration::seconds(5)).await.expect("roll");
    first.tick_at(minute(2) + Duration::seconds(6)).await.expect("roll");
    first.tick_at(minute(2) + Duration::seconds(7)).await.expect("roll");
    let hour = values(&db, Resolution::Hour, Metric::QueueLength, start).await;
    assert_eq!(hour.len(), 1, "{hour:?}");
    assert!((hour[0].1 - 4.0 / 3.0).abs() < 1e-9, "(0 + 2 + 2) / 3 minutes: {hour:?}");
}
