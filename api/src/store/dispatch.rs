//! Jobs after their attempts: a failed attempt's retry with backoff or dead letter (a
//! success is recorded by the report's statement, `assignment::record_report`), promoting
//! scheduled jobs when their time comes, and redriving dead letters. Taking jobs out of
//! their queues is the scheduling cycle's alone (`store::assignment`). Every state change
//! appends its event in the same statement or transaction, and every change of an
//! attempt is fenced by the attempt number, so a late result from an old attempt can
//! never overwrite a newer one.

use chrono::{DateTime, Utc};
use hodei_core::backoff::{decide_failure, jitter_for, FailureDecision};
use hodei_core::dispatch::QueueHead;
use hodei_core::ordering::PolicyRegistry;
use hodei_core::JobState;
use sqlx::{Acquire, FromRow, PgConnection};
use uuid::Uuid;

use crate::store::enqueue::{RankableJob, Ranker};
use crate::store::queues;

/// A random number in `[0, 1)` for backoff jitter, from the operating system.
pub fn random_fraction() -> anyhow::Result<f64> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|error| anyhow::anyhow!("no randomness available: {error}"))?;
    Ok((u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64)
}

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    pub job_id: Uuid,
    pub attempt: i32,
    pub error: String,
    /// False for failures that a retry cannot fix.
    pub retryable: bool,
}

/// What became of a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureResult {
    /// The attempt is not the job's current one (or the job already finished): ignored.
    Stale,
    RetryScheduled {
        run_at: DateTime<Utc>,
    },
    DeadLettered {
        reason: &'static str,
    },
    /// A cancel had been requested: the job is now `cancelled`, not retried.
    Cancelled,
}

/// Records a failed attempt: schedules a retry with backoff, or dead-letters the job.
/// `random` in `[0, 1)` seeds the backoff's jitter, which each job derives from it and its
/// own id and attempt (`hodei_core::backoff::jitter_for`).
pub async fn fail(db: &mut PgConnection, failure: &Failure, random: f64) -> sqlx::Result<FailureResult> {
    let mut transaction = db.begin().await?;
    let current: Option<(String, i32, i32, Uuid, bool)> = sqlx::query_as(
        "select queue, max_attempts, attempt_base, tenant_id, cancel_requested_at is not null from jobs
         where id = $1 and attempt = $2 and state in ('assigned', 'running') for update",
    )
    .bind(failure.job_id)
    .bind(failure.attempt)
    .fetch_optional(&mut *transaction)
    .await?;
    let Some((queue_name, max_attempts, attempt_base, tenant_id, cancel_requested)) = current else {
        return Ok(FailureResult::Stale);
    };
    if cancel_requested {
        // The failure is the cancellation taking effect: never retry a cancelled job.
        sqlx::query(
            "with job as (
                update jobs set state = 'cancelled', last_error = $2, finished_at = now(), updated_at = now()
                where id = $1 returning id, tenant_id, attempt
             )
             insert into job_events (tenant_id, job_id, kind, state, attempt)
             select tenant_id, id, 'job.cancelled', 'cancelled', attempt from job",
        )
        .bind(failure.job_id)
        .bind(&failure.error)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        return Ok(FailureResult::Cancelled);
    }
    let backoff = queues::get(&mut *transaction, &queue_name).await?.map(|q| q.backoff()).unwrap_or_default();
    let attempts_in_this_life = failure.attempt - attempt_base;
    // `random` may be shared by a whole batch of failures: each job mixes in its own id.
    let jitter = jitter_for(random, failure.job_id.as_u128(), failure.attempt);
    let decision = decide_failure(&backoff, attempts_in_this_life, max_attempts, failure.retryable, jitter);
    let result = match decision {
        FailureDecision::RetryAfter(seconds) => {
            // The retry time is on the database's clock, the one the promoter compares it
            // with and the one every replica shares.
            let run_at: DateTime<Utc> = sqlx::query_scalar(
                "with job as (
                    update jobs set state = 'scheduled', run_at = now() + make_interval(secs => $2),
                        last_error = $3, updated_at = now()
                    where id = $1 returning id, tenant_id, attempt, queue, run_at
                 ), scheduled as (
                    insert into scheduled_jobs (job_id, queue, tenant_id, run_at) select id, queue, tenant_id, run_at from job
                 ), event as (
                    insert into job_events (tenant_id, job_id, kind, state, attempt, data)
                    select tenant_id, id, 'job.retry_scheduled', 'scheduled', attempt,
                        jsonb_build_object('run_at', run_at, 'error', $3) from job
                 )
                 select run_at from job",
            )
            .bind(failure.job_id)
            .bind(seconds)
            .bind(&failure.error)
            .fetch_one(&mut *transaction)
            .await?;
            FailureResult::RetryScheduled { run_at }
        }
        FailureDecision::DeadLetter(reason) => {
            dead_letter(&mut transaction, failure.job_id, tenant_id, failure.attempt, reason.as_str(), &failure.error)
                .await?;
            FailureResult::DeadLettered { reason: reason.as_str() }
        }
    };
    transaction.commit().await?;
    Ok(result)
}

