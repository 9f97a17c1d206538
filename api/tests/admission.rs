//! Admission to bounded queues against a real Postgres: what each way into a queue does
//! when the queue is full. Submissions follow the overflow policy; reruns by hand
//! (redrives, retries of finished jobs) are refused and left as they were; a job's
//! automatic retry and the promotion of a scheduled job keep the place it was admitted to.

use chrono::Utc;
use hodei_api::store::assignment::{self, Assigned, AttemptResult, Recorded};
use hodei_api::store::dispatch::{self, FailureResult, RedriveFilter, RefusedRerun};
use hodei_api::store::enqueue::{self, SubmitOutcome};
use hodei_api::store::jobs::{self, CancelResult, Submitter};
use hodei_api::store::queues::{self, RetrySettings};
use hodei_api::store::tenants;
use hodei_api::testing::{until_a_statement_waits_for_a_lock, TestDatabase};
use hodei_core::ordering::PolicyRegistry;
use hodei_core::queue::{OverflowPolicy, QueueSettings};
use hodei_core::{JobSpec, JobState, ValidJob};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

#[allow(dead_code)] // the shared helpers this file does not use
mod support;
use support::{register_worker, scheduler};

struct Store {
    _database: TestDatabase,
    pool: PgPool,
    registry: PolicyRegistry,
    tenant_id: Uuid,
}

async fn store() -> Store {
    let database = TestDatabase::migrated().await;
    let pool = database.pool().await;
    let tenant_id = tenants::create(&pool, "acme", 1).await.expect("tenant").id;
    Store { _database: database, pool, registry: PolicyRegistry::shipped(), tenant_id }
}

fn job(spec: Value) -> ValidJob {
    let mut spec = spec;
    spec["command"] = json!({"argv": ["true"]});
    serde_json::from_value::<JobSpec>(spec).expect("spec").validate(Utc::now()).expect("valid")
}

impl Store {
    async fn queue(&self, name: &str, policy: &str, adjust: impl FnOnce(&mut QueueSettings)) {
        let mut settings = QueueSettings::with_policy(name, policy);
        adjust(&mut settings);
        settings.validate(|p| self.registry.contains(p)).expect("valid settings");
        let retry = RetrySettings { retry_base_seconds: 0.001, retry_max_seconds: 0.01 };
        queues::upsert(&self.pool, &settings, retry).await.expect("queue");
    }

    /// A `priority` queue named `evicting` that holds `max_size` jobs and evicts its lowest.
    async fn evicting_queue(&self, max_size: i64) {
        self.queue("evicting", "priority", |q| {
            q.max_size = Some(max_size);
            q.overflow = OverflowPolicy::EvictLowest;
        })
        .await;
    }

    async fn submit(&self, specs: Vec<Value>) -> SubmitOutcome {
        let jobs: Vec<ValidJob> = specs.into_iter().map(job).collect();
        let mut connection = self.pool.acquire().await.expect("connection");
        let settings = enqueue::QueueSettingsCache::disabled();
        let context = enqueue::SubmitContext { registry: &self.registry, settings: &settings };
        let submitter = Submitter { tenant_id: self.tenant_id, tenant_name: "acme", traceparent: None };
        enqueue::submit(&mut connection, context, submitter, &jobs, None, false).await.expect("submit")
    }

    async fn submit_ids(&self, specs: Vec<Value>) -> Vec<Uuid> {
        match self.submit(specs).await {
            SubmitOutcome::Created { ids, .. } => ids,
            other => panic!("not created: {other:?}"),
        }
    }

    async fn job(&self, id: Uuid) -> jobs::Job {
        jobs::get(&self.pool, None, id).await.expect("get").expect("job")
    }

    async fn state(&self, id: Uuid) -> JobState {
        self.job(id).await.state
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.expect("scalar")
    }

    /// Jobs waiting in `queue`, the number its limit bounds.
    async fn waiting(&self, queue: &str) -> i64 {
        sqlx::query_scalar(
            "select (select count(*) from ready_jobs where queue = $1) + (select count(*) from scheduled_jobs where queue = $1)",
        )
        .bind(queue)
        .fetch_one(&self.pool)
        .await
        .expect("waiting")
    }

