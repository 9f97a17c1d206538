//! Spot prices: observed at launch from the spot market, refreshed while instances run,
//! and applied by the roll-up from the moment they change. Against a real Postgres and a
//! real `moto_server` (which quotes every offered type and zone at 0.00001), with a fault
//! proxy in front of it for a failing spot market.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, DurationRound, Utc};
use hodei_api::loops::{CostRollup, SpotPriceRefresh};
use hodei_api::provider::Providers;
use hodei_api::reconcile::Reconciler;
use hodei_api::store::cost::{self, Tracking};
use hodei_api::store::pools;
use hodei_api::testing::TestDatabase;
use hodei_core::cost::Weighting;
use hodei_core::pool::PoolSpec;
use hodei_provider_aws::testing::{self, Fault, FaultProxy, MotoServer};
use hodei_provider_aws::{AwsClients, Ec2Provider};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// moto's spot price for every instance type and zone.
const MOTO_SPOT_PRICE: f64 = 0.00001;

fn tracking() -> Tracking {
    Tracking { by_tenant: true, by_job: true, weighting: Weighting::default() }
}

fn within(actual: f64, expected: f64, fraction: f64) -> bool {
    (actual - expected).abs() <= fraction * expected.abs().max(1e-12)
}

async fn moto() -> MotoServer {
    testing::use_test_credentials();
    MotoServer::start()
        .await
        .unwrap_or_else(|error| panic!("these tests need moto ({}): {error}", testing::MOTO_INSTALL))
}

/// An `aws-ec2` provider whose AWS is at `endpoint`, and its clients.
async fn ec2(endpoint: &str) -> (Ec2Provider, AwsClients) {
    let settings = testing::settings(endpoint, "spot-tests");
    let clients = AwsClients::connect_with_retry(&settings, testing::fast_retry()).await;
    (Ec2Provider::new(clients.clone(), settings), clients)
}

/// A spot pool of `aws-ec2` m5.large instances.
async fn spot_pool(db: &PgPool, clients: &AwsClients, id: &str, size: u32) -> PoolSpec {
    let images = clients.ec2.describe_images().owners("amazon").send().await.expect("images");
    let image = images.images().iter().find_map(|image| image.image_id()).expect("an image").to_owned();
    let spec: PoolSpec = serde_json::from_value(json!({
        "id": id, "provider": "aws-ec2", "size": size,
        "template": {"image": image, "cpu_millis": 2000, "memory_mib": 8192},
        "cloud": {"instance_types": ["m5.large"], "capacity_type": "spot", "region": "us-east-1"},
    }))
    .expect("spec");
    pools::create(db, &spec).await.expect("create").expect("a new pool");
    spec
}

async fn list_price(db: &PgPool, price_per_hour: f64) {
    let price = cost::Price {
        provider: "aws-ec2".to_owned(),
        instance_type: "m5.large".to_owned(),
        capacity_type: "spot".to_owned(),
        region: "*".to_owned(),
        price_per_hour,
        currency: "USD".to_owned(),
        cpu_millis: None,
        memory_mib: None,
    };
    cost::upsert_prices(db, &[price]).await.expect("price");
}

/// A ledger row, as the reconcile leader would have written it, in the past.
async fn instance(db: &PgPool, pool: &str, capacity_type: &str, price: f64, launched: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(
        "insert into instances (pool_id, member_id, provider, instance, instance_type, capacity_type, region,
                                cpu_millis, memory_mib, price_per_hour, launched_at)
         values ($1, $2, 'aws-ec2', $3, 'm5.large', $4, 'us-east-1', 2000, 8192, $5::numeric, $6)
         returning id",
    )
    .bind(pool)
    .bind(Uuid::now_v7())
    .bind(format!("i-{}", Uuid::now_v7().simple()))
    .bind(capacity_type)
    .bind(price)
    .bind(launched)
    .fetch_one(db)
    .await
    .expect("instance")
}

