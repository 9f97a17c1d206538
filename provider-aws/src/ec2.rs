//! `aws-ec2`: one EC2 instance per pool member.

use std::collections::BTreeMap;

use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, Instance, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceStateName, InstanceType, LaunchTemplateSpecification, MarketType, ResourceType, SpotInstanceType,
    SpotMarketOptions, Tag, TagSpecification,
};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hodei_core::pool::{CapacityType, PoolSpec, ProviderLimits};
use hodei_provider::{BoxFuture, InstanceState, ListedInstance, Provider, ProviderError, ProvisionRequest, SpotQuote};
use uuid::Uuid;

use crate::errors::{self, from_sdk, has_code};
use crate::user_data::{render_user_data, InstanceIdSource};
use crate::{AwsClients, AwsSettings, TAG_CLIENT_TOKEN, TAG_DEPLOYMENT, TAG_MEMBER, TAG_POOL};

/// States of an instance that still exists (and costs).
pub(crate) const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

/// Launches one instance per member with `RunInstances`.
#[derive(Debug, Clone)]
pub struct Ec2Provider {
    clients: AwsClients,
    settings: AwsSettings,
}

impl Ec2Provider {
    pub fn new(clients: AwsClients, settings: AwsSettings) -> Self {
        Self { clients, settings }
    }

    /// Connects with [`AwsClients::connect`].
    pub async fn connect(settings: AwsSettings) -> Self {
        Self::new(AwsClients::connect(&settings).await, settings)
    }

    pub fn clients(&self) -> &AwsClients {
        &self.clients
    }

