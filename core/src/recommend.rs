//! Cost recommendations as a pure decision: from what each pool ran and used over a
//! period (hour by hour, as the cost roll-up recorded it), the price list and the jobs'
//! shapes, what to change and what it would save in a month.
//!
//! The rules, each with its evidence:
//! - **Idle capacity**: a pool whose idle share of its instance-seconds is at least
//!   `idle_threshold_percent`. A static pool is told the size its busiest hour needed (the
//!   instance-equivalents its attempts used in that hour, with 25% headroom, rounded up); a
//!   dynamic pool with a warm buffer the buffer it never used (the fewest idle instances in
//!   any hour), and one whose minimum exceeds what its quietest hour used that hour's need.
//! - **Right-size**: a pool whose jobs (95th percentile of requests) use less than half of
//!   an instance's CPU or memory, and a cheaper instance type of the same provider and
//!   capacity type in the price list that still fits its largest job.
//! - **Spot**: an on-demand pool most of whose work (by instance-seconds) is short
//!   (`spot_max_job_seconds`) and retryable jobs, where a spot price for its instance type
//!   is known and lower: that work moved to spot.
//! - **Schedule**: hours of the week (UTC) in which, every week of the period, the pool held
//!   instances and its jobs used less than `quiet_utilization_percent` of them, in windows
//!   of at least `min_quiet_hours`: the pool's cost in those windows, saved by scaling it
//!   to zero there (an autoscaling schedule). Needs a period of at least seven days.
//! - **Missing price**: instances that ran with no price in force: their cost is unknown.
//!
//! Savings are monthly (730 hours) extrapolations of the period; a recommendation whose
//! saving is below `min_monthly_saving` is left out, except a missing price (whose saving
//! is unknown).

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::pool::{CapacityType, PoolKindName};

/// Hours in a month, for extrapolating a period.
pub const MONTH_HOURS: f64 = 730.0;

/// Headroom above the busiest hour's use when sizing a pool down.
pub const HEADROOM: f64 = 1.25;

/// When a rule speaks up (`cost_tracking.recommendations`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// A pool idle at least this share of its instance-seconds (percent).
    #[schema(minimum = 1, maximum = 100)]
    pub idle_threshold_percent: f64,
    /// Jobs that run at most this long suit spot capacity (when they may be retried).
    #[schema(minimum = 1, maximum = 86400)]
    pub spot_max_job_seconds: u32,
    /// An hour is quiet when jobs used less than this share of the pool (percent).
    #[schema(minimum = 0, maximum = 100)]
    pub quiet_utilization_percent: f64,
    /// The shortest quiet window worth a schedule, in hours.
    #[schema(minimum = 1, maximum = 168)]
    pub min_quiet_hours: u32,
    /// Recommendations saving less than this a month are left out.
    #[schema(minimum = 0, maximum = 1000000)]
    pub min_monthly_saving: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            idle_threshold_percent: 30.0,
            spot_max_job_seconds: 900,
            quiet_utilization_percent: 5.0,
            min_quiet_hours: 4,
            min_monthly_saving: 1.0,
        }
    }
}

impl Thresholds {
    /// Problems by field name (`idle_threshold_percent`, ...), empty if valid.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let percent = |value: f64, low: f64| value.is_finite() && (low..=100.0).contains(&value);
        if !percent(self.idle_threshold_percent, 1.0) {
            problems.push((
                "idle_threshold_percent",
                format!("must be from 1 to 100, got {}", self.idle_threshold_percent),
            ));
        }
        if !(1..=86_400).contains(&self.spot_max_job_seconds) {
            problems
                .push(("spot_max_job_seconds", format!("must be from 1 to 86400, got {}", self.spot_max_job_seconds)));
        }
        if !percent(self.quiet_utilization_percent, 0.0) {
            problems.push((
                "quiet_utilization_percent",
                format!("must be from 0 to 100, got {}", self.quiet_utilization_percent),
            ));
        }
        if !(1..=168).contains(&self.min_quiet_hours) {
            problems.push(("min_quiet_hours", format!("must be from 1 to 168, got {}", self.min_quiet_hours)));
        }
        if !self.min_monthly_saving.is_finite() || !(0.0..=1_000_000.0).contains(&self.min_monthly_saving) {
            problems
                .push(("min_monthly_saving", format!("must be from 0 to 1000000, got {}", self.min_monthly_saving)));
        }
        problems
    }
}

/// One hour of a pool, as the roll-up recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hour {
    pub start: DateTime<Utc>,
    /// Seconds its instances ran in the hour (3,600 per instance running throughout).
    pub instance_seconds: f64,
    /// Instance-seconds its attempts were charged for.
    pub used_share_seconds: f64,
    /// What its instances cost in the hour; `None` if any was unpriced.
    pub amount: Option<f64>,
}

