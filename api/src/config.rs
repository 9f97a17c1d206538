//! The control plane's one typed configuration: read once from a YAML file (`--config` or
//! `HODEI_CONFIG`), then overridden by `HODEI_*` environment variables, then validated
//! with messages that name the bad field. Nothing else in the crate reads the environment
//! for settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hodei_core::pool::{validate_pools, PoolSpec};
use serde::Deserialize;

/// A value that must never appear in logs or debug output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `postgres://…` URL of the database. Required by `serve` and `migrate`; `dev` starts
    /// an embedded cluster when it is absent.
    pub database_url: Option<Secret>,
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Connections in this process's pool.
    pub database_max_connections: u32,
    /// An exact string accepted as an admin key (at least 32 characters), for automation.
    pub bootstrap_admin_key: Option<Secret>,
    /// Tracing filter, e.g. `info` or `hodei_api=debug,info`.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Where `hodei dev` keeps its embedded Postgres cluster and profile.
    pub dev_data_dir: PathBuf,
    /// The token worker agents present to register (at least 32 characters). Without it,
    /// registration is closed.
    pub worker_registration_token: Option<Secret>,
    /// How often workers are told to heartbeat, in seconds.
    pub worker_heartbeat_seconds: u32,
    /// How long an assignment holds without a heartbeat before the job is requeued, and a
    /// silent worker is marked gone, in seconds.
    pub worker_lease_seconds: u32,
    /// How long a worker may hold an assignment without starting it before the job is
    /// given to another worker, in seconds.
    pub worker_assignment_timeout_seconds: u32,
    /// Pools of workers. Editing them in the file (or SIGHUP) applies the change without a
    /// restart.
    pub pools: Vec<PoolSpec>,
    /// The `hodei-worker` binary the `local` provider starts (default: next to `hodei`).
    pub local_worker_binary: Option<PathBuf>,
    /// The API URL(s) `local` workers talk to (default: this replica's listen address).
    pub local_worker_api_url: Option<String>,
    /// Where `local` workers' output goes, one file each (default: discarded).
    pub local_worker_log_dir: Option<PathBuf>,
    /// The CA `local` workers trust for an https:// API (their `--ca-file`).
    pub local_worker_ca_file: Option<PathBuf>,
    /// Where `local` workers watch for an interruption notice (their `--interruption-url`,
    /// `{instance_id}` standing for each one's member id; a test serves one to play a
    /// reclaimed machine).
    pub local_worker_interruption_url: Option<String>,
    /// When this replica stops (Ctrl-C on `hodei dev`), how long its `local` workers' jobs
    /// get to finish before they are interrupted and left to be retried.
    pub local_worker_drain_seconds: u32,
    /// Which providers this replica may use.
    pub providers: ProvidersConfig,
    /// The most pools a deployment may have (file and API together).
    pub max_pools: u32,
    /// The most workers one pool may ask for.
    pub max_pool_size: u32,
    /// Limits on what clients may hold open.
    pub http: HttpConfig,
    /// TLS for the API, for deployments without a load balancer that terminates it.
    pub tls: TlsConfig,
    /// Where `/metrics` is served.
    pub metrics: MetricsConfig,
    /// The instance ledger's prices and the cost roll-up.
    pub cost_tracking: CostTrackingConfig,
    /// Tenant quotas' defaults and burst sessions.
    pub multi_tenancy: MultiTenancyConfig,
    /// How long finished jobs, their logs and queue activity are kept.
    pub retention: RetentionConfig,
    /// The file this configuration was read from, for reloading.
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
    /// Pools to run when the configuration declares none (`hodei dev`'s local pool).
    #[serde(skip)]
    pub default_pools: Vec<PoolSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_max_connections: 16,
            bootstrap_admin_key: None,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            dev_data_dir: PathBuf::from(".hodei"),
            worker_registration_token: None,
            worker_heartbeat_seconds: 5,
            worker_lease_seconds: 30,
            worker_assignment_timeout_seconds: 60,
            pools: Vec::new(),
            local_worker_binary: None,
            local_worker_api_url: None,
            local_worker_log_dir: None,
            local_worker_ca_file: None,
            local_worker_interruption_url: None,
            local_worker_drain_seconds: 10,
            providers: ProvidersConfig::default(),
            max_pools: 100,
            max_pool_size: 1000,
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
            metrics: MetricsConfig::default(),
            cost_tracking: CostTrackingConfig::default(),
            multi_tenancy: MultiTenancyConfig::default(),
            retention: RetentionConfig::default(),
            source_file: None,
            default_pools: Vec::new(),
        }
    }
}

/// What a client may hold open: connections, and how long it may take to send a request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub max_connections: u32,
    pub header_read_timeout_seconds: u32,
    pub body_read_timeout_seconds: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let limits = crate::listener::ConnectionLimits::default();
        Self {
            max_connections: limits.max_connections as u32,
            header_read_timeout_seconds: limits.header_read_timeout.as_secs() as u32,
            body_read_timeout_seconds: limits.body_read_timeout.as_secs() as u32,
        }
    }
}

impl HttpConfig {
    pub fn limits(&self) -> crate::listener::ConnectionLimits {
        crate::listener::ConnectionLimits {
            max_connections: self.max_connections as usize,
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_seconds.into()),
            body_read_timeout: std::time::Duration::from_secs(self.body_read_timeout_seconds.into()),
        }
    }
}

/// A PEM certificate chain and its private key: both, or neither.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Cost tracking: instances and attempts are always recorded; this says whether and how
/// often their cost is rolled up, what it keeps, and the prices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostTrackingConfig {
    /// Whether the roll-up runs (`HODEI_COST_TRACKING_ENABLED`).
    pub enabled: bool,
    /// Keep each attempt's tenant in the roll-up (else tenant reports are empty).
    pub track_by_tenant: bool,
    /// Keep each attempt's job in the roll-up (else jobs show no cost).
    pub track_by_job: bool,
    /// How long the ledger and the roll-up are kept, in days (`HODEI_COST_RETENTION_DAYS`);
    /// also the longest range a cost report may ask for.
    pub retention_days: u32,
    /// How often the roll-up runs, in seconds (`HODEI_COST_ROLLUP_INTERVAL_SECONDS`).
    pub rollup_interval_seconds: u32,
    /// How often spot instances' prices are read from the spot market, in minutes
    /// (`HODEI_COST_SPOT_PRICE_REFRESH_MINUTES`).
    pub spot_price_refresh_minutes: u32,
    /// What an hour of a `local` worker costs (any shape), so `hodei dev` shows numbers;
    /// written at start as the `local` price unless `prices` names one.
    pub local_price_per_worker_hour: f64,
    /// How a share of an instance is weighed, by default from the instance's own price
    /// split: its cores at `cpu_price_per_core_hour` against its GiB at
    /// `memory_price_per_gib_hour` (OpenCost's default prices; only their ratio matters).
    pub cpu_price_per_core_hour: f64,
    pub memory_price_per_gib_hour: f64,
    /// Fixed weights for every instance instead (both or neither; they sum to 1).
    pub cpu_weight: Option<f64>,
    pub memory_weight: Option<f64>,
    /// The price list; when not empty it replaces the stored one at start (`PUT
    /// /api/v1/prices` replaces it until the next start).
    pub prices: Vec<hodei_core::cost::PriceSpec>,
    /// Cost reports by tenant carry each tenant's part of its pools' idle cost, split by
    /// what the tenants' attempts were charged (`HODEI_COST_SPREAD_IDLE_TO_TENANTS`).
    pub spread_idle_to_tenants: bool,
    /// When the cost recommendations speak up (`GET /api/v1/cost-optimization/recommendations`).
    pub recommendations: hodei_core::recommend::Thresholds,
}

