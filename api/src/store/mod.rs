//! Storage: one module per table, each owning its SQL. Functions take an executor
//! (`impl PgExecutor` or `&mut PgConnection`) so callers compose transactions. Nothing
//! here knows about HTTP.

pub mod api_keys;
pub mod assignment;
pub mod cost;
pub mod dispatch;
pub mod enqueue;
pub mod events;
pub mod gauges;
pub mod history;
pub mod jobs;
pub mod leases;
pub mod logs;
pub mod pools;
pub mod queue_backlog;
pub mod queue_status;
pub mod queues;
pub mod quotas;
pub mod recommendations;
pub mod retention;
pub mod schedules;
pub mod tenants;
pub mod workers;

/// The database's clock, the one every replica shares: what loops and handlers compare
/// stored times with.
pub async fn database_now(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("select now()").fetch_one(db).await
}
