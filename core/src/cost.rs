//! Cost attribution: how an instance's cost splits between the job attempts that ran on it
//! and the idle capacity of its pool.
//!
//! Pure: the caller gathers the instance (its capacity, price and the window to account)
//! and the attempts that held part of it, and passes `now`-free plain data. Nothing here
//! reads prices or clocks.
//!
//! The formula, over each interval between two events (an attempt starting or ending, the
//! window's ends):
//!
//! - an attempt's raw share is `w_cpu · min(cpu_req / cpu_cap, 1) + w_mem · min(mem_req / mem_cap, 1)`;
//! - when the raw shares of the attempts running in the interval sum to `S > 1` (the
//!   instance was overcommitted), each is scaled by `1 / S`, so together they take the
//!   whole instance and never more;
//! - what the attempts do not take, `1 − min(S, 1)`, is idle;
//! - share × interval seconds × price per hour / 3600 is the amount.
//!
//! So for every instance, attributed + idle = instance-seconds × price per hour / 3600,
//! exactly up to floating-point rounding (a property test checks it). An unpriced instance
//! (no price in force) yields the same shares and seconds with no amounts: unpriced is
//! reported as unknown, never as zero.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::pool::CapacityType;
use crate::validation::ValidationErrors;

/// What an hour of an instance costs (`cost_tracking.prices`, `PUT /api/v1/prices`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    /// `local`, `aws-ec2` or `aws-asg`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub provider: String,
    /// An instance type (`m5.large`, `local-1000m-512Mi`), or `*` for any.
    #[schema(pattern = "^([*]|[A-Za-z0-9._-]{1,64})$")]
    pub instance_type: String,
    /// `on_demand` (default) or `spot`.
    #[serde(default)]
    pub capacity_type: CapacityType,
    /// A region (`eu-west-1`), or `*` (default) for any.
    #[serde(default = "any_region")]
    #[schema(pattern = "^([*]|[A-Za-z0-9._-]{1,64})$")]
    pub region: String,
    /// Per hour, from 0 to 1,000,000.
    #[schema(minimum = 0, maximum = 1000000)]
    pub price_per_hour: f64,
    /// `USD`, the only currency (default).
    #[serde(default = "usd")]
    #[schema(pattern = "^USD$")]
    pub currency: String,
    /// What one instance of the type offers, in millicores: with `memory_mib`, lets the
    /// cost recommendations name it as a smaller type to right-size to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100000000)]
    pub cpu_millis: Option<u32>,
    /// What one instance of the type offers, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100000000)]
    pub memory_mib: Option<u32>,
}

fn any_region() -> String {
    "*".to_owned()
}

fn usd() -> String {
    "USD".to_owned()
}

/// The instance type a price names: letters, digits, `.`, `-`, `_` (or `*`).
fn is_name(value: &str) -> bool {
    value == "*"
        || (!value.is_empty()
            && value.len() <= 64
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
}

/// The most prices a list may hold.
pub const MAX_PRICES: usize = 10_000;

/// Checks a price list; field names are `prices[i].…`. Two entries for the same key are refused.
pub fn validate_prices(prices: &[PriceSpec]) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::new();
    if prices.len() > MAX_PRICES {
        errors.add("prices", format!("must hold at most {MAX_PRICES} prices, got {}", prices.len()));
        return errors.into_result(());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (index, price) in prices.iter().enumerate() {
        let field = |name: &str| format!("prices[{index}].{name}");
        if !is_name(&price.provider) || price.provider == "*" {
            errors.add(field("provider"), "must be a provider name (letters, digits, '.', '-', '_')");
        }
        if !is_name(&price.instance_type) {
            errors.add(field("instance_type"), "must be an instance type (letters, digits, '.', '-', '_') or '*'");
        }
        if !is_name(&price.region) {
            errors.add(field("region"), "must be a region (letters, digits, '.', '-', '_') or '*'");
        }
        if !price.price_per_hour.is_finite() || !(0.0..=1_000_000.0).contains(&price.price_per_hour) {
            errors.add(
                field("price_per_hour"),
                format!("must be a number from 0 to 1000000, got {}", price.price_per_hour),
            );
        }
        for (name, value) in [("cpu_millis", price.cpu_millis), ("memory_mib", price.memory_mib)] {
            if value.is_some_and(|value| !(1..=100_000_000).contains(&value)) {
                errors.add(field(name), format!("must be from 1 to 100000000, got {}", value.unwrap_or(0)));
            }
        }
        if price.currency != "USD" {
            errors.add(field("currency"), format!("must be USD, got {:?}", price.currency));
        }
        if !seen.insert((&price.provider, &price.instance_type, price.capacity_type.as_str(), &price.region)) {
            errors.add(
                field("instance_type"),
                "a price for this provider, instance type, capacity type and region is already given",
            );
        }
    }
    errors.into_result(())
}

/// What the ledger calls a pool's instances: the first of `cloud.instance_types`, or for
/// a pool without (the `local` provider) its template's shape, `local-1000m-512Mi`
/// (`local` when the template leaves the shape to the machine).
pub fn instance_type_of(spec: &crate::pool::PoolSpec) -> String {
    if let Some(first) = spec.cloud.as_ref().and_then(|cloud| cloud.instance_types.first()) {
        return first.clone();
    }
    match (spec.template.cpu_millis, spec.template.memory_mib) {
        (Some(cpu), Some(memory)) => format!("{}-{cpu}m-{memory}Mi", spec.provider),
        _ => spec.provider.clone(),
    }
}

impl CapacityType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnDemand => "on_demand",
            Self::Spot => "spot",
        }
    }
}

