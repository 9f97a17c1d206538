//! The queue engine against a real Postgres: ordering policies, fairness, concurrent
//! dispatch, overflow, SLA, starvation, retries, dead letters and wake-ups. Jobs leave
//! their queues only as production takes them: through the scheduling cycle
//! (`loops::Scheduler`) to a registered worker, whose results are recorded as a worker's are.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hodei_api::store::assignment::{self, Assigned, AttemptResult, Recorded};
use hodei_api::store::dispatch::{self, Failure, FailureResult, RedriveFilter};
use hodei_api::store::enqueue::{self, SubmitOutcome};
use hodei_api::store::jobs::{self, CancelResult, Submitter};
use hodei_api::store::queues::{self, Queue, RetrySettings};
use hodei_api::store::{queue_status, tenants};
use hodei_api::testing::{until_a_statement_waits_for_a_lock, TestDatabase};
use hodei_core::fairness::jain_index;
use hodei_core::ordering::PolicyRegistry;
use hodei_core::queue::{ExpiredDeadline, OverflowPolicy, QueueSettings};
use hodei_core::{JobSpec, JobState, ValidJob};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

#[allow(dead_code)] // the shared helpers this file does not use
mod support;
use support::{register_sized_worker, register_worker, scheduler};

struct Engine {
    _database: TestDatabase,
    pool: PgPool,
    registry: PolicyRegistry,
}

#[derive(Clone, Copy)]
struct Tenant<'a> {
    id: Uuid,
    name: &'a str,
}

impl Tenant<'_> {
    fn submitter(&self) -> Submitter<'_> {
        Submitter { tenant_id: self.id, tenant_name: self.name, traceparent: None }
    }
}

async fn engine() -> Engine {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    Engine { _database: database, pool, registry: PolicyRegistry::shipped() }
}

fn job(spec: Value) -> ValidJob {
    let mut spec = spec;
    if spec.get("command").is_none() {
        spec["command"] = json!({"argv": ["true"]});
    }
    serde_json::from_value::<JobSpec>(spec).expect("spec").validate(Utc::now()).expect("valid")
}

impl Engine {
    async fn tenant<'a>(&self, name: &'a str, weight: i32) -> Tenant<'a> {
        Tenant { id: tenants::create(&self.pool, name, weight).await.expect("tenant").id, name }
    }

    async fn queue(&self, name: &str, policy: &str, adjust: impl FnOnce(&mut QueueSettings)) -> Queue {
        let mut settings = QueueSettings::with_policy(name, policy);
        adjust(&mut settings);
        settings.validate(|p| self.registry.contains(p)).expect("valid settings");
        let retry = RetrySettings { retry_base_seconds: 0.001, retry_max_seconds: 0.01 };
        queues::upsert(&self.pool, &settings, retry).await.expect("queue")
    }

    async fn submit(&self, tenant: Tenant<'_>, specs: Vec<Value>) -> SubmitOutcome {
        let jobs: Vec<ValidJob> = specs.into_iter().map(job).collect();
        let mut connection = self.pool.acquire().await.expect("connection");
        let settings = enqueue::QueueSettingsCache::disabled();
        let context = enqueue::SubmitContext { registry: &self.registry, settings: &settings };
        enqueue::submit(&mut connection, context, tenant.submitter(), &jobs, None, false).await.expect("submit")
    }

    async fn submit_ids(&self, tenant: Tenant<'_>, specs: Vec<Value>) -> Vec<Uuid> {
        match self.submit(tenant, specs).await {
            SubmitOutcome::Created { ids, .. } => ids,
            other => panic!("not created: {other:?}"),
        }
    }

    /// Dispatches up to `limit` ready jobs, in dispatch order, with one scheduling cycle
    /// to a new worker with room for all of them.
    async fn claim(&self, limit: i64) -> Vec<Assigned> {
        register_worker(&self.pool, limit as i32).await;
        scheduler(&self.pool, 200, limit).tick().await.expect("cycle").assigned
    }

    /// The worker reports the attempt's result, as `POST /workers/{id}/reports` records it.
    async fn report(&self, attempt: &Assigned, exit_code: i32) -> Recorded {
        let mut connection = self.pool.acquire().await.expect("connection");
        let result =
            AttemptResult { job_id: attempt.job_id, attempt: attempt.attempt, exit_code: Some(exit_code), error: None };
        assignment::finish(&mut connection, attempt.worker_id, &result, 0.5).await.expect("finish")
    }

    /// The kinds of a job's events, in order.
    async fn event_kinds(&self, id: Uuid) -> Vec<String> {
        sqlx::query_scalar("select kind from job_events where job_id = $1 order by id")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .expect("events")
    }

    fn promoter(&self) -> hodei_api::loops::Promoter {
        hodei_api::loops::Promoter::new(self.pool.clone(), std::sync::Arc::new(self.registry.clone()))
    }

    /// Promotes until a job whose backoff (a few ms here) passed is back in its queue.
    async fn promote_after_backoff(&self) {
        let promoter = self.promoter();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while promoter.tick().await.expect("promote") == 0 {
            assert!(std::time::Instant::now() < deadline, "never promoted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn state(&self, id: Uuid) -> JobState {
        jobs::get(&self.pool, None, id).await.expect("get").expect("job").state
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.expect("scalar")
    }
}

fn ids(claimed: &[Assigned]) -> Vec<Uuid> {
    claimed.iter().map(|c| c.job_id).collect()
}

#[tokio::test]
async fn fifo_priority_and_edf_order_the_queue() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;

    engine.queue("fifo-q", "fifo", |_| {}).await;
    let submitted =
        engine.submit_ids(acme, (1..=5).map(|p| json!({"queue": "fifo-q", "priority": 11 - p * 2})).collect()).await;
    assert_eq!(ids(&engine.claim(10).await), submitted);

    // Priority: higher first, FIFO within a priority.
    let priorities = [5, 9, 5, 1, 9];
    let submitted =
        engine.submit_ids(acme, priorities.iter().map(|p| json!({"queue": "default", "priority": p})).collect()).await;
    let claimed = engine.claim(10).await;
    assert_eq!(ids(&claimed), [submitted[1], submitted[4], submitted[0], submitted[2], submitted[3]]);

    // EDF: earliest deadline first, jobs without one after them.
    engine.queue("edf-q", "edf", |_| {}).await;
    let in_minutes = |m: i64| (Utc::now() + chrono::Duration::minutes(m)).to_rfc3339();
    let submitted = engine
        .submit_ids(
            acme,
            vec![
                json!({"queue": "edf-q"}),
                json!({"queue": "edf-q", "deadline": in_minutes(30)}),
                json!({"queue": "edf-q", "deadline": in_minutes(5)}),
                json!({"queue": "edf-q", "deadline": in_minutes(60), "priority": 10}),
            ],
        )
        .await;
    assert_eq!(ids(&engine.claim(10).await), [submitted[2], submitted[1], submitted[3], submitted[0]]);
}

