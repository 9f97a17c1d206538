//! Jobs: what a client submits (`JobSpec`), the checked form the store persists
//! (`ValidJob`), and the lifecycle states a job moves through (`JobState`).
//!
//! Validation is total and pure: it takes `now` as an argument and reports every invalid
//! field at once. It never fills in anything a client did not ask for beyond documented
//! defaults.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::names::check_resource_name;
use crate::validation::{check_range, ValidationErrors};

pub const MIN_PRIORITY: i64 = 1;
pub const MAX_PRIORITY: i64 = 10;
pub const DEFAULT_PRIORITY: i64 = 5;
pub const DEFAULT_QUEUE: &str = "default";
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 3600;
pub const MAX_TIMEOUT_SECONDS: i64 = 7 * 24 * 3600;
pub const DEFAULT_CPU_MILLIS: i64 = 1000;
pub const MAX_CPU_MILLIS: i64 = 1_000_000;
pub const DEFAULT_MEMORY_MIB: i64 = 512;
pub const MAX_MEMORY_MIB: i64 = 4 * 1024 * 1024;
pub const DEFAULT_MAX_ATTEMPTS: i64 = 3;
pub const MAX_MAX_ATTEMPTS: i64 = 100;
pub const MAX_ARGV_ENTRIES: usize = 1024;
pub const MAX_ENV_ENTRIES: usize = 256;
pub const MAX_LABELS: usize = 64;
/// The variable a job's process gets its trace context in (W3C `traceparent`); set by the
/// worker, over any value of the same name in the job's env.
pub const TRACEPARENT_VARIABLE: &str = "TRACEPARENT";
/// Upper bound on the serialised size of argv plus env, in bytes.
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// Upper bound on the serialised size of `metadata`, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// Where a job is in its life. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a time: its not-before time, or the backoff before a retry.
    Scheduled,
    /// Waiting in its queue for a worker.
    Queued,
    /// Given to a worker that has not yet reported the start.
    Assigned,
    /// Running on a worker.
    Running,
    /// Finished with exit code 0.
    Succeeded,
    /// Cancelled by its tenant before it finished.
    Cancelled,
    /// Gave up: attempts exhausted, deadline missed, or evicted. Kept for inspection and redrive.
    DeadLettered,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Succeeded,
        JobState::Cancelled,
        JobState::DeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Cancelled => "cancelled",
            JobState::DeadLettered => "dead_lettered",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|state| state.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Cancelled | JobState::DeadLettered)
    }

    /// What a cancel request does to a job in this state.
    pub fn on_cancel(self) -> CancelOutcome {
        match self {
            JobState::Scheduled | JobState::Queued => CancelOutcome::CancelledNow,
            JobState::Assigned | JobState::Running => CancelOutcome::HandedToWorker,
            JobState::Cancelled => CancelOutcome::AlreadyCancelled,
            JobState::Succeeded | JobState::DeadLettered => CancelOutcome::NotCancellable,
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The effect of cancelling a job, decided from its state alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Still waiting (queued or scheduled): it leaves its queue at once and becomes `cancelled`.
    CancelledNow,
    /// On a worker: the request is recorded and delivered through the worker protocol.
    HandedToWorker,
    /// Cancelling again is a no-op.
    AlreadyCancelled,
    /// It already finished; there is nothing to cancel.
    NotCancellable,
}

/// The command a worker runs: an argv array executed directly (no shell).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// Program and arguments, e.g. `["python3", "train.py", "--epochs", "3"]`.
    #[schema(min_items = 1, max_items = 1024)]
    pub argv: Vec<String>,
    /// Extra environment variables for the process.
    #[serde(default)]
    #[schema(schema_with = env_schema)]
    pub env: BTreeMap<String, String>,
    /// Absolute working directory on the worker; the worker's own default when absent.
    #[serde(default)]
    #[schema(pattern = "^/")]
    pub working_dir: Option<String>,
    /// Wall-clock limit in seconds (default 3600, at most 604800).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_seconds: Option<i64>,
}

