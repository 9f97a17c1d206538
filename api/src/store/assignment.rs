//! The scheduling cycle and the worker side of a job: lock a batch of free worker capacity
//! and a batch of candidate jobs (both `skip locked`, so replicas share the work), place
//! them with the pure `hodei_core::placement`, and write every assignment in one short
//! transaction. Then deliver assignments to workers, and record starts and results,
//! fenced by the attempt number and the worker that holds it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use hodei_core::dispatch::plan_dispatch;
use hodei_core::fairness::{retags, slot_order, HeadRow};
use hodei_core::placement::{candidate_budget, place, Demand, FreeWorker, PoolKind, Strategy, TotalCapacity, Unplaced};
use hodei_core::quota::{place_within_quotas, TenantQuota};
use sqlx::types::Json;
use sqlx::{Acquire, FromRow, PgConnection};
use uuid::Uuid;

use crate::store::dispatch::{self, Failure, FailureResult};
use crate::store::quotas;

/// How long a worker may hold an attempt without a heartbeat (`lease`), and hold an
/// assignment without starting it (`assignment`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub lease: Duration,
    pub assignment: Duration,
}

/// How much one cycle takes on.
#[derive(Debug, Clone, Copy)]
pub struct CycleLimits {
    pub workers: i64,
    pub jobs: i64,
}

impl Default for CycleLimits {
    fn default() -> Self {
        Self { workers: 200, jobs: 500 }
    }
}

#[derive(Debug, FromRow)]
struct FreeRow {
    id: Uuid,
    free_cpu: i32,
    free_memory: i32,
    free_slots: i32,
    labels: Json<BTreeMap<String, String>>,
    cpu_millis: i32,
    memory_mib: i32,
    /// The worker's pool: its kind, matching strategy and place in the pool order
    /// (0 for workers outside any declared pool).
    pool_kind: String,
    pool_strategy: Option<String>,
    pool_group: i64,
}

#[derive(Debug, FromRow)]
struct CandidateRow {
    job_id: Uuid,
    /// The queue of the step that read it (the statement reads one queue).
    #[sqlx(skip)]
    queue: String,
    cpu_millis: i32,
    memory_mib: i32,
    labels: Json<BTreeMap<String, String>>,
    tenant_id: Uuid,
    rank: f64,
    priority: i16,
    seq: i64,
    fair: bool,
    /// Among the queue's next rows in tag order (a slot), not only a tenant's best job.
    slot: bool,
    /// Offered to placement: every untagged slot, and each tenant's best jobs for its slots.
    candidate: bool,
    /// Its row holds a note from an earlier cycle on why it waits (`pending_code`).
    noted: bool,
}

/// The next rows of a queue, for the scheduling cycle. In tag order they are slots: how
/// many jobs each tenant of a `fair` queue gets now. Each such tenant's own
/// highest-priority jobs, as many as its slots, are the candidates (as in the `fair`
/// claim); rows without a tag are candidates as they are. All of them are locked. The
/// cycle orders them itself (`in_slot_order`), so the statement sorts nothing. `slots` is
/// how many slots. Parameters: `$1` the queue; with `passing_over`, `$2` the tenants to
/// pass over (at quota: their jobs would only be held again, and must not take the places
/// of other tenants' jobs).
///
/// The number of slots is written into the statement, not bound: a plan made without
/// knowing it would read the whole queue and sort it (seconds at a million jobs, where a
/// plan that knows it reads the head of the order index). Written in, it lets each
/// connection keep one prepared statement per number of slots, for the few numbers a
/// cycle asks for most (`read_candidates`), and run it on a generic plan, planned once
/// instead of once per cycle. Tenants to pass over are rare (tenant limits on, and a
/// tenant at its limit), and a plan that does not know them would guess that they leave
/// few rows and sort the queue as well: that statement is planned with its values every
/// time.
pub fn cycle_candidates(slots: usize, passing_over: bool) -> String {
    let passed_over = if passing_over { "and tenant_id <> all($2::uuid[])" } else { "" };
    CYCLE_CANDIDATES.replace("$slots", &slots.to_string()).replace("$passed_over", passed_over)
}

const CYCLE_CANDIDATES: &str = "with slots as (
        select job_id, cpu_millis, memory_mib, labels, tenant_id, rank, priority, seq, fair,
               pending_code is not null as noted
        from ready_jobs
        where queue = $1 $passed_over order by rank, seq limit $slots for update skip locked
    ), per_tenant as (
        select tenant_id, count(*) as slots from slots where fair group by tenant_id
    ), best as (
        select b.* from per_tenant p cross join lateral (
            select r.job_id, r.cpu_millis, r.memory_mib, r.labels, r.tenant_id, r.rank, r.priority, r.seq, r.fair,
                   r.pending_code is not null as noted
            from ready_jobs r
            where r.queue = $1 and r.fair and r.tenant_id = p.tenant_id
            order by r.priority desc, r.seq limit p.slots
            for update skip locked
        ) b
    )
    select s.*, true as slot, (not s.fair or exists (select 1 from best b where b.job_id = s.job_id)) as candidate
    from slots s
    union all
    select b.*, false as slot, true as candidate
    from best b where not exists (select 1 from slots s where s.job_id = b.job_id)";

impl CandidateRow {
    fn demand(&self) -> Demand<Uuid> {
        Demand {
            id: self.job_id,
            cpu_millis: self.cpu_millis.into(),
            memory_mib: self.memory_mib.into(),
            labels: self.labels.0.clone(),
        }
    }

    fn head(&self) -> HeadRow<Uuid, Uuid> {
        HeadRow {
            job: self.job_id,
            tenant: self.tenant_id,
            rank: self.rank,
            priority: self.priority,
            seq: self.seq,
            fair: self.fair,
            slot: self.slot,
            candidate: self.candidate,
        }
    }
}

/// What a cycle read from the queues, in dispatch order.
struct Candidates {
    /// Offered to placement.
    candidates: Vec<CandidateRow>,
    /// Locked with them, not offered (a `fair` queue's slots that are not their tenant's best).
    locked: Vec<CandidateRow>,
    /// Where each step's candidates start: fair sharing reorders within a step only.
    steps: Vec<usize>,
    /// The budget ran out: some step got as many rows as it asked for (a queue listed
    /// twice returns its first rows again, so the candidates alone may count fewer).
    exhausted: bool,
}