    /// Dispatches `id`, the next job waiting, to a new one-slot worker through the
    /// scheduling cycle `hodei serve` runs.
    async fn start(&self, id: Uuid) -> Assigned {
        register_worker(&self.pool, 1).await;
        let assigned = scheduler(&self.pool, 200, 1).tick().await.expect("cycle").assigned;
        assert_eq!(assigned.iter().map(|a| a.job_id).collect::<Vec<_>>(), [id]);
        assigned[0].clone()
    }

    /// The worker reports that the attempt failed.
    async fn fail(&self, attempt: &Assigned) -> Recorded {
        let result =
            AttemptResult { job_id: attempt.job_id, attempt: attempt.attempt, exit_code: Some(1), error: None };
        let mut connection = self.pool.acquire().await.expect("connection");
        assignment::finish(&mut connection, attempt.worker_id, &result, 0.5).await.expect("finish")
    }

    async fn promote_everything_due_now(&self) -> usize {
        sqlx::query("update scheduled_jobs set run_at = now()").execute(&self.pool).await.expect("make due");
        let mut connection = self.pool.acquire().await.expect("connection");
        dispatch::promote_due(&mut connection, &self.registry, 100).await.expect("promote").moved
    }

    async fn redrive(&self, filter: RedriveFilter) -> dispatch::Rerun {
        let mut connection = self.pool.acquire().await.expect("connection");
        dispatch::redrive(&mut connection, &self.registry, &filter).await.expect("redrive")
    }
}

fn rejected_by(outcome: &SubmitOutcome) -> Option<&str> {
    match outcome {
        SubmitOutcome::Rejected { queue, retry_after_seconds: 5 } => Some(queue),
        _ => None,
    }
}

#[tokio::test]
async fn evict_lowest_only_evicts_jobs_of_lower_priority_than_the_newcomer() {
    let store = store().await;
    store.evicting_queue(2).await;
    let older = store.submit_ids(vec![json!({"queue": "evicting", "priority": 5})]).await[0];
    let newer = store.submit_ids(vec![json!({"queue": "evicting", "priority": 5})]).await[0];

    for priority in [3, 5] {
        let outcome = store.submit(vec![json!({"queue": "evicting", "priority": priority})]).await;
        assert_eq!(rejected_by(&outcome), Some("evicting"), "priority {priority}: {outcome:?}");
    }
    assert_eq!((store.state(older).await, store.state(newer).await), (JobState::Queued, JobState::Queued));
    assert_eq!(store.scalar("select count(*) from jobs where state = 'dead_lettered'").await, 0);

    // A higher priority displaces the newest of the lowest; a batch that would need to
    // evict more than there are lower jobs is refused whole, evicting nothing.
    let batch = store
        .submit(vec![
            json!({"queue": "evicting", "priority": 6}),
            json!({"queue": "evicting", "priority": 6}),
            json!({"queue": "evicting", "priority": 6}),
        ])
        .await;
    assert_eq!(rejected_by(&batch), Some("evicting"), "{batch:?}");
    assert_eq!(store.scalar("select count(*) from jobs where state = 'dead_lettered'").await, 0);
    let newcomer = store.submit_ids(vec![json!({"queue": "evicting", "priority": 6})]).await[0];
    let evicted = store.job(newer).await;
    assert_eq!((evicted.state, evicted.dead_letter_reason.as_deref()), (JobState::DeadLettered, Some("evicted")));
    assert_eq!((store.state(older).await, store.state(newcomer).await), (JobState::Queued, JobState::Queued));
    assert_eq!(store.waiting("evicting").await, 2);
    assert_eq!(store.scalar("select count(*) from queue_activity where kind = 'evicted'").await, 1);
}