/// What a job needs from the worker that runs it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequest {
    /// CPU in millicores (1000 = one core; default 1000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub cpu_millis: Option<i64>,
    /// Memory in MiB (default 512).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4194304)]
    pub memory_mib: Option<i64>,
    /// Labels the worker must carry with exactly these values, e.g. `{"gpu": "a100"}`.
    #[serde(default)]
    #[schema(schema_with = label_schema)]
    pub labels: BTreeMap<String, String>,
}

/// The schema of a job's environment: what `CommandSpec::check` accepts, but for the
/// size of argv and env together, which no schema keyword states.
fn env_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("Extra environment variables for the process."))
        .property_names(Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[A-Za-z_][A-Za-z0-9_]*$"))))
        .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
        .max_properties(Some(MAX_ENV_ENTRIES))
        .build()
}

/// The schema of a job's labels: what `check_labels` accepts.
fn label_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("Labels the worker must carry with exactly these values, e.g. `{\"gpu\": \"a100\"}`."))
        .property_names(Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[A-Za-z0-9._/-]{1,63}$"))))
        .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String).max_length(Some(63))))
        .max_properties(Some(MAX_LABELS))
        .build()
}

/// A job as a client submits it. Unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Queue name (default `default`).
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub queue: Option<String>,
    /// 1 (lowest) to 10 (highest); default 5.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10)]
    pub priority: Option<i64>,
    pub command: CommandSpec,
    #[serde(default)]
    pub resources: ResourceRequest,
    /// Attempts before the job is dead-lettered (default 3, at most 100).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<i64>,
    /// The job should finish by this time. One already past (or earlier than `not_before`)
    /// is accepted and is expired when it is dispatched: its queue's `expired_deadline`
    /// decides whether it is dead-lettered or runs (recorded as expired).
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// Do not start before this time (a delayed job).
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
    /// Free-form JSON object kept with the job (at most 16 KiB).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// A job that passed validation, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    pub queue: String,
    pub priority: i16,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub timeout_seconds: i32,
    pub cpu_millis: i32,
    pub memory_mib: i32,
    pub labels: BTreeMap<String, String>,
    pub max_attempts: i32,
    pub deadline: Option<DateTime<Utc>>,
    pub not_before: Option<DateTime<Utc>>,
    pub metadata: serde_json::Value,
    /// What the submitter should know although the job is valid (a deadline already past).
    pub warnings: Vec<String>,
}

impl JobSpec {
    /// Checks every field against its documented range and applies the defaults.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<ValidJob, ValidationErrors> {
        let mut errors = ValidationErrors::new();

        let queue = self.queue.clone().unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
        if let Err(message) = check_resource_name(&queue) {
            errors.add("queue", message);
        }

        let priority = self.priority.unwrap_or(DEFAULT_PRIORITY);
        check_range(&mut errors, "priority", priority, MIN_PRIORITY, MAX_PRIORITY);

        errors.merge_prefixed("command.", self.command.check());

        let timeout_seconds = self.command.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        check_range(&mut errors, "command.timeout_seconds", timeout_seconds, 1, MAX_TIMEOUT_SECONDS);

        let cpu_millis = self.resources.cpu_millis.unwrap_or(DEFAULT_CPU_MILLIS);
        check_range(&mut errors, "resources.cpu_millis", cpu_millis, 1, MAX_CPU_MILLIS);
        let memory_mib = self.resources.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        check_range(&mut errors, "resources.memory_mib", memory_mib, 1, MAX_MEMORY_MIB);
        check_labels(&mut errors, &self.resources.labels);

        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        check_range(&mut errors, "max_attempts", max_attempts, 1, MAX_MAX_ATTEMPTS);

        let metadata = self.metadata.clone().unwrap_or_else(|| serde_json::json!({}));
        if !metadata.is_object() {
            errors.add("metadata", "must be a JSON object");
        } else if metadata.to_string().len() > MAX_METADATA_BYTES {
            errors.add("metadata", format!("must be at most {MAX_METADATA_BYTES} bytes when serialised"));
        }