async fn dead_letter(
    db: &mut PgConnection,
    job_id: Uuid,
    tenant_id: Uuid,
    attempt: i32,
    reason: &str,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "with job as (
            update jobs set state = 'dead_lettered', dead_letter_reason = $2, last_error = $3,
                finished_at = now(), updated_at = now()
            where id = $1 returning id
         )
         insert into job_events (tenant_id, job_id, kind, state, attempt, data)
         select $4, id, 'job.dead_lettered', 'dead_lettered', $5, jsonb_build_object('reason', $2, 'error', $3)
         from job",
    )
    .bind(job_id)
    .bind(reason)
    .bind(error)
    .bind(tenant_id)
    .bind(attempt)
    .execute(db)
    .await?;
    Ok(())
}

/// A job on its way back into a ready queue.
#[derive(Debug, FromRow)]
struct Requeue {
    id: Uuid,
    tenant_id: Uuid,
    queue: String,
    priority: i16,
    cpu_millis: i32,
    memory_mib: i32,
    labels: serde_json::Value,
    deadline: Option<DateTime<Utc>>,
    timeout_seconds: i32,
    metadata: serde_json::Value,
}

const REQUEUE_COLUMNS: &str = "j.id, j.tenant_id, j.queue, j.priority, j.cpu_millis, j.memory_mib, j.labels,
    j.deadline, j.timeout_seconds, j.metadata";