/// Reads and locks up to `budget` candidates: tiers, anti-starvation, each queue's policy
/// order (`hodei_core::dispatch::plan_dispatch`), passing over `saturated` tenants.
async fn read_candidates(
    db: &mut PgConnection,
    heads: &[hodei_core::dispatch::QueueHead],
    database_now: f64,
    saturated: &[Uuid],
    budget: usize,
) -> sqlx::Result<Candidates> {
    let mut read = Candidates { candidates: Vec::new(), locked: Vec::new(), steps: Vec::new(), exhausted: false };
    let mut seen: HashSet<Uuid> = HashSet::new();
    for step in plan_dispatch(heads, database_now, budget) {
        read.steps.push(read.candidates.len());
        let room = budget.saturating_sub(read.candidates.len());
        if room == 0 {
            read.exhausted = true;
            break;
        }
        let asked = room.min(step.max_jobs);
        // Prepared, and planned once, for the sizes a cycle asks for most: its budget (a
        // power of two, or the whole limit) and powers of two (a starving queue's share of
        // the budget). Other sizes (what is left of the budget for the next queue) and
        // reads that pass tenants over are planned with their values.
        let passing_over = !saturated.is_empty();
        let statement = cycle_candidates(asked, passing_over);
        let mut query = sqlx::query_as(&statement).bind(&step.queue);
        if passing_over {
            query = query.bind(saturated);
        }
        let prepared = !passing_over && (asked == budget || asked.is_power_of_two());
        let mut rows: Vec<CandidateRow> = query.persistent(prepared).fetch_all(&mut *db).await?;
        read.exhausted |= rows.iter().filter(|row| row.slot).count() >= asked;
        rows.iter_mut().for_each(|row| row.queue.clone_from(&step.queue));
        // A queue listed twice (starving, then in tier order) must not repeat a job.
        for row in in_slot_order(rows) {
            if !seen.insert(row.job_id) {
                continue;
            }
            if row.candidate {
                read.candidates.push(row);
            } else {
                read.locked.push(row);
            }
        }
    }
    Ok(read)
}

/// A step's rows in the order they are offered to placement (`hodei_core::fairness::slot_order`).
fn in_slot_order(rows: Vec<CandidateRow>) -> Vec<CandidateRow> {
    let heads: Vec<HeadRow<Uuid, Uuid>> = rows.iter().map(CandidateRow::head).collect();
    let mut rows: Vec<Option<CandidateRow>> = rows.into_iter().map(Some).collect();
    slot_order(&heads).into_iter().filter_map(|i| rows[i].take()).collect()
}

/// The candidates with each step of `fair` queue rows that holds several tenants in
/// dominant-resource order (`hodei_core::drf::drf_order`): each tenant keeps its own order
/// (its best jobs first), and the tenant with the lowest dominant share of current and
/// decayed past usage, over its weight, goes next. Steps of other policies keep their order.
async fn in_fair_share_order(
    db: &mut PgConnection,
    candidates: Vec<CandidateRow>,
    steps: &[usize],
    half_life_seconds: f64,
) -> sqlx::Result<Vec<CandidateRow>> {
    let mut bounds: Vec<usize> = steps.to_vec();
    bounds.push(candidates.len());
    let shared = |range: &[CandidateRow]| {
        range.iter().all(|row| row.fair) && range.iter().any(|row| row.tenant_id != range[0].tenant_id)
    };
    let ranges: Vec<(usize, usize)> = bounds
        .windows(2)
        .map(|pair| (pair[0], pair[1]))
        .filter(|(start, end)| start < end && shared(&candidates[*start..*end]))
        .collect();
    if ranges.is_empty() {
        return Ok(candidates);
    }
    let mut tenants: Vec<Uuid> =
        ranges.iter().flat_map(|(a, b)| candidates[*a..*b].iter().map(|c| c.tenant_id)).collect();
    tenants.sort();
    tenants.dedup();
    let (shares, capacity) = quotas::fair_shares(&mut *db, &tenants, half_life_seconds).await?;
    let mut rows: Vec<Option<CandidateRow>> = candidates.into_iter().map(Some).collect();
    let mut ordered = Vec::with_capacity(rows.len());
    let mut next = 0;
    for (start, end) in ranges {
        ordered.extend(rows[next..start].iter_mut().filter_map(Option::take));
        let step: Vec<hodei_core::drf::Candidate<Uuid>> = rows[start..end]
            .iter()
            .flatten()
            .map(|row| hodei_core::drf::Candidate {
                tenant: row.tenant_id,
                cpu_millis: row.cpu_millis.into(),
                memory_mib: row.memory_mib.into(),
            })
            .collect();
        let order = hodei_core::drf::drf_order(&step, &shares, capacity, half_life_seconds);
        ordered.extend(order.into_iter().filter_map(|i| rows[start + i].take()));
        next = end;
    }
    ordered.extend(rows[next..].iter_mut().filter_map(Option::take));
    Ok(ordered)
}

/// What one scheduling cycle did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CycleOutcome {
    /// The attempts it started, in dispatch order.
    pub assigned: Vec<Assigned>,
    /// It ran into its own limits (workers or jobs per cycle): run again at once, as more
    /// may be placeable. Otherwise the next cycle waits for new jobs or freed capacity.
    pub more: bool,
    /// Jobs it dead-lettered instead: their deadline passed while they were queued, in a
    /// queue whose `expired_deadline` is `dead_letter`.
    pub expired: u64,
}

/// A row of the cycle's assigning statement: an attempt started, or a job expired.
#[derive(FromRow)]
struct CycleRow {
    #[sqlx(flatten)]
    assigned: Assigned,
    expired: bool,
}

/// An attempt a scheduling cycle started.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Assigned {
    pub job_id: Uuid,
    pub worker_id: Uuid,
    /// The attempt number: the fencing token for the attempt's start and result.
    pub attempt: i32,
    pub tenant_id: Uuid,
    pub queue: String,
    /// How long the job waited in its queue, in milliseconds.
    pub wait_ms: i64,
    /// It waited past its queue's SLA (now or in an earlier attempt).
    pub sla_breached: bool,
    /// How long ago the job was submitted, in milliseconds.
    pub since_submission_ms: i64,
}