    async fn provision_instance(&self, request: &ProvisionRequest) -> Result<String, ProviderError> {
        let pool = &request.pool;
        let token = format!("{}-{}", request.member, request.attempt);
        // EC2 keeps a `ClientToken` for a while, and not every EC2-compatible cloud does:
        // a launch of this attempt that already happened is found by its tag first.
        if let Some(existing) = self.find_by_token(pool, &token).await? {
            tracing::info!(pool = %pool.id, member = %request.member, instance = %existing, "instance already launched");
            return Ok(existing);
        }
        let cloud = pool.cloud.clone().unwrap_or_default();
        if cloud.launch_template.is_none() && pool.template.image.is_none() {
            return Err(ProviderError::coded(
                "InvalidPoolSpec",
                format!("pool {}: aws-ec2 needs cloud.launch_template or template.image", pool.id),
                false,
            ));
        }
        let types: Vec<Option<&str>> = if cloud.instance_types.is_empty() {
            vec![None]
        } else {
            cloud.instance_types.iter().map(|t| Some(t.as_str())).collect()
        };
        let subnets: Vec<Option<&str>> = if cloud.subnets.is_empty() {
            vec![None]
        } else {
            cloud.subnets.iter().map(|s| Some(s.as_str())).collect()
        };
        let user_data = base64::engine::general_purpose::STANDARD.encode(render_user_data(
            &self.settings,
            pool,
            InstanceIdSource::Member(request.member),
        ));
        let tags = crate::instance_tags(
            &self.settings.deployment,
            pool,
            &[
                (TAG_MEMBER, request.member.to_string()),
                (TAG_CLIENT_TOKEN, token.clone()),
                ("Name", format!("hodei-{}-{}", pool.id, short(request.member))),
            ],
        );
        let mut last_error = None;
        for (type_index, instance_type) in types.iter().enumerate() {
            for (subnet_index, subnet) in subnets.iter().enumerate() {
                // One token per placement (EC2 refuses a token reused with other
                // parameters): the first is `{member}-{attempt}`, the next ones have the
                // placement's indexes after it.
                let client_token = if type_index == 0 && subnet_index == 0 {
                    token.clone()
                } else {
                    format!("{token}-{type_index}.{subnet_index}")
                };
                match self.run_instance(pool, *instance_type, *subnet, &client_token, &user_data, &tags).await {
                    Ok(instance) => {
                        tracing::info!(
                            pool = %pool.id, member = %request.member, %instance,
                            instance_type = instance_type.unwrap_or("(launch template)"),
                            subnet = subnet.unwrap_or("(default)"),
                            "launched instance"
                        );
                        return Ok(instance);
                    }
                    Err(error) if has_code(&error, errors::CAPACITY_CODES) => {
                        tracing::warn!(
                            pool = %pool.id, member = %request.member,
                            instance_type = instance_type.unwrap_or("(launch template)"),
                            subnet = subnet.unwrap_or("(default)"),
                            %error, "no capacity, trying the next placement"
                        );
                        last_error = Some(error);
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ProviderError::new("no placement to try")))
    }

    async fn run_instance(
        &self,
        pool: &PoolSpec,
        instance_type: Option<&str>,
        subnet: Option<&str>,
        client_token: &str,
        user_data: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<String, ProviderError> {
        let cloud = pool.cloud.clone().unwrap_or_default();
        let tag_list: Vec<Tag> = tags.iter().map(|(key, value)| Tag::builder().key(key).value(value).build()).collect();
        let mut call = self
            .clients
            .ec2
            .run_instances()
            .min_count(1)
            .max_count(1)
            .client_token(client_token)
            .user_data(user_data)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tag_list.clone()))
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder().resource_type(ResourceType::Volume).set_tags(Some(tag_list)).build(),
            );
        if let Some(template) = &cloud.launch_template {
            let version = cloud.launch_template_version.clone().unwrap_or_else(|| "$Default".to_owned());
            let spec = if template.starts_with("lt-") {
                LaunchTemplateSpecification::builder().launch_template_id(template)
            } else {
                LaunchTemplateSpecification::builder().launch_template_name(template)
            };
            call = call.launch_template(spec.version(version).build());
        }
        if let Some(image) = &pool.template.image {
            call = call.image_id(image);
        }
        if let Some(instance_type) = instance_type {
            call = call.instance_type(InstanceType::from(instance_type));
        }
        if let Some(subnet) = subnet {
            call = call.subnet_id(subnet);
        }
        for group in &cloud.security_groups {
            call = call.security_group_ids(group);
        }
        if let Some(profile) = &cloud.instance_profile {
            let spec = if profile.starts_with("arn:") {
                IamInstanceProfileSpecification::builder().arn(profile)
            } else {
                IamInstanceProfileSpecification::builder().name(profile)
            };
            call = call.iam_instance_profile(spec.build());
        }
        if cloud.capacity_type == CapacityType::Spot {
            call = call.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        let output = call
            .customize()
            .config_override(aws_sdk_ec2::config::Builder::default().retry_classifier(CapacityIsFinal))
            .send()
            .await
            .map_err(|error| from_sdk("RunInstances", &error))?;
        output
            .instances()
            .first()
            .and_then(|instance| instance.instance_id())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::new("RunInstances: no instance in the answer"))
    }

    async fn find_by_token(&self, pool: &PoolSpec, token: &str) -> Result<Option<String>, ProviderError> {
        let instances = describe_filtered(
            &self.clients.ec2,
            vec![
                tag_filter(TAG_DEPLOYMENT, &self.settings.deployment),
                tag_filter(TAG_POOL, &pool.id),
                tag_filter(TAG_CLIENT_TOKEN, token),
                live_filter(),
            ],
        )
        .await?;
        Ok(instances.iter().find_map(|instance| instance.instance_id().map(str::to_owned)))
    }