/// Ranks `jobs` against their queues as they are now and inserts their ready rows, marking
/// them queued with an event of `kind`. Only jobs still in state `from` move (a cancel
/// that committed meanwhile wins; their waiting rows are removed all the same). Jobs whose
/// queue no longer exists are dead-lettered instead (`queue_deleted`).
async fn requeue(
    db: &mut PgConnection,
    registry: &PolicyRegistry,
    jobs: Vec<Requeue>,
    kind: &str,
    from: &[JobState],
) -> sqlx::Result<Requeued> {
    if jobs.is_empty() {
        return Ok(Requeued::default());
    }
    let mut queue_deleted = 0;
    let pairs: Vec<(String, Uuid)> = jobs.iter().map(|j| (j.queue.clone(), j.tenant_id)).collect();
    let states = crate::store::enqueue::queue_states_for_pairs(&mut *db, &pairs).await?;
    let now = Utc::now();
    let mut ranker = Ranker::new(registry);
    let mut ready = Vec::new();
    for job in jobs {
        let Some(state) = states.get(&(job.queue.clone(), job.tenant_id)) else {
            sqlx::query("delete from scheduled_jobs where job_id = $1").bind(job.id).execute(&mut *db).await?;
            dead_letter(db, job.id, job.tenant_id, 0, "queue_deleted", "its queue no longer exists").await?;
            queue_deleted += 1;
            continue;
        };
        let rankable = RankableJob {
            tenant_id: job.tenant_id,
            priority: job.priority,
            deadline: job.deadline,
            timeout_seconds: job.timeout_seconds,
            metadata: &job.metadata,
        };
        let (rank, fair) =
            ranker.rank(state, rankable, now).unwrap_or((crate::store::enqueue::unix_seconds(now), false));
        ready.push((job, rank, fair));
    }
    let count = ready.len();
    sqlx::query(
        "with input as (
            select * from unnest($1::uuid[], $2::text[], $3::uuid[], $4::int2[], $5::float8[], $6::bool[],
                $7::int4[], $8::int4[], $9::jsonb[], $10::timestamptz[])
            as i(id, queue, tenant_id, priority, rank, fair, cpu_millis, memory_mib, labels, deadline)
         ), job as (
            update jobs j set state = 'queued', queued_at = now(), run_at = null, updated_at = now()
            from input i where j.id = i.id and j.state = any($12)
            returning j.id, j.tenant_id, j.attempt, j.queue
         ), ready as (
            insert into ready_jobs (job_id, queue, tenant_id, priority, rank, fair, cpu_millis, memory_mib, labels,
                deadline)
            select i.id, i.queue, i.tenant_id, i.priority, i.rank, i.fair, i.cpu_millis, i.memory_mib, i.labels,
                i.deadline
            from input i join job on job.id = i.id order by i.rank
         ), unscheduled as (
            delete from scheduled_jobs s using input i where s.job_id = i.id
         )
         insert into job_events (tenant_id, job_id, kind, state, attempt, data)
         select tenant_id, id, $11, 'queued', attempt, jsonb_build_object('queue', queue) from job order by id",
    )
    .bind(ready.iter().map(|(j, _, _)| j.id).collect::<Vec<_>>())
    .bind(ready.iter().map(|(j, _, _)| j.queue.as_str()).collect::<Vec<_>>())
    .bind(ready.iter().map(|(j, _, _)| j.tenant_id).collect::<Vec<_>>())
    .bind(ready.iter().map(|(j, _, _)| j.priority).collect::<Vec<_>>())
    .bind(ready.iter().map(|(_, rank, _)| *rank).collect::<Vec<_>>())
    .bind(ready.iter().map(|(_, _, fair)| *fair).collect::<Vec<_>>())
    .bind(ready.iter().map(|(j, _, _)| j.cpu_millis).collect::<Vec<_>>())
    .bind(ready.iter().map(|(j, _, _)| j.memory_mib).collect::<Vec<_>>())
    .bind(ready.iter().map(|(j, _, _)| &j.labels).collect::<Vec<_>>())
    .bind(ready.iter().map(|(j, _, _)| j.deadline).collect::<Vec<_>>())
    .bind(kind)
    .bind(from.iter().map(|state| state.as_str()).collect::<Vec<_>>())
    .execute(&mut *db)
    .await?;
    Ok(Requeued { offered: count, queue_deleted })
}

/// What `requeue` did with the jobs it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Requeued {
    /// Jobs offered back to their queues.
    offered: usize,
    /// Jobs dead-lettered because their queue no longer exists.
    queue_deleted: u64,
}

/// What one promotion pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Promoted {
    /// Jobs moved into their ready queues.
    pub moved: usize,
    /// Jobs dead-lettered (`queue_deleted`) because their queue no longer exists.
    pub queue_deleted: u64,
}

/// Moves scheduled jobs whose time has come into their ready queues, up to `limit` at a
/// time. Any number of replicas may run this at once: rows are taken with `skip locked`.
/// A promotion returns a job to the queue that admitted it: it keeps its place, however
/// full the queue (`hodei_core::admission`, `EntryKind::Return`). A scheduled job was
/// counted against the queue's limit since its admission, so this never changes the count.
pub async fn promote_due(db: &mut PgConnection, registry: &PolicyRegistry, limit: i64) -> sqlx::Result<Promoted> {
    use hodei_core::admission::{self, Admission, Entry, EntryKind};
    let mut transaction = db.begin().await?;
    let due: Vec<Requeue> = sqlx::query_as(&format!(
        "select {REQUEUE_COLUMNS} from scheduled_jobs s join jobs j on j.id = s.job_id
         where s.run_at <= now() order by s.run_at limit $1 for update of s skip locked"
    ))
    .bind(limit)
    .fetch_all(&mut *transaction)
    .await?;
    let entries: Vec<Entry> = due
        .iter()
        .map(|job| Entry { queue: job.queue.clone(), priority: job.priority, kind: EntryKind::Return })
        .collect();
    // Returning jobs need nothing from the queues' loads: none are read. A job the plan
    // refused would stay scheduled, for a later pass (the decision refuses none today).
    let plan = admission::decide(&Admission { queues: &[], entries: &entries });
    let due: Vec<Requeue> = due
        .into_iter()
        .zip(&plan.decisions)
        .filter(|(_, decision)| decision.queue().is_some())
        .map(|(j, _)| j)
        .collect();
    let requeued = requeue(&mut transaction, registry, due, "job.queued", &[JobState::Scheduled]).await?;
    transaction.commit().await?;
    Ok(Promoted { moved: requeued.offered, queue_deleted: requeued.queue_deleted })
}