#[tokio::test]
async fn a_victim_the_scheduling_cycle_holds_is_waited_for_not_passed_over() {
    let store = store().await;
    store.evicting_queue(1).await;
    let low = store.submit_ids(vec![json!({"queue": "evicting", "priority": 1})]).await[0];
    // A cycle looking at the queue holds its rows as `assignment::cycle_candidates` takes them.
    let mut cycle = store.pool.begin().await.expect("begin");
    let held: Vec<Uuid> = sqlx::query_scalar(
        "select job_id from ready_jobs where queue = 'evicting' order by rank, seq for update skip locked",
    )
    .fetch_all(&mut *cycle)
    .await
    .expect("hold");
    assert_eq!(held, [low]);

    let store = std::sync::Arc::new(store);
    let submitting = tokio::spawn({
        let store = store.clone();
        async move { store.submit(vec![json!({"queue": "evicting", "priority": 9})]).await }
    });
    // The submission waits on the row lock; once the cycle lets go, it evicts.
    until_a_statement_waits_for_a_lock(&store.pool, "the submission waits for the held job").await;
    cycle.rollback().await.expect("release");
    let outcome = submitting.await.expect("submission");
    assert!(matches!(outcome, SubmitOutcome::Created { .. }), "{outcome:?}");
    assert_eq!(store.state(low).await, JobState::DeadLettered);
    assert_eq!(store.waiting("evicting").await, 1);
}

#[tokio::test]
async fn a_batch_that_partly_fits_is_rejected_whole_and_recorded_once() {
    let store = store().await;
    store.queue("strict", "fifo", |q| q.max_size = Some(3)).await;
    store.submit_ids(vec![json!({"queue": "strict"})]).await;
    let outcome = store.submit((0..4).map(|_| json!({"queue": "strict"})).collect()).await;
    assert_eq!(rejected_by(&outcome), Some("strict"), "{outcome:?}");
    assert_eq!(store.waiting("strict").await, 1);
    let recorded = store.scalar("select sum(jobs)::int8 from queue_activity where kind = 'rejected'").await;
    assert_eq!(recorded, 2, "the two jobs that did not fit");
    store.submit_ids((0..2).map(|_| json!({"queue": "strict"})).collect()).await;
    assert_eq!(store.waiting("strict").await, 3);
}

#[tokio::test]
async fn redirects_follow_the_chain_and_a_cycle_is_rejected() {
    let store = store().await;
    store.queue("last", "fifo", |_| {}).await;
    for (name, target) in [("middle", "last"), ("first", "middle")] {
        store
            .queue(name, "fifo", |q| {
                q.max_size = Some(1);
                q.overflow = OverflowPolicy::Redirect;
                q.overflow_queue = Some(target.into());
            })
            .await;
    }
    let ids = store.submit_ids((0..3).map(|_| json!({"queue": "first"})).collect()).await;
    let queues: Vec<(String, Option<String>)> = {
        let mut placed = Vec::new();
        for id in &ids {
            let job = store.job(*id).await;
            placed.push((job.queue, job.submitted_queue));
        }
        placed
    };
    assert_eq!(
        queues,
        [
            ("first".to_owned(), None),
            ("middle".to_owned(), Some("first".to_owned())),
            ("last".to_owned(), Some("first".to_owned()))
        ]
    );

    // `last` now redirects back to `first`: with all three full, the chain would cycle.
    store
        .queue("last", "fifo", |q| {
            q.max_size = Some(1);
            q.overflow = OverflowPolicy::Redirect;
            q.overflow_queue = Some("first".into());
        })
        .await;
    let outcome = store.submit(vec![json!({"queue": "first"})]).await;
    assert_eq!(rejected_by(&outcome), Some("last"), "{outcome:?}");
    assert_eq!(store.scalar("select count(*) from jobs").await, 3);
}

#[tokio::test]
async fn a_redrive_into_a_full_queue_is_refused_and_the_job_stays_dead_lettered() {
    let store = store().await;
    store.evicting_queue(1).await;
    let low = store.submit_ids(vec![json!({"queue": "evicting", "priority": 1})]).await[0];
    let high = store.submit_ids(vec![json!({"queue": "evicting", "priority": 9})]).await[0];
    assert_eq!(store.state(low).await, JobState::DeadLettered);

    // The redrive neither evicts `high` (a rerun never evicts) nor overruns the limit.
    let refused = store.redrive(RedriveFilter { job_id: Some(low), limit: 10, ..Default::default() }).await;
    let expected = RefusedRerun { id: low, queue: "evicting".into(), retry_after_seconds: 5 };
    assert_eq!((refused.ids, refused.refused), (vec![], vec![expected]));
    assert_eq!((store.state(low).await, store.state(high).await), (JobState::DeadLettered, JobState::Queued));
    let mut connection = store.pool.acquire().await.expect("connection");
    assert_eq!(
        dispatch::redrive(&mut connection, &store.registry, &RedriveFilter { limit: 10, ..Default::default() })
            .await
            .expect("redrive")
            .ids,
        Vec::<Uuid>::new()
    );

    // Once there is room, the same redrive goes through.
    store.start(high).await;
    let redriven = store.redrive(RedriveFilter { job_id: Some(low), limit: 10, ..Default::default() }).await;
    assert_eq!((redriven.ids, redriven.refused), (vec![low], vec![]));
    assert_eq!(store.state(low).await, JobState::Queued);
}