/// One scheduling cycle.
pub async fn run_cycle(db: &mut PgConnection, strategy: Strategy, limits: CycleLimits) -> sqlx::Result<CycleOutcome> {
    let mut transaction = db.begin().await?;
    // Nothing waits: no need to touch the workers at all.
    let (heads, database_now) = dispatch::queue_heads(&mut transaction).await?;
    if heads.is_empty() {
        return Ok(CycleOutcome::default());
    }
    // Lock workers that look free, then read what they hold in a second statement: its
    // snapshot is taken after the locks are granted, so it sees every assignment that
    // other cycles committed to these workers before (they held the same locks). Results
    // only delete `worker_jobs` rows, so a stale view errs on the safe side.
    // The capacity read is cheap to run and dear to plan (0.27 ms), and with its array
    // parameter the planner would plan it anew on every call; a generic plan serves every
    // cycle. For it alone: the other statements keep Postgres's own choice (`auto`: plans
    // made with their values until a generic one is found to cost no more). So this
    // statement, as it runs, sets `plan_cache_mode` for the rest of the transaction
    // (`set local`), and the capacity read, planned under it, sets it to `auto` as it
    // runs: each in a one-time filter, evaluated once before any row, so without a round
    // trip of its own.
    let locked: Vec<Uuid> = sqlx::query_scalar(
        "select w.id from workers w
         where w.gone_at is null and w.state in ('idle', 'busy')
           and (select count(*) from worker_jobs h where h.worker_id = w.id) < w.slots
           and (select set_config('plan_cache_mode', 'force_generic_plan', true)) is not null
         order by w.id limit $1 for update of w skip locked",
    )
    .bind(limits.workers)
    .fetch_all(&mut *transaction)
    .await?;
    if locked.is_empty() {
        return Ok(CycleOutcome::default());
    }
    let workers_full = locked.len() as i64 >= limits.workers;
    let free: Vec<FreeRow> = sqlx::query_as(
        "select w.id, w.cpu_millis - coalesce(u.cpu, 0)::int4 as free_cpu,
                w.memory_mib - coalesce(u.memory, 0)::int4 as free_memory,
                w.slots - u.slots::int4 as free_slots, w.labels, w.cpu_millis, w.memory_mib,
                coalesce(p.kind, 'static') as pool_kind, p.spec->>'strategy' as pool_strategy,
                case when p.id is null then 0 else 1 + (select count(*) from pools q where q.id < p.id) end as pool_group
         from workers w
         left join pools p on p.id = w.pool
         cross join lateral (
             select sum(h.cpu_millis) as cpu, sum(h.memory_mib) as memory, count(*) as slots
             from worker_jobs h where h.worker_id = w.id
         ) u
         where w.id = any($1) and (select set_config('plan_cache_mode', 'auto', true)) is not null
         order by w.id",
    )
    .bind(&locked)
    .fetch_all(&mut *transaction)
    .await?;
    let free: Vec<FreeRow> = free.into_iter().filter(|w| w.free_slots > 0).collect();
    if free.is_empty() {
        return Ok(CycleOutcome::default());
    }

    // Tenants at a limit with no room to burst are passed over (a filter only: the limits
    // are checked again under the tenants' locks below).
    let saturated = quotas::saturated(&mut *transaction).await?;

    let workers: Vec<(FreeWorker<Uuid>, TotalCapacity)> = free
        .iter()
        .map(|w| {
            (
                FreeWorker {
                    id: w.id,
                    kind: if w.pool_kind == "dynamic" { PoolKind::Dynamic } else { PoolKind::Static },
                    free_cpu_millis: w.free_cpu.into(),
                    free_memory_mib: w.free_memory.into(),
                    free_slots: w.free_slots.into(),
                    labels: w.labels.0.clone(),
                    group: u32::try_from(w.pool_group).unwrap_or(u32::MAX),
                    strategy: w
                        .pool_strategy
                        .as_ref()
                        .and_then(|name| serde_json::from_value(serde_json::Value::String(name.clone())).ok()),
                },
                TotalCapacity { cpu_millis: w.cpu_millis.into(), memory_mib: w.memory_mib.into() },
            )
        })
        .collect();
    // As many candidates as the free slots call for; the whole limit when the budget ran
    // out and those cannot fill them (jobs at the head that do not fit where the slots
    // are). Rows this transaction locked in the first read are read again in the second
    // (`skip locked` passes over other transactions' locks only). With tenant
    // limits on, always the whole limit: which candidates a tenant's quota lets through is
    // known only under its lock, taken after the read.
    let free_slots: usize = free.iter().map(|w| w.free_slots as usize).sum();
    let limit = limits.jobs as usize;
    let budget = if saturated.any_limits { limit } else { candidate_budget(free_slots, limit) };
    let mut read = read_candidates(&mut transaction, &heads, database_now, &saturated.tenants, budget).await?;
    if budget < limit && read.exhausted {
        // Would these fill the slots? (Placement is pure: a trial costs no statement.)
        let demands: Vec<Demand<Uuid>> = read.candidates.iter().map(CandidateRow::demand).collect();
        if place(strategy, &demands, &workers).assigned.len() < free_slots {
            read = read_candidates(&mut transaction, &heads, database_now, &saturated.tenants, limit).await?;
        }
    }
    let Candidates { mut candidates, locked: mut locked_rows, steps, .. } = read;
    if candidates.is_empty() {
        return Ok(CycleOutcome::default());
    }
    let jobs_full = candidates.len() >= limit;
    if let Some(half_life) = saturated.fair_sharing_half_life_seconds {
        candidates = in_fair_share_order(&mut transaction, candidates, &steps, half_life).await?;
    }

    let demands: Vec<Demand<Uuid>> = candidates.iter().map(CandidateRow::demand).collect();
    // Limited tenants' locks, then their usage: exact against every other cycle.
    let locked = if saturated.any_limits {
        let mut tenants: Vec<Uuid> = candidates.iter().map(|c| c.tenant_id).collect();
        tenants.sort();
        tenants.dedup();
        quotas::lock_limited(&mut transaction, &tenants).await?
    } else {
        BTreeMap::new()
    };
    let (placement, bursting, opened) = if locked.is_empty() {
        (place(strategy, &demands, &workers), BTreeMap::new(), Vec::new())
    } else {
        let jobs: Vec<(Demand<Uuid>, Uuid)> = demands.into_iter().zip(candidates.iter().map(|c| c.tenant_id)).collect();
        let tenants: BTreeMap<Uuid, TenantQuota> = locked.iter().map(|(id, l)| (*id, l.quota)).collect();
        let placed = place_within_quotas(strategy, &jobs, &workers, &tenants);
        (placed.placement, placed.bursting, placed.opened)
    };
    let noted: HashSet<Uuid> = candidates.iter().filter(|c| c.noted).map(|c| c.job_id).collect();
    record_pending_reasons(&mut transaction, &placement.unplaced, &noted).await?;
    let placed: BTreeSet<Uuid> = placement.assigned.iter().map(|(job, _)| *job).collect();
    locked_rows.extend(candidates);
    // Tags are per queue: each queue's rows move only among themselves.
    let mut by_queue: BTreeMap<&str, Vec<HeadRow<Uuid, Uuid>>> = BTreeMap::new();
    for row in &locked_rows {
        by_queue.entry(row.queue.as_str()).or_default().push(row.head());
    }
    let retags: Vec<(Uuid, f64)> = by_queue.values().flat_map(|heads| retags(heads, &placed)).collect();
    if !retags.is_empty() {
        sqlx::query(
            "update ready_jobs r set rank = t.rank from unnest($1::uuid[], $2::float8[]) as t(job_id, rank)
             where r.job_id = t.job_id",
        )
        .bind(retags.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(retags.iter().map(|(_, rank)| *rank).collect::<Vec<_>>())
        .execute(&mut *transaction)
        .await?;
    }
    if placement.assigned.is_empty() {
        transaction.commit().await?;
        return Ok(CycleOutcome::default());
    }
    let job_ids: Vec<Uuid> = placement.assigned.iter().map(|(job, _)| *job).collect();
    let worker_ids: Vec<Uuid> = placement.assigned.iter().map(|(_, worker)| *worker).collect();
    let rows: Vec<CycleRow> = sqlx::query_as(
        "with pairs as (
            select * from unnest($1::uuid[], $2::uuid[]) as p(job_id, worker_id)
         ), removed as (
            delete from ready_jobs r using pairs p where r.job_id = p.job_id
            returning r.job_id, r.enqueued_at, r.cpu_millis, r.memory_mib, r.queue, r.deadline
         ), settings as (
            -- Each job's queue decides its SLA and what a passed deadline means.
            select r.job_id, q.sla_max_wait_seconds as sla,
                   coalesce(r.deadline < now(), false) as past_deadline,
                   coalesce(r.deadline < now() and q.expired_deadline = 'dead_letter', false) as expired
            from removed r left join queues q on q.name = r.queue
         ), assigned as (
            update jobs j set state = 'assigned', attempt = j.attempt + 1, assigned_at = now(), updated_at = now(),
                worker_id = p.worker_id,
                wait_ms = (extract(epoch from now() - r.enqueued_at) * 1000)::bigint,
                sla_breached = j.sla_breached
                    or (s.sla is not null and now() - r.enqueued_at > make_interval(secs => s.sla::float8))
            from removed r join pairs p on p.job_id = r.job_id join settings s on s.job_id = r.job_id
            where j.id = r.job_id and j.state = 'queued' and not s.expired
            returning j.id, j.tenant_id, j.attempt, j.worker_id, j.wait_ms, j.queue, j.sla_breached, j.created_at,
                r.cpu_millis, r.memory_mib, s.sla, s.past_deadline
         ), expired as (
            update jobs j set state = 'dead_lettered', dead_letter_reason = 'deadline_expired',
                last_error = 'the deadline passed while the job was queued', finished_at = now(), updated_at = now()
            from settings s where j.id = s.job_id and j.state = 'queued' and s.expired
            returning j.id, j.tenant_id, j.queue, j.attempt
         ), held as (
            insert into worker_jobs (job_id, worker_id, attempt, cpu_millis, memory_mib, tenant_id)
            select id, worker_id, attempt, cpu_millis, memory_mib, tenant_id from assigned
         ), reused as (
            update workers w set jobs_run = w.jobs_run + u.jobs, idle_since = now()
            from (select worker_id, count(*) as jobs from assigned group by worker_id) u
            where w.id = u.worker_id
         ), dispatched as (
            insert into queue_activity (queue, tenant_id, kind, jobs, waits_ms, sla_breaches)
            select queue, tenant_id, 'dispatched', count(*), array_agg(wait_ms),
                count(*) filter (where sla is not null and wait_ms > sla::int8 * 1000)
            from assigned group by queue, tenant_id
         ), expiries as (
            insert into queue_activity (queue, tenant_id, kind, job_id, reason)
            select queue, tenant_id, 'deadline_expired', id, 'deadline passed while queued' from expired
            union all
            select queue, tenant_id, 'deadline_expired', id, 'deadline passed while queued; ran anyway'
            from assigned where past_deadline
         ), dead_lettered as (
            insert into job_events (tenant_id, job_id, kind, state, attempt, data)
            select tenant_id, id, 'job.dead_lettered', 'dead_lettered', attempt,
                '{\"reason\": \"deadline_expired\"}'::jsonb
            from expired order by id
         ), notified as (
            select pg_notify('hodei_assigned', worker_id::text) from (select distinct worker_id from assigned) w
         ), events as (
            insert into job_events (tenant_id, job_id, kind, state, attempt, data)
            select tenant_id, id, 'job.assigned', 'assigned', attempt,
                jsonb_build_object('worker_id', worker_id, 'wait_ms', wait_ms)
            from assigned cross join (select count(*) from notified) n order by id
         )
         select id as job_id, worker_id, attempt, tenant_id, queue, wait_ms, sla_breached,
                (extract(epoch from now() - created_at) * 1000)::int8 as since_submission_ms, false as expired
         from assigned
         union all
         select id, '00000000-0000-0000-0000-000000000000'::uuid, attempt, tenant_id, queue, 0::int8, false, 0::int8,
                true
         from expired",
    )
    .bind(&job_ids)
    .bind(&worker_ids)
    .fetch_all(&mut *transaction)
    .await?;
    let (expired, started): (Vec<CycleRow>, Vec<CycleRow>) = rows.into_iter().partition(|row| row.expired);
    let mut assigned: Vec<Assigned> = started.into_iter().map(|row| row.assigned).collect();
    quotas::record_bursts(&mut transaction, &locked, &bursting, &opened).await?;
    transaction.commit().await?;
    let position: HashMap<Uuid, usize> = job_ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    assigned.sort_by_key(|a| position.get(&a.job_id).copied());
    Ok(CycleOutcome { assigned, more: workers_full || jobs_full, expired: expired.len() as u64 })
}

