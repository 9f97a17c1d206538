-- Cost is data: a ledger of the instances pools run, the prices in force, every job
-- attempt with the instance it ran on, and a roll-up of the attribution (see
-- `hodei_core::cost`) that the analysts' views read.

-- What an hour of an instance costs, by provider, instance type (or `*`), capacity type and
-- region (or `*`). From the configuration (`cost_tracking.prices`) and `PUT /api/v1/prices`.
create table prices (
    provider        text    not null,
    instance_type   text    not null,
    capacity_type   text    not null constraint prices_capacity_type check (capacity_type in ('on_demand', 'spot')),
    region          text    not null,
    price_per_hour  numeric not null constraint prices_price_not_negative check (price_per_hour >= 0),
    currency        text    not null default 'USD' constraint prices_currency check (currency = 'USD'),
    primary key (provider, instance_type, capacity_type, region)
);

-- One row per instance a pool runs, from launch (the reconcile leader records its handle)
-- to termination. The price is the one in force at launch (null: unpriced). No foreign
-- keys: the ledger outlives its pools and members.
create table instances (
    id              bigint      generated always as identity primary key,
    pool_id         text        not null,
    member_id       uuid        not null,
    provider        text        not null,
    instance        text        not null,
    instance_type   text        not null,
    capacity_type   text        not null,
    region          text        not null,
    -- What the worker offers (the pool's template); null: read from its worker's row.
    cpu_millis      integer,
    memory_mib      integer,
    price_per_hour  numeric,
    currency        text        not null default 'USD',
    launched_at     timestamptz not null default now(),
    terminated_at   timestamptz
);
create index instances_member_idx on instances (member_id);
create index instances_instance_idx on instances (instance);
create index instances_open_idx on instances (launched_at) where terminated_at is null;
create index instances_terminated_idx on instances (terminated_at);

-- Every job attempt that held a worker, from its assignment (capacity is reserved from
-- then) to its end, with the instance it ran on. Written by a trigger when the attempt's
-- `worker_jobs` row goes, whichever path ends it (a result, a lease that expired, a
-- worker abandoned or replaced), when that transaction commits.
create table job_attempts (
    id          bigint      generated always as identity primary key,
    job_id      uuid        not null,
    attempt     integer     not null,
    tenant_id   uuid        not null,
    queue       text        not null,
    pool        text        not null,
    worker_id   uuid        not null,
    instance_id bigint,
    cpu_millis  integer     not null,
    memory_mib  integer     not null,
    started_at  timestamptz not null,
    ended_at    timestamptz not null,
    -- What became of the job as the attempt ended: succeeded, failed (dead-lettered),
    -- retried, cancelled, abandoned (still assigned or running), superseded (a later
    -- attempt is current), ended (anything else).
    outcome     text        not null
);
create index job_attempts_instance_idx on job_attempts (instance_id, started_at);
create index job_attempts_ended_idx on job_attempts (ended_at);
create index job_attempts_job_idx on job_attempts (job_id);

create function record_job_attempt() returns trigger language plpgsql as $$
begin
    insert into job_attempts (job_id, attempt, tenant_id, queue, pool, worker_id, instance_id,
                              cpu_millis, memory_mib, started_at, ended_at, outcome)
    select old.job_id, old.attempt, j.tenant_id, j.queue, w.pool, old.worker_id,
           (select i.id from instances i
             where i.member_id::text = w.instance_id or i.instance = w.instance_id
             order by i.id desc limit 1),
           old.cpu_millis, old.memory_mib, old.assigned_at, greatest(now(), old.assigned_at),
           case when j.attempt <> old.attempt then 'superseded'
                when j.state = 'succeeded' then 'succeeded'
                when j.state = 'cancelled' then 'cancelled'
                when j.state = 'dead_lettered' then 'failed'
                when j.state in ('queued', 'scheduled') then 'retried'
                when j.state in ('assigned', 'running') then 'abandoned'
                else 'ended' end
      from jobs j, workers w
     where j.id = old.job_id and w.id = old.worker_id;
    return null;
end
$$;
-- Deferred to the commit: the paths that end an attempt release its `worker_jobs` row
-- first (lock order) and record what became of the job after, in the same transaction.
create constraint trigger worker_jobs_record_attempt after delete on worker_jobs
    deferrable initially deferred for each row execute function record_job_attempt();

-- The attribution rolled up per hour (`bucket_start`) and instance: one `attempt` row per
-- attempt that ran in it and one `idle` row for what no attempt used. Recomputed whole
-- (delete, insert) per bucket, so rolling a bucket again never counts twice. `amount` is
-- null when the instance is unpriced.
create table cost_allocations (
    bucket_start    timestamptz      not null,
    instance_id     bigint           not null,
    pool            text             not null,
    kind            text             not null constraint cost_allocations_kind check (kind in ('attempt', 'idle')),
    job_id          uuid,
    attempt         integer,
    tenant_id       uuid,
    queue           text,
    seconds         double precision not null,
    share_seconds   double precision not null,
    amount          numeric,
    currency        text             not null default 'USD'
);
create index cost_allocations_bucket_idx on cost_allocations (bucket_start);
create index cost_allocations_job_idx on cost_allocations (job_id) where job_id is not null;

-- `cost_allocations` summed per UTC day, tenant, pool, queue and kind: what the cost
-- reports read. Recomputed for a day whenever one of its buckets is.
create table cost_daily (
    day                     date             not null,
    pool                    text             not null,
    kind                    text             not null,
    tenant_id               uuid,
    queue                   text,
    amount                  double precision not null,
    unpriced_share_seconds  double precision not null,
    attempts                bigint           not null
);
create index cost_daily_day_idx on cost_daily (day);

-- Buckets before `closed_until` are final.
create table cost_rollup (
    id              integer     primary key constraint cost_rollup_singleton check (id = 1),
    closed_until    timestamptz
);
insert into cost_rollup (id, closed_until) values (1, null);

-- For analysts. Amounts sum the priced parts; `unpriced_share_seconds` is what ran on
-- unpriced instances, and a job with any unpriced part has a null amount.
create view cost_by_job as
    select job_id, tenant_id, queue,
           case when bool_or(amount is null) then null else sum(amount) end as amount,
           'USD'::text as currency,
           bool_or(amount is null) as unpriced,
           sum(seconds) as seconds,
           sum(share_seconds) as share_seconds,
           min(bucket_start) as first_bucket
      from cost_allocations where kind = 'attempt' and job_id is not null
     group by job_id, tenant_id, queue;

create view cost_by_tenant_day as
    select (bucket_start at time zone 'UTC')::date as day, tenant_id,
           coalesce(sum(amount), 0) as amount, 'USD'::text as currency,
           coalesce(sum(share_seconds) filter (where amount is null), 0) as unpriced_share_seconds,
           count(distinct (job_id, attempt)) as attempts
      from cost_allocations where kind = 'attempt'
     group by 1, 2;

create view cost_by_pool_day as
    select (bucket_start at time zone 'UTC')::date as day, pool,
           coalesce(sum(amount), 0) as amount,
           coalesce(sum(amount) filter (where kind = 'attempt'), 0) as attributed_amount,
           coalesce(sum(amount) filter (where kind = 'idle'), 0) as idle_amount,
           'USD'::text as currency,
           coalesce(sum(share_seconds) filter (where amount is null), 0) as unpriced_share_seconds
      from cost_allocations
     group by 1, 2;

create view idle_cost_by_pool_day as
    select (bucket_start at time zone 'UTC')::date as day, pool,
           coalesce(sum(amount), 0) as amount, 'USD'::text as currency,
           sum(share_seconds) as idle_share_seconds,
           coalesce(sum(share_seconds) filter (where amount is null), 0) as unpriced_share_seconds
      from cost_allocations where kind = 'idle'
     group by 1, 2;

create view cost_by_queue_day as
    select (bucket_start at time zone 'UTC')::date as day, queue,
           coalesce(sum(amount), 0) as amount, 'USD'::text as currency,
           coalesce(sum(share_seconds) filter (where amount is null), 0) as unpriced_share_seconds,
           count(distinct (job_id, attempt)) as attempts
      from cost_allocations where kind = 'attempt'
     group by 1, 2;
