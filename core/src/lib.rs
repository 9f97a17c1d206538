//! The pure domain of Hodei: value types, validation rules and scheduling policies.
//!
//! Everything here is plain data and plain functions. This crate must never do IO: no
//! database, no network, no clock, no randomness. Callers pass `now` (and any random
//! input) as arguments, so every decision can be reproduced exactly in a test.

pub mod admission;
pub mod autoscale;
pub mod backoff;
pub mod calendar;
pub mod cost;
pub mod dispatch;
pub mod drf;
pub mod fairness;
pub mod history;
pub mod job;
pub mod names;
pub mod ordering;
pub mod placement;
pub mod pool;
pub mod pool_plan;
pub mod queue;
pub mod quota;
pub mod recommend;
pub mod schedule;
pub mod simulate;
pub mod validation;

pub use job::{CommandSpec, JobSpec, JobState, ResourceRequest, ValidJob};
pub use validation::{FieldError, ValidationErrors};
