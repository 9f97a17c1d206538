//! The HTTP API. Each submodule owns its routes, request and response types and
//! handlers; they are merged here, in one place, together with the OpenAPI document that
//! utoipa derives from them. Handlers do no SQL of their own: they call `store`.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use hodei_core::ordering::PolicyRegistry;
use hodei_core::pool::ProviderLimits;
use sqlx::PgPool;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::{self, Problem};
use crate::loops::Wakeup;
use crate::metrics::Metrics;
use crate::store::enqueue::{QueueSettingsCache, SubmitContext, QUEUE_SETTINGS_TTL};

pub mod auth;
pub mod cost;
pub mod dead_letters;
pub mod events;
pub mod health;
pub mod history;
pub mod jobs;
pub mod metrics;
pub mod pools;
pub mod queues;
pub mod quotas;
pub mod request_context;
pub mod scaling;
pub mod schedules;
pub mod tenants;
pub mod workers;

/// Largest request body accepted by default (one job, one tenant, ...).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// Largest request body for a batch submission.
pub const BATCH_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Largest price list body: 10,000 prices with names of the longest length take ~3.5 MiB.
pub const PRICES_BODY_LIMIT: usize = 8 * 1024 * 1024;
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// What every handler shares. Holds no state of its own: all of it is in Postgres.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PgPool,
    /// The ordering policies this process knows (built-ins plus registered plugins).
    pub policies: Arc<PolicyRegistry>,
    /// Queue settings read in the last second (see `QueueSettingsCache`).
    pub queue_settings: Arc<QueueSettingsCache>,
    /// Worker protocol settings (registration token, heartbeat interval).
    pub workers: workers::WorkerSettings,
    /// Wakes workers' long polls when work is assigned.
    pub assigned: Wakeup,
    /// Live workers' tokens (`worker_tokens`): looked up once, forgotten when gone.
    pub worker_tokens: Arc<crate::worker_tokens::WorkerTokens>,
    /// Live API keys (`key_cache`): looked up once, forgotten when any is revoked.
    pub api_keys: Arc<crate::key_cache::ApiKeys>,
    /// Cancelled when the server shuts down, so long polls end at once.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// What each provider this process knows allows, for validating pools.
    pub provider_limits: Arc<Vec<ProviderLimits>>,
    pub providers: crate::provider::Providers,
    /// How many pools, and how large, the deployment allows.
    pub pool_limits: PoolLimits,
    /// This process's metric families (shared with the loops and the reconciler).
    pub metrics: Arc<Metrics>,
    /// `/metrics` is served by the API's listener (else on its own port, and the API's
    /// answers 404).
    pub metrics_on_api_listener: bool,
    /// How many days of costs are kept: the longest range a cost report may ask for.
    pub cost_retention_days: u32,
    /// When the cost recommendations speak up (`cost_tracking.recommendations`).
    pub cost_recommendations: hodei_core::recommend::Thresholds,
    /// Cost reports by tenant carry each tenant's part of its pools' idle cost.
    pub cost_spread_idle: bool,
    /// How many days hour buckets of historical metrics are kept.
    pub metric_history_retention_days: u32,
    /// How often the event stream sends a heartbeat comment on an idle connection.
    pub event_keep_alive: std::time::Duration,
}

/// Bounds on pools from the configuration (`max_pools`, `max_pool_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub max_pools: u32,
    pub max_pool_size: u32,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self { max_pools: 100, max_pool_size: 1000 }
    }
}

impl AppState {
    pub fn new(db: PgPool, policies: PolicyRegistry) -> Self {
        Self {
            db,
            policies: Arc::new(policies),
            queue_settings: Arc::new(QueueSettingsCache::new(QUEUE_SETTINGS_TTL)),
            workers: workers::WorkerSettings::default(),
            assigned: Wakeup::default(),
            worker_tokens: crate::worker_tokens::WorkerTokens::uncached(),
            api_keys: crate::key_cache::ApiKeys::uncached(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            provider_limits: Arc::new(vec![crate::provider::local_limits()]),
            providers: crate::provider::Providers::default(),
            pool_limits: PoolLimits::default(),
            metrics: Arc::new(Metrics::new()),
            metrics_on_api_listener: true,
            cost_retention_days: 90,
            cost_recommendations: hodei_core::recommend::Thresholds::default(),
            metric_history_retention_days: 90,
            cost_spread_idle: false,
            event_keep_alive: events::DEFAULT_KEEP_ALIVE,
        }
    }

    /// Records into `metrics`; `on_api_listener: false` when `/metrics` has its own port.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>, on_api_listener: bool) -> Self {
        self.metrics = metrics;
        self.metrics_on_api_listener = on_api_listener;
        self
    }

