//! The control plane's Prometheus metrics: every family, and where each is recorded.
//! Counters and histograms are updated where their events happen (a submission's
//! admission, a scheduling cycle, a recorded result, a provisioning attempt, an HTTP
//! request) and live in this process; the gauges that only the database knows (queue
//! lengths and waits, workers by state, pool sizes, what tenants hold, the month's costs)
//! are read at each scrape, one query per group (`store::gauges`). Rendered as OpenMetrics text with `prometheus-client`.
//! Labels are bounded: queue, tenant, pool, state, reason, outcome, route, status class;
//! never a job or worker id. This module does no IO.

use std::time::Duration;

use hodei_core::admission::Decision;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::assignment::{CycleOutcome, Recorded};
use crate::store::dispatch::FailureResult;
use crate::store::enqueue::SubmitOutcome;
use crate::store::gauges::{MonthCost, PoolSize, QueueGauges, TenantUsage, WorkerCount};

/// The content type of the exposition, for scrapers that ask for OpenMetrics (Prometheus does).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for everyone else (`promtool check metrics`, curl).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition in the classic Prometheus text format (0.0.4): there, a counter's
/// family is named with its `_total` suffix, and there is no `# EOF` or `# UNIT`. The
/// samples are the same.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let metadata = ["# HELP ", "# TYPE "].into_iter().find(|prefix| line.starts_with(prefix));
        match metadata {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Queue status gauges aggregate this window of queue activity (as `GET
/// /api/v1/queues/{name}/status` does by default).
pub const WINDOW_SECONDS: i64 = 900;

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub tenant: String,
    /// `deferred` or `rejected`.
    pub decision: &'static str,
    /// The limit: `cpu_millis`, `memory_mib`, `max_concurrent_jobs`, `max_queued_jobs`,
    /// `monthly_budget`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubmissionLabels {
    /// The queue the job named.
    pub queue: String,
    pub tenant: String,
    pub decision: &'static str,
}

/// What admission did with a submitted job.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum AdmissionDecision {
    Accepted,
    /// Admitted to another queue through overflow redirects.
    Redirected,
    /// Admitted in the place of a lower-priority job, which was evicted.
    Evicted,
    Rejected,
    /// An idempotent retry of an earlier submission: nothing new was written.
    Replayed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    /// The full queue.
    pub queue: String,
    /// `reject`, `redirect` or `evict_lowest`.
    pub mode: &'static str,
}