/// The code and words for why a job could not be placed.
pub fn pending_reason(unplaced: &Unplaced) -> (&'static str, String) {
    match unplaced {
        Unplaced::NoWorkerWithLabels(labels) => {
            ("no_worker_with_labels", format!("no worker has the label(s) {}", labels.join(", ")))
        }
        Unplaced::TooLarge => ("no_worker_large_enough", "no worker has enough CPU or memory for this job".to_owned()),
        Unplaced::NoFreeCapacity => ("waiting_for_capacity", "the workers that can run this job are busy".to_owned()),
        Unplaced::TenantAtQuota(excess) => ("tenant_at_quota", excess.describe()),
    }
}

/// Notes on each unplaced candidate why it waits, writing only what changed. A job that
/// only waits for busy workers gets no note (and loses an older one, if its row has one:
/// `noted`): that is the common case under load, where noting it would rewrite every
/// waiting row once, and `pending` tells it from the workers when it is asked. When there
/// is nothing to note, no statement is run.
async fn record_pending_reasons(
    db: &mut PgConnection,
    unplaced: &[(Uuid, Unplaced)],
    noted: &HashSet<Uuid>,
) -> sqlx::Result<()> {
    let unplaced: Vec<&(Uuid, Unplaced)> =
        unplaced.iter().filter(|(id, reason)| *reason != Unplaced::NoFreeCapacity || noted.contains(id)).collect();
    if unplaced.is_empty() {
        return Ok(());
    }
    let reasons: Vec<Option<(&'static str, String)>> = unplaced
        .iter()
        .map(|(_, reason)| (*reason != Unplaced::NoFreeCapacity).then(|| pending_reason(reason)))
        .collect();
    sqlx::query(
        "update ready_jobs r set pending_code = u.code, pending_message = u.message
         from unnest($1::uuid[], $2::text[], $3::text[]) as u(job_id, code, message)
         where r.job_id = u.job_id and (r.pending_code, r.pending_message) is distinct from (u.code, u.message)",
    )
    .bind(unplaced.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(reasons.iter().map(|reason| reason.as_ref().map(|(code, _)| *code)).collect::<Vec<_>>())
    .bind(reasons.iter().map(|reason| reason.as_ref().map(|(_, message)| message.as_str())).collect::<Vec<_>>())
    .execute(db)
    .await?;
    Ok(())
}

/// Why a queued job waits, from the scheduler's last decision and the queue ahead of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// `no_workers`, `tenant_at_quota`, `no_worker_with_labels`, `no_worker_large_enough`,
    /// `waiting_for_capacity` or `queued`.
    pub code: String,
    pub message: String,
    /// Jobs ahead of it in its queue.
    pub position: i64,
}

/// Why `job_id` is still waiting, if it is in a ready queue. A tenant at a quota that
/// this job would pass says so (`tenant_at_quota`), whatever the last cycle noted: the
/// cycle passes over a saturated tenant's rows without touching them. The cycle's note is
/// taken otherwise, except that a note of missing labels or size is passed over when a
/// live worker has both now (the cycle judges by the workers free at the time, and a
/// worker may have come since). Without a note, a job that some live worker could run,
/// were it not full, is `waiting_for_capacity`; otherwise it is `queued` behind the jobs
/// ahead of it.
pub async fn pending(db: &mut PgConnection, job_id: Uuid) -> sqlx::Result<Option<Pending>> {
    #[allow(clippy::type_complexity)]
    let row: Option<(Option<String>, Option<String>, i64, i64, bool, bool, Uuid, i32, i32)> = sqlx::query_as(
        "select r.pending_code, r.pending_message,
                (select count(*) from ready_jobs a where a.queue = r.queue and (a.rank, a.seq) < (r.rank, r.seq)),
                (select count(*) from workers where gone_at is null),
                -- A live worker has its labels and size, and one has room for it now.
                exists (select 1 from workers w where w.gone_at is null and w.state in ('idle', 'busy')
                          and w.labels @> r.labels and w.cpu_millis >= r.cpu_millis and w.memory_mib >= r.memory_mib),
                exists (
                    select 1 from workers w cross join lateral (
                        select coalesce(sum(h.cpu_millis), 0) as cpu, coalesce(sum(h.memory_mib), 0) as memory,
                               count(*) as slots
                        from worker_jobs h where h.worker_id = w.id
                    ) u
                    where w.gone_at is null and w.state in ('idle', 'busy') and w.labels @> r.labels
                      and w.slots > u.slots and w.cpu_millis - u.cpu >= r.cpu_millis
                      and w.memory_mib - u.memory >= r.memory_mib),
                r.tenant_id, r.cpu_millis, r.memory_mib
         from ready_jobs r where r.job_id = $1",
    )
    .bind(job_id)
    .fetch_optional(&mut *db)
    .await?;
    let Some((code, message, ahead, live_workers, runnable, room, tenant_id, cpu_millis, memory_mib)) = row else {
        return Ok(None);
    };
    let limits = quotas::limits(&mut *db, tenant_id).await?;
    let at_quota = if limits.limits_running() {
        let usage = quotas::usage(&mut *db, tenant_id).await?;
        let request = hodei_core::quota::Request { cpu_millis: cpu_millis.into(), memory_mib: memory_mib.into() };
        hodei_core::quota::exceeds(&limits, &usage, request, 100)
    } else {
        None
    };
    let outgrown = |code: &str| runnable && matches!(code, "no_worker_with_labels" | "no_worker_large_enough");
    let (code, message) = match (code, message) {
        _ if live_workers == 0 => ("no_workers".to_owned(), "no worker is registered".to_owned()),
        _ if at_quota.is_some() => ("tenant_at_quota".to_owned(), at_quota.map(|e| e.describe()).unwrap_or_default()),
        (Some(code), Some(message)) if code != "tenant_at_quota" && !outgrown(&code) => (code, message),
        _ if runnable && !room => {
            let (code, message) = pending_reason(&Unplaced::NoFreeCapacity);
            (code.to_owned(), message)
        }
        _ => ("queued".to_owned(), format!("waiting for dispatch behind {ahead} job(s) in its queue")),
    };
    Ok(Some(Pending { code, message, position: ahead }))
}

/// What a worker needs to run one attempt, as stored (`hodei_protocol::Assignment` on the wire).
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct Assignment {
    pub job_id: Uuid,
    /// Report the start and the result with this attempt number.
    pub attempt: i32,
    pub argv: Json<Vec<String>>,
    pub env: Json<HashMap<String, String>>,
    pub working_dir: Option<String>,
    pub timeout_seconds: i32,
    /// The trace context of the request that submitted the job.
    pub traceparent: Option<String>,
}

/// Assignments the worker has not yet received, marked received.
pub async fn take_assignments(db: &mut PgConnection, worker_id: Uuid) -> sqlx::Result<Vec<Assignment>> {
    sqlx::query_as(
        "with delivered as (
            update worker_jobs set delivered = true where worker_id = $1 and not delivered returning job_id, attempt
         )
         select j.id as job_id, d.attempt, j.argv, j.env, j.working_dir, j.timeout_seconds, j.traceparent
         from delivered d join jobs j on j.id = d.job_id order by j.id",
    )
    .bind(worker_id)
    .fetch_all(db)
    .await
}

