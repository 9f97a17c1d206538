//! Pools: what a group of workers should look like (size, worker template, matching
//! strategy, health and provisioning settings), its validation, and the policies the
//! pool's plan (`pool_plan`) builds on: provisioning backoff, which members to drain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::names::check_resource_name;
use crate::placement::Strategy;
use crate::ValidationErrors;

/// Static pools keep a fixed size; dynamic pools scale with demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolKindName {
    #[default]
    Static,
    Dynamic,
}

impl PoolKindName {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKindName::Static => "static",
            PoolKindName::Dynamic => "dynamic",
        }
    }
}

/// A pool as declared in the configuration file or through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// 1–63 lowercase letters, digits, `-` and `_`.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub id: String,
    #[serde(default)]
    pub kind: PoolKindName,
    /// The provider that provisions its workers (`local`).
    #[serde(default = "default_provider")]
    #[schema(value_type = ProviderName)]
    pub provider: String,
    /// How many workers a static pool keeps (at most the deployment's `max_pool_size`).
    /// Dynamic pools give `min_size` and `max_size` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub size: Option<u32>,
    /// Dynamic pools: the fewest workers kept (0 allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1000)]
    pub min_size: Option<u32>,
    /// Dynamic pools: the most workers it may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_size: Option<u32>,
    /// How jobs are matched to this pool's workers: `best_fit` (default), `first_fit`, `worst_fit`.
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub template: WorkerTemplate,
    #[serde(default)]
    pub health: HealthSettings,
    #[serde(default)]
    pub provisioning: ProvisioningSettings,
    /// Dynamic pools: how the autoscaler sizes the pool (policies, triggers, schedules,
    /// cooldowns, scale-in rules).
    #[serde(default)]
    pub scaling: crate::autoscale::ScalingSpec,
    /// Cloud providers (`aws-ec2`, `aws-asg`): what to launch and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudSettings>,
}

impl PoolSpec {
    /// The fewest workers the pool keeps: a static pool's size, a dynamic pool's minimum.
    pub fn min_workers(&self) -> u32 {
        match self.kind {
            PoolKindName::Static => self.size.unwrap_or(0),
            PoolKindName::Dynamic => self.min_size.unwrap_or(0),
        }
    }

    /// How long a provisioning attempt may take until the worker registers: as set, else
    /// 120 s for `local` workers and 900 s for cloud instances (which boot an image).
    pub fn provisioning_timeout_seconds(&self) -> u32 {
        self.provisioning.timeout_seconds.unwrap_or(match self.provider.as_str() {
            "local" => 120,
            _ => 900,
        })
    }

    /// The field that bounds the pool's size: `size` or `max_size`.
    pub fn size_field(&self) -> &'static str {
        match self.kind {
            PoolKindName::Static => "size",
            PoolKindName::Dynamic => "max_size",
        }
    }

    /// The most workers the pool may have.
    pub fn max_workers(&self) -> u32 {
        match self.kind {
            PoolKindName::Static => self.size.unwrap_or(0),
            PoolKindName::Dynamic => self.max_size.unwrap_or(0),
        }
    }
}

/// What a cloud provider launches for each member, and where.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudSettings {
    /// The region (default: the provider's).
    pub region: Option<String>,
    /// `aws-ec2`: a launch template id (`lt-…`) or name; its version `$Default` unless
    /// `launch_template_version` says otherwise.
    pub launch_template: Option<String>,
    pub launch_template_version: Option<String>,
    /// `aws-ec2`: instance types in order of preference; the next is tried when one has
    /// no capacity. The first one's shape is what the scheduler plans with.
    #[serde(default)]
    pub instance_types: Vec<String>,
    /// `aws-ec2`: subnets to launch into, tried in order when a zone has no capacity.
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// `aws-ec2`: an instance profile name or ARN for the instances.
    pub instance_profile: Option<String>,
    /// `on_demand` (default) or `spot`.
    #[serde(default)]
    pub capacity_type: CapacityType,
    /// `aws-asg`: the Auto Scaling group whose desired capacity Hodei owns.
    pub auto_scaling_group: Option<String>,
}

/// How cloud instances are bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CapacityType {
    #[default]
    OnDemand,
    Spot,
}

/// The providers this build has (a deployment may enable fewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderName {
    /// `hodei-worker` processes on the control-plane host (`providers.local.enabled`).
    Local,
    /// EC2 instances launched one per member (`RunInstances`), `providers.aws`.
    #[serde(rename = "aws-ec2")]
    AwsEc2,
    /// Instances of an Auto Scaling group whose desired capacity Hodei owns, `providers.aws`.
    #[serde(rename = "aws-asg")]
    AwsAsg,
}