/// Which dead letters to redrive.
#[derive(Debug, Clone, Default)]
pub struct RedriveFilter {
    pub tenant_scope: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub queue: Option<String>,
    pub reason: Option<String>,
    pub limit: i64,
}

/// What a rerun by hand (a redrive, a retry of a finished job) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rerun {
    /// The jobs put back in their queues, in id order.
    pub ids: Vec<Uuid>,
    /// The jobs a full queue refused; they are left as they were.
    pub refused: Vec<RefusedRerun>,
    /// The jobs dead-lettered (`queue_deleted`) because their queue no longer exists.
    pub queue_deleted: u64,
}

/// A job a full queue refused to take back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRerun {
    pub id: Uuid,
    pub queue: String,
    pub retry_after_seconds: i64,
}

/// Puts dead-lettered jobs back in their queues with a fresh set of attempts, as far as
/// their queues have room: a redrive is a rerun by hand, admitted like a submission but
/// never redirected and never evicting (`hodei_core::admission`, `EntryKind::Rerun`); the
/// jobs a full queue refuses stay dead-lettered. The attempt counter keeps growing (it is
/// the fencing token); `attempt_base` marks where the new set starts.
pub async fn redrive(db: &mut PgConnection, registry: &PolicyRegistry, filter: &RedriveFilter) -> sqlx::Result<Rerun> {
    let mut transaction = db.begin().await?;
    let jobs: Vec<Requeue> = sqlx::query_as(&format!(
        "select {REQUEUE_COLUMNS} from jobs j
         where j.state = 'dead_lettered'
           and ($1::uuid is null or j.tenant_id = $1) and ($2::uuid is null or j.id = $2)
           and ($3::text is null or j.queue = $3) and ($4::text is null or j.dead_letter_reason = $4)
         order by j.id limit $5 for update skip locked"
    ))
    .bind(filter.tenant_scope)
    .bind(filter.job_id)
    .bind(&filter.queue)
    .bind(&filter.reason)
    .bind(filter.limit)
    .fetch_all(&mut *transaction)
    .await?;
    let redriven = start_new_run(&mut transaction, registry, jobs, "job.redriven", &[JobState::DeadLettered]).await?;
    transaction.commit().await?;
    Ok(redriven)
}

/// Puts locked, finished `jobs` back in their queues for a new run, as far as admission
/// lets them in (`admit_reruns`): a fresh set of attempts (`attempt_base` moves up;
/// `attempt` itself never goes back, it stays the fencing token), with an event of `kind`.
async fn start_new_run(
    db: &mut PgConnection,
    registry: &PolicyRegistry,
    jobs: Vec<Requeue>,
    kind: &str,
    from: &[JobState],
) -> sqlx::Result<Rerun> {
    let (jobs, refused) = admit_reruns(&mut *db, jobs).await?;
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    sqlx::query(
        "update jobs set attempt_base = attempt, dead_letter_reason = null, finished_at = null,
             cancel_requested_at = null
         where id = any($1)",
    )
    .bind(&ids)
    .execute(&mut *db)
    .await?;
    let requeued = requeue(&mut *db, registry, jobs, kind, from).await?;
    let ids = sqlx::query_scalar("select id from jobs where id = any($1) and state = 'queued' order by id")
        .bind(&ids)
        .fetch_all(&mut *db)
        .await?;
    Ok(Rerun { ids, refused, queue_deleted: requeued.queue_deleted })
}