/// The worker started the attempt. False when the attempt is not this worker's current one.
pub async fn start(db: &mut PgConnection, worker_id: Uuid, job_id: Uuid, attempt: i32) -> sqlx::Result<bool> {
    let start = StartReport { job_id, attempt, succeeds_here: false };
    Ok(start_many(db, worker_id, &[start]).await?.iter().any(|started| started.job_id == job_id))
}

/// A worker's report that it started an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StartReport {
    pub job_id: Uuid,
    pub attempt: i32,
    /// The same transaction records the attempt's success next (`finish_in`): the job goes
    /// from `assigned` to `succeeded` in one write of its row, which that statement makes
    /// (with `started_at`); only its `job.started` event is written here.
    pub succeeds_here: bool,
}

/// An attempt its worker started.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct Started {
    pub job_id: Uuid,
    /// How long ago the job was submitted.
    pub since_submission_seconds: f64,
}

/// The worker started these attempts; returns those that were its current ones. An
/// attempt that `succeeds_here` is only checked (its hold locked, so nothing takes it
/// away before its result is recorded) and given its `job.started` event.
pub async fn start_many(
    db: impl sqlx::PgExecutor<'_>,
    worker_id: Uuid,
    attempts: &[StartReport],
) -> sqlx::Result<Vec<Started>> {
    let mut sorted = attempts.to_vec();
    sorted.sort();
    sqlx::query_as(
        "with reported as (
            select * from unnest($1::uuid[], $2::int4[], $4::bool[]) as r(job_id, attempt, succeeds_here)
         ), held as (
            update worker_jobs w set started = true from reported r
            where w.job_id = r.job_id and w.worker_id = $3 and w.attempt = r.attempt and not r.succeeds_here
            returning w.job_id, w.attempt
         ), ending as (
            select w.job_id, w.attempt from worker_jobs w join reported r on r.job_id = w.job_id
            where w.worker_id = $3 and w.attempt = r.attempt and r.succeeds_here
            for update of w
         ), job as (
            update jobs j set state = 'running', started_at = now(), updated_at = now()
            from held h
            where j.id = h.job_id and j.attempt = h.attempt and j.worker_id = $3 and j.state = 'assigned'
            returning j.id, j.tenant_id, j.attempt, j.created_at
         ), started as (
            select id, tenant_id, attempt, created_at from job
            union all
            select j.id, j.tenant_id, j.attempt, j.created_at from jobs j join ending e on e.job_id = j.id
            where j.attempt = e.attempt and j.worker_id = $3 and j.state = 'assigned'
         ), event as (
            insert into job_events (tenant_id, job_id, kind, state, attempt, data)
            select tenant_id, id, 'job.started', 'running', attempt, jsonb_build_object('worker_id', $3::uuid)
            from started order by id
         )
         select id as job_id, extract(epoch from now() - created_at)::float8 as since_submission_seconds from started",
    )
    .bind(sorted.iter().map(|s| s.job_id).collect::<Vec<_>>())
    .bind(sorted.iter().map(|s| s.attempt).collect::<Vec<_>>())
    .bind(worker_id)
    .bind(sorted.iter().map(|s| s.succeeds_here).collect::<Vec<_>>())
    .fetch_all(db)
    .await
}

