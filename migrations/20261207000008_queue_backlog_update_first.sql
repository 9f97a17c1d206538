-- The counters of `queue_backlog` are updated in place, and inserted only the first time a
-- backend counts a queue and tenant. `insert ... on conflict do update` locks the existing
-- row before it updates it, a WAL record of its own on every count; an update writes one.
-- Only this backend writes its rows (see `queue_backlog`); the fold may delete them only
-- once the backend has exited, and the insert still resolves a conflict if it meets one.
create or replace function queue_backlog_count() returns trigger language plpgsql as $$
declare
    direction constant int8 := case tg_op when 'INSERT' then 1 else -1 end;
    is_ready constant int8 := case tg_table_name when 'ready_jobs' then 1 else 0 end;
    counted record;
begin
    for counted in select queue, tenant_id, count(*) as jobs from changed group by 1, 2 order by 1, 2 loop
        update queue_backlog
            set ready = ready + direction * is_ready * counted.jobs,
                scheduled = scheduled + direction * (1 - is_ready) * counted.jobs
            where queue = counted.queue and tenant_id = counted.tenant_id and slot = pg_backend_pid();
        if not found then
            insert into queue_backlog as b (queue, tenant_id, slot, ready, scheduled)
            values (counted.queue, counted.tenant_id, pg_backend_pid(),
                    direction * is_ready * counted.jobs, direction * (1 - is_ready) * counted.jobs)
            on conflict (queue, tenant_id, slot) do update
                set ready = b.ready + excluded.ready, scheduled = b.scheduled + excluded.scheduled;
        end if;
    end loop;
    return null;
end
$$;
