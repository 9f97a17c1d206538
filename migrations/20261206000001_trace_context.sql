-- The W3C trace context (`traceparent`) of the request that submitted a job: shown with
-- the job, given to its worker with every assignment, and set as the job's TRACEPARENT.
-- Null for jobs submitted before it was kept. Only version-00 headers in their canonical
-- lowercase form are written (the API parses the header strictly and prints it back).
alter table jobs
    add column traceparent text
        constraint jobs_traceparent_format check (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