fn default_provider() -> String {
    "local".to_owned()
}

/// What each worker of the pool looks like.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerTemplate {
    /// CPU the worker offers, in millicores (default: what the provider's machine has).
    #[schema(minimum = 1, maximum = 1000000)]
    pub cpu_millis: Option<u32>,
    /// Memory the worker offers, in MiB (default: what the provider's machine has).
    #[schema(minimum = 1, maximum = 4194304)]
    pub memory_mib: Option<u32>,
    /// Jobs each worker runs at once (default 1).
    #[schema(minimum = 1, maximum = 256)]
    pub slots: Option<u32>,
    /// Labels jobs can require.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Provider tags (cloud resource tags).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Environment of the worker process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Machine image (cloud providers).
    pub image: Option<String>,
}

impl WorkerTemplate {
    pub fn slots(&self) -> u32 {
        self.slots.unwrap_or(1)
    }
}

/// When a worker counts as unhealthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// A command the worker runs before each heartbeat; a non-zero exit is a failed check.
    #[schema(min_items = 1)]
    pub command: Option<Vec<String>>,
    /// Consecutive failed checks (or missed heartbeats) before the worker is replaced.
    #[schema(minimum = 1, maximum = 100)]
    pub failure_threshold: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self { command: None, failure_threshold: 3 }
    }
}

/// How workers are provisioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisioningSettings {
    /// `parallel` (up to `concurrency` at once) or `sequential`.
    pub mode: ProvisioningMode,
    #[schema(minimum = 1, maximum = 100)]
    pub concurrency: u32,
    /// How long one attempt may take, from the provider's call until the worker registers
    /// (default 120 s for `local`, 900 s for cloud providers, whose instances boot); an
    /// instance that has not registered by then is terminated and the attempt retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_seconds: Option<u32>,
    /// Attempts per worker before it counts as failed.
    #[schema(minimum = 1, maximum = 20)]
    pub attempts: u32,
    /// `retry`: keep trying failed workers (with backoff); `fail_fast`: the pool fails.
    pub on_failure: FailureHandling,
}

impl Default for ProvisioningSettings {
    fn default() -> Self {
        Self {
            mode: ProvisioningMode::Parallel,
            concurrency: 5,
            timeout_seconds: None,
            attempts: 3,
            on_failure: FailureHandling::Retry,
        }
    }
}

