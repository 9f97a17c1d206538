//! `aws-ec2` against moto, with a fault proxy for what moto cannot do.
#![allow(clippy::unwrap_used)]

mod support;

use hodei_core::pool::{CapacityType, CloudSettings};
use hodei_provider::{InstanceState, Provider, ProvisionRequest};
use hodei_provider_aws::testing::Fault;
use hodei_provider_aws::{parse_worker_env, render_user_data, Ec2Provider, InstanceIdSource};
use support::*;

#[tokio::test]
async fn launches_with_tags_token_and_user_data() {
    let moto = moto().await;
    let settings = settings(&moto.url());
    let clients = clients(&settings).await;
    let provider = Ec2Provider::new(clients.clone(), settings.clone());
    let pool = ec2_pool(&clients, "batch", &["t3.micro"]).await;
    let member = member();
    let request = ProvisionRequest { member, attempt: 1, pool: pool.clone() };

    let id = provider.provision(&request).await.unwrap();
    assert!(id.starts_with("i-"), "{id}");
    let instance = instance(&clients, &id).await;
    assert_eq!(tag(&instance, "hodei:deployment"), Some(DEPLOYMENT));
    assert_eq!(tag(&instance, "hodei:pool"), Some("batch"));
    assert_eq!(tag(&instance, "hodei:member"), Some(member.to_string().as_str()));
    assert_eq!(tag(&instance, "team"), Some("platform"));
    let short = &member.simple().to_string()[24..];
    assert_eq!(tag(&instance, "Name"), Some(format!("hodei-batch-{short}").as_str()));
    assert_eq!(instance.client_token(), Some(format!("{member}-1").as_str()));
    assert_eq!(instance.instance_type().map(|t| t.as_str()), Some("t3.micro"));

    // Volumes carry the tags too.
    let volumes = clients
        .ec2
        .describe_volumes()
        .filters(aws_sdk_ec2::types::Filter::builder().name("attachment.instance-id").values(&id).build())
        .send()
        .await
        .unwrap();
    assert!(!volumes.volumes().is_empty());
    for volume in volumes.volumes() {
        let member_tag = volume.tags().iter().find(|tag| tag.key() == Some("hodei:member")).and_then(|tag| tag.value());
        assert_eq!(member_tag, Some(member.to_string().as_str()));
    }

    // The user data reads back as the boot script for this member.
    let script = user_data(&clients, &id).await;
    let env = parse_worker_env(&script);
    assert_eq!(env, parse_worker_env(&render_user_data(&settings, &pool, InstanceIdSource::Member(member))));
    assert_eq!(env["HODEI_POOL"], "batch");
    assert_eq!(env["HODEI_INSTANCE_ID"], member.to_string());
    assert_eq!(env["HODEI_API_URL"], settings.api_urls);
    assert_eq!(env["HODEI_WORKER_ARGS"], "--slots 2 --memory-mib 1024 --label arch=x86_64 --drain-timeout-seconds 30");

    // The same member and attempt again: the same instance, not a second one.
    assert_eq!(provider.provision(&request).await.unwrap(), id);
    let listed = provider.list(&pool).await.unwrap().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].instance, id);
    assert_eq!(listed[0].member, Some(member));

    // Another attempt is another instance.
    let second = provider.provision(&ProvisionRequest { attempt: 2, ..request }).await.unwrap();
    assert_ne!(second, id);
    assert_eq!(provider.list(&pool).await.unwrap().unwrap().len(), 2);
}

