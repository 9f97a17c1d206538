-- Tenant quotas and burst sessions.
--
-- A tenant's limits are its own (`tenant_quotas`, set through the API), field by field,
-- else the deployment's defaults (`tenancy_settings`, written from the configuration when
-- a replica starts), else none. Usage is never stored: it is summed from what workers
-- hold (`worker_jobs`, which now carries each attempt's tenant) and what waits
-- (`ready_jobs`, `scheduled_jobs`).

-- The deployment's defaults and burst rules: one row, written at start.
create table tenancy_settings (
    id                          integer primary key constraint tenancy_settings_singleton check (id = 1),
    -- Whether tenants without their own limits get the defaults below.
    enabled                     boolean not null default false,
    default_cpu_millis          bigint,
    default_memory_mib          bigint,
    default_max_concurrent_jobs bigint,
    default_max_queued_jobs     bigint,
    burst_enabled               boolean not null default true,
    -- The most a burst session may allow, as a percentage of the quota (150 = 1.5 times).
    burst_max_overage_percentage integer not null default 150,
    burst_duration_minutes      integer not null default 60,
    burst_cooldown_minutes      integer not null default 15,
    -- Open a session by itself when a tenant at quota could use idle capacity.
    burst_automatic             boolean not null default false,
    -- A tenant's own key may start and end its burst sessions.
    burst_tenant_may_request    boolean not null default false,
    -- Whether the monthly budget is enforced (the cost roll-up runs).
    budget_enforced             boolean not null default true,
    updated_at                  timestamptz not null default now()
);
insert into tenancy_settings (id) values (1);

-- A tenant's own limits; a null field falls back to the default.
create table tenant_quotas (
    tenant_id           uuid        primary key references tenants (id) on delete cascade,
    cpu_millis          bigint      constraint tenant_quotas_cpu check (cpu_millis >= 0),
    memory_mib          bigint      constraint tenant_quotas_memory check (memory_mib >= 0),
    max_concurrent_jobs bigint      constraint tenant_quotas_jobs check (max_concurrent_jobs >= 0),
    max_queued_jobs     bigint      constraint tenant_quotas_queued check (max_queued_jobs >= 0),
    -- Attributed cost per calendar month (UTC), in the price list's currency.
    monthly_budget      numeric     constraint tenant_quotas_budget check (monthly_budget >= 0),
    updated_at          timestamptz not null default now()
);

-- Each tenant's limits in force.
create view tenant_limits as
    select t.id as tenant_id, t.name as tenant,
           coalesce(q.cpu_millis, case when s.enabled then s.default_cpu_millis end) as cpu_millis,
           coalesce(q.memory_mib, case when s.enabled then s.default_memory_mib end) as memory_mib,
           coalesce(q.max_concurrent_jobs, case when s.enabled then s.default_max_concurrent_jobs end)
               as max_concurrent_jobs,
           coalesce(q.max_queued_jobs, case when s.enabled then s.default_max_queued_jobs end) as max_queued_jobs,
           q.monthly_budget
      from tenants t
      left join tenant_quotas q on q.tenant_id = t.id
      cross join tenancy_settings s;

-- Burst sessions: a tenant may go above its quota, up to `max_overage_percentage` of it,
-- from `started_at` until `ended_at` (the planned `ends_at`, or earlier when ended by
-- hand). `peak_percentage` is the highest use any of its limited resources reached, as a
-- percentage of the quota, through assignments made during the session.
create table burst_sessions (
    id                      bigint      generated always as identity primary key,
    tenant_id               uuid        not null references tenants (id) on delete cascade,
    started_at              timestamptz not null default now(),
    ends_at                 timestamptz not null,
    ended_at                timestamptz not null,
    max_overage_percentage  integer     not null constraint burst_sessions_overage check (max_overage_percentage > 100),
    automatic               boolean     not null default false,
    peak_percentage         double precision not null default 0,
    constraint burst_sessions_order check (ended_at >= started_at and ends_at >= started_at)
);
create index burst_sessions_tenant_idx on burst_sessions (tenant_id, ended_at desc);

-- Usage by tenant, from what workers hold.
alter table worker_jobs add column tenant_id uuid;
update worker_jobs h set tenant_id = j.tenant_id from jobs j where j.id = h.job_id;
create index worker_jobs_tenant_idx on worker_jobs (tenant_id);

-- Queued jobs by tenant, for the queued-jobs limit and a tenant's admission counters.
create index ready_jobs_tenant_idx on ready_jobs (tenant_id);
create index queue_activity_tenant_idx on queue_activity (tenant_id, at);