        errors.into_result(())?;
        let mut warnings = Vec::new();
        if let Some(deadline) = self.deadline {
            if deadline <= now {
                warnings.push(format!(
                    "the deadline {} has passed: the job expires when it is dispatched (its queue's \
                     expired_deadline decides whether it is dead-lettered or runs)",
                    deadline.to_rfc3339()
                ));
            } else if self.not_before.is_some_and(|not_before| not_before >= deadline) {
                warnings.push(
                    "not_before is not earlier than the deadline: the job expires when it is dispatched".to_owned(),
                );
            }
        }
        // A job runs with its trace context as TRACEPARENT (the worker sets it last), so
        // one in the spec's env would be lost: say so rather than drop it unannounced.
        if self.command.env.contains_key(TRACEPARENT_VARIABLE) {
            warnings.push(format!(
                "command.env.{TRACEPARENT_VARIABLE} is replaced by the job's trace context when it runs: \
                 send the value as the request's traceparent header to continue that trace"
            ));
        }
        // The ranges above were checked, so these conversions cannot fail.
        Ok(ValidJob {
            queue,
            priority: priority as i16,
            argv: self.command.argv.clone(),
            env: self.command.env.clone(),
            working_dir: self.command.working_dir.clone(),
            timeout_seconds: timeout_seconds as i32,
            cpu_millis: cpu_millis as i32,
            memory_mib: memory_mib as i32,
            labels: self.resources.labels.clone(),
            max_attempts: max_attempts as i32,
            deadline: self.deadline,
            not_before: self.not_before,
            metadata,
            warnings,
        })
    }
}

