-- A worker that stops being live (marked gone, or deleted) is announced on
-- `hodei_worker_gone` with its id, in the transaction that changes it: every replica then
-- forgets the worker's token (`worker_tokens`), so its next request is refused.
create function notify_worker_gone() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        perform pg_notify('hodei_worker_gone', old.id::text);
    else
        perform pg_notify('hodei_worker_gone', new.id::text);
    end if;
    return null;
end
$$;

create trigger workers_gone after update of gone_at on workers
    for each row when (old.gone_at is null and new.gone_at is not null)
    execute function notify_worker_gone();

create trigger workers_deleted after delete on workers
    for each row execute function notify_worker_gone();
