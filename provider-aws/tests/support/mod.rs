//! What the tests share: a moto server each, clients and pools.
#![allow(dead_code, clippy::unwrap_used)]

use aws_sdk_ec2::types::{Instance, RequestLaunchTemplateData};
use base64::Engine as _;
use hodei_core::pool::{CloudSettings, PoolSpec};
use hodei_provider_aws::testing::{self, FaultProxy, MotoServer};
use hodei_provider_aws::{AwsClients, AwsSettings};
use uuid::Uuid;

pub const DEPLOYMENT: &str = "test-deployment";

/// A moto server of the test's own; fails the test, naming the install command, if moto
/// is not installed.
pub async fn moto() -> MotoServer {
    testing::use_test_credentials();
    match MotoServer::start().await {
        Ok(server) => server,
        Err(error) => panic!("these tests need moto's server ({}): {error}", testing::MOTO_INSTALL),
    }
}

pub fn settings(endpoint: &str) -> AwsSettings {
    testing::settings(endpoint, DEPLOYMENT)
}

pub async fn clients(settings: &AwsSettings) -> AwsClients {
    AwsClients::connect_with_retry(settings, testing::fast_retry()).await
}

pub async fn proxy(moto: &MotoServer) -> FaultProxy {
    FaultProxy::start(moto.addr()).await.unwrap()
}

/// An image moto knows.
pub async fn image(clients: &AwsClients) -> String {
    let images = clients.ec2.describe_images().owners("amazon").send().await.unwrap();
    images.images().iter().find_map(|image| image.image_id()).unwrap().to_owned()
}

pub fn pool(id: &str, provider: &str, cloud: CloudSettings) -> PoolSpec {
    let mut pool: PoolSpec =
        serde_json::from_value(serde_json::json!({"id": id, "provider": provider, "size": 2})).unwrap();
    pool.template.slots = Some(2);
    pool.template.memory_mib = Some(1024);
    pool.template.labels.insert("arch".into(), "x86_64".into());
    pool.template.tags.insert("team".into(), "platform".into());
    pool.cloud = Some(cloud);
    pool
}

pub async fn ec2_pool(clients: &AwsClients, id: &str, instance_types: &[&str]) -> PoolSpec {
    let mut pool = pool(
        id,
        "aws-ec2",
        CloudSettings {
            instance_types: instance_types.iter().map(|t| (*t).to_owned()).collect(),
            ..Default::default()
        },
    );
    pool.template.image = Some(image(clients).await);
    pool
}

/// A launch template with the user data given (or none).
pub async fn launch_template(clients: &AwsClients, name: &str, user_data: Option<&str>) -> String {
    let mut data = RequestLaunchTemplateData::builder()
        .image_id(image(clients).await)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro);
    if let Some(script) = user_data {
        data = data.user_data(base64::engine::general_purpose::STANDARD.encode(script));
    }
    let output = clients
        .ec2
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(data.build())
        .send()
        .await
        .unwrap();
    output.launch_template().and_then(|template| template.launch_template_id()).unwrap().to_owned()
}

pub async fn instance(clients: &AwsClients, id: &str) -> Instance {
    let output = clients.ec2.describe_instances().instance_ids(id).send().await.unwrap();
    output.reservations()[0].instances()[0].clone()
}

pub fn tag<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    instance.tags().iter().find(|tag| tag.key() == Some(key)).and_then(|tag| tag.value())
}

pub fn member() -> Uuid {
    Uuid::now_v7()
}

pub async fn user_data(clients: &AwsClients, id: &str) -> String {
    let attribute = clients
        .ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = attribute.user_data().and_then(|value| value.value()).unwrap();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap()
}
