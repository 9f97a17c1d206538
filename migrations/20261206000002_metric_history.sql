-- Historical metrics (`hodei_core::history`): one value per metric, series (a queue's or a
-- pool's name) and bucket, per minute (kept a day) and per hour (kept
-- `metrics.history.retention_days`). Written by the history roll-up, one replica at a
-- time: metrics that count events are recomputed whole (delete, insert) for every bucket
-- since the last final one; gauges are sampled into the bucket they were read in, an
-- hour's as the mean of its samples (`samples` of them).
create table metric_history (
    resolution      text             not null constraint metric_history_resolution check (resolution in ('minute', 'hour')),
    metric          text             not null,
    series          text             not null,
    bucket_start    timestamptz      not null,
    value           double precision not null,
    samples         integer          not null default 1,
    primary key (resolution, metric, series, bucket_start)
);
create index metric_history_bucket_idx on metric_history (resolution, bucket_start);

-- Per resolution, the start of the bucket the last roll-up was in: buckets before it are
-- final, and the next roll-up starts from it.
create table metric_history_rollup (
    resolution      text        primary key,
    rolled_until    timestamptz not null
);
