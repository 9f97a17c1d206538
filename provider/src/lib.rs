//! Providers bring workers into being and take them away: `provision` starts an instance
//! that runs a `hodei-worker` for one pool member, `terminate` ends it, `describe` says
//! whether it still exists, `list` names every instance the provider runs for a pool (for
//! cloud providers, by Hodei's tags), `spot_prices` what the spot market asks now for a
//! pool's instance types. The reconcile loop is their only caller, with cost tracking's
//! spot price refresh for `spot_prices`.
//!
//! This crate is the contract only (types and the trait), so a provider built on a heavy
//! SDK lives in a crate of its own and the rest of Hodei builds without it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
pub use hodei_core::cost::SpotQuote;
use hodei_core::pool::{PoolSpec, ProviderLimits};
use uuid::Uuid;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What to start: one worker for one member of a pool.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub member: Uuid,
    /// The member's provisioning attempt, from 1: with the member, it makes a cloud
    /// launch's idempotency token (a retried call of one attempt never launches twice).
    pub attempt: u32,
    pub pool: PoolSpec,
}

/// Whether an instance still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Starting or running.
    Running,
    /// Ended or never existed.
    Gone,
}

/// An instance the provider runs for a pool, as its listing reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedInstance {
    /// The provider's handle, as `provision` returned it.
    pub instance: String,
    /// The member it was launched for (a cloud provider's member tag), when known.
    pub member: Option<Uuid>,
    pub launched_at: DateTime<Utc>,
    /// Where it runs within its region (an availability zone), when the provider says.
    pub zone: Option<String>,
}

/// A provider call failed: with the provider's own error code where it has one (an AWS
/// error code such as `InsufficientInstanceCapacity`), and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProviderError {
    pub code: Option<String>,
    pub message: String,
    pub retryable: bool,
}

impl ProviderError {
    /// An error with no code, worth retrying.
    pub fn new(message: impl Into<String>) -> Self {
        Self { code: None, message: message.into(), retryable: true }
    }

    pub fn coded(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        Self { code: Some(code.into()), message: message.into(), retryable }
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(formatter, "{code}: {}", self.message),
            None => formatter.write_str(&self.message),
        }
    }
}

pub trait Provider: Send + Sync + fmt::Debug {
    fn limits(&self) -> ProviderLimits;
    /// Starts an instance for the member; returns the provider's handle for it. The worker
    /// it runs registers with the member id (or the handle) as its instance id.
    fn provision<'a>(&'a self, request: &'a ProvisionRequest) -> BoxFuture<'a, Result<String, ProviderError>>;
    /// Ends the instance (and whatever it runs). Ending a gone instance succeeds.
    fn terminate<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<(), ProviderError>>;
    fn describe<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<InstanceState, ProviderError>>;
    /// Checks what only the provider can know of a pool spec (an instance type or a launch
    /// template that does not exist in the account): errors by field, empty if valid.
    fn validate<'a>(&'a self, pool: &'a PoolSpec) -> BoxFuture<'a, Vec<(String, String)>> {
        let _ = pool;
        Box::pin(async { Vec::new() })
    }
    /// Every instance the provider runs for the pool, or `None` if it cannot list them
    /// (the `local` provider: its instances are this process's children). Reconciliation
    /// starts from this list, cloud first: an instance no member knows is terminated.
    fn list<'a>(&'a self, pool: &'a PoolSpec) -> BoxFuture<'a, Result<Option<Vec<ListedInstance>>, ProviderError>> {
        let _ = pool;
        Box::pin(async { Ok(None) })
    }
    /// The spot market's current price of each of the pool's instance types, per zone it
    /// is offered in; empty when the provider has no spot market (the default) or the pool
    /// names no instance types. Cost tracking prices spot instances with it at launch and
    /// while they run.
    fn spot_prices<'a>(&'a self, pool: &'a PoolSpec) -> BoxFuture<'a, Result<Vec<SpotQuote>, ProviderError>> {
        let _ = pool;
        Box::pin(async { Ok(Vec::new()) })
    }
}
