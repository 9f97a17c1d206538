-- Pools of workers: what each pool should be (its spec, from the configuration file or
-- the API) and its members, one row per worker the pool provisions, with the provider's
-- handle and the member's provisioning status. The reconcile loop (one replica at a time)
-- drives members towards the spec.

create table pools (
    id          text        primary key,
    kind        text        not null constraint pools_kind check (kind in ('static', 'dynamic')),
    provider    text        not null,
    size        integer     not null constraint pools_size_positive check (size > 0),
    -- The whole spec as given (template, strategy, health, provisioning settings).
    spec        jsonb       not null,
    -- `file` pools follow the configuration file; `api` pools live only here.
    source      text        not null constraint pools_source check (source in ('file', 'api')),
    -- `active`; `deleting` while its members drain; `failed` when fail-fast provisioning gave up.
    state       text        not null default 'active'
        constraint pools_state check (state in ('active', 'deleting', 'failed')),
    state_reason text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

create table pool_members (
    id              uuid        primary key,
    pool_id         text        not null references pools (id) on delete cascade,
    -- provisioning → ready → draining → terminating → (row deleted); failed when its
    -- attempts ran out.
    status          text        not null
        constraint pool_members_status check (status in ('provisioning', 'ready', 'draining', 'terminating', 'failed')),
    attempts        integer     not null default 0,
    -- The provider's handle for the running instance (the local provider: a process id).
    instance        text,
    last_error      text,
    -- When the current provisioning attempt started, and when to try again after a failure.
    attempt_started_at timestamptz,
    retry_at        timestamptz,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);
create index pool_members_pool_idx on pool_members (pool_id);

-- A worker that a pool provisioned registers with its member id as its instance id.
create index workers_instance_idx on workers (instance_id) where gone_at is null;

-- Consecutive failed health checks a worker reported; past a pool's threshold the worker
-- is replaced. Not indexed, so heartbeats stay HOT.
alter table workers add column health_failures integer not null default 0;