impl AdmissionDecision {
    fn as_str(self) -> &'static str {
        match self {
            AdmissionDecision::Accepted => "accepted",
            AdmissionDecision::Redirected => "redirected",
            AdmissionDecision::Evicted => "evicted",
            AdmissionDecision::Rejected => "rejected",
            AdmissionDecision::Replayed => "replayed",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolActionLabels {
    pub pool: String,
    pub action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolPartLabels {
    pub pool: String,
    /// `attributed` or `idle`.
    pub part: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStatusLabels {
    pub pool: String,
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerStateLabels {
    pub pool: String,
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The matched route template (`/api/v1/jobs/{id}`), or `unmatched`.
    pub route: String,
    /// `2xx`, `4xx`, `5xx`, ...
    pub status: &'static str,
}

/// Why a failed attempt was given up: the worker reported it, or the control plane took it
/// back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureSource {
    /// The worker reported a failure (non-zero exit, an error).
    Worker,
    /// The worker stopped heartbeating: its lease expired.
    LeaseExpired,
    /// The worker did not start the assignment in time.
    AssignmentTimedOut,
    /// The worker is gone for good (replaced, its process died).
    WorkerGone,
}

impl FailureSource {
    fn as_str(self) -> &'static str {
        match self {
            FailureSource::Worker => "failed",
            FailureSource::LeaseExpired => "lease_expired",
            FailureSource::AssignmentTimedOut => "assignment_timed_out",
            FailureSource::WorkerGone => "worker_gone",
        }
    }
}

const WAIT_BUCKETS: [f64; 18] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];
const CYCLE_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const BATCH_BUCKETS: [f64; 11] = [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
const REQUEST_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const PROVISION_BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
const JOBS_RUN_BUCKETS: [f64; 13] =
    [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0];

fn wait_histogram() -> Histogram {
    Histogram::new(WAIT_BUCKETS)
}
fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}
fn provision_histogram() -> Histogram {
    Histogram::new(PROVISION_BUCKETS)
}
fn jobs_run_histogram() -> Histogram {
    Histogram::new(JOBS_RUN_BUCKETS)
}

/// The event families of this process. Made once by `serve` and shared (`AppState`, the
/// loops, the reconciler); tests and benchmarks that make their own loops get their own.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs_submitted: Family<SubmissionLabels, Counter>,
    quota_admissions: Family<QuotaLabels, Counter>,
    overflow: Family<OverflowLabels, Counter>,
    dispatch_wait: Histograms<QueueLabels>,
    submit_to_assigned: Histograms<QueueLabels>,
    submit_to_started: Histogram,
    assignments: Family<OutcomeLabels, Counter>,
    job_outcomes: Family<OutcomeLabels, Counter>,
    retries: Family<ReasonLabels, Counter>,
    dead_letters: Family<ReasonLabels, Counter>,
    sla_breaches: Family<QueueLabels, Counter>,
    abandoned: Family<QueueLabels, Counter>,
    heartbeats: Counter,
    worker_jobs_run: Histograms<PoolLabels>,
    provision_attempts: Family<PoolLabels, Counter>,
    provision_failures: Family<PoolLabels, Counter>,
    provision_duration: Histograms<PoolLabels>,
    provision_to_ready: Histograms<PoolLabels>,
    autoscaler_decisions: Family<PoolActionLabels, Counter>,
    cycle_duration: Histogram,
    cycle_batch_size: Histogram,
    requests: Histograms<RequestLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            jobs_submitted: Family::default(),
            quota_admissions: Family::default(),
            overflow: Family::default(),
            dispatch_wait: Family::new_with_constructor(wait_histogram),
            submit_to_assigned: Family::new_with_constructor(wait_histogram),
            submit_to_started: wait_histogram(),
            assignments: Family::default(),
            job_outcomes: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            sla_breaches: Family::default(),
            abandoned: Family::default(),
            heartbeats: Counter::default(),
            worker_jobs_run: Family::new_with_constructor(jobs_run_histogram),
            provision_attempts: Family::default(),
            provision_failures: Family::default(),
            provision_duration: Family::new_with_constructor(provision_histogram),
            provision_to_ready: Family::new_with_constructor(provision_histogram),
            autoscaler_decisions: Family::default(),
            cycle_duration: Histogram::new(CYCLE_BUCKETS),
            cycle_batch_size: Histogram::new(BATCH_BUCKETS),
            requests: Family::new_with_constructor(request_histogram),
            registry: Registry::default(),
        };
        // Counters get `_total` from the encoder.
        let r = &mut registry;
        r.register(
            "hodei_jobs_submitted",
            "Jobs submitted, by the queue they named, tenant and admission decision.",
            metrics.jobs_submitted.clone(),
        );
        r.register(
            "hodei_tenant_quota_admissions",
            "Jobs a tenant's quota deferred or rejected at submission, by tenant, decision and the limit (reason).",
            metrics.quota_admissions.clone(),
        );
        r.register(
            "hodei_queue_overflow",
            "Jobs that found their queue full, by overflow mode.",
            metrics.overflow.clone(),
        );
        r.register(
            "hodei_dispatch_wait_seconds",
            "Time a job waited in its queue before the scheduling cycle assigned it.",
            metrics.dispatch_wait.clone(),
        );
        r.register(
            "hodei_job_submit_to_assigned_seconds",
            "Time from a job's submission to the assignment of each of its attempts.",
            metrics.submit_to_assigned.clone(),
        );
        r.register(
            "hodei_job_submit_to_started_seconds",
            "Time from a job's submission to the start of each of its attempts on a worker.",
            metrics.submit_to_started.clone(),
        );
        r.register(
            "hodei_assignments",
            "Attempts by what became of their assignment: assigned, started, timed_out, lease_expired, worker_gone.",
            metrics.assignments.clone(),
        );
        r.register(
            "hodei_job_results",
            "Results recorded for attempts, by outcome: succeeded, retry_scheduled, dead_lettered, cancelled, stale.",
            metrics.job_outcomes.clone(),
        );
        r.register("hodei_job_retries", "Failed attempts scheduled for a retry, by reason.", metrics.retries.clone());
        r.register(
            "hodei_dead_letters",
            "Jobs that went to the dead-letter queue, by reason.",
            metrics.dead_letters.clone(),
        );
        r.register(
            "hodei_sla_breaches",
            "Jobs assigned after waiting longer than their queue's SLA.",
            metrics.sla_breaches.clone(),
        );
        r.register("hodei_jobs_abandoned", "Jobs cancelled while they waited in a queue.", metrics.abandoned.clone());
        r.register("hodei_worker_heartbeats", "Worker heartbeats received.", metrics.heartbeats.clone());
        r.register(
            "hodei_worker_jobs_run",
            "Jobs a worker had run when it left: deregistered, or marked gone once silent (how much workers are reused).",
            metrics.worker_jobs_run.clone(),
        );
        r.register(
            "hodei_pool_provision_attempts",
            "Provisioning attempts started, by pool.",
            metrics.provision_attempts.clone(),
        );
        r.register(
            "hodei_pool_provision_failures",
            "Provisioning attempts that failed, by pool.",
            metrics.provision_failures.clone(),
        );
        r.register(
            "hodei_pool_provision_duration_seconds",
            "Time a provider took to answer a provisioning request, by pool.",
            metrics.provision_duration.clone(),
        );
        r.register(
            "hodei_pool_provision_to_ready_seconds",
            "Time from the start of a member's provisioning attempt to its worker registering, by pool.",
            metrics.provision_to_ready.clone(),
        );
        r.register(
            "hodei_autoscaler_decisions",
            "Autoscaler decisions, by pool and action (scale_out, scale_in, hold).",
            metrics.autoscaler_decisions.clone(),
        );
        r.register(
            "hodei_scheduler_cycle_duration_seconds",
            "Duration of one scheduling cycle in this replica.",
            metrics.cycle_duration.clone(),
        );
        r.register(
            "hodei_scheduler_cycle_batch_size",
            "Attempts one scheduling cycle assigned.",
            metrics.cycle_batch_size.clone(),
        );
        r.register(
            "hodei_http_request_duration_seconds",
            "HTTP requests, by method, matched route and status class.",
            metrics.requests.clone(),
        );
        Self { registry, ..metrics }
    }

    /// A submission's jobs (naming `named_queues`, in order) by what admission decided:
    /// every path that submits (the API, schedules) counts through this, after its commit.
    pub fn record_submission(&self, tenant: &str, named_queues: &[&str], outcome: &SubmitOutcome) {
        match outcome {
            SubmitOutcome::Created { decisions, deferred, evicted, .. } => {
                self.record_admission(tenant, named_queues, decisions);
                self.record_deferrals(tenant, deferred);
                self.record_dead_letters("evicted", *evicted);
            }
            SubmitOutcome::OverQuota(rejection) => self.record_quota_rejection(
                tenant,
                named_queues.first().copied().unwrap_or_default(),
                rejection.resource().field(),
                named_queues.len() as u64,
            ),
            SubmitOutcome::Replayed { .. } => {
                for queue in named_queues {
                    self.record_submitted(tenant, queue, AdmissionDecision::Replayed, 1);
                }
            }
            SubmitOutcome::Rejected { queue, .. } => {
                self.record_submitted(tenant, queue, AdmissionDecision::Rejected, named_queues.len() as u64)
            }
            SubmitOutcome::KeyReused | SubmitOutcome::UnknownQueues(_) => {}
        }
    }

    /// A submission's admission: one decision per job, in order (`jobs` named `queues`).
    pub fn record_admission(&self, tenant: &str, named_queues: &[&str], decisions: &[Decision]) {
        for (named, decision) in named_queues.iter().zip(decisions) {
            let (kind, overflowed) = match decision {
                Decision::Accept { .. } => (AdmissionDecision::Accepted, None),
                Decision::Redirect { from, .. } => (AdmissionDecision::Redirected, Some((from, "redirect"))),
                Decision::Evict { queue, .. } => (AdmissionDecision::Evicted, Some((queue, "evict_lowest"))),
                Decision::Reject { queue, .. } => (AdmissionDecision::Rejected, Some((queue, "reject"))),
            };
            self.record_submitted(tenant, named, kind, 1);
            if let Some((queue, mode)) = overflowed {
                self.overflow.get_or_create(&OverflowLabels { queue: queue.clone(), mode }).inc();
            }
        }
    }

    /// The jobs of a submission the tenant's quota deferred (counted as accepted too).
    pub fn record_deferrals(&self, tenant: &str, deferred: &[crate::store::enqueue::Deferred]) {
        for job in deferred {
            let labels =
                QuotaLabels { tenant: tenant.to_owned(), decision: "deferred", reason: job.excess.resource.field() };
            self.quota_admissions.get_or_create(&labels).inc();
        }
    }

    /// A submission of `jobs` the tenant's quota refused by `limit`.
    pub fn record_quota_rejection(&self, tenant: &str, queue: &str, limit: &'static str, jobs: u64) {
        let labels = SubmissionLabels { queue: queue.to_owned(), tenant: tenant.to_owned(), decision: "rejected" };
        self.jobs_submitted.get_or_create(&labels).inc_by(jobs);
        let labels = QuotaLabels { tenant: tenant.to_owned(), decision: "rejected", reason: limit };
        self.quota_admissions.get_or_create(&labels).inc_by(jobs);
    }

    /// `jobs` submitted to `queue` with one decision (a whole batch rejected, replayed).
    pub fn record_submitted(&self, tenant: &str, queue: &str, decision: AdmissionDecision, jobs: u64) {
        let labels =
            SubmissionLabels { queue: queue.to_owned(), tenant: tenant.to_owned(), decision: decision.as_str() };
        self.jobs_submitted.get_or_create(&labels).inc_by(jobs);
        if decision == AdmissionDecision::Rejected {
            self.overflow.get_or_create(&OverflowLabels { queue: queue.to_owned(), mode: "reject" }).inc_by(jobs);
        }
    }

    /// One scheduling cycle: its duration, its batch, and each assignment's waits.
    pub fn record_cycle(&self, outcome: &CycleOutcome, took: Duration) {
        self.cycle_duration.observe(took.as_secs_f64());
        self.cycle_batch_size.observe(outcome.assigned.len() as f64);
        for assigned in &outcome.assigned {
            let queue = QueueLabels { queue: assigned.queue.clone() };
            self.dispatch_wait.get_or_create(&queue).observe(assigned.wait_ms as f64 / 1000.0);
            self.submit_to_assigned.get_or_create(&queue).observe(assigned.since_submission_ms as f64 / 1000.0);
            if assigned.sla_breached {
                self.sla_breaches.get_or_create(&queue).inc();
            }
        }
        self.count_assignments("assigned", outcome.assigned.len());
        self.record_dead_letters("deadline_expired", outcome.expired);
    }

    fn count_assignments(&self, outcome: &'static str, attempts: usize) {
        if attempts > 0 {
            self.assignments.get_or_create(&OutcomeLabels { outcome }).inc_by(attempts as u64);
        }
    }

    /// Attempts a worker started, with how long after its submission each one did.
    pub fn record_starts(&self, since_submission: &[Duration]) {
        for since in since_submission {
            self.submit_to_started.observe(since.as_secs_f64());
        }
        self.count_assignments("started", since_submission.len());
    }

    /// Results a worker reported.
    pub fn record_results(&self, recorded: &[Recorded]) {
        for result in recorded {
            match result {
                Recorded::Succeeded => self.count_outcome("succeeded"),
                Recorded::Stale => self.count_outcome("stale"),
                Recorded::Failed(failure) => self.record_failure(FailureSource::Worker, failure),
            }
        }
    }

    /// A failed attempt, reported by its worker or taken back by the control plane.
    pub fn record_failure(&self, source: FailureSource, result: &FailureResult) {
        match source {
            FailureSource::Worker => {}
            FailureSource::LeaseExpired => self.count_assignments("lease_expired", 1),
            FailureSource::AssignmentTimedOut => self.count_assignments("timed_out", 1),
            FailureSource::WorkerGone => self.count_assignments("worker_gone", 1),
        }
        match result {
            FailureResult::Stale => self.count_outcome("stale"),
            FailureResult::RetryScheduled { .. } => {
                self.count_outcome("retry_scheduled");
                self.retries.get_or_create(&ReasonLabels { reason: source.as_str().to_owned() }).inc();
            }
            FailureResult::DeadLettered { reason } => {
                self.count_outcome("dead_lettered");
                self.dead_letters.get_or_create(&ReasonLabels { reason: (*reason).to_owned() }).inc();
            }
            FailureResult::Cancelled => self.count_outcome("cancelled"),
        }
    }

    fn count_outcome(&self, outcome: &'static str) {
        self.job_outcomes.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Jobs dead-lettered outside a result (evicted by a full queue, with the submission
    /// that displaced them; expired deadlines, by the scheduling cycle).
    pub fn record_dead_letters(&self, reason: &str, jobs: u64) {
        if jobs > 0 {
            self.dead_letters.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc_by(jobs);
        }
    }

    /// A job cancelled while it waited in `queue`.
    pub fn record_abandoned(&self, queue: &str) {
        self.abandoned.get_or_create(&QueueLabels { queue: queue.to_owned() }).inc();
    }

    pub fn record_heartbeat(&self) {
        self.heartbeats.inc();
    }

    /// A worker of `pool` left after running `jobs_run` jobs: it deregistered, or the lease
    /// reaper marked it gone.
    pub fn record_worker_left(&self, pool: &str, jobs_run: i64) {
        self.worker_jobs_run.get_or_create(&PoolLabels { pool: pool.to_owned() }).observe(jobs_run.max(0) as f64);
    }

    pub fn record_provision_attempt(&self, pool: &str) {
        self.provision_attempts.get_or_create(&PoolLabels { pool: pool.to_owned() }).inc();
    }

    /// A provider answered a provisioning request (or timed out) after `took`.
    pub fn record_provision_answer(&self, pool: &str, took: Duration) {
        self.provision_duration.get_or_create(&PoolLabels { pool: pool.to_owned() }).observe(took.as_secs_f64());
    }

    /// A member of `pool` became ready `took` after its provisioning attempt started.
    pub fn record_ready(&self, pool: &str, took: Duration) {
        self.provision_to_ready.get_or_create(&PoolLabels { pool: pool.to_owned() }).observe(took.as_secs_f64());
    }

    pub fn record_provision_failure(&self, pool: &str) {
        self.provision_failures.get_or_create(&PoolLabels { pool: pool.to_owned() }).inc();
    }

    pub fn record_autoscaler_decision(&self, pool: &str, action: &'static str) {
        self.autoscaler_decisions.get_or_create(&PoolActionLabels { pool: pool.to_owned(), action }).inc();
    }

    /// An HTTP request answered with `status` after `took`.
    pub fn record_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let status = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        // Only the methods the API knows: a client's invented method is not a new series.
        let method = match method {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
            _ => "other",
        };
        let labels = RequestLabels { method: method.to_owned(), route: route.to_owned(), status };
        self.requests.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The whole exposition: this process's event families, then the gauges read for
    /// this scrape.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::with_capacity(64 * 1024);
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &snapshot.registry());
        let _ = encode_eof(&mut out);
        out
    }
}

