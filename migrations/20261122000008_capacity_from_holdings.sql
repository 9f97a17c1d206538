-- A worker's capacity in use is the sum of the attempts it holds in `worker_jobs`, not
-- counters on its row: recording a result then never touches the `workers` row, which the
-- scheduling cycle keeps locked while it places jobs. Idle and busy are derived the same
-- way; `state` keeps what only the control plane decides (draining, gone).
alter table workers
    drop column used_cpu_millis,
    drop column used_memory_mib,
    drop column used_slots;