async fn changes(db: &PgPool, instance: i64) -> Vec<(DateTime<Utc>, Option<f64>, String)> {
    sqlx::query_as(
        "select effective_from, price_per_hour::float8, source from instance_prices
          where instance_id = $1 order by effective_from",
    )
    .bind(instance)
    .fetch_all(db)
    .await
    .expect("changes")
}

/// What the roll-up charged for the instance (attributed + idle), per bucket.
async fn charged(db: &PgPool, instance: i64) -> Vec<(DateTime<Utc>, f64, f64)> {
    sqlx::query_as(
        "select bucket_start, sum(amount)::float8, sum(seconds) filter (where kind = 'idle')::float8
           from cost_allocations where instance_id = $1 group by bucket_start order by bucket_start",
    )
    .bind(instance)
    .fetch_all(db)
    .await
    .expect("allocations")
}

#[tokio::test]
async fn a_price_that_changes_mid_life_is_charged_from_the_moment_it_changes() {
    let database = TestDatabase::migrated().await;
    let db = database.pool().await;
    let tenant = hodei_api::store::tenants::create(&db, "acme", 1).await.expect("tenant").id;
    // Launched at 0.05 seven minutes past an hour, five hours ago; the market moved to
    // 0.08 at 1:30 into its life and to 0.02 at 3:20.
    let base =
        (Utc::now() - Duration::hours(6)).duration_trunc(Duration::hours(1)).expect("hour") + Duration::minutes(7);
    let at = |minutes: i64| base + Duration::minutes(minutes);
    let now = at(5 * 60);
    let id = instance(&db, "spot", "spot", 0.05, at(0)).await;
    for (minutes, price) in [(90, 0.08), (200, 0.02)] {
        sqlx::query(
            "insert into instance_prices (instance_id, effective_from, price_per_hour, source)
             values ($1, $2, $3::numeric, 'spot_market')",
        )
        .bind(id)
        .bind(at(minutes))
        .bind(price)
        .execute(&db)
        .await
        .expect("change");
    }
    // A job holding half the instance across the first change: 60..120.
    let job = Uuid::now_v7();
    sqlx::query(
        "insert into job_attempts (job_id, attempt, tenant_id, queue, pool, worker_id, instance_id, cpu_millis,
                                   memory_mib, started_at, ended_at, outcome)
         values ($1, 1, $2, 'default', 'spot', $3, $4, 1000, 4096, $5, $6, 'succeeded')",
    )
    .bind(job)
    .bind(tenant)
    .bind(Uuid::now_v7())
    .bind(id)
    .bind(at(60))
    .bind(at(120))
    .execute(&db)
    .await
    .expect("attempt");

    let rollup = CostRollup::new(db.clone(), tracking());
    rollup.tick_at(now).await.expect("roll up");
    rollup.tick_at(now).await.expect("roll up again");

    // The price in force at every moment of the instance's life.
    let price_at = |time: DateTime<Utc>| {
        if time < at(90) {
            0.05
        } else if time < at(200) {
            0.08
        } else {
            0.02
        }
    };
    let mut expected_total = 0.0;
    let buckets = charged(&db, id).await;
    assert_eq!(buckets.len(), 6, "{buckets:?}");
    for (bucket, amount, seconds) in &buckets {
        let (from, to) = ((*bucket).max(at(0)), (*bucket + Duration::hours(1)).min(now));
        // Σ seconds × price in force, a minute at a time (the changes fall on minutes).
        let mut expected = 0.0;
        let mut minute = from;
        while minute < to {
            expected += 60.0 * price_at(minute) / 3600.0;
            minute += Duration::minutes(1);
        }
        assert!(within(*seconds, (to - from).num_seconds() as f64, 1e-9), "{bucket}: {seconds} s");
        assert!(within(*amount, expected, 0.001), "{bucket}: charged {amount}, expected {expected}");
        expected_total += expected;
    }
    // The hour before the first change costs the old price (53 minutes of it), the hour
    // after it the new.
    let hour = |time: DateTime<Utc>| time.duration_trunc(Duration::hours(1)).expect("hour");
    let amount_of = |bucket: DateTime<Utc>| buckets.iter().find(|(b, _, _)| *b == bucket).map(|(_, a, _)| *a);
    assert!(within(amount_of(hour(at(0))).expect("the hour before"), 0.05 * 53.0 / 60.0, 1e-6));
    assert!(within(amount_of(hour(at(120))).expect("the hour after"), 0.08, 1e-6));
    let total: f64 = sqlx::query_scalar("select sum(amount)::float8 from cost_allocations where instance_id = $1")
        .bind(id)
        .fetch_one(&db)
        .await
        .expect("total");
    assert!(within(total, expected_total, 0.001), "{total} vs {expected_total}");
    // The job pays its share (0.65 × 1/2 + 0.35 × 1/2) at each price for its time.
    let share = 0.65 * 0.5 + 0.35 * 0.5;
    let expected_job = share * (30.0 * 60.0 * 0.05 + 30.0 * 60.0 * 0.08) / 3600.0;
    let job_cost = cost::job_cost(&db, job).await.expect("cost").expect("rolled up");
    assert!(within(job_cost.amount.expect("priced"), expected_job, 0.001), "{job_cost:?} vs {expected_job}");
}