#[tokio::test]
async fn describes_terminates_and_lists() {
    let moto = moto().await;
    let settings = settings(&moto.url());
    let clients = clients(&settings).await;
    let provider = Ec2Provider::new(clients.clone(), settings.clone());
    let pool = ec2_pool(&clients, "web", &["t3.micro"]).await;
    let other_pool = ec2_pool(&clients, "other", &["t3.micro"]).await;
    let (a, b) = (member(), member());
    let first = provider.provision(&ProvisionRequest { member: a, attempt: 1, pool: pool.clone() }).await.unwrap();
    let second = provider.provision(&ProvisionRequest { member: b, attempt: 1, pool: pool.clone() }).await.unwrap();
    provider.provision(&ProvisionRequest { member: member(), attempt: 1, pool: other_pool.clone() }).await.unwrap();
    // Another deployment's instance in the same pool is not listed.
    let mut elsewhere = settings.clone();
    elsewhere.deployment = "elsewhere".into();
    Ec2Provider::new(clients.clone(), elsewhere)
        .provision(&ProvisionRequest { member: member(), attempt: 1, pool: pool.clone() })
        .await
        .unwrap();

    let mut listed = provider.list(&pool).await.unwrap().unwrap();
    listed.sort_by_key(|instance| instance.member);
    let mut expected = vec![(first.clone(), a), (second.clone(), b)];
    expected.sort_by_key(|(_, member)| *member);
    assert_eq!(listed.iter().map(|i| (i.instance.clone(), i.member.unwrap())).collect::<Vec<_>>(), expected);
    assert!(listed.iter().all(|instance| instance.launched_at.timestamp() > 1_600_000_000));

    assert_eq!(provider.describe(&first).await.unwrap(), InstanceState::Running);
    provider.terminate(&first).await.unwrap();
    assert_eq!(provider.describe(&first).await.unwrap(), InstanceState::Gone);
    let listed = provider.list(&pool).await.unwrap().unwrap();
    assert_eq!(listed.iter().map(|i| i.instance.as_str()).collect::<Vec<_>>(), [second.as_str()]);
    // Ending a gone or unknown instance succeeds; an unknown one is gone.
    provider.terminate(&first).await.unwrap();
    provider.terminate("i-0123456789abcdef0").await.unwrap();
    assert_eq!(provider.describe("i-0123456789abcdef0").await.unwrap(), InstanceState::Gone);
}

#[tokio::test]
async fn launch_template_and_spot() {
    let moto = moto().await;
    let settings = settings(&moto.url());
    let clients = clients(&settings).await;
    let provider = Ec2Provider::new(clients.clone(), settings.clone());
    let template_id = launch_template(&clients, "workers", None).await;
    for template in ["workers".to_owned(), template_id] {
        let pool = pool(
            "templated",
            "aws-ec2",
            CloudSettings {
                launch_template: Some(template.clone()),
                capacity_type: CapacityType::Spot,
                ..Default::default()
            },
        );
        assert_eq!(provider.validate(&pool).await, Vec::<(String, String)>::new());
        let id = provider.provision(&ProvisionRequest { member: member(), attempt: 1, pool }).await.unwrap();
        let instance = instance(&clients, &id).await;
        assert_eq!(instance.instance_lifecycle().map(|l| l.as_str()), Some("spot"), "{template}");
        assert_eq!(instance.instance_type().map(|t| t.as_str()), Some("t3.micro"));
    }
}

#[tokio::test]
async fn validates_instance_types_and_launch_template() {
    let moto = moto().await;
    let settings = settings(&moto.url());
    let clients = clients(&settings).await;
    let provider = Ec2Provider::new(clients.clone(), settings.clone());
    let mut pool = ec2_pool(&clients, "checked", &["t3.micro", "z9.enormous"]).await;
    pool.cloud.as_mut().unwrap().launch_template = Some("no-such-template".into());
    pool.cloud.as_mut().unwrap().region = Some("eu-west-3".into());
    pool.template.labels.insert("bad".into(), "has space".into());
    let fields: Vec<String> = provider.validate(&pool).await.into_iter().map(|(field, _)| field).collect();
    assert_eq!(fields, ["cloud.region", "template.labels.bad", "cloud.instance_types[1]", "cloud.launch_template"]);
    let good = ec2_pool(&clients, "good", &["t3.micro", "m5.large"]).await;
    assert_eq!(provider.validate(&good).await, Vec::<(String, String)>::new());
}

