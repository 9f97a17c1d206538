//! Historical metrics as plain data: which metrics are kept, over which series (a queue or
//! a pool), how a query's range and step map onto the kept resolutions, and how finer
//! buckets fold into a coarser step.
//!
//! The roll-up (`store::history`) writes one value per metric, series and bucket, per
//! minute (kept a day) and per hour (kept `metrics.history.retention_days`). Metrics that
//! count events (`dispatched`, `succeeded`, ...) are recomputed from the events for every
//! bucket since the last final one, so a replica that starts after a gap fills it and
//! rolling again never counts twice. Gauges (`queue_length`, `pool_ready`, ...) are what
//! the roll-up sees when it runs: a minute nobody ran in has no sample.

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validation::ValidationErrors;

/// How many points one query may return.
pub const MAX_POINTS: i64 = 1_500;

/// How long minute buckets are kept.
pub const MINUTE_RETENTION: Duration = Duration::days(1);

/// A kept metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Jobs ready in the queue (a gauge).
    QueueLength,
    /// Seconds the oldest ready job of the queue had waited (a gauge).
    OldestWaitSeconds,
    /// Jobs the queue accepted in the bucket.
    Submitted,
    /// Jobs assigned from the queue in the bucket.
    Dispatched,
    /// Their mean wait, in seconds.
    WaitMeanSeconds,
    /// Their 95th-percentile wait, in seconds (a coarser step takes the largest).
    WaitP95Seconds,
    /// Attempts of the queue's jobs that ended in the bucket with success.
    Succeeded,
    /// Attempts that ended otherwise (failed, retried, cancelled, abandoned).
    Failed,
    /// Members of the pool (a gauge).
    PoolSize,
    /// Members ready with a live worker (a gauge).
    PoolReady,
    /// The pool's workers running at least one job (a gauge).
    PoolBusy,
    /// Slots in use of the pool's live workers, from 0 to 1 (a gauge).
    PoolUtilization,
}

/// What a metric is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Queue,
    Pool,
}

/// How buckets fold into a coarser step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// Counts add up.
    Sum,
    /// Samples average.
    Mean,
    /// The largest (a percentile of a coarser step is not the mean of finer ones; the
    /// largest is its upper bound).
    Max,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Metric::QueueLength,
        Metric::OldestWaitSeconds,
        Metric::Submitted,
        Metric::Dispatched,
        Metric::WaitMeanSeconds,
        Metric::WaitP95Seconds,
        Metric::Succeeded,
        Metric::Failed,
        Metric::PoolSize,
        Metric::PoolReady,
        Metric::PoolBusy,
        Metric::PoolUtilization,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueLength => "queue_length",
            Self::OldestWaitSeconds => "oldest_wait_seconds",
            Self::Submitted => "submitted",
            Self::Dispatched => "dispatched",
            Self::WaitMeanSeconds => "wait_mean_seconds",
            Self::WaitP95Seconds => "wait_p95_seconds",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::PoolSize => "pool_size",
            Self::PoolReady => "pool_ready",
            Self::PoolBusy => "pool_busy",
            Self::PoolUtilization => "pool_utilization",
        }
    }

    pub fn parse(name: &str) -> Option<Metric> {
        Self::ALL.into_iter().find(|metric| metric.as_str() == name)
    }

    pub fn family(self) -> Family {
        match self {
            Self::PoolSize | Self::PoolReady | Self::PoolBusy | Self::PoolUtilization => Family::Pool,
            _ => Family::Queue,
        }
    }

    pub fn fold(self) -> Fold {
        match self {
            Self::Submitted | Self::Dispatched | Self::Succeeded | Self::Failed => Fold::Sum,
            Self::WaitP95Seconds => Fold::Max,
            // A mean wait folds as a mean of means: exact when buckets dispatched alike.
            _ => Fold::Mean,
        }
    }

    /// Whether the roll-up recomputes it from events (complete after a gap), or samples it.
    pub fn is_gauge(self) -> bool {
        matches!(
            self,
            Self::QueueLength
                | Self::OldestWaitSeconds
                | Self::PoolSize
                | Self::PoolReady
                | Self::PoolBusy
                | Self::PoolUtilization
        )
    }
}

