-- Output of jobs, as workers ship it: chunks of stdout and stderr in arrival order.
create table job_logs (
    seq         bigint      generated always as identity primary key,
    job_id      uuid        not null references jobs (id) on delete cascade,
    attempt     integer     not null,
    stream      text        not null constraint job_logs_stream check (stream in ('stdout', 'stderr')),
    data        text        not null,
    at          timestamptz not null default now()
);
create index job_logs_job_idx on job_logs (job_id, seq);
