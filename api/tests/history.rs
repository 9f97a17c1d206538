//! Historical metrics: the roll-up counts every event once, whatever restarts and gaps
//! come between its runs, and samples the gauges as they are.

use chrono::{DateTime, Duration, DurationRound, Utc};
use hodei_api::loops::MetricHistory;
use hodei_api::store::history;
use hodei_api::testing::TestDatabase;
use hodei_core::history::{Metric, Resolution};
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