#[tokio::test]
async fn the_sjf_plugin_runs_short_jobs_first() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    engine.queue("short-first", "sjf", |_| {}).await;
    let submitted = engine
        .submit_ids(
            acme,
            vec![
                json!({"queue": "short-first", "metadata": {"estimated_seconds": 600}}),
                json!({"queue": "short-first", "metadata": {"estimated_seconds": 5}}),
                json!({"queue": "short-first", "command": {"argv": ["true"], "timeout_seconds": 60}}),
            ],
        )
        .await;
    assert_eq!(ids(&engine.claim(10).await), [submitted[1], submitted[2], submitted[0]]);
}

#[tokio::test]
async fn an_expired_deadline_runs_or_dead_letters_as_the_queue_says() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    engine.queue("strict", "edf", |q| q.expired_deadline = ExpiredDeadline::DeadLetter).await;
    engine.queue("lenient", "edf", |_| {}).await;
    let soon = (Utc::now() + chrono::Duration::seconds(30)).to_rfc3339();
    let strict = engine.submit_ids(acme, vec![json!({"queue": "strict", "deadline": soon})]).await[0];
    let lenient = engine.submit_ids(acme, vec![json!({"queue": "lenient", "deadline": soon})]).await[0];
    // Let both deadlines pass while the jobs wait.
    sqlx::query("update ready_jobs set deadline = now() - interval '1 second'")
        .execute(&engine.pool)
        .await
        .expect("age");

    // One cycle: the lenient job runs (recorded as expired), the strict one is dead-lettered.
    assert_eq!(ids(&engine.claim(10).await), [lenient]);
    let dead = jobs::get(&engine.pool, None, strict).await.expect("get").expect("job");
    assert_eq!((dead.state, dead.dead_letter_reason.as_deref()), (JobState::DeadLettered, Some("deadline_expired")));
    let expiries: Vec<(String, String)> =
        sqlx::query_as("select queue, reason from queue_activity where kind = 'deadline_expired' order by queue")
            .fetch_all(&engine.pool)
            .await
            .expect("activity");
    assert_eq!(
        expiries,
        [
            ("lenient".to_owned(), "deadline passed while queued; ran anyway".to_owned()),
            ("strict".to_owned(), "deadline passed while queued".to_owned())
        ]
    );
}

#[tokio::test]
async fn concurrent_cycles_dispatch_every_job_exactly_once() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    const JOBS: usize = 50_000;
    for _ in 0..JOBS / 1000 {
        engine.submit_ids(acme, (0..1000).map(|i| json!({"priority": 1 + i % 10})).collect()).await;
    }
    for _ in 0..8 {
        register_worker(&engine.pool, 100).await;
    }
    // Eight replicas' cycles at once, each taking one worker and up to 100 jobs, and
    // recording the results as the workers report them.
    let mut cycles = Vec::new();
    for _ in 0..8 {
        let (pool, scheduler) = (engine.pool.clone(), scheduler(&engine.pool, 1, 100));
        cycles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = scheduler.tick().await.expect("cycle").assigned;
                let mut connection = pool.acquire().await.expect("connection");
                if batch.is_empty() {
                    let left: bool = sqlx::query_scalar("select exists (select 1 from ready_jobs)")
                        .fetch_one(&mut *connection)
                        .await
                        .expect("left");
                    if !left {
                        return mine;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                let worker = batch[0].worker_id;
                let results: Vec<AttemptResult> = batch
                    .iter()
                    .map(|a| AttemptResult { job_id: a.job_id, attempt: a.attempt, exit_code: Some(0), error: None })
                    .collect();
                let recorded = assignment::finish_many(&mut connection, worker, &results, 0.5).await.expect("finish");
                assert!(recorded.iter().all(|r| *r == Recorded::Succeeded), "{recorded:?}");
                mine.extend(batch.into_iter().map(|a| a.job_id));
            }
        }));
    }
    let mut all = Vec::with_capacity(JOBS);
    for cycle in cycles {
        all.extend(cycle.await.expect("cycle task"));
    }
    let unique: HashSet<Uuid> = all.iter().copied().collect();
    assert_eq!(all.len(), JOBS, "every job dispatched");
    assert_eq!(unique.len(), JOBS, "no job dispatched twice");
    assert_eq!(engine.scalar("select count(*) from ready_jobs").await, 0);
    assert_eq!(engine.scalar("select count(*) from jobs where state = 'succeeded' and attempt = 1").await, JOBS as i64);
    assert_eq!(engine.scalar("select count(*) from job_events where kind = 'job.assigned'").await, JOBS as i64);
    assert_eq!(engine.scalar("select count(*) from worker_jobs").await, 0);
}

#[tokio::test]
async fn a_report_that_starts_and_ends_an_attempt_records_both_in_one_write_of_the_job() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    engine.submit_ids(acme, vec![json!({}), json!({}), json!({})]).await;
    let assigned = engine.claim(3).await;
    assert_eq!(assigned.len(), 3);
    let (ok, failed, stale) = (&assigned[0], &assigned[1], &assigned[2]);
    let worker = ok.worker_id;
    let result =
        |a: &Assigned, exit_code| AttemptResult { job_id: a.job_id, attempt: a.attempt, exit_code, error: None };

    // Inside an outer transaction, so its own counters show what the report wrote.
    let mut outer = engine.pool.begin().await.expect("begin");
    let (started, recorded) =
        assignment::record_report(&mut outer, worker, &[(ok.job_id, ok.attempt)], &[result(ok, Some(0))], 0.5)
            .await
            .expect("report");
    assert_eq!((started.len(), recorded.as_slice()), (1, &[Recorded::Succeeded][..]));
    let job_updates: i64 = sqlx::query_scalar("select n_tup_upd from pg_stat_xact_user_tables where relname = 'jobs'")
        .fetch_one(&mut *outer)
        .await
        .expect("counters");
    assert_eq!(job_updates, 1, "the job went from assigned to succeeded in one write");
    outer.commit().await.expect("commit");
    let (state, exit_code, started_in_order): (String, Option<i32>, bool) =
        sqlx::query_as("select state, exit_code, coalesce(started_at <= finished_at, false) from jobs where id = $1")
            .bind(ok.job_id)
            .fetch_one(&engine.pool)
            .await
            .expect("job");
    assert_eq!((state.as_str(), exit_code, started_in_order), ("succeeded", Some(0), true));
    let kinds = engine.event_kinds(ok.job_id).await;
    assert_eq!(kinds, ["job.submitted", "job.assigned", "job.started", "job.succeeded"]);

    // A failure in the same report keeps its start and exit code; a start of an attempt
    // the worker does not hold, and its result, change nothing.
    let starts = [(failed.job_id, failed.attempt), (stale.job_id, stale.attempt + 1)];
    let results = [result(failed, Some(3)), AttemptResult { attempt: stale.attempt + 1, ..result(stale, Some(0)) }];
    let mut connection = engine.pool.acquire().await.expect("connection");
    let (started, recorded) =
        assignment::record_report(&mut connection, worker, &starts, &results, 0.5).await.expect("report");
    assert_eq!(started.iter().map(|s| s.job_id).collect::<Vec<_>>(), [failed.job_id]);
    assert!(matches!(recorded[0], Recorded::Failed(_)), "{recorded:?}");
    assert_eq!(recorded[1], Recorded::Stale);
    let failed_row: (Option<i32>, Option<DateTime<Utc>>) =
        sqlx::query_as("select exit_code, started_at from jobs where id = $1")
            .bind(failed.job_id)
            .fetch_one(&engine.pool)
            .await
            .expect("failed job");
    assert_eq!(failed_row.0, Some(3));
    assert!(failed_row.1.is_some(), "a failed attempt keeps when it started");
    assert_eq!(engine.state(stale.job_id).await, JobState::Assigned);
}

