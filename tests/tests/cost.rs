//! Cost end to end: a local pool runs two tenants' jobs (different shapes, a retry, a
//! cancellation, idle time); the roll-up prices its workers; every job shows its cost,
//! each tenant's report holds only its own costs, the CSV report parses with a standard
//! reader and adds up to the JSON one, and attributed + idle is what the workers cost.

use std::time::Duration;

use hodei_e2e::{free_port, wait_until, Client, ConfigFile, Server, TestDatabase};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn submit(client: &Client, argv: &[&str], cpu_millis: u32, memory_mib: u32, max_attempts: u32) -> String {
    let body = json!({"command": {"argv": argv}, "resources": {"cpu_millis": cpu_millis, "memory_mib": memory_mib},
        "max_attempts": max_attempts});
    let reply = client.post("/api/v1/jobs", body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    reply.body["id"].as_str().expect("id").to_owned()
}

async fn job(client: &Client, id: &str) -> Value {
    let reply = client.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

async fn put(client: &Client, path: &str, body: Value) -> hodei_e2e::Reply {
    client.send(Method::PUT, path, Some(body.to_string().into_bytes()), &[]).await
}

fn close(left: f64, right: f64, fraction: f64) -> bool {
    (left - right).abs() <= fraction * right.abs().max(1e-9)
}

#[tokio::test]
async fn jobs_show_their_cost_and_tenants_see_only_their_own() {
    let database = TestDatabase::empty().await;
    let config = ConfigFile::new(
        "pools:\n  - id: pair\n    size: 2\n    template: {slots: 2, cpu_millis: 2000, memory_mib: 2048}\n\
         cost_tracking:\n  rollup_interval_seconds: 1\n  local_price_per_worker_hour: 36\n",
    );
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(config.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let acme = server.tenant("acme").await;
    let globex = server.tenant("globex").await;

    // Prices: refused with the field named, changing nothing; the local price is in force.
    let refused = put(
        &admin,
        "/api/v1/prices",
        json!({"prices": [
        {"provider": "aws-ec2", "instance_type": "m5.large", "price_per_hour": -1}]}),
    )
    .await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(refused.body.to_string().contains("prices[0].price_per_hour"), "{refused:?}");
    for (price, field) in [
        (
            json!({"provider": "aws-ec2", "instance_type": "m5.large", "price_per_hour": 0.1, "currency": "EUR"}),
            "prices[0].currency",
        ),
        (
            json!({"provider": "aws-ec2", "instance_type": "m5 large!", "price_per_hour": 0.1}),
            "prices[0].instance_type",
        ),
    ] {
        let refused = put(&admin, "/api/v1/prices", json!({"prices": [price]})).await;
        refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(refused.body["errors"][0]["field"], field, "{refused:?}");
    }
    // More prices than a list may hold: refused by count, not by the size of the body.
    let too_many: Vec<Value> = (0..10_001)
        .map(|i| json!({"provider": "aws-ec2", "instance_type": format!("t{i}"), "price_per_hour": 0.1}))
        .collect();
    let refused = put(&admin, "/api/v1/prices", json!({"prices": too_many})).await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(refused.body["errors"][0]["field"], "prices", "{refused:?}");
    let refused = put(&acme, "/api/v1/prices", json!({"prices": []})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let prices = admin.get("/api/v1/prices").await;
    assert_eq!(prices.body["prices"][0]["provider"], "local", "{prices:?}");
    assert_eq!(prices.body["prices"][0]["price_per_hour"], 36.0, "{prices:?}");

    // Jobs of different shapes, overlapping; one fails then succeeds on retry, one is
    // cancelled while it runs; then the workers sit idle.
    let marker = std::env::temp_dir().join(format!("hodei-cost-retry-{}", free_port()));
    let retry_script = format!("test -e {0} || {{ touch {0}; exit 1; }}; sleep 1", marker.display());
    let mut acme_jobs = vec![
        submit(&acme, &["sleep", "2"], 1000, 512, 1).await,
        submit(&acme, &["sh", "-c", &retry_script], 500, 256, 3).await,
    ];
    let mut globex_jobs = vec![
        submit(&globex, &["sleep", "1"], 2000, 2048, 1).await,
        submit(&globex, &["sleep", "1"], 250, 128, 1).await,
    ];
    let cancelled = submit(&globex, &["sleep", "30"], 500, 512, 1).await;
    wait_until("the long job to run", Duration::from_secs(60), async || {
        (job(&globex, &cancelled).await["state"] == "running").then_some(())
    })
    .await;
    let reply = globex.post(&format!("/api/v1/jobs/{cancelled}/cancel"), json!({})).await;
    assert!(reply.status.is_success(), "{reply:?}");
    globex_jobs.push(cancelled);
    for (client, ids) in [(&acme, &acme_jobs), (&globex, &globex_jobs)] {
        for id in ids {
            wait_until(&format!("job {id} to end"), Duration::from_secs(90), async || {
                let state = job(client, id).await["state"].clone();
                ["succeeded", "cancelled", "dead_lettered"].iter().any(|s| state == *s).then_some(())
            })
            .await;
        }
    }
    let _ = std::fs::remove_file(&marker);
    // Every job is priced once rolled up (the roll-up runs every second here).
    for (client, ids) in [(&acme, &acme_jobs), (&globex, &globex_jobs)] {
        for id in ids {
            let cost = wait_until(&format!("job {id}'s cost"), Duration::from_secs(30), async || {
                let cost = job(client, id).await["cost"].clone();
                cost.is_object().then_some(cost)
            })
            .await;
            assert_eq!(cost["unpriced"], false, "{cost}");
            assert_eq!(cost["currency"], "USD", "{cost}");
            assert!(cost["amount"].as_f64().is_some_and(|amount| amount > 0.0), "{cost}");
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.stop().await;

    // The same database served without the roll-up, so the numbers hold still while read.
    let frozen = ConfigFile::new("cost_tracking:\n  enabled: false\n");
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(frozen.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let admin = server.admin();
    let acme = Client::new(&server.url, acme.key());
    let globex = Client::new(&server.url, globex.key());
    acme_jobs.extend(globex_jobs.iter().cloned());
    let all_jobs = acme_jobs;

    let by_pool = admin.get("/api/v1/cost-reports?group_by=pool").await;
    assert_eq!(by_pool.status, StatusCode::OK, "{by_pool:?}");
    let lines = by_pool.body["lines"].as_array().expect("lines").clone();
    assert_eq!(lines.len(), 1, "{by_pool:?}");
    let (attributed, idle) =
        (lines[0]["attributed_amount"].as_f64().expect("number"), lines[0]["idle_amount"].as_f64().expect("number"));
    assert!(idle > 0.0 && attributed > 0.0, "{by_pool:?}");
    let total = by_pool.body["total"].as_f64().expect("total");
    assert!(close(attributed + idle, total, 1e-9));

    // The scrape's month-to-date gauges are the same numbers (the run is within one month).
    let scrape = admin.get("/metrics").await.body.as_str().unwrap_or_default().to_owned();
    let gauge = |prefix: &str| -> f64 {
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {scrape}"))
    };
    assert!(close(gauge("hodei_pool_cost_month_usd{pool=\"pair\",part=\"attributed\"} "), attributed, 1e-9));
    assert!(close(gauge("hodei_pool_cost_month_usd{pool=\"pair\",part=\"idle\"} "), idle, 1e-9));
    let tenants_month = gauge("hodei_tenant_cost_month_usd{tenant=\"acme\"} ")
        + gauge("hodei_tenant_cost_month_usd{tenant=\"globex\"} ");
    assert!(close(tenants_month, attributed, 1e-9), "{tenants_month} vs {attributed}");

    // What the workers cost: the seconds the roll-up accounted for, at the local price.
    let pool = sqlx::PgPool::connect(&database.url).await.expect("connect");
    let (instance_seconds, instances): (f64, i64) = sqlx::query_as(
        "select sum(seconds)::float8, count(distinct instance_id) from cost_allocations where kind = 'idle'",
    )
    .fetch_one(&pool)
    .await
    .expect("seconds");
    assert!(instances >= 2, "{instances} instances");
    assert!(close(total, instance_seconds * 36.0 / 3600.0, 0.001), "{total} vs {instance_seconds} s");
    let ledger_seconds: f64 = sqlx::query_scalar(
        "select sum(extract(epoch from least(coalesce(terminated_at, now()), now()) - launched_at))::float8 from instances",
    )
    .fetch_one(&pool)
    .await
    .expect("ledger");
    assert!(instance_seconds <= ledger_seconds + 1.0, "{instance_seconds} s accounted of {ledger_seconds}");

    // The jobs' costs add up to what was attributed.
    let mut jobs_total = 0.0;
    for id in &all_jobs {
        jobs_total += job(&admin, id).await["cost"]["amount"].as_f64().expect("priced");
    }
    assert!(close(jobs_total, attributed, 1e-6), "{jobs_total} vs {attributed}");

    // Each tenant sees its own costs and no idle cost; together, everything attributed.
    let mut tenants_total = 0.0;
    for (client, name) in [(&acme, "acme"), (&globex, "globex")] {
        for group_by in ["tenant", "pool", "queue", "day"] {
            let report = client.get(&format!("/api/v1/cost-reports?group_by={group_by}")).await;
            assert_eq!(report.status, StatusCode::OK, "{report:?}");
            for line in report.body["lines"].as_array().expect("lines") {
                assert_eq!(line["idle_amount"], 0.0, "{report:?}");
                if group_by == "tenant" {
                    assert_eq!(line["key"], name, "{report:?}");
                }
            }
        }
        let own = client.get("/api/v1/cost-reports?group_by=tenant").await;
        tenants_total += own.body["total"].as_f64().expect("total");
    }
    assert!(close(tenants_total, attributed, 1e-9), "{tenants_total} vs {attributed}");
    // Another tenant's job, and so its cost, is not there for a tenant key.
    let foreign = acme.get(&format!("/api/v1/jobs/{}", globex_jobs[0])).await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND, "{foreign:?}");
    assert!(foreign.body.get("cost").is_none(), "{foreign:?}");

    // CSV: a standard reader parses it, and its totals are the JSON's.
    for group_by in ["tenant", "pool", "queue", "day"] {
        let path = format!("/api/v1/cost-reports?group_by={group_by}");
        let json_report = admin.get(&path).await;
        let csv_report = admin.send(Method::GET, &path, None, &[("accept", "text/csv")]).await;
        assert_eq!(csv_report.status, StatusCode::OK);
        assert!(csv_report.header("content-type").is_some_and(|t| t.starts_with("text/csv")), "{csv_report:?}");
        let text = csv_report.body.as_str().expect("text").to_owned();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let headers = reader.headers().expect("a header line").clone();
        assert_eq!(&headers[0], group_by);
        let amount = headers.iter().position(|name| name == "amount").expect("an amount column");
        let mut csv_total = 0.0;
        let mut rows = 0;
        for record in reader.records() {
            let record = record.expect("a record");
            csv_total += record[amount].parse::<f64>().expect("a number");
            rows += 1;
        }
        assert_eq!(rows, json_report.body["lines"].as_array().expect("lines").len());
        assert!(close(csv_total, json_report.body["total"].as_f64().expect("total"), 1e-9), "{text}");
    }

    // Ranges: `from` after `to`, or longer than the retention, name the field.
    let reply = admin.get("/api/v1/cost-reports?from=2026-12-10&to=2026-12-01").await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_range");
    assert!(reply.body["detail"].as_str().is_some_and(|d| d.starts_with("from:")), "{reply:?}");
    let reply = admin.get("/api/v1/cost-reports?from=2025-01-01&to=2026-12-01").await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_range");
    assert!(reply.body["detail"].as_str().is_some_and(|d| d.starts_with("to:")), "{reply:?}");
    server.stop().await;

    // With the pool's idle cost spread over its tenants: each tenant's part is in proportion
    // to what its attempts were charged, and the parts add up to the pool's idle cost (one
    // pool, one day, both tenants ran on it).
    let spread = ConfigFile::new("cost_tracking:\n  enabled: false\n  spread_idle_to_tenants: true\n");
    let mut server = Server::spawn_configured(&database.url, free_port(), Some(spread.path()), &[]);
    server.wait_ready(Duration::from_secs(60)).await;
    let mut parts = Vec::new();
    for client in [&acme, &globex] {
        let client = Client::new(&server.url, client.key());
        let own = client.get("/api/v1/cost-reports?group_by=tenant").await;
        let line = &own.body["lines"][0];
        let (attributed_part, idle_part) =
            (line["attributed_amount"].as_f64().expect("number"), line["idle_amount"].as_f64().expect("number"));
        assert!(idle_part > 0.0, "{own:?}");
        assert!(close(line["amount"].as_f64().expect("amount"), attributed_part + idle_part, 1e-9), "{own:?}");
        parts.push((attributed_part, idle_part));
    }
    let idle_parts: f64 = parts.iter().map(|(_, idle)| idle).sum();
    assert!(close(idle_parts, idle, 1e-9), "{idle_parts} of {idle}");
    for (attributed_part, idle_part) in &parts {
        assert!(close(*idle_part, idle * attributed_part / attributed, 1e-9), "{parts:?}");
    }
    // By pool, nothing moved.
    let by_pool = server.admin().get("/api/v1/cost-reports?group_by=pool").await;
    assert!(close(by_pool.body["lines"][0]["idle_amount"].as_f64().expect("idle"), idle, 1e-12), "{by_pool:?}");
    server.stop().await;
}
