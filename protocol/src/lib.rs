//! The worker protocol: every request a worker agent (`hodei-worker`) sends the API under
//! `/api/v1/workers`, and every reply it gets, as plain serde types. The API's handlers
//! and the agent both speak through these types, so a change one side misses does not
//! compile.
//!
//! The conversation: `POST /workers/register` ([`RegisterWorker`] → [`Registered`]), then
//! `POST /workers/{id}/heartbeat` ([`Heartbeat`] → [`HeartbeatReply`]: cancels, drain,
//! intervals), `GET /workers/{id}/assignments` ([`PollQuery`] → [`Assignments`]), output
//! in `POST /workers/{id}/jobs/{job_id}/logs` ([`LogShipment`]), starts and results in
//! batches in `POST /workers/{id}/reports` ([`Reports`] → [`ReportsReply`]) or one by one
//! ([`StartReport`], [`FinishReport`] → [`FinishReply`]), and `POST
//! /workers/{id}/deregister`.
//!
//! With the `openapi` feature the types also derive their OpenAPI schemas (utoipa), as the
//! API publishes them. Doc comments on the types and their fields *are* those schemas'
//! descriptions: plain `//` comments are for notes that must not reach the document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod trace_context;

/// Longest a long poll may wait.
pub const MAX_POLL_SECONDS: u64 = 60;
/// How long a long poll waits when it does not say.
pub const DEFAULT_POLL_SECONDS: u64 = 20;
/// Most starts, and most results, in one batch of reports.
pub const MAX_REPORTS: usize = 1000;
/// Most chunks, and bytes per chunk (decoded), in one shipment. The whole request must
/// also fit the API's body limit, base64 and JSON included.
pub const MAX_LOG_CHUNKS: usize = 256;
pub const MAX_LOG_CHUNK_BYTES: usize = 64 * 1024;

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Registering,
    Idle,
    Busy,
    Draining,
    Unhealthy,
    Gone,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Registering => "registering",
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Draining => "draining",
            WorkerState::Unhealthy => "unhealthy",
            WorkerState::Gone => "gone",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            WorkerState::Registering,
            WorkerState::Idle,
            WorkerState::Busy,
            WorkerState::Draining,
            WorkerState::Unhealthy,
            WorkerState::Gone,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

// Registration: `POST /workers/register`, with the registration token.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterWorker {
    pub name: String,
    /// The pool the worker belongs to (default `default`).
    pub pool: Option<String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub cpu_millis: i64,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub memory_mib: i64,
    /// Jobs it runs at once (default 1).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1024))]
    pub slots: Option<i64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The cloud instance it runs on, if any.
    pub instance_id: Option<String>,
}

/// A registered worker's credentials: `token` is shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registered {
    pub worker_id: Uuid,
    pub token: String,
    pub heartbeat_seconds: u32,
    /// How long the worker's attempts hold without a heartbeat getting through: after
    /// that the control plane may give them to another worker, so the worker stops them.
    // The API always sends it (the schema says so); `None` only when an API from before
    // leases answers, and the agent then assumes its own `--lease-seconds`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = u32, required = true))]
    pub lease_seconds: Option<u32>,
}

// Heartbeat: `POST /workers/{id}/heartbeat`, with the worker's token.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// `idle`, `busy` or `draining`.
    pub state: WorkerState,
    /// The result of the pool's health command, if it has one (default true).
    #[serde(default = "healthy_by_default")]
    pub healthy: bool,
    /// The machine is being reclaimed (a spot interruption notice): the worker drains, and
    /// its capacity should be replaced now.
    #[serde(default)]
    pub interruption_notice: bool,
}

fn healthy_by_default() -> bool {
    true
}

/// What the control plane asks of the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatReply {
    pub heartbeat_seconds: u32,
    /// As in the registration reply.
    // Always sent; `None` only from an API from before leases (see `Registered`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = u32, required = true))]
    pub lease_seconds: Option<u32>,
    /// Jobs on this worker whose cancellation was requested: stop them and report.
    pub cancel: Vec<Uuid>,
    /// Stop taking work, finish the running jobs, deregister and exit.
    pub drain: bool,
}

// Work: `GET /workers/{id}/assignments?wait_seconds=`, a long poll.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    /// Wait up to this many seconds for work (default 20, at most 60).
    #[cfg_attr(feature = "openapi", param(minimum = 0, maximum = 60))]
    pub wait_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignments {
    pub assignments: Vec<Assignment>,
}

/// What a worker needs to run one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    pub job_id: Uuid,
    /// Report the start and the result with this attempt number.
    pub attempt: i32,
    pub argv: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub timeout_seconds: i32,
    /// The job's W3C trace context (`traceparent`, version `00`), from the request that
    /// submitted it: the job runs with it as `TRACEPARENT`, and the worker's log lines
    /// about the job carry its trace id. Absent for jobs submitted without one.
    // Absent rather than null, so an agent from before trace contexts parses the
    // assignment; such an agent ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"))]
    pub traceparent: Option<String>,
}

// Output: `POST /workers/{id}/jobs/{job_id}/logs`.

/// Output of one attempt, in the order it was written. Each chunk carries its bytes in
/// `data_base64` (exact: any bytes, NUL included) or, from older agents, in `data` as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LogShipment {
    pub attempt: i32,
    pub chunks: Vec<NewChunk>,
}

