//! Admission and enqueue: everything between "a client submitted jobs" and "they wait in
//! their queue". Whether each job fits, and where it goes when its queue is full, is
//! decided by `hodei_core::admission`, purely; this module reads what the decision needs
//! (settings, sizes, the lowest jobs an `evict_lowest` queue could displace), carries the
//! plan out (evictions, the rejection record), places each admitted job (`queued`, or
//! `scheduled` until its not-before time, and its rank under the queue's policy), and
//! writes the job rows, their ready or scheduled rows, their events and the admission
//! record in one statement.
//!
//! Queues with a size limit are admitted under a per-queue advisory lock (`queue_lock`),
//! so concurrent submissions from any number of replicas cannot overrun it (a newly set
//! limit applies within the settings cache's TTL). Manual reruns (redrives, retries of
//! finished jobs, in `dispatch`) take the same lock and face the same limit; a job's
//! automatic retry and the promotion of a scheduled job keep the place the job was
//! admitted to (see `hodei_core::admission`). Fair queues extend a tenant's tags under a
//! per-(queue, tenant) lock, so parallel submissions cannot share tags.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hodei_core::admission::{self, Admission, Decision, Entry, EntryKind, Plan, QueueLoad, Rejection};
use hodei_core::ordering::{FairContext, PolicyRegistry, RankInput};
use hodei_core::queue::{OverflowPolicy, QueueSettings};
use hodei_core::quota::{self, Excess, QuotaDecision, QuotaRejection, Request};
use hodei_core::ValidJob;
use sqlx::types::Json;
use sqlx::{Acquire, FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::store::jobs::{Idempotency, Job, JobRow, Submitter, JOB_COLUMNS};
use crate::store::queues::{Queue, QueueRow, QUEUE_COLUMNS};

pub use hodei_core::admission::{FULL_QUEUE_RETRY_AFTER_SECONDS, MAX_REDIRECTS};

/// What a submission did.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// Every job was written. `jobs` holds the full records only when they were asked for;
    /// `decisions` says, job by job, what admission did (accepted, redirected, admitted by
    /// evicting a lower-priority job); `evicted` counts the jobs dead-lettered (reason
    /// `evicted`) to make room for them.
    Created { ids: Vec<Uuid>, jobs: Vec<Job>, decisions: Vec<Decision>, deferred: Vec<Deferred>, evicted: u64 },
    /// The idempotency key was seen before with the same request: the original ids.
    Replayed { ids: Vec<Uuid>, jobs: Vec<Job> },
    /// The idempotency key was seen before with a different request. Nothing was written.
    KeyReused,
    /// A job names a queue that does not exist. Nothing was written.
    UnknownQueues(Vec<String>),
    /// A full queue refused the submission (recorded as `rejected`). No job was written.
    Rejected { queue: String, retry_after_seconds: i64 },
    /// The tenant's quota refused the submission (recorded as `rejected` with the limit's
    /// name as the reason, in the queue the first job names). No job was written.
    OverQuota(QuotaRejection),
}

/// A job accepted but deferred by its tenant's quota: it waits (`tenant_at_quota`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    pub id: Uuid,
    pub excess: Excess,
}

/// A queue's settings plus the weighted-fair-queuing state for one tenant.
#[derive(Debug, Clone)]
pub struct QueueState {
    pub queue: Queue,
    pub virtual_time: f64,
    pub tenant_last_tag: Option<f64>,
    pub tenant_weight: f64,
}

/// Settings and fair-queuing state of `queues` as seen by `tenant_id`.
pub async fn queue_states(
    db: impl PgExecutor<'_>,
    queues: &[String],
    tenant_id: Uuid,
) -> sqlx::Result<HashMap<String, QueueState>> {
    let pairs: Vec<(String, Uuid)> = queues.iter().map(|queue| (queue.clone(), tenant_id)).collect();
    let states = queue_states_for_pairs(db, &pairs).await?;
    Ok(states.into_iter().map(|((queue, _), state)| (queue, state)).collect())
}

#[derive(Debug, FromRow)]
struct PairStateRow {
    #[sqlx(flatten)]
    queue: QueueRow,
    tenant_id: Uuid,
    virtual_time: Option<f64>,
    tenant_last_tag: Option<f64>,
    tenant_weight: Option<i32>,
}

