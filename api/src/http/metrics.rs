//! `/metrics`: Prometheus text exposition of every queue's status (the same numbers as
//! `GET /api/v1/queues/{name}/status`, over the same 900 s window). Open, like a probe.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::http::AppState;
use crate::store::{queue_status, queues};

pub const METRICS_WINDOW_SECONDS: i64 = crate::http::queues::DEFAULT_STATUS_WINDOW_SECONDS;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", body = String)))]
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut connection = state.db.acquire().await?;
    let mut statuses = Vec::new();
    for queue in queues::list(&mut *connection).await? {
        statuses.push(queue_status::status(&mut connection, &queue, METRICS_WINDOW_SECONDS, None).await?);
    }
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&queue_status::QueueStatus) -> Option<f64>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for status in &statuses {
            if let Some(v) = value(status) {
                let _ = writeln!(out, "{name}{{queue=\"{}\"}} {v}", status.queue);
            }
        }
    };
    family("hodei_queue_length", "gauge", "Jobs ready for dispatch.", &|s| Some(s.length as f64));
    family("hodei_queue_scheduled", "gauge", "Jobs waiting for a time.", &|s| Some(s.scheduled as f64));
    family("hodei_queue_oldest_wait_seconds", "gauge", "Wait of the oldest ready job.", &|s| s.oldest_wait_seconds);
    family("hodei_queue_wait_p50_seconds", "gauge", "Median wait of jobs dispatched in the last 900 s.", &|s| {
        s.wait.p50_ms.map(|ms| ms / 1000.0)
    });
    family("hodei_queue_wait_p95_seconds", "gauge", "95th percentile wait, last 900 s.", &|s| {
        s.wait.p95_ms.map(|ms| ms / 1000.0)
    });
    family("hodei_queue_wait_p99_seconds", "gauge", "99th percentile wait, last 900 s.", &|s| {
        s.wait.p99_ms.map(|ms| ms / 1000.0)
    });
    family("hodei_queue_dispatched_recent", "gauge", "Jobs dispatched in the last 900 s.", &|s| {
        Some(s.wait.dispatched as f64)
    });
    family("hodei_queue_sla_breaches_recent", "gauge", "Dispatches past the SLA in the last 900 s.", &|s| {
        Some(s.sla_breaches as f64)
    });
    family("hodei_queue_sla_breaching_now", "gauge", "Ready jobs already past the SLA.", &|s| {
        Some(s.sla_breaching_now as f64)
    });
    family("hodei_queue_abandonment_ratio", "gauge", "Cancelled while queued per submitted, last 900 s.", &|s| {
        Some(s.abandonment_rate)
    });
    family("hodei_queue_overflow_ratio", "gauge", "Rejected, redirected or evicted per offered, last 900 s.", &|s| {
        Some(s.overflow_rate)
    });
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