    pub fn with_worker_tokens(mut self, tokens: Arc<crate::worker_tokens::WorkerTokens>) -> Self {
        self.worker_tokens = tokens;
        self
    }

    pub fn with_api_keys(mut self, keys: Arc<crate::key_cache::ApiKeys>) -> Self {
        self.api_keys = keys;
        self
    }

    pub fn with_cost_retention_days(mut self, days: u32) -> Self {
        self.cost_retention_days = days;
        self
    }

    pub fn with_cost_recommendations(mut self, thresholds: hodei_core::recommend::Thresholds) -> Self {
        self.cost_recommendations = thresholds;
        self
    }

    pub fn with_cost_spread_idle(mut self, spread: bool) -> Self {
        self.cost_spread_idle = spread;
        self
    }

    pub fn with_metric_history_retention_days(mut self, days: u32) -> Self {
        self.metric_history_retention_days = days;
        self
    }

    /// How often the event stream sends a heartbeat comment on an idle connection.
    pub fn with_event_keep_alive(mut self, interval: std::time::Duration) -> Self {
        self.event_keep_alive = interval;
        self
    }

    pub fn with_pool_limits(mut self, limits: PoolLimits) -> Self {
        self.pool_limits = limits;
        self
    }

    /// The providers pools are validated against (their limits, and what only a provider
    /// can check, such as an instance type existing in the account).
    pub fn with_providers(mut self, providers: crate::provider::Providers) -> Self {
        self.provider_limits = Arc::new(providers.limits());
        self.providers = providers;
        self
    }

    pub fn with_workers(mut self, settings: workers::WorkerSettings, assigned: Wakeup) -> Self {
        self.workers = settings;
        self.assigned = assigned;
        self
    }

    pub fn with_shutdown(mut self, shutdown: tokio_util::sync::CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    pub fn submit_context(&self) -> SubmitContext<'_> {
        SubmitContext { registry: &self.policies, settings: &self.queue_settings }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hodei",
        description = "Job-scheduling control plane: durable fair queues in Postgres and static pools of workers.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(Problem)),
    tags(
        (name = "jobs", description = "Submit, inspect, list and cancel jobs"),
        (name = "events", description = "The job event stream"),
        (name = "queues", description = "Queues, their settings and status"),
        (name = "dead-letters", description = "Jobs that gave up: inspect and redrive"),
        (name = "tenants", description = "Tenants and their API keys (admin)"),
        (name = "schedules", description = "Cron schedules that submit jobs"),
        (name = "quotas", description = "Tenant quotas, burst sessions and the admission dry run"),
        (name = "workers", description = "The worker protocol and the worker registry"),
        (name = "pools", description = "Pools of workers and their provisioning (admin)"),
        (name = "cost", description = "Prices (admin), cost reports and recommendations"),
        (name = "metrics", description = "Historical metrics from SQL (admin)"),
        (name = "health", description = "Liveness and readiness")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("hodei_...").build()),
        );
    }
}

fn routes() -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::new()
        .merge(tenants::router())
        .merge(quotas::router())
        .merge(jobs::router())
        .merge(schedules::router())
        .merge(events::router())
        .merge(queues::router())
        .merge(dead_letters::router())
        .merge(workers::router())
        .merge(pools::router())
        .merge(cost::router())
        .merge(history::router())
        .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
        // Inner limits win over outer ones, so these routes keep their larger limits.
        .merge(jobs::batch_router().layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)))
        .merge(cost::prices_router().layer(DefaultBodyLimit::max(PRICES_BODY_LIMIT)));
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(health::router()).merge(metrics::router()).nest("/api/v1", api)
}

/// The router and its OpenAPI document, with the error answers every operation can give
/// written into the document.
fn parts() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut openapi) = routes().split_for_parts();
    document_common_responses(&mut openapi);
    inline_flattened_schemas(&mut openapi);
    require_a_program(&mut openapi);
    require_a_redirect_target(&mut openapi);
    size_by_pool_kind(&mut openapi);
    (router, openapi)
}

