-- The worker registry: every worker agent that registered, its capacity and what of it is
-- in use, and when it was last heard from. Workers authenticate with their own token
-- (only its SHA-256 is kept); they never see database credentials.

create table workers (
    id                  uuid        primary key,
    name                text        not null,
    pool                text        not null default 'default',
    state               text        not null
        constraint workers_state check (state in ('registering', 'idle', 'busy', 'draining', 'unhealthy', 'gone')),
    cpu_millis          integer     not null constraint workers_cpu_positive check (cpu_millis > 0),
    memory_mib          integer     not null constraint workers_memory_positive check (memory_mib > 0),
    slots               integer     not null constraint workers_slots_positive check (slots > 0),
    labels              jsonb       not null default '{}',
    instance_id         text,
    token_hash          bytea       not null constraint workers_token_hash_key unique,
    used_cpu_millis     integer     not null default 0,
    used_memory_mib     integer     not null default 0,
    used_slots          integer     not null default 0,
    -- Jobs this worker has run: how much it was reused.
    jobs_run            bigint      not null default 0,
    registered_at       timestamptz not null default now(),
    last_heartbeat_at   timestamptz not null default now(),
    gone_at             timestamptz
) with (fillfactor = 80);
-- Live workers by pool. Heartbeats change no indexed column, so they stay HOT.
create index workers_live_idx on workers (pool, id) where gone_at is null;
