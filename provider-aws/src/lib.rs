//! Hodei's AWS providers.
//!
//! - [`Ec2Provider`] (`aws-ec2`): one EC2 instance per pool member, launched with
//!   `RunInstances` and Hodei's tags; its handle is the instance id.
//! - [`AsgProvider`] (`aws-asg`): an Auto Scaling group whose desired capacity Hodei owns;
//!   each member claims one of the group's instances by tagging it.
//!
//! Both boot their instances with the script of [`render_user_data`], and quote spot
//! prices for a pool's instance types with `DescribeSpotPriceHistory` ([`spot`]). Every AWS error
//! becomes a [`ProviderError`] with the AWS error code ([`errors`]). The `testing` feature
//! adds a moto server, a fault proxy and the machine harness that runs real workers for
//! moto's instances.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use serde::{Deserialize, Serialize};

pub mod asg;
pub mod ec2;
pub mod errors;
#[cfg(feature = "testing")]
pub mod machine;
pub mod spot;
#[cfg(feature = "testing")]
pub mod testing;
pub mod user_data;

pub use asg::AsgProvider;
pub use ec2::Ec2Provider;
pub use hodei_provider::{InstanceState, ListedInstance, Provider, ProviderError, ProvisionRequest, SpotQuote};
pub use user_data::{parse_worker_env, render_user_data, worker_args, worker_argv, InstanceIdSource};

/// The tag naming the Hodei installation an instance belongs to.
pub const TAG_DEPLOYMENT: &str = "hodei:deployment";
/// The tag naming the instance's pool.
pub const TAG_POOL: &str = "hodei:pool";
/// The tag naming the member the instance runs for (for `aws-asg`, the claim).
pub const TAG_MEMBER: &str = "hodei:member";
/// `aws-ec2`: the launch's idempotency token (`{member}-{attempt}`), also the
/// `ClientToken` of `RunInstances`.
pub const TAG_CLIENT_TOKEN: &str = "hodei:client-token";

/// The `providers.aws` settings of a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// The region (default `us-east-1`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Another endpoint than AWS's (moto, an AWS-compatible cloud).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The `hodei:deployment` tag's value: which Hodei installation owns an instance.
    pub deployment: String,
    /// The API URL(s) workers talk to, comma-separated (`HODEI_API_URL`).
    pub api_urls: String,
    /// The SSM parameter (a `SecureString`) an instance reads its registration token from
    /// at boot.
    #[serde(default)]
    pub registration_token_parameter: Option<String>,
    /// Where the worker binary is on the instances' image.
    #[serde(default = "default_worker_binary")]
    pub worker_binary: String,
    /// The workers' `--drain-timeout-seconds`.
    #[serde(default = "default_drain_timeout_seconds")]
    pub drain_timeout_seconds: u32,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_worker_binary() -> String {
    "/usr/local/bin/hodei-worker".to_owned()
}

fn default_drain_timeout_seconds() -> u32 {
    300
}

/// The SDK clients the providers use, for one region.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub ec2: aws_sdk_ec2::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub region: String,
}

impl AwsClients {
    /// Clients from the standard credential chain, for the settings' region and endpoint,
    /// retrying throttling and transient errors up to 5 attempts with exponential backoff.
    pub async fn connect(settings: &AwsSettings) -> Self {
        Self::connect_with_retry(settings, RetryConfig::standard().with_max_attempts(5)).await
    }

    /// Like [`AwsClients::connect`], with another retry policy (tests shorten the backoff).
    pub async fn connect_with_retry(settings: &AwsSettings, retry: RetryConfig) -> Self {
        let config = sdk_config(settings, retry).await;
        Self::from_sdk_config(&config, &settings.region)
    }

    pub fn from_sdk_config(config: &SdkConfig, region: &str) -> Self {
        Self {
            ec2: aws_sdk_ec2::Client::new(config),
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            region: region.to_owned(),
        }
    }
}

/// The SDK configuration: the standard credential chain, an HTTPS client on rustls.
pub async fn sdk_config(settings: &AwsSettings, retry: RetryConfig) -> SdkConfig {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider as TlsProvider};
    let http_client =
        aws_smithy_http_client::Builder::new().tls_provider(TlsProvider::Rustls(CryptoMode::Ring)).build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .retry_config(retry)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .http_client(http_client);
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint.clone());
    }
    loader.load().await
}

/// Hodei's tags for an instance of the pool, with the pool template's own tags (which
/// cannot override Hodei's).
pub(crate) fn instance_tags(
    deployment: &str,
    pool: &hodei_core::pool::PoolSpec,
    extra: &[(&str, String)],
) -> BTreeMap<String, String> {
    let mut tags = pool.template.tags.clone();
    tags.insert(TAG_DEPLOYMENT.to_owned(), deployment.to_owned());
    tags.insert(TAG_POOL.to_owned(), pool.id.clone());
    for (key, value) in extra {
        tags.insert((*key).to_owned(), value.clone());
    }
    tags
}

/// The validation errors every AWS pool can have: a region other than the provider's
/// (handles are bare instance ids, so one provider serves one region), labels that cannot
/// go on the worker's command line.
pub(crate) fn common_errors(region: &str, pool: &hodei_core::pool::PoolSpec) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    if let Some(other) = pool.cloud.as_ref().and_then(|cloud| cloud.region.as_deref()) {
        if other != region {
            errors.push((
                "cloud.region".to_owned(),
                format!("this deployment's AWS provider runs in {region}, not {other}"),
            ));
        }
    }
    for (key, value) in &pool.template.labels {
        if !user_data::label_is_safe(key) || !user_data::label_is_safe(value) {
            errors.push((
                format!("template.labels.{key}"),
                "an AWS worker's labels may contain only letters, digits and _ . - / : @ +".to_owned(),
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_have_defaults_and_refuse_unknown_keys() {
        let settings: AwsSettings =
            serde_json::from_value(serde_json::json!({"deployment": "prod", "api_urls": "https://hodei:8443"}))
                .expect("settings");
        assert_eq!(settings.region, "us-east-1");
        assert_eq!(settings.endpoint_url, None);
        assert_eq!(settings.registration_token_parameter, None);
        assert_eq!(settings.worker_binary, "/usr/local/bin/hodei-worker");
        assert_eq!(settings.drain_timeout_seconds, 300);
        let unknown = serde_json::from_value::<AwsSettings>(
            serde_json::json!({"deployment": "prod", "api_urls": "x", "never_registered_seconds": 60}),
        );
        assert!(unknown.is_err());
    }
}
