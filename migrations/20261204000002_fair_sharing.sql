-- Dominant-resource fair sharing across tenants (`hodei_core::drf`): each tenant's past
-- usage in resource-seconds, decayed with a half-life, kept up to date by the `FairUsage`
-- loop from what workers hold. Read by the scheduling cycle to order `fair` queues'
-- candidates across tenants.
alter table tenancy_settings
    add column fair_sharing_enabled boolean not null default false,
    add column fair_sharing_half_life_seconds integer not null default 3600;

create table tenant_fair_usage (
    tenant_id           uuid             primary key references tenants (id) on delete cascade,
    cpu_millis_seconds  double precision not null,
    memory_mib_seconds  double precision not null,
    -- Unix seconds (database clock) the values are decayed to.
    at                  double precision not null
);

-- The scheduling cycle reads the sessions open now or ended within the cool-down, across
-- tenants: by their end, not by scanning every session ever held.
create index burst_sessions_ended_idx on burst_sessions (ended_at);