#[tokio::test]
async fn the_cycle_reads_the_order_index_on_a_million_queued_jobs() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    // The plan is about ready_jobs alone; skip creating a million job records.
    // In chunks, each well inside the pool's statement timeout on a busy machine.
    for chunk in 0..10_i32 {
        sqlx::query(
            "insert into ready_jobs (job_id, queue, tenant_id, priority, rank, fair, cpu_millis, memory_mib, labels)
             select gen_random_uuid(), case when g % 10 = 0 then 'low' else 'default' end, $1, 1 + g % 10,
                    g::float8, g % 2 = 0, 1000, 512, '{}'
             from generate_series($2 * 100000 + 1, ($2 + 1) * 100000) g",
        )
        .bind(acme.id)
        .bind(chunk)
        .execute(&engine.pool)
        .await
        .expect("seed");
    }
    sqlx::query("analyze ready_jobs").execute(&engine.pool).await.expect("analyze");

    {
        let fair = "half the rows tagged";
        let plan: Value =
            sqlx::query_scalar(&format!("explain (format json) {}", assignment::cycle_candidates(50, true)))
                .bind("default")
                .bind(Vec::<uuid::Uuid>::new())
                .fetch_one(&engine.pool)
                .await
                .expect("explain");
        let mut nodes = Vec::new();
        plan_nodes(&plan, &mut nodes);
        let on_ready_jobs: Vec<&(String, String, String)> =
            nodes.iter().filter(|(_, r, _)| r == "ready_jobs").collect();
        assert!(
            on_ready_jobs.iter().any(|(kind, _, index)| kind == "Index Scan" && index == "ready_jobs_order_idx"),
            "fair={fair}: {nodes:?}"
        );
        assert!(on_ready_jobs.iter().all(|(kind, _, _)| kind != "Seq Scan"), "fair={fair}: {nodes:?}");
        // Sorts may order the claimed batch (window functions over at most `limit` rows),
        // never rows read from the backlog.
        let mut sorted_relations = Vec::new();
        sorts_over(&plan, &mut sorted_relations);
        assert!(
            !sorted_relations.iter().any(|r| r == "ready_jobs"),
            "fair={fair}: a sort reads the backlog: {nodes:?}"
        );
    }

    // The cycle itself, with the plans it gets in its own transaction (run inside an outer
    // one here, so the rows it read are still in this transaction's table counters; each
    // cycle's writes are rolled back, so every cycle finds the same queue).
    register_worker(&engine.pool, 50).await;
    let cycle = scheduler(&engine.pool, 10, 50);
    let mut connection = engine.pool.acquire().await.expect("connection");
    let mut outer = sqlx::Connection::begin(&mut *connection).await.expect("begin");
    for _ in 0..8 {
        // Past the five custom plans after which a prepared statement may go generic.
        let mut undone = sqlx::Connection::begin(&mut *outer).await.expect("savepoint");
        assignment::run_cycle(&mut undone, cycle.strategy, cycle.limits).await.expect("cycle");
        undone.rollback().await.expect("rollback");
    }
    let (scanned, fetched): (i64, i64) = sqlx::query_as(
        "select coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0) from pg_stat_xact_user_tables
         where relname = 'ready_jobs'",
    )
    .fetch_one(&mut *outer)
    .await
    .expect("counters");
    assert!(scanned + fetched < 20_000, "8 cycles of 50 read {scanned} rows by scans and {fetched} by index");
    // The candidates read was planned once for all of them, not once per cycle.
    let plans: (i64, i64) = sqlx::query_as(
        "select sum(generic_plans)::int8, sum(custom_plans)::int8 from pg_prepared_statements
         where statement like 'with slots as%' having count(*) = 1 and bool_and(statement = $1)",
    )
    .bind(assignment::cycle_candidates(50, false))
    .fetch_one(&mut *outer)
    .await
    .expect("the candidates read is one prepared statement");
    assert_eq!(plans.0 + plans.1, 8, "one read per cycle, one statement: {plans:?}");
    assert!(plans.0 >= 2, "(generic, custom) plans of the candidates read: {plans:?}");
}

/// Every plan node as (node type, relation, index).
fn plan_nodes(plan: &Value, out: &mut Vec<(String, String, String)>) {
    match plan {
        Value::Array(items) => items.iter().for_each(|item| plan_nodes(item, out)),
        Value::Object(map) => {
            if let Some(kind) = map.get("Node Type").and_then(Value::as_str) {
                let field = |name: &str| map.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
                out.push((kind.to_owned(), field("Relation Name"), field("Index Name")));
            }
            map.values().for_each(|value| plan_nodes(value, out));
        }
        _ => {}
    }
}

/// Relations read anywhere beneath a Sort node.
fn sorts_over(plan: &Value, out: &mut Vec<String>) {
    match plan {
        Value::Array(items) => items.iter().for_each(|item| sorts_over(item, out)),
        Value::Object(map) => {
            if map.get("Node Type").and_then(Value::as_str) == Some("Sort") {
                // The sort's input, not the CTEs evaluated as its init plans.
                let inputs: Vec<Value> = map
                    .get("Plans")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|child| child.get("Parent Relationship").and_then(Value::as_str) != Some("InitPlan"))
                    .cloned()
                    .collect();
                let mut beneath = Vec::new();
                plan_nodes(&Value::Array(inputs), &mut beneath);
                out.extend(beneath.into_iter().map(|(_, relation, _)| relation).filter(|r| !r.is_empty()));
            }
            map.values().for_each(|value| sorts_over(value, out));
        }
        _ => {}
    }
}