/// What a pool's attempts asked for and how they ran, over the period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptStats {
    pub attempts: u64,
    pub p95_cpu_millis: u32,
    pub p95_memory_mib: u32,
    pub max_cpu_millis: u32,
    pub max_memory_mib: u32,
    /// Instance-seconds charged to attempts of jobs that may be retried and ran at most
    /// `spot_max_job_seconds`, their count and median length.
    pub spot_suitable_share_seconds: f64,
    pub spot_suitable_attempts: u64,
    pub spot_suitable_median_seconds: f64,
}

/// A pool over the period.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolUsage {
    pub pool: String,
    pub provider: String,
    pub kind: PoolKindName,
    pub size: Option<u32>,
    pub min_size: Option<u32>,
    pub warm: u32,
    /// What the ledger calls its instances.
    pub instance_type: String,
    pub capacity_type: CapacityType,
    pub region: String,
    /// What one instance offers (0: unknown).
    pub cpu_millis: u32,
    pub memory_mib: u32,
    /// The newest instance's price per hour, if priced.
    pub price_per_hour: Option<f64>,
    /// The hours of the period in which it ran instances, in order.
    pub hours: Vec<Hour>,
    pub attempts: AttemptStats,
}

/// An instance type with a price and a shape, from the price list.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub provider: String,
    pub instance_type: String,
    pub capacity_type: CapacityType,
    /// A region, or `*`.
    pub region: String,
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub price_per_hour: f64,
}

/// Instances that ran with no price in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Unpriced {
    pub pool: String,
    pub provider: String,
    pub instance_type: String,
    pub capacity_type: CapacityType,
    pub region: String,
    pub instances: u64,
    pub instance_hours: f64,
}

/// What a recommendation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    IdleCapacity,
    RightSize,
    Spot,
    Schedule,
    MissingPrice,
}

/// One number behind a recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Evidence {
    /// What it is (`idle_percent`, `busiest_hour_instances`, ...).
    pub name: String,
    pub value: f64,
    /// `percent`, `instances`, `hours`, `seconds`, `millicores`, `MiB`, `USD`, `USD/hour`,
    /// `attempts`.
    pub unit: String,
}

/// A window of the week (UTC) in which a pool is quiet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuietWindow {
    /// `Mon` .. `Sun`.
    pub starts_day: String,
    /// From 0 to 23.
    pub starts_hour: u32,
    pub hours: u32,
}

/// A change that would lower a pool's cost, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Recommendation {
    pub kind: Kind,
    pub pool: String,
    /// What to do, in words.
    pub action: String,
    /// The pool setting to change (`size`, `min_size`, `scaling.warm`,
    /// `cloud.instance_types`, `cloud.capacity_type`, `scaling.schedules`), or for a missing
    /// price `prices`.
    pub setting: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested: Option<String>,
    pub evidence: Vec<Evidence>,
    /// The quiet windows of a schedule recommendation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<QuietWindow>,
    /// A month of the period's saving; `None` when it cannot be priced.
    pub estimated_monthly_saving: Option<f64>,
}

fn evidence(name: &str, value: f64, unit: &str) -> Evidence {
    Evidence { name: name.to_owned(), value: round(value), unit: unit.to_owned() }
}

