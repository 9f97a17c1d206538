//! Retention: deletes finished jobs (with their events; their logs and schedule links go by
//! foreign key), the logs of finished jobs, and queue activity once past their policy, in
//! bounded batches. Never touches a job that can still change: only `succeeded`,
//! `cancelled` and `dead_lettered` jobs go, each after its own age since it finished, and a
//! job whose idempotency key is inside its window stays until the window closes.
//!
//! Batched deletes, not time partitions: a job row is updated in place through its life
//! (HOT), and its id (a UUID v7) is ordered by creation, so the oldest candidates are a
//! range scan of the primary key; every batch is one short statement that locks at most
//! `batch` rows (`for update skip locked`, so it never waits on, or for, a job being
//! redriven or cancelled). What it leaves behind is dead tuples for autovacuum to reclaim.

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// How long a queue keeps its finished jobs, where it differs from the policy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRetention {
    pub queue: String,
    pub succeeded: Option<Duration>,
    pub cancelled: Option<Duration>,
    pub dead_lettered: Option<Duration>,
}

/// What is kept, and for how long after it finished (or happened).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub succeeded: Duration,
    pub cancelled: Duration,
    /// A dead letter waits this long for a redrive.
    pub dead_lettered: Duration,
    /// The output of a finished job (its job may be kept longer).
    pub logs: Duration,
    /// Queue admissions and dispatches (queue status reads the last hour, quotas the last day).
    pub queue_activity: Duration,
    /// A job submitted with an idempotency key is kept at least this long after its
    /// submission, so a retried request within it still finds it.
    pub idempotency_window: Duration,
    pub queues: Vec<QueueRetention>,
    /// Rows deleted per statement at most.
    pub batch: i64,
}

impl Policy {
    /// The policy `retention` configures.
    pub fn from_config(config: &crate::config::RetentionConfig) -> Self {
        let hours = |hours: f64| chrono::Duration::milliseconds((hours * 3_600_000.0).round() as i64);
        Self {
            succeeded: hours(config.succeeded_hours),
            cancelled: hours(config.cancelled_hours),
            dead_lettered: hours(config.dead_lettered_hours),
            logs: hours(config.logs_hours),
            queue_activity: hours(config.queue_activity_hours.into()),
            idempotency_window: hours(config.idempotency_window_hours),
            queues: config
                .queues
                .iter()
                .map(|queue| QueueRetention {
                    queue: queue.queue.clone(),
                    succeeded: queue.succeeded_hours.map(hours),
                    cancelled: queue.cancelled_hours.map(hours),
                    dead_lettered: queue.dead_lettered_hours.map(hours),
                })
                .collect(),
            batch: config.batch_size.into(),
        }
    }

    /// The shortest time any finished job is kept: no job created later can be due.
    fn shortest_job_retention(&self) -> Duration {
        let overrides =
            self.queues.iter().flat_map(|queue| [queue.succeeded, queue.cancelled, queue.dead_lettered]).flatten();
        [self.succeeded, self.cancelled, self.dead_lettered]
            .into_iter()
            .chain(overrides)
            .min()
            .unwrap_or(self.succeeded)
    }
}

/// What one batch of each kind deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub jobs: u64,
    pub events: u64,
    pub logs: u64,
    pub queue_activity: u64,
}

impl Pruned {
    pub fn add(&mut self, other: Self) {
        self.jobs += other.jobs;
        self.events += other.events;
        self.logs += other.logs;
        self.queue_activity += other.queue_activity;
    }

    /// The rows of `kind` deleted: a batch shorter than the policy's was the last one due.
    pub fn rows(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Jobs => self.jobs,
            Kind::Logs => self.logs,
            Kind::QueueActivity => self.queue_activity,
        }
    }
}

/// What a batch deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Finished jobs, with their events (and, by foreign key, their logs).
    Jobs,
    /// Output of finished jobs.
    Logs,
    QueueActivity,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Jobs, Kind::Logs, Kind::QueueActivity];
}

/// Deletes one batch of `kind` past its retention as of `now`.
pub async fn prune(db: &PgPool, now: DateTime<Utc>, policy: &Policy, kind: Kind) -> sqlx::Result<Pruned> {
    match kind {
        Kind::Jobs => prune_jobs(db, now, policy).await,
        Kind::Logs => prune_logs(db, now, policy).await,
        Kind::QueueActivity => prune_queue_activity(db, now, policy).await,
    }
}

fn seconds(duration: Duration) -> f64 {
    duration.num_milliseconds() as f64 / 1000.0
}

/// The smallest UUID v7 of the millisecond `at`: every job created before `at` has a
/// smaller id.
fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