#[tokio::test]
async fn falls_back_to_the_next_instance_type_without_capacity() {
    let moto = moto().await;
    let proxy = proxy(&moto).await;
    let settings = settings(&proxy.url());
    let clients = clients(&settings).await;
    let provider = Ec2Provider::new(clients.clone(), settings.clone());
    let pool = ec2_pool(&clients, "fallback", &["m5.large", "t3.micro"]).await;
    proxy.add(Fault::no_capacity("m5.large"));

    let id = provider.provision(&ProvisionRequest { member: member(), attempt: 1, pool: pool.clone() }).await.unwrap();
    assert_eq!(instance(&clients, &id).await.instance_type().map(|t| t.as_str()), Some("t3.micro"));
    // Once: a capacity error is not retried on the same instance type.
    assert_eq!(proxy.faulted("RunInstances"), 1);
    assert_eq!(provider.list(&pool).await.unwrap().unwrap().len(), 1);

    // With no capacity for any type, the capacity error is what provision reports.
    proxy.add(Fault::no_capacity("t3.micro"));
    let error = provider.provision(&ProvisionRequest { member: member(), attempt: 1, pool }).await.unwrap_err();
    assert_eq!(error.code.as_deref(), Some("InsufficientInstanceCapacity"));
    assert!(error.retryable);
}

#[tokio::test]
async fn converges_under_throttling_without_duplicates() {
    let moto = moto().await;
    let proxy = proxy(&moto).await;
    let settings = settings(&proxy.url());
    let clients = clients(&settings).await;
    let provider = Ec2Provider::new(clients.clone(), settings.clone());
    let pool = ec2_pool(&clients, "throttled", &["t3.micro"]).await;
    proxy.add(Fault::throttle("RunInstances", 3));
    proxy.add(Fault::throttle("DescribeInstances", 2));

    let member = member();
    let request = ProvisionRequest { member, attempt: 1, pool: pool.clone() };
    let id = provider.provision(&request).await.unwrap();
    assert_eq!(proxy.faulted("RunInstances"), 3);
    assert_eq!(proxy.faulted("DescribeInstances"), 2);
    // A retry of the whole call (as the reconciler would) finds the same instance.
    proxy.add(Fault::throttle("RunInstances", 1));
    assert_eq!(provider.provision(&request).await.unwrap(), id);
    let listed = provider.list(&pool).await.unwrap().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].instance, id);

    // Throttled past the SDK's attempts: a retryable error with AWS's code.
    proxy.add(Fault::throttle("TerminateInstances", 10));
    let error = provider.terminate(&id).await.unwrap_err();
    assert_eq!(error.code.as_deref(), Some("RequestLimitExceeded"));
    assert!(error.retryable);
    assert_eq!(proxy.faulted("TerminateInstances"), 5);
}

#[tokio::test]
async fn permission_errors_are_not_retryable_and_do_not_fall_back() {
    let moto = moto().await;
    let proxy = proxy(&moto).await;
    let settings = settings(&proxy.url());
    let clients = clients(&settings).await;
    let provider = Ec2Provider::new(clients.clone(), settings.clone());
    let pool = ec2_pool(&clients, "denied", &["m5.large", "t3.micro"]).await;
    proxy.add(Fault {
        action: Some("RunInstances".into()),
        body_contains: None,
        times: None,
        status: 403,
        code: "UnauthorizedOperation".into(),
        message: "You are not authorized to perform this operation.".into(),
    });
    let error = provider.provision(&ProvisionRequest { member: member(), attempt: 1, pool }).await.unwrap_err();
    assert_eq!(error.code.as_deref(), Some("UnauthorizedOperation"));
    assert!(!error.retryable);
    assert_eq!(proxy.seen("RunInstances"), 1);
}