    async fn validate_pool(&self, pool: &PoolSpec) -> Vec<(String, String)> {
        let mut errors = crate::common_errors(&self.clients.region, pool);
        let cloud = pool.cloud.clone().unwrap_or_default();
        if cloud.launch_template.is_none() && pool.template.image.is_none() {
            errors.push((
                "cloud.launch_template".to_owned(),
                "aws-ec2 needs a launch template or template.image".to_owned(),
            ));
        }
        for (index, instance_type) in cloud.instance_types.iter().enumerate() {
            let field = format!("cloud.instance_types[{index}]");
            let answer = self
                .clients
                .ec2
                .describe_instance_types()
                .instance_types(InstanceType::from(instance_type.as_str()))
                .send()
                .await;
            match answer {
                Ok(output) if !output.instance_types().is_empty() => {}
                Ok(_) => errors.push((field, format!("no instance type {instance_type} in {}", self.clients.region))),
                Err(error) => {
                    let error = from_sdk("DescribeInstanceTypes", &error);
                    if has_code(&error, &["InvalidInstanceType", "InvalidParameterValue"]) {
                        errors.push((field, format!("no instance type {instance_type} in {}", self.clients.region)));
                    } else {
                        errors.push((field, format!("could not check: {error}")));
                    }
                }
            }
        }
        if let Some(template) = &cloud.launch_template {
            let call = self.clients.ec2.describe_launch_templates();
            let call = if template.starts_with("lt-") {
                call.launch_template_ids(template)
            } else {
                call.launch_template_names(template)
            };
            match call.send().await {
                Ok(output) if !output.launch_templates().is_empty() => {}
                Ok(_) => errors.push(("cloud.launch_template".to_owned(), format!("no launch template {template}"))),
                Err(error) => {
                    let error = from_sdk("DescribeLaunchTemplates", &error);
                    let missing = error.code.as_deref().is_some_and(|code| {
                        code.starts_with("InvalidLaunchTemplateId") || code.starts_with("InvalidLaunchTemplateName")
                    });
                    if missing {
                        errors.push(("cloud.launch_template".to_owned(), format!("no launch template {template}")));
                    } else {
                        errors.push(("cloud.launch_template".to_owned(), format!("could not check: {error}")));
                    }
                }
            }
        }
        errors
    }

    async fn list_pool(&self, pool: &PoolSpec) -> Result<Vec<ListedInstance>, ProviderError> {
        let instances = describe_filtered(
            &self.clients.ec2,
            vec![tag_filter(TAG_DEPLOYMENT, &self.settings.deployment), tag_filter(TAG_POOL, &pool.id), live_filter()],
        )
        .await?;
        Ok(instances.iter().filter_map(listed).collect())
    }
}

impl Provider for Ec2Provider {
    fn limits(&self) -> ProviderLimits {
        generous_limits()
    }

    fn provision<'a>(&'a self, request: &'a ProvisionRequest) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(self.provision_instance(request))
    }

    fn terminate<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(terminate_instance(&self.clients.ec2, instance))
    }

    fn describe<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<InstanceState, ProviderError>> {
        Box::pin(describe_instance(&self.clients.ec2, instance))
    }

    fn validate<'a>(&'a self, pool: &'a PoolSpec) -> BoxFuture<'a, Vec<(String, String)>> {
        Box::pin(self.validate_pool(pool))
    }

    fn list<'a>(&'a self, pool: &'a PoolSpec) -> BoxFuture<'a, Result<Option<Vec<ListedInstance>>, ProviderError>> {
        Box::pin(async move { self.list_pool(pool).await.map(Some) })
    }

    fn spot_prices<'a>(&'a self, pool: &'a PoolSpec) -> BoxFuture<'a, Result<Vec<SpotQuote>, ProviderError>> {
        Box::pin(crate::spot::spot_prices(&self.clients.ec2, pool))
    }
}

/// EC2 answers a capacity error with HTTP 500, which the SDK would retry as a transient
/// error, several times with backoff; for a launch, the next instance type or subnet is the
/// better retry, so those are not retried.
#[derive(Debug)]
struct CapacityIsFinal;

