//! `aws-asg`: the instances of an Auto Scaling group whose desired capacity Hodei owns.
//!
//! A member's `provision` takes one of the group's instances: an unclaimed one if the group
//! has one (its minimum, or one a provision that timed out left behind), else one the group
//! launches after Hodei raises its desired capacity by one. It claims the instance by
//! tagging it with `hodei:member` and protects it from scale-in. `terminate` ends the
//! instance and lowers the desired capacity by one.
//!
//! Claims are serialized per group inside the provider (a mutex per group, held from
//! reading the group to protecting the instance, and by `terminate` while it changes the
//! group's sizes), so two provisions of one control plane never take the same instance;
//! the claim's tags are read back after tagging, so one taken by another writer is left
//! to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_autoscaling::types::AutoScalingGroup;
use aws_sdk_ec2::types::{Instance, Tag};
use hodei_core::pool::{PoolSpec, ProviderLimits};
use hodei_provider::{BoxFuture, InstanceState, ListedInstance, Provider, ProviderError, ProvisionRequest, SpotQuote};
use tokio::time::Instant;
use uuid::Uuid;

use crate::ec2::{describe_ids, describe_instance, generous_limits, is_live, launched_at, listed, tag_value};
use crate::errors::{from_sdk, has_code};
use crate::{AwsClients, AwsSettings, TAG_DEPLOYMENT, TAG_MEMBER, TAG_POOL};

/// How long a provision waits for the group's new instance, by default.
pub const DEFAULT_CLAIM_TIMEOUT: Duration = Duration::from_secs(180);

/// Provisions members from an Auto Scaling group.
#[derive(Debug, Clone)]
pub struct AsgProvider {
    clients: AwsClients,
    settings: AwsSettings,
    claim_timeout: Duration,
    poll_interval: Duration,
    groups: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl AsgProvider {
    pub fn new(clients: AwsClients, settings: AwsSettings) -> Self {
        Self {
            clients,
            settings,
            claim_timeout: DEFAULT_CLAIM_TIMEOUT,
            poll_interval: Duration::from_secs(2),
            groups: Arc::default(),
        }
    }

    /// Connects with [`AwsClients::connect`].
    pub async fn connect(settings: AwsSettings) -> Self {
        Self::new(AwsClients::connect(&settings).await, settings)
    }

    /// How long a provision waits for the group's instance, and how often it looks.
    pub fn with_claim_timing(mut self, timeout: Duration, poll_interval: Duration) -> Self {
        self.claim_timeout = timeout;
        self.poll_interval = poll_interval;
        self
    }

    pub fn clients(&self) -> &AwsClients {
        &self.clients
    }

    fn group_lock(&self, group: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut groups = self.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        groups.entry(group.to_owned()).or_default().clone()
    }

    async fn group(&self, name: &str) -> Result<Option<AutoScalingGroup>, ProviderError> {
        let output = self
            .clients
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|error| from_sdk("DescribeAutoScalingGroups", &error))?;
        Ok(output.auto_scaling_groups().first().cloned())
    }

    async fn existing_group(&self, name: &str) -> Result<AutoScalingGroup, ProviderError> {
        self.group(name).await?.ok_or_else(|| {
            ProviderError::coded("AutoScalingGroupNotFound", format!("no Auto Scaling group {name}"), false)
        })
    }

    /// The group's live instances, as EC2 describes them, oldest first.
    async fn group_instances(&self, group: &AutoScalingGroup) -> Result<Vec<Instance>, ProviderError> {
        let ids: Vec<String> = group
            .instances()
            .iter()
            .filter(|instance| {
                !instance
                    .lifecycle_state()
                    .is_some_and(|state| state.as_str().starts_with("Terminat") || state.as_str().starts_with("Detach"))
            })
            .filter_map(|instance| instance.instance_id().map(str::to_owned))
            .collect();
        let mut instances: Vec<Instance> =
            describe_ids(&self.clients.ec2, &ids).await?.into_iter().filter(is_live).collect();
        instances
            .sort_by(|a, b| launched_at(a).cmp(&launched_at(b)).then_with(|| a.instance_id().cmp(&b.instance_id())));
        Ok(instances)
    }

