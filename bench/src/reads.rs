//! `hodei-bench reads`: whether list, filter and status reads stay flat as history grows.
//! It starts `hodei serve`, creates a tenant over the API and writes `--tenant-jobs` jobs
//! for it in a mix of states (with the rows that hold waiting and running jobs), plus
//! `--other-jobs` finished jobs of other tenants, directly in SQL, in time order over the
//! last week (ids are time-ordered, as `hodei` makes them). Then it times each read
//! `--samples` times, one after the other, as the tenant (`/metrics` and the lists marked
//! `admin:` as an admin).
//! Use a scratch database: the rows stay there (a new run adds more).

use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use hodei_api::config::Config;
use hodei_api::db;

use crate::e2e::{create_bench_tenant, percentile, start_server_with_env};

#[derive(Debug, Args)]
pub struct ReadsArgs {
    /// Jobs of the tenant the reads are made as: 40% queued, 40% succeeded, 10% dead
    /// letters, 5% cancelled, 4% scheduled, 1% running, interleaved through the week.
    #[arg(long, default_value_t = 1_000_000)]
    tenant_jobs: i64,
    /// Finished jobs of nine other tenants.
    #[arg(long, default_value_t = 9_000_000)]
    other_jobs: i64,
    /// Rows written per statement.
    #[arg(long, default_value_t = 500_000)]
    chunk: i64,
    #[arg(long, default_value_t = 30)]
    samples: usize,
    /// Read the jobs an earlier run wrote (as the tenant with the most waiting jobs)
    /// instead of writing more.
    #[arg(long)]
    reuse: bool,
}

/// Job `i` of `n`, in state `state`, created `(n - i)` steps before now over a week.
const JOBS: &str = "
    insert into jobs (id, tenant_id, queue, state, priority, argv, timeout_seconds, cpu_millis, memory_mib,
                      max_attempts, attempt, created_at, updated_at, queued_at, finished_at, dead_letter_reason)
    select (lpad(to_hex((extract(epoch from c.at) * 1000)::bigint), 12, '0') || substr(md5(random()::text), 1, 20))::uuid,
           $1, case when g.i % 3 = 0 then 'low' else 'default' end, s.state, 5, '[\"true\"]', 60, 100, 64,
           1, 1, c.at, c.at, c.at,
           case when s.state in ('succeeded', 'cancelled', 'dead_lettered') then c.at + interval '1 second' end,
           case when s.state = 'dead_lettered' then 'failed' end
      from generate_series($2::int8, $3::int8) as g(i)
      cross join lateral (select now() - interval '7 days' * ($4::int8 - g.i) / $4::int8 as at) c
      cross join lateral (select case when not $5 then 'succeeded'
                                      when g.i % 100 < 40 then 'queued'
                                      when g.i % 100 < 80 then 'succeeded'
                                      when g.i % 100 < 90 then 'dead_lettered'
                                      when g.i % 100 < 95 then 'cancelled'
                                      when g.i % 100 < 99 then 'scheduled'
                                      else 'running' end as state) s";