/// The kept resolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Minute,
    Hour,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
        }
    }

    pub fn duration(self) -> Duration {
        match self {
            Self::Minute => Duration::minutes(1),
            Self::Hour => Duration::hours(1),
        }
    }
}

/// A query's range and step as asked, before defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub step_seconds: Option<i64>,
}

/// What to read: buckets of `resolution` in `from..to`, folded into steps of `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub resolution: Resolution,
    /// Aligned to the step.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step: Duration,
}

/// Checks a range against what is kept: `from` before `to` (default: the last hour up to
/// `now`), a step that is a whole number of minutes (a day of minute buckets is kept) or,
/// reaching back further, of hours, and at most `MAX_POINTS` points. Field names are the
/// query parameters'.
pub fn plan(range: Range, now: DateTime<Utc>, retention: Duration) -> Result<Plan, ValidationErrors> {
    let to = range.to.unwrap_or(now);
    let from = range.from.unwrap_or(to - Duration::hours(1));
    let mut errors = ValidationErrors::new();
    if from >= to {
        errors.add("from", format!("must be before to ({to}), got {from}"));
    }
    if from < now - retention {
        errors.add("from", format!("must be within the retention ({} days), got {from}", retention.num_days()));
    }
    // Minute buckets while the range lies within the day they are kept, else hour buckets.
    let resolution = if from >= now - MINUTE_RETENTION { Resolution::Minute } else { Resolution::Hour };
    let bucket = resolution.duration().num_seconds();
    let default_step = match resolution {
        Resolution::Minute => ceil_div(((to - from).num_seconds() / MAX_POINTS).max(60), 60) * 60,
        Resolution::Hour => ceil_div(((to - from).num_seconds() / MAX_POINTS).max(3600), 3600) * 3600,
    };
    let step = range.step_seconds.unwrap_or(default_step);
    if step <= 0 || step % bucket != 0 {
        let unit = match resolution {
            Resolution::Minute => "a whole number of minutes (60, 120, ...)",
            Resolution::Hour => "a whole number of hours (3600, 7200, ...): minute buckets are kept one day",
        };
        errors.add("step", format!("must be {unit}, got {step}"));
    } else if from < to && ceil_div((to - from).num_seconds(), step) > MAX_POINTS {
        errors.add(
            "step",
            format!(
                "would return {} points, more than {MAX_POINTS}: use a step of at least {} seconds",
                ceil_div((to - from).num_seconds(), step),
                ceil_div(ceil_div((to - from).num_seconds(), MAX_POINTS), bucket) * bucket
            ),
        );
    }
    errors.into_result(())?;
    let step = Duration::seconds(step);
    let aligned = from.duration_trunc(resolution.duration()).unwrap_or(from);
    Ok(Plan { resolution, from: aligned, to, step })
}

/// `value / by` rounded up, for `value >= 0` and `by > 0`.
fn ceil_div(value: i64, by: i64) -> i64 {
    (value + by - 1).div_euclid(by)
}

/// One value of a series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Point {
    /// The start of the step.
    pub at: DateTime<Utc>,
    pub value: f64,
}