/// What a scrape read from the database and the connection pool.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub queues: Vec<QueueGauges>,
    pub workers: Vec<WorkerCount>,
    pub pools: Vec<PoolSize>,
    pub tenants: Vec<TenantUsage>,
    pub costs: Vec<MonthCost>,
    pub database: DatabasePool,
}

/// The process's database connection pool at the scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatabasePool {
    pub connections: u32,
    pub idle: u32,
    pub max: u32,
}

type Gauges<L> = Family<L, Gauge<f64, std::sync::atomic::AtomicU64>>;

impl Snapshot {
    /// The snapshot as gauge families of a registry made for this scrape (so a queue,
    /// pool or state that no longer exists is not reported).
    fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        let queue_gauge =
            |registry: &mut Registry, name: &str, help: &str, value: &dyn Fn(&QueueGauges) -> Option<f64>| {
                let family = Gauges::<QueueLabels>::default();
                for queue in &self.queues {
                    if let Some(v) = value(queue) {
                        family.get_or_create(&QueueLabels { queue: queue.queue.clone() }).set(v);
                    }
                }
                registry.register(name, help, family);
            };
        let r = &mut registry;
        queue_gauge(r, "hodei_queue_length", "Jobs ready for dispatch.", &|q| Some(q.length as f64));
        queue_gauge(r, "hodei_queue_scheduled", "Jobs waiting for a time (not-before, retry backoff).", &|q| {
            Some(q.scheduled as f64)
        });
        queue_gauge(r, "hodei_queue_oldest_wait_seconds", "Wait of the oldest ready job.", &|q| q.oldest_wait_seconds);
        queue_gauge(r, "hodei_queue_wait_p50_seconds", "Median wait of jobs dispatched in the last 900 s.", &|q| {
            q.wait_p50_ms.map(|ms| ms / 1000.0)
        });
        queue_gauge(r, "hodei_queue_wait_p95_seconds", "95th percentile wait, last 900 s.", &|q| {
            q.wait_p95_ms.map(|ms| ms / 1000.0)
        });
        queue_gauge(r, "hodei_queue_wait_p99_seconds", "99th percentile wait, last 900 s.", &|q| {
            q.wait_p99_ms.map(|ms| ms / 1000.0)
        });
        queue_gauge(r, "hodei_queue_dispatched_recent", "Jobs dispatched in the last 900 s.", &|q| {
            Some(q.dispatched as f64)
        });
        queue_gauge(r, "hodei_queue_sla_breaches_recent", "Dispatches past the SLA in the last 900 s.", &|q| {
            Some(q.sla_breaches as f64)
        });
        queue_gauge(r, "hodei_queue_sla_breaching_now", "Ready jobs already past the SLA.", &|q| {
            Some(q.sla_breaching_now as f64)
        });
        queue_gauge(r, "hodei_queue_abandonment_ratio", "Cancelled while queued per submitted, last 900 s.", &|q| {
            Some(q.abandonment_ratio())
        });
        queue_gauge(
            r,
            "hodei_queue_overflow_ratio",
            "Rejected, redirected or evicted per offered, last 900 s.",
            &|q| Some(q.overflow_ratio()),
        );