/// Queue settings and fair-queuing state for each (queue, tenant) pair; pairs whose queue
/// does not exist are absent.
pub(crate) async fn queue_states_for_pairs(
    db: impl PgExecutor<'_>,
    pairs: &[(String, Uuid)],
) -> sqlx::Result<HashMap<(String, Uuid), QueueState>> {
    let mut unique: Vec<(String, Uuid)> = pairs.to_vec();
    unique.sort();
    unique.dedup();
    let rows: Vec<PairStateRow> = sqlx::query_as(&format!(
        "select {QUEUE_COLUMNS}, p.tenant_id,
            (select r.rank from ready_jobs r where r.queue = q.name order by r.rank, r.seq limit 1) as virtual_time,
            (select max(r.rank) from ready_jobs r where r.queue = q.name and r.fair and r.tenant_id = p.tenant_id)
                as tenant_last_tag,
            (select t.weight from tenants t where t.id = p.tenant_id) as tenant_weight
         from unnest($1::text[], $2::uuid[]) as p(queue, tenant_id) join queues q on q.name = p.queue"
    ))
    .bind(unique.iter().map(|(q, _)| q.as_str()).collect::<Vec<_>>())
    .bind(unique.iter().map(|(_, t)| *t).collect::<Vec<_>>())
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            let queue = row.queue.into_queue()?;
            Ok((
                (queue.settings.name.clone(), row.tenant_id),
                QueueState {
                    queue,
                    virtual_time: row.virtual_time.unwrap_or(0.0),
                    tenant_last_tag: row.tenant_last_tag,
                    tenant_weight: f64::from(row.tenant_weight.unwrap_or(1)),
                },
            ))
        })
        .collect()
}

/// Computes ranks for jobs entering queues now. `positions` counts each (queue, tenant)'s
/// jobs within the call so fair tags advance per job.
#[derive(Debug)]
pub struct Ranker<'a> {
    registry: &'a PolicyRegistry,
    positions: HashMap<(String, Uuid), u32>,
}

/// What ranking needs to know about one job.
#[derive(Debug, Clone, Copy)]
pub struct RankableJob<'a> {
    pub tenant_id: Uuid,
    pub priority: i16,
    pub deadline: Option<DateTime<Utc>>,
    pub timeout_seconds: i32,
    pub metadata: &'a serde_json::Value,
}

impl<'a> Ranker<'a> {
    pub fn new(registry: &'a PolicyRegistry) -> Self {
        Self { registry, positions: HashMap::new() }
    }

    /// The job's rank and whether its queue is fair, or `None` for an unknown policy.
    pub fn rank(&mut self, state: &QueueState, job: RankableJob<'_>, now: DateTime<Utc>) -> Option<(f64, bool)> {
        let settings = &state.queue.settings;
        let policy = self.registry.get(&settings.policy)?;
        let fair = if policy.needs_fair_context() {
            let position = self.positions.entry((settings.name.clone(), job.tenant_id)).or_insert(0);
            *position += 1;
            Some(FairContext {
                virtual_time: state.virtual_time,
                tenant_last_tag: state.tenant_last_tag,
                weight: state.tenant_weight,
                position: *position,
            })
        } else {
            None
        };
        let input = RankInput {
            priority: job.priority,
            enqueued_at: unix_seconds(now),
            deadline: job.deadline.map(unix_seconds),
            estimated_seconds: job.metadata.get("estimated_seconds").and_then(serde_json::Value::as_f64),
            timeout_seconds: job.timeout_seconds,
            fair,
        };
        Some((policy.rank(&input, settings), policy.orders_within_tenant_by_priority()))
    }
}

pub fn unix_seconds(time: DateTime<Utc>) -> f64 {
    time.timestamp_micros() as f64 / 1_000_000.0
}

#[derive(Debug, FromRow)]
struct InsertedRow {
    #[sqlx(flatten)]
    job: JobRow,
    /// How many jobs the statement inserted.
    inserted: i64,
}

/// One job's admission: where it goes and in which state.
#[derive(Debug, Clone)]
struct Placement {
    queue: String,
    submitted_queue: Option<String>,
    scheduled: bool,
    rank: f64,
    fair: bool,
    /// Why it waits from the start, when its tenant's quota deferred it.
    deferred: Option<String>,
}

/// Queue settings this process read recently. Reading them for every submission costs a
/// round trip, and they change rarely: an entry lives for `ttl`, so a settings change
/// reaches every replica within it. Only settings are kept, never anything about the
/// jobs in a queue: queues whose policy needs fair-queuing state always read it fresh.
#[derive(Debug)]
pub struct QueueSettingsCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Queue)>>,
    /// Tenants' limits, kept as long as queue settings (`store::quotas::LimitsCache`).
    pub tenants: crate::store::quotas::LimitsCache,
}

/// How long `hodei serve` keeps queue settings.
pub const QUEUE_SETTINGS_TTL: Duration = Duration::from_secs(1);

impl QueueSettingsCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()), tenants: crate::store::quotas::LimitsCache::new(ttl) }
    }

    /// A cache that keeps nothing: every submission reads the settings.
    pub fn disabled() -> Self {
        Self::new(Duration::ZERO)
    }

    fn get(&self, name: &str) -> Option<Queue> {
        let entries = self.entries.lock().ok()?;
        entries.get(name).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, queue)| queue.clone())
    }

    fn put(&self, queue: &Queue) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(queue.settings.name.clone(), (Instant::now(), queue.clone()));
        }
    }
}

/// What a submission needs from the process besides the database.
#[derive(Debug, Clone, Copy)]
pub struct SubmitContext<'a> {
    pub registry: &'a PolicyRegistry,
    pub settings: &'a QueueSettingsCache,
}

