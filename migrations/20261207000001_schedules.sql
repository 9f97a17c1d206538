-- Cron schedules of jobs. Each fire is one `schedule_fires` row, inserted in the same
-- transaction as the job it submits: the primary key (schedule, fire time) makes a fire
-- happen at most once across replicas and restarts, and a replica that dies mid-fire
-- rolls back both, so another one fires it.
create table schedules (
    id           uuid        primary key,
    tenant_id    uuid        not null references tenants (id) on delete cascade,
    name         text        not null
        constraint schedules_name_format check (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    spec         jsonb       not null,
    paused       boolean     not null default false,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    -- Fire times after this one are candidates: creation, the last resume, or the last
    -- fire time a tick considered.
    fires_after  timestamptz not null,
    -- The first fire time after the last tick; null when the expression never fires again.
    next_fire_at timestamptz,
    constraint schedules_tenant_name_key unique (tenant_id, name)
);

-- The `Schedules` loop claims `not paused and next_fire_at <= now()`.
create index schedules_due on schedules (next_fire_at) where not paused;

create table schedule_fires (
    schedule_id uuid        not null references schedules (id) on delete cascade,
    fire_at     timestamptz not null,
    -- The job submitted; null when the fire was skipped or admission refused it.
    job_id      uuid        references jobs (id) on delete set null,
    outcome     text        not null
        constraint schedule_fires_outcome check (outcome in ('submitted', 'skipped_overlap', 'rejected')),
    detail      text,
    fired_at    timestamptz not null default now(),
    primary key (schedule_id, fire_at)
);
