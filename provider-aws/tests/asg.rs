//! `aws-asg` against moto.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use aws_sdk_autoscaling::types::{AutoScalingGroup, LaunchTemplateSpecification};
use hodei_core::pool::{CloudSettings, PoolSpec};
use hodei_provider::{InstanceState, Provider, ProvisionRequest};
use hodei_provider_aws::{render_user_data, AsgProvider, AwsClients, InstanceIdSource};
use support::*;

async fn group_with(clients: &AwsClients, name: &str, min: i32, max: i32, desired: i32) -> PoolSpec {
    let pool = pool("fleet", "aws-asg", CloudSettings { auto_scaling_group: Some(name.into()), ..Default::default() });
    let script = render_user_data(&settings("http://unused"), &pool, InstanceIdSource::Metadata);
    let template = launch_template(clients, &format!("{name}-template"), Some(&script)).await;
    clients
        .autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(LaunchTemplateSpecification::builder().launch_template_id(template).version("$Latest").build())
        .min_size(min)
        .max_size(max)
        .desired_capacity(desired)
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
    pool
}

async fn group(clients: &AwsClients, name: &str) -> AutoScalingGroup {
    let output =
        clients.autoscaling.describe_auto_scaling_groups().auto_scaling_group_names(name).send().await.unwrap();
    output.auto_scaling_groups()[0].clone()
}

async fn protected(clients: &AwsClients, instance: &str) -> bool {
    let output = clients.autoscaling.describe_auto_scaling_instances().instance_ids(instance).send().await.unwrap();
    output.auto_scaling_instances()[0].protected_from_scale_in().unwrap_or(false)
}

fn provider(clients: &AwsClients, settings: &hodei_provider_aws::AwsSettings) -> AsgProvider {
    AsgProvider::new(clients.clone(), settings.clone())
        .with_claim_timing(Duration::from_secs(10), Duration::from_millis(100))
}

#[tokio::test]
async fn provision_claims_and_terminate_decrements() {
    let moto = moto().await;
    let settings = settings(&moto.url());
    let clients = clients(&settings).await;
    let provider = provider(&clients, &settings);
    let pool = group_with(&clients, "workers", 0, 2, 0).await;
    assert_eq!(provider.validate(&pool).await, Vec::<(String, String)>::new());
    assert_eq!(provider.list(&pool).await.unwrap().unwrap(), []);

    let (a, b) = (member(), member());
    let first = provider.provision(&ProvisionRequest { member: a, attempt: 1, pool: pool.clone() }).await.unwrap();
    assert_eq!(group(&clients, "workers").await.desired_capacity(), Some(1));
    let described = instance(&clients, &first).await;
    assert_eq!(tag(&described, "hodei:member"), Some(a.to_string().as_str()));
    assert_eq!(tag(&described, "hodei:deployment"), Some(DEPLOYMENT));
    assert_eq!(tag(&described, "hodei:pool"), Some("fleet"));
    assert!(protected(&clients, &first).await);
    assert_eq!(provider.describe(&first).await.unwrap(), InstanceState::Running);

    // A retried provision of the same member gets its instance back.
    assert_eq!(
        provider.provision(&ProvisionRequest { member: a, attempt: 1, pool: pool.clone() }).await.unwrap(),
        first
    );
    assert_eq!(group(&clients, "workers").await.desired_capacity(), Some(1));

    let second = provider.provision(&ProvisionRequest { member: b, attempt: 1, pool: pool.clone() }).await.unwrap();
    assert_ne!(second, first);
    assert_eq!(group(&clients, "workers").await.desired_capacity(), Some(2));
    let mut listed: Vec<_> =
        provider.list(&pool).await.unwrap().unwrap().into_iter().map(|i| (i.instance, i.member.unwrap())).collect();
    listed.sort();
    let mut expected = vec![(first.clone(), a), (second.clone(), b)];
    expected.sort();
    assert_eq!(listed, expected);

    // At MaxSize: refused, not retryable, nothing changed.
    let error =
        provider.provision(&ProvisionRequest { member: member(), attempt: 1, pool: pool.clone() }).await.unwrap_err();
    assert_eq!(error.code.as_deref(), Some("AutoScalingGroupAtMaxSize"));
    assert!(!error.retryable);
    assert_eq!(group(&clients, "workers").await.desired_capacity(), Some(2));

    provider.terminate(&first).await.unwrap();
    assert_eq!(group(&clients, "workers").await.desired_capacity(), Some(1));
    assert_eq!(provider.describe(&first).await.unwrap(), InstanceState::Gone);
    let listed = provider.list(&pool).await.unwrap().unwrap();
    assert_eq!(listed.iter().map(|i| i.instance.as_str()).collect::<Vec<_>>(), [second.as_str()]);
    // Again: it is gone, which is fine.
    provider.terminate(&first).await.unwrap();
    assert_eq!(group(&clients, "workers").await.desired_capacity(), Some(1));
}

#[tokio::test]
async fn terminate_at_min_size_lowers_it() {
    let moto = moto().await;
    let settings = settings(&moto.url());
    let clients = clients(&settings).await;
    let provider = provider(&clients, &settings);
    let pool = group_with(&clients, "steady", 1, 3, 1).await;
    let spare = group(&clients, "steady").await.instances()[0].instance_id().unwrap().to_owned();
    // The group's own instance is spare capacity: not listed, and claimed first.
    assert_eq!(provider.list(&pool).await.unwrap().unwrap(), []);
    let member = member();
    let claimed = provider.provision(&ProvisionRequest { member, attempt: 1, pool: pool.clone() }).await.unwrap();
    assert_eq!(claimed, spare);
    assert_eq!(group(&clients, "steady").await.desired_capacity(), Some(1));

    provider.terminate(&claimed).await.unwrap();
    let after = group(&clients, "steady").await;
    assert_eq!(after.desired_capacity(), Some(0));
    assert_eq!(after.min_size(), Some(0));
    assert_eq!(provider.describe(&claimed).await.unwrap(), InstanceState::Gone);
    assert_eq!(provider.list(&pool).await.unwrap().unwrap(), []);
}

#[tokio::test]
async fn concurrent_provisions_claim_different_instances() {
    let moto = moto().await;
    let settings = settings(&moto.url());
    let clients = clients(&settings).await;
    let provider = provider(&clients, &settings);
    let pool = group_with(&clients, "busy", 0, 4, 0).await;
    let requests: Vec<ProvisionRequest> =
        (0..3).map(|_| ProvisionRequest { member: member(), attempt: 1, pool: pool.clone() }).collect();
    let (a, b, c) = tokio::join!(
        provider.provision(&requests[0]),
        provider.provision(&requests[1]),
        provider.provision(&requests[2])
    );
    let mut ids = vec![a.unwrap(), b.unwrap(), c.unwrap()];
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert_eq!(group(&clients, "busy").await.desired_capacity(), Some(3));
    assert_eq!(provider.list(&pool).await.unwrap().unwrap().len(), 3);
}

#[tokio::test]
async fn validate_names_a_missing_group() {
    let moto = moto().await;
    let settings = settings(&moto.url());
    let clients = clients(&settings).await;
    let provider = provider(&clients, &settings);
    let missing =
        pool("ghost", "aws-asg", CloudSettings { auto_scaling_group: Some("nope".into()), ..Default::default() });
    let errors = provider.validate(&missing).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "cloud.auto_scaling_group");
    let unnamed = pool("ghost", "aws-asg", CloudSettings::default());
    assert_eq!(provider.validate(&unnamed).await[0].0, "cloud.auto_scaling_group");
}
