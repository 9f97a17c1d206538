-- Dynamic pools: the autoscaler's state per pool and the history of its decisions.
--
-- `size` holds a static pool's size or a dynamic pool's maximum; `desired_size` is what the
-- autoscaler last decided (null for static pools). `lifecycle`: `scaling` (normal),
-- `paused` (the autoscaler holds the current size), `drained` (every worker drains and no
-- new one starts until resumed).
alter table pools
    add column lifecycle text not null default 'scaling'
        constraint pools_lifecycle check (lifecycle in ('scaling', 'paused', 'drained')),
    add column desired_size integer,
    add column last_scale_out_at timestamptz,
    add column last_scale_in_at timestamptz;

-- Every decision the autoscaler made, with its inputs. Consecutive identical holds are one
-- row whose `repeats` counts them and `last_decided_at` says when the last one was made.
create table scaling_history (
    id              bigint      generated always as identity primary key,
    pool_id         text        not null references pools (id) on delete cascade,
    decided_at      timestamptz not null default now(),
    last_decided_at timestamptz not null default now(),
    repeats         integer     not null default 1,
    action          text        not null constraint scaling_history_action check (action in ('scale_out', 'scale_in', 'hold')),
    current_size    integer     not null,
    desired_size    integer     not null,
    recommended     integer     not null,
    min_size        integer     not null,
    max_size        integer     not null,
    decided_by      text        not null,
    reason          text        not null,
    -- Demand, capacity, every recommendation by name, open schedules, cooldown state.
    inputs          jsonb       not null
);
create index scaling_history_pool_idx on scaling_history (pool_id, id desc);

-- When the worker first reported that its machine is being reclaimed (a spot interruption
-- notice): it drains, and its pool replaces it at once.
alter table workers add column interrupted_at timestamptz;

-- When a worker last finished a job (or registered): how long it has been idle, for
-- scale-in after `idle_seconds`. Not indexed, so updating it stays HOT.
alter table workers add column idle_since timestamptz not null default now();