    async fn provision_member(&self, request: &ProvisionRequest) -> Result<String, ProviderError> {
        let name = group_name(&request.pool)?;
        let lock = self.group_lock(name);
        let _serialized = lock.lock().await;
        let member = request.member.to_string();
        let group = self.existing_group(name).await?;
        let instances = self.group_instances(&group).await?;
        // A retried provision of this member: it already has its instance.
        if let Some(instance) =
            instances.iter().find(|instance| tag_value(instance, TAG_MEMBER) == Some(member.as_str()))
        {
            let id = instance.instance_id().unwrap_or_default().to_owned();
            self.protect(name, &id).await?;
            return Ok(id);
        }
        if !instances.iter().any(|instance| tag_value(instance, TAG_MEMBER).is_none()) {
            let desired = group.desired_capacity().unwrap_or(0);
            let max = group.max_size().unwrap_or(0);
            if desired >= max {
                return Err(ProviderError::coded(
                    "AutoScalingGroupAtMaxSize",
                    format!(
                        "Auto Scaling group {name} is at its MaxSize ({max}): raise it to grow pool {}",
                        request.pool.id
                    ),
                    false,
                ));
            }
            self.clients
                .autoscaling
                .set_desired_capacity()
                .auto_scaling_group_name(name)
                .desired_capacity(desired + 1)
                .honor_cooldown(false)
                .send()
                .await
                .map_err(|error| from_sdk("SetDesiredCapacity", &error))?;
            tracing::info!(group = name, desired = desired + 1, member = %request.member, "raised desired capacity");
        }
        let deadline = Instant::now() + self.claim_timeout;
        loop {
            let group = self.existing_group(name).await?;
            for instance in self.group_instances(&group).await? {
                if tag_value(&instance, TAG_MEMBER).is_some() {
                    continue;
                }
                let Some(id) = instance.instance_id() else { continue };
                if self.claim(&request.pool, id, &member).await? {
                    self.protect(name, id).await?;
                    tracing::info!(group = name, instance = id, member = %request.member, "claimed instance");
                    return Ok(id.to_owned());
                }
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::coded(
                    "ClaimTimeout",
                    format!("Auto Scaling group {name} had no instance to claim after {:?}", self.claim_timeout),
                    true,
                ));
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// Tags the instance as the member's; whether the tag read back is still the member's.
    async fn claim(&self, pool: &PoolSpec, instance: &str, member: &str) -> Result<bool, ProviderError> {
        let tags = crate::instance_tags(&self.settings.deployment, pool, &[(TAG_MEMBER, member.to_owned())]);
        self.clients
            .ec2
            .create_tags()
            .resources(instance)
            .set_tags(Some(tags.iter().map(|(key, value)| Tag::builder().key(key).value(value).build()).collect()))
            .send()
            .await
            .map_err(|error| from_sdk("CreateTags", &error))?;
        let read_back = describe_ids(&self.clients.ec2, &[instance.to_owned()]).await?;
        Ok(read_back.iter().any(|instance| tag_value(instance, TAG_MEMBER) == Some(member)))
    }

    async fn protect(&self, group: &str, instance: &str) -> Result<(), ProviderError> {
        self.clients
            .autoscaling
            .set_instance_protection()
            .auto_scaling_group_name(group)
            .instance_ids(instance)
            .protected_from_scale_in(true)
            .send()
            .await
            .map_err(|error| from_sdk("SetInstanceProtection", &error))?;
        Ok(())
    }

    async fn terminate_member(&self, instance: &str) -> Result<(), ProviderError> {
        let found = self
            .clients
            .autoscaling
            .describe_auto_scaling_instances()
            .instance_ids(instance)
            .send()
            .await
            .map_err(|error| from_sdk("DescribeAutoScalingInstances", &error))?;
        let Some(name) = found
            .auto_scaling_instances()
            .first()
            .and_then(|details| details.auto_scaling_group_name())
            .map(str::to_owned)
        else {
            // Not (or no longer) in a group: ended like any instance.
            return crate::ec2::terminate_instance(&self.clients.ec2, instance).await;
        };
        let lock = self.group_lock(&name);
        let _serialized = lock.lock().await;
        let group = self.existing_group(&name).await?;
        let desired = group.desired_capacity().unwrap_or(0);
        let min = group.min_size().unwrap_or(0);
        // AWS refuses to decrement the desired capacity below the group's MinSize (and
        // without the decrement it would launch a replacement no member asked for). Hodei
        // owns the group's size, so the minimum follows it down: MinSize is lowered to the
        // new desired capacity first.
        if desired >= 1 && desired - 1 < min {
            self.clients
                .autoscaling
                .update_auto_scaling_group()
                .auto_scaling_group_name(&name)
                .min_size(desired - 1)
                .send()
                .await
                .map_err(|error| from_sdk("UpdateAutoScalingGroup", &error))?;
            tracing::info!(group = %name, min_size = desired - 1, "lowered MinSize to end a member's instance");
        }
        match self
            .clients
            .autoscaling
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance)
            .should_decrement_desired_capacity(true)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(group = %name, %instance, "terminated instance, desired capacity decremented");
                Ok(())
            }
            Err(error) => {
                let error = from_sdk("TerminateInstanceInAutoScalingGroup", &error);
                // The instance left the group meanwhile (ended, or another call ended it).
                if has_code(&error, &["ValidationError"]) && error.message.contains("not found") {
                    crate::ec2::terminate_instance(&self.clients.ec2, instance).await
                } else {
                    Err(error)
                }
            }
        }
    }

    async fn validate_pool(&self, pool: &PoolSpec) -> Vec<(String, String)> {
        let mut errors = crate::common_errors(&self.clients.region, pool);
        let field = "cloud.auto_scaling_group".to_owned();
        match pool.cloud.as_ref().and_then(|cloud| cloud.auto_scaling_group.as_deref()) {
            None => errors.push((field, "aws-asg needs the Auto Scaling group's name".to_owned())),
            Some(name) => match self.group(name).await {
                Ok(Some(_)) => {}
                Ok(None) => errors.push((field, format!("no Auto Scaling group {name} in {}", self.clients.region))),
                Err(error) => errors.push((field, format!("could not check: {error}"))),
            },
        }
        errors
    }

    /// The group's claimed instances. Unclaimed ones are the group's spare capacity (its
    /// minimum, or an instance a provision is about to claim), not any member's: they are
    /// left out, so reconciliation does not end them.
    async fn list_pool(&self, pool: &PoolSpec) -> Result<Vec<ListedInstance>, ProviderError> {
        let name = group_name(pool)?;
        let Some(group) = self.group(name).await? else { return Ok(Vec::new()) };
        let instances = self.group_instances(&group).await?;
        Ok(instances
            .iter()
            .filter(|instance| {
                tag_value(instance, TAG_MEMBER).is_some_and(|member| Uuid::parse_str(member).is_ok())
                    && tag_value(instance, TAG_DEPLOYMENT)
                        .is_none_or(|deployment| deployment == self.settings.deployment)
                    && tag_value(instance, TAG_POOL).is_none_or(|id| id == pool.id)
            })
            .filter_map(listed)
            .collect())
    }
}

fn group_name(pool: &PoolSpec) -> Result<&str, ProviderError> {
    pool.cloud.as_ref().and_then(|cloud| cloud.auto_scaling_group.as_deref()).ok_or_else(|| {
        ProviderError::coded(
            "InvalidPoolSpec",
            format!("pool {}: aws-asg needs cloud.auto_scaling_group", pool.id),
            false,
        )
    })
}

impl Provider for AsgProvider {
    fn limits(&self) -> ProviderLimits {
        generous_limits()
    }

    fn provision<'a>(&'a self, request: &'a ProvisionRequest) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(self.provision_member(request))
    }

    fn terminate<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.terminate_member(instance))
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