#[tokio::test]
async fn the_refresh_records_each_move_once_and_the_roll_up_applies_it() {
    let database = TestDatabase::migrated().await;
    let db = database.pool().await;
    let moto = moto().await;
    let (provider, clients) = ec2(&moto.url()).await;
    spot_pool(&db, &clients, "spot", 2).await;
    let providers = Providers::default().with("aws-ec2", Arc::new(provider));
    let base =
        (Utc::now() - Duration::hours(4)).duration_trunc(Duration::hours(1)).expect("hour") + Duration::minutes(10);
    let at = |minutes: i64| base + Duration::minutes(minutes);
    // Launched at the list's 0.05, at the market's price, terminated, and on demand.
    let listed = instance(&db, "spot", "spot", 0.05, at(0)).await;
    let at_market = instance(&db, "spot", "spot", MOTO_SPOT_PRICE, at(0)).await;
    let ended = instance(&db, "spot", "spot", 0.05, at(0)).await;
    sqlx::query("update instances set terminated_at = $2 where id = $1")
        .bind(ended)
        .bind(at(30))
        .execute(&db)
        .await
        .expect("terminate");
    let on_demand = instance(&db, "spot", "on_demand", 0.096, at(0)).await;

    let refresh = SpotPriceRefresh::new(db.clone(), providers.clone());
    let done = refresh.tick_at(at(100)).await.expect("refresh");
    assert_eq!((done.pools, done.observed, done.changed), (1, 2, 1), "{done:?}");
    assert_eq!(changes(&db, listed).await, [(at(100), Some(MOTO_SPOT_PRICE), "spot_market".to_owned())]);
    for unchanged in [at_market, ended, on_demand] {
        assert_eq!(changes(&db, unchanged).await, [], "instance {unchanged}");
    }
    // Refreshed again with the same market: nothing new.
    assert_eq!(refresh.tick_at(at(160)).await.expect("refresh").changed, 0);

    // Two replicas refreshing at once: a new instance's move is recorded once.
    let late = instance(&db, "spot", "spot", 0.05, at(150)).await;
    let other = SpotPriceRefresh::new(db.clone(), providers);
    let (first, second) = tokio::join!(refresh.tick_at(at(170)), other.tick_at(at(170) + Duration::seconds(1)));
    assert_eq!(first.expect("refresh").changed + second.expect("refresh").changed, 1);
    assert_eq!(changes(&db, late).await.len(), 1);

    // The roll-up: 0.05 until the change at 100, moto's price after.
    let now = at(200);
    CostRollup::new(db.clone(), tracking()).tick_at(now).await.expect("roll up");
    let expected = (100.0 * 60.0 * 0.05 + 100.0 * 60.0 * MOTO_SPOT_PRICE) / 3600.0;
    let total: f64 = charged(&db, listed).await.iter().map(|(_, amount, _)| amount).sum();
    assert!(within(total, expected, 0.001), "{total} vs {expected}");
    let hour_of_change = at(100).duration_trunc(Duration::hours(1)).expect("hour");
    let (_, amount, seconds) = charged(&db, listed)
        .await
        .into_iter()
        .find(|(bucket, _, _)| *bucket == hour_of_change)
        .expect("the hour of the change");
    let before = (at(100) - hour_of_change).num_seconds() as f64;
    assert!(within(seconds, 3600.0, 1e-9));
    assert!(within(amount, (before * 0.05 + (3600.0 - before) * MOTO_SPOT_PRICE) / 3600.0, 0.001), "{amount}");
}