/// How a share of an instance is weighed between CPU and memory. The weights sum to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub cpu: f64,
    pub memory: f64,
}

impl Default for Weights {
    /// 0.65 CPU, 0.35 memory: the split of OpenCost's default prices (0.031611 per
    /// vCPU-hour, 0.004237 per GiB-hour) on a general-purpose shape of 4 GiB per vCPU.
    fn default() -> Self {
        Self { cpu: 0.65, memory: 0.35 }
    }
}

impl Weights {
    /// Weights that are finite, not negative and sum to 1 (within 1e-9).
    pub fn is_valid(&self) -> bool {
        self.cpu.is_finite()
            && self.memory.is_finite()
            && self.cpu >= 0.0
            && self.memory >= 0.0
            && ((self.cpu + self.memory) - 1.0).abs() < 1e-9
    }
}

/// Where an instance's weights come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weighting {
    /// From the instance's own price split, as OpenCost splits a node's price: its cores at
    /// `per_core_hour` against its GiB at `per_gib_hour`, so
    /// `w_cpu = cores · per_core_hour / (cores · per_core_hour + GiB · per_gib_hour)`. A
    /// memory-heavy instance weighs memory more than a compute-heavy one. Only the ratio of
    /// the two rates matters.
    PriceSplit { per_core_hour: f64, per_gib_hour: f64 },
    /// The same weights for every instance.
    Fixed(Weights),
}

impl Default for Weighting {
    /// The price split at OpenCost's default prices: 0.031611 per vCPU-hour and 0.004237
    /// per GiB-hour (about 0.65 CPU, 0.35 memory on 4 GiB per vCPU; 0.48 CPU on 8 GiB).
    fn default() -> Self {
        Self::PriceSplit { per_core_hour: 0.031611, per_gib_hour: 0.004237 }
    }
}

impl Weighting {
    /// Rates that are finite and positive, or fixed weights that are valid.
    pub fn is_valid(&self) -> bool {
        match *self {
            Self::PriceSplit { per_core_hour, per_gib_hour } => {
                per_core_hour.is_finite() && per_gib_hour.is_finite() && per_core_hour > 0.0 && per_gib_hour > 0.0
            }
            Self::Fixed(weights) => weights.is_valid(),
        }
    }

    /// The weights of an instance that offers `cpu_millis` and `memory_mib`. An instance
    /// that offers only one resource (or neither) weighs that one alone (or both evenly).
    pub fn weights_for(&self, cpu_millis: u32, memory_mib: u32) -> Weights {
        match *self {
            Self::Fixed(weights) => weights,
            Self::PriceSplit { per_core_hour, per_gib_hour } => {
                let cpu = f64::from(cpu_millis) / 1000.0 * per_core_hour;
                let memory = f64::from(memory_mib) / 1024.0 * per_gib_hour;
                if cpu + memory > 0.0 {
                    Weights { cpu: cpu / (cpu + memory), memory: memory / (cpu + memory) }
                } else {
                    Weights { cpu: 0.5, memory: 0.5 }
                }
            }
        }
    }
}