        let workers = Gauges::<WorkerStateLabels>::default();
        for count in &self.workers {
            let labels = WorkerStateLabels { pool: count.pool.clone(), state: count.state.clone() };
            workers.get_or_create(&labels).set(count.workers as f64);
        }
        r.register("hodei_workers", "Live workers, by pool and state.", workers);

        let desired = Gauges::<PoolLabels>::default();
        let maximum = Gauges::<PoolLabels>::default();
        let busy = Gauges::<PoolLabels>::default();
        let members = Gauges::<PoolStatusLabels>::default();
        for pool in &self.pools {
            let labels = PoolLabels { pool: pool.pool.clone() };
            desired.get_or_create(&labels).set(pool.desired as f64);
            maximum.get_or_create(&labels).set(pool.max as f64);
            busy.get_or_create(&labels).set(pool.busy as f64);
            for (status, count) in [
                ("provisioning", pool.provisioning),
                ("ready", pool.ready),
                ("draining", pool.draining),
                ("failed", pool.failed),
            ] {
                members.get_or_create(&PoolStatusLabels { pool: pool.pool.clone(), status }).set(count as f64);
            }
        }
        r.register(
            "hodei_pool_desired_workers",
            "Workers a pool should have: a static pool's size, a dynamic pool's last decision.",
            desired,
        );
        r.register("hodei_pool_max_workers", "A pool's maximum size.", maximum);
        r.register("hodei_pool_members", "A pool's members, by provisioning status.", members);
        r.register("hodei_pool_busy_workers", "A pool's live workers running at least one job.", busy);