impl Default for CostTrackingConfig {
    fn default() -> Self {
        let hodei_core::cost::Weighting::PriceSplit { per_core_hour, per_gib_hour } =
            hodei_core::cost::Weighting::default()
        else {
            unreachable!("the default weighting is the price split")
        };
        Self {
            enabled: true,
            track_by_tenant: true,
            track_by_job: true,
            retention_days: 90,
            rollup_interval_seconds: 3600,
            spot_price_refresh_minutes: 60,
            local_price_per_worker_hour: 0.05,
            cpu_price_per_core_hour: per_core_hour,
            memory_price_per_gib_hour: per_gib_hour,
            cpu_weight: None,
            memory_weight: None,
            prices: Vec::new(),
            spread_idle_to_tenants: false,
            recommendations: hodei_core::recommend::Thresholds::default(),
        }
    }
}

impl CostTrackingConfig {
    pub fn weighting(&self) -> hodei_core::cost::Weighting {
        match (self.cpu_weight, self.memory_weight) {
            (Some(cpu), Some(memory)) => hodei_core::cost::Weighting::Fixed(hodei_core::cost::Weights { cpu, memory }),
            _ => hodei_core::cost::Weighting::PriceSplit {
                per_core_hour: self.cpu_price_per_core_hour,
                per_gib_hour: self.memory_price_per_gib_hour,
            },
        }
    }

    fn problems(&self, problems: &mut Vec<String>) {
        if !(1..=3650).contains(&self.retention_days) {
            problems
                .push(format!("cost_tracking.retention_days: must be between 1 and 3650, got {}", self.retention_days));
        }
        if !(1..=86_400).contains(&self.rollup_interval_seconds) {
            problems.push(format!(
                "cost_tracking.rollup_interval_seconds: must be between 1 and 86400, got {}",
                self.rollup_interval_seconds
            ));
        }
        if !(1..=1440).contains(&self.spot_price_refresh_minutes) {
            problems.push(format!(
                "cost_tracking.spot_price_refresh_minutes: must be between 1 and 1440, got {}",
                self.spot_price_refresh_minutes
            ));
        }
        if !self.local_price_per_worker_hour.is_finite() || self.local_price_per_worker_hour < 0.0 {
            problems.push(format!(
                "cost_tracking.local_price_per_worker_hour: must be at least 0, got {}",
                self.local_price_per_worker_hour
            ));
        }
        match (self.cpu_weight, self.memory_weight) {
            (Some(cpu), Some(memory)) if !(hodei_core::cost::Weights { cpu, memory }).is_valid() => {
                problems.push(format!(
                    "cost_tracking.cpu_weight: with memory_weight, must be at least 0 and sum to 1, got {cpu} and {memory}"
                ));
            }
            (Some(_), None) | (None, Some(_)) => problems.push(
                "cost_tracking.cpu_weight: give both cpu_weight and memory_weight, or neither (weights from each \
                 instance's price split)"
                    .to_owned(),
            ),
            _ => {}
        }
        for (field, rate) in [
            ("cpu_price_per_core_hour", self.cpu_price_per_core_hour),
            ("memory_price_per_gib_hour", self.memory_price_per_gib_hour),
        ] {
            if !rate.is_finite() || rate <= 0.0 {
                problems.push(format!("cost_tracking.{field}: must be a number above 0, got {rate}"));
            }
        }
        if let Err(errors) = hodei_core::cost::validate_prices(&self.prices) {
            problems.extend(errors.errors().iter().map(|e| format!("cost_tracking.{}: {}", e.field, e.message)));
        }
        for (field, message) in self.recommendations.problems() {
            problems.push(format!("cost_tracking.recommendations.{field}: {message}"));
        }
    }
}

/// Retention: finished jobs (with their events and logs), the logs of finished jobs, and
/// queue activity are deleted once past these ages, in batches, by one replica at a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// `HODEI_RETENTION_ENABLED`.
    pub enabled: bool,
    /// Hours a job is kept after it finished, by final state. These hours, and those of
    /// logs and the idempotency window, may be fractions (`0.25`: 15 minutes), at least a
    /// minute.
    pub succeeded_hours: f64,
    pub cancelled_hours: f64,
    /// How long a dead letter waits for a redrive.
    pub dead_lettered_hours: f64,
    /// Hours a finished job's output is kept (at most as long as the job).
    pub logs_hours: f64,
    /// Hours of queue admissions and dispatches kept (at least 25: quotas read the last day).
    pub queue_activity_hours: u32,
    /// Hours a job submitted with an idempotency key is kept at least, after its submission.
    pub idempotency_window_hours: f64,
    /// Queues that keep their finished jobs for other times than the above.
    pub queues: Vec<QueueRetentionConfig>,
    /// How often the pruning runs, in seconds.
    pub interval_seconds: u32,
    /// Rows deleted per statement at most (1–100000).
    pub batch_size: u32,
}

/// One queue's own retention of finished jobs; what it leaves out is the default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueRetentionConfig {
    pub queue: String,
    pub succeeded_hours: Option<f64>,
    pub cancelled_hours: Option<f64>,
    pub dead_lettered_hours: Option<f64>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            succeeded_hours: 24.0,
            cancelled_hours: 24.0,
            dead_lettered_hours: 168.0,
            logs_hours: 72.0,
            queue_activity_hours: 168,
            idempotency_window_hours: 24.0,
            queues: Vec::new(),
            interval_seconds: 60,
            batch_size: 1000,
        }
    }
}