/// Settings and fair-queuing state for `names`: cached settings where they suffice, one
/// query for the rest.
async fn states_for(
    db: &mut PgConnection,
    context: SubmitContext<'_>,
    names: &[String],
    tenant_id: Uuid,
) -> sqlx::Result<HashMap<String, QueueState>> {
    let mut states = HashMap::new();
    let mut to_read = Vec::new();
    for name in names {
        match context.settings.get(name) {
            Some(queue) if context.registry.get(&queue.settings.policy).is_some_and(|p| !p.needs_fair_context()) => {
                let state = QueueState { queue, virtual_time: 0.0, tenant_last_tag: None, tenant_weight: 1.0 };
                states.insert(name.clone(), state);
            }
            _ => to_read.push(name.clone()),
        }
    }
    if !to_read.is_empty() {
        let read = queue_states(&mut *db, &to_read, tenant_id).await?;
        read.values().for_each(|state| context.settings.put(&state.queue));
        states.extend(read);
    }
    Ok(states)
}

/// Admits and writes `jobs` for `submitter`: all of them, or none. Admission is decided by
/// `hodei_core::admission`; this reads what it needs, locks, and carries out the plan.
pub async fn submit(
    db: &mut PgConnection,
    context: SubmitContext<'_>,
    submitter: Submitter<'_>,
    jobs: &[ValidJob],
    idempotency: Option<&Idempotency>,
    return_jobs: bool,
) -> sqlx::Result<SubmitOutcome> {
    let registry = context.registry;
    let placer = Placer { registry, tenant_id: submitter.tenant_id, now: Utc::now() };
    let mut names: Vec<String> = jobs.iter().map(|j| j.queue.clone()).collect();
    names.sort();
    names.dedup();
    let mut states = states_for(&mut *db, context, &names, submitter.tenant_id).await?;
    let missing: Vec<String> = names.iter().filter(|n| !states.contains_key(*n)).cloned().collect();
    if !missing.is_empty() {
        return Ok(SubmitOutcome::UnknownQueues(missing));
    }

    let needs_fair =
        |state: &QueueState| registry.get(&state.queue.settings.policy).is_some_and(|p| p.needs_fair_context());
    let bounded = names.iter().any(|name| states[name].queue.settings.max_size.is_some());
    let fair = names.iter().any(|name| needs_fair(&states[name]));
    let limits = context.settings.tenants.get(&mut *db, submitter.tenant_id).await?;
    let limited = limits != quota::Limits::default();
    if !bounded && !fair && !limited {
        let decisions = as_named(jobs);
        let placements = placer.place(&states, jobs, &decisions, &[]);
        let outcome = insert_or_replay(db, submitter, jobs, &placements, idempotency, return_jobs).await?;
        return Ok(outcome.decided(decisions, 0));
    }

    // A size-limited or fair queue, or a tenant limit, is involved: admit in one
    // transaction, holding the advisory locks of every bounded queue the jobs may reach
    // through redirects, of each fair (queue, tenant) whose tags they extend, and of the
    // tenant's queued jobs when that is limited.
    let mut transaction = db.begin().await?;
    let involved = redirect_closure(&mut transaction, &mut states, &names, submitter.tenant_id).await?;
    let mut locks: Vec<String> = Vec::new();
    for name in &involved {
        let state = &states[name];
        if state.queue.settings.max_size.is_some() {
            locks.push(queue_lock(name));
        }
        if needs_fair(state) {
            locks.push(format!("hodei.fair:{name}:{}", submitter.tenant_id));
        }
    }
    if limits.max_queued_jobs.is_some() {
        locks.push(crate::store::quotas::queued_lock(submitter.tenant_id));
    }
    take_locks(&mut transaction, locks).await?;
    // Tags must extend what is queued now, under the lock, not what was read before it.
    let fair_queues: Vec<String> = involved.iter().filter(|n| needs_fair(&states[*n])).cloned().collect();
    if !fair_queues.is_empty() {
        states.extend(queue_states(&mut *transaction, &fair_queues, submitter.tenant_id).await?);
    }
    // A retry of an earlier submission gets its jobs back even if the queue filled since.
    if let Some(idempotency) = idempotency {
        if idempotency_keys_exist(&mut transaction, submitter, idempotency, jobs.len()).await? {
            let decisions = as_named(jobs);
            let placements = placer.place(&states, jobs, &decisions, &[]);
            let outcome =
                insert_or_replay(&mut transaction, submitter, jobs, &placements, Some(idempotency), return_jobs)
                    .await?;
            return Ok(outcome.decided(decisions, 0));
        }
    }

    let entries: Vec<Entry> = jobs
        .iter()
        .map(|job| Entry { queue: job.queue.clone(), priority: job.priority, kind: EntryKind::Submission })
        .collect();
    let settings: Vec<&QueueSettings> = involved.iter().map(|name| &states[name].queue.settings).collect();
    // The tenant's limits first: a refusal by them writes nothing but its record.
    let quota_decisions = if limited {
        let load = crate::store::quotas::load(&mut transaction, submitter.tenant_id, limits).await?;
        match quota::admit(&load, &requests(jobs)) {
            Ok(decisions) => decisions,
            Err(rejection) => {
                drop(transaction);
                return reject_over_quota(db, submitter, &jobs[0].queue, jobs.len(), rejection).await;
            }
        }
    } else {
        Vec::new()
    };
    let loads = read_loads(&mut transaction, &settings, &entries).await?;
    let plan = admission::decide(&Admission { queues: &loads.queues, entries: &entries });
    if let Some(rejection) = plan.rejection() {
        drop(transaction);
        return reject(db, submitter, &rejection).await;
    }
    let evicted = evict(&mut transaction, &loads.victims(&plan)).await?;
    let placements = placer.place(&states, jobs, &plan.decisions, &quota_decisions);
    let outcome = insert_or_replay(&mut transaction, submitter, jobs, &placements, idempotency, return_jobs).await?;
    if !matches!(outcome, SubmitOutcome::Created { .. }) {
        // Nothing was written: the evictions roll back with the rest.
        return Ok(outcome);
    }
    transaction.commit().await?;
    Ok(outcome.decided(plan.decisions, evicted).deferred_by(&quota_decisions))
}