/// The part of an instance's life to account, with what it offers and costs.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceWindow {
    pub cpu_millis: u32,
    pub memory_mib: u32,
    /// `None`: no price is in force for this instance.
    pub price_per_hour: Option<f64>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// An attempt that held part of the instance from `start` to `end`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptWindow {
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// One attempt's part of the instance within the window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AttemptCost {
    /// Seconds the attempt ran within the window.
    pub seconds: f64,
    /// Instance-seconds it is charged for (seconds × its share, after scaling).
    pub share_seconds: f64,
    /// `share_seconds × price / 3600`, or `None` when the instance is unpriced.
    pub amount: Option<f64>,
}

/// How an instance's window splits.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    /// The window's length in seconds.
    pub instance_seconds: f64,
    /// `instance_seconds × price / 3600`, or `None` when unpriced.
    pub instance_amount: Option<f64>,
    /// In the order of the attempts given.
    pub attempts: Vec<AttemptCost>,
    /// Instance-seconds no attempt used.
    pub idle_share_seconds: f64,
    pub idle_amount: Option<f64>,
}

/// Splits the instance's window between `attempts` (clipped to the window) and idle,
/// weighing CPU and memory as `weighting` says for this instance's shape.
pub fn attribute(instance: &InstanceWindow, attempts: &[AttemptWindow], weighting: Weighting) -> Attribution {
    let weights = weighting.weights_for(instance.cpu_millis, instance.memory_mib);
    let start = instance.start;
    let end = instance.end.max(start);
    let seconds_between =
        |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let clipped: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        attempts.iter().map(|attempt| (attempt.start.clamp(start, end), attempt.end.clamp(start, end))).collect();
    let raw_shares: Vec<f64> = attempts.iter().map(|attempt| raw_share(instance, attempt, weights)).collect();

    // A sweep over the starts and ends (ends first at equal times), keeping who runs.
    let mut events: Vec<(DateTime<Utc>, bool, usize)> = Vec::with_capacity(clipped.len() * 2);
    for (index, &(from, to)) in clipped.iter().enumerate() {
        if from < to {
            events.push((from, true, index));
            events.push((to, false, index));
        }
    }
    events.sort_unstable_by_key(|&(time, starts, index)| (time, starts, index));

    let mut costs = vec![AttemptCost::default(); attempts.len()];
    let mut running: Vec<usize> = Vec::new();
    let mut idle_share_seconds = 0.0;
    let mut since = start;
    let mut account = |running: &[usize], from: DateTime<Utc>, to: DateTime<Utc>, costs: &mut [AttemptCost]| {
        let length = seconds_between(from, to);
        if length <= 0.0 {
            return;
        }
        let total: f64 = running.iter().map(|&index| raw_shares[index]).sum();
        let scale = if total > 1.0 { 1.0 / total } else { 1.0 };
        for &index in running {
            costs[index].seconds += length;
            costs[index].share_seconds += raw_shares[index] * scale * length;
        }
        idle_share_seconds += (1.0 - total.min(1.0)) * length;
    };
    for (time, starts, index) in events {
        account(&running, since, time, &mut costs);
        since = time;
        if starts {
            running.push(index);
        } else {
            running.retain(|&other| other != index);
        }
    }
    account(&running, since, end, &mut costs);
    let amount = |share_seconds: f64| instance.price_per_hour.map(|price| share_seconds * price / 3600.0);
    for cost in &mut costs {
        cost.amount = amount(cost.share_seconds);
    }
    let instance_seconds = seconds_between(start, end);
    Attribution {
        instance_seconds,
        instance_amount: amount(instance_seconds),
        attempts: costs,
        idle_share_seconds,
        idle_amount: amount(idle_share_seconds),
    }
}

/// A price that takes effect for an instance at `from` (a spot price that moved while it
/// ran); `None`: unpriced from then.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriceChange {
    pub from: DateTime<Utc>,
    pub price_per_hour: Option<f64>,
}

