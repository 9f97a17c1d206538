//! Cost: the price list (admin) and cost reports over the roll-up, in JSON or CSV. A
//! tenant's key reads only its own tenant's attempts, never a pool's idle cost. Never
//! computes a cost: the roll-up (`store::cost`, `hodei_core::cost`) did.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, DurationRound, NaiveDate, Utc};
use hodei_core::cost::{validate_prices, PriceSpec};
use hodei_core::pool::CapacityType;
use hodei_core::recommend::{self, Recommendation};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Admin, Principal};
use crate::error::{ApiError, Json, Problem, Query};
use crate::http::AppState;
use crate::store::cost::{self, GroupBy, ReportScope};
use crate::store::recommendations;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(cost_report)).routes(routes!(recommendations))
}

/// The price list, with a body limit of its own (`PRICES_BODY_LIMIT`): a list of the most
/// prices allowed, each with the longest names, must fit.
pub fn prices_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_prices, replace_prices))
}

/// The price list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceList {
    /// At most 10,000 prices (`hodei_core::cost::MAX_PRICES`).
    #[schema(max_items = 10000)]
    pub prices: Vec<PriceSpec>,
}

fn spec_from(price: cost::Price) -> PriceSpec {
    PriceSpec {
        provider: price.provider,
        instance_type: price.instance_type,
        capacity_type: if price.capacity_type == "spot" { CapacityType::Spot } else { CapacityType::OnDemand },
        region: price.region,
        price_per_hour: price.price_per_hour,
        currency: price.currency,
        cpu_millis: price.cpu_millis,
        memory_mib: price.memory_mib,
    }
}

/// The prices in force: an instance is priced at launch by the most specific match.
#[utoipa::path(
    get, path = "/prices", tag = "cost", security(("bearer" = [])),
    responses((status = 200, body = PriceList), (status = 403, body = Problem, content_type = "application/problem+json"))
)]
async fn list_prices(State(state): State<AppState>, _admin: Admin) -> Result<axum::Json<PriceList>, ApiError> {
    Ok(axum::Json(PriceList { prices: cost::prices(&state.db).await?.into_iter().map(spec_from).collect() }))
}