/// What each job asks of its tenant's quota.
pub fn requests(jobs: &[ValidJob]) -> Vec<Request> {
    jobs.iter().map(|job| Request { cpu_millis: job.cpu_millis.into(), memory_mib: job.memory_mib.into() }).collect()
}

/// Records a refusal by the tenant's quota (outside any transaction, so it survives).
async fn reject_over_quota(
    db: &mut PgConnection,
    submitter: Submitter<'_>,
    queue: &str,
    jobs: usize,
    rejection: QuotaRejection,
) -> sqlx::Result<SubmitOutcome> {
    sqlx::query(
        "insert into queue_activity (queue, tenant_id, kind, jobs, retry_after_seconds, reason)
         values ($1, $2, 'rejected', $5, $3, $4)",
    )
    .bind(queue)
    .bind(submitter.tenant_id)
    .bind(rejection.retry_after_seconds().map(|s| s.min(i64::from(i32::MAX)) as i32))
    .bind(rejection.resource().field())
    .bind(jobs as i32)
    .execute(db)
    .await?;
    Ok(SubmitOutcome::OverQuota(rejection))
}

impl SubmitOutcome {
    /// The outcome with admission's `decisions` and the number of jobs `evicted` to make
    /// room for them, if the jobs were created.
    fn decided(self, decisions: Vec<Decision>, evicted: u64) -> Self {
        match self {
            SubmitOutcome::Created { ids, jobs, deferred, .. } => {
                SubmitOutcome::Created { ids, jobs, decisions, deferred, evicted }
            }
            other => other,
        }
    }

    /// The outcome with the jobs the tenant's quota deferred, if the jobs were created.
    fn deferred_by(self, quota: &[QuotaDecision]) -> Self {
        match self {
            SubmitOutcome::Created { ids, jobs, decisions, evicted, .. } => {
                let deferred = ids
                    .iter()
                    .zip(quota)
                    .filter_map(|(id, decision)| match decision {
                        QuotaDecision::Deferred(excess) => Some(Deferred { id: *id, excess: *excess }),
                        QuotaDecision::Accepted => None,
                    })
                    .collect();
                SubmitOutcome::Created { ids, jobs, decisions, deferred, evicted }
            }
            other => other,
        }
    }
}

/// Each job admitted to the queue it names.
fn as_named(jobs: &[ValidJob]) -> Vec<Decision> {
    jobs.iter().map(|job| Decision::Accept { queue: job.queue.clone() }).collect()
}

/// The advisory lock that serializes admission to a bounded queue.
pub(crate) fn queue_lock(queue: &str) -> String {
    format!("hodei.queue:{queue}")
}

/// Takes transaction-scoped advisory locks in one sorted pass (one statement, in the
/// order of the names), so two transactions can never wait on each other in opposite
/// orders. Every lock named by a string (queues, fair tags, tenants) is taken here.
pub(crate) async fn take_locks(db: &mut PgConnection, mut locks: Vec<String>) -> sqlx::Result<()> {
    locks.sort();
    locks.dedup();
    if locks.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "select count(l) from (
            select pg_advisory_xact_lock(hashtextextended(k, 0)) as l
            from (select k from unnest($1::text[]) with ordinality as u(k, position) order by position) sorted
         ) locked",
    )
    .bind(&locks)
    .execute(db)
    .await?;
    Ok(())
}

/// What admission needs to know about the queues, as read under their locks.
#[derive(Debug)]
pub(crate) struct Loads {
    pub queues: Vec<QueueLoad>,
    /// For each queue with `evictable` priorities, the ids of those jobs, in the same order.
    evictable_ids: HashMap<String, Vec<Uuid>>,
}

