//! Queue settings as the scheduler sees them: the ordering policy, size limit and what to do
//! on overflow, the SLA, the aging rate, and what happens to a job whose deadline passed.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::names::check_resource_name;
use crate::validation::{check_range, ValidationErrors};

/// What to do with a submission to a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Refuse it: HTTP 429 with `Retry-After`.
    Reject,
    /// Admit it to `overflow_queue` instead.
    Redirect,
    /// Dead-letter the lowest-priority queued job (newest first among equals) and admit it.
    EvictLowest,
}

impl OverflowPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OverflowPolicy::Reject => "reject",
            OverflowPolicy::Redirect => "redirect",
            OverflowPolicy::EvictLowest => "evict_lowest",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [OverflowPolicy::Reject, OverflowPolicy::Redirect, OverflowPolicy::EvictLowest]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

/// What happens to a queued job whose deadline passes before it is dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpiredDeadline {
    /// Dispatch it anyway.
    Run,
    /// Move it to the dead-letter queue with reason `deadline_expired`.
    DeadLetter,
}

impl ExpiredDeadline {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpiredDeadline::Run => "run",
            ExpiredDeadline::DeadLetter => "dead_letter",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [ExpiredDeadline::Run, ExpiredDeadline::DeadLetter].into_iter().find(|p| p.as_str() == text)
    }
}

pub const DEFAULT_AGING_SECONDS: i64 = 300;
pub const DEFAULT_STARVATION_AFTER_SECONDS: i64 = 60;
pub const MAX_QUEUE_SIZE: i64 = 100_000_000;

/// The settings of one queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueSettings {
    pub name: String,
    /// Ordering policy: `fifo`, `priority`, `fair`, `edf`, or a registered custom policy.
    pub policy: String,
    /// Lower tiers are served first (`high` 0, `default` 1, `low` 2).
    pub tier: i16,
    /// Most jobs waiting (queued or delayed) at once; unbounded when absent.
    pub max_size: Option<i64>,
    pub overflow: OverflowPolicy,
    /// Target of `redirect` (required with it; kept but unused with the other policies).
    pub overflow_queue: Option<String>,
    /// Longest a job should wait before dispatch; waits beyond it are SLA breaches.
    pub sla_max_wait_seconds: Option<i64>,
    /// Aging rate: a waiting job gains one priority level per this many seconds.
    pub aging_seconds: i64,
    /// A lower tier whose head job has waited this long is served before higher tiers,
    /// for a quarter of a dispatch batch.
    pub starvation_after_seconds: i64,
    pub expired_deadline: ExpiredDeadline,
}

impl QueueSettings {
    /// Settings with the defaults for everything but the name and policy.
    pub fn with_policy(name: &str, policy: &str) -> Self {
        Self {
            name: name.to_owned(),
            policy: policy.to_owned(),
            tier: 1,
            max_size: None,
            overflow: OverflowPolicy::Reject,
            overflow_queue: None,
            sla_max_wait_seconds: None,
            aging_seconds: DEFAULT_AGING_SECONDS,
            starvation_after_seconds: DEFAULT_STARVATION_AFTER_SECONDS,
            expired_deadline: ExpiredDeadline::Run,
        }
    }

    /// Checks every field; `known_policy` says whether a policy name is registered.
    pub fn validate(&self, known_policy: impl Fn(&str) -> bool) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::new();
        if let Err(message) = check_resource_name(&self.name) {
            errors.add("name", message);
        }
        if !known_policy(&self.policy) {
            errors.add("policy", format!("unknown policy {:?}", self.policy));
        }
        check_range(&mut errors, "tier", self.tier.into(), 0, 100);
        if let Some(size) = self.max_size {
            check_range(&mut errors, "max_size", size, 1, MAX_QUEUE_SIZE);
        }
        if self.overflow == OverflowPolicy::Redirect && self.overflow_queue.is_none() {
            errors.add("overflow_queue", "required when overflow is redirect");
        }
        if let Some(sla) = self.sla_max_wait_seconds {
            check_range(&mut errors, "sla_max_wait_seconds", sla, 1, 30 * 24 * 3600);
        }
        check_range(&mut errors, "aging_seconds", self.aging_seconds, 1, 30 * 24 * 3600);
        check_range(&mut errors, "starvation_after_seconds", self.starvation_after_seconds, 1, 30 * 24 * 3600);
        errors.into_result(())
    }
}