/// How an attempt ended on its worker.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub job_id: Uuid,
    pub attempt: i32,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

impl AttemptResult {
    /// Exited 0 with no error: the job succeeded.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && self.error.is_none()
    }
}

/// What recording a result did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Succeeded,
    Failed(FailureResult),
    /// Not this worker's current attempt: refused, nothing changed.
    Stale,
}

/// Records an attempt's result, which frees its capacity.
pub async fn finish(
    db: &mut PgConnection,
    worker_id: Uuid,
    result: &AttemptResult,
    random: f64,
) -> sqlx::Result<Recorded> {
    let mut recorded = finish_many(db, worker_id, std::slice::from_ref(result), random).await?;
    Ok(recorded.pop().unwrap_or(Recorded::Stale))
}

/// Records results in one transaction, in the order given; each is fenced by the
/// worker's hold on the attempt, and one that is not current is `Stale` and changes nothing.
pub async fn finish_many(
    db: &mut PgConnection,
    worker_id: Uuid,
    results: &[AttemptResult],
    random: f64,
) -> sqlx::Result<Vec<Recorded>> {
    Ok(record_report(db, worker_id, &[], results, random).await?.1)
}

/// A worker's report: starts and results, recorded in one transaction (one commit). An
/// attempt that starts and succeeds in the same report has its row written once. A report
/// of starts alone, or of successes alone, is one statement, which is its own transaction.
pub async fn record_report(
    db: &mut PgConnection,
    worker_id: Uuid,
    starts: &[(Uuid, i32)],
    results: &[AttemptResult],
    random: f64,
) -> sqlx::Result<(Vec<Started>, Vec<Recorded>)> {
    let succeeded: HashSet<(Uuid, i32)> =
        results.iter().filter(|r| r.succeeded()).map(|r| (r.job_id, r.attempt)).collect();
    let starts: Vec<StartReport> = starts
        .iter()
        .map(|&(job_id, attempt)| StartReport {
            job_id,
            attempt,
            succeeds_here: succeeded.contains(&(job_id, attempt)),
        })
        .collect();
    if starts.is_empty() && results.is_empty() {
        return Ok(Default::default());
    }
    if starts.is_empty() && succeeded.len() == results.len() {
        return Ok((Vec::new(), finish_in(db, worker_id, results, random).await?));
    }
    if results.is_empty() {
        return Ok((start_many(db, worker_id, &starts).await?, Vec::new()));
    }
    let mut transaction = db.begin().await?;
    let started =
        if starts.is_empty() { Vec::new() } else { start_many(&mut *transaction, worker_id, &starts).await? };
    let recorded = finish_in(&mut transaction, worker_id, results, random).await?;
    transaction.commit().await?;
    Ok((started, recorded))
}