impl ProvisioningSettings {
    /// Provisioning attempts in flight at once.
    pub fn parallelism(&self) -> usize {
        match self.mode {
            ProvisioningMode::Parallel => self.concurrency.max(1) as usize,
            ProvisioningMode::Sequential => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProvisioningMode {
    #[default]
    Parallel,
    Sequential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureHandling {
    #[default]
    Retry,
    #[serde(alias = "fail-fast")]
    FailFast,
}

/// What a provider can offer, for validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderLimits {
    pub name: String,
    /// The most memory one worker can have (the largest instance type, or this machine).
    pub max_memory_mib: u32,
    pub max_cpu_millis: u32,
}

/// Checks one pool against the known providers.
pub fn validate_pool(spec: &PoolSpec, providers: &[ProviderLimits]) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::new();
    if let Err(message) = check_resource_name(&spec.id) {
        errors.add("id", message);
    }
    match spec.kind {
        PoolKindName::Static => {
            match spec.size {
                None => errors.add("size", "a static pool needs size"),
                Some(0) => errors.add("size", "must be at least 1"),
                Some(size) if size > 1000 => errors.add("size", format!("must be at most 1000, got {size}")),
                Some(_) => {}
            }
            for (field, given) in [("min_size", spec.min_size), ("max_size", spec.max_size)] {
                if given.is_some() {
                    errors.add(field, "only dynamic pools have min_size and max_size; a static pool has size");
                }
            }
        }
        PoolKindName::Dynamic => {
            if spec.size.is_some() {
                errors.add("size", "a dynamic pool has min_size and max_size, not size");
            }
            crate::autoscale::validate(spec.min_size, spec.max_size, &spec.scaling, &mut errors);
        }
    }
    let cloud_provider = matches!(spec.provider.as_str(), "aws-ec2" | "aws-asg");
    match (&spec.cloud, cloud_provider) {
        (Some(_), false) => errors.add("cloud", format!("provider {:?} takes no cloud settings", spec.provider)),
        (None, true) => errors.add("cloud", format!("provider {:?} needs cloud settings", spec.provider)),
        (Some(cloud), true) => validate_cloud(&spec.provider, cloud, &mut errors),
        (None, false) => {}
    }
    match providers.iter().find(|p| p.name == spec.provider) {
        None => {
            let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
            errors.add("provider", format!("unknown provider {:?}; known: {}", spec.provider, known.join(", ")));
        }
        Some(limits) => {
            if let Some(memory) = spec.template.memory_mib {
                if memory > limits.max_memory_mib {
                    errors.add(
                        "template.memory_mib",
                        format!(
                            "{memory} MiB is more than provider {} allows for one worker ({} MiB)",
                            limits.name, limits.max_memory_mib
                        ),
                    );
                }
            }
            if let Some(cpu) = spec.template.cpu_millis {
                if cpu > limits.max_cpu_millis {
                    errors.add(
                        "template.cpu_millis",
                        format!(
                            "{cpu} millicores is more than provider {} allows for one worker ({})",
                            limits.name, limits.max_cpu_millis
                        ),
                    );
                }
            }
        }
    }
    if let Some(cpu) = spec.template.cpu_millis.filter(|cpu| !(1..=1_000_000).contains(cpu)) {
        errors.add("template.cpu_millis", format!("must be between 1 and 1000000, got {cpu}"));
    }
    if let Some(memory) = spec.template.memory_mib.filter(|memory| !(1..=4_194_304).contains(memory)) {
        errors.add("template.memory_mib", format!("must be between 1 and 4194304, got {memory}"));
    }
    if !(1..=256).contains(&spec.template.slots()) {
        errors.add("template.slots", format!("must be between 1 and 256, got {}", spec.template.slots()));
    }
    if spec.health.command.as_ref().is_some_and(Vec::is_empty) {
        errors.add("health.command", "must not be empty");
    }
    if !(1..=100).contains(&spec.health.failure_threshold) {
        errors.add("health.failure_threshold", "must be between 1 and 100");
    }
    let provisioning = &spec.provisioning;
    if !(1..=100).contains(&provisioning.concurrency) {
        errors.add("provisioning.concurrency", "must be between 1 and 100");
    }
    if provisioning.timeout_seconds.is_some_and(|seconds| !(1..=3600).contains(&seconds)) {
        errors.add("provisioning.timeout_seconds", "must be between 1 and 3600");
    }
    if !(1..=20).contains(&provisioning.attempts) {
        errors.add("provisioning.attempts", "must be between 1 and 20");
    }
    errors.into_result(())
}

fn validate_cloud(provider: &str, cloud: &CloudSettings, errors: &mut ValidationErrors) {
    let aws_id = |text: &str| {
        !text.is_empty()
            && text.len() <= 255
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:$".contains(&b))
    };
    if provider == "aws-ec2" {
        if cloud.launch_template.is_none() && cloud.instance_types.is_empty() {
            errors.add("cloud", "aws-ec2 needs a launch_template or instance_types");
        }
        if cloud.auto_scaling_group.is_some() {
            errors.add("cloud.auto_scaling_group", "only aws-asg pools have an Auto Scaling group");
        }
    } else if cloud.auto_scaling_group.is_none() {
        errors.add("cloud.auto_scaling_group", "aws-asg needs the Auto Scaling group's name");
    }
    if cloud.instance_types.len() > 20 {
        errors.add("cloud.instance_types", "at most 20");
    }
    for (field, values) in [
        ("instance_types", &cloud.instance_types),
        ("subnets", &cloud.subnets),
        ("security_groups", &cloud.security_groups),
    ] {
        for (index, value) in values.iter().enumerate() {
            if !aws_id(value) {
                errors.add(format!("cloud.{field}[{index}]"), format!("{value:?} is not a valid identifier"));
            }
        }
    }
    for (field, value) in [
        ("region", &cloud.region),
        ("launch_template", &cloud.launch_template),
        ("launch_template_version", &cloud.launch_template_version),
        ("instance_profile", &cloud.instance_profile),
        ("auto_scaling_group", &cloud.auto_scaling_group),
    ] {
        if let Some(value) = value.as_deref().filter(|value| !aws_id(value)) {
            errors.add(format!("cloud.{field}"), format!("{value:?} is not a valid identifier"));
        }
    }
}

/// Checks a set of pools: each one, and that no id repeats.
pub fn validate_pools(specs: &[PoolSpec], providers: &[ProviderLimits]) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::new();
    let mut seen = std::collections::BTreeSet::new();
    for (index, spec) in specs.iter().enumerate() {
        if !seen.insert(spec.id.as_str()) {
            errors.add(format!("pools[{index}].id"), format!("duplicate pool id {:?}", spec.id));
        }
        if let Err(pool_errors) = validate_pool(spec, providers) {
            errors.merge_prefixed(&format!("pools[{index}]."), pool_errors);
        }
    }
    errors.into_result(())
}

/// Delay before retrying a failed provisioning attempt: 1 s, 2 s, 4 s … capped at 30 s.
pub fn provisioning_backoff_seconds(attempts_so_far: u32) -> u32 {
    1u32.checked_shl(attempts_so_far.saturating_sub(1)).unwrap_or(u32::MAX).min(30)
}

/// A member as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView<M> {
    pub id: M,
    /// Provisioning or ready, and not on its way out.
    pub live: bool,
    /// Runs jobs right now.
    pub busy: bool,
}

