-- Waiting jobs counted where they are written, so a queue's length and its backlog per
-- tenant are read from a few rows instead of counting the queue (queue status, metrics).
--
-- Triggers on `ready_jobs` and `scheduled_jobs` add each statement's rows per queue and
-- tenant to `queue_backlog`, in the statement's own transaction: the counts are exactly
-- what a snapshot of the two tables holds, whatever path wrote them (submit, the cycle's
-- claim, cancel, eviction, expiry, redrive, a cascade from a deleted job).
--
-- One counter row per queue, tenant and backend (`slot` is `pg_backend_pid()`): a
-- transaction only ever updates the rows of its own backend, so concurrent submits and
-- cycles never wait on one another for a counter, and never deadlock through one. A row's
-- count may go below zero (a backend claims what another enqueued); the sum over the
-- slots is the count. The retention leader folds the rows of backends that have exited
-- into slot 0 (`store::queue_backlog::fold`).
--
-- A waiting job's queue and tenant never change while it waits (a move between queues is
-- a delete and an insert), so updates are not counted.

-- Existing rows are counted below; no job may enter or leave in between.
lock table ready_jobs, scheduled_jobs in share row exclusive mode;

alter table scheduled_jobs add column tenant_id uuid;
update scheduled_jobs s set tenant_id = j.tenant_id from jobs j where j.id = s.job_id;
alter table scheduled_jobs alter column tenant_id set not null;

create table queue_backlog (
    queue     text    not null,
    tenant_id uuid    not null,
    slot      integer not null,
    ready     bigint  not null default 0,
    scheduled bigint  not null default 0,
    primary key (queue, tenant_id, slot)
) with (
    -- Every count is an update of a row in place: room for new versions on the page keeps
    -- them HOT, and the table is a few rows per queue and tenant.
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000
);

insert into queue_backlog (queue, tenant_id, slot, ready, scheduled)
select queue, tenant_id, 0, sum(ready), sum(scheduled)
from (select queue, tenant_id, 1 as ready, 0 as scheduled from ready_jobs
      union all
      select queue, tenant_id, 0, 1 from scheduled_jobs) waiting
group by queue, tenant_id;

-- One statement's rows (`changed`: the inserted or the deleted ones), added per queue and
-- tenant to this backend's counters in key order, so two statements of one backend take
-- its rows in the same order.
create function queue_backlog_count() returns trigger language plpgsql as $$
declare
    direction constant int8 := case tg_op when 'INSERT' then 1 else -1 end;
    is_ready constant int8 := case tg_table_name when 'ready_jobs' then 1 else 0 end;
begin
    insert into queue_backlog as b (queue, tenant_id, slot, ready, scheduled)
    select queue, tenant_id, pg_backend_pid(), direction * is_ready * count(*), direction * (1 - is_ready) * count(*)
    from changed group by 1, 2 order by 1, 2
    on conflict (queue, tenant_id, slot) do update
        set ready = b.ready + excluded.ready, scheduled = b.scheduled + excluded.scheduled;
    return null;
end
$$;

create trigger ready_jobs_backlog_added after insert on ready_jobs
    referencing new table as changed for each statement execute function queue_backlog_count();
create trigger ready_jobs_backlog_removed after delete on ready_jobs
    referencing old table as changed for each statement execute function queue_backlog_count();
create trigger scheduled_jobs_backlog_added after insert on scheduled_jobs
    referencing new table as changed for each statement execute function queue_backlog_count();
create trigger scheduled_jobs_backlog_removed after delete on scheduled_jobs
    referencing old table as changed for each statement execute function queue_backlog_count();