impl RetentionConfig {
    fn problems(&self, problems: &mut Vec<String>) {
        const MAX_HOURS: u32 = 24 * 3650;
        let mut hours = vec![
            ("succeeded_hours".to_owned(), self.succeeded_hours),
            ("cancelled_hours".to_owned(), self.cancelled_hours),
            ("dead_lettered_hours".to_owned(), self.dead_lettered_hours),
            ("logs_hours".to_owned(), self.logs_hours),
            ("idempotency_window_hours".to_owned(), self.idempotency_window_hours),
        ];
        for (index, queue) in self.queues.iter().enumerate() {
            for (name, value) in [
                ("succeeded_hours", queue.succeeded_hours),
                ("cancelled_hours", queue.cancelled_hours),
                ("dead_lettered_hours", queue.dead_lettered_hours),
            ] {
                if let Some(value) = value {
                    hours.push((format!("queues[{index}].{name}"), value));
                }
            }
            if let Err(message) = hodei_core::names::check_resource_name(&queue.queue) {
                problems.push(format!("retention.queues[{index}].queue: {message}"));
            }
        }
        for (field, value) in hours {
            if !(value.is_finite() && (1.0 / 60.0..=f64::from(MAX_HOURS)).contains(&value)) {
                problems.push(format!(
                    "retention.{field}: must be between one minute (0.0167) and {MAX_HOURS} hours, got {value}"
                ));
            }
        }
        if !(25..=MAX_HOURS).contains(&self.queue_activity_hours) {
            problems.push(format!(
                "retention.queue_activity_hours: must be between 25 and {MAX_HOURS}, got {}",
                self.queue_activity_hours
            ));
        }
        if !(1..=86_400).contains(&self.interval_seconds) {
            problems.push(format!(
                "retention.interval_seconds: must be between 1 and 86400, got {}",
                self.interval_seconds
            ));
        }
        if !(1..=100_000).contains(&self.batch_size) {
            problems.push(format!("retention.batch_size: must be between 1 and 100000, got {}", self.batch_size));
        }
    }
}

/// Tenant quotas: the defaults of tenants without their own, and the burst rules. A
/// tenant's own quota (`PUT /api/v1/tenants/{tenant}/quotas`) is enforced whether or not
/// `enabled` is set; `enabled` gives every other tenant the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultiTenancyConfig {
    /// `HODEI_MULTI_TENANCY_ENABLED`.
    pub enabled: bool,
    pub default_tenant_quota: DefaultTenantQuota,
    pub burst_capacity: BurstCapacityConfig,
    pub fair_sharing: FairSharingConfig,
}

/// Dominant-resource fair sharing: `fair` queues offer their candidates to placement in
/// order of their tenants' dominant shares, current and decayed past usage
/// (`hodei_core::drf`; the formula is in ARCHITECTURE.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FairSharingConfig {
    /// `HODEI_FAIR_SHARING_ENABLED`.
    pub enabled: bool,
    /// How fast past usage is forgotten (`HODEI_FAIR_SHARING_HALF_LIFE_MINUTES`).
    pub half_life_minutes: u32,
}

impl Default for FairSharingConfig {
    fn default() -> Self {
        Self { enabled: false, half_life_minutes: 60 }
    }
}

/// Limits for tenants without their own; an absent field is no limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultTenantQuota {
    /// Millicores held by running and assigned jobs (`HODEI_DEFAULT_TENANT_QUOTA_CPU`).
    pub cpu_m: Option<i64>,
    /// MiB held by running and assigned jobs (`HODEI_DEFAULT_TENANT_QUOTA_MEMORY`).
    pub memory_mb: Option<i64>,
    /// `HODEI_DEFAULT_TENANT_QUOTA_MAX_CONCURRENT_JOBS`.
    pub max_concurrent_jobs: Option<i64>,
    /// Jobs waiting, ready or scheduled (`HODEI_DEFAULT_TENANT_QUOTA_MAX_QUEUED_JOBS`).
    pub max_queued_jobs: Option<i64>,
}

/// Burst sessions: above quota for a while, only with capacity nobody within quota wants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BurstCapacityConfig {
    pub enabled: bool,
    /// The most a session may allow, as a percentage of the quota (150 = 1.5 times).
    pub max_overage_percentage: u32,
    /// The longest a session lasts.
    pub burst_duration_minutes: u32,
    /// How long after a session ends before the tenant may start another.
    pub cooldown_minutes: u32,
    /// Open a session by itself when a tenant at quota could use idle capacity.
    pub automatic: bool,
    /// A tenant's own key may start and end its sessions (else admins only).
    pub tenant_may_request: bool,
}

impl Default for BurstCapacityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_overage_percentage: 150,
            burst_duration_minutes: 60,
            cooldown_minutes: 15,
            automatic: false,
            tenant_may_request: false,
        }
    }
}

/// The largest value any quota field takes (CPU, memory, jobs).
pub const MAX_QUOTA: i64 = 1_000_000_000;

impl MultiTenancyConfig {
    fn problems(&self, problems: &mut Vec<String>) {
        let quota = &self.default_tenant_quota;
        for (field, value) in [
            ("cpu_m", quota.cpu_m),
            ("memory_mb", quota.memory_mb),
            ("max_concurrent_jobs", quota.max_concurrent_jobs),
            ("max_queued_jobs", quota.max_queued_jobs),
        ] {
            if let Some(value) = value.filter(|v| !(0..=MAX_QUOTA).contains(v)) {
                problems.push(format!(
                    "multi_tenancy.default_tenant_quota.{field}: must be between 0 and {MAX_QUOTA}, got {value}"
                ));
            }
        }
        let burst = &self.burst_capacity;
        if !(101..=1000).contains(&burst.max_overage_percentage) {
            problems.push(format!(
                "multi_tenancy.burst_capacity.max_overage_percentage: must be between 101 and 1000, got {}",
                burst.max_overage_percentage
            ));
        }
        if !(1..=10_080).contains(&burst.burst_duration_minutes) {
            problems.push(format!(
                "multi_tenancy.burst_capacity.burst_duration_minutes: must be between 1 and 10080, got {}",
                burst.burst_duration_minutes
            ));
        }
        if !(1..=43_200).contains(&self.fair_sharing.half_life_minutes) {
            problems.push(format!(
                "multi_tenancy.fair_sharing.half_life_minutes: must be between 1 and 43200, got {}",
                self.fair_sharing.half_life_minutes
            ));
        }
        if burst.cooldown_minutes > 10_080 {
            problems.push(format!(
                "multi_tenancy.burst_capacity.cooldown_minutes: must be at most 10080, got {}",
                burst.cooldown_minutes
            ));
        }
    }
}

/// Where `/metrics` is served, and the historical metrics kept in SQL.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub prometheus: PrometheusConfig,
    pub history: MetricHistoryConfig,
}

