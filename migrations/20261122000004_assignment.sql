-- Assignment of jobs to workers: which worker holds the current attempt, and how the
-- attempt ended.
alter table jobs
    add column worker_id uuid,
    add column started_at timestamptz,
    add column exit_code integer;

-- A worker's assigned and running jobs, for its long poll and its heartbeat.
create table worker_jobs (
    job_id      uuid        primary key references jobs (id) on delete cascade,
    worker_id   uuid        not null references workers (id),
    attempt     integer     not null,
    cpu_millis  integer     not null,
    memory_mib  integer     not null,
    -- Set once the worker has received the assignment from its poll, and once it started.
    delivered   boolean     not null default false,
    started     boolean     not null default false,
    assigned_at timestamptz not null default now(),
    -- The worker's heartbeats extend this; past it, the attempt is given up and the job
    -- requeued (fenced by the attempt number).
    lease_expires_at timestamptz not null
);
create index worker_jobs_worker_idx on worker_jobs (worker_id);
create index worker_jobs_lease_idx on worker_jobs (lease_expires_at);

-- When the lease reaper last ran (any replica). A gap longer than a lease means the whole
-- control plane was down: workers could not heartbeat, so their leases are extended
-- rather than expired.
create table control_plane (
    id          integer     primary key constraint control_plane_singleton check (id = 1),
    reaper_at   timestamptz not null
);
insert into control_plane (id, reaper_at) values (1, now());