impl Loads {
    /// The jobs the plan evicts.
    fn victims(&self, plan: &Plan) -> Vec<(String, Vec<Uuid>)> {
        plan.evictions
            .iter()
            .map(|(queue, count)| {
                let ids = self.evictable_ids.get(queue).map_or(&[][..], |ids| &ids[..(*count).min(ids.len())]);
                (queue.clone(), ids.to_vec())
            })
            .collect()
    }
}

/// How full each of `queues` is, as admission of `entries` needs it: the size of each
/// bounded queue (counted up to its limit) and, for an `evict_lowest` queue that
/// submissions may overflow, its lowest-priority ready jobs below the highest newcomer's
/// priority, as many as there are entries. Those are locked (`for update`), so they are
/// still there to evict when the plan says so. A job the scheduling cycle holds at that
/// moment is waited for, not skipped (skipping would refuse a submission as `queue_full`
/// because a cycle happened to be looking at the job it would evict); the cycle never
/// waits on admission's locks, so the wait is short and cannot deadlock. A job the cycle
/// assigned meanwhile is gone when the wait ends, and the size is read again, since it
/// left room. Call it holding the queues' locks.
pub(crate) async fn read_loads(
    db: &mut PgConnection,
    queues: &[&QueueSettings],
    entries: &[Entry],
) -> sqlx::Result<Loads> {
    let submissions: Vec<i16> =
        entries.iter().filter(|e| e.kind == EntryKind::Submission).map(|e| e.priority).collect();
    let mut loads = Loads { queues: Vec::with_capacity(queues.len()), evictable_ids: HashMap::new() };
    for settings in queues {
        let Some(max_size) = settings.max_size else {
            loads.queues.push(QueueLoad::new(settings, 0, Vec::new()));
            continue;
        };
        let mut size = crate::store::queue_backlog::in_queue(&mut *db, &settings.name, max_size).await?;
        let may_evict = settings.overflow == OverflowPolicy::EvictLowest
            && !submissions.is_empty()
            && size + submissions.len() as i64 > max_size;
        let mut evictable = Vec::new();
        if let (true, Some(highest)) = (may_evict, submissions.iter().max()) {
            let lowest: Vec<(Uuid, i16)> = sqlx::query_as(
                "select job_id, priority from ready_jobs where queue = $1 and priority < $2
                 order by priority, seq desc limit $3 for update",
            )
            .bind(&settings.name)
            .bind(highest)
            .bind(submissions.len() as i64)
            .fetch_all(&mut *db)
            .await?;
            if lowest.len() < submissions.len() {
                size = crate::store::queue_backlog::in_queue(&mut *db, &settings.name, max_size).await?;
            }
            evictable = lowest.iter().map(|(_, priority)| *priority).collect();
            loads.evictable_ids.insert(settings.name.clone(), lowest.into_iter().map(|(id, _)| id).collect());
        }
        loads.queues.push(QueueLoad::new(settings, size, evictable));
    }
    Ok(loads)
}

/// `names` plus every queue reachable from them through overflow redirects (at most
/// `MAX_REDIRECTS` hops), loading the settings of any not yet in `states`.
async fn redirect_closure(
    db: &mut PgConnection,
    states: &mut HashMap<String, QueueState>,
    names: &[String],
    tenant_id: Uuid,
) -> sqlx::Result<Vec<String>> {
    let mut involved: Vec<String> = names.to_vec();
    let mut frontier: Vec<String> = names.to_vec();
    for _ in 0..MAX_REDIRECTS {
        let targets: Vec<String> = frontier
            .iter()
            .filter_map(|name| states.get(name))
            .filter(|state| state.queue.settings.overflow == OverflowPolicy::Redirect)
            .filter_map(|state| state.queue.settings.overflow_queue.clone())
            .filter(|target| !involved.contains(target))
            .collect();
        if targets.is_empty() {
            break;
        }
        let unknown: Vec<String> = targets.iter().filter(|t| !states.contains_key(*t)).cloned().collect();
        if !unknown.is_empty() {
            states.extend(queue_states(&mut *db, &unknown, tenant_id).await?);
        }
        involved.extend(targets.iter().cloned());
        frontier = targets;
    }
    involved.sort();
    involved.dedup();
    // A redirect target that no longer exists has no state: admission treats it as gone.
    involved.retain(|name| states.contains_key(name));
    Ok(involved)
}

/// Whether any of the keys a submission of `count` jobs would use is taken already.
async fn idempotency_keys_exist(
    db: &mut PgConnection,
    submitter: Submitter<'_>,
    idempotency: &Idempotency,
    count: usize,
) -> sqlx::Result<bool> {
    let keys = idempotency_keys(Some(idempotency), count);
    sqlx::query_scalar(
        "select exists (select 1 from jobs
         where tenant_id = $1 and idempotency_key = any($2) and idempotency_key is not null)",
    )
    .bind(submitter.tenant_id)
    .bind(keys.into_iter().flatten().collect::<Vec<String>>())
    .fetch_one(db)
    .await
}