#[tokio::test]
async fn fair_queue_shares_follow_tenant_weights() {
    let engine = engine().await;
    engine.queue("shared", "fair", |_| {}).await;
    let weights = [("w1", 1), ("w2", 2), ("w5", 5)];
    let mut tenant_of: HashMap<Uuid, &str> = HashMap::new();
    let mut tenants_by_name = HashMap::new();
    for (name, weight) in weights {
        let tenant = engine.tenant(name, weight).await;
        tenant_of.insert(tenant.id, name);
        tenants_by_name.insert(name, tenant);
        for _ in 0..3 {
            engine.submit_ids(tenant, (0..1000).map(|_| json!({"queue": "shared"})).collect()).await;
        }
    }
    // 3,200 dispatches keep every tenant backlogged (w5 needs 2,000 of its 3,000).
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for _ in 0..64 {
        for claimed in engine.claim(50).await {
            *counts.entry(tenant_of[&claimed.tenant_id]).or_default() += 1;
        }
    }
    let normalised: Vec<f64> = weights.iter().map(|(name, w)| counts[name] as f64 / f64::from(*w)).collect();
    let jain = jain_index(&normalised);
    assert!(jain >= 0.99, "Jain index {jain}: counts {counts:?}");

    // A tenant arriving late is served in the very next batch.
    let late = engine.tenant("late", 1).await;
    tenant_of.insert(late.id, "late");
    let late_job = engine.submit_ids(late, vec![json!({"queue": "shared"})]).await[0];
    assert!(ids(&engine.claim(50).await).contains(&late_job));

    // Within a tenant, its highest-priority job goes first; the shares do not move.
    let w1 = tenants_by_name["w1"];
    let urgent = engine.submit_ids(w1, vec![json!({"queue": "shared", "priority": 10})]).await[0];
    let mut next_w1 = None;
    while next_w1.is_none() {
        next_w1 = engine.claim(8).await.into_iter().find(|c| c.tenant_id == w1.id).map(|c| c.job_id);
    }
    assert_eq!(next_w1, Some(urgent));
}

#[tokio::test]
async fn a_flood_does_not_push_back_another_tenants_next_job() {
    let engine = engine().await;
    engine.queue("shared", "fair", |_| {}).await;
    let flood = engine.tenant("flood", 1).await;
    for _ in 0..20 {
        engine.submit_ids(flood, (0..1000).map(|_| json!({"queue": "shared"})).collect()).await;
    }
    let quiet = engine.tenant("quiet", 1).await;
    let mine = engine.submit_ids(quiet, vec![json!({"queue": "shared"}), json!({"queue": "shared"})]).await;
    let first_batch = ids(&engine.claim(10).await);
    assert!(first_batch.contains(&mine[0]) && first_batch.contains(&mine[1]), "{first_batch:?}");
}

#[tokio::test]
async fn full_queues_reject_redirect_or_evict() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    engine.queue("spill", "fifo", |_| {}).await;
    engine.queue("strict", "fifo", |q| q.max_size = Some(2)).await;
    engine
        .queue("spilling", "fifo", |q| {
            q.max_size = Some(2);
            q.overflow = OverflowPolicy::Redirect;
            q.overflow_queue = Some("spill".into());
        })
        .await;
    engine
        .queue("evicting", "priority", |q| {
            q.max_size = Some(2);
            q.overflow = OverflowPolicy::EvictLowest;
        })
        .await;

    // reject: all or nothing, 429 with Retry-After, recorded.
    engine.submit_ids(acme, vec![json!({"queue": "strict"})]).await;
    let outcome = engine.submit(acme, vec![json!({"queue": "strict"}), json!({"queue": "strict"})]).await;
    assert!(matches!(outcome, SubmitOutcome::Rejected { ref queue, retry_after_seconds: 5 } if queue == "strict"));
    assert_eq!(engine.scalar("select count(*) from jobs where queue = 'strict'").await, 1);
    assert_eq!(engine.scalar("select count(*) from queue_activity where kind = 'rejected'").await, 1);

    // redirect: the overflow lands in the target queue, remembering where it was sent.
    let sent = engine.submit_ids(acme, (0..3).map(|_| json!({"queue": "spilling"})).collect()).await;
    let moved = jobs::get(&engine.pool, None, sent[2]).await.expect("get").expect("job");
    assert_eq!((moved.queue.as_str(), moved.submitted_queue.as_deref()), ("spill", Some("spilling")));

    // evict_lowest: the lowest-priority waiting job is dead-lettered, the new one admitted.
    let kept = engine.submit_ids(acme, vec![json!({"queue": "evicting", "priority": 8})]).await[0];
    let victim = engine.submit_ids(acme, vec![json!({"queue": "evicting", "priority": 2})]).await[0];
    let newcomer = engine.submit_ids(acme, vec![json!({"queue": "evicting", "priority": 5})]).await[0];
    let evicted = jobs::get(&engine.pool, None, victim).await.expect("get").expect("job");
    assert_eq!((evicted.state, evicted.dead_letter_reason.as_deref()), (JobState::DeadLettered, Some("evicted")));
    let dispatched = engine.claim(20).await;
    let from = |queue: &str| ids(&dispatched.iter().filter(|a| a.queue == queue).cloned().collect::<Vec<_>>());
    assert_eq!(from("spill"), [sent[2]]);
    assert_eq!(from("evicting"), [kept, newcomer]);

    let queue = queues::get(&engine.pool, "spilling").await.expect("get").expect("queue");
    let mut connection = engine.pool.acquire().await.expect("connection");
    let status = queue_status::status(&mut connection, &queue, 600, None).await.expect("status");
    assert_eq!((status.submitted, status.redirected_away), (2, 1));
    assert!((status.overflow_rate - 1.0 / 3.0).abs() < 1e-9, "{status:?}");
}

#[tokio::test]
async fn waits_past_the_sla_are_breaches() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    engine.queue("timely", "fifo", |q| q.sla_max_wait_seconds = Some(60)).await;
    let late = engine.submit_ids(acme, vec![json!({"queue": "timely"})]).await[0];
    let prompt = engine.submit_ids(acme, vec![json!({"queue": "timely"})]).await[0];
    sqlx::query("update ready_jobs set enqueued_at = now() - interval '5 minutes' where job_id = $1")
        .bind(late)
        .execute(&engine.pool)
        .await
        .expect("age");

    let queue = queues::get(&engine.pool, "timely").await.expect("get").expect("queue");
    let mut connection = engine.pool.acquire().await.expect("connection");
    let before = queue_status::status(&mut connection, &queue, 600, None).await.expect("status");
    assert_eq!((before.length, before.sla_breaching_now), (2, 1));
    assert!(before.oldest_wait_seconds.is_some_and(|w| w >= 299.0), "{before:?}");

    let claimed = engine.claim(10).await;
    let breached: HashMap<Uuid, bool> = claimed.iter().map(|c| (c.job_id, c.sla_breached)).collect();
    assert_eq!((breached[&late], breached[&prompt]), (true, false));
    let after = queue_status::status(&mut connection, &queue, 600, None).await.expect("status");
    assert_eq!((after.length, after.sla_breaches, after.wait.dispatched), (0, 1, 2));
    assert!(after.wait.p99_ms.is_some_and(|p99| p99 >= 290_000.0), "{after:?}");
}

