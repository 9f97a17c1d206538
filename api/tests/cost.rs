//! Cost is data: attempts ended by every path are recorded with their instance, and the
//! roll-up splits each instance's cost so that attributed + idle is what the instance
//! cost, however jobs overlapped, retried, were cancelled or left the instance idle.

use chrono::{DateTime, Duration, DurationRound, Utc};
use hodei_api::loops::CostRollup;
use hodei_api::store::assignment::{self, AttemptResult};
use hodei_api::store::cost::{self, GroupBy, Launch, ReportScope, Tracking};
use hodei_api::store::enqueue;
use hodei_api::store::jobs::Submitter;
use hodei_api::store::{tenants, workers};
use hodei_api::testing::TestDatabase;
use hodei_core::cost::Weighting;
use hodei_core::ordering::PolicyRegistry;
use hodei_core::{JobSpec, ValidJob};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[allow(dead_code)] // the shared helpers this file does not use
mod support;
use support::scheduler;

fn tracking() -> Tracking {
    Tracking { by_tenant: true, by_job: true, weighting: Weighting::default() }
}

fn within(actual: f64, expected: f64, fraction: f64) -> bool {
    (actual - expected).abs() <= fraction * expected.abs().max(1e-9)
}

#[tokio::test]
async fn attempts_ended_by_every_path_are_recorded_with_their_instance() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let registry = PolicyRegistry::shipped();
    let tenant_id = tenants::create(&pool, "acme", 1).await.expect("tenant").id;
    cost::upsert_prices(
        &pool,
        &[cost::Price {
            provider: "local".to_owned(),
            instance_type: "*".to_owned(),
            capacity_type: "on_demand".to_owned(),
            region: "*".to_owned(),
            price_per_hour: 3.6,
            currency: "USD".to_owned(),
            cpu_millis: None,
            memory_mib: None,
        }],
    )
    .await
    .expect("price");
    let member = Uuid::now_v7();
    let launch = Launch {
        pool: "default",
        member,
        provider: "local",
        instance: "4242",
        instance_type: "local-4000m-8192Mi",
        capacity_type: "on_demand",
        region: "local",
        cpu_millis: Some(4000),
        memory_mib: Some(8192),
        observed_price_per_hour: None,
    };
    cost::record_launch(&pool, &launch).await.expect("launch");
    let member_text = member.to_string();
    let (labels, token) = (Default::default(), Uuid::now_v7());
    let worker = workers::register(
        &pool,
        &workers::NewWorker {
            name: "w",
            pool: "default",
            cpu_millis: 4000,
            memory_mib: 8192,
            slots: 3,
            labels: &labels,
            instance_id: Some(&member_text),
            token_hash: token.as_bytes(),
        },
    )
    .await
    .expect("register")
    .id;

    let spec: JobSpec = serde_json::from_value(
        json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 1000, "memory_mib": 1024}, "max_attempts": 1}),
    )
    .expect("spec");
    let job: ValidJob = spec.validate(Utc::now()).expect("valid");
    let spec: JobSpec = serde_json::from_value(
        json!({"command": {"argv": ["true"]}, "resources": {"cpu_millis": 1000, "memory_mib": 1024}, "max_attempts": 3}),
    )
    .expect("spec");
    let retryable: ValidJob = spec.validate(Utc::now()).expect("valid");
    {
        let mut connection = pool.acquire().await.expect("connection");
        let settings = enqueue::QueueSettingsCache::disabled();
        let context = enqueue::SubmitContext { registry: &registry, settings: &settings };
        let submitter = Submitter { tenant_id, tenant_name: "acme", traceparent: None };
        enqueue::submit(&mut connection, context, submitter, &[job.clone(), job, retryable], None, false)
            .await
            .expect("submit");
    }
    let assigned = scheduler(&pool, 10, 10).tick().await.expect("cycle").assigned;
    assert_eq!(assigned.len(), 3);
    let mut connection = pool.acquire().await.expect("connection");
    // One succeeds, one fails for good, and the third is given up with its worker (and retried).
    let results = [
        AttemptResult { job_id: assigned[0].job_id, attempt: assigned[0].attempt, exit_code: Some(0), error: None },
        AttemptResult { job_id: assigned[1].job_id, attempt: assigned[1].attempt, exit_code: Some(1), error: None },
    ];
    assignment::finish_many(&mut connection, worker, &results, 0.5).await.expect("finish");
    assignment::abandon_worker(&mut connection, worker, "gone", 0.5).await.expect("abandon");

    let recorded: Vec<(Uuid, Option<i64>, String, i32)> =
        sqlx::query_as("select job_id, instance_id, outcome, cpu_millis from job_attempts order by id")
            .fetch_all(&pool)
            .await
            .expect("attempts");
    let ledger_id: i64 = sqlx::query_scalar("select id from instances").fetch_one(&pool).await.expect("ledger");
    let outcomes: Vec<&str> = recorded.iter().map(|(_, _, outcome, _)| outcome.as_str()).collect();
    assert_eq!(outcomes, ["succeeded", "failed", "retried"], "{recorded:?}");
    assert!(recorded.iter().all(|(_, instance, _, cpu)| *instance == Some(ledger_id) && *cpu == 1000));

    // Rolled up as of now: the instance's cost so far, all of it accounted for.
    let rollup = CostRollup::new(pool.clone(), tracking());
    rollup.tick().await.expect("roll up").expect("the only replica leads the roll-up");
    // A second replica's roll-up skips its ticks while the first leads, and takes over
    // once the first gives the lease up.
    let other = CostRollup::new(pool.clone(), tracking());
    assert_eq!(other.tick().await.expect("tick"), None, "one replica rolls up at a time");
    assert!(rollup.tick().await.expect("renew").is_some(), "the leader keeps leading");
    rollup.leadership.release(&pool).await;
    assert!(other.tick().await.expect("take over").is_some(), "a released lease is taken at the next tick");
    let (launched, price): (DateTime<Utc>, f64) =
        sqlx::query_as("select launched_at, price_per_hour::float8 from instances")
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!(price, 3.6);
    let total: f64 =
        sqlx::query_scalar("select sum(amount)::float8 from cost_allocations").fetch_one(&pool).await.expect("total");
    let seconds: f64 = sqlx::query_scalar("select sum(seconds)::float8 from cost_allocations where kind = 'idle'")
        .fetch_one(&pool)
        .await
        .expect("seconds");
    assert!(within(total, seconds * price / 3600.0, 1e-6), "{total} vs {seconds} s");
    assert!(seconds <= (Utc::now() - launched).num_milliseconds() as f64 / 1000.0 + 1.0);
    let job_cost = cost::job_cost(&pool, assigned[0].job_id).await.expect("cost").expect("rolled up");
    assert!(!job_cost.unpriced && job_cost.amount.is_some());
}

