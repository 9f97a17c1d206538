-- A job's waiting row (`ready_jobs`) and its holding (`worker_jobs`) keep the job's id
-- without a foreign key. Each is inserted by the statement that writes the job itself
-- (the submit, the assignment), and each key check locked the job's row again (`for key
-- share`): a lock record in the WAL per job and row, and a lookup. Only jobs that have
-- ended are deleted (retention, or a tenant delete, which deletes nothing when a job it
-- would delete has not ended, even one put back in its queue meanwhile), and an ended job
-- has neither row: the paths that end a job delete them in the same transaction.
alter table ready_jobs drop constraint ready_jobs_job_id_fkey;
alter table worker_jobs drop constraint worker_jobs_job_id_fkey;
