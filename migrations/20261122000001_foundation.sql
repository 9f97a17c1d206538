-- Tenants, API keys, queues, jobs and the job event log.
-- Migrations are append-only: never edit this file once it has shipped.

create table tenants (
    id          uuid        primary key,
    name        text        not null
        constraint tenants_name_key unique
        constraint tenants_name_format check (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    weight      integer     not null default 1
        constraint tenants_weight_range check (weight between 1 and 1000),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- Only a SHA-256 of each key is stored. Admin keys have no tenant; tenant keys exactly one.
create table api_keys (
    id          uuid        primary key,
    tenant_id   uuid        references tenants (id) on delete cascade,
    role        text        not null
        constraint api_keys_role check (role in ('admin', 'tenant')),
    key_hash    bytea       not null
        constraint api_keys_key_hash_key unique,
    -- The first characters of the key, so an operator can tell keys apart.
    key_prefix  text        not null,
    name        text        not null default '',
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz,
    constraint api_keys_role_matches_tenant check ((role = 'admin') = (tenant_id is null))
);
create index api_keys_tenant_idx on api_keys (tenant_id) where tenant_id is not null;

-- Queues are shared by all tenants; fairness between tenants is decided inside a queue.
create table queues (
    name        text        primary key
        constraint queues_name_format check (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    -- Lower tiers are served first: high (0) before default (1) before low (2).
    tier        smallint    not null default 1,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
insert into queues (name, tier) values ('high', 0), ('default', 1), ('low', 2);

-- The full, durable record of every job. The hot ready-queue lives in its own table.
create table jobs (
    id                      uuid        primary key,
    tenant_id               uuid        not null references tenants (id) on delete cascade,
    queue                   text        not null references queues (name),
    state                   text        not null
        constraint jobs_state check (state in
            ('queued', 'assigned', 'running', 'succeeded', 'cancelled', 'dead_lettered')),
    priority                smallint    not null
        constraint jobs_priority_range check (priority between 1 and 10),
    argv                    jsonb       not null,
    env                     jsonb       not null default '{}',
    working_dir             text,
    timeout_seconds         integer     not null,
    cpu_millis              integer     not null,
    memory_mib              integer     not null,
    labels                  jsonb       not null default '{}',
    max_attempts            integer     not null,
    attempt                 integer     not null default 0,
    deadline                timestamptz,
    not_before              timestamptz,
    metadata                jsonb       not null default '{}',
    idempotency_key         text,
    -- SHA-256 of the request that first used `idempotency_key`, to refuse a different
    -- request under the same key.
    idempotency_fingerprint bytea,
    cancel_requested_at     timestamptz,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    finished_at             timestamptz,
    constraint jobs_idempotency_key unique (tenant_id, idempotency_key)
) with (fillfactor = 80);
-- Listing a tenant's jobs newest first (uuid v7 ids are time-ordered). No index covers a
-- column that changes as a job moves through its life (state, timestamps), so those
-- updates stay HOT (heap-only: no index writes); state filters scan this index.
create index jobs_tenant_id_idx on jobs (tenant_id, id);

-- Every state change of every job, appended in the same transaction as the change.
--
-- `id` is the stream position: (top-level transaction id << 20) | (a sequence value's
-- low 20 bits). Readers only return events whose transaction id is below the oldest
-- transaction still running, so every event with a smaller id has committed (or never
-- will): a client that follows `after=<last id>` never skips one. A single transaction
-- must append fewer than 2^20 events (batches are capped far below that).
create sequence job_events_seq;
create table job_events (
    id          bigint      primary key
        default ((pg_current_xact_id()::text::bigint << 20) | (nextval('job_events_seq') & 1048575)),
    tenant_id   uuid        not null references tenants (id) on delete cascade,
    job_id      uuid        not null,
    kind        text        not null,
    state       text        not null,
    attempt     integer     not null default 0,
    data        jsonb       not null default '{}',
    at          timestamptz not null default now()
);
create index job_events_tenant_id_idx on job_events (tenant_id, id);
create index job_events_job_id_idx on job_events (job_id, id);