        let running = Gauges::<TenantLabels>::default();
        let cpu = Gauges::<TenantLabels>::default();
        let memory = Gauges::<TenantLabels>::default();
        for usage in &self.tenants {
            let labels = TenantLabels { tenant: usage.tenant.clone() };
            running.get_or_create(&labels).set(usage.running_jobs as f64);
            cpu.get_or_create(&labels).set(usage.cpu_millis as f64 / 1000.0);
            memory.get_or_create(&labels).set(usage.memory_mib as f64 * 1024.0 * 1024.0);
        }
        r.register(
            "hodei_tenant_running_jobs",
            "Attempts of a tenant's jobs that workers hold now (assigned or running).",
            running,
        );
        r.register("hodei_tenant_cpu_cores", "CPU (cores) a tenant's assigned and running attempts reserve.", cpu);
        r.register(
            "hodei_tenant_memory_bytes",
            "Memory (bytes) a tenant's assigned and running attempts reserve.",
            memory,
        );

        let pool_cost = Gauges::<PoolPartLabels>::default();
        let tenant_cost = Gauges::<TenantLabels>::default();
        for cost in &self.costs {
            if cost.scope == "pool" {
                for (part, amount) in [("attributed", cost.attributed), ("idle", cost.idle)] {
                    pool_cost.get_or_create(&PoolPartLabels { pool: cost.key.clone(), part }).set(amount);
                }
            } else {
                tenant_cost.get_or_create(&TenantLabels { tenant: cost.key.clone() }).set(cost.attributed);
            }
        }
        r.register(
            "hodei_pool_cost_month_usd",
            "What a pool's instances cost this UTC month so far (USD, from the hourly roll-up), attributed to attempts or idle.",
            pool_cost,
        );
        r.register(
            "hodei_tenant_cost_month_usd",
            "What a tenant's attempts were charged this UTC month so far (USD, from the hourly roll-up).",
            tenant_cost,
        );

