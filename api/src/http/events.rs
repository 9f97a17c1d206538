//! `/api/v1/events`: the job event stream, read by cursor, and `/api/v1/events/stream`,
//! the same stream as Server-Sent Events. Tenant keys see their own tenant's events;
//! admin keys see all.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, Problem, Query};
use crate::http::AppState;
use crate::store::events::{self, EventFilter, StreamFilter};
use hodei_core::names::check_resource_name;
use hodei_core::ValidationErrors;

pub const DEFAULT_EVENT_PAGE: i64 = 100;
pub const MAX_EVENT_PAGE: i64 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events)).routes(routes!(stream_events))
}

/// The kinds of job events.
pub const EVENT_KINDS: [&str; 11] = [
    "job.submitted",
    "job.queued",
    "job.assigned",
    "job.started",
    "job.succeeded",
    "job.retry_scheduled",
    "job.dead_lettered",
    "job.cancel_requested",
    "job.cancelled",
    "job.retried",
    "job.redriven",
];

/// How often a follower with nothing new looks again.
const STREAM_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// How often an idle stream sends a heartbeat comment, unless `AppState` says otherwise.
pub const DEFAULT_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// The comment an idle stream sends (`: heartbeat`), which keeps proxies from closing it.
pub const HEARTBEAT: &str = "heartbeat";

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Start after this stream position (0 or absent: the beginning). A `Last-Event-ID`
    /// header, which a reconnecting client sends, wins.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Only this job's events.
    pub job_id: Option<Uuid>,
    /// Only events of jobs in this queue.
    #[param(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub queue: Option<String>,
    /// Only these kinds, comma-separated (`job.succeeded,job.dead_lettered`).
    #[param(
        pattern = "^(job\\.(submitted|queued|assigned|started|succeeded|retry_scheduled|dead_lettered|cancel_requested|cancelled|retried|redriven))(,job\\.(submitted|queued|assigned|started|succeeded|retry_scheduled|dead_lettered|cancel_requested|cancelled|retried|redriven))*$"
    )]
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Return events after this position (`next_after` of the previous call); 0 or absent
    /// for the beginning. With `job_id`, the position is the job's event `version`.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Only events of this job, in the order its changes committed (by `version`).
    pub job_id: Option<Uuid>,
    /// At most this many events, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// One entry of the job event stream.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobEvent {
    /// Stream position; pass the last one seen as `after` to continue.
    pub id: i64,
    pub job_id: Uuid,
    pub tenant: String,
    /// What happened, e.g. `job.submitted`, `job.cancelled`, `job.cancel_requested`.
    pub kind: String,
    /// The job's state after the event.
    pub state: String,
    pub attempt: i32,
    /// The job's own event number, 1 for `job.submitted`: the order in which its changes
    /// committed.
    pub version: i32,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub at: DateTime<Utc>,
}

impl From<events::JobEvent> for JobEvent {
    fn from(event: events::JobEvent) -> Self {
        let events::JobEvent { id, job_id, tenant, kind, state, attempt, version, data, at } = event;
        Self { id, job_id, tenant, kind, state, attempt, version, data, at }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<JobEvent>,
    /// Pass as `after` to continue; equal to the request's `after` when nothing is new.
    pub next_after: i64,
}

/// Job events after a cursor, oldest first. Following `next_after` never skips an event.
/// The whole stream is in stream-position order; one job's events (`job_id`) are in the
/// order its changes committed, numbered by `version`, which is the order to fold them in.
#[utoipa::path(
    get, path = "/events", tag = "events", security(("bearer" = [])), params(EventsQuery),
    responses((status = 200, body = EventPage), (status = 400, body = Problem, content_type = "application/problem+json"))
)]
async fn list_events(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<EventsQuery>,
) -> Result<axum::Json<EventPage>, ApiError> {
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request("invalid_query", format!("after: must not be negative, got {after}")));
    }
    let limit = query.limit.unwrap_or(DEFAULT_EVENT_PAGE);
    if !(1..=MAX_EVENT_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit: must be between 1 and {MAX_EVENT_PAGE}, got {limit}"),
        ));
    }
    let filter = EventFilter { tenant_scope: principal.tenant_scope(), job_id: query.job_id, after, limit };
    let events = events::list_after(&state.db, &filter).await?;
    let next_after = events
        .last()
        .map(|event| if query.job_id.is_some() { i64::from(event.version) } else { event.id })
        .unwrap_or(after);
    Ok(axum::Json(EventPage { events: events.into_iter().map(JobEvent::from).collect(), next_after }))
}