#[tokio::test]
async fn a_starving_low_queue_is_served_under_a_permanent_high_backlog() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    engine.submit_ids(acme, (0..500).map(|_| json!({"queue": "high"})).collect()).await;
    let low = engine.submit_ids(acme, vec![json!({"queue": "low"})]).await[0];
    let claim_ten = || engine.claim(10);
    // Fresh: tiers in order.
    assert!(claim_ten().await.iter().all(|c| c.queue == "high"));
    // Past `starvation_after_seconds` (60 s by default) it goes first.
    sqlx::query("update ready_jobs set enqueued_at = now() - interval '61 seconds' where queue = 'low'")
        .execute(&engine.pool)
        .await
        .expect("age");
    let batch = claim_ten().await;
    assert_eq!(batch[0].job_id, low);
    assert_eq!(batch.iter().filter(|c| c.queue == "high").count(), 9);
}

#[tokio::test]
async fn failures_retry_with_backoff_then_dead_letter_and_redrive() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    engine.queue("flaky", "fifo", |_| {}).await;
    let id = engine.submit_ids(acme, vec![json!({"queue": "flaky", "max_attempts": 2})]).await[0];
    let promoter = engine.promoter();
    let mut connection = engine.pool.acquire().await.expect("connection");

    let first = engine.claim(1).await;
    assert_eq!(first[0].attempt, 1);
    let retry = engine.report(&first[0], 1).await;
    assert!(matches!(retry, Recorded::Failed(FailureResult::RetryScheduled { .. })), "{retry:?}");
    assert_eq!(engine.state(id).await, JobState::Scheduled);
    assert!(engine.claim(1).await.is_empty(), "not dispatched while backing off");
    // The backoff (a few ms here) passes; the promoter puts it back.
    engine.promote_after_backoff().await;
    let second = engine.claim(1).await;
    assert_eq!((second[0].job_id, second[0].attempt), (id, 2));

    // A late result from attempt 1 is refused, by the worker's hold and by the job's attempt.
    assert_eq!(engine.report(&first[0], 0).await, Recorded::Stale);
    let failure = Failure { job_id: id, attempt: 1, error: "exit 1".into(), retryable: true };
    assert_eq!(dispatch::fail(&mut connection, &failure, 0.5).await.expect("fail"), FailureResult::Stale);

    let dead = engine.report(&second[0], 1).await;
    assert_eq!(dead, Recorded::Failed(FailureResult::DeadLettered { reason: "attempts_exhausted" }));
    let job = jobs::get(&engine.pool, None, id).await.expect("get").expect("job");
    assert_eq!((job.state, job.last_error.as_deref()), (JobState::DeadLettered, Some("exited with code 1")));

    let filter =
        RedriveFilter { tenant_scope: Some(acme.id), queue: Some("flaky".into()), limit: 10, ..Default::default() };
    assert_eq!(dispatch::redrive(&mut connection, &engine.registry, &filter).await.expect("redrive").ids, [id]);
    let third = engine.claim(1).await;
    // A fresh set of attempts, but the attempt number keeps growing: it is the fencing token.
    assert_eq!((third[0].job_id, third[0].attempt), (id, 3));
    assert_eq!(engine.report(&first[0], 0).await, Recorded::Stale, "a late success of attempt 1");
    let outcome = engine.report(&third[0], 1).await;
    assert!(
        matches!(outcome, Recorded::Failed(FailureResult::RetryScheduled { .. })),
        "the redrive granted new attempts: {outcome:?}"
    );
    sqlx::query("update scheduled_jobs set run_at = now() - interval '1 second'")
        .execute(&engine.pool)
        .await
        .expect("due");
    promoter.tick().await.expect("promote");
    let fourth = engine.claim(1).await;
    assert_eq!(fourth[0].attempt, 4);
    assert_eq!(engine.report(&fourth[0], 0).await, Recorded::Succeeded);
    assert_eq!(engine.state(id).await, JobState::Succeeded);
    let kinds = engine.event_kinds(id).await;
    assert_eq!(
        kinds,
        [
            "job.submitted",
            "job.assigned",
            "job.retry_scheduled",
            "job.queued",
            "job.assigned",
            "job.dead_lettered",
            "job.redriven",
            "job.assigned",
            "job.retry_scheduled",
            "job.queued",
            "job.assigned",
            "job.succeeded"
        ]
    );
}

#[tokio::test]
async fn delayed_jobs_wait_for_their_time_and_cancelled_jobs_leave_at_once() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    let later = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let delayed = engine.submit_ids(acme, vec![json!({"not_before": later})]).await[0];
    let waiting = engine.submit_ids(acme, vec![json!({})]).await[0];
    assert_eq!(engine.state(delayed).await, JobState::Scheduled);

    let mut connection = engine.pool.acquire().await.expect("connection");
    let cancelled = jobs::cancel(&mut connection, Some(acme.id), waiting).await.expect("cancel");
    assert!(matches!(cancelled, CancelResult::Done(ref job) if job.state == JobState::Cancelled));
    assert_eq!(engine.scalar("select count(*) from ready_jobs").await, 0);
    assert!(engine.claim(10).await.is_empty(), "neither the delayed nor the cancelled job");

    sqlx::query("update scheduled_jobs set run_at = now() - interval '1 second'")
        .execute(&engine.pool)
        .await
        .expect("due");
    let promoter = engine.promoter();
    assert_eq!(promoter.tick().await.expect("promote"), 1);
    assert_eq!(ids(&engine.claim(10).await), [delayed]);

    let queue = queues::get(&engine.pool, "default").await.expect("get").expect("queue");
    let status = queue_status::status(&mut connection, &queue, 600, None).await.expect("status");
    assert_eq!((status.submitted, status.cancelled_while_queued), (2, 1));
    assert!((status.abandonment_rate - 0.5).abs() < 1e-9);
}

#[tokio::test]
async fn ready_notifications_are_one_per_transaction() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&engine.pool).await.expect("listener");
    listener.listen(hodei_api::loops::READY_CHANNEL).await.expect("listen");

    engine.submit_ids(acme, (0..100).map(|_| json!({})).collect()).await;
    engine.submit_ids(acme, vec![json!({})]).await;
    let first = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("in time")
        .expect("notification")
        .payload()
        .to_owned();
    let second = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("in time")
        .expect("notification")
        .payload()
        .to_owned();
    assert_ne!(first, second, "the batch of 100 notified once, then the single job once");
    assert!(listener.next_buffered().is_none(), "no further notifications");
}

