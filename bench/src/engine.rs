//! `hodei bench engine`: the queue engine measured in-process against Postgres, with no
//! HTTP in the way, so its numbers compare directly with the bare-SQL ceiling that
//! `shared/bench/pgbench` measures for the same shape of work. Jobs are dispatched by the
//! scheduling cycle `hodei serve` runs (`loops::Scheduler`) to registered workers, and
//! their starts and results recorded as a worker's report is (`store::assignment::record_report`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use hodei_core::queue::QueueSettings;
use hodei_core::{JobSpec, ValidJob};
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::e2e::percentile;
use hodei_api::config::Config;
use hodei_api::loops::Scheduler;
use hodei_api::store::assignment::{self, AttemptResult, CycleLimits};
use hodei_api::store::enqueue;
use hodei_api::store::jobs::Submitter;
use hodei_api::store::queues::{self, RetrySettings};
use hodei_api::{db, store};
use hodei_core::ordering::PolicyRegistry;

#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Concurrent workers (enqueuers, claimers) per phase.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Jobs per scheduling cycle (each cycle fills one worker with this many slots).
    #[arg(long, default_value_t = 50)]
    claim_batch: i64,
    /// Depth of the deep queue.
    #[arg(long, default_value_t = 1_000_000)]
    deep: i64,
    /// Depth of the shallow queue.
    #[arg(long, default_value_t = 1_000)]
    shallow: i64,
}

struct Bench {
    pool: PgPool,
    registry: Arc<hodei_core::ordering::PolicyRegistry>,
    tenant_id: Uuid,
    tenant_name: String,
    settings: enqueue::QueueSettingsCache,
    args: EngineArgs,
}

#[derive(Default)]
struct Tally {
    jobs: usize,
    latencies: Vec<Duration>,
}

fn noop_job(queue: &str) -> anyhow::Result<ValidJob> {
    let spec: JobSpec = serde_json::from_value(serde_json::json!({"queue": queue, "command": {"argv": ["true"]}}))?;
    spec.validate(Utc::now()).map_err(|e| anyhow::anyhow!("{e}"))
}

fn line(title: &str, mut tally: Tally, seconds: f64) -> (String, f64) {
    tally.latencies.sort();
    let rate = tally.jobs as f64 / seconds;
    (
        format!(
            "{title}: {rate:.0} jobs/s; per call p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms ({} calls)",
            percentile(&tally.latencies, 50.0),
            percentile(&tally.latencies, 95.0),
            percentile(&tally.latencies, 99.0),
            tally.latencies.len()
        ),
        rate,
    )
}