/// Reconciles until the pool's members all have an instance, within a deadline.
async fn reconcile_until_launched(reconciler: &Reconciler, db: &PgPool, pool: &str, size: usize) {
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(60);
    loop {
        reconciler.tick().await.expect("reconcile");
        let launched = pools::members(db, pool).await.expect("members").iter().filter(|m| m.instance.is_some()).count();
        if launched >= size {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{launched} of {size} launched");
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
}

async fn launch_prices(db: &PgPool, pool: &str) -> Vec<Option<f64>> {
    sqlx::query_scalar("select price_per_hour::float8 from instances where pool_id = $1 order by id")
        .bind(pool)
        .fetch_all(db)
        .await
        .expect("ledger")
}

#[tokio::test]
async fn spot_launches_are_priced_at_the_market_read_once_per_batch_or_else_at_the_list() {
    let database = TestDatabase::migrated().await;
    let db = database.pool().await;
    let moto = moto().await;
    let proxy = FaultProxy::start(moto.addr()).await.expect("proxy");
    let (provider, clients) = ec2(&proxy.url()).await;
    list_price(&db, 0.04).await;
    let providers = Providers::default().with("aws-ec2", Arc::new(provider));
    let reconciler = Reconciler::new(db.clone(), providers, StdDuration::from_secs(5));

    // Three launches in one batch: one reading of the market, each at its price.
    spot_pool(&db, &clients, "market", 3).await;
    reconcile_until_launched(&reconciler, &db, "market", 3).await;
    assert_eq!(launch_prices(&db, "market").await, [Some(MOTO_SPOT_PRICE); 3]);
    assert_eq!(proxy.seen("DescribeSpotPriceHistory"), 1);
    // The next tick's listing tells the ledger each instance's zone, which prices it from then on.
    reconciler.tick().await.expect("reconcile");
    let zones: Vec<Option<String>> =
        sqlx::query_scalar("select zone from instances where pool_id = 'market' order by id")
            .fetch_all(&db)
            .await
            .expect("zones");
    let region = clients.region.clone();
    assert!(
        zones.len() == 3 && zones.iter().all(|zone| zone.as_deref().is_some_and(|z| z.starts_with(region.as_str()))),
        "{zones:?} in {region}"
    );

    // The market refuses: the launches still happen, at the list's price.
    proxy.add(Fault {
        action: Some("DescribeSpotPriceHistory".into()),
        body_contains: None,
        times: None,
        status: 403,
        code: "UnauthorizedOperation".into(),
        message: "You are not authorized to perform this operation.".into(),
    });
    spot_pool(&db, &clients, "listed", 2).await;
    reconcile_until_launched(&reconciler, &db, "listed", 2).await;
    assert_eq!(launch_prices(&db, "listed").await, [Some(0.04); 2]);
    assert!(proxy.faulted("DescribeSpotPriceHistory") >= 1);
}
