//! `/metrics`: the Prometheus exposition (OpenMetrics text) of `crate::metrics` — this
//! process's counters and histograms, and the gauges read from the database for this
//! scrape (one query per group: queues, workers, pools, tenants, costs). Open, like a probe. Served on the
//! API's listener, or on its own (`metrics.prometheus.port`); and the middleware that
//! times every HTTP request by its matched route.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::http::AppState;
use crate::metrics::{
    to_prometheus_text, DatabasePool, Metrics, Snapshot, CONTENT_TYPE, TEXT_CONTENT_TYPE, WINDOW_SECONDS,
};
use crate::store::gauges;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// The router of the metrics listener: `/metrics` only.
pub(crate) fn own_router() -> axum::Router<AppState> {
    axum::Router::new().route("/metrics", get(scrape))
}

/// Prometheus metrics: OpenMetrics text when the scraper accepts it (Prometheus does),
/// else the classic text format 0.0.4.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "OpenMetrics or Prometheus text format", content((String = "application/openmetrics-text"), (String = "text/plain")))))]
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !state.metrics_on_api_listener {
        return Err(ApiError::not_found("metrics are served on their own port (metrics.prometheus.port)"));
    }
    scrape(State(state), headers).await
}

async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let snapshot = snapshot(&state).await?;
    let text = state.metrics.render(&snapshot);
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    Ok(if openmetrics {
        ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
    } else {
        ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], to_prometheus_text(&text)).into_response()
    })
}

/// What this scrape reads: five statements on one connection, and the pool's use.
async fn snapshot(state: &AppState) -> Result<Snapshot, ApiError> {
    // Read before a connection is taken for the scrape itself.
    let database = DatabasePool {
        connections: state.db.size(),
        idle: u32::try_from(state.db.num_idle()).unwrap_or(u32::MAX),
        max: state.db.options().get_max_connections(),
    };
    let mut connection = state.db.acquire().await?;
    let queues = gauges::queues(&mut *connection, WINDOW_SECONDS).await?;
    let workers = gauges::workers(&mut *connection).await?;
    let pools = gauges::pools(&mut *connection).await?;
    let tenants = gauges::tenant_usage(&mut *connection).await?;
    let costs = gauges::month_costs(&mut *connection).await?;
    Ok(Snapshot { queues, workers, pools, tenants, costs, database })
}

/// Times every request by its method, matched route template (never the raw path, whose
/// ids would make unbounded labels) and status class.
pub(crate) async fn record_request(
    State(metrics): State<std::sync::Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |path| path.as_str()).to_owned();
    let response = next.run(request).await;
    metrics.record_request(&method, &route, response.status().as_u16(), started.elapsed());
    response
}