pub async fn reads(args: ReadsArgs, config: &Config) -> anyhow::Result<()> {
    // Without retention: the week of finished jobs stays for the reads.
    let (_server, url, admin_key) =
        start_server_with_env(config, &[("HODEI_RETENTION_ENABLED", "false".to_owned())]).await?;
    let client = reqwest::Client::new();
    let database_url = config.require_database_url()?.expose().to_owned();
    let pool = db::connect(&database_url, 2).await?;
    if args.reuse {
        let name: String = sqlx::query_scalar(
            "select t.name from ready_jobs r join tenants t on t.id = r.tenant_id group by t.name order by count(*) desc limit 1",
        )
        .fetch_one(&pool)
        .await
        .context("no waiting jobs of an earlier run")?;
        let response =
            client.post(format!("{url}/api/v1/tenants/{name}/api-keys")).bearer_auth(&admin_key).send().await?;
        let body: serde_json::Value = response.json().await?;
        let tenant_key = body["key"].as_str().context("the key response has no key")?.to_owned();
        return time_reads(&client, &url, &admin_key, &tenant_key, args.samples).await;
    }
    let tenant_key = create_bench_tenant(&client, &url, &admin_key).await?;
    let tenant: uuid::Uuid = sqlx::query_scalar("select id from tenants order by created_at desc limit 1")
        .fetch_one(&pool)
        .await
        .context("the bench tenant")?;

    let started = Instant::now();
    let mut others = Vec::new();
    for index in 0..9 {
        let id = uuid::Uuid::now_v7();
        sqlx::query("insert into tenants (id, name) values ($1, $2)")
            .bind(id)
            .bind(format!("reads-{}-{index}", id.simple()))
            .execute(&pool)
            .await?;
        others.push(id);
    }
    // A worker that holds the running jobs: it never heartbeats (its heartbeat is set a day
    // ahead, so its leases stand) and has no room for more.
    let worker = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into workers (id, name, pool, state, cpu_millis, memory_mib, slots, token_hash, last_heartbeat_at)
         values ($1, $2, 'reads-bench', 'busy', 100, 64, 1, sha256(convert_to($2, 'UTF8')), now() + interval '1 day')",
    )
    .bind(worker)
    .bind(format!("reads-bench-{}", worker.simple()))
    .execute(&pool)
    .await?;
    let total = args.tenant_jobs + args.other_jobs;
    let mut written = 0;
    while written < total {
        let to = (written + args.chunk).min(total);
        let (owner, mixed) = if written < args.tenant_jobs {
            (tenant, true)
        } else {
            (others[(written / args.chunk) as usize % others.len()], false)
        };
        let to = if mixed { to.min(args.tenant_jobs) } else { to };
        sqlx::query(JOBS)
            .bind(owner)
            .bind(written + 1)
            .bind(to)
            .bind(total)
            .bind(mixed)
            .execute(&pool)
            .await
            .context("writing jobs")?;
        written = to;
        println!("  {written} jobs written ({:.0} s)", started.elapsed().as_secs_f64());
    }
    // What holds the tenant's waiting and running jobs.
    sqlx::query(
        "insert into ready_jobs (job_id, queue, tenant_id, priority, rank, fair, cpu_millis, memory_mib, labels, enqueued_at)
         select id, queue, tenant_id, priority, extract(epoch from created_at), false, cpu_millis, memory_mib, '{}', created_at
           from jobs where tenant_id = $1 and state = 'queued'",
    )
    .bind(tenant)
    .execute(&pool)
    .await?;
    sqlx::query(
        "insert into scheduled_jobs (job_id, queue, tenant_id, run_at)
         select id, queue, tenant_id, now() + interval '1 year' from jobs where tenant_id = $1 and state = 'scheduled'",
    )
    .bind(tenant)
    .execute(&pool)
    .await?;
    sqlx::query(
        "with running as (update jobs set worker_id = $2, started_at = created_at
                           where tenant_id = $1 and state = 'running' returning id, tenant_id, created_at)
         insert into worker_jobs (job_id, worker_id, attempt, cpu_millis, memory_mib, delivered, started, assigned_at, tenant_id)
         select id, $2, 1, 100, 64, true, true, created_at, tenant_id from running",
    )
    .bind(tenant)
    .bind(worker)
    .execute(&pool)
    .await?;
    sqlx::query("vacuum analyze jobs, ready_jobs, scheduled_jobs, worker_jobs, job_events").execute(&pool).await?;
    let (jobs, queued): (i64, i64) =
        sqlx::query_as("select (select count(*) from jobs), (select count(*) from ready_jobs)")
            .fetch_one(&pool)
            .await?;
    println!(
        "reads: {jobs} jobs in the table ({} of the tenant's), {queued} queued; written in {:.0} s",
        args.tenant_jobs,
        started.elapsed().as_secs_f64()
    );
    time_reads(&client, &url, &admin_key, &tenant_key, args.samples).await
}

/// Times each read `samples` times (after two to warm up), one after the other.
async fn time_reads(
    client: &reqwest::Client,
    url: &str,
    admin_key: &str,
    tenant_key: &str,
    samples_per_read: usize,
) -> anyhow::Result<()> {
    let reads: [(&str, &str, bool); 18] = [
        ("newest 50", "/api/v1/jobs?limit=50", false),
        ("queued", "/api/v1/jobs?state=queued&limit=50", false),
        ("scheduled", "/api/v1/jobs?state=scheduled&limit=50", false),
        ("running", "/api/v1/jobs?state=running&limit=50", false),
        ("assigned (none)", "/api/v1/jobs?state=assigned&limit=50", false),
        ("succeeded", "/api/v1/jobs?state=succeeded&limit=50", false),
        ("cancelled in low", "/api/v1/jobs?state=cancelled&queue=low&limit=50", false),
        ("queue high (none)", "/api/v1/jobs?queue=high&limit=50", false),
        ("queue low", "/api/v1/jobs?queue=low&limit=50", false),
        ("dead letters", "/api/v1/dead-letters?limit=50", false),
        ("queue status", "/api/v1/queues/default/status", false),
        ("queue status (low)", "/api/v1/queues/low/status", false),
        ("/metrics", "/metrics", true),
        // An admin sees every tenant's jobs.
        ("admin: newest 50", "/api/v1/jobs?limit=50", true),
        ("admin: queued", "/api/v1/jobs?state=queued&limit=50", true),
        ("admin: succeeded", "/api/v1/jobs?state=succeeded&limit=50", true),
        ("admin: queue high", "/api/v1/jobs?queue=high&limit=50", true),
        ("admin: queue low", "/api/v1/jobs?queue=low&limit=50", true),
    ];
    for (name, path, admin) in reads {
        let key = if admin { admin_key } else { tenant_key };
        let mut samples = Vec::with_capacity(samples_per_read);
        for round in 0..samples_per_read + 2 {
            let started = Instant::now();
            let response = client.get(format!("{url}{path}")).bearer_auth(key).send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            if !status.is_success() {
                bail!("{path} answered {status}: {}", String::from_utf8_lossy(&body));
            }
            // The first two warm the connection and the caches.
            if round >= 2 {
                samples.push(started.elapsed());
            }
        }
        samples.sort();
        println!(
            "  {name:<20} {path:<50} p50 {:>8.1} ms  p95 {:>8.1} ms  max {:>8.1} ms",
            percentile(&samples, 50.0),
            percentile(&samples, 95.0),
            percentile(&samples, 100.0)
        );
    }
    Ok(())
}