#[tokio::test]
async fn a_bulk_rerun_puts_back_what_fits_and_leaves_the_rest() {
    let store = store().await;
    store.queue("strict", "fifo", |q| q.max_size = Some(2)).await;
    let ids = store.submit_ids((0..2).map(|_| json!({"queue": "strict"})).collect()).await;
    let mut connection = store.pool.acquire().await.expect("connection");
    for id in &ids {
        let cancelled = jobs::cancel(&mut connection, None, *id).await.expect("cancel");
        assert!(matches!(cancelled, CancelResult::Done(_)), "{cancelled:?}");
    }
    let occupant = store.submit_ids(vec![json!({"queue": "strict"})]).await[0];

    let retried = dispatch::retry_finished(&mut connection, &store.registry, None, &ids).await.expect("retry");
    assert_eq!(retried.ids, [ids[0]]);
    assert_eq!(retried.refused.iter().map(|r| (r.id, r.queue.as_str())).collect::<Vec<_>>(), [(ids[1], "strict")]);
    assert_eq!((store.state(ids[0]).await, store.state(ids[1]).await), (JobState::Queued, JobState::Cancelled));
    assert_eq!(store.waiting("strict").await, 2);
    assert_eq!(store.state(occupant).await, JobState::Queued);
}

#[tokio::test]
async fn an_automatic_retry_keeps_its_place_in_a_full_queue() {
    let store = store().await;
    store.queue("strict", "fifo", |q| q.max_size = Some(1)).await;
    let first = store.submit_ids(vec![json!({"queue": "strict"})]).await[0];
    let running = store.start(first).await;
    // While `first` runs it does not wait: there is room for another.
    let second = store.submit_ids(vec![json!({"queue": "strict"})]).await[0];

    assert!(matches!(store.fail(&running).await, Recorded::Failed(FailureResult::RetryScheduled { .. })));
    assert_eq!(store.promote_everything_due_now().await, 1);
    assert_eq!((store.state(first).await, store.state(second).await), (JobState::Queued, JobState::Queued));
    assert_eq!(store.waiting("strict").await, 2, "one over the limit: the job in flight came back");
    let outcome = store.submit(vec![json!({"queue": "strict"})]).await;
    assert_eq!(rejected_by(&outcome), Some("strict"), "{outcome:?}");
}

#[tokio::test]
async fn a_scheduled_job_holds_its_place_until_it_is_promoted() {
    let store = store().await;
    store.queue("strict", "fifo", |q| q.max_size = Some(1)).await;
    let later = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled = store.submit_ids(vec![json!({"queue": "strict", "not_before": later})]).await[0];
    assert_eq!(store.state(scheduled).await, JobState::Scheduled);
    let outcome = store.submit(vec![json!({"queue": "strict"})]).await;
    assert_eq!(rejected_by(&outcome), Some("strict"), "a scheduled job counts: {outcome:?}");

    assert_eq!(store.promote_everything_due_now().await, 1);
    assert_eq!(store.state(scheduled).await, JobState::Queued);
    assert_eq!(store.waiting("strict").await, 1);
}

#[tokio::test]
async fn a_queue_that_redirects_to_itself_can_be_deleted() {
    let store = store().await;
    store
        .queue("loop", "fifo", |q| {
            q.overflow = OverflowPolicy::Redirect;
            q.overflow_queue = Some("loop".into());
        })
        .await;
    let mut transaction = store.pool.begin().await.expect("begin");
    assert_eq!(queues::delete(&mut transaction, "loop").await.expect("delete"), queues::DeleteOutcome::Deleted);
}
