-- Job output is bytes: kept exactly as the job wrote it (invalid UTF-8 and NUL included).
-- `bytes` is what is written from now on; existing chunks are backfilled from their text.
-- `data` stays, nullable, so a replica not yet upgraded can still append while replicas
-- roll; reads take `coalesce(bytes, convert_to(data, 'UTF8'))`. A later migration may drop
-- it once no such replica runs.
alter table job_logs add column bytes bytea;
update job_logs set bytes = convert_to(data, 'UTF8');
alter table job_logs alter column data drop not null;
alter table job_logs add constraint job_logs_output check (bytes is not null or data is not null);