/// Deletes one batch of finished jobs past their retention as of `now`, with their events.
async fn prune_jobs(db: &PgPool, now: DateTime<Utc>, policy: &Policy) -> sqlx::Result<Pruned> {
    let queues: Vec<&str> = policy.queues.iter().map(|queue| queue.queue.as_str()).collect();
    let overrides = |pick: fn(&QueueRetention) -> Option<Duration>| -> Vec<Option<f64>> {
        policy.queues.iter().map(|queue| pick(queue).map(seconds)).collect()
    };
    let (jobs, events): (i64, i64) = sqlx::query_as(
        "with overrides (queue, succeeded, cancelled, dead_lettered) as (
             select * from unnest($1::text[], $2::float8[], $3::float8[], $4::float8[])
         ), doomed as (
             select j.id from jobs j left join overrides o on o.queue = j.queue
              where j.id < $5
                and j.state in ('succeeded', 'cancelled', 'dead_lettered')
                and j.finished_at < $6 - make_interval(secs => case j.state
                        when 'succeeded' then coalesce(o.succeeded, $7)
                        when 'cancelled' then coalesce(o.cancelled, $8)
                        else coalesce(o.dead_lettered, $9) end)
                and (j.idempotency_key is null or j.created_at < $6 - make_interval(secs => $10))
              order by j.id
              limit $11
              for update of j skip locked
         ), events as (
             delete from job_events e using doomed d where e.job_id = d.id returning 1
         ), deleted as (
             delete from jobs j using doomed d where j.id = d.id returning 1
         )
         select (select count(*) from deleted), (select count(*) from events)",
    )
    .bind(&queues)
    .bind(overrides(|queue| queue.succeeded))
    .bind(overrides(|queue| queue.cancelled))
    .bind(overrides(|queue| queue.dead_lettered))
    .bind(first_id_at(now - policy.shortest_job_retention()))
    .bind(now)
    .bind(seconds(policy.succeeded))
    .bind(seconds(policy.cancelled))
    .bind(seconds(policy.dead_lettered))
    .bind(seconds(policy.idempotency_window))
    .bind(policy.batch)
    .fetch_one(db)
    .await?;
    Ok(Pruned { jobs: jobs as u64, events: events as u64, ..Pruned::default() })
}

/// Deletes one batch of output older than the log retention of jobs that finished before it.
async fn prune_logs(db: &PgPool, now: DateTime<Utc>, policy: &Policy) -> sqlx::Result<Pruned> {
    let deleted = sqlx::query(
        "with doomed as (
             select l.seq from job_logs l join jobs j on j.id = l.job_id
              where l.at < $1 - make_interval(secs => $2)
                and j.state in ('succeeded', 'cancelled', 'dead_lettered')
                and j.finished_at < $1 - make_interval(secs => $2)
              order by l.seq
              limit $3
         )
         delete from job_logs l using doomed d where l.seq = d.seq",
    )
    .bind(now)
    .bind(seconds(policy.logs))
    .bind(policy.batch)
    .execute(db)
    .await?;
    Ok(Pruned { logs: deleted.rows_affected(), ..Pruned::default() })
}

/// Deletes one batch of queue activity older than its retention.
async fn prune_queue_activity(db: &PgPool, now: DateTime<Utc>, policy: &Policy) -> sqlx::Result<Pruned> {
    let deleted = sqlx::query(
        "delete from queue_activity where id in (
             select id from queue_activity where at < $1 - make_interval(secs => $2) order by id limit $3
         )",
    )
    .bind(now)
    .bind(seconds(policy.queue_activity))
    .bind(policy.batch)
    .execute(db)
    .await?;
    Ok(Pruned { queue_activity: deleted.rows_affected(), ..Pruned::default() })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_configured_hours_become_the_policy() {
        let config = crate::config::RetentionConfig {
            succeeded_hours: 2.0,
            queues: vec![crate::config::QueueRetentionConfig {
                queue: "audit".to_owned(),
                succeeded_hours: Some(720.0),
                cancelled_hours: None,
                dead_lettered_hours: None,
            }],
            ..Default::default()
        };
        let policy = Policy::from_config(&config);
        assert_eq!((policy.succeeded, policy.dead_lettered), (Duration::hours(2), Duration::hours(168)));
        assert_eq!(policy.queues[0].succeeded, Some(Duration::hours(720)));
        assert_eq!(policy.queues[0].cancelled, None);
        assert_eq!(policy.shortest_job_retention(), Duration::hours(2));
        assert_eq!(policy.batch, 1000);
    }

    #[test]
    fn the_first_id_of_a_millisecond_orders_before_every_id_made_in_it_or_later() {
        let at = Utc.timestamp_millis_opt(1_800_000_000_123).single().expect("a time");
        let bound = first_id_at(at);
        let made_then = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, 1_800_000_000, 123_000_000));
        let made_before = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, 1_800_000_000, 122_000_000));
        assert!(bound <= made_then, "{bound} > {made_then}");
        assert!(made_before < bound, "{made_before} >= {bound}");
    }
}