#[tokio::test]
async fn results_that_free_capacity_wake_the_scheduler_once_and_a_stale_one_does_not() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    let ids = engine.submit_ids(acme, vec![json!({}), json!({})]).await;
    let claimed = engine.claim(2).await;
    assert_eq!(claimed.len(), 2);
    let mut listener = sqlx::postgres::PgListener::connect_with(&engine.pool).await.expect("listener");
    listener.listen(hodei_api::loops::READY_CHANNEL).await.expect("listen");
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("in time")
            .expect("notification")
            .payload()
            .to_owned()
    };

    let stale = Assigned { attempt: 9, ..claimed[0].clone() };
    assert_eq!(engine.report(&stale, 0).await, Recorded::Stale);
    sqlx::query("select pg_notify($1, 'marker')")
        .bind(hodei_api::loops::READY_CHANNEL)
        .execute(&engine.pool)
        .await
        .expect("notify");
    let results: Vec<AttemptResult> = claimed
        .iter()
        .map(|a| AttemptResult { job_id: a.job_id, attempt: a.attempt, exit_code: Some(0), error: None })
        .collect();
    let mut connection = engine.pool.acquire().await.expect("connection");
    let recorded = assignment::finish_many(&mut connection, claimed[0].worker_id, &results, 0.5).await.expect("finish");
    assert_eq!(recorded, [Recorded::Succeeded, Recorded::Succeeded]);

    assert_eq!(next().await, "marker", "the stale result notified nothing");
    assert_eq!(next().await, "capacity", "the two results woke the scheduler");
    for id in ids {
        assert_eq!(engine.state(id).await, JobState::Succeeded);
        assert_eq!(engine.event_kinds(id).await.last().map(String::as_str), Some("job.succeeded"));
    }
    assert!(listener.next_buffered().is_none(), "one notification for both");
}

#[tokio::test]
async fn a_late_result_of_an_older_attempt_in_the_same_report_changes_nothing() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    engine.queue("flaky", "fifo", |_| {}).await;
    let id = engine.submit_ids(acme, vec![json!({"queue": "flaky", "max_attempts": 2})]).await[0];
    let first = engine.claim(1).await;
    let worker = first[0].worker_id;
    // The worker never starts attempt 1 in time: the reaper gives it up, and it is retried.
    let mut connection = engine.pool.acquire().await.expect("connection");
    let timeouts = assignment::Timeouts { lease: Duration::from_secs(60), assignment: Duration::ZERO };
    let expired = assignment::expire_leases(&mut connection, timeouts, 0.5).await.expect("reap");
    assert_eq!(expired.attempts.len(), 1);
    engine.promote_after_backoff().await;
    // Attempt 2 goes to the same worker (the only one with room).
    let second = scheduler(&engine.pool, 200, 10).tick().await.expect("cycle").assigned;
    assert_eq!((second[0].job_id, second[0].attempt, second[0].worker_id), (id, 2, worker));

    // One report: attempt 1 failed (late), attempt 2 succeeded.
    let results = [
        AttemptResult { job_id: id, attempt: 1, exit_code: Some(3), error: None },
        AttemptResult { job_id: id, attempt: 2, exit_code: Some(0), error: None },
    ];
    let recorded = assignment::finish_many(&mut connection, worker, &results, 0.5).await.expect("finish");
    assert_eq!(recorded, [Recorded::Stale, Recorded::Succeeded]);
    let (state, exit_code): (String, Option<i32>) = sqlx::query_as("select state, exit_code from jobs where id = $1")
        .bind(id)
        .fetch_one(&engine.pool)
        .await
        .expect("job");
    assert_eq!((state.as_str(), exit_code), ("succeeded", Some(0)));
    assert_eq!(engine.scalar("select count(*) from job_events where kind = 'job.succeeded'").await, 1);
}

#[tokio::test]
async fn a_cancelled_running_job_is_not_retried() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    let id = engine.submit_ids(acme, vec![json!({"max_attempts": 5})]).await[0];
    let claimed = engine.claim(1).await;
    let mut connection = engine.pool.acquire().await.expect("connection");
    let requested = jobs::cancel(&mut connection, Some(acme.id), id).await.expect("cancel");
    assert!(
        matches!(requested, CancelResult::Done(ref job) if job.state == JobState::Assigned && job.cancel_requested_at.is_some())
    );
    // The worker stops the process and reports the failure that the stop caused.
    assert_eq!(engine.report(&claimed[0], 143).await, Recorded::Failed(FailureResult::Cancelled));
    assert_eq!(engine.state(id).await, JobState::Cancelled);
    assert_eq!(engine.scalar("select count(*) from scheduled_jobs").await, 0);
}

#[tokio::test]
async fn a_retry_into_a_deleted_queue_is_dead_lettered_once() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    engine.queue("short-lived", "fifo", |_| {}).await;
    let id = engine.submit_ids(acme, vec![json!({"queue": "short-lived"})]).await[0];
    let claimed = engine.claim(1).await;
    let mut transaction = engine.pool.begin().await.expect("begin");
    assert_eq!(queues::delete(&mut transaction, "short-lived").await.expect("delete"), queues::DeleteOutcome::Deleted);
    transaction.commit().await.expect("commit");

    assert!(matches!(engine.report(&claimed[0], 1).await, Recorded::Failed(FailureResult::RetryScheduled { .. })));
    sqlx::query("update scheduled_jobs set run_at = now() - interval '1 second'")
        .execute(&engine.pool)
        .await
        .expect("due");
    let promoter = engine.promoter();
    promoter.tick().await.expect("promote");
    let job = jobs::get(&engine.pool, None, id).await.expect("get").expect("job");
    assert_eq!((job.state, job.dead_letter_reason.as_deref()), (JobState::DeadLettered, Some("queue_deleted")));
    assert_eq!(engine.scalar("select count(*) from scheduled_jobs").await, 0, "nothing left to promote again");
    promoter.tick().await.expect("promote");
    assert_eq!(
        engine
            .scalar(&format!("select count(*) from job_events where job_id = '{id}' and kind = 'job.dead_lettered'"))
            .await,
        1
    );
}

#[tokio::test]
async fn jobs_queued_before_a_queue_became_fair_are_still_dispatched() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    engine.queue("switching", "fifo", |_| {}).await;
    let before = engine.submit_ids(acme, (0..3).map(|_| json!({"queue": "switching"})).collect()).await;
    engine.queue("switching", "fair", |_| {}).await;
    let after = engine.submit_ids(acme, vec![json!({"queue": "switching"})]).await;
    let claimed: HashSet<Uuid> = ids(&engine.claim(10).await).into_iter().collect();
    let expected: HashSet<Uuid> = before.into_iter().chain(after).collect();
    assert_eq!(claimed, expected);
}