/// An instance of the ledger, written as the reconcile leader would have, in the past.
async fn instance(
    pool: &PgPool,
    name: &str,
    shape: (i32, i32),
    price: Option<f64>,
    launched: DateTime<Utc>,
    terminated: Option<DateTime<Utc>>,
) -> i64 {
    sqlx::query_scalar(
        "insert into instances (pool_id, member_id, provider, instance, instance_type, capacity_type, region,
                                cpu_millis, memory_mib, price_per_hour, launched_at, terminated_at)
         values ($1, $2, 'aws-ec2', $3, 'm5.large', 'on_demand', 'eu-west-1', $4, $5, $6::numeric, $7, $8)
         returning id",
    )
    .bind(if name.starts_with("gpu") { "gpu" } else { "general" })
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(shape.0)
    .bind(shape.1)
    .bind(price)
    .bind(launched)
    .bind(terminated)
    .fetch_one(pool)
    .await
    .expect("instance")
}

struct Ran {
    job: Uuid,
    attempt: i32,
    tenant: Uuid,
    queue: &'static str,
    instance: i64,
    shape: (i32, i32),
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    outcome: &'static str,
}

async fn attempt(pool: &PgPool, ran: Ran) {
    sqlx::query(
        "insert into job_attempts (job_id, attempt, tenant_id, queue, pool, worker_id, instance_id, cpu_millis,
                                   memory_mib, started_at, ended_at, outcome)
         values ($1, $2, $3, $4, 'p', $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(ran.job)
    .bind(ran.attempt)
    .bind(ran.tenant)
    .bind(ran.queue)
    .bind(Uuid::now_v7())
    .bind(ran.instance)
    .bind(ran.shape.0)
    .bind(ran.shape.1)
    .bind(ran.from)
    .bind(ran.to)
    .bind(ran.outcome)
    .execute(pool)
    .await
    .expect("attempt");
}

#[tokio::test]
async fn attributed_plus_idle_is_what_every_instance_cost_and_tenants_see_only_their_own() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let acme = tenants::create(&pool, "acme", 1).await.expect("tenant").id;
    let globex = tenants::create(&pool, "globex", 1).await.expect("tenant").id;
    // Six hours ago on the hour, plus 7 minutes: buckets are cut mid-instance.
    let base =
        (Utc::now() - Duration::hours(8)).duration_trunc(Duration::hours(1)).expect("hour") + Duration::minutes(7);
    let at = |minutes: i64| base + Duration::minutes(minutes);
    let now = at(6 * 60 + 23);
    let instances = [
        // (id, price, launched, terminated)
        (instance(&pool, "i-a", (4000, 16384), Some(0.192), at(0), Some(at(200))).await, Some(0.192), at(0), at(200)),
        (instance(&pool, "i-b", (2000, 8192), Some(0.096), at(30), None).await, Some(0.096), at(30), now),
        (instance(&pool, "i-c", (8000, 32768), None, at(10), Some(at(95))).await, None, at(10), at(95)),
        (instance(&pool, "gpu-d", (16000, 65536), Some(3.06), at(100), None).await, Some(3.06), at(100), now),
    ];
    let (a, b, c, d) = (instances[0].0, instances[1].0, instances[2].0, instances[3].0);
    let jobs: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    let ran = |job: usize, attempt: i32, tenant: Uuid, instance: i64, shape: (i32, i32), from: i64, to: i64| Ran {
        job: jobs[job],
        attempt,
        tenant,
        queue: if job.is_multiple_of(2) { "default" } else { "high" },
        instance,
        shape,
        from: at(from),
        to: at(to),
        outcome: "succeeded",
    };
    // Overlapping jobs of different shapes on `a`, overcommitted between 40 and 70.
    attempt(&pool, ran(0, 1, acme, a, (4000, 16384), 5, 70)).await;
    attempt(&pool, ran(1, 1, globex, a, (2000, 4096), 40, 130)).await;
    attempt(&pool, Ran { outcome: "retried", ..ran(2, 1, acme, a, (1000, 1024), 50, 61) }).await;
    // Its retry on `b`, across an hour boundary, then an idle gap and a cancelled job.
    attempt(&pool, ran(2, 2, acme, b, (1000, 1024), 61, 190)).await;
    attempt(&pool, Ran { outcome: "cancelled", ..ran(3, 1, globex, b, (2000, 8192), 250, 262) }).await;
    // On the unpriced instance.
    attempt(&pool, ran(4, 1, globex, c, (4000, 4096), 20, 80)).await;
    // A job asking for more than the instance has, and one still running past `now`.
    attempt(&pool, ran(5, 1, acme, d, (32000, 1024), 120, 300)).await;
    attempt(&pool, ran(6, 1, globex, d, (8000, 32768), 290, 400)).await;

    let rollup = CostRollup::new(pool.clone(), tracking());
    rollup.tick_at(now).await.expect("roll up");
    // Rolled again (and the last closed hour once more): nothing counts twice.
    rollup.tick_at(now).await.expect("roll up again");

    let mut expected_total = 0.0;
    for (id, price, launched, ended) in instances {
        let seconds = (ended - launched).num_seconds() as f64;
        let (amount, accounted): (Option<f64>, f64) = sqlx::query_as(
            "select sum(amount)::float8, sum(seconds) filter (where kind = 'idle')::float8
               from cost_allocations where instance_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("instance sum");
        assert!(within(accounted, seconds, 1e-9), "instance {id}: {accounted} s accounted of {seconds}");
        match price {
            Some(price) => {
                let expected = seconds * price / 3600.0;
                let amount = amount.expect("priced");
                assert!(within(amount, expected, 0.001), "instance {id}: {amount} vs {expected}");
                expected_total += expected;
            }
            None => assert_eq!(amount, None, "an unpriced instance costs nothing known"),
        }
    }
    let total: f64 =
        sqlx::query_scalar("select sum(amount)::float8 from cost_allocations").fetch_one(&pool).await.expect("total");
    assert!(within(total, expected_total, 0.001), "{total} vs {expected_total}");
    let by_pool: f64 =
        sqlx::query_scalar("select sum(amount)::float8 from cost_by_pool_day").fetch_one(&pool).await.expect("by pool");
    assert!(within(by_pool, expected_total, 1e-9));

    // The job on the unpriced instance is unpriced, never free.
    let unpriced = cost::job_cost(&pool, jobs[4]).await.expect("cost").expect("rolled up");
    assert!(unpriced.unpriced && unpriced.amount.is_none());
    // The retried job pays for both attempts.
    let retried = cost::job_cost(&pool, jobs[2]).await.expect("cost").expect("rolled up");
    assert!(!retried.unpriced && retried.amount.expect("priced") > 0.0);
    // A job that asked for more than `d` has pays for all of its CPU share, no more.
    let greedy = cost::job_cost(&pool, jobs[5]).await.expect("cost").expect("rolled up");
    let weights = Weighting::default().weights_for(16000, 65536);
    let cpu_share = weights.cpu + weights.memory * 1024.0 / 65536.0;
    let at_most = cpu_share * 180.0 * 60.0 * 3.06 / 3600.0;
    assert!(greedy.amount.expect("priced") <= at_most * 1.000001);

    // Tenants see their own attempts and no idle cost; together, everything attributed.
    let today = now.date_naive();
    let from = base.date_naive();
    let all = cost::report(&pool, GroupBy::Pool, from, today, ReportScope::All).await.expect("report");
    let attributed: f64 = all.iter().map(|row| row.attributed_amount).sum();
    let idle: f64 = all.iter().map(|row| row.idle_amount).sum();
    assert!(within(attributed + idle, expected_total, 1e-9));
    assert!(idle > 0.0);
    let mut tenants_total = 0.0;
    for (tenant, own_jobs) in [(acme, [0usize, 2, 5].as_slice()), (globex, [1usize, 3, 4, 6].as_slice())] {
        let scope = ReportScope::Tenant(tenant);
        let rows = cost::report(&pool, GroupBy::Pool, from, today, scope).await.expect("report");
        assert!(rows.iter().all(|row| row.idle_amount == 0.0), "{rows:?}");
        let seen: f64 = rows.iter().map(|row| row.attributed_amount).sum();
        let mut own = 0.0;
        for &job in own_jobs {
            own += cost::job_cost(&pool, jobs[job]).await.expect("cost").expect("rolled").amount.unwrap_or(0.0);
        }
        assert!(within(seen, own, 1e-9), "tenant {tenant}: {seen} vs its jobs' {own}");
        let by_tenant = cost::report(&pool, GroupBy::Tenant, from, today, scope).await.expect("report");
        assert_eq!(by_tenant.len(), 1, "{by_tenant:?}");
        tenants_total += seen;
    }
    assert!(within(tenants_total, attributed, 1e-9));
}

/// The `_day` views of one UTC day: (pool total, tenant total and attempts, idle share-seconds).
async fn day_views(pool: &PgPool, day: chrono::NaiveDate) -> (Option<f64>, Option<(f64, i64)>, Option<f64>) {
    let by_pool: Option<f64> = sqlx::query_scalar("select sum(amount)::float8 from cost_by_pool_day where day = $1")
        .bind(day)
        .fetch_one(pool)
        .await
        .expect("by pool");
    let by_tenant: Option<(f64, i64)> =
        sqlx::query_as("select amount::float8, attempts from cost_by_tenant_day where day = $1")
            .bind(day)
            .fetch_optional(pool)
            .await
            .expect("by tenant");
    let idle: Option<f64> =
        sqlx::query_scalar("select sum(idle_share_seconds)::float8 from idle_cost_by_pool_day where day = $1")
            .bind(day)
            .fetch_one(pool)
            .await
            .expect("idle");
    (by_pool, by_tenant, idle)
}

#[tokio::test]
async fn pruning_past_the_retention_keeps_the_daily_roll_up() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let acme = tenants::create(&pool, "acme", 1).await.expect("tenant").id;
    // Forty days ago: an instance up for two hours at 0.36 an hour, a job on it for one.
    let day = (Utc::now() - Duration::days(40)).duration_trunc(Duration::days(1)).expect("day");
    let at = |minutes: i64| day + Duration::minutes(minutes);
    let old = instance(&pool, "i-old", (2000, 8192), Some(0.36), at(60), Some(at(180))).await;
    let job = Uuid::now_v7();
    let ran = Ran {
        job,
        attempt: 1,
        tenant: acme,
        queue: "default",
        instance: old,
        shape: (1000, 4096),
        from: at(60),
        to: at(120),
        outcome: "succeeded",
    };
    attempt(&pool, ran).await;
    CostRollup::new(pool.clone(), tracking()).tick_at(at(23 * 60)).await.expect("roll up that day");
    let before = day_views(&pool, day.date_naive()).await;
    assert!(within(before.0.expect("a pool line"), 0.72, 1e-9), "{before:?}");
    assert_eq!(before.1.map(|(_, attempts)| attempts), Some(1), "{before:?}");
    assert!(before.2.expect("idle") > 0.0, "{before:?}");

    // Forty days on, with a retention of thirty: the detail goes, the day stays.
    let pruning = CostRollup { retention_days: 30, max_buckets: 2, ..CostRollup::new(pool.clone(), tracking()) };
    pruning.tick_at(Utc::now()).await.expect("roll up and prune");
    let left: (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from cost_allocations), (select count(*) from job_attempts),
                (select count(*) from instances)",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!(left, (0, 0, 0), "allocations, attempts and instances past the retention are pruned");
    assert_eq!(cost::job_cost(&pool, job).await.expect("cost"), None, "a job's cost goes with the detail");
    let after = day_views(&pool, day.date_naive()).await;
    assert_eq!(after, before, "the daily views answer from the daily roll-up");
    let report =
        cost::report(&pool, GroupBy::Day, day.date_naive(), day.date_naive(), ReportScope::All).await.expect("report");
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(within(report[0].attributed_amount + report[0].idle_amount, 0.72, 1e-9), "{report:?}");
}

