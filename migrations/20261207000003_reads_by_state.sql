-- Listing jobs by state or queue without scanning a tenant's whole history.
--
-- `jobs.state` changes at every step of a job's life; an index over it (even a partial
-- one, whose predicate names it) would make every one of those updates write every index
-- (no HOT update). `outcome` is the final state, generated from `state`: null until the
-- job finishes, so the updates before that leave it unchanged (null to null) and stay
-- HOT; only the update that finishes a job (and a redrive or retry after it) writes the
-- indexes. Waiting and running jobs are listed from the tables that hold them while they
-- do (`ready_jobs`, `worker_jobs`, `scheduled_jobs`): their tenant indexes (which the
-- quota reads use) now carry the job id too, so a tenant's page is read in id order.
-- `queue` never changes once a job is written, so an index over it keeps updates HOT.
alter table jobs add column outcome text
    generated always as (case when state in ('succeeded', 'cancelled', 'dead_lettered') then state end) stored;
create index jobs_tenant_outcome_idx on jobs (tenant_id, outcome, id) where outcome is not null;
create index jobs_outcome_idx on jobs (outcome, id) where outcome is not null;
create index jobs_tenant_queue_idx on jobs (tenant_id, queue, id);

drop index ready_jobs_tenant_idx;
create index ready_jobs_tenant_idx on ready_jobs (tenant_id, job_id);
drop index worker_jobs_tenant_idx;
create index worker_jobs_tenant_idx on worker_jobs (tenant_id, job_id);