/// Historical metrics in SQL (`GET /api/v1/metrics/historical`): whether the roll-up runs
/// (`HODEI_METRICS_HISTORY_ENABLED`), how often (`HODEI_METRICS_HISTORY_INTERVAL_SECONDS`,
/// 1–3600) and how many days hour buckets are kept (`HODEI_METRICS_HISTORY_RETENTION_DAYS`,
/// 1–3650; minute buckets are kept a day).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricHistoryConfig {
    pub enabled: bool,
    pub interval_seconds: u32,
    pub retention_days: u32,
}

impl Default for MetricHistoryConfig {
    fn default() -> Self {
        Self { enabled: true, interval_seconds: 60, retention_days: 90 }
    }
}

/// `port`: serve `/metrics` on this port of the `listen` address, on its own listener (and
/// not on the API's); without it, on the API's listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    pub port: Option<u16>,
}

/// Which providers a replica may use.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub local: LocalProviderConfig,
    /// The `aws-ec2` and `aws-asg` providers, when this section is present: region,
    /// endpoint, the deployment tag, the API URL(s) and token parameter instances boot with.
    pub aws: Option<hodei_provider_aws::AwsSettings>,
}

/// The `local` provider starts `hodei-worker` processes on the control-plane host itself,
/// which then run tenants' jobs there: right for `hodei dev` and a single machine, wrong
/// for a shared control plane. Off for `serve` unless enabled; on for `dev`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalProviderConfig {
    pub enabled: Option<bool>,
}

impl Config {
    /// Whether the `local` provider runs here: as configured, else `default` (the
    /// command's choice: `dev` yes, `serve` no).
    pub fn local_provider_enabled(&self, default: bool) -> bool {
        self.providers.local.enabled.unwrap_or(default)
    }

    /// What the configured providers allow, for validating pools: `local`, and the AWS
    /// providers when `providers.aws` is set (instance types and launch templates are
    /// checked against the account when a pool is created through the API).
    pub fn provider_limits(&self) -> Vec<hodei_core::pool::ProviderLimits> {
        let mut limits = vec![crate::provider::local_limits()];
        if self.providers.aws.is_some() {
            limits.extend(crate::provider::aws_limits());
        }
        limits
    }
}

/// Each environment variable that overrides a field, and the field's name in the file
/// (dotted for nested settings).
pub const ENVIRONMENT_OVERRIDES: &[(&str, &str)] = &[
    ("HODEI_DATABASE_URL", "database_url"),
    ("HODEI_LISTEN", "listen"),
    ("HODEI_DATABASE_MAX_CONNECTIONS", "database_max_connections"),
    ("HODEI_BOOTSTRAP_ADMIN_KEY", "bootstrap_admin_key"),
    ("HODEI_LOG_LEVEL", "log_level"),
    ("HODEI_LOG_FORMAT", "log_format"),
    ("HODEI_DEV_DATA_DIR", "dev_data_dir"),
    ("HODEI_WORKER_REGISTRATION_TOKEN", "worker_registration_token"),
    ("HODEI_WORKER_HEARTBEAT_SECONDS", "worker_heartbeat_seconds"),
    ("HODEI_WORKER_LEASE_SECONDS", "worker_lease_seconds"),
    ("HODEI_WORKER_ASSIGNMENT_TIMEOUT_SECONDS", "worker_assignment_timeout_seconds"),
    ("HODEI_LOCAL_WORKER_BINARY", "local_worker_binary"),
    ("HODEI_LOCAL_WORKER_API_URL", "local_worker_api_url"),
    ("HODEI_LOCAL_WORKER_LOG_DIR", "local_worker_log_dir"),
    ("HODEI_LOCAL_WORKER_CA_FILE", "local_worker_ca_file"),
    ("HODEI_LOCAL_WORKER_INTERRUPTION_URL", "local_worker_interruption_url"),
    ("HODEI_LOCAL_WORKER_DRAIN_SECONDS", "local_worker_drain_seconds"),
    ("HODEI_PROVIDERS_LOCAL_ENABLED", "providers.local.enabled"),
    ("HODEI_PROVIDERS_AWS_REGION", "providers.aws.region"),
    ("HODEI_PROVIDERS_AWS_ENDPOINT_URL", "providers.aws.endpoint_url"),
    ("HODEI_PROVIDERS_AWS_DEPLOYMENT", "providers.aws.deployment"),
    ("HODEI_PROVIDERS_AWS_API_URLS", "providers.aws.api_urls"),
    ("HODEI_PROVIDERS_AWS_REGISTRATION_TOKEN_PARAMETER", "providers.aws.registration_token_parameter"),
    ("HODEI_MAX_POOLS", "max_pools"),
    ("HODEI_MAX_POOL_SIZE", "max_pool_size"),
    ("HODEI_HTTP_MAX_CONNECTIONS", "http.max_connections"),
    ("HODEI_HTTP_HEADER_READ_TIMEOUT_SECONDS", "http.header_read_timeout_seconds"),
    ("HODEI_HTTP_BODY_READ_TIMEOUT_SECONDS", "http.body_read_timeout_seconds"),
    ("HODEI_TLS_CERT_FILE", "tls.cert_file"),
    ("HODEI_TLS_KEY_FILE", "tls.key_file"),
    ("HODEI_PROMETHEUS_PORT", "metrics.prometheus.port"),
    ("HODEI_METRICS_HISTORY_ENABLED", "metrics.history.enabled"),
    ("HODEI_METRICS_HISTORY_INTERVAL_SECONDS", "metrics.history.interval_seconds"),
    ("HODEI_METRICS_HISTORY_RETENTION_DAYS", "metrics.history.retention_days"),
    ("HODEI_MULTI_TENANCY_ENABLED", "multi_tenancy.enabled"),
    ("HODEI_DEFAULT_TENANT_QUOTA_CPU", "multi_tenancy.default_tenant_quota.cpu_m"),
    ("HODEI_DEFAULT_TENANT_QUOTA_MEMORY", "multi_tenancy.default_tenant_quota.memory_mb"),
    ("HODEI_DEFAULT_TENANT_QUOTA_MAX_CONCURRENT_JOBS", "multi_tenancy.default_tenant_quota.max_concurrent_jobs"),
    ("HODEI_DEFAULT_TENANT_QUOTA_MAX_QUEUED_JOBS", "multi_tenancy.default_tenant_quota.max_queued_jobs"),
    ("HODEI_BURST_ENABLED", "multi_tenancy.burst_capacity.enabled"),
    ("HODEI_BURST_MAX_OVERAGE_PERCENTAGE", "multi_tenancy.burst_capacity.max_overage_percentage"),
    ("HODEI_BURST_DURATION_MINUTES", "multi_tenancy.burst_capacity.burst_duration_minutes"),
    ("HODEI_BURST_COOLDOWN_MINUTES", "multi_tenancy.burst_capacity.cooldown_minutes"),
    ("HODEI_BURST_AUTOMATIC", "multi_tenancy.burst_capacity.automatic"),
    ("HODEI_FAIR_SHARING_ENABLED", "multi_tenancy.fair_sharing.enabled"),
    ("HODEI_FAIR_SHARING_HALF_LIFE_MINUTES", "multi_tenancy.fair_sharing.half_life_minutes"),
    ("HODEI_COST_TRACKING_ENABLED", "cost_tracking.enabled"),
    ("HODEI_RETENTION_ENABLED", "retention.enabled"),
    ("HODEI_COST_TRACKING_TRACK_BY_TENANT", "cost_tracking.track_by_tenant"),
    ("HODEI_COST_TRACKING_TRACK_BY_JOB", "cost_tracking.track_by_job"),
    ("HODEI_COST_RETENTION_DAYS", "cost_tracking.retention_days"),
    ("HODEI_COST_ROLLUP_INTERVAL_SECONDS", "cost_tracking.rollup_interval_seconds"),
    ("HODEI_COST_SPOT_PRICE_REFRESH_MINUTES", "cost_tracking.spot_price_refresh_minutes"),
    ("HODEI_COST_LOCAL_PRICE_PER_WORKER_HOUR", "cost_tracking.local_price_per_worker_hour"),
    ("HODEI_COST_SPREAD_IDLE_TO_TENANTS", "cost_tracking.spread_idle_to_tenants"),
];