/// The idempotency key of each job: the client's key for a single job, `<key>#<i>` for
/// job `i` of a batch.
fn idempotency_keys(idempotency: Option<&Idempotency>, count: usize) -> Vec<Option<String>> {
    match idempotency {
        None => vec![None; count],
        Some(i) if count == 1 => vec![Some(i.key.clone())],
        Some(i) => (0..count).map(|index| Some(format!("{}#{index}", i.key))).collect(),
    }
}

/// The names among `queues` that no queue has.
pub async fn missing_queues(db: impl PgExecutor<'_>, queues: &[String]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "select distinct q from unnest($1::text[]) as q where not exists (select 1 from queues where name = q) order by q",
    )
    .bind(queues)
    .fetch_all(db)
    .await
}

/// Places admitted jobs: their state (`queued`, or `scheduled` until their not-before
/// time) and their rank in the queue the admission decision sent them to.
#[derive(Debug, Clone, Copy)]
struct Placer<'a> {
    registry: &'a PolicyRegistry,
    tenant_id: Uuid,
    now: DateTime<Utc>,
}

impl Placer<'_> {
    /// One placement per job, in the queue its (admitting) decision names.
    /// `quota` says which were deferred by the tenant's quota (empty: none).
    fn place(
        &self,
        states: &HashMap<String, QueueState>,
        jobs: &[ValidJob],
        decisions: &[Decision],
        quota: &[QuotaDecision],
    ) -> Vec<Placement> {
        let mut ranker = Ranker::new(self.registry);
        jobs.iter()
            .zip(decisions)
            .enumerate()
            .map(|(index, (job, decision))| {
                let queue = decision.queue().unwrap_or(&job.queue).to_owned();
                let scheduled = job.not_before.is_some_and(|at| at > self.now);
                let rankable = RankableJob {
                    tenant_id: self.tenant_id,
                    priority: job.priority,
                    deadline: job.deadline,
                    timeout_seconds: job.timeout_seconds,
                    metadata: &job.metadata,
                };
                // A scheduled job is ranked when it becomes ready, against the queue as it is then.
                let (rank, fair) = if scheduled {
                    (0.0, false)
                } else {
                    // Unknown policies cannot be stored (queue settings are validated), so the
                    // fallback only guards against a process started without a plugin.
                    ranker.rank(&states[&queue], rankable, self.now).unwrap_or((unix_seconds(self.now), false))
                };
                let submitted_queue = decision.redirected_from().map(str::to_owned);
                let deferred = match quota.get(index) {
                    Some(QuotaDecision::Deferred(excess)) => Some(excess.describe()),
                    _ => None,
                };
                Placement { queue, submitted_queue, scheduled, rank, fair, deferred }
            })
            .collect()
    }
}

/// Dead-letters the given ready jobs of each queue with reason `evicted`. They were read
/// and locked by `read_loads`, in the same transaction. Returns how many it dead-lettered.
async fn evict(db: &mut PgConnection, victims: &[(String, Vec<Uuid>)]) -> sqlx::Result<u64> {
    let mut evicted = 0;
    for (queue, ids) in victims.iter().filter(|(_, ids)| !ids.is_empty()) {
        // One activity row per job moved: the statement's row count is the evictions'.
        evicted += sqlx::query(
            "with removed as (
                delete from ready_jobs where queue = $1 and job_id = any($2) returning job_id
             ), moved as (
                update jobs j set state = 'dead_lettered', dead_letter_reason = 'evicted',
                    last_error = 'evicted from a full queue', finished_at = now(), updated_at = now()
                from removed where j.id = removed.job_id
                returning j.id, j.tenant_id, j.attempt
             ), events as (
                insert into job_events (tenant_id, job_id, kind, state, attempt, data)
                select tenant_id, id, 'job.dead_lettered', 'dead_lettered', attempt, '{\"reason\": \"evicted\"}'
                from moved order by id
             )
             insert into queue_activity (queue, tenant_id, kind, job_id, reason)
             select $1, tenant_id, 'evicted', id, 'queue full' from moved",
        )
        .bind(queue)
        .bind(ids)
        .execute(&mut *db)
        .await?
        .rows_affected();
    }
    Ok(evicted)
}

/// Records a rejection (outside any transaction, so it survives) and reports it.
async fn reject(db: &mut PgConnection, submitter: Submitter<'_>, rejection: &Rejection) -> sqlx::Result<SubmitOutcome> {
    sqlx::query(
        "insert into queue_activity (queue, tenant_id, kind, jobs, retry_after_seconds, reason)
         values ($1, $2, 'rejected', $3, $4, 'queue full')",
    )
    .bind(&rejection.queue)
    .bind(submitter.tenant_id)
    .bind(rejection.jobs as i32)
    .bind(rejection.retry_after_seconds as i32)
    .execute(db)
    .await?;
    Ok(SubmitOutcome::Rejected { queue: rejection.queue.clone(), retry_after_seconds: rejection.retry_after_seconds })
}