/// One message of the Server-Sent Events stream.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StreamEvent {
    /// The event's stream position (what `Last-Event-ID` resumes after).
    pub id: String,
    /// Its kind, e.g. `job.submitted`.
    pub event: String,
    /// The event as JSON: a `JobEvent`, as `GET /events` returns it.
    pub data: String,
}

/// Follow the job event stream as Server-Sent Events: each event's `id` is its stream
/// position and its data the event as JSON (as in `GET /events`). A client that
/// reconnects with `Last-Event-ID` (or `after`) resumes after the last event it saw and
/// misses none. A comment every 15 s keeps idle connections open.
#[utoipa::path(
    get, path = "/events/stream", tag = "events", security(("bearer" = [])), params(StreamQuery,
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, minimum = 0, description = "Resume after this stream position")),
    responses(
        (status = 200, description = "`text/event-stream`: `id: <position>`, `event: <kind>`, `data: <JobEvent as JSON>`", content_type = "text/event-stream", body = StreamEvent),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn stream_events(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if let Some(after) = query.after.filter(|after| *after < 0) {
        return Err(ApiError::bad_request("invalid_query", format!("after: must not be negative, got {after}")));
    }
    let after = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .filter(|position| *position >= 0)
            .ok_or_else(|| ApiError::bad_request("invalid_header", "Last-Event-ID: not a stream position"))?,
        None => query.after.unwrap_or(0),
    };
    let mut errors = ValidationErrors::new();
    if let Some(queue) = &query.queue {
        if let Err(message) = check_resource_name(queue) {
            errors.add("queue", message);
        }
    }
    let kinds: Option<Vec<String>> = query.kind.as_ref().map(|kinds| kinds.split(',').map(str::to_owned).collect());
    for kind in kinds.iter().flatten() {
        if !EVENT_KINDS.contains(&kind.as_str()) {
            errors.add("kind", format!("unknown event kind {kind:?}; known: {}", EVENT_KINDS.join(", ")));
        }
    }
    errors.into_result(()).map_err(ApiError::from)?;
    let filter = StreamFilter {
        tenant_scope: principal.tenant_scope(),
        job_id: query.job_id,
        queue: query.queue,
        kinds,
        after,
        limit: DEFAULT_EVENT_PAGE,
    };
    let follower =
        Follower { db: state.db.clone(), filter, pending: VecDeque::new(), shutdown: state.shutdown.clone() };
    let stream = futures_util::stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await?;
        Some((Ok(event), follower))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(state.event_keep_alive).text(HEARTBEAT)))
}

/// One stream follower: reads pages after its position, hands them out one by one, and
/// waits when nothing is new. Ends when the server shuts down.
struct Follower {
    db: sqlx::PgPool,
    filter: StreamFilter,
    pending: VecDeque<events::JobEvent>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Follower {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                let id = event.id;
                let kind = event.kind.clone();
                let data = serde_json::to_string(&JobEvent::from(event)).unwrap_or_default();
                return Some(Event::default().id(id.to_string()).event(kind).data(data));
            }
            if self.shutdown.is_cancelled() {
                return None;
            }
            match events::stream_after(&self.db, &self.filter).await {
                Ok(page) if !page.is_empty() => {
                    if let Some(last) = page.last() {
                        self.filter.after = last.id;
                    }
                    self.pending.extend(page);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "reading the event stream failed; retrying"),
            }
            if self.pending.is_empty() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(STREAM_POLL) => {}
                }
            }
        }
    }
}
