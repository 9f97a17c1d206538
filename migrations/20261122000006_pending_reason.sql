-- Why a ready job is still waiting, as the scheduling cycle last saw it. Not indexed, so
-- recording it never costs index writes.
alter table ready_jobs
    add column pending_code text,
    add column pending_message text;