impl Bench {
    fn submitter(&self) -> Submitter<'_> {
        Submitter { tenant_id: self.tenant_id, tenant_name: &self.tenant_name, traceparent: None }
    }

    async fn submit(&self, jobs: &[ValidJob]) -> anyhow::Result<()> {
        let mut connection = self.pool.acquire().await?;
        let context = enqueue::SubmitContext { registry: &self.registry, settings: &self.settings };
        match enqueue::submit(&mut connection, context, self.submitter(), jobs, None, false).await? {
            enqueue::SubmitOutcome::Created { .. } => Ok(()),
            other => anyhow::bail!("submission refused: {other:?}"),
        }
    }

    /// Runs `concurrency` copies of `step` for the phase's duration; each step returns the
    /// jobs it handled, and its duration is one latency sample.
    async fn phase<F, Fut>(self: &Arc<Self>, step: F) -> anyhow::Result<(Tally, f64)>
    where
        F: Fn(Arc<Bench>) -> Fut + Send + Sync + Clone + 'static,
        Fut: std::future::Future<Output = anyhow::Result<usize>> + Send,
    {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let started = Instant::now();
        let stop = started + Duration::from_secs_f64(self.args.duration);
        let mut workers = Vec::new();
        for _ in 0..self.args.concurrency {
            let (bench, tally, step) = (self.clone(), tally.clone(), step.clone());
            workers.push(tokio::spawn(async move {
                while Instant::now() < stop {
                    let began = Instant::now();
                    let jobs = step(bench.clone()).await?;
                    let mut tally = tally.lock().await;
                    tally.jobs += jobs;
                    tally.latencies.push(began.elapsed());
                }
                anyhow::Ok(())
            }));
        }
        for worker in workers {
            worker.await??;
        }
        let seconds = started.elapsed().as_secs_f64();
        let tally = std::mem::take(&mut *tally.lock().await);
        Ok((tally, seconds))
    }

    async fn queue(&self, name: &str) -> anyhow::Result<queues::Queue> {
        let settings = QueueSettings::with_policy(name, "priority");
        let retry = RetrySettings { retry_base_seconds: 2.0, retry_max_seconds: 600.0 };
        Ok(queues::upsert(&self.pool, &settings, retry).await?)
    }

    /// Takes every job still waiting in `queue` out of it (cancelled), so that the next
    /// phase's cycles see only their own queue.
    async fn clear(&self, queue: &str) -> anyhow::Result<()> {
        // In chunks, each well inside the pool's statement timeout at a million jobs.
        loop {
            let cleared = sqlx::query(
                "with removed as (
                    delete from ready_jobs where job_id in (select job_id from ready_jobs where queue = $1 limit 50000)
                    returning job_id
                 )
                 update jobs j set state = 'cancelled', finished_at = now(), updated_at = now()
                 from removed r where j.id = r.job_id",
            )
            .bind(queue)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if cleared == 0 {
                return Ok(());
            }
        }
    }

    /// Registers a worker with room for one cycle's batch of jobs of any size.
    async fn worker(&self) -> anyhow::Result<()> {
        let (labels, token) = (Default::default(), Uuid::now_v7());
        let worker = store::workers::NewWorker {
            name: "bench-engine",
            pool: "default",
            cpu_millis: i32::MAX,
            memory_mib: i32::MAX,
            slots: self.args.claim_batch as i32,
            labels: &labels,
            instance_id: None,
            token_hash: token.as_bytes(),
        };
        store::workers::register(&self.pool, &worker).await?;
        Ok(())
    }

    /// Fills `queue` to `depth` ready jobs with set-based SQL (the enqueue path is
    /// measured separately; this only builds the backlog).
    async fn seed(&self, queue: &str, depth: i64) -> anyhow::Result<()> {
        let mut left = depth;
        while left > 0 {
            let chunk = left.min(100_000);
            self.seed_chunk(queue, chunk).await?;
            left -= chunk;
        }
        Ok(())
    }

    async fn seed_chunk(&self, queue: &str, count: i64) -> anyhow::Result<()> {
        sqlx::query(
            "with j as (
                insert into jobs (id, tenant_id, queue, state, priority, argv, timeout_seconds, cpu_millis, memory_mib,
                    max_attempts, queued_at)
                select gen_random_uuid(), $1, $2, 'queued', 1 + g % 10, '[\"true\"]', 3600, 1000, 512, 3, now()
                from generate_series(1, $3) g
                returning id, tenant_id, queue, priority
             )
             insert into ready_jobs (job_id, queue, tenant_id, priority, rank, fair, cpu_millis, memory_mib, labels)
             select id, queue, tenant_id, priority, extract(epoch from now()) - priority * 300, false, 1000, 512, '{}'
             from j",
        )
        .bind(self.tenant_id)
        .bind(queue)
        .bind(count)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

pub async fn run(args: EngineArgs, config: &Config) -> anyhow::Result<()> {
    let url = config.require_database_url()?.expose().to_owned();
    let pool = db::connect(&url, (args.concurrency as u32 + 4).max(8)).await?;
    db::migrate(&pool).await?;
    let tenant_name = format!("bench-{}", Uuid::now_v7().simple());
    let tenant = store::tenants::create(&pool, &tenant_name, 1).await.context("creating the bench tenant")?;
    let bench = Arc::new(Bench {
        pool,
        registry: Arc::new(PolicyRegistry::shipped()),
        tenant_id: tenant.id,
        tenant_name,
        settings: enqueue::QueueSettingsCache::new(enqueue::QUEUE_SETTINGS_TTL),
        args,
    });
    let suffix = &bench.tenant_name[6..14];
    let mut report = Report;

    // Enqueue, one job per call and 1000 per call.
    let enqueue_queue = format!("bench-enqueue-{suffix}");
    bench.queue(&enqueue_queue).await?;
    let one = vec![noop_job(&enqueue_queue)?];
    let (tally, seconds) = bench
        .phase(move |b| {
            let one = one.clone();
            async move { b.submit(&one).await.map(|()| 1) }
        })
        .await?;
    report.push(line("enqueue, 1 job per call", tally, seconds).0);
    let thousand = vec![noop_job(&enqueue_queue)?; 1000];
    let (tally, seconds) = bench
        .phase(move |b| {
            let thousand = thousand.clone();
            async move { b.submit(&thousand).await.map(|()| 1000) }
        })
        .await?;
    report.push(line("enqueue, 1000 jobs per call", tally, seconds).0);

    // Only the queue being measured holds ready jobs: the cycle serves every queue.
    bench.clear(&enqueue_queue).await?;
    for _ in 0..bench.args.concurrency {
        bench.worker().await?;
    }

    // Dispatch with the depth held constant (each cycle refills what it took), shallow.
    let shallow = format!("bench-shallow-{suffix}");
    bench.queue(&shallow).await?;
    bench.seed(&shallow, bench.args.shallow).await?;
    let shallow_rate = measure_dispatch(&bench, &shallow, true).await?;
    bench.clear(&shallow).await?;

    // Cycle + complete in batches from a deep queue (the pgbench cycle_batch50 shape), then
    // with refills at the same depth.
    let deep = format!("bench-deep-{suffix}");
    bench.queue(&deep).await?;
    bench.seed(&deep, bench.args.deep).await?;
    let drain_rate = measure_dispatch(&bench, &deep, false).await?;
    report.push(format!(
        "cycle {} + complete, {} schedulers, {} queued: {}",
        bench.args.claim_batch, bench.args.concurrency, bench.args.deep, drain_rate.0
    ));
    let deep_rate = measure_dispatch(&bench, &deep, true).await?;
    report.push(format!("dispatch at depth {} (cycle+complete+refill): {}", bench.args.shallow, shallow_rate.0));
    report.push(format!("dispatch at depth {} (cycle+complete+refill): {}", bench.args.deep, deep_rate.0));
    report.push(format!("deep / shallow dispatch ratio: {:.2}", deep_rate.1 / shallow_rate.1));
    bench.clear(&deep).await?;

    Ok(())
}