/// Records results on `db`: one statement when every result is a success, more (each
/// failure's retry or dead letter) otherwise, which the caller then runs in a transaction.
async fn finish_in(
    db: &mut PgConnection,
    worker_id: Uuid,
    results: &[AttemptResult],
    random: f64,
) -> sqlx::Result<Vec<Recorded>> {
    let mut order: Vec<&AttemptResult> = results.iter().collect();
    order.sort_by_key(|result| result.job_id);
    // The worker's hold on the job is the fence: a result only counts from the holder. One
    // statement releases the holds, records the successes (state, exit code 0, event) and
    // the failures' exit codes, and wakes the scheduler when capacity came free (the
    // notification's subquery runs at the first row returned, so only if some hold went).
    let held: HashSet<(Uuid, i32)> = sqlx::query_as::<_, (Uuid, i32, Option<i32>)>(
        "with reported as (
            select * from unnest($1::uuid[], $2::int4[], $3::int4[], $5::bool[]) as r(job_id, attempt, exit_code, succeeded)
         ), released as (
            delete from worker_jobs w using reported r
            where w.job_id = r.job_id and w.attempt = r.attempt and w.worker_id = $4
            returning w.job_id, w.attempt
         ), taken as (
            -- Only the results of the attempts released here: a late result of an older
            -- attempt in the same report touches nothing (so no row is written twice).
            select r.* from reported r join released d on d.job_id = r.job_id and d.attempt = r.attempt
         ), coded as (
            update jobs j set exit_code = r.exit_code from taken r
            where j.id = r.job_id and j.attempt = r.attempt and not r.succeeded
         ), done as (
            update jobs j set state = 'succeeded', exit_code = 0, started_at = coalesce(j.started_at, now()),
                finished_at = now(), updated_at = now()
            from taken r
            where j.id = r.job_id and j.attempt = r.attempt and r.succeeded and j.state in ('assigned', 'running')
            returning j.id, j.tenant_id, j.attempt
         ), events as (
            insert into job_events (tenant_id, job_id, kind, state, attempt)
            select tenant_id, id, 'job.succeeded', 'succeeded', attempt from done order by id
         )
         select job_id, attempt, (select 1 from pg_notify('hodei_ready', 'capacity')) from released",
    )
    .bind(order.iter().map(|r| r.job_id).collect::<Vec<_>>())
    .bind(order.iter().map(|r| r.attempt).collect::<Vec<_>>())
    .bind(order.iter().map(|r| r.exit_code).collect::<Vec<_>>())
    .bind(worker_id)
    .bind(order.iter().map(|r| r.succeeded()).collect::<Vec<_>>())
    .fetch_all(&mut *db)
    .await?
    .into_iter()
    .map(|(job_id, attempt, _)| (job_id, attempt))
    .collect();
    let mut recorded = Vec::with_capacity(results.len());
    for result in results {
        if !held.contains(&(result.job_id, result.attempt)) {
            recorded.push(Recorded::Stale);
        } else if result.succeeded() {
            recorded.push(Recorded::Succeeded);
        } else {
            let error = result.error.clone().unwrap_or_else(|| match result.exit_code {
                Some(code) => format!("exited with code {code}"),
                None => "ended without an exit code".to_owned(),
            });
            let failure = Failure { job_id: result.job_id, attempt: result.attempt, error, retryable: true };
            recorded.push(Recorded::Failed(dispatch::fail(&mut *db, &failure, random).await?));
        }
    }
    Ok(recorded)
}

/// What a heartbeat tells the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatOutcome {
    /// Its jobs whose cancellation was requested.
    pub cancel: Vec<Uuid>,
    /// The control plane asks it to drain: take no more work, finish, deregister.
    pub drain: bool,
    /// This heartbeat brought the worker's first interruption notice.
    pub newly_interrupted: bool,
}

/// A heartbeat: the worker is alive (which renews the lease on every attempt it holds:
/// leases are per worker, so a heartbeat costs one row however many jobs run), its health
/// check result is counted, and it learns which of its jobs were cancelled and whether to
/// drain. One statement on the worker's own row. Returns `None` when the worker is gone.
pub async fn heartbeat(
    db: impl sqlx::PgExecutor<'_>,
    worker_id: Uuid,
    draining: bool,
    healthy: bool,
    interruption_notice: bool,
) -> sqlx::Result<Option<HeartbeatOutcome>> {
    // The state is the control plane's to keep, except that a worker may start draining.
    let alive: Option<(String, Vec<Uuid>, bool)> = sqlx::query_as(
        "update workers set last_heartbeat_at = now(),
             state = case when $2 or $4 then 'draining' else state end,
             interrupted_at = coalesce(interrupted_at, case when $4 then now() end),
             idle_since = case when exists (select 1 from worker_jobs h where h.worker_id = $1)
                 then now() else idle_since end,
             health_failures = case when $3 then 0 else health_failures + 1 end
         where id = $1 and gone_at is null
         returning state, array(
             select w.job_id from worker_jobs w join jobs j on j.id = w.job_id
             where w.worker_id = $1 and j.cancel_requested_at is not null order by w.job_id),
             coalesce(interrupted_at = now(), false)",
    )
    .bind(worker_id)
    .bind(draining)
    .bind(healthy)
    .bind(interruption_notice)
    .fetch_optional(db)
    .await?;
    Ok(alive.map(|(state, cancel, newly_interrupted)| HeartbeatOutcome {
        cancel,
        drain: state == "draining",
        newly_interrupted,
    }))
}