/// Writes the jobs (all or none), or finds the earlier submission with the same key.
async fn insert_or_replay(
    db: &mut PgConnection,
    submitter: Submitter<'_>,
    jobs: &[ValidJob],
    placements: &[Placement],
    idempotency: Option<&Idempotency>,
    return_jobs: bool,
) -> sqlx::Result<SubmitOutcome> {
    let mut ids: Vec<Uuid> = (0..jobs.len()).map(|_| Uuid::now_v7()).collect();
    ids.sort();
    let keys = idempotency_keys(idempotency, jobs.len());
    let batch = InsertBatch {
        submitter,
        jobs,
        placements,
        ids: &ids,
        keys: &keys,
        fingerprint: idempotency.map(|i| i.fingerprint.as_slice()),
        return_jobs,
    };
    // A batch whose keys partly exist must be undone whole: give it a transaction (a
    // savepoint when the caller already has one). Without keys the one statement is atomic.
    let rows = if idempotency.is_some() && jobs.len() > 1 {
        let mut transaction = db.begin().await?;
        let rows = insert_jobs(&mut transaction, &batch).await?;
        if rows.first().map_or(0, |row| row.inserted) as usize == jobs.len() {
            transaction.commit().await?;
        }
        rows
    } else {
        insert_jobs(&mut *db, &batch).await?
    };

    let inserted = rows.first().map_or(0, |row| row.inserted) as usize;
    if inserted == jobs.len() {
        let jobs = if return_jobs {
            rows.into_iter().map(|row| row.job.into_job()).collect::<sqlx::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        return Ok(SubmitOutcome::Created { ids, jobs, decisions: Vec::new(), deferred: Vec::new(), evicted: 0 });
    }
    if inserted == 0 {
        // A queue deleted since its settings were read: the statement writes nothing then.
        let queues: Vec<String> = placements.iter().map(|p| p.queue.clone()).collect();
        let missing = missing_queues(&mut *db, &queues).await?;
        if !missing.is_empty() {
            return Ok(SubmitOutcome::UnknownQueues(missing));
        }
    }
    let Some(idempotency) = idempotency else {
        return Err(sqlx::Error::Protocol("insert wrote fewer jobs than it was given".into()));
    };
    if inserted > 0 {
        return Ok(SubmitOutcome::KeyReused);
    }
    let keys: Vec<String> = keys.into_iter().flatten().collect();
    let existing = crate::store::jobs::find_by_idempotency_keys(&mut *db, submitter, &keys).await?;
    let same_request = existing.len() == jobs.len()
        && existing.iter().all(|row| row.fingerprint() == Some(idempotency.fingerprint.as_slice()));
    if !same_request {
        return Ok(SubmitOutcome::KeyReused);
    }
    let ids = existing.iter().map(|row| row.id()).collect();
    let jobs = if return_jobs {
        existing.into_iter().map(JobRow::into_job).collect::<sqlx::Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    Ok(SubmitOutcome::Replayed { ids, jobs })
}

/// One insert statement's input.
#[derive(Debug)]
struct InsertBatch<'a> {
    submitter: Submitter<'a>,
    jobs: &'a [ValidJob],
    placements: &'a [Placement],
    ids: &'a [Uuid],
    keys: &'a [Option<String>],
    fingerprint: Option<&'a [u8]>,
    return_jobs: bool,
}

/// Writes the jobs, their ready or scheduled rows, events and admission record in one
/// statement. Jobs whose idempotency key exists are skipped; every returned row carries
/// how many were inserted.
async fn insert_jobs(db: &mut PgConnection, batch: &InsertBatch<'_>) -> sqlx::Result<Vec<InsertedRow>> {
    let (jobs, placements, submitter) = (batch.jobs, batch.placements, batch.submitter);
    // Only the parts a batch needs: without keys an insert cannot conflict (the key index
    // is partial), and it is cheaper as a plain insert than as a speculative one; a table
    // written no row by a statement still runs its statement triggers (the counters).
    let on_key_conflict = if batch.keys.iter().any(Option::is_some) {
        "on conflict (tenant_id, idempotency_key) where idempotency_key is not null do nothing"
    } else {
        ""
    };
    let ready = if placements.iter().any(|p| !p.scheduled) {
        "ready as (
            insert into ready_jobs (job_id, queue, tenant_id, priority, rank, fair, cpu_millis, memory_mib, labels,
                deadline, pending_code, pending_message)
            select j.id, j.queue, j.tenant_id, j.priority, i.rank, i.fair, j.cpu_millis, j.memory_mib, j.labels,
                j.deadline, case when i.deferred is not null then 'tenant_at_quota' end, i.deferred
            from j join input i on i.id = j.id where j.state = 'queued' order by j.id
         ),"
    } else {
        ""
    };
    let scheduled = if placements.iter().any(|p| p.scheduled) {
        "scheduled as (
            insert into scheduled_jobs (job_id, queue, tenant_id, run_at)
            select id, queue, tenant_id, run_at from j where state = 'scheduled'
         ),"
    } else {
        ""
    };
    sqlx::query_as(&format!(
        "with input as (
            select * from unnest($1::uuid[], $2::text[], $3::int2[], $4::jsonb[], $5::jsonb[], $6::text[],
                $7::int4[], $8::int4[], $9::int4[], $10::jsonb[], $11::int4[], $12::timestamptz[],
                $13::timestamptz[], $14::jsonb[], $15::text[], $16::float8[], $17::bool[], $18::bool[], $19::text[],
                $24::text[])
            as i(id, queue, priority, argv, env, working_dir, timeout_seconds, cpu_millis, memory_mib, labels,
                 max_attempts, deadline, not_before, metadata, idempotency_key, rank, fair, scheduled,
                 submitted_queue, deferred)
         ), j as (
            insert into jobs (id, tenant_id, queue, state, priority, argv, env, working_dir, timeout_seconds,
                cpu_millis, memory_mib, labels, max_attempts, deadline, not_before, metadata,
                idempotency_key, idempotency_fingerprint, queued_at, run_at, submitted_queue, traceparent)
            select id, $20, queue, case when scheduled then 'scheduled' else 'queued' end, priority, argv, env,
                working_dir, timeout_seconds, cpu_millis, memory_mib, labels, max_attempts, deadline, not_before,
                metadata, idempotency_key, $21, case when scheduled then null else now() end,
                case when scheduled then not_before end, submitted_queue, $25
            from input
            -- Nothing at all if a queue was deleted since its settings were read.
            where not exists (select 1 from input i where not exists (select 1 from queues q where q.name = i.queue))
            order by id
            {on_key_conflict}
            returning *
         ), {ready} {scheduled} events as (
            insert into job_events (tenant_id, job_id, kind, state, data)
            select tenant_id, id, 'job.submitted', state,
                jsonb_build_object('queue', queue, 'priority', priority)
                || case when submitted_queue is null then '{{}}'::jsonb
                        else jsonb_build_object('redirected_from', submitted_queue) end
            from j order by id
         ), activity as (
            insert into queue_activity (queue, tenant_id, kind, jobs, target_queue, reason)
            select coalesce(j.submitted_queue, j.queue), $20,
                case when i.deferred is not null then 'deferred'
                     when j.submitted_queue is null then 'accepted' else 'redirected' end, count(*),
                case when j.submitted_queue is null then null else j.queue end,
                case when i.deferred is not null then 'tenant_at_quota' end
            from j join input i on i.id = j.id group by 1, 3, 5, 6
         )
         select {JOB_COLUMNS}, $22::text as tenant, (select count(*) from j) as inserted
         from j where $23 or j.id = (select id from j order by id limit 1) order by j.id"
    ))
    .bind(batch.ids)
    .bind(placements.iter().map(|p| p.queue.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.priority).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| Json(&j.argv)).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| Json(&j.env)).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.working_dir.as_deref()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.timeout_seconds).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.cpu_millis).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.memory_mib).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| Json(&j.labels)).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.deadline).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.not_before).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| &j.metadata).collect::<Vec<_>>())
    .bind(batch.keys)
    .bind(placements.iter().map(|p| p.rank).collect::<Vec<_>>())
    .bind(placements.iter().map(|p| p.fair).collect::<Vec<_>>())
    .bind(placements.iter().map(|p| p.scheduled).collect::<Vec<_>>())
    .bind(placements.iter().map(|p| p.submitted_queue.as_deref()).collect::<Vec<_>>())
    .bind(submitter.tenant_id)
    .bind(batch.fingerprint)
    .bind(submitter.tenant_name)
    .bind(batch.return_jobs)
    .bind(placements.iter().map(|p| p.deferred.as_deref()).collect::<Vec<_>>())
    .bind(submitter.traceparent.map(|trace| trace.to_string()))
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> Queue {
        Queue {
            settings: hodei_core::queue::QueueSettings::with_policy(name, "fifo"),
            retry_base_seconds: 2.0,
            retry_max_seconds: 600.0,
            builtin: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn settings_are_kept_for_their_ttl_only() {
        let cache = QueueSettingsCache::new(Duration::from_secs(3600));
        cache.put(&queue("q"));
        assert_eq!(cache.get("q").map(|q| q.settings.name), Some("q".to_owned()));
        assert!(cache.get("other").is_none());

        let disabled = QueueSettingsCache::disabled();
        disabled.put(&queue("q"));
        assert!(disabled.get("q").is_none());

        let expiring = QueueSettingsCache::new(Duration::from_nanos(1));
        expiring.put(&queue("q"));
        std::thread::sleep(Duration::from_millis(1));
        assert!(expiring.get("q").is_none());
    }
}