/// Folds buckets (in order, within the plan's range) into the plan's steps; steps without
/// a bucket have no point.
pub fn fold(plan: &Plan, metric: Metric, buckets: &[Point]) -> Vec<Point> {
    let mut points: Vec<Point> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    for bucket in buckets {
        if bucket.at < plan.from || bucket.at >= plan.to {
            continue;
        }
        let steps = (bucket.at - plan.from).num_seconds() / plan.step.num_seconds();
        let at = plan.from + Duration::seconds(steps * plan.step.num_seconds());
        match points.last_mut() {
            Some(last) if last.at == at => {
                let count = counts.last_mut().expect("a count per point");
                last.value = match metric.fold() {
                    Fold::Sum => last.value + bucket.value,
                    Fold::Max => last.value.max(bucket.value),
                    Fold::Mean => (last.value * f64::from(*count) + bucket.value) / f64::from(*count + 1),
                };
                *count += 1;
            }
            _ => {
                points.push(Point { at, value: bucket.value });
                counts.push(1);
            }
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, hour, minute, 0).single().expect("time")
    }

    fn fields(result: Result<Plan, ValidationErrors>) -> Vec<String> {
        result.expect_err("invalid").errors().iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn names_round_trip_and_families_are_right() {
        for metric in Metric::ALL {
            assert_eq!(Metric::parse(metric.as_str()), Some(metric));
            let text = serde_json::to_string(&metric).expect("json");
            assert_eq!(text, format!("\"{}\"", metric.as_str()));
        }
        assert_eq!(Metric::parse("queue_depth"), None);
        assert_eq!(Metric::PoolBusy.family(), Family::Pool);
        assert_eq!(Metric::Dispatched.family(), Family::Queue);
    }

    #[test]
    fn a_recent_range_reads_minutes_and_an_old_one_hours() {
        let now = at(12, 30);
        let retention = Duration::days(90);
        let plan = plan(Range { from: Some(at(11, 0)), to: None, step_seconds: None }, now, retention).expect("ok");
        assert_eq!((plan.resolution, plan.step, plan.to), (Resolution::Minute, Duration::minutes(1), now));
        let week = Range { from: Some(now - Duration::days(7)), to: None, step_seconds: Some(3600) };
        let plan = super::plan(week, now, retention).expect("ok");
        assert_eq!((plan.resolution, plan.from), (Resolution::Hour, at(12, 0) - Duration::days(7)));
        // A week at the default step: as fine as the point limit allows, in whole hours.
        let default = super::plan(Range { step_seconds: None, ..week }, now, retention).expect("ok");
        assert_eq!(default.step, Duration::hours(1));
        assert!((default.to - default.from).num_seconds() / default.step.num_seconds() <= MAX_POINTS);
    }

    #[test]
    fn bad_ranges_and_steps_name_the_field() {
        let now = at(12, 30);
        let retention = Duration::days(90);
        let backwards = Range { from: Some(at(12, 0)), to: Some(at(11, 0)), step_seconds: None };
        assert_eq!(fields(plan(backwards, now, retention)), ["from"]);
        let ancient = Range { from: Some(now - Duration::days(100)), to: None, step_seconds: Some(86_400) };
        assert_eq!(fields(plan(ancient, now, retention)), ["from"]);
        let odd = Range { from: Some(at(11, 0)), to: None, step_seconds: Some(90) };
        assert_eq!(fields(plan(odd, now, retention)), ["step"]);
        // Minute steps reaching back more than a day: hours only.
        let fine = Range { from: Some(now - Duration::days(3)), to: None, step_seconds: Some(60) };
        assert_eq!(fields(plan(fine, now, retention)), ["step"]);
        // A day of minutes is 1,440 points, within the limit; three days of hours too;
        // 80 days of hours is 1,920: too many.
        let many = Range { from: Some(now - Duration::days(80)), to: None, step_seconds: Some(3600) };
        let problems = plan(many, now, retention).expect_err("too many");
        assert_eq!(problems.errors()[0].field, "step");
        assert!(problems.errors()[0].message.contains("7200"), "{problems}");
    }

    #[test]
    fn buckets_fold_by_the_metric_s_rule() {
        let plan = Plan { resolution: Resolution::Minute, from: at(12, 0), to: at(12, 10), step: Duration::minutes(5) };
        let buckets: Vec<Point> = [(0, 1.0), (1, 3.0), (4, 2.0), (6, 10.0), (12, 99.0)]
            .map(|(m, v)| Point { at: at(12, m), value: v })
            .into();
        let values = |metric| fold(&plan, metric, &buckets).iter().map(|p| (p.at, p.value)).collect::<Vec<_>>();
        assert_eq!(values(Metric::Dispatched), [(at(12, 0), 6.0), (at(12, 5), 10.0)]);
        assert_eq!(values(Metric::WaitP95Seconds), [(at(12, 0), 3.0), (at(12, 5), 10.0)]);
        assert_eq!(values(Metric::QueueLength), [(at(12, 0), 2.0), (at(12, 5), 10.0)]);
    }
}
