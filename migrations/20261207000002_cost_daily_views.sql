-- The analysts' daily views read the daily roll-up (`cost_daily`), which outlives the
-- retention, instead of the hourly detail (`cost_allocations`), which the roll-up prunes
-- after `cost_tracking.retention_days`: a day's costs stay queryable after its detail is
-- gone, and the views answer from the same rows as `GET /api/v1/cost-reports`.
-- `cost_by_job` stays on the detail: a job's cost is kept as long as the retention.

-- Instance-seconds charged, per line (idle lines: what no attempt used).
alter table cost_daily add column share_seconds double precision not null default 0;
update cost_daily d set share_seconds = s.share_seconds
  from (select (bucket_start at time zone 'UTC')::date as day, pool, kind, tenant_id, queue,
               sum(share_seconds) as share_seconds
          from cost_allocations group by 1, 2, 3, 4, 5) s
 where d.day = s.day and d.pool = s.pool and d.kind = s.kind
   and d.tenant_id is not distinct from s.tenant_id and d.queue is not distinct from s.queue;

create or replace view cost_by_tenant_day as
    select day, tenant_id,
           sum(amount)::numeric as amount, 'USD'::text as currency,
           sum(unpriced_share_seconds) as unpriced_share_seconds,
           sum(attempts)::bigint as attempts
      from cost_daily where kind = 'attempt'
     group by 1, 2;

create or replace view cost_by_pool_day as
    select day, pool,
           sum(amount)::numeric as amount,
           coalesce(sum(amount) filter (where kind = 'attempt'), 0)::numeric as attributed_amount,
           coalesce(sum(amount) filter (where kind = 'idle'), 0)::numeric as idle_amount,
           'USD'::text as currency,
           sum(unpriced_share_seconds) as unpriced_share_seconds
      from cost_daily
     group by 1, 2;

create or replace view idle_cost_by_pool_day as
    select day, pool,
           sum(amount)::numeric as amount, 'USD'::text as currency,
           sum(share_seconds) as idle_share_seconds,
           sum(unpriced_share_seconds) as unpriced_share_seconds
      from cost_daily where kind = 'idle'
     group by 1, 2;

create or replace view cost_by_queue_day as
    select day, queue,
           sum(amount)::numeric as amount, 'USD'::text as currency,
           sum(unpriced_share_seconds) as unpriced_share_seconds,
           sum(attempts)::bigint as attempts
      from cost_daily where kind = 'attempt'
     group by 1, 2;