/// Which live members to drain to shrink a pool to `size`: idle ones first (newest
/// first), busy ones only when the idle ones are not enough.
pub fn members_to_drain<M: Clone>(members: &[MemberView<M>], size: usize) -> Vec<M> {
    let live: Vec<&MemberView<M>> = members.iter().filter(|m| m.live).collect();
    let excess = live.len().saturating_sub(size);
    let mut order: Vec<&MemberView<M>> = live.iter().rev().copied().collect();
    order.sort_by_key(|m| m.busy);
    order.into_iter().take(excess).map(|m| m.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Vec<ProviderLimits> {
        vec![ProviderLimits { name: "local".into(), max_memory_mib: 4096, max_cpu_millis: 8000 }]
    }

    fn spec(id: &str, size: u32) -> PoolSpec {
        serde_json::from_value(serde_json::json!({"id": id, "size": size})).expect("spec")
    }

    #[test]
    fn defaults_follow_the_documented_values() {
        let pool = spec("local", 2);
        assert_eq!(pool.provider, "local");
        assert_eq!(pool.kind, PoolKindName::Static);
        assert_eq!(pool.strategy, Strategy::BestFit);
        assert_eq!(pool.provisioning.concurrency, 5);
        assert_eq!(pool.provisioning_timeout_seconds(), 120);
        assert_eq!(pool.provisioning.attempts, 3);
        assert_eq!(pool.health.failure_threshold, 3);
        assert!(validate_pool(&pool, &local()).is_ok());
    }

    #[test]
    fn invalid_pools_are_named_precisely() {
        let mut pool = spec("big", 0);
        pool.provider = "nowhere".into();
        let message = validate_pool(&pool, &local()).expect_err("invalid").to_string();
        assert!(message.contains("size: must be at least 1"), "{message}");
        assert!(message.contains("unknown provider \"nowhere\""), "{message}");

        let mut pool = spec("big", 1);
        pool.template.memory_mib = Some(8192);
        let message = validate_pool(&pool, &local()).expect_err("invalid").to_string();
        assert!(message.contains("template.memory_mib: 8192 MiB is more than provider local allows"), "{message}");

        let message = validate_pools(&[spec("a", 1), spec("a", 2)], &local()).expect_err("dup").to_string();
        assert!(message.contains("pools[1].id: duplicate pool id \"a\""), "{message}");
    }

    #[test]
    fn hyphenated_names_are_accepted_for_settings() {
        let pool: PoolSpec = serde_json::from_value(serde_json::json!({
            "id": "p", "size": 1, "provisioning": {"on_failure": "fail-fast", "mode": "sequential"}
        }))
        .expect("spec");
        assert_eq!(pool.provisioning.on_failure, FailureHandling::FailFast);
        assert_eq!(pool.provisioning.parallelism(), 1);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u32> = (1..=8).map(provisioning_backoff_seconds).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn shrinking_drains_idle_members_first() {
        let member = |id: u32, busy: bool| MemberView { id, live: true, busy };
        let members = vec![member(1, true), member(2, false), member(3, true), member(4, false), member(5, false)];
        assert_eq!(members_to_drain(&members, 3), vec![5, 4]);
        assert_eq!(members_to_drain(&members, 1), vec![5, 4, 2, 3]);
        assert!(members_to_drain(&members, 5).is_empty());
        let gone = MemberView { id: 6, live: false, busy: false };
        assert!(members_to_drain(&[gone], 0).is_empty());
    }
}