/// A static pool has `size` (and neither `min_size` nor `max_size`); a dynamic pool has
/// `max_size` (and no `size`): rules across fields, which the derive cannot write. Stated
/// as `allOf: [the object, anyOf: [static with size, dynamic with max_size]]`, with the
/// fields a kind does not take allowed only as null. (`min_size <= max_size`, cron
/// expressions that parse, and what a cloud account has are semantics: 422.)
fn size_by_pool_kind(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Type};
    use utoipa::openapi::RefOr;
    let Some(components) = openapi.components.as_mut() else { return };
    let Some(RefOr::T(spec)) = components.schemas.get("PoolSpec").cloned() else { return };
    let null = || ObjectBuilder::new().schema_type(Type::Null);
    let kind = |kinds: &[&str]| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(kinds.iter().map(|kind| serde_json::Value::from(*kind)).collect::<Vec<_>>()))
    };
    let static_pool = ObjectBuilder::new()
        .property("kind", kind(&["static"]))
        .property("min_size", null())
        .property("max_size", null())
        .required("size");
    let dynamic_pool = ObjectBuilder::new()
        .property("kind", kind(&["dynamic"]))
        .property("size", null())
        .required("kind")
        .required("max_size");
    let rule = AnyOfBuilder::new().item(static_pool).item(dynamic_pool);
    components.schemas.insert("PoolSpec".to_owned(), RefOr::T(AllOfBuilder::new().item(spec).item(rule).into()));
}

/// `overflow: redirect` needs an `overflow_queue`: a rule across two fields, which the
/// derive cannot write. On create only: an update keeps what it does not name, so there
/// the rule applies to the merged settings (a 409 when they break it). Stated as
/// `allOf: [the object, anyOf: [overflow is not redirect, overflow_queue is a string]]`.
fn require_a_redirect_target(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, SchemaType, Type};
    use utoipa::openapi::RefOr;
    let Some(components) = openapi.components.as_mut() else { return };
    let Some(RefOr::T(create)) = components.schemas.get("CreateQueue").cloned() else { return };
    let not_redirect = ObjectBuilder::new().property(
        "overflow",
        ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null])).enum_values(Some(vec![
            serde_json::Value::from("reject"),
            serde_json::Value::from("evict_lowest"),
            serde_json::Value::Null,
        ])),
    );
    let with_target = ObjectBuilder::new()
        .property("overflow_queue", ObjectBuilder::new().schema_type(Type::String))
        .required("overflow_queue");
    let rule = AnyOfBuilder::new().item(not_redirect).item(with_target);
    components.schemas.insert("CreateQueue".to_owned(), RefOr::T(AllOfBuilder::new().item(create).item(rule).into()));
}

/// `argv[0]` names the program and must not be empty (later arguments may be): a rule on
/// the first item only, which the derive cannot state (`prefixItems`).
fn require_a_program(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    use utoipa::openapi::RefOr;
    let Some(components) = openapi.components.as_mut() else { return };
    let Some(RefOr::T(Schema::Object(command))) = components.schemas.get_mut("CommandSpec") else { return };
    if let Some(RefOr::T(Schema::Array(argv))) = command.properties.get_mut("argv") {
        argv.prefix_items =
            vec![Schema::Object(ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).build())];
    }
}

/// Request types that refuse unknown fields and flatten another type into themselves.
const CLOSED_FLATTENED_SCHEMAS: [&str; 1] = ["CreateQueue"];