/// The window cut at the instance's price changes: contiguous parts from its start to its
/// end, each with the price in force in it, for [`attribute`] to split one by one. The
/// window's own price holds until the first change; the last change at or before the
/// window's start is in force from it; changes at or after its end do not matter. Of two
/// changes at one time, the later given wins.
pub fn price_segments(instance: &InstanceWindow, changes: &[PriceChange]) -> Vec<InstanceWindow> {
    let start = instance.start;
    let end = instance.end.max(start);
    let mut ordered: Vec<&PriceChange> = changes.iter().collect();
    ordered.sort_by_key(|change| change.from);
    let mut price = instance.price_per_hour;
    let mut since = start;
    let mut segments = Vec::new();
    for change in ordered {
        if change.from >= end {
            break;
        }
        if change.from > since {
            segments.push(InstanceWindow { price_per_hour: price, start: since, end: change.from, ..instance.clone() });
            since = change.from;
        }
        price = change.price_per_hour;
    }
    segments.push(InstanceWindow { price_per_hour: price, start: since, end, ..instance.clone() });
    segments
}

/// The spot market's price of an instance type in one availability zone, as a provider
/// observed it (EC2's `DescribeSpotPriceHistory`).
#[derive(Debug, Clone, PartialEq)]
pub struct SpotQuote {
    pub instance_type: String,
    pub zone: String,
    pub price_per_hour: f64,
    pub observed_at: DateTime<Utc>,
}

/// The spot price in force for an instance of `instance_type`: its zone's quote when the
/// zone is known and quoted (the newest, if several), else the highest quote for the type
/// in the region, an upper bound of what it costs wherever it runs. `None`: the type is
/// not quoted.
pub fn spot_price_in_force(quotes: &[SpotQuote], instance_type: &str, zone: Option<&str>) -> Option<f64> {
    let of_type =
        || quotes.iter().filter(|quote| quote.instance_type == instance_type && quote.price_per_hour.is_finite());
    let in_zone = zone.and_then(|zone| {
        of_type()
            .filter(|quote| quote.zone == zone)
            .max_by_key(|quote| quote.observed_at)
            .map(|quote| quote.price_per_hour)
    });
    in_zone.or_else(|| of_type().map(|quote| quote.price_per_hour).reduce(f64::max))
}

