//! Spot prices: what the spot market asks now for a pool's instance types, per
//! availability zone (`DescribeSpotPriceHistory`). Shared by `aws-ec2` and `aws-asg`;
//! never launches or prices anything itself.

use std::collections::BTreeMap;

use aws_sdk_ec2::primitives::DateTime as AwsDateTime;
use aws_sdk_ec2::types::InstanceType;
use chrono::{DateTime, Utc};
use hodei_core::pool::PoolSpec;
use hodei_provider::{ProviderError, SpotQuote};

use crate::errors::from_sdk;

/// The operating system the quotes are for: Hodei's workers run on Linux.
pub const PRODUCT_DESCRIPTION: &str = "Linux/UNIX";

/// The newest quote per (instance type, zone) for the pool's `cloud.instance_types`. With
/// a start time of now, EC2 answers the price in force now in every zone offering the type.
pub(crate) async fn spot_prices(ec2: &aws_sdk_ec2::Client, pool: &PoolSpec) -> Result<Vec<SpotQuote>, ProviderError> {
    let types: Vec<InstanceType> = pool
        .cloud
        .as_ref()
        .map(|cloud| cloud.instance_types.iter().map(|name| InstanceType::from(name.as_str())).collect())
        .unwrap_or_default();
    if types.is_empty() {
        return Ok(Vec::new());
    }
    let pages = ec2
        .describe_spot_price_history()
        .set_instance_types(Some(types))
        .product_descriptions(PRODUCT_DESCRIPTION)
        .start_time(AwsDateTime::from(std::time::SystemTime::now()))
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|error| from_sdk("DescribeSpotPriceHistory", &error))?;
    let mut newest: BTreeMap<(String, String), SpotQuote> = BTreeMap::new();
    for entry in pages.iter().flat_map(|page| page.spot_price_history()) {
        let (Some(instance_type), Some(zone), Some(price)) =
            (entry.instance_type(), entry.availability_zone(), entry.spot_price())
        else {
            continue;
        };
        let Ok(price_per_hour) = price.trim().parse::<f64>() else {
            tracing::warn!(instance_type = instance_type.as_str(), zone, price, "an unreadable spot price; skipped");
            continue;
        };
        let observed_at = entry
            .timestamp()
            .and_then(|time| DateTime::<Utc>::from_timestamp(time.secs(), time.subsec_nanos()))
            .unwrap_or(DateTime::UNIX_EPOCH);
        let quote = SpotQuote {
            instance_type: instance_type.as_str().to_owned(),
            zone: zone.to_owned(),
            price_per_hour,
            observed_at,
        };
        let key = (quote.instance_type.clone(), quote.zone.clone());
        if newest.get(&key).is_none_or(|seen| seen.observed_at <= quote.observed_at) {
            newest.insert(key, quote);
        }
    }
    Ok(newest.into_values().collect())
}