/// Splits reruns into those their queues take and those a full queue refuses, holding the
/// bounded queues' admission locks (the ones submissions take) until the transaction ends.
/// Jobs whose queue no longer exists pass: `requeue` dead-letters them.
async fn admit_reruns(db: &mut PgConnection, jobs: Vec<Requeue>) -> sqlx::Result<(Vec<Requeue>, Vec<RefusedRerun>)> {
    use crate::store::enqueue;
    use hodei_core::admission::{self, Admission, Decision, Entry, EntryKind};
    use hodei_core::queue::QueueSettings;
    let mut names: Vec<String> = jobs.iter().map(|job| job.queue.clone()).collect();
    names.sort();
    names.dedup();
    let queues = queues::get_many(&mut *db, &names).await?;
    let bounded: Vec<String> = queues
        .iter()
        .filter(|q| q.settings.max_size.is_some())
        .map(|q| enqueue::queue_lock(&q.settings.name))
        .collect();
    if bounded.is_empty() {
        return Ok((jobs, Vec::new()));
    }
    enqueue::take_locks(&mut *db, bounded).await?;
    let (known, gone): (Vec<Requeue>, Vec<Requeue>) =
        jobs.into_iter().partition(|job| queues.iter().any(|q| q.settings.name == job.queue));
    let entries: Vec<Entry> = known
        .iter()
        .map(|job| Entry { queue: job.queue.clone(), priority: job.priority, kind: EntryKind::Rerun })
        .collect();
    let settings: Vec<&QueueSettings> = queues.iter().map(|q| &q.settings).collect();
    let loads = enqueue::read_loads(&mut *db, &settings, &entries).await?;
    let plan = admission::decide(&Admission { queues: &loads.queues, entries: &entries });
    let mut admitted = gone;
    let mut refused = Vec::new();
    for (job, decision) in known.into_iter().zip(plan.decisions) {
        match decision {
            Decision::Reject { queue, retry_after_seconds } => {
                refused.push(RefusedRerun { id: job.id, queue, retry_after_seconds })
            }
            _ => admitted.push(job),
        }
    }
    Ok((admitted, refused))
}

/// The states from which a job can be run again by hand.
pub const RETRYABLE_STATES: [JobState; 3] = [JobState::Succeeded, JobState::Cancelled, JobState::DeadLettered];

/// Runs a finished job again (succeeded, cancelled or dead-lettered), by hand: back in its
/// queue with a fresh set of attempts, like a redrive, and like a redrive refused by a full
/// queue. Jobs that are not finished (or not in `tenant_scope`) are left alone.
pub async fn retry_finished(
    db: &mut PgConnection,
    registry: &PolicyRegistry,
    tenant_scope: Option<Uuid>,
    ids: &[Uuid],
) -> sqlx::Result<Rerun> {
    let mut transaction = db.begin().await?;
    let states: Vec<&str> = RETRYABLE_STATES.iter().map(|state| state.as_str()).collect();
    let jobs: Vec<Requeue> = sqlx::query_as(&format!(
        "select {REQUEUE_COLUMNS} from jobs j
         where j.id = any($1) and j.state = any($2) and ($3::uuid is null or j.tenant_id = $3)
         order by j.id for update"
    ))
    .bind(ids)
    .bind(&states)
    .bind(tenant_scope)
    .fetch_all(&mut *transaction)
    .await?;
    let retried = start_new_run(&mut transaction, registry, jobs, "job.retried", &RETRYABLE_STATES).await?;
    transaction.commit().await?;
    Ok(retried)
}

/// Every queue with ready jobs, with its tier and the queueing time of its oldest job: the
/// input of the tier and anti-starvation plan; and the database's clock (Unix seconds),
/// the one those times are on.
pub(crate) async fn queue_heads(db: &mut PgConnection) -> sqlx::Result<(Vec<QueueHead>, f64)> {
    let heads: Vec<(String, i16, i32, DateTime<Utc>, f64)> = sqlx::query_as(
        "select q.name, q.tier, q.starvation_after_seconds, h.oldest, extract(epoch from now())::float8
         from queues q cross join lateral (
             select r.enqueued_at as oldest from ready_jobs r where r.queue = q.name order by r.enqueued_at limit 1
         ) h",
    )
    .fetch_all(db)
    .await?;
    let now = heads.first().map_or(0.0, |head| head.4);
    let heads = heads
        .into_iter()
        .map(|(queue, tier, starvation_after, oldest, _)| QueueHead {
            queue,
            tier,
            oldest_enqueued_at: crate::store::enqueue::unix_seconds(oldest),
            starvation_after_seconds: starvation_after.into(),
        })
        .collect();
    Ok((heads, now))
}
