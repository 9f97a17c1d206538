-- Per-job event order. Stream positions (`id`) follow transaction ids, which are handed
-- out when a transaction first writes, not when it commits: of two transactions that
-- change the same job, the one that started writing first can commit last, and its event
-- then has the smaller id. `version` numbers one job's events in the order their
-- transactions committed: every event is written by a transaction that holds the job's
-- row lock (it changes the job in the same statement or transaction), so the next
-- version is one more than the last committed one.
alter table job_events add column version integer;
update job_events e set version = v.version
from (select id, row_number() over (partition by job_id order by id) as version from job_events) v
where e.id = v.id;
alter table job_events alter column version set not null;

create function job_events_next_version() returns trigger language plpgsql as $$
begin
    if new.kind = 'job.submitted' then
        new.version := 1;
    else
        -- A row-level BEFORE trigger sees the rows this statement inserted before this one.
        select coalesce(max(version), 0) + 1 into new.version from job_events where job_id = new.job_id;
    end if;
    return new;
end $$;
create trigger job_events_version before insert on job_events
    for each row execute function job_events_next_version();

-- One job's events by version: reading them in order, and the guarantee that no two
-- share a version. Replaces the (job_id, id) index.
create unique index job_events_job_version_key on job_events (job_id, version);
drop index job_events_job_id_idx;