/// Six significant decimals are plenty for money and shares, and keep the output readable.
fn round(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

/// Everything the rules find, largest saving first (unknown savings last).
pub fn recommend(
    pools: &[PoolUsage],
    offers: &[Offer],
    unpriced: &[Unpriced],
    period_hours: f64,
    thresholds: &Thresholds,
) -> Vec<Recommendation> {
    let month = if period_hours > 0.0 { MONTH_HOURS / period_hours } else { 0.0 };
    let mut found = Vec::new();
    for pool in pools {
        let instance_seconds: f64 = pool.hours.iter().map(|hour| hour.instance_seconds).sum();
        if instance_seconds <= 0.0 {
            continue;
        }
        found.extend(idle_capacity(pool, instance_seconds, thresholds));
        found.extend(right_size(pool, offers, instance_seconds, month));
        found.extend(spot(pool, offers, instance_seconds, month, thresholds));
        found.extend(schedule(pool, period_hours, month, thresholds));
    }
    found.retain(|recommendation: &Recommendation| {
        recommendation.estimated_monthly_saving.is_none_or(|saving| saving >= thresholds.min_monthly_saving)
    });
    found.extend(unpriced.iter().map(missing_price));
    found.sort_by(|a, b| {
        let key = |r: &Recommendation| r.estimated_monthly_saving.unwrap_or(f64::NEG_INFINITY);
        key(b).total_cmp(&key(a)).then_with(|| a.pool.cmp(&b.pool))
    });
    found
}

fn idle_capacity(pool: &PoolUsage, instance_seconds: f64, thresholds: &Thresholds) -> Vec<Recommendation> {
    let used: f64 = pool.hours.iter().map(|hour| hour.used_share_seconds).sum();
    let idle_percent = 100.0 * (1.0 - (used / instance_seconds).min(1.0));
    if idle_percent < thresholds.idle_threshold_percent {
        return Vec::new();
    }
    let used_instances = |hour: &Hour| hour.used_share_seconds / 3600.0;
    let held_instances = |hour: &Hour| hour.instance_seconds / 3600.0;
    let busiest = pool.hours.iter().map(used_instances).fold(0.0, f64::max);
    let needed = ((busiest * HEADROOM).ceil() as u32).max(1);
    let base = vec![
        evidence("idle_percent", idle_percent, "percent"),
        evidence("instance_hours", instance_seconds / 3600.0, "hours"),
        evidence("busiest_hour_instances", busiest, "instances"),
    ];
    let mut found = Vec::new();
    match pool.kind {
        PoolKindName::Static => {
            let Some(size) = pool.size.filter(|size| *size > needed) else { return found };
            let mut evidence_list = base;
            evidence_list.push(evidence("size", f64::from(size), "instances"));
            found.push(Recommendation {
                kind: Kind::IdleCapacity,
                pool: pool.pool.clone(),
                action: format!(
                    "lower the pool's size from {size} to {needed}: its busiest hour used {busiest:.2} instances"
                ),
                setting: "size".to_owned(),
                current: Some(size.to_string()),
                suggested: Some(needed.to_string()),
                evidence: evidence_list,
                windows: Vec::new(),
                estimated_monthly_saving: monthly(pool.price_per_hour, f64::from(size - needed)),
            });
        }
        PoolKindName::Dynamic => {
            if pool.warm > 0 {
                // Idle instances in the hour that had the fewest: the part of the buffer never used.
                let fewest_idle = pool
                    .hours
                    .iter()
                    .map(|hour| (held_instances(hour) - used_instances(hour)).max(0.0))
                    .fold(f64::INFINITY, f64::min);
                let unused = (fewest_idle.floor() as u32).min(pool.warm);
                if unused > 0 {
                    let suggested = pool.warm - unused;
                    let mut evidence_list = base.clone();
                    evidence_list.push(evidence("fewest_idle_instances", fewest_idle, "instances"));
                    found.push(Recommendation {
                        kind: Kind::IdleCapacity,
                        pool: pool.pool.clone(),
                        action: format!(
                            "lower the warm buffer from {} to {suggested}: every hour had at least {fewest_idle:.2} idle instances",
                            pool.warm
                        ),
                        setting: "scaling.warm".to_owned(),
                        current: Some(pool.warm.to_string()),
                        suggested: Some(suggested.to_string()),
                        evidence: evidence_list,
                        windows: Vec::new(),
                        estimated_monthly_saving: monthly(pool.price_per_hour, f64::from(unused)),
                    });
                }
            }
            let min = pool.min_size.unwrap_or(0);
            let quietest = pool.hours.iter().map(used_instances).fold(f64::INFINITY, f64::min);
            let floor_need = (quietest * HEADROOM).ceil() as u32;
            if min > floor_need {
                // Hours the pool sat at its floor: only those are saved by lowering it.
                let floor = f64::from(min + pool.warm);
                let at_floor = pool.hours.iter().filter(|hour| held_instances(hour) <= floor + 0.01).count() as f64;
                let share = at_floor / pool.hours.len().max(1) as f64;
                let mut evidence_list = base;
                evidence_list.push(evidence("quietest_hour_instances", quietest, "instances"));
                evidence_list.push(evidence("hours_at_minimum_percent", 100.0 * share, "percent"));
                found.push(Recommendation {
                    kind: Kind::IdleCapacity,
                    pool: pool.pool.clone(),
                    action: format!(
                        "lower the pool's minimum from {min} to {floor_need}: its quietest hour used {quietest:.2} instances"
                    ),
                    setting: "min_size".to_owned(),
                    current: Some(min.to_string()),
                    suggested: Some(floor_need.to_string()),
                    evidence: evidence_list,
                    windows: Vec::new(),
                    estimated_monthly_saving: monthly(pool.price_per_hour, f64::from(min - floor_need) * share),
                });
            }
        }
    }
    found
}

/// `instances` instances running all month at `per_hour`.
fn monthly(per_hour: Option<f64>, instances: f64) -> Option<f64> {
    per_hour.map(|price| round(price * instances * MONTH_HOURS))
}

fn matches_region(offer: &Offer, region: &str) -> bool {
    offer.region == "*" || offer.region == region
}

fn right_size(pool: &PoolUsage, offers: &[Offer], instance_seconds: f64, month: f64) -> Option<Recommendation> {
    let stats = &pool.attempts;
    if stats.attempts == 0 || pool.cpu_millis == 0 || pool.memory_mib == 0 {
        return None;
    }
    let cpu_percent = 100.0 * f64::from(stats.p95_cpu_millis) / f64::from(pool.cpu_millis);
    let memory_percent = 100.0 * f64::from(stats.p95_memory_mib) / f64::from(pool.memory_mib);
    if cpu_percent >= 50.0 && memory_percent >= 50.0 {
        return None;
    }
    let current = pool.price_per_hour?;
    let candidate = offers
        .iter()
        .filter(|offer| {
            offer.provider == pool.provider
                && offer.capacity_type == pool.capacity_type
                && matches_region(offer, &pool.region)
                && offer.instance_type != pool.instance_type
                && offer.instance_type != "*"
                && offer.cpu_millis > 0
                && offer.memory_mib > 0
                && offer.cpu_millis >= stats.max_cpu_millis
                && offer.memory_mib >= stats.max_memory_mib
                && (offer.cpu_millis < pool.cpu_millis || offer.memory_mib < pool.memory_mib)
                && offer.price_per_hour < current
        })
        .min_by(|a, b| {
            a.price_per_hour.total_cmp(&b.price_per_hour).then_with(|| a.instance_type.cmp(&b.instance_type))
        })?;
    let hours = instance_seconds / 3600.0;
    Some(Recommendation {
        kind: Kind::RightSize,
        pool: pool.pool.clone(),
        action: format!(
            "launch {} ({} m, {} MiB at {}/hour) instead of {} ({} m, {} MiB at {current}/hour): its jobs use {cpu_percent:.0}% of the CPU and {memory_percent:.0}% of the memory (95th percentile)",
            candidate.instance_type,
            candidate.cpu_millis,
            candidate.memory_mib,
            candidate.price_per_hour,
            pool.instance_type,
            pool.cpu_millis,
            pool.memory_mib
        ),
        setting: "cloud.instance_types".to_owned(),
        current: Some(pool.instance_type.clone()),
        suggested: Some(candidate.instance_type.clone()),
        evidence: vec![
            evidence("p95_cpu_percent", cpu_percent, "percent"),
            evidence("p95_memory_percent", memory_percent, "percent"),
            evidence("largest_job_cpu_millis", f64::from(stats.max_cpu_millis), "millicores"),
            evidence("largest_job_memory_mib", f64::from(stats.max_memory_mib), "MiB"),
            evidence("current_price_per_hour", current, "USD/hour"),
            evidence("suggested_price_per_hour", candidate.price_per_hour, "USD/hour"),
            evidence("instance_hours", hours, "hours"),
        ],
        windows: Vec::new(),
        estimated_monthly_saving: Some(round((current - candidate.price_per_hour) * hours * month)),
    })
}

fn spot(
    pool: &PoolUsage,
    offers: &[Offer],
    instance_seconds: f64,
    month: f64,
    thresholds: &Thresholds,
) -> Option<Recommendation> {
    if pool.capacity_type != CapacityType::OnDemand || pool.attempts.spot_suitable_attempts == 0 {
        return None;
    }
    let used: f64 = pool.hours.iter().map(|hour| hour.used_share_seconds).sum();
    if used <= 0.0 {
        return None;
    }
    let suitable = (pool.attempts.spot_suitable_share_seconds / used).min(1.0);
    if suitable < 0.5 {
        return None;
    }
    let on_demand = pool.price_per_hour?;
    let spot_price = offers
        .iter()
        .filter(|offer| {
            offer.provider == pool.provider
                && offer.capacity_type == CapacityType::Spot
                && (offer.instance_type == pool.instance_type || offer.instance_type == "*")
                && matches_region(offer, &pool.region)
        })
        .min_by_key(|offer| (offer.instance_type == "*", offer.region == "*"))?
        .price_per_hour;
    if spot_price >= on_demand {
        return None;
    }
    let cost = on_demand * instance_seconds / 3600.0;
    let saving = cost * suitable * (1.0 - spot_price / on_demand) * month;
    Some(Recommendation {
        kind: Kind::Spot,
        pool: pool.pool.clone(),
        action: format!(
            "run its short, retryable jobs on spot capacity ({spot_price}/hour against {on_demand}/hour on demand): {:.0}% of its work is jobs that may be retried and ran at most {} s (median {:.0} s)",
            100.0 * suitable,
            thresholds.spot_max_job_seconds,
            pool.attempts.spot_suitable_median_seconds
        ),
        setting: "cloud.capacity_type".to_owned(),
        current: Some("on_demand".to_owned()),
        suggested: Some("spot".to_owned()),
        evidence: vec![
            evidence("suitable_work_percent", 100.0 * suitable, "percent"),
            evidence("suitable_attempts", pool.attempts.spot_suitable_attempts as f64, "attempts"),
            evidence("suitable_median_seconds", pool.attempts.spot_suitable_median_seconds, "seconds"),
            evidence("on_demand_price_per_hour", on_demand, "USD/hour"),
            evidence("spot_price_per_hour", spot_price, "USD/hour"),
        ],
        windows: Vec::new(),
        estimated_monthly_saving: Some(round(saving)),
    })
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// The hour of the week, from Monday 00:00 UTC.
fn hour_of_week(at: DateTime<Utc>) -> usize {
    at.weekday().num_days_from_monday() as usize * 24 + at.hour() as usize
}

fn schedule(pool: &PoolUsage, period_hours: f64, month: f64, thresholds: &Thresholds) -> Option<Recommendation> {
    if period_hours < 168.0 {
        return None;
    }
    // Per hour of the week: seen at all, quiet every time, and what those hours cost.
    let mut seen = [false; 168];
    let mut quiet = [true; 168];
    let mut cost = [0.0_f64; 168];
    let mut priced = true;
    for hour in &pool.hours {
        let slot = hour_of_week(hour.start);
        seen[slot] = true;
        let limit = hour.instance_seconds * thresholds.quiet_utilization_percent / 100.0;
        if hour.instance_seconds <= 0.0 || hour.used_share_seconds > limit {
            quiet[slot] = false;
        }
        match hour.amount {
            Some(amount) => cost[slot] += amount,
            None => priced = false,
        }
    }
    // An hour the pool held nothing in costs nothing already; it neither starts nor breaks a window.
    let quiet_slot = |slot: usize| seen[slot] && quiet[slot];
    if (0..168).all(quiet_slot) || !(0..168).any(quiet_slot) {
        // Never busy: the idle rule speaks; never quiet: nothing to schedule.
        return None;
    }
    // Windows of consecutive quiet hours, around the end of the week too.
    let start = (0..168).find(|slot| !quiet_slot(*slot))?;
    let mut windows = Vec::new();
    let mut run: Option<(usize, u32)> = None;
    for offset in 1..=168 {
        let slot = (start + offset) % 168;
        if quiet_slot(slot) {
            run = Some(run.map_or((slot, 1), |(first, length)| (first, length + 1)));
        } else if let Some((first, length)) = run.take() {
            if length >= thresholds.min_quiet_hours {
                windows.push((first, length));
            }
        }
    }
    if windows.is_empty() {
        return None;
    }
    let quiet_hours: u32 = windows.iter().map(|(_, length)| length).sum();
    let saved: f64 = windows
        .iter()
        .flat_map(|(first, length)| (0..*length as usize).map(move |k| (first + k) % 168))
        .map(|slot| cost[slot])
        .sum();
    let windows: Vec<QuietWindow> = windows
        .into_iter()
        .map(|(first, length)| QuietWindow {
            starts_day: DAYS[first / 24].to_owned(),
            starts_hour: (first % 24) as u32,
            hours: length,
        })
        .collect();
    let described: Vec<String> =
        windows.iter().map(|w| format!("{} {:02}:00 for {} h", w.starts_day, w.starts_hour, w.hours)).collect();
    let setting = match pool.kind {
        PoolKindName::Static => "make the pool dynamic with a minimum of 0 and a schedule that keeps its size outside",
        PoolKindName::Dynamic => "lower its minimum to 0 and raise it with a schedule outside",
    };
    Some(Recommendation {
        kind: Kind::Schedule,
        pool: pool.pool.clone(),
        action: format!(
            "{setting} these quiet windows (UTC), where its jobs used under {}% of it every week: {}",
            thresholds.quiet_utilization_percent,
            described.join(", ")
        ),
        setting: "scaling.schedules".to_owned(),
        current: None,
        suggested: None,
        evidence: vec![
            evidence("quiet_hours_per_week", f64::from(quiet_hours), "hours"),
            evidence("quiet_hours_cost", saved, "USD"),
            evidence("period_hours", period_hours, "hours"),
        ],
        windows,
        estimated_monthly_saving: priced.then(|| round(saved * month)),
    })
}

/// The provider an [`Unpriced`] names for workers that no ledger instance records (they
/// registered by hand rather than through a pool's provisioning): no price can name them.
pub const UNRECORDED_PROVIDER: &str = "unrecorded";

fn missing_price(unpriced: &Unpriced) -> Recommendation {
    if unpriced.provider == UNRECORDED_PROVIDER {
        return Recommendation {
            kind: Kind::MissingPrice,
            pool: unpriced.pool.clone(),
            action: format!(
                "run the workers of pool {} through a pool's provisioning so the ledger records and prices them: {} workers registered by hand ran jobs for {:.2} hours, so their cost is unknown",
                unpriced.pool, unpriced.instances, unpriced.instance_hours
            ),
            setting: "pools".to_owned(),
            current: None,
            suggested: None,
            evidence: vec![
                evidence("unrecorded_workers", unpriced.instances as f64, "workers"),
                evidence("unrecorded_attempt_hours", unpriced.instance_hours, "hours"),
            ],
            windows: Vec::new(),
            estimated_monthly_saving: None,
        };
    }
    Recommendation {
        kind: Kind::MissingPrice,
        pool: unpriced.pool.clone(),
        action: format!(
            "add a price for provider {}, instance type {}, capacity {}, region {} (PUT /api/v1/prices): {} instances ran {:.2} hours with no price, so their cost is unknown",
            unpriced.provider,
            unpriced.instance_type,
            unpriced.capacity_type.as_str(),
            unpriced.region,
            unpriced.instances,
            unpriced.instance_hours
        ),
        setting: "prices".to_owned(),
        current: None,
        suggested: Some(unpriced.instance_type.clone()),
        evidence: vec![
            evidence("unpriced_instances", unpriced.instances as f64, "instances"),
            evidence("unpriced_instance_hours", unpriced.instance_hours, "hours"),
        ],
        windows: Vec::new(),
        estimated_monthly_saving: None,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;

    /// Monday 2026-11-02 00:00 UTC.
    fn monday() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).single().expect("date")
    }

    /// `hours` hours from Monday, `instances` running each, `used(hour)` instance-equivalents used.
    fn hours(count: usize, instances: f64, price: Option<f64>, used: impl Fn(usize) -> f64) -> Vec<Hour> {
        (0..count)
            .map(|k| Hour {
                start: monday() + Duration::hours(k as i64),
                instance_seconds: instances * 3600.0,
                used_share_seconds: used(k) * 3600.0,
                amount: price.map(|price| price * instances),
            })
            .collect()
    }

    fn pool(kind: PoolKindName, hours: Vec<Hour>) -> PoolUsage {
        PoolUsage {
            pool: "batch".to_owned(),
            provider: "aws-ec2".to_owned(),
            kind,
            size: Some(4),
            min_size: Some(0),
            warm: 0,
            instance_type: "m5.xlarge".to_owned(),
            capacity_type: CapacityType::OnDemand,
            region: "eu-west-1".to_owned(),
            cpu_millis: 4000,
            memory_mib: 16384,
            price_per_hour: Some(0.2),
            hours,
            attempts: AttemptStats::default(),
        }
    }

    fn offer(instance_type: &str, capacity_type: CapacityType, cpu: u32, memory: u32, price: f64) -> Offer {
        Offer {
            provider: "aws-ec2".to_owned(),
            instance_type: instance_type.to_owned(),
            capacity_type,
            region: "*".to_owned(),
            cpu_millis: cpu,
            memory_mib: memory,
            price_per_hour: price,
        }
    }

    fn kinds(found: &[Recommendation]) -> Vec<(Kind, &str)> {
        found.iter().map(|r| (r.kind, r.setting.as_str())).collect()
    }

    #[test]
    fn an_oversized_static_pool_is_told_the_size_its_busiest_hour_needed() {
        // Four instances for a day; the busiest hour used 1.5 of them.
        let usage = pool(PoolKindName::Static, hours(24, 4.0, Some(0.2), |k| if k == 10 { 1.5 } else { 0.5 }));
        let found = recommend(&[usage], &[], &[], 24.0, &Thresholds::default());
        assert_eq!(kinds(&found), [(Kind::IdleCapacity, "size")]);
        let recommendation = &found[0];
        // 1.5 × 1.25 = 1.875, rounded up: 2.
        assert_eq!(recommendation.suggested.as_deref(), Some("2"));
        assert_eq!(recommendation.current.as_deref(), Some("4"));
        // Two instances fewer, all month.
        assert_eq!(recommendation.estimated_monthly_saving, Some(round(2.0 * 0.2 * MONTH_HOURS)));
        let idle = recommendation.evidence.iter().find(|e| e.name == "idle_percent").expect("idle");
        assert!((idle.value - 100.0 * (1.0 - (23.0 * 0.5 + 1.5) / 96.0)).abs() < 1e-4, "{idle:?}");
    }

    #[test]
    fn a_busy_pool_gets_nothing() {
        let usage = pool(PoolKindName::Static, hours(24 * 8, 4.0, Some(0.2), |_| 3.5));
        let offers = [offer("m5.xlarge", CapacityType::Spot, 4000, 16384, 0.07)];
        assert!(recommend(&[usage], &offers, &[], 24.0 * 8.0, &Thresholds::default()).is_empty());
    }

    #[test]
    fn a_dynamic_pool_is_told_the_warm_buffer_and_minimum_it_did_not_use() {
        let mut usage = pool(PoolKindName::Dynamic, hours(24, 5.0, Some(0.2), |k| if k < 12 { 0.0 } else { 2.0 }));
        usage.min_size = Some(3);
        usage.warm = 2;
        let found = recommend(&[usage], &[], &[], 24.0, &Thresholds::default());
        assert_eq!(kinds(&found), [(Kind::IdleCapacity, "min_size"), (Kind::IdleCapacity, "scaling.warm")]);
        // Every hour had at least 3 idle instances: the whole buffer of 2 went unused.
        let warm = &found[1];
        assert_eq!(warm.suggested.as_deref(), Some("0"));
        assert_eq!(warm.estimated_monthly_saving, Some(round(2.0 * 0.2 * MONTH_HOURS)));
        // The quietest hour used nothing: a minimum of 0, saved in the hours at the floor (5 ≤ 3 + 2: all).
        let min = &found[0];
        assert_eq!(min.suggested.as_deref(), Some("0"));
        assert_eq!(min.estimated_monthly_saving, Some(round(3.0 * 0.2 * MONTH_HOURS)));
    }

    #[test]
    fn a_pool_of_small_jobs_is_right_sized_to_the_cheapest_type_that_fits_its_largest() {
        let mut usage = pool(PoolKindName::Static, hours(24, 1.0, Some(0.2), |_| 0.9));
        usage.size = Some(1);
        usage.attempts = AttemptStats {
            attempts: 100,
            p95_cpu_millis: 1000,
            p95_memory_mib: 2048,
            max_cpu_millis: 1500,
            max_memory_mib: 4096,
            ..AttemptStats::default()
        };
        let offers = [
            offer("m5.xlarge", CapacityType::OnDemand, 4000, 16384, 0.2),
            offer("m5.large", CapacityType::OnDemand, 2000, 8192, 0.1),
            // Too small for the largest job, and cheaper: not chosen.
            offer("t3.small", CapacityType::OnDemand, 2000, 2048, 0.02),
            // Fits, but spot: another rule's business.
            offer("m5.large", CapacityType::Spot, 2000, 8192, 0.03),
        ];
        let found = recommend(&[usage], &offers, &[], 24.0, &Thresholds::default());
        assert_eq!(kinds(&found), [(Kind::RightSize, "cloud.instance_types")]);
        assert_eq!(found[0].suggested.as_deref(), Some("m5.large"));
        // 0.1 an hour less, for the 24 instance-hours of a day, over a month.
        assert_eq!(found[0].estimated_monthly_saving, Some(round(0.1 * 24.0 * MONTH_HOURS / 24.0)));
    }

    #[test]
    fn short_retryable_work_on_demand_is_sent_to_spot() {
        let mut usage = pool(PoolKindName::Static, hours(24, 1.0, Some(0.2), |_| 0.8));
        usage.size = Some(1);
        usage.attempts = AttemptStats {
            attempts: 500,
            p95_cpu_millis: 4000,
            p95_memory_mib: 16384,
            max_cpu_millis: 4000,
            max_memory_mib: 16384,
            spot_suitable_share_seconds: 0.6 * 24.0 * 3600.0,
            spot_suitable_attempts: 400,
            spot_suitable_median_seconds: 40.0,
        };
        let offers = [offer("m5.xlarge", CapacityType::Spot, 4000, 16384, 0.05)];
        let found = recommend(&[usage.clone()], &offers, &[], 24.0, &Thresholds::default());
        assert_eq!(kinds(&found), [(Kind::Spot, "cloud.capacity_type")]);
        // A day cost 4.8; 75% of the work (0.6 of 0.8) moves, at a quarter of the price.
        let expected = 4.8 * 0.75 * 0.75 * MONTH_HOURS / 24.0;
        let saving = found[0].estimated_monthly_saving.expect("priced");
        assert!((saving - expected).abs() < 1e-6, "{saving} vs {expected}");

        // Mostly long or final jobs: nothing.
        usage.attempts.spot_suitable_share_seconds = 0.3 * 24.0 * 3600.0;
        assert!(recommend(&[usage], &offers, &[], 24.0, &Thresholds::default()).is_empty());
    }

    #[test]
    fn nights_and_weekends_without_work_become_a_schedule() {
        // Two weeks; busy (1.8 of 2 instances) 08:00–18:00 on weekdays, idle otherwise.
        let busy = |k: usize| {
            let at = monday() + Duration::hours(k as i64);
            at.weekday().num_days_from_monday() < 5 && (8..18).contains(&at.hour())
        };
        let usage = pool(PoolKindName::Static, hours(24 * 14, 2.0, Some(0.2), |k| if busy(k) { 1.8 } else { 0.0 }));
        let thresholds = Thresholds { idle_threshold_percent: 90.0, ..Thresholds::default() };
        let found = recommend(&[usage], &[], &[], 24.0 * 14.0, &thresholds);
        assert_eq!(kinds(&found), [(Kind::Schedule, "scaling.schedules")]);
        let windows: Vec<(&str, u32, u32)> =
            found[0].windows.iter().map(|w| (w.starts_day.as_str(), w.starts_hour, w.hours)).collect();
        // Weeknights 18:00–08:00 (14 h), and Friday 18:00 to Monday 08:00 (62 h).
        assert_eq!(windows, [("Mon", 18, 14), ("Tue", 18, 14), ("Wed", 18, 14), ("Thu", 18, 14), ("Fri", 18, 62)]);
        // 118 quiet hours a week at 0.4 an hour, seen twice in the period.
        let expected = 118.0 * 0.4 * 2.0 * MONTH_HOURS / (24.0 * 14.0);
        let saving = found[0].estimated_monthly_saving.expect("priced");
        assert!((saving - expected).abs() < 1e-3, "{saving} vs {expected}");
        // Less than a week says nothing of weekends.
        let short = pool(PoolKindName::Static, hours(24 * 3, 2.0, Some(0.2), |k| if busy(k) { 1.8 } else { 0.0 }));
        assert!(recommend(&[short], &[], &[], 72.0, &thresholds).is_empty());
    }

    #[test]
    fn an_unpriced_pool_gets_unpriced_savings_and_its_missing_price_last() {
        let usage = pool(PoolKindName::Static, hours(24, 4.0, None, |_| 0.5));
        let unpriced = Unpriced {
            pool: "batch".to_owned(),
            provider: "aws-ec2".to_owned(),
            instance_type: "m5.xlarge".to_owned(),
            capacity_type: CapacityType::OnDemand,
            region: "eu-west-1".to_owned(),
            instances: 4,
            instance_hours: 96.0,
        };
        let mut unpriced_pool = usage;
        unpriced_pool.price_per_hour = None;
        let found = recommend(&[unpriced_pool], &[], &[unpriced], 24.0, &Thresholds::default());
        assert_eq!(kinds(&found), [(Kind::IdleCapacity, "size"), (Kind::MissingPrice, "prices")]);
        assert!(found.iter().all(|r| r.estimated_monthly_saving.is_none()));
        assert!(found[1].action.contains("m5.xlarge"), "{}", found[1].action);
    }

    #[test]
    fn workers_no_ledger_records_are_a_missing_price_of_their_pool() {
        let unrecorded = Unpriced {
            pool: "by-hand".to_owned(),
            provider: UNRECORDED_PROVIDER.to_owned(),
            instance_type: "unknown".to_owned(),
            capacity_type: CapacityType::OnDemand,
            region: "*".to_owned(),
            instances: 2,
            instance_hours: 3.5,
        };
        let found = recommend(&[], &[], &[unrecorded], 24.0, &Thresholds::default());
        assert_eq!(kinds(&found), [(Kind::MissingPrice, "pools")]);
        assert!(found[0].action.contains("by-hand") && found[0].action.contains("3.50 hours"), "{}", found[0].action);
        assert_eq!(found[0].estimated_monthly_saving, None);
    }

    #[test]
    fn savings_below_the_floor_are_left_out() {
        let mut usage = pool(PoolKindName::Static, hours(24, 4.0, Some(0.0001), |_| 0.5));
        usage.price_per_hour = Some(0.0001);
        assert!(recommend(&[usage], &[], &[], 24.0, &Thresholds::default()).is_empty());
    }

    #[test]
    fn thresholds_are_checked() {
        assert!(Thresholds::default().problems().is_empty());
        let bad = Thresholds {
            idle_threshold_percent: 0.0,
            spot_max_job_seconds: 0,
            quiet_utilization_percent: f64::NAN,
            min_quiet_hours: 200,
            min_monthly_saving: -1.0,
        };
        let fields: Vec<&str> = bad.problems().iter().map(|(field, _)| *field).collect();
        assert_eq!(
            fields,
            [
                "idle_threshold_percent",
                "spot_max_job_seconds",
                "quiet_utilization_percent",
                "min_quiet_hours",
                "min_monthly_saving"
            ]
        );
    }
}
