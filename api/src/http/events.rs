//! `/api/v1/events`: the job event stream, read by cursor. Tenant keys see their own
//! tenant's events; admin keys see all.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, Problem, Query};
use crate::http::AppState;
use crate::store::events::{self, EventFilter};

pub const DEFAULT_EVENT_PAGE: i64 = 100;
pub const MAX_EVENT_PAGE: i64 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events))
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