#[tokio::test]
async fn an_attempt_on_a_worker_no_instance_records_is_unpriced_and_a_missing_price() {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let acme = tenants::create(&pool, "acme", 1).await.expect("tenant").id;
    let (job, worker) = (Uuid::now_v7(), Uuid::now_v7());
    let now = Utc::now();
    sqlx::query(
        "insert into job_attempts (job_id, attempt, tenant_id, queue, pool, worker_id, instance_id, cpu_millis,
                                   memory_mib, started_at, ended_at, outcome)
         values ($1, 1, $2, 'default', 'by-hand', $3, null, 1000, 512, $4, $5, 'succeeded')",
    )
    .bind(job)
    .bind(acme)
    .bind(worker)
    .bind(now - Duration::minutes(90))
    .bind(now - Duration::minutes(60))
    .execute(&pool)
    .await
    .expect("attempt");
    let cost = cost::job_cost(&pool, job).await.expect("cost").expect("an attempt ran");
    assert!(cost.unpriced && cost.amount.is_none(), "unpriced, never free: {cost:?}");

    let facts =
        hodei_api::store::recommendations::facts(&pool, now - Duration::days(1), now, 600).await.expect("facts");
    let unrecorded: Vec<_> = facts
        .unpriced
        .iter()
        .filter(|unpriced| unpriced.provider == hodei_core::recommend::UNRECORDED_PROVIDER)
        .collect();
    assert_eq!(unrecorded.len(), 1, "{:?}", facts.unpriced);
    assert_eq!((unrecorded[0].pool.as_str(), unrecorded[0].instances), ("by-hand", 1));
    assert!(within(unrecorded[0].instance_hours, 0.5, 1e-6), "{:?}", unrecorded[0]);
}
