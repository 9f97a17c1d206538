-- The idempotency key's uniqueness needs only the jobs that have a key: as a constraint
-- over every job, each job (and each of its row versions that is not a HOT update) wrote
-- an entry for a null key. Queries that look keys up say `idempotency_key is not null`,
-- so they can use the partial index.
create unique index jobs_idempotency_key_idx on jobs (tenant_id, idempotency_key)
    where idempotency_key is not null;
alter table jobs drop constraint jobs_idempotency_key;