/// Prints each result as soon as it is measured.
struct Report;

impl Report {
    fn push(&mut self, line: String) {
        println!("{line}");
    }
}

/// Scheduling cycles, each followed by its worker's report of success, for the phase's
/// duration; with `refill`, each cycle also enqueues as many new jobs as it took, holding
/// the depth constant. Starts from freshly vacuumed tables, as the pgbench ceiling does.
/// A phase that finds its queue empty says so: its rate is then capped by the depth.
async fn measure_dispatch(bench: &Arc<Bench>, queue: &str, refill: bool) -> anyhow::Result<(String, f64)> {
    sqlx::query("vacuum analyze ready_jobs, jobs, job_events, workers, worker_jobs").execute(&bench.pool).await?;
    let refill_jobs = Arc::new(vec![noop_job(queue)?; bench.args.claim_batch as usize]);
    let cycle_latencies = Arc::new(Mutex::new(Vec::new()));
    let ran_dry = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scheduler = Arc::new(Scheduler {
        limits: CycleLimits { workers: 1, jobs: bench.args.claim_batch },
        ..Scheduler::new(bench.pool.clone())
    });
    let (tally, seconds) = bench
        .phase({
            let (refill_jobs, cycle_latencies, ran_dry) =
                (refill_jobs.clone(), cycle_latencies.clone(), ran_dry.clone());
            move |b: Arc<Bench>| {
                let (refill_jobs, cycle_latencies, ran_dry, scheduler) =
                    (refill_jobs.clone(), cycle_latencies.clone(), ran_dry.clone(), scheduler.clone());
                async move {
                    let began = Instant::now();
                    let assigned = scheduler.tick().await?.assigned;
                    cycle_latencies.lock().await.push(began.elapsed());
                    let Some(worker) = assigned.first().map(|a| a.worker_id) else {
                        let left: bool =
                            sqlx::query_scalar("select exists (select 1 from ready_jobs)").fetch_one(&b.pool).await?;
                        if !left {
                            ran_dry.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        return Ok(0);
                    };
                    let results: Vec<AttemptResult> = assigned
                        .iter()
                        .map(|a| AttemptResult {
                            job_id: a.job_id,
                            attempt: a.attempt,
                            exit_code: Some(0),
                            error: None,
                        })
                        .collect();
                    let mut connection = b.pool.acquire().await?;
                    let starts: Vec<(Uuid, i32)> = assigned.iter().map(|a| (a.job_id, a.attempt)).collect();
                    assignment::record_report(&mut connection, worker, &starts, &results, 0.5).await?;
                    drop(connection);
                    if refill {
                        b.submit(&refill_jobs[..assigned.len()]).await?;
                    }
                    Ok(assigned.len())
                }
            }
        })
        .await?;
    let mut cycles = std::mem::take(&mut *cycle_latencies.lock().await);
    cycles.sort();
    let rate = tally.jobs as f64 / seconds;
    let dry = if ran_dry.load(std::sync::atomic::Ordering::Relaxed) {
        " (the queue ran dry: the rate is capped by its depth)"
    } else {
        ""
    };
    Ok((
        format!(
            "{rate:.0} jobs/s{dry}; cycle latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms ({} cycles)",
            percentile(&cycles, 50.0),
            percentile(&cycles, 95.0),
            percentile(&cycles, 99.0),
            cycles.len()
        ),
        rate,
    ))
}
