-- A worker's capacity in use is the sum of the attempts it holds in `worker_jobs`, not
-- counters on its row: recording a result then never touches the `workers` row, which the
-- scheduling cycle keeps locked while it places jobs. Idle and busy are derived the same
-- way; `state` keeps what only the control plane decides (draining, gone).
alter table workers
    drop column used_cpu_millis,
    drop column used_memory_mib,
    drop column used_slots;

-- Leases are per worker: an attempt's lease runs from the later of its assignment and its
-- worker's last heartbeat, so a heartbeat updates one row however many jobs the worker
-- runs (and never locks `worker_jobs` rows, which results and starts lock).
drop index worker_jobs_lease_idx;
alter table worker_jobs drop column lease_expires_at;