#[tokio::test]
async fn fair_tags_move_only_within_their_own_queue() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    // One tenant in two fair queues; the first is served first (tier 0).
    engine.queue("first", "fair", |q| q.tier = 0).await;
    engine.queue("second", "fair", |q| q.tier = 1).await;
    engine.submit_ids(acme, (0..3).map(|_| json!({"queue": "first"})).collect()).await;
    engine.submit_ids(acme, (0..3).map(|_| json!({"queue": "second"})).collect()).await;
    let ranks = |queue: &'static str| {
        let pool = engine.pool.clone();
        async move {
            let ranks: Vec<f64> = sqlx::query_scalar("select rank from ready_jobs where queue = $1 order by job_id")
                .bind(queue)
                .fetch_all(&pool)
                .await
                .expect("ranks");
            ranks
        }
    };
    // Tags of different queues are different scales: here the second's are all lower.
    sqlx::query("update ready_jobs set rank = rank / 10 where queue = 'second'")
        .execute(&engine.pool)
        .await
        .expect("rescale");
    let second_before = ranks("second").await;
    // A worker with one slot; the cycle locks rows of both queues and places one job of
    // the first.
    register_worker(&engine.pool, 1).await;
    let placed = scheduler(&engine.pool, 200, 10).tick().await.expect("cycle").assigned;
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].queue, "first");
    assert_eq!(ranks("second").await, second_before, "the second queue's tags are its own");
}

/// What `queue_backlog` counts, per queue and tenant, against what the two tables hold.
async fn backlog_against_tables(pool: &PgPool) -> (Vec<(String, Uuid, i64, i64)>, Vec<(String, Uuid, i64, i64)>) {
    let counted = sqlx::query_as(
        "select queue, tenant_id, sum(ready)::int8, sum(scheduled)::int8 from queue_backlog
         group by 1, 2 having sum(ready) <> 0 or sum(scheduled) <> 0 order by 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("counted");
    let held = sqlx::query_as(
        "select queue, tenant_id, count(*) filter (where ready)::int8, count(*) filter (where not ready)::int8
         from (select queue, tenant_id, true as ready from ready_jobs
               union all select queue, tenant_id, false from scheduled_jobs) w
         group by 1, 2 order by 1, 2",
    )
    .fetch_all(pool)
    .await
    .expect("held");
    (counted, held)
}

#[tokio::test]
async fn a_tenant_deleted_as_one_of_its_jobs_is_put_back_in_its_queue_keeps_everything() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    let id = engine.submit_ids(acme, vec![json!({})]).await[0];
    sqlx::query(
        "with waiting as (delete from ready_jobs where job_id = $1)
         update jobs set state = 'dead_lettered', finished_at = now() where id = $1",
    )
    .bind(id)
    .execute(&engine.pool)
    .await
    .expect("an ended job");
    // A rerun (a redrive, a retry) holds the job's row lock and puts it back in its queue
    // after the tenant's delete checked for jobs that have not ended.
    let mut rerun = engine.pool.begin().await.expect("begin");
    sqlx::query("select id from jobs where id = $1 for update").bind(id).execute(&mut *rerun).await.expect("lock");
    let deleting = tokio::spawn({
        let pool = engine.pool.clone();
        async move {
            let mut transaction = pool.begin().await.expect("begin");
            let outcome = tenants::delete(&mut transaction, "acme").await.expect("delete");
            transaction.commit().await.expect("commit");
            outcome
        }
    });
    until_a_statement_waits_for_a_lock(&engine.pool, "the delete waits for the job's row lock").await;
    sqlx::query("update jobs set state = 'queued', finished_at = null where id = $1")
        .bind(id)
        .execute(&mut *rerun)
        .await
        .expect("rerun");
    rerun.commit().await.expect("commit the rerun");
    let outcome = deleting.await.expect("delete");
    assert_eq!(outcome, tenants::DeleteOutcome::HasUnfinishedJobs(vec![("queued".into(), 1)]));
    assert_eq!(engine.state(id).await, JobState::Queued);
    assert!(tenants::get(&engine.pool, "acme").await.expect("get").is_some(), "the tenant is kept");
    assert_eq!(engine.event_kinds(id).await, ["job.submitted"], "its events are kept");
}

#[tokio::test]
async fn the_queue_counters_hold_what_the_queues_hold_through_every_path() {
    let engine = engine().await;
    let (acme, globex) = (engine.tenant("acme", 1).await, engine.tenant("globex", 1).await);
    let later = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let retried = json!({"max_attempts": 3});
    let queued = engine.submit_ids(acme, (0..30).map(|_| retried.clone()).collect()).await;
    engine.submit_ids(globex, (0..10).map(|_| json!({"queue": "low"})).collect()).await;
    let delayed = engine.submit_ids(acme, (0..5).map(|_| json!({"not_before": later})).collect()).await;
    engine.submit_ids(globex, (0..3).map(|_| json!({"not_before": later})).collect()).await;

    let mut connection = engine.pool.acquire().await.expect("connection");
    for id in [queued[0], queued[1], delayed[0]] {
        jobs::cancel(&mut connection, Some(acme.id), id).await.expect("cancel");
    }
    let claimed = engine.claim(12).await;
    for attempt in claimed.iter().take(3) {
        engine.report(attempt, 1).await; // failed: retried later, or dead-lettered
    }
    sqlx::query("update scheduled_jobs set run_at = now() - interval '1 second' where job_id = any($1)")
        .bind(&delayed[1..3])
        .execute(&engine.pool)
        .await
        .expect("due");
    let promoter = engine.promoter();
    promoter.tick().await.expect("promote");
    // Submits and cycles at once, each on its own connection.
    let mut concurrent = tokio::task::JoinSet::new();
    for round in 0..4 {
        let pool = engine.pool.clone();
        let tenant = if round % 2 == 0 { (acme.id, "acme") } else { (globex.id, "globex") };
        concurrent.spawn(async move {
            let jobs: Vec<ValidJob> = (0..25).map(|_| job(json!({"queue": "low"}))).collect();
            support::submit(&pool, tenant, &jobs, None).await;
        });
        let pool = engine.pool.clone();
        concurrent.spawn(async move {
            register_worker(&pool, 5).await;
            scheduler(&pool, 200, 5).tick().await.expect("cycle");
        });
    }
    while let Some(done) = concurrent.join_next().await {
        done.expect("task");
    }

    let (counted, held) = backlog_against_tables(&engine.pool).await;
    assert_eq!(counted, held);
    assert!(held.len() >= 3, "both tenants wait in both queues: {held:?}");
    for name in ["default", "low"] {
        let queue = queues::get(&engine.pool, name).await.expect("get").expect("queue");
        let status = queue_status::status(&mut connection, &queue, 600, None).await.expect("status");
        let in_queue = held.iter().filter(|(queue, ..)| queue == name);
        let (ready, scheduled) = in_queue.clone().fold((0, 0), |(r, s), (_, _, ready, sch)| (r + ready, s + sch));
        assert_eq!((status.length, status.scheduled), (ready, scheduled), "{name}");
        let per_tenant: i64 = status.tenants.iter().map(|tenant| tenant.ready).sum();
        assert_eq!(per_tenant, ready, "{name}: {:?}", status.tenants);
        let scoped = queue_status::status(&mut connection, &queue, 600, Some(acme.id)).await.expect("status");
        let acme_ready = in_queue.filter(|(_, tenant, ..)| *tenant == acme.id).map(|(.., ready, _)| ready).sum::<i64>();
        assert_eq!(scoped.length, acme_ready, "{name}");
        assert!(scoped.tenants.iter().all(|tenant| tenant.tenant == "acme"), "{:?}", scoped.tenants);
    }
}