pub const MIN_BOOTSTRAP_ADMIN_KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid YAML: {source}")]
    Parse { path: PathBuf, source: serde_yaml::Error },
    #[error("config file {path}: the top level must be a mapping of settings")]
    NotAMapping { path: PathBuf },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the file (if any), applies the given environment, and validates.
    pub fn load(file: Option<&Path>, environment: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let mut document = match file {
            Some(path) => read_document(path)?,
            None => serde_yaml::Mapping::new(),
        };
        for (variable, field) in ENVIRONMENT_OVERRIDES {
            if let Some(value) = environment.get(*variable) {
                insert_at(&mut document, field, environment_value(field, value));
            }
        }
        let mut config: Config =
            serde_path_to_error::deserialize(serde_yaml::Value::Mapping(document)).map_err(|error| {
                let field = error.path().to_string();
                let source = error.into_inner();
                let message = if field == "." { source.to_string() } else { format!("{field}: {source}") };
                ConfigError::Invalid(format!("{message} (file {}, or its HODEI_* variable)", describe(file)))
            })?;
        config.validate()?;
        config.source_file = file.map(Path::to_path_buf);
        Ok(config)
    }

    /// Loads from the process's own environment: the file named by `file` or `HODEI_CONFIG`.
    pub fn from_process_environment(file: Option<&Path>) -> Result<Config, ConfigError> {
        let environment: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("HODEI_")).collect();
        let file = file.map(Path::to_path_buf).or_else(|| environment.get("HODEI_CONFIG").map(PathBuf::from));
        Config::load(file.as_deref(), &environment)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Some(url) = &self.database_url {
            let url = url.expose();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                problems.push("database_url: must start with postgres:// or postgresql://".to_owned());
            }
        }
        if self.database_max_connections == 0 || self.database_max_connections > 1000 {
            problems.push(format!(
                "database_max_connections: must be between 1 and 1000, got {}",
                self.database_max_connections
            ));
        }
        if let Some(key) = &self.bootstrap_admin_key {
            if key.expose().len() < MIN_BOOTSTRAP_ADMIN_KEY_LEN {
                problems.push(format!(
                    "bootstrap_admin_key: must be at least {MIN_BOOTSTRAP_ADMIN_KEY_LEN} characters, got {}",
                    key.expose().len()
                ));
            }
        }
        if let Some(token) = &self.worker_registration_token {
            if token.expose().len() < MIN_BOOTSTRAP_ADMIN_KEY_LEN {
                problems.push(format!(
                    "worker_registration_token: must be at least {MIN_BOOTSTRAP_ADMIN_KEY_LEN} characters, got {}",
                    token.expose().len()
                ));
            }
        }
        if !(1..=3600).contains(&self.worker_heartbeat_seconds) {
            problems.push(format!(
                "worker_heartbeat_seconds: must be between 1 and 3600, got {}",
                self.worker_heartbeat_seconds
            ));
        }
        if self.worker_lease_seconds <= self.worker_heartbeat_seconds || self.worker_lease_seconds > 3600 {
            problems.push(format!(
                "worker_lease_seconds: must be above worker_heartbeat_seconds ({}) and at most 3600, got {}",
                self.worker_heartbeat_seconds, self.worker_lease_seconds
            ));
        }
        if !(1..=86_400).contains(&self.worker_assignment_timeout_seconds) {
            problems.push(format!(
                "worker_assignment_timeout_seconds: must be between 1 and 86400, got {}",
                self.worker_assignment_timeout_seconds
            ));
        }
        if !(1..=10_000).contains(&self.max_pools) {
            problems.push(format!("max_pools: must be between 1 and 10000, got {}", self.max_pools));
        }
        if !(1..=100_000).contains(&self.max_pool_size) {
            problems.push(format!("max_pool_size: must be between 1 and 100000, got {}", self.max_pool_size));
        }
        if self.local_worker_drain_seconds > 3600 {
            problems.push(format!(
                "local_worker_drain_seconds: must be at most 3600, got {}",
                self.local_worker_drain_seconds
            ));
        }
        if !(1..=1_000_000).contains(&self.http.max_connections) {
            problems.push(format!(
                "http.max_connections: must be between 1 and 1000000, got {}",
                self.http.max_connections
            ));
        }
        for (field, seconds) in [
            ("http.header_read_timeout_seconds", self.http.header_read_timeout_seconds),
            ("http.body_read_timeout_seconds", self.http.body_read_timeout_seconds),
        ] {
            if !(1..=3600).contains(&seconds) {
                problems.push(format!("{field}: must be between 1 and 3600, got {seconds}"));
            }
        }
        match self.metrics.prometheus.port {
            Some(0) => problems.push("metrics.prometheus.port: must be between 1 and 65535, got 0".to_owned()),
            Some(port) if port == self.listen.port() => problems.push(format!(
                "metrics.prometheus.port: must differ from the port of listen ({}), got {port}",
                self.listen
            )),
            _ => {}
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => problems.push("tls.key_file: required with tls.cert_file".to_owned()),
            (None, Some(_)) => problems.push("tls.cert_file: required with tls.key_file".to_owned()),
            _ => {}
        }
        if self.pools.len() > self.max_pools as usize {
            problems.push(format!("pools: at most max_pools ({}) pools, got {}", self.max_pools, self.pools.len()));
        }
        if let Err(errors) = validate_pools(&self.pools, &self.provider_limits()) {
            problems.extend(errors.errors().iter().map(|e| format!("{}: {}", e.field, e.message)));
        }
        for (index, pool) in self.pools.iter().enumerate() {
            if pool.max_workers() > self.max_pool_size {
                problems.push(format!(
                    "pools[{index}].{}: must be at most max_pool_size ({}), got {}",
                    pool.size_field(),
                    self.max_pool_size,
                    pool.max_workers()
                ));
            }
            if pool.provider == "local" && self.providers.local.enabled == Some(false) {
                problems.push(format!(
                    "pools[{index}].provider: the local provider is disabled here (providers.local.enabled: false)"
                ));
            }
        }
        if let Some(url) = &self.local_worker_api_url {
            if !url.split(',').all(|u| u.trim().starts_with("http://") || u.trim().starts_with("https://")) {
                problems
                    .push(format!("local_worker_api_url: each URL must start with http:// or https://, got {url:?}"));
            }
        }
        self.cost_tracking.problems(&mut problems);
        self.retention.problems(&mut problems);
        self.multi_tenancy.problems(&mut problems);
        let history = &self.metrics.history;
        if !(1..=3600).contains(&history.interval_seconds) {
            problems.push(format!(
                "metrics.history.interval_seconds: must be between 1 and 3600, got {}",
                history.interval_seconds
            ));
        }
        if !(1..=3650).contains(&history.retention_days) {
            problems.push(format!(
                "metrics.history.retention_days: must be between 1 and 3650, got {}",
                history.retention_days
            ));
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            problems.push(format!("log_level: {error}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }

    /// The pools to run: the declared ones, else the defaults.
    pub fn effective_pools(&self) -> &[PoolSpec] {
        if self.pools.is_empty() {
            &self.default_pools
        } else {
            &self.pools
        }
    }

    pub fn require_database_url(&self) -> Result<&Secret, ConfigError> {
        self.database_url.as_ref().ok_or_else(|| {
            ConfigError::Invalid("database_url: required (set it in the config file or HODEI_DATABASE_URL)".to_owned())
        })
    }
}

fn read_document(path: &Path) -> Result<serde_yaml::Mapping, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    if text.trim().is_empty() {
        return Ok(serde_yaml::Mapping::new());
    }
    match serde_yaml::from_str::<serde_yaml::Value>(&text) {
        Ok(serde_yaml::Value::Mapping(mapping)) => Ok(mapping),
        Ok(serde_yaml::Value::Null) => Ok(serde_yaml::Mapping::new()),
        Ok(_) => Err(ConfigError::NotAMapping { path: path.to_owned() }),
        Err(source) => Err(ConfigError::Parse { path: path.to_owned(), source }),
    }
}

/// Sets `value` at the dotted `path` of `document`, creating mappings on the way (a
/// non-mapping in the way is replaced, and the result then fails validation by name).
fn insert_at(document: &mut serde_yaml::Mapping, path: &str, value: serde_yaml::Value) {
    match path.split_once('.') {
        None => {
            document.insert(serde_yaml::Value::from(path), value);
        }
        Some((head, rest)) => {
            let key = serde_yaml::Value::from(head);
            let entry = document.entry(key).or_insert_with(|| serde_yaml::Value::Mapping(serde_yaml::Mapping::new()));
            if !entry.is_mapping() {
                *entry = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
            }
            if let serde_yaml::Value::Mapping(inner) = entry {
                insert_at(inner, rest, value);
            }
        }
    }
}

/// Environment values are strings; numeric and boolean fields are parsed so `16` is a
/// number and `true` a boolean.
fn environment_value(field: &str, value: &str) -> serde_yaml::Value {
    if matches!(
        field,
        "database_max_connections"
            | "worker_heartbeat_seconds"
            | "worker_lease_seconds"
            | "worker_assignment_timeout_seconds"
            | "max_pools"
            | "max_pool_size"
            | "local_worker_drain_seconds"
            | "http.max_connections"
            | "http.header_read_timeout_seconds"
            | "http.body_read_timeout_seconds"
            | "metrics.prometheus.port"
            | "metrics.history.interval_seconds"
            | "metrics.history.retention_days"
            | "cost_tracking.retention_days"
            | "cost_tracking.rollup_interval_seconds"
            | "cost_tracking.spot_price_refresh_minutes"
            | "multi_tenancy.burst_capacity.max_overage_percentage"
            | "multi_tenancy.burst_capacity.burst_duration_minutes"
            | "multi_tenancy.burst_capacity.cooldown_minutes"
            | "multi_tenancy.fair_sharing.half_life_minutes"
    ) {
        if let Ok(number) = value.trim().parse::<u64>() {
            return serde_yaml::Value::from(number);
        }
    }
    if field.starts_with("multi_tenancy.default_tenant_quota.") {
        if let Ok(number) = value.trim().parse::<i64>() {
            return serde_yaml::Value::from(number);
        }
    }
    if field == "cost_tracking.local_price_per_worker_hour" {
        if let Ok(number) = value.trim().parse::<f64>() {
            return serde_yaml::Value::from(number);
        }
    }
    if matches!(
        field,
        "providers.local.enabled"
            | "metrics.history.enabled"
            | "cost_tracking.enabled"
            | "retention.enabled"
            | "cost_tracking.track_by_tenant"
            | "cost_tracking.track_by_job"
            | "cost_tracking.spread_idle_to_tenants"
            | "multi_tenancy.enabled"
            | "multi_tenancy.burst_capacity.enabled"
            | "multi_tenancy.burst_capacity.automatic"
            | "multi_tenancy.fair_sharing.enabled"
    ) {
        match value.trim() {
            "true" | "1" | "yes" => return serde_yaml::Value::from(true),
            "false" | "0" | "no" => return serde_yaml::Value::from(false),
            _ => {}
        }
    }
    serde_yaml::Value::from(value)
}

fn describe(file: Option<&Path>) -> String {
    file.map(|p| p.display().to_string()).unwrap_or_else(|| "<none>".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(contents: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::with_contents(contents)
    }

    #[test]
    fn environment_overrides_file() {
        let file = write("listen: 127.0.0.1:9000\ndatabase_url: postgres://file/db\n");
        let config = Config::load(Some(file.path()), &environment(&[("HODEI_DATABASE_URL", "postgres://env/db")]))
            .expect("valid");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.database_url.expect("set").expose(), "postgres://env/db");
    }

    #[test]
    fn defaults_without_file() {
        let config = Config::load(None, &BTreeMap::new()).expect("valid");
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert!(config.database_url.is_none());
    }

    #[test]
    fn errors_name_the_bad_field() {
        let file = write("listen: nowhere\n");
        let message = Config::load(Some(file.path()), &BTreeMap::new()).expect_err("invalid").to_string();
        assert!(message.contains("listen"), "{message}");

        let file = write("lisen: 127.0.0.1:1\n");
        let message = Config::load(Some(file.path()), &BTreeMap::new()).expect_err("invalid").to_string();
        assert!(message.contains("unknown field `lisen`"), "{message}");

        let message = Config::load(None, &environment(&[("HODEI_BOOTSTRAP_ADMIN_KEY", "short")]))
            .expect_err("invalid")
            .to_string();
        assert!(message.contains("bootstrap_admin_key: must be at least 32 characters, got 5"), "{message}");

        let message = Config::load(None, &environment(&[("HODEI_DATABASE_MAX_CONNECTIONS", "0")]))
            .expect_err("invalid")
            .to_string();
        assert!(message.contains("database_max_connections"), "{message}");
    }

    #[test]
    fn the_prometheus_port_is_read_and_checked() {
        assert_eq!(Config::load(None, &BTreeMap::new()).expect("valid").metrics.prometheus.port, None);
        let config = Config::load(None, &environment(&[("HODEI_PROMETHEUS_PORT", "9464")])).expect("valid");
        assert_eq!(config.metrics.prometheus.port, Some(9464));
        let file = write("metrics: {prometheus: {port: 9100}}\n");
        assert_eq!(
            Config::load(Some(file.path()), &BTreeMap::new()).expect("valid").metrics.prometheus.port,
            Some(9100)
        );
        for (value, expected) in [
            ("0", "metrics.prometheus.port: must be between 1 and 65535"),
            ("8080", "metrics.prometheus.port: must differ from the port of listen"),
            ("70000", "metrics.prometheus.port"),
        ] {
            let message =
                Config::load(None, &environment(&[("HODEI_PROMETHEUS_PORT", value)])).expect_err("invalid").to_string();
            assert!(message.contains(expected), "{value}: {message}");
        }
    }

    #[test]
    fn pools_are_read_and_checked() {
        let file = write("pools:\n  - id: local\n    size: 3\n    strategy: first-fit\n    template: {slots: 2}\n");
        let config = Config::load(Some(file.path()), &BTreeMap::new()).expect("valid");
        assert_eq!(config.pools.len(), 1);
        assert_eq!(config.pools[0].size, Some(3));
        assert_eq!(config.source_file.as_deref(), Some(file.path()));

        let file = write("pools:\n  - {id: a, size: 0}\n  - {id: a, size: 1, provider: moon}\n");
        let message = Config::load(Some(file.path()), &BTreeMap::new()).expect_err("invalid").to_string();
        assert!(message.contains("pools[0].size: must be at least 1"), "{message}");
        assert!(message.contains("pools[1].id: duplicate pool id"), "{message}");
        assert!(message.contains("pools[1].provider: unknown provider \"moon\""), "{message}");

        let file = write("pools:\n  - {id: a, size: 1, template: {memory_mib: 4000000000}}\n");
        let message = Config::load(Some(file.path()), &BTreeMap::new()).expect_err("invalid").to_string();
        assert!(message.contains("pools[0].template.memory_mib"), "{message}");
    }

    #[test]
    fn nested_settings_take_their_variables_and_bounds_are_checked() {
        let config = Config::load(None, &BTreeMap::new()).expect("valid");
        assert!(!config.local_provider_enabled(false), "off unless the command or the operator says so");
        assert!(config.local_provider_enabled(true));
        let file = write("providers: {local: {enabled: false}}\n");
        let config =
            Config::load(Some(file.path()), &environment(&[("HODEI_PROVIDERS_LOCAL_ENABLED", "true")])).expect("valid");
        assert!(config.local_provider_enabled(false), "the variable wins over the file");

        let file = write("providers: {local: {enabled: false}}\npools:\n  - {id: a, size: 1}\n");
        let message = Config::load(Some(file.path()), &BTreeMap::new()).expect_err("invalid").to_string();
        assert!(message.contains("pools[0].provider: the local provider is disabled here"), "{message}");

        let file = write("max_pools: 1\nmax_pool_size: 2\npools:\n  - {id: a, size: 3}\n  - {id: b, size: 1}\n");
        let message = Config::load(Some(file.path()), &BTreeMap::new()).expect_err("invalid").to_string();
        assert!(message.contains("pools: at most max_pools (1) pools, got 2"), "{message}");
        assert!(message.contains("pools[0].size: must be at most max_pool_size (2), got 3"), "{message}");
        let message = Config::load(None, &environment(&[("HODEI_PROVIDERS_LOCAL_ENABLED", "maybe")]))
            .expect_err("invalid")
            .to_string();
        assert!(message.contains("providers.local.enabled"), "{message}");
    }

    #[test]
    fn multi_tenancy_is_read_and_checked() {
        let file = write(
            "multi_tenancy:\n  enabled: true\n  default_tenant_quota: {cpu_m: 2000}\n  burst_capacity: {burst_duration_minutes: 5}\n",
        );
        let config = Config::load(
            Some(file.path()),
            &environment(&[("HODEI_DEFAULT_TENANT_QUOTA_MEMORY", "4096"), ("HODEI_BURST_AUTOMATIC", "true")]),
        )
        .expect("valid");
        let tenancy = &config.multi_tenancy;
        assert!(tenancy.enabled);
        assert_eq!(
            (tenancy.default_tenant_quota.cpu_m, tenancy.default_tenant_quota.memory_mb),
            (Some(2000), Some(4096))
        );
        assert_eq!(tenancy.default_tenant_quota.max_concurrent_jobs, None);
        assert_eq!(
            (tenancy.burst_capacity.burst_duration_minutes, tenancy.burst_capacity.max_overage_percentage),
            (5, 150)
        );
        assert!(tenancy.burst_capacity.automatic);
        let message = Config::load(
            None,
            &environment(&[("HODEI_DEFAULT_TENANT_QUOTA_CPU", "-1"), ("HODEI_BURST_MAX_OVERAGE_PERCENTAGE", "100")]),
        )
        .expect_err("invalid")
        .to_string();
        assert!(message.contains("multi_tenancy.default_tenant_quota.cpu_m: must be between 0 and"), "{message}");
        assert!(
            message.contains("multi_tenancy.burst_capacity.max_overage_percentage: must be between 101"),
            "{message}"
        );
    }

    #[test]
    fn cost_tracking_is_read_and_checked() {
        let file = write(
            "cost_tracking:\n  retention_days: 30\n  prices:\n    - {provider: aws-ec2, instance_type: m5.large, price_per_hour: 0.096}\n",
        );
        let config =
            Config::load(Some(file.path()), &environment(&[("HODEI_COST_TRACKING_ENABLED", "false")])).expect("valid");
        assert!(!config.cost_tracking.enabled);
        assert_eq!(config.cost_tracking.retention_days, 30);
        assert_eq!(config.cost_tracking.prices[0].region, "*");
        let message =
            Config::load(None, &environment(&[("HODEI_COST_RETENTION_DAYS", "0")])).expect_err("invalid").to_string();
        assert!(message.contains("cost_tracking.retention_days"), "{message}");
        let file = write(
            "cost_tracking:\n  prices:\n    - {provider: aws-ec2, instance_type: m5.large, price_per_hour: -1}\n",
        );
        let message = Config::load(Some(file.path()), &environment(&[])).expect_err("invalid").to_string();
        assert!(message.contains("cost_tracking.prices[0].price_per_hour"), "{message}");
        let file = write("cost_tracking:\n  recommendations: {idle_threshold_percent: 50, min_quiet_hours: 0}\n");
        let message = Config::load(Some(file.path()), &environment(&[])).expect_err("invalid").to_string();
        assert!(message.contains("cost_tracking.recommendations.min_quiet_hours"), "{message}");
        let config =
            Config::load(None, &environment(&[("HODEI_METRICS_HISTORY_INTERVAL_SECONDS", "5")])).expect("valid");
        assert_eq!((config.metrics.history.interval_seconds, config.metrics.history.retention_days), (5, 90));
        let message = Config::load(None, &environment(&[("HODEI_METRICS_HISTORY_RETENTION_DAYS", "0")]))
            .expect_err("invalid")
            .to_string();
        assert!(message.contains("metrics.history.retention_days"), "{message}");
        assert!(!message.contains("idle_threshold_percent"), "{message}");
    }

    #[test]
    fn retention_is_read_and_checked() {
        let config = Config::load(None, &environment(&[])).expect("valid");
        assert!(config.retention.enabled);
        assert_eq!((config.retention.succeeded_hours, config.retention.dead_lettered_hours), (24.0, 168.0));
        let file = write(
            "retention:\n  succeeded_hours: 2\n  logs_hours: 0.25\n  queues:\n    - {queue: audit, succeeded_hours: 720}\n",
        );
        let config =
            Config::load(Some(file.path()), &environment(&[("HODEI_RETENTION_ENABLED", "false")])).expect("valid");
        assert!(!config.retention.enabled);
        assert_eq!((config.retention.succeeded_hours, config.retention.logs_hours), (2.0, 0.25));
        assert_eq!(config.retention.queues[0].succeeded_hours, Some(720.0));
        assert_eq!(config.retention.queues[0].cancelled_hours, None);
        for (yaml, field) in [
            ("retention: {succeeded_hours: 0}\n", "retention.succeeded_hours"),
            ("retention: {cancelled_hours: 0.01}\n", "retention.cancelled_hours"),
            ("retention: {logs_hours: .nan}\n", "retention.logs_hours"),
            ("retention: {queue_activity_hours: 24}\n", "retention.queue_activity_hours"),
            ("retention: {batch_size: 0}\n", "retention.batch_size"),
            ("retention: {queues: [{queue: Audit}]}\n", "retention.queues[0].queue"),
            (
                "retention: {queues: [{queue: audit, dead_lettered_hours: 0}]}\n",
                "retention.queues[0].dead_lettered_hours",
            ),
        ] {
            let file = write(yaml);
            let message = Config::load(Some(file.path()), &environment(&[])).expect_err(yaml).to_string();
            assert!(message.contains(field), "{yaml}: {message}");
        }
    }

    #[test]
    fn cost_weights_come_from_each_instances_price_split_unless_fixed() {
        use hodei_core::cost::{Weighting, Weights};
        let config = Config::load(None, &environment(&[])).expect("valid");
        assert_eq!(config.cost_tracking.weighting(), Weighting::default());
        let file = write("cost_tracking: {cpu_price_per_core_hour: 0.04, memory_price_per_gib_hour: 0.01}\n");
        let config = Config::load(Some(file.path()), &environment(&[])).expect("valid");
        assert_eq!(config.cost_tracking.weighting(), Weighting::PriceSplit { per_core_hour: 0.04, per_gib_hour: 0.01 });
        let file = write("cost_tracking: {cpu_weight: 0.8, memory_weight: 0.2}\n");
        let config = Config::load(Some(file.path()), &environment(&[])).expect("valid");
        assert_eq!(config.cost_tracking.weighting(), Weighting::Fixed(Weights { cpu: 0.8, memory: 0.2 }));
        for (yaml, field) in [
            ("cost_tracking: {cpu_weight: 0.8}\n", "cost_tracking.cpu_weight"),
            ("cost_tracking: {cpu_weight: 0.8, memory_weight: 0.8}\n", "cost_tracking.cpu_weight"),
            ("cost_tracking: {memory_price_per_gib_hour: 0}\n", "cost_tracking.memory_price_per_gib_hour"),
        ] {
            let file = write(yaml);
            let message = Config::load(Some(file.path()), &environment(&[])).expect_err(yaml).to_string();
            assert!(message.contains(field), "{yaml}: {message}");
        }
    }

    #[test]
    fn the_spot_price_refresh_is_read_and_checked() {
        assert_eq!(Config::load(None, &environment(&[])).expect("valid").cost_tracking.spot_price_refresh_minutes, 60);
        let config =
            Config::load(None, &environment(&[("HODEI_COST_SPOT_PRICE_REFRESH_MINUTES", "15")])).expect("valid");
        assert_eq!(config.cost_tracking.spot_price_refresh_minutes, 15);
        let file = write("cost_tracking:\n  spot_price_refresh_minutes: 30\n");
        let config = Config::load(Some(file.path()), &environment(&[])).expect("valid");
        assert_eq!(config.cost_tracking.spot_price_refresh_minutes, 30);
        for bad in ["0", "1441"] {
            let message = Config::load(None, &environment(&[("HODEI_COST_SPOT_PRICE_REFRESH_MINUTES", bad)]))
                .expect_err("invalid")
                .to_string();
            assert!(
                message.contains("cost_tracking.spot_price_refresh_minutes: must be between 1 and 1440"),
                "{message}"
            );
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let config =
            Config::load(None, &environment(&[("HODEI_DATABASE_URL", "postgres://u:hunter2@h/db")])).expect("valid");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    /// A file in the system temp directory, removed on drop.
    mod tempfile_path {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicUsize, Ordering};

        pub struct TempFile(PathBuf);

        impl TempFile {
            pub fn with_contents(contents: &str) -> Self {
                static COUNTER: AtomicUsize = AtomicUsize::new(0);
                let name =
                    format!("hodei-config-{}-{}.yaml", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
                let path = std::env::temp_dir().join(name);
                std::fs::write(&path, contents).expect("write temp file");
                Self(path)
            }

            pub fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }
}