/// Replace the price list. Instances already running keep the price they launched with.
#[utoipa::path(
    put, path = "/prices", tag = "cost", request_body = PriceList, security(("bearer" = [])),
    responses(
        (status = 200, body = PriceList),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn replace_prices(
    State(state): State<AppState>,
    _admin: Admin,
    Json(list): Json<PriceList>,
) -> Result<axum::Json<PriceList>, ApiError> {
    validate_prices(&list.prices)?;
    let prices: Vec<cost::Price> = list.prices.iter().map(cost::Price::from).collect();
    let mut transaction = state.db.begin().await?;
    cost::replace_prices(&mut transaction, &prices).await?;
    transaction.commit().await?;
    Ok(axum::Json(PriceList { prices: cost::prices(&state.db).await?.into_iter().map(spec_from).collect() }))
}

/// How a cost report groups its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportGroup {
    Tenant,
    Pool,
    Queue,
    Day,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CostReportQuery {
    /// What each line is (default `day`).
    #[param(inline)]
    pub group_by: Option<ReportGroup>,
    /// The first UTC day (default: 30 days before `to`).
    #[param(value_type = Option<String>, format = Date)]
    pub from: Option<NaiveDate>,
    /// The last UTC day, included (default: today).
    #[param(value_type = Option<String>, format = Date)]
    pub to: Option<NaiveDate>,
}

/// One line of a cost report. Amounts are in `currency` and count priced instances only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CostLine {
    /// The tenant's name, the pool, the queue, or the day (`YYYY-MM-DD`).
    pub key: String,
    /// Charged to attempts.
    pub attributed_amount: f64,
    /// What no attempt used: grouping by pool or day, for admins; grouping by tenant with
    /// `cost_tracking.spread_idle_to_tenants`, the tenant's part of its pools' idle cost
    /// (by what its attempts were charged there); else 0.
    pub idle_amount: f64,
    /// `attributed_amount + idle_amount`.
    pub amount: f64,
    pub currency: String,
    /// Instance-seconds on unpriced instances: unknown cost, never counted as zero.
    pub unpriced_share_seconds: f64,
    /// Attempts that ran, counted once per UTC day they ran in.
    pub attempts: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CostReport {
    pub group_by: String,
    #[schema(value_type = String, format = Date)]
    pub from: NaiveDate,
    #[schema(value_type = String, format = Date)]
    pub to: NaiveDate,
    pub lines: Vec<CostLine>,
    /// The sum of the lines' `amount`.
    pub total: f64,
    pub currency: String,
}

/// A cost report from the roll-up: JSON, or CSV with `Accept: text/csv`.
#[utoipa::path(
    get, path = "/cost-reports", tag = "cost", security(("bearer" = [])), params(CostReportQuery),
    responses(
        (status = 200, content((CostReport = "application/json"), (String = "text/csv"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn cost_report(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Query(query): Query<CostReportQuery>,
) -> Result<Response, ApiError> {
    let to = query.to.unwrap_or_else(|| Utc::now().date_naive());
    let from = query.from.unwrap_or(to - Duration::days(30));
    if from > to {
        return Err(ApiError::unprocessable("invalid_range", format!("from: must not be after to ({to}), got {from}")));
    }
    let retention = i64::from(state.cost_retention_days);
    if (to - from).num_days() + 1 > retention {
        return Err(ApiError::unprocessable(
            "invalid_range",
            format!("to: the range may span at most the retention, {retention} days (cost_tracking.retention_days)"),
        ));
    }
    let (group_by, name) = match query.group_by.unwrap_or(ReportGroup::Day) {
        ReportGroup::Tenant => (GroupBy::Tenant, "tenant"),
        ReportGroup::Pool => (GroupBy::Pool, "pool"),
        ReportGroup::Queue => (GroupBy::Queue, "queue"),
        ReportGroup::Day => (GroupBy::Day, "day"),
    };
    let scope = principal.tenant_scope().map_or(ReportScope::All, ReportScope::Tenant);
    let rows = cost::report(&state.db, group_by, from, to, scope).await?;
    // By tenant, with `cost_tracking.spread_idle_to_tenants`: each tenant's part of its
    // pools' idle cost.
    let idle: std::collections::HashMap<String, f64> = if group_by == GroupBy::Tenant && state.cost_spread_idle {
        cost::idle_by_tenant(&state.db, from, to, scope).await?.into_iter().collect()
    } else {
        Default::default()
    };
    let lines: Vec<CostLine> = rows
        .into_iter()
        .map(|row| {
            let idle_amount = row.idle_amount + idle.get(&row.key).copied().unwrap_or(0.0);
            (row, idle_amount)
        })
        .map(|(row, idle_amount)| CostLine {
            key: row.key,
            attributed_amount: row.attributed_amount,
            idle_amount,
            amount: row.attributed_amount + idle_amount,
            currency: "USD".to_owned(),
            unpriced_share_seconds: row.unpriced_share_seconds,
            attempts: row.attempts,
        })
        .collect();
    let total = lines.iter().map(|line| line.amount).sum();
    let report = CostReport { group_by: name.to_owned(), from, to, lines, total, currency: "USD".to_owned() };
    let wants_csv = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.split(',').any(|part| part.trim().starts_with("text/csv")));
    if wants_csv {
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], to_csv(&report)).into_response());
    }
    Ok(axum::Json(report).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecommendationsQuery {
    /// The period to learn from: the last `days` whole days of rolled-up hours (default 14,
    /// at most the retention).
    #[param(minimum = 1, maximum = 3650)]
    pub days: Option<u32>,
}

/// Cost recommendations over a period, largest saving first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Recommendations {
    /// The period's first hour.
    pub from: DateTime<Utc>,
    /// The end of its last hour (the start of the current one).
    pub to: DateTime<Utc>,
    pub recommendations: Vec<Recommendation>,
    /// The sum of the recommendations' savings that could be estimated (they may overlap:
    /// a pool sized down saves less from a schedule).
    pub total_estimated_monthly_saving: f64,
    pub currency: String,
}

/// What would lower the cost: idle capacity, instance types larger than the jobs, work that
/// suits spot, quiet nights and weekends, and instances that ran without a price. Each
/// recommendation carries its evidence and an estimated monthly saving.
#[utoipa::path(
    get, path = "/cost-optimization/recommendations", tag = "cost", security(("bearer" = [])),
    params(RecommendationsQuery),
    responses(
        (status = 200, body = Recommendations),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json")
    )
)]
async fn recommendations(
    State(state): State<AppState>,
    _admin: Admin,
    Query(query): Query<RecommendationsQuery>,
) -> Result<axum::Json<Recommendations>, ApiError> {
    let days = query.days.unwrap_or(14);
    if days == 0 || days > state.cost_retention_days {
        return Err(ApiError::unprocessable(
            "invalid_range",
            format!(
                "days: must be from 1 to the retention, {} days (cost_tracking.retention_days), got {days}",
                state.cost_retention_days
            ),
        ));
    }
    let now = crate::store::database_now(&state.db).await?;
    let to = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
    let from = to - Duration::days(i64::from(days));
    let thresholds = state.cost_recommendations;
    let facts = recommendations::facts(&state.db, from, to, thresholds.spot_max_job_seconds).await?;
    let period_hours = f64::from(days) * 24.0;
    let found = recommend::recommend(&facts.pools, &facts.offers, &facts.unpriced, period_hours, &thresholds);
    let total = found.iter().filter_map(|r| r.estimated_monthly_saving).sum::<f64>();
    Ok(axum::Json(Recommendations {
        from,
        to,
        recommendations: found,
        total_estimated_monthly_saving: (total * 1e6).round() / 1e6,
        currency: "USD".to_owned(),
    }))
}

