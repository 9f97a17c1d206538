//! Spot prices from `DescribeSpotPriceHistory`, against moto (which quotes every offered
//! instance type and zone at 0.00001), with a fault proxy for errors.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, LocationType};
use hodei_core::pool::CloudSettings;
use hodei_provider::Provider;
use hodei_provider_aws::testing::Fault;
use hodei_provider_aws::{AsgProvider, AwsClients, Ec2Provider};
use support::*;

/// moto's answer for every instance type and zone.
const MOTO_SPOT_PRICE: f64 = 0.00001;

/// The zones of the region offering each of the instance types, as EC2 says.
async fn offered(clients: &AwsClients, instance_types: &[&str]) -> BTreeSet<(String, String)> {
    let output = clients
        .ec2
        .describe_instance_type_offerings()
        .location_type(LocationType::AvailabilityZone)
        .filters(
            Filter::builder()
                .name("instance-type")
                .set_values(Some(instance_types.iter().map(|t| (*t).to_owned()).collect()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    output
        .instance_type_offerings()
        .iter()
        .map(|offering| {
            (offering.instance_type().unwrap().as_str().to_owned(), offering.location().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn quotes_each_of_the_pools_types_in_every_zone_offering_it() {
    let moto = moto().await;
    let settings = settings(&moto.url());
    let clients = clients(&settings).await;
    let types = ["m5.large", "t3.micro"];
    let expected = offered(&clients, &types).await;
    assert!(expected.len() > types.len(), "moto offers these types in several zones: {expected:?}");

    let ec2_pool = ec2_pool(&clients, "spot", &types).await;
    let asg_pool = pool(
        "fleet",
        "aws-asg",
        CloudSettings {
            auto_scaling_group: Some("fleet".into()),
            instance_types: types.iter().map(|t| (*t).to_owned()).collect(),
            ..Default::default()
        },
    );
    let ec2: &dyn Provider = &Ec2Provider::new(clients.clone(), settings.clone());
    let asg: &dyn Provider = &AsgProvider::new(clients.clone(), settings.clone());
    for (provider, pool) in [(ec2, &ec2_pool), (asg, &asg_pool)] {
        let quotes = provider.spot_prices(pool).await.unwrap();
        // One quote per (type, zone): the newest of what EC2 returned.
        let keys: Vec<(String, String)> =
            quotes.iter().map(|quote| (quote.instance_type.clone(), quote.zone.clone())).collect();
        assert_eq!(keys.iter().cloned().collect::<BTreeSet<_>>(), expected, "{provider:?}");
        assert_eq!(keys.len(), expected.len(), "one quote per type and zone: {quotes:?}");
        assert!(quotes.iter().all(|quote| quote.price_per_hour == MOTO_SPOT_PRICE), "{quotes:?}");
        assert!(quotes.iter().all(|quote| quote.observed_at.timestamp() > 0), "{quotes:?}");
    }
}

#[tokio::test]
async fn a_pool_without_instance_types_is_not_quoted() {
    let moto = moto().await;
    let proxy = proxy(&moto).await;
    let settings = settings(&proxy.url());
    let clients = clients(&settings).await;
    let provider = Ec2Provider::new(clients.clone(), settings.clone());
    let pool =
        pool("templated", "aws-ec2", CloudSettings { launch_template: Some("workers".into()), ..Default::default() });
    assert_eq!(provider.spot_prices(&pool).await.unwrap(), []);
    assert_eq!(proxy.seen("DescribeSpotPriceHistory"), 0);
}

#[tokio::test]
async fn errors_carry_the_aws_code_and_throttling_is_retried() {
    let moto = moto().await;
    let proxy = proxy(&moto).await;
    let settings = settings(&proxy.url());
    let clients = clients(&settings).await;
    let provider = Ec2Provider::new(clients.clone(), settings.clone());
    let pool = ec2_pool(&clients, "spot", &["m5.large"]).await;

    // Throttled twice, then answered: the SDK's retries get through.
    proxy.add(Fault::throttle("DescribeSpotPriceHistory", 2));
    let quotes = tokio::time::timeout(Duration::from_secs(30), provider.spot_prices(&pool)).await.unwrap().unwrap();
    assert!(!quotes.is_empty());
    assert_eq!(proxy.faulted("DescribeSpotPriceHistory"), 2);
    assert_eq!(proxy.seen("DescribeSpotPriceHistory"), 3);

    // Refused (for a request that asks for Linux/UNIX prices of the pool's type): the
    // AWS code, not worth retrying.
    proxy.add(Fault {
        action: Some("DescribeSpotPriceHistory".into()),
        body_contains: Some("ProductDescription.1=Linux%2FUNIX".into()),
        times: None,
        status: 403,
        code: "UnauthorizedOperation".into(),
        message: "You are not authorized to perform this operation.".into(),
    });
    let error = provider.spot_prices(&pool).await.unwrap_err();
    assert_eq!(error.code.as_deref(), Some("UnauthorizedOperation"));
    assert!(!error.retryable);
    assert!(error.message.starts_with("DescribeSpotPriceHistory"), "{error}");
}