/// An attempt's share of the instance before any scaling, each resource capped at all of it.
fn raw_share(instance: &InstanceWindow, attempt: &AttemptWindow, weights: Weights) -> f64 {
    let ratio = |requested: u32, capacity: u32| {
        if capacity == 0 {
            1.0
        } else {
            (f64::from(requested) / f64::from(capacity)).min(1.0)
        }
    };
    weights.cpu * ratio(attempt.cpu_millis, instance.cpu_millis)
        + weights.memory * ratio(attempt.memory_mib, instance.memory_mib)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).single().expect("a time")
    }

    fn instance(price: Option<f64>, end: i64) -> InstanceWindow {
        InstanceWindow { cpu_millis: 4000, memory_mib: 8192, price_per_hour: price, start: at(0), end: at(end) }
    }

    fn attempt(cpu_millis: u32, memory_mib: u32, start: i64, end: i64) -> AttemptWindow {
        AttemptWindow { cpu_millis, memory_mib, start: at(start), end: at(end) }
    }

    fn close(left: f64, right: f64) -> bool {
        (left - right).abs() <= 1e-9 * right.abs().max(1.0)
    }

    #[test]
    fn an_idle_instance_is_all_idle() {
        let split = attribute(&instance(Some(3.6), 3600), &[], Weighting::default());
        assert_eq!(split.instance_seconds, 3600.0);
        assert_eq!(split.instance_amount, Some(3.6));
        assert_eq!(split.idle_amount, Some(3.6));
    }

    #[test]
    fn a_half_instance_job_pays_half_while_it_runs() {
        // Half the CPU and half the memory for the first half hour: a quarter of the cost.
        let split = attribute(&instance(Some(3.6), 3600), &[attempt(2000, 4096, 0, 1800)], Weighting::default());
        assert_eq!(split.attempts[0].seconds, 1800.0);
        assert!(close(split.attempts[0].amount.expect("priced"), 0.9));
        assert!(close(split.idle_amount.expect("priced"), 2.7));
    }

    #[test]
    fn weights_split_cpu_and_memory() {
        // All the CPU, no memory: the CPU weight of the instance.
        let weights = Weighting::Fixed(Weights { cpu: 0.65, memory: 0.35 });
        let split = attribute(&instance(Some(1.0), 3600), &[attempt(4000, 0, 0, 3600)], weights);
        assert!(close(split.attempts[0].amount.expect("priced"), 0.65));
        assert!(close(split.idle_amount.expect("priced"), 0.35));
    }

    #[test]
    fn overcommitted_attempts_are_scaled_to_the_instance() {
        // Two attempts each asking for all of it, overlapping for 600 s of 1200 s each.
        let attempts = [attempt(4000, 8192, 0, 1200), attempt(4000, 8192, 600, 1800)];
        let split = attribute(&instance(Some(3.6), 1800), &attempts, Weighting::default());
        // 600 s alone + 600 s at a half each.
        assert!(close(split.attempts[0].share_seconds, 900.0));
        assert!(close(split.attempts[1].share_seconds, 900.0));
        assert!(close(split.idle_share_seconds, 0.0));
        assert!(close(split.attempts[0].amount.expect("priced") + split.attempts[1].amount.expect("priced"), 1.8));
    }

    #[test]
    fn attempts_are_clipped_to_the_window() {
        let split = attribute(&instance(Some(3.6), 3600), &[attempt(4000, 8192, -600, 600)], Weighting::default());
        assert_eq!(split.attempts[0].seconds, 600.0);
        assert!(close(split.attempts[0].amount.expect("priced"), 0.6));
    }

    #[test]
    fn requests_above_capacity_count_as_all_of_it() {
        let split = attribute(&instance(Some(3.6), 3600), &[attempt(8000, 16384, 0, 3600)], Weighting::default());
        assert!(close(split.attempts[0].amount.expect("priced"), 3.6));
        assert!(close(split.idle_amount.expect("priced"), 0.0));
    }

    #[test]
    fn an_unpriced_instance_has_shares_but_no_amounts() {
        let split = attribute(&instance(None, 3600), &[attempt(2000, 4096, 0, 3600)], Weighting::default());
        assert_eq!(split.attempts[0].amount, None);
        assert_eq!(split.idle_amount, None);
        assert_eq!(split.instance_amount, None);
        assert!(close(split.attempts[0].share_seconds, 1800.0));
    }

    #[test]
    fn prices_name_the_bad_field() {
        let price = |instance_type: &str, price_per_hour: f64, currency: &str| PriceSpec {
            provider: "aws-ec2".to_owned(),
            instance_type: instance_type.to_owned(),
            capacity_type: CapacityType::OnDemand,
            region: "*".to_owned(),
            price_per_hour,
            currency: currency.to_owned(),
            cpu_millis: None,
            memory_mib: None,
        };
        assert!(validate_prices(&[price("m5.large", 0.096, "USD"), price("*", 0.0, "USD")]).is_ok());
        let fields = |prices: &[PriceSpec]| -> Vec<String> {
            validate_prices(prices).expect_err("invalid").errors().iter().map(|e| e.field.clone()).collect()
        };
        assert_eq!(fields(&[price("m5.large", -1.0, "USD")]), ["prices[0].price_per_hour"]);
        assert_eq!(fields(&[price("m5 large!", 1.0, "USD")]), ["prices[0].instance_type"]);
        assert_eq!(fields(&[price("m5.large", 1.0, "EUR")]), ["prices[0].currency"]);
        assert_eq!(fields(&[price("a", 1.0, "USD"), price("a", 2.0, "USD")]), ["prices[1].instance_type"]);
        let shaped = PriceSpec { cpu_millis: Some(0), memory_mib: Some(2048), ..price("m5.large", 0.1, "USD") };
        assert_eq!(fields(&[shaped]), ["prices[0].cpu_millis"]);
        assert_eq!(fields(&vec![price("*", 1.0, "USD"); MAX_PRICES + 1]), ["prices"]);
    }

    #[test]
    fn default_weights_are_valid() {
        assert!(Weights::default().is_valid());
        assert!(Weighting::default().is_valid());
        assert!(!Weights { cpu: 0.7, memory: 0.7 }.is_valid());
        assert!(!Weights { cpu: -0.5, memory: 1.5 }.is_valid());
        assert!(!Weighting::PriceSplit { per_core_hour: 0.0, per_gib_hour: 1.0 }.is_valid());
        assert!(!Weighting::PriceSplit { per_core_hour: 1.0, per_gib_hour: f64::NAN }.is_valid());
    }

    #[test]
    fn the_price_split_weighs_each_shape_by_what_its_resources_cost() {
        let split = Weighting::PriceSplit { per_core_hour: 0.03, per_gib_hour: 0.005 };
        // 4 cores at 0.03 = 0.12 against 16 GiB at 0.005 = 0.08.
        let general = split.weights_for(4000, 16384);
        assert!(close(general.cpu, 0.6) && close(general.memory, 0.4), "{general:?}");
        // The same cores with twice the memory: memory weighs more.
        let memory_heavy = split.weights_for(4000, 32768);
        assert!(close(memory_heavy.cpu, 0.12 / 0.28), "{memory_heavy:?}");
        assert!(memory_heavy.memory > general.memory);
        assert!(close(split.weights_for(4000, 0).cpu, 1.0));
        assert!(close(split.weights_for(0, 0).cpu, 0.5));
        // OpenCost's default prices give the documented split on 4 GiB per vCPU.
        let default = Weighting::default().weights_for(4000, 16384);
        assert!((default.cpu - 0.65).abs() < 0.01, "{default:?}");
        // Fixed weights ignore the shape.
        let fixed = Weighting::Fixed(Weights { cpu: 0.9, memory: 0.1 });
        assert_eq!(fixed.weights_for(1000, 65536), Weights { cpu: 0.9, memory: 0.1 });
    }

    #[test]
    fn a_memory_heavy_instance_charges_memory_more() {
        // All the memory and none of the CPU of an 8 GiB, 4-core instance, and of a 64 GiB one.
        let priced = |memory_mib: u32| InstanceWindow { memory_mib, ..instance(Some(1.0), 3600) };
        let share = |memory_mib: u32| {
            attribute(&priced(memory_mib), &[attempt(0, memory_mib, 0, 3600)], Weighting::default()).attempts[0]
                .amount
                .expect("priced")
        };
        assert!(share(65536) > share(8192), "{} <= {}", share(65536), share(8192));
    }

    fn change(from: i64, price: Option<f64>) -> PriceChange {
        PriceChange { from: at(from), price_per_hour: price }
    }

    #[test]
    fn price_segments_cut_the_window_at_its_changes() {
        let window = InstanceWindow { start: at(100), ..instance(Some(1.0), 3700) };
        let bounds = |segments: &[InstanceWindow]| -> Vec<(DateTime<Utc>, DateTime<Utc>, Option<f64>)> {
            segments.iter().map(|segment| (segment.start, segment.end, segment.price_per_hour)).collect()
        };
        // No change: the window as it is.
        assert_eq!(bounds(&price_segments(&window, &[])), [(at(100), at(3700), Some(1.0))]);
        // A change before the start is in force from it; one after the end does not matter.
        assert_eq!(
            bounds(&price_segments(&window, &[change(4000, Some(9.0)), change(50, Some(2.0))])),
            [(at(100), at(3700), Some(2.0))]
        );
        // Changes inside, given out of order; one at the start replaces the window's price.
        assert_eq!(
            bounds(&price_segments(
                &window,
                &[change(2000, Some(3.0)), change(100, Some(2.0)), change(1000, None), change(3700, Some(5.0))]
            )),
            [(at(100), at(1000), Some(2.0)), (at(1000), at(2000), None), (at(2000), at(3700), Some(3.0))]
        );
        // Two changes at one time: the later given wins, and no empty part is made.
        assert_eq!(
            bounds(&price_segments(&window, &[change(600, Some(2.0)), change(600, Some(4.0))])),
            [(at(100), at(600), Some(1.0)), (at(600), at(3700), Some(4.0))]
        );
    }

    #[test]
    fn the_spot_price_in_force_is_the_zones_or_the_regions_highest() {
        let quote = |instance_type: &str, zone: &str, price: f64, observed: i64| SpotQuote {
            instance_type: instance_type.to_owned(),
            zone: zone.to_owned(),
            price_per_hour: price,
            observed_at: at(observed),
        };
        let quotes = [
            quote("m5.large", "eu-west-1a", 0.031, 0),
            quote("m5.large", "eu-west-1a", 0.034, 60),
            quote("m5.large", "eu-west-1b", 0.042, 0),
            quote("m5.large", "eu-west-1c", 0.029, 0),
            quote("c5.large", "eu-west-1a", 0.9, 0),
        ];
        let cases: [(&str, Option<&str>, Option<f64>); 5] = [
            // The zone's newest quote.
            ("m5.large", Some("eu-west-1a"), Some(0.034)),
            ("m5.large", Some("eu-west-1c"), Some(0.029)),
            // The zone unknown, or not quoted: the region's highest.
            ("m5.large", None, Some(0.042)),
            ("m5.large", Some("eu-west-1z"), Some(0.042)),
            // A type nobody quoted.
            ("r5.large", None, None),
        ];
        for (instance_type, zone, expected) in cases {
            assert_eq!(spot_price_in_force(&quotes, instance_type, zone), expected, "{instance_type} in {zone:?}");
        }
        assert_eq!(spot_price_in_force(&[], "m5.large", Some("eu-west-1a")), None);
    }

    proptest! {
        /// Attributed + idle = instance-seconds × price, whatever the overlaps and shapes.
        #[test]
        fn attributed_plus_idle_is_the_instance_cost(
            end in 1i64..100_000,
            price in 0.0f64..50.0,
            cpu_share in 0.0f64..1.0,
            rates in proptest::option::of((0.0001f64..1.0, 0.0001f64..1.0)),
            capacity in (0u32..64_000, 0u32..262_144),
            shapes in proptest::collection::vec((0u32..9000, 0u32..20_000, -1000i64..101_000, 0i64..50_000), 0..12),
        ) {
            let window = InstanceWindow { cpu_millis: capacity.0, memory_mib: capacity.1, ..instance(Some(price), end) };
            let attempts: Vec<AttemptWindow> =
                shapes.iter().map(|&(cpu, memory, start, length)| attempt(cpu, memory, start, start + length)).collect();
            let weighting = match rates {
                Some((per_core_hour, per_gib_hour)) => Weighting::PriceSplit { per_core_hour, per_gib_hour },
                None => Weighting::Fixed(Weights { cpu: cpu_share, memory: 1.0 - cpu_share }),
            };
            let split = attribute(&window, &attempts, weighting);
            let attributed: f64 = split.attempts.iter().map(|cost| cost.amount.expect("priced")).sum();
            let total = split.instance_amount.expect("priced");
            prop_assert!(close(attributed + split.idle_amount.expect("priced"), total), "{attributed} + {:?} != {total}", split.idle_amount);
            prop_assert!(split.idle_share_seconds >= -1e-9);
            for (cost, attempt) in split.attempts.iter().zip(&attempts) {
                prop_assert!(cost.share_seconds <= cost.seconds + 1e-9);
                prop_assert!(cost.seconds <= (attempt.end - attempt.start).num_seconds() as f64 + 1e-9);
            }
        }

        /// Split at its price changes, an instance's window is accounted whole: the parts
        /// tile it, and attributed + idle = Σ part seconds × the part's price.
        #[test]
        fn attributed_plus_idle_is_each_price_for_its_time(
            end in 1i64..100_000,
            launch_price in 0.0f64..50.0,
            changes in proptest::collection::vec((-1000i64..101_000, 0.0f64..50.0), 0..6),
            shapes in proptest::collection::vec((0u32..9000, 0u32..20_000, -1000i64..101_000, 0i64..50_000), 0..8),
        ) {
            let window = instance(Some(launch_price), end);
            let changes: Vec<PriceChange> = changes.iter().map(|&(from, price)| change(from, Some(price))).collect();
            let attempts: Vec<AttemptWindow> =
                shapes.iter().map(|&(cpu, memory, start, length)| attempt(cpu, memory, start, start + length)).collect();
            let segments = price_segments(&window, &changes);
            prop_assert_eq!(segments.first().map(|segment| segment.start), Some(window.start));
            prop_assert_eq!(segments.last().map(|segment| segment.end), Some(window.end));
            prop_assert!(segments.windows(2).all(|pair| pair[0].end == pair[1].start && pair[0].start < pair[0].end));
            let (mut accounted, mut expected, mut seconds) = (0.0, 0.0, 0.0);
            for segment in &segments {
                // Each part has the price of the last change by its start (the later given
                // of equal times), or the launch price before any.
                let in_force = changes
                    .iter()
                    .filter(|change| change.from <= segment.start)
                    .max_by_key(|change| change.from)
                    .map_or(Some(launch_price), |change| change.price_per_hour);
                prop_assert_eq!(segment.price_per_hour, in_force);
                let split = attribute(segment, &attempts, Weighting::default());
                accounted += split.attempts.iter().map(|cost| cost.amount.expect("priced")).sum::<f64>()
                    + split.idle_amount.expect("priced");
                let length = (segment.end - segment.start).num_seconds() as f64;
                expected += length * segment.price_per_hour.expect("priced") / 3600.0;
                seconds += length;
            }
            prop_assert!(close(accounted, expected), "{accounted} != {expected}");
            prop_assert!(close(seconds, end as f64));
        }
    }
}