#[tokio::test]
async fn the_counters_of_exited_backends_fold_into_one_row_without_changing_a_count() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    // Written through a pool of its own, whose backends then exit.
    let other = engine._database.pool().await;
    let jobs: Vec<ValidJob> = (0..7).map(|_| job(json!({}))).collect();
    support::submit(&other, (acme.id, "acme"), &jobs, None).await;
    // The backends that wrote them, by pid and start time (a pid alone may be reused).
    let writers: Vec<(i32, DateTime<Utc>)> = sqlx::query_as(
        "select a.pid, a.backend_start from pg_stat_activity a
         where a.pid in (select slot from queue_backlog)",
    )
    .fetch_all(&engine.pool)
    .await
    .expect("writers");
    assert!(!writers.is_empty(), "the rows were written by live backends");
    other.close().await;
    // Closing the pool ends its sessions; a backend still there after that is ended here,
    // waiting until it has exited (`pg_terminate_backend` with a timeout).
    let (pids, starts): (Vec<i32>, Vec<DateTime<Utc>>) = writers.iter().copied().unzip();
    let remaining: Vec<(i32, String, Option<bool>)> = sqlx::query_as(
        "select a.pid, coalesce(a.state, '') || ' ' || coalesce(a.wait_event, '') || ' ' || a.query,
                pg_terminate_backend(a.pid, 10000)
         from pg_stat_activity a join unnest($1::int4[], $2::timestamptz[]) as w(pid, started)
           on a.pid = w.pid and a.backend_start = w.started",
    )
    .bind(&pids)
    .bind(&starts)
    .fetch_all(&engine.pool)
    .await
    .expect("terminate");
    assert!(remaining.iter().all(|(.., exited)| *exited == Some(true)), "writers did not exit: {remaining:?}");
    // A queue that once counted something and now counts nothing.
    sqlx::query("insert into queue_backlog (queue, tenant_id, slot) values ('low', $1, 0)")
        .bind(acme.id)
        .execute(&engine.pool)
        .await
        .expect("empty row");
    let (before, _) = backlog_against_tables(&engine.pool).await;

    let policy = hodei_api::store::retention::Policy::from_config(&Default::default());
    hodei_api::loops::Retention::new(engine.pool.clone(), policy).tick().await.expect("retention").expect("leads");

    let rows: Vec<(String, i32, i64)> = sqlx::query_as("select queue, slot, ready from queue_backlog order by 1")
        .fetch_all(&engine.pool)
        .await
        .expect("rows");
    assert_eq!(rows, [("default".to_owned(), 0, 7)], "one folded row; the empty one dropped");
    let (after, held) = backlog_against_tables(&engine.pool).await;
    assert_eq!((&after, &held), (&before, &before));
}

/// The rows of `ready_jobs` this transaction has read, by scans and through indexes.
async fn ready_rows_read(db: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) from pg_stat_xact_user_tables
         where relname = 'ready_jobs'",
    )
    .fetch_one(db)
    .await
    .expect("counters")
}

#[tokio::test]
async fn a_cycle_reads_as_many_candidates_as_its_free_slots_call_for() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    // Deep enough that the cycle's statements read the queue through its indexes.
    for _ in 0..4 {
        engine.submit_ids(acme, (0..1000).map(|_| json!({})).collect()).await;
    }
    sqlx::query("analyze ready_jobs").execute(&engine.pool).await.expect("analyze");
    register_worker(&engine.pool, 2).await;
    let cycle = scheduler(&engine.pool, 10, 500);
    // Inside an outer transaction, so the rows the cycle read stay in its table counters.
    let mut connection = engine.pool.acquire().await.expect("connection");
    let mut outer = sqlx::Connection::begin(&mut *connection).await.expect("begin");
    let outcome = assignment::run_cycle(&mut outer, cycle.strategy, cycle.limits).await.expect("cycle");
    assert_eq!(outcome.assigned.len(), 2, "both slots filled");
    assert!(!outcome.more, "the cycle used what it had: nothing to run again for");
    let read = ready_rows_read(&mut outer).await;
    // The budget is 32 (twice 2 slots, at least 32); the limit would read 500.
    assert!(read < 100, "a cycle with 2 free slots read {read} ready rows");
}

#[tokio::test]
async fn jobs_no_worker_can_run_at_the_head_do_not_keep_others_from_free_slots() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    // More jobs than the smallest budget, needing a label no worker has, ahead of one that fits.
    let labelled =
        engine.submit_ids(acme, (0..40).map(|_| json!({"resources": {"labels": {"gpu": "a100"}}})).collect());
    let labelled = labelled.await;
    let plain = engine.submit_ids(acme, vec![json!({})]).await;
    register_worker(&engine.pool, 1).await;
    let outcome = scheduler(&engine.pool, 10, 500).tick().await.expect("cycle");
    assert_eq!(ids(&outcome.assigned), plain, "the job behind the head runs");
    let mut connection = engine.pool.acquire().await.expect("connection");
    for id in [labelled[0], labelled[39]] {
        let pending = assignment::pending(&mut connection, id).await.expect("pending").expect("queued");
        assert_eq!(pending.code, "no_worker_with_labels", "{id}");
    }
}

#[tokio::test]
async fn jobs_too_large_for_the_free_room_at_the_head_do_not_keep_smaller_ones_from_it() {
    let engine = engine().await;
    let acme = engine.tenant("acme", 1).await;
    // More jobs than the smallest budget, of which the worker's room takes two, ahead of
    // small ones.
    engine.submit_ids(acme, (0..40).map(|_| json!({"resources": {"cpu_millis": 3000}})).collect()).await;
    let small = engine.submit_ids(acme, (0..10).map(|_| json!({"resources": {"cpu_millis": 100}})).collect()).await;
    register_sized_worker(&engine.pool, 8000, 8).await;
    let outcome = scheduler(&engine.pool, 10, 500).tick().await.expect("cycle");
    let assigned: HashSet<Uuid> = ids(&outcome.assigned).into_iter().collect();
    assert_eq!(assigned.len(), 8, "every slot filled");
    assert_eq!(assigned.iter().filter(|id| small.contains(id)).count(), 6, "two large ones, then small ones");
}