/// RFC 4180: a header line, then one line per report line; fields with a comma, a quote
/// or a line break are quoted, quotes doubled.
fn to_csv(report: &CostReport) -> String {
    fn field(value: &str) -> String {
        if value.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", value.replace('"', "\"\""))
        } else {
            value.to_owned()
        }
    }
    let mut csv = format!(
        "{},attributed_amount,idle_amount,amount,currency,unpriced_share_seconds,attempts\r\n",
        field(&report.group_by)
    );
    for line in &report.lines {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\r\n",
            field(&line.key),
            line.attributed_amount,
            line.idle_amount,
            line.amount,
            field(&line.currency),
            line.unpriced_share_seconds,
            line.attempts
        ));
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        let line = |key: &str| CostLine {
            key: key.to_owned(),
            attributed_amount: 1.5,
            idle_amount: 0.25,
            amount: 1.75,
            currency: "USD".to_owned(),
            unpriced_share_seconds: 0.0,
            attempts: 3,
        };
        let report = CostReport {
            group_by: "tenant".to_owned(),
            from: NaiveDate::from_ymd_opt(2026, 12, 1).expect("date"),
            to: NaiveDate::from_ymd_opt(2026, 12, 2).expect("date"),
            lines: vec![line("acme"), line("a \"b\", c")],
            total: 3.5,
            currency: "USD".to_owned(),
        };
        assert_eq!(
            to_csv(&report),
            "tenant,attributed_amount,idle_amount,amount,currency,unpriced_share_seconds,attempts\r\n\
             acme,1.5,0.25,1.75,USD,0,3\r\n\
             \"a \"\"b\"\", c\",1.5,0.25,1.75,USD,0,3\r\n"
        );
    }
}