/// A chunk as a worker sends it: its bytes in `data_base64` (exact), or in `data` as text
/// (older agents); exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewChunk {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The output as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The output's exact bytes, standard base64 (RFC 4648, padded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

// Starts and results, one at a time: `POST /workers/{id}/jobs/{job_id}/start` and `/finish`.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StartReport {
    pub attempt: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FinishReport {
    pub attempt: i32,
    /// The process's exit code; absent when it did not exit on its own (killed, failed to start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What went wrong, if anything (a timeout, a failure to start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FinishReply {
    /// `succeeded`, `retry_scheduled`, `dead_lettered` or `cancelled`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub outcome: Outcome,
}

// Starts and results in batches: `POST /workers/{id}/reports`.

/// Starts and results of several attempts at once; starts are recorded first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Reports {
    #[serde(default)]
    pub started: Vec<StartedAttempt>,
    #[serde(default)]
    pub finished: Vec<FinishedAttempt>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StartedAttempt {
    pub job_id: Uuid,
    pub attempt: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FinishedAttempt {
    pub job_id: Uuid,
    pub attempt: i32,
    // Absent when the process did not exit on its own (killed, failed to start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    // What went wrong, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What became of each report, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportsReply {
    pub started: Vec<ReportOutcome>,
    pub finished: Vec<ReportOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportOutcome {
    pub job_id: Uuid,
    /// Starts: `recorded` or `stale`. Results: `succeeded`, `retry_scheduled`,
    /// `dead_lettered`, `cancelled` or `stale` (refused; drop it).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub outcome: Outcome,
}

/// What became of a start or a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A start, recorded: the job is running.
    Recorded,
    /// A result: the job succeeded.
    Succeeded,
    /// A result: the attempt failed and the job will be retried.
    RetryScheduled,
    /// A result: the attempt failed and the job has no attempts left.
    DeadLettered,
    /// A result: the job's cancellation was requested, and it ended cancelled.
    Cancelled,
    /// Refused: the attempt is no longer this worker's current one. Drop the report.
    Stale,
    // Not sent by this API: an outcome a newer API added, which an older agent reads as
    // taken (only `stale` asks it to act), instead of failing to read the whole reply.
    #[serde(other)]
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Recorded => "recorded",
            Outcome::Succeeded => "succeeded",
            Outcome::RetryScheduled => "retry_scheduled",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Cancelled => "cancelled",
            Outcome::Stale => "stale",
            Outcome::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_outcome_from_a_newer_api_is_read_not_refused() {
        let read: super::Outcome = serde_json::from_str("\"postponed\"").expect("readable");
        assert_eq!(read, super::Outcome::Unknown);
        let stale: super::Outcome = serde_json::from_str("\"stale\"").expect("readable");
        assert_eq!(stale, super::Outcome::Stale);
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn outcomes_and_states_are_snake_case_strings() {
        for outcome in [
            Outcome::Recorded,
            Outcome::Succeeded,
            Outcome::RetryScheduled,
            Outcome::DeadLettered,
            Outcome::Cancelled,
            Outcome::Stale,
        ] {
            assert_eq!(serde_json::to_value(outcome).expect("serializes"), json!(outcome.as_str()));
        }
        for state in ["registering", "idle", "busy", "draining", "unhealthy", "gone"] {
            let parsed = WorkerState::parse(state).expect("a state");
            assert_eq!(serde_json::to_value(parsed).expect("serializes"), json!(state));
        }
    }

    #[test]
    fn absent_options_are_left_out_of_reports_and_output() {
        let finished = FinishedAttempt { job_id: Uuid::nil(), attempt: 2, exit_code: None, error: Some("x".into()) };
        assert_eq!(
            serde_json::to_value(&finished).expect("serializes"),
            json!({"job_id": Uuid::nil(), "attempt": 2, "error": "x"})
        );
        let chunk = NewChunk { stream: "stdout".into(), data: None, data_base64: Some("eA==".into()) };
        assert_eq!(
            serde_json::to_value(&chunk).expect("serializes"),
            json!({"stream": "stdout", "data_base64": "eA=="})
        );
    }

    #[test]
    fn replies_without_a_lease_parse() {
        let id = Uuid::nil();
        let registered: Registered =
            serde_json::from_value(json!({"worker_id": id, "token": "t", "heartbeat_seconds": 5})).expect("parses");
        assert_eq!(registered.lease_seconds, None);
        let reply: HeartbeatReply =
            serde_json::from_value(json!({"heartbeat_seconds": 5, "cancel": [id], "drain": false})).expect("parses");
        assert_eq!((reply.lease_seconds, reply.cancel), (None, vec![id]));
        let defaults: Heartbeat = serde_json::from_value(json!({"state": "idle"})).expect("parses");
        assert!(defaults.healthy);
    }

    #[test]
    fn an_assignment_without_a_trace_context_parses_and_is_sent_without_one() {
        let sent = json!({
            "job_id": Uuid::nil(), "attempt": 1, "argv": ["true"], "env": {},
            "working_dir": null, "timeout_seconds": 5,
        });
        let assignment: Assignment = serde_json::from_value(sent.clone()).expect("parses");
        assert_eq!(assignment.traceparent, None);
        assert_eq!(serde_json::to_value(&assignment).expect("serializes"), sent);
        let traced = Assignment {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            ..assignment
        };
        let value = serde_json::to_value(&traced).expect("serializes");
        assert_eq!(value["traceparent"], json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    }
}