/// `#[serde(flatten)]` comes out as `allOf: [$ref to the flattened type, the own fields]`.
/// When the flattened type refuses unknown fields (`additionalProperties: false`), no
/// document can satisfy both parts: the own fields are unknown to the first. Such schemas
/// become one object with the properties of both; it refuses unknown fields only when the
/// type itself does (`CLOSED_FLATTENED_SCHEMAS`).
fn inline_flattened_schemas(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{AdditionalProperties, Object, Schema};
    use utoipa::openapi::RefOr;
    let Some(components) = openapi.components.as_mut() else { return };
    let closed = |schema: &RefOr<Schema>| {
        matches!(schema, RefOr::T(Schema::Object(object))
            if matches!(object.additional_properties.as_deref(), Some(AdditionalProperties::FreeForm(false))))
    };
    let lookup = |reference: &str| reference.strip_prefix("#/components/schemas/").map(str::to_owned);
    let names: Vec<String> = components.schemas.keys().cloned().collect();
    for name in names {
        let Some(RefOr::T(Schema::AllOf(all_of))) = components.schemas.get(&name) else { continue };
        let mut parts: Vec<Object> = Vec::new();
        let mut any_closed = false;
        for item in &all_of.items {
            let resolved = match item {
                RefOr::Ref(reference) => match lookup(&reference.ref_location).and_then(|n| components.schemas.get(&n))
                {
                    Some(schema) => schema.clone(),
                    None => break,
                },
                inline => inline.clone(),
            };
            any_closed |= closed(&resolved);
            if let RefOr::T(Schema::Object(object)) = resolved {
                parts.push(object);
            }
        }
        if !any_closed || parts.len() != all_of.items.len() {
            continue;
        }
        let mut merged = Object::new();
        for part in parts {
            merged.properties.extend(part.properties);
            merged.required.extend(part.required);
            if merged.description.is_none() {
                merged.description = part.description;
            }
        }
        merged.schema_type = utoipa::openapi::schema::SchemaType::Type(utoipa::openapi::schema::Type::Object);
        if CLOSED_FLATTENED_SCHEMAS.contains(&name.as_str()) {
            merged.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        }
        components.schemas.insert(name, RefOr::T(Schema::Object(merged)));
    }
}

/// The answers that do not depend on the operation, declared on each one that can give
/// them: 401 and 403 where a key is needed, 400 for a malformed query or body (and for an
/// unknown query parameter), 404 for a path that names nothing, 413, 415 and 422 where a
/// body is read.
fn document_common_responses(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
                )
                .build(),
        )
    };
    for (path, item) in openapi.paths.paths.iter_mut() {
        if !path.starts_with("/api/v1") {
            continue;
        }
        let operations =
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten();
        for operation in operations {
            let responses = &mut operation.responses.responses;
            let mut declare = |status: &str, description: &str| {
                responses.entry(status.to_owned()).or_insert_with(|| problem(description));
            };
            declare("400", "malformed request: bad JSON, a bad or unknown query parameter");
            if operation.security.as_ref().is_some_and(|security| !security.is_empty()) {
                declare("401", "no valid key or token");
                declare("403", "the key may not do this");
            }
            if path.contains('{') {
                declare("404", "nothing at this path");
            }
            if operation.request_body.is_some() {
                declare("413", "the body is too large");
                declare("415", "the body is not application/json");
                declare("422", "the body does not describe a valid request");
            }
        }
    }
}

/// The OpenAPI document, exactly as served and as committed under `openapi/`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().1
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (router, openapi) = parts();
    router
        .merge(SwaggerUi::new("/docs").url(OPENAPI_PATH, openapi))
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn(request_context::middleware))
        .layer(axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::record_request))
        .with_state(state)
}

/// `/metrics` alone, for its own listener (`metrics.prometheus.port`).
pub fn metrics_app(state: AppState) -> Router {
    metrics::own_router()
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn(request_context::middleware))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    /// `openapi/openapi.json` is the committed contract; regenerate it with `just openapi`
    /// (`hodei openapi > openapi/openapi.json`) when the API changes on purpose.
    #[test]
    fn committed_openapi_document_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
        let committed = std::fs::read_to_string(&path).expect("openapi/openapi.json is committed");
        let generated = super::openapi().to_pretty_json().expect("renders");
        assert!(
            committed.trim_end() == generated.trim_end(),
            "openapi/openapi.json differs from the code's document: run `just openapi` and review the diff"
        );
    }

    /// Every `$ref` in the document names a schema it defines: a client generator or a
    /// contract tester skips what it cannot resolve.
    #[test]
    fn every_reference_in_the_document_resolves() {
        let document = serde_json::to_value(super::openapi()).expect("serialises");
        let schemas = document["components"]["schemas"].as_object().expect("components.schemas");
        let mut references = Vec::new();
        collect_references(&document, &mut references);
        assert!(!references.is_empty(), "the document refers to its schemas");
        let unresolved: Vec<&String> = references
            .iter()
            .filter(|r| r.strip_prefix("#/components/schemas/").is_none_or(|name| !schemas.contains_key(name)))
            .collect();
        assert!(unresolved.is_empty(), "unresolvable references: {unresolved:?}");
    }

    fn collect_references(value: &serde_json::Value, into: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", serde_json::Value::String(reference)) => into.push(reference.clone()),
                        _ => collect_references(value, into),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| collect_references(item, into)),
            _ => {}
        }
    }
}
