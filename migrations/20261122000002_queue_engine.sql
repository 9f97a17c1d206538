-- The queue engine: queue settings, the hot ready queue, delayed jobs, dead letters and
-- the per-queue activity log behind queue status and admission decisions.

alter table queues
    add column policy text not null default 'priority',
    add column max_size bigint
        constraint queues_max_size_positive check (max_size > 0),
    add column overflow text not null default 'reject'
        constraint queues_overflow check (overflow in ('reject', 'redirect', 'evict_lowest')),
    add column overflow_queue text
        constraint queues_overflow_queue_fkey references queues (name),
    add column sla_max_wait_seconds integer
        constraint queues_sla_positive check (sla_max_wait_seconds > 0),
    add column aging_seconds integer not null default 300
        constraint queues_aging_positive check (aging_seconds > 0),
    add column starvation_after_seconds integer not null default 60
        constraint queues_starvation_positive check (starvation_after_seconds > 0),
    add column expired_deadline text not null default 'run'
        constraint queues_expired_deadline check (expired_deadline in ('run', 'dead_letter')),
    add column retry_base_seconds double precision not null default 2,
    add column retry_max_seconds double precision not null default 600,
    add column builtin boolean not null default false;
update queues set builtin = true where name in ('high', 'default', 'low');

alter table jobs drop constraint jobs_state;
alter table jobs add constraint jobs_state check (state in
    ('scheduled', 'queued', 'assigned', 'running', 'succeeded', 'cancelled', 'dead_lettered'));
alter table jobs
    -- When the job last entered its ready queue, and when it last left it for a worker.
    add column queued_at timestamptz,
    add column assigned_at timestamptz,
    -- Milliseconds between the two, for the last dispatch.
    add column wait_ms bigint,
    add column sla_breached boolean not null default false,
    -- For a scheduled job: when it becomes ready.
    add column run_at timestamptz,
    add column dead_letter_reason text,
    add column last_error text,
    -- Set when an overflow redirect moved the job: the queue it was submitted to.
    add column submitted_queue text,
    -- Attempts before this value belong to earlier lives of the job (before a redrive):
    -- `attempt` only ever grows, so it stays a fencing token across redrives.
    add column attempt_base integer not null default 0;

-- Jobs waiting for a time (not-before, retry backoff). Small; read by run_at.
create table scheduled_jobs (
    job_id      uuid        primary key references jobs (id) on delete cascade,
    queue       text        not null,
    run_at      timestamptz not null
);
create index scheduled_jobs_run_at_idx on scheduled_jobs (run_at);
create index scheduled_jobs_queue_idx on scheduled_jobs (queue);

-- The hot ready queue. A row lives here only while its job waits for dispatch; the claim
-- deletes it. `rank` is the queue policy's order key computed at enqueue, so dispatch is an
-- index scan on (queue, rank, seq) whatever the depth of the queue.
create sequence ready_jobs_seq;
create table ready_jobs (
    job_id      uuid        primary key references jobs (id) on delete cascade,
    queue       text        not null,
    tenant_id   uuid        not null,
    priority    smallint    not null,
    rank        double precision not null,
    seq         bigint      not null default nextval('ready_jobs_seq'),
    -- The queue's policy is `fair` (dispatch hands each tenant its best job first).
    fair        boolean     not null,
    cpu_millis  integer     not null,
    memory_mib  integer     not null,
    labels      jsonb       not null,
    deadline    timestamptz,
    enqueued_at timestamptz not null default now()
) with (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
create index ready_jobs_order_idx on ready_jobs (queue, rank, seq);
create index ready_jobs_oldest_idx on ready_jobs (queue, enqueued_at);
create index ready_jobs_fair_tag_idx on ready_jobs (queue, tenant_id, rank) where fair;
create index ready_jobs_fair_priority_idx on ready_jobs (queue, tenant_id, priority desc, seq) where fair;

-- What happened at each queue's door and inside it: admissions (accepted, rejected,
-- deferred, redirected, evicted), dispatches (one row per claim, with its waits),
-- cancellations while queued, expiries. Queue status and its rates are aggregates over a
-- recent window of this table.
create table queue_activity (
    id              bigint      generated always as identity primary key,
    at              timestamptz not null default now(),
    queue           text        not null,
    tenant_id       uuid        references tenants (id) on delete cascade,
    kind            text        not null
        constraint queue_activity_kind check (kind in
            ('accepted', 'rejected', 'deferred', 'redirected', 'evicted', 'cancelled_queued', 'deadline_expired',
             'dispatched')),
    jobs            integer     not null default 1,
    -- For `dispatched`: each job's wait in milliseconds, and how many exceeded the SLA.
    waits_ms        bigint[],
    sla_breaches    integer     not null default 0,
    target_queue    text,
    job_id          uuid,
    retry_after_seconds integer,
    reason          text
);
create index queue_activity_queue_at_idx on queue_activity (queue, at);

-- Queues are checked when jobs enter them; finished jobs keep the name of a queue that was
-- later deleted, so history does not pin queues forever.
alter table jobs drop constraint jobs_queue_fkey;

-- Wake dispatchers when jobs become ready: one notification per statement, with the
-- transaction id as payload, so Postgres folds a transaction's notifications into one.
create function hodei_notify_ready() returns trigger language plpgsql as $$
begin
    perform pg_notify('hodei_ready', txid_current()::text);
    return null;
end
$$;
create trigger ready_jobs_notify after insert on ready_jobs
    for each statement execute function hodei_notify_ready();
