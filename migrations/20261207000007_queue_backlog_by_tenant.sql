-- A tenant's waiting jobs over all queues (the queued-jobs quota, read on every submit of
-- a tenant with one) from its counter rows alone. Counting only updates `ready` and
-- `scheduled`, so the index keeps counter updates HOT.
create index queue_backlog_tenant_idx on queue_backlog (tenant_id);
