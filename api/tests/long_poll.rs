//! A worker's long poll (`loops::long_poll`, what `GET /workers/{id}/assignments` runs)
//! against a real Postgres and the process's notifications session: it hands over what
//! the scheduling cycle assigned, and after a look that took everything it waits without
//! a query until the worker is notified, or until the session is lost.

use std::time::{Duration, Instant};

use chrono::Utc;
use hodei_api::loops::{long_poll, Notifications, Wakeup};
use hodei_api::store::tenants;
use hodei_api::testing::TestDatabase;
use hodei_core::{JobSpec, ValidJob};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[allow(dead_code)] // the shared helpers this file does not use
mod support;
use support::{end_listening_session, register_worker, scheduler, submit, until};

fn noop_job() -> ValidJob {
    serde_json::from_value::<JobSpec>(json!({"command": {"argv": ["true"]}}))
        .expect("spec")
        .validate(Utc::now())
        .expect("valid")
}

/// A poll of up to `wait`: what it was handed, and how long it took.
async fn poll(pool: &PgPool, assigned: &Wakeup, worker: Uuid, wait: Duration) -> (Vec<Uuid>, Duration) {
    let started = Instant::now();
    let handed = long_poll(pool, assigned, worker, wait, &CancellationToken::new()).await.expect("poll");
    (handed.into_iter().map(|assignment| assignment.job_id).collect(), started.elapsed())
}

/// Whether a poll of `worker` that waits would look first.
fn would_look(assigned: &Wakeup, worker: Uuid) -> bool {
    assigned.waiter_for(&worker.to_string()).may_find_some()
}

/// Hands `job` back to the worker as undelivered, behind the poll's back: no notification.
async fn undeliver(pool: &PgPool, job: Uuid) {
    let changed = sqlx::query("update worker_jobs set delivered = false where job_id = $1")
        .bind(job)
        .execute(pool)
        .await
        .expect("undeliver")
        .rows_affected();
    assert_eq!(changed, 1, "the job is held");
}

#[tokio::test]
async fn a_poll_after_one_that_took_everything_waits_for_a_notification_without_a_query() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let shutdown = CancellationToken::new();
    let notifications = Notifications::spawn(pool.clone(), shutdown.clone());
    until("the listener is connected", async || notifications.worker_tokens.is_listening()).await;
    let assigned = notifications.assigned.clone();
    let tenant = tenants::create(&pool, "polling", 1).await.expect("tenant").id;
    let worker = register_worker(&pool, 4).await;

    // The cycle assigns and notifies; the poll hands the job over. (The notification is
    // awaited first, so it cannot arrive after the look and count as a new one.)
    let first = submit(&pool, (tenant, "polling"), &[noop_job()], None).await;
    let mut notified = assigned.waiter_for(&worker.to_string());
    scheduler(&pool, 10, 10).tick().await.expect("cycle");
    notified.wait(Duration::from_secs(30)).await;
    drop(notified);
    assert_eq!(poll(&pool, &assigned, worker, Duration::ZERO).await.0, first);

    // Made undelivered again without a notification: a poll that waits does not look first,
    // so it finds the job only at its fallback look, a second later. A poll that does not
    // wait looks at once.
    undeliver(&pool, first[0]).await;
    assert!(!would_look(&assigned, worker), "nothing came since the look that took everything");
    let (handed, took) = poll(&pool, &assigned, worker, Duration::from_secs(5)).await;
    assert_eq!(handed, first);
    assert!(took >= Duration::from_millis(990), "found at the fallback look, after {took:?}");
    undeliver(&pool, first[0]).await;
    assert_eq!(poll(&pool, &assigned, worker, Duration::ZERO).await.0, first, "a poll without a wait looks");

    // A notification for this worker (any replica's cycle sends one) makes the next poll look.
    undeliver(&pool, first[0]).await;
    assert!(!would_look(&assigned, worker));
    sqlx::query("select pg_notify('hodei_assigned', $1)")
        .bind(worker.to_string())
        .execute(&pool)
        .await
        .expect("notify");
    until("the notification arrives", async || would_look(&assigned, worker)).await;
    assert_eq!(poll(&pool, &assigned, worker, Duration::from_secs(5)).await.0, first);

    // A poll that waits is woken by the next assignment.
    let waiting = tokio::spawn({
        let (pool, assigned) = (pool.clone(), assigned.clone());
        async move { poll(&pool, &assigned, worker, Duration::from_secs(30)).await.0 }
    });
    let second = submit(&pool, (tenant, "polling"), &[noop_job()], None).await;
    scheduler(&pool, 10, 10).tick().await.expect("cycle");
    assert_eq!(waiting.await.expect("poll task"), second);

    // Notifications stop when the listening session is lost: from then on every poll looks.
    undeliver(&pool, second[0]).await;
    assert!(!would_look(&assigned, worker));
    end_listening_session(&pool).await;
    until("polls look once the session is lost", async || would_look(&assigned, worker)).await;
    assert_eq!(poll(&pool, &assigned, worker, Duration::from_secs(5)).await.0, second);
    shutdown.cancel();
}