impl CommandSpec {
    fn check(&self) -> ValidationErrors {
        let mut errors = ValidationErrors::new();
        if self.argv.is_empty() {
            errors.add("argv", "must name the program to run");
        }
        if self.argv.len() > MAX_ARGV_ENTRIES {
            errors.add("argv", format!("must have at most {MAX_ARGV_ENTRIES} entries, got {}", self.argv.len()));
        }
        if self.argv.first().is_some_and(|program| program.is_empty()) {
            errors.add("argv[0]", "must not be empty");
        }
        for (index, arg) in self.argv.iter().enumerate() {
            if arg.contains('\0') {
                errors.add(format!("argv[{index}]"), "must not contain NUL bytes");
            }
        }
        if self.env.len() > MAX_ENV_ENTRIES {
            errors.add("env", format!("must have at most {MAX_ENV_ENTRIES} entries, got {}", self.env.len()));
        }
        for (name, value) in &self.env {
            if !is_env_name(name) {
                errors.add(format!("env.{name}"), "name must match [A-Za-z_][A-Za-z0-9_]*");
            }
            if value.contains('\0') {
                errors.add(format!("env.{name}"), "value must not contain NUL bytes");
            }
        }
        let command_bytes: usize = self.argv.iter().map(String::len).sum::<usize>()
            + self.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if command_bytes > MAX_COMMAND_BYTES {
            errors.add("argv", format!("argv and env together must be at most {MAX_COMMAND_BYTES} bytes"));
        }
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') || dir.contains('\0') {
                errors.add("working_dir", format!("must be an absolute path, got {dir:?}"));
            }
        }
        errors
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_labels(errors: &mut ValidationErrors, labels: &BTreeMap<String, String>) {
    if labels.len() > MAX_LABELS {
        errors.add("resources.labels", format!("must have at most {MAX_LABELS} entries"));
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            errors.add(format!("resources.labels.{key}"), "key must be 1-63 characters of [A-Za-z0-9._/-]");
        }
        // Characters, as the schema's `maxLength` counts them (not bytes).
        if value.chars().count() > 63 {
            errors.add(format!("resources.labels.{key}"), "value must be at most 63 characters");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("valid time")
    }

    fn spec(json: serde_json::Value) -> JobSpec {
        serde_json::from_value(json).expect("spec parses")
    }

    #[test]
    fn defaults_are_applied() {
        let job = spec(serde_json::json!({"command": {"argv": ["true"]}})).validate(now()).expect("valid");
        assert_eq!(job.queue, "default");
        assert_eq!(job.priority, 5);
        assert_eq!(job.timeout_seconds, 3600);
        assert_eq!((job.cpu_millis, job.memory_mib, job.max_attempts), (1000, 512, 3));
        assert_eq!(job.metadata, serde_json::json!({}));
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path() {
        let errors = spec(serde_json::json!({
            "queue": "Bad Queue",
            "priority": 11,
            "command": {"argv": [], "env": {"1X": "v"}, "working_dir": "rel", "timeout_seconds": 0},
            "resources": {"cpu_millis": 0, "memory_mib": -1, "labels": {"bad key": "v"}},
            "max_attempts": 0,
            "deadline": "2025-01-01T00:00:00Z",
            "metadata": [1]
        }))
        .validate(now())
        .expect_err("invalid");
        let fields: Vec<&str> = errors.errors().iter().map(|e| e.field.as_str()).collect();
        for expected in [
            "queue",
            "priority",
            "command.argv",
            "command.env.1X",
            "command.working_dir",
            "command.timeout_seconds",
            "resources.cpu_millis",
            "resources.memory_mib",
            "resources.labels.bad key",
            "max_attempts",
            "metadata",
        ] {
            assert!(fields.contains(&expected), "missing {expected} in {fields:?}");
        }
        let priority = errors.errors().iter().find(|e| e.field == "priority").expect("priority error");
        assert_eq!(priority.message, "must be between 1 and 10, got 11");
    }

    #[test]
    fn a_deadline_that_cannot_be_met_is_accepted_with_a_warning() {
        let late = spec(serde_json::json!({
            "command": {"argv": ["true"]},
            "deadline": "2099-01-02T00:00:00Z",
            "not_before": "2099-01-03T00:00:00Z"
        }))
        .validate(now())
        .expect("valid");
        assert_eq!(
            late.warnings,
            ["not_before is not earlier than the deadline: the job expires when it is dispatched"]
        );
        let past = spec(serde_json::json!({"command": {"argv": ["true"]}, "deadline": "2000-01-01T00:00:00Z"}))
            .validate(now())
            .expect("valid");
        assert!(
            past.warnings[0].starts_with("the deadline 2000-01-01T00:00:00+00:00 has passed"),
            "{:?}",
            past.warnings
        );
        let fine = spec(serde_json::json!({"command": {"argv": ["true"]}, "deadline": "2099-01-01T00:00:00Z"}))
            .validate(now())
            .expect("valid");
        assert!(fine.warnings.is_empty());
    }

    #[test]
    fn a_traceparent_in_the_env_is_accepted_with_a_warning_that_it_is_replaced() {
        let job = spec(serde_json::json!({
            "command": {"argv": ["true"], "env": {"TRACEPARENT": "mine", "OTHER": "kept"}}
        }))
        .validate(now())
        .expect("valid");
        assert_eq!(job.warnings.len(), 1);
        assert!(job.warnings[0].starts_with("command.env.TRACEPARENT is replaced"), "{:?}", job.warnings);
        assert_eq!(job.env.get("TRACEPARENT").map(String::as_str), Some("mine"));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let result: Result<JobSpec, _> =
            serde_json::from_value(serde_json::json!({"command": {"argv": ["true"]}, "prio": 3}));
        assert!(result.expect_err("unknown field").to_string().contains("unknown field `prio`"));
    }

    #[test]
    fn states_round_trip_and_cancel_rules() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).expect("serialises"), serde_json::json!(state.as_str()));
        }
        assert_eq!(JobState::Queued.on_cancel(), CancelOutcome::CancelledNow);
        assert_eq!(JobState::Running.on_cancel(), CancelOutcome::HandedToWorker);
        assert_eq!(JobState::Succeeded.on_cancel(), CancelOutcome::NotCancellable);
        assert_eq!(JobState::Cancelled.on_cancel(), CancelOutcome::AlreadyCancelled);
    }

    proptest::proptest! {
        #[test]
        fn priority_is_accepted_exactly_in_range(priority in -1000i64..1000) {
            let mut job = spec(serde_json::json!({"command": {"argv": ["true"]}}));
            job.priority = Some(priority);
            let accepted = job.validate(now()).is_ok();
            proptest::prop_assert_eq!(accepted, (1..=10).contains(&priority));
        }
    }
}