        let database = self.database;
        let gauge = |value: u32| {
            let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            gauge.set(f64::from(value));
            gauge
        };
        r.register(
            "hodei_db_pool_connections",
            "Open connections in this process's database pool.",
            gauge(database.connections),
        );
        r.register("hodei_db_pool_idle_connections", "Idle connections in the database pool.", gauge(database.idle));
        r.register(
            "hodei_db_pool_max_connections",
            "The database pool's limit (database_max_connections).",
            gauge(database.max),
        );
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_as_openmetrics() {
        let metrics = Metrics::new();
        metrics.record_submitted("acme", "default", AdmissionDecision::Rejected, 2);
        metrics.record_request("GET", "/api/v1/jobs/{id}", 404, Duration::from_millis(3));
        let snapshot = Snapshot {
            database: DatabasePool { connections: 3, idle: 1, max: 16 },
            workers: vec![WorkerCount { pool: "local".into(), state: "idle".into(), workers: 2 }],
            tenants: vec![TenantUsage { tenant: "acme".into(), running_jobs: 2, cpu_millis: 1500, memory_mib: 512 }],
            ..Snapshot::default()
        };
        let text = metrics.render(&snapshot);
        assert!(
            text.contains("hodei_jobs_submitted_total{queue=\"default\",tenant=\"acme\",decision=\"rejected\"} 2"),
            "{text}"
        );
        assert!(text.contains("hodei_queue_overflow_total{queue=\"default\",mode=\"reject\"} 2"), "{text}");
        assert!(text.contains("route=\"/api/v1/jobs/{id}\",status=\"4xx\""), "{text}");
        assert!(text.contains("hodei_workers{pool=\"local\",state=\"idle\"} 2.0"), "{text}");
        assert!(text.contains("hodei_db_pool_max_connections 16.0"), "{text}");
        assert!(text.contains("hodei_tenant_running_jobs{tenant=\"acme\"} 2.0"), "{text}");
        assert!(text.contains("hodei_tenant_cpu_cores{tenant=\"acme\"} 1.5"), "{text}");
        assert!(text.contains("hodei_tenant_memory_bytes{tenant=\"acme\"} 536870912.0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);

        let classic = to_prometheus_text(&text);
        assert!(classic.contains("# TYPE hodei_jobs_submitted_total counter\n"), "{classic}");
        assert!(classic.contains("# HELP hodei_jobs_submitted_total Jobs submitted"), "{classic}");
        assert!(classic.contains("# TYPE hodei_dispatch_wait_seconds histogram\n"), "{classic}");
        assert!(classic.contains("hodei_workers{pool=\"local\",state=\"idle\"} 2.0\n"), "{classic}");
        assert!(!classic.contains("# EOF"), "{classic}");
    }
}