/// Asks a worker to drain: the scheduler gives it no more work, and its next heartbeat
/// tells it to finish its jobs and leave.
pub async fn drain_worker(db: impl sqlx::PgExecutor<'_>, worker_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("update workers set state = 'draining' where id = $1 and gone_at is null")
        .bind(worker_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Scale-in: asks a worker to drain only if it holds no job, under the row lock the
/// scheduling cycle takes to assign to it (`for update of w`). The lock is taken first;
/// the check that follows is a new statement whose snapshot sees every assignment a cycle
/// committed while holding it. So a worker is never chosen for scale-in and given a job at
/// the same moment: either the cycle assigned first (the check fails, nothing changes) or
/// the drain committed first (the cycle, which re-reads the row's state once it gets the
/// lock, skips a draining worker). Returns whether the worker now drains.
pub async fn drain_if_idle(db: &mut PgConnection, worker_id: Uuid) -> sqlx::Result<bool> {
    let mut transaction = db.begin().await?;
    let live: Option<Uuid> = sqlx::query_scalar(
        "select id from workers where id = $1 and gone_at is null and state in ('idle', 'busy') for update",
    )
    .bind(worker_id)
    .fetch_optional(&mut *transaction)
    .await?;
    if live.is_none() {
        return Ok(false);
    }
    let drained = sqlx::query(
        "update workers set state = 'draining'
         where id = $1 and not exists (select 1 from worker_jobs h where h.worker_id = $1)",
    )
    .bind(worker_id)
    .execute(&mut *transaction)
    .await?
    .rows_affected()
        == 1;
    transaction.commit().await?;
    Ok(drained)
}

/// A worker is gone for good (its process died, or it was replaced): its attempts are
/// failed at once — retried elsewhere or dead-lettered, fenced by their attempt numbers —
/// instead of waiting for their leases to run out. Returns what became of each attempt it
/// gave up.
pub async fn abandon_worker(
    db: &mut PgConnection,
    worker_id: Uuid,
    reason: &str,
    random: f64,
) -> sqlx::Result<Vec<FailureResult>> {
    let mut transaction = db.begin().await?;
    let held: Vec<(Uuid, i32)> =
        sqlx::query_as("delete from worker_jobs where worker_id = $1 returning job_id, attempt")
            .bind(worker_id)
            .fetch_all(&mut *transaction)
            .await?;
    let mut results = Vec::with_capacity(held.len());
    for (job_id, attempt) in &held {
        let failure = Failure { job_id: *job_id, attempt: *attempt, error: reason.to_owned(), retryable: true };
        results.push(dispatch::fail(&mut transaction, &failure, random).await?);
    }
    sqlx::query("update workers set state = 'gone', gone_at = now() where id = $1 and gone_at is null")
        .bind(worker_id)
        .execute(&mut *transaction)
        .await?;
    if !held.is_empty() {
        sqlx::query("select pg_notify('hodei_ready', 'capacity')").execute(&mut *transaction).await?;
    }
    transaction.commit().await?;
    Ok(results)
}

/// Gives up attempts whose lease expired (their worker stopped heartbeating) or that their
/// worker did not start in time: each is a failed attempt — retried or dead-lettered —
/// fenced by its attempt number. Then marks
/// workers silent for longer than `lease` as gone. Returns the attempts it gave up and the
/// workers it marked gone.
/// After an outage of the whole control plane, leases are extended instead (see below).
pub async fn expire_leases(db: &mut PgConnection, timeouts: Timeouts, random: f64) -> sqlx::Result<LeasesExpired> {
    let lease = timeouts.lease;
    let mut transaction = db.begin().await?;
    // If no replica has reaped for half a lease, the control plane was down and workers had
    // nobody to heartbeat to: grant every live lease and worker a fresh term first.
    let gap: f64 = sqlx::query_scalar(
        "select extract(epoch from now() - reaper_at)::float8 from control_plane where id = 1 for update",
    )
    .fetch_one(&mut *transaction)
    .await?;
    if gap > lease.as_secs_f64() / 2.0 {
        tracing::info!(gap_seconds = gap, "the control plane was away; extending worker leases");
        sqlx::query(
            "with assignments as (
                update worker_jobs set assigned_at = greatest(assigned_at, now()) where not started
             )
             update workers set last_heartbeat_at = greatest(last_heartbeat_at, now()) where gone_at is null",
        )
        .execute(&mut *transaction)
        .await?;
    }
    sqlx::query("update control_plane set reaper_at = now() where id = 1").execute(&mut *transaction).await?;
    let expired: Vec<(Uuid, i32, bool)> = sqlx::query_as(
        "with expired as (
             select h.job_id, greatest(w.last_heartbeat_at, h.assigned_at) < now() - make_interval(secs => $2)
                 as lease_expired
             from worker_jobs h join workers w on w.id = h.worker_id
             where greatest(w.last_heartbeat_at, h.assigned_at) < now() - make_interval(secs => $2)
                or (not h.started and h.assigned_at < now() - make_interval(secs => $1))
             order by h.assigned_at limit 100 for update of h skip locked
         )
         delete from worker_jobs d using expired e where d.job_id = e.job_id
         returning d.job_id, d.attempt, e.lease_expired",
    )
    .bind(timeouts.assignment.as_secs_f64())
    .bind(lease.as_secs_f64())
    .fetch_all(&mut *transaction)
    .await?;
    let mut reaped = Vec::with_capacity(expired.len());
    for (job_id, attempt, lease_expired) in &expired {
        let error = if *lease_expired {
            "lease expired: the worker stopped heartbeating"
        } else {
            "assignment timed out: the worker did not start the job"
        };
        let failure = Failure { job_id: *job_id, attempt: *attempt, error: error.to_owned(), retryable: true };
        let result = dispatch::fail(&mut transaction, &failure, random).await?;
        reaped.push(Reaped { lease_expired: *lease_expired, result });
    }
    let workers_gone = crate::store::workers::mark_silent_gone(&mut *transaction, lease).await?;
    if !expired.is_empty() {
        sqlx::query("select pg_notify('hodei_ready', 'capacity')").execute(&mut *transaction).await?;
    }
    transaction.commit().await?;
    Ok(LeasesExpired { attempts: reaped, workers_gone })
}

/// What one pass of the lease reaper did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeasesExpired {
    /// The attempts it gave up.
    pub attempts: Vec<Reaped>,
    /// The workers it marked gone, silent for longer than a lease.
    pub workers_gone: Vec<crate::store::workers::Left>,
}

/// An attempt the lease reaper gave up, and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reaped {
    /// Its worker stopped heartbeating (else: it did not start the assignment in time).
    pub lease_expired: bool,
    pub result: FailureResult,
}