impl ClassifyRetry for CapacityIsFinal {
    fn classify_retry(&self, context: &InterceptorContext) -> RetryAction {
        let Some(Err(error)) = context.output_or_error() else { return RetryAction::NoActionIndicated };
        let code = error
            .as_operation_error()
            .and_then(|error| error.downcast_ref::<RunInstancesError>())
            .and_then(|error| error.code());
        if code.is_some_and(errors::is_capacity_code) {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "capacity errors of a launch are not retried"
    }
}

/// Cloud providers' limits are the pools' and the account's: the caller fills in its own.
pub(crate) fn generous_limits() -> ProviderLimits {
    // The largest EC2 instances: 448 vCPUs, 24 TiB.
    ProviderLimits { name: String::new(), max_cpu_millis: 448_000, max_memory_mib: 24 * 1024 * 1024 }
}

fn short(member: Uuid) -> String {
    let member = member.simple().to_string();
    member[member.len() - 8..].to_owned()
}

pub(crate) fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder().name(format!("tag:{key}")).values(value).build()
}

pub(crate) fn live_filter() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .set_values(Some(LIVE_STATES.iter().map(|s| (*s).to_owned()).collect()))
        .build()
}

/// Every instance matching the filters, through all pages.
pub(crate) async fn describe_filtered(
    ec2: &aws_sdk_ec2::Client,
    filters: Vec<Filter>,
) -> Result<Vec<Instance>, ProviderError> {
    let pages = ec2
        .describe_instances()
        .set_filters(Some(filters))
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|error| from_sdk("DescribeInstances", &error))?;
    Ok(pages
        .iter()
        .flat_map(|page| page.reservations())
        .flat_map(|reservation| reservation.instances())
        .cloned()
        .collect())
}

/// These instances, as EC2 describes them (those it does not know are left out).
pub(crate) async fn describe_ids(ec2: &aws_sdk_ec2::Client, ids: &[String]) -> Result<Vec<Instance>, ProviderError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    match ec2.describe_instances().set_instance_ids(Some(ids.to_vec())).send().await {
        Ok(output) => {
            Ok(output.reservations().iter().flat_map(|reservation| reservation.instances()).cloned().collect())
        }
        Err(error) => {
            let error = from_sdk("DescribeInstances", &error);
            if has_code(&error, &["InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"]) && ids.len() == 1 {
                Ok(Vec::new())
            } else {
                Err(error)
            }
        }
    }
}

pub(crate) fn tag_value<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    instance.tags().iter().find(|tag| tag.key() == Some(key)).and_then(|tag| tag.value())
}

pub(crate) fn launched_at(instance: &Instance) -> DateTime<Utc> {
    instance
        .launch_time()
        .and_then(|time| DateTime::from_timestamp(time.secs(), time.subsec_nanos()))
        .unwrap_or(DateTime::UNIX_EPOCH)
}

pub(crate) fn is_live(instance: &Instance) -> bool {
    !matches!(
        instance.state().and_then(|state| state.name()),
        Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated) | None
    )
}

pub(crate) fn listed(instance: &Instance) -> Option<ListedInstance> {
    Some(ListedInstance {
        instance: instance.instance_id()?.to_owned(),
        member: tag_value(instance, TAG_MEMBER).and_then(|member| Uuid::parse_str(member).ok()),
        launched_at: launched_at(instance),
        zone: instance.placement().and_then(|placement| placement.availability_zone()).map(str::to_owned),
    })
}

pub(crate) async fn describe_instance(
    ec2: &aws_sdk_ec2::Client,
    instance: &str,
) -> Result<InstanceState, ProviderError> {
    let instances = describe_ids(ec2, &[instance.to_owned()]).await?;
    Ok(if instances.iter().any(is_live) { InstanceState::Running } else { InstanceState::Gone })
}

pub(crate) async fn terminate_instance(ec2: &aws_sdk_ec2::Client, instance: &str) -> Result<(), ProviderError> {
    match ec2.terminate_instances().instance_ids(instance).send().await {
        Ok(_) => {
            tracing::info!(%instance, "terminated instance");
            Ok(())
        }
        Err(error) => {
            let error = from_sdk("TerminateInstances", &error);
            if has_code(&error, &["InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"]) {
                Ok(())
            } else {
                Err(error)
            }
        }
    }
}
